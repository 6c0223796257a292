//! `oba up`: the whole stack on one machine — registry and gateway in one process,
//! SQLite and keys under a data directory, in-process caches.

use std::path::PathBuf;

use clap::Args;

use crate::{fail, write_private, Failure};

/// `oba up`.
#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where the registry database, the gateway keys, the stamp key, memory, usage and the
    /// audit trail live.
    #[arg(long, default_value = "oba-data")]
    data_dir: PathBuf,
    /// The model server.
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    upstream: String,
    /// Registry listen address.
    #[arg(long, default_value = "127.0.0.1:8788")]
    registry_listen: String,
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_listen: String,
    /// Export the gateway's request spans over OTLP/HTTP to this collector (a base URL;
    /// see `oba gateway --otlp-endpoint`). Needs an `oba` built with the `otel` feature.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

pub(crate) fn up(args: UpArgs) -> Result<u8, Failure> {
    let telemetry = crate::gateway_cmd::init_logs(
        &std::env::var("OBA_LOG_FORMAT").unwrap_or_else(|_| "text".into()),
        args.otlp_endpoint.as_deref(),
    )?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let stamp = dir.join("gateway-stamp.jwk");
    if !stamp.exists() {
        let jwk = oba_httpsig::jwk::Jwk::generate(oba_httpsig::Algorithm::Ed25519)?;
        write_private(
            &stamp,
            serde_json::to_string_pretty(&jwk)
                .map_err(|e| fail(e.to_string()))?
                .as_bytes(),
            false,
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let result = rt.block_on(async move {
        let db = format!("sqlite://{}", dir.join("registry.db").display());
        let registry = oba_registry::start(oba_registry::Config {
            listen: args.registry_listen.clone(),
            db_url: db,
            ..oba_registry::Config::default()
        })
        .await
        .map_err(|e| fail(format!("registry: {e}")))?;
        let token_file = dir.join("admin.token");
        if let Some(t) = &registry.admin_token {
            write_private(&token_file, format!("{t}\n").as_bytes(), true)?;
        }
        let mut config = attach_gateway::GatewayConfig {
            listen: args.gateway_listen.clone(),
            api_key_file: Some(dir.join("gateway-keys.jsonl")),
            stamp_key_file: Some(stamp.clone()),
            trusted_agents: vec![format!("{}/agents/", registry.public_url)],
            // The local registry is plain http on loopback.
            allow_insecure_directories: true,
            ..attach_gateway::GatewayConfig::default()
        };
        config.upstreams.push(attach_gateway::config::Upstream {
            name: "default".into(),
            kind: if args.upstream.contains(":11434") {
                attach_gateway::config::UpstreamKind::Ollama
            } else {
                attach_gateway::config::UpstreamKind::Openai
            },
            url: args.upstream.clone(),
            models: Vec::new(),
        });
        // Conversation memory, in SQLite next to the registry.
        config.memory = Some(attach_gateway::config::MemoryConfig::new(&format!(
            "sqlite:{}",
            dir.join("memory.db").display()
        )));
        // Usage, in SQLite too.
        config.metering = Some(attach_gateway::config::MeteringConfig::new(&format!(
            "sqlite:{}",
            dir.join("usage.db").display()
        )));
        // The audit trail, checkpoints signed with the stamp key.
        config.audit = Some(attach_gateway::config::AuditConfig::new(
            &dir.join("audit.jsonl").display().to_string(),
        ));
        // Local quick start: every authenticated principal may call the model server.
        config.policy.push(attach_gateway::config::Rule::default());
        let gateway = attach_gateway::start(config).await.map_err(|e| fail(format!("gateway: {e}")))?;
        let g = format!("http://{}", gateway.addr);
        eprintln!("registry: {}", registry.public_url);
        eprintln!("gateway:  {g} -> {}", args.upstream);
        eprintln!("data:     {}", dir.display());
        if registry.admin_token.is_some() {
            eprintln!("admin token written once to {} (mode 0600)", token_file.display());
        }
        eprintln!(
            "\nquick start:\n  oba registry login --url {r} --token \"$(cat {t})\"\n  oba publish --name my-bot --key-out my-bot.jwk\n  oba request --key my-bot.jwk --signature-agent <signature_agent from publish> \\\n      -X POST -H 'Content-Type: application/json' \\\n      -d '{{\"model\":\"llama3.2\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}' \\\n      {g}/v1/chat/completions\n  # or an API key: oba gateway keys create me --file {k}  (in force within a second)\n",
            r = registry.public_url,
            t = token_file.display(),
            k = dir.join("gateway-keys.jsonl").display(),
        );
        crate::gateway_cmd::stopped().await;
        // The gateway first (its in-flight requests may still fetch bot keys from the
        // registry), then the registry, which signs its last audit records.
        gateway.shutdown(std::time::Duration::from_secs(10)).await;
        if let Err(e) = registry.shutdown().await {
            eprintln!("registry: {e}");
        }
        Ok(0)
    });
    // The spans of the last requests, exported once the gateway has stopped.
    telemetry.shutdown();
    result
}
