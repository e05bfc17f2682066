//! `Principal` as an axum extractor (feature `axum`).

use axum::extract::FromRequestParts;
use axum::response::Response;
use http::StatusCode;
use http::request::Parts;

use crate::denial::{Denial, Renderer, RequestHead};
use crate::principal::Principal;

/// Extracts the [`Principal`] the auth layer inserted. Without one (the route is not behind
/// the auth layer, or is public), the rejection is a `401` problem+json response.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_shield::Principal;
///
/// async fn me(p: Principal) -> String { p.id().to_owned() }
/// let app: Router = Router::new().route("/me", get(me));
/// # let _ = app;
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let d = Denial::new(StatusCode::UNAUTHORIZED, "auth", "missing_principal")
            .with_detail("This endpoint requires an authenticated caller.")
            .with_www_authenticate(http::HeaderValue::from_static("Bearer"));
        Err(Renderer::default().respond_head(d, &head))
    }
}

/// `Option<Principal>` works too: `None` on public routes.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
