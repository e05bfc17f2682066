//! Where records go: a JSON-lines file with rotation, `tracing` events, or a callback.
//!
//! Sinks run on the audit writer thread, never on the request path. Each receives the
//! record and its encoded line (one JSON object, no newline; with the chain on, it carries
//! `seq` and `mac`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::{SharedClock, system_clock};

use super::record::AuditRecord;

/// A destination for audit records.
pub trait AuditSink: Send + 'static {
    /// A short name used in failure reports (`file:/var/log/audit.jsonl`).
    fn name(&self) -> String;
    /// Writes one record. `line` is the complete JSON object, without a newline.
    fn write(&mut self, record: &AuditRecord, line: &str) -> io::Result<()>;
    /// Called when the writer has no more records queued: push buffered bytes out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Called periodically while idle (for time-based fsync).
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The last line this sink already holds (a file from a previous run), so the hash
    /// chain can continue from it.
    fn last_line(&mut self) -> Option<String> {
        None
    }
}

/// When the file sink calls `fsync` (`File::sync_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Never: the operating system decides (fastest; a power cut loses recent records).
    #[default]
    Never,
    /// After every batch the writer drains (each burst of records is durable before the
    /// writer waits for more).
    Always,
    /// At most once per interval, and when idle with unsynced records.
    Interval(Duration),
}

/// Builder for [`FileSink`].
#[derive(Debug, Clone)]
pub struct FileSinkBuilder {
    clock: SharedClock,
    path: PathBuf,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
    fsync: Fsync,
    buffer: usize,
}

impl FileSinkBuilder {
    /// Rotates when the file would exceed this size.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = (bytes > 0).then_some(bytes);
        self
    }
    /// Rotates when the file is older than this.
    pub fn rotate_every(mut self, age: Duration) -> Self {
        self.max_age = (!age.is_zero()).then_some(age);
        self
    }
    /// The fsync policy (default [`Fsync::Never`]).
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }
    /// The clock for time-based rotation and fsync intervals.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// Write buffer size (default 64 KiB).
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(512);
        self
    }
    /// Opens (or creates) the file for appending.
    pub fn build(self) -> io::Result<FileSink> {
        let now = self.clock.monotonic();
        let mut sink = FileSink {
            cfg: self,
            out: None,
            size: 0,
            opened: now,
            last_sync: now,
            dirty: false,
        };
        sink.open()?;
        Ok(sink)
    }
}

/// A JSON-lines file with size- and/or time-based rotation and an fsync policy.
///
/// The active file is `path`; a rotated file is renamed to `path.N` with `N` counting up
/// from 1 (`audit.jsonl.1`, `audit.jsonl.2`, ... oldest first), so
/// [`rotated_files`] lists them in chain order. Records are never split across files.
pub struct FileSink {
    cfg: FileSinkBuilder,
    out: Option<BufWriter<File>>,
    size: u64,
    opened: Duration,
    last_sync: Duration,
    dirty: bool,
}

impl fmt::Debug for FileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.cfg.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Starts a builder for a file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> FileSinkBuilder {
        FileSinkBuilder {
            clock: system_clock(),
            path: path.into(),
            max_bytes: None,
            max_age: None,
            fsync: Fsync::Never,
            buffer: 64 * 1024,
        }
    }

    /// The active file path.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.cfg.path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A previous failure may have left a torn last line: start on a fresh line so the
        // damage stays confined to that one line.
        if len > 0 {
            let mut last = [0u8; 1];
            if file.seek(SeekFrom::Start(len - 1)).is_ok()
                && file.read_exact(&mut last).is_ok()
                && last[0] != b'\n'
            {
                file.write_all(b"\n")?;
            }
        }
        self.size = file.metadata().map(|m| m.len()).unwrap_or(len);
        self.opened = self.cfg.clock.monotonic();
        self.out = Some(BufWriter::with_capacity(self.cfg.buffer, file));
        Ok(())
    }

    fn elapsed(&self, since: Duration) -> Duration {
        self.cfg.clock.monotonic().saturating_sub(since)
    }

    /// Discards a writer after an error without flushing its buffer again.
    fn discard(&mut self) {
        if let Some(w) = self.out.take() {
            let _ = w.into_parts();
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut w) = self.out.take() {
            w.flush()?;
            if self.cfg.fsync != Fsync::Never {
                w.get_ref().sync_data()?;
            }
        }
        let next = rotated_files(&self.cfg.path)
            .ok()
            .and_then(|v| {
                v.iter()
                    .rev()
                    .find_map(|p| rotation_index(&self.cfg.path, p))
            })
            .unwrap_or(0)
            + 1;
        let mut target = self.cfg.path.clone().into_os_string();
        target.push(format!(".{next}"));
        fs::rename(&self.cfg.path, &target)?;
        self.open()
    }

    fn sync_if_due(&mut self, batch_end: bool) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let due = match self.cfg.fsync {
            Fsync::Never => false,
            Fsync::Always => batch_end,
            Fsync::Interval(d) => self.elapsed(self.last_sync) >= d,
        };
        if due {
            if let Some(w) = &self.out {
                w.get_ref().sync_data()?;
            }
            self.last_sync = self.cfg.clock.monotonic();
            self.dirty = false;
        }
        Ok(())
    }
}

impl AuditSink for FileSink {
    fn name(&self) -> String {
        format!("file:{}", self.cfg.path.display())
    }

    fn write(&mut self, _record: &AuditRecord, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        let too_big = self
            .cfg
            .max_bytes
            .is_some_and(|max| self.size > 0 && self.size + len > max);
        let too_old = self
            .cfg
            .max_age
            .is_some_and(|age| self.size > 0 && self.elapsed(self.opened) >= age);
        let result = (|| {
            if self.out.is_none() {
                self.open()?;
            }
            if too_big || too_old {
                self.rotate()?;
            }
            let w = self
                .out
                .as_mut()
                .ok_or_else(|| io::Error::other("closed"))?;
            // One write call per line into the buffer: a line is never split by our own
            // flushes in a way that interleaves with another record.
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")
        })();
        match result {
            Ok(()) => {
                self.size += len;
                self.dirty = true;
                Ok(())
            }
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = match &mut self.out {
            Some(w) => w.flush(),
            None => Ok(()),
        };
        if let Err(e) = r {
            self.discard();
            return Err(e);
        }
        self.sync_if_due(true)
    }

    fn tick(&mut self) -> io::Result<()> {
        self.sync_if_due(false)
    }

    fn last_line(&mut self) -> Option<String> {
        let candidates = rotated_files(&self.cfg.path).ok()?;
        for p in candidates.iter().rev() {
            if let Some(l) = read_last_line(p) {
                return Some(l);
            }
        }
        None
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Some(w) = &mut self.out {
            let _ = w.flush();
            if self.cfg.fsync != Fsync::Never {
                let _ = w.get_ref().sync_data();
            }
        }
    }
}

fn rotation_index(base: &Path, p: &Path) -> Option<u64> {
    let base = base.file_name()?.to_str()?;
    let name = p.file_name()?.to_str()?;
    name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()
}

/// The files of a rotated log, oldest first: `path.1`, `path.2`, ..., then `path` itself
/// (when it exists). This is the order the chain runs through them.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let p = entry?.path();
        if let Some(n) = rotation_index(path, &p) {
            rotated.push((n, p));
        }
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    Ok(out)
}

fn read_last_line(p: &Path) -> Option<String> {
    let mut f = File::open(p).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

/// Emits each record as a `tracing` event (target `tower_shield::audit`, level INFO) with
/// the main fields as event fields and the full JSON line as `record`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn name(&self) -> String {
        "tracing".into()
    }
    fn write(&mut self, r: &AuditRecord, line: &str) -> io::Result<()> {
        tracing::info!(
            target: "tower_shield::audit",
            kind = r.kind,
            request_id = r.request_id.as_deref(),
            outcome = r.outcome.map(|o| o.as_str()),
            status = r.status,
            layer = r.layer.as_deref(),
            reason = r.reason.as_deref(),
            latency_us = r.latency_us,
            record = line,
            "audit"
        );
        Ok(())
    }
}

/// Calls a function for each record (custom destinations). An `Err` is a sink failure and
/// follows the configured [`FailurePolicy`](super::FailurePolicy).
pub struct CallbackSink<F> {
    name: String,
    f: F,
}

impl<F> CallbackSink<F>
where
    F: FnMut(&AuditRecord, &str) -> io::Result<()> + Send + 'static,
{
    /// A callback sink with a name for failure reports.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

impl<F> AuditSink for CallbackSink<F>
where
    F: FnMut(&AuditRecord, &str) -> io::Result<()> + Send + 'static,
{
    fn name(&self) -> String {
        format!("callback:{}", self.name)
    }
    fn write(&mut self, record: &AuditRecord, line: &str) -> io::Result<()> {
        (self.f)(record, line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;
    use std::time::SystemTime;

    #[test]
    fn rotates_by_age_and_by_size_without_splitting_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let clock = ManualClock::at_unix(1_700_000_000);
        let mut sink = FileSink::builder(&path)
            .rotate_every(Duration::from_secs(3600))
            .max_bytes(100)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        let rec = AuditRecord::new("request", SystemTime::UNIX_EPOCH);
        sink.write(&rec, "first").unwrap();
        sink.write(&rec, "second").unwrap();
        clock.advance(Duration::from_secs(3600));
        sink.write(&rec, "third").unwrap(); // too old: rotates first
        let long = "x".repeat(95);
        sink.write(&rec, &long).unwrap(); // too big together with "third": rotates
        sink.flush().unwrap();
        let files = rotated_files(&path).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jsonl.1", "a.jsonl.2", "a.jsonl"]);
        let read = |i: usize| std::fs::read_to_string(&files[i]).unwrap();
        assert_eq!(read(0), "first\nsecond\n");
        assert_eq!(read(1), "third\n");
        assert_eq!(read(2), format!("{long}\n"));
        assert_eq!(sink.last_line().as_deref(), Some(long.as_str()));
    }
}

#[cfg(test)]
mod tracing_tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<Vec<(String, String)>>>);

    struct V<'a>(&'a mut Vec<(String, String)>);
    impl Visit for V<'_> {
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push((f.name().to_owned(), v.to_owned()));
        }
        fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
            self.0.push((f.name().to_owned(), format!("{v:?}")));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            if e.metadata().target() == "tower_shield::audit" {
                e.record(&mut V(&mut self.0.lock().unwrap()));
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn tracing_sink_emits_the_record_as_an_event() {
        let cap = Capture::default();
        let mut rec = AuditRecord::new("request", SystemTime::UNIX_EPOCH);
        rec.request_id = Some("r-1".into());
        rec.outcome = Some(super::super::Outcome::Denied);
        let line = rec.to_json(100);
        tracing::subscriber::with_default(cap.clone(), || {
            TracingSink.write(&rec, &line).unwrap();
        });
        let fields = cap.0.lock().unwrap().clone();
        assert!(fields.contains(&("record".into(), line)));
        assert!(fields.contains(&("request_id".into(), "r-1".into())));
        assert!(fields.contains(&("outcome".into(), "denied".into())));
    }
}
