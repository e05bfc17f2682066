//! The throttle layer, its service and response future.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::fast::{FastHasher, InlineList, Seeds};
use super::memory::{GcraNs, InFlightTable, MemoryRateStore, Verdict};
use super::policy::{Action, Key, KeyPart, Limit, Policy};
use crate::body::BodyFromBytes;
use crate::client_ip::{ClientIp, ClientIpResolver};
use crate::clock::{SharedClock, system_clock};
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::principal::Principal;
use crate::ratelimit::{RATELIMIT, RATELIMIT_POLICY, RateLimitField, ceil_secs};
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
    key: Key,
    action: Action,
    cost: u32,
    routes: Option<RouteSet<u32>>,
    shadow: bool,
    mem: Option<MemoryRateStore>,
    inflight: Option<InFlightTable>,
    policy_header: HeaderValue,
    /// `"<name>";r=`, rendered once at build time.
    field_prefix: Box<str>,
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
        let clock = self.clock.unwrap_or_else(system_clock);
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
                    Some(MemoryRateStore::new(self.max_keys, clock.clone())),
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
                key: p.key,
                action: p.action,
                cost: p.cost,
                routes,
                shadow: p.shadow,
                mem,
                inflight,
                policy_header: HeaderValue::from_static(""),
                field_prefix: format!("\"{}\";r=", p.name).into(),
                quota,
                window,
            };
            rt.policy_header = crate::ratelimit::policy_value(&[rt.field(0, None)])
                .ok_or_else(|| ConfigError::invalid(format!("{key}.name"), "not a valid field"))?;
            policies.push(rt);
        }
        Ok(ThrottleLayer {
            shared: Arc::new(Shared {
                policies,
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

struct Applied {
    idx: usize,
    hash: u64,
    cost: u32,
    max_wait: u64,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    key: Option<Vec<u8>>,
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

/// Result of the sync part of a decision.
struct Plan {
    applied: InlineList<Applied, 4>,
    guards: Option<InFlightGuards>,
}

#[derive(Default)]
struct Fold {
    denial: Option<Denial>,
    wait: u64,
    fields: InlineList<(usize, u64, Option<u64>), 4>,
}

fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

impl Fold {
    fn verdict(&mut self, shared: &Shared, a: &Applied, v: Verdict, ext: &http::Extensions) {
        let p = &shared.policies[a.idx];
        match v {
            Verdict::Allowed {
                wait,
                remaining,
                reset_after,
            } => {
                if !p.shadow {
                    self.wait = self.wait.max(wait);
                }
                if shared.headers_on_allowed {
                    // time until one more unit is available
                    let used = (p.gcra.tau / p.gcra.t).saturating_sub(remaining);
                    let t = reset_after.saturating_sub(used.saturating_sub(1) * p.gcra.t);
                    let r = remaining.min(p.quota);
                    self.fields.push((a.idx, r, Some(secs_up(t))));
                }
            }
            Verdict::Limited { retry_after, .. } => {
                let secs = secs_up(retry_after).max(1);
                let d = Denial::new(StatusCode::TOO_MANY_REQUESTS, "throttle", "rate_limited")
                    .with_type(PROBLEM_QUOTA_EXCEEDED)
                    .with_title("Too Many Requests")
                    .with_detail("The request rate limit was exceeded; retry later.")
                    .with_retry_after(Duration::from_nanos(retry_after).max(Duration::from_secs(1)))
                    .with_rate_limit(p.field(0, Some(secs)))
                    .with_member(
                        "violated-policies",
                        serde_json::Value::from(vec![p.name.to_string()]),
                    );
                self.deny(p, d, ext);
            }
        }
    }

    fn deny(&mut self, p: &PolicyRt, d: Denial, ext: &http::Extensions) {
        if p.shadow {
            tracing::debug!(policy = &*p.name, "throttle shadow denial");
            crate::facts::record_shadow_denial(ext, d);
        } else if self.denial.is_none() {
            tracing::debug!(
                policy = &*p.name,
                reason = d.reason(),
                "throttle denied request"
            );
            self.denial = Some(d);
        }
    }

    fn headers(&self, shared: &Shared) -> Option<RateLimitFields> {
        if self.fields.is_empty() {
            return None;
        }
        let mut out = InlineList::default();
        for &(i, r, t) in self.fields.iter() {
            let p = &shared.policies[i];
            let mut s = String::with_capacity(p.field_prefix.len() + 24);
            s.push_str(&p.field_prefix);
            push_u64(&mut s, r);
            if let Some(t) = t {
                s.push_str(";t=");
                push_u64(&mut s, t);
            }
            let v = HeaderValue::from_maybe_shared(Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            out.push((p.policy_header.clone(), v));
        }
        Some(RateLimitFields(out))
    }
}

/// `RateLimit-Policy`/`RateLimit` field pairs waiting to be added to an allowed response.
pub struct RateLimitFields(InlineList<(HeaderValue, HeaderValue), 2>);

impl std::fmt::Debug for RateLimitFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimitFields(..)")
    }
}

fn push_u64(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

impl Shared {
    /// Keys, route costs and in-flight slots: everything decided without a store.
    fn plan<B>(self: &Arc<Self>, req: &Request<B>, with_keys: bool) -> Result<Plan, Box<Denial>> {
        let ip = req
            .extensions()
            .get::<ClientIp>()
            .copied()
            .or_else(|| self.resolver.resolve(req).map(ClientIp));
        // parsed only when a Delay policy applies
        let mut grpc_deadline: Option<Option<Duration>> = None;
        let mut plan = Plan {
            applied: InlineList::default(),
            guards: None,
        };
        let mut denial: Option<Denial> = None;
        for (idx, p) in self.policies.iter().enumerate() {
            let (cost, template) = match &p.routes {
                None => (p.cost, None),
                Some(rs) => match rs.at(req.method(), req.uri().path()) {
                    Some(m) => (*m.value, Some(m.template)),
                    None => continue,
                },
            };
            let mut h = self.hasher.build_hasher();
            if !write_key(p, self, req, ip, template, &mut h) {
                continue;
            }
            let hash = h.finish();
            if let Limit::InFlight(max) = p.limit {
                let table = p.inflight.as_ref().expect("in-flight table");
                match table.acquire(hash, max) {
                    Ok(_) => plan
                        .guards
                        .get_or_insert_with(|| InFlightGuards {
                            shared: self.clone(),
                            held: Vec::new(),
                        })
                        .held
                        .push((idx, hash)),
                    Err(_) => {
                        let d = Denial::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "throttle",
                            "too_many_in_flight",
                        )
                        .with_type(PROBLEM_QUOTA_EXCEEDED)
                        .with_title("Too Many Requests")
                        .with_detail("Too many concurrent requests; retry later.")
                        .with_retry_after(Duration::from_secs(1))
                        .with_rate_limit(p.field(0, Some(1)))
                        .with_member(
                            "violated-policies",
                            serde_json::Value::from(vec![p.name.to_string()]),
                        );
                        if p.shadow {
                            crate::facts::record_shadow_denial(req.extensions(), d);
                        } else if denial.is_none() {
                            denial = Some(d);
                        }
                    }
                }
                continue;
            }
            let max_wait = match p.action {
                Action::Reject => 0,
                Action::Delay { max_wait } => {
                    let g = *grpc_deadline.get_or_insert_with(|| grpc_timeout(req.headers()));
                    let w = g.map_or(max_wait, |g| g.min(max_wait));
                    w.as_nanos().min(u128::from(u64::MAX)) as u64
                }
            };
            let key = with_keys.then(|| {
                let mut v = Vec::with_capacity(48);
                v.extend_from_slice(p.name.as_bytes());
                write_key(p, self, req, ip, template, &mut v);
                v
            });
            plan.applied.push(Applied {
                idx,
                hash,
                cost,
                max_wait,
                key,
            });
        }
        match denial {
            Some(d) => Err(Box::new(d)), // guards dropped with the plan: slots released
            None => Ok(plan),
        }
    }

    fn decide_memory(&self, plan: &Plan, ext: &http::Extensions) -> Fold {
        let mut fold = Fold::default();
        // one clock read per request (all tables share the layer's clock)
        let mut now = None;
        for a in plan.applied.iter() {
            let p = &self.policies[a.idx];
            let mem = p.mem.as_ref().expect("rate table");
            let now = *now.get_or_insert_with(|| mem.now());
            let v = mem.decide_at(now, a.hash, &p.gcra, a.cost, a.max_wait);
            fold.verdict(self, a, v, ext);
        }
        fold
    }

    #[cfg(feature = "redis")]
    async fn decide_redis(
        &self,
        backend: &RedisBackend,
        plan: &Plan,
        ext: &http::Extensions,
    ) -> Fold {
        let mut fold = Fold::default();
        for a in plan.applied.iter() {
            let p = &self.policies[a.idx];
            let limit = Gcra {
                emission_interval: Duration::from_nanos(p.gcra.t),
                burst: (p.gcra.tau / p.gcra.t) as u32,
            };
            let key = a.key.as_deref().unwrap_or_default();
            let res = backend
                .store
                .check(key, limit, a.cost, Duration::from_nanos(a.max_wait))
                .await;
            let v = match res {
                Ok(RateDecision::Allowed {
                    wait,
                    remaining,
                    reset_after,
                }) => Verdict::Allowed {
                    wait: wait.as_nanos() as u64,
                    remaining,
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
                            fold.deny(p, d, ext);
                            continue;
                        }
                    }
                }
            };
            fold.verdict(self, a, v, ext);
        }
        fold
    }
}

// ---- service --------------------------------------------------------------------------

type BoxFut<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`Throttle`].
    #[project = RfProj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F, B, E> {
        /// Passed on without waiting.
        Inner {
            #[pin]
            fut: F,
            guards: Option<InFlightGuards>,
            headers: Option<RateLimitFields>,
        },
        /// Refused.
        Denied { res: Option<Response<B>> },
        /// Waiting for a delay or a remote store.
        Waiting { fut: BoxFut<B, E> },
    }
}

fn add_headers<B>(res: &mut Response<B>, headers: Option<RateLimitFields>) {
    if let Some(hs) = headers {
        let map = res.headers_mut();
        for (p, r) in hs.0 {
            map.append(RATELIMIT_POLICY.clone(), p);
            map.append(RATELIMIT.clone(), r);
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RfProj::Inner {
                fut,
                guards,
                headers,
            } => {
                let out = std::task::ready!(fut.poll(cx));
                drop(guards.take());
                Poll::Ready(out.map(|mut res| {
                    add_headers(&mut res, headers.take());
                    res
                }))
            }
            RfProj::Denied { res } => Poll::Ready(Ok(res
                .take()
                .expect("ResponseFuture polled after completion"))),
            RfProj::Waiting { fut } => fut.as_mut().poll(cx),
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

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.layer.shared;
        #[cfg(feature = "redis")]
        let remote = shared.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let remote = false;
        let plan = match shared.plan(&req, remote) {
            Ok(plan) => plan,
            Err(d) => {
                return ResponseFuture::Denied {
                    res: Some(self.layer.renderer.respond(*d, &req)),
                };
            }
        };
        if !remote {
            let fold = shared.decide_memory(&plan, req.extensions());
            if let Some(d) = fold.denial {
                return ResponseFuture::Denied {
                    res: Some(self.layer.renderer.respond(d, &req)),
                };
            }
            let headers = fold.headers(shared);
            if fold.wait == 0 {
                return ResponseFuture::Inner {
                    fut: self.inner.call(req),
                    guards: plan.guards,
                    headers,
                };
            }
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let wait = Duration::from_nanos(fold.wait);
            let guards = plan.guards;
            return ResponseFuture::Waiting {
                fut: Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    let out = inner.call(req).await;
                    drop(guards);
                    out.map(|mut res| {
                        add_headers(&mut res, headers);
                        res
                    })
                }),
            };
        }
        #[cfg(feature = "redis")]
        {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let shared = shared.clone();
            let renderer = self.layer.renderer.clone();
            ResponseFuture::Waiting {
                fut: Box::pin(async move {
                    let backend = shared.redis.as_ref().expect("redis backend");
                    let fold = shared.decide_redis(backend, &plan, req.extensions()).await;
                    if let Some(d) = fold.denial {
                        return Ok(renderer.respond(d, &req));
                    }
                    let headers = fold.headers(&shared);
                    if fold.wait > 0 {
                        tokio::time::sleep(Duration::from_nanos(fold.wait)).await;
                    }
                    let out = inner.call(req).await;
                    drop(plan);
                    out.map(|mut res| {
                        add_headers(&mut res, headers);
                        res
                    })
                }),
            }
        }
        #[cfg(not(feature = "redis"))]
        unreachable!("remote store without the redis feature")
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
