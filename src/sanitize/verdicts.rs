//! A small per-thread memo of header values the detectors found clean.
//!
//! Header values such as `User-Agent` repeat from request to request, and a browser's
//! agent string goes through four detectors (SQL, XSS, shell, paths) every time. The memo
//! keeps the last [`SLOTS`] clean values of at most [`MAX_LEN`] bytes, each with the
//! detector set that judged it; a hit needs the same bytes and the same set, so the result
//! is exactly what the detectors would say again. Only the detectors' verdict is kept
//! (never a route's exemptions or action), and only "clean": a value with a finding is
//! inspected every time.
//!
//! The slots are direct-mapped by a seeded hash: a value that collides only evicts another
//! one (the cost of one detector run), it can never be taken for it (bytes are compared).

use std::cell::RefCell;

/// Number of slots per thread.
const SLOTS: usize = 16;
/// Longer values are not memoized.
pub(crate) const MAX_LEN: usize = 256;

struct Slot {
    /// Detector set bits + 1 (0: empty slot).
    set: u16,
    len: u16,
    bytes: [u8; MAX_LEN],
}

struct Memo {
    seed: u64,
    slots: Box<[Slot; SLOTS]>,
}

impl Memo {
    fn new() -> Self {
        use std::hash::BuildHasher;
        let seed = std::hash::RandomState::new().hash_one(0x5a17_u64) | 1;
        Self {
            seed,
            slots: Box::new(std::array::from_fn(|_| Slot {
                set: 0,
                len: 0,
                bytes: [0; MAX_LEN],
            })),
        }
    }

    #[inline]
    fn index(&self, v: &[u8]) -> usize {
        #[inline(always)]
        fn fold(a: u64, b: u64) -> u64 {
            let f = u128::from(a) * u128::from(b);
            (f as u64) ^ ((f >> 64) as u64)
        }
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = self.seed ^ v.len() as u64;
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            h = fold(h ^ u64::from_le_bytes(c.try_into().expect("8 bytes")), K);
        }
        let mut last = 0u64;
        for (i, &c) in chunks.remainder().iter().enumerate() {
            last |= u64::from(c) << (8 * i);
        }
        h = fold(h ^ last, K);
        (h >> 60) as usize % SLOTS
    }
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

/// Whether `value` was found clean by the detector set `set` on this thread recently.
#[inline]
pub(crate) fn is_clean(value: &str, set: u8) -> bool {
    let v = value.as_bytes();
    if v.len() > MAX_LEN {
        return false;
    }
    MEMO.with(|m| {
        let Ok(m) = m.try_borrow() else { return false };
        let Some(m) = m.as_ref() else { return false };
        let s = &m.slots[m.index(v)];
        s.set == u16::from(set) + 1 && usize::from(s.len) == v.len() && &s.bytes[..v.len()] == v
    })
}

/// Remembers that the detector set `set` found `value` clean.
pub(crate) fn remember_clean(value: &str, set: u8) {
    let v = value.as_bytes();
    if v.len() > MAX_LEN {
        return;
    }
    MEMO.with(|m| {
        let Ok(mut m) = m.try_borrow_mut() else {
            return;
        };
        let m = m.get_or_insert_with(Memo::new);
        let i = m.index(v);
        let s = &mut m.slots[i];
        s.set = u16::from(set) + 1;
        s.len = v.len() as u16;
        s.bytes[..v.len()].copy_from_slice(v);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_need_the_same_bytes_and_detector_set() {
        let ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0";
        assert!(!is_clean(ua, 0x7f));
        remember_clean(ua, 0x7f);
        assert!(is_clean(ua, 0x7f));
        assert!(!is_clean(ua, 0x01), "another detector set");
        assert!(!is_clean(
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.1",
            0x7f
        ));
        assert!(!is_clean(&ua[..ua.len() - 1], 0x7f));
        // too long to be kept
        let long = "a ".repeat(MAX_LEN);
        remember_clean(&long, 0x7f);
        assert!(!is_clean(&long, 0x7f));
        // many values: at most SLOTS kept, never a wrong hit
        let vals: Vec<String> = (0..100).map(|i| format!("agent {i}")).collect();
        for v in &vals {
            remember_clean(v, 0x7f);
        }
        let hits = vals.iter().filter(|v| is_clean(v, 0x7f)).count();
        assert!((1..=SLOTS).contains(&hits), "{hits}");
        assert!(!is_clean("agent 100", 0x7f));
    }
}
