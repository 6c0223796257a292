//! Identity at the edge: one [`Principal`] from Web Bot Auth signatures, RFC 9421
//! service-account signatures or API keys. Nothing later reads identity from the client.

use std::sync::Arc;

use axum::http::{HeaderMap, Request, StatusCode};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Component, Derived, Policy, Reason, VerifyingKey};
use oba_webbotauth::client::Verifier;
use oba_webbotauth::Outcome;

use crate::apikeys::ApiKeys;

/// What kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A bot or agent (Web Bot Auth).
    Bot,
    /// A person (OIDC bearer token).
    User,
    /// A service (API key, signing service account).
    Service,
}

impl PrincipalKind {
    /// `bot`, `user` or `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Bot => "bot",
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Web Bot Auth (RFC 9421, `tag="web-bot-auth"`).
    WebBotAuth,
    /// RFC 9421 signature by a configured service account.
    HttpSignature,
    /// API key.
    ApiKey,
    /// OIDC bearer JWT.
    Oidc,
    /// The gateway itself (its own calls upstream, e.g. embeddings for memory).
    Gateway,
}

impl AuthMethod {
    /// Stable name for headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::WebBotAuth => "web-bot-auth",
            AuthMethod::HttpSignature => "http-signature",
            AuthMethod::ApiKey => "api-key",
            AuthMethod::Oidc => "oidc",
            AuthMethod::Gateway => "gateway",
        }
    }
}

/// The verified identity every later stage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Kind.
    pub kind: PrincipalKind,
    /// Stable id (`bot:<agent>#<thumbprint>`, `service:<name>`, `key:<name>`).
    pub id: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// User (for users, or bots acting for one).
    pub user: Option<String>,
    /// Agent URL (bots).
    pub agent: Option<String>,
    /// How it authenticated.
    pub auth_method: AuthMethod,
    /// Key id (thumbprint) that signed, if any.
    pub key_id: Option<String>,
    /// The token's claims (OIDC), for policy rules on claims; empty otherwise.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400 (malformed credentials) or 401.
    pub status: StatusCode,
    /// Machine-readable reason.
    pub code: String,
    /// Detail.
    pub message: String,
}

fn reject(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        code: code.into(),
        message: message.into(),
    }
}

/// A configured RFC 9421 signer.
#[derive(Debug)]
pub struct ServiceKey {
    /// Name.
    pub name: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Thumbprint of its key.
    pub thumbprint: String,
    /// The key.
    pub key: VerifyingKey,
}

impl ServiceKey {
    /// From the configuration.
    pub fn from_config(s: &crate::config::ServiceAccount) -> Result<Self, String> {
        let jwk: Jwk = serde_json::from_value(s.jwk.clone())
            .map_err(|e| format!("service account {}: {e}", s.name))?;
        if jwk.is_private() || jwk.kty == "oct" {
            return Err(format!(
                "service account {}: a public asymmetric JWK is required",
                s.name
            ));
        }
        let thumbprint = jwk.thumbprint().map_err(|e| e.to_string())?;
        // The account is chosen by keyid (name or thumbprint) before verification; the key
        // itself carries no id, so the JWK's own `kid` cannot contradict the account name.
        let mut bare = jwk.clone();
        bare.kid = None;
        let key = bare
            .verifying_key(None)
            .map_err(|e| format!("service account {}: {e}", s.name))?;
        Ok(ServiceKey {
            name: s.name.clone(),
            tenant: s.tenant.clone(),
            thumbprint,
            key,
        })
    }
}

/// Everything identity needs.
pub struct Authenticator {
    /// Web Bot Auth verifier (with its directory client).
    pub bots: Arc<Verifier>,
    /// Signing service accounts.
    pub services: Vec<ServiceKey>,
    /// API keys.
    pub api_keys: std::sync::RwLock<ApiKeys>,
    /// Replay store (all signed methods), consulted after verification.
    pub replay: crate::replay::ReplayStore,
    /// Refuse signed requests without a nonce.
    pub require_nonce: bool,
    /// OIDC issuers (bearer JWTs).
    pub oidc: oba_oidc::OidcVerifier,
    /// Tenant claim per issuer.
    pub tenant_claims: Vec<(String, String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The principal of a request head (`now` in unix seconds).
    pub async fn authenticate(
        &self,
        head: &Request<()>,
        has_body: bool,
        now: i64,
    ) -> Result<Principal, Rejection> {
        let headers = head.headers();
        if headers.contains_key("signature-input") || headers.contains_key("signature") {
            return self.signed(head, has_body, now).await;
        }
        if let Some(auth) = headers.get("authorization") {
            let v = auth.to_str().map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "malformed_credentials",
                    "Authorization is not text",
                )
            })?;
            let token = v.strip_prefix("Bearer ").map(str::trim).ok_or_else(|| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "malformed_credentials",
                    "Authorization must be Bearer",
                )
            })?;
            if token.starts_with("oba_") {
                let found = self
                    .api_keys
                    .read()
                    .ok()
                    .and_then(|k| k.check(token).cloned());
                let e = found.ok_or_else(|| {
                    reject(
                        StatusCode::UNAUTHORIZED,
                        "unknown_api_key",
                        "unknown or revoked API key",
                    )
                })?;
                return Ok(Principal {
                    kind: PrincipalKind::Service,
                    id: format!("key:{}", e.name),
                    tenant: e.tenant.clone(),
                    user: None,
                    agent: None,
                    auth_method: AuthMethod::ApiKey,
                    key_id: None,
                    claims: serde_json::Map::new(),
                });
            }
            if self.oidc.issuers().is_empty() || !oba_oidc::OidcVerifier::looks_like_jwt(token) {
                return Err(reject(
                    StatusCode::UNAUTHORIZED,
                    "unknown_token",
                    "not an API key or a token from a trusted issuer",
                ));
            }
            let v = self.oidc.validate(token, now).await.map_err(|e| match e {
                oba_oidc::OidcError::Malformed => {
                    reject(StatusCode::BAD_REQUEST, e.code(), e.to_string())
                }
                oba_oidc::OidcError::Unavailable(_) => {
                    reject(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
                }
                _ => reject(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
            })?;
            let tenant = self
                .tenant_claims
                .iter()
                .find(|(iss, _)| *iss == v.issuer)
                .and_then(|(_, claim)| v.claims[claim.as_str()].as_str().map(str::to_owned));
            let service = v.is_client_credentials();
            return Ok(Principal {
                kind: if service {
                    PrincipalKind::Service
                } else {
                    PrincipalKind::User
                },
                id: format!(
                    "{}:{}#{}",
                    if service { "client" } else { "user" },
                    v.issuer,
                    v.subject
                ),
                tenant,
                user: (!service)
                    .then(|| v.claims["email"].as_str().unwrap_or(&v.subject).to_owned()),
                agent: None,
                auth_method: AuthMethod::Oidc,
                key_id: None,
                claims: v.claims.as_object().cloned().unwrap_or_default(),
            });
        }
        Err(reject(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "credentials are required",
        ))
    }

    /// Records the nonce of a verified signature (until it expires, plus skew).
    async fn replay_check(
        &self,
        scope: &str,
        nonce: Option<&str>,
        expires: i64,
        now: i64,
    ) -> Result<(), Rejection> {
        let Some(nonce) = nonce else {
            return if self.require_nonce {
                Err(reject(
                    StatusCode::UNAUTHORIZED,
                    "nonce_required",
                    "signed requests must carry a nonce",
                ))
            } else {
                Ok(())
            };
        };
        match self
            .replay
            .check_and_record(scope, nonce, expires.saturating_add(60), now)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(reject(
                StatusCode::UNAUTHORIZED,
                Reason::Replay.code(),
                "nonce seen before",
            )),
            Err(e) => Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay_store_unavailable",
                e,
            )),
        }
    }

    async fn signed(
        &self,
        head: &Request<()>,
        has_body: bool,
        now: i64,
    ) -> Result<Principal, Rejection> {
        let entries = oba_httpsig::signatures(head).map_err(|e| {
            let status = if e.reason().is_malformed_input() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            reject(status, e.reason().code(), e.to_string())
        })?;
        let wba = entries.iter().any(|(_, e)| {
            e.as_ref()
                .is_ok_and(|e| e.params.tag() == Some(oba_webbotauth::TAG))
        });
        if wba {
            // Parsed once: the verifier takes the entries as they are.
            return match self.bots.verify_entries(head, entries, now).await {
                Outcome::Verified(v) => {
                    let agent = v.agent.as_ref().map(|a| a.url.to_string());
                    let scope = format!("bot:{}#{}", agent.as_deref().unwrap_or(""), v.thumbprint);
                    self.replay_check(&scope, v.nonce.as_deref(), v.expires, now)
                        .await?;
                    Ok(Principal {
                        kind: PrincipalKind::Bot,
                        id: format!("bot:{}#{}", agent.as_deref().unwrap_or(""), v.thumbprint),
                        tenant: None,
                        user: None,
                        agent,
                        auth_method: AuthMethod::WebBotAuth,
                        key_id: Some(v.thumbprint),
                        claims: serde_json::Map::new(),
                    })
                }
                Outcome::Invalid(r) if r.is_malformed() => {
                    Err(reject(StatusCode::BAD_REQUEST, r.code, r.message))
                }
                Outcome::Invalid(r) | Outcome::Unverified(r) => {
                    Err(reject(StatusCode::UNAUTHORIZED, r.code, r.message))
                }
            };
        }
        // Service accounts: the signature's keyid names the account or its thumbprint.
        // A service-account signature must bind the request: method, authority, path, and
        // the body through Content-Digest (checked against the body by the proxy).
        let mut policy = Policy::default()
            .max_age(300)
            .clock_skew(30)
            .require_keyid(true)
            .require_component(Component::derived(Derived::Method))
            .require_component(Component::derived(Derived::Authority))
            .require_component(Component::derived(Derived::Path));
        if has_body {
            if let Ok(c) = Component::field("content-digest") {
                policy = policy.require_component(c);
            }
        }
        let mut last = reject(
            StatusCode::UNAUTHORIZED,
            "unknown_key",
            "no configured key for this signature",
        );
        for (_, entry) in entries {
            let Ok(entry) = entry else { continue };
            let Some(keyid) = entry.params.keyid() else {
                continue;
            };
            let Some(svc) = self
                .services
                .iter()
                .find(|s| s.thumbprint == keyid || s.name == keyid)
            else {
                continue;
            };
            match oba_httpsig::verify_signature(head, None, &entry, &svc.key, &policy, now) {
                Ok(_) => {
                    let until = entry.params.expires().unwrap_or_else(|| {
                        entry.params.created().unwrap_or(now).saturating_add(300)
                    });
                    let scope = format!("service:{}#{}", svc.name, svc.thumbprint);
                    self.replay_check(&scope, entry.params.nonce(), until, now)
                        .await?;
                    return Ok(Principal {
                        kind: PrincipalKind::Service,
                        id: format!("service:{}", svc.name),
                        tenant: svc.tenant.clone(),
                        user: None,
                        agent: None,
                        auth_method: AuthMethod::HttpSignature,
                        key_id: Some(svc.thumbprint.clone()),
                        claims: serde_json::Map::new(),
                    });
                }
                Err(e) => last = reject(StatusCode::UNAUTHORIZED, e.reason().code(), e.to_string()),
            }
        }
        Err(last)
    }
}

/// The head of a request (what identity looks at), with the scheme it arrived over.
pub fn head_of(
    headers: &HeaderMap,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    scheme: &str,
) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = method.clone();
    *head.uri_mut() = uri.clone();
    *head.headers_mut() = headers.clone();
    head.extensions_mut()
        .insert(oba_httpsig::http::Scheme(scheme.to_owned()));
    head
}
