//! Response (and request) bodies the shield can build from bytes.
//!
//! Every layer of this crate keeps the body type of the service it wraps: a denial is
//! rendered to bytes and turned into that same body type through [`BodyFromBytes`]. Keeping
//! the type means layers stack without nesting wrapper bodies, and an unconfigured layer
//! can be left out of the stack entirely (see [`Shield`](crate::Shield)).
//!
//! Implementations are provided for the bodies of axum (feature `axum`), tonic (feature
//! `tonic`), `http_body_util::Full<Bytes>`, the boxed bodies of `http_body_util`, `String`
//! and `Bytes`. A service with another body type can be adapted with
//! `tower::ServiceBuilder::map_response` into one of these.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody, combinators::UnsyncBoxBody};

/// A body type that can be built from a complete byte buffer.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_shield::BodyFromBytes;
///
/// let body = <Full<Bytes> as BodyFromBytes>::from_bytes(Bytes::from_static(b"{}"));
/// # let _ = body;
/// ```
pub trait BodyFromBytes: Sized {
    /// Builds the body from the given bytes.
    fn from_bytes(bytes: Bytes) -> Self;
}

impl BodyFromBytes for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl BodyFromBytes for Bytes {
    fn from_bytes(bytes: Bytes) -> Self {
        bytes
    }
}

impl BodyFromBytes for String {
    fn from_bytes(bytes: Bytes) -> Self {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl<E: 'static> BodyFromBytes for BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E: 'static> BodyFromBytes for UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

#[cfg(feature = "axum")]
impl BodyFromBytes for axum::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }
}

#[cfg(feature = "tonic")]
impl BodyFromBytes for tonic::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        tonic::body::Body::new(Full::new(bytes).map_err(|never| match never {}))
    }
}
