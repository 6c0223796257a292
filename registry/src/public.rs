//! The public, unauthenticated, cacheable documents: an agent's JWKS (a key directory),
//! its Signature Agent Card, the registry list, and the per-agent well-known directory.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::{now, AppState};

/// `Cache-Control` of public documents: short enough for rotation by overlap.
pub(crate) const CACHE_CONTROL: &str = "public, max-age=300";

/// A cacheable response with a strong ETag; `304` when `If-None-Match` matches.
pub(crate) fn cacheable(
    headers: &HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let tag: String = Sha256::digest(&body)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{tag}\"");
    let matches = headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static(content_type));
        r
    };
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static(CACHE_CONTROL));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert("etag", v);
    }
    resp
}

/// The published keys of an agent: not retired, within their validity window.
pub(crate) async fn jwks_body(state: &AppState, agent_id: &str) -> Result<Vec<u8>, ApiError> {
    state
        .store
        .agent(agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let t = now();
    let keys: Vec<serde_json::Value> = state
        .store
        .keys(agent_id)
        .await?
        .into_iter()
        .filter(|k| {
            k.retired_at.is_none()
                && k.not_before.is_none_or(|nb| nb <= t)
                && k.not_after.is_none_or(|na| na > t)
        })
        .map(|k| k.jwk)
        // Never publish more than a directory client accepts (the API refuses more).
        .take(oba_webbotauth::directory::MAX_KEYS)
        .collect();
    Ok(serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default())
}

/// `GET /agents/{id}/jwks.json`.
pub(crate) async fn jwks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let body = jwks_body(&state, &id).await?;
    Ok(cacheable(
        &headers,
        oba_webbotauth::directory::MEDIA_TYPE,
        body,
    ))
}

/// The Signature Agent Card of an agent (registry-03 / CIMD shape).
pub(crate) fn card_json(state: &AppState, agent: &crate::store::AgentRow) -> serde_json::Value {
    let d = &agent.doc;
    let mut wba = serde_json::Map::new();
    for (from, to) in [
        ("expected_user_agent", "expected-user-agent"),
        ("product_token", "rfc9309-product-token"),
        ("trigger", "trigger"),
        ("purpose", "purpose"),
    ] {
        if let Some(v) = d.get(from).filter(|v| !v.is_null()) {
            wba.insert(to.into(), v.clone());
        }
    }
    let mut card = serde_json::json!({
        "client_id": state.card_url(&agent.id),
        "client_name": d.get("name"),
        "jwks_uri": state.jwks_uri(&agent.id),
    });
    if let Some(h) = d.get("homepage").filter(|v| !v.is_null()) {
        card["client_uri"] = h.clone();
    }
    if let Some(c) = d
        .get("contacts")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        card["contacts"] = c.clone();
    }
    if let Some(desc) = d.get("description").filter(|v| !v.is_null()) {
        card["description"] = desc.clone();
    }
    if !wba.is_empty() {
        card["web_bot_auth"] = serde_json::Value::Object(wba);
    }
    card
}

/// `GET /agents/{id}/card.json`.
pub(crate) async fn card(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let agent = state
        .store
        .agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let body = serde_json::to_vec(&card_json(&state, &agent)).unwrap_or_default();
    Ok(cacheable(&headers, "application/json", body))
}

/// `GET /registry.txt`: one card URL per line.
pub(crate) async fn registry_txt(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut text = String::from("# OpenBotAuth registry: Signature Agent Cards\n");
    for a in state.store.list_agents(None).await? {
        text.push_str(&state.card_url(&a.id));
        text.push('\n');
    }
    Ok(cacheable(
        &headers,
        "text/plain; charset=utf-8",
        text.into_bytes(),
    ))
}

/// `GET /.well-known/http-message-signatures-directory` on `<agent-id>.<suffix>`.
pub(crate) async fn agent_host_directory(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let suffix = state
        .config
        .agent_host_suffix
        .as_deref()
        .ok_or_else(|| ApiError::not_found("directory"))?;
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or_default();
    let id = host
        .strip_suffix(suffix)
        .and_then(|h| h.strip_suffix('.'))
        .filter(|id| !id.is_empty() && !id.contains('.'))
        .ok_or_else(|| ApiError::not_found("directory"))?;
    let body = jwks_body(&state, id).await?;
    Ok(cacheable(
        &headers,
        oba_webbotauth::directory::MEDIA_TYPE,
        body,
    ))
}
