//! The Redis lockout store (feature `redis`): failure counters and bans shared by a fleet.
//!
//! Each decision is one atomic Lua script on the shared [`RedisConn`]. A key's state is one
//! hash at `<redis prefix>:lockout:{<key>}` (the key is the Redis Cluster hash tag) with the
//! fields `c` (failures in the window), `w` (window start), `b` (banned until), `o`
//! (offences) and `l` (last offence), all in milliseconds of the Redis server's clock
//! (`TIME`), so instances with skewed clocks agree. The hash expires (`PEXPIREAT`) once
//! nothing in it matters any more, so nothing needs sweeping.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::lockout::{LockoutPolicy, LockoutStore};
use crate::store::StoreError;
use crate::store::redis::RedisConn;

/// The Lua scripts, kept together. Millisecond times fit in a double exactly.
mod scripts {
    /// Redis time in ms (scripts run with effects replication, so `TIME` is allowed).
    const NOW: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

    /// KEYS[1] state. Returns the remaining ban in ms (0 when not banned).
    pub fn banned() -> String {
        format!(
            "{NOW}{}",
            r#"
local b = tonumber(redis.call('HGET', KEYS[1], 'b') or '0')
if b > now then return b - now end
return 0
"#
        )
    }

    /// KEYS[1] state; ARGV threshold, window, ban, max ban, forget after (ms).
    /// Returns the ban in ms when this failure caused one, else 0 (also while banned).
    pub fn fail() -> String {
        format!(
            "{NOW}{}",
            r#"
local threshold = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ban = tonumber(ARGV[3])
local max_ban = tonumber(ARGV[4])
local forget = tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'c', 'w', 'b', 'o', 'l')
local c = tonumber(h[1] or '0')
local w = tonumber(h[2] or '0')
local b = tonumber(h[3] or '0')
local o = tonumber(h[4] or '0')
local l = tonumber(h[5] or '0')
if b > now then return 0 end
if o > 0 and now - l >= forget then o = 0 end
if c == 0 or now - w >= window then
  c = 0
  w = now
end
c = c + 1
local banned = 0
if c >= threshold then
  c = 0
  o = o + 1
  l = now
  local f = o - 1
  if f > 20 then f = 20 end
  banned = ban * (2 ^ f)
  if banned > max_ban then banned = max_ban end
  b = now + banned
end
redis.call('HSET', KEYS[1], 'c', c, 'w', w, 'b', b, 'o', o, 'l', l)
local keep = math.max(b, w + window)
if o > 0 then keep = math.max(keep, l + forget) end
redis.call('PEXPIREAT', KEYS[1], keep)
return banned
"#
        )
    }

    /// KEYS[1] state. Resets the window's failure count (bans and offences stay).
    pub const SUCCEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'c', 0) end
return 0
"#;
}

static BANNED: LazyLock<Script> = LazyLock::new(|| Script::new(&scripts::banned()));
static FAIL: LazyLock<Script> = LazyLock::new(|| Script::new(&scripts::fail()));
static SUCCEED: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::SUCCEED));

/// Lockout state in Redis, shared by every instance using the same server and key prefix.
/// Cheap to clone.
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use tower_shield::auth::{AuthLayer, LockoutPolicy, MemoryKeyStore, RedisLockoutStore};
/// use tower_shield::store::{FailureMode, redis::RedisConn};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConn::builder("redis://:s3cret@10.0.0.5:6379/0")
///     .key_prefix("shop")
///     .timeout(Duration::from_millis(50))
///     .build_lazy()?;
/// let auth = AuthLayer::builder()
///     .api_keys(MemoryKeyStore::new())
///     .lockout(LockoutPolicy::new(5, Duration::from_secs(300), Duration::from_secs(900)))
///     .lockout_redis(RedisLockoutStore::new(conn), FailureMode::LocalFallback)
///     .build()?;
/// # let _ = auth; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisLockoutStore {
    conn: Arc<RedisConn>,
}

impl RedisLockoutStore {
    /// A store on `conn` (its key prefix and per-call timeout apply).
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn: Arc::new(conn),
        }
    }

    /// The connection.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// The Redis key holding the state of the lockout key `key`.
    pub fn redis_key(&self, key: &str) -> Vec<u8> {
        self.conn.key("lockout", key.as_bytes())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(1 << 40)
}

impl LockoutStore for RedisLockoutStore {
    fn banned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        async move {
            let left: i64 = conn.eval(&BANNED, &[&key], &[]).await?;
            Ok((left > 0).then(|| Duration::from_millis(left as u64)))
        }
    }

    fn fail(
        &self,
        key: &str,
        policy: &LockoutPolicy,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        let args = [
            u64::from(policy.threshold.max(1)),
            ms(policy.window).max(1),
            ms(policy.ban),
            ms(policy.max_ban),
            ms(policy.forget_after),
        ];
        async move {
            let [a, b, c, d, e] = &args;
            let ban: i64 = conn.eval(&FAIL, &[&key], &[a, b, c, d, e]).await?;
            Ok((ban > 0).then(|| Duration::from_millis(ban as u64)))
        }
    }

    fn succeed(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        async move {
            let _: i64 = conn.eval(&SUCCEED, &[&key], &[]).await?;
            Ok(())
        }
    }
}
