//! The audit layer, its service and its response future.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::record::{AuditRecord, Outcome};
use super::redact::Redactor;
use super::sink::{AuditSink, CallbackSink, FileSink, TracingSink};
use super::writer::{AuditStats, Event, FailurePolicy, Overflow, Pipeline, RecordCfg, Stamp};
use crate::body::BodyFromBytes;
use crate::clock::{SharedClock, system_clock};
use crate::denial::{Denial, Renderer};
use crate::error::ConfigError;
use crate::future::ShieldFuture;

/// The request id of a request, inserted into the request extensions by the audit layer
/// (taken from the incoming `x-request-id` when valid, else generated) and sent back in
/// the response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        // Only ids of the safe charset are accepted or generated.
        self.0.to_str().unwrap_or("")
    }
    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builder for [`AuditLayer`].
pub struct AuditLayerBuilder {
    sinks: Vec<Box<dyn AuditSink>>,
    capacity: usize,
    overflow: Overflow,
    failure: FailurePolicy,
    chain_key: Option<Vec<u8>>,
    request_id_header: HeaderName,
    trust_request_id: bool,
    max_request_id_len: usize,
    log_headers: Vec<HeaderName>,
    secret_headers: Vec<HeaderName>,
    redactor: Redactor,
    cap: usize,
    path_cap: usize,
    /// A custom clock; `None` reads `Instant`/`SystemTime` directly.
    clock: Option<SharedClock>,
    renderer: Renderer,
}

impl fmt::Debug for AuditLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayerBuilder")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("capacity", &self.capacity)
            .field("overflow", &self.overflow)
            .field("failure", &self.failure)
            .field("chain", &self.chain_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for AuditLayerBuilder {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            capacity: 8192,
            overflow: Overflow::Block,
            failure: FailurePolicy::Continue,
            chain_key: None,
            request_id_header: HeaderName::from_static("x-request-id"),
            trust_request_id: true,
            max_request_id_len: 128,
            log_headers: Vec::new(),
            secret_headers: vec![HeaderName::from_static("x-api-key")],
            redactor: Redactor::default(),
            cap: 1024,
            path_cap: 2048,
            clock: None,
            renderer: Renderer::default(),
        }
    }
}

impl AuditLayerBuilder {
    /// Adds a sink.
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }
    /// Adds a JSON-lines file sink (see [`FileSink::builder`] for rotation and fsync).
    pub fn file(self, sink: FileSink) -> Self {
        self.sink(sink)
    }
    /// Adds the `tracing` sink.
    pub fn tracing(self) -> Self {
        self.sink(TracingSink)
    }
    /// Adds a callback sink: `f(&record, line)` for each record; an `Err` is a sink failure.
    pub fn callback<F>(self, name: &str, f: F) -> Self
    where
        F: FnMut(&AuditRecord, &str) -> io::Result<()> + Send + 'static,
    {
        self.sink(CallbackSink::new(name, f))
    }
    /// Queue capacity between the request path and the writer (default 8192 records).
    pub fn capacity(mut self, records: usize) -> Self {
        self.capacity = records.max(1);
        self
    }
    /// Overflow policy (default [`Overflow::Block`], lossless).
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.overflow = policy;
        self
    }
    /// Sink failure policy (default [`FailurePolicy::Continue`]).
    pub fn on_sink_failure(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }
    /// Turns on the HMAC-SHA256 chain with this key (at least 16 bytes).
    pub fn chain_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.chain_key = Some(key.into());
        self
    }
    /// The request id header (default `x-request-id`).
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.request_id_header = name;
        self
    }
    /// Whether to reuse a valid incoming request id (default true). When false, every
    /// request gets a fresh id.
    pub fn trust_request_id(mut self, trust: bool) -> Self {
        self.trust_request_id = trust;
        self
    }
    /// Longest incoming request id accepted (default 128).
    pub fn max_request_id_len(mut self, len: usize) -> Self {
        self.max_request_id_len = len.clamp(1, 1024);
        self
    }
    /// Logs this request header (redacted: credentials, cookies and the secret headers are
    /// always `[REDACTED]`; other values have tokens and card numbers removed).
    pub fn log_header(mut self, name: HeaderName) -> Self {
        self.log_headers.push(name);
        self
    }
    /// A header carrying a secret (an API key header): never logged in clear. Default:
    /// `x-api-key`.
    pub fn secret_header(mut self, name: HeaderName) -> Self {
        self.secret_headers.push(name);
        self
    }
    /// An extra query parameter name whose value is redacted.
    pub fn secret_query_param(mut self, name: &str) -> Self {
        self.redactor.secret_param(name);
        self
    }
    /// Cap for every string field, in bytes (default 1024); the path has its own cap
    /// (default 2048). Capped values end with `...[truncated]`.
    pub fn field_caps(mut self, field: usize, path: usize) -> Self {
        self.cap = field.max(16);
        self.path_cap = path.max(16);
        self
    }
    /// The clock (latency and timestamps).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The denial renderer (for the fail-closed 503).
    pub fn renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    /// Starts the writer thread and builds the layer.
    pub fn build(self) -> Result<AuditLayer, ConfigError> {
        if self.sinks.is_empty() {
            return Err(ConfigError::invalid(
                "audit",
                "no sink configured (add a file, tracing or callback sink)",
            ));
        }
        if let Some(k) = &self.chain_key
            && k.len() < 16
        {
            return Err(ConfigError::invalid(
                "audit.chain_key",
                "the chain key must be at least 16 bytes",
            ));
        }
        let cfg = RecordCfg {
            cap: self.cap,
            path_cap: self.path_cap,
            secret_headers: self.secret_headers,
            redactor: self.redactor,
        };
        let pipeline = Pipeline::start(
            self.sinks,
            self.capacity,
            self.overflow,
            self.chain_key,
            cfg,
            self.clock.clone().unwrap_or_else(system_clock),
        )
        .map_err(|e| ConfigError::invalid("audit", format!("cannot start the writer: {e}")))?;
        Ok(AuditLayer {
            inner: Arc::new(Inner {
                pipeline,
                target_limit: capture_limit(self.path_cap),
                field_limit: capture_limit(self.cap),
                failure: self.failure,
                request_id_header: self.request_id_header,
                trust_request_id: self.trust_request_id,
                max_request_id_len: self.max_request_id_len,
                log_headers: self.log_headers,
                clock: self.clock,
            }),
            renderer: self.renderer,
        })
    }
}

struct Inner {
    pipeline: Pipeline,
    /// How much of the request target the request path copies for the writer.
    target_limit: usize,
    /// How much of the user agent and each logged header the request path copies.
    field_limit: usize,
    failure: FailurePolicy,
    request_id_header: HeaderName,
    trust_request_id: bool,
    max_request_id_len: usize,
    log_headers: Vec<HeaderName>,
    clock: Option<SharedClock>,
}

/// Records one audit record per request. See the [module docs](super).
#[derive(Clone)]
pub struct AuditLayer {
    inner: Arc<Inner>,
    renderer: Renderer,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("failure", &self.inner.failure)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// Starts a builder.
    pub fn builder() -> AuditLayerBuilder {
        AuditLayerBuilder::default()
    }
    /// Replaces the denial renderer.
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }
    /// Pipeline counters.
    pub fn stats(&self) -> AuditStats {
        self.inner.pipeline.stats()
    }
    /// Waits (blocking the calling thread, at most `timeout`) until every record enqueued
    /// before the call is written and the sinks are flushed. Returns false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.inner.pipeline.flush(timeout)
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The audit service. See the [module docs](super).
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit").field("inner", &self.inner).finish()
    }
}

impl<S> Audit<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: AuditLayer) -> Self {
        Self { inner, layer }
    }
}

/// How much of a field capped at `cap` bytes the request path copies: the redactor can
/// shorten what it finds, so keep twice the cap, plus room for a whole card number.
fn capture_limit(cap: usize) -> usize {
    cap.saturating_mul(2).saturating_add(128)
}

/// Bytes allowed in a request id: `A-Z a-z 0-9 - _ . :`.
const ID_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        c += 1;
    }
    t
};

fn valid_request_id(v: &HeaderValue, max: usize) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= max && b.iter().all(|&c| ID_BYTES[c as usize])
}

/// The grpc-status header (a constant, so looking it up parses nothing).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

std::thread_local! {
    /// Per-thread request id state: a random prefix, a random key, and a counter.
    static ID_STATE: std::cell::Cell<Option<(u64, u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// A fresh request id: 32 hex digits, no allocation but the header value's own. The first
/// half is random per thread; the second half is a keyed bijection of a per-thread counter,
/// so ids never repeat within a thread and do not reveal how many requests it served.
fn new_request_id() -> HeaderValue {
    let (prefix, key, n) = ID_STATE.with(|s| {
        let (prefix, key, n) = s
            .get()
            .unwrap_or_else(|| (rand::random(), rand::random(), 0));
        s.set(Some((prefix, key, n.wrapping_add(1))));
        (prefix, key, n)
    });
    let mut buf = [0u8; 32];
    let _ = hex::encode_to_slice(prefix.to_be_bytes(), &mut buf[..16]);
    let _ = hex::encode_to_slice(mix(n ^ key).to_be_bytes(), &mut buf[16..]);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The splitmix64 finalizer: a bijection on `u64` that scatters consecutive inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: BodyFromBytes + Body,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let inner = &self.layer.inner;
        // Only the raw facts are captured here, into a recycled event; the writer thread
        // redacts, formats, chains and writes.
        let mut ev = inner.pipeline.event();
        ev.start = Stamp::now(inner.clock.as_ref());
        let headers = req.headers();
        let request_id = match headers.get(&inner.request_id_header) {
            Some(v) if inner.trust_request_id && valid_request_id(v, inner.max_request_id_len) => {
                v.clone()
            }
            _ => new_request_id(),
        };
        ev.set_request_id(request_id.as_bytes());
        ev.method = req.method().clone();
        ev.set_target(
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            inner.target_limit,
        );
        ev.set_user_agent(headers.get(USER_AGENT), inner.field_limit);
        let mut logged = 0;
        for n in &inner.log_headers {
            for v in headers.get_all(n) {
                if logged < 32 {
                    ev.push_header(n, v, inner.field_limit);
                    logged += 1;
                }
            }
        }
        ev.bytes_in = content_length(headers);
        ev.peer = crate::client_ip::peer_addr(req.extensions()).map(|a| a.ip().to_canonical());
        ev.outcome = Outcome::Cancelled;
        let facts = ev.facts.clone();
        let ext = req.extensions_mut();
        ext.insert(RequestId(request_id.clone()));
        ext.insert(facts);
        let guard = Guard {
            event: Some(ev),
            request_id: Some(request_id),
            layer: self.layer.inner.clone(),
        };
        let fut = if inner.failure == FailurePolicy::FailClosed && inner.pipeline.failing() {
            let denial = Denial::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit",
                "audit_unavailable",
            )
            .with_detail("Audit logging is unavailable; the request was refused.");
            ShieldFuture::denied(self.layer.renderer.respond(denial, &req))
        } else {
            ShieldFuture::inner(self.inner.call(req))
        };
        ResponseFuture { fut, guard }
    }
}

/// Sends exactly one record: on completion, or — when dropped first — as `cancelled`.
struct Guard {
    event: Option<Box<Event>>,
    /// The request id, for the response header.
    request_id: Option<HeaderValue>,
    layer: Arc<Inner>,
}

impl Guard {
    fn finish(&mut self, fill: impl FnOnce(&mut Event)) {
        if let Some(mut ev) = self.event.take() {
            ev.end = Stamp::now(self.layer.clock.as_ref());
            fill(&mut ev);
            self.layer.pipeline.send(ev);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.finish(|ev| {
            if panicking {
                ev.outcome = Outcome::Error;
                ev.reason = Some("panic".into());
            } else {
                ev.outcome = Outcome::Cancelled;
                ev.reason = Some("client_gone".into());
            }
        });
    }
}

pin_project! {
    /// Response future of [`Audit`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        fut: ShieldFuture<F, B>,
        guard: Guard,
    }
}

/// gRPC codes counted as server errors.
fn grpc_is_error(code: u16) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx));
        match result {
            Ok(mut res) => {
                this.guard.finish(|ev| {
                    let status = res.status().as_u16();
                    ev.status = Some(status);
                    ev.grpc_status = res
                        .headers()
                        .get(GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    ev.bytes_out = res
                        .body()
                        .size_hint()
                        .exact()
                        .or_else(|| content_length(res.headers()));
                    if let Some(d) = res.extensions().get::<Denial>() {
                        ev.outcome = Outcome::Denied;
                        ev.layer = Some(d.layer());
                        ev.reason = Some(d.reason().to_owned().into());
                    } else if status >= 500 || ev.grpc_status.is_some_and(grpc_is_error) {
                        ev.outcome = Outcome::Error;
                        ev.reason = Some(if status >= 500 {
                            "server_error".into()
                        } else {
                            "grpc_error".into()
                        });
                    } else {
                        ev.outcome = Outcome::Served;
                    }
                });
                if let Some(rid) = this.guard.request_id.take() {
                    let header = this.guard.layer.request_id_header.clone();
                    res.headers_mut().insert(header, rid);
                }
                Poll::Ready(Ok(res))
            }
            Err(e) => {
                this.guard.finish(|ev| {
                    ev.outcome = Outcome::Error;
                    ev.reason = Some("service_error".into());
                });
                Poll::Ready(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use futures_util::FutureExt;
    use tower::ServiceExt;

    use super::*;
    use crate::principal::{CredentialKind, Principal};

    type Lines = Arc<Mutex<Vec<serde_json::Value>>>;

    fn layer(capacity: usize) -> (AuditLayer, Lines) {
        let lines: Lines = Arc::default();
        let l = lines.clone();
        let audit = AuditLayer::builder()
            .callback("test", move |_, line| {
                l.lock().unwrap().push(serde_json::from_str(line).unwrap());
                Ok(())
            })
            .capacity(capacity)
            .field_caps(64, 64)
            .build()
            .unwrap();
        (audit, lines)
    }

    fn call(audit: &AuditLayer, req: Request<()>) -> Response<String> {
        let svc = audit.layer(tower::service_fn(|req: Request<()>| async move {
            // Plays an auth layer: a `who` header becomes the principal.
            if let Some(who) = req.headers().get("who") {
                let p = Principal::new(who.to_str().unwrap(), CredentialKind::ApiKey);
                crate::facts::record_principal(req.extensions(), &p);
            }
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }));
        svc.oneshot(req).now_or_never().unwrap().unwrap()
    }

    #[test]
    fn recycled_events_carry_nothing_from_the_previous_request() {
        let (audit, lines) = layer(4);
        for i in 0..200 {
            let mut b = Request::get(format!("/r/{i}"));
            if i % 2 == 0 {
                b = b
                    .header("who", format!("client-{i}"))
                    .header("user-agent", format!("agent-{i}"));
            }
            call(&audit, b.body(()).unwrap());
            if i % 7 == 0 {
                assert!(audit.flush(Duration::from_secs(5)));
            }
        }
        assert!(audit.flush(Duration::from_secs(5)));
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 200);
        for (i, rec) in lines.iter().enumerate() {
            assert_eq!(rec["path"], format!("/r/{i}"));
            if i % 2 == 0 {
                assert_eq!(rec["principal"]["id"], format!("client-{i}"));
                assert_eq!(rec["user_agent"], format!("agent-{i}"));
            } else {
                assert!(rec.get("principal").is_none(), "{rec}");
                assert!(rec.get("user_agent").is_none(), "{rec}");
            }
        }
    }

    #[test]
    fn generated_request_ids_are_valid_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            assert_eq!(id.len(), 32);
            assert!(valid_request_id(&id, 128));
            assert!(seen.insert(id));
        }
        let other = std::thread::spawn(new_request_id).join().unwrap();
        assert!(!seen.contains(&other));
    }

    #[test]
    fn long_values_are_cut_before_the_writer_without_splitting_a_card() {
        let (audit, lines) = layer(16);
        // The capture limit for a 64-byte cap is 256 bytes and the card straddles it; the
        // redacted token before it shrinks, so what follows would show within the cap.
        let card = "4111 1111 1111 1111";
        let ua = format!("token={} {card}{}", "v".repeat(243), "b".repeat(100));
        let path = format!(
            "/p?token={}&q={card}&x={}",
            "v".repeat(238),
            "y".repeat(300)
        );
        assert_eq!(ua.find(card), Some(250));
        assert_eq!(path.find(card), Some(250));
        let req = Request::get(path.replace(' ', "%20"))
            .header("user-agent", ua)
            .body(())
            .unwrap();
        call(&audit, req);
        assert!(audit.flush(Duration::from_secs(5)));
        let rec = &lines.lock().unwrap()[0];
        for field in ["user_agent", "path"] {
            let v = rec[field].as_str().unwrap();
            assert!(v.ends_with(crate::audit::record::TRUNCATED), "{field}: {v}");
            assert!(v.len() <= 64 + crate::audit::record::TRUNCATED.len(), "{v}");
            assert!(v.contains("token=[REDACTED]"), "{v}");
            assert!(!v.contains("4111") && !v.contains("1111"), "{v}");
        }
        let (kept, cut) = super::super::writer::precut(b"abc 4111 1111", 9);
        assert_eq!((kept, cut), (&b"abc"[..], true));
        assert_eq!(
            super::super::writer::precut(b"abc", 9),
            (&b"abc"[..], false)
        );
    }

    #[test]
    fn a_custom_clock_gives_the_timestamp_and_latency() {
        let clock = crate::clock::ManualClock::at_unix(1_795_318_926);
        let lines: Lines = Arc::default();
        let l = lines.clone();
        let audit = AuditLayer::builder()
            .callback("test", move |_, line| {
                l.lock().unwrap().push(serde_json::from_str(line).unwrap());
                Ok(())
            })
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        let c = clock.clone();
        let svc = audit.layer(tower::service_fn(move |_req: Request<()>| {
            c.advance(Duration::from_millis(3));
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        }));
        let _ = svc
            .oneshot(Request::new(()))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert!(audit.flush(Duration::from_secs(5)));
        let rec = &lines.lock().unwrap()[0];
        assert_eq!(rec["ts"], "2026-11-22T03:42:06.000000Z");
        assert_eq!(rec["latency_us"], 3000);
    }
}
