//! The real binary: the must-show's damage against `msgbus` itself, with
//! every alert also a structured JSON log line (`"message":"alert"` with
//! `kind`, `file` and `detail`) for log collectors.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::files::{active_segment, flip_pad, rel, sealed_segments, truncate, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed, Publisher};
use crate::common::monitor::{
    expect_repair, spawn_monitored_process, wait_backup_holding, Webhook,
};
use crate::common::process::run_msgbus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_repairs_damage_and_logs_each_alert_as_json() {
    let hook = Webhook::start().await;
    let dir = DataDir::temp();
    let args = ["--segment-bytes", "64KiB", "--alert-webhook", &hook.url];
    let proc = spawn_monitored_process(dir.path(), &args).await;
    let acked = acked();
    let n = fill_until_sealed(&proc, dir.path(), "bin", 1, 1000, &acked).await;
    let sealed = sealed_segments(dir.path())[0].clone();
    wait_backup_holding(&proc, &sealed).await;
    let publisher = Publisher::start(&proc, "bin", n, Duration::from_millis(30), &acked);
    publisher.wait_for_more(20).await;

    let active = active_segment(dir.path());
    let len = std::fs::metadata(&active).unwrap().len();
    let mut files = Vec::new();
    for step in 0..3 {
        let before = proc.last_alert_id().await;
        let t0 = Instant::now();
        let file = match step {
            0 => {
                flip_pad(&active, len / 2);
                rel(&active)
            }
            1 => {
                std::fs::remove_file(&sealed).unwrap();
                rel(&sealed)
            }
            _ => {
                let m = dir.path().join("manifest.json");
                let mlen = std::fs::metadata(&m).unwrap().len();
                truncate(&m, mlen / 2);
                "manifest.json".to_string()
            }
        };
        expect_repair(&proc, before, t0, &file, &format!("binary: {file}")).await;
        publisher.wait_for_more(5).await;
        files.push(file);
    }
    publisher.finish().await;
    assert_eq!(proc.ready_status().await, 200);
    assert_all_intact(&proc, &acked).await;

    // Each detection and repair is also a JSON log line.
    let log = proc.log();
    for file in &files {
        for kind in ["detection", "repair"] {
            let line = log.iter().find(|l| {
                l["message"] == "alert" && l["kind"] == kind && l["file"] == file.as_str()
            });
            assert!(
                line.is_some_and(|l| l["detail"].as_str().is_some_and(|d| !d.is_empty())),
                "no JSON log line for the {kind} of {file}; alert lines: {:#}",
                Value::from(
                    log.iter()
                        .filter(|l| l["message"] == "alert")
                        .cloned()
                        .collect::<Vec<_>>()
                )
            );
        }
        hook.expect(
            &format!("the repair of {file}"),
            Duration::from_secs(3),
            |a| a["kind"] == "repair" && a["file"] == file.as_str(),
        )
        .await;
    }
    proc.stop().await;

    let (code, out, err) =
        run_msgbus(&["verify", "--data-dir", &dir.path().display().to_string()]).await;
    assert_eq!(code, 0, "msgbus verify after the repairs:\n{out}\n{err}");
}
