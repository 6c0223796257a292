//! The embedded backend: one SQLite file (or an in-memory database), full-text search
//! with FTS5 ranked by bm25.
//!
//! Turns live in `memory_turns`; an external-content FTS5 table (`memory_turns_fts`)
//! indexes the user and assistant text and is kept in sync by triggers (insert, update
//! and delete), so deleting a turn also removes it from the index. Spaces and members
//! live in `memory_spaces` and `memory_members`.
//!
//! Search never hands user text to the FTS5 query parser as syntax: the query is cut
//! into words (runs of Unicode alphanumerics, at most [`MAX_QUERY_WORDS`]), each word is
//! quoted as an FTS5 string and the words are OR-ed. Diacritics are kept (`naive` does
//! not match `naïve`), as in the PostgreSQL backend.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{
    Erased, Filter, Hit, Member, MemoryStore, Result, Right, Scope, Space, StoreError, Turn,
};

/// The most words of a search query that are used (the rest are ignored).
pub const MAX_QUERY_WORDS: usize = 32;

/// Idempotent schema. `seq` is an explicit rowid alias so the FTS5 rowid mapping is
/// stable (an implicit rowid may change on `VACUUM`).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS memory_turns (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    principal      TEXT    NOT NULL,
    session        TEXT,
    space          TEXT,
    model          TEXT,
    route          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    user_text      TEXT    NOT NULL,
    assistant_text TEXT    NOT NULL,
    complete       INTEGER NOT NULL,
    embedding      BLOB
);
CREATE INDEX IF NOT EXISTS memory_turns_principal ON memory_turns (tenant, principal, created_at);
CREATE INDEX IF NOT EXISTS memory_turns_space ON memory_turns (tenant, space, created_at);
CREATE INDEX IF NOT EXISTS memory_turns_created ON memory_turns (created_at);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_turns_fts USING fts5(
    user_text, assistant_text,
    content = 'memory_turns', content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 0'
);
CREATE TRIGGER IF NOT EXISTS memory_turns_fts_ai AFTER INSERT ON memory_turns BEGIN
    INSERT INTO memory_turns_fts (rowid, user_text, assistant_text)
    VALUES (new.seq, new.user_text, new.assistant_text);
END;
CREATE TRIGGER IF NOT EXISTS memory_turns_fts_ad AFTER DELETE ON memory_turns BEGIN
    INSERT INTO memory_turns_fts (memory_turns_fts, rowid, user_text, assistant_text)
    VALUES ('delete', old.seq, old.user_text, old.assistant_text);
END;
CREATE TRIGGER IF NOT EXISTS memory_turns_fts_au AFTER UPDATE OF user_text, assistant_text ON memory_turns BEGIN
    INSERT INTO memory_turns_fts (memory_turns_fts, rowid, user_text, assistant_text)
    VALUES ('delete', old.seq, old.user_text, old.assistant_text);
    INSERT INTO memory_turns_fts (rowid, user_text, assistant_text)
    VALUES (new.seq, new.user_text, new.assistant_text);
END;
CREATE TABLE IF NOT EXISTS memory_spaces (
    tenant     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX IF NOT EXISTS memory_spaces_owner ON memory_spaces (tenant, owner);
CREATE TABLE IF NOT EXISTS memory_members (
    tenant    TEXT NOT NULL,
    space     TEXT NOT NULL,
    principal TEXT NOT NULL,
    access    TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (tenant, space, principal),
    FOREIGN KEY (tenant, space) REFERENCES memory_spaces (tenant, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS memory_members_principal ON memory_members (tenant, principal);
CREATE TABLE IF NOT EXISTS memory_erasures (
    tenant    TEXT NOT NULL,
    principal TEXT NOT NULL,
    erased_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, principal)
);
"#;

/// Columns of a turn, in the order [`turn_from_row`] reads them (prefixed with `t.`).
const TURN_COLUMNS: &str = "t.id, t.tenant, t.principal, t.session, t.space, t.model, t.route, \
     t.created_at, t.user_text, t.assistant_text, t.complete, t.embedding";

/// The SQLite memory store. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path`, in WAL mode with a
    /// busy timeout, and creates the schema if needed.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Self::init(pool).await
    }

    /// A private in-memory database (one connection that is never recycled, so every
    /// query sees the same data; it is gone when the store is dropped).
    pub async fn in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(map_err)?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Self::init(pool).await
    }

    /// Closes the pool, waiting for the connections to finish (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn init(pool: SqlitePool) -> Result<Self> {
        let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&pool)
            .await
            .map_err(map_err)?;
        if !options.iter().any(|o| o == "ENABLE_FTS5") {
            return Err(StoreError::Backend(
                "this SQLite library was built without FTS5".into(),
            ));
        }
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(map_err)?;
        Ok(SqliteStore { pool })
    }

    async fn fetch_turns(&self, mut qb: QueryBuilder<'_, Sqlite>) -> Result<Vec<Turn>> {
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(turn_from_row).collect()
    }
}

fn push_scope(qb: &mut QueryBuilder<'_, Sqlite>, scope: &Scope, filter: &Filter) {
    match scope {
        Scope::Own { tenant, principal } => {
            qb.push(" AND t.tenant = ")
                .push_bind(tenant.clone())
                .push(" AND t.principal = ")
                .push_bind(principal.clone())
                .push(" AND t.space IS NULL");
        }
        Scope::Space { tenant, space } => {
            qb.push(" AND t.tenant = ")
                .push_bind(tenant.clone())
                .push(" AND t.space = ")
                .push_bind(space.clone());
        }
    }
    if let Some(session) = &filter.session {
        qb.push(" AND t.session = ").push_bind(session.clone());
    }
    if let Some(since) = filter.since {
        qb.push(" AND t.created_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        qb.push(" AND t.created_at < ").push_bind(until);
    }
}

fn turn_from_row(row: &SqliteRow) -> Result<Turn> {
    let embedding: Option<Vec<u8>> = row.try_get("embedding").map_err(map_err)?;
    Ok(Turn {
        id: row.try_get("id").map_err(map_err)?,
        tenant: row.try_get("tenant").map_err(map_err)?,
        principal: row.try_get("principal").map_err(map_err)?,
        session: row.try_get("session").map_err(map_err)?,
        space: row.try_get("space").map_err(map_err)?,
        model: row.try_get("model").map_err(map_err)?,
        route: row.try_get("route").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        user: row.try_get("user_text").map_err(map_err)?,
        assistant: row.try_get("assistant_text").map_err(map_err)?,
        complete: row.try_get("complete").map_err(map_err)?,
        embedding: embedding.map(|b| decode_embedding(&b)).transpose()?,
    })
}

fn space_from_row(row: &SqliteRow) -> Result<Space> {
    Ok(Space {
        tenant: row.try_get("tenant").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        owner: row.try_get("owner").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

/// The FTS5 query for `words`: each word quoted as an FTS5 string, OR-ed.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[async_trait::async_trait]
impl MemoryStore for SqliteStore {
    async fn append(&self, turns: &[Turn]) -> Result<()> {
        if turns.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        for t in turns {
            sqlx::query(
                "INSERT INTO memory_turns (id, tenant, principal, session, space, model, route, \
                 created_at, user_text, assistant_text, complete, embedding) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&t.id)
            .bind(&t.tenant)
            .bind(&t.principal)
            .bind(&t.session)
            .bind(&t.space)
            .bind(&t.model)
            .bind(&t.route)
            .bind(t.created_at)
            .bind(&t.user)
            .bind(&t.assistant)
            .bind(t.complete)
            .bind(t.embedding.as_deref().map(encode_embedding))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list(&self, scope: &Scope, filter: &Filter) -> Result<Vec<Turn>> {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {TURN_COLUMNS} FROM memory_turns t WHERE 1 = 1"
        ));
        push_scope(&mut qb, scope, filter);
        qb.push(" ORDER BY t.created_at DESC, t.id DESC LIMIT ")
            .push_bind(filter.effective_limit() as i64);
        self.fetch_turns(qb).await
    }

    async fn search(&self, scope: &Scope, query: &str, filter: &Filter) -> Result<Vec<Hit>> {
        let words = query_words(query);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Bounded cost: only rows from the scope's SEARCH_WINDOW-th most recent turn on
        // are ranked (FTS5 walks its posting lists from that rowid, rows are numbered
        // in insertion order), however often the words occur in older turns.
        let mut first = QueryBuilder::new("SELECT t.seq FROM memory_turns t WHERE 1 = 1");
        push_scope(&mut first, scope, filter);
        first
            .push(" ORDER BY t.created_at DESC LIMIT 1 OFFSET ")
            .push_bind(crate::SEARCH_WINDOW as i64 - 1);
        let from: i64 = first
            .build_query_scalar()
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .unwrap_or(0);
        let mut qb = QueryBuilder::new(format!(
            "SELECT {TURN_COLUMNS}, bm25(memory_turns_fts) AS bm25_rank \
             FROM memory_turns_fts JOIN memory_turns t ON t.seq = memory_turns_fts.rowid \
             WHERE memory_turns_fts.rowid >= "
        ));
        qb.push_bind(from)
            .push(" AND memory_turns_fts MATCH ")
            .push_bind(fts_query(&words));
        push_scope(&mut qb, scope, filter);
        qb.push(" ORDER BY bm25_rank ASC, t.created_at DESC, t.id DESC LIMIT ")
            .push_bind(filter.effective_limit() as i64);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let rank: f64 = row.try_get("bm25_rank").map_err(map_err)?;
                Ok(Hit {
                    turn: turn_from_row(row)?,
                    // bm25() is negative, lower is better.
                    score: positive_score(-rank),
                })
            })
            .collect()
    }

    async fn delete(&self, tenant: &str, principal: &str, id: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM memory_turns WHERE id = ? AND tenant = ? AND principal = ?")
                .bind(id)
                .bind(tenant)
                .bind(principal)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_session(&self, tenant: &str, principal: &str, session: &str) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM memory_turns WHERE tenant = ? AND principal = ? AND session = ? \
             AND space IS NULL",
        )
        .bind(tenant)
        .bind(principal)
        .bind(session)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn erase(&self, tenant: &str, principal: &str) -> Result<Erased> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let memberships = sqlx::query(
            "DELETE FROM memory_members WHERE tenant = ?1 AND (principal = ?2 OR space IN \
             (SELECT name FROM memory_spaces WHERE tenant = ?1 AND owner = ?2))",
        )
        .bind(tenant)
        .bind(principal)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let turns = sqlx::query(
            "DELETE FROM memory_turns WHERE tenant = ?1 AND (principal = ?2 OR space IN \
             (SELECT name FROM memory_spaces WHERE tenant = ?1 AND owner = ?2))",
        )
        .bind(tenant)
        .bind(principal)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let spaces = sqlx::query("DELETE FROM memory_spaces WHERE tenant = ? AND owner = ?")
            .bind(tenant)
            .bind(principal)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        sqlx::query(
            "INSERT INTO memory_erasures (tenant, principal, erased_at) VALUES (?, ?, ?) \
             ON CONFLICT (tenant, principal) DO UPDATE SET erased_at = excluded.erased_at",
        )
        .bind(tenant)
        .bind(principal)
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Erased {
            turns,
            spaces,
            memberships,
        })
    }

    async fn erased_at(&self, tenant: &str, principal: &str) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT erased_at FROM memory_erasures WHERE tenant = ? AND principal = ?",
        )
        .bind(tenant)
        .bind(principal)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn expire(&self, tenant: Option<&str>, before: i64) -> Result<u64> {
        let done = match tenant {
            Some(tenant) => {
                sqlx::query("DELETE FROM memory_turns WHERE tenant = ? AND created_at < ?")
                    .bind(tenant)
                    .bind(before)
                    .execute(&self.pool)
                    .await
            }
            None => {
                sqlx::query("DELETE FROM memory_turns WHERE created_at < ?")
                    .bind(before)
                    .execute(&self.pool)
                    .await
            }
        }
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    /// Also deletes turns left under that name by an earlier space of the same name
    /// (a new space always starts empty).
    async fn create_space(&self, tenant: &str, name: &str, owner: &str, now: i64) -> Result<Space> {
        check_space_name(name)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let inserted = sqlx::query(
            "INSERT INTO memory_spaces (tenant, name, owner, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(tenant)
        .bind(name)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("space {name:?}")));
        }
        sqlx::query("DELETE FROM memory_turns WHERE tenant = ? AND space = ?")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Space {
            tenant: tenant.into(),
            name: name.into(),
            owner: owner.into(),
            created_at: now,
        })
    }

    async fn space(&self, tenant: &str, name: &str) -> Result<Option<Space>> {
        let row = sqlx::query(
            "SELECT tenant, name, owner, created_at FROM memory_spaces WHERE tenant = ? AND name = ?",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(space_from_row).transpose()
    }

    async fn set_member(
        &self,
        tenant: &str,
        space: &str,
        principal: &str,
        right: Right,
    ) -> Result<()> {
        check_member_right(right)?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM memory_spaces WHERE tenant = ? AND name = ?")
                .bind(tenant)
                .bind(space)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        check_member_target(owner.as_deref(), space, principal)?;
        sqlx::query(
            "INSERT INTO memory_members (tenant, space, principal, access) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant, space, principal) DO UPDATE SET access = excluded.access",
        )
        .bind(tenant)
        .bind(space)
        .bind(principal)
        .bind(right.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn remove_member(&self, tenant: &str, space: &str, principal: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM memory_members WHERE tenant = ? AND space = ? AND principal = ?",
        )
        .bind(tenant)
        .bind(space)
        .bind(principal)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn members(&self, tenant: &str, space: &str) -> Result<Vec<Member>> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM memory_spaces WHERE tenant = ? AND name = ?")
                .bind(tenant)
                .bind(space)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
        let Some(owner) = owner else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT principal, access FROM memory_members WHERE tenant = ? AND space = ? \
             ORDER BY principal",
        )
        .bind(tenant)
        .bind(space)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        members_list(owner, rows)
    }

    async fn right_of(&self, tenant: &str, space: &str, principal: &str) -> Result<Option<Right>> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT s.owner, m.access FROM memory_spaces s LEFT JOIN memory_members m \
             ON m.tenant = s.tenant AND m.space = s.name AND m.principal = ?3 \
             WHERE s.tenant = ?1 AND s.name = ?2",
        )
        .bind(tenant)
        .bind(space)
        .bind(principal)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        right_from(row, principal)
    }

    async fn spaces_of(&self, tenant: &str, principal: &str) -> Result<Vec<(Space, Right)>> {
        let rows = sqlx::query(
            "SELECT s.tenant, s.name, s.owner, s.created_at, \
             CASE WHEN s.owner = ?2 THEN 'owner' ELSE m.access END AS access \
             FROM memory_spaces s LEFT JOIN memory_members m \
             ON m.tenant = s.tenant AND m.space = s.name AND m.principal = ?2 \
             WHERE s.tenant = ?1 AND (s.owner = ?2 OR m.principal IS NOT NULL) \
             ORDER BY s.name",
        )
        .bind(tenant)
        .bind(principal)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let access: String = row.try_get("access").map_err(map_err)?;
                Ok((space_from_row(row)?, parse_right(&access)?))
            })
            .collect()
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT tenant FROM memory_turns ORDER BY tenant")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// Maps a SQLite error ([`oba_db::is_transient`] → [`StoreError::Unavailable`]).
fn map_err(e: sqlx::Error) -> StoreError {
    map_sqlx_error(e, oba_db::Backend::Sqlite)
}

// ---------------------------------------------------------------------------------------
// Shared by both backends (crate-private).

/// Words of a search query: runs of Unicode alphanumerics, at most [`MAX_QUERY_WORDS`].
pub(crate) fn query_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_QUERY_WORDS)
        .map(str::to_owned)
        .collect()
}

/// Maps a sqlx error: transient ones ([`oba_db::is_transient`]) are
/// [`StoreError::Unavailable`], unique violations [`StoreError::Conflict`].
pub(crate) fn map_sqlx_error(e: sqlx::Error, backend: oba_db::Backend) -> StoreError {
    if oba_db::is_transient(&e, backend) {
        return StoreError::Unavailable(e.to_string());
    }
    match e {
        sqlx::Error::Database(ref db) if db.is_unique_violation() => {
            StoreError::Conflict(e.to_string())
        }
        e => StoreError::Backend(e.to_string()),
    }
}

/// Little-endian f32 bytes.
pub(crate) fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`encode_embedding`].
pub(crate) fn decode_embedding(bytes: &[u8]) -> Result<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Backend(format!(
            "stored embedding has {} bytes, not a multiple of 4",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A score that is finite and > 0.
pub(crate) fn positive_score(score: f64) -> f64 {
    if score.is_finite() && score > 0.0 {
        score
    } else {
        f64::MIN_POSITIVE
    }
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn check_space_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "space name {name:?}: 1 to 64 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// A member right is `Read` or `Write`.
pub(crate) fn check_member_right(right: Right) -> Result<()> {
    match right {
        Right::Read | Right::Write => Ok(()),
        Right::Owner => Err(StoreError::Invalid(
            "a member right is read or write (the owner is implicit)".into(),
        )),
    }
}

/// The space must exist and `principal` must not be its owner.
pub(crate) fn check_member_target(owner: Option<&str>, space: &str, principal: &str) -> Result<()> {
    match owner {
        None => Err(StoreError::Invalid(format!("no such space: {space:?}"))),
        Some(owner) if owner == principal => Err(StoreError::Invalid(format!(
            "{principal:?} owns space {space:?}; the owner's right is implicit"
        ))),
        Some(_) => Ok(()),
    }
}

/// Parses a stored right.
pub(crate) fn parse_right(s: &str) -> Result<Right> {
    Right::parse(s).ok_or_else(|| StoreError::Backend(format!("stored right {s:?} is unknown")))
}

/// The owner first, then the members (already sorted by principal).
pub(crate) fn members_list(owner: String, rows: Vec<(String, String)>) -> Result<Vec<Member>> {
    let mut out = Vec::with_capacity(rows.len() + 1);
    out.push(Member {
        principal: owner.clone(),
        right: Right::Owner,
    });
    for (principal, access) in rows {
        if principal != owner {
            out.push(Member {
                principal,
                right: parse_right(&access)?,
            });
        }
    }
    Ok(out)
}

/// `principal`'s right from `(owner, member access)` of an existing space.
pub(crate) fn right_from(
    row: Option<(String, Option<String>)>,
    principal: &str,
) -> Result<Option<Right>> {
    match row {
        None => Ok(None),
        Some((owner, _)) if owner == principal => Ok(Some(Right::Owner)),
        Some((_, Some(access))) => parse_right(&access).map(Some),
        Some((_, None)) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_are_alphanumeric_runs() {
        assert_eq!(
            query_words("\"a\" b*  NEAR(c, d) -e:f '; DROP"),
            ["a", "b", "NEAR", "c", "d", "e", "f", "DROP"]
        );
        assert_eq!(query_words("naïve 日本語 🎉"), ["naïve", "日本語"]);
        assert!(query_words(" \"*-:()' ").is_empty());
        let many = "w ".repeat(100);
        assert_eq!(query_words(&many).len(), MAX_QUERY_WORDS);
    }

    #[test]
    fn fts_query_quotes_every_word() {
        let words = vec!["a".to_string(), "b\"c".to_string()];
        assert_eq!(fts_query(&words), "\"a\" OR \"b\"\"c\"");
    }

    #[test]
    fn embeddings_round_trip_exactly() {
        let v = vec![0.1f32, -0.0, f32::MAX, f32::MIN_POSITIVE, 1e-45];
        let back = decode_embedding(&encode_embedding(&v)).unwrap();
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(decode_embedding(&[1, 2, 3]).is_err());
    }

    #[test]
    fn space_names() {
        assert!(check_space_name("a.b_c-D9").is_ok());
        assert!(check_space_name(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(
                matches!(check_space_name(bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
