//! `GET /stats`: a JSON snapshot for dashboards. Built from the committed
//! index and the writer's atomic counters; never waits for the writer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::store::StoreHandle;

/// The whole snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Stored events.
    pub events: EventStats,
    /// Files on disk.
    pub store: StoreStats,
    /// The writer and its group commit.
    pub writer: WriterStats,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
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
    /// Events per `type`.
    pub by_type: BTreeMap<String, u64>,
    /// Events per `source`.
    pub by_source: BTreeMap<String, u64>,
}

/// Store files.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStats {
    /// The data directory.
    pub data_dir: String,
    /// Bytes in all segments.
    pub bytes: u64,
    /// Segment files (sealed + the active one).
    pub segments: u64,
    /// Bytes of recent events held in memory for tail reads.
    pub read_cache_bytes: u64,
    /// Whether startup recovery cut a torn tail.
    pub recovered_torn_tail: bool,
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
pub fn snapshot(store: &StoreHandle, uptime_seconds: f64) -> Stats {
    let shared = store.shared();
    let (events, store_stats) = {
        let idx = shared.index();
        let total = idx.len() as u64;
        (
            EventStats {
                total,
                first_seq: if total == 0 { 0 } else { idx.first_seq() },
                last_seq: if total == 0 { 0 } else { idx.last_seq() },
                by_type: idx.type_counts().map(|(k, v)| (k.to_string(), v)).collect(),
                by_source: idx
                    .source_counts()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
            StoreStats {
                data_dir: shared.data_dir.display().to_string(),
                bytes: idx.store_bytes(),
                segments: idx.segment_count() as u64,
                read_cache_bytes: idx.cache_bytes() as u64,
                recovered_torn_tail: shared.recovery.torn_tail.is_some(),
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
    Stats {
        events,
        store: store_stats,
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

/// Store, writer and event statistics.
#[utoipa::path(get, path = "/stats", tag = "operations",
    responses((status = 200, description = "A snapshot", body = Stats)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(snapshot(
        &state.store,
        state.settings.started.elapsed().as_secs_f64(),
    ))
}
