//! The fault-injection harness: an in-process server with short monitor
//! intervals, a publisher that records what every acknowledged event read
//! back as right after it was published, a watchdog that checks that no
//! corrupt event is ever served, a webhook receiver, file-damaging helpers
//! and a tmpfs mount guard.
//!
//! Some of this is adapted from `tests/api/helpers.rs` (server start/stop,
//! child-process environment); it is copied rather than shared so the two
//! suites can change independently.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use msgbus::app::{AppError, Application};
use msgbus::cli::Cli;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The monitor interval every test runs with, in seconds.
pub const INTERVAL_SECS: f64 = 0.5;

/// Two monitor intervals plus slack: the bound for every repair.
pub const REPAIR_DEADLINE: Duration = Duration::from_secs(2);

/// The media type every error must carry.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Settings every test server starts with; a test's own settings replace
/// these flag by flag. Reads never come from the in-memory cache
/// (`--read-cache-bytes 0`), so every read below really goes to the files
/// that were damaged.
const BASE_ARGS: &[(&str, &str)] = &[
    ("--monitor-interval", "0.5"),
    ("--segment-bytes", "4KiB"),
    ("--read-cache-bytes", "0"),
    ("--min-free-bytes", "0"),
    ("--backup-interval", "1h"),
    ("--shutdown-timeout", "2s"),
];

fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

/// Prints a measurement (visible with `--nocapture`).
pub fn note(what: impl std::fmt::Display) {
    eprintln!("[healing] {what}");
}

// ---------------------------------------------------------------------------
// Data directories and servers

/// A data directory: a temporary one (deleted on drop) or a given path.
pub struct DataDir {
    /// Its path.
    pub path: PathBuf,
    _tmp: Option<TempDir>,
}

impl DataDir {
    /// A fresh temporary directory.
    pub fn temp() -> DataDir {
        let tmp = tempfile::Builder::new()
            .prefix("msgbus-heal-")
            .tempdir()
            .expect("create a temp dir");
        DataDir {
            path: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
        }
    }

    /// An existing path (not deleted on drop).
    pub fn at(path: PathBuf) -> DataDir {
        DataDir { path, _tmp: None }
    }
}

/// The `serve` command line for `dir`: the base settings, then `args`
/// (which replace base settings of the same flag).
pub fn argv(dir: &Path, args: &[(&str, &str)]) -> Vec<String> {
    let mut pairs: Vec<(String, String)> = BASE_ARGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in args {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v.to_string(),
            None => pairs.push((k.to_string(), v.to_string())),
        }
    }
    let mut out = vec![
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--addr".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    for (k, v) in pairs {
        out.push(k);
        out.push(v);
    }
    out
}

/// A server running inside the test process.
pub struct TestApp {
    /// A client for it.
    pub api: Api,
    dir: DataDir,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), AppError>>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Starts a server on `dir` with the base settings plus `args`.
pub async fn start(dir: DataDir, args: &[(&str, &str)]) -> TestApp {
    if test_log() {
        msgbus::telemetry::init(msgbus::cli::LogFormat::Pretty);
    }
    let mut full = vec!["msgbus".to_string()];
    full.extend(argv(&dir.path, args));
    let config = Cli::parse_from(full).serve;
    let app = Application::build(config)
        .await
        .unwrap_or_else(|e| panic!("server failed to start on {}: {e}", dir.path.display()));
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        api: Api::new(addr),
        dir,
        stop,
        task,
    }
}

impl TestApp {
    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir.path
    }

    /// Shuts the server down in order and hands back its data directory.
    pub async fn stop(self) -> DataDir {
        let TestApp {
            dir, stop, task, ..
        } = self;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("server stops within 15 s")
            .expect("server task does not panic")
            .expect("server stops cleanly");
        dir
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// An HTTP client that knows where the server is.
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("build a reqwest client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`: status, content type and raw body.
    pub async fn get(&self, path: &str) -> Reply {
        let res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Reply::read(res).await
    }

    /// `POST path` with a JSON body (`None`: empty body).
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.client.post(self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Reply::read(res).await
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path} -> {}", r.text());
        r.json()
    }

    /// Every alert listed by `GET /alerts`, oldest first.
    pub async fn alerts(&self) -> Vec<Value> {
        self.get_json("/alerts").await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The id of the newest alert (0 if none).
    pub async fn last_alert_id(&self) -> u64 {
        self.alerts()
            .await
            .iter()
            .filter_map(|a| a["id"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// The backups listed by `GET /admin/backups`, oldest first.
    pub async fn backups(&self) -> Vec<Value> {
        self.get_json("/admin/backups").await["backups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The status of `GET /health/ready`.
    pub async fn ready_status(&self) -> u16 {
        self.get("/health/ready").await.status
    }
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type` without parameters.
    pub content_type: String,
    /// Raw body.
    pub body: Vec<u8>,
}

impl Reply {
    async fn read(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an RFC 9457 problem with `status` and `type` ending in
    /// `urn:msgbus:problem:<slug>`; returns it.
    pub fn assert_problem(&self, status: u16, slug: &str, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: status; body {}", self.text());
        assert_eq!(
            self.content_type,
            PROBLEM_JSON,
            "{what}: an error must be problem+json; body {}",
            self.text()
        );
        let p = self.json();
        assert_eq!(
            p["type"],
            format!("urn:msgbus:problem:{slug}"),
            "{what}: problem type; body {p}"
        );
        assert_eq!(p["status"], status, "{what}: problem status; body {p}");
        assert!(
            p["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: problem detail; body {p}"
        );
        p
    }
}

// ---------------------------------------------------------------------------
// Events

/// The event number `n` of a test stream `prefix`: its data carries `n` and a
/// pad of `pad` letters `x`, so any corruption of a served event is visible
/// even if it is still valid JSON. (Prefixes must not contain `x`.)
pub fn event(prefix: &str, n: u64, pad: usize) -> Value {
    assert!(!prefix.contains('x'), "prefixes must not contain x");
    json!({
        "type": "t.heal",
        "source": format!("/heal/{prefix}"),
        "id": format!("{prefix}-{n}"),
        "data": {"n": n, "len": pad, "pad": "x".repeat(pad)},
    })
}

/// Checks that a served event is one this harness published, uncorrupted.
pub fn check_served(ev: &Value) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: {ev}"));
    let Some(prefix) = ev["source"].as_str().and_then(|s| s.strip_prefix("/heal/")) else {
        return bad("source is not /heal/<prefix>");
    };
    let Some(n) = ev["data"]["n"].as_u64() else {
        return bad("data.n missing");
    };
    if ev["id"] != format!("{prefix}-{n}") {
        return bad("id does not match data.n");
    }
    if ev["type"] != "t.heal" {
        return bad("type is not t.heal");
    }
    let (Some(len), Some(pad)) = (ev["data"]["len"].as_u64(), ev["data"]["pad"].as_str()) else {
        return bad("data.len or data.pad missing");
    };
    if pad.len() as u64 != len || pad.bytes().any(|b| b != b'x') {
        return bad("data.pad is corrupt");
    }
    Ok(())
}

/// What each acknowledged event read back as right after it was published:
/// seq → the exact body of `GET /events/{seq}`.
pub type Acked = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// A new, empty record of acknowledged events.
pub fn acked() -> Acked {
    Arc::new(Mutex::new(BTreeMap::new()))
}

#[derive(Deserialize)]
struct StoredRaw<'a> {
    seq: u64,
    #[serde(borrow)]
    event: &'a RawValue,
}

#[derive(Deserialize)]
struct PageRaw<'a> {
    #[serde(borrow)]
    events: Vec<StoredRaw<'a>>,
    next_after: u64,
}

/// Reads back event `seq` and checks it is the event `sent`; records the
/// exact body in `acked`. Damage injected between the 201 and this read can
/// hit the new record itself (a truncation cuts the newest records): then
/// the read must be refused (503 damaged-data, never wrong bytes) and
/// served again, exactly as published, once repaired (at most 3 s).
async fn read_back(api: &Api, seq: u64, sent: &Value, acked: &Acked) -> Result<(), String> {
    let t0 = Instant::now();
    let mut refused = false;
    loop {
        let r = api.get(&format!("/events/{seq}")).await;
        if r.status == 503
            && t0.elapsed() < Duration::from_secs(3)
            && r.json()["type"] == "urn:msgbus:problem:damaged-data"
        {
            refused = true;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if r.status != 200 {
            return Err(format!(
                "GET /events/{seq} after its 201 -> {} {} (after {} ms)",
                r.status,
                r.text(),
                t0.elapsed().as_millis()
            ));
        }
        let v = r.json();
        if v["seq"] != seq || v["event"]["id"] != sent["id"] || v["event"]["data"] != sent["data"] {
            return Err(format!(
                "GET /events/{seq} right after publishing {sent} served {v}"
            ));
        }
        if refused {
            note(format!(
                "seq {seq}: read back after {} ms (refused as damaged until repaired)",
                t0.elapsed().as_millis()
            ));
        }
        acked.lock().unwrap().insert(seq, r.body);
        return Ok(());
    }
}

/// Publishes one event, expects 201, reads it back and records it.
pub async fn publish_one(api: &Api, ev: &Value, acked: &Acked) -> Result<u64, String> {
    let r = api.post("/events", Some(ev)).await;
    if r.status != 201 {
        return Err(format!("POST /events -> {} {}", r.status, r.text()));
    }
    let seq = r.json()["seq"]
        .as_u64()
        .ok_or_else(|| format!("201 without a seq: {}", r.text()))?;
    read_back(api, seq, ev, acked).await?;
    Ok(seq)
}

/// Publishes events `from..from+count` of stream `prefix` in batches of 50
/// (fast fill), reading each back and recording it. Returns the last seq.
pub async fn prefill(
    api: &Api,
    prefix: &str,
    from: u64,
    count: u64,
    pad: usize,
    acked: &Acked,
) -> u64 {
    let mut last = 0;
    let mut n = from;
    while n < from + count {
        let k = (from + count - n).min(50);
        let evs: Vec<Value> = (n..n + k).map(|i| event(prefix, i, pad)).collect();
        let r = api
            .post("/events/batch", Some(&Value::from(evs.clone())))
            .await;
        assert_eq!(r.status, 201, "prefill batch -> {}", r.text());
        let results = r.json()["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(results.len(), evs.len(), "one result per item");
        for (res, ev) in results.iter().zip(&evs) {
            let seq = res["seq"].as_u64().expect("seq");
            read_back(api, seq, ev, acked)
                .await
                .unwrap_or_else(|e| panic!("prefill: {e}"));
            last = seq;
        }
        n += k;
    }
    last
}

/// Reads every acknowledged event back, one by one and by paging through
/// the whole log, and asserts each is byte-identical to what was read right
/// after it was published, and that sequence numbers are gapless.
pub async fn assert_all_intact(api: &Api, acked: &Acked) {
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "nothing was acknowledged");
    let mut problems = Vec::new();
    for (seq, body) in &acked {
        let r = api.get(&format!("/events/{seq}")).await;
        if r.status != 200 {
            problems.push(format!("seq {seq}: GET -> {} {}", r.status, r.text()));
        } else if &r.body != body {
            problems.push(format!(
                "seq {seq}: bytes differ\n  then: {}\n  now:  {}",
                String::from_utf8_lossy(body),
                r.text()
            ));
        }
    }
    // The same through paging, comparing the raw event bytes.
    let mut after = 0;
    let mut seen = Vec::new();
    let mut paged = true;
    loop {
        let r = api.get(&format!("/events?after={after}&limit=500")).await;
        if r.status != 200 {
            problems.push(format!(
                "GET /events?after={after} -> {} {}",
                r.status,
                r.text()
            ));
            paged = false;
            break;
        }
        let page: PageRaw = serde_json::from_slice(&r.body).expect("a page parses");
        if page.events.is_empty() {
            break;
        }
        for e in &page.events {
            seen.push(e.seq);
            if let Some(body) = acked.get(&e.seq) {
                let then: StoredRaw = serde_json::from_slice(body).expect("stored body parses");
                if then.event.get() != e.event.get() {
                    problems.push(format!("seq {}: paged bytes differ", e.seq));
                }
            }
        }
        after = page.next_after;
    }
    for w in seen.windows(2) {
        if w[1] != w[0] + 1 {
            problems.push(format!("gap in the log: {} then {}", w[0], w[1]));
        }
    }
    for seq in acked.keys() {
        if paged && seen.binary_search(seq).is_err() {
            problems.push(format!("acknowledged seq {seq} is missing from the log"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} acknowledged event(s) not intact (of {}):\n{}",
        problems.len(),
        acked.len(),
        problems.join("\n")
    );
    note(format!(
        "{} acknowledged events read back byte-identical",
        acked.len()
    ));
}

// ---------------------------------------------------------------------------
// Background traffic

/// A client publishing continuously, reading every event back right after
/// its 201.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    task: JoinHandle<Vec<String>>,
}

impl Publisher {
    /// Starts publishing stream `prefix` (numbers from `from`), pausing
    /// `pause` between events.
    pub fn start(api: &Api, prefix: &str, from: u64, pause: Duration, acked: &Acked) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let task = {
            let (api, prefix, acked) = (api.clone(), prefix.to_string(), acked.clone());
            let (stop, count) = (stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut n = from;
                while !stop.load(Ordering::SeqCst) {
                    match publish_one(&api, &event(&prefix, n, 120), &acked).await {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.push(e),
                    }
                    n += 1;
                    tokio::time::sleep(pause).await;
                }
                failures
            })
        };
        Publisher { stop, count, task }
    }

    /// Waits until `more` further events have been acknowledged (at most 10 s).
    pub async fn wait_for_more(&self, more: u64) {
        let target = self.count.load(Ordering::SeqCst) + more;
        let started = Instant::now();
        while self.count.load(Ordering::SeqCst) < target {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the publisher made no progress for 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops; asserts that every publish was acknowledged and read back
    /// intact; returns how many were.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.expect("publisher task");
        assert!(
            failures.is_empty(),
            "publishing must go on through the damage and its repair; {} failure(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
        self.count.load(Ordering::SeqCst)
    }
}

/// A reader paging through the whole log over and over, checking that no
/// corrupt event is ever served (a refusal, 503 damaged-data, is fine).
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, u64, Vec<String>)>,
}

impl Watchdog {
    /// Starts watching.
    pub fn start(api: &Api, acked: &Acked) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut served, mut refused, mut bad) = (0u64, 0u64, Vec::new());
                let mut after = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = api.get(&format!("/events?after={after}&limit=100")).await;
                    match r.status {
                        200 => {
                            let page: PageRaw = match serde_json::from_slice(&r.body) {
                                Ok(p) => p,
                                Err(e) => {
                                    bad.push(format!("a page is not JSON ({e}): {}", r.text()));
                                    continue;
                                }
                            };
                            for e in &page.events {
                                served += 1;
                                let v: Value = match serde_json::from_str(e.event.get()) {
                                    Ok(v) => v,
                                    Err(err) => {
                                        bad.push(format!(
                                            "seq {}: served event is not JSON ({err})",
                                            e.seq
                                        ));
                                        continue;
                                    }
                                };
                                if let Err(why) = check_served(&v) {
                                    bad.push(format!("seq {}: served corrupt: {why}", e.seq));
                                }
                                let then = acked.lock().unwrap().get(&e.seq).cloned();
                                if let Some(then) = then {
                                    let then: StoredRaw =
                                        serde_json::from_slice(&then).expect("parses");
                                    if then.event.get() != e.event.get() {
                                        bad.push(format!("seq {}: served bytes differ from the acknowledged ones", e.seq));
                                    }
                                }
                            }
                            if page.events.is_empty() {
                                after = 0;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            } else {
                                after = page.next_after;
                            }
                        }
                        503 => {
                            let p: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                            if p["type"] != "urn:msgbus:problem:damaged-data" {
                                bad.push(format!("a read answered 503 but not damaged-data: {p}"));
                            }
                            refused += 1;
                            after = 0;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        s => {
                            bad.push(format!("a read answered {s}: {}", r.text()));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (served, refused, bad)
            })
        };
        Watchdog { stop, task }
    }

    /// Stops; asserts that nothing corrupt was served.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (served, refused, bad) = self.task.await.expect("watchdog task");
        note(format!(
            "watchdog: {served} events served and checked, {refused} page reads refused as damaged"
        ));
        assert!(
            bad.is_empty(),
            "a reader was served something wrong ({} time(s)):\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Alerts and webhooks

/// Polls `/alerts` until one newer than `after_id` matches `pred`, for at
/// most `deadline` after `t0`. Returns it with the time since `t0`.
pub async fn wait_alert(
    api: &Api,
    after_id: u64,
    t0: Instant,
    deadline: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<(Value, Duration)> {
    loop {
        let found = api
            .alerts()
            .await
            .into_iter()
            .find(|a| a["id"].as_u64().unwrap_or(0) > after_id && pred(a));
        if let Some(a) = found {
            return Some((a, t0.elapsed()));
        }
        if t0.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to [`REPAIR_DEADLINE`] after `t0`) for the repair of `file`
/// (relative to the data directory) and checks its detection was listed
/// first. Prints and returns the repair alert and how long it took.
pub async fn expect_repair(
    api: &Api,
    after_id: u64,
    t0: Instant,
    file: &str,
    what: &str,
) -> (Value, Duration) {
    let Some((repair, took)) = wait_alert(api, after_id, t0, REPAIR_DEADLINE, |a| {
        a["kind"] == "repair" && a["file"] == file
    })
    .await
    else {
        panic!(
            "{what}: no repair alert for {file} within {REPAIR_DEADLINE:?} (monitor interval {INTERVAL_SECS} s); alerts: {:#}",
            Value::from(api.alerts().await)
        );
    };
    note(format!(
        "{what}: repaired in {} ms: {}",
        took.as_millis(),
        repair["detail"]
    ));
    let alerts = api.alerts().await;
    let detection = alerts.iter().find(|a| {
        a["kind"] == "detection"
            && a["file"] == file
            && a["id"].as_u64().unwrap_or(0) > after_id
            && a["id"].as_u64() < repair["id"].as_u64()
    });
    assert!(
        detection.is_some(),
        "{what}: /alerts must list the detection of {file} before its repair: {:#}",
        Value::from(alerts)
    );
    assert!(
        took <= REPAIR_DEADLINE,
        "{what}: repair took {took:?}, more than two monitor intervals"
    );
    (repair, took)
}

/// Waits until `/health/ready` answers `status` (at most `deadline`).
pub async fn wait_ready(api: &Api, status: u16, deadline: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = api.ready_status().await;
        if got == status {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < deadline,
            "/health/ready answered {got}, not {status}, for {deadline:?}: {}",
            api.get("/health/ready").await.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tiny HTTP server collecting the JSON bodies POSTed to it.
pub struct Webhook {
    /// Its URL, for `--alert-webhook`.
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Webhook {
    /// Starts it on 127.0.0.1:0.
    pub async fn start() -> Webhook {
        Webhook::start_failing(0).await
    }

    /// Starts one that answers the first `failures` POSTs with 500 (and
    /// does not keep their bodies).
    pub async fn start_failing(failures: u64) -> Webhook {
        use axum::http::StatusCode;
        use axum::routing::post;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicU64::new(0));
        let (sink, count) = (bodies.clone(), attempts.clone());
        let router = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(v): axum::Json<Value>| {
                let (sink, count) = (sink.clone(), count.clone());
                async move {
                    if count.fetch_add(1, Ordering::SeqCst) < failures {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    sink.lock().unwrap().push(v);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Webhook {
            url,
            bodies,
            attempts,
            task,
        }
    }

    /// POSTs received so far, refused ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Waits (at most `deadline`) for a POST whose alert matches `pred`;
    /// checks it is Slack-compatible (a non-empty `text`).
    pub async fn expect(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let found = self
                .bodies
                .lock()
                .unwrap()
                .iter()
                .find(|b| pred(&b["alert"]))
                .cloned();
            if let Some(b) = found {
                assert!(
                    b["text"].as_str().is_some_and(|t| !t.is_empty()),
                    "a webhook body needs a Slack-compatible text: {b}"
                );
                note(format!(
                    "webhook received {what} after {} ms",
                    t0.elapsed().as_millis()
                ));
                return b;
            }
            assert!(
                t0.elapsed() < deadline,
                "the webhook received no {what} within {deadline:?}; it received: {:#}",
                Value::from(self.bodies.lock().unwrap().clone())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Files and damage

/// `segments/<name>` of a segment file, as alerts name it.
pub fn rel(path: &Path) -> String {
    format!("segments/{}", path.file_name().unwrap().to_string_lossy())
}

/// The active segment: the newest `segments/*.jsonl`.
pub fn active_segment(data_dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("segments"))
        .expect("segments/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files.pop().expect("an active segment")
}

/// The sealed segments listed in `manifest.json`, oldest first.
pub fn sealed_segments(data_dir: &Path) -> Vec<PathBuf> {
    let m: Value = serde_json::from_slice(&std::fs::read(data_dir.join("manifest.json")).unwrap())
        .expect("manifest parses");
    m["sealed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| data_dir.join("segments").join(s["file"].as_str().unwrap()))
        .collect()
}

/// Overwrites 8 pad letters (`xxxxxxxx` → `XXXXXXXX`) at or after `from`,
/// in place (same file, same length; the JSON stays valid). Returns the
/// offset and the seq of the record hit.
pub fn flip_pad(path: &Path, from: u64) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let pos = bytes[from as usize..]
        .windows(8)
        .position(|w| w == b"xxxxxxxx")
        .map(|p| p + from as usize)
        .unwrap_or_else(|| panic!("no pad after offset {from} in {}", path.display()));
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(b"XXXXXXXX", pos as u64).unwrap();
    f.sync_all().unwrap();
    let line_start = bytes[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = pos + bytes[pos..].iter().position(|&b| b == b'\n').unwrap();
    let rec: Value = serde_json::from_slice(&bytes[line_start..line_end]).unwrap();
    (pos as u64, rec["seq"].as_u64().unwrap())
}

/// Files in `quarantine/` (recursively).
pub fn quarantined(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("quarantine"), &mut out);
    out
}

/// Waits (at most 5 s) until a verified backup holds `segments/<file>`;
/// returns its name.
pub async fn wait_backup_holding(api: &Api, seg: &Path) -> String {
    let want = rel(seg);
    let t0 = Instant::now();
    loop {
        let found = api.backups().await.into_iter().rev().find(|b| {
            b["verified"] == true
                && b["files"]
                    .as_array()
                    .is_some_and(|fs| fs.iter().any(|f| f["path"] == want))
        });
        if let Some(b) = found {
            return b["name"].as_str().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no verified backup holds {want} 5 s after its seal: {:#}",
            Value::from(api.backups().await)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes `backups/` entirely, waiting (at most 5 s) for a backup being
/// assembled to finish first, so nothing is written there afterwards.
pub async fn remove_backups(data_dir: &Path) {
    let dir = data_dir.join("backups");
    let t0 = Instant::now();
    loop {
        let assembling = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false);
        if !assembling {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "cannot delete {}: {e}",
                    dir.display()
                ),
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a backup was still being assembled after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes (in batches) until at least `sealed` segments are sealed.
/// Returns the next event number.
pub async fn fill_until_sealed(
    api: &Api,
    data_dir: &Path,
    prefix: &str,
    sealed: usize,
    pad: usize,
    acked: &Acked,
) -> u64 {
    let mut n = 1;
    while sealed_segments(data_dir).len() < sealed {
        prefill(api, prefix, n, 10, pad, acked).await;
        n += 10;
        assert!(n < 100_000, "segments never sealed");
    }
    n
}

// ---------------------------------------------------------------------------
// tmpfs

/// A tmpfs mounted for one test; unmounted on drop (lazily if still busy).
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _parent: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`); `None` (with a message) if
    /// mounting is not possible here.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::Builder::new()
            .prefix("msgbus-heal-mnt-")
            .tempdir()
            .ok()?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}); this test needs root (or CAP_SYS_ADMIN)",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); this test needs root and mount(8)");
                None
            }
        }
    }

    /// Free bytes on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(&self.path).unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a failing test left a server running): detach now,
            // the kernel frees it once the files are closed.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// The binary, for the offline tools

/// Runs `msgbus <args>` to completion (at most 30 s): exit code, stdout, stderr.
pub async fn run_msgbus(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msgbus"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MSGBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("msgbus {args:?} did not finish within 30 s"))
        .expect("run msgbus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A running `msgbus` child process (the real binary, JSON logs).
pub struct Process {
    /// A client for it.
    pub api: Api,
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for Process {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Process {
    /// Starts `msgbus --log-format json` on `data_dir` with the base
    /// settings plus `args`, and waits (at most 20 s) for its "msgbus
    /// listening" line. Killed if dropped.
    pub async fn spawn(data_dir: &Path, args: &[(&str, &str)]) -> Process {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msgbus"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MSGBUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info")
            .arg("--log-format")
            .arg("json")
            .args(argv(data_dir, args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn msgbus");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<SocketAddr>();
        {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut tx = Some(tx);
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if test_log() {
                        eprintln!("[msgbus child] {line}");
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["message"] == "msgbus listening" {
                            if let (Some(tx), Some(addr)) =
                                (tx.take(), v["addr"].as_str().and_then(|a| a.parse().ok()))
                            {
                                let _ = tx.send(addr);
                            }
                        }
                    }
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let addr = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "msgbus did not start listening; stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            ),
        };
        Process {
            api: Api::new(addr),
            child,
            stderr,
        }
    }

    /// The JSON log lines so far.
    pub fn log(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then waits (at most 15 s) for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("msgbus exits within 15 s of SIGTERM")
            .expect("wait for msgbus");
        assert!(
            status.success(),
            "msgbus exits cleanly on SIGTERM: {status}"
        );
    }
}
