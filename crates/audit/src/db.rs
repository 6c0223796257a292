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

use std::ops::ControlFlow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use crate::error::{AuditError, Result};
use crate::keys::TrustedKeys;
use crate::record::AuditRecord;
use crate::sink::AuditSink;
use crate::sql::{decode_row, insert, COLUMNS, PG_SCHEMA, SCHEMA_LOCK, SELECT_TAIL, SQLITE_SCHEMA};
use crate::verify::{ChainVerifier, Malformed, Report};

/// Rows per read and per `INSERT` statement.
const PAGE: usize = crate::sql::MAX_INSERT_ROWS;

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
        let pool = oba_db::postgres_pool(url, schema, 4)
            .await
            .map_err(|e| match e {
                oba_db::ConnectError::Invalid(m) => AuditError::Invalid(m),
                oba_db::ConnectError::Database(e) => pg_err(e),
            })?;
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
                        Ok((seq, decode_row(r)))
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
                        Ok((seq, decode_row(r)))
                    })
                    .collect()
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for DbLog {
    async fn tail(&self) -> Result<Option<AuditRecord>> {
        let record = match &self.backend {
            Backend::Sqlite(pool) => {
                let row = sqlx::query(SELECT_TAIL)
                    .fetch_optional(pool)
                    .await
                    .map_err(sqlite_err)?;
                row.map(|r| decode_row(&r)).transpose()
            }
            Backend::Postgres(pool) => {
                let row = sqlx::query(SELECT_TAIL)
                    .fetch_optional(pool)
                    .await
                    .map_err(pg_err)?;
                row.map(|r| decode_row(&r)).transpose()
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
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(sqlite_err)?;
                for chunk in records.chunks(PAGE) {
                    let stmt = insert(chunk)?;
                    stmt.query::<Sqlite>()
                        .execute(&mut *tx)
                        .await
                        .map_err(sqlite_err)?;
                }
                tx.commit().await.map_err(sqlite_err)
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(pg_err)?;
                for chunk in records.chunks(PAGE) {
                    let stmt = insert(chunk)?;
                    stmt.query::<Postgres>()
                        .execute(&mut *tx)
                        .await
                        .map_err(pg_err)?;
                }
                tx.commit().await.map_err(pg_err)
            }
        }
    }
}

fn map_err(e: sqlx::Error, backend: oba_db::Backend) -> AuditError {
    if oba_db::is_transient(&e, backend) {
        AuditError::Unavailable(e.to_string())
    } else {
        AuditError::Backend(e.to_string())
    }
}

fn sqlite_err(e: sqlx::Error) -> AuditError {
    map_err(e, oba_db::Backend::Sqlite)
}

fn pg_err(e: sqlx::Error) -> AuditError {
    map_err(e, oba_db::Backend::Postgres)
}
