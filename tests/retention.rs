//! Retention: old sealed segments disappear, the store stays bounded,
//! positions before the horizon answer 410 naming the oldest seq (reads,
//! streams, consumers), and nothing inside the horizon is lost.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{events, segment_files, Server, SseReader};

const SMALL: &[&str] = &["--segment-bytes", "4KiB", "--retention-max-events", "1000"];

/// Reads every event after `after` page by page; returns their seqs.
async fn read_all(s: &Server, mut after: u64) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let (status, page) = s.get(&format!("/events?after={after}&limit=1000")).await;
        assert_eq!(status, 200, "{page}");
        let evs = page["events"].as_array().unwrap();
        if evs.is_empty() {
            return out;
        }
        out.extend(evs.iter().map(|e| e["seq"].as_u64().unwrap()));
        after = page["next_after"].as_u64().unwrap();
    }
}

/// Returns once the writer has run the retention pass that follows every
/// publish answered so far (publishes are answered before it runs).
async fn writer_barrier(s: &Server) {
    let res = s
        .client
        .put(s.url("/consumers/barrier"))
        .json(&json!({"start": "latest"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
}

fn assert_gone(status: u16, p: &Value, oldest: u64) {
    assert_eq!(status, 410, "{p}");
    assert_eq!(p["type"], "urn:msgbus:problem:gone");
    assert_eq!(p["oldest_seq"], oldest, "{p}");
}

#[tokio::test]
async fn max_events_bounds_the_store_and_answers_410_before_the_horizon() {
    let dir = support::tempdir();
    let s = Server::start(dir.path(), SMALL).await;
    // A consumer that never acks, from before any event.
    let res = s
        .client
        .put(s.url("/consumers/sleepy"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    for i in 0..50 {
        s.publish(&events(i * 100 + 1, 100, 40)).await;
    }
    writer_barrier(&s).await;
    let (_, stats) = s.get("/stats").await;
    let oldest = stats["retention"]["oldest_seq"].as_u64().unwrap();
    assert!(oldest > 1, "{stats}");
    assert_eq!(stats["events"]["first_seq"], oldest);
    assert_eq!(stats["events"]["last_seq"], 5000);
    let kept = 5000 - oldest + 1;
    // Segments of 100 events here: exactly the newest 1000 remain.
    assert_eq!(kept, 1000, "kept {kept} events");
    assert!(stats["retention"]["bytes_reclaimed"].as_u64().unwrap() > 0);
    assert_eq!(
        stats["retention"]["events_deleted"].as_u64().unwrap(),
        oldest - 1
    );
    // The store's size is bounded: it holds about a fifth of what was
    // written, and retention says it reclaimed the rest.
    let bytes = stats["store"]["bytes"].as_u64().unwrap();
    let reclaimed = stats["retention"]["bytes_reclaimed"].as_u64().unwrap();
    assert!(
        reclaimed > 3 * bytes,
        "kept {bytes} bytes, reclaimed {reclaimed}"
    );
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, bytes, "deleted segments are gone from disk");
    assert_eq!(
        stats["events"]["by_type"]["t.x"], kept,
        "per-type counts cover the retained events"
    );

    // Before the horizon: 410 naming the oldest seq, never a silent jump.
    let (status, p) = s.get("/events?after=5").await;
    assert_gone(status, &p, oldest);
    let (status, p) = s.get("/events/3").await;
    assert_gone(status, &p, oldest);
    let res = SseReader::request(&s.client, &s.url("/events/stream?after=5"), None).await;
    assert_eq!(res.status(), 410);
    let res = SseReader::request(&s.client, &s.url("/events/stream"), Some(5)).await;
    assert_eq!(res.status(), 410);
    let (status, p) = s.get("/consumers/sleepy/events").await;
    assert_gone(status, &p, oldest);

    // after=0 (or none) means "from the oldest retained event".
    let (_, page) = s.get("/events?after=0&limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    let (_, page) = s.get("/events?limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    let mut sse = SseReader::open(&s.client, &s.url("/events/stream"), None).await;
    assert_eq!(sse.take_seqs(1).await, vec![oldest]);

    // Nothing inside the horizon is lost.
    assert_eq!(read_all(&s, 0).await, (oldest..=5000).collect::<Vec<u64>>());
    assert_eq!(
        read_all(&s, oldest - 1).await.len() as u64,
        kept,
        "after = oldest - 1 is not gone"
    );

    // The consumer accepts the loss by acking oldest - 1, then reads on.
    let res = s
        .client
        .post(s.url("/consumers/sleepy/ack"))
        .json(&json!({"seq": oldest - 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, page) = s.get("/consumers/sleepy/events?limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    s.stop().await;

    // A crash between the manifest update and the file removal leaves a
    // segment the manifest no longer lists: the next start removes it.
    let leftover = dir.path().join("segments/00000000000000000001.jsonl");
    std::fs::write(&leftover, b"{\"seq\":1}\n").unwrap();

    // After a restart the horizon holds and reads still work.
    let s = Server::start(dir.path(), SMALL).await;
    assert!(!leftover.exists(), "the leftover segment was removed");
    let (_, stats) = s.get("/stats").await;
    assert_eq!(stats["retention"]["oldest_seq"], oldest);
    let (status, p) = s.get("/events?after=5").await;
    assert_gone(status, &p, oldest);
    assert_eq!(read_all(&s, 0).await, (oldest..=5000).collect::<Vec<u64>>());
    s.stop().await;
}

#[tokio::test]
async fn a_lagging_stream_gets_gone_instead_of_a_silent_jump() {
    let dir = support::tempdir();
    let s = Server::start(dir.path(), SMALL).await;
    s.publish(&events(1, 10, 40)).await;
    // Connected at seq 0, then stalled while retention deletes far past it.
    let mut sse = SseReader::open(&s.client, &s.url("/events/stream"), None).await;
    assert!(sse
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .retry
        .is_some());
    // 12 MB: more than the socket buffers can hold for the stalled client.
    for i in 0..30 {
        s.publish(&events(i * 100 + 100, 100, 4000)).await;
    }
    // Whatever it still receives is gapless from 1, and if it cannot go on
    // it is told where the store now starts, then the stream ends.
    let mut expect = 1;
    loop {
        let m = sse
            .next_event(Duration::from_secs(20))
            .await
            .expect("the stream either continues or says gone");
        if m.event.as_deref() == Some("gone") {
            let p = m.json();
            assert_eq!(p["status"], 410);
            let oldest = p["oldest_seq"].as_u64().unwrap();
            assert!(oldest > expect, "gone names a seq past what was sent");
            eprintln!("stream sent 1..{} then gone at oldest {oldest}", expect - 1);
            assert!(sse.next(Duration::from_secs(5)).await.is_none());
            assert!(sse.ended);
            break;
        }
        assert_eq!(m.id, Some(expect), "no gap, no jump");
        expect += 1;
        if expect > 3010 {
            panic!("the subscriber was never cut off by retention");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn max_bytes_and_max_age_delete_old_segments() {
    let dir = support::tempdir();
    let s = Server::start(
        dir.path(),
        &["--segment-bytes", "4KiB", "--retention-max-bytes", "32KiB"],
    )
    .await;
    for i in 0..10 {
        s.publish(&events(i * 100 + 1, 100, 40)).await;
    }
    writer_barrier(&s).await;
    let (_, stats) = s.get("/stats").await;
    let bytes = stats["store"]["bytes"].as_u64().unwrap();
    let largest = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    assert!(
        (32 << 10..(32 << 10) + largest).contains(&bytes),
        "store holds {bytes} bytes; segments are up to {largest}"
    );
    assert!(stats["retention"]["segments_deleted"].as_u64().unwrap() >= 5);
    s.stop().await;

    // An idle store: segments older than the age limit go without any
    // new publish (the writer is ticked).
    let dir = support::tempdir();
    let s = Server::start(
        dir.path(),
        &["--segment-bytes", "4KiB", "--retention-max-age", "1s"],
    )
    .await;
    for i in 0..10 {
        s.publish(&events(i * 10 + 1, 10, 40)).await;
    }
    let files = segment_files(dir.path()).len();
    assert!(files > 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = s.get("/stats").await;
        if stats["retention"]["segments_deleted"].as_u64().unwrap() as usize == files - 1 {
            assert_eq!(stats["retention"]["max_age_seconds"], 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "old segments were kept: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the active segment remains"
    );
    s.stop().await;
}
