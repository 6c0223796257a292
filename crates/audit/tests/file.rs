//! The writer into a JSON-lines file, the verifier on it, and every kind of tampering.
//!
//! The reference chain: 10 events with a checkpoint every 4 records, then shutdown:
//! seq 1-4 events, 5 checkpoint, 6-9 events, 10 checkpoint, 11-12 events, 13 the final
//! checkpoint.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use oba_audit::{
    verify_file, AuditError, AuditLog, CheckpointSigner, FileSink, Kind, Problem, Report,
    TrustedKeys, GENESIS,
};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::Algorithm;

struct Chain {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: Jwk,
    lines: Vec<String>,
}

impl Chain {
    fn verify(&self, lines: &[String]) -> Report {
        write_lines(&self.path, lines);
        verify_file(&self.path, &trusted(&self.key)).unwrap()
    }
}

async fn reference_chain() -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    let stats = write_file(&path, &key, 10, 4).await;
    assert_eq!(
        (stats.written, stats.checkpoints, stats.dropped),
        (10, 3, 0)
    );
    let lines = lines(&path);
    assert_eq!(lines.len(), 13);
    Chain {
        _dir: dir,
        path,
        key,
        lines,
    }
}

fn problem(report: &Report) -> Problem {
    report.problem.expect("a problem")
}

#[tokio::test]
async fn a_written_chain_verifies() {
    let c = reference_chain().await;
    let report = verify_file(&c.path, &trusted(&c.key)).unwrap();
    let last = parse(&c.lines[12]);
    assert_eq!(
        report,
        Report {
            records: 13,
            checkpoints: 3,
            unsigned_tail: 0,
            last_seq: 13,
            last_hash: last.hash.clone(),
            last_checkpoint_seq: Some(13),
            problem: None,
            detail: None,
        }
    );
    assert_eq!(
        report.summary(),
        "ok: 13 records, 3 checkpoints, 0 unsigned at the end"
    );
    let records: Vec<_> = c.lines.iter().map(|l| parse(l)).collect();
    assert_eq!(records[0].prev, GENESIS);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        if i > 0 {
            assert_eq!(r.prev, records[i - 1].hash);
        }
        assert_eq!(r.is_checkpoint(), [4, 9, 12].contains(&i), "line {i}");
    }
    // Events keep their order and content; checkpoints carry the key and the drops.
    assert_eq!(records[5].event, event(4));
    let cp = &records[4];
    assert_eq!(cp.event.kind, Kind::Checkpoint);
    assert_eq!(cp.sig_alg.as_deref(), Some("ed25519"));
    assert_eq!(cp.sig_keyid, Some(c.key.thumbprint().unwrap()));
    assert_eq!(cp.event.details["dropped"], 0);
}

#[tokio::test]
async fn altering_a_field_of_a_middle_record_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut r = parse(&lines[6]);
    r.event.actor = Some("user:mallory".into());
    lines[6] = r.to_line();
    let report = c.verify(&lines);
    assert_eq!(problem(&report), Problem::Altered { seq: 7 });
    assert_eq!(report.records, 6);
    assert_eq!(report.summary(), "TAMPERED: record 7 was altered");
}

#[tokio::test]
async fn altering_a_detail_of_a_middle_record_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut r = parse(&lines[7]);
    r.event.details.insert("n".into(), 99.into());
    lines[7] = r.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::Altered { seq: 8 });
}

#[tokio::test]
async fn altering_the_hash_of_a_record_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut r = parse(&lines[2]);
    r.hash = oba_audit::sha256_hex(b"something else");
    lines[2] = r.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::Altered { seq: 3 });
}

#[tokio::test]
async fn rehashing_after_an_alteration_is_caught_by_the_next_checkpoint() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut r = parse(&lines[6]);
    r.event.reason = Some("forged".into());
    lines[6] = r.to_line();
    rechain(&mut lines, 6);
    let report = c.verify(&lines);
    assert_eq!(problem(&report), Problem::BadSignature { seq: 10 });
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.records, 9);
    assert_eq!(
        report.summary(),
        "TAMPERED: checkpoint 10 has a bad signature"
    );
}

#[tokio::test]
async fn rewriting_the_unsigned_tail_is_not_detected_but_reported_unsigned() {
    // The documented limit: records after the last checkpoint are only chained.
    let c = reference_chain().await;
    let mut lines = c.lines[..12].to_vec();
    let mut r = parse(&lines[11]);
    r.event.actor = Some("user:mallory".into());
    lines[11] = r.to_line();
    rechain(&mut lines, 11);
    let report = c.verify(&lines);
    assert!(report.is_intact());
    assert_eq!(report.unsigned_tail, 2);
    assert_eq!(report.last_checkpoint_seq, Some(10));
}

#[tokio::test]
async fn deleting_a_record_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    lines.remove(6);
    let report = c.verify(&lines);
    assert_eq!(
        problem(&report),
        Problem::Removed {
            after_seq: 6,
            expected_seq: 7
        }
    );
    assert_eq!(report.records, 6);
    assert_eq!(
        report.summary(),
        "TAMPERED: record 7 was removed (after record 6)"
    );
}

#[tokio::test]
async fn deleting_the_first_record_is_detected() {
    let c = reference_chain().await;
    let report = c.verify(&c.lines[1..]);
    assert_eq!(
        problem(&report),
        Problem::Removed {
            after_seq: 0,
            expected_seq: 1
        }
    );
    assert_eq!(report.records, 0);
}

#[tokio::test]
async fn deleting_a_record_and_renumbering_is_detected() {
    // Seqs shifted down and hashes recomputed after the deletion: the next checkpoint's
    // signature no longer matches.
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    lines.remove(6);
    for (i, l) in lines.iter_mut().enumerate().skip(6) {
        let mut r = parse(l);
        r.seq = i as u64 + 1;
        *l = r.to_line();
    }
    rechain(&mut lines, 6);
    assert_eq!(problem(&c.verify(&lines)), Problem::BadSignature { seq: 9 });
}

#[tokio::test]
async fn swapping_two_records_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    lines.swap(6, 7);
    let report = c.verify(&lines);
    assert_eq!(problem(&report), Problem::Reordered { seq: 8 });
    assert_eq!(report.records, 6);
    assert_eq!(report.summary(), "TAMPERED: record 8 is out of order");
}

#[tokio::test]
async fn moving_a_record_to_the_end_is_detected_as_reordering() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let moved = lines.remove(2);
    lines.push(moved);
    assert_eq!(problem(&c.verify(&lines)), Problem::Reordered { seq: 4 });
}

#[tokio::test]
async fn a_replayed_record_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let copy = lines[2].clone();
    lines.insert(8, copy);
    assert_eq!(problem(&c.verify(&lines)), Problem::Reordered { seq: 3 });
}

#[tokio::test]
async fn a_record_that_does_not_link_is_detected() {
    // Same seq, valid hash, but its prev is not the previous record's hash.
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut r = parse(&lines[7]);
    r.prev = parse(&lines[5]).hash;
    r.hash = r.compute_hash();
    lines[7] = r.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::Reordered { seq: 8 });
}

#[tokio::test]
async fn truncating_within_the_chain_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    lines.drain(2..8); // seq 3 to 8
    assert_eq!(
        problem(&c.verify(&lines)),
        Problem::Removed {
            after_seq: 2,
            expected_seq: 3
        }
    );
}

#[tokio::test]
async fn truncating_at_the_tail_is_reported_as_an_unsigned_tail() {
    let c = reference_chain().await;
    // The final checkpoint cut off: intact, but two records are not signed.
    let report = c.verify(&c.lines[..12]);
    assert!(report.is_intact());
    assert_eq!(
        (
            report.records,
            report.checkpoints,
            report.unsigned_tail,
            report.last_seq
        ),
        (12, 2, 2, 12)
    );
    assert_eq!(report.last_checkpoint_seq, Some(10));
    assert_eq!(
        report.summary(),
        "ok: 12 records, 2 checkpoints, 2 unsigned at the end"
    );
    // Cut exactly after a checkpoint: indistinguishable from a shorter trail; only
    // last_seq shows it against an outside reference.
    let report = c.verify(&c.lines[..10]);
    assert!(report.is_intact());
    assert_eq!(
        (report.records, report.unsigned_tail, report.last_seq),
        (10, 0, 10)
    );
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_detected() {
    let c = reference_chain().await;
    // A real signature by the trusted key, over something else.
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    cp.sig = parse(&lines[9]).sig;
    lines[4] = cp.to_line();
    let report = c.verify(&lines);
    assert_eq!(problem(&report), Problem::BadSignature { seq: 5 });
    assert_eq!(report.records, 4);
    // Not base64url at all.
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    cp.sig = Some("!!!".into());
    lines[4] = cp.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::BadSignature { seq: 5 });
    // No signature.
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    cp.sig = None;
    lines[4] = cp.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::BadSignature { seq: 5 });
}

#[tokio::test]
async fn an_attacker_key_under_the_trusted_keyid_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    sign_as(&mut cp, &key(), &c.key.thumbprint().unwrap());
    lines[4] = cp.to_line();
    assert_eq!(problem(&c.verify(&lines)), Problem::BadSignature { seq: 5 });
}

#[tokio::test]
async fn a_checkpoint_signed_with_an_untrusted_key_is_detected() {
    let c = reference_chain().await;
    // The whole trail checked against another key.
    let other = key();
    let report = verify_file(&c.path, &trusted(&other)).unwrap();
    assert_eq!(problem(&report), Problem::UnknownKey { seq: 5 });
    assert_eq!(
        report.summary(),
        "TAMPERED: checkpoint 5 is signed by an unknown key"
    );
    // A forger re-signing with their own key under its own id.
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    sign_as(&mut cp, &other, &other.thumbprint().unwrap());
    lines[4] = cp.to_line();
    rechain(&mut lines, 5);
    assert_eq!(problem(&c.verify(&lines)), Problem::UnknownKey { seq: 5 });
    // No trusted key at all.
    let report = verify_file(&c.path, &TrustedKeys::new()).unwrap();
    assert_eq!(problem(&report), Problem::UnknownKey { seq: 5 });
}

#[tokio::test]
async fn a_checkpoint_with_the_wrong_algorithm_is_detected() {
    let c = reference_chain().await;
    let mut lines = c.lines.clone();
    let mut cp = parse(&lines[4]);
    cp.sig_alg = Some("ecdsa-p256-sha256".into());
    cp.hash = cp.compute_hash();
    lines[4] = cp.to_line();
    rechain(&mut lines, 5);
    assert_eq!(problem(&c.verify(&lines)), Problem::BadSignature { seq: 5 });
}

#[tokio::test]
async fn a_malformed_line_is_detected() {
    let c = reference_chain().await;
    for bad in [
        "not json".to_owned(),
        String::new(),
        // Valid JSON, same record, but not canonical (a space after the first colon).
        c.lines[3].replacen("\"v\":1", "\"v\": 1", 1),
        // An unknown member.
        c.lines[3].replacen("{\"v\":1,", "{\"v\":1,\"x\":0,", 1),
        // \u00e9 for é decodes to the same record, but is not how it is written.
        c.lines[3].replacen('é', "\\u00e9", 1),
    ] {
        let mut lines = c.lines.clone();
        lines[3] = bad.clone();
        let report = c.verify(&lines);
        assert_eq!(problem(&report), Problem::Malformed { line: 4 }, "{bad}");
        assert_eq!(report.records, 3);
        assert_eq!(
            report.summary(),
            "TAMPERED: line 4 is not a valid record",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn an_empty_file_verifies_as_an_empty_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "").unwrap();
    let report = verify_file(&path, &TrustedKeys::new()).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 0 records, 0 checkpoints, 0 unsigned at the end"
    );
    assert_eq!(report.last_hash, GENESIS);
}

#[tokio::test]
async fn a_missing_file_is_an_error() {
    let err = verify_file(Path::new("/nonexistent/audit.jsonl"), &TrustedKeys::new());
    assert!(matches!(err, Err(AuditError::Io(_))));
}

#[tokio::test]
async fn a_restart_continues_the_file_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    write_events(&path, &key, 0..3, 100).await; // 1-3, checkpoint 4
    let stats = write_events(&path, &key, 3..5, 100).await; // 5-6, checkpoint 7
    assert_eq!(
        (stats.written, stats.checkpoints, stats.last_seq),
        (2, 1, 7)
    );
    let lines = lines(&path);
    assert_eq!(lines.len(), 7);
    assert_eq!(parse(&lines[4]).seq, 5);
    assert_eq!(parse(&lines[4]).prev, parse(&lines[3]).hash);
    let report = verify_file(&path, &trusted(&key)).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 7 records, 2 checkpoints, 0 unsigned at the end"
    );
}

#[tokio::test]
async fn a_restart_after_a_crash_signs_the_unsigned_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    write_events(&path, &key, 0..3, 100).await;
    // As if the process died before its final checkpoint.
    let l = lines(&path);
    write_lines(&path, &l[..3]);
    let stats = write_events(&path, &key, 0..0, 100).await;
    assert_eq!((stats.written, stats.checkpoints), (0, 1));
    let report = verify_file(&path, &trusted(&key)).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 4 records, 1 checkpoints, 0 unsigned at the end"
    );
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    write_events(&path, &key, 0..2, 100).await; // 1-2, checkpoint 3
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"v\":1,\"seq\":4,\"pr");
    std::fs::write(&path, &text).unwrap();
    write_events(&path, &key, 2..3, 100).await; // 4, checkpoint 5
    assert_eq!(
        std::fs::read_to_string(dir.path().join("audit.jsonl.torn")).unwrap(),
        "{\"v\":1,\"seq\":4,\"pr\n"
    );
    let report = verify_file(&path, &trusted(&key)).unwrap();
    assert_eq!(
        report.summary(),
        "ok: 5 records, 2 checkpoints, 0 unsigned at the end"
    );
}

#[tokio::test]
async fn an_altered_tail_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = key();
    write_events(&path, &key, 0..2, 100).await;
    let mut l = lines(&path);
    let mut r = parse(&l[2]);
    r.event.time_ms += 1;
    l[2] = r.to_line();
    write_lines(&path, &l);
    let err = AuditLog::start(
        FileSink::open(&path).unwrap(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        config(100),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, AuditError::Corrupt(m) if m.contains("(seq 3) does not match its hash")),
        "{err}"
    );
    // A last line that is not a record at all.
    write_lines(&path, &["garbage".to_owned()]);
    let err = AuditLog::start(
        FileSink::open(&path).unwrap(),
        CheckpointSigner::from_jwk(&key).unwrap(),
        config(100),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuditError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn other_algorithms_sign_checkpoints() {
    for alg in [Algorithm::EcdsaP256Sha256, Algorithm::EcdsaP384Sha384] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = Jwk::generate(alg).unwrap();
        write_file(&path, &key, 3, 2).await;
        let report = verify_file(&path, &trusted(&key)).unwrap();
        assert_eq!(
            report.summary(),
            "ok: 5 records, 2 checkpoints, 0 unsigned at the end",
            "{alg}"
        );
        assert_eq!(parse(&lines(&path)[2]).sig_alg.as_deref(), Some(alg.name()));
    }
}

#[tokio::test]
async fn a_jwk_set_is_trusted_by_thumbprint_and_kid() {
    let c = reference_chain().await;
    let mut other = key();
    other.kid = Some("other".into());
    let set = oba_httpsig::jwk::JwkSet::parse(&format!(
        "{{\"keys\":[{},{},{{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}}]}}",
        other.public().unwrap().to_json(),
        c.key.public().unwrap().to_json()
    ))
    .unwrap();
    let mut keys = TrustedKeys::new();
    assert_eq!(
        keys.add_jwk_set(&set),
        2,
        "the RSA key without alg is skipped"
    );
    assert!(verify_file(&c.path, &keys).unwrap().is_intact());
}
