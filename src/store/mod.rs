//! Store traits for the stateful features: rate state (throttle), counters (quota, lockout)
//! and one-time nonces (replay protection).
//!
//! The in-memory implementations are the defaults; the Redis implementations (feature
//! `redis`) are the distributed engine for fleets. Each store decides in one step (one
//! lock-free update in memory, one Lua script round trip in Redis) so that concurrent
//! requests are admitted exactly. What happens when a remote store is slow or down is an
//! explicit [`FailureMode`].

use std::future::Future;
use std::time::{Duration, SystemTime};

/// What a layer does when its store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse the request (503). Safe, but a store outage becomes an API outage.
    #[default]
    Reject,
    /// Let the request through unlimited. Available, but unprotected while the store is down.
    Allow,
    /// Enforce the limit in this instance's memory. Each instance enforces it separately, so a
    /// fleet of N instances admits up to N times the limit while the store is down.
    LocalFallback,
}

/// A store failure. Never contains connection URLs or credentials.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within its timeout.
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    /// The store is unreachable or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something unexpected.
    #[error("store protocol error: {0}")]
    Protocol(String),
}

/// Parameters of a GCRA (generic cell rate algorithm) limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between two conforming unit-cost requests at the sustained rate.
    pub emission_interval: Duration,
    /// How many unit-cost requests may arrive back to back.
    pub burst: u32,
}

/// The outcome of a rate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Admitted: now when `wait` is zero, else after holding the request for `wait` (the
    /// slot is reserved; only returned when the caller allowed a `max_wait`).
    Allowed {
        /// How long the request must be held before it conforms.
        wait: Duration,
        /// Units still available in the burst.
        remaining: u64,
        /// Time until the burst is full again.
        reset_after: Duration,
    },
    /// Not admitted; it would conform after `retry_after`.
    Limited {
        /// Wait after which the same request would conform.
        retry_after: Duration,
        /// Time until the burst is full again.
        reset_after: Duration,
    },
}

/// Rate state for the throttle: one atomic GCRA decision per call.
pub trait RateStore: Send + Sync + 'static {
    /// Takes `cost` units for `key` under `limit`, or says how long until it could. When the
    /// request would conform within `max_wait`, the units are reserved and the decision is
    /// `Allowed` with that `wait` (pacing); pass `Duration::ZERO` for a plain check.
    fn check(
        &self,
        key: &[u8],
        limit: Gcra,
        cost: u32,
        max_wait: Duration,
    ) -> impl Future<Output = Result<RateDecision, StoreError>> + Send;
}

/// The outcome of a counter decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterDecision {
    /// Counted; `used` is the total after this call.
    Counted {
        /// Units used in the window, this call included.
        used: u64,
    },
    /// Refused without counting: the call would exceed the limit.
    Exceeded {
        /// Units used in the window.
        used: u64,
    },
}

/// Windowed counters for quotas and failure counting.
pub trait CounterStore: Send + Sync + 'static {
    /// Adds `cost` to the counter `key` (which expires at `window_end`) unless that would
    /// take it over `limit`, in which case it is left unchanged.
    fn add_within(
        &self,
        key: &[u8],
        cost: u64,
        limit: u64,
        window_end: SystemTime,
    ) -> impl Future<Output = Result<CounterDecision, StoreError>> + Send;

    /// Gives back `cost` units (saturating at zero), e.g. after an upstream 5xx.
    fn refund(&self, key: &[u8], cost: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Current value of the counter (0 when absent or expired).
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether this store answers without waiting (an in-process store): then
    /// [`add_within_now`](Self::add_within_now), [`refund_now`](Self::refund_now) and
    /// [`get_now`](Self::get_now) return `Some`, and callers may decide synchronously
    /// instead of boxing a future. Default `false`.
    fn is_immediate(&self) -> bool {
        false
    }

    /// [`add_within`](Self::add_within) without a future, for an immediate store; `None`
    /// (the default) when the store must wait.
    fn add_within_now(
        &self,
        _key: &[u8],
        _cost: u64,
        _limit: u64,
        _window_end: SystemTime,
    ) -> Option<Result<CounterDecision, StoreError>> {
        None
    }

    /// [`refund`](Self::refund) without a future, for an immediate store.
    fn refund_now(&self, _key: &[u8], _cost: u64) -> Option<Result<(), StoreError>> {
        None
    }

    /// [`get`](Self::get) without a future, for an immediate store.
    fn get_now(&self, _key: &[u8]) -> Option<Result<u64, StoreError>> {
        None
    }
}

/// One-time values (request nonces, DPoP `jti`s) remembered for a time.
pub trait NonceStore: Send + Sync + 'static {
    /// Records `nonce` for `ttl`; `Ok(true)` when it was new, `Ok(false)` on a replay.
    fn insert_once(
        &self,
        nonce: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(feature = "redis")]
pub mod redis;
