//! `cargo run --release -p xtask -- bench-gateway [SECONDS] [CONCURRENCY]`: a load
//! benchmark of Attach Gateway on this machine over loopback sockets. A child process
//! (`xtask serve-stack`) runs the model server, the gateway in front of it, a key
//! directory and an OIDC issuer; this process is the load generator. It prints a markdown table: requests/s and p50/p99 latency for the
//! upstream directly, through the gateway with an API key, a Web Bot Auth Ed25519
//! signature (a fresh nonce per request, signed by the client inside the loop), and a
//! JWT; the p99 added at half of the maximum throughput; streaming time to first byte.
//!
//! `cargo run --release -p xtask -- bench-gateway-tail [WINDOWS] [RATE] [--realtime]`:
//! only the half-load comparison (direct against the gateway with an API key), for
//! studying the tail; `--realtime` runs both processes at SCHED_FIFO (root), so the
//! machine's other services cannot preempt them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use base64::Engine;
use futures_util::StreamExt;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Signer};

const CHAT: &str = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#;

/// Serves `app` on a loopback port. The backlog is what model servers use (Go's
/// net/http takes `net.core.somaxconn`; uvicorn 2048).
async fn serve(app: axum::Router) -> String {
    let l = attach_gateway::bind("127.0.0.1:0", 4096)
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            l.tap_io(|t| {
                let _ = t.set_nodelay(true);
            }),
            app,
        )
        .await
    });
    url
}

fn unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Starts the model server, the bot's key directory, an OIDC issuer and the gateway in
/// this process; returns their URLs and credentials.
async fn stack() -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    // The model server: a fixed chat answer, or an SSE stream of five chunks.
    let upstream = serve(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|body: String| async move {
            if body.contains("\"stream\":true") {
                let chunks =
                    (0..5).map(|i| Ok::<_, std::io::Error>(format!("data: {{\"i\":{i}}}\n\n")));
                let s = futures_util::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    c
                });
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from_stream(s))
                    .expect("response")
            } else {
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(
                        r#"{"choices":[{"message":{"role":"assistant","content":"hello"}}]}"#,
                    ))
                    .expect("response")
            }
        }),
    ))
    .await;

    // A bot and its key directory.
    let bot = Jwk::generate(Algorithm::Ed25519)?;
    let bot_keys = vec![bot.clone()];
    let directory = serve(axum::Router::new().route(
        oba_webbotauth::directory::WELL_KNOWN_PATH,
        axum::routing::get(move |h: axum::http::HeaderMap| {
            let keys = bot_keys.clone();
            async move {
                let host = h
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let req = oba_httpsig::Message::request(
                    "GET",
                    oba_webbotauth::directory::WELL_KNOWN_PATH,
                )
                .expect("req")
                .with_header("Host", host);
                let resp =
                    oba_webbotauth::directory::signed_directory_response(&keys, &req, unix(), 3600)
                        .expect("directory");
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
        }),
    ))
    .await;

    // An OIDC issuer.
    let idp = Jwk::generate(Algorithm::Ed25519)?;
    let idp_public = serde_json::to_value(idp.public()?)?;
    let l = attach_gateway::bind("127.0.0.1:0", 4096).await?;
    let issuer = format!("http://{}", l.local_addr()?);
    let iss = issuer.clone();
    let idp_app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let iss = iss.clone();
                async move {
                    axum::Json(
                        serde_json::json!({ "issuer": iss, "jwks_uri": format!("{iss}/jwks") }),
                    )
                }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let k = idp_public.clone();
                async move { axum::Json(serde_json::json!({ "keys": [k] })) }
            }),
        );
    tokio::spawn(async move {
        axum::serve(
            l.tap_io(|t| {
                let _ = t.set_nodelay(true);
            }),
            idp_app,
        )
        .await
    });
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let h = b64(serde_json::json!({"alg": "EdDSA", "kid": idp.kid})
        .to_string()
        .as_bytes());
    let p = b64(
        serde_json::json!({"iss": issuer, "aud": "bench", "sub": "alice", "exp": unix() + 3600})
            .to_string()
            .as_bytes(),
    );
    let sig = idp.signing_key(None)?.sign(format!("{h}.{p}").as_bytes())?;
    let jwt = format!("{h}.{p}.{}", b64(&sig));

    // The gateway.
    // Kept while the stack runs: the gateways watch their key file (a removed file
    // revokes every key).
    let dir = tempfile::tempdir()?.keep();
    let keyfile = dir.join("keys.jsonl");
    let api_key = attach_gateway::apikeys::create(&keyfile, "bench", None, unix())?;
    let config = attach_gateway::GatewayConfig {
        listen: "127.0.0.1:0".into(),
        upstreams: vec![attach_gateway::config::Upstream {
            name: "up".into(),
            url: upstream.clone(),
            kind: attach_gateway::config::UpstreamKind::Openai,
            models: vec![],
        }],
        api_key_file: Some(keyfile),
        trusted_agents: vec![format!("{directory}/")],
        allow_insecure_directories: true,
        oidc_issuers: vec![attach_gateway::config::OidcIssuerConfig {
            issuer: issuer.clone(),
            audience: "bench".into(),
            required_scopes: vec![],
            tenant_claim: None,
            required_claims: serde_json::Map::new(),
        }],
        oidc_allow_http: true,
        policy: vec![attach_gateway::config::Rule::default()],
        ..attach_gateway::GatewayConfig::default()
    };
    // The same gateway with conversation memory (SQLite, every turn written).
    let memory_dir = tempfile::tempdir()?.keep();
    let mut with_memory = config.clone();
    with_memory.memory = Some(attach_gateway::config::MemoryConfig::new(&format!(
        "sqlite:{}",
        memory_dir.join("memory.db").display()
    )));
    // And with metering (a usage record per request to SQLite).
    let mut with_metering = config.clone();
    with_metering.metering = Some(attach_gateway::config::MeteringConfig::new(&format!(
        "sqlite:{}",
        memory_dir.join("usage.db").display()
    )));
    // Metering with the audit trail too (every authentication decision, chained).
    with_metering.audit = Some(attach_gateway::config::AuditConfig::new(
        &memory_dir.join("audit.jsonl").display().to_string(),
    ));
    let gw = attach_gateway::start(config).await?;
    let gw_memory = attach_gateway::start(with_memory).await?;
    let gw_metering = attach_gateway::start(with_metering).await?;
    let info = serde_json::json!({
        "direct": format!("{upstream}/v1/chat/completions"),
        "gateway": format!("http://{}/v1/chat/completions", gw.addr),
        "gateway_memory": format!("http://{}/v1/chat/completions", gw_memory.addr),
        "gateway_metering": format!("http://{}/v1/chat/completions", gw_metering.addr),
        "api_key": api_key,
        "jwt": jwt,
        "directory": directory,
        "bot_jwk": bot,
    });
    // Detached: the server tasks go on.
    drop(gw);
    drop(gw_memory);
    drop(gw_metering);
    Ok(info)
}

/// How a request is authenticated.
#[derive(Clone)]
enum Auth {
    None,
    ApiKey(String),
    /// An API key, asking the gateway to recall memory into the prompt.
    ApiKeyRecall(String),
    Bot(Arc<oba_webbotauth::WebBotAuthSigner>),
    Jwt(String),
}

async fn one(client: &reqwest::Client, url: &str, auth: &Auth) -> Result<Duration, String> {
    let start = Instant::now();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(CHAT);
    match auth {
        Auth::None => {}
        Auth::ApiKey(k) | Auth::Jwt(k) => req = req.bearer_auth(k),
        Auth::ApiKeyRecall(k) => req = req.bearer_auth(k).header("x-attach-memory", "recall"),
        Auth::Bot(signer) => {
            let mut r = req.build().map_err(|e| e.to_string())?;
            oba_webbotauth::reqwest_signer::sign_request(signer, &mut r, unix())
                .map_err(|e| e.to_string())?;
            let resp = client.execute(r).await.map_err(|e| e.to_string())?;
            let ok = resp.status().is_success();
            let _ = resp.bytes().await;
            return if ok {
                Ok(start.elapsed())
            } else {
                Err("status".into())
            };
        }
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        Ok(start.elapsed())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

#[derive(Clone, Copy)]
struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

fn stats(mut lat: Vec<Duration>, errors: usize, took: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Stats {
        rps: lat.len() as f64 / took.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        errors,
    }
}

/// Closed loop: `workers` clients as fast as they can for `secs`.
async fn closed(url: &str, auth: &Auth, workers: usize, secs: u64) -> Stats {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, auth) = (client.clone(), url.to_owned(), auth.clone());
            tokio::spawn(async move {
                let (mut lat, mut err) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    match one(&client, &url, &auth).await {
                        Ok(d) => lat.push(d),
                        Err(_) => err += 1,
                    }
                }
                (lat, err)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    stats(lat, errors, start.elapsed())
}

/// Connections the load generator keeps open to each target in the open-loop
/// comparisons (as wrk2's `-c`): a request waits for one when all are busy. Without a
/// bound, the client opens a connection for every request that finds none idle, and a
/// few milliseconds' stall of either process turns into a storm of thousands of new
/// connections that the stack then pays for.
const OPEN_LOOP_CONNECTIONS: usize = 64;

/// Open loop at `rate` requests per second, alternating one-second windows between
/// `a` and `b` (`windows` each, after an uncounted warm-up second each that opens the
/// connections the rate needs). Returns, for each, the pooled statistics and the median
/// of the per-window p99s: other services on this machine stall a CPU for a few
/// milliseconds now and then, and a median over windows is robust to a stall that
/// lands in one window, where the pooled p99 is not.
async fn open(
    a: (&str, &Auth),
    b: (&str, &Auth),
    rate: f64,
    windows: usize,
) -> [(Stats, Duration); 2] {
    let target = || Target {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(OPEN_LOOP_CONNECTIONS)
            .build()
            .expect("client"),
        slots: Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_CONNECTIONS)),
    };
    let clients = [target(), target()];
    let targets = [a, b];
    for (t, (url, auth)) in clients.iter().zip(targets) {
        paced(t, url, auth, rate).await;
    }
    let mut pooled: [(Vec<Duration>, usize); 2] = Default::default();
    let mut p99s: [Vec<Duration>; 2] = Default::default();
    for _ in 0..windows {
        for (i, (url, auth)) in targets.into_iter().enumerate() {
            let (lat, errors) = paced(&clients[i], url, auth, rate).await;
            p99s[i].push(stats(lat.clone(), 0, Duration::from_secs(1)).p99);
            pooled[i].0.extend(lat);
            pooled[i].1 += errors;
        }
    }
    let took = Duration::from_secs(windows as u64);
    let mut out = pooled.map(|(lat, errors)| (stats(lat, errors, took), Duration::ZERO));
    for (o, mut v) in out.iter_mut().zip(p99s) {
        v.sort();
        o.1 = v[v.len() / 2];
    }
    out
}

/// A client with a fixed number of connections.
struct Target {
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
}

/// One second at `rate`, arrivals paced by an OS thread (tokio's timer has a 1 ms
/// resolution, which would send the requests in bursts every millisecond instead of
/// evenly spaced). A request's latency runs from its arrival, so it includes any wait
/// for a free connection. Returns the latencies and the error count.
async fn paced(target: &Target, url: &str, auth: &Auth, rate: f64) -> (Vec<Duration>, usize) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = rate as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..total {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut tasks = Vec::new();
    while rx.recv().await.is_some() {
        let (client, slots) = (target.client.clone(), target.slots.clone());
        let (url, auth) = (url.to_owned(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
            one(&client, &url, &auth).await.map(|_| start.elapsed())
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => lat.push(d),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => errors += 1,
        }
    }
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    (lat, errors)
}

async fn ttfb(url: &str, auth: &Auth, n: usize) -> Duration {
    let client = reqwest::Client::new();
    let body = r#"{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut v = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Auth::ApiKey(k) = auth {
            req = req.bearer_auth(k);
        }
        let Ok(resp) = req.send().await else { continue };
        let mut s = resp.bytes_stream();
        if s.next().await.is_some() {
            v.push(start.elapsed());
        }
        while s.next().await.is_some() {}
    }
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Each process runs tokio with one worker per CPU it may use (after pinning: one each).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// How the two processes share the machine.
#[derive(Clone, Copy)]
struct Layout {
    /// The stack on CPU 1, the generator on CPU 0 (`taskset`, two or more cores).
    pin: bool,
    /// Both at SCHED_FIFO priority 10 (`chrt`, needs root), so the machine's other
    /// services, at normal priority, wait instead of preempting them.
    realtime: bool,
}

impl Layout {
    /// Pins and prioritises this process (before its runtime starts, so the runtime's
    /// threads inherit both) and notes what took effect.
    fn apply(realtime: bool) -> Self {
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let pid = std::process::id().to_string();
        let pin = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
            && run("taskset", &["-p", "-c", "0", &pid]);
        let realtime = realtime && {
            let ok = run("chrt", &["-f", "-p", "10", &pid]);
            if !ok {
                eprintln!("--realtime: chrt failed (root is needed); normal priority");
            }
            ok
        };
        Layout { pin, realtime }
    }

    fn describe(self) -> String {
        let mut s = if self.pin {
            "stack pinned to CPU 1, load generator to CPU 0, one tokio worker each".to_owned()
        } else {
            "not pinned".to_owned()
        };
        if self.realtime {
            s.push_str(", both at SCHED_FIFO 10");
        }
        s
    }

    /// Starts the stack in a child process laid out the same way; returns it (killed
    /// on drop) and the URLs and credentials it printed.
    fn spawn_stack(self) -> Result<(Child, serde_json::Value), Box<dyn std::error::Error>> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?.display().to_string();
        let mut argv: Vec<&str> = Vec::new();
        if self.pin {
            argv.extend(["taskset", "-c", "1"]);
        }
        if self.realtime {
            argv.extend(["chrt", "-f", "10"]);
        }
        argv.push(&exe);
        let mut child = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .arg("serve-stack")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let child = Child(child);
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        Ok((child, serde_json::from_str(&line)?))
    }
}

const USAGE: &str = "usage: cargo run --release -p xtask -- bench-gateway [SECONDS] [CONCURRENCY]
       cargo run --release -p xtask -- bench-gateway-tail [WINDOWS] [RATE] [--realtime]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let realtime = args.iter().any(|a| a == "--realtime");
    args.retain(|a| a != "--realtime");
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        Some("serve-stack") => runtime()?.block_on(async {
            let info = stack().await?;
            println!("{info}");
            std::future::pending::<()>().await;
            Ok(())
        }),
        Some("bench-gateway") if !realtime => {
            let secs = num(1).unwrap_or(5).max(1);
            let workers = num(2).map_or(16, |n| n.max(1) as usize);
            let layout = Layout::apply(realtime);
            runtime()?.block_on(bench(secs, workers, layout))
        }
        Some("bench-gateway-tail") => {
            let windows = num(1).map_or(10, |n| n.max(1) as usize);
            let rate = num(2).unwrap_or(0) as f64;
            let layout = Layout::apply(realtime);
            runtime()?.block_on(tail(windows, rate, layout))
        }
        _ => {
            if realtime {
                eprintln!("--realtime is for bench-gateway-tail only: at real-time priority the memory and metering writers wait behind the proxy");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Waits until the gateways behind these chat URLs have written everything they queued
/// (their `*_queue_depth` gauges at 0), at most a minute, then a second more.
async fn settle(chat_urls: &[&str]) {
    let client = reqwest::Client::new();
    for url in chat_urls {
        let metrics = url.replace("/v1/chat/completions", "/metrics");
        for i in 0..600 {
            let text = match client.get(&metrics).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => break,
            };
            // Queued items, or items spilled to a journal (the queue was full) and not
            // replayed yet: the writer still has work that would share the core.
            let value = |prefix: &str| -> Vec<f64> {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                    .collect()
            };
            let queued = text
                .lines()
                .any(|l| l.contains("_queue_depth") && !l.starts_with('#') && !l.ends_with(" 0"));
            let spilled = ["memory", "usage"].iter().any(|w| {
                let journaled = value(&format!("attach_{w}_written_total{{to=\"journal\"}}"));
                let replayed = value(&format!("attach_{w}_written_total{{to=\"replayed\"}}"));
                journaled.iter().sum::<f64>() > replayed.iter().sum::<f64>()
            });
            if spilled && i % 50 == 0 {
                eprintln!("waiting for a writer to replay its journal ({metrics})");
            }
            let busy = queued || spilled;
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Runs and prints one open-loop comparison of `a` and `b` at `rate`.
async fn compare(
    title: String,
    rate: f64,
    a: (&str, &str, Auth),
    b: (&str, &str, Auth),
    windows: usize,
) {
    let results = open((a.1, &a.2), (b.1, &b.2), rate, windows).await;
    println!("\n{title}");
    println!("| path | p50 ms | p99 ms (pooled) | p99 ms (median of windows) | errors |\n|---|---:|---:|---:|---:|");
    for (name, (s, p99)) in [a.0, b.0].into_iter().zip(&results) {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} |",
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            s.errors
        );
    }
    let [(s0, p0), (s1, p1)] = results;
    println!(
        "added p99: {:.2} ms (median of windows), {:.2} ms (pooled)",
        (p1.as_secs_f64() - p0.as_secs_f64()) * 1e3,
        (s1.p99.as_secs_f64() - s0.p99.as_secs_f64()) * 1e3
    );
}

/// Kills the stack process when the benchmark ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The half-load comparison alone (direct against the gateway with an API key), at
/// `rate` or at half the gateway's closed-loop maximum: a quick way to study the tail.
async fn tail(windows: usize, rate: f64, layout: Layout) -> Result<(), Box<dyn std::error::Error>> {
    let (_child, info) = layout.spawn_stack()?;
    let s = |k: &str| info[k].as_str().unwrap_or_default().to_owned();
    let (direct, through) = (s("direct"), s("gateway"));
    let key = Auth::ApiKey(s("api_key"));
    let rate = if rate > 0.0 {
        rate
    } else {
        closed(&through, &key, 16, 3).await.rps / 2.0
    };
    println!("{}", layout.describe());
    compare(
        format!("{rate:.0} req/s, {windows} one-second windows each, interleaved:"),
        rate,
        ("upstream directly", direct.as_str(), Auth::None),
        ("gateway, API key", through.as_str(), key),
        windows,
    )
    .await;
    Ok(())
}

/// The load generator, in this process; the stack (model server, directory, issuer,
/// gateway) in a child process, so the two do not share a runtime.
async fn bench(
    secs: u64,
    workers: usize,
    layout: Layout,
) -> Result<(), Box<dyn std::error::Error>> {
    let (_child, info) = layout.spawn_stack()?;
    let s = |k: &str| info[k].as_str().unwrap_or_default().to_owned();
    let (direct, through, api_key, jwt) = (s("direct"), s("gateway"), s("api_key"), s("jwt"));
    let through_memory = s("gateway_memory");
    let through_metering = s("gateway_metering");
    let bot = Jwk::parse(&info["bot_jwk"].to_string())?;
    let signer = Arc::new(
        oba_webbotauth::WebBotAuthSigner::new(&bot)?.with_signature_agent(&s("directory"))?,
    );
    // Warm up (connections, key fetch, JWKS fetch).
    let client = reqwest::Client::new();
    for auth in [
        Auth::ApiKey(api_key.clone()),
        Auth::Bot(signer.clone()),
        Auth::Jwt(jwt.clone()),
    ] {
        one(&client, &through, &auth)
            .await
            .map_err(|e| format!("warm-up failed: {e}"))?;
    }

    println!(
        "gateway load benchmark: {secs} s per row, {workers} concurrent clients, loopback, {}\n",
        layout.describe()
    );
    println!("| path | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    let windows = secs.max(3) as usize;
    let key = Auth::ApiKey(api_key.clone());
    let rows = [
        ("upstream directly", direct.as_str(), Auth::None),
        (
            "gateway, API key",
            through.as_str(),
            Auth::ApiKey(api_key.clone()),
        ),
        (
            "gateway, Web Bot Auth Ed25519 (client signs each request)",
            through.as_str(),
            Auth::Bot(signer.clone()),
        ),
        (
            "gateway, JWT (EdDSA)",
            through.as_str(),
            Auth::Jwt(jwt.clone()),
        ),
        (
            "gateway, API key, memory on (each turn written to SQLite)",
            through_memory.as_str(),
            Auth::ApiKey(api_key.clone()),
        ),
        (
            "gateway, API key, memory recall (full-text search + injection)",
            through_memory.as_str(),
            Auth::ApiKeyRecall(api_key.clone()),
        ),
        (
            "gateway, API key, metering and audit on (a usage record per request to SQLite, an audit record to a file)",
            through_metering.as_str(),
            Auth::ApiKey(api_key.clone()),
        ),
    ];
    // The plain gateway's rows and its comparison come first: the memory and metering
    // rows leave SQLite writers (same process, same core) busy for a while after them.
    let mut max = std::collections::HashMap::new();
    for (i, (name, url, auth)) in rows.iter().enumerate() {
        if i == 4 {
            let half = max["gateway, API key"] / 2.0;
            compare(
                format!("At half the API-key maximum ({half:.0} req/s, open loop, {windows} one-second windows each, interleaved):"),
                half,
                ("upstream directly", direct.as_str(), Auth::None),
                ("gateway, API key", through.as_str(), key.clone()),
                windows,
            )
            .await;
            println!(
                "\n| path (closed loop, {workers} clients) | req/s | p50 ms | p99 ms | errors |"
            );
            println!("|---|---:|---:|---:|---:|");
        }
        let s = closed(url, auth, workers, secs).await;
        max.insert(*name, s.rps);
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            s.rps,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.errors
        );
    }
    // A feature is compared at half of ITS maximum: on the stack's one core its writer
    // shares the CPU with the proxy, and past its maximum any gateway queues.
    let half_memory = max[rows[4].0] / 2.0;
    let half_metering = max[rows[6].0] / 2.0;
    for (title, rate, a, b) in [
        (
            format!("Memory off vs on (every turn written), at half the memory-on maximum ({half_memory:.0} req/s), interleaved windows:"),
            half_memory,
            ("memory off", through.as_str(), key.clone()),
            ("memory on", through_memory.as_str(), key.clone()),
        ),
        (
            format!("Metering and audit off vs on, at half the metering-on maximum ({half_metering:.0} req/s), interleaved windows:"),
            half_metering,
            ("metering and audit off", through.as_str(), key.clone()),
            ("metering and audit on", through_metering.as_str(), key.clone()),
        ),
    ] {
        // Let background writers (memory turns, usage records) catch up first.
        settle(&[&through_memory, &through_metering]).await;
        compare(title, rate, a, b, windows).await;
    }
    let t_direct = ttfb(&direct, &Auth::None, 200).await;
    let t_gw = ttfb(&through, &Auth::ApiKey(api_key), 200).await;
    println!(
        "\nstreaming time to first byte (median of 200): direct {:.2} ms, through the gateway {:.2} ms, added {:.2} ms",
        t_direct.as_secs_f64() * 1e3,
        t_gw.as_secs_f64() * 1e3,
        (t_gw.as_secs_f64() - t_direct.as_secs_f64()) * 1e3
    );
    Ok(())
}
