//! Hot-path helpers: a keyed folded-multiply hasher and a small inline list.
//!
//! The hasher replaces SipHash on every request. Keys are attacker-chosen, so it stays keyed
//! with secret seeds drawn from the process's random source (one seed set per layer): the
//! same folded-multiply construction as foldhash/ahash, whose outputs an attacker cannot
//! predict without the seeds, so colliding keys cannot be precomputed.

use std::hash::{BuildHasher, Hasher};

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let f = u128::from(a) * u128::from(b);
    (f as u64) ^ ((f >> 64) as u64)
}

#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// Random per-instance seeds; builds [`FastHasher`]s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seeds([u64; 4]);

impl Seeds {
    /// Fresh secret seeds from the OS-seeded `RandomState`.
    pub(crate) fn random() -> Self {
        let rs = std::hash::RandomState::new();
        let mut s = [0u64; 4];
        for (i, v) in s.iter_mut().enumerate() {
            // odd multipliers never collapse a product to zero by themselves
            *v = rs.hash_one(i as u64 ^ 0x9e37_79b9_7f4a_7c15) | 1;
        }
        Self(s)
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

/// Keyed folded-multiply hasher (see the module docs).
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
    fn write_u64(&mut self, n: u64) {
        self.acc = fold(self.acc ^ n, self.k[0]);
    }
    #[inline(always)]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    #[inline(always)]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    #[inline(always)]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    #[inline(always)]
    fn write_u128(&mut self, n: u128) {
        self.acc = fold(self.acc ^ n as u64, (n >> 64) as u64 ^ self.k[1]);
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.acc = self.acc.wrapping_add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(16);
        for c in &mut chunks {
            let (lo, hi) = c.split_at(8);
            self.acc = fold(self.acc ^ word(lo), word(hi) ^ self.k[1]);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let (lo, hi) = rest.split_at(rest.len().min(8));
            self.acc = fold(self.acc ^ word(lo), word(hi) ^ self.k[1]);
        }
    }
}

/// A list keeping its first `N` items inline (no allocation for the usual one or two
/// policies per request), spilling to a `Vec` beyond.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub struct InlineList<T, const N: usize> {
    len: usize,
    inline: [Option<T>; N],
    spill: Vec<T>,
}

impl<T, const N: usize> Default for InlineList<T, N> {
    fn default() -> Self {
        Self {
            len: 0,
            inline: std::array::from_fn(|_| None),
            spill: Vec::new(),
        }
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl<T, const N: usize> InlineList<T, N> {
    #[inline]
    pub(crate) fn push(&mut self, v: T) {
        if self.len < N {
            self.inline[self.len] = Some(v);
        } else {
            self.spill.push(v);
        }
        self.len += 1;
    }
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline.iter().flatten().chain(self.spill.iter())
    }
}

impl<T, const N: usize> IntoIterator for InlineList<T, N> {
    type Item = T;
    type IntoIter = std::iter::Chain<
        std::iter::Flatten<std::array::IntoIter<Option<T>, N>>,
        std::vec::IntoIter<T>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.inline.into_iter().flatten().chain(self.spill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_list_keeps_order_past_capacity() {
        let mut l = InlineList::<u32, 2>::default();
        assert!(l.is_empty());
        for i in 0..5 {
            l.push(i);
        }
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(l.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn hasher_is_seeded_and_spreads() {
        let (a, b) = (Seeds::random(), Seeds::random());
        assert_ne!(a.hash_one(1u32), b.hash_one(1u32));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let h = a.hash_one(i);
            seen.insert(h >> 58); // shard bits are used
        }
        assert_eq!(seen.len(), 64);
        assert_ne!(a.hash_one(b"abc".as_slice()), a.hash_one(b"abd".as_slice()));
    }
}
