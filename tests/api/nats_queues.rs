//! Work queues on the NATS backend: one queue served by two msgbus
//! instances (leases shared through JetStream, acks through either), and
//! `"ordering": "subject"`, which has no JetStream equivalent, answering
//! 501. The backend-neutral queue tests run on both backends in
//! `queues.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::queues::{create_queue, events};
use crate::common::http::Api;
use crate::common::server::{spawn_nats, spawn_on, Backend};

/// One delivery a worker got: the seq, its attempt, when the fetch that
/// brought it answered and when the worker's ack was answered.
#[derive(Debug, Clone)]
struct Held {
    worker: usize,
    seq: u64,
    attempt: u64,
    from: Instant,
    until: Instant,
    acked: bool,
}

async fn wait_for_consumer(api: &Api, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(&format!("/consumers/{name}")).await.status != 200 {
        assert!(Instant::now() < deadline, "the instance never saw {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_queue_and_never_lease_an_event_twice_at_once() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;
    let lease = Duration::from_secs(5);
    create_queue(
        &a,
        "work",
        json!({"lease": lease.as_secs(), "max_deliver": 10}),
    )
    .await;
    wait_for_consumer(&b, "work").await;
    let total = 200u64;
    for chunk in 0..4 {
        a.publish_batch(&events(chunk * 50 + 1, 50, |n| format!("s{n}")))
            .await;
    }
    let apis = [a.api.clone(), b.api.clone()];
    let log: Arc<Mutex<Vec<Held>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..2usize {
        let apis = apis.clone();
        let log = log.clone();
        workers.push(tokio::spawn(async move {
            let own = &apis[w];
            let other = &apis[1 - w];
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut idle = 0;
            while Instant::now() < deadline && idle < 3 {
                let r = own
                    .post("/consumers/work/fetch", Some(&json!({"max": 7, "wait": 1})))
                    .await;
                assert_eq!(
                    r.status,
                    200,
                    "fetch through worker {w}'s instance: {}",
                    r.text()
                );
                let from = Instant::now();
                let got = r.json()["events"].as_array().unwrap().clone();
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for (i, e) in got.iter().enumerate() {
                    let seq = e["seq"].as_u64().unwrap();
                    assert_eq!(e["event"]["data"]["n"], seq, "the event rides along");
                    // Every other ack goes through the other instance.
                    let via = if (seq + i as u64).is_multiple_of(2) {
                        own
                    } else {
                        other
                    };
                    let r = via
                        .post("/consumers/work/ack", Some(&json!({"seq": seq})))
                        .await;
                    let until = Instant::now();
                    assert!(
                        r.status == 200 || r.status == 409,
                        "ack of {seq}: {} {}",
                        r.status,
                        r.text()
                    );
                    log.lock().unwrap().push(Held {
                        worker: w,
                        seq,
                        attempt: e["attempt"].as_u64().unwrap(),
                        from,
                        until,
                        acked: r.status == 200,
                    });
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("a worker panicked");
    }
    let log = log.lock().unwrap().clone();
    let mut by_seq: BTreeMap<u64, Vec<Held>> = BTreeMap::new();
    for h in log {
        by_seq.entry(h.seq).or_default().push(h);
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "every event was delivered"
    );
    let mut per_worker = [0u64; 2];
    for (seq, held) in &by_seq {
        let acks = held.iter().filter(|h| h.acked).count();
        assert_eq!(acks, 1, "seq {seq} acked exactly once: {held:?}");
        per_worker[held[0].worker] += 1;
        // A second delivery only after the first lease ran out, to a later
        // attempt: never two leases of one event at once.
        let mut sorted = held.clone();
        sorted.sort_by_key(|h| h.attempt);
        for pair in sorted.windows(2) {
            assert!(
                pair[1].attempt > pair[0].attempt,
                "seq {seq} delivered twice as the same attempt: {held:?}"
            );
            assert!(
                pair[1].from + Duration::from_millis(200) >= pair[0].from + lease
                    || pair[0].until <= pair[1].from,
                "seq {seq} leased to two workers at once: {held:?}"
            );
        }
    }
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers got events: {per_worker:?}"
    );
    // Nothing is left, and either instance says so.
    for api in &apis {
        let r = api
            .post("/consumers/work/fetch", Some(&json!({"max": 10})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["events"], json!([]));
    }
    // A fetch through A, an ack through B of the same event; then it is
    // done for both.
    a.publish_batch(&events(total + 1, 1, |_| "last".into()))
        .await;
    let r = a
        .post("/consumers/work/fetch", Some(&json!({"max": 1, "wait": 5})))
        .await;
    let got = r.json()["events"].clone();
    assert_eq!(got[0]["seq"], total + 1, "{got}");
    let r = b
        .post(
            "/consumers/work/extend",
            Some(&json!({"seq": total + 1, "lease": got[0]["lease"]})),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "an extend through B of A's lease: {}",
        r.text()
    );
    let r = b
        .post("/consumers/work/ack", Some(&json!({"seq": total + 1})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b
        .post("/consumers/work/ack", Some(&json!({"seq": total + 1})))
        .await;
    r.assert_problem_type(409, "already-acknowledged", "a second ack through B");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = a.get_json("/consumers/work").await;
        if c["queue"]["ack_floor"] == total + 1 {
            assert_eq!(c["queue"]["leased"], 0, "{c}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's numbers never caught up: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = a
        .post("/consumers/work/ack", Some(&json!({"seq": total + 1})))
        .await;
    r.assert_problem_type(409, "already-acknowledged", "an ack through A of B's ack");
    // Deleting the consumer through B removes it for A too.
    assert_eq!(b.delete("/consumers/work").await.status, 204);
}

#[tokio::test]
async fn subject_ordering_answers_501_on_nats() {
    let Some(app) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let r = app
        .put(
            "/consumers/ord",
            &json!({"mode": "queue", "ordering": "subject"}),
        )
        .await;
    let p = r.assert_problem(501);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("ordering"),
        "{p}"
    );
    assert_eq!(
        app.get("/consumers/ord").await.status,
        404,
        "nothing created"
    );
    app.stop().await;
}
