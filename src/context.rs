//! The request context stage: resolves the client address and the matched route once per
//! request, and inserts [`ClientIp`] and [`MatchedRoute`] into the request extensions for
//! every later layer.
//!
//! The [`Shield`](crate::Shield) always puts this stage first (after audit). It can also be
//! used alone:
//!
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::{ClientIp, ClientIpResolver, ContextLayer, MatchedRoute, RouteSet};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let routes = RouteSet::builder().route("GET /products/{id}", ()).unwrap().build();
//! let layer = ContextLayer::new(ClientIpResolver::peer_only()).with_routes(routes);
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<()>| async move {
//!     let route = req.extensions().get::<MatchedRoute>().unwrap().template.to_string();
//!     let ip = req.extensions().get::<ClientIp>().unwrap().to_string();
//!     Ok::<_, std::convert::Infallible>(format!("{ip} {route}"))
//! });
//! let mut req = Request::get("/products/7").body(()).unwrap();
//! req.extensions_mut().insert("192.0.2.1:1234".parse::<SocketAddr>().unwrap());
//! assert_eq!(svc.oneshot(req).await.unwrap(), "192.0.2.1 /products/{id}");
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::client_ip::{ClientIp, ClientIpResolver};
use crate::route::RouteSet;

/// Layer producing [`Context`].
#[derive(Debug, Clone)]
pub struct ContextLayer {
    resolver: Arc<ClientIpResolver>,
    routes: Option<Arc<RouteSet<()>>>,
}

impl ContextLayer {
    /// A context stage resolving client addresses with `resolver`.
    pub fn new(resolver: ClientIpResolver) -> Self {
        Self {
            resolver: Arc::new(resolver),
            routes: None,
        }
    }

    /// Also records which of these routes a request matched.
    pub fn with_routes(mut self, routes: RouteSet<()>) -> Self {
        self.routes = (!routes.is_empty()).then(|| Arc::new(routes));
        self
    }

    /// The client address resolver.
    pub fn resolver(&self) -> &ClientIpResolver {
        &self.resolver
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = Context<S>;
    fn layer(&self, inner: S) -> Context<S> {
        Context {
            inner,
            layer: self.clone(),
        }
    }
}

/// Inserts [`ClientIp`] and [`MatchedRoute`](crate::MatchedRoute) into the request
/// extensions. See [`ContextLayer`].
#[derive(Debug, Clone)]
pub struct Context<S> {
    inner: S,
    layer: ContextLayer,
}

impl<S, B> Service<Request<B>> for Context<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if let Some(ip) = self.layer.resolver.resolve(&req) {
            crate::facts::record_client_ip(req.extensions(), ClientIp(ip));
            req.extensions_mut().insert(ClientIp(ip));
        }
        if let Some(m) = (self.layer.routes.as_ref())
            .and_then(|routes| routes.matched_route(req.method(), req.uri().path()))
        {
            crate::facts::record_route(req.extensions(), &m);
            req.extensions_mut().insert(m);
        }
        self.inner.call(req)
    }
}
