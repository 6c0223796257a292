//! The conformance suite against the in-process limiter, and its eviction of old
//! windows.

use std::sync::Arc;
use std::time::Duration;

use oba_budget::{conformance, Limit, Limiter, MemoryLimiter};

/// One test per sequential check, on a fresh limiter.
macro_rules! sequential {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            conformance::$check(&MemoryLimiter::new()).await;
        }
    )*};
}

/// One test per concurrent check; the "replicas" are the same limiter twice.
macro_rules! concurrent {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
            conformance::$check(&[limiter.clone(), limiter]).await;
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
async fn run_all_on_one_limiter() {
    let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
    conformance::run_all(&[limiter.clone(), limiter]).await;
}

#[tokio::test]
async fn ended_windows_are_evicted() {
    let limiter = MemoryLimiter::new();
    let second = Duration::from_secs(1);
    let keys: Vec<(String, Limit)> = (0..100)
        .map(|i| (format!("k{i}"), Limit::per(second).requests(1)))
        .collect();
    let t0 = 1_700_000_000_000;
    drop(limiter.reserve(&keys, 0, t0).await.unwrap());
    assert_eq!(limiter.live_counters(), 100);
    // Still there while the grace lasts (a late request still finds them)...
    let one = [("other".to_string(), Limit::per(second))];
    drop(limiter.reserve(&one, 0, t0 + 5_999).await.unwrap());
    assert_eq!(limiter.live_counters(), 101);
    assert_eq!(limiter.usage("k0", second, t0).await.unwrap().requests, 1);
    // ...then gone: only the counter of the current window stays.
    drop(limiter.reserve(&one, 0, t0 + 6_000).await.unwrap());
    assert_eq!(limiter.live_counters(), 2);
    drop(limiter.reserve(&one, 0, t0 + 60_000).await.unwrap());
    assert_eq!(limiter.live_counters(), 1);
    assert_eq!(limiter.usage("k0", second, t0).await.unwrap().requests, 0);
    // Settling a reservation whose window is gone is a no-op.
    let r = limiter.reserve(&one, 10, t0 + 60_000).await.unwrap();
    drop(limiter.reserve(&one, 0, t0 + 120_000).await.unwrap());
    limiter.settle(r, 0).await.unwrap();
    assert_eq!(limiter.live_counters(), 1);
}

#[tokio::test]
async fn many_windows_stay_bounded() {
    // A key per request over an hour of one-second windows: never more than the
    // windows of the last few seconds are held.
    let limiter = MemoryLimiter::new();
    let t0 = 1_700_000_000_000;
    for i in 0..3_600i64 {
        let keys = [(
            format!("p{i}"),
            Limit::per(Duration::from_secs(1)).tokens(10),
        )];
        drop(limiter.reserve(&keys, 1, t0 + i * 1_000).await.unwrap());
        assert!(
            limiter.live_counters() <= 7,
            "{} counters",
            limiter.live_counters()
        );
    }
}
