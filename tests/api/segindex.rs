//! Sealed segments' index files (`segments/<segment>.idx`): a restart loads
//! sealed segments from them and answers exactly as before; a missing or
//! damaged one is rebuilt from its segment at start-up, with an alert; a
//! store written before index files existed gets them at its first start.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::files::{index_file, rel, sealed_segments, DataDir};
use crate::common::http::Api;
use crate::common::process::run_msgbus;
use crate::common::server::{start_app, TestApp};
use crate::common::sse::SseReader;

/// Small segments, so 300 events make many sealed ones.
const ARGS: &[&str] = &["--segment-bytes", "4KiB"];

/// Publishes `n` events with varied types, sources and subjects, in batches.
async fn fill(api: &Api, n: u64) {
    let mut i = 1;
    while i <= n {
        let evs: Vec<Value> = (i..(i + 25).min(n + 1))
            .map(|k| {
                let mut ev = json!({
                    "type": format!("t.{}.x", k % 3),
                    "source": format!("/src/{}", k % 4),
                    "id": format!("e{k}"),
                    "data": {"k": k, "pad": "x".repeat(60)},
                });
                if k % 5 != 0 {
                    ev["subject"] = json!(format!("sub-{}", k % 2));
                }
                ev
            })
            .collect();
        api.publish_batch(&evs).await;
        i += 25;
    }
}

/// Everything a reader can see: pages with filters, single events, an SSE
/// resume from the middle of an old segment, and the stats counters.
async fn observe(api: &Api) -> Vec<Value> {
    let mut seen = Vec::new();
    for q in [
        "/events?limit=1000",
        "/events?after=17&limit=40",
        "/events?type=t.1.x&limit=1000",
        "/events?type_prefix=t.2&limit=1000",
        "/events?source=/src/3&limit=1000",
        "/events?subject=sub-1&limit=1000",
        "/events?type=t.0.x&source=/src/2&limit=7",
    ] {
        let page = api.get_json(q).await;
        seen.push(json!({"q": q, "page": page}));
    }
    for seq in [1, 2, 77, 150, 299, 300] {
        seen.push(api.get_json(&format!("/events/{seq}")).await);
    }
    let mut sse = SseReader::open(api, "/events/stream?type=t.1.x", Some(20)).await;
    let mut frames = Vec::new();
    for _ in 0..30 {
        let m = sse
            .next_event(Duration::from_secs(5))
            .await
            .expect("an SSE event");
        frames.push(m.json());
    }
    seen.push(Value::from(frames));
    let stats = api.get_json("/stats").await;
    seen.push(json!({
        "events": stats["events"],
        "types": stats["types"],
        "sources": stats["sources"],
        "segments": stats["store"]["segments"],
    }));
    seen
}

/// Index files of the sealed segments, asserting each exists.
fn index_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let sealed = sealed_segments(dir);
    assert!(sealed.len() > 3, "several sealed segments: {sealed:?}");
    sealed
        .iter()
        .map(|s| {
            let idx = index_file(s);
            assert!(idx.is_file(), "{} has an index file", rel(s));
            idx
        })
        .collect()
}

async fn start_up_alerts(app: &TestApp) -> Vec<Value> {
    app.get_json("/alerts").await["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["detail"].as_str().is_some_and(|d| d.contains("index")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_index_files_answers_exactly_as_before() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let before = observe(&app).await;
    let dir = app.stop().await;
    // Every sealed segment got its index file when it was sealed.
    let idx = index_files(dir.path());
    let idx_bytes: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let app = start_app(dir, ARGS).await;
    assert_eq!(observe(&app).await, before);
    assert!(
        start_up_alerts(&app).await.is_empty(),
        "a clean start rebuilds nothing"
    );
    // Idempotency from the index files: a duplicate of the very first
    // event, in the oldest sealed segment, answers 200 with its seq.
    let dup = app
        .publish(&json!({"type": "t.other", "source": "/src/1", "id": "e1"}))
        .await;
    assert_eq!(dup.status, 200, "{}", dup.text());
    assert_eq!(dup.json()["seq"], 1);
    for k in [2u64, 150, 300] {
        let dup = app
            .publish(&json!({"type": "t.other", "source": format!("/src/{}", k % 4), "id": format!("e{k}")}))
            .await;
        assert_eq!(dup.status, 200, "e{k}: {}", dup.text());
        assert_eq!(dup.json()["seq"], k);
    }
    // The same id from another source is another event.
    let other = app
        .publish(&json!({"type": "t.other", "source": "/src/9", "id": "e1"}))
        .await;
    assert_eq!(other.status, 201, "{}", other.text());
    let dir = app.stop().await;
    // Loading them did not rewrite them.
    for (p, b) in idx.iter().zip(&idx_bytes) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} unchanged", p.display());
    }
    let d = dir.path().display().to_string();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(".idx: matches its segment"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_damaged_index_files_are_rebuilt_at_start_up_with_an_alert() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let before = observe(&app).await;
    let dir = app.stop().await;
    let idx = index_files(dir.path());
    let good: Vec<Vec<u8>> = idx.iter().map(|p| std::fs::read(p).unwrap()).collect();
    std::fs::remove_file(&idx[0]).unwrap();
    let mut bad = good[1].clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&idx[1], &bad).unwrap();
    // Cut short, as by a crash of something copying it.
    std::fs::write(&idx[2], &good[2][..good[2].len() / 3]).unwrap();

    // `msgbus verify` reports them, but they are not data loss.
    let d = dir.path().display().to_string();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(
        code, 0,
        "a damaged index is not damage of the log:\n{out}{err}"
    );
    assert_eq!(out.matches("not data loss").count(), 3, "{out}");

    let app = start_app(dir, ARGS).await;
    assert_eq!(observe(&app).await, before);
    let alerts = start_up_alerts(&app).await;
    for (i, what) in [(0, "was missing"), (1, "was damaged"), (2, "was damaged")] {
        let file = format!("segments/{}", idx[i].file_name().unwrap().to_string_lossy());
        assert!(
            alerts.iter().any(|a| a["file"] == file.as_str()
                && a["detail"].as_str().unwrap().contains(what)
                && a["detail"]
                    .as_str()
                    .unwrap()
                    .contains("rebuilt from the segment")),
            "an alert says {file} {what} and was rebuilt: {alerts:#?}"
        );
    }
    assert_eq!(alerts.len(), 3, "only those three: {alerts:#?}");
    let _dir = app.stop().await;
    for (p, b) in idx.iter().zip(&good) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} rebuilt", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_index_files_starts_and_gets_them() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let before = observe(&app).await;
    let dir = app.stop().await;
    // What the previous version left: segments and a manifest, no index files.
    let idx = index_files(dir.path());
    for p in &idx {
        std::fs::remove_file(p).unwrap();
    }

    let app = start_app(dir, ARGS).await;
    assert_eq!(observe(&app).await, before);
    assert_eq!(
        start_up_alerts(&app).await.len(),
        idx.len(),
        "one alert per rebuilt index"
    );
    let app = app.restart(ARGS).await;
    // The next start uses them: nothing is rebuilt again.
    assert!(start_up_alerts(&app).await.is_empty());
    assert_eq!(observe(&app).await, before);
    let dir = app.stop().await;
    index_files(dir.path());
}

/// Retention deletes a segment's index file with the segment: every index
/// file left belongs to a sealed segment the manifest lists, and each of
/// those has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_index_files_with_their_segments() {
    let args = ["--segment-bytes", "4KiB", "--retention-max-events", "100"];
    let app = start_app(DataDir::temp(), &args).await;
    fill(&app, 400).await;
    let seg_dir = app.data_dir().join("segments");
    let t0 = std::time::Instant::now();
    loop {
        let stats = app.get_json("/stats").await;
        let deleted = stats["retention"]["segments_deleted"].as_u64().unwrap_or(0);
        let sealed: Vec<String> = sealed_segments(app.data_dir())
            .iter()
            .map(|s| s.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        let mut idx: Vec<String> = std::fs::read_dir(&seg_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter_map(|n| n.strip_suffix(".idx").map(str::to_string))
            .collect();
        idx.sort();
        if deleted >= 5 && idx == sealed {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "after {deleted} segments deleted, index files {idx:?} for sealed segments {sealed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
