//! Work queues (`"mode": "queue"` consumers): leases, acks, nacks, dead
//! letters and subject ordering against a real server; the kill -9 test of
//! many workers sharing one queue is in `queue_crash.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::http::{error_fields, metric, Api};
use crate::common::server::{on_both, spawn_app, spawn_app_with, TestApp};

on_both!(
    an_expired_lease_goes_to_another_worker_and_a_stale_ack_is_accepted_once,
    extend_holds_a_lease_nack_delays_and_max_deliver_makes_a_dead_letter,
    queue_requests_are_checked,
    a_redriven_dead_letter_is_leased_to_one_worker_from_attempt_1_and_acked_once,
    the_lease_cap_answers_429_until_an_ack_frees_a_lease("--queue-max-leases", "3"),
    a_queue_updated_in_place_keeps_its_acks_and_leases_by_its_new_definition,
    ordering_by_subject_leases_one_event_per_subject_and_acks_in_seq_order,
    ordering_by_subject_holds_a_subject_through_expiry_nack_and_dead_letter,
);

/// `count` events numbered from `first`, with subject `subject(n)`.
pub fn events(first: u64, count: u64, subject: impl Fn(u64) -> String) -> Vec<Value> {
    (first..first + count)
        .map(|n| {
            json!({
                "id": format!("q-{n}"),
                "type": "job.run",
                "source": "/jobs",
                "subject": subject(n),
                "data": {"n": n},
            })
        })
        .collect()
}

/// Creates queue consumer `name` with the extra settings `spec`.
pub async fn create_queue(api: &Api, name: &str, spec: Value) -> Value {
    let mut body = json!({"mode": "queue"});
    for (k, v) in spec.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = api.put(&format!("/consumers/{name}"), &body).await;
    assert_eq!(r.status, 201, "create {name}: {}", r.text());
    r.json()
}

/// `POST /consumers/{name}/fetch`; answers the leased events.
pub async fn fetch(api: &Api, name: &str, max: u64, wait: u64) -> Vec<Value> {
    let r = api
        .post(
            &format!("/consumers/{name}/fetch"),
            Some(&json!({"max": max, "wait": wait})),
        )
        .await;
    assert_eq!(r.status, 200, "fetch: {}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

/// `POST path` with `body`, which must answer 200; answers its JSON.
pub async fn post_ok(api: &Api, path: &str, body: Value) -> Value {
    let r = api.post(path, Some(&body)).await;
    assert_eq!(r.status, 200, "POST {path} {body}: {}", r.text());
    r.json()
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_poison_event_becomes_a_dead_letter_with_one_alert_and_redrive_brings_it_back() {
    let app = spawn_app().await;
    create_queue(&app, "jobs", json!({"max_deliver": 3, "lease": 30})).await;
    app.publish_batch(&events(1, 4, |n| format!("s{n}"))).await;
    let poison = 2;
    let mut deliveries = 0;
    // A worker that acks everything but the poison event, which it nacks.
    for _ in 0..10 {
        let got = fetch(&app, "jobs", 10, 0).await;
        for e in &got {
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(e["event"]["data"]["n"], seq, "the event rides along");
            if seq == poison {
                deliveries += 1;
                assert_eq!(e["attempt"], deliveries);
                let r = app
                    .post(
                        "/consumers/jobs/nack",
                        Some(&json!({"seq": seq, "lease": e["lease"]})),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
            } else {
                let r = app
                    .post("/consumers/jobs/ack", Some(&json!({"seq": seq})))
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    }
    assert_eq!(deliveries, 3, "delivered max_deliver times, then set aside");
    let dead = app.get_json("/consumers/jobs/dead").await;
    assert_eq!(dead["dead"].as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead["dead"][0]["seq"], poison);
    assert_eq!(dead["dead"][0]["attempts"], 3);
    let alerts = app.get_json("/alerts").await;
    let dead_alerts = |a: &Value| {
        a["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "dead_letter")
            .count()
    };
    assert_eq!(dead_alerts(&alerts), 1, "{alerts}");
    let c = app.get_json("/consumers/jobs").await;
    assert_eq!(c["mode"], "queue");
    assert_eq!(c["queue"]["dead"], 1, "{c}");
    assert_eq!(c["queue"]["acknowledged"], 3, "{c}");
    assert_eq!(
        c["queue"]["ack_floor"], 4,
        "the dead letter does not hold the floor"
    );

    // A flood of poison events: dead letters, but no flood of alerts.
    app.publish_batch(&events(5, 20, |n| format!("s{n}"))).await;
    for _ in 0..3 {
        for e in fetch(&app, "jobs", 100, 0).await {
            let r = app
                .post("/consumers/jobs/nack", Some(&json!({"seq": e["seq"]})))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert!(fetch(&app, "jobs", 100, 0).await.is_empty());
    let dead = app.get_json("/consumers/jobs/dead").await;
    assert_eq!(dead["dead"].as_array().unwrap().len(), 21);
    assert_eq!(
        dead_alerts(&app.get_json("/alerts").await),
        1,
        "later dead letters wait for the next alert, a minute on"
    );

    // Dead letters are durable.
    let app = app.restart(&[]).await;
    let dead = app.get_json("/consumers/jobs/dead").await;
    assert_eq!(dead["dead"].as_array().unwrap().len(), 21, "{dead}");
    assert!(
        fetch(&app, "jobs", 100, 0).await.is_empty(),
        "nothing else waits"
    );

    // Redrive one: it comes back at attempt 1 and can be acked.
    let r = app
        .post(
            "/consumers/jobs/dead/redrive",
            Some(&json!({"seqs": [poison]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], json!([poison]));
    let got = fetch(&app, "jobs", 10, 0).await;
    assert_eq!(seqs(&got), vec![poison]);
    assert_eq!(got[0]["attempt"], 1);
    let r = app
        .post("/consumers/jobs/ack", Some(&json!({"seq": poison})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = app
        .post("/consumers/jobs/ack", Some(&json!({"seq": poison})))
        .await;
    again.assert_problem_type(409, "already-acknowledged", "a second ack");
    let r = app
        .post(
            "/consumers/jobs/dead/redrive",
            Some(&json!({"seqs": [poison]})),
        )
        .await;
    r.assert_problem_type(409, "not-dead", "redrive of an acked event");
    // Redrive the rest, after a restart too.
    let r = app.post("/consumers/jobs/dead/redrive", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"].as_array().unwrap().len(), 20);
    let app = app.restart(&[]).await;
    let got = fetch(&app, "jobs", 100, 0).await;
    assert_eq!(seqs(&got), (5..=24).collect::<Vec<_>>());
    let r = app
        .post("/consumers/jobs/ack", Some(&json!({"seqs": seqs(&got)})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ack_floor"], 24);
    let dead = app.get_json("/consumers/jobs/dead").await;
    assert!(dead["dead"].as_array().unwrap().is_empty(), "{dead}");
    app.stop().await;
}

async fn an_expired_lease_goes_to_another_worker_and_a_stale_ack_is_accepted_once(app: TestApp) {
    create_queue(&app, "w", json!({"lease": 0.5})).await;
    app.publish_batch(&events(1, 2, |_| "s".into())).await;
    let first = fetch(&app, "w", 1, 0).await;
    assert_eq!(seqs(&first), vec![1]);
    // Long-poll: wakes when the lease runs out, not at the end of `wait`.
    let second = fetch(&app, "w", 1, 0).await;
    assert_eq!(seqs(&second), vec![2]);
    let started = std::time::Instant::now();
    let again = fetch(&app, "w", 1, 10).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(seqs(&again), vec![1], "the first lease ran out");
    assert_eq!(again[0]["attempt"], 2);
    // The first worker's lease is gone: nack and extend say so.
    let r = app
        .post(
            "/consumers/w/extend",
            Some(&json!({"seq": 1, "lease": first[0]["lease"]})),
        )
        .await;
    let p = r.assert_problem_type(409, "lease-lost", "extend of a stale lease");
    assert_eq!(error_fields(&p), vec!["lease"]);
    let r = app
        .post(
            "/consumers/w/extend",
            Some(&json!({"seq": 1, "lease": again[0]["lease"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Its ack is accepted (the work was done) and the new holder's is not.
    let r = app.post("/consumers/w/ack", Some(&json!({"seq": 1}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post(
            "/consumers/w/nack",
            Some(&json!({"seq": 1, "lease": again[0]["lease"]})),
        )
        .await;
    r.assert_problem_type(409, "not-leased", "nack after someone acked it");
    app.stop().await;
}

/// A cursor consumer is no queue and keeps its mode; queue definitions
/// out of range are refused naming the field. (Every backend.)
async fn cursors_and_bad_definitions_are_refused(app: &TestApp) {
    let r = app.put("/consumers/cur", &json!({})).await;
    assert_eq!(r.status, 201);
    let r = app
        .post("/consumers/cur/fetch", Some(&json!({"max": 1})))
        .await;
    r.assert_problem_type(409, "wrong-mode", "fetch from a cursor consumer");
    let r = app.put("/consumers/cur", &json!({"mode": "queue"})).await;
    r.assert_problem_type(409, "wrong-mode", "mode change");
    for (body, field) in [
        (json!({"mode": "queue", "lease": 0}), "lease"),
        (json!({"mode": "queue", "max_deliver": 0}), "max_deliver"),
        (json!({"mode": "stack"}), "mode"),
    ] {
        let p = app.put("/consumers/bad", &body).await.assert_problem(422);
        assert_eq!(error_fields(&p), vec![field], "{body}");
    }
}

/// Fetch bodies out of range are refused naming the field.
async fn fetch_bodies_are_refused(app: &TestApp, queue: &str) {
    for (body, field) in [
        (json!({"max": 0}), "max"),
        (json!({"max": 1001}), "max"),
        (json!({"wait": 100_000}), "wait"),
        (json!({"limit": 1}), "limit"),
    ] {
        let p = app
            .post(&format!("/consumers/{queue}/fetch"), Some(&body))
            .await
            .assert_problem(422);
        assert_eq!(error_fields(&p), vec![field], "{body}");
    }
}

/// Ack bodies that name no seq, a seq twice, both fields, or a seq past
/// the head are refused naming the field.
async fn ack_bodies_are_refused(app: &TestApp, queue: &str) {
    let path = format!("/consumers/{queue}/ack");
    for (body, field) in [
        (json!({"seqs": [2, 2]}), "seqs"),
        (json!({"seq": 1, "seqs": [2]}), "seq"),
        (json!({}), "seq"),
        (json!({"seqs": []}), "seqs"),
    ] {
        let p = app.post(&path, Some(&body)).await.assert_problem(422);
        assert_eq!(error_fields(&p), vec![field], "{body}");
    }
    let r = app.post(&path, Some(&json!({"seq": 99}))).await;
    r.assert_problem_type(422, "past-head", "ack past the head");
}

#[tokio::test]
async fn queue_requests_are_checked_and_bounded() {
    let app = spawn_app_with(&["--queue-max-leases", "3", "--queue-max-acked", "2"]).await;
    cursors_and_bad_definitions_are_refused(&app).await;
    assert_eq!(app.get_json("/consumers/cur").await["mode"], "cursor");
    let r = app.put("/consumers/cur2", &json!({"lease": 5})).await;
    let p = r.assert_problem(422);
    assert_eq!(error_fields(&p), vec!["lease"]);
    let p = app
        .put(
            "/consumers/bad",
            &json!({"mode": "queue", "ordering": "type"}),
        )
        .await
        .assert_problem(422);
    assert_eq!(error_fields(&p), vec!["ordering"]);
    let c = create_queue(&app, "q", json!({"ordering": "subject", "lease": 60})).await;
    assert_eq!(c["queue"]["lease"], 60.0);
    assert_eq!(c["queue"]["max_deliver"], 5);
    assert_eq!(c["queue"]["ordering"], "subject");
    fetch_bodies_are_refused(&app, "q").await;
    app.publish_batch(&events(1, 6, |n| format!("s{n}"))).await;
    // The lease cap: 3 leased, then 429.
    let got = fetch(&app, "q", 5, 0).await;
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    let r = app
        .post("/consumers/q/fetch", Some(&json!({"max": 1})))
        .await;
    r.assert_problem_type(429, "too-many-leases", "a fourth lease");
    assert!(r.header("retry-after").is_some());
    // Acks: unknown, duplicate, past the head, both fields.
    ack_bodies_are_refused(&app, "q").await;
    // The acked-above-floor cap: 2 and 3 fit, 5 would be a third above
    // the floor (1 is still leased), 1 moves the floor and always fits.
    let r = app
        .post("/consumers/q/ack", Some(&json!({"seqs": [2, 3]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ack_floor"], 0);
    let r = app.post("/consumers/q/ack", Some(&json!({"seq": 5}))).await;
    r.assert_problem_type(429, "too-many-acked", "a third ack above the floor");
    let r = app.post("/consumers/q/ack", Some(&json!({"seq": 1}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ack_floor"], 3);
    let r = app.post("/consumers/q/ack", Some(&json!({"seq": 5}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = app.get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "msgbus_queue_acknowledged_total{consumer=\"q\"}"),
        4.0
    );
    assert_eq!(metric(&metrics, "msgbus_queue_leased{consumer=\"q\"}"), 0.0);
    assert_eq!(
        metric(&metrics, "msgbus_queue_pending{consumer=\"q\"}"),
        2.0
    );
    assert!(
        metric(
            &metrics,
            "msgbus_queue_oldest_unacked_age_seconds{consumer=\"q\"}"
        ) >= 0.0
    );
    app.stop().await;
}

async fn ordering_by_subject_leases_one_event_per_subject_and_acks_in_seq_order(app: TestApp) {
    create_queue(&app, "ord", json!({"ordering": "subject"})).await;
    let total = 240;
    app.publish_batch(&events(1, total, ordered_subject)).await;
    let acked = work_in_subject_order(std::slice::from_ref(&app.api), "ord", 8).await;
    assert_acked_once_in_subject_order(acked, total);
    let c = app.get_json("/consumers/ord").await;
    assert_eq!(c["queue"]["ack_floor"], total, "{c}");
    app.stop().await;
}

/// The subject of event `n` in the ordering tests: six subjects, mixed.
pub fn ordered_subject(n: u64) -> String {
    format!("order-{}", (n * 7 + n / 5) % 6)
}

/// `workers` workers, spread over `apis` (fetching through one, acking
/// through the next), take the events of ordered queue `name` until none
/// come for 3 fetches, checking that no two events of one subject are
/// ever held at once; answers the acks, in the order they were sent.
pub async fn work_in_subject_order(apis: &[Api], name: &str, workers: usize) -> Vec<(String, u64)> {
    // Seqs held by a worker (leased, ack not sent yet), by subject.
    let held: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    // Acks sent, in the order sent, with their subject; kept when 200.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let fetch_api = apis[w % apis.len()].clone();
        let ack_api = apis[(w + 1) % apis.len()].clone();
        let name = name.to_string();
        let held = held.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 {
                let got = fetch(&fetch_api, &name, 4, 1).await;
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for e in &got {
                    let s = e["event"]["subject"].as_str().unwrap().to_string();
                    let seq = e["seq"].as_u64().unwrap();
                    if let Some(other) = held.lock().unwrap().insert(s.clone(), seq) {
                        panic!("{seq} and {other} of subject {s} leased at once");
                    }
                }
                tokio::time::sleep(Duration::from_millis(w as u64 % 3 * 5)).await;
                for e in &got {
                    let s = e["event"]["subject"].as_str().unwrap().to_string();
                    let seq = e["seq"].as_u64().unwrap();
                    held.lock().unwrap().remove(&s);
                    // Recorded when sent: the next event of the subject is
                    // leased only once this ack is written, so after this.
                    acked.lock().unwrap().push((s, seq));
                    let r = ack_api
                        .post(
                            &format!("/consumers/{name}/ack"),
                            Some(&json!({"seq": seq})),
                        )
                        .await;
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// Checks that events 1..=`total` were acked once each, each subject's
/// in seq order.
pub fn assert_acked_once_in_subject_order(acked: Vec<(String, u64)>, total: u64) {
    assert_eq!(acked.len() as u64, total, "every event acked once");
    let mut by_subject: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (s, seq) in acked {
        by_subject.entry(s).or_default().push(seq);
    }
    let want: std::collections::BTreeSet<String> = (1..=total).map(ordered_subject).collect();
    assert_eq!(
        by_subject
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    for (s, seqs) in by_subject {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "subject {s} acked out of order");
    }
}

/// What keeps a subject's next event waiting: the earlier one leased,
/// given back by an expired lease or a delayed nack, until it is acked or
/// dead.
async fn ordering_by_subject_holds_a_subject_through_expiry_nack_and_dead_letter(app: TestApp) {
    create_queue(
        &app,
        "ord",
        json!({"ordering": "subject", "lease": 1, "max_deliver": 2}),
    )
    .await;
    let subject = |n: u64| (if n == 3 { "b" } else { "a" }).to_string();
    app.publish_batch(&events(1, 4, subject)).await;
    let got = fetch(&app, "ord", 10, 0).await;
    assert_eq!(seqs(&got), vec![1, 3], "2 and 4 wait behind 1");
    post_ok(&app, "/consumers/ord/ack", json!({"seq": 3})).await;
    assert!(fetch(&app, "ord", 10, 0).await.is_empty(), "a is busy");
    // Its lease runs out: 1 again, not 2.
    let again = fetch(&app, "ord", 10, 5).await;
    assert_eq!(seqs(&again), vec![1]);
    assert_eq!(again[0]["attempt"], 2);
    // Its last delivery given back: a dead letter, and 2 may go.
    post_ok(
        &app,
        "/consumers/ord/nack",
        json!({"seq": 1, "lease": again[0]["lease"]}),
    )
    .await;
    let two = fetch(&app, "ord", 10, 5).await;
    assert_eq!(seqs(&two), vec![2], "4 waits behind 2");
    assert_eq!(two[0]["attempt"], 1);
    let dead = app.get_json("/consumers/ord/dead").await;
    assert_eq!(dead["dead"][0]["seq"], 1, "{dead}");
    // A delayed nack keeps 4 waiting behind 2.
    post_ok(
        &app,
        "/consumers/ord/nack",
        json!({"seq": 2, "lease": two[0]["lease"], "delay": 1}),
    )
    .await;
    assert!(fetch(&app, "ord", 10, 0).await.is_empty(), "2 is delayed");
    let later = fetch(&app, "ord", 10, 5).await;
    assert_eq!(seqs(&later), vec![2]);
    assert_eq!(later[0]["attempt"], 2);
    post_ok(&app, "/consumers/ord/ack", json!({"seq": 2})).await;
    let four = fetch(&app, "ord", 10, 5).await;
    assert_eq!(seqs(&four), vec![4]);
    let acked = post_ok(&app, "/consumers/ord/ack", json!({"seq": 4})).await;
    assert_eq!(acked["ack_floor"], 4);
    let r = app
        .post("/consumers/ord/ack", Some(&json!({"seq": 2})))
        .await;
    r.assert_problem_type(409, "already-acknowledged", "a second ack");
    app.stop().await;
}

async fn extend_holds_a_lease_nack_delays_and_max_deliver_makes_a_dead_letter(app: TestApp) {
    create_queue(&app, "jobs", json!({"max_deliver": 2, "lease": 1})).await;
    app.publish_batch(&events(1, 3, |n| format!("s{n}"))).await;
    // Extended past its lease, an event stays with its worker.
    let held = fetch(&app, "jobs", 1, 0).await;
    assert_eq!(seqs(&held), vec![1]);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = app
            .post(
                "/consumers/jobs/extend",
                Some(&json!({"seq": 1, "lease": held[0]["lease"]})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["lease_ms"], 1000);
    }
    let other = fetch(&app, "jobs", 1, 0).await;
    assert_eq!(
        seqs(&other),
        vec![2],
        "1 is still leased: {held:?} {other:?}"
    );
    let r = app
        .post("/consumers/jobs/ack", Some(&json!({"seqs": [1, 2]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A nack with a delay: not before it.
    let got = fetch(&app, "jobs", 1, 0).await;
    assert_eq!(seqs(&got), vec![3]);
    assert_eq!(got[0]["attempt"], 1);
    let r = app
        .post(
            "/consumers/jobs/nack",
            Some(&json!({"seq": 3, "lease": got[0]["lease"], "delay": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["lease_ms"], 0);
    let started = std::time::Instant::now();
    assert!(fetch(&app, "jobs", 1, 0).await.is_empty(), "still delayed");
    let again = fetch(&app, "jobs", 1, 8).await;
    assert_eq!(seqs(&again), vec![3]);
    assert_eq!(again[0]["attempt"], 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "delivered again before its delay: {:?}",
        started.elapsed()
    );
    // Its second failure is its last (max_deliver 2): a dead letter.
    let r = app
        .post(
            "/consumers/jobs/nack",
            Some(&json!({"seq": 3, "lease": again[0]["lease"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(fetch(&app, "jobs", 1, 1).await.is_empty(), "set aside");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = app.get_json("/consumers/jobs/dead").await;
        let alerts = app.get_json("/alerts").await;
        let c = app.get_json("/consumers/jobs").await;
        let alerted = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "dead_letter")
            .count();
        if dead["dead"].as_array().unwrap().len() == 1 && alerted == 1 && c["queue"]["dead"] == 1 {
            assert_eq!(dead["dead"][0]["seq"], 3);
            assert_eq!(dead["dead"][0]["attempts"], 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter: {dead} {alerts} {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = app
        .post("/consumers/jobs/ack", Some(&json!({"seq": 3})))
        .await;
    r.assert_problem_type(409, "dead-letter", "an ack of a dead letter");
    app.stop().await;
}

async fn queue_requests_are_checked(app: TestApp) {
    cursors_and_bad_definitions_are_refused(&app).await;
    let c = create_queue(&app, "q", json!({"lease": 60})).await;
    assert_eq!(c["mode"], "queue");
    assert_eq!(c["queue"]["lease"], 60.0);
    assert_eq!(c["queue"]["max_deliver"], 5);
    let r = app.put("/consumers/q", &json!({"mode": "cursor"})).await;
    r.assert_problem_type(409, "wrong-mode", "mode change of a queue");
    fetch_bodies_are_refused(&app, "q").await;
    app.publish_batch(&events(1, 3, |n| format!("s{n}"))).await;
    let got = fetch(&app, "q", 2, 0).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    ack_bodies_are_refused(&app, "q").await;
    let r = app
        .post("/consumers/q/nack", Some(&json!({"seq": 3})))
        .await;
    r.assert_problem_type(409, "not-leased", "nack of an event not leased");
    let r = app
        .post("/consumers/q/ack", Some(&json!({"seqs": [1, 2]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["acked"], json!([1, 2]));
    let r = app.post("/consumers/q/ack", Some(&json!({"seq": 2}))).await;
    r.assert_problem_type(409, "already-acknowledged", "a second ack");
    let r = app
        .post("/consumers/q/extend", Some(&json!({"seq": 1})))
        .await;
    r.assert_problem_type(409, "not-leased", "extend of an acked event");
    assert_eq!(app.delete("/consumers/q").await.status, 204);
    assert_eq!(app.get("/consumers/q").await.status, 404);
    app.stop().await;
}

async fn a_redriven_dead_letter_is_leased_to_one_worker_from_attempt_1_and_acked_once(
    app: TestApp,
) {
    create_queue(&app, "rd", json!({"max_deliver": 2, "lease": 1})).await;
    app.publish_batch(&events(1, 2, |n| format!("s{n}"))).await;
    // Seq 1 fails twice: a dead letter; seq 2 is done.
    for attempt in 1..=2 {
        let got = fetch(&app, "rd", 1, 5).await;
        assert_eq!(seqs(&got), vec![1]);
        assert_eq!(got[0]["attempt"], attempt);
        let r = app
            .post("/consumers/rd/nack", Some(&json!({"seq": 1})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let got = fetch(&app, "rd", 1, 2).await;
    assert_eq!(seqs(&got), vec![2]);
    let r = app
        .post("/consumers/rd/ack", Some(&json!({"seq": 2})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = app.get_json("/consumers/rd/dead").await;
        if dead["dead"].as_array().unwrap().len() == 1 {
            assert_eq!(dead["dead"][0]["seq"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = app
        .post("/consumers/rd/dead/redrive", Some(&json!({"seqs": [2]})))
        .await;
    r.assert_problem_type(409, "not-dead", "redrive of an acked event");
    let r = app.post("/consumers/rd/dead/redrive", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], json!([1]));
    assert!(app.get_json("/consumers/rd/dead").await["dead"]
        .as_array()
        .unwrap()
        .is_empty());
    // Back from attempt 1, leased to one worker at a time.
    let got = fetch(&app, "rd", 10, 2).await;
    assert_eq!(seqs(&got), vec![1]);
    assert_eq!(got[0]["attempt"], 1);
    assert!(fetch(&app, "rd", 10, 0).await.is_empty(), "leased once");
    let r = app
        .post(
            "/consumers/rd/extend",
            Some(&json!({"seq": 1, "lease": got[0]["lease"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post(
            "/consumers/rd/nack",
            Some(&json!({"seq": 1, "lease": "not-its-lease"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // Its lease runs out: another worker gets it, attempt 2; the first
    // lease is lost.
    let again = fetch(&app, "rd", 10, 5).await;
    assert_eq!(seqs(&again), vec![1]);
    assert_eq!(again[0]["attempt"], 2);
    let r = app
        .post(
            "/consumers/rd/extend",
            Some(&json!({"seq": 1, "lease": got[0]["lease"]})),
        )
        .await;
    r.assert_problem_type(409, "lease-lost", "extend of the first lease");
    let r = app
        .post("/consumers/rd/ack", Some(&json!({"seq": 1})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post("/consumers/rd/ack", Some(&json!({"seq": 1})))
        .await;
    r.assert_problem_type(409, "already-acknowledged", "a second ack");
    assert!(fetch(&app, "rd", 10, 1).await.is_empty(), "nothing waits");
    assert!(app.get_json("/consumers/rd/dead").await["dead"]
        .as_array()
        .unwrap()
        .is_empty());
    app.stop().await;
}

/// `--queue-max-leases`: that many events leased at once (a larger fetch
/// gets that many), then `429` with `Retry-After` until an ack frees a
/// lease (on NATS: the JetStream consumer's MaxAckPending).
async fn the_lease_cap_answers_429_until_an_ack_frees_a_lease(app: TestApp) {
    create_queue(&app, "capped", json!({"lease": 60})).await;
    app.publish_batch(&events(1, 6, |n| format!("s{n}"))).await;
    let got = fetch(&app, "capped", 5, 0).await;
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    let r = app
        .post(
            "/consumers/capped/fetch",
            Some(&json!({"max": 1, "wait": 0})),
        )
        .await;
    r.assert_problem_type(429, "too-many-leases", "a fourth lease");
    assert!(r.header("retry-after").is_some());
    let r = app
        .post("/consumers/capped/ack", Some(&json!({"seq": 1})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = fetch(&app, "capped", 5, 0).await;
    assert_eq!(seqs(&got), vec![4], "one lease freed, one more leased");
}

/// `PUT` of an existing queue consumer with other settings changes it in
/// place: `200`, what was acknowledged stays acknowledged, and the next
/// deliveries follow the new lease (an event leased for 1 s instead of 60
/// comes back within seconds).
async fn a_queue_updated_in_place_keeps_its_acks_and_leases_by_its_new_definition(app: TestApp) {
    create_queue(&app, "upd", json!({"lease": 60})).await;
    app.publish_batch(&events(1, 3, |n| format!("s{n}"))).await;
    let got = fetch(&app, "upd", 2, 0).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    let r = app
        .post("/consumers/upd/ack", Some(&json!({"seqs": [1, 2]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = app
        .put(
            "/consumers/upd",
            &json!({"mode": "queue", "lease": 1, "max_deliver": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "an update, not a creation: {}", r.text());
    let c = r.json();
    assert_eq!(
        (&c["queue"]["lease"], &c["queue"]["max_deliver"]),
        (&json!(1.0), &json!(3)),
        "{c}"
    );
    let c = app.get_json("/consumers/upd").await;
    assert_eq!(c["queue"]["lease"], 1.0, "{c}");

    let got = fetch(&app, "upd", 1, 0).await;
    assert_eq!(seqs(&got), vec![3], "the acknowledged events stay done");
    assert_eq!(got[0]["attempt"], 1);
    let asked = std::time::Instant::now();
    let got = fetch(&app, "upd", 1, 10).await;
    assert_eq!(seqs(&got), vec![3], "its 1 s lease ran out");
    assert_eq!(got[0]["attempt"], 2);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "back after {:?}",
        asked.elapsed()
    );
}
