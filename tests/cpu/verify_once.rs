//! `POST /admin/verify` runs one full check at a time: callers that arrive
//! while it runs join it instead of starting their own, a caller whose
//! request times out leaves it running, and `GET /admin/verify` reports it.
//!
//! A check is held open deterministically, without timing: one backup file
//! is replaced by a FIFO holding the same bytes, so the check's SHA-256 of
//! it waits in `open` until the test writes them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::events::events;
use crate::common::http::Api;
use crate::common::server::spawn_app_with;

/// No monitor ticks during the test (only the first, at start), small
/// segments, no backup timer.
const ARGS: &[&str] = &[
    "--monitor-interval",
    "1h",
    "--segment-bytes",
    "64KiB",
    "--min-free-bytes",
    "0",
    "--backup-interval",
    "1h",
];

/// Some sealed segments and a verified backup of them.
async fn seed(api: &Api) {
    for chunk in 0..4u64 {
        api.publish_batch(&events(chunk * 64, 64, 1024)).await;
    }
    let r = api.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "backup: {}", r.text());
    // Each seal also queued a backup of its own, which may still run after
    // the one asked for above. One of them reading the file the test turns
    // into a FIFO takes the bytes meant for the check (seen: the check
    // then waited forever). Wait until the list has stayed the same for
    // half a second.
    let t0 = Instant::now();
    let mut last = api.get_json("/admin/backups").await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = api.get_json("/admin/backups").await;
        if now == last {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "backups never settled"
        );
        last = now;
    }
}

/// Checks run since start (monitor ticks and verifications), once the
/// monitor's first tick has been counted.
async fn checks(api: &Api) -> u64 {
    let t0 = Instant::now();
    loop {
        let n = api.get_json("/stats").await["integrity"]["checks"]
            .as_u64()
            .unwrap();
        if n >= 1 {
            return n;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no first check");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backup file replaced by a FIFO: a check reading it waits until
/// [`Gate::release`] writes the file's bytes into it.
struct Gate {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Gate {
    async fn close(api: &Api, data_dir: &Path) -> Gate {
        let backups = api.get_json("/admin/backups").await;
        let b = &backups["backups"][0];
        let path = data_dir
            .join("backups")
            .join(b["name"].as_str().unwrap())
            .join(b["files"][0]["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfifo {}", path.display());
        Gate { path, bytes }
    }

    /// Writes the bytes to the check (waiting for it to open the FIFO),
    /// then puts the regular file back.
    async fn release(self) {
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            // Non-blocking open fails (ENXIO) until a reader has it open.
            while std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(0o4000) // O_NONBLOCK
                .open(&self.path)
                .is_err()
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "nobody reads the FIFO"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .unwrap();
            w.write_all(&self.bytes).unwrap();
            drop(w);
            let tmp = self.path.with_extension("restore");
            std::fs::write(&tmp, &self.bytes).unwrap();
            std::fs::rename(&tmp, &self.path).unwrap();
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifies_share_one_run_and_get_reports_it() {
    const N: usize = 8;
    let app = spawn_app_with(ARGS).await;
    seed(&app).await;
    let before = checks(&app).await;
    let gate = Gate::close(&app, app.data_dir()).await;

    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let api = app.api.clone();
            tokio::spawn(async move { api.post("/admin/verify", None).await })
        })
        .collect();
    // Give every POST time to arrive while the check waits on the FIFO
    // (and release it regardless, so a failing server does not hang here).
    let t0 = Instant::now();
    let mut running = Value::Null;
    while t0.elapsed() < Duration::from_millis(500) || running.is_null() {
        let s = app.get("/admin/verify").await;
        if s.status == 200 && s.json()["state"] == "running" {
            running = s.json();
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.release().await;
    assert_eq!(
        running["state"], "running",
        "GET shows the run while it runs"
    );

    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "verify: {}", r.text());
        answers.push(r.json());
    }
    let runs: Vec<&Value> = answers.iter().map(|a| &a["run"]).collect();
    assert!(runs[0].is_u64(), "the answer names its run: {}", answers[0]);
    assert!(
        runs.iter().all(|r| *r == runs[0]),
        "{N} concurrent POSTs share one run: {runs:?}"
    );
    assert_eq!(answers[0]["status"], "ok", "{}", answers[0]);
    assert_eq!(
        checks(&app).await,
        before + 1,
        "{N} concurrent POSTs ran exactly one check"
    );

    let status = app.get_json("/admin/verify").await;
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(&status["run"], runs[0], "{status}");
    assert!(status["started_at"].is_string(), "{status}");
    assert!(status["finished_at"].is_string(), "{status}");
    assert!(status["report"]["findings"].is_array(), "{status}");
    assert_eq!(status["report"]["status"], "ok", "{status}");

    // A POST after the run finished starts a new one.
    let again = app.post("/admin/verify", None).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_ne!(&again.json()["run"], runs[0], "a later POST runs again");
    assert_eq!(checks(&app).await, before + 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_verify_keeps_running_and_its_result_is_kept() {
    let mut args = ARGS.to_vec();
    args.extend(["--request-timeout", "1s"]);
    let app = spawn_app_with(&args).await;
    seed(&app).await;
    let before = checks(&app).await;
    let gate = Gate::close(&app, app.data_dir()).await;

    // The check outlasts the request: the caller is told to poll.
    let r = app.post("/admin/verify", None).await;
    // Still the same run, still running, after the request ended.
    let s = app.get("/admin/verify").await;
    gate.release().await;
    assert_eq!(r.status, 202, "verify: {}", r.text());
    assert_eq!(r.header("location"), Some("/admin/verify"));
    let accepted = r.json();
    assert_eq!(accepted["state"], "running", "{accepted}");
    let run = accepted["run"].clone();
    assert!(run.is_u64(), "{accepted}");
    assert_eq!(s.status, 200, "{}", s.text());
    let s = s.json();
    assert_eq!(
        (&s["state"], &s["run"]),
        (&Value::from("running"), &run),
        "{s}"
    );

    // It finishes on its own, and the GET reports the result.
    let t0 = Instant::now();
    let status = loop {
        let s = app.get_json("/admin/verify").await;
        if s["state"] == "finished" {
            break s;
        }
        assert_eq!(s["run"], run, "{s}");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "verify never finished: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["run"], run, "{status}");
    assert_eq!(status["report"]["status"], "ok", "{status}");
    assert_eq!(checks(&app).await, before + 1, "one check ran");
    app.stop().await;
}
