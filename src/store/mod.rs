//! The durable log. One writer thread owns every file of the data directory
//! (after start-up recovery, and except the backup thread's copies under
//! `backups/`); everything else talks to it through a [`StoreHandle`], the
//! store's only API, and reads typed snapshots of the state the store's
//! parts publish (the state itself, `Shared`, is private here; its doc
//! names each field's one owner, and "Who owns what" in `ARCHITECTURE.md`
//! says the same).
//!
//! Dependencies between the submodules run one way, down this list
//! (`cargo test --test architecture` fails on a cycle and prints it):
//!
//! - [`Store`] (`interface.rs`): the interface the HTTP layer is written
//!   against; [`StoreHandle`] is its first implementation
//! - [`handle`]: the clonable API (append, read, consumers, snapshots,
//!   backups, the monitor's checks); `snapshot.rs`: [`Status`] and
//!   [`StatsSnapshot`]; `catalog.rs`: the backup list's one owner
//! - [`writer`]: the actor: group commit, segment roll, poisoning, repairs
//! - [`recovery`]: start-up: lock, verify, cut torn tails, rebuild the index
//! - [`consumers`]: durable named cursors and queue ledgers (`consumers.json`)
//! - [`schemas`]: payload schema documents per event type (`schemas.json`)
//! - [`retention`]: deleting sealed segments outside the retention limits
//! - [`integrity`]: checks of the files against what the writer left
//! - [`backup`]: verified backups and restoring segments from them
//! - [`index`]: the in-memory index and recent-events cache readers use
//!   ([`chunked`]: its per-event table, which never moves as it grows)
//! - [`filter`]: the one filter type, compiled once per reader and matched
//!   in O(1) per event
//! - [`dedup`]: the `(source, id)` idempotency set of the active segment
//! - [`keyfilter`]: the Bloom filter of the sealed segments' keys, in front
//!   of their key tables on disk
//! - [`segindex`]: a sealed segment's index file (encode, decode, checks)
//! - [`sealed`]: a sealed segment as readers see it (its index file's
//!   summary in memory, its records read from the file on demand)
//! - [`manifest`]: the sealed-segment table, replaced atomically, and the
//!   one check of a sealed segment against it
//! - [`segment`]: record framing, scanning, torn tails
//! - [`lock`](mod@lock), [`fsutil`], [`error`]: the lock file, durable file
//!   helpers, typed errors
//! - [`layout`]: every name and path in the data directory

pub mod active_copy;
pub mod backup;
mod catalog;
pub mod chunked;
pub mod consumers;
pub mod dedup;
pub mod error;
pub mod files;
pub mod filter;
pub mod fsutil;
pub mod handle;
pub mod index;
pub mod integrity;
mod interface;
pub mod keyfilter;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod recovery;
pub mod retention;
pub mod schemas;
pub mod sealed;
pub mod segindex;
pub mod segment;
mod snapshot;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

pub use backup::BackupInfo;
pub use catalog::{BackupSummary, ScrubReport};
pub use consumers::{
    Consumer, ConsumerError, ConsumerStats, DeadLetter, QueueDelta, QueueLedger, QueueSpec,
    Start as ConsumerStart,
};
pub use error::{StoreError, WriteRefusal};
pub use filter::{Filter, Matcher, Scope};
pub use handle::{CheckRecord, EventPage, StoreHandle, StoredEvent};
pub use integrity::Finding;
pub use interface::{BoxFuture, Store};
pub use retention::RetentionStats;
pub use schemas::{SchemaCatalog, SchemaError, SchemaLimits, SchemaType, SchemaVersion};
pub use snapshot::{EventCounts, StatsSnapshot, Status, WriterCounters, OTHER_SERIES};
pub use writer::RepairOutcome;

/// Settings the store needs (a subset of the server's configuration).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Seal the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// Capacity of the writer's command queue.
    pub queue_capacity: usize,
    /// Bytes of recent events kept in memory for tail reads.
    pub read_cache_bytes: usize,
    /// Keys of headroom in the sealed segments' key filter (see
    /// [`keyfilter::capacity_for`]).
    pub key_filter_headroom: u64,
    /// Backups to keep (the newest verified one is always kept).
    pub backup_keep: usize,
    /// Distinct backup copies of each sealed segment that timer and
    /// on-demand backups make sure exist (see [`backup::Copies`]).
    pub backup_copies: backup::Copies,
    /// Bytes a second the backup thread reads when it checks a copy it did
    /// not just write (the newest backup at start, a copy before it is
    /// shared); 0: no limit. The integrity monitor's rate.
    pub backup_read_rate: u64,
    /// Sealed segment files kept open for readers (see [`index::SegmentFiles`]).
    pub segment_fd_cache: usize,
    /// Retention limits (all off by default).
    pub retention: retention::RetentionPolicy,
}

pub use crate::event::PreparedEvent;

/// What happened to one published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its sequence number (the original one for a duplicate).
    pub seq: u64,
    /// For a duplicate (its `(source, id)` was already stored, nothing new
    /// was written): the stored original's attributes.
    pub original: Option<Original>,
}

/// The attributes of a stored event a duplicate publish is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// `type` of the stored event.
    pub ty: String,
    /// `time` of the stored event.
    pub time: String,
}

impl Outcome {
    /// True when nothing new was written.
    pub fn is_duplicate(&self) -> bool {
        self.original.is_some()
    }
}

/// Counters the writer keeps; read lock-free by `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    /// Commit batches written.
    pub batches: AtomicU64,
    /// fdatasync calls.
    pub fsyncs: AtomicU64,
    /// Events appended (not counting duplicates).
    pub events: AtomicU64,
    /// Publishes answered as duplicates.
    pub duplicates: AtomicU64,
    /// New keys the sealed segments' key filter could not rule out, so
    /// their key tables were searched on disk (false positives and
    /// duplicates of sealed events).
    pub sealed_key_lookups: AtomicU64,
    /// Bytes of the sealed segments' key filter.
    pub key_filter_bytes: AtomicU64,
    /// Times the key filter was rebuilt larger since the start.
    pub key_filter_rebuilds: AtomicU64,
    /// Bytes appended to segments.
    pub bytes: AtomicU64,
    /// Sum of fsync latencies, microseconds.
    pub fsync_micros_total: AtomicU64,
    /// Slowest fsync, microseconds.
    pub fsync_micros_max: AtomicU64,
    /// Latest fsync, microseconds.
    pub fsync_micros_last: AtomicU64,
    /// Segments sealed since start.
    pub segments_sealed: AtomicU64,
    /// Largest number of events in one commit.
    pub max_batch_events: AtomicU64,
}

/// State the store's parts share, private to the store: the handle and
/// the writer, its backup thread and the jobs reach it; nothing outside
/// `store` does (it reads typed snapshots from the [`StoreHandle`]). Each
/// piece has one owner, the only one that changes it:
///
/// | Field | Owner (writes) |
/// |---|---|
/// | `index`, `head`, `files`, `metrics`, `poisoned`, `read_only`, `writer_alive` | the writer |
/// | `consumers`, `schemas`, `retention` | the writer (through their own types) |
/// | `backups` | [`catalog::BackupCatalog`]: the backup thread records, the monitor's scrub marks |
/// | `integrity`, `low_disk` | the integrity monitor, through [`StoreHandle::record_check`] and [`StoreHandle::set_low_disk`] |
/// | `descriptor_alert` | [`Shared::descriptors_exhausted`] |
#[derive(Debug)]
struct Shared {
    /// The committed index.
    index: RwLock<index::Index>,
    /// Writer counters.
    metrics: WriterMetrics,
    /// The newest committed sequence number; long-polls and streams wait on it.
    head: watch::Sender<u64>,
    /// Why the writer refuses writes, if it does.
    poisoned: Mutex<Option<String>>,
    /// False once the writer thread has exited.
    writer_alive: AtomicBool,
    /// The data directory.
    data_dir: PathBuf,
    /// Whether startup recovery cut a torn tail.
    recovered_torn_tail: bool,
    /// Writer queue capacity, for stats.
    queue_capacity: usize,
    /// What the writer last left on disk, for the integrity monitor.
    files: RwLock<integrity::FileState>,
    /// Why writes are refused until a repair succeeds (damage that could
    /// not be repaired yet), if they are.
    read_only: Mutex<Option<String>>,
    /// Why publishing answers 507 (free space below the minimum), if it does.
    low_disk: Mutex<Option<String>>,
    /// The alert list and webhook.
    alerts: std::sync::Arc<crate::alerts::Alerts>,
    /// Backups known to this process, oldest first.
    backups: catalog::BackupCatalog,
    /// Integrity monitor counters and state.
    integrity: Mutex<IntegrityState>,
    /// Durable consumers, as last committed by the writer.
    consumers: consumers::Consumers,
    /// Payload schemas, as last committed by the writer.
    schemas: schemas::Schemas,
    /// Retention limits and what retention has deleted.
    retention: retention::Retention,
    /// When the last "descriptors exhausted" alert was raised.
    descriptor_alert: Mutex<Option<Instant>>,
    /// The sealed segments' key filter (the writer adds to it at seals).
    sealed_keys: RwLock<keyfilter::SealedKeys>,
}

/// At most one "descriptors exhausted" alert this often.
const DESCRIPTOR_ALERT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The integrity monitor's state, shown in `/stats` and `/health`.
#[derive(Debug, Clone, Default)]
pub struct IntegrityState {
    /// `ok`, `repaired`, `read_only` or `unchecked`.
    pub status: String,
    /// When the last check finished (RFC 3339).
    pub last_check: Option<String>,
    /// How long it took, milliseconds.
    pub last_check_ms: f64,
    /// Checks run since start.
    pub checks: u64,
    /// Problems detected since start.
    pub detections: u64,
    /// Problems repaired since start.
    pub repairs: u64,
    /// Repairs that failed since start.
    pub failures: u64,
    /// Findings of the last check that are not repaired.
    pub open_findings: Vec<String>,
}

impl Shared {
    /// Read access to the index. A panicked writer cannot leave the index
    /// half-updated (it is only mutated under the lock by whole entries), so
    /// a poisoned lock is still safe to read.
    fn index(&self) -> std::sync::RwLockReadGuard<'_, index::Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The sealed segments' key filter, to ask.
    fn sealed_keys(&self) -> std::sync::RwLockReadGuard<'_, keyfilter::SealedKeys> {
        self.sealed_keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The sealed segments' key filter, to change (the writer only).
    fn sealed_keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, keyfilter::SealedKeys> {
        self.sealed_keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The poisoning reason, if any.
    fn poison_reason(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the writer refuses to commit, if it does: poisoned or
    /// read-only (low disk is checked before an append is queued).
    fn commit_refusal(&self) -> Option<WriteRefusal> {
        if let Some(p) = self.poison_reason() {
            return Some(WriteRefusal::Poisoned(p));
        }
        lock(&self.read_only).clone().map(WriteRefusal::ReadOnly)
    }

    /// Why an append is refused before it is queued, if it is: poisoned,
    /// read-only, low on disk (in that order), or the writer has stopped.
    fn write_refusal(&self) -> Option<WriteRefusal> {
        if let Some(r) = self.commit_refusal() {
            return Some(r);
        }
        if let Some(r) = lock(&self.low_disk).clone() {
            return Some(WriteRefusal::LowDisk(r));
        }
        (!self.writer_alive.load(Ordering::SeqCst)).then_some(WriteRefusal::ShuttingDown)
    }

    /// Reports that an operation failed for lack of file descriptors
    /// (EMFILE/ENFILE): a warning alert (kind `descriptors`, at most one
    /// every 10 s; the rest are logged). Nothing is poisoned or made
    /// read-only: the operation is retried or answered 503.
    pub fn descriptors_exhausted(&self, what: &str) {
        let now = Instant::now();
        let raise = {
            let mut last = lock(&self.descriptor_alert);
            let due = last.is_none_or(|t| now.duration_since(t) >= DESCRIPTOR_ALERT_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if raise {
            self.alerts.raise(
                crate::alerts::Severity::Warning,
                "descriptors",
                None,
                format!("out of file descriptors (transient, nothing damaged): {what}"),
            );
        } else {
            tracing::warn!(what, "out of file descriptors");
        }
    }

    /// What the writer last left on disk.
    fn file_state(&self) -> integrity::FileState {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record_fsync(&self, micros: u64) {
        let m = &self.metrics;
        m.fsyncs.fetch_add(1, Ordering::Relaxed);
        m.fsync_micros_total.fetch_add(micros, Ordering::Relaxed);
        m.fsync_micros_last.store(micros, Ordering::Relaxed);
        m.fsync_micros_max.fetch_max(micros, Ordering::Relaxed);
    }
}

/// Locks a mutex, ignoring poisoning: every value behind these mutexes is
/// replaced whole, so a panic cannot leave one half-written.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
