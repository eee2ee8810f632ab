//! The in-memory index the writer publishes after every commit and readers
//! query without touching the writer: where each event sits on disk, its
//! type/source/subject for filtering, per-type and per-source counts, and a
//! bounded cache of the most recent events' bytes so tail reads never hit disk.
//!
//! Only the active segment's events have an entry here (about 32 bytes
//! each, plus the distinct strings); a sealed segment is a
//! [`SealedPart`] whose records are read from its index file when a read
//! reaches them, so memory does not grow with the events stored. A read
//! that starts in a sealed segment gets the part back from [`Index::scan`]
//! and goes on with [`scan_part`] outside the index lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::chunked::ChunkedDeque;
use super::dedup::PreHashed;
pub use super::files::{SegmentFiles, DEFAULT_SEGMENT_FD_CACHE};
use super::filter::Filter;
use super::filter::{Matcher, PartPlan, TypeSet};
use super::sealed::{PartError, SealedPart};
use super::segindex::{self, HeadTable, Record, Summary};
use super::snapshot::OTHER_SERIES;
use crate::sse::SseFrame;

/// Marker for "no subject".
const NO_SUBJECT: u32 = u32::MAX;

/// Where one event is stored and what it is about.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Offset of the event bytes (not the line) in its segment file.
    pub offset: u64,
    /// Length of the event bytes.
    pub len: u32,
    /// CRC32C of the event bytes, checked on every read from disk.
    pub crc: u32,
    /// Position of the segment in [`Index::segments`].
    pub segment: u32,
    ty: u32,
    source: u32,
    subject: u32,
}

/// A segment file readers can `pread` from. It is opened on demand
/// through [`SegmentFiles`], so a store may hold more segments than the
/// process may open files.
#[derive(Debug)]
pub struct SegmentReader {
    /// First sequence number in the segment.
    pub first_seq: u64,
    /// Path, for opening it and for error messages.
    pub path: PathBuf,
    /// Bytes committed to this segment.
    pub bytes: u64,
}

/// String interner: filters compare small integers instead of strings.
///
/// Ids of strings no stored event uses any more (retention deleted their
/// last events) are released and reused, and the arena is compacted once
/// most of it is dead, so the interner is as large as the strings of the
/// retained events, not of every event ever stored.
#[derive(Debug, Default)]
pub struct Interner {
    /// Hash of a string -> id of the first string seen with that hash.
    ids: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    /// Strings whose hash collided with an earlier string's, by exact key.
    collided: HashMap<Box<str>, u32>,
    /// Every string, back to back: one allocation instead of one per
    /// string, since `subject` is often unique per event.
    arena: String,
    /// (start, length) of each id's string in `arena`; [`RELEASED`] as the
    /// length marks a released id.
    spans: Vec<(u64, u32)>,
    /// Released ids, reused first.
    free: Vec<u32>,
    /// Bytes of `arena` that belong to released ids.
    dead_bytes: usize,
}

/// Length marking a released id in [`Interner::spans`].
const RELEASED: u32 = u32::MAX;

/// The arena is compacted once this many bytes of it are dead (and they
/// are more than half of it), so compaction is amortized over the strings
/// released.
const COMPACT_MIN_DEAD: usize = 64 << 10;

fn string_hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl Interner {
    /// The id of `s`, and whether it is new (not used before, or reused).
    fn intern(&mut self, s: &str) -> (u32, bool) {
        let hash = string_hash(s);
        if let Some(id) = self.lookup(hash, s) {
            return (id, false);
        }
        let span = (self.arena.len() as u64, s.len() as u32);
        self.arena.push_str(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.spans[id as usize] = span;
                id
            }
            None => {
                self.spans.push(span);
                (self.spans.len() - 1) as u32
            }
        };
        if let std::collections::hash_map::Entry::Vacant(v) = self.ids.entry(hash) {
            v.insert(id);
        } else {
            self.collided.insert(Box::from(s), id);
        }
        (id, true)
    }

    fn lookup(&self, hash: u64, s: &str) -> Option<u32> {
        if let Some(&id) = self.ids.get(&hash) {
            if self.name(id) == s {
                return Some(id);
            }
        }
        if self.collided.is_empty() {
            return None;
        }
        self.collided.get(s).copied()
    }

    /// Forgets `id`'s string; the id may be handed out again.
    fn release(&mut self, id: u32) {
        let Some(&(_, len)) = self.spans.get(id as usize) else {
            return;
        };
        if len == RELEASED {
            return;
        }
        let name = self.name(id);
        let hash = string_hash(name);
        if self.ids.get(&hash) == Some(&id) {
            self.ids.remove(&hash);
        } else {
            let key: Box<str> = Box::from(name);
            self.collided.remove(&key);
        }
        self.spans[id as usize] = (0, RELEASED);
        self.free.push(id);
        self.dead_bytes += len as usize;
        if self.dead_bytes >= COMPACT_MIN_DEAD && self.dead_bytes * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Copies the live strings into a new arena (ids do not change).
    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.dead_bytes);
        for span in &mut self.spans {
            if span.1 == RELEASED {
                continue;
            }
            let (start, len) = (span.0 as usize, span.1 as usize);
            *span = (arena.len() as u64, span.1);
            arena.push_str(&self.arena[start..start + len]);
        }
        self.arena = arena;
        self.dead_bytes = 0;
        if self.free.len() == self.spans.len() {
            // Nothing is live: give the tables' memory back too.
            *self = Interner::default();
        }
    }

    /// The id of `s`, if a stored event uses it.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.lookup(string_hash(s), s)
    }

    /// The string behind an id (empty for a released id).
    pub fn name(&self, id: u32) -> &str {
        match self.spans.get(id as usize) {
            Some(&(start, len)) if len != RELEASED => {
                &self.arena[start as usize..start as usize + len as usize]
            }
            _ => "",
        }
    }

    /// The ids in use.
    fn live_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 != RELEASED)
            .map(|(i, _)| i as u32)
    }

    /// Number of distinct strings in use.
    pub fn len(&self) -> usize {
        self.spans.len() - self.free.len()
    }

    /// One more than the largest id given out.
    fn id_bound(&self) -> usize {
        self.spans.len()
    }

    /// True when no string is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the interner holds (strings, tables), approximately.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.spans.capacity() * 12
            + self.free.capacity() * 4
            + self.ids.capacity() * 16
            + self.collided.capacity() * 24
    }
}

/// An event being added to the index.
pub struct NewEntry<'a> {
    /// Sequence number (must be the next one).
    pub seq: u64,
    /// Segment position.
    pub segment: u32,
    /// Offset of the event bytes in the segment.
    pub offset: u64,
    /// Length of the event bytes.
    pub len: u32,
    /// CRC32C of the event bytes.
    pub crc: u32,
    /// `type` attribute.
    pub ty: &'a str,
    /// `source` attribute.
    pub source: &'a str,
    /// `subject` attribute.
    pub subject: Option<&'a str>,
    /// The event's message, for the recent-events cache (None during recovery).
    pub frame: Option<SseFrame>,
}

impl<'a> NewEntry<'a> {
    /// The entry of `r`, a record of the segment at position `segment`
    /// (the same fields a segment's index file keeps of it).
    pub fn of(r: &super::segindex::NewRecord<'a>, segment: u32, frame: Option<SseFrame>) -> Self {
        NewEntry {
            seq: r.seq,
            segment,
            offset: r.offset,
            len: r.len,
            crc: r.crc,
            ty: r.ty,
            source: r.source,
            subject: r.subject,
            frame,
        }
    }
}

/// A filter resolved against the interners for one chunk of a read.
enum Resolved {
    /// Some filtered string is not stored: nothing can match yet.
    Nothing,
    /// The type set is still being built: this chunk went to building it.
    Compiling,
    Ids {
        ty: TypeMatch,
        source: SourceMatch,
        subject: Option<u32>,
    },
}

/// How one chunk of a read matches `source`.
enum SourceMatch {
    Any,
    Exact(u32),
    /// Allowed by the scope's source prefixes: the matcher's
    /// [`SourceSet`](super::filter::SourceSet).
    Scoped,
}

/// How one chunk of a read matches `type`.
enum TypeMatch {
    Any,
    Exact(u32),
    /// In the matcher's compiled set.
    Set,
}

/// A recent event, kept as the Server-Sent Events message every live
/// subscriber sends (`id: N`, `data: {"seq":N,"event":...}`): built once
/// per event instead of once per subscriber. The event's own bytes are a
/// zero-copy slice of it.
#[derive(Debug)]
struct Recent {
    seq: u64,
    frame: SseFrame,
}

impl Recent {
    /// What it costs the cache's bound: the frame's memory and its slot.
    fn footprint(&self) -> usize {
        self.frame.footprint() + std::mem::size_of::<u64>()
    }
}

/// One event selected by a query: its bytes if cached, else where to read them.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Sequence number.
    pub seq: u64,
    /// Location on disk.
    pub entry: Entry,
    /// Cached bytes of the event, when still in the recent cache.
    pub cached: Option<Bytes>,
    /// The event's Server-Sent Events message, when still in the recent cache.
    pub frame: Option<Bytes>,
}

/// Result of a query: the hits and how far the scan got.
#[derive(Debug, Default)]
pub struct Page {
    /// Matching events, in sequence order.
    pub hits: Vec<Hit>,
    /// Last sequence number examined; the next page starts after it.
    pub scanned_to: u64,
    /// The newest committed seq when the chunk ran: once `scanned_to`
    /// reaches it, the read is at the end of the log.
    pub last: u64,
    /// Index entries this chunk examined.
    pub examined: usize,
    /// Type names this chunk looked at to build a `type_prefix`'s set
    /// (they share the chunk's budget but not a read's entry budget, so
    /// a read over more types than that budget still makes progress).
    pub compiled: usize,
    /// Set when the chunk starts in a sealed part: nothing was examined,
    /// and the caller goes on with [`scan_part`] after releasing the lock.
    pub sealed: Option<(Arc<SealedPart>, Arc<SegmentFiles>)>,
}

/// Where an event is: see [`Index::locate`].
#[derive(Debug)]
pub enum Located {
    /// It has an entry in memory.
    Entry(Hit),
    /// It is in a sealed part, read through the part's index file (opened
    /// through the cache given).
    Sealed(Arc<SealedPart>, Arc<SegmentFiles>),
}

/// An event's `type` and `source`: see [`Index::names`].
#[derive(Debug)]
pub enum Names<'a> {
    /// From its entry.
    Entry(&'a str, &'a str),
    /// In a sealed part: read them with [`sealed_names`].
    Sealed(Arc<SealedPart>, Arc<SegmentFiles>),
}

fn sealed_hit(part: &SealedPart, seq: u64, r: &Record) -> Hit {
    Hit {
        seq,
        entry: Entry {
            offset: r.offset,
            len: r.len,
            crc: r.crc,
            segment: part.pos,
            ty: NO_SUBJECT,
            source: NO_SUBJECT,
            subject: NO_SUBJECT,
        },
        cached: None,
        frame: None,
    }
}

/// The event `seq` of the sealed part `part`, read from its index file.
pub fn read_sealed_hit(
    part: &SealedPart,
    files: &SegmentFiles,
    seq: u64,
) -> Result<Hit, PartError> {
    let r = part.record(files, seq)?;
    Ok(sealed_hit(part, seq, &r))
}

/// The `type` and `source` of the event `seq` of the sealed part `part`.
pub fn sealed_names(
    part: &SealedPart,
    files: &SegmentFiles,
    seq: u64,
) -> Result<(String, String), PartError> {
    part.names(files, seq)
}

/// One chunk of a read inside the sealed part `part`: events after `after`
/// that match `m`, at most `limit`, examining at most `budget` records
/// (`last` is the newest seq of the store, for [`Page::last`]). Runs
/// without the index lock. The first chunk in a part works out the
/// matcher's [`PartPlan`] from the part's tables; a part where nothing can
/// match is passed over whole without reading its records.
pub fn scan_part(
    part: &SealedPart,
    files: &SegmentFiles,
    m: &Matcher,
    after: u64,
    limit: usize,
    budget: usize,
    last: u64,
) -> Result<Page, PartError> {
    let mut page = Page {
        scanned_to: after,
        last,
        ..Page::default()
    };
    let start = after.max(part.first_seq() - 1) + 1;
    if start > part.last_seq() || limit == 0 || budget == 0 {
        return Ok(page);
    }
    let plan = match m.part_plan(part.first_seq()) {
        Some(plan) => plan,
        None => {
            let plan = Arc::new(PartPlan::new(m, part.first_seq(), |kind| {
                part.table(files, kind)
            })?);
            page.compiled = plan.cost;
            m.keep_part_plan(plan.clone());
            plan
        }
    };
    if plan.nothing {
        page.scanned_to = part.last_seq();
        page.examined = 1;
        return Ok(page);
    }
    let budget = budget.saturating_sub(page.compiled).max(1);
    let end = part.last_seq().min(start.saturating_add(budget as u64 - 1));
    let records = part.records(files, start, end)?;
    for (seq, r) in (start..).zip(&records) {
        page.scanned_to = seq;
        page.examined += 1;
        if plan.matches(r) {
            page.hits.push(sealed_hit(part, seq, r));
            if page.hits.len() == limit {
                break;
            }
        }
    }
    Ok(page)
}

/// The committed state of the log, as readers see it.
///
/// Retention drops a prefix of events and the segments that held them, so
/// entries are a deque indexed by `seq - first_seq`, and segment positions
/// ([`Entry::segment`]) are absolute: the oldest live segment has position
/// `segment_base`. Look segments up with [`Index::segment`]; a position
/// below the base belongs to a segment retention has deleted.
#[derive(Debug)]
pub struct Index {
    /// The oldest stored event.
    first_seq: u64,
    /// Sealed segments read through their index files, oldest first:
    /// their events have no entry in memory (see [`super::sealed`]).
    sealed: VecDeque<Arc<SealedPart>>,
    /// Event counts of the sealed parts by type and by source, and the sum
    /// of their distinct subjects, kept as parts come and go.
    sealed_types: SealedCounts,
    sealed_sources: SealedCounts,
    sealed_subjects: u64,
    /// Seq of `entries[0]`: the first event after the sealed parts.
    entries_first: u64,
    /// One entry per event after the sealed parts (the active segment's,
    /// and a sealed segment's whose index file could not be written).
    entries: ChunkedDeque<Entry>,
    segments: VecDeque<SegmentReader>,
    segment_base: u32,
    files: Arc<SegmentFiles>,
    types: Interner,
    sources: Interner,
    subjects: Interner,
    type_counts: Vec<u64>,
    source_counts: Vec<u64>,
    subject_counts: Vec<u64>,
    /// Moves whenever retention releases a type id: compiled type sets
    /// built for an older epoch are rebuilt (the id may now name another
    /// type).
    type_epoch: u64,
    /// Every type id in use, then each new one in the order it was
    /// interned (reset to the ids in use when the epoch moves): what a
    /// compiled type set has not looked at yet is its tail.
    type_log: Vec<u32>,
    /// Every type name in use, sorted, with its id: a `type_prefix` is a
    /// range of it, so a fresh reader finds its types in O(log n + k)
    /// instead of looking at every type name (100,000 types made each
    /// one-shot `GET /events?type_prefix=` compare 100,000 names).
    type_order: BTreeMap<Box<str>, u32>,
    /// Moves whenever retention releases a source id: what a matcher has
    /// learnt about source ids of an older epoch is forgotten.
    source_epoch: u64,
    recent: VecDeque<Recent>,
    recent_bytes: usize,
    recent_capacity: usize,
}

impl Index {
    /// An empty index whose first event will be `first_seq`.
    pub fn new(first_seq: u64, recent_capacity: usize) -> Self {
        Index {
            first_seq,
            sealed: VecDeque::new(),
            sealed_types: SealedCounts::default(),
            sealed_sources: SealedCounts::default(),
            sealed_subjects: 0,
            entries_first: first_seq,
            entries: ChunkedDeque::default(),
            segments: VecDeque::new(),
            segment_base: 0,
            files: Arc::new(SegmentFiles::new(DEFAULT_SEGMENT_FD_CACHE)),
            types: Interner::default(),
            sources: Interner::default(),
            subjects: Interner::default(),
            type_counts: Vec::new(),
            source_counts: Vec::new(),
            subject_counts: Vec::new(),
            type_epoch: 0,
            type_log: Vec::new(),
            type_order: BTreeMap::new(),
            source_epoch: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_capacity,
        }
    }

    /// Sequence number of the oldest stored event.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number of the newest committed event (first_seq - 1 if empty).
    pub fn last_seq(&self) -> u64 {
        self.entries_first + self.entries.len() as u64 - 1
    }

    /// Number of stored events.
    pub fn len(&self) -> usize {
        (self.last_seq() + 1 - self.first_seq) as usize
    }

    /// True when no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events with an entry in memory (those after the sealed parts).
    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }

    /// The records and name tables of the index file of the events
    /// `first..=last`, from their entries (none if any of them has no
    /// entry in memory). What the writer encodes a segment's index file
    /// from when it seals it: the entries already hold every record's
    /// place and names, so the writer does not keep a second copy of
    /// them while the segment is active. A table's ids are given in the
    /// order of their first record, as [`segindex::Builder`] gives them,
    /// so the file is the one a rebuild from the segment writes.
    ///
    /// [`segindex::Builder`]: super::segindex::Builder
    pub fn segment_records(&self, first: u64, last: u64) -> Option<segindex::SegmentRecords<'_>> {
        let start = first.checked_sub(self.entries_first)? as usize;
        let count = (last + 1).checked_sub(first)? as usize;
        if start + count > self.entries.len() {
            return None;
        }
        /// One table of the file: a local id for each interner id met.
        struct Table<'a> {
            interner: &'a Interner,
            local: Vec<u32>,
            names: Vec<segindex::NameRef<'a>>,
        }
        impl Table<'_> {
            fn id(&mut self, global: u32) -> u32 {
                let slot = &mut self.local[global as usize];
                if *slot == u32::MAX {
                    *slot = self.names.len() as u32;
                    self.names.push(segindex::NameRef {
                        name: self.interner.name(global),
                        count: 0,
                    });
                }
                self.names[*slot as usize].count += 1;
                *slot
            }
        }
        fn table(interner: &Interner) -> Table<'_> {
            Table {
                interner,
                local: vec![u32::MAX; interner.id_bound()],
                names: Vec::new(),
            }
        }
        let (mut types, mut sources, mut subjects) = (
            table(&self.types),
            table(&self.sources),
            table(&self.subjects),
        );
        let mut records = Vec::with_capacity(count);
        for i in start..start + count {
            let e = &self.entries[i];
            // Each table gives its ids in seq order of first use.
            let source = sources.id(e.source);
            let ty = types.id(e.ty);
            let subject = match e.subject {
                NO_SUBJECT => segindex::NO_SUBJECT,
                s => subjects.id(s),
            };
            records.push(segindex::Record {
                offset: e.offset,
                len: e.len,
                crc: e.crc,
                ty,
                source,
                subject,
            });
        }
        Some(segindex::SegmentRecords {
            types: types.names,
            sources: sources.names,
            subjects: subjects.names,
            records,
        })
    }

    /// Sealed segments read through their index files.
    pub fn sealed_parts(&self) -> usize {
        self.sealed.len()
    }

    /// Adds the next sealed segment, read through its index file (at
    /// start-up: no event may have an entry yet).
    pub fn add_sealed(&mut self, part: Arc<SealedPart>) {
        debug_assert!(self.entries.is_empty());
        debug_assert_eq!(part.first_seq(), self.entries_first);
        self.entries_first = part.last_seq() + 1;
        self.count_part(&part, true);
        self.sealed.push_back(part);
    }

    /// Moves the oldest events with an entry, those of the segment just
    /// sealed, to `part`: their entries are dropped, and reads of them go
    /// through the segment's index file from now on.
    /// False (and nothing changes) unless `part` holds exactly the oldest
    /// events in memory.
    pub fn seal(&mut self, part: Arc<SealedPart>) -> bool {
        if part.first_seq() != self.entries_first || part.last_seq() > self.last_seq() {
            // Not the oldest events in memory: keep the entries (a
            // programming error; reads stay correct either way).
            tracing::warn!(
                first_seq = part.first_seq(),
                entries_first = self.entries_first,
                "a sealed segment that is not the oldest in memory keeps its entries"
            );
            return false;
        }
        let n = (part.last_seq() + 1 - self.entries_first) as usize;
        self.drop_entries(n);
        self.count_part(&part, true);
        self.sealed.push_back(part);
        true
    }

    /// The sealed parts, oldest first.
    pub fn sealed_list(&self) -> Vec<Arc<SealedPart>> {
        self.sealed.iter().cloned().collect()
    }

    /// Adds (or, with `add` false, removes) a part's counts.
    fn count_part(&mut self, part: &SealedPart, add: bool) {
        self.sealed_types.count(&part.summary.types, add);
        self.sealed_sources.count(&part.summary.sources, add);
        let subjects = u64::from(part.summary.subject_count);
        if add {
            self.sealed_subjects += subjects;
        } else {
            self.sealed_subjects = self.sealed_subjects.saturating_sub(subjects);
        }
    }

    /// The sealed part holding `seq`, if `seq` is before the entries.
    fn part_of(&self, seq: u64) -> Option<&Arc<SealedPart>> {
        if seq >= self.entries_first || seq < self.first_seq {
            return None;
        }
        let i = self.sealed.partition_point(|p| p.last_seq() < seq);
        self.sealed.get(i).filter(|p| p.first_seq() <= seq)
    }

    /// Points readers of the index file of the segment starting at
    /// `first_seq` at the file now at its path (after a rebuild), described
    /// by `summary`.
    pub fn replace_index_file(&mut self, first_seq: u64, summary: Option<Summary>) {
        self.files.forget(first_seq);
        let Some(summary) = summary else {
            return;
        };
        if let Some(slot) = self
            .sealed
            .iter_mut()
            .find(|p| p.first_seq() == first_seq && p.summary.header == summary.header)
        {
            *slot = Arc::new(SealedPart::new(
                summary,
                slot.pos,
                slot.path.clone(),
                slot.segment_path.clone(),
            ));
        }
    }

    /// Total bytes of all segment files.
    pub fn store_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Adds a segment file and returns its position.
    pub fn add_segment(&mut self, reader: SegmentReader) -> u32 {
        self.segments.push_back(reader);
        self.segment_base + (self.segments.len() - 1) as u32
    }

    /// The segment at position `pos`; `None` once retention has deleted it.
    pub fn segment(&self, pos: u32) -> Option<&SegmentReader> {
        self.segments
            .get(pos.checked_sub(self.segment_base)? as usize)
    }

    /// The live segment files, oldest first.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &SegmentReader> {
        self.segments.iter()
    }

    /// Number of live segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// How many segment files readers keep open (at least one).
    pub fn set_segment_fd_cache(&self, capacity: usize) {
        self.files
            .capacity
            .store(capacity.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The segment files open for readers.
    pub fn segment_files(&self) -> &Arc<SegmentFiles> {
        &self.files
    }

    /// Where the segment at `pos` is and the cache to open it through;
    /// `None` once retention has deleted it. Open it with
    /// [`SegmentFiles::get`] after releasing the index lock: the file may
    /// have been deleted by then, which [`open_segment`] tells apart.
    pub fn segment_location(&self, pos: u32) -> Option<(u64, PathBuf, Arc<SegmentFiles>)> {
        let s = self.segment(pos)?;
        Some((s.first_seq, s.path.clone(), self.files.clone()))
    }

    /// Points readers of the segment starting at `first_seq` at the file
    /// now at its path (after a repair replaced the file).
    pub fn replace_segment_file(&mut self, first_seq: u64) {
        self.files.forget(first_seq);
    }

    /// Records that `segment` now holds `bytes` committed bytes.
    pub fn set_segment_bytes(&mut self, segment: u32, bytes: u64) {
        let i = (segment - self.segment_base) as usize;
        self.segments[i].bytes = bytes;
    }

    /// Forgets every event before `new_first` and every segment that held
    /// only such events (retention). The newest segment is always kept.
    /// Per-type, per-source and per-subject counts shrink with the dropped
    /// events, and a type, source or subject no retained event uses any
    /// more is released from its interner.
    pub fn drop_before(&mut self, new_first: u64) {
        if new_first <= self.first_seq {
            return;
        }
        while self
            .sealed
            .front()
            .is_some_and(|p| p.last_seq() < new_first)
        {
            if let Some(part) = self.sealed.pop_front() {
                self.count_part(&part, false);
            }
        }
        if new_first > self.entries_first {
            let n = ((new_first - self.entries_first) as usize).min(self.entries.len());
            self.drop_entries(n);
        }
        if self.entries.is_empty() {
            // Nothing is left before `new_first`: the next event is there.
            self.entries_first = self.entries_first.max(new_first);
        }
        self.first_seq = new_first;
        while self.recent.front().is_some_and(|r| r.seq < new_first) {
            if let Some(r) = self.recent.pop_front() {
                self.recent_bytes -= r.footprint();
            }
        }
        while self.segments.len() > 1 && self.segments[1].first_seq <= new_first {
            self.segments.pop_front();
            self.segment_base += 1;
        }
        if let Some(oldest) = self.segments.front() {
            self.files.forget_before(oldest.first_seq);
        }
    }

    /// Drops the `n` oldest entries: per-type, per-source and per-subject
    /// counts shrink with them, and a type, source or subject no entry
    /// uses any more is released from its interner.
    fn drop_entries(&mut self, n: usize) {
        let (mut types_released, mut sources_released) = (false, false);
        let (types, sources, subjects) = (&mut self.types, &mut self.sources, &mut self.subjects);
        let (type_counts, source_counts, subject_counts) = (
            &mut self.type_counts,
            &mut self.source_counts,
            &mut self.subject_counts,
        );
        let type_order = &mut self.type_order;
        self.entries.drop_front(n, |e| {
            if unbump(type_counts, e.ty) {
                type_order.remove(types.name(e.ty));
                types.release(e.ty);
                types_released = true;
            }
            if unbump(source_counts, e.source) {
                sources.release(e.source);
                sources_released = true;
            }
            if e.subject != NO_SUBJECT && unbump(subject_counts, e.subject) {
                subjects.release(e.subject);
            }
        });
        self.entries_first += n as u64;
        if types_released {
            self.type_epoch += 1;
            self.type_log = self.types.live_ids().collect();
        }
        if sources_released {
            self.source_epoch += 1;
        }
        shrink_counts(&mut self.type_counts, &self.types);
        shrink_counts(&mut self.source_counts, &self.sources);
        shrink_counts(&mut self.subject_counts, &self.subjects);
    }

    /// Appends an entry. Sequence numbers must be gapless.
    pub fn push(&mut self, e: NewEntry<'_>) {
        debug_assert_eq!(e.seq, self.last_seq() + 1);
        let (ty, new_type) = self.types.intern(e.ty);
        if new_type {
            self.type_log.push(ty);
            self.type_order.insert(Box::from(e.ty), ty);
        }
        let (source, _) = self.sources.intern(e.source);
        let subject = match e.subject {
            Some(s) => {
                let (id, _) = self.subjects.intern(s);
                bump(&mut self.subject_counts, id);
                id
            }
            None => NO_SUBJECT,
        };
        bump(&mut self.type_counts, ty);
        bump(&mut self.source_counts, source);
        self.entries.push_back(Entry {
            offset: e.offset,
            len: e.len,
            crc: e.crc,
            segment: e.segment,
            ty,
            source,
            subject,
        });
        if let Some(frame) = e.frame {
            let recent = Recent { seq: e.seq, frame };
            self.recent_bytes += recent.footprint();
            self.recent.push_back(recent);
            while self.recent_bytes > self.recent_capacity {
                match self.recent.pop_front() {
                    Some(r) => self.recent_bytes -= r.footprint(),
                    None => break,
                }
            }
        }
    }

    /// Where the event `seq` is, if stored: its entry, or the sealed part
    /// to read it from (outside the index lock: see [`read_sealed_hit`]).
    pub fn locate(&self, seq: u64) -> Option<Located> {
        if seq < self.first_seq || seq > self.last_seq() {
            return None;
        }
        match self.part_of(seq) {
            Some(part) => Some(Located::Sealed(part.clone(), self.files.clone())),
            None => Some(Located::Entry(self.hit(seq))),
        }
    }

    /// The event `seq`, if stored, reading a sealed part's index file when
    /// need be (for tests and tools; the store reads sealed parts with
    /// [`Index::locate`], outside the lock).
    pub fn get(&self, seq: u64) -> Option<Hit> {
        match self.locate(seq)? {
            Located::Entry(hit) => Some(hit),
            Located::Sealed(part, files) => {
                let mut hit = read_sealed_hit(&part, &files, seq).ok()?;
                self.fill_cached(std::slice::from_mut(&mut hit));
                Some(hit)
            }
        }
    }

    /// The `type` and `source` of the event at `seq` when it has an entry;
    /// for an event of a sealed part, the part to read them from.
    pub fn names(&self, seq: u64) -> Option<Names<'_>> {
        if seq < self.first_seq || seq > self.last_seq() {
            return None;
        }
        if let Some(part) = self.part_of(seq) {
            return Some(Names::Sealed(part.clone(), self.files.clone()));
        }
        let e = &self.entries[(seq - self.entries_first) as usize];
        Some(Names::Entry(
            self.types.name(e.ty),
            self.sources.name(e.source),
        ))
    }

    fn hit(&self, seq: u64) -> Hit {
        let entry = self.entries[(seq - self.entries_first) as usize];
        let recent = self.recent(seq);
        Hit {
            seq,
            entry,
            cached: recent.map(|r| r.frame.event()),
            frame: recent.map(|r| r.frame.message().clone()),
        }
    }

    /// Fills in the cached bytes of hits read from sealed parts whose
    /// events are still in the recent cache.
    pub fn fill_cached(&self, hits: &mut [Hit]) {
        for h in hits.iter_mut().filter(|h| h.cached.is_none()) {
            if let Some(r) = self.recent(h.seq) {
                h.cached = Some(r.frame.event());
                h.frame = Some(r.frame.message().clone());
            }
        }
    }

    fn recent(&self, seq: u64) -> Option<&Recent> {
        let front = self.recent.front()?.seq;
        if seq < front {
            return None;
        }
        self.recent.get((seq - front) as usize)
    }

    /// Events after `after` that match `filter`, at most `limit` of them,
    /// examining at most `max_scan` entries (a convenience for tests; the
    /// store reads with [`Index::scan`], in chunks).
    pub fn query(&self, after: u64, filter: &Filter, limit: usize, max_scan: usize) -> Page {
        let m = Matcher::new(filter.clone());
        let mut page = Page {
            scanned_to: after,
            ..Page::default()
        };
        let mut examined = 0;
        while examined < max_scan && page.hits.len() < limit {
            let mut chunk = self.scan(
                page.scanned_to,
                &m,
                limit - page.hits.len(),
                max_scan - examined,
            );
            if let Some((part, files)) = chunk.sealed.take() {
                let last = chunk.last;
                chunk = scan_part(
                    &part,
                    &files,
                    &m,
                    chunk.scanned_to,
                    limit - page.hits.len(),
                    max_scan - examined,
                    last,
                )
                .unwrap_or_else(|e| panic!("reading a sealed part: {e}"));
                self.fill_cached(&mut chunk.hits);
            }
            examined += chunk.examined.max(1);
            page.hits.extend(chunk.hits);
            page.scanned_to = chunk.scanned_to;
            page.last = chunk.last;
            if page.scanned_to >= page.last {
                break;
            }
        }
        page
    }

    /// One chunk of a read: events after `after` that match `m` and its
    /// scope, at most `limit` of them, examining at most `budget` entries
    /// or type names. Each entry costs O(1): the filter is resolved once
    /// per chunk, a `type_prefix` and the scope's type prefixes are one
    /// compiled set of type ids, and the scope's source prefixes a set of
    /// source ids learnt as the reads meet them (see [`Matcher`]).
    /// Callers hold the index lock for one chunk only and continue from
    /// [`Page::scanned_to`] until it reaches [`Page::last`].
    pub fn scan(&self, after: u64, m: &Matcher, limit: usize, budget: usize) -> Page {
        let last = self.last_seq();
        let mut page = Page {
            scanned_to: after,
            last,
            ..Page::default()
        };
        // `after` comes from clients: u64::MAX must be an empty page, not an overflow.
        let Some(start) = after.max(self.first_seq.saturating_sub(1)).checked_add(1) else {
            page.last = after;
            return page;
        };
        page.scanned_to = start - 1;
        if start > last || limit == 0 || budget == 0 {
            return page;
        }
        if let Some(part) = self.part_of(start) {
            page.sealed = Some((part.clone(), self.files.clone()));
            return page;
        }
        let mut types = m.types();
        let (ty, source, subject) = match self.resolve(m, &mut types, budget, &mut page) {
            Resolved::Nothing => {
                page.scanned_to = last;
                return page;
            }
            Resolved::Compiling => return page,
            Resolved::Ids {
                ty,
                source,
                subject,
            } => (ty, source, subject),
        };
        let mut sources = match source {
            SourceMatch::Scoped => {
                let mut sources = m.sources();
                if sources.epoch != self.source_epoch {
                    sources.reset(self.source_epoch);
                }
                Some(sources)
            }
            _ => None,
        };
        let budget = budget.saturating_sub(page.compiled).max(1);
        let end = last.min(start.saturating_add(budget as u64 - 1));
        for seq in start..=end {
            let e = &self.entries[(seq - self.entries_first) as usize];
            let matches = match ty {
                TypeMatch::Any => true,
                TypeMatch::Exact(id) => e.ty == id,
                TypeMatch::Set => types.contains(e.ty),
            } && match (&source, &mut sources) {
                (SourceMatch::Exact(id), _) => *id == e.source,
                (SourceMatch::Scoped, Some(set)) => match set.get(e.source) {
                    Some(allowed) => allowed,
                    None => {
                        let allowed = m.filter().scope.allows_source(self.sources.name(e.source));
                        set.set(e.source, allowed);
                        allowed
                    }
                },
                _ => true,
            } && subject.is_none_or(|s| s == e.subject);
            page.scanned_to = seq;
            page.examined += 1;
            if matches {
                page.hits.push(self.hit(seq));
                if page.hits.len() == limit {
                    break;
                }
            }
        }
        page
    }

    /// Resolves `m`'s filter and scope for one chunk; building the type
    /// set of a `type_prefix` or of the scope's type prefixes costs one
    /// unit of `budget` per type name looked at.
    fn resolve(
        &self,
        m: &Matcher,
        types: &mut TypeSet,
        budget: usize,
        page: &mut Page,
    ) -> Resolved {
        let f = m.filter();
        let source = match &f.source {
            Some(s) if !f.scope.allows_source(s) => return Resolved::Nothing,
            Some(s) => match self.sources.get(s) {
                Some(id) => SourceMatch::Exact(id),
                None => return Resolved::Nothing,
            },
            None if f.scope.source_prefixes.is_empty() => SourceMatch::Any,
            None => SourceMatch::Scoped,
        };
        let subject = match &f.subject {
            Some(s) => match self.subjects.get(s) {
                Some(id) => Some(id),
                None => return Resolved::Nothing,
            },
            None => None,
        };
        let ty = match (&f.ty, m.type_prefixes()) {
            (Some(t), _) => {
                if !m.allows_type(t) {
                    return Resolved::Nothing;
                }
                match self.types.get(t) {
                    Some(id) => TypeMatch::Exact(id),
                    None => return Resolved::Nothing,
                }
            }
            (None, Some(prefixes)) => {
                if types.epoch != self.type_epoch {
                    types.reset(self.type_epoch);
                }
                if types.pos == 0 {
                    // A fresh set: the sorted names' range of each prefix,
                    // when they fit the budget; otherwise the log, a
                    // budget at a time.
                    let mut n = 0;
                    'prefixes: for prefix in prefixes {
                        let range = self
                            .type_order
                            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                            .take_while(|(name, _)| name.starts_with(prefix.as_str()));
                        for (_, &id) in range {
                            if n == budget {
                                types.reset(self.type_epoch);
                                break 'prefixes;
                            }
                            types.insert(id);
                            n += 1;
                        }
                    }
                    page.compiled += n;
                    if n < budget {
                        types.pos = self.type_log.len();
                    }
                }
                let todo = &self.type_log[types.pos.min(self.type_log.len())..];
                let n = todo.len().min(budget);
                for &id in &todo[..n] {
                    if m.allows_type(self.types.name(id)) {
                        types.insert(id);
                    }
                }
                types.pos += n;
                page.compiled += n;
                if types.pos < self.type_log.len() {
                    return Resolved::Compiling;
                }
                if types.is_empty() {
                    return Resolved::Nothing;
                }
                TypeMatch::Set
            }
            (None, None) => TypeMatch::Any,
        };
        Resolved::Ids {
            ty,
            source,
            subject,
        }
    }

    /// Distinct types and sources the retained events use, and their
    /// subjects: exact for the events in memory, and for sealed segments
    /// the sum of each segment's distinct subjects (a subject used in
    /// several segments counts once per segment: their tables stay on
    /// disk), and likewise for the types and sources a segment's table
    /// head does not list.
    pub fn distinct(&self) -> (usize, usize, usize) {
        let merged = |sealed: &SealedCounts, interner: &Interner| {
            let counts = &sealed.by_name;
            counts.len()
                + sealed.unlisted_names as usize
                + interner
                    .live_ids()
                    .filter(|&id| !counts.contains_key(interner.name(id)))
                    .count()
        };
        (
            merged(&self.sealed_types, &self.types),
            merged(&self.sealed_sources, &self.sources),
            self.subjects.len() + self.sealed_subjects as usize,
        )
    }

    /// Bytes the interners, per-string counters and sealed parts' tables
    /// hold, approximately.
    pub fn interned_bytes(&self) -> usize {
        let map = |m: &HashMap<Box<str>, u64>| {
            m.capacity() * 32 + m.keys().map(|k| k.len()).sum::<usize>()
        };
        self.types.heap_bytes()
            + self.sources.heap_bytes()
            + self.subjects.heap_bytes()
            + self.type_log.capacity() * 4
            + (self.type_counts.capacity()
                + self.source_counts.capacity()
                + self.subject_counts.capacity())
                * 8
            + map(&self.sealed_types.by_name)
            + map(&self.sealed_sources.by_name)
            + self.sealed.iter().map(|p| p.heap_bytes()).sum::<usize>()
    }

    /// Event counts per type, for `/stats` (events of types that sealed
    /// segments' table heads do not list are counted under
    /// [`OTHER_SERIES`]).
    pub fn type_counts(&self) -> impl Iterator<Item = (&str, u64)> {
        merge_counts(&self.sealed_types, &self.type_counts, &self.types)
    }

    /// Event counts per source, for `/stats` (as [`Index::type_counts`]).
    pub fn source_counts(&self) -> impl Iterator<Item = (&str, u64)> {
        merge_counts(&self.sealed_sources, &self.source_counts, &self.sources)
    }

    /// Bytes held by the recent-events cache.
    pub fn cache_bytes(&self) -> usize {
        self.recent_bytes
    }
}

/// What the sealed parts' heads of one table (types or sources) add up
/// to: counts by the names they list, and the events and distinct names
/// of the names they do not (a segment whose events use a new name each
/// keeps only its busiest names in memory, see
/// [`HeadTable`]).
#[derive(Debug, Default)]
struct SealedCounts {
    by_name: HashMap<Box<str>, u64>,
    unlisted_events: u64,
    unlisted_names: u64,
}

impl SealedCounts {
    /// Adds (or, with `add` false, removes) the counts of a part's head.
    fn count(&mut self, head: &HeadTable, add: bool) {
        let unlisted = u64::from(head.distinct) - head.names.len() as u64;
        if add {
            self.unlisted_events += head.rest;
            self.unlisted_names += unlisted;
        } else {
            self.unlisted_events = self.unlisted_events.saturating_sub(head.rest);
            self.unlisted_names = self.unlisted_names.saturating_sub(unlisted);
        }
        for n in &head.names {
            if add {
                *self.by_name.entry(Box::from(n.name.as_str())).or_default() += n.count;
            } else if let Some(c) = self.by_name.get_mut(n.name.as_str()) {
                *c = c.saturating_sub(n.count);
                if *c == 0 {
                    self.by_name.remove(n.name.as_str());
                }
            }
        }
    }
}

/// The sealed parts' counts by name plus the counts of the events in
/// memory, and the sealed events under names no head lists as
/// [`OTHER_SERIES`].
fn merge_counts<'a>(
    sealed: &'a SealedCounts,
    counts: &'a [u64],
    interner: &'a Interner,
) -> impl Iterator<Item = (&'a str, u64)> {
    let mut merged: HashMap<&str, u64> = sealed.by_name.iter().map(|(k, v)| (&**k, *v)).collect();
    for (id, &c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        *merged.entry(interner.name(id as u32)).or_default() += c;
    }
    let other = (sealed.unlisted_events > 0).then_some((OTHER_SERIES, sealed.unlisted_events));
    merged.into_iter().chain(other)
}

/// Counts one event less for `id`; true when none is left.
fn unbump(counts: &mut [u64], id: u32) -> bool {
    let c = &mut counts[id as usize];
    *c -= 1;
    *c == 0
}

/// Cuts the counts of released ids at the end, and gives back memory once
/// most of the table is unused.
fn shrink_counts(counts: &mut Vec<u64>, interner: &Interner) {
    while counts.last() == Some(&0) {
        counts.pop();
    }
    if counts.capacity() > 64 && counts.capacity() > 4 * interner.spans.len().max(counts.len()) {
        counts.shrink_to(counts.len().max(interner.spans.len()));
    }
}

fn bump(counts: &mut Vec<u64>, id: u32) {
    let i = id as usize;
    if counts.len() <= i {
        counts.resize(i + 1, 0);
    }
    counts[i] += 1;
}

/// Opens the segment at `pos` for reading through the index's cache, from
/// outside the index lock. `Ok(None)` when retention deleted the segment
/// (before the call or while it opened the file).
pub fn open_segment(
    index: &std::sync::RwLock<Index>,
    pos: u32,
) -> std::io::Result<Option<(Arc<File>, PathBuf)>> {
    let located = index
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .segment_location(pos);
    let Some((first_seq, path, files)) = located else {
        return Ok(None);
    };
    match files.get(first_seq, &path) {
        Ok(f) => Ok(Some((f, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let idx = index.read().unwrap_or_else(|e| e.into_inner());
            if idx.segment(pos).is_none() {
                Ok(None)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Why a stored event could not be served: its bytes could not be read,
/// or they fail the CRC32C kept in the index.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The positional read failed.
    #[error("read {} at offset {offset}: {source}", path.display())]
    Read {
        /// The segment file.
        path: std::path::PathBuf,
        /// Where the event starts.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes read are not the bytes written.
    #[error("CRC mismatch for seq {seq} in {} at offset {offset}: stored {stored:08x}, read {read:08x}", path.display())]
    Crc {
        /// The event.
        seq: u64,
        /// The segment file.
        path: std::path::PathBuf,
        /// Where the event starts.
        offset: u64,
        /// The CRC32C kept in the index.
        stored: u32,
        /// The CRC32C of what was read.
        read: u32,
    },
}

/// Reads the stored bytes of `hit` from memory or disk and checks their CRC.
/// Errors name the file and offset, so an operator can find the damage.
pub fn load(segments_file: &File, path: &std::path::Path, hit: &Hit) -> Result<Bytes, LoadError> {
    if let Some(b) = &hit.cached {
        return Ok(b.clone());
    }
    let mut buf = vec![0u8; hit.entry.len as usize];
    segments_file
        .read_exact_at(&mut buf, hit.entry.offset)
        .map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            offset: hit.entry.offset,
            source,
        })?;
    let crc = crc32c::crc32c(&buf);
    if crc != hit.entry.crc {
        return Err(LoadError::Crc {
            seq: hit.seq,
            path: path.to_path_buf(),
            offset: hit.entry.offset,
            stored: hit.entry.crc,
            read: crc,
        });
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::Interner;
    use crate::store::Scope;

    /// The bound of `--read-cache-bytes` is memory: an event's buffer is
    /// sized before its attributes are filled in, so it can hold much more
    /// than its message, and a bound on message lengths let the cache hold
    /// several times its setting.
    #[test]
    fn the_recent_cache_counts_the_memory_its_frames_hold() {
        let frame = |seq: u64| {
            // A 100-byte event in a buffer with room for 4,000.
            let mut buf = crate::sse::buffer(4000);
            buf.extend_from_slice(&[b'x'; 100]);
            crate::sse::SseFrame::in_place(seq, buf)
        };
        let each = frame(1).footprint();
        assert!(each > 4000, "a frame's footprint is its buffer: {each}");
        let mut idx = super::Index::new(1, 10 * each + each / 2);
        for seq in 1..=100u64 {
            idx.push(super::NewEntry {
                frame: Some(frame(seq)),
                ..entry(seq, "t")
            });
        }
        assert!(idx.cache_bytes() <= 10 * each + each / 2);
        assert!(
            idx.get(90).unwrap().cached.is_none(),
            "older events left the cache"
        );
        assert!(idx.get(100).unwrap().cached.is_some());
    }

    #[test]
    fn a_prefix_over_more_types_than_the_scan_budget_still_finds_its_events() {
        let mut idx = super::Index::new(1, 0);
        for seq in 1..=150_000u64 {
            idx.push(super::NewEntry {
                seq,
                segment: 0,
                offset: 0,
                len: 1,
                crc: 0,
                ty: &format!("t.{seq}"),
                source: "/s",
                subject: None,
                frame: None,
            });
        }
        let filter = super::Filter {
            type_prefix: Some("t.14999".into()),
            ..Default::default()
        };
        let page = idx.query(0, &filter, 100, 100_000);
        let seqs: Vec<u64> = page.hits.iter().map(|h| h.seq).collect();
        assert_eq!(
            seqs,
            vec![14_999],
            "building the type set does not use up the entry budget"
        );
    }

    #[test]
    fn a_prefix_matching_none_of_many_types_is_resolved_without_reading_them() {
        let mut idx = super::Index::new(1, 0);
        for seq in 1..=20_000u64 {
            idx.push(entry(seq, &format!("many.t{seq:06}")));
        }
        for (prefix, names) in [("many.zzz", 0), ("many.t0100", 100)] {
            let filter = super::Filter {
                type_prefix: Some(prefix.into()),
                ..Default::default()
            };
            let page = idx.scan(0, &super::Matcher::new(filter), 1000, 4096);
            assert_eq!(page.compiled, names, "type names looked at for {prefix:?}");
        }
        // A prefix matching more types than the budget falls back to the
        // log, a budget at a time, and still finds every event in order.
        let filter = super::Filter {
            type_prefix: Some("many.t00".into()),
            ..Default::default()
        };
        let m = super::Matcher::new(filter);
        let (mut after, mut seqs) = (0, Vec::new());
        for _ in 0..10_000 {
            let page = idx.scan(after, &m, 1000, 100);
            seqs.extend(page.hits.iter().map(|h| h.seq));
            after = page.scanned_to;
            if after == page.last {
                break;
            }
        }
        assert!(
            seqs.iter().copied().eq(1..=9_999),
            "{} events found, want seqs 1 to 9999",
            seqs.len()
        );
        // After retention released types, the sorted names follow.
        idx.drop_before(10_001);
        let filter = super::Filter {
            type_prefix: Some("many.t00".into()),
            ..Default::default()
        };
        assert!(idx.query(0, &filter, 1000, 4096).hits.is_empty());
        let filter = super::Filter {
            type_prefix: Some("many.t0100".into()),
            ..Default::default()
        };
        let seqs: Vec<u64> = idx
            .query(0, &filter, 1000, 100_000)
            .hits
            .iter()
            .map(|h| h.seq)
            .collect();
        assert!(
            seqs.iter().copied().eq(10_001..=10_099),
            "found {} events",
            seqs.len()
        );
    }

    /// The index file the writer encodes at seal from the entries is
    /// byte for byte the one a rebuild from the segment writes, though the
    /// index's ids count from names of earlier events, in another order,
    /// that the segment does not use.
    #[test]
    fn segment_records_encode_what_a_builder_of_the_same_events_does() {
        use crate::store::segindex::{Builder, Header, Key, NewRecord};
        let names = |seq: u64| {
            (
                format!("t.{}", (seq * 7) % 5),
                format!("/s/{}", seq % 3),
                (!seq.is_multiple_of(4)).then(|| format!("sub-{}", seq % 9)),
                format!("id-{seq}"),
            )
        };
        let mut idx = super::Index::new(1, 1 << 20);
        // An earlier segment, whose names the index interned first.
        for seq in 1..=40u64 {
            let ty = format!("old.{}", seq % 6);
            idx.push(super::NewEntry {
                subject: Some("old-subject"),
                ..from(seq, &ty, "/old")
            });
        }
        let mut builder = Builder::default();
        let mut keys = Vec::new();
        for seq in 41..=200u64 {
            let (ty, source, subject, id) = names(seq);
            let record = NewRecord {
                seq,
                offset: seq * 100 + 20,
                len: 70 + (seq % 11) as u32,
                crc: (seq * 31) as u32,
                ty: &ty,
                source: &source,
                subject: subject.as_deref(),
                id: &id,
            };
            idx.push(super::NewEntry::of(&record, 1, None));
            builder.push(record);
            keys.push(Key::of(&source, &id, seq));
        }
        keys.reverse();
        let header = Header {
            file: "00000000000000000041.jsonl".into(),
            first_seq: 41,
            last_seq: 200,
            bytes: 201 * 100,
            sha256: "cd".repeat(32),
        };
        let records = idx.segment_records(41, 200).expect("all in memory");
        assert_eq!(records.encode(&header, &mut keys), builder.encode(&header));
        assert!(idx.segment_records(41, 201).is_none(), "201 is not stored");
    }

    fn entry(seq: u64, ty: &str) -> super::NewEntry<'_> {
        from(seq, ty, "/s")
    }

    fn from<'a>(seq: u64, ty: &'a str, source: &'a str) -> super::NewEntry<'a> {
        super::NewEntry {
            seq,
            segment: 0,
            offset: 0,
            len: 1,
            crc: 0,
            ty,
            source,
            subject: None,
            frame: None,
        }
    }

    fn scope(types: &[&str], sources: &[&str]) -> Scope {
        Scope {
            type_prefixes: types.iter().map(|s| s.to_string()).collect(),
            source_prefixes: sources.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Reads with `m` from `after` to the end, in chunks of `budget`, as
    /// the store does; returns the seqs found and where the read ended.
    fn read_all(
        idx: &super::Index,
        m: &super::Matcher,
        after: u64,
        budget: usize,
    ) -> (Vec<u64>, u64) {
        let (mut after, mut seqs) = (after, Vec::new());
        for _ in 0..100_000 {
            let page = idx.scan(after, m, 1000, budget);
            seqs.extend(page.hits.iter().map(|h| h.seq));
            after = page.scanned_to;
            if after >= page.last {
                return (seqs, after);
            }
        }
        panic!(
            "the read never reached the end (at {after}, {} found)",
            seqs.len()
        );
    }

    /// Type and source names of the test log below, by seq.
    fn names(seq: u64) -> (String, String) {
        let letter = ["a", "b", "c"][(seq % 3) as usize];
        (
            format!("{letter}.{}", seq % 400),
            format!("/{letter}/{}", seq % 11),
        )
    }

    /// Events 1..=n over 1,200 types and 33 sources.
    fn many(n: u64) -> super::Index {
        let mut idx = super::Index::new(1, 0);
        for seq in 1..=n {
            let (ty, source) = names(seq);
            idx.push(from(seq, &ty, &source));
        }
        idx
    }

    #[test]
    fn a_scoped_read_sees_exactly_the_events_of_its_filter_and_scope() {
        let idx = many(6_000);
        let cases: Vec<(super::Filter, &str)> = vec![
            (
                super::Filter {
                    scope: scope(&["a.1", "c.2"], &[]),
                    ..Default::default()
                },
                "several type prefixes",
            ),
            (
                super::Filter {
                    scope: scope(&[], &["/b/1", "/c/3"]),
                    ..Default::default()
                },
                "source prefixes",
            ),
            (
                super::Filter {
                    scope: scope(&["a.", "b.3"], &["/a/", "/b/2"]),
                    ..Default::default()
                },
                "both",
            ),
            (
                super::Filter {
                    type_prefix: Some("a.".into()),
                    scope: scope(&["a.1", "b."], &[]),
                    ..Default::default()
                },
                "a type_prefix wider than one scope prefix",
            ),
            (
                super::Filter {
                    type_prefix: Some("a.12".into()),
                    scope: scope(&["a.1", "a.", "c."], &["/a/1"]),
                    ..Default::default()
                },
                "a type_prefix inside the scope",
            ),
            (
                super::Filter {
                    type_prefix: Some("b.".into()),
                    scope: scope(&["a."], &[]),
                    ..Default::default()
                },
                "a type_prefix outside the scope",
            ),
            (
                super::Filter {
                    source: Some("/a/4".into()),
                    scope: scope(&["a.1"], &["/a/"]),
                    ..Default::default()
                },
                "an exact source inside the scope",
            ),
        ];
        for (filter, what) in cases {
            let want: Vec<u64> = (1..=6_000)
                .filter(|&seq| {
                    let (ty, source) = names(seq);
                    filter.scope.allows(&ty, &source)
                        && filter
                            .type_prefix
                            .as_ref()
                            .is_none_or(|p| ty.starts_with(p.as_str()))
                        && filter.source.as_ref().is_none_or(|s| *s == source)
                })
                .collect();
            // 100 is less than the 1,200 type names: the set is built
            // over several chunks.
            for budget in [100, 4096] {
                let m = super::Matcher::new(filter.clone());
                let (seqs, end) = read_all(&idx, &m, 0, budget);
                assert_eq!(end, 6_000, "{what}: the read reaches the end");
                assert!(
                    seqs == want,
                    "{what} (budget {budget}): {} events found, want {}",
                    seqs.len(),
                    want.len()
                );
            }
        }
    }

    #[test]
    fn a_fresh_scoped_reader_looks_only_at_the_type_names_of_its_prefixes() {
        let mut idx = super::Index::new(1, 0);
        for seq in 1..=20_000u64 {
            idx.push(entry(seq, &format!("many.t{seq:06}")));
        }
        for (type_prefix, scoped, names) in [
            (None, &["many.t0100", "many.t0200", "many.t010"][..], 1_001),
            (Some("many.t010"), &["many.t0100", "many.t0200"][..], 100),
            (Some("many.t0"), &["many.t0100", "many.t0200"][..], 101),
            (Some("many.t02"), &["many.t0100"][..], 0),
        ] {
            let m = super::Matcher::new(super::Filter {
                type_prefix: type_prefix.map(String::from),
                scope: scope(scoped, &[]),
                ..Default::default()
            });
            let page = idx.scan(0, &m, 1000, 4096);
            assert_eq!(
                page.compiled, names,
                "type names looked at for {type_prefix:?} in {scoped:?}"
            );
        }
    }

    #[test]
    fn types_and_sources_interned_after_the_matcher_compiled_are_scoped_too() {
        let mut idx = many(3_000);
        let m = super::Matcher::new(super::Filter {
            scope: scope(&["new.in", "a.1"], &["/new/in", "/a/"]),
            ..Default::default()
        });
        let (before, _) = read_all(&idx, &m, 0, 100);
        assert!(!before.is_empty());
        for (seq, ty, source) in [
            (3_001, "new.in.x", "/new/in/1"),
            (3_002, "new.out", "/new/in/1"),
            (3_003, "new.in.y", "/new/out"),
            (3_004, "a.1new", "/a/new"),
            (3_005, "new.in.z", "/new/in/2"),
        ] {
            idx.push(from(seq, ty, source));
        }
        let (seqs, end) = read_all(&idx, &m, 3_000, 100);
        assert_eq!((seqs, end), (vec![3_001, 3_004, 3_005], 3_005));
    }

    #[test]
    fn an_exact_type_or_source_outside_the_scope_matches_nothing_and_the_cursor_moves_on() {
        let idx = many(3_000);
        for (filter, what) in [
            (
                super::Filter {
                    ty: Some("b.7".into()),
                    scope: scope(&["a."], &[]),
                    ..Default::default()
                },
                "type",
            ),
            (
                super::Filter {
                    source: Some("/b/7".into()),
                    scope: scope(&[], &["/a/"]),
                    ..Default::default()
                },
                "source",
            ),
            (
                super::Filter {
                    ty: Some("a.7".into()),
                    source: Some("/a/7".into()),
                    scope: scope(&["a."], &["/a/1"]),
                    ..Default::default()
                },
                "type inside, source outside",
            ),
        ] {
            let page = idx.scan(0, &super::Matcher::new(filter), 1000, 100);
            assert!(page.hits.is_empty(), "{what}: nothing is in scope");
            assert_eq!(
                page.scanned_to, 3_000,
                "{what}: the cursor moves to the end"
            );
        }
        // Out of scope, but the same names exist: a reader without the
        // scope does see them.
        let unscoped = super::Filter {
            ty: Some("b.7".into()),
            ..Default::default()
        };
        assert!(!idx.query(0, &unscoped, 10, 10_000).hits.is_empty());
        // A scoped read that sees nothing still moves on, chunk by chunk.
        let m = super::Matcher::new(super::Filter {
            scope: scope(&[], &["/nowhere"]),
            ..Default::default()
        });
        let page = idx.scan(0, &m, 1000, 100);
        assert_eq!((page.hits.len(), page.scanned_to), (0, 100));
        assert_eq!(read_all(&idx, &m, 0, 100), (vec![], 3_000));
    }

    #[test]
    fn a_source_id_reused_after_retention_is_checked_again() {
        let mut idx = super::Index::new(1, 0);
        let m = super::Matcher::new(super::Filter {
            scope: scope(&[], &["/in/"]),
            ..Default::default()
        });
        let out: Vec<String> = (1..=100).map(|n| format!("/out/{n}")).collect();
        for (seq, source) in (1..=100).zip(&out) {
            idx.push(from(seq, "t", source));
        }
        assert_eq!(read_all(&idx, &m, 0, 1000), (vec![], 100));
        // Retention releases the 100 source ids; new sources reuse them.
        idx.drop_before(101);
        let inside: Vec<String> = (101..=200).map(|n| format!("/in/{n}")).collect();
        for (seq, source) in (101..=200).zip(&inside) {
            idx.push(from(seq, "t", source));
        }
        let (seqs, _) = read_all(&idx, &m, 100, 1000);
        assert!(
            seqs.iter().copied().eq(101..=200),
            "{} of 100 in-scope events found",
            seqs.len()
        );
    }

    #[test]
    fn interner_round_trips_and_reuses_released_ids() {
        let mut i = Interner::default();
        let names: Vec<String> = (0..10_000).map(|n| format!("order-{n}")).collect();
        let ids: Vec<u32> = names.iter().map(|n| i.intern(n).0).collect();
        assert_eq!(i.len(), 10_000);
        for (n, id) in names.iter().zip(&ids) {
            assert_eq!(
                i.intern(n),
                (*id, false),
                "interning again gives the same id"
            );
            assert_eq!(i.get(n), Some(*id));
            assert_eq!(i.name(*id), n);
        }
        assert_eq!(i.get("order-10000"), None);
        assert_eq!(i.intern(""), (10_000, true));
        assert_eq!(i.name(10_000), "");
        for id in &ids[..9_000] {
            i.release(*id);
        }
        assert_eq!(i.len(), 1_001);
        assert_eq!(i.get("order-5"), None);
        assert_eq!(i.get("order-9999"), Some(ids[9_999]));
        assert_eq!(i.name(ids[9_999]), "order-9999", "compaction keeps ids");
        let (reused, new) = i.intern("order-new");
        assert!(new && reused < 9_000, "a released id is reused");
        assert_eq!(i.get("order-new"), Some(reused));
    }
}
