//! The in-memory GCRA store: a sharded, open-addressed table of 64-bit key hashes to
//! theoretical arrival times (TAT), bounded without any user-run task.
//!
//! Why not governor's keyed store: it keeps the full key plus a `DashMap` entry per client
//! (well over 70 bytes for an IP, far more for composite keys), only drops idle keys when the
//! user calls `retain_recent`, has no cap, and cannot reserve a future slot (needed for exact
//! `Delay` pacing). The algorithm here is the same GCRA governor implements.
//!
//! Layout: each shard is a power-of-two array of 64-byte groups of four `(hash, tat)` slots,
//! probed linearly group by group. A decision on a tracked key reads one cache line of the
//! table (plus the shard's own line), where a general-purpose map reads a control line and a
//! bucket line. A slot is 16 bytes and the load stays between 7/16 and 7/8, so a tracked key
//! costs ≈ 18–37 bytes.
//!
//! Eviction: an entry whose TAT is not in the future carries no information (the key has its
//! full burst again), so removing or reusing it changes no decision. A new key takes over the
//! first such slot on its probe path; each shard also rebuilds itself without them when it
//! would grow and every ten seconds of traffic, and gives memory back when it becomes mostly
//! empty.
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
/// Slots per 64-byte group.
const WAYS: usize = 4;
/// Groups of a new (or nearly empty) shard table.
const MIN_GROUPS: usize = 1;
const SWEEP_EVERY: u64 = 10_000_000_000; // 10 s in ns
/// Minimum time between two rebuilds of a shard that is full of live entries.
const FULL_SWEEP_GAP: u64 = 100_000_000; // 100 ms in ns

/// Identity hasher for pre-hashed `u64` keys (rotated so the shard bits are not the bucket
/// bits nor the control tag bits). Used by the in-flight table.
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

/// One tracked key: its hash (0 = empty slot) and TAT.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    tat: u64,
}

/// Four slots on one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Group([Slot; WAYS]);

#[repr(align(64))]
struct Shard {
    inner: Mutex<Table>,
}

/// One shard's open-addressed table. Slots are never emptied one by one (only by a
/// rebuild), so the first empty slot on a probe path ends the search.
struct Table {
    groups: Vec<Group>,
    /// `groups.len() - 1` (a power of two minus one).
    mask: usize,
    /// Occupied slots (live or expired).
    len: usize,
    last_sweep: u64,
    /// Shared TAT of new keys while the shard is full of live entries.
    overflow: u64,
}

/// Where a key is, or where it would go.
enum Probe {
    Found(usize, usize),
    /// Not tracked; the first reusable (expired) slot on its path, else the empty slot
    /// that ends it.
    Vacant {
        at: (usize, usize),
        reuse: bool,
    },
}

impl Table {
    fn with_groups(groups: usize, now: u64) -> Self {
        Self {
            groups: vec![Group::default(); groups],
            mask: groups - 1,
            len: 0,
            last_sweep: now,
            overflow: 0,
        }
    }

    #[inline(always)]
    fn probe(&self, key: u64, now: u64) -> Probe {
        let mut i = (key as usize) & self.mask;
        let mut reuse = None;
        loop {
            let g = &self.groups[i].0;
            for (w, s) in g.iter().enumerate() {
                if s.key == key {
                    return Probe::Found(i, w);
                }
                if s.key == 0 {
                    return match reuse {
                        Some(at) => Probe::Vacant { at, reuse: true },
                        None => Probe::Vacant {
                            at: (i, w),
                            reuse: false,
                        },
                    };
                }
                if reuse.is_none() && s.tat <= now {
                    reuse = Some((i, w));
                }
            }
            // the load never exceeds 7/8, so an empty slot is always reached
            i = (i + 1) & self.mask;
        }
    }

    /// Places a key known to be absent (used by rebuilds).
    fn place(&mut self, key: u64, tat: u64) {
        let mut i = (key as usize) & self.mask;
        loop {
            for s in self.groups[i].0.iter_mut() {
                if s.key == 0 {
                    *s = Slot { key, tat };
                    self.len += 1;
                    return;
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    fn slots(&self) -> usize {
        self.groups.len() * WAYS
    }

    /// Whether one more occupied slot would exceed the 7/8 load.
    fn needs_room(&self) -> bool {
        (self.len + 1) * 8 > self.slots() * 7
    }

    /// Rebuilds the table without expired entries, sized for `live + extra` keys at a load
    /// of at most 1/2 (memory is given back when the table shrinks).
    fn rebuild(&mut self, now: u64, extra: usize) {
        self.last_sweep = now;
        let live = self
            .groups
            .iter()
            .flat_map(|g| g.0.iter())
            .filter(|s| s.key != 0 && s.tat > now)
            .count();
        let want = ((live + extra) * 2)
            .div_ceil(WAYS)
            .next_power_of_two()
            .max(MIN_GROUPS);
        if live == self.len && want <= self.groups.len() && want * 4 > self.groups.len() {
            return; // nothing expired, big enough, not oversized
        }
        let old = std::mem::replace(self, Self::with_groups(want, now));
        self.overflow = old.overflow;
        for s in old.groups.iter().flat_map(|g| g.0.iter()) {
            if s.key != 0 && s.tat > now {
                self.place(s.key, s.tat);
            }
        }
    }
}

/// In-memory GCRA rate state for one policy. See the [module docs](self).
pub struct MemoryRateStore {
    shards: Box<[Shard]>,
    shard_cap: usize,
    time: TimeSource,
}

/// Where the store reads time.
#[derive(Clone)]
pub(crate) enum TimeSource {
    /// A user-supplied [`Clock`] (e.g. a manual clock in tests).
    Clock(SharedClock),
    /// The CPU's invariant time-stamp counter through `quanta` (governor's default clock;
    /// falls back to the OS monotonic clock where the counter is unreliable).
    Quanta {
        clock: governor::clock::QuantaClock,
        origin: governor::clock::QuantaInstant,
    },
}

impl TimeSource {
    pub(crate) fn quanta() -> Self {
        use governor::clock::Clock as _;
        let clock = governor::clock::QuantaClock::default();
        let origin = clock.now();
        Self::Quanta { clock, origin }
    }
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
        /// Burst capacity left after this request, in ns (`remaining` = `slack / t`; the
        /// division is left to the callers that need it).
        slack: u64,
        reset_after: u64,
    },
    Limited {
        retry_after: u64,
        reset_after: u64,
    },
}

impl Verdict {
    pub(crate) fn into_decision(self, limit: &GcraNs) -> RateDecision {
        match self {
            Verdict::Allowed {
                wait,
                slack,
                reset_after,
            } => RateDecision::Allowed {
                wait: Duration::from_nanos(wait),
                remaining: slack / limit.t,
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
#[inline(always)]
fn gcra(tat: &mut u64, now: u64, t: u64, tau: u64, cost: u64, max_wait: u64) -> Verdict {
    let base = (*tat).max(now);
    let new_tat = base.saturating_add(t.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at <= now {
        *tat = new_tat;
        Verdict::Allowed {
            wait: 0,
            slack: now + tau - new_tat,
            reset_after: new_tat - now,
        }
    } else if allow_at - now <= max_wait {
        *tat = new_tat;
        Verdict::Allowed {
            wait: allow_at - now,
            slack: 0,
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
    /// A store tracking at most `max_keys` keys (at least 64), reading time from `clock`.
    pub fn new(max_keys: usize, clock: SharedClock) -> Self {
        Self::with_time(max_keys, TimeSource::Clock(clock))
    }

    pub(crate) fn with_time(max_keys: usize, time: TimeSource) -> Self {
        let shard_cap = (max_keys.max(SHARDS) / SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                inner: Mutex::new(Table::with_groups(MIN_GROUPS, 0)),
            })
            .collect();
        Self {
            shards,
            shard_cap,
            time,
        }
    }

    #[inline(always)]
    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Table> {
        match self.shards[i].inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Number of tracked keys (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables.
    pub fn memory_bytes(&self) -> usize {
        (0..SHARDS)
            .map(|i| self.lock(i).groups.capacity() * std::mem::size_of::<Group>())
            .sum::<usize>()
            + std::mem::size_of::<Shard>() * SHARDS
    }

    /// Removes every entry that carries no state (decisions are unchanged) and gives memory
    /// back.
    pub fn sweep(&self) {
        let now = self.now();
        for i in 0..SHARDS {
            self.lock(i).rebuild(now, 0);
        }
    }

    /// The store's time in nanoseconds, as [`decide_at`](Self::decide_at) expects it.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        // +1 so that time zero of a fresh manual clock is "after" an empty TAT of 0
        match &self.time {
            TimeSource::Quanta { clock, origin } => {
                use governor::clock::{Clock as _, Reference as _};
                clock.now().duration_since(*origin).as_u64() + 1
            }
            TimeSource::Clock(c) => nanos(c.monotonic()) + 1,
        }
    }

    /// One decision for a pre-hashed key at the store's current time.
    #[inline]
    pub(crate) fn decide(&self, hash: u64, limit: &GcraNs, cost: u32, max_wait: u64) -> Verdict {
        self.decide_at(self.now(), hash, limit, cost, max_wait)
    }

    /// One decision for a pre-hashed key; `now` comes from [`now`](Self::now).
    #[inline(always)]
    pub(crate) fn decide_at(
        &self,
        now: u64,
        hash: u64,
        limit: &GcraNs,
        cost: u32,
        max_wait: u64,
    ) -> Verdict {
        let key = hash | u64::from(hash == 0); // 0 marks an empty slot
        let mut t = self.lock((key >> 58) as usize);
        let cost = u64::from(cost);
        if now.saturating_sub(t.last_sweep) > SWEEP_EVERY {
            t.rebuild(now, 0);
        }
        let (at, reuse) = match t.probe(key, now) {
            Probe::Found(i, w) => {
                return gcra(
                    &mut t.groups[i].0[w].tat,
                    now,
                    limit.t,
                    limit.tau,
                    cost,
                    max_wait,
                );
            }
            Probe::Vacant { at, reuse } => (at, reuse),
        };
        // a new key: a fresh TAT, stored only when the decision changed it
        let mut tat = 0;
        let v = gcra(&mut tat, now, limit.t, limit.tau, cost, max_wait);
        if tat == 0 {
            return v;
        }
        let (i, w) = if reuse {
            at
        } else if t.len < self.shard_cap && !t.needs_room() {
            t.len += 1;
            at
        } else {
            match self.make_room(&mut t, key, now) {
                Some(at) => at,
                // full of live entries: never evict them; share the overflow bucket
                None => return gcra(&mut t.overflow, now, limit.t, limit.tau, cost, max_wait),
            }
        };
        t.groups[i].0[w] = Slot { key, tat };
        v
    }

    /// Grows or sweeps a shard for one more key; the slot to use (counted in `len`), or
    /// `None` when the shard is full of live entries.
    #[cold]
    fn make_room(&self, t: &mut Table, key: u64, now: u64) -> Option<(usize, usize)> {
        if t.len >= self.shard_cap && now.saturating_sub(t.last_sweep) < FULL_SWEEP_GAP {
            return None;
        }
        t.rebuild(now, 1);
        if t.len >= self.shard_cap {
            return None;
        }
        match t.probe(key, now) {
            Probe::Vacant { at, reuse: true } => Some(at),
            Probe::Vacant { at, reuse: false } => {
                t.len += 1;
                Some(at)
            }
            Probe::Found(..) => None, // unreachable: the key was absent
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
    static SEED: std::sync::OnceLock<crate::fast_hash::Seeds> = std::sync::OnceLock::new();
    SEED.get_or_init(crate::fast_hash::Seeds::random)
        .hash_one(key)
}

impl RateStore for MemoryRateStore {
    fn check(
        &self,
        key: &[u8],
        limit: Gcra,
        cost: u32,
        max_wait: Duration,
    ) -> impl Future<Output = Result<RateDecision, StoreError>> + Send {
        let limit = GcraNs::from(limit);
        let v = self.decide(hash_bytes(key), &limit, cost, nanos(max_wait));
        std::future::ready(Ok(v.into_decision(&limit)))
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
                matches!(s.decide(7, &l, 1, 0), Verdict::Allowed { slack, .. } if slack / l.t == r)
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
