//! `oba registry ...` and `oba publish`: run the registry, and talk to one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::Algorithm;
use serde_json::{json, Value};

use crate::{fail, now, read_jwk, write_private, write_stdout, Failure};

/// `oba registry ...`.
#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
    /// Run the registry service.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: String,
        /// Database: `sqlite://PATH` (created if missing) or `postgres://...`.
        #[arg(long, default_value = "sqlite://registry.db")]
        db: String,
        /// The URL clients reach the registry at (default: http://<listen address>).
        #[arg(long)]
        public_url: Option<String>,
        /// Take the first admin token from this file instead of generating one.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Also serve https://<agent-id>.<suffix>/.well-known/http-message-signatures-directory.
        #[arg(long)]
        agent_host_suffix: Option<String>,
        /// The private JWK signing the audit trail's checkpoints, created (Ed25519, mode
        /// 0600) if missing (default: <db file stem>-audit.jwk next to a SQLite file,
        /// registry-audit.jwk here for PostgreSQL). Its public half is served at
        /// /.well-known/audit-keys.json, for `oba audit verify --db ... --jwks`.
        #[arg(long)]
        audit_key: Option<PathBuf>,
        /// A signed audit checkpoint after this many records (also every 60 s while a
        /// record is unsigned, and at shutdown).
        #[arg(long, default_value_t = 100)]
        audit_checkpoint_every: u64,
    },
    /// Store the registry URL and an API token (mode 0600, in the config directory).
    Login {
        /// Registry URL.
        #[arg(long)]
        url: String,
        /// API token (`oba_rt_...`).
        #[arg(long)]
        token: String,
    },
    /// Agents.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where the registry is and how to authenticate (defaults: `oba registry login`).
#[derive(Args, Clone)]
pub(crate) struct Conn {
    /// Registry URL (default: from `oba registry login`).
    #[arg(long, global = true)]
    registry: Option<String>,
    /// API token (default: $OBA_REGISTRY_TOKEN, then `oba registry login`).
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// Create an agent.
    Create(AgentFields),
    /// List your agents.
    List,
    /// Show an agent.
    Show {
        /// Agent id.
        id: String,
    },
    /// Delete an agent.
    Delete {
        /// Agent id.
        id: String,
    },
}

/// Signature Agent Card fields.
#[derive(Args)]
pub(crate) struct AgentFields {
    /// Name.
    #[arg(long)]
    name: String,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// Homepage (https).
    #[arg(long)]
    homepage: Option<String>,
    /// Contact (repeatable), e.g. mailto:bot@example.com.
    #[arg(long = "contact")]
    contacts: Vec<String>,
    /// Purpose (e.g. search, tdm).
    #[arg(long)]
    purpose: Option<String>,
    /// Expected User-Agent.
    #[arg(long)]
    user_agent: Option<String>,
    /// crawler or fetcher.
    #[arg(long, value_parser = ["crawler", "fetcher"])]
    trigger: Option<String>,
    /// robots.txt product token.
    #[arg(long)]
    product_token: Option<String>,
}

impl AgentFields {
    fn to_json(&self) -> Value {
        let mut v = json!({ "name": self.name });
        for (k, val) in [
            ("description", &self.description),
            ("homepage", &self.homepage),
            ("purpose", &self.purpose),
            ("expected_user_agent", &self.user_agent),
            ("trigger", &self.trigger),
            ("product_token", &self.product_token),
        ] {
            if let Some(x) = val {
                v[k] = x.clone().into();
            }
        }
        if !self.contacts.is_empty() {
            v["contacts"] = self.contacts.clone().into();
        }
        v
    }
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Add a key (the request is signed by it: proof of possession).
    Add {
        /// Agent id.
        #[arg(long)]
        agent: String,
        /// The private JWK (only its public part is sent).
        #[arg(long)]
        key: PathBuf,
        /// Valid from (unix seconds).
        #[arg(long)]
        not_before: Option<i64>,
        /// Valid until (unix seconds).
        #[arg(long)]
        not_after: Option<i64>,
    },
    /// List an agent's keys (retired ones included).
    List {
        /// Agent id.
        #[arg(long)]
        agent: String,
    },
    /// Retire a key (it leaves the published set).
    Retire {
        /// Agent id.
        #[arg(long)]
        agent: String,
        /// The key's kid (thumbprint).
        kid: String,
    },
}

/// `oba publish`.
#[derive(Args)]
pub(crate) struct PublishArgs {
    /// Registry URL (default: from `oba registry login`).
    #[arg(long)]
    registry: Option<String>,
    /// API token (default: $OBA_REGISTRY_TOKEN, then `oba registry login`).
    #[arg(long)]
    token: Option<String>,
    /// The bot's name.
    #[arg(long)]
    name: String,
    /// Use this private JWK instead of generating one.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where to write a generated key (mode 0600; default `<agent id>.jwk`).
    #[arg(long, conflicts_with = "key")]
    key_out: Option<PathBuf>,
}

fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("OBA_CONFIG_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("oba"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("oba"))
}

fn saved() -> Value {
    config_dir()
        .and_then(|d| std::fs::read_to_string(d.join("registry.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn resolve(registry: &Option<String>, token: &Option<String>) -> Result<(String, String), Failure> {
    let cfg = saved();
    let url = registry
        .clone()
        .or_else(|| cfg["url"].as_str().map(str::to_owned))
        .ok_or_else(|| fail("no registry: pass --registry or run `oba registry login`"))?;
    let token = token
        .clone()
        .or_else(|| std::env::var("OBA_REGISTRY_TOKEN").ok())
        .or_else(|| cfg["token"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            fail("no token: pass --token, set OBA_REGISTRY_TOKEN or run `oba registry login`")
        })?;
    Ok((url.trim_end_matches('/').to_owned(), token))
}

/// One API call; an error response becomes exit code 1 with the API's message.
fn call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[(&str, String)],
    raw_body: Option<Vec<u8>>,
) -> Result<Value, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let mut req = client.request(m, url).bearer_auth(token);
        for (n, v) in extra {
            req = req.header(*n, v);
        }
        if let Some(b) = raw_body {
            req = req.header("content-type", "application/json").body(b);
        } else if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| fail(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err(Failure {
                code: 1,
                message: format!(
                    "{status}: {} ({})",
                    v["error"]["message"].as_str().unwrap_or(&text),
                    v["error"]["code"].as_str().unwrap_or("error")
                ),
            })
        }
    })
}

fn print(v: &Value) -> Result<(), Failure> {
    write_stdout(format!("{v:#}\n").as_bytes())
}

pub(crate) fn registry(command: RegistryCommand) -> Result<u8, Failure> {
    match command {
        RegistryCommand::Serve {
            listen,
            db,
            public_url,
            admin_token_file,
            agent_host_suffix,
            audit_key,
            audit_checkpoint_every,
        } => serve(oba_registry::Config {
            listen,
            db_url: db,
            public_url,
            admin_token_file,
            agent_host_suffix,
            audit_key_file: audit_key,
            audit_checkpoint_every,
            ..oba_registry::Config::default()
        }),
        RegistryCommand::Login { url, token } => {
            let dir = config_dir()
                .ok_or_else(|| fail("no config directory (set OBA_CONFIG_DIR or HOME)"))?;
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
            // Check the token before saving it.
            call(
                "GET",
                &format!("{}/v1/tokens", url.trim_end_matches('/')),
                &token,
                None,
                &[],
                None,
            )?;
            let doc = json!({ "url": url.trim_end_matches('/'), "token": token });
            write_private(
                &dir.join("registry.json"),
                format!("{doc:#}\n").as_bytes(),
                true,
            )?;
            eprintln!("saved to {}", dir.join("registry.json").display());
            Ok(0)
        }
        RegistryCommand::Agents { command, conn } => {
            let (url, token) = resolve(&conn.registry, &conn.token)?;
            let v = match command {
                AgentsCommand::Create(f) => call(
                    "POST",
                    &format!("{url}/v1/agents"),
                    &token,
                    Some(&f.to_json()),
                    &[],
                    None,
                )?,
                AgentsCommand::List => {
                    call("GET", &format!("{url}/v1/agents"), &token, None, &[], None)?
                }
                AgentsCommand::Show { id } => call(
                    "GET",
                    &format!("{url}/v1/agents/{id}"),
                    &token,
                    None,
                    &[],
                    None,
                )?,
                AgentsCommand::Delete { id } => call(
                    "DELETE",
                    &format!("{url}/v1/agents/{id}"),
                    &token,
                    None,
                    &[],
                    None,
                )?,
            };
            if !v.is_null() {
                print(&v)?;
            }
            Ok(0)
        }
        RegistryCommand::Keys { command, conn } => {
            let (url, token) = resolve(&conn.registry, &conn.token)?;
            let v = match command {
                KeysCommand::Add {
                    agent,
                    key,
                    not_before,
                    not_after,
                } => add_key(
                    &url,
                    &token,
                    &agent,
                    &read_jwk(Some(&key))?,
                    not_before,
                    not_after,
                )?,
                KeysCommand::List { agent } => call(
                    "GET",
                    &format!("{url}/v1/agents/{agent}/keys"),
                    &token,
                    None,
                    &[],
                    None,
                )?,
                KeysCommand::Retire { agent, kid } => call(
                    "DELETE",
                    &format!("{url}/v1/agents/{agent}/keys/{kid}"),
                    &token,
                    None,
                    &[],
                    None,
                )?,
            };
            if !v.is_null() {
                print(&v)?;
            }
            Ok(0)
        }
    }
}

fn add_key(
    url: &str,
    token: &str,
    agent: &str,
    jwk: &Jwk,
    not_before: Option<i64>,
    not_after: Option<i64>,
) -> Result<Value, Failure> {
    let public = jwk.public()?;
    let mut body = json!({ "jwk": public });
    if let Some(nb) = not_before {
        body["not_before"] = nb.into();
    }
    if let Some(na) = not_after {
        body["not_after"] = na.into();
    }
    let bytes = body.to_string().into_bytes();
    let target = format!("{url}/v1/agents/{agent}/keys");
    let headers = oba_registry::pop::proof_headers(jwk, "POST", &target, &bytes, now())?;
    call("POST", &target, token, None, &headers, Some(bytes))
}

fn serve(config: oba_registry::Config) -> Result<u8, Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    rt.block_on(async move {
        let registry = oba_registry::start(config)
            .await
            .map_err(|e| fail(e.to_string()))?;
        eprintln!(
            "registry listening on http://{} (public URL {})",
            registry.addr, registry.public_url
        );
        if let Some(t) = &registry.admin_token {
            eprintln!("admin token (shown once, store it now): {t}");
        }
        // Not eprintln!: whoever started us may have stopped reading standard error.
        let _ = match &registry.audit_key_file {
            Some(p) => writeln!(
                std::io::stderr(),
                "audit trail signed with {} (kid {}; public key at {}/.well-known/audit-keys.json)",
                p.display(),
                registry.audit_keyid,
                registry.public_url
            ),
            None => writeln!(
                std::io::stderr(),
                "audit trail signed with a key of this process only (kid {})",
                registry.audit_keyid
            ),
        };
        // On Ctrl-C or SIGTERM: stops serving, then signs the last audit records.
        crate::gateway_cmd::stopped().await;
        registry
            .shutdown()
            .await
            .map_err(|e| fail(format!("registry shutdown: {e}")))?;
        Ok(0)
    })
}

/// `oba publish`: key (generated or given) → agent → key added with proof → the
/// `Signature-Agent` value to use.
pub(crate) fn publish(args: PublishArgs) -> Result<u8, Failure> {
    let (url, token) = resolve(&args.registry, &args.token)?;
    let (jwk, generated) = match &args.key {
        Some(p) => (read_jwk(Some(p))?, false),
        None => (Jwk::generate(Algorithm::Ed25519)?, true),
    };
    if jwk.kty == "oct" {
        return Err(fail("a bot key must be asymmetric"));
    }
    let agent = call(
        "POST",
        &format!("{url}/v1/agents"),
        &token,
        Some(&json!({ "name": args.name })),
        &[],
        None,
    )?;
    let id = agent["id"]
        .as_str()
        .ok_or_else(|| fail("the registry returned no agent id"))?
        .to_owned();
    if generated {
        let path = args
            .key_out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{id}.jwk")));
        write_private(
            &path,
            format!(
                "{}\n",
                serde_json::to_string_pretty(&jwk).map_err(|e| fail(e.to_string()))?
            )
            .as_bytes(),
            false,
        )?;
        eprintln!("wrote the new private key to {}", path.display());
    }
    add_key(&url, &token, &id, &jwk, None, None)?;
    let signature_agent = agent["signature_agent"]
        .as_str()
        .or(agent["jwks_uri"].as_str())
        .unwrap_or_default()
        .to_owned();
    let key_path = args
        .key
        .clone()
        .or(args.key_out.clone())
        .unwrap_or_else(|| PathBuf::from(format!("{id}.jwk")));
    let out = json!({
        "agent_id": id,
        "thumbprint": jwk.thumbprint()?,
        "jwks_uri": agent["jwks_uri"],
        "card_url": agent["card_url"],
        "signature_agent": signature_agent,
        "key": key_path.display().to_string(),
    });
    print(&out)?;
    eprintln!(
        "sign requests with: oba request --key {} --signature-agent {} URL",
        shell_path(&key_path),
        signature_agent
    );
    Ok(0)
}

fn shell_path(p: &Path) -> String {
    p.display().to_string()
}
