//! Hot-path helpers of the quota layer: byte buffers and lists kept inline (no heap
//! allocation for the common request), and integer formatting into them.

use std::fmt;

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
