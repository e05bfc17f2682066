//! Hot-path helpers of the quota layer: byte buffers and lists kept inline (no heap
//! allocation for the common request), and integer formatting into them.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes kept inline up to `N`, spilling to the heap beyond.
#[derive(Clone)]
pub(crate) struct Buf<const N: usize> {
    len: u32,
    inline: [u8; N],
    heap: Vec<u8>,
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self {
            len: 0,
            inline: [0; N],
            heap: Vec::new(),
        }
    }
}

impl<const N: usize> fmt::Debug for Buf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_slice()), f)
    }
}

impl<const N: usize> Buf<N> {
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len as usize]
        } else {
            &self.heap
        }
    }

    #[inline(always)]
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        let len = self.len as usize;
        let end = len + bytes.len();
        if self.heap.is_empty() && end <= N {
            self.inline[len..end].copy_from_slice(bytes);
            self.len = end as u32;
            return;
        }
        self.extend_spilled(bytes);
    }

    /// Appends the first `len` bytes of a padded piece: while it fits inline, the whole
    /// block is copied at once (a fixed-size copy, no `memcpy` call) and the length moves
    /// by `len` only.
    #[inline(always)]
    pub(crate) fn extend_padded(&mut self, piece: &Padded) {
        let len = self.len as usize;
        let n = piece.len();
        if self.heap.is_empty() && len + PADDED <= N {
            self.inline[len..len + PADDED].copy_from_slice(&piece.bytes);
            self.len = (len + n) as u32;
            return;
        }
        self.extend_from_slice(piece.as_slice());
    }

    /// Appends a copy of `range` of the contents.
    #[inline]
    pub(crate) fn extend_from_within(&mut self, range: std::ops::RangeTo<usize>) {
        let len = self.len as usize;
        let end = range.end;
        // a short head is copied as one fixed-size block (no `memmove` call); the bytes
        // past `end` it carries along lie beyond the new length
        if self.heap.is_empty() && end <= 64 && len + 64 <= N {
            self.inline.copy_within(..64, len);
            self.len = (len + end) as u32;
            return;
        }
        if self.heap.is_empty() && len + end <= N {
            self.inline.copy_within(..end, len);
            self.len = (len + end) as u32;
            return;
        }
        let copy = self.as_slice()[range].to_vec();
        self.extend_spilled(&copy);
    }

    #[cold]
    #[inline(never)]
    fn extend_spilled(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() {
            let len = self.len as usize;
            let mut v = Vec::with_capacity((len + bytes.len()).max(2 * N));
            v.extend_from_slice(&self.inline[..len]);
            self.heap = v;
        }
        self.heap.extend_from_slice(bytes);
    }

    #[inline]
    pub(crate) fn push(&mut self, b: u8) {
        let len = self.len as usize;
        if self.heap.is_empty() && len < N {
            self.inline[len] = b;
            self.len += 1;
        } else {
            self.extend_from_slice(&[b]);
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        if self.heap.is_empty() {
            self.len as usize
        } else {
            self.heap.len()
        }
    }

    /// Shortens the contents to `len` bytes (no-op when they are shorter).
    #[inline]
    pub(crate) fn truncate(&mut self, len: usize) {
        if self.heap.is_empty() {
            self.len = self.len.min(len as u32);
        } else if len == 0 {
            // an empty heap part means "inline": keep the two in step
            self.heap = Vec::new();
            self.len = 0;
        } else {
            self.heap.truncate(len);
        }
    }

    /// Appends `n` in decimal (four digits per step, as itoa does). The digits are
    /// copied as one fixed-size block, without a `memcpy` call.
    #[inline]
    pub(crate) fn push_u64(&mut self, n: u64) {
        // digits end at index 20; bytes 20..40 are padding for the fixed-size copy
        let mut buf = [0u8; 40];
        let start = write_digits(&mut buf, n);
        let digits = 20 - start;
        let len = self.len as usize;
        if self.heap.is_empty() && len + 20 <= N {
            self.inline[len..len + 20].copy_from_slice(&buf[start..start + 20]);
            self.len = (len + digits) as u32;
        } else {
            self.extend_from_slice(&buf[start..20]);
        }
    }

    /// The contents as text (they are built from `&str` pieces only).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_slice()).unwrap_or_default()
    }
}

/// Size of a [`Padded`] block.
pub(crate) const PADDED: usize = 32;

/// Up to 32 bytes in a zero-padded block, appended to a [`Buf`] with one fixed-size copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Padded {
    bytes: [u8; PADDED],
    len: u8,
}

impl Padded {
    /// `None` when `b` is longer than the block.
    pub(crate) fn new(b: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; PADDED];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(Self {
            bytes,
            len: b.len() as u8,
        })
    }

    /// As [`Padded::new`], copying with a few fixed-size moves (no `memcpy` call).
    #[inline(always)]
    pub(crate) fn new_short(b: &[u8]) -> Option<Self> {
        let n = b.len();
        let mut bytes = [0u8; PADDED];
        if n > PADDED {
            return None;
        }
        // two (possibly overlapping) reads cover the bytes; the second is shifted so that
        // its bytes land at their place (and the overlap is dropped): no `memcpy` call
        if n >= 16 {
            let lo = u128::from_le_bytes(b[..16].try_into().unwrap_or_default());
            let last = u128::from_le_bytes(b[n - 16..].try_into().unwrap_or_default());
            let hi = last.checked_shr(((32 - n) * 8) as u32).unwrap_or(0);
            bytes[..16].copy_from_slice(&lo.to_le_bytes());
            bytes[16..].copy_from_slice(&hi.to_le_bytes());
        } else if n >= 8 {
            let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
            let last = u64::from_le_bytes(b[n - 8..].try_into().unwrap_or_default());
            let hi = last.checked_shr(((16 - n) * 8) as u32).unwrap_or(0);
            bytes[..8].copy_from_slice(&lo.to_le_bytes());
            bytes[8..16].copy_from_slice(&hi.to_le_bytes());
        } else if n >= 4 {
            let lo = u32::from_le_bytes(b[..4].try_into().unwrap_or_default());
            let last = u32::from_le_bytes(b[n - 4..].try_into().unwrap_or_default());
            let hi = last.checked_shr(((8 - n) * 8) as u32).unwrap_or(0);
            bytes[..4].copy_from_slice(&lo.to_le_bytes());
            bytes[4..8].copy_from_slice(&hi.to_le_bytes());
        } else {
            for (d, s) in bytes.iter_mut().zip(b) {
                *d = *s;
            }
        }
        Some(Self {
            bytes,
            len: n as u8,
        })
    }

    /// Whether the block holds a byte that store keys %-escape (`{`, `}`, `%`, `:`); the
    /// padding is zeros. One branch-free pass over the whole block.
    #[inline(always)]
    pub(crate) fn needs_escape(&self) -> bool {
        let mut any = 0u8;
        for &b in &self.bytes {
            any |= u8::from(b == b'{')
                | u8::from(b == b'}')
                | u8::from(b == b'%')
                | u8::from(b == b':');
        }
        any != 0
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    #[inline(always)]
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }
}

const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

#[inline(always)]
fn pair(v: u32) -> [u8; 2] {
    let p = v as usize * 2;
    [PAIRS[p], PAIRS[p + 1]]
}

/// Writes `n` in decimal ending at `buf[20]`; returns where the digits start.
#[inline(always)]
fn write_digits(buf: &mut [u8; 40], mut n: u64) -> usize {
    let mut i = 20;
    while n >= 10_000 {
        let rem = (n % 10_000) as u32;
        n /= 10_000;
        i -= 4;
        buf[i..i + 2].copy_from_slice(&pair(rem / 100));
        buf[i + 2..i + 4].copy_from_slice(&pair(rem % 100));
    }
    let mut m = n as u32;
    if m >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&pair(m % 100));
        m /= 100;
    }
    if m >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&pair(m));
    } else {
        i -= 1;
        buf[i] = b'0' + m as u8;
    }
    i
}

impl<const N: usize> Extend<u8> for Buf<N> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        for b in iter {
            self.push(b);
        }
    }
}

impl<const N: usize> fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A list keeping its first two items inline.
#[derive(Debug, Clone)]
pub(crate) struct List<T> {
    head: [Option<T>; 2],
    rest: Vec<T>,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self {
            head: [None, None],
            rest: Vec::new(),
        }
    }
}

impl<T> List<T> {
    pub(crate) fn push(&mut self, item: T) {
        for slot in &mut self.head {
            if slot.is_none() {
                *slot = Some(item);
                return;
            }
        }
        self.rest.push(item);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.head.iter().flatten().chain(self.rest.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.head.iter_mut().flatten().chain(self.rest.iter_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_spills_to_the_heap_and_formats_numbers() {
        let mut b = Buf::<4>::default();
        b.extend_from_slice(b"ab");
        b.push_u64(0);
        assert_eq!(b.as_slice(), b"ab0");
        b.push_u64(u64::MAX);
        assert_eq!(b.as_str(), "ab018446744073709551615");
        b.push(b'!');
        assert_eq!(b.as_str(), "ab018446744073709551615!");
        for n in [
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            9999,
            10_000,
            10_001,
            12345,
            1_083_200,
            100_000_000,
            u64::MAX / 2,
        ] {
            let mut b = Buf::<8>::default();
            b.push_u64(n);
            assert_eq!(b.as_str(), n.to_string());
        }
    }

    #[test]
    fn padded_pieces_append_their_length_only_and_spill_like_slices() {
        let a = Padded::new(b"quota:{p%3A").unwrap();
        assert!(Padded::new(&[b'x'; 33]).is_none());
        let mut b = Buf::<40>::default();
        b.extend_padded(&a);
        b.extend_from_slice(b"id");
        b.extend_padded(&Padded::new(b"}:monthly:").unwrap());
        assert_eq!(b.as_slice(), b"quota:{p%3Aid}:monthly:");
        // no room for a whole block: copied as a slice, then spilled to the heap
        b.extend_padded(&Padded::new(b"2026-12").unwrap());
        assert_eq!(b.as_slice(), b"quota:{p%3Aid}:monthly:2026-12");
        b.extend_padded(&Padded::new(&[b'y'; 32]).unwrap());
        assert_eq!(b.len(), 30 + 32);
        assert!(b.as_slice().ends_with(&[b'y'; 32]));
    }

    #[test]
    fn short_padded_blocks_copy_every_length_and_find_escaped_bytes() {
        let src: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
        for n in 0..=40 {
            let got = Padded::new_short(&src[..n]);
            if n > PADDED {
                assert!(got.is_none());
                continue;
            }
            let got = got.unwrap();
            assert_eq!(got.as_slice(), &src[..n], "len {n}");
            assert!(got.bytes[n..].iter().all(|&b| b == 0), "padding of len {n}");
            assert!(!got.needs_escape());
            for (at, c) in [
                (0, b'{'),
                (n / 2, b'}'),
                (n.saturating_sub(1), b'%'),
                (n / 3, b':'),
            ] {
                if n == 0 {
                    continue;
                }
                let mut v = src[..n].to_vec();
                v[at] = c;
                assert!(
                    Padded::new_short(&v).unwrap().needs_escape(),
                    "len {n}, {c} at {at}"
                );
            }
        }
    }

    #[test]
    fn list_keeps_order_past_the_inline_slots() {
        let mut l = List::default();
        for i in 0..5 {
            l.push(i);
        }
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        for v in l.iter_mut() {
            *v *= 2;
        }
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
    }

    #[test]
    fn buf_copies_its_head_and_span_cache_answers_inside_its_window_only() {
        let mut b = Buf::<8>::default();
        b.extend_from_slice(b"abc");
        b.extend_from_within(..2);
        assert_eq!(b.as_slice(), b"abcab");
        b.extend_from_within(..5); // spills
        assert_eq!(b.as_slice(), b"abcababcab");

        let c = SpanCache::default();
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert!(c.get(nanos(t(150)).unwrap()).is_none());
        c.put(t(100), t(200), b"2026-11");
        let got = c.get(nanos(t(100)).unwrap()).unwrap();
        assert_eq!(got.label().as_slice(), b"2026-11");
        assert_eq!((got.start(), got.end()), (t(100), t(200)));
        assert!(c.get(nanos(t(199)).unwrap()).is_some());
        assert!(c.get(nanos(t(200)).unwrap()).is_none());
        assert!(c.get(nanos(t(99)).unwrap()).is_none());
        // a label too long is not cached
        c.put(t(200), t(300), &[b'x'; 40]);
        assert!(c.get(nanos(t(250)).unwrap()).is_none());
        c.put(t(200), t(300), b"2026-12-01T00:00:00+05:30-long");
        assert_eq!(
            c.get(nanos(t(250)).unwrap()).unwrap().label().as_slice(),
            b"2026-12-01T00:00:00+05:30-long"
        );
    }
}

/// The current calendar window of a quota, read without a lock or a read-modify-write
/// (a sequence lock over atomics): every request reads it, and a lock word or reference
/// count written by every core would bounce between their caches. It is written once per
/// window. Labels longer than [`SpanCache::LABEL_MAX`] bytes are not cached.
#[derive(Debug, Default)]
pub(crate) struct SpanCache {
    /// Even: stable; odd: being written.
    seq: AtomicU64,
    /// Start and end in nanoseconds since the Unix epoch; `end == 0`: empty.
    start: AtomicU64,
    end: AtomicU64,
    label_len: AtomicU64,
    label: [AtomicU64; 4],
    write: Mutex<()>,
}

/// A window read from a [`SpanCache`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachedSpan {
    /// Start and end in nanoseconds since the Unix epoch.
    start: u64,
    end: u64,
    label: [u64; 4],
    len: usize,
}

impl CachedSpan {
    /// A span that did not fit the cache (its label is cut to [`SpanCache::LABEL_MAX`];
    /// callers use it only for labels that fit).
    /// The start of the window.
    pub(crate) fn start(&self) -> SystemTime {
        at_nanos(self.start)
    }

    /// The end of the window (its reset).
    pub(crate) fn end(&self) -> SystemTime {
        at_nanos(self.end)
    }

    /// Nanoseconds from `now` to the end of the window.
    #[inline]
    pub(crate) fn end_nanos(&self) -> u64 {
        self.end
    }

    pub(crate) fn new(s: &super::window::Span) -> Option<Self> {
        let mut padded = [0u8; SpanCache::LABEL_MAX];
        let len = s.label.len().min(SpanCache::LABEL_MAX);
        padded[..len].copy_from_slice(&s.label.as_bytes()[..len]);
        let mut label = [0u64; 4];
        for (i, w) in label.iter_mut().enumerate() {
            *w = u64::from_le_bytes(padded[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        }
        Some(Self {
            start: nanos(s.start)?,
            end: nanos(s.end)?,
            label,
            len,
        })
    }

    /// The window's label as a padded block (the cache holds labels of at most
    /// [`SpanCache::LABEL_MAX`] = [`PADDED`] bytes).
    #[inline(always)]
    pub(crate) fn label_padded(&self) -> Padded {
        let mut bytes = [0u8; PADDED];
        for (i, w) in self.label.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Padded {
            bytes,
            len: self.len.min(PADDED) as u8,
        }
    }

    /// The window's label bytes.
    pub(crate) fn label(&self) -> LabelBytes {
        let mut b = [0u8; SpanCache::LABEL_MAX];
        for (i, w) in self.label.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        LabelBytes { b, len: self.len }
    }
}

#[inline]
fn at_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

/// Label bytes on the stack.
pub(crate) struct LabelBytes {
    b: [u8; SpanCache::LABEL_MAX],
    len: usize,
}

impl LabelBytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.b[..self.len]
    }
}

/// Nanoseconds since the Unix epoch (`None` before it or after 2554).
#[inline]
pub(crate) fn nanos(t: SystemTime) -> Option<u64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    d.as_secs()
        .checked_mul(1_000_000_000)?
        .checked_add(u64::from(d.subsec_nanos()))
}

impl SpanCache {
    pub(crate) const LABEL_MAX: usize = PADDED;

    /// The cached window when it contains `now` (nanoseconds since the epoch).
    #[inline]
    pub(crate) fn get(&self, now: u64) -> Option<CachedSpan> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        let len = self.label_len.load(Ordering::Relaxed) as usize;
        let label = [
            self.label[0].load(Ordering::Relaxed),
            self.label[1].load(Ordering::Relaxed),
            self.label[2].load(Ordering::Relaxed),
            self.label[3].load(Ordering::Relaxed),
        ];
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 || !(start <= now && now < end) {
            return None;
        }
        Some(CachedSpan {
            start,
            end,
            label,
            len: len.min(Self::LABEL_MAX),
        })
    }

    /// The end (nanoseconds since the epoch) and label of the cached window when it contains
    /// `now`: what a decision needs, read straight into a padded block.
    #[inline(always)]
    pub(crate) fn get_padded(&self, now: u64) -> Option<(u64, Padded)> {
        let s1 = self.seq.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        let len = self.label_len.load(Ordering::Relaxed);
        let words = [
            self.label[0].load(Ordering::Relaxed),
            self.label[1].load(Ordering::Relaxed),
            self.label[2].load(Ordering::Relaxed),
            self.label[3].load(Ordering::Relaxed),
        ];
        fence(Ordering::Acquire);
        if s1 & 1 == 1 || self.seq.load(Ordering::Relaxed) != s1 || !(start <= now && now < end) {
            return None;
        }
        let mut bytes = [0u8; PADDED];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Some((
            end,
            Padded {
                bytes,
                len: len.min(PADDED as u64) as u8,
            },
        ))
    }

    /// Caches a window (when it fits).
    pub(crate) fn put(&self, start: SystemTime, end: SystemTime, label: &[u8]) {
        let (Some(start), Some(end)) = (nanos(start), nanos(end)) else {
            return;
        };
        if label.len() > Self::LABEL_MAX || end == 0 {
            return;
        }
        let mut words = [0u64; 4];
        let mut padded = [0u8; Self::LABEL_MAX];
        padded[..label.len()].copy_from_slice(label);
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_le_bytes(padded[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        }
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.label_len.store(label.len() as u64, Ordering::Relaxed);
        for (a, w) in self.label.iter().zip(words) {
            a.store(w, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}
