//! The writer: the only code that touches the data directory after startup.
//!
//! It runs on its own thread, drains every waiting command at once, frames
//! all their events into one buffer, writes it with one `pwrite`, calls
//! `fdatasync` once, publishes the new entries to the index and only then
//! answers every caller. An answer therefore means "on disk".
//!
//! After a failed write or fsync the writer is poisoned: it cuts the file
//! back to its last durable length and refuses every later write. It never
//! retries an fsync, because after a failed fsync the kernel may already
//! have dropped the dirty pages it was asked to write.
//!
//! The writer keeps its own copy of the active segment's bytes (in an
//! anonymous file: `active_copy`), so that when the file is damaged,
//! truncated or deleted under it, it can rewrite it without losing an
//! acknowledged event (`repair`). Two threads it feeds
//! keep work off the commit path: backups are copied by one (`backups`),
//! and the active segment's SHA-256, recorded in the manifest at sealing,
//! is computed by the other (`hasher`).

mod backups;
mod hasher;
mod repair;

pub use repair::{raise_alerts as raise_repair_alerts, RepairOutcome};

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::active_copy::ActiveCopy;
use super::dedup::DedupIndex;
use super::dedup::{self, PreHashed};
use super::error::{Result, StoreError, WriteRefusal};
use super::index::{self, Names, NewEntry};
use super::keyfilter::{self, Covered, KeyFilter, Rebuilt, SealedKeys};
use super::manifest::{Manifest, SealedSegment};
use super::recovery::{self, ActiveSegment, Recovered};
use super::segment::{self, Framed};
use super::{Original, Outcome, PreparedEvent, Shared};
use crate::sse::SseFrame;

/// The reply to an append: one outcome per event, in order, or why none
/// of them was stored.
pub type AppendReply = oneshot::Sender<Result<Vec<Outcome>>>;

/// What a publishing request found when it looked its events' keys up in
/// the sealed segments before handing them to the writer
/// ([`StoreHandle::append`](super::StoreHandle::append)).
#[derive(Debug, Default)]
pub struct SealedCheck {
    /// The segments sealed before this seq were looked in (0: none were,
    /// and the writer asks them all).
    pub before: u64,
    /// The events found there (position in the request, outcome).
    pub found: Vec<(usize, Outcome)>,
}

impl SealedCheck {
    fn of(&self, i: usize) -> Checked<'_> {
        match self.found.iter().find(|(at, _)| *at == i) {
            Some((_, o)) => Checked::Found(o),
            None => Checked::Before(self.before),
        }
    }
}

/// One event's part of a [`SealedCheck`].
#[derive(Debug, Clone, Copy)]
enum Checked<'a> {
    /// Not in the segments sealed before this seq (0: none looked in).
    Before(u64),
    /// Stored already, in a sealed segment.
    Found(&'a Outcome),
}

/// What the writer can be asked to do.
#[derive(Debug)]
pub enum Command {
    /// Store these events atomically (all or none) and say where they went.
    Append {
        /// Events in publish order.
        events: Vec<PreparedEvent>,
        /// What the request found in the sealed segments already.
        sealed: SealedCheck,
        /// Where to send the outcome.
        reply: AppendReply,
    },
    /// Check these findings of the integrity monitor again and repair what
    /// is still wrong. An empty list clears read-only mode.
    Repair {
        /// What the monitor found.
        findings: Vec<super::integrity::Finding>,
        /// One outcome per finding.
        reply: oneshot::Sender<Vec<RepairOutcome>>,
    },
    /// Take a verified backup (copied off the commit path).
    Backup {
        /// Where to send the result, if anyone waits for it.
        reply: Option<
            oneshot::Sender<
                std::result::Result<super::backup::BackupInfo, super::backup::BackupError>,
            >,
        >,
    },
    /// Create, update or delete a consumer, or commit its cursor (see
    /// [`super::consumers`]); requests in one batch share one file write.
    Consumer(super::consumers::Request),
    /// Register a payload schema version or stop validating a type (see
    /// [`super::schemas`]); written and fsynced before it is answered.
    Schema(super::schemas::Request),
    /// Run a retention pass now (one also runs after every batch).
    EnforceRetention,
    /// Finish what is queued before this command, then stop.
    Shutdown,
}

/// Stop draining once a commit holds this many bytes, so one fsync never
/// waits behind an unbounded write.
const MAX_COMMIT_BYTES: usize = 16 << 20;

/// The writer's state. Built from a [`Recovered`] store.
pub struct Writer {
    shared: Arc<Shared>,
    manifest: Arc<Manifest>,
    active: ActiveSegment,
    next_seq: u64,
    /// The active segment's idempotency keys (exact, in memory).
    dedup: DedupIndex,
    /// The sealed segments whose keys the filter (`Shared::sealed_keys`)
    /// holds (saved with it).
    covered: Vec<Covered>,
    /// Seals since the filter was last saved.
    seals_since_save: u64,
    /// The thread saving the filter, if one was started.
    filter_saver: Option<std::thread::JoinHandle<()>>,
    /// A larger filter being built, once the filter is over capacity.
    filter_rebuild: Option<FilterRebuild>,
    /// Headroom of a rebuilt filter (`--key-filter-headroom`).
    key_filter_headroom: u64,
    segment_bytes: u64,
    buf: Vec<u8>,
    /// SHA-256 of the active segment, for the manifest when it is sealed.
    hasher: hasher::SegmentHasher,
    backups: backups::BackupWorker,
    /// Findings whose repair failed, checked again on every repair command.
    unrepaired: Vec<super::integrity::Finding>,
    _lock: super::lock::DirLock,
}

/// One event accepted into the current commit.
struct Accepted {
    seq: u64,
    /// [`dedup::key_hash`] of its `(source, id)`.
    key: u64,
    line_start: usize,
    framed: Framed,
    event: PreparedEvent,
}

impl Accepted {
    /// What the index (and the segment's index file) keeps of this event,
    /// written at `base`, the active segment's length before the commit.
    fn record(&self, base: u64) -> super::segindex::NewRecord<'_> {
        super::segindex::NewRecord {
            seq: self.seq,
            offset: base + self.line_start as u64 + self.framed.event_offset as u64,
            len: self.framed.event_len,
            crc: self.framed.crc,
            ty: &self.event.ty,
            source: &self.event.source,
            subject: self.event.subject.as_deref(),
            id: &self.event.id,
        }
    }
}

impl Writer {
    /// Takes over a recovered store.
    pub(super) fn new(
        rec: Recovered,
        shared: Arc<Shared>,
        segment_bytes: u64,
        key_filter_headroom: u64,
        backup_keep: usize,
        backup_copies: super::backup::Copies,
        backup_read_rate: u64,
    ) -> (Self, index::Index) {
        *shared.sealed_keys_mut() = SealedKeys {
            filter: rec.sealed_keys,
            before: rec.manifest.active_first_seq,
        };
        let w = Writer {
            backups: backups::BackupWorker::spawn(
                shared.clone(),
                backup_keep,
                backup_copies,
                backup_read_rate,
            ),
            unrepaired: Vec::new(),
            shared,
            manifest: Arc::new(rec.manifest),
            active: rec.active,
            next_seq: rec.next_seq,
            dedup: rec.dedup,
            covered: rec.covered,
            seals_since_save: 0,
            filter_saver: None,
            filter_rebuild: None,
            key_filter_headroom,
            segment_bytes,
            buf: Vec::with_capacity(1 << 20),
            hasher: hasher::SegmentHasher::spawn(rec.active_sha256),
            _lock: rec.lock,
        };
        w.publish_file_state();
        w.publish_key_filter_size();
        (w, rec.index)
    }

    /// Runs until a [`Command::Shutdown`] or until every handle is dropped.
    /// Blocking: call it on a dedicated thread.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut bytes = command_bytes(&first);
            batch.push(first);
            while bytes < MAX_COMMIT_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        bytes += command_bytes(&cmd);
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(batch.len());
            let mut others = Vec::new();
            let mut consumer_requests = Vec::new();
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Append {
                        events,
                        sealed,
                        reply,
                    } => appends.push((events, sealed, reply)),
                    Command::Shutdown => stop = true,
                    Command::Consumer(r) => consumer_requests.push(r),
                    other => others.push(other),
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            for cmd in others {
                self.handle(cmd);
            }
            if !consumer_requests.is_empty() {
                super::consumers::apply(&self.shared, consumer_requests, self.next_seq - 1);
            }
            self.enforce_retention();
            self.finish_filter_rebuild();
        }
        // A rebuild still running is left to end with the process: the
        // full filter saved below answers as correctly.
        self.filter_rebuild = None;
        self.record_durable_floor();
        self.save_key_filter(false);
        tracing::info!(last_seq = self.next_seq - 1, "writer stopped");
        self.backups.finish();
        self.shared.writer_alive.store(false, Ordering::SeqCst);
    }

    /// Commands other than appends, in arrival order after the commit.
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Repair { findings, reply } => {
                let outcomes = self.repair(findings);
                let _ = reply.send(outcomes);
            }
            Command::Backup { reply } => {
                self.record_durable_floor();
                self.request_backup(reply, backups::Trigger::Requested);
            }
            Command::Schema(request) => {
                // A backup right away: `schemas.json` damaged while the
                // server is stopped is restored from the newest backup, which
                // must hold the version just registered (or the deletion).
                if super::schemas::apply(&self.shared, request) {
                    self.request_backup(None, backups::Trigger::Schema);
                }
            }
            Command::Append { .. }
            | Command::Shutdown
            | Command::Consumer(_)
            | Command::EnforceRetention => {}
        }
    }

    /// Deletes sealed segments outside the retention limits.
    fn enforce_retention(&mut self) {
        if self.shared.poison_reason().is_some() {
            return;
        }
        let head = self.next_seq - 1;
        let active_len = self.active.len;
        match super::retention::enforce(
            &self.shared,
            &mut self.manifest,
            &mut self.dedup,
            head,
            active_len,
        ) {
            Ok(Some(_)) => self.publish_file_state(),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "retention pass failed; the next batch retries"),
        }
    }

    // DEBUG: at the default INFO level the span costs nothing per commit.
    #[tracing::instrument(level = "debug", skip_all, fields(commands = appends.len()))]
    fn commit(&mut self, appends: Vec<(Vec<PreparedEvent>, SealedCheck, AppendReply)>) {
        if let Some(refusal) = self.shared.commit_refusal() {
            for (_, _, reply) in appends {
                let _ = reply.send(Err(refusal.clone().into()));
            }
            return;
        }
        if self.active.len >= self.segment_bytes && self.active.count > 0 {
            match self.seal_and_roll() {
                Ok(()) => {}
                // Out of descriptors: nothing was changed; this commit goes
                // to the current segment and the next commit seals again.
                Err(e @ StoreError::TooManyOpenFiles { .. }) => {
                    self.shared.descriptors_exhausted(&format!(
                        "sealing {} postponed to the next commit: {e}",
                        self.active.path.display()
                    ));
                }
                Err(e) => {
                    self.poison(format!(
                        "sealing segment {} failed: {e}",
                        self.active.path.display()
                    ));
                    return self.commit(appends);
                }
            }
        }

        self.buf.clear();
        let mut accepted: Vec<Accepted> = Vec::new();
        // (source, id) hash -> position in `accepted`, for repeats within one commit.
        let mut in_commit: HashMap<u64, usize, BuildHasherDefault<PreHashed>> = HashMap::default();
        let mut replies = Vec::with_capacity(appends.len());
        let mut duplicates = 0u64;
        for (events, sealed, reply) in appends {
            let mut outcomes = Vec::with_capacity(events.len());
            for (i, event) in events.into_iter().enumerate() {
                let key = dedup::key_hash(&event.source, &event.id);
                let checked = sealed.of(i);
                if let Some(o) = self.find_duplicate(&event, key, checked, &in_commit, &accepted) {
                    duplicates += 1;
                    outcomes.push(o);
                    continue;
                }
                let seq = self.next_seq + accepted.len() as u64;
                let line_start = self.buf.len();
                let framed = segment::encode_record(&mut self.buf, seq, event.bytes());
                in_commit.entry(key).or_insert(accepted.len());
                outcomes.push(Outcome {
                    seq,
                    original: None,
                });
                accepted.push(Accepted {
                    seq,
                    key,
                    line_start,
                    framed,
                    event,
                });
            }
            replies.push((reply, outcomes));
        }

        if !self.buf.is_empty() {
            if let Err(failed) = self.write_and_sync() {
                let reason = failed.to_string();
                self.poison(reason.clone());
                for (reply, _) in replies {
                    let _ = reply.send(Err(WriteRefusal::Poisoned(reason.clone()).into()));
                }
                return;
            }
            self.publish(&mut accepted);
            // A file deleted or cut under the writer would silently swallow
            // this commit; rewrite it from memory before anyone is answered,
            // and answer with an error if that fails: only what is on disk
            // is acknowledged.
            if let Err(why) = self.verify_active_file_after_commit() {
                let refusal = StoreError::Refused(WriteRefusal::ReadOnly(format!(
                    "the commit could not be made durable (retry with the same ids): {why}"
                )));
                for (reply, _) in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
                return;
            }
        }
        let m = &self.shared.metrics;
        m.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        for (reply, outcomes) in replies {
            let _ = reply.send(Ok(outcomes));
        }
    }

    /// Appends the buffer at the durable end of the active segment and
    /// syncs it. On failure, cuts the file back so the log stays valid.
    fn write_and_sync(&mut self) -> std::result::Result<(), WriteFailed> {
        let path = &self.active.path;
        let result = self
            .active
            .file
            .write_all_at(&self.buf, self.active.len)
            .map_err(|source| WriteFailed::Write {
                path: path.clone(),
                offset: self.active.len,
                source,
            })
            .and_then(|()| {
                let started = Instant::now();
                let r = self
                    .active
                    .file
                    .sync_data()
                    .map_err(|source| WriteFailed::Sync {
                        path: path.clone(),
                        source,
                    });
                self.shared
                    .record_fsync(started.elapsed().as_micros() as u64);
                r
            });
        if result.is_err() {
            if let Err(e) = self.active.file.set_len(self.active.len) {
                tracing::error!(error = %e, path = %path.display(), "could not cut the active segment back after a failed write");
            }
        }
        result
    }

    /// Makes a durable commit visible: index entries, head, dedup, counters.
    fn publish(&mut self, accepted: &mut [Accepted]) {
        let base = self.active.len;
        self.active.crc = crc32c::crc32c_append(self.active.crc, &self.buf);
        self.active.len += self.buf.len() as u64;
        if let Err(e) = self.active.copy.append(&self.buf) {
            self.refill_copy(&e);
        }
        self.active.count += accepted.len() as u64;
        {
            let mut idx = self.shared.index.write().unwrap_or_else(|e| e.into_inner());
            for a in accepted.iter_mut() {
                // Built around the event in its own buffer (see
                // `FRAME_HEADROOM`); the event is not read again.
                let frame = SseFrame::in_place(a.seq, std::mem::take(&mut a.event.buf));
                idx.push(NewEntry::of(
                    &a.record(base),
                    self.active.index_pos,
                    Some(frame),
                ));
            }
            idx.set_segment_bytes(self.active.index_pos, self.active.len);
        }
        for a in accepted.iter() {
            self.active.keys.push(super::segindex::Key::of(
                &a.event.source,
                &a.event.id,
                a.seq,
            ));
            self.dedup
                .insert_hashed(a.key, &a.event.source, &a.event.id, &a.event.time, a.seq);
        }
        self.next_seq += accepted.len() as u64;
        self.publish_file_state();
        self.shared.head.send_replace(self.next_seq - 1);
        let m = &self.shared.metrics;
        m.batches.fetch_add(1, Ordering::Relaxed);
        m.events.fetch_add(accepted.len() as u64, Ordering::Relaxed);
        m.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        m.max_batch_events
            .fetch_max(accepted.len() as u64, Ordering::Relaxed);
        self.buf = self.hasher.update(std::mem::take(&mut self.buf));
    }

    /// Publishes what is now on disk, for the integrity monitor.
    fn publish_file_state(&self) {
        let state = super::integrity::FileState {
            manifest: Arc::clone(&self.manifest),
            active_len: self.active.len,
            active_crc: self.active.crc,
            last_seq: self.next_seq - 1,
        };
        *self.shared.files.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The copy of the active segment could not take the commit just made
    /// durable: read the copy again from the segment file, which holds it,
    /// into memory. If that fails too, a later repair could not restore
    /// every acknowledged event, so writes stop (poison), as after a failed
    /// write.
    fn refill_copy(&mut self, append: &std::io::Error) {
        match self.read_active_file() {
            Ok(bytes) => {
                tracing::warn!(error = %append, "the active segment's copy could not be appended to; it was read again from the segment file and is kept in memory");
                self.active.copy = ActiveCopy::in_memory(bytes);
            }
            Err(e) => self.poison(format!(
                "the active segment's copy could not be appended to ({append}), and the segment file could not be read back: {e}"
            )),
        }
    }

    /// The active segment's durable bytes, for the hasher to start over
    /// on: from the copy, else from the segment file. If neither can be
    /// read, nothing: the seal that would use the hash first checks the
    /// file against the copy, and that check then fails and stops it.
    fn active_bytes(&self) -> Vec<u8> {
        self.active
            .copy
            .to_vec()
            .or_else(|e| {
                tracing::warn!(error = %e, "cannot read the active segment's copy; hashing the segment file");
                self.read_active_file()
            })
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot hash the active segment again: the segment file could not be read back");
                Vec::new()
            })
    }

    /// The active segment's durable bytes read back from its file, checked
    /// against the CRC32C the writer keeps of what it wrote.
    fn read_active_file(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; usize::try_from(self.active.len).unwrap_or(usize::MAX)];
        self.active.file.read_exact_at(&mut bytes, 0)?;
        if crc32c::crc32c(&bytes) != self.active.crc {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it no longer matches what was written (CRC32C)",
            ));
        }
        Ok(bytes)
    }

    /// The outcome for `ev` if its `(source, id)` is stored already or
    /// earlier in this commit; `key` is the pair's hash.
    fn find_duplicate(
        &self,
        ev: &PreparedEvent,
        key: u64,
        checked: Checked<'_>,
        in_commit: &HashMap<u64, usize, BuildHasherDefault<PreHashed>>,
        accepted: &[Accepted],
    ) -> Option<Outcome> {
        if let Some(&i) = in_commit.get(&key) {
            let same = |a: &Accepted| a.event.source == ev.source && a.event.id == ev.id;
            // A hash collision inside one commit is astronomically rare; the
            // linear search keeps it exact anyway.
            let first = Some(i)
                .filter(|&i| same(&accepted[i]))
                .or_else(|| accepted.iter().position(same));
            if let Some(a) = first.map(|i| &accepted[i]) {
                let original = Original {
                    ty: a.event.ty.clone(),
                    time: a.event.time.clone(),
                };
                return Some(Outcome {
                    seq: a.seq,
                    original: Some(original),
                });
            }
        }
        // The active segment's keys are answered from memory: the
        // idempotency set keeps the seq and the time, the index the type
        // and source (never a read of the original from disk).
        let Some((seq, time)) = self.dedup.lookup(key, &ev.source, &ev.id) else {
            return self.find_sealed_duplicate(ev, checked);
        };
        let (ty, source) = {
            let idx = self.shared.index();
            match idx.names(seq)? {
                Names::Entry(ty, source) => (ty.to_string(), source.to_string()),
                Names::Sealed(part, files) => {
                    drop(idx);
                    // One block of the segment's index file (not the
                    // original event): read and checked, ~7 KiB.
                    match index::sealed_names(&part, &files, seq) {
                        Ok(names) => names,
                        Err(e) => {
                            // Still a duplicate (the idempotency set
                            // confirmed it with a second hash): answer it
                            // with the type sent, never store it twice.
                            // The monitor rebuilds the damaged index file.
                            tracing::warn!(error = %e, seq, "cannot read the type of a duplicate's original; answering with the type sent");
                            (ev.ty.clone(), ev.source.clone())
                        }
                    }
                }
            }
        };
        if source != ev.source {
            return self.find_sealed_duplicate(ev, checked);
        }
        Some(Outcome {
            seq,
            original: Some(Original { ty, time }),
        })
    }

    /// The outcome for `ev` if its `(source, id)` is in a sealed segment.
    /// When the request already looked in the segments sealed before
    /// `checked.before` ([`StoreHandle::append`]), only those sealed since
    /// are asked (their key blocks were just written: no disk read);
    /// otherwise all of them: the key filter first (one cache line; "no"
    /// for all but about one in five hundred new keys), then the key tables,
    /// newest first (retries are usually recent), one block each, every
    /// match confirmed by the stored event itself.
    ///
    /// [`StoreHandle::append`]: super::StoreHandle::append
    fn find_sealed_duplicate(&self, ev: &PreparedEvent, checked: Checked<'_>) -> Option<Outcome> {
        let after = match checked {
            Checked::Found(o) => return Some(o.clone()),
            Checked::Before(seq) => seq,
        };
        let order = super::segindex::key_order(&ev.source, &ev.id);
        let maybe = self.shared.sealed_keys().filter.may_contain(order);
        if !maybe {
            return None;
        }
        let (parts, files) = {
            let idx = self.shared.index();
            (idx.sealed_list(), idx.segment_files().clone())
        };
        let parts: Vec<_> = parts
            .into_iter()
            .filter(|p| p.first_seq() >= after)
            .collect();
        if parts.is_empty() {
            return None;
        }
        self.shared
            .metrics
            .sealed_key_lookups
            .fetch_add(1, Ordering::Relaxed);
        super::sealed::find_key(&parts, &files, order, &ev.source, &ev.id)
    }

    /// Starts building the sealed segments' key filter anew, sized for the
    /// keys they hold now (it is full; this also drops keys of segments
    /// that retention deleted), on a thread of its own: reading every
    /// sealed segment's key table (about 16 bytes per sealed event, 800 MB
    /// at 50 million) took seconds on the writer, and every commit waited.
    /// Meanwhile the full filter keeps answering (fuller means more
    /// lookups, never a wrong answer) and the keys of segments sealed
    /// since are kept for the new one ([`Self::finish_filter_rebuild`]).
    fn start_filter_rebuild(&mut self) {
        let (parts, files) = {
            let idx = self.shared.index();
            (idx.sealed_list(), idx.segment_files().clone())
        };
        let headroom = self.key_filter_headroom;
        let build = move || {
            let events: u64 = parts.iter().map(|p| p.summary.count()).sum();
            let t0 = std::time::Instant::now();
            let mut filter = KeyFilter::with_capacity(keyfilter::capacity_for(events, headroom));
            let mut covered = Vec::with_capacity(parts.len());
            for p in &parts {
                match p.key_orders(&files) {
                    Ok(orders) => orders.into_iter().for_each(|o| filter.insert(o)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot rebuild the sealed segments' key filter; keeping the full one");
                        return None;
                    }
                }
                covered.push(Covered::of(p.first_seq(), &p.summary.header.sha256));
            }
            tracing::info!(
                keys = filter.len(),
                bytes = filter.heap_bytes(),
                ms = t0.elapsed().as_millis() as u64,
                "sealed segments' key filter rebuilt"
            );
            Some(Rebuilt { filter, covered })
        };
        match std::thread::Builder::new()
            .name("msgbus-keyfilter-rebuild".into())
            .spawn(build)
        {
            Ok(thread) => {
                self.filter_rebuild = Some(FilterRebuild {
                    thread,
                    sealed_since: Vec::new(),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to rebuild the key filter; the next seal tries again")
            }
        }
    }

    /// Swaps in the filter [`Self::start_filter_rebuild`] built, once it
    /// is done, with the keys of the segments sealed since it started.
    fn finish_filter_rebuild(&mut self) {
        if !self
            .filter_rebuild
            .as_ref()
            .is_some_and(|r| r.thread.is_finished())
        {
            return;
        }
        let Some(r) = self.filter_rebuild.take() else {
            return;
        };
        let Ok(Some(mut rebuilt)) = r.thread.join() else {
            return;
        };
        for (orders, entry) in r.sealed_since {
            rebuilt.add_segment(&orders, entry);
        }
        self.shared.sealed_keys_mut().filter = rebuilt.filter;
        self.covered = rebuilt.covered;
        self.shared
            .metrics
            .key_filter_rebuilds
            .fetch_add(1, Ordering::Relaxed);
        self.publish_key_filter_size();
        self.save_key_filter(true);
    }

    /// Saves the key filter with the segments it holds (see
    /// [`keyfilter`](super::keyfilter)): on a thread of its own while the
    /// store runs (skipped while an earlier save is still writing; the next
    /// seal tries again), in place at a clean stop. The bytes are taken
    /// here, so they always match `covered`.
    fn save_key_filter(&mut self, background: bool) {
        if background && self.filter_saver.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = self.filter_saver.take() {
            let _ = h.join();
        }
        let first = self.shared.index().first_seq();
        self.covered.retain(|c| c.first_seq >= first);
        let covered = self.covered.clone();
        let shared = Arc::clone(&self.shared);
        let save = move || {
            if let Err(e) = keyfilter::save(&shared.data_dir, &shared.sealed_keys, &covered) {
                tracing::warn!(error = %e, "cannot save the key filter; the next start reads the key tables instead");
            }
        };
        self.seals_since_save = 0;
        if background {
            match std::thread::Builder::new()
                .name("msgbus-keyfilter".into())
                .spawn(save)
            {
                Ok(h) => self.filter_saver = Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a thread to save the key filter")
                }
            }
        } else {
            save();
        }
    }

    fn publish_key_filter_size(&self) {
        self.shared.metrics.key_filter_bytes.store(
            self.shared.sealed_keys().filter.heap_bytes() as u64,
            Ordering::Relaxed,
        );
    }

    /// Seals the active segment and starts the next. Out of descriptors
    /// ([`StoreError::TooManyOpenFiles`]), it changes nothing and can be
    /// tried again.
    fn seal_and_roll(&mut self) -> Result<()> {
        let mut took = SealTimes::start();
        self.verify_active_file_before_seal()?;
        took.lap(|t| &mut t.check);
        let data_dir = self.shared.data_dir.clone();
        let seg_dir = super::layout::segments_dir(&data_dir);
        let new_first = self.next_seq;
        // Created first: the step that needs new descriptors.
        let (file, path) = match recovery::create_segment_file(&seg_dir, new_first) {
            Ok(created) => created,
            Err(e) => {
                // Created but its directory not synced: an empty file
                // nothing refers to.
                let path = seg_dir.join(segment::file_name(new_first));
                if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        let undo_create = |path: &std::path::Path| {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a segment file of a postponed seal");
            }
        };
        let sha256 = match self.hasher.finish() {
            Ok(sha) => sha,
            Err(stopped) => {
                undo_create(&path);
                return Err(StoreError::file(
                    "hash",
                    &self.active.path,
                    std::io::Error::other(stopped),
                ));
            }
        };
        took.lap(|t| &mut t.hash);
        let sealed = SealedSegment {
            file: segment::file_name(self.active.first_seq),
            first_seq: self.active.first_seq,
            last_seq: new_first - 1,
            count: self.active.count,
            bytes: self.active.len,
            sha256,
        };
        // The index file goes first: once the manifest names the segment
        // sealed, the next start loads it instead of reading the segment.
        // (One written by a seal that stops before the manifest is replaced
        // belongs to no sealed segment; recovery removes it.)
        // Encoded under the index's read lock: readers go on meanwhile,
        // and only this thread ever takes the write lock.
        let idx_bytes = {
            let idx = self.shared.index.read().unwrap_or_else(|e| e.into_inner());
            idx.segment_records(sealed.first_seq, sealed.last_seq)
                .map(|r| r.encode(&super::segindex::Header::of(&sealed), &mut self.active.keys))
        };
        let idx_path = super::layout::segment_index_path(&data_dir, &sealed.file);
        let written = match &idx_bytes {
            Some(bytes) => super::segindex::store(&data_dir, &sealed.file, bytes),
            // Cannot happen: the active segment's events all have entries.
            None => Err(std::io::Error::other(
                "the in-memory index does not hold every event of the segment",
            )),
        };
        took.lap(|t| &mut t.index);
        // Readers of the sealed segment go through its index file from now
        // on, and its entries leave memory (if the file could not be
        // written, they stay until the next start).
        let part = match (&written, &idx_bytes) {
            (Ok(()), Some(idx_bytes)) => match super::segindex::decode_summary(idx_bytes) {
                Ok(summary) => Some(Arc::new(super::sealed::SealedPart::new(
                    summary,
                    self.active.index_pos,
                    idx_path.clone(),
                    self.active.path.clone(),
                ))),
                Err(e) => {
                    tracing::error!(error = %e, "a segment index just encoded does not decode; its entries stay in memory");
                    None
                }
            },
            _ => None,
        };
        drop(idx_bytes);
        if let Err(e) = written {
            let err = StoreError::file("write", &idx_path, e);
            if matches!(err, StoreError::TooManyOpenFiles { .. }) {
                drop(file);
                undo_create(&path);
                let _ = self.hasher.update(self.active_bytes());
                return Err(err);
            }
            // Not fatal: the segment is whole; the integrity monitor finds
            // the index file missing and has it rebuilt from the segment.
            tracing::warn!(error = %err, "cannot write the index of a sealed segment");
        }
        let covered_entry = Covered::of(sealed.first_seq, &sealed.sha256);
        let mut manifest = (*self.manifest).clone();
        manifest.sealed.push(sealed);
        manifest.active_first_seq = new_first;
        manifest.active_durable = None;
        if let Err(e) = manifest.store(&data_dir) {
            let err = StoreError::file("write", &super::layout::manifest_path(&data_dir), e);
            if matches!(err, StoreError::TooManyOpenFiles { .. }) {
                // The manifest was not replaced: undo, and hash the
                // segment again (the hasher started over at `finish`).
                drop(file);
                undo_create(&path);
                let _ = self.hasher.update(self.active_bytes());
            }
            return Err(err);
        }
        self.manifest = Arc::new(manifest);
        took.lap(|t| &mut t.manifest);
        let reader = recovery::reader(&path, new_first, 0)?;
        let (index_pos, converted) = {
            let mut idx = self.shared.index.write().unwrap_or_else(|e| e.into_inner());
            let sealed = part.is_some_and(|part| idx.seal(part));
            // Every event before the new segment is in a sealed part now.
            let converted = sealed && idx.entries_len() == 0;
            (idx.add_segment(reader), converted)
        };
        let mut over_capacity = false;
        if converted {
            // The sealed segment's keys move from the exact set in memory
            // to the filter in front of its key table. (Otherwise the
            // set keeps them, with the entries that stayed in memory.)
            // A few thousand at a time, so publishers asking the filter
            // meanwhile wait at most that long; until `before` moves below,
            // they leave this segment to the writer.
            let orders: Vec<u64> = self.active.keys.iter().map(|k| k.order).collect();
            for chunk in orders.chunks(4096) {
                let mut keys = self.shared.sealed_keys_mut();
                chunk.iter().for_each(|&o| keys.filter.insert(o));
                over_capacity = keys.filter.is_over_capacity();
            }
            if let Some(r) = &mut self.filter_rebuild {
                r.sealed_since.push((orders, covered_entry.clone()));
            }
            self.covered.push(covered_entry);
            self.dedup = DedupIndex::default();
        }
        // Segments before the new one are in the filter, or their keys
        // stayed in `dedup`, which the writer asks first.
        self.shared.sealed_keys_mut().before = new_first;
        if converted {
            self.seals_since_save += 1;
            if over_capacity && self.filter_rebuild.is_none() {
                self.start_filter_rebuild();
            } else if self.seals_since_save >= keyfilter::SAVE_EVERY_SEALS {
                self.save_key_filter(true);
            }
        }
        took.lap(|t| &mut t.keys);
        tracing::info!(
            sealed = %self.active.path.display(),
            events = self.active.count,
            bytes = self.active.len,
            ms = took.total_ms(),
            check_ms = took.check,
            hash_ms = took.hash,
            index_ms = took.index,
            manifest_ms = took.manifest,
            keys_ms = took.keys,
            "segment sealed"
        );
        self.active = ActiveSegment {
            file,
            path,
            first_seq: new_first,
            len: 0,
            count: 0,
            index_pos,
            // The sealed segment's copy is emptied and reused: its
            // anonymous file stays open.
            copy: {
                let mut copy =
                    std::mem::replace(&mut self.active.copy, ActiveCopy::in_memory(Vec::new()));
                copy.clear();
                copy
            },
            crc: 0,
            // Room for as many events as the segment just sealed, and a
            // sixteenth more.
            keys: Vec::with_capacity(recovery::key_capacity(&self.manifest, 0)),
        };
        self.publish_file_state();
        self.shared
            .metrics
            .segments_sealed
            .fetch_add(1, Ordering::Relaxed);
        // Every seal is followed by a backup, so each sealed segment has a
        // verified copy soon after it becomes immutable.
        self.request_backup(None, backups::Trigger::Seal);
        Ok(())
    }

    /// Records in the manifest how much of the active segment is durable
    /// now, so a start that finds it shorter knows acknowledged records are
    /// missing (see [`Manifest::active_durable`]). Done at shutdown and
    /// with each requested backup: one small atomic write, off the commit
    /// path's hot loop. Nothing is recorded while writes are refused: the
    /// file may then differ from what was acknowledged.
    fn record_durable_floor(&mut self) {
        if self.shared.commit_refusal().is_some() {
            return;
        }
        let floor = super::manifest::DurablePrefix {
            bytes: self.active.len,
            last_seq: self.next_seq - 1,
        };
        if self.manifest.active_durable == Some(floor) {
            return;
        }
        let mut manifest = (*self.manifest).clone();
        manifest.active_durable = Some(floor);
        match manifest.store(&self.shared.data_dir) {
            Ok(()) => {
                self.manifest = Arc::new(manifest);
                self.publish_file_state();
            }
            // The old manifest stays, with a lower floor, which is still true.
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the active segment's durable length in the manifest")
            }
        }
    }

    fn poison(&self, reason: String) {
        self.shared.alerts.raise(
            crate::alerts::Severity::Error,
            "poisoned",
            Some(self.active.path.display().to_string()),
            format!("writes refused until the server is restarted (the fsync is never retried): {reason}"),
        );
        *self
            .shared
            .poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}

/// Why a commit's write failed; the writer is poisoned with its text.
#[derive(Debug, thiserror::Error)]
enum WriteFailed {
    /// The `pwrite` failed.
    #[error("write to {} at offset {offset} failed: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The `fdatasync` failed (never retried: see the module docs).
    #[error("fdatasync of {} failed: {source}", path.display())]
    Sync {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn command_bytes(cmd: &Command) -> usize {
    match cmd {
        Command::Append { events, .. } => events.iter().map(|e| e.bytes().len() + 64).sum(),
        _ => 0,
    }
}

/// Where a seal's time went, in milliseconds (logged with "segment
/// sealed"): every commit waits behind a seal, so its parts are what a
/// publisher's worst latency is made of.
#[derive(Debug)]
struct SealTimes {
    started: std::time::Instant,
    last: std::time::Instant,
    /// Comparing the segment file with the writer's copy.
    check: u64,
    /// Finishing the segment's SHA-256.
    hash: u64,
    /// Encoding and writing its index file.
    index: u64,
    /// Replacing the manifest.
    manifest: u64,
    /// Swapping the index and moving its keys into the filter (with a
    /// rebuild of the filter when it is over capacity).
    keys: u64,
}

impl SealTimes {
    fn start() -> Self {
        let now = std::time::Instant::now();
        SealTimes {
            started: now,
            last: now,
            check: 0,
            hash: 0,
            index: 0,
            manifest: 0,
            keys: 0,
        }
    }

    /// Charges the time since the last lap to the part `part` picks.
    fn lap(&mut self, part: impl FnOnce(&mut Self) -> &mut u64) {
        let now = std::time::Instant::now();
        let ms = now.duration_since(self.last).as_millis() as u64;
        *part(self) = ms;
        self.last = now;
    }

    fn total_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A key filter being rebuilt on its own thread.
struct FilterRebuild {
    /// Answers the new filter and the segments it holds, or `None` when a
    /// key table could not be read (the full filter then stays).
    thread: std::thread::JoinHandle<Option<Rebuilt>>,
    /// The keys of each segment sealed since the rebuild listed the sealed
    /// segments, to add before the swap.
    sealed_since: Vec<(Vec<u64>, Covered)>,
}
