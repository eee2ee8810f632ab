//! Publishing while recording exactly what every acknowledged event read
//! back as, and checking later that none was lost, changed or served
//! corrupt: the yardstick of the damage tests.
//!
//! "Acknowledged" means answered 201. Its bytes are recorded from a read
//! right after the 201, so a later comparison is byte for byte against what
//! the server itself served, not against a re-serialization.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::events::{check_served, checkable_event};
use super::files::sealed_segments;
use super::http::Api;
use super::note;

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
    let r = api.publish(ev).await;
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
        let evs: Vec<Value> = (n..n + k)
            .map(|i| checkable_event(prefix, i, pad))
            .collect();
        for (seq, ev) in api.publish_batch(&evs).await.into_iter().zip(&evs) {
            read_back(api, seq, ev, acked)
                .await
                .unwrap_or_else(|e| panic!("prefill: {e}"));
            last = seq;
        }
        n += k;
    }
    last
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
                    match publish_one(&api, &checkable_event(&prefix, n, 120), &acked).await {
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
