//! The SQLite table: the chain continues across restarts, tampering with rows is
//! detected, the table refuses updates and deletes, export by time.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::*;
use oba_audit::{AuditError, AuditLog, AuditStats, CheckpointSigner, DbLog, Problem};
use oba_httpsig::jwk::Jwk;

async fn write_db(path: &Path, key: &Jwk, ids: std::ops::Range<u64>, every: u64) -> AuditStats {
    let db = DbLog::open_sqlite(path).await.unwrap();
    let log = AuditLog::start(
        db.clone(),
        CheckpointSigner::from_jwk(key).unwrap(),
        config(every),
    )
    .await
    .unwrap();
    for i in ids {
        assert!(log.record(event(i)));
    }
    let stats = log.shutdown().await.unwrap();
    db.close().await;
    stats
}

/// Runs SQL on the file directly, as someone with access to it would.
async fn tamper(path: &Path, sql: &str) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn verify_db(path: &Path, key: &Jwk) -> oba_audit::Report {
    let db = DbLog::connect_existing(&format!("sqlite://{}", path.display()), None)
        .await
        .unwrap();
    let report = db.verify(&trusted(key)).await.unwrap();
    db.close().await;
    report
}

#[tokio::test]
async fn sqlite_chain_verifies_and_a_restart_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = key();
    // 1-3, checkpoint 4, 5-6, checkpoint 7 (shutdown).
    let stats = write_db(&path, &key, 0..5, 3).await;
    assert_eq!(
        (stats.written, stats.checkpoints, stats.last_seq),
        (5, 2, 7)
    );
    // 8-9, checkpoint 10.
    let stats = write_db(&path, &key, 5..7, 3).await;
    assert_eq!(
        (stats.written, stats.checkpoints, stats.last_seq),
        (2, 1, 10)
    );
    let report = verify_db(&path, &key).await;
    assert_eq!(
        report.summary(),
        "ok: 10 records, 3 checkpoints, 0 unsigned at the end"
    );
    // Rows decode to exactly what was recorded.
    let db = DbLog::connect_existing(&format!("sqlite:{}", path.display()), None)
        .await
        .unwrap();
    let mut events = Vec::new();
    db.scan(None, |r| {
        let r = r.unwrap();
        if !r.is_checkpoint() {
            events.push(r.event);
        }
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(events, (0..7).map(event).collect::<Vec<_>>());
}

#[tokio::test]
async fn sqlite_altered_row_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = key();
    write_db(&path, &key, 0..5, 3).await;
    tamper(
        &path,
        "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 2",
    )
    .await;
    let report = verify_db(&path, &key).await;
    assert_eq!(report.problem, Some(Problem::Altered { seq: 2 }));
    assert_eq!(report.records, 1);
}

#[tokio::test]
async fn sqlite_deleted_row_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = key();
    write_db(&path, &key, 0..5, 3).await;
    tamper(&path, "DELETE FROM audit_log WHERE seq = 3").await;
    assert_eq!(
        verify_db(&path, &key).await.problem,
        Some(Problem::Removed {
            after_seq: 2,
            expected_seq: 3
        })
    );
}

#[tokio::test]
async fn sqlite_undecodable_row_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = key();
    write_db(&path, &key, 0..5, 3).await;
    tamper(
        &path,
        "UPDATE audit_log SET details = 'not json' WHERE seq = 2",
    )
    .await;
    let report = verify_db(&path, &key).await;
    assert_eq!(report.problem, Some(Problem::Malformed { line: 2 }));
    assert!(report.detail.unwrap().starts_with("details:"));
}

#[tokio::test]
async fn sqlite_table_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    write_db(&path, &key(), 0..2, 3).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    pool.close().await;
}

#[tokio::test]
async fn sqlite_an_altered_tail_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = key();
    write_db(&path, &key, 0..2, 3).await;
    tamper(&path, "UPDATE audit_log SET time_ms = 1 WHERE seq = 3").await;
    let db = DbLog::open_sqlite(&path).await.unwrap();
    let err = AuditLog::start(db, CheckpointSigner::from_jwk(&key).unwrap(), config(3))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuditError::Corrupt(m) if m.contains("(seq 3)")),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_scan_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    write_db(&path, &key(), 0..5, 100).await;
    let db = DbLog::open_sqlite(&path).await.unwrap();
    let mut seqs = Vec::new();
    db.scan(Some(T0 + 3), |r| {
        seqs.push(r.unwrap().seq);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    // Events 3 and 4 (seq 4, 5) and the checkpoint (written now).
    assert_eq!(seqs, [4, 5, 6]);
}

#[tokio::test]
async fn sqlite_a_missing_table_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let db = DbLog::connect_existing(&format!("sqlite://{}", path.display()), None)
        .await
        .unwrap();
    let err = db.verify(&trusted(&key())).await.unwrap_err();
    assert!(
        matches!(err, AuditError::Backend(ref m) if m.contains("no such table")),
        "{err}"
    );
}

#[tokio::test]
async fn database_urls_are_checked() {
    for (url, schema) in [
        ("mysql://localhost/db", None),
        ("sqlite://x.db", Some("s")),
        ("postgres://localhost/db", Some("bad-name")),
    ] {
        let err = DbLog::connect(url, schema).await.unwrap_err();
        assert!(matches!(err, AuditError::Invalid(_)), "{url}: {err}");
    }
}
