//! A tower [`Layer`] that verifies inbound requests (feature `tower`; works in axum).
//!
//! In [`Mode::Observe`] every request passes and carries its [`Outcome`] in its extensions.
//! In [`Mode::Require`] only verified requests pass; the others get `401` with an
//! `Accept-Signature` field saying what to sign (or `400` when a signature field is
//! malformed), with a JSON body `{"error": {"code": "...", "message": "..."}}`.
//!
//! The layer verifies the signature over the request head. When `content-digest` is
//! covered, the digest's match with the body is the application's to check as the body
//! streams (`oba_httpsig::digest::Hasher`); the layer does not buffer bodies.
//!
//! ```no_run
//! # async fn run() {
//! use std::sync::Arc;
//! use oba_webbotauth::{client::{DirectoryClient, ClientConfig, Verifier}, layer::{WebBotAuthLayer, Mode}, VerifyPolicy};
//! let client = Arc::new(DirectoryClient::new(ClientConfig::default()).unwrap());
//! let verifier = Arc::new(Verifier::new(VerifyPolicy::default()).with_client(client));
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello, verified bot" }))
//!     .layer(WebBotAuthLayer::new(verifier, Mode::Require));
//! # let _ = app;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::Verifier;
use crate::Outcome;

/// What the layer does with requests that do not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Let everything through; record the outcome in the request extensions.
    Observe,
    /// Only verified requests pass.
    Require,
}

/// The `Accept-Signature` a `401` carries: what a Web Bot Auth signer should send.
pub const ACCEPT_SIGNATURE: &str = r#"sig1=("@authority" "@method" "@path" "@query" "signature-agent";key="sig1");created;expires;keyid;nonce;tag="web-bot-auth""#;

/// Verifies Web Bot Auth signatures of inbound requests.
#[derive(Clone)]
pub struct WebBotAuthLayer {
    verifier: Arc<Verifier>,
    mode: Mode,
    scheme: &'static str,
}

impl WebBotAuthLayer {
    /// A layer using `verifier`, in `mode`. Requests are taken as received over https
    /// (`@scheme`, `@target-uri`); see [`WebBotAuthLayer::plain_http`].
    pub fn new(verifier: Arc<Verifier>, mode: Mode) -> Self {
        WebBotAuthLayer {
            verifier,
            mode,
            scheme: "https",
        }
    }

    /// Requests arrive over plain http (tests, or TLS terminated with an http hop
    /// that the signer also signed for).
    pub fn plain_http(mut self) -> Self {
        self.scheme = "http";
        self
    }
}

impl<S> Layer<S> for WebBotAuthLayer {
    type Service = WebBotAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WebBotAuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`WebBotAuthLayer`].
#[derive(Clone)]
pub struct WebBotAuthService<S> {
    inner: S,
    layer: WebBotAuthLayer,
}

fn rejection<B: From<String>>(status: StatusCode, code: &str, message: &str) -> Response<B> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            "accept-signature",
            HeaderValue::from_static(ACCEPT_SIGNATURE),
        );
    }
    resp
}

impl<S, B, ResBody> Service<Request<B>> for WebBotAuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Take the ready service; leave a fresh clone behind (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            // Verify over the request head only: bodies are not `Sync` and are not needed.
            let mut head = Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.headers_mut() = req.headers().clone();
            head.extensions_mut()
                .insert(oba_httpsig::http::Scheme(layer.scheme.to_owned()));
            let outcome = layer.verifier.verify(&head, crate::unix_now()).await;
            if layer.mode == Mode::Require {
                match &outcome {
                    Outcome::Verified(_) => {}
                    Outcome::Invalid(r) if r.is_malformed() => {
                        return Ok(rejection(StatusCode::BAD_REQUEST, r.code, &r.message));
                    }
                    Outcome::Invalid(r) | Outcome::Unverified(r) => {
                        return Ok(rejection(StatusCode::UNAUTHORIZED, r.code, &r.message));
                    }
                }
            }
            req.extensions_mut().insert(outcome);
            inner.call(req).await
        })
    }
}
