//! `oba audit verify|export`: check an audit trail — the gateway's (a JSON-lines file or
//! a database table) or the registry's (the `audit_log` table in its database) — against
//! its public keys, or print a table's records as JSON lines.
//!
//! The keys: the gateway's `/.well-known/jwks.json` or the registry's
//! `/.well-known/audit-keys.json`, saved to a file (best: kept where the trail's writers
//! cannot change it) or fetched by URL, or single public JWKs.
//!
//! `verify` exit codes: 0 intact; 1 tampered (or, with `--require-signed-tail`, records
//! after the last checkpoint); 2 an error (unreadable file, database unreachable, bad
//! key).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use oba_audit::{DbLog, Report, TrustedKeys};
use oba_httpsig::jwk::JwkSet;
use serde_json::json;

use crate::{fail, read_input, read_jwk, write_stdout, Failure};

/// `oba audit`.
#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a trail: every record's hash, the chain, the checkpoint signatures.
    Verify {
        /// The JSON-lines file (`-`: standard input).
        #[arg(required_unless_present = "db", conflicts_with = "db")]
        file: Option<PathBuf>,
        /// A database instead: `sqlite://PATH` or `postgres://...`.
        #[arg(long)]
        db: Option<String>,
        /// PostgreSQL schema of the table.
        #[arg(long, requires = "db")]
        schema: Option<String>,
        /// The trusted JWK Set: a file (the gateway's /.well-known/jwks.json or the
        /// registry's /.well-known/audit-keys.json, saved), or an http(s) URL to fetch it
        /// from.
        #[arg(long, required_unless_present = "key")]
        jwks: Option<String>,
        /// A trusted public JWK (repeatable).
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Fail when records follow the last checkpoint (a trail of a stopped gateway
        /// ends with one).
        #[arg(long)]
        require_signed_tail: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a table's records as JSON lines, in seq order (the file format).
    Export {
        /// `sqlite://PATH` or `postgres://...`.
        #[arg(long)]
        db: String,
        /// PostgreSQL schema of the table.
        #[arg(long)]
        schema: Option<String>,
        /// Only records at or after this time (unix ms).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<i64>,
    },
}

pub(crate) fn audit(args: AuditArgs) -> Result<u8, Failure> {
    match args.command {
        AuditCommand::Verify {
            file,
            db,
            schema,
            jwks,
            key,
            require_signed_tail,
            json,
        } => {
            let keys = load_keys(jwks.as_deref(), &key)?;
            let report = match (&file, &db) {
                (_, Some(url)) => runtime()?.block_on(async {
                    let db = DbLog::connect_existing(url, schema.as_deref())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    let report = db.verify(&keys).await.map_err(|e| fail(e.to_string()));
                    db.close().await;
                    report
                })?,
                (Some(path), None) if path.as_os_str() == "-" => {
                    oba_audit::verify_reader(std::io::stdin().lock(), &keys)
                        .map_err(|e| fail(format!("cannot read standard input: {e}")))?
                }
                (Some(path), None) => {
                    oba_audit::verify_file(path, &keys).map_err(|e| fail(e.to_string()))?
                }
                (None, None) => return Err(fail("give FILE or --db")),
            };
            print_report(&report, require_signed_tail, json)
        }
        AuditCommand::Export { db, schema, since } => runtime()?.block_on(async {
            let db = DbLog::connect_existing(&db, schema.as_deref())
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut out = Vec::with_capacity(64 * 1024);
            let mut result = Ok(());
            let scanned = db
                .scan(since, |row| {
                    let written = match row {
                        Ok(r) => {
                            r.write_line(&mut out);
                            out.push(b'\n');
                            if out.len() >= 60 * 1024 {
                                let w = write_stdout(&out);
                                out.clear();
                                w
                            } else {
                                Ok(())
                            }
                        }
                        Err(m) => Err(fail(format!(
                            "row {} cannot be read: {}",
                            m.line, m.message
                        ))),
                    };
                    match written {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(f) => {
                            result = Err(f);
                            ControlFlow::Break(())
                        }
                    }
                })
                .await;
            db.close().await;
            scanned.map_err(|e| fail(e.to_string()))?;
            result?;
            write_stdout(&out)?;
            Ok(0)
        }),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))
}

fn load_keys(jwks: Option<&str>, keys: &[PathBuf]) -> Result<TrustedKeys, Failure> {
    let mut trusted = TrustedKeys::new();
    if let Some(source) = jwks {
        let bytes = if source.starts_with("https://") || source.starts_with("http://") {
            fetch(source)?
        } else {
            read_input(Some(Path::new(source)))?
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| fail(format!("{source}: the JWK Set is not UTF-8")))?;
        let set = JwkSet::parse(&text).map_err(|e| fail(format!("{source}: {e}")))?;
        if trusted.add_jwk_set(&set) == 0 {
            return Err(fail(format!("{source}: no usable key in the JWK Set")));
        }
    }
    for path in keys {
        let jwk = read_jwk(Some(path))?;
        trusted
            .add_jwk(&jwk)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    Ok(trusted)
}

/// Largest JWK Set fetched, bytes.
const MAX_JWKS: usize = 1 << 20;

/// GETs a JWK Set (redirects not followed, 10 s timeout, at most 1 MiB).
fn fetch(url: &str) -> Result<Vec<u8>, Failure> {
    runtime()?.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!("{url}: HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS {
                return Err(fail(format!("{url}: larger than {MAX_JWKS} bytes")));
            }
        }
        Ok(body)
    })
}

fn print_report(report: &Report, require_signed_tail: bool, as_json: bool) -> Result<u8, Failure> {
    let unsigned_fails = require_signed_tail && report.is_intact() && report.unsigned_tail > 0;
    let summary = if unsigned_fails {
        format!(
            "UNSIGNED: {} records after the last checkpoint (seq {})",
            report.unsigned_tail,
            report.last_checkpoint_seq.unwrap_or(0)
        )
    } else {
        report.summary()
    };
    let code = if report.is_intact() && !unsigned_fails {
        0
    } else {
        1
    };
    if as_json {
        let doc = json!({
            "intact": report.is_intact(),
            "summary": summary,
            "records": report.records,
            "checkpoints": report.checkpoints,
            "unsigned_tail": report.unsigned_tail,
            "last_seq": report.last_seq,
            "last_hash": report.last_hash,
            "last_checkpoint_seq": report.last_checkpoint_seq,
            "problem": report.problem,
            "detail": report.detail,
        });
        write_stdout(format!("{doc:#}\n").as_bytes())?;
    } else {
        write_stdout(format!("{summary}\n").as_bytes())?;
        if let (Some(_), Some(detail)) = (&report.problem, &report.detail) {
            eprintln!("oba: {detail}");
        }
    }
    Ok(code)
}
