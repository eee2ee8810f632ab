//! `msgbus-bench`: runs every scenario against real processes, prints the
//! table and writes the JSON. `bench/run` builds everything and calls it;
//! every setting is a flag with a `BENCH_*` environment variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use msgbus_bench::report;
use msgbus_bench::scenarios::{self, BenchConfig, Scenario};
use msgbus_bench::servers::Launcher;

// The tests' nats-server harness: finds or installs nats-server, starts a
// single server and a three-node cluster, kills them with this process.
#[allow(dead_code)]
#[path = "../../tests/common/nats.rs"]
mod natsharness;

/// The msgbus performance benchmark.
#[derive(Parser, Debug)]
#[command(name = "msgbus-bench")]
struct Args {
    /// Smoke mode: every scenario for about a second, 10,000 prefilled events.
    #[arg(long, env = "BENCH_SMOKE")]
    smoke: bool,
    /// The msgbus binary (release build).
    #[arg(long, env = "BENCH_MSGBUS", default_value = "target/release/msgbus")]
    msgbus: PathBuf,
    /// The ceiling binary.
    #[arg(
        long,
        env = "BENCH_CEILING",
        default_value = "target/release/bench-ceiling"
    )]
    ceiling: PathBuf,
    /// Where to write the JSON [default: bench/results/latest.json, or smoke.json in smoke mode].
    #[arg(long, env = "BENCH_OUT")]
    out: Option<PathBuf>,
    /// Data directories and server logs go under here, in a fresh
    /// directory per run. Must be a real disk (fsync is part of the figures).
    #[arg(long, env = "BENCH_WORK_DIR", default_value = "target/bench-work")]
    work_dir: PathBuf,
    /// Keep the data directories and logs after the run.
    #[arg(long, env = "BENCH_KEEP_DATA")]
    keep_data: bool,
    /// Measured seconds per run [default: 10, smoke 0.8].
    #[arg(long, env = "BENCH_DURATION")]
    duration: Option<f64>,
    /// Warm-up seconds before each measured run [default: 1, smoke 0.2].
    #[arg(long, env = "BENCH_WARMUP")]
    warmup: Option<f64>,
    /// Runs of each single-event figure (interleaved pairs: ceiling, then
    /// msgbus), of the batches and of the store size; the run with the
    /// median figure is reported and every run is in the JSON. Run-to-run
    /// spread on a shared 2-core machine is about ±20%, so one run is not
    /// enough to judge a target [default: 3, smoke 1].
    #[arg(long, env = "BENCH_REPEAT")]
    repeat: Option<usize>,
    /// Connection counts for single events, comma-separated [default: 1,16,64].
    #[arg(long, env = "BENCH_CONNECTIONS", value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Connections for the batch scenario [default: 16].
    #[arg(long, env = "BENCH_BATCH_CONNECTIONS")]
    batch_connections: Option<usize>,
    /// Events stored before the store-size, start-up and read scenarios
    /// [default: 1000000, smoke 10000].
    #[arg(long, env = "BENCH_PREFILL")]
    prefill: Option<u64>,
    /// Background publish rate during the read scenarios, events/s [default: 10000].
    #[arg(long, env = "BENCH_WRITE_RATE")]
    write_rate: Option<f64>,
    /// Connections for each read scenario [default: 16].
    #[arg(long, env = "BENCH_READ_CONNECTIONS")]
    read_connections: Option<usize>,
    /// Start-ups to measure; the median is reported [default: 3, smoke 1].
    #[arg(long, env = "BENCH_STARTUP_RUNS")]
    startup_runs: Option<usize>,
    /// Run only these groups of scenarios, comma-separated: single (single
    /// events, batches, check), stored (prefill, start-up, store size,
    /// reads under load), fanout (SSE fan-out), auth (single events and
    /// batches with access control off, then on), large (a store grown
    /// through --large-sizes: fill, start-up, memory, reads, publishing,
    /// verify; long, never in the default run), queues (fetch + ack of a
    /// queue consumer with 16 workers beside Redis Streams with appendfsync
    /// always; installs redis-server when missing; never in the default
    /// run), schemas (order events without and with a JSON Schema; never
    /// in the default run), dashboard (single events without and with 10
    /// simulated dashboard pages polling /stats once a second; never in
    /// the default run) [default: single, stored, fanout, auth]. The JSON
    /// then goes to bench/results/only-<groups>.json unless --out says
    /// otherwise.
    #[arg(long, env = "BENCH_ONLY", value_enum, value_delimiter = ',')]
    only: Option<Vec<Scenario>>,
    /// Sizes the large-store group grows its one store through, events,
    /// comma-separated [default: 1000000,10000000,50000000, smoke 2000,5000].
    #[arg(long, env = "BENCH_LARGE_SIZES", value_delimiter = ',')]
    large_sizes: Option<Vec<u64>>,
    /// Seconds of publishing at --write-rate on the largest store before its
    /// memory is read [default: 60, smoke 0.5].
    #[arg(long, env = "BENCH_LARGE_PUBLISH")]
    large_publish: Option<f64>,
    /// SSE subscribers of the fan-out scenario [default: 1000, smoke 50].
    #[arg(long, env = "BENCH_FANOUT_SUBSCRIBERS")]
    fanout_subscribers: Option<usize>,
    /// Publish rate of the fan-out scenario, events/s [default: 5000, smoke 500].
    #[arg(long, env = "BENCH_FANOUT_RATE")]
    fanout_rate: Option<f64>,
    /// Publisher connections of the fan-out scenario [default: 64, smoke 8].
    #[arg(long, env = "BENCH_FANOUT_PUBLISHERS")]
    fanout_publishers: Option<usize>,
    /// `nats`: instead of the scenarios, the NATS backend beside the file
    /// backend: single events and batches through one and two msgbus
    /// instances in front of an R1 and an R3 stream (nats-server started
    /// here, installed when missing). The JSON goes to
    /// bench/results/nats.json unless --out says otherwise.
    #[arg(long, env = "BENCH_BACKEND", value_parser = ["nats"])]
    backend: Option<String>,
    /// Worker threads of the load generator [default: the number of cores].
    #[arg(long, env = "BENCH_CLIENT_THREADS")]
    client_threads: Option<usize>,
    /// Ad-hoc mode (for profiling): start no server, run one closed loop of
    /// `--load-work` against this address for the warm-up and duration, and
    /// print its result as JSON.
    #[arg(long)]
    load: Option<std::net::SocketAddr>,
    /// With `--load`: single, batch, page, stats, get:PATH (any GET) or
    /// random:MAX (`GET /events/{seq}` at random seqs from 1 to MAX).
    #[arg(long, default_value = "single")]
    load_work: String,
    /// With `--load`: connections.
    #[arg(long, default_value_t = 64)]
    load_connections: usize,
    /// With `--load`: a msgbus token (`mb_...`) every request sends as
    /// `Authorization: Bearer`, for a server with access control on
    /// [default: none].
    #[arg(long, env = "BENCH_LOAD_TOKEN", hide_env_values = true)]
    load_token: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.client_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msgbus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> msgbus_bench::client::Result<ExitCode> {
    if let Some(addr) = args.load {
        return load(addr, &args).await;
    }
    for (what, path) in [("msgbus", &args.msgbus), ("ceiling", &args.ceiling)] {
        if !path.exists() {
            return Err(format!(
                "the {what} binary {} does not exist; run bench/run (it builds it)",
                path.display()
            )
            .into());
        }
    }
    std::fs::create_dir_all(&args.work_dir)?;
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.work_dir)?;
    let mut cfg = if args.smoke {
        BenchConfig::smoke(run_dir.path().to_path_buf())
    } else {
        BenchConfig::full(run_dir.path().to_path_buf())
    };
    if let Some(d) = args.duration {
        cfg.duration = Duration::from_secs_f64(d);
    }
    if let Some(w) = args.warmup {
        cfg.warmup = Duration::from_secs_f64(w);
    }
    if let Some(n) = args.repeat {
        if n == 0 {
            return Err(
                "--repeat (BENCH_REPEAT) must be at least 1: each figure is the median of that many runs"
                    .into(),
            );
        }
        cfg.repeat = n;
    }
    if let Some(c) = args.connections {
        cfg.connections = c;
    }
    if let Some(c) = args.batch_connections {
        cfg.batch_connections = c;
    }
    if let Some(p) = args.prefill {
        cfg.prefill = p;
    }
    if let Some(r) = args.write_rate {
        cfg.write_rate = r;
    }
    if let Some(c) = args.read_connections {
        cfg.read_connections = c;
    }
    if let Some(sizes) = args.large_sizes {
        cfg.large.sizes = sizes;
    }
    if let Some(p) = args.large_publish {
        cfg.large.publish = Duration::from_secs_f64(p);
    }
    if let Some(&top) = cfg.large.sizes.iter().max() {
        if cfg.large.rare_at >= top {
            // Smaller sizes than the default: the rare event halfway.
            cfg.large.rare_at = (top / 2).max(2);
        }
    }
    if let Some(n) = args.startup_runs {
        cfg.startup_runs = n;
    }
    if let Some(n) = args.fanout_subscribers {
        cfg.fanout_subscribers = n;
    }
    if let Some(r) = args.fanout_rate {
        cfg.fanout_rate = r;
    }
    if let Some(n) = args.fanout_publishers {
        cfg.fanout_publishers = n.max(1);
    }
    if cfg.fanout_rate <= 0.0 || cfg.write_rate <= 0.0 {
        return Err("--fanout-rate and --write-rate must be above 0".into());
    }
    if args.backend.as_deref() == Some("nats") {
        let launcher = Launcher::Processes {
            msgbus: args.msgbus.clone(),
            ceiling: args.ceiling.clone(),
            logs: run_dir.path().to_path_buf(),
        };
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("bench/results/nats.json"));
        let r = nats_group(&cfg, &launcher, run_dir.path()).await;
        if args.keep_data {
            let kept = run_dir.keep();
            eprintln!("[bench] kept {}", kept.display());
        }
        let rep = r?;
        write_json(&out, &rep)?;
        print!("{}", msgbus_bench::nats::render(&rep));
        println!("JSON: {}", out.display());
        let errors: u64 = rep
            .rows
            .iter()
            .map(|r| r.single.errors + r.batch.errors)
            .sum();
        if errors > 0 {
            eprintln!("msgbus-bench: {errors} failed requests in the nats group");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut partial = None;
    if let Some(only) = &args.only {
        // Always in the fixed order, each once.
        cfg.scenarios = Scenario::SELECTABLE
            .into_iter()
            .filter(|s| only.contains(s))
            .collect();
        if cfg.scenarios != Scenario::ALL {
            let names: Vec<String> = cfg
                .scenarios
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect();
            partial = Some(names.join("-"));
        }
    }
    if cfg.runs(Scenario::Fanout) {
        raise_fd_limit(cfg.fanout_subscribers + cfg.fanout_publishers + 512);
    }
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from(match (&partial, args.smoke) {
            (None, false) => "bench/results/latest.json".to_string(),
            (None, true) => "bench/results/smoke.json".to_string(),
            (Some(p), false) => format!("bench/results/only-{p}.json"),
            (Some(p), true) => format!("bench/results/smoke-only-{p}.json"),
        })
    });
    let launcher = Launcher::Processes {
        msgbus: args.msgbus.clone(),
        ceiling: args.ceiling.clone(),
        logs: run_dir.path().to_path_buf(),
    };
    eprintln!(
        "[bench] {} mode; data and logs in {}",
        cfg.mode,
        run_dir.path().display()
    );
    let result = scenarios::run_all(&cfg, &launcher).await;
    if args.keep_data {
        let kept = run_dir.keep();
        eprintln!("[bench] kept {}", kept.display());
    }
    let rep = result?;

    write_json(&out, &rep)?;
    print!("{}", report::render(&rep));
    println!("JSON: {}", out.display());

    let mut failed = false;
    if rep.checks.as_ref().is_some_and(|c| !c.consistent) {
        eprintln!("msgbus-bench: the events stored do not match the 201s counted");
        failed = true;
    }
    if let Some(f) = &rep.fanout {
        if f.subscribers_incomplete > 0 {
            eprintln!(
                "msgbus-bench: {} of {} SSE subscribers did not receive every event in order; first: {}",
                f.subscribers_incomplete,
                f.subscribers,
                f.first_failure.as_deref().unwrap_or("?")
            );
            failed = true;
        }
    }
    if args.smoke {
        let errors = rep.checks.as_ref().map_or(0, |c| c.errors)
            + rep
                .fanout
                .as_ref()
                .map_or(0, |f| f.baseline.errors + f.publisher.errors);
        if errors > 0 {
            eprintln!("msgbus-bench: smoke run had {errors} failed requests");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes `rep` as pretty JSON to `out` (through a temp file and a rename).
fn write_json(
    out: &std::path::Path,
    rep: &impl serde::Serialize,
) -> msgbus_bench::client::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("json.tmp");
    let mut json = serde_json::to_vec_pretty(rep)?;
    json.push(b'\n');
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// `--backend nats`: a single nats-server (R1) and a three-node cluster
/// (R3) on loopback, kept for the whole group.
async fn nats_group(
    cfg: &BenchConfig,
    launcher: &Launcher,
    dir: &std::path::Path,
) -> msgbus_bench::client::Result<msgbus_bench::nats::NatsReport> {
    let bin = natsharness::nats_server_binary(natsharness::CLUSTER_MIN_VERSION)
        .await
        .ok_or("no nats-server >= 2.10.11 could be found or installed")?;
    let version = natsharness::version_of(&bin).map_or("?".into(), natsharness::show);
    eprintln!("[bench] nats-server {version} at {}", bin.display());
    let single = natsharness::NatsServer::start(&bin, &[]).await;
    let cluster = natsharness::NatsCluster::start(&bin, 3).await;
    let ncfg = msgbus_bench::nats::NatsConfig {
        work_dir: dir.to_path_buf(),
        warmup: cfg.warmup,
        duration: cfg.duration,
        r1_urls: single.url(),
        r3_urls: cluster.urls(),
        nats_version: version,
        queue_events: if cfg.mode == "full" { 20_000 } else { 2_000 },
    };
    let r = msgbus_bench::nats::run(&ncfg, launcher).await;
    drop(cluster);
    drop(single);
    r
}

/// Raises this process's open-file limit (which msgbus, started from it,
/// inherits) to the hard limit: the fan-out scenario holds one socket per
/// subscriber on each side. Warns when even that is below `needed`.
fn raise_fd_limit(needed: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut now = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        now = hard;
    }
    if now < needed as u64 {
        eprintln!(
            "[bench] warning: the open-file limit is {now} (hard {hard}); the fan-out scenario needs about {needed}: raise it (ulimit -n) or lower --fanout-subscribers"
        );
    }
}

/// `--load`: one closed loop against a running server.
async fn load(addr: std::net::SocketAddr, args: &Args) -> msgbus_bench::client::Result<ExitCode> {
    use msgbus_bench::loadgen::{self, ClosedLoop, Work};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let tag: Arc<str> = format!("load-{}", std::process::id()).into();
    let work = match args.load_work.as_str() {
        "single" => Work::Single { tag, head: None },
        "batch" => Work::Batch { tag, size: 100 },
        "page" => {
            let auth = match &args.load_token {
                Some(t) => Some(msgbus_bench::client::bearer(t)?),
                None => None,
            };
            let stats = msgbus_bench::client::get_json_with(addr, "/stats", auth).await?;
            let last = stats["events"]["last_seq"].as_u64().unwrap_or(0);
            Work::RecentPage {
                head: Arc::new(AtomicU64::new(last)),
                limit: 100,
            }
        }
        "stats" => Work::Get {
            path: "/stats".into(),
        },
        other if other.starts_with("get:") => Work::Get {
            path: other["get:".len()..].into(),
        },
        other if other.starts_with("random:") => Work::RandomEvent {
            max: other["random:".len()..]
                .parse()
                .map_err(|e| format!("--load-work {other:?}: {e}"))?,
        },
        other => return Err(format!("unknown --load-work {other:?}").into()),
    };
    let spec = ClosedLoop {
        connections: args.load_connections,
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(1.0)),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
        max_requests: None,
    };
    let auth = match &args.load_token {
        Some(t) => Some(msgbus_bench::client::bearer(t)?),
        None => None,
    };
    let r = loadgen::closed_loop_with(addr, &work, &spec, auth).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}
