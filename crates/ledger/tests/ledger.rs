//! The ledger on SQLite (file and memory) and PostgreSQL (a fresh schema per test,
//! when `OBA_TEST_POSTGRES_URL` is set): the same checks on each.

use oba_ledger::{GroupBy, Ledger, Query, UsageRecord};

const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn rec(
    id: &str,
    time: i64,
    principal: &str,
    tenant: &str,
    model: &str,
    p: u64,
    c: u64,
) -> UsageRecord {
    let mut r = UsageRecord::new(id, time, principal, "/v1/chat/completions");
    r.tenant = tenant.into();
    r.model = Some(model.into());
    r.prompt_tokens = p;
    r.completion_tokens = c;
    r.principal_kind = "service".into();
    r.auth_method = "api-key".into();
    r.upstream = "up".into();
    r
}

async fn checks(ledger: &Ledger) {
    let mut estimated = rec("r3", T0 + DAY, "key:b", "acme", "llama3", 7, 9);
    estimated.exact = false;
    let mut failed = rec("r4", T0 + DAY, "key:b", "other", "gpt", 3, 0);
    failed.status = 502;
    let mut cancelled = rec("r5", T0 + 2 * DAY, "key:a", "acme", "gpt", 1, 2);
    cancelled.cancelled = true;
    cancelled.streamed = true;
    cancelled.upstream_ttfb_us = Some(1500);
    cancelled.latency_us = 2_000_123;
    cancelled.session = Some("key:a/s1".into());
    cancelled.agent = Some("https://bot.example/".into());
    cancelled.user = Some("alice".into());
    let all = vec![
        rec("r1", T0, "key:a", "acme", "llama3", 10, 20),
        rec("r2", T0 + 1, "key:a", "acme", "llama3", 5, 6),
        estimated,
        failed,
        cancelled.clone(),
    ];
    ledger.record(&all).await.unwrap();
    // Idempotent: the same ids again (with other numbers) change nothing.
    let mut again = rec("r1", T0, "key:a", "acme", "llama3", 999, 999);
    again.status = 500;
    ledger.record(&[again]).await.unwrap();

    let by = |g| Query {
        group_by: g,
        ..Query::default()
    };
    let rows = ledger.report(&by(GroupBy::Principal)).await.unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.group.as_str(),
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.estimated,
                r.errors,
                r.cancelled,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("key:a", 3, 16, 28, 0, 0, 1), ("key:b", 2, 10, 9, 1, 1, 0)]
    );
    let rows = ledger.report(&by(GroupBy::Model)).await.unwrap();
    let models: Vec<_> = rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests, r.completion_tokens))
        .collect();
    assert_eq!(models, vec![("gpt", 2, 2), ("llama3", 3, 35)]);
    let rows = ledger.report(&by(GroupBy::Tenant)).await.unwrap();
    let tenants: Vec<_> = rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect();
    assert_eq!(tenants, vec![("acme", 4), ("other", 1)]);
    let rows = ledger.report(&by(GroupBy::Day)).await.unwrap();
    let days: Vec<_> = rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect();
    assert_eq!(
        days,
        vec![("2023-11-14", 2), ("2023-11-15", 2), ("2023-11-16", 1)]
    );

    // Filters: since inclusive, until exclusive, tenant, principal.
    let q = Query {
        since: Some(T0 + 1),
        until: Some(T0 + 2 * DAY),
        group_by: GroupBy::Principal,
        ..Query::default()
    };
    let rows = ledger.report(&q).await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect();
    assert_eq!(got, vec![("key:a", 1), ("key:b", 2)]);
    let q = Query {
        tenant: Some("acme".into()),
        principal: Some("key:b".into()),
        ..Query::default()
    };
    let rows = ledger.report(&q).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].estimated), (1, 1));
    let q = Query {
        tenant: Some("nobody".into()),
        ..Query::default()
    };
    assert!(ledger.report(&q).await.unwrap().is_empty());

    // Records come back field for field.
    let q = Query {
        principal: Some("key:a".into()),
        ..Query::default()
    };
    let got = ledger.records(&q, 100).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        vec!["r1", "r2", "r5"]
    );
    assert_eq!(got[0], all[0], "the first write wins");
    assert_eq!(got[2], cancelled);
    assert_eq!(ledger.records(&q, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_in_memory() {
    checks(&Ledger::connect("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_file_keeps_records_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("usage.db").display());
    checks(&Ledger::connect(&url).await.unwrap()).await;
    let again = Ledger::connect(&url).await.unwrap();
    assert_eq!(again.report(&Query::default()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_in_a_fresh_schema() {
    let Ok(base) = std::env::var("OBA_TEST_POSTGRES_URL") else {
        eprintln!("skipped: OBA_TEST_POSTGRES_URL not set");
        return;
    };
    let schema = format!(
        "ledger_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin = Ledger::connect(&base).await.unwrap();
    drop(admin);
    // A plain connection to create and drop the schema.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    checks(&Ledger::connect(&url).await.unwrap()).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let err = Ledger::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(
        matches!(err, oba_ledger::LedgerError::Unavailable(_)),
        "{err}"
    );
}

#[tokio::test]
async fn large_batches_span_several_statements_and_stay_idempotent() {
    let ledger = Ledger::connect("sqlite::memory:").await.unwrap();
    let batch: Vec<UsageRecord> = (0..120)
        .map(|i| rec(&format!("b{i}"), T0 + i, "key:a", "acme", "m", 1, 2))
        .collect();
    ledger.record(&batch).await.unwrap();
    // The same 120 again, plus 10 new, in one call.
    let mut again = batch.clone();
    again.extend((120..130).map(|i| rec(&format!("b{i}"), T0 + i, "key:a", "acme", "m", 1, 2)));
    ledger.record(&again).await.unwrap();
    let rows = ledger.report(&Query::default()).await.unwrap();
    assert_eq!((rows[0].requests, rows[0].completion_tokens), (130, 260));
}
