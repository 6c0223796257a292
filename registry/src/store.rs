//! Storage: SQLite (embedded default) or PostgreSQL, the same SQL through `sqlx`'s Any
//! driver, migrations applied at start.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with this key exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The agent already has the most active keys allowed.
    #[error("an agent has at most {0} active keys")]
    TooManyKeys(i64),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// An API token as stored (the token itself is never stored, only its SHA-256).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// Token id (not secret).
    pub id: String,
    /// Owner.
    pub account_id: String,
    /// Space-separated scopes.
    pub scopes: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry, if any.
    pub expires_at: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// An agent as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRow {
    /// Agent id (a DNS label).
    pub id: String,
    /// Owner.
    pub account_id: String,
    /// The metadata document (JSON).
    pub doc: serde_json::Value,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// A key as stored.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    /// RFC 7638 thumbprint (= `kid`).
    pub thumbprint: String,
    /// The public JWK.
    pub jwk: serde_json::Value,
    /// Valid from.
    pub not_before: Option<i64>,
    /// Valid until.
    pub not_after: Option<i64>,
    /// Added at.
    pub created_at: i64,
    /// Retired at (no longer published).
    pub retired_at: Option<i64>,
}

/// An audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Sequence number (increasing).
    pub seq: i64,
    /// When.
    pub at: i64,
    /// Who (`account:<id>/token:<id>` or `system`).
    pub actor: String,
    /// What (`agent.create`, `key.add`, ...).
    pub action: String,
    /// On what.
    pub target: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, oidc_subject TEXT UNIQUE, created_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), hash TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT);
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted_at BIGINT);
CREATE TABLE IF NOT EXISTS agent_keys (agent_id TEXT NOT NULL REFERENCES agents(id), thumbprint TEXT NOT NULL, jwk TEXT NOT NULL, not_before BIGINT, not_after BIGINT, created_at BIGINT NOT NULL, retired_at BIGINT, PRIMARY KEY (agent_id, thumbprint));
CREATE TABLE IF NOT EXISTS pop_nonces (nonce TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);
";

impl Store {
    /// Connects (creating a SQLite file if missing) and applies the migrations.
    /// URLs: `sqlite://PATH` (or `sqlite::memory:`), `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .connect(&url)
            .await?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        for stmt in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&self.pool).await?;
        }
        let audit = match self.backend {
            Backend::Sqlite => "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)",
            Backend::Postgres => "CREATE TABLE IF NOT EXISTS audit (seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)",
        };
        sqlx::query(audit).execute(&self.pool).await?;
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of accounts.
    pub async fn account_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM accounts")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Creates an account.
    pub async fn create_account(
        &self,
        id: &str,
        name: &str,
        oidc_subject: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, name, oidc_subject, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(oidc_subject)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(conflict)?;
        Ok(())
    }

    /// The account mapped to an OIDC subject (`issuer#sub`).
    pub async fn account_by_subject(&self, subject: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT id FROM accounts WHERE oidc_subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Does the account exist?
    pub async fn account_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT id FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Stores a token (by its hash).
    pub async fn create_token(&self, row: &TokenRow, hash: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tokens (id, account_id, hash, scopes, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)")
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(hash)
            .bind(&row.scopes)
            .bind(row.created_at)
            .bind(row.expires_at)
            .execute(&self.pool)
            .await
            .map_err(conflict)?;
        Ok(())
    }

    fn token_row(r: &sqlx::any::AnyRow) -> Result<TokenRow, sqlx::Error> {
        Ok(TokenRow {
            id: r.try_get("id")?,
            account_id: r.try_get("account_id")?,
            scopes: r.try_get("scopes")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }

    /// The token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query("SELECT id, account_id, scopes, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::token_row).transpose()?)
    }

    /// Tokens of an account (or all, for `None`).
    pub async fn list_tokens(&self, account: Option<&str>) -> Result<Vec<TokenRow>, StoreError> {
        let rows = match account {
            Some(a) => sqlx::query("SELECT id, account_id, scopes, created_at, expires_at, revoked_at FROM tokens WHERE account_id = $1 ORDER BY created_at, id").bind(a).fetch_all(&self.pool).await?,
            None => sqlx::query("SELECT id, account_id, scopes, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id").fetch_all(&self.pool).await?,
        };
        Ok(rows.iter().map(Self::token_row).collect::<Result<_, _>>()?)
    }

    /// Revokes a token (of `account`, unless `None`: any). True if a token was revoked.
    pub async fn revoke_token(
        &self,
        id: &str,
        account: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = match account {
            Some(a) => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL").bind(now).bind(id).bind(a).execute(&self.pool).await?,
            None => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL").bind(now).bind(id).execute(&self.pool).await?,
        };
        Ok(r.rows_affected() == 1)
    }

    fn agent_row(r: &sqlx::any::AnyRow) -> Result<AgentRow, sqlx::Error> {
        let doc: String = r.try_get("doc")?;
        Ok(AgentRow {
            id: r.try_get("id")?,
            account_id: r.try_get("account_id")?,
            doc: serde_json::from_str(&doc).unwrap_or_default(),
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    /// Creates an agent.
    pub async fn create_agent(&self, row: &AgentRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO agents (id, account_id, doc, created_at, updated_at, deleted_at) VALUES ($1, $2, $3, $4, $5, NULL)")
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(row.doc.to_string())
            .bind(row.created_at)
            .bind(row.updated_at)
            .execute(&self.pool)
            .await
            .map_err(conflict)?;
        Ok(())
    }

    /// An agent that is not deleted.
    pub async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let row = sqlx::query("SELECT id, account_id, doc, created_at, updated_at FROM agents WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::agent_row).transpose()?)
    }

    /// Agents of an account (or all, for `None`), not deleted.
    pub async fn list_agents(&self, account: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        let rows = match account {
            Some(a) => sqlx::query("SELECT id, account_id, doc, created_at, updated_at FROM agents WHERE account_id = $1 AND deleted_at IS NULL ORDER BY created_at, id").bind(a).fetch_all(&self.pool).await?,
            None => sqlx::query("SELECT id, account_id, doc, created_at, updated_at FROM agents WHERE deleted_at IS NULL ORDER BY created_at, id").fetch_all(&self.pool).await?,
        };
        Ok(rows.iter().map(Self::agent_row).collect::<Result<_, _>>()?)
    }

    /// Replaces an agent's metadata.
    pub async fn update_agent(
        &self,
        id: &str,
        doc: &serde_json::Value,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE agents SET doc = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
        )
        .bind(doc.to_string())
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes an agent (its keys stop being published; history is kept).
    pub async fn delete_agent(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE agents SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Adds a key; a key already added to this agent (even retired) is a conflict, and so
    /// is a key beyond `max_active` active keys (a directory client refuses larger sets, so
    /// one key too many would make the whole agent unverifiable). Atomic: on PostgreSQL
    /// the agent row is locked; SQLite runs one writer at a time.
    pub async fn add_key(
        &self,
        agent: &str,
        key: &KeyRow,
        max_active: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM agents WHERE id = $1 FOR UPDATE")
                .bind(agent)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let active: i64 = sqlx::query("SELECT COUNT(*) AS n FROM agent_keys WHERE agent_id = $1 AND retired_at IS NULL AND (not_after IS NULL OR not_after > $2)")
            .bind(agent)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if active >= max_active {
            return Err(StoreError::TooManyKeys(max_active));
        }
        sqlx::query("INSERT INTO agent_keys (agent_id, thumbprint, jwk, not_before, not_after, created_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)")
            .bind(agent)
            .bind(&key.thumbprint)
            .bind(key.jwk.to_string())
            .bind(key.not_before)
            .bind(key.not_after)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(conflict)?;
        tx.commit().await?;
        Ok(())
    }

    fn key_row(r: &sqlx::any::AnyRow) -> Result<KeyRow, sqlx::Error> {
        let jwk: String = r.try_get("jwk")?;
        Ok(KeyRow {
            thumbprint: r.try_get("thumbprint")?,
            jwk: serde_json::from_str(&jwk).unwrap_or_default(),
            not_before: r.try_get("not_before")?,
            not_after: r.try_get("not_after")?,
            created_at: r.try_get("created_at")?,
            retired_at: r.try_get("retired_at")?,
        })
    }

    /// All keys of an agent, retired ones included (the history).
    pub async fn keys(&self, agent: &str) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query("SELECT thumbprint, jwk, not_before, not_after, created_at, retired_at FROM agent_keys WHERE agent_id = $1 ORDER BY created_at, thumbprint")
            .bind(agent)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Self::key_row).collect::<Result<_, _>>()?)
    }

    /// Retires a key. True if it was active.
    pub async fn retire_key(
        &self,
        agent: &str,
        thumbprint: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE agent_keys SET retired_at = $1 WHERE agent_id = $2 AND thumbprint = $3 AND retired_at IS NULL")
            .bind(now)
            .bind(agent)
            .bind(thumbprint)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a proof-of-possession nonce; false if it was already used (replay).
    pub async fn use_nonce(
        &self,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM pop_nonces WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        match sqlx::query("INSERT INTO pop_nonces (nonce, expires_at) VALUES ($1, $2)")
            .bind(nonce)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(conflict)
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Appends an audit record.
    pub async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit records after `after_seq`, at most `limit`, oldest first.
    pub async fn list_audit(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query("SELECT seq, at, actor, action, target, detail FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRow {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

fn conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d)
            if d.is_unique_violation()
                || d.code().as_deref() == Some("1555")
                || d.code().as_deref() == Some("2067") =>
        {
            StoreError::Conflict(d.message().to_owned())
        }
        _ => StoreError::Db(e),
    }
}
