//! The gateway's audit trail end to end: authentication decisions (accepted and
//! rejected), policy denials and memory erasures are appended to a hash-chained file
//! whose checkpoints are signed with the stamp key; the file verifies with the key the
//! gateway publishes, holds no prompt or reply, and an altered record is named.

use attach_gateway::config::{AuditConfig, MemoryConfig, Rule, Upstream, UpstreamKind};
use attach_gateway::GatewayConfig;
use oba_httpsig::jwk::JwkSet;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_chained_signed_and_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"choices":[{"message":{"role":"assistant","content":"SECRET-REPLY"}}]}"#,
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let keys = dir.path().join("keys.jsonl");
    let alice = attach_gateway::apikeys::create(&keys, "alice", Some("acme"), 0).unwrap();
    let bob = attach_gateway::apikeys::create(&keys, "bob", Some("other"), 0).unwrap();
    let trail = dir.path().join("audit.jsonl");
    let gw = attach_gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "up".into(),
            url: upstream,
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(keys),
        policy: vec![Rule {
            tenant: Some("acme".into()),
            ..Rule::default()
        }],
        memory: Some(MemoryConfig::new(&format!(
            "sqlite:{}",
            dir.path().join("m.db").display()
        ))),
        audit: Some(AuditConfig::new(trail.to_str().unwrap())),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", gw.addr);
    let jwks = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "SECRET-PROMPT"}]})
        .to_string();
    let ok = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(chat.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let accepted_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    ok.text().await.unwrap();
    let bad = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("oba_nope")
        .body(chat.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let denied = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&bob)
        .body(chat.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let erased = c
        .delete(format!("{base}/attach/v1/memory?all=true"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    for (path, body) in [
        ("spaces", json!({"name": "team"})),
        (
            "spaces/team/members",
            json!({"principal": "key:carol", "right": "read"}),
        ),
    ] {
        let r = c
            .post(format!("{base}/attach/v1/memory/{path}"))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    gw.shutdown(std::time::Duration::from_secs(5)).await;

    // The trail verifies with the published stamp key, and ends signed.
    let mut trusted = oba_audit::TrustedKeys::new();
    assert_eq!(trusted.add_jwk_set(&JwkSet::parse(&jwks).unwrap()), 1);
    let report = oba_audit::verify_file(&trail, &trusted).unwrap();
    assert!(report.is_intact(), "{}", report.summary());
    assert_eq!(
        report.unsigned_tail, 0,
        "shutdown writes a final checkpoint"
    );
    assert!(report.checkpoints >= 1);

    let text = std::fs::read_to_string(&trail).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "auth.accepted",
        "auth.rejected",
        "policy.denied",
        "memory.erased",
        "checkpoint",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let member = records
        .iter()
        .find(|r| r["kind"] == "space.member_changed")
        .expect("adding a member is audited");
    assert_eq!(
        member["details"],
        json!({"space": "team", "member": "key:carol", "right": "read"})
    );
    let accepted = records
        .iter()
        .find(|r| r["kind"] == "auth.accepted" && r["request_id"] == accepted_id.as_str())
        .unwrap();
    assert_eq!(accepted["actor"], "key:alice");
    assert_eq!(accepted["tenant"], "acme");
    assert_eq!(accepted["auth_method"], "api-key");
    assert_eq!(
        accepted["hashes"]["body"],
        oba_audit::sha256_hex(chat.as_bytes())
    );
    let rejected = records
        .iter()
        .find(|r| r["kind"] == "auth.rejected")
        .unwrap();
    assert_eq!(rejected["reason"], "unknown_api_key");
    let denial = records
        .iter()
        .find(|r| r["kind"] == "policy.denied")
        .unwrap();
    assert_eq!(
        (denial["actor"].as_str(), denial["tenant"].as_str()),
        (Some("key:bob"), Some("other"))
    );
    // Who, what, when and hashes — never the conversation or the credential.
    for secret in ["SECRET-PROMPT", "SECRET-REPLY", "oba_nope", alice.as_str()] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the audit trail"
        );
    }

    // Altering one record is named.
    let target = records
        .iter()
        .position(|r| r["kind"] == "policy.denied")
        .unwrap();
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == target {
                l.replace("key:bob", "key:eve")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&trail, tampered.join("\n") + "\n").unwrap();
    let report = oba_audit::verify_file(&trail, &trusted).unwrap();
    let seq = records[target]["seq"].as_u64().unwrap();
    assert_eq!(
        report.problem,
        Some(oba_audit::Problem::Altered { seq }),
        "{}",
        report.summary()
    );
}

/// Keys created or revoked with `oba gateway keys` take effect while the gateway runs,
/// and each change is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_changes_take_effect_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let app = axum::Router::new().route("/v1/models", axum::routing::get(|| async { "{}" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let keys = dir.path().join("keys.jsonl");
    std::fs::write(&keys, "").unwrap();
    let trail = dir.path().join("audit.jsonl");
    let gw = attach_gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![Upstream {
            name: "up".into(),
            url: upstream,
            kind: UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(keys.clone()),
        policy: vec![Rule::default()],
        audit: Some(AuditConfig::new(trail.to_str().unwrap())),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/v1/models", gw.addr);
    let status = |key: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let wait_for = |key: String, want: u16| {
        let status = &status;
        async move {
            for _ in 0..100 {
                if status(key.clone()).await == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("never {want}");
        }
    };
    let key = attach_gateway::apikeys::create(&keys, "ci", Some("acme"), 0).unwrap();
    wait_for(key.clone(), 200).await;
    attach_gateway::apikeys::revoke(&keys, "ci").unwrap();
    wait_for(key.clone(), 401).await;
    // A key file broken by hand is refused; the keys in force stay.
    let other = attach_gateway::apikeys::create(&keys, "other", None, 0).unwrap();
    wait_for(other.clone(), 200).await;
    // The watcher reports each refused reload (a partial write seen earlier may have
    // been one): wait for one more than before instead of guessing a time.
    let metrics = format!("http://{}/metrics", gw.addr);
    let refused = || async {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("attach_api_key_file_reloads_total{outcome=\"refused\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = refused().await;
    std::fs::write(&keys, "not json\n").unwrap();
    let mut seen = false;
    for _ in 0..100 {
        if refused().await > before {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "the broken key file was never refused");
    assert_eq!(
        status(other.clone()).await,
        200,
        "the last good keys stay in force"
    );
    // A removed key file revokes every key (fail closed).
    std::fs::remove_file(&keys).unwrap();
    wait_for(other, 401).await;
    gw.shutdown(std::time::Duration::from_secs(5)).await;

    let text = std::fs::read_to_string(&trail).unwrap();
    let changes: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.starts_with("key.")))
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("key.created", "key:ci"),
        ("key.revoked", "key:ci"),
        ("key.created", "key:other"),
        ("key.revoked", "key:other"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(changes, want);
    assert!(!text.contains(&key), "never the key itself");
}
