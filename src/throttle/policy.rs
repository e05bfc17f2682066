//! Policies: rates with unambiguous units, bursts, costs, actions and keys.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::error::ConfigError;
use crate::route::RouteSet;

/// A sustained rate: `count` requests per `period`.
///
/// The constructors read as they are meant: [`Rate::per_second(10)`](Rate::per_second) is
/// ten requests per second, never one request per ten seconds. Config strings use the same
/// words: `"10 per second"`, `"600 per minute"`, `"5000 per hour"`, `"20000 per day"`.
///
/// ```
/// use std::time::Duration;
/// use tower_shield::throttle::Rate;
/// let r: Rate = "600 per minute".parse().unwrap();
/// assert_eq!(r, Rate::per_minute(600));
/// assert_eq!(r.emission_interval(), Duration::from_millis(100));
/// assert!("10s".parse::<Rate>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    period: Duration,
}

impl Rate {
    /// `count` requests per `period`. A zero count is raised to one, a zero period to 1 ns.
    pub fn new(count: u32, period: Duration) -> Self {
        Self {
            count: NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN),
            period: period.max(Duration::from_nanos(1)),
        }
    }
    /// `n` requests per second.
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }
    /// `n` requests per minute.
    pub fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }
    /// `n` requests per hour.
    pub fn per_hour(n: u32) -> Self {
        Self::new(n, Duration::from_secs(3600))
    }
    /// `n` requests per day.
    pub fn per_day(n: u32) -> Self {
        Self::new(n, Duration::from_secs(86_400))
    }
    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }
    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
    /// Time between two unit-cost requests at the sustained rate (`period / count`).
    pub fn emission_interval(&self) -> Duration {
        (self.period / self.count.get()).max(Duration::from_nanos(1))
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => "second",
            60 if self.period.subsec_nanos() == 0 => "minute",
            3600 if self.period.subsec_nanos() == 0 => "hour",
            86_400 if self.period.subsec_nanos() == 0 => "day",
            _ => return write!(f, "{} per {:?}", self.count, self.period),
        };
        write!(f, "{} per {unit}", self.count)
    }
}

/// Error parsing a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected \"<n> per second|minute|hour|day\" (e.g. \"600 per minute\"), got {0:?}")]
pub struct RateParseError(String);

impl FromStr for Rate {
    type Err = RateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateParseError(s.chars().take(64).collect());
        let mut it = s.split_whitespace();
        let (Some(n), Some("per"), Some(unit), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(err());
        };
        let n: u32 = n.parse().map_err(|_| err())?;
        if n == 0 {
            return Err(err());
        }
        Ok(match unit {
            "second" | "sec" | "s" => Rate::per_second(n),
            "minute" | "min" | "m" => Rate::per_minute(n),
            "hour" | "h" => Rate::per_hour(n),
            "day" | "d" => Rate::per_day(n),
            _ => return Err(err()),
        })
    }
}

/// What a policy does with a request that does not conform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer 429 at once (a classic rate limit).
    Reject,
    /// Hold the request until it conforms ("slowing down"), for at most `max_wait` (and never
    /// past a gRPC `grpc-timeout`); a request that could not be served in time is rejected
    /// at once, without waiting.
    Delay {
        /// The longest a request may be held.
        max_wait: Duration,
    },
}

/// One part of a throttle key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The resolved client address (IPv6 masked to the layer's prefix, /64 by default).
    /// When the address is unknown, all such requests share one key.
    ClientIp,
    /// The authenticated [`Principal`](crate::Principal) id. The policy does not apply to
    /// requests without a principal.
    Principal,
    /// A request header's value. The policy does not apply when the header is absent.
    Header(HeaderName),
    /// The matched route template (`/products/{id}`), or the raw path when the policy has
    /// no route patterns.
    Route,
    /// A path parameter of the policy's matched route (`sku` in `POST /cart/{sku}`).
    PathParam(Arc<str>),
    /// A query parameter (`promo` in `?promo=SPRING`). Absent → the policy does not apply.
    Query(Arc<str>),
}

/// A throttle key: one or several [`KeyPart`]s (a composite key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub(crate) Vec<KeyPart>);

impl Key {
    /// Keyed by client IP.
    pub fn client_ip() -> Self {
        Self(vec![KeyPart::ClientIp])
    }
    /// Keyed by principal id.
    pub fn principal() -> Self {
        Self(vec![KeyPart::Principal])
    }
    /// Keyed by a header value.
    pub fn header(name: HeaderName) -> Self {
        Self(vec![KeyPart::Header(name)])
    }
    /// Keyed by the matched route.
    pub fn route() -> Self {
        Self(vec![KeyPart::Route])
    }
    /// Keyed by a path parameter of the matched route.
    pub fn path_param(name: &str) -> Self {
        Self(vec![KeyPart::PathParam(name.into())])
    }
    /// Keyed by a query parameter.
    pub fn query(name: &str) -> Self {
        Self(vec![KeyPart::Query(name.into())])
    }
    /// One key shared by all requests the policy applies to.
    pub fn global() -> Self {
        Self(Vec::new())
    }
    /// Adds a part (composite key: e.g. principal and SKU).
    pub fn and(mut self, part: KeyPart) -> Self {
        self.0.push(part);
        self
    }
    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }
}

impl FromStr for Key {
    type Err = ConfigError;
    /// Parses `ip`, `principal`, `route`, `global`, `header:<name>`, `path:<param>`,
    /// `query:<param>`, joined with `+` for composites (`principal+path:sku`).
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut parts = Vec::new();
        if s.trim() == "global" {
            return Ok(Key::global());
        }
        for p in s.split('+').map(str::trim) {
            let part = match p.split_once(':') {
                None if p == "ip" || p == "client_ip" => KeyPart::ClientIp,
                None if p == "principal" => KeyPart::Principal,
                None if p == "route" => KeyPart::Route,
                Some(("header", h)) => {
                    KeyPart::Header(HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| {
                        ConfigError::invalid("key", format!("bad header name {h:?}"))
                    })?)
                }
                Some(("path", n)) if !n.trim().is_empty() => KeyPart::PathParam(n.trim().into()),
                Some(("query", n)) if !n.trim().is_empty() => KeyPart::Query(n.trim().into()),
                _ => {
                    return Err(ConfigError::invalid(
                        "key",
                        format!(
                            "unknown key part {p:?} (expected ip, principal, route, global, header:<name>, path:<param>, query:<param>, joined with +)"
                        ),
                    ));
                }
            };
            parts.push(part);
        }
        Ok(Key(parts))
    }
}

/// What a policy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A GCRA rate with a burst.
    Rate {
        /// Sustained rate.
        rate: Rate,
        /// Requests that may arrive back to back (≥ 1).
        burst: u32,
    },
    /// At most this many requests in flight per key at once.
    InFlight(u32),
}

/// One throttle policy. Several may apply to one request; all must pass.
///
/// ```
/// use std::time::Duration;
/// use tower_shield::throttle::{Action, Key, Policy, Rate};
/// let login = Policy::rate("login", Rate::per_minute(5))
///     .burst(5)
///     .key(Key::client_ip())
///     .route("POST /login").unwrap();
/// let browse = Policy::rate("browse", Rate::per_second(20))
///     .burst(40)
///     .action(Action::Delay { max_wait: Duration::from_millis(500) })
///     .route("GET /products/*").unwrap();
/// let cart = Policy::in_flight("cart", 4).key(Key::principal());
/// # let _ = (login, browse, cart);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) limit: Limit,
    pub(crate) key: Key,
    pub(crate) action: Action,
    pub(crate) cost: u32,
    pub(crate) routes: Vec<(String, Option<u32>)>,
    pub(crate) shadow: bool,
}

impl Policy {
    /// A rate policy named `name` (used in `RateLimit` fields and denials). The burst
    /// defaults to 1 (strict pacing), the key to the client IP, the action to `Reject`.
    pub fn rate(name: &str, rate: Rate) -> Self {
        Self::with_limit(name, Limit::Rate { rate, burst: 1 })
    }
    /// A per-key in-flight (concurrency) cap: at most `max` requests of one key at once;
    /// the next is rejected with 429.
    pub fn in_flight(name: &str, max: u32) -> Self {
        Self::with_limit(name, Limit::InFlight(max))
    }
    fn with_limit(name: &str, limit: Limit) -> Self {
        Self {
            name: name.into(),
            limit,
            key: Key::client_ip(),
            action: Action::Reject,
            cost: 1,
            routes: Vec::new(),
            shadow: false,
        }
    }
    /// Sets the burst (rate policies).
    pub fn burst(mut self, burst: u32) -> Self {
        if let Limit::Rate { rate, .. } = self.limit {
            self.limit = Limit::Rate { rate, burst };
        }
        self
    }
    /// Sets the key.
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }
    /// Sets the action.
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }
    /// Sets the default cost per request (units taken from the burst).
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }
    /// Restricts the policy to a route pattern (`"POST /login"`, `"/admin/*"`); may be called
    /// several times. Without routes the policy applies to every request.
    pub fn route(mut self, pattern: &str) -> Result<Self, ConfigError> {
        crate::route::RoutePattern::parse(pattern, "throttle.route")?;
        self.routes.push((pattern.to_string(), None));
        Ok(self)
    }
    /// Like [`route`](Self::route) with a route-specific cost (weighted routes).
    pub fn route_with_cost(mut self, pattern: &str, cost: u32) -> Result<Self, ConfigError> {
        crate::route::RoutePattern::parse(pattern, "throttle.route")?;
        self.routes.push((pattern.to_string(), Some(cost)));
        Ok(self)
    }
    /// Shadow mode: record what the policy would deny (in
    /// [`RequestFacts`](crate::RequestFacts)), let the request through.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }
    /// The policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() || !self.name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                "must be non-empty printable ASCII",
            ));
        }
        let costs = std::iter::once(self.cost).chain(self.routes.iter().filter_map(|r| r.1));
        for c in costs {
            if c == 0 {
                return Err(ConfigError::invalid(format!("{key}.cost"), "must be ≥ 1"));
            }
            if let Limit::Rate { burst, .. } = self.limit
                && c > burst
            {
                return Err(ConfigError::invalid(
                    format!("{key}.cost"),
                    format!("cost {c} exceeds the burst {burst}: such a request could never pass"),
                ));
            }
        }
        match self.limit {
            Limit::Rate { burst: 0, .. } => {
                Err(ConfigError::invalid(format!("{key}.burst"), "must be ≥ 1"))
            }
            Limit::InFlight(0) => Err(ConfigError::invalid(
                format!("{key}.in_flight"),
                "must be ≥ 1",
            )),
            Limit::InFlight(_) if matches!(self.action, Action::Delay { .. }) => Err(
                ConfigError::invalid(format!("{key}.action"), "in-flight caps only reject"),
            ),
            _ => Ok(()),
        }
    }

    pub(crate) fn route_set(&self, key: &str) -> Result<Option<RouteSet<u32>>, ConfigError> {
        if self.routes.is_empty() {
            return Ok(None);
        }
        let mut b = RouteSet::builder().key(format!("{key}.routes"));
        for (p, c) in &self.routes {
            b = b.route(p, c.unwrap_or(self.cost))?;
        }
        b.try_build().map(Some)
    }
}
