//! Web Bot Auth end to end, over real sockets: `oba directory serve` publishes a bot's
//! keys, the example verifying server (axum + the layer) fetches them, and `oba request`
//! and the reqwest signing middleware are verified; unsigned and malformed requests are
//! refused with 401 / 400.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

#[path = "../../crates/webbotauth/examples/verifying_server.rs"]
#[allow(dead_code)]
mod verifying_server;

fn oba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .output()
        .expect("run oba")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `oba directory serve` on a free port; returns it and its origin.
fn directory_server(keys: &[&Path]) -> (Server, String) {
    let mut args = vec![
        "directory".to_owned(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    for k in keys {
        args.extend(["--key".into(), k.display().to_string()]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address printed")
        .to_owned();
    let origin = url
        .trim_end_matches(oba_webbotauth::directory::WELL_KNOWN_PATH)
        .to_owned();
    (Server(child), origin)
}

/// Starts the example verifying server in this process; returns its base URL.
fn verifying_server(rt: &tokio::runtime::Runtime) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(verifying_server::serve(listener, true));
    format!("http://{addr}/")
}

fn keygen(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    assert_eq!(
        oba(&["keygen", "--out", p.to_str().unwrap()]).status.code(),
        Some(0)
    );
    p
}

#[test]
fn oba_request_to_the_verifying_server_with_keys_from_oba_directory_serve() {
    let dir = tempfile::tempdir().unwrap();
    let bot = keygen(dir.path(), "bot.jwk");
    let stranger = keygen(dir.path(), "stranger.jwk");
    let (_dirsrv, origin) = directory_server(&[&bot]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = verifying_server(&rt);

    // The bot: verified, with its agent and thumbprint.
    let out = oba(&[
        "request",
        "--key",
        bot.to_str().unwrap(),
        "--signature-agent",
        &origin,
        "-v",
        &site,
    ]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{body}");
    assert_eq!(body["outcome"], "verified");
    assert_eq!(body["agent"], format!("{origin}/"));
    let thumb =
        String::from_utf8(oba(&["jwk", "thumbprint", bot.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(body["thumbprint"], thumb.trim());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("> signature-input: sig1="),
        "-v shows the signature: {stderr}"
    );
    assert!(stderr.contains("< 200"), "{stderr}");

    // A key the directory does not publish: 401 with Accept-Signature; exit 1.
    let out = oba(&[
        "request",
        "--key",
        stranger.to_str().unwrap(),
        "--signature-agent",
        &origin,
        "-v",
        &site,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["error"]["code"], "unknown_key");
    assert!(String::from_utf8_lossy(&out.stderr).contains("< accept-signature: sig1="));

    // Unsigned and malformed requests.
    rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c.get(&site).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("accept-signature").is_some());
        let r = c
            .get(&site)
            .header("signature-input", "sig1=(")
            .header("signature", "sig1=:AA==:")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value =
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
        assert_eq!(v["error"]["code"], "malformed_header");
    });
}

#[test]
fn reqwest_signing_middleware_through_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let bot = keygen(dir.path(), "bot.jwk");
    let (_dirsrv, origin) = directory_server(&[&bot]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = verifying_server(&rt);
    let jwk = oba_httpsig::jwk::Jwk::parse(&std::fs::read_to_string(&bot).unwrap()).unwrap();
    let signer = oba_webbotauth::WebBotAuthSigner::new(&jwk)
        .unwrap()
        .with_signature_agent(&origin)
        .unwrap();
    let client = oba_webbotauth::reqwest_signer::signed_client(reqwest::Client::new(), signer);
    rt.block_on(async {
        // Two requests: each gets a fresh nonce, so neither is a replay.
        for _ in 0..2 {
            let r = client.get(&site).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["outcome"], "verified");
        }
    });
}

/// Every Web Bot Auth vector through `oba verify --web-bot-auth` with the vector's key:
/// valid ones verify (test keys allowed), broken ones are invalid, and without
/// `--allow-test-keys` the RFC example keys are refused.
#[test]
fn web_bot_auth_vectors_through_the_cli() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-vectors/webbotauth-vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for vector in v["signature_vectors"].as_array().unwrap() {
        let id = vector["id"].as_str().unwrap();
        let key = dir.path().join(format!("{id}.jwk"));
        std::fs::write(
            &key,
            v["keys"][vector["key_ref"].as_str().unwrap()]["jwk_public"].to_string(),
        )
        .unwrap();
        let m = &vector["message"];
        let mut raw = format!("{}\r\n", m["start_line"].as_str().unwrap());
        for h in m["headers"].as_array().unwrap() {
            raw.push_str(&format!(
                "{}: {}\r\n",
                h[0].as_str().unwrap(),
                h[1].as_str().unwrap()
            ));
        }
        raw.push_str("\r\n");
        let msg = dir.path().join(format!("{id}.http"));
        std::fs::write(&msg, raw).unwrap();
        let now = vector["verify_at"].to_string();
        let args = |extra: &[&str]| {
            let mut a = vec![
                "verify",
                "--web-bot-auth",
                "--json",
                "--key",
                key.to_str().unwrap(),
                "--now",
                &now,
                "--max-validity",
                "4294967295",
            ];
            a.extend_from_slice(extra);
            a.push(msg.to_str().unwrap());
            let out = oba(&a);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("{id}: {}", String::from_utf8_lossy(&out.stderr)));
            (out.status.code(), report)
        };
        let (code, report) = args(&["--allow-test-keys"]);
        if vector["expected_result"] == "valid" {
            assert_eq!(
                (code, report["outcome"].as_str()),
                (Some(0), Some("verified")),
                "{id}: {report}"
            );
            assert_eq!(report["thumbprint"], vector["keyid"]);
        } else {
            assert_eq!(
                (code, report["outcome"].as_str()),
                (Some(1), Some("invalid")),
                "{id}: {report}"
            );
            assert_eq!(report["reason"], "bad_signature", "{id}");
        }
        let (code, report) = args(&[]);
        assert_eq!(
            (code, report["reason"].as_str()),
            (Some(1), Some("test_key")),
            "{id}: {report}"
        );
    }
}
