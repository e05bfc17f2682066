//! The audit record and its injection-proof JSON-lines encoding.
//!
//! Records are encoded by hand rather than through `serde_json`, for two reasons: the
//! encoding must escape more than JSON requires (U+2028/U+2029, C1 controls, the ANSI
//! escape character, bidirectional overrides), and the hash chain needs stable canonical
//! bytes (field order is fixed, so the bytes a MAC covers are the bytes in the file).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::facts::InputFinding;

/// Marker appended to a capped field.
pub const TRUNCATED: &str = "...[truncated]";

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The inner service answered (any status below 500 that no layer refused).
    Served,
    /// A layer refused the request (the [`Denial`](crate::Denial) says which and why).
    Denied,
    /// The inner service failed: an error, a 5xx response (a caught panic is a 500), or a
    /// gRPC `INTERNAL`/`UNKNOWN`/`UNAVAILABLE`/`DATA_LOSS` status.
    Error,
    /// The response future was dropped before it completed (the client went away).
    Cancelled,
}

impl Outcome {
    /// The name written to the record (`served`, `denied`, `error`, `cancelled`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The principal as recorded: identifiers only, never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalRecord {
    /// Stable id.
    pub id: String,
    /// Credential kind (`api_key`, `jwt`, ...).
    pub kind: &'static str,
    /// API key id.
    pub key_id: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// OAuth2 client id.
    pub client_id: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
}

/// A shadow-mode denial: what a policy would have refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    /// Layer.
    pub layer: String,
    /// Reason.
    pub reason: String,
    /// Status it would have answered.
    pub status: u16,
}

/// One audit record, already redacted. Field names and order are the JSON schema (see the
/// [module docs](super)).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When the request arrived (or the event happened).
    pub timestamp: SystemTime,
    /// `request`, or for records about the log itself: `dropped`, `sink_failed`,
    /// `sink_recovered`.
    pub kind: &'static str,
    /// Request id.
    pub request_id: Option<String>,
    /// Resolved client address.
    pub client_ip: Option<IpAddr>,
    /// Authenticated principal.
    pub principal: Option<PrincipalRecord>,
    /// Method.
    pub method: Option<String>,
    /// Matched route template.
    pub route: Option<String>,
    /// Path and query, redacted and capped.
    pub path: Option<String>,
    /// HTTP status.
    pub status: Option<u16>,
    /// gRPC status (from a trailers-only response).
    pub grpc_status: Option<u16>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// The layer that refused, for denials (`audit` when the audit sink failed closed).
    pub layer: Option<String>,
    /// Machine-readable reason (denial reason, `service_error`, `panic`, `client_gone`).
    pub reason: Option<String>,
    /// Latency in microseconds.
    pub latency_us: Option<u64>,
    /// Request body size, where known.
    pub bytes_in: Option<u64>,
    /// Response body size, where known.
    pub bytes_out: Option<u64>,
    /// User agent, redacted and capped.
    pub user_agent: Option<String>,
    /// Configured headers, redacted and capped.
    pub headers: Vec<(String, String)>,
    /// Sanitizer findings.
    pub findings: Vec<InputFinding>,
    /// Shadow-mode denials.
    pub shadow: Vec<ShadowRecord>,
    /// For `dropped`/`sink_failed`/`sink_recovered`: how many records.
    pub count: Option<u64>,
    /// For records about the log itself: a message written by the crate.
    pub message: Option<String>,
}

impl AuditRecord {
    /// An empty record of the given kind.
    pub fn new(kind: &'static str, timestamp: SystemTime) -> Self {
        Self {
            timestamp,
            kind,
            request_id: None,
            client_ip: None,
            principal: None,
            method: None,
            route: None,
            path: None,
            status: None,
            grpc_status: None,
            outcome: None,
            layer: None,
            reason: None,
            latency_us: None,
            bytes_in: None,
            bytes_out: None,
            user_agent: None,
            headers: Vec::new(),
            findings: Vec::new(),
            shadow: Vec::new(),
            count: None,
            message: None,
        }
    }

    /// Encodes the record as a JSON object **without** its closing brace, so a chain can
    /// append `seq` and `mac`. Every string is escaped with [`push_json_str`] and capped at
    /// `cap` bytes.
    pub fn encode_open(&self, out: &mut Vec<u8>, cap: usize) {
        self.encode_open_with(out, cap, cap)
    }

    /// Like [`encode_open`](Self::encode_open), with its own cap for the path (the layer's
    /// `field_caps(field, path)`).
    pub fn encode_open_with(&self, out: &mut Vec<u8>, cap: usize, path_cap: usize) {
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, self.timestamp);
        out.extend_from_slice(b"\",\"kind\":");
        push_json_str(out, self.kind, cap);
        let s = |out: &mut Vec<u8>, key: &str, v: &Option<String>| {
            if let Some(v) = v {
                field(out, key);
                push_json_str(out, v, cap);
            }
        };
        s(out, "request_id", &self.request_id);
        if let Some(ip) = self.client_ip {
            field(out, "client_ip");
            out.push(b'"');
            let _ = write!(VecWriter(out), "{ip}");
            out.push(b'"');
        }
        if let Some(p) = &self.principal {
            field(out, "principal");
            out.extend_from_slice(b"{\"id\":");
            push_json_str(out, &p.id, cap);
            out.extend_from_slice(b",\"kind\":");
            push_json_str(out, p.kind, cap);
            s(out, "key_id", &p.key_id);
            s(out, "subject", &p.subject);
            s(out, "client_id", &p.client_id);
            s(out, "tenant", &p.tenant);
            out.push(b'}');
        }
        s(out, "method", &self.method);
        s(out, "route", &self.route);
        if let Some(p) = &self.path {
            field(out, "path");
            push_json_str(out, p, path_cap);
        }
        num(out, "status", self.status.map(u64::from));
        num(out, "grpc_status", self.grpc_status.map(u64::from));
        if let Some(o) = self.outcome {
            field(out, "outcome");
            push_json_str(out, o.as_str(), cap);
        }
        s(out, "layer", &self.layer);
        s(out, "reason", &self.reason);
        num(out, "latency_us", self.latency_us);
        num(out, "bytes_in", self.bytes_in);
        num(out, "bytes_out", self.bytes_out);
        s(out, "user_agent", &self.user_agent);
        if !self.headers.is_empty() {
            field(out, "headers");
            out.push(b'{');
            for (i, (k, v)) in self.headers.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_str(out, k, cap);
                out.push(b':');
                push_json_str(out, v, cap);
            }
            out.push(b'}');
        }
        if !self.findings.is_empty() {
            field(out, "findings");
            out.push(b'[');
            for (i, f) in self.findings.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"location\":");
                push_json_str(out, &f.location, cap);
                out.extend_from_slice(b",\"kind\":");
                push_json_str(out, f.kind, cap);
                out.extend_from_slice(b",\"rule\":");
                push_json_str(out, f.rule, cap);
                out.extend_from_slice(b",\"action\":");
                push_json_str(out, f.action, cap);
                out.push(b'}');
            }
            out.push(b']');
        }
        if !self.shadow.is_empty() {
            field(out, "shadow");
            out.push(b'[');
            for (i, d) in self.shadow.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"layer\":");
                push_json_str(out, &d.layer, cap);
                out.extend_from_slice(b",\"reason\":");
                push_json_str(out, &d.reason, cap);
                out.extend_from_slice(b",\"status\":");
                let _ = write!(VecWriter(out), "{}", d.status);
                out.push(b'}');
            }
            out.push(b']');
        }
        num(out, "count", self.count);
        s(out, "message", &self.message);
    }

    /// The complete JSON line (no trailing newline, no chain fields).
    pub fn to_json(&self, cap: usize) -> String {
        let mut out = Vec::with_capacity(256);
        self.encode_open(&mut out, cap);
        out.push(b'}');
        // The encoder writes only valid UTF-8 (escaped strings, ASCII syntax).
        String::from_utf8(out).unwrap_or_default()
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn field(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn num(out: &mut Vec<u8>, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        field(out, key);
        let _ = write!(VecWriter(out), "{v}");
    }
}

/// Whether a character must be written as a `\uXXXX` escape: C0 and C1 controls (CR, LF,
/// ESC...), DEL, the Unicode line and paragraph separators, and bidirectional overrides.
fn must_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Writes `s` as a JSON string literal (with quotes), escaping `"`, `\`, and every
/// character that could end a line or rewrite a terminal ([`must_escape`]); caps the value
/// at `cap` bytes (on a character boundary) followed by [`TRUNCATED`].
pub fn push_json_str(out: &mut Vec<u8>, s: &str, cap: usize) {
    let (s, cut) = cap_str(s, cap);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            c if must_escape(c) => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => {
                let _ = write!(VecWriter(out), "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&bytes[start..]);
    if cut {
        out.extend_from_slice(TRUNCATED.as_bytes());
    }
    out.push(b'"');
}

/// Cuts `s` to at most `cap` bytes on a character boundary; says whether it was cut.
pub fn cap_str(s: &str, cap: usize) -> (&str, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// Writes an RFC 3339 UTC timestamp with microseconds (`2026-11-22T03:42:06.123456Z`).
pub fn push_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, day) = civil_from_days(days);
    let _ = write!(
        VecWriter(out),
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_micros()
    );
}

/// RFC 3339 timestamp as a string.
pub fn rfc3339(t: SystemTime) -> String {
    let mut v = Vec::with_capacity(27);
    push_rfc3339(&mut v, t);
    String::from_utf8(v).unwrap_or_default()
}

/// Days since 1970-01-01 to (year, month, day) — Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_318_926_123_456);
        assert_eq!(rfc3339(t), "2026-11-22T03:42:06.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn hostile_strings_stay_inside_one_json_string() {
        let hostile =
            "a\"b\\c\r\n{\"kind\":\"forged\"}\u{1b}[31m\u{2028}\u{2029}\u{85}\u{202e}\u{7f}";
        let mut out = Vec::new();
        push_json_str(&mut out, hostile, 1000);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\n') && !text.contains('\r') && !text.contains('\u{1b}'));
        assert!(!text.contains('\u{2028}') && !text.contains('\u{2029}'));
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, hostile);
    }

    #[test]
    fn long_fields_are_capped_with_a_marker_on_a_char_boundary() {
        let mut out = Vec::new();
        push_json_str(&mut out, &"é".repeat(100), 11);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, format!("{}{TRUNCATED}", "é".repeat(5)));
    }
}
