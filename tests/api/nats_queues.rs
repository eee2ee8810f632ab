//! Work queues on the NATS backend: one queue served by two msgbus
//! instances (leases shared through JetStream, acks through either), and
//! an `"ordering": "subject"` queue served by two; a dead letter made
//! while no instance ran, recorded once at the next start. The backend-neutral queue tests run on both backends in
//! `queues.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::queues::{
    assert_acked_once_in_subject_order, create_queue, events, fetch, ordered_subject, post_ok,
    seqs, work_in_subject_order,
};
use crate::common::http::Api;
use crate::common::nats::js_request;
use crate::common::server::{spawn_nats, spawn_on, spawn_on_own_nats, Backend};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_keep_one_event_per_subject_in_flight_in_seq_order() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;
    create_queue(&a, "ord", json!({"ordering": "subject"})).await;
    wait_for_consumer(&b, "ord").await;
    let total = 240;
    for chunk in 0..4 {
        a.publish_batch(&events(chunk * 60 + 1, 60, ordered_subject))
            .await;
    }
    // Eight workers, four fetching through each instance and acking
    // through the other: the window and its puller mark are shared.
    let acked = work_in_subject_order(&[a.api.clone(), b.api.clone()], "ord", 8).await;
    assert_acked_once_in_subject_order(acked, total);
    for api in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = api.get_json("/consumers/ord").await;
            if c["queue"]["ack_floor"] == total && c["queue"]["leased"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{c}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    b.stop().await;
    a.stop().await;
}

/// A fetch that pulled an ordered queue's events and died before recording
/// them must not let a later event of their subject go first. The test
/// plays that fetch itself, through the NATS protocol: a pull of seq 1
/// from the queue's JetStream consumer, never acked, and the `puller`
/// mark it held left lapsed in the queue's ledger.
#[tokio::test]
async fn an_ordered_queue_waits_for_the_events_a_lost_pull_left() {
    let Some(app) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = app.nats.clone().expect("a NATS-backed app");
    let addr: std::net::SocketAddr = target
        .url
        .trim_start_matches("nats://")
        .parse()
        .expect("nats://host:port");
    create_queue(&app, "ord", json!({"ordering": "subject", "lease": 2})).await;
    let subject = |n: u64| (if n == 5 { "b" } else { "a" }).to_string();
    app.publish_batch(&events(1, 5, subject)).await;
    let lost = js_request(
        addr,
        &format!("$JS.API.CONSUMER.MSG.NEXT.{}.msgbus_q_ord", target.stream),
        &json!({"batch": 1, "no_wait": true}),
    )
    .await
    .expect("a pulled event");
    assert_eq!(lost["data"]["n"], 1, "{lost}");
    let key: String = "ord".bytes().map(|b| format!("{b:02x}")).collect();
    let ack = js_request(
        addr,
        &format!("$KV.{}_QUEUES.{key}", target.stream),
        &json!({"puller": {"id": "a fetch that died", "until_ms": 0}}),
    )
    .await
    .expect("the ledger written");
    assert!(ack["seq"].as_u64().is_some(), "{ack}");
    // Seq 1 may be anywhere: nothing after it goes, not even 5 (another
    // subject), until JetStream delivers it again (its AckWait is the
    // 2-second lease).
    let started = Instant::now();
    assert_eq!(seqs(&fetch(&app, "ord", 10, 0).await), Vec::<u64>::new());
    let got = fetch(&app, "ord", 10, 8).await;
    assert_eq!(seqs(&got), vec![1, 5], "1 first, 2 behind it");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(got[0]["attempt"], 1, "its first delivery to a worker");
    for (seq, next) in [(1, vec![2]), (2, vec![3]), (3, vec![4])] {
        post_ok(&app, "/consumers/ord/ack", json!({ "seq": seq })).await;
        assert_eq!(seqs(&fetch(&app, "ord", 10, 2).await), next);
    }
    let acked = post_ok(&app, "/consumers/ord/ack", json!({"seqs": [4, 5]})).await;
    assert_eq!(acked["ack_floor"], 5);
    app.stop().await;
}

/// The seqs `GET /consumers/{name}/dead` lists.
async fn dead_seqs(api: &Api, name: &str) -> Vec<u64> {
    let dead = api.get_json(&format!("/consumers/{name}/dead")).await;
    dead["dead"]
        .as_array()
        .unwrap_or_else(|| panic!("{dead}"))
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect()
}

/// An event's last lease runs out while no msgbus instance runs, so no
/// instance hears nats-server's MAX_DELIVERIES advisory as it is sent.
/// The next instance to start still lists the dead letter (the advisory
/// was kept by the advisory stream), exactly once although two instances
/// replay it, and it can be redriven; after the redrive, a start that
/// replays the advisory again does not list it again. Needs nats-server
/// 2.10+: 2.9 only notices an exhausted event while a fetch waits, which
/// takes a running instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_made_while_no_instance_runs_is_listed_once_after_a_start() {
    let Some((server, app)) = spawn_on_own_nats((2, 10, 0), &[]).await else {
        return;
    };
    let target = app.nats.clone().expect("a NATS-backed server");
    create_queue(&app, "jobs", json!({"lease": 1, "max_deliver": 1})).await;
    app.publish_batch(&events(1, 2, |n| format!("s{n}"))).await;
    let r = app
        .post("/consumers/jobs/fetch", Some(&json!({"max": 2, "wait": 5})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json()["events"].clone();
    assert_eq!(got.as_array().unwrap().len(), 2, "{got}");
    let r = app
        .post("/consumers/jobs/ack", Some(&json!({"seq": 2})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(app.stop().await);

    // Seq 1's only lease runs out with no instance running: the server
    // drops it and sends the advisory, which the advisory stream keeps.
    let advisories = format!("$JS.API.STREAM.INFO.{}_DEAD", target.stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = js_request(server.addr(), &advisories, &json!({})).await;
        let kept = info
            .as_ref()
            .and_then(|i| i["state"]["messages"].as_u64())
            .unwrap_or(0);
        if kept == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no advisory was kept while no instance ran: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let a = spawn_nats(&target, &[]).await;
    let b = spawn_nats(&target, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while dead_seqs(&a, "jobs").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead letter was never listed after the start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both instances have replayed the advisory by now (each lists it).
    let deadline = Instant::now() + Duration::from_secs(15);
    while dead_seqs(&b, "jobs").await.is_empty() {
        assert!(Instant::now() < deadline, "B never listed the dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead = a.get_json("/consumers/jobs/dead").await;
    assert_eq!(dead["dead"].as_array().unwrap().len(), 1, "once: {dead}");
    assert_eq!(dead["dead"][0]["seq"], 1, "{dead}");
    assert_eq!(dead["dead"][0]["attempts"], 1, "{dead}");

    let r = b
        .post("/consumers/jobs/dead/redrive", Some(&json!({"seqs": [1]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a
        .post("/consumers/jobs/fetch", Some(&json!({"max": 2, "wait": 5})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json()["events"].clone();
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got[0]["seq"], 1, "the redriven event: {got}");
    assert_eq!(got[0]["attempt"], 1, "{got}");
    let r = a
        .post("/consumers/jobs/ack", Some(&json!({"seq": 1})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A third instance replays the advisory from the start: the ledger
    // says it was applied, so the redriven and acked event stays off the
    // list.
    let c = spawn_nats(&target, &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for api in [&a, &b, &c] {
        assert_eq!(dead_seqs(api, "jobs").await, Vec::<u64>::new());
    }
    drop(server);
}
