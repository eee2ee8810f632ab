//! Alert delivery: a webhook that fails is retried with backoff, so an
//! alert is not lost to one failed POST; `/alerts` marks repaired problems
//! resolved and counts alerts per kind.

use std::time::{Duration, Instant};

use crate::common::files::DataDir;
use crate::common::integrity::{acked, assert_all_intact, prefill};
use crate::common::monitor::{expect_repair, start_monitored, Webhook};
use crate::common::note;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_post_is_retried_and_repaired_alerts_are_resolved() {
    // The first POST is answered 500.
    let hook = Webhook::start_failing(1).await;
    let app = start_monitored(DataDir::temp(), &["--alert-webhook", &hook.url]).await;
    let acked = acked();
    prefill(&app, "hok", 1, 5, 50, &acked).await;

    let t0 = Instant::now();
    std::fs::remove_file(app.data_dir().join("manifest.json")).unwrap();
    expect_repair(&app, 0, t0, "manifest.json", "deleted manifest (idle)").await;
    // The detection's first POST failed; it is retried (after about 1 s),
    // and the repair follows it.
    let detection = hook
        .expect("the detection, retried", Duration::from_secs(4), |a| {
            a["kind"] == "detection" && a["file"] == "manifest.json"
        })
        .await;
    hook.expect("the repair", Duration::from_secs(4), |a| {
        a["kind"] == "repair" && a["file"] == "manifest.json"
    })
    .await;
    assert!(
        hook.attempts() >= 3,
        "one refused POST, its retry and the repair: {} attempts",
        hook.attempts()
    );
    note(format!(
        "detection delivered on retry: {}",
        detection["text"]
    ));

    // In /alerts the detection is resolved by the repair; counts per kind.
    let list = app.get_json("/alerts").await;
    let det = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "detection" && a["file"] == "manifest.json")
        .cloned()
        .expect("the detection is listed");
    assert_eq!(
        det["resolved"], true,
        "a repaired detection is resolved: {det}"
    );
    assert!(list["counts"]["detection"].as_u64() >= Some(1), "{list}");
    assert!(list["counts"]["repair"].as_u64() >= Some(1), "{list}");
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}
