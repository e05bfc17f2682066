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

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::clock::{SharedClock, system_clock};
use crate::fast_hash::Seeds;
use crate::store::{CounterDecision, CounterStore, StoreError};

const SHARDS: usize = 64;
const TABLE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("quota_counters");

/// One counter. `id` is unique within its shard: a response future refunds by
/// `(key hash, id)` without keeping or rebuilding the key.
#[derive(Debug)]
struct Entry {
    id: u64,
    key: Box<[u8]>,
    used: u64,
    /// Nanoseconds since the Unix epoch.
    expires: u64,
    dirty: bool,
}

/// The counters whose keys have one 64-bit hash: almost always one. The hash is keyed
/// (secret seeds), so colliding keys cannot be precomputed by callers.
#[derive(Debug)]
struct Bucket {
    first: Entry,
    more: Vec<Entry>,
}

impl Bucket {
    #[inline]
    fn find_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        if *self.first.key == *key {
            return Some(&mut self.first);
        }
        self.find_more(|e| *e.key == *key)
    }
    #[inline]
    fn find_id(&mut self, id: u64) -> Option<&mut Entry> {
        if self.first.id == id {
            return Some(&mut self.first);
        }
        self.find_more(|e| e.id == id)
    }
    #[cold]
    fn find_more(&mut self, f: impl Fn(&Entry) -> bool) -> Option<&mut Entry> {
        self.more.iter_mut().find(|e| f(e))
    }
}

/// Passes a precomputed (keyed) hash through: the table hashes each key once.
#[derive(Debug, Clone, Copy, Default)]
struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed; anything else is folded in (never used)
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: Map,
    /// `(key hash, id)` of the counters changed since the last flush (durable store).
    dirty: Vec<(u64, u64)>,
    len: usize,
    next_sweep: usize,
    next_id: u64,
}

type Map = HashMap<u64, Bucket, PreHashed>;

#[inline]
fn find_mut<'a>(map: &'a mut Map, hash: u64, key: &[u8]) -> Option<&'a mut Entry> {
    map.get_mut(&hash)?.find_mut(key)
}

#[inline]
fn find_id(map: &mut Map, hash: u64, id: u64) -> Option<&mut Entry> {
    map.get_mut(&hash)?.find_id(id)
}

impl Shard {
    /// Makes room for `n` new counters (sweeping expired ones when the shard has grown),
    /// or fails when the shard is full.
    fn room_for(&mut self, n: usize, max: usize, now: u64) -> Result<(), StoreError> {
        if self.len + n > self.next_sweep.max(64).min(max) {
            self.sweep(now);
            self.next_sweep = self.len * 2;
            if self.len + n > max {
                return Err(StoreError::Unavailable("quota store is full".into()));
            }
        }
        Ok(())
    }

    fn sweep(&mut self, now: u64) {
        let keep = |e: &Entry| e.expires > now || e.dirty;
        let mut len = 0;
        self.map.retain(|_, b| {
            b.more.retain(keep);
            if !keep(&b.first) {
                match b.more.pop() {
                    Some(e) => b.first = e,
                    None => return false,
                }
            }
            len += 1 + b.more.len();
            true
        });
        self.len = len;
    }

    /// Inserts a counter that is not in the shard; returns its id.
    fn insert(&mut self, hash: u64, key: &[u8], used: u64, expires: u64, dirty: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let e = Entry {
            id,
            key: key.into(),
            used,
            expires,
            dirty,
        };
        self.len += 1;
        match self.map.entry(hash) {
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().more.push(e),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Bucket {
                    first: e,
                    more: Vec::new(),
                });
            }
        }
        if dirty {
            self.dirty.push((hash, id));
        }
        id
    }

    #[inline(always)]
    fn mark(track: bool, dirty: &mut Vec<(u64, u64)>, hash: u64, e: &mut Entry) {
        if track && !e.dirty {
            e.dirty = true;
            dirty.push((hash, e.id));
        }
    }
}

/// One quota's part of a [`Table::charge`]: its counter key and limit (inputs), and what
/// the decision found (outputs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Charge {
    /// Where the key is in the caller's key buffer.
    pub(crate) at: (u32, u32),
    pub(crate) hash: u64,
    pub(crate) limit: u64,
    /// The end of the window, in nanoseconds since the Unix epoch.
    pub(crate) end_ns: u64,
    /// Units used after the decision (counted) or before it (refused).
    pub(crate) used: u64,
    pub(crate) exceeded: bool,
    /// The counter's id (valid when counted).
    pub(crate) id: u64,
}

#[derive(Debug)]
pub(crate) struct Table {
    /// This table's entry in [`TABLES`].
    id: u64,
    shards: Box<[Mutex<Shard>]>,
    hasher: Seeds,
    clock: SharedClock,
    max_keys_per_shard: usize,
    track_dirty: bool,
}

/// Nanoseconds since the Unix epoch, saturating (0 before it, `u64::MAX` after 2554).
#[inline]
pub(crate) fn ns(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// The live tables by id. An admitted response's future keeps the id of the table that
/// counted it, not a reference count: the request path then touches no shared counter (two
/// atomic operations fewer per request), and the rare refund (an upstream 5xx) finds the
/// table here. A table leaves when it is dropped; a refund for a dropped table has nothing
/// left to give back to.
static TABLES: Mutex<BTreeMap<u64, Weak<Table>>> = Mutex::new(BTreeMap::new());
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

fn tables() -> MutexGuard<'static, BTreeMap<u64, Weak<Table>>> {
    TABLES.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Table {
    fn drop(&mut self) {
        tables().remove(&self.id);
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Redis Cluster hash tag of a key (`…{<tag>}…`), or the whole key. All counters of one
/// caller share the tag, so they live in one shard and one lock decides all of them.
pub(crate) fn tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

impl Table {
    /// A new table, registered under a fresh id (see [`TABLES`]).
    fn shared(clock: SharedClock, max_keys: usize, track_dirty: bool) -> Arc<Self> {
        let id = NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed);
        let table = Arc::new(Self::new(id, clock, max_keys, track_dirty));
        tables().insert(id, Arc::downgrade(&table));
        table
    }

    /// The id to find this table again with [`by_id`](Self::by_id).
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The live table with this id.
    pub(crate) fn by_id(id: u64) -> Option<Arc<Table>> {
        // upgraded after the lock is released: a last reference dropped while holding it
        // would take it again in `Drop`
        let weak = tables().get(&id).cloned();
        weak.and_then(|w| w.upgrade())
    }

    fn new(id: u64, clock: SharedClock, max_keys: usize, track_dirty: bool) -> Self {
        Self {
            id,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Seeds::random(),
            clock,
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            track_dirty,
        }
    }

    /// The shard of a caller, from its hash tag (the escaped caller key).
    #[inline]
    pub(crate) fn shard_of_tag(&self, tag: &[u8]) -> usize {
        // one `write` (it mixes in the length itself), not `hash_one`'s length prefix too
        (self.hash_key(tag) >> 32) as usize % SHARDS
    }

    /// The keyed hash of a counter key.
    #[inline]
    pub(crate) fn hash_key(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        std::hash::Hasher::write(&mut h, key);
        std::hash::Hasher::finish(&h)
    }

    fn locate(&self, key: &[u8]) -> (usize, u64) {
        (self.shard_of_tag(tag(key)), self.hash_key(key))
    }

    /// Charges `cost` to every counter of `charges` (keys in `keys`, all with the hash tag
    /// of `shard`), all or nothing, under one lock: when one would exceed its limit, none is
    /// counted. Expired counters count from zero. Returns whether the units were counted.
    pub(crate) fn charge(
        &self,
        shard: usize,
        keys: &[u8],
        charges: &mut [Charge],
        cost: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let key = |c: &Charge| &keys[c.at.0 as usize..c.at.1 as usize];
        let mut guard = lock(&self.shards[shard]);
        let shard = &mut *guard;
        // one quota with a live counter (the common case): one lookup
        if let [c] = charges
            && let Some(e) = find_mut(&mut shard.map, c.hash, key(c))
            && e.expires > now
        {
            c.exceeded = e.used.saturating_add(cost) > c.limit;
            if c.exceeded {
                c.used = e.used;
                return Ok(false);
            }
            e.used += cost;
            e.expires = e.expires.max(c.end_ns);
            c.used = e.used;
            c.id = e.id;
            Shard::mark(self.track_dirty, &mut shard.dirty, c.hash, e);
            return Ok(true);
        }
        // two quotas with live counters under different hashes (the common two-quota
        // plan): one lookup each, both entries held at once
        if let [a, b] = charges
            && a.hash != b.hash
            && let Shard { map, dirty, .. } = shard
            && let [Some(ba), Some(bb)] = map.get_disjoint_mut([&a.hash, &b.hash])
            && let Some(ea) = ba.find_mut(key(a))
            && let Some(eb) = bb.find_mut(key(b))
            && ea.expires > now
            && eb.expires > now
        {
            a.exceeded = ea.used.saturating_add(cost) > a.limit;
            b.exceeded = eb.used.saturating_add(cost) > b.limit;
            if a.exceeded || b.exceeded {
                a.used = ea.used;
                b.used = eb.used;
                return Ok(false);
            }
            for (c, e) in [(a, ea), (b, eb)] {
                e.used += cost;
                e.expires = e.expires.max(c.end_ns);
                c.used = e.used;
                c.id = e.id;
                Shard::mark(self.track_dirty, dirty, c.hash, e);
            }
            return Ok(true);
        }
        let mut refused = false;
        let mut missing = 0;
        for i in 0..charges.len() {
            let c = &charges[i];
            let mut used = match find_mut(&mut shard.map, c.hash, key(c)) {
                Some(e) if e.expires > now => e.used,
                Some(_) => 0,
                None => {
                    missing += 1;
                    0
                }
            };
            // two quotas on one counter (same name and period): each sees the other's units
            for d in &charges[..i] {
                if d.hash == c.hash && key(d) == key(c) {
                    used = used.saturating_add(cost);
                }
            }
            let c = &mut charges[i];
            c.used = used;
            c.exceeded = used.saturating_add(cost) > c.limit;
            refused |= c.exceeded;
        }
        if refused {
            return Ok(false);
        }
        if missing > 0 {
            shard.room_for(missing, self.max_keys_per_shard, now)?;
        }
        for c in charges.iter_mut() {
            c.used = c.used.saturating_add(cost);
            let track = self.track_dirty;
            if let Some(e) = find_mut(&mut shard.map, c.hash, key(c)) {
                e.used = if e.expires > now { e.used } else { 0 }.saturating_add(cost);
                e.expires = if e.expires > now {
                    e.expires.max(c.end_ns)
                } else {
                    c.end_ns
                };
                c.id = e.id;
                Shard::mark(track, &mut shard.dirty, c.hash, e);
            } else {
                c.id = shard.insert(c.hash, key(c), c.used, c.end_ns, track);
            }
        }
        Ok(true)
    }

    /// Gives `cost` back to the counters `(hash, id)` of one shard (floored at zero).
    pub(crate) fn refund_ids(
        &self,
        shard: usize,
        ids: impl Iterator<Item = (u64, u64)>,
        cost: u64,
    ) {
        let mut guard = lock(&self.shards[shard]);
        let shard = &mut *guard;
        for (hash, id) in ids {
            if let Some(e) = find_id(&mut shard.map, hash, id) {
                e.used = e.used.saturating_sub(cost);
                Shard::mark(self.track_dirty, &mut shard.dirty, hash, e);
            }
        }
    }

    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> Result<CounterDecision, StoreError> {
        let now = ns(self.clock.wall());
        let (shard, hash) = self.locate(key);
        let mut charge = [Charge {
            at: (0, key.len() as u32),
            hash,
            limit,
            end_ns: ns(window_end),
            used: 0,
            exceeded: false,
            id: 0,
        }];
        let counted = self.charge(shard, key, &mut charge, cost, now)?;
        let used = charge[0].used;
        Ok(if counted {
            CounterDecision::Counted { used }
        } else {
            CounterDecision::Exceeded { used }
        })
    }

    fn refund(&self, key: &[u8], cost: u64) {
        let (shard, hash) = self.locate(key);
        let mut guard = lock(&self.shards[shard]);
        let shard = &mut *guard;
        if let Some(e) = find_mut(&mut shard.map, hash, key) {
            e.used = e.used.saturating_sub(cost);
            Shard::mark(self.track_dirty, &mut shard.dirty, hash, e);
        }
    }

    /// The live count of `key` at `now`.
    pub(crate) fn get_at(&self, key: &[u8], now: SystemTime) -> u64 {
        let now = ns(now);
        let (shard, hash) = self.locate(key);
        let mut guard = lock(&self.shards[shard]);
        find_mut(&mut guard.map, hash, key)
            .filter(|e| e.expires > now)
            .map_or(0, |e| e.used)
    }

    fn get(&self, key: &[u8]) -> u64 {
        self.get_at(key, self.clock.wall())
    }

    fn load(&self, key: &[u8], used: u64, expires: SystemTime) {
        let expires = ns(expires);
        let (shard, hash) = self.locate(key);
        let mut guard = lock(&self.shards[shard]);
        match find_mut(&mut guard.map, hash, key) {
            Some(e) => {
                e.used = used;
                e.expires = expires;
            }
            None => {
                guard.insert(hash, key, used, expires, false);
            }
        }
    }

    /// Takes the changed counters: `(key, used, expires)`.
    fn take_dirty(&self) -> Vec<(Box<[u8]>, u64, SystemTime)> {
        let mut out = Vec::new();
        for m in self.shards.iter() {
            let mut guard = lock(m);
            let shard = &mut *guard;
            for (hash, id) in std::mem::take(&mut shard.dirty) {
                if let Some(e) = find_id(&mut shard.map, hash, id) {
                    e.dirty = false;
                    out.push((
                        e.key.clone(),
                        e.used,
                        UNIX_EPOCH + Duration::from_nanos(e.expires),
                    ));
                }
            }
        }
        out
    }

    /// Marks `key` changed again (its write failed).
    fn mark_dirty(&self, key: &[u8]) {
        let (shard, hash) = self.locate(key);
        let mut guard = lock(&self.shards[shard]);
        let shard = &mut *guard;
        if let Some(e) = find_mut(&mut shard.map, hash, key) {
            Shard::mark(true, &mut shard.dirty, hash, e);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|m| lock(m).len).sum()
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
            table: Table::shared(clock, max_keys, false),
        }
    }

    /// Number of counters held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn table(&self) -> &Table {
        &self.table
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
            table.mark_dirty(&key);
        }
        return Err(e);
    }
    Ok(n)
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
        let table = Table::shared(options.clock.clone(), options.max_keys, true);
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

    pub(crate) fn table(&self) -> &Table {
        &self.inner.table
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
    pub(crate) fn table(&self) -> Option<&Table> {
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

    #[test]
    fn two_live_counters_are_charged_all_or_nothing_and_refunded_by_id() {
        let clock = ManualClock::at_unix(1_000);
        let s = MemoryCounterStore::new(Arc::new(clock.clone()));
        let t = s.table();
        let keys = b"q:{p%3Aa}:daily:d1q:{p%3Aa}:monthly:m1";
        let (daily, monthly) = (&keys[..17], &keys[17..]);
        let (shard, _) = t.locate(daily);
        assert_eq!(t.locate(monthly).0, shard, "one caller, one shard");
        let now = ns(clock.wall());
        let charge_at = |now: u64, limits: [u64; 2], ends: [u64; 2], cost: u64| {
            let mut c = [daily, monthly].map(|k| Charge {
                at: (0, 0),
                hash: t.locate(k).1,
                limit: 0,
                end_ns: 0,
                used: 0,
                exceeded: false,
                id: 0,
            });
            c[0].at = (0, 17);
            c[1].at = (17, keys.len() as u32);
            for (i, c) in c.iter_mut().enumerate() {
                c.limit = limits[i];
                c.end_ns = ends[i];
            }
            let counted = t.charge(shard, keys, &mut c, cost, now).unwrap();
            (counted, c)
        };
        let charge = |limits, ends, cost| charge_at(now, limits, ends, cost);
        let ends = [now + 60_000_000_000, now + 600_000_000_000];
        // the first charge inserts both counters; the next ones find both live
        let (counted, _) = charge([3, 10], ends, 1);
        assert!(counted);
        let (counted, c) = charge([3, 10], ends, 2);
        assert!(counted);
        assert_eq!((c[0].used, c[1].used), (3, 3));
        // the daily quota is full: neither is counted, both report their use before
        let (counted, c) = charge([3, 10], ends, 1);
        assert!(!counted);
        assert_eq!(
            (c[0].used, c[0].exceeded, c[1].used, c[1].exceeded),
            (3, true, 3, false)
        );
        assert_eq!(
            (
                t.get_at(daily, clock.wall()),
                t.get_at(monthly, clock.wall())
            ),
            (3, 3)
        );
        // the monthly one refuses the same way
        let (counted, c) = charge([10, 3], ends, 1);
        assert!(!counted);
        assert_eq!((c[0].exceeded, c[1].exceeded), (false, true));
        // counted: ids refund exactly these counters
        let (counted, c) = charge([10, 10], ends, 4);
        assert!(counted);
        assert_eq!((c[0].used, c[1].used), (7, 7));
        t.refund_ids(shard, c.iter().map(|c| (c.hash, c.id)), 4);
        assert_eq!(
            (
                t.get_at(daily, clock.wall()),
                t.get_at(monthly, clock.wall())
            ),
            (3, 3)
        );
        // past the daily window: its counter counts from zero again (the general path)
        let later = ends[0] + 1;
        let (counted, c) = charge_at(later, [10, 10], [later + 60_000_000_000, ends[1]], 1);
        assert!(counted);
        assert_eq!((c[0].used, c[1].used), (1, 4));
        // and both are live again for the two-counter path
        let (counted, c) = charge_at(later, [10, 10], [later + 60_000_000_000, ends[1]], 1);
        assert!(counted);
        assert_eq!((c[0].used, c[1].used), (2, 5));
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
