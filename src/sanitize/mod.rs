//! Sanitize layer: normalize, limit and inspect every input; reject, clean or monitor
//! injections, per route and per field.
//!
//! What is inspected:
//! - the **path** (percent-decoded once, each segment, and the whole path when it contains
//!   `..` or a backslash), location `path`;
//! - **query** parameters (percent-decoded once, `+` as a space), location `query.<name>`;
//! - the configured **headers** (default `referer`, `user-agent`), location
//!   `header.<name>`, and **cookies**, location `cookie.<name>`;
//! - **bodies**: JSON (`application/json`, `application/*+json`; location a JSON pointer,
//!   `body./items/0/note`), `application/x-www-form-urlencoded` (`body.<name>`), `text/*`
//!   (`body`) and the fields of `multipart/form-data` (`body.<name>`; file contents are
//!   not inspected). These bodies are buffered up to [`Limits::max_body_bytes`] (`413`
//!   beyond, chunked bodies included: bytes are counted while collecting). Other content
//!   types, compressed bodies (a `content-encoding` other than `identity`) and gRPC pass
//!   through unbuffered and unscanned, or are refused with `415` ([`ContentPolicy`]).
//!
//! Invalid UTF-8 (overlong encodings included) in an inspected input is a `400`. JSON is
//! checked by a streaming, iterative pass (no recursion, no `serde_json::Value`) that
//! enforces nesting depth, keys per object, array length, string length and duplicate keys,
//! each a `400` naming the limit. Object keys starting with `$` (`$where`, `$ne`), and
//! query or form keys like `user[$ne]`, are NoSQL operator injection (`nosql`).
//!
//! Values are sent to the [`Detectors`] only when they contain a character that can matter
//! (anything but ASCII letters, digits, `_`, `-`, `@` and single dots).
//!
//! Actions ([`Action`]), per route and per field:
//! - `Reject` (default): `400` problem+json with `location` and `kind` members, never the
//!   value;
//! - `Sanitize`: string values of the selected JSON or form body fields are cleaned
//!   ([`SanitizeMode`]: escape, strip, or rich text through `ammonia`), the body is
//!   rewritten and `content-length` fixed. A finding that cleaning cannot fix (anything but
//!   `xss`, or outside a JSON/form body) is rejected;
//! - `Monitor`: the request goes through; findings are put into the request extensions
//!   ([`Findings`]) and recorded into [`RequestFacts`](crate::RequestFacts) for audit.
//!
//! Structure limits and encoding errors are enforced whatever the action.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_shield::sanitize::{FieldRule, RoutePolicy, SanitizeLayer, SanitizeMode};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = SanitizeLayer::builder()
//!     .route(
//!         "POST /reviews",
//!         RoutePolicy::new().field(FieldRule::new("body.text").unwrap().sanitize(SanitizeMode::Escape)),
//!     )
//!     .unwrap()
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<Full<Bytes>>| async move {
//!     let body = req.into_body().collect().await.unwrap().to_bytes();
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
//! });
//!
//! // a NoSQL operator in a JSON key is refused
//! let req = Request::post("/login")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"user":"admin","password":{"$ne":""}}"#)))
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 400);
//!
//! // the review text is escaped before the handler sees it
//! let req = Request::post("/reviews")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"text":"<b>great</b>"}"#)))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, r#"{"text":"&lt;b&gt;great&lt;/b&gt;"}"#);
//! # }
//! ```
//!
//! # Deployment caveats
//! - A body without a content type, or with one not listed above, is not inspected (unless
//!   refused by [`ContentPolicy::Refuse`]): make sure the application parses bodies only
//!   with the content type it announces (axum's `Json` and `Form` extractors do).
//! - Findings are only as good as the [`Detectors`]; structure limits and NoSQL operator
//!   keys are checked here.

pub mod config;
pub mod detect;
mod inputs;
mod json;
mod policy;
mod verdicts;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HeaderName, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::BodyFromBytes;
use crate::denial::{Denial, Renderer, RequestHead, is_grpc_content_type};
use crate::error::ConfigError;
use crate::facts::{self, InputFinding};
use crate::future::ShieldFuture;
use crate::route::RouteSet;

pub use config::SanitizeConfig;
pub use detect::{Detectors, Finding, Kind};
pub use policy::{
    Action, ContentPolicy, Field, FieldRule, Limits, RoutePolicy, SanitizeMode, parse_kind,
};

use detect::classes;
use inputs::{candidate, candidate_classified, push_segment};
use json::{JsonPath, JsonVisitor};
use policy::{Exempt, FieldName, Source};

/// The findings of a request that went through (monitor mode, or cleaned by sanitize), in
/// the request extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings(pub Vec<InputFinding>);

const MAX_FINDINGS: usize = 64;

#[derive(Debug)]
struct Shared {
    detectors: Detectors,
    default: RoutePolicy,
    routes: Option<RouteSet<usize>>,
    policies: Vec<RoutePolicy>,
    global_fields: Vec<FieldRule>,
    headers: Vec<HeaderName>,
    cookies: bool,
    limits: Limits,
    other: ContentPolicy,
    grpc: ContentPolicy,
}

/// Builder for [`SanitizeLayer`].
#[derive(Debug, Clone)]
pub struct SanitizeBuilder {
    detectors: Detectors,
    action: Action,
    mode: SanitizeMode,
    exempt: Exempt,
    routes: Vec<(String, RoutePolicy)>,
    global_fields: Vec<FieldRule>,
    headers: Vec<String>,
    cookies: bool,
    limits: Limits,
    other: ContentPolicy,
    grpc: ContentPolicy,
    renderer: Renderer,
}

impl Default for SanitizeBuilder {
    fn default() -> Self {
        Self {
            detectors: Detectors::default(),
            action: Action::Reject,
            mode: SanitizeMode::Escape,
            exempt: Exempt::default(),
            routes: Vec::new(),
            global_fields: Vec::new(),
            headers: vec!["referer".into(), "user-agent".into()],
            cookies: true,
            limits: Limits::default(),
            other: ContentPolicy::Pass,
            grpc: ContentPolicy::Pass,
            renderer: Renderer::default(),
        }
    }
}

impl SanitizeBuilder {
    /// The detector set (default: all classes).
    pub fn detectors(mut self, detectors: Detectors) -> Self {
        self.detectors = detectors;
        self
    }
    /// The default action (default [`Action::Reject`]).
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }
    /// The default cleaning mode for routes under [`Action::Sanitize`].
    pub fn sanitize_mode(mut self, mode: SanitizeMode) -> Self {
        self.mode = mode;
        self
    }
    /// Exempts a class everywhere.
    pub fn exempt(mut self, kind: Kind) -> Self {
        self.exempt.add(kind);
        self
    }
    /// A policy for one route (`"POST /reports"`, `"/admin/*"`). Unmatched requests use the
    /// layer's defaults.
    pub fn route(mut self, pattern: &str, policy: RoutePolicy) -> Result<Self, ConfigError> {
        crate::route::RoutePattern::parse(
            pattern,
            &format!("sanitize.routes[{}]", self.routes.len()),
        )?;
        self.routes.push((pattern.to_owned(), policy));
        Ok(self)
    }
    /// A field rule for every route (route rules are looked at first).
    pub fn field(mut self, rule: FieldRule) -> Self {
        self.global_fields.push(rule);
        self
    }
    /// The headers to inspect (replaces the default `referer`, `user-agent`).
    pub fn headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.headers = names.into_iter().map(Into::into).collect();
        self
    }
    /// Whether cookies are inspected (default true).
    pub fn inspect_cookies(mut self, yes: bool) -> Self {
        self.cookies = yes;
        self
    }
    /// Structure limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// What to do with bodies of other content types (default: pass unscanned).
    pub fn other_content_types(mut self, policy: ContentPolicy) -> Self {
        self.other = policy;
        self
    }
    /// What to do with gRPC requests' bodies (default: pass unscanned).
    pub fn grpc(mut self, policy: ContentPolicy) -> Self {
        self.grpc = policy;
        self
    }
    /// The denial renderer.
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Builds the layer. Fails on invalid header names, invalid limits, or invalid or
    /// conflicting route patterns.
    pub fn build(self) -> Result<SanitizeLayer, ConfigError> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, h) in self.headers.iter().enumerate() {
            headers.push(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid(format!("sanitize.headers[{i}]"), "invalid header name")
            })?);
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_body_bytes", l.max_body_bytes),
            ("max_depth", l.max_depth),
            ("max_keys", l.max_keys),
            ("max_array_len", l.max_array_len),
            ("max_string_len", l.max_string_len),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    format!("sanitize.limits.{name}"),
                    "must be at least 1",
                ));
            }
        }
        if l.max_body_bytes > u32::MAX as usize {
            return Err(ConfigError::invalid(
                "sanitize.limits.max_body_bytes",
                "must be below 4 GiB",
            ));
        }
        let default = RoutePolicy {
            action: Some(self.action),
            mode: self.mode,
            exempt: self.exempt,
            fields: Vec::new(),
        };
        let mut policies = Vec::with_capacity(self.routes.len());
        let routes = if self.routes.is_empty() {
            None
        } else {
            let mut b = RouteSet::builder().key("sanitize.routes");
            for (i, (pattern, mut p)) in self.routes.into_iter().enumerate() {
                b = b.route(&pattern, i)?;
                if p.action.is_none() {
                    p.action = Some(self.action);
                    p.mode = self.mode;
                }
                p.exempt = p.exempt.union(self.exempt);
                policies.push(p);
            }
            Some(b.try_build()?)
        };
        Ok(SanitizeLayer {
            shared: Arc::new(Shared {
                detectors: self.detectors,
                default,
                routes,
                policies,
                global_fields: self.global_fields,
                headers,
                cookies: self.cookies,
                limits: self.limits,
                other: self.other,
                grpc: self.grpc,
            }),
            renderer: self.renderer,
        })
    }
}

/// Layer that inspects inputs. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SanitizeLayer {
    shared: Arc<Shared>,
    renderer: Renderer,
}

impl SanitizeLayer {
    /// Starts a builder.
    pub fn builder() -> SanitizeBuilder {
        SanitizeBuilder::default()
    }

    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// The structure limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
}

impl<S> Layer<S> for SanitizeLayer {
    type Service = Sanitize<S>;
    fn layer(&self, inner: S) -> Sanitize<S> {
        Sanitize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The sanitize service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Sanitize<S> {
    inner: S,
    layer: SanitizeLayer,
}

impl<S> Sanitize<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: SanitizeLayer) -> Self {
        Self { inner, layer }
    }
}

// ---------------------------------------------------------------------------------------
// Locations and decisions

/// Where a value was found.
#[derive(Clone, Copy)]
enum Loc<'a> {
    Path,
    Query(&'a str),
    Header(&'a str),
    Cookie(&'a str),
    /// The whole body (text).
    Body,
    /// A form or multipart field.
    BodyField(&'a str),
    Json(JsonPath<'a>),
}

impl Loc<'_> {
    fn source(&self) -> Source {
        match self {
            Loc::Path => Source::Path,
            Loc::Query(_) => Source::Query,
            Loc::Header(_) => Source::Header,
            Loc::Cookie(_) => Source::Cookie,
            Loc::Body | Loc::BodyField(_) | Loc::Json(_) => Source::Body,
        }
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(32);
        let (prefix, name) = match self {
            Loc::Path => return "path".into(),
            Loc::Body => return "body".into(),
            Loc::Query(n) => ("query.", *n),
            Loc::Header(n) => ("header.", *n),
            Loc::Cookie(n) => ("cookie.", *n),
            Loc::BodyField(n) => ("body.", *n),
            Loc::Json(p) => {
                out.push_str("body.");
                p.render(&mut out, push_segment);
                if out.len() == 5 {
                    out.push('/');
                }
                return out;
            }
        };
        out.push_str(prefix);
        push_segment(name, &mut out);
        out
    }
}

impl FieldRule {
    fn matches(&self, loc: &Loc<'_>) -> bool {
        if self.field.source != loc.source() {
            return false;
        }
        match (&self.field.name, loc) {
            (FieldName::Any, _) => true,
            (FieldName::Name(n), Loc::Query(k) | Loc::Header(k) | Loc::Cookie(k)) => n == k,
            (FieldName::Name(n), Loc::BodyField(k)) => n == k,
            (FieldName::Name(n), Loc::Json(p)) => p.has_name(n),
            (FieldName::Pointer(p), Loc::BodyField(k)) => p.len() == 1 && p[0] == *k,
            (FieldName::Pointer(p), Loc::Json(j)) => j.matches(p),
            _ => false,
        }
    }
}

/// The per-request inspection state.
struct Inspector<'a> {
    shared: &'a Shared,
    policy: &'a RoutePolicy,
    /// Whether any rule of this request can clean or exempt (else rule lookup is skipped
    /// for values without findings).
    has_rules: bool,
    findings: Vec<InputFinding>,
}

fn finding_denial(loc: &str, kind: Kind) -> Deny {
    Box::new(
        Denial::new(StatusCode::BAD_REQUEST, "sanitize", "injection_detected")
            .with_detail(format!(
                "The input at {loc} was rejected: it looks like {} injection.",
                kind_label(kind)
            ))
            .with_member("location", Value::from(loc))
            .with_member("kind", Value::from(kind.as_str())),
    )
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Sqli => "SQL",
        Kind::Xss => "cross-site scripting (HTML/script)",
        Kind::Cmdi => "OS command",
        Kind::Traversal => "path traversal",
        Kind::Nosql => "NoSQL operator",
        Kind::Crlf => "CRLF/header",
        Kind::Template => "template/JNDI",
    }
}

fn limit_denial(status: StatusCode, reason: &'static str, limit: &'static str, max: usize) -> Deny {
    Box::new(
        Denial::new(status, "sanitize", reason)
            .with_detail(format!("The request exceeds the limit {limit} = {max}."))
            .with_member("limit", Value::from(limit))
            .with_member("max", Value::from(max)),
    )
}

fn bad_request(reason: &'static str, detail: &'static str) -> Deny {
    Box::new(Denial::new(StatusCode::BAD_REQUEST, "sanitize", reason).with_detail(detail))
}

fn invalid_encoding(loc: &str) -> Deny {
    Box::new(
        Denial::new(StatusCode::BAD_REQUEST, "sanitize", "invalid_encoding")
            .with_detail(format!("The input at {loc} is not valid UTF-8."))
            .with_member("location", Value::from(loc)),
    )
}

impl<'a> Inspector<'a> {
    fn new(shared: &'a Shared, route: Option<usize>) -> Self {
        let policy = route.map_or(&shared.default, |i| &shared.policies[i]);
        let has_rules = !policy.fields.is_empty()
            || !shared.global_fields.is_empty()
            || policy.action == Some(Action::Sanitize);
        Self {
            shared,
            policy,
            has_rules,
            findings: Vec::new(),
        }
    }

    fn rule(&self, loc: &Loc<'_>) -> Option<&'a FieldRule> {
        self.policy
            .fields
            .iter()
            .chain(&self.shared.global_fields)
            .find(|r| r.matches(loc))
    }

    fn record(&mut self, loc: &str, f: Finding, action: Action) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(InputFinding {
                location: loc.to_owned(),
                kind: f.kind.as_str(),
                rule: f.rule,
                action: action.as_str(),
            });
        }
    }

    /// Inspects one value. `Ok(Some(clean))` asks for the value to be replaced (only when
    /// `can_clean`).
    fn check(
        &mut self,
        loc: Loc<'_>,
        value: &str,
        is_key: bool,
        can_clean: bool,
    ) -> Result<Option<String>, Deny> {
        self.check_classified(loc, value, classes(value.as_bytes()), is_key, can_clean)
    }

    /// [`check`](Self::check) of a value whose byte classes are known (`mask`:
    /// `classes(value)`, computed by the JSON scan).
    fn check_classified(
        &mut self,
        loc: Loc<'_>,
        value: &str,
        mask: u32,
        is_key: bool,
        can_clean: bool,
    ) -> Result<Option<String>, Deny> {
        let d = &self.shared.detectors;
        let operator = is_key
            && match loc {
                Loc::Json(_) => value.starts_with('$'),
                Loc::Cookie(_) => false,
                _ => inputs::is_operator_key(value),
            };
        let finding = if operator {
            d.is_enabled(Kind::Nosql).then_some(Finding {
                kind: Kind::Nosql,
                rule: "nosql.operator_key",
            })
        } else if candidate_classified(value, mask) {
            d.inspect_known(value, mask)
        } else {
            None
        };
        self.decide(loc, value, finding, is_key, can_clean)
    }

    /// A header value: the detectors' verdict comes from the per-thread memo of clean
    /// values when this value was seen clean by the same detector set (see `verdicts`).
    fn check_header(&mut self, loc: Loc<'_>, value: &str) -> Result<(), Deny> {
        if !candidate(value) {
            return Ok(());
        }
        let d = &self.shared.detectors;
        let set = d.bits();
        if verdicts::is_clean(value, set) {
            return Ok(());
        }
        let finding = d.inspect(value);
        if finding.is_none() {
            verdicts::remember_clean(value, set);
        }
        self.decide(loc, value, finding, false, false).map(|_| ())
    }

    /// Applies the policy to what the detectors found in one value.
    fn decide(
        &mut self,
        loc: Loc<'_>,
        value: &str,
        finding: Option<Finding>,
        is_key: bool,
        can_clean: bool,
    ) -> Result<Option<String>, Deny> {
        if finding.is_none() && !(self.has_rules && can_clean && !is_key) {
            return Ok(None);
        }
        let rule = if self.has_rules {
            self.rule(&loc)
        } else {
            None
        };
        let exempt = rule.map_or(self.policy.exempt, |r| r.exempt.union(self.policy.exempt));
        let (action, mode) = match rule.and_then(|r| r.action.map(|a| (a, r.mode))) {
            Some(am) => am,
            None => (self.policy.action.unwrap_or_default(), self.policy.mode),
        };
        let finding = finding.filter(|f| !exempt.contains(f.kind));
        let cleanable = can_clean && !is_key && action == Action::Sanitize && !exempt.is_all();
        match finding {
            None if cleanable => Ok(inputs::clean(value, mode)),
            None => Ok(None),
            Some(f) if action == Action::Monitor => {
                let l = loc.render();
                self.record(&l, f, Action::Monitor);
                Ok(None)
            }
            Some(f) => {
                let cleaned = if cleanable && f.kind == Kind::Xss {
                    inputs::clean(value, mode)
                } else {
                    None
                };
                let l = loc.render();
                match cleaned {
                    Some(c) => {
                        self.record(&l, f, Action::Sanitize);
                        Ok(Some(c))
                    }
                    None => {
                        self.record(&l, f, Action::Reject);
                        Err(finding_denial(&l, f.kind))
                    }
                }
            }
        }
    }

    fn check_len(&self, value: &str) -> Result<(), Deny> {
        if value.len() > self.shared.limits.max_string_len {
            return Err(limit_denial(
                StatusCode::BAD_REQUEST,
                "string_too_long",
                "max_string_len",
                self.shared.limits.max_string_len,
            ));
        }
        Ok(())
    }

    /// Path, query, headers, cookies.
    fn inspect_head(&mut self, parts: &http::request::Parts) -> Result<(), Deny> {
        let path = parts.uri.path();
        self.check_len(path)?;
        let decoded = inputs::decode(path, false).ok_or_else(|| invalid_encoding("path"))?;
        if decoded.contains("..") || decoded.contains('\\') {
            self.check(Loc::Path, &decoded, false, false)?;
        }
        for seg in path.split('/') {
            if candidate(seg) {
                let seg = inputs::decode(seg, false).ok_or_else(|| invalid_encoding("path"))?;
                self.check(Loc::Path, &seg, false, false)?;
            }
        }
        if let Some(q) = parts.uri.query() {
            self.inspect_pairs(q, false)?;
        }
        let shared = self.shared;
        for name in &shared.headers {
            each_value(&parts.headers, name, |v| {
                let s = std::str::from_utf8(v.as_bytes())
                    .map_err(|_| invalid_encoding(&format!("header.{name}")))?;
                self.check_len(s)?;
                self.check_header(Loc::Header(name.as_str()), s)
            })?;
        }
        if shared.cookies {
            each_value(&parts.headers, &COOKIE, |v| {
                let s = std::str::from_utf8(v.as_bytes())
                    .map_err(|_| invalid_encoding("header.cookie"))?;
                self.check_len(s)?;
                for (name, value) in inputs::cookies(s) {
                    self.check(Loc::Cookie(name), name, true, false)?;
                    self.check(Loc::Cookie(name), value, false, false)?;
                }
                Ok::<(), Deny>(())
            })?;
        }
        Ok(())
    }

    /// Query string or form body pairs. Returns the rewritten form when a value was cleaned.
    fn inspect_pairs(&mut self, s: &str, body: bool) -> Result<Option<String>, Deny> {
        let mut cleaned: Vec<(usize, String)> = Vec::new();
        let where_ = if body { "body" } else { "query" };
        for (i, (raw_k, raw_v)) in inputs::pairs(s).enumerate() {
            if i >= self.shared.limits.max_keys {
                return Err(limit_denial(
                    StatusCode::BAD_REQUEST,
                    "too_many_fields",
                    "max_keys",
                    self.shared.limits.max_keys,
                ));
            }
            let k = inputs::decode(raw_k, true).ok_or_else(|| invalid_encoding(where_))?;
            let v = inputs::decode(raw_v, true).ok_or_else(|| invalid_encoding(where_))?;
            self.check_len(&v)?;
            let loc = if body {
                Loc::BodyField(&k)
            } else {
                Loc::Query(&k)
            };
            self.check(loc, &k, true, false)?;
            if let Some(c) = self.check(loc, &v, false, body)? {
                cleaned.push((i, c));
            }
        }
        if cleaned.is_empty() {
            return Ok(None);
        }
        let mut out = String::with_capacity(s.len() + 64);
        let mut next = cleaned.iter().peekable();
        for (i, (raw_k, raw_v)) in inputs::pairs(s).enumerate() {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(raw_k);
            out.push('=');
            match next.next_if(|(j, _)| *j == i) {
                Some((_, c)) => inputs::form_encode(c, &mut out),
                None => out.push_str(raw_v),
            }
        }
        Ok(Some(out))
    }

    /// Inspects a buffered body. Returns the rewritten body when values were cleaned.
    fn inspect_body(&mut self, kind: &BodyKind, bytes: &[u8]) -> Result<Option<Bytes>, Deny> {
        if let BodyKind::Multipart(boundary) = kind {
            let parts = inputs::multipart(bytes, boundary, self.shared.limits.max_keys)
                .ok_or_else(|| bad_request("malformed_body", "The multipart body is malformed."))?;
            if parts.len() > self.shared.limits.max_keys {
                return Err(limit_denial(
                    StatusCode::BAD_REQUEST,
                    "too_many_fields",
                    "max_keys",
                    self.shared.limits.max_keys,
                ));
            }
            for p in parts {
                self.check(Loc::BodyField(&p.name), &p.name, true, false)?;
                if p.skip {
                    continue;
                }
                let v =
                    std::str::from_utf8(&bytes[p.value]).map_err(|_| invalid_encoding("body"))?;
                self.check_len(v)?;
                self.check(Loc::BodyField(&p.name), v, false, false)?;
            }
            return Ok(None);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_encoding("body"))?;
        match kind {
            BodyKind::Json => {
                let limits = self.shared.limits;
                let mut v = JsonInspector { ins: self };
                match json::scan(text, &limits, &mut v) {
                    Ok(edits) if edits.is_empty() => Ok(None),
                    Ok(edits) => Ok(Some(Bytes::from(json::apply(text, &edits)))),
                    Err(json::ScanError::Stop(d)) => Err(d),
                    Err(json::ScanError::Json(e)) => Err(json_denial(e, &limits)),
                }
            }
            BodyKind::Form => Ok(self.inspect_pairs(text, true)?.map(Bytes::from)),
            _ => {
                self.check(Loc::Body, text, false, false)?;
                Ok(None)
            }
        }
    }
}

fn json_denial(e: json::JsonError, l: &Limits) -> Deny {
    use json::JsonError::*;
    let bad = StatusCode::BAD_REQUEST;
    match e {
        Syntax => bad_request("malformed_json", "The JSON body is not valid JSON."),
        InvalidEscape => bad_request(
            "invalid_encoding",
            "The JSON body contains an invalid escape or unpaired surrogate.",
        ),
        Depth => limit_denial(bad, "json_too_deep", "max_depth", l.max_depth),
        Keys => limit_denial(bad, "json_too_many_keys", "max_keys", l.max_keys),
        ArrayLen => limit_denial(bad, "json_array_too_long", "max_array_len", l.max_array_len),
        StringLen => limit_denial(bad, "string_too_long", "max_string_len", l.max_string_len),
        DuplicateKey => Box::new(
            Denial::new(bad, "sanitize", "json_duplicate_key")
                .with_detail(
                    "The JSON body has an object with a duplicate key (limit reject_duplicate_keys).",
                )
                .with_member("limit", Value::from("reject_duplicate_keys")),
        ),
    }
}

struct JsonInspector<'i, 'a> {
    ins: &'i mut Inspector<'a>,
}

impl JsonVisitor for JsonInspector<'_, '_> {
    type Stop = Deny;
    fn visit(
        &mut self,
        path: JsonPath<'_>,
        value: &str,
        mask: u32,
        is_key: bool,
    ) -> Result<Option<String>, Deny> {
        let cleaned = self
            .ins
            .check_classified(Loc::Json(path), value, mask, is_key, true)?;
        Ok(cleaned.map(|c| serde_json::to_string(&c).unwrap_or_else(|_| "\"\"".into())))
    }

    /// Without field rules, a string the pre-filter passes has nothing to check (and a key
    /// starting with `$`, a NoSQL operator, is never plain).
    #[inline]
    fn skip(&self, value: &[u8], mask: u32) -> bool {
        !self.ins.has_rules && !inputs::candidate_bytes(value, mask)
    }
}

// ---------------------------------------------------------------------------------------
// Bodies

enum BodyKind {
    Json,
    Form,
    Text,
    Multipart(String),
}

enum BodyPlan {
    /// Nothing to inspect (no body, or passed through).
    Pass,
    Inspect(BodyKind),
    Refuse,
}

/// Maps with at most this many values are read in one pass instead of hashed lookups.
const SMALL_HEADERS: usize = 8;

/// Calls `f` with each value of the header `name`, in order (as `get_all`; a small map is
/// walked instead of hashing the name).
#[inline]
fn each_value<E>(
    h: &HeaderMap,
    name: &HeaderName,
    mut f: impl FnMut(&HeaderValue) -> Result<(), E>,
) -> Result<(), E> {
    if h.len() <= SMALL_HEADERS {
        for (n, v) in h {
            if n == name {
                f(v)?;
            }
        }
    } else {
        for v in h.get_all(name) {
            f(v)?;
        }
    }
    Ok(())
}

/// The headers that decide how a body is handled (each the first value, as `get`).
#[derive(Default)]
struct BodyHeaders<'h> {
    content_type: Option<&'h HeaderValue>,
    content_encoding: Option<&'h HeaderValue>,
    content_length: Option<&'h HeaderValue>,
}

impl<'h> BodyHeaders<'h> {
    fn of(h: &'h HeaderMap) -> Self {
        if h.len() > SMALL_HEADERS {
            return BodyHeaders {
                content_type: h.get(CONTENT_TYPE),
                content_encoding: h.get(CONTENT_ENCODING),
                content_length: h.get(CONTENT_LENGTH),
            };
        }
        let mut out = BodyHeaders::default();
        for (name, v) in h {
            let slot = if name == CONTENT_TYPE {
                &mut out.content_type
            } else if name == CONTENT_ENCODING {
                &mut out.content_encoding
            } else if name == CONTENT_LENGTH {
                &mut out.content_length
            } else {
                continue;
            };
            slot.get_or_insert(v);
        }
        out
    }

    /// `content-type: application/grpc*`.
    fn is_grpc(&self) -> bool {
        self.content_type.is_some_and(is_grpc_content_type)
    }
}

fn plan(head: &BodyHeaders<'_>, shared: &Shared, empty: bool) -> Result<BodyPlan, Deny> {
    if head.is_grpc() {
        return Ok(match shared.grpc {
            ContentPolicy::Pass => BodyPlan::Pass,
            ContentPolicy::Refuse => BodyPlan::Refuse,
        });
    }
    if empty {
        return Ok(BodyPlan::Pass);
    }
    let encoded = head
        .content_encoding
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let Some(ct) = head.content_type.filter(|_| !encoded) else {
        return Ok(match shared.other {
            ContentPolicy::Pass => BodyPlan::Pass,
            ContentPolicy::Refuse => BodyPlan::Refuse,
        });
    };
    let ct =
        std::str::from_utf8(ct.as_bytes()).map_err(|_| invalid_encoding("header.content-type"))?;
    // compared without allocating: ASCII case-insensitive on the essence (before `;`)
    let essence = ct.split(';').next().unwrap_or("").trim().as_bytes();
    let is = |x: &str| essence.eq_ignore_ascii_case(x.as_bytes());
    let starts =
        |p: &str| essence.len() >= p.len() && essence[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    let ends = |p: &str| {
        essence.len() >= p.len()
            && essence[essence.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
    };
    let kind = if is("application/json") || (starts("application/") && ends("+json")) {
        BodyKind::Json
    } else if is("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if starts("text/") {
        BodyKind::Text
    } else if is("multipart/form-data") {
        BodyKind::Multipart(inputs::boundary(ct).ok_or_else(|| {
            bad_request(
                "malformed_body",
                "The multipart content type has no boundary.",
            )
        })?)
    } else {
        return Ok(match shared.other {
            ContentPolicy::Pass => BodyPlan::Pass,
            ContentPolicy::Refuse => BodyPlan::Refuse,
        });
    };
    Ok(BodyPlan::Inspect(kind))
}

fn unsupported() -> Deny {
    Box::new(
        Denial::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sanitize",
            "unsupported_media_type",
        )
        .with_detail("This content type is not accepted."),
    )
}

fn too_large(max: usize) -> Deny {
    limit_denial(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "max_body_bytes",
        max,
    )
}

fn publish(ext: &mut http::Extensions, findings: Vec<InputFinding>) {
    if findings.is_empty() {
        return;
    }
    for f in &findings {
        facts::record_finding(ext, f.clone());
    }
    ext.insert(Findings(findings));
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A denial, boxed: it travels through `Result`s on the inspection path.
type Deny = Box<Denial>;
type BoxFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`Sanitize`].
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind2<F, B, E>,
    }
}

pin_project! {
    #[project = Kind2Proj]
    enum Kind2<F, B, E> {
        Direct { #[pin] fut: ShieldFuture<F, B> },
        Buffered { fut: BoxFuture<B, E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Kind2Proj::Direct { fut } => fut.poll(cx),
            Kind2Proj::Buffered { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Sanitize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + BodyFromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: BodyFromBytes + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let direct = |fut| ResponseFuture {
            kind: Kind2::Direct { fut },
        };
        let shared = &*self.layer.shared;
        let route = shared
            .routes
            .as_ref()
            .and_then(|r| r.at(req.method(), req.uri().path()).map(|m| *m.value));
        let (mut parts, body) = req.into_parts();
        let mut ins = Inspector::new(shared, route);
        let deny = |d: Deny, parts: &Parts, findings: &[InputFinding], renderer: &Renderer| {
            for f in findings {
                facts::record_finding(&parts.extensions, f.clone());
            }
            tracing::debug!(reason = d.reason(), "sanitize denied request");
            direct(ShieldFuture::denied(renderer.respond_head(
                *d,
                &RequestHead {
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                },
            )))
        };
        if let Err(d) = ins.inspect_head(&parts) {
            return deny(d, &parts, &ins.findings, &self.layer.renderer);
        }
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let head = BodyHeaders::of(&parts.headers);
        let declared = head
            .content_length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let kind = match plan(&head, shared, empty) {
            Ok(BodyPlan::Pass) => {
                publish(&mut parts.extensions, std::mem::take(&mut ins.findings));
                let req = Request::from_parts(parts, body);
                return direct(ShieldFuture::inner(self.inner.call(req)));
            }
            Ok(BodyPlan::Refuse) => {
                return deny(unsupported(), &parts, &ins.findings, &self.layer.renderer);
            }
            Ok(BodyPlan::Inspect(k)) => k,
            Err(d) => return deny(d, &parts, &ins.findings, &self.layer.renderer),
        };
        let max = shared.limits.max_body_bytes;
        if declared.is_some_and(|n| n > max as u64) || body.size_hint().lower() > max as u64 {
            return deny(too_large(max), &parts, &ins.findings, &self.layer.renderer);
        }
        let findings = std::mem::take(&mut ins.findings);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let fut = async move {
            let shared = &*layer.shared;
            let collected = Limited::new(body, max).collect().await;
            let render = |d: Deny, parts: &Parts, findings: &[InputFinding]| {
                for f in findings {
                    facts::record_finding(&parts.extensions, f.clone());
                }
                tracing::debug!(reason = d.reason(), "sanitize denied request");
                layer.renderer.respond_head(
                    *d,
                    &RequestHead {
                        method: &parts.method,
                        uri: &parts.uri,
                        headers: &parts.headers,
                    },
                )
            };
            let bytes = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    let d = if e.downcast_ref::<LengthLimitError>().is_some() {
                        too_large(max)
                    } else {
                        bad_request("body_unreadable", "The request body could not be read.")
                    };
                    return Ok(render(d, &parts, &findings));
                }
            };
            let mut ins = Inspector::new(shared, route);
            ins.findings = findings;
            let bytes = match ins.inspect_body(&kind, &bytes) {
                Ok(None) => bytes,
                Ok(Some(new)) => {
                    parts
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
                    parts.headers.remove(TRANSFER_ENCODING);
                    new
                }
                Err(d) => return Ok(render(d, &parts, &ins.findings)),
            };
            publish(&mut parts.extensions, ins.findings);
            let req = Request::from_parts(parts, ReqBody::from_bytes(bytes));
            inner.call(req).await
        };
        ResponseFuture {
            kind: Kind2::Buffered { fut: Box::pin(fut) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// What the inner service received: headers, body, findings.
    type Received = (http::HeaderMap, Bytes, Option<Findings>);

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Option<Received>>>);

    async fn run(
        layer: &SanitizeLayer,
        req: Request<Full<Bytes>>,
    ) -> (Response<Full<Bytes>>, Seen) {
        let seen = Seen::default();
        let s2 = seen.clone();
        let svc = layer
            .clone()
            .layer(tower::service_fn(move |req: Request<Full<Bytes>>| {
                let s = s2.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect().await.unwrap().to_bytes();
                    *s.0.lock().unwrap() = Some((
                        parts.headers,
                        bytes,
                        parts.extensions.get::<Findings>().cloned(),
                    ));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            }));
        (svc.oneshot(req).await.unwrap(), seen)
    }

    fn post(uri: &str, ct: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        Request::post(uri)
            .header("content-type", ct)
            .body(Full::new(body.into()))
            .unwrap()
    }

    async fn problem(res: Response<Full<Bytes>>) -> Value {
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let b = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    fn layer() -> SanitizeLayer {
        SanitizeLayer::builder().build().unwrap()
    }

    #[tokio::test]
    async fn nosql_operator_keys_are_rejected_with_their_location() {
        let l = layer();
        let (res, seen) = run(
            &l,
            post(
                "/login",
                "application/json",
                r#"{"user":"bob","password":{"$ne":"x1"}}"#,
            ),
        )
        .await;
        assert_eq!(res.status(), 400);
        assert_eq!(
            res.extensions().get::<Denial>().unwrap().reason(),
            "injection_detected"
        );
        let p = problem(res).await;
        assert_eq!(p["location"], "body./password/$ne");
        assert_eq!(p["kind"], "nosql");
        assert!(!p.to_string().contains("x1"));
        assert!(
            seen.0.lock().unwrap().is_none(),
            "inner service must not run"
        );

        let (res, _) = run(
            &l,
            Request::get("/u?user%5B%24ne%5D=1")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(problem(res).await["location"], "query.user[$ne]");
        let (res, _) = run(
            &l,
            post(
                "/login",
                "application/x-www-form-urlencoded",
                "user=bob&password[$gt]=",
            ),
        )
        .await;
        assert_eq!(problem(res).await["location"], "body.password[$gt]");
    }

    #[tokio::test]
    async fn structure_limits_each_name_the_limit() {
        let l = SanitizeLayer::builder()
            .limits(Limits {
                max_body_bytes: 4096,
                max_keys: 3,
                max_array_len: 3,
                max_string_len: 10,
                ..Limits::default()
            })
            .build()
            .unwrap();
        let cases = [
            ("[".repeat(2000), 400, "json_too_deep", "max_depth"),
            (
                r#"{"a":1,"b":2,"c":3,"d":4}"#.into(),
                400,
                "json_too_many_keys",
                "max_keys",
            ),
            (
                "[1,2,3,4]".into(),
                400,
                "json_array_too_long",
                "max_array_len",
            ),
            (
                r#"{"a":"0123456789x"}"#.into(),
                400,
                "string_too_long",
                "max_string_len",
            ),
            (
                r#"{"a":1,"a":2}"#.into(),
                400,
                "json_duplicate_key",
                "reject_duplicate_keys",
            ),
            (
                format!("[\"{}\"]", "a".repeat(5000)),
                413,
                "body_too_large",
                "max_body_bytes",
            ),
        ];
        for (body, status, reason, limit) in cases {
            let (res, seen) = run(&l, post("/x", "application/json", body)).await;
            assert_eq!(res.status(), status, "{reason}");
            assert_eq!(res.extensions().get::<Denial>().unwrap().reason(), reason);
            let p = problem(res).await;
            assert_eq!(p["limit"], limit);
            assert!(p["detail"].as_str().unwrap().contains(limit));
            assert!(seen.0.lock().unwrap().is_none());
        }
        let (res, _) = run(&l, post("/x", "application/json", "{\"a\":")).await;
        assert_eq!(
            res.extensions().get::<Denial>().unwrap().reason(),
            "malformed_json"
        );
    }

    #[tokio::test]
    async fn invalid_utf8_anywhere_inspected_is_400() {
        let l = layer();
        for req in [
            post("/x", "application/json", &b"{\"a\":\"\xc0\xaf\"}"[..]),
            post("/x", "text/plain", &b"\xff\xfe"[..]),
            post("/x", "application/x-www-form-urlencoded", "a=%c0%af"),
            post("/x", "application/json", r#"{"a":"\ud800"}"#),
            Request::get("/x?q=%ff").body(Full::default()).unwrap(),
            Request::get("/a%c0%af").body(Full::default()).unwrap(),
            Request::get("/")
                .header("user-agent", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                .body(Full::default())
                .unwrap(),
        ] {
            let (res, _) = run(&l, req).await;
            assert_eq!(res.status(), 400);
            assert_eq!(
                res.extensions().get::<Denial>().unwrap().reason(),
                "invalid_encoding"
            );
        }
    }

    #[tokio::test]
    async fn sanitize_rewrites_selected_fields_and_content_length() {
        let l = SanitizeLayer::builder()
            .route(
                "POST /products/{id}/reviews",
                RoutePolicy::new()
                    .field(
                        FieldRule::new("body.review")
                            .unwrap()
                            .sanitize(SanitizeMode::Rich),
                    )
                    .field(
                        FieldRule::new("body./meta/title")
                            .unwrap()
                            .sanitize(SanitizeMode::Escape),
                    ),
            )
            .unwrap()
            .build()
            .unwrap();
        let body = r#"{"review":"<b>good</b><script>alert(1)</script>","meta":{"title":"a<b"},"name":"O'Brien <x>"}"#;
        let (res, seen) = run(&l, post("/products/7/reviews", "application/json", body)).await;
        assert_eq!(res.status(), 200);
        let (headers, got, _) = seen.0.lock().unwrap().take().unwrap();
        let expected = r#"{"review":"<b>good</b>","meta":{"title":"a&lt;b"},"name":"O'Brien <x>"}"#;
        assert_eq!(got, expected);
        assert_eq!(headers["content-length"], expected.len().to_string());

        // form bodies too; non-inspected content types are untouched
        let l = SanitizeLayer::builder()
            .route("POST /f", RoutePolicy::new().sanitize(SanitizeMode::Escape))
            .unwrap()
            .build()
            .unwrap();
        let (_, seen) = run(
            &l,
            post("/f", "application/x-www-form-urlencoded", "a=1&b=%3Ci%3E&c"),
        )
        .await;
        assert_eq!(
            seen.0.lock().unwrap().take().unwrap().1,
            "a=1&b=%26lt%3Bi%26gt%3B&c="
        );
        let raw = Bytes::from_static(b"\x00<i>\xff");
        let (_, seen) = run(&l, post("/f", "application/octet-stream", raw.clone())).await;
        assert_eq!(seen.0.lock().unwrap().take().unwrap().1, raw);
        let (_, seen) = run(&l, post("/f", "application/json", r#"{"a" : "plain" }"#)).await;
        assert_eq!(
            seen.0.lock().unwrap().take().unwrap().1,
            r#"{"a" : "plain" }"#
        );
    }

    #[tokio::test]
    async fn monitor_lets_through_and_records_findings() {
        let l = SanitizeLayer::builder()
            .route("/admin/*", RoutePolicy::new().action(Action::Monitor))
            .unwrap()
            .build()
            .unwrap();
        let facts = Arc::new(crate::RequestFacts::default());
        let mut req = post(
            "/admin/users",
            "application/json",
            r#"{"filter":{"$where":"1"}}"#,
        );
        req.extensions_mut().insert(facts.clone());
        let (res, seen) = run(&l, req).await;
        assert_eq!(res.status(), 200);
        let expected = InputFinding {
            location: "body./filter/$where".into(),
            kind: "nosql",
            rule: "nosql.operator_key",
            action: "monitor",
        };
        let (_, _, found) = seen.0.lock().unwrap().take().unwrap();
        assert_eq!(found.unwrap().0, vec![expected.clone()]);
        assert_eq!(facts.findings(), vec![expected]);
        // elsewhere it is rejected, and the rejection is recorded too
        let facts = Arc::new(crate::RequestFacts::default());
        let mut req = post("/users", "application/json", r#"{"filter":{"$where":"1"}}"#);
        req.extensions_mut().insert(facts.clone());
        let (res, _) = run(&l, req).await;
        assert_eq!(res.status(), 400);
        assert_eq!(facts.findings()[0].action, "reject");
    }

    #[tokio::test]
    async fn exemptions_per_field_and_route() {
        let l = SanitizeLayer::builder()
            .field(FieldRule::new("body./query").unwrap().exempt(Kind::Nosql))
            .route("POST /raw", RoutePolicy::new().exempt_all())
            .unwrap()
            .build()
            .unwrap();
        let body = r#"{"query":{"$gt":1}}"#;
        assert_eq!(
            run(&l, post("/search", "application/json", body))
                .await
                .0
                .status(),
            200
        );
        let body2 = r#"{"other":{"$gt":1}}"#;
        assert_eq!(
            run(&l, post("/search", "application/json", body2))
                .await
                .0
                .status(),
            400
        );
        assert_eq!(
            run(&l, post("/raw", "application/json", body2))
                .await
                .0
                .status(),
            200
        );
        // limits still apply on an exempt route
        let (res, _) = run(&l, post("/raw", "application/json", r#"{"a":1,"a":1}"#)).await;
        assert_eq!(res.status(), 400);
    }

    #[tokio::test]
    async fn content_type_policies() {
        let l = SanitizeLayer::builder()
            .other_content_types(ContentPolicy::Refuse)
            .build()
            .unwrap();
        let (res, _) = run(&l, post("/x", "application/octet-stream", "x")).await;
        assert_eq!(res.status(), 415);
        let (res, _) = run(&l, Request::get("/x").body(Full::default()).unwrap()).await;
        assert_eq!(res.status(), 200, "no body, nothing to refuse");
        let (res, seen) = run(
            &l,
            post("/g.S/M", "application/grpc", &b"\x00\x00\x00\x00\x02{}"[..]),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            seen.0.lock().unwrap().take().unwrap().1,
            &b"\x00\x00\x00\x00\x02{}"[..]
        );
        let (res, _) = run(&l, post("/x", "multipart/form-data", "x")).await;
        assert_eq!(
            res.extensions().get::<Denial>().unwrap().reason(),
            "malformed_body"
        );
        // a compressed body cannot be inspected: it counts as another content type
        let gz = || {
            let mut r = post("/x", "application/json", &b"\x1f\x8b\x08"[..]);
            r.headers_mut()
                .insert("content-encoding", HeaderValue::from_static("gzip"));
            r
        };
        assert_eq!(run(&l, gz()).await.0.status(), 415);
        let (res, seen) = run(&layer(), gz()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            seen.0.lock().unwrap().take().unwrap().1,
            &b"\x1f\x8b\x08"[..]
        );
    }

    #[tokio::test]
    async fn header_memo_keeps_only_clean_verdicts_of_one_detector_set() {
        let ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0";
        let attack = "Mozilla/5.0 <script>alert(1)</script>";
        let get = |ua: &str| {
            Request::get("/")
                .header("user-agent", ua)
                .body(Full::default())
                .unwrap()
        };
        let strict = layer();
        let exempt = SanitizeLayer::builder().exempt(Kind::Xss).build().unwrap();
        // the tests run on one thread: every layer here shares the memo
        for _ in 0..3 {
            assert_eq!(run(&exempt, get(attack)).await.0.status(), 200);
            let (res, _) = run(&strict, get(attack)).await;
            assert_eq!(res.status(), 400);
            assert_eq!(problem(res).await["location"], "header.user-agent");
            assert_eq!(run(&strict, get(ua)).await.0.status(), 200);
        }
        let sql_only = SanitizeLayer::builder()
            .detectors(Detectors::only(&[Kind::Sqli]))
            .build()
            .unwrap();
        assert_eq!(run(&sql_only, get(attack)).await.0.status(), 200);
        assert_eq!(run(&strict, get(attack)).await.0.status(), 400);
    }

    #[tokio::test]
    async fn content_types_compare_case_insensitively() {
        let l = layer();
        let body = r#"{"user":{"$ne":""}}"#;
        for ct in [
            "Application/JSON; charset=utf-8",
            " application/vnd.api+JSON ",
            "APPLICATION/json",
        ] {
            let (res, _) = run(&l, post("/x", ct, body)).await;
            assert_eq!(res.status(), 400, "{ct}");
        }
        let (res, _) = run(&l, post("/x", "TEXT/Plain", "<script>alert(1)</script>")).await;
        assert_eq!(res.status(), 400);
        for ct in ["application/jsonx", "application/+jsonp", "json"] {
            let (res, _) = run(&l, post("/x", ct, body)).await;
            assert_eq!(res.status(), 200, "{ct}");
        }
    }

    /// Small header maps are walked once, large ones looked up by name: the same answers.
    #[tokio::test]
    async fn headers_read_the_same_in_small_and_large_maps() {
        let l = layer();
        let with_extra = |mut req: Request<Full<Bytes>>, n: usize| {
            for i in 0..n {
                req.headers_mut().insert(
                    HeaderName::try_from(format!("x-extra-{i}")).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            req
        };
        for extra in [0, 3, 12] {
            let bad = r#"{"user":{"$ne":""}}"#;
            let (res, _) = run(&l, with_extra(post("/x", "application/json", bad), extra)).await;
            assert_eq!(res.status(), 400, "json body, {extra} extra headers");
            let mut req = with_extra(post("/x", "application/json", "{}"), extra);
            req.headers_mut().append(
                http::header::REFERER,
                HeaderValue::from_static("https://ok.example/"),
            );
            req.headers_mut().append(
                http::header::REFERER,
                HeaderValue::from_static("javascript:alert(1)"),
            );
            let (res, _) = run(&l, req).await;
            assert_eq!(
                res.status(),
                400,
                "second referer value, {extra} extra headers"
            );
            let mut req = with_extra(post("/x", "application/json", bad), extra);
            req.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            let (res, _) = run(&l, req).await;
            assert_eq!(
                res.status(),
                200,
                "encoded body passes, {extra} extra headers"
            );
            let mut req = with_extra(post("/x", "application/json", bad), extra);
            req.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(10u64 << 30));
            let (res, _) = run(&l, req).await;
            assert_eq!(res.status(), 413, "declared length, {extra} extra headers");
        }
    }

    #[tokio::test]
    async fn multipart_fields_are_inspected_files_are_not() {
        let l = layer();
        let ct = "multipart/form-data; boundary=b0";
        let ok = b"--b0\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\nhello\r\n--b0\r\nContent-Disposition: form-data; name=\"$where\"; filename=\"x\"\r\n\r\n\xff\r\n--b0--\r\n";
        let (res, _) = run(&l, post("/up", ct, ok.to_vec())).await;
        assert_eq!(res.status(), 400, "operator field name");
        let ok = b"--b0\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\nhello\r\n--b0\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\n\xff\xfe\r\n--b0--\r\n";
        let (res, seen) = run(&l, post("/up", ct, ok.to_vec())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(seen.0.lock().unwrap().take().unwrap().1, &ok[..]);
        let bad = b"--b0\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\n\xff\r\n--b0--\r\n";
        let (res, _) = run(&l, post("/up", ct, bad.to_vec())).await;
        assert_eq!(
            res.extensions().get::<Denial>().unwrap().reason(),
            "invalid_encoding"
        );
    }

    #[test]
    fn field_selectors() {
        for bad in [
            "",
            "bodyx",
            "query",
            "query.",
            "path.x",
            "header./a",
            "cookie",
        ] {
            assert!(Field::parse(bad, "k").is_err(), "{bad}");
        }
        assert_eq!(
            Field::parse("header.Referer", "k").unwrap().name,
            FieldName::Name("referer".into())
        );
        assert_eq!(
            Field::parse("body./a~1b/*", "k").unwrap().name,
            FieldName::Pointer(vec!["a/b".into(), "*".into()])
        );
    }
}
