//! Long-poll: `wait=N` returns as soon as a matching event commits, or an
//! empty page once the wait is over.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::error_fields;
use crate::common::server::{on_both, on_both_multi, TestApp};

async fn long_poll_returns_as_soon_as_an_event_is_published(app: TestApp) {
    app.publish_ok(&json!({"type": "t.lp", "source": "/lp"}))
        .await;
    let head = app.get_json("/events").await["last_seq"].as_u64().unwrap();
    assert_eq!(head, 1);

    let api = app.api.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let page = api.get_json(&format!("/events?after={head}&wait=10")).await;
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll waits while nothing comes"
    );
    let published = app
        .publish_ok(&json!({"type": "t.lp", "source": "/lp", "id": "wake", "data": "hi"}))
        .await;
    let (page, took) = poll.await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "the long-poll must return soon after the publish, took {took:?}"
    );
    assert!(took >= Duration::from_millis(350), "it did wait: {took:?}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["seq"], published["seq"]);
    assert_eq!(events[0]["event"]["id"], "wake");
    assert_eq!(events[0]["event"]["data"], "hi");
    assert_eq!(page["next_after"], 2);
    assert_eq!(page["last_seq"], 2);
}

async fn filtered_long_poll_ignores_other_events(app: TestApp) {
    let api = app.api.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let page = api.get_json("/events?after=0&type=t.wanted&wait=10").await;
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.publish_ok(&json!({"type": "t.other", "source": "/lp"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "a non-matching event must not end the wait"
    );
    app.publish_ok(&json!({"type": "t.wanted", "source": "/lp"}))
        .await;
    let (page, took) = poll.await.unwrap();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let seqs: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(seqs, vec![&json!(2)]);
    assert_eq!(page["next_after"], 2);
}

async fn long_poll_with_nothing_new_returns_empty_after_the_wait(app: TestApp) {
    app.publish_ok(&json!({"type": "t.lp", "source": "/lp"}))
        .await;
    let started = Instant::now();
    let page = app.get_json("/events?after=1&wait=1").await;
    let took = started.elapsed();
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_after"], 1);
    assert_eq!(page["last_seq"], 1);
    assert!(
        took >= Duration::from_millis(900),
        "wait=1 waits about a second, took {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Without wait, an empty read answers at once.
    let started = Instant::now();
    app.get_json("/events?after=1").await;
    assert!(started.elapsed() < Duration::from_millis(900));

    // With events already there, wait does not delay the answer.
    let started = Instant::now();
    let page = app.get_json("/events?after=0&wait=10").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn wait_is_bounded_by_max_wait(app: TestApp) {
    let problem = app.get("/events?wait=3").await.assert_problem(400);
    assert_eq!(error_fields(&problem), vec!["wait"]);
    app.get("/events?wait=soon").await.assert_problem(400);
}

on_both!(
    long_poll_with_nothing_new_returns_empty_after_the_wait,
    wait_is_bounded_by_max_wait("--max-wait", "2s"),
);

on_both_multi!(
    long_poll_returns_as_soon_as_an_event_is_published,
    filtered_long_poll_ignores_other_events,
);
