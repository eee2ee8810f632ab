//! `POST /events/batch`: all or nothing, in order, bounded.

use serde_json::{json, Value};

use crate::common::http::error_fields;
use crate::common::server::{on_both, TestApp};

async fn batch_stores_every_item_in_order_with_one_result_each(app: TestApp) {
    app.publish_ok(&json!({"type": "t.single", "source": "/s"}))
        .await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"type": "t.batch", "source": "/b", "id": format!("b{i}"), "data": i}))
        .collect();
    let res = app
        .send(
            app.client
                .post(app.url("/events/batch"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(serde_json::to_vec(&items).unwrap()),
        )
        .await;
    assert_eq!(res.status, 201);
    let body: Value = res.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 2, "results in request order: {r}");
        assert_eq!(r["id"], format!("b{i}"));
        assert_eq!(r["type"], "t.batch");
        assert_eq!(r["source"], "/b");
        assert_eq!(r["duplicate"], false);
        assert!(r["time"].is_string());
    }
    let all = app.read_all().await;
    assert_eq!(all.len(), 6);
    for (i, (seq, ev)) in all[1..].iter().enumerate() {
        assert_eq!(*seq, i as u64 + 2);
        assert_eq!(ev["data"], i);
    }
}

async fn one_bad_item_stores_nothing_and_is_named(app: TestApp) {
    let res = app
        .batch(&json!([
            {"type": "t.ok", "source": "/b", "id": "1"},
            {"type": "t.bad", "id": "2"},
            {"type": "t.ok", "source": "/b", "id": "3"},
            {"source": "/b", "id": "4", "time": "not a time"}
        ]))
        .await;
    let problem = res.assert_problem(422);
    let fields = error_fields(&problem);
    assert!(
        fields.contains(&"[1].source".to_string()),
        "names the item and field: {problem}"
    );
    assert!(fields.contains(&"[3].type".to_string()), "{problem}");
    assert!(fields.contains(&"[3].time".to_string()), "{problem}");
    assert!(
        !fields
            .iter()
            .any(|f| f.starts_with("[0]") || f.starts_with("[2]")),
        "valid items are not blamed: {problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("[1]") && detail.contains("[3]"), "{detail}");

    let page = app.get_json("/events").await;
    assert_eq!(page["events"], json!([]), "nothing was stored");
    assert_eq!(page["last_seq"], 0);

    // The valid items were not half-remembered either: they store now.
    let res = app
        .batch(&json!([
            {"type": "t.ok", "source": "/b", "id": "1"},
            {"type": "t.ok", "source": "/b", "id": "3"}
        ]))
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(app.read_all().await.len(), 2);
}

async fn an_oversized_item_stores_nothing(app: TestApp) {
    let res = app
        .batch(&json!([
            {"type": "t.ok", "source": "/b"},
            {"type": "t.big", "source": "/b", "data": "x".repeat(600)}
        ]))
        .await;
    let problem = res.assert_problem(413);
    assert!(
        problem["detail"].as_str().unwrap().contains("[1]"),
        "{problem}"
    );
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

async fn empty_non_array_and_too_many_items_are_refused(app: TestApp) {
    let problem = app.batch(&json!([])).await.assert_problem(422);
    assert_eq!(error_fields(&problem), vec!["$"]);

    let problem = app
        .batch(&json!({"type": "t", "source": "/s"}))
        .await
        .assert_problem(422);
    assert_eq!(error_fields(&problem), vec!["$"]);

    let problem = app
        .batch(&json!([1, {"type": "t", "source": "/s"}]))
        .await
        .assert_problem(422);
    assert_eq!(error_fields(&problem), vec!["[0]"]);

    let four: Vec<Value> = (0..4)
        .map(|i| json!({"type": "t", "source": "/s", "id": format!("{i}")}))
        .collect();
    let problem = app.batch(&json!(four)).await.assert_problem(413);
    assert!(
        problem["detail"].as_str().unwrap().contains('3'),
        "the limit is named: {problem}"
    );
    assert_eq!(app.get_json("/events").await["last_seq"], 0);

    // Exactly the limit is fine.
    let res = app.batch(&json!(four[..3])).await;
    assert_eq!(res.status, 201);
    assert_eq!(app.read_all().await.len(), 3);
}

async fn oversized_batch_body_is_413(app: TestApp) {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"type": "t", "source": "/s", "data": format!("{i:0>200}")}))
        .collect();
    app.batch(&json!(items)).await.assert_problem(413);
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

/// Items are counted while the array is parsed: the batch is refused at
/// the item past `--max-batch-events`, before the rest is read into memory.
/// What follows that item is never looked at, so a body that turns
/// malformed after it is still a 413 (a parse of the whole array first
/// answered 400 here), and a huge array of tiny items is refused the same way.
async fn items_are_counted_while_parsing_and_refused_at_the_limit(app: TestApp) {
    let body = format!(
        "[{}, this is never parsed",
        [r#"{"type":"t","source":"/s"}"#; 4].join(",")
    );
    let problem = app
        .post_json_text("/events/batch", &body)
        .await
        .assert_problem(413);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--max-batch-events"),
        "{problem}"
    );
    let zeros = format!("[{}0]", "0,".repeat(2_000_000));
    app.post_json_text("/events/batch", &zeros)
        .await
        .assert_problem(413);
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

on_both!(
    batch_stores_every_item_in_order_with_one_result_each,
    one_bad_item_stores_nothing_and_is_named,
    an_oversized_item_stores_nothing("--max-event-bytes", "512"),
    empty_non_array_and_too_many_items_are_refused("--max-batch-events", "3"),
    oversized_batch_body_is_413("--max-batch-bytes", "2KiB"),
    items_are_counted_while_parsing_and_refused_at_the_limit("--max-batch-events", "3"),
);
