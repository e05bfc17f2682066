//! Brute-force and credential-stuffing lockout (rack-attack's Allow2Ban / Fail2Ban model).
//!
//! Authentication failures are counted per client address (IPv6 keyed by prefix) and per
//! credential or account within a window. When a key reaches the threshold it is banned;
//! each further offence (while earlier ones are remembered) doubles the ban, up to a
//! maximum. Banned callers are refused with 429 (or 403) and `Retry-After` before any
//! credential is checked.
//!
//! The state lives behind the [`LockoutStore`] trait:
//! - [`MemoryLockoutStore`] (the default): this instance's memory, sharded, bounded (idle
//!   entries are evicted), read through the layer's [`Clock`](crate::clock::Clock), so
//!   bans and their expiry are testable without sleeping.
//! - `RedisLockoutStore` (feature `redis`): one atomic Lua script per decision on the shared
//!   [`RedisConn`](crate::store::redis::RedisConn), so a fleet of instances shares counters
//!   and bans. Times come from the Redis server's clock, so instances with skewed clocks
//!   agree. When Redis fails, the [`FailureMode`] decides: `reject` refuses requests (503,
//!   fail closed), `allow` lets them through without lockout (fail open), `local_fallback`
//!   counts and bans in this instance's memory until Redis is back.
//!
//! [`Lockout`] is what the layer holds: the policy, the store and the failure mode.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use tower_shield::auth::{LockoutPolicy, MemoryLockoutStore};
//! use tower_shield::clock::ManualClock;
//!
//! let clock = ManualClock::new();
//! let policy = LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(300));
//! let store = MemoryLockoutStore::new(Arc::new(clock.clone()));
//! for _ in 0..2 { assert!(store.fail_now("ip:192.0.2.1", &policy).is_none()); }
//! assert_eq!(store.fail_now("ip:192.0.2.1", &policy), Some(Duration::from_secs(300)));
//! assert!(store.banned_now("ip:192.0.2.1").is_some());
//! clock.advance(Duration::from_secs(300));
//! assert!(store.banned_now("ip:192.0.2.1").is_none());
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use crate::clock::SharedClock;
use crate::store::{FailureMode, StoreError};

const SHARDS: usize = 16;

/// Thresholds and ban lengths.
#[derive(Debug, Clone)]
pub struct LockoutPolicy {
    /// Failures within `window` that trigger a ban.
    pub threshold: u32,
    /// Counting window.
    pub window: Duration,
    /// First ban length; doubled on each repeat offence.
    pub ban: Duration,
    /// Longest ban.
    pub max_ban: Duration,
    /// Offences are forgotten after this long without one.
    pub forget_after: Duration,
    /// Status of the refusal: 429 (default) or 403.
    pub status: StatusCode,
    /// Also count failures per credential (API key id, token subject). Off by default:
    /// anyone could then lock a victim's key.
    pub per_credential: bool,
    /// IPv6 prefix length used as the client key.
    pub ipv6_prefix: u8,
    /// Maximum number of keys tracked in memory (the in-memory store and the local
    /// fallback).
    pub max_entries: usize,
}

impl LockoutPolicy {
    /// `threshold` failures within `window` ban for `ban` (doubling up to 24 h).
    pub fn new(threshold: u32, window: Duration, ban: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            window,
            ban,
            max_ban: Duration::from_secs(24 * 3600).max(ban),
            forget_after: Duration::from_secs(24 * 3600),
            status: StatusCode::TOO_MANY_REQUESTS,
            per_credential: false,
            ipv6_prefix: 64,
            max_entries: 100_000,
        }
    }

    /// The ban for the `offences`-th offence: `ban` doubled per repeat, capped at `max_ban`.
    pub fn ban_for(&self, offences: u32) -> Duration {
        let factor = 1u32 << offences.saturating_sub(1).min(20);
        self.ban.saturating_mul(factor).min(self.max_ban)
    }
}

/// Lockout state: failure counters and bans. One decision per call, atomic per key.
///
/// Keys are short strings such as `ip:192.0.2.1`, `key:<key id>` or `user:<name>`.
pub trait LockoutStore: Send + Sync + 'static {
    /// The remaining ban of `key`, if banned.
    fn banned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Counts a failure for `key` under `policy`; returns the ban length when this failure
    /// caused a ban. Failures while banned neither count nor extend the ban.
    fn fail(
        &self,
        key: &str,
        policy: &LockoutPolicy,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Forgets the failures of `key` in the current window (bans and offences stay).
    fn succeed(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    count: u32,
    window_start: u64,
    banned_until: u64,
    offences: u32,
    last_offence: u64,
}

/// Lockout state in this instance's memory. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryLockoutStore {
    clock: SharedClock,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl MemoryLockoutStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.monotonic().as_millis() as u64
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The remaining ban of `key`, if banned.
    pub fn banned_now(&self, key: &str) -> Option<Duration> {
        let now = self.now();
        let shard = self.shard(key).lock().ok()?;
        let e = shard.get(key)?;
        (e.banned_until > now).then(|| Duration::from_millis(e.banned_until - now))
    }

    /// Counts a failure for `key`; returns the ban length when this failure caused a ban.
    pub fn fail_now(&self, key: &str, p: &LockoutPolicy) -> Option<Duration> {
        let now = self.now();
        let mut shard = self.shard(key).lock().ok()?;
        let cap = (p.max_entries / SHARDS).max(1);
        if shard.len() >= cap && !shard.contains_key(key) {
            let window = p.window.as_millis() as u64;
            let forget = p.forget_after.as_millis() as u64;
            shard.retain(|_, e| {
                e.banned_until > now
                    || now.saturating_sub(e.window_start) < window
                    || (e.offences > 0 && now.saturating_sub(e.last_offence) < forget)
            });
            if shard.len() >= cap {
                tracing::warn!("auth lockout: too many tracked keys; a failure was not counted");
                return None;
            }
        }
        let e = shard.entry(key.to_owned()).or_default();
        if e.banned_until > now {
            return None;
        }
        if e.offences > 0 && now.saturating_sub(e.last_offence) >= p.forget_after.as_millis() as u64
        {
            e.offences = 0;
        }
        if e.count == 0 || now.saturating_sub(e.window_start) >= p.window.as_millis() as u64 {
            e.count = 0;
            e.window_start = now;
        }
        e.count += 1;
        if e.count < p.threshold {
            return None;
        }
        e.count = 0;
        e.offences = e.offences.saturating_add(1);
        e.last_offence = now;
        let ban = p.ban_for(e.offences);
        e.banned_until = now + ban.as_millis() as u64;
        Some(ban)
    }

    /// Forgets the failures of `key` in the current window. Bans stay.
    pub fn succeed_now(&self, key: &str) {
        if let Ok(mut shard) = self.shard(key).lock()
            && let Some(e) = shard.get_mut(key)
        {
            e.count = 0;
        }
    }
}

impl LockoutStore for MemoryLockoutStore {
    fn banned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        std::future::ready(Ok(self.banned_now(key)))
    }
    fn fail(
        &self,
        key: &str,
        policy: &LockoutPolicy,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        std::future::ready(Ok(self.fail_now(key, policy)))
    }
    fn succeed(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.succeed_now(key);
        std::future::ready(Ok(()))
    }
}

#[derive(Debug)]
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis(super::lockout_redis::RedisLockoutStore),
}

/// The lockout a layer holds: policy, store and failure mode. See the [module docs](self).
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    backend: Backend,
    failure_mode: FailureMode,
    /// The memory store, or the local fallback of a remote store.
    local: MemoryLockoutStore,
}

/// The lockout store could not answer and the failure mode is `reject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unavailable;

impl Lockout {
    /// A lockout kept in this instance's memory.
    pub fn new(policy: LockoutPolicy, clock: SharedClock) -> Self {
        Self {
            policy,
            backend: Backend::Memory,
            failure_mode: FailureMode::Reject,
            local: MemoryLockoutStore::new(clock),
        }
    }

    /// A lockout shared through Redis; `failure_mode` applies when Redis fails (`clock` is
    /// the local fallback's).
    #[cfg(feature = "redis")]
    pub fn redis(
        policy: LockoutPolicy,
        store: super::lockout_redis::RedisLockoutStore,
        failure_mode: FailureMode,
        clock: SharedClock,
    ) -> Self {
        Self {
            policy,
            backend: Backend::Redis(store),
            failure_mode,
            local: MemoryLockoutStore::new(clock),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    /// What happens when the shared store fails.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// Whether state is shared with other instances (decisions need a round trip).
    pub fn is_shared(&self) -> bool {
        !matches!(self.backend, Backend::Memory)
    }

    /// The in-memory store, when the state is kept in this instance (no round trip).
    pub(crate) fn memory(&self) -> Option<&MemoryLockoutStore> {
        matches!(self.backend, Backend::Memory).then_some(&self.local)
    }

    #[cfg(feature = "redis")]
    fn store_failed(&self, what: &str, e: &StoreError) {
        tracing::warn!(error = %e, mode = ?self.failure_mode, "auth lockout: store failed ({what})");
    }

    /// The remaining ban of `key`, if banned. `Err` only when the store failed and the
    /// failure mode is `reject`.
    pub(crate) async fn check(&self, key: &str) -> Result<Option<Duration>, Unavailable> {
        match &self.backend {
            Backend::Memory => Ok(self.local.banned_now(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => match r.banned(key).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    self.store_failed("ban check", &e);
                    match self.failure_mode {
                        FailureMode::Reject => Err(Unavailable),
                        FailureMode::Allow => Ok(None),
                        FailureMode::LocalFallback => Ok(self.local.banned_now(key)),
                    }
                }
            },
        }
    }

    /// The remaining ban of `key` (the store's answer, failure mode not applied).
    pub async fn banned(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        match &self.backend {
            Backend::Memory => Ok(self.local.banned_now(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.banned(key).await,
        }
    }

    /// Counts a failure for `key`; returns the ban length when it caused a ban. When the
    /// store fails, `local_fallback` counts in memory; other modes drop the failure.
    pub async fn fail(&self, key: &str) -> Option<Duration> {
        match &self.backend {
            Backend::Memory => self.local.fail_now(key, &self.policy),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => match r.fail(key, &self.policy).await {
                Ok(v) => v,
                Err(e) => {
                    self.store_failed("failure count", &e);
                    match self.failure_mode {
                        FailureMode::LocalFallback => self.local.fail_now(key, &self.policy),
                        _ => None,
                    }
                }
            },
        }
    }

    /// Forgets the failures of `key` in the current window. Bans stay.
    pub async fn succeed(&self, key: &str) {
        match &self.backend {
            Backend::Memory => self.local.succeed_now(key),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                if let Err(e) = r.succeed(key).await {
                    self.store_failed("reset", &e);
                }
                self.local.succeed_now(key);
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    #[test]
    fn bans_grow_on_repeat_offences_and_are_forgotten() {
        let clock = ManualClock::new();
        let mut p = LockoutPolicy::new(2, Duration::from_secs(60), Duration::from_secs(10));
        p.max_ban = Duration::from_secs(35);
        p.forget_after = Duration::from_secs(1000);
        let l = MemoryLockoutStore::new(Arc::new(clock.clone()));
        let k = "ip:1";
        let mut bans = vec![];
        for _ in 0..4 {
            assert!(l.fail_now(k, &p).is_none());
            let ban = l.fail_now(k, &p).unwrap();
            bans.push(ban.as_secs());
            assert_eq!(
                l.fail_now(k, &p),
                None,
                "failures while banned do not extend"
            );
            clock.advance(ban);
            assert!(l.banned_now(k).is_none());
        }
        assert_eq!(bans, [10, 20, 35, 35]);
        clock.advance(Duration::from_secs(1000));
        l.fail_now(k, &p);
        assert_eq!(l.fail_now(k, &p).unwrap().as_secs(), 10);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let clock = ManualClock::new();
        let p = LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(10));
        let l = MemoryLockoutStore::new(Arc::new(clock.clone()));
        for _ in 0..10 {
            assert!(l.fail_now("k", &p).is_none());
            assert!(l.fail_now("k", &p).is_none());
            clock.advance(Duration::from_secs(61));
        }
        l.fail_now("k", &p);
        l.fail_now("k", &p);
        l.succeed_now("k");
        assert!(l.fail_now("k", &p).is_none());
    }

    #[tokio::test]
    async fn the_facade_uses_the_memory_store() {
        let clock = ManualClock::new();
        let l = Lockout::new(
            LockoutPolicy::new(2, Duration::from_secs(60), Duration::from_secs(10)),
            Arc::new(clock.clone()),
        );
        assert!(!l.is_shared());
        assert_eq!(l.fail("k").await, None);
        assert_eq!(l.fail("k").await, Some(Duration::from_secs(10)));
        assert_eq!(l.check("k").await, Ok(Some(Duration::from_secs(10))));
        assert_eq!(l.banned("other").await, Ok(None));
    }
}
