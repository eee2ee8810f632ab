//! Per-segment index files (`segments/<segment>.idx`): everything start-up
//! needs from a sealed segment, so that it does not read the segment.
//!
//! The writer keeps the active segment's idempotency keys as it commits,
//! and at seal encodes the file from them and the segment's entries in the
//! store's index ([`SegmentRecords`]), then writes it atomically; start-up
//! loads it instead
//! of reading, hashing and scanning the segment, and rebuilds it from the
//! segment when it is missing or damaged. An index file is derived data:
//! losing one loses nothing, it costs one read of its segment.
//!
//! The format is binary, little-endian, in checksummed sections, so that
//! start-up reads only the small header section and readers read single
//! blocks of records, each checked on its own:
//!
//! ```text
//! magic "MBSEGIX\n", version u32, header section length u32
//! header section:
//!         segment file name (u32 length + bytes), first_seq u64,
//!         last_seq u64, record count u64, segment bytes u64,
//!         the segment's SHA-256 (32 bytes) as the manifest records it,
//!         two table heads (types, sources), each:
//!             distinct names u32, a string table of the names it lists,
//!             records using names it does not list u64
//!         distinct subjects u32, types section offset u64,
//!         sources section offset u64, subjects section offset u64,
//!         keys section offset u64, file length u64,
//!         key blocks u32, then each key block's first key_order u64
//!         (its fence)
//! CRC32C u32 of every byte before it (magic to the header section's end)
//! records, one per seq from first_seq, in blocks of 256 (the last may be
//! shorter), each block followed by the CRC32C u32 of its records; a
//! record is 28 bytes:
//!         event offset u64, event length u32, CRC32C u32,
//!         type id u32, source id u32, subject id u32 (u32::MAX: none)
//! types, sources and subjects sections, each: a string table
//!         (n u32, then per name: length u32, bytes, count u64 of records
//!         using it; a record's id is the name's position), CRC32C u32
//! keys section: one key per record, sorted by [`key_order`] then seq,
//!         in blocks of 512 (the last may be shorter), each key
//!         key_order u64, seq u64, each block followed by its CRC32C u32
//! ```
//!
//! The header binds the file to exactly one sealed segment (name, seqs,
//! length, SHA-256): an index left over from another segment, or from a
//! segment later replaced by different bytes, does not match the manifest
//! and is rebuilt. The string tables carry counts, so per-segment type and
//! source totals (and skipping segments a filter cannot match) need no scan
//! of the records. A table head carries the whole type or source table
//! when it is small ([`HEAD_NAMES`] names, [`HEAD_NAME_BYTES`] bytes: what
//! real producers use), and only its busiest names otherwise: a publisher
//! that sends a new source with every event must not make each sealed
//! segment's summary, held in memory and read at start-up, grow with its
//! events. Tables beyond their head, and subjects (often one per event),
//! stay on disk until a filter asks for them. The key table is sorted by a hash that is
//! stable across builds ([`key_order`], FNV-1a); with the block fences in
//! memory, finding a hash costs one read of one block, and the event itself
//! confirms the match (the file keeps no ids).
//!
//! Encoding and decoding are pure; [`check`] and [`store`] are the two
//! thin file operations the writer, recovery, the monitor and `msgbus
//! verify` share.

use std::collections::HashMap;
use std::path::Path;

use super::fsutil;
use super::layout;
use super::manifest::SealedSegment;

/// Current format version. Version 1 had one checksum over the whole file,
/// so reading any part meant reading all of it; such files are rebuilt.
/// Version 2 (still read, never written) kept the whole type and source
/// tables in the header.
pub const VERSION: u32 = 3;
/// The version whose header holds the whole type and source tables.
const VERSION_WHOLE_TABLES: u32 = 2;
/// Most names a table head lists (see [`HeadTable`]).
pub const HEAD_NAMES: usize = 256;
/// Most bytes of names a table head lists.
pub const HEAD_NAME_BYTES: usize = 16 * 1024;
/// The first bytes of every index file.
const MAGIC: &[u8; 8] = b"MBSEGIX\n";
/// `subject` of a record without one.
pub const NO_SUBJECT: u32 = u32::MAX;
/// Bytes of one record.
pub const RECORD_BYTES: usize = 28;
/// Records per checksummed block.
pub const BLOCK_RECORDS: usize = 256;
/// Keys per checksummed block.
pub const BLOCK_KEYS: usize = 512;
/// Bytes of one key.
const KEY_BYTES: usize = 16;
/// Bytes before the header section: magic, version, its length.
const PREAMBLE: usize = 16;

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

/// One of a segment's string tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// CloudEvents `type`.
    Types,
    /// CloudEvents `source`.
    Sources,
    /// CloudEvents `subject`.
    Subjects,
}

/// A type or source table as an index file's header carries it, which is
/// what a sealed segment keeps in memory: the whole table (ids are
/// positions) when it is within [`HEAD_NAMES`] and [`HEAD_NAME_BYTES`],
/// otherwise its busiest names and the count of records using the others.
/// The whole table is in its own section either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadTable {
    /// Distinct names in the whole table (record ids are below it).
    pub distinct: u32,
    /// The whole table by id, or its busiest names, most used first.
    pub names: Vec<Name>,
    /// Records using a name `names` does not list (0 when it is whole).
    pub rest: u64,
}

impl HeadTable {
    /// The whole table, when the head is all of it.
    pub fn whole(&self) -> Option<&[Name]> {
        (self.names.len() == self.distinct as usize).then_some(&self.names[..])
    }

    /// The head of `table`: all of it within the limits, else the busiest
    /// names (ties by name) until either limit.
    pub fn of<T: TableRow>(table: &[T]) -> HeadTable {
        let owned = |n: &T| Name {
            name: n.name().to_string(),
            count: n.count(),
        };
        let bytes: usize = table.iter().map(|n| n.name().len()).sum();
        if table.len() <= HEAD_NAMES && bytes <= HEAD_NAME_BYTES {
            return HeadTable {
                distinct: table.len() as u32,
                names: table.iter().map(owned).collect(),
                rest: 0,
            };
        }
        let mut busiest: Vec<&T> = table.iter().collect();
        busiest.sort_unstable_by(|a, b| {
            b.count()
                .cmp(&a.count())
                .then_with(|| a.name().cmp(b.name()))
        });
        let (mut names, mut used) = (Vec::new(), 0);
        for n in busiest {
            if names.len() == HEAD_NAMES || used + n.name().len() > HEAD_NAME_BYTES {
                break;
            }
            used += n.name().len();
            names.push(owned(n));
        }
        let listed: u64 = names.iter().map(|n| n.count).sum();
        let total: u64 = table.iter().map(|n| n.count()).sum();
        HeadTable {
            distinct: table.len() as u32,
            names,
            rest: total - listed,
        }
    }

    /// Bytes it holds in memory, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.names.iter().map(|n| n.name.len() + 40).sum()
    }

    /// Checks it against the whole table it was made from: the same
    /// names in the same order when whole; else names of the table with
    /// their counts, and `rest` the records of the others.
    fn agrees_with(&self, table: &[Name]) -> Result<(), IndexError> {
        let bad = || IndexError::Invalid("a table head differs from its table".into());
        if table.len() != self.distinct as usize {
            return Err(bad());
        }
        if self.whole().is_some() {
            return match self.names == table {
                true => Ok(()),
                false => Err(bad()),
            };
        }
        let counts: HashMap<&str, u64> = table.iter().map(|n| (n.name.as_str(), n.count)).collect();
        if self
            .names
            .iter()
            .any(|n| counts.get(n.name.as_str()) != Some(&n.count))
        {
            return Err(bad());
        }
        Ok(())
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

/// A row of a name table as the encoder takes it: an owned [`Name`], or
/// a [`NameRef`] borrowed from the store's index at seal.
pub trait TableRow {
    /// The type, source or subject.
    fn name(&self) -> &str;
    /// Records of the segment that carry it.
    fn count(&self) -> u64;
}

impl TableRow for Name {
    fn name(&self) -> &str {
        &self.name
    }
    fn count(&self) -> u64 {
        self.count
    }
}

/// A [`Name`] whose text belongs to someone else (the store's interner,
/// while the writer encodes a segment's index file at seal: a segment with
/// a new subject per event would otherwise allocate a string per event on
/// the writer's thread, about half the time it takes to gather them).
#[derive(Debug, Clone, Copy)]
pub struct NameRef<'a> {
    /// The type, source or subject.
    pub name: &'a str,
    /// Records of the segment that carry it.
    pub count: u64,
}

impl TableRow for NameRef<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn count(&self) -> u64 {
        self.count
    }
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

/// One idempotency key: the [`key_order`] hash of an event's
/// `(source, id)` and its seq. A lookup finds the seqs with the hash and
/// confirms each against the stored event itself, so the file keeps no
/// strings for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// [`key_order`] of `(source, id)`.
    pub order: u64,
    /// The stored event's seq.
    pub seq: u64,
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
    /// Every event's key, sorted by [`Key::order`] then seq.
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
        self.header.check_matches(s)
    }
}

impl Header {
    /// Checks that this header describes exactly the sealed segment `s`.
    pub fn check_matches(&self, s: &SealedSegment) -> Result<(), IndexError> {
        let want = Header::of(s);
        if *self != want {
            return Err(IndexError::Mismatch(format!(
                "it is for {} seq {}..={} ({} bytes, SHA-256 {}), the manifest says {} seq {}..={} ({} bytes, SHA-256 {})",
                self.file,
                self.first_seq,
                self.last_seq,
                self.bytes,
                self.sha256,
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
struct Interned {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Name>,
}

impl Interned {
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

/// Builds the index file of a sealed segment from its records, read from
/// the segment: at start-up, and when the integrity monitor finds the file
/// missing or damaged. (The writer does not use it for the active segment:
/// see [`SegmentRecords`].)
#[derive(Debug, Default, Clone)]
pub struct Builder {
    types: Interned,
    sources: Interned,
    subjects: Interned,
    records: Vec<Record>,
    keys: Vec<Key>,
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
}

/// What a segment's index keeps of a scanned record.
pub fn record_of(r: &super::segment::ScannedRecord) -> NewRecord<'_> {
    NewRecord {
        seq: r.seq,
        offset: r.offset + r.framed.event_offset as u64,
        len: r.framed.event_len,
        crc: r.framed.crc,
        ty: &r.keys.ty,
        source: &r.keys.source,
        subject: r.keys.subject.as_deref(),
        id: &r.keys.id,
    }
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
        self.keys.push(Key::of(r.source, r.id, r.seq));
    }

    /// The keys sorted as the file holds them.
    fn sorted_keys(&self) -> Vec<Key> {
        let mut keys = self.keys.clone();
        keys.sort_unstable();
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
        let keys = self.sorted_keys();
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
            &self.sorted_keys(),
        )
    }
}

impl Key {
    /// The key of the event `(source, id)` stored at `seq`.
    pub fn of(source: &str, id: &str, seq: u64) -> Key {
        Key {
            order: key_order(source, id),
            seq,
        }
    }
}

/// An index file's records and name tables, without its keys: what the
/// store's in-memory index gives for the active segment when it is sealed
/// ([`Index::segment_records`](super::index::Index::segment_records)).
/// The writer keeps only the active segment's keys until then, so each
/// event held in memory is not held a second time for its index file
/// (a [`Builder`] for a full 64 MiB segment held 32 bytes of record per
/// event and a second copy of every distinct name).
#[derive(Debug, Default)]
pub struct SegmentRecords<'a> {
    /// Event types, by id, in the order of their first record.
    pub types: Vec<NameRef<'a>>,
    /// Event sources, the same way.
    pub sources: Vec<NameRef<'a>>,
    /// Subjects, the same way.
    pub subjects: Vec<NameRef<'a>>,
    /// The records, in seq order.
    pub records: Vec<Record>,
}

impl SegmentRecords<'_> {
    /// The encoded index file of the segment described by `header`, these
    /// records and `keys` (sorted here, in place). Byte for byte what a
    /// [`Builder`] fed the same events encodes.
    pub fn encode(&self, header: &Header, keys: &mut [Key]) -> Vec<u8> {
        keys.sort_unstable();
        encode_parts(
            header,
            [&self.types, &self.sources, &self.subjects],
            &self.records,
            keys,
        )
    }
}

/// Encodes `index` (its keys in the order given).
pub fn encode(index: &SegmentIndex) -> Vec<u8> {
    encode_parts(
        &index.header,
        [&index.types, &index.sources, &index.subjects],
        &index.records,
        &index.keys,
    )
}

/// What start-up and readers keep of an index file: its header section
/// (the segment, the heads of its type and source tables) and where the
/// other sections start. Read without the records, tables and keys, so
/// loading a store costs a bounded number of names per segment, not its
/// events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The segment it belongs to.
    pub header: Header,
    /// The file's format version ([`VERSION`], or 2).
    pub version: u32,
    /// Event types with their counts: all, or the busiest.
    pub types: HeadTable,
    /// Event sources with their counts: all, or the busiest.
    pub sources: HeadTable,
    /// Distinct subjects (their table is in the subjects section).
    pub subject_count: u32,
    /// Where the first block of records starts.
    pub records_offset: u64,
    /// Where the types, sources and subjects sections start (a version 2
    /// file has only the subjects section: all three are its offset).
    pub tables_offset: [u64; 3],
    /// Where the keys section starts.
    pub keys_offset: u64,
    /// The file's length.
    pub file_len: u64,
    /// The first [`key_order`] of each key block.
    pub key_fences: Vec<u64>,
}

/// Bytes of a full block: its records and their CRC32C.
const BLOCK_BYTES: u64 = (BLOCK_RECORDS * RECORD_BYTES + 4) as u64;

/// Bytes of the records section for `count` records.
fn records_len(count: u64) -> u64 {
    count * RECORD_BYTES as u64 + count.div_ceil(BLOCK_RECORDS as u64) * 4
}

impl Summary {
    /// Records in the segment.
    pub fn count(&self) -> u64 {
        self.header.last_seq - self.header.first_seq + 1
    }

    /// The file range `(offset, length)` of the blocks holding the records
    /// of seqs `from..=to`, and the seq of the first record in it.
    pub fn block_range(&self, from: u64, to: u64) -> (u64, usize, u64) {
        let first = (from - self.header.first_seq) / BLOCK_RECORDS as u64;
        let last = (to - self.header.first_seq) / BLOCK_RECORDS as u64;
        let start = self.records_offset + first * BLOCK_BYTES;
        let end = (self.records_offset + (last + 1) * BLOCK_BYTES).min(self.tables_offset[0]);
        (
            start,
            (end - start) as usize,
            self.header.first_seq + first * BLOCK_RECORDS as u64,
        )
    }

    /// Decodes whole blocks read from [`Summary::block_range`] (whose
    /// first record is `first_seq`), checking each block's CRC32C and that
    /// every record is sensible for this segment.
    pub fn decode_blocks(&self, bytes: &[u8], first_seq: u64) -> Result<Vec<Record>, IndexError> {
        let mut out = Vec::with_capacity(bytes.len() / RECORD_BYTES);
        let mut seq = first_seq;
        for block in bytes.chunks(BLOCK_BYTES as usize) {
            if block.len() < 4 + RECORD_BYTES || (block.len() - 4) % RECORD_BYTES != 0 {
                return Err(IndexError::Truncated("records"));
            }
            let (recs, crc) = block.split_at(block.len() - 4);
            let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
            let actual = crc32c::crc32c(recs);
            if actual != stored {
                return Err(IndexError::Checksum { actual, stored });
            }
            for r in recs.chunks_exact(RECORD_BYTES) {
                let rec = record_at(r);
                if seq > self.header.last_seq {
                    return Err(IndexError::Invalid("more records than seqs".into()));
                }
                self.check_record(&rec)
                    .map_err(|what| IndexError::Invalid(format!("record of seq {seq}: {what}")))?;
                out.push(rec);
                seq += 1;
            }
        }
        Ok(out)
    }

    /// A record's ids are within its tables and its event within the segment.
    fn check_record(&self, r: &Record) -> Result<(), &'static str> {
        if r.offset
            .checked_add(u64::from(r.len))
            .is_none_or(|end| end > self.header.bytes)
        {
            return Err("its event lies outside the segment");
        }
        if r.ty >= self.types.distinct || r.source >= self.sources.distinct {
            return Err("a name id beyond its table");
        }
        if r.subject != NO_SUBJECT && r.subject >= self.subject_count {
            return Err("a subject id beyond its table");
        }
        Ok(())
    }

    /// The file range `(offset, length)` of the section holding the whole
    /// table `kind`; `None` for the type and source tables of a version 2
    /// file (whole in its header).
    pub fn table_range(&self, kind: TableKind) -> Option<(u64, usize)> {
        let [types, sources, subjects] = self.tables_offset;
        let (from, to) = match kind {
            TableKind::Types => (types, sources),
            TableKind::Sources => (sources, subjects),
            TableKind::Subjects => (subjects, self.keys_offset),
        };
        (self.version != VERSION_WHOLE_TABLES || kind == TableKind::Subjects)
            .then_some((from, (to - from) as usize))
    }

    /// The whole table `kind`, its section read with `read(offset,
    /// length)` and decoded; a version 2 file's type and source tables
    /// come from its header (where they are whole).
    pub fn read_table<E: From<IndexError>>(
        &self,
        kind: TableKind,
        read: impl FnOnce(u64, usize) -> Result<Vec<u8>, E>,
    ) -> Result<Vec<Name>, E> {
        match self.table_range(kind) {
            Some((at, len)) => Ok(self.decode_table(kind, &read(at, len)?)?),
            None if kind == TableKind::Types => Ok(self.types.names.clone()),
            None => Ok(self.sources.names.clone()),
        }
    }

    /// Decodes the section of table `kind` (`bytes` is exactly its
    /// [`Summary::table_range`]).
    pub fn decode_table(&self, kind: TableKind, bytes: &[u8]) -> Result<Vec<Name>, IndexError> {
        let what = match kind {
            TableKind::Types => "types",
            TableKind::Sources => "sources",
            TableKind::Subjects => "subjects",
        };
        let body = section_body(bytes, what)?;
        let mut r = Reader {
            bytes: body,
            pos: 0,
        };
        let table = r.table(what)?;
        let want = match kind {
            TableKind::Types => self.types.distinct,
            TableKind::Sources => self.sources.distinct,
            TableKind::Subjects => self.subject_count,
        };
        if table.len() != want as usize {
            return Err(IndexError::Invalid(format!(
                "{} {what}, the header says {want}",
                table.len(),
            )));
        }
        r.finish()?;
        Ok(table)
    }

    /// The file range `(offset, length)` of the key blocks that may hold
    /// `order`, and the index of the first key in it; `None` when no block
    /// can (the key is not in this segment).
    pub fn key_range(&self, order: u64) -> Option<(u64, usize, usize)> {
        let f = &self.key_fences;
        // Blocks whose first key is at most `order`, from the last one
        // starting below it (equal hashes may span blocks).
        let end = f.partition_point(|&x| x <= order);
        if end == 0 {
            return None;
        }
        let start = f[..end].partition_point(|&x| x < order).saturating_sub(1);
        let block = (BLOCK_KEYS * KEY_BYTES + 4) as u64;
        let from = self.keys_offset + start as u64 * block;
        let to = (self.keys_offset + end as u64 * block).min(self.file_len);
        Some((from, (to - from) as usize, start * BLOCK_KEYS))
    }

    /// Decodes key blocks read from the keys section (all of it, or a
    /// [`Summary::key_range`]), checking each block's CRC32C, its fence,
    /// the order of its keys and that their seqs are in this segment.
    pub fn decode_keys(&self, bytes: &[u8], first_key: usize) -> Result<Vec<Key>, IndexError> {
        let mut keys = Vec::with_capacity(bytes.len() / KEY_BYTES);
        let mut prev: Option<Key> = None;
        for (i, block) in bytes.chunks(BLOCK_KEYS * KEY_BYTES + 4).enumerate() {
            if block.len() < 4 + KEY_BYTES || (block.len() - 4) % KEY_BYTES != 0 {
                return Err(IndexError::Truncated("keys"));
            }
            let (body, crc) = block.split_at(block.len() - 4);
            let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
            let actual = crc32c::crc32c(body);
            if actual != stored {
                return Err(IndexError::Checksum { actual, stored });
            }
            let n = first_key / BLOCK_KEYS + i;
            for (j, k) in body.chunks_exact(KEY_BYTES).enumerate() {
                let key = Key {
                    order: u64::from_le_bytes(k[..8].try_into().expect("8 bytes")),
                    seq: u64::from_le_bytes(k[8..].try_into().expect("8 bytes")),
                };
                let bad = |what: &str| IndexError::Invalid(format!("key block {n}: {what}"));
                if j == 0 && self.key_fences.get(n) != Some(&key.order) {
                    return Err(bad("its first key is not its fence"));
                }
                if prev.is_some_and(|p| key <= p) {
                    return Err(bad("keys out of order"));
                }
                if key.seq < self.header.first_seq || key.seq > self.header.last_seq {
                    return Err(bad("a seq outside the segment"));
                }
                prev = Some(key);
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

fn record_at(r: &[u8]) -> Record {
    let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"));
    Record {
        offset: u64::from_le_bytes(r[0..8].try_into().expect("8 bytes")),
        len: u32_at(8),
        crc: u32_at(12),
        ty: u32_at(16),
        source: u32_at(20),
        subject: u32_at(24),
    }
}

/// A section's bytes without its trailing CRC32C, once that CRC matches.
fn section_body<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], IndexError> {
    if bytes.len() < 4 {
        return Err(IndexError::Truncated(what));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if actual != stored {
        return Err(IndexError::Checksum { actual, stored });
    }
    Ok(body)
}

fn encode_parts<T: TableRow>(
    header: &Header,
    tables: [&[T]; 3],
    records: &[Record],
    keys: &[Key],
) -> Vec<u8> {
    let [types, sources, subjects] = tables;
    let mut head = Vec::new();
    put_str(&mut head, &header.file);
    put_u64(&mut head, header.first_seq);
    put_u64(&mut head, header.last_seq);
    put_u64(&mut head, records.len() as u64);
    put_u64(&mut head, header.bytes);
    let mut sha = [0u8; 32];
    // A manifest's SHA-256 is 64 hex digits; anything else is kept as zeros
    // and then never matches.
    let _ = hex::decode_to_slice(&header.sha256, &mut sha);
    head.extend_from_slice(&sha);
    for table in [types, sources] {
        let h = HeadTable::of(table);
        put_u32(&mut head, h.distinct);
        put_table(&mut head, &h.names);
        put_u64(&mut head, h.rest);
    }
    put_u32(&mut head, subjects.len() as u32);

    let table_sections = [types, sources, subjects].map(|table| {
        let mut section = Vec::new();
        put_table(&mut section, table);
        seal_section(&mut section);
        section
    });
    let mut key_section = Vec::with_capacity(keys.len() * KEY_BYTES + keys.len() / 100 + 4);
    let mut fences = Vec::with_capacity(keys.len().div_ceil(BLOCK_KEYS));
    for block in keys.chunks(BLOCK_KEYS) {
        fences.push(block[0].order);
        let start = key_section.len();
        for k in block {
            put_u64(&mut key_section, k.order);
            put_u64(&mut key_section, k.seq);
        }
        let crc = crc32c::crc32c(&key_section[start..]);
        put_u32(&mut key_section, crc);
    }

    let header_len = head.len() + 5 * 8 + 4 + fences.len() * 8;
    let records_offset = (PREAMBLE + header_len + 4) as u64;
    let mut tables_offset = [0u64; 3];
    let mut at = records_offset + records_len(records.len() as u64);
    for (offset, section) in tables_offset.iter_mut().zip(&table_sections) {
        *offset = at;
        at += section.len() as u64;
    }
    let keys_offset = at;
    let file_len = keys_offset + key_section.len() as u64;

    let mut out = Vec::with_capacity(file_len as usize);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_u32(&mut out, header_len as u32);
    out.extend_from_slice(&head);
    for offset in tables_offset {
        put_u64(&mut out, offset);
    }
    put_u64(&mut out, keys_offset);
    put_u64(&mut out, file_len);
    put_u32(&mut out, fences.len() as u32);
    for f in fences {
        put_u64(&mut out, f);
    }
    seal_section(&mut out);
    for block in records.chunks(BLOCK_RECORDS) {
        let start = out.len();
        for r in block {
            put_u64(&mut out, r.offset);
            put_u32(&mut out, r.len);
            put_u32(&mut out, r.crc);
            put_u32(&mut out, r.ty);
            put_u32(&mut out, r.source);
            put_u32(&mut out, r.subject);
        }
        let crc = crc32c::crc32c(&out[start..]);
        put_u32(&mut out, crc);
    }
    for section in &table_sections {
        out.extend_from_slice(section);
    }
    out.extend_from_slice(&key_section);
    debug_assert_eq!(out.len() as u64, file_len);
    out
}

/// Appends the CRC32C of `section`'s bytes so far.
fn seal_section(section: &mut Vec<u8>) {
    let crc = crc32c::crc32c(section);
    put_u32(section, crc);
}

fn put_table<T: TableRow>(out: &mut Vec<u8>, table: &[T]) {
    put_u32(out, table.len() as u32);
    for n in table {
        put_str(out, n.name());
        put_u64(out, n.count());
    }
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

/// The format version a file's preamble (at least [`PREAMBLE`] bytes)
/// names.
fn file_version(preamble: &[u8]) -> u32 {
    u32::from_le_bytes(preamble[8..12].try_into().expect("4 bytes"))
}

/// The length of the file's start that holds its summary (preamble,
/// header section, CRC), from its first [`PREAMBLE`] bytes.
fn summary_len(preamble: &[u8]) -> Result<usize, IndexError> {
    if preamble.len() < PREAMBLE {
        return Err(IndexError::Truncated("shorter than its header"));
    }
    if &preamble[..MAGIC.len()] != MAGIC {
        return Err(IndexError::Magic);
    }
    let version = file_version(preamble);
    if version != VERSION && version != VERSION_WHOLE_TABLES {
        return Err(IndexError::Version(version));
    }
    let header_len = u32::from_le_bytes(preamble[12..16].try_into().expect("4 bytes"));
    Ok(PREAMBLE + header_len as usize + 4)
}

/// Decodes the summary from the file's first bytes (at least
/// [`summary_len`] of them), checking its CRC32C and that its parts agree.
pub fn decode_summary(bytes: &[u8]) -> Result<Summary, IndexError> {
    let n = summary_len(bytes)?;
    if bytes.len() < n {
        return Err(IndexError::Truncated("header"));
    }
    let body = section_body(&bytes[..n], "header")?;
    let mut r = Reader {
        bytes: body,
        pos: PREAMBLE,
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
    let version = file_version(bytes);
    let types = r.head(version, "types")?;
    let sources = r.head(version, "sources")?;
    let subject_count = r.u32("header")?;
    let tables_offset = match version {
        VERSION_WHOLE_TABLES => [r.u64("header")?; 3],
        _ => [r.u64("header")?, r.u64("header")?, r.u64("header")?],
    };
    let keys_offset = r.u64("header")?;
    let file_len = r.u64("header")?;
    let n_fences = r.u32("header")? as usize;
    r.room(n_fences, 8, "header")?;
    let key_fences = (0..n_fences)
        .map(|_| r.u64("header"))
        .collect::<Result<Vec<u64>, _>>()?;
    r.finish()?;
    for (what, head) in [("type", &types), ("source", &sources)] {
        let listed = head.names.iter().map(|t| t.count).sum::<u64>();
        if listed.checked_add(head.rest) != Some(count)
            || (head.whole().is_some() && head.rest != 0)
            || u64::from(head.distinct) > count
            || head.names.len() > head.distinct as usize
        {
            return Err(IndexError::Invalid(format!(
                "the {what} table's counts do not add up to {count} records"
            )));
        }
    }
    let records_offset = n as u64;
    let keys_len = count * KEY_BYTES as u64 + count.div_ceil(BLOCK_KEYS as u64) * 4;
    // Each table section holds at least its length and CRC32C.
    let sections_fit = match version {
        VERSION_WHOLE_TABLES => true,
        _ => tables_offset
            .windows(2)
            .all(|w| w[1] >= w[0].saturating_add(8)),
    };
    if records_offset.checked_add(records_len(count)) != Some(tables_offset[0])
        || !sections_fit
        || keys_offset < tables_offset[2].saturating_add(8)
        || keys_offset.checked_add(keys_len) != Some(file_len)
        || n_fences as u64 != count.div_ceil(BLOCK_KEYS as u64)
    {
        return Err(IndexError::Invalid(
            "its sections' offsets do not fit its records".into(),
        ));
    }
    Ok(Summary {
        header: Header {
            file,
            first_seq,
            last_seq,
            bytes: seg_bytes,
            sha256,
        },
        version,
        types,
        sources,
        subject_count,
        records_offset,
        tables_offset,
        keys_offset,
        file_len,
        key_fences,
    })
}

/// Decodes a whole index file, checking every section's checksum and that
/// its parts agree.
pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, IndexError> {
    let s = decode_summary(bytes)?;
    if (bytes.len() as u64) < s.file_len {
        return Err(IndexError::Truncated("sections"));
    }
    if bytes.len() as u64 != s.file_len {
        return Err(IndexError::Invalid(format!(
            "{} unexpected bytes at its end",
            bytes.len() as u64 - s.file_len
        )));
    }
    let section = |from: u64, to: u64| &bytes[from as usize..to as usize];
    let records = s.decode_blocks(
        section(s.records_offset, s.tables_offset[0]),
        s.header.first_seq,
    )?;
    let [types, sources, subjects] = [TableKind::Types, TableKind::Sources, TableKind::Subjects]
        .map(|kind| {
            s.read_table(kind, |at, len| {
                Ok::<_, IndexError>(section(at, at + len as u64).to_vec())
            })
        });
    let (types, sources, subjects) = (types?, sources?, subjects?);
    let keys = s.decode_keys(section(s.keys_offset, s.file_len), 0)?;
    let mut agree = Agreement::new(&s);
    agree.records(&records)?;
    agree.keys(&keys)?;
    agree.finish([&types, &sources, &subjects])?;
    Ok(SegmentIndex {
        header: s.header,
        types,
        sources,
        subjects,
        records,
        keys,
    })
}

/// The checks across a whole file's parts that [`decode`] and [`check`]
/// share, fed the decoded records and keys in file order (all at once, or
/// a few blocks at a time): events in offset order, the string tables'
/// counts equal to the records using them, one key per seq, keys in order
/// across blocks, as many records and keys as seqs.
struct Agreement<'a> {
    s: &'a Summary,
    records: u64,
    end: u64,
    /// Records using each type, source and subject.
    uses: [Vec<u64>; 3],
    keys: u64,
    last_key: Option<Key>,
    seen: Vec<bool>,
}

impl<'a> Agreement<'a> {
    fn new(s: &'a Summary) -> Self {
        Agreement {
            s,
            records: 0,
            end: 0,
            uses: [
                vec![0; s.types.distinct as usize],
                vec![0; s.sources.distinct as usize],
                vec![0; s.subject_count as usize],
            ],
            keys: 0,
            last_key: None,
            seen: vec![false; s.count() as usize],
        }
    }

    /// The next records (their ids already checked against the tables by
    /// [`Summary::decode_blocks`]).
    fn records(&mut self, records: &[Record]) -> Result<(), IndexError> {
        for rec in records {
            if rec.offset < self.end {
                return Err(IndexError::Invalid(format!(
                    "record {}: its event lies before the previous one",
                    self.records
                )));
            }
            self.end = rec.offset + u64::from(rec.len);
            self.uses[0][rec.ty as usize] += 1;
            self.uses[1][rec.source as usize] += 1;
            if rec.subject != NO_SUBJECT {
                self.uses[2][rec.subject as usize] += 1;
            }
            self.records += 1;
        }
        Ok(())
    }

    /// The next keys (each block's order and seqs already checked by
    /// [`Summary::decode_keys`]).
    fn keys(&mut self, keys: &[Key]) -> Result<(), IndexError> {
        if let (Some(last), Some(first)) = (self.last_key, keys.first()) {
            if *first <= last {
                return Err(IndexError::Invalid(format!(
                    "key block {}: keys out of order",
                    self.keys as usize / BLOCK_KEYS
                )));
            }
        }
        for k in keys {
            let i = (k.seq - self.s.header.first_seq) as usize;
            match self.seen.get_mut(i) {
                Some(seen) if !*seen => *seen = true,
                _ => return Err(IndexError::Invalid(format!("two keys for seq {}", k.seq))),
            }
            self.keys += 1;
        }
        self.last_key = keys.last().copied().or(self.last_key);
        Ok(())
    }

    /// The last checks, given the whole tables (types, sources, subjects).
    fn finish(self, tables: [&[Name]; 3]) -> Result<(), IndexError> {
        if self.records != self.s.count() {
            return Err(IndexError::Truncated("records"));
        }
        if self.keys != self.s.count() {
            return Err(IndexError::Truncated("keys"));
        }
        self.s.types.agrees_with(tables[0])?;
        self.s.sources.agrees_with(tables[1])?;
        for (table, used) in tables.into_iter().zip(&self.uses) {
            if table.iter().zip(used).any(|(n, &u)| n.count != u) {
                return Err(IndexError::Invalid(
                    "a string table's counts differ from the records".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Record or key blocks [`check`] reads at a time (64 record blocks: 459
/// KB).
const CHECK_BLOCKS: u64 = 64;

/// Checks the index file of the sealed segment `s` as reading it whole
/// and [`decode`] would (the header against the manifest entry and the
/// file's length, every checksum, the agreement of the parts), reading it
/// a few blocks at a time; answers its length. The integrity
/// monitor checks every index file in turn, and loading one whole held
/// about 16 MB at 187,000 events (the file, then its decoded records and
/// keys) for as long as the check took.
pub fn check(data_dir: &Path, s: &SealedSegment) -> Result<u64, LoadError> {
    check_in_steps(data_dir, s, CHECK_BLOCKS)
}

fn check_in_steps(data_dir: &Path, s: &SealedSegment, blocks: u64) -> Result<u64, LoadError> {
    use std::os::unix::fs::FileExt;
    let summary = load_summary(data_dir, s)?;
    let path = layout::segment_index_path(data_dir, &s.file);
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing,
        _ => LoadError::Unreadable(e),
    })?;
    let read = |at: u64, len: u64| -> Result<Vec<u8>, LoadError> {
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, at)
            .map_err(|e| match e.kind() {
                // Cut since its length was read.
                std::io::ErrorKind::UnexpectedEof => IndexError::Truncated("sections").into(),
                _ => LoadError::Unreadable(e),
            })?;
        Ok(bytes)
    };
    let mut agree = Agreement::new(&summary);
    let (mut at, mut seq) = (summary.records_offset, summary.header.first_seq);
    while at < summary.tables_offset[0] {
        let len = (BLOCK_BYTES * blocks).min(summary.tables_offset[0] - at);
        let records = summary.decode_blocks(&read(at, len)?, seq)?;
        agree.records(&records)?;
        seq += records.len() as u64;
        at += len;
    }
    let [types, sources, subjects] = [TableKind::Types, TableKind::Sources, TableKind::Subjects]
        .map(|kind| summary.read_table(kind, |at, len| read(at, len as u64)));
    let (types, sources, subjects) = (types?, sources?, subjects?);
    let key_block = (BLOCK_KEYS * KEY_BYTES + 4) as u64;
    let (mut at, mut first_key) = (summary.keys_offset, 0usize);
    while at < summary.file_len {
        let len = (key_block * blocks).min(summary.file_len - at);
        let keys = summary.decode_keys(&read(at, len)?, first_key)?;
        agree.keys(&keys)?;
        first_key += keys.len();
        at += len;
    }
    agree.finish([&types, &sources, &subjects])?;
    Ok(summary.file_len)
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

/// Reads the summary of the sealed segment `s`'s index file (its first
/// bytes only) and checks it against the manifest's entry and the file's
/// length. What start-up does per sealed segment.
pub fn load_summary(data_dir: &Path, s: &SealedSegment) -> Result<Summary, LoadError> {
    use std::os::unix::fs::FileExt;
    let path = layout::segment_index_path(data_dir, &s.file);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(LoadError::Unreadable(e)),
    };
    let len = file.metadata().map_err(LoadError::Unreadable)?.len();
    let read = |buf: &mut [u8], at: u64| -> Result<(), LoadError> {
        if at + buf.len() as u64 > len {
            return Err(IndexError::Truncated("header").into());
        }
        file.read_exact_at(buf, at).map_err(LoadError::Unreadable)
    };
    let mut preamble = [0u8; PREAMBLE];
    read(&mut preamble, 0)?;
    let mut bytes = vec![0u8; summary_len(&preamble)?];
    read(&mut bytes, 0)?;
    let summary = decode_summary(&bytes)?;
    summary.header.check_matches(s)?;
    if summary.file_len != len {
        return Err(IndexError::Invalid(format!(
            "is {len} bytes, its header says {}",
            summary.file_len
        ))
        .into());
    }
    Ok(summary)
}

/// Reads and decodes the keys section of the index file `summary` was
/// loaded from.
pub fn load_keys(data_dir: &Path, summary: &Summary) -> Result<Vec<Key>, LoadError> {
    use std::os::unix::fs::FileExt;
    let path = layout::segment_index_path(data_dir, &summary.header.file);
    let file = std::fs::File::open(&path).map_err(LoadError::Unreadable)?;
    let mut bytes = vec![0u8; (summary.file_len - summary.keys_offset) as usize];
    file.read_exact_at(&mut bytes, summary.keys_offset)
        .map_err(LoadError::Unreadable)?;
    Ok(summary.decode_keys(&bytes, 0)?)
}

/// Writes the encoded index file of segment `file` atomically (temp file,
/// fsync, rename, directory fsync).
pub fn store(data_dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    fsutil::write_atomic(&layout::segment_index_path(data_dir, file), bytes)
}

/// A bounds-checked reader over one section's bytes.
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

    /// A string table: n u32, then per name its string and count.
    fn table(&mut self, what: &'static str) -> Result<Vec<Name>, IndexError> {
        let n = self.u32(what)? as usize;
        // Each name takes at least 12 bytes: never allocate beyond the file.
        self.room(n, 12, what)?;
        let mut table = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string(what)?;
            let count = self.u64(what)?;
            table.push(Name { name, count });
        }
        Ok(table)
    }

    /// A type or source table head: for a version 2 file the whole table.
    fn head(&mut self, version: u32, what: &'static str) -> Result<HeadTable, IndexError> {
        if version == VERSION_WHOLE_TABLES {
            let names = self.table(what)?;
            return Ok(HeadTable {
                distinct: names.len() as u32,
                names,
                rest: 0,
            });
        }
        let distinct = self.u32(what)?;
        let names = self.table(what)?;
        let rest = self.u64(what)?;
        Ok(HeadTable {
            distinct,
            names,
            rest,
        })
    }

    /// Fails unless every byte was read.
    fn finish(&self) -> Result<(), IndexError> {
        if self.pos != self.bytes.len() {
            return Err(IndexError::Invalid(format!(
                "{} unexpected bytes in a section",
                self.bytes.len() - self.pos
            )));
        }
        Ok(())
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
        built_n(50)
    }

    fn built_n(n: u64) -> (Builder, Header) {
        let mut b = Builder::default();
        let mut offset = 0;
        for i in 0..n {
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
            });
            offset += 140;
        }
        let header = Header {
            file: "00000000000000000010.jsonl".into(),
            first_seq: 10,
            last_seq: 9 + n,
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
        let k = idx
            .keys
            .iter()
            .find(|k| k.order == key_order("/s/3", "id-3"))
            .unwrap();
        assert_eq!(k.seq, 13);
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
        assert_eq!(idx.keys[0].order, key_order("s", ""));
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
        idx.keys.swap(3, 4);
        assert!(decode(&encode(&idx)).is_err(), "keys out of order");
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.keys[4].seq = idx.keys[5].seq;
        assert!(decode(&encode(&idx)).is_err(), "two keys for one seq");
        let mut idx = decode(&b.encode(&header)).unwrap();
        idx.records.pop();
        assert!(decode(&encode(&idx)).is_err());
    }

    /// The integrity monitor's check, reading one block at a time here,
    /// accepts what decoding the whole file accepts and refuses what it
    /// refuses: the
    /// good file, flipped bytes all through it, cuts, and parts that
    /// disagree under fresh checksums (keys out of order and one seq's
    /// two keys across two blocks, which only the check across steps can
    /// see).
    #[test]
    fn the_check_in_steps_agrees_with_a_whole_load() {
        let dir = tempfile::tempdir().unwrap();
        let (b, header) = built_n(2000);
        let s = sealed(&header);
        let path = layout::segment_index_path(dir.path(), &s.file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let judged = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let whole = decode(bytes).and_then(|idx| idx.check_matches(&s)).is_ok();
            let stepped = check_in_steps(dir.path(), &s, 1);
            if let Ok(len) = &stepped {
                assert_eq!(*len, bytes.len() as u64);
            }
            (whole, stepped.is_ok())
        };
        let good = b.encode(&header);
        assert_eq!(judged(&good), (true, true));
        for i in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert_eq!(judged(&bad), (false, false), "flipped byte {i}");
        }
        for n in (0..good.len()).step_by(1009) {
            assert_eq!(judged(&good[..n]), (false, false), "cut at {n}");
        }
        let idx = decode(&good).unwrap();
        let mut swapped = idx.clone();
        swapped.keys.swap(BLOCK_KEYS - 1, BLOCK_KEYS);
        assert_eq!(
            judged(&encode(&swapped)),
            (false, false),
            "keys out of order"
        );
        let mut twice = idx.clone();
        twice.keys[BLOCK_KEYS + 1].seq = twice.keys[1].seq;
        assert_eq!(
            judged(&encode(&twice)),
            (false, false),
            "two keys for one seq"
        );
        let mut counted = idx.clone();
        counted.types[0].count += 1;
        assert_eq!(judged(&encode(&counted)), (false, false), "a table's count");
        let mut earlier = idx;
        earlier.records[300].offset = earlier.records[299].offset;
        assert_eq!(
            judged(&encode(&earlier)),
            (false, false),
            "records out of order"
        );
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

    /// Start-up reads only the summary; readers read only the blocks of
    /// the records they need, each block checked on its own.
    #[test]
    fn the_summary_and_any_range_of_records_decode_from_their_own_bytes() {
        let (b, header) = built_n(600);
        let bytes = b.encode(&header);
        let whole = decode(&bytes).unwrap();
        let n = summary_len(&bytes[..PREAMBLE]).unwrap();
        let summary = decode_summary(&bytes[..n]).unwrap();
        assert_eq!(summary.header, header);
        assert_eq!(summary.types.whole(), Some(&whole.types[..]));
        assert_eq!(summary.subject_count as usize, whole.subjects.len());
        assert_eq!(summary.file_len, bytes.len() as u64);
        for (from, to) in [
            (10, 10),
            (10, 265),
            (265, 266),
            (300, 609),
            (609, 609),
            (100, 560),
        ] {
            let (offset, len, first) = summary.block_range(from, to);
            let records = summary
                .decode_blocks(&bytes[offset as usize..offset as usize + len], first)
                .unwrap();
            let skip = (from - first) as usize;
            assert_eq!(
                &records[skip..skip + (to - from + 1) as usize],
                &whole.records[(from - 10) as usize..=(to - 10) as usize],
                "{from}..={to}"
            );
        }
        for (kind, table) in [
            (TableKind::Types, &whole.types),
            (TableKind::Sources, &whole.sources),
            (TableKind::Subjects, &whole.subjects),
        ] {
            let (at, len) = summary.table_range(kind).unwrap();
            let section = &bytes[at as usize..at as usize + len];
            assert_eq!(&summary.decode_table(kind, section).unwrap(), table);
        }
        let keys = &bytes[summary.keys_offset as usize..];
        assert_eq!(summary.decode_keys(keys, 0).unwrap(), whole.keys);
        // Finding a key reads only the blocks its fences allow.
        for k in [
            whole.keys[0],
            whole.keys[300],
            whole.keys[511],
            whole.keys[512],
            whole.keys[599],
        ] {
            let (offset, len, first) = summary.key_range(k.order).unwrap();
            assert!(
                len <= 2 * (BLOCK_KEYS * KEY_BYTES + 4),
                "at most two blocks"
            );
            let found = summary
                .decode_keys(&bytes[offset as usize..offset as usize + len], first)
                .unwrap();
            assert!(found.contains(&k));
        }
        assert!(summary.key_range(whole.keys[0].order - 1).is_none() || whole.keys[0].order == 0);
        // A flipped byte in the second block fails that block only.
        let mut bad = bytes.clone();
        let in_second = summary.records_offset as usize + BLOCK_BYTES as usize + 30;
        bad[in_second] ^= 1;
        let (o, l, f) = summary.block_range(10, 266);
        assert!(summary
            .decode_blocks(&bad[o as usize..o as usize + l], f)
            .is_err());
        let (o, l, f) = summary.block_range(10, 265);
        assert!(summary
            .decode_blocks(&bad[o as usize..o as usize + l], f)
            .is_ok());
        assert!(decode(&bad).is_err());
    }

    /// Records 10.. where record `i` has source `/s/{i}` (a new one each)
    /// except every third, which has `/busy/{i % 2}`, and type `t.{i % 3}`.
    fn a_source_per_event(n: u64) -> (Builder, Header) {
        let mut b = Builder::default();
        for i in 0..n {
            let source = match i % 3 {
                0 => format!("/busy/{}", i % 2),
                _ => format!("/s/{i}"),
            };
            b.push(NewRecord {
                seq: 10 + i,
                offset: i * 100,
                len: 90,
                crc: 0,
                ty: &format!("t.{}", i % 3),
                source: &source,
                subject: None,
                id: "x",
            });
        }
        let header = Header {
            file: "00000000000000000010.jsonl".into(),
            first_seq: 10,
            last_seq: 9 + n,
            bytes: n * 100,
            sha256: "ab".repeat(32),
        };
        (b, header)
    }

    /// A publisher sending a new source with every event: the header (what
    /// start-up reads and a sealed segment keeps in memory) lists only the
    /// busiest [`HEAD_NAMES`] sources, the rest are counted, and the whole
    /// table is in its own section, checked like every other part.
    #[test]
    fn a_table_beyond_its_head_stays_out_of_the_header() {
        let (b, header) = a_source_per_event(3000);
        let bytes = b.encode(&header);
        let whole = decode(&bytes).unwrap();
        assert_eq!(whole.sources.len(), 2002);
        assert_eq!(encode(&whole), bytes);
        let summary_bytes = summary_len(&bytes[..PREAMBLE]).unwrap();
        assert!(
            summary_bytes < 8 * 1024,
            "a header of {summary_bytes} bytes for 2,002 sources"
        );
        let summary = decode_summary(&bytes[..summary_bytes]).unwrap();
        let heads = &summary.sources;
        assert!(heads.whole().is_none());
        assert_eq!(heads.distinct, 2002);
        assert_eq!(heads.names.len(), HEAD_NAMES);
        assert_eq!(
            (&heads.names[0].name[..], heads.names[0].count),
            ("/busy/0", 500)
        );
        assert_eq!(
            (&heads.names[1].name[..], heads.names[1].count),
            ("/busy/1", 500)
        );
        assert_eq!(
            heads.rest,
            3000 - heads.names.iter().map(|n| n.count).sum::<u64>()
        );
        assert_eq!(summary.types.whole(), Some(&whole.types[..]));
        let (at, len) = summary.table_range(TableKind::Sources).unwrap();
        let section = &bytes[at as usize..at as usize + len];
        assert_eq!(
            summary.decode_table(TableKind::Sources, section).unwrap(),
            whole.sources
        );
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "flipped byte {i} not detected");
        }
        // A head naming a source its table does not have, under a fresh
        // checksum: refused by a whole decode and by the monitor's check.
        let mut forged = bytes.clone();
        let at = forged[..summary_bytes]
            .windows(7)
            .position(|w| w == b"/busy/0")
            .unwrap();
        forged[at + 6] = b'x';
        let crc = crc32c::crc32c(&forged[..summary_bytes - 4]);
        forged[summary_bytes - 4..summary_bytes].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_summary(&forged).is_ok(), "the header alone is sound");
        assert!(matches!(decode(&forged), Err(IndexError::Invalid(_))));
        let dir = tempfile::tempdir().unwrap();
        let s = sealed(&header);
        let path = layout::segment_index_path(dir.path(), &s.file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &forged).unwrap();
        assert!(check(dir.path(), &s).is_err());
        std::fs::write(&path, &bytes).unwrap();
        assert!(check(dir.path(), &s).is_ok());
        // Long names: the head stops at its byte limit.
        let long: Vec<Name> = (0..100)
            .map(|i| Name {
                name: format!("{i:03}{}", "n".repeat(1000)),
                count: 1,
            })
            .collect();
        let head = HeadTable::of(&long);
        assert!(head.whole().is_none());
        assert_eq!(head.names.len(), HEAD_NAME_BYTES / 1003);
        assert_eq!(head.rest, 100 - head.names.len() as u64);
    }

    /// Encodes `index` as format version 2 wrote it: the whole type and
    /// source tables in the header, one section for the subjects.
    fn encode_v2(index: &SegmentIndex) -> Vec<u8> {
        let v3 = encode(index);
        let s = decode_summary(&v3).unwrap();
        let mut head = Vec::new();
        put_str(&mut head, &index.header.file);
        put_u64(&mut head, index.header.first_seq);
        put_u64(&mut head, index.header.last_seq);
        put_u64(&mut head, index.records.len() as u64);
        put_u64(&mut head, index.header.bytes);
        head.extend_from_slice(&hex::decode(&index.header.sha256).unwrap());
        put_table(&mut head, &index.types);
        put_table(&mut head, &index.sources);
        put_u32(&mut head, index.subjects.len() as u32);
        let header_len = head.len() + 3 * 8 + 4 + s.key_fences.len() * 8;
        let records_offset = (PREAMBLE + header_len + 4) as u64;
        let records = &v3[s.records_offset as usize..s.tables_offset[0] as usize];
        let subjects = &v3[s.tables_offset[2] as usize..s.keys_offset as usize];
        let keys = &v3[s.keys_offset as usize..];
        let subjects_offset = records_offset + records.len() as u64;
        let keys_offset = subjects_offset + subjects.len() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION_WHOLE_TABLES);
        put_u32(&mut out, header_len as u32);
        out.extend_from_slice(&head);
        put_u64(&mut out, subjects_offset);
        put_u64(&mut out, keys_offset);
        put_u64(&mut out, keys_offset + keys.len() as u64);
        put_u32(&mut out, s.key_fences.len() as u32);
        for f in &s.key_fences {
            put_u64(&mut out, *f);
        }
        seal_section(&mut out);
        out.extend_from_slice(records);
        out.extend_from_slice(subjects);
        out.extend_from_slice(keys);
        out
    }

    /// Index files written before the table heads (version 2) are read as
    /// they are, not rebuilt: a store of any size starts without reading
    /// its segments after an upgrade.
    #[test]
    fn a_version_2_file_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (b, header) = built_n(600);
        let index = decode(&b.encode(&header)).unwrap();
        let v2 = encode_v2(&index);
        assert_eq!(decode(&v2).unwrap(), index);
        let summary = decode_summary(&v2).unwrap();
        assert_eq!(summary.version, 2);
        assert_eq!(summary.sources.whole(), Some(&index.sources[..]));
        assert_eq!(summary.table_range(TableKind::Types), None);
        let (at, len) = summary.table_range(TableKind::Subjects).unwrap();
        assert_eq!(
            summary
                .decode_table(TableKind::Subjects, &v2[at as usize..at as usize + len])
                .unwrap(),
            index.subjects
        );
        let s = sealed(&header);
        let path = layout::segment_index_path(dir.path(), &s.file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &v2).unwrap();
        assert_eq!(check(dir.path(), &s).unwrap(), v2.len() as u64);
        assert_eq!(load_summary(dir.path(), &s).unwrap(), summary);
        for i in (0..v2.len()).step_by(5) {
            let mut bad = v2.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "flipped byte {i} not detected");
        }
    }

    #[test]
    fn key_order_is_fixed() {
        // FNV-1a 64 of "a\0b": the same in every build.
        assert_eq!(key_order("a", "b"), 0xe5d2_9919_0426_66b2);
        assert_ne!(key_order("a", "b"), key_order("ab", ""));
    }
}
