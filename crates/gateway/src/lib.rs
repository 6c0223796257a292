//! # attach-gateway
//!
//! A verifying gateway in front of model servers (Ollama, vLLM, OpenAI-compatible). Each
//! request passes, in order:
//!
//! 1. **identity** ([`identity`]): a Web Bot Auth signature (keys resolved through the
//!    directory client, limited to trusted agent URL prefixes), an RFC 9421 signature by
//!    a configured service account, an OIDC bearer JWT from one of several issuers
//!    (`oba-oidc`), or an API key ([`apikeys`]) — one [`Principal`];
//! 2. **policy** ([`policy`]): deny by default; rules on kind, id, tenant, agent, route,
//!    model;
//! 3. **the stamp** ([`stamp`]): client `X-Attach-*` fields removed, the verified identity
//!    added as `X-Attach-*` and signed (RFC 9421, `tag="attach-gateway"`) with the
//!    gateway's key, published at `/.well-known/jwks.json`;
//! 4. **the proxy**: pooled keep-alive upstream connections, at most
//!    `max_upstream_connections` in use per upstream (then 503 after waiting); responses
//!    (SSE, NDJSON) streamed back chunk by chunk; upstream down → 502, timeout → 504,
//!    JSON errors with a request id.
//!
//! 5. **memory** ([`memory`], when configured): each chat turn recorded under the verified
//!    identity off the request path, earlier turns recalled into the prompt within a
//!    budget, shared spaces with rights, and the memory API at `/attach/v1/memory`.
//!
//! Each request runs in a `tracing` span with bounded fields (request id, trace id,
//! method, route, status, auth method, upstream, model) and continues the caller's W3C
//! trace context upstream; with the cargo feature `otel` the span is exported over
//! OTLP/HTTP in the caller's trace ([`telemetry`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use axum::Router;
use oba_httpsig::digest::DigestField;
use oba_httpsig::jwk::Jwk;

pub mod apikeys;
pub mod budget;
pub mod chat;
pub mod config;
pub mod identity;
pub mod memory;
pub mod metering;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod replay;
pub mod stamp;
pub mod tap;
pub mod telemetry;

pub use config::GatewayConfig;
pub use identity::{AuthMethod, Principal, PrincipalKind};
pub use telemetry::traceparent;

/// The routes proxied to model servers; anything else is refused.
pub const ROUTES: [&str; 9] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/tags",
];

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Network.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

struct Inner {
    metrics: Arc<metrics::Metrics>,
    audit: Option<oba_audit::AuditLog>,
    audit_accepted: bool,
    directory: Arc<oba_webbotauth::client::DirectoryClient>,
    budgets: Option<budget::Budgets>,
    memory: Option<memory::Memory>,
    metering: Option<metering::Metering>,
    config: GatewayConfig,
    auth: identity::Authenticator,
    stamp: Arc<stamp::Stamper>,
    http: reqwest::Client,
    /// Per upstream (by name): one permit per connection it may have in use.
    upstream_slots: BTreeMap<String, metrics::UpstreamSlots>,
    public_url: String,
    /// Turns true when the gateway shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
}

#[derive(Clone)]
struct AppState(Arc<Inner>);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Bound address.
    pub addr: SocketAddr,
    /// The stamp key's public JWK (what upstreams verify the stamp with).
    pub stamp_public_jwk: Jwk,
    task: tokio::task::JoinHandle<()>,
    shutdown: Arc<tokio::sync::Notify>,
    /// Tells background drains (see [`tap::Drain`]) to end.
    closing: tokio::sync::watch::Sender<bool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    audit: Option<oba_audit::AuditLog>,
}

impl Gateway {
    /// Runs until stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
    /// Stops accepting at once (connections already open run to their end; queued
    /// memory turns and usage records are still written in the background).
    pub fn stop(&self) {
        self.task.abort();
    }
    /// Graceful shutdown: stops accepting, lets in-flight requests finish (at most
    /// `grace`, then cuts them), then drains the memory queue into the store (or its
    /// journal) before returning.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.notify_one();
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        // Responses whose client left are no longer read for their counts: they are
        // recorded with what passed.
        self.closing.send_replace(true);
        // The writers end when the last request holding their queue ends; a client
        // that stops reading a stream must not hold shutdown forever.
        for w in self.writers.drain(..) {
            if tokio::time::timeout(grace, w).await.is_err() {
                log(format_args!(
                    "gateway: shutdown: a writer still had requests in flight after the grace period; what it had queued is in its journal or lost"
                ));
            }
        }
        if let Some(a) = self.audit.take() {
            if let Err(e) = a.shutdown().await {
                log(format_args!("audit: final checkpoint failed: {e}"));
            }
        }
    }
}

/// Logs through `tracing` (target `attach`): inside a request, the subscriber adds the
/// request's span fields (`request_id`, `trace_id`) to every line. The binary chooses
/// text or JSON output (`oba gateway --log-format`).
pub(crate) fn log(args: std::fmt::Arguments<'_>) {
    tracing::warn!(target: "attach", "{args}");
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Builds the pipeline from `config`, binds and serves in the background.
pub async fn start(config: GatewayConfig) -> Result<Gateway, Error> {
    start_with(config, None).await
}

/// [`start`], with memory kept in `memory_store` (any [`oba_memory::MemoryStore`], e.g. a
/// third-party backend) instead of the store `config.memory.store` names.
pub async fn start_with(
    config: GatewayConfig,
    memory_store: Option<Arc<dyn oba_memory::MemoryStore>>,
) -> Result<Gateway, Error> {
    if config.upstreams.is_empty() {
        return Err(Error::Config("at least one upstream is required".into()));
    }
    for u in &config.upstreams {
        url::Url::parse(&u.url).map_err(|e| Error::Config(format!("upstream {}: {e}", u.name)))?;
    }
    if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&config.max_upstream_connections) {
        return Err(Error::Config(format!(
            "max_upstream_connections must be from 1 to {}",
            tokio::sync::Semaphore::MAX_PERMITS
        )));
    }
    // The key file's state when it is read: the watcher reloads on any change after.
    let key_file_seen = config.api_key_file.as_deref().map(apikeys::file_state);
    let api_keys = match &config.api_key_file {
        Some(p) => apikeys::ApiKeys::load(p).map_err(Error::Config)?,
        None => apikeys::ApiKeys::default(),
    };
    let services = config
        .service_accounts
        .iter()
        .map(identity::ServiceKey::from_config)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    let directory = Arc::new(
        oba_webbotauth::client::DirectoryClient::new(oba_webbotauth::client::ClientConfig {
            allow_loopback: config.allow_insecure_directories,
            ..Default::default()
        })
        .map_err(|e| Error::Config(e.to_string()))?,
    );
    // Replay is checked by the gateway itself after verification (shared with Redis).
    let replay = match &config.redis_url {
        Some(url) => replay::ReplayStore::redis(url, &config.redis_prefix)
            .await
            .map_err(Error::Config)?,
        None => replay::ReplayStore::Memory(Default::default()),
    };
    let mut bots = oba_webbotauth::client::Verifier::new(oba_webbotauth::VerifyPolicy {
        allow_http_loopback: config.allow_insecure_directories,
        ..Default::default()
    })
    .with_client(directory.clone());
    // Zero trust: with no trusted agent prefixes, no agent's keys are fetched.
    bots = bots.with_trusted_agents(config.trusted_agents.clone());
    let oidc = oba_oidc::OidcVerifier::new(
        config
            .oidc_issuers
            .iter()
            .map(|i| oba_oidc::Issuer {
                issuer: i.issuer.clone(),
                audience: i.audience.clone(),
                required_scopes: i.required_scopes.clone(),
                required_claims: i.required_claims.clone(),
            })
            .collect(),
        config.oidc_allow_http,
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let tenant_claims = config
        .oidc_issuers
        .iter()
        .filter_map(|i| i.tenant_claim.clone().map(|c| (i.issuer.clone(), c)))
        .collect();
    let stamp_jwk = match &config.stamp_key_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
            Jwk::parse(&text).map_err(|e| Error::Config(e.to_string()))?
        }
        None => Jwk::generate(oba_httpsig::Algorithm::Ed25519)
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    let stamp = stamp::Stamper::new(&stamp_jwk).map_err(Error::Config)?;
    let audit = match &config.audit {
        Some(a) => Some(open_audit(a, &stamp_jwk).await.map_err(Error::Config)?),
        None => None,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(config.max_upstream_connections)
        .read_timeout(Duration::from_secs(config.idle_timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
    let listener = bind(&config.listen, config.listen_backlog).await?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let stamp_public_jwk = stamp.public_jwk().clone();
    let stamp = Arc::new(stamp);
    let (memory, memory_writer) = match &config.memory {
        Some(m) => {
            let embedder = match &m.embedding {
                Some(e) => {
                    let u = config
                        .upstreams
                        .iter()
                        .find(|u| u.name == e.upstream)
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "memory.embedding: no upstream named {}",
                                e.upstream
                            ))
                        })?;
                    Some(memory::embed::Embedder::new(
                        http.clone(),
                        &u.url,
                        u.kind,
                        &e.model,
                        stamp.clone(),
                    ))
                }
                None => None,
            };
            let (m, task) = match memory_store {
                Some(store) => memory::Memory::with_store(m.clone(), store, embedder),
                None => memory::Memory::open(m.clone(), embedder)
                    .await
                    .map_err(Error::Config)?,
            };
            (Some(m), Some(task))
        }
        None => (None, None),
    };
    let (metering, metering_writer) = match &config.metering {
        Some(m) => {
            let (m, task) = metering::Metering::open(m).await.map_err(Error::Config)?;
            (Some(m), Some(task))
        }
        None => (None, None),
    };
    let budgets = if config.budgets.is_empty() {
        None
    } else {
        let redis = config
            .redis_url
            .as_deref()
            .map(|u| (u, config.redis_prefix.as_str()));
        Some(
            budget::Budgets::new(config.budgets.clone(), config.default_max_tokens, redis)
                .await
                .map_err(Error::Config)?,
        )
    };
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let upstream_slots = config
        .upstreams
        .iter()
        .map(|u| {
            let slots = metrics::UpstreamSlots::new(config.max_upstream_connections);
            (u.name.clone(), slots)
        })
        .collect();
    let state = AppState(Arc::new(Inner {
        closing: closing_rx,
        audit: audit.clone(),
        audit_accepted: config.audit.as_ref().is_some_and(|a| a.accepted),
        directory,
        budgets,
        memory,
        metering,
        auth: identity::Authenticator {
            bots: Arc::new(bots),
            services,
            api_keys: std::sync::RwLock::new(api_keys),
            replay,
            require_nonce: config.require_nonce,
            oidc,
            tenant_claims,
        },
        stamp,
        http,
        upstream_slots,
        public_url,
        config,
        metrics: Arc::new(metrics::Metrics::default()),
    }));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                let mut text = s.0.metrics.render();
                if let Some(m) = &s.0.memory {
                    text.push_str(&m.writer.stats.render("memory", "Memory turns"));
                }
                if let Some(m) = &s.0.metering {
                    text.push_str(&m.outbox.stats.render("usage", "Usage records"));
                }
                if let Some(a) = &s.0.audit {
                    text.push_str(&a.stats().render());
                }
                text.push_str(&metrics::UpstreamSlots::render(&s.0.upstream_slots));
                let (jwks_hits, jwks_fetches) = s.0.auth.oidc.cache_stats();
                text.push_str(&metrics::key_fetches(
                    s.0.directory.cache_hit_count(),
                    s.0.directory.fetch_count(),
                    jwks_hits,
                    jwks_fetches,
                ));
                text
            }),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route(metering::PATH, get(usage_api))
        .route(memory::api::PREFIX, any(memory_api))
        .route(
            &format!("{}/{{*rest}}", memory::api::PREFIX),
            any(memory_api),
        )
        .fallback(proxy)
        .with_state(state.clone());
    if state.0.memory.is_some() {
        tokio::spawn(retention(Arc::downgrade(&state.0)));
    }
    if let Some(path) = state.0.config.api_key_file.clone() {
        tokio::spawn(watch_api_keys(
            Arc::downgrade(&state.0),
            path,
            key_file_seen.flatten(),
        ));
    }
    drop(state);
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let signal = shutdown.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(
            listener.tap_io(|t| {
                let _ = t.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(async move { signal.notified().await });
        if let Err(e) = serve.await {
            log(format_args!("gateway: server error: {e}"));
        }
    });
    Ok(Gateway {
        addr,
        stamp_public_jwk,
        task,
        shutdown,
        closing,
        writers: memory_writer.into_iter().chain(metering_writer).collect(),
        audit,
    })
}

/// Opens the audit trail: a JSON-lines file or a database, checkpoints signed with the
/// stamp key.
async fn open_audit(c: &config::AuditConfig, key: &Jwk) -> Result<oba_audit::AuditLog, String> {
    let signer = oba_audit::CheckpointSigner::from_jwk(key).map_err(|e| e.to_string())?;
    let settings = oba_audit::AuditConfig {
        checkpoint_every: c.checkpoint_every.max(1),
        checkpoint_interval: Duration::from_secs(c.checkpoint_secs.max(1)),
        ..oba_audit::AuditConfig::default()
    };
    let database = c.store.contains("://") || c.store.starts_with("sqlite:");
    let started = if database {
        let sink = oba_audit::DbLog::connect(&c.store, None)
            .await
            .map_err(|e| format!("audit: {e}"))?;
        oba_audit::AuditLog::start(sink, signer, settings).await
    } else {
        let sink = oba_audit::FileSink::open(&c.store).map_err(|e| format!("audit: {e}"))?;
        oba_audit::AuditLog::start(sink, signer, settings).await
    };
    started.map_err(|e| format!("audit: {e}"))
}

/// Appends an audit event (never waits; see `oba_audit::AuditLog::record`).
fn audit(s: &Inner, event: oba_audit::AuditEvent) {
    if let Some(a) = &s.audit {
        a.record(event);
    }
}

/// Records a policy denial.
fn audit_denied(s: &Inner, p: &Principal, route: &str, request_id: &str) {
    let mut e = oba_audit::AuditEvent::now(oba_audit::Kind::PolicyDenied)
        .with_actor(p.id.clone())
        .with_auth_method(p.auth_method.as_str())
        .with_route(route)
        .with_request_id(request_id);
    if let Some(t) = &p.tenant {
        e = e.with_tenant(t.clone());
    }
    audit(s, e);
}

/// Reloads the API key file when it changes (`oba gateway keys create|revoke` take
/// effect without a restart) and records each key created or revoked in the audit trail.
/// A file that no longer parses is refused and the keys in force stay; a file that is
/// removed revokes every key (fail closed), each revocation audited.
async fn watch_api_keys(
    state: std::sync::Weak<Inner>,
    path: std::path::PathBuf,
    mut seen: Option<(u64, Option<std::time::SystemTime>)>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let now = apikeys::file_state(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let fresh = match apikeys::ApiKeys::load(&path) {
            Ok(k) => k,
            Err(e) => {
                log(format_args!("gateway: API key file not reloaded: {e}"));
                s.metrics.key_file_reload(false);
                continue;
            }
        };
        s.metrics.key_file_reload(true);
        let Ok(mut keys) = s.auth.api_keys.write() else {
            return;
        };
        let (created, revoked) = apikeys::changes(&keys, &fresh);
        for (kind, list) in [
            (oba_audit::Kind::KeyCreated, created),
            (oba_audit::Kind::KeyRevoked, revoked),
        ] {
            for e in list {
                let mut ev = oba_audit::AuditEvent::now(kind.clone())
                    .with_actor(format!("key:{}", e.name))
                    .with_auth_method("api-key")
                    .with_hash("key", e.hash.clone());
                if let Some(t) = &e.tenant {
                    ev = ev.with_tenant(t.clone());
                }
                audit(&s, ev);
            }
        }
        *keys = fresh;
    }
}

/// Binds a listening socket with room for `backlog` connections not yet accepted (the
/// kernel caps it at `net.core.somaxconn`). A burst of new connections larger than the
/// queue has its SYNs dropped, and each such client waits a SYN retransmission (1 s).
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // Rebind at once after a restart (TIME_WAIT); on Windows it would let another
        // process take the port.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(backlog)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: no address"),
        )
    }))
}

/// Deletes turns past their tenant's retention, hourly (reads already hide them).
async fn retention(state: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let Some(m) = &s.memory else { return };
        m.purge(memory::now_ms()).await;
    }
}

async fn jwks(State(s): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({ "keys": [s.0.stamp.public_jwk()] }),
    )
}

async fn resource_metadata(State(s): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "resource": s.0.public_url,
            "authorization_servers": s.0.config.oidc_issuers.iter().map(|i| i.issuer.clone()).collect::<Vec<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": ["ed25519", "ecdsa-p256-sha256", "ecdsa-p384-sha384", "rsa-pss-sha512"],
        }),
    )
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    public_url: &str,
) -> Response {
    let mut r = json_response(
        status,
        serde_json::json!({ "error": { "code": code, "message": message, "request_id": request_id } }),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    if status == StatusCode::UNAUTHORIZED {
        let www = format!(
            "Bearer resource_metadata=\"{public_url}/.well-known/oauth-protected-resource\""
        );
        if let Ok(v) = HeaderValue::from_str(&www) {
            r.headers_mut().insert("www-authenticate", v);
        }
        r.headers_mut().insert(
            "accept-signature",
            HeaderValue::from_static(oba_webbotauth::layer::ACCEPT_SIGNATURE),
        );
    }
    r
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn upstream_for<'a>(config: &'a GatewayConfig, model: Option<&str>) -> &'a config::Upstream {
    if let Some(m) = model {
        if let Some(u) = config.upstreams.iter().find(|u| {
            u.models.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => m.starts_with(prefix),
                None => p == m,
            })
        }) {
            return u;
        }
    }
    config
        .upstreams
        .iter()
        .find(|u| u.models.is_empty())
        .unwrap_or(&config.upstreams[0])
}

async fn proxy(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let route = metrics::route_label(uri.path());
    let mut auth_method = "none";
    let mut pending = Pending::default();
    let request_id = oba_httpsig::random_nonce();
    // The request's span: bounded fields, no principal or credential (`telemetry`).
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        auth_method = tracing::field::Empty,
        upstream = tracing::field::Empty,
        model = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
    );
    let (trace_id, traceparent) = telemetry::continue_trace(
        &span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
    span.record("trace_id", trace_id.as_str());
    let resp = tracing::Instrument::instrument(
        proxy_inner(
            &state.0,
            &mut auth_method,
            &mut pending,
            started,
            Ids {
                request: request_id,
                traceparent,
            },
            method,
            uri,
            headers,
            body,
        ),
        span.clone(),
    )
    .await;
    span.record("http.response.status_code", resp.status().as_u16());
    span.record("auth_method", auth_method);
    if resp.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    // A request refused after authentication, or whose body was not tapped: its record
    // is complete now.
    if let (Some(m), Some(mut r)) = (&state.0.metering, pending.meter) {
        r.status = resp.status().as_u16();
        r.latency_us = started.elapsed().as_micros() as u64;
        m.outbox.send(r);
    }
    // Nothing was generated: the reservation keeps its request, not its tokens.
    if let (Some(b), Some(r)) = (&state.0.budgets, pending.reservation) {
        b.settle(r, 0);
    }
    state.0.metrics.request(
        route,
        resp.status().as_u16(),
        auth_method,
        started.elapsed(),
    );
    resp
}

/// Authenticates a request (identity, then its Content-Digest against the body).
async fn admit(
    s: &Inner,
    request_id: &str,
    auth_method: &mut &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Principal, (StatusCode, String, String)> {
    let scheme = s.public_url.split("://").next().unwrap_or("http");
    let head = identity::head_of(headers, method, uri, scheme);
    let principal = match s.auth.authenticate(&head, !body.is_empty(), now()).await {
        Ok(p) => {
            *auth_method = p.auth_method.as_str();
            if s.audit_accepted {
                let mut e = oba_audit::AuditEvent::now(oba_audit::Kind::AuthAccepted)
                    .with_actor(p.id.clone())
                    .with_auth_method(p.auth_method.as_str())
                    .with_route(uri.path())
                    .with_request_id(request_id);
                if let Some(t) = &p.tenant {
                    e = e.with_tenant(t.clone());
                }
                if let Some(k) = &p.key_id {
                    e = e.with_key_id(k.clone());
                }
                if !body.is_empty() {
                    e = e.with_sha256("body", body);
                }
                audit(s, e);
            }
            p
        }
        Err(r) => {
            audit(
                s,
                oba_audit::AuditEvent::now(oba_audit::Kind::AuthRejected)
                    .with_reason(r.code.clone())
                    .with_route(uri.path())
                    .with_request_id(request_id),
            );
            s.metrics.auth_failure(&r.code);
            log(format_args!(
                "gateway: authentication refused: {} ({})",
                r.code, r.message
            ));
            return Err((r.status, r.code, r.message));
        }
    };
    // A Content-Digest, when sent, must match the body (it may be what the signature covers).
    if let Some(cd) = headers.get("content-digest") {
        let ok = cd
            .to_str()
            .ok()
            .and_then(|v| DigestField::parse(v).ok())
            .is_some_and(|f| f.verify(body).is_ok());
        if !ok {
            return Err((
                StatusCode::BAD_REQUEST,
                "digest_mismatch".into(),
                "Content-Digest does not match the body".into(),
            ));
        }
    }
    Ok(principal)
}

/// The gateway's own APIs: the same authentication, then the policy on `route`; a
/// refusal is the JSON error response (a denial also goes to the audit trail).
async fn admit_api(
    s: &Inner,
    request_id: &str,
    auth_method: &mut &'static str,
    (method, uri, headers, body): (&Method, &Uri, &HeaderMap, &[u8]),
    route: &str,
) -> Result<Principal, Response> {
    let fail = |status, code: &str, msg: &str| error(status, code, msg, request_id, &s.public_url);
    let principal = admit(s, request_id, auth_method, method, uri, headers, body)
        .await
        .map_err(|(status, code, message)| fail(status, &code, &message))?;
    if !policy::allows(&s.config.policy, &principal, route, None) {
        audit_denied(s, &principal, route, request_id);
        return Err(fail(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the policy does not allow this principal here",
        ));
    }
    Ok(principal)
}

/// The usage API: the same authentication and policy (route `/attach/v1/usage`).
async fn usage_api(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let s = &state.0;
    let request_id = oba_httpsig::random_nonce();
    let fail = |status, code: &str, msg: &str| error(status, code, msg, &request_id, &s.public_url);
    let Some(m) = &s.metering else {
        return fail(
            StatusCode::NOT_FOUND,
            "metering_disabled",
            "metering is not configured",
        );
    };
    let mut auth_method = "none";
    let principal = match admit_api(
        s,
        &request_id,
        &mut auth_method,
        (&method, &uri, &headers, &[]),
        metering::PATH,
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    let scope = policy::usage_scope(&s.config.policy, &principal, metering::PATH);
    match metering::report(m, &principal, scope, uri.query()).await {
        Ok((status, v)) => json_response(status, v),
        Err((status, code, message)) => fail(status, code, &message),
    }
}

/// The memory API: the same authentication and policy (route `/attach/v1/memory`).
async fn memory_api(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let s = &state.0;
    let started = std::time::Instant::now();
    let mut auth_method = "none";
    let request_id = oba_httpsig::random_nonce();
    let fail = |status, code: &str, msg: &str| error(status, code, msg, &request_id, &s.public_url);
    let resp = async {
        let Some(m) = &s.memory else {
            return fail(
                StatusCode::NOT_FOUND,
                "memory_disabled",
                "memory is not configured",
            );
        };
        let Ok(body) = axum::body::to_bytes(body, s.config.max_body).await else {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            );
        };
        let principal = match admit_api(
            s,
            &request_id,
            &mut auth_method,
            (&method, &uri, &headers, &body),
            memory::api::PREFIX,
        )
        .await
        {
            Ok(p) => p,
            Err(r) => return r,
        };
        match memory::api::handle(
            m,
            s.audit.as_ref(),
            &principal,
            &request_id,
            &method,
            uri.path(),
            uri.query(),
            &body,
        )
        .await
        {
            Ok((status, v)) => {
                let mut r = json_response(status, v);
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    r.headers_mut().insert("x-request-id", v);
                }
                r
            }
            Err((status, code, message)) => fail(status, code, &message),
        }
    }
    .await;
    s.metrics.request(
        "memory",
        resp.status().as_u16(),
        auth_method,
        started.elapsed(),
    );
    resp
}

/// The request id and the `traceparent` sent upstream.
struct Ids {
    request: String,
    traceparent: String,
}

/// What a request leaves to finish when its response is not tapped.
#[derive(Default)]
struct Pending {
    meter: Option<oba_ledger::UsageRecord>,
    reservation: Option<oba_budget::Reservation>,
}

#[allow(clippy::too_many_arguments)]
async fn proxy_inner(
    s: &Inner,
    auth_method: &mut &'static str,
    pending: &mut Pending,
    started: std::time::Instant,
    ids: Ids,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = ids.request;
    let fail = |status, code: &str, msg: &str| error(status, code, msg, &request_id, &s.public_url);
    let path = uri.path();
    if !ROUTES.contains(&path) && !s.config.extra_routes.iter().any(|r| r == path) {
        return fail(
            StatusCode::NOT_FOUND,
            "route_not_allowed",
            "this path is not proxied",
        );
    }
    let body = match axum::body::to_bytes(body, s.config.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            )
        }
    };
    // 1. Identity.
    let principal = match admit(s, &request_id, auth_method, &method, &uri, &headers, &body).await {
        Ok(p) => p,
        Err((status, code, message)) => return fail(status, &code, &message),
    };
    // 2. Policy. The body is parsed once: as a tree when a later stage (metering,
    // budgets, memory on a chat route) reads or changes it, else only for `model`.
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    let needs_tree = s.metering.is_some()
        || s.budgets.is_some()
        || (s.memory.is_some() && chat::ChatRoute::of(path).is_some());
    let mut parsed: Option<serde_json::Value> = if needs_tree {
        serde_json::from_slice(&body).ok()
    } else {
        None
    };
    let model = match &parsed {
        Some(v) => v.get("model").and_then(|m| m.as_str()).map(str::to_owned),
        None if needs_tree => None,
        None => serde_json::from_slice::<ModelOnly>(&body)
            .ok()
            .and_then(|m| m.model),
    };
    if !policy::allows(&s.config.policy, &principal, path, model.as_deref()) {
        audit_denied(s, &principal, path, &request_id);
        log(format_args!(
            "gateway: {request_id}: policy denied {} on {path}",
            principal.id
        ));
        return fail(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the policy does not allow this principal here",
        );
    }
    // Metering: the record is filled in as the request goes, sent when it ends.
    let upstream = upstream_for(&s.config, model.as_deref());
    let span = tracing::Span::current();
    span.record("upstream", upstream.name.as_str());
    if let Some(m) = &model {
        span.record("model", telemetry::bounded(m));
    }
    let mut body_changed = false;
    let mut strip_usage = false;
    if s.metering.is_some() {
        let mut r =
            oba_ledger::UsageRecord::new(&request_id, memory::now_ms(), &principal.id, path);
        r.principal_kind = principal.kind.as_str().into();
        r.tenant = principal.tenant.clone().unwrap_or_default();
        r.agent = principal.agent.clone();
        r.user = principal.user.clone();
        r.auth_method = principal.auth_method.as_str().into();
        r.session = memory::session_of(&principal, &headers);
        r.upstream = upstream.name.clone();
        r.model = model.clone();
        r.bytes_in = body.len() as u64;
        pending.meter = Some(r);
        if let Some(v) = parsed.as_mut() {
            // Exact counts for OpenAI-style streams: ask for the usage chunk, and take it
            // out of the client's stream if the client did not ask for it.
            if matches!(path, "/v1/chat/completions" | "/v1/completions") {
                strip_usage = metering::usage::ask_for_usage(v);
                body_changed |= strip_usage;
            }
        }
    }
    // 3. Memory: what this request may record and recall (the scope is the principal's).
    let mut memory_turn = None;
    if let Some(m) = &s.memory {
        let cap = policy::memory_cap(
            &s.config.policy,
            &principal,
            path,
            model.as_deref(),
            m.config.max_mode,
        );
        match m.plan(&principal, path, &headers, cap).await {
            Err((status, code, message)) => return fail(status, code, &message),
            Ok(None) => {}
            Ok(Some(plan)) => {
                let user = parsed
                    .as_ref()
                    .map(|v| chat::user_text(plan.route, v))
                    .unwrap_or_default();
                if plan.recall && !user.is_empty() {
                    if let (Some(recalled), Some(v)) =
                        (m.recall(&plan, &user).await, parsed.as_mut())
                    {
                        body_changed |= memory::recall::inject(plan.route, v, &recalled);
                    }
                }
                let mut turn = oba_memory::Turn::new(
                    &request_id,
                    &plan.tenant,
                    &plan.principal,
                    path,
                    memory::now_ms(),
                );
                turn.session = plan.session.clone();
                turn.space = plan.space.clone().filter(|_| plan.write_space);
                turn.model = model.clone();
                turn.user = user;
                memory_turn = Some((plan, turn));
            }
        }
    }
    // Budgets: the request's largest cost (recalled memory included) reserved, all or
    // nothing.
    // The prompt as forwarded (recalled memory included), measured once for the
    // estimate (an upstream that reports no counts) and the budget reservation.
    let prompt = if s.metering.is_some() || s.budgets.is_some() {
        parsed.as_ref().map_or(body.len(), metering::prompt_bytes)
    } else {
        0
    };
    let prompt_estimate = if parsed.is_some() {
        metering::estimate(prompt)
    } else {
        0
    };
    if let Some(b) = &s.budgets {
        match b
            .reserve(&principal, path, parsed.as_mut(), prompt, memory::now_ms())
            .await
        {
            Ok(None) => {}
            Ok(Some((r, set_max))) => {
                pending.reservation = Some(r);
                body_changed |= set_max;
            }
            Err(((status, code, message, retry_after), reason)) => {
                s.metrics.budget_refusal(match reason {
                    Some(oba_budget::Reason::Requests) => "requests",
                    Some(_) => "tokens",
                    None => "unavailable",
                });
                let mut r = fail(status, code, &message);
                if let Some(v) =
                    retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
                {
                    r.headers_mut().insert("retry-after", v);
                }
                return r;
            }
        }
    }
    let body = match parsed.as_ref().filter(|_| body_changed) {
        Some(v) => serde_json::to_vec(v).unwrap_or_default().into(),
        None => body,
    };
    // 4. A connection to the upstream, waited for (at most the first-byte timeout)
    // when all are busy, and held until the response body ends: a stream holds its
    // connection to the end. Before the stamp, so a wait does not age it.
    let slots = &s.upstream_slots[&upstream.name];
    let wait = Duration::from_secs(s.config.first_byte_timeout_secs);
    let waiting = slots.wait();
    let got = tokio::time::timeout(wait, slots.permits.clone().acquire_owned()).await;
    drop(waiting);
    let slot = match got {
        Ok(Ok(permit)) => permit,
        _ => {
            slots.saturated();
            let mut r = fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_saturated",
                "every connection to the model server stayed busy",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return r;
        }
    };
    // 5. The stamp.
    let target = format!(
        "{}{}",
        upstream.url.trim_end_matches('/'),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or(path)
    );
    let session = headers
        .get("x-attach-session")
        .and_then(|v| v.to_str().ok())
        .filter(|v| memory::valid_label(v))
        .map(str::to_owned);
    let stamped = match s.stamp.stamp(
        &method,
        &target,
        &principal,
        session.as_deref(),
        &request_id,
        &body,
        now(),
    ) {
        Ok(h) => h,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, "stamp_failed", &e),
    };
    // 6. Forward.
    let mut req = s.http.request(method.clone(), &target);
    for (name, value) in &headers {
        let n = name.as_str();
        let credential = matches!(
            n,
            "authorization" | "signature" | "signature-input" | "signature-agent"
        );
        if HOP_BY_HOP.contains(&n)
            || n.starts_with("x-attach-")
            || n == "content-length"
            || n == "content-digest"
            || n == "traceparent"
            || (credential && !s.config.forward_credentials)
        {
            continue;
        }
        req = req.header(name, value);
    }
    for (n, v) in stamped {
        req = req.header(n, v);
    }
    // W3C trace context: the caller's trace continues through this hop.
    req = req.header("traceparent", ids.traceparent.as_str());
    let timeout = || {
        fail(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the model server did not answer in time",
        )
    };
    let resp = match tokio::time::timeout(wait, req.body(body).send()).await {
        Err(_) => return timeout(),
        Ok(Err(e)) if e.is_timeout() => return timeout(),
        Ok(Err(_)) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the model server cannot be reached",
            )
        }
        Ok(Ok(r)) => r,
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        // The request id is the gateway's (it is in the stamp); the upstream's is dropped.
        // Content-Length is kept: the body passes through unchanged, and a known length
        // lets the response go out in one write instead of chunked frames.
        if HOP_BY_HOP.contains(&name.as_str())
            || name.as_str() == "x-request-id"
            // The body changes when the gateway removes the usage chunk it asked for.
            || (strip_usage && name.as_str() == "content-length")
        {
            continue;
        }
        out = out.header(name, value);
    }
    out = out.header(HeaderName::from_static("x-request-id"), request_id.as_str());
    // Streamed back chunk by chunk, never buffered. With memory or metering, the reply
    // and the token counts are read from the chunks as they pass, and the turn and the
    // usage record are queued when the body ends (or the client goes away).
    let status = resp.status().as_u16();
    let success = resp.status().is_success();
    let ttfb = started.elapsed();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = futures_util::StreamExt::map(resp.bytes_stream(), move |chunk| {
        let _held = &slot;
        chunk
    });
    let turn = s
        .memory
        .as_ref()
        .zip(memory_turn.filter(|_| success))
        .map(|(m, (_, turn))| (m.writer.clone(), turn));
    s.metrics.upstream_ttfb(metrics::route_label(path), ttfb);
    let meters = s.metrics.clone();
    let reservation = s
        .budgets
        .as_ref()
        .zip(pending.reservation.take())
        .map(|(b, r)| (b.limiter.clone(), r));
    let record = s
        .metering
        .as_ref()
        .zip(pending.meter.take())
        .map(|(m, mut r)| {
            r.upstream_ttfb_us = Some(ttfb.as_micros() as u64);
            (m.outbox.clone(), r)
        });
    let body = if turn.is_none() && record.is_none() && reservation.is_none() {
        Body::from_stream(stream)
    } else {
        let framing = chat::Framing::of(&content_type);
        let max = s
            .memory
            .as_ref()
            .map_or(256 * 1024, |m| m.config.max_turn_bytes);
        let parser = chat::Reassembler::new(chat::ChatRoute::of(path), framing, max);
        // A client leaving early: the rest is read for exact counts (billing, budgets).
        let drain = (s.config.disconnect_drain_secs > 0
            && (record.is_some() || reservation.is_some()))
        .then(|| tap::Drain {
            limit: Duration::from_secs(s.config.disconnect_drain_secs),
            stop: s.closing.clone(),
        });
        let on_end = move |seen: tap::Seen| {
            if let Some((writer, mut turn)) = turn {
                turn.assistant = seen.reply.text.clone();
                turn.complete = seen.reply.complete;
                if !turn.user.is_empty() || !turn.assistant.is_empty() {
                    writer.send(turn);
                }
            }
            // Tokens used: the upstream's count, else the estimate (never output for an
            // upstream error).
            let (prompt, completion) = match seen.reply.counts {
                Some(c) => (c.prompt, if success { c.completion } else { 0 }),
                // Cut text (or an answer too large to keep): the bytes sent are the
                // upper bound.
                None if success => (
                    prompt_estimate,
                    metering::estimate(if seen.reply.truncated {
                        seen.bytes_out as usize
                    } else {
                        seen.reply.text.len()
                    }),
                ),
                None => (0, 0),
            };
            meters.tokens(model.as_deref(), prompt, completion);
            if !seen.ended {
                meters.disconnect(seen.reply.counts.is_some());
            }
            if let Some((limiter, r)) = reservation {
                budget::settle(limiter, r, prompt + completion);
            }
            if let Some((outbox, mut r)) = record {
                r.status = status;
                r.streamed = framing != chat::Framing::Json;
                r.cancelled = !seen.ended;
                r.bytes_out = seen.bytes_out;
                r.latency_us = started.elapsed().as_micros() as u64;
                r.exact = seen.reply.counts.is_some() || !success;
                r.prompt_tokens = prompt;
                r.completion_tokens = completion;
                outbox.send(r);
            }
        };
        Body::from_stream(tap::Tap::new(
            Box::pin(stream),
            parser,
            strip_usage,
            length,
            drain,
            Box::new(on_end),
        ))
    };
    out.body(body).unwrap_or_else(|_| {
        fail(
            StatusCode::BAD_GATEWAY,
            "upstream_invalid",
            "invalid upstream response",
        )
    })
}
