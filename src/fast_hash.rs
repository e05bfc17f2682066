//! A keyed folded-multiply hasher for the hot paths' tables (throttle and quota).
//!
//! It replaces SipHash on every request. Keys are attacker-chosen (addresses, principal ids),
//! so the hash stays keyed with secret seeds drawn from the OS-seeded `RandomState` (one seed
//! set per table): the folded-multiply construction of foldhash/ahash, whose outputs cannot
//! be predicted without the seeds, so colliding keys cannot be precomputed.

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
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    #[inline(always)]
    fn write_u64(&mut self, n: u64) {
        self.acc = fold(self.acc ^ n, self.k[0]);
    }
    #[inline(always)]
    fn write_u128(&mut self, n: u128) {
        self.acc = fold(self.acc ^ n as u64, (n >> 64) as u64 ^ self.k[1]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
