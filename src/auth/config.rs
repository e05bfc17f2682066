//! The `[auth]` section of the configuration file.
