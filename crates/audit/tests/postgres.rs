//! The PostgreSQL table. Needs `OBA_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test uses a fresh schema and drops
//! it afterwards.

mod common;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use oba_audit::{AuditError, AuditLog, AuditStats, CheckpointSigner, DbLog, Problem};
use oba_httpsig::jwk::Jwk;

fn url() -> Option<String> {
    match std::env::var("OBA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: OBA_TEST_POSTGRES_URL not set");
            None
        }
    }
}

fn fresh_schema() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("audit_{}_{nanos}", std::process::id())
}

async fn sql(url: &str, schema: &str, sql: &str) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let r = sqlx::raw_sql(&format!("SET search_path TO \"{schema}\"; {sql}"))
        .execute(&pool)
        .await
        .map(|_| ());
    pool.close().await;
    r
}

/// Runs `test(url, schema)` in a fresh schema, drops the schema (even when the test
/// panics), then re-raises the panic.
async fn with_schema<F, Fut>(test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = url() else { return };
    let schema = fresh_schema();
    let outcome = tokio::spawn(test(url.clone(), schema.clone())).await;
    sql(
        &url,
        "public",
        &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
    )
    .await
    .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn write_db(
    url: &str,
    schema: &str,
    key: &Jwk,
    ids: std::ops::Range<u64>,
    every: u64,
) -> AuditStats {
    let db = DbLog::connect(url, Some(schema)).await.unwrap();
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

async fn verify_db(url: &str, schema: &str, key: &Jwk) -> oba_audit::Report {
    let db = DbLog::connect_existing(url, Some(schema)).await.unwrap();
    let report = db.verify(&trusted(key)).await.unwrap();
    db.close().await;
    report
}

#[tokio::test]
async fn postgres_chain_verifies_and_a_restart_continues_it() {
    with_schema(|url, schema| async move {
        let key = key();
        let stats = write_db(&url, &schema, &key, 0..5, 3).await;
        assert_eq!(
            (stats.written, stats.checkpoints, stats.last_seq),
            (5, 2, 7)
        );
        let stats = write_db(&url, &schema, &key, 5..7, 3).await;
        assert_eq!(
            (stats.written, stats.checkpoints, stats.last_seq),
            (2, 1, 10)
        );
        let report = verify_db(&url, &schema, &key).await;
        assert_eq!(
            report.summary(),
            "ok: 10 records, 3 checkpoints, 0 unsigned at the end"
        );
        // Rows decode to exactly what was recorded.
        let db = DbLog::connect_existing(&url, Some(&schema)).await.unwrap();
        let mut events = Vec::new();
        db.scan(None, |r| {
            let r = r.unwrap();
            if !r.is_checkpoint() {
                events.push(r.event);
            }
            std::ops::ControlFlow::Continue(())
        })
        .await
        .unwrap();
        db.close().await;
        assert_eq!(events, (0..7).map(event).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn postgres_altered_row_is_detected() {
    with_schema(|url, schema| async move {
        let key = key();
        write_db(&url, &schema, &key, 0..5, 3).await;
        sql(
            &url,
            &schema,
            "ALTER TABLE audit_log DISABLE TRIGGER USER; \
             UPDATE audit_log SET reason = 'forged' WHERE seq = 5",
        )
        .await
        .unwrap();
        let report = verify_db(&url, &schema, &key).await;
        assert_eq!(report.problem, Some(Problem::Altered { seq: 5 }));
        assert_eq!(report.records, 4);
    })
    .await;
}

#[tokio::test]
async fn postgres_deleted_row_is_detected() {
    with_schema(|url, schema| async move {
        let key = key();
        write_db(&url, &schema, &key, 0..5, 3).await;
        sql(
            &url,
            &schema,
            "ALTER TABLE audit_log DISABLE TRIGGER USER; DELETE FROM audit_log WHERE seq = 2",
        )
        .await
        .unwrap();
        assert_eq!(
            verify_db(&url, &schema, &key).await.problem,
            Some(Problem::Removed {
                after_seq: 1,
                expected_seq: 2
            })
        );
    })
    .await;
}

#[tokio::test]
async fn postgres_table_is_append_only() {
    with_schema(|url, schema| async move {
        write_db(&url, &schema, &key(), 0..2, 3).await;
        for stmt in [
            "UPDATE audit_log SET actor = 'x' WHERE seq = 1",
            "DELETE FROM audit_log WHERE seq = 1",
            "TRUNCATE audit_log",
        ] {
            let err = sql(&url, &schema, stmt).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{stmt}: {err}");
        }
    })
    .await;
}

#[tokio::test]
async fn postgres_connecting_twice_is_idempotent() {
    with_schema(|url, schema| async move {
        let (a, b) = tokio::join!(
            DbLog::connect(&url, Some(&schema)),
            DbLog::connect(&url, Some(&schema))
        );
        a.unwrap().close().await;
        b.unwrap().close().await;
        let key = key();
        write_db(&url, &schema, &key, 0..1, 3).await;
        assert!(verify_db(&url, &schema, &key).await.is_intact());
    })
    .await;
}

#[tokio::test]
async fn postgres_missing_table_is_an_error() {
    with_schema(|url, schema| async move {
        // connect_existing creates nothing: no schema, no table.
        let db = DbLog::connect_existing(&url, Some(&schema)).await.unwrap();
        let err = db.verify(&trusted(&key())).await.unwrap_err();
        db.close().await;
        assert!(
            matches!(err, AuditError::Backend(ref m) if m.contains("audit_log")),
            "{err}"
        );
    })
    .await;
}
