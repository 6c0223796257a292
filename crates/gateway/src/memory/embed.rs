//! Embeddings for vector recall, computed by the upstream's own embedding endpoint
//! (`/v1/embeddings` for OpenAI-compatible servers, `/api/embed` for Ollama). The
//! gateway calls it as itself: the request carries the stamp of the principal
//! `service:attach-gateway-memory`, so a model server that checks stamps accepts it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::UpstreamKind;
use crate::identity::{AuthMethod, Principal, PrincipalKind};
use crate::stamp::Stamper;

/// The principal the gateway stamps its own embedding calls with.
pub const PRINCIPAL: &str = "service:attach-gateway-memory";

/// Calls the embedding endpoint.
pub struct Embedder {
    http: reqwest::Client,
    url: String,
    kind: UpstreamKind,
    model: String,
    stamper: Arc<Stamper>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedder({}, {})", self.url, self.model)
    }
}

impl Embedder {
    /// An embedder for `model` on the upstream at `base` (of `kind`).
    pub fn new(
        http: reqwest::Client,
        base: &str,
        kind: UpstreamKind,
        model: &str,
        stamper: Arc<Stamper>,
    ) -> Self {
        let path = match kind {
            UpstreamKind::Openai => "/v1/embeddings",
            UpstreamKind::Ollama => "/api/embed",
        };
        Embedder {
            http,
            url: format!("{}{path}", base.trim_end_matches('/')),
            kind,
            model: model.to_owned(),
            stamper,
        }
    }

    /// One vector per input, in order.
    pub async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({ "model": self.model, "input": inputs }).to_string();
        let principal = Principal {
            kind: PrincipalKind::Service,
            id: PRINCIPAL.into(),
            tenant: None,
            user: None,
            agent: None,
            auth_method: AuthMethod::Gateway,
            key_id: None,
            claims: serde_json::Map::new(),
        };
        let request_id = oba_httpsig::random_nonce();
        let stamped = self.stamper.stamp(
            &axum::http::Method::POST,
            &self.url,
            &principal,
            None,
            &request_id,
            body.as_bytes(),
            crate::now(),
        )?;
        let mut req = self
            .http
            .post(&self.url)
            .timeout(Duration::from_secs(30))
            .header("content-type", "application/json");
        for (n, v) in stamped {
            req = req.header(n, v);
        }
        let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("embeddings: {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let vectors: Vec<&Value> = match self.kind {
            UpstreamKind::Openai => {
                let mut data: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
                data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
                data.into_iter().map(|d| &d["embedding"]).collect()
            }
            UpstreamKind::Ollama => v["embeddings"].as_array().into_iter().flatten().collect(),
        };
        let out: Vec<Vec<f32>> = vectors
            .into_iter()
            .map(|e| {
                e.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_f64)
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        if out.len() != inputs.len() || out.iter().any(Vec::is_empty) {
            return Err("embeddings: the answer does not match the inputs".into());
        }
        Ok(out)
    }
}

/// Vector recall's ranking: cosine similarity, with a recency bonus that halves every
/// `half_life_days` (0.8 × similarity + 0.2 × recency).
pub fn score(similarity: f32, age_ms: i64, half_life_days: f64) -> f64 {
    let age_days = age_ms.max(0) as f64 / 86_400_000.0;
    let recency = 0.5f64.powf(age_days / half_life_days.max(0.001));
    0.8 * f64::from(similarity) + 0.2 * recency
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_dominates_and_recency_breaks_ties() {
        let day = 86_400_000;
        assert!(score(0.9, 30 * day, 7.0) > score(0.5, 0, 7.0));
        assert!(score(0.7, 0, 7.0) > score(0.7, 7 * day, 7.0));
        assert!((score(1.0, 0, 7.0) - 1.0).abs() < 1e-9);
        assert!((score(0.0, 7 * day, 7.0) - 0.1).abs() < 1e-9);
    }
}
