//! A Bloom filter of the idempotency keys of every sealed segment: what
//! keeps "a `(source, id)` is stored at most once in the retained log"
//! exact without one entry per sealed event in memory.
//!
//! Publishing asks it about every new event's key. "No" (all but about one
//! in five hundred new events) costs one cache line; "maybe" sends the
//! publishing request to the sealed segments' key tables on disk (one
//! block per segment, found by the fences in memory), and the stored event
//! itself confirms a match. The filter is blocked (every key's bits lie in
//! one 64-byte block), with 14 bits per key and 8 bits per key set: 0.19%
//! false positives at capacity, and 1.75 bytes of memory per sealed event,
//! against the 32 of the exact in-memory set the active segment keeps
//! (about 98 MB for 50 million events instead of 1.6 GB).
//!
//! Why 14 bits: the filter is most of a large store's memory (112 of the
//! 285 MiB a 50-million-event store held after a minute of publishing,
//! with 16 bits), and the budget is 256 MB. Measured at capacity over 4
//! million keys: 16 bits 0.09% "maybe", 14 bits 0.19%, 13 bits 0.28%, 12
//! bits 0.42%. A "maybe" reads one key block per sealed segment (about 280
//! at 50 million events) on the request's own task, so each halving of
//! the memory per key beyond this costs more than it saves. A cuckoo
//! filter (12-bit fingerprints, 12.9 bits per key at 0.18%) was tried and
//! not kept: adding a sealed segment's keys to it near its capacity took
//! 0.8-3.6 µs a key (140-680 ms per segment, on the writer's thread, a
//! stall for every publisher) against 0.15 µs here.
//!
//! Keys of segments deleted by retention stay in the filter: they only make
//! "maybe" a little more likely, never a wrong answer. The writer rebuilds
//! it, larger, from the key tables when it holds more keys than it was
//! sized for: on a thread of its own, while publishing goes on with the
//! full filter (at 50 million events a rebuild reads 800 MB of key tables,
//! seconds that every commit would otherwise wait). Until it is swapped
//! in, both filters are in memory.
//!
//! It is saved (`keys.filter` in the data directory: the bits, the sealed
//! segments whose keys it holds, each named by first seq and SHA-256, and a
//! CRC32C) at a clean stop and every [`SAVE_EVERY_SEALS`] seals, so a
//! start loads it and reads only the key tables of segments sealed since,
//! instead of 16 bytes per sealed event. A missing, damaged or foreign file
//! only costs that read: it holds no data, and a segment it does not name
//! is read whatever it says.

use std::io::Write as _;
use std::path::Path;

/// Seals between two saves of the filter while the store runs (plus one
/// at every clean stop). A start after a crash reads the key tables of at
/// most this many segments beyond what the saved filter holds.
pub const SAVE_EVERY_SEALS: u64 = 8;

/// The first bytes of a saved filter.
const MAGIC: &[u8; 8] = b"MBKEYF1\n";

/// Bits per key at capacity (16 before: see the module's doc).
const BITS_PER_KEY: u64 = 14;
/// Bits set per key (all in one block).
const BITS_SET: u32 = 8;
/// The smallest filter: 64 blocks (4 KiB), for 2,340 keys. (Sizes come
/// from [`capacity_for`], whose headroom is a million keys by default.)
const MIN_BLOCKS: u64 = 64;

/// Keys of room a filter is given beyond what it holds and an eighth more,
/// by default (`--key-filter-headroom`).
pub const DEFAULT_HEADROOM: u64 = 1_000_000;

/// What the filter is sized for when the sealed segments hold `events`
/// keys: room for an eighth more and `headroom` besides, so it is rebuilt
/// larger (see [`KeyFilter::is_over_capacity`]) only after many seals.
pub fn capacity_for(events: u64, headroom: u64) -> u64 {
    events.saturating_add(events / 8).saturating_add(headroom)
}

/// The sealed segments' key filter as the writer and the publish path
/// share it (`Shared::sealed_keys`). A publishing request asks it before
/// its events reach the writer, and reads the key tables its "maybe"s
/// point to on its own task ([`StoreHandle::append`]); the writer then
/// checks only the segments sealed since. So a lookup that reads key
/// blocks from disk (one per sealed segment: a few hundred at 50 million
/// events, slow on a cold page cache) delays that request alone, not
/// every commit behind it.
///
/// [`StoreHandle::append`]: super::StoreHandle::append
#[derive(Debug)]
pub struct SealedKeys {
    /// The filter.
    pub filter: KeyFilter,
    /// The active segment's first seq when the filter last changed: every
    /// segment sealed before it has its keys in the filter (or, if its
    /// index file could not be written, in the writer's exact set, which
    /// the writer always asks).
    pub before: u64,
}

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

    /// The saved form: magic, keys u64, capacity u64, blocks u64, the
    /// covered segments (n u32, then first seq u64 and SHA-256 32 bytes
    /// each), the blocks, and a CRC32C u32 of everything before it.
    pub fn encode(&self, covered: &[Covered]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.blocks.len() * 64 + covered.len() * 40 + 64);
        self.write_to(covered, &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the saved form ([`encode`](Self::encode)) to `w` a chunk at a
    /// time: at 50 million events the filter is about 98 MB, and encoding it
    /// whole first held a second copy of it (on the writer's thread).
    pub fn write_to(
        &self,
        covered: &[Covered],
        w: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let mut crc = 0u32;
        let mut put = |bytes: &[u8], w: &mut dyn std::io::Write| {
            crc = crc32c::crc32c_append(crc, bytes);
            w.write_all(bytes)
        };
        let mut head = Vec::with_capacity(28 + covered.len() * 40);
        head.extend_from_slice(MAGIC);
        for n in [self.keys, self.capacity, self.blocks.len() as u64] {
            head.extend_from_slice(&n.to_le_bytes());
        }
        head.extend_from_slice(&(covered.len() as u32).to_le_bytes());
        for c in covered {
            head.extend_from_slice(&c.first_seq.to_le_bytes());
            head.extend_from_slice(&c.sha256);
        }
        put(&head, w)?;
        let mut chunk = Vec::with_capacity(IO_CHUNK);
        for block in &self.blocks {
            for word in block {
                chunk.extend_from_slice(&word.to_le_bytes());
            }
            if chunk.len() >= IO_CHUNK {
                put(&chunk, w)?;
                chunk.clear();
            }
        }
        put(&chunk, w)?;
        w.write_all(&crc.to_le_bytes())
    }

    /// Decodes a saved filter; `None` when the bytes are not one whole.
    pub fn decode(bytes: &[u8]) -> Option<(KeyFilter, Vec<Covered>)> {
        Self::read_from(&mut &bytes[..], bytes.len() as u64)
            .ok()
            .flatten()
    }

    /// Reads a saved filter of `len` bytes from `r` a chunk at a time, into
    /// the filter's own blocks (reading the file whole first held it twice
    /// at start-up); `Ok(None)` when it is not one whole.
    pub fn read_from(
        r: &mut impl std::io::Read,
        len: u64,
    ) -> std::io::Result<Option<(KeyFilter, Vec<Covered>)>> {
        let mut crc = 0u32;
        let mut take = |buf: &mut [u8], r: &mut dyn std::io::Read| -> std::io::Result<()> {
            r.read_exact(buf)?;
            crc = crc32c::crc32c_append(crc, buf);
            Ok(())
        };
        let whole = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(e),
        };
        let mut head = [0u8; 36];
        if let Err(e) = take(&mut head, r) {
            return whole(e);
        }
        if &head[..8] != MAGIC {
            return Ok(None);
        }
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (keys, capacity, blocks) = (u64_at(8), u64_at(16), u64_at(24));
        let n = u32::from_le_bytes(head[32..36].try_into().expect("4 bytes")) as u64;
        // Everything the header says must add up to the file's length
        // before anything is allocated from it.
        let expected = blocks
            .checked_mul(64)
            .and_then(|b| b.checked_add(n.checked_mul(40)?))
            .and_then(|b| b.checked_add(36 + 4));
        if blocks == 0 || expected != Some(len) {
            return Ok(None);
        }
        let mut covered = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut c = [0u8; 40];
            if let Err(e) = take(&mut c, r) {
                return whole(e);
            }
            covered.push(Covered {
                first_seq: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                sha256: c[8..].try_into().expect("32 bytes"),
            });
        }
        let mut filter = Vec::with_capacity(blocks as usize);
        let mut chunk = vec![0u8; IO_CHUNK];
        let mut left = blocks as usize;
        while left > 0 {
            let now = left.min(IO_CHUNK / 64);
            let buf = &mut chunk[..now * 64];
            if let Err(e) = take(buf, r) {
                return whole(e);
            }
            filter.extend(buf.chunks_exact(64).map(|b| {
                std::array::from_fn(|i| {
                    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                })
            }));
            left -= now;
        }
        let mut stored = [0u8; 4];
        if let Err(e) = r.read_exact(&mut stored) {
            return whole(e);
        }
        if u32::from_le_bytes(stored) != crc {
            return Ok(None);
        }
        Ok(Some((
            KeyFilter {
                blocks: filter,
                keys,
                capacity,
            },
            covered,
        )))
    }
}

/// Bytes a save or load of the filter moves at a time.
const IO_CHUNK: usize = 1 << 20;

/// A filter built anew from the key tables of the segments sealed at one
/// moment, on a thread of its own, while the writer went on sealing.
#[derive(Debug)]
pub struct Rebuilt {
    /// The filter.
    pub filter: KeyFilter,
    /// The segments whose keys it holds.
    pub covered: Vec<Covered>,
}

impl Rebuilt {
    /// Adds the keys of a segment sealed after the build listed the
    /// segments: without them a duplicate of its events would be stored
    /// again once the rebuilt filter is swapped in.
    pub fn add_segment(&mut self, orders: &[u64], covered: Covered) {
        orders.iter().for_each(|&o| self.filter.insert(o));
        self.covered.push(covered);
    }
}

/// A sealed segment whose keys a saved filter holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Covered {
    /// Its first seq.
    pub first_seq: u64,
    /// Its SHA-256, as the manifest records it.
    pub sha256: [u8; 32],
}

impl Covered {
    /// The segment `first_seq` with the manifest's hex SHA-256 `sha256`.
    pub fn of(first_seq: u64, sha256: &str) -> Covered {
        let mut sha = [0u8; 32];
        // Not 64 hex digits: zeros, which match no real segment.
        let _ = hex::decode_to_slice(sha256, &mut sha);
        Covered {
            first_seq,
            sha256: sha,
        }
    }
}

/// Loads the saved filter of `data_dir`, if there is a whole one.
pub fn load(data_dir: &Path) -> Option<(KeyFilter, Vec<Covered>)> {
    let path = super::layout::key_filter_path(data_dir);
    let file = std::fs::File::open(&path).ok()?;
    let len = file.metadata().ok()?.len();
    let loaded = KeyFilter::read_from(&mut std::io::BufReader::new(file), len)
        .ok()
        .flatten();
    if loaded.is_none() {
        tracing::warn!(file = %path.display(), "the saved key filter is damaged; it is built again from the key tables");
    }
    loaded
}

/// Saves the filter in `keys` atomically, written from it a chunk at a
/// time under its read lock (publishing requests only read it too; the
/// writer's next change waits for the write, not for the fsync).
pub fn save(
    data_dir: &Path,
    keys: &std::sync::RwLock<SealedKeys>,
    covered: &[Covered],
) -> std::io::Result<()> {
    super::fsutil::write_atomic_streamed(&super::layout::key_filter_path(data_dir), |f| {
        let keys = keys.read().unwrap_or_else(|e| e.into_inner());
        let mut w = std::io::BufWriter::with_capacity(IO_CHUNK, f);
        keys.filter.write_to(covered, &mut w)?;
        w.flush()
    })
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
        // About 0.2% at capacity; well below 1% in any case.
        assert!(
            (false_positives as u64) < n / 100,
            "{false_positives} false positives in {n}"
        );
    }

    #[test]
    fn a_saved_filter_loads_whole_and_a_damaged_one_not_at_all() {
        let mut f = KeyFilter::with_capacity(1000);
        for i in 0..1000u64 {
            f.insert(key_order("/s", &i.to_string()));
        }
        let covered = vec![Covered::of(1, &"ab".repeat(32)), Covered::of(77, "short")];
        let bytes = f.encode(&covered);
        let (g, c) = KeyFilter::decode(&bytes).unwrap();
        assert_eq!(c, covered);
        assert_eq!(
            (g.keys, g.capacity, g.blocks.len()),
            (f.keys, f.capacity, f.blocks.len())
        );
        assert!((0..1000u64).all(|i| g.may_contain(key_order("/s", &i.to_string()))));
        for i in [0, 9, 30, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(KeyFilter::decode(&bad).is_none(), "flip at {i}");
        }
        assert!(KeyFilter::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(KeyFilter::decode(&[]).is_none());
    }

    /// Saved and loaded through a file a chunk at a time, with more blocks
    /// than one chunk holds, the filter comes back bit for bit.
    #[test]
    fn a_filter_larger_than_a_chunk_is_saved_and_loaded_through_its_file() {
        let n = 1_500_000u64;
        let mut f = KeyFilter::with_capacity(n);
        for i in 0..n {
            f.insert(key_order("/s", &i.to_string()));
        }
        assert!(f.heap_bytes() > 2 * IO_CHUNK);
        let dir = tempfile::tempdir().unwrap();
        let covered = vec![Covered::of(5, &"cd".repeat(32))];
        let keys = std::sync::RwLock::new(SealedKeys {
            filter: f.clone(),
            before: 0,
        });
        save(dir.path(), &keys, &covered).unwrap();
        let path = crate::store::layout::key_filter_path(dir.path());
        assert_eq!(std::fs::read(&path).unwrap(), f.encode(&covered));
        let (g, c) = load(dir.path()).unwrap();
        assert_eq!((g.blocks, c), (f.blocks, covered));
        // One byte short, or one more: not a whole filter.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(load(dir.path()).is_none());
        std::fs::write(&path, [bytes.as_slice(), b"x"].concat()).unwrap();
        assert!(load(dir.path()).is_none());
    }

    #[test]
    fn a_rebuilt_filter_gets_the_keys_of_segments_sealed_during_the_build() {
        let mut built = Rebuilt {
            filter: KeyFilter::with_capacity(1000),
            covered: vec![Covered::of(1, "aa")],
        };
        (0..100u64).for_each(|k| built.filter.insert(key_order("/s", &k.to_string())));
        let since: Vec<u64> = (100..200u64)
            .map(|k| key_order("/s", &k.to_string()))
            .collect();
        built.add_segment(&since, Covered::of(101, "bb"));
        for k in 0..200u64 {
            assert!(
                built.filter.may_contain(key_order("/s", &k.to_string())),
                "key {k}"
            );
        }
        assert_eq!(
            built.covered,
            vec![Covered::of(1, "aa"), Covered::of(101, "bb")]
        );
    }

    /// What the filter is for: at capacity it holds each key in 14 bits
    /// and answers "maybe" for about 0.19% of keys never added.
    #[test]
    fn at_capacity_it_takes_14_bits_a_key_for_a_fifth_of_a_percent_of_maybes() {
        let mut f = KeyFilter::with_capacity(1_000_000);
        for i in 0..f.capacity {
            f.insert(key_order("/src", &format!("id-{i}")));
        }
        let bits_per_key = f.heap_bytes() as f64 * 8.0 / f.capacity as f64;
        assert!(bits_per_key < 14.01, "{bits_per_key:.3} bits per key");
        let tries = 1_000_000u64;
        let maybes = (0..tries)
            .filter(|i| f.may_contain(key_order("/src", &format!("other-{i}"))))
            .count() as f64;
        let rate = maybes / tries as f64;
        assert!(
            (0.0012..0.0026).contains(&rate),
            "{:.3}% of absent keys answered maybe",
            rate * 100.0
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
