//! `GET /stats`: a JSON snapshot for dashboards. Built from the committed
//! index and the writer's atomic counters; never waits for the writer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::store::{lock, IntegrityState, StoreHandle};

/// The whole snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Stored events.
    pub events: EventStats,
    /// Files on disk.
    pub store: StoreStats,
    /// The writer and its group commit.
    pub writer: WriterStats,
    /// Self-healing: monitor state, backups, alerts.
    pub integrity: IntegrityStats,
    /// Retention limits, the oldest retained seq and what was deleted.
    pub retention: crate::store::retention::RetentionStats,
    /// Durable consumers and their lag.
    pub consumers: crate::store::consumers::ConsumerStats,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
}

/// Self-healing state.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrityStats {
    /// The monitor's state and counters.
    #[serde(flatten)]
    pub monitor: IntegrityState,
    /// Why writes are refused until a repair succeeds, if they are.
    pub read_only: Option<String>,
    /// Why publishing answers 507, if it does.
    pub low_disk: Option<String>,
    /// Backups.
    pub backups: BackupStats,
    /// Alerts raised since start, per kind.
    pub alerts: BTreeMap<String, u64>,
}

/// Backup summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupStats {
    /// Backups on disk.
    pub count: u64,
    /// Creation time of the newest.
    pub newest: Option<String>,
    /// Creation time of the newest that verified.
    pub newest_verified: Option<String>,
    /// Last seq held by the newest verified backup.
    pub newest_verified_last_seq: Option<u64>,
}

/// Event totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventStats {
    /// Number of stored events.
    pub total: u64,
    /// Oldest stored seq (0 when empty).
    pub first_seq: u64,
    /// Newest stored seq (0 when empty).
    pub last_seq: u64,
    /// Events per `type`: the busiest `--max-label-series` types, and
    /// `other` summing the rest.
    pub by_type: BTreeMap<String, u64>,
    /// Events per `source`: the busiest `--max-label-series` sources, and
    /// `other` summing the rest.
    pub by_source: BTreeMap<String, u64>,
}

/// Store files.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStats {
    /// Bytes in all segments.
    pub bytes: u64,
    /// Segment files (sealed + the active one).
    pub segments: u64,
    /// Bytes of recent events held in memory for tail reads.
    pub read_cache_bytes: u64,
    /// Whether startup recovery cut a torn tail.
    pub recovered_torn_tail: bool,
    /// Distinct types, sources and subjects of the retained events (the
    /// index forgets those retention deleted the last events of).
    pub distinct: DistinctStats,
    /// Bytes the index holds for those strings and their counters
    /// (approximate).
    pub interned_bytes: u64,
}

/// Distinct strings the index holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistinctStats {
    /// Distinct `type` values.
    pub types: u64,
    /// Distinct `source` values.
    pub sources: u64,
    /// Distinct `subject` values.
    pub subjects: u64,
}

/// Writer counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriterStats {
    /// Commands waiting in the queue.
    pub queue_depth: u64,
    /// Queue capacity.
    pub queue_capacity: u64,
    /// Commits written.
    pub batches: u64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Events written since start.
    pub events_written: u64,
    /// Publishes answered as duplicates since start.
    pub duplicates: u64,
    /// Average events made durable per fsync.
    pub events_per_fsync: f64,
    /// Largest commit, in events.
    pub max_batch_events: u64,
    /// fsync latency in microseconds.
    pub fsync_latency_us: FsyncLatency,
    /// Segments sealed since start.
    pub segments_sealed: u64,
    /// Why writes are refused, if they are.
    pub poisoned: Option<String>,
    /// Whether the writer thread runs.
    pub alive: bool,
}

/// fsync latency summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct FsyncLatency {
    /// Latest.
    pub last: u64,
    /// Mean since start.
    pub avg: f64,
    /// Slowest since start.
    pub max: u64,
}

/// Builds the snapshot (also used by `/metrics` and `/health`).
///
/// Per-type and per-source counts are the `max_series` largest, plus one
/// [`OTHER`] entry summing the rest: with 100,000 distinct types `/metrics`
/// was 4 MB and every scrape built it.
pub fn snapshot(store: &StoreHandle, uptime_seconds: f64, max_series: usize) -> Stats {
    let shared = store.shared();
    let (events, store_stats) = {
        let idx = shared.index();
        let total = idx.len() as u64;
        (
            EventStats {
                total,
                first_seq: if total == 0 { 0 } else { idx.first_seq() },
                last_seq: if total == 0 { 0 } else { idx.last_seq() },
                by_type: busiest(idx.type_counts(), max_series),
                by_source: busiest(idx.source_counts(), max_series),
            },
            StoreStats {
                bytes: idx.store_bytes(),
                segments: idx.segment_count() as u64,
                read_cache_bytes: idx.cache_bytes() as u64,
                recovered_torn_tail: shared.recovery.torn_tail.is_some(),
                distinct: {
                    let (types, sources, subjects) = idx.distinct();
                    DistinctStats {
                        types: types as u64,
                        sources: sources as u64,
                        subjects: subjects as u64,
                    }
                },
                interned_bytes: idx.interned_bytes() as u64,
            },
        )
    };
    let m = &shared.metrics;
    let fsyncs = m.fsyncs.load(Ordering::Relaxed);
    let written = m.events.load(Ordering::Relaxed);
    let per = |x: u64| {
        if fsyncs == 0 {
            0.0
        } else {
            x as f64 / fsyncs as f64
        }
    };
    // Summarised under the lock: the list holds every backup's file list,
    // far too much to copy on each scrape.
    let backups = {
        let list = lock(&shared.backups);
        let newest_verified = list.iter().rev().find(|b| b.verified);
        BackupStats {
            count: list.len() as u64,
            newest: list.last().map(|b| b.manifest.created_at.clone()),
            newest_verified: newest_verified.map(|b| b.manifest.created_at.clone()),
            newest_verified_last_seq: newest_verified.map(|b| b.manifest.last_seq),
        }
    };
    let integrity = IntegrityStats {
        monitor: lock(&shared.integrity).clone(),
        read_only: lock(&shared.read_only).clone(),
        low_disk: lock(&shared.low_disk).clone(),
        backups,
        alerts: shared.alerts.counts(),
    };
    Stats {
        events,
        store: store_stats,
        integrity,
        retention: shared.retention.stats(shared.index().first_seq()),
        consumers: shared.consumers.stats(store.head()),
        writer: WriterStats {
            queue_depth: store.queue_depth() as u64,
            queue_capacity: shared.queue_capacity as u64,
            batches: m.batches.load(Ordering::Relaxed),
            fsyncs,
            events_written: written,
            duplicates: m.duplicates.load(Ordering::Relaxed),
            events_per_fsync: per(written),
            max_batch_events: m.max_batch_events.load(Ordering::Relaxed),
            fsync_latency_us: FsyncLatency {
                last: m.fsync_micros_last.load(Ordering::Relaxed),
                avg: per(m.fsync_micros_total.load(Ordering::Relaxed)),
                max: m.fsync_micros_max.load(Ordering::Relaxed),
            },
            segments_sealed: m.segments_sealed.load(Ordering::Relaxed),
            poisoned: shared.poison_reason(),
            alive: store.writer_alive(),
        },
        uptime_seconds,
    }
}

/// The key summing the counts beyond the busiest `--max-label-series`
/// (a real type or source of this name is summed in with them).
pub const OTHER: &str = "other";

/// The `n` largest counts by name, plus [`OTHER`] with the sum of the rest
/// (when there is a rest).
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
    let mut out: BTreeMap<String, u64> = all.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if rest > 0 {
        *out.entry(OTHER.to_string()).or_default() += rest;
    }
    out
}

/// Store, writer and event statistics.
#[utoipa::path(get, path = "/stats", tag = "operations",
    responses((status = 200, description = "A snapshot", body = Stats)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(snapshot(
        &state.store,
        state.settings.started.elapsed().as_secs_f64(),
        state.settings.max_label_series,
    ))
}
