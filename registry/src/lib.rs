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
//! * Every change in an append-only audit table; JSON errors everywhere; `/openapi.json`.
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
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) public_url: Arc<str>,
    pub(crate) limiter: Arc<auth::FailureLimiter>,
    pub(crate) oidc: Arc<oba_oidc::OidcVerifier>,
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
    task: tokio::task::JoinHandle<()>,
}

impl Registry {
    /// Runs until the server stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Opens the database (creating and migrating it), bootstraps the first admin token on an
/// empty database, binds and serves in the background.
pub async fn start(config: Config) -> Result<Registry, Error> {
    let store = Store::connect(&config.db_url).await?;
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
    let state = AppState {
        store,
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
        task,
    })
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
    store.create_account(&account, "admin", None, t).await?;
    let row = store::TokenRow {
        id: auth::new_id(),
        account_id: account.clone(),
        scopes: "admin".into(),
        created_at: t,
        expires_at: None,
        revoked_at: None,
    };
    store.create_token(&row, &auth::token_hash(&token)).await?;
    store
        .audit(
            t,
            "system",
            "token.create",
            &row.id,
            &serde_json::json!({ "account_id": account, "scopes": "admin", "bootstrap": true }),
        )
        .await?;
    Ok(generated.then_some(token))
}
