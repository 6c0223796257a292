//! `oba gateway`: run Attach Gateway; `oba gateway keys`: manage its API keys.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::{fail, now, write_stdout, Failure};

/// `oba gateway`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct GatewayArgs {
    #[command(subcommand)]
    command: Option<GatewayCommand>,
    /// TOML configuration file (flags and environment variables override it).
    #[arg(long, env = "OBA_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address.
    #[arg(long, env = "OBA_GATEWAY_LISTEN")]
    listen: Option<String>,
    /// Upstream model server URL (OpenAI-compatible or Ollama).
    #[arg(long, env = "OBA_GATEWAY_UPSTREAM")]
    upstream: Option<String>,
    /// API key file (see `oba gateway keys create`).
    #[arg(long, env = "OBA_GATEWAY_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Trust agents whose keys are under this URL prefix (a registry's /agents/), repeatable.
    #[arg(long = "trust-registry")]
    trust_registry: Vec<String>,
    /// Allow http and loopback key directories (tests only).
    #[arg(long)]
    allow_insecure_directories: bool,
    /// Share the replay store with other replicas through Redis.
    #[arg(long, env = "OBA_GATEWAY_REDIS")]
    redis: Option<String>,
    /// OIDC issuer to trust (with --oidc-audience), repeatable.
    #[arg(long = "oidc-issuer", requires = "oidc_audience")]
    oidc_issuer: Vec<String>,
    /// Audience the OIDC tokens must carry.
    #[arg(long)]
    oidc_audience: Option<String>,
    /// Record conversation memory in this store: `sqlite:PATH` or a `postgres://` URL.
    #[arg(long, env = "OBA_GATEWAY_MEMORY")]
    memory: Option<String>,
    /// Record usage (one record per request) in this ledger: `sqlite:PATH` or a
    /// `postgres://` URL.
    #[arg(long, env = "OBA_GATEWAY_METERING")]
    metering: Option<String>,
    /// Append every authentication and policy decision to this tamper-evident audit
    /// trail: a JSON-lines file, or `sqlite:PATH` / a `postgres://` URL
    /// (`oba audit verify` checks it).
    #[arg(long, env = "OBA_GATEWAY_AUDIT")]
    audit: Option<String>,
    /// Log format on standard error: `text` or `json` (one JSON object per line, with
    /// the request id and trace id of the request it belongs to).
    #[arg(long, env = "OBA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Add a policy rule allowing every authenticated principal (the default is deny).
    #[arg(long)]
    allow_authenticated: bool,
    /// Export each request's span over OTLP/HTTP (protobuf) to this collector: a base URL
    /// such as `http://127.0.0.1:4318` (`/v1/traces` is appended). Without it,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`; the service
    /// name is `OTEL_SERVICE_NAME` (default `attach-gateway`). Needs an `oba` built with
    /// the `otel` feature.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key: printed once; only its hash is appended to the key file.
    Create {
        /// Name (the principal is `key:<name>`).
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Key file.
        #[arg(long, default_value = "gateway-keys.jsonl")]
        file: PathBuf,
    },
    /// List keys (names, tenants, state; never the keys).
    List {
        /// Key file.
        #[arg(long, default_value = "gateway-keys.jsonl")]
        file: PathBuf,
    },
    /// Revoke a key.
    Revoke {
        /// Name.
        name: String,
        /// Key file.
        #[arg(long, default_value = "gateway-keys.jsonl")]
        file: PathBuf,
    },
}

pub(crate) fn gateway(args: GatewayArgs) -> Result<u8, Failure> {
    use attach_gateway::apikeys;
    match args.command {
        Some(GatewayCommand::Keys { command }) => match command {
            KeysCommand::Create { name, tenant, file } => {
                let key = apikeys::create(&file, &name, tenant.as_deref(), now()).map_err(fail)?;
                write_stdout(format!("{key}\n").as_bytes())?;
                eprintln!(
                    "the key is shown once; its hash was appended to {}",
                    file.display()
                );
                Ok(0)
            }
            KeysCommand::List { file } => {
                let keys = apikeys::ApiKeys::load(&file).map_err(fail)?;
                let list: Vec<_> = keys
                    .list()
                    .map(|e| serde_json::json!({ "name": e.name, "tenant": e.tenant, "created_at": e.created_at, "revoked": e.revoked }))
                    .collect();
                write_stdout(format!("{:#}\n", serde_json::json!({ "keys": list })).as_bytes())?;
                Ok(0)
            }
            KeysCommand::Revoke { name, file } => {
                apikeys::revoke(&file, &name).map_err(fail)?;
                Ok(0)
            }
        },
        None => run(args),
    }
}

/// The process's trace export (feature `otel`, when an endpoint is set); nothing otherwise.
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    traces: Option<attach_gateway::telemetry::TraceExport>,
}

impl Telemetry {
    /// Exports the spans still queued; call it after the gateway's shutdown.
    pub(crate) fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(t) = self.traces {
            if let Err(e) = t.shutdown() {
                eprintln!("gateway: {e}");
            }
        }
    }
}

/// Sends the gateway's `tracing` events to standard error, as text or JSON lines (INFO
/// and above), and, with the `otel` feature, its request spans to the OTLP endpoint from
/// `otlp_endpoint` or the environment. Without the feature, `otlp_endpoint` is refused.
pub(crate) fn init_logs(format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, Failure> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Boxed = if format == "json" {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.with_ansi(false).boxed()
    };
    let logs = tracing_subscriber::registry()
        .with(fmt)
        .with(LevelFilter::INFO);
    #[cfg(feature = "otel")]
    {
        use attach_gateway::telemetry::{OtlpSettings, TraceExport};
        let settings = OtlpSettings::from_env(otlp_endpoint).map_err(|e| fail(e.to_string()))?;
        let traces = match &settings {
            Some(s) => Some(TraceExport::start(s).map_err(|e| fail(e.to_string()))?),
            None => None,
        };
        let _ = logs.with(traces.as_ref().map(|t| t.layer())).try_init();
        if let Some(s) = &settings {
            eprintln!(
                "traces: OTLP/HTTP to {}://{}{}{} as service {:?}",
                s.endpoint.scheme(),
                s.endpoint.host_str().unwrap_or_default(),
                s.endpoint
                    .port()
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default(),
                s.endpoint.path(),
                s.service_name
            );
        }
        Ok(Telemetry { traces })
    }
    #[cfg(not(feature = "otel"))]
    {
        if otlp_endpoint.is_some() {
            return Err(fail(
                "--otlp-endpoint: this oba was built without trace export; build it with `cargo build --release -p oba --features otel`",
            ));
        }
        if attach_gateway::telemetry::OtlpSettings::in_env() {
            eprintln!(
                "warning: an OTEL_EXPORTER_OTLP_*ENDPOINT is set, but this oba was built without the `otel` feature: no traces are exported"
            );
        }
        let _ = logs.try_init();
        Ok(Telemetry {})
    }
}

fn run(args: GatewayArgs) -> Result<u8, Failure> {
    let telemetry = init_logs(&args.log_format, args.otlp_endpoint.as_deref())?;
    let mut config = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
            attach_gateway::GatewayConfig::from_toml(&text)
                .map_err(|e| fail(format!("{}: {e}", p.display())))?
        }
        None => attach_gateway::GatewayConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(u) = args.upstream {
        config.upstreams.insert(
            0,
            attach_gateway::config::Upstream {
                name: "default".into(),
                kind: if u.contains(":11434") {
                    attach_gateway::config::UpstreamKind::Ollama
                } else {
                    attach_gateway::config::UpstreamKind::Openai
                },
                url: u,
                models: Vec::new(),
            },
        );
    }
    if args.api_key_file.is_some() {
        config.api_key_file = args.api_key_file;
    }
    config.trusted_agents.extend(args.trust_registry);
    if args.redis.is_some() {
        config.redis_url = args.redis;
    }
    for issuer in args.oidc_issuer {
        config
            .oidc_issuers
            .push(attach_gateway::config::OidcIssuerConfig {
                issuer,
                audience: args.oidc_audience.clone().unwrap_or_default(),
                required_scopes: Vec::new(),
                tenant_claim: None,
                required_claims: serde_json::Map::new(),
            });
    }
    config.allow_insecure_directories |= args.allow_insecure_directories;
    if let Some(store) = args.audit {
        match &mut config.audit {
            Some(a) => a.store = store,
            None => config.audit = Some(attach_gateway::config::AuditConfig::new(&store)),
        }
    }
    if let Some(store) = args.metering {
        match &mut config.metering {
            Some(m) => m.store = store,
            None => config.metering = Some(attach_gateway::config::MeteringConfig::new(&store)),
        }
    }
    if let Some(store) = args.memory {
        match &mut config.memory {
            Some(m) => m.store = store,
            None => config.memory = Some(attach_gateway::config::MemoryConfig::new(&store)),
        }
    }
    if args.allow_authenticated {
        config.policy.push(attach_gateway::config::Rule::default());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let result = rt.block_on(async move {
        let gw = attach_gateway::start(config)
            .await
            .map_err(|e| fail(e.to_string()))?;
        eprintln!("gateway listening on http://{}", gw.addr);
        stopped().await;
        eprintln!("gateway: shutting down (in-flight requests, then the memory queue)");
        gw.shutdown(std::time::Duration::from_secs(10)).await;
        Ok(0)
    });
    // The spans of the last requests, exported once the gateway has stopped.
    telemetry.shutdown();
    result
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
