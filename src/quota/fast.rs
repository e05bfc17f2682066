//! Hot-path helpers of the quota layer: byte buffers and lists kept inline (no heap
//! allocation for the common request), and integer formatting into them.

use std::fmt;

/// Bytes kept inline up to `N`, spilling to the heap beyond.
#[derive(Clone)]
pub(crate) struct Buf<const N: usize> {
    len: usize,
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
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    #[inline]
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() {
            let end = self.len + bytes.len();
            if end <= N {
                self.inline[self.len..end].copy_from_slice(bytes);
                self.len = end;
                return;
            }
            let mut v = Vec::with_capacity(end.max(2 * N));
            v.extend_from_slice(&self.inline[..self.len]);
            self.heap = v;
        }
        self.heap.extend_from_slice(bytes);
    }

    #[inline]
    pub(crate) fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    /// Appends `n` in decimal.
    #[inline]
    pub(crate) fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
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

    pub(crate) fn len(&self) -> usize {
        self.head.iter().flatten().count() + self.rest.len()
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
    }

    #[test]
    fn list_keeps_order_past_the_inline_slots() {
        let mut l = List::default();
        for i in 0..5 {
            l.push(i);
        }
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(l.len(), 5);
        for v in l.iter_mut() {
            *v *= 2;
        }
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
    }
}
