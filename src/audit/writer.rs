//! The bounded queue and the writer thread between the request path and the sinks.
//!
//! The request path only captures raw facts (instants, method, peer, copies of the request
//! id, target and user agent) into a recycled [`Event`] and hands it to a bounded queue. The
//! writer thread derives the wall time, redacts, encodes, chains and writes, then resets the
//! event and returns it to the pool. When the queue is full:
//! [`Overflow::Block`] makes the request wait for room (lossless back-pressure), and
//! [`Overflow::Drop`] discards the record, counts it, and the writer then writes a
//! `dropped` record saying how many were lost.

use std::borrow::Cow;
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, Method};

use super::chain::Chain;
use super::record::{AuditRecord, Outcome, PrincipalRecord, ShadowRecord, TRUNCATED};
use super::redact::{REDACTED, Redactor, is_secret_header};
use super::sink::AuditSink;
use crate::clock::SharedClock;
use crate::facts::RequestFacts;

/// What to do when the queue to the writer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait for room: nothing is lost, requests slow down to the writer's pace (the
    /// calling thread blocks while the queue is full).
    #[default]
    Block,
    /// Never wait: drop the record, count it, and write a `dropped` record with the count.
    Drop,
}

/// What to do when a sink fails (disk full, closed destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Keep serving; report the failure (a `tracing` error, [`AuditStats::sink_errors`],
    /// and a `sink_recovered` record with the number of lost records once the sink works
    /// again).
    #[default]
    Continue,
    /// Refuse requests with `503` (denial layer `audit`, reason `audit_unavailable`) while
    /// any sink is failing, so nothing is served unaudited.
    FailClosed,
}

/// Counters of the audit pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records handed to the queue.
    pub enqueued: u64,
    /// Records written (to every sink that was working).
    pub written: u64,
    /// Records dropped because the queue was full ([`Overflow::Drop`]).
    pub dropped: u64,
    /// Failed sink writes.
    pub sink_errors: u64,
    /// Whether a sink is failing now.
    pub failing: bool,
}

/// One request, as handed to the writer: the raw facts only, copied cheaply on the request
/// path. Events are boxed and recycled through a pool (the writer hands them back with
/// their buffers and a reset [`RequestFacts`]), so the request path neither allocates for
/// them nor leaves the writer thread to free memory the request thread allocated.
pub(crate) struct Event {
    /// When the request arrived.
    pub start: Stamp,
    /// When the response (or the cancellation) came.
    pub end: Stamp,
    pub method: Method,
    pub peer: Option<IpAddr>,
    pub facts: Arc<RequestFacts>,
    /// Request id, target (path and query) and user agent bytes, back to back.
    text: Vec<u8>,
    request_id: Range<u32>,
    target: Text,
    user_agent: Option<Text>,
    headers: Vec<(HeaderName, Text)>,
    pub bytes_in: Option<u64>,
    pub status: Option<u16>,
    pub grpc_status: Option<u16>,
    pub outcome: Outcome,
    pub layer: Option<&'static str>,
    pub reason: Option<Cow<'static, str>>,
    pub bytes_out: Option<u64>,
}

/// A point in time read on the request path: an [`Instant`] with the system clock (the
/// writer derives the wall time of arrival from it), or both readings of a custom clock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stamp {
    Instant(Instant),
    Clock { mono: Duration, wall: SystemTime },
}

impl Stamp {
    /// Now, from `clock`, or from [`Instant::now`] when there is no custom clock.
    pub fn now(clock: Option<&SharedClock>) -> Self {
        match clock {
            None => Self::Instant(Instant::now()),
            Some(c) => Self::Clock {
                mono: c.monotonic(),
                wall: c.wall(),
            },
        }
    }

    /// The wall time of `start` and the time from `start` to `end`.
    fn span(start: Self, end: Self) -> (SystemTime, Duration) {
        match (start, end) {
            (Self::Instant(a), Self::Instant(b)) => {
                let (now, wall_now) = (Instant::now(), SystemTime::now());
                let ago = now.saturating_duration_since(a);
                let wall = wall_now.checked_sub(ago).unwrap_or(wall_now);
                (wall, b.saturating_duration_since(a))
            }
            (Self::Clock { mono: a, wall }, Self::Clock { mono: b, .. }) => {
                (wall, b.saturating_sub(a))
            }
            (Self::Clock { wall, .. }, Self::Instant(_)) => (wall, Duration::ZERO),
            (Self::Instant(_), Self::Clock { wall, .. }) => (wall, Duration::ZERO),
        }
    }
}

/// Longest buffer capacity an event keeps when it goes back to the pool.
const KEEP_TEXT: usize = 4096;

impl Event {
    fn new() -> Self {
        Self {
            start: Stamp::Instant(Instant::now()),
            end: Stamp::Instant(Instant::now()),
            method: Method::GET,
            peer: None,
            facts: Arc::new(RequestFacts::default()),
            text: Vec::new(),
            request_id: 0..0,
            target: Text::default(),
            user_agent: None,
            headers: Vec::new(),
            bytes_in: None,
            status: None,
            grpc_status: None,
            outcome: Outcome::Cancelled,
            layer: None,
            reason: None,
            bytes_out: None,
        }
    }

    fn push_text(&mut self, b: &[u8]) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(b);
        start..self.text.len() as u32
    }

    fn text(&self, r: &Range<u32>) -> &[u8] {
        &self.text[r.start as usize..r.end as usize]
    }

    fn push_cut(&mut self, b: &[u8], limit: usize) -> Text {
        let (b, cut) = precut(b, limit);
        Text {
            range: self.push_text(b),
            cut,
        }
    }

    /// A captured string, lossily decoded (header values may be any bytes).
    fn string(&self, t: &Text) -> Cow<'_, str> {
        String::from_utf8_lossy(self.text(&t.range))
    }

    /// Sets the request id (a validated or generated id: short, ASCII).
    pub fn set_request_id(&mut self, id: &[u8]) {
        self.request_id = self.push_text(id);
    }

    /// Sets the request target, keeping at most `limit` bytes (see [`precut`]).
    pub fn set_target(&mut self, target: &str, limit: usize) {
        self.target = self.push_cut(target.as_bytes(), limit);
    }

    /// Sets the user agent, keeping at most `limit` bytes (see [`precut`]).
    pub fn set_user_agent(&mut self, ua: Option<&HeaderValue>, limit: usize) {
        self.user_agent = ua.map(|v| self.push_cut(v.as_bytes(), limit));
    }

    /// Adds a logged header, keeping at most `limit` bytes of the value.
    pub fn push_header(&mut self, name: &HeaderName, value: &HeaderValue, limit: usize) {
        let t = self.push_cut(value.as_bytes(), limit);
        self.headers.push((name.clone(), t));
    }

    /// Makes the event ready for another request (on the writer thread). Returns false
    /// when it should not be pooled.
    fn recycle(&mut self) -> bool {
        match Arc::get_mut(&mut self.facts) {
            Some(f) => *f = RequestFacts::default(),
            // Someone still holds the request's facts: leave them to it.
            None => self.facts = Arc::new(RequestFacts::default()),
        }
        self.text.clear();
        if self.text.capacity() > KEEP_TEXT {
            self.text = Vec::new();
        }
        self.headers.clear();
        self.user_agent = None;
        self.reason = None;
        self.layer = None;
        self.status = None;
        self.grpc_status = None;
        self.bytes_out = None;
        self.headers.capacity() <= 64
    }
}

/// A captured string: its bytes in [`Event::text`], and whether it was cut.
#[derive(Debug, Clone, Default)]
struct Text {
    range: Range<u32>,
    cut: bool,
}

/// The first `limit` bytes of a value captured for the writer (which redacts and caps it),
/// and whether it was cut. The cut never falls inside a run of digits and separators, so a
/// card number is either whole (and recognised by the redactor) or absent.
pub(crate) fn precut(b: &[u8], limit: usize) -> (&[u8], bool) {
    if b.len() <= limit {
        return (b, false);
    }
    let mut end = limit;
    while end > 0 && matches!(b[end - 1], b'0'..=b'9' | b' ' | b'-' | b'%') {
        end -= 1;
    }
    (&b[..end], true)
}

/// A redacted value whose capture was cut: ends with the truncation marker and fits in
/// `cap` (a longer value is cut and marked by the encoder).
fn mark_cut(s: String, cap: usize) -> String {
    if s.len() > cap {
        return s;
    }
    let (p, _) = super::record::cap_str(&s, cap.saturating_sub(TRUNCATED.len()));
    format!("{p}{TRUNCATED}")
}

pub(crate) enum Msg {
    Event(Box<Event>),
    Flush(SyncSender<()>),
}

/// Recycled events, shared by the request path (takes) and the writer (gives back).
struct Pool {
    // Boxed: an event moves between the pool, a request and the queue as one pointer.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Event>>>,
    max: usize,
}

/// Counters on their own cache lines: the request path writes `enqueued`, the writer
/// `written`, so neither slows the other down by taking the line away.
#[derive(Default)]
pub(crate) struct Counters {
    enqueued: Padded<AtomicU64>,
    written: Padded<AtomicU64>,
    dropped: AtomicU64,
    dropped_pending: AtomicU64,
    sink_errors: AtomicU64,
    failing: AtomicBool,
}

#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Record-building settings shared with the writer.
#[derive(Debug, Clone)]
pub(crate) struct RecordCfg {
    pub cap: usize,
    pub path_cap: usize,
    pub secret_headers: Vec<HeaderName>,
    pub redactor: Redactor,
}

/// The sending side, owned (through an `Arc`) by the layer and its services.
pub(crate) struct Pipeline {
    tx: Option<SyncSender<Msg>>,
    pool: Arc<Pool>,
    overflow: Overflow,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Pipeline {
    pub(crate) fn start(
        sinks: Vec<Box<dyn AuditSink>>,
        capacity: usize,
        overflow: Overflow,
        chain_key: Option<Vec<u8>>,
        cfg: RecordCfg,
        clock: SharedClock,
    ) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let pool = Arc::new(Pool {
            free: Mutex::new(Vec::new()),
            max: capacity.max(1),
        });
        let mut writer = Writer {
            rx,
            pool: pool.clone(),
            spare: Vec::new(),
            sinks: sinks
                .into_iter()
                .map(|sink| Slot {
                    sink,
                    failed: false,
                    lost: 0,
                    batch: 0,
                })
                .collect(),
            chain: chain_key.map(|k| Chain::new(&k)),
            cfg,
            counters: counters.clone(),
            buf: Vec::with_capacity(1024),
            batch_ok: 0,
            clock,
        };
        writer.resume_chain();
        let thread = std::thread::Builder::new()
            .name("tower-shield-audit".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            tx: Some(tx),
            pool,
            overflow,
            counters,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// An event to fill: a recycled one when the pool has one (never waits for it).
    pub(crate) fn event(&self) -> Box<Event> {
        if let Ok(mut free) = self.pool.free.try_lock()
            && let Some(ev) = free.pop()
        {
            return ev;
        }
        Box::new(Event::new())
    }

    pub(crate) fn send(&self, ev: Box<Event>) {
        let Some(tx) = &self.tx else { return };
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Event(ev);
        let res = match self.overflow {
            Overflow::Block => tx.send(msg).map_err(|_| ()),
            Overflow::Drop => match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .dropped_pending
                        .fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            },
        };
        if res.is_err() {
            // The writer thread is gone: every sink is effectively closed.
            self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            self.counters.failing.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn failing(&self) -> bool {
        self.counters.failing.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> AuditStats {
        let c = &self.counters;
        AuditStats {
            enqueued: c.enqueued.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            failing: c.failing.load(Ordering::Relaxed),
        }
    }

    /// Waits until every record enqueued before the call is written and the sinks are
    /// flushed. Blocks the calling thread (use `spawn_blocking` from async code).
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return false };
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is left and exit; wait for it so the
        // last records reach the files.
        self.tx.take();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

struct Slot {
    sink: Box<dyn AuditSink>,
    /// The sink failed and has not yet proven it works again (a write and a flush).
    failed: bool,
    /// Records lost in this sink since it failed.
    lost: u64,
    /// Records accepted since the last flush (lost too if the flush fails).
    batch: u64,
}

struct Writer {
    rx: Receiver<Msg>,
    pool: Arc<Pool>,
    /// Recycled events not yet handed back to the pool.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Event>>,
    sinks: Vec<Slot>,
    chain: Option<Chain>,
    cfg: RecordCfg,
    counters: Arc<Counters>,
    buf: Vec<u8>,
    /// Records of this batch every sink accepted.
    batch_ok: u64,
    clock: SharedClock,
}

impl Writer {
    fn resume_chain(&mut self) {
        let Some(chain) = &mut self.chain else { return };
        for slot in &mut self.sinks {
            if let Some(line) = slot.sink.last_line()
                && chain.resume_after(&line)
            {
                tracing::info!(target: "tower_shield::audit", seq = chain.seq, "audit chain resumed from the existing log");
                return;
            }
        }
    }

    fn run(mut self) {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    self.end_batch();
                    match self.wait() {
                        Some(m) => m,
                        None => break,
                    }
                }
            };
            self.handle(msg);
        }
        self.end_batch();
    }

    /// Waits for the next message: a short polling phase first (so busy senders do not pay
    /// a wake-up each), then a blocking wait with periodic ticks.
    fn wait(&mut self) -> Option<Msg> {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return None,
            }
        }
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Some(m),
                Err(RecvTimeoutError::Timeout) => {
                    for i in 0..self.sinks.len() {
                        if let Err(e) = self.sinks[i].sink.tick() {
                            self.fail(i, &e);
                        }
                    }
                    self.report_drops();
                    if self.batch_ok > 0 {
                        self.end_batch();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Event(mut ev) => {
                let rec = self.build(&mut ev);
                self.emit(&rec);
                drop(rec);
                if ev.recycle() {
                    self.spare.push(ev);
                    if self.spare.len() >= 32 {
                        self.give_back();
                    }
                }
            }
            Msg::Flush(ack) => {
                self.end_batch();
                let _ = ack.send(());
            }
        }
    }

    /// Hands the recycled events back to the pool (beyond its size they are freed).
    fn give_back(&mut self) {
        if let Ok(mut free) = self.pool.free.lock() {
            let room = self.pool.max.saturating_sub(free.len());
            let n = room.min(self.spare.len());
            free.extend(self.spare.drain(..n));
        }
        self.spare.clear();
    }

    /// Flushes every sink; a sink that failed and has now taken records and flushed them
    /// is reported recovered (with a `sink_recovered` record).
    fn end_batch(&mut self) {
        self.give_back();
        self.report_drops();
        let mut all_ok = true;
        for _round in 0..2 {
            let mut recovered = Vec::new();
            for i in 0..self.sinks.len() {
                let r = self.sinks[i].sink.flush();
                let slot = &mut self.sinks[i];
                let batch = std::mem::take(&mut slot.batch);
                match r {
                    Ok(()) if slot.failed && batch > 0 => {
                        slot.failed = false;
                        recovered.push((slot.sink.name(), std::mem::take(&mut slot.lost)));
                    }
                    Ok(()) => {}
                    Err(e) => {
                        all_ok = false;
                        slot.lost += batch;
                        self.fail(i, &e);
                    }
                }
            }
            self.update_failing();
            if recovered.is_empty() {
                break;
            }
            for (name, lost) in recovered {
                tracing::warn!(target: "tower_shield::audit", sink = %name, lost, "audit sink recovered");
                let mut rec = AuditRecord::new("sink_recovered", self.clock.wall());
                rec.count = Some(lost);
                rec.message = Some(format!(
                    "audit sink {name} failed and recovered; records lost there"
                ));
                self.emit(&rec);
            }
        }
        let n = std::mem::take(&mut self.batch_ok);
        if all_ok {
            self.counters.written.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn report_drops(&mut self) {
        // Read before swapping, so an idle check does not take the line for writing.
        if self.counters.dropped_pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        let n = self.counters.dropped_pending.swap(0, Ordering::Relaxed);
        if n > 0 {
            let mut rec = AuditRecord::new("dropped", self.clock.wall());
            rec.count = Some(n);
            rec.message = Some("audit queue full: records dropped (overflow policy drop)".into());
            tracing::warn!(target: "tower_shield::audit", dropped = n, "audit records dropped");
            self.emit(&rec);
        }
    }

    fn fail(&mut self, i: usize, e: &io::Error) {
        self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        let slot = &mut self.sinks[i];
        if !slot.failed {
            slot.failed = true;
            tracing::error!(target: "tower_shield::audit", sink = %slot.sink.name(), error = %e, "audit sink failed");
        }
        self.update_failing();
    }

    fn update_failing(&self) {
        let any = self.sinks.iter().any(|s| s.failed);
        if self.counters.failing.load(Ordering::Relaxed) != any {
            self.counters.failing.store(any, Ordering::Relaxed);
        }
    }

    fn emit(&mut self, rec: &AuditRecord) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        rec.encode_open_with(&mut buf, self.cfg.cap, self.cfg.path_cap + TRUNCATED.len());
        match &mut self.chain {
            Some(chain) => chain.seal(&mut buf),
            None => buf.push(b'}'),
        }
        // The encoder only produces UTF-8.
        let line = std::str::from_utf8(&buf).unwrap_or("{}");
        let mut ok = true;
        for i in 0..self.sinks.len() {
            match self.sinks[i].sink.write(rec, line) {
                Ok(()) => self.sinks[i].batch += 1,
                Err(e) => {
                    ok = false;
                    let slot = &mut self.sinks[i];
                    slot.lost += 1 + std::mem::take(&mut slot.batch);
                    self.fail(i, &e);
                }
            }
        }
        if ok {
            self.batch_ok += 1;
        }
        self.buf = buf;
    }

    fn build(&self, ev: &mut Event) -> AuditRecord {
        let cfg = &self.cfg;
        let (wall, latency) = Stamp::span(ev.start, ev.end);
        let mut r = AuditRecord::new("request", wall);
        r.request_id = Some(String::from_utf8_lossy(ev.text(&ev.request_id)).into_owned());
        r.client_ip = ev.facts.client_ip().map(|c| c.0).or(ev.peer);
        r.principal = ev.facts.principal().map(|p| PrincipalRecord {
            id: cfg.redactor.text(p.id()),
            kind: p.kind().as_str(),
            key_id: p.key_id().map(str::to_owned),
            subject: p.subject().map(str::to_owned),
            client_id: p.client_id().map(str::to_owned),
            tenant: p.tenant().map(str::to_owned),
        });
        r.method = Some(ev.method.as_str().to_owned());
        r.route = ev.facts.route().map(|m| m.template.to_string());
        let target = ev.string(&ev.target);
        let target = if target.is_empty() { "/" } else { &target };
        let mut path = cfg.redactor.path_and_query(target);
        if path.len() > cfg.path_cap {
            let (p, _) = super::record::cap_str(&path, cfg.path_cap);
            path = format!("{p}{TRUNCATED}");
        } else if ev.target.cut {
            path = mark_cut(path, cfg.path_cap);
        }
        r.path = Some(path);
        r.status = ev.status;
        r.grpc_status = ev.grpc_status;
        r.outcome = Some(ev.outcome);
        r.layer = ev.layer.map(str::to_owned);
        r.reason = ev.reason.take().map(Cow::into_owned);
        r.latency_us = Some(latency.as_micros().min(u128::from(u64::MAX)) as u64);
        r.bytes_in = ev.bytes_in;
        r.bytes_out = ev.bytes_out;
        r.user_agent = ev.user_agent.as_ref().map(|t| {
            let v = cfg.redactor.text(&ev.string(t));
            if t.cut { mark_cut(v, cfg.cap) } else { v }
        });
        r.headers = ev
            .headers
            .iter()
            .map(|(k, t)| {
                let secret = is_secret_header(k.as_str()) || cfg.secret_headers.contains(k);
                let value = if secret {
                    REDACTED.to_owned()
                } else {
                    let v = cfg.redactor.text(&ev.string(t));
                    if t.cut { mark_cut(v, cfg.cap) } else { v }
                };
                (k.as_str().to_owned(), value)
            })
            .collect();
        r.findings = ev.facts.findings();
        r.shadow = ev
            .facts
            .shadow_denials()
            .into_iter()
            .map(|d| ShadowRecord {
                layer: d.layer().to_owned(),
                reason: d.reason().to_owned(),
                status: d.status().as_u16(),
            })
            .collect();
        r
    }
}
