//! Hot-path helpers of the quota layer: byte buffers and lists kept inline (no heap
//! allocation for the common request), and integer formatting into them.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let f = u128::from(a) * u128::from(b);
    (f as u64) ^ ((f >> 64) as u64)
}

/// Random per-table seeds for [`FastHasher`]. Keys are attacker-chosen (principal ids,
/// addresses), so the hash stays keyed with secret seeds from the OS-seeded `RandomState`:
/// the folded-multiply construction of foldhash/ahash, whose outputs cannot be predicted
/// without the seeds, so colliding keys cannot be precomputed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seeds([u64; 4]);

impl Seeds {
    pub(crate) fn random() -> Self {
        let rs = std::hash::RandomState::new();
        let mut s = [0u64; 4];
        for (i, v) in s.iter_mut().enumerate() {
            *v = rs.hash_one(i as u64 ^ 0x9e37_79b9_7f4a_7c15) | 1;
        }
        Self(s)
    }
}

impl Default for Seeds {
    fn default() -> Self {
        Self::random()
    }
}

impl BuildHasher for Seeds {
    type Hasher = FastHasher;
    #[inline(always)]
    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.0[0],
            k: [self.0[1], self.0[2], self.0[3]],
        }
    }
}

/// Keyed folded-multiply hasher (see [`Seeds`]).
pub(crate) struct FastHasher {
    acc: u64,
    k: [u64; 3],
}

impl Hasher for FastHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        fold(self.acc ^ self.k[2], self.k[0])
    }
    #[inline(always)]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    #[inline(always)]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    #[inline(always)]
    fn write_u64(&mut self, n: u64) {
        self.acc = fold(self.acc ^ n, self.k[0]);
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(16);
        for c in &mut chunks {
            let a = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let b = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            self.acc = fold(self.acc ^ a, b ^ self.k[1]).rotate_left(23);
        }
        // the last 0..=15 bytes, read as (possibly overlapping) words without a memcpy call
        let rest = chunks.remainder();
        let n = rest.len();
        let (a, b) = if n >= 8 {
            (read_u64(&rest[..8]), read_u64(&rest[n - 8..]))
        } else if n >= 4 {
            (read_u32(&rest[..4]), read_u32(&rest[n - 4..]))
        } else if n > 0 {
            (
                u64::from(rest[0]) | (u64::from(rest[n / 2]) << 8),
                u64::from(rest[n - 1]),
            )
        } else {
            (0, 0)
        };
        self.acc = fold(self.acc ^ a ^ (bytes.len() as u64), b ^ self.k[1]);
    }
}

#[inline(always)]
fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
}

#[inline(always)]
fn read_u32(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(b[..4].try_into().unwrap_or_default()))
}

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

    /// Appends `n` in decimal (two digits per step, as itoa does).
    #[inline]
    pub(crate) fn push_u64(&mut self, mut n: u64) {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        while n >= 10_000 {
            let rem = (n % 10_000) as usize;
            n /= 10_000;
            let (hi, lo) = ((rem / 100) * 2, (rem % 100) * 2);
            i -= 4;
            digits[i..i + 2].copy_from_slice(&PAIRS[hi..hi + 2]);
            digits[i + 2..i + 4].copy_from_slice(&PAIRS[lo..lo + 2]);
        }
        while n >= 100 {
            let p = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
        }
        if n >= 10 {
            let p = n as usize * 2;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
        } else {
            i -= 1;
            digits[i] = b'0' + n as u8;
        }
        self.extend_from_slice(&digits[i..]);
    }

    /// The contents as text (they are built from `&str` pieces only).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_slice()).unwrap_or_default()
    }
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
    fn hasher_depends_on_content_length_and_seeds() {
        let s = Seeds::random();
        let h = |b: &[u8]| s.hash_one(b);
        assert_ne!(h(b"p:alice"), h(b"p:alicf"));
        assert_ne!(h(b""), h(b"\0"));
        assert_ne!(h(&[0u8; 16]), h(&[0u8; 17]));
        // every remainder length, and a change at any position, changes the hash
        let base: Vec<u8> = (0..40u8).collect();
        for len in 0..base.len() {
            for at in 0..len {
                let mut other = base[..len].to_vec();
                other[at] ^= 0x55;
                assert_ne!(h(&base[..len]), h(&other), "len {len}, byte {at}");
            }
        }
        assert_eq!(
            h(b"quota:{p%3Aalice}:monthly:2026-11"),
            h(b"quota:{p%3Aalice}:monthly:2026-11")
        );
        assert_ne!(Seeds::random().hash_one(b"k"), s.hash_one(b"k"));
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
}
