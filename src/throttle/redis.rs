//! The Redis GCRA store (feature `redis`): one atomic Lua script per decision, or, opt-in,
//! one script per batch of decisions ([`RedisRateStore::batched`]).
//!
//! # Wire format
//! Both scripts take, per decision, one key and four arguments: emission interval, burst,
//! cost and max wait (microseconds, decimal). A decision's reply is four decimal integers
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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::oneshot;

use crate::error::ConfigError;
use crate::store::redis::{RedisConn, evalsha_cmd};
use crate::store::{Gcra, RateDecision, RateStore, StoreError};

/// GCRA in one script. Time is the Redis server's (`TIME`), so every instance of a fleet
/// decides against the same clock. Values are microseconds.
///
/// KEYS[1] = rate key; ARGV = emission interval, burst, cost, max wait.
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

/// [`GCRA_LUA`] for a batch: decision `i` has key KEYS[i] and arguments ARGV[4i-3..4i]. One
/// `TIME` and one `MGET` for the batch; decisions on the same key see the earlier ones of
/// the batch; each admitted key is written once, with its last schedule. Returns the
/// decisions' replies joined by spaces.
pub const GCRA_BATCH_LUA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cur = redis.call('MGET', unpack(KEYS))
local tats = {}
local order = {}
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local a = 4 * i - 3
  local interval = tonumber(ARGV[a])
  local tau = interval * tonumber(ARGV[a + 1])
  local tat = tats[key]
  if tat == nil then tat = tonumber(cur[i] or '0') end
  if tat < now then tat = now end
  local new_tat = tat + interval * tonumber(ARGV[a + 2])
  local allow_at = new_tat - tau
  if allow_at > now + tonumber(ARGV[a + 3]) then
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

/// How many batch scripts may be in flight at once: while one is on the server, the next
/// one is already queued behind it on the connection.
const MAX_IN_FLIGHT: usize = 2;

/// Rate state in Redis, shared by every instance using the same Redis and key prefix.
#[derive(Clone, Debug)]
pub struct RedisRateStore {
    conn: RedisConn,
    script: Arc<Script>,
    batcher: Option<Arc<Batcher>>,
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
        let batcher = Arc::new(Batcher {
            conn: conn.clone(),
            script: Script::new(GCRA_BATCH_LUA),
            max: max.get(),
            queue: Mutex::new(Queue::default()),
        });
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
        self.batcher.as_ref().map(|b| b.max)
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn bad_reply() -> StoreError {
    StoreError::Protocol("unexpected throttle script reply".into())
}

/// One decimal integer without sign or leading blanks.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Parses `n` decisions of the wire format from `reply`, all or nothing.
fn parse_reply(reply: &Value, n: usize, out: &mut Vec<RateDecision>) -> Result<(), StoreError> {
    let Value::BulkString(bytes) = reply else {
        return Err(bad_reply());
    };
    let mut fields = bytes.split(|&b| b == b' ');
    for _ in 0..n {
        let mut f = [0u64; 4];
        for v in &mut f {
            *v = fields.next().and_then(parse_u64).ok_or_else(bad_reply)?;
        }
        let us = Duration::from_micros;
        out.push(match f[0] {
            1 => RateDecision::Allowed {
                wait: us(f[1]),
                remaining: f[2],
                reset_after: us(f[3]),
            },
            0 if f[2] == 0 => RateDecision::Limited {
                retry_after: us(f[1]),
                reset_after: us(f[3]),
            },
            _ => return Err(bad_reply()),
        });
    }
    if fields.next().is_some() {
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
                return batcher.check(rkey, args).await;
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

type Reply = oneshot::Sender<Result<RateDecision, StoreError>>;

/// One queued decision: its Redis key, its four arguments and where its answer goes.
struct Pending {
    key: Vec<u8>,
    args: [u64; 4],
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    in_flight: usize,
    /// Emptied batch vectors, reused so that queueing does not reallocate.
    spare: Vec<Vec<Pending>>,
}

impl Queue {
    fn take(&mut self, max: usize) -> Vec<Pending> {
        if self.waiting.len() <= max {
            let next = self.spare.pop().unwrap_or_default();
            std::mem::replace(&mut self.waiting, next)
        } else {
            let mut batch = self.spare.pop().unwrap_or_default();
            batch.extend(self.waiting.drain(..max));
            batch
        }
    }
}

struct Batcher {
    conn: RedisConn,
    script: Script,
    max: usize,
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("max", &self.max).finish()
    }
}

/// Frees a runner's slot if the runner panics, so that later decisions start a new one.
struct RunnerSlot<'a>(Option<&'a Batcher>);

impl Drop for RunnerSlot<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            let mut q = b.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.in_flight -= 1;
        }
    }
}

impl Batcher {
    async fn check(
        self: &Arc<Self>,
        key: Vec<u8>,
        args: [u64; 4],
    ) -> Result<RateDecision, StoreError> {
        let (reply, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(Pending { key, args, reply });
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                Some(q.take(self.max))
            } else {
                None
            }
        };
        if let Some(batch) = start {
            tokio::spawn(self.clone().run(batch));
        }
        // every queued decision is answered: the runner's calls are bounded by the per-call
        // timeout, and a runner that is dropped (runtime shutdown) drops the senders
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "throttle batch ended without an answer".into(),
            ))
        })
    }

    /// Runs batches until the queue is empty.
    async fn run(self: Arc<Self>, mut batch: Vec<Pending>) {
        let mut slot = RunnerSlot(Some(&self));
        let mut decisions = Vec::new();
        loop {
            let res = self.eval(&batch, &mut decisions).await;
            match res {
                Ok(()) => {
                    for (p, d) in batch.drain(..).zip(decisions.drain(..)) {
                        let _ = p.reply.send(Ok(d));
                    }
                }
                Err(e) => {
                    decisions.clear();
                    for p in batch.drain(..) {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                }
            }
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.waiting.is_empty() {
                // in the same critical section as the check: a decision queued after it
                // sees the free slot and starts a runner
                q.in_flight -= 1;
                slot.0 = None;
                if q.spare.len() < MAX_IN_FLIGHT {
                    q.spare.push(batch);
                }
                return;
            }
            let next = q.take(self.max);
            if q.spare.len() < MAX_IN_FLIGHT {
                q.spare.push(batch);
            }
            batch = next;
        }
    }

    async fn eval(&self, batch: &[Pending], out: &mut Vec<RateDecision>) -> Result<(), StoreError> {
        let bytes = batch.iter().map(|p| p.key.len()).sum::<usize>() + 40 * batch.len();
        let mut cmd = evalsha_cmd(&self.script, batch.len(), 5 * batch.len(), bytes);
        for p in batch {
            cmd.arg(p.key.as_slice());
        }
        for p in batch {
            cmd.arg(p.args[0])
                .arg(p.args[1])
                .arg(p.args[2])
                .arg(p.args[3]);
        }
        let reply: Value = self.conn.eval_cmd(&self.script, &cmd).await?;
        parse_reply(&reply, batch.len(), out)
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
