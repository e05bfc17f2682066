//! `[quota]` configuration.
