//! Typed snapshots of the store's state, what everything outside the store
//! reads instead of its locks: [`Status`] (health, readiness, why writes
//! are refused) and [`StatsSnapshot`] (`/stats`, `/metrics`). Each is a
//! copy taken under short holds of the store's locks; holding one blocks
//! nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::catalog::BackupSummary;
use super::consumers::ConsumerStats;
use super::retention::RetentionStats;
use super::{lock, IntegrityState, Shared, WriteRefusal};

/// The store's health at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether the writer thread runs.
    pub writer_alive: bool,
    /// Why writes are refused after a failed write (until restart), if they are.
    pub poisoned: Option<String>,
    /// Why writes are refused until damaged data is repaired, if they are.
    pub read_only: Option<String>,
    /// Why publishing is refused for lack of disk space, if it is.
    pub low_disk: Option<String>,
    /// The newest committed seq.
    pub last_seq: u64,
    /// The oldest retained seq (the next one to be written when the store
    /// holds no event).
    pub first_seq: u64,
    /// Commands waiting for the writer.
    pub queue_depth: usize,
    /// Why a backend that serves over the network cannot serve now (not
    /// connected, no stream leader), if it cannot; never set by the file
    /// store.
    pub unavailable: Option<String>,
}

impl Status {
    /// Why writes are refused now, if they are: poisoned, read-only, low on
    /// disk, or stopped (in that order).
    pub fn write_refusal(&self) -> Option<WriteRefusal> {
        if let Some(p) = &self.poisoned {
            return Some(WriteRefusal::Poisoned(p.clone()));
        }
        if let Some(r) = &self.read_only {
            return Some(WriteRefusal::ReadOnly(r.clone()));
        }
        if let Some(r) = &self.low_disk {
            return Some(WriteRefusal::LowDisk(r.clone()));
        }
        (!self.writer_alive).then_some(WriteRefusal::ShuttingDown)
    }
}

/// What the index holds.
#[derive(Debug, Clone, Default)]
pub struct EventCounts {
    /// Events stored.
    pub total: u64,
    /// Oldest stored seq (0 when empty).
    pub first_seq: u64,
    /// Newest stored seq (0 when empty).
    pub last_seq: u64,
    /// Events per type: the `max_series` busiest, plus [`OTHER_SERIES`]
    /// summing the rest.
    pub by_type: BTreeMap<String, u64>,
    /// Events per source, likewise.
    pub by_source: BTreeMap<String, u64>,
    /// Bytes of events stored.
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes held by the recent-events cache.
    pub read_cache_bytes: u64,
    /// Whether startup recovery cut a torn tail.
    pub recovered_torn_tail: bool,
    /// Distinct types, sources and subjects.
    pub distinct_types: u64,
    /// Distinct sources.
    pub distinct_sources: u64,
    /// Distinct subjects.
    pub distinct_subjects: u64,
    /// Bytes held by the interned names.
    pub interned_bytes: u64,
    /// Events with an entry in memory.
    pub memory_entries: u64,
    /// Sealed segments read through their index files.
    pub indexed_segments: u64,
}

/// The writer's counters.
#[derive(Debug, Clone, Default)]
pub struct WriterCounters {
    /// Commands waiting for the writer.
    pub queue_depth: u64,
    /// The queue's capacity.
    pub queue_capacity: u64,
    /// Commit batches written.
    pub batches: u64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Events appended (not counting duplicates).
    pub events_written: u64,
    /// Publishes answered as duplicates.
    pub duplicates: u64,
    /// Largest number of events in one commit.
    pub max_batch_events: u64,
    /// Latest fsync, microseconds.
    pub fsync_micros_last: u64,
    /// Sum of fsync latencies, microseconds.
    pub fsync_micros_total: u64,
    /// Slowest fsync, microseconds.
    pub fsync_micros_max: u64,
    /// Segments sealed since start.
    pub segments_sealed: u64,
    /// Key-table searches of sealed segments.
    pub sealed_key_lookups: u64,
    /// Bytes of the sealed segments' key filter.
    pub key_filter_bytes: u64,
    /// Times the key filter was rebuilt larger since start.
    pub key_filter_rebuilds: u64,
}

/// Everything `/stats` and `/metrics` show of the store.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    /// The index.
    pub events: EventCounts,
    /// The writer's counters.
    pub writer: WriterCounters,
    /// Health.
    pub status: Status,
    /// The integrity monitor's state.
    pub integrity: IntegrityState,
    /// Backups.
    pub backups: BackupSummary,
    /// Alert counts by kind.
    pub alerts: BTreeMap<String, u64>,
    /// Retention limits and what retention deleted.
    pub retention: RetentionStats,
    /// Durable consumers and their lag.
    pub consumers: ConsumerStats,
}

/// The label that sums every series beyond the busiest `max_series`.
pub const OTHER_SERIES: &str = "other";

impl Shared {
    /// A [`Status`] now; `queue_depth` comes from the handle.
    pub(super) fn status(&self, queue_depth: usize, tx_open: bool) -> Status {
        Status {
            writer_alive: self.writer_alive.load(Ordering::SeqCst) && tx_open,
            poisoned: self.poison_reason(),
            read_only: lock(&self.read_only).clone(),
            low_disk: lock(&self.low_disk).clone(),
            last_seq: *self.head.borrow(),
            first_seq: self.index().first_seq(),
            queue_depth,
            unavailable: None,
        }
    }

    /// A [`StatsSnapshot`] now.
    pub(super) fn stats(&self, status: Status, max_series: usize) -> StatsSnapshot {
        let events = {
            let idx = self.index();
            let total = idx.len() as u64;
            let (types, sources, subjects) = idx.distinct();
            EventCounts {
                total,
                first_seq: if total == 0 { 0 } else { idx.first_seq() },
                last_seq: if total == 0 { 0 } else { idx.last_seq() },
                by_type: busiest(idx.type_counts(), max_series),
                by_source: busiest(idx.source_counts(), max_series),
                bytes: idx.store_bytes(),
                segments: idx.segment_count() as u64,
                read_cache_bytes: idx.cache_bytes() as u64,
                recovered_torn_tail: self.recovered_torn_tail,
                distinct_types: types as u64,
                distinct_sources: sources as u64,
                distinct_subjects: subjects as u64,
                interned_bytes: idx.interned_bytes() as u64,
                memory_entries: idx.entries_len() as u64,
                indexed_segments: idx.sealed_parts() as u64,
            }
        };
        let m = &self.metrics;
        let writer = WriterCounters {
            queue_depth: status.queue_depth as u64,
            queue_capacity: self.queue_capacity as u64,
            batches: m.batches.load(Ordering::Relaxed),
            fsyncs: m.fsyncs.load(Ordering::Relaxed),
            events_written: m.events.load(Ordering::Relaxed),
            duplicates: m.duplicates.load(Ordering::Relaxed),
            max_batch_events: m.max_batch_events.load(Ordering::Relaxed),
            fsync_micros_last: m.fsync_micros_last.load(Ordering::Relaxed),
            fsync_micros_total: m.fsync_micros_total.load(Ordering::Relaxed),
            fsync_micros_max: m.fsync_micros_max.load(Ordering::Relaxed),
            segments_sealed: m.segments_sealed.load(Ordering::Relaxed),
            sealed_key_lookups: m.sealed_key_lookups.load(Ordering::Relaxed),
            key_filter_bytes: m.key_filter_bytes.load(Ordering::Relaxed),
            key_filter_rebuilds: m.key_filter_rebuilds.load(Ordering::Relaxed),
        };
        StatsSnapshot {
            events,
            writer,
            integrity: lock(&self.integrity).clone(),
            backups: self.backups.summary(),
            alerts: self.alerts.counts(),
            retention: self.retention.stats(self.index().first_seq()),
            consumers: self.consumers.stats(status.last_seq),
            status,
        }
    }
}

/// The `n` largest counts by name, plus [`OTHER_SERIES`] with the sum of
/// the rest (when there is any): with 100,000 distinct types `/metrics`
/// and `/stats` stay small. Runs over the interned counts without copying
/// every name first.
fn busiest<'a>(counts: impl Iterator<Item = (&'a str, u64)>, n: usize) -> BTreeMap<String, u64> {
    let mut all: Vec<(&str, u64)> = counts.collect();
    let mut rest = 0;
    if all.len() > n {
        // Largest first, ties by name so the choice is stable.
        let order = |a: &(&str, u64), b: &(&str, u64)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
        if n > 0 {
            all.select_nth_unstable_by(n - 1, order);
        }
        rest = all[n..].iter().map(|(_, c)| c).sum();
        all.truncate(n);
    }
    // Summed, not collected: the counts may name OTHER_SERIES already
    // (events under names the sealed segments keep only on disk).
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in all {
        *out.entry(k.to_string()).or_default() += v;
    }
    if rest > 0 {
        *out.entry(OTHER_SERIES.to_string()).or_default() += rest;
    }
    out
}
