//! The "large store" group (`--only large`, issue 14): one store grown
//! through several sizes (default 1M, 10M, 50M events of ~300 bytes), and
//! at each size what a store that large costs:
//!
//! 1. **fill** to the size by batches of `prefill_batch` events over
//!    `prefill_connections` connections (timed per step). Before the first
//!    batch one event with a known id is published, so it is seq 1; one
//!    event of a rare type goes in at seq `rare_at`;
//! 2. the server is stopped and **started** `startup_runs` times: seconds
//!    to `/health/ready` 200, `VmRSS`/`VmHWM` right after;
//! 3. a **duplicate of seq 1** (the same body again): it must answer 200
//!    with seq 1, otherwise the run fails;
//! 4. `GET /events/{seq}` at pseudo-random seqs over the whole store
//!    (`large_get_connections` connections, warm-up + measured period),
//!    and right after it the same reads' disk work without msgbus (the
//!    baseline: [`disk_floor`]);
//!
//! and at the largest size only:
//!
//! 5. a **filtered read** of the rare type across the whole store
//!    (`GET /events?type=<rare>&limit=1000`, following `next_after` to the
//!    end): its time and the events it found (must be exactly the one);
//! 6. **open-loop publishing** at `write_rate` events/s for
//!    `large_publish` seconds, then RSS;
//! 7. **single events** at the largest connection count on the large store
//!    and on an empty store started in the same run, as `slice_pairs`
//!    pairs of short runs (`slice` after `slice_warmup`), in the order
//!    empty, large, large, empty, empty, large, ... The figure is the
//!    ratio of the totals: every large-store request over every
//!    empty-store request, in equal measured time. Why not a few long
//!    runs and their median pair: the disk's speed on the machines we
//!    measure on drifts within minutes (the empty store alone ran between
//!    7,300 and 22,300 requests/s in 10-second runs minutes apart), so a
//!    pair of 10-second runs compared two different disks: the pairs of
//!    one run of the benchmark ranged 0.78 to 1.05, and the median pair of
//!    six runs 0.81 to 0.97. Short runs in alternating order see the same
//!    drift on both sides, and 16 pairs of them average it out;
//! 8. the server is stopped and `msgbus verify --data-dir` runs on the
//!    store: its time and throughput (store bytes ÷ seconds).
//!
//! Before all of it, an empty store is started `startup_runs` times: the
//! start-up the large store's is compared to.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::client::{self, Conn, Result};
use crate::event;
use crate::loadgen::{self, ClosedLoop, LoadResult, OpenLoop, OpenLoopResult, Work};
use crate::scenarios::{self, BenchConfig};
use crate::servers::{Launcher, Memory, Server};

/// `type` of the one rare event.
pub const RARE_TYPE: &str = "com.example.bench.rare";
/// `source` and `id` of the event published first (seq 1).
const FIRST_ID: &str = "large-first";

/// Figures at one size of the store.
#[derive(Debug, Clone, Serialize)]
pub struct LargeStep {
    /// Events stored at this step.
    pub events: u64,
    /// Bytes of the store (`/stats` `store.bytes`).
    pub store_bytes: u64,
    /// Seconds the fill from the previous size took.
    pub fill_s: f64,
    /// Events that fill added.
    pub fill_events: u64,
    /// Its rate, events/s.
    pub fill_events_per_s: f64,
    /// Launch to ready, each start, seconds.
    pub ready_runs_s: Vec<f64>,
    /// Memory right after each start.
    pub memory_runs: Vec<Option<Memory>>,
    /// Events the writer holds in memory after the last start (`/stats`
    /// `store.memory_entries`: the active segment's).
    pub memory_entries: Option<u64>,
    /// Size of the sealed segments' key filter after the last start.
    pub key_filter_bytes: Option<u64>,
    /// The duplicate of seq 1 was answered 200 with seq 1.
    pub duplicate_ok: bool,
    /// `GET /events/{seq}` at random seqs.
    pub random_get: LoadResult,
    /// The disk work of those reads without msgbus, right after them
    /// ([`disk_floor`]); none while no segment is sealed.
    pub disk_floor: Option<DiskFloor>,
}

/// What the store's files cost to read at random without msgbus: each
/// "read" is what a `GET /events/{seq}` of a sealed event makes the disk
/// do (an 8 KiB positional read at a random offset of an index file, then
/// a 4 KiB one of a segment, files picked in proportion to their size),
/// by as many threads as the `GET` run's connections, for as long. The
/// page cache is left as the `GET` run left it, so hits count as they did
/// for msgbus.
#[derive(Debug, Clone, Serialize)]
pub struct DiskFloor {
    /// Threads.
    pub threads: usize,
    /// Reads (index + segment pairs) in the measured period.
    pub reads: u64,
    /// Latency of one pair.
    pub latency: loadgen::Latency,
}

/// The largest size's extra figures.
#[derive(Debug, Clone, Serialize)]
pub struct LargeTop {
    /// Seq of the rare event.
    pub rare_seq: u64,
    /// Seconds to page `GET /events?type=<rare>` to the end.
    pub filtered_read_s: f64,
    /// Pages it took.
    pub filtered_pages: u64,
    /// Events it returned (must be 1).
    pub filtered_found: u64,
    /// The open-loop publisher.
    pub publisher: OpenLoopResult,
    /// Memory after it.
    pub memory_after_publish: Option<Memory>,
    /// Single events on the empty store (the pair with the median ratio).
    pub empty: LoadResult,
    /// Single events on the large store (that pair's).
    pub large: LoadResult,
    /// Requests/s of every large-store run summed over those of every
    /// empty-store run (all runs measure the same time): the ratio of the
    /// totals, the figure the target is checked on.
    pub ratio_to_empty: f64,
    /// Each pair's ratio, in order.
    pub runs_ratio: Vec<f64>,
    /// Index of the pair with the median ratio (`empty`, `large`).
    pub median_run: usize,
    /// Seconds `msgbus verify` took on the stopped store.
    pub verify_s: f64,
    /// Bytes of the store it verified (every file under the data directory).
    pub verify_bytes: u64,
    /// `verify_bytes` ÷ `verify_s`, in MB (10^6 bytes) per second.
    pub verify_mb_per_s: f64,
    /// Its verdict (`Healthy` expected).
    pub verify_verdict: String,
}

/// The whole group.
#[derive(Debug, Clone, Serialize)]
pub struct LargeDoc {
    /// Empty-store start-ups, seconds.
    pub empty_ready_runs_s: Vec<f64>,
    /// Their median.
    pub empty_ready_s: f64,
    /// One entry per size.
    pub steps: Vec<LargeStep>,
    /// At the largest size.
    pub top: LargeTop,
    /// Wall-clock length of the group, seconds.
    pub seconds: f64,
}

impl LargeDoc {
    /// The median start-up of the largest step.
    pub fn top_ready_s(&self) -> f64 {
        self.steps
            .last()
            .map(|s| median(&s.ready_runs_s))
            .unwrap_or(0.0)
    }

    /// The largest RSS right after a start at the largest size, MiB.
    pub fn top_rss_mib(&self) -> f64 {
        self.steps
            .last()
            .map(|s| {
                s.memory_runs
                    .iter()
                    .flatten()
                    .map(|m| m.vm_rss_mib)
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n => s[(n - 1) / 2],
    }
}

/// The large store runs with its backups keeping one distinct copy of each
/// sealed segment, not the default two: a 50M-event store with two copies
/// is about 55 GB, with one about 38 GB. Backups run on their own thread
/// and change neither memory nor start-up, which is what this group
/// measures; the fill copies each segment once at its seal either way.
const LARGE_STORE_FLAGS: [&str; 2] = ["--backup-copies", "1"];

/// Disk one stored event of the fill takes at most with
/// [`LARGE_STORE_FLAGS`]: its segment line (~340 bytes), its index record
/// and key (44 bytes), and one backup copy of both, rounded up.
const DISK_PER_EVENT: u64 = 850;

/// Free disk the group leaves for everything else on the machine.
const DISK_SPARE: u64 = 10 << 30;

/// Refuses to start when the largest size would leave less than
/// [`DISK_SPARE`] free on the work directory's disk (a 50M-event store
/// with its backup is about 38 GB): a full disk stops far more than this
/// benchmark.
fn check_disk(cfg: &BenchConfig, sizes: &[u64]) -> Result<()> {
    let top = sizes.iter().copied().max().unwrap_or(0);
    let need = top.saturating_mul(DISK_PER_EVENT) + DISK_SPARE;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let free = fs2::available_space(&cfg.work_dir)?;
    if free < need {
        return Err(format!(
            "the large-store group needs about {} GB free on {} for {top} events (store, index files, backups, {} GB spare); {} GB are free: lower BENCH_LARGE_SIZES",
            need >> 30,
            cfg.work_dir.display(),
            DISK_SPARE >> 30,
            free >> 30
        )
        .into());
    }
    Ok(())
}

/// Measures [`DiskFloor`] on the store in `dir` with `threads` threads for
/// `period`; `None` when it has no sealed segment yet.
fn disk_floor(dir: &Path, threads: usize, period: Duration) -> Result<Option<DiskFloor>> {
    use std::os::unix::fs::FileExt;
    let seg_dir = dir.join("segments");
    let mut segments = Vec::new();
    let mut indexes = Vec::new();
    for e in std::fs::read_dir(&seg_dir)? {
        let path = e?.path();
        let len = std::fs::metadata(&path)?.len();
        let name = path.to_string_lossy();
        if name.ends_with(".jsonl.idx") && len > 8192 {
            indexes.push((std::fs::File::open(&path)?, len));
        } else if name.ends_with(".jsonl") && len > 4096 {
            segments.push((std::fs::File::open(&path)?, len));
        }
    }
    if segments.is_empty() || indexes.is_empty() {
        return Ok(None);
    }
    /// A random `len`-byte read of one of `files`, picked in proportion to
    /// its size, at a random offset.
    fn read_one(
        files: &[(std::fs::File, u64)],
        total: u64,
        r: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let mut at = r % total;
        for (f, len) in files {
            if at < *len {
                let offset = at.min(len - buf.len() as u64);
                return f.read_exact_at(buf, offset);
            }
            at -= len;
        }
        Ok(())
    }
    let seg_total: u64 = segments.iter().map(|(_, l)| l).sum();
    let idx_total: u64 = indexes.iter().map(|(_, l)| l).sum();
    let deadline = Instant::now() + period;
    let results: Vec<std::io::Result<(hdrhistogram::Histogram<u64>, u64)>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|t| {
                    let (segments, indexes) = (&segments, &indexes);
                    scope.spawn(move || {
                        let mut hist = loadgen::histogram();
                        let (mut index_buf, mut seg_buf) = (vec![0u8; 8192], vec![0u8; 4096]);
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let r = loadgen::splitmix64(((t as u64) << 40) ^ n);
                            let started = Instant::now();
                            read_one(indexes, idx_total, r, &mut index_buf)?;
                            read_one(segments, seg_total, loadgen::splitmix64(r), &mut seg_buf)?;
                            let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                            n += 1;
                        }
                        Ok((hist, n))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a disk-floor thread panicked"))
                .collect()
        });
    let mut hist = loadgen::histogram();
    let mut reads = 0;
    for r in results {
        let (h, n) = r?;
        hist.add(&h).map_err(|e| e.to_string())?;
        reads += n;
    }
    Ok(Some(DiskFloor {
        threads: threads.max(1),
        reads,
        latency: loadgen::Latency::of(&hist),
    }))
}

fn say(cfg: &BenchConfig, msg: &str) {
    if cfg.mode != "test" {
        eprintln!("[bench] large: {msg}");
    }
}

fn one_event(id: &str, ty: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": "/bench/large",
            "type": ty,
            "datacontenttype": "application/json",
            "data": {"note": "x".repeat(160)},
        })
        .to_string(),
    )
}

/// Publishes one event; returns the status and the seq answered.
async fn publish(server: &Server, body: Bytes) -> Result<(StatusCode, u64)> {
    let mut c = Conn::connect(server.addr).await?;
    let res = c
        .send(Method::POST, "/events", Some("application/json"), body)
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap_or_default();
    Ok((res.status, v["seq"].as_u64().unwrap_or(0)))
}

/// Adds `n` events by batches; returns the seconds it took.
async fn fill(cfg: &BenchConfig, server: &Server, n: u64) -> Result<f64> {
    let began = Instant::now();
    let size = cfg.prefill_batch as u64;
    let full = n / size;
    let rest = n % size;
    for (batches, size) in [(full, size), (u64::from(rest > 0), rest)] {
        if batches == 0 || size == 0 {
            continue;
        }
        let spec = ClosedLoop {
            connections: cfg.prefill_connections.min(batches as usize).max(1),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(24 * 3600),
            max_requests: Some(batches),
        };
        let work = Work::Batch {
            tag: scenarios::run_tag("large"),
            size: size as usize,
        };
        let r = loadgen::closed_loop(server.addr, &work, &spec).await?;
        if r.errors > 0 || r.events_total != batches * size {
            return Err(format!(
                "large fill stored {} of {} events ({} errors; first: {:?})",
                r.events_total,
                batches * size,
                r.errors,
                r.first_error
            )
            .into());
        }
    }
    Ok(began.elapsed().as_secs_f64())
}

async fn stats(server: &Server) -> Result<serde_json::Value> {
    client::get_json(server.addr, "/stats").await
}

fn total(st: &serde_json::Value) -> u64 {
    st["events"]["total"].as_u64().unwrap_or(0)
}

/// Bytes of every distinct file under `dir`: backups share their copies
/// of sealed segments by hard link, and a linked copy counted once per
/// backup made a 30M-event store look like 118 GB.
fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path(), seen),
                Ok(m) if seen.insert((m.dev(), m.ino())) => m.len(),
                _ => 0,
            })
            .sum()
    }
    walk(dir, &mut std::collections::HashSet::new())
}

/// Runs `msgbus verify --data-dir dir`; returns the verdict.
async fn verify(launcher: &Launcher, dir: &Path) -> Result<String> {
    match launcher {
        Launcher::Processes { msgbus, .. } => {
            let out = tokio::process::Command::new(msgbus)
                .arg("verify")
                .arg("--data-dir")
                .arg(dir)
                .output()
                .await?;
            match out.status.code() {
                Some(0) => Ok("Healthy".into()),
                _ => Err(format!(
                    "msgbus verify on the large store: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
                .into()),
            }
        }
        Launcher::InProcess => {
            let dir = dir.to_path_buf();
            let v = tokio::task::spawn_blocking(move || {
                msgbus::offline::verify(&dir, &mut std::io::sink())
            })
            .await??;
            match v {
                msgbus::offline::Verdict::Healthy => Ok("Healthy".into()),
                other => Err(format!("msgbus verify on the large store: {other:?}").into()),
            }
        }
    }
}

/// Pages `GET /events?type=RARE` from the start to the newest event.
async fn filtered_read(server: &Server) -> Result<(f64, u64, u64)> {
    let began = Instant::now();
    let mut conn = Conn::connect(server.addr).await?;
    let (mut after, mut pages, mut found) = (0u64, 0u64, 0u64);
    loop {
        let path = format!("/events?type={RARE_TYPE}&limit=1000&after={after}");
        let res = conn.send(Method::GET, &path, None, Bytes::new()).await?;
        if res.status != StatusCode::OK {
            return Err(format!("GET {path} answered {}", res.status).into());
        }
        let page: serde_json::Value = serde_json::from_slice(&res.body)?;
        pages += 1;
        found += page["events"].as_array().map_or(0, |a| a.len() as u64);
        let next = page["next_after"].as_u64().unwrap_or(after);
        let last = page["last_seq"].as_u64().unwrap_or(0);
        if next <= after && next < last {
            return Err(format!("GET {path}: next_after did not advance ({next})").into());
        }
        after = next;
        if after >= last {
            break;
        }
    }
    Ok((began.elapsed().as_secs_f64(), pages, found))
}

/// Runs the group.
pub async fn run_large(cfg: &BenchConfig, launcher: &Launcher) -> Result<LargeDoc> {
    let began = Instant::now();
    let lc = &cfg.large;
    let mut sizes = lc.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let top_size = *sizes.last().ok_or("no large-store size given")?;
    if top_size < 2 || lc.rare_at < 2 || lc.rare_at >= top_size {
        return Err(format!(
            "the rare event's seq ({}) must lie between 2 and the largest size ({top_size})",
            lc.rare_at
        )
        .into());
    }

    // The empty store's start-up, for comparison.
    let empty_dir = cfg.work_dir.join("large-empty");
    let mut empty_ready_runs_s = Vec::new();
    for i in 0..cfg.startup_runs.max(1) {
        say(cfg, &format!("empty-store start-up, run {}", i + 1));
        let s = launcher.msgbus(&empty_dir).await?;
        empty_ready_runs_s.push(s.ready_after.as_secs_f64());
        s.stop().await?;
    }

    check_disk(cfg, &sizes)?;
    let dir = cfg.work_dir.join("large");
    let first = one_event(FIRST_ID, event::TYPE);
    let flags: Vec<String> = LARGE_STORE_FLAGS.iter().map(|f| f.to_string()).collect();
    let mut server = launcher.msgbus_with(&dir, &flags).await?;
    let (status, seq) = publish(&server, first.clone()).await?;
    if status != StatusCode::CREATED || seq != 1 {
        return Err(format!("the first event was answered {status} with seq {seq}").into());
    }
    let mut stored = 1u64;
    let mut rare_seq = 0u64;
    let mut steps = Vec::new();
    let mut top = None;
    for (k, &size) in sizes.iter().enumerate() {
        let is_top = k + 1 == sizes.len();
        // 1. Fill (the rare event at its seq on the way).
        say(cfg, &format!("filling from {stored} to {size} events"));
        let from = stored;
        let mut fill_s = 0.0;
        if rare_seq == 0 && lc.rare_at <= size {
            fill_s += fill(cfg, &server, lc.rare_at - 1 - stored).await?;
            let (st, seq) = publish(&server, one_event("large-rare", RARE_TYPE)).await?;
            if st != StatusCode::CREATED || seq != lc.rare_at {
                return Err(format!("the rare event was answered {st} with seq {seq}").into());
            }
            rare_seq = seq;
            stored = lc.rare_at;
        }
        fill_s += fill(cfg, &server, size.saturating_sub(stored)).await?;
        stored = total(&stats(&server).await?);
        if stored < size {
            return Err(format!("the large store holds {stored} events, not {size}").into());
        }
        say(
            cfg,
            &format!(
                "{} events added in {fill_s:.1} s ({:.0} events/s)",
                stored - from,
                (stored - from) as f64 / fill_s.max(1e-9)
            ),
        );

        // 2. Start-ups.
        let mut ready_runs_s = Vec::new();
        let mut memory_runs = Vec::new();
        for i in 0..cfg.startup_runs.max(1) {
            server.stop().await?;
            say(
                cfg,
                &format!("start-up with {stored} events, run {}", i + 1),
            );
            server = launcher.msgbus_with(&dir, &flags).await?;
            ready_runs_s.push(server.ready_after.as_secs_f64());
            memory_runs.push(server.memory());
        }
        let st = stats(&server).await?;

        // 3. The duplicate of seq 1.
        let (status, seq) = publish(&server, first.clone()).await?;
        if status != StatusCode::OK || seq != 1 {
            return Err(format!(
                "a duplicate of seq 1 with {stored} stored events was answered {status} with seq {seq}"
            )
            .into());
        }

        // 4. Random reads.
        say(
            cfg,
            &format!("GET /events/{{seq}} at random seqs, {stored} stored"),
        );
        let random_get = loadgen::closed_loop(
            server.addr,
            &Work::RandomEvent { max: stored },
            &ClosedLoop {
                connections: lc.get_connections,
                warmup: cfg.warmup,
                duration: cfg.duration,
                max_requests: None,
            },
        )
        .await?;
        if random_get.errors > 0 {
            return Err(format!(
                "GET /events/{{seq}} failed {} times; first: {:?}",
                random_get.errors, random_get.first_error
            )
            .into());
        }
        let disk_floor = {
            let (dir, threads, period) = (dir.clone(), lc.get_connections, cfg.duration);
            tokio::task::spawn_blocking(move || disk_floor(&dir, threads, period)).await??
        };
        steps.push(LargeStep {
            events: stored,
            store_bytes: st["store"]["bytes"].as_u64().unwrap_or(0),
            fill_s,
            fill_events: stored - from,
            fill_events_per_s: (stored - from) as f64 / fill_s.max(1e-9),
            ready_runs_s,
            memory_runs,
            memory_entries: st["store"]["memory_entries"].as_u64(),
            key_filter_bytes: st["writer"]["key_filter_bytes"].as_u64(),
            duplicate_ok: true,
            random_get,
            disk_floor,
        });
        if !is_top {
            continue;
        }

        // 5. Filtered read of the rare type across the whole store.
        say(cfg, "filtered read of the rare type across the store");
        let (filtered_read_s, filtered_pages, filtered_found) = filtered_read(&server).await?;
        if filtered_found != 1 {
            return Err(format!(
                "the filtered read found {filtered_found} events of the rare type, not 1"
            )
            .into());
        }

        // 6. Open-loop publishing, then memory.
        say(
            cfg,
            &format!(
                "publishing {} events/s for {:.0} s",
                cfg.write_rate,
                lc.publish.as_secs_f64()
            ),
        );
        let running = OpenLoop {
            rate: cfg.write_rate,
            connections: cfg.write_connections,
        }
        .start(
            server.addr,
            &Work::Single {
                tag: scenarios::run_tag("large-pub"),
                head: None,
            },
            lc.publish * 2 + Duration::from_secs(60),
        )
        .await?;
        tokio::time::sleep(lc.publish).await;
        let publisher = running.stop().await?;
        let memory_after_publish = server.memory();

        // 7. Single events, empty vs large, alternating short runs.
        let empty = launcher.msgbus(&empty_dir).await?;
        let c = cfg.connections.iter().copied().max().unwrap_or(1);
        let spec = ClosedLoop {
            connections: c,
            warmup: lc.slice_warmup,
            duration: lc.slice,
            max_requests: None,
        };
        let pairs_n = lc.slice_pairs.max(1);
        say(
            cfg,
            &format!(
                "single events @{c}, empty vs large: {pairs_n} pairs of {:.1} s runs",
                lc.slice.as_secs_f64()
            ),
        );
        let mut pairs = Vec::new();
        for i in 0..pairs_n {
            let run = |addr, tag| {
                let spec = &spec;
                async move { loadgen::closed_loop(addr, &scenarios::single_work(tag), spec).await }
            };
            let (e, l) = if i % 2 == 0 {
                let e = run(empty.addr, "large-e").await?;
                (e, run(server.addr, "large-l").await?)
            } else {
                let l = run(server.addr, "large-l").await?;
                (run(empty.addr, "large-e").await?, l)
            };
            if e.errors > 0 || l.errors > 0 {
                return Err(format!(
                    "single events failed (empty store {}, large store {}); first: {:?}",
                    e.errors,
                    l.errors,
                    e.first_error.as_ref().or(l.first_error.as_ref())
                )
                .into());
            }
            pairs.push((e, l));
        }
        empty.stop().await?;
        let runs_ratio: Vec<f64> = pairs
            .iter()
            .map(|(e, l)| l.requests_per_s / e.requests_per_s.max(1e-9))
            .collect();
        let total = |pick: fn(&(LoadResult, LoadResult)) -> &LoadResult| -> f64 {
            pairs.iter().map(|p| pick(p).requests_per_s).sum()
        };
        let ratio_to_empty = total(|p| &p.1) / total(|p| &p.0).max(1e-9);
        let median_run = scenarios::median_index(&runs_ratio);
        let (e, l) = pairs.swap_remove(median_run);
        server.stop().await?;

        // 8. Verify the stopped store.
        say(cfg, "msgbus verify on the stopped store");
        let verify_bytes = dir_bytes(&dir);
        let t = Instant::now();
        let verify_verdict = verify(launcher, &dir).await?;
        let verify_s = t.elapsed().as_secs_f64();
        top = Some(LargeTop {
            rare_seq,
            filtered_read_s,
            filtered_pages,
            filtered_found,
            publisher,
            memory_after_publish,
            ratio_to_empty,
            empty: e,
            large: l,
            runs_ratio,
            median_run,
            verify_s,
            verify_bytes,
            verify_mb_per_s: verify_bytes as f64 / 1e6 / verify_s.max(1e-9),
            verify_verdict,
        });
        break;
    }
    let top = top.ok_or("the largest size was not reached")?;
    Ok(LargeDoc {
        empty_ready_s: median(&empty_ready_runs_s),
        empty_ready_runs_s,
        steps,
        top,
        seconds: began.elapsed().as_secs_f64(),
    })
}
