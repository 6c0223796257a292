//! The Web Bot Auth profile, signer and verifier, positive and negative side by side.

use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Component, Message, SignatureParams, Signer};
use oba_webbotauth::agent::SignatureAgent;
use oba_webbotauth::keys::{AgentKey, StaticKeys};
use oba_webbotauth::nonce::InMemoryNonceStore;
use oba_webbotauth::*;

const NOW: i64 = 1_800_000_000;
const AGENT: &str = "https://bot.example";

fn setup() -> (Jwk, WebBotAuthSigner, StaticKeys) {
    let jwk = Jwk::generate(Algorithm::Ed25519).unwrap();
    let signer = WebBotAuthSigner::new(&jwk)
        .unwrap()
        .with_signature_agent(AGENT)
        .unwrap();
    let mut keys = StaticKeys::new();
    let agent = SignatureAgent::parse(&format!("a=\"{AGENT}\""))
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    keys.insert(
        Some(&agent),
        AgentKey::from_public_jwk(&jwk.public().unwrap(), false).unwrap(),
    );
    (jwk, signer, keys)
}

fn request() -> Message {
    Message::request("POST", "/api?q=1")
        .unwrap()
        .with_header("Host", "site.example")
        .with_body(b"{\"a\":1}".to_vec())
}

fn signed(signer: &WebBotAuthSigner, mut m: Message) -> Message {
    let body = m.body().to_vec();
    for (n, v) in signer.sign(&m, &body, NOW).unwrap() {
        m.append_header(n, v);
    }
    m
}

fn code(o: &Outcome) -> (&'static str, &'static str) {
    match o {
        Outcome::Verified(_) => ("verified", ""),
        Outcome::Invalid(r) => ("invalid", r.code),
        Outcome::Unverified(r) => ("unverified", r.code),
    }
}

#[test]
fn signer_output_follows_the_profile() {
    let (jwk, signer, keys) = setup();
    let m = signed(&signer, request());
    let input = m.header("signature-input").unwrap();
    assert!(input.starts_with(r#"sig1=("@authority" "@method" "@path" "@query" "content-digest" "signature-agent";key="sig1");created=1800000000;expires=1800000060;"#), "{input}");
    assert!(input.contains(&format!("keyid=\"{}\"", jwk.thumbprint().unwrap())));
    assert!(input.contains("tag=\"web-bot-auth\"") && input.contains("nonce=\""));
    assert_eq!(
        m.header("signature-agent").unwrap(),
        format!("sig1=\"{AGENT}\"")
    );
    assert!(m.header("content-digest").unwrap().starts_with("sha-256=:"));
    let Outcome::Verified(v) = verify_request(&m, &keys, None, &VerifyPolicy::default(), NOW + 5)
    else {
        panic!()
    };
    assert_eq!(v.agent.unwrap().url.as_str(), "https://bot.example/");
    assert_eq!(v.thumbprint, jwk.thumbprint().unwrap());
}

#[test]
fn signer_refuses_hmac_long_validity_and_http_agents() {
    assert!(WebBotAuthSigner::new(&Jwk::generate(Algorithm::HmacSha256).unwrap()).is_err());
    let jwk = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let s = WebBotAuthSigner::new(&jwk).unwrap();
    assert!(s.with_validity(MAX_VALIDITY_SECS + 1).is_err());
    let s = WebBotAuthSigner::new(&jwk).unwrap();
    assert!(s.with_signature_agent("http://bot.example").is_err());
    let s = WebBotAuthSigner::new(&jwk).unwrap();
    assert!(s.with_signature_agent("not a url").is_err());
}

#[test]
fn replays_are_rejected_only_after_the_signature_verified() {
    let (_, signer, keys) = setup();
    let m = signed(&signer, request());
    let nonces = InMemoryNonceStore::default();
    let p = VerifyPolicy::default();
    // A forged copy (body and digest changed, same nonce) does not burn the nonce.
    let mut forged = m.clone();
    forged.remove_header("content-digest");
    forged.append_header(
        "Content-Digest",
        "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
    );
    assert_eq!(
        code(&verify_request(&forged, &keys, Some(&nonces), &p, NOW)),
        ("invalid", "bad_signature")
    );
    assert!(nonces.is_empty());
    assert_eq!(
        code(&verify_request(&m, &keys, Some(&nonces), &p, NOW)).0,
        "verified"
    );
    assert_eq!(
        code(&verify_request(&m, &keys, Some(&nonces), &p, NOW + 1)),
        ("invalid", "replay")
    );
}

#[test]
fn time_and_validity_are_enforced() {
    let (_, signer, keys) = setup();
    let m = signed(&signer, request());
    let p = VerifyPolicy::default();
    assert_eq!(
        code(&verify_request(&m, &keys, None, &p, NOW + 60 + 61)),
        ("invalid", "expired")
    );
    assert_eq!(
        code(&verify_request(&m, &keys, None, &p, NOW - 61)),
        ("invalid", "not_yet_valid")
    );
    let strict = VerifyPolicy {
        max_validity: 30,
        ..VerifyPolicy::default()
    };
    assert_eq!(
        code(&verify_request(&m, &keys, None, &strict, NOW)),
        ("invalid", "validity_too_long")
    );
}

/// Signs with hand-picked components/params (to break the profile on purpose).
fn custom(jwk: &Jwk, components: &[&str], params: &str, sa: Option<&str>) -> Message {
    let mut m = request();
    if let Some(sa) = sa {
        m.append_header("Signature-Agent", sa);
    }
    let key = jwk.signing_key(None).unwrap();
    let p = SignatureParams::new(
        components
            .iter()
            .map(|c| c.parse::<Component>().unwrap())
            .collect(),
    )
    .unwrap()
    .with_params_str(params)
    .unwrap();
    let sig = oba_httpsig::sign(&m, None, "sig1", p, &key).unwrap();
    m.append_header("Signature-Input", sig.signature_input());
    m.append_header("Signature", sig.signature());
    m
}

#[test]
fn profile_violations() {
    let (jwk, _, keys) = setup();
    let t = jwk.thumbprint().unwrap();
    let sa = Some(r#"sig1="https://bot.example""#);
    let member = r#""signature-agent";key="sig1""#;
    let ok = format!(
        r#"created={NOW};expires={};keyid="{t}";tag="web-bot-auth""#,
        NOW + 60
    );
    let p = VerifyPolicy::default();
    let run = |m: &Message| code(&verify_request(m, &keys, None, &p, NOW));
    assert_eq!(
        run(&custom(&jwk, &["@authority", member], &ok, sa)).0,
        "verified"
    );
    // No tag: not a Web Bot Auth signature at all.
    let no_tag = format!(r#"created={NOW};expires={};keyid="{t}""#, NOW + 60);
    assert_eq!(
        run(&custom(&jwk, &["@authority", member], &no_tag, sa)),
        ("unverified", "no_web_bot_auth_signature")
    );
    // Another tag.
    let other_tag = ok.replace("web-bot-auth", "other");
    assert_eq!(
        run(&custom(&jwk, &["@authority", member], &other_tag, sa)).0,
        "unverified"
    );
    // No expires.
    let no_exp = format!(r#"created={NOW};keyid="{t}";tag="web-bot-auth""#);
    assert_eq!(
        run(&custom(&jwk, &["@authority", member], &no_exp, sa)),
        ("invalid", "missing_parameter")
    );
    // Neither @authority nor @target-uri.
    assert_eq!(
        run(&custom(&jwk, &["@path", member], &ok, sa)),
        ("invalid", "required_component_missing")
    );
    assert_eq!(
        run(&custom(&jwk, &["@target-uri", member], &ok, sa)).0,
        "verified"
    );
    // Signature-Agent present but not covered.
    assert_eq!(
        run(&custom(&jwk, &["@authority"], &ok, sa)),
        ("invalid", "signature_agent_not_covered")
    );
    // Covered member absent from the dictionary: the base cannot be built.
    assert_eq!(
        run(&custom(
            &jwk,
            &["@authority", r#""signature-agent";key="zz""#],
            &ok,
            Some(r#"zz="https://bot.example""#)
        ))
        .0,
        "verified"
    );
    let mut m = custom(
        &jwk,
        &["@authority", r#""signature-agent";key="zz""#],
        &ok,
        Some(r#"zz="https://bot.example""#),
    );
    m.remove_header("signature-agent");
    m.append_header("Signature-Agent", r#"yy="https://bot.example""#);
    assert_eq!(
        run(&m),
        ("unverified", "unknown_key"),
        "member missing: agent unknown, key not configured"
    );
    // An http agent is not used: the key is then unknown.
    assert_eq!(
        run(&custom(
            &jwk,
            &["@authority", member],
            &ok,
            Some(r#"sig1="http://bot.example""#)
        )),
        ("unverified", "unknown_key")
    );
    // A directory member that is not an origin is not used either.
    assert_eq!(
        run(&custom(
            &jwk,
            &["@authority", member],
            &ok,
            Some(r#"sig1="https://bot.example/keys""#)
        )),
        ("unverified", "unknown_key")
    );
    // The legacy string and the bare URL (documented leniencies) resolve the agent.
    assert_eq!(
        run(&custom(
            &jwk,
            &["@authority", "signature-agent"],
            &ok,
            Some(r#""https://bot.example""#)
        ))
        .0,
        "verified"
    );
    assert_eq!(
        run(&custom(
            &jwk,
            &["@authority", "signature-agent"],
            &ok,
            Some("https://bot.example")
        ))
        .0,
        "verified"
    );
    // A keyid for another key: unknown.
    let other = ok.replace(&t, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        run(&custom(&jwk, &["@authority", member], &other, sa)),
        ("unverified", "unknown_key")
    );
    // Unsigned.
    assert_eq!(run(&request()), ("unverified", "no_signature"));
    // Garbage signature fields are invalid, not unverified.
    let g = request()
        .with_header("Signature-Input", "sig1=(")
        .with_header("Signature", "sig1=:AA==:");
    assert_eq!(run(&g), ("invalid", "malformed_header"));
}

#[test]
fn keys_are_looked_up_by_agent_and_thumbprint() {
    let (_, signer, _) = setup();
    let m = signed(&signer, request());
    // The right key, registered for another agent, does not verify this one.
    let jwk2 = Jwk::generate(Algorithm::Ed25519).unwrap();
    let mut keys = StaticKeys::new();
    let elsewhere = SignatureAgent::parse(r#"a="https://other.example""#)
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    keys.insert(
        Some(&elsewhere),
        AgentKey::from_public_jwk(&jwk2.public().unwrap(), false).unwrap(),
    );
    assert_eq!(
        code(&verify_request(
            &m,
            &keys,
            None,
            &VerifyPolicy::default(),
            NOW
        )),
        ("unverified", "unknown_key")
    );
}

#[test]
fn test_keys_are_refused_unless_allowed() {
    let rfc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-vectors/rfc9421-vectors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let jwk = Jwk::parse(&rfc["keys"]["test-key-ed25519"]["jwk"].to_string()).unwrap();
    let signer = WebBotAuthSigner::new(&jwk)
        .unwrap()
        .with_signature_agent(AGENT)
        .unwrap();
    let m = signed(&signer, request());
    let mut keys = StaticKeys::new();
    let agent = SignatureAgent::parse(&format!("a=\"{AGENT}\""))
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    keys.insert(
        Some(&agent),
        AgentKey::from_public_jwk(&jwk.public().unwrap(), false).unwrap(),
    );
    assert_eq!(
        code(&verify_request(
            &m,
            &keys,
            None,
            &VerifyPolicy::default(),
            NOW
        )),
        ("invalid", "test_key")
    );
    let allow = VerifyPolicy {
        allow_test_keys: true,
        ..VerifyPolicy::default()
    };
    assert_eq!(
        code(&verify_request(&m, &keys, None, &allow, NOW)).0,
        "verified"
    );
}

#[test]
fn public_key_validation() {
    let private = Jwk::generate(Algorithm::EcdsaP384Sha384).unwrap();
    assert!(
        AgentKey::from_public_jwk(&private, false).is_err(),
        "private members"
    );
    let mut public = private.public().unwrap();
    public.kid = Some("my-key".into());
    assert!(
        AgentKey::from_public_jwk(&public, true).is_err(),
        "a directory needs kid = thumbprint"
    );
    assert!(AgentKey::from_public_jwk(&public, false).is_ok());
    public.kid = None;
    assert!(
        AgentKey::from_public_jwk(&public, true).is_err(),
        "and a kid at all"
    );
    public.kid = public.thumbprint().ok();
    assert!(AgentKey::from_public_jwk(&public, true).is_ok());
    let mut bad = public.clone();
    bad.x = Some("AAAA".into());
    assert!(
        AgentKey::from_public_jwk(&bad, false).is_err(),
        "wrong length"
    );
    let mut bad = public;
    bad.crv = Some("P-521".into());
    assert!(
        AgentKey::from_public_jwk(&bad, false).is_err(),
        "unsupported curve"
    );
    let key = private.signing_key(None).unwrap();
    assert_eq!(key.algorithm(), Algorithm::EcdsaP384Sha384);
}

#[test]
fn a_signature_agent_with_a_path_is_sent_as_a_jwks_uri_member() {
    let jwk = Jwk::generate(Algorithm::Ed25519).unwrap();
    let url = "https://registry.example/agents/abc/jwks.json";
    let signer = WebBotAuthSigner::new(&jwk)
        .unwrap()
        .with_signature_agent(url)
        .unwrap();
    let m = signed(&signer, request());
    assert_eq!(
        m.header("signature-agent").unwrap(),
        format!("sig1=\"{url}\";type=jwks_uri")
    );
    let sa = SignatureAgent::parse(&m.header("signature-agent").unwrap()).unwrap();
    let agent = sa.members[0].resolve(false).unwrap();
    assert_eq!(agent.fetch_url().as_str(), url);
    let mut keys = StaticKeys::new();
    keys.insert(
        Some(&agent),
        AgentKey::from_public_jwk(&jwk.public().unwrap(), false).unwrap(),
    );
    assert_eq!(
        code(&verify_request(
            &m,
            &keys,
            None,
            &VerifyPolicy::default(),
            NOW
        ))
        .0,
        "verified"
    );
}
