//! Authentication and authorization: API keys, JWT bearer tokens, OAuth2 introspection,
//! route scope policies, and brute-force lockout.
//!
//! The [`AuthLayer`] proves who is calling and what it may do:
//! 1. a caller banned by the [lockout](Lockout) is refused (429/403 + `Retry-After`);
//! 2. public routes pass untouched;
//! 3. the credential is taken from `Authorization: Bearer`, the API key header
//!    (`x-api-key`) or, when enabled, a query parameter — two credentials in one request
//!    are `invalid_request`;
//! 4. it is verified: an [API key](ApiKeyFormat) (checksum, lookup by id, constant-time
//!    hash comparison), a [JWT](JwtVerifier), or an opaque token through
//!    [introspection](Introspector);
//! 5. the route's required scopes are checked;
//! 6. the [`Principal`] is inserted into the request extensions (and recorded in
//!    [`RequestFacts`](crate::RequestFacts)) for throttle, quota, audit and handlers.
//!
//! Refusals follow RFC 6750 exactly: no credentials → 401 `WWW-Authenticate: Bearer
//! realm="…"` without an error code; a bad, unknown, revoked or expired credential → 401
//! `error="invalid_token"`; a missing scope → 403 `error="insufficient_scope",
//! scope="…"`; a malformed request → 400 `error="invalid_request"`. gRPC calls get
//! `UNAUTHENTICATED` / `PERMISSION_DENIED` through the [`Renderer`]. No denial tells whether
//! a key id exists: unknown ids and wrong secrets get the same answer after the same work.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::auth::{ApiKeyFormat, ApiKeyRecord, AuthLayer, KeyHasher, MemoryKeyStore};
//! use tower_shield::Principal;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let key = ApiKeyFormat::default().generate();
//! let hasher = KeyHasher::sha256();
//! let store = MemoryKeyStore::new().with(
//!     ApiKeyRecord::new(key.key_id(), hasher.parse_hash(&hasher.hash(key.secret()), "hash").unwrap())
//!         .client_id("shop-frontend")
//!         .scopes(["products:read"]),
//! );
//! let auth = AuthLayer::builder()
//!     .realm("shop")
//!     .api_keys(store)
//!     .require("GET /products/*", ["products:read"]).unwrap()
//!     .require("POST /orders", ["orders:write"]).unwrap()
//!     .public("GET /health").unwrap()
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(auth).service_fn(|req: Request<()>| async move {
//!     let who = req.extensions().get::<Principal>().map(|p| p.id().to_owned());
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(who.unwrap_or_default()))))
//! });
//!
//! let req = Request::get("/products/7").header("x-api-key", key.secret()).body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
//!
//! let req = Request::post("/orders").header("authorization", format!("Bearer {}", key.secret()))
//!     .body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 403);
//! assert_eq!(res.headers()["www-authenticate"],
//!     r#"Bearer realm="shop", error="insufficient_scope", scope="orders:write""#);
//!
//! let res = svc.oneshot(Request::get("/products/7").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="shop""#);
//! # }
//! ```
//!
//! # Deployment caveats
//! - Lockout keys on the client address: behind a load balancer configure trusted proxies
//!   ([`ClientIpResolver`]) or every client shares the balancer's ban.
//! - Query-parameter keys end up in access logs and browser history (RFC 6750 says SHOULD
//!   NOT); they are off by default.
//! - API keys and JWTs are checked locally: revoking a key needs a store update, revoking a
//!   JWT needs short lifetimes (or introspection).

// Denials are the cold path: returning them by value keeps the hot path free of boxing.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

mod apikey;
pub mod config;
#[cfg(feature = "axum")]
mod extract;
mod introspect;
mod jwt;
mod lockout;
#[cfg(feature = "redis")]
mod lockout_redis;
mod login;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

pub use apikey::{
    ApiKeyFormat, ApiKeyRecord, GeneratedKey, HashFormats, KeyHasher, KeyStore, MemoryKeyStore,
    ParsedKey, StoredHash,
};

pub use config::AuthConfig;
pub use introspect::{
    IntrospectionFailure, Introspector, IntrospectorBuilder, OnIntrospectionError,
};
pub use jwt::{JwtVerifier, JwtVerifierBuilder, KeySet, RemoteSource, TokenError};
pub use lockout::{Lockout, LockoutPolicy, LockoutStore, MemoryLockoutStore};
#[cfg(feature = "redis")]
pub use lockout_redis::RedisLockoutStore;

use crate::body::BodyFromBytes;
use crate::client_ip::{ClientIpResolver, client_ip_of};
use crate::clock::{SharedClock, system_clock};
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::principal::{CredentialKind, Principal};
use crate::route::{RoutePattern, RouteSet};
#[cfg(feature = "redis")]
use crate::store::FailureMode;

const LAYER: &str = "auth";

/// Which credential kinds a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// API keys.
    pub api_key: bool,
    /// JWT bearer tokens.
    pub jwt: bool,
    /// Opaque tokens (introspection).
    pub introspection: bool,
}

impl Accept {
    /// Every configured kind.
    pub const ALL: Accept = Accept {
        api_key: true,
        jwt: true,
        introspection: true,
    };

    /// Only the listed kinds.
    pub fn only(kinds: impl IntoIterator<Item = CredentialKind>) -> Self {
        let mut a = Accept {
            api_key: false,
            jwt: false,
            introspection: false,
        };
        for k in kinds {
            match k {
                CredentialKind::ApiKey => a.api_key = true,
                CredentialKind::Jwt => a.jwt = true,
                CredentialKind::Introspection => a.introspection = true,
                _ => {}
            }
        }
        a
    }

    fn allows(&self, kind: CredentialKind) -> bool {
        match kind {
            CredentialKind::ApiKey => self.api_key,
            CredentialKind::Jwt => self.jwt,
            CredentialKind::Introspection => self.introspection,
            _ => false,
        }
    }
}

/// What a route requires.
#[derive(Debug, Clone)]
pub struct RouteRule {
    public: bool,
    scopes: Vec<String>,
    accept: Accept,
    login: bool,
}

impl RouteRule {
    /// Any authenticated caller.
    pub fn authenticated() -> Self {
        Self {
            public: false,
            scopes: Vec::new(),
            accept: Accept::ALL,
            login: false,
        }
    }
    /// Callers holding all of these scopes.
    pub fn scopes<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            scopes: scopes.into_iter().map(Into::into).collect(),
            ..Self::authenticated()
        }
    }
    /// No authentication.
    pub fn public() -> Self {
        Self {
            public: true,
            ..Self::authenticated()
        }
    }
    /// Restricts the credential kinds accepted on the route.
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }
    /// Marks the route as a login endpoint of the inner service: its 401/403 answers count
    /// as authentication failures for the caller's address (requires a lockout policy).
    pub fn login(mut self) -> Self {
        self.login = true;
        self
    }
}

struct ApiKeys {
    format: ApiKeyFormat,
    hasher: KeyHasher,
    store: Arc<dyn KeyStore>,
    /// The same store when it is a [`MemoryKeyStore`]: looked up directly, without the
    /// dynamic calls of [`KeyStore::visit`].
    memory: Option<Arc<MemoryKeyStore>>,
    /// What an unknown key id is compared with, in each format.
    dummy_v2: StoredHash,
    dummy_whole_key: StoredHash,
}

struct Core {
    realm: String,
    api_keys: Option<ApiKeys>,
    api_key_header: Option<HeaderName>,
    query_param: Option<String>,
    jwt: Option<JwtVerifier>,
    introspection: Option<Introspector>,
    rules: RouteSet<RouteRule>,
    default_rule: RouteRule,
    default_scopes: Option<(String, String)>,
    lockout: Option<Arc<Lockout>>,
    login_field: Option<String>,
    login_body_limit: usize,
    resolver: ClientIpResolver,
    clock: SharedClock,
    max_token_len: usize,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("realm", &self.realm)
            .field("api_keys", &self.api_keys.is_some())
            .field("jwt", &self.jwt)
            .field("introspection", &self.introspection)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// Builder for [`AuthLayer`].
pub struct AuthLayerBuilder {
    realm: String,
    format: ApiKeyFormat,
    hasher: KeyHasher,
    store: Option<Arc<dyn KeyStore>>,
    memory: Option<Arc<MemoryKeyStore>>,
    api_key_header: Option<String>,
    query_param: Option<String>,
    jwt: Option<JwtVerifier>,
    introspection: Option<Introspector>,
    rules: Vec<(RoutePattern, RouteRule)>,
    default_rule: RouteRule,
    default_scopes: Option<(String, String)>,
    lockout: Option<LockoutPolicy>,
    #[cfg(feature = "redis")]
    lockout_redis: Option<(RedisLockoutStore, FailureMode)>,
    login_field: Option<String>,
    login_body_limit: usize,
    resolver: ClientIpResolver,
    clock: SharedClock,
    renderer: Renderer,
    max_token_len: usize,
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl AuthLayerBuilder {
    /// The `realm` of the challenges (default `"api"`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }
    /// Accepts API keys looked up in `store`.
    pub fn api_keys(mut self, store: impl KeyStore) -> Self {
        let store = Arc::new(store);
        let any: &dyn std::any::Any = &*store;
        self.memory = match any.downcast_ref::<Arc<MemoryKeyStore>>() {
            Some(m) => Some(m.clone()),
            None => (store.clone() as Arc<dyn std::any::Any + Send + Sync>)
                .downcast::<MemoryKeyStore>()
                .ok(),
        };
        self.store = Some(store);
        self
    }
    /// Accepts API keys from a shared store.
    pub fn api_key_store(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.store = Some(store);
        self.memory = None;
        self
    }
    /// The key format (prefix, length).
    pub fn api_key_format(mut self, format: ApiKeyFormat) -> Self {
        self.format = format;
        self
    }
    /// How stored hashes were made (default SHA-256).
    pub fn key_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }
    /// The API key header (default `x-api-key`; `None` disables it).
    pub fn api_key_header(mut self, name: Option<&str>) -> Self {
        self.api_key_header = name.map(str::to_owned);
        self
    }
    /// Also accepts API keys from this query parameter (off by default).
    pub fn api_key_query(mut self, param: impl Into<String>) -> Self {
        self.query_param = Some(param.into());
        self
    }
    /// Accepts JWT bearer tokens.
    pub fn jwt(mut self, verifier: JwtVerifier) -> Self {
        self.jwt = Some(verifier);
        self
    }
    /// Accepts opaque bearer tokens validated by introspection.
    pub fn introspection(mut self, introspector: Introspector) -> Self {
        self.introspection = Some(introspector);
        self
    }
    /// A rule for a route pattern (`"GET /products/*"`).
    pub fn route(mut self, pattern: &str, rule: RouteRule) -> Result<Self, ConfigError> {
        let key = format!("auth.routes[{}]", self.rules.len());
        self.rules.push((RoutePattern::parse(pattern, &key)?, rule));
        Ok(self)
    }
    /// Requires all of `scopes` on a route pattern.
    pub fn require<I, S>(self, pattern: &str, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.route(pattern, RouteRule::scopes(scopes))
    }
    /// Makes a route public.
    pub fn public(self, pattern: &str) -> Result<Self, ConfigError> {
        self.route(pattern, RouteRule::public())
    }
    /// The rule for requests matching no route (default: any authenticated caller).
    pub fn default_rule(mut self, rule: RouteRule) -> Self {
        self.default_rule = rule;
        self
    }
    /// For requests matching no route rule: safe methods (GET, HEAD, OPTIONS) need `read`,
    /// others need `write`.
    pub fn default_scopes(mut self, read: impl Into<String>, write: impl Into<String>) -> Self {
        self.default_scopes = Some((read.into(), write.into()));
        self
    }
    /// Enables the failure lockout (state in this instance's memory unless
    /// [`lockout_redis`](Self::lockout_redis) is set).
    pub fn lockout(mut self, policy: LockoutPolicy) -> Self {
        self.lockout = Some(policy);
        self
    }
    /// Keeps the lockout state in Redis, shared by every instance on the same server and
    /// key prefix; `failure_mode` applies when Redis fails: `Reject` refuses requests (503),
    /// `Allow` disables the lockout, `LocalFallback` counts in this instance's memory.
    #[cfg(feature = "redis")]
    pub fn lockout_redis(mut self, store: RedisLockoutStore, failure_mode: FailureMode) -> Self {
        self.lockout_redis = Some((store, failure_mode));
        self
    }
    /// On [login routes](RouteRule::login), also counts the app's 401/403 answers for the
    /// username in this field of a form (`application/x-www-form-urlencoded`) or JSON body,
    /// and refuses a banned username. The body is buffered up to
    /// [`login_body_limit`](Self::login_body_limit) and passed on unchanged.
    pub fn login_username_field(mut self, field: impl Into<String>) -> Self {
        self.login_field = Some(field.into());
        self
    }
    /// Largest login body inspected for the username (default 16 KiB). Larger bodies are
    /// passed on without inspection.
    pub fn login_body_limit(mut self, bytes: usize) -> Self {
        self.login_body_limit = bytes;
        self
    }
    /// The client address resolver (used when no outer layer resolved it).
    pub fn resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }
    /// The clock (key expiry, lockout).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// The denial renderer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Longest credential accepted (default 8 KiB); longer ones are `invalid_token`.
    pub fn max_token_len(mut self, n: usize) -> Self {
        self.max_token_len = n;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> Result<AuthLayer, ConfigError> {
        if self.realm.is_empty()
            || self.realm.len() > 100
            || self
                .realm
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control() || !c.is_ascii())
        {
            return Err(ConfigError::invalid(
                "auth.realm",
                "expected 1 to 100 printable ASCII characters without '\"' or '\\\\'",
            ));
        }
        let api_key_header = match &self.api_key_header {
            Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid("auth.api_keys.header", "invalid header name")
            })?),
            None => None,
        };
        if self.store.is_none() && self.jwt.is_none() && self.introspection.is_none() {
            return Err(ConfigError::invalid(
                "auth",
                "no credential method configured (api keys, jwt or introspection)",
            ));
        }
        let mut rules = RouteSet::builder().key("auth.routes");
        for (p, r) in self.rules {
            rules = rules.pattern(p, r);
        }
        let rules = rules.try_build()?;
        let api_keys = self.store.map(|store| ApiKeys {
            format: self.format,
            dummy_v2: self.hasher.dummy(true),
            dummy_whole_key: self.hasher.dummy(false),
            hasher: self.hasher,
            store,
            memory: self.memory,
        });
        if self.login_field.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid(
                "auth.lockout.username_field",
                "expected a field name",
            ));
        }
        if self.login_field.is_some() && self.lockout.is_none() {
            return Err(ConfigError::invalid(
                "auth.lockout.username_field",
                "login watching needs a lockout policy",
            ));
        }
        #[cfg(feature = "redis")]
        if self.lockout_redis.is_some() && self.lockout.is_none() {
            return Err(ConfigError::invalid(
                "auth.lockout.redis_url",
                "a lockout store needs a lockout policy",
            ));
        }
        let lockout = self.lockout.map(|p| {
            #[cfg(feature = "redis")]
            if let Some((store, mode)) = self.lockout_redis {
                return Arc::new(Lockout::redis(p, store, mode, self.clock.clone()));
            }
            Arc::new(Lockout::new(p, self.clock.clone()))
        });
        let core = Core {
            realm: self.realm,
            api_keys,
            api_key_header,
            query_param: self.query_param,
            jwt: self.jwt,
            introspection: self.introspection,
            rules,
            default_rule: self.default_rule,
            default_scopes: self.default_scopes,
            lockout,
            login_field: self.login_field,
            login_body_limit: self.login_body_limit,
            resolver: self.resolver,
            clock: self.clock,
            max_token_len: self.max_token_len,
        };
        Ok(AuthLayer {
            core: Arc::new(core),
            renderer: self.renderer,
        })
    }
}

/// The auth layer. See the [module docs](self).
#[derive(Clone)]
pub struct AuthLayer {
    core: Arc<Core>,
    renderer: Renderer,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

impl AuthLayer {
    /// Starts a builder.
    pub fn builder() -> AuthLayerBuilder {
        AuthLayerBuilder {
            realm: "api".into(),
            format: ApiKeyFormat::default(),
            hasher: KeyHasher::sha256(),
            store: None,
            memory: None,
            api_key_header: Some("x-api-key".into()),
            query_param: None,
            jwt: None,
            introspection: None,
            rules: Vec::new(),
            default_rule: RouteRule::authenticated(),
            default_scopes: None,
            lockout: None,
            #[cfg(feature = "redis")]
            lockout_redis: None,
            login_field: None,
            login_body_limit: 16 * 1024,
            resolver: ClientIpResolver::default(),
            clock: system_clock(),
            renderer: Renderer::default(),
            max_token_len: 8 * 1024,
        }
    }

    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// The lockout tracker, when configured.
    pub fn lockout(&self) -> Option<&Arc<Lockout>> {
        self.core.lockout.as_ref()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The auth service. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> Auth<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: AuthLayer) -> Self {
        Self { inner, layer }
    }
}

// ---------------------------------------------------------------------------------------
// Denials (RFC 6750 §3)

fn challenge(realm: &str, rest: &str) -> HeaderValue {
    let s = if rest.is_empty() {
        format!("Bearer realm=\"{realm}\"")
    } else {
        format!("Bearer realm=\"{realm}\", {rest}")
    };
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

impl Core {
    #[cold]
    #[inline(never)]
    fn no_credentials(&self) -> Denial {
        Denial::new(StatusCode::UNAUTHORIZED, LAYER, "missing_credentials")
            .with_detail("Authentication is required.")
            .with_www_authenticate(challenge(&self.realm, ""))
    }
    #[cold]
    #[inline(never)]
    fn invalid_request(&self, detail: &'static str) -> Denial {
        Denial::new(StatusCode::BAD_REQUEST, LAYER, "invalid_request")
            .with_detail(detail)
            .with_www_authenticate(challenge(&self.realm, "error=\"invalid_request\""))
    }
    #[cold]
    #[inline(never)]
    fn invalid_token(&self, reason: &'static str, description: &'static str) -> Denial {
        Denial::new(StatusCode::UNAUTHORIZED, LAYER, reason)
            .with_detail(description)
            .with_www_authenticate(challenge(
                &self.realm,
                &format!("error=\"invalid_token\", error_description=\"{description}\""),
            ))
    }
    #[cold]
    #[inline(never)]
    fn insufficient_scope(&self, scopes: &[String]) -> Denial {
        let list = scopes.join(" ");
        Denial::new(StatusCode::FORBIDDEN, LAYER, "insufficient_scope")
            .with_detail("The credential lacks a scope this route requires.")
            .with_www_authenticate(challenge(
                &self.realm,
                &format!("error=\"insufficient_scope\", scope=\"{list}\""),
            ))
            .with_member("required-scopes", serde_json::json!(scopes))
    }
    #[cold]
    #[inline(never)]
    fn banned(&self, wait: Duration, status: StatusCode) -> Denial {
        Denial::new(status, LAYER, "locked_out")
            .with_detail("Too many failed authentication attempts; try again later.")
            .with_retry_after(wait)
    }
    #[cold]
    #[inline(never)]
    fn lockout_unavailable(&self) -> Denial {
        Denial::new(
            StatusCode::SERVICE_UNAVAILABLE,
            LAYER,
            "lockout_unavailable",
        )
        .with_detail("Authentication is unavailable; retry later.")
        .with_retry_after(Duration::from_secs(1))
    }
}

// ---------------------------------------------------------------------------------------
// Credential extraction

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Bearer,
    KeyHeader,
    Query,
}

fn is_b64token(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    !t.is_empty()
        && t.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The value as text when every byte is visible ASCII or a tab, like
/// [`HeaderValue::to_str`], checked without an early exit so that it vectorizes.
fn header_str(v: &HeaderValue) -> Option<&str> {
    let b = v.as_bytes();
    let visible = b.iter().fold(true, |ok, &c| {
        ok & ((c.wrapping_sub(0x20) < 0x5f) | (c == b'\t'))
    });
    if visible {
        std::str::from_utf8(b).ok()
    } else {
        None
    }
}

impl Core {
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Result<Option<(Source, &'a str)>, Denial> {
        let mut found: Option<(Source, &'a str)> = None;
        let mut put = |src, tok| -> Result<(), Denial> {
            if found.is_some() {
                return Err(self.invalid_request("More than one credential was sent."));
            }
            found = Some((src, tok));
            Ok(())
        };
        let mut auth = req.headers().get_all(AUTHORIZATION).iter();
        if let Some(v) = auth.next() {
            if auth.next().is_some() {
                return Err(self.invalid_request("More than one Authorization header was sent."));
            }
            let s = header_str(v)
                .ok_or_else(|| self.invalid_request("The Authorization header is malformed."))?;
            let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                let tok = rest.trim_start_matches(' ');
                if !is_b64token(tok) {
                    return Err(self.invalid_request("The bearer token is malformed."));
                }
                put(Source::Bearer, tok)?;
            }
        }
        if let Some(h) = &self.api_key_header {
            let mut vals = req.headers().get_all(h).iter();
            if let Some(v) = vals.next() {
                if vals.next().is_some() {
                    return Err(self.invalid_request("More than one API key header was sent."));
                }
                let s = header_str(v)
                    .map(str::trim_ascii)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| self.invalid_request("The API key header is malformed."))?;
                put(Source::KeyHeader, s)?;
            }
        }
        if let (Some(param), Some(q)) = (&self.query_param, req.uri().query()) {
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == param {
                    put(Source::Query, v)?;
                }
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------
// Verification

/// Header maps up to this many values are scanned once for the credential headers.
const SCAN_HEADERS: usize = 16;

/// The credential header of the API key fast path.
enum Credential<'h> {
    Authorization(&'h HeaderValue),
    KeyHeader(&'h HeaderValue),
}

/// The denials are boxed: they are the cold path, and a small `Verdict` keeps the accepted
/// path free of large moves.
enum Verdict {
    Missing(Box<Denial>),
    Ok(Principal),
    Deny(Box<Denial>, Option<String>),
    Pending(Pin<Box<dyn Future<Output = Result<Principal, Denial>> + Send>>),
}

impl Verdict {
    fn deny(d: Denial, account: Option<String>) -> Self {
        Verdict::Deny(Box::new(d), account)
    }
}

impl Core {
    fn check_api_key(&self, token: &str) -> Verdict {
        let parsed = self
            .api_keys
            .as_ref()
            .and_then(|keys| Some((keys, keys.format.parse_bytes(token.as_bytes())?)));
        match parsed {
            Some((keys, key)) => self.check_raw_key(keys, &key),
            None => Verdict::deny(
                self.invalid_token("invalid_token", "The access token is invalid"),
                None,
            ),
        }
    }

    /// The common case without text conversions: one API key in the key header, or as
    /// `Authorization: Bearer`, and no other credential. Anything else, or a value that is
    /// not a well-formed key, takes the general path ([`extract`](Self::extract)), which
    /// answers the same for what this accepts (a key that parses is ASCII, so the header
    /// is valid text).
    fn api_key_fast<B>(&self, req: &Request<B>) -> Option<Verdict> {
        let keys = self.api_keys.as_ref()?;
        if self.query_param.is_some() && req.uri().query().is_some() {
            return None;
        }
        let token = match self.credential_headers(req.headers())? {
            Credential::KeyHeader(v) => v.as_bytes().trim_ascii(),
            Credential::Authorization(v) => {
                let b = v.as_bytes();
                let space = b.iter().position(|&c| c == b' ')?;
                if !b[..space].eq_ignore_ascii_case(b"bearer") {
                    return None;
                }
                let rest = &b[space..];
                &rest[rest.iter().position(|&c| c != b' ')?..]
            }
        };
        if token.len() > self.max_token_len {
            return None;
        }
        let key = keys.format.parse_bytes(token)?;
        Some(self.check_raw_key(keys, &key))
    }

    /// The one credential header of the fast path: exactly one `Authorization` value and no
    /// key header, or exactly one key header value and no `Authorization`. A small map (most
    /// requests) is scanned once instead of two hashed lookups.
    #[inline]
    fn credential_headers<'h>(&self, headers: &'h HeaderMap) -> Option<Credential<'h>> {
        let h = self.api_key_header.as_ref();
        if headers.len() <= SCAN_HEADERS {
            let (mut auth, mut key) = ((0u32, None), (0u32, None));
            for (name, v) in headers {
                let slot = if *name == AUTHORIZATION {
                    &mut auth
                } else if h.is_some_and(|h| h == name) {
                    &mut key
                } else {
                    continue;
                };
                slot.0 += 1;
                slot.1.get_or_insert(v);
            }
            return match (auth, key) {
                ((1, Some(v)), (0, _)) => Some(Credential::Authorization(v)),
                ((0, _), (1, Some(v))) => Some(Credential::KeyHeader(v)),
                _ => None,
            };
        }
        let mut auth = headers.get_all(AUTHORIZATION).iter();
        match (auth.next(), h) {
            (None, Some(h)) => {
                let mut vals = headers.get_all(h).iter();
                let v = vals.next()?;
                vals.next().is_none().then_some(Credential::KeyHeader(v))
            }
            (Some(v), h) => (auth.next().is_none() && !h.is_some_and(|h| headers.contains_key(h)))
                .then_some(Credential::Authorization(v)),
            (None, None) => None,
        }
    }

    fn check_raw_key(&self, keys: &ApiKeys, parsed: &apikey::RawKey<'_>) -> Verdict {
        let account = || Some(format!("key:{}", parsed.key_id()));
        // (a shared lockout was checked before, asynchronously)
        if let Some(l) = self.lockout.as_ref().filter(|l| l.policy().per_credential)
            && let Some(mem) = l.memory()
            && let Some(wait) = account().as_deref().and_then(|a| mem.banned_now(a))
        {
            return Verdict::deny(self.banned(wait, l.policy().status), None);
        }
        // the same hashing for an unknown id as for a known one: every format the store
        // holds, whichever record was found
        if let Some(m) = &keys.memory {
            return self.judge(
                keys,
                parsed,
                m.hash_formats(),
                m.lookup(parsed.key_id_bytes()),
            );
        }
        let formats = keys.store.hash_formats();
        let mut verdict = None;
        keys.store.visit(parsed.key_id_bytes(), &mut |record| {
            verdict = Some(self.judge(keys, parsed, formats, record));
        });
        // a store that never calls back refuses the key
        verdict.unwrap_or_else(|| {
            Verdict::deny(
                self.invalid_token("invalid_token", "The access token is invalid"),
                account(),
            )
        })
    }

    /// The verdict on a parsed key and the record of its id (`None`: unknown id), after
    /// hashing the key in every format of `formats`.
    #[inline]
    fn judge(
        &self,
        keys: &ApiKeys,
        parsed: &apikey::RawKey<'_>,
        formats: HashFormats,
        record: Option<&ApiKeyRecord>,
    ) -> Verdict {
        let dummy = if formats.v2 {
            &keys.dummy_v2
        } else {
            &keys.dummy_whole_key
        };
        let expected = record.map_or(dummy, |r| &r.hash);
        let matches = keys.hasher.verify_parsed(parsed, expected, formats);
        match record {
            Some(r) if matches && !r.disabled => match r.expires_at {
                Some(exp) if self.clock.wall() >= exp => Verdict::deny(
                    self.invalid_token("token_expired", "The access token expired"),
                    None,
                ),
                _ => Verdict::Ok(r.principal()),
            },
            _ => Verdict::deny(
                self.invalid_token("invalid_token", "The access token is invalid"),
                Some(format!("key:{}", parsed.key_id())),
            ),
        }
    }

    fn jwt_error(&self, e: TokenError) -> Denial {
        self.invalid_token(e.reason(), e.description())
    }

    fn check_bearer(self: &Arc<Self>, token: &str, accept: Accept) -> Verdict {
        if let Some(keys) = &self.api_keys
            && keys.format.looks_like_key(token)
        {
            return self.check_api_key(token);
        }
        let looks_jwt = token.bytes().filter(|b| *b == b'.').count() == 2;
        if let Some(jwt) = self.jwt.as_ref().filter(|_| looks_jwt && accept.jwt) {
            return match jwt.verify(token) {
                Ok(p) => Verdict::Ok(p),
                Err(TokenError::UnknownKey) if jwt.may_refresh() => {
                    let jwt = jwt.clone();
                    let core = self.clone();
                    let token = token.to_owned();
                    Verdict::Pending(Box::pin(async move {
                        jwt.verify_refreshing(&token)
                            .await
                            .map_err(|e| core.jwt_error(e))
                    }))
                }
                Err(e) => Verdict::deny(self.jwt_error(e), None),
            };
        }
        if let Some(intro) = self.introspection.as_ref().filter(|_| accept.introspection) {
            return match intro.cached(token) {
                Some(Ok(p)) => Verdict::Ok(p),
                Some(Err(e)) => Verdict::deny(self.introspection_error(e), None),
                None => {
                    let intro = intro.clone();
                    let core = self.clone();
                    let token = token.to_owned();
                    Verdict::Pending(Box::pin(async move {
                        intro
                            .introspect(&token)
                            .await
                            .map_err(|e| core.introspection_error(e))
                    }))
                }
            };
        }
        Verdict::deny(
            self.invalid_token("invalid_token", "The access token is invalid"),
            None,
        )
    }

    fn introspection_error(&self, e: IntrospectionFailure) -> Denial {
        match e {
            IntrospectionFailure::Inactive => {
                self.invalid_token("invalid_token", "The access token is invalid")
            }
            IntrospectionFailure::Unavailable
                if self
                    .introspection
                    .as_ref()
                    .is_some_and(|i| i.on_error() == OnIntrospectionError::InvalidToken) =>
            {
                self.invalid_token(
                    "introspection_unavailable",
                    "The access token could not be validated",
                )
            }
            IntrospectionFailure::Unavailable => Denial::new(
                StatusCode::SERVICE_UNAVAILABLE,
                LAYER,
                "introspection_unavailable",
            )
            .with_detail(
                "The token could not be validated; the authorization server is unavailable.",
            )
            .with_retry_after(Duration::from_secs(5)),
        }
    }

    fn required_scopes<'r>(&'r self, rule: &'r RouteRule, method: &Method) -> &'r [String] {
        if !rule.scopes.is_empty() {
            return &rule.scopes;
        }
        match &self.default_scopes {
            Some((read, write)) if std::ptr::eq(rule, &self.default_rule) => {
                let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
                std::slice::from_ref(if safe { read } else { write })
            }
            _ => &[],
        }
    }

    fn authorize(&self, p: &Principal, rule: &RouteRule, method: &Method) -> Result<(), Denial> {
        if !rule.accept.allows(p.kind()) {
            return Err(self.invalid_token(
                "credential_not_accepted",
                "This kind of credential is not accepted here",
            ));
        }
        let required = self.required_scopes(rule, method);
        if required.iter().all(|s| p.has_scope(s)) {
            Ok(())
        } else {
            Err(self.insufficient_scope(required))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Service

struct Watch {
    lockout: Arc<Lockout>,
    key: String,
}

impl Watch {
    fn observe(&self, status: StatusCode) {
        if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
            && let Some(ban) = self
                .lockout
                .memory()
                .and_then(|m| m.fail_now(&self.key, self.lockout.policy()))
        {
            tracing::warn!(key = %self.key, ban_secs = ban.as_secs(), "auth: login failures; caller banned");
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`Auth`].
    #[project = AuthFutureProj]
    pub struct AuthFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
        watch: Option<Box<Watch>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner { #[pin] fut: F },
        Denied { res: Option<Response<B>> },
        Pending { fut: BoxFuture<Result<Response<B>, E>> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.state.project() {
            StateProj::Inner { fut } => std::task::ready!(fut.poll(cx)),
            StateProj::Denied { res } => {
                return Poll::Ready(Ok(res.take().expect("AuthFuture polled after completion")));
            }
            StateProj::Pending { fut } => std::task::ready!(fut.as_mut().poll(cx)),
        };
        if let (Some(w), Ok(res)) = (this.watch.take(), &out) {
            w.observe(res.status());
        }
        Poll::Ready(out)
    }
}

impl<F, B, E> AuthFuture<F, B, E> {
    fn denied(res: Response<B>) -> Self {
        Self {
            state: State::Denied { res: Some(res) },
            watch: None,
        }
    }
    fn inner(fut: F, watch: Option<Box<Watch>>) -> Self {
        Self {
            state: State::Inner { fut },
            watch,
        }
    }
}

fn admit<B>(req: &mut Request<B>, p: Principal) {
    crate::facts::record_principal(req.extensions(), &p);
    req.extensions_mut().insert(p);
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Auth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: BodyFromBytes + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let core = &self.layer.core;
        let renderer = &self.layer.renderer;
        let rule = core.rule(&req);

        // A shared lockout (a round trip per decision) or a login body to read: the whole
        // request is handled asynchronously.
        if let Some(lockout) = &core.lockout
            && (lockout.is_shared() || (rule.login && core.login_field.is_some()))
        {
            let lockout = lockout.clone();
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let renderer = renderer.clone();
            return AuthFuture {
                state: State::Pending {
                    fut: Box::pin(slow_path(core.clone(), lockout, renderer, inner, req)),
                },
                watch: None,
            };
        }

        // 1. lockout: a banned caller is refused before anything is checked
        let mut ip_key = None;
        if let Some(lockout) = &core.lockout
            && let Some(mem) = lockout.memory()
        {
            let key = client_ip_of(&mut req, &core.resolver)
                .map(|ip| format!("ip:{}", ip.prefix_key(lockout.policy().ipv6_prefix)));
            if let Some(wait) = key.as_deref().and_then(|k| mem.banned_now(k)) {
                let d = core.banned(wait, lockout.policy().status);
                return AuthFuture::denied(renderer.respond(d, &req));
            }
            ip_key = key;
        }
        let watch = match (&core.lockout, &ip_key) {
            (Some(l), Some(k)) if rule.login => Some(Box::new(Watch {
                lockout: l.clone(),
                key: k.clone(),
            })),
            _ => None,
        };

        // 2. public routes
        if rule.public {
            return AuthFuture::inner(self.inner.call(req), watch);
        }

        // 3. credential
        match core.verdict(&req, rule) {
            Verdict::Missing(d) => AuthFuture::denied(renderer.respond(*d, &req)),
            Verdict::Ok(p) => match core.authorize(&p, rule, req.method()) {
                Ok(()) => {
                    admit(&mut req, p);
                    AuthFuture::inner(self.inner.call(req), watch)
                }
                Err(d) => AuthFuture::denied(renderer.respond(d, &req)),
            },
            Verdict::Deny(d, account) => {
                core.count_failure(&d, ip_key.as_deref(), account.as_deref());
                AuthFuture::denied(renderer.respond(*d, &req))
            }
            Verdict::Pending(fut) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let renderer = renderer.clone();
                let core = core.clone();
                let fut = async move {
                    let rule = core.rule(&req);
                    match fut.await {
                        Ok(p) => match core.authorize(&p, rule, req.method()) {
                            Ok(()) => {
                                admit(&mut req, p);
                                inner.call(req).await
                            }
                            Err(d) => Ok(renderer.respond(d, &req)),
                        },
                        Err(d) => {
                            core.count_failure(&d, ip_key.as_deref(), None);
                            Ok(renderer.respond(d, &req))
                        }
                    }
                };
                AuthFuture {
                    state: State::Pending { fut: Box::pin(fut) },
                    watch,
                }
            }
        }
    }
}

/// The request path with a shared lockout store or a login body to inspect: the same steps
/// as [`Auth::call`], with the lockout decisions awaited.
async fn slow_path<S, ReqB, ResB>(
    core: Arc<Core>,
    lockout: Arc<Lockout>,
    renderer: Renderer,
    mut inner: S,
    mut req: Request<ReqB>,
) -> Result<Response<ResB>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: Send + 'static,
    ResB: BodyFromBytes,
{
    let lockout = &*lockout;
    let rule = core.rule(&req);

    // 1. lockout on the address
    let ip_key = client_ip_of(&mut req, &core.resolver)
        .map(|ip| format!("ip:{}", ip.prefix_key(lockout.policy().ipv6_prefix)));
    if let Some(k) = &ip_key
        && let Some(d) = core.ban_check(lockout, k).await
    {
        return Ok(renderer.respond(d, &req));
    }
    // login routes: the username of the body, then the app's answer counts
    let mut watched = Vec::new();
    if rule.login {
        watched.extend(ip_key.clone());
        if let Some(field) = &core.login_field {
            let (r, name) = login::take_username(req, field, core.login_body_limit).await;
            req = r;
            if let Some(name) = name {
                let key = format!("user:{name}");
                if let Some(d) = core.ban_check(lockout, &key).await {
                    return Ok(renderer.respond(d, &req));
                }
                watched.push(key);
            }
        }
    }

    // 2. public routes
    if rule.public {
        return call_watched(&mut inner, req, lockout, &watched).await;
    }

    // 3. credential; a banned API key id is refused before it is checked
    if lockout.policy().per_credential
        && lockout.is_shared()
        && let Some(account) = core.api_key_account(&req)
        && let Some(d) = core.ban_check(lockout, &account).await
    {
        return Ok(renderer.respond(d, &req));
    }
    let verdict = match core.verdict(&req, rule) {
        Verdict::Missing(d) => return Ok(renderer.respond(*d, &req)),
        Verdict::Pending(fut) => fut.await.map_err(|d| (d, None)),
        Verdict::Ok(p) => Ok(p),
        Verdict::Deny(d, account) => Err((*d, account)),
    };
    match verdict {
        Ok(p) => match core.authorize(&p, rule, req.method()) {
            Ok(()) => {
                admit(&mut req, p);
                call_watched(&mut inner, req, lockout, &watched).await
            }
            Err(d) => Ok(renderer.respond(d, &req)),
        },
        Err((d, account)) => {
            if counts_as_failure(&d) {
                if let Some(k) = &ip_key {
                    core.record_failure(lockout, k).await;
                }
                if lockout.policy().per_credential
                    && let Some(a) = &account
                {
                    core.record_failure(lockout, a).await;
                }
            }
            Ok(renderer.respond(d, &req))
        }
    }
}

/// Calls the inner service; a 401/403 answer counts as a failure for each watched key.
async fn call_watched<S, ReqB, ResB>(
    inner: &mut S,
    req: Request<ReqB>,
    lockout: &Lockout,
    watched: &[String],
) -> Result<Response<ResB>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    let res = inner.call(req).await?;
    let status = res.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        for key in watched {
            if let Some(ban) = lockout.fail(key).await {
                tracing::warn!(key = %key, ban_secs = ban.as_secs(), "auth: login failures; caller banned");
            }
        }
    }
    Ok(res)
}

/// Expired or not-yet-valid credentials are not guesses; everything else that failed is.
fn counts_as_failure(d: &Denial) -> bool {
    matches!(
        d.reason(),
        "invalid_token" | "invalid_request" | "unknown_key"
    )
}

impl Core {
    fn rule<B>(&self, req: &Request<B>) -> &RouteRule {
        self.rules
            .at(req.method(), req.uri().path())
            .map_or(&self.default_rule, |m| m.value)
    }

    /// Extracts and checks the credential.
    fn verdict<B>(self: &Arc<Self>, req: &Request<B>, rule: &RouteRule) -> Verdict {
        if let Some(v) = self.api_key_fast(req) {
            return v;
        }
        match self.extract(req) {
            Err(d) => Verdict::deny(d, None),
            Ok(None) => Verdict::Missing(Box::new(self.no_credentials())),
            Ok(Some((_, tok))) if tok.len() > self.max_token_len => Verdict::deny(
                self.invalid_token("invalid_token", "The access token is invalid"),
                None,
            ),
            Ok(Some((Source::Bearer, tok))) => self.check_bearer(tok, rule.accept),
            Ok(Some((_, tok))) => self.check_api_key(tok),
        }
    }

    /// The lockout key of the API key id in the request, if it carries a well-formed key.
    fn api_key_account<B>(&self, req: &Request<B>) -> Option<String> {
        let keys = self.api_keys.as_ref()?;
        let (_, tok) = self.extract(req).ok()??;
        let parsed = keys.format.parse(tok)?;
        Some(format!("key:{}", parsed.key_id()))
    }

    /// The denial for a banned `key`, or for an unavailable store under `reject`.
    async fn ban_check(&self, lockout: &Lockout, key: &str) -> Option<Denial> {
        match lockout.check(key).await {
            Ok(Some(wait)) => Some(self.banned(wait, lockout.policy().status)),
            Ok(None) => None,
            Err(lockout::Unavailable) => Some(self.lockout_unavailable()),
        }
    }

    async fn record_failure(&self, lockout: &Lockout, key: &str) {
        if let Some(ban) = lockout.fail(key).await {
            tracing::warn!(key = %key, ban_secs = ban.as_secs(), "auth: authentication failures; caller banned");
        }
    }

    /// Counts a failure in the in-memory lockout.
    fn count_failure(&self, d: &Denial, ip_key: Option<&str>, account: Option<&str>) {
        let Some(lockout) = &self.lockout else { return };
        let Some(mem) = lockout.memory() else { return };
        if !counts_as_failure(d) {
            return;
        }
        if let Some(k) = ip_key
            && let Some(ban) = mem.fail_now(k, lockout.policy())
        {
            tracing::warn!(key = %k, ban_secs = ban.as_secs(), "auth: authentication failures; caller banned");
        }
        if lockout.policy().per_credential
            && let Some(a) = account
        {
            mem.fail_now(a, lockout.policy());
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_str_accepts_exactly_what_to_str_accepts() {
        let mut values: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for b in 0..=255u8 {
            // the odd byte at every position of a value longer than one vector step
            for at in [0, 7, 15, 16, 31, 40] {
                let mut v = b"tsk_demo0001_0123456789abcdefghijABCDEFGHIJ\t 0123".to_vec();
                v[at] = b;
                values.push(v);
            }
        }
        for v in values {
            let Ok(hv) = HeaderValue::from_bytes(&v) else {
                continue;
            };
            assert_eq!(header_str(&hv), hv.to_str().ok(), "{v:?}");
        }
    }

    #[test]
    fn b64token_grammar() {
        assert!(is_b64token("abc.DEF-_~+/=="));
        assert!(!is_b64token(""));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a\"b"));
    }

    #[test]
    fn realm_must_be_safe() {
        let store = MemoryKeyStore::new();
        assert!(
            AuthLayer::builder()
                .realm("a\"b")
                .api_keys(store)
                .build()
                .is_err()
        );
        assert!(AuthLayer::builder().build().is_err());
    }
}
