//! Startup recovery: take the lock, clear temp files, load (or rebuild) the
//! manifest, verify sealed segments against their SHA-256, scan the active
//! segment record by record, cut away a torn tail (after copying it to
//! `quarantine/`), and rebuild the index and the idempotency set.
//!
//! Damage that is followed by valid records is never truncated: recovery
//! stops with a report naming the file, the offset and what follows.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dedup::DedupIndex;
use super::error::{Result, StoreError};
use super::fsutil;
use super::index::{Index, NewEntry, SegmentReader};
use super::layout::{self, MANIFEST, QUARANTINE_DIR};
use super::lock::DirLock;
use super::manifest::{DurablePrefix, Manifest, SealedSegment};
use super::segment::{self, Scan};

pub mod active;

/// What recovery found and did, for the log and for `msgbus verify`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecoveryReport {
    /// Stale temp files removed.
    pub removed_temp_files: usize,
    /// True when the manifest was missing and rebuilt from the segments.
    pub manifest_rebuilt: bool,
    /// Sealed segments verified.
    pub sealed_segments: usize,
    /// Events recovered.
    pub events: u64,
    /// A torn tail that was cut away, if any.
    pub torn_tail: Option<TornTail>,
    /// Empty segment files left by a crash during a roll, removed.
    pub removed_empty_segments: Vec<String>,
    /// Segments that were damaged and repaired from a verified backup.
    pub repaired_from_backup: Vec<String>,
    /// A damaged manifest moved to quarantine before it was rebuilt.
    pub quarantined_manifest: Option<String>,
    /// Every cut and repair, to be raised as alerts once the store is open.
    pub notes: Vec<RecoveryNote>,
}

/// A cut or repair made at start-up, raised as an alert (`/alerts`, the
/// log and the webhook) once the store is open.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryNote {
    /// Alert kind: `torn_tail` or `repair`.
    pub kind: &'static str,
    /// The file, relative to the data directory.
    pub file: String,
    /// What was found and done, without absolute paths.
    pub detail: String,
}

/// A torn last record cut away at startup.
#[derive(Debug, Clone, serde::Serialize)]
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
    pub bytes: Vec<u8>,
    /// CRC32C of `bytes`, which the integrity monitor compares the file with.
    pub crc: u32,
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
    /// The rebuilt idempotency set.
    pub dedup: DedupIndex,
    /// Next sequence number to assign.
    pub next_seq: u64,
    /// What was found and done.
    pub report: RecoveryReport,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(context, e)
}

/// Opens (creating if needed) the store in `data_dir` and recovers it.
pub fn open(data_dir: &Path, recent_cache_bytes: usize) -> Result<Recovered> {
    fsutil::create_dir_durable(data_dir).map_err(io(format!("create {}", data_dir.display())))?;
    let lock = DirLock::acquire(data_dir)?;
    let seg_dir = layout::segments_dir(data_dir);
    for d in [&seg_dir, &layout::quarantine_dir(data_dir)] {
        fsutil::create_dir_durable(d).map_err(io(format!("create {}", d.display())))?;
    }
    let mut report = RecoveryReport::default();
    for d in [data_dir, &seg_dir] {
        report.removed_temp_files += fsutil::remove_stale_temp_files(d)
            .map_err(io(format!("clean temp files in {}", d.display())))?;
    }

    let files = segment::list(&seg_dir).map_err(io(format!("list {}", seg_dir.display())))?;
    let loaded = match Manifest::load(data_dir) {
        Ok(m) => m,
        Err(why) => {
            // A damaged manifest is rebuilt from the segments, like a missing
            // one, after its bytes are moved aside.
            let path = layout::manifest_path(data_dir);
            let bytes = std::fs::read(&path).unwrap_or_default();
            let q = quarantine(data_dir, &path, 0, &bytes)?;
            std::fs::remove_file(&path).map_err(io(format!("remove {}", path.display())))?;
            tracing::warn!(problem = %why, quarantined_to = %q.display(), "damaged manifest moved aside; rebuilding it");
            report.quarantined_manifest = Some(q.display().to_string());
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
    let mut manifest = match loaded {
        Some(m) => m,
        None if files.is_empty() => {
            let m = Manifest::empty();
            create_segment_file(&seg_dir, m.active_first_seq)?;
            store_manifest(&m, data_dir)?;
            m
        }
        None => {
            report.manifest_rebuilt = true;
            let m = rebuild_manifest(&files)?;
            store_manifest(&m, data_dir)?;
            m
        }
    };

    // Files the manifest does not know: an empty one past the active segment
    // is a crash between creating a segment and naming it; anything else is
    // damage we will not guess about.
    for f in &files {
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
            .map_err(io(format!("stat {}", f.path.display())))?
            .len();
        if f.first_seq > manifest.active_first_seq && len == 0 {
            std::fs::remove_file(&f.path).map_err(io(format!("remove {}", f.path.display())))?;
            fsutil::fsync_dir(&seg_dir).map_err(io(format!("fsync {}", seg_dir.display())))?;
            report.removed_empty_segments.push(name);
        } else if super::retention::is_leftover(&manifest, f.first_seq) {
            // Retention took it out of the manifest, then stopped before
            // removing the file: finish the deletion.
            std::fs::remove_file(&f.path).map_err(io(format!("remove {}", f.path.display())))?;
            fsutil::fsync_dir(&seg_dir).map_err(io(format!("fsync {}", seg_dir.display())))?;
            tracing::info!(file = %f.path.display(), "removed a segment left by an interrupted retention pass");
        } else {
            return Err(StoreError::Corrupt(format!(
                "{} ({len} bytes) is not listed in {MANIFEST}; move it aside or restore a backup",
                f.path.display(),
            )));
        }
    }

    let first_seq = manifest
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(manifest.active_first_seq);
    let mut index = Index::new(first_seq, recent_cache_bytes);
    let mut dedup = DedupIndex::default();
    let mut expect = first_seq;

    for sealed in &manifest.sealed {
        let path = seg_dir.join(&sealed.file);
        let checked = std::fs::read(&path)
            .map_err(|e| {
                if fsutil::is_descriptor_exhaustion(&e) {
                    return StoreError::io(format!("read {}", path.display()), e);
                }
                StoreError::Corrupt(format!(
                    "sealed segment {} cannot be read: {e}",
                    path.display()
                ))
            })
            .and_then(|bytes| check_sealed(&path, sealed, &bytes, expect).map(|()| bytes));
        // The same repair the running writer does: a verified backup copy
        // whose SHA-256 matches the manifest replaces the damaged file.
        let bytes = match checked {
            Ok(bytes) => bytes,
            Err(e @ StoreError::TooManyOpenFiles { .. }) => return Err(e),
            Err(damage) => {
                let bytes = restore_sealed_from_backup(data_dir, &path, sealed, &damage)?;
                report.repaired_from_backup.push(sealed.file.clone());
                report.notes.push(RecoveryNote {
                    kind: "repair",
                    file: layout::segment_rel_of(&path),
                    detail: format!(
                        "sealed segment {} failed its check and was restored from a verified backup",
                        layout::segment_rel_of(&path)
                    ),
                });
                bytes
            }
        };
        // Indexed record by record as the scan goes: a 64 MiB segment's
        // records are never all held in memory at once.
        let pos = index.add_segment(reader(&path, sealed.first_seq, bytes.len() as u64)?);
        let scan = segment::scan_with(&bytes, expect, |r| {
            add_record(&mut index, &mut dedup, pos, &r)
        });
        if let Some(d) = &scan.damage {
            return Err(StoreError::Corrupt(format!(
                "sealed segment {} has a bad record at offset {}: {}",
                path.display(),
                d.offset,
                d.problem
            )));
        }
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
    let active_path = seg_dir.join(segment::file_name(expect));
    let (bytes, scan) = recover_active(data_dir, &active_path, expect, &manifest, &mut report)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active_path)
        .map_err(io(format!("open {}", active_path.display())))?;
    let pos = index.add_segment(reader(&active_path, expect, bytes.len() as u64)?);
    add_records(&mut index, &mut dedup, pos, &scan);
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    let count = scan.records.len() as u64;
    let next_seq = expect + count;
    report.events = index.len() as u64;

    // What is durable now is the floor the next start checks against.
    let floor = DurablePrefix {
        bytes: bytes.len() as u64,
        last_seq: next_seq - 1,
    };
    if manifest.active_durable != Some(floor) {
        manifest.active_durable = Some(floor);
        store_manifest(&manifest, data_dir)?;
    }

    Ok(Recovered {
        lock,
        manifest,
        active: ActiveSegment {
            file,
            path: active_path,
            first_seq: expect,
            len: bytes.len() as u64,
            count,
            index_pos: pos,
            crc: crc32c::crc32c(&bytes),
            bytes,
        },
        active_sha256: hasher,
        index,
        dedup,
        next_seq,
        report,
    })
}

/// Reads, judges and, if need be, repairs the active segment (see
/// [`active`]); returns its bytes, a torn tail cut away, and their scan.
fn recover_active(
    data_dir: &Path,
    path: &Path,
    first_seq: u64,
    manifest: &Manifest,
    report: &mut RecoveryReport,
) -> Result<(Vec<u8>, Scan)> {
    let rel = layout::segment_rel_of(path);
    let file_name = segment::file_name(first_seq);
    let (live, missing) = match std::fs::read(path) {
        Ok(b) => (b, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), true),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let plan = active::plan(data_dir, &file_name, &live, first_seq, manifest);
    let (mut bytes, mut scan, verdict) = match plan.repair {
        Some(c) => {
            let what = if missing {
                format!("{rel} was missing")
            } else {
                plan.verdict.describe(&rel)
            };
            if !live.is_empty() {
                quarantine(data_dir, path, 0, &live)?;
            }
            fsutil::write_atomic(path, &c.bytes)
                .map_err(io(format!("rewrite {}", path.display())))?;
            let had = first_seq + plan.scan.records.len() as u64;
            let has = first_seq + c.scan.records.len() as u64;
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
            report.repaired_from_backup.push(file_name.clone());
            report.notes.push(RecoveryNote {
                kind: "repair",
                file: rel.clone(),
                detail,
            });
            (c.bytes, c.scan, c.verdict)
        }
        // A missing file is only taken as empty when the manifest says it
        // was empty.
        None if missing && manifest.active_durable.is_none_or(|d| d.bytes > 0) => {
            return Err(StoreError::Corrupt(format!(
                "active segment {} is missing and no verified backup of this store holds it: restore one with `msgbus restore`",
                path.display()
            )));
        }
        None => (live, plan.scan, plan.verdict),
    };
    match verdict {
        active::Verdict::Whole => {}
        active::Verdict::TornTail { valid_len } => {
            let tail = &bytes[valid_len as usize..];
            let quarantined = quarantine(data_dir, path, valid_len, tail)?;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(format!("open {}", path.display())))?;
            f.set_len(valid_len)
                .map_err(io(format!("truncate {}", path.display())))?;
            f.sync_all()
                .map_err(io(format!("fsync {}", path.display())))?;
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
            scan.damage = None;
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
    Ok((bytes, scan))
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
        .map_err(io(format!("create {}", path.display())))?;
    fsutil::fsync_dir(seg_dir).map_err(io(format!("fsync {}", seg_dir.display())))?;
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
    if bytes.len() as u64 != s.bytes {
        return Err(StoreError::Corrupt(format!(
            "sealed segment {} is {} bytes, the manifest says {}",
            path.display(),
            bytes.len(),
            s.bytes
        )));
    }
    let sha = hex::encode(Sha256::digest(bytes));
    if sha != s.sha256 {
        return Err(StoreError::Corrupt(format!(
            "sealed segment {} has SHA-256 {sha}, the manifest says {}",
            path.display(),
            s.sha256
        )));
    }
    Ok(())
}

fn add_records(index: &mut Index, dedup: &mut DedupIndex, pos: u32, scan: &Scan) {
    for r in &scan.records {
        add_record(index, dedup, pos, r);
    }
}

fn add_record(index: &mut Index, dedup: &mut DedupIndex, pos: u32, r: &segment::ScannedRecord) {
    index.push(NewEntry {
        seq: r.seq,
        segment: pos,
        offset: r.offset + r.framed.event_offset as u64,
        len: r.framed.event_len,
        crc: r.framed.crc,
        ty: &r.keys.ty,
        source: &r.keys.source,
        subject: r.keys.subject.as_deref(),
        frame: None,
    });
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
        let bytes = std::fs::read(&f.path).map_err(io(format!("read {}", f.path.display())))?;
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

/// Copies damaged bytes to `quarantine/` (fsynced) before anything is cut.
pub fn quarantine(data_dir: &Path, file: &Path, offset: u64, bytes: &[u8]) -> Result<PathBuf> {
    let dir = layout::quarantine_dir(data_dir);
    let stamp = layout::stamp_now();
    let name = format!(
        "{}.{offset}.{stamp}.bad",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    let path = dir.join(name);
    fsutil::write_atomic(&path, bytes).map_err(io(format!("write {}", path.display())))?;
    Ok(path)
}

/// Restores a damaged or missing sealed segment at startup from the newest
/// verified backup whose copy matches the manifest's SHA-256.
fn restore_sealed_from_backup(
    data_dir: &Path,
    path: &Path,
    sealed: &SealedSegment,
    damage: &StoreError,
) -> Result<Vec<u8>> {
    let Some((bytes, from)) =
        super::backup::find_segment(data_dir, &sealed.file, Some(&sealed.sha256))
    else {
        return Err(StoreError::Corrupt(format!(
            "{damage}; no verified backup holds {} with SHA-256 {}: restore one with `msgbus restore`",
            sealed.file, sealed.sha256
        )));
    };
    if let Ok(old) = std::fs::read(path) {
        quarantine(data_dir, path, 0, &old)?;
    }
    fsutil::write_atomic(path, &bytes).map_err(io(format!("rewrite {}", path.display())))?;
    tracing::warn!(file = %path.display(), backup = %from, problem = %damage, "sealed segment restored from backup");
    Ok(bytes)
}
