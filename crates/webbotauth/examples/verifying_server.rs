//! A website that only answers verified bots: axum + [`WebBotAuthLayer`] in require mode.
//!
//! ```sh
//! cargo run -p oba-webbotauth --example verifying_server -- 127.0.0.1:8080
//! # add --allow-loopback to accept agents whose directories are on this machine (tests)
//! ```
//!
//! `GET /` answers with the verified agent as JSON; unsigned or badly signed requests get
//! `401` with `Accept-Signature`, malformed signature fields `400`.

use std::sync::Arc;

use axum::{extract::Extension, http::header, response::IntoResponse, routing::get, Router};
use oba_webbotauth::client::{ClientConfig, DirectoryClient, Verifier};
use oba_webbotauth::layer::{Mode, WebBotAuthLayer};
use oba_webbotauth::nonce::InMemoryNonceStore;
use oba_webbotauth::{Outcome, VerifyPolicy};

/// The app: `/` greets the verified agent.
pub(crate) fn app(allow_loopback: bool) -> Router {
    let client = DirectoryClient::new(ClientConfig {
        allow_loopback,
        ..ClientConfig::default()
    })
    .expect("directory client");
    let verifier = Verifier::new(VerifyPolicy {
        allow_http_loopback: allow_loopback,
        ..VerifyPolicy::default()
    })
    .with_client(Arc::new(client))
    .with_nonce_store(Arc::new(InMemoryNonceStore::default()));
    let mut layer = WebBotAuthLayer::new(Arc::new(verifier), Mode::Require);
    if allow_loopback {
        layer = layer.plain_http();
    }
    Router::new().route("/", get(hello)).layer(layer)
}

async fn hello(Extension(outcome): Extension<Outcome>) -> impl IntoResponse {
    let body = match outcome {
        Outcome::Verified(v) => serde_json::json!({
            "outcome": "verified",
            "agent": v.agent.map(|a| a.url.to_string()),
            "thumbprint": v.thumbprint,
        }),
        other => serde_json::json!({ "outcome": other.kind() }),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Serves the app on `listener` until the process ends.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    allow_loopback: bool,
) -> std::io::Result<()> {
    axum::serve(listener, app(allow_loopback)).await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let allow_loopback = args.any(|a| a == "--allow-loopback");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    serve(listener, allow_loopback).await
}
