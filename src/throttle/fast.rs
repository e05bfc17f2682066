//! Hot-path helpers: a small inline list (the keyed hasher is `crate::fast_hash`).

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
}
