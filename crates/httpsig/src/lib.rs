//! # oba-httpsig
//!
//! HTTP Message Signatures ([RFC 9421]) and Digest Fields ([RFC 9530]), complete and
//! sans-IO: no async, no network, no clock of its own (time is always a parameter).
//!
//! * Every derived component (`@method @target-uri @authority @scheme @request-target
//!   @path @query @query-param @status`), field parameters `sf key bs req tr`, signature
//!   parameters in the order received, several signatures per message, `Accept-Signature`.
//! * Every registered algorithm: `ed25519`, `ecdsa-p256-sha256`, `ecdsa-p384-sha384`,
//!   `hmac-sha256` (constant-time), `rsa-pss-sha512`, `rsa-v1_5-sha256` (feature `rsa`).
//!   Keys from JWK (feature `jwk`) and PEM, or any `signature::Signer` / `Verifier`.
//! * Verification under a [`Policy`], every rejection with a typed [`Reason`].
//! * Adapters for `http::Request` / `http::Response` (feature `http`).
//!
//! The design decisions and the attacks the library prevents are in [`manual`].
//!
//! ## Sign a request
//!
//! ```
//! use oba_httpsig::*;
//! let key = SigningKey::generate(Algorithm::Ed25519)?.with_key_id("bot-key-1");
//! let body = br#"{"hello": "world"}"#;
//! let mut msg = Message::request("POST", "/foo?param=Value&Pet=dog")?
//!     .with_header("Host", "example.com")
//!     .with_header("Content-Type", "application/json")
//!     .with_body(body.to_vec());
//! let digest = digest::DigestField::compute(&[digest::DigestAlgorithm::Sha512], body);
//! msg.append_header("Content-Digest", digest.to_string());
//! let components = ["@method", "@authority", "@path", "@query", "content-digest", "content-type"]
//!     .iter()
//!     .map(|c| c.parse())
//!     .collect::<Result<Vec<Component>, _>>()?;
//! let params = SignatureParams::new(components)?
//!     .with_created(1_700_000_000)?
//!     .with_keyid("bot-key-1")?;
//! let sig = sign(&msg, None, "sig1", params, &key)?;
//! msg.append_header("Signature-Input", sig.signature_input());
//! msg.append_header("Signature", sig.signature());
//! # Ok::<(), oba_httpsig::Error>(())
//! ```
//!
//! ## Verify with a policy
//!
//! ```
//! use oba_httpsig::*;
//! # let key = SigningKey::generate(Algorithm::Ed25519)?.with_key_id("bot-key-1");
//! # let msg = Message::request("GET", "/")?.with_header("Host", "example.com");
//! # let p = SignatureParams::new(vec![Component::derived(Derived::Authority)])?
//! #     .with_created(1_700_000_000)?.with_keyid("bot-key-1")?.with_tag("my-app")?;
//! # let sig = sign(&msg, None, "sig1", p, &key)?;
//! # let msg = msg.with_header("Signature-Input", sig.signature_input())
//! #     .with_header("Signature", sig.signature());
//! let public = key.verifying_key(); // decoded once, reused for every request
//! let policy = Policy::default()
//!     .allow_algorithms(&[Algorithm::Ed25519, Algorithm::EcdsaP256Sha256])
//!     .require_component(Component::derived(Derived::Authority))
//!     .require_tag("my-app")
//!     .max_age(300)
//!     .clock_skew(5);
//! let now = 1_700_000_010; // from your clock
//! let verified = verify(&msg, None, None, &public, &policy, now)?;
//! assert_eq!(verified.label, "sig1");
//! # Ok::<(), oba_httpsig::Error>(())
//! ```
//!
//! [RFC 9421]: https://www.rfc-editor.org/rfc/rfc9421
//! [RFC 9530]: https://www.rfc-editor.org/rfc/rfc9530
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod accept;
mod algorithm;
mod base;
mod component;
pub mod digest;
mod error;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "jwk")]
pub mod jwk;
mod key;
pub mod manual;
mod message;
mod params;
mod sf;
mod sign;
mod verify;

pub use algorithm::Algorithm;
pub use base::{component_value, signature_base};
pub use component::{Component, ComponentName, Derived};
pub use error::{Error, Reason};
pub use key::{ExternalSigner, ExternalVerifier, Signer, SigningKey, Verifier, VerifyingKey};
pub use message::{HttpMessage, Message};
pub use params::{
    parse_signature, parse_signature_input, signature_input_member, signature_member,
    SignatureParams, MAX_COMPONENTS, MAX_SIGNATURES,
};
pub use sign::{random_nonce, sign, Signature};
pub use verify::{
    signatures, verify, verify_signature, KeySource, LabelledEntry, NonceCheck, Policy,
    SignatureEntry, Verified,
};
