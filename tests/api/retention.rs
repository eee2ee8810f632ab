//! Retention: old sealed segments disappear, the store stays bounded,
//! positions before the horizon answer 410 naming the oldest seq (reads,
//! streams, consumers), and nothing inside the horizon is lost.

use std::time::{Duration, Instant};

use crate::common::events::events;
use crate::common::files::segment_files;
use crate::common::http::{Api, Reply};
use crate::common::server::{spawn_app_with, start_app};
use crate::common::sse::SseReader;
use serde_json::json;

const SMALL: &[&str] = &["--segment-bytes", "4KiB", "--retention-max-events", "1000"];

/// Reads every event after `after` page by page; returns their seqs.
async fn read_all(s: &Api, mut after: u64) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let page = s
            .get_json(&format!("/events?after={after}&limit=1000"))
            .await;
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
async fn writer_barrier(s: &Api) {
    let res = s
        .put("/consumers/barrier", &json!({"start": "latest"}))
        .await;
    assert!((200..300).contains(&res.status), "{}", res.text());
}

/// A 410 gone problem naming `oldest` as the oldest retained seq.
fn assert_gone(res: &Reply, oldest: u64) {
    let p = res.assert_problem_type(410, "gone", "a position before the horizon");
    assert_eq!(p["oldest_seq"], oldest, "{p}");
}

#[tokio::test]
async fn max_events_bounds_the_store_and_answers_410_before_the_horizon() {
    let s = spawn_app_with(SMALL).await;
    // A consumer that never acks, from before any event.
    assert_eq!(s.put("/consumers/sleepy", &json!({})).await.status, 201);

    for i in 0..50 {
        s.publish_batch(&events(i * 100 + 1, 100, 40)).await;
    }
    writer_barrier(&s).await;
    let stats = s.get_json("/stats").await;
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
    let on_disk: u64 = segment_files(s.data_dir())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, bytes, "deleted segments are gone from disk");
    assert_eq!(
        stats["events"]["by_type"]["t.x"], kept,
        "per-type counts cover the retained events"
    );

    // Before the horizon: 410 naming the oldest seq, never a silent jump.
    assert_gone(&s.get("/events?after=5").await, oldest);
    assert_gone(&s.get("/events/3").await, oldest);
    for (path, last_event_id) in [
        ("/events/stream?after=5", None),
        ("/events/stream", Some(5)),
    ] {
        let Err(res) = SseReader::connect(&s, path, last_event_id).await else {
            panic!("{path} with Last-Event-ID {last_event_id:?} opened a stream");
        };
        assert_gone(&res, oldest);
    }
    assert_gone(&s.get("/consumers/sleepy/events").await, oldest);

    // after=0 (or none) means "from the oldest retained event".
    let page = s.get_json("/events?after=0&limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    let page = s.get_json("/events?limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    let mut sse = SseReader::open(&s, "/events/stream", None).await;
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
        .post("/consumers/sleepy/ack", Some(&json!({"seq": oldest - 1})))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let page = s.get_json("/consumers/sleepy/events?limit=1").await;
    assert_eq!(page["events"][0]["seq"], oldest);
    let dir = s.stop().await;

    // A crash between the manifest update and the file removal leaves a
    // segment the manifest no longer lists: the next start removes it.
    let leftover = dir.path().join("segments/00000000000000000001.jsonl");
    std::fs::write(&leftover, b"{\"seq\":1}\n").unwrap();

    // After a restart the horizon holds and reads still work.
    let s = start_app(dir, SMALL).await;
    assert!(!leftover.exists(), "the leftover segment was removed");
    let stats = s.get_json("/stats").await;
    assert_eq!(stats["retention"]["oldest_seq"], oldest);
    assert_gone(&s.get("/events?after=5").await, oldest);
    assert_eq!(read_all(&s, 0).await, (oldest..=5000).collect::<Vec<u64>>());
    s.stop().await;
}

#[tokio::test]
async fn a_lagging_stream_gets_gone_instead_of_a_silent_jump() {
    let s = spawn_app_with(SMALL).await;
    s.publish_batch(&events(1, 10, 40)).await;
    // Connected at seq 0, then stalled while retention deletes far past it.
    let mut sse = SseReader::open(&s, "/events/stream", None).await;
    assert!(sse
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .retry
        .is_some());
    // 12 MB: more than the socket buffers can hold for the stalled client.
    for i in 0..30 {
        s.publish_batch(&events(i * 100 + 100, 100, 4000)).await;
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
    let s = spawn_app_with(&["--segment-bytes", "4KiB", "--retention-max-bytes", "32KiB"]).await;
    for i in 0..10 {
        s.publish_batch(&events(i * 100 + 1, 100, 40)).await;
    }
    writer_barrier(&s).await;
    let stats = s.get_json("/stats").await;
    let bytes = stats["store"]["bytes"].as_u64().unwrap();
    let largest = segment_files(s.data_dir())
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
    let s = spawn_app_with(&["--segment-bytes", "4KiB", "--retention-max-age", "1s"]).await;
    for i in 0..10 {
        s.publish_batch(&events(i * 10 + 1, 10, 40)).await;
    }
    let files = segment_files(s.data_dir()).len();
    assert!(files > 2);
    // Publishing may take longer than the age limit on a busy machine, so
    // some segments may be gone already: wait for the files themselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = s.get_json("/stats").await;
        let deleted = stats["retention"]["segments_deleted"].as_u64().unwrap() as usize;
        if segment_files(s.data_dir()).len() == 1 && deleted >= files - 1 {
            assert_eq!(stats["retention"]["max_age_seconds"], 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old segments were kept (only the active segment should remain): {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}
