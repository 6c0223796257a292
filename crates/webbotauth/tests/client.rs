//! The directory client against real HTTP servers on loopback: an axum server per test on
//! `127.0.0.1:0` (one of them behind TLS with a CA generated in the test), a manual clock
//! injected into the client so that cache lifetimes pass without sleeping.
//!
//! Covers caching and revalidation (`ETag` / `If-None-Match`, `max-age`), stale-if-error,
//! negative caching, fetch coalescing, the rate-limited refetch on an unknown key, the
//! refusals (redirects, oversize bodies, wrong media types, loopback and private
//! addresses), TLS with given roots, signed directory responses, and the `Verifier` end
//! to end with a bot signing through `WebBotAuthSigner`.
#![cfg(feature = "client")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response;
use axum::Router;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Message};
use oba_webbotauth::agent::{AgentRef, AgentType, SignatureAgent};
use oba_webbotauth::client::{ClientConfig, Clock, DirectoryClient, FetchError, Verifier};
use oba_webbotauth::directory::{signed_directory_response, MEDIA_TYPE, WELL_KNOWN_PATH};
use oba_webbotauth::nonce::InMemoryNonceStore;
use oba_webbotauth::{LookupError, Outcome, VerifyPolicy, WebBotAuthSigner};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use url::Url;

// ---------------------------------------------------------------------------------------
// The manual clock.

/// A clock that only moves when told to.
#[derive(Debug)]
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
}

/// Loopback allowed (the test servers are on 127.0.0.1), time from `clock`.
fn loopback_config(clock: &Arc<ManualClock>) -> ClientConfig {
    ClientConfig {
        allow_loopback: true,
        clock: clock.clone(),
        ..Default::default()
    }
}

fn client(config: ClientConfig) -> Arc<DirectoryClient> {
    Arc::new(DirectoryClient::new(config).expect("client"))
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// The test servers.

/// What a server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    host: Option<String>,
    accept: Option<String>,
    if_none_match: Option<String>,
}

enum ReplyBody {
    /// Sent with a `Content-Length`.
    Full(Vec<u8>),
    /// Streamed, chunk by chunk, without a `Content-Length` (chunked transfer coding).
    Chunked(Vec<Vec<u8>>),
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: ReplyBody,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Full(Vec::new()),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = ReplyBody::Full(body);
        self
    }

    /// A 200 directory response for `keys` (public forms, `kid` = thumbprint), with the
    /// directory media type.
    fn directory(keys: &[&Jwk]) -> Self {
        Reply::status(200)
            .header("Content-Type", MEDIA_TYPE)
            .body(directory_body(keys))
    }

    /// A response built from an `oba_httpsig` message (a signed directory response).
    fn from_message(msg: &Message) -> Self {
        let mut r = Reply::status(200).body(msg.body().to_vec());
        for (name, value) in msg.headers() {
            r = r.header(name, std::str::from_utf8(value).unwrap());
        }
        r
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct ServerState {
    seen: Mutex<Vec<Seen>>,
    ok: AtomicUsize,
    respond: Mutex<Responder>,
    delay: Duration,
}

/// One server with its own state; stopped when dropped.
struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Every request seen.
    fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Requests answered 200.
    fn ok_count(&self) -> usize {
        self.state.ok.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Answers from now on with `respond`.
    fn set(&self, respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.state.respond.lock().unwrap() = Arc::new(respond);
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The directory agent at this server's origin.
    fn agent(&self) -> AgentRef {
        directory_agent(&format!("{}/", self.origin()))
    }
}

fn directory_agent(origin: &str) -> AgentRef {
    AgentRef {
        url: Url::parse(origin).unwrap(),
        kind: AgentType::Directory,
    }
}

async fn handle(State(st): State<Arc<ServerState>>, req: Request) -> Response<Body> {
    // (A block: the request's body is not Sync, so no borrow of it may live across the
    // await below.)
    let seen = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Seen {
            path: req.uri().path().to_owned(),
            host: header("host"),
            accept: header("accept"),
            if_none_match: header("if-none-match"),
        }
    };
    drop(req);
    st.seen.lock().unwrap().push(seen.clone());
    if !st.delay.is_zero() {
        tokio::time::sleep(st.delay).await;
    }
    let respond = st.respond.lock().unwrap().clone();
    let reply = respond(&seen);
    if reply.status == 200 {
        st.ok.fetch_add(1, Ordering::SeqCst);
    }
    let mut b = Response::builder().status(reply.status);
    for (n, v) in &reply.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let body = match reply.body {
        ReplyBody::Full(v) => Body::from(v),
        ReplyBody::Chunked(chunks) => Body::from_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        )),
    };
    b.body(body).unwrap()
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn new_state(respond: Responder, delay: Duration) -> Arc<ServerState> {
    Arc::new(ServerState {
        seen: Mutex::new(Vec::new()),
        ok: AtomicUsize::new(0),
        respond: Mutex::new(respond),
        delay,
    })
}

/// A plain http server on `127.0.0.1:0`.
async fn serve(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TestServer {
    serve_delayed(respond, Duration::ZERO).await
}

/// A plain http server that waits `delay` before answering each request.
async fn serve_delayed(
    respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    delay: Duration,
) -> TestServer {
    let state = new_state(Arc::new(respond), delay);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer { addr, state, task }
}

/// A TLS listener for axum: accepts TCP, completes the handshake, and skips connections
/// whose handshake fails (e.g. a client that does not trust the test CA).
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An https server on `127.0.0.1:0`.
async fn serve_tls(
    tls: Arc<rustls::ServerConfig>,
    respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> TestServer {
    let state = new_state(Arc::new(respond), Duration::ZERO);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
    };
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer { addr, state, task }
}

/// A test CA and a server configuration whose leaf certificate (issued by that CA) is for
/// `localhost` and `127.0.0.1`.
struct TestPki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "oba-webbotauth test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &*ca).unwrap();

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
    .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestPki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

// ---------------------------------------------------------------------------------------
// Keys.

/// A fresh private key and its thumbprint.
fn new_key(alg: Algorithm) -> (Jwk, String) {
    let jwk = Jwk::generate(alg).unwrap();
    let thumbprint = jwk.thumbprint().unwrap();
    (jwk, thumbprint)
}

/// `{"keys":[...]}` with the public forms, `kid` = thumbprint.
fn directory_body(keys: &[&Jwk]) -> Vec<u8> {
    let public: Vec<Jwk> = keys
        .iter()
        .map(|k| {
            let mut p = k.public().unwrap();
            p.kid = Some(k.thumbprint().unwrap());
            p
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "keys": public })).unwrap()
}

fn thumbprints(set: &oba_webbotauth::client::KeySet) -> Vec<String> {
    let mut t: Vec<String> = set.keys.iter().map(|k| k.thumbprint.clone()).collect();
    t.sort();
    t
}

// ---------------------------------------------------------------------------------------
// 1. Fetch and cache.

#[tokio::test]
async fn fetches_a_directory_over_http_loopback_and_caches_it() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let server = serve(move |_| Reply::directory(&[&a])).await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));

    let set = c.keys(&server.agent()).await.expect("keys");
    assert_eq!(thumbprints(&set), vec![ta.clone()]);
    assert!(set.signed_by.is_empty(), "an unsigned directory");
    let seen = server.seen();
    assert_eq!(seen[0].path, WELL_KNOWN_PATH);
    assert_eq!(seen[0].accept.as_deref(), Some(MEDIA_TYPE));

    let again = c.keys(&server.agent()).await.expect("keys from cache");
    assert_eq!(thumbprints(&again), vec![ta]);
    assert_eq!(server.hits(), 1, "the second call is served from the cache");
    assert_eq!(c.fetch_count(), 1);
}

// 2. Conditional request.

#[tokio::test]
async fn revalidates_with_if_none_match_and_accepts_304() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let server = serve(move |seen| {
        if seen.if_none_match.as_deref() == Some("\"v1\"") {
            Reply::status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=10")
        } else {
            Reply::directory(&[&a])
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=10")
        }
    })
    .await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));
    let agent = server.agent();

    c.keys(&agent).await.expect("first fetch");
    assert_eq!(server.seen()[0].if_none_match, None);
    clock.advance(Duration::from_secs(5));
    c.keys(&agent).await.expect("fresh");
    assert_eq!(server.hits(), 1, "fresh for max-age=10");

    clock.advance(Duration::from_secs(6)); // 11 s: stale
    let set = c.keys(&agent).await.expect("revalidated");
    assert_eq!(thumbprints(&set), vec![ta.clone()]);
    assert_eq!(server.hits(), 2, "revalidated once");
    assert_eq!(server.seen()[1].if_none_match.as_deref(), Some("\"v1\""));
    assert_eq!(server.ok_count(), 1, "the revalidation was answered 304");

    // Fresh again for the 304's max-age, then revalidated again with the same ETag.
    c.keys(&agent).await.expect("fresh after 304");
    assert_eq!(server.hits(), 2);
    clock.advance(Duration::from_secs(11));
    let set = c.keys(&agent).await.expect("revalidated again");
    assert_eq!(thumbprints(&set), vec![ta]);
    assert_eq!(server.hits(), 3);
    assert_eq!(server.seen()[2].if_none_match.as_deref(), Some("\"v1\""));
    assert_eq!(server.ok_count(), 1);
    assert_eq!(c.fetch_count(), 3);
}

// 3. Stale-if-error.

#[tokio::test]
async fn serves_stale_keys_while_the_origin_fails_then_gives_up() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let server =
        serve(move |_| Reply::directory(&[&a]).header("Cache-Control", "max-age=10")).await;
    let clock = ManualClock::new();
    let c = client(ClientConfig {
        stale_if_error: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        ..loopback_config(&clock)
    });
    let agent = server.agent();

    c.keys(&agent).await.expect("good fetch");
    server.set(|_| Reply::status(500));

    clock.advance(Duration::from_secs(11)); // t = 11: stale, within the stale window
    let set = c.keys(&agent).await.expect("stale keys while failing");
    assert_eq!(thumbprints(&set), vec![ta.clone()]);
    assert_eq!(server.hits(), 2, "the origin was tried again");

    // Immediately again: stale keys, and the failing origin is not hammered.
    let set = c.keys(&agent).await.expect("stale keys");
    assert_eq!(thumbprints(&set), vec![ta.clone()]);
    assert_eq!(server.hits(), 2, "retried only after the negative TTL");

    // Several failures within the stale window never evict the good keys.
    for i in 0..3 {
        clock.advance(Duration::from_secs(6)); // t = 17, 23, 29
        let set = c.keys(&agent).await.expect("stale keys after failures");
        assert_eq!(thumbprints(&set), vec![ta.clone()]);
        assert_eq!(server.hits(), 3 + i, "one retry per negative TTL");
    }

    clock.advance(Duration::from_secs(42)); // t = 71 > max-age 10 + stale 60
    let err = c.keys(&agent).await.expect_err("beyond the stale window");
    assert_eq!(err, FetchError::Status(500));
    assert_eq!(server.hits(), 6);
}

#[tokio::test]
async fn failures_after_the_stale_window_are_cached_negatively() {
    // After the stale window, good-but-expired keys are no longer served; the failure
    // must then be remembered for the negative TTL like any other (the module docs: "the
    // origin is retried only after the negative TTL"), not refetched on every call.
    let (a, _) = new_key(Algorithm::Ed25519);
    let server =
        serve(move |_| Reply::directory(&[&a]).header("Cache-Control", "max-age=10")).await;
    let clock = ManualClock::new();
    let c = client(ClientConfig {
        stale_if_error: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        ..loopback_config(&clock)
    });
    let agent = server.agent();
    c.keys(&agent).await.expect("good fetch");
    server.set(|_| Reply::status(500));

    clock.advance(Duration::from_secs(71));
    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    assert_eq!(server.hits(), 2);
    for _ in 0..3 {
        assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    }
    assert_eq!(
        server.hits(),
        2,
        "a failing origin must not be refetched on every call once the stale window is over"
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    assert_eq!(server.hits(), 3, "retried after the negative TTL");
}

// 4. Negative cache.

#[tokio::test]
async fn caches_failures_negatively() {
    let server = serve(|_| Reply::status(500)).await;
    let clock = ManualClock::new();
    let c = client(ClientConfig {
        negative_ttl: Duration::from_secs(10),
        ..loopback_config(&clock)
    });
    let agent = server.agent();

    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    assert_eq!(server.hits(), 1);
    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    clock.advance(Duration::from_secs(9));
    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    assert_eq!(server.hits(), 1, "remembered for the negative TTL");
    assert_eq!(c.fetch_count(), 1);

    clock.advance(Duration::from_secs(2)); // 11 s > 10 s
    assert_eq!(c.keys(&agent).await.unwrap_err(), FetchError::Status(500));
    assert_eq!(server.hits(), 2, "tried again after the negative TTL");
}

// 5. Coalescing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let server = serve_delayed(move |_| Reply::directory(&[&a]), Duration::from_millis(300)).await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));
    let agent = server.agent();

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, agent) = (c.clone(), agent.clone());
            tokio::spawn(async move { c.keys(&agent).await })
        })
        .collect();
    for t in tasks {
        let set = t.await.unwrap().expect("keys");
        assert_eq!(thumbprints(&set), vec![ta.clone()]);
    }
    assert_eq!(server.hits(), 1, "20 concurrent misses, one request");
    assert_eq!(c.fetch_count(), 1);
}

// 6. Refetch on an unknown key.

#[tokio::test]
async fn refetches_once_on_an_unknown_key_and_rate_limits_it() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let (b, tb) = new_key(Algorithm::EcdsaP256Sha256);
    let (_, tc) = new_key(Algorithm::Ed25519);
    let (_, td) = new_key(Algorithm::Ed25519);
    let a2 = a.clone();
    let server = serve(move |_| Reply::directory(&[&a2])).await;
    let clock = ManualClock::new();
    let c = client(ClientConfig {
        unknown_key_refetch_interval: Duration::from_secs(30),
        ..loopback_config(&clock)
    });
    let agent = server.agent();

    c.keys(&agent).await.expect("keys");
    assert_eq!(server.hits(), 1);

    // The agent rotates: B is published next to A.
    server.set(move |_| Reply::directory(&[&a, &b]));
    let kb = c.key(&agent, &tb).await.expect("B after one refetch");
    assert_eq!(kb.thumbprint, tb);
    assert_eq!(server.hits(), 2, "one refetch for the unknown key");
    assert_eq!(
        c.key(&agent, &ta).await.expect("A").thumbprint,
        ta,
        "A still known"
    );
    assert_eq!(server.hits(), 2);

    // Another unknown key right away: no refetch (rate limit).
    assert_eq!(c.key(&agent, &tc).await.unwrap_err(), LookupError::NotFound);
    assert_eq!(
        server.hits(),
        2,
        "an unknown key within unknown_key_refetch_interval of the last refetch must not refetch"
    );
    assert_eq!(c.key(&agent, &td).await.unwrap_err(), LookupError::NotFound);
    assert_eq!(server.hits(), 2);

    // After the interval, one more refetch.
    clock.advance(Duration::from_secs(31));
    assert_eq!(c.key(&agent, &tc).await.unwrap_err(), LookupError::NotFound);
    assert_eq!(server.hits(), 3, "one refetch after the interval");
    assert_eq!(c.key(&agent, &td).await.unwrap_err(), LookupError::NotFound);
    assert_eq!(server.hits(), 3);
}

// 7. Redirects.

#[tokio::test]
async fn refuses_redirects_without_following_them() {
    let (a, _) = new_key(Algorithm::Ed25519);
    let target = serve(move |_| Reply::directory(&[&a])).await;
    let location = format!("{}{WELL_KNOWN_PATH}", target.origin());
    let loc = location.clone();
    let server = serve(move |_| Reply::status(302).header("Location", &loc)).await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));

    let err = c.keys(&server.agent()).await.expect_err("redirect");
    assert_eq!(err, FetchError::Redirect(location));
    assert_eq!(server.hits(), 1);
    assert_eq!(target.hits(), 0, "the redirect target is never requested");
}

// 8. Oversize bodies.

#[tokio::test]
async fn refuses_bodies_larger_than_max_bytes() {
    let big = vec![b' '; 4096];
    let fixed = {
        let big = big.clone();
        serve(move |_| {
            Reply::status(200)
                .header("Content-Type", MEDIA_TYPE)
                .body(big.clone())
        })
        .await
    };
    let chunked = serve(move |_| Reply {
        status: 200,
        headers: vec![("Content-Type".into(), MEDIA_TYPE.into())],
        body: ReplyBody::Chunked(big.chunks(512).map(<[u8]>::to_vec).collect()),
    })
    .await;
    let clock = ManualClock::new();
    let c = client(ClientConfig {
        max_bytes: 1024,
        ..loopback_config(&clock)
    });

    let err = c
        .keys(&fixed.agent())
        .await
        .expect_err("Content-Length 4096");
    assert_eq!(err, FetchError::TooLarge(1024));
    assert_eq!(fixed.hits(), 1);

    let err = c.keys(&chunked.agent()).await.expect_err("chunked 4096");
    assert_eq!(err, FetchError::TooLarge(1024));
    assert_eq!(chunked.hits(), 1);
}

// 9. Media type.

#[tokio::test]
async fn refuses_a_directory_with_the_wrong_media_type() {
    let (a, _) = new_key(Algorithm::Ed25519);
    let server = serve(move |_| {
        Reply::status(200)
            .header("Content-Type", "application/json")
            .body(directory_body(&[&a]))
    })
    .await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));

    let err = c.keys(&server.agent()).await.expect_err("wrong media type");
    assert_eq!(err, FetchError::MediaType("application/json".into()));
    assert_eq!(server.hits(), 1);
}

// 10. Loopback and private addresses.

#[tokio::test]
async fn refuses_loopback_and_private_addresses_by_default() {
    let (a, _) = new_key(Algorithm::Ed25519);
    let server = serve(move |_| Reply::directory(&[&a])).await;
    let port = server.port();
    let c = client(ClientConfig::default());

    // Plain http to an IP literal: refused before any network attempt.
    let agent = SignatureAgent::parse(&format!(
        r#"a="http://127.0.0.1:{port}/jwks.json";type=jwks_uri"#
    ))
    .unwrap()
    .members[0]
        .resolve(true)
        .unwrap();
    assert!(
        matches!(c.keys(&agent).await, Err(FetchError::Refused(_))),
        "http://127.0.0.1"
    );
    assert_eq!(c.fetch_count(), 0);

    // https to an IP literal in 10/8: refused before any network attempt.
    let agent = SignatureAgent::parse(r#"a="https://10.0.0.1/jwks.json";type=jwks_uri"#)
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    assert!(
        matches!(c.keys(&agent).await, Err(FetchError::Refused(_))),
        "https://10.0.0.1"
    );
    assert_eq!(
        c.fetch_count(),
        0,
        "no network attempt for a private literal"
    );

    // https to the loopback literal [::1]: refused before any network attempt.
    let agent = directory_agent(&format!("https://[::1]:{port}/"));
    assert!(matches!(c.keys(&agent).await, Err(FetchError::Refused(_))));
    assert_eq!(c.fetch_count(), 0);

    // https to a name that resolves to loopback: refused by the resolver, after DNS.
    let agent = SignatureAgent::parse(&format!(r#"a="https://localhost:{port}""#))
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    match c.keys(&agent).await {
        Err(FetchError::Refused(msg)) => {
            assert!(msg.contains("forbidden address"), "{msg}")
        }
        other => panic!("https://localhost must be refused, got {other:?}"),
    }
    assert_eq!(server.hits(), 0, "nothing reached the server");
}

// 11. TLS with a test CA.

#[tokio::test]
async fn fetches_over_https_with_a_given_root_and_fails_without_it() {
    let pki = test_pki();
    let (a, ta) = new_key(Algorithm::Ed25519);
    let server = serve_tls(pki.server.clone(), move |_| Reply::directory(&[&a])).await;
    let origin = format!("https://localhost:{}/", server.port());
    let agent = SignatureAgent::parse(&format!(r#"sig1="{origin}""#))
        .unwrap()
        .members[0]
        .resolve(false)
        .unwrap();
    assert_eq!(
        agent.fetch_url().as_str(),
        format!("https://localhost:{}{WELL_KNOWN_PATH}", server.port())
    );
    let clock = ManualClock::new();

    let trusting = client(ClientConfig {
        root_certificates_pem: vec![pki.ca_pem.clone().into_bytes()],
        only_given_roots: true,
        ..loopback_config(&clock)
    });
    let set = trusting.keys(&agent).await.expect("https with the test CA");
    assert_eq!(thumbprints(&set), vec![ta]);
    assert_eq!(server.ok_count(), 1);
    assert_eq!(
        server.seen()[0].host.as_deref(),
        Some(format!("localhost:{}", server.port()).as_str())
    );

    let untrusting = client(loopback_config(&clock));
    match untrusting.keys(&agent).await {
        Err(FetchError::Transport(_)) => {}
        other => panic!("an unknown CA must fail as a transport error, got {other:?}"),
    }
    assert_eq!(server.hits(), 1, "no request over an untrusted connection");
}

// 12. Signed directories.

#[tokio::test]
async fn verifies_signed_directory_responses() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let (b, tb) = new_key(Algorithm::EcdsaP256Sha256);
    let keys = vec![a, b];
    let signed = {
        let keys = keys.clone();
        serve(move |seen| {
            let req = Message::request("GET", WELL_KNOWN_PATH)
                .unwrap()
                .with_header("Host", seen.host.clone().unwrap_or_default());
            let msg = signed_directory_response(&keys, &req, unix_now(), 3600).unwrap();
            Reply::from_message(&msg)
        })
        .await
    };
    let corrupted = serve(move |seen| {
        let req = Message::request("GET", WELL_KNOWN_PATH)
            .unwrap()
            .with_header("Host", seen.host.clone().unwrap_or_default());
        let msg = signed_directory_response(&keys, &req, unix_now(), 3600).unwrap();
        let mut reply = Reply::from_message(&msg);
        for (name, value) in &mut reply.headers {
            if name.eq_ignore_ascii_case("signature") {
                *value = corrupt_signature(value);
            }
        }
        reply
    })
    .await;
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));

    let set = c.keys(&signed.agent()).await.expect("signed directory");
    let mut expected = vec![ta.clone(), tb.clone()];
    expected.sort();
    assert_eq!(thumbprints(&set), expected);
    let mut signed_by = set.signed_by.clone();
    signed_by.sort();
    assert_eq!(signed_by, expected, "both keys signed the response");

    match c.keys(&corrupted.agent()).await {
        Err(FetchError::Invalid(msg)) => {
            assert!(msg.contains("directory signature"), "{msg}");
            assert!(msg.contains("binding0"), "the corrupted one: {msg}");
        }
        other => panic!("a corrupted signature must be Invalid, got {other:?}"),
    }
    assert_eq!(corrupted.hits(), 1);
}

/// Flips one base64 character in the middle of the first signature's byte sequence
/// (`binding0=:...:`), keeping the value well-formed.
fn corrupt_signature(value: &str) -> String {
    let start = value.find(":").unwrap() + 1;
    let end = start + value[start..].find(':').unwrap();
    let mid = (start + end) / 2;
    let mut bytes = value.as_bytes().to_vec();
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

// 13. End to end.

#[tokio::test]
async fn verifier_end_to_end_with_a_loopback_directory() {
    let (a, ta) = new_key(Algorithm::Ed25519);
    let published = a.clone();
    let server = serve(move |_| Reply::directory(&[&published])).await;
    let origin = server.origin();
    let clock = ManualClock::new();
    let c = client(loopback_config(&clock));
    let policy = VerifyPolicy {
        allow_http_loopback: true,
        ..Default::default()
    };
    let verifier = Verifier::new(policy.clone())
        .with_client(c.clone())
        .with_nonce_store(Arc::new(InMemoryNonceStore::default()));

    let signed_request = |key: &Jwk| {
        let signer = WebBotAuthSigner::new(key)
            .unwrap()
            .with_signature_agent(&origin)
            .unwrap();
        let mut req = Message::request("GET", "/article?id=7")
            .unwrap()
            .with_header("Host", "site.example");
        for (name, value) in signer.sign(&req, b"", unix_now()).unwrap() {
            req.append_header(name, value);
        }
        req
    };

    // The bot's request verifies, with the key fetched from its directory.
    let req = signed_request(&a);
    match verifier.verify(&req, unix_now()).await {
        Outcome::Verified(v) => {
            assert_eq!(v.thumbprint, ta);
            let agent = v.agent.expect("the agent");
            assert_eq!(agent.url.as_str(), format!("{origin}/"));
            assert_eq!(agent.kind, AgentType::Directory);
        }
        other => panic!("expected Verified, got {other:?}"),
    }
    assert_eq!(server.hits(), 1);

    // The same request again is a replay.
    match verifier.verify(&req, unix_now()).await {
        Outcome::Invalid(r) => assert_eq!(r.code, "replay"),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(server.hits(), 1, "keys from the cache");

    // A key the directory does not publish: one refetch, then unverified.
    let (x, _) = new_key(Algorithm::Ed25519);
    match verifier.verify(&signed_request(&x), unix_now()).await {
        Outcome::Unverified(r) => assert_eq!(r.code, "unknown_key"),
        other => panic!("expected unknown_key, got {other:?}"),
    }
    assert_eq!(server.hits(), 2, "exactly one refetch for the unknown key");
    assert_eq!(c.fetch_count(), 2);

    // An agent outside the trusted prefixes is not fetched, and not verified.
    let picky = Verifier::new(policy)
        .with_client(c.clone())
        .with_nonce_store(Arc::new(InMemoryNonceStore::default()))
        .with_trusted_agents(vec!["https://only.example/".into()]);
    match picky.verify(&signed_request(&a), unix_now()).await {
        Outcome::Unverified(r) => assert_eq!(r.code, "keys_unavailable"),
        other => panic!("expected Unverified, got {other:?}"),
    }
    assert_eq!(server.hits(), 2, "an untrusted agent is never fetched");
}
