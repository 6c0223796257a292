//! The properties of the fuzz targets in `fuzz/` (parse, serialise, parse again: the
//! same value; arbitrary messages never panic), checked on the RFC 9421 / RFC 9530
//! vectors that seed the fuzz corpora and on hand-picked edge cases, so that a plain
//! `cargo test` checks them too. Every crash a fuzzer finds is added here as its own test.

use std::sync::OnceLock;

use oba_httpsig::accept::{parse_accept_signature, serialize_accept_signature};
use oba_httpsig::digest::{DigestField, WantDigest};
use oba_httpsig::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// The properties, as in fuzz/fuzz_targets/*.rs.

/// `fuzz_targets/signature_input.rs`. Returns whether the input parsed.
fn signature_input_round_trip(data: &[u8]) -> bool {
    let Ok(parsed) = parse_signature_input(data) else {
        return false;
    };
    let mut members = Vec::with_capacity(parsed.len());
    for (label, params) in &parsed {
        let member = signature_input_member(label, params);
        let again = parse_signature_input(member.as_bytes()).expect("serialised member parses");
        assert_eq!(
            again,
            [(label.clone(), params.clone())],
            "member {member:?}"
        );
        let alone: SignatureParams = params.as_str().parse().expect("as_str() parses");
        assert_eq!(&alone, params, "params {:?}", params.as_str());
        members.push(member);
    }
    let whole = members.join(", ");
    assert_eq!(
        parse_signature_input(whole.as_bytes()).ok(),
        Some(parsed),
        "field {whole:?}"
    );
    true
}

/// `fuzz_targets/signature.rs`. Returns whether the input parsed.
fn signature_round_trip(data: &[u8]) -> bool {
    let Ok(parsed) = parse_signature(data) else {
        return false;
    };
    let mut members = Vec::with_capacity(parsed.len());
    for (label, sig) in &parsed {
        let member = signature_member(label, sig);
        let again = parse_signature(member.as_bytes()).expect("serialised member parses");
        assert_eq!(again, [(label.clone(), sig.clone())], "member {member:?}");
        members.push(member);
    }
    let whole = members.join(", ");
    assert_eq!(
        parse_signature(whole.as_bytes()).ok(),
        Some(parsed),
        "field {whole:?}"
    );
    true
}

/// `fuzz_targets/accept_signature.rs`. Returns whether the input parsed.
fn accept_signature_round_trip(data: &str) -> bool {
    let Ok(requests) = parse_accept_signature(data) else {
        return false;
    };
    let wire = serialize_accept_signature(&requests);
    let again = parse_accept_signature(&wire).expect("serialised Accept-Signature parses");
    assert_eq!(again, requests, "field {wire:?}");
    true
}

/// `fuzz_targets/content_digest.rs`. Returns whether the input parsed as a
/// `Content-Digest` and as a `Want-Content-Digest`.
fn content_digest_round_trip(data: &str) -> (bool, bool) {
    let mut ok = (false, false);
    if let Ok(field) = DigestField::parse(data) {
        let wire = field.to_header_value();
        assert_eq!(
            DigestField::parse(&wire).ok(),
            Some(field.clone()),
            "{wire:?}"
        );
        let _ = field.verify(data.as_bytes());
        ok.0 = true;
    }
    if let Ok(want) = WantDigest::parse(data) {
        let wire = want.to_header_value();
        assert_eq!(WantDigest::parse(&wire).ok(), Some(want), "{wire:?}");
        ok.1 = true;
    }
    ok
}

/// `fuzz_targets/component.rs`. Returns whether the input parsed.
fn component_round_trip(data: &str) -> bool {
    let Ok(c) = data.parse::<Component>() else {
        return false;
    };
    let wire = c.to_string();
    let again: Component = wire.parse().expect("printed component parses");
    assert_eq!(again, c, "{wire:?}");
    assert_eq!(again.as_str(), wire);
    true
}

/// Seven seconds after `created` of the RFC 9421 appendix B vectors.
const NOW: i64 = 1_618_884_480;

/// test-key-ed25519 (RFC 9421 B.1.4), raw public key.
const ED25519: [u8; 32] = [
    0x26, 0xb4, 0x0b, 0x8f, 0x93, 0xff, 0xf3, 0xd8, 0x97, 0x11, 0x2f, 0x7e, 0xbc, 0x58, 0x2b, 0x23,
    0x2d, 0xbd, 0x72, 0x51, 0x7d, 0x08, 0x2f, 0xe8, 0x3c, 0xfb, 0x30, 0xdd, 0xce, 0x43, 0xd1, 0xbb,
];

/// test-shared-secret (RFC 9421 B.1.5).
const SECRET: [u8; 64] = [
    0xbb, 0x3b, 0xc9, 0x7c, 0x1e, 0x2e, 0xdc, 0xdd, 0x09, 0xcb, 0x84, 0xfb, 0x35, 0x9e, 0xf9, 0x30,
    0x35, 0x5c, 0xaf, 0xcc, 0xd2, 0x4c, 0x89, 0xde, 0x74, 0x9b, 0x64, 0x81, 0xcb, 0xb8, 0xe9, 0x85,
    0xb8, 0x5c, 0x1c, 0xb3, 0x34, 0x98, 0xf1, 0x05, 0xdb, 0x63, 0x52, 0x47, 0x49, 0x3c, 0x1b, 0x5b,
    0x98, 0x78, 0x48, 0x0e, 0x2e, 0xa9, 0x72, 0x5f, 0x23, 0xb1, 0xab, 0x23, 0x95, 0x33, 0x2d, 0x0d,
];

fn fuzz_keys() -> [VerifyingKey; 2] {
    [
        VerifyingKey::ed25519(&ED25519).expect("RFC Ed25519 key"),
        VerifyingKey::hmac_sha256(&SECRET).expect("RFC HMAC secret"),
    ]
}

/// `fuzz_targets/message_verify.rs`: must return, never panic. Returns, per label, the
/// results of verifying with the Ed25519 key and with the HMAC key (no related request).
#[allow(clippy::type_complexity)]
fn message_verify(data: &[u8]) -> Option<Vec<(String, [Result<Verified, Error>; 2])>> {
    let msg = Message::parse(data).ok()?;
    let entries = signatures(&msg).ok()?;
    let keys = fuzz_keys();
    let policy = Policy::default();
    let mut out = Vec::new();
    for (label, entry) in &entries {
        let results = keys
            .each_ref()
            .map(|key| verify(&msg, None, Some(label), key, &policy, NOW));
        for key in &keys {
            let _ = verify(&msg, Some(&msg), Some(label), key, &policy, NOW);
        }
        if let Ok(e) = entry {
            let _ = signature_base(&msg, None, &e.params);
            let _ = signature_base(&msg, Some(&msg), &e.params);
        }
        out.push((label.clone(), results));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// The seed inputs (what fuzz/seed_corpus.py extracts).

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

fn signature_vectors() -> impl Iterator<Item = &'static Value> {
    vectors()["signature_vectors"].as_array().unwrap().iter()
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("a string")
}

fn header_example(field: &str) -> &'static str {
    let ex = vectors()["header_field_examples"].as_array().unwrap();
    str_of(&ex.iter().find(|e| e["field"] == field).unwrap()["value"])
}

/// A vector message (start line, headers, body) as raw HTTP/1.1.
fn raw_message(m: &Value, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = format!("{}\r\n", str_of(&m["start_line"]));
    for h in m["headers"].as_array().unwrap() {
        raw.push_str(&format!("{}: {}\r\n", str_of(&h[0]), str_of(&h[1])));
    }
    for (n, v) in extra {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(m["body"].as_str().unwrap_or_default());
    raw.into_bytes()
}

/// Every vector's message with its `Signature-Input` / `Signature` fields, by vector id.
fn signed_messages() -> Vec<(&'static str, Vec<u8>)> {
    let v = vectors();
    signature_vectors()
        .map(|sv| {
            let id = str_of(&sv["id"]);
            let raw = if sv.get("message").is_some() {
                raw_message(&sv["message"], &[])
            } else {
                let r = str_of(&sv["message_ref"]);
                let m = v["messages"].get(r).or(v["extra_messages"].get(r)).unwrap();
                raw_message(
                    m,
                    &[
                        ("Signature-Input", str_of(&sv["signature_input_header"])),
                        ("Signature", str_of(&sv["signature_header"])),
                    ],
                )
            };
            (id, raw)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The properties on the seeds.

#[test]
fn signature_input_round_trips_on_vectors() {
    let mut n = 0;
    for sv in signature_vectors() {
        let si = str_of(&sv["signature_input_header"]);
        assert!(signature_input_round_trip(si.as_bytes()), "{si}");
        let member = format!(
            "{}={}",
            str_of(&sv["label"]),
            str_of(&sv["signature_params_serialized"])
        );
        assert!(signature_input_round_trip(member.as_bytes()), "{member}");
        n += 1;
    }
    assert!(n >= 19);
    assert!(signature_input_round_trip(
        header_example("Signature-Input").as_bytes()
    ));
}

#[test]
fn signature_input_round_trips_on_edge_cases() {
    for ok in [
        // An empty field is an empty Dictionary: no signatures (verify says so).
        &b""[..],
        br#"a=()"#,
        br#"a=();created=-1;expires=999999999999999"#,
        br#"a=("@method" "@authority"), b=("content-type";sf "example-dict";key="a";req)"#,
        br#"a=("@query-param";name="Pet" "x";bs;tr);nonce="n\"q\\";tag="t""#,
        // Extension parameters of every bare-item type are kept and re-serialised.
        br#"a=();i=-7;d=1.5;d0=0.0;dn=-0.25;t=tok/x:y;b=:AQI=:;e=::;f=?0;y;s="";at=@-5"#,
        br#"a=();ds=%"caf%c3%a9 %25 %22""#,
        b"  a=()  ,   b=();x=1   ",
        b"a=(  \"@path\"  \"@query\"  );created=0",
    ] {
        assert!(
            signature_input_round_trip(ok),
            "{:?} should parse",
            String::from_utf8_lossy(ok)
        );
    }
    for bad in [
        &b"a=(\"@method\" \"@method\")"[..],
        b"a=();created=1;created=1",
        b"a=(), a=()",
        b"a=\"@method\"",
        b"a=();created=\"1\"",
        b"a=(\"Content-Type\")",
        b"a=(\"@query-param\")",
        // Parameters must follow the inner list directly; inner-list items are separated
        // by spaces only.
        b"a=() ;x=1",
        b"a=(\t\"@path\")",
    ] {
        assert!(
            !signature_input_round_trip(bad),
            "{:?} should be refused",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn signature_round_trips_on_vectors_and_edge_cases() {
    for sv in signature_vectors() {
        let s = str_of(&sv["signature_header"]);
        assert!(signature_round_trip(s.as_bytes()), "{s}");
    }
    assert!(signature_round_trip(header_example("Signature").as_bytes()));
    for ok in [
        &b"a=::"[..],
        b"a=:AA==:;p=1, b=:/+8=:",
        b"sig-1.x*=:AQIDBA==:",
    ] {
        assert!(
            signature_round_trip(ok),
            "{:?}",
            String::from_utf8_lossy(ok)
        );
    }
    for bad in [&b"a=:AA==:, a=:AA==:"[..], b"a=\"x\"", b"a=(:AA==:)", b"a"] {
        assert!(
            !signature_round_trip(bad),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn accept_signature_round_trips_on_vectors_and_edge_cases() {
    assert!(accept_signature_round_trip(header_example(
        "Accept-Signature"
    )));
    for sv in signature_vectors() {
        let si = str_of(&sv["signature_input_header"]);
        assert!(accept_signature_round_trip(si), "{si}");
    }
    for ok in [
        "",
        "a=()",
        r#"a=("@method");created;nonce;expires;alg;keyid;tag="x";ext=1.5;f=?0"#,
        r#"a=(), b=("@status" "content-digest";req)"#,
    ] {
        assert!(accept_signature_round_trip(ok), "{ok:?}");
    }
    for bad in [
        "a=(), a=()",
        "a=();created;created",
        r#"a=("@method" "@method")"#,
        "a=1",
    ] {
        assert!(!accept_signature_round_trip(bad), "{bad:?}");
    }
}

#[test]
fn content_digest_round_trips_on_vectors_and_edge_cases() {
    let d = &vectors()["digest"];
    for e in d["content_digest_examples"].as_array().unwrap() {
        // "md5 (deprecated)" is md5; appendix D values are printed with their colons.
        let alg = str_of(&e["algorithm"]).split(' ').next().unwrap();
        let v = format!("{alg}=:{}:", str_of(&e["computed_value"]).trim_matches(':'));
        assert!(content_digest_round_trip(&v).0, "{v}");
    }
    for line in d["want_digest_examples"]["lines"].as_array().unwrap() {
        let v = str_of(line).split_once(": ").unwrap().1;
        assert!(content_digest_round_trip(v).1, "{v}");
    }
    for (sid, raw) in signed_messages() {
        let m = Message::parse(&raw).unwrap();
        if let Some(cd) = m.header("content-digest") {
            assert!(content_digest_round_trip(&cd).0, "{sid}: {cd}");
        }
    }
    // Empty, repeated names (last value wins, first position kept), parameters.
    assert_eq!(content_digest_round_trip(""), (true, true));
    assert_eq!(
        content_digest_round_trip("sha-256=:AA==:, md5=:AQ==:;p=1, sha-256=::"),
        (true, false)
    );
    assert_eq!(
        content_digest_round_trip("sha-256=0, sha-512=10;q=1, sha-256=3"),
        (false, true)
    );
    assert_eq!(content_digest_round_trip("sha-256=11"), (false, false));
    assert_eq!(content_digest_round_trip("sha-256=-1"), (false, false));
    assert_eq!(content_digest_round_trip("sha-256"), (false, false));
}

#[test]
fn component_round_trips_on_vectors_and_edge_cases() {
    let mut n = 0;
    for sv in signature_vectors() {
        for c in sv["covered_components"].as_array().unwrap() {
            assert!(component_round_trip(str_of(c)), "{c}");
            n += 1;
        }
    }
    assert!(n > 50);
    for ok in [
        "@method",
        "  @status ",
        "Content-Type",
        "X-UPPER~!#$%&'*+-.^_`|",
        r#""example-dict";key="a";req"#,
        r#""example-dict";req;key="a""#,
        r#""expires";tr"#,
        r#""x";bs;req;tr"#,
        r#""@query-param";name="fa%C3%A7ade%22%3A%20";req"#,
        r#""@query-param";name="""#,
        r#""x";key="q\"\\""#,
    ] {
        assert!(component_round_trip(ok), "{ok:?}");
    }
    for bad in [
        "",
        "@",
        "@nope",
        "@query-param",
        "a b",
        "a\"b",
        r#""x";bs;sf"#,
        r#""x";sf;sf"#,
        r#""@method";sf"#,
        r#""@signature-params""#,
        r#""X""#,
        "\u{e9}",
    ] {
        assert!(!component_round_trip(bad), "{bad:?}");
    }
}

#[test]
fn message_verify_on_vectors_never_panics_and_reaches_the_crypto() {
    let mut verified = Vec::new();
    for (id, raw) in signed_messages() {
        let results = message_verify(&raw).unwrap_or_else(|| panic!("{id}: no signatures"));
        for (label, [ed, hmac]) in results {
            if ed.is_ok() || hmac.is_ok() {
                verified.push(format!("{id}/{label}"));
            }
        }
    }
    // The fuzz target's fixed keys and time verify the RFC's Ed25519 and HMAC vectors,
    // so mutations of these seeds exercise the whole verification path.
    for want in ["B.2.5/sig-b25", "B.2.6/sig-b26", "B.4-0/transform"] {
        assert!(verified.iter().any(|v| v == want), "{want}: {verified:?}");
    }
    // The component examples' messages (chunked with trailers, every request form).
    for c in vectors()["component_examples"].as_array().unwrap() {
        if let Some(raw) = c["input"]["message_raw"].as_str() {
            let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
            let crlf = format!("{}\r\n\r\n{body}", head.replace('\n', "\r\n"));
            assert!(message_verify(crlf.as_bytes()).is_none());
            Message::parse(crlf.as_bytes()).expect("component example message parses");
        }
    }
}

#[test]
fn message_verify_on_edge_cases_never_panics() {
    for raw in [
        &b""[..],
        b"\n",
        b"GET / HTTP/1.1\nSignature-Input: a=()\nSignature: a=::\n\n",
        b"GET / HTTP/1.1\nSignature-Input: a=(\"@query-param\";name=\"x\");alg=\"ed25519\"\nSignature: a=::\n\n",
        b"HTTP/1.1 200 OK\nSignature-Input: a=(\"@method\";req \"@status\")\nSignature: a=:AA==:\n\n",
        b"CONNECT h:1 HTTP/1.1\nSignature-Input: a=(\"@path\" \"@target-uri\")\nSignature: a=::\n\n",
        b"GET * HTTP/1.1\nSignature-Input: a=(\"@authority\");alg=\"nope\"\nSignature: a=::\n\n",
        b"GET / HTTP/1.1\nX: a\r\nSignature-Input: a=(\"x\";key=\"k\" \"x\";sf \"x\";bs);expires=1\nSignature: a=::\n\n",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nSignature-Input: a=(\"t\";tr)\nSignature: a=::\n\n1\nx\n0\nT: \xff\n",
    ] {
        let _ = message_verify(raw);
    }
}

// ---------------------------------------------------------------------------------------
// Crashes found by the fuzzers (one test each, the minimised input inline).
