//! The Redis GCRA store (feature `redis`): one atomic Lua script per decision.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::store::redis::RedisConn;
use crate::store::{Gcra, RateDecision, RateStore, StoreError};

/// GCRA in one script. Time is the Redis server's (`TIME`), so every instance of a fleet
/// decides against the same clock. Values are microseconds.
///
/// KEYS[1] = rate key; ARGV = emission interval, burst, cost, max wait.
/// Returns `{allowed (1|0), wait-or-retry-after, remaining, reset-after}`.
pub const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tau
if allow_at > now + max_wait then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local wait = 0
local remaining = 0
if allow_at > now then
  wait = allow_at - now
else
  remaining = math.floor((now + tau - new_tat) / interval)
end
return {1, wait, remaining, new_tat - now}
";

/// Rate state in Redis, shared by every instance using the same Redis and key prefix.
#[derive(Clone, Debug)]
pub struct RedisRateStore {
    conn: RedisConn,
    script: Arc<Script>,
}

impl RedisRateStore {
    /// A store on a shared connection.
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Arc::new(Script::new(GCRA_LUA)),
        }
    }
    /// The connection.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl RateStore for RedisRateStore {
    fn check(
        &self,
        key: &[u8],
        limit: Gcra,
        cost: u32,
        max_wait: Duration,
    ) -> impl Future<Output = Result<RateDecision, StoreError>> + Send {
        let rkey = self.conn.key("throttle", key);
        let interval = micros(limit.emission_interval).max(1);
        let burst = u64::from(limit.burst.max(1));
        let cost = u64::from(cost);
        let max_wait = micros(max_wait);
        async move {
            let r: (i64, i64, i64, i64) = self
                .conn
                .eval(
                    &self.script,
                    &[&rkey],
                    &[&interval, &burst, &cost, &max_wait],
                )
                .await?;
            let us = |v: i64| Duration::from_micros(v.max(0) as u64);
            Ok(if r.0 == 1 {
                RateDecision::Allowed {
                    wait: us(r.1),
                    remaining: r.2.max(0) as u64,
                    reset_after: us(r.3),
                }
            } else {
                RateDecision::Limited {
                    retry_after: us(r.1),
                    reset_after: us(r.3),
                }
            })
        }
    }
}
