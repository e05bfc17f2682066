//! The `[audit]` configuration section.
//!
//! ```toml
//! [audit]
//! file = "/var/log/shield/audit.jsonl"   # JSON lines; omit for tracing-only
//! rotate_bytes = 104857600               # rotate at 100 MiB (0: never)
//! rotate_secs = 86400                    # and/or daily (0: never)
//! fsync = "interval"                     # "never" | "always" | "interval"
//! fsync_interval_ms = 1000
//! tracing = false                        # also emit tracing events
//! capacity = 8192                        # queue between requests and the writer
//! overflow = "block"                     # "block" (lossless) | "drop" (counted)
//! on_failure = "continue"                # "continue" | "fail_closed" (503)
//! chain_key_env = "SHIELD_AUDIT_KEY"     # or chain_key = "..." (≥ 16 bytes)
//! log_headers = ["referer"]              # redacted; credentials never in clear
//! secret_headers = ["x-api-key"]         # API-key headers (added to the defaults)
//! secret_query_params = ["sig"]          # added to the built-in list
//! ```
//!
//! ```
//! use tower_shield::audit::AuditConfig;
//! let c: AuditConfig = toml::from_str("overflow = \"drop\"\ntracing = true").unwrap();
//! let layer = c.build_layer().unwrap();
//! # let _ = layer;
//! let bad: AuditConfig = toml::from_str("tracing = true\nchain_key_env = \"NO_SUCH_VAR_42\"").unwrap();
//! assert!(bad.build_layer().unwrap_err().to_string().starts_with("audit.chain_key_env:"));
//! ```

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::layer::{AuditLayer, AuditLayerBuilder};
use super::sink::{FileSink, Fsync};
use super::writer::{FailurePolicy, Overflow};
use crate::error::ConfigError;

/// `fsync` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Never call fsync.
    #[default]
    Never,
    /// After every batch.
    Always,
    /// Every `fsync_interval_ms`.
    Interval,
}

/// `overflow` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowMode {
    /// Lossless back-pressure.
    #[default]
    Block,
    /// Drop and count.
    Drop,
}

/// `on_failure` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Keep serving and report.
    #[default]
    Continue,
    /// Refuse requests with 503 while a sink fails.
    FailClosed,
}

/// `[audit]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file.
    pub file: Option<PathBuf>,
    /// Rotate at this size (bytes, 0: never).
    #[serde(default)]
    pub rotate_bytes: u64,
    /// Rotate after this many seconds (0: never).
    #[serde(default)]
    pub rotate_secs: u64,
    /// fsync policy.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Interval for `fsync = "interval"` (default 1000 ms).
    pub fsync_interval_ms: Option<u64>,
    /// Also emit `tracing` events.
    #[serde(default)]
    pub tracing: bool,
    /// Queue capacity (default 8192).
    pub capacity: Option<usize>,
    /// Overflow policy.
    #[serde(default)]
    pub overflow: OverflowMode,
    /// Sink failure policy.
    #[serde(default)]
    pub on_failure: FailureMode,
    /// Chain key (prefer `chain_key_env`: keys in config files leak).
    pub chain_key: Option<String>,
    /// Environment variable holding the chain key.
    pub chain_key_env: Option<String>,
    /// Headers to log (redacted).
    #[serde(default)]
    pub log_headers: Vec<String>,
    /// Extra API-key headers, never logged in clear.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// Extra query parameters to redact.
    #[serde(default)]
    pub secret_query_params: Vec<String>,
    /// Longest accepted incoming request id (default 128).
    pub max_request_id_len: Option<usize>,
}

fn header(name: &str, key: String) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| ConfigError::invalid(key, format!("invalid header name {name:?}")))
}

impl AuditConfig {
    /// The chain key from `chain_key` or the `chain_key_env` variable, if any.
    pub fn chain_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if self.chain_key.is_some() && self.chain_key_env.is_some() {
            return Err(ConfigError::invalid(
                "audit.chain_key",
                "set either chain_key or chain_key_env, not both",
            ));
        }
        if let Some(var) = &self.chain_key_env {
            let v = std::env::var(var).map_err(|_| {
                ConfigError::invalid(
                    "audit.chain_key_env",
                    format!("environment variable {var} is not set or not UTF-8"),
                )
            })?;
            if v.len() < 16 {
                return Err(ConfigError::invalid(
                    "audit.chain_key_env",
                    format!("the key in {var} must be at least 16 bytes"),
                ));
            }
            return Ok(Some(v.into_bytes()));
        }
        if let Some(k) = &self.chain_key {
            if k.len() < 16 {
                return Err(ConfigError::invalid(
                    "audit.chain_key",
                    "the chain key must be at least 16 bytes",
                ));
            }
            return Ok(Some(k.clone().into_bytes()));
        }
        Ok(None)
    }

    /// Validates the section into a builder (to which code can add sinks).
    pub fn into_builder(&self) -> Result<AuditLayerBuilder, ConfigError> {
        let mut b = AuditLayer::builder();
        if let Some(path) = &self.file {
            let fsync = match self.fsync {
                FsyncMode::Never => Fsync::Never,
                FsyncMode::Always => Fsync::Always,
                FsyncMode::Interval => {
                    let ms = self.fsync_interval_ms.unwrap_or(1000);
                    if ms == 0 {
                        return Err(ConfigError::invalid(
                            "audit.fsync_interval_ms",
                            "must be positive (use fsync = \"always\")",
                        ));
                    }
                    Fsync::Interval(Duration::from_millis(ms))
                }
            };
            let sink = FileSink::builder(path)
                .max_bytes(self.rotate_bytes)
                .rotate_every(Duration::from_secs(self.rotate_secs))
                .fsync(fsync)
                .build()
                .map_err(|e| {
                    ConfigError::invalid(
                        "audit.file",
                        format!("cannot open {}: {e}", path.display()),
                    )
                })?;
            b = b.file(sink);
        }
        if self.tracing {
            b = b.tracing();
        }
        if let Some(c) = self.capacity {
            if c == 0 {
                return Err(ConfigError::invalid("audit.capacity", "must be positive"));
            }
            b = b.capacity(c);
        }
        b = b
            .overflow(match self.overflow {
                OverflowMode::Block => Overflow::Block,
                OverflowMode::Drop => Overflow::Drop,
            })
            .on_sink_failure(match self.on_failure {
                FailureMode::Continue => FailurePolicy::Continue,
                FailureMode::FailClosed => FailurePolicy::FailClosed,
            });
        if let Some(k) = self.chain_key()? {
            b = b.chain_key(k);
        }
        for (i, h) in self.log_headers.iter().enumerate() {
            b = b.log_header(header(h, format!("audit.log_headers[{i}]"))?);
        }
        for (i, h) in self.secret_headers.iter().enumerate() {
            b = b.secret_header(header(h, format!("audit.secret_headers[{i}]"))?);
        }
        for p in &self.secret_query_params {
            b = b.secret_query_param(p);
        }
        if let Some(n) = self.max_request_id_len {
            b = b.max_request_id_len(n);
        }
        Ok(b)
    }

    /// Validates the section and builds the layer (starts the writer thread).
    pub fn build_layer(&self) -> Result<AuditLayer, ConfigError> {
        if self.file.is_none() && !self.tracing {
            return Err(ConfigError::invalid(
                "audit",
                "configure a sink: file = \"...\" and/or tracing = true",
            ));
        }
        self.into_builder()?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let c: AuditConfig = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        c.build_layer().unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_offending_key() {
        assert!(err("tracing = true\nchain_key = \"short\"").starts_with("audit.chain_key:"));
        assert!(
            err("tracing = true\nlog_headers = [\"ok\", \"bad header\"]")
                .starts_with("audit.log_headers[1]:")
        );
        assert!(err("tracing = true\ncapacity = 0").starts_with("audit.capacity:"));
        assert!(
            err("file = \"/tmp/never-created.jsonl\"\nfsync = \"interval\"\nfsync_interval_ms = 0")
                .starts_with("audit.fsync_interval_ms:")
        );
        assert!(err("").starts_with("audit:"));
        assert!(err("tracing = true\nfile = \"/dev/null/x/y\"").starts_with("audit.file:"));
        assert!(err("tracing = true\noverflow = \"maybe\"").contains("overflow"));
        assert!(err("tracing = true\nflie = \"x\"").contains("flie"));
    }
}
