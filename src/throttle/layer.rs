//! The throttle layer, its service and response future.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use pin_project_lite::pin_project;
use strength_reduce::StrengthReducedU64;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "redis")]
use super::fast::InlineList;
use super::memory::{GcraNs, InFlightTable, MemoryRateStore, TimeSource, Verdict};
use super::policy::{Action, Key, KeyPart, Limit, Policy};
use crate::body::BodyFromBytes;
use crate::client_ip::{ClientIp, ClientIpResolver};
use crate::clock::SharedClock;
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::fast_hash::{FastHasher, Seeds};
use crate::principal::Principal;
use crate::ratelimit::{
    FieldTemplate, RATELIMIT_NAME, RATELIMIT_POLICY_NAME, RateLimitField, ceil_secs,
    intern_template as intern,
};
use crate::route::{MatchedRoute, RouteSet};
#[cfg(feature = "redis")]
use crate::store::{FailureMode, Gcra, RateDecision, RateStore};

/// The problem type of a throttle denial (draft-ietf-httpapi-ratelimit-headers).
pub const PROBLEM_QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

pub(crate) struct PolicyRt {
    name: Arc<str>,
    limit: Limit,
    gcra: GcraNs,
    /// `tau / t`: the burst in requests.
    burst: u64,
    /// `t` as a multiply-and-shift divisor (a 64-bit division costs ~10 ns per request).
    t_div: StrengthReducedU64,
    /// Both fields of recent allowed-response states, direct-mapped by `(r, t)`.
    entries: EntrySlots,
    key: Key,
    /// The key is the client IP alone (the common case, hashed without the generic walk).
    ip_only: bool,
    action: Action,
    cost: u32,
    routes: Option<RouteSet<u32>>,
    shadow: bool,
    mem: Option<MemoryRateStore>,
    inflight: Option<InFlightTable>,
    /// The `RateLimit-Policy` value and the fields of an allowed response.
    fields: &'static FieldTemplate,
    /// `"<name>";r=`, rendered once at build time.
    field_prefix: Box<str>,
    /// Process-unique id of this policy instance (keys the per-thread value cache).
    id: u64,
    quota: u64,
    window: Option<u64>,
}

impl PolicyRt {
    fn field(&self, remaining: u64, t: Option<u64>) -> RateLimitField {
        let mut f = RateLimitField::new(self.name.to_string(), self.quota).remaining(remaining);
        if let Some(w) = self.window {
            f = f.window_secs(w);
        }
        if matches!(self.limit, Limit::InFlight(_)) {
            f = f.quota_unit("concurrent-requests");
        }
        if let Some(t) = t {
            f = f.reset_secs(t);
        }
        f
    }
}

#[cfg(feature = "redis")]
struct RedisBackend {
    store: super::redis::RedisRateStore,
    failure: FailureMode,
}

struct Shared {
    policies: Vec<PolicyRt>,
    resolver: ClientIpResolver,
    v6_prefix: u8,
    headers_on_allowed: bool,
    hasher: Seeds,
    /// Some policy is keyed by client IP.
    needs_ip: bool,
    /// Some policy is an in-flight cap.
    has_in_flight: bool,
    /// The layer's only policy is an in-memory rate policy keyed by client IP for every
    /// route (the common per-IP limit): decided on a straight path, see [`Throttle::call`].
    single_ip_rate: bool,
    #[cfg(feature = "redis")]
    redis: Option<RedisBackend>,
}

/// Builder for [`ThrottleLayer`].
pub struct ThrottleBuilder {
    policies: Vec<Policy>,
    clock: Option<SharedClock>,
    resolver: ClientIpResolver,
    v6_prefix: u8,
    headers_on_allowed: bool,
    max_keys: usize,
    renderer: Renderer,
    #[cfg(feature = "redis")]
    redis: Option<RedisBackend>,
}

impl std::fmt::Debug for ThrottleBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleBuilder")
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl ThrottleBuilder {
    /// Adds a policy. All policies that apply to a request must pass.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }
    /// The clock (default: monotonic system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The resolver used when no outer layer inserted a [`ClientIp`] (default: peer only;
    /// forwarding headers are ignored unless trusted proxies are configured).
    pub fn resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }
    /// IPv6 prefix length client-IP keys are masked to (default 64).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }
    /// Adds `RateLimit-Policy`/`RateLimit` fields to allowed responses too (denials always
    /// carry them).
    pub fn rate_limit_headers(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }
    /// Cap on keys tracked in memory per policy (default 1 000 000). When reached, idle keys
    /// are dropped; keys that still carry state are never evicted, and new keys share one
    /// overflow bucket per shard until room frees up.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }
    /// The denial renderer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Decides rate policies in Redis (shared by a fleet) with the given failure mode.
    /// In-flight caps stay per instance.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: super::redis::RedisRateStore, failure: FailureMode) -> Self {
        self.redis = Some(RedisBackend { store, failure });
        self
    }

    /// Builds the layer.
    pub fn build(self) -> Result<ThrottleLayer, ConfigError> {
        // without an injected clock, the tables read the CPU's time-stamp counter
        let time = match self.clock {
            Some(c) => TimeSource::Clock(c),
            None => TimeSource::quanta(),
        };
        let mut policies = Vec::with_capacity(self.policies.len());
        for (i, p) in self.policies.into_iter().enumerate() {
            let key = format!("throttle.policies[{i}]");
            p.validate(&key)?;
            let routes = p.route_set(&key)?;
            if routes.is_none() && p.key.0.iter().any(|k| matches!(k, KeyPart::PathParam(_))) {
                return Err(ConfigError::invalid(
                    format!("{key}.key"),
                    "a path parameter key needs route patterns",
                ));
            }
            let (gcra, quota, window, mem, inflight) = match p.limit {
                Limit::Rate { rate, burst } => (
                    GcraNs::from(crate::store::Gcra {
                        emission_interval: rate.emission_interval(),
                        burst,
                    }),
                    u64::from(rate.count()),
                    Some(ceil_secs(rate.period()).max(1)),
                    Some(MemoryRateStore::with_time(self.max_keys, time.clone())),
                    None,
                ),
                Limit::InFlight(max) => (
                    GcraNs { t: 1, tau: 1 },
                    u64::from(max),
                    None,
                    None,
                    Some(InFlightTable::new()),
                ),
            };
            let mut rt = PolicyRt {
                name: p.name.clone(),
                limit: p.limit,
                gcra,
                burst: gcra.tau / gcra.t,
                t_div: StrengthReducedU64::new(gcra.t.max(1)),
                entries: EntrySlots::default(),
                ip_only: matches!(p.key.0.as_slice(), [KeyPart::ClientIp]),
                key: p.key,
                action: p.action,
                cost: p.cost,
                routes,
                shadow: p.shadow,
                mem,
                inflight,
                fields: intern(&HeaderValue::from_static("")).expect("an empty value"),
                field_prefix: format!("\"{}\";r=", p.name).into(),
                id: next_policy_id(),
                quota,
                window,
            };
            rt.fields = crate::ratelimit::policy_value(&[rt.field(0, None)])
                .as_ref()
                .and_then(intern)
                .ok_or_else(|| ConfigError::invalid(format!("{key}.name"), "not a valid field"))?;
            policies.push(rt);
        }
        let needs_ip = policies
            .iter()
            .any(|p| p.key.0.iter().any(|k| matches!(k, KeyPart::ClientIp)));
        let has_in_flight = policies.iter().any(|p| p.inflight.is_some());
        let single_ip_rate = matches!(
            policies.as_slice(),
            [p] if p.mem.is_some() && p.ip_only && p.routes.is_none()
        );
        Ok(ThrottleLayer {
            shared: Arc::new(Shared {
                policies,
                needs_ip,
                has_in_flight,
                single_ip_rate,
                resolver: self.resolver,
                v6_prefix: self.v6_prefix,
                headers_on_allowed: self.headers_on_allowed,
                hasher: Seeds::random(),
                #[cfg(feature = "redis")]
                redis: self.redis,
            }),
            renderer: self.renderer,
        })
    }
}

/// Layer that throttles requests by key. See the [module docs](super).
///
/// Clones share their state (a limit never multiplies when axum clones the service).
#[derive(Clone)]
pub struct ThrottleLayer {
    shared: Arc<Shared>,
    renderer: Renderer,
}

impl std::fmt::Debug for ThrottleLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field(
                "policies",
                &self
                    .shared
                    .policies
                    .iter()
                    .map(|p| &*p.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ThrottleLayer {
    /// Starts a builder.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder {
            policies: Vec::new(),
            clock: None,
            resolver: ClientIpResolver::default(),
            v6_prefix: 64,
            headers_on_allowed: false,
            max_keys: 1_000_000,
            renderer: Renderer::default(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Keys currently tracked in memory by the named policy (for monitoring and tests).
    pub fn tracked_keys(&self, policy: &str) -> Option<usize> {
        self.shared
            .policies
            .iter()
            .find(|p| &*p.name == policy)
            .and_then(|p| p.mem.as_ref())
            .map(MemoryRateStore::len)
    }
    /// Bytes held by the named policy's in-memory table.
    pub fn memory_bytes(&self, policy: &str) -> Option<usize> {
        self.shared
            .policies
            .iter()
            .find(|p| &*p.name == policy)
            .and_then(|p| p.mem.as_ref())
            .map(MemoryRateStore::memory_bytes)
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;
    fn layer(&self, inner: S) -> Throttle<S> {
        Throttle {
            inner,
            layer: self.clone(),
        }
    }
}

/// The throttle service. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct Throttle<S> {
    inner: S,
    layer: ThrottleLayer,
}

impl<S> Throttle<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: ThrottleLayer) -> Self {
        Self { inner, layer }
    }
}

// ---- keys -----------------------------------------------------------------------------

trait Sink {
    fn ip(&mut self, ip: IpAddr);
    fn bytes(&mut self, tag: u8, b: &[u8]);
}

impl Sink for FastHasher {
    #[inline]
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.write_u32(u32::from(v4)),
            IpAddr::V6(v6) => self.write_u128(u128::from(v6)),
        }
    }
    #[inline]
    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.write_u8(tag);
        self.write_usize(b.len());
        self.write(b);
    }
}

impl Sink for Vec<u8> {
    fn ip(&mut self, ip: IpAddr) {
        self.extend_from_slice(b"|ip=");
        self.extend_from_slice(ip.to_string().as_bytes());
    }
    fn bytes(&mut self, tag: u8, b: &[u8]) {
        self.push(b'|');
        self.push(tag);
        self.push(b'=');
        for &c in b {
            if c.is_ascii_alphanumeric() || b"-_.:/".contains(&c) {
                self.push(c);
            } else {
                self.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
        }
    }
}

fn path_param<'a>(template: &str, path: &'a str, name: &str) -> Option<&'a str> {
    let want = format!("{{{name}}}");
    let idx = template.split('/').position(|s| s == want)?;
    path.split('/').nth(idx).filter(|s| !s.is_empty())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode_str(k).decode_utf8().ok()? == name).then_some(v)
    })
}

/// Writes the key of `p` for this request; `false` when the policy does not apply.
fn write_key<B, W: Sink>(
    p: &PolicyRt,
    shared: &Shared,
    req: &Request<B>,
    ip: Option<ClientIp>,
    template: Option<&str>,
    out: &mut W,
) -> bool {
    for part in &p.key.0 {
        match part {
            KeyPart::ClientIp => match ip {
                Some(ip) => out.ip(ip.prefix_key(shared.v6_prefix)),
                None => out.bytes(b'i', b"?"),
            },
            KeyPart::Principal => match req.extensions().get::<Principal>() {
                Some(pr) => out.bytes(b'p', pr.id().as_bytes()),
                None => return false,
            },
            KeyPart::Header(h) => match req.headers().get(h) {
                Some(v) => out.bytes(b'h', v.as_bytes()),
                None => return false,
            },
            KeyPart::Route => {
                let t = template
                    .map(str::to_owned)
                    .or_else(|| {
                        req.extensions()
                            .get::<MatchedRoute>()
                            .map(|m| m.template.to_string())
                    })
                    .unwrap_or_else(|| req.uri().path().to_owned());
                out.bytes(b'r', t.as_bytes());
            }
            KeyPart::PathParam(name) => {
                let Some(v) = template.and_then(|t| path_param(t, req.uri().path(), name)) else {
                    return false;
                };
                let v = percent_decode_str(v).collect::<Vec<u8>>();
                out.bytes(b'a', &v);
            }
            KeyPart::Query(name) => {
                let Some(v) = query_param(req.uri().query(), name) else {
                    return false;
                };
                let v = percent_decode_str(&v.replace('+', " ")).collect::<Vec<u8>>();
                out.bytes(b'q', &v);
            }
        }
    }
    true
}

/// `grpc-timeout` (`<digits><H|M|S|m|u|n>`), if present and valid.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---- decisions ------------------------------------------------------------------------

/// A rate policy that applies to a request (remote store only).
#[cfg(feature = "redis")]
struct Applied {
    idx: usize,
    hash: u64,
    cost: u32,
    max_wait: u64,
    key: Vec<u8>,
}

/// Releases in-flight slots when the response is done (or the request dropped).
pub struct InFlightGuards {
    shared: Arc<Shared>,
    held: Vec<(usize, u64)>,
}

impl Drop for InFlightGuards {
    fn drop(&mut self) {
        for (i, h) in &self.held {
            if let Some(t) = &self.shared.policies[*i].inflight {
                t.release(*h);
            }
        }
    }
}

impl std::fmt::Debug for InFlightGuards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlightGuards(..)")
    }
}

fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// `RateLimit-Policy`/`RateLimit` field pairs waiting to be added to an allowed response
/// (inline for the usual single policy).
pub struct RateLimitFields(Fields);

enum Fields {
    None,
    /// Both fields of one policy, interned (the usual case: 8 bytes to move around).
    Entry(&'static FieldsEntry),
    /// Anything else, boxed so that it does not widen the response future.
    Other(Box<OtherFields>),
}

enum OtherFields {
    /// One policy's fields past the entry budget.
    One(&'static FieldTemplate, HeaderValue),
    /// Several policies' `RateLimit-Policy`/`RateLimit` pairs.
    Many(Vec<(HeaderValue, HeaderValue)>),
}

impl RateLimitFields {
    const NONE: Self = Self(Fields::None);

    #[inline]
    fn push_entry(&mut self, e: &'static FieldsEntry) {
        if matches!(self.0, Fields::None) {
            self.0 = Fields::Entry(e);
            return;
        }
        self.push_more(e.template, e.value.clone());
    }

    #[cold]
    #[inline(never)]
    fn push_more(&mut self, policy: &'static FieldTemplate, value: HeaderValue) {
        let other = match std::mem::replace(&mut self.0, Fields::None) {
            Fields::None => OtherFields::One(policy, value),
            Fields::Entry(e) => OtherFields::Many(vec![
                (e.template.policy.clone(), e.value.clone()),
                (policy.policy.clone(), value),
            ]),
            Fields::Other(o) => match *o {
                OtherFields::One(p, v) => {
                    OtherFields::Many(vec![(p.policy.clone(), v), (policy.policy.clone(), value)])
                }
                OtherFields::Many(mut all) => {
                    all.push((policy.policy.clone(), value));
                    OtherFields::Many(all)
                }
            },
        };
        self.0 = Fields::Other(Box::new(other));
    }
}

impl std::fmt::Debug for RateLimitFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimitFields(..)")
    }
}

/// Longest `RateLimit` value kept inline in its shared allocation.
const INLINE_VALUE: usize = 62;

/// A rendered value's bytes, owned by a `Bytes` (one allocation, shared by clones).
struct InlineValue {
    len: u8,
    buf: [u8; INLINE_VALUE],
}

impl AsRef<[u8]> for InlineValue {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Most distinct `RateLimit` values interned per process (each at most 62 bytes, leaked
/// once: ≈ 1.5 MB at most). Past the budget, values are shared allocations.
const INTERNED_VALUES: usize = 16_384;

/// The static (reference-count free) header value of `text`, interned once per process
/// while the budget lasts.
fn intern_value(text: &str) -> Option<HeaderValue> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static VALUES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    // only visible ASCII and spaces, which `from_static` accepts
    if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let mut set = VALUES.lock().unwrap_or_else(|p| p.into_inner());
    let set = set.get_or_insert_with(HashSet::new);
    let s: &'static str = match set.get(text) {
        Some(s) => s,
        None if set.len() < INTERNED_VALUES => {
            let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
            set.insert(leaked);
            leaked
        }
        None => return None,
    };
    Some(HeaderValue::from_static(s))
}

/// Slots of the per-thread cache of rendered `RateLimit` values (2^bits).
const VALUE_CACHE_BITS: u32 = 4;

struct CachedValue {
    id: u64,
    r: u64,
    t: u64,
    value: HeaderValue,
}

thread_local! {
    /// Recently rendered `RateLimit` values of this thread, direct-mapped.
    static RENDERED: std::cell::RefCell<[Option<CachedValue>; 1 << VALUE_CACHE_BITS]> =
        const { std::cell::RefCell::new([const { None }; 1 << VALUE_CACHE_BITS]) };
}

/// A process-unique policy id (never reused, so a cached value cannot outlive its policy's
/// meaning).
fn next_policy_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Writes the decimal digits of `n` so that they end at `buf[..end]`; returns their start.
#[inline(always)]
fn put_u64_rev(buf: &mut [u8; 48], mut end: usize, mut n: u64) -> usize {
    loop {
        end -= 1;
        buf[end] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return end;
        }
    }
}

/// Both fields of one allowed-response state (`r`, `t`) of one policy, leaked once per
/// process while [`INTERNED_ENTRIES`] lasts. Adding them costs one map clone (an empty
/// response) or two appends, with no formatting and no reference counting.
pub(crate) struct FieldsEntry {
    template: &'static FieldTemplate,
    r: u64,
    t: u64,
    /// `RateLimit: "<name>";r=<r>;t=<t>` (static bytes).
    value: HeaderValue,
    /// `RateLimit-Policy` and `RateLimit`: the whole map of a response that had none.
    map: http::HeaderMap,
}

impl FieldsEntry {
    #[inline]
    fn add_to(&self, map: &mut http::HeaderMap) {
        if map.is_empty() {
            *map = self.map.clone();
        } else {
            self.template.add_to(map, self.value.clone());
        }
    }
}

/// Most [`FieldsEntry`]s leaked per process (≈ 0.5 KB each: ≈ 2 MB at most). Past the
/// budget, fields are rendered through the per-thread value cache.
const INTERNED_ENTRIES: usize = 4096;

/// Slots of a policy's entry cache (2^bits).
const ENTRY_SLOT_BITS: u32 = 6;

/// A policy's direct-mapped cache of interned entries, shared by all threads: a hit is one
/// load and two compares.
struct EntrySlots([std::sync::atomic::AtomicPtr<FieldsEntry>; 1 << ENTRY_SLOT_BITS]);

impl Default for EntrySlots {
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            std::sync::atomic::AtomicPtr::new(std::ptr::null_mut())
        }))
    }
}

impl EntrySlots {
    #[inline]
    fn slot(r: u64, t: u64) -> usize {
        ((r ^ t.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ENTRY_SLOT_BITS))
            as usize
    }

    #[inline]
    fn get(&self, r: u64, t: u64) -> Option<&'static FieldsEntry> {
        let p = self.0[Self::slot(r, t)].load(std::sync::atomic::Ordering::Acquire);
        // SAFETY: a slot holds null or a pointer from `Box::leak` (see `put`): a
        // `&'static FieldsEntry` that is never freed nor written through.
        #[allow(unsafe_code)]
        let e: &'static FieldsEntry = unsafe { p.as_ref() }?;
        (e.r == r && e.t == t).then_some(e)
    }

    fn put(&self, e: &'static FieldsEntry) {
        let p = std::ptr::from_ref(e).cast_mut();
        self.0[Self::slot(e.r, e.t)].store(p, std::sync::atomic::Ordering::Release);
    }
}

/// The process's entry for `(template, r, t)`, made on first use while the budget lasts.
fn intern_entry(p: &PolicyRt, r: u64, t: u64) -> Option<&'static FieldsEntry> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (usize, u64, u64);
    static ENTRIES: Mutex<Option<HashMap<Key, &'static FieldsEntry>>> = Mutex::new(None);
    let key = (std::ptr::from_ref(p.fields) as usize, r, t);
    let mut all = ENTRIES.lock().unwrap_or_else(|e| e.into_inner());
    let all = all.get_or_insert_with(HashMap::new);
    if let Some(e) = all.get(&key) {
        return Some(e);
    }
    if all.len() >= INTERNED_ENTRIES {
        return None;
    }
    let value = intern_value(&format!("{}{r};t={t}", p.field_prefix))?;
    let mut map = http::HeaderMap::with_capacity(2);
    map.append(RATELIMIT_POLICY_NAME, p.fields.policy.clone());
    map.append(RATELIMIT_NAME, value.clone());
    let e: &'static FieldsEntry = Box::leak(Box::new(FieldsEntry {
        template: p.fields,
        r,
        t,
        value,
        map,
    }));
    all.insert(key, e);
    Some(e)
}

impl PolicyRt {
    /// `r` and `t` (whole seconds, rounded up) of an allowed request.
    #[inline(always)]
    fn state(&self, slack: u64, reset_after: u64) -> (u64, u64) {
        let remaining = slack / self.t_div;
        // time until one more unit is available
        let used = self.burst.saturating_sub(remaining);
        let t = reset_after.saturating_sub(used.saturating_sub(1).saturating_mul(self.gcra.t));
        (remaining.min(self.quota), secs_up(t))
    }

    /// Adds this policy's fields of an allowed request to `out`: an interned entry when
    /// there is one (or room for one), else the value through the per-thread cache.
    #[inline]
    fn push_fields(&self, out: &mut RateLimitFields, slack: u64, reset_after: u64) {
        let (r, t) = self.state(slack, reset_after);
        match self.entries.get(r, t) {
            Some(e) => out.push_entry(e),
            None => self.push_fields_slow(out, r, t),
        }
    }

    #[cold]
    #[inline(never)]
    fn push_fields_slow(&self, out: &mut RateLimitFields, r: u64, t: u64) {
        match intern_entry(self, r, t) {
            Some(e) => {
                self.entries.put(e);
                out.push_entry(e);
            }
            None => out.push_more(self.fields, self.ratelimit_value_of(r, t)),
        }
    }

    /// The `RateLimit` value of state `(r, t)`: `"<name>";r=<remaining>;t=<secs>`.
    ///
    /// Values are exact: a small per-thread cache keyed by (policy instance, `r`, `t`)
    /// returns a shared copy of a value rendered before (a reference-count increment),
    /// else the value is formatted on the stack into one allocation. Used once the entry
    /// budget is spent.
    #[inline]
    fn ratelimit_value_of(&self, r: u64, t: u64) -> HeaderValue {
        let slot = ((self.id ^ r.rotate_left(20) ^ t.rotate_left(40))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - VALUE_CACHE_BITS)) as usize;
        RENDERED.with_borrow_mut(|cache| {
            let e = &mut cache[slot];
            if let Some(v) = e
                && v.id == self.id
                && v.r == r
                && v.t == t
            {
                return v.value.clone();
            }
            let (value, shared) = self.render(r, t);
            if shared {
                *e = Some(CachedValue {
                    id: self.id,
                    r,
                    t,
                    value: value.clone(),
                });
            }
            value
        })
    }

    /// Formats `"<name>";r=<r>;t=<t>`; `true` when the value's bytes are cheap to share.
    #[cold]
    #[inline(never)]
    fn render(&self, r: u64, t: u64) -> (HeaderValue, bool) {
        // `r=<r>;t=<t>` right-aligned in a stack buffer
        let mut tail = [0u8; 48];
        let mut at = put_u64_rev(&mut tail, 48, t);
        at -= 3;
        tail[at..at + 3].copy_from_slice(b";t=");
        at = put_u64_rev(&mut tail, at, r);
        let tail = &tail[at..];
        let prefix = self.field_prefix.as_bytes();
        let len = prefix.len() + tail.len();
        if len <= INLINE_VALUE {
            let mut buf = [0u8; INLINE_VALUE];
            buf[..prefix.len()].copy_from_slice(prefix);
            buf[prefix.len()..len].copy_from_slice(tail);
            let text = std::str::from_utf8(&buf[..len]).unwrap_or("");
            if let Some(v) = intern_value(text) {
                return (v, true);
            }
            // the interning budget is spent: one allocation holding the bytes and a
            // reference count
            let v = InlineValue {
                len: len as u8,
                buf,
            };
            return match HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(v)) {
                Ok(v) => (v, true),
                Err(_) => (HeaderValue::from_static(""), false),
            };
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(prefix);
        v.extend_from_slice(tail);
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
            Ok(v) => (v, false),
            Err(_) => (HeaderValue::from_static(""), false),
        }
    }

    /// The 429 of a limited request.
    #[cold]
    #[inline(never)]
    fn limited(&self, retry_after: u64) -> Box<Denial> {
        let secs = secs_up(retry_after).max(1);
        Box::new(
            Denial::new(StatusCode::TOO_MANY_REQUESTS, "throttle", "rate_limited")
                .with_type(PROBLEM_QUOTA_EXCEEDED)
                .with_title("Too Many Requests")
                .with_detail("The request rate limit was exceeded; retry later.")
                .with_retry_after(Duration::from_nanos(retry_after).max(Duration::from_secs(1)))
                .with_rate_limit(self.field(0, Some(secs)))
                .with_member(
                    "violated-policies",
                    serde_json::Value::from(vec![self.name.to_string()]),
                ),
        )
    }

    /// The 429 of a key at its in-flight cap.
    #[cold]
    #[inline(never)]
    fn too_many_in_flight(&self) -> Box<Denial> {
        Box::new(
            Denial::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttle",
                "too_many_in_flight",
            )
            .with_type(PROBLEM_QUOTA_EXCEEDED)
            .with_title("Too Many Requests")
            .with_detail("Too many concurrent requests; retry later.")
            .with_retry_after(Duration::from_secs(1))
            .with_rate_limit(self.field(0, Some(1)))
            .with_member(
                "violated-policies",
                serde_json::Value::from(vec![self.name.to_string()]),
            ),
        )
    }

    /// Records a denial of this policy: the first enforced one is kept, shadow ones go to
    /// the request facts.
    #[cold]
    #[inline(never)]
    fn deny(&self, d: Box<Denial>, ext: &http::Extensions, first: &mut Option<Box<Denial>>) {
        if self.shadow {
            tracing::debug!(policy = &*self.name, "throttle shadow denial");
            crate::facts::record_shadow_denial(ext, *d);
        } else if first.is_none() {
            tracing::debug!(
                policy = &*self.name,
                reason = d.reason(),
                "throttle denied request"
            );
            *first = Some(d);
        }
    }
}

/// In-flight slots and rate keys of a request decided in Redis.
#[cfg(feature = "redis")]
struct RemotePlan {
    guards: Option<InFlightGuards>,
    applied: InlineList<Applied, 4>,
}

/// Outcome of the rate policies of an allowed request.
struct Allowed {
    wait: u64,
    guards: Option<InFlightGuards>,
    headers: RateLimitFields,
}

impl Allowed {
    /// The end of a request that was let through: releases its in-flight slots and adds
    /// its fields to a response.
    fn finish<B, E>(self, out: Result<Response<B>, E>) -> Result<Response<B>, E> {
        drop(self.guards);
        out.map(|mut res| {
            add_headers(&mut res, self.headers);
            res
        })
    }
}

/// A decision as the service acts on it. `Pass` (served at once, at most one interned
/// fields entry to add) has nothing to drop, so the usual path moves no `Allowed` around.
enum Decision {
    Pass(Option<&'static FieldsEntry>),
    Other(Result<Allowed, Box<Denial>>),
}

impl From<Result<Allowed, Box<Denial>>> for Decision {
    #[inline]
    fn from(d: Result<Allowed, Box<Denial>>) -> Self {
        match d {
            Ok(Allowed {
                wait: 0,
                guards: None,
                headers: RateLimitFields(Fields::None),
            }) => Self::Pass(None),
            Ok(Allowed {
                wait: 0,
                guards: None,
                headers: RateLimitFields(Fields::Entry(e)),
            }) => Self::Pass(Some(e)),
            other => Self::Other(other),
        }
    }
}

impl Shared {
    /// The client IP: an outer layer's [`ClientIp`], else resolved here.
    #[inline(always)]
    fn client_ip<B>(&self, req: &Request<B>) -> Option<ClientIp> {
        crate::client_ip::client_ip_in(req, &self.resolver)
    }

    /// Cost and matched route template of `p` for this request; `None` when its routes do
    /// not match.
    #[inline]
    fn applies<'a, B>(p: &'a PolicyRt, req: &Request<B>) -> Option<(u32, Option<&'a str>)> {
        match &p.routes {
            None => Some((p.cost, None)),
            Some(rs) => rs
                .at(req.method(), req.uri().path())
                .map(|m| (*m.value, Some(m.template))),
        }
    }

    /// The keyed hash of `p`'s key; `None` when the policy does not apply.
    #[inline]
    fn key_hash<B>(
        &self,
        p: &PolicyRt,
        req: &Request<B>,
        ip: Option<ClientIp>,
        template: Option<&str>,
    ) -> Option<u64> {
        if p.ip_only {
            return Some(self.ip_hash(ip));
        }
        self.key_hash_slow(p, req, ip, template)
    }

    /// The keyed hash of a client-IP-only key (the common case, inlined).
    #[inline(always)]
    fn ip_hash(&self, ip: Option<ClientIp>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match ip {
            Some(ip) => h.ip(ip.prefix_key(self.v6_prefix)),
            None => h.bytes(b'i', b"?"),
        }
        h.finish()
    }

    /// The keyed hash of any other key.
    #[inline(never)]
    fn key_hash_slow<B>(
        &self,
        p: &PolicyRt,
        req: &Request<B>,
        ip: Option<ClientIp>,
        template: Option<&str>,
    ) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        write_key(p, self, req, ip, template, &mut h).then(|| h.finish())
    }

    /// The longest wait `p` may impose on this request, in ns.
    #[inline]
    fn max_wait<B>(p: &PolicyRt, req: &Request<B>, grpc: &mut Option<Option<Duration>>) -> u64 {
        match p.action {
            Action::Reject => 0,
            Action::Delay { max_wait } => {
                let g = *grpc.get_or_insert_with(|| grpc_timeout(req.headers()));
                let w = g.map_or(max_wait, |g| g.min(max_wait));
                w.as_nanos().min(u128::from(u64::MAX)) as u64
            }
        }
    }

    /// Takes the in-flight slots of every in-flight policy that applies. Runs before any
    /// rate policy is charged.
    fn in_flight<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        ip: Option<ClientIp>,
    ) -> Result<Option<InFlightGuards>, Box<Denial>> {
        let mut guards: Option<InFlightGuards> = None;
        let mut denial: Option<Box<Denial>> = None;
        for (idx, p) in self.policies.iter().enumerate() {
            let (Limit::InFlight(max), Some(table)) = (p.limit, &p.inflight) else {
                continue;
            };
            let Some((_, template)) = Self::applies(p, req) else {
                continue;
            };
            let Some(hash) = self.key_hash(p, req, ip, template) else {
                continue;
            };
            match table.acquire(hash, max) {
                Ok(_) => guards
                    .get_or_insert_with(|| InFlightGuards {
                        shared: self.clone(),
                        held: Vec::new(),
                    })
                    .held
                    .push((idx, hash)),
                Err(_) => p.deny(p.too_many_in_flight(), req.extensions(), &mut denial),
            }
        }
        match denial {
            Some(d) => Err(d), // guards dropped: slots released
            None => Ok(guards),
        }
    }

    /// The decision of a layer whose only policy is an in-memory rate policy keyed by client
    /// IP for every route (the common per-IP limit): the same decision as
    /// [`decide_local`](Self::decide_local) for that one policy, without its loop.
    #[inline(never)]
    fn decide_single_ip<B>(&self, req: &Request<B>) -> Decision {
        let p = &self.policies[0];
        let mem = p.mem.as_ref().expect("a rate policy");
        let hash = match crate::client_ip::direct_peer_v4(req, &self.resolver) {
            // built in registers: `ip_hash` is inlined into this arm alone
            Some(v4) => self.ip_hash(Some(ClientIp(IpAddr::V4(v4.into())))),
            None => self.ip_hash(self.client_ip(req)),
        };
        let max_wait = Self::max_wait(p, req, &mut None);
        match mem.decide(hash, &p.gcra, p.cost, max_wait) {
            Verdict::Allowed {
                wait,
                slack,
                reset_after,
            } => {
                let mut headers = RateLimitFields::NONE;
                if self.headers_on_allowed {
                    p.push_fields(&mut headers, slack, reset_after);
                }
                Decision::from(Ok(Allowed {
                    wait: if p.shadow { 0 } else { wait },
                    guards: None,
                    headers,
                }))
            }
            Verdict::Limited { retry_after, .. } => {
                let mut denial = None;
                p.deny(p.limited(retry_after), req.extensions(), &mut denial);
                match denial {
                    Some(d) => Decision::Other(Err(d)),
                    // a shadow policy: recorded, let through without fields
                    None => Decision::Pass(None),
                }
            }
        }
    }

    /// Every policy decided in memory: in-flight slots first, then the rate policies in
    /// order with one clock read.
    #[inline(never)]
    fn decide_local<B>(self: &Arc<Self>, req: &Request<B>) -> Result<Allowed, Box<Denial>> {
        let ip = if self.needs_ip {
            self.client_ip(req)
        } else {
            None
        };
        let guards = if self.has_in_flight {
            self.in_flight(req, ip)?
        } else {
            None
        };
        let mut out = Allowed {
            wait: 0,
            guards,
            headers: RateLimitFields::NONE,
        };
        let mut denial = None;
        let mut grpc = None;
        let mut now = 0;
        for p in &self.policies {
            let Some(mem) = &p.mem else { continue };
            let Some((cost, template)) = Self::applies(p, req) else {
                continue;
            };
            let Some(hash) = self.key_hash(p, req, ip, template) else {
                continue;
            };
            let max_wait = Self::max_wait(p, req, &mut grpc);
            if now == 0 {
                now = mem.now();
            }
            match mem.decide_at(now, hash, &p.gcra, cost, max_wait) {
                Verdict::Allowed {
                    wait,
                    slack,
                    reset_after,
                } => {
                    if !p.shadow {
                        out.wait = out.wait.max(wait);
                    }
                    if self.headers_on_allowed {
                        p.push_fields(&mut out.headers, slack, reset_after);
                    }
                }
                Verdict::Limited { retry_after, .. } => {
                    p.deny(p.limited(retry_after), req.extensions(), &mut denial);
                }
            }
        }
        match denial {
            Some(d) => Err(d),
            None => Ok(out),
        }
    }

    /// The synchronous part of a Redis decision: in-flight slots (kept in memory) and the
    /// keys of the rate policies that apply.
    #[cfg(feature = "redis")]
    fn plan_remote<B>(self: &Arc<Self>, req: &Request<B>) -> Result<RemotePlan, Box<Denial>> {
        let ip = if self.needs_ip {
            self.client_ip(req)
        } else {
            None
        };
        let guards = if self.has_in_flight {
            self.in_flight(req, ip)?
        } else {
            None
        };
        let mut applied = InlineList::<Applied, 4>::default();
        let mut grpc = None;
        for (idx, p) in self.policies.iter().enumerate() {
            if p.mem.is_none() {
                continue;
            }
            let Some((cost, template)) = Self::applies(p, req) else {
                continue;
            };
            let Some(hash) = self.key_hash(p, req, ip, template) else {
                continue;
            };
            let max_wait = Self::max_wait(p, req, &mut grpc);
            let mut key = Vec::with_capacity(48);
            key.extend_from_slice(p.name.as_bytes());
            write_key(p, self, req, ip, template, &mut key);
            applied.push(Applied {
                idx,
                hash,
                cost,
                max_wait,
                key,
            });
        }
        Ok(RemotePlan { guards, applied })
    }

    /// Every rate policy of `plan` decided against Redis.
    #[cfg(feature = "redis")]
    async fn decide_remote(
        &self,
        backend: &RedisBackend,
        plan: RemotePlan,
        ext: &http::Extensions,
    ) -> Result<Allowed, Box<Denial>> {
        let RemotePlan { guards, applied } = plan;
        let mut out = Allowed {
            wait: 0,
            guards,
            headers: RateLimitFields::NONE,
        };
        let mut denial = None;
        for a in applied.iter() {
            let p = &self.policies[a.idx];
            let limit = Gcra {
                emission_interval: Duration::from_nanos(p.gcra.t),
                burst: p.burst.min(u64::from(u32::MAX)) as u32,
            };
            let res = backend
                .store
                .check(&a.key, limit, a.cost, Duration::from_nanos(a.max_wait))
                .await;
            let v = match res {
                Ok(RateDecision::Allowed {
                    wait,
                    remaining,
                    reset_after,
                }) => Verdict::Allowed {
                    wait: wait.as_nanos() as u64,
                    slack: remaining.saturating_mul(p.gcra.t),
                    reset_after: reset_after.as_nanos() as u64,
                },
                Ok(RateDecision::Limited {
                    retry_after,
                    reset_after,
                }) => Verdict::Limited {
                    retry_after: retry_after.as_nanos() as u64,
                    reset_after: reset_after.as_nanos() as u64,
                },
                Err(e) => {
                    tracing::warn!(policy = &*p.name, error = %e, mode = ?backend.failure, "throttle store failed");
                    match backend.failure {
                        FailureMode::Allow => continue,
                        FailureMode::LocalFallback => {
                            let mem = p.mem.as_ref().expect("rate table");
                            mem.decide(a.hash, &p.gcra, a.cost, a.max_wait)
                        }
                        FailureMode::Reject => {
                            let d = Denial::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "throttle",
                                "store_unavailable",
                            )
                            .with_detail("The rate limiter is unavailable; retry later.")
                            .with_retry_after(Duration::from_secs(1));
                            p.deny(Box::new(d), ext, &mut denial);
                            continue;
                        }
                    }
                }
            };
            match v {
                Verdict::Allowed {
                    wait,
                    slack,
                    reset_after,
                } => {
                    if !p.shadow {
                        out.wait = out.wait.max(wait);
                    }
                    if self.headers_on_allowed {
                        p.push_fields(&mut out.headers, slack, reset_after);
                    }
                }
                Verdict::Limited { retry_after, .. } => {
                    p.deny(p.limited(retry_after), ext, &mut denial);
                }
            }
        }
        match denial {
            Some(d) => Err(d),
            None => Ok(out),
        }
    }
}

// ---- service --------------------------------------------------------------------------

type BoxFut<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`Throttle`].
    ///
    /// At most 8 bytes wider than the inner future: a future is moved at least once per
    /// request (into a connection task, a combinator or `now_or_never`), and the common paths
    /// (passed on as it is, or with one policy's interned RateLimit fields) carry only a
    /// pointer beside it. Everything else (a denial, a delay, in-flight slots to release,
    /// fields past the interned ones, a remote store) is one boxed future.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
        fields: Option<&'static FieldsEntry>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner {
            #[pin]
            fut: F,
        },
        Boxed { fut: BoxFut<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    #[inline(always)]
    fn inner(fut: F, fields: Option<&'static FieldsEntry>) -> Self {
        Self {
            kind: Kind::Inner { fut },
            fields,
        }
    }

    fn boxed(fut: BoxFut<B, E>) -> Self {
        Self {
            kind: Kind::Boxed { fut },
            fields: None,
        }
    }
}

#[inline]
fn add_headers<B>(res: &mut Response<B>, headers: RateLimitFields) {
    match headers.0 {
        Fields::None => {}
        Fields::Entry(e) => e.add_to(res.headers_mut()),
        Fields::Other(o) => add_other(res.headers_mut(), *o),
    }
}

#[cold]
#[inline(never)]
fn add_other(map: &mut http::HeaderMap, fields: OtherFields) {
    match fields {
        OtherFields::One(t, r) => t.add_to(map, r),
        OtherFields::Many(all) => {
            map.reserve(2 * all.len());
            for (p, r) in all {
                map.append(RATELIMIT_POLICY_NAME, p);
                map.append(RATELIMIT_NAME, r);
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Inner { fut } => {
                // without fields, the inner poll's output is returned as it is (no copy of
                // the response through this frame)
                let Some(e) = *this.fields else {
                    return fut.poll(cx);
                };
                let mut out = std::task::ready!(fut.poll(cx));
                *this.fields = None;
                if let Ok(res) = &mut out {
                    e.add_to(res.headers_mut());
                }
                Poll::Ready(out)
            }
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Throttle<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: BodyFromBytes + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.layer.shared;
        #[cfg(feature = "redis")]
        if shared.redis.is_some() {
            return self.call_remote(req);
        }
        // `call` itself stays small so that it is inlined into the caller: the request is
        // then moved to the inner service once (one 240-byte copy more per request when
        // `call` is a separate function). The decision runs out of line and takes the
        // request by reference.
        let decision = if shared.single_ip_rate {
            shared.decide_single_ip(&req)
        } else {
            Decision::from(shared.decide_local(&req))
        };
        match decision {
            Decision::Pass(fields) => ResponseFuture::inner(self.inner.call(req), fields),
            Decision::Other(other) => self.call_cold(req, other),
        }
    }
}

impl<S> Throttle<S> {
    /// A denial, a delayed request, or one with in-flight slots or fields past the interned
    /// ones.
    #[cold]
    #[inline(never)]
    fn call_cold<ReqB, ResB>(
        &mut self,
        req: Request<ReqB>,
        decision: Result<Allowed, Box<Denial>>,
    ) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Send + 'static,
        ResB: BodyFromBytes + Send + 'static,
    {
        match decision {
            Err(d) => {
                let res = self.layer.renderer.respond(*d, &req);
                ResponseFuture::boxed(Box::pin(std::future::ready(Ok(res))))
            }
            Ok(a) if a.wait == 0 => {
                let fut = self.inner.call(req);
                ResponseFuture::boxed(Box::pin(async move {
                    let out = fut.await;
                    a.finish(out)
                }))
            }
            Ok(a) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let wait = Duration::from_nanos(a.wait);
                ResponseFuture::boxed(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    let out = inner.call(req).await;
                    a.finish(out)
                }))
            }
        }
    }
}

#[cfg(feature = "redis")]
impl<S> Throttle<S> {
    #[inline(never)]
    fn call_remote<ReqB, ResB>(
        &mut self,
        req: Request<ReqB>,
    ) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Send + 'static,
        ResB: BodyFromBytes + Send + 'static,
    {
        let plan = match self.layer.shared.plan_remote(&req) {
            Ok(plan) => plan,
            Err(d) => {
                let res = self.layer.renderer.respond(*d, &req);
                return ResponseFuture::boxed(Box::pin(std::future::ready(Ok(res))));
            }
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        let renderer = self.layer.renderer.clone();
        ResponseFuture::boxed(Box::pin(async move {
            let backend = shared.redis.as_ref().expect("redis backend");
            let a = match shared.decide_remote(backend, plan, req.extensions()).await {
                Ok(a) => a,
                Err(d) => return Ok(renderer.respond(*d, &req)),
            };
            if a.wait > 0 {
                tokio::time::sleep(Duration::from_nanos(a.wait)).await;
            }
            let out = inner.call(req).await;
            a.finish(out)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", HeaderValue::from_static("2S"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(2)));
        h.insert("grpc-timeout", HeaderValue::from_static("2x"));
        assert_eq!(grpc_timeout(&h), None);
    }

    #[test]
    fn response_future_is_one_pointer_wider_than_the_inner_future() {
        type Inner = std::future::Ready<Result<Response<String>, std::convert::Infallible>>;
        type Big = std::future::Ready<Result<Response<String>, [u8; 512]>>;
        let word = std::mem::size_of::<usize>();
        assert!(
            std::mem::size_of::<ResponseFuture<Inner, String, std::convert::Infallible>>()
                <= std::mem::size_of::<Inner>() + word
        );
        assert!(
            std::mem::size_of::<ResponseFuture<Big, String, [u8; 512]>>()
                <= std::mem::size_of::<Big>() + word
        );
    }

    #[test]
    fn interned_values_are_exact_and_bounded() {
        let a = intern_value("\"p\";r=1;t=2").unwrap();
        assert_eq!(a, "\"p\";r=1;t=2");
        assert!(intern_value("caf\u{e9}").is_none(), "not visible ASCII");
        // spend the budget (shared by the process: later values fall back to allocations)
        let mut n = 0;
        while intern_value(&format!("budget-{n}")).is_some() {
            n += 1;
            assert!(n <= INTERNED_VALUES);
        }
        // interned values stay available, new ones are refused
        assert_eq!(intern_value("\"p\";r=1;t=2").unwrap(), a);
        assert!(intern_value("never-seen").is_none());
        // rendering stays exact past the budget
        let layer = ThrottleLayer::builder()
            .policy(Policy::rate("p", super::super::Rate::per_second(10)).burst(5))
            .build()
            .unwrap();
        let p = &layer.shared.policies[0];
        assert_eq!(p.render(3, 1).0, "\"p\";r=3;t=1");
        assert_eq!(p.render(1234, 56).0, "\"p\";r=1234;t=56");
    }

    #[test]
    fn fields_stay_exact_past_the_entry_budget() {
        let layer = ThrottleLayer::builder()
            .policy(Policy::rate("budget", super::super::Rate::per_second(10)).burst(5))
            .build()
            .unwrap();
        let p = &layer.shared.policies[0];
        let fields = |f: RateLimitFields| {
            let mut res = Response::new(());
            add_headers(&mut res, f);
            let h = res.headers();
            (
                h.get(RATELIMIT_POLICY_NAME).unwrap().clone(),
                h.get(RATELIMIT_NAME).unwrap().clone(),
            )
        };
        // an interned entry while the budget lasts (shared by the process: it may be
        // spent already, then the fallback below is what every path gives)
        let mut f = RateLimitFields::NONE;
        p.push_fields_slow(&mut f, 3, 1);
        assert_eq!(fields(f).1, "\"budget\";r=3;t=1");
        // spend the budget
        let mut n = 0u64;
        while intern_entry(p, 1_000 + n, 7).is_some() {
            n += 1;
            assert!(n as usize <= INTERNED_ENTRIES);
        }
        // a new state is rendered exactly, on an empty and on a non-empty map
        let mut f = RateLimitFields::NONE;
        p.push_fields_slow(&mut f, 4, 2);
        let (policy, value) = fields(f);
        assert_eq!(value, "\"budget\";r=4;t=2");
        assert_eq!(policy, p.fields.policy);
        let mut f = RateLimitFields::NONE;
        p.push_fields_slow(&mut f, 4, 2);
        let mut res = Response::new(());
        res.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        add_headers(&mut res, f);
        assert_eq!(res.headers().len(), 3);
        assert_eq!(res.headers()[RATELIMIT_NAME], "\"budget\";r=4;t=2");
        // interned entries are still found
        assert_eq!(
            intern_entry(p, 1_000, 7).unwrap().value,
            "\"budget\";r=1000;t=7"
        );
    }

    #[test]
    fn extracts_params() {
        assert_eq!(
            path_param("/cart/{sku}/add", "/cart/AB-1/add", "sku"),
            Some("AB-1")
        );
        assert_eq!(
            query_param(Some("a=1&promo=SPRING"), "promo"),
            Some("SPRING")
        );
        assert_eq!(query_param(Some("a=1"), "promo"), None);
    }
}
