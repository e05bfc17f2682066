//! The `[quota]` section of the configuration file.
//!
//! ```toml
//! [quota]
//! default_plan = "free"              # callers with an unknown or no plan; omit to deny them
//! key_fallback = "client_ip"         # without a principal: "client_ip", "none", or "header:x-tenant"
//! count = "refund_server_errors"     # or "every_call", "success_only"
//! failure_mode = "reject"            # store failure: "reject" (503), "allow", "local_fallback"
//! shadow = false
//! headers = true                     # RateLimit fields on admitted responses too (default false)
//!
//! [quota.plans]
//! free = [{ name = "monthly", limit = 6000, window = "month" }]
//! pro = [
//!   { name = "monthly", limit = 100000, window = "month", anchor_day = 15, zone = "Europe/Berlin" },
//!   { name = "daily", limit = 5000, window = "day" },
//!   { name = "hourly", limit = 500, window = "rolling", length_secs = 3600, buckets = 60 },
//! ]
//!
//! [[quota.weights]]
//! route = "GET /products?search"     # a query parameter makes the weight apply when present
//! cost = 10
//!
//! [quota.store]
//! kind = "durable"                   # or "memory" (default), or "redis" (feature `redis`)
//! path = "/var/lib/shop/quota.redb"
//! flush_interval_ms = 250            # the loss window on a crash
//! # with kind = "redis" instead:
//! # url_env = "QUOTA_REDIS_URL"      # or url = "redis://:pw@host:6379/0"
//! # timeout_ms = 50                  # per call; then failure_mode applies
//! # key_prefix = "shop"
//! # batch = 64                      # optional: charges queued while a script is in flight
//! #                                 # share one script (single Redis, not Redis Cluster)
//! # failure_mode = "local_fallback"  # overrides quota.failure_mode
//! ```
//!
//! ```
//! use tower_shield::quota::config::QuotaConfig;
//!
//! let cfg: QuotaConfig = toml::from_str(r#"
//!     default_plan = "free"
//!     [plans]
//!     free = [{ name = "monthly", limit = 6000, window = "month" }]
//! "#).unwrap();
//! let layer = cfg.build().unwrap();
//! # let _ = layer;
//! let bad: QuotaConfig = toml::from_str(r#"
//!     [plans]
//!     free = [{ name = "monthly", limit = 6000, window = "fortnight" }]
//! "#).unwrap();
//! assert!(bad.build().unwrap_err().to_string().starts_with("quota.plans.free[0].window"));
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::layer::{CountPolicy, KeyFallback, Quota, QuotaLayer};
use super::store::{DurableCounterStore, DurableOptions, MemoryCounterStore, QuotaStore};
use super::window::{Period, Window, Zone};
use crate::clock::{SharedClock, system_clock};
use crate::error::ConfigError;
use crate::store::FailureMode;

/// `[quota]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Plan name → quotas.
    #[serde(default)]
    pub plans: BTreeMap<String, Vec<QuotaItemConfig>>,
    /// Plan for callers with an unknown or no plan (none: they are refused with 403).
    pub default_plan: Option<String>,
    /// Keying without a principal: `client_ip` (default), `none`, or `header:<name>`.
    #[serde(default)]
    pub key_fallback: Option<String>,
    /// Counting policy.
    #[serde(default)]
    pub count: CountPolicy,
    /// Store failure mode.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Shadow mode.
    #[serde(default)]
    pub shadow: bool,
    /// RateLimit fields on admitted responses too (default false; denials always carry them).
    pub headers: Option<bool>,
    /// Cost of a request on no weighted route (default 1).
    pub default_cost: Option<u64>,
    /// Per-route weights.
    #[serde(default)]
    pub weights: Vec<WeightConfig>,
    /// The counter store.
    #[serde(default)]
    pub store: StoreConfig,
}

/// One quota of a plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaItemConfig {
    /// Policy name (`monthly`).
    pub name: String,
    /// Units per window.
    pub limit: u64,
    /// `hour`, `day`, `week`, `month`, `year` or `rolling`.
    pub window: String,
    /// Time zone: `UTC` (default), `+HH:MM`, or an IANA name.
    pub zone: Option<String>,
    /// Billing anchor day of a monthly window (1–31).
    pub anchor_day: Option<u32>,
    /// Local reset time `HH:MM` of a day/week/month/year window.
    pub anchor_time: Option<String>,
    /// Rolling window length in seconds.
    pub length_secs: Option<u64>,
    /// Rolling window bucket count (default 60).
    pub buckets: Option<u32>,
}

/// `[[quota.weights]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightConfig {
    /// Route pattern, optionally with `?param`.
    pub route: String,
    /// Units charged.
    pub cost: u64,
}

/// `[quota.store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (default) or `durable`.
    #[serde(default)]
    pub kind: StoreKind,
    /// File of the durable store.
    pub path: Option<PathBuf>,
    /// Flush interval of the durable store in milliseconds (default 250).
    pub flush_interval_ms: Option<u64>,
    /// Bound on live counters.
    pub max_keys: Option<usize>,
    /// Redis URL (`redis://[:password@]host:port[/db]`); prefer `url_env`.
    pub url: Option<String>,
    /// Name of the environment variable holding the Redis URL.
    pub url_env: Option<String>,
    /// Per-call Redis timeout in milliseconds (default 50).
    pub timeout_ms: Option<u64>,
    /// Redis key prefix (default `tower-shield`).
    pub key_prefix: Option<String>,
    /// Failure mode of the store (overrides `quota.failure_mode`).
    pub failure_mode: Option<FailureMode>,
    /// Redis only: batch up to this many charges per script (1..=1024; see
    /// `RedisCounterStore::batched`). Single Redis only, not Redis Cluster.
    pub batch: Option<usize>,
}

/// Store kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In memory.
    #[default]
    Memory,
    /// Durable single-node (redb).
    Durable,
    /// Redis, shared by a fleet (feature `redis`).
    Redis,
}

impl QuotaItemConfig {
    fn window(&self, key: &str) -> Result<Window, ConfigError> {
        let w = if self.window.eq_ignore_ascii_case("rolling") {
            let len = self.length_secs.ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.length_secs"),
                    "a rolling window needs length_secs",
                )
            })?;
            Window::rolling(Duration::from_secs(len), self.buckets.unwrap_or(60))
                .map_err(|e| rekey(e, key))?
        } else {
            let period = Period::parse(&self.window).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.window"),
                    format!(
                        "unknown window {:?} (use hour, day, week, month, year or rolling)",
                        self.window
                    ),
                )
            })?;
            let mut w = Window::calendar(period);
            if let Some(z) = &self.zone {
                w = w.zone(
                    Zone::parse(z).map_err(|e| ConfigError::invalid(format!("{key}.zone"), e))?,
                );
            }
            if let Some(d) = self.anchor_day {
                if period != Period::Month {
                    return Err(ConfigError::invalid(
                        format!("{key}.anchor_day"),
                        "only a month window has an anchor day",
                    ));
                }
                w = w.anchor_day(d).map_err(|e| rekey(e, key))?;
            }
            if let Some(t) = &self.anchor_time {
                let bad = || ConfigError::invalid(format!("{key}.anchor_time"), "expected HH:MM");
                let (h, m) = t.split_once(':').ok_or_else(bad)?;
                w = w
                    .anchor_time(h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?)
                    .map_err(|e| rekey(e, key))?;
            }
            w
        };
        if self.window.eq_ignore_ascii_case("rolling")
            && (self.zone.is_some() || self.anchor_day.is_some() || self.anchor_time.is_some())
        {
            return Err(ConfigError::invalid(
                key,
                "a rolling window takes no zone or anchor",
            ));
        }
        Ok(w)
    }
}

fn rekey(e: ConfigError, key: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { key: k, reason } => ConfigError::Invalid {
            key: format!("{key}.{}", k.rsplit('.').next().unwrap_or(&k)),
            reason,
        },
        other => other,
    }
}

impl QuotaConfig {
    /// Builds the layer with the system clock.
    pub fn build(&self) -> Result<QuotaLayer, ConfigError> {
        self.build_with_clock(system_clock())
    }

    /// Builds the layer reading time from `clock`.
    /// With `kind = "redis"`, call inside a Tokio runtime (the connection is created lazily).
    pub fn build_with_clock(&self, clock: SharedClock) -> Result<QuotaLayer, ConfigError> {
        if self.store.kind != StoreKind::Redis {
            for (set, key) in [
                (self.store.url.is_some(), "url"),
                (self.store.url_env.is_some(), "url_env"),
                (self.store.timeout_ms.is_some(), "timeout_ms"),
                (self.store.key_prefix.is_some(), "key_prefix"),
                (self.store.batch.is_some(), "batch"),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("quota.store.{key}"),
                        "only a redis store takes this",
                    ));
                }
            }
        }
        let store = match self.store.kind {
            StoreKind::Memory => {
                if self.store.path.is_some() {
                    return Err(ConfigError::invalid(
                        "quota.store.path",
                        "only a durable store has a path",
                    ));
                }
                QuotaStore::Memory(MemoryCounterStore::with_max_keys(
                    clock.clone(),
                    self.store
                        .max_keys
                        .unwrap_or(MemoryCounterStore::DEFAULT_MAX_KEYS),
                ))
            }
            StoreKind::Durable => {
                let path = self.store.path.as_ref().ok_or_else(|| {
                    ConfigError::invalid("quota.store.path", "a durable store needs a path")
                })?;
                let mut opts = DurableOptions {
                    clock: clock.clone(),
                    ..Default::default()
                };
                if let Some(ms) = self.store.flush_interval_ms {
                    if ms == 0 {
                        return Err(ConfigError::invalid(
                            "quota.store.flush_interval_ms",
                            "must be positive",
                        ));
                    }
                    opts.flush_interval = Duration::from_millis(ms);
                }
                if let Some(n) = self.store.max_keys {
                    opts.max_keys = n;
                }
                QuotaStore::Durable(DurableCounterStore::open(path, opts).map_err(|e| {
                    ConfigError::invalid("quota.store.path", format!("cannot open: {e}"))
                })?)
            }
            StoreKind::Redis => self.redis_store()?,
        };
        let failure_mode = self.store.failure_mode.unwrap_or(self.failure_mode);
        let mut b = QuotaLayer::builder()
            .store(store)
            .clock(clock)
            .count_policy(self.count)
            .failure_mode(failure_mode)
            .shadow(self.shadow)
            .headers_on_success(self.headers.unwrap_or(false))
            .default_cost(self.default_cost.unwrap_or(1));
        if self.plans.is_empty() {
            return Err(ConfigError::invalid(
                "quota.plans",
                "at least one plan is needed",
            ));
        }
        for (plan, items) in &self.plans {
            let mut quotas = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let key = format!("quota.plans.{plan}[{i}]");
                if item.name.is_empty() || item.name.len() > 64 {
                    return Err(ConfigError::invalid(
                        format!("{key}.name"),
                        "must be 1 to 64 characters",
                    ));
                }
                quotas.push(Quota::new(
                    item.name.as_str(),
                    item.limit,
                    item.window(&key)?,
                ));
            }
            b = b.plan(plan.clone(), quotas);
        }
        if let Some(p) = &self.default_plan {
            if !self.plans.contains_key(p) {
                return Err(ConfigError::invalid(
                    "quota.default_plan",
                    format!("plan {p:?} is not configured"),
                ));
            }
            b = b.default_plan(p.clone());
        }
        if let Some(f) = &self.key_fallback {
            let fallback = match f.as_str() {
                "client_ip" => KeyFallback::ClientIp,
                "none" => KeyFallback::None,
                other => match other.strip_prefix("header:") {
                    Some(h) => KeyFallback::Header(h.trim().parse().map_err(|_| {
                        ConfigError::invalid("quota.key_fallback", "invalid header name")
                    })?),
                    None => {
                        return Err(ConfigError::invalid(
                            "quota.key_fallback",
                            "use \"client_ip\", \"none\" or \"header:<name>\"",
                        ));
                    }
                },
            };
            b = b.key_fallback(fallback);
        }
        for (i, w) in self.weights.iter().enumerate() {
            let route = w.route.split_once('?').map_or(w.route.as_str(), |(r, _)| r);
            crate::route::RoutePattern::parse(route, &format!("quota.weights[{i}].route"))?;
            b = b.weight(&w.route, w.cost);
        }
        b.build()
    }

    #[cfg(feature = "redis")]
    fn redis_store(&self) -> Result<QuotaStore, ConfigError> {
        let st = &self.store;
        if st.path.is_some() || st.flush_interval_ms.is_some() || st.max_keys.is_some() {
            let key = if st.path.is_some() {
                "path"
            } else if st.flush_interval_ms.is_some() {
                "flush_interval_ms"
            } else {
                "max_keys"
            };
            return Err(ConfigError::invalid(
                format!("quota.store.{key}"),
                "a redis store does not take this",
            ));
        }
        let url = match (&st.url, &st.url_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "quota.store.url",
                    "give either url or url_env, not both",
                ));
            }
            (Some(u), None) => u.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::invalid(
                    "quota.store.url_env",
                    format!("environment variable {var:?} is not set"),
                )
            })?,
            (None, None) => {
                return Err(ConfigError::invalid(
                    "quota.store.url",
                    "a redis store needs url or url_env",
                ));
            }
        };
        if let Some(n) = st.batch
            && !(1..=super::redis::MAX_BATCH).contains(&n)
        {
            return Err(ConfigError::invalid(
                "quota.store.batch",
                format!("must be between 1 and {}, got {n}", super::redis::MAX_BATCH),
            ));
        }
        let timeout = st.timeout_ms.unwrap_or(50);
        if timeout == 0 {
            return Err(ConfigError::invalid(
                "quota.store.timeout_ms",
                "must be positive",
            ));
        }
        let mut cb =
            crate::store::redis::RedisConn::builder(url).timeout(Duration::from_millis(timeout));
        if let Some(p) = &st.key_prefix {
            if p.is_empty() || p.contains(['{', '}']) {
                return Err(ConfigError::invalid(
                    "quota.store.key_prefix",
                    "must be non-empty and contain no braces",
                ));
            }
            cb = cb.key_prefix(p.clone());
        }
        let url_key = if st.url_env.is_some() {
            "quota.store.url_env"
        } else {
            "quota.store.url"
        };
        let conn = cb.build_lazy().map_err(|e| match e {
            ConfigError::Invalid { reason, .. } => ConfigError::invalid(url_key, reason),
            other => other,
        })?;
        let store = match st.batch {
            Some(n) => super::redis::RedisCounterStore::batched(conn, n)?,
            None => super::redis::RedisCounterStore::new(conn),
        };
        Ok(QuotaStore::Redis(store))
    }

    #[cfg(not(feature = "redis"))]
    fn redis_store(&self) -> Result<QuotaStore, ConfigError> {
        Err(ConfigError::invalid(
            "quota.store.kind",
            "a redis store needs the `redis` cargo feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml_text: &str) -> String {
        let cfg: QuotaConfig = toml::from_str(toml_text).unwrap();
        cfg.build().unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_offending_key() {
        assert!(
            err("[plans]\nfree = [{ name = \"m\", limit = 1, window = \"month\", zone = \"Mars/X\" }]")
                .starts_with("quota.plans.free[0].zone")
        );
        assert!(
            err(
                "[plans]\nfree = [{ name = \"m\", limit = 1, window = \"month\", anchor_day = 32 }]"
            )
            .starts_with("quota.plans.free[0].anchor_day")
        );
        assert!(
            err("[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\", anchor_day = 3 }]")
                .starts_with("quota.plans.free[0].anchor_day")
        );
        assert!(
            err("[plans]\nfree = [{ name = \"m\", limit = 1, window = \"rolling\" }]")
                .starts_with("quota.plans.free[0].length_secs")
        );
        assert!(
            err("default_plan = \"gold\"\n[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\" }]")
                .starts_with("quota.default_plan")
        );
        assert!(
            err("[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\" }]\n[[weights]]\nroute = \"GET products\"\ncost = 3")
                .starts_with("quota.weights[0].route")
        );
        assert!(
            err("[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\" }]\n[store]\nkind = \"durable\"")
                .starts_with("quota.store.path")
        );
        assert!(err("").starts_with("quota.plans"));
        assert!(
            toml::from_str::<QuotaConfig>(
                "[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\", colour = 1 }]"
            )
            .is_err()
        );
    }

    #[test]
    fn redis_store_keys_are_checked() {
        const P: &str =
            "[plans]\nfree = [{ name = \"m\", limit = 1, window = \"day\" }]\n[store]\n";
        assert!(err(&format!("{P}url = \"redis://h\"")).starts_with("quota.store.url"));
        assert!(err(&format!("{P}batch = 8")).starts_with("quota.store.batch"));
        #[cfg(feature = "redis")]
        {
            assert!(err(&format!("{P}kind = \"redis\"")).starts_with("quota.store.url"));
            assert!(
                err(&format!(
                    "{P}kind = \"redis\"\nurl_env = \"TOWER_SHIELD_NO_SUCH_VAR\""
                ))
                .starts_with("quota.store.url_env")
            );
            assert!(
                err(&format!(
                    "{P}kind = \"redis\"\nurl = \"redis://h\"\ntimeout_ms = 0"
                ))
                .starts_with("quota.store.timeout_ms")
            );
            for bad in ["0", "1025"] {
                let e = err(&format!(
                    "{P}kind = \"redis\"\nurl = \"redis://h\"\nbatch = {bad}"
                ));
                assert!(e.starts_with("quota.store.batch"), "{e}");
                assert!(e.contains(&format!("got {bad}")), "{e}");
            }
            let e = err(&format!("{P}kind = \"redis\"\nurl = \"nope://:hunter2@h\""));
            assert!(e.starts_with("quota.store.url"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        #[cfg(not(feature = "redis"))]
        assert!(
            err(&format!("{P}kind = \"redis\"\nurl = \"redis://h\""))
                .starts_with("quota.store.kind")
        );
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_section_builds_lazily() {
        let cfg: QuotaConfig = toml::from_str(
            r#"
            failure_mode = "reject"
            [plans]
            free = [{ name = "monthly", limit = 6000, window = "month" }]
            [store]
            kind = "redis"
            url = "redis://:pw@127.0.0.1:1/0"
            timeout_ms = 20
            key_prefix = "shop"
            failure_mode = "local_fallback"
            "#,
        )
        .unwrap();
        let layer = cfg.build().unwrap();
        assert!(!format!("{layer:?}").contains("pw@"));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_batch_picks_the_batched_store() {
        let text = |batch: &str| {
            format!(
                "[plans]\nfree = [{{ name = \"m\", limit = 1, window = \"day\" }}]\n\
                 [store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\n{batch}"
            )
        };
        let batched: QuotaConfig = toml::from_str(&text("batch = 16")).unwrap();
        let single: QuotaConfig = toml::from_str(&text("")).unwrap();
        let max_batch = |c: &QuotaConfig| match c.redis_store().unwrap() {
            QuotaStore::Redis(r) => r.max_batch(),
            _ => panic!("not a redis store"),
        };
        assert_eq!(max_batch(&batched), Some(16));
        assert_eq!(max_batch(&single), None);
        batched.build().unwrap();
    }

    #[test]
    fn full_section_builds_with_a_durable_store() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
            default_plan = "free"
            key_fallback = "header:x-tenant"
            count = "success_only"
            failure_mode = "local_fallback"
            [plans]
            free = [{{ name = "monthly", limit = 6000, window = "month" }}]
            pro = [
              {{ name = "monthly", limit = 100000, window = "month", anchor_day = 15, anchor_time = "06:30", zone = "Europe/Berlin" }},
              {{ name = "hourly", limit = 500, window = "rolling", length_secs = 3600, buckets = 60 }},
            ]
            [[weights]]
            route = "GET /products?search"
            cost = 10
            [store]
            kind = "durable"
            path = "{}"
            flush_interval_ms = 100
            "#,
            dir.path().join("q.redb").display()
        );
        let cfg: QuotaConfig = toml::from_str(&text).unwrap();
        cfg.build().unwrap();
    }
}
