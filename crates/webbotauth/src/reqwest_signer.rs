//! Outbound signing for reqwest (feature `reqwest-middleware`): every request a client
//! sends becomes a Web Bot Auth signed request.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use oba_webbotauth::{reqwest_signer::signed_client, WebBotAuthSigner};
//! # let jwk = oba_httpsig::jwk::Jwk::generate(oba_httpsig::Algorithm::Ed25519)?;
//! let signer = WebBotAuthSigner::new(&jwk)?.with_signature_agent("https://bot.example")?;
//! let client = signed_client(reqwest::Client::new(), signer);
//! let page = client.get("https://site.example/").send().await?.text().await?;
//! # let _ = page;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};

use crate::WebBotAuthSigner;

/// A reqwest middleware that signs each request with a [`WebBotAuthSigner`].
#[derive(Debug, Clone)]
pub struct SigningMiddleware {
    signer: Arc<WebBotAuthSigner>,
}

impl SigningMiddleware {
    /// Signs with `signer`.
    pub fn new(signer: WebBotAuthSigner) -> Self {
        SigningMiddleware {
            signer: Arc::new(signer),
        }
    }
}

/// `client`, with every request signed by `signer`.
pub fn signed_client(client: reqwest::Client, signer: WebBotAuthSigner) -> ClientWithMiddleware {
    ClientBuilder::new(client)
        .with(SigningMiddleware::new(signer))
        .build()
}

/// Signs a reqwest request in place (what the middleware does). Streaming bodies cannot
/// be digested before they are sent and are refused.
pub fn sign_request(
    signer: &WebBotAuthSigner,
    req: &mut reqwest::Request,
    now: i64,
) -> Result<(), crate::Error> {
    let body: Vec<u8> = match req.body() {
        None => Vec::new(),
        Some(b) => b
            .as_bytes()
            .ok_or_else(|| crate::Error::Key("streaming request bodies cannot be signed".into()))?
            .to_vec(),
    };
    let mut head = http::Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req
        .url()
        .as_str()
        .parse()
        .map_err(|e| crate::Error::Key(format!("URL: {e}")))?;
    *head.headers_mut() = req.headers().clone();
    for (name, value) in signer.sign(&head, &body, now)? {
        let v =
            http::HeaderValue::from_str(&value).map_err(|e| crate::Error::Key(e.to_string()))?;
        req.headers_mut().append(name, v);
    }
    Ok(())
}

#[async_trait::async_trait]
impl Middleware for SigningMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        sign_request(&self.signer, &mut req, crate::unix_now())
            .map_err(reqwest_middleware::Error::middleware)?;
        next.run(req, extensions).await
    }
}
