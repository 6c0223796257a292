//! Storage: SQLite (embedded default) or PostgreSQL, the same SQL through `sqlx`'s Any
//! driver, migrations applied at start.
//!
//! Every change is audited in its own transaction: the change's statements, then its
//! record appended to the `audit_log` hash chain (oba-audit's table, row format and
//! [`ChainHead`]), then one commit — both land or neither does, and the request answers
//! only after both are durable. Appends are serialised by a mutex in the process and, on
//! PostgreSQL, by a transaction-scoped advisory lock ([`oba_audit::sql::LOCK_POSTGRES`])
//! across processes; on SQLite the pool's single connection serialises transactions. So
//! concurrent requests can never fork the chain: each append reads the stored tail under
//! the lock and chains after it.

use std::collections::BTreeMap;

use oba_audit::sql as audit_sql;
use oba_audit::{now_ms, AuditEvent, AuditRecord, ChainHead, CheckpointSigner, Kind};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

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
    /// The audit trail could not be appended to or read (a record that does not decode,
    /// a checkpoint that could not be signed).
    #[error("audit trail: {0}")]
    Audit(#[from] oba_audit::AuditError),
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

/// One change as the audit trail records it: who, what, on what, with which key, small
/// details and content hashes — never a secret (a token's value, a private key).
///
/// Stored as an oba-audit event: `kind` = `action`, `actor`, `auth_method`, `key_id`,
/// `hashes`, and `details` = `{"target": target, "detail": detail}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Who: `account:<id>/token:<token id>`, `account:<id>/oidc`, or `system`.
    pub actor: String,
    /// How they authenticated: `token` or `oidc` (`None` for the registry itself).
    pub auth_method: Option<String>,
    /// What: `account.create`, `token.create`, `token.revoke`, `agent.create`,
    /// `agent.update`, `agent.delete`, `key.add`, `key.retire`.
    pub action: String,
    /// On what: an account, token or agent id; `<agent id>/<thumbprint>` for a key.
    pub target: String,
    /// The key involved: a key's thumbprint, a token's id.
    pub key_id: Option<String>,
    /// Small details (JSON; `null` when there are none).
    pub detail: serde_json::Value,
    /// Content hashes by name, lowercase hex SHA-256 (`request_body`: the request's body).
    pub hashes: BTreeMap<String, String>,
}

impl Change {
    /// `actor` did `action` on `target`; nothing else recorded yet.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Change {
            actor: actor.into(),
            auth_method: None,
            action: action.into(),
            target: target.into(),
            key_id: None,
            detail: serde_json::Value::Null,
            hashes: BTreeMap::new(),
        }
    }

    /// Sets how the actor authenticated.
    pub fn with_auth_method(mut self, method: impl Into<String>) -> Self {
        self.auth_method = Some(method.into());
        self
    }

    /// Sets the key involved.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Sets the details.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Records the SHA-256 of the request body (the body itself is not kept).
    pub fn with_body(mut self, body: &[u8]) -> Self {
        self.hashes
            .insert("request_body".into(), oba_audit::sha256_hex(body));
        self
    }

    /// The event, at `time_ms`.
    fn event(&self, time_ms: i64) -> AuditEvent {
        let mut e = AuditEvent::new(action_kind(&self.action), time_ms)
            .with_actor(self.actor.clone())
            .with_detail("target", self.target.clone())
            .with_detail("detail", self.detail.clone());
        e.auth_method.clone_from(&self.auth_method);
        e.key_id.clone_from(&self.key_id);
        e.hashes.clone_from(&self.hashes);
        e
    }
}

/// The kind for an action (`checkpoint` is the signer's own: an action of that name,
/// which the registry never uses, is kept as `legacy.checkpoint`).
fn action_kind(action: &str) -> Kind {
    match Kind::parse(action) {
        k if k.is_checkpoint() => Kind::Other("legacy.checkpoint".into()),
        k => k,
    }
}

/// A record of the audit trail as `GET /v1/audit` lists it: the change (`action`,
/// `actor`, `target`, `detail`, as before the chain) and its place in the chain (`prev`,
/// `hash`; `sig_*` on checkpoints, whose `actor` and `target` are `null`).
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Position in the chain: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// When, unix seconds.
    pub at: i64,
    /// When, unix milliseconds (what the record's hash covers).
    pub time_ms: i64,
    /// Who (`account:<id>/token:<id>`, `account:<id>/oidc` or `system`).
    pub actor: Option<String>,
    /// How the actor authenticated (`token`, `oidc`).
    pub auth_method: Option<String>,
    /// What (`agent.create`, `key.add`, ..., `checkpoint`).
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// The key involved (a key's thumbprint, a token's id).
    pub key_id: Option<String>,
    /// Details (JSON). For a checkpoint, `{"dropped": 0}`.
    pub detail: serde_json::Value,
    /// Content hashes (`request_body`), lowercase hex SHA-256.
    pub hashes: BTreeMap<String, String>,
    /// The previous record's hash (64 zeros for seq 1).
    pub prev: String,
    /// This record's hash (SHA-256 of its canonical form, see oba-audit).
    pub hash: String,
    /// Checkpoints: the signature algorithm.
    pub sig_alg: Option<String>,
    /// Checkpoints: the signing key's thumbprint (see `/.well-known/audit-keys.json`).
    pub sig_keyid: Option<String>,
    /// Checkpoints: the signature, base64url.
    pub sig: Option<String>,
}

impl AuditRow {
    fn from_record(r: AuditRecord) -> Result<Self, StoreError> {
        let seq = i64::try_from(r.seq).map_err(|_| {
            oba_audit::AuditError::Corrupt(format!("audit_log seq {} is too large", r.seq))
        })?;
        let mut details = r.event.details;
        let target = match details.get("target") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            _ => None,
        };
        let detail = match (target.is_some(), details.remove("detail")) {
            (true, Some(d)) => d,
            (_, d) => {
                if let Some(d) = d {
                    details.insert("detail".into(), d);
                }
                serde_json::Value::Object(details)
            }
        };
        Ok(AuditRow {
            seq,
            at: r.event.time_ms.div_euclid(1000),
            time_ms: r.event.time_ms,
            actor: r.event.actor,
            auth_method: r.event.auth_method,
            action: r.event.kind.as_str().to_owned(),
            target,
            key_id: r.event.key_id,
            detail,
            hashes: r.event.hashes,
            prev: r.prev,
            hash: r.hash,
            sig_alg: r.sig_alg,
            sig_keyid: r.sig_keyid,
            sig: r.sig,
        })
    }
}

/// How the store signs its audit trail.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Signs the checkpoints.
    pub signer: CheckpointSigner,
    /// A checkpoint after this many records since the last one (at least 1).
    pub checkpoint_every: u64,
}

/// The chain's signer and the head after this process's last committed append (a cache:
/// the stored tail decides; the mutex also serialises appends in this process).
#[derive(Debug)]
struct AuditChain {
    signer: CheckpointSigner,
    checkpoint_every: u64,
    head: tokio::sync::Mutex<Option<ChainHead>>,
}

/// Records appended in an open transaction: once it commits, [`Appended::committed`]
/// makes their head the cached one. Holds the append mutex until then.
struct Appended<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<ChainHead>>,
    head: ChainHead,
    records: usize,
}

impl Appended<'_> {
    fn committed(mut self) {
        *self.guard = Some(self.head);
    }
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    audit: std::sync::Arc<AuditChain>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT NOT NULL, oidc_subject TEXT UNIQUE, created_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), hash TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT);
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted_at BIGINT);
CREATE TABLE IF NOT EXISTS agent_keys (agent_id TEXT NOT NULL REFERENCES agents(id), thumbprint TEXT NOT NULL, jwk TEXT NOT NULL, not_before BIGINT, not_after BIGINT, created_at BIGINT NOT NULL, retired_at BIGINT, PRIMARY KEY (agent_id, thumbprint));
CREATE TABLE IF NOT EXISTS pop_nonces (nonce TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);
";

/// Where the rows of the plain `audit` table of earlier versions go once imported into
/// the chain (kept, renamed; never written again).
const LEGACY_AUDIT_TABLE: &str = "audit_legacy";

impl Store {
    /// Connects (creating a SQLite file if missing) and applies the migrations: the
    /// tables, oba-audit's `audit_log`, and the import of a plain `audit` table left by an
    /// earlier version (see [`Store::import_legacy_audit`]).
    /// URLs: `sqlite://PATH` (or `sqlite::memory:`), `postgres://...`.
    pub async fn connect(url: &str, audit: AuditSettings) -> Result<Self, StoreError> {
        if audit.checkpoint_every == 0 {
            return Err(oba_audit::AuditError::Invalid(
                "audit checkpoint_every must be at least 1".into(),
            )
            .into());
        }
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
        let store = Store {
            pool,
            backend,
            audit: std::sync::Arc::new(AuditChain {
                signer: audit.signer,
                checkpoint_every: audit.checkpoint_every,
                head: tokio::sync::Mutex::new(None),
            }),
        };
        store.migrate().await?;
        store.import_legacy_audit().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        for stmt in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&self.pool).await?;
        }
        let dialect = match self.backend {
            Backend::Sqlite => audit_sql::Dialect::Sqlite,
            Backend::Postgres => audit_sql::Dialect::Postgres,
        };
        sqlx::raw_sql(&audit_sql::create_table(dialect))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Does a table of this name exist (in the current schema, on PostgreSQL)?
    async fn table_exists(&self, conn: &mut AnyConnection, name: &str) -> Result<bool, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Backend::Postgres => "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
        };
        let n: i64 = sqlx::query(sql)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// The cut-over from the plain `audit` table of earlier versions: its rows, in seq
    /// order, are appended to the chain (same `action`, `actor`, `target` and `detail`,
    /// their time, `details.legacy_seq` = their old seq), then one `audit.imported`
    /// record and a signed checkpoint; the old table is renamed `audit_legacy` (or, if
    /// that name is taken by an earlier import, `audit_legacy_<seq>` with the seq its
    /// first row got in the chain) and never written again. One transaction, so a failed
    /// import leaves the old table as it was and the next start tries again. Rows that
    /// were never chained are vouched for only from the import on. Nothing to do when
    /// there is no `audit` table; returns the number of rows imported.
    pub async fn import_legacy_audit(&self) -> Result<usize, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if !self.table_exists(&mut conn, "audit").await? {
            return Ok(0);
        }
        drop(conn);
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Two registries starting at once: the second finds the table gone.
            sqlx::query(audit_sql::LOCK_POSTGRES)
                .execute(&mut *tx)
                .await?;
        }
        if !self.table_exists(&mut tx, "audit").await? {
            return Ok(0);
        }
        let rows =
            sqlx::query("SELECT seq, at, actor, action, target, detail FROM audit ORDER BY seq")
                .fetch_all(&mut *tx)
                .await?;
        let mut events = Vec::with_capacity(rows.len() + 1);
        let mut last_legacy_seq = 0i64;
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            let at: i64 = r.try_get("at")?;
            let action: String = r.try_get("action")?;
            let target: String = r.try_get("target")?;
            let detail: String = r.try_get("detail")?;
            let detail = serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail));
            let key_id = match action.as_str() {
                a if a.starts_with("token.") => Some(target.clone()),
                a if a.starts_with("key.") => target.rsplit('/').next().map(str::to_owned),
                _ => None,
            };
            let mut change =
                Change::new(r.try_get::<String, _>("actor")?, action, target).with_detail(detail);
            change.key_id = key_id;
            let mut event = change.event(at.saturating_mul(1000));
            event.details.insert("legacy_seq".into(), seq.into());
            events.push(event);
            last_legacy_seq = seq;
        }
        let mut kept_as = LEGACY_AUDIT_TABLE.to_owned();
        if self.table_exists(&mut tx, LEGACY_AUDIT_TABLE).await? {
            let first_seq = self.tail_seq(&mut tx).await? + 1;
            kept_as = format!("{LEGACY_AUDIT_TABLE}_{first_seq}");
        }
        events.push(
            AuditEvent::new(Kind::Other("audit.imported".into()), now_ms())
                .with_actor("system")
                .with_detail("from_table", "audit")
                .with_detail("kept_as", kept_as.clone())
                .with_detail("records", rows.len() as u64)
                .with_detail("legacy_last_seq", last_legacy_seq),
        );
        // `kept_as` is one of two fixed names, the second with a number: no quoting needed.
        sqlx::query(&format!("ALTER TABLE audit RENAME TO {kept_as}"))
            .execute(&mut *tx)
            .await?;
        let appended = self.append_audit(&mut tx, events, true).await?;
        tx.commit().await?;
        appended.committed();
        Ok(rows.len())
    }

    /// The seq of the stored tail (0 when the chain is empty).
    async fn tail_seq(&self, conn: &mut AnyConnection) -> Result<i64, StoreError> {
        let n: Option<i64> = sqlx::query("SELECT MAX(seq) AS seq FROM audit_log")
            .fetch_one(&mut *conn)
            .await?
            .try_get("seq")?;
        Ok(n.unwrap_or(0))
    }

    /// Appends `events` to the chain in the caller's transaction (after its change), with
    /// a checkpoint whenever `checkpoint_every` records are unsigned and, with
    /// `force_checkpoint`, at the end if any is. The caller commits, then calls
    /// [`Appended::committed`]; dropping the transaction instead rolls the records back
    /// with the change.
    async fn append_audit(
        &self,
        conn: &mut AnyConnection,
        events: Vec<AuditEvent>,
        force_checkpoint: bool,
    ) -> Result<Appended<'_>, StoreError> {
        let guard = self.audit.head.lock().await;
        if self.backend == Backend::Postgres {
            sqlx::query(audit_sql::LOCK_POSTGRES)
                .execute(&mut *conn)
                .await?;
        }
        let tail = sqlx::query(audit_sql::SELECT_TAIL)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| audit_sql::decode(&row))
            .transpose()?;
        let mut events = events;
        let mut head = match (&tail, guard.as_ref()) {
            (Some(t), Some(cached)) if cached.follows(t) => cached.clone(),
            (_, cached) => {
                self.resume(conn, tail.as_ref(), cached, &mut events)
                    .await?
            }
        };
        let mut records = Vec::with_capacity(events.len() + 1);
        for event in events {
            records.push(head.seal(event)?);
            if head.unsigned() >= self.audit.checkpoint_every {
                records.push(head.checkpoint(&self.audit.signer, 0)?);
            }
        }
        if force_checkpoint && head.unsigned() > 0 {
            records.push(head.checkpoint(&self.audit.signer, 0)?);
        }
        for chunk in records.chunks(audit_sql::MAX_INSERT_ROWS) {
            audit_sql::insert(chunk)?
                .query::<Any>()
                .execute(&mut *conn)
                .await?;
        }
        Ok(Appended {
            guard,
            head,
            records: records.len(),
        })
    }

    /// The head after the stored `tail`, when the cached one does not follow it (at
    /// start, after another registry appended, after a failed commit), counting the
    /// records after the last checkpoint. Says in the log if the tail does not match its
    /// hash, and in the chain (an `audit.truncated` record put before `events`) if records
    /// this process wrote are gone from the end — which the verifier cannot see.
    async fn resume(
        &self,
        conn: &mut AnyConnection,
        tail: Option<&AuditRecord>,
        cached: Option<&ChainHead>,
        events: &mut Vec<AuditEvent>,
    ) -> Result<ChainHead, StoreError> {
        if let Some(t) = tail.filter(|t| !t.hash_matches()) {
            crate::log(format_args!(
                "registry: audit record {} does not match its hash (altered?); \
                 the chain continues after it and `oba audit verify` names it",
                t.seq
            ));
        }
        let last_checkpoint: Option<i64> = sqlx::query(audit_sql::SELECT_LAST_CHECKPOINT)
            .fetch_one(&mut *conn)
            .await?
            .try_get("seq")?;
        let stored_last = tail.map_or(0, |t| t.seq);
        if let Some(cached) = cached.filter(|c| c.last_seq() > stored_last) {
            crate::log(format_args!(
                "registry: the audit trail ends at seq {stored_last}, \
                 but this registry wrote up to seq {}",
                cached.last_seq()
            ));
            let truncated = AuditEvent::new(Kind::Other("audit.truncated".into()), now_ms())
                .with_actor("system")
                .with_detail("expected_last_seq", cached.last_seq())
                .with_detail("found_last_seq", stored_last);
            events.insert(0, truncated);
        }
        Ok(ChainHead::resume(
            tail,
            last_checkpoint.and_then(|s| u64::try_from(s).ok()),
        ))
    }

    /// Commits `tx` with `change` appended to the audit trail.
    async fn commit_audited(
        &self,
        mut tx: Transaction<'_, Any>,
        change: &Change,
    ) -> Result<(), StoreError> {
        let appended = self
            .append_audit(&mut tx, vec![change.event(now_ms())], false)
            .await?;
        tx.commit().await?;
        appended.committed();
        Ok(())
    }

    /// Signs the chain now if any record follows the last checkpoint (the registry calls
    /// it on a timer and at shutdown). True when a checkpoint was written.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let appended = self.append_audit(&mut tx, Vec::new(), true).await?;
        if appended.records == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        appended.committed();
        Ok(true)
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

    /// Creates an account, audited.
    pub async fn create_account(
        &self,
        id: &str,
        name: &str,
        oidc_subject: Option<&str>,
        now: i64,
        change: &Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::insert_account(&mut tx, id, name, oidc_subject, now).await?;
        self.commit_audited(tx, change).await
    }

    async fn insert_account(
        conn: &mut AnyConnection,
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
        .execute(&mut *conn)
        .await
        .map_err(conflict)?;
        Ok(())
    }

    /// The first start: the admin account and its token, audited as `change`, in one
    /// transaction.
    pub async fn bootstrap_admin(
        &self,
        account: &str,
        token: &TokenRow,
        hash: &str,
        change: &Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::insert_account(&mut tx, account, "admin", None, token.created_at).await?;
        Self::insert_token(&mut tx, token, hash).await?;
        self.commit_audited(tx, change).await
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

    /// Stores a token (by its hash), audited.
    pub async fn create_token(
        &self,
        row: &TokenRow,
        hash: &str,
        change: &Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::insert_token(&mut tx, row, hash).await?;
        self.commit_audited(tx, change).await
    }

    async fn insert_token(
        conn: &mut AnyConnection,
        row: &TokenRow,
        hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tokens (id, account_id, hash, scopes, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)")
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(hash)
            .bind(&row.scopes)
            .bind(row.created_at)
            .bind(row.expires_at)
            .execute(&mut *conn)
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

    /// Revokes a token (of `account`, unless `None`: any), audited. True if a token was
    /// revoked (nothing is recorded otherwise).
    pub async fn revoke_token(
        &self,
        id: &str,
        account: Option<&str>,
        now: i64,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = match account {
            Some(a) => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL").bind(now).bind(id).bind(a).execute(&mut *tx).await?,
            None => sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL").bind(now).bind(id).execute(&mut *tx).await?,
        };
        self.finish_update(tx, r.rows_affected() == 1, change).await
    }

    /// Commits with `change` audited when `changed`; otherwise rolls back (nothing
    /// changed, nothing recorded).
    async fn finish_update(
        &self,
        tx: Transaction<'_, Any>,
        changed: bool,
        change: &Change,
    ) -> Result<bool, StoreError> {
        if changed {
            self.commit_audited(tx, change).await?;
        }
        Ok(changed)
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

    /// Creates an agent, audited.
    pub async fn create_agent(&self, row: &AgentRow, change: &Change) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO agents (id, account_id, doc, created_at, updated_at, deleted_at) VALUES ($1, $2, $3, $4, $5, NULL)")
            .bind(&row.id)
            .bind(&row.account_id)
            .bind(row.doc.to_string())
            .bind(row.created_at)
            .bind(row.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(conflict)?;
        self.commit_audited(tx, change).await
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

    /// Replaces an agent's metadata, audited. True if the agent exists.
    pub async fn update_agent(
        &self,
        id: &str,
        doc: &serde_json::Value,
        now: i64,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE agents SET doc = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
        )
        .bind(doc.to_string())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.finish_update(tx, r.rows_affected() == 1, change).await
    }

    /// Deletes an agent (its keys stop being published; history is kept), audited. True
    /// if it existed.
    pub async fn delete_agent(
        &self,
        id: &str,
        now: i64,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r =
            sqlx::query("UPDATE agents SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        self.finish_update(tx, r.rows_affected() == 1, change).await
    }

    /// Adds a key; a key already added to this agent (even retired) is a conflict, and so
    /// is a key beyond `max_active` active keys (a directory client refuses larger sets, so
    /// one key too many would make the whole agent unverifiable). Atomic, audited in the
    /// same transaction: on PostgreSQL the agent row is locked; SQLite runs one writer at a
    /// time.
    pub async fn add_key(
        &self,
        agent: &str,
        key: &KeyRow,
        max_active: i64,
        now: i64,
        change: &Change,
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
        self.commit_audited(tx, change).await
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

    /// Retires a key, audited. True if it was active.
    pub async fn retire_key(
        &self,
        agent: &str,
        thumbprint: &str,
        now: i64,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE agent_keys SET retired_at = $1 WHERE agent_id = $2 AND thumbprint = $3 AND retired_at IS NULL")
            .bind(now)
            .bind(agent)
            .bind(thumbprint)
            .execute(&mut *tx)
            .await?;
        self.finish_update(tx, r.rows_affected() == 1, change).await
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

    /// Audit records after `after_seq`, at most `limit`, oldest first (checkpoints
    /// included).
    pub async fn list_audit(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            audit_sql::COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| AuditRow::from_record(audit_sql::decode(r)?))
            .collect()
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
