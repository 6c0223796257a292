//! Web Bot Auth commands: `verify --web-bot-auth`, `request`, `directory serve|check`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use oba_httpsig::jwk::{Jwk, JwkSet};
use oba_httpsig::{HttpMessage, Message};
use oba_webbotauth::agent::SignatureAgent;
use oba_webbotauth::client::{ClientConfig, DirectoryClient, Verifier};
use oba_webbotauth::directory::{self, Directory, MEDIA_TYPE, WELL_KNOWN_PATH};
use oba_webbotauth::keys::{AgentKey, StaticKeys};
use oba_webbotauth::{Outcome, VerifyPolicy, WebBotAuthSigner};
use serde_json::json;

use crate::{fail, load_message, now, read_input, read_jwk, write_stdout, Failure, VerifyArgs};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}")))
}

fn public_keys(args: &VerifyArgs) -> Result<Vec<Jwk>, Failure> {
    let mut out = Vec::new();
    if let Some(k) = &args.key {
        out.push(read_jwk(Some(k))?);
    }
    if let Some(set) = &args.jwks {
        let bytes = read_input(Some(set))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("the JWKS file is not UTF-8"))?;
        out.extend(JwkSet::parse(&text)?.keys);
    }
    out.iter()
        .map(|j| {
            if j.kty == "oct" {
                Ok(j.clone())
            } else {
                j.public().map_err(Failure::from)
            }
        })
        .collect()
}

/// `oba verify --web-bot-auth`: exit 0 verified, 1 invalid or unverified.
pub(crate) fn verify(args: &VerifyArgs) -> Result<u8, Failure> {
    let (msg, _) = load_message(&args.message)?;
    let policy = VerifyPolicy {
        skew: args.skew,
        allow_test_keys: args.allow_test_keys,
        allow_http_loopback: args.allow_loopback,
        max_validity: args
            .max_validity
            .unwrap_or(VerifyPolicy::default().max_validity),
        ..VerifyPolicy::default()
    };
    // Keys given on the command line are trusted for requests without Signature-Agent
    // and for whatever agent the request names.
    let mut agents = vec![None];
    let mut sa = None;
    msg.field_lines("signature-agent", &mut |v| {
        sa = Some(String::from_utf8_lossy(v).into_owned())
    });
    if let Some(parsed) = sa.and_then(|v| SignatureAgent::parse(&v).ok()) {
        for m in parsed.members {
            if let Ok(a) = m.resolve(args.allow_loopback) {
                agents.push(Some(a));
            }
        }
    }
    let mut local = StaticKeys::new();
    for jwk in public_keys(args)? {
        for a in &agents {
            let key = AgentKey::from_public_jwk(&jwk, false).map_err(|e| fail(e.to_string()))?;
            local.insert(a.as_ref(), key);
        }
    }
    let mut verifier = Verifier::new(policy).with_local_keys(local);
    if args.resolve {
        let client = DirectoryClient::new(ClientConfig {
            allow_loopback: args.allow_loopback,
            ..ClientConfig::default()
        })
        .map_err(|e| fail(e.to_string()))?;
        verifier = verifier.with_client(Arc::new(client));
    }
    let when = args.now.unwrap_or_else(now);
    let outcome = runtime()?.block_on(verifier.verify(&msg, when));
    let report = match &outcome {
        Outcome::Verified(v) => json!({
            "outcome": "verified",
            "label": v.label,
            "agent": v.agent.as_ref().map(|a| a.url.to_string()),
            "thumbprint": v.thumbprint,
            "alg": v.algorithm.name(),
            "created": v.created,
            "expires": v.expires,
        }),
        Outcome::Invalid(r) | Outcome::Unverified(r) => json!({
            "outcome": outcome.kind(),
            "label": r.label,
            "reason": r.code,
            "message": r.message,
        }),
    };
    if args.json {
        write_stdout(format!("{report:#}\n").as_bytes())?;
    } else {
        let mut text = format!("outcome: {}\n", outcome.kind());
        for (k, v) in report.as_object().into_iter().flatten() {
            if k != "outcome" && !v.is_null() {
                text.push_str(&format!(
                    "  {k}: {}\n",
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                ));
            }
        }
        write_stdout(text.as_bytes())?;
    }
    Ok(if matches!(outcome, Outcome::Verified(_)) {
        0
    } else {
        1
    })
}

/// `oba request`.
#[derive(Args)]
pub(crate) struct RequestArgs {
    /// Method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// Header line `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(short = 'd', long = "data", conflicts_with = "data_file")]
    data: Option<String>,
    /// Request body from a file (`-` for standard input).
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Private JWK to sign with.
    #[arg(long)]
    key: PathBuf,
    /// Where the bot's keys are (Signature-Agent).
    #[arg(long)]
    signature_agent: Option<String>,
    /// Signature validity, seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u32,
    /// Show the request's signature headers and the response status and headers (stderr).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// URL.
    url: String,
}

/// Sends a signed request; exit 0 for a 2xx/3xx response, 1 for 4xx/5xx, 2 otherwise.
pub(crate) fn request(args: RequestArgs) -> Result<u8, Failure> {
    let jwk = read_jwk(Some(&args.key))?;
    let mut signer = WebBotAuthSigner::new(&jwk)
        .and_then(|s| s.with_validity(args.ttl))
        .map_err(|e| fail(e.to_string()))?;
    if let Some(sa) = &args.signature_agent {
        signer = signer
            .with_signature_agent(sa)
            .map_err(|e| fail(e.to_string()))?;
    }
    let body = match (&args.data, &args.data_file) {
        (Some(d), _) => Some(d.clone().into_bytes()),
        (None, Some(f)) => Some(read_input(Some(f))?),
        (None, None) => None,
    };
    let method = reqwest::Method::from_bytes(args.method.as_bytes())
        .map_err(|_| fail(format!("bad method {:?}", args.method)))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut builder = client.request(method, &args.url);
    for h in &args.headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| fail(format!("header {h:?} is not `Name: value`")))?;
        builder = builder.header(n.trim(), v.trim());
    }
    if let Some(b) = body {
        builder = builder.body(b);
    }
    let mut req = builder
        .build()
        .map_err(|e| fail(format!("bad request: {e}")))?;
    oba_webbotauth::reqwest_signer::sign_request(&signer, &mut req, now())
        .map_err(|e| fail(e.to_string()))?;
    if args.verbose {
        eprintln!("> {} {}", req.method(), req.url());
        for (n, v) in req.headers() {
            eprintln!("> {}: {}", n, v.to_str().unwrap_or("<binary>"));
        }
    }
    let rt = runtime()?;
    let (status, headers, bytes) = rt.block_on(async {
        let resp = client
            .execute(req)
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("reading the response: {e}")))?;
        Ok::<_, Failure>((status, headers, bytes))
    })?;
    if args.verbose {
        eprintln!("< {}", status);
        for (n, v) in &headers {
            eprintln!("< {}: {}", n, v.to_str().unwrap_or("<binary>"));
        }
    }
    write_stdout(&bytes)?;
    Ok(if status.is_client_error() || status.is_server_error() {
        1
    } else {
        0
    })
}

/// `oba directory ...`.
#[derive(Subcommand)]
pub(crate) enum DirectoryCommand {
    /// Serve a signed key directory at the well-known path.
    Serve {
        /// Private JWK (repeatable); the public keys are published.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Address to listen on (port 0 picks one; the address is printed on stderr).
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// Validity of the directory signatures, seconds.
        #[arg(long, default_value_t = 3600)]
        validity: u32,
    },
    /// Fetch a live directory and report on it (exit 1 when not conformant).
    Check {
        /// The directory URL (or an origin; the well-known path is added).
        url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Allow http and loopback (tests only).
        #[arg(long)]
        allow_loopback: bool,
    },
}

pub(crate) fn directory(command: DirectoryCommand) -> Result<u8, Failure> {
    match command {
        DirectoryCommand::Serve {
            keys,
            listen,
            validity,
        } => serve(&keys, &listen, validity),
        DirectoryCommand::Check {
            url,
            json,
            allow_loopback,
        } => check(&url, json, allow_loopback),
    }
}

fn serve(paths: &[PathBuf], listen: &str, validity: u32) -> Result<u8, Failure> {
    let keys: Vec<Jwk> = paths
        .iter()
        .map(|p| read_jwk(Some(p)))
        .collect::<Result<_, _>>()?;
    // Fail now, not on the first request, if a key cannot be published.
    let probe = Message::request("GET", WELL_KNOWN_PATH)?.with_header("Host", "localhost");
    directory::signed_directory_response(&keys, &probe, now(), validity)
        .map_err(|e| fail(e.to_string()))?;
    let keys = Arc::new(keys);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| fail(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        eprintln!(
            "serving {} key(s) at http://{addr}{WELL_KNOWN_PATH}",
            keys.len()
        );
        let app = axum::Router::new().route(
            WELL_KNOWN_PATH,
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let keys = keys.clone();
                async move { serve_directory(&keys, &headers, validity) }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| fail(format!("server error: {e}")))?;
        Ok(0)
    })
}

fn serve_directory(
    keys: &[Jwk],
    headers: &axum::http::HeaderMap,
    validity: u32,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let req = match Message::request("GET", WELL_KNOWN_PATH) {
        Ok(r) => r.with_header("Host", host),
        Err(e) => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    match directory::signed_directory_response(keys, &req, now(), validity) {
        Ok(resp) => {
            let mut out =
                axum::response::Response::new(axum::body::Body::from(resp.body().to_vec()));
            for (n, v) in resp.headers() {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(n.as_bytes()),
                    axum::http::HeaderValue::from_bytes(v),
                ) {
                    out.headers_mut().append(n, v);
                }
            }
            out
        }
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn check(url: &str, as_json: bool, allow_loopback: bool) -> Result<u8, Failure> {
    let mut u = url::Url::parse(url).map_err(|e| fail(format!("{url:?}: {e}")))?;
    if u.path() == "/" || u.path().is_empty() {
        u.set_path(WELL_KNOWN_PATH);
    }
    let https_ok = u.scheme() == "https" || (allow_loopback && u.scheme() == "http");
    let mut problems: Vec<String> = Vec::new();
    if !https_ok {
        return Err(fail(format!(
            "{u} is not https (use --allow-loopback for local http)"
        )));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let (status, headers, body) = runtime()?.block_on(async {
        let resp = client
            .get(u.clone())
            .header("accept", MEDIA_TYPE)
            .send()
            .await
            .map_err(|e| fail(format!("fetch failed: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(format!("fetch failed: {e}")))?;
        Ok::<_, Failure>((status, headers, body))
    })?;
    if status != reqwest::StatusCode::OK {
        problems.push(format!("status {status} (must be 200)"));
    }
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if ctype.split(';').next().unwrap_or_default().trim() != MEDIA_TYPE {
        problems.push(format!("media type {ctype:?} (must be {MEDIA_TYPE})"));
    }
    if body.len() > 64 * 1024 {
        problems.push(format!("{} bytes (clients stop at 64 KiB)", body.len()));
    }
    let mut key_reports = Vec::new();
    if let Ok(set) = serde_json::from_slice::<JwkSet>(&body) {
        for (i, jwk) in set.keys.iter().enumerate() {
            let thumbprint = jwk.thumbprint().ok();
            let valid = AgentKey::from_public_jwk(jwk, true);
            if let Err(e) = &valid {
                problems.push(format!("key {i}: {e}"));
            }
            key_reports.push(json!({
                "kid": jwk.kid,
                "thumbprint": thumbprint,
                "kty": jwk.kty,
                "crv": jwk.crv,
                "valid": valid.is_ok(),
            }));
        }
    } else {
        problems.push("the body is not a JWK Set".into());
    }
    let mut signatures = json!(null);
    if let Ok(dir) = Directory::parse(&body) {
        let mut resp = Message::response(status.as_u16())?.with_body(body.to_vec());
        for (n, v) in &headers {
            resp.append_header(n.as_str(), v.as_bytes());
        }
        let req = Message::request_to("GET", u.as_str())?;
        match dir.verify_response(&resp, &req, now()) {
            Ok(by) if by.is_empty() => signatures = json!({"signed": false}),
            Ok(by) => signatures = json!({"signed": true, "verified_by": by}),
            Err(e) => {
                problems.push(format!("signature: {e}"));
                signatures = json!({"signed": true, "error": e.to_string()});
            }
        }
    }
    let ok = problems.is_empty();
    let report = json!({
        "url": u.as_str(),
        "status": status.as_u16(),
        "media_type": ctype,
        "keys": key_reports,
        "signatures": signatures,
        "problems": problems,
        "conformant": ok,
    });
    if as_json {
        write_stdout(format!("{report:#}\n").as_bytes())?;
    } else {
        let mut t = format!(
            "{}\n  status: {}\n  media type: {}\n",
            u,
            status.as_u16(),
            report["media_type"]
        );
        for k in &key_reports {
            t.push_str(&format!(
                "  key: kid={} thumbprint={} {}\n",
                k["kid"],
                k["thumbprint"],
                if k["valid"] == true { "ok" } else { "INVALID" }
            ));
        }
        t.push_str(&format!("  signatures: {signatures}\n"));
        for p in report["problems"].as_array().into_iter().flatten() {
            t.push_str(&format!("  problem: {}\n", p.as_str().unwrap_or_default()));
        }
        t.push_str(if ok {
            "conformant\n"
        } else {
            "NOT conformant\n"
        });
        write_stdout(t.as_bytes())?;
    }
    Ok(if ok { 0 } else { 1 })
}
