//! What the gateway's end-to-end test files share: small helpers, the TEST UPSTREAM (a
//! model server that verifies the gateway's stamp on every request and records what it
//! saw), and gateway set-ups.
//!
//! The upstream speaks enough of the OpenAI and Ollama protocols:
//!
//! * `POST /v1/chat/completions`: JSON, or with `"stream": true` an SSE stream ending
//!   with a usage chunk and `data: [DONE]`;
//! * `POST /v1/responses`: JSON, or with `"stream": true` SSE events
//!   (`response.created`, `response.output_text.delta`..., `response.output_text.done`,
//!   `response.completed`);
//! * `POST /api/chat` and `POST /api/generate`: NDJSON streams (the default), or JSON
//!   with `"stream": false`;
//! * `GET /v1/models`.
//!
//! The model name chooses the reply and how a stream is sent ([`StreamMode`]):
//!
//! | model | reply | stream |
//! |---|---|---|
//! | anything else | `Hello, world!` (`/api/chat`: `Hello there`) | causal: the first chunk, then the rest only once the test released it |
//! | `echo*`, `fast*` | `echo: <the last user text>` (`fast*`: `Hello, world!`) | every chunk at once |
//! | `split*` | [`SPLIT_PIECES`] | the bytes re-cut inside every multi-byte character, each piece its own write |
//! | `hold*` | [`HOLD_PIECES`] | the bytes up to [`hold_cut`] (inside a character of a later event), then held until released |
//! | `break*` | [`BREAK_PIECES`] | the events carrying the pieces, then the connection is broken |
//! | `*chunked*` | a whole JSON answer sent chunked, without `Content-Length` | |
//! | `slow` | as the default, after 5 s | |
//! | `fail` | `500` | |

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attach_gateway::config::{Rule, Upstream, UpstreamKind};
use attach_gateway::{apikeys, Gateway, GatewayConfig};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::serve::ListenerExt;
use futures_util::{Stream, StreamExt};
use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::{Jwk, JwkSet};
use oba_httpsig::{Algorithm, Component, Derived, Message, Policy};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------------------

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A client for the tests: no proxy (everything is on loopback), bounded in time.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

pub(crate) fn chat_body(model: &str, stream: bool) -> Vec<u8> {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{ "role": "user", "content": "Say hello" }],
    })
    .to_string()
    .into_bytes()
}

pub(crate) fn sha256_digest(body: &[u8]) -> String {
    DigestField::compute(&[DigestAlgorithm::Sha256], body).to_header_value()
}

/// The JSON error shape: status, `{"error":{"code","message","request_id"}}`, the request
/// id also in `x-request-id`. Returns the response headers and the error object.
pub(crate) async fn expect_error_status(
    resp: reqwest::Response,
    status: u16,
) -> (HeaderMap, Value) {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("error body");
    assert_eq!(got, status, "status (body: {text})");
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "a JSON error: {headers:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let err = &v["error"];
    assert!(
        err["code"].as_str().is_some_and(|c| !c.is_empty()),
        "an error code in {text}"
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error message in {text}"
    );
    let rid = err["request_id"].as_str().expect("request_id");
    assert!(!rid.is_empty(), "a request id in {text}");
    let header_ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
    assert_eq!(header_ids.len(), 1, "one x-request-id: {headers:?}");
    assert_eq!(header_ids[0], rid, "x-request-id = error.request_id");
    (headers, err.clone())
}

/// [`expect_error_status`] with this error code.
pub(crate) async fn expect_error(
    resp: reqwest::Response,
    status: u16,
    code: &str,
) -> (HeaderMap, Value) {
    let (headers, err) = expect_error_status(resp, status).await;
    assert_eq!(err["code"], code, "error code in {err}");
    (headers, err)
}

/// `reqwest` without its `json` feature: parse the body ourselves.
pub(crate) trait JsonBody {
    async fn json_body(self) -> Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> Value {
        let text = self.text().await.expect("body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// Reads from `stream` into `buf` until it holds at least `n` bytes.
pub(crate) async fn read_at_least<S>(stream: &mut S, buf: &mut Vec<u8>, n: usize)
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    while buf.len() < n {
        let chunk = stream
            .next()
            .await
            .expect("the stream ended early")
            .expect("a chunk");
        buf.extend_from_slice(&chunk);
    }
}

// ---------------------------------------------------------------------------------------
// The test upstream: a model server that verifies the gateway's stamp.
// ---------------------------------------------------------------------------------------

/// What the upstream saw on a request whose stamp verified.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    /// Every `x-attach-*` field, all values.
    pub(crate) attach: BTreeMap<String, Vec<String>>,
    /// Every header line as received (for replaying to the upstream directly).
    pub(crate) raw: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl Seen {
    /// The single value of `x-attach-<name>` (none, or a panic if repeated).
    pub(crate) fn attach(&self, name: &str) -> Option<&str> {
        let values = self.attach.get(&format!("x-attach-{name}"))?;
        assert_eq!(values.len(), 1, "x-attach-{name} once: {values:?}");
        Some(values[0].as_str())
    }
    pub(crate) fn header(&self, name: &str) -> Vec<String> {
        self.raw
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
pub(crate) struct UpState {
    /// The stamp keys it trusts (from the gateways' JWKS).
    pub(crate) keys: Mutex<Vec<Jwk>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) rejected: Mutex<Vec<String>>,
    /// The test says "I have the first chunk" (or "let the held stream go") through this.
    pub(crate) release: tokio::sync::Notify,
    /// The stream was released by the test (not by the safety timeout).
    pub(crate) released: AtomicBool,
    /// The last chunk of the stream has been handed to the connection.
    pub(crate) last_sent: AtomicBool,
    pub(crate) hits: AtomicUsize,
}

pub(crate) struct TestUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<UpState>,
}

impl TestUpstream {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
    pub(crate) fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }
    /// The request the upstream saw with this request id (stamped `X-Attach-Request-Id`).
    pub(crate) fn by_request_id(&self, id: &str) -> Seen {
        let found: Vec<Seen> = self
            .seen()
            .into_iter()
            .filter(|s| s.attach("request-id") == Some(id))
            .collect();
        assert_eq!(found.len(), 1, "one request with id {id}");
        found.into_iter().next().expect("one")
    }
    pub(crate) fn rejected(&self) -> Vec<String> {
        self.state.rejected.lock().expect("lock").clone()
    }
    pub(crate) fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

pub(crate) async fn start_upstream() -> TestUpstream {
    let state = Arc::new(UpState::default());
    let app = axum::Router::new()
        .fallback(upstream_handler)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        // No Nagle: each chunk of a stream is its own TCP segment.
        let listener = listener.tap_io(|t| {
            let _ = t.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    TestUpstream { addr, state }
}

/// Verifies the stamp the way a model server would.
pub(crate) fn verify_stamp(
    s: &UpState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut msg = Message::request(method.as_str(), target)
        .map_err(|e| format!("request: {e}"))?
        .with_scheme("http");
    for (name, value) in headers {
        msg.append_header(name.as_str(), value.as_bytes());
    }
    for required in [
        "x-attach-principal",
        "x-attach-auth-method",
        "x-attach-request-id",
    ] {
        if !headers.contains_key(required) {
            return Err(format!("{required} missing"));
        }
    }
    let entries = oba_httpsig::signatures(&msg).map_err(|e| format!("no stamp: {e}"))?;
    let entry = entries
        .into_iter()
        .find(|(l, _)| l == "attach")
        .ok_or("no signature labelled attach")?
        .1
        .map_err(|e| format!("stamp: {e}"))?;
    let keyid = entry
        .params
        .keyid()
        .ok_or("stamp without keyid")?
        .to_owned();
    // The stamp's nonce is the request id (a sidecar can refuse a replayed stamp).
    let request_id = headers
        .get("x-attach-request-id")
        .and_then(|v| v.to_str().ok());
    if entry.params.nonce() != request_id {
        return Err("stamp nonce is not the request id".into());
    }
    let jwk = s
        .keys
        .lock()
        .expect("lock")
        .iter()
        .find(|k| k.kid.as_deref() == Some(keyid.as_str()))
        .cloned()
        .ok_or_else(|| format!("unknown stamp key {keyid}"))?;
    if jwk.thumbprint().map_err(|e| e.to_string())? != keyid {
        return Err("stamp keyid is not the key's thumbprint".into());
    }
    let key = jwk.verifying_key(None).map_err(|e| e.to_string())?;
    let field = |n: &str| Component::field(n).expect("field component");
    let mut policy = Policy::default()
        .allow_algorithms(&[Algorithm::Ed25519])
        .require_tag("attach-gateway")
        .require_keyid(true)
        .max_age(60)
        .clock_skew(5)
        .require_component(Component::derived(Derived::Method))
        .require_component(Component::derived(Derived::Authority))
        .require_component(Component::derived(Derived::Path))
        .require_component(Component::derived(Derived::Query));
    if !body.is_empty() {
        policy = policy.require_component(field("content-digest"));
    }
    for name in headers.keys() {
        if name.as_str().starts_with("x-attach-") {
            policy = policy.require_component(field(name.as_str()));
        }
    }
    oba_httpsig::verify(&msg, None, Some("attach"), &key, &policy, now())
        .map_err(|e| format!("stamp: {e}"))?;
    if !body.is_empty() {
        let cd = headers
            .get("content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or("Content-Digest missing")?;
        DigestField::parse(cd)
            .and_then(|f| f.verify(body))
            .map_err(|e| format!("Content-Digest: {e}"))?;
    }
    Ok(())
}

pub(crate) fn json_response(status: u16, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

/// A JSON answer sent chunked (no `Content-Length`), in two chunks.
pub(crate) fn chunked_json_response(v: &Value) -> Response {
    let text = v.to_string().into_bytes();
    let (a, b) = text.split_at(text.len() / 2);
    let chunks = vec![
        Ok::<_, Infallible>(Bytes::copy_from_slice(a)),
        Ok(Bytes::copy_from_slice(b)),
    ];
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("response")
}

async fn upstream_handler(
    State(s): State<Arc<UpState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = verify_stamp(&s, &method, &uri, &headers, &body) {
        s.rejected.lock().expect("lock").push(e.clone());
        return json_response(401, &json!({ "error": { "message": e } }));
    }
    let mut attach: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut raw = Vec::new();
    for (n, v) in &headers {
        raw.push((n.as_str().to_owned(), v.as_bytes().to_vec()));
        if n.as_str().starts_with("x-attach-") {
            attach
                .entry(n.as_str().to_owned())
                .or_default()
                .push(v.to_str().unwrap_or_default().to_owned());
        }
    }
    s.seen.lock().expect("lock").push(Seen {
        method: method.to_string(),
        target: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        attach,
        raw,
        body: body.to_vec(),
    });
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("llama3").to_owned();
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if model == "fail" {
        return json_response(500, &json!({ "error": { "message": "the model failed" } }));
    }
    let mode = StreamMode::of(&model);
    let path = uri.path();
    match (method.as_str(), path) {
        ("POST", "/v1/chat/completions" | "/v1/responses") if req["stream"] == json!(true) => {
            stream_reply(
                s,
                mode,
                stream_frames(path, &model, &req),
                "text/event-stream",
            )
        }
        ("POST", "/api/chat" | "/api/generate") if req["stream"] != json!(false) => stream_reply(
            s,
            mode,
            stream_frames(path, &model, &req),
            "application/x-ndjson",
        ),
        ("POST", "/v1/chat/completions" | "/v1/responses" | "/api/chat" | "/api/generate") => {
            let reply = json_reply(path, &model, &req);
            if model.contains("chunked") {
                chunked_json_response(&reply)
            } else {
                json_response(200, &reply)
            }
        }
        ("GET", "/v1/models") => {
            // Like hosted OpenAI-compatible servers, it sends its own request id.
            let mut r = json_response(200, &models());
            r.headers_mut().insert(
                "x-request-id",
                "upstream-generated-id".parse().expect("header"),
            );
            r
        }
        _ => json_response(404, &json!({ "error": "not found" })),
    }
}

pub(crate) fn completion(model: &str) -> Value {
    completion_with(model, "Hello, world!")
}

fn completion_with(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-e2e",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop",
        }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 },
    })
}

pub(crate) fn models() -> Value {
    json!({
        "object": "list",
        "data": [
            { "id": "llama3.1", "object": "model", "owned_by": "e2e" },
            { "id": "gpt-4", "object": "model", "owned_by": "e2e" },
        ],
    })
}

/// The SSE stream of a chat completion: content deltas, a finish chunk, a usage chunk,
/// `[DONE]`.
pub(crate) fn sse_chunks(model: &str) -> Vec<String> {
    let mut v: Vec<String> = ["Hello", ",", " world", "!"]
        .iter()
        .map(|w| {
            let c = json!({
                "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": model,
                "choices": [{ "index": 0, "delta": { "content": w }, "finish_reason": null }],
            });
            format!("data: {c}\n\n")
        })
        .collect();
    let finish = json!({
        "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": model,
        "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }],
    });
    v.push(format!("data: {finish}\n\n"));
    let usage = json!({
        "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": model,
        "choices": [],
        "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 },
    });
    v.push(format!("data: {usage}\n\n"));
    v.push("data: [DONE]\n\n".into());
    v
}

/// The Ollama `/api/chat` NDJSON stream.
pub(crate) fn ndjson_chunks(model: &str) -> Vec<String> {
    ollama_chat_frames(model, &["Hel", "lo", " there"])
}

// ---------------------------------------------------------------------------------------
// Replies chosen by the model name.
// ---------------------------------------------------------------------------------------

/// The reply of a `split*` model: multi-byte text of every width (2, 3, 4 bytes, and
/// joined emoji).
pub(crate) const SPLIT_PIECES: [&str; 6] =
    ["naïve ", "日本語", " 🎉", " café—ñandú", " 👩‍👩‍👧", " Ωμέγα."];

/// The reply of a `hold*` model; the stream is held inside the `—` of the third piece,
/// so only the first two pieces have passed whole.
pub(crate) const HOLD_PIECES: [&str; 4] = ["Partial ", "answer ü", " — never", " sent"];

/// The reply of a `break*` model: these events pass, then the connection breaks.
pub(crate) const BREAK_PIECES: [&str; 2] = ["Broken ", "réponse"];

/// How a stream is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamMode {
    /// The first chunk, then the rest only after the test released the stream (or a 5 s
    /// safety timeout), 20 ms apart (the default).
    Causal,
    /// Every chunk at once, 5 ms apart (`echo*`, `fast*`).
    Fast,
    /// The bytes re-cut after the first byte of every multi-byte character, each piece
    /// its own chunk, 5 ms apart (`split*`).
    Split,
    /// The bytes before [`hold_cut`], then held until released (or 10 s), then the rest
    /// (`hold*`).
    Hold,
    /// The frames up to the one carrying the last piece, then an error: the connection
    /// breaks without the end of the stream (`break*`).
    Break,
}

impl StreamMode {
    pub(crate) fn of(model: &str) -> StreamMode {
        if model.starts_with("echo") || model.starts_with("fast") {
            StreamMode::Fast
        } else if model.starts_with("split") {
            StreamMode::Split
        } else if model.starts_with("hold") {
            StreamMode::Hold
        } else if model.starts_with("break") {
            StreamMode::Break
        } else {
            StreamMode::Causal
        }
    }
}

/// Text of a message `content` (a string, or parts whose `text` is joined).
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The last user text of a request (`messages`, `input` or `prompt`).
pub(crate) fn last_user_text(req: &Value) -> String {
    if let Some(p) = req["prompt"].as_str() {
        return p.to_owned();
    }
    if let Some(i) = req["input"].as_str() {
        return i.to_owned();
    }
    let items = req["messages"]
        .as_array()
        .or_else(|| req["input"].as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default()
}

/// The reply's pieces (stream deltas) for `model`; the reply is their concatenation.
pub(crate) fn reply_pieces(path: &str, model: &str, req: &Value) -> Vec<String> {
    let owned = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect();
    match StreamMode::of(model) {
        StreamMode::Split => owned(&SPLIT_PIECES),
        StreamMode::Hold => owned(&HOLD_PIECES),
        StreamMode::Break => owned(&BREAK_PIECES),
        _ if model.starts_with("echo") => vec!["echo: ".into(), last_user_text(req)],
        _ if path == "/api/chat" => owned(&["Hel", "lo", " there"]),
        _ => owned(&["Hello", ",", " world", "!"]),
    }
}

/// The whole reply text of `model` on `path`.
pub(crate) fn reply_text(path: &str, model: &str, req: &Value) -> String {
    reply_pieces(path, model, req).concat()
}

/// A whole (non-streamed) answer.
fn json_reply(path: &str, model: &str, req: &Value) -> Value {
    let text = reply_text(path, model, req);
    match path {
        "/v1/chat/completions" => completion_with(model, &text),
        "/v1/responses" => responses_object(model, &text, "completed"),
        "/api/chat" => json!({
            "model": model, "created_at": "2024-01-01T00:00:00Z",
            "message": { "role": "assistant", "content": text },
            "done": true, "done_reason": "stop", "eval_count": 3,
        }),
        _ => json!({
            "model": model, "created_at": "2024-01-01T00:00:00Z",
            "response": text, "done": true, "done_reason": "stop",
            "context": [1, 2, 3], "eval_count": 3,
        }),
    }
}

/// A `/v1/responses` object: a reasoning item (no text) and one message.
fn responses_object(model: &str, text: &str, status: &str) -> Value {
    let output = if status == "completed" {
        json!([
            { "type": "reasoning", "id": "rs_e2e", "summary": [] },
            {
                "type": "message", "id": "msg_e2e", "status": "completed", "role": "assistant",
                "content": [{ "type": "output_text", "text": text, "annotations": [] }],
            },
        ])
    } else {
        json!([])
    };
    json!({
        "id": "resp_e2e", "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": model, "output": output,
        "usage": { "input_tokens": 5, "output_tokens": 4, "total_tokens": 9 },
    })
}

/// The frames of a streamed reply on `path` for `model` (what the client must receive).
pub(crate) fn stream_frames(path: &str, model: &str, req: &Value) -> Vec<String> {
    let pieces = reply_pieces(path, model, req);
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let causal = StreamMode::of(model) == StreamMode::Causal;
    match path {
        "/v1/chat/completions" if causal => sse_chunks(model),
        "/v1/chat/completions" => chat_sse_frames(model, &pieces),
        "/v1/responses" => responses_sse_frames(model, &pieces),
        "/api/chat" => ollama_chat_frames(model, &pieces),
        _ => ollama_generate_frames(model, &pieces),
    }
}

/// A chat completion stream: a role chunk, one delta per piece, finish, usage, `[DONE]`.
pub(crate) fn chat_sse_frames(model: &str, pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({
            "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        format!("data: {c}\n\n")
    };
    let mut v = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )];
    for p in pieces {
        v.push(chunk(json!({ "content": p }), Value::Null));
    }
    v.push(chunk(json!({}), json!("stop")));
    let usage = json!({
        "id": "chatcmpl-e2e", "object": "chat.completion.chunk", "model": model,
        "choices": [],
        "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 },
    });
    v.push(format!("data: {usage}\n\n"));
    v.push("data: [DONE]\n\n".into());
    v
}

/// A `/v1/responses` event stream.
pub(crate) fn responses_sse_frames(model: &str, pieces: &[&str]) -> Vec<String> {
    let event = |v: Value| {
        format!(
            "event: {}\ndata: {v}\n\n",
            v["type"].as_str().expect("type")
        )
    };
    let text = pieces.concat();
    let mut v = vec![event(json!({
        "type": "response.created", "sequence_number": 0,
        "response": responses_object(model, "", "in_progress"),
    }))];
    for (i, p) in pieces.iter().enumerate() {
        v.push(event(json!({
            "type": "response.output_text.delta", "sequence_number": i + 1,
            "item_id": "msg_e2e", "output_index": 1, "content_index": 0, "delta": p,
        })));
    }
    v.push(event(json!({
        "type": "response.output_text.done", "sequence_number": pieces.len() + 1,
        "item_id": "msg_e2e", "output_index": 1, "content_index": 0, "text": text,
    })));
    v.push(event(json!({
        "type": "response.completed", "sequence_number": pieces.len() + 2,
        "response": responses_object(model, &text, "completed"),
    })));
    v
}

/// The Ollama `/api/chat` NDJSON stream: one line per piece, then `done`.
pub(crate) fn ollama_chat_frames(model: &str, pieces: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = pieces
        .iter()
        .map(|w| {
            let c = json!({
                "model": model, "created_at": "2024-01-01T00:00:00Z",
                "message": { "role": "assistant", "content": w }, "done": false,
            });
            format!("{c}\n")
        })
        .collect();
    let done = json!({
        "model": model, "created_at": "2024-01-01T00:00:01Z",
        "message": { "role": "assistant", "content": "" },
        "done": true, "done_reason": "stop",
        "total_duration": 1234, "prompt_eval_count": 5, "eval_count": 3,
    });
    v.push(format!("{done}\n"));
    v
}

/// The Ollama `/api/generate` NDJSON stream.
pub(crate) fn ollama_generate_frames(model: &str, pieces: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = pieces
        .iter()
        .map(|w| {
            let c = json!({
                "model": model, "created_at": "2024-01-01T00:00:00Z",
                "response": w, "done": false,
            });
            format!("{c}\n")
        })
        .collect();
    let done = json!({
        "model": model, "created_at": "2024-01-01T00:00:01Z", "response": "",
        "done": true, "done_reason": "stop", "context": [1, 2, 3], "eval_count": 3,
    });
    v.push(format!("{done}\n"));
    v
}

/// Where a `hold*` stream stops: one byte into the `—` of [`HOLD_PIECES`] (inside a
/// multi-byte character of an event that has not passed whole).
pub(crate) fn hold_cut(bytes: &[u8]) -> usize {
    let dash = "—".as_bytes();
    bytes
        .windows(dash.len())
        .position(|w| w == dash)
        .expect("the held stream has a dash")
        + 1
}

/// `bytes` cut after the first byte of every multi-byte character.
pub(crate) fn split_inside_characters(bytes: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..bytes.len() {
        if bytes[i - 1] >= 0xC0 && (bytes[i] & 0xC0) == 0x80 {
            out.push(Bytes::copy_from_slice(&bytes[start..i]));
            start = i;
        }
    }
    out.push(Bytes::copy_from_slice(&bytes[start..]));
    out
}

/// Streams `frames` the way `mode` says.
fn stream_reply(
    s: Arc<UpState>,
    mode: StreamMode,
    frames: Vec<String>,
    content_type: &str,
) -> Response {
    if mode == StreamMode::Causal {
        return streamed(s, frames, content_type);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let all = frames.concat().into_bytes();
        let (before, after): (Vec<Bytes>, Vec<Bytes>) = match mode {
            StreamMode::Split => (split_inside_characters(&all), Vec::new()),
            StreamMode::Hold => {
                let cut = hold_cut(&all);
                (
                    vec![Bytes::copy_from_slice(&all[..cut])],
                    vec![Bytes::copy_from_slice(&all[cut..])],
                )
            }
            StreamMode::Break => {
                let last = BREAK_PIECES[BREAK_PIECES.len() - 1];
                let upto = frames
                    .iter()
                    .position(|f| f.contains(last))
                    .expect("a frame with the last piece");
                (
                    frames[..=upto]
                        .iter()
                        .map(|f| Bytes::from(f.clone()))
                        .collect(),
                    Vec::new(),
                )
            }
            _ => (frames.into_iter().map(Bytes::from).collect(), Vec::new()),
        };
        for b in before {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match mode {
            StreamMode::Hold => {
                let released =
                    tokio::time::timeout(Duration::from_secs(10), s.release.notified()).await;
                s.released.store(released.is_ok(), Ordering::SeqCst);
                for b in after {
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
            }
            StreamMode::Break => {
                let _ = tx
                    .send(Err(std::io::Error::other("the model server broke")))
                    .await;
                return;
            }
            _ => {}
        }
        s.last_sent.store(true, Ordering::SeqCst);
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .expect("stream response")
}

/// Streams `chunks`: the first at once, the rest only after the test released the stream
/// (or after a 5 s safety timeout), with a small delay between them.
pub(crate) fn streamed(s: Arc<UpState>, chunks: Vec<String>, content_type: &str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            if i == 1 {
                let released =
                    tokio::time::timeout(Duration::from_secs(5), s.release.notified()).await;
                s.released.store(released.is_ok(), Ordering::SeqCst);
            } else if i > 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if tx.send(Bytes::from(c)).await.is_err() {
                return;
            }
            if i + 1 == n {
                s.last_sent.store(true, Ordering::SeqCst);
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .expect("stream response")
}

// ---------------------------------------------------------------------------------------
// Gateway set-ups.
// ---------------------------------------------------------------------------------------

pub(crate) fn config(upstream_url: &str) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "test".into(),
            url: upstream_url.into(),
            kind: UpstreamKind::Openai,
            models: Vec::new(),
        }],
        ..GatewayConfig::default()
    }
}

pub(crate) fn tenant_rule(tenant: &str) -> Rule {
    Rule {
        tenant: Some(tenant.into()),
        ..Rule::default()
    }
}

/// Starts the gateway; the upstream learns its stamp key from `/.well-known/jwks.json`.
pub(crate) async fn start_gateway(cfg: GatewayConfig, up: Option<&TestUpstream>) -> Gateway {
    let gw = attach_gateway::start(cfg).await.expect("gateway starts");
    let text = http()
        .get(format!("http://{}/.well-known/jwks.json", gw.addr))
        .send()
        .await
        .expect("GET jwks")
        .text()
        .await
        .expect("jwks body");
    let set = JwkSet::parse(&text).expect("a JWK Set");
    let kid = gw
        .stamp_public_jwk
        .kid
        .clone()
        .expect("stamp key has a kid");
    let published = set.find(&kid).expect("the stamp key is published").clone();
    assert_eq!(
        published, gw.stamp_public_jwk,
        "published = Gateway.stamp_public_jwk"
    );
    if let Some(up) = up {
        up.state.keys.lock().expect("lock").push(published);
    }
    gw
}

/// A gateway with an API key file holding key `ci` (tenant `acme`).
pub(crate) struct KeyEnv {
    pub(crate) up: TestUpstream,
    pub(crate) gw: Gateway,
    pub(crate) key: String,
    pub(crate) keys_path: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl KeyEnv {
    pub(crate) async fn start(rules: Vec<Rule>, tweak: impl FnOnce(&mut GatewayConfig)) -> KeyEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_path = dir.path().join("keys.jsonl");
        let key = apikeys::create(&keys_path, "ci", Some("acme"), now()).expect("create key");
        let up = start_upstream().await;
        let mut cfg = config(&up.url());
        cfg.api_key_file = Some(keys_path.clone());
        cfg.policy = rules;
        tweak(&mut cfg);
        let gw = start_gateway(cfg, Some(&up)).await;
        KeyEnv {
            up,
            gw,
            key,
            keys_path,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.addr)
    }

    pub(crate) async fn chat(&self, key: &str, body: Vec<u8>) -> reqwest::Response {
        http()
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST chat")
    }
}
