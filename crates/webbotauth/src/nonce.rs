//! Replay protection: an atomic "seen this nonce?" store, consulted only after a
//! signature verified (so an attacker cannot burn a legitimate agent's nonce).

use std::collections::HashMap;
use std::sync::Mutex;

/// An atomic nonce store. Implementations for shared stores (Redis `SET NX PX`) live
/// with the services that run several replicas.
pub trait NonceStore: Send + Sync {
    /// Records `nonce` (scoped by `scope`, e.g. the agent and key) until `expires_at`
    /// (unix seconds) and returns `true` if it was not already recorded. Must be atomic.
    /// A store that cannot answer must return `false` (fail closed).
    fn check_and_record(&self, scope: &str, nonce: &str, expires_at: i64, now: i64) -> bool;
}

/// An in-process nonce store with a bounded number of live entries.
///
/// Entries live until the signature they came with expires; expired entries are swept
/// when the store fills up. When it is full of live entries, new nonces are refused
/// (fail closed) rather than forgetting old ones (which would re-open replays).
#[derive(Debug)]
pub struct InMemoryNonceStore {
    capacity: usize,
    seen: Mutex<HashMap<(String, String), i64>>,
}

impl InMemoryNonceStore {
    /// A store holding at most `capacity` live nonces.
    pub fn new(capacity: usize) -> Self {
        InMemoryNonceStore {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The number of nonces held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.seen.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InMemoryNonceStore {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

impl NonceStore for InMemoryNonceStore {
    fn check_and_record(&self, scope: &str, nonce: &str, expires_at: i64, now: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let key = (scope.to_owned(), nonce.to_owned());
        if let Some(&until) = seen.get(&key) {
            if until >= now {
                return false;
            }
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.capacity {
                return false;
            }
        }
        seen.insert(key, expires_at);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_refused_until_expiry() {
        let s = InMemoryNonceStore::new(10);
        assert!(s.check_and_record("a", "n1", 100, 50));
        assert!(!s.check_and_record("a", "n1", 100, 60));
        assert!(s.check_and_record("b", "n1", 100, 60), "scoped per agent");
        assert!(
            s.check_and_record("a", "n1", 300, 101),
            "usable again once the signature expired"
        );
    }

    #[test]
    fn full_store_fails_closed_after_sweeping() {
        let s = InMemoryNonceStore::new(2);
        assert!(s.check_and_record("a", "1", 100, 0));
        assert!(s.check_and_record("a", "2", 10, 0));
        assert!(!s.check_and_record("a", "3", 100, 5), "full of live nonces");
        assert!(
            s.check_and_record("a", "3", 100, 11),
            "the expired one was swept"
        );
        assert_eq!(s.len(), 2);
    }
}
