//! The canonical form (a test vector for other implementations) and the property that
//! no single-byte change to a trail goes unnoticed.

mod common;

use std::sync::OnceLock;

use common::*;
use oba_audit::{verify_reader, AuditEvent, AuditRecord, Kind, Problem, TrustedKeys};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

#[test]
fn the_canonical_form_and_hash_are_stable() {
    let event = AuditEvent::new(Kind::AuthRejected, 1_700_000_000_123)
        .with_actor("user:alice")
        .with_auth_method("api-key")
        .with_key_id("k_1")
        .with_tenant("acme")
        .with_route("/v1/chat/completions")
        .with_request_id("req-7")
        .with_reason("unknown_api_key")
        .with_sha256("request_body", b"hello")
        .with_detail("z", 1)
        .with_detail("\u{e9}", "line\nbreak \"q\"")
        .with_detail("a", serde_json::json!(["x", true, null]));
    let record = AuditRecord::seal(2, "ab".repeat(32), event);
    let canonical = concat!(
        r#"{"v":1,"seq":2,"prev":"abababababababababababababababababababababababababababababababab","#,
        r#""time_ms":1700000000123,"kind":"auth.rejected","actor":"user:alice","auth_method":"api-key","#,
        r#""key_id":"k_1","tenant":"acme","route":"/v1/chat/completions","request_id":"req-7","#,
        r#""reason":"unknown_api_key","#,
        r#""hashes":{"request_body":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},"#,
        r#""details":{"a":["x",true,null],"z":1,"é":"line\nbreak \"q\""},"#,
        r#""sig_alg":null,"sig_keyid":null}"#
    );
    assert_eq!(String::from_utf8(record.canonical()).unwrap(), canonical);
    // Computed independently: printf '%s' "$canonical" | sha256sum
    let hash = "2bf9ddabe6b63c828ba2c23c63d734da96029cbd1b98b071c519fbf61855f7f6";
    assert_eq!(record.hash, hash);
    let line = record.to_line();
    assert_eq!(
        line,
        format!(
            "{}{}",
            &canonical[..canonical.len() - 1],
            format_args!(",\"sig\":null,\"hash\":\"{hash}\"}}")
        )
    );
    assert_eq!(AuditRecord::parse_line(line.as_bytes()).unwrap(), record);
    // A checkpoint signs the context and the hash.
    assert_eq!(
        record.signing_input(),
        format!("oba-audit checkpoint v1\n{hash}").into_bytes()
    );
}

/// A small trail (5 records, checkpoints at 3 and 5) and its key, written once.
fn trail() -> &'static (Vec<u8>, TrustedKeys) {
    static TRAIL: OnceLock<(Vec<u8>, TrustedKeys)> = OnceLock::new();
    TRAIL.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = key();
        rt.block_on(write_file(&path, &key, 3, 2));
        (std::fs::read(&path).unwrap(), trusted(&key))
    })
}

fn line_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            spans.push((start, i));
            start = i + 1;
        }
    }
    spans
}

/// Changes byte `pos` to `to` and checks the verifier stops at that very record.
fn check_alteration(pos: usize, to: u8) -> Result<(), String> {
    let (bytes, keys) = trail();
    let line = bytes[..pos].iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let mut altered = bytes.clone();
    altered[pos] = to;
    let report = verify_reader(&altered[..], keys).unwrap();
    match report.problem {
        Some(
            Problem::Malformed { line: at }
            | Problem::Altered { seq: at }
            | Problem::BadSignature { seq: at },
        ) if at == line => Ok(()),
        other => Err(format!(
            "byte {pos} (line {line}) {:?} -> {:?}: {other:?}",
            char::from(bytes[pos]),
            char::from(to)
        )),
    }
}

#[test]
fn the_trail_itself_verifies() {
    let (bytes, keys) = trail();
    let report = verify_reader(&bytes[..], keys).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 5 records, 2 checkpoints, 0 unsigned at the end"
    );
    assert_eq!(line_spans(bytes).len(), 5);
}

#[test]
fn changing_any_byte_is_detected() {
    // Every byte of every line (the newlines included), alternately flipping the
    // lowest bit (digits, hex, base64) and the ASCII case bit (`a` → `A` in a hash).
    let (bytes, _) = trail();
    for (pos, byte) in bytes.iter().enumerate() {
        let mask = if pos % 2 == 0 { 0x01 } else { 0x20 };
        check_alteration(pos, byte ^ mask).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any single-byte change, anywhere in any record line, is reported at that record.
    #[test]
    fn any_single_byte_alteration_is_detected(pos in any::<prop::sample::Index>(), to in any::<u8>()) {
        let (bytes, _) = trail();
        let pos = pos.index(bytes.len());
        prop_assume!(bytes[pos] != to);
        check_alteration(pos, to).map_err(TestCaseError::fail)?;
    }
}
