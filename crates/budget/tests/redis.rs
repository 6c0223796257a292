//! The conformance suite against the Redis limiter, two instances acting as two
//! replicas. Needs `OBA_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`); each test uses
//! its own key prefix and deletes its keys afterwards.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oba_budget::{conformance, Limit, Limiter, LimiterError, RedisLimiter};

fn url() -> Option<String> {
    match std::env::var("OBA_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: OBA_TEST_REDIS_URL not set");
            None
        }
    }
}

fn fresh_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("oba-budget-test:{}:{nanos}:", std::process::id())
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The keys under `prefix`.
async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = connection(url).await;
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

async fn delete_keys(url: &str, prefix: &str) {
    let keys = keys_under(url, prefix).await;
    if !keys.is_empty() {
        let mut conn = connection(url).await;
        let _: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Runs `test` against two limiters (two replicas) on a fresh prefix, deletes the keys
/// (even when the test panics), then re-raises the panic.
async fn with_replicas<F, Fut>(test: F)
where
    F: FnOnce(Vec<Arc<dyn Limiter>>, String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = url() else { return };
    let prefix = fresh_prefix();
    let a = RedisLimiter::connect(&url, &prefix).await.unwrap();
    let b = RedisLimiter::connect(&url, &prefix).await.unwrap();
    let replicas: Vec<Arc<dyn Limiter>> = vec![Arc::new(a), Arc::new(b)];
    let outcome = tokio::spawn(test(replicas, url.clone(), prefix.clone())).await;
    delete_keys(&url, &prefix).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// One test per sequential check, on the first replica.
macro_rules! sequential {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            with_replicas(|r, _, _| async move { conformance::$check(r[0].as_ref()).await }).await;
        }
    )*};
}

/// One test per concurrent check, across both replicas.
macro_rules! concurrent {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            with_replicas(|r, _, _| async move { conformance::$check(&r).await }).await;
        }
    )*};
}

sequential!(
    request_limit_exact,
    token_limit_exact,
    all_or_nothing,
    settle_returns_unused,
    settle_records_overshoot,
    dropped_reservation_keeps_tokens,
    too_large,
    retry_after,
    window_rollover,
    merged_and_separate_windows,
    no_keys,
    invalid_input,
);

concurrent!(
    shared_between_replicas,
    concurrent_reservations,
    concurrent_all_or_nothing,
    concurrent_reserve_and_settle,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_across_two_replicas() {
    with_replicas(|r, _, _| async move { conformance::run_all(&r).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_after_its_window() {
    with_replicas(|r, url, prefix| async move {
        let now = oba_budget::unix_now_ms();
        let minute = Limit::per(Duration::from_secs(60)).tokens(100);
        let hour = Limit::per(Duration::from_secs(3600)).requests(10);
        let keys = [
            ("tenant:acme".to_string(), minute),
            ("tenant:acme".to_string(), hour),
        ];
        let res = r[0].reserve(&keys, 10, now).await.unwrap();
        r[1].settle(res, 5).await.unwrap();
        let stored = keys_under(&url, &prefix).await;
        assert_eq!(stored.len(), 2, "{stored:?}");
        let mut conn = connection(&url).await;
        for key in stored {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let window_ms: i64 = if key.contains(":3600000:") {
                3_600_000
            } else {
                60_000
            };
            // Expires within the window plus one minute of grace.
            assert!(ttl > 0 && ttl <= window_ms + 60_000, "{key}: PTTL {ttl}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_does_not_recreate_an_expired_counter() {
    with_replicas(|r, url, prefix| async move {
        let now = oba_budget::unix_now_ms();
        let keys = [(
            "k".to_string(),
            Limit::per(Duration::from_secs(60)).tokens(100),
        )];
        let res = r[0].reserve(&keys, 10, now).await.unwrap();
        delete_keys(&url, &prefix).await; // as if it had expired
        r[0].settle(res, 50).await.unwrap();
        assert!(keys_under(&url, &prefix).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reload_after_script_flush() {
    with_replicas(|r, url, _| async move {
        let now = oba_budget::unix_now_ms();
        let keys = [(
            "k".to_string(),
            Limit::per(Duration::from_secs(60)).tokens(100),
        )];
        let mut conn = connection(&url).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let res = r[0].reserve(&keys, 60, now).await.unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        r[1].settle(res, 20).await.unwrap();
        let seen = r[1].usage("k", Duration::from_secs(60), now).await.unwrap();
        assert_eq!((seen.requests, seen.tokens), (1, 20));
    })
    .await;
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_refusal() {
    // Nothing listens on port 1. Runs without OBA_TEST_REDIS_URL.
    match RedisLimiter::connect("redis://127.0.0.1:1", "x:").await {
        Err(LimiterError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        RedisLimiter::connect("not a url", "x:").await,
        Err(LimiterError::Unavailable(_))
    ));
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts connections and never answers: connecting gives up (about two seconds)
    // instead of hanging. The outer timeout only guards against a hang.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("redis://{addr}");
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), RedisLimiter::connect(&url, "x:")).await;
    server.abort();
    match outcome {
        Ok(Err(LimiterError::Unavailable(_))) => {}
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
        Err(_) => panic!("connect hung"),
    }
}
