//! Integrity checks of the files on disk against what the writer last left
//! there. Detection only: the monitor runs these checks and hands what it
//! finds to the writer, which alone repairs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::fsutil::{self, ReadPace};
use super::layout;
use super::manifest::{Manifest, SealedMismatch, SealedSegment};
use super::segindex;
use super::segment;
use super::Shared;

/// What the writer last left on disk, published after every change.
#[derive(Debug, Clone)]
pub struct FileState {
    /// The manifest as the writer wrote it (shared: it changes only at a
    /// seal, a retention pass or a repair, and this is published per commit).
    pub manifest: Arc<Manifest>,
    /// Durable length of the active segment.
    pub active_len: u64,
    /// CRC32C of the active segment's first `active_len` bytes.
    pub active_crc: u32,
    /// Newest sequence number in those bytes.
    pub last_seq: u64,
}

/// Something wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The active segment is missing, shorter than written, or its bytes differ.
    ActiveSegment {
        /// File name under `segments/`.
        file: String,
        /// What is wrong, with the offset where known.
        detail: String,
    },
    /// A sealed segment is missing, has the wrong length or the wrong SHA-256.
    SealedSegment {
        /// File name under `segments/`.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A sealed segment's index file is missing, damaged or belongs to
    /// other bytes (derived data: rebuilt from its segment, nothing lost).
    SegmentIndex {
        /// The segment's file name under `segments/` (not the index's).
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// `manifest.json` is missing, unreadable or differs from the writer's.
    Manifest {
        /// What is wrong.
        detail: String,
    },
    /// `schemas.json` is missing, damaged or differs from the writer's copy.
    Schemas {
        /// What is wrong.
        detail: String,
    },
}

impl Finding {
    /// The file concerned, relative to the data directory.
    pub fn file(&self) -> String {
        match self {
            Finding::ActiveSegment { file, .. } | Finding::SealedSegment { file, .. } => {
                layout::segment_rel(file)
            }
            Finding::SegmentIndex { file, .. } => layout::segment_index_rel(file),
            Finding::Manifest { .. } => layout::MANIFEST.to_string(),
            Finding::Schemas { .. } => layout::SCHEMAS.to_string(),
        }
    }

    /// What is wrong.
    pub fn detail(&self) -> &str {
        match self {
            Finding::ActiveSegment { detail, .. }
            | Finding::SealedSegment { detail, .. }
            | Finding::SegmentIndex { detail, .. }
            | Finding::Manifest { detail }
            | Finding::Schemas { detail } => detail,
        }
    }
}

/// How much to check.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Every tick: existence and lengths of all files (index files
    /// included), the manifest, every byte of the active segment (CRC32C
    /// against the writer's), and the SHA-256 of the sealed segment at this
    /// position and the checksum of its index file (round robin).
    Tick {
        /// Which sealed segment to scrub.
        scrub: usize,
    },
    /// The first check after a start: as a tick, but hashing every sealed
    /// segment and decoding every index file, because start-up no longer
    /// reads sealed segments (it loads their index files).
    Start,
    /// On demand: as a tick, scrubbing every sealed segment.
    Full,
}

/// Checks the store's files. Blocking (reads files). Gives up between
/// files once `stop` returns true (at shutdown: a full check of a large
/// store must not hold it up); what was found until then is returned.
pub(super) fn check_until(
    shared: &Shared,
    scope: Scope,
    pace: &mut ReadPace,
    stop: &dyn Fn() -> bool,
) -> Vec<Finding> {
    let state = shared.file_state();
    let seg_dir = layout::segments_dir(&shared.data_dir);
    let mut findings = Vec::new();

    match Manifest::load(&shared.data_dir) {
        Ok(Some(m)) if m == *state.manifest => {}
        // A seal may have replaced the manifest since the snapshot was taken.
        Ok(Some(m)) if m == *shared.file_state().manifest => {}
        Ok(Some(_)) => findings.push(Finding::Manifest {
            detail: "differs from the writer's manifest".into(),
        }),
        Ok(None) => findings.push(Finding::Manifest {
            detail: "missing".into(),
        }),
        Err(e) => findings.push(Finding::Manifest {
            detail: e.to_string(),
        }),
    }

    if let Some(detail) = super::schemas::check(shared) {
        findings.push(Finding::Schemas { detail });
    }

    let sealed = &state.manifest.sealed;
    for (i, s) in sealed.iter().enumerate() {
        if stop() {
            return findings;
        }
        let path = seg_dir.join(&s.file);
        let scrub = match scope {
            Scope::Full | Scope::Start => true,
            Scope::Tick { scrub } => !sealed.is_empty() && scrub % sealed.len() == i,
        };
        if let Some(detail) = check_index(&shared.data_dir, s, scrub, pace) {
            findings.push(Finding::SegmentIndex {
                file: s.file.clone(),
                detail,
            });
        }
        match s.check_file_paced(&path, scrub, pace) {
            Ok(()) => {}
            // Out of descriptors: not checked this time, not damage.
            Err(SealedMismatch::Unreadable(e)) if e.is_descriptor_exhaustion() => {
                shared.descriptors_exhausted(&format!("scrubbing {}: {e}", s.file));
            }
            Err(mismatch) => findings.push(Finding::SealedSegment {
                file: s.file.clone(),
                detail: mismatch.to_string(),
            }),
        }
    }

    // Retention may have deleted a segment since the snapshot: a finding
    // about a file the writer's latest manifest no longer lists is none.
    if findings.iter().any(|f| {
        matches!(
            f,
            Finding::SealedSegment { .. } | Finding::SegmentIndex { .. }
        )
    }) {
        let latest = shared.file_state().manifest;
        findings.retain(|f| match f {
            Finding::SealedSegment { file, .. } | Finding::SegmentIndex { file, .. } => {
                latest.sealed.iter().any(|s| &s.file == file)
            }
            _ => true,
        });
    }

    let active = segment::file_name(state.manifest.active_first_seq);
    if let Some(detail) = check_active(&seg_dir.join(&active), &state, || {
        let latest = shared.file_state();
        (latest.manifest.active_first_seq == state.manifest.active_first_seq)
            .then_some(latest.active_len)
    }) {
        findings.push(Finding::ActiveSegment {
            file: active,
            detail,
        });
    }
    findings
}

/// Checks a sealed segment's index file: that it exists always; with
/// `whole`, that it decodes, passes its checksum and matches the manifest's
/// entry. `None` when it is fine (or cannot be checked for lack of
/// descriptors, which is not damage).
fn check_index(
    data_dir: &Path,
    s: &SealedSegment,
    whole: bool,
    pace: &mut ReadPace,
) -> Option<String> {
    if !whole {
        let path = layout::segment_index_path(data_dir, &s.file);
        return match std::fs::metadata(&path) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("is missing".into()),
            Err(e) => Some(format!("cannot be read: {e}")),
        };
    }
    // Read a few blocks at a time: a whole load held about 16 MB at
    // 187,000 events for as long as the check took.
    match segindex::check(data_dir, s) {
        Ok(len) => {
            pace.read(len);
            None
        }
        Err(e) if e.is_descriptor_exhaustion() => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Compares the active segment's durable prefix with the writer's CRC;
/// on a mismatch, scans the records to name the first bad offset.
fn check_active(
    path: &Path,
    state: &FileState,
    latest_active_len: impl Fn() -> Option<u64>,
) -> Option<String> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        // Out of descriptors: not checked this time, not damage.
        Err(e) if fsutil::is_descriptor_exhaustion(&e) => {
            tracing::warn!(error = %e, path = %path.display(), "active segment not checked: out of file descriptors");
            return None;
        }
        Err(e) => return Some(format!("cannot be opened: {e}")),
    };
    let len = match f.metadata() {
        Ok(md) => md.len(),
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    if len < state.active_len {
        return Some(format!(
            "is {len} bytes, but {} bytes were written",
            state.active_len
        ));
    }
    if len > state.active_len && latest_active_len() == Some(state.active_len) {
        // Longer than the writer left it, and no commit happened meanwhile:
        // bytes were appended by someone else.
        return Some(format!(
            "is {len} bytes, but only {} bytes were written: {} unknown bytes at offset {}",
            state.active_len,
            len - state.active_len,
            state.active_len
        ));
    }
    match fsutil::crc32c_prefix(&mut f, state.active_len) {
        Ok(crc) if crc == state.active_crc => return None,
        Ok(_) => {}
        Err(e) => return Some(format!("cannot be read: {e}")),
    }
    // Damaged: read the prefix whole to name the first bad record.
    let mut buf = vec![0u8; state.active_len as usize];
    if let Err(e) = f
        .seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut buf))
    {
        return Some(format!("cannot be read: {e}"));
    }
    let first = state.manifest.active_first_seq;
    let scan = segment::scan(&buf, first);
    Some(match scan.damage {
        Some(d) => format!(
            "bytes differ from what was written: first bad record at offset {} ({})",
            d.offset, d.problem
        ),
        None => "bytes differ from what was written".to_string(),
    })
}
