//! The directory client (feature `client`): fetches agents' keys safely and caches them.
//!
//! * https only (plain http and loopback only when [`ClientConfig::allow_loopback`] is set,
//!   for tests); status 200 (or 304 on revalidation) only; redirects refused; limits on
//!   bytes, keys and time; the media type checked; `kid` = thumbprint enforced for
//!   directories; directory response signatures verified when present.
//! * Server-side request forgery: every address a name resolves to is checked *after* DNS
//!   resolution (and IP literals before connecting): loopback, private, link-local,
//!   unique-local, CGNAT, multicast, unspecified and cloud metadata addresses are refused
//!   unless allowed.
//! * Caching per RFC 9111: `Cache-Control: max-age` (minus `Age`), `no-store`, `no-cache`,
//!   `stale-if-error`; `ETag` revalidation with `If-None-Match`. A failed fetch never
//!   evicts good keys (they are served stale within `stale-if-error`, default one hour);
//!   failures without good keys are cached negatively for at most five minutes; one
//!   rate-limited refetch when a signature names an unknown key; concurrent misses for one
//!   URL share a single fetch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{HttpMessage, LabelledEntry, Message};
use url::Url;

use crate::agent::{AgentRef, AgentType};
use crate::card::SignatureAgentCard;
use crate::directory::{Directory, MEDIA_TYPE};
use crate::keys::{AgentKey, KeyLookup, LookupError, StaticKeys};
use crate::nonce::NonceStore;
use crate::verify::{
    agent_of, parse_signatures, signature_agent_field, verify_entries, Outcome, VerifyPolicy,
};

/// A source of monotonic time (injectable for tests).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Directory client settings. The defaults are the safe production ones.
#[derive(Clone)]
pub struct ClientConfig {
    /// Allow loopback addresses and plain http to them (tests only).
    pub allow_loopback: bool,
    /// Allow private, link-local and unique-local addresses (internal deployments).
    pub allow_private: bool,
    /// Largest response body, bytes (default 64 KiB).
    pub max_bytes: usize,
    /// Whole-request timeout (default 5 s).
    pub timeout: Duration,
    /// Freshness when the response says nothing (default 5 minutes).
    pub default_ttl: Duration,
    /// Longest freshness honoured (default 24 hours).
    pub max_ttl: Duration,
    /// How long a failure is remembered (capped at 5 minutes; default 1 minute).
    pub negative_ttl: Duration,
    /// How long good keys are served after their freshness when refetching fails
    /// (default 1 hour; a `stale-if-error` directive overrides it).
    pub stale_if_error: Duration,
    /// Least time between two refetches caused by an unknown key (default 30 s).
    pub unknown_key_refetch_interval: Duration,
    /// Most cached URLs (default 10 000).
    pub max_entries: u64,
    /// Extra trusted root certificates (PEM), e.g. a test CA.
    pub root_certificates_pem: Vec<Vec<u8>>,
    /// Trust only `root_certificates_pem` (not the built-in web roots).
    pub only_given_roots: bool,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            allow_loopback: false,
            allow_private: false,
            max_bytes: 64 * 1024,
            timeout: Duration::from_secs(5),
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(3600),
            unknown_key_refetch_interval: Duration::from_secs(30),
            max_entries: 10_000,
            root_certificates_pem: Vec::new(),
            only_given_roots: false,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("allow_loopback", &self.allow_loopback)
            .field("allow_private", &self.allow_private)
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL or an address it resolves to is not allowed.
    #[error("refused: {0}")]
    Refused(String),
    /// Network or protocol failure (including timeouts).
    #[error("transport: {0}")]
    Transport(String),
    /// A status other than 200.
    #[error("status {0}")]
    Status(u16),
    /// A redirect (never followed).
    #[error("redirect to {0:?} refused")]
    Redirect(String),
    /// The body is larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The media type is not the expected one.
    #[error("media type {0:?} not accepted")]
    MediaType(String),
    /// The document is not a valid directory, key set or card.
    #[error("invalid document: {0}")]
    Invalid(String),
}

/// A fetched key set and its cache state.
#[derive(Debug)]
pub struct KeySet {
    /// The keys.
    pub keys: Vec<Arc<AgentKey>>,
    /// Thumbprints that signed the directory response (empty when it was unsigned).
    pub signed_by: Vec<String>,
    fresh_until: Instant,
    stale_until: Instant,
    etag: Option<String>,
    last_forced: Mutex<Option<Instant>>,
    retry_after: Mutex<Option<Instant>>,
}

impl KeySet {
    /// The key with this thumbprint.
    pub fn get(&self, thumbprint: &str) -> Option<&Arc<AgentKey>> {
        self.keys.iter().find(|k| k.thumbprint == thumbprint)
    }
}

#[derive(Clone)]
enum Slot {
    Good(Arc<KeySet>),
    Negative { until: Instant, error: FetchError },
}

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<KeySet>, FetchError>>>;

/// Fetches and caches agents' keys. Cheap to share (`Arc`), safe to use concurrently.
pub struct DirectoryClient {
    http: reqwest::Client,
    config: ClientConfig,
    cache: moka::future::Cache<String, Slot>,
    inflight: Mutex<HashMap<String, SharedFetch>>,
    fetches: AtomicU64,
    cache_hits: AtomicU64,
}

impl std::fmt::Debug for DirectoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryClient")
            .field("config", &self.config)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

/// Is this address one a directory fetch must not reach (unless allowed)?
pub fn is_forbidden_address(ip: IpAddr, allow_loopback: bool, allow_private: bool) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                return !allow_loopback;
            }
            let private = a.is_private() // 10/8, 172.16/12, 192.168/16
                || a.is_link_local() // 169.254/16, cloud metadata
                || (o[0] == 100 && (o[1] & 0xc0) == 64); // 100.64/10 CGNAT
            if private {
                return !allow_private
                    || (o[0] == 169 && o[1] == 254 && o[2] == 169 && o[3] == 254);
            }
            a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF protocol assignments
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_forbidden_address(IpAddr::V4(v4), allow_loopback, allow_private);
            }
            if a.is_loopback() {
                return !allow_loopback;
            }
            let s = a.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_forbidden_address(IpAddr::V4(v4), allow_loopback, allow_private);
            }
            let unique_local = (s[0] & 0xfe00) == 0xfc00; // fc00::/7 (incl. fd00:ec2::254)
            let link_local = (s[0] & 0xffc0) == 0xfe80; // fe80::/10
            if unique_local || link_local {
                return !allow_private || s[0] == 0xfd00 && s[1] == 0x0ec2;
            }
            a.is_unspecified() || a.is_multicast()
        }
    }
}

struct GuardedResolver {
    allow_loopback: bool,
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (lo, private) = (self.allow_loopback, self.allow_private);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{} has no address", name.as_str()).into());
            }
            // Refuse the name if any address is forbidden: a name that mixes public and
            // private addresses is an attack, not a configuration.
            if let Some(bad) = addrs
                .iter()
                .find(|a| is_forbidden_address(a.ip(), lo, private))
            {
                return Err(format!(
                    "{} resolves to forbidden address {}",
                    name.as_str(),
                    bad.ip()
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Parsed `Cache-Control` (the directives a key cache needs).
#[derive(Debug, Default, PartialEq, Eq)]
struct CacheControl {
    max_age: Option<u64>,
    no_store: bool,
    no_cache: bool,
    stale_if_error: Option<u64>,
}

fn parse_cache_control(values: &[&str]) -> CacheControl {
    let mut cc = CacheControl::default();
    for v in values {
        for d in v.split(',') {
            let d = d.trim();
            let (name, arg) = match d.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (d, None),
            };
            let num = arg.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "max-age" => cc.max_age = num.or(Some(0)),
                "no-store" => cc.no_store = true,
                "no-cache" => cc.no_cache = true,
                "stale-if-error" => cc.stale_if_error = num,
                _ => {}
            }
        }
    }
    cc
}

struct Fetched {
    keys: Vec<Arc<AgentKey>>,
    signed_by: Vec<String>,
    headers: reqwest::header::HeaderMap,
}

enum FetchResult {
    Fresh(Fetched),
    NotModified(reqwest::header::HeaderMap),
}

impl DirectoryClient {
    /// A client with these settings.
    pub fn new(config: ClientConfig) -> Result<Self, FetchError> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .https_only(!config.allow_loopback)
            .no_proxy()
            .user_agent(concat!("oba-webbotauth/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_loopback: config.allow_loopback,
                allow_private: config.allow_private,
            }));
        if config.only_given_roots {
            b = b.tls_built_in_root_certs(false);
        }
        for pem in &config.root_certificates_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| FetchError::Invalid(format!("root certificate: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let cache = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .time_to_idle(Duration::from_secs(7 * 86_400))
            .build();
        Ok(DirectoryClient {
            http,
            config,
            cache,
            inflight: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// How many network fetches were made (for metrics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many key lookups were answered from the cache (fresh, or stale while the
    /// origin fails), for metrics.
    pub fn cache_hit_count(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// The keys published by `agent`, from the cache when fresh.
    pub async fn keys(self: &Arc<Self>, agent: &AgentRef) -> Result<Arc<KeySet>, FetchError> {
        self.keys_inner(agent, false).await
    }

    /// The key with `thumbprint` published by `agent`. An unknown key triggers one
    /// refetch, at most once per [`ClientConfig::unknown_key_refetch_interval`].
    pub async fn key(
        self: &Arc<Self>,
        agent: &AgentRef,
        thumbprint: &str,
    ) -> Result<Arc<AgentKey>, LookupError> {
        let set = self
            .keys(agent)
            .await
            .map_err(|e| LookupError::Unavailable(e.to_string()))?;
        if let Some(k) = set.get(thumbprint) {
            return Ok(k.clone());
        }
        let now = self.config.clock.now();
        let may_refetch = {
            let mut last = set.last_forced.lock().map_err(|_| LookupError::NotFound)?;
            let ok = last
                .is_none_or(|t| now.duration_since(t) >= self.config.unknown_key_refetch_interval);
            if ok {
                *last = Some(now);
            }
            ok
        };
        if !may_refetch {
            return Err(LookupError::NotFound);
        }
        let set = self
            .keys_inner(agent, true)
            .await
            .map_err(|e| LookupError::Unavailable(e.to_string()))?;
        set.get(thumbprint).cloned().ok_or(LookupError::NotFound)
    }

    async fn keys_inner(
        self: &Arc<Self>,
        agent: &AgentRef,
        force: bool,
    ) -> Result<Arc<KeySet>, FetchError> {
        let url = agent.fetch_url();
        let key = url.to_string();
        let now = self.config.clock.now();
        let prev = self.cache.get(&key).await;
        match &prev {
            Some(Slot::Good(set)) if !force && now < set.fresh_until => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(set.clone());
            }
            Some(Slot::Good(set)) if !force => {
                // Serving stale while the origin is failing: do not hammer it.
                let wait = set.retry_after.lock().ok().and_then(|r| *r);
                if wait.is_some_and(|w| now < w) && now < set.stale_until {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(set.clone());
                }
            }
            Some(Slot::Negative { until, error }) if now < *until => return Err(error.clone()),
            _ => {}
        }
        let prev_good = match prev {
            Some(Slot::Good(s)) => Some(s),
            _ => None,
        };
        let fut = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| FetchError::Transport("lock".into()))?;
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let (url2, kind, prev2, key2) =
                        (url.clone(), agent.kind, prev_good.clone(), key.clone());
                    let f: SharedFetch = async move {
                        let r = me.fetch_and_store(&url2, kind, prev2).await;
                        if let Ok(mut m) = me.inflight.lock() {
                            m.remove(&key2);
                        }
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        fut.await
    }

    async fn fetch_and_store(
        &self,
        url: &Url,
        kind: AgentType,
        prev: Option<Arc<KeySet>>,
    ) -> Result<Arc<KeySet>, FetchError> {
        let etag = prev.as_ref().and_then(|p| p.etag.clone());
        let result = self.fetch(url, kind, etag.as_deref()).await;
        let now = self.config.clock.now();
        let key = url.to_string();
        match result {
            Ok(FetchResult::Fresh(f)) => {
                let set = self.key_set(f.keys, f.signed_by, &f.headers, now, prev.as_deref());
                let set = Arc::new(set);
                self.cache.insert(key, Slot::Good(set.clone())).await;
                Ok(set)
            }
            Ok(FetchResult::NotModified(headers)) => match prev {
                Some(p) => {
                    let set = Arc::new(self.key_set(
                        p.keys.clone(),
                        p.signed_by.clone(),
                        &headers,
                        now,
                        Some(&p),
                    ));
                    self.cache.insert(key, Slot::Good(set.clone())).await;
                    Ok(set)
                }
                None => Err(FetchError::Status(304)),
            },
            Err(e) => {
                let negative = self.config.negative_ttl.min(Duration::from_secs(300));
                match prev {
                    // A failed fetch never evicts good keys; within stale-if-error they
                    // are served, and the origin is retried only after the negative TTL.
                    Some(p) if now < p.stale_until => {
                        if let Ok(mut r) = p.retry_after.lock() {
                            *r = Some(now + negative);
                        }
                        Ok(p)
                    }
                    // Past the stale window the keys are unusable: remember the failure.
                    _ => {
                        self.cache
                            .insert(
                                key,
                                Slot::Negative {
                                    until: now + negative,
                                    error: e.clone(),
                                },
                            )
                            .await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// A new cache entry. `prev` carries over what a refresh must not reset: the time of
    /// the last unknown-key refetch (the rate limit), and, for a 304 that omits it, the
    /// validator (RFC 9111 4.3.4).
    fn key_set(
        &self,
        keys: Vec<Arc<AgentKey>>,
        signed_by: Vec<String>,
        headers: &reqwest::header::HeaderMap,
        now: Instant,
        prev: Option<&KeySet>,
    ) -> KeySet {
        let values: Vec<&str> = headers
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let cc = parse_cache_control(&values);
        let age = headers
            .get(reqwest::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let fresh = if cc.no_store || cc.no_cache {
            Duration::ZERO
        } else {
            match cc.max_age {
                Some(m) => Duration::from_secs(m.saturating_sub(age)),
                None => self.config.default_ttl,
            }
            .min(self.config.max_ttl)
        };
        let stale = cc
            .stale_if_error
            .map(Duration::from_secs)
            .unwrap_or(self.config.stale_if_error)
            .min(self.config.max_ttl);
        let etag = (!cc.no_store)
            .then(|| {
                headers
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| prev.and_then(|p| p.etag.clone()))
            })
            .flatten();
        let last_forced = prev.and_then(|p| p.last_forced.lock().ok().and_then(|l| *l));
        KeySet {
            keys,
            signed_by,
            fresh_until: now + fresh,
            stale_until: now + fresh + stale,
            etag,
            last_forced: Mutex::new(last_forced),
            retry_after: Mutex::new(None),
        }
    }

    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        crate::agent::check_https(url, self.config.allow_loopback)
            .map_err(|e| FetchError::Refused(e.to_string()))?;
        let ip = match url.host() {
            Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(FetchError::Refused(format!("{url} has no host"))),
        };
        if let Some(ip) = ip {
            if is_forbidden_address(ip, self.config.allow_loopback, self.config.allow_private) {
                return Err(FetchError::Refused(format!("{ip} is not a public address")));
            }
        }
        Ok(())
    }

    async fn get(
        &self,
        url: &Url,
        accept: &str,
        etag: Option<&str>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), FetchError> {
        self.check_url(url)?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept);
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let mut resp = req.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            if msg.contains("forbidden address") {
                FetchError::Refused(msg)
            } else {
                FetchError::Transport(msg)
            }
        })?;
        let status = resp.status();
        if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return Err(FetchError::Redirect(to));
        }
        if status != reqwest::StatusCode::OK && status != reqwest::StatusCode::NOT_MODIFIED {
            return Err(FetchError::Status(status.as_u16()));
        }
        let headers = resp.headers().clone();
        if resp
            .content_length()
            .is_some_and(|l| l > self.config.max_bytes as u64)
        {
            return Err(FetchError::TooLarge(self.config.max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?
        {
            if body.len() + chunk.len() > self.config.max_bytes {
                return Err(FetchError::TooLarge(self.config.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }

    async fn fetch(
        &self,
        url: &Url,
        kind: AgentType,
        etag: Option<&str>,
    ) -> Result<FetchResult, FetchError> {
        let accept = match kind {
            AgentType::Directory | AgentType::JwksUri => MEDIA_TYPE,
            AgentType::Cimd => "application/json",
        };
        let (status, headers, body) = self.get(url, accept, etag).await?;
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(FetchResult::NotModified(headers));
        }
        let ctype = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let media_ok = match kind {
            AgentType::Directory => ctype == MEDIA_TYPE,
            AgentType::JwksUri => {
                ctype == MEDIA_TYPE
                    || ctype == "application/jwk-set+json"
                    || ctype == "application/json"
            }
            AgentType::Cimd => ctype == "application/json" || ctype.ends_with("+json"),
        };
        if !media_ok {
            return Err(FetchError::MediaType(ctype));
        }
        match kind {
            AgentType::Directory => {
                let dir =
                    Directory::parse(&body).map_err(|e| FetchError::Invalid(e.to_string()))?;
                let signed_by = self.verify_directory_signatures(url, &headers, &body, &dir)?;
                Ok(FetchResult::Fresh(Fetched {
                    keys: dir.keys,
                    signed_by,
                    headers,
                }))
            }
            AgentType::JwksUri => {
                let keys = lenient_key_set(&body)?;
                Ok(FetchResult::Fresh(Fetched {
                    keys,
                    signed_by: Vec::new(),
                    headers,
                }))
            }
            AgentType::Cimd => {
                let card = SignatureAgentCard::parse(&body, url.as_str())
                    .map_err(|e| FetchError::Invalid(e.to_string()))?;
                let keys = match (&card.jwks, &card.jwks_uri) {
                    (Some(set), _) => lenient_keys(&set.keys)?,
                    (None, Some(uri)) => {
                        let u = Url::parse(uri)
                            .map_err(|e| FetchError::Invalid(format!("jwks_uri: {e}")))?;
                        let (_, _, body) = self.get(&u, MEDIA_TYPE, None).await?;
                        lenient_key_set(&body)?
                    }
                    (None, None) => return Err(FetchError::Invalid("card without keys".into())),
                };
                Ok(FetchResult::Fresh(Fetched {
                    keys,
                    signed_by: Vec::new(),
                    headers,
                }))
            }
        }
    }

    fn verify_directory_signatures(
        &self,
        url: &Url,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        dir: &Directory,
    ) -> Result<Vec<String>, FetchError> {
        if !headers.contains_key("signature") && !headers.contains_key("signature-input") {
            return Ok(Vec::new());
        }
        let mut resp = Message::response(200)
            .map_err(|e| FetchError::Invalid(e.to_string()))?
            .with_body(body.to_vec());
        for (n, v) in headers {
            resp.append_header(n.as_str(), v.as_bytes());
        }
        let req = Message::request_to("GET", url.as_str())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        dir.verify_response(&resp, &req, crate::unix_now())
            .map_err(|e| FetchError::Invalid(format!("directory signature: {e}")))
    }
}

fn lenient_keys(keys: &[Jwk]) -> Result<Vec<Arc<AgentKey>>, FetchError> {
    if keys.len() > crate::directory::MAX_KEYS {
        return Err(FetchError::Invalid("too many keys".into()));
    }
    let out: Vec<Arc<AgentKey>> = keys
        .iter()
        .filter_map(|j| AgentKey::from_public_jwk(j, false).ok())
        // A kid, when present, must be the thumbprint (lookups are by thumbprint).
        .filter(|k| k.jwk.kid.as_deref().is_none_or(|kid| kid == k.thumbprint))
        .map(Arc::new)
        .collect();
    if out.is_empty() {
        return Err(FetchError::Invalid("no usable key".into()));
    }
    Ok(out)
}

fn lenient_key_set(body: &[u8]) -> Result<Vec<Arc<AgentKey>>, FetchError> {
    let set: oba_httpsig::jwk::JwkSet = serde_json::from_slice(body)
        .map_err(|e| FetchError::Invalid(format!("not a JWK Set: {e}")))?;
    lenient_keys(&set.keys)
}

/// Verifies Web Bot Auth requests, resolving keys through a [`DirectoryClient`] and a set
/// of locally configured keys, with a nonce store for replay protection.
pub struct Verifier {
    client: Option<Arc<DirectoryClient>>,
    local: StaticKeys,
    nonces: Option<Arc<dyn NonceStore>>,
    policy: VerifyPolicy,
    trusted_agents: Option<Vec<String>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with a policy and no key source yet.
    pub fn new(policy: VerifyPolicy) -> Self {
        Verifier {
            client: None,
            local: StaticKeys::new(),
            nonces: None,
            policy,
            trusted_agents: None,
        }
    }

    /// Resolve `Signature-Agent` members through this client.
    pub fn with_client(mut self, client: Arc<DirectoryClient>) -> Self {
        self.client = Some(client);
        self
    }

    /// Locally configured keys (consulted first).
    pub fn with_local_keys(mut self, keys: StaticKeys) -> Self {
        self.local = keys;
        self
    }

    /// Replay protection.
    pub fn with_nonce_store(mut self, store: Arc<dyn NonceStore>) -> Self {
        self.nonces = Some(store);
        self
    }

    /// Only fetch keys of agents whose fetch URL starts with one of these prefixes.
    pub fn with_trusted_agents(mut self, prefixes: Vec<String>) -> Self {
        self.trusted_agents = Some(prefixes);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// Verifies `request` at `now` (unix seconds), fetching the keys it needs first.
    pub async fn verify<M: HttpMessage + Sync + ?Sized>(&self, request: &M, now: i64) -> Outcome {
        match parse_signatures(request) {
            Ok(entries) => self.verify_entries(request, entries, now).await,
            Err(outcome) => *outcome,
        }
    }

    /// [`Verifier::verify`] over signatures already parsed with
    /// [`crate::parse_signatures`] (so a caller that looked at them first does
    /// not parse them again).
    pub async fn verify_entries<M: HttpMessage + Sync + ?Sized>(
        &self,
        request: &M,
        entries: Vec<LabelledEntry>,
        now: i64,
    ) -> Outcome {
        let mut fetched: HashMap<String, Result<Vec<Arc<AgentKey>>, LookupError>> = HashMap::new();
        if let Some(client) = &self.client {
            for (agent, keyid) in self.wanted(request, &entries) {
                let url = agent.fetch_url().to_string();
                if let Some(prefixes) = &self.trusted_agents {
                    if !prefixes.iter().any(|p| url.starts_with(p.as_str())) {
                        fetched.insert(
                            url,
                            Err(LookupError::Unavailable("agent is not trusted".into())),
                        );
                        continue;
                    }
                }
                if self.local.lookup(Some(&agent), &keyid).is_ok() {
                    continue;
                }
                let r = client.key(&agent, &keyid).await.map(|k| vec![k]);
                match (fetched.get_mut(&url), r) {
                    (Some(Ok(v)), Ok(mut k)) => v.append(&mut k),
                    (Some(_), _) => {}
                    (None, r) => {
                        fetched.insert(url, r);
                    }
                }
            }
        }
        let lookup = Chain {
            local: &self.local,
            fetched: &fetched,
        };
        verify_entries(
            request,
            entries,
            &lookup,
            self.nonces.as_deref(),
            &self.policy,
            now,
        )
    }

    /// The (agent, keyid) pairs the Web Bot Auth signatures name.
    fn wanted<M: HttpMessage + ?Sized>(
        &self,
        request: &M,
        entries: &[LabelledEntry],
    ) -> Vec<(AgentRef, String)> {
        let field = signature_agent_field(request);
        entries
            .iter()
            .filter_map(|(_, e)| e.as_ref().ok())
            .filter(|e| e.params.tag() == Some(crate::TAG))
            .filter_map(|e| {
                let keyid = e.params.keyid()?;
                let agent = agent_of(&e.params, field.as_deref(), self.policy.allow_http_loopback)
                    .ok()??;
                Some((agent, keyid.to_owned()))
            })
            .collect()
    }
}

struct Chain<'a> {
    local: &'a StaticKeys,
    fetched: &'a HashMap<String, Result<Vec<Arc<AgentKey>>, LookupError>>,
}

impl KeyLookup for Chain<'_> {
    fn lookup(
        &self,
        agent: Option<&AgentRef>,
        thumbprint: &str,
    ) -> Result<Arc<AgentKey>, LookupError> {
        if let Ok(k) = self.local.lookup(agent, thumbprint) {
            return Ok(k);
        }
        let Some(agent) = agent else {
            return Err(LookupError::NotFound);
        };
        match self.fetched.get(agent.fetch_url().as_str()) {
            Some(Ok(keys)) => keys
                .iter()
                .find(|k| k.thumbprint == thumbprint)
                .cloned()
                .ok_or(LookupError::NotFound),
            Some(Err(e)) => Err(e.clone()),
            None => Err(LookupError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        let f = |s: &str| is_forbidden_address(s.parse().unwrap(), false, false);
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "ff02::1",
        ] {
            assert!(f(bad), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!f(good), "{good} is public");
        }
        assert!(!is_forbidden_address(
            "127.0.0.1".parse().unwrap(),
            true,
            false
        ));
        assert!(!is_forbidden_address(
            "10.0.0.1".parse().unwrap(),
            false,
            true
        ));
        assert!(
            is_forbidden_address("169.254.169.254".parse().unwrap(), true, true),
            "metadata, always"
        );
    }

    #[test]
    fn cache_control() {
        let cc = parse_cache_control(&["max-age=60, stale-if-error=600", "no-cache"]);
        assert_eq!(
            cc,
            CacheControl {
                max_age: Some(60),
                no_store: false,
                no_cache: true,
                stale_if_error: Some(600)
            }
        );
        assert_eq!(parse_cache_control(&["max-age=abc"]).max_age, Some(0));
        assert!(parse_cache_control(&["No-Store"]).no_store);
    }
}
