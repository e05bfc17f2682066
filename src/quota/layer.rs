//! The quota layer and service.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::fast::{Buf, CachedSpan, List, Padded, SpanCache, nanos};
use super::store::{Charge, MemoryCounterStore, QuotaStore, Table};
use super::window::Window;
use crate::body::BodyFromBytes;
use crate::client_ip::{ClientIpResolver, client_ip_of};
use crate::clock::{SharedClock, system_clock};
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::fast_hash::Seeds;
use crate::principal::Principal;
use crate::ratelimit::{self, FieldTemplate, RateLimitField};
use crate::route::{RoutePattern, RouteSet};
use crate::store::{CounterDecision, CounterStore, FailureMode, StoreError};

/// Problem type of a quota denial (draft-ietf-httpapi-ratelimit-headers).
pub const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";
const QUOTA_EXCEEDED_TITLE: &str =
    "Request cannot be satisfied as assigned quota has been exceeded";

/// One quota: a named allotment of units per window (`"monthly"`: 6000 per calendar month).
#[derive(Debug, Clone)]
pub struct Quota {
    name: Arc<str>,
    limit: u64,
    window: Window,
    cache: Arc<QuotaCache>,
}

/// What is computed once per quota (header items, the key part) or once per window
/// (calendar arithmetic and label formatting), not per request.
#[derive(Debug)]
struct QuotaCache {
    /// The current calendar window (read without a lock).
    span: SpanCache,
    /// The name as used in store keys.
    key_name: Box<[u8]>,
    /// This quota's `RateLimit-Policy` item (`"monthly";q=6000;w=2592000`).
    policy: Option<HeaderValue>,
    /// The start of its `RateLimit` item (`"monthly";r=`).
    r_prefix: Box<[u8]>,
    /// `:<key name>:`, the part of its store keys between the caller and the window label,
    /// when it fits a padded block.
    key_mid: Option<Padded>,
}

impl PartialEq for Quota {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.limit == other.limit && self.window == other.window
    }
}
impl Eq for Quota {}

impl Quota {
    /// A quota named `name` (the policy name in `RateLimit` fields and `violated-policies`)
    /// of `limit` units per `window`.
    pub fn new(name: impl Into<Arc<str>>, limit: u64, window: Window) -> Self {
        let name: Arc<str> = name.into();
        let mut key_name = Buf::<0>::default();
        push_escaped(&mut key_name, name.as_bytes());
        let policy = ratelimit::policy_value(&[
            RateLimitField::new(name.to_string(), limit).window_secs(window.nominal_secs())
        ]);
        let r_prefix = match policy.as_ref().map(|p| p.as_bytes()) {
            Some(p) => {
                let end = p.windows(3).rposition(|w| w == b";q=").unwrap_or(p.len());
                let mut v = p[..end].to_vec();
                v.extend_from_slice(b";r=");
                v
            }
            None => b"\"_\";r=".to_vec(),
        };
        Self {
            name,
            limit,
            window,
            cache: Arc::new(QuotaCache {
                span: SpanCache::default(),
                key_mid: {
                    let mut mid = Buf::<0>::default();
                    mid.push(b':');
                    mid.extend_from_slice(key_name.as_slice());
                    mid.push(b':');
                    Padded::new(mid.as_slice())
                },
                key_name: key_name.as_slice().into(),
                policy,
                r_prefix: r_prefix.into(),
            }),
        }
    }

    /// The window containing `now` (cached while `now` stays inside it).
    fn span(&self, now: SystemTime) -> super::window::Span {
        self.with_span(now, |s, _| s.clone())
    }

    /// The calendar window containing `now` (nanoseconds since the epoch): its end and
    /// label, from the cache (computed once per window). `None` for a rolling window (or a
    /// label too long for the cache).
    #[inline]
    fn calendar_span(&self, now: u64) -> Option<CachedSpan> {
        if let Some(c) = self.cache.span.get(now) {
            return Some(c);
        }
        self.calendar_span_slow(now)
    }

    #[cold]
    #[inline(never)]
    fn calendar_span_slow(&self, now: u64) -> Option<CachedSpan> {
        if self.window.is_rolling() {
            return None;
        }
        let at = UNIX_EPOCH + Duration::from_nanos(now);
        let s = self.window.span(at);
        if s.label.len() > SpanCache::LABEL_MAX {
            return None;
        }
        self.cache.span.put(s.start, s.end, s.label.as_bytes());
        self.cache.span.get(now).or_else(|| CachedSpan::new(&s))
    }

    /// Runs `f` on the window containing `now` and the end of its store keys
    /// (`:<name>:<label>`).
    fn with_span<R>(&self, now: SystemTime, f: impl FnOnce(&super::window::Span, &[u8]) -> R) -> R {
        let s = match nanos(now).and_then(|n| self.calendar_span(n)) {
            Some(c) => super::window::Span {
                start: c.start(),
                end: c.end(),
                label: String::from_utf8_lossy(c.label().as_slice()).into_owned(),
            },
            None => self.window.span(now),
        };
        let mut suffix = Buf::<64>::default();
        self.push_suffix(&mut suffix, s.label.as_bytes());
        f(&s, suffix.as_slice())
    }

    /// Appends `:<name>:<label>`, the end of this quota's store keys.
    #[inline]
    fn push_suffix<const N: usize>(&self, out: &mut Buf<N>, label: &[u8]) {
        out.push(b':');
        out.extend_from_slice(&self.cache.key_name);
        out.push(b':');
        out.extend_from_slice(label);
    }

    /// Policy name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Units per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// The window.
    pub fn window(&self) -> &Window {
        &self.window
    }
}

/// The quotas that apply to one caller (several may apply: 6000/month and 500/day).
pub type Limits = Arc<[Quota]>;

/// Who a quota decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The authenticated principal, when the auth layer ran.
    pub principal: Option<&'a Principal>,
    /// The plan (the principal's, if any).
    pub plan: Option<&'a str>,
    /// The counting key (`p:<principal id>`, `ip:<address>` or `h:<header value>`).
    pub key: &'a str,
}

/// Looks up the quotas of a caller. `None` means an unknown plan, handled by the layer's
/// [`UnknownPlan`] setting. Called on every request: keep it fast (cache what you fetch
/// from elsewhere, e.g. refresh a map in the background).
pub trait LimitProvider: Send + Sync + 'static {
    /// The quotas for this caller.
    fn limits(&self, caller: &Caller<'_>) -> Option<Limits>;
}

impl<F> LimitProvider for F
where
    F: Fn(&Caller<'_>) -> Option<Limits> + Send + Sync + 'static,
{
    fn limits(&self, caller: &Caller<'_>) -> Option<Limits> {
        self(caller)
    }
}

/// Plan name → quotas (the built-in [`LimitProvider`]).
#[derive(Debug, Clone, Default)]
pub struct PlanTable {
    plans: HashMap<String, Limits, Seeds>,
}

impl PlanTable {
    /// Adds or replaces a plan.
    pub fn insert(&mut self, plan: impl Into<String>, quotas: impl IntoIterator<Item = Quota>) {
        self.plans
            .insert(plan.into(), quotas.into_iter().collect::<Vec<_>>().into());
    }
    /// The quotas of a plan.
    pub fn get(&self, plan: &str) -> Option<&Limits> {
        self.plans.get(plan)
    }
}

impl LimitProvider for PlanTable {
    fn limits(&self, caller: &Caller<'_>) -> Option<Limits> {
        caller.plan.and_then(|p| self.plans.get(p)).cloned()
    }
}

/// A plan's quotas and their `RateLimit-Policy` value, rendered once.
#[derive(Debug, Clone)]
struct PlanEntry {
    limits: Limits,
    policy: Option<HeaderValue>,
    /// The fields of an admitted response, built once (interned by policy value).
    template: Option<&'static FieldTemplate>,
}

impl PlanEntry {
    fn new(limits: &Limits) -> Self {
        let policy = policy_value(limits);
        Self {
            limits: limits.clone(),
            template: policy.as_ref().and_then(ratelimit::intern_template),
            policy,
        }
    }
}

/// The plan table as the layer looks it up: plan name → entry, and the entry for callers
/// with an unknown or no plan.
#[derive(Debug, Clone)]
struct PlanEntries {
    plans: HashMap<String, PlanEntry, Seeds>,
    /// The same plans in a list when there are few: compared by length and bytes, cheaper
    /// than hashing the name.
    few: Option<Vec<(Box<str>, PlanEntry)>>,
    unknown: Option<PlanEntry>,
}

impl PlanEntries {
    fn new(table: &PlanTable, unknown: &UnknownPlan) -> Self {
        let plans: HashMap<String, PlanEntry, Seeds> = table
            .plans
            .iter()
            .map(|(k, v)| (k.clone(), PlanEntry::new(v)))
            .collect();
        Self {
            few: (plans.len() <= 8).then(|| {
                plans
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.clone()))
                    .collect()
            }),
            plans,
            unknown: match unknown {
                UnknownPlan::Deny => None,
                UnknownPlan::Default(l) => Some(PlanEntry::new(l)),
            },
        }
    }

    #[inline]
    fn entry(&self, plan: Option<&str>) -> Option<&PlanEntry> {
        let found = match (&self.few, plan) {
            (_, None) => None,
            (Some(few), Some(p)) => few
                .iter()
                .find(|(name, _)| name.len() == p.len() && **name == *p)
                .map(|(_, e)| e),
            (None, Some(p)) => self.plans.get(p),
        };
        found.or(self.unknown.as_ref())
    }
}

/// What happens to a caller whose plan is unknown (or who has no plan, e.g. an anonymous
/// caller keyed by IP).
#[derive(Debug, Clone, Default)]
pub enum UnknownPlan {
    /// Refuse with 403 `unknown_plan` (the default: fail closed).
    #[default]
    Deny,
    /// Apply these quotas.
    Default(Limits),
}

/// How callers are keyed when no [`Principal`] is in the request extensions.
#[derive(Debug, Clone, Default)]
pub enum KeyFallback {
    /// The client address ([`ClientIp`], IPv6 by /64) — the default.
    #[default]
    ClientIp,
    /// The value of a header (e.g. a client id set by an upstream gateway). Anyone can send
    /// any header: use only a header a trusted proxy sets. Values over 128 bytes are refused.
    Header(HeaderName),
    /// No fallback: callers without a principal are refused (403 `quota_key_missing`).
    None,
}

/// When a counted call's units are given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountPolicy {
    /// Every admitted call counts, whatever its outcome.
    EveryCall,
    /// Admitted calls count, but the units are refunded when the inner service answers 5xx
    /// or fails (failed upstream calls do not burn quota). The default.
    #[default]
    RefundServerErrors,
    /// Only successes (1xx–3xx) count: units are reserved on admission and refunded on any
    /// 4xx, 5xx or error.
    SuccessOnly,
}

impl CountPolicy {
    #[inline]
    fn refunds(&self, status: Option<StatusCode>) -> bool {
        match (self, status) {
            (CountPolicy::EveryCall, _) => false,
            (_, None) => true,
            (CountPolicy::RefundServerErrors, Some(s)) => s.is_server_error(),
            (CountPolicy::SuccessOnly, Some(s)) => s.as_u16() >= 400,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RouteCost {
    cost: Option<u64>,
    by_query: Vec<(String, u64)>,
}

impl RouteCost {
    fn for_query(&self, query: Option<&str>, default: u64) -> u64 {
        if let Some(q) = query.filter(|_| !self.by_query.is_empty()) {
            let mut best: Option<u64> = None;
            for pair in q.split('&') {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                if let Some((_, c)) = self.by_query.iter().find(|(p, _)| p == name) {
                    best = Some(best.map_or(*c, |b| b.max(*c)));
                }
            }
            if let Some(c) = best {
                return c;
            }
        }
        self.cost.unwrap_or(default)
    }
}

/// Current usage of one quota, for dashboards (serializes to JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaUsage {
    /// Policy name.
    pub name: String,
    /// Units per window.
    pub limit: u64,
    /// Units used in the current window.
    pub used: u64,
    /// Units left.
    pub remaining: u64,
    /// When the window resets (Unix seconds); for a rolling window, when the oldest counted
    /// units leave it.
    pub resets_at: u64,
    /// Seconds until then (rounded up).
    pub reset_after_secs: u64,
    /// Nominal window length in seconds.
    pub window_secs: u64,
}

struct Shared<St> {
    store: St,
    fallback_store: Option<MemoryCounterStore>,
    provider: Arc<dyn LimitProvider>,
    /// The built-in plan table, when no custom provider is set (looked up directly: the
    /// caller key is then not needed as text), with each plan's `RateLimit-Policy` value.
    plans: Option<PlanEntries>,
    unknown_plan: UnknownPlan,
    key_fallback: KeyFallback,
    resolver: ClientIpResolver,
    weights: Option<RouteSet<RouteCost>>,
    default_cost: u64,
    policy: CountPolicy,
    failure_mode: FailureMode,
    shadow: bool,
    headers_on_success: bool,
    prefix: String,
    /// `<prefix>{`
    key_head: String,
    /// `<prefix>{p%3A`: the start of a principal's store keys, when it fits a padded block.
    principal_head: Option<Padded>,
    /// Where the hash tag starts in a store key (`key_head.len()`), when the prefix has no
    /// braces of its own.
    tag_at: Option<usize>,
    clock: SharedClock,
}

impl<St> Shared<St> {
    fn unknown_plan_limits(&self) -> Option<Limits> {
        match &self.unknown_plan {
            UnknownPlan::Deny => None,
            UnknownPlan::Default(l) => Some(l.clone()),
        }
    }
}

/// Builder for [`QuotaLayer`].
pub struct QuotaLayerBuilder<St = QuotaStore> {
    store: Option<St>,
    make_store: Option<fn(SharedClock) -> St>,
    plans: PlanTable,
    provider: Option<Arc<dyn LimitProvider>>,
    unknown_plan: UnknownPlan,
    default_plan: Option<String>,
    key_fallback: KeyFallback,
    resolver: ClientIpResolver,
    weights: Vec<(String, Option<String>, u64)>,
    default_cost: u64,
    policy: CountPolicy,
    failure_mode: FailureMode,
    shadow: bool,
    headers_on_success: bool,
    prefix: String,
    clock: Option<SharedClock>,
    renderer: Renderer,
}

impl<St> fmt::Debug for QuotaLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLayerBuilder")
            .field("plans", &self.plans)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<St: CounterStore + Clone> QuotaLayerBuilder<St> {
    /// Uses another counter store.
    pub fn store<T: CounterStore + Clone>(self, store: T) -> QuotaLayerBuilder<T> {
        QuotaLayerBuilder {
            store: Some(store),
            make_store: None,
            plans: self.plans,
            provider: self.provider,
            unknown_plan: self.unknown_plan,
            default_plan: self.default_plan,
            key_fallback: self.key_fallback,
            resolver: self.resolver,
            weights: self.weights,
            default_cost: self.default_cost,
            policy: self.policy,
            failure_mode: self.failure_mode,
            shadow: self.shadow,
            headers_on_success: self.headers_on_success,
            prefix: self.prefix,
            clock: self.clock,
            renderer: self.renderer,
        }
    }

    /// Adds a plan and its quotas (`"free"`: 6000 per month).
    pub fn plan(
        mut self,
        plan: impl Into<String>,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Self {
        self.plans.insert(plan, quotas);
        self
    }

    /// Looks limits up with a custom provider instead of the plans given to
    /// [`plan`](Self::plan).
    pub fn provider(mut self, provider: impl LimitProvider) -> Self {
        self.provider = Some(Arc::new(provider));
        self
    }

    /// Callers with an unknown (or no) plan get these quotas.
    pub fn unknown_plan(mut self, policy: UnknownPlan) -> Self {
        self.unknown_plan = policy;
        self
    }

    /// Callers with an unknown (or no) plan get the quotas of `plan` (which must be
    /// configured with [`plan`](Self::plan)).
    pub fn default_plan(mut self, plan: impl Into<String>) -> Self {
        self.default_plan = Some(plan.into());
        self
    }

    /// How callers without a principal are keyed (default: client IP).
    pub fn key_fallback(mut self, fallback: KeyFallback) -> Self {
        self.key_fallback = fallback;
        self
    }

    /// The resolver used when no outer layer resolved the client address.
    pub fn resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Sets the cost of requests matching `pattern` (`"POST /search"`, `"/reports/*"`).
    /// A pattern with a query parameter, `"GET /products?search"` (or `?search=`), costs
    /// `cost` when the request's query has that parameter. A cost of 0 exempts the route.
    pub fn weight(mut self, pattern: &str, cost: u64) -> Self {
        let (route, query) = match pattern.split_once('?') {
            Some((r, q)) => (r, Some(q.trim_end_matches('=').to_owned())),
            None => (pattern, None),
        };
        self.weights.push((route.to_owned(), query, cost));
        self
    }

    /// Cost of a request matching no weighted route (default 1).
    pub fn default_cost(mut self, cost: u64) -> Self {
        self.default_cost = cost;
        self
    }

    /// When counted units are refunded (default: on 5xx).
    pub fn count_policy(mut self, policy: CountPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// What to do when the store fails (default: reject with 503).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Shadow mode: over-quota requests are let through (uncounted) and the denial is only
    /// recorded in [`RequestFacts`](crate::RequestFacts) and the logs.
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Whether admitted responses carry `RateLimit-Policy`/`RateLimit` too (default false:
    /// denials always carry them). The draft lets servers omit them on success; on a
    /// response without other header fields they cost the header map's allocations.
    pub fn headers_on_success(mut self, on: bool) -> Self {
        self.headers_on_success = on;
        self
    }

    /// Prefix of the store keys (default `"quota:"`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The clock (wall time decides the windows). A store given with
    /// [`store`](Self::store) keeps its own clock for expiry: give it the same one.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The denial renderer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Builds the layer. Fails on invalid weight patterns or an unknown default plan.
    pub fn build(self) -> Result<QuotaLayer<St>, ConfigError> {
        let unknown_plan = match &self.default_plan {
            Some(name) => UnknownPlan::Default(self.plans.get(name).cloned().ok_or_else(|| {
                ConfigError::invalid(
                    "quota.default_plan",
                    format!("plan {name:?} is not configured"),
                )
            })?),
            None => self.unknown_plan,
        };
        let weights = if self.weights.is_empty() {
            None
        } else {
            let mut merged: Vec<(RoutePattern, RouteCost)> = Vec::new();
            for (i, (route, query, cost)) in self.weights.iter().enumerate() {
                let p = RoutePattern::parse(route, &format!("quota.weights[{i}]"))?;
                let idx = match merged.iter().position(|(q, _)| *q == p) {
                    Some(idx) => idx,
                    None => {
                        merged.push((p, RouteCost::default()));
                        merged.len() - 1
                    }
                };
                match query {
                    Some(q) => merged[idx].1.by_query.push((q.clone(), *cost)),
                    None => merged[idx].1.cost = Some(*cost),
                }
            }
            let mut b = RouteSet::builder().key("quota.weights");
            for (p, c) in merged {
                b = b.pattern(p, c);
            }
            Some(b.try_build()?)
        };
        let clock = self.clock.unwrap_or_else(system_clock);
        // the default memory store reads expiry from the same clock as the windows
        let store = match (self.store, self.make_store) {
            (Some(s), _) => s,
            (None, Some(make)) => make(clock.clone()),
            (None, None) => unreachable!("a builder always has a store or a way to make one"),
        };
        let fallback_store = (self.failure_mode == FailureMode::LocalFallback)
            .then(|| MemoryCounterStore::new(clock.clone()));
        let plans = self
            .provider
            .is_none()
            .then(|| PlanEntries::new(&self.plans, &unknown_plan));
        let provider = self
            .provider
            .unwrap_or_else(|| Arc::new(self.plans.clone()) as Arc<dyn LimitProvider>);
        Ok(QuotaLayer {
            shared: Arc::new(Shared {
                store,
                fallback_store,
                provider,
                plans,
                unknown_plan,
                key_fallback: self.key_fallback,
                resolver: self.resolver,
                weights,
                default_cost: self.default_cost,
                policy: self.policy,
                failure_mode: self.failure_mode,
                shadow: self.shadow,
                headers_on_success: self.headers_on_success,
                key_head: format!("{}{{", self.prefix),
                principal_head: Padded::new(format!("{}{{p%3A", self.prefix).as_bytes()),
                tag_at: (!self.prefix.contains(['{', '}'])).then_some(self.prefix.len() + 1),
                prefix: self.prefix,
                clock,
            }),
            renderer: self.renderer,
        })
    }
}

/// Layer enforcing quotas. See the [module docs](super).
pub struct QuotaLayer<St = QuotaStore> {
    shared: Arc<Shared<St>>,
    renderer: Renderer,
}

impl<St> Clone for QuotaLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            renderer: self.renderer.clone(),
        }
    }
}

impl<St> fmt::Debug for QuotaLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLayer")
            .field("policy", &self.shared.policy)
            .field("shadow", &self.shared.shadow)
            .finish_non_exhaustive()
    }
}

impl QuotaLayer<QuotaStore> {
    /// Starts a builder (in-memory store, system clock, no plans).
    pub fn builder() -> QuotaLayerBuilder<QuotaStore> {
        QuotaLayerBuilder {
            store: None,
            make_store: Some(|clock| QuotaStore::Memory(MemoryCounterStore::new(clock))),
            plans: PlanTable::default(),
            provider: None,
            unknown_plan: UnknownPlan::Deny,
            default_plan: None,
            key_fallback: KeyFallback::ClientIp,
            resolver: ClientIpResolver::default(),
            weights: Vec::new(),
            default_cost: 1,
            policy: CountPolicy::default(),
            failure_mode: FailureMode::Reject,
            shadow: false,
            headers_on_success: false,
            prefix: "quota:".into(),
            clock: None,
            renderer: Renderer::default(),
        }
    }
}

/// What one quota looked like in a decision.
#[derive(Debug, Clone)]
struct Outcome {
    quota_idx: usize,
    used: u64,
    exceeded: bool,
    counted: bool,
    reset_at: SystemTime,
}

/// A store key, inline up to 64 bytes.
type StoreKey = Buf<64>;
/// A caller key (`p:<id>`, `ip:<address>`, `h:<value>`), inline up to 64 bytes.
type CallerKey = Buf<64>;

/// Bytes %-escaped in store keys (`{`, `}` would break the Redis Cluster hash tag, `:`
/// separates the key's parts, `%` is the escape itself).
const ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'%' as usize] = true;
    t[b':' as usize] = true;
    t
};

#[inline]
fn push_escaped<const N: usize>(out: &mut Buf<N>, bytes: &[u8]) {
    // most keys need no escaping: one scan, one copy
    if !bytes.iter().any(|&b| ESCAPED[usize::from(b)]) {
        out.extend_from_slice(bytes);
        return;
    }
    push_escaped_slow(out, bytes);
}

#[inline(never)]
fn push_escaped_slow<const N: usize>(out: &mut Buf<N>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if ESCAPED[usize::from(b)] {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Appends the escaped caller key. Caller keys are `<kind>:<value>` (`p:`, `ip:`, `h:`):
/// the kind's colon is written as `%3A` directly, so only the value is scanned.
fn push_escaped_caller<const N: usize>(out: &mut Buf<N>, caller: &[u8]) {
    match caller.iter().position(|&b| b == b':') {
        Some(at) => {
            push_escaped(out, &caller[..at]);
            out.extend_from_slice(b"%3A");
            push_escaped(out, &caller[at + 1..]);
        }
        None => push_escaped(out, caller),
    }
}

/// The answer of a store that answers at once ([`CounterStore::is_immediate`]).
fn at_once<R>(r: Option<Result<R, StoreError>>) -> Result<R, StoreError> {
    r.unwrap_or_else(|| {
        Err(StoreError::Unavailable(
            "an immediate store did not answer at once".into(),
        ))
    })
}

/// The quotas of the counted outcomes.
fn counted<'a>(
    limits: &'a [Quota],
    outcomes: &'a List<Outcome>,
) -> impl Iterator<Item = &'a Quota> {
    outcomes
        .iter()
        .filter(|o| o.counted)
        .map(|o| &limits[o.quota_idx])
}

/// `<prefix>{<escaped caller>}`: the start of all store keys of a caller.
fn key_head<St>(shared: &Shared<St>, caller: &[u8]) -> StoreKey {
    let mut k = StoreKey::default();
    k.extend_from_slice(shared.key_head.as_bytes());
    push_escaped_caller(&mut k, caller);
    k.push(b'}');
    k
}

/// Gives `cost` back to the counted outcomes of an immediate store. `key` starts with the
/// caller's head (`head` bytes); each quota's key is rebuilt behind it.
#[cold]
fn refund_now<'a, T: CounterStore>(
    store: &T,
    key: &mut StoreKey,
    head: usize,
    quotas: impl Iterator<Item = &'a Quota>,
    cost: u64,
    now: SystemTime,
) {
    for q in quotas {
        key.truncate(head);
        q.with_span(now, |_, suffix| key.extend_from_slice(suffix));
        match store.refund_now(key.as_slice(), cost) {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "quota refund failed"),
            None => tracing::warn!("quota refund did not complete at once"),
        }
    }
}

impl<St: CounterStore + Clone> QuotaLayer<St> {
    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    fn store_key(&self, caller: &str, quota: &Quota, label: &str) -> StoreKey {
        // `{caller}` is a Redis Cluster hash tag: all counters of a caller live on one slot
        let mut k = StoreKey::default();
        k.extend_from_slice(self.shared.prefix.as_bytes());
        k.push(b'{');
        push_escaped_caller(&mut k, caller.as_bytes());
        k.extend_from_slice(b"}:");
        k.extend_from_slice(&quota.cache.key_name);
        k.push(b':');
        k.extend_from_slice(label.as_bytes());
        k
    }

    /// Current usage and reset of every quota that applies to `principal`.
    pub async fn usage_of(&self, principal: &Principal) -> Result<Vec<QuotaUsage>, StoreError> {
        let key = format!("p:{}", principal.id());
        self.usage_for(Some(principal), principal.plan(), &key)
            .await
    }

    /// Current usage of the caller keyed `key` (`p:<principal id>`, `ip:<address>`,
    /// `h:<header value>`) on `plan`.
    pub async fn usage_for(
        &self,
        principal: Option<&Principal>,
        plan: Option<&str>,
        key: &str,
    ) -> Result<Vec<QuotaUsage>, StoreError> {
        let caller = Caller {
            principal,
            plan,
            key,
        };
        let Some(limits) = self.limits_for(&caller) else {
            return Ok(Vec::new());
        };
        let now = self.shared.clock.wall_coarse();
        let mut out = Vec::with_capacity(limits.len());
        for (i, q) in limits.iter().enumerate() {
            let o = self.measure(&self.shared.store, key, q, i, now, 0).await?;
            let reset_after = o.reset_at.duration_since(now).unwrap_or_default();
            out.push(QuotaUsage {
                name: q.name.to_string(),
                limit: q.limit,
                used: o.used,
                remaining: q.limit.saturating_sub(o.used),
                resets_at: ratelimit::ceil_secs(
                    o.reset_at.duration_since(UNIX_EPOCH).unwrap_or_default(),
                ),
                reset_after_secs: ratelimit::ceil_secs(reset_after),
                window_secs: q.window.nominal_secs(),
            });
        }
        Ok(out)
    }

    fn limits_for(&self, caller: &Caller<'_>) -> Option<Limits> {
        self.shared
            .provider
            .limits(caller)
            .or_else(|| self.shared.unknown_plan_limits())
    }

    /// Reads the usage of one quota without counting. For a rolling window, sums the
    /// buckets; returns the outcome with `used` and the reset time.
    async fn measure<T: CounterStore>(
        &self,
        store: &T,
        caller: &str,
        q: &Quota,
        idx: usize,
        now: SystemTime,
        _cost: u64,
    ) -> Result<Outcome, StoreError> {
        let span = q.span(now);
        if let Some((bucket, n)) = q.window.rolling_parts() {
            let (prev, oldest) = self
                .rolling_prev(store, caller, q, &span, bucket, n)
                .await?;
            let key = self.store_key(caller, q, &span.label);
            let cur = store.get(key.as_slice()).await?;
            let reset_at = oldest.unwrap_or(if cur > 0 { span.end } else { now });
            return Ok(Outcome {
                quota_idx: idx,
                used: prev + cur,
                exceeded: false,
                counted: false,
                reset_at,
            });
        }
        let key = self.store_key(caller, q, &span.label);
        let used = store.get(key.as_slice()).await?;
        Ok(Outcome {
            quota_idx: idx,
            used,
            exceeded: false,
            counted: false,
            reset_at: span.end,
        })
    }

    /// Sum of the previous buckets of a rolling window still inside it, and when the oldest
    /// non-empty one leaves the window.
    async fn rolling_prev<T: CounterStore>(
        &self,
        store: &T,
        caller: &str,
        q: &Quota,
        span: &super::window::Span,
        bucket: Duration,
        n: u32,
    ) -> Result<(u64, Option<SystemTime>), StoreError> {
        let idx: i128 = span.label[1..].parse().unwrap_or(0);
        let mut sum = 0;
        let mut oldest = None;
        for back in (1..i128::from(n)).rev() {
            let label = format!("r{}", idx - back);
            let used = store
                .get(self.store_key(caller, q, &label).as_slice())
                .await?;
            if used > 0 {
                sum += used;
                if oldest.is_none() {
                    // bucket idx-back leaves the window n buckets after it started
                    let start = span.start - bucket * (back as u32);
                    oldest = Some(start + bucket * n);
                }
            }
        }
        Ok((sum, oldest))
    }

    /// Counts `cost` against every quota, all or nothing.
    async fn decide<T: CounterStore>(
        &self,
        store: &T,
        caller: &str,
        limits: &[Quota],
        cost: u64,
        now: SystemTime,
    ) -> Result<List<Outcome>, StoreError> {
        #[cfg(feature = "redis")]
        if let Some(r) = redis_store(store) {
            return self.decide_redis(r, caller, limits, cost, now).await;
        }
        let mut outcomes: List<Outcome> = List::default();
        let mut refused = false;
        for (i, q) in limits.iter().enumerate() {
            if refused {
                let mut o = self.measure(store, caller, q, i, now, cost).await?;
                o.exceeded = o.used.saturating_add(cost) > q.limit;
                outcomes.push(o);
                continue;
            }
            let (key, prev, reset_at, end) = match q.window.rolling_parts() {
                Some((bucket, n)) => {
                    let span = q.span(now);
                    let (p, o) = self
                        .rolling_prev(store, caller, q, &span, bucket, n)
                        .await?;
                    let key = self.store_key(caller, q, &span.label);
                    (key, p, o.unwrap_or(span.end), span.end)
                }
                None => q.with_span(now, |span, _| {
                    (
                        self.store_key(caller, q, &span.label),
                        0,
                        span.end,
                        span.end,
                    )
                }),
            };
            let budget = q.limit.saturating_sub(prev);
            let d = match store.add_within(key.as_slice(), cost, budget, end).await {
                Ok(d) => d,
                Err(e) => {
                    self.refund_all(store, caller, limits, &outcomes, cost, now)
                        .await;
                    return Err(e);
                }
            };
            let (used, exceeded) = match d {
                CounterDecision::Counted { used } => (used, false),
                CounterDecision::Exceeded { used } => (used, true),
            };
            if exceeded {
                refused = true;
                self.refund_all(store, caller, limits, &outcomes, cost, now)
                    .await;
                for o in outcomes.iter_mut() {
                    o.counted = false;
                    o.used = o.used.saturating_sub(cost);
                }
            }
            outcomes.push(Outcome {
                quota_idx: i,
                used: prev + used,
                exceeded,
                counted: !exceeded,
                reset_at,
            });
        }
        Ok(outcomes)
    }

    /// [`decide`](Self::decide) for calendar windows on a store that answers at once
    /// ([`CounterStore::is_immediate`]), without an async state machine. The keys are
    /// written one after the other into one buffer that starts with the caller's head.
    fn decide_now<T: CounterStore>(
        &self,
        store: &T,
        caller: &[u8],
        limits: &[Quota],
        cost: u64,
        now: SystemTime,
    ) -> Result<List<Outcome>, StoreError> {
        let mut key = key_head(&self.shared, caller);
        let head = key.len();
        let mut outcomes: List<Outcome> = List::default();
        let mut refused = false;
        for (i, q) in limits.iter().enumerate() {
            key.truncate(head);
            let end = q.with_span(now, |s, suffix| {
                key.extend_from_slice(suffix);
                s.end
            });
            if refused {
                let used = at_once(store.get_now(key.as_slice()))?;
                outcomes.push(Outcome {
                    quota_idx: i,
                    used,
                    exceeded: used.saturating_add(cost) > q.limit,
                    counted: false,
                    reset_at: end,
                });
                continue;
            }
            let d = match at_once(store.add_within_now(key.as_slice(), cost, q.limit, end)) {
                Ok(d) => d,
                Err(e) => {
                    refund_now(store, &mut key, head, counted(limits, &outcomes), cost, now);
                    return Err(e);
                }
            };
            let (used, exceeded) = match d {
                CounterDecision::Counted { used } => (used, false),
                CounterDecision::Exceeded { used } => (used, true),
            };
            if exceeded {
                refused = true;
                refund_now(store, &mut key, head, counted(limits, &outcomes), cost, now);
                for o in outcomes.iter_mut() {
                    o.counted = false;
                    o.used = o.used.saturating_sub(cost);
                }
            }
            outcomes.push(Outcome {
                quota_idx: i,
                used,
                exceeded,
                counted: !exceeded,
                reset_at: end,
            });
        }
        Ok(outcomes)
    }

    /// [`decide`](Self::decide) with Redis: one atomic script over every window key of the
    /// request (and the earlier buckets of rolling windows), all or nothing — nothing to
    /// roll back when a quota refuses.
    #[cfg(feature = "redis")]
    async fn decide_redis(
        &self,
        store: &super::redis::RedisCounterStore,
        caller: &str,
        limits: &[Quota],
        cost: u64,
        now: SystemTime,
    ) -> Result<List<Outcome>, StoreError> {
        struct Part {
            key: StoreKey,
            earlier: Vec<Vec<u8>>,
            span: super::window::Span,
            rolling: Option<(Duration, u32)>,
        }
        let parts: Vec<Part> = limits
            .iter()
            .map(|q| {
                let span = q.span(now);
                let key = self.store_key(caller, q, &span.label);
                let rolling = q.window.rolling_parts();
                let earlier = match rolling {
                    Some((_, n)) => {
                        let idx: i128 = span.label[1..].parse().unwrap_or(0);
                        (1..i128::from(n))
                            .rev()
                            .map(|back| {
                                let label = format!("r{}", idx - back);
                                self.store_key(caller, q, &label).as_slice().to_vec()
                            })
                            .collect()
                    }
                    None => Vec::new(),
                };
                Part {
                    key,
                    earlier,
                    span,
                    rolling,
                }
            })
            .collect();
        let specs: Vec<super::redis::ChargeSpec<'_>> = parts
            .iter()
            .zip(limits)
            .map(|(p, q)| super::redis::ChargeSpec {
                key: p.key.as_slice(),
                limit: q.limit,
                window_end: p.span.end,
                earlier: p.earlier.clone(),
            })
            .collect();
        let (counted, charged) = store.charge(&specs, cost).await?;
        let mut outcomes = List::default();
        for (i, ((p, q), c)) in parts.iter().zip(limits).zip(charged).enumerate() {
            let reset_at = match p.rolling {
                Some((bucket, n)) if c.oldest_back > 0 => {
                    p.span.start - bucket * c.oldest_back + bucket * n
                }
                _ => p.span.end,
            };
            outcomes.push(Outcome {
                quota_idx: i,
                used: c.used,
                exceeded: !counted && c.used.saturating_add(cost) > q.limit,
                counted,
                reset_at,
            });
        }
        Ok(outcomes)
    }

    /// Gives `cost` back to the counted outcomes (their keys are rebuilt from the caller,
    /// the quota and the decision's time).
    async fn refund_all<T: CounterStore>(
        &self,
        store: &T,
        caller: &str,
        limits: &[Quota],
        outcomes: &List<Outcome>,
        cost: u64,
        now: SystemTime,
    ) {
        #[cfg(feature = "redis")]
        if let Some(r) = redis_store(store) {
            // one call for every counter
            let keys: Vec<StoreKey> = outcomes
                .iter()
                .filter(|o| o.counted)
                .map(|o| {
                    let q = &limits[o.quota_idx];
                    self.store_key(caller, q, &q.span(now).label)
                })
                .collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            if let Err(e) = r.refund_all(&refs, cost).await {
                tracing::warn!(error = %e, "quota refund failed");
            }
            return;
        }
        let mut key = key_head(&self.shared, caller.as_bytes());
        let head = key.len();
        for o in outcomes.iter().filter(|o| o.counted) {
            key.truncate(head);
            limits[o.quota_idx].with_span(now, |_, suffix| key.extend_from_slice(suffix));
            if let Err(e) = store.refund(key.as_slice(), cost).await {
                tracing::warn!(error = %e, "quota refund failed");
            }
        }
    }

    fn fields(limits: &[Quota], outcomes: &List<Outcome>, now: SystemTime) -> Vec<RateLimitField> {
        outcomes
            .iter()
            .map(|o| {
                let q = &limits[o.quota_idx];
                RateLimitField::new(q.name.to_string(), q.limit)
                    .window_secs(q.window.nominal_secs())
                    .remaining(q.limit.saturating_sub(o.used))
                    .reset_after(o.reset_at.duration_since(now).unwrap_or_default())
            })
            .collect()
    }

    /// The 429 (or, in shadow mode, the recorded denial) when a quota refused.
    #[inline]
    fn denial(limits: &[Quota], outcomes: &List<Outcome>, now: SystemTime) -> Option<Denial> {
        if !outcomes.iter().any(|o| o.exceeded) {
            return None;
        }
        Self::denial_of(limits, outcomes, now)
    }

    #[cold]
    #[inline(never)]
    fn denial_of(limits: &[Quota], outcomes: &List<Outcome>, now: SystemTime) -> Option<Denial> {
        let violated: Vec<&Outcome> = outcomes.iter().filter(|o| o.exceeded).collect();
        let names: Vec<&str> = violated
            .iter()
            .map(|o| &*limits[o.quota_idx].name)
            .collect();
        let wait = violated
            .iter()
            .map(|o| o.reset_at.duration_since(now).unwrap_or_default())
            .max()
            .unwrap_or_default();
        let mut d = Denial::new(StatusCode::TOO_MANY_REQUESTS, "quota", "quota_exceeded")
            .with_type(QUOTA_EXCEEDED_TYPE)
            .with_title(QUOTA_EXCEEDED_TITLE)
            .with_detail(format!("Quota exceeded for policy {}", names.join(", ")))
            .with_member("violated-policies", serde_json::json!(names))
            .with_retry_after(wait);
        for f in Self::fields(limits, outcomes, now) {
            d = d.with_rate_limit(f);
        }
        Some(d)
    }
}

/// The `RateLimit` value of an admitted request, written into a stack buffer and copied
/// into the value's one allocation. Built before the inner service is called, so the
/// response future holds one header value, not the outcomes.
fn ratelimit_value(
    limits: &[Quota],
    outcomes: &List<Outcome>,
    now: SystemTime,
) -> Option<HeaderValue> {
    let mut rl = Buf::<128>::default();
    for (i, o) in outcomes.iter().enumerate() {
        let q = &limits[o.quota_idx];
        if i > 0 {
            rl.extend_from_slice(b", ");
        }
        rl.extend_from_slice(&q.cache.r_prefix);
        rl.push_u64(q.limit.saturating_sub(o.used));
        rl.extend_from_slice(b";t=");
        rl.push_u64(ratelimit::ceil_secs(
            o.reset_at.duration_since(now).unwrap_or_default(),
        ));
    }
    HeaderValue::from_bytes(rl.as_slice()).ok()
}

/// The `RateLimit-Policy` value of `limits`: one quota's item is rendered once per quota
/// and cloned here (a reference count); several are joined.
fn policy_value(limits: &[Quota]) -> Option<HeaderValue> {
    if let [one] = limits {
        return one.cache.policy.clone();
    }
    let mut joined = Buf::<256>::default();
    for (i, p) in limits
        .iter()
        .filter_map(|q| q.cache.policy.as_ref())
        .enumerate()
    {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(p.as_bytes());
    }
    HeaderValue::from_bytes(joined.as_slice()).ok()
}

/// Appends `RateLimit-Policy` and `RateLimit`, unless an inner layer already set
/// `RateLimit` (one lookup of `RateLimit`: its entry is where the value goes).
fn append_fields(
    headers: &mut http::HeaderMap,
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
) {
    // names built at compile time: no clone through `Bytes`' vtable per request
    let http::header::Entry::Vacant(slot) =
        headers.entry(const { HeaderName::from_static("ratelimit") })
    else {
        return;
    };
    match ratelimit {
        Some(v) => {
            slot.insert(v);
        }
        None => drop(slot),
    }
    if let Some(p) = policy {
        headers.append(const { HeaderName::from_static("ratelimit-policy") }, p);
    }
}

impl<S, St> Layer<S> for QuotaLayer<St> {
    type Service = QuotaService<S, St>;
    fn layer(&self, inner: S) -> Self::Service {
        QuotaService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The quota service. See the [module docs](super).
pub struct QuotaService<S, St = QuotaStore> {
    inner: S,
    layer: QuotaLayer<St>,
}

impl<S: Clone, St> Clone for QuotaService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for QuotaService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFut<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send + 'static>>;

/// How an admitted request's units are given back.
enum Refund<St> {
    /// Counters of the built-in in-process table `table` (its id): one shard, `(key hash,
    /// id)` of each of the first `n` (one or two) quotas.
    Local {
        table: u64,
        shard: u32,
        n: u32,
        ids: [(u64, u64); 2],
    },
    /// The same for more than two quotas.
    LocalMany {
        table: u64,
        shard: u32,
        ids: Box<[(u64, u64)]>,
    },
    /// Another immediate store: the keys are rebuilt from the caller and the time.
    Keys(Box<(Arc<Shared<St>>, Limits, KeySource, SystemTime)>),
}

impl<St> Refund<St> {
    #[inline(always)]
    fn local(table: &Table, shard: usize, charges: &[Charge]) -> Self {
        let (table, shard) = (table.id(), shard as u32);
        match charges {
            [a] => Self::Local {
                table,
                shard,
                n: 1,
                ids: [(a.hash, a.id), (0, 0)],
            },
            [a, b] => Self::Local {
                table,
                shard,
                n: 2,
                ids: [(a.hash, a.id), (b.hash, b.id)],
            },
            _ => Self::LocalMany {
                table,
                shard,
                ids: charges.iter().map(|c| (c.hash, c.id)).collect(),
            },
        }
    }
}

/// What is left to do when the inner service answers an admitted request (in-process
/// stores only; their calls complete at once): the refund, unless every call counts.
struct After<St> {
    policy: CountPolicy,
    refund: Refund<St>,
    cost: u64,
}

/// `RateLimit-Policy` and `RateLimit` of an admitted response (with
/// [`QuotaLayerBuilder::headers_on_success`]).
type Fields = (FieldPolicy, Option<HeaderValue>);

/// The `RateLimit-Policy` part of [`Fields`].
enum FieldPolicy {
    /// A plan table's, with its shared field template.
    Template(&'static FieldTemplate),
    /// Rendered for this request (a custom provider's limits), if it could be.
    Value(Option<HeaderValue>),
}

impl<St: CounterStore> After<St> {
    #[inline]
    fn finish<B, E>(&mut self, result: &mut Result<Response<B>, E>) {
        if self
            .policy
            .refunds(result.as_ref().ok().map(|r| r.status()))
        {
            self.refund();
        }
    }

    #[cold]
    #[inline(never)]
    fn refund(&self) {
        match &self.refund {
            Refund::Local {
                table,
                shard,
                n,
                ids,
            } => {
                if let Some(t) = Table::by_id(*table) {
                    let ids = &ids[..(*n as usize).min(ids.len())];
                    t.refund_ids(*shard as usize, ids.iter().copied(), self.cost);
                }
            }
            Refund::LocalMany { table, shard, ids } => {
                if let Some(t) = Table::by_id(*table) {
                    t.refund_ids(*shard as usize, ids.iter().copied(), self.cost);
                }
            }
            Refund::Keys(keys) => {
                let (shared, limits, source, now) = &**keys;
                let mut caller = CallerKey::default();
                source.as_ref().write(&mut caller);
                let mut key = key_head(shared, caller.as_slice());
                let head = key.len();
                refund_now(
                    &shared.store,
                    &mut key,
                    head,
                    limits.iter(),
                    self.cost,
                    *now,
                );
            }
        }
    }
}

pin_project! {
    /// The response future of [`QuotaService`].
    #[project = RfProj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F, St, B, E> {
        /// Passed on (uncounted, or counted by an in-process store).
        Inner {
            #[pin]
            fut: F,
            after: Option<After<St>>,
        },
        /// Passed on; the response gets the `RateLimit` fields.
        WithFields {
            #[pin]
            fut: F,
            after: Option<After<St>>,
            // boxed: the default variant's future stays small (fewer bytes per move)
            fields: Box<Fields>,
        },
        /// Refused (boxed: keeps the future small for the common, admitted case).
        Denied { res: Option<Box<Response<B>>> },
        /// Deciding with a remote store (or handling a store failure).
        Waiting { fut: BoxFut<Response<B>, E> },
    }
}

impl<F, St, B, E> Future for ResponseFuture<F, St, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    St: CounterStore,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // the common variant stays small enough to be inlined into the caller's poll; the
        // others are out of line
        match self.project() {
            RfProj::Inner { fut, after } => {
                let mut out = std::task::ready!(fut.poll(cx));
                // finished in place: the response is not moved through the refund
                if let Some(a) = after {
                    a.finish(&mut out);
                    *after = None;
                }
                Poll::Ready(out)
            }
            RfProj::WithFields { fut, after, fields } => poll_with_fields(fut, after, fields, cx),
            RfProj::Denied { res } => Poll::Ready(Ok(take_denied(res))),
            RfProj::Waiting { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[inline(never)]
fn poll_with_fields<F, St, B, E>(
    fut: Pin<&mut F>,
    after: &mut Option<After<St>>,
    fields: &mut Fields,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>>,
    St: CounterStore,
{
    let mut out = std::task::ready!(fut.poll(cx));
    if let Some(a) = after {
        a.finish(&mut out);
        *after = None;
    }
    if let Ok(res) = &mut out {
        let ratelimit = fields.1.take();
        match (&mut fields.0, ratelimit) {
            // an empty map gets the template (no inner `RateLimit` to keep)
            (FieldPolicy::Template(t), Some(rl)) if res.headers().is_empty() => {
                t.add_to(res.headers_mut(), rl)
            }
            (FieldPolicy::Template(t), rl) => {
                append_fields(res.headers_mut(), Some(t.policy.clone()), rl)
            }
            (FieldPolicy::Value(p), rl) => append_fields(res.headers_mut(), p.take(), rl),
        }
    }
    Poll::Ready(out)
}

#[cold]
#[inline(never)]
fn take_denied<B>(res: &mut Option<Box<Response<B>>>) -> Response<B> {
    *res.take().expect("ResponseFuture polled after completion")
}

impl<St> fmt::Debug for After<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("After")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// Who is counted (owned: kept by futures that outlive the request's borrow).
enum KeySource {
    Principal(Principal),
    Ip(std::net::IpAddr),
    Header(HeaderValue),
}

impl KeySource {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Self::Principal(p) => KeyRef::Principal(p),
            Self::Ip(ip) => KeyRef::Ip(*ip),
            Self::Header(v) => KeyRef::Header(v),
        }
    }
}

/// Who is counted, borrowed from the request.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Principal(&'a Principal),
    Ip(std::net::IpAddr),
    Header(&'a HeaderValue),
}

impl<'a> KeyRef<'a> {
    /// The fallback caller of a request without a principal (`ip`: its client address,
    /// when callers are keyed by address). `None` when the caller cannot be identified.
    fn fallback<B>(
        req: &'a Request<B>,
        shared: &Shared<impl Sized>,
        ip: Option<std::net::IpAddr>,
    ) -> Option<Self> {
        match &shared.key_fallback {
            KeyFallback::ClientIp => ip.map(Self::Ip),
            KeyFallback::Header(name) => {
                let v = req.headers().get(name)?;
                let s = v.to_str().ok()?;
                (!s.is_empty() && s.len() <= 128).then_some(Self::Header(v))
            }
            KeyFallback::None => None,
        }
    }

    #[allow(clippy::wrong_self_convention)]
    fn to_owned(self) -> KeySource {
        match self {
            Self::Principal(p) => KeySource::Principal(p.clone()),
            Self::Ip(ip) => KeySource::Ip(ip),
            Self::Header(v) => KeySource::Header(v.clone()),
        }
    }

    fn principal(self) -> Option<&'a Principal> {
        match self {
            Self::Principal(p) => Some(p),
            _ => None,
        }
    }

    /// Writes the counting key into `out`: `p:<principal id>`, `ip:<address>` or
    /// `h:<header value>`.
    fn write(self, out: &mut CallerKey) {
        use std::fmt::Write as _;
        match self {
            Self::Principal(p) => {
                out.extend_from_slice(b"p:");
                out.extend_from_slice(p.id().as_bytes());
            }
            Self::Ip(ip) => {
                let _ = write!(out, "ip:{ip}");
            }
            Self::Header(v) => {
                out.extend_from_slice(b"h:");
                out.extend_from_slice(v.as_bytes());
            }
        }
    }

    /// Writes the counting key %-escaped (as in store keys), without building it first.
    #[inline]
    fn write_escaped<const N: usize>(self, out: &mut Buf<N>) {
        match self {
            Self::Principal(p) => {
                out.extend_from_slice(b"p%3A");
                push_escaped(out, p.id().as_bytes());
            }
            Self::Ip(_) => {
                let mut k = CallerKey::default();
                self.write(&mut k);
                push_escaped_caller(out, k.as_slice());
            }
            Self::Header(v) => {
                out.extend_from_slice(b"h%3A");
                push_escaped(out, v.as_bytes());
            }
        }
    }
}

fn cost_of(shared: &Shared<impl Sized>, method: &Method, path: &str, query: Option<&str>) -> u64 {
    match shared.weights.as_ref().and_then(|w| w.at(method, path)) {
        Some(m) => m.value.for_query(query, shared.default_cost),
        None => shared.default_cost,
    }
}

/// The Redis store behind a store type, if it is one.
#[cfg(feature = "redis")]
#[inline]
fn redis_store<St: 'static>(store: &St) -> Option<&super::redis::RedisCounterStore> {
    let any = store as &dyn std::any::Any;
    if let Some(QuotaStore::Redis(r)) = any.downcast_ref::<QuotaStore>() {
        return Some(r);
    }
    any.downcast_ref::<super::redis::RedisCounterStore>()
}

/// The built-in in-process table behind a store, if it is one of this module's stores.
#[inline]
fn local_table<St: 'static>(store: &St) -> Option<&Table> {
    let any = store as &dyn std::any::Any;
    if let Some(q) = any.downcast_ref::<QuotaStore>() {
        return q.table();
    }
    if let Some(m) = any.downcast_ref::<MemoryCounterStore>() {
        return Some(m.table());
    }
    any.downcast_ref::<super::store::DurableCounterStore>()
        .map(|d| d.table())
}

/// An empty charge (filled in by [`decide_local`]).
const BLANK: Charge = Charge {
    at: (0, 0),
    hash: 0,
    limit: 0,
    end_ns: 0,
    used: 0,
    exceeded: false,
    id: 0,
};

/// Decides calendar quotas with the in-process table: the keys of all quotas are written
/// into one buffer, hashed once each, and charged all or nothing under one shard lock.
/// `None` when a quota cannot take this path (a rolling window, an uncacheable label).
#[inline]
fn decide_local<St>(
    shared: &Shared<St>,
    table: &Table,
    caller: KeyRef<'_>,
    limits: &[Quota],
    charges: &mut [Charge],
    cost: u64,
    now_ns: u64,
) -> Option<Result<(bool, usize), StoreError>> {
    let mut keys = Buf::<160>::default();
    match (caller, &shared.principal_head) {
        (KeyRef::Principal(p), Some(head)) => {
            keys.extend_padded(head);
            // a short id is copied as one padded block and checked for bytes to escape
            // in one (vectorised) pass
            match Padded::new_short(p.id().as_bytes()) {
                Some(id) if !id.needs_escape() => keys.extend_padded(&id),
                _ => push_escaped(&mut keys, p.id().as_bytes()),
            }
        }
        _ => {
            keys.extend_from_slice(shared.key_head.as_bytes());
            caller.write_escaped(&mut keys);
        }
    }
    keys.push(b'}');
    let head = keys.len();
    // the hash tag is the escaped caller, unless the prefix has braces of its own
    let tag = match shared.tag_at {
        Some(at) => &keys.as_slice()[at..head - 1],
        None => super::store::tag(keys.as_slice()),
    };
    let shard = table.shard_of_tag(tag);
    for (q, c) in limits.iter().zip(charges.iter_mut()) {
        let (end_ns, label) = q.cache.span.get_padded(now_ns).or_else(|| {
            let span = q.calendar_span(now_ns)?;
            Some((span.end_nanos(), span.label_padded()))
        })?;
        // the first key starts with the head; the next ones copy it
        let start = if keys.len() == head {
            0
        } else {
            let start = keys.len();
            keys.extend_from_within(..head);
            start
        };
        match &q.cache.key_mid {
            Some(mid) => {
                keys.extend_padded(mid);
                keys.extend_padded(&label);
            }
            None => q.push_suffix(&mut keys, label.as_slice()),
        }
        let end = keys.len();
        let key = &keys.as_slice()[start..end];
        c.at = (start as u32, end as u32);
        c.hash = table.hash_key(key);
        c.limit = q.limit;
        c.end_ns = end_ns;
    }
    Some(
        table
            .charge(shard, keys.as_slice(), charges, cost, now_ns)
            .map(|counted| (counted, shard)),
    )
}

/// The `RateLimit` value of a local decision.
#[inline]
fn local_ratelimit(limits: &[Quota], charges: &[Charge], now_ns: u64) -> Option<HeaderValue> {
    let mut rl = Buf::<128>::default();
    for (i, (q, c)) in limits.iter().zip(charges).enumerate() {
        if i > 0 {
            rl.extend_from_slice(b", ");
        }
        rl.extend_from_slice(&q.cache.r_prefix);
        rl.push_u64(q.limit.saturating_sub(c.used));
        rl.extend_from_slice(b";t=");
        rl.push_u64(c.end_ns.saturating_sub(now_ns).div_ceil(1_000_000_000));
    }
    HeaderValue::from_bytes(rl.as_slice()).ok()
}

/// The outcomes of a refused local decision, for the denial.
#[cold]
fn local_outcomes(charges: &[Charge]) -> List<Outcome> {
    let mut out = List::default();
    for (i, c) in charges.iter().enumerate() {
        out.push(Outcome {
            quota_idx: i,
            used: c.used,
            exceeded: c.exceeded,
            counted: false,
            reset_at: UNIX_EPOCH + Duration::from_nanos(c.end_ns),
        });
    }
    out
}

/// Decides the request of `$caller` (borrowed from `$req`) and passes it on or refuses it:
/// the body of [`QuotaService::call`] and [`anonymous`], expanded in both.
macro_rules! admit {
    ($layer:ident, $inner:ident, $req:ident, $caller:ident) => {{
        let shared = &*$layer.shared;
    let principal = $caller.principal();
    let plan = principal.and_then(|p| p.plan());
    // the plan table's entries carry their `RateLimit-Policy` value; a provider's
    // limits get theirs built per request
    let owned;
    let (limits, entry): (&Limits, Option<&PlanEntry>) = match &shared.plans {
        Some(table) => match table.entry(plan) {
            Some(e) => (&e.limits, Some(e)),
            None => return unknown_plan($layer, $req, $inner),
        },
        None => {
            let mut key = CallerKey::default();
            $caller.write(&mut key);
            owned = $layer.limits_for(&Caller {
                principal,
                plan,
                key: key.as_str(),
            });
            match &owned {
                Some(l) => (l, None),
                None => return unknown_plan($layer, $req, $inner),
            }
        }
    };
    let cost = cost_of(shared, $req.method(), $req.uri().path(), $req.uri().query());
    if cost == 0 || limits.is_empty() {
        return ResponseFuture::Inner {
            fut: inner_call($inner, $req),
            after: None,
        };
    }
    // nanoseconds since the epoch; a `SystemTime` only where one is needed (store calls,
    // denials)
    let now_ns = shared.clock.wall_coarse_unix_nanos();
    let now = || match now_ns {
        Some(ns) => UNIX_EPOCH + Duration::from_nanos(ns),
        None => shared.clock.wall_coarse(),
    };

    // The built-in in-process stores: decide here under one lock, without boxing.
    let mut failed = false;
    let mut inline = [BLANK; 2];
    let mut heap = Vec::new();
    let charges: &mut [Charge] = if limits.len() <= inline.len() {
        &mut inline[..limits.len()]
    } else {
        heap.resize(limits.len(), BLANK);
        &mut heap
    };
    if let Some(table) = local_table(&shared.store)
        && let Some(now_ns) = now_ns
        && let Some(decided) = decide_local(shared, table, $caller, limits, charges, cost, now_ns)
    {
        let (counted, shard) = match decided {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "quota store failed");
                failed = true;
                let source = $caller.to_owned();
                return call_slow($layer, $inner, $req, source, limits.clone(), cost, now(), failed);
            }
        };
        let charges = &*charges;
        if !counted {
            let outcomes = local_outcomes(charges);
            let d = QuotaLayer::<St>::denial_of(limits, &outcomes, now());
            return deny_counted($layer, d, $req, $inner);
        }
        let fields = shared.headers_on_success.then(|| {
            let policy = match entry {
                Some(PlanEntry {
                    template: Some(t), ..
                }) => FieldPolicy::Template(t),
                Some(e) => FieldPolicy::Value(e.policy.clone()),
                None => FieldPolicy::Value(policy_value(limits)),
            };
            (policy, local_ratelimit(limits, charges, now_ns))
        });
        let after = if shared.policy != CountPolicy::EveryCall {
            Some(After {
                policy: shared.policy,
                refund: Refund::local(table, shard, charges),
                cost,
            })
        } else {
            None
        };
        // admitted responses without fields (the default) keep the future's state small
        return match fields {
            None => ResponseFuture::Inner {
                fut: inner_call($inner, $req),
                after,
            },
            Some(fields) => ResponseFuture::WithFields {
                fut: inner_call($inner, $req),
                after,
                fields: Box::new(fields),
            },
        };
    }
    let limits = limits.clone();
    let source = $caller.to_owned();
    call_slow($layer, $inner, $req, source, limits, cost, now(), failed)
    }};
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for QuotaService<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: CounterStore + Clone,
    ReqB: Send + 'static,
    ResB: BodyFromBytes + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, St, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = &self.layer;
        // the principal is looked up once; a request without one takes the fallback
        let caller = match req.extensions().get::<Principal>() {
            Some(p) => KeyRef::Principal(p),
            None => return anonymous(layer, inner, req),
        };
        // the decision is expanded here, not called: the request and the inner future are
        // then moved fewer times
        admit!(layer, inner, req, caller)
    }
}

/// A request without a principal: keyed by the fallback (resolving the client address may
/// record it in the request's extensions).
#[inline(never)]
fn anonymous<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    inner: S,
    mut req: Request<ReqB>,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: CounterStore + Clone,
    ReqB: Send + 'static,
    ResB: BodyFromBytes + Send + 'static,
{
    let shared = &*layer.shared;
    let ip = match shared.key_fallback {
        KeyFallback::ClientIp => {
            client_ip_of(&mut req, &shared.resolver).map(|ip| ip.prefix_key(64))
        }
        _ => None,
    };
    let Some(caller) = KeyRef::fallback(&req, shared, ip) else {
        return key_missing(layer, req, inner);
    };
    admit!(layer, inner, req, caller)
}

#[cold]
#[inline(never)]
fn key_missing<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    req: Request<ReqB>,
    inner: S,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: BodyFromBytes,
{
    let d = Denial::new(StatusCode::FORBIDDEN, "quota", "quota_key_missing")
        .with_detail("The caller could not be identified for quota accounting.");
    deny_or_shadow(layer, d, req, inner)
}

/// Any store but the built-in in-process table (or a rolling window): an immediate
/// store decides here, a remote store (or a failed decision) in a boxed future.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn call_slow<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    mut inner: S,
    req: Request<ReqB>,
    source: KeySource,
    limits: Limits,
    cost: u64,
    now: SystemTime,
    failed: bool,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: CounterStore + Clone,
    ReqB: Send + 'static,
    ResB: BodyFromBytes + Send + 'static,
{
    let shared = &*layer.shared;
    let mut key = CallerKey::default();
    source.as_ref().write(&mut key);
    if !failed
        && shared.store.is_immediate()
        && let Ok(outcomes) = if local_table(&shared.store).is_some()
            || limits.iter().any(|q| q.window.is_rolling())
        {
            layer
                .decide(&shared.store, key.as_str(), &limits, cost, now)
                .now_or_never()
                .unwrap_or_else(|| Err(StoreError::Unavailable(String::new())))
        } else {
            layer.decide_now(&shared.store, key.as_slice(), &limits, cost, now)
        }
    {
        if let Some(d) = QuotaLayer::<St>::denial(&limits, &outcomes, now) {
            return deny_counted(layer, Some(d), req, inner);
        }
        let fields = shared.headers_on_success.then(|| {
            (
                FieldPolicy::Value(policy_value(&limits)),
                ratelimit_value(&limits, &outcomes, now),
            )
        });
        let after = (shared.policy != CountPolicy::EveryCall).then(|| After {
            policy: shared.policy,
            refund: Refund::Keys(Box::new((layer.shared.clone(), limits, source, now))),
            cost,
        });
        return match fields {
            None => ResponseFuture::Inner {
                fut: inner.call(req),
                after,
            },
            Some(fields) => ResponseFuture::WithFields {
                fut: inner.call(req),
                after,
                fields: Box::new(fields),
            },
        };
    }

    // A remote store (or a failed in-process decision, which counted nothing): decide
    // asynchronously and handle store failures by the failure mode.
    let layer = layer.clone();
    let key = key.as_str().to_owned();
    ResponseFuture::Waiting {
        fut: Box::pin(async move {
            let shared = &*layer.shared;
            let mut used_fallback = false;
            let outcomes = match layer.decide(&shared.store, &key, &limits, cost, now).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "quota store failed");
                    match (shared.failure_mode, &shared.fallback_store) {
                        (FailureMode::Allow, _) => return inner.call(req).await,
                        (FailureMode::LocalFallback, Some(fb)) => {
                            used_fallback = true;
                            match layer.decide(fb, &key, &limits, cost, now).await {
                                Ok(o) => o,
                                Err(_) => return Ok(store_down(&layer, &req)),
                            }
                        }
                        _ => return Ok(store_down(&layer, &req)),
                    }
                }
            };
            if let Some(d) = QuotaLayer::<St>::denial(&limits, &outcomes, now) {
                if shared.shadow {
                    tracing::info!("quota would deny (shadow mode)");
                    crate::facts::record_shadow_denial(req.extensions(), d);
                    return inner.call(req).await;
                }
                tracing::debug!("quota denied request");
                return Ok(layer.renderer.respond(d, &req));
            }
            let result = inner.call(req).await;
            let status = result.as_ref().ok().map(|r| r.status());
            if shared.policy.refunds(status) {
                if used_fallback {
                    if let Some(fb) = &shared.fallback_store {
                        layer
                            .refund_all(fb, &key, &limits, &outcomes, cost, now)
                            .await;
                    }
                } else {
                    layer
                        .refund_all(&shared.store, &key, &limits, &outcomes, cost, now)
                        .await;
                }
            }
            let mut res = result?;
            if shared.headers_on_success {
                let rl = ratelimit_value(&limits, &outcomes, now);
                append_fields(res.headers_mut(), policy_value(&limits), rl);
            }
            Ok(res)
        }),
    }
}

#[inline(always)]
fn inner_call<S: Service<R>, R>(mut inner: S, req: R) -> S::Future {
    inner.call(req)
}

/// A request over its quota: refused with the denial, or let through uncounted in shadow
/// mode.
#[cold]
#[inline(never)]
fn deny_counted<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    d: Option<Denial>,
    req: Request<ReqB>,
    mut inner: S,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: BodyFromBytes,
{
    let Some(d) = d else {
        return ResponseFuture::Inner {
            fut: inner.call(req),
            after: None,
        };
    };
    if layer.shared.shadow {
        tracing::info!("quota would deny (shadow mode)");
        crate::facts::record_shadow_denial(req.extensions(), d);
        return ResponseFuture::Inner {
            fut: inner.call(req),
            after: None,
        };
    }
    tracing::debug!("quota denied request");
    ResponseFuture::Denied {
        res: Some(Box::new(layer.renderer.respond(d, &req))),
    }
}

#[cold]
#[inline(never)]
fn unknown_plan<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    req: Request<ReqB>,
    inner: S,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: BodyFromBytes,
{
    let d = Denial::new(StatusCode::FORBIDDEN, "quota", "unknown_plan")
        .with_detail("No quota is configured for the caller's plan.");
    deny_or_shadow(layer, d, req, inner)
}

fn store_down<St, ReqB, ResB: BodyFromBytes>(
    layer: &QuotaLayer<St>,
    req: &Request<ReqB>,
) -> Response<ResB> {
    let d = Denial::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "quota",
        "quota_store_unavailable",
    )
    .with_detail("Quota accounting is temporarily unavailable.")
    .with_retry_after(Duration::from_secs(1));
    layer.renderer.respond(d, req)
}

fn deny_or_shadow<S, St, ReqB, ResB>(
    layer: &QuotaLayer<St>,
    d: Denial,
    req: Request<ReqB>,
    mut inner: S,
) -> ResponseFuture<S::Future, St, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: BodyFromBytes,
{
    if layer.shared.shadow {
        crate::facts::record_shadow_denial(req.extensions(), d);
        return ResponseFuture::Inner {
            fut: inner.call(req),
            after: None,
        };
    }
    ResponseFuture::Denied {
        res: Some(Box::new(layer.renderer.respond(d, &req))),
    }
}
