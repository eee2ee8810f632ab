//! Damage to the active segment while a client publishes: bytes flipped in
//! the middle, the file truncated, the file deleted. The writer rewrites it
//! from its own copy within two monitor intervals; nothing acknowledged is
//! lost and nothing corrupt is served.

use std::time::{Duration, Instant};

use crate::common::events::checkable_event;
use crate::common::files::{
    active_segment, flip_pad, quarantined, rel, sealed_segments, truncate, DataDir,
};
use crate::common::integrity::{
    acked, assert_all_intact, prefill, publish_one, Acked, Publisher, Watchdog,
};
use crate::common::monitor::{expect_repair, start_monitored, Webhook, REPAIR_DEADLINE};
use crate::common::note;
use crate::common::process::run_msgbus;
use crate::common::server::TestApp;

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Delete,
    /// Garbage appended after the last record: the file is no longer "as
    /// long as the writer left it".
    Append,
}

/// Damages the active segment while a client publishes (or, with
/// `publishing` false, on an idle store, where only the monitor can notice).
async fn damage_active(damage: Damage, publishing: bool) {
    let hook = Webhook::start().await;
    // Large segments: the damaged file stays the active one for the test.
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "1MiB", "--alert-webhook", &hook.url],
    )
    .await;
    let acked = acked();
    let n = 1 + prefill(&app, "act", 1, 40, 120, &acked).await;
    let publisher =
        publishing.then(|| Publisher::start(&app, "act", n, Duration::from_millis(3), &acked));
    let watchdog = Watchdog::start(&app, &acked);
    if let Some(p) = &publisher {
        p.wait_for_more(10).await;
    }

    let path = active_segment(app.data_dir());
    let file = rel(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    match damage {
        Damage::Flip => {
            let (offset, seq) = flip_pad(&path, len / 2);
            note(format!(
                "{damage:?}: flipped 8 bytes at offset {offset} of {file} (seq {seq})"
            ));
        }
        Damage::Truncate => {
            truncate(&path, len / 2);
            note(format!(
                "{damage:?}: cut {file} from {len} to {} bytes",
                len / 2
            ));
        }
        Damage::Delete => {
            std::fs::remove_file(&path).unwrap();
            note(format!("{damage:?}: deleted {file} ({len} bytes)"));
        }
        Damage::Append => {
            // Longer than any one commit, so the next commit cannot simply
            // overwrite it all.
            let mut junk = b"{\"seq\":999999,\"crc\":\"00000000\",\"event\":\"".to_vec();
            junk.extend(std::iter::repeat_n(b'g', 4000));
            junk.extend_from_slice(b"\"}\n");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut f, &junk).unwrap();
            note(format!(
                "{damage:?}: appended {} bytes of garbage to {file} ({len} bytes)",
                junk.len()
            ));
        }
    }
    let (repair, _) = expect_repair(
        &app,
        before,
        t0,
        &file,
        &format!("{damage:?} of the active segment"),
    )
    .await;
    assert!(
        repair["detail"]
            .as_str()
            .unwrap_or("")
            .contains("writer's copy"),
        "the active segment is rewritten from the writer's copy: {repair}"
    );

    if let Some(publisher) = publisher {
        // Publishing goes on after the repair too.
        publisher.wait_for_more(10).await;
        let published = publisher.finish().await;
        note(format!(
            "{damage:?}: {published} events published during the test"
        ));
    } else {
        publish_one(&app, &checkable_event("act", n, 120), &acked)
            .await
            .unwrap();
    }
    watchdog.finish().await;

    assert_eq!(
        app.ready_status().await,
        200,
        "{}",
        app.get("/health/ready").await.text()
    );
    assert_all_intact(&app, &acked).await;
    if !matches!(damage, Damage::Delete) {
        assert!(
            !quarantined(app.data_dir()).is_empty(),
            "the damaged bytes are kept in quarantine/"
        );
    }
    hook.expect("the repair", Duration::from_secs(3), |a| {
        a["kind"] == "repair" && a["file"] == file.as_str()
    })
    .await;
    hook.expect("the detection", Duration::from_secs(3), |a| {
        a["kind"] == "detection" && a["file"] == file.as_str()
    })
    .await;
    restart_and_check(app, &acked).await;
}

/// Stops the server, checks the store offline with `msgbus verify`, starts
/// it again and reads every acknowledged event back: the repair is durable.
async fn restart_and_check(app: TestApp, acked: &Acked) {
    let dir = app.stop().await;
    let (code, out, err) =
        run_msgbus(&["verify", "--data-dir", &dir.path().display().to_string()]).await;
    assert_eq!(code, 0, "msgbus verify after the repair:\n{out}\n{err}");
    let app = start_monitored(dir, &["--segment-bytes", "1MiB"]).await;
    assert_all_intact(&app, acked).await;
    app.stop().await;
}

/// Test 1: Bytes flipped in the middle of the active segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_the_active_segment_are_repaired_while_publishing() {
    damage_active(Damage::Flip, true).await;
}

/// Test 2: The active segment cut to half its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_active_segment_is_repaired_while_publishing() {
    damage_active(Damage::Truncate, true).await;
}

/// Test 3: The active segment deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_active_segment_is_repaired_while_publishing() {
    damage_active(Damage::Delete, true).await;
}

/// Test 3: The active segment deleted on an idle store: no commit notices it,
/// the monitor must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_active_segment_is_repaired_on_an_idle_store() {
    damage_active(Damage::Delete, false).await;
}

/// Test 2: The active segment truncated on an idle store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_active_segment_is_repaired_on_an_idle_store() {
    damage_active(Damage::Truncate, false).await;
}

/// Garbage appended to the active segment while publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_appended_to_the_active_segment_is_removed_while_publishing() {
    damage_active(Damage::Append, true).await;
}

/// Garbage appended to the active segment of an idle store: the monitor
/// checks that files are as long as the writer left them, so it must
/// notice a longer file too, not only a shorter one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_appended_to_the_active_segment_is_removed_on_an_idle_store() {
    damage_active(Damage::Append, false).await;
}

/// Bytes flipped in the active segment just before the writer seals it
/// (before the monitor's next tick): the writer still holds the right
/// bytes, so sealing must not freeze the damage into a sealed segment that
/// no backup can repair. Expected: the store stays writable and every
/// event intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_just_before_a_seal_is_not_sealed_in() {
    let app = start_monitored(DataDir::temp(), &["--segment-bytes", "8KiB"]).await;
    let acked = acked();
    // About 5 KiB in the active segment, well under the seal size.
    prefill(&app, "seal", 1, 15, 200, &acked).await;
    let path = active_segment(app.data_dir());
    let file = rel(&path);
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    let (offset, seq) = flip_pad(&path, 100);
    // Now push it over the seal size and trigger the seal at once, well
    // within the monitor interval.
    prefill(&app, "seal", 16, 15, 200, &acked).await;
    publish_one(&app, &checkable_event("seal", 31, 200), &acked)
        .await
        .unwrap();
    let sealed_now = sealed_segments(app.data_dir()).iter().any(|p| p == &path);
    note(format!(
        "flipped offset {offset} (seq {seq}) of {file}, then sealed it after {} ms (sealed: {sealed_now})",
        t0.elapsed().as_millis()
    ));

    // Give the monitor a few ticks, then the store must be healthy.
    tokio::time::sleep(REPAIR_DEADLINE).await;
    let alerts = app.alerts().await;
    let new: Vec<_> = alerts
        .iter()
        .filter(|a| a["id"].as_u64().unwrap_or(0) > before)
        .map(|a| format!("{} {} {}", a["kind"], a["file"], a["detail"]))
        .collect();
    note(format!("alerts after the damage:\n  {}", new.join("\n  ")));
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status,
        200,
        "damage to the active segment, sealed before the monitor saw it, left the store unready \
         although the writer had the right bytes: {}\nalerts:\n  {}",
        ready.text(),
        new.join("\n  ")
    );
    let r = app.publish(&checkable_event("seal", 32, 200)).await;
    assert_eq!(r.status, 201, "writes must be accepted: {}", r.text());
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
