//! The conformance suite against the PostgreSQL backend. Needs
//! `OBA_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); each test
//! uses a fresh schema and drops it afterwards.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oba_memory::postgres::PgStore;
use oba_memory::{conformance, Filter, MemoryStore, Scope, StoreError, Turn};

fn url() -> Option<String> {
    match std::env::var("OBA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: OBA_TEST_POSTGRES_URL not set");
            None
        }
    }
}

fn fresh_schema() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("mem_{}_{nanos}", std::process::id())
}

async fn drop_schema(url: &str, schema: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Runs `test` against a store in a fresh schema, drops the schema (even when the test
/// panics), then re-raises the panic.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(PgStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = url() else { return };
    let schema = fresh_schema();
    let store = PgStore::connect(&url, Some(&schema)).await.unwrap();
    let outcome = tokio::spawn(test(store.clone())).await;
    store.close().await;
    drop_schema(&url, &schema).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn postgres_store_passes_conformance() {
    with_store(|store| async move { conformance::run_all(&store).await }).await;
}

#[tokio::test]
async fn postgres_store_works_as_trait_object() {
    with_store(|store| async move {
        let store: std::sync::Arc<dyn MemoryStore> = std::sync::Arc::new(store);
        conformance::round_trip(store.as_ref()).await;
        conformance::search_syntax(store.as_ref()).await;
    })
    .await;
}

#[tokio::test]
async fn connecting_twice_to_the_same_schema_keeps_data() {
    let Some(url) = url() else { return };
    let schema = fresh_schema();
    let first = PgStore::connect(&url, Some(&schema)).await.unwrap();
    let turn = Turn::new("pg-persist", "acme", "user:alice", "/r", 1).with_text("kept", "yes");
    first.append(std::slice::from_ref(&turn)).await.unwrap();
    // Schema creation is idempotent, also concurrently.
    let (a, b) = tokio::join!(
        PgStore::connect(&url, Some(&schema)),
        PgStore::connect(&url, Some(&schema))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let scope = Scope::Own {
        tenant: "acme".into(),
        principal: "user:alice".into(),
    };
    assert_eq!(
        a.list(&scope, &Filter::default()).await.unwrap(),
        vec![turn.clone()]
    );
    assert_eq!(
        b.search(&scope, "kept", &Filter::default()).await.unwrap()[0].turn,
        turn
    );
    for s in [&first, &a, &b] {
        s.close().await;
    }
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn nul_characters_are_invalid_and_never_match() {
    with_store(|store| async move {
        let bad = Turn::new("pg-nul", "acme", "user:alice", "/r", 1).with_text("a\0b", "");
        let good = Turn::new("pg-good", "acme", "user:alice", "/r", 2);
        let err = store.append(&[good, bad]).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        let scope = Scope::Own {
            tenant: "acme".into(),
            principal: "user:alice".into(),
        };
        // Nothing of the batch was written.
        assert!(store
            .list(&scope, &Filter::default())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.right_of("acme\0", "x", "y").await.unwrap(), None);
        assert!(!store
            .delete("acme", "user:alice\0", "pg-good")
            .await
            .unwrap());
    })
    .await;
}

#[tokio::test]
async fn bad_schema_name_is_invalid() {
    let Some(url) = url() else { return };
    let err = PgStore::connect(&url, Some("x\"; DROP SCHEMA public; --"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_quickly() {
    // Needs no server: nothing listens on port 1.
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        PgStore::connect("postgres://postgres@127.0.0.1:1/test", None),
    )
    .await
    .expect("connect must not hang");
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn malformed_url_is_invalid() {
    let err = PgStore::connect("not a url", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}
