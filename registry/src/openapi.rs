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
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents",
        summary: "List your agents",
        scope: Some("agents:read"),
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents/{id}",
        summary: "Show an agent",
        scope: Some("agents:read"),
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "patch",
        path: "/v1/agents/{id}",
        summary: "Change an agent's metadata",
        scope: Some("agents:write"),
        body: Some("Agent"),
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/agents/{id}",
        summary: "Delete an agent",
        scope: Some("agents:write"),
        body: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/agents/{id}/keys",
        summary: "Add a key (request signed by that key: proof of possession)",
        scope: Some("keys:write"),
        body: Some("AddKey"),
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/agents/{id}/keys",
        summary: "List keys, retired included",
        scope: Some("agents:read"),
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/agents/{id}/keys/{kid}",
        summary: "Retire a key",
        scope: Some("keys:write"),
        body: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/tokens",
        summary: "Create an API token (shown once)",
        scope: Some("any"),
        body: Some("NewToken"),
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/tokens",
        summary: "List tokens (no secrets)",
        scope: Some("any"),
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "delete",
        path: "/v1/tokens/{id}",
        summary: "Revoke a token",
        scope: Some("any"),
        body: None,
        ok: 204,
    },
    RouteDoc {
        method: "post",
        path: "/v1/accounts",
        summary: "Create an account",
        scope: Some("admin"),
        body: Some("NewAccount"),
        ok: 201,
    },
    RouteDoc {
        method: "get",
        path: "/v1/audit",
        summary: "Read the audit trail",
        scope: Some("admin"),
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/agents/{id}/jwks.json",
        summary: "An agent's published keys (key directory)",
        scope: None,
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/agents/{id}/card.json",
        summary: "An agent's Signature Agent Card",
        scope: None,
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/registry.txt",
        summary: "The registry list of card URLs",
        scope: None,
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/.well-known/http-message-signatures-directory",
        summary: "Key directory on <agent-id>.<agent-host-suffix>",
        scope: None,
        body: None,
        ok: 200,
    },
    RouteDoc {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        scope: None,
        body: None,
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
