//! The `oba` binary end to end: every RFC 9421 vector verified from JWK files, the
//! deterministic ones re-signed byte for byte, and the key, sign and verify commands
//! with their exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use base64::Engine;
use serde_json::Value;

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../test-vectors/rfc9421-vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn vector(id: &str) -> &'static Value {
    vectors()["signature_vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap()
}

fn oba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .output()
        .expect("run oba")
}

fn oba_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The process may exit (usage error) before reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Raw HTTP/1.1 (CRLF) for a JSON message, optionally without some header names.
fn raw_message(m: &Value, skip: &[&str]) -> String {
    let mut raw = format!("{}\r\n", m["start_line"].as_str().unwrap());
    for h in m["headers"].as_array().unwrap() {
        let name = h[0].as_str().unwrap();
        if skip.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        raw.push_str(&format!("{name}: {}\r\n", h[1].as_str().unwrap()));
    }
    raw.push_str("\r\n");
    raw.push_str(m["body"].as_str().unwrap_or_default());
    raw
}

fn message_of(v: &Value) -> Value {
    match v.get("message") {
        Some(m) => m.clone(),
        None => vectors()["messages"][v["message_ref"].as_str().unwrap()].clone(),
    }
}

fn related_of(v: &Value) -> Option<Value> {
    if let Some(r) = v.get("related_request") {
        return Some(r.clone());
    }
    v.get("related_request_ref").map(|r| {
        let id = r.as_str().unwrap().strip_suffix(".message").unwrap();
        vector(id)["message"].clone()
    })
}

/// Writes the vector's key as a JWK file, as the RFC gives it (no `alg` for RSA).
fn key_file(dir: &Path, key_id: &str) -> PathBuf {
    let k = &vectors()["keys"][key_id];
    let jwk = match k["secret_base64"].as_str() {
        Some(secret) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .unwrap();
            serde_json::json!({
                "kty": "oct",
                "kid": key_id,
                "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            })
        }
        None => k["jwk"].clone(),
    };
    let path = dir.join(format!("{key_id}.jwk"));
    std::fs::write(&path, jwk.to_string()).unwrap();
    path
}

fn run_vector(id: &str) {
    let v = vector(id);
    let dir = tempfile::tempdir().unwrap();
    let label = v["label"].as_str().unwrap();
    let alg = v["algorithm"].as_str().unwrap();
    let key = key_file(dir.path(), v["key_id"].as_str().unwrap());
    let m = message_of(v);
    let mut raw = raw_message(&m, &[]);
    if !raw.contains("Signature-Input:") {
        raw = raw.replacen(
            "\r\n\r\n",
            &format!(
                "\r\nSignature-Input: {}\r\nSignature: {}\r\n\r\n",
                v["signature_input_header"].as_str().unwrap(),
                v["signature_header"].as_str().unwrap()
            ),
            1,
        );
    }
    let msg_path = dir.path().join("message.http");
    std::fs::write(&msg_path, &raw).unwrap();
    let created = v["signature_params"].as_array().unwrap()[0][1]
        .as_i64()
        .unwrap();
    let now = created.to_string();
    let mut args: Vec<String> = vec![
        "verify".into(),
        "--key".into(),
        key.display().to_string(),
        "--label".into(),
        label.into(),
        "--now".into(),
        now.clone(),
        "--json".into(),
    ];
    if alg.starts_with("rsa") {
        args.extend(["--alg".into(), alg.into()]);
    }
    let related = related_of(v).map(|r| {
        let p = dir.path().join("request.http");
        std::fs::write(&p, raw_message(&r, &[])).unwrap();
        p
    });
    if let Some(r) = &related {
        args.extend(["--request".into(), r.display().to_string()]);
    }
    args.push(msg_path.display().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = oba(&argv);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{id}: {}", String::from_utf8_lossy(&out.stderr)));

    // `oba base` prints the RFC's base byte for byte.
    let mut base_args = argv.clone();
    base_args[0] = "base";
    let base = oba(&base_args);
    assert_eq!(
        base.status.code(),
        Some(0),
        "{id}: {}",
        String::from_utf8_lossy(&base.stderr)
    );
    assert_eq!(
        stdout(&base),
        format!("{}\n", v["signature_base"].as_str().unwrap()),
        "{id}: base"
    );

    match v["expected_result"].as_str().unwrap() {
        "valid" => {
            assert_eq!(out.status.code(), Some(0), "{id}: {report}");
            assert_eq!(report["outcome"], "verified");
        }
        _ => {
            assert_eq!(out.status.code(), Some(1), "{id}: {report}");
            assert_eq!(report["outcome"], "invalid");
            assert_eq!(report["signatures"][0]["reason"], "bad_signature");
        }
    }

    // Deterministic algorithms: `oba sign --params` reproduces the published value.
    if v["deterministic"].as_bool().unwrap() && v["expected_result"] == "valid" {
        let unsigned = if v.get("message").is_some() {
            // Keep other labels' signatures (4.3 carries the client's sig1).
            let input = m["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == "Signature-Input")
                .unwrap()[1]
                .as_str()
                .unwrap();
            let others: Vec<&str> = input
                .split(", ")
                .filter(|s| !s.starts_with(&format!("{label}=")))
                .collect();
            let mut raw = raw_message(&m, &["Signature-Input", "Signature"]);
            if !others.is_empty() {
                let sig = m["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h[0] == "Signature")
                    .unwrap()[1]
                    .as_str()
                    .unwrap();
                let other_sigs: Vec<&str> = sig
                    .split(", ")
                    .filter(|s| !s.starts_with(&format!("{label}=")))
                    .collect();
                raw = raw.replacen(
                    "\r\n\r\n",
                    &format!(
                        "\r\nSignature-Input: {}\r\nSignature: {}\r\n\r\n",
                        others.join(", "),
                        other_sigs.join(", ")
                    ),
                    1,
                );
            }
            raw
        } else {
            raw_message(&m, &[])
        };
        let unsigned_path = dir.path().join("unsigned.http");
        std::fs::write(&unsigned_path, unsigned).unwrap();
        let serialized = v["signature_params_serialized"].as_str().unwrap();
        let params = &serialized[serialized.find(')').unwrap() + 1..];
        let mut args: Vec<String> = vec![
            "sign".into(),
            "--key".into(),
            key.display().to_string(),
            "--label".into(),
            label.into(),
        ];
        for c in v["covered_components"].as_array().unwrap() {
            args.extend(["--component".into(), c.as_str().unwrap().into()]);
        }
        args.extend(["--params".into(), params.into()]);
        if alg.starts_with("rsa") {
            args.extend(["--alg".into(), alg.into()]);
        }
        args.push(unsigned_path.display().to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = oba(&argv);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signed = stdout(&out);
        let want = format!("{label}=:{}:", v["signature_b64"].as_str().unwrap());
        assert!(
            signed.contains(&want),
            "{id}: signature not reproduced:\n{signed}"
        );
        let want_input = format!("{label}={serialized}");
        assert!(
            signed.contains(&want_input),
            "{id}: Signature-Input differs:\n{signed}"
        );
    }
}

macro_rules! cli_vectors {
    ($($name:ident => $id:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_vector($id);
            }
        )*
        #[test]
        fn every_vector_is_run_through_the_cli() {
            let ids: Vec<&str> = vec![$($id),*];
            let all: Vec<&str> = vectors()["signature_vectors"].as_array().unwrap()
                .iter().map(|v| v["id"].as_str().unwrap()).collect();
            assert_eq!(ids, all);
        }
    };
}

cli_vectors! {
    cli_3_1_3_2_sig1 => "3.1-3.2-sig1",
    cli_2_4_reqres_1 => "2.4-reqres-1",
    cli_2_4_signed_request_sig1 => "2.4-signed-request-sig1",
    cli_2_4_reqres_2 => "2.4-reqres-2",
    cli_4_3_client_sig1 => "4.3-client-sig1",
    cli_4_3_proxy_sig => "4.3-proxy_sig",
    cli_b_2_1 => "B.2.1",
    cli_b_2_2 => "B.2.2",
    cli_b_2_3 => "B.2.3",
    cli_b_2_4 => "B.2.4",
    cli_b_2_5_hmac => "B.2.5",
    cli_b_2_6_ed25519 => "B.2.6",
    cli_b_3 => "B.3",
    cli_b_4_0 => "B.4-0",
    cli_b_4_1 => "B.4-1",
    cli_b_4_2 => "B.4-2",
    cli_b_4_3 => "B.4-3",
    cli_b_4_4_invalid => "B.4-4",
    cli_b_4_5_invalid => "B.4-5",
}

// ---------------------------------------------------------------------------

const REQUEST: &str = "POST /foo?a=1 HTTP/1.1\nHost: example.com\nContent-Type: application/json\n\n{\"hello\": \"world\"}";

fn keygen(dir: &Path, alg: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{alg}-{n}.jwk"));
    let out = oba(&["keygen", "--alg", alg, "--out", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[test]
fn keygen_writes_a_private_jwk_with_mode_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = keygen(dir.path(), "ed25519");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let jwk: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["alg"], "EdDSA");
    assert!(jwk["d"].is_string());
    let thumb = oba(&["jwk", "thumbprint", path.to_str().unwrap()]);
    assert_eq!(stdout(&thumb).trim(), jwk["kid"].as_str().unwrap());
    let again = oba(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let public = oba(&["jwk", "public", path.to_str().unwrap()]);
    let public: Value = serde_json::from_slice(&public.stdout).unwrap();
    assert!(public.get("d").is_none());
    assert_eq!(public["x"], jwk["x"]);
}

#[test]
fn hmac_keys_get_a_random_kid_not_a_thumbprint_and_have_no_public_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = keygen(dir.path(), "hmac-sha256");
    let jwk: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let thumb = oba(&["jwk", "thumbprint", path.to_str().unwrap()]);
    assert_ne!(stdout(&thumb).trim(), jwk["kid"].as_str().unwrap());
    assert_eq!(
        oba(&["jwk", "public", path.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn sign_then_verify_round_trips_for_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    for alg in [
        "ed25519",
        "ecdsa-p256-sha256",
        "ecdsa-p384-sha384",
        "rsa-pss-sha512",
        "hmac-sha256",
    ] {
        let key = keygen(dir.path(), alg);
        let signed = oba_stdin(
            &[
                "sign",
                "--key",
                key.to_str().unwrap(),
                "--content-digest",
                "sha-256",
                "--ttl",
                "60",
                "--random-nonce",
                "--tag",
                "t",
                "-",
            ],
            REQUEST.as_bytes(),
        );
        assert_eq!(
            signed.status.code(),
            Some(0),
            "{alg}: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let text = stdout(&signed);
        assert!(text.contains("Content-Digest: sha-256=:"), "{text}");
        assert!(
            text.contains(
                r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");created="#
            ),
            "{text}"
        );
        let out = oba_stdin(
            &[
                "verify",
                "--key",
                key.to_str().unwrap(),
                "--tag",
                "t",
                "--max-age",
                "60",
                "--json",
            ],
            text.as_bytes(),
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{alg}: {report}");
        assert_eq!(report["signatures"][0]["alg"], alg);

        // Changing the body breaks the covered Content-Digest.
        let tampered = text.replace("world", "WORLD");
        let out = oba_stdin(
            &["verify", "--key", key.to_str().unwrap(), "--json"],
            tampered.as_bytes(),
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(report["outcome"], "invalid");
        assert_eq!(report["signatures"][0]["reason"], "digest_mismatch");
    }
}

#[test]
fn existing_signatures_are_kept_and_each_label_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "ed25519");
    let b = keygen(dir.path(), "ecdsa-p256-sha256");
    let once = oba_stdin(
        &["sign", "--key", a.to_str().unwrap(), "--label", "one"],
        REQUEST.as_bytes(),
    );
    let twice = oba_stdin(
        &["sign", "--key", b.to_str().unwrap(), "--label", "two"],
        &once.stdout,
    );
    assert_eq!(twice.status.code(), Some(0));
    for (key, label) in [(&a, "one"), (&b, "two")] {
        let out = oba_stdin(
            &["verify", "--key", key.to_str().unwrap(), "--label", label],
            &twice.stdout,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    }
    // The same label twice is refused.
    let dup = oba_stdin(
        &["sign", "--key", a.to_str().unwrap(), "--label", "one"],
        &twice.stdout,
    );
    assert_eq!(dup.status.code(), Some(2));
    // A JWK Set picks the key by kid.
    let set = dir.path().join("set.json");
    let ka: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    let kb: Value = serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    std::fs::write(&set, serde_json::json!({"keys": [ka, kb]}).to_string()).unwrap();
    let out = oba_stdin(
        &["verify", "--jwks", set.to_str().unwrap(), "--json"],
        &twice.stdout,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["signatures"][0]["result"], "verified");
    assert_eq!(report["signatures"][1]["result"], "verified");
}

#[test]
fn verify_rejects_with_reasons_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "ed25519");
    let other = keygen(dir.path(), "ed25519");
    let signed = oba_stdin(
        &[
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--created",
            "1000",
            "--expires",
            "1100",
        ],
        REQUEST.as_bytes(),
    );
    let reason = |args: &[&str]| {
        let mut full = vec!["verify", "--json"];
        full.extend_from_slice(args);
        let out = oba_stdin(&full, &signed.stdout);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            report["signatures"][0]["reason"]
                .as_str()
                .map(str::to_owned),
        )
    };
    let k = key.to_str().unwrap();
    assert_eq!(reason(&["--key", k, "--now", "1050"]), (Some(0), None));
    assert_eq!(
        reason(&["--key", k, "--now", "2000"]),
        (Some(1), Some("expired".into()))
    );
    assert_eq!(
        reason(&["--key", k, "--now", "500"]),
        (Some(1), Some("not_yet_valid".into()))
    );
    assert_eq!(
        reason(&[
            "--key",
            k,
            "--now",
            "1090",
            "--max-age",
            "10",
            "--skew",
            "0"
        ]),
        (Some(1), Some("too_old".into()))
    );
    assert_eq!(
        reason(&["--key", k, "--now", "1050", "--tag", "x"]),
        (Some(1), Some("tag_mismatch".into()))
    );
    // A key that cannot be used with the allowed algorithms is a usage error.
    assert_eq!(
        reason(&["--key", k, "--now", "1050", "--alg", "ecdsa-p256-sha256"]).0,
        Some(2)
    );
    assert_eq!(
        reason(&[
            "--key",
            k,
            "--now",
            "1050",
            "--require-component",
            "content-type"
        ]),
        (Some(1), Some("required_component_missing".into()))
    );
    assert_eq!(
        reason(&["--key", other.to_str().unwrap(), "--now", "1050"]),
        (Some(1), Some("keyid_mismatch".into()))
    );
    // A key without kid is tried regardless of keyid: the signature itself fails.
    let no_kid = dir.path().join("nokid.jwk");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
    j.as_object_mut().unwrap().remove("kid");
    std::fs::write(&no_kid, j.to_string()).unwrap();
    assert_eq!(
        reason(&["--key", no_kid.to_str().unwrap(), "--now", "1050"]),
        (Some(1), Some("bad_signature".into()))
    );
}

#[test]
fn unsigned_and_unreadable_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "ed25519");
    let k = key.to_str().unwrap();
    let out = oba_stdin(&["verify", "--key", k, "--json"], REQUEST.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "unverified");
    assert_eq!(
        oba_stdin(&["verify", "--key", k], b"not http")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        oba(&["verify", "--key", "/nonexistent.jwk", "-"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        oba(&["verify", "-"]).status.code(),
        Some(2),
        "a key is required"
    );
    assert_eq!(
        oba_stdin(
            &["sign", "--key", k, "--component", "@nope"],
            REQUEST.as_bytes()
        )
        .status
        .code(),
        Some(2)
    );
    let missing = oba_stdin(
        &["sign", "--key", k, "--component", "x-absent"],
        REQUEST.as_bytes(),
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing"));
    let bad_input = "GET / HTTP/1.1\nHost: a\nSignature-Input: sig1=(\nSignature: sig1=:AA==:\n\n";
    assert_eq!(
        oba_stdin(&["verify", "--key", k], bad_input.as_bytes())
            .status
            .code(),
        Some(2)
    );
}
