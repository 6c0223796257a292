//! Budgets and rate limits (`[[budgets]]`): requests and tokens per fixed window, per
//! principal, per tenant, or shared by every principal a budget matches (a policy
//! group). Before forwarding, the gateway reserves the request's largest possible cost —
//! its prompt at one token per byte plus a margin per message, and its `max_tokens` (or
//! `default_max_tokens`, which is then set on the forwarded request so the model cannot
//! go past it) — against every budget that applies, all or nothing; a request that does
//! not fit gets `429` with `Retry-After`. When the response ends, the reservation is
//! settled with the exact count (or the marked estimate), so no stream can overshoot.
//! Counters live in this process, or in Redis when `redis_url` is set (shared by
//! replicas). A limiter that cannot answer fails closed (`503`).

use std::sync::Arc;
use std::time::Duration;

use oba_budget::{Limit, Limiter, Reason, ReserveError};
use serde_json::Value;

use crate::config::{BudgetPer, BudgetRule};
use crate::identity::Principal;

/// Tokens reserved per message beyond its text (chat templates add role markers).
pub const PER_MESSAGE: u64 = 16;

/// The budget stage.
pub struct Budgets {
    rules: Vec<BudgetRule>,
    /// The limiter.
    pub limiter: Arc<dyn Limiter>,
    default_max_tokens: u64,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budgets({} rules)", self.rules.len())
    }
}

/// A refusal: status, code, message, Retry-After seconds.
pub type Refusal = (axum::http::StatusCode, &'static str, String, Option<u64>);

impl Budgets {
    /// The budget stage, with counters in Redis when `redis` is given.
    pub async fn new(
        rules: Vec<BudgetRule>,
        default_max_tokens: u64,
        redis: Option<(&str, &str)>,
    ) -> Result<Self, String> {
        let limiter: Arc<dyn Limiter> = match redis {
            Some((url, prefix)) => Arc::new(
                oba_budget::RedisLimiter::connect(url, &format!("{prefix}budget:"))
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            None => Arc::new(oba_budget::MemoryLimiter::new()),
        };
        for r in &rules {
            if r.window_secs == 0 {
                return Err(format!("budget {}: window_secs must be > 0", r.name));
            }
        }
        Ok(Budgets {
            rules,
            limiter,
            default_max_tokens,
        })
    }

    /// The budget keys and limits that apply to `principal`.
    fn keys(&self, p: &Principal) -> Vec<(String, Limit)> {
        self.rules
            .iter()
            .filter(|r| {
                r.kind.as_deref().is_none_or(|k| k == p.kind.as_str())
                    && r.tenant
                        .as_deref()
                        .is_none_or(|t| p.tenant.as_deref() == Some(t))
                    && r.id.as_deref().is_none_or(|id| id == p.id)
            })
            .map(|r| {
                let key = match r.per {
                    BudgetPer::Principal => format!("{}:principal:{}", r.name, p.id),
                    BudgetPer::Tenant => {
                        format!("{}:tenant:{}", r.name, p.tenant.as_deref().unwrap_or(""))
                    }
                    BudgetPer::Group => format!("{}:group", r.name),
                };
                let mut limit = Limit::per(Duration::from_secs(r.window_secs));
                limit.requests = r.requests;
                limit.tokens = r.tokens;
                (key, limit)
            })
            .collect()
    }

    /// Reserves this request against every budget of `principal`; `body` (when JSON)
    /// gets `default_max_tokens` if it names no maximum. `None`: no budget applies.
    pub async fn reserve(
        &self,
        principal: &Principal,
        path: &str,
        body: Option<&mut Value>,
        prompt_bytes: usize,
        now_ms: i64,
    ) -> Result<Option<(oba_budget::Reservation, bool)>, (Refusal, Option<Reason>)> {
        let keys = self.keys(principal);
        if keys.is_empty() {
            return Ok(None);
        }
        let (max, set, messages) = match body {
            Some(v) => {
                let (max, set) = max_tokens(path, v, self.default_max_tokens);
                let max = max.saturating_mul(outputs(path, v));
                let messages = v
                    .get("messages")
                    .and_then(Value::as_array)
                    .map_or(1, |m| m.len() as u64);
                (max, set, messages)
            }
            None => (self.default_max_tokens, false, 1),
        };
        let cost = prompt_bytes as u64 + PER_MESSAGE * messages + max;
        match self.limiter.reserve(&keys, cost, now_ms).await {
            Ok(r) => Ok(Some((r, set))),
            Err(ReserveError::Refused(r)) => {
                let code = match r.reason {
                    Reason::TooLarge => "budget_too_small",
                    _ => "budget_exceeded",
                };
                let what = match r.reason {
                    Reason::Requests => "requests",
                    _ => "tokens",
                };
                let message = format!(
                    "budget {}: {what} {} used of {}, this request needs {}",
                    r.key, r.used, r.limit, r.requested
                );
                Err((
                    (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        code,
                        message,
                        r.retry_after.map(|d| d.as_secs()),
                    ),
                    Some(r.reason),
                ))
            }
            Err(ReserveError::Failed(e)) => {
                crate::log(format_args!("budget: limiter failed, refusing: {e}"));
                Err((
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "budget_unavailable",
                        "the budget store is not answering".into(),
                        None,
                    ),
                    None,
                ))
            }
        }
    }

    /// Settles a reservation with the tokens used, in the background.
    pub fn settle(&self, r: oba_budget::Reservation, tokens: u64) {
        settle(self.limiter.clone(), r, tokens);
    }
}

/// How many outputs of up to `max_tokens` each the request asks for: `n` / `best_of`
/// choices, times the prompts of a `/v1/completions` prompt array.
pub fn outputs(path: &str, body: &Value) -> u64 {
    let get = |k: &str| body.get(k).and_then(Value::as_u64).unwrap_or(1).max(1);
    let choices = get("n").max(get("best_of"));
    let prompts = match (path, body.get("prompt")) {
        ("/v1/completions", Some(Value::Array(a))) if !a.is_empty() && !a[0].is_number() => {
            a.len() as u64
        }
        _ => 1,
    };
    choices.saturating_mul(prompts)
}

/// Settles `r` with `tokens` on `limiter`, in the background (the response has ended;
/// nobody waits for it). A failure leaves the reservation standing (never undercounts).
pub fn settle(limiter: Arc<dyn Limiter>, r: oba_budget::Reservation, tokens: u64) {
    tokio::spawn(async move {
        if let Err(e) = limiter.settle(r, tokens).await {
            crate::log(format_args!(
                "budget: settle failed (the reservation stands): {e}"
            ));
        }
    });
}

/// The request's maximum output tokens; when it names none, `default` is set on it so
/// the upstream stops there (the flag says so).
pub fn max_tokens(path: &str, body: &mut Value, default: u64) -> (u64, bool) {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let named = match path {
        "/api/chat" | "/api/generate" => body
            .get("options")
            .and_then(|o| get(o, "num_predict"))
            .filter(|n| *n > 0),
        "/v1/responses" => get(body, "max_output_tokens"),
        _ => get(body, "max_completion_tokens").or_else(|| get(body, "max_tokens")),
    };
    if let Some(n) = named {
        return (n, false);
    }
    if let Some(obj) = body.as_object_mut() {
        match path {
            "/api/chat" | "/api/generate" => {
                let options = obj
                    .entry("options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(o) = options.as_object_mut() {
                    o.insert("num_predict".into(), default.into());
                }
            }
            "/v1/responses" => {
                obj.insert("max_output_tokens".into(), default.into());
            }
            "/v1/chat/completions" | "/v1/completions" => {
                obj.insert("max_tokens".into(), default.into());
            }
            // Embeddings and listings produce no output tokens.
            _ => return (0, false),
        }
        return (default, true);
    }
    (default, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn several_outputs_multiply_the_reservation() {
        assert_eq!(outputs("/v1/chat/completions", &json!({"n": 4})), 4);
        assert_eq!(
            outputs(
                "/v1/completions",
                &json!({"n": 2, "best_of": 5, "prompt": ["a", "b", "c"]})
            ),
            15
        );
        // A prompt of token ids is one prompt.
        assert_eq!(outputs("/v1/completions", &json!({"prompt": [1, 2, 3]})), 1);
        assert_eq!(outputs("/api/chat", &json!({"messages": []})), 1);
        assert_eq!(outputs("/v1/chat/completions", &json!({"n": 0})), 1);
    }

    #[test]
    fn max_tokens_read_or_set_per_protocol() {
        let mut b = json!({"max_tokens": 50});
        assert_eq!(
            max_tokens("/v1/chat/completions", &mut b, 1000),
            (50, false)
        );
        let mut b = json!({"max_completion_tokens": 70, "max_tokens": 50});
        assert_eq!(
            max_tokens("/v1/chat/completions", &mut b, 1000),
            (70, false)
        );
        let mut b = json!({"messages": []});
        assert_eq!(
            max_tokens("/v1/chat/completions", &mut b, 1000),
            (1000, true)
        );
        assert_eq!(b["max_tokens"], 1000, "the default is enforced upstream");
        let mut b = json!({"options": {"num_predict": 30}});
        assert_eq!(max_tokens("/api/chat", &mut b, 1000), (30, false));
        let mut b = json!({"options": {"num_predict": -1}});
        assert_eq!(max_tokens("/api/generate", &mut b, 1000), (1000, true));
        assert_eq!(
            b["options"]["num_predict"], 1000,
            "-1 (unlimited) is replaced"
        );
        let mut b = json!({});
        assert_eq!(max_tokens("/v1/responses", &mut b, 9), (9, true));
        assert_eq!(b["max_output_tokens"], 9);
        let mut b = json!({"input": "x"});
        assert_eq!(max_tokens("/v1/embeddings", &mut b, 9), (0, false));
        assert_eq!(b, json!({"input": "x"}));
    }
}
