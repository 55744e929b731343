//! A fixed-length bitset: the set of ops already linearized, and the sets of
//! CAS uniques the model tracks.
//!
//! It owns nothing but bits; it must not know what they mean. Called by the
//! model and the search. [`Bits::memo_form`] gives the compact, canonical form
//! the search memoizes on, so memory per visited state does not grow with the
//! length of the history.

/// `len` bits, all starting clear. The length is fixed at creation, so equal
/// sets compare and hash equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bits {
    words: Box<[u64]>,
}

const WORD_BITS: usize = 64;

impl Bits {
    pub(crate) fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(WORD_BITS)].into_boxed_slice(),
        }
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.words[i / WORD_BITS] & (1 << (i % WORD_BITS)) != 0
    }

    pub(crate) fn set(&mut self, i: usize) {
        self.words[i / WORD_BITS] |= 1 << (i % WORD_BITS);
    }

    pub(crate) fn clear_all(&mut self) {
        self.words.fill(0);
    }

    /// The set as (number of leading full words, the words after them with
    /// trailing zero words dropped). A linearized set is nearly a prefix of
    /// the ops in invocation order, so this stays a few words long however
    /// long the history is. Two sets of the same length are equal iff their
    /// memo forms are.
    pub(crate) fn memo_form(&self) -> (u32, Box<[u64]>) {
        let full = self.words.iter().take_while(|w| **w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|w| *w != 0)
            .map_or(full, |last| (last + 1).max(full));
        let full_u32 = u32::try_from(full).unwrap_or(u32::MAX);
        (full_u32, self.words[full..end].into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_clear() {
        let mut bits = Bits::new(130);
        bits.set(0);
        bits.set(64);
        bits.set(129);
        assert!(bits.get(0) && bits.get(64) && bits.get(129));
        assert!(!bits.get(1) && !bits.get(128));
        bits.clear_all();
        assert_eq!(bits, Bits::new(130));
    }

    #[test]
    fn memo_form_is_canonical_and_compact() {
        let mut a = Bits::new(300);
        for i in 0..200 {
            a.set(i);
        }
        a.set(250);
        let (full, rest) = a.memo_form();
        assert_eq!(full, 3);
        assert_eq!(rest.len(), 1);
        let mut b = Bits::new(300);
        for i in (0..200).rev() {
            b.set(i);
        }
        assert_ne!(a.memo_form(), b.memo_form());
        b.set(250);
        assert_eq!(a.memo_form(), b.memo_form());
        assert_eq!(Bits::new(300).memo_form(), (0, Box::from([])));
    }
}
