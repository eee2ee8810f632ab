//! `GET /stats`: a JSON snapshot for dashboards. Built from the committed
//! index and the writer's atomic counters; never waits for the writer.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::api::{ConsumerStats, IntegrityState, RetentionStats};
use super::AppState;
use crate::store::{StatsSnapshot, Store};

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
    pub retention: RetentionStats,
    /// Durable consumers and their lag.
    pub consumers: ConsumerStats,
    /// Payload schema validations and rejections.
    pub schemas: SchemaStats,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// The server's version (`msgbus --version`).
    #[schema(example = "0.1.0")]
    pub version: &'static str,
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

/// Payload schema validations since start.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct SchemaStats {
    /// Types whose payloads are validated now.
    pub active_types: u64,
    /// Events checked against a schema.
    pub validations: u64,
    /// Events refused by their schema.
    pub rejections: u64,
    /// Per type: the `--max-label-series` types with the most validations,
    /// and `other` summing the rest.
    pub by_type: BTreeMap<String, SchemaTypeStats>,
}

/// One type's validations.
#[derive(Debug, Default, Clone, Copy, Serialize, ToSchema)]
pub struct SchemaTypeStats {
    /// Events checked.
    pub validations: u64,
    /// Events refused.
    pub rejections: u64,
}

/// The registry's counters, per type capped as `by_type` is.
pub fn schema_stats(state: &AppState) -> SchemaStats {
    let max = state.settings.max_label_series;
    let mut all: Vec<(String, crate::schemas::TypeCounts)> =
        state.schemas.counts().into_iter().collect();
    let mut out = SchemaStats {
        active_types: state.schemas.active_types() as u64,
        validations: all.iter().map(|(_, c)| c.validations).sum(),
        rejections: all.iter().map(|(_, c)| c.rejections).sum(),
        by_type: BTreeMap::new(),
    };
    // Most validations first, ties by name so the choice is stable.
    all.sort_by(|a, b| b.1.validations.cmp(&a.1.validations).then(a.0.cmp(&b.0)));
    for (i, (ty, c)) in all.into_iter().enumerate() {
        let key = if i < max { ty } else { OTHER.to_string() };
        let e = out.by_type.entry(key).or_default();
        e.validations += c.validations;
        e.rejections += c.rejections;
    }
    out
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
    /// Events with an entry in memory: those of the active segment (and
    /// of a sealed one whose index file could not be written). Every
    /// other event is found through its segment's index file, so memory
    /// does not grow with the events stored.
    pub memory_entries: u64,
    /// Sealed segments read through their index files.
    pub indexed_segments: u64,
}

/// Distinct strings the index holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistinctStats {
    /// Distinct `type` values.
    pub types: u64,
    /// Distinct `source` values.
    pub sources: u64,
    /// Distinct `subject` values: exact among the active segment's events;
    /// for sealed segments, the sum of each segment's distinct subjects
    /// (their subject tables stay on disk, so a subject used in several
    /// segments counts once per segment).
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
    /// New events whose `(source, id)` the sealed segments' key filter
    /// could not rule out, so their key tables were searched on disk (its
    /// false positives, about 0.1%, and duplicates of sealed events).
    pub sealed_key_lookups: u64,
    /// Bytes of the sealed segments' key filter (about 2 per sealed event).
    pub key_filter_bytes: u64,
    /// Times the key filter filled up and was rebuilt larger (in the
    /// background) since the server started.
    pub key_filter_rebuilds: u64,
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

/// Builds the snapshot (also used by `/metrics`) from the store's
/// [`StatsSnapshot`].
///
/// Per-type and per-source counts are the `max_series` largest, plus one
/// [`OTHER`] entry summing the rest: with 100,000 distinct types `/metrics`
/// was 4 MB and every scrape built it.
pub fn snapshot(store: &dyn Store, uptime_seconds: f64, max_series: usize) -> Stats {
    let StatsSnapshot {
        events: e,
        writer: w,
        status,
        integrity,
        backups,
        alerts,
        retention,
        consumers,
    } = store.stats(max_series);
    let per = |x: u64| {
        if w.fsyncs == 0 {
            0.0
        } else {
            x as f64 / w.fsyncs as f64
        }
    };
    Stats {
        events: EventStats {
            total: e.total,
            first_seq: e.first_seq,
            last_seq: e.last_seq,
            by_type: e.by_type,
            by_source: e.by_source,
        },
        store: StoreStats {
            bytes: e.bytes,
            segments: e.segments,
            read_cache_bytes: e.read_cache_bytes,
            recovered_torn_tail: e.recovered_torn_tail,
            distinct: DistinctStats {
                types: e.distinct_types,
                sources: e.distinct_sources,
                subjects: e.distinct_subjects,
            },
            interned_bytes: e.interned_bytes,
            memory_entries: e.memory_entries,
            indexed_segments: e.indexed_segments,
        },
        integrity: IntegrityStats {
            monitor: integrity.into(),
            read_only: status.read_only,
            low_disk: status.low_disk,
            backups: BackupStats {
                count: backups.count,
                newest: backups.newest,
                newest_verified: backups.newest_verified,
                newest_verified_last_seq: backups.newest_verified_last_seq,
            },
            alerts,
        },
        retention: retention.into(),
        consumers: consumers.into(),
        schemas: SchemaStats::default(),
        writer: WriterStats {
            queue_depth: w.queue_depth,
            queue_capacity: w.queue_capacity,
            batches: w.batches,
            fsyncs: w.fsyncs,
            events_written: w.events_written,
            duplicates: w.duplicates,
            events_per_fsync: per(w.events_written),
            max_batch_events: w.max_batch_events,
            fsync_latency_us: FsyncLatency {
                last: w.fsync_micros_last,
                avg: per(w.fsync_micros_total),
                max: w.fsync_micros_max,
            },
            segments_sealed: w.segments_sealed,
            sealed_key_lookups: w.sealed_key_lookups,
            key_filter_bytes: w.key_filter_bytes,
            key_filter_rebuilds: w.key_filter_rebuilds,
            poisoned: status.poisoned,
            alive: status.writer_alive,
        },
        uptime_seconds,
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// The key summing the counts beyond the busiest `--max-label-series`
/// (in `/stats` and `/metrics`).
pub const OTHER: &str = crate::store::OTHER_SERIES;

/// Store, writer and event statistics.
#[utoipa::path(get, path = "/stats", tag = "operations",
    responses((status = 200, description = "A snapshot", body = Stats)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    let mut s = snapshot(
        state.store.as_ref(),
        state.settings.started.elapsed().as_secs_f64(),
        state.settings.max_label_series,
    );
    s.schemas = schema_stats(&state);
    Json(s)
}
