//! IP allow and deny lists (CIDR, IPv4 and IPv6) on the resolved client address.
//!
//! Rules, in order:
//! 1. an address in the **deny** list is refused;
//! 2. when an **allow** list is configured, an address outside it is refused;
//! 3. everything else passes.
//!
//! Refusals are `403 Forbidden` denials (`PERMISSION_DENIED` for gRPC). When the client
//! address cannot be determined (no peer address in the request extensions), the request is
//! refused unless [`UnknownIp::Allow`] is configured: fail closed by default.
//!
//! The client address is the [`ClientIp`] an outer layer already resolved (the
//! [`Shield`](crate::Shield) does that once per request), or else is resolved here with the
//! layer's own [`ClientIpResolver`] (peer only by default: forwarding headers are ignored
//! unless you configure trusted proxies).
//!
//! ```
//! use std::net::SocketAddr;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::IpFilterLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let filter = IpFilterLayer::builder().deny("203.0.113.0/24").unwrap().build();
//! let svc = ServiceBuilder::new().layer(filter).service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//! });
//! let mut req = Request::new(());
//! req.extensions_mut().insert("203.0.113.9:40000".parse::<SocketAddr>().unwrap());
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 403);
//! # }
//! ```
//!
//! # Deployment caveats
//! Behind a load balancer every peer is the balancer: configure its network as a trusted
//! proxy ([`ClientIpResolver::builder`]) or every client gets the balancer's verdict.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use crate::ClientIp;
use crate::body::BodyFromBytes;
pub use crate::client_ip::UnknownIp;
use crate::client_ip::{CidrSet, ClientIpResolver, client_ip_of, parse_net};
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::future::ShieldFuture;

#[derive(Debug)]
struct Rules {
    allow: CidrSet,
    deny: CidrSet,
    unknown: UnknownIp,
}

impl Rules {
    fn verdict(&self, ip: Option<ClientIp>) -> Option<Denial> {
        let Some(ip) = ip else {
            return match self.unknown {
                UnknownIp::Allow => None,
                UnknownIp::Deny => Some(
                    Denial::new(StatusCode::FORBIDDEN, "ip_filter", "client_ip_unknown")
                        .with_detail("The client address could not be determined."),
                ),
            };
        };
        let denied =
            self.deny.contains(ip.0) || (!self.allow.is_empty() && !self.allow.contains(ip.0));
        denied.then(|| {
            Denial::new(StatusCode::FORBIDDEN, "ip_filter", "ip_denied")
                .with_detail("The client address is not allowed to call this API.")
        })
    }
}

/// Builder for [`IpFilterLayer`].
#[derive(Debug, Clone, Default)]
pub struct IpFilterBuilder {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    unknown: UnknownIp,
    resolver: ClientIpResolver,
    renderer: Renderer,
}

impl IpFilterBuilder {
    /// Allows a network (CIDR or address). Once any is allowed, all others are refused.
    pub fn allow(mut self, cidr: &str) -> Result<Self, ConfigError> {
        self.allow.push(parse_net(cidr, "ip_filter.allow")?);
        Ok(self)
    }
    /// Denies a network (CIDR or address). Deny wins over allow.
    pub fn deny(mut self, cidr: &str) -> Result<Self, ConfigError> {
        self.deny.push(parse_net(cidr, "ip_filter.deny")?);
        Ok(self)
    }
    /// Allows parsed networks.
    pub fn allow_nets(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.allow.extend(nets);
        self
    }
    /// Denies parsed networks.
    pub fn deny_nets(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.deny.extend(nets);
        self
    }
    /// What to do when the client address is unknown (default: deny).
    pub fn on_unknown_ip(mut self, policy: UnknownIp) -> Self {
        self.unknown = policy;
        self
    }
    /// The resolver used when no outer layer resolved the client address.
    pub fn resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }
    /// The denial renderer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Builds the layer.
    pub fn build(self) -> IpFilterLayer {
        IpFilterLayer {
            rules: Arc::new(Rules {
                allow: CidrSet::from_nets(self.allow),
                deny: CidrSet::from_nets(self.deny),
                unknown: self.unknown,
            }),
            resolver: Arc::new(self.resolver),
            renderer: self.renderer,
        }
    }
}

/// Layer that applies IP allow/deny lists. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct IpFilterLayer {
    rules: Arc<Rules>,
    resolver: Arc<ClientIpResolver>,
    renderer: Renderer,
}

impl IpFilterLayer {
    /// Starts a builder.
    pub fn builder() -> IpFilterBuilder {
        IpFilterBuilder::default()
    }

    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Replaces the client IP resolver (used only when no outer layer resolved the address).
    pub fn with_resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;
    fn layer(&self, inner: S) -> IpFilter<S> {
        IpFilter {
            inner,
            layer: self.clone(),
        }
    }
}

/// The IP filter service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct IpFilter<S> {
    inner: S,
    layer: IpFilterLayer,
}

impl<S> IpFilter<S> {
    /// Wraps `inner` with the given filter.
    pub fn new(inner: S, layer: IpFilterLayer) -> Self {
        Self { inner, layer }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IpFilter<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: BodyFromBytes,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ShieldFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let ip = client_ip_of(&mut req, &self.layer.resolver);
        match self.layer.rules.verdict(ip) {
            None => ShieldFuture::inner(self.inner.call(req)),
            Some(denial) => {
                tracing::debug!(client_ip = ?ip, reason = denial.reason(), "ip_filter denied request");
                ShieldFuture::denied(self.layer.renderer.respond(denial, &req))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<ClientIp> {
        Some(ClientIp(s.parse().unwrap()))
    }

    #[test]
    fn deny_wins_over_allow() {
        let l = IpFilterLayer::builder()
            .allow("10.0.0.0/8")
            .unwrap()
            .allow("2001:db8::/32")
            .unwrap()
            .deny("10.6.6.0/24")
            .unwrap()
            .build();
        assert!(l.rules.verdict(ip("10.1.1.1")).is_none());
        assert!(l.rules.verdict(ip("2001:db8::1")).is_none());
        assert_eq!(
            l.rules.verdict(ip("10.6.6.6")).unwrap().reason(),
            "ip_denied"
        );
        assert_eq!(
            l.rules.verdict(ip("192.0.2.1")).unwrap().reason(),
            "ip_denied"
        );
        assert_eq!(
            l.rules.verdict(ip("2001:db9::1")).unwrap().reason(),
            "ip_denied"
        );
    }

    #[test]
    fn unknown_ip_fails_closed_unless_allowed() {
        let l = IpFilterLayer::builder().build();
        assert_eq!(l.rules.verdict(None).unwrap().reason(), "client_ip_unknown");
        assert!(l.rules.verdict(ip("192.0.2.1")).is_none());
        let l = IpFilterLayer::builder()
            .on_unknown_ip(UnknownIp::Allow)
            .build();
        assert!(l.rules.verdict(None).is_none());
    }
}
