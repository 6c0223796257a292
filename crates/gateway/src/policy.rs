//! Zero-trust policy: deny by default; a request passes when one rule matches its
//! principal, route and model.

use crate::config::{MemoryMode, Rule, UsageScope};
use crate::identity::Principal;

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// Does any rule allow `principal` to call `route` with `model`?
pub fn allows(rules: &[Rule], principal: &Principal, route: &str, model: Option<&str>) -> bool {
    rules.iter().any(|r| matches(r, principal, route, model))
}

/// The most memory the matching rules allow (`default` for a rule that does not say);
/// `Off` when none matches.
pub fn memory_cap(
    rules: &[Rule],
    principal: &Principal,
    route: &str,
    model: Option<&str>,
    default: MemoryMode,
) -> MemoryMode {
    rules
        .iter()
        .filter(|r| matches(r, principal, route, model))
        .map(|r| r.memory.unwrap_or(default))
        .max()
        .unwrap_or(MemoryMode::Off)
}

/// Whose usage `principal` may read: the widest scope of the rules that let it reach
/// `route`.
pub fn usage_scope(rules: &[Rule], principal: &Principal, route: &str) -> UsageScope {
    rules
        .iter()
        .filter(|r| matches(r, principal, route, None))
        .map(|r| r.usage.unwrap_or_default())
        .max()
        .unwrap_or_default()
}

fn matches(r: &Rule, principal: &Principal, route: &str, model: Option<&str>) -> bool {
    r.kind
        .as_deref()
        .is_none_or(|k| k == principal.kind.as_str())
        && r.id.as_deref().is_none_or(|id| id == principal.id)
        && r.tenant
            .as_deref()
            .is_none_or(|t| principal.tenant.as_deref() == Some(t))
        && r.agent.as_deref().is_none_or(|a| {
            principal
                .agent
                .as_deref()
                .is_some_and(|pa| pa.starts_with(a))
        })
        && r.claims
            .iter()
            .all(|(k, want)| match principal.claims.get(k) {
                Some(serde_json::Value::String(v)) => v == want,
                Some(serde_json::Value::Array(a)) => {
                    a.iter().any(|v| v.as_str() == Some(want.as_str()))
                }
                Some(serde_json::Value::Bool(b)) => b.to_string() == *want,
                Some(serde_json::Value::Number(n)) => n.to_string() == *want,
                _ => false,
            })
        && (r.routes.is_empty() || r.routes.iter().any(|x| glob(x, route)))
        && (r.models.is_empty() || model.is_some_and(|m| r.models.iter().any(|x| glob(x, m))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AuthMethod, PrincipalKind};

    fn p(kind: PrincipalKind, id: &str, tenant: Option<&str>) -> Principal {
        Principal {
            kind,
            id: id.into(),
            tenant: tenant.map(Into::into),
            user: None,
            agent: None,
            auth_method: AuthMethod::ApiKey,
            key_id: None,
            claims: serde_json::Map::new(),
        }
    }

    #[test]
    fn deny_by_default_and_every_field_narrows() {
        let svc = p(PrincipalKind::Service, "key:ci", Some("acme"));
        assert!(!allows(&[], &svc, "/v1/models", None));
        let rule = Rule {
            tenant: Some("acme".into()),
            routes: vec!["/v1/chat/completions".into()],
            models: vec!["llama3*".into()],
            ..Rule::default()
        };
        assert!(allows(
            std::slice::from_ref(&rule),
            &svc,
            "/v1/chat/completions",
            Some("llama3.1")
        ));
        assert!(!allows(
            std::slice::from_ref(&rule),
            &svc,
            "/v1/chat/completions",
            Some("gpt-4")
        ));
        assert!(!allows(
            std::slice::from_ref(&rule),
            &svc,
            "/v1/chat/completions",
            None
        ));
        assert!(!allows(
            std::slice::from_ref(&rule),
            &svc,
            "/v1/embeddings",
            Some("llama3")
        ));
        assert!(!allows(
            std::slice::from_ref(&rule),
            &p(PrincipalKind::Service, "key:x", Some("other")),
            "/v1/chat/completions",
            Some("llama3")
        ));
        let bots = Rule {
            kind: Some("bot".into()),
            ..Rule::default()
        };
        assert!(!allows(
            std::slice::from_ref(&bots),
            &svc,
            "/v1/models",
            None
        ));
    }
}
