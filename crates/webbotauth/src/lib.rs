//! # oba-webbotauth
//!
//! Web Bot Auth: the profile of RFC 9421 HTTP Message Signatures that lets bots and agents
//! prove who they are (draft-meunier-webbotauth-httpsig-protocol-02, which is
//! draft-ietf-webbotauth-httpsig-protocol-00), with key directories and Signature Agent
//! Cards (draft-meunier-webbotauth-registry-03).
//!
//! * A bot signs with [`WebBotAuthSigner`]: `tag="web-bot-auth"`, `keyid` = the JWK
//!   thumbprint, short validity, a nonce, and a `Signature-Agent` dictionary member that
//!   says where its keys are.
//! * A website verifies with [`verify_request`], which gives one of three outcomes:
//!   verified (with who), invalid (a signature failed), unverified (nothing usable).
//!   Keys are looked up by (agent, thumbprint) through [`KeyLookup`]; nonces are checked
//!   only after the signature verified.
//! * Directories ([`directory`]) are parsed with `kid` = thumbprint enforced, and served
//!   signed with [`directory::signed_directory_response`].
//! * With feature `client`, `client::DirectoryClient` fetches keys safely (https only,
//!   SSRF guard after DNS, limits, RFC 9111 caching) and `client::Verifier` verifies with
//!   them; with `tower`, `layer::WebBotAuthLayer` guards an axum app; with
//!   `reqwest-middleware`, `reqwest_signer::signed_client` signs every request of a client.
//!
//! Start from the examples: `examples/verifying_server.rs` (a website that only answers
//! verified bots) and `examples/signed_client.rs` (a bot). In short:
//!
//! ```
//! use oba_webbotauth::*;
//! use oba_httpsig::{jwk::Jwk, Algorithm, Message};
//!
//! // The bot.
//! let private = Jwk::generate(Algorithm::Ed25519)?;
//! let signer = WebBotAuthSigner::new(&private)?.with_signature_agent("https://bot.example")?;
//! let mut req = Message::request("GET", "/article")?.with_header("Host", "news.example");
//! for (name, value) in signer.sign(&req, b"", 1_700_000_000)? {
//!     req.append_header(name, value);
//! }
//!
//! // The website, which knows (or fetched) the bot's directory.
//! let agent = agent::SignatureAgent::parse("sig1=\"https://bot.example\"")?.members[0].resolve(false)?;
//! let mut keys = keys::StaticKeys::new();
//! keys.insert(Some(&agent), keys::AgentKey::from_public_jwk(&private.public()?, false)?);
//! let nonces = nonce::InMemoryNonceStore::default();
//! let outcome = verify_request(&req, &keys, Some(&nonces), &VerifyPolicy::default(), 1_700_000_010);
//! assert_eq!(outcome.kind(), "verified");
//! // The same request again is a replay.
//! let again = verify_request(&req, &keys, Some(&nonces), &VerifyPolicy::default(), 1_700_000_011);
//! assert_eq!(again.kind(), "invalid");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod agent;
pub mod card;
#[cfg(feature = "client")]
pub mod client;
pub mod directory;
pub mod keys;
#[cfg(feature = "tower")]
pub mod layer;
pub mod nonce;
#[cfg(feature = "reqwest-middleware")]
pub mod reqwest_signer;
mod sign;
mod verify;

pub use keys::{AgentKey, KeyLookup, LookupError, StaticKeys};
pub use sign::{WebBotAuthSigner, MAX_VALIDITY_SECS};
pub use verify::{
    parse_signatures, verify_entries, verify_request, Outcome, Rejection, VerifiedAgent,
    VerifyPolicy,
};

/// Unix seconds now: the clock of the I/O shells (client, layer, reqwest signer); the
/// profile itself always takes time as a parameter.
#[cfg(feature = "client")]
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `tag` of a Web Bot Auth request signature.
pub const TAG: &str = "web-bot-auth";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `Signature-Agent` value or member cannot be used.
    #[error("Signature-Agent: {0}")]
    SignatureAgent(String),
    /// A key is invalid for Web Bot Auth.
    #[error("key: {0}")]
    Key(String),
    /// A Signature Agent Card or registry list is invalid.
    #[error("card: {0}")]
    Card(String),
    /// A key directory is invalid.
    #[error("directory: {0}")]
    Directory(String),
    /// An RFC 9421 error.
    #[error(transparent)]
    Signature(#[from] oba_httpsig::Error),
}
