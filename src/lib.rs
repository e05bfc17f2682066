//! # tower-shield
//!
//! Composable API-security middleware for [tower]: independent layers — IP filter, auth,
//! throttle, quota, input sanitizer, audit — and a builder, [`Shield`], that stacks them in a
//! safe order, so any axum, hyper or tonic service can adopt them one at a time.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_shield::{ClientIpResolver, IpFilterLayer, Shield};
//!
//! let shield = Shield::builder()
//!     .client_ip(ClientIpResolver::builder().trusted_proxy("10.0.0.0/8").unwrap().build())
//!     .ip_filter(IpFilterLayer::builder().deny("203.0.113.0/24").unwrap().build())
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(shield);
//! # let _ = app;
//! ```
//!
//! ## How the pieces meet
//! Layers never import each other. They meet in typed request and response extensions
//! defined here, on the ground floor:
//! - [`ClientIp`] and [`MatchedRoute`] — inserted by the context stage;
//! - [`Principal`] — inserted by auth, read by throttle, quota and audit;
//! - [`Denial`] — attached to the response of every refused request, read by audit;
//! - [`RequestFacts`] — a shared record an outer observer (audit) inserts and inner layers
//!   fill in (client ip, route, principal, sanitizer findings, shadow denials).
//!
//! Every layer keeps the inner service's body type (through [`BodyFromBytes`]) and error
//! type, which is what lets one layer fit axum, tonic and hyper alike.
//!
//! ## Features
//! `ip-filter` (default), `auth`, `throttle`, `quota`, `sanitize`, `audit`, `redis`,
//! `axum`, `tonic`, `full`.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "audit")]
pub mod audit;
#[cfg(feature = "auth")]
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod context;
pub mod denial;
pub mod error;
pub mod facts;
#[cfg(any(feature = "throttle", feature = "quota", feature = "auth"))]
mod fast_hash;
pub mod future;
#[cfg(feature = "ip-filter")]
pub mod ip_filter;
pub mod principal;
#[cfg(feature = "quota")]
pub mod quota;
pub mod ratelimit;
pub mod route;
#[cfg(feature = "sanitize")]
pub mod sanitize;
pub mod shield;
pub mod store;
#[cfg(feature = "throttle")]
pub mod throttle;

#[cfg(feature = "audit")]
pub use audit::{AuditLayer, RequestId};
#[cfg(feature = "auth")]
pub use auth::{AuthLayer, JwtVerifier};
pub use body::BodyFromBytes;
pub use client_ip::{CidrSet, ClientIp, ClientIpResolver, ForwardedHeader};
pub use config::ShieldConfig;
pub use context::{Context, ContextLayer};
pub use denial::{Denial, DenialRenderer, GrpcCodeMap, Renderer, RequestHead};
pub use error::ConfigError;
pub use facts::{InputFinding, RequestFacts};
#[cfg(feature = "ip-filter")]
pub use ip_filter::{IpFilter, IpFilterLayer, UnknownIp};
pub use principal::{CredentialKind, Principal};
#[cfg(feature = "quota")]
pub use quota::{Quota, QuotaLayer, Window};
pub use route::{MatchedRoute, RoutePattern, RouteSet};
#[cfg(feature = "sanitize")]
pub use sanitize::{Sanitize, SanitizeLayer};
pub use shield::{Shield, ShieldBuilder, ShieldLayer, ShieldService};
#[cfg(feature = "throttle")]
pub use throttle::{Policy as ThrottlePolicy, Rate, Throttle, ThrottleLayer};
