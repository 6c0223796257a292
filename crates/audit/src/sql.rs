//! The `audit_log` table as SQL, for a writer that appends records inside its own
//! database transactions.
//!
//! [`DbLog`](crate::DbLog) owns its connections, and [`AuditLog`](crate::AuditLog)
//! writes to it off the request path. A service whose changes must be audited
//! *atomically* — the change and its record commit together or not at all, and the
//! request waits for both — appends in the change's own transaction instead, on its own
//! pool (any sqlx database: SQLite, PostgreSQL, or either through the Any driver). This
//! module gives it exactly [`DbLog`](crate::DbLog)'s table, columns and row format, so
//! [`DbLog::verify`](crate::DbLog::verify) and `oba audit verify --db` read the result;
//! the chain itself (seq, `prev`, hashes, checkpoints) comes from
//! [`ChainHead`](crate::ChainHead). No chain state needs to live outside the table.
//!
//! One append, in the caller's transaction, after its change:
//!
//! 1. **serialise** appends, or two transactions would chain onto the same tail (the
//!    loser then fails on the `seq` primary key): on PostgreSQL execute
//!    [`LOCK_POSTGRES`] first (a transaction-scoped advisory lock: writers in other
//!    processes wait too); on SQLite the transaction must hold the write lock before it
//!    reads the tail (it has already written its change, or began `IMMEDIATE`) or the pool
//!    must have one connection;
//! 2. **read the tail**: [`SELECT_TAIL`] and [`decode`], and [`SELECT_LAST_CHECKPOINT`]
//!    (a column `seq`, `NULL` when there is none) — or keep a cached head and skip the
//!    second query while it [`follows`](crate::ChainHead::follows) the tail;
//! 3. **resume** with [`ChainHead::resume`](crate::ChainHead::resume), seal the events,
//!    add a checkpoint when due;
//! 4. **write** them with [`insert`] (at most [`MAX_INSERT_ROWS`] per statement), then
//!    commit.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use oba_audit::{sql, AuditEvent, ChainHead, CheckpointSigner, DbLog, Kind, TrustedKeys};
//! use oba_httpsig::{jwk::Jwk, Algorithm};
//! use sqlx::Row;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
//! let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
//! sqlx::raw_sql(&sql::create_table(sql::Dialect::Sqlite)).execute(&pool).await.unwrap();
//! sqlx::raw_sql("CREATE TABLE tokens (id TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
//! let key = Jwk::generate(Algorithm::Ed25519).unwrap();
//! let signer = CheckpointSigner::from_jwk(&key).unwrap();
//!
//! for id in ["t1", "t2"] {
//!     // The change and its record: one transaction.
//!     let mut tx = pool.begin().await.unwrap();
//!     sqlx::query("INSERT INTO tokens (id) VALUES ($1)").bind(id).execute(&mut *tx).await.unwrap();
//!     let tail = match sqlx::query(sql::SELECT_TAIL).fetch_optional(&mut *tx).await.unwrap() {
//!         Some(row) => Some(sql::decode(&row).unwrap()),
//!         None => None,
//!     };
//!     let last_checkpoint: Option<i64> = sqlx::query(sql::SELECT_LAST_CHECKPOINT)
//!         .fetch_one(&mut *tx)
//!         .await
//!         .unwrap()
//!         .get("seq");
//!     let mut head = ChainHead::resume(tail.as_ref(), last_checkpoint.map(|s| s as u64));
//!     let mut records = vec![head
//!         .seal(AuditEvent::now(Kind::Other("token.create".into())).with_key_id(id))
//!         .unwrap()];
//!     if head.unsigned() >= 2 {
//!         records.push(head.checkpoint(&signer, 0).unwrap());
//!     }
//!     sql::insert(&records).unwrap().query().execute(&mut *tx).await.unwrap();
//!     tx.commit().await.unwrap();
//! }
//! pool.close().await;
//!
//! let mut trusted = TrustedKeys::new();
//! trusted.add_jwk(&key.public().unwrap()).unwrap();
//! let db = DbLog::connect_existing(&url, None).await.unwrap();
//! let report = db.verify(&trusted).await.unwrap();
//! assert_eq!(report.summary(), "ok: 3 records, 1 checkpoints, 0 unsigned at the end");
//! # });
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};

use crate::error::{AuditError, Result};
use crate::record::{canonical_object, canonical_string_map, AuditEvent, AuditRecord, Kind};

/// The database an `audit_log` table lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The table's name.
pub const TABLE: &str = "audit_log";

macro_rules! columns {
    () => {
        "seq, prev, time_ms, kind, actor, auth_method, key_id, tenant, route, \
         request_id, reason, hashes, details, sig_alg, sig_keyid, sig, hash"
    };
}

/// The columns of a row, in the order [`insert`] binds them and [`decode`] reads them
/// (by name).
pub const COLUMNS: &str = columns!();

/// The last record (no parameters; no row when the table is empty).
pub const SELECT_TAIL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM audit_log ORDER BY seq DESC LIMIT 1"
);

/// The seq of the last checkpoint, as column `seq` (`NULL` when there is none). Served
/// by a partial index on checkpoints.
pub const SELECT_LAST_CHECKPOINT: &str =
    "SELECT MAX(seq) AS seq FROM audit_log WHERE kind = 'checkpoint'";

/// PostgreSQL: serialises appends to the table until the transaction ends (an advisory
/// lock: every writer of the database that takes it waits, in any process). Returns one
/// row.
pub const LOCK_POSTGRES: &str = "SELECT 1 AS locked FROM pg_advisory_xact_lock(31351891927593072)";

/// Most records one [`insert`] statement takes (17 parameters each, within every
/// driver's limit).
pub const MAX_INSERT_ROWS: usize = 500;

/// Advisory lock key serialising table creation on PostgreSQL ("oba-aud" in ASCII).
pub(crate) const SCHEMA_LOCK: i64 = 0x006f_6261_2d61_7564;

pub(crate) const SQLITE_SCHEMA: &str = r#"
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
CREATE INDEX IF NOT EXISTS audit_log_checkpoints ON audit_log (seq) WHERE kind = 'checkpoint';
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"#;

pub(crate) const PG_SCHEMA: &str = r#"
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
CREATE INDEX IF NOT EXISTS audit_log_checkpoints ON audit_log (seq) WHERE kind = 'checkpoint';
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

/// The script that creates the table if it is missing (what
/// [`DbLog::connect`](crate::DbLog::connect) runs): the table, an index on `time_ms`, a
/// partial index on checkpoints, and triggers refusing `UPDATE`, `DELETE` and (PostgreSQL)
/// `TRUNCATE`. Idempotent. Run it as one script (`sqlx::raw_sql`): on PostgreSQL it
/// starts with a transaction-scoped advisory lock, so it must run as one simple query
/// (one implicit transaction, as `raw_sql` sends it), and the table goes to the first
/// schema of the connection's `search_path`.
pub fn create_table(dialect: Dialect) -> String {
    match dialect {
        Dialect::Sqlite => SQLITE_SCHEMA.to_owned(),
        Dialect::Postgres => {
            format!("SELECT 1 AS locked FROM pg_advisory_xact_lock({SCHEMA_LOCK}); {PG_SCHEMA}")
        }
    }
}

/// A row (all of [`COLUMNS`]) as a record. An error ([`AuditError::Corrupt`]) names the
/// column that does not decode. The hash is not checked here
/// ([`AuditRecord::hash_matches`]).
pub fn decode<'r, R>(row: &'r R) -> Result<AuditRecord>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    decode_row(row).map_err(|e| AuditError::Corrupt(format!("an audit_log row: {e}")))
}

/// A row as a record (the error says which column does not decode).
pub(crate) fn decode_row<'r, R>(row: &'r R) -> std::result::Result<AuditRecord, String>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
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

/// `INSERT INTO audit_log (COLUMNS) VALUES (...), ...` for `records` (1 to
/// [`MAX_INSERT_ROWS`], in order), ready to bind with [`Insert::query`] and execute in
/// the caller's transaction. `hashes` and `details` are stored as their canonical JSON
/// text, as [`DbLog`](crate::DbLog) stores them.
///
/// Errors ([`AuditError::Invalid`]): no records, too many, or a seq beyond `i64::MAX`.
pub fn insert(records: &[AuditRecord]) -> Result<Insert<'_>> {
    if records.is_empty() || records.len() > MAX_INSERT_ROWS {
        return Err(AuditError::Invalid(format!(
            "an insert takes 1 to {MAX_INSERT_ROWS} records, not {}",
            records.len()
        )));
    }
    let rows = records
        .iter()
        .map(|r| {
            Ok(Values {
                seq: i64::try_from(r.seq)
                    .map_err(|_| AuditError::Invalid(format!("seq {} is too large", r.seq)))?,
                record: r,
                hashes: canonical_string_map(&r.event.hashes),
                details: canonical_object(&r.event.details),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sql = String::with_capacity(96 + rows.len() * 110);
    sql.push_str(concat!("INSERT INTO audit_log (", columns!(), ") VALUES "));
    let mut n = 0;
    for i in 0..rows.len() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for c in 0..COLUMN_COUNT {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
    Ok(Insert { sql, rows })
}

/// The number of [`COLUMNS`].
const COLUMN_COUNT: usize = 17;

/// A prepared `INSERT` of records (see [`insert`]).
///
/// Its placeholders are `$1`, `$2`, ...: PostgreSQL's, which SQLite accepts too and
/// sqlx's Any driver passes through unchanged — unlike sqlx's `QueryBuilder`, which
/// writes `?` for the Any driver, which PostgreSQL refuses.
#[derive(Debug)]
pub struct Insert<'a> {
    sql: String,
    rows: Vec<Values<'a>>,
}

/// One row's values.
#[derive(Debug)]
struct Values<'a> {
    seq: i64,
    record: &'a AuditRecord,
    hashes: String,
    details: String,
}

impl Insert<'_> {
    /// The statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The statement with every value bound, for any sqlx database that binds `i64`,
    /// `&str` and `Option<&str>` (SQLite, PostgreSQL, Any).
    pub fn query<'q, DB>(&'q self) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
    where
        DB: Database,
        i64: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
    {
        let mut q = sqlx::query::<DB>(&self.sql);
        for v in &self.rows {
            let (r, e) = (v.record, &v.record.event);
            q = q
                .bind(v.seq)
                .bind(r.prev.as_str())
                .bind(e.time_ms)
                .bind(e.kind.as_str())
                .bind(e.actor.as_deref())
                .bind(e.auth_method.as_deref())
                .bind(e.key_id.as_deref())
                .bind(e.tenant.as_deref())
                .bind(e.route.as_deref())
                .bind(e.request_id.as_deref())
                .bind(e.reason.as_deref())
                .bind(v.hashes.as_str())
                .bind(v.details.as_str())
                .bind(r.sig_alg.as_deref())
                .bind(r.sig_keyid.as_deref())
                .bind(r.sig.as_deref())
                .bind(r.hash.as_str());
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_spelled_out() {
        // LOCK_POSTGRES names its key literally (a const string); it must stay this one
        // ("oba-app" in ASCII), distinct from the schema lock.
        assert_eq!(0x006f_6261_2d61_7070_i64, 31351891927593072);
        assert!(LOCK_POSTGRES.contains(&0x006f_6261_2d61_7070_i64.to_string()));
        assert_ne!(SCHEMA_LOCK, 0x006f_6261_2d61_7070);
    }

    #[test]
    fn insert_refuses_empty_and_oversized_batches() {
        let none: &[AuditRecord] = &[];
        assert!(matches!(insert(none), Err(AuditError::Invalid(_))));
        let r = AuditRecord::seal(
            1,
            crate::GENESIS.into(),
            AuditEvent::new(Kind::KeyCreated, 1),
        );
        let many = vec![r.clone(); MAX_INSERT_ROWS + 1];
        assert!(matches!(insert(&many), Err(AuditError::Invalid(_))));
        let two = insert(&many[..2]).unwrap();
        assert!(two.sql().ends_with(", $16, $17), ($18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34)"), "{}", two.sql());
        assert_eq!(COLUMNS.split(", ").count(), COLUMN_COUNT);
        let mut huge = r;
        huge.seq = u64::MAX;
        assert!(matches!(
            insert(std::slice::from_ref(&huge)),
            Err(AuditError::Invalid(_))
        ));
    }
}
