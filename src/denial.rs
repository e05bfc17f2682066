//! The one decision type every layer returns when it refuses a request, and its rendering.
//!
//! A [`Denial`] carries the status, an RFC 9457 problem type and title, an optional *safe*
//! detail (text written by the crate or the operator, never request data), and the headers
//! the refusal needs (`WWW-Authenticate`, `Retry-After`, `RateLimit-Policy`/`RateLimit`).
//!
//! A [`Renderer`] turns it into a response:
//! - by default, `application/problem+json` (RFC 9457);
//! - when the request's content type is `application/grpc*`, a trailers-only gRPC response
//!   (HTTP 200, `content-type: application/grpc`, `grpc-status`, `grpc-message`), with the
//!   status mapped by a configurable [`GrpcCodeMap`] (429 becomes `RESOURCE_EXHAUSTED`, not
//!   the retriable `UNAVAILABLE` a gRPC client would infer from a bare HTTP 429).
//!
//! The denial itself is attached to the response extensions, so outer layers (audit,
//! metrics) can read why a request was refused:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, StatusCode};
//! use http_body_util::Full;
//! use tower_shield::{Denial, Renderer};
//!
//! let req = Request::get("/admin").body(()).unwrap();
//! let denial = Denial::new(StatusCode::FORBIDDEN, "ip_filter", "ip_denied")
//!     .with_detail("The client address is not allowed.");
//! let res: http::Response<Full<Bytes>> = Renderer::default().respond(denial, &req);
//! assert_eq!(res.status(), 403);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.extensions().get::<Denial>().unwrap().reason(), "ip_denied");
//! ```
//!
//! A custom renderer is any closure `Fn(&Denial, &RequestHead) -> Response<Bytes>`:
//!
//! ```
//! use bytes::Bytes;
//! use tower_shield::{Denial, Renderer, RequestHead};
//!
//! let renderer = Renderer::new(|d: &Denial, _req: &RequestHead<'_>| {
//!     http::Response::builder()
//!         .status(d.status())
//!         .body(Bytes::from_static(b"denied"))
//!         .unwrap()
//! });
//! # let _ = renderer;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::body::BodyFromBytes;
use crate::ratelimit::{self, RateLimitField};

/// Why a layer refused a request. Attached to the response extensions of every denial.
#[derive(Clone, Debug)]
pub struct Denial {
    status: StatusCode,
    layer: &'static str,
    reason: Cow<'static, str>,
    problem_type: Cow<'static, str>,
    title: Option<Cow<'static, str>>,
    detail: Option<Cow<'static, str>>,
    retry_after: Option<Duration>,
    www_authenticate: Option<HeaderValue>,
    rate_limits: Vec<RateLimitField>,
    headers: HeaderMap,
    members: Map<String, Value>,
    grpc_code: Option<u16>,
    shadow: bool,
}

impl Denial {
    /// A denial with the given status, produced by `layer` (e.g. `"ip_filter"`) for a
    /// machine-readable `reason` (e.g. `"ip_denied"`). The problem type defaults to
    /// `about:blank` and the title to the status's reason phrase.
    pub fn new(
        status: StatusCode,
        layer: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            layer,
            reason: reason.into(),
            problem_type: Cow::Borrowed("about:blank"),
            title: None,
            detail: None,
            retry_after: None,
            www_authenticate: None,
            rate_limits: Vec::new(),
            headers: HeaderMap::new(),
            members: Map::new(),
            grpc_code: None,
            shadow: false,
        }
    }

    /// Sets the RFC 9457 problem `type` URI.
    pub fn with_type(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.problem_type = uri.into();
        self
    }
    /// Sets the problem `title`.
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = Some(title.into());
        self
    }
    /// Sets the problem `detail`. It must never contain request data (keys, tokens, input
    /// values): the crate's layers only pass text of their own or of the operator.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    /// Sets `Retry-After` (rendered rounded up, at least 1 second).
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
    /// Sets the `WWW-Authenticate` challenge.
    pub fn with_www_authenticate(mut self, value: HeaderValue) -> Self {
        self.www_authenticate = Some(value);
        self
    }
    /// Adds a `RateLimit-Policy`/`RateLimit` item.
    pub fn with_rate_limit(mut self, field: RateLimitField) -> Self {
        self.rate_limits.push(field);
        self
    }
    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
    /// Adds an RFC 9457 extension member (e.g. `violated-policies`).
    pub fn with_member(mut self, name: impl Into<String>, value: Value) -> Self {
        self.members.insert(name.into(), value);
        self
    }
    /// Overrides the gRPC status code used for this denial.
    pub fn with_grpc_code(mut self, code: u16) -> Self {
        self.grpc_code = Some(code);
        self
    }
    /// Marks the denial as recorded only (shadow mode): the request was let through.
    pub fn into_shadow(mut self) -> Self {
        self.shadow = true;
        self
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The layer that refused (`"ip_filter"`, `"auth"`, `"throttle"`, ...).
    pub fn layer(&self) -> &'static str {
        self.layer
    }
    /// Machine-readable reason (`"ip_denied"`, `"invalid_token"`, ...).
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// Problem type URI.
    pub fn problem_type(&self) -> &str {
        &self.problem_type
    }
    /// Problem title (the status phrase when none was set).
    pub fn title(&self) -> &str {
        match &self.title {
            Some(t) => t,
            None => self.status.canonical_reason().unwrap_or("Request refused"),
        }
    }
    /// Problem detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    /// Retry-After wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    /// RateLimit items.
    pub fn rate_limits(&self) -> &[RateLimitField] {
        &self.rate_limits
    }
    /// Extension members.
    pub fn members(&self) -> &Map<String, Value> {
        &self.members
    }
    /// Explicit gRPC code, if any.
    pub fn grpc_code(&self) -> Option<u16> {
        self.grpc_code
    }
    /// Whether this denial was only recorded (shadow mode).
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Writes the headers this denial carries (challenge, Retry-After, RateLimit fields,
    /// extra headers) into `headers`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Some(v) = &self.www_authenticate {
            headers.insert(WWW_AUTHENTICATE, v.clone());
        }
        if let Some(wait) = self.retry_after {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(ratelimit::retry_after_secs(wait)),
            );
        }
        ratelimit::append_headers(headers, &self.rate_limits);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
    }

    /// The RFC 9457 problem document for this denial.
    pub fn problem_json(&self) -> Value {
        let mut doc = Map::with_capacity(4 + self.members.len());
        doc.insert("type".into(), Value::from(self.problem_type.as_ref()));
        doc.insert("title".into(), Value::from(self.title()));
        doc.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(d) = &self.detail {
            doc.insert("detail".into(), Value::from(d.as_ref()));
        }
        for (k, v) in &self.members {
            doc.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(doc)
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} denied by {} ({})",
            self.status.as_u16(),
            self.layer,
            self.reason
        )
    }
}

/// The parts of a request a renderer may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request URI.
    pub uri: &'a Uri,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of a request.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }

    /// Whether the request is a gRPC call (`content-type: application/grpc*`).
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.headers)
    }
}

/// Whether the headers announce a gRPC request (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(is_grpc_content_type)
}

/// Whether a `content-type` value is `application/grpc*`.
pub(crate) fn is_grpc_content_type(v: &http::HeaderValue) -> bool {
    v.as_bytes().len() >= 16 && v.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
}

/// Turns a denial into a response.
///
/// Implemented for closures `Fn(&Denial, &RequestHead<'_>) -> Response<Bytes>`.
pub trait DenialRenderer: Send + Sync + 'static {
    /// Renders the denial for this request.
    fn render(&self, denial: &Denial, request: &RequestHead<'_>) -> Response<Bytes>;
}

impl<F> DenialRenderer for F
where
    F: Fn(&Denial, &RequestHead<'_>) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, denial: &Denial, request: &RequestHead<'_>) -> Response<Bytes> {
        self(denial, request)
    }
}

/// gRPC status codes used by the default mapping.
pub mod grpc_code {
    /// `INVALID_ARGUMENT`
    pub const INVALID_ARGUMENT: u16 = 3;
    /// `PERMISSION_DENIED`
    pub const PERMISSION_DENIED: u16 = 7;
    /// `RESOURCE_EXHAUSTED`
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// `UNIMPLEMENTED`
    pub const UNIMPLEMENTED: u16 = 12;
    /// `INTERNAL`
    pub const INTERNAL: u16 = 13;
    /// `UNAVAILABLE`
    pub const UNAVAILABLE: u16 = 14;
    /// `UNAUTHENTICATED`
    pub const UNAUTHENTICATED: u16 = 16;
    /// `UNKNOWN`
    pub const UNKNOWN: u16 = 2;
}

/// Maps denial statuses to gRPC status codes.
///
/// Defaults: 400/422 → `INVALID_ARGUMENT` (3), 401 → `UNAUTHENTICATED` (16), 403 →
/// `PERMISSION_DENIED` (7), 404 → `UNIMPLEMENTED` (12), 413/429/431 → `RESOURCE_EXHAUSTED`
/// (8), 503 → `UNAVAILABLE` (14), other 4xx → `INVALID_ARGUMENT`... see [`GrpcCodeMap::code_for`].
#[derive(Debug, Clone, Default)]
pub struct GrpcCodeMap {
    overrides: Vec<(u16, u16)>,
}

impl GrpcCodeMap {
    /// Overrides the code for one HTTP status.
    pub fn set(mut self, status: StatusCode, code: u16) -> Self {
        self.overrides.retain(|(s, _)| *s != status.as_u16());
        self.overrides.push((status.as_u16(), code));
        self
    }

    /// The gRPC code for an HTTP status.
    pub fn code_for(&self, status: StatusCode) -> u16 {
        let s = status.as_u16();
        if let Some((_, c)) = self.overrides.iter().find(|(k, _)| *k == s) {
            return *c;
        }
        match s {
            400 | 405 | 411 | 414 | 415 | 422 => grpc_code::INVALID_ARGUMENT,
            401 => grpc_code::UNAUTHENTICATED,
            403 => grpc_code::PERMISSION_DENIED,
            404 => grpc_code::UNIMPLEMENTED,
            413 | 429 | 431 => grpc_code::RESOURCE_EXHAUSTED,
            502..=504 => grpc_code::UNAVAILABLE,
            500 => grpc_code::INTERNAL,
            _ => grpc_code::UNKNOWN,
        }
    }
}

/// The default renderer: RFC 9457 problem+json, or trailers-only gRPC for gRPC requests.
#[derive(Debug, Clone, Default)]
pub struct DefaultRenderer {
    grpc: GrpcCodeMap,
}

impl DefaultRenderer {
    /// A default renderer with a custom gRPC code mapping.
    pub fn with_grpc_codes(grpc: GrpcCodeMap) -> Self {
        Self { grpc }
    }
}

const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

impl DenialRenderer for DefaultRenderer {
    fn render(&self, denial: &Denial, request: &RequestHead<'_>) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let headers = res.headers_mut();
        denial.write_headers(headers);
        let grpc = request.is_grpc();
        if grpc {
            let code = denial
                .grpc_code()
                .unwrap_or_else(|| self.grpc.code_for(denial.status()));
            let message = denial.detail().unwrap_or_else(|| denial.title());
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(code),
            );
            let encoded: Cow<'_, str> = utf8_percent_encode(message, GRPC_MESSAGE).into();
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                headers.insert(HeaderName::from_static("grpc-message"), v);
            }
            return res;
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        *res.status_mut() = denial.status();
        *res.body_mut() =
            Bytes::from(serde_json::to_vec(&denial.problem_json()).unwrap_or_default());
        res
    }
}

/// A shared, cloneable denial renderer ([`DefaultRenderer`] unless replaced).
#[derive(Clone)]
pub struct Renderer(Arc<dyn DenialRenderer>);

impl Default for Renderer {
    fn default() -> Self {
        Self(Arc::new(DefaultRenderer::default()))
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Renderer(..)")
    }
}

impl Renderer {
    /// Wraps a custom renderer (any `Fn(&Denial, &RequestHead) -> Response<Bytes>`).
    pub fn new(renderer: impl DenialRenderer) -> Self {
        Self(Arc::new(renderer))
    }

    /// The default renderer with a custom gRPC code mapping.
    pub fn with_grpc_codes(map: GrpcCodeMap) -> Self {
        Self::new(DefaultRenderer::with_grpc_codes(map))
    }

    /// Renders the denial into a response with body type `B`, and attaches the denial to the
    /// response extensions.
    pub fn respond<Req, B: BodyFromBytes>(
        &self,
        denial: Denial,
        request: &Request<Req>,
    ) -> Response<B> {
        self.respond_head(denial, &RequestHead::of(request))
    }

    /// Like [`respond`](Self::respond), from a borrowed request head.
    pub fn respond_head<B: BodyFromBytes>(
        &self,
        denial: Denial,
        head: &RequestHead<'_>,
    ) -> Response<B> {
        let res = self.0.render(&denial, head);
        let (mut parts, body) = res.into_parts();
        parts.extensions.insert(denial);
        Response::from_parts(parts, B::from_bytes(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_req() -> Request<()> {
        Request::post("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap()
    }

    #[test]
    fn problem_json_has_rfc9457_members_and_headers() {
        let req = Request::get("/x?q=%3Cscript%3E").body(()).unwrap();
        let d = Denial::new(StatusCode::TOO_MANY_REQUESTS, "quota", "quota_exceeded")
            .with_type("https://iana.org/assignments/http-problem-types#quota-exceeded")
            .with_title("Request cannot be satisfied as assigned quota has been exceeded")
            .with_member("violated-policies", serde_json::json!(["monthly"]))
            .with_retry_after(Duration::from_millis(3_599_100))
            .with_rate_limit(
                RateLimitField::new("monthly", 6000)
                    .window_secs(2_592_000)
                    .reset_secs(3600),
            );
        let res: Response<Bytes> = Renderer::default().respond(d, &req);
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "3600");
        assert_eq!(
            res.headers()["ratelimit-policy"],
            r#""monthly";q=6000;w=2592000"#
        );
        assert_eq!(res.headers()["ratelimit"], r#""monthly";r=0;t=3600"#);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let v: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
                "title": "Request cannot be satisfied as assigned quota has been exceeded",
                "status": 429,
                "violated-policies": ["monthly"]
            })
        );
        assert!(!String::from_utf8_lossy(res.body()).contains("script"));
    }

    #[test]
    fn default_title_is_status_phrase() {
        let d = Denial::new(StatusCode::FORBIDDEN, "ip_filter", "ip_denied");
        assert_eq!(d.problem_json()["title"], "Forbidden");
        assert_eq!(d.problem_json()["type"], "about:blank");
    }

    #[test]
    fn grpc_requests_get_trailers_only_responses() {
        let cases = [(401, 16), (403, 7), (429, 8), (400, 3), (413, 8), (503, 14)];
        for (status, code) in cases {
            let d = Denial::new(StatusCode::from_u16(status).unwrap(), "t", "r")
                .with_detail("100% blocked\n");
            let res: Response<Bytes> = Renderer::default().respond(d, &grpc_req());
            assert_eq!(res.status(), 200, "status {status}");
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code.to_string().as_str());
            assert_eq!(res.headers()["grpc-message"], "100%25 blocked%0A");
            assert!(res.body().is_empty());
        }
    }

    #[test]
    fn grpc_mapping_is_configurable_and_denial_can_override() {
        let r = Renderer::with_grpc_codes(
            GrpcCodeMap::default().set(StatusCode::TOO_MANY_REQUESTS, 14),
        );
        let res: Response<Bytes> = r.respond(
            Denial::new(StatusCode::TOO_MANY_REQUESTS, "t", "r"),
            &grpc_req(),
        );
        assert_eq!(res.headers()["grpc-status"], "14");
        let res: Response<Bytes> = r.respond(
            Denial::new(StatusCode::TOO_MANY_REQUESTS, "t", "r").with_grpc_code(8),
            &grpc_req(),
        );
        assert_eq!(res.headers()["grpc-status"], "8");
    }

    #[test]
    fn grpc_web_content_type_is_grpc_but_json_is_not() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("app"));
        assert!(!is_grpc(&h));
    }
}
