//! Damage inside the log (a bad record followed by valid ones) is not a torn
//! tail: with no backup to repair it from, msgbus refuses to start, names
//! the file and offset, and leaves the file as it is.

use std::time::Duration;

use serde_json::json;

use crate::common::files::{first_segment, quarantined, remove_backups, DataDir};
use crate::common::process::run_expecting_exit;
use crate::common::server::{open_store, spawn_app};

/// A stopped store of three records; returns it with the segment bytes and
/// the offset where the middle record starts.
async fn three_records() -> (DataDir, Vec<u8>, usize) {
    let app = spawn_app().await;
    for (i, payload) in ["first-record", "middle-record-payload", "last-record"]
        .iter()
        .enumerate()
    {
        app.publish_ok(&json!({
            "type": "t.damage",
            "source": "/damage",
            "id": format!("d{i}"),
            "data": {"payload": payload}
        }))
        .await;
    }
    let dir = app.stop().await;
    // No backup to repair from: this is the case where msgbus must refuse.
    remove_backups(dir.path()).await;
    let bytes = std::fs::read(first_segment(dir.path())).unwrap();
    let middle = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    (dir, bytes, middle)
}

async fn assert_refused(damaged: &[u8], dir: &DataDir, middle: usize) {
    let segment = first_segment(dir.path());
    std::fs::write(&segment, damaged).unwrap();

    let exited = run_expecting_exit(dir.path(), &[], Duration::from_secs(10)).await;
    let stderr = &exited.stderr;
    assert!(
        !exited.status.success(),
        "msgbus must refuse to start on a damaged log; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&segment.display().to_string()),
        "the report names the file {}:\n{stderr}",
        segment.display()
    );
    assert!(
        stderr.contains(&format!("offset {middle}")),
        "the report names the offset {middle}:\n{stderr}"
    );
    assert!(!stderr.contains("msgbus listening"), "{stderr}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        damaged,
        "the damaged file must not be truncated or changed"
    );
    assert!(
        quarantined(dir.path()).is_empty(),
        "nothing was cut, so nothing is quarantined"
    );

    // The library says the same and also leaves the file alone.
    let err = open_store(dir.path()).expect_err("recovery refuses a damaged log");
    let msg = err.to_string();
    assert!(msg.contains(&format!("offset {middle}")), "{msg}");
    assert_eq!(std::fs::read(&segment).unwrap(), damaged);
}

#[tokio::test]
async fn flipped_byte_in_a_middle_record_refuses_to_start() {
    let (dir, bytes, middle) = three_records().await;
    let mut damaged = bytes.clone();
    let at = middle
        + bytes[middle..]
            .windows(6)
            .position(|w| w == b"middle")
            .expect("the payload is in the middle record");
    damaged[at] ^= 0x01; // 'm' -> 'l': still valid JSON, wrong CRC
    assert_refused(&damaged, &dir, middle).await;
}

#[tokio::test]
async fn garbled_framing_in_a_middle_record_refuses_to_start() {
    let (dir, bytes, middle) = three_records().await;
    let mut damaged = bytes.clone();
    damaged[middle] = b'#'; // the record is no longer JSON
    assert_refused(&damaged, &dir, middle).await;
}
