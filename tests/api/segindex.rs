//! Sealed segments' index files (`segments/<segment>.idx`): a restart loads
//! sealed segments from them and answers exactly as before; a missing or
//! damaged one is rebuilt from its segment at start-up, with an alert; a
//! store written before index files existed gets them at its first start.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::files::{index_file, rel, sealed_segments, DataDir};
use crate::common::http::Api;
use crate::common::process::{run_msgbus, spawn_process};
use crate::common::server::{start_app, TestApp};
use crate::common::sse::SseReader;

/// Small segments, so 300 events make many sealed ones.
const ARGS: &[&str] = &["--segment-bytes", "4KiB"];

/// Waits until the alert list holds a repair of `file`, at most `within`.
async fn wait_for_repair_alert(api: &Api, file: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let alerts = api.alerts().await;
        if alerts
            .iter()
            .any(|a| a["kind"] == "repair" && a["file"] == file)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no repair of {file} within {within:?}: {:#}",
            Value::from(alerts)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    // A flipped byte in the header section, which start-up reads (damage
    // to the records is found by the monitor's first check instead, and
    // reads meanwhile come from the segment: see
    // reads_stay_whole_while_an_index_file_is_damaged).
    let mut bad = good[1].clone();
    bad[24] ^= 0x01;
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

/// Reads `path` (a query without `after`) page by page to the end; the seqs.
async fn read_filtered(api: &Api, query: &str, head: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = 0;
    while after < head {
        let page = api
            .get_json(&format!("/events?{query}&after={after}&limit=7"))
            .await;
        for e in page["events"].as_array().expect("events") {
            seqs.push(e["seq"].as_u64().expect("seq"));
        }
        let next = page["next_after"].as_u64().expect("next_after");
        assert!(
            next > after,
            "{query}: the cursor moves ({after} -> {next})"
        );
        after = next;
    }
    seqs
}

/// After a restart, sealed segments have no entry per event in memory:
/// reads go through their index files (skipping the segments whose tables
/// cannot match), and every filter answers exactly what filtering all the
/// events one by one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_index_files_equal_filtering_every_event() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    // One event of a rare type and subject, in what becomes an old segment.
    app.publish_ok(
        &json!({"type": "t.rare", "source": "/src/rare", "id": "r1", "subject": "only"}),
    )
    .await;
    for k in 0..120u64 {
        app.publish_ok(&json!({
            "type": format!("u.{}", k % 2), "source": "/src/1", "id": format!("f{k}"),
            "data": {"pad": "y".repeat(80)},
        }))
        .await;
    }
    let app = app.restart(ARGS).await;

    let stats = app.get_json("/stats").await;
    let total = stats["events"]["total"].as_u64().unwrap();
    assert_eq!(total, 421);
    let in_memory = stats["store"]["memory_entries"].as_u64().unwrap();
    let sealed = sealed_segments(app.data_dir()).len() as u64;
    assert!(sealed > 10, "many sealed segments: {sealed}");
    assert_eq!(stats["store"]["indexed_segments"], sealed, "{stats}");
    assert!(
        in_memory < 40,
        "only the active segment's events have entries in memory: {in_memory} of {total}"
    );

    let all = app.read_all().await;
    assert_eq!(all.len() as u64, total);
    let attr = |ev: &Value, k: &str| ev[k].as_str().map(str::to_string);
    type Pred<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let cases: Vec<(&str, Pred)> = vec![
        (
            "type=t.1.x",
            Box::new(|e| attr(e, "type").as_deref() == Some("t.1.x")),
        ),
        (
            "type=t.rare",
            Box::new(|e| attr(e, "type").as_deref() == Some("t.rare")),
        ),
        ("type=t.none", Box::new(|_| false)),
        (
            "type_prefix=t.2",
            Box::new(|e| attr(e, "type").unwrap().starts_with("t.2")),
        ),
        (
            "type_prefix=u.",
            Box::new(|e| attr(e, "type").unwrap().starts_with("u.")),
        ),
        (
            "source=/src/3",
            Box::new(|e| attr(e, "source").as_deref() == Some("/src/3")),
        ),
        (
            "subject=sub-1",
            Box::new(|e| attr(e, "subject").as_deref() == Some("sub-1")),
        ),
        (
            "subject=only",
            Box::new(|e| attr(e, "subject").as_deref() == Some("only")),
        ),
        (
            "type_prefix=t.&source=/src/1&subject=sub-1",
            Box::new(|e| {
                attr(e, "type").unwrap().starts_with("t.")
                    && attr(e, "source").as_deref() == Some("/src/1")
                    && attr(e, "subject").as_deref() == Some("sub-1")
            }),
        ),
    ];
    for (query, pred) in &cases {
        let want: Vec<u64> = all
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(read_filtered(&app, query, total).await, want, "{query}");
    }
    // Single events from sealed segments, byte for byte what a page holds.
    for seq in [1u64, 2, 150, 301, 380] {
        let one = app.get_json(&format!("/events/{seq}")).await;
        assert_eq!(one["event"], all[(seq - 1) as usize].1, "seq {seq}");
    }
    // The stats counters come from the segments' tables and the entries.
    let mut by_type = std::collections::BTreeMap::<String, u64>::new();
    for (_, e) in &all {
        *by_type.entry(attr(e, "type").unwrap()).or_default() += 1;
    }
    assert_eq!(stats["events"]["by_type"], json!(by_type));
    app.stop().await;
}

/// An index file damaged or deleted while the store runs is derived data:
/// before the integrity monitor rebuilds it, reads of its segment are
/// served from the segment itself, whole and byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_whole_while_an_index_file_is_damaged() {
    let args = ["--segment-bytes", "4KiB", "--monitor-interval", "3600"];
    let app = start_app(DataDir::temp(), &args).await;
    fill(&app, 300).await;
    let app = app.restart(&args).await;
    let before = observe(&app).await;
    // The monitor's first check has run: the next is an hour away.
    let t0 = std::time::Instant::now();
    while app.get_json("/stats").await["integrity"]["checks"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no first check");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idx = index_files(app.data_dir());
    let mut bad = std::fs::read(&idx[0]).unwrap();
    // A byte of the first record block (the header section is intact).
    let at = bad.len() / 3;
    bad[at] ^= 0x10;
    std::fs::write(&idx[0], &bad).unwrap();
    std::fs::remove_file(&idx[1]).unwrap();
    std::fs::write(&idx[2], b"not an index").unwrap();
    assert_eq!(observe(&app).await, before);
    app.stop().await;
}

/// Idempotency stays exact over sealed segments whose keys are no longer
/// in memory: while the store runs (their keys moved to the key filter at
/// seal) and after a restart, a duplicate of any stored event answers 200
/// with its original seq, type and time, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_sealed_events_are_found_while_running_and_after_a_restart() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let originals = app.read_all().await;
    let mut app = app;
    for round in 0..2 {
        let stats = app.get_json("/stats").await;
        assert!(
            stats["store"]["memory_entries"].as_u64().unwrap() < 60,
            "round {round}: sealed events are not in memory: {stats}"
        );
        let lookups_before = stats["writer"]["sealed_key_lookups"].as_u64().unwrap();
        for k in [1u64, 2, 26, 150, 277] {
            let (seq, ev) = &originals[(k - 1) as usize];
            let dup = app
                .publish(&json!({"type": "t.again", "source": format!("/src/{}", k % 4), "id": format!("e{k}")}))
                .await;
            assert_eq!(dup.status, 200, "round {round}, e{k}: {}", dup.text());
            let body = dup.json();
            assert_eq!(body["seq"], *seq, "round {round}, e{k}");
            assert_eq!(body["duplicate"], true);
            assert_eq!(body["type"], ev["type"], "the original's type");
            assert_eq!(body["time"], ev["time"], "the original's time");
        }
        // A batch mixing duplicates of sealed events with new ones.
        let batch: Vec<Value> = (0..4)
            .flat_map(|i| {
                [
                    json!({"type": "t.b", "source": "/src/3", "id": format!("e{}", 3 + 4 * i)}),
                    json!({"type": "t.b", "source": "/src/new", "id": format!("n{round}-{i}")}),
                ]
            })
            .collect();
        let r = app.post("/events/batch", Some(&json!(batch))).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
        let results = r.json()["results"].as_array().cloned().unwrap_or_default();
        let dups = results.iter().filter(|x| x["duplicate"] == true).count();
        assert_eq!(dups, 4, "{results:?}");
        // The same id from another source is another event.
        let other = app
            .publish(&json!({"type": "t.other", "source": format!("/other/{round}"), "id": "e1"}))
            .await;
        assert_eq!(other.status, 201, "{}", other.text());
        let lookups = app.get_json("/stats").await["writer"]["sealed_key_lookups"]
            .as_u64()
            .unwrap();
        assert!(
            lookups >= lookups_before + 9,
            "the duplicates were found on disk: {lookups_before} -> {lookups}"
        );
        app = app.restart(ARGS).await;
    }
    let all = app.read_all().await;
    assert_eq!(all.len(), 300 + 2 * (4 + 1), "nothing was stored twice");
    app.stop().await;
}

/// A publish looks its key up in the sealed segments before the writer
/// takes it, and the writer asks only the segments sealed since: each id
/// is published twice at once by two tasks while segments seal every ~20
/// events (so the first copy's segment often seals between the second
/// copy's lookup and its commit), then a third time once all is sealed.
/// Every id is stored once, and every copy is answered with that seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_racing_seals_are_stored_once() {
    let app = start_app(DataDir::temp(), ARGS).await;
    const PAIRS: u64 = 4;
    const EACH: u64 = 60;
    let event = |p: u64, k: u64| {
        json!({"type": "t.race", "source": format!("/race/{p}"), "id": format!("r{k}"),
               "data": {"pad": "x".repeat(80)}})
    };
    let mut tasks = Vec::new();
    for p in 0..PAIRS {
        for _copy in 0..2 {
            let api = app.api.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for k in 0..EACH {
                    let r = api.publish(&event(p, k)).await;
                    assert!(r.status == 200 || r.status == 201, "{}", r.text());
                    seqs.push((p, k, r.json()["seq"].as_u64().unwrap()));
                }
                seqs
            }));
        }
    }
    let mut seq_of = std::collections::HashMap::new();
    for t in tasks {
        for (p, k, seq) in t.await.unwrap() {
            let first = *seq_of.entry((p, k)).or_insert(seq);
            assert_eq!(
                first, seq,
                "both copies of /race/{p} r{k} answered with one seq"
            );
        }
    }
    // The third copy, once every earlier segment is sealed.
    let filler: Vec<Value> = (0..40)
        .map(|i| json!({"type": "t.fill", "source": "/fill", "id": format!("f{i}")}))
        .collect();
    app.publish_batch(&filler).await;
    for p in 0..PAIRS {
        for k in [0, EACH / 2, EACH - 1] {
            let r = app.publish(&event(p, k)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["seq"].as_u64(), Some(seq_of[&(p, k)]));
        }
    }
    let all = app.read_all().await;
    let races = all.iter().filter(|(_, e)| e["type"] == "t.race").count() as u64;
    assert_eq!(races, PAIRS * EACH, "each id stored once");
    app.stop().await;
}

/// The sealed segments' key filter is saved at a clean stop, and the next
/// start loads it instead of reading the key tables of the segments it
/// holds: damage to a key table then goes unnoticed at start-up (it is not
/// read) and is found only when a start has to read it, once the saved
/// filter is gone. Either way a duplicate of the first event is still
/// found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_loads_the_saved_key_filter_instead_of_reading_key_tables() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let dir = app.stop().await;
    let filter = dir.path().join("keys.filter");
    assert!(filter.is_file(), "a clean stop saves the key filter");
    let idx = index_files(dir.path());
    // Damage is written from the intact bytes each time: whether or not
    // the monitor repaired the file in between, it is damaged afterwards.
    let intact = std::fs::read(&idx[0]).unwrap();
    let damage_keys = |p: &std::path::Path| {
        // The keys section is the file's end.
        let mut bytes = intact.clone();
        let at = bytes.len() - 20;
        bytes[at] ^= 0x04;
        std::fs::write(p, &bytes).unwrap();
    };
    let at_start = |alerts: Vec<Value>| -> Vec<Value> {
        alerts
            .into_iter()
            .filter(|a| {
                a["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("at start-up")
            })
            .collect()
    };
    let dup_of_first = json!({"type": "t.again", "source": "/src/1", "id": "e1"});

    damage_keys(&idx[0]);
    let app = start_app(dir, ARGS).await;
    let alerts = at_start(start_up_alerts(&app).await);
    assert!(
        alerts.is_empty(),
        "with the saved filter the key tables are not read: {alerts:#?}"
    );
    let dup = app.publish(&dup_of_first).await;
    assert_eq!(dup.status, 200, "{}", dup.text());
    assert_eq!(dup.json()["seq"], 1);
    let dir = app.stop().await;

    // Without it, the start reads every key table and finds the damage.
    std::fs::remove_file(&filter).unwrap();
    damage_keys(&idx[0]);
    let app = start_app(dir, ARGS).await;
    let alerts = at_start(start_up_alerts(&app).await);
    let file = format!("segments/{}", idx[0].file_name().unwrap().to_string_lossy());
    assert!(
        alerts
            .iter()
            .any(|a| a["file"] == file.as_str()
                && a["detail"].as_str().unwrap().contains("was damaged")),
        "{alerts:#?}"
    );
    let dup = app.publish(&dup_of_first).await;
    assert_eq!(dup.status, 200, "{}", dup.text());
    assert_eq!(dup.json()["seq"], 1);
    let dir = app.stop().await;
    assert!(
        dir.path().join("keys.filter").is_file(),
        "saved again at the stop"
    );
}

/// Start-up reads the manifest, the index files and the active segment,
/// never a sealed segment's records: a store whose oldest sealed segment
/// was overwritten while it was stopped (same length, every byte wrong)
/// starts and listens, and only after that does the integrity monitor's
/// first check find the damage and restore the segment from its backup.
/// Before index files, start-up scanned every sealed segment, so the
/// damage was found (and repaired) before the server listened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_does_not_read_sealed_segments() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let seg = sealed_segments(app.data_dir())[0].clone();
    crate::common::monitor::wait_backup_holding(&app, &seg).await;
    let dir = app.stop().await;
    let original = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, vec![b'#'; original.len()]).unwrap();
    let file = rel(&seg);

    let mut args = ARGS.to_vec();
    args.extend(["--monitor-interval", "0.2"]);
    let mut server = spawn_process(dir.path(), &args).await;
    wait_for_repair_alert(&server.api, &file, Duration::from_secs(20)).await;
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        original,
        "restored byte for byte"
    );
    assert_eq!(server.api.get("/health/ready").await.status, 200);
    server.terminate(Duration::from_secs(15)).await;
    let log = server.log();
    let listening = log
        .iter()
        .position(|l| l["message"] == "msgbus listening")
        .expect("a listening line");
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    let first_mention = log
        .iter()
        .position(|l| l.to_string().contains(&name))
        .expect("the damage is logged");
    assert!(
        listening < first_mention,
        "{file} was read before the server listened: {:#}",
        log[first_mention]
    );
}

/// The first check after a start hashes the sealed segments no faster than
/// `--monitor-read-rate`, so that on a large store it leaves the disk to
/// publishers and readers: the server is ready at once, and damage in the
/// newest sealed segment (hashed last) is found only once the older
/// segments and their index files have been read at that rate.
#[tokio::test]
async fn the_first_check_reads_at_the_monitor_read_rate() {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let segs = sealed_segments(app.data_dir());
    let newest = segs.last().unwrap().clone();
    crate::common::monitor::wait_backup_holding(&app, &newest).await;
    let dir = app.stop().await;
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let older: u64 = segs[..segs.len() - 1]
        .iter()
        .map(|s| size(s) + size(&index_file(s)))
        .sum();
    let original = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, vec![b'#'; original.len()]).unwrap();
    let file = rel(&newest);

    // Paced to read the older segments in about 3 s.
    let paced = Duration::from_secs(3);
    let rate = (older as f64 / paced.as_secs_f64()) as u64;
    let rate_arg = rate.to_string();
    let mut args = ARGS.to_vec();
    args.extend([
        "--monitor-interval",
        "0.2",
        "--monitor-read-rate",
        &rate_arg,
    ]);
    let started = std::time::Instant::now();
    let mut server = spawn_process(dir.path(), &args).await;
    assert_eq!(server.api.get("/health/ready").await.status, 200);
    wait_for_repair_alert(&server.api, &file, paced + Duration::from_secs(30)).await;
    let found_after = started.elapsed();
    assert!(
        found_after >= paced,
        "{file} was hashed {found_after:?} after the start; {older} bytes before it at {rate} bytes/s take {paced:?}"
    );
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        original,
        "restored byte for byte"
    );
    server.terminate(Duration::from_secs(15)).await;
}

/// A stopped store of 300 events whose newest backup holds every sealed
/// segment; the bytes of those segments, and the `--monitor-read-rate`
/// that makes the backup thread's check of that backup take a minute.
async fn backed_up_store() -> (DataDir, u64, String) {
    let app = start_app(DataDir::temp(), ARGS).await;
    fill(&app, 300).await;
    let segs = sealed_segments(app.data_dir());
    crate::common::monitor::wait_backup_holding(&app, segs.last().unwrap()).await;
    let dir = app.stop().await;
    let backed_up: u64 = segs
        .iter()
        .map(|s| std::fs::metadata(s).unwrap().len())
        .sum();
    (dir, backed_up, (backed_up / 60).max(1).to_string())
}

/// A stopping server does not wait for the backup thread's paced check of
/// the newest backup after a start: at 50 million events that check reads
/// 18 GB at `--monitor-read-rate` (minutes), and a server asked to stop
/// waited for all of it, past the time an orchestrator allows before it
/// kills the process. Here the check would take about a minute; the
/// server must be gone well before.
#[tokio::test]
async fn a_stop_does_not_wait_for_the_check_of_the_newest_backup() {
    let (dir, backed_up, rate_arg) = backed_up_store().await;
    let mut args = ARGS.to_vec();
    args.extend(["--monitor-read-rate", &rate_arg]);
    let mut server = spawn_process(dir.path(), &args).await;
    assert_eq!(server.api.get("/health/ready").await.status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    let status = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exits cleanly: {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "stopped {:?} after SIGTERM; the check of {backed_up} bytes at {rate_arg} bytes/s takes a minute",
        asked.elapsed()
    );
}

/// A restart soon after a backup does not read that backup again: the run
/// before saved which backup copies it hashed and when
/// (`backup-hashes.json`), and the start's check of the newest backup
/// passes over copies hashed within the last hour. Here that check,
/// paced, would read for a minute, and a backup asked for right after the
/// start waits behind it; it must come within seconds. With the saved
/// hashes deleted, the check reads again and the backup waits.
#[tokio::test]
async fn a_restart_soon_after_a_backup_does_not_read_it_again() {
    let (dir, backed_up, rate_arg) = backed_up_store().await;
    let saved = dir.path().join("backup-hashes.json");
    assert!(saved.is_file(), "the hashed copies are saved");
    let mut args = ARGS.to_vec();
    args.extend(["--monitor-read-rate", &rate_arg]);
    let backup_after_start = |saved_too: bool| {
        let (dir, args) = (dir.path().to_path_buf(), args.clone());
        async move {
            if !saved_too {
                std::fs::remove_file(dir.join("backup-hashes.json")).unwrap();
            }
            let mut server = spawn_process(&dir, &args).await;
            assert_eq!(server.api.get("/health/ready").await.status, 200);
            let asked = std::time::Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                server.api.post("/admin/backups", None),
            )
            .await;
            let took = asked.elapsed();
            if let Ok(r) = &r {
                assert_eq!(r.status, 201, "{}", r.text());
            }
            server.terminate(Duration::from_secs(30)).await;
            (r.is_ok(), took)
        }
    };
    let (done, took) = backup_after_start(true).await;
    assert!(
        done,
        "a backup right after a restart took {took:?}: the start read the newest backup ({backed_up} bytes at {rate_arg} bytes/s) again"
    );
    let (done, took) = backup_after_start(false).await;
    assert!(
        !done,
        "without the saved hashes the start checks the newest backup, and a backup waits ({took:?})"
    );
}

/// The sealed segments' key filter fills up as the store grows and is
/// rebuilt larger on a thread of its own while publishing goes on (with no
/// headroom here, many times over a few thousand events). Every key stays
/// exact: duplicates of events sealed before, during and after the
/// rebuilds answer 200 with their original seq, while running and after a
/// restart (which loads the saved filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_filter_is_rebuilt_larger_in_the_background_and_keeps_every_key() {
    const ARGS: &[&str] = &["--segment-bytes", "16KiB", "--key-filter-headroom", "0"];
    let app = start_app(DataDir::temp(), ARGS).await;
    let first = app.get_json("/stats").await["writer"]["key_filter_bytes"]
        .as_u64()
        .unwrap();
    fill(&app, 5000).await;
    let originals = app.read_all().await;
    // The last rebuild may still be running: wait for the counter.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = app.get_json("/stats").await;
        if stats["writer"]["key_filter_rebuilds"].as_u64().unwrap() >= 2 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key filter was not rebuilt: {}",
            stats["writer"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stats["writer"]["key_filter_bytes"].as_u64().unwrap() > first,
        "rebuilt larger: {first} -> {}",
        stats["writer"]
    );
    let mut app = app;
    for round in 0..2 {
        // Every key, in batches of duplicates.
        for from in (1..=5000u64).step_by(250) {
            let batch: Vec<Value> = (from..from + 250)
                .map(|k| json!({"type": "t.again", "source": format!("/src/{}", k % 4), "id": format!("e{k}")}))
                .collect();
            let r = app.post("/events/batch", Some(&json!(batch))).await;
            assert_eq!(r.status, 200, "round {round}: {}", r.text());
            let results = r.json()["results"].as_array().cloned().unwrap();
            for (k, res) in (from..).zip(&results) {
                let (seq, _) = &originals[(k - 1) as usize];
                assert_eq!(res["duplicate"], true, "round {round}, e{k}: {res}");
                assert_eq!(res["seq"], *seq, "round {round}, e{k}");
            }
        }
        app = app.restart(ARGS).await;
    }
    assert_eq!(app.read_all().await.len(), 5000, "nothing was stored twice");
    app.stop().await;
}

/// A publisher that sends a new type and source with every event (a
/// misconfigured client, or a hostile one): each sealed segment keeps only
/// the busiest names of its tables in memory and the rest on disk, so the
/// memory for names stays flat, while filters on a name only the disk
/// lists, `/stats` totals and duplicates stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_with_every_event_does_not_grow_memory() {
    let args = ["--segment-bytes", "2MiB"];
    let app = start_app(DataDir::temp(), &args).await;
    const N: u64 = 40_000;
    let source = |k: u64| format!("/hostile/{k}/{}", "s".repeat(24));
    for batch in 0..N / 1000 {
        let evs: Vec<Value> = (1..=1000)
            .map(|i| {
                let k = batch * 1000 + i;
                json!({"type": format!("t.{k}"), "source": source(k), "id": format!("e{k}")})
            })
            .collect();
        app.publish_batch(&evs).await;
    }
    // Then ordinary events, until the active segment holds only those.
    const FILLER: u64 = 20_000;
    for batch in 0..FILLER / 1000 {
        let evs: Vec<Value> = (1..=1000)
            .map(
                |i| json!({"type": "t.filler", "source": "/filler", "id": format!("f{batch}-{i}")}),
            )
            .collect();
        app.publish_batch(&evs).await;
    }
    let duplicate_of =
        |k: u64| json!({"type": "t.again", "source": source(k), "id": format!("e{k}")});
    let mut app = app;
    for round in ["running", "after a restart"] {
        let stats = app.get_json("/stats").await;
        let sealed = stats["store"]["indexed_segments"].as_u64().unwrap();
        let interned = stats["store"]["interned_bytes"].as_u64().unwrap();
        let in_memory = stats["store"]["memory_entries"].as_u64().unwrap();
        crate::common::note(format!(
            "{round}: {sealed} sealed segments, {in_memory} events in memory, interned bytes {interned}"
        ));
        assert!(
            in_memory < FILLER,
            "{round}: every event with a new source is in a sealed segment"
        );
        // A sealed segment (about 13,000 events here) keeps at most 256
        // names of each table; whole tables would take over 100 bytes for
        // each of the 40,000 sealed events' two names.
        assert!(
            interned < N * 40,
            "{round}: {interned} interned bytes for {N} events with new names"
        );
        assert_eq!(stats["store"]["distinct"]["sources"], N + 1, "{round}");
        let by_source = stats["events"]["by_source"].as_object().unwrap();
        assert_eq!(
            by_source.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
            N + FILLER,
            "{round}: {by_source:?}"
        );
        assert_eq!(by_source["/filler"], FILLER, "{round}");
        for k in [2u64, 7, 3_001, 12_345, N] {
            let seqs = read_filtered(&app, &format!("source={}", source(k)), N + FILLER).await;
            assert_eq!(seqs, vec![k], "{round}: source of event {k}");
            let seqs = read_filtered(&app, &format!("type=t.{k}"), N + FILLER).await;
            assert_eq!(seqs, vec![k], "{round}: type of event {k}");
            let dup = app.publish(&duplicate_of(k)).await;
            assert_eq!(dup.status, 200, "{round}: e{k}: {}", dup.text());
            let body = dup.json();
            assert_eq!(body["seq"], k, "{round}: e{k}");
            assert_eq!(
                body["type"],
                format!("t.{k}"),
                "{round}: the original's type"
            );
        }
        app = app.restart(&args).await;
    }
    assert_eq!(
        app.read_all().await.len() as u64,
        N + FILLER,
        "nothing stored twice"
    );
    app.stop().await;
}
