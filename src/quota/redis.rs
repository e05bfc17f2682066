//! The Redis counter store (feature `redis`): one quota shared by a fleet of instances.
//!
//! Each decision is one atomic Lua script on the shared [`RedisConn`]: the counter of the
//! window is increased by the cost only when the result stays within the limit (otherwise it
//! is left unchanged), and it expires at the window's end (`EXPIREAT`), so the next period
//! starts with a new key and nothing needs sweeping. Keys are
//! `<redis prefix>:<quota prefix>{<caller>}:<quota>:<period label>`, e.g.
//! `tower-shield:quota:{p%3Aalice}:monthly:2026-11`: the caller is the Redis Cluster hash tag,
//! so all counters of one caller live on one slot.
//!
//! Errors ([`StoreError`]) never contain the connection password; calls are bounded by the
//! connection's per-call timeout, after which the layer applies its
//! [`FailureMode`](crate::store::FailureMode).

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::Script;

use crate::store::redis::RedisConn;
use crate::store::{CounterDecision, CounterStore, StoreError};

/// The Lua scripts, kept together. All numbers fit in a double exactly below 2^53.
mod scripts {
    /// KEYS[1] counter; ARGV cost, limit, expire-at (Unix seconds).
    /// Returns {1, used} when counted, {0, used} when refused (unchanged).
    pub const ADD_WITHIN: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if cur + cost > tonumber(ARGV[2]) then
  return {0, cur}
end
local v = redis.call('INCRBY', KEYS[1], cost)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, v}
"#;

    /// KEYS[1] counter; ARGV cost. Decrements, floored at 0, keeping the expiry; an absent
    /// counter stays absent. Returns the new value.
    pub const REFUND: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur <= 0 then return 0 end
local n = cur - tonumber(ARGV[1])
if n <= 0 then
  redis.call('SET', KEYS[1], 0, 'KEEPTTL')
  return 0
end
return redis.call('DECRBY', KEYS[1], ARGV[1])
"#;

    /// KEYS[1] counter. Returns its value or 0.
    pub const GET: &str = r#"return tonumber(redis.call('GET', KEYS[1]) or '0')"#;
}

static ADD_WITHIN: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ADD_WITHIN));
static REFUND: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REFUND));
static GET: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::GET));

/// Quota counters in Redis, shared by every instance using the same server and key prefix.
/// Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_shield::quota::{Quota, QuotaLayer, QuotaStore, RedisCounterStore, Window};
/// use tower_shield::store::{FailureMode, redis::RedisConn};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConn::builder("redis://:s3cret@10.0.0.5:6379/0")
///     .key_prefix("shop")
///     .timeout(Duration::from_millis(50))
///     .build_lazy()?;
/// let quota = QuotaLayer::builder()
///     .store(QuotaStore::Redis(RedisCounterStore::new(conn)))
///     .failure_mode(FailureMode::LocalFallback)
///     .plan("free", [Quota::new("monthly", 6000, Window::month())])
///     .default_plan("free")
///     .build()?;
/// # let _ = quota; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisCounterStore {
    conn: Arc<RedisConn>,
}

impl RedisCounterStore {
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

    /// The Redis key of the layer's counter key `key`.
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        self.conn.prefixed(key)
    }

    /// The add-within script's source, e.g. for `SCRIPT LOAD` in `redis-benchmark`.
    pub fn add_within_script() -> &'static str {
        scripts::ADD_WITHIN
    }
}

fn expire_at(end: SystemTime) -> u64 {
    let d = end.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl CounterStore for RedisCounterStore {
    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> impl Future<Output = Result<CounterDecision, StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        async move {
            let (counted, used): (i64, i64) = conn
                .eval(
                    &ADD_WITHIN,
                    &[&key],
                    &[&cost, &limit, &expire_at(window_end)],
                )
                .await?;
            let used = u64::try_from(used)
                .map_err(|_| StoreError::Protocol("negative quota counter".into()))?;
            Ok(if counted == 1 {
                CounterDecision::Counted { used }
            } else {
                CounterDecision::Exceeded { used }
            })
        }
    }

    fn refund(&self, key: &[u8], cost: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        async move {
            let _: i64 = conn.eval(&REFUND, &[&key], &[&cost]).await?;
            Ok(())
        }
    }

    fn get(&self, key: &[u8]) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let key = self.redis_key(key);
        let conn = self.conn.clone();
        async move {
            let v: i64 = conn.eval(&GET, &[&key], &[]).await?;
            Ok(u64::try_from(v).unwrap_or(0))
        }
    }
}
