//! The authenticated API: agents, keys, tokens, accounts, audit.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use oba_httpsig::jwk::Jwk;
use oba_webbotauth::keys::{is_known_test_key, AgentKey};
use serde::Deserialize;

use crate::auth::{new_id, new_token, parse_scopes, token_hash, Caller};
use crate::error::ApiError;
use crate::store::{AgentRow, Change, KeyRow, TokenRow};
use crate::{now, AppState};

/// Largest request body accepted, bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("bodies are limited to {MAX_BODY} bytes"),
        )
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", e.to_string()))
}

/// Authenticates the caller (API token, or OIDC token from a configured issuer), with
/// repeated failures from one address answered `429` + `Retry-After`.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    if let Some(wait) = state.limiter.blocked(peer.ip()) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed authentications",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let result = authenticate_inner(state, headers).await;
    if let Err(e) = &result {
        if e.status == StatusCode::UNAUTHORIZED {
            state.limiter.failed(peer.ip());
        }
    }
    result
}

async fn authenticate_inner(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer token is required"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if token.starts_with("oba_rt_") {
        let row = state
            .store
            .token_by_hash(&token_hash(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthorized("token revoked"));
        }
        if row.expires_at.is_some_and(|e| e <= now()) {
            return Err(ApiError::unauthorized("token expired"));
        }
        return Ok(Caller {
            account_id: row.account_id,
            via: format!("token:{}", row.id),
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
            expires_at: row.expires_at,
        });
    }
    crate::oidc::authenticate(state, token).await
}

/// A change by `caller`, for the audit trail.
fn change(caller: &Caller, action: &str, target: &str) -> Change {
    Change::new(caller.actor(), action, target).with_auth_method(caller.auth_method())
}

fn require(caller: &Caller, scope: &str) -> Result<(), ApiError> {
    if caller.has(scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "the token lacks the {scope} scope"
        )))
    }
}

/// The agent, if the caller may see it (owner or admin); 404 otherwise (no existence oracle).
async fn owned_agent(state: &AppState, caller: &Caller, id: &str) -> Result<AgentRow, ApiError> {
    match state.store.agent(id).await? {
        Some(a) if a.account_id == caller.account_id || caller.is_admin() => Ok(a),
        _ => Err(ApiError::not_found("agent")),
    }
}

/// The Signature Agent Card fields an agent has.
#[derive(Debug, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentDoc {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    homepage: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    contacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product_token: Option<String>,
}

impl AgentDoc {
    fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_agent", m);
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(bad("name must be 1..=200 characters".into()));
        }
        for (field, v) in [
            ("description", &self.description),
            ("purpose", &self.purpose),
            ("expected_user_agent", &self.expected_user_agent),
            ("product_token", &self.product_token),
        ] {
            if v.as_ref().is_some_and(|s| s.len() > 2000) {
                return Err(bad(format!("{field} is too long")));
            }
        }
        if let Some(h) = &self.homepage {
            let u = url::Url::parse(h).map_err(|e| bad(format!("homepage: {e}")))?;
            if u.scheme() != "https" {
                return Err(bad("homepage must be an https URL".into()));
            }
        }
        if self.contacts.len() > 20 || self.contacts.iter().any(|c| c.is_empty() || c.len() > 320) {
            return Err(bad("contacts: at most 20 non-empty entries".into()));
        }
        if let Some(t) = &self.trigger {
            if t != "crawler" && t != "fetcher" {
                return Err(bad("trigger must be \"crawler\" or \"fetcher\"".into()));
            }
        }
        Ok(())
    }
}

fn agent_json(state: &AppState, a: &AgentRow) -> serde_json::Value {
    let mut v = a.doc.clone();
    v["id"] = a.id.clone().into();
    v["account_id"] = a.account_id.clone().into();
    v["jwks_uri"] = state.jwks_uri(&a.id).into();
    v["card_url"] = state.card_url(&a.id).into();
    if let Some(d) = state.agent_directory_origin(&a.id) {
        v["signature_agent"] = d.into();
    }
    v["created_at"] = a.created_at.into();
    v["updated_at"] = a.updated_at.into();
    v
}

/// `POST /v1/agents`.
pub(crate) async fn create_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:write")?;
    let bytes = read_body(body).await?;
    let doc: AgentDoc = parse_json(&bytes)?;
    doc.validate()?;
    let t = now();
    let row = AgentRow {
        id: new_id(),
        account_id: caller.account_id.clone(),
        doc: serde_json::to_value(&doc).unwrap_or_default(),
        created_at: t,
        updated_at: t,
    };
    let audit = change(&caller, "agent.create", &row.id)
        .with_detail(row.doc.clone())
        .with_body(&bytes);
    state.store.create_agent(&row, &audit).await?;
    Ok((StatusCode::CREATED, Json(agent_json(&state, &row))).into_response())
}

/// `GET /v1/agents`.
pub(crate) async fn list_agents(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:read")?;
    let rows = state
        .store
        .list_agents((!caller.is_admin()).then_some(caller.account_id.as_str()))
        .await?;
    let list: Vec<_> = rows.iter().map(|a| agent_json(&state, a)).collect();
    Ok(Json(serde_json::json!({ "agents": list })).into_response())
}

/// `GET /v1/agents/{id}`.
pub(crate) async fn get_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:read")?;
    let a = owned_agent(&state, &caller, &id).await?;
    Ok(Json(agent_json(&state, &a)).into_response())
}

/// `PATCH /v1/agents/{id}`: the given fields replace the stored ones (`null` removes).
pub(crate) async fn patch_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:write")?;
    let a = owned_agent(&state, &caller, &id).await?;
    let bytes = read_body(body).await?;
    let patch: serde_json::Map<String, serde_json::Value> = parse_json(&bytes)?;
    let mut merged = a.doc.as_object().cloned().unwrap_or_default();
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    let doc: AgentDoc = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| ApiError::bad_request("invalid_agent", e.to_string()))?;
    doc.validate()?;
    let doc = serde_json::to_value(&doc).unwrap_or_default();
    let t = now();
    let audit = change(&caller, "agent.update", &id)
        .with_detail(doc.clone())
        .with_body(&bytes);
    if !state.store.update_agent(&id, &doc, t, &audit).await? {
        return Err(ApiError::not_found("agent"));
    }
    let a = owned_agent(&state, &caller, &id).await?;
    Ok(Json(agent_json(&state, &a)).into_response())
}

/// `DELETE /v1/agents/{id}`.
pub(crate) async fn delete_agent(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:write")?;
    owned_agent(&state, &caller, &id).await?;
    let audit = change(&caller, "agent.delete", &id);
    if !state.store.delete_agent(&id, now(), &audit).await? {
        return Err(ApiError::not_found("agent"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    jwk: serde_json::Value,
    #[serde(default)]
    not_before: Option<i64>,
    #[serde(default)]
    not_after: Option<i64>,
}

/// `POST /v1/agents/{id}/keys`: signed by the key being added (proof of possession).
pub(crate) async fn add_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "keys:write")?;
    owned_agent(&state, &caller, &id).await?;
    let bytes = read_body(body).await?;
    let req: AddKey = parse_json(&bytes)?;
    let jwk: Jwk = serde_json::from_value(req.jwk)
        .map_err(|e| ApiError::bad_request("invalid_key", format!("not a JWK: {e}")))?;
    let key = AgentKey::from_public_jwk(&jwk, false)
        .map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))?;
    if let Some(kid) = &jwk.kid {
        if kid != &key.thumbprint {
            return Err(ApiError::bad_request(
                "kid_mismatch",
                format!("kid must be the RFC 7638 thumbprint {}", key.thumbprint),
            ));
        }
    }
    if is_known_test_key(&key.thumbprint) {
        return Err(ApiError::bad_request(
            "test_key",
            "the RFC 9421 example keys are public and cannot identify an agent",
        ));
    }
    if let (Some(nb), Some(na)) = (req.not_before, req.not_after) {
        if na <= nb {
            return Err(ApiError::bad_request(
                "invalid_validity",
                "not_after must be after not_before",
            ));
        }
    }
    // Proof of possession over the request as received.
    let mut head = axum::http::Request::new(());
    *head.method_mut() = method;
    *head.uri_mut() = uri;
    *head.headers_mut() = headers.clone();
    head.extensions_mut()
        .insert(oba_httpsig::http::Scheme(state.public_scheme()));
    let t = now();
    let nonce = crate::pop::check(&head, &bytes, &key, t)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code, e.message))?;
    if !state
        .store
        .use_nonce(
            &format!("{}#{nonce}", key.thumbprint),
            t + i64::from(crate::pop::POP_MAX_AGE) + 120,
            t,
        )
        .await?
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "proof_of_possession_replayed",
            "this proof of possession was already used",
        ));
    }
    let mut public = jwk
        .public()
        .map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))?;
    public.kid = Some(key.thumbprint.clone());
    let row = KeyRow {
        thumbprint: key.thumbprint.clone(),
        jwk: serde_json::to_value(&public).unwrap_or_default(),
        not_before: req.not_before,
        not_after: req.not_after,
        created_at: t,
        retired_at: None,
    };
    let audit = change(&caller, "key.add", &format!("{id}/{}", row.thumbprint))
        .with_key_id(row.thumbprint.clone())
        .with_detail(
            serde_json::json!({ "not_before": row.not_before, "not_after": row.not_after }),
        )
        .with_body(&bytes);
    state
        .store
        .add_key(
            &id,
            &row,
            oba_webbotauth::directory::MAX_KEYS as i64,
            t,
            &audit,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

/// `GET /v1/agents/{id}/keys`: every key, retired ones included.
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "agents:read")?;
    owned_agent(&state, &caller, &id).await?;
    Ok(Json(serde_json::json!({ "keys": state.store.keys(&id).await? })).into_response())
}

/// `DELETE /v1/agents/{id}/keys/{kid}`: retires the key (history kept).
pub(crate) async fn retire_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, kid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "keys:write")?;
    owned_agent(&state, &caller, &id).await?;
    let audit = change(&caller, "key.retire", &format!("{id}/{kid}")).with_key_id(kid.clone());
    if !state.store.retire_key(&id, &kid, now(), &audit).await? {
        return Err(ApiError::not_found("active key"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    scopes: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    account_id: Option<String>,
}

/// `POST /v1/tokens`: a token for the caller's account (scopes within the caller's), or,
/// for an admin, for any account. The token is in the response, once.
pub(crate) async fn create_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let bytes = read_body(body).await?;
    let req: NewToken = parse_json(&bytes)?;
    let scopes =
        parse_scopes(&req.scopes).map_err(|m| ApiError::bad_request("invalid_scope", m))?;
    let account = match &req.account_id {
        Some(a) if a != &caller.account_id => {
            if !caller.is_admin() {
                return Err(ApiError::forbidden(
                    "only an admin can create tokens for another account",
                ));
            }
            if !state.store.account_exists(a).await? {
                return Err(ApiError::not_found("account"));
            }
            a.clone()
        }
        _ => caller.account_id.clone(),
    };
    if !caller.is_admin() && !scopes.iter().all(|s| caller.has(s)) {
        return Err(ApiError::forbidden(
            "a token cannot grant scopes its creator lacks",
        ));
    }
    if req.expires_in.is_some_and(|e| e <= 0) {
        return Err(ApiError::bad_request(
            "invalid_expiry",
            "expires_in must be positive",
        ));
    }
    let t = now();
    let token = new_token();
    let row = TokenRow {
        id: new_id(),
        account_id: account,
        scopes: scopes.join(" "),
        created_at: t,
        // A token never outlives the credential that created it.
        expires_at: match (
            req.expires_in.map(|e| t.saturating_add(e)),
            caller.expires_at,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        revoked_at: None,
    };
    // The record names the token by its id; neither the token nor its hash is in it.
    let audit = change(&caller, "token.create", &row.id)
        .with_key_id(row.id.clone())
        .with_detail(serde_json::json!({
            "account_id": row.account_id,
            "scopes": row.scopes,
            "expires_at": row.expires_at,
        }))
        .with_body(&bytes);
    state
        .store
        .create_token(&row, &token_hash(&token), &audit)
        .await?;
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    v["token"] = token.into();
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /v1/tokens`: the caller's tokens (all, for an admin); never the secrets.
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let rows = state
        .store
        .list_tokens((!caller.is_admin()).then_some(caller.account_id.as_str()))
        .await?;
    Ok(Json(serde_json::json!({ "tokens": rows })).into_response())
}

/// `DELETE /v1/tokens/{id}`: revokes.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    let account = (!caller.is_admin()).then_some(caller.account_id.as_str());
    let audit = change(&caller, "token.revoke", &id).with_key_id(id.clone());
    if !state
        .store
        .revoke_token(&id, account, now(), &audit)
        .await?
    {
        return Err(ApiError::not_found("token"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
}

/// `POST /v1/accounts` (admin).
pub(crate) async fn create_account(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "admin")?;
    let bytes = read_body(body).await?;
    let req: NewAccount = parse_json(&bytes)?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid_account",
            "name must be 1..=200 characters",
        ));
    }
    let id = new_id();
    let audit = change(&caller, "account.create", &id)
        .with_detail(serde_json::json!({ "name": req.name }))
        .with_body(&bytes);
    state
        .store
        .create_account(&id, &req.name, None, now(), &audit)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "name": req.name })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/audit?after=SEQ&limit=N` (admin): the chain's records, checkpoints
/// included.
pub(crate) async fn audit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, peer).await?;
    require(&caller, "admin")?;
    let rows = state
        .store
        .list_audit(q.after, q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(serde_json::json!({ "records": rows })).into_response())
}
