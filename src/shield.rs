//! The builder that stacks the configured layers in the order of the design, whatever order
//! the calls came in.
//!
//! ```text
//! audit      → one record per request                       (planned)
//! context    → client ip (trusted proxies), matched route   (always on)
//! ip filter  → CIDR allow / deny
//! throttle   → pre-auth, keyed by client ip                 (planned)
//! auth       → api key | jwt | introspection; Principal     (planned)
//! throttle   → post-auth, keyed by principal                (planned)
//! quota      → per principal plan, calendar windows         (planned)
//! sanitize   → normalize, limits, injection detectors       (planned)
//! inner service
//! ```
//!
//! A layer that is not configured is left out of the stack: it becomes
//! `tower::util::Either::Right` around the inner service, costing one branch and no
//! allocation. All layers keep the inner service's body and error types, so the same
//! Shield fits axum (`Router::layer`), tonic (`Server::builder().layer`) and bare hyper.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_shield::{IpFilterLayer, Shield};
//!
//! let shield = Shield::builder()
//!     .routes(["GET /products", "GET /products/{id}"])
//!     .ip_filter(IpFilterLayer::builder().deny("203.0.113.0/24").unwrap().build())
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new().route("/products", get(|| async { "[]" })).layer(shield);
//! # let _ = app;
//! ```

#[cfg(feature = "ip-filter")]
use tower::util::Either;
use tower_layer::Layer;

use crate::client_ip::ClientIpResolver;
use crate::context::{Context, ContextLayer};
use crate::denial::Renderer;
use crate::error::ConfigError;
#[cfg(feature = "ip-filter")]
use crate::ip_filter::{IpFilter, IpFilterLayer};
use crate::route::{RoutePattern, RouteSet};

/// Entry point: `Shield::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct Shield;

impl Shield {
    /// Starts a builder.
    pub fn builder() -> ShieldBuilder {
        ShieldBuilder::default()
    }
}

/// Collects the layers to stack. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ShieldBuilder {
    resolver: ClientIpResolver,
    routes: Vec<String>,
    #[cfg(feature = "ip-filter")]
    ip_filter: Option<IpFilterLayer>,
    renderer: Option<Renderer>,
}

impl ShieldBuilder {
    /// How client addresses are resolved (trusted proxies); default: the direct peer.
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The API's route templates. The one a request matches is recorded as
    /// [`MatchedRoute`](crate::MatchedRoute) in the request extensions (audit and metrics
    /// use it).
    pub fn routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.routes.extend(routes.into_iter().map(Into::into));
        self
    }

    /// Adds the IP filter.
    #[cfg(feature = "ip-filter")]
    pub fn ip_filter(mut self, layer: IpFilterLayer) -> Self {
        self.ip_filter = Some(layer);
        self
    }

    /// Replaces the denial renderer of every layer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = Some(renderer);
        self
    }

    /// Builds the stacked layer. Fails on invalid or conflicting route patterns.
    pub fn build(self) -> Result<ShieldLayer, ConfigError> {
        let mut routes = RouteSet::builder().key("routes");
        for (i, r) in self.routes.iter().enumerate() {
            routes = routes.pattern(RoutePattern::parse(r, &format!("routes[{i}]"))?, ());
        }
        let routes = routes.try_build()?;
        let renderer = self.renderer.unwrap_or_default();
        Ok(ShieldLayer {
            context: ContextLayer::new(self.resolver).with_routes(routes),
            #[cfg(feature = "ip-filter")]
            ip_filter: self.ip_filter.map(|l| l.with_renderer(renderer.clone())),
        })
    }
}

/// The stacked layers, in the fixed order. Produced by [`ShieldBuilder::build`].
#[derive(Debug, Clone)]
pub struct ShieldLayer {
    context: ContextLayer,
    #[cfg(feature = "ip-filter")]
    ip_filter: Option<IpFilterLayer>,
}

/// The IP filter stage (absent without the `ip-filter` feature).
#[cfg(feature = "ip-filter")]
type IpFilterStage<S> = Either<IpFilter<S>, S>;
#[cfg(not(feature = "ip-filter"))]
type IpFilterStage<S> = S;

/// The service produced by [`ShieldLayer`] around `S`.
pub type ShieldService<S> = Context<IpFilterStage<S>>;

impl<S> Layer<S> for ShieldLayer {
    type Service = ShieldService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        #[cfg(feature = "ip-filter")]
        let inner = match &self.ip_filter {
            Some(l) => Either::Left(l.layer(inner)),
            None => Either::Right(inner),
        };
        self.context.layer(inner)
    }
}
