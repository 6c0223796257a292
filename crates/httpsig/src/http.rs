//! Adapters for `http::Request` / `http::Response` (feature `http`).
//!
//! Both implement [`HttpMessage`], so [`crate::sign`], [`crate::verify`] and
//! [`crate::signature_base`] take them directly. Where the values come from:
//!
//! * `@authority`: the `Host` header (HTTP/1.1), else the URI's authority (which is where
//!   HTTP/2 and HTTP/3 servers put `:authority`, and where clients write it).
//! * `@scheme`: the URI's scheme, else a [`Scheme`] request extension that the server
//!   inserts (it knows whether the connection was TLS). With neither, covering `@scheme`
//!   or `@target-uri` fails rather than guessing.
//! * Trailers are not part of `http::Request`; use [`crate::Message`] for `;tr`.
//!
//! ```
//! use oba_httpsig::{http::add_signature, *};
//! let key = SigningKey::generate(Algorithm::Ed25519)?;
//! let mut req = ::http::Request::post("https://api.example/v1/items?x=1")
//!     .header("content-type", "application/json")
//!     .body(())
//!     .unwrap();
//! let params = SignatureParams::new(vec![
//!     Component::derived(Derived::Method),
//!     Component::derived(Derived::TargetUri),
//!     Component::field("content-type")?,
//! ])?
//! .with_created(1_700_000_000)?;
//! let sig = sign(&req, None, "sig1", params, &key)?;
//! add_signature(req.headers_mut(), &sig)?;
//! verify(&req, None, Some("sig1"), &key.verifying_key(), &Policy::default(), 1_700_000_001)?;
//! # Ok::<(), oba_httpsig::Error>(())
//! ```

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response};

use crate::error::Error;
use crate::message::HttpMessage;
use crate::Signature;

/// The scheme a server received a request over, inserted as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme(pub String);

impl<B> HttpMessage for Request<B> {
    fn method(&self) -> Option<&str> {
        Some(Request::method(self).as_str())
    }
    fn scheme(&self) -> Option<&str> {
        self.uri()
            .scheme_str()
            .or_else(|| self.extensions().get::<Scheme>().map(|s| s.0.as_str()))
    }
    fn authority(&self) -> Option<&str> {
        self.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri().authority().map(|a| a.as_str()))
    }
    fn path(&self) -> Option<&str> {
        if Request::method(self) == Method::CONNECT || self.uri().path() == "*" {
            None
        } else {
            Some(self.uri().path())
        }
    }
    fn query(&self) -> Option<&str> {
        self.uri().query()
    }
    fn request_target(&self) -> Option<&str> {
        if Request::method(self) == Method::CONNECT {
            self.uri().authority().map(|a| a.as_str())
        } else if self.uri().path() == "*" {
            Some("*")
        } else {
            None
        }
    }
    fn status(&self) -> Option<u16> {
        None
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for v in self.headers().get_all(name) {
            f(v.as_bytes());
        }
    }
}

impl<B> HttpMessage for Response<B> {
    fn method(&self) -> Option<&str> {
        None
    }
    fn scheme(&self) -> Option<&str> {
        None
    }
    fn authority(&self) -> Option<&str> {
        None
    }
    fn path(&self) -> Option<&str> {
        None
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn status(&self) -> Option<u16> {
        Some(Response::status(self).as_u16())
    }
    fn field_lines(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for v in self.headers().get_all(name) {
            f(v.as_bytes());
        }
    }
}

/// Appends `Signature-Input` and `Signature` field lines for `sig` (existing signatures
/// are kept: the lines combine into one Dictionary).
pub fn add_signature(headers: &mut HeaderMap, sig: &Signature) -> Result<(), Error> {
    let input = HeaderValue::from_str(&sig.signature_input())
        .map_err(|_| Error::malformed("Signature-Input is not a valid header value"))?;
    let value = HeaderValue::from_str(&sig.signature())
        .map_err(|_| Error::malformed("Signature is not a valid header value"))?;
    headers.append("signature-input", input);
    headers.append("signature", value);
    Ok(())
}
