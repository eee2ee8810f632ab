//! The self-healing monitor: the fast settings the damage tests run it
//! with, and what it reports — `/alerts`, `/health/ready`, backups, and
//! webhook posts.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::files::{rel, DataDir};
use super::http::Api;
use super::note;
use super::process::{spawn_process, TestProcess};
use super::server::{start_app, TestApp};

/// The monitor interval the damage tests run with, in seconds (see
/// [`MONITORED_ARGS`]).
pub const INTERVAL_SECS: f64 = 0.5;

/// Two monitor intervals plus slack: the bound for every repair.
pub const REPAIR_DEADLINE: Duration = Duration::from_secs(2);

/// Settings for damage tests: a monitor that checks every
/// [`INTERVAL_SECS`], small segments (so sealing and backups happen within
/// a test), no read cache (`--read-cache-bytes 0`, so every read really
/// goes to the files that were damaged), no free-space minimum, no backup
/// timer during a test, and a short drain on shutdown.
pub const MONITORED_ARGS: &[&str] = &[
    "--monitor-interval",
    "0.5",
    "--segment-bytes",
    "4KiB",
    "--read-cache-bytes",
    "0",
    "--min-free-bytes",
    "0",
    "--backup-interval",
    "1h",
    "--shutdown-timeout",
    "2s",
];

/// [`MONITORED_ARGS`] with `overrides` (`--flag value` pairs) replacing the
/// value of a flag they share and adding the others. (The command line
/// refuses a flag given twice, so they are merged, not appended.)
pub fn monitored_args(overrides: &[&str]) -> Vec<String> {
    fn pairs<'a>(args: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        assert!(
            args.len().is_multiple_of(2) && args.iter().step_by(2).all(|f| f.starts_with("--")),
            "flags come as --flag value pairs: {args:?}"
        );
        args.chunks(2).map(|p| (p[0], p[1])).collect()
    }
    let mut merged = pairs(MONITORED_ARGS);
    for (flag, value) in pairs(overrides) {
        match merged.iter_mut().find(|(f, _)| *f == flag) {
            Some(p) => p.1 = value,
            None => merged.push((flag, value)),
        }
    }
    merged
        .into_iter()
        .flat_map(|(f, v)| [f.to_string(), v.to_string()])
        .collect()
}

/// An in-process server on `dir` with [`monitored_args`]`(overrides)`.
pub async fn start_monitored(dir: DataDir, overrides: &[&str]) -> TestApp {
    let args = monitored_args(overrides);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_app(dir, &args).await
}

/// A `msgbus` process on `data_dir` with [`monitored_args`]`(overrides)`.
pub async fn spawn_monitored_process(data_dir: &Path, overrides: &[&str]) -> TestProcess {
    let args = monitored_args(overrides);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_process(data_dir, &args).await
}

impl Api {
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

/// [`wait_alert`] that fails the test, listing every alert, when nothing
/// matches in time; `what` names the awaited alert in that message.
pub async fn expect_alert(
    api: &Api,
    after_id: u64,
    t0: Instant,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    match wait_alert(api, after_id, t0, deadline, pred).await {
        Some(found) => found,
        None => panic!(
            "no {what} alert within {deadline:?}: {:#}",
            Value::from(api.alerts().await)
        ),
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
