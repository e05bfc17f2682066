//! The in-memory GCRA store: a sharded table of 64-bit key hashes to theoretical arrival
//! times, bounded without any user-run task.
//!
//! Why not governor's keyed store: it keeps the full key plus a `DashMap` entry per client
//! (well over 70 bytes for an IP, far more for composite keys), only drops idle keys when the
//! user calls `retain_recent`, has no cap, and cannot reserve a future slot (needed for exact
//! `Delay` pacing). The algorithm here is the same GCRA governor implements.
//!
//! Memory: one entry is two `u64` (key hash, TAT) in a hashbrown table, 17 bytes per bucket,
//! ≈ 20–40 bytes per tracked key depending on the table's load.
//!
//! Eviction: an entry whose TAT is not in the future carries no information (the key has its
//! full burst again), so removing it changes no decision. Each shard sweeps such entries when
//! it grows past its next sweep mark or when a sweep is overdue, and gives memory back when
//! the table becomes mostly empty.
//!
//! Cap: when a shard is full of entries that all still carry state, **no entry is evicted**
//! (a client cannot reset its own limit by flooding new keys). New keys are then decided
//! against one shared overflow bucket per shard with the same limit: under such a flood,
//! new clients are limited together until entries expire (at most burst × interval later).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{Clock, SharedClock};
use crate::store::{Gcra, RateDecision, RateStore, StoreError};

const SHARDS: usize = 64;
const OVERFLOW: u64 = u64::MAX;
const MIN_SWEEP: usize = 512;
const SWEEP_EVERY: u64 = 10_000_000_000; // 10 s in ns

/// Identity hasher for pre-hashed `u64` keys (rotated so the shard bits are not the bucket
/// bits nor the control tag bits).
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.rotate_left(32);
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<PreHashed>>;

#[repr(align(64))]
struct Shard {
    inner: Mutex<ShardInner>,
}

struct ShardInner {
    map: Map<u64>,
    next_sweep: usize,
    last_sweep: u64,
}

impl ShardInner {
    fn sweep(&mut self, now: u64) {
        self.map.retain(|_, tat| *tat > now);
        self.last_sweep = now;
        self.next_sweep = (self.map.len() * 2).max(MIN_SWEEP);
        if self.map.capacity() > MIN_SWEEP && self.map.capacity() > self.map.len() * 4 {
            self.map.shrink_to(self.map.len() * 2);
        }
    }
}

/// In-memory GCRA rate state for one policy. See the [module docs](self).
pub struct MemoryRateStore {
    shards: Box<[Shard]>,
    shard_cap: usize,
    clock: SharedClock,
}

impl std::fmt::Debug for MemoryRateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRateStore")
            .field("tracked_keys", &self.len())
            .field("max_keys", &(self.shard_cap * SHARDS))
            .finish()
    }
}

/// A GCRA decision in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed {
        wait: u64,
        remaining: u64,
        reset_after: u64,
    },
    Limited {
        retry_after: u64,
        reset_after: u64,
    },
}

impl Verdict {
    pub(crate) fn into_decision(self) -> RateDecision {
        match self {
            Verdict::Allowed {
                wait,
                remaining,
                reset_after,
            } => RateDecision::Allowed {
                wait: Duration::from_nanos(wait),
                remaining,
                reset_after: Duration::from_nanos(reset_after),
            },
            Verdict::Limited {
                retry_after,
                reset_after,
            } => RateDecision::Limited {
                retry_after: Duration::from_nanos(retry_after),
                reset_after: Duration::from_nanos(reset_after),
            },
        }
    }
}

/// GCRA on one TAT. `t` = emission interval, `tau` = t × burst (all in ns).
#[inline]
fn gcra(tat: &mut u64, now: u64, t: u64, tau: u64, cost: u64, max_wait: u64) -> Verdict {
    let base = (*tat).max(now);
    let new_tat = base.saturating_add(t.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at <= now {
        *tat = new_tat;
        Verdict::Allowed {
            wait: 0,
            remaining: (now + tau - new_tat) / t,
            reset_after: new_tat - now,
        }
    } else if allow_at - now <= max_wait {
        *tat = new_tat;
        Verdict::Allowed {
            wait: allow_at - now,
            remaining: 0,
            reset_after: new_tat - now,
        }
    } else {
        Verdict::Limited {
            retry_after: allow_at - now,
            reset_after: base - now,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl MemoryRateStore {
    /// A store tracking at most `max_keys` keys (at least 128; one slot per shard is kept for
    /// the overflow bucket).
    pub fn new(max_keys: usize, clock: SharedClock) -> Self {
        let shard_cap = (max_keys.max(2 * SHARDS) / SHARDS) - 1;
        let shards = (0..SHARDS)
            .map(|_| Shard {
                inner: Mutex::new(ShardInner {
                    map: Map::default(),
                    next_sweep: MIN_SWEEP,
                    last_sweep: 0,
                }),
            })
            .collect();
        Self {
            shards,
            shard_cap,
            clock,
        }
    }

    /// Number of tracked keys (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.inner.lock().map(|g| g.map.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables (buckets and control bytes).
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.inner
                    .lock()
                    .map(|g| {
                        let buckets = if g.map.capacity() == 0 {
                            0
                        } else {
                            (g.map.capacity() * 8 / 7).next_power_of_two()
                        };
                        buckets * 17
                    })
                    .unwrap_or(0)
            })
            .sum::<usize>()
            + std::mem::size_of::<Shard>() * SHARDS
    }

    /// Removes every entry that carries no state (decisions are unchanged).
    pub fn sweep(&self) {
        let now = nanos(self.clock.monotonic()) + 1;
        for s in self.shards.iter() {
            if let Ok(mut g) = s.inner.lock() {
                g.sweep(now);
            }
        }
    }

    /// The store's time in nanoseconds, as [`decide_at`](Self::decide_at) expects it.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        // +1 so that time zero of a fresh manual clock is "after" an empty TAT of 0
        nanos(self.clock.monotonic()) + 1
    }

    /// One decision for a pre-hashed key at the clock's current time.
    #[inline]
    pub(crate) fn decide(&self, hash: u64, limit: &GcraNs, cost: u32, max_wait: u64) -> Verdict {
        self.decide_at(self.now(), hash, limit, cost, max_wait)
    }

    /// One decision for a pre-hashed key; `now` comes from [`now`](Self::now).
    #[inline]
    pub(crate) fn decide_at(
        &self,
        now: u64,
        hash: u64,
        limit: &GcraNs,
        cost: u32,
        max_wait: u64,
    ) -> Verdict {
        let hash = if hash == OVERFLOW { OVERFLOW - 1 } else { hash };
        let shard = &self.shards[(hash >> 58) as usize];
        let mut g = match shard.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let cost = u64::from(cost);
        if let Some(tat) = g.map.get_mut(&hash) {
            let v = gcra(tat, now, limit.t, limit.tau, cost, max_wait);
            if now.saturating_sub(g.last_sweep) > SWEEP_EVERY {
                g.sweep(now);
            }
            return v;
        }
        // a new key: a fresh TAT, stored only when the decision changed it
        let mut tat = 0;
        let v = gcra(&mut tat, now, limit.t, limit.tau, cost, max_wait);
        if g.map.len() >= g.next_sweep.min(self.shard_cap)
            || now.saturating_sub(g.last_sweep) > SWEEP_EVERY
        {
            g.sweep(now);
        }
        if g.map.len() < self.shard_cap {
            g.map.insert(hash, tat);
            v
        } else {
            // full of live entries: never evict them; share the overflow bucket
            let tat = g.map.entry(OVERFLOW).or_insert(0);
            gcra(tat, now, limit.t, limit.tau, cost, max_wait)
        }
    }
}

/// GCRA parameters in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcraNs {
    pub t: u64,
    pub tau: u64,
}

impl From<Gcra> for GcraNs {
    fn from(g: Gcra) -> Self {
        let t = nanos(g.emission_interval).max(1);
        Self {
            t,
            tau: t.saturating_mul(u64::from(g.burst.max(1))),
        }
    }
}

pub(crate) fn hash_bytes(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<super::fast::Seeds> = std::sync::OnceLock::new();
    SEED.get_or_init(super::fast::Seeds::random).hash_one(key)
}

impl RateStore for MemoryRateStore {
    fn check(
        &self,
        key: &[u8],
        limit: Gcra,
        cost: u32,
        max_wait: Duration,
    ) -> impl Future<Output = Result<RateDecision, StoreError>> + Send {
        let v = self.decide(hash_bytes(key), &limit.into(), cost, nanos(max_wait));
        std::future::ready(Ok(v.into_decision()))
    }
}

/// Per-key in-flight counters.
pub(crate) struct InFlightTable {
    shards: Box<[InFlightShard]>,
}

#[repr(align(64))]
struct InFlightShard(Mutex<Map<u32>>);

impl InFlightTable {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| InFlightShard(Mutex::new(Map::default())))
                .collect(),
        }
    }
    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Map<u32>> {
        match self.shards[(hash >> 58) as usize].0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    /// Takes a slot; `Err(in_flight)` when the key is at `max`.
    pub(crate) fn acquire(&self, hash: u64, max: u32) -> Result<u32, u32> {
        let mut g = self.shard(hash);
        let n = g.entry(hash).or_insert(0);
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(*n)
    }
    pub(crate) fn release(&self, hash: u64) {
        let mut g = self.shard(hash);
        if let Some(n) = g.get_mut(&hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&hash);
                let len = g.len();
                if g.capacity() > 64 && g.capacity() > len * 8 {
                    g.shrink_to(len * 2);
                }
            }
        }
    }
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().map(|g| g.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn lim(per_sec: u64, burst: u32) -> GcraNs {
        Gcra {
            emission_interval: Duration::from_nanos(1_000_000_000 / per_sec),
            burst,
        }
        .into()
    }

    #[test]
    fn burst_then_paced() {
        let clock = ManualClock::at_unix(0);
        let s = MemoryRateStore::new(1000, Arc::new(clock.clone()));
        let l = lim(10, 3);
        for r in [2, 1, 0] {
            assert!(
                matches!(s.decide(7, &l, 1, 0), Verdict::Allowed { remaining, .. } if remaining == r)
            );
        }
        assert!(matches!(
            s.decide(7, &l, 1, 0),
            Verdict::Limited {
                retry_after: 100_000_000,
                ..
            }
        ));
        clock.advance(Duration::from_millis(100));
        assert!(matches!(s.decide(7, &l, 1, 0), Verdict::Allowed { .. }));
        assert!(matches!(s.decide(7, &l, 1, 0), Verdict::Limited { .. }));
        // another key is independent
        assert!(matches!(s.decide(8, &l, 1, 0), Verdict::Allowed { .. }));
    }

    #[test]
    fn idle_keys_are_swept_and_memory_returned() {
        let clock = ManualClock::at_unix(0);
        let s = MemoryRateStore::new(1_000_000, Arc::new(clock.clone()));
        let l = lim(10, 1);
        for k in 0..100_000u64 {
            s.decide(hash_bytes(&k.to_le_bytes()), &l, 1, 0);
        }
        assert_eq!(s.len(), 100_000);
        let full = s.memory_bytes();
        clock.advance(Duration::from_secs(11));
        // traffic from other keys touches every shard; each sweeps its idle entries itself
        for k in 0..1000u64 {
            s.decide(hash_bytes(&(k + 1_000_000).to_le_bytes()), &l, 1, 0);
        }
        assert!(s.len() <= 1000, "{}", s.len());
        assert!(s.memory_bytes() < full / 10);
    }

    #[test]
    fn cap_never_evicts_live_keys() {
        let clock = ManualClock::at_unix(0);
        let s = MemoryRateStore::new(64 * 10, Arc::new(clock.clone()));
        let l = lim(1, 1);
        // the attacker's key is limited
        assert!(matches!(s.decide(42, &l, 1, 0), Verdict::Allowed { .. }));
        for k in 0..10_000u64 {
            s.decide(hash_bytes(&k.to_le_bytes()), &l, 1, 0);
        }
        assert!(s.len() <= 64 * 10);
        assert!(matches!(s.decide(42, &l, 1, 0), Verdict::Limited { .. }));
    }

    #[test]
    fn in_flight_counts_and_releases() {
        let t = InFlightTable::new();
        assert_eq!(t.acquire(5, 2), Ok(1));
        assert_eq!(t.acquire(5, 2), Ok(2));
        assert_eq!(t.acquire(5, 2), Err(2));
        t.release(5);
        assert_eq!(t.acquire(5, 2), Ok(2));
        t.release(5);
        t.release(5);
        assert_eq!(t.len(), 0);
    }
}
