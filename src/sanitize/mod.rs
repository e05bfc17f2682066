//! Sanitize layer: normalize, limit and inspect every input.

pub mod detect;
