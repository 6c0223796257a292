//! Sign-in with an OIDC ID or access token (a JWT) from a configured issuer: discovery,
//! JWKS (cached, refetched on an unknown `kid` at most every 30 s), `iss` / `aud` / `exp` /
//! `nbf` with 60 s skew, an algorithm allow-list (never `none`, never HMAC), and the
//! subject mapped to an account (created on first sign-in).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Verifier};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{now, AppState};

/// A trusted issuer.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// The `iss` value, also the discovery base URL.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Scopes granted to accounts signed in through this issuer.
    pub scopes: Vec<String>,
}

/// Cached JWKS per issuer.
#[derive(Debug, Default)]
pub struct OidcKeys {
    cache: Mutex<HashMap<String, (Instant, Vec<Jwk>)>>,
}

const JWKS_TTL: Duration = Duration::from_secs(300);
const REFETCH_MIN: Duration = Duration::from_secs(30);

fn b64(s: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| ApiError::unauthorized("malformed token"))
}

fn jose_alg(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RsaV15Sha256),
        "PS512" => Some(Algorithm::RsaPssSha512),
        "ES256" => Some(Algorithm::EcdsaP256Sha256),
        "ES384" => Some(Algorithm::EcdsaP384Sha384),
        "EdDSA" => Some(Algorithm::Ed25519),
        _ => None, // none, HS*, anything else
    }
}

async fn fetch_json(state: &AppState, url: &str) -> Result<serde_json::Value, ApiError> {
    let u = url::Url::parse(url).map_err(|_| ApiError::unauthorized("issuer URL invalid"))?;
    if u.scheme() != "https" && !state.config.oidc_allow_http {
        return Err(ApiError::unauthorized("issuer must use https"));
    }
    let resp = state.http.get(u).send().await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            e.to_string(),
        )
    })?;
    if !resp.status().is_success() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            format!("status {}", resp.status()),
        ));
    }
    let bytes = resp.bytes().await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            e.to_string(),
        )
    })?;
    if bytes.len() > 256 * 1024 {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            "document too large",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            e.to_string(),
        )
    })
}

async fn issuer_keys(
    state: &AppState,
    issuer: &OidcIssuer,
    kid: Option<&str>,
) -> Result<Vec<Jwk>, ApiError> {
    let cached = state
        .oidc
        .cache
        .lock()
        .ok()
        .and_then(|c| c.get(&issuer.issuer).cloned());
    if let Some((at, keys)) = &cached {
        let has_kid = kid.is_none_or(|k| keys.iter().any(|j| j.kid.as_deref() == Some(k)));
        if at.elapsed() < JWKS_TTL && (has_kid || at.elapsed() < REFETCH_MIN) {
            return Ok(keys.clone());
        }
    }
    let discovery = fetch_json(
        state,
        &format!(
            "{}/.well-known/openid-configuration",
            issuer.issuer.trim_end_matches('/')
        ),
    )
    .await?;
    if discovery["issuer"].as_str() != Some(issuer.issuer.as_str()) {
        return Err(ApiError::unauthorized(
            "discovery document names another issuer",
        ));
    }
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or_else(|| ApiError::unauthorized("discovery has no jwks_uri"))?;
    let jwks = fetch_json(state, jwks_uri).await?;
    let keys: Vec<Jwk> = jwks["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| serde_json::from_value(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(mut c) = state.oidc.cache.lock() {
        c.insert(issuer.issuer.clone(), (Instant::now(), keys.clone()));
    }
    Ok(keys)
}

/// Authenticates a bearer JWT against the configured issuers.
pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if state.config.oidc.is_empty() {
        return Err(ApiError::unauthorized("unknown token"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(ApiError::unauthorized("malformed token"));
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64(h)?).map_err(|_| ApiError::unauthorized("malformed token"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64(p)?).map_err(|_| ApiError::unauthorized("malformed token"))?;
    let sig = b64(s)?;
    let alg = header["alg"]
        .as_str()
        .and_then(jose_alg)
        .ok_or_else(|| ApiError::unauthorized("token algorithm not allowed"))?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    let issuer = state
        .config
        .oidc
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or_else(|| ApiError::unauthorized("issuer not trusted"))?;
    let kid = header["kid"].as_str();
    let keys = issuer_keys(state, issuer, kid).await?;
    let jwk = keys
        .iter()
        .filter(|k| k.kty != "oct")
        .find(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
        .ok_or_else(|| ApiError::unauthorized("signing key not found"))?;
    let key = jwk
        .public()
        .and_then(|p| p.verifying_key(Some(alg)))
        .map_err(|_| ApiError::unauthorized("signing key does not fit the algorithm"))?;
    let signing_input = format!("{h}.{p}");
    key.verify(signing_input.as_bytes(), &sig)
        .map_err(|_| ApiError::unauthorized("bad token signature"))?;
    let t = now();
    let skew = 60;
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == &issuer.audience,
        serde_json::Value::Array(a) => a
            .iter()
            .any(|x| x.as_str() == Some(issuer.audience.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(ApiError::unauthorized(
            "token audience is not this registry",
        ));
    }
    let exp = claims["exp"]
        .as_i64()
        .ok_or_else(|| ApiError::unauthorized("token has no exp"))?;
    if exp + skew < t {
        return Err(ApiError::unauthorized("token expired"));
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| nbf - skew > t) {
        return Err(ApiError::unauthorized("token not yet valid"));
    }
    let sub = claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unauthorized("token has no sub"))?;
    let subject = format!("{iss}#{sub}");
    let account = match state.store.account_by_subject(&subject).await? {
        Some(a) => a,
        None => {
            let id = crate::auth::new_id();
            let name = claims["email"]
                .as_str()
                .or(claims["name"].as_str())
                .unwrap_or(sub)
                .to_owned();
            match state
                .store
                .create_account(&id, &name, Some(&subject), t)
                .await
            {
                Ok(()) => {
                    state
                        .store
                        .audit(
                            t,
                            "system",
                            "account.create",
                            &id,
                            &serde_json::json!({ "oidc_subject": subject }),
                        )
                        .await?;
                    id
                }
                // Two first sign-ins at once: the other one created it.
                Err(crate::store::StoreError::Conflict(_)) => state
                    .store
                    .account_by_subject(&subject)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("account mapping failed"))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(Caller {
        account_id: account,
        via: "oidc".into(),
        scopes: issuer.scopes.clone(),
        expires_at: Some(exp),
    })
}
