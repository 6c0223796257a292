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

/// Waits up to 10 s for the server to exit by itself.
fn wait_exit(srv: &mut Server) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = srv.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the registry did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The registry's audit trail through `oba audit verify --db`: key changes made with the
/// CLI verify against the published key (by URL) and the key file; Ctrl-C signs the tail
/// (`--require-signed-tail`); an exported, altered record is named.
#[test]
fn the_registry_audit_trail_verifies_with_oba_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    let (mut srv, url, token) = registry(dir.path());
    let db = format!("sqlite://{}", dir.path().join("registry.db").display());
    let ok = |o: &Output| {
        assert_eq!(
            o.status.code(),
            Some(0),
            "stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    ok(&oba(
        &cfg,
        &["registry", "login", "--url", &url, "--token", &token],
    ));
    let key = dir.path().join("bot.jwk");
    let out = oba(
        &cfg,
        &[
            "publish",
            "--name",
            "Audited",
            "--key-out",
            key.to_str().unwrap(),
        ],
    );
    ok(&out);
    let published = json(&out);
    let (id, kid) = (
        published["agent_id"].as_str().unwrap(),
        published["thumbprint"].as_str().unwrap(),
    );
    ok(&oba(
        &cfg,
        &["registry", "keys", "retire", "--agent", id, kid],
    ));

    // bootstrap token, agent, key added, key retired: 4 records, not yet signed.
    let keys_url = format!("{url}/.well-known/audit-keys.json");
    let out = oba(&cfg, &["audit", "verify", "--db", &db, "--jwks", &keys_url]);
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 4 records, 0 checkpoints, 4 unsigned at the end\n"
    );
    // The private key file next to the database verifies too (its public half is used).
    let key_file = dir.path().join("registry-audit.jwk");
    let out = oba(
        &cfg,
        &[
            "audit",
            "verify",
            "--db",
            &db,
            "--key",
            key_file.to_str().unwrap(),
            "--json",
        ],
    );
    ok(&out);
    let report = json(&out);
    assert_eq!(report["last_seq"], 4);
    assert_eq!(report["intact"], true);

    // Ctrl-C: the registry stops and signs what is unsigned.
    let pid = srv.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(wait_exit(&mut srv).success());
    let out = oba(
        &cfg,
        &[
            "audit",
            "verify",
            "--db",
            &db,
            "--key",
            key_file.to_str().unwrap(),
            "--require-signed-tail",
        ],
    );
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 5 records, 1 checkpoints, 0 unsigned at the end\n"
    );

    // Exported as JSON lines; who retired the key, rewritten: record 4 is named.
    let out = oba(&cfg, &["audit", "export", "--db", &db]);
    ok(&out);
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 5);
    let mut r = oba_audit::AuditRecord::parse_line(lines[3].as_bytes()).unwrap();
    assert_eq!(r.event.kind.as_str(), "key.retire");
    assert_eq!(r.event.key_id.as_deref(), Some(kid));
    r.event.actor = Some("account:someone-else/token:x".into());
    lines[3] = r.to_line();
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, format!("{}\n", lines.join("\n"))).unwrap();
    let out = oba(
        &cfg,
        &[
            "audit",
            "verify",
            edited.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TAMPERED: record 4 was altered\n"
    );
}
