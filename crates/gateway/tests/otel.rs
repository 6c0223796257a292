//! OTLP trace export (cargo feature `otel`) over real sockets: the gateway in front of
//! the TEST UPSTREAM (`tests/common`), its `request` spans exported by the real
//! OTLP/HTTP exporter and batch span processor to a tiny OTLP receiver (axum on
//! `127.0.0.1:0`, `POST /v1/traces`, protobuf decoded as `ExportTraceServiceRequest`).
//!
//! The receiver and the export are one per test binary (the `tracing` subscriber is
//! global); each test finds its spans by trace id.
//!
//! Run with `cargo test -p attach-gateway --features otel --test otel`.
#![cfg(feature = "otel")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use attach_gateway::telemetry::{OtlpSettings, TraceExport};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{chat_body, http, tenant_rule, KeyEnv};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// The OTLP receiver and the export sending to it.
struct Collector {
    received: Received,
    export: TraceExport,
}

/// Starts the receiver (its own thread and runtime: it outlives every test's runtime),
/// the export to it, and the global subscriber with the export layer; once.
fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let received = Received::default();
        let state = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the receiver");
                tx.send(listener.local_addr().expect("receiver address"))
                    .expect("send the address");
                let app = axum::Router::new()
                    .route("/v1/traces", post(receive))
                    .with_state(state);
                axum::serve(listener, app).await.expect("receiver serves");
            });
        });
        let addr = rx.recv().expect("the receiver's address");
        // The flag's form (a base URL); no environment: the service name is the default.
        let settings = OtlpSettings::resolve(Some(&format!("http://{addr}")), |_| None)
            .expect("a valid endpoint")
            .expect("export on");
        assert_eq!(settings.endpoint.path(), "/v1/traces");
        let export = TraceExport::start(&settings).expect("the exporter starts");
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(export.layer()),
        )
        .expect("the only global subscriber");
        Collector { received, export }
    })
}

/// `POST /v1/traces`: OTLP/HTTP with protobuf, as the specification has it.
async fn receive(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let protobuf = [("content-type", "application/x-protobuf")];
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, protobuf, Vec::new());
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) => {
            received.lock().expect("lock").push(req);
            // An empty ExportTraceServiceResponse: everything accepted.
            (StatusCode::OK, protobuf, Vec::new())
        }
        Err(_) => (StatusCode::BAD_REQUEST, protobuf, Vec::new()),
    }
}

impl Collector {
    /// Exports every ended span now (the batch processor's thread, the receiver's answer).
    async fn flush(&self) {
        tokio::task::spawn_blocking(|| collector().export.flush())
            .await
            .expect("flush task")
            .expect("spans exported");
    }

    /// Every span received in trace `trace` (hex), with its resource's `service.name`.
    fn spans(&self, trace: &str) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for req in self.received.lock().expect("lock").iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .map(|r| attrs(&r.attributes))
                    .and_then(|a| a.get("service.name").cloned())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        if hex(&span.trace_id) == trace {
                            out.push((service.clone(), span.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// The one span of trace `trace`.
    fn only_span(&self, trace: &str) -> (String, Span) {
        let mut spans = self.spans(trace);
        assert_eq!(spans.len(), 1, "one span in trace {trace}: {spans:?}");
        spans.remove(0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Attribute values as text (integers in decimal).
fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// Nothing in the span (name, attributes, events) carries a secret or a principal id.
fn assert_no_secret(span: &Span, secrets: &[&str]) {
    let mut text = format!("{} {:?}", span.name, attrs(&span.attributes));
    for e in &span.events {
        text.push_str(&format!(" {} {:?}", e.name, attrs(&e.attributes)));
    }
    for s in secrets {
        assert!(!text.contains(s), "{s:?} leaked into the span: {text}");
    }
    assert!(span.events.is_empty(), "no log events exported: {text}");
}

/// The `traceparent` the upstream received on the request with this request id.
fn upstream_traceparent(env: &KeyEnv, request_id: &str) -> (String, String, String) {
    let got = env.up.by_request_id(request_id).header("traceparent");
    assert_eq!(got.len(), 1, "one traceparent upstream: {got:?}");
    let parts: Vec<&str> = got[0].split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{got:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

#[tokio::test]
async fn a_continued_trace_is_exported_with_the_callers_trace_and_parent() {
    let c = collector();
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .header("content-type", "application/json")
        .body(chat_body("fast-otel", false))
        .send()
        .await
        .expect("POST chat");
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    resp.bytes().await.expect("the answer");
    c.flush().await;

    let (service, span) = c.only_span(trace);
    assert_eq!(service, "attach-gateway");
    assert_eq!(span.name, "request");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.parent_span_id), caller_span, "the caller's span");
    // The upstream's parent is the exported span: one tree.
    let (up_trace, up_parent, flags) = upstream_traceparent(&env, &rid);
    assert_eq!(
        (up_trace.as_str(), up_parent, flags.as_str()),
        (trace, hex(&span.span_id), "01")
    );
    let want: BTreeMap<String, String> = [
        ("request_id", rid.as_str()),
        ("trace_id", trace),
        ("http.request.method", "POST"),
        ("http.route", "/v1/chat/completions"),
        ("http.response.status_code", "200"),
        ("auth_method", "api-key"),
        ("upstream", "test"),
        ("model", "fast-otel"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attrs(&span.attributes), want, "exactly these attributes");
    assert_eq!(
        span.status.as_ref().map_or(0, |s| s.code),
        SpanStatus::Unset as i32
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert_no_secret(&span, &[&env.key, "key:ci", "acme", "Say hello"]);
}

#[tokio::test]
async fn a_started_trace_is_the_one_the_upstream_receives() {
    let c = collector();
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let resp = http()
        .get(env.url("/v1/models"))
        .bearer_auth(&env.key)
        .send()
        .await
        .expect("GET models");
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    resp.bytes().await.expect("the answer");
    let (trace, parent, flags) = upstream_traceparent(&env, &rid);
    assert_eq!(flags, "01", "a new trace is sampled");
    c.flush().await;

    let (_, span) = c.only_span(&trace);
    assert_eq!(
        hex(&span.span_id),
        parent,
        "the upstream's parent is this span"
    );
    assert!(span.parent_span_id.is_empty(), "a root span");
    let a = attrs(&span.attributes);
    assert_eq!(
        a.get("trace_id"),
        Some(&trace),
        "the logs' trace id is this trace"
    );
    assert_eq!(a.get("request_id"), Some(&rid));
    assert_eq!(a.get("http.route").map(String::as_str), Some("/v1/models"));
    assert_eq!(a.get("upstream").map(String::as_str), Some("test"));
    assert_eq!(a.get("model"), None, "no body, no model");
    assert_no_secret(&span, &[&env.key, "key:ci"]);
}

#[tokio::test]
async fn a_refused_request_is_exported_without_the_credential() {
    let c = collector();
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let presented = "oba_gk_this-is-not-a-key-but-is-still-secret";
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(presented)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .header("content-type", "application/json")
        .body(chat_body("fast-otel", false))
        .send()
        .await
        .expect("POST chat");
    assert_eq!(resp.status(), 401);
    resp.bytes().await.expect("the error");
    assert_eq!(env.up.hits(), 0, "never forwarded");
    c.flush().await;

    let (_, span) = c.only_span(trace);
    let a = attrs(&span.attributes);
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("401")
    );
    assert_eq!(a.get("auth_method").map(String::as_str), Some("none"));
    assert_eq!(a.get("upstream"), None, "refused before routing");
    assert_eq!(a.get("model"), None);
    assert_eq!(
        span.status.as_ref().map_or(0, |s| s.code),
        SpanStatus::Unset as i32,
        "a client error is not a server error"
    );
    assert_no_secret(&span, &[presented, "Bearer"]);
}

#[tokio::test]
async fn an_upstream_failure_marks_the_span_as_an_error() {
    let c = collector();
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let trace = "5b8efff798038103d269b633813fc60c";
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{trace}-eee19b7ec3c1b174-01"))
        .header("content-type", "application/json")
        .body(chat_body("fail", false))
        .send()
        .await
        .expect("POST chat");
    assert_eq!(resp.status(), 500);
    resp.bytes().await.expect("the error");
    c.flush().await;

    let (_, span) = c.only_span(trace);
    let a = attrs(&span.attributes);
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("500")
    );
    assert_eq!(a.get("model").map(String::as_str), Some("fail"));
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
}

#[tokio::test]
async fn an_unsampled_caller_trace_is_continued_but_not_exported() {
    let c = collector();
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let trace = "6e0c63257de34c926f9efcd03927272e";
    let resp = http()
        .get(env.url("/v1/models"))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{trace}-a2fb4a1d1a96d312-00"))
        .send()
        .await
        .expect("GET models");
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    resp.bytes().await.expect("the answer");
    let (up_trace, up_parent, flags) = upstream_traceparent(&env, &rid);
    assert_eq!((up_trace.as_str(), flags.as_str()), (trace, "00"));
    assert_ne!(up_parent, "a2fb4a1d1a96d312", "this hop's own parent id");
    c.flush().await;
    assert!(c.spans(trace).is_empty(), "the caller chose not to sample");
}
