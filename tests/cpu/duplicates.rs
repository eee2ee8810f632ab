//! Duplicates are answered from memory: the writer never reads the
//! original back from disk to answer a repeated `(source, id)`.

use serde_json::{json, Value};

use crate::common::files::{active_segment, flip_pad};
use crate::common::server::spawn_app_with;

/// No recent-events cache (every read of an event goes to its file) and no
/// integrity check during the test (damage stays in place).
const ARGS: &[&str] = &["--read-cache-bytes", "0", "--monitor-interval", "3600"];

fn original(id: &str, time: Option<&str>) -> Value {
    let mut ev = json!({"type": format!("t.{id}"), "source": "/dup", "id": id,
                        "data": {"pad": "x".repeat(2000)}});
    if let Some(t) = time {
        ev["time"] = json!(t);
    }
    ev
}

fn check(body: &Value, seq: u64, id: &str, time: &str) {
    assert_eq!(body["seq"], seq, "{body}");
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(body["type"], format!("t.{id}"), "{body}");
    assert_eq!(body["time"], time, "{body}");
    assert_eq!(body["source"], "/dup", "{body}");
    assert_eq!(body["id"], id, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_events_unreadable_on_disk_are_still_duplicates() {
    let app = spawn_app_with(ARGS).await;
    let a = app.publish_ok(&original("a", None)).await;
    let odd = "2026-01-31T12:00:00.5+02:00";
    let b = app.publish_ok(&original("b", Some(odd))).await;
    let a_time = a["time"].as_str().unwrap().to_string();
    // After a restart the idempotency set is rebuilt from the files.
    let app = app.restart(ARGS).await;
    let r = app
        .publish(&original("a", Some("2000-01-01T00:00:00Z")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&r.json(), 1, "a", &a_time);

    // Damage both originals on disk (the JSON stays valid; only the
    // checksum can tell). Answering from the file would now fail.
    let seg = active_segment(app.data_dir());
    let (off, seq) = flip_pad(&seg, 0);
    assert_eq!(seq, 1);
    let (_, seq) = flip_pad(&seg, off + 4000);
    assert_eq!(seq, 2);

    let r = app.publish(&original("a", None)).await;
    assert_eq!(r.status, 200, "a duplicate, not a new event: {}", r.text());
    check(&r.json(), 1, "a", &a_time);
    let repeats: Vec<Value> = (0..100)
        .map(|i| original(if i % 2 == 0 { "a" } else { "b" }, None))
        .collect();
    let r = app.batch(&Value::from(repeats)).await;
    assert_eq!(r.status, 200, "every item a duplicate: {}", r.text());
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 100);
    for (i, res) in results.iter().enumerate() {
        if i % 2 == 0 {
            check(res, 1, "a", &a_time);
        } else {
            check(res, 2, "b", odd);
        }
    }
    let page = app.get_json("/events?after=2").await;
    assert_eq!(page["last_seq"], b["seq"], "nothing new was stored");
    app.stop().await;
}
