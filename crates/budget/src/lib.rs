//! # oba-budget
//!
//! Budgets and rate limits for Attach Gateway: how many requests and how many tokens a
//! budget key (`"principal:key:ci"`, `"tenant:acme"`, ...) may use per fixed window, and
//! a guarantee that they are never overshot — by many concurrent streaming requests in
//! one process, or by several gateway replicas sharing Redis.
//!
//! A request is admitted in two steps:
//!
//! 1. [`Limiter::reserve`] counts one request and the request's *maximum* tokens (its
//!    `max_tokens`) in the current window of every key that applies to it, atomically and
//!    all-or-nothing: if any key would go over its [`Limit`], nothing is taken from any
//!    key and the caller gets a [`Refused`] saying which key, why and when to retry.
//! 2. When the response is complete, [`Limiter::settle`] replaces the reserved tokens
//!    with the tokens actually used, in the window the reservation was made in. A
//!    [`Reservation`] is consumed by `settle`, so it cannot be settled twice; one dropped
//!    without settling keeps everything it reserved (fail safe: never undercount).
//!
//! Windows are fixed and aligned to the unix epoch: the window of `now_ms` starts at
//! `floor(now_ms / window) * window`. The same key with two different window lengths is
//! two independent budgets (say, per minute and per day).
//!
//! [`MemoryLimiter`] keeps the counters in this process; [`RedisLimiter`] keeps them in
//! Redis, one Lua script per reservation, so that replicas share them. Both pass the
//! same [`conformance`] suite.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use oba_budget::{Limit, Limiter, MemoryLimiter, Reason, ReserveError};
//!
//! let limiter = MemoryLimiter::new();
//! let per_minute = Limit::per(Duration::from_secs(60)).requests(100).tokens(1_000);
//! let keys = [("tenant:acme".to_string(), per_minute)];
//! let now = 1_700_000_000_000; // unix ms; in production oba_budget::unix_now_ms()
//!
//! // Reserve the request's max_tokens, settle with what the model actually produced.
//! let reservation = limiter.reserve(&keys, 800, now).await.unwrap();
//! limiter.settle(reservation, 150).await.unwrap();
//! assert_eq!(limiter.usage("tenant:acme", per_minute.window, now).await.unwrap().tokens, 150);
//!
//! // 150 + 900 > 1 000: refused, and nothing is counted.
//! match limiter.reserve(&keys, 900, now).await {
//!     Err(ReserveError::Refused(refused)) => {
//!         assert_eq!(refused.reason, Reason::Tokens);
//!         assert_eq!(refused.key, "tenant:acme");
//!         // `now` is 20 s into its minute (windows are aligned to the epoch).
//!         assert_eq!(refused.retry_after, Some(Duration::from_secs(40)));
//!     }
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//!
//! // A request asking for more than the whole budget can never fit.
//! let err = limiter.reserve(&keys, 5_000, now).await.unwrap_err();
//! assert_eq!(err.refused().unwrap().reason, Reason::TooLarge);
//! # });
//! ```
//!
//! ## Guarantees and their limits
//!
//! * Per window, the requests counted never exceed the request limit and the tokens
//!   reserved never exceed the token limit — with one documented exception: a settle
//!   with `actual_tokens` above what was reserved records the actual amount (an upstream
//!   that produced more than `max_tokens`), which may take the window over its limit.
//! * A [`LimiterError`] (Redis unreachable, timed out, invalid input) is not a refusal:
//!   the caller should fail closed (reject the request) rather than admit it unmetered.
//! * `now_ms` comes from the caller. Replicas sharing Redis should have synchronised
//!   clocks; a skewed replica sees window boundaries shifted by its skew, but every
//!   window's counter still never goes over its limit as long as the skew is below the
//!   expiry grace ([`RedisLimiter`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod conformance;
mod memory;
mod redis_limiter;

pub use memory::MemoryLimiter;
pub use redis_limiter::RedisLimiter;

/// The largest token amount a request may reserve, and the largest limit; larger limits
/// behave as this one (2^53, which keeps every amount exact in Redis' Lua numbers).
pub const MAX_AMOUNT: u64 = 1 << 53;

/// The longest window (366 days).
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// The limits of one budget key for one fixed window length. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests per window (`Some(0)` refuses every request, as [`Reason::Requests`]).
    pub requests: Option<u64>,
    /// Tokens per window (reserved, then settled to the actual amount).
    pub tokens: Option<u64>,
    /// The window length: whole milliseconds, from 1 ms to [`MAX_WINDOW`].
    pub window: Duration,
}

impl Limit {
    /// No limit yet, per `window`.
    pub fn per(window: Duration) -> Self {
        Limit {
            requests: None,
            tokens: None,
            window,
        }
    }

    /// Sets the request limit.
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = Some(requests);
        self
    }

    /// Sets the token limit.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The window's requests are used up.
    Requests,
    /// Not enough tokens are left in the window.
    Tokens,
    /// The request alone asks for more tokens than the key's limit: it can never fit,
    /// retrying does not help (the gateway should answer 4xx, not 429).
    TooLarge,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Requests => "request limit reached",
            Reason::Tokens => "token limit reached",
            Reason::TooLarge => "request larger than the token limit",
        })
    }
}

/// A refused reservation: nothing was counted for any key.
///
/// When several keys refuse, the one whose window ends last is reported (retrying
/// earlier would be refused again), the first in the caller's order on a tie;
/// [`Reason::TooLarge`] is reported before any other reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The budget key that refused.
    pub key: String,
    /// Why.
    pub reason: Reason,
    /// The key's limit for that reason (requests, or tokens).
    pub limit: u64,
    /// Already used in the window: requests for [`Reason::Requests`], tokens for
    /// [`Reason::Tokens`]; `0` (not looked up) for [`Reason::TooLarge`].
    pub used: u64,
    /// What the request asked for: `1` for [`Reason::Requests`], its tokens otherwise.
    pub requested: u64,
    /// Until the refusing key's window ends, in whole seconds rounded up, at least one
    /// second (ready for a `Retry-After` header); `None` for [`Reason::TooLarge`].
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "budget {:?}: {} (limit {}, used {}, requested {})",
            self.key, self.reason, self.limit, self.used, self.requested
        )?;
        if let Some(after) = self.retry_after {
            write!(f, ", retry after {} s", after.as_secs())?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// The limiter could not decide. Not a refusal: fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The shared store failed or did not answer in time. A reservation that timed out
    /// may still have been counted (kept until its window ends: never undercounts).
    #[error("budget store unavailable: {0}")]
    Unavailable(String),
    /// Invalid input (a window of zero or above [`MAX_WINDOW`], tokens above
    /// [`MAX_AMOUNT`]).
    #[error("invalid budget request: {0}")]
    Invalid(String),
}

/// Why [`Limiter::reserve`] did not return a reservation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// A limit would be exceeded (HTTP 429, or 4xx for [`Reason::TooLarge`]).
    #[error(transparent)]
    Refused(Refused),
    /// The limiter failed (fail closed, HTTP 503).
    #[error(transparent)]
    Failed(#[from] LimiterError),
}

impl ReserveError {
    /// The refusal, if it is one.
    pub fn refused(&self) -> Option<&Refused> {
        match self {
            ReserveError::Refused(r) => Some(r),
            ReserveError::Failed(_) => None,
        }
    }
}

/// Requests and tokens counted in one window of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Requests admitted.
    pub requests: u64,
    /// Tokens reserved by unsettled reservations plus tokens settled.
    pub tokens: u64,
}

/// Tokens reserved for one admitted request, to be handed back to
/// [`Limiter::settle`] with the actual amount.
///
/// Settling consumes it, so a reservation cannot be settled twice:
///
/// ```compile_fail
/// # async fn twice(limiter: &oba_budget::MemoryLimiter, r: oba_budget::Reservation) {
/// use oba_budget::Limiter;
/// limiter.settle(r, 10).await.unwrap();
/// limiter.settle(r, 10).await.unwrap(); // use of moved value
/// # }
/// ```
///
/// Dropping it without settling keeps every reserved token counted until the windows
/// end (the request may have used them all: fail safe, never undercount). It remembers
/// its windows, so settling after a window rolled over corrects the window it was
/// taken from, not the current one. Settle it with the limiter that made it (for
/// [`RedisLimiter`], any limiter with the same key prefix).
#[derive(Debug)]
#[must_use = "settle the reservation with the tokens actually used; dropping it keeps all reserved tokens counted"]
pub struct Reservation {
    counters: Vec<CounterId>,
    tokens: u64,
}

impl Reservation {
    /// The tokens reserved.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// The object-safe limiter interface (`Arc<dyn Limiter>`).
#[async_trait::async_trait]
pub trait Limiter: Send + Sync {
    /// Counts one request and `tokens` reserved tokens in the current window of every
    /// key, all or nothing. Keys listed twice with the same window length are one
    /// counter, counted once, bound by the stricter of the two limits. No keys: admitted,
    /// nothing counted.
    async fn reserve(
        &self,
        keys: &[(String, Limit)],
        tokens: u64,
        now_ms: i64,
    ) -> Result<Reservation, ReserveError>;

    /// Replaces the reserved tokens with `actual_tokens` in the reservation's windows
    /// (still counted when they already ended; a no-op for windows no longer stored).
    /// `actual_tokens` above the reserved amount is recorded as is, even past the
    /// limit: only an upstream exceeding `max_tokens` can make it so. On error the
    /// reserved tokens stay counted.
    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError>;

    /// What is counted in the window of `now_ms` of `key` for windows of length
    /// `window` (zero for a window not stored).
    async fn usage(&self, key: &str, window: Duration, now_ms: i64) -> Result<Usage, LimiterError>;
}

/// Now, in unix milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Shared by both limiters: validation, windows, merging, choosing the refusal.

/// One counter: a budget key, a window length and a window number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CounterId {
    pub(crate) key: String,
    pub(crate) window_ms: i64,
    pub(crate) window_id: i64,
}

/// A counter a reservation checks, with its (merged) limits.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) id: CounterId,
    /// When the window ends (unix ms).
    pub(crate) end_ms: i64,
    pub(crate) requests: Option<u64>,
    pub(crate) tokens: Option<u64>,
}

/// The window length in milliseconds, validated.
pub(crate) fn window_ms(window: Duration) -> Result<i64, LimiterError> {
    if window.is_zero() || window > MAX_WINDOW || window.subsec_nanos() % 1_000_000 != 0 {
        return Err(LimiterError::Invalid(format!(
            "window {window:?}: must be whole milliseconds, from 1 ms to {} days",
            MAX_WINDOW.as_secs() / 86_400
        )));
    }
    // At most 366 days: fits.
    Ok(window.as_millis() as i64)
}

/// The counter of `key` for the window of `now_ms`, and the window's end.
pub(crate) fn counter(key: &str, window_ms: i64, now_ms: i64) -> (CounterId, i64) {
    let window_id = now_ms.div_euclid(window_ms);
    let end_ms = window_id.saturating_add(1).saturating_mul(window_ms);
    let id = CounterId {
        key: key.to_owned(),
        window_ms,
        window_id,
    };
    (id, end_ms)
}

fn stricter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Validates a reservation and merges duplicate counters; refuses [`Reason::TooLarge`]
/// without looking at any counter.
pub(crate) fn plan(
    keys: &[(String, Limit)],
    tokens: u64,
    now_ms: i64,
) -> Result<Vec<Check>, ReserveError> {
    if tokens > MAX_AMOUNT {
        return Err(LimiterError::Invalid(format!(
            "{tokens} tokens: at most {MAX_AMOUNT} per request"
        ))
        .into());
    }
    let mut checks: Vec<Check> = Vec::with_capacity(keys.len());
    for (key, limit) in keys {
        let window_ms = window_ms(limit.window)?;
        let (id, end_ms) = counter(key, window_ms, now_ms);
        let requests = limit.requests.map(|n| n.min(MAX_AMOUNT));
        let token_limit = limit.tokens.map(|n| n.min(MAX_AMOUNT));
        match checks.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.requests = stricter(c.requests, requests);
                c.tokens = stricter(c.tokens, token_limit);
            }
            None => checks.push(Check {
                id,
                end_ms,
                requests,
                tokens: token_limit,
            }),
        }
    }
    if let Some(c) = checks
        .iter()
        .find(|c| c.tokens.is_some_and(|max| tokens > max))
    {
        return Err(ReserveError::Refused(Refused {
            key: c.id.key.clone(),
            reason: Reason::TooLarge,
            limit: c.tokens.unwrap_or_default(),
            used: 0,
            requested: tokens,
            retry_after: None,
        }));
    }
    Ok(checks)
}

/// Whether `check` refuses given what its counter holds: the reason and the amount used.
pub(crate) fn exceeds(check: &Check, used: Usage, tokens: u64) -> Option<(Reason, u64)> {
    if check.requests.is_some_and(|max| used.requests >= max) {
        return Some((Reason::Requests, used.requests));
    }
    // `plan` guarantees tokens <= max.
    if check.tokens.is_some_and(|max| used.tokens > max - tokens) {
        return Some((Reason::Tokens, used.tokens));
    }
    None
}

/// The refusal to report among `refusals` (index into `checks`, reason, used): the
/// window ending last, the first on a tie. `refusals` is not empty.
pub(crate) fn choose(
    checks: &[Check],
    refusals: &[(usize, Reason, u64)],
    tokens: u64,
    now_ms: i64,
) -> Refused {
    let mut best = refusals[0];
    for &r in &refusals[1..] {
        if checks[r.0].end_ms > checks[best.0].end_ms {
            best = r;
        }
    }
    let (i, reason, used) = best;
    let check = &checks[i];
    let (limit, requested) = match reason {
        Reason::Requests => (check.requests.unwrap_or_default(), 1),
        _ => (check.tokens.unwrap_or_default(), tokens),
    };
    let left_ms = check.end_ms.saturating_sub(now_ms).max(1);
    let secs = (left_ms as u64).div_ceil(1000).max(1);
    Refused {
        key: check.id.key.clone(),
        reason,
        limit,
        used,
        requested,
        retry_after: Some(Duration::from_secs(secs)),
    }
}

/// The reservation for admitted `checks`.
pub(crate) fn reservation(checks: Vec<Check>, tokens: u64) -> Reservation {
    Reservation {
        counters: checks.into_iter().map(|c| c.id).collect(),
        tokens,
    }
}
