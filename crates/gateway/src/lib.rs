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
//! 4. **the proxy**: pooled keep-alive upstream connections; responses (SSE, NDJSON)
//!    streamed back chunk by chunk; upstream down → 502, timeout → 504, JSON errors with a
//!    request id.
//!
//! Not yet: metrics, `oba up`, the load benchmark (see the issue notes).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use oba_httpsig::digest::DigestField;
use oba_httpsig::jwk::Jwk;

pub mod apikeys;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod replay;
pub mod stamp;

pub use config::GatewayConfig;
pub use identity::{AuthMethod, Principal, PrincipalKind};

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
    metrics: metrics::Metrics,
    config: GatewayConfig,
    auth: identity::Authenticator,
    stamp: stamp::Stamper,
    http: reqwest::Client,
    public_url: String,
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
}

impl Gateway {
    /// Runs until stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

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

/// Builds the pipeline from `config`, binds and serves in the background.
pub async fn start(config: GatewayConfig) -> Result<Gateway, Error> {
    if config.upstreams.is_empty() {
        return Err(Error::Config("at least one upstream is required".into()));
    }
    for u in &config.upstreams {
        url::Url::parse(&u.url).map_err(|e| Error::Config(format!("upstream {}: {e}", u.name)))?;
    }
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
    let client =
        oba_webbotauth::client::DirectoryClient::new(oba_webbotauth::client::ClientConfig {
            allow_loopback: config.allow_insecure_directories,
            ..Default::default()
        })
        .map_err(|e| Error::Config(e.to_string()))?;
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
    .with_client(Arc::new(client));
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
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        .pool_idle_timeout(Duration::from_secs(90))
        .read_timeout(Duration::from_secs(config.idle_timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let stamp_public_jwk = stamp.public_jwk().clone();
    let state = AppState(Arc::new(Inner {
        auth: identity::Authenticator {
            bots: Arc::new(bots),
            services,
            api_keys,
            replay,
            require_nonce: config.require_nonce,
            oidc,
            tenant_claims,
        },
        stamp,
        http,
        public_url,
        config,
        metrics: metrics::Metrics::default(),
    }));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.0.metrics.render() }),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .fallback(proxy)
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener.tap_io(|t| {
                let _ = t.set_nodelay(true);
            }),
            app,
        )
        .await
        {
            log(format_args!("gateway: server error: {e}"));
        }
    });
    Ok(Gateway {
        addr,
        stamp_public_jwk,
        task,
    })
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
    let resp = proxy_inner(&state.0, &mut auth_method, method, uri, headers, body).await;
    state.0.metrics.request(
        route,
        resp.status().as_u16(),
        auth_method,
        started.elapsed(),
    );
    resp
}

async fn proxy_inner(
    s: &Inner,
    auth_method: &mut &'static str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = oba_httpsig::random_nonce();
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
    let scheme = s.public_url.split("://").next().unwrap_or("http");
    let head = identity::head_of(&headers, &method, &uri, scheme);
    let principal = match s.auth.authenticate(&head, !body.is_empty(), now()).await {
        Ok(p) => {
            *auth_method = p.auth_method.as_str();
            p
        }
        Err(r) => {
            s.metrics.auth_failure(&r.code);
            log(format_args!(
                "gateway: {request_id}: authentication refused: {} ({})",
                r.code, r.message
            ));
            return fail(r.status, &r.code, &r.message);
        }
    };
    // A Content-Digest, when sent, must match the body (it may be what the signature covers).
    if let Some(cd) = headers.get("content-digest") {
        let ok = cd
            .to_str()
            .ok()
            .and_then(|v| DigestField::parse(v).ok())
            .is_some_and(|f| f.verify(&body).is_ok());
        if !ok {
            return fail(
                StatusCode::BAD_REQUEST,
                "digest_mismatch",
                "Content-Digest does not match the body",
            );
        }
    }
    // 2. Policy.
    // Only `model` is read: the rest of the body is skipped, not built into a tree.
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    let model = serde_json::from_slice::<ModelOnly>(&body)
        .ok()
        .and_then(|m| m.model);
    if !policy::allows(&s.config.policy, &principal, path, model.as_deref()) {
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
    // 3. The stamp.
    let upstream = upstream_for(&s.config, model.as_deref());
    let target = format!(
        "{}{}",
        upstream.url.trim_end_matches('/'),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or(path)
    );
    let session = headers
        .get("x-attach-session")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
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
    // 4. Forward.
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
            || (credential && !s.config.forward_credentials)
        {
            continue;
        }
        req = req.header(name, value);
    }
    for (n, v) in stamped {
        req = req.header(n, v);
    }
    let send = req.body(body).send();
    let resp =
        match tokio::time::timeout(Duration::from_secs(s.config.first_byte_timeout_secs), send)
            .await
        {
            Err(_) => {
                return fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the model server did not answer in time",
                )
            }
            Ok(Err(e)) if e.is_timeout() => {
                return fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the model server did not answer in time",
                )
            }
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
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "x-request-id" {
            continue;
        }
        out = out.header(name, value);
    }
    out = out.header(HeaderName::from_static("x-request-id"), request_id.as_str());
    // Streamed back chunk by chunk, never buffered.
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| {
            fail(
                StatusCode::BAD_GATEWAY,
                "upstream_invalid",
                "invalid upstream response",
            )
        })
}
