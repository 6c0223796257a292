//! # oba-memory
//!
//! Conversation memory outside the model, scoped to the identity a gateway verified.
//! A [`Turn`] (the new user message(s) of a chat call and the assistant's reply) is
//! written under a tenant, a principal, an optional session and an optional shared
//! [`Space`]; it is read back only through a [`Scope`], which the caller builds from the
//! verified principal (never from the request body or client headers).
//!
//! [`MemoryStore`] is the plug-in point: [`sqlite::SqliteStore`] (embedded default,
//! FTS5 ranking) and [`postgres::PgStore`] (PostgreSQL full-text search) implement it
//! with the same behaviour, and [`conformance`] is the suite that proves it — a third
//! party runs it against its own backend without touching the gateway.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use oba_memory::{Filter, MemoryStore, Scope, Turn};
//! let store = oba_memory::sqlite::SqliteStore::in_memory().await.unwrap();
//! let turn = Turn::new("req-1", "acme", "user:alice", "/v1/chat/completions", 1_700_000_000_000)
//!     .with_text("What is the capital of France?", "Paris.");
//! store.append(&[turn]).await.unwrap();
//! let mine = Scope::Own { tenant: "acme".into(), principal: "user:alice".into() };
//! let hits = store.search(&mine, "capital France", &Filter::default()).await.unwrap();
//! assert_eq!(hits[0].turn.assistant, "Paris.");
//! // Another principal sees nothing.
//! let bob = Scope::Own { tenant: "acme".into(), principal: "user:bob".into() };
//! assert!(store.search(&bob, "capital France", &Filter::default()).await.unwrap().is_empty());
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use serde::{Deserialize, Serialize};

pub mod conformance;
pub mod postgres;
pub mod sqlite;

/// The most rows a list or search returns, whatever the caller asks.
pub const MAX_LIMIT: usize = 1000;

/// A search ranks the most recent turns of its scope (after the filter), at most this
/// many: its cost is bounded however much a principal has said before.
pub const SEARCH_WINDOW: usize = 2000;

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Unique id (the gateway's request id); writes are idempotent by it.
    pub id: String,
    /// Tenant (`""` when the principal has none).
    pub tenant: String,
    /// The principal that wrote it (its stable id).
    pub principal: String,
    /// Session label, already namespaced by the caller.
    pub session: Option<String>,
    /// The shared space it was written into, if any.
    pub space: Option<String>,
    /// Model named in the request.
    pub model: Option<String>,
    /// The route it came through (`/v1/chat/completions`, `/api/chat`, ...).
    pub route: String,
    /// Unix time, milliseconds.
    pub created_at: i64,
    /// The new user message(s).
    pub user: String,
    /// The assistant's reply (reassembled when streamed).
    pub assistant: String,
    /// `false` when the reply stream ended early (client gone, upstream broke).
    pub complete: bool,
    /// Embedding of `user` + `assistant`, when an embedding model is configured.
    pub embedding: Option<Vec<f32>>,
}

impl Turn {
    /// A complete turn with empty text, no session, space, model or embedding.
    pub fn new(id: &str, tenant: &str, principal: &str, route: &str, created_at: i64) -> Self {
        Turn {
            id: id.into(),
            tenant: tenant.into(),
            principal: principal.into(),
            session: None,
            space: None,
            model: None,
            route: route.into(),
            created_at,
            user: String::new(),
            assistant: String::new(),
            complete: true,
            embedding: None,
        }
    }

    /// Sets the user and assistant text.
    pub fn with_text(mut self, user: &str, assistant: &str) -> Self {
        self.user = user.into();
        self.assistant = assistant.into();
        self
    }
}

/// Whose memory a read covers. Built by the caller from the verified principal; a
/// [`Scope::Space`] only after checking membership ([`MemoryStore::right_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The turns `principal` wrote outside any space.
    Own {
        /// Tenant.
        tenant: String,
        /// Principal id.
        principal: String,
    },
    /// Every turn written into `space` of `tenant`.
    Space {
        /// Tenant.
        tenant: String,
        /// Space name.
        space: String,
    },
}

/// Narrows a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this session.
    pub session: Option<String>,
    /// Only turns created at or after (unix ms).
    pub since: Option<i64>,
    /// Only turns created before (unix ms).
    pub until: Option<i64>,
    /// At most this many (0 = 100; capped at [`MAX_LIMIT`]).
    pub limit: usize,
}

impl Filter {
    /// The effective limit.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(MAX_LIMIT),
        }
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The turn.
    pub turn: Turn,
    /// Relevance, higher is better (backend-specific scale, > 0).
    pub score: f64,
}

/// Rights in a space. `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Read and recall.
    Read,
    /// Read, recall and write turns into it.
    Write,
    /// Write, and manage members (the creator).
    Owner,
}

impl Right {
    /// `read`, `write` or `owner`.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Owner => "owner",
        }
    }
    /// Parses `read`, `write` or `owner`.
    pub fn parse(s: &str) -> Option<Right> {
        match s {
            "read" => Some(Right::Read),
            "write" => Some(Right::Write),
            "owner" => Some(Right::Owner),
            _ => None,
        }
    }
}

/// A tenant's shared space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Tenant.
    pub tenant: String,
    /// Name, unique within the tenant.
    pub name: String,
    /// The principal that created it (it has [`Right::Owner`]).
    pub owner: String,
    /// Unix ms.
    pub created_at: i64,
}

/// A space member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Principal id.
    pub principal: String,
    /// Its right.
    pub right: Right,
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    /// Turns deleted.
    pub turns: u64,
    /// Spaces deleted (owned by the principal, with their turns and members).
    pub spaces: u64,
    /// Memberships removed.
    pub memberships: u64,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer (retry later; writes go to a journal).
    #[error("memory store unavailable: {0}")]
    Unavailable(String),
    /// The thing already exists (a space name).
    #[error("already exists: {0}")]
    Conflict(String),
    /// Bad input (the message says which).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything else the backend reported.
    #[error("memory store: {0}")]
    Backend(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A memory backend. Every read is limited to one [`Scope`]; every delete names the
/// tenant and principal it acts for and touches nothing else.
#[async_trait::async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Appends turns; a turn whose id exists is ignored (idempotent).
    async fn append(&self, turns: &[Turn]) -> Result<()>;
    /// Turns in `scope`, newest first.
    async fn list(&self, scope: &Scope, filter: &Filter) -> Result<Vec<Turn>>;
    /// Full-text search in `scope`, best first, among its [`SEARCH_WINDOW`] most recent
    /// turns; words are matched (any of them), never interpreted as query syntax.
    async fn search(&self, scope: &Scope, query: &str, filter: &Filter) -> Result<Vec<Hit>>;
    /// Deletes turn `id` if `principal` of `tenant` wrote it.
    async fn delete(&self, tenant: &str, principal: &str, id: &str) -> Result<bool>;
    /// Deletes the turns `principal` wrote in `session` (outside spaces); returns how many.
    async fn delete_session(&self, tenant: &str, principal: &str, session: &str) -> Result<u64>;
    /// Erases everything `principal` owns: the turns it wrote (spaces included), the
    /// spaces it owns (with their turns and members) and its memberships; and records
    /// when ([`MemoryStore::erased_at`]).
    async fn erase(&self, tenant: &str, principal: &str) -> Result<Erased>;
    /// When `principal` of `tenant` last erased everything ([`MemoryStore::erase`]),
    /// unix ms: a turn created before that and written after (from a queue or a journal)
    /// must be dropped by the writer.
    async fn erased_at(&self, tenant: &str, principal: &str) -> Result<Option<i64>>;
    /// Deletes the turns of `tenant` (every tenant when `None`) created before `before`
    /// (unix ms); returns how many.
    async fn expire(&self, tenant: Option<&str>, before: i64) -> Result<u64>;
    /// Creates a space owned by `owner`; [`StoreError::Conflict`] if the name is taken.
    async fn create_space(&self, tenant: &str, name: &str, owner: &str, now: i64) -> Result<Space>;
    /// The space, if it exists.
    async fn space(&self, tenant: &str, name: &str) -> Result<Option<Space>>;
    /// Adds or updates a member (`right` is `Read` or `Write`; the owner is implicit).
    async fn set_member(
        &self,
        tenant: &str,
        space: &str,
        principal: &str,
        right: Right,
    ) -> Result<()>;
    /// Removes a member; `false` if it was not one.
    async fn remove_member(&self, tenant: &str, space: &str, principal: &str) -> Result<bool>;
    /// The members (the owner first, as [`Right::Owner`]).
    async fn members(&self, tenant: &str, space: &str) -> Result<Vec<Member>>;
    /// `principal`'s right in the space: `Owner` for its creator, the member right, or
    /// `None` (also when the space does not exist).
    async fn right_of(&self, tenant: &str, space: &str, principal: &str) -> Result<Option<Right>>;
    /// The spaces `principal` owns or belongs to, with its right.
    async fn spaces_of(&self, tenant: &str, principal: &str) -> Result<Vec<(Space, Right)>>;
    /// The tenants that have turns (for per-tenant retention).
    async fn tenants(&self) -> Result<Vec<String>>;
    /// Checks the store answers.
    async fn ping(&self) -> Result<()>;
}

/// Cosine similarity of two vectors (0 when either is empty, zero or the lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Unix ms now (the erasure marker's clock).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
