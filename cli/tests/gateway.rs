//! `oba gateway` end to end: keys created (shown once, hashed in the file), the gateway
//! started from flags in front of a loopback upstream, a request with the key proxied,
//! one without refused, and a revoked key refused after restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

struct Server(Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// The log lines the gateway wrote so far (after the first).
    fn logs(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }
}

fn oba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .output()
        .expect("run oba")
}

fn gateway(upstream: &str, keys: &Path) -> (Server, String) {
    gateway_with(upstream, keys, &[])
}

fn gateway_with(upstream: &str, keys: &Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oba"))
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--api-key-file",
            keys.to_str().unwrap(),
            "--allow-authenticated",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Keep draining the gateway's log so it never blocks on a full pipe.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            eprintln!("gateway: {l}");
            sink.lock().unwrap().push(l);
        }
    });
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address printed")
        .to_owned();
    (Server(child, logs), url)
}

#[test]
fn keys_and_a_proxied_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let f = file.to_str().unwrap();
    let out = oba(&[
        "gateway", "keys", "create", "ci", "--tenant", "acme", "--file", f,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("oba_"));
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains(&key),
        "only the hash is stored"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&oba(&["gateway", "keys", "list", "--file", f]).stdout).unwrap();
    assert_eq!(list["keys"][0]["name"], "ci");
    assert!(!list.to_string().contains(&key));
    assert_eq!(
        oba(&["gateway", "keys", "create", "ci", "--file", f])
            .status
            .code(),
        Some(2),
        "duplicate name"
    );

    // A loopback upstream that reports the stamp it received.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(|h: axum::http::HeaderMap| async move {
            let p = h
                .get("x-attach-principal")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let signed = h.contains_key("signature-input") && h.contains_key("signature");
            format!("{{\"principal\":\"{p}\",\"stamped\":{signed}}}")
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });

    let (gw, url) = gateway(&upstream, &file);
    rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .get(format!("{url}/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["principal"], "key:ci");
        assert_eq!(v["stamped"], true);
        let r = c.get(format!("{url}/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("www-authenticate").is_some());
    });
    drop(gw);

    assert_eq!(
        oba(&["gateway", "keys", "revoke", "ci", "--file", f])
            .status
            .code(),
        Some(0)
    );
    let (_gw, url) = gateway(&upstream, &file);
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{url}/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "revoked");
    });
}

/// `oba gateway --memory` records chat turns; `oba memory ls|search|rm` reads and deletes
/// them with the caller's key, and only the caller's.
#[test]
fn memory_recorded_listed_searched_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let f = file.to_str().unwrap();
    let key = |name: &str| {
        let out = oba(&["gateway", "keys", "create", name, "--file", f]);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (alice, bob) = (key("alice"), key("bob"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"choices":[{"message":{"role":"assistant","content":"The otter is called Pebble."}}]}"#,
            )
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    let store = format!("sqlite:{}", dir.path().join("memory.db").display());
    let (_gw, url) = gateway_with(&upstream, &file, &["--memory", &store]);
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&alice)
            .header("x-attach-session", "pets")
            .header("content-type", "application/json")
            .body(r#"{"model":"m","messages":[{"role":"user","content":"Name my otter"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let mem = |token: &str, args: &[&str]| {
        let mut all = vec!["memory"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--gateway", &url, "--token", token]);
        oba(&all)
    };
    // The write is off the request path: poll.
    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        let out = mem(&alice, &["ls", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        listed = serde_json::from_slice(&out.stdout).unwrap();
        if listed["turns"].as_array().is_some_and(|t| !t.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let turn = &listed["turns"][0];
    assert_eq!(turn["user"], "Name my otter");
    assert_eq!(turn["assistant"], "The otter is called Pebble.");
    assert_eq!(turn["session"], "key:alice/pets");
    let id = turn["id"].as_str().unwrap().to_owned();

    let out = mem(&alice, &["search", "otter Pebble"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&id) && text.contains("assistant: The otter is called Pebble."),
        "{text}"
    );
    // Bob sees nothing of Alice's, and cannot delete it.
    let out = mem(&bob, &["ls"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "no turns\n");
    let out = mem(&bob, &["rm", &id]);
    assert_eq!(out.status.code(), Some(1), "not found for bob");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    // No credential: 401, exit 2.
    let out = oba(&["memory", "ls", "--gateway", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // Alice deletes it.
    let out = mem(&alice, &["rm", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deleted"], 1);
    let out = mem(&alice, &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["turns"], serde_json::json!([]));
    // rm needs a selector.
    assert_eq!(mem(&alice, &["rm"]).status.code(), Some(2));
}

/// `oba gateway --metering` records usage; `oba usage` reports it as a table, CSV or JSON.
#[test]
fn usage_recorded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let f = file.to_str().unwrap();
    let out = oba(&[
        "gateway", "keys", "create", "ci", "--tenant", "acme", "--file", f,
    ]);
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"choices":[{"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":12,"completion_tokens":30}}"#,
            )
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    let ledger = format!("sqlite:{}", dir.path().join("usage.db").display());
    let (_gw, url) = gateway_with(&upstream, &file, &["--metering", &ledger]);
    rt.block_on(async {
        for model in ["llama3", "llama3", "qwen, large"] {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"model":"{model}","messages":[]}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    let usage = |args: &[&str]| {
        let mut all = vec!["usage", "--gateway", &url, "--token", &key];
        all.extend_from_slice(args);
        oba(&all)
    };
    // Records are written off the request path: poll.
    let mut csv = String::new();
    for _ in 0..100 {
        let out = usage(&["--group-by", "model", "--format", "csv"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        csv = String::from_utf8(out.stdout).unwrap();
        if csv.lines().count() == 3 && csv.contains(",2,") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        csv,
        "group,requests,prompt_tokens,completion_tokens,estimated,errors,cancelled\n\
         llama3,2,24,60,0,0,0\n\
         \"qwen, large\",1,12,30,0,0,0\n"
    );
    let table = String::from_utf8(usage(&["--group-by", "principal"]).stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("group") && lines[0].ends_with("cancelled"));
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells, ["key:ci", "3", "36", "90", "0", "0", "0"]);
    let json: serde_json::Value =
        serde_json::from_slice(&usage(&["--format", "json", "--since", "0"]).stdout).unwrap();
    assert_eq!(json["rows"][0]["requests"], 3);
    let out = oba(&["usage", "--gateway", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// `--log-format json`: one JSON object per line, carrying the request's id and trace id.
#[test]
fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    std::fs::write(&file, "").unwrap();
    let (gw, url) = gateway_with("http://127.0.0.1:9", &file, &["--log-format", "json"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rid = rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{url}/v1/models"))
            .bearer_auth("oba_not_a_key")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        r.headers()["x-request-id"].to_str().unwrap().to_owned()
    });
    let mut line = None;
    for _ in 0..100 {
        line = gw
            .logs()
            .into_iter()
            .find(|l| l.contains("authentication refused"));
        if line.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let line = line.expect("a log line for the refusal");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["span"]["request_id"], rid.as_str(), "{line}");
    assert_eq!(v["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown_api_key"),
        "{line}"
    );
    assert!(!line.contains("oba_not_a_key"), "no credentials in logs");
}

/// `--otlp-endpoint` on an `oba` built without the `otel` feature is refused (exit 2,
/// before anything starts or is created), never ignored.
#[cfg(not(feature = "otel"))]
#[test]
fn otlp_endpoint_without_the_otel_feature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gateway = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--otlp-endpoint",
        "http://127.0.0.1:4318",
    ];
    let up = [
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--otlp-endpoint",
        "http://127.0.0.1:4318",
    ];
    for args in [&gateway[..], &up[..]] {
        let out = oba(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--otlp-endpoint") && err.contains("--features otel"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !data.exists(),
        "up stopped before creating its data directory"
    );
}

/// With the `otel` feature, an endpoint that is not an http(s) URL is refused (exit 2)
/// with where it came from.
#[cfg(feature = "otel")]
#[test]
fn a_bad_otlp_endpoint_is_refused() {
    let out = oba(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--otlp-endpoint",
        "grpc://127.0.0.1:4317",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("OTLP endpoint from --otlp-endpoint"), "{err}");
}
