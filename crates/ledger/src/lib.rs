//! # oba-ledger
//!
//! The usage ledger of Attach Gateway: one [`UsageRecord`] per request, idempotent by
//! request id (a retried write never double-counts), in SQLite (embedded default) or
//! PostgreSQL, and [`Ledger::report`] grouping by principal, model, tenant or day.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use oba_ledger::{GroupBy, Ledger, Query, UsageRecord};
//! let ledger = Ledger::connect("sqlite::memory:").await.unwrap();
//! let mut r = UsageRecord::new("req-1", 1_700_000_000_000, "key:ci", "/v1/chat/completions");
//! r.model = Some("llama3".into());
//! r.prompt_tokens = 12;
//! r.completion_tokens = 30;
//! ledger.record(&[r.clone(), r]).await.unwrap(); // the same request twice: counted once
//! let rows = ledger.report(&Query { group_by: GroupBy::Model, ..Query::default() }).await.unwrap();
//! assert_eq!((rows[0].group.as_str(), rows[0].requests, rows[0].completion_tokens), ("llama3", 1, 30));
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// One request's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The gateway's request id (the record's identity).
    pub request_id: String,
    /// Unix ms when the request arrived.
    pub time: i64,
    /// `bot`, `user` or `service`.
    pub principal_kind: String,
    /// Principal id.
    pub principal: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// Agent URL (bots).
    pub agent: Option<String>,
    /// User (people, or bots acting for one).
    pub user: Option<String>,
    /// How it authenticated.
    pub auth_method: String,
    /// Namespaced session.
    pub session: Option<String>,
    /// Route.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// Model named in the request.
    pub model: Option<String>,
    /// HTTP status returned.
    pub status: u16,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens (never billed for an upstream error).
    pub completion_tokens: u64,
    /// `true`: counts from the upstream; `false`: estimated by the gateway.
    pub exact: bool,
    /// Total latency, µs.
    pub latency_us: u64,
    /// Upstream time to first byte, µs (`None` when the upstream was not reached).
    pub upstream_ttfb_us: Option<u64>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Streamed response.
    pub streamed: bool,
    /// The client went away before the end.
    pub cancelled: bool,
}

impl UsageRecord {
    /// A record with zero counts, status 200, exact, not streamed.
    pub fn new(request_id: &str, time: i64, principal: &str, route: &str) -> Self {
        UsageRecord {
            request_id: request_id.into(),
            time,
            principal_kind: String::new(),
            principal: principal.into(),
            tenant: String::new(),
            agent: None,
            user: None,
            auth_method: String::new(),
            session: None,
            route: route.into(),
            upstream: String::new(),
            model: None,
            status: 200,
            prompt_tokens: 0,
            completion_tokens: 0,
            exact: true,
            latency_us: 0,
            upstream_ttfb_us: None,
            bytes_in: 0,
            bytes_out: 0,
            streamed: false,
            cancelled: false,
        }
    }
}

/// How a report groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// By principal id.
    #[default]
    Principal,
    /// By model.
    Model,
    /// By tenant.
    Tenant,
    /// By UTC day (`YYYY-MM-DD`).
    Day,
}

impl GroupBy {
    /// Parses `principal`, `model`, `tenant` or `day`.
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "principal" => Some(GroupBy::Principal),
            "model" => Some(GroupBy::Model),
            "tenant" => Some(GroupBy::Tenant),
            "day" => Some(GroupBy::Day),
            _ => None,
        }
    }
}

/// What a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// From (unix ms, inclusive).
    pub since: Option<i64>,
    /// To (unix ms, exclusive).
    pub until: Option<i64>,
    /// Grouping.
    pub group_by: GroupBy,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this principal.
    pub principal: Option<String>,
}

/// One group of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// The group's key (principal, model, tenant, or `YYYY-MM-DD`).
    pub group: String,
    /// Requests.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Requests whose counts are estimates.
    pub estimated: u64,
    /// Requests answered with an error status (≥ 400).
    pub errors: u64,
    /// Requests cut short by the client.
    pub cancelled: u64,
}

/// Ledger errors.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database cannot be reached (retry; the gateway keeps records in its outbox).
    #[error("usage ledger unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("usage ledger: {0}")]
    Backend(String),
}

fn map_err(e: sqlx::Error, backend: oba_db::Backend) -> LedgerError {
    if oba_db::is_transient(&e, backend) {
        LedgerError::Unavailable(e.to_string())
    } else {
        LedgerError::Backend(e.to_string())
    }
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: oba_db::Backend,
}

const COLUMNS: &str = "request_id, time, principal_kind, principal, tenant, agent, user_id, auth_method, session, route, upstream, model, status, prompt_tokens, completion_tokens, exact, latency_us, upstream_ttfb_us, bytes_in, bytes_out, streamed, cancelled";

impl Ledger {
    /// Connects and creates the table: `sqlite:PATH` (created if missing),
    /// `sqlite::memory:`, or a `postgres://` URL (a `?options=-c search_path=S` picks a
    /// schema).
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let url = if postgres || url.contains(":memory:") || url.contains("mode=") {
            url.to_owned()
        } else {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("sqlite://{path}{sep}mode=rwc")
        };
        let backend = if postgres {
            oba_db::Backend::Postgres
        } else {
            oba_db::Backend::Sqlite
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 1 })
            // The one SQLite connection is never recycled (`sqlite::memory:` lives as
            // long as it does).
            .idle_timeout(postgres.then_some(std::time::Duration::from_secs(600)))
            .max_lifetime(postgres.then_some(std::time::Duration::from_secs(1800)))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // WAL with NORMAL sync: a commit is one append, not two fsyncs.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect(&url)
            .await
            .map_err(|e| map_err(e, backend))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS usage_records (
                request_id TEXT PRIMARY KEY, time BIGINT NOT NULL, principal_kind TEXT NOT NULL,
                principal TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT, user_id TEXT,
                auth_method TEXT NOT NULL, session TEXT, route TEXT NOT NULL, upstream TEXT NOT NULL,
                model TEXT, status INTEGER NOT NULL, prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL, exact INTEGER NOT NULL, latency_us BIGINT NOT NULL,
                upstream_ttfb_us BIGINT, bytes_in BIGINT NOT NULL, bytes_out BIGINT NOT NULL,
                streamed INTEGER NOT NULL, cancelled INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(|e| map_err(e, backend))?;
        sqlx::query("CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time)")
            .execute(&pool)
            .await
            .map_err(|e| map_err(e, backend))?;
        Ok(Ledger { pool, backend })
    }

    /// The error mapping for this ledger's database.
    fn fail(&self) -> impl Fn(sqlx::Error) -> LedgerError {
        let backend = self.backend;
        move |e| map_err(e, backend)
    }

    /// Records a batch in one transaction; a request id already recorded is ignored.
    pub async fn record(&self, records: &[UsageRecord]) -> Result<(), LedgerError> {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(self.fail())?;
        // Multi-row inserts: 50 rows (1,100 parameters) a statement.
        for chunk in records.chunks(50) {
            // `$n` placeholders: both SQLite and PostgreSQL take them (`?` is SQLite's).
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p: Vec<String> = (1..=22).map(|j| format!("${}", i * 22 + j)).collect();
                    format!("({})", p.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO usage_records ({COLUMNS}) VALUES {} ON CONFLICT (request_id) DO NOTHING",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.request_id)
                    .bind(r.time)
                    .bind(&r.principal_kind)
                    .bind(&r.principal)
                    .bind(&r.tenant)
                    .bind(r.agent.as_deref())
                    .bind(r.user.as_deref())
                    .bind(&r.auth_method)
                    .bind(r.session.as_deref())
                    .bind(&r.route)
                    .bind(&r.upstream)
                    .bind(r.model.as_deref())
                    .bind(i32::from(r.status))
                    .bind(int(r.prompt_tokens))
                    .bind(int(r.completion_tokens))
                    .bind(i32::from(r.exact))
                    .bind(int(r.latency_us))
                    .bind(r.upstream_ttfb_us.map(int))
                    .bind(int(r.bytes_in))
                    .bind(int(r.bytes_out))
                    .bind(i32::from(r.streamed))
                    .bind(i32::from(r.cancelled));
            }
            q.execute(&mut *tx).await.map_err(self.fail())?;
        }
        tx.commit().await.map_err(self.fail())
    }

    /// The records matching `q` (its `group_by` ignored), oldest first, at most `limit`.
    pub async fn records(&self, q: &Query, limit: i64) -> Result<Vec<UsageRecord>, LedgerError> {
        let (filter, binds) = where_clause(q);
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_records{filter} ORDER BY time, request_id LIMIT {}",
            limit.clamp(1, 100_000)
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = b.bind(query);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(self.fail())?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        rows.iter()
            .map(|r| -> Result<UsageRecord, sqlx::Error> {
                Ok(UsageRecord {
                    request_id: r.try_get("request_id")?,
                    time: r.try_get("time")?,
                    principal_kind: r.try_get("principal_kind")?,
                    principal: r.try_get("principal")?,
                    tenant: r.try_get("tenant")?,
                    agent: r.try_get("agent")?,
                    user: r.try_get("user_id")?,
                    auth_method: r.try_get("auth_method")?,
                    session: r.try_get("session")?,
                    route: r.try_get("route")?,
                    upstream: r.try_get("upstream")?,
                    model: r.try_get("model")?,
                    status: u16::try_from(r.try_get::<i32, _>("status")?).unwrap_or(0),
                    prompt_tokens: u(r.try_get("prompt_tokens")?),
                    completion_tokens: u(r.try_get("completion_tokens")?),
                    exact: r.try_get::<i32, _>("exact")? != 0,
                    latency_us: u(r.try_get("latency_us")?),
                    upstream_ttfb_us: r.try_get::<Option<i64>, _>("upstream_ttfb_us")?.map(u),
                    bytes_in: u(r.try_get("bytes_in")?),
                    bytes_out: u(r.try_get("bytes_out")?),
                    streamed: r.try_get::<i32, _>("streamed")? != 0,
                    cancelled: r.try_get::<i32, _>("cancelled")? != 0,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(self.fail())
    }

    /// Totals per group, ordered by group.
    pub async fn report(&self, q: &Query) -> Result<Vec<ReportRow>, LedgerError> {
        let group = match q.group_by {
            GroupBy::Principal => "principal".to_owned(),
            GroupBy::Model => "COALESCE(model, '')".to_owned(),
            GroupBy::Tenant => "tenant".to_owned(),
            // Days since the epoch; formatted below.
            GroupBy::Day => "CAST(time / 86400000 AS TEXT)".to_owned(),
        };
        let group = if self.backend == oba_db::Backend::Postgres && q.group_by == GroupBy::Day {
            "CAST(FLOOR(time / 86400000) AS TEXT)".to_owned()
        } else {
            group
        };
        let (filter, binds) = where_clause(q);
        let sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS p,
                    CAST(SUM(completion_tokens) AS BIGINT) AS c,
                    CAST(SUM(CASE WHEN exact = 0 THEN 1 ELSE 0 END) AS BIGINT) AS est,
                    CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS err,
                    CAST(SUM(cancelled) AS BIGINT) AS can
             FROM usage_records{filter} GROUP BY grp ORDER BY grp"
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = b.bind(query);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(self.fail())?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut group: String = r.try_get("grp").map_err(self.fail())?;
            if q.group_by == GroupBy::Day {
                group = day(group.parse().unwrap_or(0));
            }
            out.push(ReportRow {
                group,
                requests: u(r.try_get("requests").map_err(self.fail())?),
                prompt_tokens: u(r.try_get("p").map_err(self.fail())?),
                completion_tokens: u(r.try_get("c").map_err(self.fail())?),
                estimated: u(r.try_get("est").map_err(self.fail())?),
                errors: u(r.try_get("err").map_err(self.fail())?),
                cancelled: u(r.try_get("can").map_err(self.fail())?),
            });
        }
        Ok(out)
    }
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Bind {
    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Bind::Int(v) => q.bind(*v),
            Bind::Text(v) => q.bind(v.as_str()),
        }
    }
}

fn where_clause(q: &Query) -> (String, Vec<Bind>) {
    let mut parts = Vec::new();
    let mut binds = Vec::new();
    let mut push = |sql: &str, b: Bind| {
        binds.push(b);
        parts.push(format!("{sql} ${}", binds.len()));
    };
    if let Some(v) = q.since {
        push("time >=", Bind::Int(v));
    }
    if let Some(v) = q.until {
        push("time <", Bind::Int(v));
    }
    if let Some(v) = &q.tenant {
        push("tenant =", Bind::Text(v.clone()));
    }
    if let Some(v) = &q.principal {
        push("principal =", Bind::Text(v.clone()));
    }
    let filter = if parts.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", parts.join(" AND "))
    };
    (filter, binds)
}

/// `YYYY-MM-DD` of a day number since the epoch (proleptic Gregorian, UTC).
fn day(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", if m <= 2 { y + 1 } else { y })
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_format_as_utc_dates() {
        assert_eq!(super::day(0), "1970-01-01");
        assert_eq!(super::day(19_675), "2023-11-14");
        assert_eq!(super::day(11_016), "2000-02-29");
        assert_eq!(super::day(-1), "1969-12-31");
    }

    #[test]
    fn a_dropped_connection_is_unavailable_not_a_bad_record() {
        // The gateway's outbox retries Unavailable and sets Backend errors aside.
        let e = super::map_err(
            sqlx::Error::Protocol("connection reset".into()),
            oba_db::Backend::Postgres,
        );
        assert!(matches!(e, super::LedgerError::Unavailable(_)), "{e}");
        let e = super::map_err(sqlx::Error::RowNotFound, oba_db::Backend::Sqlite);
        assert!(matches!(e, super::LedgerError::Backend(_)), "{e}");
    }

    #[tokio::test]
    async fn a_sqlite_url_with_a_query_opens() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?cache=shared", dir.path().join("u.db").display());
        super::Ledger::connect(&url).await.unwrap();
        assert!(dir.path().join("u.db").exists());
    }
}
