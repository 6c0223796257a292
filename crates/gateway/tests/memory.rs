//! End-to-end tests of conversation memory over real sockets: the gateway (with
//! `memory` configured, SQLite by default, PostgreSQL behind a cuttable TCP proxy for the
//! outage test) in front of the stamp-verifying test upstream of `tests/common`.
//!
//! Principals are API keys (`key:<name>`) with tenants: `alice` and `bob` in `acme`,
//! `carol` in `beta`. Writes are asynchronous: every check of what was recorded polls the
//! memory API (or the store) until the turn appears, bounded in time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attach_gateway::config::{MemoryConfig, MemoryMode, Rule};
use attach_gateway::{apikeys, Gateway, GatewayConfig};
use futures_util::StreamExt;
use oba_memory::{Filter, MemoryStore, Scope, Turn};
use serde_json::{json, Value};

use common::*;

const CHAT_ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
];
const MEMORY: &str = "/attach/v1/memory";
const ALICE: &str = "alice";
const BOB: &str = "bob";
const CAROL: &str = "carol";
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn id(who: &str) -> String {
    format!("key:{who}")
}

/// Allows the chat routes and the memory API.
fn routes() -> Vec<String> {
    CHAT_ROUTES
        .iter()
        .chain([&MEMORY])
        .map(|r| (*r).to_owned())
        .collect()
}

/// Tenants `acme` and `beta` may use the chat routes and the memory API.
fn memory_rules() -> Vec<Rule> {
    ["acme", "beta"]
        .into_iter()
        .map(|t| Rule {
            tenant: Some(t.into()),
            routes: routes(),
            ..Rule::default()
        })
        .collect()
}

/// A rule for one principal, with a memory cap.
fn id_rule(who: &str, memory: Option<MemoryMode>) -> Rule {
    Rule {
        id: Some(id(who)),
        routes: routes(),
        memory,
        ..Rule::default()
    }
}

/// A gateway with memory on SQLite (`<tempdir>/memory.db`) and API keys for alice, bob
/// (acme) and carol (beta).
struct MemEnv {
    up: TestUpstream,
    gw: Option<Gateway>,
    addr: SocketAddr,
    keys: BTreeMap<String, String>,
    db: PathBuf,
    cfg: GatewayConfig,
    _dir: tempfile::TempDir,
}

impl MemEnv {
    async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> MemEnv {
        MemEnv::start_with(memory_rules(), |_| {}, tweak).await
    }

    /// `before` runs on the database path before the gateway starts.
    async fn start_with(
        rules: Vec<Rule>,
        before: impl FnOnce(&Path),
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> MemEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_path = dir.path().join("keys.jsonl");
        let mut keys = BTreeMap::new();
        for (who, tenant) in [(ALICE, "acme"), (BOB, "acme"), (CAROL, "beta")] {
            let key = apikeys::create(&keys_path, who, Some(tenant), now()).expect("create key");
            keys.insert(who.to_owned(), key);
        }
        let db = dir.path().join("memory.db");
        before(&db);
        let up = start_upstream().await;
        let mut cfg = config(&up.url());
        cfg.api_key_file = Some(keys_path);
        cfg.policy = rules;
        cfg.memory = Some(MemoryConfig::new(&format!("sqlite:{}", db.display())));
        tweak(&mut cfg);
        let gw = start_gateway(cfg.clone(), Some(&up)).await;
        MemEnv {
            up,
            addr: gw.addr,
            gw: Some(gw),
            keys,
            db,
            cfg,
            _dir: dir,
        }
    }

    fn key(&self, who: &str) -> &str {
        &self.keys[who]
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Any request as `who`.
    async fn send(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut req = http()
            .request(method, self.url(path))
            .bearer_auth(self.key(who));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send().await.expect("send")
    }

    /// A chat call that must succeed; returns the request id and the whole body.
    async fn chat(
        &self,
        who: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (String, Vec<u8>) {
        let resp = self
            .send(who, reqwest::Method::POST, path, headers, Some(body))
            .await;
        let status = resp.status();
        let rid = request_id(&resp);
        let bytes = resp.bytes().await.expect("body").to_vec();
        assert_eq!(
            status,
            200,
            "{path} as {who}: {}",
            String::from_utf8_lossy(&bytes)
        );
        (rid, bytes)
    }

    /// `GET /attach/v1/memory?<query>` as `who` (must be 200): the turns.
    async fn list(&self, who: &str, query: &str) -> Vec<Value> {
        let resp = self
            .send(
                who,
                reqwest::Method::GET,
                &format!("{MEMORY}?limit=1000&{query}"),
                &[],
                None,
            )
            .await;
        assert_eq!(resp.status(), 200, "list {query} as {who}");
        let v = resp.json_body().await;
        v["turns"].as_array().expect("turns").clone()
    }

    /// The ids `who` lists with `query`.
    async fn ids(&self, who: &str, query: &str) -> BTreeSet<String> {
        ids_of(&self.list(who, query).await)
    }

    /// `POST /attach/v1/memory/search` as `who` (must be 200): the hits' turns.
    async fn search(&self, who: &str, body: &Value) -> Vec<Value> {
        let resp = self
            .send(
                who,
                reqwest::Method::POST,
                &format!("{MEMORY}/search"),
                &[],
                Some(body),
            )
            .await;
        assert_eq!(resp.status(), 200, "search {body} as {who}");
        let v = resp.json_body().await;
        v["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                assert!(h["score"].as_f64().is_some_and(|s| s > 0.0), "{h}");
                h["turn"].clone()
            })
            .collect()
    }

    /// Polls until `who` lists turn `rid` (with `query`), up to 10 s.
    async fn wait_turn(&self, who: &str, query: &str, rid: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = self
                .list(who, query)
                .await
                .into_iter()
                .find(|t| t["id"] == rid)
            {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "turn {rid} never appeared for {who} ({query})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until every id in `rids` is listed for `who` (with `query`).
    async fn wait_all(&self, who: &str, query: &str, rids: &[String]) {
        for rid in rids {
            self.wait_turn(who, query, rid).await;
        }
    }

    /// Stops the gateway gracefully (draining the memory writer).
    async fn shutdown(&mut self) {
        let gw = self.gw.take().expect("a running gateway");
        gw.shutdown(Duration::from_secs(5)).await;
    }

    /// The journal: as configured, else next to the SQLite file.
    fn journal(&self) -> PathBuf {
        self.cfg
            .memory
            .as_ref()
            .and_then(|m| m.journal.clone())
            .unwrap_or_else(|| PathBuf::from(format!("{}.journal", self.db.display())))
    }
}

fn request_id(resp: &reqwest::Response) -> String {
    let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "one x-request-id: {:?}", resp.headers());
    ids[0].to_str().expect("ascii").to_owned()
}

fn ids_of(turns: &[Value]) -> BTreeSet<String> {
    turns
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

/// A chat request body.
fn chat(model: &str, user: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": user }] })
}

/// The turn as the API returns it, without `created_at`.
#[allow(clippy::too_many_arguments)]
fn want(
    rid: &str,
    session: Option<&str>,
    space: Option<&str>,
    model: &str,
    route: &str,
    user: &str,
    assistant: &str,
    complete: bool,
) -> Value {
    json!({
        "id": rid, "session": session, "space": space, "model": model, "route": route,
        "user": user, "assistant": assistant, "complete": complete,
    })
}

/// `turn` without `created_at` (checked to be a time in `window`).
fn timeless(turn: &Value, window: (i64, i64)) -> Value {
    let mut t = turn.clone();
    let created = t
        .as_object_mut()
        .expect("a turn object")
        .remove("created_at")
        .and_then(|c| c.as_i64())
        .expect("created_at (unix ms)");
    assert!(
        window.0 <= created && created <= window.1,
        "created_at {created} in {window:?}"
    );
    t
}

/// What recall injects for `turns` (best first) within `budget`.
fn memory_message(turns: &[(&str, &str)], budget: usize) -> String {
    let turns: Vec<Turn> = turns
        .iter()
        .map(|(u, a)| Turn::new("x", "t", "p", "/v1/chat/completions", 0).with_text(u, a))
        .collect();
    attach_gateway::memory::recall::memory_message(&turns, budget).expect("a memory message")
}

/// One recalled entry as the injected message quotes it.
fn entry(user: &str, assistant: &str) -> String {
    format!("\n---\nuser: {user}\nassistant: {assistant}")
}

/// The leading system message the upstream saw (`None` when nothing was injected).
fn injected(seen: &Seen) -> Option<String> {
    let v = seen.json();
    let first = &v["messages"][0];
    (first["role"] == "system").then(|| first["content"].as_str().expect("content").to_owned())
}

fn mode(m: &'static str) -> (&'static str, &'static str) {
    ("x-attach-memory", m)
}

fn session(s: &'static str) -> (&'static str, &'static str) {
    ("x-attach-session", s)
}

fn space(s: &'static str) -> (&'static str, &'static str) {
    ("x-attach-memory-space", s)
}

// ---------------------------------------------------------------------------------------
// a. What a turn records.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn non_streamed_chat_turn_is_recorded_exactly() {
    let env = MemEnv::start(|_| {}).await;
    let body = json!({
        "model": "echo-1",
        "temperature": 0.2,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "An earlier question" },
            { "role": "assistant", "content": "An earlier answer" },
            { "role": "user", "content": "What is the capital of Australia?" },
            { "role": "user", "content": [{ "type": "text", "text": "Answer in one word." }] },
        ],
    });
    let t0 = now_ms();
    let (rid, bytes) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &body,
            &[session("trip-2024")],
        )
        .await;
    let t1 = now_ms();
    let reply: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "echo: Answer in one word."
    );
    // Write mode changes nothing on the way: the body is forwarded byte for byte.
    let seen = env.up.by_request_id(&rid);
    assert_eq!(seen.body, body.to_string().into_bytes());
    assert_eq!(seen.attach("session"), Some("key:alice/trip-2024"));
    assert_eq!(
        seen.attach("memory"),
        None,
        "X-Attach-Memory is not forwarded"
    );

    let turn = env.wait_turn(ALICE, "", &rid).await;
    assert_eq!(
        timeless(&turn, (t0, t1)),
        want(
            &rid,
            Some("key:alice/trip-2024"),
            None,
            "echo-1",
            "/v1/chat/completions",
            "What is the capital of Australia?\nAnswer in one word.",
            "echo: Answer in one word.",
            true,
        ),
        "the trailing user messages only, the reply, the namespaced session"
    );
    // Listed by session label; nothing else recorded.
    assert_eq!(
        env.list(ALICE, "session=trip-2024").await,
        vec![turn.clone()]
    );
    assert!(env.list(ALICE, "session=other").await.is_empty());
    assert_eq!(env.list(ALICE, "").await, vec![turn]);

    // Without a session label (and with an invalid one, dropped): no session.
    let (rid2, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo-2", "No session here"),
            &[],
        )
        .await;
    let (rid3, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo-2", "Bad label"),
            &[session("../key:bob/x")],
        )
        .await;
    for (rid, user) in [(&rid2, "No session here"), (&rid3, "Bad label")] {
        let t = env.wait_turn(ALICE, "", rid).await;
        assert_eq!(t["session"], Value::Null, "{t}");
        assert_eq!(t["user"], user);
        assert_eq!(t["assistant"], format!("echo: {user}"));
    }
    assert_eq!(env.list(ALICE, "").await.len(), 3);
    assert!(env.up.rejected().is_empty(), "{:?}", env.up.rejected());
}

/// Whole JSON answers are recorded complete both ways: with the upstream's
/// `Content-Length` (the other tests; hyper then drops the body once that many bytes are
/// written, without polling it to its end) and, here, sent chunked without one.
#[tokio::test]
async fn json_answers_without_content_length_are_recorded_complete() {
    let env = MemEnv::start(|_| {}).await;
    for (path, body, user) in [
        (
            "/v1/chat/completions",
            chat("echo-chunked", "Chunked chat"),
            "Chunked chat",
        ),
        (
            "/api/chat",
            json!({ "model": "echo-chunked", "stream": false,
                    "messages": [{ "role": "user", "content": "Chunked ollama" }] }),
            "Chunked ollama",
        ),
        (
            "/api/generate",
            json!({ "model": "echo-chunked", "prompt": "Chunked generate", "stream": false }),
            "Chunked generate",
        ),
        (
            "/v1/responses",
            json!({ "model": "echo-chunked", "input": "Chunked responses" }),
            "Chunked responses",
        ),
    ] {
        let t0 = now_ms();
        let (rid, bytes) = env.chat(ALICE, path, &body, &[]).await;
        let reply: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert!(reply.is_object(), "{reply}");
        let turn = env.wait_turn(ALICE, "", &rid).await;
        assert_eq!(
            timeless(&turn, (t0, now_ms())),
            want(
                &rid,
                None,
                None,
                "echo-chunked",
                path,
                user,
                &format!("echo: {user}"),
                true
            ),
            "{path}"
        );
    }
}

#[tokio::test]
async fn failed_and_refused_calls_are_not_recorded() {
    let env = MemEnv::start(|_| {}).await;
    // The model server fails: its 500 passes through, nothing is recorded.
    let resp = env
        .send(
            ALICE,
            reqwest::Method::POST,
            "/v1/chat/completions",
            &[],
            Some(&chat("fail", "This one fails")),
        )
        .await;
    assert_eq!(resp.status(), 500);
    let failed = request_id(&resp);
    // The policy refuses (a route not allowed for memory rules): not recorded either.
    let resp = env
        .send(ALICE, reqwest::Method::GET, "/v1/models", &[], None)
        .await;
    expect_error(resp, 403, "forbidden").await;
    // A later good turn proves the writer ran.
    let (ok, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "This one works"),
            &[],
        )
        .await;
    env.wait_turn(ALICE, "", &ok).await;
    assert_eq!(env.ids(ALICE, "").await, set(&[&ok]));
    assert!(!env.ids(ALICE, "").await.contains(&failed));
}

// ---------------------------------------------------------------------------------------
// b, c. Streams on every chat route, split inside multi-byte characters.
// ---------------------------------------------------------------------------------------

/// Sends a streamed call and reads it chunk by chunk: the request id, the chunks.
async fn stream_chunks(
    env: &MemEnv,
    who: &str,
    path: &str,
    body: &Value,
) -> (String, String, Vec<Vec<u8>>) {
    let resp = env
        .send(who, reqwest::Method::POST, path, &[], Some(body))
        .await;
    assert_eq!(resp.status(), 200, "{path}");
    let rid = request_id(&resp);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut stream = Box::pin(resp.bytes_stream());
    let mut chunks = Vec::new();
    while let Some(c) = stream.next().await {
        chunks.push(c.expect("a chunk").to_vec());
    }
    (rid, ct, chunks)
}

#[tokio::test]
async fn streamed_sse_split_inside_characters_is_relayed_and_recorded_exactly() {
    let env = MemEnv::start(|_| {}).await;
    let path = "/v1/chat/completions";
    let body = json!({
        "model": "split-sse", "stream": true,
        "messages": [{ "role": "user", "content": "Say something in many scripts: ü 日 🎉" }],
    });
    let (rid, ct, chunks) = stream_chunks(&env, ALICE, path, &body).await;
    assert_eq!(ct, "text/event-stream");
    let expected = stream_frames(path, "split-sse", &body).concat();
    assert_eq!(
        chunks.concat(),
        expected.as_bytes(),
        "the client gets exactly the upstream's bytes"
    );
    assert!(
        chunks.iter().any(|c| std::str::from_utf8(c).is_err()),
        "some chunk reached the client cut inside a character ({} chunks)",
        chunks.len()
    );
    let turn = env.wait_turn(ALICE, "", &rid).await;
    assert_eq!(
        timeless(&turn, (0, now_ms())),
        want(
            &rid,
            None,
            None,
            "split-sse",
            path,
            "Say something in many scripts: ü 日 🎉",
            "naïve 日本語 🎉 café—ñandú 👩‍👩‍👧 Ωμέγα.",
            true,
        )
    );
    assert_eq!(
        SPLIT_PIECES.concat(),
        "naïve 日本語 🎉 café—ñandú 👩‍👩‍👧 Ωμέγα."
    );
}

#[tokio::test]
async fn ollama_and_responses_turns_are_recorded_exactly() {
    let env = MemEnv::start(|_| {}).await;
    let split = SPLIT_PIECES.concat();
    let cases: Vec<(&str, Value, &str, &str, String)> = vec![
        (
            "/api/chat",
            json!({ "model": "split-ollama", "messages": [
                { "role": "user", "content": "Earlier" },
                { "role": "assistant", "content": "Earlier reply" },
                { "role": "user", "content": "Ollama stream, please" },
            ]}),
            "application/x-ndjson",
            "Ollama stream, please",
            split.clone(),
        ),
        (
            "/api/chat",
            json!({ "model": "echo-ollama", "stream": false,
                    "messages": [{ "role": "user", "content": "Ollama JSON ñ" }] }),
            "application/json",
            "Ollama JSON ñ",
            "echo: Ollama JSON ñ".into(),
        ),
        (
            "/api/generate",
            json!({ "model": "split-generate", "prompt": "Generate a stream" }),
            "application/x-ndjson",
            "Generate a stream",
            split.clone(),
        ),
        (
            "/api/generate",
            json!({ "model": "echo-generate", "prompt": "Generate JSON", "stream": false }),
            "application/json",
            "Generate JSON",
            "echo: Generate JSON".into(),
        ),
        (
            "/v1/responses",
            json!({ "model": "echo-responses", "input": "Responses with a string" }),
            "application/json",
            "Responses with a string",
            "echo: Responses with a string".into(),
        ),
        (
            "/v1/responses",
            json!({ "model": "echo-responses", "instructions": "Be kind.", "input": [
                { "role": "user", "content": [{ "type": "input_text", "text": "Responses with items" }] },
            ]}),
            "application/json",
            "Responses with items",
            "echo: Responses with items".into(),
        ),
        (
            "/v1/responses",
            json!({ "model": "split-responses", "stream": true, "input": "Responses stream" }),
            "text/event-stream",
            "Responses stream",
            split.clone(),
        ),
    ];
    for (path, body, content_type, user, assistant) in cases {
        let model = body["model"].as_str().expect("model").to_owned();
        let (rid, ct, chunks) = stream_chunks(&env, ALICE, path, &body).await;
        assert_eq!(ct, content_type, "{path} {model}");
        if content_type != "application/json" {
            assert_eq!(
                String::from_utf8(chunks.concat()).expect("UTF-8 overall"),
                stream_frames(path, &model, &body).concat(),
                "{path} {model}: the client gets the upstream's bytes"
            );
        }
        let turn = env.wait_turn(ALICE, "", &rid).await;
        assert_eq!(
            timeless(&turn, (0, now_ms())),
            want(&rid, None, None, &model, path, user, &assistant, true),
            "{path} {model}"
        );
    }
    assert_eq!(env.list(ALICE, "").await.len(), 7);
    assert!(env.up.rejected().is_empty(), "{:?}", env.up.rejected());
}

// ---------------------------------------------------------------------------------------
// d. Streams cut short.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_gone_mid_stream_leaves_an_incomplete_turn_with_what_passed() {
    let env = MemEnv::start(|_| {}).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({ "model": "hold-sse", "stream": true,
                    "messages": [{ "role": "user", "content": "Tell me a long story" }] }),
        ),
        (
            "/api/chat",
            json!({ "model": "hold-ollama",
                    "messages": [{ "role": "user", "content": "Tell me a long story" }] }),
        ),
    ] {
        let model = body["model"].as_str().expect("model").to_owned();
        let all = stream_frames(path, &model, &body).concat().into_bytes();
        let prefix = &all[..hold_cut(&all)];
        // Its own client, so that dropping the response closes the connection.
        let client = http();
        let resp = client
            .post(env.url(path))
            .bearer_auth(env.key(ALICE))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let rid = request_id(&resp);
        let mut stream = Box::pin(resp.bytes_stream());
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            read_at_least(&mut stream, &mut got, prefix.len()),
        )
        .await
        .expect("what the upstream sent before holding arrives");
        assert_eq!(got, prefix, "{path}");
        // The client goes away while the upstream holds the rest.
        drop(stream);
        drop(client);
        let turn = env.wait_turn(ALICE, "", &rid).await;
        assert_eq!(
            timeless(&turn, (0, now_ms())),
            want(
                &rid,
                None,
                None,
                &model,
                path,
                "Tell me a long story",
                "Partial answer ü",
                false,
            ),
            "{path}: incomplete, with only the events that passed whole"
        );
        env.up.state.release.notify_one();
    }
}

#[tokio::test]
async fn a_stream_broken_by_the_upstream_leaves_an_incomplete_turn() {
    let env = MemEnv::start(|_| {}).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({ "model": "break-sse", "stream": true,
                    "messages": [{ "role": "user", "content": "Break please" }] }),
        ),
        (
            "/api/generate",
            json!({ "model": "break-generate", "prompt": "Break please" }),
        ),
    ] {
        let model = body["model"].as_str().expect("model").to_owned();
        let resp = env
            .send(ALICE, reqwest::Method::POST, path, &[], Some(&body))
            .await;
        assert_eq!(resp.status(), 200);
        let rid = request_id(&resp);
        let mut stream = Box::pin(resp.bytes_stream());
        let mut failed = false;
        while let Some(c) = stream.next().await {
            if c.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "{path}: the client sees the stream break");
        let turn = env.wait_turn(ALICE, "", &rid).await;
        assert_eq!(
            timeless(&turn, (0, now_ms())),
            want(
                &rid,
                None,
                None,
                &model,
                path,
                "Break please",
                "Broken réponse",
                false
            ),
            "{path}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// e. Recall.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn recall_injects_the_earlier_turn_and_the_stamp_still_verifies() {
    let env = MemEnv::start(|_| {}).await;
    let fact = "My cat is called Zanzibar and she adores mackerel";
    let (r1, _) = env
        .chat(ALICE, "/v1/chat/completions", &chat("echo", fact), &[])
        .await;
    let (r2, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "The weather in Oslo is cold"),
            &[],
        )
        .await;
    env.wait_all(ALICE, "", &[r1, r2]).await;

    let question = "What does Zanzibar eat?";
    let body = json!({
        "model": "echo", "stream": false,
        "messages": [
            { "role": "system", "content": "You are helpful." },
            { "role": "user", "content": question },
        ],
    });
    let (r3, bytes) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode("recall")])
        .await;
    let reply: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        format!("echo: {question}")
    );
    let seen = env.up.by_request_id(&r3);
    assert!(
        env.up.rejected().is_empty(),
        "the stamp verified: {:?}",
        env.up.rejected()
    );
    assert_eq!(
        seen.header("content-digest"),
        vec![sha256_digest(&seen.body)],
        "the digest is of the body with the memory in it"
    );
    let forwarded = seen.json();
    let messages = forwarded["messages"].as_array().expect("messages");
    let expected = memory_message(&[(fact, &format!("echo: {fact}"))], 1024);
    assert_eq!(
        messages[0],
        json!({ "role": "system", "content": expected }),
        "a leading system message with the earlier turn"
    );
    assert!(expected.ends_with(&entry(fact, &format!("echo: {fact}"))));
    assert!(!expected.contains("Oslo"), "only the relevant turn");
    assert_eq!(
        messages[1..],
        body["messages"].as_array().expect("sent")[..]
    );
    assert_eq!(forwarded["model"], "echo");
    assert_eq!(forwarded["stream"], false);
    assert_eq!(forwarded.as_object().expect("object").len(), 3);
    // The recall turn records what the user said, not what was injected.
    let turn = env.wait_turn(ALICE, "", &r3).await;
    assert_eq!(turn["user"], question);
    assert_eq!(turn["assistant"], format!("echo: {question}"));

    // Without the header (default_mode write), and with write: nothing injected.
    for headers in [&[][..], &[mode("write")][..]] {
        let (rid, _) = env
            .chat(ALICE, "/v1/chat/completions", &body, headers)
            .await;
        assert_eq!(
            env.up.by_request_id(&rid).body,
            body.to_string().into_bytes(),
            "{headers:?}: forwarded unchanged"
        );
    }
}

#[tokio::test]
async fn recall_is_injected_on_every_chat_route() {
    let env = MemEnv::start(|_| {}).await;
    // One fact per route, sharing no word with the other questions (recall matches any
    // word, and each recall records its question too).
    let facts = [
        "The Gdansk office wifi password: periwinkle",
        "Oslo door code: 4417",
        "Lima parking spot: B12",
    ];
    let mut rids = Vec::new();
    for fact in facts {
        rids.push(
            env.chat(ALICE, "/v1/chat/completions", &chat("echo", fact), &[])
                .await
                .0,
        );
    }
    env.wait_all(ALICE, "", &rids).await;
    let memory = |i: usize| memory_message(&[(facts[i], &format!("echo: {}", facts[i]))], 1024);

    let question = "Gdansk wifi password?";
    let (rid, _) = env
        .chat(
            ALICE,
            "/api/chat",
            &json!({ "model": "echo", "stream": false,
            "messages": [{ "role": "user", "content": question }] }),
            &[mode("recall")],
        )
        .await;
    let v = env.up.by_request_id(&rid).json();
    assert_eq!(
        v["messages"][0],
        json!({ "role": "system", "content": memory(0) })
    );
    assert_eq!(
        v["messages"][1],
        json!({ "role": "user", "content": question })
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2));

    let question = "Oslo door?";
    let (rid, _) = env
        .chat(
            ALICE,
            "/v1/responses",
            &json!({ "model": "echo", "input": question,
            "instructions": "Be kind." }),
            &[mode("recall")],
        )
        .await;
    let v = env.up.by_request_id(&rid).json();
    assert_eq!(v["instructions"], format!("{}\n\nBe kind.", memory(1)));
    assert_eq!(v["input"], question);

    let question = "Lima parking?";
    let (rid, _) = env
        .chat(
            ALICE,
            "/api/generate",
            &json!({ "model": "echo", "prompt": question,
            "stream": false }),
            &[mode("recall")],
        )
        .await;
    let v = env.up.by_request_id(&rid).json();
    assert_eq!(v["system"], memory(2));
    assert_eq!(v["prompt"], question);
    assert!(env.up.rejected().is_empty(), "{:?}", env.up.rejected());
}

#[tokio::test]
async fn recall_stays_within_the_token_budget() {
    let budget = 80;
    let env = MemEnv::start(|c| {
        c.memory.as_mut().expect("memory").recall_budget_tokens = budget;
    })
    .await;
    let small = "Kumquat is my favourite fruit";
    let big = format!(
        "Kumquat zeppelin {}",
        "lorem ipsum dolor sit amet ".repeat(24)
    );
    let (a, _) = env
        .chat(ALICE, "/v1/chat/completions", &chat("echo", small), &[])
        .await;
    let (b, _) = env
        .chat(ALICE, "/v1/chat/completions", &chat("echo", &big), &[])
        .await;
    env.wait_all(ALICE, "", &[a, b]).await;

    // Both match; only the small one fits.
    let (rid, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "Which kumquat?"),
            &[mode("recall")],
        )
        .await;
    let m = injected(&env.up.by_request_id(&rid)).expect("something fits");
    assert!(
        m.len().div_ceil(4) <= budget,
        "{} bytes = {} tokens > {budget}",
        m.len(),
        m.len().div_ceil(4)
    );
    assert_eq!(
        m,
        memory_message(&[(small, &format!("echo: {small}"))], budget)
    );
    assert!(!m.contains("zeppelin"), "the turn over budget is left out");

    // Only the big one matches: nothing fits, nothing is injected.
    let body = chat("echo", "Zeppelin?");
    let (rid, _) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode("recall")])
        .await;
    assert_eq!(
        env.up.by_request_id(&rid).body,
        body.to_string().into_bytes()
    );
}

#[tokio::test]
async fn recall_session_recalls_only_the_same_session() {
    let env = MemEnv::start(|_| {}).await;
    let facts = [
        (Some("s1"), "Project Falcon launches on Tuesday"),
        (Some("s2"), "Project Falcon has a budget of nine million"),
        (None, "Project Falcon is led by Dana"),
    ];
    let mut rids = Vec::new();
    for (s, fact) in facts {
        let headers: Vec<(&str, &str)> = s.map(|s| ("x-attach-session", s)).into_iter().collect();
        let (rid, _) = env
            .chat(ALICE, "/v1/chat/completions", &chat("echo", fact), &headers)
            .await;
        rids.push(rid);
    }
    env.wait_all(ALICE, "", &rids).await;
    let entry_of = |i: usize| entry(facts[i].1, &format!("echo: {}", facts[i].1));
    let ask = |headers: Vec<(&'static str, &'static str)>| {
        let env = &env;
        async move {
            let (rid, _) = env
                .chat(
                    ALICE,
                    "/v1/chat/completions",
                    &chat("echo", "Tell me about Project Falcon"),
                    &headers,
                )
                .await;
            injected(&env.up.by_request_id(&rid))
        }
    };
    let only = |i: usize| memory_message(&[(facts[i].1, &format!("echo: {}", facts[i].1))], 1024);
    assert_eq!(
        ask(vec![mode("recall-session"), session("s1")]).await,
        Some(only(0))
    );
    assert_eq!(
        ask(vec![mode("recall-session"), session("s2")]).await,
        Some(only(1))
    );
    assert_eq!(
        ask(vec![mode("recall-session"), session("s3")]).await,
        None,
        "a session with no turns recalls nothing"
    );
    // Plain recall, in a session: every session.
    let all = ask(vec![mode("recall"), session("s1")])
        .await
        .expect("recalled");
    for i in 0..3 {
        assert_eq!(all.matches(&entry_of(i)).count(), 1, "{i}: {all}");
    }
}

/// `recall-session` without a session label must not recall the turns of the
/// principal's labelled sessions (there is no "same session" to recall from).
#[tokio::test]
async fn recall_session_without_a_session_label_recalls_no_labelled_session() {
    let env = MemEnv::start(|_| {}).await;
    let (rid, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "The vault code is Heliotrope"),
            &[session("s1")],
        )
        .await;
    env.wait_turn(ALICE, "", &rid).await;
    let (rid, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "What is the vault code Heliotrope?"),
            &[mode("recall-session")],
        )
        .await;
    let got = injected(&env.up.by_request_id(&rid));
    assert_eq!(
        got, None,
        "recall-session without X-Attach-Session recalls nothing"
    );
}

// ---------------------------------------------------------------------------------------
// f. Isolation.
// ---------------------------------------------------------------------------------------

/// Headers and body fields a client might use to pass as someone else.
const SPOOF: [(&str, &str); 6] = [
    ("x-attach-principal", "key:alice"),
    ("x-attach-tenant", "acme"),
    ("x-attach-user", "key:alice"),
    ("x-attach-session", "alice-secrets"),
    ("x-attach-auth-method", "api-key"),
    ("x-attach-agent", "key:alice"),
];

fn spoofed_body(model: &str, user: &str) -> Value {
    json!({
        "model": model,
        "user": "key:alice",
        "user_id": "key:alice",
        "principal": "key:alice",
        "tenant": "acme",
        "session": "key:alice/alice-secrets",
        "metadata": { "user_id": "key:alice", "principal": "key:alice", "tenant": "acme",
                      "session": "alice-secrets" },
        "messages": [{ "role": "user", "content": user }],
    })
}

#[tokio::test]
async fn other_principals_never_reach_anothers_turns() {
    // The same principal id in another tenant (written straight into the store).
    let secret_other_tenant = "Quokka locker code in beta is 1111111";
    let env = MemEnv::start_with(
        memory_rules(),
        |db| {
            let db = db.to_owned();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async {
                        let store = oba_memory::sqlite::SqliteStore::open(&db)
                            .await
                            .expect("open");
                        let t = Turn::new(
                            "beta-alice-1",
                            "beta",
                            "key:alice",
                            "/v1/chat/completions",
                            now_ms(),
                        )
                        .with_text(secret_other_tenant, "noted");
                        store.append(&[t]).await.expect("append");
                        store.close().await;
                    })
            })
            .join()
            .expect("seed thread");
        },
        |_| {},
    )
    .await;
    let secret = "Quokka locker code is 8675309";
    let secret_reply = format!("echo: {secret}");
    // Alice's turns: in a session, outside one, and in her own (unshared) space.
    let (a1, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", secret),
            &[session("alice-secrets")],
        )
        .await;
    let (a2, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "Quokka notes without a session 8675309"),
            &[],
        )
        .await;
    let resp = env
        .send(
            ALICE,
            reqwest::Method::POST,
            &format!("{MEMORY}/spaces"),
            &[],
            Some(&json!({ "name": "alices" })),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let (a3, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "Quokka space note 8675309"),
            &[space("alices")],
        )
        .await;
    env.wait_all(ALICE, "", &[a1.clone(), a2.clone()]).await;
    env.wait_turn(ALICE, "space=alices", &a3).await;
    let alice_ids = set(&[&a1, &a2]);
    // Bob cannot take the space over by creating it again.
    let resp = env
        .send(
            BOB,
            reqwest::Method::POST,
            &format!("{MEMORY}/spaces"),
            &SPOOF,
            Some(&json!({ "name": "alices" })),
        )
        .await;
    expect_error(resp, 409, "conflict").await;
    assert_eq!(
        env.ids(ALICE, "").await,
        alice_ids,
        "alice sees hers only (not beta's key:alice)"
    );
    assert!(env
        .search(ALICE, &json!({ "query": "beta 1111111" }))
        .await
        .is_empty());

    for who in [BOB, CAROL] {
        // Listing, with every spoofing header and query parameter.
        let resp = env
            .send(
                who,
                reqwest::Method::GET,
                &format!(
                    "{MEMORY}?principal=key:alice&tenant=acme&user=key:alice&limit=1000&since=0"
                ),
                &SPOOF,
                None,
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json_body().await,
            json!({ "turns": [] }),
            "{who} lists nothing"
        );
        assert!(
            env.list(who, "session=alice-secrets").await.is_empty(),
            "{who}"
        );
        let resp = env
            .send(
                who,
                reqwest::Method::GET,
                &format!("{MEMORY}?session=key:alice/alice-secrets"),
                &[],
                None,
            )
            .await;
        expect_error(resp, 400, "invalid_request").await;
        // Searching, with body fields naming alice.
        for body in [
            json!({ "query": "Quokka locker code 8675309" }),
            json!({ "query": "Quokka", "session": "alice-secrets", "principal": "key:alice",
                    "tenant": "acme", "user": "key:alice", "user_id": "key:alice",
                    "metadata": { "principal": "key:alice" } }),
        ] {
            let resp = env
                .send(
                    who,
                    reqwest::Method::POST,
                    &format!("{MEMORY}/search"),
                    &SPOOF,
                    Some(&body),
                )
                .await;
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.json_body().await,
                json!({ "hits": [] }),
                "{who} {body}"
            );
        }
        // Alice's space: 403 whether listing, searching, recalling or writing into it.
        let resp = env
            .send(
                who,
                reqwest::Method::GET,
                &format!("{MEMORY}?space=alices"),
                &SPOOF,
                None,
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
        let resp = env
            .send(
                who,
                reqwest::Method::POST,
                &format!("{MEMORY}/search"),
                &SPOOF,
                Some(&json!({ "query": "Quokka", "space": "alices" })),
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
        let resp = env
            .send(
                who,
                reqwest::Method::GET,
                &format!("{MEMORY}/spaces/alices/members"),
                &SPOOF,
                None,
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
        for m in ["recall", "write"] {
            let resp = env
                .send(
                    who,
                    reqwest::Method::POST,
                    "/v1/chat/completions",
                    &[("x-attach-memory", m), ("x-attach-memory-space", "alices")],
                    Some(&chat("echo", "Quokka?")),
                )
                .await;
            expect_error(resp, 403, "space_forbidden").await;
        }
        // Deleting alice's turns: by id (404, the same as a missing turn), by session,
        // by space membership.
        for rid in [&a1, &a2, &a3] {
            let resp = env
                .send(
                    who,
                    reqwest::Method::DELETE,
                    &format!("{MEMORY}/{rid}"),
                    &SPOOF,
                    None,
                )
                .await;
            expect_error(resp, 404, "not_found").await;
        }
        let resp = env
            .send(
                who,
                reqwest::Method::DELETE,
                &format!("{MEMORY}/no-such-turn"),
                &[],
                None,
            )
            .await;
        expect_error(resp, 404, "not_found").await;
        let resp = env
            .send(
                who,
                reqwest::Method::DELETE,
                &format!("{MEMORY}?session=alice-secrets"),
                &SPOOF,
                None,
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json_body().await, json!({ "deleted": 0 }));
        let resp = env
            .send(
                who,
                reqwest::Method::DELETE,
                &format!("{MEMORY}/spaces/alices/members/key:alice"),
                &SPOOF,
                None,
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
        let resp = env
            .send(
                who,
                reqwest::Method::POST,
                &format!("{MEMORY}/spaces/alices/members"),
                &SPOOF,
                Some(&json!({ "principal": id(who), "right": "write" })),
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
        // Recall with alice's session label, spoofed headers and body fields (after the
        // deletes, which would otherwise count these turns).
        for m in ["recall", "recall-session"] {
            let body = spoofed_body("echo", "What is the Quokka locker code?");
            let mut headers = SPOOF.to_vec();
            headers.push(("x-attach-memory", m));
            let (rid, _) = env.chat(who, "/v1/chat/completions", &body, &headers).await;
            let seen = env.up.by_request_id(&rid);
            assert_eq!(seen.attach("principal").map(str::to_owned), Some(id(who)));
            // At most the principal's own earlier question comes back.
            let forwarded = seen.json();
            let messages = forwarded["messages"].as_array().expect("messages");
            assert_eq!(
                messages.last(),
                body["messages"].as_array().expect("sent").last()
            );
            if let Some(m) = injected(&seen) {
                for leaked in [
                    "8675309",
                    "Quokka locker code is",
                    "1111111",
                    "without a session",
                ] {
                    assert!(!m.contains(leaked), "{who} {m}: {leaked} recalled");
                }
            }
        }
    }
    // A same-named space in another tenant is another space.
    let resp = env
        .send(
            CAROL,
            reqwest::Method::POST,
            &format!("{MEMORY}/spaces"),
            &[],
            Some(&json!({ "name": "alices" })),
        )
        .await;
    assert_eq!(resp.status(), 201, "space names are per tenant");
    assert!(env.list(CAROL, "space=alices").await.is_empty());
    assert!(env
        .search(CAROL, &json!({ "query": "Quokka", "space": "alices" }))
        .await
        .is_empty());
    let body = chat("echo", "Quokka space note?");
    let (rid, _) = env
        .chat(
            CAROL,
            "/v1/chat/completions",
            &body,
            &[mode("recall"), space("alices")],
        )
        .await;
    assert_eq!(
        env.up.by_request_id(&rid).body,
        body.to_string().into_bytes()
    );

    // Alice's turns all survive, and no request of bob or carol carried her text.
    assert_eq!(env.ids(ALICE, "").await, alice_ids);
    assert_eq!(env.ids(ALICE, "space=alices").await, set(&[&a3]));
    for s in env.up.seen() {
        if s.attach("principal") != Some("key:alice") {
            let text = String::from_utf8_lossy(&s.body);
            for leaked in ["8675309", secret_reply.as_str(), "1111111"] {
                assert!(
                    !text.contains(leaked),
                    "{leaked} in a request of {:?}: {text}",
                    s.attach("principal")
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// g. Spaces.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn spaces_enforce_membership_and_rights() {
    let env = MemEnv::start(|_| {}).await;
    let post = |who: &'static str, path: String, body: Value| {
        let env = &env;
        async move {
            env.send(who, reqwest::Method::POST, &path, &[], Some(&body))
                .await
        }
    };
    let spaces = format!("{MEMORY}/spaces");
    let members = format!("{MEMORY}/spaces/team/members");
    // Create: 201, duplicate 409, invalid names 400.
    let t0 = now_ms();
    let resp = post(ALICE, spaces.clone(), json!({ "name": "team" })).await;
    assert_eq!(resp.status(), 201);
    let v = resp.json_body().await;
    assert_eq!(v["space"]["name"], "team");
    assert_eq!(v["space"]["owner"], "key:alice");
    assert!(v["space"]["created_at"].as_i64().is_some_and(|t| t >= t0));
    expect_error(
        post(ALICE, spaces.clone(), json!({ "name": "team" })).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        post(BOB, spaces.clone(), json!({ "name": "team" })).await,
        409,
        "conflict",
    )
    .await;
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "a/b" }),
        json!({ "name": "has space" }),
        json!({ "name": "x".repeat(65) }),
        json!({}),
        json!({ "name": 7 }),
        json!("team"),
    ] {
        expect_error(
            post(ALICE, spaces.clone(), bad).await,
            400,
            "invalid_request",
        )
        .await;
    }
    // Members: bob with read. Only the owner adds; rights are read or write.
    let resp = post(
        ALICE,
        members.clone(),
        json!({ "principal": "key:bob", "right": "read" }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json_body().await,
        json!({ "principal": "key:bob", "right": "read" })
    );
    for bad in [
        json!({ "principal": "key:carol", "right": "owner" }),
        json!({ "principal": "", "right": "read" }),
        json!({ "principal": "key:carol" }),
        json!({ "principal": "key:alice", "right": "read" }),
    ] {
        expect_error(
            post(ALICE, members.clone(), bad).await,
            400,
            "invalid_request",
        )
        .await;
    }
    expect_error(
        post(
            BOB,
            members.clone(),
            json!({ "principal": "key:carol", "right": "read" }),
        )
        .await,
        403,
        "space_forbidden",
    )
    .await;
    expect_error(
        post(
            BOB,
            members.clone(),
            json!({ "principal": "key:bob", "right": "write" }),
        )
        .await,
        403,
        "space_forbidden",
    )
    .await;
    let resp = env
        .send(BOB, reqwest::Method::GET, &members, &[], None)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json_body().await,
        json!({ "members": [{ "principal": "key:alice", "right": "owner" },
                            { "principal": "key:bob", "right": "read" }] })
    );
    let resp = env
        .send(BOB, reqwest::Method::GET, &spaces, &[], None)
        .await;
    let v = resp.json_body().await;
    assert_eq!(v["spaces"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["spaces"][0]["name"], "team");
    assert_eq!(v["spaces"][0]["right"], "read");
    assert_eq!(v["spaces"][0]["owner"], "key:alice");

    // Alice writes into the space and into her own memory.
    let team_fact = "The team offsite is in Lisbon in May";
    let (t1, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", team_fact),
            &[space("team")],
        )
        .await;
    let (p1, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "My private offsite notes: Lisbon hotel 42"),
            &[],
        )
        .await;
    let turn = env.wait_turn(ALICE, "space=team", &t1).await;
    assert_eq!(turn["space"], "team");
    env.wait_turn(ALICE, "", &p1).await;
    assert_eq!(
        env.ids(ALICE, "").await,
        set(&[&p1]),
        "a space turn is not in the own memory"
    );

    // Bob (read) lists, searches and recalls from the space...
    assert_eq!(env.ids(BOB, "space=team").await, set(&[&t1]));
    let hits = env
        .search(BOB, &json!({ "query": "Lisbon offsite", "space": "team" }))
        .await;
    assert_eq!(
        ids_of(&hits),
        set(&[&t1]),
        "the space only, not alice's own turn"
    );
    let question = "Where is the offsite?";
    let (b1, _) = env
        .chat(
            BOB,
            "/v1/chat/completions",
            &chat("echo", question),
            &[mode("recall"), space("team")],
        )
        .await;
    assert_eq!(
        injected(&env.up.by_request_id(&b1)),
        Some(memory_message(
            &[(team_fact, &format!("echo: {team_fact}"))],
            1024
        ))
    );
    // ... and his recall turn goes to his own memory (he may not write there).
    let turn = env.wait_turn(BOB, "", &b1).await;
    assert_eq!(turn["space"], Value::Null);
    assert_eq!(turn["user"], question);
    // But may not write into it, explicitly or by default.
    for headers in [vec![mode("write"), space("team")], vec![space("team")]] {
        let resp = env
            .send(
                BOB,
                reqwest::Method::POST,
                "/v1/chat/completions",
                &headers,
                Some(&chat("echo", "x")),
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
    }
    // Upgraded to write: his turn lands in the space.
    let resp = post(
        ALICE,
        members.clone(),
        json!({ "principal": "key:bob", "right": "write" }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (b2, _) = env
        .chat(
            BOB,
            "/v1/chat/completions",
            &chat("echo", "Bob adds: bring sunscreen"),
            &[mode("write"), space("team")],
        )
        .await;
    let turn = env.wait_turn(ALICE, "space=team", &b2).await;
    assert_eq!(turn["space"], "team");
    assert_eq!(turn["user"], "Bob adds: bring sunscreen");
    assert_eq!(env.ids(BOB, "space=team").await, set(&[&t1, &b2]));
    assert_eq!(
        env.ids(BOB, "").await,
        set(&[&b1]),
        "not in bob's own memory"
    );
    // Bob still cannot manage members.
    expect_error(
        post(
            BOB,
            members.clone(),
            json!({ "principal": "key:carol", "right": "read" }),
        )
        .await,
        403,
        "space_forbidden",
    )
    .await;

    // Carol (another tenant), added by id, still cannot use it.
    let resp = post(
        ALICE,
        members.clone(),
        json!({ "principal": "key:carol", "right": "write" }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = env
        .send(
            CAROL,
            reqwest::Method::GET,
            &format!("{MEMORY}?space=team"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    let resp = env
        .send(
            CAROL,
            reqwest::Method::POST,
            &format!("{MEMORY}/search"),
            &[],
            Some(&json!({ "query": "Lisbon", "space": "team" })),
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    for m in ["recall", "write"] {
        let resp = env
            .send(
                CAROL,
                reqwest::Method::POST,
                "/v1/chat/completions",
                &[mode(m), space("team")],
                Some(&chat("echo", "Lisbon?")),
            )
            .await;
        expect_error(resp, 403, "space_forbidden").await;
    }
    let resp = env
        .send(CAROL, reqwest::Method::GET, &members, &[], None)
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    let resp = env
        .send(CAROL, reqwest::Method::GET, &spaces, &[], None)
        .await;
    assert_eq!(resp.json_body().await, json!({ "spaces": [] }));

    // Bob removes himself: the space is closed to him again.
    let resp = env
        .send(
            BOB,
            reqwest::Method::DELETE,
            &format!("{MEMORY}/spaces/team/members/key%3Abob"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json_body().await, json!({ "removed": "key:bob" }));
    let resp = env
        .send(
            BOB,
            reqwest::Method::DELETE,
            &format!("{MEMORY}/spaces/team/members/key:bob"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 404, "not_found").await;
    let resp = env
        .send(
            BOB,
            reqwest::Method::GET,
            &format!("{MEMORY}?space=team"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    let resp = env
        .send(
            BOB,
            reqwest::Method::POST,
            "/v1/chat/completions",
            &[mode("recall"), space("team")],
            Some(&chat("echo", "Lisbon?")),
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    let resp = env
        .send(BOB, reqwest::Method::GET, &spaces, &[], None)
        .await;
    assert_eq!(resp.json_body().await, json!({ "spaces": [] }));
    // What he wrote there stays in the space.
    assert_eq!(env.ids(ALICE, "space=team").await, set(&[&t1, &b2]));
}

// ---------------------------------------------------------------------------------------
// h. Erasure.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn erasure_removes_exactly_what_the_principal_owns() {
    let env = MemEnv::start(|_| {}).await;
    let create = |who: &'static str, name: &'static str| {
        let env = &env;
        async move {
            let resp = env
                .send(
                    who,
                    reqwest::Method::POST,
                    &format!("{MEMORY}/spaces"),
                    &[],
                    Some(&json!({ "name": name })),
                )
                .await;
            assert_eq!(resp.status(), 201);
        }
    };
    let add = |who: &'static str, name: &'static str, member: &'static str| {
        let env = &env;
        async move {
            let resp = env
                .send(
                    who,
                    reqwest::Method::POST,
                    &format!("{MEMORY}/spaces/{name}/members"),
                    &[],
                    Some(&json!({ "principal": member, "right": "write" })),
                )
                .await;
            assert_eq!(resp.status(), 200);
        }
    };
    create(ALICE, "team").await;
    add(ALICE, "team", "key:bob").await;
    create(BOB, "bobs").await;
    add(BOB, "bobs", "key:alice").await;
    let write =
        |who: &'static str, headers: Vec<(&'static str, &'static str)>, text: &'static str| {
            let env = &env;
            async move {
                env.chat(who, "/v1/chat/completions", &chat("echo", text), &headers)
                    .await
                    .0
            }
        };
    let a_s1a = write(ALICE, vec![session("s1")], "alice s1 first").await;
    let a_s1b = write(ALICE, vec![session("s1")], "alice s1 second").await;
    let a_s2 = write(ALICE, vec![session("s2")], "alice s2").await;
    let a_none = write(ALICE, vec![], "alice no session").await;
    let a_team = write(ALICE, vec![space("team")], "alice in team").await;
    let a_bobs = write(ALICE, vec![space("bobs")], "alice in bobs").await;
    let b_team = write(BOB, vec![space("team")], "bob in team").await;
    let b_bobs = write(BOB, vec![space("bobs")], "bob in bobs").await;
    let b_own = write(BOB, vec![session("s1")], "bob s1").await;
    let c_own = write(CAROL, vec![session("s1")], "carol s1").await;
    env.wait_all(
        ALICE,
        "",
        &[a_s1a.clone(), a_s1b.clone(), a_s2.clone(), a_none.clone()],
    )
    .await;
    env.wait_all(ALICE, "space=team", &[a_team.clone(), b_team.clone()])
        .await;
    env.wait_all(BOB, "space=bobs", &[a_bobs.clone(), b_bobs.clone()])
        .await;
    env.wait_turn(BOB, "", &b_own).await;
    env.wait_turn(CAROL, "", &c_own).await;

    // No selector: refused.
    for q in ["", "?all=false", "?all=1", "?session="] {
        let resp = env
            .send(
                ALICE,
                reqwest::Method::DELETE,
                &format!("{MEMORY}{q}"),
                &[],
                None,
            )
            .await;
        expect_error(resp, 400, "invalid_request").await;
    }
    assert_eq!(
        env.list(ALICE, "").await.len(),
        4,
        "nothing deleted by a refused erase"
    );

    // One session: only its turns (not s2, not others' s1).
    let resp = env
        .send(
            ALICE,
            reqwest::Method::DELETE,
            &format!("{MEMORY}?session=s1"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json_body().await, json!({ "deleted": 2 }));
    assert_eq!(env.ids(ALICE, "").await, set(&[&a_s2, &a_none]));
    assert_eq!(env.ids(BOB, "").await, set(&[&b_own]));
    assert_eq!(env.ids(CAROL, "").await, set(&[&c_own]));

    // One turn by id.
    let resp = env
        .send(
            ALICE,
            reqwest::Method::DELETE,
            &format!("{MEMORY}/{a_s2}"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json_body().await, json!({ "deleted": 1 }));
    let resp = env
        .send(
            ALICE,
            reqwest::Method::DELETE,
            &format!("{MEMORY}/{a_s2}"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 404, "not_found").await;

    // Everything alice owns: her turns everywhere, her space with bob's turn in it, the
    // memberships of her space and hers in bob's.
    let resp = env
        .send(
            ALICE,
            reqwest::Method::DELETE,
            &format!("{MEMORY}?all=true"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json_body().await,
        json!({ "erased": { "turns": 4, "spaces": 1, "memberships": 2 } }),
        "a_none, a_team, a_bobs, b_team; team; bob in team, alice in bobs"
    );
    assert!(env.list(ALICE, "").await.is_empty());
    let resp = env
        .send(
            ALICE,
            reqwest::Method::GET,
            &format!("{MEMORY}/spaces"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.json_body().await, json!({ "spaces": [] }));
    let resp = env
        .send(
            ALICE,
            reqwest::Method::GET,
            &format!("{MEMORY}?space=bobs"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    // Bob's data survives, less alice's turn in his space; team is gone for him too.
    assert_eq!(env.ids(BOB, "").await, set(&[&b_own]));
    assert_eq!(env.ids(BOB, "space=bobs").await, set(&[&b_bobs]));
    let resp = env
        .send(
            BOB,
            reqwest::Method::GET,
            &format!("{MEMORY}?space=team"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 403, "space_forbidden").await;
    let resp = env
        .send(
            BOB,
            reqwest::Method::GET,
            &format!("{MEMORY}/spaces/bobs/members"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        resp.json_body().await,
        json!({ "members": [{ "principal": "key:bob", "right": "owner" }] })
    );
    assert_eq!(env.ids(CAROL, "").await, set(&[&c_own]));
    // Nothing left in the database for alice.
    let store = oba_memory::sqlite::SqliteStore::open(&env.db)
        .await
        .expect("open");
    let own = Scope::Own {
        tenant: "acme".into(),
        principal: "key:alice".into(),
    };
    assert!(store
        .list(&own, &Filter::default())
        .await
        .expect("list")
        .is_empty());
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// i. Modes and policy.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_modes_follow_the_header_and_the_policy_cap() {
    let rules = vec![
        id_rule(ALICE, None),
        id_rule(BOB, Some(MemoryMode::Write)),
        id_rule(CAROL, Some(MemoryMode::Off)),
    ];
    let env = MemEnv::start_with(rules, |_| {}, |_| {}).await;
    let body = chat("echo", "Modes");
    // Invalid values: 400, nothing forwarded.
    for bad in ["bogus", "", "recall,write", "recall-all", "on"] {
        let resp = env
            .send(
                ALICE,
                reqwest::Method::POST,
                "/v1/chat/completions",
                &[("x-attach-memory", bad)],
                Some(&body),
            )
            .await;
        expect_error(resp, 400, "invalid_memory_mode").await;
    }
    assert_eq!(env.up.hits(), 0);
    // Bob's rule allows write at most.
    for m in ["recall", "recall-session"] {
        let resp = env
            .send(
                BOB,
                reqwest::Method::POST,
                "/v1/chat/completions",
                &[mode(m)],
                Some(&body),
            )
            .await;
        expect_error(resp, 403, "memory_not_allowed").await;
    }
    // Carol's allows none.
    let resp = env
        .send(
            CAROL,
            reqwest::Method::POST,
            "/v1/chat/completions",
            &[mode("write")],
            Some(&body),
        )
        .await;
    expect_error(resp, 403, "memory_not_allowed").await;
    assert_eq!(env.up.hits(), 0);
    let (bob_write, _) = env
        .chat(BOB, "/v1/chat/completions", &body, &[mode("write")])
        .await;
    let (bob_default, _) = env.chat(BOB, "/v1/chat/completions", &body, &[]).await;
    let (bob_off, _) = env
        .chat(BOB, "/v1/chat/completions", &body, &[mode("off")])
        .await;
    let (carol_default, _) = env.chat(CAROL, "/v1/chat/completions", &body, &[]).await;
    let (carol_off, _) = env
        .chat(CAROL, "/v1/chat/completions", &body, &[mode("off")])
        .await;
    // Alice: off, then write.
    let (alice_off, _) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode(" off ")])
        .await;
    let (alice_write, _) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode("write")])
        .await;
    env.wait_all(BOB, "", &[bob_write.clone(), bob_default.clone()])
        .await;
    env.wait_turn(ALICE, "", &alice_write).await;
    // A later turn of each is in; the "off" ones never are.
    assert_eq!(env.ids(BOB, "").await, set(&[&bob_write, &bob_default]));
    assert_eq!(env.ids(ALICE, "").await, set(&[&alice_write]));
    assert!(env.list(CAROL, "").await.is_empty(), "carol's cap is off");
    let store = oba_memory::sqlite::SqliteStore::open(&env.db)
        .await
        .expect("open");
    for (tenant, who) in [("acme", ALICE), ("acme", BOB), ("beta", CAROL)] {
        let own = Scope::Own {
            tenant: tenant.into(),
            principal: id(who),
        };
        let ids: BTreeSet<String> = store
            .list(&own, &Filter::default())
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        for off in [&bob_off, &carol_default, &carol_off, &alice_off] {
            assert!(!ids.contains(off), "{off} recorded for {who}");
        }
    }
    store.close().await;
}

#[tokio::test]
async fn default_and_max_mode_are_capped_by_the_policy() {
    // default_mode = recall: a request without the header recalls, within its cap.
    let rules = vec![id_rule(ALICE, None), id_rule(BOB, Some(MemoryMode::Write))];
    let env = MemEnv::start_with(
        rules,
        |_| {},
        |c| {
            c.memory.as_mut().expect("memory").default_mode = MemoryMode::Recall;
        },
    )
    .await;
    for who in [ALICE, BOB] {
        let (rid, _) = env
            .chat(
                who,
                "/v1/chat/completions",
                &chat("echo", "The harbour seal is named Pickle"),
                &[],
            )
            .await;
        env.wait_turn(who, "", &rid).await;
    }
    let body = chat("echo", "What is the seal named Pickle?");
    let (rid, _) = env.chat(ALICE, "/v1/chat/completions", &body, &[]).await;
    assert!(
        injected(&env.up.by_request_id(&rid)).is_some(),
        "alice recalls by default"
    );
    let (rid, _) = env.chat(BOB, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(
        env.up.by_request_id(&rid).body,
        body.to_string().into_bytes(),
        "bob's cap is write: no recall, and no error"
    );
    env.wait_turn(BOB, "", &rid).await;

    // max_mode = write: a rule that does not say is capped at write.
    let env = MemEnv::start(|c| {
        c.memory.as_mut().expect("memory").max_mode = MemoryMode::Write;
    })
    .await;
    let resp = env
        .send(
            ALICE,
            reqwest::Method::POST,
            "/v1/chat/completions",
            &[mode("recall")],
            Some(&body),
        )
        .await;
    expect_error(resp, 403, "memory_not_allowed").await;
    let (rid, _) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode("write")])
        .await;
    env.wait_turn(ALICE, "", &rid).await;
}

#[tokio::test]
async fn the_memory_api_needs_authentication_policy_and_valid_parameters() {
    let mut rules = memory_rules();
    // Bob may chat but not use the memory API.
    rules.retain(|r| r.tenant.as_deref() != Some("acme"));
    rules.push(id_rule(ALICE, None));
    rules.push(Rule {
        id: Some(id(BOB)),
        routes: CHAT_ROUTES.iter().map(|r| (*r).to_owned()).collect(),
        ..Rule::default()
    });
    let env = MemEnv::start_with(rules, |_| {}, |_| {}).await;
    let resp = http().get(env.url(MEMORY)).send().await.expect("send");
    expect_error(resp, 401, "unauthenticated").await;
    let resp = http()
        .get(env.url(MEMORY))
        .bearer_auth(apikeys::new_key())
        .send()
        .await
        .expect("send");
    expect_error(resp, 401, "unknown_api_key").await;
    let resp = env.send(BOB, reqwest::Method::GET, MEMORY, &[], None).await;
    expect_error(resp, 403, "forbidden").await;
    for q in [
        "limit=x",
        "since=yesterday",
        "until=1.5",
        "session=a/b",
        "space=a/b",
    ] {
        let resp = env
            .send(
                ALICE,
                reqwest::Method::GET,
                &format!("{MEMORY}?{q}"),
                &[],
                None,
            )
            .await;
        if q.starts_with("space") {
            expect_error(resp, 403, "space_forbidden").await;
        } else {
            expect_error(resp, 400, "invalid_request").await;
        }
    }
    for body in ["not json", "[]", "{}", "{\"query\": 3}"] {
        let resp = http()
            .post(env.url(&format!("{MEMORY}/search")))
            .bearer_auth(env.key(ALICE))
            .body(body)
            .send()
            .await
            .expect("send");
        expect_error(resp, 400, "invalid_request").await;
    }
    let resp = env
        .send(ALICE, reqwest::Method::PUT, MEMORY, &[], None)
        .await;
    expect_error(resp, 404, "not_found").await;
    let resp = env
        .send(
            ALICE,
            reqwest::Method::GET,
            &format!("{MEMORY}/spaces/x/y"),
            &[],
            None,
        )
        .await;
    expect_error(resp, 404, "not_found").await;

    // since / until / limit.
    let mut rids = Vec::new();
    let mut times = Vec::new();
    for i in 0..3 {
        let (rid, _) = env
            .chat(
                ALICE,
                "/v1/chat/completions",
                &chat("echo", &format!("turn {i}")),
                &[],
            )
            .await;
        let t = env.wait_turn(ALICE, "", &rid).await;
        times.push(t["created_at"].as_i64().expect("created_at"));
        rids.push(rid);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let listed = env.list(ALICE, "").await;
    assert_eq!(
        listed
            .iter()
            .map(|t| t["id"].as_str().expect("id"))
            .collect::<Vec<_>>(),
        rids.iter().rev().map(String::as_str).collect::<Vec<_>>(),
        "newest first"
    );
    let resp = env
        .send(
            ALICE,
            reqwest::Method::GET,
            &format!("{MEMORY}?limit=2"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        resp.json_body().await["turns"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        env.ids(ALICE, &format!("since={}", times[1])).await,
        set(&[&rids[1], &rids[2]])
    );
    assert_eq!(
        env.ids(ALICE, &format!("until={}", times[1])).await,
        set(&[&rids[0]])
    );

    // Memory not configured: the API says so.
    let up = start_upstream().await;
    let gw = start_gateway(config(&up.url()), Some(&up)).await;
    let resp = http()
        .get(format!("http://{}{MEMORY}", gw.addr))
        .send()
        .await
        .expect("send");
    expect_error(resp, 404, "memory_disabled").await;
}

// ---------------------------------------------------------------------------------------
// j. Graceful shutdown.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_drains_every_turn_into_the_store() {
    const N: usize = 40;
    let mut env = MemEnv::start(|_| {}).await;
    // Half JSON answers, half NDJSON streams, all at once.
    let calls = (0..N).map(|i| {
        let env = &env;
        async move {
            let (path, reply) = if i % 2 == 0 {
                ("/v1/chat/completions", "Hello, world!")
            } else {
                ("/api/chat", "Hello there")
            };
            let user = format!("drain {i}");
            let rid = env.chat(ALICE, path, &chat("fast", &user), &[]).await.0;
            (rid, (user, reply.to_owned()))
        }
    });
    let expected: BTreeMap<String, (String, String)> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect();
    assert_eq!(expected.len(), N);
    env.shutdown().await;
    // The gateway is gone.
    assert!(
        http().get(env.url("/healthz")).send().await.is_err(),
        "still serving"
    );
    let store = oba_memory::sqlite::SqliteStore::open(&env.db)
        .await
        .expect("open");
    let own = Scope::Own {
        tenant: "acme".into(),
        principal: "key:alice".into(),
    };
    let turns = store
        .list(
            &own,
            &Filter {
                limit: 1000,
                ..Filter::default()
            },
        )
        .await
        .expect("list");
    store.close().await;
    assert_eq!(turns.len(), N, "exactly N turns");
    let stored: BTreeMap<String, (String, String)> = turns
        .iter()
        .map(|t| (t.id.clone(), (t.user.clone(), t.assistant.clone())))
        .collect();
    assert_eq!(stored, expected);
    let journal = std::fs::metadata(env.journal())
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(journal, 0, "nothing left in the journal");
}

// ---------------------------------------------------------------------------------------
// k. Store outage (PostgreSQL behind a TCP proxy the test cuts).
// ---------------------------------------------------------------------------------------

/// A TCP proxy to `target` on a fixed local port that can be cut (no listener, every
/// live connection dropped) and restored.
struct CutProxy {
    port: u16,
    target: String,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Copies `from` to `to` until EOF or an error.
async fn pump(from: &tokio::net::TcpStream, to: &tokio::net::TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut off = 0;
        while off < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[off..n]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

impl CutProxy {
    async fn start(target: String) -> Arc<CutProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Arc::new(CutProxy {
            port,
            target,
            accept: Mutex::new(None),
            conns: Arc::default(),
        });
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, conns) = (self.target.clone(), self.conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = pump(&inbound, &outbound) => {}
                        _ = pump(&outbound, &inbound) => {}
                    }
                });
                conns.lock().expect("lock").push(conn);
            }
        });
        *self.accept.lock().expect("lock") = Some(task);
    }

    /// Stops accepting and drops every live connection.
    async fn cut(&self) {
        let accept = self.accept.lock().expect("lock").take();
        if let Some(t) = accept {
            t.abort();
            let _ = t.await;
        }
        let conns: Vec<_> = self.conns.lock().expect("lock").drain(..).collect();
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    /// Accepts again on the same port.
    async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            let bound = socket
                .bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
                .and_then(|()| socket.listen(128));
            match bound {
                Ok(listener) => return self.serve(listener),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "rebinding port {}: {e}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Drops a PostgreSQL schema when dropped (through its own connection and runtime, so
/// it also runs while a failed test unwinds).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect(&url)
                        .await?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&pool)
                        .await?;
                    pool.close().await;
                    Ok::<_, sqlx::Error>(())
                })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {done:?}", self.schema);
        }
    }
}

/// Lines of the journal holding `rid`.
fn journal_count(path: &Path, rid: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["id"] == rid))
        .count()
}

async fn wait_journaled(path: &Path, rids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if rids.iter().all(|r| journal_count(path, r) == 1) {
            return;
        }
        assert!(Instant::now() < deadline, "the journal never held {rids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_outage_journals_turns_and_replays_them_exactly_once() {
    let Ok(real) = std::env::var("OBA_TEST_POSTGRES_URL") else {
        println!("skipped: OBA_TEST_POSTGRES_URL not set");
        return;
    };
    let parsed = url::Url::parse(&real).expect("OBA_TEST_POSTGRES_URL is a URL");
    let target = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432)
    );
    let proxy = CutProxy::start(target).await;
    let mut through = parsed.clone();
    through.set_host(Some("127.0.0.1")).expect("host");
    through.set_port(Some(proxy.port)).expect("port");
    let schema = format!(
        "attach_e2e_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    // Dropped at the end, also when an assertion fails.
    let _drop_schema = DropSchema {
        url: real.clone(),
        schema: schema.clone(),
    };
    let store_url = through.to_string();
    let schema2 = schema.clone();
    let mut env = MemEnv::start(move |c| {
        let dir = c
            .api_key_file
            .as_ref()
            .and_then(|k| k.parent())
            .expect("the test directory")
            .to_owned();
        let mut m = MemoryConfig::new(&store_url);
        m.postgres_schema = Some(schema2);
        m.journal = Some(dir.join("pg-memory.journal"));
        c.memory = Some(m);
    })
    .await;
    let journal = env.journal();
    let chat_as = |text: String, headers: Vec<(&'static str, &'static str)>| {
        let env = &env;
        async move {
            env.chat(
                ALICE,
                "/v1/chat/completions",
                &chat("echo", &text),
                &headers,
            )
            .await
            .0
        }
    };
    // The store answers.
    let first = chat_as("before the outage".into(), vec![]).await;
    env.wait_turn(ALICE, "", &first).await;

    // Cut: chat still works, the memory API fails closed, turns go to the journal.
    proxy.cut().await;
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(chat_as(format!("during the outage {i}"), vec![]).await);
    }
    let body = chat("echo", "recall during the outage");
    let (recalled, _) = env
        .chat(ALICE, "/v1/chat/completions", &body, &[mode("recall")])
        .await;
    assert_eq!(
        env.up.by_request_id(&recalled).body,
        body.to_string().into_bytes(),
        "recall never fails a request"
    );
    during.push(recalled);
    let resp = env
        .send(ALICE, reqwest::Method::GET, MEMORY, &[], None)
        .await;
    expect_error(resp, 503, "memory_unavailable").await;
    wait_journaled(&journal, &during).await;
    let size = std::fs::metadata(&journal).expect("journal").len();
    assert!(size > 0);

    // Restored: every turn, exactly once, and the journal empties.
    proxy.restore().await;
    let mut all = vec![first.clone()];
    all.extend(during.iter().cloned());
    env.wait_all(ALICE, "", &all).await;
    let listed = env.list(ALICE, "").await;
    assert_eq!(listed.len(), all.len(), "each turn once: {listed:?}");
    assert_eq!(ids_of(&listed), all.iter().cloned().collect());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0) > 0 {
        assert!(Instant::now() < deadline, "the journal was never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Cut again and stop the gateway: the next one replays the journal.
    proxy.cut().await;
    let mut later = Vec::new();
    for i in 0..3 {
        later.push(chat_as(format!("before the restart {i}"), vec![]).await);
    }
    wait_journaled(&journal, &later).await;
    env.shutdown().await;
    proxy.restore().await;
    let gw = start_gateway(env.cfg.clone(), Some(&env.up)).await;
    env.addr = gw.addr;
    env.gw = Some(gw);
    all.extend(later.iter().cloned());
    env.wait_all(ALICE, "", &all).await;
    let listed = env.list(ALICE, "").await;
    assert_eq!(listed.len(), all.len(), "each turn once after the replay");
    assert_eq!(ids_of(&listed), all.iter().cloned().collect());
    for t in &listed {
        assert_eq!(
            t["assistant"],
            format!("echo: {}", t["user"].as_str().expect("user"))
        );
    }
    env.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// l. Retention.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retention_hides_turns_past_the_tenants_limit() {
    let now = now_ms();
    let seeded = [
        (
            "acme-old",
            "acme",
            "key:alice",
            None,
            now - 40 * DAY_MS,
            "Ancient acme walrus fact",
        ),
        (
            "acme-old-s1",
            "acme",
            "key:alice",
            Some("key:alice/s1"),
            now - 31 * DAY_MS,
            "Old walrus in s1",
        ),
        (
            "acme-29d",
            "acme",
            "key:alice",
            None,
            now - 29 * DAY_MS,
            "Recent walrus fact",
        ),
        (
            "acme-fresh",
            "acme",
            "key:alice",
            None,
            now - 3_600_000,
            "Fresh walrus fact",
        ),
        (
            "beta-old",
            "beta",
            "key:carol",
            None,
            now - 40 * DAY_MS,
            "Ancient beta walrus fact",
        ),
    ];
    let env = MemEnv::start_with(
        memory_rules(),
        |db| {
            let db = db.to_owned();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async {
                        let store = oba_memory::sqlite::SqliteStore::open(&db)
                            .await
                            .expect("open");
                        let turns: Vec<Turn> = seeded
                            .iter()
                            .map(|(id, tenant, p, s, at, text)| {
                                let mut t = Turn::new(id, tenant, p, "/v1/chat/completions", *at)
                                    .with_text(text, "ok");
                                t.session = s.map(str::to_owned);
                                t
                            })
                            .collect();
                        store.append(&turns).await.expect("append");
                        store.close().await;
                    })
            })
            .join()
            .expect("seed thread");
        },
        |c| {
            let m = c.memory.as_mut().expect("memory");
            m.tenant_retention_days.insert("acme".into(), 30);
        },
    )
    .await;
    let (rid, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "A new walrus fact"),
            &[],
        )
        .await;
    env.wait_turn(ALICE, "", &rid).await;
    let visible = BTreeSet::from(["acme-29d".to_owned(), "acme-fresh".to_owned(), rid.clone()]);
    assert_eq!(env.ids(ALICE, "").await, visible);
    assert_eq!(
        env.ids(ALICE, "since=0").await,
        visible,
        "since cannot reach past retention"
    );
    assert!(env.list(ALICE, "session=s1").await.is_empty());
    let hits = env.search(ALICE, &json!({ "query": "walrus" })).await;
    assert_eq!(ids_of(&hits), visible);
    let (rid2, _) = env
        .chat(
            ALICE,
            "/v1/chat/completions",
            &chat("echo", "Ancient walrus?"),
            &[mode("recall")],
        )
        .await;
    let m = injected(&env.up.by_request_id(&rid2)).expect("recalled");
    assert!(
        !m.contains("Ancient acme") && !m.contains("Old walrus"),
        "{m}"
    );
    assert!(m.contains("Recent walrus fact"), "{m}");
    // Beta has no retention: its old turn stays visible.
    assert_eq!(
        env.ids(CAROL, "").await,
        BTreeSet::from(["beta-old".to_owned()])
    );
}
