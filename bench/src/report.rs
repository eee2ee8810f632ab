//! The machine description, the targets of issue 4 (met, or the
//! shortfall), and the table printed at the end of a run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::large::LargeDoc;
use crate::loadgen::OpenLoopResult;
use crate::scenarios::{AuthCompare, AuthDoc, FanoutDoc, Report};
use crate::servers::Memory;

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to the benchmark.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// Filesystem type of the data directories (`stat -f`); fsync cost depends on it.
    pub data_fs: String,
    /// `/proc/loadavg` when the run started: other work on the machine makes figures noisy.
    pub loadavg_start: String,
    /// `/proc/loadavg` when the run ended.
    pub loadavg_end: String,
    /// `git rev-parse HEAD` of the tree benchmarked, when known
    /// (`BENCH_GIT_COMMIT` overrides it).
    pub git_commit: String,
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The filesystem type of `dir`: `df` names ext4 as such, where `stat -f`
/// reports every ext2/3/4 filesystem as `ext2/ext3` (they share a magic
/// number); `stat -f` is the fallback where `df` lacks `--output`.
fn fs_type(dir: &Path) -> String {
    let dir = dir.display().to_string();
    let df = cmd("df", &["--output=fstype", &dir]);
    match df.lines().nth(1) {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => cmd("stat", &["-f", "-c", "%T", &dir]),
    }
}

/// `/proc/loadavg`, first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Describes this machine; `data_dir` is where the stores are.
pub fn machine(data_dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        data_fs: fs_type(data_dir),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        git_commit: std::env::var("BENCH_GIT_COMMIT")
            .unwrap_or_else(|_| cmd("git", &["rev-parse", "--short=12", "HEAD"])),
    }
}

/// One target of the issue.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// `>=` or `<=`.
    pub op: &'static str,
    /// The threshold.
    pub threshold: f64,
    /// The measured value.
    pub value: f64,
    /// Unit of both.
    pub unit: &'static str,
    /// Whether it is met.
    pub met: bool,
    /// `met` with the margin, or the shortfall.
    pub verdict: String,
}

fn at_least(name: String, value: f64, threshold: f64, unit: &'static str) -> Target {
    let met = value >= threshold;
    let verdict = if met {
        format!("met ({:.0}% of target)", 100.0 * value / threshold)
    } else {
        format!(
            "MISSED: short by {} {unit} ({:.0}% of target)",
            num(threshold - value),
            100.0 * value / threshold
        )
    };
    Target {
        name,
        op: ">=",
        threshold,
        value,
        unit,
        met,
        verdict,
    }
}

fn at_most(name: String, value: f64, threshold: f64, unit: &'static str) -> Target {
    let met = value <= threshold;
    let verdict = if met {
        format!("met ({:.0}% of limit)", 100.0 * value / threshold)
    } else {
        format!(
            "MISSED: over by {} {unit} ({:.1}x the limit)",
            num(value - threshold),
            value / threshold
        )
    };
    Target {
        name,
        op: "<=",
        threshold,
        value,
        unit,
        met,
        verdict,
    }
}

/// A target measured under an open-loop write load is not valid when that
/// load reached less than 95% of its rate.
fn not_valid_unless_rate(mut target: Target, p: &OpenLoopResult) -> Target {
    if p.achieved_per_s < 0.95 * p.target_per_s {
        target.met = false;
        target.verdict = format!(
            "{}; NOT VALID: the write load reached only {:.0} of {:.0} events/s",
            target.verdict, p.achieved_per_s, p.target_per_s
        );
    }
    target
}

/// Evaluates every target against a report (those of the scenarios that ran).
pub fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let top = r.single.iter().max_by_key(|row| row.connections);
    if let Some(row) = top {
        let c = row.connections;
        t.push(at_least(
            format!("single events @{c} conns: req/s ÷ ceiling req/s"),
            row.ratio_to_ceiling,
            0.6,
            "x",
        ));
        t.push(at_most(
            format!("single events @{c} conns: p99 latency"),
            row.msgbus.latency.p99_ms,
            5.0,
            "ms",
        ));
    }
    if let Some(b) = &r.batch {
        t.push(at_least(
            format!("batches of {}: durable events/s", b.batch_size),
            b.result.events_per_s,
            300_000.0,
            "events/s",
        ));
    }
    if let Some(row) = top {
        t.push(at_least(
            format!("events per fsync @{} conns", row.connections),
            row.fsync.events_per_fsync,
            20.0,
            "events",
        ));
    }
    // Without the empty-store run there is nothing to compare to.
    if let Some(z) = r
        .store_size
        .as_ref()
        .filter(|z| z.empty_requests_per_s > 0.0)
    {
        t.push(at_least(
            format!(
                "{} stored: single req/s ÷ empty-store req/s @{} conns",
                count(z.stored_events),
                z.result.connections
            ),
            z.ratio_to_empty,
            0.9,
            "x",
        ));
    }
    if let Some(rd) = &r.reads_under_load {
        let p = &rd.publisher;
        let load_note = |target: Target| not_valid_unless_rate(target, p);
        t.push(load_note(at_least(
            format!(
                "GET /events pages (limit {}) under {:.0} events/s of writes",
                r.config.read_limit, p.target_per_s
            ),
            rd.events_page.requests_per_s,
            20_000.0,
            "req/s",
        )));
        t.push(load_note(at_least(
            format!("GET /stats under {:.0} events/s of writes", p.target_per_s),
            rd.stats.requests_per_s,
            50_000.0,
            "req/s",
        )));
    }
    if let Some(st) = &r.startup {
        t.push(at_most(
            format!(
                "start-up with {} events: launch to ready",
                count(st.stored_events)
            ),
            st.ready_s,
            3.0,
            "s",
        ));
        if let Some(m) = st.memory_at_ready {
            // VmHWM (the peak) is never below VmRSS; 1 MB = 10^6 bytes.
            let mut target = at_most(
                format!(
                    "start-up with {} events: peak RSS (VmHWM)",
                    count(st.stored_events)
                ),
                m.vm_hwm_mib * 1.048_576,
                250.0,
                "MB",
            );
            if st.in_process {
                target.verdict = format!("{} (in-process: whole test process)", target.verdict);
            }
            t.push(target);
        }
    }
    if let Some(f) = &r.fanout {
        let mut target = not_valid_unless_rate(
            at_most(
                format!(
                    "fan-out, {} SSE subscribers at {:.0} events/s: p99 delivery",
                    count(f.subscribers as u64),
                    f.publisher.target_per_s
                ),
                f.latency.p99_ms,
                50.0,
                "ms",
            ),
            &f.publisher,
        );
        if f.subscribers_incomplete > 0 {
            target.met = false;
            target.verdict = format!(
                "{}; NOT VALID: {} subscribers missed events or got them out of order",
                target.verdict, f.subscribers_incomplete
            );
        }
        t.push(target);
    }
    if let Some(l) = &r.large {
        large_targets(&mut t, l);
    }
    t
}

/// MiB (what `/proc` gives) to MB (10^6 bytes, what the targets say).
fn mb(mib: f64) -> f64 {
    mib * 1.048_576
}

/// The targets of issue 14, at the largest size of the large-store group.
fn large_targets(t: &mut Vec<Target>, l: &LargeDoc) {
    let Some(step) = l.steps.last() else {
        return;
    };
    let n = count(step.events);
    let ready = l.top_ready_s();
    t.push(at_most(
        format!("large store, {n} events: launch to ready"),
        ready,
        1.0,
        "s",
    ));
    t.push(at_most(
        format!("large store, {n} events: RSS after start (largest of runs)"),
        mb(l.top_rss_mib()),
        256.0,
        "MB",
    ));
    if let Some(m) = &l.top.memory_after_publish {
        t.push(not_valid_unless_rate(
            at_most(
                format!(
                    "large store: RSS after {:.0} s of publishing",
                    l.top.publisher.seconds
                ),
                mb(m.vm_rss_mib),
                256.0,
                "MB",
            ),
            &l.top.publisher,
        ));
    }
    t.push(at_least(
        format!(
            "large store: single req/s @{} conns ÷ empty store",
            l.top.large.connections
        ),
        l.top.ratio_to_empty,
        0.9,
        "x",
    ));
    t.push(at_most(
        format!("large store, {n} events: GET /events/{{seq}} random, p99"),
        step.random_get.latency.p99_ms,
        2.0,
        "ms",
    ));
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A number with sensible precision and thousands separators.
pub fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        count(x.round() as u64)
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The human-readable table.
pub fn render(r: &Report) -> String {
    let m = &r.machine;
    let cfg = &r.config;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "msgbus benchmark ({} mode), {}, commit {}",
        r.mode, m.date, m.git_commit
    );
    let _ = writeln!(
        s,
        "machine: {} x {}, kernel {}, data on {}, load avg {} at start / {} at end",
        m.nproc, m.cpu_model, m.kernel, m.data_fs, m.loadavg_start, m.loadavg_end
    );
    let _ = writeln!(
        s,
        "load generator on the same machine; {:.1} s warm-up + {:.1} s measured per run; total {:.0} s",
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64(),
        r.total_seconds
    );
    if r.mode != "full" {
        let _ = writeln!(
            s,
            "NOTE: {} mode: short runs and a small store; figures are not meaningful.",
            r.mode
        );
    }
    if !r.single.is_empty() {
        render_single(&mut s, r);
    }
    if let Some(b) = &r.batch {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Batches{}: POST /events/batch of {} events, {} conns: {} req/s = {} durable events/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} events/fsync, errors {}",
            median_of(b.runs_events_per_s.len()),
            b.batch_size,
            b.result.connections,
            num(b.result.requests_per_s),
            num(b.result.events_per_s),
            b.result.latency.p50_ms,
            b.result.latency.p99_ms,
            b.fsync.events_per_fsync,
            b.errors_all_runs
        );
        if b.runs_events_per_s.len() > 1 {
            let _ = writeln!(
                s,
                "  durable events/s per run: {}",
                per_run(&b.runs_events_per_s, b.median_run, num)
            );
        }
    }
    if let Some(c) = &r.checks {
        let _ = writeln!(
            s,
            "Check: {} events acknowledged with 201, {} stored (/stats events.total): {}",
            count(c.events_acknowledged),
            count(c.events_stored),
            if c.consistent {
                "consistent"
            } else {
                "MISMATCH"
            }
        );
    }
    render_stored(&mut s, r);
    if let Some(f) = &r.fanout {
        render_fanout(&mut s, f);
    }
    if let Some(a) = &r.auth {
        render_auth(&mut s, a);
    }
    if let Some(q) = &r.queues {
        render_queues(&mut s, q);
    }
    if let Some(l) = &r.large {
        render_large(&mut s, l);
    }
    if let Some(sc) = &r.schemas {
        render_schemas(&mut s, sc);
    }
    if let Some(d) = &r.dashboard {
        render_dashboard(&mut s, d);
    }
    let _ = writeln!(s);
    if r.targets.is_empty() {
        let _ = writeln!(s, "Targets: none for the scenarios run");
        return s;
    }
    let _ = writeln!(s, "Targets:");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "  {:<4} {:<66} {:>10} {} {:<9} {} {}",
            if t.met { "ok" } else { "MISS" },
            t.name,
            num(t.value),
            t.op,
            num(t.threshold),
            t.unit,
            t.verdict
        );
    }
    let met = r.targets.iter().filter(|t| t.met).count();
    let _ = writeln!(s, "{met} of {} targets met", r.targets.len());
    s
}

/// `" (median of 3 runs)"`, or nothing for one run.
fn median_of(runs: usize) -> String {
    if runs > 1 {
        format!(" (median of {runs} runs)")
    } else {
        String::new()
    }
}

/// Each run's figure in the order they ran, the reported one starred, and
/// the range: `0.41 0.47 0.45* (0.41-0.47; * reported)`. The spread says
/// how far to trust the reported figure.
fn per_run(values: &[f64], reported: usize, fmt: impl Fn(f64) -> String) -> String {
    let list: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let star = if i == reported { "*" } else { "" };
            format!("{}{star}", fmt(v))
        })
        .collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}-{}; * reported)", list.join(" "), fmt(min), fmt(max))
}

fn render_single(s: &mut String, r: &Report) {
    let _ = writeln!(s);
    let repeat = r.single.iter().map(|row| row.runs.len()).max().unwrap_or(1);
    let _ = writeln!(
        s,
        "Single events: POST /events, ~300-byte CloudEvents, unique ids, closed loop{}",
        if repeat > 1 {
            format!(
                "; median of {repeat} runs: each row is the pair (ceiling run, then msgbus run) with the median ratio; errors of all runs"
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "{:>6} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>6} | {:>9} | {:>6}",
        "conns",
        "ceiling/s",
        "p50 ms",
        "p99 ms",
        "msgbus/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "ev/fsync",
        "errors"
    );
    for row in &r.single {
        let _ = writeln!(
            s,
            "{:>6} | {:>10} {:>8.2} {:>8.2} | {:>10} {:>8.2} {:>8.2} | {:>6.2} | {:>9.1} | {:>6}",
            row.connections,
            num(row.ceiling.requests_per_s),
            row.ceiling.latency.p50_ms,
            row.ceiling.latency.p99_ms,
            num(row.msgbus.requests_per_s),
            row.msgbus.latency.p50_ms,
            row.msgbus.latency.p99_ms,
            row.ratio_to_ceiling,
            row.fsync.events_per_fsync,
            row.errors_all_runs()
        );
    }
    if repeat > 1 {
        for row in &r.single {
            let ratios: Vec<f64> = row.runs.iter().map(|p| p.ratio).collect();
            let _ = writeln!(
                s,
                "ratio per run @{} conns: {}",
                row.connections,
                per_run(&ratios, row.median_run, |x| format!("{x:.2}"))
            );
        }
    }
    if let Some(row) = r.single.iter().max_by_key(|row| row.connections) {
        let f = &row.fsync;
        let _ = writeln!(
            s,
            "events per fsync @{} conns (from /stats): {} events / {} fsyncs = {:.1}; writer.events_per_fsync since start {:.1}; avg fsync {:.0} us",
            row.connections,
            count(f.events_written),
            count(f.fsyncs),
            f.events_per_fsync,
            f.events_per_fsync_since_start,
            f.fsync_avg_us
        );
    }
}

fn render_queues(s: &mut String, q: &crate::queues::QueuesDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Work queues: {} events drained by {} workers, fetch {} + ack each batch; acks durable before the answer",
        q.events, q.workers, q.batch
    );
    let row = |s: &mut String, name: &str, r: &crate::queues::QueueRun| {
        let _ = writeln!(
            s,
            "  {name:<44} {:>9} events/s  ({} events in {:.1} s, {} fetches, {} acks, {} errors)",
            num(r.events_per_s),
            r.events,
            r.seconds,
            r.fetches,
            r.acks,
            r.errors
        );
    };
    row(s, "msgbus fetch + ack", &q.msgbus);
    match (&q.redis, &q.redis_skipped) {
        (Some(r), _) => row(
            s,
            &format!(
                "Redis XREADGROUP + XACK, appendfsync always{}",
                q.redis_version
                    .as_deref()
                    .and_then(|v| v.split_whitespace().nth(2))
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            ),
            r,
        ),
        (None, Some(why)) => {
            let _ = writeln!(s, "  Redis row skipped: {why}");
        }
        (None, None) => {}
    }
}

fn render_large(s: &mut String, l: &LargeDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Large store (one store grown through the sizes; {:.0} s in all). Empty-store start-up: {} s",
        l.seconds,
        l.empty_ready_runs_s
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "  {:>11} {:>8} {:>8} {:>10} {:>20} {:>16} {:>16} {:>9} {:>9} {:>10} {:>9}",
        "events",
        "store GB",
        "fill s",
        "fill ev/s",
        "ready s (each run)",
        "RSS MiB (each)",
        "HWM MiB (each)",
        "in memory",
        "filter MB",
        "GET p50/p99",
        "dup seq 1"
    );
    for st in &l.steps {
        let list = |v: Vec<f64>, p: usize| {
            v.iter()
                .map(|x| format!("{x:.p$}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let rss = st
            .memory_runs
            .iter()
            .flatten()
            .map(|m| m.vm_rss_mib)
            .collect();
        let hwm = st
            .memory_runs
            .iter()
            .flatten()
            .map(|m| m.vm_hwm_mib)
            .collect();
        let _ = writeln!(
            s,
            "  {:>11} {:>8.2} {:>8.1} {:>10} {:>20} {:>16} {:>16} {:>9} {:>9.1} {:>10} {:>9}",
            count(st.events),
            st.store_bytes as f64 / 1e9,
            st.fill_s,
            num(st.fill_events_per_s),
            list(st.ready_runs_s.clone(), 2),
            list(rss, 0),
            list(hwm, 0),
            st.memory_entries.map(count).unwrap_or_else(|| "?".into()),
            st.key_filter_bytes.unwrap_or(0) as f64 / 1e6,
            format!(
                "{:.2}/{:.2}",
                st.random_get.latency.p50_ms, st.random_get.latency.p99_ms
            ),
            if st.duplicate_ok { "200, 1" } else { "WRONG" }
        );
    }
    let t = &l.top;
    let _ = writeln!(
        s,
        "  GET /events/{{seq}} at random seqs: {} conns, {} req/s at the largest size",
        l.steps
            .last()
            .map(|st| st.random_get.connections)
            .unwrap_or(0),
        l.steps
            .last()
            .map(|st| num(st.random_get.requests_per_s))
            .unwrap_or_default()
    );
    for st in &l.steps {
        let Some(floor) = &st.disk_floor else {
            continue;
        };
        let (get, disk) = (&st.random_get.latency, &floor.latency);
        let _ = writeln!(
            s,
            "  {} events: GET p50/p99 {:.2}/{:.2} ms; the same reads without msgbus (8 KiB of an index file + 4 KiB of a segment, {} threads) {:.3}/{:.3} ms; p99 ratio {:.2}",
            count(st.events),
            get.p50_ms,
            get.p99_ms,
            floor.threads,
            disk.p50_ms,
            disk.p99_ms,
            get.p99_ms / disk.p99_ms.max(1e-9)
        );
    }
    let _ = writeln!(
        s,
        "  filtered read (type of the one event at seq {}): {:.2} s, {} pages, {} found",
        count(t.rare_seq),
        t.filtered_read_s,
        count(t.filtered_pages),
        t.filtered_found
    );
    let _ = writeln!(
        s,
        "  publishing {:.0} events/s for {:.0} s: {:.0} achieved, p99 {:.2} ms, errors {}; then {}",
        t.publisher.target_per_s,
        t.publisher.seconds,
        t.publisher.achieved_per_s,
        t.publisher.latency.p99_ms,
        t.publisher.errors,
        mem(&t.memory_after_publish)
    );
    let _ = writeln!(
        s,
        "  single events @{} conns, {} pairs of short runs: ratio of the totals {:.3}; the median pair: empty {} req/s (p99 {:.2} ms), large {} req/s (p99 {:.2} ms); per pair {}",
        t.large.connections,
        t.runs_ratio.len(),
        t.ratio_to_empty,
        num(t.empty.requests_per_s),
        t.empty.latency.p99_ms,
        num(t.large.requests_per_s),
        t.large.latency.p99_ms,
        per_run(&t.runs_ratio, t.median_run, |x| format!("{x:.3}"))
    );
    let _ = writeln!(
        s,
        "  msgbus verify: {:.1} GB in {:.1} s = {:.0} MB/s ({})",
        t.verify_bytes as f64 / 1e9,
        t.verify_s,
        t.verify_mb_per_s,
        t.verify_verdict
    );
}

fn mem(m: &Option<Memory>) -> String {
    match m {
        Some(m) => format!(
            "VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            m.vm_rss_mib, m.vm_hwm_mib
        ),
        None => "unknown".into(),
    }
}

fn render_stored(s: &mut String, r: &Report) {
    let cfg = &r.config;
    if let Some(p) = &r.prefill {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Prefill: {} events ({:.0} MB of segments) in {:.1} s = {} events/s (batches of {}, {} conns)",
            count(p.events),
            p.store_bytes as f64 / 1e6,
            p.seconds,
            num(p.events_per_s),
            cfg.prefill_batch,
            cfg.prefill_connections
        );
    }
    if let Some(st) = &r.startup {
        let runs: Vec<String> = st.runs_s.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(
            s,
            "Start-up with {} events: ready in {:.3} s (median of [{}] s); at ready {}; after the load below {}{}",
            count(st.stored_events),
            st.ready_s,
            runs.join(", "),
            mem(&st.memory_at_ready),
            mem(&st.memory_after_load),
            if st.in_process { " (in-process: whole test process)" } else { "" }
        );
    }
    if let Some(z) = &r.store_size {
        let empty = if z.empty_requests_per_s > 0.0 {
            format!(
                "empty store {} req/s, ratio {:.2}",
                num(z.empty_requests_per_s),
                z.ratio_to_empty
            )
        } else {
            "empty store not measured in this run".to_string()
        };
        let _ = writeln!(
            s,
            "Store size{}: {} stored, single events @{} conns: {} req/s ({empty}), p50 {:.2} ms, p99 {:.2} ms, {:.1} events/fsync, errors {}",
            median_of(z.runs_requests_per_s.len()),
            count(z.stored_events),
            z.result.connections,
            num(z.result.requests_per_s),
            z.result.latency.p50_ms,
            z.result.latency.p99_ms,
            z.fsync.events_per_fsync,
            z.errors_all_runs
        );
        if z.runs_requests_per_s.len() > 1 {
            let _ = writeln!(
                s,
                "  req/s per run: {}",
                per_run(&z.runs_requests_per_s, z.median_run, num)
            );
        }
    }
    if let Some(rd) = &r.reads_under_load {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Reads under write load: publisher {:.0} of {:.0} events/s ({} conns, open loop; p50 {:.2} ms, p99 {:.2} ms from due time; {} late; errors {})",
            rd.publisher.achieved_per_s,
            rd.publisher.target_per_s,
            rd.publisher.connections,
            rd.publisher.latency.p50_ms,
            rd.publisher.latency.p99_ms,
            rd.publisher.late,
            rd.publisher.errors
        );
        for (name, l) in [
            (
                format!(
                    "GET /events?after=<head-{}>&limit={}",
                    2 * cfg.read_limit,
                    cfg.read_limit
                ),
                &rd.events_page,
            ),
            ("GET /stats".to_string(), &rd.stats),
        ] {
            let _ = writeln!(
                s,
                "  {:<40} {:>3} conns: {:>8} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                name,
                l.connections,
                num(l.requests_per_s),
                l.latency.p50_ms,
                l.latency.p99_ms,
                l.errors
            );
        }
    }
}

fn render_fanout(s: &mut String, f: &FanoutDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Fan-out: {} SSE subscribers (GET /events/stream; {} seen by msgbus), connected in {:.2} s",
        count(f.subscribers as u64),
        f.server_subscribers.map_or_else(|| "?".to_string(), count),
        f.connect_s
    );
    for (name, p) in [
        ("no subscriber", &f.baseline),
        ("with subscribers", &f.publisher),
    ] {
        let _ = writeln!(
            s,
            "  publish, {:<16} {:>7} of {:>7} events/s ({} conns, open loop; p50 {:.2} ms, p99 {:.2} ms from due time; {} late; errors {})",
            name,
            num(p.achieved_per_s),
            num(p.target_per_s),
            p.connections,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.late,
            p.errors
        );
    }
    let _ = writeln!(
        s,
        "  publish rate with subscribers ÷ without: {:.2}",
        f.rate_ratio_to_baseline
    );
    let l = &f.latency;
    let _ = writeln!(
        s,
        "  delivery (receive − send): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms over {} deliveries after the warm-up",
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        count(f.latency_samples)
    );
    let _ = writeln!(
        s,
        "  {} events published (seq {}..={}), {} deliveries ({} /s); last event reached every subscriber {} after the publisher stopped",
        count(f.events_published),
        f.after_seq + 1,
        f.last_seq,
        count(f.deliveries),
        num(f.deliveries_per_s),
        f.drain_ms
            .map_or_else(|| "(not all did)".to_string(), |ms| format!("{ms:.1} ms"))
    );
    if let Some(c) = f.cpu_cores {
        let _ = writeln!(
            s,
            "  CPU while publishing with subscribers: msgbus {:.2} cores, this benchmark process (publisher + subscribers) {:.2} cores",
            c.msgbus, c.bench
        );
    }
    let _ = writeln!(
        s,
        "  every event, in order: {} of {} subscribers{}; msgbus after the run: {}{}",
        count(f.subscribers_complete as u64),
        count(f.subscribers as u64),
        match &f.first_failure {
            Some(e) => format!(" (MISSED; first: {e})"),
            None => String::new(),
        },
        mem(&f.memory_after),
        if f.in_process {
            " (in-process: whole test process)"
        } else {
            ""
        }
    );
}

/// The rows of off/on pairs measured in events/s (the schemas and
/// dashboard groups): a header, then one row per pair of each comparison,
/// `*` marking the pair with the median ratio.
fn events_pair_rows(s: &mut String, on: &str, compares: &[&AuthCompare]) {
    let work = |c: &AuthCompare| {
        if c.events_per_request > 1 {
            format!("{} of {}", c.work, c.events_per_request)
        } else {
            c.work.clone()
        }
    };
    let w = compares
        .iter()
        .map(|c| work(c).len())
        .max()
        .unwrap_or(0)
        .max(24);
    let _ = writeln!(
        s,
        "{:<w$} {:>5} {:>4} | {:>11} {:>7} {:>7} | {:>11} {:>7} {:>7} | {:>7}",
        "work", "conns", "pair", "off ev/s", "p50 ms", "p99 ms", on, "p50 ms", "p99 ms", "on/off"
    );
    for c in compares {
        for (i, p) in c.runs.iter().enumerate() {
            let star = if i == c.median_run { "*" } else { "" };
            let _ = writeln!(
                s,
                "{:<w$} {:>5} {:>4} | {:>11} {:>7.2} {:>7.2} | {:>11} {:>7.2} {:>7.2} | {:>7.3}",
                work(c),
                c.connections,
                format!("{}{star}", i + 1),
                num(p.off.events_per_s),
                p.off.p50_ms,
                p.off.p99_ms,
                num(p.on.events_per_s),
                p.on.p50_ms,
                p.on.p99_ms,
                p.ratio
            );
        }
    }
}

fn render_schemas(s: &mut String, d: &crate::schemas::SchemasDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Payload schemas: {} events (10 data fields, nested) without a schema vs with one registered (every event validated); each run on a fresh store; * the pair with the median ratio",
        d.event_type
    );
    events_pair_rows(s, "on ev/s", &[&d.single, &d.batch]);
    for (what, c) in [("single events", &d.single), ("batches", &d.batch)] {
        let verdict = if c.ratio >= 0.9 { "met" } else { "missed" };
        let _ = writeln!(
            s,
            "  with ÷ without schema, median pair, {what}: {:.3} (target >= 0.900: {verdict})",
            c.ratio
        );
    }
}

fn render_dashboard(s: &mut String, d: &crate::dashboard::DashboardDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Dashboards: publishing without vs with {} simulated pages (each: /stats every 1 s, /consumers every 2 s, /health, /alerts, /admin/backups every 5 s); each run on a fresh store; pairs alternate which side runs first; * the pair with the median ratio",
        d.pages
    );
    events_pair_rows(s, "pages ev/s", &[&d.single]);
    let _ = writeln!(
        s,
        "  with ÷ without pages, median pair: {:.3} (the pages made {} requests, {:.1}/s)",
        d.single.ratio, d.page_requests, d.page_requests_per_s
    );
}

fn render_auth(s: &mut String, a: &AuthDoc) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Access control: auth off (no token: open on loopback) vs on (an {} token exists and every request sends it); each run on a fresh store; pairs run off, then on; * the pair with the median ratio",
        a.token_role
    );
    let _ = writeln!(
        s,
        "{:<26} {:>5} {:>4} | {:>9} {:>10} {:>7} {:>7} | {:>9} {:>10} {:>7} {:>7} | {:>6}",
        "work",
        "conns",
        "pair",
        "off req/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "on req/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "on/off"
    );
    for c in [&a.single, &a.batch] {
        let work = if c.events_per_request > 1 {
            format!("{} of {}", c.work, c.events_per_request)
        } else {
            c.work.clone()
        };
        for (i, p) in c.runs.iter().enumerate() {
            let star = if i == c.median_run { "*" } else { "" };
            let _ = writeln!(
                s,
                "{:<26} {:>5} {:>4} | {:>9} {:>10} {:>7.2} {:>7.2} | {:>9} {:>10} {:>7.2} {:>7.2} | {:>6.3}",
                work,
                c.connections,
                format!("{}{star}", i + 1),
                num(p.off.requests_per_s),
                num(p.off.events_per_s),
                p.off.p50_ms,
                p.off.p99_ms,
                num(p.on.requests_per_s),
                num(p.on.events_per_s),
                p.on.p50_ms,
                p.on.p99_ms,
                p.ratio
            );
        }
    }
    let line = |c: &AuthCompare| {
        let ratios: Vec<f64> = c.runs.iter().map(|p| p.ratio).collect();
        format!(
            "{:.3}, per pair {}",
            c.ratio,
            per_run(&ratios, c.median_run, |x| format!("{x:.3}"))
        )
    };
    let _ = writeln!(
        s,
        "  auth on ÷ off, median pair: single events @{} conns {}\n  auth on ÷ off, median pair: batches {}",
        a.single.connections,
        line(&a.single),
        line(&a.batch)
    );
}
