//! The builder that stacks the configured layers in the order of the design, whatever order
//! the calls came in.
//!
//! ```text
//! audit      → one record per request                       (feature `audit`)
//! context    → client ip (trusted proxies), matched route   (always on)
//! ip filter  → CIDR allow / deny                             (feature `ip-filter`)
//! throttle   → pre-auth, keyed by client ip                 (feature `throttle`)
//! auth       → api key | jwt | introspection; Principal     (feature `auth`)
//! throttle   → post-auth, keyed by principal                (feature `throttle`)
//! quota      → per principal plan, calendar windows         (feature `quota`)
//! sanitize   → normalize, limits, injection detectors       (feature `sanitize`)
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

#[allow(unused_imports)]
use tower::util::Either;
use tower_layer::Layer;

#[cfg(feature = "audit")]
use crate::audit::{Audit, AuditLayer};
#[cfg(feature = "auth")]
use crate::auth::{Auth, AuthLayer};
use crate::client_ip::ClientIpResolver;
use crate::context::{Context, ContextLayer};
use crate::denial::Renderer;
use crate::error::ConfigError;
#[cfg(feature = "ip-filter")]
use crate::ip_filter::{IpFilter, IpFilterLayer};
#[cfg(feature = "quota")]
use crate::quota::{QuotaLayer, QuotaService, QuotaStore};
use crate::route::{RoutePattern, RouteSet};
#[cfg(feature = "sanitize")]
use crate::sanitize::{Sanitize, SanitizeLayer};
#[cfg(feature = "throttle")]
use crate::throttle::{Throttle, ThrottleLayer};

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
    renderer: Option<Renderer>,
    #[cfg(feature = "audit")]
    audit: Option<AuditLayer>,
    #[cfg(feature = "ip-filter")]
    ip_filter: Option<IpFilterLayer>,
    #[cfg(feature = "throttle")]
    throttle_pre_auth: Option<ThrottleLayer>,
    #[cfg(feature = "auth")]
    auth: Option<AuthLayer>,
    #[cfg(feature = "throttle")]
    throttle_post_auth: Option<ThrottleLayer>,
    #[cfg(feature = "quota")]
    quota: Option<QuotaLayer>,
    #[cfg(feature = "sanitize")]
    sanitize: Option<SanitizeLayer>,
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

    /// Replaces the denial renderer of every layer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = Some(renderer);
        self
    }

    /// Adds the audit layer (outermost: it records every request, denials included).
    #[cfg(feature = "audit")]
    pub fn audit(mut self, layer: AuditLayer) -> Self {
        self.audit = Some(layer);
        self
    }

    /// Adds the IP filter.
    #[cfg(feature = "ip-filter")]
    pub fn ip_filter(mut self, layer: IpFilterLayer) -> Self {
        self.ip_filter = Some(layer);
        self
    }

    /// Adds a throttle before authentication (typically keyed by client IP: shields login
    /// from brute force and floods before any credential is checked).
    #[cfg(feature = "throttle")]
    pub fn throttle_pre_auth(mut self, layer: ThrottleLayer) -> Self {
        self.throttle_pre_auth = Some(layer);
        self
    }

    /// Adds the auth layer (API keys, JWT, introspection, scopes, lockout).
    #[cfg(feature = "auth")]
    pub fn auth(mut self, layer: AuthLayer) -> Self {
        self.auth = Some(layer);
        self
    }

    /// Adds a throttle after authentication (typically keyed by principal, per route).
    #[cfg(feature = "throttle")]
    pub fn throttle_post_auth(mut self, layer: ThrottleLayer) -> Self {
        self.throttle_post_auth = Some(layer);
        self
    }

    /// Adds the quota layer.
    #[cfg(feature = "quota")]
    pub fn quota(mut self, layer: QuotaLayer) -> Self {
        self.quota = Some(layer);
        self
    }

    /// Adds the input sanitizer (innermost).
    #[cfg(feature = "sanitize")]
    pub fn sanitize(mut self, layer: SanitizeLayer) -> Self {
        self.sanitize = Some(layer);
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
        #[allow(unused_variables)]
        let r = &renderer;
        Ok(ShieldLayer {
            context: ContextLayer::new(self.resolver).with_routes(routes),
            #[cfg(feature = "audit")]
            audit: self.audit.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "ip-filter")]
            ip_filter: self.ip_filter.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "throttle")]
            throttle_pre_auth: self.throttle_pre_auth.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "auth")]
            auth: self.auth.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "throttle")]
            throttle_post_auth: self.throttle_post_auth.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "quota")]
            quota: self.quota.map(|l| l.with_renderer(r.clone())),
            #[cfg(feature = "sanitize")]
            sanitize: self.sanitize.map(|l| l.with_renderer(r.clone())),
        })
    }
}

/// The stacked layers, in the fixed order. Produced by [`ShieldBuilder::build`].
#[derive(Debug, Clone)]
pub struct ShieldLayer {
    context: ContextLayer,
    #[cfg(feature = "audit")]
    audit: Option<AuditLayer>,
    #[cfg(feature = "ip-filter")]
    ip_filter: Option<IpFilterLayer>,
    #[cfg(feature = "throttle")]
    throttle_pre_auth: Option<ThrottleLayer>,
    #[cfg(feature = "auth")]
    auth: Option<AuthLayer>,
    #[cfg(feature = "throttle")]
    throttle_post_auth: Option<ThrottleLayer>,
    #[cfg(feature = "quota")]
    quota: Option<QuotaLayer>,
    #[cfg(feature = "sanitize")]
    sanitize: Option<SanitizeLayer>,
}

macro_rules! stage {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $svc:ty) => {
        $(#[$doc])*
        #[cfg(feature = $feature)]
        pub type $name<S> = Either<$svc, S>;
        $(#[$doc])*
        #[cfg(not(feature = $feature))]
        pub type $name<S> = S;
    };
}

stage!(
    /// The audit stage (`Either::Right` when not configured; absent without the feature).
    AuditStage, "audit", Audit<S>
);
stage!(
    /// The IP filter stage.
    IpFilterStage, "ip-filter", IpFilter<S>
);
stage!(
    /// A throttle stage (pre- or post-auth).
    ThrottleStage, "throttle", Throttle<S>
);
stage!(
    /// The auth stage.
    AuthStage, "auth", Auth<S>
);
stage!(
    /// The quota stage.
    QuotaStage, "quota", QuotaService<S, QuotaStore>
);
stage!(
    /// The sanitize stage.
    SanitizeStage, "sanitize", Sanitize<S>
);

/// The service produced by [`ShieldLayer`] around `S`.
pub type ShieldService<S> = AuditStage<
    Context<IpFilterStage<ThrottleStage<AuthStage<ThrottleStage<QuotaStage<SanitizeStage<S>>>>>>>,
>;

/// Wraps `inner` in an optional layer: `Either::Left` when configured.
#[allow(unused_macros)]
macro_rules! maybe {
    ($layer:expr, $inner:expr) => {
        match $layer {
            Some(l) => Either::Left(l.layer($inner)),
            None => Either::Right($inner),
        }
    };
}

impl<S> Layer<S> for ShieldLayer {
    type Service = ShieldService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        #[cfg(feature = "sanitize")]
        let inner = maybe!(&self.sanitize, inner);
        #[cfg(feature = "quota")]
        let inner = maybe!(&self.quota, inner);
        #[cfg(feature = "throttle")]
        let inner = maybe!(&self.throttle_post_auth, inner);
        #[cfg(feature = "auth")]
        let inner = maybe!(&self.auth, inner);
        #[cfg(feature = "throttle")]
        let inner = maybe!(&self.throttle_pre_auth, inner);
        #[cfg(feature = "ip-filter")]
        let inner = maybe!(&self.ip_filter, inner);
        let inner = self.context.layer(inner);
        #[cfg(feature = "audit")]
        let inner = maybe!(&self.audit, inner);
        inner
    }
}
