//! Configuration: a TOML file for everything; the CLI sets the common fields.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! public_url = "https://gateway.example"
//! api_key_file = "gateway-keys.jsonl"
//! trusted_agents = ["https://registry.example/agents/"]
//!
//! [[upstreams]]
//! name = "ollama"
//! url = "http://127.0.0.1:11434"
//! kind = "ollama"              # or "openai"
//! models = ["llama3*"]         # empty: the default upstream
//!
//! [[oidc_issuers]]             # bearer JWTs (people; client credentials = services)
//! issuer = "https://login.example"
//! audience = "attach-gateway"
//! required_scopes = ["models"]
//! tenant_claim = "org"
//!
//! [[service_accounts]]         # RFC 9421 signers known by their public key
//! name = "batch-job"
//! tenant = "acme"
//! jwk = { kty = "OKP", crv = "Ed25519", x = "..." }
//!
//! [[policy]]                   # deny by default; a request needs one matching rule
//! kind = "service"             # bot | user | service (each field optional; all given must match)
//! tenant = "acme"              # optional
//! id = "key:ci"                # optional, exact principal id
//! routes = ["/v1/chat/completions"]  # optional
//! models = ["llama3*"]         # optional, `*` suffix = prefix
//! memory = "write"             # optional: the most memory allowed (off | write | recall)
//!
//! [memory]                     # conversation memory; see gateway.example.toml
//! store = "sqlite:memory.db"   # or a postgres:// URL
//! ```

use serde::Deserialize;

/// Upstream protocol family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// OpenAI-compatible (`/v1/...`).
    Openai,
    /// Ollama (`/api/...`).
    Ollama,
}

/// A model server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Name.
    pub name: String,
    /// Base URL.
    pub url: String,
    /// Protocol family.
    pub kind: UpstreamKind,
    /// Models routed here (`*` suffix = prefix); empty = the default upstream.
    #[serde(default)]
    pub models: Vec<String>,
}

/// A service account that signs with RFC 9421.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    /// Name (principal id `service:<name>`).
    pub name: String,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Public JWK.
    pub jwk: serde_json::Value,
}

/// A trusted OIDC issuer (bearer JWTs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// `iss`, also the discovery base URL.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Scopes the token must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The claim that names the tenant, if any.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Claims the token must carry with exactly these values.
    #[serde(default)]
    pub required_claims: serde_json::Map<String, serde_json::Value>,
}

/// One allow rule.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Principal kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Exact principal id.
    #[serde(default)]
    pub id: Option<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Agent URL prefix (bots).
    #[serde(default)]
    pub agent: Option<String>,
    /// Token claims that must have these values (a claim holding an array must
    /// contain the value).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Routes allowed (default: all proxied routes).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Models allowed (default: all); `*` suffix = prefix.
    #[serde(default)]
    pub models: Vec<String>,
    /// The most memory a matching request may use (default: `memory.max_mode`).
    #[serde(default)]
    pub memory: Option<MemoryMode>,
    /// Whose usage a matching principal may read at `/attach/v1/usage` (default: own).
    #[serde(default)]
    pub usage: Option<UsageScope>,
}

/// Whose usage a principal may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UsageScope {
    /// Its own.
    #[default]
    Own,
    /// Its tenant's.
    Tenant,
    /// Everyone's.
    All,
}

/// Whom a budget counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPer {
    /// Each principal has its own counters.
    #[default]
    Principal,
    /// Each tenant shares one set.
    Tenant,
    /// Every principal the budget matches shares one set (a policy group).
    Group,
}

/// A budget (`[[budgets]]`): requests and tokens (prompt + completion) per window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRule {
    /// Name (part of the counter key; shown in refusals).
    pub name: String,
    /// Whom it counts together.
    #[serde(default)]
    pub per: BudgetPer,
    /// Only principals of this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only this tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Only this principal.
    #[serde(default)]
    pub id: Option<String>,
    /// Window, seconds (fixed windows aligned to the epoch).
    pub window_secs: u64,
    /// Requests per window.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Tokens per window.
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// The audit trail (`[audit]`): absent = off. Checkpoints are signed with the stamp key
/// (published at `/.well-known/jwks.json`, which `oba audit verify --jwks` reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A JSON-lines file, or a database: `sqlite:PATH` / `postgres://...` (`db:` prefix
    /// not needed; a value with `://` or starting with `sqlite:` is a database).
    pub store: String,
    /// A signed checkpoint after this many records (default 1000)...
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...or this many seconds after the first unsigned record (default 60).
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// Record accepted authentications too (default true; rejections always are).
    #[serde(default = "yes")]
    pub accepted: bool,
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    60
}

impl AuditConfig {
    /// Defaults, with `store`.
    pub fn new(store: &str) -> Self {
        with_store(store)
    }
}

/// Metering (`[metering]`): absent = off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringConfig {
    /// The ledger: `sqlite:PATH`, `sqlite::memory:` or a `postgres://` URL.
    pub store: String,
    /// The outbox journal (default: `PATH.journal` next to a SQLite file, else
    /// `attach-usage.journal`).
    #[serde(default)]
    pub journal: Option<std::path::PathBuf>,
    /// Records the queue holds before it spills to the journal.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

impl MeteringConfig {
    /// Defaults, with `store`.
    pub fn new(store: &str) -> Self {
        with_store(store)
    }
}

/// What memory does for a request, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// Nothing recorded, nothing recalled.
    Off,
    /// The turn is recorded.
    Write,
    /// Recorded, and earlier turns are recalled into the prompt.
    Recall,
}

/// Conversation memory (`[memory]`): absent = off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// `sqlite:PATH`, `sqlite::memory:` or a `postgres://` URL.
    pub store: String,
    /// PostgreSQL schema (created if missing); default `public`.
    #[serde(default)]
    pub postgres_schema: Option<String>,
    /// The journal that keeps turns while the store is down (default: `PATH.journal`
    /// next to a SQLite file, else `attach-memory.journal`).
    #[serde(default)]
    pub journal: Option<std::path::PathBuf>,
    /// Mode of a request without `X-Attach-Memory` (default `write`; never above what
    /// the policy allows).
    #[serde(default = "default_mode")]
    pub default_mode: MemoryMode,
    /// Per-route modes for requests without `X-Attach-Memory` (e.g. `"/api/chat" =
    /// "recall"`), instead of `default_mode`; still capped by the policy.
    #[serde(default)]
    pub route_modes: std::collections::BTreeMap<String, MemoryMode>,
    /// The most a request may ask for, unless its policy rule says otherwise (default
    /// `recall`).
    #[serde(default = "max_mode")]
    pub max_mode: MemoryMode,
    /// Token budget of the recalled system message (estimated, 4 bytes a token).
    #[serde(default = "default_budget")]
    pub recall_budget_tokens: usize,
    /// Most turns considered for recall.
    #[serde(default = "default_recall_limit")]
    pub recall_limit: usize,
    /// Turns the write queue holds before it spills to the journal.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Largest reply kept per turn, bytes (longer: kept up to here, marked incomplete).
    #[serde(default = "default_turn_bytes")]
    pub max_turn_bytes: usize,
    /// Days turns are kept (0 = forever), for tenants not listed below.
    #[serde(default)]
    pub retention_days: u32,
    /// Days per tenant.
    #[serde(default)]
    pub tenant_retention_days: std::collections::BTreeMap<String, u32>,
    /// Vector recall: embeddings from an upstream's embedding endpoint (full-text
    /// ranking without it).
    #[serde(default)]
    pub embedding: Option<EmbeddingConfig>,
    /// Vector recall's recency bonus halves every this many days (default 7).
    #[serde(default = "default_half_life")]
    pub recency_half_life_days: f64,
}

/// The embedding model for vector recall.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The upstream (by name) whose `/v1/embeddings` or `/api/embed` computes them.
    pub upstream: String,
    /// The embedding model.
    pub model: String,
}

fn default_half_life() -> f64 {
    7.0
}

impl MemoryConfig {
    /// Defaults, with `store`.
    pub fn new(store: &str) -> Self {
        with_store(store)
    }
}

/// A section with only `store` set: every other field from its serde default, so the
/// defaults are written once.
fn with_store<T: serde::de::DeserializeOwned>(store: &str) -> T {
    let text = format!("store = {}", toml::Value::String(store.to_owned()));
    toml::from_str(&text).expect("a section with only `store` is valid")
}

fn default_mode() -> MemoryMode {
    MemoryMode::Write
}
fn max_mode() -> MemoryMode {
    MemoryMode::Recall
}
fn default_budget() -> usize {
    1024
}
fn default_recall_limit() -> usize {
    8
}
fn default_queue() -> usize {
    10_000
}
fn default_turn_bytes() -> usize {
    256 * 1024
}

/// Gateway settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Connections the kernel holds for the gateway before it accepts them (default
    /// 4096, capped by `net.core.somaxconn`). When a burst of new clients overflows it,
    /// their SYNs are dropped and each waits a retransmission (about 1 s).
    #[serde(default = "default_backlog")]
    pub listen_backlog: u32,
    /// The URL clients reach the gateway at (RFC 9728 metadata, 401 hints).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Model servers.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// API key file (JSON lines of hashes; `oba gateway keys create`).
    #[serde(default)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// RFC 9421 service accounts.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    /// Trusted OIDC issuers.
    #[serde(default)]
    pub oidc_issuers: Vec<OidcIssuerConfig>,
    /// Allow http OIDC issuers (tests only).
    #[serde(default)]
    pub oidc_allow_http: bool,
    /// Agent key URL prefixes the gateway fetches keys from (registries, directories).
    #[serde(default)]
    pub trusted_agents: Vec<String>,
    /// Allow http and loopback directories (tests only).
    #[serde(default)]
    pub allow_insecure_directories: bool,
    /// Paths proxied besides the built-in model routes (exact paths).
    #[serde(default)]
    pub extra_routes: Vec<String>,
    /// Redis URL for the shared replay store (several replicas); in-process without it.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Refuse signed requests without a nonce (default: refuse; a nonce-less signature
    /// could be replayed until it expires).
    #[serde(default = "yes")]
    pub require_nonce: bool,
    /// Allow rules (deny by default).
    #[serde(default)]
    pub policy: Vec<Rule>,
    /// The gateway's stamp signing key (private JWK file); generated when absent.
    #[serde(default)]
    pub stamp_key_file: Option<std::path::PathBuf>,
    /// Forward the caller's `Authorization` and signature fields upstream.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Largest request body, bytes (default 10 MiB).
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Requests in flight to each upstream at most, each on its own HTTP/1 connection
    /// (default 1024; a stream counts until it ends). A request that finds them all
    /// busy waits up to the first-byte timeout for one to end, then gets 503
    /// `upstream_saturated`. Without a bound, a stall turns into a burst of new
    /// connections, one per waiting request, that the model server must accept.
    #[serde(default = "default_max_upstream_connections")]
    pub max_upstream_connections: usize,
    /// Upstream connect timeout, seconds (default 5).
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: u64,
    /// Upstream time to first byte, seconds (default 60).
    #[serde(default = "default_first_byte")]
    pub first_byte_timeout_secs: u64,
    /// Longest silence inside an upstream response (a stalled stream), seconds (default 300).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// When metering or budgets are on and a client leaves a response early, the rest of
    /// the upstream's answer is read (and discarded) for up to this long, so the tokens it
    /// generated are billed and settled exactly from the counts it sends last; seconds
    /// (default 120). `0`: the upstream connection is closed at once (which stops most
    /// model servers generating) and the output is estimated from what passed.
    #[serde(default = "default_drain")]
    pub disconnect_drain_secs: u64,
    /// Conversation memory (off when absent).
    #[serde(default)]
    pub memory: Option<MemoryConfig>,
    /// The usage ledger (off when absent).
    #[serde(default)]
    pub metering: Option<MeteringConfig>,
    /// The audit trail (off when absent).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Budgets and rate limits (in Redis when `redis_url` is set).
    #[serde(default)]
    pub budgets: Vec<BudgetRule>,
    /// Output tokens reserved (and set on the request) when a budgeted request names no
    /// maximum (default 1024).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

fn default_max_tokens() -> u64 {
    1024
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_upstream_connections() -> usize {
    1024
}
fn default_backlog() -> u32 {
    4096
}
fn yes() -> bool {
    true
}
fn default_redis_prefix() -> String {
    "oba:gw:nonce:".into()
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_connect() -> u64 {
    5
}
fn default_idle() -> u64 {
    300
}
fn default_drain() -> u64 {
    120
}
fn default_first_byte() -> u64 {
    60
}

impl Default for GatewayConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty configuration is valid")
    }
}

impl GatewayConfig {
    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let c = GatewayConfig::from_toml(include_str!("../gateway.example.toml")).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.upstreams[0].kind, UpstreamKind::Ollama);
        assert_eq!(c.policy.len(), 5);
        assert_eq!(c.policy[0].memory, Some(MemoryMode::Write));
        assert_eq!(c.policy[2].usage, Some(UsageScope::Tenant));
        assert_eq!(c.policy[4].claims["groups"], "admins");
        assert_eq!(c.budgets.len(), 2);
        assert_eq!(c.budgets[0].per, BudgetPer::Tenant);
        assert_eq!(c.budgets[1].tokens, Some(50_000));
        assert_eq!(c.default_max_tokens, 1024);
        assert!(c.metering.is_some());
        let m = c.memory.unwrap();
        assert_eq!(m.default_mode, MemoryMode::Write);
        assert_eq!(m.tenant_retention_days["acme"], 30);
        assert_eq!(c.service_accounts[0].name, "batch-job");
        assert!(c.require_nonce);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.max_upstream_connections, 1024);
        let small: GatewayConfig = toml::from_str("listen_backlog = 64").unwrap();
        assert_eq!(small.listen_backlog, 64);
        assert_eq!(GatewayConfig::default().listen_backlog, 4096);
        assert_eq!(GatewayConfig::default().max_upstream_connections, 1024);
    }

    #[test]
    fn sections_made_from_a_store_have_the_serde_defaults() {
        let odd = "sqlite:/tmp/a \"b\" \\c.db";
        let m = MemoryConfig::new(odd);
        assert_eq!(m.store, odd, "any path survives quoting");
        assert_eq!(
            (m.default_mode, m.max_mode),
            (MemoryMode::Write, MemoryMode::Recall)
        );
        assert_eq!(
            (m.recall_budget_tokens, m.recall_limit, m.queue_capacity),
            (1024, 8, 10_000)
        );
        assert_eq!(m.recency_half_life_days, 7.0);
        assert_eq!(MeteringConfig::new("x").queue_capacity, 10_000);
        let a = AuditConfig::new("audit.jsonl");
        assert_eq!(
            (a.checkpoint_every, a.checkpoint_secs, a.accepted),
            (1000, 60, true)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(GatewayConfig::from_toml("listn = \"x\"").is_err());
        assert!(GatewayConfig::from_toml("[[policy]]\nkinds = \"bot\"").is_err());
    }
}
