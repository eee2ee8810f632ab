//! The idempotency set of the active segment: which `(source, id)` pairs
//! it holds, and at which sequence number. A repeat publish answers with the
//! original `seq`. When the segment is sealed its keys leave this set for
//! the sealed segments' key filter and the segment's key table on disk
//! (see [`super::keyfilter`]), so it holds one segment's events, not the
//! store's.
//!
//! It keeps hashes per event instead of the strings (32 bytes per event
//! instead of ~100) together with what a duplicate is answered with, so the
//! writer answers a duplicate from memory and never reads and parses the
//! original from disk (a batch of 1,000 duplicates of a 1 MB event held the
//! writer, and so every publish, for 0.25 s doing that). A pair is found by
//! its 64-bit [`key_hash`] and confirmed by a second, independent 64-bit
//! hash (the caller also compares `source` exactly, from the index); the
//! rare first-hash collision goes to a small exact-key side table. The
//! original's `time` is kept as microseconds when it is in the form the
//! server writes (`2026-01-31T12:00:00.123456Z`) or one of the two other
//! common UTC forms (milliseconds, as JavaScript's `toISOString` writes, and
//! whole seconds), else as its text.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

/// `(source, id)` to `seq`.
#[derive(Debug)]
pub struct DedupIndex {
    /// Split into [`SHARDS`] maps by hash bits, so a map that grows rehashes
    /// 1/256 of the keys. Inserting ten million keys in a test program on a
    /// 2-vCPU machine, the slowest insert (a doubling) took 168 ms with one
    /// map and 3.7 ms with 256: a stall of the writer, and so of every
    /// publish, that grew with the store.
    by_hash: Vec<HashMap<u64, Slot, BuildHasherDefault<PreHashed>>>,
    overflow: HashMap<(Box<str>, Box<str>), Slot>,
    /// `time` of stored events whose time is not in the server's own form,
    /// by seq.
    odd_times: HashMap<u64, Box<str>>,
}

/// What is kept per stored `(source, id)`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    /// [`check_hash`] of the pair.
    check: u64,
    /// [`encode_time`] of its `time`, or [`ODD_TIME`].
    time: u64,
}

/// The time is in [`DedupIndex::odd_times`].
const ODD_TIME: u64 = u64::MAX;

/// Number of hash-map shards of [`DedupIndex`].
const SHARDS: usize = 256;

/// The shard of a key. Bits 48..56: the hash map itself uses the low bits
/// (bucket) and the top seven (tag), which must stay varied within a shard.
fn shard(hash: u64) -> usize {
    (hash >> 48) as usize % SHARDS
}

impl Default for DedupIndex {
    fn default() -> Self {
        DedupIndex {
            by_hash: (0..SHARDS).map(|_| HashMap::default()).collect(),
            overflow: HashMap::new(),
            odd_times: HashMap::new(),
        }
    }
}

/// The hash of a `(source, id)` pair; computed once per event and reused.
pub fn key_hash(source: &str, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// A second hash of the pair, independent of [`key_hash`] (another key),
/// that confirms a hit.
fn check_hash(source: &str, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    // A different input stream than `key_hash` hashes: finding a pair that
    // collides in both takes about 2^64 tries, not 2^32.
    0x6d73_6762_7573_6964_u64.hash(&mut h);
    source.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// Digits of the fraction of a second in each form [`encode_time`] takes,
/// by its tag (the top bits of the code): the server's own (6), what
/// JavaScript's `toISOString` writes (3), and none. Any other time is kept
/// as text: at a full segment of events with millisecond times (the bench's
/// and every browser's) that text was 9 of the 15 MB this set held.
const TIME_FRACTIONS: [usize; 3] = [6, 3, 0];

/// Bit where a time code's tag starts (microseconds since 1970 fit below it
/// until the year 38,000).
const TIME_TAG_SHIFT: u32 = 60;

/// `time` as microseconds since 1970 and its form when it is exactly what
/// [`decode_time`] gives back: `YYYY-MM-DDThh:mm:ss` then a fraction of 6,
/// 3 or no digits, then `Z`; else `None`.
pub fn encode_time(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    let (tag, digits) = TIME_FRACTIONS
        .iter()
        .enumerate()
        .find(|(_, &n)| b.len() == 20 + n + usize::from(n > 0))?;
    let end = b.len() - 1;
    if b[end] != b'Z' {
        return None;
    }
    for (i, &c) in b[..end].iter().enumerate() {
        let ok = match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return None;
        }
    }
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0i64, |n, &c| n * 10 + i64::from(c - b'0'));
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let fraction = num(20..20 + digits) * 10i64.pow((6 - digits) as u32);
    let (h, mi, sec, micros) = (num(11..13), num(14..16), num(17..19), fraction);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > month_days[mo as usize - 1] {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let t = ((days * 24 + h) * 60 + mi) * 60 + sec;
    Some((t * 1_000_000 + micros) as u64 | (tag as u64) << TIME_TAG_SHIFT)
}

/// The text [`encode_time`] encoded.
pub fn decode_time(code: u64) -> String {
    let micros = code & ((1 << TIME_TAG_SHIFT) - 1);
    let format = match code >> TIME_TAG_SHIFT {
        0 => chrono::SecondsFormat::Micros,
        1 => chrono::SecondsFormat::Millis,
        _ => chrono::SecondsFormat::Secs,
    };
    chrono::DateTime::from_timestamp_micros(micros as i64)
        .map(|t| t.to_rfc3339_opts(format, true))
        .unwrap_or_default()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The map's keys are already SipHash outputs: hashing them again is waste.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl DedupIndex {
    /// The `seq` and `time` stored for `(source, id)`, whose [`key_hash`]
    /// is `hash`. The caller confirms `source` against the stored event's.
    pub fn lookup(&self, hash: u64, source: &str, id: &str) -> Option<(u64, String)> {
        let slot = if let Some(slot) = (!self.overflow.is_empty())
            .then(|| self.overflow.get(&(Box::from(source), Box::from(id))))
            .flatten()
        {
            *slot
        } else {
            let slot = *self.by_hash[shard(hash)].get(&hash)?;
            if slot.check != check_hash(source, id) {
                return None;
            }
            slot
        };
        Some((slot.seq, self.time(&slot)))
    }

    fn time(&self, slot: &Slot) -> String {
        match slot.time {
            ODD_TIME => self
                .odd_times
                .get(&slot.seq)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            micros => decode_time(micros),
        }
    }

    /// Forgets every key stored before `first_seq` (retention deleted those
    /// events, so the idempotency window shrinks with them).
    pub fn forget_before(&mut self, first_seq: u64) {
        for map in &mut self.by_hash {
            map.retain(|_, slot| slot.seq >= first_seq);
        }
        self.overflow.retain(|_, slot| slot.seq >= first_seq);
        self.odd_times.retain(|seq, _| *seq >= first_seq);
    }

    /// Records `(source, id)` at `seq` with its `time`. Call only after
    /// [`DedupIndex::lookup`] found nothing.
    pub fn insert(&mut self, source: &str, id: &str, time: &str, seq: u64) {
        self.insert_hashed(key_hash(source, id), source, id, time, seq);
    }

    /// [`DedupIndex::insert`] with the pair's [`key_hash`] already computed.
    pub fn insert_hashed(&mut self, hash: u64, source: &str, id: &str, time: &str, seq: u64) {
        let time = encode_time(time).unwrap_or_else(|| {
            self.odd_times.insert(seq, Box::from(time));
            ODD_TIME
        });
        let slot = Slot {
            seq,
            check: check_hash(source, id),
            time,
        };
        match self.by_hash[shard(hash)].entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(slot);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow
                    .insert((Box::from(source), Box::from(id)), slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_common_utc_forms_round_trip_and_others_are_kept_as_text() {
        for t in [
            "2026-01-31T12:00:00.123456Z",
            "1970-01-01T00:00:00.000000Z",
            "2024-02-29T23:59:59.999999Z",
            &crate::clock::now_rfc3339(),
            "2026-01-31T12:00:00.000Z",
            "2026-01-31T12:00:00.120Z",
            "2024-02-29T23:59:59.999Z",
            "2026-01-31T12:00:00Z",
            "1970-01-01T00:00:00Z",
        ] {
            let code = encode_time(t).unwrap_or_else(|| panic!("{t} encodes"));
            assert_eq!(decode_time(code), t);
        }
        // The same instant in two forms: two codes, each giving its own text.
        assert_ne!(
            encode_time("2026-01-31T12:00:00.000Z"),
            encode_time("2026-01-31T12:00:00.000000Z")
        );
        for t in [
            "2026-01-31T12:00:00.1Z",
            "2026-01-31T12:00:00.12345Z",
            "2026-01-31T12:00:00.123456789Z",
            "2026-01-31T12:00:00.123+00:00",
            "2026-01-31T12:00:00.123456+02:00",
            "2025-02-29T12:00:00.000000Z",
            "1969-12-31T23:59:59.000000Z",
            "2026-01-31t12:00:00.123456Z",
            "2026-12-31T23:59:60.000000Z",
        ] {
            assert_eq!(encode_time(t), None, "{t}");
        }
        let mut d = DedupIndex::default();
        d.insert("/s", "a", "2026-01-31T12:00:00+02:00", 1);
        d.insert("/s", "b", "2026-01-31T12:00:00.000001Z", 2);
        let h = key_hash("/s", "a");
        assert_eq!(
            d.lookup(h, "/s", "a"),
            Some((1, "2026-01-31T12:00:00+02:00".into()))
        );
        let h = key_hash("/s", "b");
        assert_eq!(
            d.lookup(h, "/s", "b"),
            Some((2, "2026-01-31T12:00:00.000001Z".into()))
        );
        assert_eq!(
            d.lookup(h, "/s", "c"),
            None,
            "the check hash tells another id apart"
        );
        d.forget_before(2);
        assert_eq!(d.lookup(key_hash("/s", "a"), "/s", "a"), None);
        assert!(d.odd_times.is_empty());
    }
}
