//! Idempotency: a repeat of a stored `(source, id)` answers 200 with the
//! original seq, before and after a restart, and nothing new is stored.

use serde_json::{json, Value};

use crate::common::http::Reply;
use crate::common::server::{on_both, on_both_multi, TestApp};

async fn repeat_of_source_and_id_answers_200_with_the_original_seq(app: TestApp) {
    app.publish_ok(&json!({"type": "t.a", "source": "/other"}))
        .await;
    let first = app
        .publish_ok(&json!({"type": "t.dup", "source": "/dup", "id": "same", "data": 1}))
        .await;
    assert_eq!(first["seq"], 2);

    let check_dup = |res: Reply| async move {
        assert_eq!(res.status, 200, "a duplicate answers 200");
        assert_eq!(res.headers["location"], "/events/2");
        let body: Value = res.json();
        assert_eq!(body["seq"], 2);
        assert_eq!(body["duplicate"], true);
        assert_eq!(body["id"], "same");
        assert_eq!(body["source"], "/dup");
        body
    };

    // Same event again, and the same (source, id) with other content: both
    // are the stored event.
    check_dup(
        app.publish(&json!({"type": "t.dup", "source": "/dup", "id": "same", "data": 1}))
            .await,
    )
    .await;
    let changed = check_dup(
        app.publish(&json!({"type": "t.changed", "source": "/dup", "id": "same", "data": 2}))
            .await,
    )
    .await;
    assert_eq!(changed["type"], "t.dup", "the stored event's type");
    assert_eq!(changed["time"], first["time"], "the stored event's time");

    // Same id from another source is a different event.
    let other = app
        .publish_ok(&json!({"type": "t.dup", "source": "/dup2", "id": "same"}))
        .await;
    assert_eq!(other["seq"], 3);

    let all = app.read_all().await;
    assert_eq!(all.len(), 3, "duplicates store nothing: {all:?}");
    assert_eq!(all[1].1["data"], 1, "the original content is kept");

    // After a restart the dedup set is rebuilt from disk.
    let app = app.restart(&[]).await;
    check_dup(
        app.publish(&json!({"type": "t.dup", "source": "/dup", "id": "same", "data": 1}))
            .await,
    )
    .await;
    let res = app
        .publish(&json!({"type": "t.dup", "source": "/dup2", "id": "same"}))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["seq"], 3);
    let next = app
        .publish_ok(&json!({"type": "t.dup", "source": "/dup", "id": "new"}))
        .await;
    assert_eq!(next["seq"], 4, "duplicates consumed no sequence numbers");
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["events"]["total"], 4);
    assert_eq!(stats["writer"]["duplicates"], 2, "{stats}");
}

async fn duplicates_inside_one_batch_and_against_the_store(app: TestApp) {
    let res = app
        .batch(&json!([
            {"type": "t.b", "source": "/b", "id": "x"},
            {"type": "t.b", "source": "/b", "id": "y"},
            {"type": "t.b", "source": "/b", "id": "x", "data": "again"}
        ]))
        .await;
    assert_eq!(res.status, 201);
    let body: Value = res.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["seq"], 1);
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[1]["seq"], 2);
    assert_eq!(results[1]["duplicate"], false);
    assert_eq!(
        results[2]["seq"], 1,
        "an in-batch repeat points at the first"
    );
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[2]["id"], "x");
    let all = app.read_all().await;
    assert_eq!(all.len(), 2);
    assert!(all[0].1.get("data").is_none(), "the first copy is stored");

    // A batch of nothing but stored events answers 200 and stores nothing.
    let res = app
        .batch(&json!([
            {"type": "t.b", "source": "/b", "id": "y"},
            {"type": "t.b", "source": "/b", "id": "x"}
        ]))
        .await;
    assert_eq!(res.status, 200);
    let body: Value = res.json();
    let seqs: Vec<&Value> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["seq"])
        .collect();
    assert_eq!(seqs, vec![&json!(2), &json!(1)]);
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["duplicate"] == true));
    assert_eq!(app.read_all().await.len(), 2);
}

async fn concurrent_repeats_store_one_event(app: TestApp) {
    let ev = json!({"type": "t.race", "source": "/race", "id": "only-once"});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let api = app.api.clone();
        let ev = ev.clone();
        tasks.push(tokio::spawn(async move {
            let res = api.publish(&ev).await;
            let status = res.status;
            let body: Value = res.json();
            (status, body["seq"].as_u64().unwrap())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, seq) = t.await.unwrap();
        assert_eq!(seq, 1);
        match status {
            201 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1, "exactly one publish creates the event");
    assert_eq!(app.read_all().await.len(), 1);
}

on_both!(
    repeat_of_source_and_id_answers_200_with_the_original_seq,
    duplicates_inside_one_batch_and_against_the_store,
);

on_both_multi!(concurrent_repeats_store_one_event,);
