//! A streaming, iterative JSON scanner: validates the grammar, enforces the structure
//! limits, and hands every string (keys and values) with its location to a visitor, which
//! may ask for values to be replaced. No `serde_json::Value` is built and nothing recurses:
//! a body of 100 000 `[` is refused at the depth limit without touching the stack.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::ops::Range;

use super::detect::{B_DOT, B_NONPLAIN, B_STOP, CLASS, classes};
use super::policy::Limits;

/// One segment of the location of a string.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg {
    /// An object member; the raw key content (between the quotes) in the input.
    Key { start: u32, end: u32, escaped: bool },
    /// An array element.
    Index(u32),
}

/// The location of a string inside the document.
#[derive(Clone, Copy)]
pub(crate) struct JsonPath<'a> {
    input: &'a str,
    segs: &'a [Seg],
}

impl<'a> JsonPath<'a> {
    fn key_eq(&self, seg: &Seg, name: &str) -> bool {
        match *seg {
            Seg::Key {
                start,
                end,
                escaped,
            } => {
                let raw = &self.input[start as usize..end as usize];
                if escaped {
                    let mut s = String::new();
                    unescape(raw, &mut s).is_ok() && s == name
                } else {
                    raw == name
                }
            }
            Seg::Index(i) => name.parse::<u32>().ok() == Some(i) && !name.starts_with('+'),
        }
    }

    /// Whether the location is inside a member named `name` (at any depth).
    pub(crate) fn has_name(&self, name: &str) -> bool {
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Key { .. }) && self.key_eq(s, name))
    }

    /// Whether the location is at or below a pointer pattern (`*` matches any one segment).
    pub(crate) fn matches(&self, pattern: &[String]) -> bool {
        pattern.len() <= self.segs.len()
            && pattern
                .iter()
                .zip(self.segs)
                .all(|(p, s)| p == "*" || self.key_eq(s, p))
    }

    /// Appends the JSON pointer (RFC 6901) of this location to `out`.
    pub(crate) fn render(&self, out: &mut String, mut segment: impl FnMut(&str, &mut String)) {
        if self.segs.is_empty() {
            return;
        }
        let mut tmp = String::new();
        for s in self.segs {
            out.push('/');
            match *s {
                Seg::Key {
                    start,
                    end,
                    escaped,
                } => {
                    let raw = &self.input[start as usize..end as usize];
                    tmp.clear();
                    if escaped {
                        let _ = unescape(raw, &mut tmp);
                    } else {
                        tmp.push_str(raw);
                    }
                    segment(&tmp.replace('~', "~0").replace('/', "~1"), out);
                }
                Seg::Index(i) => out.push_str(&i.to_string()),
            }
        }
    }
}

/// A violated structure limit or a grammar error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    Syntax,
    InvalidEscape,
    Depth,
    Keys,
    ArrayLen,
    StringLen,
    DuplicateKey,
}

/// Why a scan stopped.
#[derive(Debug)]
pub(crate) enum ScanError<S> {
    Json(JsonError),
    Stop(S),
}

impl<S> From<JsonError> for ScanError<S> {
    fn from(e: JsonError) -> Self {
        ScanError::Json(e)
    }
}

/// A replacement of one string token (quotes included) by an encoded JSON string.
#[derive(Debug)]
pub(crate) struct Edit {
    pub(crate) range: Range<usize>,
    pub(crate) replacement: String,
}

/// Receives every string of the document.
pub(crate) trait JsonVisitor {
    /// Why the visitor stops the scan.
    type Stop;
    /// A key (`is_key`, path: the member being defined) or a string value, with the byte
    /// classes of the value (`mask`: [`classes`]`(value)`). Returning a new value (values
    /// only) replaces it in the output.
    fn visit(
        &mut self,
        path: JsonPath<'_>,
        value: &str,
        mask: u32,
        is_key: bool,
    ) -> Result<Option<String>, Self::Stop>;

    /// Whether `visit` would surely do nothing with this string (its bytes; then it is not
    /// called). `mask` holds at least the [`SUMMARY`] bits of [`classes`]`(value)` (the
    /// scan computes the other classes only for strings it visits).
    fn skip(&self, _value: &[u8], _mask: u32) -> bool {
        false
    }
}

/// An open object or array.
#[derive(Clone, Copy)]
struct Frame {
    is_obj: bool,
    /// The object's keys moved from the linear list to a hash set (the last of `sets`).
    big: bool,
    count: u32,
    /// One bit per key hash seen while the keys are compared linearly: a key whose bit is
    /// not set yet cannot be a duplicate.
    bloom: u64,
    /// Where this object's keys start in the key list (the keys of the open objects are
    /// kept in one list, innermost last).
    keys_start: u32,
}

/// A key seen in an object: its raw content range, whether it has escapes, and the hash
/// of its decoded form.
#[derive(Clone, Copy)]
struct KeyRef {
    start: u32,
    end: u32,
    escaped: bool,
    hash: u64,
}

/// The scan's buffers, kept per thread and reused from one document to the next.
#[derive(Default)]
struct Scratch {
    frames: Vec<Frame>,
    segs: Vec<Seg>,
    keys: Vec<KeyRef>,
    /// The decoded form of the current string value with escapes.
    text: String,
}

impl Scratch {
    /// Empties the buffers; drops those a large document grew past what typical ones need.
    fn reset(&mut self) {
        const KEEP: usize = 1024;
        self.frames.clear();
        self.segs.clear();
        self.keys.clear();
        self.text.clear();
        if self.frames.capacity() > KEEP {
            self.frames = Vec::new();
        }
        if self.segs.capacity() > KEEP {
            self.segs = Vec::new();
        }
        if self.keys.capacity() > KEEP {
            self.keys = Vec::new();
        }
        if self.text.capacity() > 16 * KEEP {
            self.text = String::new();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[inline(always)]
fn word(c: &[u8]) -> u64 {
    u64::from_le_bytes(c.try_into().expect("8 bytes"))
}

/// A cheap tag of a decoded key (its length, first and last 8 bytes), to compare keys by
/// tag first: equal keys have equal tags.
#[inline]
fn key_hash(k: &[u8]) -> u64 {
    key_hash_at(k, 0, k.len())
}

/// [`key_hash`] of `b[s..s + n]`, loading whole words from `b` where it can.
#[inline(always)]
fn key_hash_at(b: &[u8], s: usize, n: usize) -> u64 {
    let tag = (n as u64) << 56;
    if n >= 8 {
        word(&b[s..s + 8]) ^ word(&b[s + n - 8..s + n]).rotate_left(29) ^ tag
    } else if let Some(c) = b.get(s..s + 8) {
        // the first 8 bytes, cut to the key's `n`
        (word(c) & ((1u64 << (8 * n)) - 1)) ^ tag
    } else {
        let mut v = 0u64;
        for (j, &c) in b[s..s + n].iter().enumerate() {
            v |= (c as u64) << (8 * j);
        }
        v ^ tag
    }
}

/// Objects with more keys than this switch from linear comparison to a hash set.
const LINEAR_KEYS: usize = 16;

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // most tokens are not preceded by whitespace
    if b.get(i).is_some_and(|c| *c > b' ') {
        return i;
    }
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// The bits of [`CLASS`] the plain-string pre-filter looks at (`inputs::candidate_bytes`):
/// what [`scan_string`] reports about a string's raw content.
pub(crate) const SUMMARY: u32 = B_NONPLAIN | B_DOT;

/// Scans a string token starting after the opening quote at `i`. Returns the end of the
/// raw content (index of the closing quote), whether it contains escapes, and the
/// [`SUMMARY`] bits of [`classes`] of the raw content (whether it has a byte that is not
/// plain, and a `.`). The full classes of a string are computed only for strings that are
/// visited.
#[inline(always)]
fn scan_string(b: &[u8], mut i: usize) -> Result<(usize, bool, u32), JsonError> {
    let mut escaped = false;
    let mut summary = 0u32;
    loop {
        // 16 bytes at a time while 16 are left in the input (the bytes after the closing
        // quote are read but not counted), then byte by byte
        'plain: loop {
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if let Some(c) = b.get(i..i + 16) {
                let (stop, nonplain, dot) = sse2::classify16(c.try_into().expect("16 bytes"));
                // the bytes before the first stop byte (all 16 when there is none)
                let before = stop.wrapping_sub(1) & !stop;
                if nonplain & before != 0 {
                    summary |= B_NONPLAIN;
                }
                if dot & before != 0 {
                    summary |= B_DOT;
                }
                if stop != 0 {
                    i += stop.trailing_zeros() as usize;
                    break 'plain;
                }
                i += 16;
                continue 'plain;
            }
            while i < b.len() {
                let t = CLASS[b[i] as usize];
                if t & B_STOP != 0 {
                    break;
                }
                summary |= t & SUMMARY;
                i += 1;
            }
            break 'plain;
        }
        match b.get(i) {
            Some(b'"') => return Ok((i, escaped, summary)),
            Some(b'\\') => {
                escaped = true;
                match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => {
                        if i + 6 > b.len() || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) {
                            return Err(JsonError::InvalidEscape);
                        }
                        i += 6;
                    }
                    _ => return Err(JsonError::InvalidEscape),
                }
            }
            _ => return Err(JsonError::Syntax),
        }
    }
}

/// SSE2 (part of every x86_64 CPU) classification of 16 bytes for [`scan_string`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8, _mm_sub_epi8,
    };

    #[inline]
    #[target_feature(enable = "sse2")]
    fn splat(c: u8) -> __m128i {
        _mm_set1_epi8(c as i8)
    }

    /// `x <= max` per byte, unsigned.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn at_most(x: __m128i, max: u8) -> __m128i {
        _mm_cmpeq_epi8(_mm_min_epu8(x, splat(max)), x)
    }

    /// Bit `k` of each mask is about byte `k`: (ends the plain part of a string: `"`, `\`
    /// or a control character below 0x20; is not plain: not an ASCII letter, digit, `_`,
    /// `-`, `@` or `.` (`B_NONPLAIN`); is `.`).
    #[inline(always)]
    #[allow(unsafe_code)]
    pub(super) fn classify16(c: &[u8; 16]) -> (u32, u32, u32) {
        // SAFETY: the module is compiled only where SSE2 is enabled for the whole build
        // (`target_feature = "sse2"`, the x86_64 baseline), so the feature is present.
        unsafe { classify16_sse2(c) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn classify16_sse2(c: &[u8; 16]) -> (u32, u32, u32) {
        let lo = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
        let v = _mm_set_epi64x(hi as i64, lo as i64);
        let stop = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(v, splat(b'"')),
                _mm_cmpeq_epi8(v, splat(b'\\')),
            ),
            at_most(v, 0x1f),
        );
        let digit = at_most(_mm_sub_epi8(v, splat(b'0')), 9);
        // `| 0x20` maps exactly `A-Z` onto `a-z`
        let alpha = at_most(_mm_sub_epi8(_mm_or_si128(v, splat(0x20)), splat(b'a')), 25);
        let dot = _mm_cmpeq_epi8(v, splat(b'.'));
        let other = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(v, splat(b'_')),
                _mm_cmpeq_epi8(v, splat(b'-')),
            ),
            _mm_or_si128(_mm_cmpeq_epi8(v, splat(b'@')), dot),
        );
        let plain = _mm_or_si128(_mm_or_si128(digit, alpha), other);
        (
            _mm_movemask_epi8(stop) as u32,
            !(_mm_movemask_epi8(plain) as u32) & 0xffff,
            _mm_movemask_epi8(dot) as u32,
        )
    }
}

fn hex4(s: &[u8]) -> u32 {
    s.iter().fold(0, |acc, &c| {
        acc * 16 + (c as char).to_digit(16).unwrap_or(0)
    })
}

/// Decodes the raw content of a string with escapes (already grammar-checked).
pub(crate) fn unescape(raw: &str, out: &mut String) -> Result<(), JsonError> {
    let b = raw.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&raw[run..i]);
        let c = b[i + 1];
        i += 2;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(&b[i..i + 4]);
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') && i + 6 <= b.len() {
                        let lo = hex4(&b[i + 2..i + 6]);
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err(JsonError::InvalidEscape);
                        }
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else {
                        return Err(JsonError::InvalidEscape);
                    }
                } else {
                    hi
                };
                char::from_u32(cp).ok_or(JsonError::InvalidEscape)?
            }
            _ => return Err(JsonError::InvalidEscape),
        };
        out.push(ch);
        run = i;
    }
    out.push_str(&raw[run..]);
    Ok(())
}

fn scan_number(b: &[u8], mut i: usize) -> Result<usize, JsonError> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        _ => return Err(JsonError::Syntax),
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return Err(JsonError::Syntax);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return Err(JsonError::Syntax);
        }
    }
    Ok(i)
}

/// Scans a whole document (valid UTF-8, already size-checked). Returns the edits the visitor
/// asked for, in document order.
pub(crate) fn scan<V: JsonVisitor>(
    input: &str,
    limits: &Limits,
    visitor: &mut V,
) -> Result<Vec<Edit>, ScanError<V::Stop>> {
    // the buffers are reused between documents on the same thread
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut sc) => {
            let r = scan_with(input, limits, visitor, &mut sc);
            sc.reset();
            r
        }
        Err(_) => scan_with(input, limits, visitor, &mut Scratch::default()),
    })
}

fn scan_with<'a, V: JsonVisitor>(
    input: &'a str,
    limits: &Limits,
    visitor: &mut V,
    sc: &mut Scratch,
) -> Result<Vec<Edit>, ScanError<V::Stop>> {
    let b = input.as_bytes();
    if b.len() > u32::MAX as usize {
        return Err(JsonError::StringLen.into());
    }
    let Scratch {
        frames,
        segs,
        keys,
        text,
    } = sc;
    // the key sets of the open objects with more than `LINEAR_KEYS` keys
    let mut sets: Vec<HashSet<Cow<'a, str>>> = Vec::new();
    let mut edits = Vec::new();
    let mut i = skip_ws(b, 0);
    // expecting a value at `i`
    'value: loop {
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                let is_obj = open == b'{';
                if frames.len() >= limits.max_depth {
                    return Err(JsonError::Depth.into());
                }
                i = skip_ws(b, i + 1);
                let close = if is_obj { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    frames.push(Frame {
                        is_obj,
                        big: false,
                        count: 1,
                        bloom: 0,
                        keys_start: keys.len() as u32,
                    });
                    if is_obj {
                        let top = frames.last_mut().expect("just pushed");
                        i = member(
                            b, input, i, limits, top, false, segs, keys, &mut sets, visitor,
                        )?;
                    } else {
                        segs.push(Seg::Index(0));
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let (end, escaped, mut mask) = scan_string(b, i + 1)?;
                if end - (i + 1) > limits.max_string_len {
                    return Err(JsonError::StringLen.into());
                }
                if escaped {
                    text.clear();
                    unescape(&input[i + 1..end], text)?;
                    mask = classes(text.as_bytes());
                }
                // the value as a `&str` only when it is visited
                let value = if escaped {
                    text.as_bytes()
                } else {
                    &b[i + 1..end]
                };
                if !visitor.skip(value, mask) {
                    if !escaped {
                        mask = classes(value);
                    }
                    let value = if escaped {
                        text.as_str()
                    } else {
                        &input[i + 1..end]
                    };
                    let path = JsonPath { input, segs };
                    if let Some(new) = visitor
                        .visit(path, value, mask, false)
                        .map_err(ScanError::Stop)?
                    {
                        edits.push(Edit {
                            range: i..end + 1,
                            replacement: new,
                        });
                    }
                }
                i = end + 1;
            }
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(b'-' | b'0'..=b'9') => i = scan_number(b, i)?,
            _ => return Err(JsonError::Syntax.into()),
        }
        // after a value
        loop {
            i = skip_ws(b, i);
            let Some(top) = frames.last_mut() else {
                if i != b.len() {
                    return Err(JsonError::Syntax.into());
                }
                return Ok(edits);
            };
            match b.get(i) {
                Some(b',') => {
                    top.count += 1;
                    i = skip_ws(b, i + 1);
                    if top.is_obj {
                        if top.count as usize > limits.max_keys {
                            return Err(JsonError::Keys.into());
                        }
                        i = member(
                            b, input, i, limits, top, true, segs, keys, &mut sets, visitor,
                        )?;
                    } else {
                        if top.count as usize > limits.max_array_len {
                            return Err(JsonError::ArrayLen.into());
                        }
                        if let Some(last) = segs.last_mut() {
                            *last = Seg::Index(top.count - 1);
                        }
                    }
                    continue 'value;
                }
                Some(&c) if c == if top.is_obj { b'}' } else { b']' } => {
                    i += 1;
                    segs.pop();
                    let f = *top;
                    frames.pop();
                    keys.truncate(f.keys_start as usize);
                    if f.big {
                        sets.pop();
                    }
                }
                _ => return Err(JsonError::Syntax.into()),
            }
        }
    }
}

/// Parses `"key" :` at `i` (inside the object `top`), checks duplicates, visits the key,
/// pushes its segment (or puts it in place of the previous member's, `replace`), and
/// returns the index of the value.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn member<'a, V: JsonVisitor>(
    b: &[u8],
    input: &'a str,
    i: usize,
    limits: &Limits,
    top: &mut Frame,
    replace: bool,
    segs: &mut Vec<Seg>,
    keys: &mut Vec<KeyRef>,
    sets: &mut Vec<HashSet<Cow<'a, str>>>,
    visitor: &mut V,
) -> Result<usize, ScanError<V::Stop>> {
    if b.get(i) != Some(&b'"') {
        return Err(JsonError::Syntax.into());
    }
    let (end, escaped, mut mask) = scan_string(b, i + 1)?;
    if end - (i + 1) > limits.max_string_len {
        return Err(JsonError::StringLen.into());
    }
    let mut owned = String::new();
    // the key as a `&str` only when it is escaped or visited
    let key = if escaped {
        unescape(&input[i + 1..end], &mut owned)?;
        mask = classes(owned.as_bytes());
        owned.as_bytes()
    } else {
        &b[i + 1..end]
    };
    if limits.reject_duplicate_keys {
        let decoded = |s: u32, e: u32, esc: bool| -> Result<Cow<'a, str>, JsonError> {
            let raw = &input[s as usize..e as usize];
            Ok(if esc {
                let mut o = String::new();
                unescape(raw, &mut o)?;
                Cow::Owned(o)
            } else {
                Cow::Borrowed(raw)
            })
        };
        if top.big {
            let set = sets.last_mut().expect("a large object has a key set");
            if !set.insert(decoded((i + 1) as u32, end as u32, escaped)?) {
                return Err(JsonError::DuplicateKey.into());
            }
        } else {
            let h = if escaped {
                key_hash(key)
            } else {
                key_hash_at(b, i + 1, end - (i + 1))
            };
            let bit = 1u64 << (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58);
            let start = top.keys_start as usize;
            if top.bloom & bit != 0 {
                for k in &keys[start..] {
                    // the hash of the decoded key first; the keys themselves on a match
                    if k.hash == h && decoded(k.start, k.end, k.escaped)?.as_bytes() == key {
                        return Err(JsonError::DuplicateKey.into());
                    }
                }
            }
            top.bloom |= bit;
            keys.push(KeyRef {
                start: (i + 1) as u32,
                end: end as u32,
                escaped,
                hash: h,
            });
            if keys.len() - start > LINEAR_KEYS {
                let mut set = HashSet::with_capacity(2 * (keys.len() - start));
                for k in keys.drain(start..) {
                    set.insert(decoded(k.start, k.end, k.escaped)?);
                }
                top.big = true;
                sets.push(set);
            }
        }
    }
    let seg = Seg::Key {
        start: (i + 1) as u32,
        end: end as u32,
        escaped,
    };
    match segs.last_mut() {
        Some(last) if replace => *last = seg,
        _ => segs.push(seg),
    }
    if !visitor.skip(key, mask) {
        if !escaped {
            mask = classes(key);
        }
        let key = if escaped {
            owned.as_str()
        } else {
            &input[i + 1..end]
        };
        let path = JsonPath { input, segs };
        visitor
            .visit(path, key, mask, true)
            .map_err(ScanError::Stop)?;
    }
    let j = skip_ws(b, end + 1);
    if b.get(j) != Some(&b':') {
        return Err(JsonError::Syntax.into());
    }
    Ok(skip_ws(b, j + 1))
}

/// Applies edits (in document order) to the input.
pub(crate) fn apply(input: &str, edits: &[Edit]) -> String {
    let extra: usize = edits.iter().map(|e| e.replacement.len()).sum();
    let mut out = String::with_capacity(input.len() + extra);
    let mut at = 0;
    for e in edits {
        out.push_str(&input[at..e.range.start]);
        out.push_str(&e.replacement);
        at = e.range.end;
    }
    out.push_str(&input[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(String, String, bool)>);
    impl JsonVisitor for Collect {
        type Stop = ();
        fn visit(
            &mut self,
            p: JsonPath<'_>,
            v: &str,
            m: u32,
            k: bool,
        ) -> Result<Option<String>, ()> {
            assert_eq!(m, classes(v.as_bytes()), "{v:?}");
            let mut loc = String::new();
            p.render(&mut loc, |s, o| o.push_str(s));
            self.0.push((loc, v.to_owned(), k));
            Ok(None)
        }
    }

    fn run(s: &str) -> Result<Vec<(String, String, bool)>, JsonError> {
        let mut c = Collect(Vec::new());
        match scan(s, &Limits::default(), &mut c) {
            Ok(_) => Ok(c.0),
            Err(ScanError::Json(e)) => Err(e),
            Err(ScanError::Stop(())) => unreachable!(),
        }
    }

    #[test]
    fn visits_keys_and_values_with_pointers() {
        let v = run(r#" {"a": [1, "x", {"b~/": "y\u00e9\n"}], "c": null, "d": -1.5e3} "#).unwrap();
        let got: Vec<_> = v
            .iter()
            .map(|(l, v, k)| (l.as_str(), v.as_str(), *k))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/a", "a", true),
                ("/a/1", "x", false),
                ("/a/2/b~0~1", "b~/", true),
                ("/a/2/b~0~1", "yé\n", false),
                ("/c", "c", true),
                ("/d", "d", true),
            ]
        );
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        for s in [
            "1",
            "-0",
            "01",
            "1.",
            ".5",
            "1e",
            "\"a",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1 2]",
            "tru",
            "nul",
            "[]",
            "{}",
            "[[[]]]",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\t\"",
            "{1:2}",
            "[1]x",
            "",
            " ",
            "\"\\ud83d\\ude00\"",
            "{\"a\":{\"b\":[true,false,null]}}",
        ] {
            let ours = run(s).is_ok();
            let serde = serde_json::from_str::<serde_json::Value>(s).is_ok();
            assert_eq!(ours, serde, "{s:?}");
        }
    }

    #[test]
    fn limits_are_enforced_iteratively() {
        let deep = "[".repeat(100_000);
        assert_eq!(run(&deep), Err(JsonError::Depth));
        let l = Limits {
            max_keys: 2,
            max_array_len: 3,
            max_string_len: 6,
            ..Limits::default()
        };
        let mut c = Collect(Vec::new());
        let e = |s: &str, c: &mut Collect| match scan(s, &l, c) {
            Err(ScanError::Json(e)) => Some(e),
            _ => None,
        };
        assert_eq!(e(r#"{"a":1,"b":2,"c":3}"#, &mut c), Some(JsonError::Keys));
        assert_eq!(e("[1,2,3,4]", &mut c), Some(JsonError::ArrayLen));
        assert_eq!(e(r#"["abcdefg"]"#, &mut c), Some(JsonError::StringLen));
        assert_eq!(
            e(r#"{"a":1,"\u0061":2}"#, &mut c),
            Some(JsonError::DuplicateKey)
        );
        assert_eq!(e(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#, &mut c), None);
    }

    #[test]
    fn long_strings_and_large_objects() {
        // every position of a special byte inside a long string (the 8-byte fast path)
        for pos in 0..24 {
            let mut v = "abcdefghijklmnopqrstuvwxyzé".to_string();
            v.insert_str(pos, "\\\"\\n");
            let doc = format!("[\"{v}\"]");
            let got = run(&doc).unwrap();
            let want: Vec<String> = serde_json::from_str(&doc).unwrap();
            assert_eq!(got[0].1, want[0]);
            let raw = format!("[\"{}\u{1}\"]", &"x".repeat(pos));
            assert_eq!(run(&raw), Err(JsonError::Syntax));
        }
        // duplicates found in the linear phase and in the hash-set phase, escaped or not
        for n in [3, 16, 17, 40] {
            let mut doc: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            assert!(run(&format!("{{{}}}", doc.join(","))).is_ok());
            doc.push("\"k\\u0030\":0".into());
            assert_eq!(
                run(&format!("{{{}}}", doc.join(","))),
                Err(JsonError::DuplicateKey),
                "{n}"
            );
        }
    }

    #[test]
    fn key_lists_of_nested_objects_stay_apart() {
        let big: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let big = format!("{{{}}}", big.join(","));
        // the inner objects' keys (hash-set phase or not) are not the outer object's
        for doc in [
            format!(r#"{{"k1":{big},"k2":[{big},{{"k1":1}}],"k3":{{"k2":1}}}}"#),
            format!(r#"[{big},{big},{{"k0":1,"k39":2}}]"#),
        ] {
            assert!(run(&doc).is_ok(), "{doc}");
        }
        for doc in [
            format!(r#"{{"k1":{big},"k2":1,"k1":2}}"#),
            format!(r#"{{"a":{{"b":{big}}},"c":1,"a":2}}"#),
            format!(r#"[{big},{{"x":1,"x":1}}]"#),
        ] {
            assert_eq!(run(&doc), Err(JsonError::DuplicateKey), "{doc}");
        }
        // and the buffers are reused after an error
        assert_eq!(
            run(r#"{"a":[{"b":1,"b":2}]}"#),
            Err(JsonError::DuplicateKey)
        );
        assert!(run(r#"{"b":1,"a":[{"b":1}]}"#).is_ok());
    }

    /// The string scan of the old byte-at-a-time loop.
    fn scan_string_bytewise(b: &[u8], mut i: usize) -> Result<(usize, bool, u32), JsonError> {
        let (mut escaped, mut mask) = (false, 0u32);
        loop {
            match b.get(i) {
                Some(b'"') => return Ok((i, escaped, mask)),
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u')
                            if i + 6 <= b.len()
                                && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
                        {
                            i += 6
                        }
                        _ => return Err(JsonError::InvalidEscape),
                    }
                }
                Some(&c) if c >= 0x20 => {
                    mask |= CLASS[c as usize];
                    i += 1;
                }
                _ => return Err(JsonError::Syntax),
            }
        }
    }

    /// Every byte value in every lane is classified as the table classifies it.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[test]
    fn sse2_classes_agree_with_the_table() {
        for c in 0..=255u8 {
            for lane in 0..16 {
                let mut w = [b'a'; 16];
                w[lane] = c;
                let (stop, nonplain, dot) = sse2::classify16(&w);
                let t = CLASS[c as usize];
                let bit = 1u32 << lane;
                assert_eq!(stop, if t & B_STOP != 0 { bit } else { 0 }, "stop {c:#x}");
                assert_eq!(
                    nonplain,
                    if t & B_NONPLAIN != 0 { bit } else { 0 },
                    "{c:#x}"
                );
                assert_eq!(dot, if t & B_DOT != 0 { bit } else { 0 }, "dot {c:#x}");
            }
        }
    }

    #[test]
    fn string_scan_agrees_with_a_byte_loop() {
        const PIECES: &[&[u8]] = &[
            b"a",
            b"Z",
            b"1",
            b"0",
            b"_",
            b" ",
            b".",
            b"\"",
            b"\\n",
            b"\\\"",
            b"\\u00e9",
            b"\\x",
            b"\\u12",
            b"\x01",
            b"\x1f",
            b"\x7f",
            b"\xc3\xa9",
            b"\xe2\x80\x8b",
            b"<",
            b"/",
            b"%",
            b"&",
            b"'",
            b"$",
            b"{",
            b"\t",
            b"\n",
            b"abcdefgh",
            b"ABCXYZ",
            b"@",
            b"-",
            b"`",
            b"[",
            b"^",
            b"~",
            b"9",
            b"0123456789abcdef",
            b"..",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut doc = Vec::new();
            for _ in 0..next() % 24 {
                doc.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            // what may follow a string in a document, or nothing
            let tail: &[u8] = [&b"\",\"k\":{}"[..], b"\"", b"", b"\"]"][(next() % 4) as usize];
            doc.extend_from_slice(tail);
            assert_eq!(
                scan_string(&doc, 0),
                scan_string_bytewise(&doc, 0).map(|(e, esc, m)| (e, esc, m & SUMMARY)),
                "{:?}",
                String::from_utf8_lossy(&doc)
            );
        }
    }

    #[test]
    fn edits_are_applied() {
        struct Up;
        impl JsonVisitor for Up {
            type Stop = ();
            fn visit(
                &mut self,
                _: JsonPath<'_>,
                v: &str,
                _: u32,
                k: bool,
            ) -> Result<Option<String>, ()> {
                Ok((!k).then(|| serde_json::to_string(&v.to_uppercase()).unwrap()))
            }
        }
        let s = r#"{"a":"x<","b":["y\n",2]}"#;
        let edits = scan(s, &Limits::default(), &mut Up).unwrap();
        assert_eq!(apply(s, &edits), r#"{"a":"X<","b":["Y\n",2]}"#);
    }
}
