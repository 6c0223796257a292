//! `oba usage`: the gateway's usage report (`GET /attach/v1/usage`), as a table, CSV or
//! JSON.

use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::{fail, write_stdout, Failure};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupBy {
    Principal,
    Model,
    Tenant,
    Day,
}

/// `oba usage`.
#[derive(Args)]
pub(crate) struct UsageArgs {
    /// The gateway.
    #[arg(long, env = "OBA_GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// API key or bearer token (OIDC JWT).
    #[arg(long, env = "OBA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// From (unix ms, inclusive).
    #[arg(long)]
    since: Option<i64>,
    /// To (unix ms, exclusive).
    #[arg(long)]
    until: Option<i64>,
    /// Grouping.
    #[arg(long, value_enum, default_value = "principal")]
    group_by: GroupBy,
    /// Only this tenant (within what your policy allows).
    #[arg(long)]
    tenant: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

const COLUMNS: [&str; 7] = [
    "group",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "errors",
    "cancelled",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub(crate) fn usage(args: UsageArgs) -> Result<u8, Failure> {
    let mut url = url::Url::parse(&format!(
        "{}/attach/v1/usage",
        args.gateway.trim_end_matches('/')
    ))
    .map_err(|e| fail(format!("--gateway: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        let group = match args.group_by {
            GroupBy::Principal => "principal",
            GroupBy::Model => "model",
            GroupBy::Tenant => "tenant",
            GroupBy::Day => "day",
        };
        q.append_pair("group_by", group);
        if let Some(v) = args.since {
            q.append_pair("since", &v.to_string());
        }
        if let Some(v) = args.until {
            q.append_pair("until", &v.to_string());
        }
        if let Some(v) = &args.tenant {
            q.append_pair("tenant", v);
        }
    }
    let v = crate::memory_cmd::gateway_api(
        reqwest::Method::GET,
        url.as_str(),
        args.token.as_deref(),
        None,
    )?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let cell = |r: &Value, c: &str| match &r[c] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let out = match args.format {
        Format::Json => format!("{v:#}\n"),
        Format::Csv => {
            let mut s = COLUMNS.join(",") + "\n";
            for r in &rows {
                let line: Vec<String> = COLUMNS.iter().map(|c| csv_field(&cell(r, c))).collect();
                s.push_str(&line.join(","));
                s.push('\n');
            }
            s
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| COLUMNS.iter().map(|c| cell(r, c)).collect())
                .collect();
            let widths: Vec<usize> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                        .max(c.len())
                })
                .collect();
            let line = |r: &[String]| -> String {
                let v: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i == 0 {
                            format!("{c:<w$}")
                        } else {
                            format!("{c:>w$}")
                        }
                    })
                    .collect();
                v.join("  ").trim_end().to_owned() + "\n"
            };
            let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            let mut s = line(&header);
            for r in &cells {
                s.push_str(&line(r));
            }
            if cells.is_empty() {
                s.push_str("no usage\n");
            }
            s
        }
    };
    write_stdout(out.as_bytes())?;
    Ok(0)
}
