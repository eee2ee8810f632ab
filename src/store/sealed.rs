//! A sealed segment as readers see it: the summary of its index file in
//! memory (the heads of its type and source tables with counts, where the
//! sections are), and its records and whole tables read from the index
//! file when a read reaches them.
//!
//! This is what keeps memory flat however many events a store holds: the
//! in-memory index has one entry per event of the active segment only, and
//! a [`SealedPart`] per sealed segment, whose size is bounded by its
//! table heads ([`segindex::HeadTable`]) whatever names its events use. A
//! read over sealed segments costs a positional read of the index file's
//! blocks it needs (each block's CRC32C checked), and a
//! segment whose tables show no match is skipped without reading anything
//! (see [`PartPlan`](super::filter::PartPlan)).
//!
//! Parts are immutable and shared (`Arc`), so readers use them after
//! letting go of the index lock: a read of the index file never delays a
//! commit.
//!
//! An index file is derived data, and a damaged or missing one must not
//! make events unreadable: when a read of it fails, the part rebuilds its
//! index in memory from the segment itself (checked against the SHA-256 the
//! manifest recorded) and serves reads from that until the integrity
//! monitor has rebuilt the file and the part is replaced.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::files::SegmentFiles;
use super::segindex::{self, IndexError, Key, Name, Record, SegmentIndex, Summary, TableKind};
use super::segment;
use super::{Original, Outcome};

/// Where `(source, id)` (whose key hash is `order`) is stored in the
/// sealed segments `parts`: their key tables, newest first (retries are
/// usually recent), one block each, every match confirmed by the stored
/// event itself. Blocking (reads files). A segment that cannot be read is
/// logged and passed over: an event stored there could be stored again,
/// which the error says.
pub fn find_key(
    parts: &[Arc<SealedPart>],
    files: &SegmentFiles,
    order: u64,
    source: &str,
    id: &str,
) -> Option<Outcome> {
    for part in parts.iter().rev() {
        let found = part.seqs_with_order(files, order).and_then(|seqs| {
            for seq in seqs {
                if let Some((ty, time)) = part.confirm_key(files, seq, source, id)? {
                    return Ok(Some((seq, ty, time)));
                }
            }
            Ok(None)
        });
        match found {
            Ok(Some((seq, ty, time))) => {
                return Some(Outcome {
                    seq,
                    original: Some(Original { ty, time }),
                })
            }
            Ok(None) => {}
            Err(e) => tracing::error!(
                error = %e,
                segment_first_seq = part.first_seq(),
                "cannot look a key up in a sealed segment (its index file and the segment both fail); an event already stored there could be stored again"
            ),
        }
    }
    None
}

/// A sealed segment read through its index file.
#[derive(Debug)]
pub struct SealedPart {
    /// The index file's summary (loaded at start-up or at seal).
    pub summary: Summary,
    /// The segment's position in the index (`Entry::segment` of its events).
    pub pos: u32,
    /// The index file.
    pub path: PathBuf,
    /// The segment file (read only when the index file fails).
    pub segment_path: PathBuf,
    /// The index rebuilt from the segment after the index file failed a
    /// read.
    fallback: Mutex<Option<Arc<SegmentIndex>>>,
}

/// Why records of a sealed segment could not be read from its index file.
/// Not data loss: the segment holds the events; the integrity monitor
/// finds the damaged index file and rebuilds it.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// The positional read failed.
    #[error("read the index file {}: {source}", path.display())]
    Read {
        /// The index file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// What was read fails its check.
    #[error("the index file {} {source}", path.display())]
    Damaged {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: IndexError,
    },
}

impl PartError {
    /// The underlying I/O error, if the read itself failed.
    pub fn io(&self) -> Option<&std::io::Error> {
        match self {
            PartError::Read { source, .. } => Some(source),
            PartError::Damaged { .. } => None,
        }
    }
}

impl SealedPart {
    /// The part of the sealed segment `summary` describes, at index
    /// position `pos`, with its index file at `path` and the segment at
    /// `segment_path`.
    pub fn new(summary: Summary, pos: u32, path: PathBuf, segment_path: PathBuf) -> Self {
        SealedPart {
            summary,
            pos,
            path,
            segment_path,
            fallback: Mutex::new(None),
        }
    }

    /// First seq of the segment.
    pub fn first_seq(&self) -> u64 {
        self.summary.header.first_seq
    }

    /// Last seq of the segment.
    pub fn last_seq(&self) -> u64 {
        self.summary.header.last_seq
    }

    /// The records of seqs `from..=to` (clamped to the segment), in one
    /// positional read of the index file blocks that hold them (opened
    /// through `files`), or from the segment when the index file fails.
    pub fn records(
        &self,
        files: &SegmentFiles,
        from: u64,
        to: u64,
    ) -> Result<Vec<Record>, PartError> {
        let (from, to) = (from.max(self.first_seq()), to.min(self.last_seq()));
        if from > to {
            return Ok(Vec::new());
        }
        let range = |idx: &SegmentIndex| {
            let first = self.first_seq();
            idx.records[(from - first) as usize..=(to - first) as usize].to_vec()
        };
        if let Some(idx) = self.fallback_built() {
            return Ok(range(&idx));
        }
        match self.records_from_file(files, from, to) {
            Ok(records) => Ok(records),
            Err(e) => self.fallback(files, e).map(|idx| range(&idx)),
        }
    }

    fn records_from_file(
        &self,
        files: &SegmentFiles,
        from: u64,
        to: u64,
    ) -> Result<Vec<Record>, PartError> {
        let file = self.open(files)?;
        let (offset, len, block_first) = self.summary.block_range(from, to);
        let bytes = self.read(&file, offset, len)?;
        let records = self
            .summary
            .decode_blocks(&bytes, block_first)
            .map_err(|source| self.damaged(source))?;
        let skip = (from - block_first) as usize;
        let take = (to - from + 1) as usize;
        if records.len() < skip + take {
            return Err(self.damaged(IndexError::Truncated("records")));
        }
        Ok(records[skip..skip + take].to_vec())
    }

    /// The record of `seq`.
    pub fn record(&self, files: &SegmentFiles, seq: u64) -> Result<Record, PartError> {
        self.records(files, seq, seq)?
            .pop()
            .ok_or_else(|| self.damaged(IndexError::Truncated("records")))
    }

    /// The segment's whole table `kind`: a type or source table from
    /// memory when its head is all of it, otherwise read from the index
    /// file (subjects are often one per event, and a type or source table
    /// beyond its head is as large, so they are not kept in memory).
    pub fn table(
        &self,
        files: &SegmentFiles,
        kind: TableKind,
    ) -> Result<Cow<'_, [Name]>, PartError> {
        let head = match kind {
            TableKind::Types => Some(&self.summary.types),
            TableKind::Sources => Some(&self.summary.sources),
            TableKind::Subjects => None,
        };
        if let Some(whole) = head.and_then(|h| h.whole()) {
            return Ok(Cow::Borrowed(whole));
        }
        let of = |idx: &SegmentIndex| match kind {
            TableKind::Types => idx.types.clone(),
            TableKind::Sources => idx.sources.clone(),
            TableKind::Subjects => idx.subjects.clone(),
        };
        if let Some(idx) = self.fallback_built() {
            return Ok(Cow::Owned(of(&idx)));
        }
        let read = || {
            let Some((at, len)) = self.summary.table_range(kind) else {
                // A version 2 file's type and source tables are whole in
                // its header, and were answered from memory above.
                let why = "its header lists only part of a table it has no section for";
                return Err(self.damaged(IndexError::Invalid(why.into())));
            };
            let bytes = self.read(&*self.open(files)?, at, len)?;
            self.summary
                .decode_table(kind, &bytes)
                .map_err(|source| self.damaged(source))
        };
        match read() {
            Ok(table) => Ok(Cow::Owned(table)),
            Err(e) => self.fallback(files, e).map(|idx| Cow::Owned(of(&idx))),
        }
    }

    fn open(&self, files: &SegmentFiles) -> Result<Arc<File>, PartError> {
        files
            .get_index(self.first_seq(), &self.path)
            .map_err(|source| PartError::Read {
                path: self.path.clone(),
                source,
            })
    }

    fn fallback_built(&self) -> Option<Arc<SegmentIndex>> {
        super::lock(&self.fallback).clone()
    }

    /// After the index file failed with `failed`: the index rebuilt from
    /// the segment (once), or `failed` when that fails too. Out of
    /// descriptors is not damage: nothing is rebuilt, the read fails (503).
    fn fallback(
        &self,
        files: &SegmentFiles,
        failed: PartError,
    ) -> Result<Arc<SegmentIndex>, PartError> {
        if failed
            .io()
            .is_some_and(super::fsutil::is_descriptor_exhaustion)
        {
            return Err(failed);
        }
        let mut slot = super::lock(&self.fallback);
        if let Some(idx) = slot.clone() {
            return Ok(idx);
        }
        match self.index_from_segment(files) {
            Ok(idx) => {
                tracing::warn!(error = %failed, segment = %self.segment_path.display(), "a segment's index file failed a read; serving its events from the segment until the file is rebuilt");
                let idx = Arc::new(idx);
                *slot = Some(idx.clone());
                Ok(idx)
            }
            Err(why) => {
                tracing::error!(error = %failed, segment_error = %why, "a segment's index file failed a read, and the segment cannot stand in for it");
                Err(failed)
            }
        }
    }

    /// Reads the segment, checks it against the SHA-256 and length this
    /// part's header carries (the manifest's), and scans it.
    fn index_from_segment(&self, files: &SegmentFiles) -> Result<SegmentIndex, PartError> {
        let h = &self.summary.header;
        let read_err = |source: std::io::Error| PartError::Read {
            path: self.segment_path.clone(),
            source,
        };
        let bad = |what: String| PartError::Damaged {
            path: self.segment_path.clone(),
            source: IndexError::Invalid(what),
        };
        let file = files
            .get(h.first_seq, &self.segment_path)
            .map_err(read_err)?;
        let mut bytes = vec![0u8; h.bytes as usize];
        file.read_exact_at(&mut bytes, 0).map_err(read_err)?;
        if hex::encode(Sha256::digest(&bytes)) != h.sha256 {
            return Err(bad("its bytes do not match the manifest's SHA-256".into()));
        }
        let mut builder = segindex::Builder::default();
        let scan = segment::scan_with(&bytes, h.first_seq, |r| {
            builder.push(segindex::record_of(&r));
        });
        if let Some(d) = scan.damage {
            return Err(bad(format!(
                "a bad record at offset {}: {}",
                d.offset, d.problem
            )));
        }
        let idx = builder.into_index(h.clone());
        if idx.records.len() as u64 != self.summary.count() {
            return Err(bad(format!(
                "{} records, the index says {}",
                idx.records.len(),
                self.summary.count()
            )));
        }
        Ok(idx)
    }

    /// The seqs of this segment whose key hash is `order` (almost always
    /// none or one), from the key blocks that may hold it (one or two,
    /// found by the fences in memory).
    pub fn seqs_with_order(&self, files: &SegmentFiles, order: u64) -> Result<Vec<u64>, PartError> {
        let matching = |keys: &[Key]| {
            keys.iter()
                .filter(|k| k.order == order)
                .map(|k| k.seq)
                .collect()
        };
        if let Some(idx) = self.fallback_built() {
            return Ok(matching(&idx.keys));
        }
        let Some((offset, len, first)) = self.summary.key_range(order) else {
            return Ok(Vec::new());
        };
        let read = || {
            let file = self.open(files)?;
            let bytes = self.read(&file, offset, len)?;
            self.summary
                .decode_keys(&bytes, first)
                .map_err(|source| self.damaged(source))
        };
        match read() {
            Ok(keys) => Ok(matching(&keys)),
            Err(e) => self.fallback(files, e).map(|idx| matching(&idx.keys)),
        }
    }

    /// Every key hash of the segment (for the sealed segments' key filter).
    pub fn key_orders(&self, files: &SegmentFiles) -> Result<Vec<u64>, PartError> {
        let s = &self.summary;
        let read = || {
            let file = self.open(files)?;
            let bytes = self.read(&file, s.keys_offset, (s.file_len - s.keys_offset) as usize)?;
            s.decode_keys(&bytes, 0)
                .map_err(|source| self.damaged(source))
        };
        let keys = match read() {
            Ok(keys) => keys,
            Err(e) => self.fallback(files, e)?.keys.clone(),
        };
        Ok(keys.iter().map(|k| k.order).collect())
    }

    /// The stored event `seq` if its `(source, id)` is the one given: its
    /// `type` and `time` (what a duplicate is answered with). Reads the
    /// event from the segment and checks its CRC32C.
    pub fn confirm_key(
        &self,
        files: &SegmentFiles,
        seq: u64,
        source: &str,
        id: &str,
    ) -> Result<Option<(String, String)>, PartError> {
        let r = self.record(files, seq)?;
        let keys = self.event_keys(files, seq, &r)?;
        Ok((keys.source == source && keys.id == id).then_some((keys.ty, keys.time)))
    }

    /// The keys of the event of `seq` (whose record is `r`), read from the
    /// segment and checked against the record's CRC32C.
    fn event_keys(
        &self,
        files: &SegmentFiles,
        seq: u64,
        r: &Record,
    ) -> Result<segment::EventKeys, PartError> {
        let seg_err = |e: std::io::Error| PartError::Read {
            path: self.segment_path.clone(),
            source: e,
        };
        let file = files
            .get(self.first_seq(), &self.segment_path)
            .map_err(seg_err)?;
        let mut bytes = vec![0u8; r.len as usize];
        file.read_exact_at(&mut bytes, r.offset).map_err(seg_err)?;
        let bad = |what: String| PartError::Damaged {
            path: self.segment_path.clone(),
            source: IndexError::Invalid(what),
        };
        if crc32c::crc32c(&bytes) != r.crc {
            return Err(bad(format!("the event of seq {seq} fails its CRC32C")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the event of seq {seq} does not parse: {e}")))
    }

    /// The type and source of the event `seq`: from the tables in memory
    /// when they are whole, else from the event itself (one small read,
    /// not a table that may be as large as the segment's events).
    pub fn names(&self, files: &SegmentFiles, seq: u64) -> Result<(String, String), PartError> {
        let r = self.record(files, seq)?;
        let name = |t: Option<&[Name]>, id: u32| {
            t.and_then(|t| t.get(id as usize)).map(|n| n.name.clone())
        };
        match (
            name(self.summary.types.whole(), r.ty),
            name(self.summary.sources.whole(), r.source),
        ) {
            (Some(ty), Some(source)) => Ok((ty, source)),
            _ => {
                let keys = self.event_keys(files, seq, &r)?;
                Ok((keys.ty, keys.source))
            }
        }
    }

    fn read(&self, file: &File, offset: u64, len: usize) -> Result<Vec<u8>, PartError> {
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|source| PartError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(bytes)
    }

    fn damaged(&self, source: IndexError) -> PartError {
        PartError::Damaged {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes this part holds in memory, approximately.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.summary.types.heap_bytes()
            + self.summary.sources.heap_bytes()
            + self.summary.header.file.len()
            + self.path.as_os_str().len()
    }
}
