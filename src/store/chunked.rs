//! A deque stored in fixed-size chunks, for the per-event table of the
//! index, which grows with the store.
//!
//! A `VecDeque` doubles by copying every element into a new allocation,
//! and the index grows while the writer holds its write lock: at ten
//! million events (32 bytes each) one doubling copies 320 MB (the slowest
//! push took 45 ms in a test program on a 2-vCPU machine), during which
//! every reader waits. Chunks never move: appending allocates at most one
//! chunk, and dropping a prefix (retention) frees whole chunks.

use std::collections::VecDeque;

/// Elements per chunk (2 MiB of 32-byte index entries).
const CHUNK: usize = 1 << 16;

/// A FIFO sequence indexed from the front, in chunks of 65,536 elements.
#[derive(Debug)]
pub struct ChunkedDeque<T> {
    /// Every chunk but the last is full.
    chunks: VecDeque<Vec<T>>,
    /// Elements already dropped from the front of `chunks[0]`.
    head: usize,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T> ChunkedDeque<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends at the back.
    pub fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// The element at `i` from the front.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let at = self.head + i;
        Some(&self.chunks[at / CHUNK][at % CHUNK])
    }

    /// Removes the first `n` elements (all, if fewer), passing each to
    /// `dropped` first.
    pub fn drop_front(&mut self, n: usize, mut dropped: impl FnMut(&T)) {
        let n = n.min(self.len);
        for i in 0..n {
            if let Some(v) = self.get(i) {
                dropped(v);
            }
        }
        self.head += n;
        self.len -= n;
        while self.head >= CHUNK {
            self.chunks.pop_front();
            self.head -= CHUNK;
        }
        if self.len == 0 && self.chunks.front().is_some_and(|c| c.len() == self.head) {
            // Nothing left but dropped slots: start afresh.
            self.chunks.clear();
            self.head = 0;
        }
    }
}

impl<T> std::ops::Index<usize> for ChunkedDeque<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i)
            .unwrap_or_else(|| panic!("index {i} out of range for length {}", self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vecdeque_across_chunk_boundaries() {
        let mut c = ChunkedDeque::default();
        let mut v = VecDeque::new();
        let mut next = 0u64;
        // Appends and front drops of every size around the chunk size.
        for (push, drop) in [
            (CHUNK + 5, 3),
            (10, CHUNK - 2),
            (2 * CHUNK, CHUNK + 7),
            (1, 0),
            (0, 5 * CHUNK),
            (CHUNK, 1),
        ] {
            for _ in 0..push {
                c.push_back(next);
                v.push_back(next);
                next += 1;
            }
            let mut seen = Vec::new();
            c.drop_front(drop, |x| seen.push(*x));
            let expected: Vec<u64> = v.drain(..drop.min(v.len())).collect();
            assert_eq!(seen, expected);
            assert_eq!(c.len(), v.len());
            for i in [0, 1, CHUNK - 1, CHUNK, v.len().saturating_sub(1)] {
                assert_eq!(c.get(i), v.get(i), "at {i}");
            }
            assert_eq!(c.get(v.len()), None);
        }
        assert!(
            c.chunks.len() <= c.len / CHUNK + 2,
            "dropped chunks are freed"
        );
    }
}
