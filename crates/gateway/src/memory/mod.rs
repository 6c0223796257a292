//! Conversation memory outside the model, scoped to the verified [`Principal`].
//!
//! * **Write**: after a successful chat call (`/v1/chat/completions`, `/v1/responses`,
//!   `/api/chat`, `/api/generate`) the turn — the new user message(s) and the reply,
//!   reassembled from a stream as its chunks pass, never delaying them — is queued for
//!   the store under (tenant, principal, session) or a shared space ([`writer`]).
//! * **Recall**: the most relevant earlier turns, searched in the principal's own memory
//!   (or a space it may read), injected as a system message within a token budget
//!   ([`recall`]).
//! * **Boundaries**: the scope always comes from the verified principal. A request names
//!   a space (`X-Attach-Memory-Space`) only if its principal is a member with the right
//!   it needs; a session label (`X-Attach-Session`) is namespaced under the principal.
//! * **Per request**: `X-Attach-Memory: off | write | recall | recall-session`, within
//!   what the policy allows (`memory` on a rule, `memory.max_mode`).
//!
//! The memory API (`/attach/v1/memory...`) is in [`api`].

pub mod api;
pub mod embed;
pub mod recall;
pub mod writer;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use oba_memory::{Filter, MemoryStore, Right, Scope, Turn};

use crate::chat::ChatRoute;
use crate::config::{MemoryConfig, MemoryMode};
use crate::identity::Principal;

/// The memory stage of the gateway.
pub struct Memory {
    /// Settings.
    pub config: MemoryConfig,
    /// The store.
    pub store: Arc<dyn MemoryStore>,
    /// The write path.
    pub writer: crate::outbox::Outbox<Turn>,
    /// Vector recall, when an embedding model is configured.
    pub embedder: Option<Arc<embed::Embedder>>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memory")
    }
}

/// A refusal: status, code, message.
pub type Refusal = (StatusCode, &'static str, String);

/// What memory does for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The chat route.
    pub route: ChatRoute,
    /// Recall earlier turns.
    pub recall: bool,
    /// Recall only from this session.
    pub session_only: bool,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// Principal id.
    pub principal: String,
    /// Namespaced session.
    pub session: Option<String>,
    /// The shared space recalled from, checked for the right the plan needs.
    pub space: Option<String>,
    /// The turn is written into `space` (the principal may write there).
    pub write_space: bool,
}

impl Plan {
    /// Where recall reads from.
    pub fn scope(&self) -> Scope {
        match &self.space {
            Some(space) => Scope::Space {
                tenant: self.tenant.clone(),
                space: space.clone(),
            },
            None => Scope::Own {
                tenant: self.tenant.clone(),
                principal: self.principal.clone(),
            },
        }
    }
}

/// The session label of a request, namespaced under the principal (`None` when absent
/// or not a valid label).
pub fn session_of(principal: &Principal, headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-attach-session")
        .and_then(|v| v.to_str().ok())
        .and_then(|label| namespaced_session(principal, label))
}

/// `principal/label` when `label` is 1–64 characters of `[A-Za-z0-9._-]`.
pub fn namespaced_session(principal: &Principal, label: &str) -> Option<String> {
    valid_label(label).then(|| format!("{}/{label}", principal.id))
}

/// 1–64 characters of `[A-Za-z0-9._-]` (session labels, space names).
pub fn valid_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) use oba_audit::now_ms;

impl Memory {
    /// Opens the store named in `config` and starts the writer.
    pub async fn open(
        config: MemoryConfig,
        embedder: Option<embed::Embedder>,
    ) -> Result<(Memory, tokio::task::JoinHandle<()>), String> {
        let store: Arc<dyn MemoryStore> =
            if let Some(path) = crate::outbox::sqlite_file(&config.store) {
                Arc::new(
                    oba_memory::sqlite::SqliteStore::open(std::path::Path::new(path))
                        .await
                        .map_err(|e| e.to_string())?,
                )
            } else if config.store.starts_with("sqlite:") {
                Arc::new(
                    oba_memory::sqlite::SqliteStore::in_memory()
                        .await
                        .map_err(|e| e.to_string())?,
                )
            } else if config.store.starts_with("postgres://")
                || config.store.starts_with("postgresql://")
            {
                Arc::new(
                    oba_memory::postgres::PgStore::connect(
                        &config.store,
                        config.postgres_schema.as_deref(),
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                )
            } else {
                return Err(
                    "memory.store must be sqlite:PATH, sqlite::memory: or a postgres:// URL".into(),
                );
            };
        Ok(Self::with_store(config, store, embedder))
    }

    /// Uses `store` (any [`MemoryStore`], e.g. a third-party backend).
    pub fn with_store(
        config: MemoryConfig,
        store: Arc<dyn MemoryStore>,
        embedder: Option<embed::Embedder>,
    ) -> (Memory, tokio::task::JoinHandle<()>) {
        let embedder = embedder.map(Arc::new);
        let journal = config.journal.clone().unwrap_or_else(|| {
            crate::outbox::default_journal(&config.store, "attach-memory.journal")
        });
        let sink = writer::TurnSink {
            store: store.clone(),
            embedder: embedder.clone(),
        };
        let (writer, task) =
            crate::outbox::Outbox::start(Arc::new(sink), journal, config.queue_capacity);
        (
            Memory {
                config,
                store,
                writer,
                embedder,
            },
            task,
        )
    }

    /// Retention for `tenant`, days (0 = forever).
    pub fn retention_days(&self, tenant: &str) -> u32 {
        self.config
            .tenant_retention_days
            .get(tenant)
            .copied()
            .unwrap_or(self.config.retention_days)
    }

    /// The oldest time still visible for `tenant` (unix ms), when it has a retention.
    pub fn visible_since(&self, tenant: &str, now: i64) -> Option<i64> {
        match self.retention_days(tenant) {
            0 => None,
            d => Some(now.saturating_sub(i64::from(d) * 86_400_000)),
        }
    }

    /// Deletes the turns past their tenant's retention (reads hide them already).
    pub async fn purge(&self, now: i64) {
        let tenants = match self.store.tenants().await {
            Ok(t) => t,
            Err(e) => return crate::log(format_args!("memory: retention skipped: {e}")),
        };
        for tenant in tenants {
            if let Some(before) = self.visible_since(&tenant, now) {
                match self.store.expire(Some(&tenant), before).await {
                    Ok(0) => {}
                    Ok(n) => crate::log(format_args!(
                        "memory: {n} turns of tenant {tenant:?} expired"
                    )),
                    Err(e) => crate::log(format_args!("memory: retention for {tenant:?}: {e}")),
                }
            }
        }
    }

    /// Decides what memory does for this request (`None`: nothing).
    pub async fn plan(
        &self,
        principal: &Principal,
        path: &str,
        headers: &HeaderMap,
        cap: MemoryMode,
    ) -> Result<Option<Plan>, Refusal> {
        let Some(route) = ChatRoute::of(path) else {
            return Ok(None);
        };
        let (mode, session_only) = match headers.get("x-attach-memory") {
            None => {
                let default = self
                    .config
                    .route_modes
                    .get(path)
                    .copied()
                    .unwrap_or(self.config.default_mode);
                (default.min(cap), false)
            }
            Some(v) => {
                let (mode, session_only) = match v.to_str().unwrap_or_default().trim() {
                    "off" => (MemoryMode::Off, false),
                    "write" => (MemoryMode::Write, false),
                    "recall" => (MemoryMode::Recall, false),
                    "recall-session" => (MemoryMode::Recall, true),
                    _ => {
                        return Err((
                            StatusCode::BAD_REQUEST,
                            "invalid_memory_mode",
                            "X-Attach-Memory must be off, write, recall or recall-session".into(),
                        ))
                    }
                };
                if mode > cap {
                    return Err((
                        StatusCode::FORBIDDEN,
                        "memory_not_allowed",
                        "the policy does not allow this memory mode here".into(),
                    ));
                }
                (mode, session_only)
            }
        };
        if mode == MemoryMode::Off {
            return Ok(None);
        }
        let tenant = principal.tenant.clone().unwrap_or_default();
        // A space: recalling needs Read; the turn goes into the space with Write, else
        // (a reader recalling) into the principal's own memory. Writing only needs Write.
        let (space, write_space) = match headers.get("x-attach-memory-space") {
            None => (None, false),
            Some(v) => {
                let name = v.to_str().unwrap_or_default();
                let need = if mode == MemoryMode::Recall {
                    Right::Read
                } else {
                    Right::Write
                };
                let right = self.require(&tenant, name, &principal.id, need).await?;
                (Some(name.to_owned()), right >= Right::Write)
            }
        };
        Ok(Some(Plan {
            route,
            recall: mode == MemoryMode::Recall,
            session_only,
            tenant,
            principal: principal.id.clone(),
            session: session_of(principal, headers),
            space,
            write_space,
        }))
    }

    /// Checks `principal` has at least `need` in space `name` and returns its right; the
    /// same refusal whether the space does not exist or the principal is not a member.
    pub async fn require(
        &self,
        tenant: &str,
        name: &str,
        principal: &str,
        need: Right,
    ) -> Result<Right, Refusal> {
        let forbidden = || {
            (
                StatusCode::FORBIDDEN,
                "space_forbidden",
                "no such space, or this principal may not use it so".to_owned(),
            )
        };
        if !valid_label(name) {
            return Err(forbidden());
        }
        match self.store.right_of(tenant, name, principal).await {
            Ok(Some(r)) if r >= need => Ok(r),
            Ok(_) => Err(forbidden()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The recalled system message for `query` (`None`: nothing relevant, or the store
    /// did not answer — recall never fails a request).
    pub async fn recall(&self, plan: &Plan, query: &str) -> Option<String> {
        // Only this session, and the request names none: nothing to recall.
        if plan.session_only && plan.session.is_none() {
            return None;
        }
        let filter = Filter {
            session: if plan.session_only {
                plan.session.clone()
            } else {
                None
            },
            since: self.visible_since(&plan.tenant, now_ms()),
            until: None,
            limit: self.config.recall_limit,
        };
        if let Some(e) = &self.embedder {
            match self.vector_recall(e, plan, query, &filter).await {
                Ok(turns) => {
                    return recall::memory_message(&turns, self.config.recall_budget_tokens)
                }
                Err(err) => crate::log(format_args!(
                    "memory: vector recall failed, full-text instead: {err}"
                )),
            }
        }
        let hits = match self.store.search(&plan.scope(), query, &filter).await {
            Ok(h) => h,
            Err(e) => {
                crate::log(format_args!("memory: recall skipped: {e}"));
                return None;
            }
        };
        let turns: Vec<Turn> = hits.into_iter().map(|h| h.turn).collect();
        recall::memory_message(&turns, self.config.recall_budget_tokens)
    }

    /// The best `filter.limit` of the latest turns in scope by similarity to `query`
    /// and recency.
    async fn vector_recall(
        &self,
        embedder: &embed::Embedder,
        plan: &Plan,
        query: &str,
        filter: &Filter,
    ) -> Result<Vec<Turn>, String> {
        let q = embedder
            .embed(&[query.to_owned()])
            .await?
            .pop()
            .ok_or("no query embedding")?;
        let candidates = Filter {
            limit: 500,
            ..filter.clone()
        };
        let now = now_ms();
        let mut scored: Vec<(f64, Turn)> = self
            .store
            .list(&plan.scope(), &candidates)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|t| {
                let sim = oba_memory::cosine(&q, t.embedding.as_deref()?);
                let s = embed::score(sim, now - t.created_at, self.config.recency_half_life_days);
                Some((s, t))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(filter.effective_limit())
            .map(|(_, t)| t)
            .collect())
    }
}

/// A store error as a refusal (503, fail closed).
pub fn unavailable(e: oba_memory::StoreError) -> Refusal {
    crate::log(format_args!("memory: {e}"));
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "memory_unavailable",
        "the memory store is not answering".into(),
    )
}
