//! The limiter shared by replicas through Redis.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, RedisError};

use crate::{
    choose, counter, plan, reservation, window_ms, CounterId, Limit, Limiter, LimiterError, Reason,
    Reservation, ReserveError, Usage,
};

/// How long a counter stays in Redis after its window ended: replicas whose clocks
/// lag by less than this still count into the same counter (never recreate it at zero),
/// and late settles still correct it.
const GRACE_MS: i64 = 60_000;

/// Connection and response timeout: an unreachable Redis is reported in about two
/// seconds, and a reservation waits at most two seconds for an answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Checks every counter, then — only if none refuses — counts the request in all of
/// them. One script: Redis runs it atomically, so concurrent reservations from any
/// number of replicas never overshoot.
///
/// KEYS[i]: a counter, a hash with fields `r` (requests) and `t` (tokens).
/// ARGV[1]: the tokens to reserve. For counter i, from ARGV[2 + 3 (i - 1)]: the request
/// limit (-1: none), the token limit (-1: none), the time to live in ms (until the
/// window ends, plus the grace).
/// Returns `{}` when admitted, otherwise flat triples {i, reason (1 requests,
/// 2 tokens), used} and nothing was changed.
///
/// Amounts are at most 2^53 (exact in Lua numbers); amounts written back to Redis are
/// the original ARGV strings (Lua would format large numbers as 1e+15).
const RESERVE: &str = r"
local tokens = tonumber(ARGV[1])
local refused = {}
for i = 1, #KEYS do
  local a = 2 + 3 * (i - 1)
  local max_r = tonumber(ARGV[a])
  local max_t = tonumber(ARGV[a + 1])
  local used = redis.call('HMGET', KEYS[i], 'r', 't')
  local r = tonumber(used[1]) or 0
  local t = tonumber(used[2]) or 0
  if max_r >= 0 and r >= max_r then
    refused[#refused + 1] = i
    refused[#refused + 1] = 1
    refused[#refused + 1] = r
  elseif max_t >= 0 and t > max_t - tokens then
    refused[#refused + 1] = i
    refused[#refused + 1] = 2
    refused[#refused + 1] = t
  end
end
if #refused > 0 then
  return refused
end
for i = 1, #KEYS do
  local a = 2 + 3 * (i - 1)
  redis.call('HINCRBY', KEYS[i], 'r', 1)
  redis.call('HINCRBY', KEYS[i], 't', ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 2])
end
return refused
";

/// Adds ARGV[1] (actual - reserved, may be negative) to the tokens of every counter
/// that still exists (never recreates an expired one), not below zero.
const SETTLE: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local t = redis.call('HINCRBY', KEYS[i], 't', ARGV[1])
    if t < 0 then
      redis.call('HSET', KEYS[i], 't', 0)
    end
  end
end
return 0
";

/// A Lua script and its SHA1, as loaded into the server.
#[derive(Debug)]
struct Loaded {
    source: &'static str,
    sha: String,
}

/// Counters in Redis, shared by every replica connected with the same key prefix.
///
/// A counter is the hash `{prefix}{key}:{window ms}:{window number}` (fields `r` and
/// `t`), expiring one minute after its window ends. A reservation is one script run
/// (`EVALSHA`, falling back to `EVAL` after a server restart or `SCRIPT FLUSH`), a
/// settle another, a usage one `HMGET`. Needs one Redis server (or a primary): the
/// keys of a reservation are not in one hash slot, so Redis Cluster is not supported.
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    reserve: Loaded,
    settle: Loaded,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisLimiter({:?})", self.prefix)
    }
}

fn unavailable(e: RedisError) -> LimiterError {
    LimiterError::Unavailable(format!("redis: {e}"))
}

impl RedisLimiter {
    /// Connects to Redis (`redis://[:password@]host:port[/db]`) and loads the
    /// scripts. Connecting and every later command time out after two seconds
    /// ([`LimiterError::Unavailable`]); the connection is re-established by itself.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, LimiterError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        let reserve = load(&mut conn, RESERVE).await?;
        let settle = load(&mut conn, SETTLE).await?;
        Ok(RedisLimiter {
            conn,
            prefix: key_prefix.to_owned(),
            reserve,
            settle,
        })
    }

    /// The Redis key of a counter.
    fn key(&self, id: &CounterId) -> String {
        format!(
            "{}{}:{}:{}",
            self.prefix, id.key, id.window_ms, id.window_id
        )
    }

    /// Runs a loaded script, by SHA1, by source if the server lost it.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Loaded,
        keys: &[String],
        args: &[i64],
    ) -> Result<T, LimiterError> {
        let mut conn = self.conn.clone();
        let by_sha = redis::cmd("EVALSHA")
            .arg(&script.sha)
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .query_async(&mut conn)
            .await;
        match by_sha {
            Err(e) if e.code() == Some("NOSCRIPT") => redis::cmd("EVAL")
                .arg(script.source)
                .arg(keys.len())
                .arg(keys)
                .arg(args)
                .query_async(&mut conn)
                .await
                .map_err(unavailable),
            other => other.map_err(unavailable),
        }
    }
}

/// Loads a script into the server's script cache.
async fn load(conn: &mut ConnectionManager, source: &'static str) -> Result<Loaded, LimiterError> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(Loaded { source, sha })
}

/// A limit as a script argument: -1 for none (limits are at most 2^53).
fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |n| n as i64)
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn reserve(
        &self,
        keys: &[(String, Limit)],
        tokens: u64,
        now_ms: i64,
    ) -> Result<Reservation, ReserveError> {
        let checks = plan(keys, tokens, now_ms)?;
        if checks.is_empty() {
            return Ok(reservation(checks, tokens));
        }
        let redis_keys: Vec<String> = checks.iter().map(|c| self.key(&c.id)).collect();
        let mut args = Vec::with_capacity(1 + 3 * checks.len());
        args.push(tokens as i64);
        for c in &checks {
            args.push(limit_arg(c.requests));
            args.push(limit_arg(c.tokens));
            args.push(c.end_ms.saturating_sub(now_ms).saturating_add(GRACE_MS));
        }
        let answer: Vec<i64> = self.run(&self.reserve, &redis_keys, &args).await?;
        if answer.is_empty() {
            return Ok(reservation(checks, tokens));
        }
        let malformed = || LimiterError::Unavailable(format!("redis: bad answer {answer:?}"));
        if answer.len() % 3 != 0 {
            return Err(malformed().into());
        }
        let mut refusals = Vec::with_capacity(answer.len() / 3);
        for triple in answer.chunks_exact(3) {
            let i = usize::try_from(triple[0] - 1).map_err(|_| malformed())?;
            let reason = match triple[1] {
                1 => Reason::Requests,
                2 => Reason::Tokens,
                _ => return Err(malformed().into()),
            };
            if i >= checks.len() {
                return Err(malformed().into());
            }
            refusals.push((i, reason, triple[2].max(0) as u64));
        }
        Err(ReserveError::Refused(choose(
            &checks, &refusals, tokens, now_ms,
        )))
    }

    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError> {
        let actual = actual_tokens.min(crate::MAX_AMOUNT) as i64;
        let delta = actual - reservation.tokens as i64;
        if delta == 0 || reservation.counters.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = reservation.counters.iter().map(|c| self.key(c)).collect();
        let _: i64 = self.run(&self.settle, &keys, &[delta]).await?;
        Ok(())
    }

    async fn usage(&self, key: &str, window: Duration, now_ms: i64) -> Result<Usage, LimiterError> {
        let (id, _) = counter(key, window_ms(window)?, now_ms);
        let mut conn = self.conn.clone();
        let (requests, tokens): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key(&id))
            .arg("r")
            .arg("t")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Usage {
            requests: requests.unwrap_or(0),
            tokens: tokens.unwrap_or(0),
        })
    }
}
