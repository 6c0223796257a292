//! Shared by the integration tests: keys, events, chains written by the real writer.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use oba_audit::{
    AuditConfig, AuditError, AuditEvent, AuditLog, AuditRecord, AuditSink, AuditStats,
    CheckpointSigner, FileSink, Kind, TrustedKeys,
};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Signer};

pub const T0: i64 = 1_700_000_000_000;

pub fn key() -> Jwk {
    Jwk::generate(Algorithm::Ed25519).unwrap()
}

pub fn trusted(key: &Jwk) -> TrustedKeys {
    let mut t = TrustedKeys::new();
    t.add_jwk(&key.public().unwrap()).unwrap();
    t
}

/// Event `i`: every field set, a body hash and a few details (with characters that
/// need escaping).
pub fn event(i: u64) -> AuditEvent {
    let kind = match i % 4 {
        0 => Kind::AuthAccepted,
        1 => Kind::AuthRejected,
        2 => Kind::PolicyDenied,
        _ => Kind::Other("rate.limited".into()),
    };
    AuditEvent::new(kind, T0 + i as i64)
        .with_actor(format!("user:{i}"))
        .with_auth_method("api-key")
        .with_key_id(format!("key-{i}"))
        .with_tenant("acme")
        .with_route("/v1/chat/completions")
        .with_request_id(format!("req-{i}"))
        .with_reason("ok")
        .with_sha256("request_body", format!("body {i}").as_bytes())
        .with_detail("n", i)
        .with_detail("note", "tab\there \"quoted\" \u{1f} é 日本")
        .with_detail(
            "list",
            serde_json::json!([1, "two", null, {"b": false, "a": true}]),
        )
}

pub fn config(every: u64) -> AuditConfig {
    AuditConfig {
        checkpoint_every: every,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditConfig::default()
    }
}

/// Writes `n` events with a checkpoint every `every` records, then shuts down.
pub async fn write_file(path: &Path, key: &Jwk, n: u64, every: u64) -> AuditStats {
    write_events(path, key, 0..n, every).await
}

pub async fn write_events(
    path: &Path,
    key: &Jwk,
    ids: std::ops::Range<u64>,
    every: u64,
) -> AuditStats {
    let log = AuditLog::start(
        FileSink::open(path).unwrap(),
        CheckpointSigner::from_jwk(key).unwrap(),
        config(every),
    )
    .await
    .unwrap();
    for i in ids {
        assert!(log.record(event(i)));
    }
    log.shutdown().await.unwrap()
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

pub fn parse(line: &str) -> AuditRecord {
    AuditRecord::parse_line(line.as_bytes()).unwrap()
}

/// Signs `record` (a checkpoint) with `key` under `keyid`, as a forger would.
pub fn sign_as(record: &mut AuditRecord, key: &Jwk, keyid: &str) {
    let sk = key.signing_key(None).unwrap();
    record.sig_alg = Some(sk.algorithm().name().to_owned());
    record.sig_keyid = Some(keyid.to_owned());
    record.hash = record.compute_hash();
    let sig = sk.sign(&record.signing_input()).unwrap();
    record.sig = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig));
}

/// Recomputes `prev` and `hash` from line `from` (0-based) on, keeping signatures: what
/// someone who rewrites the chain without the key can do.
pub fn rechain(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let mut r = parse(&lines[i]);
        if i > 0 {
            r.prev = parse(&lines[i - 1]).hash;
        }
        r.hash = r.compute_hash();
        lines[i] = r.to_line();
    }
}

/// An in-memory sink that can fail: the first `fail_appends` appends fail; with
/// `land_then_fail`, a failing append keeps the records anyway (a lost
/// acknowledgement). Clones share the records.
#[derive(Clone, Default)]
pub struct MemorySink {
    pub records: Arc<Mutex<Vec<AuditRecord>>>,
    pub fail_appends: Arc<Mutex<u32>>,
    pub land_then_fail: bool,
}

impl MemorySink {
    pub fn failing(n: u32, land_then_fail: bool) -> Self {
        MemorySink {
            fail_appends: Arc::new(Mutex::new(n)),
            land_then_fail,
            ..MemorySink::default()
        }
    }

    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl AuditSink for MemorySink {
    async fn tail(&self) -> oba_audit::Result<Option<AuditRecord>> {
        Ok(self.records.lock().unwrap().last().cloned())
    }

    async fn append(&self, records: &[AuditRecord]) -> oba_audit::Result<()> {
        let mut fail = self.fail_appends.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            if self.land_then_fail {
                self.records.lock().unwrap().extend_from_slice(records);
            }
            return Err(AuditError::Unavailable("injected".into()));
        }
        self.records.lock().unwrap().extend_from_slice(records);
        Ok(())
    }
}
