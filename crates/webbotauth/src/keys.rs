//! Agent keys: public JWK validation, RFC 7638 thumbprints, the known test keys, and the
//! [`KeyLookup`] trait through which a verifier finds a key by (agent URL, thumbprint).

use std::collections::HashMap;
use std::sync::Arc;

use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, VerifyingKey};

use crate::agent::AgentRef;
use crate::Error;

/// Thumbprints of the RFC 9421 Appendix B.1 example keys, which are public and so prove
/// nothing. They are refused unless a policy allows them (for conformance vectors).
pub const KNOWN_TEST_KEY_THUMBPRINTS: [&str; 4] = [
    "BHj8s0GPnMEQtkaULIM-PLgEhLBbuGUQ1vMxmBWZzEo", // test-key-rsa (B.1.1)
    "oD0HwocPBSfpNy5W3bpJeyFGY_IQ_YpqxSjQ3Yd-CLA", // test-key-rsa-pss (B.1.2)
    "ydQXMtvbsOsZyFir-Y7A8t7fKEM1gbKPvyFkdpu4fvI", // test-key-ecc-p256 (B.1.3)
    "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U", // test-key-ed25519 (B.1.4)
];

/// Is this thumbprint one of the published example keys?
pub fn is_known_test_key(thumbprint: &str) -> bool {
    KNOWN_TEST_KEY_THUMBPRINTS.contains(&thumbprint)
}

/// The algorithm to use a JWK with under Web Bot Auth, when it must be given explicitly:
/// an RSA key without `alg` is `rsa-pss-sha512` (the profile's RSA algorithm); for every
/// other key `None`, so the JWK's own `kty` / `crv` / `alg` decide.
pub fn profile_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    (jwk.kty == "RSA" && jwk.alg.is_none()).then_some(Algorithm::RsaPssSha512)
}

/// A validated public key of an agent, decoded once.
#[derive(Debug)]
pub struct AgentKey {
    /// RFC 7638 thumbprint (the Web Bot Auth `keyid`).
    pub thumbprint: String,
    /// The public JWK as published.
    pub jwk: Jwk,
    /// The decoded key.
    pub key: VerifyingKey,
}

impl AgentKey {
    /// Validates a public JWK: a supported asymmetric key type, right lengths and curve,
    /// no private members. With `require_kid_thumbprint`, a `kid` must be present and equal
    /// the thumbprint (what key directories must do). RSA keys without `alg` are taken as
    /// `rsa-pss-sha512`, the algorithm Web Bot Auth uses.
    pub fn from_public_jwk(jwk: &Jwk, require_kid_thumbprint: bool) -> Result<Self, Error> {
        if jwk.kty == "oct" {
            return Err(Error::Key("symmetric keys cannot identify an agent".into()));
        }
        if jwk.is_private() || jwk.dp.is_some() || jwk.dq.is_some() || jwk.qi.is_some() {
            return Err(Error::Key(
                "a public key was expected but the JWK has private members".into(),
            ));
        }
        let thumbprint = jwk.thumbprint().map_err(|e| Error::Key(e.to_string()))?;
        if require_kid_thumbprint && jwk.kid.as_deref() != Some(thumbprint.as_str()) {
            return Err(Error::Key(format!(
                "kid {:?} is not the key's thumbprint {thumbprint}",
                jwk.kid.as_deref().unwrap_or_default()
            )));
        }
        let alg = profile_algorithm(jwk);
        let key = jwk
            .verifying_key(alg)
            .map_err(|e| Error::Key(e.to_string()))?
            .with_key_id(thumbprint.clone());
        Ok(AgentKey {
            thumbprint,
            jwk: jwk.clone(),
            key,
        })
    }
}

/// Why a key could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The agent publishes no key with this thumbprint.
    NotFound,
    /// The agent's keys could not be obtained (network, format, policy).
    Unavailable(String),
}

/// Finds an agent's key by the pair (agent, thumbprint), never by keyid alone.
pub trait KeyLookup: Send + Sync {
    /// The key with `thumbprint`, published by `agent` (`None`: a signature without
    /// `Signature-Agent`, whose keys must be configured locally).
    fn lookup(
        &self,
        agent: Option<&AgentRef>,
        thumbprint: &str,
    ) -> Result<Arc<AgentKey>, LookupError>;
}

/// Keys known in advance (configuration, tests), keyed by (agent fetch URL, thumbprint).
#[derive(Debug, Default)]
pub struct StaticKeys {
    keys: HashMap<(Option<String>, String), Arc<AgentKey>>,
}

impl StaticKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key published by `agent` (`None`: usable without `Signature-Agent`).
    pub fn insert(&mut self, agent: Option<&AgentRef>, key: AgentKey) {
        let a = agent.map(|a| a.fetch_url().to_string());
        self.keys.insert((a, key.thumbprint.clone()), Arc::new(key));
    }
}

impl KeyLookup for StaticKeys {
    fn lookup(
        &self,
        agent: Option<&AgentRef>,
        thumbprint: &str,
    ) -> Result<Arc<AgentKey>, LookupError> {
        let a = agent.map(|a| a.fetch_url().to_string());
        self.keys
            .get(&(a, thumbprint.to_owned()))
            .cloned()
            .ok_or(LookupError::NotFound)
    }
}
