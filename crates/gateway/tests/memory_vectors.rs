//! Vector recall: with `memory.embedding` configured, turns get embeddings from the
//! upstream's own `/v1/embeddings` (called by the gateway as
//! `service:attach-gateway-memory`, stamped), and recall ranks by similarity and
//! recency — finding a turn that shares no word with the question, which full-text
//! ranking cannot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attach_gateway::config::{EmbeddingConfig, MemoryConfig, Rule, Upstream, UpstreamKind};
use attach_gateway::GatewayConfig;
use axum::http::HeaderMap;
use serde_json::{json, Value};

/// A toy embedding model: one dimension per topic, counting the topic's words.
fn embed(text: &str) -> Vec<f32> {
    let topics: [&[&str]; 3] = [
        &["cat", "kitten", "whiskers", "tabby", "feline"],
        &["car", "engine", "garage", "truck"],
        &["pizza", "pasta", "basil"],
    ];
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .collect();
    topics
        .iter()
        .map(|t| 0.01 + words.iter().filter(|w| t.contains(&w.as_str())).count() as f32)
        .collect()
}

#[derive(Default)]
struct Seen {
    chat_bodies: Vec<Value>,
    embed_principals: Vec<String>,
    embed_signed: Vec<bool>,
}

async fn upstream(seen: Arc<Mutex<Seen>>) -> String {
    let s1 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/embeddings",
            axum::routing::post(move |h: HeaderMap, body: String| {
                let seen = s1.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    let inputs: Vec<String> = match &v["input"] {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(Into::into)).collect(),
                        _ => vec![],
                    };
                    {
                        let mut s = seen.lock().unwrap();
                        s.embed_principals.push(
                            h.get("x-attach-principal")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .into(),
                        );
                        s.embed_signed.push(
                            h.get("signature-input")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| v.contains("tag=\"attach-gateway\"")),
                        );
                    }
                    let data: Vec<Value> = inputs
                        .iter()
                        .enumerate()
                        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embed(t)}))
                        .collect();
                    axum::Json(json!({"object": "list", "data": data, "model": v["model"]}))
                }
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    let last = v["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().chat_bodies.push(v);
                    let reply = if last.contains("Whiskers") {
                        "Whiskers is a tabby."
                    } else {
                        "Book a garage visit."
                    };
                    axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": reply}}]}))
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_recall_finds_a_turn_that_shares_no_word_with_the_question() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let up = upstream(seen.clone()).await;
    let keys = dir.path().join("keys.jsonl");
    let key = attach_gateway::apikeys::create(&keys, "alice", Some("acme"), 0).unwrap();
    let db = dir.path().join("memory.db");
    let mut memory = MemoryConfig::new(&format!("sqlite:{}", db.display()));
    memory.recall_limit = 1;
    memory.embedding = Some(EmbeddingConfig {
        upstream: "test".into(),
        model: "toy-embed".into(),
    });
    let gw = attach_gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "test".into(),
            url: up,
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(keys),
        policy: vec![Rule::default()],
        memory: Some(memory),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let chat = |text: &str, recall: bool| {
        let mut r = client
            .post(format!("http://{}/v1/chat/completions", gw.addr))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string(),
            );
        if recall {
            r = r.header("x-attach-memory", "recall");
        }
        r.send()
    };
    assert_eq!(
        chat("My cat Whiskers sleeps all day", false)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat("My car needs an engine check", false)
            .await
            .unwrap()
            .status(),
        200
    );

    // Both turns stored with their embeddings (the writer computes them off the request).
    let store = oba_memory::sqlite::SqliteStore::open(&db).await.unwrap();
    let mine = oba_memory::Scope::Own {
        tenant: "acme".into(),
        principal: "key:alice".into(),
    };
    let mut turns = Vec::new();
    for _ in 0..100 {
        turns = oba_memory::MemoryStore::list(&store, &mine, &Default::default())
            .await
            .unwrap();
        if turns.len() == 2 && turns.iter().all(|t| t.embedding.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(turns.len(), 2);
    let cat = turns.iter().find(|t| t.user.contains("Whiskers")).unwrap();
    assert_eq!(
        cat.embedding.as_deref(),
        Some(embed("My cat Whiskers sleeps all day\nWhiskers is a tabby.").as_slice())
    );

    // "kitten" shares no word with either turn: full-text would find nothing.
    let hits = oba_memory::MemoryStore::search(&store, &mine, "kitten?", &Default::default())
        .await
        .unwrap();
    assert!(hits.is_empty(), "no word in common: {hits:?}");
    assert_eq!(chat("kitten?", true).await.unwrap().status(), 200);
    let body = seen.lock().unwrap().chat_bodies.last().cloned().unwrap();
    let system = body["messages"][0].clone();
    assert_eq!(system["role"], "system", "{body}");
    let text = system["content"].as_str().unwrap();
    assert!(
        text.contains("user: My cat Whiskers sleeps all day\nassistant: Whiskers is a tabby."),
        "{text}"
    );
    assert!(
        !text.contains("engine"),
        "recall_limit = 1 keeps only the closest: {text}"
    );
    assert_eq!(body["messages"][1]["content"], "kitten?");

    // The gateway called the embedding endpoint as itself, stamped.
    let s = seen.lock().unwrap();
    assert!(!s.embed_principals.is_empty());
    assert!(
        s.embed_principals
            .iter()
            .all(|p| p == "service:attach-gateway-memory"),
        "{:?}",
        s.embed_principals
    );
    assert!(s.embed_signed.iter().all(|b| *b));
}
