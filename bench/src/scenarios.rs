//! Every scenario of the benchmark, run in one fixed order so that each
//! figure and the figure it is compared to come from the same run:
//!
//! 1. **single events**: `POST /events` at each connection count, `repeat`
//!    interleaved pairs of runs: the ceiling, then msgbus (empty store),
//!    with `/stats` read before and after each msgbus run for the events
//!    per fsync of that run. The row reported is the pair with the median
//!    ratio msgbus ÷ ceiling ([`median_index`]), so all its figures come
//!    from one pair; every pair's figures are kept in [`SingleRow::runs`];
//! 2. **batches**: `POST /events/batch` of `batch_size` events, `repeat`
//!    runs, the one with the median durable events/s reported;
//! 3. a consistency check: the events msgbus says it stores equal the
//!    events the load generator counted as acknowledged (201) in every run
//!    of 1 and 2;
//! 4. **prefill** a second store with `prefill` events (batches of 1000),
//!    stop it, then **start-up**: launch to `/health/ready` 200, memory
//!    (`startup_runs` times, the median reported);
//! 5. **store size**: single events at the largest connection count on it,
//!    `repeat` runs, the one with the median requests/s reported;
//! 6. **reads under write load**: `GET /events?after=<recent>&limit=100`,
//!    then `GET /stats`, while an open-loop publisher sends `write_rate`
//!    events/s;
//! 7. **fan-out**: on a third, fresh store, an open-loop publisher sends
//!    `fanout_rate` events/s with no subscriber; then `fanout_subscribers`
//!    SSE subscribers (`GET /events/stream`) connect and the same publisher
//!    runs again: every subscriber must receive every event in order, and
//!    each delivery's latency is recorded;
//! 8. **access control**: single events at the largest connection count,
//!    then batches, each as `repeat` interleaved pairs of runs: auth off
//!    (no token: msgbus serves openly on loopback), then auth on (a token
//!    exists and every request carries it), each run on a fresh store. The
//!    pair with the median ratio on ÷ off is reported ([`AuthCompare`]).
//!
//! `scenarios` selects groups: [`Scenario::Single`] is 1-3,
//! [`Scenario::Stored`] 4-6, [`Scenario::Fanout`] 7, [`Scenario::Auth`] 8.
//! [`Scenario::Large`] (a store grown to millions of events, see
//! [`crate::large`]) runs last and only when asked for (`--only large`).
//! A group not run is absent (`null`) in the report, and so are its targets.
//!
//! Why `repeat`: on a shared 2-vCPU machine one run differs from the next
//! by about ±20%, more than some shortfalls, so a single run can call a
//! target met or missed by chance. The median of a few runs is robust to one
//! run hit by a slow spell; reporting the median *run* (not the median of
//! each figure apart) keeps the figures of a line consistent with each
//! other. Start-up has its own `startup_runs`. Reads under write load and
//! fan-out still run once: their figures carry the same spread, so a
//! margin of less than about 20% there decides nothing either.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::{self, Result};
use crate::fanout::{self, Subscribers};
use crate::loadgen::{self, ClosedLoop, Latency, LoadResult, OpenLoop, OpenLoopResult, Work};
use crate::report::{self, Machine, Target};
use crate::servers::{self, Launcher, Memory, Server};

/// A group of scenarios that runs on its own server(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Single events (ceiling and msgbus), batches and the consistency
    /// check, on an empty store.
    Single,
    /// Prefill, start-up, store size and reads under write load.
    Stored,
    /// SSE fan-out: many subscribers while events are published.
    Fanout,
    /// Single events and batches with access control off, then on.
    Auth,
    /// One store grown to millions of events (`large_sizes`): fill time,
    /// start-up, memory, random reads, a filtered read, publishing and
    /// `msgbus verify` on it. Long: never part of the default run.
    Large,
    /// Work queues: fetch + ack with 16 workers, beside Redis Streams
    /// (see [`crate::queues`]). Only when asked for (`--only queues`): it
    /// may install `redis-server`.
    Queues,
    /// Payload schemas: order events without and with a JSON Schema for
    /// their type (see [`crate::schemas`]). Only when asked for.
    Schemas,
    /// Dashboards: single events without and with 10 simulated dashboard
    /// pages polling `/stats` and the rest (see [`crate::dashboard`]).
    /// Only when asked for.
    Dashboard,
}

impl Scenario {
    /// Every group, in the order they run.
    pub const ALL: [Scenario; 4] = [
        Scenario::Single,
        Scenario::Stored,
        Scenario::Fanout,
        Scenario::Auth,
    ];

    /// Every group `--only` accepts, in the order they run: [`Scenario::ALL`]
    /// and then [`Scenario::Queues`], [`Scenario::Large`], [`Scenario::Schemas`]
    /// and [`Scenario::Dashboard`].
    pub const SELECTABLE: [Scenario; 8] = [
        Scenario::Single,
        Scenario::Stored,
        Scenario::Fanout,
        Scenario::Auth,
        Scenario::Queues,
        Scenario::Large,
        Scenario::Schemas,
        Scenario::Dashboard,
    ];
}

/// Settings of the large-store group ([`Scenario::Large`]).
#[derive(Debug, Clone, Serialize)]
pub struct LargeConfig {
    /// The sizes the one store is grown through, events.
    pub sizes: Vec<u64>,
    /// Seq of the one event of a rare type (read back by a filtered read).
    pub rare_at: u64,
    /// Open-loop publishing at the largest size before its memory is read.
    #[serde(with = "secs")]
    pub publish: Duration,
    /// Connections of the random `GET /events/{seq}`.
    pub get_connections: usize,
    /// Pairs of short runs (empty store, large store) of single events at
    /// the largest connection count; see [`crate::large`], step 7.
    pub slice_pairs: usize,
    /// Warm-up of each short run.
    #[serde(with = "secs")]
    pub slice_warmup: Duration,
    /// Measured length of each short run.
    #[serde(with = "secs")]
    pub slice: Duration,
}

impl LargeConfig {
    /// The real run: 1M, 10M, 50M events; the rare event at seq 500,000;
    /// 60 s of publishing; 16 pairs of 3-second runs (1 s warm-up each).
    pub fn full() -> Self {
        LargeConfig {
            sizes: vec![1_000_000, 10_000_000, 50_000_000],
            rare_at: 500_000,
            publish: Duration::from_secs(60),
            get_connections: 4,
            slice_pairs: 16,
            slice_warmup: Duration::from_secs(1),
            slice: Duration::from_secs(3),
        }
    }

    /// A tiny configuration (smoke and test mode): 2,000 and 5,000 events.
    pub fn tiny() -> Self {
        LargeConfig {
            sizes: vec![2000, 5000],
            rare_at: 1500,
            publish: Duration::from_millis(500),
            get_connections: 2,
            slice_pairs: 2,
            slice_warmup: Duration::from_millis(100),
            slice: Duration::from_millis(300),
        }
    }
}

/// Settings of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// `full`, `smoke` or `test`.
    pub mode: String,
    /// The groups of scenarios to run (always in their fixed order).
    pub scenarios: Vec<Scenario>,
    /// Discarded load before each measured period.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Each measured period.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Runs of each single-event, batch and store-size figure; the run with
    /// the median figure is reported (see [`median_index`]). On a shared
    /// 2-vCPU machine one run varies by about ±20% from the next, more than
    /// some of the margins the targets are judged by, so one run is not
    /// enough to call a target met or missed. At least 1.
    pub repeat: usize,
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
    /// SSE subscribers of the fan-out scenario.
    pub fanout_subscribers: usize,
    /// Publish rate of the fan-out scenario, events/s (open loop).
    pub fanout_rate: f64,
    /// Connections of the fan-out publisher.
    pub fanout_publishers: usize,
    /// The large-store group's settings.
    pub large: LargeConfig,
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
    /// The real benchmark: 10 s per scenario, 1,000,000 prefilled events,
    /// single events, batches and store size the median of 3 runs.
    pub fn full(work_dir: PathBuf) -> Self {
        BenchConfig {
            mode: "full".into(),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            repeat: 3,
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
            scenarios: Scenario::ALL.to_vec(),
            fanout_subscribers: 1000,
            fanout_rate: 5000.0,
            fanout_publishers: 64,
            large: LargeConfig::full(),
            work_dir,
        }
    }

    /// The smoke run: every scenario for about a second, 10,000 prefilled events.
    pub fn smoke(work_dir: PathBuf) -> Self {
        BenchConfig {
            mode: "smoke".into(),
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            // Smoke mode checks that everything runs, not the figures.
            repeat: 1,
            prefill: 10_000,
            startup_runs: 1,
            fanout_subscribers: 50,
            fanout_rate: 500.0,
            fanout_publishers: 8,
            large: LargeConfig::tiny(),
            ..BenchConfig::full(work_dir)
        }
    }

    /// True when `s` is to run.
    pub fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.connections.iter().copied().max().unwrap_or(1)
    }

    pub(crate) fn closed(&self, connections: usize) -> ClosedLoop {
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

/// Single events at one connection count: the pair of runs (ceiling, then
/// msgbus) whose ratio is the median of the `repeat` pairs. Every figure of
/// the row comes from that one pair, so they agree with each other (the p99
/// and events per fsync are those of the run whose requests/s is shown);
/// `runs` holds every pair, to show the spread.
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
    /// Every pair, in the order they ran.
    pub runs: Vec<PairRun>,
    /// The index in `runs` of the pair reported above.
    pub median_run: usize,
}

impl SingleRow {
    /// The row of `pairs` (ceiling run, msgbus run, group commit during the
    /// msgbus run; at least one): the pair with the median ratio, and all of
    /// them in `runs`.
    pub fn from_pairs(
        connections: usize,
        pairs: Vec<(LoadResult, LoadResult, FsyncWindow)>,
    ) -> Self {
        let runs: Vec<PairRun> = pairs
            .iter()
            .map(|(ce, mb, fsync)| PairRun {
                ceiling_requests_per_s: ce.requests_per_s,
                msgbus_requests_per_s: mb.requests_per_s,
                ratio: ratio(mb.requests_per_s, ce.requests_per_s),
                msgbus_p99_ms: mb.latency.p99_ms,
                events_per_fsync: fsync.events_per_fsync,
                errors: ce.errors + mb.errors,
            })
            .collect();
        let ratios: Vec<f64> = runs.iter().map(|r| r.ratio).collect();
        let median_run = median_index(&ratios);
        let (ceiling, msgbus, fsync) = pairs
            .into_iter()
            .nth(median_run)
            .expect("median_index is an index of its input");
        SingleRow {
            connections,
            ratio_to_ceiling: runs[median_run].ratio,
            ceiling,
            msgbus,
            fsync,
            runs,
            median_run,
        }
    }

    /// Failed requests of every pair (the row's own `ceiling.errors +
    /// msgbus.errors` are those of the reported pair only).
    pub fn errors_all_runs(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }
}

/// One pair of single-event runs at one connection count, in short.
#[derive(Debug, Clone, Serialize)]
pub struct PairRun {
    /// The ceiling's requests/s.
    pub ceiling_requests_per_s: f64,
    /// msgbus's requests/s, right after.
    pub msgbus_requests_per_s: f64,
    /// `msgbus_requests_per_s ÷ ceiling_requests_per_s`.
    pub ratio: f64,
    /// msgbus's p99 latency, ms.
    pub msgbus_p99_ms: f64,
    /// Events per fsync during the msgbus run.
    pub events_per_fsync: f64,
    /// Failed requests of both runs.
    pub errors: u64,
}

/// The batch scenario: the run with the median durable events/s of
/// `repeat` runs.
#[derive(Debug, Clone, Serialize)]
pub struct BatchDoc {
    /// Events per request.
    pub batch_size: usize,
    /// The run (`events_per_s` is durable events/s).
    pub result: LoadResult,
    /// Group commit during the run.
    pub fsync: FsyncWindow,
    /// Durable events/s of every run, in the order they ran.
    pub runs_events_per_s: Vec<f64>,
    /// The index in `runs_events_per_s` of the run reported.
    pub median_run: usize,
    /// Failed requests of every run (`result.errors` is the reported run's).
    pub errors_all_runs: u64,
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

/// Single events on the prefilled store: the run with the median
/// requests/s of `repeat` runs.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSizeDoc {
    /// Events stored before the first run (the prefilled store; each run
    /// adds its events, a few percent of the store, for the next).
    pub stored_events: u64,
    /// The run.
    pub result: LoadResult,
    /// The empty-store requests/s at the same connections: the msgbus
    /// figure of that single-event row (its median pair).
    pub empty_requests_per_s: f64,
    /// `result.requests_per_s ÷ empty_requests_per_s`.
    pub ratio_to_empty: f64,
    /// Group commit during the run.
    pub fsync: FsyncWindow,
    /// Requests/s of every run, in the order they ran.
    pub runs_requests_per_s: Vec<f64>,
    /// The index in `runs_requests_per_s` of the run reported.
    pub median_run: usize,
    /// Failed requests of every run (`result.errors` is the reported run's).
    pub errors_all_runs: u64,
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

/// SSE fan-out: subscribers while events are published.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutDoc {
    /// Subscribers (`GET /events/stream?after=<head>`), all connected before publishing.
    pub subscribers: usize,
    /// `msgbus_sse_subscribers` from `/metrics` once they were connected.
    pub server_subscribers: Option<u64>,
    /// Seconds to connect them all (until each had its `retry:` line).
    pub connect_s: f64,
    /// The publisher with no subscriber, first, at the same offered load.
    pub baseline: OpenLoopResult,
    /// The publisher while the subscribers read.
    pub publisher: OpenLoopResult,
    /// `publisher.achieved_per_s ÷ baseline.achieved_per_s`.
    pub rate_ratio_to_baseline: f64,
    /// The subscribers' `after=`: the newest seq before the run.
    pub after_seq: u64,
    /// The newest seq when the publisher stopped.
    pub last_seq: u64,
    /// Events stored by the run (`last_seq - after_seq`): each subscriber must receive all.
    pub events_published: u64,
    /// Events received, all subscribers together.
    pub deliveries: u64,
    /// `deliveries` per second of the publisher's run.
    pub deliveries_per_s: f64,
    /// Delivery latency (receive − send, one clock) of every event sent
    /// after the warm-up, at every subscriber.
    pub latency: Latency,
    /// Deliveries in `latency`.
    pub latency_samples: u64,
    /// From the publisher's stop until the last subscriber had the last
    /// event, ms (when all completed).
    pub drain_ms: Option<f64>,
    /// Subscribers that got every event from `after_seq + 1` to `last_seq`,
    /// in order, nothing else.
    pub subscribers_complete: usize,
    /// The others.
    pub subscribers_incomplete: usize,
    /// What the first incomplete subscriber saw.
    pub first_failure: Option<String>,
    /// Events without a `sent_ns` (none expected).
    pub unstamped: u64,
    /// CPU used during the publisher's run with subscribers, in cores
    /// (CPU seconds ÷ wall seconds): msgbus, and this benchmark process
    /// (publisher and subscribers). `None` when msgbus ran in-process.
    pub cpu_cores: Option<CpuCores>,
    /// msgbus's memory after the run.
    pub memory_after: Option<Memory>,
    /// True when msgbus ran inside the benchmark process.
    pub in_process: bool,
}

/// CPU used over a period, in cores (CPU seconds ÷ wall seconds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuCores {
    /// The msgbus process.
    pub msgbus: f64,
    /// The benchmark process (the load generator and the subscribers).
    pub bench: f64,
}

/// Cross-checks of what the load generator counted.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// Events the load generator saw acknowledged with 201 on the empty
    /// store, in every run (each repeat, warm-ups included).
    pub events_acknowledged: u64,
    /// `events.total` of that store's `/stats` afterwards.
    pub events_stored: u64,
    /// The two agree.
    pub consistent: bool,
    /// Failed requests in all closed-loop runs (each repeat) against msgbus
    /// and the ceiling.
    pub errors: u64,
}

/// Access control off and on, side by side: what checking a token costs.
#[derive(Debug, Clone, Serialize)]
pub struct AuthDoc {
    /// The role of the token the auth-on runs send (its secret is in no
    /// report).
    pub token_role: String,
    /// `POST /events`, one event per request, at the largest connection
    /// count.
    pub single: AuthCompare,
    /// `POST /events/batch` of `batch_size` events, `batch_connections`.
    pub batch: AuthCompare,
}

/// One kind of publishing with access control off and on: `repeat`
/// interleaved pairs (a run with auth off, then one with auth on), each run
/// on a fresh store, so that a slow spell of the machine hits both sides
/// of a ratio alike. The figures are the pair's with the median ratio
/// ([`median_index`]); every pair is in `runs`.
#[derive(Debug, Clone, Serialize)]
pub struct AuthCompare {
    /// What each request is (`POST /events`, `POST /events/batch`).
    pub work: String,
    /// Connections.
    pub connections: usize,
    /// Events per request.
    pub events_per_request: u64,
    /// Auth off: no token exists; msgbus serves openly on loopback.
    pub off: LoadResult,
    /// Auth on: a token exists and every request carries it.
    pub on: LoadResult,
    /// `on.requests_per_s ÷ off.requests_per_s` (the same for events/s).
    pub ratio: f64,
    /// Every pair, in the order they ran.
    pub runs: Vec<AuthPair>,
    /// The index in `runs` of the pair reported above.
    pub median_run: usize,
}

/// One pair of runs (auth off, then auth on), in short.
#[derive(Debug, Clone, Serialize)]
pub struct AuthPair {
    /// The run with auth off.
    pub off: AuthRun,
    /// The run with auth on, right after.
    pub on: AuthRun,
    /// `on.requests_per_s ÷ off.requests_per_s`.
    pub ratio: f64,
}

/// One run of an [`AuthPair`], in short.
#[derive(Debug, Clone, Serialize)]
pub struct AuthRun {
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Durable events per second.
    pub events_per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

impl AuthRun {
    fn of(r: &LoadResult) -> Self {
        AuthRun {
            requests_per_s: r.requests_per_s,
            events_per_s: r.events_per_s,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
        }
    }
}

impl AuthCompare {
    /// The comparison of `pairs` (auth-off run, auth-on run; at least one):
    /// the pair with the median ratio, and all of them in `runs`.
    pub fn from_pairs(
        work: &str,
        connections: usize,
        events_per_request: u64,
        pairs: Vec<(LoadResult, LoadResult)>,
    ) -> Self {
        let runs: Vec<AuthPair> = pairs
            .iter()
            .map(|(off, on)| AuthPair {
                off: AuthRun::of(off),
                on: AuthRun::of(on),
                ratio: ratio(on.requests_per_s, off.requests_per_s),
            })
            .collect();
        let ratios: Vec<f64> = runs.iter().map(|r| r.ratio).collect();
        let median_run = median_index(&ratios);
        let (off, on) = pairs
            .into_iter()
            .nth(median_run)
            .expect("median_index is an index of its input");
        AuthCompare {
            work: work.to_string(),
            connections,
            events_per_request,
            off,
            on,
            ratio: runs[median_run].ratio,
            runs,
            median_run,
        }
    }
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
    /// Single events per connection count (empty unless [`Scenario::Single`] ran).
    pub single: Vec<SingleRow>,
    /// Batches ([`Scenario::Single`]).
    pub batch: Option<BatchDoc>,
    /// Prefill ([`Scenario::Stored`]).
    pub prefill: Option<PrefillDoc>,
    /// Start-up ([`Scenario::Stored`]).
    pub startup: Option<StartupDoc>,
    /// Store size ([`Scenario::Stored`]).
    pub store_size: Option<StoreSizeDoc>,
    /// Reads under write load ([`Scenario::Stored`]).
    pub reads_under_load: Option<ReadsDoc>,
    /// SSE fan-out ([`Scenario::Fanout`]).
    pub fanout: Option<FanoutDoc>,
    /// Consistency checks ([`Scenario::Single`]).
    pub checks: Option<Checks>,
    /// Access control off and on ([`Scenario::Auth`]).
    pub auth: Option<AuthDoc>,
    /// The large store ([`Scenario::Large`]).
    pub large: Option<crate::large::LargeDoc>,
    /// Work queues beside Redis Streams ([`Scenario::Queues`]).
    pub queues: Option<crate::queues::QueuesDoc>,
    /// Payload schemas off and on ([`Scenario::Schemas`]).
    pub schemas: Option<crate::schemas::SchemasDoc>,
    /// Publishing without and with dashboard pages ([`Scenario::Dashboard`]).
    pub dashboard: Option<crate::dashboard::DashboardDoc>,
    /// Each target of issue 4: met or the shortfall.
    pub targets: Vec<Target>,
}

pub(crate) fn run_tag(what: &str) -> Arc<str> {
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

pub(crate) fn single_work(what: &str) -> Work {
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

pub(crate) fn say(cfg: &BenchConfig, msg: &str) {
    if cfg.mode != "test" {
        eprintln!("[bench] {msg}");
    }
}

/// Runs the selected scenarios and evaluates the targets.
pub async fn run_all(cfg: &BenchConfig, launcher: &Launcher) -> Result<Report> {
    if cfg.repeat == 0 {
        return Err(
            "repeat must be at least 1: each figure is the median of that many runs".into(),
        );
    }
    let began = std::time::Instant::now();
    std::fs::create_dir_all(&cfg.work_dir)?;
    let machine = report::machine(&cfg.work_dir);
    let mut rep = Report {
        mode: cfg.mode.clone(),
        machine,
        config: cfg.clone(),
        total_seconds: 0.0,
        single: Vec::new(),
        batch: None,
        prefill: None,
        startup: None,
        store_size: None,
        reads_under_load: None,
        fanout: None,
        checks: None,
        auth: None,
        large: None,
        queues: None,
        schemas: None,
        dashboard: None,
        targets: Vec::new(),
    };
    if cfg.runs(Scenario::Single) {
        let (single, batch, checks) = run_single(cfg, launcher).await?;
        rep.single = single;
        rep.batch = Some(batch);
        rep.checks = Some(checks);
    }
    if cfg.runs(Scenario::Stored) {
        let s = run_stored(cfg, launcher, &rep.single).await?;
        rep.prefill = Some(s.prefill);
        rep.startup = Some(s.startup);
        rep.store_size = Some(s.store_size);
        rep.reads_under_load = Some(s.reads);
    }
    if cfg.runs(Scenario::Fanout) {
        rep.fanout = Some(run_fanout(cfg, launcher).await?);
    }
    if cfg.runs(Scenario::Auth) {
        rep.auth = Some(run_auth(cfg, launcher).await?);
    }
    if cfg.runs(Scenario::Queues) {
        rep.queues = Some(crate::queues::run_queues(cfg, launcher).await?);
    }
    if cfg.runs(Scenario::Large) {
        rep.large = Some(crate::large::run_large(cfg, launcher).await?);
    }
    if cfg.runs(Scenario::Schemas) {
        rep.schemas = Some(crate::schemas::run_schemas(cfg, launcher).await?);
    }
    if cfg.runs(Scenario::Dashboard) {
        rep.dashboard = Some(crate::dashboard::run_dashboard(cfg, launcher).await?);
    }
    rep.targets = report::targets(&rep);
    rep.machine.loadavg_end = report::loadavg();
    rep.total_seconds = began.elapsed().as_secs_f64();
    Ok(rep)
}

/// 1-3: single events, batches and the check, on an empty store.
async fn run_single(
    cfg: &BenchConfig,
    launcher: &Launcher,
) -> Result<(Vec<SingleRow>, BatchDoc, Checks)> {
    let mut errors = 0;

    // 1. Single events, ceiling and msgbus interleaved per connection count:
    // `repeat` pairs, each a ceiling run right before a msgbus run, so that
    // a slow spell of the machine hits both sides of a ratio alike.
    let ceiling = launcher.ceiling().await?;
    let empty = launcher.msgbus(&cfg.work_dir.join("empty")).await?;
    let mut single = Vec::new();
    let mut acknowledged = 0;
    for &c in &cfg.connections {
        let mut pairs = Vec::with_capacity(cfg.repeat);
        for i in 0..cfg.repeat {
            let of = run_of(cfg, i);
            say(cfg, &format!("single events, {c} connections{of}: ceiling"));
            let ce =
                loadgen::closed_loop(ceiling.addr, &single_work("ceiling"), &cfg.closed(c)).await?;
            say(cfg, &format!("single events, {c} connections{of}: msgbus"));
            let before = stats(&empty).await?;
            let mb =
                loadgen::closed_loop(empty.addr, &single_work("single"), &cfg.closed(c)).await?;
            let after = stats(&empty).await?;
            errors += ce.errors + mb.errors;
            acknowledged += mb.events_total;
            pairs.push((ce, mb, FsyncWindow::between(&before, &after)));
        }
        single.push(SingleRow::from_pairs(c, pairs));
    }
    ceiling.stop().await?;

    // 2. Batches.
    let mut runs = Vec::with_capacity(cfg.repeat);
    let mut after = serde_json::Value::Null;
    for i in 0..cfg.repeat {
        say(
            cfg,
            &format!(
                "batches of {}, {} connections{}",
                cfg.batch_size,
                cfg.batch_connections,
                run_of(cfg, i)
            ),
        );
        let before = stats(&empty).await?;
        let work = Work::Batch {
            tag: run_tag("batch"),
            size: cfg.batch_size,
        };
        let b = loadgen::closed_loop(empty.addr, &work, &cfg.closed(cfg.batch_connections)).await?;
        after = stats(&empty).await?;
        errors += b.errors;
        acknowledged += b.events_total;
        runs.push((b, FsyncWindow::between(&before, &after)));
    }
    let runs_events_per_s: Vec<f64> = runs.iter().map(|(b, _)| b.events_per_s).collect();
    let errors_all_runs = runs.iter().map(|(b, _)| b.errors).sum();
    let median_run = median_index(&runs_events_per_s);
    let (result, fsync) = runs.swap_remove(median_run);
    let batch = BatchDoc {
        batch_size: cfg.batch_size,
        result,
        fsync,
        runs_events_per_s,
        median_run,
        errors_all_runs,
    };

    // 3. Every 201 counted (in every run) is an event stored, and nothing
    // else was stored.
    let stored = total_events(&after);
    let checks = Checks {
        events_acknowledged: acknowledged,
        events_stored: stored,
        consistent: acknowledged == stored,
        errors,
    };
    empty.stop().await?;
    Ok((single, batch, checks))
}

/// What [`run_stored`] measured.
struct Stored {
    prefill: PrefillDoc,
    startup: StartupDoc,
    store_size: StoreSizeDoc,
    reads: ReadsDoc,
}

/// 4-6: prefill, start-up, store size, reads under write load. `single`
/// gives the empty-store figure the store-size run is compared to (none
/// when [`Scenario::Single`] did not run).
async fn run_stored(
    cfg: &BenchConfig,
    launcher: &Launcher,
    single: &[SingleRow],
) -> Result<Stored> {
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
    let mut sized = Vec::with_capacity(cfg.repeat);
    let mut stored_events = None;
    let mut after = serde_json::Value::Null;
    for i in 0..cfg.repeat {
        say(
            cfg,
            &format!(
                "single events, {c} connections, {prefilled} stored{}",
                run_of(cfg, i)
            ),
        );
        let before = stats(&full).await?;
        stored_events.get_or_insert(total_events(&before));
        let r = loadgen::closed_loop(full.addr, &single_work("stored"), &cfg.closed(c)).await?;
        after = stats(&full).await?;
        sized.push((r, FsyncWindow::between(&before, &after)));
    }
    let runs_requests_per_s: Vec<f64> = sized.iter().map(|(r, _)| r.requests_per_s).collect();
    let errors_all_runs = sized.iter().map(|(r, _)| r.errors).sum();
    let median_run = median_index(&runs_requests_per_s);
    let (result, fsync) = sized.swap_remove(median_run);
    // The empty-store row's reported (median-pair) msgbus figure.
    let empty_rps = single
        .iter()
        .find(|row| row.connections == c)
        .map(|row| row.msgbus.requests_per_s)
        .unwrap_or(0.0);
    let store_size = StoreSizeDoc {
        stored_events: stored_events.unwrap_or(0),
        empty_requests_per_s: empty_rps,
        ratio_to_empty: ratio(result.requests_per_s, empty_rps),
        result,
        fsync,
        runs_requests_per_s,
        median_run,
        errors_all_runs,
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
    let reads = ReadsDoc {
        // After every store-size run (not only the reported one).
        stored_events: total_events(&after),
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
    Ok(Stored {
        prefill,
        startup,
        store_size,
        reads,
    })
}

/// The `msgbus_sse_subscribers` gauge of `/metrics`.
async fn sse_subscribers(server: &Server) -> Option<u64> {
    let res = client::get(server.addr, "/metrics").await.ok()?;
    let text = String::from_utf8_lossy(&res.body);
    text.lines()
        .find_map(|l| l.strip_prefix("msgbus_sse_subscribers "))
        .and_then(|v| v.trim().parse().ok())
}

/// 7: the publisher alone, then with `fanout_subscribers` SSE subscribers.
async fn run_fanout(cfg: &BenchConfig, launcher: &Launcher) -> Result<FanoutDoc> {
    let n = cfg.fanout_subscribers;
    // Room for every subscriber, and for a stray reconnect.
    let max_subscribers = (n + 64).max(1024);
    let server = launcher
        .msgbus_with(
            &cfg.work_dir.join("fanout"),
            &["--max-subscribers".to_string(), max_subscribers.to_string()],
        )
        .await?;
    let publisher = OpenLoop {
        rate: cfg.fanout_rate,
        connections: cfg.fanout_publishers,
    };
    let run = cfg.warmup + cfg.duration;
    let bound = run * 2 + Duration::from_secs(60);

    say(
        cfg,
        &format!(
            "fan-out: {} events/s, {} publisher connections, no subscriber",
            cfg.fanout_rate, cfg.fanout_publishers
        ),
    );
    let work = Work::Stamped {
        tag: run_tag("fanout-base"),
        head: None,
    };
    let running = publisher.start(server.addr, &work, bound).await?;
    tokio::time::sleep(run).await;
    let baseline = running.stop().await?;

    let after = stats(&server).await?["events"]["last_seq"]
        .as_u64()
        .unwrap_or(0);
    say(cfg, &format!("fan-out: connecting {n} SSE subscribers"));
    let subs = Subscribers::connect(server.addr, after, n).await?;
    let server_subscribers = sse_subscribers(&server).await;
    let connect_s = subs.connect_s;
    say(
        cfg,
        &format!(
            "fan-out: {n} subscribers connected in {connect_s:.2} s; {} events/s",
            cfg.fanout_rate
        ),
    );
    let work = Work::Stamped {
        tag: run_tag("fanout"),
        head: None,
    };
    subs.measure_from(fanout::clock_ns() + cfg.warmup.as_nanos() as u64);
    let cpu = || {
        Some((
            servers::cpu_seconds_of(server.pid)?,
            servers::cpu_seconds_of(std::process::id())?,
            std::time::Instant::now(),
        ))
    };
    let cpu_before = cpu();
    let running = publisher.start(server.addr, &work, bound).await?;
    tokio::time::sleep(run).await;
    let cpu_after = cpu();
    let published = running.stop().await?;
    let cpu_cores = match (cpu_before, cpu_after) {
        (Some((m0, b0, t0)), Some((m1, b1, t1))) if !server.in_process => {
            let wall = t1.duration_since(t0).as_secs_f64().max(1e-9);
            Some(CpuCores {
                msgbus: (m1 - m0) / wall,
                bench: (b1 - b0) / wall,
            })
        }
        _ => None,
    };
    let stopped_ns = fanout::clock_ns();
    let last = stats(&server).await?["events"]["last_seq"]
        .as_u64()
        .unwrap_or(0);
    let grace = Duration::from_secs(30) + cfg.duration;
    let outcome = subs.finish(last, grace).await?;
    let memory_after = server.memory();
    let in_process = server.in_process;
    server.stop().await?;

    let complete = outcome.subscribers.iter().filter(|s| s.complete).count();
    let deliveries: u64 = outcome.subscribers.iter().map(|s| s.received).sum();
    Ok(FanoutDoc {
        subscribers: n,
        server_subscribers,
        connect_s,
        rate_ratio_to_baseline: ratio(published.achieved_per_s, baseline.achieved_per_s),
        deliveries_per_s: deliveries as f64 / published.seconds.max(1e-9),
        baseline,
        publisher: published,
        after_seq: after,
        last_seq: last,
        events_published: last.saturating_sub(after),
        deliveries,
        latency: outcome.latency_summary(),
        latency_samples: outcome.latency.len(),
        drain_ms: outcome
            .all_done_ns
            .map(|d| d.saturating_sub(stopped_ns) as f64 / 1e6),
        subscribers_complete: complete,
        subscribers_incomplete: n - complete,
        first_failure: outcome
            .subscribers
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.failure.as_ref().map(|f| format!("subscriber {i}: {f}"))),
        unstamped: outcome.subscribers.iter().map(|s| s.unstamped).sum(),
        cpu_cores,
        memory_after,
        in_process,
    })
}

/// The name of the token the auth-on runs create and send.
const AUTH_TOKEN_NAME: &str = "bench";

/// 8: single events, then batches, each `repeat` interleaved pairs of runs
/// with access control off and on, every run on a fresh store.
async fn run_auth(cfg: &BenchConfig, launcher: &Launcher) -> Result<AuthDoc> {
    let c = cfg.max_connections();
    let mut pairs = Vec::with_capacity(cfg.repeat);
    for i in 0..cfg.repeat {
        let mut pair = Vec::with_capacity(2);
        for on in [false, true] {
            say(
                cfg,
                &format!(
                    "access control: single events, {c} connections{}: auth {}",
                    run_of(cfg, i),
                    side(on)
                ),
            );
            let work = single_work(&format!("auth-{}", side(on)));
            pair.push(auth_run(cfg, launcher, &format!("single-{}", i + 1), on, &work, c).await?);
        }
        let on = pair.pop().expect("two runs");
        let off = pair.pop().expect("two runs");
        pairs.push((off, on));
    }
    let single = AuthCompare::from_pairs("POST /events", c, 1, pairs);

    let mut pairs = Vec::with_capacity(cfg.repeat);
    for i in 0..cfg.repeat {
        let mut pair = Vec::with_capacity(2);
        for on in [false, true] {
            say(
                cfg,
                &format!(
                    "access control: batches of {}, {} connections{}: auth {}",
                    cfg.batch_size,
                    cfg.batch_connections,
                    run_of(cfg, i),
                    side(on)
                ),
            );
            let work = Work::Batch {
                tag: run_tag(&format!("auth-batch-{}", side(on))),
                size: cfg.batch_size,
            };
            let label = format!("batch-{}", i + 1);
            pair.push(auth_run(cfg, launcher, &label, on, &work, cfg.batch_connections).await?);
        }
        let on = pair.pop().expect("two runs");
        let off = pair.pop().expect("two runs");
        pairs.push((off, on));
    }
    let batch = AuthCompare::from_pairs(
        "POST /events/batch",
        cfg.batch_connections,
        cfg.batch_size as u64,
        pairs,
    );
    Ok(AuthDoc {
        token_role: "admin".into(),
        single,
        batch,
    })
}

fn side(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// One run of the access-control group on a fresh store in its own
/// directory (deleted afterwards; a batch run writes about a gigabyte).
/// With `on`, a token is created before msgbus starts, and every request
/// sends it. Fails when access control is not in the state asked for
/// (`GET /stats` without a token must answer 401 with auth on, 200 with it
/// off), when any request was not answered 201, or when the events stored
/// are not the events acknowledged.
async fn auth_run(
    cfg: &BenchConfig,
    launcher: &Launcher,
    label: &str,
    on: bool,
    work: &Work,
    connections: usize,
) -> Result<LoadResult> {
    let what = format!("access control {}, {label}", side(on));
    let dir = cfg.work_dir.join(format!("auth-{}-{label}", side(on)));
    let auth = if on {
        let spec = msgbus::auth::file::TokenSpec {
            name: AUTH_TOKEN_NAME.into(),
            role: msgbus::auth::Role::Admin,
            scope: Default::default(),
            rate: None,
            read_rate: None,
            expires: None,
        };
        let (_, token) = msgbus::auth::file::create(&dir, spec, &msgbus::clock::now_rfc3339())
            .map_err(|e| format!("{what}: cannot create a token: {e}"))?;
        Some(client::bearer(&token)?)
    } else {
        None
    };
    let server = launcher.msgbus(&dir).await?;
    let probe = client::get(server.addr, "/stats").await?.status;
    let result =
        match loadgen::closed_loop_with(server.addr, work, &cfg.closed(connections), auth.clone())
            .await
        {
            Ok(r) => client::get_json_with(server.addr, "/stats", auth)
                .await
                .map(|st| (r, total_events(&st))),
            Err(e) => Err(e),
        };
    server.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    let expected = if on { 401 } else { 200 };
    if probe.as_u16() != expected {
        return Err(format!(
            "{what}: GET /stats without a token answered {probe}, not {expected}: access control is not {}",
            side(on)
        )
        .into());
    }
    let (r, stored) = result?;
    every_request_created(&r, &what)?;
    if stored != r.events_total {
        return Err(format!(
            "{what}: msgbus stores {stored} events, the load generator counted {} acknowledged",
            r.events_total
        )
        .into());
    }
    Ok(r)
}

/// Fails unless every request of `r` was answered with its expected
/// status: a run in which requests were refused (a 401 from a token that
/// did not work, say) measures the refusals, not access control.
pub fn every_request_created(r: &LoadResult, what: &str) -> Result<()> {
    if r.errors > 0 || r.requests_total == 0 {
        return Err(format!(
            "{what}: {} requests failed and {} succeeded (statuses {:?}; first: {}): the run measures nothing",
            r.errors,
            r.requests_total,
            r.unexpected_statuses,
            r.first_error.as_deref().unwrap_or("none")
        )
        .into());
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The index of the median of `values` (the lower of the two middle ones
/// when there is an even number of them; with ties, one of the tied
/// values, any of them: they share the median value). Reporting the run at this index, rather than
/// the median of each figure separately, keeps every figure of a report
/// line from one real run.
///
/// # Panics
///
/// When `values` is empty.
pub fn median_index(values: &[f64]) -> usize {
    assert!(!values.is_empty(), "the median of no runs");
    let mut order: Vec<usize> = (0..values.len()).collect();
    // A stable sort: tied values keep their order.
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[(values.len() - 1) / 2]
}

/// `", run 2 of 3"` when runs are repeated, nothing otherwise.
fn run_of(cfg: &BenchConfig, i: usize) -> String {
    if cfg.repeat > 1 {
        format!(", run {} of {}", i + 1, cfg.repeat)
    } else {
        String::new()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn median_index_is_the_middle_value_or_the_lower_middle_one() {
        // One run: that run.
        assert_eq!(median_index(&[0.7]), 0);
        // Odd: the middle of the sorted values, wherever it ran.
        assert_eq!(median_index(&[0.41, 0.47, 0.45]), 2);
        assert_eq!(median_index(&[0.45, 0.41, 0.47]), 0);
        assert_eq!(median_index(&[0.47, 0.45, 0.41]), 1);
        assert_eq!(median_index(&[5.0, 1.0, 4.0, 2.0, 3.0]), 4);
        // Even: the lower of the two middle ones (2.0 of 1, 2, 3, 4).
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0]), 3);
        assert_eq!(median_index(&[0.9, 0.1]), 1);
        // Ties: a tied value at the median position.
        let tied = [0.5, 0.9, 0.5, 0.1];
        assert_eq!(tied[median_index(&tied)], 0.5);
        let all_same = [2.0, 2.0, 2.0];
        assert_eq!(all_same[median_index(&all_same)], 2.0);
        // A tie below the median does not move it.
        assert_eq!(median_index(&[0.3, 0.3, 0.8, 0.6, 0.9]), 3);
    }

    fn load(requests_per_s: f64, p99_ms: f64, errors: u64) -> LoadResult {
        LoadResult {
            connections: 64,
            seconds: 10.0,
            requests: (requests_per_s * 10.0) as u64,
            requests_per_s,
            events_per_s: requests_per_s,
            latency: Latency {
                p99_ms,
                ..Latency::default()
            },
            errors,
            unexpected_statuses: BTreeMap::new(),
            first_error: None,
            requests_total: 0,
            events_total: 0,
        }
    }

    fn fsync(events_per_fsync: f64) -> FsyncWindow {
        FsyncWindow {
            events_per_fsync,
            ..FsyncWindow::default()
        }
    }

    #[test]
    fn a_single_row_is_the_pair_with_the_median_ratio_whole() {
        // Ratios 0.5, 0.4, 0.3: the median is the second pair. It has the
        // highest msgbus and ceiling req/s, the worst p99 and the fewest
        // events per fsync, so taking the median of any other figure, or
        // mixing medians of different pairs, gives a different row.
        let pairs = vec![
            (load(10_000.0, 1.0, 0), load(5_000.0, 3.0, 1), fsync(30.0)),
            (load(20_000.0, 1.5, 0), load(8_000.0, 9.0, 0), fsync(10.0)),
            (load(10_000.0, 2.0, 2), load(3_000.0, 4.0, 0), fsync(25.0)),
        ];
        let row = SingleRow::from_pairs(64, pairs);
        assert_eq!(row.median_run, 1);
        assert_eq!(row.ratio_to_ceiling, 0.4);
        assert_eq!(row.ceiling.requests_per_s, 20_000.0);
        assert_eq!(row.ceiling.latency.p99_ms, 1.5);
        assert_eq!(row.msgbus.requests_per_s, 8_000.0);
        assert_eq!(row.msgbus.latency.p99_ms, 9.0);
        assert_eq!(row.fsync.events_per_fsync, 10.0);
        // Every pair is kept, in the order it ran.
        let ratios: Vec<f64> = row.runs.iter().map(|r| r.ratio).collect();
        assert_eq!(ratios, [0.5, 0.4, 0.3]);
        assert_eq!(row.runs[2].msgbus_p99_ms, 4.0);
        assert_eq!(row.runs[0].events_per_fsync, 30.0);
        assert_eq!(row.runs[0].ceiling_requests_per_s, 10_000.0);
        assert_eq!(row.errors_all_runs(), 3);
    }

    #[test]
    fn an_auth_comparison_is_the_pair_with_the_median_ratio_whole() {
        // Ratios on ÷ off: 0.9, 1.0, 0.8. The median is the first pair; it
        // has neither the median off nor the median on figure.
        let pairs = vec![
            (load(10_000.0, 2.0, 0), load(9_000.0, 2.5, 0)),
            (load(8_000.0, 1.0, 0), load(8_000.0, 1.1, 0)),
            (load(12_000.0, 3.0, 0), load(9_600.0, 4.0, 0)),
        ];
        let c = AuthCompare::from_pairs("POST /events", 64, 1, pairs);
        assert_eq!(c.median_run, 0);
        assert_eq!(c.ratio, 0.9);
        assert_eq!(c.off.requests_per_s, 10_000.0);
        assert_eq!(c.on.requests_per_s, 9_000.0);
        assert_eq!(c.on.latency.p99_ms, 2.5);
        let ratios: Vec<f64> = c.runs.iter().map(|p| p.ratio).collect();
        assert_eq!(ratios, [0.9, 1.0, 0.8]);
        assert_eq!(c.runs[2].off.p99_ms, 3.0);
        assert_eq!(c.runs[2].on.requests_per_s, 9_600.0);
    }

    #[test]
    fn a_run_with_any_refused_request_is_not_a_measurement() {
        let mut ok = load(10_000.0, 1.0, 0);
        ok.requests_total = 110_000;
        every_request_created(&ok, "auth on").unwrap();
        // Some 401s among many 201s.
        let mut refused = ok.clone();
        refused.errors = 3;
        refused.unexpected_statuses.insert(401, 3);
        let e = every_request_created(&refused, "auth on").unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
        // Nothing succeeded at all.
        let mut none = load(0.0, 0.0, 0);
        none.requests_total = 0;
        assert!(every_request_created(&none, "auth off").is_err());
    }
}
