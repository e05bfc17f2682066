//! The `[throttle]` config section.
//!
//! ```toml
//! [throttle]
//! rate_limit_headers = true        # RateLimit fields on allowed responses too
//! max_keys = 1000000               # per policy, in memory
//! redis_url = "redis://:secret@10.0.0.5:6379/0"   # optional: decide in Redis (fleet-wide)
//! failure_mode = "local_fallback"  # reject | allow | local_fallback (when Redis fails)
//! redis_timeout_ms = 50
//! # redis_batch = 64              # optional: one script per batch (single Redis, not Cluster)
//!
//! [[throttle.pre_auth]]            # before auth, keyed by client IP
//! name = "per-ip"
//! rate = "20 per second"
//! burst = 40
//!
//! [[throttle.pre_auth]]
//! name = "login"
//! rate = "5 per minute"
//! burst = 5
//! routes = ["POST /login"]
//!
//! [[throttle.post_auth]]           # after auth, keyed by principal
//! name = "per-principal"
//! rate = "600 per minute"
//! burst = 60
//! key = "principal"
//!
//! [[throttle.post_auth]]
//! name = "cart-sku"
//! rate = "10 per minute"
//! burst = 2
//! key = "principal+path:sku"
//! routes = ["POST /cart/{sku}"]
//!
//! [[throttle.post_auth]]
//! name = "browse"
//! rate = "10 per second"
//! burst = 20
//! action = "delay"
//! max_wait_ms = 500
//! routes = ["GET /products/*"]
//!
//! [[throttle.post_auth]]
//! name = "in-flight"
//! in_flight = 4
//! key = "principal"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::layer::{ThrottleBuilder, ThrottleLayer};
use super::policy::{Action, Key, Policy, Rate};
use crate::error::ConfigError;
use crate::store::FailureMode;

/// The `[throttle]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Policies applied before auth (usually keyed by client IP).
    #[serde(default)]
    pub pre_auth: Vec<PolicyConfig>,
    /// Policies applied after auth (usually keyed by principal).
    #[serde(default)]
    pub post_auth: Vec<PolicyConfig>,
    /// Add RateLimit fields to allowed responses (denials always carry them).
    #[serde(default)]
    pub rate_limit_headers: bool,
    /// Cap on in-memory keys per policy.
    pub max_keys: Option<usize>,
    /// Redis URL: decide rate policies in Redis (feature `redis`).
    pub redis_url: Option<String>,
    /// What to do when Redis fails (default `reject`).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Per-call Redis timeout in milliseconds (default 50).
    pub redis_timeout_ms: Option<u64>,
    /// Redis key prefix (default `tower-shield`).
    pub redis_key_prefix: Option<String>,
    /// Send the Redis decisions queued while a script is in flight as one script, up to this
    /// many (1 ..= 1024; default: one script per decision). For a single Redis only, not
    /// Redis Cluster (see `RedisRateStore::batched`).
    pub redis_batch: Option<usize>,
}

/// One policy in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy name (appears in RateLimit fields).
    pub name: String,
    /// `"<n> per second|minute|hour|day"`. Exactly one of `rate` and `in_flight`.
    pub rate: Option<String>,
    /// Burst (default 1).
    pub burst: Option<u32>,
    /// In-flight cap instead of a rate.
    pub in_flight: Option<u32>,
    /// Key: `ip` (default), `principal`, `route`, `global`, `header:<name>`, `path:<param>`,
    /// `query:<param>`, joined with `+`.
    pub key: Option<String>,
    /// `reject` (default) or `delay`.
    pub action: Option<String>,
    /// Longest wait for `delay` (default 1000).
    pub max_wait_ms: Option<u64>,
    /// Cost per request (default 1).
    pub cost: Option<u32>,
    /// Route patterns the policy applies to (default: all requests).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Route-specific costs (weighted routes), e.g. `{ "POST /checkout" = 5 }`.
    #[serde(default)]
    pub route_costs: BTreeMap<String, u32>,
    /// Record only.
    #[serde(default)]
    pub shadow: bool,
}

impl PolicyConfig {
    /// The policy; errors name `at` (e.g. `throttle.pre_auth[1]`) and the field.
    pub fn to_policy(&self, at: &str) -> Result<Policy, ConfigError> {
        let mut p = match (&self.rate, self.in_flight) {
            (Some(r), None) => {
                let rate: Rate = r
                    .parse()
                    .map_err(|e| ConfigError::invalid(format!("{at}.rate"), format!("{e}")))?;
                Policy::rate(&self.name, rate).burst(self.burst.unwrap_or(1))
            }
            (None, Some(n)) => Policy::in_flight(&self.name, n),
            _ => {
                return Err(ConfigError::invalid(
                    at,
                    "set exactly one of `rate` and `in_flight`",
                ));
            }
        };
        if let Some(k) = &self.key {
            let key: Key = k.parse().map_err(|e: ConfigError| match e {
                ConfigError::Invalid { reason, .. } => {
                    ConfigError::invalid(format!("{at}.key"), reason)
                }
                other => other,
            })?;
            p = p.key(key);
        }
        match self.action.as_deref() {
            None | Some("reject") => {}
            Some("delay") => {
                p = p.action(Action::Delay {
                    max_wait: Duration::from_millis(self.max_wait_ms.unwrap_or(1000)),
                })
            }
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{at}.action"),
                    format!("expected \"reject\" or \"delay\", got {other:?}"),
                ));
            }
        }
        if let Some(c) = self.cost {
            p = p.cost(c);
        }
        let rekey = |e: ConfigError, field: &str| match e {
            ConfigError::Route {
                pattern, reason, ..
            } => ConfigError::Route {
                key: format!("{at}.{field}"),
                pattern,
                reason,
            },
            other => other,
        };
        for r in &self.routes {
            p = p.route(r).map_err(|e| rekey(e, "routes"))?;
        }
        for (r, c) in &self.route_costs {
            p = p
                .route_with_cost(r, *c)
                .map_err(|e| rekey(e, "route_costs"))?;
        }
        Ok(p.shadow(self.shadow))
    }
}

impl ThrottleConfig {
    fn builder(
        &self,
        list: &[PolicyConfig],
        section: &str,
    ) -> Result<ThrottleBuilder, ConfigError> {
        let mut b = ThrottleLayer::builder().rate_limit_headers(self.rate_limit_headers);
        if let Some(m) = self.max_keys {
            b = b.max_keys(m);
        }
        for (i, p) in list.iter().enumerate() {
            let at = format!("throttle.{section}[{i}]");
            let policy = p.to_policy(&at)?;
            policy.validate(&at)?;
            b = b.policy(policy);
        }
        #[cfg(feature = "redis")]
        if let Some(url) = &self.redis_url {
            let mut cb = crate::store::redis::RedisConn::builder(url.clone())
                .timeout(Duration::from_millis(self.redis_timeout_ms.unwrap_or(50)));
            if let Some(prefix) = &self.redis_key_prefix {
                cb = cb.key_prefix(prefix.clone());
            }
            let conn = cb.build_lazy().map_err(|e| match e {
                ConfigError::Invalid { reason, .. } => {
                    ConfigError::invalid("throttle.redis_url", reason)
                }
                other => other,
            })?;
            let store = match self.redis_batch {
                Some(n) => super::redis::RedisRateStore::batched(conn, n)?,
                None => super::redis::RedisRateStore::new(conn),
            };
            b = b.redis(store, self.failure_mode);
        }
        if self.redis_url.is_none() && self.redis_batch.is_some() {
            return Err(ConfigError::invalid(
                "throttle.redis_batch",
                "needs a redis_url",
            ));
        }
        #[cfg(not(feature = "redis"))]
        if self.redis_url.is_some() {
            return Err(ConfigError::invalid(
                "throttle.redis_url",
                "needs the `redis` cargo feature",
            ));
        }
        Ok(b)
    }

    /// The pre-auth and post-auth layers (`None` for an empty list). With a `redis_url`,
    /// call inside a Tokio runtime (the connection is created lazily).
    pub fn into_layers(
        &self,
    ) -> Result<(Option<ThrottleLayer>, Option<ThrottleLayer>), ConfigError> {
        let pre = if self.pre_auth.is_empty() {
            None
        } else {
            Some(self.builder(&self.pre_auth, "pre_auth")?.build()?)
        };
        let post = if self.post_auth.is_empty() {
            None
        } else {
            Some(self.builder(&self.post_auth, "post_auth")?.build()?)
        };
        Ok((pre, post))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ThrottleConfig {
        #[derive(Deserialize)]
        struct F {
            throttle: ThrottleConfig,
        }
        toml::from_str::<F>(s).unwrap().throttle
    }

    #[test]
    fn module_example_builds() {
        let doc = include_str!("config.rs");
        let toml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .filter(|l| !l.starts_with("redis_url"))
            .collect();
        let c = parse(&toml);
        let (pre, post) = c.into_layers().unwrap();
        assert!(pre.is_some() && post.is_some());
    }

    #[test]
    fn redis_batch_is_checked() {
        let c = parse(
            "[throttle]\nredis_batch = 8\n[[throttle.pre_auth]]\nname='a'\nrate='1 per second'\n",
        );
        let e = c.into_layers().unwrap_err().to_string();
        assert_eq!(e, "throttle.redis_batch: needs a redis_url");
        #[cfg(feature = "redis")]
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _g = rt.enter();
            let with = |n: &str| {
                parse(&format!(
                    "[throttle]\nredis_url = 'redis://127.0.0.1:1'\nredis_batch = {n}\n[[throttle.pre_auth]]\nname='a'\nrate='1 per second'\n"
                ))
                .into_layers()
            };
            let e = with("0").unwrap_err().to_string();
            assert!(
                e.starts_with("throttle.redis_batch: must be between 1 and 1024"),
                "{e}"
            );
            assert!(with("1025").is_err());
            assert!(with("64").unwrap().0.is_some());
        }
    }

    #[test]
    fn errors_name_the_key() {
        let c = parse(
            "[throttle]\n[[throttle.pre_auth]]\nname='a'\nrate='10 per second'\n[[throttle.pre_auth]]\nname='b'\nrate='10s'\n",
        );
        let e = c.into_layers().unwrap_err().to_string();
        assert!(e.starts_with("throttle.pre_auth[1].rate:"), "{e}");
        let c =
            parse("[throttle]\n[[throttle.post_auth]]\nname='a'\nrate='1 per second'\nkey='ipp'\n");
        let e = c.into_layers().unwrap_err().to_string();
        assert!(e.starts_with("throttle.post_auth[0].key:"), "{e}");
        let c = parse(
            "[throttle]\n[[throttle.post_auth]]\nname='a'\nrate='1 per second'\nburst=2\ncost=3\n",
        );
        let e = c.into_layers().unwrap_err().to_string();
        assert!(e.starts_with("throttle.post_auth[0].cost:"), "{e}");
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct F {
            throttle: ThrottleConfig,
        }
        let e = toml::from_str::<F>("[throttle]\npre_auht = []\n").unwrap_err();
        assert!(e.to_string().contains("pre_auht"));
    }
}
