//! `GET /events/stream`: Server-Sent Events round trip with filters,
//! resuming with Last-Event-ID (also across a restart), a stalled
//! subscriber, heartbeats, the subscriber limit and shutdown.

use std::time::{Duration, Instant};

use crate::common::events::{event, events};
use crate::common::http::Api;
use crate::common::server::{on_both, spawn_app_with, TestApp};
use crate::common::sse::SseReader;

const SEC: Duration = Duration::from_secs(1);

async fn round_trip_with_filters_sends_the_stored_json_live(s: TestApp) {
    let mut batch = Vec::new();
    for n in 1..=30u64 {
        let ty = ["agent.task.created", "agent.task.done", "audit.login"][(n % 3) as usize];
        let source = if n % 2 == 0 { "/a" } else { "/b" };
        batch.push(event(n, ty, source, 10));
    }
    s.publish_batch(&batch).await;

    let url = "/events/stream?type_prefix=agent.task.&source=/a";
    let mut sse = SseReader::open(&s, url, None).await;
    let first = sse.next(5 * SEC).await.unwrap();
    assert_eq!(first.retry, Some(1000), "retry: comes first, once");

    let expected: Vec<u64> = (1..=30u64).filter(|n| n % 3 != 2 && n % 2 == 0).collect();
    let got = sse.take_seqs(expected.len()).await;
    assert_eq!(got, expected);

    // data: is exactly the JSON of GET /events/{seq}.
    let one = s.get_json(&format!("/events/{}", expected[0])).await;
    let mut again = SseReader::open(&s, url, None).await;
    let m = again.next_event(5 * SEC).await.unwrap();
    assert_eq!(m.json(), one);
    assert_eq!(m.json()["event"]["source"], "/a");

    // Live: an event published now arrives; one the filter rejects does not.
    s.publish_batch(&[
        event(100, "audit.login", "/a", 0),
        event(101, "agent.task.done", "/b", 0),
        event(102, "agent.task.done", "/a", 0),
    ])
    .await;
    let live = sse.next_event(5 * SEC).await.unwrap();
    assert_eq!(live.id, Some(33));
    assert_eq!(live.json()["event"]["id"], "e-102");

    // Exact type and subject filters, and after=.
    let url = "/events/stream?type=audit.login&subject=s2&after=5";
    let mut sse = SseReader::open(&s, url, None).await;
    let got = sse.take_seqs(8).await;
    assert_eq!(got, vec![8, 11, 14, 17, 20, 23, 26, 29]);
    assert!(sse.next_event(Duration::from_millis(300)).await.is_none());

    // after=latest: only what is published from now on.
    let mut tail = SseReader::open(&s, "/events/stream?after=latest", None).await;
    s.publish_batch(&events(200, 1, 0)).await;
    assert_eq!(tail.take_seqs(1).await, vec![34]);

    // Bad parameters are 400 problems.
    for (q, id) in [("?typ=x", None), ("?after=-1", None), ("", Some("abc"))] {
        let mut req = s.client.get(s.url(&format!("/events/stream{q}")));
        if let Some(id) = id {
            req = req.header("Last-Event-ID", id);
        }
        let res = s.send(req).await;
        assert_eq!(res.status, 400, "{q} {id:?}");
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
        res.assert_problem(400);
    }
    s.stop().await;
}

/// Reads `n` seqs, then drops the connection.
async fn read_then_cut(s: &Api, last: Option<u64>, n: usize) -> Vec<u64> {
    let mut sse = SseReader::open(s, "/events/stream", last).await;
    sse.take_seqs(n).await
}

async fn reconnect_with_last_event_id_gets_every_event_once_across_a_restart(s: TestApp) {
    let mut received = Vec::new();

    // Publish 1..=300 in the background while a client follows the stream
    // and is cut off three times, once with a server restart in between.
    let publisher = {
        let api = s.api.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                api.publish_batch(&events(i * 10 + 1, 10, 50)).await;
            }
        })
    };
    received.extend(read_then_cut(&s, None, 70).await);
    received.extend(read_then_cut(&s, received.last().copied(), 80).await);
    publisher.await.unwrap();
    received.extend(read_then_cut(&s, received.last().copied(), 50).await);
    let s = s.restart(&[]).await;
    let publisher = {
        let api = s.api.clone();
        tokio::spawn(async move {
            for i in 30..40 {
                api.publish_batch(&events(i * 10 + 1, 10, 50)).await;
            }
        })
    };
    let mut sse = SseReader::open(
        &s,
        "/events/stream?after=1", // Last-Event-ID wins over after=
        received.last().copied(),
    )
    .await;
    received.extend(sse.take_seqs(400 - received.len()).await);
    publisher.await.unwrap();

    assert_eq!(received, (1..=400).collect::<Vec<u64>>());
    assert!(
        sse.next_event(Duration::from_millis(300)).await.is_none(),
        "nothing after the last published event"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_never_slows_publishing_and_catches_up_completely() {
    let s = spawn_app_with(&["--segment-bytes", "1MiB"]).await;
    const TOTAL: u64 = 4000;

    // The stalled one reads its first message, then nothing for a while.
    let mut stalled = SseReader::open(&s, "/events/stream", None).await;
    assert!(stalled.next(5 * SEC).await.unwrap().retry.is_some());
    let mut active = SseReader::open(&s, "/events/stream", None).await;
    let follower = tokio::spawn(async move { active.take_seqs(TOTAL as usize).await });

    // ~8 MB of events: far more than the socket buffers of the stalled one.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..(TOTAL / 100) {
        let t = Instant::now();
        s.publish_batch(&events(i * 100 + 1, 100, 2000)).await;
        slowest = slowest.max(t.elapsed());
    }
    let publishing = started.elapsed();
    assert!(
        slowest < Duration::from_secs(5),
        "a batch took {slowest:?} while a subscriber was stalled"
    );
    let stats = s.get_json("/stats").await;
    assert_eq!(stats["events"]["last_seq"], TOTAL);

    let followed = follower.await.unwrap();
    assert_eq!(followed, (1..=TOTAL).collect::<Vec<u64>>());

    // The stalled subscriber now reads everything, from the store.
    let caught_up = stalled.take_seqs(TOTAL as usize).await;
    assert_eq!(caught_up, (1..=TOTAL).collect::<Vec<u64>>());
    eprintln!("published {TOTAL} events in {publishing:?}; slowest batch {slowest:?}");
    s.stop().await;
}

async fn idle_streams_get_heartbeats(s: TestApp) {
    let mut sse = SseReader::open(&s, "/events/stream", None).await;
    assert!(sse.next(5 * SEC).await.unwrap().retry.is_some());
    assert!(sse.next(Duration::from_millis(900)).await.is_none());
    assert!(sse.comments >= 2, "saw {} heartbeats", sse.comments);
    assert!(!sse.ended);
    s.stop().await;
}

async fn subscribers_are_capped_with_a_503_problem(s: TestApp) {
    let url = "/events/stream";
    let a = SseReader::open(&s, url, None).await;
    let _b = SseReader::open(&s, url, None).await;
    let Err(res) = SseReader::connect(&s, url, None).await else {
        panic!("a third subscriber was let in");
    };
    assert!(res.headers.contains_key("retry-after"));
    res.assert_problem_type(503, "too-many-subscribers", "a third subscriber");

    // A closed stream frees its place.
    drop(a);
    let deadline = Instant::now() + 5 * SEC;
    loop {
        if SseReader::connect(&s, url, None).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

async fn streams_end_cleanly_on_shutdown(s: TestApp) {
    s.publish_batch(&events(1, 3, 0)).await;
    let mut sse = SseReader::open(&s, "/events/stream", None).await;
    assert_eq!(sse.take_seqs(3).await, vec![1, 2, 3]);
    let started = Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for the stream",
        started.elapsed()
    );
    assert!(sse.next(5 * SEC).await.is_none());
    assert!(sse.ended, "the stream ended instead of hanging");
}

on_both!(
    round_trip_with_filters_sends_the_stored_json_live,
    reconnect_with_last_event_id_gets_every_event_once_across_a_restart,
    idle_streams_get_heartbeats("--sse-heartbeat", "200ms"),
    subscribers_are_capped_with_a_503_problem("--max-subscribers", "2"),
    streams_end_cleanly_on_shutdown("--shutdown-timeout", "20s"),
);
