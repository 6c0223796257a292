//! The OpenAPI document, generated from the route table below — the same table a test
//! checks against the router, so the document cannot drift from the service.

use serde_json::{json, Value};

/// One documented route.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method (lower case).
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Scope required (`None`: public).
    pub scope: Option<&'static str>,
    /// Request body schema name, if any.
    pub body: Option<&'static str>,
    /// Success response schema name, if documented.
    pub response: Option<&'static str>,
    /// Success status.
    pub ok: u16,
}

/// Every route of the registry.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "post",
        path: "/v1/agents",
        summary: "Create an agent",
        scope: Some("agents:write"),
        body: Some("Agent"),
        response: None,
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents",
        summary: "List your agents",
        scope: Some("agents:read"),
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents/{id}",
        summary: "Show an agent",
        scope: Some("agents:read"),
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "patch",
        path: "/v1/agents/{id}",
        summary: "Change an agent's metadata",
        scope: Some("agents:write"),
        body: Some("Agent"),
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/agents/{id}",
        summary: "Delete an agent",
        scope: Some("agents:write"),
        body: None,
        response: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/agents/{id}/keys",
        summary: "Add a key (request signed by that key: proof of possession)",
        scope: Some("keys:write"),
        body: Some("AddKey"),
        response: None,
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents/{id}/keys",
        summary: "List keys, retired included",
        scope: Some("agents:read"),
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/agents/{id}/keys/{kid}",
        summary: "Retire a key",
        scope: Some("keys:write"),
        body: None,
        response: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/tokens",
        summary: "Create an API token (shown once)",
        scope: Some("any"),
        body: Some("NewToken"),
        response: None,
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/tokens",
        summary: "List tokens (no secrets)",
        scope: Some("any"),
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/tokens/{id}",
        summary: "Revoke a token",
        scope: Some("any"),
        body: None,
        response: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/accounts",
        summary: "Create an account",
        scope: Some("admin"),
        body: Some("NewAccount"),
        response: None,
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/audit",
        summary: "Read the audit trail (a hash chain with signed checkpoints)",
        scope: Some("admin"),
        body: None,
        response: Some("AuditRecords"),
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/agents/{id}/jwks.json",
        summary: "An agent's published keys (key directory)",
        scope: None,
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/agents/{id}/card.json",
        summary: "An agent's Signature Agent Card",
        scope: None,
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/registry.txt",
        summary: "The registry list of card URLs",
        scope: None,
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/.well-known/http-message-signatures-directory",
        summary: "Key directory on <agent-id>.<agent-host-suffix>",
        scope: None,
        body: None,
        response: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/.well-known/audit-keys.json",
        summary: "The public key verifying the audit trail's checkpoints (JWK Set)",
        scope: None,
        body: None,
        response: Some("JwkSet"),
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        scope: None,
        body: None,
        response: None,
        ok: 200,
    },
];

fn schemas() -> Value {
    let s = |props: Value, required: &[&str]| json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false });
    json!({
        "Agent": s(json!({
            "name": {"type": "string", "maxLength": 200},
            "description": {"type": "string"},
            "homepage": {"type": "string", "format": "uri"},
            "contacts": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "purpose": {"type": "string"},
            "expected_user_agent": {"type": "string"},
            "trigger": {"type": "string", "enum": ["crawler", "fetcher"]},
            "product_token": {"type": "string"}
        }), &["name"]),
        "AddKey": s(json!({
            "jwk": {"type": "object", "description": "public JWK; kid, if present, must be its RFC 7638 thumbprint"},
            "not_before": {"type": "integer"},
            "not_after": {"type": "integer"}
        }), &["jwk"]),
        "NewToken": s(json!({
            "scopes": {"type": "string", "description": "space-separated: agents:read agents:write keys:write admin"},
            "expires_in": {"type": "integer", "minimum": 1},
            "account_id": {"type": "string"}
        }), &["scopes"]),
        "NewAccount": s(json!({ "name": {"type": "string"} }), &["name"]),
        "AuditRecords": {
            "type": "object",
            "properties": {"records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}}},
            "required": ["records"]
        },
        "AuditRecord": {
            "type": "object",
            "description": "One record of the oba-audit chain in the table audit_log; `oba audit verify --db` checks the chain against /.well-known/audit-keys.json",
            "properties": {
                "seq": {"type": "integer", "description": "1, 2, 3, ... without gaps"},
                "at": {"type": "integer", "description": "unix seconds"},
                "time_ms": {"type": "integer", "description": "unix milliseconds"},
                "actor": {"type": ["string", "null"], "description": "account:<id>/token:<id>, account:<id>/oidc or system; null on checkpoints"},
                "auth_method": {"type": ["string", "null"], "description": "token or oidc"},
                "action": {"type": "string", "description": "account.create, token.create, token.revoke, agent.create, agent.update, agent.delete, key.add, key.retire, audit.imported, checkpoint, ..."},
                "target": {"type": ["string", "null"]},
                "key_id": {"type": ["string", "null"], "description": "a key's thumbprint or a token's id"},
                "detail": {"description": "small details, never a secret"},
                "hashes": {"type": "object", "additionalProperties": {"type": "string"}, "description": "request_body: SHA-256, lowercase hex"},
                "prev": {"type": "string", "description": "hash of record seq - 1 (64 zeros for seq 1)"},
                "hash": {"type": "string", "description": "SHA-256 of the record's canonical form"},
                "sig_alg": {"type": ["string", "null"]},
                "sig_keyid": {"type": ["string", "null"], "description": "checkpoints: the kid at /.well-known/audit-keys.json"},
                "sig": {"type": ["string", "null"], "description": "checkpoints: base64url signature"}
            },
            "required": ["seq", "at", "time_ms", "actor", "auth_method", "action", "target", "key_id", "detail", "hashes", "prev", "hash", "sig_alg", "sig_keyid", "sig"]
        },
        "JwkSet": {
            "type": "object",
            "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
            "required": ["keys"]
        },
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}},
            "required": ["error"]
        }
    })
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut op = json!({
            "summary": r.summary,
            "responses": {
                r.ok.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if let Some(schema) = r.response {
            let media = if schema == "JwkSet" {
                crate::audit::JWK_SET_MEDIA_TYPE
            } else {
                "application/json"
            };
            op["responses"][r.ok.to_string()]["content"] =
                json!({ media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}} });
        }
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(b) = r.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
        }
        if let Some(scope) = r.scope {
            op["security"] = json!([{"bearer": []}]);
            op["x-required-scope"] = scope.into();
        }
        paths
            .entry(r.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.insert(r.method.into(), op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "OpenBotAuth registry", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
