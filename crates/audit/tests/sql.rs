//! `oba_audit::sql`: records appended in the caller's own transactions, next to the
//! change they record. Concurrent appends through a pool of several connections make one
//! chain (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the advisory lock, needs
//! `OBA_TEST_POSTGRES_URL`); a rolled-back transaction leaves neither change nor record;
//! `DbLog` reads and verifies the table.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use oba_audit::{sql, AuditEvent, ChainHead, CheckpointSigner, DbLog, Kind, Report};
use sqlx::{Connection, Executor, Row};

const EVERY: u64 = 4;

fn token_event(id: &str) -> AuditEvent {
    AuditEvent::new(Kind::Other("token.create".into()), T0)
        .with_actor("account:a/token:t")
        .with_key_id(id)
}

/// One change and its record in one transaction, on whatever connection `conn` is (the
/// transaction is the caller's). `lock`: PostgreSQL's advisory lock statement.
macro_rules! append_in {
    ($conn:expr, $lock:expr, $signer:expr, $id:expr) => {{
        let conn = $conn;
        sqlx::query("INSERT INTO tokens (id) VALUES ($1)")
            .bind($id)
            .execute(&mut *conn)
            .await
            .unwrap();
        if let Some(lock) = $lock {
            conn.execute(lock).await.unwrap();
        }
        let tail = sqlx::query(sql::SELECT_TAIL)
            .fetch_optional(&mut *conn)
            .await
            .unwrap()
            .map(|row| sql::decode(&row).unwrap());
        let last: Option<i64> = sqlx::query(sql::SELECT_LAST_CHECKPOINT)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get("seq");
        let mut head = ChainHead::resume(tail.as_ref(), last.map(|s| s as u64));
        let mut records = vec![head.seal(token_event($id)).unwrap()];
        if head.unsigned() >= EVERY {
            records.push(head.checkpoint($signer, 0).unwrap());
        }
        sql::insert(&records)
            .unwrap()
            .query()
            .execute(&mut *conn)
            .await
            .unwrap();
    }};
}

fn check(report: &Report, events: u64) {
    assert!(
        report.is_intact(),
        "{}: {:?}",
        report.summary(),
        report.detail
    );
    assert_eq!(report.records, events + events / EVERY);
    assert_eq!(report.checkpoints, events / EVERY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_transactions_make_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(&sql::create_table(sql::Dialect::Sqlite))
        .execute(&pool)
        .await
        .unwrap();
    // Idempotent.
    sqlx::raw_sql(&sql::create_table(sql::Dialect::Sqlite))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE tokens (id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let key = key();
    let signer = Arc::new(CheckpointSigner::from_jwk(&key).unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (pool, signer) = (pool.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            // The write lock first, so no two transactions read the same tail.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            append_in!(&mut *tx, None::<&str>, &signer, &format!("t{i}"));
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A transaction rolled back: neither the change nor its record.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    append_in!(&mut *tx, None::<&str>, &signer, "rolled-back");
    drop(tx);
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tokens")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 20);
    pool.close().await;

    let db = DbLog::connect_existing(&url, None).await.unwrap();
    check(&db.verify(&trusted(&key)).await.unwrap(), 20);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_transactions_make_one_chain() {
    let Some(base) = std::env::var("OBA_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("skipped: OBA_TEST_POSTGRES_URL not set");
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("audit_sql_{}_{nanos}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    admin
        .execute(format!("CREATE SCHEMA \"{schema}\"").as_str())
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");

    let outcome = tokio::spawn({
        let url = url.clone();
        async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(&url)
                .await
                .unwrap();
            sqlx::raw_sql(&sql::create_table(sql::Dialect::Postgres))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(&sql::create_table(sql::Dialect::Postgres))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql("CREATE TABLE tokens (id TEXT PRIMARY KEY)")
                .execute(&pool)
                .await
                .unwrap();
            let key = key();
            let signer = Arc::new(CheckpointSigner::from_jwk(&key).unwrap());
            let mut tasks = Vec::new();
            for i in 0..20 {
                let (pool, signer) = (pool.clone(), signer.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tx = pool.begin().await.unwrap();
                    append_in!(
                        &mut *tx,
                        Some(sql::LOCK_POSTGRES),
                        &signer,
                        &format!("t{i}")
                    );
                    tx.commit().await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let mut tx = pool.begin().await.unwrap();
            append_in!(&mut *tx, Some(sql::LOCK_POSTGRES), &signer, "rolled-back");
            drop(tx);
            pool.close().await;
            let db = DbLog::connect_existing(&url, None).await.unwrap();
            check(&db.verify(&trusted(&key)).await.unwrap(), 20);
            db.close().await;
        }
    })
    .await;
    admin
        .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
