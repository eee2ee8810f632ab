//! Start-up loads sealed segments from their index files without reading
//! them; the integrity monitor checks sealed segments (all of them in its
//! first check after a start) and index files, and has damage repaired.

use std::time::{Duration, Instant};

use crate::common::files::{flip_pad, index_file, rel, sealed_segments, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed};
use crate::common::monitor::{
    expect_alert, expect_repair, start_monitored, wait_backup_holding, wait_ready,
};

/// Sealed-segment damage that keeps the length is no longer found at
/// start-up (start-up does not read sealed segments): the store reaches
/// ready, and the monitor's first check finds it and restores the segment
/// from a backup, with a detection and a repair alert. Before index files,
/// start-up read and hashed every sealed segment and made this repair
/// itself, without a detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_length_damage_to_a_sealed_segment_is_found_by_the_monitor_after_the_start() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "sgd", 4, 200, &acked).await;
    let sealed = sealed_segments(app.data_dir());
    for s in &sealed {
        wait_backup_holding(&app, s).await;
    }
    let dir = app.stop().await;
    // The oldest segment: overwritten in place, same length, index kept.
    let seg = sealed[0].clone();
    let len = std::fs::metadata(&seg).unwrap().len();
    flip_pad(&seg, len / 2);
    // Another one wholly garbled, still the same length.
    let garbled = sealed[2].clone();
    let glen = std::fs::metadata(&garbled).unwrap().len() as usize;
    std::fs::write(&garbled, vec![b'#'; glen]).unwrap();
    assert!(index_file(&seg).is_file() && index_file(&garbled).is_file());

    let t0 = Instant::now();
    let app = start_monitored(dir, &[]).await;
    wait_ready(&app, 200, Duration::from_secs(5)).await;
    let alerts = app.alerts().await;
    assert!(
        !alerts.iter().any(|a| a["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("at start-up"))),
        "start-up did not read the sealed segments: {alerts:#?}"
    );
    for s in [&seg, &garbled] {
        expect_repair(&app, 0, t0, &rel(s), "sealed damage after a start").await;
    }
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

/// A damaged index file while running: the monitor finds it (its checksum
/// fails) and the writer rebuilds it from the segment, with alerts; a
/// deleted one likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_deleted_index_file_is_rebuilt_by_the_monitor() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "ind", 3, 200, &acked).await;
    let sealed = sealed_segments(app.data_dir());
    let idx: Vec<_> = sealed.iter().take(2).map(|s| index_file(s)).collect();
    let good: Vec<Vec<u8>> = idx
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{} at seal: {e}", p.display())))
        .collect();

    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    let mut bad = good[0].clone();
    let n = bad.len() - 10;
    bad[n] ^= 0x40;
    std::fs::write(&idx[0], &bad).unwrap();
    std::fs::remove_file(&idx[1]).unwrap();
    for (p, g) in idx.iter().zip(&good) {
        // Every tick checks that each index file exists; its checksum is
        // checked round robin, one sealed segment per tick, as the
        // segments' SHA-256 is: allow a round over every segment.
        let rounds = sealed_segments(app.data_dir()).len() as u64 + 4;
        let file = rel(p);
        let (repair, _) = expect_alert(
            &app,
            before,
            t0,
            Duration::from_millis(500 * rounds),
            "index repair",
            |a| a["kind"] == "repair" && a["file"] == file.as_str(),
        )
        .await;
        expect_alert(&app, before, t0, Duration::ZERO, "index detection", |a| {
            a["kind"] == "detection"
                && a["file"] == file.as_str()
                && a["id"].as_u64() < repair["id"].as_u64()
        })
        .await;
        assert!(
            repair["detail"]
                .as_str()
                .unwrap()
                .contains("rebuilt from the segment"),
            "{repair}"
        );
        assert_eq!(&std::fs::read(p).unwrap(), g, "{} rebuilt", p.display());
    }
    assert_eq!(app.ready_status().await, 200);
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

/// An index file that cannot be rebuilt (here a directory stands where it
/// belongs) is alerted and retried, but it is derived data: the store stays
/// writable and ready, and reads are whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_file_that_cannot_be_rebuilt_does_not_make_the_store_read_only() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "ron", 2, 200, &acked).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    let idx = index_file(&seg);
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    std::fs::remove_file(&idx).unwrap();
    std::fs::create_dir(&idx).unwrap();
    std::fs::write(idx.join("in-the-way"), b"x").unwrap();
    let file = rel(&idx);
    expect_alert(
        &app,
        before,
        t0,
        Duration::from_secs(5),
        "failed index repair",
        |a| a["kind"] == "repair_failed" && a["file"] == file.as_str(),
    )
    .await;
    // A few more monitor ticks: still writable and ready.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.ready_status().await, 200);
    crate::common::integrity::prefill(&app, "ron", n, 5, 200, &acked).await;
    assert_all_intact(&app, &acked).await;
    // Once the obstacle is gone, the next tick rebuilds it.
    std::fs::remove_dir_all(&idx).unwrap();
    expect_alert(
        &app,
        before,
        t0,
        Duration::from_secs(10),
        "index repair",
        |a| a["kind"] == "repair" && a["file"] == file.as_str(),
    )
    .await;
    assert!(idx.is_file());
    app.stop().await;
}
