//! `oba up` end to end: registry and gateway in one process; log in with the admin token
//! it wrote, publish a bot, and send a Web Bot Auth signed chat request through the
//! gateway to a loopback model server, which receives the gateway's signed stamp.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[test]
fn up_publish_and_a_signed_request_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A model server that records the stamp.
    let seen: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let s = seen.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |h: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let get = |n: &str| {
                    h.get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let signed = get("signature-input").contains("tag=\"attach-gateway\"");
                s.lock().unwrap().push((
                    get("x-attach-auth-method"),
                    get("x-attach-agent"),
                    signed,
                ));
                "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"hello\"}}]}"
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });

    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oba"))
        .args([
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--upstream",
            &upstream,
            "--registry-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let registry = lines
        .next()
        .unwrap()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let gateway = lines
        .next()
        .unwrap()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();

    let cfg = dir.path().join("cfg");
    let oba = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_oba"))
            .args(args)
            .env("OBA_CONFIG_DIR", &cfg)
            .output()
            .unwrap()
    };
    assert_eq!(
        oba(&["registry", "login", "--url", &registry, "--token", &token])
            .status
            .code(),
        Some(0)
    );
    let key = dir.path().join("bot.jwk");
    let published = oba(&[
        "publish",
        "--name",
        "my-bot",
        "--key-out",
        key.to_str().unwrap(),
    ]);
    assert_eq!(
        published.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&published.stdout).unwrap();
    let sa = p["signature_agent"].as_str().unwrap();

    let body = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#;
    let out = oba(&[
        "request",
        "--key",
        key.to_str().unwrap(),
        "--signature-agent",
        sa,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &format!("{gateway}/v1/chat/completions"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "web-bot-auth");
    assert_eq!(seen[0].1, sa);
    assert!(seen[0].2, "the gateway signed its stamp");
    // Without credentials: refused by the gateway, never reaching the model server.
    let out = oba(&[
        "request",
        "--key",
        dir.path().join("none.jwk").to_str().unwrap(),
        &format!("{gateway}/v1/chat/completions"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing key file is a usage error"
    );
    let _ = child.kill();
    let _ = child.wait();
}
