//! The registry end to end over real sockets: each test starts `oba_registry::start` on
//! `127.0.0.1:0` and talks to it with `reqwest`.
//!
//! Every behaviour test runs twice, through [`both_backends!`]: `<name>_sqlite` on a fresh
//! SQLite file in a temporary directory, and `<name>_postgres` on a fresh schema
//! (`CREATE SCHEMA t_<hex>`, selected with `options=-c search_path=t_<hex>` in the URL)
//! of the database named by `OBA_TEST_POSTGRES_URL` — skipped, with a message, when the
//! variable is not set. The schema is dropped at the end (best effort, also after a
//! failure).
//!
//! Covered: bootstrap of the admin token; token scopes, expiry, revocation and the
//! authentication failure limit; agents CRUD and ownership; proof of possession for key
//! additions (missing, wrong key, changed body, replay, age, kid, private / symmetric /
//! test keys, duplicates); the public documents (JWKS, card, registry.txt, the per-agent
//! well-known directory, `ETag` / `304`); rotation by overlap as seen by the Web Bot Auth
//! directory client, and a published JWKS that verifiers can always use; concurrent key
//! additions, replays, duplicates and first sign-ins; JSON errors for malformed requests
//! and refused extractors; the audit trail, and its hash chain verified with oba-audit
//! against the published audit key (tampering with rows, concurrent changes, a shutdown
//! checkpoint, the import of the plain audit table of earlier versions); OIDC sign-in
//! against a test issuer; `/openapi.json` against the router.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Algorithm, Component, Derived, Message, SignatureParams, Signer as _};
use oba_registry::{Config, OidcIssuer, Registry};
use oba_webbotauth::client::{ClientConfig, Clock, DirectoryClient, Verifier};
use oba_webbotauth::{Outcome, VerifyPolicy};
use serde_json::{json, Value};

/// The environment variable naming the PostgreSQL database the `_postgres` tests use.
const PG_ENV: &str = "OBA_TEST_POSTGRES_URL";

/// The JWKS media type.
const DIRECTORY_MEDIA_TYPE: &str = "application/http-message-signatures-directory+json";

// =======================================================================================
// Databases: a fresh one per test, on either backend.

/// A fresh database for one test.
struct TestDb {
    /// What the registry is given as `db_url`.
    url: String,
    /// The SQLite file's directory (removed on drop).
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the base URL and the schemas to drop at the end.
    pg: Option<PgSchemas>,
    /// PostgreSQL: where the audit key goes (SQLite: the default, next to the file).
    keys: tempfile::TempDir,
}

/// The schemas a PostgreSQL test created.
struct PgSchemas {
    base: String,
    schema: String,
    extra: Mutex<Vec<String>>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            pg: None,
            keys: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// A fresh schema, or `None` when `OBA_TEST_POSTGRES_URL` is not set.
    async fn postgres() -> Option<TestDb> {
        let base = std::env::var(PG_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())?;
        let schema = create_schema(&base).await;
        Some(TestDb {
            url: schema_url(&base, &schema),
            _dir: None,
            pg: Some(PgSchemas {
                base,
                schema,
                extra: Mutex::new(Vec::new()),
            }),
            keys: tempfile::tempdir().expect("temporary directory"),
        })
    }

    /// Another fresh database on the same backend (for PostgreSQL, a schema dropped with
    /// this one's).
    async fn sibling(&self) -> TestDb {
        match &self.pg {
            None => TestDb::sqlite(),
            Some(pg) => {
                let schema = create_schema(&pg.base).await;
                pg.extra.lock().expect("lock").push(schema.clone());
                TestDb {
                    url: schema_url(&pg.base, &schema),
                    _dir: None,
                    pg: None,
                    keys: tempfile::tempdir().expect("temporary directory"),
                }
            }
        }
    }

    /// Drops the PostgreSQL schemas (best effort).
    async fn cleanup(&self) {
        let Some(pg) = &self.pg else { return };
        let mut schemas = vec![pg.schema.clone()];
        schemas.extend(pg.extra.lock().map(|e| e.clone()).unwrap_or_default());
        let Ok(pool) = sqlx::PgPool::connect(&pg.base).await else {
            eprintln!("warning: could not connect to drop schemas {schemas:?}");
            return;
        };
        for s in schemas {
            if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .execute(&pool)
                .await
            {
                eprintln!("warning: DROP SCHEMA {s}: {e}");
            }
        }
        pool.close().await;
    }

    /// The registry settings for this database: loopback, any port, and an authentication
    /// failure limit high enough not to interfere (the tests that exercise it lower it).
    /// The audit key: next to the SQLite file (the default), in a temporary directory for
    /// PostgreSQL (whose default is the working directory).
    fn config(&self) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            db_url: self.url.clone(),
            auth_failure_limit: 10_000,
            audit_key_file: self
                .url
                .starts_with("postgres")
                .then(|| self.keys.path().join("registry-audit.jwk")),
            ..Config::default()
        }
    }

    async fn start(&self) -> Reg {
        self.start_with(|_| {}).await
    }

    async fn start_with(&self, f: impl FnOnce(&mut Config)) -> Reg {
        let mut config = self.config();
        f(&mut config);
        let registry = oba_registry::start(config).await.expect("registry starts");
        Reg::new(registry)
    }
}

async fn create_schema(base: &str) -> String {
    let schema = format!("t_{}", oba_registry::auth::new_id());
    let pool = sqlx::PgPool::connect(base)
        .await
        .unwrap_or_else(|e| panic!("{PG_ENV}: cannot connect: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("CREATE SCHEMA");
    pool.close().await;
    schema
}

fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs a test body on `db` (or reports the skip), then drops the database, also when the
/// body panicked.
async fn run_on<F, Fut>(db: Option<TestDb>, body: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = db else {
        println!("skipped: {PG_ENV} not set");
        return;
    };
    let db = Arc::new(db);
    let result = tokio::spawn(body(db.clone())).await;
    db.cleanup().await;
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

/// Expands a test body into `<name>_sqlite` and `<name>_postgres`; the body sees the
/// fresh database as `$db: &TestDb`.
macro_rules! both_backends {
    ($(#[doc = $doc:expr])* $sqlite:ident, $postgres:ident, |$db:ident| $body:block) => {
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            run_on(Some(TestDb::sqlite()), |db: Arc<TestDb>| async move {
                let $db: &TestDb = &db;
                $body
            })
            .await;
        }

        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            run_on(TestDb::postgres().await, |db: Arc<TestDb>| async move {
                let $db: &TestDb = &db;
                $body
            })
            .await;
        }
    };
}

// =======================================================================================
// The HTTP side.

/// A running registry (stopped on drop) and a client for it.
struct Reg {
    registry: Registry,
    api: Api,
}

impl Drop for Reg {
    fn drop(&mut self) {
        self.registry.stop();
    }
}

impl std::ops::Deref for Reg {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Reg {
    fn new(registry: Registry) -> Reg {
        let api = Api::for_registry(&registry);
        Reg { registry, api }
    }
}

/// A client of one registry (cheap to clone into tasks).
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    admin: Option<String>,
}

/// A response, read whole.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// An account with a token.
#[derive(Debug, Clone)]
struct User {
    account: String,
    token: String,
    token_id: String,
}

impl Api {
    /// A client of `registry`, with its admin token if it generated one.
    fn for_registry(registry: &Registry) -> Api {
        Api {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            base: format!("http://{}", registry.addr),
            admin: registry.admin_token.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin(&self) -> &str {
        self.admin
            .as_deref()
            .expect("this registry generated an admin token")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body read").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    fn request(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.request(method, path, token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        self.send(req).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call("GET", path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call("POST", path, token, Some(body)).await
    }

    /// An account created by the admin, with a token of `scopes`.
    async fn user(&self, name: &str, scopes: &str) -> User {
        let r = self
            .post("/v1/accounts", Some(self.admin()), &json!({ "name": name }))
            .await;
        assert_eq!(r.status, 201, "create account: {}", r.text());
        let account = r.json()["id"].as_str().expect("account id").to_owned();
        let (token, token_id) = self.token_for(&account, scopes).await;
        User {
            account,
            token,
            token_id,
        }
    }

    /// A token for `account` created by the admin.
    async fn token_for(&self, account: &str, scopes: &str) -> (String, String) {
        let r = self
            .post(
                "/v1/tokens",
                Some(self.admin()),
                &json!({ "scopes": scopes, "account_id": account }),
            )
            .await;
        assert_eq!(r.status, 201, "create token: {}", r.text());
        let v = r.json();
        (
            v["token"].as_str().expect("token").to_owned(),
            v["id"].as_str().expect("token id").to_owned(),
        )
    }

    async fn create_agent(&self, token: &str, doc: &Value) -> Value {
        let r = self.post("/v1/agents", Some(token), doc).await;
        assert_eq!(r.status, 201, "create agent: {}", r.text());
        r.json()
    }

    /// Sends `body` to `POST /v1/agents/{agent}/keys` with the given extra headers.
    async fn post_key_raw(
        &self,
        token: &str,
        agent: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Resp {
        let mut req = self
            .request("POST", &format!("/v1/agents/{agent}/keys"), Some(token))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (n, v) in headers {
            req = req.header(*n, v.as_str());
        }
        self.send(req).await
    }

    /// Adds the public half of `private` to `agent` with a correct proof of possession.
    async fn add_key(&self, token: &str, agent: &str, private: &Jwk) -> Resp {
        let body = key_body(private);
        let headers = self.proof(private, agent, &body, unix_now());
        self.post_key_raw(token, agent, &body, &headers).await
    }

    /// A proof of possession by `private` for adding a key to `agent` with `body`.
    fn proof(
        &self,
        private: &Jwk,
        agent: &str,
        body: &[u8],
        now: i64,
    ) -> Vec<(&'static str, String)> {
        let url = self.url(&format!("/v1/agents/{agent}/keys"));
        oba_registry::pop::proof_headers(private, "POST", &url, body, now).expect("proof headers")
    }
}

/// `{"jwk": <public half>}`.
fn key_body(private: &Jwk) -> Vec<u8> {
    json!({ "jwk": private.public().expect("public JWK") })
        .to_string()
        .into_bytes()
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("fits")
}

fn ed25519() -> Jwk {
    Jwk::generate(Algorithm::Ed25519).expect("key")
}

fn thumbprint(jwk: &Jwk) -> String {
    jwk.thumbprint().expect("thumbprint")
}

/// The body is exactly `{"error": {"code": <string>, "message": <string>}}` and the
/// response says it is JSON; returns the code.
#[track_caller]
fn assert_error_shape(r: &Resp) -> String {
    assert_ne!(r.status, 500, "never 500: {}", r.text());
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "status {}: error content-type {ctype:?}, body {:?}",
        r.status,
        r.text()
    );
    let v = r.json();
    let top = v.as_object().expect("error body is an object");
    assert_eq!(top.len(), 1, "only \"error\" at the top: {v}");
    let e = v["error"].as_object().expect("\"error\" is an object");
    assert_eq!(e.len(), 2, "only code and message: {v}");
    assert!(e["message"].is_string(), "message is a string: {v}");
    e["code"].as_str().expect("code is a string").to_owned()
}

/// The status and the error code, and the error shape.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "expected {status} {code}, body {:?}",
        r.text()
    );
    let got = assert_error_shape(r);
    assert_eq!(got, code, "error code, body {:?}", r.text());
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer"),
            "401 carries WWW-Authenticate: Bearer"
        );
    }
}

// =======================================================================================
// 0. The harness: fresh databases do not see each other.

both_backends!(
    /// Two fresh databases (two SQLite files, or two PostgreSQL schemas selected through
    /// `search_path` in the URL) are isolated; on PostgreSQL the tables are in the test's
    /// own schema.
    fresh_databases_are_isolated_sqlite,
    fresh_databases_are_isolated_postgres,
    |db| {
        let other = db.sibling().await;
        let a = db.start().await;
        let b = other.start().await;
        assert_ne!(a.admin(), b.admin(), "each database bootstraps its own admin");
        let agent = a.create_agent(a.admin(), &json!({ "name": "only-in-a" })).await;
        let id = agent["id"].as_str().unwrap();

        let list_a = a.get("/v1/agents", Some(a.admin())).await.json();
        let list_b = b.get("/v1/agents", Some(b.admin())).await.json();
        assert_eq!(list_a["agents"].as_array().unwrap().len(), 1);
        assert_eq!(list_b["agents"], json!([]), "b does not see a's agent");
        assert_eq!(b.get(&format!("/agents/{id}/jwks.json"), None).await.status, 404);
        // a's token is unknown to b.
        assert_error(&b.get("/v1/agents", Some(a.admin())).await, 401, "unauthorized");

        if let Some(pg) = &db.pg {
            let pool = sqlx::PgPool::connect(&pg.base).await.unwrap();
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            )
            .bind(&pg.schema)
            .fetch_all(&pool)
            .await
            .unwrap();
            let names: Vec<&str> = tables.iter().map(|(t,)| t.as_str()).collect();
            assert_eq!(
                names,
                ["accounts", "agent_keys", "agents", "audit_log", "pop_nonces", "tokens"],
                "the registry's tables are in the test schema {}",
                pg.schema
            );
            let (n,): (i64,) = sqlx::query_as(&format!(
                "SELECT COUNT(*) FROM {}.agents WHERE id = $1",
                pg.schema
            ))
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(n, 1, "the agent row is in the test schema");
            pool.close().await;
        }
    }
);

// =======================================================================================
// 1. Bootstrap.

both_backends!(
    /// The first start generates an admin token (shown once); a restart on the same
    /// database does not, and the first token keeps working; a token file gives the token.
    bootstrap_admin_token_sqlite,
    bootstrap_admin_token_postgres,
    |db| {
        let first = db.start().await;
        let token = first.registry.admin_token.clone().expect("first start prints a token");
        assert!(token.starts_with("oba_rt_"), "{token}");
        assert!(token.len() >= 40, "{token}");
        assert_eq!(first.registry.public_url, first.base);
        let agent = first.create_agent(&token, &json!({ "name": "persisted" })).await;
        let r = first.post("/v1/accounts", Some(&token), &json!({ "name": "someone" })).await;
        assert_eq!(r.status, 201, "the admin token is an admin: {}", r.text());
        drop(first);

        let second = db.start().await;
        assert_eq!(second.registry.admin_token, None, "no new token on restart");
        let list = second.get("/v1/agents", Some(&token)).await;
        assert_eq!(list.status, 200, "{}", list.text());
        assert_eq!(list.json()["agents"][0]["id"], agent["id"], "data persisted");
        // stop() (on drop) closes the listener and the kept-alive connections.
        let api = second.api.clone();
        drop(second);
        let stopped = Instant::now();
        while api.http.get(api.url("/registry.txt")).send().await.is_ok() {
            assert!(stopped.elapsed() < Duration::from_secs(2), "still serving after stop()");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // --admin-token-file on a fresh database.
        let fresh = db.sibling().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let given = format!("oba_rt_{}", "Gx7_k".repeat(9));
        std::fs::write(&path, format!("{given}\n")).unwrap();
        let reg = fresh
            .start_with(|c| c.admin_token_file = Some(path.clone()))
            .await;
        assert_eq!(
            reg.registry.admin_token, None,
            "a token read from a file was not generated, so it is not shown"
        );
        let r = reg.post("/v1/accounts", Some(&given), &json!({ "name": "x" })).await;
        assert_eq!(r.status, 201, "the given token is the admin: {}", r.text());
        let audit = reg.get("/v1/audit", Some(&given)).await.json();
        assert_eq!(audit["records"][0]["action"], "token.create");
        assert_eq!(audit["records"][0]["actor"], "system");
        assert_eq!(audit["records"][0]["detail"]["bootstrap"], true);
        drop(reg);

        // A token file that is not a token, or missing, is a start-up error.
        let bad = db.sibling().await;
        std::fs::write(&path, "hunter2").unwrap();
        let mut config = bad.config();
        config.admin_token_file = Some(path.clone());
        assert!(matches!(
            oba_registry::start(config).await,
            Err(oba_registry::Error::Config(_))
        ));
        let mut config = bad.config();
        config.admin_token_file = Some(dir.path().join("missing"));
        assert!(oba_registry::start(config).await.is_err());
    }
);

// =======================================================================================
// 2. Tokens: scopes, expiry, revocation, refusals, failure limit.

both_backends!(
    /// Scopes are enforced (403 JSON), expiring and revoked tokens stop working (401),
    /// non-admins cannot widen scopes or mint for others, bad credentials are 401 with
    /// `WWW-Authenticate: Bearer`.
    token_scopes_expiry_and_revocation_sqlite,
    token_scopes_expiry_and_revocation_postgres,
    |db| {
        let reg = db.start().await;
        let reader = reg.user("reader", "agents:read").await;
        assert!(reader.token.starts_with("oba_rt_"));

        // Read-only: list works, writing is 403 forbidden.
        assert_eq!(reg.get("/v1/agents", Some(&reader.token)).await.status, 200);
        let r = reg.post("/v1/agents", Some(&reader.token), &json!({ "name": "x" })).await;
        assert_error(&r, 403, "forbidden");

        // A read-write token of the same account works.
        let (rw, _) = reg
            .token_for(&reader.account, "agents:write agents:read keys:write")
            .await;
        let agent = reg.create_agent(&rw, &json!({ "name": "bot" })).await;
        assert_eq!(agent["account_id"], reader.account.as_str());
        let id = agent["id"].as_str().unwrap();
        let r = reg.add_key(&rw, id, &ed25519()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        // keys:write is needed for keys, agents:write for agents.
        let r = reg.add_key(&reader.token, id, &ed25519()).await;
        assert_error(&r, 403, "forbidden");

        // Non-admins: no scopes they lack, no tokens for other accounts, no accounts.
        let r = reg
            .post("/v1/tokens", Some(&reader.token), &json!({ "scopes": "agents:write" }))
            .await;
        assert_error(&r, 403, "forbidden");
        let r = reg
            .post("/v1/tokens", Some(&reader.token), &json!({ "scopes": "admin" }))
            .await;
        assert_error(&r, 403, "forbidden");
        let other = reg.user("other", "agents:read").await;
        let r = reg
            .post(
                "/v1/tokens",
                Some(&reader.token),
                &json!({ "scopes": "agents:read", "account_id": other.account }),
            )
            .await;
        assert_error(&r, 403, "forbidden");
        let r = reg.post("/v1/accounts", Some(&reader.token), &json!({ "name": "n" })).await;
        assert_error(&r, 403, "forbidden");
        // Within its scopes, for itself: fine.
        let r = reg
            .post("/v1/tokens", Some(&reader.token), &json!({ "scopes": "agents:read" }))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["account_id"], reader.account.as_str());
        // Bad requests.
        let r = reg
            .post("/v1/tokens", Some(reg.admin()), &json!({ "scopes": "agents:fly" }))
            .await;
        assert_error(&r, 400, "invalid_scope");
        let r = reg
            .post("/v1/tokens", Some(reg.admin()), &json!({ "scopes": "" }))
            .await;
        assert_error(&r, 400, "invalid_scope");
        let r = reg
            .post(
                "/v1/tokens",
                Some(reg.admin()),
                &json!({ "scopes": "agents:read", "expires_in": 0 }),
            )
            .await;
        assert_error(&r, 400, "invalid_expiry");
        let r = reg
            .post(
                "/v1/tokens",
                Some(reg.admin()),
                &json!({ "scopes": "agents:read", "account_id": "nope" }),
            )
            .await;
        assert_error(&r, 404, "not_found");

        // Listing tokens: own only, never a secret or hash.
        let r = reg.get("/v1/tokens", Some(&reader.token)).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        for t in v["tokens"].as_array().unwrap() {
            assert_eq!(t["account_id"], reader.account.as_str());
            assert!(t.get("token").is_none() && t.get("hash").is_none(), "{t}");
        }
        assert!(!r.text().contains(&reader.token));

        // Revocation: 204, then 401; a second revocation is 404; others' tokens are 404.
        let r = reg
            .call("DELETE", &format!("/v1/tokens/{}", other.token_id), Some(&reader.token), None)
            .await;
        assert_error(&r, 404, "not_found");
        let r = reg
            .call("DELETE", &format!("/v1/tokens/{}", reader.token_id), Some(&reader.token), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_error(&reg.get("/v1/agents", Some(&reader.token)).await, 401, "unauthorized");
        let r = reg
            .call("DELETE", &format!("/v1/tokens/{}", reader.token_id), Some(reg.admin()), None)
            .await;
        assert_error(&r, 404, "not_found");
        // The admin revokes anyone's token.
        let r = reg
            .call("DELETE", &format!("/v1/tokens/{}", other.token_id), Some(reg.admin()), None)
            .await;
        assert_eq!(r.status, 204);
        assert_error(&reg.get("/v1/agents", Some(&other.token)).await, 401, "unauthorized");

        // Unknown, missing and malformed credentials.
        let unknown = oba_registry::auth::new_token();
        assert_error(&reg.get("/v1/agents", Some(&unknown)).await, 401, "unauthorized");
        assert_error(&reg.get("/v1/agents", None).await, 401, "unauthorized");
        for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc", "oba_rt_x"] {
            let r = reg
                .send(reg.request("GET", "/v1/agents", None).header("authorization", value))
                .await;
            assert_error(&r, 401, "unauthorized");
        }
        // Not an API token and no OIDC issuer configured.
        assert_error(&reg.get("/v1/agents", Some("a.b.c")).await, 401, "unauthorized");

        // Expiry: usable at once, 401 within about a second (expires_at = created + 1).
        // Start early in a second so that "at once" is still the creation second.
        let sub = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
        if sub > 500 {
            tokio::time::sleep(Duration::from_millis(u64::from(1010 - sub))).await;
        }
        let r = reg
            .post(
                "/v1/tokens",
                Some(reg.admin()),
                &json!({ "scopes": "agents:read", "expires_in": 1, "account_id": reader.account }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        assert_eq!(v["expires_at"].as_i64(), v["created_at"].as_i64().map(|c| c + 1));
        let short = v["token"].as_str().unwrap().to_owned();
        assert_eq!(reg.get("/v1/agents", Some(&short)).await.status, 200);
        let started = Instant::now();
        loop {
            let r = reg.get("/v1/agents", Some(&short)).await;
            if r.status == 401 {
                assert_error(&r, 401, "unauthorized");
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "an expires_in=1 token still works after 2.5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
);

both_backends!(
    /// After `auth_failure_limit` failed authentications from 127.0.0.1, every
    /// authenticated request from it is 429 with `Retry-After`; public documents still
    /// work.
    auth_failures_are_rate_limited_sqlite,
    auth_failures_are_rate_limited_postgres,
    |db| {
        let reg = db.start_with(|c| c.auth_failure_limit = 5).await;
        let agent = reg.create_agent(reg.admin(), &json!({ "name": "bot" })).await;
        let bad = oba_registry::auth::new_token();
        for _ in 0..5 {
            assert_error(&reg.get("/v1/agents", Some(&bad)).await, 401, "unauthorized");
        }
        let r = reg.get("/v1/agents", Some(&bad)).await;
        assert_error(&r, 429, "too_many_failures");
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After is delta-seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        // The address is blocked, whatever the credentials.
        let r = reg.get("/v1/agents", Some(reg.admin())).await;
        assert_error(&r, 429, "too_many_failures");
        // Unauthenticated public documents are not affected.
        let id = agent["id"].as_str().unwrap();
        assert_eq!(reg.get(&format!("/agents/{id}/jwks.json"), None).await.status, 200);
        assert_eq!(reg.get("/registry.txt", None).await.status, 200);
    }
);

// =======================================================================================
// 3. Agents.

both_backends!(
    /// Create (201 with id, jwks_uri, card_url), list, show, PATCH (change, null removes,
    /// invalid is 400), DELETE (204, then 404); another account's agent is 404.
    agents_crud_sqlite,
    agents_crud_postgres,
    |db| {
        let reg = db.start().await;
        let alice = reg.user("alice", "agents:read agents:write keys:write").await;
        let bob = reg.user("bob", "agents:read agents:write keys:write").await;
        let doc = json!({
            "name": "Alice's crawler",
            "description": "indexes things",
            "homepage": "https://alice.example/bot",
            "contacts": ["mailto:bot@alice.example"],
            "purpose": "search",
            "expected_user_agent": "AliceBot/1.0",
            "trigger": "crawler",
            "product_token": "AliceBot"
        });
        let r = reg.post("/v1/agents", Some(&alice.token), &doc).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let agent = r.json();
        let id = agent["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(agent["jwks_uri"], reg.url(&format!("/agents/{id}/jwks.json")));
        assert_eq!(agent["card_url"], reg.url(&format!("/agents/{id}/card.json")));
        assert_eq!(agent["account_id"], alice.account.as_str());
        assert!(agent.get("signature_agent").is_none(), "no agent host suffix configured");
        for (k, v) in doc.as_object().unwrap() {
            assert_eq!(&agent[k], v, "{k}");
        }
        let second = reg.create_agent(&alice.token, &json!({ "name": "second" })).await;

        // List and show.
        let list = reg.get("/v1/agents", Some(&alice.token)).await;
        assert_eq!(list.status, 200);
        let mut ids: Vec<String> = list.json()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut want = vec![id.clone(), second["id"].as_str().unwrap().to_owned()];
        want.sort();
        assert_eq!(ids, want, "both agents listed (ordered by creation second, then id)");
        let shown = reg.get(&format!("/v1/agents/{id}"), Some(&alice.token)).await;
        assert_eq!(shown.status, 200);
        assert_eq!(shown.json(), agent);

        // Invalid creations.
        for bad in [
            json!({ "name": "" }),
            json!({ "name": "x".repeat(201) }),
            json!({ "name": "x", "homepage": "http://insecure.example" }),
            json!({ "name": "x", "homepage": "not a url" }),
            json!({ "name": "x", "trigger": "sometimes" }),
            json!({ "name": "x", "contacts": [""] }),
        ] {
            let r = reg.post("/v1/agents", Some(&alice.token), &bad).await;
            assert_error(&r, 400, "invalid_agent");
        }
        let r = reg.post("/v1/agents", Some(&alice.token), &json!({ "description": "no name" })).await;
        assert_eq!(r.status, 400);
        assert_error_shape(&r);

        // PATCH: change a field; null removes one; others kept.
        let path = format!("/v1/agents/{id}");
        let r = reg
            .call("PATCH", &path, Some(&alice.token), Some(&json!({ "description": "new" })))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["description"], "new");
        assert_eq!(v["name"], "Alice's crawler");
        assert!(v["updated_at"].as_i64() >= agent["updated_at"].as_i64());
        let r = reg
            .call("PATCH", &path, Some(&alice.token), Some(&json!({ "homepage": null, "purpose": null })))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert!(v.get("homepage").is_none() && v.get("purpose").is_none(), "{v}");
        assert_eq!(v["trigger"], "crawler");
        let shown = reg.get(&path, Some(&alice.token)).await.json();
        assert!(shown.get("homepage").is_none());
        assert_eq!(shown["description"], "new");
        // Invalid patches: 400, nothing changed.
        for (bad, code) in [
            (json!({ "trigger": "sometimes" }), "invalid_agent"),
            (json!({ "name": null }), "invalid_agent"),
            (json!({ "name": 5 }), "invalid_agent"),
            (json!({ "colour": "blue" }), "invalid_agent"),
            (json!({ "homepage": "ftp://x.example" }), "invalid_agent"),
            (json!(["not", "an", "object"]), "malformed_json"),
        ] {
            let r = reg.call("PATCH", &path, Some(&alice.token), Some(&bad)).await;
            assert_error(&r, 400, code);
        }
        assert_eq!(reg.get(&path, Some(&alice.token)).await.json()["trigger"], "crawler");

        // Another account's agent: 404 everywhere (no existence oracle), not in its list.
        for (method, p, body) in [
            ("GET", path.clone(), None),
            ("PATCH", path.clone(), Some(json!({ "description": "mine" }))),
            ("DELETE", path.clone(), None),
            ("GET", format!("{path}/keys"), None),
            ("DELETE", format!("{path}/keys/whatever"), None),
        ] {
            let r = reg.call(method, &p, Some(&bob.token), body.as_ref()).await;
            assert_error(&r, 404, "not_found");
        }
        let r = reg.add_key(&bob.token, &id, &ed25519()).await;
        assert_error(&r, 404, "not_found");
        let bobs = reg.get("/v1/agents", Some(&bob.token)).await.json();
        assert_eq!(bobs["agents"], json!([]));
        // A nonexistent agent is the same 404.
        let r = reg.get("/v1/agents/000000000000000000000000", Some(&bob.token)).await;
        assert_error(&r, 404, "not_found");
        // The admin sees every agent.
        assert_eq!(reg.get(&path, Some(reg.admin())).await.status, 200);
        let all = reg.get("/v1/agents", Some(reg.admin())).await.json();
        assert_eq!(all["agents"].as_array().unwrap().len(), 2);

        // DELETE: 204, then 404 everywhere, public documents gone.
        assert_eq!(reg.add_key(&alice.token, &id, &ed25519()).await.status, 201);
        let r = reg.call("DELETE", &path, Some(&alice.token), None).await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert!(r.body.is_empty());
        assert_error(&reg.get(&path, Some(&alice.token)).await, 404, "not_found");
        assert_error(&reg.call("DELETE", &path, Some(&alice.token), None).await, 404, "not_found");
        let r = reg
            .call("PATCH", &path, Some(&alice.token), Some(&json!({ "description": "x" })))
            .await;
        assert_error(&r, 404, "not_found");
        assert_error(&reg.get(&format!("/agents/{id}/jwks.json"), None).await, 404, "not_found");
        assert_error(&reg.get(&format!("/agents/{id}/card.json"), None).await, 404, "not_found");
        let list = reg.get("/v1/agents", Some(&alice.token)).await.json();
        assert_eq!(list["agents"].as_array().unwrap().len(), 1);
        let txt = reg.get("/registry.txt", None).await.text();
        assert!(!txt.contains(&id), "a deleted agent is not listed: {txt}");
    }
);

// =======================================================================================
// 4. Proof of possession.

/// A proof built by hand: signed by `signer` but naming `keyid`, with `tag`, `created`
/// and optionally a nonce (the registry's own `proof_headers` always does it right).
fn custom_proof(
    signer: &Jwk,
    keyid: &str,
    tag: &str,
    url: &str,
    body: &[u8],
    created: i64,
    nonce: bool,
) -> Vec<(&'static str, String)> {
    let u = url::Url::parse(url).unwrap();
    let authority = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    let digest = DigestField::compute(&[DigestAlgorithm::Sha256], body).to_header_value();
    let msg = Message::request("POST", u.path())
        .unwrap()
        .with_scheme(u.scheme())
        .with_header("Host", authority)
        .with_header("Content-Digest", &digest);
    let mut params = SignatureParams::new(vec![
        Component::derived(Derived::Method),
        Component::derived(Derived::Authority),
        Component::derived(Derived::Path),
        Component::field("content-digest").unwrap(),
    ])
    .unwrap()
    .with_created(created)
    .unwrap()
    .with_keyid(keyid)
    .unwrap()
    .with_tag(tag)
    .unwrap();
    if nonce {
        params = params.with_nonce(&oba_httpsig::random_nonce()).unwrap();
    }
    let key = signer.signing_key(None).unwrap();
    let sig = oba_httpsig::sign(&msg, None, "pop", params, &key).unwrap();
    vec![
        ("Content-Digest", digest),
        ("Signature-Input", sig.signature_input()),
        ("Signature", sig.signature()),
    ]
}

/// The public JWK of the RFC 9421 B.1.4 test key, from `test-vectors/`.
fn rfc9421_test_key() -> Jwk {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-vectors/rfc9421-vectors.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(v["keys"]["test-key-ed25519"]["jwk"].clone()).unwrap()
}

both_backends!(
    /// Keys are added only with a valid, fresh, unused proof by the key itself; bad keys
    /// are 400, duplicates 409.
    proof_of_possession_sqlite,
    proof_of_possession_postgres,
    |db| {
        let reg = db.start().await;
        let user = reg.user("op", "agents:read agents:write keys:write").await;
        let t = user.token.as_str();
        let a1 = reg.create_agent(t, &json!({ "name": "one" })).await["id"].as_str().unwrap().to_owned();
        let a2 = reg.create_agent(t, &json!({ "name": "two" })).await["id"].as_str().unwrap().to_owned();
        let url1 = reg.url(&format!("/v1/agents/{a1}/keys"));

        // A correct proof: 201, the public key stored with kid = thumbprint.
        let key = ed25519();
        let body = key_body(&key);
        let good = reg.proof(&key, &a1, &body, unix_now());
        let r = reg.post_key_raw(t, &a1, &body, &good).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        assert_eq!(v["thumbprint"], thumbprint(&key));
        assert_eq!(v["jwk"]["kid"], thumbprint(&key));
        assert!(v["jwk"].get("d").is_none(), "no private member stored");
        assert_eq!(v["retired_at"], Value::Null);
        // EC keys too.
        for alg in [Algorithm::EcdsaP256Sha256, Algorithm::EcdsaP384Sha384] {
            let k = Jwk::generate(alg).unwrap();
            let r = reg.add_key(t, &a1, &k).await;
            assert_eq!(r.status, 201, "{alg:?}: {}", r.text());
        }

        // Replaying the exact request: refused while the key is active, for the other
        // agent, and after the key was retired.
        let r = reg.post_key_raw(t, &a1, &body, &good).await;
        assert_error(&r, 401, "proof_of_possession_replayed");
        // For another agent the signed @path differs: the proof itself does not verify
        // (checked before the nonce, so the nonce is not what refuses it).
        let r = reg.post_key_raw(t, &a2, &body, &good).await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        let r = reg
            .call("DELETE", &format!("/v1/agents/{a1}/keys/{}", thumbprint(&key)), Some(t), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        let r = reg.post_key_raw(t, &a1, &body, &good).await;
        assert_error(&r, 401, "proof_of_possession_replayed");
        // The same key once more with a fresh proof: it exists (retired) on this agent.
        let r = reg.add_key(t, &a1, &key).await;
        assert_error(&r, 409, "conflict");

        // Missing proof.
        let fresh = ed25519();
        let fbody = key_body(&fresh);
        let r = reg.post_key_raw(t, &a1, &fbody, &[]).await;
        assert_error(&r, 401, "proof_of_possession_missing");
        let digest_only: Vec<(&str, String)> = reg.proof(&fresh, &a1, &fbody, unix_now())
            .into_iter()
            .filter(|(n, _)| *n == "Content-Digest")
            .collect();
        let r = reg.post_key_raw(t, &a1, &fbody, &digest_only).await;
        assert_error(&r, 401, "proof_of_possession_missing");

        // Signed by another key (its own keyid), the body carrying `fresh`.
        let other = ed25519();
        let by_other = reg.proof(&other, &a1, &fbody, unix_now());
        let r = reg.post_key_raw(t, &a1, &fbody, &by_other).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_error_shape(&r);
        // Signed by another key that claims to be `fresh` (keyid = fresh's thumbprint).
        let forged = custom_proof(&other, &thumbprint(&fresh), "oba-registry-pop", &url1, &fbody, unix_now(), true);
        let r = reg.post_key_raw(t, &a1, &fbody, &forged).await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        // The hand-made proof is right when signed by the key itself (so the refusals
        // above are about the key, not the construction).
        let own = custom_proof(&fresh, &thumbprint(&fresh), "oba-registry-pop", &url1, &fbody, unix_now(), true);
        let r = reg.post_key_raw(t, &a1, &fbody, &own).await;
        assert_eq!(r.status, 201, "{}", r.text());

        // Body changed after signing (same key, other validity window).
        let k = ed25519();
        let signed = key_body(&k);
        let headers = reg.proof(&k, &a1, &signed, unix_now());
        let changed = json!({ "jwk": k.public().unwrap(), "not_after": unix_now() + 3600 })
            .to_string()
            .into_bytes();
        let r = reg.post_key_raw(t, &a1, &changed, &headers).await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        // Sent to another agent than signed for.
        let r = reg.post_key_raw(t, &a2, &signed, &headers).await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        // Wrong tag; no nonce.
        let r = reg
            .post_key_raw(t, &a1, &signed, &custom_proof(&k, &thumbprint(&k), "web-bot-auth", &url1, &signed, unix_now(), true))
            .await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        let r = reg
            .post_key_raw(t, &a1, &signed, &custom_proof(&k, &thumbprint(&k), "oba-registry-pop", &url1, &signed, unix_now(), false))
            .await;
        assert_error(&r, 401, "proof_of_possession_invalid");
        // Too old (400 s > 300 s), and from the future.
        for created in [unix_now() - 400, unix_now() + 400] {
            let h = reg.proof(&k, &a1, &signed, created);
            let r = reg.post_key_raw(t, &a1, &signed, &h).await;
            assert_error(&r, 401, "proof_of_possession_invalid");
        }
        // None of the refused attempts added the key.
        let r = reg.add_key(t, &a1, &k).await;
        assert_eq!(r.status, 201, "{}", r.text());

        // kid that is not the thumbprint: 400 kid_mismatch.
        let k = ed25519();
        let mut public = k.public().unwrap();
        public.kid = Some("my-key-1".into());
        let b = json!({ "jwk": public }).to_string().into_bytes();
        let h = reg.proof(&k, &a1, &b, unix_now());
        assert_error(&reg.post_key_raw(t, &a1, &b, &h).await, 400, "kid_mismatch");
        // A private JWK: 400.
        let b = json!({ "jwk": k }).to_string().into_bytes();
        let h = reg.proof(&k, &a1, &b, unix_now());
        assert_error(&reg.post_key_raw(t, &a1, &b, &h).await, 400, "invalid_key");
        // A symmetric key: 400.
        let oct = Jwk::generate(Algorithm::HmacSha256).unwrap();
        let b = json!({ "jwk": oct }).to_string().into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "invalid_key");
        let b = json!({ "jwk": { "kty": "oct", "k": "c2VjcmV0" } }).to_string().into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "invalid_key");
        // Not a JWK at all; unknown members of the request.
        let b = json!({ "jwk": { "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" } })
            .to_string()
            .into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "invalid_key");
        let b = json!({ "jwk": 42 }).to_string().into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "invalid_key");
        let b = json!({ "jwk": k.public().unwrap(), "label": "x" }).to_string().into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "malformed_json");
        // Validity window inverted.
        let b = json!({ "jwk": k.public().unwrap(), "not_before": 2_000_000_000, "not_after": 1_900_000_000 })
            .to_string()
            .into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "invalid_validity");

        // The RFC 9421 example key: 400 test_key (without its non-thumbprint kid, and even
        // with a valid proof, since its private half is public)...
        let test_key = rfc9421_test_key();
        let mut public = test_key.public().unwrap();
        public.kid = None;
        let b = json!({ "jwk": public }).to_string().into_bytes();
        let mut signer = test_key.clone();
        signer.kid = None;
        let h = reg.proof(&signer, &a1, &b, unix_now());
        assert_error(&reg.post_key_raw(t, &a1, &b, &h).await, 400, "test_key");
        // ... also with kid = its thumbprint; with its RFC kid ("test-key-ed25519") the kid
        // check answers first.
        public.kid = Some(thumbprint(&test_key));
        let b = json!({ "jwk": public }).to_string().into_bytes();
        assert_error(&reg.post_key_raw(t, &a1, &b, &[]).await, 400, "test_key");
        let b = json!({ "jwk": test_key.public().unwrap() }).to_string().into_bytes();
        let r = reg.post_key_raw(t, &a1, &b, &[]).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_error_shape(&r);

        // The same key added twice (fresh proofs): 409; to another agent: fine.
        let k = ed25519();
        assert_eq!(reg.add_key(t, &a2, &k).await.status, 201);
        assert_error(&reg.add_key(t, &a2, &k).await, 409, "conflict");
        assert_eq!(reg.add_key(t, &a1, &k).await.status, 201);

        // What was added is what is listed: 3 + 1 + 1 + 1 keys on a1, one retired.
        let keys = reg.get(&format!("/v1/agents/{a1}/keys"), Some(t)).await.json();
        let keys = keys["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert_eq!(keys.iter().filter(|k| !k["retired_at"].is_null()).count(), 1);
        // Retiring an unknown or already retired key: 404.
        let r = reg
            .call("DELETE", &format!("/v1/agents/{a1}/keys/{}", thumbprint(&key)), Some(t), None)
            .await;
        assert_error(&r, 404, "not_found");
    }
);

// =======================================================================================
// 5. Public documents.

both_backends!(
    /// JWKS (media type, Cache-Control, ETag, 304, ETag change), card.json, registry.txt,
    /// and the per-agent well-known directory on `<id>.<agent_host_suffix>`.
    public_documents_sqlite,
    public_documents_postgres,
    |db| {
        let reg = db
            .start_with(|c| c.agent_host_suffix = Some("agents.test".into()))
            .await;
        let user = reg.user("op", "agents:read agents:write keys:write").await;
        let t = user.token.as_str();
        let agent = reg
            .create_agent(
                t,
                &json!({
                    "name": "Pub bot",
                    "description": "public",
                    "homepage": "https://pub.example",
                    "contacts": ["ops@pub.example"],
                    "trigger": "fetcher",
                    "expected_user_agent": "PubBot/2",
                    "product_token": "PubBot",
                    "purpose": "archiving"
                }),
            )
            .await;
        let id = agent["id"].as_str().unwrap().to_owned();
        assert_eq!(agent["signature_agent"], format!("https://{id}.agents.test"));
        let key_a = ed25519();
        assert_eq!(reg.add_key(t, &id, &key_a).await.status, 201);

        // The JWKS.
        let jwks_path = format!("/agents/{id}/jwks.json");
        let r = reg.get(&jwks_path, None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some(DIRECTORY_MEDIA_TYPE));
        let cc = r.header("cache-control").expect("Cache-Control");
        assert!(cc.contains("max-age="), "{cc}");
        let etag = r.header("etag").expect("ETag");
        assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
        let jwks = r.json();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(jwks["keys"][0]["kid"], thumbprint(&key_a));
        assert!(jwks["keys"][0].get("d").is_none());
        let dir = oba_webbotauth::directory::Directory::parse(&r.body).expect("a valid directory");
        assert!(dir.key(&thumbprint(&key_a)).is_some());

        // Conditional requests.
        let cond = |tag: &str| {
            reg.send(reg.request("GET", &jwks_path, None).header("if-none-match", tag.to_owned()))
        };
        let r = cond(&etag).await;
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag").as_ref(), Some(&etag));
        assert!(r.header("cache-control").is_some());
        assert_eq!(cond(&format!("W/{etag}")).await.status, 304, "weak comparison");
        assert_eq!(cond(&format!("\"other\", {etag}")).await.status, 304, "a list");
        assert_eq!(cond("*").await.status, 304);
        assert_eq!(cond("\"something-else\"").await.status, 200);

        // A new key changes the ETag; the old one no longer matches.
        let key_b = ed25519();
        assert_eq!(reg.add_key(t, &id, &key_b).await.status, 201);
        let r = cond(&etag).await;
        assert_eq!(r.status, 200);
        let etag2 = r.header("etag").unwrap();
        assert_ne!(etag2, etag);
        assert_eq!(r.json()["keys"].as_array().unwrap().len(), 2);
        // Keys outside their validity window and retired keys are not published.
        let future = ed25519();
        let body = json!({ "jwk": future.public().unwrap(), "not_before": unix_now() + 86_400 })
            .to_string()
            .into_bytes();
        let h = reg.proof(&future, &id, &body, unix_now());
        assert_eq!(reg.post_key_raw(t, &id, &body, &h).await.status, 201);
        let expired = ed25519();
        let body = json!({ "jwk": expired.public().unwrap(), "not_before": unix_now() - 7200, "not_after": unix_now() - 3600 })
            .to_string()
            .into_bytes();
        let h = reg.proof(&expired, &id, &body, unix_now());
        assert_eq!(reg.post_key_raw(t, &id, &body, &h).await.status, 201);
        assert_eq!(cond(&etag2).await.status, 304, "unpublished keys do not change the JWKS");
        let r = reg
            .call("DELETE", &format!("/v1/agents/{id}/keys/{}", thumbprint(&key_a)), Some(t), None)
            .await;
        assert_eq!(r.status, 204);
        let r = reg.get(&jwks_path, None).await;
        let kids: Vec<Value> = r.json()["keys"].as_array().unwrap().iter().map(|k| k["kid"].clone()).collect();
        assert_eq!(kids, [json!(thumbprint(&key_b))]);
        assert_eq!(reg.get(&format!("/v1/agents/{id}/keys"), Some(t)).await.json()["keys"].as_array().unwrap().len(), 4);

        // The card.
        let card_path = format!("/agents/{id}/card.json");
        let r = reg.get(&card_path, None).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("application/json"));
        let card_etag = r.header("etag").expect("card ETag");
        let card = r.json();
        assert_eq!(card["client_id"], reg.url(&card_path), "client_id is the card's own URL");
        assert_eq!(card["jwks_uri"], reg.url(&jwks_path));
        assert_eq!(card["client_name"], "Pub bot");
        assert_eq!(card["client_uri"], "https://pub.example");
        assert_eq!(card["contacts"], json!(["ops@pub.example"]));
        assert_eq!(card["web_bot_auth"]["trigger"], "fetcher");
        assert_eq!(card["web_bot_auth"]["expected-user-agent"], "PubBot/2");
        assert_eq!(card["web_bot_auth"]["rfc9309-product-token"], "PubBot");
        let r = reg
            .send(reg.request("GET", &card_path, None).header("if-none-match", card_etag.clone()))
            .await;
        assert_eq!(r.status, 304);

        // registry.txt.
        let other = reg.create_agent(t, &json!({ "name": "other" })).await;
        let r = reg.get("/registry.txt", None).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        assert!(r.header("etag").is_some());
        let mut lines: Vec<String> = r.text().lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect();
        lines.sort();
        let mut want = vec![reg.url(&card_path), other["card_url"].as_str().unwrap().to_owned()];
        want.sort();
        assert_eq!(lines, want);

        // The well-known directory per agent host.
        let wk = "/.well-known/http-message-signatures-directory";
        let host = |h: String| reg.send(reg.request("GET", wk, None).header("host", h));
        let r = host(format!("{id}.agents.test")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some(DIRECTORY_MEDIA_TYPE));
        assert_eq!(r.body, reg.get(&jwks_path, None).await.body, "the same JWKS");
        assert!(r.header("etag").is_some());
        assert_eq!(host(format!("{}.AGENTS.test:443", id.to_uppercase())).await.status, 200);
        for unknown in [
            "000000000000000000000000.agents.test".to_owned(),
            "agents.test".to_owned(),
            format!("x.{id}.agents.test"),
            format!("{id}.other.test"),
            reg.registry.addr.to_string(),
        ] {
            let r = host(unknown.clone()).await;
            assert_error(&r, 404, "not_found");
        }
        // Unknown agents.
        assert_error(&reg.get("/agents/nope/jwks.json", None).await, 404, "not_found");
        assert_error(&reg.get("/agents/nope/card.json", None).await, 404, "not_found");
    }
);

both_backends!(
    /// Without an agent host suffix the well-known directory is 404, and a configured
    /// public URL is what the documents name.
    public_url_and_no_agent_hosts_sqlite,
    public_url_and_no_agent_hosts_postgres,
    |db| {
        let reg = db
            .start_with(|c| c.public_url = Some("https://registry.example/".into()))
            .await;
        assert_eq!(reg.registry.public_url, "https://registry.example");
        let agent = reg.create_agent(reg.admin(), &json!({ "name": "bot" })).await;
        let id = agent["id"].as_str().unwrap();
        assert_eq!(agent["jwks_uri"], format!("https://registry.example/agents/{id}/jwks.json"));
        let card_url = format!("https://registry.example/agents/{id}/card.json");
        let r = reg.get(&format!("/agents/{id}/card.json"), None).await;
        let card = r.json();
        assert_eq!(card["client_id"], card_url.as_str());
        // With https URLs the card and the list are what Web Bot Auth verifiers accept.
        oba_webbotauth::card::SignatureAgentCard::parse(&r.body, &card_url)
            .expect("the card parses as a Signature Agent Card");
        let txt = reg.get("/registry.txt", None).await.text();
        let entries = oba_webbotauth::card::parse_registry_list(&txt).expect("a valid registry list");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].as_str(), card_url);
        let r = reg
            .send(
                reg.request("GET", "/.well-known/http-message-signatures-directory", None)
                    .header("host", format!("{id}.agents.test")),
            )
            .await;
        assert_error(&r, 404, "not_found");
    }
);

// =======================================================================================
// 6. Rotation by overlap, through the directory client.

/// A clock that only moves when told to.
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn advance(&self, by: Duration) {
        *self.offset.lock().expect("lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().expect("lock")
    }
}

/// A Web Bot Auth request signed by `key`, its `Signature-Agent` member `sig1` pointing
/// at `jwks_uri` as a `jwks_uri` member, covered as `"signature-agent";key="sig1"`.
fn bot_request(key: &Jwk, jwks_uri: &str, now: i64) -> Message {
    let agent = format!("sig1=\"{jwks_uri}\";type=jwks_uri");
    let msg = Message::request("GET", "/article?id=7")
        .unwrap()
        .with_scheme("https")
        .with_header("Host", "site.example")
        .with_header("Signature-Agent", &agent);
    let params = SignatureParams::new(vec![
        Component::derived(Derived::Authority),
        Component::derived(Derived::Method),
        Component::derived(Derived::Path),
        Component::derived(Derived::Query),
        Component::field("signature-agent")
            .unwrap()
            .key("sig1")
            .unwrap(),
    ])
    .unwrap()
    .with_created(now)
    .unwrap()
    .with_expires(now + 60)
    .unwrap()
    .with_keyid(&thumbprint(key))
    .unwrap()
    .with_nonce(&oba_httpsig::random_nonce())
    .unwrap()
    .with_tag(oba_webbotauth::TAG)
    .unwrap();
    let sig =
        oba_httpsig::sign(&msg, None, "sig1", params, &key.signing_key(None).unwrap()).unwrap();
    msg.with_header("Signature-Input", sig.signature_input())
        .with_header("Signature", sig.signature())
}

#[track_caller]
fn assert_verified(outcome: &Outcome, key: &Jwk, jwks_uri: &str) {
    match outcome {
        Outcome::Verified(v) => {
            assert_eq!(v.thumbprint, thumbprint(key));
            assert_eq!(v.agent.as_ref().map(|a| a.url.as_str()), Some(jwks_uri));
        }
        other => panic!("expected verified, got {other:?}"),
    }
}

both_backends!(
    /// Key A verifies; with B added both verify; once A is retired and the client's cache
    /// (max-age 300) has expired, A is an unknown key and B still verifies.
    rotation_by_overlap_sqlite,
    rotation_by_overlap_postgres,
    |db| {
        let reg = db.start().await;
        let user = reg.user("bot-operator", "agents:read agents:write keys:write").await;
        let t = user.token.as_str();
        let agent = reg.create_agent(t, &json!({ "name": "rotating bot" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let jwks_uri = agent["jwks_uri"].as_str().unwrap().to_owned();
        let key_a = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let key_b = ed25519();
        assert_eq!(reg.add_key(t, &id, &key_a).await.status, 201);

        let clock = Arc::new(ManualClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        });
        let client = Arc::new(
            DirectoryClient::new(ClientConfig {
                allow_loopback: true,
                clock: clock.clone(),
                ..ClientConfig::default()
            })
            .unwrap(),
        );
        let verifier = Verifier::new(VerifyPolicy {
            allow_http_loopback: true,
            ..VerifyPolicy::default()
        })
        .with_client(client.clone());
        let past_max_age = Duration::from_secs(301);

        // Only A.
        let out = verifier.verify(&bot_request(&key_a, &jwks_uri, unix_now()), unix_now()).await;
        assert_verified(&out, &key_a, &jwks_uri);
        let out = verifier.verify(&bot_request(&key_b, &jwks_uri, unix_now()), unix_now()).await;
        assert!(matches!(&out, Outcome::Unverified(r) if r.code == "unknown_key"), "{out:?}");
        assert_eq!(client.fetch_count(), 2, "one fetch, one refetch for the unknown key");

        // Overlap: B added; after the cache expires both verify.
        assert_eq!(reg.add_key(t, &id, &key_b).await.status, 201);
        clock.advance(past_max_age);
        let out = verifier.verify(&bot_request(&key_a, &jwks_uri, unix_now()), unix_now()).await;
        assert_verified(&out, &key_a, &jwks_uri);
        let out = verifier.verify(&bot_request(&key_b, &jwks_uri, unix_now()), unix_now()).await;
        assert_verified(&out, &key_b, &jwks_uri);
        assert_eq!(client.fetch_count(), 3, "one revalidation after max-age");

        // A retired: still cached as published until the cache expires...
        let r = reg
            .call("DELETE", &format!("/v1/agents/{id}/keys/{}", thumbprint(&key_a)), Some(t), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        let out = verifier.verify(&bot_request(&key_a, &jwks_uri, unix_now()), unix_now()).await;
        assert_verified(&out, &key_a, &jwks_uri);
        // ... then A is unknown, B verifies.
        clock.advance(past_max_age);
        let out = verifier.verify(&bot_request(&key_a, &jwks_uri, unix_now()), unix_now()).await;
        assert!(matches!(&out, Outcome::Unverified(r) if r.code == "unknown_key"), "A after retirement: {out:?}");
        let out = verifier.verify(&bot_request(&key_b, &jwks_uri, unix_now()), unix_now()).await;
        assert_verified(&out, &key_b, &jwks_uri);
        // A signature by B over a changed request is invalid, not unverified.
        let mut tampered = bot_request(&key_b, &jwks_uri, unix_now());
        tampered.remove_header("host");
        tampered.append_header("Host", "elsewhere.example");
        let out = verifier.verify(&tampered, unix_now()).await;
        assert_eq!(out.kind(), "invalid", "{out:?}");
    }
);

both_backends!(
    /// The registry never publishes a JWKS that the directory client refuses: with more
    /// active keys than a key directory may hold (`directory::MAX_KEYS`), either the extra
    /// key is refused or the agent's existing keys must still verify.
    published_jwks_stays_usable_by_verifiers_sqlite,
    published_jwks_stays_usable_by_verifiers_postgres,
    |db| {
        let reg = db.start().await;
        let user = reg.user("keyhoarder", "agents:read agents:write keys:write").await;
        let agent = reg.create_agent(&user.token, &json!({ "name": "many keys" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let jwks_uri = agent["jwks_uri"].as_str().unwrap().to_owned();
        let max = oba_webbotauth::directory::MAX_KEYS;
        let keys: Vec<Jwk> = (0..=max).map(|_| ed25519()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for k in keys.clone() {
            let (api, token, id) = (reg.api.clone(), user.token.clone(), id.clone());
            tasks.spawn(async move { api.add_key(&token, &id, &k).await });
        }
        let mut added = 0;
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("task");
            if r.status == 201 {
                added += 1;
            } else {
                assert!((400..500).contains(&r.status), "a refusal is a 4xx: {}", r.text());
                assert_error_shape(&r);
            }
        }
        assert!(added >= max, "{max} keys fit in a directory, {added} added");

        let client = Arc::new(
            DirectoryClient::new(ClientConfig {
                allow_loopback: true,
                ..ClientConfig::default()
            })
            .unwrap(),
        );
        let verifier = Verifier::new(VerifyPolicy {
            allow_http_loopback: true,
            ..VerifyPolicy::default()
        })
        .with_client(client);
        let published = reg.get(&format!("/agents/{id}/jwks.json"), None).await.json();
        let signer = keys
            .iter()
            .find(|k| published["keys"].as_array().unwrap().iter().any(|p| p["kid"] == thumbprint(k)))
            .expect("a published key");
        let out = verifier.verify(&bot_request(signer, &jwks_uri, unix_now()), unix_now()).await;
        assert!(
            matches!(out, Outcome::Verified(_)),
            "{added} active keys published ({} in the JWKS): a request signed by one of them \
             does not verify: {out:?}",
            published["keys"].as_array().unwrap().len()
        );
    }
);

// =======================================================================================
// 7. Concurrency.

both_backends!(
    /// 20 concurrent key additions to one agent: all 201, none lost.
    concurrent_key_additions_sqlite,
    concurrent_key_additions_postgres,
    |db| {
        let reg = db.start().await;
        let user = reg.user("busy", "agents:read agents:write keys:write").await;
        let agent = reg.create_agent(&user.token, &json!({ "name": "many keys" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let keys: Vec<Jwk> = (0..20)
            .map(|i| {
                Jwk::generate(if i % 2 == 0 { Algorithm::Ed25519 } else { Algorithm::EcdsaP256Sha256 })
                    .unwrap()
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for k in keys.clone() {
            let api = reg.api.clone();
            let (token, id) = (user.token.clone(), id.clone());
            tasks.spawn(async move { api.add_key(&token, &id, &k).await });
        }
        let mut statuses = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("task");
            assert_eq!(r.status, 201, "{}", r.text());
            statuses.push(r.status);
        }
        assert_eq!(statuses.len(), 20);
        let listed = reg.get(&format!("/v1/agents/{id}/keys"), Some(&user.token)).await.json();
        let mut got: Vec<String> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["thumbprint"].as_str().unwrap().to_owned())
            .collect();
        let mut want: Vec<String> = keys.iter().map(thumbprint).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "every key stored once");
        let jwks = reg.get(&format!("/agents/{id}/jwks.json"), None).await.json();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 20);
        let audit = reg.get("/v1/audit?limit=1000", Some(reg.admin())).await.json();
        let adds = audit["records"].as_array().unwrap().iter().filter(|r| r["action"] == "key.add").count();
        assert_eq!(adds, 20, "one audit record per key");
    }
);

both_backends!(
    /// Races: one proof sent 10 times at once adds the key once (the others are replays);
    /// one key sent 10 times at once with distinct proofs is added once (the others 409).
    concurrent_replays_and_duplicates_sqlite,
    concurrent_replays_and_duplicates_postgres,
    |db| {
        let reg = db.start().await;
        let user = reg.user("racer", "agents:read agents:write keys:write").await;
        let agent = reg.create_agent(&user.token, &json!({ "name": "raced" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();

        // The same request (same proof) ten times at once.
        let key = ed25519();
        let body = key_body(&key);
        let proof = reg.proof(&key, &id, &body, unix_now());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (api, token, id, body, proof) =
                (reg.api.clone(), user.token.clone(), id.clone(), body.clone(), proof.clone());
            tasks.spawn(async move { api.post_key_raw(&token, &id, &body, &proof).await });
        }
        let mut created = 0;
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("task");
            if r.status == 201 {
                created += 1;
            } else {
                assert_error(&r, 401, "proof_of_possession_replayed");
            }
        }
        assert_eq!(created, 1, "one proof, one key");

        // One new key, ten distinct proofs at once.
        let key = ed25519();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (api, token, id, key) = (reg.api.clone(), user.token.clone(), id.clone(), key.clone());
            tasks.spawn(async move { api.add_key(&token, &id, &key).await });
        }
        let mut created = 0;
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("task");
            if r.status == 201 {
                created += 1;
            } else {
                assert_error(&r, 409, "conflict");
            }
        }
        assert_eq!(created, 1, "the key is added once");
        let keys = reg.get(&format!("/v1/agents/{id}/keys"), Some(&user.token)).await.json();
        assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    }
);

// =======================================================================================
// 8. Malformed requests.

both_backends!(
    /// Malformed JSON, unknown fields, oversize bodies, unknown routes and wrong methods
    /// are JSON errors with the right status, never 500.
    malformed_requests_are_json_errors_sqlite,
    malformed_requests_are_json_errors_postgres,
    |db| {
        let reg = db.start().await;
        let admin = reg.admin().to_owned();
        let agent = reg.create_agent(&admin, &json!({ "name": "bot" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let raw = |method: &str, path: &str, body: Vec<u8>| {
            reg.send(
                reg.request(method, path, Some(&admin))
                    .header("content-type", "application/json")
                    .body(body),
            )
        };

        // Malformed JSON.
        for body in [&b"{not json"[..], b"", b"{\"name\": \"x\"", b"null", b"[1]", b"\xff\xfe"] {
            let syntax_error = serde_json::from_slice::<Value>(body).is_err();
            for (method, path) in [
                ("POST", "/v1/agents".to_owned()),
                ("POST", "/v1/tokens".to_owned()),
                ("POST", "/v1/accounts".to_owned()),
                ("POST", format!("/v1/agents/{id}/keys")),
            ] {
                let r = raw(method, &path, body.to_vec()).await;
                if syntax_error {
                    assert_error(&r, 400, "malformed_json");
                } else {
                    // Valid JSON of the wrong shape: 400 too (the code may be more specific).
                    assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
                    assert_error_shape(&r);
                }
            }
            let r = raw("PATCH", &format!("/v1/agents/{id}"), body.to_vec()).await;
            assert_eq!(r.status, 400, "{}", r.text());
            assert_error_shape(&r);
        }
        // Unknown fields; wrong types.
        for (path, body) in [
            ("/v1/agents", json!({ "name": "x", "colour": "blue" })),
            ("/v1/tokens", json!({ "scopes": "agents:read", "admin": true })),
            ("/v1/accounts", json!({ "name": "x", "id": "mine" })),
            ("/v1/agents", json!({ "name": 5 })),
            ("/v1/tokens", json!({ "scopes": "agents:read", "expires_in": "soon" })),
        ] {
            let r = reg.post(path, Some(&admin), &body).await;
            assert_error(&r, 400, "malformed_json");
        }

        // Bodies over 64 KiB: 413 body_too_large.
        let big = json!({ "name": "x", "description": "d".repeat(70 * 1024) }).to_string().into_bytes();
        for (method, path) in [
            ("POST", "/v1/agents".to_owned()),
            ("PATCH", format!("/v1/agents/{id}")),
            ("POST", format!("/v1/agents/{id}/keys")),
            ("POST", "/v1/tokens".to_owned()),
            ("POST", "/v1/accounts".to_owned()),
        ] {
            let r = raw(method, &path, big.clone()).await;
            assert_error(&r, 413, "body_too_large");
        }
        // Exactly 64 KiB is read (and then judged on content).
        let mut at_limit = json!({ "name": "x", "description": "" }).to_string().into_bytes();
        at_limit.splice(at_limit.len() - 2..at_limit.len() - 2, std::iter::repeat_n(b'd', 64 * 1024 - at_limit.len()));
        assert_eq!(at_limit.len(), 64 * 1024);
        let r = raw("POST", "/v1/agents", at_limit).await;
        assert_error(&r, 400, "invalid_agent");

        // Unknown routes: 404 route_not_found.
        for path in ["/", "/v1", "/v2/agents", "/v1/agents/x/y/z", "/agents/x", "/registry.json", "/.well-known/x"] {
            let r = reg.get(path, Some(&admin)).await;
            assert_error(&r, 404, "route_not_found");
        }
        assert_error(&reg.get("/nope", None).await, 404, "route_not_found");

        // Wrong methods: 405 method_not_allowed.
        for (method, path) in [
            ("PUT", "/v1/agents".to_owned()),
            ("DELETE", "/v1/agents".to_owned()),
            ("POST", format!("/v1/agents/{id}")),
            ("PUT", format!("/v1/agents/{id}/keys")),
            ("GET", format!("/v1/agents/{id}/keys/k")),
            ("PATCH", "/v1/tokens".to_owned()),
            ("GET", "/v1/tokens/x".to_owned()),
            ("GET", "/v1/accounts".to_owned()),
            ("POST", "/v1/audit".to_owned()),
            ("POST", format!("/agents/{id}/jwks.json")),
            ("DELETE", "/registry.txt".to_owned()),
            ("POST", "/openapi.json".to_owned()),
            ("POST", "/.well-known/http-message-signatures-directory".to_owned()),
        ] {
            let r = reg.call(method, &path, Some(&admin), Some(&json!({}))).await;
            assert_error(&r, 405, "method_not_allowed");
        }
        // Nothing above changed anything.
        let list = reg.get("/v1/agents", Some(&admin)).await.json();
        assert_eq!(list["agents"].as_array().unwrap().len(), 1);
    }
);

both_backends!(
    /// Requests the handlers' extractors refuse (a query parameter of the wrong type, a
    /// path segment that is not UTF-8) are JSON errors too.
    extractor_rejections_are_json_errors_sqlite,
    extractor_rejections_are_json_errors_postgres,
    |db| {
        let reg = db.start().await;
        let admin = reg.admin().to_owned();
        let mut problems = Vec::new();
        for (path, token, statuses) in [
            ("/v1/audit?after=yesterday", Some(admin.as_str()), &[400][..]),
            ("/v1/audit?limit=-", Some(admin.as_str()), &[400][..]),
            ("/v1/agents/%FF%FE", Some(admin.as_str()), &[400, 404][..]),
            ("/agents/%FF/jwks.json", None, &[400, 404][..]),
            ("/agents/%FF/card.json", None, &[400, 404][..]),
        ] {
            let r = reg.get(path, token).await;
            let ctype = r.header("content-type").unwrap_or_default();
            let shape_ok = ctype.starts_with("application/json")
                && serde_json::from_slice::<Value>(&r.body)
                    .is_ok_and(|v| v["error"]["code"].is_string() && v["error"]["message"].is_string());
            if !statuses.contains(&r.status) || !shape_ok {
                problems.push(format!("GET {path}: {} {ctype:?} {:?}", r.status, r.text()));
            }
        }
        assert!(problems.is_empty(), "not JSON errors:\n{}", problems.join("\n"));
    }
);

// =======================================================================================
// 9. Audit.

both_backends!(
    /// The audit trail records who did what (agent.create, key.add, key.retire,
    /// token.create, ...), in order, without secrets; admin only.
    audit_trail_sqlite,
    audit_trail_postgres,
    |db| {
        let reg = db.start().await;
        let admin = reg.admin().to_owned();
        let user = reg.user("audited", "agents:read agents:write keys:write").await;
        let t = user.token.as_str();
        let agent = reg.create_agent(t, &json!({ "name": "bot" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let key = ed25519();
        assert_eq!(reg.add_key(t, &id, &key).await.status, 201);
        let kid = thumbprint(&key);
        let r = reg.call("DELETE", &format!("/v1/agents/{id}/keys/{kid}"), Some(t), None).await;
        assert_eq!(r.status, 204);
        let r = reg.post("/v1/tokens", Some(t), &json!({ "scopes": "agents:read" })).await;
        assert_eq!(r.status, 201);
        let user_token2 = r.json();
        let r = reg
            .call("PATCH", &format!("/v1/agents/{id}"), Some(t), Some(&json!({ "description": "d" })))
            .await;
        assert_eq!(r.status, 200);
        let r = reg
            .call("DELETE", &format!("/v1/tokens/{}", user_token2["id"].as_str().unwrap()), Some(t), None)
            .await;
        assert_eq!(r.status, 204);
        assert_eq!(reg.call("DELETE", &format!("/v1/agents/{id}"), Some(t), None).await.status, 204);

        // Non-admins: 403.
        assert_error(&reg.get("/v1/audit", Some(t)).await, 403, "forbidden");
        assert_error(&reg.get("/v1/audit", None).await, 401, "unauthorized");

        let r = reg.get("/v1/audit", Some(&admin)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        for secret in [&admin, &user.token, user_token2["token"].as_str().unwrap()] {
            assert!(!r.text().contains(secret), "no token secret in the audit trail");
        }
        let records = r.json()["records"].as_array().unwrap().clone();
        let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing seq: {seqs:?}");
        for r in &records {
            assert!(r["at"].as_i64().unwrap() > 1_600_000_000, "{r}");
        }
        let find = |action: &str, target: &str| -> Value {
            records
                .iter()
                .find(|r| r["action"] == action && r["target"] == target)
                .unwrap_or_else(|| panic!("no {action} on {target} in {records:#?}"))
                .clone()
        };
        // The bootstrap token, by the system; its id names the admin's actor.
        let boot = &records[0];
        assert_eq!(boot["action"], "token.create");
        assert_eq!(boot["actor"], "system");
        assert_eq!(boot["detail"]["bootstrap"], true);
        let admin_account = boot["detail"]["account_id"].as_str().unwrap();
        let admin_actor = format!("account:{admin_account}/token:{}", boot["target"].as_str().unwrap());
        let user_actor = format!("account:{}/token:{}", user.account, user.token_id);

        assert_eq!(find("account.create", &user.account)["actor"], admin_actor);
        let tc = find("token.create", &user.token_id);
        assert_eq!(tc["actor"], admin_actor);
        assert_eq!(tc["detail"]["account_id"], user.account.as_str());
        assert_eq!(tc["detail"]["scopes"], "agents:read agents:write keys:write");
        let ac = find("agent.create", &id);
        assert_eq!(ac["actor"], user_actor);
        assert_eq!(ac["detail"]["name"], "bot");
        assert_eq!(find("key.add", &format!("{id}/{kid}"))["actor"], user_actor);
        assert_eq!(find("key.retire", &format!("{id}/{kid}"))["actor"], user_actor);
        assert_eq!(find("token.create", user_token2["id"].as_str().unwrap())["actor"], user_actor);
        assert_eq!(find("token.revoke", user_token2["id"].as_str().unwrap())["actor"], user_actor);
        assert_eq!(find("agent.update", &id)["actor"], user_actor);
        assert_eq!(find("agent.delete", &id)["actor"], user_actor);
        let order: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(
            order,
            [
                "token.create", "account.create", "token.create", "agent.create", "key.add",
                "key.retire", "token.create", "agent.update", "token.revoke", "agent.delete"
            ]
        );

        // Paging.
        let page = reg
            .get(&format!("/v1/audit?after={}&limit=2", seqs[2]), Some(&admin))
            .await
            .json();
        let page = page["records"].as_array().unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0]["seq"].as_i64(), Some(seqs[3]));
        assert_eq!(page[1]["seq"].as_i64(), Some(seqs[4]));
        let tail = reg.get(&format!("/v1/audit?after={}", seqs[seqs.len() - 1]), Some(&admin)).await.json();
        assert_eq!(tail["records"], json!([]));
    }
);

// =======================================================================================
// 9b. The audit trail is an oba-audit hash chain, verifiable with the published key.

/// The public audit key as a verifier trusts it: the JWK Set at
/// `/.well-known/audit-keys.json`.
async fn published_audit_keys(api: &Api) -> oba_audit::TrustedKeys {
    let r = api.get("/.well-known/audit-keys.json", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set = oba_httpsig::jwk::JwkSet::parse(&r.text()).expect("a JWK Set");
    let mut keys = oba_audit::TrustedKeys::new();
    assert_eq!(keys.add_jwk_set(&set), 1, "one usable key");
    keys
}

/// What `oba audit verify --db URL` does: oba-audit reads the registry's `audit_log`.
async fn verify_chain(db: &TestDb, keys: &oba_audit::TrustedKeys) -> oba_audit::Report {
    let log = oba_audit::DbLog::connect_existing(&db.url, None)
        .await
        .expect("the registry's audit_log opens as an oba-audit table");
    let report = log.verify(keys).await.expect("the table reads");
    log.close().await;
    report
}

/// Every record of the chain, as JSON lines (what `oba audit export` prints).
async fn chain_lines(db: &TestDb) -> Vec<String> {
    let log = oba_audit::DbLog::connect_existing(&db.url, None)
        .await
        .unwrap();
    let mut lines = Vec::new();
    log.scan(None, |r| {
        lines.push(r.expect("every row decodes").to_line());
        std::ops::ControlFlow::Continue(())
    })
    .await
    .unwrap();
    log.close().await;
    lines
}

/// Runs SQL on the registry's database as its owner would: the append-only triggers
/// disabled first (they stop accidents, not an owner).
fn tamper(db: &TestDb, sql: &str) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    // Boxed here, with owned strings: the Send check of the caller's future stays simple.
    let (url, sql) = (db.url.clone(), sql.to_owned());
    Box::pin(async move {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
        let pg = url.starts_with("postgres");
        let mut stmts: Vec<&str> = if pg {
            vec!["ALTER TABLE audit_log DISABLE TRIGGER USER"]
        } else {
            vec![
                "DROP TRIGGER IF EXISTS audit_log_no_update",
                "DROP TRIGGER IF EXISTS audit_log_no_delete",
            ]
        };
        stmts.push(&sql);
        if pg {
            stmts.push("ALTER TABLE audit_log ENABLE TRIGGER USER");
        }
        for stmt in stmts {
            sqlx::query(stmt)
                .execute(&mut conn)
                .await
                .expect("tampering SQL");
        }
        conn.close().await.ok();
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    oba_audit::sha256_hex(bytes)
}

both_backends!(
    /// Token create + revoke and key add + retire (and the accounts and agents around
    /// them) are chained records: seq 1, 2, 3, ..., each `prev` the hash before, a
    /// checkpoint every N records signed by the key published at
    /// `/.well-known/audit-keys.json`; oba-audit verifies the table; records carry who,
    /// what, which key and body hashes but no secret; a checkpoint on demand signs the
    /// tail, and a restart continues the chain.
    audit_chain_verifies_with_the_published_key_sqlite,
    audit_chain_verifies_with_the_published_key_postgres,
    |db| {
        let reg = db.start_with(|c| c.audit_checkpoint_every = 4).await;
        let admin = reg.admin().to_owned();

        // The published key: one public JWK, kid = the registry's audit key id.
        let r = reg.get("/.well-known/audit-keys.json", None).await;
        assert_eq!(r.header("content-type").as_deref(), Some("application/jwk-set+json"));
        assert!(r.header("etag").is_some(), "cacheable");
        let set = r.json();
        assert_eq!(set["keys"][0]["kid"], reg.registry.audit_keyid.as_str());
        assert_eq!(set["keys"][0]["kty"], "OKP");
        assert!(set["keys"][0].get("d").is_none(), "never the private part");
        let keys = published_audit_keys(&reg).await;

        // The private key: a 0600 file, next to the SQLite file by default.
        let key_file = reg.registry.audit_key_file.clone().expect("a key file");
        let private = std::fs::read_to_string(&key_file).expect("key file");
        if let Some(dir) = &db._dir {
            assert_eq!(key_file, dir.path().join("registry-audit.jwk"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let private_d = Jwk::parse(&private).unwrap().d.expect("a private key");

        // seq 1: the bootstrap token; 2, 3: the user's account and token.
        let user = reg.user("chained", "agents:read agents:write keys:write").await;
        let t = user.token.as_str();
        // 4: a token (then a checkpoint, 5), 6: its revocation.
        let body = json!({ "scopes": "agents:read" });
        let r = reg.post("/v1/tokens", Some(t), &body).await;
        assert_eq!(r.status, 201);
        let token2 = r.json();
        let token2_id = token2["id"].as_str().unwrap().to_owned();
        let token2_secret = token2["token"].as_str().unwrap().to_owned();
        let r = reg.call("DELETE", &format!("/v1/tokens/{token2_id}"), Some(t), None).await;
        assert_eq!(r.status, 204);
        // 7: an agent, 8: a key, 9: its retirement (then a checkpoint, 10).
        let agent = reg.create_agent(t, &json!({ "name": "bot" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let key = ed25519();
        let kid = thumbprint(&key);
        assert_eq!(reg.add_key(t, &id, &key).await.status, 201);
        let r = reg.call("DELETE", &format!("/v1/agents/{id}/keys/{kid}"), Some(t), None).await;
        assert_eq!(r.status, 204);

        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 10 records, 2 checkpoints, 0 unsigned at the end");
        assert_eq!(report.last_seq, 10);

        // The same records through the API, with their place in the chain.
        let r = reg.get("/v1/audit", Some(&admin)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let records = r.json()["records"].as_array().unwrap().clone();
        let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(records[0]["prev"], "0".repeat(64));
        for w in records.windows(2) {
            assert_eq!(w[1]["prev"], w[0]["hash"], "record {} links to {}", w[1]["seq"], w[0]["seq"]);
        }
        assert_eq!(report.last_hash, records[9]["hash"].as_str().unwrap());
        let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(
            actions,
            [
                "token.create", "account.create", "token.create", "token.create", "checkpoint",
                "token.revoke", "agent.create", "key.add", "key.retire", "checkpoint"
            ]
        );
        for cp in [&records[4], &records[9]] {
            assert_eq!(cp["sig_keyid"], reg.registry.audit_keyid.as_str());
            assert_eq!(cp["sig_alg"], "ed25519");
            assert!(cp["sig"].is_string());
            assert_eq!(cp["actor"], Value::Null);
            assert_eq!(cp["detail"], json!({ "dropped": 0 }));
        }
        let user_actor = format!("account:{}/token:{}", user.account, user.token_id);
        let tc = &records[3];
        assert_eq!(tc["actor"], user_actor.as_str());
        assert_eq!(tc["auth_method"], "token");
        assert_eq!(tc["target"], token2_id.as_str());
        assert_eq!(tc["key_id"], token2_id.as_str());
        assert_eq!(tc["detail"]["scopes"], "agents:read");
        assert_eq!(tc["hashes"]["request_body"], sha256_hex(body.to_string().as_bytes()).as_str());
        assert_eq!(records[5]["key_id"], token2_id.as_str());
        assert_eq!(records[5]["target"], token2_id.as_str());
        for r in [&records[7], &records[8]] {
            assert_eq!(r["key_id"], kid.as_str());
            assert_eq!(r["target"], format!("{id}/{kid}").as_str());
            assert_eq!(r["actor"], user_actor.as_str());
        }
        assert!(records[7]["hashes"]["request_body"].is_string());
        assert_eq!(records[8]["hashes"], json!({}));
        for r in &records {
            assert!(r["at"].as_i64().unwrap() > 1_600_000_000);
            assert_eq!(r["at"].as_i64().unwrap(), r["time_ms"].as_i64().unwrap().div_euclid(1000));
        }

        // No secret anywhere: not in the API's view, not in a stored row.
        let stored = chain_lines(db).await.join("\n");
        for text in [r.text(), stored] {
            for secret in [
                admin.as_str(),
                user.token.as_str(),
                token2_secret.as_str(),
                &oba_registry::auth::token_hash(&token2_secret),
                &oba_registry::auth::token_hash(&user.token),
                private_d.as_str(),
            ] {
                assert!(!text.contains(secret), "a secret in the audit trail");
            }
        }

        // One more change is unsigned until a checkpoint signs it.
        assert_eq!(reg.call("DELETE", &format!("/v1/agents/{id}"), Some(t), None).await.status, 204);
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 11 records, 2 checkpoints, 1 unsigned at the end");
        assert!(reg.registry.audit_checkpoint().await.unwrap(), "a checkpoint written");
        assert!(!reg.registry.audit_checkpoint().await.unwrap(), "nothing left to sign");
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 12 records, 3 checkpoints, 0 unsigned at the end");
        drop(reg);

        // A restart continues the chain, with the same key; shutdown() signs the tail.
        let registry = oba_registry::start(db.config()).await.expect("restart");
        let mut api = Api::for_registry(&registry);
        assert_eq!(api.admin, None, "no new admin token on restart");
        api.admin = Some(admin.clone());
        let (_token, token_id) = api.token_for(&user.account, "agents:read").await;
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 13 records, 3 checkpoints, 1 unsigned at the end");
        registry.shutdown().await.expect("shutdown signs the tail");
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 14 records, 4 checkpoints, 0 unsigned at the end");
        let lines = chain_lines(db).await;
        let r13 = oba_audit::AuditRecord::parse_line(lines[12].as_bytes()).unwrap();
        assert_eq!(r13.event.key_id.as_deref(), Some(token_id.as_str()));
    }
);

both_backends!(
    /// Altering one row of `audit_log` (an UPDATE, as the table's owner) is detected and
    /// named by its seq; putting the value back makes the chain whole again; deleting a
    /// row is detected as removed. The registry still starts on the tampered database and
    /// keeps chaining (the verifier keeps naming the first problem).
    audit_tampering_is_detected_sqlite,
    audit_tampering_is_detected_postgres,
    |db| {
        let reg = db.start_with(|c| c.audit_checkpoint_every = 3).await;
        let keys = published_audit_keys(&reg).await;
        // 1 bootstrap, 2 account, 3 token, 4 checkpoint, 5 agent, 6 key added, 7 key
        // retired, 8 checkpoint.
        let user = reg.user("victim", "agents:read agents:write keys:write").await;
        let agent = reg.create_agent(&user.token, &json!({ "name": "bot" })).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let key = ed25519();
        assert_eq!(reg.add_key(&user.token, &id, &key).await.status, 201);
        let r = reg
            .call("DELETE", &format!("/v1/agents/{id}/keys/{}", thumbprint(&key)), Some(&user.token), None)
            .await;
        assert_eq!(r.status, 204);
        let records = reg.get("/v1/audit", Some(reg.admin())).await.json()["records"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(records.len(), 8);
        assert_eq!(records[5]["action"], "key.add");
        let admin = reg.admin().to_owned();
        drop(reg);
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 8 records, 2 checkpoints, 0 unsigned at the end");

        // Who added the key: rewritten.
        tamper(db, "UPDATE audit_log SET actor = 'account:mallory/token:x' WHERE seq = 6").await;
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.problem, Some(oba_audit::Problem::Altered { seq: 6 }));
        assert_eq!(report.summary(), "TAMPERED: record 6 was altered");
        assert_eq!(report.records, 5, "the records before it verified");
        // Back as it was: whole again.
        let original = records[5]["actor"].as_str().unwrap();
        tamper(db, &format!("UPDATE audit_log SET actor = '{original}' WHERE seq = 6")).await;
        assert!(verify_chain(db, &keys).await.is_intact());
        // A detail (the key's validity) rewritten: detected too.
        tamper(db, "UPDATE audit_log SET details = replace(details, 'null', '1') WHERE seq = 6").await;
        assert_eq!(
            verify_chain(db, &keys).await.problem,
            Some(oba_audit::Problem::Altered { seq: 6 })
        );
        tamper(db, "UPDATE audit_log SET details = replace(details, ':1', ':null') WHERE seq = 6").await;
        assert!(verify_chain(db, &keys).await.is_intact());

        // The agent's creation: deleted.
        tamper(db, "DELETE FROM audit_log WHERE seq = 5").await;
        let report = verify_chain(db, &keys).await;
        assert_eq!(
            report.problem,
            Some(oba_audit::Problem::Removed { after_seq: 4, expected_seq: 5 })
        );
        assert_eq!(report.summary(), "TAMPERED: record 5 was removed (after record 4)");

        // The registry starts anyway and records the next change after the tail.
        let registry = oba_registry::start(db.config()).await.expect("starts on a tampered trail");
        let mut api = Api::for_registry(&registry);
        api.admin = Some(admin);
        api.user("after", "agents:read").await;
        registry.shutdown().await.unwrap();
        let lines = chain_lines(db).await;
        let last = oba_audit::AuditRecord::parse_line(lines.last().unwrap().as_bytes()).unwrap();
        assert_eq!(last.seq, 11, "8, then account, token, checkpoint");
        assert!(last.is_checkpoint());
        assert_eq!(
            verify_chain(db, &keys).await.problem,
            Some(oba_audit::Problem::Removed { after_seq: 4, expected_seq: 5 }),
            "still the first problem"
        );
    }
);

both_backends!(
    /// 20 token creations at once (and, on PostgreSQL, 10 more through a second registry
    /// on the same database, as another process would) make one unbroken chain: every
    /// token recorded once, seq without gaps or forks, checkpoints where due.
    audit_chain_survives_concurrent_changes_sqlite,
    audit_chain_survives_concurrent_changes_postgres,
    |db| {
        let reg = db.start_with(|c| c.audit_checkpoint_every = 5).await;
        let keys = published_audit_keys(&reg).await;
        let account = reg.user("many", "agents:read").await.account;
        let second = if db.pg.is_some() {
            let r = oba_registry::start(Config {
                audit_checkpoint_every: 5,
                ..db.config()
            })
            .await
            .expect("a second registry on the same database");
            let mut api = Api::for_registry(&r);
            api.admin = Some(reg.admin().to_owned());
            Some((r, api))
        } else {
            None
        };
        let mut tasks = Vec::new();
        for i in 0..30 {
            let api = match (&second, i >= 20) {
                (Some((_, b)), true) => b.clone(),
                (None, true) => break,
                _ => reg.api.clone(),
            };
            let account = account.clone();
            tasks.push(tokio::spawn(async move { api.token_for(&account, "agents:read").await.1 }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("task"));
        }
        let created = ids.len();
        assert_eq!(created, if db.pg.is_some() { 30 } else { 20 });

        let report = verify_chain(db, &keys).await;
        assert!(report.is_intact(), "{}: {:?}", report.summary(), report.detail);
        let lines = chain_lines(db).await;
        let records: Vec<oba_audit::AuditRecord> = lines
            .iter()
            .map(|l| oba_audit::AuditRecord::parse_line(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(report.records, records.len() as u64);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1, "no gap, no duplicate");
        }
        // 3 records before (bootstrap, account, token), then one per token.
        let events: Vec<&oba_audit::AuditRecord> = records.iter().filter(|r| !r.is_checkpoint()).collect();
        assert_eq!(events.len(), 3 + created);
        for id in &ids {
            let n = events
                .iter()
                .filter(|r| r.event.kind.as_str() == "token.create" && r.event.key_id.as_deref() == Some(id.as_str()))
                .count();
            assert_eq!(n, 1, "token {id} recorded once");
        }
        // A checkpoint after every 5 unsigned records, never more than 5 in a row.
        let mut run = 0;
        for r in &records {
            if r.is_checkpoint() {
                assert_eq!(run, 5, "checkpoint {} after {run} records", r.seq);
                run = 0;
            } else {
                run += 1;
            }
        }
        assert!(run < 5);
        assert_eq!(report.checkpoints, (events.len() / 5) as u64);
        if let Some((r, _)) = second {
            r.stop();
        }
    }
);

both_backends!(
    /// However rarely the registry changes, no record stays unsigned much longer than
    /// `audit_checkpoint_interval`; an idle registry writes no empty checkpoints; zero
    /// settings are refused.
    audit_tail_is_signed_within_the_interval_sqlite,
    audit_tail_is_signed_within_the_interval_postgres,
    |db| {
        for bad in [
            Config { audit_checkpoint_every: 0, ..db.config() },
            Config { audit_checkpoint_interval: Duration::ZERO, ..db.config() },
        ] {
            assert!(matches!(oba_registry::start(bad).await, Err(oba_registry::Error::Config(_))));
        }
        let reg = db
            .start_with(|c| c.audit_checkpoint_interval = Duration::from_millis(200))
            .await;
        let keys = published_audit_keys(&reg).await;
        reg.user("rare", "agents:read").await;
        let started = Instant::now();
        let report = loop {
            let report = verify_chain(db, &keys).await;
            assert!(report.is_intact(), "{}", report.summary());
            if report.unsigned_tail == 0 && report.records > 0 {
                break report;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{}", report.summary());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(report.checkpoints >= 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let idle = verify_chain(db, &keys).await;
        assert_eq!(idle.records, report.records, "no checkpoint while nothing is unsigned");
    }
);

/// Creates the plain `audit` table of earlier versions, with rows, as they left it.
async fn legacy_audit_table(db: &TestDb, rows: &[(i64, &str, &str, &str, &str)]) {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let pg = db.url.starts_with("postgres");
    let url = if pg {
        db.url.clone()
    } else {
        format!("{}?mode=rwc", db.url)
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    let ddl = if pg {
        "CREATE TABLE IF NOT EXISTS audit (seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)"
    } else {
        "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)"
    };
    sqlx::query(ddl)
        .execute(&mut conn)
        .await
        .expect("old table");
    for (at, actor, action, target, detail) in rows {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(*at)
        .bind(*actor)
        .bind(*action)
        .bind(*target)
        .bind(*detail)
        .execute(&mut conn)
        .await
        .expect("old row");
    }
    conn.close().await.ok();
}

/// The number of rows of a table, if it exists.
async fn table_rows(db: &TestDb, table: &str) -> Option<i64> {
    use sqlx::{Connection as _, Row as _};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.url)
        .await
        .expect("connect");
    let n = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(&mut conn)
        .await
        .ok()
        .map(|r| r.try_get::<i64, _>("n").unwrap());
    conn.close().await.ok();
    n
}

both_backends!(
    /// A database of an earlier version, with its plain `audit` table: the first start
    /// appends those rows to the chain (order, time, actor, action, target, detail kept),
    /// records the import and signs it; the old table is kept as `audit_legacy`; later
    /// starts import nothing more. An `audit` table written again later (an old binary
    /// run on the database) is imported the same way, kept under another name.
    legacy_audit_table_is_imported_into_the_chain_sqlite,
    legacy_audit_table_is_imported_into_the_chain_postgres,
    |db| {
        legacy_audit_table(
            db,
            &[
                (1_700_000_000, "system", "token.create", "tok1", r#"{"bootstrap":true,"scopes":"admin"}"#),
                (1_700_000_100, "account:a/token:tok1", "agent.create", "ag1", r#"{"name":"old bot"}"#),
                (1_700_000_200, "account:a/token:tok1", "key.add", "ag1/KID", "null"),
            ],
        )
        .await;
        let reg = db.start().await;
        let keys = published_audit_keys(&reg).await;
        let records = reg.get("/v1/audit", Some(reg.admin())).await.json()["records"]
            .as_array()
            .unwrap()
            .clone();
        let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(
            actions,
            ["token.create", "agent.create", "key.add", "audit.imported", "checkpoint", "token.create"],
            "the old rows, the import, its checkpoint, then this start's bootstrap"
        );
        assert_eq!(records[0]["at"], 1_700_000_000);
        assert_eq!(records[0]["actor"], "system");
        assert_eq!(records[0]["target"], "tok1");
        assert_eq!(records[0]["key_id"], "tok1");
        assert_eq!(records[0]["detail"], json!({ "bootstrap": true, "scopes": "admin" }));
        assert_eq!(records[1]["detail"]["name"], "old bot");
        assert_eq!(records[2]["key_id"], "KID");
        assert_eq!(records[2]["detail"], Value::Null);
        assert_eq!(records[3]["detail"]["kept_as"], "audit_legacy");
        assert_eq!(records[3]["detail"]["records"], 3);
        assert_eq!(records[5]["detail"]["bootstrap"], true);
        let lines = chain_lines(db).await;
        assert!(lines[1].contains(r#""legacy_seq":2"#), "{}", lines[1]);
        let report = verify_chain(db, &keys).await;
        assert_eq!(report.summary(), "ok: 6 records, 1 checkpoints, 1 unsigned at the end");
        assert_eq!(table_rows(db, "audit").await, None, "the old table is gone...");
        assert_eq!(table_rows(db, "audit_legacy").await, Some(3), "...kept under its new name");
        drop(reg);

        // A restart imports nothing; an old binary's new rows are imported once more.
        let reg = db.start().await;
        drop(reg);
        assert_eq!(chain_lines(db).await.len(), 6);
        legacy_audit_table(db, &[(1_700_000_300, "system", "agent.delete", "ag1", "null")]).await;
        let reg = db.start().await;
        drop(reg);
        let lines = chain_lines(db).await;
        let tail: Vec<oba_audit::AuditRecord> = lines[6..]
            .iter()
            .map(|l| oba_audit::AuditRecord::parse_line(l.as_bytes()).unwrap())
            .collect();
        let kinds: Vec<&str> = tail.iter().map(|r| r.event.kind.as_str()).collect();
        assert_eq!(kinds, ["agent.delete", "audit.imported", "checkpoint"]);
        assert_eq!(tail[1].event.details["kept_as"], "audit_legacy_7");
        assert_eq!(table_rows(db, "audit_legacy_7").await, Some(1));
        assert_eq!(table_rows(db, "audit").await, None);
        assert!(verify_chain(db, &keys).await.is_intact());
    }
);

// =======================================================================================
// 10. OIDC sign-in.

/// A test OpenID provider on 127.0.0.1: discovery and a JWKS.
struct TestIssuer {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_issuer(keys: Vec<Value>) -> TestIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let discovery = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
    });
    let jwks = json!({ "keys": keys });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let d = discovery.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let j = jwks.clone();
                async move { axum::Json(j) }
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestIssuer { url, task }
}

fn b64(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// A compact JWS: `header.claims.signature`, signed by `key` (no signature when `None`).
fn jwt(header: &Value, claims: &Value, key: Option<&oba_httpsig::SigningKey>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key
        .map(|k| k.sign(input.as_bytes()).unwrap())
        .unwrap_or_default();
    format!("{input}.{}", b64(&sig))
}

both_backends!(
    /// A JWT from a configured issuer signs in (accounts created on first use, scopes from
    /// the configuration); wrong audience, expiry, `none` / HMAC, other keys and unknown
    /// issuers are 401.
    oidc_sign_in_sqlite,
    oidc_sign_in_postgres,
    |db| {
        let es256 = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let eddsa = ed25519();
        let issuer = start_issuer(vec![
            serde_json::to_value(es256.public().unwrap()).unwrap(),
            serde_json::to_value(eddsa.public().unwrap()).unwrap(),
        ])
        .await;
        let audience = "https://registry.test";
        let reg = db
            .start_with(|c| {
                c.oidc = vec![OidcIssuer {
                    issuer: issuer.url.clone(),
                    audience: audience.into(),
                    scopes: vec!["agents:read".into(), "agents:write".into()],
                }];
                c.oidc_allow_http = true;
            })
            .await;
        let now = unix_now();
        let es_kid = es256.kid.clone().unwrap();
        let header = json!({ "alg": "ES256", "kid": es_kid, "typ": "JWT" });
        let claims = |sub: &str| {
            json!({
                "iss": issuer.url, "aud": audience, "sub": sub,
                "exp": now + 600, "nbf": now - 10, "iat": now - 10,
                "email": format!("{sub}@example.test"),
            })
        };
        let es_key = es256.signing_key(None).unwrap();
        let sign = |h: &Value, c: &Value| jwt(h, c, Some(&es_key));

        // A valid token: list (empty, a new account), create.
        let token = sign(&header, &claims("user-1"));
        let r = reg.get("/v1/agents", Some(&token)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["agents"], json!([]));
        let agent = reg.create_agent(&token, &json!({ "name": "oidc bot" })).await;
        let account = agent["account_id"].as_str().unwrap().to_owned();
        let list = reg.get("/v1/agents", Some(&token)).await.json();
        assert_eq!(list["agents"][0]["id"], agent["id"]);
        // Same subject, another token (EdDSA, aud as an array): the same account.
        let ed_header = json!({ "alg": "EdDSA", "kid": eddsa.kid.clone().unwrap() });
        let mut c = claims("user-1");
        c["aud"] = json!(["other", audience]);
        let ed_token = jwt(&ed_header, &c, Some(&eddsa.signing_key(None).unwrap()));
        let r = reg.get("/v1/agents", Some(&ed_token)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["agents"][0]["account_id"], account.as_str());
        // Another subject: another account, which does not see user-1's agent.
        let token2 = sign(&header, &claims("user-2"));
        let r = reg.get("/v1/agents", Some(&token2)).await;
        assert_eq!(r.json()["agents"], json!([]));
        let r = reg.get(&format!("/v1/agents/{}", agent["id"].as_str().unwrap()), Some(&token2)).await;
        assert_error(&r, 404, "not_found");
        // Scopes are the configured ones: no keys:write, no admin.
        let r = reg.add_key(&token, agent["id"].as_str().unwrap(), &ed25519()).await;
        assert_error(&r, 403, "forbidden");
        assert_error(&reg.get("/v1/audit", Some(&token)).await, 403, "forbidden");
        // The account was created once, mapped to issuer#sub; actions are by .../oidc.
        let audit = reg.get("/v1/audit", Some(reg.admin())).await.json();
        let records = audit["records"].as_array().unwrap();
        let subject = format!("{}#user-1", issuer.url);
        let created: Vec<&Value> = records
            .iter()
            .filter(|r| r["action"] == "account.create" && r["detail"]["oidc_subject"] == subject.as_str())
            .collect();
        assert_eq!(created.len(), 1, "{records:#?}");
        assert_eq!(created[0]["target"], account.as_str());
        let ac = records.iter().find(|r| r["action"] == "agent.create").unwrap();
        assert_eq!(ac["actor"], format!("account:{account}/oidc"));

        // Refusals: all 401.
        let mut refused: Vec<(&str, String)> = Vec::new();
        let mut c = claims("user-1");
        c["aud"] = json!("https://someone-else.test");
        refused.push(("wrong aud", sign(&header, &c)));
        let mut c = claims("user-1");
        c.as_object_mut().unwrap().remove("aud");
        refused.push(("no aud", sign(&header, &c)));
        let mut c = claims("user-1");
        c["exp"] = json!(now - 3600);
        refused.push(("expired", sign(&header, &c)));
        let mut c = claims("user-1");
        c.as_object_mut().unwrap().remove("exp");
        refused.push(("no exp", sign(&header, &c)));
        let mut c = claims("user-1");
        c["nbf"] = json!(now + 3600);
        refused.push(("not yet valid", sign(&header, &c)));
        let mut c = claims("user-1");
        c["sub"] = json!("");
        refused.push(("empty sub", sign(&header, &c)));
        refused.push(("alg none", jwt(&json!({ "alg": "none", "kid": es_kid }), &claims("user-1"), None)));
        refused.push(("alg none, no kid", jwt(&json!({ "alg": "none" }), &claims("user-1"), None)));
        // HS256 keyed with the issuer's public key (algorithm confusion) and with a secret.
        let public_json = serde_json::to_string(&es256.public().unwrap()).unwrap();
        let hmac = oba_httpsig::SigningKey::hmac_sha256(public_json.as_bytes()).unwrap();
        refused.push(("HS256", jwt(&json!({ "alg": "HS256", "kid": es_kid }), &claims("user-1"), Some(&hmac))));
        let hmac = oba_httpsig::SigningKey::hmac_sha256(b"a shared secret of 32 bytes......").unwrap();
        refused.push(("HS256 secret", jwt(&json!({ "alg": "HS256" }), &claims("user-1"), Some(&hmac))));
        // Another key, claiming the issuer's kid; another key with its own kid; no kid.
        let intruder = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let ik = intruder.signing_key(None).unwrap();
        refused.push(("other key, issuer kid", jwt(&header, &claims("user-1"), Some(&ik))));
        refused.push((
            "other key, own kid",
            jwt(&json!({ "alg": "ES256", "kid": intruder.kid.clone().unwrap() }), &claims("user-1"), Some(&ik)),
        ));
        refused.push(("other key, no kid", jwt(&json!({ "alg": "ES256" }), &claims("user-1"), Some(&ik))));
        // A valid signature over other claims (the claims swapped afterwards).
        let valid = sign(&header, &claims("user-1"));
        let parts: Vec<&str> = valid.split('.').collect();
        let swapped = format!("{}.{}.{}", parts[0], b64(claims("admin").to_string().as_bytes()), parts[2]);
        refused.push(("claims changed", swapped));
        // The right key under the wrong algorithm.
        refused.push(("ES384 header on a P-256 key", sign(&json!({ "alg": "ES384", "kid": es_kid }), &claims("user-1"))));
        // Unknown issuer (signed by the trusted key all the same).
        let mut c = claims("user-1");
        c["iss"] = json!("https://evil.example");
        refused.push(("unknown issuer", sign(&header, &c)));
        let mut c = claims("user-1");
        c["iss"] = json!(format!("{}/", issuer.url));
        refused.push(("issuer with a trailing slash", sign(&header, &c)));
        refused.push(("not a JWT", "not-a-jwt".into()));
        refused.push(("two parts", "eyJhbGciOiJFUzI1NiJ9.e30".into()));
        refused.push(("bad base64", "a.b.c".into()));
        for (what, token) in refused {
            let r = reg.get("/v1/agents", Some(&token)).await;
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            assert_error(&r, 401, "unauthorized");
        }
        // Still exactly two OIDC accounts.
        let audit = reg.get("/v1/audit", Some(reg.admin())).await.json();
        let oidc_accounts = audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "account.create" && r["detail"].get("oidc_subject").is_some())
            .count();
        assert_eq!(oidc_accounts, 2);
    }
);

both_backends!(
    /// Ten first sign-ins of one subject at once end up in one account.
    oidc_concurrent_first_sign_ins_sqlite,
    oidc_concurrent_first_sign_ins_postgres,
    |db| {
        let key = Jwk::generate(Algorithm::EcdsaP256Sha256).unwrap();
        let issuer = start_issuer(vec![serde_json::to_value(key.public().unwrap()).unwrap()]).await;
        let reg = db
            .start_with(|c| {
                c.oidc = vec![OidcIssuer {
                    issuer: issuer.url.clone(),
                    audience: "registry".into(),
                    scopes: vec!["agents:read".into(), "agents:write".into()],
                }];
                c.oidc_allow_http = true;
            })
            .await;
        let now = unix_now();
        let token = jwt(
            &json!({ "alg": "ES256", "kid": key.kid.clone().unwrap() }),
            &json!({ "iss": issuer.url, "aud": "registry", "sub": "racer", "exp": now + 600 }),
            Some(&key.signing_key(None).unwrap()),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (api, token) = (reg.api.clone(), token.clone());
            tasks.spawn(async move {
                api.post("/v1/agents", Some(&token), &json!({ "name": format!("agent {i}") })).await
            });
        }
        let mut accounts = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let r = r.expect("task");
            assert_eq!(r.status, 201, "{}", r.text());
            accounts.push(r.json()["account_id"].as_str().unwrap().to_owned());
        }
        accounts.dedup();
        assert_eq!(accounts.len(), 1, "one account: {accounts:?}");
        let list = reg.get("/v1/agents", Some(&token)).await.json();
        assert_eq!(list["agents"].as_array().unwrap().len(), 10);
        let audit = reg.get("/v1/audit", Some(reg.admin())).await.json();
        let created = audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "account.create")
            .count();
        assert_eq!(created, 1, "one account.create record");
    }
);

// =======================================================================================
// 11. OpenAPI.

both_backends!(
    /// `/openapi.json` lists every route of the table, and every documented route exists
    /// on the router (no `route_not_found`, no 405).
    openapi_matches_the_router_sqlite,
    openapi_matches_the_router_postgres,
    |db| {
        let reg = db.start().await;
        let r = reg.get("/openapi.json", None).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("application/json"));
        let doc = r.json();
        assert_eq!(doc, oba_registry::openapi::document());
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = 0;
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                documented += 1;
                assert!(
                    oba_registry::openapi::ROUTES.iter().any(|r| r.path == path && r.method == method),
                    "{method} {path} documented but not in ROUTES"
                );
                assert!(op["responses"].is_object(), "{method} {path}");
            }
        }
        assert_eq!(documented, oba_registry::openapi::ROUTES.len());

        for route in oba_registry::openapi::ROUTES {
            let op = &doc["paths"][route.path][route.method];
            assert!(op.is_object(), "{} {} is in the document", route.method, route.path);
            assert!(op["responses"][route.ok.to_string()].is_object());
            assert_eq!(op["security"].is_array(), route.scope.is_some());
            if let Some(b) = route.body {
                assert!(doc["components"]["schemas"][b].is_object(), "schema {b}");
            }
            // The route exists on the router, with this method.
            let path = route.path.replace("{id}", "0123456789abcdef01234567").replace("{kid}", "k");
            let method = route.method.to_uppercase();
            let body = route.body.map(|_| json!({}));
            for token in [None, Some(reg.admin())] {
                let r = reg.call(&method, &path, token, body.as_ref()).await;
                assert_ne!(r.status, 405, "{method} {path}: {}", r.text());
                assert_ne!(r.status, 500, "{method} {path}: {}", r.text());
                if r.status >= 400 {
                    let code = assert_error_shape(&r);
                    assert_ne!(code, "route_not_found", "{method} {path}");
                }
                if route.scope.is_some() && token.is_none() {
                    assert_error(&r, 401, "unauthorized");
                }
            }
        }
    }
);
