//! Replay protection shared by every authentication method: a nonce is recorded only
//! after its signature verified, atomically, keyed by (identity, key, nonce), until the
//! signature expires plus skew. In-process by default; Redis (`SET NX PX`) when several
//! gateway replicas must share it.

use oba_webbotauth::nonce::{InMemoryNonceStore, NonceStore};

/// Where nonces are recorded.
pub enum ReplayStore {
    /// This process only.
    Memory(InMemoryNonceStore),
    /// Shared through Redis.
    Redis {
        /// The connection (reconnects by itself).
        conn: redis::aio::ConnectionManager,
        /// Key prefix (per deployment, per test).
        prefix: String,
    },
}

impl std::fmt::Debug for ReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayStore::Memory(_) => f.write_str("ReplayStore::Memory"),
            ReplayStore::Redis { prefix, .. } => write!(f, "ReplayStore::Redis({prefix:?})"),
        }
    }
}

impl ReplayStore {
    /// Connects to Redis.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
        // Fail fast: an unreachable Redis is reported at start in about two seconds,
        // and a request waits at most two seconds for an answer (then fails closed).
        let timeout = Some(std::time::Duration::from_secs(2));
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(ReplayStore::Redis {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    /// Records `nonce` for `scope` until `expires_at`; `Ok(true)` if it was new. A store
    /// that cannot answer is an error (the caller fails closed).
    pub async fn check_and_record(
        &self,
        scope: &str,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, String> {
        match self {
            ReplayStore::Memory(m) => Ok(m.check_and_record(scope, nonce, expires_at, now)),
            ReplayStore::Redis { conn, prefix } => {
                use sha2::Digest;
                // Hash the (scope, nonce) pair: bounded key length, no injection.
                let h = sha2::Sha256::digest(format!("{scope}\n{nonce}").as_bytes());
                let key = format!("{prefix}{}", hex::encode(h));
                let ttl_ms = (expires_at.saturating_sub(now)).clamp(1, 86_400) * 1000;
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                Ok(set.is_some())
            }
        }
    }
}
