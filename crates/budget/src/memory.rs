//! The in-process limiter.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::{
    choose, counter, exceeds, plan, reservation, window_ms, CounterId, Limit, Limiter,
    LimiterError, Reservation, ReserveError, Usage,
};

/// How long a counter is kept after its window ended. A request that read the clock
/// just before a window ended and reaches the limiter just after still finds the
/// counter (it is never recreated at zero).
const GRACE_MS: i64 = 5_000;

/// Counters in this process, behind one mutex: each reservation checks and counts all
/// its keys under the lock, so concurrent requests never overshoot.
///
/// Memory stays bounded: a counter is dropped once its window ended five seconds ago
/// (on the next reservation), so it holds only the windows in use.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counters: HashMap<CounterId, Usage>,
    /// When each counter may go (window end + grace), soonest first.
    expiry: BinaryHeap<Reverse<(i64, CounterId)>>,
}

impl State {
    /// Drops the counters whose window ended more than the grace before `now_ms`.
    fn evict(&mut self, now_ms: i64) {
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now_ms {
                break;
            }
            if let Some(Reverse((_, id))) = self.expiry.pop() {
                self.counters.remove(&id);
            }
        }
    }
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many window counters are held (for tests and metrics).
    pub fn live_counters(&self) -> usize {
        self.lock().counters.len()
    }

    /// The state; a panic elsewhere while holding the lock cannot leave it half
    /// updated (no code between the checks and the increments panics), so a poisoned
    /// lock is still used.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Limiter for MemoryLimiter {
    async fn reserve(
        &self,
        keys: &[(String, Limit)],
        tokens: u64,
        now_ms: i64,
    ) -> Result<Reservation, ReserveError> {
        let checks = plan(keys, tokens, now_ms)?;
        let mut state = self.lock();
        state.evict(now_ms);
        let refusals: Vec<_> = checks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let used = state.counters.get(&c.id).copied().unwrap_or_default();
                exceeds(c, used, tokens).map(|(reason, used)| (i, reason, used))
            })
            .collect();
        if !refusals.is_empty() {
            return Err(ReserveError::Refused(choose(
                &checks, &refusals, tokens, now_ms,
            )));
        }
        let state = &mut *state;
        for c in &checks {
            if let Some(used) = state.counters.get_mut(&c.id) {
                used.requests = used.requests.saturating_add(1);
                used.tokens = used.tokens.saturating_add(tokens);
            } else {
                // A new window's counter: the key is cloned only here.
                state
                    .expiry
                    .push(Reverse((c.end_ms.saturating_add(GRACE_MS), c.id.clone())));
                let first = Usage {
                    requests: 1,
                    tokens,
                };
                state.counters.insert(c.id.clone(), first);
            }
        }
        Ok(reservation(checks, tokens))
    }

    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError> {
        let actual = actual_tokens.min(crate::MAX_AMOUNT);
        let mut state = self.lock();
        for id in &reservation.counters {
            if let Some(used) = state.counters.get_mut(id) {
                used.tokens = used
                    .tokens
                    .saturating_sub(reservation.tokens)
                    .saturating_add(actual);
            }
        }
        Ok(())
    }

    async fn usage(&self, key: &str, window: Duration, now_ms: i64) -> Result<Usage, LimiterError> {
        let (id, _) = counter(key, window_ms(window)?, now_ms);
        Ok(self.lock().counters.get(&id).copied().unwrap_or_default())
    }
}
