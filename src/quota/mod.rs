//! Quotas.
pub mod window;
pub use window::{Period, Span, Window, Zone};
