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

use crate::error::ConfigError;
use crate::store::redis::{BatchJob, Batcher, RedisConn, ReplyFields};
use crate::store::{CounterDecision, CounterStore, StoreError};

/// The Lua scripts, kept together. All numbers fit in a double exactly below 2^53.
mod scripts {
    /// KEYS[1] counter; ARGV cost, limit, expire-at (Unix seconds).
    /// Returns one integer: the counter after counting, or `-1 - used` when refused (the
    /// counter is unchanged).
    pub const ADD_WITHIN: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if cur + cost > tonumber(ARGV[2]) then
  return -1 - cur
end
local v = redis.call('INCRBY', KEYS[1], cost)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return v
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

    /// Every quota of a request in one decision, all or nothing.
    ///
    /// ARGV[1] cost, ARGV[2] number of quotas n; then per quota: limit, expire-at (Unix
    /// seconds), number of earlier buckets p (0 for a calendar window). KEYS per quota: its
    /// counter, then its p earlier bucket counters, oldest first.
    ///
    /// When any quota's used units (earlier buckets + counter) plus the cost would exceed
    /// its limit, nothing is counted. Otherwise every counter is increased by the cost and
    /// expires at its window's end. Returns one string, `counted (1|0) used_1 oldest_1 ...`
    /// (decimal integers separated by single spaces): used after counting (or before, when
    /// refused) and, for a rolling window, how many buckets back the oldest non-empty
    /// earlier bucket is (0: none). A counter named twice sees its own earlier charge.
    pub const CHARGE: &str = r#"
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {1}
local keys = {}
local pend = {}
local k = 1
local a = 3
for i = 1, n do
  local key = KEYS[k]
  local limit = tonumber(ARGV[a])
  local nprev = tonumber(ARGV[a + 2])
  local prev = 0
  local oldest = 0
  for j = 1, nprev do
    local v = tonumber(redis.call('GET', KEYS[k + j]) or '0')
    if v > 0 then
      prev = prev + v
      if oldest == 0 then oldest = nprev - j + 1 end
    end
  end
  local used = prev + tonumber(redis.call('GET', key) or '0') + (pend[key] or 0)
  pend[key] = (pend[key] or 0) + cost
  keys[i] = key
  if used + cost > limit then out[1] = 0 end
  out[2 * i] = used
  out[2 * i + 1] = oldest
  k = k + 1 + nprev
  a = a + 3
end
if out[1] == 1 then
  a = 4
  for i = 1, n do
    redis.call('INCRBY', keys[i], cost)
    redis.call('EXPIREAT', keys[i], ARGV[a])
    out[2 * i] = out[2 * i] + cost
    a = a + 3
  end
end
if n == 1 then
  return string.format('%d %d %d', out[1], out[2], out[3])
end
for i = 1, #out do
  out[i] = string.format('%d', out[i])
end
return table.concat(out, ' ')
"#;

    /// [`CHARGE`] for a batch of requests, decided one after the other: per request, ARGV
    /// holds its cost, its number of quotas n and per quota limit, expire-at, p; KEYS its
    /// counters and earlier buckets as in [`CHARGE`]. A request sees the counts of the ones
    /// before it. Each counter is read once and written once per batch (`INCRBY` of the
    /// batch's units, `EXPIREAT` of its last charge). Returns one string: per request
    /// `counted used_1 oldest_1 ...`, joined by spaces.
    pub const CHARGE_BATCH: &str = r#"
local val = {}
local add = {}
local exp = {}
local order = {}
local function get(key)
  local v = val[key]
  if v == nil then
    v = tonumber(redis.call('GET', key) or '0')
    val[key] = v
  end
  return v
end
local out = {}
local used = {}
local oldest = {}
local pgen = {}
local pval = {}
local r = 0
local a = 1
local k = 1
while a <= #ARGV do
  r = r + 1
  local cost = tonumber(ARGV[a])
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local a0 = a
  local k0 = k
  local ok = 1
  for i = 1, n do
    local key = KEYS[k]
    local nprev = tonumber(ARGV[a + 2])
    local prev = 0
    local old = 0
    for j = 1, nprev do
      local v = get(KEYS[k + j])
      if v > 0 then
        prev = prev + v
        if old == 0 then old = nprev - j + 1 end
      end
    end
    local pend = 0
    if pgen[key] == r then pend = pval[key] end
    local u = prev + get(key) + pend
    pgen[key] = r
    pval[key] = pend + cost
    if u + cost > tonumber(ARGV[a]) then ok = 0 end
    used[i] = u
    oldest[i] = old
    k = k + 1 + nprev
    a = a + 3
  end
  out[#out + 1] = ok
  for i = 1, n do
    if ok == 1 then
      local key = KEYS[k0]
      val[key] = val[key] + cost
      if add[key] == nil then
        add[key] = 0
        order[#order + 1] = key
      end
      add[key] = add[key] + cost
      exp[key] = ARGV[a0 + 1]
      used[i] = used[i] + cost
    end
    out[#out + 1] = string.format('%d %d', used[i], oldest[i])
    k0 = k0 + 1 + tonumber(ARGV[a0 + 2])
    a0 = a0 + 3
  end
end
for j = 1, #order do
  local key = order[j]
  redis.call('INCRBY', key, add[key])
  redis.call('EXPIREAT', key, exp[key])
end
return table.concat(out, ' ')
"#;

    /// KEYS counters; ARGV cost. [`REFUND`] for each counter, in one call.
    pub const REFUND_ALL: &str = r#"
local cost = tonumber(ARGV[1])
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if cur > 0 then
    if cur - cost <= 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    else
      redis.call('DECRBY', KEYS[i], cost)
    end
  end
end
return 0
"#;
}

static ADD_WITHIN: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ADD_WITHIN));
static REFUND: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REFUND));
static GET: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::GET));
static CHARGE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CHARGE));
static REFUND_ALL: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REFUND_ALL));

/// One quota of a [`RedisCounterStore::charge`]: its counter key (as the layer names it),
/// its limit, its window's end and, for a rolling window, the earlier buckets' keys
/// (oldest first).
#[derive(Debug, Clone)]
pub struct ChargeSpec<'a> {
    /// The counter's key (the store's prefix is added).
    pub key: &'a [u8],
    /// Units per window.
    pub limit: u64,
    /// When the counter expires (the window's, or the bucket's, end).
    pub window_end: SystemTime,
    /// Keys of the earlier buckets still inside a rolling window, oldest first.
    pub earlier: Vec<Vec<u8>>,
}

/// What [`RedisCounterStore::charge`] found for one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// Units used after the decision (counted) or before it (refused).
    pub used: u64,
    /// For a rolling window: how many buckets back the oldest non-empty earlier bucket
    /// is (0: none).
    pub oldest_back: u32,
}

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
    batcher: Option<Arc<Batcher<ChargeJob>>>,
}

/// One request's charge in a batch: its keys, its arguments (cost, n, then limit, expire-at,
/// p per quota) and its number of quotas.
struct ChargeJob {
    keys: Vec<Vec<u8>>,
    args: Vec<u64>,
    quotas: usize,
}

impl BatchJob for ChargeJob {
    type Output = (bool, Vec<Charged>);
    fn size(&self) -> (usize, usize, usize) {
        let bytes = self.keys.iter().map(Vec::len).sum::<usize>() + 20 * self.args.len();
        (self.keys.len(), self.args.len(), bytes)
    }
    fn push_keys(&self, cmd: &mut redis::Cmd) {
        for k in &self.keys {
            cmd.arg(k.as_slice());
        }
    }
    fn push_args(&self, cmd: &mut redis::Cmd) {
        for a in &self.args {
            cmd.arg(*a);
        }
    }
    fn parse(&self, fields: &mut ReplyFields<'_>) -> Option<Self::Output> {
        parse_charge(fields, self.quotas)
    }
}

/// One request's charge reply, `counted used_1 oldest_1 ...` for `quotas` quotas.
fn parse_charge(fields: &mut ReplyFields<'_>, quotas: usize) -> Option<(bool, Vec<Charged>)> {
    let counted = match fields.next_u64()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let mut charged = Vec::with_capacity(quotas);
    for _ in 0..quotas {
        charged.push(Charged {
            used: fields.next_u64()?,
            oldest_back: u32::try_from(fields.next_u64()?).ok()?,
        });
    }
    Some((counted, charged))
}

/// The largest batch [`RedisCounterStore::batched`] accepts.
pub const MAX_BATCH: usize = 1024;

impl RedisCounterStore {
    /// A store on `conn` (its key prefix and per-call timeout apply).
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn: Arc::new(conn),
            batcher: None,
        }
    }

    /// A store whose [`charge`](Self::charge)s queued while a script is in flight are sent
    /// together, up to `max_batch` (1 ..= [`MAX_BATCH`]) per script ([`charge_batch_script`](
    /// Self::charge_batch_script)), with up to two scripts in flight. The requests are decided
    /// one after the other as with one script each, but one script then touches the keys of
    /// many callers: for a single Redis only, not Redis Cluster (`CROSSSLOT`). A charge waits
    /// at most two per-call timeouts. Must be used inside a Tokio runtime.
    pub fn batched(conn: RedisConn, max_batch: usize) -> Result<Self, ConfigError> {
        if max_batch == 0 || max_batch > MAX_BATCH {
            return Err(ConfigError::invalid(
                "quota.store.batch",
                format!("must be between 1 and {MAX_BATCH}, got {max_batch}"),
            ));
        }
        let batcher = Batcher::new(conn.clone(), scripts::CHARGE_BATCH, max_batch, "quota");
        Ok(Self {
            conn: Arc::new(conn),
            batcher: Some(Arc::new(batcher)),
        })
    }

    /// The largest batch of charges, or `None` for one script per charge.
    pub fn max_batch(&self) -> Option<usize> {
        self.batcher.as_ref().map(|b| b.max())
    }

    /// The batched charge script's source, e.g. for `SCRIPT LOAD` in `redis-benchmark`.
    pub fn charge_batch_script() -> &'static str {
        scripts::CHARGE_BATCH
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

    /// The all-or-nothing charge script's source (what the layer runs per decision), e.g.
    /// for `SCRIPT LOAD` in `redis-benchmark`. For one calendar quota its arguments are
    /// `1 <key> <cost> 1 <limit> <expire-at> 0`.
    pub fn charge_script() -> &'static str {
        scripts::CHARGE
    }

    /// Charges `cost` to every quota of `specs` in one atomic script, all or nothing: when
    /// one would exceed its limit, none is counted. Returns whether the units were counted
    /// and, per quota, what the script found. All keys must share one hash tag (the
    /// layer's keys carry the caller's) for Redis Cluster.
    pub async fn charge(
        &self,
        specs: &[ChargeSpec<'_>],
        cost: u64,
    ) -> Result<(bool, Vec<Charged>), StoreError> {
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(specs.len());
        let mut args: Vec<u64> = Vec::with_capacity(2 + 3 * specs.len());
        args.push(cost);
        args.push(specs.len() as u64);
        for s in specs {
            keys.push(self.redis_key(s.key));
            keys.extend(s.earlier.iter().map(|k| self.redis_key(k)));
            args.extend([s.limit, expire_at(s.window_end), s.earlier.len() as u64]);
        }
        if let Some(b) = &self.batcher {
            return b
                .submit(ChargeJob {
                    keys,
                    args,
                    quotas: specs.len(),
                })
                .await;
        }
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let arg_refs: Vec<&dyn crate::store::redis::ToRedisArgsDyn> = args
            .iter()
            .map(|a| a as &dyn crate::store::redis::ToRedisArgsDyn)
            .collect();
        let reply: redis::Value = self.conn.eval(&CHARGE, &key_refs, &arg_refs).await?;
        let bad = || StoreError::Protocol("unexpected quota script reply".into());
        let mut fields = ReplyFields::of(&reply).ok_or_else(bad)?;
        let out = parse_charge(&mut fields, specs.len()).ok_or_else(bad)?;
        if !fields.is_done() {
            return Err(bad());
        }
        Ok(out)
    }

    /// Gives `cost` back to each counter of `keys` (floored at 0, keeping the expiry) in
    /// one call.
    pub async fn refund_all(&self, keys: &[&[u8]], cost: u64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.redis_key(k)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let _: i64 = self.conn.eval(&REFUND_ALL, &refs, &[&cost]).await?;
        Ok(())
    }
}

fn expire_at(end: SystemTime) -> u64 {
    let d = end.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The decision of an [`scripts::ADD_WITHIN`] reply: `used` when counted, `-1 - used` when
/// refused.
fn add_within_decision(v: i64) -> CounterDecision {
    if v >= 0 {
        CounterDecision::Counted { used: v as u64 }
    } else {
        CounterDecision::Exceeded {
            used: (-1 - v) as u64,
        }
    }
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
            let v: i64 = conn
                .eval(
                    &ADD_WITHIN,
                    &[&key],
                    &[&cost, &limit, &expire_at(window_end)],
                )
                .await?;
            Ok(add_within_decision(v))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn charge_of(s: &str, quotas: usize) -> Option<(bool, Vec<Charged>)> {
        let v = redis::Value::BulkString(s.as_bytes().to_vec());
        let mut f = ReplyFields::of(&v)?;
        let out = parse_charge(&mut f, quotas)?;
        f.is_done().then_some(out)
    }

    #[test]
    fn charge_replies_parse_exactly() {
        let c = |used, oldest_back| Charged { used, oldest_back };
        assert_eq!(charge_of("1 5 0", 1), Some((true, vec![c(5, 0)])));
        assert_eq!(
            charge_of("0 8 2 40 0", 2),
            Some((false, vec![c(8, 2), c(40, 0)]))
        );
        for bad in [
            "",
            "1 5",
            "1 5 0 ",
            "2 5 0",
            "1 -5 0",
            "1 5 0 7",
            "1 5 4294967296",
            "1 5e3 0",
        ] {
            assert_eq!(charge_of(bad, 1), None, "{bad:?}");
        }
        assert!(ReplyFields::of(&redis::Value::Array(vec![redis::Value::Int(1)])).is_none());
    }

    #[test]
    fn add_within_replies_map_to_decisions() {
        assert_eq!(add_within_decision(0), CounterDecision::Counted { used: 0 });
        assert_eq!(
            add_within_decision(41),
            CounterDecision::Counted { used: 41 }
        );
        assert_eq!(
            add_within_decision(-1),
            CounterDecision::Exceeded { used: 0 }
        );
        assert_eq!(
            add_within_decision(-81),
            CounterDecision::Exceeded { used: 80 }
        );
        assert_eq!(
            add_within_decision(i64::MIN),
            CounterDecision::Exceeded {
                used: i64::MAX as u64
            }
        );
    }
}
