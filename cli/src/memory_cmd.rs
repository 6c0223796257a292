//! `oba memory ls|search|rm`: the gateway's memory API, with an API key or a bearer
//! token. Text output by default, `--json` for the API's JSON.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::{fail, write_stdout, Failure};

/// `oba memory`.
#[derive(Args)]
pub(crate) struct MemoryArgs {
    #[command(subcommand)]
    command: MemoryCommand,
    /// The gateway.
    #[arg(
        long,
        global = true,
        env = "OBA_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// API key or bearer token (OIDC JWT).
    #[arg(long, global = true, env = "OBA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// List turns, newest first.
    Ls {
        /// Only this session (your label).
        #[arg(long)]
        session: Option<String>,
        /// A shared space you may read.
        #[arg(long)]
        space: Option<String>,
        /// Only since this time (unix ms).
        #[arg(long)]
        since: Option<i64>,
        /// Only before this time (unix ms).
        #[arg(long)]
        until: Option<i64>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Full-text search.
    Search {
        /// Words to look for.
        query: String,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// A shared space you may read.
        #[arg(long)]
        space: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete one turn, a session, or everything you own.
    Rm {
        /// The turn id.
        #[arg(required_unless_present_any = ["session", "all"], conflicts_with_all = ["session", "all"])]
        id: Option<String>,
        /// Every turn of this session.
        #[arg(long, conflicts_with = "all")]
        session: Option<String>,
        /// Everything you own: turns, spaces you own, memberships.
        #[arg(long)]
        all: bool,
    },
}

fn print_turns(turns: &[Value], scores: Option<&[f64]>) -> Result<(), Failure> {
    let mut out = String::new();
    for (i, t) in turns.iter().enumerate() {
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
        let score = scores
            .map(|s| format!(" score={:.3}", s[i]))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {} session={} model={}{}{score}\n  user: {}\n  assistant: {}\n",
            s("id"),
            t["created_at"],
            s("session"),
            s("model"),
            if t["complete"] == Value::Bool(false) {
                " (incomplete)"
            } else {
                ""
            },
            s("user").replace('\n', "\n        "),
            s("assistant").replace('\n', "\n             "),
        ));
    }
    if turns.is_empty() {
        out.push_str("no turns\n");
    }
    write_stdout(out.as_bytes())
}

pub(crate) fn memory(args: MemoryArgs) -> Result<u8, Failure> {
    let base = format!("{}/attach/v1/memory", args.gateway.trim_end_matches('/'));
    let (method, url, body) = match &args.command {
        MemoryCommand::Ls {
            session,
            space,
            since,
            until,
            limit,
        } => {
            let mut u = url::Url::parse(&base).map_err(|e| fail(format!("--gateway: {e}")))?;
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in [
                    ("session", session.clone()),
                    ("space", space.clone()),
                    ("since", since.map(|v| v.to_string())),
                    ("until", until.map(|v| v.to_string())),
                    ("limit", limit.map(|v| v.to_string())),
                ] {
                    if let Some(v) = v {
                        q.append_pair(k, &v);
                    }
                }
            }
            (reqwest::Method::GET, u.to_string(), None)
        }
        MemoryCommand::Search {
            query,
            session,
            space,
            limit,
        } => (
            reqwest::Method::POST,
            format!("{base}/search"),
            Some(json!({"query": query, "session": session, "space": space, "limit": limit})),
        ),
        MemoryCommand::Rm { id, session, all } => {
            let mut u = url::Url::parse(&base).map_err(|e| fail(format!("--gateway: {e}")))?;
            if let Some(id) = id {
                u.path_segments_mut()
                    .map_err(|_| fail("--gateway: not a base URL"))?
                    .push(id);
            } else if *all {
                u.query_pairs_mut().append_pair("all", "true");
            } else if let Some(s) = session {
                u.query_pairs_mut().append_pair("session", s);
            }
            (reqwest::Method::DELETE, u.to_string(), None)
        }
    };
    let v = gateway_api(method, &url, args.token.as_deref(), body)?;
    if args.json {
        write_stdout(format!("{v:#}\n").as_bytes())?;
        return Ok(0);
    }
    match &args.command {
        MemoryCommand::Ls { .. } => print_turns(
            v["turns"].as_array().map(Vec::as_slice).unwrap_or_default(),
            None,
        )?,
        MemoryCommand::Search { .. } => {
            let hits = v["hits"].as_array().cloned().unwrap_or_default();
            let turns: Vec<Value> = hits.iter().map(|h| h["turn"].clone()).collect();
            let scores: Vec<f64> = hits
                .iter()
                .map(|h| h["score"].as_f64().unwrap_or(0.0))
                .collect();
            print_turns(&turns, Some(&scores))?
        }
        MemoryCommand::Rm { .. } => write_stdout(format!("{v}\n").as_bytes())?,
    }
    Ok(0)
}

/// Calls the gateway's JSON API with a bearer credential; an error answer becomes a
/// failure with its status, message and code (exit 1 for 404, else 2).
pub(crate) fn gateway_api(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let (status, v) = rt.block_on(async {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| fail(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| fail(format!("{url}: {status}: not JSON: {text}")))?;
        Ok::<_, Failure>((status, v))
    })?;
    if !status.is_success() {
        let e = &v["error"];
        return Err(Failure {
            code: if status.as_u16() == 404 { 1 } else { 2 },
            message: format!(
                "{status}: {} ({})",
                e["message"].as_str().unwrap_or("error"),
                e["code"].as_str().unwrap_or("unknown")
            ),
        });
    }
    Ok(v)
}
