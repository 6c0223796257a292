//! API tokens: random, shown once, stored only as SHA-256, scoped, expiring, revocable;
//! and the rate limit on repeated authentication failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// A permission a token carries.
pub const SCOPES: [&str; 4] = ["agents:read", "agents:write", "keys:write", "admin"];

/// A new random token (`oba_rt_` + 256 bits, base64url).
pub fn new_token() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    format!(
        "oba_rt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// A new random id: 24 lower-case hex characters (a valid DNS label).
pub fn new_id() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The stored form of a token. Lookups are by this hash (an index), so no secret is ever
/// compared byte by byte in variable time.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Validates a space-separated scope list.
pub fn parse_scopes(s: &str) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
    if scopes.is_empty() {
        return Err("at least one scope is required".into());
    }
    for sc in &scopes {
        if !SCOPES.contains(&sc.as_str()) {
            return Err(format!(
                "unknown scope {sc:?} (known: {})",
                SCOPES.join(", ")
            ));
        }
    }
    Ok(scopes)
}

/// Who is calling, after authentication.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The account.
    pub account_id: String,
    /// The token id, or `oidc` for an OIDC sign-in.
    pub via: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the credential expires (a token it creates cannot outlive it).
    pub expires_at: Option<i64>,
}

impl Caller {
    /// Does the caller hold `scope` (admin holds every scope)?
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// Is the caller an administrator?
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }

    /// The audit actor string.
    pub fn actor(&self) -> String {
        format!("account:{}/{}", self.account_id, self.via)
    }

    /// How the caller authenticated, for the audit trail: `oidc` or `token`.
    pub fn auth_method(&self) -> &'static str {
        if self.via == "oidc" {
            "oidc"
        } else {
            "token"
        }
    }
}

/// Counts authentication failures per client address in a sliding window.
#[derive(Debug)]
pub struct FailureLimiter {
    max: usize,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl FailureLimiter {
    /// At most `max` failures per `window` per address.
    pub fn new(max: usize, window: Duration) -> Self {
        FailureLimiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// If `ip` is over the limit, the seconds until it may try again.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().ok()?;
        let list = seen.get_mut(&ip)?;
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.max {
            let oldest = list.first().copied()?;
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            Some(wait.as_secs().max(1))
        } else {
            None
        }
    }

    /// Records a failure from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() > 100_000 {
                let window = self.window;
                let now = Instant::now();
                seen.retain(|_, v| v.last().is_some_and(|t| now.duration_since(*t) < window));
            }
            seen.entry(ip).or_default().push(Instant::now());
        }
    }
}
