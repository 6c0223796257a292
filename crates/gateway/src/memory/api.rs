//! The memory API, behind the same authentication and policy as the proxy (the policy
//! route is `/attach/v1/memory`):
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/attach/v1/memory?session=&space=&since=&until=&limit=` | list turns, newest first |
//! | POST | `/attach/v1/memory/search` `{query, session?, space?, limit?}` | full-text search |
//! | DELETE | `/attach/v1/memory/{id}` | delete a turn this principal wrote |
//! | DELETE | `/attach/v1/memory?session=S` | delete this principal's session |
//! | DELETE | `/attach/v1/memory?all=true` | erase everything this principal owns |
//! | GET | `/attach/v1/memory/spaces` | spaces this principal owns or belongs to |
//! | POST | `/attach/v1/memory/spaces` `{name}` | create a space (owner: this principal) |
//! | GET | `/attach/v1/memory/spaces/{name}/members` | members (members only) |
//! | POST | `/attach/v1/memory/spaces/{name}/members` `{principal, right}` | add or change (owner) |
//! | DELETE | `/attach/v1/memory/spaces/{name}/members/{principal}` | remove (owner, or oneself) |
//!
//! Times are unix milliseconds. Sessions are the client's labels, namespaced under the
//! principal, so no request can name another principal's session. Embeddings are not
//! returned.

use axum::http::{Method, StatusCode};
use oba_memory::{Filter, Right, Scope, StoreError, Turn};
use serde_json::{json, Value};

use super::{namespaced_session, now_ms, unavailable, valid_label, Memory, Refusal};
use crate::identity::Principal;

/// The API's path prefix.
pub const PREFIX: &str = "/attach/v1/memory";

fn bad(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

fn not_found() -> Refusal {
    (
        StatusCode::NOT_FOUND,
        "not_found",
        "no such memory resource".into(),
    )
}

fn store_error(e: StoreError) -> Refusal {
    match e {
        StoreError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
        StoreError::Invalid(m) => bad(m),
        e => unavailable(e),
    }
}

fn turn_json(t: &Turn) -> Value {
    json!({
        "id": t.id, "session": t.session, "space": t.space, "model": t.model,
        "route": t.route, "created_at": t.created_at, "user": t.user,
        "assistant": t.assistant, "complete": t.complete,
    })
}

/// Query string pairs (percent-decoded).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

struct Ctx<'a> {
    memory: &'a Memory,
    principal: &'a Principal,
    tenant: String,
}

impl Ctx<'_> {
    /// The scope for an optional space name (checked: at least Read).
    async fn scope(&self, space: Option<&str>) -> Result<Scope, Refusal> {
        match space {
            None => Ok(Scope::Own {
                tenant: self.tenant.clone(),
                principal: self.principal.id.clone(),
            }),
            Some(name) => {
                self.memory
                    .require(&self.tenant, name, &self.principal.id, Right::Read)
                    .await?;
                Ok(Scope::Space {
                    tenant: self.tenant.clone(),
                    space: name.to_owned(),
                })
            }
        }
    }

    fn session(&self, label: Option<&str>) -> Result<Option<String>, Refusal> {
        label
            .map(|l| {
                namespaced_session(self.principal, l)
                    .ok_or_else(|| bad("session must be 1-64 characters of A-Z a-z 0-9 . _ -"))
            })
            .transpose()
    }

    fn filter(
        &self,
        session: Option<String>,
        since: Option<i64>,
        until: Option<i64>,
        limit: usize,
    ) -> Filter {
        // Retention: what is past it is invisible even before the purge runs.
        let floor = self.memory.visible_since(&self.tenant, now_ms());
        Filter {
            session,
            since: match (since, floor) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            until,
            limit,
        }
    }
}

/// Records an erasure or a membership change in the audit trail.
fn audit(
    log: Option<&oba_audit::AuditLog>,
    kind: oba_audit::Kind,
    principal: &Principal,
    request_id: &str,
    details: &[(&str, Value)],
) {
    if let Some(log) = log {
        let mut e = oba_audit::AuditEvent::now(kind)
            .with_actor(principal.id.clone())
            .with_auth_method(principal.auth_method.as_str())
            .with_route(PREFIX)
            .with_request_id(request_id);
        if let Some(t) = &principal.tenant {
            e = e.with_tenant(t.clone());
        }
        for (k, v) in details {
            e = e.with_detail(*k, v.clone());
        }
        log.record(e);
    }
}

/// A member added, changed (`right`) or removed (`None`) in `space`.
fn member_changed(
    log: Option<&oba_audit::AuditLog>,
    principal: &Principal,
    request_id: &str,
    space: &str,
    member: &str,
    right: Option<Right>,
) {
    let right = right.map_or(Value::Null, |r| Value::String(r.as_str().to_owned()));
    audit(
        log,
        oba_audit::Kind::SpaceMemberChanged,
        principal,
        request_id,
        &[
            ("space", Value::String(space.to_owned())),
            ("member", Value::String(member.to_owned())),
            ("right", right),
        ],
    );
}

/// Handles a memory API request for an authenticated, policy-allowed `principal`;
/// erasures and membership changes go to the audit trail, when there is one.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    memory: &Memory,
    audit_log: Option<&oba_audit::AuditLog>,
    principal: &Principal,
    request_id: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<(StatusCode, Value), Refusal> {
    let ctx = Ctx {
        memory,
        principal,
        tenant: principal.tenant.clone().unwrap_or_default(),
    };
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let q = query_pairs(query);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let int = |k: &str| -> Result<Option<i64>, Refusal> {
        param(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad(format!("{k} must be an integer")))
            })
            .transpose()
    };
    let json_body = || -> Result<Value, Refusal> {
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| bad("the body must be a JSON object"))
    };
    match (method.as_str(), segs.as_slice()) {
        ("GET", []) => {
            let scope = ctx.scope(param("space")).await?;
            let limit = int("limit")?.unwrap_or(0).max(0) as usize;
            let filter = ctx.filter(
                ctx.session(param("session"))?,
                int("since")?,
                int("until")?,
                limit,
            );
            let turns = memory
                .store
                .list(&scope, &filter)
                .await
                .map_err(store_error)?;
            Ok((
                StatusCode::OK,
                json!({ "turns": turns.iter().map(turn_json).collect::<Vec<_>>() }),
            ))
        }
        ("POST", ["search"]) => {
            let b = json_body()?;
            let query = b
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("query is required"))?;
            let scope = ctx.scope(b.get("space").and_then(Value::as_str)).await?;
            let session = ctx.session(b.get("session").and_then(Value::as_str))?;
            let limit = b.get("limit").and_then(Value::as_u64).unwrap_or(0) as usize;
            let filter = ctx.filter(session, None, None, limit);
            let hits = memory
                .store
                .search(&scope, query, &filter)
                .await
                .map_err(store_error)?;
            Ok((
                StatusCode::OK,
                json!({ "hits": hits.iter().map(|h| json!({"turn": turn_json(&h.turn), "score": h.score})).collect::<Vec<_>>() }),
            ))
        }
        ("DELETE", []) => {
            if param("all") == Some("true") {
                let erased = memory
                    .store
                    .erase(&ctx.tenant, &principal.id)
                    .await
                    .map_err(store_error)?;
                crate::log(format_args!(
                    "memory: erased everything {} owns: {erased:?}",
                    principal.id
                ));
                audit(
                    audit_log,
                    oba_audit::Kind::MemoryErased,
                    principal,
                    request_id,
                    &[
                        ("turns", erased.turns.into()),
                        ("spaces", erased.spaces.into()),
                        ("memberships", erased.memberships.into()),
                    ],
                );
                return Ok((StatusCode::OK, json!({ "erased": erased })));
            }
            let Some(session) = ctx.session(param("session"))? else {
                return Err(bad(
                    "name a session (?session=S) or erase everything (?all=true)",
                ));
            };
            let n = memory
                .store
                .delete_session(&ctx.tenant, &principal.id, &session)
                .await
                .map_err(store_error)?;
            audit(
                audit_log,
                oba_audit::Kind::MemoryErased,
                principal,
                request_id,
                &[
                    ("session", Value::String(session.clone())),
                    ("turns", n.into()),
                ],
            );
            Ok((StatusCode::OK, json!({ "deleted": n })))
        }
        ("GET", ["spaces"]) => {
            let spaces = memory
                .store
                .spaces_of(&ctx.tenant, &principal.id)
                .await
                .map_err(store_error)?;
            Ok((
                StatusCode::OK,
                json!({ "spaces": spaces.iter().map(|(s, r)| json!({"name": s.name, "owner": s.owner, "created_at": s.created_at, "right": r})).collect::<Vec<_>>() }),
            ))
        }
        ("POST", ["spaces"]) => {
            let b = json_body()?;
            let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
            if !valid_label(name) {
                return Err(bad("name must be 1-64 characters of A-Z a-z 0-9 . _ -"));
            }
            let space = memory
                .store
                .create_space(&ctx.tenant, name, &principal.id, now_ms())
                .await
                .map_err(store_error)?;
            Ok((StatusCode::CREATED, json!({ "space": space })))
        }
        ("GET", ["spaces", name, "members"]) => {
            memory
                .require(&ctx.tenant, name, &principal.id, Right::Read)
                .await?;
            let members = memory
                .store
                .members(&ctx.tenant, name)
                .await
                .map_err(store_error)?;
            Ok((StatusCode::OK, json!({ "members": members })))
        }
        ("POST", ["spaces", name, "members"]) => {
            memory
                .require(&ctx.tenant, name, &principal.id, Right::Owner)
                .await?;
            let b = json_body()?;
            let member = b
                .get("principal")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty() && p.len() <= 512);
            let right = b
                .get("right")
                .and_then(Value::as_str)
                .and_then(Right::parse);
            let (Some(member), Some(right @ (Right::Read | Right::Write))) = (member, right) else {
                return Err(bad("give a principal id and a right: read or write"));
            };
            memory
                .store
                .set_member(&ctx.tenant, name, member, right)
                .await
                .map_err(store_error)?;
            member_changed(audit_log, principal, request_id, name, member, Some(right));
            Ok((
                StatusCode::OK,
                json!({ "principal": member, "right": right }),
            ))
        }
        ("DELETE", ["spaces", name, "members", member]) => {
            if *member != principal.id {
                memory
                    .require(&ctx.tenant, name, &principal.id, Right::Owner)
                    .await?;
            }
            let removed = memory
                .store
                .remove_member(&ctx.tenant, name, member)
                .await
                .map_err(store_error)?;
            if removed {
                member_changed(audit_log, principal, request_id, name, member, None);
                Ok((StatusCode::OK, json!({ "removed": member })))
            } else {
                Err(not_found())
            }
        }
        ("DELETE", [id]) => {
            let deleted = memory
                .store
                .delete(&ctx.tenant, &principal.id, id)
                .await
                .map_err(store_error)?;
            if deleted {
                Ok((StatusCode::OK, json!({ "deleted": 1 })))
            } else {
                // The same answer whether the turn does not exist or is someone else's.
                Err(not_found())
            }
        }
        _ => Err(not_found()),
    }
}
