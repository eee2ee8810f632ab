//! Retention: the writer deletes whole sealed segments once they lie
//! entirely outside a configured limit (`--retention-max-events`,
//! `--retention-max-age`, `--retention-max-bytes`; all off by default).
//!
//! Each limit is an upper bound enforced on its own: a sealed segment goes
//! as soon as *any* limit puts every one of its events outside it. The
//! active segment is never deleted, so a store keeps at least the events
//! since the last seal, and at most a limit plus one segment's worth.
//!
//! Deletion order makes a crash at any point safe: the manifest is replaced
//! atomically first (the segments are no longer part of the store), then
//! the index forgets them (readers of that range get 410 Gone), then the
//! files are removed and the directory fsynced. A crash before the removal
//! leaves files the manifest does not list; recovery removes them
//! ([`is_leftover`]).
//!
//! The idempotency window shrinks with the data: a `(source, id)` whose
//! event was deleted is forgotten, and publishing it again stores it anew.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::dedup::DedupIndex;
use super::error::{Result, StoreError};
use super::fsutil;
use super::layout;
use super::manifest::{Manifest, SealedSegment};
use super::Shared;

/// The configured limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at most about this many of the newest events.
    pub max_events: Option<u64>,
    /// Delete segments whose newest event was written longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most about this many bytes of segments.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// True when no limit is set (the default): nothing is ever deleted.
    pub fn is_off(&self) -> bool {
        self.max_events.is_none() && self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// The policy and what retention has done since start, shared with `/stats`.
#[derive(Debug, Default)]
pub struct Retention {
    /// The limits.
    pub policy: RetentionPolicy,
    /// Sealed segments deleted since start.
    pub segments_deleted: AtomicU64,
    /// Events deleted since start.
    pub events_deleted: AtomicU64,
    /// Bytes of segment files deleted since start.
    pub bytes_reclaimed: AtomicU64,
}

impl Retention {
    /// Retention with `policy` and zeroed counters.
    pub fn new(policy: RetentionPolicy) -> Self {
        Retention {
            policy,
            ..Retention::default()
        }
    }

    /// The `/stats` view; `oldest_seq` is the index's first seq.
    pub fn stats(&self, oldest_seq: u64) -> RetentionStats {
        RetentionStats {
            oldest_seq,
            max_events: self.policy.max_events,
            max_age_seconds: self.policy.max_age.map(|d| d.as_secs_f64()),
            max_bytes: self.policy.max_bytes,
            segments_deleted: self.segments_deleted.load(Ordering::Relaxed),
            events_deleted: self.events_deleted.load(Ordering::Relaxed),
            bytes_reclaimed: self.bytes_reclaimed.load(Ordering::Relaxed),
        }
    }
}

/// Retention as `/stats` shows it.
#[derive(Debug, Clone)]
pub struct RetentionStats {
    /// The oldest retained seq: reads and cursors before it get 410 Gone
    /// (the next seq to be written when the store holds no event).
    pub oldest_seq: u64,
    /// `--retention-max-events`, if set.
    pub max_events: Option<u64>,
    /// `--retention-max-age` in seconds, if set.
    pub max_age_seconds: Option<f64>,
    /// `--retention-max-bytes`, if set.
    pub max_bytes: Option<u64>,
    /// Sealed segments deleted since start.
    pub segments_deleted: u64,
    /// Events deleted since start.
    pub events_deleted: u64,
    /// Bytes of segment files deleted since start.
    pub bytes_reclaimed: u64,
}

/// How many of the oldest sealed segments lie entirely outside a limit.
///
/// `head` is the newest committed seq, `active_bytes` the active segment's
/// length, and `age` tells how long ago a sealed segment's last event was
/// written (`None` if unknown, which keeps the segment).
pub fn expired_prefix(
    policy: &RetentionPolicy,
    sealed: &[SealedSegment],
    head: u64,
    active_bytes: u64,
    mut age: impl FnMut(&SealedSegment) -> Option<Duration>,
) -> usize {
    let mut newer_bytes: u64 = sealed.iter().map(|s| s.bytes).sum::<u64>() + active_bytes;
    let mut n = 0;
    for s in sealed {
        newer_bytes -= s.bytes;
        // The events and bytes *newer* than this segment already fill the
        // limit, so none of its own events or bytes are within it.
        let by_events = policy
            .max_events
            .is_some_and(|max| head.saturating_sub(s.last_seq) >= max);
        let by_bytes = policy.max_bytes.is_some_and(|max| newer_bytes >= max);
        let by_age = !by_events
            && !by_bytes
            && policy
                .max_age
                .is_some_and(|max| age(s).is_some_and(|a| a > max));
        if !(by_events || by_bytes || by_age) {
            // Segments are ordered oldest first, so every limit that keeps
            // this one keeps all newer ones too.
            break;
        }
        n += 1;
    }
    n
}

/// How long ago the last event of a sealed segment was written: the file's
/// modification time, as a sealed segment is never written again. (A
/// segment restored from a backup looks newer, which keeps it longer:
/// the safe direction.)
fn file_age(seg_dir: &Path, s: &SealedSegment, now: SystemTime) -> Option<Duration> {
    let modified = std::fs::metadata(seg_dir.join(&s.file))
        .and_then(|m| m.modified())
        .ok()?;
    now.duration_since(modified).ok()
}

/// What one retention pass deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Segments deleted.
    pub segments: usize,
    /// Events deleted.
    pub events: u64,
    /// Bytes deleted.
    pub bytes: u64,
    /// The oldest retained seq afterwards.
    pub oldest: u64,
}

/// Applies the policy. Writer only: `manifest` and `dedup` are the writer's.
/// Returns what was deleted, if anything; on an error nothing is lost and
/// the next pass tries again.
pub(super) fn enforce(
    shared: &Shared,
    manifest: &mut Arc<Manifest>,
    dedup: &mut DedupIndex,
    head: u64,
    active_bytes: u64,
) -> Result<Option<Deleted>> {
    let policy = shared.retention.policy;
    if policy.is_off() || manifest.sealed.is_empty() {
        return Ok(None);
    }
    let seg_dir = layout::segments_dir(&shared.data_dir);
    let now = SystemTime::now();
    let n = expired_prefix(&policy, &manifest.sealed, head, active_bytes, |s| {
        file_age(&seg_dir, s, now)
    });
    if n == 0 {
        return Ok(None);
    }

    let mut next = (**manifest).clone();
    let gone: Vec<SealedSegment> = next.sealed.drain(..n).collect();
    let oldest = next
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(next.active_first_seq);
    next.store(&shared.data_dir).map_err(|e| {
        StoreError::io(
            format!(
                "write {}",
                layout::manifest_path(&shared.data_dir).display()
            ),
            e,
        )
    })?;
    *manifest = Arc::new(next);

    shared
        .index
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .drop_before(oldest);
    dedup.forget_before(oldest);

    for s in &gone {
        let path = seg_dir.join(&s.file);
        if let Err(e) = std::fs::remove_file(&path) {
            // The manifest no longer lists it: recovery removes it at the
            // next start.
            tracing::warn!(error = %e, path = %path.display(), "could not remove a segment deleted by retention");
        }
        // Its index file goes with it (recovery removes one left behind).
        let idx = layout::segment_index_path(&shared.data_dir, &s.file);
        if let Err(e) = std::fs::remove_file(&idx) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, path = %idx.display(), "could not remove the index of a segment deleted by retention");
            }
        }
    }
    if let Err(e) = fsutil::fsync_dir(&seg_dir) {
        tracing::warn!(error = %e, path = %seg_dir.display(), "fsync after retention failed");
    }

    let deleted = Deleted {
        segments: gone.len(),
        events: gone.iter().map(|s| s.count).sum(),
        bytes: gone.iter().map(|s| s.bytes).sum(),
        oldest,
    };
    let r = &shared.retention;
    r.segments_deleted
        .fetch_add(deleted.segments as u64, Ordering::Relaxed);
    r.events_deleted
        .fetch_add(deleted.events, Ordering::Relaxed);
    r.bytes_reclaimed
        .fetch_add(deleted.bytes, Ordering::Relaxed);
    tracing::info!(
        segments = deleted.segments,
        events = deleted.events,
        bytes = deleted.bytes,
        oldest_seq = oldest,
        "retention deleted old segments"
    );
    Ok(Some(deleted))
}

/// True for a segment file the manifest does not list that lies before the
/// oldest listed one: retention removed it from the manifest and crashed
/// before deleting the file. Recovery removes such files.
pub fn is_leftover(manifest: &Manifest, first_seq: u64) -> bool {
    let oldest = manifest
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(manifest.active_first_seq);
    first_seq < oldest
}

/// How often an idle store re-checks `--retention-max-age` (a store that
/// receives events checks after every commit).
pub fn tick_interval(policy: &RetentionPolicy) -> Option<Duration> {
    let age = policy.max_age?;
    Some((age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, last: u64, bytes: u64) -> SealedSegment {
        SealedSegment {
            file: super::super::segment::file_name(first),
            first_seq: first,
            last_seq: last,
            count: last - first + 1,
            bytes,
            sha256: String::new(),
        }
    }

    fn sealed() -> Vec<SealedSegment> {
        vec![seg(1, 100, 1000), seg(101, 200, 1000), seg(201, 300, 1000)]
    }

    #[test]
    fn off_deletes_nothing() {
        let p = RetentionPolicy::default();
        assert!(p.is_off());
        assert_eq!(expired_prefix(&p, &sealed(), 350, 500, |_| None), 0);
    }

    #[test]
    fn max_events_deletes_only_segments_entirely_outside() {
        let p = RetentionPolicy {
            max_events: Some(150),
            ..Default::default()
        };
        // head 350: the newest 150 are 201..=350, so 1..=100 and 101..=200 go.
        assert_eq!(expired_prefix(&p, &sealed(), 350, 500, |_| None), 2);
        // head 349: seq 200 is still among the newest 150.
        assert_eq!(expired_prefix(&p, &sealed(), 349, 500, |_| None), 1);
        // The segment holding the newest events stays, however small the
        // limit (and the active segment is never even considered).
        let p = RetentionPolicy {
            max_events: Some(1),
            ..Default::default()
        };
        assert_eq!(expired_prefix(&p, &sealed(), 300, 0, |_| None), 2);
        assert_eq!(expired_prefix(&p, &sealed(), 301, 0, |_| None), 3);
    }

    #[test]
    fn max_bytes_counts_newer_bytes_including_the_active_segment() {
        let p = RetentionPolicy {
            max_bytes: Some(1500),
            ..Default::default()
        };
        // Newer than segment 1: 2000 + 500 >= 1500; newer than 2: 1500 >= 1500;
        // newer than 3: 500 < 1500.
        assert_eq!(expired_prefix(&p, &sealed(), 350, 500, |_| None), 2);
    }

    #[test]
    fn max_age_uses_the_segment_age_and_keeps_unknown_ages() {
        let p = RetentionPolicy {
            max_age: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let ages = |s: &SealedSegment| match s.first_seq {
            1 => Some(Duration::from_secs(120)),
            101 => None,
            _ => Some(Duration::from_secs(500)),
        };
        assert_eq!(expired_prefix(&p, &sealed(), 350, 0, ages), 1);
    }

    #[test]
    fn the_index_forgets_a_prefix_and_its_segments() {
        use super::super::index::{Index, NewEntry, SegmentReader};
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::new(1, 1 << 20);
        for first in [1u64, 11, 21] {
            let path = dir.path().join(super::super::segment::file_name(first));
            std::fs::write(&path, b"").unwrap();
            let pos = idx.add_segment(SegmentReader {
                first_seq: first,
                path,
                bytes: 100,
            });
            for seq in first..first + 10 {
                idx.push(NewEntry {
                    seq,
                    segment: pos,
                    offset: 0,
                    len: 1,
                    crc: 0,
                    ty: if seq % 2 == 0 { "even" } else { "odd" },
                    source: "/s",
                    subject: None,
                    frame: Some(crate::sse::SseFrame::copied(seq, b"x")),
                });
            }
        }
        let last_pos = 2;
        idx.drop_before(21);
        assert_eq!((idx.first_seq(), idx.last_seq(), idx.len()), (21, 30, 10));
        assert_eq!(idx.segment_count(), 1);
        assert!(idx.segment(0).is_none() && idx.segment(1).is_none());
        assert_eq!(idx.segment(last_pos).unwrap().first_seq, 21);
        assert!(idx.get(20).is_none());
        assert_eq!(idx.get(21).unwrap().entry.segment, last_pos);
        // Ten cached SSE messages `id: NN\ndata: {"seq":NN,"event":x}\n\n`,
        // counted by the memory each holds.
        let each = crate::sse::SseFrame::copied(21, b"x").footprint() + 8;
        assert_eq!(idx.cache_bytes(), 10 * each);
        assert_eq!(idx.get(21).unwrap().cached.as_deref(), Some(&b"x"[..]));
        let mut counts: Vec<(&str, u64)> = idx.type_counts().collect();
        counts.sort();
        assert_eq!(counts, vec![("even", 5), ("odd", 5)]);
        let page = idx.query(0, &Default::default(), 100, 1000);
        assert_eq!(page.hits.first().map(|h| h.seq), Some(21));
        // The newest (active) segment is kept even when all events go.
        idx.drop_before(31);
        assert_eq!((idx.len(), idx.last_seq(), idx.segment_count()), (0, 30, 1));
        let pos = idx.add_segment(SegmentReader {
            first_seq: 31,
            path: dir.path().to_path_buf(),
            bytes: 0,
        });
        assert_eq!(pos, 3, "positions stay absolute");
    }

    #[test]
    fn leftovers_are_only_files_before_the_oldest_listed_segment() {
        let m = Manifest {
            version: 1,
            sealed: vec![seg(101, 200, 1000)],
            active_first_seq: 201,
            active_durable: None,
            lineage: None,
        };
        assert!(is_leftover(&m, 1));
        assert!(!is_leftover(&m, 101));
        assert!(!is_leftover(&m, 301));
    }
}
