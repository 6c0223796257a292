//! Web Bot Auth conformance: every vector of `test-vectors/webbotauth-vectors.json` as its
//! own named test. Valid vectors verify under the profile (with the RFC test keys allowed,
//! at `verify_at`); the known-broken draft vectors are rejected as bad signatures, and
//! their `signature_base_that_verifies` is confirmed to be what they were signed over.

use std::sync::OnceLock;

use base64::Engine;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{HttpMessage, Message, Signer};
use oba_webbotauth::agent::{AgentForm, AgentType, SignatureAgent};
use oba_webbotauth::card::{parse_registry_list, RegistryEntry, SignatureAgentCard};
use oba_webbotauth::directory::Directory;
use oba_webbotauth::keys::{AgentKey, StaticKeys};
use oba_webbotauth::*;
use serde_json::Value;

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-vectors/webbotauth-vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn find<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no {id}"))
}

fn message(m: &Value) -> Message {
    let mut raw = format!("{}\r\n", m["start_line"].as_str().unwrap());
    for h in m["headers"].as_array().unwrap() {
        raw.push_str(&format!(
            "{}: {}\r\n",
            h[0].as_str().unwrap(),
            h[1].as_str().unwrap()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(m["body"].as_str().unwrap_or_default());
    Message::parse(raw.as_bytes()).unwrap()
}

fn jwk(key_ref: &str) -> Jwk {
    Jwk::parse(&vectors()["keys"][key_ref]["jwk"].to_string()).unwrap()
}

fn permissive() -> VerifyPolicy {
    VerifyPolicy {
        allow_test_keys: true,
        max_validity: u32::MAX,
        ..VerifyPolicy::default()
    }
}

fn run_signature_vector(id: &str) {
    let v = find(&vectors()["signature_vectors"], id);
    let msg = message(&v["message"]);
    let label = v["label"].as_str().unwrap();
    let private = jwk(v["key_ref"].as_str().unwrap());
    let public = AgentKey::from_public_jwk(&private.public().unwrap(), false).unwrap();
    assert_eq!(
        public.thumbprint,
        v["keyid"].as_str().unwrap(),
        "keyid is the thumbprint"
    );

    // The base, byte for byte.
    let entries = oba_httpsig::signatures(&msg).unwrap();
    let entry = entries
        .iter()
        .find(|(l, _)| l == label)
        .unwrap()
        .1
        .as_ref()
        .unwrap();
    assert_eq!(
        entry.params.as_str(),
        v["signature_params_serialized"].as_str().unwrap()
    );
    let base = oba_httpsig::signature_base(&msg, None, &entry.params).unwrap();
    assert_eq!(
        String::from_utf8(base.clone()).unwrap(),
        v["signature_base"].as_str().unwrap()
    );

    // Keys known for the agent the request names, and for requests without one.
    let mut keys = StaticKeys::new();
    if let Some(sa) = v["signature_agent_header"].as_str() {
        if let Ok(parsed) = SignatureAgent::parse(sa) {
            for m in &parsed.members {
                if let Ok(agent) = m.resolve(false) {
                    keys.insert(
                        Some(&agent),
                        AgentKey::from_public_jwk(&private.public().unwrap(), false).unwrap(),
                    );
                }
            }
        }
    }
    keys.insert(
        None,
        AgentKey::from_public_jwk(&private.public().unwrap(), false).unwrap(),
    );
    let now = v["verify_at"].as_i64().unwrap();
    let outcome = verify_request(&msg, &keys, None, &permissive(), now);

    match v["expected_result"].as_str().unwrap() {
        "valid" => {
            let Outcome::Verified(who) = &outcome else {
                panic!("{id}: {outcome:?}")
            };
            assert_eq!(who.label, label);
            assert_eq!(who.thumbprint, v["keyid"].as_str().unwrap());
            // Deterministic (Ed25519): re-signing the base reproduces the signature.
            if v["deterministic"].as_bool().unwrap() {
                let key = private.signing_key(None).unwrap();
                let sig =
                    base64::engine::general_purpose::STANDARD.encode(key.sign(&base).unwrap());
                assert_eq!(sig, v["signature_b64"].as_str().unwrap());
            }
            // The RFC example keys are refused by default.
            let strict = VerifyPolicy {
                max_validity: u32::MAX,
                ..VerifyPolicy::default()
            };
            let Outcome::Invalid(r) = verify_request(&msg, &keys, None, &strict, now) else {
                panic!()
            };
            assert_eq!(r.code, "test_key");
        }
        "invalid" => {
            let Outcome::Invalid(r) = &outcome else {
                panic!("{id}: {outcome:?}")
            };
            assert_eq!(r.code, "bad_signature", "{id}: {}", v["why"]);
            // The base it was really signed over does verify: the defect is the vector's.
            let really = v["signature_base_that_verifies"].as_str().unwrap();
            let sig = base64::engine::general_purpose::STANDARD
                .decode(v["signature_b64"].as_str().unwrap())
                .unwrap();
            oba_httpsig::Verifier::verify(&public.key, really.as_bytes(), &sig).unwrap();
        }
        other => panic!("{other}"),
    }
}

macro_rules! signature_vectors {
    ($($name:ident => $id:literal,)*) => {
        $( #[test] fn $name() { run_signature_vector($id); } )*
        #[test]
        fn every_signature_vector_has_a_named_test() {
            let ids: Vec<&str> = vec![$($id),*];
            let all: Vec<&str> = vectors()["signature_vectors"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
            assert_eq!(ids, all);
        }
    };
}

signature_vectors! {
    wba_p02_rsa_pss_sa_dictionary => "wba-p02-rsa-pss-sa-dictionary",
    wba_p02_rsa_pss_sa_legacy_string => "wba-p02-rsa-pss-sa-legacy-string",
    wba_p02_ed25519_sa_dictionary => "wba-p02-ed25519-sa-dictionary",
    wba_p02_ed25519_sa_legacy_string => "wba-p02-ed25519-sa-legacy-string",
    wba_p01_rsa_pss_sa_absent => "wba-p01-rsa-pss-sa-absent",
    wba_p01_ed25519_sa_absent => "wba-p01-ed25519-sa-absent",
    wba_ietf_editor_rsa_pss_sa_dictionary_sig2 => "wba-ietf-editor-rsa-pss-sa-dictionary-sig2",
    wba_ietf_editor_ed25519_sa_dictionary_sig2 => "wba-ietf-editor-ed25519-sa-dictionary-sig2",
    wba_arch05_rsa_pss_sa_absent => "wba-arch05-rsa-pss-sa-absent",
    wba_arch05_rsa_pss_sa_dictionary_broken => "wba-arch05-rsa-pss-sa-dictionary-broken",
    wba_arch05_ed25519_sa_absent => "wba-arch05-ed25519-sa-absent",
    wba_arch05_ed25519_sa_dictionary_broken => "wba-arch05-ed25519-sa-dictionary-broken",
    wba_arch05_relabel_example => "wba-arch05-relabel-example",
    wba_arch04_rsa_pss_sa_absent => "wba-arch04-rsa-pss-sa-absent",
    wba_arch04_rsa_pss_sa_dictionary_broken => "wba-arch04-rsa-pss-sa-dictionary-broken",
    wba_arch04_ed25519_sa_absent => "wba-arch04-ed25519-sa-absent",
    wba_arch04_ed25519_sa_dictionary_broken => "wba-arch04-ed25519-sa-dictionary-broken",
    wba_arch01_ed25519_sa_absent => "wba-arch01-ed25519-sa-absent",
    wba_arch01_ed25519_sa_bare_token => "wba-arch01-ed25519-sa-bare-token",
    cf_crate_ed25519_sa_legacy_string => "cf-crate-ed25519-sa-legacy-string",
    cf_example_verify_rs_whole_dictionary_broken => "cf-example-verify-rs-whole-dictionary-broken",
}

// ---------------------------------------------------------------------------
// Thumbprints

fn run_thumbprint(id: &str) {
    let v = find(&vectors()["thumbprint_vectors"], id);
    let j = Jwk::parse(v["jwk_json"].as_str().unwrap()).unwrap();
    let t = j.thumbprint().unwrap();
    match v["thumbprint"].as_str() {
        Some(expected) => assert_eq!(t, expected),
        None => {
            // The draft directory example: its kid is not its thumbprint.
            assert_ne!(Some(t.as_str()), j.kid.as_deref());
        }
    }
}

#[test]
fn thumbprint_vectors() {
    let all = vectors()["thumbprint_vectors"].as_array().unwrap();
    assert!(all.len() >= 4);
    for v in all {
        run_thumbprint(v["id"].as_str().unwrap());
    }
}

#[test]
fn known_test_key_list_is_the_rfc_keys() {
    let rfc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-vectors/rfc9421-vectors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for k in [
        "test-key-rsa",
        "test-key-rsa-pss",
        "test-key-ecc-p256",
        "test-key-ed25519",
    ] {
        let t = Jwk::parse(&rfc["keys"][k]["jwk"].to_string())
            .unwrap()
            .thumbprint()
            .unwrap();
        assert!(keys::is_known_test_key(&t), "{k}");
    }
}

// ---------------------------------------------------------------------------
// Signature-Agent header examples

fn run_signature_agent(id: &str) {
    let v = find(&vectors()["signature_agent_header_examples"], id);
    let header = v["header"].as_str().unwrap();
    let expected = &v["expected"];
    let parsed = SignatureAgent::parse(header);
    if expected["form"] == "error" {
        assert!(parsed.is_err(), "{id}");
        return;
    }
    if expected["form"] == "not usable" {
        // Neither a String nor a Dictionary of Strings: no URL can come from it.
        assert!(
            parsed.map_or(true, |p| p
                .members
                .iter()
                .all(|m| m.resolve(false).is_err())),
            "{id}"
        );
        return;
    }
    let parsed = parsed.unwrap_or_else(|e| panic!("{id}: {e}"));
    let form = match expected["form"].as_str().unwrap() {
        "dictionary" => AgentForm::Dictionary,
        "legacy-sf-string" => AgentForm::LegacyString,
        "bare-url" => AgentForm::BareUrl,
        other => panic!("{other}"),
    };
    assert_eq!(parsed.form, form, "{id}");
    let entries = expected["entries"].as_array().unwrap();
    assert_eq!(parsed.members.len(), entries.len());
    for (m, e) in parsed.members.iter().zip(entries) {
        assert_eq!(m.uri, e["uri"].as_str().unwrap());
        let kind = match e["type"].as_str().unwrap() {
            "directory" => AgentType::Directory,
            "jwks_uri" => AgentType::JwksUri,
            "cimd" => AgentType::Cimd,
            other => panic!("{other}"),
        };
        assert_eq!(m.kind, kind);
        if form == AgentForm::Dictionary {
            assert_eq!(m.key, e["label"].as_str().unwrap());
        }
    }
}

#[test]
fn signature_agent_header_examples() {
    let all = vectors()["signature_agent_header_examples"]
        .as_array()
        .unwrap();
    for v in all {
        run_signature_agent(v["id"].as_str().unwrap());
    }
}

#[test]
fn signature_agent_members_must_be_https_and_directories_origins() {
    let m = |h: &str| SignatureAgent::parse(h).unwrap().members[0].resolve(false);
    assert!(m(r#"a="https://agent.example""#).is_ok());
    assert!(m(r#"a="https://agent.example/""#).is_ok());
    assert!(m(r#"a="http://agent.example""#).is_err());
    assert!(
        m(r#"a="https://agent.example/keys""#).is_err(),
        "a directory must be an origin"
    );
    assert!(m(r#"a="https://agent.example/keys.json";type=jwks_uri"#).is_ok());
    assert!(m(r#"a="https://user@agent.example""#).is_err());
    assert!(m(r#"a="ftp://agent.example""#).is_err());
    assert!(m(r#"a="http://127.0.0.1:8080""#).is_err());
    assert!(SignatureAgent::parse(r#"a="http://127.0.0.1:8080""#)
        .unwrap()
        .members[0]
        .resolve(true)
        .is_ok());
    let bare = SignatureAgent::parse("https://agent.example").unwrap();
    assert_eq!(bare.form, AgentForm::BareUrl);
    assert!(SignatureAgent::parse(r#"a=1"#).is_err());
    assert!(SignatureAgent::parse(r#"a="https://x";type=unknown"#).is_err());
}

// ---------------------------------------------------------------------------
// Directories

#[test]
fn dir_p02_signed_directory_response() {
    let v = find(
        &vectors()["directory_examples"],
        "dir-p02-signed-directory-response",
    );
    let req = message(&v["related_request"]);
    let mut raw = String::from("HTTP/1.1 200 OK\r\n");
    for h in v["message"]["headers"].as_array().unwrap() {
        raw.push_str(&format!(
            "{}: {}\r\n",
            h[0].as_str().unwrap(),
            h[1].as_str().unwrap()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(v["message"]["body"].as_str().unwrap());
    let resp = Message::parse(raw.as_bytes()).unwrap();
    let dir = Directory::parse(resp.body()).unwrap();
    assert_eq!(dir.keys.len(), 1);
    let signed_by = dir
        .verify_response(&resp, &req, v["verify_at"].as_i64().unwrap())
        .unwrap();
    assert_eq!(signed_by, vec![v["keyid"].as_str().unwrap().to_owned()]);
    // The base, byte for byte.
    let entries = oba_httpsig::signatures(&resp).unwrap();
    let entry = entries[0].1.as_ref().unwrap();
    let base =
        oba_httpsig::signature_base(&resp, Some(&req as &dyn HttpMessage), &entry.params).unwrap();
    assert_eq!(
        String::from_utf8(base).unwrap(),
        v["signature_base"].as_str().unwrap()
    );
    // Fetched through another authority, the binding fails.
    let other = Message::request("GET", "/.well-known/http-message-signatures-directory")
        .unwrap()
        .with_header("Host", "evil.example");
    assert!(dir
        .verify_response(&resp, &other, v["verify_at"].as_i64().unwrap())
        .is_err());
    // A changed body fails the digest.
    let tampered =
        Message::parse(raw.replace("\"use\":\"sig\"", "\"use\":\"enc\"").as_bytes()).unwrap();
    assert!(dir
        .verify_response(&tampered, &req, v["verify_at"].as_i64().unwrap())
        .is_err());
}

#[test]
fn dir_p02_directory_format_example_kid_is_not_the_thumbprint() {
    let v = find(
        &vectors()["directory_examples"],
        "dir-p02-directory-format-example",
    );
    let block = v["printed_block"].as_str().unwrap();
    let body = &block[block
        .find("{\"keys\"")
        .or_else(|| block.find("{\n"))
        .unwrap()..];
    let err = Directory::parse(body.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("thumbprint"), "{err}");
}

#[test]
fn signed_directory_round_trip_for_every_key_type() {
    let keys: Vec<Jwk> = [
        oba_httpsig::Algorithm::Ed25519,
        oba_httpsig::Algorithm::EcdsaP256Sha256,
        oba_httpsig::Algorithm::EcdsaP384Sha384,
    ]
    .into_iter()
    .map(|a| Jwk::generate(a).unwrap())
    .collect();
    let req = Message::request("GET", oba_webbotauth::directory::WELL_KNOWN_PATH)
        .unwrap()
        .with_header("Host", "bot.example");
    let resp =
        oba_webbotauth::directory::signed_directory_response(&keys, &req, 1000, 3600).unwrap();
    assert_eq!(
        resp.header("content-type").unwrap(),
        oba_webbotauth::directory::MEDIA_TYPE
    );
    let reparsed = Message::parse(&resp.to_bytes()).unwrap();
    let dir = Directory::parse(reparsed.body()).unwrap();
    assert_eq!(dir.keys.len(), 3);
    let signed = dir.verify_response(&reparsed, &req, 1001).unwrap();
    assert_eq!(signed.len(), 3);
    // No private member is published.
    assert!(!String::from_utf8_lossy(reparsed.body()).contains("\"d\""));
    // HMAC keys cannot be published.
    let hmac = Jwk::generate(oba_httpsig::Algorithm::HmacSha256).unwrap();
    assert!(
        oba_webbotauth::directory::signed_directory_response(&[hmac], &req, 1000, 3600).is_err()
    );
}

#[test]
fn directories_refuse_private_symmetric_and_too_many_keys() {
    let private = Jwk::generate(oba_httpsig::Algorithm::Ed25519).unwrap();
    let body = serde_json::json!({"keys": [private]}).to_string();
    assert!(
        Directory::parse(body.as_bytes()).is_err(),
        "private members"
    );
    let body = serde_json::json!({"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}).to_string();
    assert!(Directory::parse(body.as_bytes()).is_err(), "symmetric");
    let mut p = private.public().unwrap();
    p.kid = p.thumbprint().ok();
    let many: Vec<_> = (0..65).map(|_| p.clone()).collect();
    assert!(Directory::parse(serde_json::json!({"keys": many}).to_string().as_bytes()).is_err());
    assert!(Directory::parse(b"not json").is_err());
    assert!(Directory::parse(serde_json::json!({"keys": [p]}).to_string().as_bytes()).is_ok());
}

// ---------------------------------------------------------------------------
// Cards and registry lists

#[test]
fn signature_agent_cards() {
    for v in vectors()["registry_and_card_examples"]["signature_agent_cards"]
        .as_array()
        .unwrap()
    {
        let id = v["id"].as_str().unwrap();
        let body = v["card"].to_string();
        match (v["url"].as_str(), v["expected"]["valid"].as_bool()) {
            (Some(url), Some(true)) => {
                SignatureAgentCard::parse(body.as_bytes(), url)
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
            }
            (Some(url), Some(false)) => {
                let err = SignatureAgentCard::parse(body.as_bytes(), url)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(v["expected"]["error_contains"].as_str().unwrap()),
                    "{id}: {err}"
                );
            }
            // registry-01 flat cards are not CIMD cards under registry-03.
            (None, _) => assert!(
                SignatureAgentCard::parse(body.as_bytes(), "https://example.com/bot").is_err(),
                "{id}"
            ),
            other => panic!("{id}: {other:?}"),
        }
    }
}

#[test]
fn registry_lists() {
    for v in vectors()["registry_and_card_examples"]["registry_lists"]
        .as_array()
        .unwrap()
    {
        let id = v["id"].as_str().unwrap();
        let text = v["registry_txt"].as_str().unwrap();
        let parsed = parse_registry_list(text);
        match v["expected"]["valid"].as_bool().unwrap() {
            true => {
                let got: Vec<String> = parsed
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().to_owned())
                    .collect();
                let want: Vec<String> = v["expected"]["signature_agent_cards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(got, want, "{id}");
            }
            false if id.contains("data-url") => {
                // We follow the draft: inline data: cards are entries (not an error).
                assert!(
                    matches!(parsed.unwrap()[0], RegistryEntry::Inline(_)),
                    "{id}"
                );
            }
            false => {
                let err = parsed.unwrap_err().to_string();
                assert!(
                    err.contains(v["expected"]["error_contains"].as_str().unwrap()),
                    "{id}: {err}"
                );
            }
        }
    }
}
