//! No false alarms: a busy store that nobody damages — sealing a segment
//! every few events, backing up after every seal, checked every 20 ms —
//! raises no detection, repair or failure alerts. A false detection pages
//! someone for nothing, and a "repair" of an intact file hides real ones.

use std::time::Duration;

use serde_json::Value;

use crate::common::files::{sealed_segments, DataDir};
use crate::common::integrity::{acked, assert_all_intact, Publisher};
use crate::common::monitor::start_monitored;
use crate::common::note;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_undamaged_store_raises_no_alerts() {
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "1KiB", "--monitor-interval", "0.02"],
    )
    .await;
    let acked = acked();
    let publisher = Publisher::start(&app, "qui", 1, Duration::ZERO, &acked);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let published = publisher.finish().await;
    let stats = app.get_json("/stats").await;
    note(format!(
        "{published} events, {} sealed segments, integrity {}",
        sealed_segments(app.data_dir()).len(),
        stats["integrity"]
    ));
    let alerts: Vec<Value> = app.alerts().await;
    let noisy: Vec<String> = alerts
        .iter()
        .map(|a| format!("{} {} {}", a["kind"], a["file"], a["detail"]))
        .collect();
    assert!(
        alerts.is_empty(),
        "{} alert(s) on an undamaged store:\n{}",
        noisy.len(),
        noisy.join("\n")
    );
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
