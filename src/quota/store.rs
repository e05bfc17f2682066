//! Counter stores for quotas: in memory, and durable on one node (redb, write-behind).
//!
//! Both implement [`CounterStore`]: one decision per call under one shard lock, so
//! concurrent requests are admitted exactly (M concurrent calls against N remaining units
//! admit exactly N).
//!
//! The durable store keeps the same in-memory table as the authority for decisions and
//! writes the counters that changed to a [redb] file from a background thread every
//! `flush_interval` (one transaction, fsynced). A request never waits for a disk write. On a
//! crash (SIGKILL, power loss) the counts of at most the last `flush_interval` plus the
//! duration of one commit are lost: after a restart the counters are at most that much
//! behind, never ahead. A graceful shutdown (dropping the last handle, or
//! [`DurableCounterStore::flush`]) loses nothing.
//!
//! Why redb rather than an append-only file: redb commits are atomic and checksummed
//! (copy-on-write B-tree with two commit slots), so a torn write at crash time rolls back to
//! the previous commit by itself; the file holds one row per live counter, so it needs no
//! compaction and reloads in time proportional to the live counters, not to the history.
//! An append-only log would need its own torn-record detection, compaction and replay.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::clock::{SharedClock, system_clock};
use crate::fast_hash::Seeds;
use crate::store::{CounterDecision, CounterStore, StoreError};

const SHARDS: usize = 64;
const TABLE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("quota_counters");

#[derive(Debug, Clone, Copy)]
struct Slot {
    used: u64,
    expires: SystemTime,
    dirty: bool,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<[u8]>, Slot, Seeds>,
    dirty: Vec<Box<[u8]>>,
    next_sweep: usize,
}

#[derive(Debug)]
struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: Seeds,
    clock: SharedClock,
    max_keys_per_shard: usize,
    track_dirty: bool,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn new(clock: SharedClock, max_keys: usize, track_dirty: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Seeds::random(),
            clock,
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            track_dirty,
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    #[inline(always)]
    fn mark(track: bool, shard_dirty: &mut Vec<Box<[u8]>>, key: &[u8], slot: &mut Slot) {
        if track && !slot.dirty {
            slot.dirty = true;
            shard_dirty.push(key.into());
        }
    }

    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Result<CounterDecision, StoreError> {
        let now = self.clock.wall();
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        if let Some(slot) = shard.map.get_mut(key) {
            if slot.expires <= now {
                slot.used = 0;
            }
            let after = slot.used.saturating_add(cost);
            if after > limit {
                return Ok(CounterDecision::Exceeded { used: slot.used });
            }
            slot.used = after;
            slot.expires = slot.expires.max(window_end);
            Self::mark(self.track_dirty, &mut shard.dirty, key, slot);
            return Ok(CounterDecision::Counted { used: after });
        }
        if cost > limit {
            return Ok(CounterDecision::Exceeded { used: 0 });
        }
        if shard.map.len() >= shard.next_sweep.max(64).min(self.max_keys_per_shard) {
            shard.map.retain(|_, s| s.expires > now || s.dirty);
            shard.next_sweep = shard.map.len() * 2;
            if shard.map.len() >= self.max_keys_per_shard {
                return Err(StoreError::Unavailable("quota store is full".into()));
            }
        }
        let mut slot = Slot {
            used: cost,
            expires: window_end,
            dirty: false,
        };
        Self::mark(self.track_dirty, &mut shard.dirty, key, &mut slot);
        shard.map.insert(key.into(), slot);
        Ok(CounterDecision::Counted { used: cost })
    }

    fn refund(&self, key: &[u8], cost: u64) {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        if let Some(slot) = shard.map.get_mut(key) {
            slot.used = slot.used.saturating_sub(cost);
            Self::mark(self.track_dirty, &mut shard.dirty, key, slot);
        }
    }

    fn get(&self, key: &[u8]) -> u64 {
        let now = self.clock.wall();
        let guard = lock(self.shard(key));
        guard
            .map
            .get(key)
            .filter(|s| s.expires > now)
            .map_or(0, |s| s.used)
    }

    fn load(&self, key: &[u8], used: u64, expires: SystemTime) {
        let mut guard = lock(self.shard(key));
        guard.map.insert(
            key.into(),
            Slot {
                used,
                expires,
                dirty: false,
            },
        );
    }

    /// Takes the changed counters: `(key, used, expires)`.
    fn take_dirty(&self) -> Vec<(Box<[u8]>, u64, SystemTime)> {
        let mut out = Vec::new();
        for m in self.shards.iter() {
            let mut guard = lock(m);
            let shard = &mut *guard;
            for key in std::mem::take(&mut shard.dirty) {
                if let Some(slot) = shard.map.get_mut(&key) {
                    slot.dirty = false;
                    out.push((key, slot.used, slot.expires));
                }
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|m| lock(m).map.len()).sum()
    }
}

/// In-memory counters (the default). Exact under concurrency, bounded (expired counters are
/// swept as the table grows; past `max_keys` new counters are refused with a
/// [`StoreError`], which the layer handles with its failure mode). Clones share state.
#[derive(Debug, Clone)]
pub struct MemoryCounterStore {
    table: Arc<Table>,
}

impl Default for MemoryCounterStore {
    fn default() -> Self {
        Self::new(system_clock())
    }
}

impl MemoryCounterStore {
    /// Default bound on live counters.
    pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

    /// A store reading time (for expiry) from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self::with_max_keys(clock, Self::DEFAULT_MAX_KEYS)
    }

    /// A store holding at most about `max_keys` live counters.
    pub fn with_max_keys(clock: SharedClock, max_keys: usize) -> Self {
        Self {
            table: Arc::new(Table::new(clock, max_keys, false)),
        }
    }

    /// Number of counters held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CounterStore for MemoryCounterStore {
    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> impl Future<Output = Result<CounterDecision, StoreError>> + Send {
        std::future::ready(self.table.add_within(key, cost, limit, window_end))
    }
    fn refund(&self, key: &[u8], cost: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.table.refund(key, cost);
        std::future::ready(Ok(()))
    }
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(Ok(self.table.get(key)))
    }
    fn is_immediate(&self) -> bool {
        true
    }
    fn add_within_now(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Option<Result<CounterDecision, StoreError>> {
        Some(self.table.add_within(key, cost, limit, window_end))
    }
    fn refund_now(&self, key: &[u8], cost: u64) -> Option<Result<(), StoreError>> {
        self.table.refund(key, cost);
        Some(Ok(()))
    }
    fn get_now(&self, key: &[u8]) -> Option<Result<u64, StoreError>> {
        Some(Ok(self.table.get(key)))
    }
}

/// Options of the [`DurableCounterStore`].
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// How often changed counters are written and fsynced (default 250 ms). This bounds the
    /// loss on a crash: at most `flush_interval` plus one commit's duration of counts.
    pub flush_interval: Duration,
    /// Bound on live counters (default 1 000 000).
    pub max_keys: usize,
    /// The clock used for expiry.
    pub clock: SharedClock,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(250),
            max_keys: MemoryCounterStore::DEFAULT_MAX_KEYS,
            clock: system_clock(),
        }
    }
}

struct Flusher {
    stop: Mutex<bool>,
    wake: Condvar,
}

struct DurableInner {
    table: Arc<Table>,
    db: Arc<redb::Database>,
    flusher: Arc<Flusher>,
    thread: Mutex<Option<JoinHandle<()>>>,
    flush_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for DurableInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableCounterStore")
            .field("counters", &self.table.len())
            .finish_non_exhaustive()
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("durable quota store: {e}"))
}

fn write_batch(
    db: &redb::Database,
    batch: &[(Box<[u8]>, u64, SystemTime)],
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut t = txn.open_table(TABLE).map_err(unavailable)?;
        for (key, used, expires) in batch {
            t.insert(&**key, (*used, millis(*expires)))
                .map_err(unavailable)?;
        }
    }
    txn.commit().map_err(unavailable)
}

fn flush_table(table: &Table, db: &redb::Database, lock: &Mutex<()>) -> Result<usize, StoreError> {
    let _serial = lock.lock().unwrap_or_else(|p| p.into_inner());
    let batch = table.take_dirty();
    let n = batch.len();
    if let Err(e) = write_batch(db, &batch) {
        // put them back so the next flush retries
        for (key, _, _) in batch {
            let mut guard = lock_shard(table, &key);
            let shard = &mut *guard;
            if let Some(slot) = shard.map.get_mut(&key)
                && !slot.dirty
            {
                slot.dirty = true;
                shard.dirty.push(key);
            }
        }
        return Err(e);
    }
    Ok(n)
}

fn lock_shard<'a>(table: &'a Table, key: &[u8]) -> MutexGuard<'a, Shard> {
    lock(table.shard(key))
}

/// Durable single-node counters: decisions in memory, changes written behind to a redb file
/// by a background thread. See the [module docs](self) for the loss window. Clones share
/// state; the flusher stops (after a last flush) when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct DurableCounterStore {
    inner: Arc<DurableInner>,
}

impl DurableCounterStore {
    /// Opens (or creates) the store file at `path` and loads the live counters.
    pub fn open(path: impl AsRef<Path>, options: DurableOptions) -> Result<Self, StoreError> {
        let db = redb::Database::create(path.as_ref()).map_err(unavailable)?;
        let table = Arc::new(Table::new(options.clock.clone(), options.max_keys, true));
        let now = millis(options.clock.wall());
        // load live counters, drop expired ones
        let mut expired = Vec::new();
        {
            let txn = db.begin_read().map_err(unavailable)?;
            match txn.open_table(TABLE) {
                Ok(t) => {
                    for row in t.iter().map_err(unavailable)? {
                        let (k, v) = row.map_err(unavailable)?;
                        let (used, exp) = v.value();
                        if exp > now {
                            table.load(k.value(), used, UNIX_EPOCH + Duration::from_millis(exp));
                        } else {
                            expired.push(k.value().to_vec());
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut t = txn.open_table(TABLE).map_err(unavailable)?;
                for k in &expired {
                    t.remove(k.as_slice()).map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)?;
        }
        let db = Arc::new(db);
        let flusher = Arc::new(Flusher {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let flush_lock = Arc::new(Mutex::new(()));
        let thread = {
            let (table, db, flusher, flush_lock) = (
                table.clone(),
                db.clone(),
                flusher.clone(),
                flush_lock.clone(),
            );
            let interval = options.flush_interval.max(Duration::from_millis(1));
            std::thread::Builder::new()
                .name("quota-flusher".into())
                .spawn(move || {
                    loop {
                        let stop = {
                            let g = flusher.stop.lock().unwrap_or_else(|p| p.into_inner());
                            let (g, _) = flusher
                                .wake
                                .wait_timeout_while(g, interval, |s| !*s)
                                .unwrap_or_else(|p| p.into_inner());
                            *g
                        };
                        if let Err(e) = flush_table(&table, &db, &flush_lock) {
                            tracing::warn!(error = %e, "quota store flush failed; will retry");
                        }
                        if stop {
                            break;
                        }
                    }
                })
                .map_err(unavailable)?
        };
        Ok(Self {
            inner: Arc::new(DurableInner {
                table,
                db,
                flusher,
                thread: Mutex::new(Some(thread)),
                flush_lock,
            }),
        })
    }

    /// Writes all changed counters now and waits for the commit (blocking: call it at
    /// shutdown or from a blocking context, not on the request path). Returns how many
    /// counters were written.
    pub fn flush(&self) -> Result<usize, StoreError> {
        flush_table(&self.inner.table, &self.inner.db, &self.inner.flush_lock)
    }

    /// Number of counters held in memory.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for DurableInner {
    fn drop(&mut self) {
        *self.flusher.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.flusher.wake.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl CounterStore for DurableCounterStore {
    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> impl Future<Output = Result<CounterDecision, StoreError>> + Send {
        std::future::ready(self.inner.table.add_within(key, cost, limit, window_end))
    }
    fn refund(&self, key: &[u8], cost: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.table.refund(key, cost);
        std::future::ready(Ok(()))
    }
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(Ok(self.inner.table.get(key)))
    }
    fn is_immediate(&self) -> bool {
        true
    }
    fn add_within_now(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Option<Result<CounterDecision, StoreError>> {
        Some(self.inner.table.add_within(key, cost, limit, window_end))
    }
    fn refund_now(&self, key: &[u8], cost: u64) -> Option<Result<(), StoreError>> {
        self.inner.table.refund(key, cost);
        Some(Ok(()))
    }
    fn get_now(&self, key: &[u8]) -> Option<Result<u64, StoreError>> {
        Some(Ok(self.inner.table.get(key)))
    }
}

/// The stores the configuration can choose: in memory or durable (and Redis with feature
/// `redis`, when available). The [`QuotaLayer`](super::QuotaLayer) uses this type unless
/// given another [`CounterStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum QuotaStore {
    /// In memory.
    Memory(MemoryCounterStore),
    /// Durable, single node.
    Durable(DurableCounterStore),
    /// Redis, shared by a fleet (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisCounterStore),
}

impl Default for QuotaStore {
    fn default() -> Self {
        QuotaStore::Memory(MemoryCounterStore::default())
    }
}

impl From<MemoryCounterStore> for QuotaStore {
    fn from(s: MemoryCounterStore) -> Self {
        QuotaStore::Memory(s)
    }
}

impl From<DurableCounterStore> for QuotaStore {
    fn from(s: DurableCounterStore) -> Self {
        QuotaStore::Durable(s)
    }
}

#[cfg(feature = "redis")]
impl From<super::redis::RedisCounterStore> for QuotaStore {
    fn from(s: super::redis::RedisCounterStore) -> Self {
        QuotaStore::Redis(s)
    }
}

impl QuotaStore {
    fn table(&self) -> Option<&Table> {
        match self {
            QuotaStore::Memory(m) => Some(&m.table),
            QuotaStore::Durable(d) => Some(&d.inner.table),
            #[cfg(feature = "redis")]
            QuotaStore::Redis(_) => None,
        }
    }
}

/// The Redis store's future, or a ready result for the in-process stores.
macro_rules! dispatch {
    ($self:ident, $r:ident => $redis:expr, $t:ident => $local:expr) => {{
        #[cfg(feature = "redis")]
        {
            match $self {
                QuotaStore::Redis($r) => futures_util::future::Either::Left($redis),
                _ => {
                    let $t = $self.table().expect("in-process store");
                    futures_util::future::Either::Right(std::future::ready($local))
                }
            }
        }
        #[cfg(not(feature = "redis"))]
        {
            let $t = $self.table().expect("in-process store");
            std::future::ready($local)
        }
    }};
}

impl CounterStore for QuotaStore {
    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> impl Future<Output = Result<CounterDecision, StoreError>> + Send {
        dispatch!(self, r => r.add_within(key, cost, limit, window_end),
            t => t.add_within(key, cost, limit, window_end))
    }
    fn refund(&self, key: &[u8], cost: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        dispatch!(self, r => r.refund(key, cost), t => {
            t.refund(key, cost);
            Ok(())
        })
    }
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<u64, StoreError>> + Send {
        dispatch!(self, r => r.get(key), t => Ok(t.get(key)))
    }
    fn is_immediate(&self) -> bool {
        self.table().is_some()
    }
    fn add_within_now(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Option<Result<CounterDecision, StoreError>> {
        Some(self.table()?.add_within(key, cost, limit, window_end))
    }
    fn refund_now(&self, key: &[u8], cost: u64) -> Option<Result<(), StoreError>> {
        self.table()?.refund(key, cost);
        Some(Ok(()))
    }
    fn get_now(&self, key: &[u8]) -> Option<Result<u64, StoreError>> {
        Some(Ok(self.table()?.get(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn end(clock: &ManualClock, secs: u64) -> SystemTime {
        clock.wall() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn memory_counts_within_limit_and_expires() {
        let clock = ManualClock::at_unix(1_000);
        let s = MemoryCounterStore::new(Arc::new(clock.clone()));
        let e = end(&clock, 60);
        assert_eq!(
            s.add_within(b"k", 3, 5, e).await.unwrap(),
            CounterDecision::Counted { used: 3 }
        );
        assert_eq!(
            s.add_within(b"k", 3, 5, e).await.unwrap(),
            CounterDecision::Exceeded { used: 3 }
        );
        assert_eq!(
            s.add_within(b"k", 2, 5, e).await.unwrap(),
            CounterDecision::Counted { used: 5 }
        );
        s.refund(b"k", 4).await.unwrap();
        assert_eq!(s.get(b"k").await.unwrap(), 1);
        s.refund(b"k", 4).await.unwrap();
        assert_eq!(s.get(b"k").await.unwrap(), 0);
        assert_eq!(
            s.add_within(b"big", 6, 5, e).await.unwrap(),
            CounterDecision::Exceeded { used: 0 }
        );
        s.add_within(b"k", 5, 5, e).await.unwrap();
        clock.advance(Duration::from_secs(60));
        assert_eq!(s.get(b"k").await.unwrap(), 0);
        assert_eq!(
            s.add_within(b"k", 1, 5, end(&clock, 60)).await.unwrap(),
            CounterDecision::Counted { used: 1 }
        );
    }

    #[tokio::test]
    async fn memory_store_is_bounded_and_sweeps_expired_keys() {
        let clock = ManualClock::at_unix(1_000);
        let s = MemoryCounterStore::with_max_keys(Arc::new(clock.clone()), SHARDS * 100);
        for i in 0..(SHARDS * 100) as u32 {
            let _ = s.add_within(&i.to_be_bytes(), 1, 1, end(&clock, 10)).await;
        }
        clock.advance(Duration::from_secs(11));
        // the expired keys make room for new ones
        for i in 0..(SHARDS * 50) as u32 {
            let k = (i + 1_000_000).to_be_bytes();
            assert!(s.add_within(&k, 1, 1, end(&clock, 10)).await.is_ok());
        }
        assert!(s.len() <= SHARDS * 100);
        assert!(s.len() >= SHARDS * 50);
    }

    #[tokio::test]
    async fn durable_store_survives_reopen_and_drops_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let clock = ManualClock::at_unix(1_000);
        let opts = DurableOptions {
            flush_interval: Duration::from_secs(3600),
            clock: Arc::new(clock.clone()),
            ..Default::default()
        };
        {
            let s = DurableCounterStore::open(&path, opts.clone()).unwrap();
            s.add_within(b"live", 7, 10, end(&clock, 100))
                .await
                .unwrap();
            s.add_within(b"short", 2, 10, end(&clock, 5)).await.unwrap();
            assert_eq!(s.flush().unwrap(), 2);
            assert_eq!(s.flush().unwrap(), 0);
            s.refund(b"live", 1).await.unwrap();
            // dropped: the last flush happens on drop
        }
        clock.advance(Duration::from_secs(10));
        let s = DurableCounterStore::open(&path, opts).unwrap();
        assert_eq!(s.get(b"live").await.unwrap(), 6);
        assert_eq!(s.get(b"short").await.unwrap(), 0);
        assert_eq!(s.len(), 1);
    }
}
