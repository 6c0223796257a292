//! The PostgreSQL backend: full-text search over a stored `tsvector` (the `simple`
//! configuration, GIN index) ranked by `ts_rank`.
//!
//! Tables: `memory_turns`, `memory_spaces` and `memory_members`, created idempotently
//! (under an advisory lock, so several processes may start at once) in the connection's
//! `search_path`, or in the schema given to [`PgStore::connect`]. Identifier-like
//! columns use the `"C"` collation so ordering matches the SQLite backend (byte order).
//!
//! Search words (runs of Unicode alphanumerics, as in the SQLite backend) are passed as
//! bind parameters, one `plainto_tsquery('simple', $n)` each, OR-ed with `||`: user text
//! is never SQL and never tsquery syntax. Punctuation in the indexed text is replaced by
//! spaces before parsing, so `main.rs` or `a-b` index their words like FTS5 does.
//! Only the first 100 000 characters of each of the user and assistant text are
//! indexed (a `tsvector` is limited to 1 MB).

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::sqlite::{
    check_member_right, check_member_target, check_space_name, decode_embedding, encode_embedding,
    map_sqlx_error, members_list, parse_right, positive_score, query_words, right_from,
};
use crate::{
    Erased, Filter, Hit, Member, MemoryStore, Result, Right, Scope, Space, StoreError, Turn,
};

/// Idempotent schema (PostgreSQL 12 or later: generated column).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS memory_turns (
    id             TEXT COLLATE "C" PRIMARY KEY,
    tenant         TEXT COLLATE "C" NOT NULL,
    principal      TEXT COLLATE "C" NOT NULL,
    session        TEXT COLLATE "C",
    space          TEXT COLLATE "C",
    model          TEXT,
    route          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    user_text      TEXT NOT NULL,
    assistant_text TEXT NOT NULL,
    complete       BOOLEAN NOT NULL,
    embedding      BYTEA,
    tsv            TSVECTOR GENERATED ALWAYS AS (
        to_tsvector('simple'::regconfig, regexp_replace(
            left(user_text, 100000) || ' ' || left(assistant_text, 100000),
            '[[:punct:]]+', ' ', 'g'))
    ) STORED
);
CREATE INDEX IF NOT EXISTS memory_turns_principal ON memory_turns (tenant, principal, created_at);
CREATE INDEX IF NOT EXISTS memory_turns_space ON memory_turns (tenant, space, created_at);
CREATE INDEX IF NOT EXISTS memory_turns_created ON memory_turns (created_at);
CREATE INDEX IF NOT EXISTS memory_turns_tsv ON memory_turns USING GIN (tsv);
CREATE TABLE IF NOT EXISTS memory_spaces (
    tenant     TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    owner      TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX IF NOT EXISTS memory_spaces_owner ON memory_spaces (tenant, owner);
CREATE TABLE IF NOT EXISTS memory_members (
    tenant    TEXT COLLATE "C" NOT NULL,
    space     TEXT COLLATE "C" NOT NULL,
    principal TEXT COLLATE "C" NOT NULL,
    access    TEXT NOT NULL CHECK (access IN ('read', 'write')),
    PRIMARY KEY (tenant, space, principal),
    FOREIGN KEY (tenant, space) REFERENCES memory_spaces (tenant, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS memory_members_principal ON memory_members (tenant, principal);
CREATE TABLE IF NOT EXISTS memory_erasures (
    tenant    TEXT COLLATE "C" NOT NULL,
    principal TEXT COLLATE "C" NOT NULL,
    erased_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, principal)
);
"#;

/// Advisory lock key serializing schema creation ("oba-mem" in ASCII).
const SCHEMA_LOCK: i64 = 0x006f_6261_2d6d_656d;

/// Columns of a turn (prefixed with `t.`).
const TURN_COLUMNS: &str = "t.id, t.tenant, t.principal, t.session, t.space, t.model, t.route, \
     t.created_at, t.user_text, t.assistant_text, t.complete, t.embedding";

/// The PostgreSQL memory store. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db?...`) and creates the
    /// tables if needed. With `schema` (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters)
    /// the schema is created if missing and every pooled connection uses it as its
    /// `search_path`.
    ///
    /// Waiting for a connection is limited to about 2 seconds: an unreachable server
    /// gives [`StoreError::Unavailable`] rather than a hang. A malformed URL or schema
    /// name gives [`StoreError::Invalid`].
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let pool = oba_db::postgres_pool(url, schema, 10)
            .await
            .map_err(|e| match e {
                oba_db::ConnectError::Invalid(m) => StoreError::Invalid(m),
                oba_db::ConnectError::Database(e) => map_err(e),
            })?;
        let mut tx = pool.begin().await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(schema) = schema {
            // Validated above: an identifier, not user text.
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        sqlx::raw_sql(SCHEMA)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(PgStore { pool })
    }

    /// Closes the pool, waiting for the connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn fetch_turns(&self, mut qb: QueryBuilder<'_, Postgres>) -> Result<Vec<Turn>> {
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(turn_from_row).collect()
    }
}

fn push_scope(qb: &mut QueryBuilder<'_, Postgres>, scope: &Scope, filter: &Filter) {
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

fn turn_from_row(row: &PgRow) -> Result<Turn> {
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

fn space_from_row(row: &PgRow) -> Result<Space> {
    Ok(Space {
        tenant: row.try_get("tenant").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        owner: row.try_get("owner").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

/// Whether any of `values` holds a NUL character: PostgreSQL text cannot, so nothing
/// stored matches and the query is skipped (it would be an error).
fn any_nul(values: &[&str]) -> bool {
    values.iter().any(|v| v.contains('\0'))
}

/// Whether a read in `scope` with `filter` cannot match anything (a NUL character).
fn scope_has_nul(scope: &Scope, filter: &Filter) -> bool {
    let (a, b) = match scope {
        Scope::Own { tenant, principal } => (tenant, principal),
        Scope::Space { tenant, space } => (tenant, space),
    };
    any_nul(&[a, b, filter.session.as_deref().unwrap_or("")])
}

/// PostgreSQL text cannot hold NUL characters.
fn check_no_nul(t: &Turn) -> Result<()> {
    let fields = [
        Some(&t.id),
        Some(&t.tenant),
        Some(&t.principal),
        t.session.as_ref(),
        t.space.as_ref(),
        t.model.as_ref(),
        Some(&t.route),
        Some(&t.user),
        Some(&t.assistant),
    ];
    if fields.iter().flatten().any(|s| s.contains('\0')) {
        return Err(StoreError::Invalid(format!(
            "turn {:?}: PostgreSQL cannot store NUL characters",
            t.id
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl MemoryStore for PgStore {
    /// A turn with a NUL character in any text is [`StoreError::Invalid`] (nothing of
    /// the batch is written).
    async fn append(&self, turns: &[Turn]) -> Result<()> {
        if turns.is_empty() {
            return Ok(());
        }
        for t in turns {
            check_no_nul(t)?;
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for t in turns {
            sqlx::query(
                "INSERT INTO memory_turns (id, tenant, principal, session, space, model, route, \
                 created_at, user_text, assistant_text, complete, embedding) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO NOTHING",
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
        if scope_has_nul(scope, filter) {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::new(format!(
            "SELECT {TURN_COLUMNS} FROM memory_turns t WHERE TRUE"
        ));
        push_scope(&mut qb, scope, filter);
        qb.push(" ORDER BY t.created_at DESC, t.id DESC LIMIT ")
            .push_bind(filter.effective_limit() as i64);
        self.fetch_turns(qb).await
    }

    async fn search(&self, scope: &Scope, query: &str, filter: &Filter) -> Result<Vec<Hit>> {
        let words = query_words(query);
        if words.is_empty() || scope_has_nul(scope, filter) {
            return Ok(Vec::new());
        }
        // Only the scope's most recent turns are ranked (bounded cost).
        let mut qb = QueryBuilder::new("SELECT t.*, ts_rank(t.tsv, q.q)::float8 AS score FROM (SELECT * FROM memory_turns t WHERE TRUE");
        push_scope(&mut qb, scope, filter);
        qb.push(" ORDER BY t.created_at DESC LIMIT ")
            .push_bind(crate::SEARCH_WINDOW as i64)
            .push(") t CROSS JOIN (SELECT ");
        for (i, word) in words.into_iter().enumerate() {
            if i > 0 {
                qb.push(" || ");
            }
            qb.push("plainto_tsquery('simple'::regconfig, ")
                .push_bind(word)
                .push(")");
        }
        qb.push(" AS q) q WHERE t.tsv @@ q.q");
        qb.push(" ORDER BY score DESC, t.created_at DESC, t.id DESC LIMIT ")
            .push_bind(filter.effective_limit() as i64);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let score: f64 = row.try_get("score").map_err(map_err)?;
                Ok(Hit {
                    turn: turn_from_row(row)?,
                    score: positive_score(score),
                })
            })
            .collect()
    }

    async fn delete(&self, tenant: &str, principal: &str, id: &str) -> Result<bool> {
        if any_nul(&[tenant, principal, id]) {
            return Ok(false);
        }
        let done = sqlx::query(
            "DELETE FROM memory_turns WHERE id = $1 AND tenant = $2 AND principal = $3",
        )
        .bind(id)
        .bind(tenant)
        .bind(principal)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_session(&self, tenant: &str, principal: &str, session: &str) -> Result<u64> {
        if any_nul(&[tenant, principal, session]) {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM memory_turns WHERE tenant = $1 AND principal = $2 AND session = $3 \
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
        if any_nul(&[tenant, principal]) {
            return Ok(Erased::default());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Lock the principal's spaces first so no member is added to them meanwhile.
        sqlx::query("SELECT name FROM memory_spaces WHERE tenant = $1 AND owner = $2 FOR UPDATE")
            .bind(tenant)
            .bind(principal)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let memberships = sqlx::query(
            "DELETE FROM memory_members WHERE tenant = $1 AND (principal = $2 OR space IN \
             (SELECT name FROM memory_spaces WHERE tenant = $1 AND owner = $2))",
        )
        .bind(tenant)
        .bind(principal)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let turns = sqlx::query(
            "DELETE FROM memory_turns WHERE tenant = $1 AND (principal = $2 OR space IN \
             (SELECT name FROM memory_spaces WHERE tenant = $1 AND owner = $2))",
        )
        .bind(tenant)
        .bind(principal)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let spaces = sqlx::query("DELETE FROM memory_spaces WHERE tenant = $1 AND owner = $2")
            .bind(tenant)
            .bind(principal)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        sqlx::query(
            "INSERT INTO memory_erasures (tenant, principal, erased_at) VALUES ($1, $2, $3) \
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
        if any_nul(&[tenant, principal]) {
            return Ok(None); // no such scope can have been stored
        }
        sqlx::query_scalar(
            "SELECT erased_at FROM memory_erasures WHERE tenant = $1 AND principal = $2",
        )
        .bind(tenant)
        .bind(principal)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn expire(&self, tenant: Option<&str>, before: i64) -> Result<u64> {
        if any_nul(&[tenant.unwrap_or("")]) {
            return Ok(0);
        }
        let done = match tenant {
            Some(tenant) => {
                sqlx::query("DELETE FROM memory_turns WHERE tenant = $1 AND created_at < $2")
                    .bind(tenant)
                    .bind(before)
                    .execute(&self.pool)
                    .await
            }
            None => {
                sqlx::query("DELETE FROM memory_turns WHERE created_at < $1")
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
        if any_nul(&[tenant, owner]) {
            return Err(StoreError::Invalid(
                "PostgreSQL cannot store NUL characters".into(),
            ));
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(
            "INSERT INTO memory_spaces (tenant, name, owner, created_at) VALUES ($1, $2, $3, $4) \
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
        sqlx::query("DELETE FROM memory_turns WHERE tenant = $1 AND space = $2")
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
        if any_nul(&[tenant, name]) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT tenant, name, owner, created_at FROM memory_spaces \
             WHERE tenant = $1 AND name = $2",
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
        if any_nul(&[tenant, space]) {
            return Err(StoreError::Invalid(format!("no such space: {space:?}")));
        }
        if any_nul(&[principal]) {
            return Err(StoreError::Invalid(
                "PostgreSQL cannot store NUL characters".into(),
            ));
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // FOR SHARE: the space cannot be deleted until the member is in.
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM memory_spaces WHERE tenant = $1 AND name = $2 FOR SHARE",
        )
        .bind(tenant)
        .bind(space)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        check_member_target(owner.as_deref(), space, principal)?;
        sqlx::query(
            "INSERT INTO memory_members (tenant, space, principal, access) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, space, principal) DO UPDATE SET access = EXCLUDED.access",
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
        if any_nul(&[tenant, space, principal]) {
            return Ok(false);
        }
        let done = sqlx::query(
            "DELETE FROM memory_members WHERE tenant = $1 AND space = $2 AND principal = $3",
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
        if any_nul(&[tenant, space]) {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM memory_spaces WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(space)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
        let Some(owner) = owner else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT principal, access FROM memory_members WHERE tenant = $1 AND space = $2 \
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
        if any_nul(&[tenant, space, principal]) {
            return Ok(None);
        }
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT s.owner, m.access FROM memory_spaces s LEFT JOIN memory_members m \
             ON m.tenant = s.tenant AND m.space = s.name AND m.principal = $3 \
             WHERE s.tenant = $1 AND s.name = $2",
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
        if any_nul(&[tenant, principal]) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT s.tenant, s.name, s.owner, s.created_at, \
             CASE WHEN s.owner = $2 THEN 'owner' ELSE m.access END AS access \
             FROM memory_spaces s LEFT JOIN memory_members m \
             ON m.tenant = s.tenant AND m.space = s.name AND m.principal = $2 \
             WHERE s.tenant = $1 AND (s.owner = $2 OR m.principal IS NOT NULL) \
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

/// Maps a PostgreSQL error ([`oba_db::is_transient`] → [`StoreError::Unavailable`]).
fn map_err(e: sqlx::Error) -> StoreError {
    map_sqlx_error(e, oba_db::Backend::Postgres)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_invalid() {
        let t = Turn::new("a", "t", "p", "/r", 0).with_text("x\0y", "");
        assert!(matches!(check_no_nul(&t), Err(StoreError::Invalid(_))));
        assert!(check_no_nul(&Turn::new("a", "t", "p", "/r", 0)).is_ok());
    }
}
