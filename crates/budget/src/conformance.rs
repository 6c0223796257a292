//! The conformance suite every [`Limiter`] must pass.
//!
//! A backend author runs it from a multi-threaded test, giving it two handles to the
//! same counters (two replicas; for an in-process limiter, the same one twice):
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use oba_budget::{Limiter, MemoryLimiter};
//! let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
//! oba_budget::conformance::run_all(&[limiter.clone(), limiter]).await;
//! # }
//! ```
//!
//! Each check panics with a message naming the check and the deviation. The checks use
//! fresh, unique budget keys, so they can run against a store in use, and pass explicit
//! times (November 2023): nothing depends on timing or sleeps. The concurrent checks
//! spawn tasks, so they need a Tokio runtime, ideally multi-threaded.
//!
//! What the suite pins down beyond the trait documentation:
//!
//! * A token limit is reached exactly (a reservation ending on the limit fits, a zero
//!   token reservation fits a full window); a refused reservation changes nothing.
//! * [`Reason::TooLarge`] wins over any other refusal and its `used` is 0.
//! * `retry_after` is the refusing window's remaining time rounded up to whole seconds
//!   (at least one); among several refusing keys, the one whose window ends last.
//! * Requests are never "settled": `settle` changes tokens only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Limit, Limiter, LimiterError, Reason, Refused, Reservation, ReserveError, Usage};

/// The suite's times are around this one (unix ms, November 2023).
const BASE: i64 = 1_700_000_000_000;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Runs every check: the sequential ones on the first replica, the others across all.
pub async fn run_all(replicas: &[Arc<dyn Limiter>]) {
    let first = replicas[0].as_ref();
    request_limit_exact(first).await;
    token_limit_exact(first).await;
    all_or_nothing(first).await;
    settle_returns_unused(first).await;
    settle_records_overshoot(first).await;
    dropped_reservation_keeps_tokens(first).await;
    too_large(first).await;
    retry_after(first).await;
    window_rollover(first).await;
    merged_and_separate_windows(first).await;
    no_keys(first).await;
    invalid_input(first).await;
    shared_between_replicas(replicas).await;
    concurrent_reservations(replicas).await;
    concurrent_all_or_nothing(replicas).await;
    concurrent_reserve_and_settle(replicas).await;
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A budget key no other run of the suite uses.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "conf-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The start of the window of `BASE` for windows of length `window`.
fn start(window: Duration) -> i64 {
    let w = window.as_millis() as i64;
    BASE.div_euclid(w) * w
}

fn keys(list: &[(&str, Limit)]) -> Vec<(String, Limit)> {
    list.iter().map(|(k, l)| (k.to_string(), *l)).collect()
}

#[track_caller]
fn admitted(check: &str, what: &str, r: Result<Reservation, ReserveError>) -> Reservation {
    match r {
        Ok(v) => v,
        Err(e) => panic!("budget conformance [{check}]: {what}: expected admission, got {e:?}"),
    }
}

#[track_caller]
fn refused(
    check: &str,
    what: &str,
    r: Result<Reservation, ReserveError>,
    reason: Reason,
) -> Refused {
    match r {
        Err(ReserveError::Refused(refused)) if refused.reason == reason => refused,
        other => panic!("budget conformance [{check}]: {what}: expected {reason:?}, got {other:?}"),
    }
}

#[track_caller]
fn ok<T>(check: &str, what: &str, r: Result<T, LimiterError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("budget conformance [{check}]: {what}: unexpected error: {e}"),
    }
}

#[track_caller]
fn check_eq<T: PartialEq + std::fmt::Debug>(check: &str, what: &str, got: T, want: T) {
    if got != want {
        panic!("budget conformance [{check}]: {what}:\n   got: {got:?}\n  want: {want:?}");
    }
}

#[track_caller]
fn check_true(check: &str, what: &str, cond: bool) {
    if !cond {
        panic!("budget conformance [{check}]: {what}");
    }
}

fn usage(requests: u64, tokens: u64) -> Usage {
    Usage { requests, tokens }
}

// ---------------------------------------------------------------------------------------
// Sequential checks.

/// Exactly `requests` requests fit a window; the next is refused with the count.
pub async fn request_limit_exact<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "request_limit_exact";
    let key = unique("req");
    let limit = Limit::per(MINUTE).requests(3);
    let ks = keys(&[(&key, limit)]);
    let now = start(MINUTE) + 1_000;
    for n in 0..3 {
        let r = admitted(C, &format!("request {n}"), l.reserve(&ks, 0, now + n).await);
        check_eq(C, "reserved tokens", r.tokens(), 0);
    }
    let r = refused(
        C,
        "4th request",
        l.reserve(&ks, 0, now + 5).await,
        Reason::Requests,
    );
    check_eq(C, "refusing key", r.key.as_str(), key.as_str());
    check_eq(C, "limit", r.limit, 3);
    check_eq(C, "used", r.used, 3);
    check_eq(C, "requested", r.requested, 1);
    check_eq(
        C,
        "usage",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(3, 0),
    );
}

/// Reservations add up to the token limit exactly; one more token is refused, zero
/// tokens still fit.
pub async fn token_limit_exact<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "token_limit_exact";
    let key = unique("tok");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(100))]);
    let now = start(MINUTE);
    let _a = admitted(C, "40 tokens", l.reserve(&ks, 40, now).await);
    let _b = admitted(
        C,
        "60 more tokens (exactly the limit)",
        l.reserve(&ks, 60, now).await,
    );
    let r = refused(
        C,
        "1 token over",
        l.reserve(&ks, 1, now).await,
        Reason::Tokens,
    );
    check_eq(C, "limit", r.limit, 100);
    check_eq(C, "used", r.used, 100);
    check_eq(C, "requested", r.requested, 1);
    let _c = admitted(C, "0 tokens on a full window", l.reserve(&ks, 0, now).await);
    check_eq(
        C,
        "usage",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(3, 100),
    );
}

/// When one key refuses, no key counts anything.
pub async fn all_or_nothing<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "all_or_nothing";
    let (a, b) = (unique("a"), unique("b"));
    let la = Limit::per(MINUTE).requests(10).tokens(100);
    let lb = Limit::per(MINUTE).tokens(50);
    let now = start(MINUTE) + 30_000;
    let _only_b = admitted(
        C,
        "40 on b alone",
        l.reserve(&keys(&[(&b, lb)]), 40, now).await,
    );
    let both = keys(&[(&a, la), (&b, lb)]);
    let r = refused(
        C,
        "20 on a and b",
        l.reserve(&both, 20, now).await,
        Reason::Tokens,
    );
    check_eq(C, "refusing key", r.key.as_str(), b.as_str());
    check_eq(
        C,
        "a untouched",
        ok(C, "usage a", l.usage(&a, MINUTE, now).await),
        usage(0, 0),
    );
    check_eq(
        C,
        "b unchanged",
        ok(C, "usage b", l.usage(&b, MINUTE, now).await),
        usage(1, 40),
    );
    let _both = admitted(C, "10 on a and b", l.reserve(&both, 10, now).await);
    check_eq(
        C,
        "a counted",
        ok(C, "usage a", l.usage(&a, MINUTE, now).await),
        usage(1, 10),
    );
    check_eq(
        C,
        "b counted",
        ok(C, "usage b", l.usage(&b, MINUTE, now).await),
        usage(2, 50),
    );
    // The request limit refuses just as atomically.
    let lr = Limit::per(MINUTE).requests(1);
    let c = unique("c");
    let _c = admitted(
        C,
        "one request on c",
        l.reserve(&keys(&[(&c, lr)]), 0, now).await,
    );
    let r = refused(
        C,
        "a and c (c out of requests)",
        l.reserve(&keys(&[(&a, la), (&c, lr)]), 5, now).await,
        Reason::Requests,
    );
    check_eq(C, "refusing key", r.key.as_str(), c.as_str());
    check_eq(
        C,
        "a still",
        ok(C, "usage a", l.usage(&a, MINUTE, now).await),
        usage(1, 10),
    );
}

/// Settling with fewer tokens gives the rest back, so a later request fits.
pub async fn settle_returns_unused<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "settle_returns_unused";
    let key = unique("settle");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(100))]);
    let now = start(MINUTE);
    let r = admitted(C, "80 tokens", l.reserve(&ks, 80, now).await);
    check_eq(C, "reserved", r.tokens(), 80);
    refused(
        C,
        "30 while 80 reserved",
        l.reserve(&ks, 30, now).await,
        Reason::Tokens,
    );
    ok(C, "settle 30", l.settle(r, 30).await);
    check_eq(
        C,
        "after settle",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 30),
    );
    let last = admitted(C, "70 after settling", l.reserve(&ks, 70, now).await);
    refused(C, "1 more", l.reserve(&ks, 1, now).await, Reason::Tokens);
    ok(C, "settle all of it", l.settle(last, 70).await);
    check_eq(
        C,
        "final",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(2, 100),
    );
}

/// Settling with more tokens than reserved records the actual amount, even past the
/// limit (an upstream that ignored `max_tokens`).
pub async fn settle_records_overshoot<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "settle_records_overshoot";
    let key = unique("over");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(100))]);
    let now = start(MINUTE);
    let r = admitted(C, "90 tokens", l.reserve(&ks, 90, now).await);
    ok(C, "settle 120", l.settle(r, 120).await);
    check_eq(
        C,
        "recorded",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 120),
    );
    let r = refused(
        C,
        "0 past the limit",
        l.reserve(&ks, 0, now).await,
        Reason::Tokens,
    );
    check_eq(C, "used", r.used, 120);
}

/// A reservation dropped without settling keeps its tokens counted.
pub async fn dropped_reservation_keeps_tokens<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "dropped_reservation_keeps_tokens";
    let key = unique("drop");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(100))]);
    let now = start(MINUTE);
    drop(admitted(C, "60 tokens", l.reserve(&ks, 60, now).await));
    check_eq(
        C,
        "kept",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 60),
    );
    refused(C, "50 more", l.reserve(&ks, 50, now).await, Reason::Tokens);
}

/// A request asking for more tokens than a limit is refused as such, before any other
/// reason, and counts nothing.
pub async fn too_large<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "too_large";
    let (a, b) = (unique("big-a"), unique("big-b"));
    let la = Limit::per(MINUTE).requests(1);
    let lb = Limit::per(MINUTE).tokens(100);
    let now = start(MINUTE);
    let _a = admitted(
        C,
        "a's only request",
        l.reserve(&keys(&[(&a, la)]), 0, now).await,
    );
    let both = keys(&[(&a, la), (&b, lb)]);
    let r = refused(
        C,
        "101 tokens",
        l.reserve(&both, 101, now).await,
        Reason::TooLarge,
    );
    check_eq(C, "refusing key", r.key.as_str(), b.as_str());
    check_eq(C, "limit", r.limit, 100);
    check_eq(C, "used", r.used, 0);
    check_eq(C, "requested", r.requested, 101);
    check_eq(C, "retry_after", r.retry_after, None);
    check_eq(
        C,
        "b untouched",
        ok(C, "usage b", l.usage(&b, MINUTE, now).await),
        usage(0, 0),
    );
    check_eq(
        C,
        "a unchanged",
        ok(C, "usage a", l.usage(&a, MINUTE, now).await),
        usage(1, 0),
    );
    // Exactly the limit is not too large.
    let _b = admitted(
        C,
        "100 tokens on b",
        l.reserve(&keys(&[(&b, lb)]), 100, now).await,
    );
}

/// `retry_after` runs until the refusing window ends, rounded up to whole seconds, at
/// least one second; among several refusing keys, the window ending last.
pub async fn retry_after<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "retry_after";
    let key = unique("retry");
    let ks = keys(&[(&key, Limit::per(MINUTE).requests(1))]);
    let s = start(MINUTE);
    let _r = admitted(C, "only request", l.reserve(&ks, 0, s).await);
    for (offset, want) in [(0, 60), (1, 60), (15_500, 45), (59_000, 1), (59_999, 1)] {
        let r = refused(
            C,
            "second request",
            l.reserve(&ks, 0, s + offset).await,
            Reason::Requests,
        );
        let what = format!("retry_after at +{offset} ms");
        check_eq(C, &what, r.retry_after, Some(Duration::from_secs(want)));
    }
    // Two refusing keys: the hourly one, whose window ends later, is reported.
    let (m, h) = (unique("retry-m"), unique("retry-h"));
    let (lm, lh) = (Limit::per(MINUTE).tokens(10), Limit::per(HOUR).tokens(10));
    let now = start(HOUR) + 600_000; // 10 min into the hour; a minute starts there too
    let _m = admitted(
        C,
        "fill minute",
        l.reserve(&keys(&[(&m, lm)]), 10, now).await,
    );
    let _h = admitted(C, "fill hour", l.reserve(&keys(&[(&h, lh)]), 10, now).await);
    let both = keys(&[(&m, lm), (&h, lh)]);
    let r = refused(
        C,
        "both full",
        l.reserve(&both, 1, now).await,
        Reason::Tokens,
    );
    check_eq(C, "refusing key", r.key.as_str(), h.as_str());
    check_eq(
        C,
        "retry_after",
        r.retry_after,
        Some(Duration::from_secs(3000)),
    );
}

/// A new window starts from zero; a reservation settled after its window rolled over
/// corrects its own window, not the new one.
pub async fn window_rollover<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "window_rollover";
    let key = unique("roll");
    let limit = Limit::per(MINUTE).requests(2).tokens(100);
    let ks = keys(&[(&key, limit)]);
    let old = start(MINUTE) + 59_000;
    let new = start(MINUTE) + 60_000;
    let _a = admitted(C, "first", l.reserve(&ks, 20, old).await);
    let late = admitted(C, "second, 80 tokens", l.reserve(&ks, 80, old + 999).await);
    refused(
        C,
        "third in the old window",
        l.reserve(&ks, 0, old + 999).await,
        Reason::Requests,
    );
    let fresh = admitted(C, "first of the new window", l.reserve(&ks, 100, new).await);
    check_eq(
        C,
        "new window",
        ok(C, "usage", l.usage(&key, MINUTE, new).await),
        usage(1, 100),
    );
    ok(C, "settle the old reservation", l.settle(late, 30).await);
    check_eq(
        C,
        "old window",
        ok(C, "usage", l.usage(&key, MINUTE, old).await),
        usage(2, 50),
    );
    check_eq(
        C,
        "new window kept",
        ok(C, "usage", l.usage(&key, MINUTE, new).await),
        usage(1, 100),
    );
    ok(C, "settle the new reservation", l.settle(fresh, 0).await);
    check_eq(
        C,
        "new window",
        ok(C, "usage", l.usage(&key, MINUTE, new).await),
        usage(1, 0),
    );
    // Windows are aligned to the epoch, not to the first request.
    let next = start(MINUTE) + 120_000;
    check_eq(
        C,
        "next window",
        ok(C, "usage", l.usage(&key, MINUTE, next).await),
        usage(0, 0),
    );
}

/// The same key twice with one window length is one counter (counted once, the
/// stricter limit); with two window lengths, two independent counters.
pub async fn merged_and_separate_windows<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "merged_and_separate_windows";
    let key = unique("dup");
    let now = start(HOUR);
    let loose = Limit::per(MINUTE).tokens(100);
    let strict = Limit::per(MINUTE).tokens(50).requests(5);
    let twice = keys(&[(&key, loose), (&key, strict)]);
    let r = refused(
        C,
        "60 over the stricter",
        l.reserve(&twice, 60, now).await,
        Reason::TooLarge,
    );
    check_eq(C, "stricter limit", r.limit, 50);
    let _r = admitted(
        C,
        "30 on the same key twice",
        l.reserve(&twice, 30, now).await,
    );
    check_eq(
        C,
        "counted once",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 30),
    );
    let hourly = Limit::per(HOUR).tokens(40);
    let _h = admitted(
        C,
        "40 per hour",
        l.reserve(&keys(&[(&key, hourly)]), 40, now).await,
    );
    check_eq(
        C,
        "minute counter",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 30),
    );
    check_eq(
        C,
        "hour counter",
        ok(C, "usage", l.usage(&key, HOUR, now).await),
        usage(1, 40),
    );
    let both = keys(&[(&key, loose), (&key, hourly)]);
    let r = refused(
        C,
        "hour full",
        l.reserve(&both, 1, now).await,
        Reason::Tokens,
    );
    check_eq(C, "hour limit", r.limit, 40);
    check_eq(
        C,
        "minute untouched",
        ok(C, "usage", l.usage(&key, MINUTE, now).await),
        usage(1, 30),
    );
}

/// No keys: admitted, nothing counted, settling is a no-op.
pub async fn no_keys<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "no_keys";
    let r = admitted(C, "no keys", l.reserve(&[], 1_000, BASE).await);
    check_eq(C, "reserved", r.tokens(), 1_000);
    ok(C, "settle", l.settle(r, 10).await);
}

/// Invalid windows and amounts are errors, not refusals.
pub async fn invalid_input<L: Limiter + ?Sized>(l: &L) {
    const C: &str = "invalid_input";
    let key = unique("invalid");
    let invalid = |r: Result<Reservation, ReserveError>, what: &str| match r {
        Err(ReserveError::Failed(LimiterError::Invalid(_))) => {}
        other => panic!("budget conformance [{C}]: {what}: expected Invalid, got {other:?}"),
    };
    for window in [
        Duration::ZERO,
        Duration::from_micros(1500),
        crate::MAX_WINDOW * 2,
    ] {
        let ks = keys(&[(&key, Limit::per(window).tokens(10))]);
        invalid(l.reserve(&ks, 1, BASE).await, &format!("window {window:?}"));
        check_true(
            C,
            "usage of a zero window",
            l.usage(&key, Duration::ZERO, BASE).await.is_err(),
        );
    }
    let ks = keys(&[(&key, Limit::per(MINUTE))]);
    invalid(
        l.reserve(&ks, crate::MAX_AMOUNT + 1, BASE).await,
        "tokens above MAX_AMOUNT",
    );
    // Limits above MAX_AMOUNT behave as MAX_AMOUNT.
    let huge = keys(&[(&key, Limit::per(MINUTE).tokens(u64::MAX).requests(u64::MAX))]);
    let r = admitted(
        C,
        "MAX_AMOUNT tokens",
        l.reserve(&huge, crate::MAX_AMOUNT, BASE).await,
    );
    ok(C, "settle", l.settle(r, 1).await);
    check_eq(
        C,
        "usage",
        ok(C, "usage", l.usage(&key, MINUTE, BASE).await),
        usage(1, 1),
    );
}

// ---------------------------------------------------------------------------------------
// Across replicas, concurrently.

/// What one replica counts, the others see and can settle.
pub async fn shared_between_replicas(replicas: &[Arc<dyn Limiter>]) {
    const C: &str = "shared_between_replicas";
    let key = unique("shared");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(100))]);
    let now = start(MINUTE);
    let n = replicas.len();
    let r = admitted(
        C,
        "80 on the first",
        replicas[0].reserve(&ks, 80, now).await,
    );
    let last = replicas[n - 1].as_ref();
    refused(
        C,
        "30 on the last",
        last.reserve(&ks, 30, now).await,
        Reason::Tokens,
    );
    ok(C, "settle on the last", last.settle(r, 10).await);
    let seen = ok(
        C,
        "usage on the first",
        replicas[0].usage(&key, MINUTE, now).await,
    );
    check_eq(C, "usage", seen, usage(1, 10));
}

/// Starts `tasks` reservations at once, round robin over `replicas`; returns the
/// reservations admitted, panicking on anything but an admission or `reason`.
async fn race(
    c: &str,
    replicas: &[Arc<dyn Limiter>],
    ks: &[(String, Limit)],
    tasks: usize,
    tokens: u64,
    now: i64,
    reason: Reason,
) -> Vec<Reservation> {
    let ks: Arc<[(String, Limit)]> = ks.into();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let l = replicas[i % replicas.len()].clone();
            let ks = ks.clone();
            tokio::spawn(async move { l.reserve(&ks, tokens, now).await })
        })
        .collect();
    let mut admitted = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(r)) => admitted.push(r),
            Ok(r) => {
                refused(c, "concurrent reservation", r, reason);
            }
            Err(e) => panic!("budget conformance [{c}]: task failed: {e}"),
        }
    }
    admitted
}

/// 200 concurrent reservations of 7 tokens against 1 000: exactly 142 are admitted.
pub async fn concurrent_reservations(replicas: &[Arc<dyn Limiter>]) {
    const C: &str = "concurrent_reservations";
    let key = unique("race");
    let ks = keys(&[(&key, Limit::per(MINUTE).tokens(1_000))]);
    let now = start(MINUTE);
    let won = race(C, replicas, &ks, 200, 7, now, Reason::Tokens).await;
    check_eq(C, "admitted", won.len(), 142);
    let seen = ok(C, "usage", replicas[0].usage(&key, MINUTE, now).await);
    check_eq(C, "usage", seen, usage(142, 994));
}

/// 200 concurrent reservations on two keys, one allowing 50 requests: exactly 50 are
/// admitted and the other key counts exactly those.
pub async fn concurrent_all_or_nothing(replicas: &[Arc<dyn Limiter>]) {
    const C: &str = "concurrent_all_or_nothing";
    let (a, b) = (unique("race-a"), unique("race-b"));
    let ks = keys(&[
        (&a, Limit::per(MINUTE).tokens(10_000)),
        (&b, Limit::per(HOUR).requests(50)),
    ]);
    let now = start(HOUR);
    let won = race(C, replicas, &ks, 200, 7, now, Reason::Requests).await;
    check_eq(C, "admitted", won.len(), 50);
    let seen = ok(C, "usage a", replicas[0].usage(&a, MINUTE, now).await);
    check_eq(C, "usage a", seen, usage(50, 350));
    let seen = ok(C, "usage b", replicas[0].usage(&b, HOUR, now).await);
    check_eq(C, "usage b", seen, usage(50, 350));
}

/// 200 concurrent reserve-then-settle cycles (reserve 10, use 0 to 10): the settled
/// total never exceeds the budget, and at least the 100 that fit unsettled are admitted.
pub async fn concurrent_reserve_and_settle(replicas: &[Arc<dyn Limiter>]) {
    const C: &str = "concurrent_reserve_and_settle";
    let key = unique("race-settle");
    let ks: Arc<[(String, Limit)]> = keys(&[(&key, Limit::per(MINUTE).tokens(1_000))]).into();
    let now = start(MINUTE);
    let handles: Vec<_> = (0..200u64)
        .map(|i| {
            let l = replicas[i as usize % replicas.len()].clone();
            let ks = ks.clone();
            tokio::spawn(async move {
                match l.reserve(&ks, 10, now).await {
                    Ok(r) => {
                        let used = i % 11;
                        l.settle(r, used).await.map(|()| Some(used))
                    }
                    Err(ReserveError::Refused(r)) if r.reason == Reason::Tokens => Ok(None),
                    Err(e) => panic!("budget conformance [{C}]: reservation: {e:?}"),
                }
            })
        })
        .collect();
    let (mut count, mut total) = (0u64, 0u64);
    for h in handles {
        match h.await {
            Ok(Ok(Some(used))) => {
                count += 1;
                total += used;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => panic!("budget conformance [{C}]: settle: {e}"),
            Err(e) => panic!("budget conformance [{C}]: task failed: {e}"),
        }
    }
    check_true(C, &format!("{count} admitted, at least 100"), count >= 100);
    let seen = ok(C, "usage", replicas[0].usage(&key, MINUTE, now).await);
    check_eq(C, "usage", seen, usage(count, total));
    check_true(C, "within the budget", seen.tokens <= 1_000);
}
