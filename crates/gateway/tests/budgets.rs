//! Budgets end to end: many concurrent streaming requests never take a token budget
//! past its limit (in-process, and two gateway replicas sharing Redis); request limits
//! answer 429 with Retry-After; a request that can never fit is told so; a budgeted
//! request without a maximum gets the default set upstream.

use std::sync::{Arc, Mutex};

use attach_gateway::config::{BudgetPer, BudgetRule, MeteringConfig, Rule, Upstream, UpstreamKind};
use attach_gateway::GatewayConfig;
use oba_ledger::{Ledger, Query};
use serde_json::{json, Value};

/// An upstream that honours `max_tokens`: it streams min(max_tokens, 40) one-token
/// deltas and reports usage (prompt 10) when asked.
async fn upstream(seen: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                seen.lock().unwrap().push(v.clone());
                let n = v["max_tokens"].as_u64().unwrap_or(10_000).min(40);
                let mut out = String::new();
                for _ in 0..n {
                    out.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"}}]}\n\n");
                }
                if v["stream_options"]["include_usage"] == json!(true) {
                    out.push_str(&format!(
                        "data: {}\n\n",
                        json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n}})
                    ));
                }
                out.push_str("data: [DONE]\n\n");
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from(out))
                    .unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

struct Setup {
    dir: tempfile::TempDir,
    upstream: String,
    seen: Arc<Mutex<Vec<Value>>>,
    key: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::default();
    let upstream = upstream(Arc::clone(&seen)).await;
    let key =
        attach_gateway::apikeys::create(&dir.path().join("keys.jsonl"), "ci", Some("acme"), 0)
            .unwrap();
    Setup {
        dir,
        upstream,
        seen,
        key,
    }
}

fn config(s: &Setup, budgets: Vec<BudgetRule>, redis: Option<(&str, &str)>) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "test".into(),
            url: s.upstream.clone(),
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(s.dir.path().join("keys.jsonl")),
        policy: vec![Rule::default()],
        budgets,
        default_max_tokens: 30,
        redis_url: redis.map(|r| r.0.to_owned()),
        redis_prefix: redis.map(|r| r.1.to_owned()).unwrap_or_default(),
        metering: Some(MeteringConfig::new(&format!(
            "sqlite:{}",
            s.dir.path().join("usage.db").display()
        ))),
        ..GatewayConfig::default()
    }
}

fn budget(tokens: Option<u64>, requests: Option<u64>) -> BudgetRule {
    BudgetRule {
        name: "b".into(),
        per: BudgetPer::Tenant,
        kind: None,
        tenant: Some("acme".into()),
        id: None,
        window_secs: 3600,
        requests,
        tokens,
    }
}

async fn chat(
    addr: std::net::SocketAddr,
    key: &str,
    max_tokens: Option<u64>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "count"}]});
    if let Some(n) = max_tokens {
        body["max_tokens"] = n.into();
    }
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Fires `n` concurrent streamed requests at the gateways (round robin); returns how
/// many were admitted, and checks every refusal's shape.
async fn storm(addrs: &[std::net::SocketAddr], key: &str, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (addr, key) = (addrs[i % addrs.len()], key.to_owned());
            tokio::spawn(async move { chat(addr, &key, Some(40)).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        match status {
            200 => admitted += 1,
            429 => {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "budget_exceeded", "{body}");
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=3600).contains(&retry));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    admitted
}

/// The tokens the ledger billed to successful requests, once every record is written.
async fn billed(s: &Setup, admitted: usize) -> u64 {
    let ledger = Ledger::connect(&format!(
        "sqlite:{}",
        s.dir.path().join("usage.db").display()
    ))
    .await
    .unwrap();
    for _ in 0..200 {
        let ok: Vec<_> = ledger
            .records(&Query::default(), 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect();
        if ok.len() == admitted {
            assert!(ok.iter().all(|r| r.exact));
            return ok
                .iter()
                .map(|r| r.prompt_tokens + r.completion_tokens)
                .sum();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the ledger never got {admitted} records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_overshoot_the_token_budget() {
    let s = setup().await;
    // Each request reserves "count" (5) + 16 + 40 = 61 tokens and uses 10 + 40 = 50.
    let gw = attach_gateway::start(config(&s, vec![budget(Some(500), None)], None))
        .await
        .unwrap();
    let admitted = storm(&[gw.addr], &s.key, 40).await;
    assert!(
        admitted >= 8,
        "500 / 61 reservations fit at once: {admitted}"
    );
    let used = billed(&s, admitted).await;
    assert!(used <= 500, "billed {used} > 500");
    assert_eq!(used, admitted as u64 * 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_the_budget() {
    let Ok(redis) = std::env::var("OBA_TEST_REDIS_URL") else {
        eprintln!("skipped: OBA_TEST_REDIS_URL not set");
        return;
    };
    let s = setup().await;
    let prefix = format!(
        "oba:test:budget:{}:{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let rules = vec![budget(Some(500), Some(7))];
    let a = attach_gateway::start(config(&s, rules.clone(), Some((&redis, &prefix))))
        .await
        .unwrap();
    let b = attach_gateway::start(config(&s, rules, Some((&redis, &prefix))))
        .await
        .unwrap();
    let admitted = storm(&[a.addr, b.addr], &s.key, 30).await;
    assert_eq!(admitted, 7, "7 requests across both, not 7 each");
    let used = billed(&s, admitted).await;
    assert!(used <= 500, "billed {used} > 500");
    // Clean up this test's keys.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the counters were in Redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_refuse_with_retry_after_and_the_default_maximum_is_enforced() {
    let s = setup().await;
    let gw = attach_gateway::start(config(&s, vec![budget(None, Some(2))], None))
        .await
        .unwrap();
    let (status, _, _) = chat(gw.addr, &s.key, None).await;
    assert_eq!(status, 200);
    // No max_tokens from the client: the default (30) went upstream.
    assert_eq!(s.seen.lock().unwrap().last().unwrap()["max_tokens"], 30);
    let (status, _, _) = chat(gw.addr, &s.key, Some(5)).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.seen.lock().unwrap().last().unwrap()["max_tokens"],
        5,
        "the client's own maximum is kept"
    );
    let (status, headers, body) = chat(gw.addr, &s.key, Some(5)).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("requests"));
    assert!(headers.contains_key("retry-after"));
    let metrics = reqwest::get(format!("http://{}/metrics", gw.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("attach_budget_refusals_total{reason=\"requests\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        s.seen.lock().unwrap().len(),
        2,
        "the refused request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_whole_budget_is_told_it_can_never_fit() {
    let s = setup().await;
    let gw = attach_gateway::start(config(&s, vec![budget(Some(100), None)], None))
        .await
        .unwrap();
    let (status, headers, body) = chat(gw.addr, &s.key, Some(1_000)).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "budget_too_small");
    assert!(
        !headers.contains_key("retry-after"),
        "waiting would not help"
    );
}
