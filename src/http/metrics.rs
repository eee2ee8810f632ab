//! `GET /metrics`: Prometheus text exposition (format 0.0.4), rendered from
//! the same snapshot as `/stats` so the two never disagree.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::stats::{schema_stats, snapshot};
use super::AppState;

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let s = snapshot(
        state.store.as_ref(),
        state.settings.started.elapsed().as_secs_f64(),
        state.settings.max_label_series,
    );
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP msgbus_{name} {help}\n# TYPE msgbus_{name} {kind}\nmsgbus_{name} {value}"
        );
    };
    metric(
        "events_stored",
        "gauge",
        "Events in the store.",
        s.events.total as f64,
    );
    metric(
        "last_seq",
        "gauge",
        "Newest stored sequence number.",
        s.events.last_seq as f64,
    );
    metric(
        "store_bytes",
        "gauge",
        "Bytes in all segment files.",
        s.store.bytes as f64,
    );
    metric(
        "segments",
        "gauge",
        "Segment files.",
        s.store.segments as f64,
    );
    metric(
        "read_cache_bytes",
        "gauge",
        "Bytes of recent events cached in memory.",
        s.store.read_cache_bytes as f64,
    );
    metric(
        "index_memory_entries",
        "gauge",
        "Events with an index entry in memory (the active segment's); the rest are found through their segments' index files.",
        s.store.memory_entries as f64,
    );
    metric(
        "rate_limited_total",
        "counter",
        "Requests refused with 429 because their token or address was over its rate (--rate, a token's own rate).",
        state.rate_limits.refused() as f64,
    );
    metric(
        "read_rate_limited_total",
        "counter",
        "Event reads refused with 429 because their token or address was in debt on its read byte rate (--read-rate, a token's own read_rate).",
        state.read_limits.refused() as f64,
    );
    metric(
        "read_bytes_charged_total",
        "counter",
        "Bytes of event reads charged to read byte rates (only reads under a read rate are charged).",
        state.read_limits.charged() as f64,
    );
    metric(
        "auth_unauthorized_total",
        "counter",
        "Requests answered 401: no token, or not a live one.",
        state
            .auth
            .unauthorized
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    metric(
        "auth_forbidden_total",
        "counter",
        "Requests answered 403: the token's role or scope forbids it (or a cross-origin browser request).",
        state.auth.forbidden.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    metric(
        "auth_failures_limited_total",
        "counter",
        "Failed authentications answered 429: over --auth-failure-rate from one address.",
        state.auth.failures_limited() as f64,
    );
    metric(
        "tokens",
        "gauge",
        "Access tokens loaded from auth/tokens.json.",
        state.auth.keyring.len() as f64,
    );
    metric(
        "writer_queue_depth",
        "gauge",
        "Commands waiting for the writer.",
        s.writer.queue_depth as f64,
    );
    metric(
        "writer_queue_capacity",
        "gauge",
        "Capacity of the writer queue.",
        s.writer.queue_capacity as f64,
    );
    metric(
        "writer_batches_total",
        "counter",
        "Group commits written.",
        s.writer.batches as f64,
    );
    metric(
        "writer_fsyncs_total",
        "counter",
        "fdatasync calls.",
        s.writer.fsyncs as f64,
    );
    metric(
        "writer_events_total",
        "counter",
        "Events written.",
        s.writer.events_written as f64,
    );
    metric(
        "writer_duplicates_total",
        "counter",
        "Publishes answered as duplicates.",
        s.writer.duplicates as f64,
    );
    metric(
        "writer_fsync_seconds_max",
        "gauge",
        "Slowest fdatasync since start.",
        s.writer.fsync_latency_us.max as f64 / 1e6,
    );
    metric(
        "writer_fsync_seconds_avg",
        "gauge",
        "Mean fdatasync latency since start.",
        s.writer.fsync_latency_us.avg / 1e6,
    );
    metric(
        "writer_sealed_key_lookups_total",
        "counter",
        "New events whose (source, id) the sealed segments' key filter could not rule out: key tables searched on disk.",
        s.writer.sealed_key_lookups as f64,
    );
    metric(
        "key_filter_bytes",
        "gauge",
        "Bytes of the sealed segments' idempotency key filter.",
        s.writer.key_filter_bytes as f64,
    );
    metric(
        "key_filter_rebuilds_total",
        "counter",
        "Times the sealed segments' key filter filled up and was rebuilt larger, in the background.",
        s.writer.key_filter_rebuilds as f64,
    );
    metric(
        "writer_segments_sealed_total",
        "counter",
        "Segments sealed.",
        s.writer.segments_sealed as f64,
    );
    metric(
        "writer_poisoned",
        "gauge",
        "1 when the writer refuses writes after a failed write.",
        f64::from(u8::from(s.writer.poisoned.is_some())),
    );
    metric(
        "writer_alive",
        "gauge",
        "1 while the writer thread runs.",
        f64::from(u8::from(s.writer.alive)),
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        s.uptime_seconds,
    );
    let i = &s.integrity;
    metric(
        "integrity_checks_total",
        "counter",
        "Integrity checks run.",
        i.monitor.checks as f64,
    );
    metric(
        "integrity_detections_total",
        "counter",
        "Problems the integrity monitor detected.",
        i.monitor.detections as f64,
    );
    metric(
        "integrity_repairs_total",
        "counter",
        "Problems repaired.",
        i.monitor.repairs as f64,
    );
    metric(
        "integrity_repair_failures_total",
        "counter",
        "Repairs that failed.",
        i.monitor.failures as f64,
    );
    metric(
        "integrity_last_check_seconds",
        "gauge",
        "Duration of the last integrity check.",
        i.monitor.last_check_ms / 1e3,
    );
    metric(
        "read_only",
        "gauge",
        "1 while damage that could not be repaired makes the store refuse writes.",
        f64::from(u8::from(i.read_only.is_some())),
    );
    metric(
        "low_disk",
        "gauge",
        "1 while free space is below --min-free-bytes.",
        f64::from(u8::from(i.low_disk.is_some())),
    );
    metric(
        "backups",
        "gauge",
        "Backups on disk.",
        i.backups.count as f64,
    );
    let _ = writeln!(out, "# HELP msgbus_alerts_total Alerts raised since start, per kind.\n# TYPE msgbus_alerts_total counter");
    for (kind, n) in &i.alerts {
        let _ = writeln!(out, "msgbus_alerts_total{{kind=\"{}\"}} {n}", escape(kind));
    }
    let _ = writeln!(out, "# HELP msgbus_alert_deliveries_total Alert deliveries per channel (webhook, email) and outcome: sent, retried (an attempt failed and was tried again), failed (given up on).\n# TYPE msgbus_alert_deliveries_total counter");
    for (channel, outcomes) in state.alerts.deliveries() {
        for (outcome, n) in outcomes {
            let _ = writeln!(
                out,
                "msgbus_alert_deliveries_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP msgbus_events_by_type Stored events per type.\n# TYPE msgbus_events_by_type gauge"
    );
    for (ty, n) in &s.events.by_type {
        let _ = writeln!(out, "msgbus_events_by_type{{type=\"{}\"}} {n}", escape(ty));
    }
    let sc = schema_stats(&state);
    let _ = writeln!(
        out,
        "# HELP msgbus_schema_validations_total Events checked against their type's payload schema since start.\n# TYPE msgbus_schema_validations_total counter"
    );
    for (ty, c) in &sc.by_type {
        let _ = writeln!(
            out,
            "msgbus_schema_validations_total{{type=\"{}\"}} {}",
            escape(ty),
            c.validations
        );
    }
    let _ = writeln!(
        out,
        "# HELP msgbus_schema_rejections_total Events refused by their type's payload schema since start.\n# TYPE msgbus_schema_rejections_total counter"
    );
    for (ty, c) in &sc.by_type {
        let _ = writeln!(
            out,
            "msgbus_schema_rejections_total{{type=\"{}\"}} {}",
            escape(ty),
            c.rejections
        );
    }
    let r = &s.retention;
    for (name, kind, help, value) in [
        (
            "oldest_seq",
            "gauge",
            "Oldest retained sequence number.",
            r.oldest_seq,
        ),
        (
            "retention_segments_deleted_total",
            "counter",
            "Segments deleted by retention.",
            r.segments_deleted,
        ),
        (
            "retention_events_deleted_total",
            "counter",
            "Events deleted by retention.",
            r.events_deleted,
        ),
        (
            "retention_bytes_reclaimed_total",
            "counter",
            "Bytes deleted by retention.",
            r.bytes_reclaimed,
        ),
        (
            "sse_subscribers",
            "gauge",
            "Open GET /events/stream connections.",
            state.subscribers.open() as u64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP msgbus_{name} {help}\n# TYPE msgbus_{name} {kind}\nmsgbus_{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP msgbus_consumer_lag Events stored after a consumer's committed cursor.\n# TYPE msgbus_consumer_lag gauge"
    );
    for (name, lag) in &s.consumers.lag {
        let _ = writeln!(
            out,
            "msgbus_consumer_lag{{consumer=\"{}\"}} {lag}",
            escape(name)
        );
    }
    queue_metrics(&state, &mut out);
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// A metric family of queue consumers: name, kind, help, value.
type QueueFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::queue::QueueStats) -> Option<f64>,
);

/// The numbers of every queue consumer, one family per number.
fn queue_metrics(state: &AppState, out: &mut String) {
    let queues: Vec<_> = state
        .store
        .consumers()
        .into_iter()
        .filter(|c| c.queue.is_some())
        .map(|c| (escape(&c.name), state.queues.stats(&c)))
        .collect();
    let families: [QueueFamily; 7] = [
        (
            "queue_pending",
            "gauge",
            "Events a queue consumer read and that wait for a worker.",
            |s| Some(s.pending as f64),
        ),
        (
            "queue_leased",
            "gauge",
            "Events leased to workers now.",
            |s| Some(s.leased as f64),
        ),
        (
            "queue_acknowledged_total",
            "counter",
            "Events acknowledged since the server started.",
            |s| Some(s.acknowledged as f64),
        ),
        (
            "queue_redelivered_total",
            "counter",
            "Deliveries after the first since the server started.",
            |s| Some(s.redelivered as f64),
        ),
        ("queue_dead", "gauge", "Dead letters kept.", |s| {
            Some(s.dead as f64)
        }),
        (
            "queue_unread",
            "gauge",
            "Stored events after the last one a queue consumer read (of any type).",
            |s| Some(s.unread as f64),
        ),
        (
            "queue_oldest_unacked_age_seconds",
            "gauge",
            "Age (from its time) of the oldest event read and not yet acknowledged.",
            |s| s.oldest_unacked_age_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP msgbus_{name} {help}\n# TYPE msgbus_{name} {kind}"
        );
        for (consumer, s) in &queues {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "msgbus_{name}{{consumer=\"{consumer}\"}} {v}");
            }
        }
    }
}

/// Escapes a label value per the exposition format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
