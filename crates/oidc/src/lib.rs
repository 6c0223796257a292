//! # oba-oidc
//!
//! Validates OIDC ID and access tokens (JWTs, RFC 7519) from configured issuers, with the
//! RFC 8725 practices: the issuer is looked up from `iss` among the configured ones only;
//! discovery (`/.well-known/openid-configuration`, whose `issuer` must match) gives the
//! JWKS, cached five minutes and refetched on an unknown `kid` at most every 30 s; the
//! algorithm comes from an allow-list (`RS256`, `PS512`, `ES256`, `ES384`, `EdDSA`:
//! never `none`, never HMAC, and the key type must fit it); `aud`, `exp`, `nbf` are
//! checked with 60 s of skew; required scopes are enforced. Signatures are verified with
//! `oba-httpsig` keys (JWS and RFC 9421 share the primitives, ECDSA as `r‖s`).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Verifier};

/// A trusted issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The `iss` value, also the discovery base URL.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Scopes the token must carry (`scope` / `scp`), if any.
    pub required_scopes: Vec<String>,
    /// Claims the token must carry with exactly these values.
    pub required_claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not allowed.
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `iss` is not a configured issuer.
    #[error("issuer not trusted")]
    UnknownIssuer,
    /// No key for the token.
    #[error("signing key not found")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// `aud` is not ours.
    #[error("token audience not accepted")]
    Audience,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Not yet valid.
    #[error("token not yet valid")]
    NotYetValid,
    /// A claim is missing or wrong.
    #[error("claim: {0}")]
    Claim(String),
    /// The issuer's documents could not be fetched.
    #[error("issuer unavailable: {0}")]
    Unavailable(String),
}

impl OidcError {
    /// A stable code for logs and JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::Malformed => "malformed_token",
            OidcError::AlgorithmNotAllowed => "algorithm_not_allowed",
            OidcError::UnknownIssuer => "unknown_issuer",
            OidcError::UnknownKey => "unknown_key",
            OidcError::BadSignature => "bad_signature",
            OidcError::Audience => "wrong_audience",
            OidcError::Expired => "expired",
            OidcError::NotYetValid => "not_yet_valid",
            OidcError::Claim(_) => "invalid_claim",
            OidcError::Unavailable(_) => "issuer_unavailable",
        }
    }
}

/// A validated token.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Its issuer.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `exp`.
    pub expires: i64,
    /// Scopes (`scope` split on spaces, or `scp`).
    pub scopes: Vec<String>,
    /// All claims.
    pub claims: serde_json::Value,
}

impl Validated {
    /// A client-credentials (machine) token: `sub` is the client itself.
    pub fn is_client_credentials(&self) -> bool {
        let c = &self.claims;
        c["gty"].as_str() == Some("client-credentials")
            || [c["client_id"].as_str(), c["azp"].as_str()].contains(&Some(self.subject.as_str()))
                && c["email"].is_null()
    }
}

/// Validates tokens from the configured issuers.
pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    allow_http: bool,
    cache: Mutex<HashMap<String, (Instant, Vec<Jwk>)>>,
    /// JWKS lookups answered from the cache / fetched (for metrics).
    hits: std::sync::atomic::AtomicU64,
    fetches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

const JWKS_TTL: Duration = Duration::from_secs(300);
const REFETCH_MIN: Duration = Duration::from_secs(30);
const SKEW: i64 = 60;

fn b64(s: &str) -> Result<Vec<u8>, OidcError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| OidcError::Malformed)
}

fn jose_alg(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RsaV15Sha256),
        "PS512" => Some(Algorithm::RsaPssSha512),
        "ES256" => Some(Algorithm::EcdsaP256Sha256),
        "ES384" => Some(Algorithm::EcdsaP384Sha384),
        "EdDSA" => Some(Algorithm::Ed25519),
        _ => None,
    }
}

impl OidcVerifier {
    /// A verifier for `issuers`. `allow_http` lets http issuers through (tests only).
    pub fn new(issuers: Vec<Issuer>, allow_http: bool) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(OidcVerifier {
            issuers,
            http,
            allow_http,
            cache: Mutex::new(HashMap::new()),
            hits: Default::default(),
            fetches: Default::default(),
        })
    }

    /// JWKS lookups answered from the cache, and JWKS fetches (discovery + keys) made:
    /// `(hits, fetches)`.
    pub fn cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.fetches.load(Relaxed))
    }

    /// The configured issuers.
    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// Does this look like a JWT (three base64url parts)?
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.len() > 20
    }

    async fn fetch_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        let u = url::Url::parse(url).map_err(|e| OidcError::Unavailable(e.to_string()))?;
        if u.scheme() != "https" && !self.allow_http {
            return Err(OidcError::Unavailable(
                "issuer documents must be fetched over https".into(),
            ));
        }
        let resp = self
            .http
            .get(u)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(OidcError::Unavailable(format!("status {}", resp.status())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        if bytes.len() > 256 * 1024 {
            return Err(OidcError::Unavailable("document too large".into()));
        }
        serde_json::from_slice(&bytes).map_err(|e| OidcError::Unavailable(e.to_string()))
    }

    async fn keys(&self, issuer: &Issuer, kid: Option<&str>) -> Result<Vec<Jwk>, OidcError> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&issuer.issuer).cloned());
        if let Some((at, keys)) = &cached {
            let has_kid = kid.is_none_or(|k| keys.iter().any(|j| j.kid.as_deref() == Some(k)));
            if at.elapsed() < JWKS_TTL && (has_kid || at.elapsed() < REFETCH_MIN) {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(keys.clone());
            }
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let discovery = self
            .fetch_json(&format!(
                "{}/.well-known/openid-configuration",
                issuer.issuer.trim_end_matches('/')
            ))
            .await?;
        if discovery["issuer"].as_str() != Some(issuer.issuer.as_str()) {
            return Err(OidcError::Unavailable(
                "discovery document names another issuer".into(),
            ));
        }
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| OidcError::Unavailable("discovery has no jwks_uri".into()))?;
        let jwks = self.fetch_json(jwks_uri).await?;
        let keys: Vec<Jwk> = jwks["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| serde_json::from_value(k.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut c) = self.cache.lock() {
            c.insert(issuer.issuer.clone(), (Instant::now(), keys.clone()));
        }
        Ok(keys)
    }

    /// Validates `token` at `now` (unix seconds).
    pub async fn validate(&self, token: &str, now: i64) -> Result<Validated, OidcError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(OidcError::Malformed);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&b64(h)?).map_err(|_| OidcError::Malformed)?;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64(p)?).map_err(|_| OidcError::Malformed)?;
        let sig = b64(s)?;
        let alg = header["alg"]
            .as_str()
            .and_then(jose_alg)
            .ok_or(OidcError::AlgorithmNotAllowed)?;
        let iss = claims["iss"].as_str().unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(OidcError::UnknownIssuer)?;
        let kid = header["kid"].as_str();
        let keys = self.keys(issuer, kid).await?;
        let jwk = keys
            .iter()
            .filter(|k| k.kty != "oct")
            .find(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .ok_or(OidcError::UnknownKey)?;
        let key = jwk
            .public()
            .and_then(|p| p.verifying_key(Some(alg)))
            .map_err(|_| OidcError::AlgorithmNotAllowed)?;
        key.verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| OidcError::BadSignature)?;
        let aud_ok = match &claims["aud"] {
            serde_json::Value::String(a) => a == &issuer.audience,
            serde_json::Value::Array(a) => a
                .iter()
                .any(|x| x.as_str() == Some(issuer.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(OidcError::Audience);
        }
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| OidcError::Claim("exp missing".into()))?;
        if exp + SKEW < now {
            return Err(OidcError::Expired);
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf - SKEW > now) {
            return Err(OidcError::NotYetValid);
        }
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::Claim("sub missing".into()))?
            .to_owned();
        let scopes: Vec<String> = match (&claims["scope"], &claims["scp"]) {
            (serde_json::Value::String(s), _) => s.split_whitespace().map(str::to_owned).collect(),
            (_, serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(missing) = issuer.required_scopes.iter().find(|r| !scopes.contains(r)) {
            return Err(OidcError::Claim(format!("scope {missing} required")));
        }
        if let Some((name, _)) = issuer
            .required_claims
            .iter()
            .find(|(k, v)| claims.get(k.as_str()) != Some(v))
        {
            return Err(OidcError::Claim(format!("claim {name} required")));
        }
        Ok(Validated {
            issuer: issuer.issuer.clone(),
            subject,
            expires: exp,
            scopes,
            claims,
        })
    }
}
