//! The Redis GCRA store (feature `redis`): one atomic Lua script per decision, or, opt-in,
//! one script per batch of decisions ([`RedisRateStore::batched`]).
//!
//! # Wire format
//! A decision has one key and four arguments: emission interval, burst, cost and max wait
//! (microseconds, decimal); the batch script takes each distinct set of four once and a
//! limit number per decision ([`GCRA_BATCH_LUA`]). A decision's reply is four decimal integers
//! separated by single spaces, `"<allowed> <wait-or-retry-after> <remaining> <reset-after>"`
//! (`allowed` is `1` or `0`; times in microseconds); a batch's reply is its decisions' replies
//! joined by single spaces, in order. Any other reply is a [`StoreError::Protocol`].
//!
//! # Batching and Redis Cluster
//! A batched store sends the decisions that were queued while a script was in flight as one
//! `EVALSHA` with one `TIME` and one `MGET`, and writes each key once. The decisions are the
//! same as one script per decision in arrival order, but one script touches the keys of many
//! clients: on Redis Cluster those keys hash to different slots and the script fails
//! (`CROSSSLOT`). Use batching only with a single Redis (or a replicated primary), which is
//! why it is off by default.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};

use crate::error::ConfigError;
use crate::store::redis::{BatchJob, Batcher, RedisConn, ReplyFields};
use crate::store::{Gcra, RateDecision, RateStore, StoreError};

/// GCRA in one script. Time is the Redis server's (`TIME`), so every instance of a fleet
/// decides against the same clock. Values are microseconds.
///
/// `KEYS[1]` = rate key; `ARGV` = emission interval, burst, cost, max wait.
/// Returns `"<allowed (1|0)> <wait-or-retry-after> <remaining> <reset-after>"`.
pub const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local tau = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * tonumber(ARGV[3])
local allow_at = new_tat - tau
if allow_at > now + tonumber(ARGV[4]) then
  return string.format('0 %d 0 %d', allow_at - now, tat - now)
end
redis.call('PSETEX', KEYS[1], math.ceil((new_tat - now) / 1000) + 1, string.format('%d', new_tat))
if allow_at > now then
  return string.format('1 %d 0 %d', allow_at - now, new_tat - now)
end
return string.format('1 0 %d %d', math.floor((now + tau - new_tat) / interval), new_tat - now)
";

/// [`GCRA_LUA`] for a batch. `ARGV[1]` = the number of distinct limits L, then per limit its
/// emission interval, burst, cost and max wait, then per decision `i` the number of its
/// limit (1 ..= L); `KEYS[i]` is decision `i`'s key. One `TIME` and one `MGET` for the batch;
/// decisions on the same key see the earlier ones of the batch; each admitted key is
/// written once, with its last schedule. Returns the decisions' replies joined by spaces.
pub const GCRA_BATCH_LUA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cur = redis.call('MGET', unpack(KEYS))
local nl = tonumber(ARGV[1])
local lims = {}
for l = 1, nl do
  local b = 4 * l - 2
  local interval = tonumber(ARGV[b])
  lims[l] = {interval, interval * tonumber(ARGV[b + 1]), interval * tonumber(ARGV[b + 2]), now + tonumber(ARGV[b + 3])}
end
local base = 1 + 4 * nl
local tats = {}
local order = {}
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local lim = lims[tonumber(ARGV[base + i])]
  local interval = lim[1]
  local tau = lim[2]
  local tat = tats[key]
  if tat == nil then tat = tonumber(cur[i] or '0') end
  if tat < now then tat = now end
  local new_tat = tat + lim[3]
  local allow_at = new_tat - tau
  if allow_at > lim[4] then
    out[i] = string.format('0 %d 0 %d', allow_at - now, tat - now)
    if tats[key] == nil then tats[key] = tat end
  else
    if order[key] == nil then
      order[key] = true
      order[#order + 1] = key
    end
    tats[key] = new_tat
    if allow_at > now then
      out[i] = string.format('1 %d 0 %d', allow_at - now, new_tat - now)
    else
      out[i] = string.format('1 0 %d %d', math.floor((now + tau - new_tat) / interval), new_tat - now)
    end
  end
end
for j = 1, #order do
  local v = tats[order[j]]
  redis.call('PSETEX', order[j], math.ceil((v - now) / 1000) + 1, string.format('%d', v))
end
return table.concat(out, ' ')
";

/// The largest batch [`RedisRateStore::batched`] accepts.
pub const MAX_BATCH: usize = 1024;

/// Rate state in Redis, shared by every instance using the same Redis and key prefix.
#[derive(Clone, Debug)]
pub struct RedisRateStore {
    conn: RedisConn,
    script: Arc<Script>,
    batcher: Option<Arc<Batcher<Decision>>>,
}

impl RedisRateStore {
    /// A store on a shared connection: one script per decision.
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Arc::new(Script::new(GCRA_LUA)),
            batcher: None,
        }
    }

    /// A store that sends the decisions queued while a script is in flight together, up to
    /// `max_batch` (1 ..= [`MAX_BATCH`]) per script, with up to two scripts in flight. It
    /// takes less Redis time and client CPU per decision under load, but is for a single
    /// Redis only: on Redis Cluster a batch's keys are in different slots (see the module
    /// docs). A decision waits at most two per-call timeouts (the script ahead of it, then
    /// its own). Must be used inside a Tokio runtime (batches run on spawned tasks).
    pub fn batched(conn: RedisConn, max_batch: usize) -> Result<Self, ConfigError> {
        let max = NonZeroUsize::new(max_batch)
            .filter(|n| n.get() <= MAX_BATCH)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "throttle.redis_batch",
                    format!("must be between 1 and {MAX_BATCH}, got {max_batch}"),
                )
            })?;
        let batcher = Arc::new(Batcher::new(
            conn.clone(),
            GCRA_BATCH_LUA,
            max.get(),
            "throttle",
        ));
        Ok(Self {
            batcher: Some(batcher),
            ..Self::new(conn)
        })
    }

    /// The connection.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// The largest batch, or `None` for one script per decision.
    pub fn max_batch(&self) -> Option<usize> {
        self.batcher.as_ref().map(|b| b.max())
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn bad_reply() -> StoreError {
    StoreError::Protocol("unexpected throttle script reply".into())
}

/// One decision of the wire format.
fn parse_decision(fields: &mut ReplyFields<'_>) -> Option<RateDecision> {
    let mut f = [0u64; 4];
    for v in &mut f {
        *v = fields.next_u64()?;
    }
    let us = Duration::from_micros;
    match f[0] {
        1 => Some(RateDecision::Allowed {
            wait: us(f[1]),
            remaining: f[2],
            reset_after: us(f[3]),
        }),
        0 if f[2] == 0 => Some(RateDecision::Limited {
            retry_after: us(f[1]),
            reset_after: us(f[3]),
        }),
        _ => None,
    }
}

/// Parses `n` decisions of the wire format from `reply`, all or nothing.
fn parse_reply(reply: &Value, n: usize, out: &mut Vec<RateDecision>) -> Result<(), StoreError> {
    let mut fields = ReplyFields::of(reply).ok_or_else(bad_reply)?;
    let start = out.len();
    for _ in 0..n {
        match parse_decision(&mut fields) {
            Some(d) => out.push(d),
            None => {
                out.truncate(start);
                return Err(bad_reply());
            }
        }
    }
    if !fields.is_done() {
        out.truncate(start);
        return Err(bad_reply());
    }
    Ok(())
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
        let args = [
            micros(limit.emission_interval).max(1),
            u64::from(limit.burst.max(1)),
            u64::from(cost),
            micros(max_wait),
        ];
        async move {
            if let Some(batcher) = &self.batcher {
                return batcher.submit(Decision { key: rkey, args }).await;
            }
            let [a, b, c, d] = &args;
            let reply: Value = self
                .conn
                .eval(&self.script, &[&rkey], &[a, b, c, d])
                .await?;
            let mut out = Vec::with_capacity(1);
            parse_reply(&reply, 1, &mut out)?;
            Ok(out[0])
        }
    }
}

/// One decision of a batch: its Redis key and its four arguments.
struct Decision {
    key: Vec<u8>,
    args: [u64; 4],
}

impl BatchJob for Decision {
    type Output = RateDecision;
    fn size(&self) -> (usize, usize, usize) {
        (1, 5, self.key.len() + 48)
    }
    fn push_keys(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.key.as_slice());
    }
    fn push_args(&self, cmd: &mut redis::Cmd) {
        let [a, b, c, d] = self.args;
        cmd.arg(1).arg(a).arg(b).arg(c).arg(d).arg(1);
    }
    /// The keys, the distinct limits (a batch usually holds a few policies' decisions; the
    /// distinct ones come from the configuration, so the search stays short), then each
    /// decision's limit number.
    fn push_batch<'a>(jobs: impl Iterator<Item = &'a Self> + Clone, cmd: &mut redis::Cmd) {
        let mut limits: Vec<[u64; 4]> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        for j in jobs {
            cmd.arg(j.key.as_slice());
            let n = match limits.iter().position(|l| *l == j.args) {
                Some(n) => n,
                None => {
                    limits.push(j.args);
                    limits.len() - 1
                }
            };
            which.push(n + 1);
        }
        cmd.arg(limits.len());
        for [a, b, c, d] in limits {
            cmd.arg(a).arg(b).arg(c).arg(d);
        }
        for n in which {
            cmd.arg(n);
        }
    }
    fn parse(&self, fields: &mut ReplyFields<'_>) -> Option<RateDecision> {
        parse_decision(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_parse_exactly() {
        let mut out = Vec::new();
        parse_reply(&bulk("1 0 4 250000"), 1, &mut out).unwrap();
        parse_reply(&bulk("1 1500 0 9000"), 1, &mut out).unwrap();
        parse_reply(&bulk("0 20000000 0 30000000"), 1, &mut out).unwrap();
        assert_eq!(
            out,
            [
                RateDecision::Allowed {
                    wait: Duration::ZERO,
                    remaining: 4,
                    reset_after: Duration::from_micros(250_000)
                },
                RateDecision::Allowed {
                    wait: Duration::from_micros(1500),
                    remaining: 0,
                    reset_after: Duration::from_micros(9000)
                },
                RateDecision::Limited {
                    retry_after: Duration::from_secs(20),
                    reset_after: Duration::from_secs(30)
                },
            ]
        );
        out.clear();
        parse_reply(&bulk("1 0 1 2 0 3 0 4"), 2, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(
            matches!(out[1], RateDecision::Limited { retry_after, .. } if retry_after == Duration::from_micros(3))
        );

        for bad in [
            "",
            "1 0 4",
            "1 0 4 5 ",
            " 1 0 4 5",
            "1  0 4 5",
            "1 0 4 5 6",
            "2 0 4 5",
            "0 1 7 5",
            "1 -1 4 5",
            "1 +1 4 5",
            "1 0.5 4 5",
            "1 0 4 1e3",
            "1 0 4 99999999999999999999",
            "1 0 4 5\n",
        ] {
            out.clear();
            let e = parse_reply(&bulk(bad), 1, &mut out).unwrap_err();
            assert!(matches!(e, StoreError::Protocol(_)), "{bad:?}");
        }
        // a batch reply must hold exactly its decisions
        assert!(parse_reply(&bulk("1 0 1 2"), 2, &mut Vec::new()).is_err());
        assert!(parse_reply(&bulk("1 0 1 2 1 0 1 2"), 1, &mut Vec::new()).is_err());
        for other in [
            Value::Int(1),
            Value::Nil,
            Value::SimpleString("1 0 4 5".into()),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(4),
                Value::Int(5),
            ]),
        ] {
            assert!(matches!(
                parse_reply(&other, 1, &mut Vec::new()),
                Err(StoreError::Protocol(_))
            ));
        }
    }

    #[test]
    fn batch_size_is_checked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let conn = RedisConn::builder("redis://127.0.0.1:1")
            .build_lazy()
            .unwrap();
        for bad in [0, MAX_BATCH + 1] {
            let e = RedisRateStore::batched(conn.clone(), bad).unwrap_err();
            assert!(e.to_string().starts_with("throttle.redis_batch:"), "{e}");
        }
        let s = RedisRateStore::batched(conn.clone(), 64).unwrap();
        assert_eq!(s.max_batch(), Some(64));
        assert_eq!(RedisRateStore::new(conn).max_batch(), None);
    }
}
