//! `RateLimit-Policy` and `RateLimit` header fields
//! (draft-ietf-httpapi-ratelimit-headers-10) and `Retry-After`.
//!
//! Both fields are Structured Field Lists of Items: a policy name (an SF String) with the
//! parameters `q` (quota), `w` (window seconds, non-zero), `qu` (quota unit), `r`
//! (remaining), `t` (seconds until more quota is available) and `pk` (partition key, an SF
//! Byte Sequence). This crate never puts a raw client key into `pk`.
//!
//! ```
//! use tower_shield::ratelimit::{RateLimitField, policy_value, ratelimit_value};
//!
//! let f = RateLimitField::new("monthly", 6000).window_secs(2_592_000).remaining(5873).reset_secs(3600);
//! assert_eq!(policy_value(&[f.clone()]).unwrap(), r#""monthly";q=6000;w=2592000"#);
//! assert_eq!(ratelimit_value(&[f]).unwrap(), r#""monthly";r=5873;t=3600"#);
//! ```

// the field templates serve the throttle and quota layers only
#![cfg_attr(not(any(feature = "throttle", feature = "quota")), allow(dead_code))]

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderValue;

/// Header name `RateLimit-Policy`.
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// Header name `RateLimit`.
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// `RateLimit-Policy` as a constant: each use is a fresh static name (no clone call).
pub(crate) const RATELIMIT_POLICY_NAME: http::HeaderName =
    http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit` as a constant.
pub(crate) const RATELIMIT_NAME: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// The two fields of one policy (or of one set of policies) on an admitted response, built
/// once and shared by the throttle and the quota layer.
///
/// `map` holds a placeholder `RateLimit` and `RateLimit-Policy: <policy>`: a response
/// without any header field gets a clone of it (the allocations an empty map needs anyway,
/// and no hashing of the two custom names) with the `RateLimit` value replaced; other
/// responses get both fields appended.
pub(crate) struct FieldTemplate {
    /// The `RateLimit-Policy` value (static: cloning it touches no reference count).
    pub(crate) policy: HeaderValue,
    map: http::HeaderMap,
}

impl std::fmt::Debug for FieldTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FieldTemplate").field(&self.policy).finish()
    }
}

impl FieldTemplate {
    /// Adds `RateLimit-Policy` (this template's) and `RateLimit: <ratelimit>` to `map`.
    #[inline]
    pub(crate) fn add_to(&self, map: &mut http::HeaderMap, ratelimit: HeaderValue) {
        if map.is_empty() {
            *map = self.map.clone();
            if let Some(v) = map.values_mut().next() {
                *v = ratelimit;
            }
        } else {
            map.reserve(2);
            map.append(RATELIMIT_POLICY_NAME, self.policy.clone());
            map.append(RATELIMIT_NAME, ratelimit);
        }
    }
}

/// The field template of a `RateLimit-Policy` value (`None` when it is not visible ASCII).
/// Templates are interned: each distinct value is leaked once per process (a handful of
/// configured policy strings; rebuilding a layer with the same policies reuses them).
pub(crate) fn intern_template(v: &HeaderValue) -> Option<&'static FieldTemplate> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static VALUES: Mutex<BTreeMap<&'static str, &'static FieldTemplate>> =
        Mutex::new(BTreeMap::new());
    let s = v.to_str().ok()?;
    let mut set = VALUES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = set.get(s) {
        return Some(t);
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    // `to_str` succeeded: only visible ASCII, which `from_static` accepts
    let policy = HeaderValue::from_static(leaked);
    // the placeholder first: it is the first value a clone's iterator yields
    let mut map = http::HeaderMap::with_capacity(2);
    map.append(RATELIMIT_NAME, HeaderValue::from_static(""));
    map.append(RATELIMIT_POLICY_NAME, policy.clone());
    let t: &'static FieldTemplate = Box::leak(Box::new(FieldTemplate { policy, map }));
    set.insert(leaked, t);
    Some(t)
}

/// One policy's state, rendered into both header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitField {
    /// Policy name (printable ASCII; other characters are replaced by `_`).
    pub policy: Cow<'static, str>,
    /// `q`: quota units the policy allows.
    pub quota: u64,
    /// `w`: window length in seconds (omitted when `None` or zero).
    pub window_secs: Option<u64>,
    /// `qu`: quota unit (omitted for the default `"requests"`).
    pub quota_unit: Option<&'static str>,
    /// `r`: remaining units.
    pub remaining: u64,
    /// `t`: seconds until additional quota is available (rounded up).
    pub reset_secs: Option<u64>,
    /// `pk`: a partition key (never the raw client key: a hash or opaque id).
    pub partition_key: Option<Vec<u8>>,
}

impl RateLimitField {
    /// A field for `policy` with quota `q`; remaining defaults to 0.
    pub fn new(policy: impl Into<Cow<'static, str>>, quota: u64) -> Self {
        Self {
            policy: policy.into(),
            quota,
            window_secs: None,
            quota_unit: None,
            remaining: 0,
            reset_secs: None,
            partition_key: None,
        }
    }
    /// Sets `w`.
    pub fn window_secs(mut self, w: u64) -> Self {
        self.window_secs = Some(w);
        self
    }
    /// Sets `r`.
    pub fn remaining(mut self, r: u64) -> Self {
        self.remaining = r;
        self
    }
    /// Sets `t` in whole seconds.
    pub fn reset_secs(mut self, t: u64) -> Self {
        self.reset_secs = Some(t);
        self
    }
    /// Sets `t` from a duration, rounded up.
    pub fn reset_after(mut self, t: Duration) -> Self {
        self.reset_secs = Some(ceil_secs(t));
        self
    }
    /// Sets `qu`.
    pub fn quota_unit(mut self, unit: &'static str) -> Self {
        self.quota_unit = Some(unit);
        self
    }
    /// Sets `pk`.
    pub fn partition_key(mut self, pk: Vec<u8>) -> Self {
        self.partition_key = Some(pk);
        self
    }
}

/// Rounds a duration up to whole seconds (0 stays 0).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `Retry-After` delay-seconds for a wait: rounded up and at least 1.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tower_shield::ratelimit::retry_after_secs(Duration::from_millis(1)), 1);
/// assert_eq!(tower_shield::ratelimit::retry_after_secs(Duration::from_millis(2001)), 3);
/// assert_eq!(tower_shield::ratelimit::retry_after_secs(Duration::ZERO), 1);
/// ```
pub fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

fn push_name(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

fn push_pk(out: &mut String, pk: &Option<Vec<u8>>) {
    if let Some(pk) = pk {
        out.push_str(";pk=:");
        push_base64(out, pk);
        out.push(':');
    }
}

fn push_base64(out: &mut String, data: &[u8]) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
}

/// Renders the `RateLimit-Policy` field value for the given policies.
pub fn policy_value(fields: &[RateLimitField]) -> Option<HeaderValue> {
    if fields.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(48 * fields.len());
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_name(&mut out, &f.policy);
        let _ = write!(out, ";q={}", f.quota);
        if let Some(unit) = f.quota_unit {
            let _ = write!(out, ";qu=\"{unit}\"");
        }
        if let Some(w) = f.window_secs.filter(|w| *w > 0) {
            let _ = write!(out, ";w={w}");
        }
        push_pk(&mut out, &f.partition_key);
    }
    HeaderValue::from_str(&out).ok()
}

/// Renders the `RateLimit` field value for the given policies.
pub fn ratelimit_value(fields: &[RateLimitField]) -> Option<HeaderValue> {
    if fields.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(32 * fields.len());
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_name(&mut out, &f.policy);
        let _ = write!(out, ";r={}", f.remaining);
        if let Some(t) = f.reset_secs {
            let _ = write!(out, ";t={t}");
        }
        push_pk(&mut out, &f.partition_key);
    }
    HeaderValue::from_str(&out).ok()
}

/// Appends both fields to a header map (no-op for an empty slice).
pub fn append_headers(headers: &mut http::HeaderMap, fields: &[RateLimitField]) {
    if let Some(v) = policy_value(fields) {
        headers.append(RATELIMIT_POLICY.clone(), v);
    }
    if let Some(v) = ratelimit_value(fields) {
        headers.append(RATELIMIT.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_policies_and_pk() {
        let a = RateLimitField::new("burst", 100)
            .window_secs(60)
            .remaining(50)
            .reset_secs(30);
        let b = RateLimitField::new("da\"ily\n", 1000)
            .window_secs(86400)
            .remaining(999)
            .partition_key(b"trial121323".to_vec());
        assert_eq!(
            policy_value(&[a.clone(), b.clone()]).unwrap(),
            r#""burst";q=100;w=60, "da\"ily_";q=1000;w=86400;pk=:dHJpYWwxMjEzMjM=:"#
        );
        assert_eq!(
            ratelimit_value(&[a, b]).unwrap(),
            r#""burst";r=50;t=30, "da\"ily_";r=999;pk=:dHJpYWwxMjEzMjM=:"#
        );
    }

    #[test]
    fn zero_window_is_omitted_and_unit_is_quoted() {
        let f = RateLimitField::new("c", 4)
            .window_secs(0)
            .quota_unit("concurrent-requests");
        assert_eq!(
            policy_value(&[f]).unwrap(),
            r#""c";q=4;qu="concurrent-requests""#
        );
    }

    #[test]
    fn templates_are_interned_and_fill_empty_and_non_empty_maps_alike() {
        let p = HeaderValue::from_static(r#""t";q=5;w=60"#);
        let t = intern_template(&p).unwrap();
        assert!(std::ptr::eq(t, intern_template(&p.clone()).unwrap()));
        assert!(intern_template(&HeaderValue::from_bytes(b"\xff").unwrap()).is_none());
        let mut empty = http::HeaderMap::new();
        t.add_to(&mut empty, HeaderValue::from_static(r#""t";r=4;t=60"#));
        let mut typed = http::HeaderMap::new();
        typed.insert("content-type", HeaderValue::from_static("text/plain"));
        t.add_to(&mut typed, HeaderValue::from_static(r#""t";r=4;t=60"#));
        for m in [&empty, &typed] {
            assert_eq!(m["ratelimit-policy"], r#""t";q=5;w=60"#);
            assert_eq!(m["ratelimit"], r#""t";r=4;t=60"#);
            assert_eq!(m.get_all("ratelimit").iter().count(), 1);
        }
        assert_eq!((empty.len(), typed.len()), (2, 3));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
    }
}
