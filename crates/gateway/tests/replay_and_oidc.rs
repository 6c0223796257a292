//! Replay protection shared by two gateway replicas through Redis (`OBA_TEST_REDIS_URL`),
//! and OIDC bearer tokens from a test issuer (discovery + JWKS) over real sockets.

use std::sync::{Arc, Mutex};

use attach_gateway::config::{OidcIssuerConfig, Rule, ServiceAccount, Upstream, UpstreamKind};
use attach_gateway::GatewayConfig;
use base64::Engine;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Component, Derived, Message, SignatureParams, Signer};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

type Seen = Arc<Mutex<Vec<String>>>;

/// A model server that records the principal of each stamped request it gets.
async fn upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(move |h: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let p = h
                    .get("x-attach-principal")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                s.lock().unwrap().push(p);
                "{\"data\":[]}"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

fn base_config(upstream: &str) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "up".into(),
            url: upstream.into(),
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        policy: vec![Rule::default()],
        ..GatewayConfig::default()
    }
}

/// A GET /v1/models signed by `key` as service account `name`, for the gateway at `addr`.
fn signed_request(
    key: &oba_httpsig::SigningKey,
    name: &str,
    addr: &str,
    created: i64,
) -> Vec<(String, String)> {
    let msg = Message::request("GET", "/v1/models")
        .unwrap()
        .with_scheme("http")
        .with_header("Host", addr);
    let params = SignatureParams::new(vec![
        Component::derived(Derived::Method),
        Component::derived(Derived::Authority),
        Component::derived(Derived::Path),
    ])
    .unwrap()
    .with_created(created)
    .unwrap()
    .with_keyid(name)
    .unwrap()
    .with_nonce(&oba_httpsig::random_nonce())
    .unwrap();
    let sig = oba_httpsig::sign(&msg, None, "sig1", params, key).unwrap();
    vec![
        ("signature-input".into(), sig.signature_input()),
        ("signature".into(), sig.signature()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_refused_by_another_replica_sharing_redis() {
    let Ok(redis) = std::env::var("OBA_TEST_REDIS_URL") else {
        println!("skipped: OBA_TEST_REDIS_URL not set");
        return;
    };
    let (up, seen) = upstream().await;
    let jwk = Jwk::generate(Algorithm::Ed25519).unwrap();
    let key = jwk.signing_key(None).unwrap();
    let prefix = format!("oba:test:{}:", oba_httpsig::random_nonce());
    let config = || {
        let mut c = base_config(&up);
        c.service_accounts.push(ServiceAccount {
            name: "batch".into(),
            tenant: Some("acme".into()),
            jwk: serde_json::to_value(jwk.public().unwrap()).unwrap(),
        });
        c.redis_url = Some(redis.clone());
        c.redis_prefix = prefix.clone();
        c
    };
    let a = attach_gateway::start(config()).await.unwrap();
    let b = attach_gateway::start(config()).await.unwrap();
    // Both replicas answer for the same public authority (a load balancer's).
    let authority = "gateway.test";
    let headers = signed_request(&key, "batch", authority, now());
    let send = |addr: std::net::SocketAddr, headers: Vec<(String, String)>| async move {
        let mut r = reqwest::Client::new()
            .get(format!("http://{addr}/v1/models"))
            .header("host", authority);
        for (n, v) in headers {
            r = r.header(n, v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or_default();
        (status, body)
    };
    let (s1, _) = send(a.addr, headers.clone()).await;
    assert_eq!(s1, 200);
    let (s2, body) = send(b.addr, headers.clone()).await;
    assert_eq!(s2, 401, "{body}");
    assert_eq!(body["error"]["code"], "replay");
    // A fresh signature goes through either replica.
    let (s3, _) = send(b.addr, signed_request(&key, "batch", authority, now())).await;
    assert_eq!(s3, 200);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["service:batch", "service:batch"]
    );
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_closed_at_start() {
    let mut c = base_config("http://127.0.0.1:9");
    c.redis_url = Some("redis://127.0.0.1:1/".into());
    assert!(attach_gateway::start(c).await.is_err());
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwt(key: &oba_httpsig::SigningKey, alg: &str, kid: &str, claims: serde_json::Value) -> String {
    let h = b64(serde_json::json!({ "alg": alg, "kid": kid, "typ": "JWT" })
        .to_string()
        .as_bytes());
    let p = b64(claims.to_string().as_bytes());
    let sig = key.sign(format!("{h}.{p}").as_bytes()).unwrap();
    format!("{h}.{p}.{}", b64(&sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_bearer_tokens_from_a_test_issuer() {
    // The issuer: discovery + JWKS on loopback.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", l.local_addr().unwrap());
    let jwk = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let kid = jwk.kid.clone().unwrap();
    let public = serde_json::to_value(jwk.public().unwrap()).unwrap();
    let iss2 = issuer.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let iss = iss2.clone();
                async move {
                    axum::Json(
                        serde_json::json!({ "issuer": iss, "jwks_uri": format!("{iss}/jwks") }),
                    )
                }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let k = public.clone();
                async move { axum::Json(serde_json::json!({ "keys": [k] })) }
            }),
        );
    tokio::spawn(async move { axum::serve(l, app).await });

    let (up, seen) = upstream().await;
    let mut c = base_config(&up);
    c.oidc_issuers.push(OidcIssuerConfig {
        issuer: issuer.clone(),
        audience: "attach".into(),
        required_scopes: vec![],
        tenant_claim: Some("org".into()),
        required_claims: serde_json::json!({ "org": "acme" })
            .as_object()
            .unwrap()
            .clone(),
    });
    c.oidc_allow_http = true;
    let gw = attach_gateway::start(c).await.unwrap();
    let key = jwk.signing_key(None).unwrap();
    let t = now();
    let claims = |over: serde_json::Value| {
        let mut c = serde_json::json!({ "iss": issuer, "aud": "attach", "sub": "alice", "email": "alice@example.com", "org": "acme", "exp": t + 300, "nbf": t - 10 });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let call = |token: String| {
        let url = format!("http://{}/v1/models", gw.addr);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
            (status, body)
        }
    };
    let (s, _) = call(jwt(&key, "ES256", &kid, claims(serde_json::json!({})))).await;
    assert_eq!(s, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &format!("user:{issuer}#alice")
    );
    // Client credentials: a service principal.
    let (s, _) = call(jwt(
        &key,
        "ES256",
        &kid,
        claims(serde_json::json!({ "sub": "svc-1", "client_id": "svc-1", "email": null })),
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &format!("client:{issuer}#svc-1")
    );
    // Rejections.
    for (name, token, code) in [
        (
            "wrong aud",
            jwt(
                &key,
                "ES256",
                &kid,
                claims(serde_json::json!({ "aud": "other" })),
            ),
            "wrong_audience",
        ),
        (
            "expired",
            jwt(
                &key,
                "ES256",
                &kid,
                claims(serde_json::json!({ "exp": t - 600 })),
            ),
            "expired",
        ),
        (
            "not yet valid",
            jwt(
                &key,
                "ES256",
                &kid,
                claims(serde_json::json!({ "nbf": t + 600 })),
            ),
            "not_yet_valid",
        ),
        (
            "unknown issuer",
            jwt(
                &key,
                "ES256",
                &kid,
                claims(serde_json::json!({ "iss": "https://evil.example" })),
            ),
            "unknown_issuer",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(claims(serde_json::json!({})).to_string().as_bytes())
            ),
            "algorithm_not_allowed",
        ),
        (
            "HS256",
            jwt(&key, "HS256", &kid, claims(serde_json::json!({}))),
            "algorithm_not_allowed",
        ),
        (
            "another key",
            jwt(
                &Jwk::generate(Algorithm::EcdsaP256Sha256)
                    .unwrap()
                    .signing_key(None)
                    .unwrap(),
                "ES256",
                &kid,
                claims(serde_json::json!({})),
            ),
            "bad_signature",
        ),
    ] {
        let (s, body) = call(token).await;
        assert_eq!(s, 401, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}");
    }
    // Metrics: bounded labels, the failures by reason.
    let m = reqwest::get(format!("http://{}/metrics", gw.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            r#"attach_requests_total{route="/v1/models",status="200",auth_method="oidc"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"attach_auth_failures_total{reason="expired"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"attach_auth_failures_total{reason="algorithm_not_allowed"} 2"#),
        "{m}"
    );
    assert!(!m.contains("alice"), "no per-user labels");
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_routes_are_proxied_and_others_refused() {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/custom",
        axum::routing::get(move || {
            let s = s.clone();
            async move {
                s.lock().unwrap().push("custom".into());
                "{}"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let key = attach_gateway::apikeys::create(&file, "ci", None, now()).unwrap();
    let gw = attach_gateway::start(GatewayConfig {
        api_key_file: Some(file),
        extra_routes: vec!["/v1/custom".into()],
        ..base_config(&up)
    })
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let r = c
        .get(format!("http://{}/v1/custom", gw.addr))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("http://{}/v1/other", gw.addr))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(seen.lock().unwrap().len(), 1);
    gw.stop();
}
