//! Test 6: `manifest.json` truncated, then deleted, while a client publishes:
//! rewritten from the writer's copy within two monitor intervals, and the
//! store opens cleanly from it afterwards.

use std::time::{Duration, Instant};

use crate::common::files::{sealed_segments, truncate, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed, Publisher, Watchdog};
use crate::common::monitor::{expect_repair, start_monitored, Webhook};
use crate::common::process::run_msgbus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_deleted_manifest_is_rewritten_while_publishing() {
    let hook = Webhook::start().await;
    // 64 KiB segments and a slow publisher: no seal (which rewrites the
    // manifest anyway) during the damage, so the monitor must see it.
    let args = ["--segment-bytes", "64KiB"];
    let app = start_monitored(
        DataDir::temp(),
        &[&args[..], &["--alert-webhook", &hook.url]].concat(),
    )
    .await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "man", 1, 1000, &acked).await;
    let publisher = Publisher::start(&app, "man", n, Duration::from_millis(30), &acked);
    let watchdog = Watchdog::start(&app, &acked);
    publisher.wait_for_more(3).await;

    let path = app.data_dir().join("manifest.json");
    let good = std::fs::read(&path).unwrap();
    let sealed = sealed_segments(app.data_dir()).len();

    // Truncated.
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    truncate(&path, good.len() as u64 / 2);
    expect_repair(&app, before, t0, "manifest.json", "truncated manifest").await;
    publisher.wait_for_more(3).await;

    // Deleted.
    let before = app.last_alert_id().await;
    let t0 = Instant::now();
    std::fs::remove_file(&path).unwrap();
    expect_repair(&app, before, t0, "manifest.json", "deleted manifest").await;
    publisher.wait_for_more(3).await;

    publisher.finish().await;
    watchdog.finish().await;
    if sealed_segments(app.data_dir()).len() == sealed {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "the manifest is rewritten as it was"
        );
    }
    assert_eq!(app.ready_status().await, 200);
    assert_all_intact(&app, &acked).await;
    hook.expect("the manifest repair", Duration::from_secs(3), |a| {
        a["kind"] == "repair" && a["file"] == "manifest.json"
    })
    .await;

    // The rewritten manifest opens cleanly: everything is there after a restart.
    let dir = app.stop().await;
    let (code, out, err) =
        run_msgbus(&["verify", "--data-dir", &dir.path().display().to_string()]).await;
    assert_eq!(code, 0, "msgbus verify after the repairs:\n{out}\n{err}");
    let app = start_monitored(dir, &args).await;
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
