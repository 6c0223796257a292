//! The registry through the CLI, over real sockets: `oba registry serve` on a fresh SQLite
//! file, `login` (token stored 0600), `publish`, then `oba request` with the printed
//! Signature-Agent verified by a website that resolves keys through the registry;
//! agents and keys managed with `oba registry agents|keys`, rotation and retirement.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

#[path = "../../crates/webbotauth/examples/verifying_server.rs"]
#[allow(dead_code)]
mod verifying_server;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn oba(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(args)
        .env("OBA_CONFIG_DIR", cfg)
        .env_remove("OBA_REGISTRY_TOKEN")
        .output()
        .expect("run oba")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout {:?} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// `oba registry serve` on a fresh SQLite file; returns the server, its URL and the
/// admin token it printed once.
fn registry(dir: &Path) -> (Server, String, String) {
    let db = format!("sqlite://{}", dir.join("registry.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_oba"))
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--db", &db])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let second = lines.next().unwrap().unwrap();
    let token = second
        .split_whitespace()
        .find(|w| w.starts_with("oba_rt_"))
        .expect("admin token printed once")
        .to_owned();
    (Server(child), url, token)
}

#[test]
fn publish_then_request_is_verified_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    let (_srv, url, token) = registry(dir.path());
    let login = oba(
        &cfg,
        &["registry", "login", "--url", &url, "--token", &token],
    );
    assert_eq!(
        login.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cfg.join("registry.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A wrong token is refused at login.
    assert_eq!(
        oba(
            &cfg,
            &["registry", "login", "--url", &url, "--token", "oba_rt_nope"]
        )
        .status
        .code(),
        Some(1)
    );

    let key = dir.path().join("bot.jwk");
    let out = oba(
        &cfg,
        &[
            "publish",
            "--name",
            "Test Bot",
            "--key-out",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = json(&out);
    let sa = published["signature_agent"].as_str().unwrap().to_owned();
    assert!(sa.starts_with(&url) && sa.ends_with("/jwks.json"), "{sa}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let site = format!("http://{}/", listener.local_addr().unwrap());
    rt.spawn(verifying_server::serve(listener, true));

    let out = oba(
        &cfg,
        &[
            "request",
            "--key",
            key.to_str().unwrap(),
            "--signature-agent",
            &sa,
            &site,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let body = json(&out);
    assert_eq!(body["outcome"], "verified");
    assert_eq!(body["thumbprint"], published["thumbprint"]);

    // Agents and keys through the CLI.
    let id = published["agent_id"].as_str().unwrap();
    let list = json(&oba(&cfg, &["registry", "agents", "list"]));
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
    let shown = json(&oba(&cfg, &["registry", "agents", "show", id]));
    assert_eq!(shown["name"], "Test Bot");
    // Rotation by overlap: add a second key, then retire the first.
    let key2 = dir.path().join("bot2.jwk");
    assert_eq!(
        oba(&cfg, &["keygen", "--out", key2.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let added = oba(
        &cfg,
        &[
            "registry",
            "keys",
            "add",
            "--agent",
            id,
            "--key",
            key2.to_str().unwrap(),
        ],
    );
    assert_eq!(
        added.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let keys = json(&oba(&cfg, &["registry", "keys", "list", "--agent", id]));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    let old = published["thumbprint"].as_str().unwrap();
    assert_eq!(
        oba(&cfg, &["registry", "keys", "retire", "--agent", id, old])
            .status
            .code(),
        Some(0)
    );
    let jwks: serde_json::Value = rt.block_on(async {
        serde_json::from_str(&reqwest::get(&sa).await.unwrap().text().await.unwrap()).unwrap()
    });
    let published_kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(published_kids.len(), 1);
    assert_ne!(
        published_kids[0], old,
        "the retired key left the published set"
    );
    let keys = json(&oba(&cfg, &["registry", "keys", "list", "--agent", id]));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "history kept");
    // Adding the same key again: the API's conflict, exit 1.
    let again = oba(
        &cfg,
        &[
            "registry",
            "keys",
            "add",
            "--agent",
            id,
            "--key",
            key2.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("conflict"));
    assert_eq!(
        oba(&cfg, &["registry", "agents", "delete", id])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        oba(&cfg, &["registry", "agents", "show", id]).status.code(),
        Some(1)
    );
}

#[test]
fn registry_commands_without_credentials_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = oba(&dir.path().join("none"), &["registry", "agents", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oba registry login"));
}
