//! The `[auth]` section of the configuration file.
//!
//! ```toml
//! [auth]
//! realm = "shop"
//! api_key_header = "x-api-key"        # default; "" disables the header
//! # api_key_query = "api_key"         # off by default (keys end up in access logs)
//! default_scopes = { read = "read", write = "write" }   # for routes without a rule
//!
//! [auth.api_keys]
//! prefix = "tsk"
//! hasher = "sha256"                   # or "hmac-sha256" with hmac_secret_env
//! # hmac_secret_env = "SHIELD_KEY_SECRET"
//! [[auth.api_keys.keys]]
//! id = "demoread"
//! hash = "sha256v2:…"                 # printed by `cargo run --example keygen`
//! client_id = "storefront"
//! scopes = ["products:read"]
//! plan = "free"
//! # expires_at = 1798761600           # Unix seconds
//! # disabled = true
//!
//! [auth.jwt]
//! issuer = "https://login.example.com"
//! audience = ["https://api.example.com"]
//! discovery = "https://login.example.com"   # or jwks_url = "…", jwks_file, pem files
//! leeway_secs = 30
//!
//! [auth.introspection]
//! url = "https://login.example.com/token/introspection"
//! client_id = "api"
//! client_secret_env = "SHIELD_INTROSPECTION_SECRET"
//! max_cache_secs = 60
//! negative_cache_secs = 5
//! on_error = "unavailable"            # or "invalid_token"
//!
//! [[auth.routes]]
//! route = "GET /products/*"
//! scopes = ["products:read"]
//! [[auth.routes]]
//! route = "POST /login"
//! public = true
//! login = true                        # its 401/403 answers count for the lockout
//!
//! [auth.lockout]
//! threshold = 5
//! window_secs = 300
//! ban_secs = 900
//! username_field = "username"         # login routes: also count/ban the form or JSON username
//! # login_body_limit = 16384          # larger login bodies are passed on uninspected
//! # redis_url = "redis://:secret@10.0.0.5:6379/0"   # share bans across a fleet (feature `redis`)
//! # failure_mode = "reject"           # Redis down: "reject" (503), "allow", "local_fallback"
//! # redis_timeout_ms = 50
//! # redis_key_prefix = "tower-shield"
//! ```
//!
//! Secrets (HMAC server secret, introspection client secret) are read from environment
//! variables named in the file, never from the file itself.
//!
//! ```
//! use tower_shield::auth::AuthConfig;
//! let cfg: AuthConfig = toml::from_str(r#"
//!     realm = "shop"
//!     [api_keys]
//!     keys = [{ id = "demoread", hash = "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU", scopes = ["products:read"] }]
//!     [[routes]]
//!     route = "GET /products/*"
//!     scopes = ["products:read"]
//! "#).unwrap();
//! let layer = cfg.into_layer(Default::default()).unwrap();
//! # let _ = layer;
//! let bad: AuthConfig = toml::from_str(r#"
//!     [api_keys]
//!     keys = [{ id = "demoread", hash = "md5:abc" }]
//! "#).unwrap();
//! let e = bad.into_layer(Default::default()).unwrap_err();
//! assert!(e.to_string().starts_with("auth.api_keys.keys[0].hash:"), "{e}");
//! ```

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use serde::Deserialize;

use super::{
    Accept, ApiKeyFormat, ApiKeyRecord, AuthLayer, Introspector, JwtVerifier, KeyHasher,
    LockoutPolicy, MemoryKeyStore, OnIntrospectionError, RouteRule,
};
use crate::client_ip::ClientIpResolver;
use crate::clock::{SharedClock, system_clock};
use crate::error::ConfigError;
use crate::principal::CredentialKind;
use crate::store::FailureMode;

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Challenge realm (default `"api"`).
    pub realm: Option<String>,
    /// API key header (default `x-api-key`; empty disables).
    pub api_key_header: Option<String>,
    /// Query parameter for API keys (off by default).
    pub api_key_query: Option<String>,
    /// Default scopes for routes without a rule.
    pub default_scopes: Option<DefaultScopes>,
    /// Longest credential accepted (bytes).
    pub max_token_len: Option<usize>,
    /// API keys.
    pub api_keys: Option<ApiKeysConfig>,
    /// JWT bearer tokens.
    pub jwt: Option<JwtConfig>,
    /// Opaque tokens through introspection.
    pub introspection: Option<IntrospectionConfig>,
    /// Route rules.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Failure lockout.
    pub lockout: Option<LockoutConfig>,
}

/// `default_scopes = { read = "...", write = "..." }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultScopes {
    /// Scope for GET, HEAD, OPTIONS.
    pub read: String,
    /// Scope for other methods.
    pub write: String,
}

/// `[auth.api_keys]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Key prefix (default `tsk`).
    pub prefix: Option<String>,
    /// `sha256` (default) or `hmac-sha256`.
    pub hasher: Option<String>,
    /// Environment variable holding the HMAC server secret.
    pub hmac_secret_env: Option<String>,
    /// The keys (hashes only).
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

/// One `[[auth.api_keys.keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Key id.
    pub id: String,
    /// Stored hash (`sha256v2:…` or `hmac-sha256v2:…`; the whole-key `sha256:…` /
    /// `hmac-sha256:…` of earlier versions are still accepted).
    pub hash: String,
    /// Name.
    pub name: Option<String>,
    /// Owning client.
    pub client_id: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
    /// Disabled.
    #[serde(default)]
    pub disabled: bool,
}

/// `[auth.jwt]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted issuer.
    pub issuer: Option<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Leeway (≤ 300 s).
    pub leeway_secs: Option<u64>,
    /// Algorithm allow-list (`["RS256", "ES256"]`).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// JWKS URL.
    pub jwks_url: Option<String>,
    /// OIDC discovery issuer URL.
    pub discovery: Option<String>,
    /// Static JWKS file.
    pub jwks_file: Option<String>,
    /// PEM public keys.
    #[serde(default)]
    pub pem: Vec<PemConfig>,
    /// Environment variable holding an HMAC secret (HS256).
    pub hmac_secret_env: Option<String>,
    /// Cool-down between fetches on unknown kids.
    pub refresh_cooldown_secs: Option<u64>,
    /// Background refresh period.
    pub refresh_interval_secs: Option<u64>,
    /// Fetch timeout.
    pub fetch_timeout_secs: Option<u64>,
    /// Claims copied into the principal.
    #[serde(default)]
    pub copy_claims: Vec<String>,
}

/// A PEM key entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemConfig {
    /// File path.
    pub path: String,
    /// `rsa`, `ec` or `ed`.
    pub kind: String,
    /// Key id.
    pub kid: Option<String>,
}

/// `[auth.introspection]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Endpoint URL.
    pub url: String,
    /// Client id for client authentication.
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Longest cache of an active answer.
    pub max_cache_secs: Option<u64>,
    /// Cache of an inactive answer.
    pub negative_cache_secs: Option<u64>,
    /// Timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Failure mode.
    #[serde(default)]
    pub on_error: OnIntrospectionError,
}

/// One `[[auth.routes]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Pattern (`"GET /products/*"`).
    pub route: String,
    /// Required scopes (all).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Public route.
    #[serde(default)]
    pub public: bool,
    /// Login route watched by the lockout.
    #[serde(default)]
    pub login: bool,
    /// Accepted kinds: `api_key`, `jwt`, `introspection` (default: all).
    pub accept: Option<Vec<String>>,
}

/// `[auth.lockout]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutConfig {
    /// Failures that trigger a ban.
    pub threshold: u32,
    /// Counting window.
    pub window_secs: u64,
    /// First ban.
    pub ban_secs: u64,
    /// Longest ban.
    pub max_ban_secs: Option<u64>,
    /// Offences forgotten after.
    pub forget_after_secs: Option<u64>,
    /// 429 (default) or 403.
    pub status: Option<u16>,
    /// Count per credential / username too.
    #[serde(default)]
    pub per_credential: bool,
    /// IPv6 prefix length.
    pub ipv6_prefix: Option<u8>,
    /// On login routes, the form/JSON field holding the username (counted and banned too).
    pub username_field: Option<String>,
    /// Largest login body inspected for the username (default 16 KiB).
    pub login_body_limit: Option<usize>,
    /// Redis URL: share lockout state across instances (feature `redis`).
    pub redis_url: Option<String>,
    /// What to do when Redis fails (default `reject`).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Per-call Redis timeout in milliseconds (default 50).
    pub redis_timeout_ms: Option<u64>,
    /// Redis key prefix (default `tower-shield`).
    pub redis_key_prefix: Option<String>,
}

fn secret_from_env(var: &str, key: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| {
        ConfigError::invalid(
            key,
            format!("the environment variable {var} is not set (or not UTF-8)"),
        )
    })
}

impl AuthConfig {
    /// Builds the layer with the system clock.
    pub fn into_layer(self, resolver: ClientIpResolver) -> Result<AuthLayer, ConfigError> {
        self.into_layer_with_clock(resolver, system_clock())
    }

    /// Builds the layer with a given clock.
    pub fn into_layer_with_clock(
        self,
        resolver: ClientIpResolver,
        clock: SharedClock,
    ) -> Result<AuthLayer, ConfigError> {
        let mut b = AuthLayer::builder().resolver(resolver).clock(clock.clone());
        if let Some(r) = self.realm {
            b = b.realm(r);
        }
        match self.api_key_header.as_deref() {
            Some("") => b = b.api_key_header(None),
            Some(h) => b = b.api_key_header(Some(h)),
            None => {}
        }
        if let Some(q) = self.api_key_query {
            b = b.api_key_query(q);
        }
        if let Some(d) = self.default_scopes {
            b = b.default_scopes(d.read, d.write);
        }
        if let Some(n) = self.max_token_len {
            b = b.max_token_len(n);
        }
        if let Some(k) = self.api_keys {
            let format = match &k.prefix {
                Some(p) => ApiKeyFormat::new(p, 40).map_err(|_| {
                    ConfigError::invalid(
                        "auth.api_keys.prefix",
                        "expected 1 to 12 lowercase ASCII letters or digits",
                    )
                })?,
                None => ApiKeyFormat::default(),
            };
            let hasher = match k.hasher.as_deref().unwrap_or("sha256") {
                "sha256" => KeyHasher::sha256(),
                "hmac-sha256" => {
                    let var = k.hmac_secret_env.as_deref().ok_or_else(|| {
                        ConfigError::invalid(
                            "auth.api_keys.hmac_secret_env",
                            "required with hasher = \"hmac-sha256\"",
                        )
                    })?;
                    let s = secret_from_env(var, "auth.api_keys.hmac_secret_env")?;
                    KeyHasher::hmac_sha256(s.as_bytes()).map_err(|_| {
                        ConfigError::invalid(
                            "auth.api_keys.hmac_secret_env",
                            "the server secret must be at least 32 bytes",
                        )
                    })?
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.api_keys.hasher",
                        "expected \"sha256\" or \"hmac-sha256\"",
                    ));
                }
            };
            let mut store = MemoryKeyStore::new();
            for (i, kc) in k.keys.into_iter().enumerate() {
                let key = format!("auth.api_keys.keys[{i}]");
                if !(4..=32).contains(&kc.id.len())
                    || !kc.id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(ConfigError::invalid(
                        format!("{key}.id"),
                        "expected 4 to 32 base62 characters",
                    ));
                }
                let hash = hasher.parse_hash(&kc.hash, &format!("{key}.hash"))?;
                let mut r = ApiKeyRecord::new(kc.id, hash)
                    .scopes(kc.scopes)
                    .disabled(kc.disabled);
                if let Some(v) = kc.name {
                    r = r.name(v);
                }
                if let Some(v) = kc.client_id {
                    r = r.client_id(v);
                }
                if let Some(v) = kc.plan {
                    r = r.plan(v);
                }
                if let Some(v) = kc.tenant {
                    r = r.tenant(v);
                }
                if let Some(t) = kc.expires_at {
                    r = r.expires_at(UNIX_EPOCH + Duration::from_secs(t));
                }
                store.insert(r);
            }
            b = b.api_keys(store).api_key_format(format).key_hasher(hasher);
        }
        if let Some(j) = self.jwt {
            b = b.jwt(j.into_verifier(clock.clone())?);
        }
        if let Some(i) = self.introspection {
            let mut ib = Introspector::builder(i.url, i.client_id)
                .clock(clock.clone())
                .on_error(i.on_error);
            if let Some(var) = &i.client_secret_env {
                ib = ib.client_secret(secret_from_env(
                    var,
                    "auth.introspection.client_secret_env",
                )?);
            }
            if let Some(s) = i.max_cache_secs {
                ib = ib.max_cache_ttl(Duration::from_secs(s));
            }
            if let Some(s) = i.negative_cache_secs {
                ib = ib.negative_cache_ttl(Duration::from_secs(s));
            }
            if let Some(ms) = i.timeout_ms {
                ib = ib.timeout(Duration::from_millis(ms));
            }
            b = b.introspection(ib.build()?);
        }
        for (i, r) in self.routes.into_iter().enumerate() {
            let key = format!("auth.routes[{i}]");
            let mut rule = if r.public {
                if !r.scopes.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.scopes"),
                        "a public route cannot require scopes",
                    ));
                }
                RouteRule::public()
            } else {
                RouteRule::scopes(r.scopes)
            };
            if r.login {
                rule = rule.login();
            }
            if let Some(kinds) = r.accept {
                let mut list = Vec::new();
                for (j, k) in kinds.iter().enumerate() {
                    list.push(match k.as_str() {
                        "api_key" => CredentialKind::ApiKey,
                        "jwt" => CredentialKind::Jwt,
                        "introspection" => CredentialKind::Introspection,
                        _ => {
                            return Err(ConfigError::invalid(
                                format!("{key}.accept[{j}]"),
                                "expected \"api_key\", \"jwt\" or \"introspection\"",
                            ));
                        }
                    });
                }
                rule = rule.accept(Accept::only(list));
            }
            b = b.route(&r.route, rule).map_err(|e| match e {
                ConfigError::Route {
                    pattern, reason, ..
                } => ConfigError::Route {
                    key: format!("{key}.route"),
                    pattern,
                    reason,
                },
                e => e,
            })?;
        }
        if let Some(l) = self.lockout {
            if l.threshold == 0 || l.window_secs == 0 || l.ban_secs == 0 {
                return Err(ConfigError::invalid(
                    "auth.lockout",
                    "threshold, window_secs and ban_secs must be positive",
                ));
            }
            let mut p = LockoutPolicy::new(
                l.threshold,
                Duration::from_secs(l.window_secs),
                Duration::from_secs(l.ban_secs),
            );
            if let Some(s) = l.max_ban_secs {
                p.max_ban = Duration::from_secs(s).max(p.ban);
            }
            if let Some(s) = l.forget_after_secs {
                p.forget_after = Duration::from_secs(s);
            }
            if let Some(s) = l.status {
                p.status = match s {
                    429 => StatusCode::TOO_MANY_REQUESTS,
                    403 => StatusCode::FORBIDDEN,
                    _ => {
                        return Err(ConfigError::invalid(
                            "auth.lockout.status",
                            "expected 429 or 403",
                        ));
                    }
                };
            }
            p.per_credential = l.per_credential;
            if let Some(v) = l.ipv6_prefix {
                if v > 128 {
                    return Err(ConfigError::invalid(
                        "auth.lockout.ipv6_prefix",
                        "expected 0 to 128",
                    ));
                }
                p.ipv6_prefix = v;
            }
            b = b.lockout(p);
            if let Some(field) = l.username_field {
                b = b.login_username_field(field);
            }
            if let Some(n) = l.login_body_limit {
                if n == 0 || n > 1 << 20 {
                    return Err(ConfigError::invalid(
                        "auth.lockout.login_body_limit",
                        "expected 1 to 1048576 bytes",
                    ));
                }
                b = b.login_body_limit(n);
            }
            #[cfg(feature = "redis")]
            if let Some(url) = l.redis_url {
                let mut cb = crate::store::redis::RedisConn::builder(url)
                    .timeout(Duration::from_millis(l.redis_timeout_ms.unwrap_or(50)));
                if let Some(prefix) = l.redis_key_prefix {
                    cb = cb.key_prefix(prefix);
                }
                let conn = cb.build_lazy().map_err(|e| match e {
                    ConfigError::Invalid { reason, .. } => {
                        ConfigError::invalid("auth.lockout.redis_url", reason)
                    }
                    other => other,
                })?;
                b = b.lockout_redis(super::RedisLockoutStore::new(conn), l.failure_mode);
            }
            #[cfg(not(feature = "redis"))]
            if l.redis_url.is_some() {
                return Err(ConfigError::invalid(
                    "auth.lockout.redis_url",
                    "needs the `redis` cargo feature",
                ));
            }
        }
        b.build()
    }
}

impl JwtConfig {
    /// Builds the verifier.
    pub fn into_verifier(self, clock: SharedClock) -> Result<JwtVerifier, ConfigError> {
        let mut b = JwtVerifier::builder().clock(clock);
        if let Some(i) = self.issuer {
            b = b.issuer(i);
        }
        for a in self.audience {
            b = b.audience(a);
        }
        if let Some(s) = self.leeway_secs {
            b = b.leeway(Duration::from_secs(s));
        }
        if !self.algorithms.is_empty() {
            let mut algs = Vec::new();
            for (i, a) in self.algorithms.iter().enumerate() {
                algs.push(a.parse().map_err(|_| {
                    ConfigError::invalid(
                        format!("auth.jwt.algorithms[{i}]"),
                        "unknown algorithm (RS256, PS256, ES256, EdDSA, HS256, ...)",
                    )
                })?);
            }
            b = b.algorithms(algs);
        }
        if self.jwks_url.is_some() && self.discovery.is_some() {
            return Err(ConfigError::invalid(
                "auth.jwt",
                "set either jwks_url or discovery, not both",
            ));
        }
        if let Some(u) = self.jwks_url {
            b = b.jwks_url(u);
        }
        if let Some(u) = self.discovery {
            b = b.discovery(u);
        }
        if let Some(path) = self.jwks_file {
            let doc = std::fs::read(&path).map_err(|source| ConfigError::Io { path, source })?;
            b = b.jwks_json(doc);
        }
        for (i, p) in self.pem.into_iter().enumerate() {
            let pem = std::fs::read(&p.path).map_err(|source| ConfigError::Io {
                path: p.path.clone(),
                source,
            })?;
            b = match p.kind.as_str() {
                "rsa" => b.rsa_pem(pem, p.kid.as_deref()),
                "ec" => b.ec_pem(pem, p.kid.as_deref()),
                "ed" => b.ed_pem(pem, p.kid.as_deref()),
                _ => {
                    return Err(ConfigError::invalid(
                        format!("auth.jwt.pem[{i}].kind"),
                        "expected \"rsa\", \"ec\" or \"ed\"",
                    ));
                }
            };
        }
        if let Some(var) = self.hmac_secret_env {
            let s = secret_from_env(&var, "auth.jwt.hmac_secret_env")?;
            b = b.hmac_secret(s.into_bytes(), None);
        }
        if let Some(s) = self.refresh_cooldown_secs {
            b = b.refresh_cooldown(Duration::from_secs(s));
        }
        if let Some(s) = self.refresh_interval_secs {
            b = b.refresh_interval(Duration::from_secs(s.max(1)));
        }
        if let Some(s) = self.fetch_timeout_secs {
            b = b.fetch_timeout(Duration::from_secs(s.max(1)));
        }
        for c in self.copy_claims {
            b = b.copy_claim(c);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let cfg: AuthConfig = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        match cfg.into_layer(ClientIpResolver::default()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    const KEY: &str = r#"[api_keys]
keys = [{ id = "demoread", hash = "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU" }]
"#;

    #[test]
    fn errors_name_the_offending_key() {
        assert!(err("realmm = 1").contains("realmm"));
        assert!(err("").starts_with("auth: no credential method"));
        let e = err(&format!("{KEY}[[routes]]\nroute = \"BREW /x\""));
        assert!(e.starts_with("auth.routes[0].route:"), "{e}");
        let e = err(&format!(
            "{KEY}[[routes]]\nroute = \"GET /x\"\naccept = [\"magic\"]"
        ));
        assert!(e.starts_with("auth.routes[0].accept[0]:"), "{e}");
        let e = err("[api_keys]\nkeys = [{ id = \"x\", hash = \"sha256:AA\" }]");
        assert!(e.starts_with("auth.api_keys.keys[0].id:"), "{e}");
        let e =
            err("[api_keys]\nhasher = \"hmac-sha256\"\nhmac_secret_env = \"TS_SURELY_UNSET_VAR\"");
        assert!(e.starts_with("auth.api_keys.hmac_secret_env:"), "{e}");
        let e = err(&format!(
            "{KEY}[lockout]\nthreshold = 5\nwindow_secs = 60\nban_secs = 60\nstatus = 500"
        ));
        assert!(e.starts_with("auth.lockout.status:"), "{e}");
        let e = err("[jwt]\nhmac_secret_env = \"TS_SURELY_UNSET_VAR\"");
        assert!(e.starts_with("auth.jwt.hmac_secret_env:"), "{e}");
        let e = err("[jwt]\njwks_url = \"http://a\"\nleeway_secs = 301");
        assert!(e.starts_with("auth.jwt.leeway_secs:"), "{e}");
        let e = err("[jwt]\njwks_url = \"http://a\"\nalgorithms = [\"none\"]");
        assert!(e.starts_with("auth.jwt.algorithms[0]:"), "{e}");
        let lockout = "[lockout]\nthreshold = 5\nwindow_secs = 60\nban_secs = 60\n";
        let e = err(&format!("{KEY}{lockout}username_field = \"\""));
        assert!(e.starts_with("auth.lockout.username_field:"), "{e}");
        let e = err(&format!("{KEY}{lockout}login_body_limit = 0"));
        assert!(e.starts_with("auth.lockout.login_body_limit:"), "{e}");
        let e = err(&format!("{KEY}{lockout}failure_mode = \"maybe\""));
        assert!(e.contains("failure_mode"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn lockout_options_build() {
        let cfg: AuthConfig = toml::from_str(&format!(
            "{KEY}[lockout]\nthreshold = 5\nwindow_secs = 60\nban_secs = 60\n\
             username_field = \"username\"\nlogin_body_limit = 4096\n\
             redis_url = \"redis://:pw@127.0.0.1:1/0\"\nfailure_mode = \"local_fallback\"\n\
             redis_key_prefix = \"shop\"\nredis_timeout_ms = 20"
        ))
        .unwrap();
        let layer = cfg.into_layer(ClientIpResolver::default()).unwrap();
        let l = layer.lockout().unwrap();
        assert!(l.is_shared());
        assert_eq!(l.failure_mode(), FailureMode::LocalFallback);
    }
}
