//! Brute-force and credential-stuffing lockout (rack-attack's Allow2Ban / Fail2Ban model).
//!
//! Authentication failures are counted per client address (IPv6 keyed by prefix) and per
//! credential or account within a window. When a key reaches the threshold it is banned;
//! each further offence (while earlier ones are remembered) doubles the ban, up to a
//! maximum. Banned callers are refused with 429 (or 403) and `Retry-After` before any
//! credential is checked.
//!
//! State is in memory, sharded, bounded (idle entries are evicted), and read through the
//! layer's [`Clock`](crate::clock::Clock), so bans and their expiry are testable without
//! sleeping.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use tower_shield::auth::{Lockout, LockoutPolicy};
//! use tower_shield::clock::ManualClock;
//!
//! let clock = ManualClock::new();
//! let lockout = Lockout::new(
//!     LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(300)),
//!     Arc::new(clock.clone()),
//! );
//! for _ in 0..2 { assert!(lockout.fail("ip:192.0.2.1").is_none()); }
//! assert_eq!(lockout.fail("ip:192.0.2.1"), Some(Duration::from_secs(300)));
//! assert!(lockout.banned("ip:192.0.2.1").is_some());
//! clock.advance(Duration::from_secs(300));
//! assert!(lockout.banned("ip:192.0.2.1").is_none());
//! ```

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use crate::clock::SharedClock;

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
    /// Also count failures per credential (API key id, token subject) and per login
    /// username. Off by default for credentials: anyone could then lock a victim's key.
    pub per_credential: bool,
    /// IPv6 prefix length used as the client key.
    pub ipv6_prefix: u8,
    /// Maximum number of tracked keys.
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
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    count: u32,
    window_start: u64,
    banned_until: u64,
    offences: u32,
    last_offence: u64,
}

/// Failure counters and bans. See the [module docs](self).
#[derive(Debug)]
pub struct Lockout {
    policy: LockoutPolicy,
    clock: SharedClock,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Lockout {
    /// A lockout tracker.
    pub fn new(policy: LockoutPolicy, clock: SharedClock) -> Self {
        Self {
            policy,
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.policy
    }

    fn now(&self) -> u64 {
        self.clock.monotonic().as_millis() as u64
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The remaining ban of `key`, if banned.
    pub fn banned(&self, key: &str) -> Option<Duration> {
        let now = self.now();
        let shard = self.shard(key).lock().ok()?;
        let e = shard.get(key)?;
        (e.banned_until > now).then(|| Duration::from_millis(e.banned_until - now))
    }

    /// Counts a failure for `key`; returns the ban length when this failure caused a ban.
    pub fn fail(&self, key: &str) -> Option<Duration> {
        let now = self.now();
        let p = &self.policy;
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
        let factor = 1u32 << (e.offences - 1).min(20);
        let ban = p.ban.saturating_mul(factor).min(p.max_ban);
        e.banned_until = now + ban.as_millis() as u64;
        Some(ban)
    }

    /// Forgets the failures of `key` (e.g. after a successful login). Bans stay.
    pub fn succeed(&self, key: &str) {
        if let Ok(mut shard) = self.shard(key).lock()
            && let Some(e) = shard.get_mut(key)
        {
            e.count = 0;
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
        let l = Lockout::new(p, Arc::new(clock.clone()));
        let k = "ip:1";
        let mut bans = vec![];
        for _ in 0..4 {
            assert!(l.fail(k).is_none());
            let ban = l.fail(k).unwrap();
            bans.push(ban.as_secs());
            assert_eq!(l.fail(k), None, "failures while banned do not extend");
            clock.advance(ban);
            assert!(l.banned(k).is_none());
        }
        assert_eq!(bans, [10, 20, 35, 35]);
        clock.advance(Duration::from_secs(1000));
        l.fail(k);
        assert_eq!(l.fail(k).unwrap().as_secs(), 10);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let clock = ManualClock::new();
        let l = Lockout::new(
            LockoutPolicy::new(3, Duration::from_secs(60), Duration::from_secs(10)),
            Arc::new(clock.clone()),
        );
        for _ in 0..10 {
            assert!(l.fail("k").is_none());
            assert!(l.fail("k").is_none());
            clock.advance(Duration::from_secs(61));
        }
        l.fail("k");
        l.fail("k");
        l.succeed("k");
        assert!(l.fail("k").is_none());
    }
}
