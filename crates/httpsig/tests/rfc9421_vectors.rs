//! RFC 9421 conformance: every vector of `test-vectors/rfc9421-vectors.json` as its own
//! named test. Signature bases are compared byte for byte, deterministic signatures
//! (Ed25519, HMAC, RSA v1.5) are reproduced byte for byte, randomized ones (ECDSA,
//! RSA-PSS) are verified, negative ones are rejected.

use std::sync::OnceLock;

use base64::Engine;
use oba_httpsig::accept::parse_accept_signature;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::*;
use serde_json::Value;

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-vectors/rfc9421-vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("JSON")
    })
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Builds a message from the JSON form (start line, headers in order, body).
fn message(m: &Value) -> Message {
    let mut raw = String::new();
    raw.push_str(m["start_line"].as_str().unwrap());
    raw.push_str("\r\n");
    for h in m["headers"].as_array().unwrap() {
        raw.push_str(&format!(
            "{}: {}\r\n",
            h[0].as_str().unwrap(),
            h[1].as_str().unwrap()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(m["body"].as_str().unwrap_or_default());
    Message::parse(raw.as_bytes()).expect("vector message parses")
}

fn lookup_message(reference: &str) -> Value {
    let v = vectors();
    if let Some(m) = v["messages"].get(reference) {
        return m.clone();
    }
    if let Some(m) = v["extra_messages"].get(reference) {
        return m.clone();
    }
    // "<vector id>.message"
    let id = reference
        .strip_suffix(".message")
        .expect("message reference");
    vector(id)["message"].clone()
}

fn vector(id: &str) -> &'static Value {
    vectors()["signature_vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
}

fn algorithm(v: &Value) -> Algorithm {
    v["algorithm"].as_str().unwrap().parse().unwrap()
}

fn keys(key_id: &str, alg: Algorithm) -> (SigningKey, VerifyingKey) {
    let k = &vectors()["keys"][key_id];
    if let Some(secret) = k["secret_base64"].as_str() {
        let s = SigningKey::hmac_sha256(&b64(secret))
            .unwrap()
            .with_key_id(key_id);
        let v = VerifyingKey::hmac_sha256(&b64(secret))
            .unwrap()
            .with_key_id(key_id);
        return (s, v);
    }
    let jwk = Jwk::parse(&k["jwk"].to_string()).unwrap();
    let s = jwk.signing_key(Some(alg)).unwrap();
    let v = jwk.public().unwrap().verifying_key(Some(alg)).unwrap();
    (s, v)
}

/// The signed message and, for `;req`, its related request.
fn signed_message(v: &Value) -> (Message, Option<Message>) {
    let mut m = match v.get("message") {
        Some(m) => message(m),
        None => message(&lookup_message(v["message_ref"].as_str().unwrap())),
    };
    if m.header("signature-input").is_none() {
        m.append_header(
            "Signature-Input",
            v["signature_input_header"].as_str().unwrap(),
        );
        m.append_header("Signature", v["signature_header"].as_str().unwrap());
    }
    let related = match (v.get("related_request"), v.get("related_request_ref")) {
        (Some(r), _) => Some(message(r)),
        (None, Some(r)) => Some(message(&lookup_message(r.as_str().unwrap()))),
        _ => None,
    };
    (m, related)
}

fn run_signature_vector(id: &str) {
    let v = vector(id);
    let label = v["label"].as_str().unwrap();
    let alg = algorithm(v);
    let (msg, related) = signed_message(v);
    let related_dyn = related.as_ref().map(|r| r as &dyn HttpMessage);

    // The parameters, rebuilt in the received order.
    let all =
        parse_signature_input(v["signature_input_header"].as_str().unwrap().as_bytes()).unwrap();
    let params = &all
        .iter()
        .find(|(l, _)| l == label)
        .expect("label in Signature-Input")
        .1;
    assert_eq!(
        params.as_str(),
        v["signature_params_serialized"].as_str().unwrap()
    );
    let expected_params: Vec<&str> = v["signature_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(params.param_names().collect::<Vec<_>>(), expected_params);

    // The signature base, byte for byte.
    let base = signature_base(&msg, related_dyn, params).expect("base");
    let expected_base = v["signature_base"].as_str().unwrap();
    assert_eq!(String::from_utf8(base.clone()).unwrap(), expected_base);

    let (signing, verifying) = keys(v["key_id"].as_str().unwrap(), alg);
    let published = b64(v["signature_b64"].as_str().unwrap());
    let now = params.created().expect("every vector has created");
    let policy = Policy::default();
    let result = verify(&msg, related_dyn, Some(label), &verifying, &policy, now);

    match v["expected_result"].as_str().unwrap() {
        "valid" => {
            let ok = result.unwrap_or_else(|e| panic!("{id} must verify: {e}"));
            assert_eq!(ok.algorithm, alg);
            assert_eq!(ok.label, label);
            // Deterministic algorithms: a fresh signature equals the published one.
            if v["deterministic"].as_bool().unwrap() {
                let fresh = sign(
                    &strip_label(&msg, label),
                    related_dyn,
                    label,
                    params.clone(),
                    &signing,
                )
                .unwrap();
                assert_eq!(
                    fresh.bytes(),
                    &published[..],
                    "{id}: deterministic signature differs"
                );
            } else {
                // Randomized: a fresh signature differs but verifies too.
                let fresh = signing.sign(&base).unwrap();
                verifying.verify(&base, &fresh).unwrap();
            }
            // Any change to the signature breaks it.
            let mut tampered = published.clone();
            tampered[0] ^= 1;
            assert!(verifying
                .verify(&base, &tampered)
                .unwrap_err()
                .is_bad_signature());
        }
        "invalid" => {
            let err = result.expect_err("negative vector must be rejected");
            assert_eq!(err.reason(), Reason::BadSignature, "{id}: {err}");
        }
        other => panic!("unknown expected_result {other}"),
    }
}

/// The message without the signature labelled `label` (so it can be signed afresh).
fn strip_label(msg: &Message, label: &str) -> Message {
    let mut m = msg.clone();
    let input = m.header("signature-input").unwrap();
    let sig = m.header("signature").unwrap();
    m.remove_header("signature-input");
    m.remove_header("signature");
    let keep_inputs: Vec<String> = parse_signature_input(input.as_bytes())
        .unwrap()
        .into_iter()
        .filter(|(l, _)| l != label)
        .map(|(l, p)| signature_input_member(&l, &p))
        .collect();
    let keep_sigs: Vec<String> = parse_signature(sig.as_bytes())
        .unwrap()
        .into_iter()
        .filter(|(l, _)| l != label)
        .map(|(l, s)| signature_member(&l, &s))
        .collect();
    if !keep_inputs.is_empty() {
        m.append_header("Signature-Input", keep_inputs.join(", "));
        m.append_header("Signature", keep_sigs.join(", "));
    }
    m
}

macro_rules! signature_vectors {
    ($($name:ident => $id:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_signature_vector($id);
            }
        )*

        #[test]
        fn every_signature_vector_has_a_named_test() {
            let ids: Vec<&str> = vec![$($id),*];
            let all: Vec<&str> = vectors()["signature_vectors"].as_array().unwrap()
                .iter().map(|v| v["id"].as_str().unwrap()).collect();
            assert_eq!(ids, all);
        }
    };
}

signature_vectors! {
    sig_3_1_3_2_sig1 => "3.1-3.2-sig1",
    sig_2_4_reqres_1 => "2.4-reqres-1",
    sig_2_4_signed_request_sig1 => "2.4-signed-request-sig1",
    sig_2_4_reqres_2 => "2.4-reqres-2",
    sig_4_3_client_sig1 => "4.3-client-sig1",
    sig_4_3_proxy_sig => "4.3-proxy_sig",
    sig_b_2_1_minimal_rsa_pss => "B.2.1",
    sig_b_2_2_selective_rsa_pss => "B.2.2",
    sig_b_2_3_full_rsa_pss => "B.2.3",
    sig_b_2_4_response_ecdsa_p256 => "B.2.4",
    sig_b_2_5_hmac_sha256 => "B.2.5",
    sig_b_2_6_ed25519 => "B.2.6",
    sig_b_3_tls_terminating_proxy => "B.3",
    sig_b_4_0_transform_original => "B.4-0",
    sig_b_4_1_transform_valid => "B.4-1",
    sig_b_4_2_transform_valid => "B.4-2",
    sig_b_4_3_transform_valid => "B.4-3",
    sig_b_4_4_transform_method_and_host_changed_invalid => "B.4-4",
    sig_b_4_5_transform_field_order_changed_invalid => "B.4-5",
}

// ---------------------------------------------------------------------------
// Component examples (RFC 9421 2.1 - 2.3, 7.2.8)

fn component_example(id: &str) -> &'static Value {
    vectors()["component_examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no component example {id}"))
}

fn example_message(ex: &Value) -> Message {
    let input = &ex["input"];
    let mut m = if let Some(raw) = input["message_raw"].as_str() {
        let mut raw = raw.to_owned();
        if !raw.contains("\n\n") {
            raw.push('\n');
        }
        Message::parse(raw.as_bytes()).expect("example message parses")
    } else {
        let lines: Vec<&str> = input["header_lines_raw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let raw = format!("GET / HTTP/1.1\n{}\n\n", lines.join("\n"));
        Message::parse(raw.as_bytes()).expect("example message parses")
    };
    if ex["context"]
        .as_str()
        .is_some_and(|c| c.contains("plain HTTP"))
    {
        m.set_scheme("http");
    }
    m
}

/// Splits a base line into (component identifier, value).
fn split_line(line: &str) -> (Component, &str) {
    for (i, _) in line.match_indices(": ") {
        if let Ok(c) = line[..i].parse::<Component>() {
            if line[..i].starts_with('"') {
                return (c, &line[i + 2..]);
            }
        }
    }
    panic!("cannot split base line {line:?}");
}

fn value_of(m: &Message, c: &Component) -> Result<String, Error> {
    let mut out = Vec::new();
    component_value(m, c, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn run_component_example(id: &str) {
    let ex = component_example(id);
    let lines: Vec<&str> = ex["expected_base_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    match id {
        "2.3-sig-params" => {
            let p: SignatureParams = lines[0].parse().unwrap();
            assert_eq!(p.as_str(), lines[0]);
            assert_eq!(
                p.param_names().collect::<Vec<_>>(),
                ["keyid", "alg", "created", "expires"]
            );
            return;
        }
        "2.2.8-query-param-unencoded-INVALID" => {
            // The un-re-encoded form must never be produced: our base for the same
            // components is the valid, re-encoded one, without raw line breaks.
            let m = example_message(ex);
            let names = ["var", "bar", "fa%C3%A7ade%22%3A%20"];
            let components: Vec<Component> = names
                .iter()
                .map(|n| Component::query_param(n).unwrap())
                .collect();
            let base =
                signature_base(&m, None, &SignatureParams::new(components).unwrap()).unwrap();
            let base = String::from_utf8(base).unwrap();
            for bad in &lines {
                assert!(!base.contains(bad), "{bad:?} must not appear");
            }
            assert_eq!(base.lines().count(), 4);
            return;
        }
        _ => {}
    }
    let m = example_message(ex);
    // 7.2.8 prints "@signature-input" by mistake: only the first two lines are data.
    let lines = if id == "7.2.8-content-digest" {
        &lines[..2]
    } else {
        &lines[..]
    };
    for line in lines {
        let (c, expected) = split_line(line);
        let got = value_of(&m, &c).unwrap_or_else(|e| panic!("{id}: {c}: {e}"));
        assert_eq!(got, expected, "{id}: {c}");
    }
    if id == "2.1.2-key" {
        let missing: Component = r#""example-dict";key="zz""#.parse().unwrap();
        assert_eq!(
            value_of(&m, &missing).unwrap_err().reason(),
            Reason::MissingComponent
        );
    }
}

macro_rules! component_examples {
    ($($name:ident => $id:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_component_example($id);
            }
        )*

        #[test]
        fn every_component_example_has_a_named_test() {
            let ids: Vec<&str> = vec![$($id),*];
            let all: Vec<&str> = vectors()["component_examples"].as_array().unwrap()
                .iter().map(|v| v["id"].as_str().unwrap()).collect();
            assert_eq!(ids, all);
        }
    };
}

component_examples! {
    comp_2_1_fields => "2.1-fields",
    comp_2_1_empty => "2.1-empty",
    comp_2_1_1_sf => "2.1.1-sf",
    comp_2_1_2_key => "2.1.2-key",
    comp_2_1_3_bs_multi => "2.1.3-bs-multi",
    comp_2_1_3_bs_single => "2.1.3-bs-single",
    comp_2_1_4_tr => "2.1.4-tr",
    comp_2_2_1_method => "2.2.1-method",
    comp_2_2_2_target_uri => "2.2.2-target-uri",
    comp_2_2_3_authority => "2.2.3-authority",
    comp_2_2_4_scheme => "2.2.4-scheme",
    comp_2_2_5_request_target_origin => "2.2.5-request-target-origin",
    comp_2_2_5_request_target_absolute => "2.2.5-request-target-absolute",
    comp_2_2_5_request_target_authority => "2.2.5-request-target-authority",
    comp_2_2_5_request_target_asterisk => "2.2.5-request-target-asterisk",
    comp_2_2_6_path => "2.2.6-path",
    comp_2_2_7_query => "2.2.7-query",
    comp_2_2_7_query_nonform => "2.2.7-query-nonform",
    comp_2_2_8_query_param => "2.2.8-query-param",
    comp_2_2_8_query_param_encoding => "2.2.8-query-param-encoding",
    comp_2_2_9_status => "2.2.9-status",
    comp_2_2_7_query_absent => "2.2.7-query-absent",
    comp_2_2_8_query_param_unencoded_invalid => "2.2.8-query-param-unencoded-INVALID",
    comp_2_3_sig_params => "2.3-sig-params",
    comp_7_2_8_content_digest => "7.2.8-content-digest",
}

// ---------------------------------------------------------------------------
// Header field examples (4.1, 4.2, 5.1)

fn header_example(id: &str) -> &'static str {
    vectors()["header_field_examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap()["value"]
        .as_str()
        .unwrap()
}

#[test]
fn header_4_1_signature_input_round_trips() {
    let value = header_example("4.1-signature-input");
    let parsed = parse_signature_input(value.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(signature_input_member(&parsed[0].0, &parsed[0].1), value);
    assert_eq!(parsed[0].1.keyid(), Some("test-key-rsa-pss"));
}

#[test]
fn header_4_2_signature_parses_but_is_illustrative() {
    let value = header_example("4.2-signature");
    let parsed = parse_signature(value.as_bytes()).unwrap();
    assert_eq!(parsed[0].0, "sig1");
    assert_eq!(parsed[0].1.len(), 256);
    assert_eq!(signature_member(&parsed[0].0, &parsed[0].1), value);
}

#[test]
fn header_5_1_accept_signature_round_trips_and_is_honoured() {
    let value = header_example("5.1-accept-signature");
    let reqs = parse_accept_signature(value).unwrap();
    assert_eq!(
        oba_httpsig::accept::serialize_accept_signature(&reqs),
        value
    );
    let (signing, verifying) = keys("test-key-rsa-pss", Algorithm::RsaPssSha512);
    let msg = message(&lookup_message("test-request")).with_header("Cache-Control", "max-age=60");
    let sig = reqs[0].sign(&msg, None, &signing, 1618884475).unwrap();
    assert_eq!(sig.label(), "sig1");
    assert_eq!(
        sig.params().as_str(),
        r#"("@method" "@target-uri" "@authority" "content-digest" "cache-control");keyid="test-key-rsa-pss";created=1618884475;tag="app-123""#
    );
    let msg = msg
        .with_header("Signature-Input", sig.signature_input())
        .with_header("Signature", sig.signature());
    verify(
        &msg,
        None,
        Some("sig1"),
        &verifying,
        &Policy::default().require_tag("app-123"),
        1618884475,
    )
    .unwrap();
    // A key with another id cannot honour keyid="test-key-rsa-pss".
    let other = SigningKey::generate(Algorithm::Ed25519)
        .unwrap()
        .with_key_id("other");
    assert_eq!(
        reqs[0].sign(&msg, None, &other, 1).unwrap_err().reason(),
        Reason::KeyIdMismatch
    );
}

// ---------------------------------------------------------------------------
// Keys: the PEM and JWK forms are the same key.

fn pem_and_jwk_agree(key_id: &str, alg: Algorithm, sample_vector: &str) {
    let k = &vectors()["keys"][key_id];
    let from_pem = VerifyingKey::from_pem(k["pem_public"].as_str().unwrap(), Some(alg)).unwrap();
    let v = vector(sample_vector);
    let (msg, related) = signed_message(v);
    verify(
        &msg,
        related.as_ref().map(|r| r as &dyn HttpMessage),
        Some(v["label"].as_str().unwrap()),
        &from_pem,
        &Policy::default(),
        1618884473 + 7,
    )
    .unwrap();
    if let Ok(private) = SigningKey::from_pem(k["pem_private"].as_str().unwrap(), Some(alg)) {
        let jwk_key = Jwk::parse(&k["jwk"].to_string())
            .unwrap()
            .signing_key(Some(alg))
            .unwrap();
        assert_eq!(
            Jwk::from_signing_key(&private)
                .unwrap()
                .thumbprint()
                .unwrap(),
            Jwk::from_signing_key(&jwk_key)
                .unwrap()
                .thumbprint()
                .unwrap()
        );
    } else {
        // Only the RSA-PSS key (PKCS#8 with the id-RSASSA-PSS OID) may be refused.
        assert_eq!(key_id, "test-key-rsa-pss");
    }
}

#[test]
fn key_b_1_1_rsa_pem_and_jwk_agree() {
    pem_and_jwk_agree("test-key-rsa", Algorithm::RsaV15Sha256, "4.3-proxy_sig");
}
#[test]
fn key_b_1_2_rsa_pss_pem_and_jwk_agree() {
    pem_and_jwk_agree("test-key-rsa-pss", Algorithm::RsaPssSha512, "B.2.1");
}
#[test]
fn key_b_1_3_ecc_p256_pem_and_jwk_agree() {
    pem_and_jwk_agree("test-key-ecc-p256", Algorithm::EcdsaP256Sha256, "B.2.4");
}
#[test]
fn key_b_1_4_ed25519_pem_and_jwk_agree() {
    pem_and_jwk_agree("test-key-ed25519", Algorithm::Ed25519, "B.2.6");
}

// ---------------------------------------------------------------------------
// Errata

#[test]
fn erratum_b_2_response_digest_as_printed_fails_b_2_4() {
    let v = vector("B.2.4");
    let printed = vectors()["messages"]["test-response"]["content_digest_as_printed_in_draft_19"]
        .as_str()
        .unwrap();
    let (msg, _) = signed_message(v);
    let mut stale = msg.clone();
    stale.remove_header("content-digest");
    stale.append_header("Content-Digest", printed);
    let (_, verifying) = keys("test-key-ecc-p256", Algorithm::EcdsaP256Sha256);
    let err = verify(
        &stale,
        None,
        Some("sig-b24"),
        &verifying,
        &Policy::default(),
        1618884473,
    )
    .unwrap_err();
    assert_eq!(err.reason(), Reason::BadSignature);
}
