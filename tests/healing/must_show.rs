//! Test 11: The must-show: with `--monitor-interval 0.5`, bytes flipped in the
//! middle of the active segment, a sealed segment deleted and the manifest
//! truncated — each while a client publishes — are each repaired within 2 s;
//! every event acknowledged before and during the damage reads back
//! byte-identical; `/alerts` lists each detection and repair (and the
//! webhook receives them); `/health/ready` is 200 afterwards.

use std::time::{Duration, Instant};

use crate::common::files::{active_segment, flip_pad, rel, sealed_segments, truncate, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed, Publisher, Watchdog};
use crate::common::monitor::{expect_repair, start_monitored, wait_backup_holding, Webhook};
use crate::common::note;
use crate::common::process::run_msgbus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_flip_sealed_delete_and_manifest_truncation_are_each_repaired_within_2s() {
    let hook = Webhook::start().await;
    // One sealed segment up front; 64 KiB segments and a publisher at about
    // 30 events/s do not seal another during the test, so each damage is
    // the monitor's to find.
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "64KiB", "--alert-webhook", &hook.url],
    )
    .await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "must", 1, 1000, &acked).await;
    let sealed = sealed_segments(app.data_dir())[0].clone();
    wait_backup_holding(&app, &sealed).await;
    let sealed_bytes = std::fs::read(&sealed).unwrap();
    let publisher = Publisher::start(&app, "must", n, Duration::from_millis(30), &acked);
    let watchdog = Watchdog::start(&app, &acked);
    publisher.wait_for_more(20).await;
    let mut times = Vec::new();

    // Bytes flipped in the middle of the active segment.
    let active = active_segment(app.data_dir());
    let len = std::fs::metadata(&active).unwrap().len();
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    flip_pad(&active, len / 2);
    let (_, took) = expect_repair(&app, before, t0, &rel(&active), "active segment flip").await;
    times.push(("active segment bytes flipped", rel(&active), took));
    publisher.wait_for_more(5).await;

    // A sealed segment deleted.
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    std::fs::remove_file(&sealed).unwrap();
    let (_, took) = expect_repair(&app, before, t0, &rel(&sealed), "sealed segment deleted").await;
    times.push(("sealed segment deleted", rel(&sealed), took));
    assert_eq!(std::fs::read(&sealed).unwrap(), sealed_bytes);
    publisher.wait_for_more(5).await;

    // The manifest truncated.
    let manifest = app.data_dir().join("manifest.json");
    let mlen = std::fs::metadata(&manifest).unwrap().len();
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    truncate(&manifest, mlen / 2);
    let (_, took) = expect_repair(&app, before, t0, "manifest.json", "manifest truncated").await;
    times.push(("manifest truncated", "manifest.json".to_string(), took));
    publisher.wait_for_more(5).await;

    let published = publisher.finish().await;
    watchdog.finish().await;
    assert_eq!(
        app.ready_status().await,
        200,
        "{}",
        app.get("/health/ready").await.text()
    );
    assert_all_intact(&app, &acked).await;
    for (_, file, _) in &times {
        hook.expect(
            &format!("the repair of {file}"),
            Duration::from_secs(3),
            |a| a["kind"] == "repair" && a["file"] == file.as_str(),
        )
        .await;
    }
    note(format!(
        "must-show summary ({published} events published during the damage):"
    ));
    for (what, file, took) in &times {
        note(format!(
            "  {what:<30} {file:<35} repaired within {} ms (bound 2000 ms)",
            took.as_millis()
        ));
    }

    // The repairs are durable: the stopped store verifies offline and
    // serves every acknowledged event after a restart.
    let dir = app.stop().await;
    let (code, out, err) =
        run_msgbus(&["verify", "--data-dir", &dir.path().display().to_string()]).await;
    assert_eq!(code, 0, "msgbus verify after the repairs:\n{out}\n{err}");
    let app = start_monitored(dir, &["--segment-bytes", "64KiB"]).await;
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
