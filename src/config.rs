//! The configuration file (TOML) that builds the same [`Shield`](crate::Shield) as the
//! builder.
//!
//! ```toml
//! # the API's routes; the matched one is recorded for audit and metrics
//! routes = ["GET /products", "GET /products/{id}", "POST /checkout"]
//!
//! [client_ip]
//! trusted_proxies = ["10.0.0.0/8"]      # peers whose forwarding header is believed
//! header = "x-forwarded-for"             # or "forwarded" (RFC 7239)
//!
//! [ip_filter]
//! allow = []                             # empty: everyone not denied
//! deny = ["203.0.113.0/24", "2001:db8:bad::/48"]
//! unknown_ip = "deny"                    # or "allow"
//!
//! [grpc.codes]                           # HTTP status -> gRPC code overrides
//! 429 = 8
//! ```
//!
//! Errors name the offending key (`ip_filter.deny[1]: invalid CIDR ...`), or for syntax and
//! type errors, the key, line and column as reported by the TOML parser. Unknown keys are
//! errors, so a misspelt setting never silently does nothing.
//!
//! ```
//! use tower_shield::ShieldConfig;
//! let err = ShieldConfig::from_toml_str("[ip_filter]\ndeny = [\"10.0.0.0/33\"]").unwrap()
//!     .build().unwrap_err();
//! assert!(err.to_string().starts_with("ip_filter.deny[0]: invalid CIDR"));
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use http::StatusCode;
use serde::Deserialize;

use crate::client_ip::UnknownIp;
use crate::client_ip::{ClientIpResolver, ForwardedHeader, parse_net};
use crate::denial::{GrpcCodeMap, Renderer};
use crate::error::ConfigError;
#[cfg(feature = "ip-filter")]
use crate::ip_filter::IpFilterLayer;
use crate::shield::{ShieldBuilder, ShieldLayer};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldConfig {
    /// Route templates of the API.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Client address resolution.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// IP allow/deny lists.
    pub ip_filter: Option<IpFilterConfig>,
    /// gRPC rendering.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// `[audit]`: one record per request (feature `audit`).
    #[cfg(feature = "audit")]
    pub audit: Option<crate::audit::AuditConfig>,
    /// `[audit]` (this build lacks the `audit` feature: present is an error).
    #[cfg(not(feature = "audit"))]
    pub audit: Option<toml::Value>,
    /// `[throttle]`: pre- and post-auth pacing (feature `throttle`).
    #[cfg(feature = "throttle")]
    pub throttle: Option<crate::throttle::ThrottleConfig>,
    /// `[throttle]` (this build lacks the `throttle` feature: present is an error).
    #[cfg(not(feature = "throttle"))]
    pub throttle: Option<toml::Value>,
    /// `[auth]`: API keys, JWT, introspection, scopes, lockout (feature `auth`).
    #[cfg(feature = "auth")]
    pub auth: Option<crate::auth::AuthConfig>,
    /// `[auth]` (this build lacks the `auth` feature: present is an error).
    #[cfg(not(feature = "auth"))]
    pub auth: Option<toml::Value>,
    /// `[quota]`: long-window allotments per plan (feature `quota`).
    #[cfg(feature = "quota")]
    pub quota: Option<crate::quota::config::QuotaConfig>,
    /// `[quota]` (this build lacks the `quota` feature: present is an error).
    #[cfg(not(feature = "quota"))]
    pub quota: Option<toml::Value>,
    /// `[sanitize]`: input inspection (feature `sanitize`).
    #[cfg(feature = "sanitize")]
    pub sanitize: Option<crate::sanitize::SanitizeConfig>,
    /// `[sanitize]` (this build lacks the `sanitize` feature: present is an error).
    #[cfg(not(feature = "sanitize"))]
    pub sanitize: Option<toml::Value>,
}

#[allow(dead_code)]
fn missing_feature(section: &str, feature: &str) -> ConfigError {
    ConfigError::invalid(
        section,
        format!("this build of tower-shield lacks the `{feature}` feature"),
    )
}

/// `[client_ip]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Trusted proxy networks.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The forwarding header the proxies set.
    #[serde(default)]
    pub header: ForwardedHeader,
}

/// `[ip_filter]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Allowed networks (empty: all not denied).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Denied networks.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Policy for an unknown client address.
    #[serde(default)]
    pub unknown_ip: UnknownIp,
}

/// `[grpc]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// HTTP status → gRPC code overrides.
    #[serde(default)]
    pub codes: BTreeMap<String, u16>,
}

fn nets(list: &[String], key: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| parse_net(s, &format!("{key}[{i}]")))
        .collect()
}

impl ShieldConfig {
    /// Parses a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, "<string>")
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Validates the configuration into a builder (to which code can add more).
    pub fn into_builder(self) -> Result<ShieldBuilder, ConfigError> {
        let resolver = ClientIpResolver::builder()
            .trusted_proxies(nets(
                &self.client_ip.trusted_proxies,
                "client_ip.trusted_proxies",
            )?)
            .header(self.client_ip.header)
            .build();
        let mut grpc = GrpcCodeMap::default();
        for (status, code) in &self.grpc.codes {
            let key = format!("grpc.codes.{status}");
            let s: u16 = status.parse().map_err(|_| {
                ConfigError::invalid(&key, "expected an HTTP status code such as 429")
            })?;
            let s = StatusCode::from_u16(s)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| ConfigError::invalid(&key, "expected a 4xx or 5xx status"))?;
            if *code > 16 {
                return Err(ConfigError::invalid(&key, "gRPC codes are 0..=16"));
            }
            grpc = grpc.set(s, *code);
        }
        #[allow(unused_mut)]
        let mut b = ShieldBuilder::default()
            .client_ip(resolver.clone())
            .routes(self.routes)
            .renderer(Renderer::with_grpc_codes(grpc));
        #[cfg(not(feature = "ip-filter"))]
        if self.ip_filter.is_some() {
            return Err(ConfigError::invalid(
                "ip_filter",
                "this build of tower-shield lacks the `ip-filter` feature",
            ));
        }
        #[cfg(feature = "ip-filter")]
        if let Some(f) = self.ip_filter {
            b = b.ip_filter(
                IpFilterLayer::builder()
                    .allow_nets(nets(&f.allow, "ip_filter.allow")?)
                    .deny_nets(nets(&f.deny, "ip_filter.deny")?)
                    .on_unknown_ip(f.unknown_ip)
                    .resolver(resolver.clone())
                    .build(),
            );
        }
        #[cfg(feature = "audit")]
        if let Some(a) = &self.audit {
            b = b.audit(a.build_layer()?);
        }
        #[cfg(not(feature = "audit"))]
        if self.audit.is_some() {
            return Err(missing_feature("audit", "audit"));
        }
        #[cfg(feature = "throttle")]
        if let Some(t) = &self.throttle {
            let (pre, post) = t.into_layers()?;
            if let Some(l) = pre {
                b = b.throttle_pre_auth(l);
            }
            if let Some(l) = post {
                b = b.throttle_post_auth(l);
            }
        }
        #[cfg(not(feature = "throttle"))]
        if self.throttle.is_some() {
            return Err(missing_feature("throttle", "throttle"));
        }
        #[cfg(feature = "auth")]
        if let Some(a) = self.auth {
            b = b.auth(a.into_layer(resolver.clone())?);
        }
        #[cfg(not(feature = "auth"))]
        if self.auth.is_some() {
            return Err(missing_feature("auth", "auth"));
        }
        #[cfg(feature = "quota")]
        if let Some(q) = &self.quota {
            b = b.quota(q.build()?);
        }
        #[cfg(not(feature = "quota"))]
        if self.quota.is_some() {
            return Err(missing_feature("quota", "quota"));
        }
        #[cfg(feature = "sanitize")]
        if let Some(sz) = self.sanitize {
            b = b.sanitize(sz.build()?);
        }
        #[cfg(not(feature = "sanitize"))]
        if self.sanitize.is_some() {
            return Err(missing_feature("sanitize", "sanitize"));
        }
        Ok(b)
    }

    /// Validates and builds the Shield.
    pub fn build(self) -> Result<ShieldLayer, ConfigError> {
        self.into_builder()?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match ShieldConfig::from_toml_str(text).and_then(|c| c.build()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_offending_key() {
        let e = err("[ip_filter]\ndeny = [\"10.0.0.0/8\", \"nope\"]");
        assert!(e.starts_with("ip_filter.deny[1]: invalid CIDR"), "{e}");
        let e = err("[client_ip]\ntrusted_proxies = [\"1.2.3.4/40\"]");
        assert!(e.starts_with("client_ip.trusted_proxies[0]:"), "{e}");
        let e = err("routes = [\"GET /a\", \"BREW /coffee\"]");
        assert!(e.starts_with("routes[1]: invalid route pattern"), "{e}");
        let e = err("[ip_filter]\ndney = []");
        assert!(e.contains("dney") && e.contains("line 2"), "{e}");
        let e = err("[ip_filter]\nunknown_ip = \"maybe\"");
        assert!(e.contains("unknown_ip") || e.contains("maybe"), "{e}");
        let e = err("[grpc.codes]\n200 = 8");
        assert!(e.starts_with("grpc.codes.200:"), "{e}");
        let e = err("[grpc.codes]\n429 = 99");
        assert!(e.starts_with("grpc.codes.429:"), "{e}");
        let e = err("routes = [\"/a/{x}\", \"/a/{y}\"]");
        assert!(e.starts_with("routes[1]:"), "{e}");
    }

    #[test]
    fn a_full_file_builds() {
        let c = ShieldConfig::from_toml_str(
            r#"
            routes = ["GET /products/{id}", "/admin/*"]
            [client_ip]
            trusted_proxies = ["127.0.0.1", "::1"]
            header = "forwarded"
            [ip_filter]
            deny = ["203.0.113.0/24"]
            unknown_ip = "allow"
            [grpc.codes]
            429 = 14
            "#,
        )
        .unwrap();
        assert_eq!(c.client_ip.header, ForwardedHeader::Forwarded);
        c.build().unwrap();
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let e = ShieldConfig::from_file("/nonexistent/shield.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
    }
}
