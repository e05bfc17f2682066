//! Opaque bearer tokens validated by OAuth2 token introspection (RFC 7662), with the
//! `oauth2` crate and client authentication (HTTP Basic).
//!
//! Results are cached by the SHA-256 of the token (never the token itself):
//! - an active token for at most the configured maximum (default 60 s) and never past its
//!   `exp`;
//! - an inactive token briefly (default 5 s), so a flood of garbage tokens does not become
//!   a flood of introspection calls, while a just-issued token is not refused for long.
//!
//! When the endpoint fails (unreachable, timeout, 5xx, unparseable answer) the request is
//! refused as configured by [`OnIntrospectionError`]: `503` with `Retry-After`
//! (`introspection_unavailable`, the default) or `401 invalid_token`. Each failure is
//! logged at `warn` level; the denial reason names it for audit.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use oauth2::basic::BasicClient;
use oauth2::{
    AccessToken, ClientId, ClientSecret, EndpointNotSet, EndpointSet, IntrospectionUrl,
    TokenIntrospectionResponse,
};
use sha2::{Digest, Sha256};

use crate::clock::{SharedClock, system_clock};
use crate::error::ConfigError;
use crate::principal::{CredentialKind, Principal};

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointSet, EndpointNotSet, EndpointNotSet>;

const SHARDS: usize = 16;

/// Why introspection did not yield a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionFailure {
    /// The authorization server says the token is not active (or it is expired).
    Inactive,
    /// The authorization server could not be asked (see [`OnIntrospectionError`]).
    Unavailable,
}

/// What to do when the introspection endpoint fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnIntrospectionError {
    /// Refuse with 503 and `Retry-After` (the client may retry; default).
    #[default]
    Unavailable,
    /// Refuse with 401 `invalid_token`.
    InvalidToken,
}

#[derive(Clone)]
struct CacheEntry {
    until_ms: u64,
    principal: Option<Principal>,
}

/// Validates opaque tokens at an introspection endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Introspector {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    http: reqwest::Client,
    url: String,
    clock: SharedClock,
    max_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    on_error: OnIntrospectionError,
    max_entries: usize,
    shards: Vec<Mutex<HashMap<[u8; 32], CacheEntry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.inner.url)
            .field("max_ttl", &self.inner.max_ttl)
            .field("on_error", &self.inner.on_error)
            .finish_non_exhaustive()
    }
}

/// Builder for [`Introspector`].
pub struct IntrospectorBuilder {
    url: String,
    client_id: String,
    client_secret: Option<String>,
    clock: SharedClock,
    max_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    on_error: OnIntrospectionError,
    max_entries: usize,
}

impl fmt::Debug for IntrospectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectorBuilder")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Starts a builder for the endpoint `url`, authenticating as `client_id`.
    pub fn builder(url: impl Into<String>, client_id: impl Into<String>) -> IntrospectorBuilder {
        IntrospectorBuilder {
            url: url.into(),
            client_id: client_id.into(),
            client_secret: None,
            clock: system_clock(),
            max_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            on_error: OnIntrospectionError::default(),
            max_entries: 100_000,
        }
    }

    /// What endpoint failures become.
    pub fn on_error(&self) -> OnIntrospectionError {
        self.inner.on_error
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.monotonic().as_millis() as u64
    }

    fn shard(&self, h: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], CacheEntry>> {
        &self.inner.shards[(self.inner.hasher.hash_one(h) as usize) % SHARDS]
    }

    /// The cached answer for a token, if fresh.
    pub fn cached(&self, token: &str) -> Option<Result<Principal, IntrospectionFailure>> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.now_ms();
        let shard = self.shard(&h).lock().ok()?;
        let e = shard.get(&h)?;
        if e.until_ms <= now {
            return None;
        }
        Some(e.principal.clone().ok_or(IntrospectionFailure::Inactive))
    }

    fn store(&self, h: [u8; 32], ttl: Duration, principal: Option<Principal>) {
        if ttl.is_zero() {
            return;
        }
        let now = self.now_ms();
        let Ok(mut shard) = self.shard(&h).lock() else {
            return;
        };
        let cap = (self.inner.max_entries / SHARDS).max(1);
        if shard.len() >= cap {
            shard.retain(|_, e| e.until_ms > now);
            if shard.len() >= cap {
                return;
            }
        }
        shard.insert(
            h,
            CacheEntry {
                until_ms: now + ttl.as_millis() as u64,
                principal,
            },
        );
    }

    /// Asks the endpoint (after a cache miss) and caches the answer.
    pub async fn introspect(&self, token: &str) -> Result<Principal, IntrospectionFailure> {
        if let Some(r) = self.cached(token) {
            return r;
        }
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let access = AccessToken::new(token.to_owned());
        let req = self
            .inner
            .client
            .introspect(&access)
            .set_token_type_hint("access_token");
        let answer =
            tokio::time::timeout(self.inner.timeout, req.request_async(&self.inner.http)).await;
        let res = match answer {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %self.inner.url, error = %short_error(&e), on_error = ?self.inner.on_error, "auth: token introspection failed");
                return Err(IntrospectionFailure::Unavailable);
            }
            Err(_) => {
                tracing::warn!(endpoint = %self.inner.url, timeout = ?self.inner.timeout, on_error = ?self.inner.on_error, "auth: token introspection timed out");
                return Err(IntrospectionFailure::Unavailable);
            }
        };
        let now_wall = self
            .inner
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let exp = res.exp().map(|t| t.timestamp());
        let nbf = res.nbf().map(|t| t.timestamp());
        let usable = res.active()
            && exp.is_none_or(|e| e > now_wall)
            && nbf.is_none_or(|n| n <= now_wall + 30);
        if !usable {
            self.store(h, self.inner.negative_ttl, None);
            return Err(IntrospectionFailure::Inactive);
        }
        let client_id = res.client_id().map(|c| c.as_str().to_owned());
        let id = res
            .sub()
            .map(str::to_owned)
            .or_else(|| client_id.clone())
            .or_else(|| res.username().map(str::to_owned));
        let Some(id) = id else {
            self.store(h, self.inner.negative_ttl, None);
            return Err(IntrospectionFailure::Inactive);
        };
        let mut p = Principal::new(id, CredentialKind::Introspection);
        if let Some(s) = res.sub() {
            p = p.with_subject(s);
        }
        if let Some(c) = client_id {
            p = p.with_client_id(c);
        }
        if let Some(scopes) = res.scopes() {
            p = p.with_scopes(scopes.iter().map(|s| s.as_str().to_owned()));
        }
        let mut ttl = self.inner.max_ttl;
        if let Some(e) = exp {
            ttl = ttl.min(Duration::from_secs((e - now_wall).max(0) as u64));
        }
        self.store(h, ttl, Some(p.clone()));
        Ok(p)
    }
}

fn short_error<E: std::error::Error>(e: &E) -> String {
    // never print the token or credentials: only the error chain's kinds
    let mut s = e.to_string();
    s.truncate(200);
    s
}

impl IntrospectorBuilder {
    /// The client secret (HTTP Basic client authentication).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }
    /// Clock for cache lifetimes and `exp`.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// Longest time an active result is cached (default 60 s; never past `exp`).
    pub fn max_cache_ttl(mut self, d: Duration) -> Self {
        self.max_ttl = d;
        self
    }
    /// How long an inactive result is cached (default 5 s).
    pub fn negative_cache_ttl(mut self, d: Duration) -> Self {
        self.negative_ttl = d;
        self
    }
    /// Timeout of one introspection call (default 3 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// What endpoint failures become (default: 503).
    pub fn on_error(mut self, mode: OnIntrospectionError) -> Self {
        self.on_error = mode;
        self
    }
    /// Maximum cached tokens (default 100 000).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }
    /// Builds the introspector.
    pub fn build(self) -> Result<Introspector, ConfigError> {
        let url = IntrospectionUrl::new(self.url.clone())
            .map_err(|e| ConfigError::invalid("auth.introspection.url", e.to_string()))?;
        if self.max_ttl > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "auth.introspection.max_cache_secs",
                "at most 3600 seconds",
            ));
        }
        let mut client = BasicClient::new(ClientId::new(self.client_id));
        if let Some(s) = self.client_secret {
            client = client.set_client_secret(ClientSecret::new(s));
        }
        let client = client.set_introspection_url(url);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .build()
            .map_err(|e| ConfigError::invalid("auth.introspection", e.to_string()))?;
        Ok(Introspector {
            inner: Arc::new(Inner {
                client,
                http,
                url: self.url,
                clock: self.clock,
                max_ttl: self.max_ttl,
                negative_ttl: self.negative_ttl,
                timeout: self.timeout,
                on_error: self.on_error,
                max_entries: self.max_entries,
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: Default::default(),
            }),
        })
    }
}
