//! Per-segment index files (`segments/<segment>.idx`): everything start-up
//! needs from a sealed segment, so that it does not read the segment.
//!
//! The writer builds one incrementally while the segment is active
//! ([`Builder`], fed at each commit with what it already has in hand) and
//! writes it atomically when it seals the segment; start-up loads it instead
//! of reading, hashing and scanning the segment, and rebuilds it from the
//! segment when it is missing or damaged. An index file is derived data:
//! losing one loses nothing, it costs one read of its segment.
//!
//! The format is binary, little-endian, and cheap to load:
//!
//! ```text
//! magic "MBSEGIX\n", version u32
//! header: segment file name (u32 length + bytes), first_seq u64,
//!         last_seq u64, record count u64, segment bytes u64,
//!         the segment's SHA-256 (32 bytes) as the manifest records it
//! three string tables (types, sources, subjects), each:
//!         n u32, then per name: length u32, bytes, count u64 (records using it)
//! records, one per seq from first_seq (count of them), 28 bytes each:
//!         event offset u64, event length u32, CRC32C u32,
//!         type id u32, source id u32, subject id u32 (u32::MAX: none)
//! idempotency keys, sorted by [`key_order`] (then seq): n u64, then each:
//!         key_order u64, seq u64, source id u32,
//!         id (u32 length + bytes), time (u32 length + bytes)
//! trailer: CRC32C u32 of every byte before it
//! ```
//!
//! The header binds the file to exactly one sealed segment (name, seqs,
//! length, SHA-256): an index left over from another segment, or from a
//! segment later replaced by different bytes, does not match the manifest
//! and is rebuilt. The string tables carry counts, so per-segment type and
//! source totals (and skipping segments a filter cannot match) need no scan
//! of the records; the key table is sorted by a hash that is stable across
//! builds ([`key_order`], FNV-1a), so a lookup can bisect it on disk.
//!
//! Encoding and decoding are pure; [`load`] and [`store`] are the two
//! thin file operations the writer, recovery, the monitor and `msgbus
//! verify` share.

use std::collections::HashMap;
use std::path::Path;

use super::fsutil;
use super::layout;
use super::manifest::SealedSegment;

/// Current format version.
pub const VERSION: u32 = 1;
/// The first bytes of every index file.
const MAGIC: &[u8; 8] = b"MBSEGIX\n";
/// `subject` of a record without one.
pub const NO_SUBJECT: u32 = u32::MAX;
/// Bytes of one record.
const RECORD_BYTES: usize = 28;

/// What an index file says about its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The segment's file name under `segments/`.
    pub file: String,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// The segment's length in bytes.
    pub bytes: u64,
    /// The segment's SHA-256, hex, as in the manifest.
    pub sha256: String,
}

impl Header {
    /// The header binding an index to the sealed segment `s`.
    pub fn of(s: &SealedSegment) -> Header {
        Header {
            file: s.file.clone(),
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            bytes: s.bytes,
            sha256: s.sha256.clone(),
        }
    }
}

/// One interned name and how many records use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The type, source or subject.
    pub name: String,
    /// Records of the segment that carry it.
    pub count: u64,
}

/// Where one record's event sits and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Offset of the event bytes in the segment.
    pub offset: u64,
    /// Length of the event bytes.
    pub len: u32,
    /// CRC32C of the event bytes.
    pub crc: u32,
    /// Index into [`SegmentIndex::types`].
    pub ty: u32,
    /// Index into [`SegmentIndex::sources`].
    pub source: u32,
    /// Index into [`SegmentIndex::subjects`], or [`NO_SUBJECT`].
    pub subject: u32,
}

/// One idempotency key `(source, id) -> seq`, with the stored `time` a
/// duplicate is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// [`key_order`] of `(source, id)`.
    pub order: u64,
    /// The stored event's seq.
    pub seq: u64,
    /// Index into [`SegmentIndex::sources`].
    pub source: u32,
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `time`.
    pub time: String,
}

/// A decoded index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    /// The segment it belongs to.
    pub header: Header,
    /// Event types, by id.
    pub types: Vec<Name>,
    /// Event sources, by id.
    pub sources: Vec<Name>,
    /// Event subjects, by id.
    pub subjects: Vec<Name>,
    /// One per seq, from `header.first_seq`.
    pub records: Vec<Record>,
    /// Every `(source, id)`, sorted by [`Key::order`] then seq.
    pub keys: Vec<Key>,
}

/// Why an index file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// It ends before its trailer or a part it announces.
    #[error("is truncated ({0})")]
    Truncated(&'static str),
    /// Not an index file.
    #[error("is not a segment index file (bad magic)")]
    Magic,
    /// Another format version.
    #[error("has format version {0}, this msgbus reads version {VERSION}")]
    Version(u32),
    /// The trailer's CRC32C does not match its bytes.
    #[error("fails its checksum (CRC32C {actual:08x}, the trailer says {stored:08x})")]
    Checksum {
        /// CRC32C of the bytes.
        actual: u32,
        /// CRC32C in the trailer.
        stored: u32,
    },
    /// Its parts contradict each other.
    #[error("is inconsistent: {0}")]
    Invalid(String),
    /// It belongs to another segment, or to other bytes of this one.
    #[error("does not match the manifest's entry: {0}")]
    Mismatch(String),
}

impl SegmentIndex {
    /// Checks that this index describes exactly the sealed segment `s`.
    pub fn check_matches(&self, s: &SealedSegment) -> Result<(), IndexError> {
        let want = Header::of(s);
        if self.header != want {
            return Err(IndexError::Mismatch(format!(
                "it is for {} seq {}..={} ({} bytes, SHA-256 {}), the manifest says {} seq {}..={} ({} bytes, SHA-256 {})",
                self.header.file,
                self.header.first_seq,
                self.header.last_seq,
                self.header.bytes,
                self.header.sha256,
                want.file,
                want.first_seq,
                want.last_seq,
                want.bytes,
                want.sha256
            )));
        }
        Ok(())
    }
}

/// The order of the key table: FNV-1a 64 of `source`, a zero byte, `id`.
/// Defined here, not by the standard library's hasher, so it is the same in
/// every build that reads the file.
pub fn key_order(source: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in source.as_bytes().iter().chain(&[0u8]).chain(id.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Interns names of one table, counting their uses.
#[derive(Debug, Default, Clone)]
struct Table {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Name>,
}

impl Table {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            self.names[id as usize].count += 1;
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(Box::from(s), id);
        self.names.push(Name {
            name: s.to_string(),
            count: 1,
        });
        id
    }
}

/// Builds the index of the active segment as its records are committed.
/// Runs on the writer at every commit, so it allocates nothing per event:
/// ids and times go into one growing text buffer.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    types: Table,
    sources: Table,
    subjects: Table,
    records: Vec<Record>,
    keys: Vec<PendingKey>,
    /// Every key's id then time, back to back.
    text: String,
}

/// A key held by the [`Builder`]: its id and time are in `Builder::text`.
#[derive(Debug, Clone, Copy)]
struct PendingKey {
    order: u64,
    seq: u64,
    /// Where its id starts in the text buffer; its time follows the id.
    start: usize,
    source: u32,
    id_len: u32,
    time_len: u32,
}

/// A key as encoded, borrowed from a [`Builder`] or a [`SegmentIndex`].
#[derive(Debug, Clone, Copy)]
struct KeyRef<'a> {
    order: u64,
    seq: u64,
    source: u32,
    id: &'a str,
    time: &'a str,
}

impl<'a> KeyRef<'a> {
    fn of(k: &'a Key) -> Self {
        KeyRef {
            order: k.order,
            seq: k.seq,
            source: k.source,
            id: &k.id,
            time: &k.time,
        }
    }
}

/// One record as the builder takes it.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Its seq (the next after the previous record's).
    pub seq: u64,
    /// Offset of the event bytes in the segment.
    pub offset: u64,
    /// Length of the event bytes.
    pub len: u32,
    /// CRC32C of the event bytes.
    pub crc: u32,
    /// CloudEvents `type`.
    pub ty: &'a str,
    /// CloudEvents `source`.
    pub source: &'a str,
    /// CloudEvents `subject`.
    pub subject: Option<&'a str>,
    /// CloudEvents `id`.
    pub id: &'a str,
    /// CloudEvents `time`.
    pub time: &'a str,
}

impl Builder {
    /// Adds the next record.
    pub fn push(&mut self, r: NewRecord<'_>) {
        let source = self.sources.intern(r.source);
        let record = Record {
            offset: r.offset,
            len: r.len,
            crc: r.crc,
            ty: self.types.intern(r.ty),
            source,
            subject: r.subject.map_or(NO_SUBJECT, |s| self.subjects.intern(s)),
        };
        self.records.push(record);
        let start = self.text.len();
        self.text.push_str(r.id);
        self.text.push_str(r.time);
        self.keys.push(PendingKey {
            order: key_order(r.source, r.id),
            seq: r.seq,
            start,
            source,
            id_len: r.id.len() as u32,
            time_len: r.time.len() as u32,
        });
    }

    /// The keys sorted as the file holds them.
    fn sorted_keys(&self) -> Vec<KeyRef<'_>> {
        let mut keys: Vec<KeyRef<'_>> = self
            .keys
            .iter()
            .map(|k| {
                let id_end = k.start + k.id_len as usize;
                KeyRef {
                    order: k.order,
                    seq: k.seq,
                    source: k.source,
                    id: &self.text[k.start..id_end],
                    time: &self.text[id_end..id_end + k.time_len as usize],
                }
            })
            .collect();
        keys.sort_unstable_by_key(|k| (k.order, k.seq));
        keys
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The finished index of the segment described by `header`.
    pub fn into_index(self, header: Header) -> SegmentIndex {
        let keys = self
            .sorted_keys()
            .into_iter()
            .map(|k| Key {
                order: k.order,
                seq: k.seq,
                source: k.source,
                id: k.id.to_string(),
                time: k.time.to_string(),
            })
            .collect();
        SegmentIndex {
            header,
            types: self.types.names,
            sources: self.sources.names,
            subjects: self.subjects.names,
            records: self.records,
            keys,
        }
    }

    /// The encoded index file of the segment described by `header`.
    pub fn encode(&self, header: &Header) -> Vec<u8> {
        encode_parts(
            header,
            [&self.types.names, &self.sources.names, &self.subjects.names],
            &self.records,
            self.sorted_keys(),
        )
    }
}

/// Encodes `index` (its keys in the order given).
pub fn encode(index: &SegmentIndex) -> Vec<u8> {
    encode_parts(
        &index.header,
        [&index.types, &index.sources, &index.subjects],
        &index.records,
        index.keys.iter().map(KeyRef::of).collect(),
    )
}

fn encode_parts(
    header: &Header,
    tables: [&Vec<Name>; 3],
    records: &[Record],
    keys: Vec<KeyRef<'_>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * (RECORD_BYTES + 80));
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_str(&mut out, &header.file);
    put_u64(&mut out, header.first_seq);
    put_u64(&mut out, header.last_seq);
    put_u64(&mut out, records.len() as u64);
    put_u64(&mut out, header.bytes);
    let mut sha = [0u8; 32];
    // A manifest's SHA-256 is 64 hex digits; anything else is kept as zeros
    // and then never matches.
    let _ = hex::decode_to_slice(&header.sha256, &mut sha);
    out.extend_from_slice(&sha);
    for table in tables {
        put_u32(&mut out, table.len() as u32);
        for n in table {
            put_str(&mut out, &n.name);
            put_u64(&mut out, n.count);
        }
    }
    for r in records {
        put_u64(&mut out, r.offset);
        put_u32(&mut out, r.len);
        put_u32(&mut out, r.crc);
        put_u32(&mut out, r.ty);
        put_u32(&mut out, r.source);
        put_u32(&mut out, r.subject);
    }
    put_u64(&mut out, keys.len() as u64);
    for k in keys {
        put_u64(&mut out, k.order);
        put_u64(&mut out, k.seq);
        put_u32(&mut out, k.source);
        put_str(&mut out, k.id);
        put_str(&mut out, k.time);
    }
    let crc = crc32c::crc32c(&out);
    put_u32(&mut out, crc);
    out
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Checks the magic, version and trailer of an index file's bytes without
/// decoding the rest (what the integrity monitor checks).
pub fn check_checksum(bytes: &[u8]) -> Result<(), IndexError> {
    if bytes.len() < MAGIC.len() + 4 + 4 {
        return Err(IndexError::Truncated("shorter than its header"));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(IndexError::Magic);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if actual != stored {
        return Err(IndexError::Checksum { actual, stored });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(IndexError::Version(version));
    }
    Ok(())
}

/// Decodes an index file, checking its checksum and that its parts agree.
pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, IndexError> {
    check_checksum(bytes)?;
    let mut r = Reader {
        bytes: &bytes[..bytes.len() - 4],
        pos: MAGIC.len() + 4,
    };
    let file = r.string("header")?;
    let first_seq = r.u64("header")?;
    let last_seq = r.u64("header")?;
    let count = r.u64("header")?;
    let seg_bytes = r.u64("header")?;
    let sha256 = hex::encode(r.take(32, "header")?);
    if last_seq < first_seq || last_seq - first_seq + 1 != count {
        return Err(IndexError::Invalid(format!(
            "{count} records for seq {first_seq}..={last_seq}"
        )));
    }
    let mut tables: [Vec<Name>; 3] = Default::default();
    for table in &mut tables {
        let n = r.u32("string table")? as usize;
        // Each name takes at least 12 bytes: never allocate beyond the file.
        r.room(n, 12, "string table")?;
        table.reserve(n);
        for _ in 0..n {
            let name = r.string("string table")?;
            let count = r.u64("string table")?;
            table.push(Name { name, count });
        }
    }
    let [types, sources, subjects] = tables;
    let n = usize::try_from(count).map_err(|_| IndexError::Truncated("records"))?;
    r.room(n, RECORD_BYTES, "records")?;
    let mut records = Vec::with_capacity(n);
    let mut uses = [
        vec![0u64; types.len()],
        vec![0u64; sources.len()],
        vec![0u64; subjects.len()],
    ];
    let mut end = 0u64;
    for i in 0..n {
        let rec = Record {
            offset: r.u64("records")?,
            len: r.u32("records")?,
            crc: r.u32("records")?,
            ty: r.u32("records")?,
            source: r.u32("records")?,
            subject: r.u32("records")?,
        };
        let bad = |what: &str| IndexError::Invalid(format!("record {i}: {what}"));
        if rec.offset < end || rec.offset + u64::from(rec.len) > seg_bytes {
            return Err(bad(
                "its event lies outside the segment or before the previous one",
            ));
        }
        end = rec.offset + u64::from(rec.len);
        for (table, id) in [(0, rec.ty), (1, rec.source)] {
            *uses[table]
                .get_mut(id as usize)
                .ok_or_else(|| bad("a name id beyond its table"))? += 1;
        }
        if rec.subject != NO_SUBJECT {
            *uses[2]
                .get_mut(rec.subject as usize)
                .ok_or_else(|| bad("a subject id beyond its table"))? += 1;
        }
        records.push(rec);
    }
    for (table, used) in [&types, &sources, &subjects].into_iter().zip(&uses) {
        if table.iter().zip(used).any(|(n, &u)| n.count != u) {
            return Err(IndexError::Invalid(
                "a string table's counts differ from the records".into(),
            ));
        }
    }
    let n_keys = r.u64("keys")?;
    if n_keys != count {
        return Err(IndexError::Invalid(format!(
            "{n_keys} idempotency keys for {count} records"
        )));
    }
    r.room(n, 28, "keys")?;
    let mut keys = Vec::with_capacity(n);
    let mut prev = (0u64, 0u64);
    for i in 0..n {
        let k = Key {
            order: r.u64("keys")?,
            seq: r.u64("keys")?,
            source: r.u32("keys")?,
            id: r.string("keys")?,
            time: r.string("keys")?,
        };
        let bad = |what: &str| IndexError::Invalid(format!("key {i}: {what}"));
        if (k.order, k.seq) < prev {
            return Err(bad("out of order"));
        }
        prev = (k.order, k.seq);
        if k.seq < first_seq || k.seq > last_seq {
            return Err(bad("its seq lies outside the segment"));
        }
        let rec = &records[(k.seq - first_seq) as usize];
        if rec.source != k.source {
            return Err(bad("its source differs from its record's"));
        }
        let source = &sources[k.source as usize].name;
        if key_order(source, &k.id) != k.order {
            return Err(bad("its hash does not match its source and id"));
        }
        keys.push(k);
    }
    if r.pos != r.bytes.len() {
        return Err(IndexError::Invalid(format!(
            "{} unexpected bytes before the trailer",
            r.bytes.len() - r.pos
        )));
    }
    Ok(SegmentIndex {
        header: Header {
            file,
            first_seq,
            last_seq,
            bytes: seg_bytes,
            sha256,
        },
        types,
        sources,
        subjects,
        records,
        keys,
    })
}

/// Why a sealed segment's index file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There is none (a store written before index files, or deleted).
    #[error("is missing")]
    Missing,
    /// It cannot be read.
    #[error("cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    /// It is damaged, or belongs to other bytes.
    #[error("{0}")]
    Damaged(#[from] IndexError),
}

impl LoadError {
    /// True when reading failed for lack of file descriptors (not damage).
    pub fn is_descriptor_exhaustion(&self) -> bool {
        matches!(self, LoadError::Unreadable(e) if fsutil::is_descriptor_exhaustion(e))
    }
}

/// Reads, decodes and checks the index file of the sealed segment `s`
/// against its manifest entry.
pub fn load(data_dir: &Path, s: &SealedSegment) -> Result<SegmentIndex, LoadError> {
    let path = layout::segment_index_path(data_dir, &s.file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Unreadable(e)),
    };
    let index = decode(&bytes)?;
    index.check_matches(s)?;
    Ok(index)
}

/// Writes the encoded index file of segment `file` atomically (temp file,
/// fsync, rename, directory fsync).
pub fn store(data_dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    fsutil::write_atomic(&layout::segment_index_path(data_dir, file), bytes)
}

/// A bounds-checked reader over the bytes before the trailer.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IndexError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(IndexError::Truncated(what))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Fails unless `n` items of at least `each` bytes can still follow.
    fn room(&self, n: usize, each: usize, what: &'static str) -> Result<(), IndexError> {
        match n.checked_mul(each) {
            Some(b) if b <= self.bytes.len() - self.pos => Ok(()),
            _ => Err(IndexError::Truncated(what)),
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &'static str) -> Result<String, IndexError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| IndexError::Invalid(format!("a {what} string is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> (Builder, Header) {
        let mut b = Builder::default();
        let mut offset = 0;
        for i in 0..50u64 {
            let ty = format!("t.{}", i % 3);
            let source = format!("/s/{}", i % 4);
            let subject = (i % 5 != 0).then(|| format!("sub-{}", i % 2));
            let id = format!("id-{i}");
            b.push(NewRecord {
                seq: 10 + i,
                offset: offset + 30,
                len: 100,
                crc: i as u32 * 7,
                ty: &ty,
                source: &source,
                subject: subject.as_deref(),
                id: &id,
                time: "2026-01-31T12:00:00.123456Z",
            });
            offset += 140;
        }
        let header = Header {
            file: "00000000000000000010.jsonl".into(),
            first_seq: 10,
            last_seq: 59,
            bytes: offset,
            sha256: "ab".repeat(32),
        };
        (b, header)
    }

    fn sealed(h: &Header) -> SealedSegment {
        SealedSegment {
            file: h.file.clone(),
            first_seq: h.first_seq,
            last_seq: h.last_seq,
            count: h.last_seq - h.first_seq + 1,
            bytes: h.bytes,
            sha256: h.sha256.clone(),
        }
    }

    #[test]
    fn round_trip_keeps_every_part() {
        let (b, header) = built();
        let bytes = b.encode(&header);
        let idx = decode(&bytes).unwrap();
        assert_eq!(idx.header, header);
        assert_eq!(idx.records.len(), 50);
        assert_eq!(idx.types.len(), 3);
        assert_eq!(idx.sources.len(), 4);
        assert_eq!(idx.subjects.len(), 2);
        assert_eq!(idx.types.iter().map(|n| n.count).sum::<u64>(), 50);
        assert_eq!(idx.records[7].crc, 49);
        assert_eq!(idx.types[idx.records[7].ty as usize].name, "t.1");
        assert_eq!(idx.records[5].subject, NO_SUBJECT);
        // Keys sorted by their stable hash, each naming its record's seq.
        assert!(idx.keys.windows(2).all(|w| w[0].order <= w[1].order));
        let k = idx.keys.iter().find(|k| k.id == "id-3").unwrap();
        assert_eq!(k.seq, 13);
        assert_eq!(idx.sources[k.source as usize].name, "/s/3");
        idx.check_matches(&sealed(&header)).unwrap();
        // Encoding the decoded index gives the same bytes.
        assert_eq!(encode(&idx), bytes);
    }

    #[test]
    fn an_empty_string_table_and_a_single_record_round_trip() {
        let mut b = Builder::default();
        b.push(NewRecord {
            seq: 1,
            offset: 20,
            len: 2,
            crc: 0,
            ty: "t",
            source: "s",
            subject: None,
            id: "",
            time: "",
        });
        let h = Header {
            file: "f".into(),
            first_seq: 1,
            last_seq: 1,
            bytes: 30,
            sha256: "00".repeat(32),
        };
        let idx = decode(&b.encode(&h)).unwrap();
        assert!(idx.subjects.is_empty());
        assert_eq!(idx.keys[0].id, "");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (b, header) = built();
        let bytes = b.encode(&header);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "flipped byte {i} not detected");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let (b, header) = built();
        let bytes = b.encode(&header);
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "cut at {n} not detected");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn bytes_with_a_fresh_checksum_are_still_checked_for_sense() {
        let (b, header) = built();
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.types[0].count += 1;
        assert!(matches!(decode(&encode(&idx)), Err(IndexError::Invalid(_))));
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.records[3].ty = 99;
        assert!(matches!(decode(&encode(&idx)), Err(IndexError::Invalid(_))));
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.keys[0].seq = 1000;
        assert!(decode(&encode(&idx)).is_err());
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.keys[4].id.push('x');
        assert!(decode(&encode(&idx)).is_err());
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.records.pop();
        assert!(decode(&encode(&idx)).is_err());
    }

    #[test]
    fn an_index_of_other_bytes_or_another_segment_does_not_match() {
        let (b, header) = built();
        let idx = decode(&b.encode(&header)).unwrap();
        let mut s = sealed(&header);
        s.sha256 = "cd".repeat(32);
        assert!(matches!(
            idx.check_matches(&s),
            Err(IndexError::Mismatch(_))
        ));
        let mut s = sealed(&header);
        s.bytes += 1;
        assert!(idx.check_matches(&s).is_err());
        let mut s = sealed(&header);
        s.file = "00000000000000000011.jsonl".into();
        assert!(idx.check_matches(&s).is_err());
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let (b, header) = built();
        let mut bytes = b.encode(&header);
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(IndexError::Magic));
        let mut bytes = b.encode(&header);
        bytes[8] = 9;
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(IndexError::Version(9)));
    }

    #[test]
    fn key_order_is_fixed() {
        // FNV-1a 64 of "a\0b": the same in every build.
        assert_eq!(key_order("a", "b"), 0xe5d2_9919_0426_66b2);
        assert_ne!(key_order("a", "b"), key_order("ab", ""));
    }
}
