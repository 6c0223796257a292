//! `oba audit verify|export` on trails written by oba-audit: the summary line, `--json`,
//! and the exit codes (0 intact, 1 tampered, 2 error).
//!
//! The reference trail: 10 events, a checkpoint every 4 records, then shutdown: seq 1-4
//! events, 5 checkpoint, 6-9 events, 10 checkpoint, 11-12 events, 13 final checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use oba_audit::{
    AuditConfig, AuditEvent, AuditLog, AuditRecord, AuditSink, CheckpointSigner, DbLog, FileSink,
    Kind,
};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::Algorithm;

const T0: i64 = 1_700_000_000_000;

fn oba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .output()
        .expect("run oba")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn event(i: u64) -> AuditEvent {
    AuditEvent::new(Kind::AuthAccepted, T0 + i as i64)
        .with_actor(format!("user:{i}"))
        .with_auth_method("api-key")
        .with_tenant("acme")
        .with_route("/v1/models")
        .with_request_id(format!("req-{i}"))
        .with_sha256("request_body", b"{}")
}

fn write(sink: impl AuditSink, key: &Jwk, events: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = AuditLog::start(
            sink,
            CheckpointSigner::from_jwk(key).unwrap(),
            AuditConfig {
                checkpoint_every: 4,
                checkpoint_interval: Duration::from_secs(3600),
                ..AuditConfig::default()
            },
        )
        .await
        .unwrap();
        for i in 0..events {
            assert!(log.record(event(i)));
        }
        log.shutdown().await.unwrap();
    });
}

struct Trail {
    dir: tempfile::TempDir,
    file: PathBuf,
    jwks: PathBuf,
    public: PathBuf,
    lines: Vec<String>,
}

impl Trail {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let key = Jwk::generate(Algorithm::Ed25519).unwrap();
        write(FileSink::open(&file).unwrap(), &key, 10);
        let public = dir.path().join("gateway.pub.jwk");
        std::fs::write(&public, key.public().unwrap().to_json()).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            format!("{{\"keys\":[{}]}}", key.public().unwrap().to_json()),
        )
        .unwrap();
        let lines = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        Trail {
            dir,
            file,
            jwks,
            public,
            lines,
        }
    }

    /// Writes `lines` to a new file and verifies it with the gateway's JWKS.
    fn verify(&self, lines: &[String], extra: &[&str]) -> Output {
        let path = self.dir.path().join("edited.jsonl");
        std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
        let mut args = vec![
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--jwks",
            self.jwks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        oba(&args)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_intact_trail_exits_0() {
    let t = Trail::new();
    for keys in [["--jwks", s(&t.jwks)], ["--key", s(&t.public)]] {
        let out = oba(&["audit", "verify", s(&t.file), keys[0], keys[1]]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout(&out),
            "ok: 13 records, 3 checkpoints, 0 unsigned at the end\n"
        );
    }
}

#[test]
fn an_altered_record_exits_1() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    let mut r = AuditRecord::parse_line(lines[6].as_bytes()).unwrap();
    r.event.actor = Some("user:mallory".into());
    lines[6] = r.to_line();
    let out = t.verify(&lines, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "TAMPERED: record 7 was altered\n");
}

#[test]
fn a_removed_record_exits_1() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    lines.remove(6);
    let out = t.verify(&lines, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "TAMPERED: record 7 was removed (after record 6)\n"
    );
}

#[test]
fn swapped_records_exit_1() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    lines.swap(6, 7);
    let out = t.verify(&lines, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "TAMPERED: record 8 is out of order\n");
}

#[test]
fn a_forged_signature_exits_1() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    let mut cp = AuditRecord::parse_line(lines[4].as_bytes()).unwrap();
    cp.sig = AuditRecord::parse_line(lines[9].as_bytes()).unwrap().sig;
    lines[4] = cp.to_line();
    let out = t.verify(&lines, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "TAMPERED: checkpoint 5 has a bad signature\n");
}

#[test]
fn an_untrusted_key_exits_1() {
    let t = Trail::new();
    let other = t.dir.path().join("other.jwk");
    let key = Jwk::generate(Algorithm::Ed25519).unwrap();
    std::fs::write(&other, key.public().unwrap().to_json()).unwrap();
    let out = oba(&["audit", "verify", s(&t.file), "--key", s(&other)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "TAMPERED: checkpoint 5 is signed by an unknown key\n"
    );
}

#[test]
fn a_malformed_line_exits_1_with_the_reason_on_stderr() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    lines[3] = "not json".into();
    let out = t.verify(&lines, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "TAMPERED: line 4 is not a valid record\n");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("oba: not a record: "));
}

#[test]
fn json_output_names_the_problem() {
    let t = Trail::new();
    let mut lines = t.lines.clone();
    lines.remove(2);
    let out = t.verify(&lines, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(
        v["summary"],
        "TAMPERED: record 3 was removed (after record 2)"
    );
    assert_eq!(
        v["problem"],
        serde_json::json!({"kind": "removed", "after_seq": 2, "expected_seq": 3})
    );
    assert_eq!(v["records"], 2);

    let out = t.verify(&t.lines, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], true);
    assert_eq!(v["records"], 13);
    assert_eq!(v["checkpoints"], 3);
    assert_eq!(v["unsigned_tail"], 0);
    assert_eq!(v["last_seq"], 13);
    assert_eq!(v["last_checkpoint_seq"], 13);
    assert_eq!(v["problem"], serde_json::Value::Null);
}

#[test]
fn a_cut_tail_is_reported_and_fails_only_when_required() {
    let t = Trail::new();
    let cut = &t.lines[..12];
    let out = t.verify(cut, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        "ok: 12 records, 2 checkpoints, 2 unsigned at the end\n"
    );
    let out = t.verify(cut, &["--require-signed-tail"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "UNSIGNED: 2 records after the last checkpoint (seq 10)\n"
    );
    // A whole trail passes the stricter check.
    let out = t.verify(&t.lines, &["--require-signed-tail"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn errors_exit_2() {
    let t = Trail::new();
    // No such file.
    let out = oba(&[
        "audit",
        "verify",
        "/nonexistent/audit.jsonl",
        "--jwks",
        s(&t.jwks),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("oba: error: audit log I/O:"));
    // No key given.
    let out = oba(&["audit", "verify", s(&t.file)]);
    assert_eq!(out.status.code(), Some(2));
    // A key file that is not a JWK.
    let bad = t.dir.path().join("bad.jwk");
    std::fs::write(&bad, "{}").unwrap();
    let out = oba(&["audit", "verify", s(&t.file), "--key", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    // A database that does not answer.
    let out = oba(&[
        "audit",
        "verify",
        "--db",
        "postgres://postgres@127.0.0.1:1/none",
        "--jwks",
        s(&t.jwks),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unavailable"));
    // Not a database URL.
    let out = oba(&["audit", "export", "--db", "mysql://x/y"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_sqlite_table_verifies_and_exports() {
    let t = Trail::new();
    let db_path = t.dir.path().join("audit.db");
    let key = Jwk::generate(Algorithm::Ed25519).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(DbLog::open_sqlite(&db_path)).unwrap();
    write(db.clone(), &key, 10);
    rt.block_on(db.close());
    let public = t.dir.path().join("db.pub.jwk");
    std::fs::write(&public, key.public().unwrap().to_json()).unwrap();
    let url = format!("sqlite://{}", db_path.display());

    let out = oba(&["audit", "verify", "--db", &url, "--key", s(&public)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout(&out),
        "ok: 13 records, 3 checkpoints, 0 unsigned at the end\n"
    );

    // The export is the file format: it verifies as a file.
    let out = oba(&["audit", "export", "--db", &url]);
    assert_eq!(out.status.code(), Some(0));
    let exported = t.dir.path().join("exported.jsonl");
    std::fs::write(&exported, &out.stdout).unwrap();
    assert_eq!(stdout(&out).lines().count(), 13);
    let out = oba(&["audit", "verify", s(&exported), "--key", s(&public)]);
    assert_eq!(
        stdout(&out),
        "ok: 13 records, 3 checkpoints, 0 unsigned at the end\n"
    );

    // --since: events 7, 8, 9 (seq 9, 11, 12) and the checkpoints (stamped when they
    // were written, after T0).
    let since = (T0 + 7).to_string();
    let out = oba(&["audit", "export", "--db", &url, "--since", &since]);
    assert_eq!(out.status.code(), Some(0));
    let seqs: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| AuditRecord::parse_line(l.as_bytes()).unwrap().seq)
        .collect();
    assert_eq!(seqs, [5, 9, 10, 11, 12, 13]);
}
