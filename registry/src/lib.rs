//! # oba-registry
//!
//! A key directory registry for bots: operators publish and rotate their agents' keys;
//! verifiers fetch them as key directories, Signature Agent Cards and a registry list.
//!
//! * Accounts with API tokens (random, shown once, stored as SHA-256, scoped, expiring,
//!   revocable) or OIDC sign-in; repeated authentication failures answered `429`.
//! * Agents with Signature Agent Card metadata; keys added only with proof of possession
//!   ([`pop`]), `kid` = RFC 7638 thumbprint, asymmetric, no known test keys; rotation by
//!   overlap (several active keys), retirement keeps history.
//! * Public, cacheable documents (`ETag`, `304`): `/agents/{id}/jwks.json` (media type
//!   `application/http-message-signatures-directory+json`), `/agents/{id}/card.json`,
//!   `/registry.txt`, and with an agent host suffix the well-known directory per agent.
//! * Every change (accounts, tokens, agents, keys, OIDC first sign-ins) in a
//!   tamper-evident audit trail — see [The audit trail](#the-audit-trail); JSON errors
//!   everywhere; `/openapi.json`.
//! * SQLite by default (a file, created and migrated), PostgreSQL with the same behaviour.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = oba_registry::start(oba_registry::Config {
//!     db_url: "sqlite://registry.db".into(),
//!     ..oba_registry::Config::default()
//! })
//! .await?;
//! println!("listening on {}", registry.addr);
//! if let Some(token) = &registry.admin_token {
//!     println!("admin token (shown once): {token}");
//! }
//! registry.wait().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## The audit trail
//!
//! Each change and its audit record are written in **one transaction**: the request
//! answers only once both are durable, and a change whose record cannot be written is
//! not made (`500 audit_failed`). The records form an [oba-audit](oba_audit) hash chain
//! in the table `audit_log` of the registry's database — the gateway's table layout and
//! record format: `seq` 1, 2, 3, ..., each record's `prev` the hash of the one before,
//! and every [`Config::audit_checkpoint_every`] records (and within
//! [`Config::audit_checkpoint_interval`] of an unsigned one, and at
//! [`Registry::shutdown`]) a checkpoint signed with the registry's **audit key**.
//! Appends are serialised (a mutex in the process; on PostgreSQL also an advisory lock,
//! so several registries on one database share one chain), so concurrent requests never
//! fork it.
//!
//! A record holds who (`actor`, `auth_method`), what (`kind` = the action:
//! `account.create`, `token.create`, `token.revoke`, `agent.create`, `agent.update`,
//! `agent.delete`, `key.add`, `key.retire`), on what (`details.target`), which key
//! (`key_id`: a key's thumbprint, a token's id), when (`time_ms`), small details
//! (`details.detail`: scopes, validity, agent metadata) and the SHA-256 of the request
//! body (`hashes.request_body`) — never a token, a token's hash or a private key.
//!
//! The audit key is a private JWK in a file ([`Config::audit_key_file`]; by default next
//! to the SQLite file as `<name>-audit.jwk`, or `registry-audit.jwk` in the working
//! directory with PostgreSQL), created (Ed25519, mode 0600) on first start and never
//! stored in the database. Its public half is served at
//! [`/.well-known/audit-keys.json`](audit::AUDIT_KEYS_PATH). Save that document somewhere
//! the database's owners cannot write, then verify the whole trail, which names the
//! first altered, removed or reordered record:
//!
//! ```sh
//! curl -s https://registry.example/.well-known/audit-keys.json > registry-audit-keys.json
//! oba audit verify --db sqlite://registry.db --jwks registry-audit-keys.json
//! oba audit verify --db postgres://... --schema registry --jwks registry-audit-keys.json
//! ```
//!
//! `GET /v1/audit` (admin) lists the same records, checkpoints included, with their
//! `seq`, `prev` and `hash`.
//!
//! **Upgrading** from a version with the plain `audit` table: at the first start its rows
//! are appended to the chain, in order, followed by an `audit.imported` record and a
//! checkpoint, and the old table is renamed `audit_legacy` (see
//! [`Store::import_legacy_audit`]). Those rows were not chained when they were written:
//! the chain vouches for them from the import on.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use axum::Router;

mod api;
pub mod audit;
pub mod auth;
pub mod error;
pub mod oidc;
pub mod openapi;
pub mod pop;
mod public;
pub mod store;

pub use oidc::OidcIssuer;
pub use store::Store;

/// Registry settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 picks one).
    pub listen: String,
    /// `sqlite://PATH` (default `sqlite://registry.db`) or `postgres://...`.
    pub db_url: String,
    /// The URL the registry is reached at (default `http://<listen address>`).
    pub public_url: Option<String>,
    /// Read the first admin token from this file instead of generating one.
    pub admin_token_file: Option<PathBuf>,
    /// Serve `https://<agent-id>.<suffix>/.well-known/http-message-signatures-directory`.
    pub agent_host_suffix: Option<String>,
    /// Trusted OIDC issuers.
    pub oidc: Vec<OidcIssuer>,
    /// Allow http issuers (tests only).
    pub oidc_allow_http: bool,
    /// Authentication failures per client address per minute before `429`.
    pub auth_failure_limit: usize,
    /// The private JWK that signs the audit trail's checkpoints; created (Ed25519, mode
    /// 0600) if missing. Default ([`audit::default_key_path`]): next to a SQLite file
    /// (`registry.db` → `registry-audit.jwk`), `registry-audit.jwk` in the working
    /// directory for PostgreSQL, a key of the process only for `sqlite::memory:`.
    pub audit_key_file: Option<PathBuf>,
    /// A signed checkpoint after this many audit records (default 100, at least 1)...
    pub audit_checkpoint_every: u64,
    /// ...and at most this long after a record that is not yet signed (default 60 s, not
    /// zero).
    pub audit_checkpoint_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8788".into(),
            db_url: "sqlite://registry.db".into(),
            public_url: None,
            admin_token_file: None,
            agent_host_suffix: None,
            oidc: Vec::new(),
            oidc_allow_http: false,
            auth_failure_limit: 20,
            audit_key_file: None,
            audit_checkpoint_every: 100,
            audit_checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// Errors starting the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Network.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The audit key cannot be read, created or used.
    #[error(transparent)]
    AuditKey(#[from] audit::AuditKeyError),
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) public_url: Arc<str>,
    pub(crate) limiter: Arc<auth::FailureLimiter>,
    pub(crate) oidc: Arc<oba_oidc::OidcVerifier>,
    /// The JWK Set served at `/.well-known/audit-keys.json`.
    pub(crate) audit_keys: Arc<str>,
}

impl AppState {
    pub(crate) fn jwks_uri(&self, id: &str) -> String {
        format!("{}/agents/{id}/jwks.json", self.public_url)
    }
    pub(crate) fn card_url(&self, id: &str) -> String {
        format!("{}/agents/{id}/card.json", self.public_url)
    }
    /// The `Signature-Agent` origin of an agent, when agent hosts are served.
    pub(crate) fn agent_directory_origin(&self, id: &str) -> Option<String> {
        self.config
            .agent_host_suffix
            .as_ref()
            .map(|s| format!("https://{id}.{s}"))
    }
    pub(crate) fn public_scheme(&self) -> String {
        self.public_url
            .split("://")
            .next()
            .unwrap_or("https")
            .to_owned()
    }
}

/// Unix seconds now.
/// Writes a log line to standard error; a closed stderr never takes a request down
/// (`eprintln!` would panic).
pub(crate) fn log(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{args}");
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The registry's routes.
fn router(state: AppState) -> Router {
    use axum::http::StatusCode;
    Router::new()
        .route("/v1/agents", post(api::create_agent).get(api::list_agents))
        .route(
            "/v1/agents/{id}",
            get(api::get_agent)
                .patch(api::patch_agent)
                .delete(api::delete_agent),
        )
        .route(
            "/v1/agents/{id}/keys",
            post(api::add_key).get(api::list_keys),
        )
        .route("/v1/agents/{id}/keys/{kid}", delete(api::retire_key))
        .route("/v1/tokens", post(api::create_token).get(api::list_tokens))
        .route("/v1/tokens/{id}", delete(api::revoke_token))
        .route("/v1/accounts", post(api::create_account))
        .route("/v1/audit", get(api::audit))
        .route("/agents/{id}/jwks.json", get(public::jwks))
        .route("/agents/{id}/card.json", get(public::card))
        .route("/registry.txt", get(public::registry_txt))
        .route(
            "/.well-known/http-message-signatures-directory",
            get(public::agent_host_directory),
        )
        .route(audit::AUDIT_KEYS_PATH, get(audit::audit_keys))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .fallback(|| async {
            error::ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// The bound address.
    pub addr: SocketAddr,
    /// The admin token, when it was generated at this start (shown once).
    pub admin_token: Option<String>,
    /// The public URL.
    pub public_url: String,
    /// The audit key's id (`sig_keyid` of every checkpoint; the `kid` at
    /// `/.well-known/audit-keys.json`).
    pub audit_keyid: String,
    /// The audit key's file (`None`: a key of this process, for an in-memory database).
    pub audit_key_file: Option<PathBuf>,
    store: Store,
    task: tokio::task::JoinHandle<()>,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Registry {
    /// Runs until the server stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops the server at once (records written since the last checkpoint stay unsigned
    /// until the next start signs them; [`Registry::shutdown`] signs them now).
    pub fn stop(&self) {
        self.task.abort();
        self.checkpointer.abort();
    }

    /// Stops the server, then signs the audit trail's last records with a checkpoint (if
    /// any follows the last one), so a cleanly stopped registry leaves a fully signed
    /// trail.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop();
        let _ = self.task.await;
        let _ = self.checkpointer.await;
        self.store.checkpoint().await?;
        Ok(())
    }

    /// Signs the audit trail now, if any record follows the last checkpoint. True when a
    /// checkpoint was written.
    pub async fn audit_checkpoint(&self) -> Result<bool, Error> {
        Ok(self.store.checkpoint().await?)
    }
}

/// Opens the database (creating and migrating it), bootstraps the first admin token on an
/// empty database, binds and serves in the background.
pub async fn start(config: Config) -> Result<Registry, Error> {
    if config.audit_checkpoint_every == 0 || config.audit_checkpoint_interval.is_zero() {
        return Err(Error::Config(
            "audit_checkpoint_every and audit_checkpoint_interval must not be zero".into(),
        ));
    }
    let audit_key = match config
        .audit_key_file
        .clone()
        .or_else(|| audit::default_key_path(&config.db_url))
    {
        Some(path) => audit::load_or_create_key(&path)?,
        None => audit::AuditKey::ephemeral()?,
    };
    let store = Store::connect(
        &config.db_url,
        store::AuditSettings {
            signer: audit_key.signer.clone(),
            checkpoint_every: config.audit_checkpoint_every,
        },
    )
    .await?;
    let admin_token = bootstrap(&store, &config).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let oidc = Arc::new(oidc::verifier(&config).map_err(|e| Error::Config(e.to_string()))?);
    let checkpointer = tokio::spawn(sign_periodically(
        store.clone(),
        config.audit_checkpoint_interval,
    ));
    let state = AppState {
        store: store.clone(),
        audit_keys: audit_key.jwk_set().into(),
        limiter: Arc::new(auth::FailureLimiter::new(
            config.auth_failure_limit,
            Duration::from_secs(60),
        )),
        config: Arc::new(config),
        public_url: public_url.clone().into(),
        oidc,
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener.tap_io(|t| {
                let _ = t.set_nodelay(true);
            }),
            app,
        )
        .await
        {
            log(format_args!("registry: server error: {e}"));
        }
    });
    Ok(Registry {
        addr,
        admin_token,
        public_url,
        audit_keyid: audit_key.keyid().to_owned(),
        audit_key_file: audit_key.path.clone(),
        store,
        task,
        checkpointer,
    })
}

/// Every `interval`, a checkpoint if any audit record is unsigned (so none stays unsigned
/// much longer than `interval`, however rarely the registry changes).
async fn sign_periodically(store: Store, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(e) = store.checkpoint().await {
            log(format_args!("registry: audit checkpoint failed: {e}"));
        }
    }
}

/// On an empty database: an admin account and its token (from the file, or generated and
/// returned so it can be printed once).
async fn bootstrap(store: &Store, config: &Config) -> Result<Option<String>, Error> {
    if store.account_count().await? > 0 {
        return Ok(None);
    }
    let (token, generated) = match &config.admin_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
                .trim()
                .to_owned();
            if !t.starts_with("oba_rt_") || t.len() < 40 {
                return Err(Error::Config(
                    "the admin token must look like oba_rt_ followed by at least 33 characters"
                        .into(),
                ));
            }
            (t, false)
        }
        None => (auth::new_token(), true),
    };
    let t = now();
    let account = auth::new_id();
    let row = store::TokenRow {
        id: auth::new_id(),
        account_id: account.clone(),
        scopes: "admin".into(),
        created_at: t,
        expires_at: None,
        revoked_at: None,
    };
    let change = store::Change::new("system", "token.create", &row.id)
        .with_key_id(row.id.clone())
        .with_detail(
            serde_json::json!({ "account_id": account, "scopes": "admin", "bootstrap": true }),
        );
    store
        .bootstrap_admin(&account, &row, &auth::token_hash(&token), &change)
        .await?;
    Ok(generated.then_some(token))
}
