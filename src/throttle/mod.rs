//! Throttle: short-window pacing per key (GCRA), with two actions and an in-flight cap.
//!
//! Vocabulary: **throttle** = pacing per key. [`Action::Delay`] *slows a client down* (holds
//! the request until it conforms, up to a bound, then rejects); [`Action::Reject`] answers
//! `429` at once (a classic *rate limit*). [`Policy::in_flight`] caps concurrent requests per
//! key.
//!
//! - Rates read as they are meant: [`Rate::per_second(10)`](Rate::per_second) or
//!   `"600 per minute"` in config — never one request per ten seconds.
//! - Several policies may apply to one request (route patterns via [`RouteSet`](crate::RouteSet));
//!   all must pass. Note that an earlier policy has already been charged when a later one
//!   refuses.
//! - Keys ([`Key`]): client IP (IPv6 masked to /64), [`Principal`](crate::Principal) id,
//!   a header, the matched route, a path or query parameter (a SKU, a promo code), and
//!   composites. The same [`ThrottleLayer`] type serves pre-auth (by IP) and post-auth (by
//!   principal) placements.
//! - Denials: `429` `application/problem+json` (type `…#quota-exceeded`, member
//!   `violated-policies`), `Retry-After` rounded up (≥ 1), `RateLimit-Policy`/`RateLimit`
//!   fields (never a `pk` with the raw key); gRPC requests get `RESOURCE_EXHAUSTED` through
//!   the [`Renderer`](crate::Renderer). With [`ThrottleBuilder::rate_limit_headers`], allowed
//!   responses carry the fields too.
//! - Shadow mode per policy: would-be denials are recorded in
//!   [`RequestFacts`](crate::RequestFacts), the request goes through.
//!
//! ```
//! use std::net::SocketAddr;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_shield::throttle::{Policy, Rate, ThrottleLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let throttle = ThrottleLayer::builder()
//!     .policy(Policy::rate("per-ip", Rate::per_second(10)).burst(2))
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(throttle).service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//! });
//! let req = || {
//!     let mut r = Request::new(());
//!     r.extensions_mut().insert("192.0.2.7:40000".parse::<SocketAddr>().unwrap());
//!     r
//! };
//! assert_eq!(svc.ready().await.unwrap().call(req()).await.unwrap().status(), 200);
//! assert_eq!(svc.ready().await.unwrap().call(req()).await.unwrap().status(), 200);
//! let res = svc.ready().await.unwrap().call(req()).await.unwrap();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()["ratelimit"], r#""per-ip";r=0;t=1"#);
//! # }
//! ```
//!
//! # Stores
//! In memory by default ([`MemoryRateStore`]: bounded, idle keys evicted automatically,
//! a cap that never evicts live keys). With the `redis` feature,
//! [`ThrottleBuilder::redis`] decides rate policies in Redis with one Lua script per
//! decision and an explicit [`FailureMode`](crate::store::FailureMode).
//!
//! # Deployment caveats
//! - Behind a load balancer, configure trusted proxies, or every client shares the
//!   balancer's key.
//! - `Delay` holds requests with `tokio::time::sleep`; the decision itself uses the layer's
//!   clock. Waiting requests per key are bounded by `max_wait / interval` (each reservation
//!   moves the key's schedule forward by one interval, and no reservation is made beyond
//!   `max_wait`).

pub mod config;
mod fast;
mod layer;
pub mod memory;
mod policy;
#[cfg(feature = "redis")]
pub mod redis;

pub use config::{PolicyConfig, ThrottleConfig};
pub use layer::{
    InFlightGuards, PROBLEM_QUOTA_EXCEEDED, ResponseFuture, Throttle, ThrottleBuilder,
    ThrottleLayer,
};
pub use memory::MemoryRateStore;
pub use policy::{Action, Key, KeyPart, Limit, Policy, Rate, RateParseError};
#[cfg(feature = "redis")]
pub use redis::RedisRateStore;
