//! Disk space: below `--min-free-bytes` publishing answers 507 and stores
//! nothing, resuming when space returns; a real ENOSPC poisons the writer
//! (503 read-only, readiness red, alert) without harming anything
//! acknowledged before.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::events::checkable_event;
use crate::common::files::{DataDir, Tmpfs};
use crate::common::integrity::{acked, assert_all_intact, prefill, publish_one};
use crate::common::monitor::{expect_alert, start_monitored, Webhook, REPAIR_DEADLINE};
use crate::common::note;
use crate::common::process::run_msgbus;

/// More free space than any disk has.
const TOO_MUCH: &str = "1000000000000000";

/// Test 9: Free space below the minimum: 507 problem+json, nothing stored;
/// after a restart with a normal minimum, publishing works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_bytes_publishing_answers_507_and_stores_nothing() {
    let app = start_monitored(DataDir::temp(), &["--min-free-bytes", TOO_MUCH]).await;
    let t0 = Instant::now();
    let (alert, took) = expect_alert(&app, 0, t0, REPAIR_DEADLINE, "low_disk", |a| {
        a["kind"] == "low_disk"
    })
    .await;
    note(format!(
        "low disk noticed {} ms after start: {}",
        took.as_millis(),
        alert["detail"]
    ));
    for i in 1..4 {
        let r = app.publish(&checkable_event("low", i, 100)).await;
        let p = r.assert_problem_type(507, "insufficient-storage", "a publish on a too-full disk");
        assert!(
            p["detail"].as_str().unwrap().contains("min-free-bytes"),
            "{p}"
        );
    }
    let batch = app
        .post(
            "/events/batch",
            Some(&Value::from(vec![checkable_event("low", 9, 100)])),
        )
        .await;
    batch.assert_problem_type(507, "insufficient-storage", "a batch on a too-full disk");
    let page = app.get_json("/events?after=0").await;
    assert_eq!(
        page["events"],
        Value::from(Vec::<Value>::new()),
        "nothing was stored: {page}"
    );
    app.get("/events/1")
        .await
        .assert_problem_type(404, "not-found", "nothing was stored");

    let app = start_monitored(app.stop().await, &["--min-free-bytes", "0"]).await;
    let acked = acked();
    let seq = publish_one(&app, &checkable_event("low", 10, 100), &acked)
        .await
        .unwrap();
    assert_eq!(seq, 1, "nothing was stored while the disk was too full");
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

/// Free space below the minimum when the server starts: the very first
/// publish, sent as soon as the server listens, must already be refused —
/// not only those after the monitor's first tick. (The race is narrow, so
/// this starts several servers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_a_too_full_disk_refuses_the_very_first_publish() {
    let mut accepted = Vec::new();
    let attempts = 8;
    for i in 0..attempts {
        let app = start_monitored(DataDir::temp(), &["--min-free-bytes", TOO_MUCH]).await;
        let r = app.publish(&checkable_event("early", i, 10)).await;
        if r.status != 507 {
            accepted.push(format!("start {i}: {} {}", r.status, r.text()));
        }
        app.stop().await;
    }
    assert!(
        accepted.is_empty(),
        "{} of {attempts} servers started below --min-free-bytes stored their first event:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}

/// Test 9: Space running low and coming back on a live server (a small tmpfs
/// filled with a ballast file, then the file deleted): 507 within a tick or
/// two, publishing resumes within a tick or two, alerts and webhook posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_stops_when_space_runs_low_and_resumes_when_it_returns() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let hook = Webhook::start().await;
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    let app = start_monitored(
        DataDir::at(data),
        &["--min-free-bytes", "2MiB", "--alert-webhook", &hook.url],
    )
    .await;
    let acked = acked();
    let last = prefill(&app, "spc", 1, 10, 100, &acked).await;

    // Leave 1 MiB free.
    let ballast = fs.path.join("ballast");
    let fill = fs.free() - (1 << 20);
    std::fs::write(&ballast, vec![0u8; fill as usize]).unwrap();
    let t0 = Instant::now();
    note(format!("ballast of {fill} bytes; {} bytes free", fs.free()));
    let (_, took) = expect_alert(&app, 0, t0, REPAIR_DEADLINE, "low_disk", |a| {
        a["kind"] == "low_disk"
    })
    .await;
    note(format!("low disk noticed after {} ms", took.as_millis()));
    let r = app.publish(&checkable_event("spc", 100, 100)).await;
    r.assert_problem_type(
        507,
        "insufficient-storage",
        "a publish with too little space",
    );
    app.get(&format!("/events/{}", last + 1))
        .await
        .assert_problem_type(404, "not-found", "the refused event was not stored");
    // Reads go on.
    assert_all_intact(&app, &acked).await;

    // Space returns.
    std::fs::remove_file(&ballast).unwrap();
    let t1 = Instant::now();
    let (_, took) = expect_alert(&app, 0, t1, REPAIR_DEADLINE, "disk_ok", |a| {
        a["kind"] == "disk_ok"
    })
    .await;
    note(format!("space back noticed after {} ms", took.as_millis()));
    let seq = publish_one(&app, &checkable_event("spc", 101, 100), &acked)
        .await
        .unwrap_or_else(|e| panic!("publishing resumes: {e}"));
    assert_eq!(seq, last + 1);
    assert_all_intact(&app, &acked).await;
    hook.expect("low_disk", Duration::from_secs(3), |a| {
        a["kind"] == "low_disk"
    })
    .await;
    hook.expect("disk_ok", Duration::from_secs(3), |a| {
        a["kind"] == "disk_ok"
    })
    .await;
    app.stop().await;
}

/// Test 10: A real ENOSPC (data directory on a small tmpfs, no minimum): the
/// failing publish answers 503 read-only, readiness turns red, a `poisoned`
/// alert; after a restart with space freed every acknowledged event is
/// intact, nothing torn is served and `msgbus verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_poisons_the_writer_without_losing_acknowledged_events() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let hook = Webhook::start().await;
    let ballast = fs.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 << 10]).unwrap();
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    let args = ["--segment-bytes", "64MiB", "--min-free-bytes", "0"];
    let app = start_monitored(
        DataDir::at(data.clone()),
        &[&args[..], &["--alert-webhook", &hook.url]].concat(),
    )
    .await;
    let acked = acked();
    let mut failed = None;
    for n in 1..2000 {
        let ev = checkable_event("full", n, 7000);
        let r = app.publish(&ev).await;
        if r.status == 201 {
            let seq = r.json()["seq"].as_u64().unwrap();
            // Read back to record the acknowledged bytes.
            let back = app.get(&format!("/events/{seq}")).await;
            assert_eq!(back.status, 200, "{}", back.text());
            acked.lock().unwrap().insert(seq, back.body);
        } else {
            failed = Some(r);
            break;
        }
    }
    let failed = failed.expect("the tmpfs never filled up");
    note(format!(
        "disk full after {} acknowledged events; {} bytes free",
        acked.lock().unwrap().len(),
        fs.free()
    ));
    let p = failed.assert_problem_type(503, "read-only", "the publish that hit ENOSPC");
    note(format!("failing publish: {}", p["detail"]));
    let ready = app.get("/health/ready").await;
    ready.assert_problem_type(503, "not-ready", "/health/ready once poisoned");
    let (poisoned, _) = expect_alert(
        &app,
        0,
        Instant::now(),
        Duration::from_secs(1),
        "poisoned",
        |a| a["kind"] == "poisoned",
    )
    .await;
    assert_eq!(poisoned["severity"], "error", "{poisoned}");
    app.publish(&checkable_event("full", 9999, 10))
        .await
        .assert_problem_type(503, "read-only", "a later publish");
    // Acknowledged events are still served.
    assert_all_intact(&app, &acked).await;
    hook.expect("poisoned", Duration::from_secs(3), |a| {
        a["kind"] == "poisoned"
    })
    .await;

    // Stop, free space, check offline, restart.
    let dir = app.stop().await;
    std::fs::remove_file(&ballast).unwrap();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &data.display().to_string()]).await;
    assert_eq!(
        code, 0,
        "the segment is valid after ENOSPC (no torn garbage):\n{out}\n{err}"
    );
    let app = start_monitored(dir, &args).await;
    assert_all_intact(&app, &acked).await;
    let n = acked.lock().unwrap().len() as u64;
    let seq = publish_one(&app, &checkable_event("full", 10_000, 100), &acked)
        .await
        .unwrap_or_else(|e| panic!("writes work after the restart: {e}"));
    assert_eq!(seq, n + 1, "nothing unacknowledged was kept");
    app.stop().await;
}

/// `msgbus backup` of a stopped store on a full disk reports the full
/// disk, not damage: the store is intact, only the copy could not be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backup_on_a_full_disk_reports_the_disk_not_damage() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    let app =
        crate::common::server::start_app(DataDir::at(data.clone()), &["--min-free-bytes", "0"])
            .await;
    for i in 1..=20 {
        app.publish_ok(&checkable_event("full", i, 1000)).await;
    }
    let dir = app.stop().await;
    let ballast = fs.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; fs.free() as usize]).unwrap();
    note(format!("{} bytes free", fs.free()));

    let d = data.display().to_string();
    let (code, out, err) = run_msgbus(&["backup", "--data-dir", &d]).await;
    assert_eq!(code, 1, "the backup cannot be taken:\n{out}\n{err}");
    assert!(
        err.contains("No space left on device") && !err.contains("damaged"),
        "a full disk reads as a full disk:\n{err}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "the store is intact:\n{out}\n{err}");
    drop(dir);
}
