//! Metering end to end over real sockets: a test upstream speaking the OpenAI and
//! Ollama protocols (usage in answers, in the last stream chunk only when asked, Ollama
//! counts in the final object), the gateway with a SQLite ledger, and the ledger read
//! back record by record.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attach_gateway::config::{MeteringConfig, Rule, Upstream, UpstreamKind, UsageScope};
use attach_gateway::GatewayConfig;
use futures_util::StreamExt;
use oba_ledger::{Ledger, Query, UsageRecord};
use serde_json::{json, Value};

/// The request bodies the upstream received.
type Seen = Arc<Mutex<Vec<Value>>>;

fn sse(events: &[Value]) -> String {
    let mut s: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

async fn upstream(seen: Seen) -> String {
    let s2 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    seen.lock().unwrap().push(v.clone());
                    let model = v["model"].as_str().unwrap_or_default().to_owned();
                    let usage = json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9});
                    let json = |status: u16, body: Value| {
                        axum::response::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(body.to_string()))
                            .unwrap()
                    };
                    if model == "error" {
                        // An upstream error that still reports tokens: never billed as output.
                        return json(500, json!({"error": {"message": "boom"}, "usage": {"prompt_tokens": 3, "completion_tokens": 7}}));
                    }
                    if v["stream"] != json!(true) {
                        let mut answer = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}}]});
                        if model != "nousage" {
                            answer["usage"] = usage;
                        }
                        return json(200, answer);
                    }
                    let chunk = |t: &str| json!({"choices": [{"index": 0, "delta": {"content": t}}]});
                    if model == "slow" || model == "hang" {
                        // One chunk, then a pause the client leaves during; then the
                        // rest, with the usage when asked ("hang": the pause is 30 s).
                        let pause = Duration::from_millis(if model == "slow" { 400 } else { 30_000 });
                        let first = format!("data: {}\n\n", chunk("Partial"));
                        let mut rest = vec![chunk(" answer")];
                        if v["stream_options"]["include_usage"] == json!(true) {
                            rest.push(json!({"choices": [], "usage": usage}));
                        }
                        let rest = sse(&rest);
                        let s = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                            .chain(futures_util::stream::once(async move {
                                tokio::time::sleep(pause).await;
                                Ok(rest)
                            }));
                        return axum::response::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(axum::body::Body::from_stream(s))
                            .unwrap();
                    }
                    let mut events = vec![chunk("Hel"), chunk("lo")];
                    if v["stream_options"]["include_usage"] == json!(true) {
                        events.push(json!({"choices": [], "usage": usage}));
                    }
                    axum::response::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from(sse(&events)))
                        .unwrap()
                }
            }),
        )
        .route(
            "/api/chat",
            axum::routing::post(move |body: String| {
                let seen = s2.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    seen.lock().unwrap().push(v.clone());
                    let ndjson = |l: Value| format!("{l}\n");
                    if v["model"] == "slow" {
                        // The first line, a pause the client leaves during, the counts.
                        let first = ndjson(json!({"message": {"role": "assistant", "content": "Hi"}, "done": false}));
                        let last = ndjson(json!({"message": {"role": "assistant", "content": ""}, "done": true, "prompt_eval_count": 11, "eval_count": 3}));
                        let s = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                            .chain(futures_util::stream::once(async move {
                                tokio::time::sleep(Duration::from_millis(400)).await;
                                Ok(last)
                            }));
                        return axum::response::Response::builder()
                            .header("content-type", "application/x-ndjson")
                            .body(axum::body::Body::from_stream(s))
                            .unwrap();
                    }
                    let lines = [
                        json!({"message": {"role": "assistant", "content": "Hi"}, "done": false}),
                        json!({"message": {"role": "assistant", "content": ""}, "done": true, "prompt_eval_count": 11, "eval_count": 3}),
                    ];
                    let body: String = lines.into_iter().map(ndjson).collect();
                    axum::response::Response::builder()
                        .header("content-type", "application/x-ndjson")
                        .body(axum::body::Body::from(body))
                        .unwrap()
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

struct Env {
    gw: attach_gateway::Gateway,
    ledger: Ledger,
    seen: Seen,
    alice: String,
    bob: String,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(tune: impl FnOnce(&mut GatewayConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let up = upstream(seen.clone()).await;
    let keys = dir.path().join("keys.jsonl");
    let key = |n: &str, t: &str| attach_gateway::apikeys::create(&keys, n, Some(t), 0).unwrap();
    let (alice, bob, admin) = (
        key("alice", "acme"),
        key("bob", "acme"),
        key("admin", "acme"),
    );
    let db = format!("sqlite:{}", dir.path().join("usage.db").display());
    let mut config = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "test".into(),
            url: up,
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(keys.clone()),
        policy: vec![
            Rule::default(),
            Rule {
                id: Some("key:admin".into()),
                usage: Some(UsageScope::Tenant),
                ..Rule::default()
            },
        ],
        metering: Some(MeteringConfig::new(&db)),
        ..GatewayConfig::default()
    };
    tune(&mut config);
    let gw = attach_gateway::start(config).await.unwrap();
    let ledger = Ledger::connect(&db).await.unwrap();
    Env {
        gw,
        ledger,
        seen,
        alice,
        bob,
        admin,
        _dir: dir,
    }
}

impl Env {
    async fn post(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("http://{}{path}", self.gw.addr))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// The record of `request_id`, once the outbox wrote it.
    async fn record(&self, request_id: &str) -> UsageRecord {
        for _ in 0..200 {
            let all = self
                .ledger
                .records(&Query::default(), 10_000)
                .await
                .unwrap();
            if let Some(r) = all.into_iter().find(|r| r.request_id == request_id) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no usage record for {request_id}");
    }
}

fn rid(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_counts_are_exact() {
    let e = env().await;
    let r = e
        .post(&e.alice, "/v1/chat/completions", chat("m1", false))
        .await;
    assert_eq!(r.status(), 200);
    let id = rid(&r);
    let body = r.bytes().await.unwrap();
    let rec = e.record(&id).await;
    assert_eq!(
        (rec.prompt_tokens, rec.completion_tokens, rec.exact),
        (5, 4, true)
    );
    assert_eq!(
        (rec.status, rec.streamed, rec.cancelled),
        (200, false, false)
    );
    assert_eq!(rec.principal, "key:alice");
    assert_eq!(
        (
            rec.tenant.as_str(),
            rec.principal_kind.as_str(),
            rec.auth_method.as_str()
        ),
        ("acme", "service", "api-key")
    );
    assert_eq!(
        (
            rec.model.as_deref(),
            rec.upstream.as_str(),
            rec.route.as_str()
        ),
        (Some("m1"), "test", "/v1/chat/completions")
    );
    assert_eq!(rec.bytes_out, body.len() as u64);
    assert_eq!(rec.bytes_in, chat("m1", false).to_string().len() as u64);
    assert!(rec.upstream_ttfb_us.is_some() && rec.latency_us >= rec.upstream_ttfb_us.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_did_not_ask_for_usage_is_counted_exactly_and_the_chunk_removed() {
    let e = env().await;
    let r = e
        .post(&e.alice, "/v1/chat/completions", chat("m1", true))
        .await;
    let id = rid(&r);
    let text = r.text().await.unwrap();
    // The gateway asked the upstream for the usage chunk...
    let sent = e.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // ...and the client gets the stream it asked for: no usage chunk.
    let want = sse(&[
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
    ]);
    assert_eq!(text, want);
    let rec = e.record(&id).await;
    assert_eq!(
        (
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.exact,
            rec.streamed
        ),
        (5, 4, true, true)
    );
    assert_eq!(rec.bytes_out, want.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_asked_for_usage_keeps_its_chunk() {
    let e = env().await;
    let mut body = chat("m1", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = e.post(&e.alice, "/v1/chat/completions", body).await;
    let id = rid(&r);
    let text = r.text().await.unwrap();
    // The client asked: it gets the upstream's stream, usage chunk included, unchanged.
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9});
    let want = sse(&[
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
        json!({"choices": [], "usage": usage}),
    ]);
    assert_eq!(text, want);
    let rec = e.record(&id).await;
    assert_eq!(
        (rec.prompt_tokens, rec.completion_tokens, rec.exact),
        (5, 4, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_counts_come_from_the_final_object() {
    let e = env().await;
    let r = e
        .post(
            &e.alice,
            "/api/chat",
            json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let id = rid(&r);
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let rec = e.record(&id).await;
    assert_eq!(
        (
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.exact,
            rec.streamed
        ),
        (11, 3, true, true)
    );
    // Not an OpenAI route: the request went through unchanged.
    assert!(e
        .seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .get("stream_options")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_never_billed_as_output() {
    let e = env().await;
    let r = e
        .post(&e.alice, "/v1/chat/completions", chat("error", false))
        .await;
    assert_eq!(r.status(), 500);
    let id = rid(&r);
    r.text().await.unwrap();
    let rec = e.record(&id).await;
    assert_eq!(
        (rec.status, rec.completion_tokens, rec.prompt_tokens),
        (500, 0, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstream_usage_the_counts_are_marked_estimated() {
    let e = env().await;
    let r = e
        .post(&e.alice, "/v1/chat/completions", chat("nousage", false))
        .await;
    let id = rid(&r);
    r.text().await.unwrap();
    let rec = e.record(&id).await;
    assert!(!rec.exact);
    // "Say hello" = 9 bytes → 3 tokens; "Hello there" = 11 bytes → 3 tokens.
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (3, 3));
}

/// Sends a streamed request, reads its first chunk and leaves; returns the request id
/// and the bytes received.
async fn leave_after_first_chunk(e: &Env, path: &str, body: Value) -> (String, usize) {
    let r = e.post(&e.alice, path, body).await;
    assert_eq!(r.status(), 200);
    let id = rid(&r);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    drop(stream);
    (id, first.len())
}

async fn metrics(e: &Env) -> String {
    reqwest::get(format!("http://{}/metrics", e.gw.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_billed_exactly_from_the_drained_rest() {
    let e = env().await;
    let (id, sent) = leave_after_first_chunk(&e, "/v1/chat/completions", chat("slow", true)).await;
    let rec = e.record(&id).await;
    assert!(rec.cancelled && rec.streamed);
    assert!(
        rec.exact,
        "the rest of the answer was read for its usage chunk"
    );
    assert_eq!((rec.prompt_tokens, rec.completion_tokens), (5, 4));
    assert_eq!(rec.bytes_out, sent as u64, "only what reached the client");
    assert_eq!(
        e.seen.lock().unwrap()[0]["stream_options"]["include_usage"],
        json!(true)
    );
    assert!(metrics(&e)
        .await
        .contains("attach_client_disconnects_total{counts=\"exact\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_client_that_disconnects_mid_stream_is_billed_exactly() {
    let e = env().await;
    let body = json!({"model": "slow", "messages": [{"role": "user", "content": "Say hello"}]});
    let (id, sent) = leave_after_first_chunk(&e, "/api/chat", body).await;
    let rec = e.record(&id).await;
    assert_eq!(
        (
            rec.cancelled,
            rec.exact,
            rec.prompt_tokens,
            rec.completion_tokens
        ),
        (true, true, 11, 3)
    );
    assert_eq!(rec.bytes_out, sent as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_draining_off_a_disconnect_is_estimated_from_what_passed() {
    let e = env_with(|c| c.disconnect_drain_secs = 0).await;
    let (id, sent) = leave_after_first_chunk(&e, "/v1/chat/completions", chat("slow", true)).await;
    let rec = e.record(&id).await;
    assert!(rec.cancelled && rec.streamed);
    assert!(!rec.exact, "no usage arrived: estimated from what passed");
    assert_eq!(rec.completion_tokens, 2, "\"Partial\" = 7 bytes");
    assert_eq!(rec.bytes_out, sent as u64);
    assert!(metrics(&e)
        .await
        .contains("attach_client_disconnects_total{counts=\"estimated\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_limit_is_estimated() {
    let e = env_with(|c| c.disconnect_drain_secs = 1).await;
    let t = std::time::Instant::now();
    let (id, _) = leave_after_first_chunk(&e, "/v1/chat/completions", chat("hang", true)).await;
    let rec = e.record(&id).await;
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "not the upstream's 30 s"
    );
    assert_eq!(
        (rec.cancelled, rec.exact, rec.completion_tokens),
        (true, false, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_drain_and_keeps_its_record() {
    let e = env().await;
    let (id, _) = leave_after_first_chunk(&e, "/v1/chat/completions", chat("hang", true)).await;
    let Env {
        gw, ledger, _dir, ..
    } = e;
    let t = std::time::Instant::now();
    gw.shutdown(Duration::from_secs(10)).await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the drain did not hold shutdown"
    );
    let all = ledger.records(&Query::default(), 100).await.unwrap();
    let rec = all
        .iter()
        .find(|r| r.request_id == id)
        .expect("recorded before shutdown returned");
    assert_eq!(
        (rec.cancelled, rec.exact, rec.completion_tokens),
        (true, false, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_request_and_reports_by_scope() {
    let e = env().await;
    let mut ids = Vec::new();
    for (key, model) in [(&e.alice, "m1"), (&e.alice, "m2"), (&e.bob, "m1")] {
        let r = e
            .post(key, "/v1/chat/completions", chat(model, false))
            .await;
        ids.push(rid(&r));
        r.text().await.unwrap();
    }
    for id in &ids {
        e.record(id).await;
    }
    let all = e.ledger.records(&Query::default(), 10_000).await.unwrap();
    assert_eq!(all.len(), 3, "no double counting");
    let get = |key: &str, q: &str| {
        let url = format!("http://{}/attach/v1/usage{q}", e.gw.addr);
        let key = key.to_owned();
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    // Alice sees her own usage only, whatever she asks.
    let (status, v) = get(&e.alice, "?group_by=model").await;
    assert_eq!(status, 200);
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["rows"][0]["group"], "m1");
    assert_eq!(v["rows"][0]["requests"], 1);
    assert_eq!(v["rows"][0]["completion_tokens"], 4);
    let (status, v) = get(&e.alice, "?principal=key:bob").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // The admin's rule grants the tenant.
    let (_, v) = get(&e.admin, "?group_by=principal").await;
    let groups: Vec<_> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        vec![("key:alice".to_owned(), 2), ("key:bob".to_owned(), 1)]
    );
    let (status, _) = get(&e.admin, "?tenant=other").await;
    assert_eq!(status, 403);
    let (status, v) = get(&e.alice, "?group_by=week").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = get("oba_wrong", "").await;
    assert_eq!(status, 401);
}

/// The Grafana dashboard in the repository only queries metrics the gateway exports, and
/// no series of the export carries a per-principal label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_exported_metrics_and_no_series_names_a_principal() {
    let e = env().await;
    let r = e
        .post(&e.alice, "/v1/chat/completions", chat("m1", false))
        .await;
    r.text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Memory on too, so its queue metrics are exported.
    let mut cfg = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "test".into(),
            url: "http://127.0.0.1:9".into(),
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        metering: Some(MeteringConfig::new("sqlite::memory:")),
        ..GatewayConfig::default()
    };
    cfg.memory = Some(attach_gateway::config::MemoryConfig::new(&format!(
        "sqlite:{}",
        dir.path().join("m.db").display()
    )));
    let gw = attach_gateway::start(cfg).await.unwrap();
    let mut text = String::new();
    for addr in [e.gw.addr, gw.addr] {
        text.push_str(
            &reqwest::get(format!("http://{addr}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/attach-gateway.json")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("attach_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(
                    exported.contains(base),
                    "{} queries {word}, not exported",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 12);
    // Bounded labels: neither principals nor keys appear in any series.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("key:") && !line.contains("principal="),
            "{line}"
        );
    }
}
