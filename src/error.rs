//! Configuration errors.

/// A configuration error: returned by fallible builders and the config loader, never a
/// panic. Each variant names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A CIDR or IP address could not be parsed.
    #[error("{key}: invalid CIDR or IP address {value:?}: {reason}")]
    Cidr {
        /// Where it was found (config key, e.g. `ip_filter.allow[2]`, or the builder method).
        key: String,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A route pattern is invalid or conflicts with another.
    #[error("{key}: invalid route pattern {pattern:?}: {reason}")]
    Route {
        /// Where it was found.
        key: String,
        /// The offending pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other invalid value.
    #[error("{key}: {reason}")]
    Invalid {
        /// Where it was found.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file could not be parsed (the message names the key and line).
    #[error("configuration file {path}: {message}")]
    Parse {
        /// File path (or `<string>`).
        path: String,
        /// Parser message, naming the offending key and position.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("configuration file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
