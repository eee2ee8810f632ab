//! A Bloom filter of the idempotency keys of every sealed segment: what
//! keeps "a `(source, id)` is stored at most once in the retained log"
//! exact without one entry per sealed event in memory.
//!
//! Publishing asks it about every new event's key. "No" (all but about one
//! in a thousand new events) costs one cache line; "maybe" sends the writer
//! to the sealed segments' key tables on disk (one block per segment, found
//! by the fences in memory), and the stored event itself confirms a match.
//! The filter is blocked (every key's bits lie in one 64-byte block), with
//! 16 bits per key and 8 bits per key set: about 0.1-0.2% false positives
//! at capacity, and 2 bytes of memory per sealed event, against the 32 of
//! the exact in-memory set the active segment keeps (about 100 MB for 50
//! million events instead of 1.6 GB).
//!
//! Keys of segments deleted by retention stay in the filter: they only make
//! "maybe" a little more likely, never a wrong answer. The writer rebuilds
//! it, twice as large, from the key tables when it holds more keys than it
//! was sized for.

/// Bits per key at capacity.
const BITS_PER_KEY: u64 = 16;
/// Bits set per key (all in one block).
const BITS_SET: u32 = 8;
/// The smallest filter: 4,096 blocks (256 KiB), for 131,072 keys.
const MIN_BLOCKS: u64 = 4096;

/// The filter. Keys are [`key_order`](super::segindex::key_order) hashes.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    blocks: Vec<[u64; 8]>,
    keys: u64,
    capacity: u64,
}

impl KeyFilter {
    /// A filter sized for `keys` keys (at least [`MIN_BLOCKS`] blocks).
    pub fn with_capacity(keys: u64) -> Self {
        let bits = keys.max(1).saturating_mul(BITS_PER_KEY);
        let blocks = bits.div_ceil(512).max(MIN_BLOCKS);
        KeyFilter {
            blocks: vec![[0; 8]; blocks as usize],
            keys: 0,
            capacity: blocks * 512 / BITS_PER_KEY,
        }
    }

    /// The block of `order` and the bits to set or test in it (word, mask).
    #[inline]
    fn probes(&self, order: u64) -> (usize, [(usize, u64); BITS_SET as usize]) {
        // FNV-1a's low bits are weak: mix before using them.
        let mut h = order ^ (order >> 33);
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        // The block: the high 32 bits scaled to the number of blocks (no
        // power-of-two rounding, which could double the memory).
        let block = (((h >> 32) * self.blocks.len() as u64) >> 32) as usize;
        // Eight 9-bit positions (0..512) from a second mix.
        let mut g = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut out = [(0usize, 0u64); BITS_SET as usize];
        for slot in &mut out {
            let bit = (g & 511) as usize;
            *slot = (bit / 64, 1u64 << (bit % 64));
            g = g.rotate_right(9) ^ (g >> 17);
            g = g.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        (block, out)
    }

    /// Adds a key.
    pub fn insert(&mut self, order: u64) {
        let (block, probes) = self.probes(order);
        let b = &mut self.blocks[block];
        for (word, mask) in probes {
            b[word] |= mask;
        }
        self.keys += 1;
    }

    /// False when the key was never added; true when it may have been.
    #[inline]
    pub fn may_contain(&self, order: u64) -> bool {
        let (block, probes) = self.probes(order);
        let b = &self.blocks[block];
        probes.iter().all(|&(word, mask)| b[word] & mask != 0)
    }

    /// True once it holds more keys than it was sized for.
    pub fn is_over_capacity(&self) -> bool {
        self.keys > self.capacity
    }

    /// Keys added.
    pub fn len(&self) -> u64 {
        self.keys
    }

    /// True before the first key.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Bytes of memory it holds.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segindex::key_order;

    #[test]
    fn every_key_added_is_found_and_few_others_are() {
        let n = 200_000u64;
        let mut f = KeyFilter::with_capacity(n);
        for i in 0..n {
            f.insert(key_order("/src", &format!("id-{i}")));
        }
        assert!(!f.is_over_capacity());
        for i in 0..n {
            assert!(f.may_contain(key_order("/src", &format!("id-{i}"))));
        }
        let false_positives = (0..n)
            .filter(|i| f.may_contain(key_order("/src", &format!("other-{i}"))))
            .count();
        // About 0.1-0.2% at capacity; well below 1% in any case.
        assert!(
            (false_positives as u64) < n / 100,
            "{false_positives} false positives in {n}"
        );
    }

    #[test]
    fn it_says_when_it_holds_more_than_it_was_sized_for() {
        let mut f = KeyFilter::with_capacity(10);
        let cap = f.capacity;
        for i in 0..=cap {
            f.insert(i);
        }
        assert!(f.is_over_capacity());
        assert_eq!(f.len(), cap + 1);
    }
}
