//! Sign-in with an OIDC ID or access token (a JWT) from a configured issuer, validated by
//! `oba-oidc` (discovery, cached JWKS, `iss` / `aud` / `exp` / `nbf`, never `none` or
//! HMAC); the subject is mapped to an account, created on first sign-in.

use axum::http::StatusCode;
use oba_oidc::{OidcError, OidcVerifier};

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

/// The verifier for the configured issuers.
pub(crate) fn verifier(config: &crate::Config) -> Result<OidcVerifier, OidcError> {
    OidcVerifier::new(
        config
            .oidc
            .iter()
            .map(|i| oba_oidc::Issuer {
                issuer: i.issuer.clone(),
                audience: i.audience.clone(),
                required_scopes: Vec::new(),
                required_claims: serde_json::Map::new(),
            })
            .collect(),
        config.oidc_allow_http,
    )
}

/// Authenticates a bearer JWT against the configured issuers.
pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if state.config.oidc.is_empty() {
        return Err(ApiError::unauthorized("unknown token"));
    }
    let t = now();
    let v = state.oidc.validate(token, t).await.map_err(|e| match e {
        OidcError::Unavailable(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "issuer_unavailable", m)
        }
        e => ApiError::unauthorized(e.to_string()),
    })?;
    let issuer = state
        .config
        .oidc
        .iter()
        .find(|i| i.issuer == v.issuer)
        .ok_or_else(|| ApiError::unauthorized("issuer not trusted"))?;
    let (iss, sub, claims, exp) = (&v.issuer, v.subject.as_str(), &v.claims, v.expires);
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
            let audit = crate::store::Change::new("system", "account.create", &id)
                .with_detail(serde_json::json!({ "oidc_subject": subject }));
            match state
                .store
                .create_account(&id, &name, Some(&subject), t, &audit)
                .await
            {
                Ok(()) => id,
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
