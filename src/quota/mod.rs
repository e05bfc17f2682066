//! Quotas: long-window allotments per caller ("6000 calls a month") that survive restarts.
//!
//! A quota is not a rate: it counts units in a calendar-aware window and refuses further
//! calls until the window resets. The [`QuotaLayer`]:
//! - keys callers by the [`Principal`](crate::Principal) id the auth layer inserted, or else
//!   by a fallback ([`KeyFallback`]: client IP by default, or a header set by a trusted
//!   proxy), so it also works without auth;
//! - selects the quotas by the principal's plan ([`PlanTable`], or any [`LimitProvider`]);
//!   an unknown plan gets a default plan or a 403 ([`UnknownPlan`]);
//! - applies several quotas at once (500/day *and* 6000/month), all or nothing;
//! - charges per-route weights (`"GET /products?search"` costs 10);
//! - counts every admitted call, refunds on 5xx, or counts only successes ([`CountPolicy`]);
//! - refuses with `429` problem+json (`…#quota-exceeded`, `violated-policies`),
//!   `Retry-After` = seconds to the real reset, and `RateLimit-Policy`/`RateLimit` fields
//!   (gRPC: `RESOURCE_EXHAUSTED` through the [`Renderer`](crate::Renderer)); admitted
//!   responses carry the fields too with [`QuotaLayerBuilder::headers_on_success`];
//! - can run in shadow mode, and reads usage back for dashboards ([`QuotaLayer::usage_of`]).
//!
//! Windows ([`Window`]) are calendar hours, days, weeks, months and years in UTC, a fixed
//! offset or an IANA zone (DST-safe), with a billing anchor ("resets on the 15th"), or
//! rolling windows. Stores: [`MemoryCounterStore`] (default), [`DurableCounterStore`]
//! (redb, write-behind, survives restarts; see [`store`] for the loss window) and, with
//! feature `redis`, `RedisCounterStore` (one quota shared by a fleet).
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_shield::clock::ManualClock;
//! use tower_shield::quota::{Quota, QuotaLayer, Window};
//! use tower_shield::{CredentialKind, Principal};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let clock = ManualClock::at_unix(1_795_000_000); // 2026-11-18
//! let quota = QuotaLayer::builder()
//!     .plan("free", [Quota::new("monthly", 2, Window::month()), Quota::new("daily", 500, Window::day())])
//!     .weight("GET /products?search", 10)
//!     .headers_on_success(true) // admitted responses carry the fields too (denials always do)
//!     .clock(Arc::new(clock))
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(quota.clone()).service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let call = || {
//!     let mut req = Request::get("/products").body(()).unwrap();
//!     req.extensions_mut().insert(Principal::new("c1", CredentialKind::ApiKey).with_plan("free"));
//!     req
//! };
//! let ok = svc.ready().await.unwrap().call(call()).await.unwrap();
//! assert_eq!(ok.headers()["ratelimit"], r#""monthly";r=1;t=1083200, "daily";r=499;t=46400"#);
//! svc.ready().await.unwrap().call(call()).await.unwrap();
//! let denied = svc.ready().await.unwrap().call(call()).await.unwrap();
//! assert_eq!(denied.status(), 429);
//! assert_eq!(denied.headers()["retry-after"], "1083200"); // 2026-12-01T00:00:00Z
//! let usage = quota.usage_of(&Principal::new("c1", CredentialKind::ApiKey).with_plan("free")).await.unwrap();
//! assert_eq!((usage[0].used, usage[0].remaining), (2, 0));
//! # }
//! ```
//!
//! # Deployment caveats
//! - Several instances need the shared Redis store to enforce one quota; the memory and
//!   durable stores count per process.
//! - Multiple calendar quotas are decided in one step, all or nothing (one shard lock in
//!   memory, one script in Redis). Rolling windows in memory are counted one after the
//!   other and rolled back when a later one refuses; a concurrent request may briefly see
//!   the rolled-back units and be refused (never over-admitted).
//! - Header and IP fallback keys are only as trustworthy as the proxy in front.

pub mod config;
mod fast;
mod layer;
#[cfg(feature = "redis")]
pub mod redis;
pub mod store;
pub mod window;

pub use layer::{
    Caller, CountPolicy, KeyFallback, LimitProvider, Limits, PlanTable, QUOTA_EXCEEDED_TYPE, Quota,
    QuotaLayer, QuotaLayerBuilder, QuotaService, QuotaUsage, ResponseFuture, UnknownPlan,
};
#[cfg(feature = "redis")]
pub use redis::{ChargeSpec, Charged, RedisCounterStore};
pub use store::{DurableCounterStore, DurableOptions, MemoryCounterStore, QuotaStore};
pub use window::{Period, Span, Window, Zone};
