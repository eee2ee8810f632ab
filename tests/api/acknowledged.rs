//! Recovery never drops or renumbers an acknowledged event. Only an
//! unterminated final line is a torn tail; a complete record with a bad CRC
//! (even the last one) is damage, and a file shorter than what was
//! acknowledged lost records. Both are repaired from a verified backup or
//! refused with a report; every cut, repair and refusal is an alert.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::files::{
    active_segment, as_after_a_crash, first_segment, quarantined, remove_backups, truncate, DataDir,
};
use crate::common::monitor::Webhook;
use crate::common::process::{run_expecting_exit, run_msgbus};
use crate::common::server::{start_app, TestApp};

/// Ten events, each with a recognisable payload.
async fn publish_ten(app: &TestApp) {
    for i in 1..=10 {
        app.publish_ok(&json!({
            "type": "t.ack",
            "source": "/ack",
            "id": format!("a{i}"),
            "data": {"payload": format!("payload-number-{i:02}")}
        }))
        .await;
    }
}

/// Takes a backup through the API and waits for its answer.
async fn take_backup(app: &TestApp) {
    let res = app.post("/admin/backups", None).await;
    assert!(
        res.status == 200 || res.status == 201,
        "backup: {} {}",
        res.status,
        res.text()
    );
}

/// How a test's store was left before its files are damaged.
enum Left {
    /// Stopped with a verified backup of all ten events.
    BackedUp,
    /// Stopped, with every backup removed.
    NoBackup,
    /// As after a crash: no durable floor past the last start.
    Crashed,
}

/// A stopped store holding the ten events, left as `left` says.
async fn ten_events(left: Left) -> DataDir {
    let app = start_app(DataDir::temp(), &[]).await;
    publish_ten(&app).await;
    if matches!(left, Left::BackedUp) {
        take_backup(&app).await;
    }
    let dir = app.stop().await;
    match left {
        Left::BackedUp => {}
        Left::NoBackup => remove_backups(dir.path()).await,
        Left::Crashed => as_after_a_crash(dir.path()),
    }
    dir
}

/// Offsets of the end of each line of a segment.
fn line_ends(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect()
}

/// Flips one byte of the payload of the last record: still valid JSON, a
/// complete line, only the CRC can tell. Returns the damaged line's offset.
fn flip_in_last_record(segment: &Path) -> usize {
    let mut bytes = std::fs::read(segment).unwrap();
    let ends = line_ends(&bytes);
    let start = ends[ends.len() - 2];
    let at = start
        + bytes[start..]
            .windows(7)
            .position(|w| w == b"payload")
            .unwrap();
    bytes[at] ^= 0x01; // 'p' -> 'q'
    std::fs::write(segment, &bytes).unwrap();
    start
}

async fn verify(dir: &Path) -> (i32, String) {
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &dir.display().to_string()]).await;
    (code, format!("{out}{err}"))
}

async fn alerts(app: &TestApp) -> Vec<Value> {
    app.get_json("/alerts").await["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_alert(alerts: &[Value], kind: &str, file_part: &str) -> bool {
    alerts
        .iter()
        .any(|a| a["kind"] == kind && a["file"].as_str().unwrap_or("").contains(file_part))
}

/// The ten events, exactly as published, and nothing renumbered.
async fn assert_ten_intact(app: &TestApp) {
    let all = app.read_all().await;
    let got: Vec<(u64, String)> = all
        .iter()
        .map(|(seq, e)| (*seq, e["data"]["payload"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(u64, String)> = (1..=10)
        .map(|i| (i, format!("payload-number-{i:02}")))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_bad_crc_in_the_last_record_is_repaired_from_a_backup_not_cut() {
    let dir = ten_events(Left::BackedUp).await;
    let segment = first_segment(dir.path());
    let offset = flip_in_last_record(&segment);

    let (code, report) = verify(dir.path()).await;
    assert_eq!(
        code, 1,
        "verify calls it damage, not a torn tail:\n{report}"
    );
    assert!(report.contains("DAMAGED"), "{report}");
    assert!(report.contains(&format!("offset {offset}")), "{report}");
    assert!(report.contains("repairs it from backup"), "{report}");

    let app = start_app(dir, &[]).await;
    assert_ten_intact(&app).await;
    assert!(
        has_alert(&alerts(&app).await, "repair", "00000000000000000001.jsonl"),
        "the repair at start-up is an alert: {:#?}",
        alerts(&app).await
    );
    assert_eq!(
        quarantined(app.data_dir()).len(),
        1,
        "the damaged file is kept aside"
    );
    let res = app
        .publish_ok(&json!({"type": "t.ack", "source": "/ack", "id": "a11"}))
        .await;
    assert_eq!(res["seq"], 11, "the next publish does not reuse seq 10");
}

#[tokio::test]
async fn a_bad_crc_in_the_last_record_without_a_backup_refuses_to_start() {
    let hook = Webhook::start().await;
    let dir = ten_events(Left::NoBackup).await;
    let segment = first_segment(dir.path());
    let offset = flip_in_last_record(&segment);
    let damaged = std::fs::read(&segment).unwrap();

    let (code, report) = verify(dir.path()).await;
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("seq 10"), "{report}");

    let exited = run_expecting_exit(
        dir.path(),
        &["--alert-webhook", &hook.url],
        Duration::from_secs(20),
    )
    .await;
    let stderr = &exited.stderr;
    assert!(!exited.status.success(), "must refuse:\n{stderr}");
    for part in [
        segment.display().to_string(),
        format!("offset {offset}"),
        "seq 10".to_string(),
    ] {
        assert!(stderr.contains(&part), "the report names {part}:\n{stderr}");
    }
    assert_eq!(std::fs::read(&segment).unwrap(), damaged, "nothing was cut");
    hook.expect("the refusal", Duration::from_secs(5), |a| {
        a["kind"] == "start_refused"
    })
    .await;
}

#[tokio::test]
async fn records_truncated_while_stopped_are_noticed_and_refused() {
    let dir = ten_events(Left::NoBackup).await;
    let segment = first_segment(dir.path());
    let ends = line_ends(&std::fs::read(&segment).unwrap());
    truncate(&segment, ends[7] as u64); // 10 records -> 8, at a boundary

    let (code, report) = verify(dir.path()).await;
    assert_eq!(code, 1, "verify notices the missing records:\n{report}");
    assert!(report.contains("seq 9..=10 are missing"), "{report}");

    let exited = run_expecting_exit(dir.path(), &[], Duration::from_secs(20)).await;
    assert!(!exited.status.success(), "{}", exited.stderr);
    assert!(
        exited.stderr.contains("seq 9..=10 are missing"),
        "{}",
        exited.stderr
    );
}

#[tokio::test]
async fn records_truncated_while_stopped_come_back_from_a_backup() {
    let dir = ten_events(Left::BackedUp).await;
    let segment = first_segment(dir.path());
    let ends = line_ends(&std::fs::read(&segment).unwrap());
    truncate(&segment, ends[7] as u64);

    let app = start_app(dir, &[]).await;
    assert_ten_intact(&app).await;
    let list = alerts(&app).await;
    assert!(
        has_alert(&list, "repair", "00000000000000000001.jsonl"),
        "{list:#?}"
    );
    let detail = list.iter().find(|a| a["kind"] == "repair").unwrap()["detail"].to_string();
    assert!(detail.contains("seq 9..=10 came back"), "{detail}");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_raised_as_an_alert() {
    let dir = ten_events(Left::Crashed).await;
    let segment = active_segment(dir.path());
    let ends = line_ends(&std::fs::read(&segment).unwrap());
    truncate(&segment, (ends[8] + ends[9]) as u64 / 2);

    let (code, report) = verify(dir.path()).await;
    assert_eq!(
        code, 2,
        "an unterminated last line is a torn tail:\n{report}"
    );

    let app = start_app(dir, &[]).await;
    assert_eq!(app.read_all().await.len(), 9);
    let list = alerts(&app).await;
    assert!(
        has_alert(&list, "torn_tail", "00000000000000000001.jsonl"),
        "{list:#?}"
    );
}

/// A publish whose commit reached a file deleted under the writer, and
/// whose rewrite then failed, is not acknowledged.
#[tokio::test]
async fn no_201_when_rewriting_a_deleted_active_segment_fails() {
    let app = start_app(DataDir::temp(), &[]).await;
    publish_ten(&app).await;
    let segment = active_segment(app.data_dir());
    // Fault injection: the rewrite goes through `<file>.tmp`; a directory
    // in its place makes it fail, as a full or failing disk would (a test
    // running as root cannot take write permission away).
    let mut tmp = segment.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::remove_file(&segment).unwrap();

    let res = app
        .publish(&json!({"type": "t.ack", "source": "/ack", "id": "lost"}))
        .await;
    assert_ne!(
        res.status,
        201,
        "a 201 for a commit that is not on disk: {}",
        res.text()
    );
    res.assert_problem(503);
    std::fs::remove_dir(&tmp).unwrap();
}
