//! A database table as sink and source: SQLite or PostgreSQL through sqlx.
//!
//! One table, `audit_log`, one row per record, `seq` its primary key; the text fields
//! in their own columns (so they can be queried), `hashes` and `details` as their
//! canonical JSON text (`TEXT`, not `JSONB`, which would reorder and renormalise).
//! Triggers refuse `UPDATE` and `DELETE` (and, on PostgreSQL, `TRUNCATE`): they stop
//! accidents, not someone who owns the table — the hash chain and the signed
//! checkpoints are what detect that.
//!
//! PostgreSQL: the table is created idempotently under an advisory lock, in the
//! connection's `search_path` or in the schema given to [`DbLog::connect`] (created if
//! missing; every pooled connection uses it as its `search_path`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use crate::error::{AuditError, Result};
use crate::keys::TrustedKeys;
use crate::record::{canonical_object, canonical_string_map, AuditEvent, AuditRecord, Kind};
use crate::sink::AuditSink;
use crate::verify::{ChainVerifier, Malformed, Report};

const SQLITE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY,
    prev        TEXT    NOT NULL,
    time_ms     INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    actor       TEXT,
    auth_method TEXT,
    key_id      TEXT,
    tenant      TEXT,
    route       TEXT,
    request_id  TEXT,
    reason      TEXT,
    hashes      TEXT    NOT NULL,
    details     TEXT    NOT NULL,
    sig_alg     TEXT,
    sig_keyid   TEXT,
    sig         TEXT,
    hash        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time_ms);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"#;

const PG_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_log (
    seq         BIGINT PRIMARY KEY,
    prev        TEXT   NOT NULL,
    time_ms     BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    actor       TEXT,
    auth_method TEXT,
    key_id      TEXT,
    tenant      TEXT,
    route       TEXT,
    request_id  TEXT,
    reason      TEXT,
    hashes      TEXT   NOT NULL,
    details     TEXT   NOT NULL,
    sig_alg     TEXT,
    sig_keyid   TEXT,
    sig         TEXT,
    hash        TEXT   NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time_ms);
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'audit_log_no_change' AND tgrelid = 'audit_log'::regclass) THEN
        CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'audit_log_no_truncate' AND tgrelid = 'audit_log'::regclass) THEN
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
    END IF;
END $$;
"#;

/// Advisory lock key serialising table creation ("oba-aud" in ASCII).
const SCHEMA_LOCK: i64 = 0x006f_6261_2d61_7564;

const COLUMNS: &str = "seq, prev, time_ms, kind, actor, auth_method, key_id, tenant, route, \
     request_id, reason, hashes, details, sig_alg, sig_keyid, sig, hash";

/// Rows per read and per `INSERT` statement.
const PAGE: usize = 500;

/// Rows read: each with its seq, decoded or not.
type Page = Vec<(i64, std::result::Result<AuditRecord, String>)>;

/// An audit table. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct DbLog {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl DbLog {
    /// Connects by URL and creates the table if needed: `sqlite://PATH` or
    /// `sqlite:PATH` (the file is created if missing), or `postgres://...` /
    /// `postgresql://...` with an optional `schema` (`[A-Za-z_][A-Za-z0-9_]*`).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        Self::open(url, schema, true).await
    }

    /// Connects by URL to an existing table, creating nothing (SQLite read-only): for
    /// verifying and exporting.
    pub async fn connect_existing(url: &str, schema: Option<&str>) -> Result<Self> {
        Self::open(url, schema, false).await
    }

    /// Opens (creating it if missing) the SQLite file at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::sqlite(options, true).await
    }

    async fn open(url: &str, schema: Option<&str>, create: bool) -> Result<Self> {
        if url.starts_with("sqlite:") {
            if schema.is_some() {
                return Err(AuditError::Invalid(
                    "a schema is for PostgreSQL only".into(),
                ));
            }
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| AuditError::Invalid(format!("SQLite URL: {e}")))?;
            Self::sqlite(options, create).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::postgres(url, schema, create).await
        } else {
            Err(AuditError::Invalid(
                "a database URL starts with sqlite:, postgres:// or postgresql://".into(),
            ))
        }
    }

    async fn sqlite(options: SqliteConnectOptions, create: bool) -> Result<Self> {
        let options = options
            .create_if_missing(create)
            .read_only(!create)
            .busy_timeout(Duration::from_secs(5));
        let options = if create {
            options
                .journal_mode(SqliteJournalMode::Wal)
                // Every batch is durable when its transaction commits.
                .synchronous(SqliteSynchronous::Full)
        } else {
            options
        };
        // The writer uses one connection, never recycled (so `sqlite::memory:` lives as
        // long as the pool).
        let pool = SqlitePoolOptions::new()
            .max_connections(if create { 1 } else { 4 })
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(sqlite_err)?;
        if create {
            sqlx::raw_sql(SQLITE_SCHEMA)
                .execute(&pool)
                .await
                .map_err(sqlite_err)?;
        }
        Ok(DbLog {
            backend: Backend::Sqlite(pool),
        })
    }

    async fn postgres(url: &str, schema: Option<&str>, create: bool) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| AuditError::Invalid(format!("PostgreSQL URL: {e}")))?;
        let mut pool_options = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2));
        if let Some(schema) = schema {
            check_schema_name(schema)?;
            let search_path = format!("\"{schema}\"");
            pool_options = pool_options.after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    sqlx::query("SELECT set_config('search_path', $1, false)")
                        .bind(search_path)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await.map_err(pg_err)?;
        if create {
            // One simple-protocol message: its statements run as one transaction, which
            // holds the advisory lock until the end.
            let create_schema = schema
                .map(|s| format!("CREATE SCHEMA IF NOT EXISTS \"{s}\";")) // validated above
                .unwrap_or_default();
            let ddl =
                format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {create_schema} {PG_SCHEMA}");
            sqlx::raw_sql(&ddl).execute(&pool).await.map_err(pg_err)?;
        }
        Ok(DbLog {
            backend: Backend::Postgres(pool),
        })
    }

    /// Closes the pool, waiting for the connections to finish.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }

    /// Calls `f` with every row in seq order (only rows with `time_ms >= since_ms` when
    /// given), decoded, until it breaks. A row that does not decode is an `Err` with its
    /// 1-based position among the rows read.
    pub async fn scan<F>(&self, since_ms: Option<i64>, mut f: F) -> Result<()>
    where
        F: FnMut(std::result::Result<AuditRecord, Malformed>) -> ControlFlow<()>,
    {
        let mut from = i64::MIN;
        let mut row_no = 0u64;
        loop {
            let page = self.page(from, since_ms).await?;
            let n = page.len();
            for (seq, entry) in page {
                row_no += 1;
                let entry = entry.map_err(|message| Malformed {
                    line: row_no,
                    message,
                });
                if f(entry).is_break() {
                    return Ok(());
                }
                match seq.checked_add(1) {
                    Some(next) => from = next,
                    None => return Ok(()),
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Verifies the whole table, in seq order.
    pub async fn verify(&self, keys: &TrustedKeys) -> Result<Report> {
        let mut v = ChainVerifier::new(keys);
        self.scan(None, |entry| {
            v.push(entry);
            if v.is_finished() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok(v.finish())
    }

    /// Up to [`PAGE`] rows with `seq >= from`, each with its seq.
    async fn page(&self, from: i64, since_ms: Option<i64>) -> Result<Page> {
        let limit = PAGE as i64;
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut qb = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {COLUMNS} FROM audit_log WHERE seq >= "
                ));
                qb.push_bind(from);
                if let Some(since) = since_ms {
                    qb.push(" AND time_ms >= ").push_bind(since);
                }
                qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(pool).await.map_err(sqlite_err)?;
                rows.iter()
                    .map(|r| {
                        let seq: i64 = r.try_get("seq").map_err(sqlite_err)?;
                        Ok((seq, decode(r)))
                    })
                    .collect()
            }
            Backend::Postgres(pool) => {
                let mut qb = QueryBuilder::<Postgres>::new(format!(
                    "SELECT {COLUMNS} FROM audit_log WHERE seq >= "
                ));
                qb.push_bind(from);
                if let Some(since) = since_ms {
                    qb.push(" AND time_ms >= ").push_bind(since);
                }
                qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
                let rows = qb.build().fetch_all(pool).await.map_err(pg_err)?;
                rows.iter()
                    .map(|r| {
                        let seq: i64 = r.try_get("seq").map_err(pg_err)?;
                        Ok((seq, decode(r)))
                    })
                    .collect()
            }
        }
    }
}

/// A row as a record (the error says which column does not decode).
fn decode<'r, R>(row: &'r R) -> std::result::Result<AuditRecord, String>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |c: &str| -> std::result::Result<String, String> {
        row.try_get::<String, _>(c).map_err(|e| format!("{c}: {e}"))
    };
    let opt = |c: &str| -> std::result::Result<Option<String>, String> {
        row.try_get::<Option<String>, _>(c)
            .map_err(|e| format!("{c}: {e}"))
    };
    let seq: i64 = row.try_get("seq").map_err(|e| format!("seq: {e}"))?;
    let seq = u64::try_from(seq).map_err(|_| format!("seq {seq} is negative"))?;
    let hashes: BTreeMap<String, String> =
        serde_json::from_str(&text("hashes")?).map_err(|e| format!("hashes: {e}"))?;
    let details: Map<String, Value> =
        serde_json::from_str(&text("details")?).map_err(|e| format!("details: {e}"))?;
    Ok(AuditRecord {
        seq,
        prev: text("prev")?,
        event: AuditEvent {
            time_ms: row
                .try_get::<i64, _>("time_ms")
                .map_err(|e| format!("time_ms: {e}"))?,
            kind: Kind::parse(&text("kind")?),
            actor: opt("actor")?,
            auth_method: opt("auth_method")?,
            key_id: opt("key_id")?,
            tenant: opt("tenant")?,
            route: opt("route")?,
            request_id: opt("request_id")?,
            reason: opt("reason")?,
            hashes,
            details,
        },
        sig_alg: opt("sig_alg")?,
        sig_keyid: opt("sig_keyid")?,
        sig: opt("sig")?,
        hash: text("hash")?,
    })
}

/// One row's bind values.
struct RowValues<'a> {
    seq: i64,
    r: &'a AuditRecord,
    hashes: String,
    details: String,
}

fn row_values(records: &[AuditRecord]) -> Result<Vec<RowValues<'_>>> {
    records
        .iter()
        .map(|r| {
            Ok(RowValues {
                seq: i64::try_from(r.seq)
                    .map_err(|_| AuditError::Invalid(format!("seq {} is too large", r.seq)))?,
                r,
                hashes: canonical_string_map(&r.event.hashes),
                details: canonical_object(&r.event.details),
            })
        })
        .collect()
}

macro_rules! push_row {
    ($b:expr, $v:expr) => {{
        let v = $v;
        let e = &v.r.event;
        $b.push_bind(v.seq)
            .push_bind(v.r.prev.as_str())
            .push_bind(e.time_ms)
            .push_bind(e.kind.as_str())
            .push_bind(e.actor.as_deref())
            .push_bind(e.auth_method.as_deref())
            .push_bind(e.key_id.as_deref())
            .push_bind(e.tenant.as_deref())
            .push_bind(e.route.as_deref())
            .push_bind(e.request_id.as_deref())
            .push_bind(e.reason.as_deref())
            .push_bind(v.hashes.as_str())
            .push_bind(v.details.as_str())
            .push_bind(v.r.sig_alg.as_deref())
            .push_bind(v.r.sig_keyid.as_deref())
            .push_bind(v.r.sig.as_deref())
            .push_bind(v.r.hash.as_str());
    }};
}

#[async_trait::async_trait]
impl AuditSink for DbLog {
    async fn tail(&self) -> Result<Option<AuditRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1");
        let record = match &self.backend {
            Backend::Sqlite(pool) => {
                let row = sqlx::query(&sql)
                    .fetch_optional(pool)
                    .await
                    .map_err(sqlite_err)?;
                row.map(|r| decode(&r)).transpose()
            }
            Backend::Postgres(pool) => {
                let row = sqlx::query(&sql)
                    .fetch_optional(pool)
                    .await
                    .map_err(pg_err)?;
                row.map(|r| decode(&r)).transpose()
            }
        }
        .map_err(|e| AuditError::Corrupt(format!("the last row of audit_log: {e}")))?;
        match record {
            Some(r) if !r.hash_matches() => Err(AuditError::Corrupt(format!(
                "the last row of audit_log (seq {}) does not match its hash",
                r.seq
            ))),
            other => Ok(other),
        }
    }

    async fn append(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let values = row_values(records)?;
        let insert = format!("INSERT INTO audit_log ({COLUMNS}) ");
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(sqlite_err)?;
                for chunk in values.chunks(PAGE) {
                    let mut qb = QueryBuilder::<Sqlite>::new(&insert);
                    qb.push_values(chunk, |mut b, v| push_row!(b, v));
                    qb.build().execute(&mut *tx).await.map_err(sqlite_err)?;
                }
                tx.commit().await.map_err(sqlite_err)
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(pg_err)?;
                for chunk in values.chunks(PAGE) {
                    let mut qb = QueryBuilder::<Postgres>::new(&insert);
                    qb.push_values(chunk, |mut b, v| push_row!(b, v));
                    qb.build().execute(&mut *tx).await.map_err(pg_err)?;
                }
                tx.commit().await.map_err(pg_err)
            }
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 characters.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = (1..=63).contains(&schema.len())
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AuditError::Invalid(format!(
            "schema name {schema:?}: [A-Za-z_][A-Za-z0-9_]*, at most 63 characters"
        )))
    }
}

fn map_sqlx_error(
    e: sqlx::Error,
    unavailable: impl FnOnce(&dyn sqlx::error::DatabaseError) -> bool,
) -> AuditError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => AuditError::Unavailable(e.to_string()),
        sqlx::Error::Database(ref db) if unavailable(db.as_ref()) => {
            AuditError::Unavailable(e.to_string())
        }
        e => AuditError::Backend(e.to_string()),
    }
}

fn sqlite_err(e: sqlx::Error) -> AuditError {
    map_sqlx_error(e, |db| {
        // Primary result code = extended code & 0xff: BUSY, LOCKED, IOERR, CANTOPEN.
        db.code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14))
    })
}

fn pg_err(e: sqlx::Error) -> AuditError {
    map_sqlx_error(e, |db| {
        db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema_name("audit_1").is_ok());
        for bad in ["", "1a", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(matches!(
                check_schema_name(bad),
                Err(AuditError::Invalid(_))
            ));
        }
    }
}
