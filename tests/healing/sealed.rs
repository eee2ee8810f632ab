//! Damage to sealed segments: repaired from the newest verified backup that
//! holds a good copy (falling back to older ones); without any good copy the
//! store turns read-only, names the reason, keeps serving intact data,
//! refuses the damaged record, and recovers once a good copy is back.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::events::{check_served, checkable_event};
use crate::common::files::{flip_pad, rel, remove_backups, sealed_segments, DataDir};
use crate::common::integrity::{
    acked, assert_all_intact, fill_until_sealed, prefill, publish_one, Publisher, Watchdog,
};
use crate::common::monitor::{
    expect_alert, expect_repair, start_monitored, wait_alert, wait_backup_holding, wait_ready,
    Webhook, INTERVAL_SECS, REPAIR_DEADLINE,
};
use crate::common::note;

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Delete,
}

async fn damage_sealed_while_publishing(damage: Damage) {
    let hook = Webhook::start().await;
    let (segment_bytes, pause) = match damage {
        // A flip is only seen when the monitor scrubs that segment's SHA-256
        // (one sealed segment per tick): keep to one sealed segment, and a
        // slow publisher that does not seal another during the test.
        Damage::Flip => ("16KiB", Duration::from_millis(100)),
        // A deletion is seen every tick: publish fast, sealing (and backing
        // up) new segments all along.
        Damage::Delete => ("4KiB", Duration::from_millis(5)),
    };
    let app = start_monitored(
        DataDir::temp(),
        &[
            "--segment-bytes",
            segment_bytes,
            "--alert-webhook",
            &hook.url,
        ],
    )
    .await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "sld", 1, 200, &acked).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    let file = rel(&seg);
    let backup = wait_backup_holding(&app, &seg).await;
    let original = std::fs::read(&seg).unwrap();
    let publisher = Publisher::start(&app, "sld", n, pause, &acked);
    let watchdog = Watchdog::start(&app, &acked);
    publisher.wait_for_more(3).await;

    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    match damage {
        Damage::Flip => {
            let (offset, seq) = flip_pad(&seg, original.len() as u64 / 2);
            note(format!(
                "{damage:?}: flipped 8 bytes at offset {offset} of sealed {file} (seq {seq})"
            ));
        }
        Damage::Delete => {
            std::fs::remove_file(&seg).unwrap();
            note(format!("{damage:?}: deleted sealed {file}"));
        }
    }
    let (repair, _) = expect_repair(
        &app,
        before,
        t0,
        &file,
        &format!("{damage:?} of a sealed segment"),
    )
    .await;
    let detail = repair["detail"].as_str().unwrap_or("");
    assert!(detail.contains("restored from backup"), "{repair}");
    note(format!(
        "{damage:?}: backup holding it since the seal: {backup}"
    ));
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        original,
        "the sealed segment is restored byte for byte"
    );

    publisher.wait_for_more(3).await;
    publisher.finish().await;
    watchdog.finish().await;
    assert_eq!(
        app.ready_status().await,
        200,
        "{}",
        app.get("/health/ready").await.text()
    );
    assert_all_intact(&app, &acked).await;
    hook.expect("the repair", Duration::from_secs(3), |a| {
        a["kind"] == "repair" && a["file"] == file.as_str()
    })
    .await;
    app.stop().await;
}

/// Test 4: Bytes flipped in a sealed segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_a_sealed_segment_are_restored_from_a_backup() {
    damage_sealed_while_publishing(Damage::Flip).await;
}

/// Test 5: A sealed segment deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sealed_segment_is_restored_from_a_backup() {
    damage_sealed_while_publishing(Damage::Delete).await;
}

/// Test 7: The newest backup's copy of a sealed segment is corrupt and the
/// segment itself is damaged: the repair falls back to an older good
/// backup (and says which), and the monitor reports the damaged backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_backup_falls_back_to_an_older_one() {
    let hook = Webhook::start().await;
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "16KiB", "--alert-webhook", &hook.url],
    )
    .await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "bak", 1, 200, &acked).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    let file = rel(&seg);
    let older = wait_backup_holding(&app, &seg).await;
    publish_one(&app, &checkable_event("bak", n, 200), &acked)
        .await
        .unwrap();
    let r = app.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "POST /admin/backups -> {}", r.text());
    let newest = r.json()["name"].as_str().unwrap().to_string();
    assert!(
        newest > older,
        "backup names sort by time: {older} then {newest}"
    );
    let original = std::fs::read(&seg).unwrap();

    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    let copy = app.data_dir().join("backups").join(&newest).join(&file);
    let (offset, _) = flip_pad(&copy, original.len() as u64 / 3);
    let (seg_offset, seq) = flip_pad(&seg, original.len() as u64 / 2);
    note(format!(
        "corrupted backups/{newest}/{file} at offset {offset} and {file} at offset {seg_offset} (seq {seq})"
    ));

    let (repair, _) = expect_repair(
        &app,
        before,
        t0,
        &file,
        "sealed segment with a damaged newest backup",
    )
    .await;
    let detail = repair["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&older) && !detail.contains(&newest),
        "the repair must use the older good backup {older}, and say so: {repair}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        original,
        "restored byte for byte"
    );

    // The monitor verifies one file of the newest backup per tick.
    let backup_dir = format!("backups/{newest}");
    let (alert, took) = expect_alert(
        &app,
        before,
        t0,
        Duration::from_secs(3),
        "backup_damaged",
        |a| a["kind"] == "backup_damaged" && a["file"] == backup_dir.as_str(),
    )
    .await;
    note(format!(
        "damaged backup noticed after {} ms: {}",
        took.as_millis(),
        alert["detail"]
    ));
    let listed = app.backups().await;
    let entry = listed
        .iter()
        .find(|b| b["name"] == newest.as_str())
        .expect("the damaged backup is still listed");
    assert_eq!(entry["verified"], false, "{entry}");
    assert!(
        entry["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{entry}"
    );

    // A fresh good backup replaces it as the newest.
    let t1 = Instant::now();
    loop {
        let fresh =
            app.backups().await.into_iter().any(|b| {
                b["name"].as_str().unwrap_or("") > newest.as_str() && b["verified"] == true
            });
        if fresh {
            note(format!(
                "a fresh verified backup exists {} ms later",
                t1.elapsed().as_millis()
            ));
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(3),
            "no fresh verified backup after the newest was found damaged: {:#}",
            Value::from(app.backups().await)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(app.ready_status().await, 200);
    assert_all_intact(&app, &acked).await;
    hook.expect("backup_damaged", Duration::from_secs(3), |a| {
        a["kind"] == "backup_damaged"
    })
    .await;
    app.stop().await;
}

#[derive(Debug, Clone, Copy)]
enum PutBack {
    /// `cp saved segments/x`: the same file overwritten.
    InPlace,
    /// `mv saved segments/x`: a new file renamed over it.
    Rename,
}

/// Test 8: No good backup (backups/ deleted, then a byte flipped in a sealed
/// segment): read-only with the reason; intact data still served; the
/// damaged record refused; recovery once a good copy is put back.
async fn damage_without_a_backup(put_back: PutBack) {
    let hook = Webhook::start().await;
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "16KiB", "--alert-webhook", &hook.url],
    )
    .await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "nob", 1, 200, &acked).await;
    let n = 1 + prefill(&app, "nob", n, 5, 200, &acked).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    let file = rel(&seg);
    // Let the seal's backup finish before backups/ goes away.
    wait_backup_holding(&app, &seg).await;
    let original = std::fs::read(&seg).unwrap();

    let before = app.last_alert_id().await;
    remove_backups(app.data_dir()).await;
    let t0 = Instant::now();
    let (offset, bad_seq) = flip_pad(&seg, original.len() as u64 / 2);
    note(format!(
        "deleted backups/, flipped 8 bytes at offset {offset} of {file} (seq {bad_seq})"
    ));

    let (_, took) = expect_alert(&app, before, t0, REPAIR_DEADLINE, "read_only", |a| {
        a["kind"] == "read_only"
    })
    .await;
    note(format!("read-only after {} ms", took.as_millis()));
    let alerts = app.alerts().await;
    for kind in ["detection", "repair_failed"] {
        assert!(
            alerts
                .iter()
                .any(|a| a["kind"] == kind && a["file"] == file.as_str()),
            "/alerts lists a {kind} for {file}: {:#}",
            Value::from(alerts.clone())
        );
    }

    // Readiness is red and says why.
    let ready = app.get("/health/ready").await;
    let p = ready.assert_problem_type(503, "not-ready", "/health/ready in read-only mode");
    assert!(
        p["detail"].as_str().unwrap_or("").contains(&file),
        "readiness names the damaged file: {p}"
    );
    let health = app.get("/health").await;
    note(format!(
        "GET /health while read-only: {} {}",
        health.status,
        health.text()
    ));
    assert_eq!(health.status, 503, "/health is red too: {}", health.text());
    // Writes are refused.
    let w = app.publish(&checkable_event("nob", n, 200)).await;
    w.assert_problem_type(503, "read-only", "a publish in read-only mode");
    // The damaged record is refused, never served.
    let r = app.get(&format!("/events/{bad_seq}")).await;
    r.assert_problem_type(503, "damaged-data", "reading the damaged record");
    assert!(!r.text().contains("XXXXXXXX"), "{}", r.text());
    let page = app.get("/events?after=0&limit=1000").await;
    if page.status == 200 {
        for e in page.json()["events"].as_array().unwrap() {
            check_served(&e["event"])
                .unwrap_or_else(|why| panic!("served corrupt in a page: {why}"));
        }
    } else {
        page.assert_problem_type(503, "damaged-data", "a page holding the damaged record");
    }
    // Every other event, in the damaged segment or not, is still served.
    let intact: Vec<(u64, Vec<u8>)> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| **s != bad_seq)
        .map(|(s, b)| (*s, b.clone()))
        .collect();
    for (seq, body) in &intact {
        let r = app.get(&format!("/events/{seq}")).await;
        assert_eq!(
            r.status,
            200,
            "intact seq {seq} must still be served in read-only mode: {}",
            r.text()
        );
        assert_eq!(&r.body, body, "seq {seq} byte-identical");
    }
    note(format!(
        "{} intact events served while read-only",
        intact.len()
    ));
    hook.expect("read_only", Duration::from_secs(3), |a| {
        a["kind"] == "read_only"
    })
    .await;

    // Put a good copy back.
    let before = app.last_alert_id().await;
    let t1 = Instant::now();
    match put_back {
        PutBack::InPlace => std::fs::write(&seg, &original).unwrap(),
        PutBack::Rename => {
            let tmp = app.data_dir().join("restored-segment");
            std::fs::write(&tmp, &original).unwrap();
            std::fs::rename(&tmp, &seg).unwrap();
        }
    }
    let took = wait_ready(&app, 200, REPAIR_DEADLINE).await;
    note(format!(
        "{put_back:?}: ready again {} ms after the good copy was put back",
        took.as_millis()
    ));
    let _ = expect_alert(&app, before, t1, REPAIR_DEADLINE, "read_write", |a| {
        a["kind"] == "read_write"
    })
    .await;
    publish_one(&app, &checkable_event("nob", n + 1, 200), &acked)
        .await
        .unwrap_or_else(|e| panic!("writes are accepted again: {e}"));
    // Including the once-damaged record, now that its good copy is back.
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

/// Test 8: ... the good copy put back with `cp` (in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_good_backup_means_read_only_until_a_good_copy_is_copied_back() {
    damage_without_a_backup(PutBack::InPlace).await;
}

/// Test 8: ... the good copy put back with `mv` (a new file renamed over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_good_backup_means_read_only_until_a_good_copy_is_moved_back() {
    damage_without_a_backup(PutBack::Rename).await;
}

/// Test 8b: With several sealed segments, the monitor scrubs one per tick. An
/// unrepairable one must keep the store read-only on the ticks that scrub
/// the others: readiness must not flap back to 200, writes must stay
/// refused, and the damaged record must never be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_holds_while_other_segments_are_scrubbed() {
    let app = start_monitored(DataDir::temp(), &["--segment-bytes", "4KiB"]).await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "flp", 3, 200, &acked).await;
    let sealed = sealed_segments(app.data_dir());
    wait_backup_holding(&app, sealed.last().unwrap()).await;
    let seg = sealed[1].clone();
    let len = std::fs::metadata(&seg).unwrap().len();

    let before = app.last_alert_id().await;
    remove_backups(app.data_dir()).await;
    let t0 = Instant::now();
    let (_, bad_seq) = flip_pad(&seg, len / 2);
    // Found when its turn to be scrubbed comes: within one tick per sealed segment.
    let deadline = Duration::from_secs_f64(INTERVAL_SECS * sealed.len() as f64 + 1.0);
    let (_, took) = expect_alert(&app, before, t0, deadline, "read_only", |a| {
        a["kind"] == "read_only"
    })
    .await;
    note(format!(
        "{} sealed segments; read-only after {} ms",
        sealed.len(),
        took.as_millis()
    ));

    let mut flaps = Vec::new();
    let t1 = Instant::now();
    let mut k = n;
    while t1.elapsed() < Duration::from_secs(2) {
        let ready = app.ready_status().await;
        if ready != 503 {
            flaps.push(format!(
                "+{} ms: /health/ready {ready}",
                t1.elapsed().as_millis()
            ));
        }
        let w = app.publish(&checkable_event("flp", k, 200)).await;
        if w.status != 503 {
            flaps.push(format!(
                "+{} ms: a publish answered {}",
                t1.elapsed().as_millis(),
                w.status
            ));
        }
        k += 1;
        let r = app.get(&format!("/events/{bad_seq}")).await;
        assert_ne!(r.status, 200, "the damaged record was served: {}", r.text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let kinds: Vec<String> = app
        .alerts()
        .await
        .iter()
        .filter(|a| a["id"].as_u64().unwrap_or(0) > before)
        .map(|a| a["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        flaps.is_empty(),
        "read-only mode must hold while {} stays damaged and unrepaired; it flapped {} time(s):\n{}\nalerts since the damage: {kinds:?}",
        rel(&seg),
        flaps.len(),
        flaps.join("\n")
    );
    app.stop().await;
}

/// Every backup's copy of a sealed segment is corrupt and the segment is
/// damaged too: read-only, and the fresh backup the monitor asks for when it
/// finds the newest backup damaged fails (the segment is still damaged).
/// Once a good copy of the segment is put back, the store must not go on
/// without any good backup: a fresh verified one must follow within a few
/// ticks (the newest backup is known to be damaged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_backup_is_taken_once_the_store_is_healthy_again() {
    let app = start_monitored(DataDir::temp(), &["--segment-bytes", "16KiB"]).await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "rbk", 1, 200, &acked).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    let file = rel(&seg);
    wait_backup_holding(&app, &seg).await;
    publish_one(&app, &checkable_event("rbk", n, 200), &acked)
        .await
        .unwrap();
    let r = app.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let newest = r.json()["name"].as_str().unwrap().to_string();
    let original = std::fs::read(&seg).unwrap();

    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    for b in app.backups().await {
        let copy = app
            .data_dir()
            .join("backups")
            .join(b["name"].as_str().unwrap())
            .join(&file);
        if copy.exists() {
            flip_pad(&copy, 100);
        }
    }
    flip_pad(&seg, original.len() as u64 / 2);
    let deadline = Duration::from_secs(3);
    for kind in ["read_only", "backup_damaged"] {
        let found = wait_alert(&app, before, t0, deadline, |a| a["kind"] == kind).await;
        assert!(
            found.is_some(),
            "no {kind} alert within {deadline:?}: {:#}",
            Value::from(app.alerts().await)
        );
    }
    // Let the fresh backup the monitor asked for run (and fail).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A good copy goes back: healthy again.
    std::fs::write(&seg, &original).unwrap();
    let took = wait_ready(&app, 200, REPAIR_DEADLINE).await;
    note(format!(
        "ready again {} ms after the good copy was put back",
        took.as_millis()
    ));

    let t1 = Instant::now();
    loop {
        let fresh =
            app.backups().await.into_iter().find(|b| {
                b["name"].as_str().unwrap_or("") > newest.as_str() && b["verified"] == true
            });
        if let Some(b) = fresh {
            note(format!(
                "fresh verified backup {} {} ms after recovery",
                b["name"],
                t1.elapsed().as_millis()
            ));
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(3),
            "no verified backup newer than the damaged {newest} 3 s after the store became healthy \
             again: the only backups hold corrupt copies of {file}. Backups: {:#}\nalerts: {:#}",
            Value::from(app.backups().await),
            Value::from(
                app.alerts()
                    .await
                    .iter()
                    .map(|a| format!("{} {} {}", a["kind"], a["file"], a["detail"]))
                    .collect::<Vec<_>>()
            )
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
