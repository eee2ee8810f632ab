//! Startup recovery: take the lock, clear temp files, load (or rebuild) the
//! manifest, load each sealed segment's index file (without reading the
//! segment; a missing or damaged index file is rebuilt from its segment),
//! scan the active segment record by record, cut away a torn tail (after
//! copying it to `quarantine/`), and rebuild the index and the idempotency
//! set. The SHA-256 of sealed segments is checked by the integrity monitor
//! after the start, not here: start-up costs the index files, not the log.
//!
//! Damage that is followed by valid records is never truncated: recovery
//! stops with a report naming the file, the offset and what follows.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::active_copy::ActiveCopy;
use super::backup;
use super::dedup::DedupIndex;
use super::error::{Result, StoreError};
use super::fsutil;
use super::index::{Index, NewEntry, SegmentReader};
use super::keyfilter::{self, Covered, KeyFilter};
use super::layout::{self, MANIFEST, QUARANTINE_DIR};
use super::lock::DirLock;
use super::manifest::{DurablePrefix, Manifest, SealedSegment};
use super::sealed::SealedPart;
use super::segindex::{self, SegmentIndex};
use super::segment;
use std::sync::Arc;

pub mod active;

/// What recovery found and did: counts for the start-up log and `/stats`,
/// and every cut and repair, raised as alerts once the store is open.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Sealed segments indexed.
    pub sealed_segments: usize,
    /// Events recovered.
    pub events: u64,
    /// A torn tail that was cut away, if any.
    pub torn_tail: Option<TornTail>,
    /// Every cut and repair, to be raised as alerts once the store is open.
    pub notes: Vec<RecoveryNote>,
}

/// A cut or repair made at start-up, raised as an alert (`/alerts`, the
/// log and the webhook) once the store is open.
#[derive(Debug, Clone)]
pub struct RecoveryNote {
    /// Alert kind: `torn_tail` or `repair`.
    pub kind: &'static str,
    /// The file, relative to the data directory.
    pub file: String,
    /// What was found and done, without absolute paths.
    pub detail: String,
}

/// A torn last record cut away at startup.
#[derive(Debug, Clone)]
pub struct TornTail {
    /// Segment file.
    pub file: String,
    /// Offset where the valid prefix ends.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Where the removed bytes were copied.
    pub quarantined_to: String,
}

/// The active segment as the writer takes it over.
#[derive(Debug)]
pub struct ActiveSegment {
    /// Read-write handle.
    pub file: File,
    /// Path.
    pub path: PathBuf,
    /// First sequence number.
    pub first_seq: u64,
    /// Durable length.
    pub len: u64,
    /// Records in it.
    pub count: u64,
    /// Its position in the index's segment list.
    pub index_pos: u32,
    /// The writer's own copy of the durable bytes, to rewrite the file from
    /// if it is damaged, truncated or deleted.
    pub copy: ActiveCopy,
    /// CRC32C of the durable bytes, which the integrity monitor compares the file with.
    pub crc: u32,
    /// Its events' idempotency keys, for its index file's key table and
    /// the key filter when it is sealed (see [`segindex`]). The file's
    /// records and name tables come from the index's entries then
    /// ([`Index::segment_records`]).
    pub keys: Vec<segindex::Key>,
}

/// Everything the writer needs to take over an opened store.
#[derive(Debug)]
pub struct Recovered {
    /// The held directory lock.
    pub lock: DirLock,
    /// The manifest as now on disk.
    pub manifest: Manifest,
    /// The active segment.
    pub active: ActiveSegment,
    /// Running SHA-256 of the active segment's bytes, finalized when the
    /// writer seals it.
    pub active_sha256: Sha256,
    /// The rebuilt index.
    pub index: Index,
    /// The idempotency set of the active segment.
    pub dedup: DedupIndex,
    /// The filter of the sealed segments' idempotency keys.
    pub sealed_keys: KeyFilter,
    /// The sealed segments whose keys it holds.
    pub covered: Vec<Covered>,
    /// Next sequence number to assign.
    pub next_seq: u64,
    /// What was found and done.
    pub report: RecoveryReport,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(context, e)
}

/// For `map_err`: `op` on `path` failed (see [`StoreError::file`]).
fn file_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::file(op, path, e)
}

/// Opens (creating if needed) the store in `data_dir` and recovers it, in
/// this order: take the lock, clear temp files, load or rebuild the
/// manifest, settle segment files it does not list (and remove index
/// files of segments that are not sealed), index the sealed segments from
/// their index files, judge and index the active segment, record its
/// durable floor.
pub fn open(
    data_dir: &Path,
    recent_cache_bytes: usize,
    key_filter_headroom: u64,
) -> Result<Recovered> {
    let lock = lock_and_create_dirs(data_dir)?;
    remove_temp_files(data_dir)?;
    let mut report = RecoveryReport::default();
    let seg_dir = layout::segments_dir(data_dir);
    let files = segment::list(&seg_dir).map_err(file_err("list", &seg_dir))?;
    let mut manifest = load_or_rebuild_manifest(data_dir, &files, &mut report)?;
    settle_unlisted_segments(&seg_dir, &files, &manifest)?;
    remove_stale_index_files(&seg_dir, &manifest)?;
    let Indexed {
        mut index,
        sealed_keys,
        covered,
        next_seq: active_first_seq,
    } = index_sealed_segments(
        data_dir,
        &manifest,
        recent_cache_bytes,
        key_filter_headroom,
        &mut report,
    )?;
    let mut dedup = DedupIndex::default();
    let (active, active_sha256) = index_active_segment(
        data_dir,
        active_first_seq,
        &manifest,
        &mut index,
        &mut dedup,
        &mut report,
    )?;
    let next_seq = active_first_seq + active.count;
    report.events = index.len() as u64;
    record_durable_floor(data_dir, &mut manifest, active.len, next_seq - 1)?;
    Ok(Recovered {
        lock,
        manifest,
        active,
        active_sha256,
        index,
        dedup,
        sealed_keys,
        covered,
        next_seq,
        report,
    })
}

/// Step 1: creates the data directory if needed, takes its lock, and
/// creates `segments/` and `quarantine/`.
fn lock_and_create_dirs(data_dir: &Path) -> Result<DirLock> {
    fsutil::create_dir_durable(data_dir).map_err(file_err("create", data_dir))?;
    let lock = DirLock::acquire(data_dir)?;
    for d in [
        &layout::segments_dir(data_dir),
        &layout::quarantine_dir(data_dir),
    ] {
        fsutil::create_dir_durable(d).map_err(file_err("create", d))?;
    }
    Ok(lock)
}

/// Step 2: removes temp files a crash left in the data directory and in
/// `segments/` (a replacement that never reached its rename).
fn remove_temp_files(data_dir: &Path) -> Result<()> {
    for d in [data_dir.to_path_buf(), layout::segments_dir(data_dir)] {
        let removed = fsutil::remove_stale_temp_files(&d)
            .map_err(io(format!("clean temp files in {}", d.display())))?;
        if removed > 0 {
            tracing::info!(dir = %d.display(), removed, "removed temp files left by a crash");
        }
    }
    Ok(())
}

/// Step 3: the manifest as on disk; a missing one is rebuilt from the
/// segment files (or created, for a new store), and a damaged one is
/// moved to `quarantine/` first.
fn load_or_rebuild_manifest(
    data_dir: &Path,
    files: &[segment::SegmentFile],
    report: &mut RecoveryReport,
) -> Result<Manifest> {
    let loaded = match Manifest::load(data_dir) {
        Ok(m) => m,
        Err(why) => {
            // A damaged manifest is rebuilt from the segments, like a missing
            // one, after its bytes are moved aside.
            let path = layout::manifest_path(data_dir);
            let bytes = std::fs::read(&path).unwrap_or_default();
            let q = fsutil::quarantine(data_dir, &path, 0, &bytes)?;
            std::fs::remove_file(&path).map_err(file_err("remove", &path))?;
            tracing::warn!(problem = %why, quarantined_to = %q.display(), "damaged manifest moved aside; rebuilding it");
            report.notes.push(RecoveryNote {
                kind: "repair",
                file: MANIFEST.into(),
                detail: format!(
                    "{MANIFEST} was damaged; moved to {QUARANTINE_DIR}/ and rebuilt from the segments",
                ),
            });
            None
        }
    };
    let seg_dir = layout::segments_dir(data_dir);
    Ok(match loaded {
        Some(m) => m,
        None if files.is_empty() => {
            let m = Manifest::empty();
            create_segment_file(&seg_dir, m.active_first_seq)?;
            store_manifest(&m, data_dir)?;
            m
        }
        None => {
            tracing::warn!("manifest missing; rebuilding it from the segment files");
            let m = rebuild_manifest(files)?;
            store_manifest(&m, data_dir)?;
            m
        }
    })
}

/// Step 4: segment files the manifest does not list. An empty one past
/// the active segment is a crash between creating a segment and naming
/// it, and one before the first listed segment is a retention pass that
/// stopped before removing it: both are removed. Anything else is damage
/// we will not guess about.
fn settle_unlisted_segments(
    seg_dir: &Path,
    files: &[segment::SegmentFile],
    manifest: &Manifest,
) -> Result<()> {
    for f in files {
        let name = f
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let known = f.first_seq == manifest.active_first_seq
            || manifest.sealed.iter().any(|s| s.file == name);
        if known {
            continue;
        }
        let len = std::fs::metadata(&f.path)
            .map_err(file_err("stat", &f.path))?
            .len();
        if f.first_seq > manifest.active_first_seq && len == 0 {
            std::fs::remove_file(&f.path).map_err(file_err("remove", &f.path))?;
            fsutil::fsync_dir(seg_dir).map_err(file_err("fsync", seg_dir))?;
            tracing::info!(file = %f.path.display(), "removed an empty segment file left by a crash during a roll");
        } else if super::retention::is_leftover(manifest, f.first_seq) {
            // Retention took it out of the manifest, then stopped before
            // removing the file: finish the deletion.
            std::fs::remove_file(&f.path).map_err(file_err("remove", &f.path))?;
            fsutil::fsync_dir(seg_dir).map_err(file_err("fsync", seg_dir))?;
            tracing::info!(file = %f.path.display(), "removed a segment left by an interrupted retention pass");
        } else {
            return Err(StoreError::Corrupt(format!(
                "{} ({len} bytes) is not listed in {MANIFEST}; move it aside or restore a backup",
                f.path.display(),
            )));
        }
    }
    Ok(())
}

/// Step 4b: index files of segments the manifest does not list as sealed:
/// left by retention, or written by a seal that stopped before the
/// manifest named the segment (the next seal writes it again). Removed.
fn remove_stale_index_files(seg_dir: &Path, manifest: &Manifest) -> Result<()> {
    let entries = std::fs::read_dir(seg_dir).map_err(file_err("list", seg_dir))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(file_err("list", seg_dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(segment) = layout::segment_of_index_name(&name) else {
            continue;
        };
        if manifest.sealed.iter().any(|s| s.file == segment) {
            continue;
        }
        let path = entry.path();
        std::fs::remove_file(&path).map_err(file_err("remove", &path))?;
        tracing::info!(file = %path.display(), "removed the index file of a segment that is not sealed");
        removed += 1;
    }
    if removed > 0 {
        fsutil::fsync_dir(seg_dir).map_err(file_err("fsync", seg_dir))?;
    }
    Ok(())
}

/// The index and idempotency set built so far, and the next seq.
struct Indexed {
    index: Index,
    sealed_keys: KeyFilter,
    covered: Vec<Covered>,
    next_seq: u64,
}

/// Step 5: indexes every sealed segment from its index file, without
/// reading the segment: the segment must exist with the manifest's length,
/// and its index file must decode, pass its checksum and match the
/// manifest's entry (name, seqs, length, SHA-256). The SHA-256 of the
/// segment's bytes is checked by the integrity monitor soon after the
/// start (its first check hashes every sealed segment), not here.
///
/// A segment of the wrong length or missing is checked and restored from a
/// verified backup as before; a missing or damaged index file is rebuilt
/// from its segment (read, checked against the manifest's SHA-256,
/// scanned) and written back, with a note.
fn index_sealed_segments(
    data_dir: &Path,
    manifest: &Manifest,
    recent_cache_bytes: usize,
    key_filter_headroom: u64,
    report: &mut RecoveryReport,
) -> Result<Indexed> {
    let first_seq = manifest
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(manifest.active_first_seq);
    let mut index = Index::new(first_seq, recent_cache_bytes);
    // The saved key filter, when there is one: the key tables of the
    // segments it holds are not read.
    let (mut sealed_keys, saved) = match keyfilter::load(data_dir) {
        Some((filter, covered)) => (filter, covered),
        None => {
            let sealed_events: u64 = manifest.sealed.iter().map(|s| s.count).sum();
            (
                KeyFilter::with_capacity(keyfilter::capacity_for(
                    sealed_events,
                    key_filter_headroom,
                )),
                Vec::new(),
            )
        }
    };
    let saved: std::collections::HashSet<Covered> = saved.into_iter().collect();
    let mut covered = Vec::with_capacity(manifest.sealed.len());
    let mut expect = first_seq;

    for sealed in &manifest.sealed {
        let path = layout::segment_path(data_dir, &sealed.file);
        if sealed.first_seq != expect {
            return Err(StoreError::Corrupt(format!(
                "sealed segment {} starts at seq {}, expected {expect}",
                path.display(),
                sealed.first_seq
            )));
        }
        let length_ok = match std::fs::metadata(&path) {
            Ok(md) => md.len() == sealed.bytes,
            Err(e) if fsutil::is_descriptor_exhaustion(&e) => {
                return Err(StoreError::file("stat", &path, e))
            }
            Err(_) => false,
        };
        // The index file's summary and keys only: its records stay on
        // disk, read when a reader reaches them.
        let in_filter = saved.contains(&Covered::of(sealed.first_seq, &sealed.sha256));
        let loaded = segindex::load_summary(data_dir, sealed).and_then(|summary| {
            let keys = match in_filter {
                true => Vec::new(),
                false => segindex::load_keys(data_dir, &summary)?,
            };
            Ok((keys, summary))
        });
        let loaded = match loaded {
            // Out of descriptors: not damage; the start fails and is retried.
            Err(segindex::LoadError::Unreadable(e)) if fsutil::is_descriptor_exhaustion(&e) => {
                let idx = layout::segment_index_path(data_dir, &sealed.file);
                return Err(StoreError::file("read", &idx, e));
            }
            other => other,
        };
        let (keys, summary) = match loaded {
            Ok(loaded) if length_ok => loaded,
            loaded => {
                let index_problem = loaded.err();
                let seg_index = index_from_segment(data_dir, &path, sealed, expect, report)?;
                let bytes = segindex::encode(&seg_index);
                if let Some(why) = index_problem {
                    rebuilt_index_note(data_dir, sealed, &bytes, &why, report);
                }
                let summary = segindex::decode_summary(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "the index rebuilt from {} does not decode: {e}",
                        path.display()
                    ))
                })?;
                let keys = match in_filter {
                    true => Vec::new(),
                    false => seg_index.keys,
                };
                (keys, summary)
            }
        };
        let pos = index.add_segment(reader(&path, sealed.first_seq, sealed.bytes)?);
        for k in &keys {
            sealed_keys.insert(k.order);
        }
        covered.push(Covered::of(sealed.first_seq, &sealed.sha256));
        index.add_sealed(Arc::new(SealedPart::new(
            summary,
            pos,
            layout::segment_index_path(data_dir, &sealed.file),
            path,
        )));
        expect = sealed.last_seq + 1;
        report.sealed_segments += 1;
    }

    if manifest.active_first_seq != expect {
        return Err(StoreError::Corrupt(format!(
            "manifest says the active segment starts at seq {}, but the sealed segments end at {}",
            manifest.active_first_seq,
            expect - 1
        )));
    }
    Ok(Indexed {
        index,
        sealed_keys,
        covered,
        next_seq: expect,
    })
}

/// The old way of indexing a sealed segment, for a segment or index file
/// that fails its check: reads the segment, checks it against the manifest
/// (restoring a damaged one from a verified backup) and scans its records.
fn index_from_segment(
    data_dir: &Path,
    path: &Path,
    sealed: &SealedSegment,
    expect: u64,
    report: &mut RecoveryReport,
) -> Result<SegmentIndex> {
    let checked = std::fs::read(path)
        .map_err(|e| {
            if fsutil::is_descriptor_exhaustion(&e) {
                return StoreError::file("read", path, e);
            }
            StoreError::Corrupt(format!(
                "sealed segment {} cannot be read: {e}",
                path.display()
            ))
        })
        .and_then(|bytes| check_sealed(path, sealed, &bytes, expect).map(|()| bytes));
    // The same repair the running writer does: a verified backup copy
    // whose SHA-256 matches the manifest replaces the damaged file.
    let bytes = match checked {
        Ok(bytes) => bytes,
        Err(e @ StoreError::TooManyOpenFiles { .. }) => return Err(e),
        Err(damage) => {
            let bytes = restore_sealed_from_backup(data_dir, sealed, &damage)?;
            report.notes.push(RecoveryNote {
                kind: "repair",
                file: layout::segment_rel_of(path),
                detail: format!(
                    "sealed segment {} failed its check and was restored from a verified backup",
                    layout::segment_rel_of(path)
                ),
            });
            bytes
        }
    };
    build_index(path, sealed, &bytes)
}

/// Scans a sealed segment's bytes (already checked against the manifest)
/// into its index.
pub fn build_index(path: &Path, sealed: &SealedSegment, bytes: &[u8]) -> Result<SegmentIndex> {
    let mut builder = segindex::Builder::default();
    let scan = segment::scan_with(bytes, sealed.first_seq, |r| {
        builder.push(segindex::record_of(&r));
    });
    if let Some(d) = &scan.damage {
        return Err(StoreError::Corrupt(format!(
            "sealed segment {} has a bad record at offset {}: {}",
            path.display(),
            d.offset,
            d.problem
        )));
    }
    if builder.len() as u64 != sealed.count {
        return Err(StoreError::Corrupt(format!(
            "sealed segment {} holds {} records, the manifest says {}",
            path.display(),
            builder.len(),
            sealed.count
        )));
    }
    Ok(builder.into_index(segindex::Header::of(sealed)))
}

/// Writes back an index file rebuilt from its segment and notes it (an
/// alert once the store is open). A failed write is logged and not fatal:
/// the next start, or the integrity monitor, rebuilds it again.
fn rebuilt_index_note(
    data_dir: &Path,
    sealed: &SealedSegment,
    bytes: &[u8],
    why: &segindex::LoadError,
    report: &mut RecoveryReport,
) {
    let rel = layout::segment_index_rel(&sealed.file);
    if let Err(e) = segindex::store(data_dir, &sealed.file, bytes) {
        tracing::warn!(error = %e, file = %rel, "cannot write a rebuilt segment index; the next start rebuilds it again");
    }
    let what = match why {
        segindex::LoadError::Missing => "was missing".to_string(),
        other => format!("was damaged ({other})"),
    };
    let detail = format!(
        "index of segment {} {what} and was rebuilt from the segment",
        layout::segment_rel(&sealed.file)
    );
    tracing::warn!(file = %rel, "{detail}");
    report.notes.push(RecoveryNote {
        kind: "repair",
        file: rel,
        detail,
    });
}

/// Step 6: judges the active segment (cutting a torn tail, repairing it
/// from a backup, or refusing), indexes its records, and opens it for the
/// writer with the running SHA-256 of its bytes.
fn index_active_segment(
    data_dir: &Path,
    first_seq: u64,
    manifest: &Manifest,
    index: &mut Index,
    dedup: &mut DedupIndex,
    report: &mut RecoveryReport,
) -> Result<(ActiveSegment, Sha256)> {
    let path = layout::segment_path(data_dir, &segment::file_name(first_seq));
    let (bytes, frames) = recover_active(data_dir, &path, first_seq, manifest, report)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(file_err("open", &path))?;
    let pos = index.add_segment(reader(&path, first_seq, bytes.len() as u64)?);
    // One record's attributes at a time: holding them all (a few hundred
    // bytes of strings each) for a full 64 MiB segment was ~60 MB of peak
    // memory at start-up.
    let mut key_table = Vec::with_capacity(key_capacity(manifest, frames.len()));
    for (seq, &(offset, framed)) in (first_seq..).zip(&frames) {
        let line = &bytes[offset as usize..][..framed.line_len as usize];
        let keys = segment::decode_keys(framed.event_of(line)).map_err(|p| {
            // The frame's CRC matched, so the writer stored these bytes:
            // only a writer that stored an invalid event could get here.
            StoreError::Corrupt(format!(
                "active segment {}: record seq {seq} at offset {offset}: {p}",
                path.display()
            ))
        })?;
        let r = segment::ScannedRecord {
            seq,
            offset,
            framed,
            keys,
        };
        add_record(index, dedup, pos, &r);
        key_table.push(segindex::Key::of(&r.keys.source, &r.keys.id, seq));
    }
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    let active = ActiveSegment {
        file,
        path,
        first_seq,
        len: bytes.len() as u64,
        count: frames.len() as u64,
        index_pos: pos,
        crc: crc32c::crc32c(&bytes),
        copy: ActiveCopy::new(data_dir, bytes),
        keys: key_table,
    };
    Ok((active, hasher))
}

/// Room for the keys of an active segment that holds `held` events: as
/// many as the last sealed segment held and a sixteenth more (so the
/// vector is not doubled, and copied, on the writer's thread before the
/// segment fills), or `held` if more.
pub fn key_capacity(manifest: &Manifest, held: usize) -> usize {
    let last = manifest.sealed.last().map_or(0, |s| s.count as usize);
    held.max(last + last / 16)
}

/// Step 7: what is durable now is the floor the next start checks against.
fn record_durable_floor(
    data_dir: &Path,
    manifest: &mut Manifest,
    bytes: u64,
    last_seq: u64,
) -> Result<()> {
    let floor = DurablePrefix { bytes, last_seq };
    if manifest.active_durable != Some(floor) {
        manifest.active_durable = Some(floor);
        store_manifest(manifest, data_dir)?;
    }
    Ok(())
}

/// Reads, judges and, if need be, repairs the active segment (see
/// [`active`]); returns its bytes, a torn tail cut away, and each valid
/// record's offset and framing.
fn recover_active(
    data_dir: &Path,
    path: &Path,
    first_seq: u64,
    manifest: &Manifest,
    report: &mut RecoveryReport,
) -> Result<(Vec<u8>, segment::Frames)> {
    let rel = layout::segment_rel_of(path);
    let file_name = segment::file_name(first_seq);
    let (live, missing) = match std::fs::read(path) {
        Ok(b) => (b, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), true),
        Err(e) => return Err(StoreError::file("read", path, e)),
    };
    let plan = active::plan(data_dir, &file_name, &live, first_seq, manifest);
    let (mut bytes, frames, verdict) = match plan.repair {
        Some(c) => {
            let what = if missing {
                format!("{rel} was missing")
            } else {
                plan.verdict.describe(&rel)
            };
            if !live.is_empty() {
                fsutil::quarantine(data_dir, path, 0, &live)?;
            }
            fsutil::write_atomic(path, &c.bytes).map_err(file_err("rewrite", path))?;
            let had = first_seq + plan.scan.count;
            let has = first_seq + c.scan.count;
            let detail = format!(
                "{what}; repaired from backup {}: the segment now holds seq {first_seq}..={}{}",
                c.backup,
                has - 1,
                if has > had {
                    format!(" (seq {had}..={} came back from the backup)", has - 1)
                } else {
                    String::new()
                }
            );
            tracing::warn!(file = %path.display(), backup = %c.backup, "{detail}");
            report.notes.push(RecoveryNote {
                kind: "repair",
                file: rel.clone(),
                detail,
            });
            (c.bytes, c.frames, c.verdict)
        }
        // A missing file is only taken as empty when the manifest says it
        // was empty.
        None if missing && manifest.active_durable.is_none_or(|d| d.bytes > 0) => {
            return Err(StoreError::Corrupt(format!(
                "active segment {} is missing and no verified backup of this store holds it: restore one with `msgbus restore`",
                path.display()
            )));
        }
        None => (live, plan.frames, plan.verdict),
    };
    match verdict {
        active::Verdict::Whole => {}
        active::Verdict::TornTail { valid_len } => {
            let tail = &bytes[valid_len as usize..];
            let quarantined = fsutil::quarantine(data_dir, path, valid_len, tail)?;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(file_err("open", path))?;
            f.set_len(valid_len).map_err(file_err("truncate", path))?;
            f.sync_all().map_err(file_err("fsync", path))?;
            let detail = format!(
                "cut {} bytes of an incomplete final record at offset {valid_len} (a crash mid-append; never acknowledged), moved to {QUARANTINE_DIR}/{}",
                tail.len(),
                quarantined.file_name().unwrap_or_default().to_string_lossy()
            );
            tracing::warn!(
                file = %path.display(),
                offset = valid_len,
                bytes = tail.len(),
                quarantined_to = %quarantined.display(),
                "torn tail cut away"
            );
            report.torn_tail = Some(TornTail {
                file: path.display().to_string(),
                offset: valid_len,
                bytes: tail.len() as u64,
                quarantined_to: quarantined.display().to_string(),
            });
            report.notes.push(RecoveryNote {
                kind: "torn_tail",
                file: rel,
                detail,
            });
            bytes.truncate(valid_len as usize);
        }
        refused @ (active::Verdict::Truncated { .. } | active::Verdict::Damaged { .. }) => {
            return Err(StoreError::Corrupt(format!(
                "{}; no verified backup of this store holds the missing or damaged records. \
                 Refusing to start rather than drop or renumber acknowledged events: \
                 restore a backup with `msgbus restore`, or move the file aside yourself",
                refused.describe(&path.display().to_string()),
            )));
        }
    }
    Ok((bytes, frames))
}

fn store_manifest(m: &Manifest, data_dir: &Path) -> Result<()> {
    m.store(data_dir).map_err(io(format!(
        "write {}",
        layout::manifest_path(data_dir).display()
    )))
}

/// Creates an empty segment file and makes its directory entry durable.
pub fn create_segment_file(seg_dir: &Path, first_seq: u64) -> Result<(File, PathBuf)> {
    let path = seg_dir.join(segment::file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(file_err("create", &path))?;
    fsutil::fsync_dir(seg_dir).map_err(file_err("fsync", seg_dir))?;
    Ok((file, path))
}

/// The segment as readers see it; they open it on demand (see
/// [`super::index::SegmentFiles`]), so no descriptor is held per segment.
pub fn reader(path: &Path, first_seq: u64, bytes: u64) -> Result<SegmentReader> {
    Ok(SegmentReader {
        first_seq,
        path: path.to_path_buf(),
        bytes,
    })
}

fn check_sealed(path: &Path, s: &SealedSegment, bytes: &[u8], expect: u64) -> Result<()> {
    if s.first_seq != expect {
        return Err(StoreError::Corrupt(format!(
            "sealed segment {} starts at seq {}, expected {expect}",
            path.display(),
            s.first_seq
        )));
    }
    s.check_bytes(bytes).map_err(|mismatch| {
        StoreError::Corrupt(format!("sealed segment {} {mismatch}", path.display()))
    })
}

fn add_record(index: &mut Index, dedup: &mut DedupIndex, pos: u32, r: &segment::ScannedRecord) {
    index.push(NewEntry::of(&segindex::record_of(r), pos, None));
    // Stored events are unique by construction, so a hash hit during
    // recovery can only be a hash collision: keep both exactly.
    dedup.insert(&r.keys.source, &r.keys.id, &r.keys.time, r.seq);
}

/// Rebuilds a manifest from the segment files alone: every file but the
/// last is sealed (and must scan clean); the last is active.
fn rebuild_manifest(files: &[segment::SegmentFile]) -> Result<Manifest> {
    let mut m = Manifest::empty();
    let Some((last, sealed)) = files.split_last() else {
        return Ok(m);
    };
    let mut expect = files[0].first_seq;
    for f in sealed {
        let bytes = std::fs::read(&f.path).map_err(file_err("read", &f.path))?;
        let scan = segment::scan(&bytes, expect);
        if let Some(d) = scan.damage {
            return Err(StoreError::Corrupt(format!(
                "rebuilding the manifest: {} has a bad record at offset {}: {}",
                f.path.display(),
                d.offset,
                d.problem
            )));
        }
        if f.first_seq != expect || scan.records.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "rebuilding the manifest: {} does not continue the sequence at {expect}",
                f.path.display()
            )));
        }
        let count = scan.records.len() as u64;
        m.sealed.push(SealedSegment {
            file: f
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string(),
            first_seq: expect,
            last_seq: expect + count - 1,
            count,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
        expect += count;
    }
    m.active_first_seq = last.first_seq;
    Ok(m)
}

/// Restores a damaged or missing sealed segment at startup (see
/// [`backup::restore_sealed`], which the running writer's repair uses too).
fn restore_sealed_from_backup(
    data_dir: &Path,
    sealed: &SealedSegment,
    damage: &StoreError,
) -> Result<Vec<u8>> {
    match backup::restore_sealed(data_dir, sealed) {
        Ok(restored) => {
            tracing::warn!(file = %sealed.file, backup = %restored.backup, problem = %damage, "sealed segment restored from backup");
            Ok(restored.bytes)
        }
        Err(e @ backup::RestoreError::NoBackup { .. }) => Err(StoreError::Corrupt(format!(
            "{damage}; {e}: restore one with `msgbus restore`"
        ))),
        Err(backup::RestoreError::Io(e)) => Err(e.into()),
    }
}
