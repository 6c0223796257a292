//! End-to-end tests of the Attach Gateway over real sockets.
//!
//! Every test runs the gateway ([`attach_gateway::start`]) in front of a TEST UPSTREAM
//! (axum on `127.0.0.1:0`, in `tests/common/mod.rs`, shared with `tests/memory.rs`) that
//! speaks enough of the OpenAI and Ollama protocols: `POST /v1/chat/completions` (JSON,
//! or with `"stream": true` an SSE stream ending with a usage chunk and `data: [DONE]`),
//! `GET /v1/models`, and `POST /api/chat` (an NDJSON stream), among others.
//!
//! The upstream trusts nothing it did not verify: on every request it rebuilds the
//! request as an [`oba_httpsig::Message`] and verifies the gateway's `attach` stamp
//! signature (tag `attach-gateway`, key fetched from the gateway's
//! `/.well-known/jwks.json`, covering `@method @authority @path @query`, `content-digest`
//! when there is a body and every `X-Attach-*` field present), checks `Content-Digest`
//! against the body, and records what it saw for the test to inspect. An unstamped or
//! badly stamped request gets `401` from the upstream itself.
//!
//! Streaming is checked causally: the upstream sends the first chunk, then waits for the
//! test to say it received that chunk before it sends the rest, so a gateway that buffers
//! responses fails instead of passing slowly.
//!
//! Identity is exercised for real: API keys in a key file, RFC 9421 service-account
//! signatures, and Web Bot Auth with keys published in a real `oba_registry` (added with
//! proof of possession) and fetched by the gateway's directory client.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attach_gateway::config::{Rule, ServiceAccount, Upstream, UpstreamKind};
use attach_gateway::{apikeys, Gateway, GatewayConfig};
use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use oba_httpsig::jwk::{Jwk, JwkSet};
use oba_httpsig::{Algorithm, Component, Derived, Message, SignatureParams};
use oba_webbotauth::WebBotAuthSigner;
use serde_json::{json, Value};

use common::*;

// ---------------------------------------------------------------------------------------
// 0. The test upstream itself refuses what is not stamped by the gateway.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn test_upstream_refuses_unstamped_and_altered_requests() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let body = chat_body("llama3.1", false);
    let resp = env.chat(&env.key, body.clone()).await;
    assert_eq!(resp.status(), 200);
    let seen = env.up.last();

    // Straight to the upstream, no stamp.
    let direct = http()
        .post(format!("{}/v1/chat/completions", env.up.url()))
        .header("x-attach-principal", "key:ci")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("direct");
    assert_eq!(direct.status(), 401);

    // The genuine stamp with one field changed, then with the body changed.
    let replay = |principal: &'static str, body: Vec<u8>| {
        let mut req = http().post(format!("{}/v1/chat/completions", env.up.url()));
        for (n, v) in &seen.raw {
            if n == "host" || n == "content-length" {
                continue;
            }
            let v = if n == "x-attach-principal" {
                principal.as_bytes().to_vec()
            } else {
                v.clone()
            };
            req = req.header(n.as_str(), v);
        }
        req.body(body).send()
    };
    let r = replay("key:admin", body.clone()).await.expect("altered");
    assert_eq!(r.status(), 401, "an altered X-Attach-Principal is refused");
    let r = replay("key:ci", chat_body("gpt-4", false))
        .await
        .expect("tampered");
    assert_eq!(r.status(), 401, "a body that does not match the digest");
    let rejected = env.up.rejected();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[2].contains("Content-Digest"), "{rejected:?}");
}

// ---------------------------------------------------------------------------------------
// 1. API key.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn api_key_request_reaches_upstream_with_verified_stamp() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let body = chat_body("llama3.1", false);
    let resp = env.chat(&env.key, body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json")));
    let rids: Vec<String> = resp
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    let v: Value = resp.json_body().await;
    assert_eq!(
        v,
        completion("llama3.1"),
        "the upstream's answer, unchanged"
    );

    assert!(env.up.rejected().is_empty(), "{:?}", env.up.rejected());
    let seen = env.up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.target, "/v1/chat/completions");
    assert_eq!(s.body, body, "the body is forwarded unchanged");
    assert_eq!(s.attach("principal"), Some("key:ci"));
    assert_eq!(s.attach("auth-method"), Some("api-key"));
    assert_eq!(s.attach("tenant"), Some("acme"));
    assert_eq!(s.attach("user"), None);
    assert_eq!(s.attach("agent"), None);
    assert_eq!(s.attach("session"), None);
    assert_eq!(rids.len(), 1, "one x-request-id: {rids:?}");
    assert_eq!(s.attach("request-id"), Some(rids[0].as_str()));
    assert!(
        s.header("authorization").is_empty(),
        "the caller's API key is not forwarded (forward_credentials = false)"
    );
    assert_eq!(s.header("content-digest").len(), 1);
}

#[tokio::test]
async fn get_with_query_is_stamped_and_forwarded() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let resp = http()
        .get(env.url("/v1/models?limit=2&after=x"))
        .bearer_auth(&env.key)
        .send()
        .await
        .expect("GET models");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json_body().await, models());
    let s = env.up.last();
    assert_eq!(s.method, "GET");
    assert_eq!(
        s.target, "/v1/models?limit=2&after=x",
        "@query covered and kept"
    );
    assert!(s.body.is_empty());
    assert!(
        s.header("content-digest").is_empty(),
        "no digest without a body"
    );
}

/// W3C trace context: the caller's trace continues upstream with this hop's own parent
/// id; without one (or with an invalid one), a new sampled trace starts.
#[tokio::test]
async fn traceparent_is_continued_or_started_upstream() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (sent, same_trace) in [
        (Some(incoming), true),
        (None, false),
        (Some("00-zz-bad-01"), false),
    ] {
        let mut req = http().get(env.url("/v1/models")).bearer_auth(&env.key);
        if let Some(t) = sent {
            req = req.header("traceparent", t);
        }
        assert_eq!(req.send().await.expect("GET models").status(), 200);
        let got = env.up.last().header("traceparent");
        assert_eq!(got.len(), 1, "one traceparent upstream");
        let parts: Vec<&str> = got[0].split('-').collect();
        assert_eq!(parts.len(), 4, "{got:?}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(
            parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736",
            same_trace,
            "{got:?}"
        );
        assert_ne!(parts[2], "00f067aa0ba902b7", "this hop's own parent id");
    }
}

/// The client must see one request id, the gateway's (the one in the stamp), even when
/// the model server sends its own `x-request-id` (hosted OpenAI-compatible servers do).
#[tokio::test]
async fn response_request_id_is_the_gateways_even_when_upstream_sends_one() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let resp = http()
        .get(env.url("/v1/models"))
        .bearer_auth(&env.key)
        .send()
        .await
        .expect("GET models");
    assert_eq!(resp.status(), 200);
    let rids: Vec<String> = resp
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    let stamped = env
        .up
        .last()
        .attach("request-id")
        .expect("stamped")
        .to_owned();
    assert_eq!(
        rids,
        vec![stamped],
        "exactly one x-request-id, the gateway's (the upstream's must not shadow it)"
    );
}

#[tokio::test]
async fn forward_credentials_forwards_authorization_and_stamp_still_verifies() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |c| c.forward_credentials = true).await;
    let resp = env.chat(&env.key, chat_body("llama3.1", false)).await;
    assert_eq!(resp.status(), 200);
    let s = env.up.last();
    assert_eq!(
        s.header("authorization"),
        vec![format!("Bearer {}", env.key)]
    );
    assert_eq!(s.attach("principal"), Some("key:ci"));
}

#[tokio::test]
async fn requests_are_routed_by_model_and_stamped_for_each_upstream() {
    let ollama = start_upstream().await;
    let openai = start_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.jsonl");
    let key = apikeys::create(&keys, "ci", Some("acme"), now()).expect("key");
    let mut cfg = config(&openai.url());
    cfg.upstreams.insert(
        0,
        Upstream {
            name: "ollama".into(),
            url: ollama.url(),
            kind: UpstreamKind::Ollama,
            models: vec!["llama3*".into()],
        },
    );
    cfg.api_key_file = Some(keys);
    cfg.policy = vec![tenant_rule("acme")];
    let gw = attach_gateway::start(cfg).await.expect("gateway");
    for up in [&ollama, &openai] {
        up.state
            .keys
            .lock()
            .expect("lock")
            .push(gw.stamp_public_jwk.clone());
    }
    for (model, want) in [
        ("llama3.1", &ollama),
        ("gpt-4", &openai),
        ("llama3", &ollama),
    ] {
        let before = want.hits();
        let resp = http()
            .post(format!("http://{}/v1/chat/completions", gw.addr))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(chat_body(model, false))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(want.hits(), before + 1, "{model} went to its upstream");
    }
    assert_eq!((ollama.hits(), openai.hits()), (2, 1));
    assert!(ollama.rejected().is_empty() && openai.rejected().is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. Client X-Attach-* fields and sessions.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn spoofed_x_attach_fields_are_replaced_and_session_is_scoped() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let send = |session: Option<String>| {
        let mut req = http()
            .post(env.url("/v1/chat/completions"))
            .bearer_auth(&env.key)
            .header("content-type", "application/json")
            .header("X-Attach-Principal", "admin")
            .header("X-Attach-Tenant", "other")
            .header("X-Attach-Auth-Method", "web-bot-auth")
            .header("X-Attach-User", "root")
            .header("X-Attach-Agent", "https://evil.example/")
            .header("X-Attach-Request-Id", "chosen-by-client")
            .header("X-Attach-Whatever", "x");
        if let Some(s) = session {
            req = req.header("X-Attach-Session", s);
        }
        req.body(chat_body("llama3.1", false)).send()
    };
    let resp = send(Some("chat-42_v1.2".into())).await.expect("send");
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let s = env.up.last();
    assert_eq!(s.attach("principal"), Some("key:ci"));
    assert_eq!(s.attach("tenant"), Some("acme"));
    assert_eq!(s.attach("auth-method"), Some("api-key"));
    assert_eq!(s.attach("user"), None, "client X-Attach-User removed");
    assert_eq!(s.attach("agent"), None, "client X-Attach-Agent removed");
    assert_eq!(
        s.attach("whatever"),
        None,
        "every client X-Attach-* removed"
    );
    assert_eq!(s.attach("request-id"), Some(rid.as_str()));
    assert_eq!(s.attach("session"), Some("key:ci/chat-42_v1.2"));

    // Invalid labels are dropped, not forwarded and not rejected.
    for bad in [
        "a/b".to_owned(),
        "has space".to_owned(),
        "x".repeat(65),
        String::new(),
        "key:ci/evil".to_owned(),
    ] {
        let resp = send(Some(bad.clone())).await.expect("send");
        assert_eq!(resp.status(), 200, "{bad:?}");
        let s = env.up.last();
        assert_eq!(s.attach("session"), None, "invalid session label {bad:?}");
        assert_eq!(s.attach("principal"), Some("key:ci"));
    }
    // The longest valid label.
    let resp = send(Some("y".repeat(64))).await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.up.last().attach("session").map(str::to_owned),
        Some(format!("key:ci/{}", "y".repeat(64)))
    );
    assert!(env.up.rejected().is_empty(), "{:?}", env.up.rejected());
}

// ---------------------------------------------------------------------------------------
// 3. Streaming.
// ---------------------------------------------------------------------------------------

/// then the whole body arrives unchanged.
async fn assert_streams_incrementally(
    up: &TestUpstream,
    resp: reqwest::Response,
    content_type: &str,
    chunks: &[String],
) {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some(content_type)
    );
    let mut stream = Box::pin(resp.bytes_stream());
    let mut got = Vec::new();
    let first = chunks[0].len();
    tokio::time::timeout(
        Duration::from_secs(3),
        read_at_least(&mut stream, &mut got, first),
    )
    .await
    .expect("the first chunk did not reach the client while the upstream was streaming");
    assert!(
        !up.state.last_sent.load(Ordering::SeqCst),
        "the first chunk arrived before the upstream sent the last one"
    );
    assert_eq!(String::from_utf8_lossy(&got), chunks[0]);
    up.state.release.notify_one();
    let rest = async {
        while let Some(c) = stream.next().await {
            got.extend_from_slice(&c.expect("a chunk"));
        }
    };
    tokio::time::timeout(Duration::from_secs(5), rest)
        .await
        .expect("the stream ends");
    assert!(
        up.state.released.load(Ordering::SeqCst),
        "the upstream was released by the client's first chunk"
    );
    assert_eq!(String::from_utf8_lossy(&got), chunks.concat());
}

#[tokio::test]
async fn openai_sse_stream_is_relayed_chunk_by_chunk() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let resp = env.chat(&env.key, chat_body("llama3.1", true)).await;
    let chunks = sse_chunks("llama3.1");
    assert!(chunks.last().is_some_and(|c| c == "data: [DONE]\n\n"));
    assert!(chunks[chunks.len() - 2].contains("\"usage\""));
    assert_streams_incrementally(&env.up, resp, "text/event-stream", &chunks).await;
    assert_eq!(env.up.last().attach("principal"), Some("key:ci"));
}

#[tokio::test]
async fn ollama_ndjson_stream_is_relayed_chunk_by_chunk() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |c| {
        c.upstreams[0].kind = UpstreamKind::Ollama;
    })
    .await;
    let body = json!({
        "model": "llama3",
        "messages": [{ "role": "user", "content": "hi" }],
    })
    .to_string();
    let resp = http()
        .post(env.url("/api/chat"))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /api/chat");
    let chunks = ndjson_chunks("llama3");
    assert_streams_incrementally(&env.up, resp, "application/x-ndjson", &chunks).await;
    let s = env.up.last();
    assert_eq!(s.target, "/api/chat");
    assert_eq!(s.attach("auth-method"), Some("api-key"));
}

// ---------------------------------------------------------------------------------------
// 4. Rejections.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn no_credentials_is_401_with_hints() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("llama3.1", false))
        .send()
        .await
        .expect("send");
    let (headers, _) = expect_error(resp, 401, "unauthenticated").await;
    let www = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(
        www.contains(&format!(
            "resource_metadata=\"http://{}/.well-known/oauth-protected-resource\"",
            env.gw.addr
        )),
        "{www}"
    );
    let accept = headers
        .get("accept-signature")
        .and_then(|v| v.to_str().ok())
        .expect("Accept-Signature");
    assert_eq!(accept, oba_webbotauth::layer::ACCEPT_SIGNATURE);
    assert!(accept.contains("tag=\"web-bot-auth\""));
    assert_eq!(env.up.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn unknown_and_non_api_key_bearers_are_401() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let unknown = apikeys::new_key();
    let resp = env.chat(&unknown, chat_body("llama3.1", false)).await;
    let (headers, _) = expect_error(resp, 401, "unknown_api_key").await;
    assert!(headers.contains_key("www-authenticate"));
    // The right key with one character changed.
    let mut near = env.key.clone();
    let last = near.pop().expect("non-empty");
    near.push(if last == 'A' { 'B' } else { 'A' });
    let resp = env.chat(&near, chat_body("llama3.1", false)).await;
    expect_error(resp, 401, "unknown_api_key").await;
    let resp = env
        .chat("eyJhbGciOi.jwt.token", chat_body("llama3.1", false))
        .await;
    // Not an API key, and no OIDC issuer is configured.
    let (headers, body) = expect_error_status(resp, 401).await;
    assert_eq!(body["code"], "unknown_token", "{body}");
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(env.up.hits(), 0);
}

#[tokio::test]
async fn revoked_key_is_401_after_restart() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    assert_eq!(
        env.chat(&env.key, chat_body("llama3.1", false))
            .await
            .status(),
        200
    );
    apikeys::revoke(&env.keys_path, "ci").expect("revoke");
    env.gw.stop();
    let mut cfg = config(&env.up.url());
    cfg.api_key_file = Some(env.keys_path.clone());
    cfg.policy = vec![tenant_rule("acme")];
    let gw = start_gateway(cfg, Some(&env.up)).await;
    let resp = http()
        .post(format!("http://{}/v1/chat/completions", gw.addr))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body(chat_body("llama3.1", false))
        .send()
        .await
        .expect("send");
    expect_error(resp, 401, "unknown_api_key").await;
    assert_eq!(env.up.hits(), 1, "only the request before revocation");
}

#[tokio::test]
async fn paths_outside_routes_are_404() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    for path in [
        "/admin",
        "/v1/fine_tuning/jobs",
        "/v1/chat/completions/",
        "/V1/models",
        "/api/pull",
        "/v1/models/../../admin",
        "/.well-known/other",
    ] {
        let resp = http()
            .post(env.url(path))
            .bearer_auth(&env.key)
            .body("{}")
            .send()
            .await
            .expect("send");
        expect_error(resp, 404, "route_not_allowed").await;
    }
    assert_eq!(env.up.hits(), 0);
}

#[tokio::test]
async fn policy_denials_are_403() {
    let rules = vec![
        Rule {
            tenant: Some("acme".into()),
            routes: vec!["/v1/chat/completions".into()],
            models: vec!["llama3*".into()],
            ..Rule::default()
        },
        tenant_rule("gamma"),
    ];
    let env = KeyEnv::start(rules.clone(), |_| {}).await;
    // A key of another tenant (beta: no rule names it), and a key without a tenant.
    let other = apikeys::create(&env.keys_path, "beta-key", Some("beta"), now()).expect("key");
    let no_tenant = apikeys::create(&env.keys_path, "loose", None, now()).expect("key");
    // Key files are read at start: restart on the same upstream.
    env.gw.stop();
    let mut cfg = config(&env.up.url());
    cfg.api_key_file = Some(env.keys_path.clone());
    cfg.policy = rules;
    let gw = start_gateway(cfg, Some(&env.up)).await;
    let chat = |key: String, model: &'static str| {
        http()
            .post(format!("http://{}/v1/chat/completions", gw.addr))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(chat_body(model, false))
            .send()
    };
    expect_error(
        chat(other, "llama3.1").await.expect("send"),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        chat(no_tenant, "llama3.1").await.expect("send"),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        chat(env.key.clone(), "gpt-4").await.expect("send"),
        403,
        "forbidden",
    )
    .await;
    // No model at all does not match a rule that lists models.
    let resp = http()
        .post(format!("http://{}/v1/chat/completions", gw.addr))
        .bearer_auth(&env.key)
        .body("not json")
        .send()
        .await
        .expect("send");
    expect_error(resp, 403, "forbidden").await;
    // A route the rule does not list.
    let resp = http()
        .get(format!("http://{}/v1/models", gw.addr))
        .bearer_auth(&env.key)
        .send()
        .await
        .expect("send");
    expect_error(resp, 403, "forbidden").await;
    assert_eq!(env.up.hits(), 0);
    // What the rule allows.
    let ok = chat(env.key.clone(), "llama3.1").await.expect("send");
    assert_eq!(ok.status(), 200);
    assert_eq!(env.up.hits(), 1);
}

#[tokio::test]
async fn body_over_max_body_is_413() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |c| c.max_body = 1024).await;
    // Exactly at the limit passes.
    let mut body = chat_body("llama3.1", false);
    let pad = 1024 - body.len() - r#","pad":"""#.len();
    body = json!({
        "model": "llama3.1", "stream": false,
        "messages": [{ "role": "user", "content": "Say hello" }],
        "pad": "p".repeat(pad),
    })
    .to_string()
    .into_bytes();
    assert_eq!(body.len(), 1024);
    assert_eq!(env.chat(&env.key, body).await.status(), 200);
    // One byte over, and far over.
    for size in [1025, 64 * 1024] {
        let big = vec![b' '; size];
        let resp = env.chat(&env.key, big).await;
        expect_error(resp, 413, "body_too_large").await;
    }
    // Chunked, with no Content-Length.
    let chunks: Vec<Result<Vec<u8>, Infallible>> = (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    expect_error(resp, 413, "body_too_large").await;
    assert_eq!(env.up.hits(), 1);
    // Chunked and under the limit: forwarded whole, with the gateway's digest.
    let small = chat_body("llama3.1", false);
    let parts: Vec<Result<Vec<u8>, Infallible>> =
        small.chunks(16).map(|c| Ok(c.to_vec())).collect();
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(env.up.last().body, small);
}

#[tokio::test]
async fn upstream_down_is_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.jsonl");
    let key = apikeys::create(&keys, "ci", Some("acme"), now()).expect("key");
    let mut cfg = config(&format!("http://{closed}"));
    cfg.api_key_file = Some(keys);
    cfg.policy = vec![tenant_rule("acme")];
    let gw = start_gateway(cfg, None).await;
    let resp = http()
        .post(format!("http://{}/v1/chat/completions", gw.addr))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(chat_body("llama3.1", false))
        .send()
        .await
        .expect("send");
    expect_error(resp, 502, "upstream_unavailable").await;
}

#[tokio::test]
async fn upstream_slower_than_first_byte_timeout_is_504() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |c| c.first_byte_timeout_secs = 1).await;
    let t = Instant::now();
    let resp = env.chat(&env.key, chat_body("slow", false)).await;
    expect_error(resp, 504, "upstream_timeout").await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        env.up.hits(),
        1,
        "the request did reach the (slow) upstream"
    );
}

#[tokio::test]
async fn tampered_body_with_content_digest_is_400() {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |_| {}).await;
    let sent = chat_body("llama3.1", false);
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .header("content-digest", sha256_digest(&chat_body("gpt-4", false)))
        .body(sent.clone())
        .send()
        .await
        .expect("send");
    expect_error(resp, 400, "digest_mismatch").await;
    // Not a digest at all.
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("content-digest", "not a digest")
        .body(sent.clone())
        .send()
        .await
        .expect("send");
    expect_error(resp, 400, "digest_mismatch").await;
    assert_eq!(env.up.hits(), 0);
    // The right digest passes (and the upstream gets the gateway's own digest).
    let resp = http()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .header("content-digest", sha256_digest(&sent))
        .body(sent.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.up.last().header("content-digest"),
        vec![sha256_digest(&sent)]
    );
}

// ---------------------------------------------------------------------------------------
// 5. Service accounts (RFC 9421).
// ---------------------------------------------------------------------------------------

struct SvcEnv {
    up: TestUpstream,
    gw: Gateway,
    private: Jwk,
}

const SVC: &str = "batch-job";

impl SvcEnv {
    /// A gateway with service account `batch-job` (tenant `acme`) whose configured JWK
    /// is `configured` (the public part of `private`, possibly edited).
    async fn start_with(private: Jwk, configured: Value) -> SvcEnv {
        SvcEnv::start_full(private, configured, |_| {}).await
    }

    /// [`SvcEnv::start`] with a configuration tweak.
    async fn start_configured(tweak: impl FnOnce(&mut GatewayConfig)) -> SvcEnv {
        let private = Jwk::generate(Algorithm::Ed25519).expect("key");
        let public = serde_json::to_value(private.public().expect("public")).expect("json");
        SvcEnv::start_full(private, public, tweak).await
    }

    async fn start_full(
        private: Jwk,
        configured: Value,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> SvcEnv {
        let up = start_upstream().await;
        let mut cfg = config(&up.url());
        cfg.service_accounts = vec![ServiceAccount {
            name: SVC.into(),
            tenant: Some("acme".into()),
            jwk: configured,
        }];
        cfg.policy = vec![Rule {
            kind: Some("service".into()),
            id: Some(format!("service:{SVC}")),
            ..Rule::default()
        }];
        tweak(&mut cfg);
        let gw = start_gateway(cfg, Some(&up)).await;
        SvcEnv { up, gw, private }
    }

    /// Configured with the generated key's public part as is (`kid` = thumbprint).
    async fn start() -> SvcEnv {
        let private = Jwk::generate(Algorithm::Ed25519).expect("key");
        let public = serde_json::to_value(private.public().expect("public")).expect("json");
        SvcEnv::start_with(private, public).await
    }

    fn thumbprint(&self) -> String {
        self.private.thumbprint().expect("thumbprint")
    }

    /// RFC 9421 headers for `POST /v1/chat/completions` with `body`, by `signer`.
    fn sign(&self, signer: &Jwk, keyid: &str, body: &[u8], created: i64) -> Vec<(String, String)> {
        let key = signer.signing_key(None).expect("signing key");
        let digest = sha256_digest(body);
        let msg = Message::request("POST", "/v1/chat/completions")
            .expect("message")
            .with_scheme("http")
            .with_header("Host", self.gw.addr.to_string())
            .with_header("Content-Digest", &digest)
            .with_body(body.to_vec());
        let params = SignatureParams::new(vec![
            Component::derived(Derived::Method),
            Component::derived(Derived::Authority),
            Component::derived(Derived::Path),
            Component::field("content-digest").expect("component"),
        ])
        .and_then(|p| p.with_created(created))
        .and_then(|p| p.with_keyid(keyid))
        .and_then(|p| p.with_nonce(&oba_httpsig::random_nonce()))
        .expect("params");
        let sig = oba_httpsig::sign(&msg, None, "sig1", params, &key).expect("sign");
        vec![
            ("content-digest".into(), digest),
            ("signature-input".into(), sig.signature_input()),
            ("signature".into(), sig.signature()),
        ]
    }

    async fn send(&self, headers: &[(String, String)], body: &[u8]) -> reqwest::Response {
        let mut req = http()
            .post(format!("http://{}/v1/chat/completions", self.gw.addr))
            .header("content-type", "application/json");
        for (n, v) in headers {
            req = req.header(n.as_str(), v.as_str());
        }
        req.body(body.to_vec()).send().await.expect("send")
    }

    fn assert_stamped_as_service(&self) {
        let s = self.up.last();
        assert_eq!(s.attach("principal"), Some("service:batch-job"));
        assert_eq!(s.attach("auth-method"), Some("http-signature"));
        assert_eq!(s.attach("tenant"), Some("acme"));
        assert!(s.header("signature-agent").is_empty());
        let inputs = s.header("signature-input");
        assert_eq!(inputs.len(), 1, "only the stamp's signature: {inputs:?}");
        assert!(inputs[0].starts_with("attach="), "{inputs:?}");
        assert!(self.up.rejected().is_empty(), "{:?}", self.up.rejected());
    }
}

#[tokio::test]
async fn service_account_signed_with_thumbprint_keyid() {
    let env = SvcEnv::start().await;
    let body = chat_body("llama3.1", false);
    let headers = env.sign(&env.private, &env.thumbprint(), &body, now());
    let resp = env.send(&headers, &body).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    env.assert_stamped_as_service();
}

/// `keyid` = the account name, with the configured JWK exactly as generated (it carries
/// `kid` = thumbprint, as every JWK from `Jwk::generate` and most tools do).
#[tokio::test]
async fn service_account_signed_with_account_name_keyid() {
    let env = SvcEnv::start().await;
    let body = chat_body("llama3.1", false);
    let headers = env.sign(&env.private, SVC, &body, now());
    let resp = env.send(&headers, &body).await;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "keyid = account name must be accepted: {text}");
    env.assert_stamped_as_service();
}

/// The same, with a configured JWK that has no `kid` (as in the config.rs example).
#[tokio::test]
async fn service_account_without_kid_signed_with_account_name_keyid() {
    let private = Jwk::generate(Algorithm::Ed25519).expect("key");
    let mut public = private.public().expect("public");
    public.kid = None;
    let env = SvcEnv::start_with(private, serde_json::to_value(public).expect("json")).await;
    let body = chat_body("llama3.1", false);
    let headers = env.sign(&env.private, SVC, &body, now());
    let resp = env.send(&headers, &body).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    env.assert_stamped_as_service();
}

#[tokio::test]
async fn service_account_rejections() {
    let env = SvcEnv::start().await;
    let body = chat_body("llama3.1", false);
    let kid = env.thumbprint();

    // Created 400 s ago (max age 300 s + 30 s skew).
    let old = env.sign(&env.private, &kid, &body, now() - 400);
    expect_error(env.send(&old, &body).await, 401, "too_old").await;

    // Signed by another key under this account's keyid.
    let other = Jwk::generate(Algorithm::Ed25519).expect("key");
    let wrong = env.sign(&other, &kid, &body, now());
    expect_error(env.send(&wrong, &body).await, 401, "bad_signature").await;

    // A keyid no account has.
    let unknown = env.sign(&env.private, "nobody", &body, now());
    expect_error(env.send(&unknown, &body).await, 401, "unknown_key").await;

    // Replay of a good request.
    let good = env.sign(&env.private, &kid, &body, now());
    assert_eq!(env.send(&good, &body).await.status(), 200);
    let (headers, _) = expect_error(env.send(&good, &body).await, 401, "replay").await;
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(env.up.hits(), 1, "only the first of the replayed pair");

    // A signed digest with a different body: the signature holds, the digest does not.
    let signed = env.sign(&env.private, &kid, &body, now());
    let tampered = chat_body("gpt-4", false);
    expect_error(env.send(&signed, &tampered).await, 400, "digest_mismatch").await;
    assert_eq!(env.up.hits(), 1);
}

/// Signs `POST /v1/chat/completions` covering exactly `components`, with or without a
/// nonce.
fn sign_covering(
    env: &SvcEnv,
    components: Vec<Component>,
    nonce: bool,
    body: &[u8],
) -> Vec<(String, String)> {
    let key = env.private.signing_key(None).expect("signing key");
    let digest = sha256_digest(body);
    let msg = Message::request("POST", "/v1/chat/completions")
        .expect("message")
        .with_scheme("http")
        .with_header("Host", env.gw.addr.to_string())
        .with_header("Content-Digest", &digest)
        .with_body(body.to_vec());
    let mut params = SignatureParams::new(components)
        .and_then(|p| p.with_created(now()))
        .and_then(|p| p.with_keyid(&env.thumbprint()))
        .expect("params");
    if nonce {
        params = params
            .with_nonce(&oba_httpsig::random_nonce())
            .expect("nonce");
    }
    let sig = oba_httpsig::sign(&msg, None, "sig1", params, &key).expect("sign");
    vec![
        ("content-digest".into(), digest),
        ("signature-input".into(), sig.signature_input()),
        ("signature".into(), sig.signature()),
    ]
}

/// With `require_nonce = true`, a signature without a nonce is refused (it could be
/// replayed for the whole 300 s window); with a nonce it passes once.
#[tokio::test]
async fn service_account_signature_without_nonce_is_refused_when_required() {
    let env = SvcEnv::start_configured(|c| c.require_nonce = true).await;
    let body = chat_body("llama3.1", false);
    let components = || {
        vec![
            Component::derived(Derived::Method),
            Component::derived(Derived::Authority),
            Component::derived(Derived::Path),
            Component::field("content-digest").expect("component"),
        ]
    };
    let headers = sign_covering(&env, components(), false, &body);
    expect_error(env.send(&headers, &body).await, 401, "nonce_required").await;
    let headers = sign_covering(&env, components(), true, &body);
    assert_eq!(env.send(&headers, &body).await.status(), 200);
    expect_error(env.send(&headers, &body).await, 401, "replay").await;
    assert_eq!(env.up.hits(), 1);
}

/// A service-account signature must bind the request: one that covers no component
/// (or only `@authority`) is a bearer token for any method, route and body.
#[tokio::test]
async fn service_account_signature_must_bind_method_path_and_body() {
    let env = SvcEnv::start().await;
    let body = chat_body("llama3.1", false);
    let mut accepted = Vec::new();
    for (what, components) in [
        ("no component", Vec::new()),
        (
            "@authority only",
            vec![Component::derived(Derived::Authority)],
        ),
        (
            "no content-digest although there is a body",
            vec![
                Component::derived(Derived::Method),
                Component::derived(Derived::Authority),
                Component::derived(Derived::Path),
            ],
        ),
    ] {
        let headers = sign_covering(&env, components, true, &body);
        if env.send(&headers, &body).await.status() != 401 {
            accepted.push(what);
        }
    }
    // What an unbound signature allows: made for one request, used for another route
    // with another body (no Content-Digest sent).
    let headers = sign_covering(&env, Vec::new(), true, &body);
    let mut req = http().post(format!("http://{}/api/chat", env.gw.addr));
    for (n, v) in headers.iter().filter(|(n, _)| n != "content-digest") {
        req = req.header(n.as_str(), v.as_str());
    }
    let resp = req
        .body(r#"{"model":"anything","messages":[]}"#)
        .send()
        .await
        .expect("send");
    if resp.status() != 401 {
        accepted.push("no component, reused on /api/chat with another body");
    }
    assert!(
        accepted.is_empty(),
        "service-account signatures accepted although they do not bind the request: {accepted:?}"
    );
    assert_eq!(env.up.hits(), 0);
}

// ---------------------------------------------------------------------------------------
// 6. Web Bot Auth through a real registry.
// ---------------------------------------------------------------------------------------

/// A registry with one agent whose key (`bot`) was added with proof of possession.
struct RegistryAgent {
    registry: oba_registry::Registry,
    jwks_uri: String,
    bot: Jwk,
    _dir: tempfile::TempDir,
}

async fn registry_with_agent() -> RegistryAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = oba_registry::start(oba_registry::Config {
        listen: "127.0.0.1:0".into(),
        db_url: format!("sqlite://{}", dir.path().join("r.db").display()),
        ..oba_registry::Config::default()
    })
    .await
    .expect("registry starts");
    let admin = registry.admin_token.clone().expect("admin token");
    let resp = http()
        .post(format!("{}/v1/agents", registry.public_url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({ "name": "e2e-bot" }).to_string())
        .send()
        .await
        .expect("create agent");
    assert_eq!(resp.status(), 201);
    let agent = resp.json_body().await;
    let id = agent["id"].as_str().expect("agent id").to_owned();
    let jwks_uri = agent["jwks_uri"].as_str().expect("jwks_uri").to_owned();
    assert_eq!(
        jwks_uri,
        format!("{}/agents/{id}/jwks.json", registry.public_url)
    );

    let bot = Jwk::generate(Algorithm::Ed25519).expect("bot key");
    let body = json!({ "jwk": bot.public().expect("public") }).to_string();
    let url = format!("{}/v1/agents/{id}/keys", registry.public_url);
    let proof = oba_registry::pop::proof_headers(&bot, "POST", &url, body.as_bytes(), now())
        .expect("proof headers");
    let mut req = http()
        .post(&url)
        .bearer_auth(&admin)
        .header("content-type", "application/json");
    for (n, v) in proof {
        req = req.header(n, v);
    }
    let resp = req.body(body).send().await.expect("add key");
    let status = resp.status();
    assert!(
        status.is_success(),
        "add key: {status} {}",
        resp.text().await.unwrap_or_default()
    );
    // The key is published.
    let published = http()
        .get(&jwks_uri)
        .send()
        .await
        .expect("GET jwks")
        .text()
        .await
        .expect("jwks");
    assert!(
        JwkSet::parse(&published)
            .expect("JWK Set")
            .find(&bot.thumbprint().expect("thumbprint"))
            .is_some(),
        "{published}"
    );
    RegistryAgent {
        registry,
        jwks_uri,
        bot,
        _dir: dir,
    }
}

/// A plain JWKS server (untrusted by the gateway) publishing `key`; counts its hits.
async fn jwks_server(key: &Jwk) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut public = key.public().expect("public");
    public.kid = Some(key.thumbprint().expect("thumbprint"));
    let doc = json!({ "keys": [public] }).to_string();
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/agents/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Response::builder()
                    .header("content-type", "application/jwk-set+json")
                    .body(Body::from(doc))
                    .expect("response")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/agents/jwks.json"), hits)
}

/// Web Bot Auth headers for `POST /v1/chat/completions` to `gw`.
fn bot_headers(
    bot: &Jwk,
    agent: &str,
    gw: SocketAddr,
    body: &[u8],
    created: i64,
) -> Vec<(&'static str, String)> {
    let signer = WebBotAuthSigner::new(bot)
        .and_then(|s| s.with_signature_agent(agent))
        .expect("signer");
    let msg = Message::request("POST", "/v1/chat/completions")
        .expect("message")
        .with_scheme("http")
        .with_header("Host", gw.to_string())
        .with_body(body.to_vec());
    signer.sign(&msg, body, created).expect("sign")
}

async fn send_bot(
    gw: SocketAddr,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> reqwest::Response {
    let mut req = http()
        .post(format!("http://{gw}/v1/chat/completions"))
        .header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, v.as_str());
    }
    req.body(body.to_vec()).send().await.expect("send")
}

#[tokio::test]
async fn web_bot_auth_through_a_real_registry() {
    let ra = registry_with_agent().await;
    let up = start_upstream().await;
    let mut cfg = config(&up.url());
    cfg.trusted_agents = vec![format!("{}/agents/", ra.registry.public_url)];
    cfg.allow_insecure_directories = true;
    cfg.policy = vec![Rule {
        kind: Some("bot".into()),
        ..Rule::default()
    }];
    let gw = start_gateway(cfg, Some(&up)).await;
    let body = chat_body("llama3.1", false);
    let thumbprint = ra.bot.thumbprint().expect("thumbprint");

    let headers = bot_headers(&ra.bot, &ra.jwks_uri, gw.addr, &body, now());
    assert!(
        headers
            .iter()
            .any(|(n, v)| *n == "Signature-Agent" && v.contains("type=jwks_uri")),
        "{headers:?}"
    );
    let resp = send_bot(gw.addr, &headers, &body).await;
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
    let s = up.last();
    assert_eq!(s.attach("auth-method"), Some("web-bot-auth"));
    assert_eq!(s.attach("agent"), Some(ra.jwks_uri.as_str()));
    assert_eq!(
        s.attach("principal").map(str::to_owned),
        Some(format!("bot:{}#{thumbprint}", ra.jwks_uri))
    );
    assert_eq!(s.attach("tenant"), None);
    assert!(
        s.header("signature-agent").is_empty(),
        "the bot's credentials are not forwarded"
    );
    let inputs = s.header("signature-input");
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert!(inputs[0].starts_with("attach="), "{inputs:?}");

    // The same request again.
    expect_error(send_bot(gw.addr, &headers, &body).await, 401, "replay").await;

    // A fresh signature from the same bot still passes (keys come from the cache).
    let again = bot_headers(&ra.bot, &ra.jwks_uri, gw.addr, &body, now());
    assert_eq!(send_bot(gw.addr, &again, &body).await.status(), 200);

    // Expired: created 400 s ago, valid for 60 s.
    let old = bot_headers(&ra.bot, &ra.jwks_uri, gw.addr, &body, now() - 400);
    expect_error(send_bot(gw.addr, &old, &body).await, 401, "expired").await;

    // The same (registered) key, but published by an agent outside trusted_agents: its
    // keys are never even fetched.
    let (untrusted, hits) = jwks_server(&ra.bot).await;
    let elsewhere = bot_headers(&ra.bot, &untrusted, gw.addr, &body, now());
    expect_error(
        send_bot(gw.addr, &elsewhere, &body).await,
        401,
        "keys_unavailable",
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "untrusted agent fetched");

    // A key the registry agent does not publish.
    let stranger = Jwk::generate(Algorithm::Ed25519).expect("key");
    let unknown = bot_headers(&stranger, &ra.jwks_uri, gw.addr, &body, now());
    let resp = send_bot(gw.addr, &unknown, &body).await;
    expect_error(resp, 401, "unknown_key").await;

    // The body is bound by the signed Content-Digest.
    let signed = bot_headers(&ra.bot, &ra.jwks_uri, gw.addr, &body, now());
    let resp = send_bot(gw.addr, &signed, &chat_body("gpt-4", false)).await;
    expect_error(resp, 400, "digest_mismatch").await;

    assert_eq!(
        up.hits(),
        2,
        "only the two good requests reached the upstream"
    );
    assert!(up.rejected().is_empty(), "{:?}", up.rejected());
}

// ---------------------------------------------------------------------------------------
// 7. Health and metadata.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_jwks_and_resource_metadata() {
    let up = start_upstream().await;
    let gw = start_gateway(config(&up.url()), Some(&up)).await;
    let base = format!("http://{}", gw.addr);

    for path in ["/healthz", "/readyz"] {
        let r = http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
    }

    let r = http()
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json"));
    let v = r.json_body().await;
    let keys = v["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    let thumbprint = gw.stamp_public_jwk.thumbprint().expect("thumbprint");
    assert_eq!(k["kid"], thumbprint.as_str());
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert!(k.get("d").is_none(), "no private part published: {k}");
    let parsed: Jwk = serde_json::from_value(k.clone()).expect("JWK");
    assert_eq!(parsed.thumbprint().expect("thumbprint"), thumbprint);

    let r = http()
        .get(format!("{base}/.well-known/oauth-protected-resource"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(r.status(), 200);
    let v = r.json_body().await;
    assert_eq!(v["resource"], base.as_str());
    assert_eq!(v["bearer_methods_supported"], json!(["header"]));
    assert!(v["authorization_servers"].is_array());
    assert!(v["resource_signing_alg_values_supported"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "ed25519")));
    assert_eq!(up.hits(), 0);
}

// ---------------------------------------------------------------------------------------
// 8. Configuration.
// ---------------------------------------------------------------------------------------

/// The TOML example of `config.rs`'s module documentation, read from the source so the
/// test follows the documentation.
fn doc_example() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in include_str!("../src/config.rs").lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match (inside, doc.trim()) {
            (false, "```toml") => inside = true,
            (true, "```") => break,
            (true, _) => {
                out.push_str(doc);
                out.push('\n');
            }
            _ => {}
        }
    }
    assert!(out.contains("[[upstreams]]"), "example found: {out}");
    out
}

#[test]
fn config_doc_example_parses() {
    let c = GatewayConfig::from_toml(&doc_example()).expect("the documented example parses");
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.public_url.as_deref(), Some("https://gateway.example"));
    assert_eq!(
        c.api_key_file.as_deref(),
        Some(Path::new("gateway-keys.jsonl"))
    );
    assert_eq!(c.trusted_agents, vec!["https://registry.example/agents/"]);
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.upstreams[0].name, "ollama");
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Ollama);
    assert_eq!(c.upstreams[0].models, vec!["llama3*"]);
    assert_eq!(c.oidc_issuers[0].issuer, "https://login.example");
    assert_eq!(c.oidc_issuers[0].audience, "attach-gateway");
    assert_eq!(c.oidc_issuers[0].tenant_claim.as_deref(), Some("org"));
    assert_eq!(c.service_accounts[0].name, "batch-job");
    assert_eq!(c.service_accounts[0].tenant.as_deref(), Some("acme"));
    assert_eq!(c.service_accounts[0].jwk["kty"], "OKP");
    let r = &c.policy[0];
    assert_eq!(r.kind.as_deref(), Some("service"));
    assert_eq!(r.tenant.as_deref(), Some("acme"));
    assert_eq!(r.id.as_deref(), Some("key:ci"));
    assert_eq!(r.routes, vec!["/v1/chat/completions"]);
    assert_eq!(r.models, vec!["llama3*"]);
    // Defaults.
    assert!(!c.forward_credentials);
    assert!(!c.allow_insecure_directories);
    assert_eq!(c.max_body, 10 * 1024 * 1024);
    assert_eq!(c.connect_timeout_secs, 5);
    assert_eq!(c.first_byte_timeout_secs, 60);
    assert!(c.stamp_key_file.is_none());
}

#[test]
fn config_unknown_fields_are_rejected() {
    for (what, extra) in [
        ("top level", "listne = \"127.0.0.1:1\"\n"),
        (
            "upstream",
            "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\nkind = \"openai\"\nweight = 2\n",
        ),
        (
            "service account",
            "[[service_accounts]]\nname = \"a\"\njwk = {}\nscopes = []\n",
        ),
        (
            "policy rule",
            "[[policy]]\nkind = \"bot\"\naction = \"allow\"\n",
        ),
    ] {
        let err = GatewayConfig::from_toml(extra).expect_err(what);
        assert!(err.contains("unknown field"), "{what}: {err}");
    }
    let err = GatewayConfig::from_toml(
        "[[upstreams]]\nname = \"a\"\nurl = \"http://x\"\nkind = \"grpc\"\n",
    )
    .expect_err("unknown kind");
    assert!(
        err.contains("grpc") || err.contains("unknown variant"),
        "{err}"
    );
}

/// The documented example, adapted (local addresses, a real key), runs.
#[tokio::test]
async fn config_doc_example_adapted_runs() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("gateway-keys.jsonl");
    let private = Jwk::generate(Algorithm::Ed25519).expect("key");
    let x = private.x.clone().expect("x");
    let mut cfg = GatewayConfig::from_toml(&doc_example()).expect("the example parses");
    // Adapted: local addresses, a temporary key file, a real key, no remote issuer.
    cfg.listen = "127.0.0.1:0".into();
    cfg.api_key_file = Some(keys);
    cfg.upstreams[0].url = up.url();
    cfg.service_accounts[0].jwk["x"] = json!(x);
    cfg.oidc_issuers.clear();
    // The example's memory store is a relative path: keep it in the temporary directory.
    if let Some(m) = cfg.memory.as_mut() {
        m.store = format!("sqlite:{}", dir.path().join("memory.db").display());
    }
    let gw = start_gateway(cfg, Some(&up)).await;
    let resp = http()
        .post(format!("http://{}/api/chat", gw.addr))
        .body("{}")
        .send()
        .await
        .expect("send");
    let (headers, _) = expect_error(resp, 401, "unauthenticated").await;
    assert!(
        headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains(
            "resource_metadata=\"https://gateway.example/.well-known/oauth-protected-resource\""
        ),
        "public_url is used in the hint"
    );
    let meta = http()
        .get(format!(
            "http://{}/.well-known/oauth-protected-resource",
            gw.addr
        ))
        .send()
        .await
        .expect("metadata")
        .json_body()
        .await;
    assert_eq!(meta["resource"], "https://gateway.example");
}

#[tokio::test]
async fn start_refuses_bad_configurations() {
    let mut no_upstream = config("http://127.0.0.1:1");
    no_upstream.upstreams.clear();
    assert!(attach_gateway::start(no_upstream).await.is_err());
    let mut bad_url = config("not a url");
    bad_url.upstreams[0].url = "not a url".into();
    assert!(attach_gateway::start(bad_url).await.is_err());
    let private = Jwk::generate(Algorithm::Ed25519).expect("key");
    let mut private_key = config("http://127.0.0.1:1");
    private_key.service_accounts = vec![ServiceAccount {
        name: "x".into(),
        tenant: None,
        jwk: serde_json::to_value(&private).expect("json"),
    }];
    assert!(
        attach_gateway::start(private_key).await.is_err(),
        "a private JWK as a service account key is refused"
    );
}

/// Opens `n` connections at once to `addr` (which does not accept) and counts those the
/// kernel completed within `wait`.
async fn connections_completed(addr: std::net::SocketAddr, n: usize, wait: Duration) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        if let Ok(Some(stream)) = t.await {
            // Kept open until all are counted, so each holds its place in the queue.
            done.push(stream);
        }
    }
    done.len()
}

#[tokio::test]
async fn listener_queues_as_many_connections_as_its_backlog_before_accept() {
    // Nobody accepts: the kernel completes backlog + 1 connections and drops the SYNs of
    // the rest (they would wait for retransmissions, 1 s and more).
    let l = attach_gateway::bind("127.0.0.1:0", 200).await.unwrap();
    let addr = l.local_addr().unwrap();
    assert_eq!(
        connections_completed(addr, 150, Duration::from_secs(10)).await,
        150
    );
    let small = attach_gateway::bind("127.0.0.1:0", 4).await.unwrap();
    let addr = small.local_addr().unwrap();
    let n = connections_completed(addr, 40, Duration::from_millis(1500)).await;
    assert!(
        (1..=5).contains(&n),
        "{n} of 40 completed with a backlog of 4"
    );
}

#[tokio::test]
async fn bind_resolves_names_and_reports_bad_addresses() {
    let l = attach_gateway::bind("localhost:0", 16).await.unwrap();
    assert!(l.local_addr().unwrap().ip().is_loopback());
    assert!(attach_gateway::bind("not an address", 16).await.is_err());
}

/// A gateway allowed one upstream connection, and a stream holding it: its first chunk
/// read, the rest held by the upstream until the test releases it.
async fn one_connection_held(first_byte_timeout_secs: u64) -> (KeyEnv, reqwest::Response) {
    let env = KeyEnv::start(vec![tenant_rule("acme")], |c| {
        c.max_upstream_connections = 1;
        c.first_byte_timeout_secs = first_byte_timeout_secs;
    })
    .await;
    let mut held = env.chat(&env.key, chat_body("llama3.1", true)).await;
    assert_eq!(held.status(), 200);
    held.chunk().await.expect("first chunk").expect("a chunk");
    (env, held)
}

/// The gateway's `/metrics` line for `series`, e.g. `attach_upstream_waiting`, of the
/// test upstream.
async fn upstream_gauge(env: &KeyEnv, series: &str) -> String {
    let text = http()
        .get(env.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    let prefix = format!("{series}{{upstream=\"test\"}} ");
    let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
    line.unwrap_or_else(|| panic!("no {prefix} in {text}"))
        .to_owned()
}

/// Waits (at most 10 s) until the gauge reads `value`.
async fn until_gauge(env: &KeyEnv, series: &str, value: &str) {
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while upstream_gauge(env, series).await != value {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(reached.await.is_ok(), "{series} never read {value}");
}

/// Lets the held stream go and reads it to its end.
async fn finish(env: &KeyEnv, mut held: reqwest::Response) {
    env.up.state.release.notify_one();
    while held.chunk().await.expect("rest of the stream").is_some() {}
}

#[tokio::test]
async fn a_stream_holds_its_upstream_connection_and_a_request_past_the_bound_is_503() {
    let (env, held) = one_connection_held(1).await;
    assert_eq!(upstream_gauge(&env, "attach_upstream_in_flight").await, "1");
    // Another request waits for the connection, and at the first-byte timeout is
    // refused without reaching the model server.
    let (headers, _) = expect_error(
        env.chat(&env.key, chat_body("llama3.1", false)).await,
        503,
        "upstream_saturated",
    )
    .await;
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        env.up.hits(),
        1,
        "the refused request never reached upstream"
    );
    // The stream ends; its connection serves the next request.
    finish(&env, held).await;
    let resp = env.chat(&env.key, chat_body("llama3.1", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.up.hits(), 2);
}

#[tokio::test]
async fn a_request_waiting_for_a_connection_is_served_when_one_frees() {
    let (env, held) = one_connection_held(10).await;
    let waiting = tokio::spawn({
        let (url, key) = (env.url("/v1/chat/completions"), env.key.clone());
        async move {
            http()
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(chat_body("llama3.1", false))
                .send()
                .await
                .expect("POST chat")
        }
    });
    // Until the stream ends, the second request is queued in the gateway.
    until_gauge(&env, "attach_upstream_waiting", "1").await;
    assert!(!waiting.is_finished());
    assert_eq!(env.up.hits(), 1);
    finish(&env, held).await;
    let resp = waiting.await.expect("task");
    assert_eq!(resp.status(), 200);
    assert_eq!(env.up.hits(), 2);
}

#[tokio::test]
async fn a_client_leaving_a_stream_frees_its_upstream_connection() {
    let (env, held) = one_connection_held(3).await;
    // The upstream still holds its stream (until released), but the gateway dropped it
    // with the client: the next request gets the connection.
    drop(held);
    let resp = env.chat(&env.key, chat_body("llama3.1", false)).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.expect("body");
    assert_eq!(env.up.hits(), 2);
    until_gauge(&env, "attach_upstream_in_flight", "0").await;
}

#[tokio::test]
async fn upstream_connections_out_of_range_are_a_configuration_error() {
    for n in [0, usize::MAX] {
        let mut cfg = config("http://127.0.0.1:9");
        cfg.max_upstream_connections = n;
        let err = attach_gateway::start(cfg).await.unwrap_err();
        assert!(
            err.to_string().contains("max_upstream_connections"),
            "{n}: {err}"
        );
    }
}
