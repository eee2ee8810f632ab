//! The NATS backend beside the file backend (`bench/run --backend nats`,
//! issue 17): single events (64 connections) and batches of 100 (16
//! connections) through one and through two msgbus instances, in front of
//! an R1 stream (one nats-server) and an R3 stream (three nats-servers in a
//! cluster), all on loopback, and the file backend in the same run; each
//! figure's ratio to the file backend's. Then, through the same instances,
//! a work queue drained unordered and ordered by subject
//! ([`crate::queues::drain`]).
//!
//! The nats-servers are started by the caller (`src/main.rs`, with the
//! tests' harness `tests/common/nats.rs`), which passes their URLs. Two
//! instances share the connections half and half; their requests per
//! second add up, and the latency shown is the slower instance's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::Result;
use crate::loadgen::{self, ClosedLoop, LoadResult, Work};
use crate::queues::QueueRun;
use crate::servers::{Launcher, Server};

/// Connections for single events.
pub const SINGLE_CONNECTIONS: usize = 64;
/// Connections for batches.
pub const BATCH_CONNECTIONS: usize = 16;
/// Events per batch.
pub const BATCH_SIZE: usize = 100;

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Where data directories go.
    pub work_dir: std::path::PathBuf,
    /// Warm-up before each measured run.
    pub warmup: Duration,
    /// Each measured run.
    pub duration: Duration,
    /// Client URLs of the single nats-server (R1 stream).
    pub r1_urls: String,
    /// Client URLs of the three-node cluster (R3 stream).
    pub r3_urls: String,
    /// The nats-server version used.
    pub nats_version: String,
    /// Events each queue drain takes (0: no queue figures).
    pub queue_events: u64,
}

/// One workload through one or two instances of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Successful requests per second, all instances.
    pub requests_per_s: f64,
    /// Events acknowledged per second, all instances.
    pub events_per_s: f64,
    /// Median latency, ms (the slower instance's).
    pub p50_ms: f64,
    /// 99th percentile latency, ms (the slower instance's).
    pub p99_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// Events per second ÷ the file backend's (1 for the file backend).
    pub ratio_to_file: f64,
    /// Each instance's run.
    pub runs: Vec<LoadResult>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `file`, `nats R1` or `nats R3`.
    pub backend: String,
    /// msgbus instances the load was spread over.
    pub instances: usize,
    /// Single events.
    pub single: Figure,
    /// Batches of [`BATCH_SIZE`].
    pub batch: Figure,
    /// Work queues drained through the same instances, when measured.
    pub queues: Option<QueueFigures>,
}

/// One work queue drained twice over the same events: `bench.job` events
/// published through the first instance, then [`crate::queues::WORKERS`]
/// workers spread over the instances, each fetching up to
/// [`crate::queues::BATCH`] and acking them in one request.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    /// `"ordering": "none"`.
    pub unordered: QueueRun,
    /// `"ordering": "subject"` (97 subjects).
    pub ordered: QueueRun,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct NatsReport {
    /// When it ran (seconds since the epoch).
    pub unix_time: u64,
    /// The nats-server version.
    pub nats_version: String,
    /// Cores of the machine every process shared.
    pub cores: usize,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Connections for single events and for batches.
    pub single_connections: usize,
    /// Connections for batches.
    pub batch_connections: usize,
    /// Events per batch.
    pub batch_size: usize,
    /// The rows, file backend first.
    pub rows: Vec<Row>,
}

/// Runs `work(i)` against instance `i` of `addrs`, all at once, with
/// `connections` spread over them. Each instance's work has its own ids:
/// the same `(source, id)` sent through two instances would be answered as
/// a duplicate by the one stream behind them.
async fn measure(
    addrs: &[SocketAddr],
    work: impl Fn(usize) -> Work,
    connections: usize,
    cfg: &NatsConfig,
) -> Result<Figure> {
    let per = (connections / addrs.len()).max(1);
    let spec = ClosedLoop {
        connections: per,
        warmup: cfg.warmup,
        duration: cfg.duration,
        max_requests: None,
    };
    let runs = futures_join(addrs.iter().enumerate().map(|(i, a)| {
        let (a, work, spec) = (*a, work(i), spec.clone());
        tokio::spawn(async move { loadgen::closed_loop(a, &work, &spec).await })
    }))
    .await?;
    let max = |f: fn(&LoadResult) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    Ok(Figure {
        requests_per_s: runs.iter().map(|r| r.requests_per_s).sum(),
        events_per_s: runs.iter().map(|r| r.events_per_s).sum(),
        p50_ms: max(|r| r.latency.p50_ms),
        p99_ms: max(|r| r.latency.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
        ratio_to_file: 1.0,
        runs,
    })
}

async fn futures_join(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<LoadResult>>>,
) -> Result<Vec<LoadResult>> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.map_err(|e| format!("a load task failed: {e}"))??);
    }
    Ok(out)
}

async fn row(backend: &str, servers: &[Server], tag: &str, cfg: &NatsConfig) -> Result<Row> {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    eprintln!(
        "[bench] nats group: {backend} through {} instance(s): single events",
        addrs.len()
    );
    let single = measure(
        &addrs,
        |i| Work::Single {
            tag: Arc::from(format!("{tag}-i{i}-s")),
            head: None,
        },
        SINGLE_CONNECTIONS,
        cfg,
    )
    .await?;
    eprintln!(
        "[bench] nats group: {backend} through {} instance(s): batches",
        addrs.len()
    );
    let batch = measure(
        &addrs,
        |i| Work::Batch {
            tag: Arc::from(format!("{tag}-i{i}-b")),
            size: BATCH_SIZE,
        },
        BATCH_CONNECTIONS,
        cfg,
    )
    .await?;
    let queues = if cfg.queue_events > 0 {
        let n = cfg.queue_events;
        eprintln!(
            "[bench] nats group: {backend} through {} instance(s): a queue of {n} events, unordered then ordered",
            addrs.len()
        );
        let first = crate::queues::prefill(addrs[0], tag, n).await?;
        let unordered = crate::queues::drain(&addrs, "bench-q", first, n, false).await?;
        let ordered = crate::queues::drain(&addrs, "bench-o", first, n, true).await?;
        Some(QueueFigures { unordered, ordered })
    } else {
        None
    };
    Ok(Row {
        backend: backend.to_string(),
        instances: addrs.len(),
        single,
        batch,
        queues,
    })
}

/// Starts `n` msgbus instances with `flags`, each on its own data
/// directory under `dir` (unused by the NATS backend but required).
async fn instances(
    launcher: &Launcher,
    dir: &Path,
    n: usize,
    flags: &[String],
) -> Result<Vec<Server>> {
    let mut out = Vec::new();
    for i in 0..n {
        let d = dir.join(format!("i{i}"));
        std::fs::create_dir_all(&d)?;
        out.push(launcher.msgbus_with(&d, flags).await?);
    }
    Ok(out)
}

async fn stop_all(servers: Vec<Server>) -> Result<()> {
    for s in servers {
        s.stop().await?;
    }
    Ok(())
}

/// Runs the whole comparison.
pub async fn run(cfg: &NatsConfig, launcher: &Launcher) -> Result<NatsReport> {
    let mut rows = Vec::new();
    let file = instances(launcher, &cfg.work_dir.join("nats-group-file"), 1, &[]).await?;
    rows.push(row("file", &file, "file", cfg).await?);
    stop_all(file).await?;
    for (label, urls, replicas, stream) in [
        ("nats R1", &cfg.r1_urls, 1, "BENCHR1"),
        ("nats R3", &cfg.r3_urls, 3, "BENCHR3"),
    ] {
        for n in [1, 2] {
            // A fresh stream per row, so each starts empty as the file
            // store does.
            let stream = format!("{stream}N{n}");
            let flags: Vec<String> = [
                "--backend",
                "nats",
                "--nats-url",
                urls,
                "--nats-stream",
                &stream,
                "--replicas",
                &replicas.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let dir = cfg.work_dir.join(format!("nats-group-{stream}"));
            let servers = instances(launcher, &dir, n, &flags).await?;
            rows.push(row(label, &servers, &stream, cfg).await?);
            stop_all(servers).await?;
        }
    }
    let (fs, fb) = (rows[0].single.events_per_s, rows[0].batch.events_per_s);
    for r in &mut rows {
        r.single.ratio_to_file = if fs > 0.0 {
            r.single.events_per_s / fs
        } else {
            0.0
        };
        r.batch.ratio_to_file = if fb > 0.0 {
            r.batch.events_per_s / fb
        } else {
            0.0
        };
    }
    Ok(NatsReport {
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        nats_version: cfg.nats_version.clone(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        duration_s: cfg.duration.as_secs_f64(),
        single_connections: SINGLE_CONNECTIONS,
        batch_connections: BATCH_CONNECTIONS,
        batch_size: BATCH_SIZE,
        rows,
    })
}

/// The table, as printed and as put in the README.
pub fn render(r: &NatsReport) -> String {
    let mut s = format!(
        "NATS backend beside the file backend (nats-server {}; {} cores shared by every \
         process; {} s per run)\n\n",
        r.nats_version, r.cores, r.duration_s
    );
    s.push_str(&format!(
        "| backend | msgbus instances | single events/s ({} conns) | p50 / p99 ms | ratio | \
         batch events/s ({} conns × {}) | p50 / p99 ms | ratio |\n",
        r.single_connections, r.batch_connections, r.batch_size
    ));
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for row in &r.rows {
        let f = |x: &Figure| {
            format!(
                "{:.0}{} | {:.1} / {:.1} | {:.2}",
                x.events_per_s,
                if x.errors > 0 {
                    format!(" ({} errors)", x.errors)
                } else {
                    String::new()
                },
                x.p50_ms,
                x.p99_ms,
                x.ratio_to_file
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.backend,
            row.instances,
            f(&row.single),
            f(&row.batch)
        ));
    }
    if r.rows.iter().any(|row| row.queues.is_some()) {
        s.push_str(&format!(
            "\nWork queues: {} workers spread over the instances, each fetching up to {} \
             events and acking them in one request\n\n",
            crate::queues::WORKERS,
            crate::queues::BATCH
        ));
        s.push_str(
            "| backend | msgbus instances | events | unordered events/s | ordered by subject events/s | ordered ÷ unordered |\n",
        );
        s.push_str("|---|---|---|---|---|---|\n");
        for row in &r.rows {
            let Some(q) = &row.queues else { continue };
            let errors = |x: &QueueRun| {
                if x.errors > 0 {
                    format!(" ({} errors)", x.errors)
                } else {
                    String::new()
                }
            };
            s.push_str(&format!(
                "| {} | {} | {} | {:.0}{} | {:.0}{} | {:.2} |\n",
                row.backend,
                row.instances,
                q.unordered.events,
                q.unordered.events_per_s,
                errors(&q.unordered),
                q.ordered.events_per_s,
                errors(&q.ordered),
                if q.unordered.events_per_s > 0.0 {
                    q.ordered.events_per_s / q.unordered.events_per_s
                } else {
                    0.0
                }
            ));
        }
    }
    s
}
