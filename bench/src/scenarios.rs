//! Every scenario of the benchmark, run in one fixed order so that each
//! figure and the figure it is compared to come from the same run:
//!
//! 1. **single events**: `POST /events` at each connection count, the
//!    ceiling and msgbus (empty store) interleaved, with `/stats` read before
//!    and after each msgbus run for the events per fsync of that run;
//! 2. **batches**: `POST /events/batch` of `batch_size` events;
//! 3. a consistency check: the events msgbus says it stores equal the
//!    events the load generator counted as acknowledged (201);
//! 4. **prefill** a second store with `prefill` events (batches of 1000),
//!    stop it, then **start-up**: launch to `/health/ready` 200, memory;
//! 5. **store size**: single events at the largest connection count on it;
//! 6. **reads under write load**: `GET /events?after=<recent>&limit=100`,
//!    then `GET /stats`, while an open-loop publisher sends `write_rate`
//!    events/s.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::{self, Result};
use crate::loadgen::{self, ClosedLoop, LoadResult, OpenLoop, OpenLoopResult, Work};
use crate::report::{self, Machine, Target};
use crate::servers::{Launcher, Memory, Server};

/// Settings of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// `full`, `smoke` or `test`.
    pub mode: String,
    /// Discarded load before each measured period.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Each measured period.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Connection counts of the single-event scenario.
    pub connections: Vec<usize>,
    /// Events per batch in the batch scenario.
    pub batch_size: usize,
    /// Connections of the batch scenario.
    pub batch_connections: usize,
    /// Events stored before the store-size, start-up and read scenarios.
    pub prefill: u64,
    /// Events per prefill batch.
    pub prefill_batch: usize,
    /// Connections used to prefill.
    pub prefill_connections: usize,
    /// Background publish rate during the read scenario, events/s.
    pub write_rate: f64,
    /// Connections of the background publisher.
    pub write_connections: usize,
    /// Connections of each read scenario.
    pub read_connections: usize,
    /// Page size of `GET /events`.
    pub read_limit: u64,
    /// Start-ups measured (the median is reported).
    pub startup_runs: usize,
    /// Where data directories and logs go (must be a real disk: fsync is measured).
    pub work_dir: PathBuf,
}

mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl BenchConfig {
    /// The real benchmark: 10 s per scenario, 1,000,000 prefilled events.
    pub fn full(work_dir: PathBuf) -> Self {
        BenchConfig {
            mode: "full".into(),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            connections: vec![1, 16, 64],
            batch_size: 100,
            batch_connections: 16,
            prefill: 1_000_000,
            prefill_batch: 1000,
            prefill_connections: 4,
            write_rate: 10_000.0,
            write_connections: 128,
            read_connections: 16,
            read_limit: 100,
            startup_runs: 3,
            work_dir,
        }
    }

    /// The smoke run: every scenario for about a second, 10,000 prefilled events.
    pub fn smoke(work_dir: PathBuf) -> Self {
        BenchConfig {
            mode: "smoke".into(),
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            prefill: 10_000,
            startup_runs: 1,
            ..BenchConfig::full(work_dir)
        }
    }

    fn max_connections(&self) -> usize {
        self.connections.iter().copied().max().unwrap_or(1)
    }

    fn closed(&self, connections: usize) -> ClosedLoop {
        ClosedLoop {
            connections,
            warmup: self.warmup,
            duration: self.duration,
            max_requests: None,
        }
    }
}

/// Group-commit figures over one load run, from `/stats` before and after.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsyncWindow {
    /// `writer.fsyncs` during the run.
    pub fsyncs: u64,
    /// `writer.events_written` during the run.
    pub events_written: u64,
    /// `events_written / fsyncs` during the run.
    pub events_per_fsync: f64,
    /// `writer.events_per_fsync` as `/stats` reports it after the run
    /// (since the server started).
    pub events_per_fsync_since_start: f64,
    /// `writer.max_batch_events` after the run.
    pub max_batch_events: u64,
    /// `writer.fsync_latency_us.avg` after the run, microseconds.
    pub fsync_avg_us: f64,
}

impl FsyncWindow {
    fn between(before: &serde_json::Value, after: &serde_json::Value) -> Self {
        let u = |v: &serde_json::Value, k: &str| v["writer"][k].as_u64().unwrap_or(0);
        let f = |v: &serde_json::Value, k: &str| v["writer"][k].as_f64().unwrap_or(0.0);
        let fsyncs = u(after, "fsyncs").saturating_sub(u(before, "fsyncs"));
        let events = u(after, "events_written").saturating_sub(u(before, "events_written"));
        FsyncWindow {
            fsyncs,
            events_written: events,
            events_per_fsync: if fsyncs == 0 {
                0.0
            } else {
                events as f64 / fsyncs as f64
            },
            events_per_fsync_since_start: f(after, "events_per_fsync"),
            max_batch_events: u(after, "max_batch_events"),
            fsync_avg_us: after["writer"]["fsync_latency_us"]["avg"]
                .as_f64()
                .unwrap_or(0.0),
        }
    }
}

/// Single events at one connection count.
#[derive(Debug, Clone, Serialize)]
pub struct SingleRow {
    /// Connections.
    pub connections: usize,
    /// The ceiling server.
    pub ceiling: LoadResult,
    /// msgbus, empty store.
    pub msgbus: LoadResult,
    /// msgbus requests/s ÷ ceiling requests/s.
    pub ratio_to_ceiling: f64,
    /// Group commit during the msgbus run.
    pub fsync: FsyncWindow,
}

/// The batch scenario.
#[derive(Debug, Clone, Serialize)]
pub struct BatchDoc {
    /// Events per request.
    pub batch_size: usize,
    /// The run (`events_per_s` is durable events/s).
    pub result: LoadResult,
    /// Group commit during the run.
    pub fsync: FsyncWindow,
}

/// Filling the store before the store-size scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillDoc {
    /// Events stored.
    pub events: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Bytes of segments after prefilling (`store.bytes`).
    pub store_bytes: u64,
}

/// Start-up on the prefilled store.
#[derive(Debug, Clone, Serialize)]
pub struct StartupDoc {
    /// Events in the store.
    pub stored_events: u64,
    /// Launch to the first `/health/ready` 200, each run, seconds.
    pub runs_s: Vec<f64>,
    /// The median of `runs_s`.
    pub ready_s: f64,
    /// Memory just after ready (last run).
    pub memory_at_ready: Option<Memory>,
    /// Memory after the store-size and read scenarios ran on that server.
    pub memory_after_load: Option<Memory>,
    /// True when the server ran inside the benchmark process (memory is then
    /// the whole process's and not a figure of msgbus).
    pub in_process: bool,
}

/// Single events on the prefilled store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSizeDoc {
    /// Events stored before the run.
    pub stored_events: u64,
    /// The run.
    pub result: LoadResult,
    /// The empty-store requests/s at the same connections.
    pub empty_requests_per_s: f64,
    /// `result.requests_per_s ÷ empty_requests_per_s`.
    pub ratio_to_empty: f64,
    /// Group commit during the run.
    pub fsync: FsyncWindow,
}

/// Reads while a steady write load runs.
#[derive(Debug, Clone, Serialize)]
pub struct ReadsDoc {
    /// Events stored when the reads started.
    pub stored_events: u64,
    /// The background publisher over both read runs.
    pub publisher: OpenLoopResult,
    /// `GET /events?after=<head-2*limit>&limit=<limit>`.
    pub events_page: LoadResult,
    /// `GET /stats`.
    pub stats: LoadResult,
}

/// Cross-checks of what the load generator counted.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// Events the load generator saw acknowledged with 201 on the empty store.
    pub events_acknowledged: u64,
    /// `events.total` of that store's `/stats` afterwards.
    pub events_stored: u64,
    /// The two agree.
    pub consistent: bool,
    /// Failed requests in all closed-loop runs against msgbus and the ceiling.
    pub errors: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `full`, `smoke` or `test`.
    pub mode: String,
    /// The machine.
    pub machine: Machine,
    /// The settings.
    pub config: BenchConfig,
    /// Wall-clock length of the run, seconds.
    pub total_seconds: f64,
    /// Single events per connection count.
    pub single: Vec<SingleRow>,
    /// Batches.
    pub batch: BatchDoc,
    /// Prefill.
    pub prefill: PrefillDoc,
    /// Start-up.
    pub startup: StartupDoc,
    /// Store size.
    pub store_size: StoreSizeDoc,
    /// Reads under write load.
    pub reads_under_load: ReadsDoc,
    /// Consistency checks.
    pub checks: Checks,
    /// Each target of issue 4: met or the shortfall.
    pub targets: Vec<Target>,
}

fn run_tag(what: &str) -> Arc<str> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{what}-{:x}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
    .into()
}

fn single_work(what: &str) -> Work {
    Work::Single {
        tag: run_tag(what),
        head: None,
    }
}

async fn stats(server: &Server) -> Result<serde_json::Value> {
    client::get_json(server.addr, "/stats").await
}

fn total_events(stats: &serde_json::Value) -> u64 {
    stats["events"]["total"].as_u64().unwrap_or(0)
}

fn say(cfg: &BenchConfig, msg: &str) {
    if cfg.mode != "test" {
        eprintln!("[bench] {msg}");
    }
}

/// Runs every scenario and evaluates the targets.
pub async fn run_all(cfg: &BenchConfig, launcher: &Launcher) -> Result<Report> {
    let began = std::time::Instant::now();
    std::fs::create_dir_all(&cfg.work_dir)?;
    let machine = report::machine(&cfg.work_dir);
    let mut errors = 0;

    // 1. Single events, ceiling and msgbus interleaved per connection count.
    let ceiling = launcher.ceiling().await?;
    let empty = launcher.msgbus(&cfg.work_dir.join("empty")).await?;
    let mut single = Vec::new();
    let mut acknowledged = 0;
    for &c in &cfg.connections {
        say(cfg, &format!("single events, {c} connections: ceiling"));
        let ce =
            loadgen::closed_loop(ceiling.addr, &single_work("ceiling"), &cfg.closed(c)).await?;
        say(cfg, &format!("single events, {c} connections: msgbus"));
        let before = stats(&empty).await?;
        let mb = loadgen::closed_loop(empty.addr, &single_work("single"), &cfg.closed(c)).await?;
        let after = stats(&empty).await?;
        errors += ce.errors + mb.errors;
        acknowledged += mb.events_total;
        single.push(SingleRow {
            connections: c,
            ratio_to_ceiling: ratio(mb.requests_per_s, ce.requests_per_s),
            ceiling: ce,
            msgbus: mb,
            fsync: FsyncWindow::between(&before, &after),
        });
    }
    ceiling.stop().await?;

    // 2. Batches.
    say(
        cfg,
        &format!(
            "batches of {}, {} connections",
            cfg.batch_size, cfg.batch_connections
        ),
    );
    let before = stats(&empty).await?;
    let work = Work::Batch {
        tag: run_tag("batch"),
        size: cfg.batch_size,
    };
    let b = loadgen::closed_loop(empty.addr, &work, &cfg.closed(cfg.batch_connections)).await?;
    let after = stats(&empty).await?;
    errors += b.errors;
    acknowledged += b.events_total;
    let batch = BatchDoc {
        batch_size: cfg.batch_size,
        result: b,
        fsync: FsyncWindow::between(&before, &after),
    };

    // 3. Every 201 counted is an event stored, and nothing else was stored.
    let stored = total_events(&after);
    let checks = Checks {
        events_acknowledged: acknowledged,
        events_stored: stored,
        consistent: acknowledged == stored,
        errors,
    };
    empty.stop().await?;

    // 4. Prefill, then start-up on the full store.
    let filled_dir = cfg.work_dir.join("filled");
    let filler = launcher.msgbus(&filled_dir).await?;
    say(cfg, &format!("prefilling {} events", cfg.prefill));
    let batches = cfg.prefill.div_ceil(cfg.prefill_batch as u64);
    let spec = ClosedLoop {
        connections: cfg.prefill_connections,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(3600),
        max_requests: Some(batches),
    };
    let work = Work::Batch {
        tag: run_tag("prefill"),
        size: cfg.prefill_batch,
    };
    let p = loadgen::closed_loop(filler.addr, &work, &spec).await?;
    let st = stats(&filler).await?;
    let prefilled = total_events(&st);
    if p.errors > 0 || prefilled != batches * cfg.prefill_batch as u64 {
        return Err(format!(
            "prefill stored {prefilled} events of {} ({} errors; first: {:?})",
            batches * cfg.prefill_batch as u64,
            p.errors,
            p.first_error
        )
        .into());
    }
    let prefill = PrefillDoc {
        events: prefilled,
        seconds: p.seconds,
        events_per_s: p.events_per_s,
        store_bytes: st["store"]["bytes"].as_u64().unwrap_or(0),
    };
    filler.stop().await?;

    let mut runs = Vec::new();
    let mut server = None;
    for i in 0..cfg.startup_runs.max(1) {
        say(
            cfg,
            &format!("start-up with {prefilled} events, run {}", i + 1),
        );
        if let Some(s) = server.take() {
            Server::stop(s).await?;
        }
        let s = launcher.msgbus(&filled_dir).await?;
        runs.push(s.ready_after.as_secs_f64());
        server = Some(s);
    }
    let full = server.expect("at least one start-up run");
    let memory_at_ready = full.memory();

    // 5. Store size.
    let c = cfg.max_connections();
    say(
        cfg,
        &format!("single events, {c} connections, {prefilled} stored"),
    );
    let before = stats(&full).await?;
    let r = loadgen::closed_loop(full.addr, &single_work("stored"), &cfg.closed(c)).await?;
    let after = stats(&full).await?;
    let empty_rps = single
        .iter()
        .find(|row| row.connections == c)
        .map(|row| row.msgbus.requests_per_s)
        .unwrap_or(0.0);
    let store_size = StoreSizeDoc {
        stored_events: total_events(&before),
        empty_requests_per_s: empty_rps,
        ratio_to_empty: ratio(r.requests_per_s, empty_rps),
        result: r,
        fsync: FsyncWindow::between(&before, &after),
    };

    // 6. Reads under a steady write load.
    let head = Arc::new(AtomicU64::new(
        after["events"]["last_seq"].as_u64().unwrap_or(0),
    ));
    let publisher = OpenLoop {
        rate: cfg.write_rate,
        connections: cfg.write_connections,
    };
    let bound = (cfg.warmup + cfg.duration) * 2 + Duration::from_secs(60);
    let pub_work = Work::Single {
        tag: run_tag("background"),
        head: Some(head.clone()),
    };
    say(
        cfg,
        &format!("reads under {} events/s of writes", cfg.write_rate),
    );
    let running = publisher.start(full.addr, &pub_work, bound).await?;
    let page_work = Work::RecentPage {
        head,
        limit: cfg.read_limit,
    };
    let page = loadgen::closed_loop(full.addr, &page_work, &cfg.closed(cfg.read_connections)).await;
    let stats_work = Work::Get {
        path: "/stats".into(),
    };
    let st = loadgen::closed_loop(full.addr, &stats_work, &cfg.closed(cfg.read_connections)).await;
    let publisher = running.stop().await?;
    let reads_under_load = ReadsDoc {
        stored_events: store_size.stored_events + store_size.result.events_total,
        publisher,
        events_page: page?,
        stats: st?,
    };
    let memory_after_load = full.memory();
    let in_process = full.in_process;
    full.stop().await?;

    let startup = StartupDoc {
        stored_events: prefilled,
        ready_s: median(&runs),
        runs_s: runs,
        memory_at_ready,
        memory_after_load,
        in_process,
    };
    let mut rep = Report {
        mode: cfg.mode.clone(),
        machine,
        config: cfg.clone(),
        total_seconds: 0.0,
        single,
        batch,
        prefill,
        startup,
        store_size,
        reads_under_load,
        checks,
        targets: Vec::new(),
    };
    rep.targets = report::targets(&rep);
    rep.machine.loadavg_end = report::loadavg();
    rep.total_seconds = began.elapsed().as_secs_f64();
    Ok(rep)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
