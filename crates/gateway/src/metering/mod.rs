//! Metering: one usage record per request that passed authentication, written off the
//! request path (through the [`crate::outbox`]) to the ledger (`oba-ledger`), with exact
//! counts from the upstream when it gives them ([`usage`]) and an estimate, marked as
//! such, when it does not. Upstream errors are never billed as output.
//!
//! `GET /attach/v1/usage?since=&until=&group_by=principal|model|tenant|day` reports;
//! the policy route is `/attach/v1/usage`, and a principal sees its own usage unless
//! its rule grants `usage = "tenant"` or `"all"`.

pub mod usage;

use std::sync::Arc;

use axum::http::StatusCode;
use oba_ledger::{GroupBy, Ledger, Query, UsageRecord};
use serde_json::{json, Value};

use crate::config::{MeteringConfig, UsageScope};
use crate::identity::Principal;
use crate::outbox::{Outbox, Sink};

/// The usage API's path.
pub const PATH: &str = "/attach/v1/usage";

struct LedgerSink(Ledger);

#[async_trait::async_trait]
impl Sink<UsageRecord> for LedgerSink {
    async fn write(&self, batch: &mut [UsageRecord]) -> Result<(), crate::outbox::SinkError> {
        self.0.record(batch).await.map_err(|e| match e {
            oba_ledger::LedgerError::Unavailable(m) => crate::outbox::SinkError::Unavailable(m),
            e => crate::outbox::SinkError::Rejected(e.to_string()),
        })
    }
}

/// The metering stage.
pub struct Metering {
    /// The ledger (reads).
    pub ledger: Ledger,
    /// The write path.
    pub outbox: Outbox<UsageRecord>,
}

impl std::fmt::Debug for Metering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metering")
    }
}

impl Metering {
    /// Opens the ledger and starts the outbox.
    pub async fn open(
        config: &MeteringConfig,
    ) -> Result<(Metering, tokio::task::JoinHandle<()>), String> {
        let ledger = Ledger::connect(&config.store)
            .await
            .map_err(|e| e.to_string())?;
        let journal = config.journal.clone().unwrap_or_else(|| {
            crate::outbox::default_journal(&config.store, "attach-usage.journal")
        });
        let (outbox, task) = Outbox::start(
            Arc::new(LedgerSink(ledger.clone())),
            journal,
            config.queue_capacity,
        );
        Ok((Metering { ledger, outbox }, task))
    }
}

/// Estimated tokens of a text (4 bytes a token, rounded up).
pub fn estimate(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

/// Bytes of the prompt text in a request body: every message `content` / `prompt` /
/// `input` string (not the JSON around it).
pub fn prompt_bytes(body: &Value) -> usize {
    fn strings(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(strings).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "content"
                            | "text"
                            | "input"
                            | "prompt"
                            | "messages"
                            | "system"
                            | "instructions"
                    )
                })
                .map(|(_, v)| strings(v))
                .sum(),
            _ => 0,
        }
    }
    strings(body)
}

/// Handles `GET /attach/v1/usage` for an authenticated, policy-allowed principal whose
/// rule grants `scope`.
pub async fn report(
    m: &Metering,
    principal: &Principal,
    scope: UsageScope,
    query: Option<&str>,
) -> Result<(StatusCode, Value), (StatusCode, &'static str, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, "invalid_request", m);
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let int = || {
            v.parse::<i64>()
                .map_err(|_| bad(format!("{k} must be unix ms")))
        };
        match k.as_ref() {
            "since" => q.since = Some(int()?),
            "until" => q.until = Some(int()?),
            "group_by" => {
                q.group_by = GroupBy::parse(&v)
                    .ok_or_else(|| bad("group_by is principal, model, tenant or day".into()))?
            }
            "tenant" => q.tenant = Some(v.into_owned()),
            "principal" => q.principal = Some(v.into_owned()),
            other => return Err(bad(format!("unknown parameter {other}"))),
        }
    }
    // What the principal may see: narrowing is always allowed, widening never.
    match scope {
        UsageScope::Own => {
            if q.principal.as_deref().is_some_and(|p| p != principal.id)
                || q.tenant
                    .as_deref()
                    .is_some_and(|t| Some(t) != principal.tenant.as_deref())
            {
                return Err((
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only your own usage".into(),
                ));
            }
            q.principal = Some(principal.id.clone());
            q.tenant = Some(principal.tenant.clone().unwrap_or_default());
        }
        UsageScope::Tenant => {
            let own = principal.tenant.clone().unwrap_or_default();
            if q.tenant.as_deref().is_some_and(|t| t != own) {
                return Err((
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only your tenant's usage".into(),
                ));
            }
            q.tenant = Some(own);
        }
        UsageScope::All => {}
    }
    let rows = m.ledger.report(&q).await.map_err(|e| {
        crate::log(format_args!("metering: {e}"));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            "the usage ledger is not answering".to_owned(),
        )
    })?;
    Ok((
        StatusCode::OK,
        json!({ "group_by": q.group_by, "rows": rows }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_bytes_counts_text_not_json() {
        let body = json!({"model": "m", "stream": true, "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "efgh"}]},
        ]});
        assert_eq!(prompt_bytes(&body), 8);
        assert_eq!(prompt_bytes(&json!({"prompt": "123456"})), 6);
        assert_eq!(estimate(8), 2);
        assert_eq!(estimate(9), 3);
    }
}
