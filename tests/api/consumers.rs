//! Durable consumers: create, read, ack, list, delete; acks survive a
//! restart and a SIGKILL after their 200; wrong acks are problems.

use std::time::{Duration, Instant};

use crate::common::events::{event, events};
use crate::common::files::DataDir;
use crate::common::http::Api;
use crate::common::process::spawn_process;
use crate::common::server::{on_both, spawn_app, TestApp};
use serde_json::{json, Value};

async fn put(api: &Api, name: &str, body: Value) -> (u16, Value) {
    let res = api.put(&format!("/consumers/{name}"), &body).await;
    (res.status, res.json())
}

async fn ack(api: &Api, name: &str, seq: u64) -> (u16, Value) {
    let res = api
        .post(
            &format!("/consumers/{name}/ack"),
            Some(&json!({ "seq": seq })),
        )
        .await;
    (res.status, res.json())
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

async fn create_read_ack_restart_and_read_again_from_the_acked_cursor(s: TestApp) {
    let mut batch = Vec::new();
    for n in 1..=40u64 {
        let ty = if n % 2 == 0 {
            "job.created"
        } else {
            "job.noise"
        };
        batch.push(event(n, ty, "/jobs", 0));
    }
    s.publish_batch(&batch).await;

    let (status, c) = put(&s, "worker-1", json!({"type": "job.created"})).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["cursor"], 0);
    assert_eq!(c["lag"], 40);
    assert_eq!(c["filter"], json!({"type": "job.created"}));

    let page = s.get_json("/consumers/worker-1/events?limit=5").await;
    assert_eq!(seqs(&page), vec![2, 4, 6, 8, 10]);
    assert_eq!(page["cursor"], 0);
    // Reading does not move the cursor: the same page again (at-least-once).
    let again = s.get_json("/consumers/worker-1/events?limit=5").await;
    assert_eq!(seqs(&again), vec![2, 4, 6, 8, 10]);

    let (status, acked) = ack(&s, "worker-1", 10).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["cursor"], 10);
    assert_eq!(acked["lag"], 30);
    let page = s.get_json("/consumers/worker-1/events?limit=3").await;
    assert_eq!(seqs(&page), vec![12, 14, 16]);

    // Wrong acks.
    let (status, p) = ack(&s, "worker-1", 9).await;
    assert_eq!(
        (status, &p["type"]),
        (409, &json!("urn:msgbus:problem:ack-backwards"))
    );
    let (status, p) = ack(&s, "worker-1", 41).await;
    assert_eq!(
        (status, &p["type"]),
        (422, &json!("urn:msgbus:problem:past-head"))
    );
    let (status, _) = ack(&s, "nobody", 1).await;
    assert_eq!(status, 404);
    let (status, _) = ack(&s, "worker-1", 10).await;
    assert_eq!(status, 200, "re-acking the cursor is harmless");
    s.post("/consumers/worker-1/ack", Some(&json!({"seq": "ten"})))
        .await
        .assert_problem(422);

    // Start positions, list, lag in /stats.
    let (status, latest) = put(&s, "tail", json!({"start": "latest"})).await;
    assert_eq!((status, &latest["cursor"]), (201, &json!(40)));
    let (status, at) = put(&s, "from-30", json!({"start": 30})).await;
    assert_eq!((status, &at["cursor"]), (201, &json!(29)));
    let (status, p) = put(&s, "bad name!", json!({})).await;
    assert_eq!((status, &p["errors"][0]["field"]), (422, &json!("name")));
    let (status, p) = put(&s, "x", json!({"start": 99})).await;
    assert_eq!(status, 422, "{p}");
    let (status, p) = put(&s, "x", json!({"typ": "a"})).await;
    assert_eq!((status, &p["errors"][0]["field"]), (422, &json!("typ")));

    let list = s.get_json("/consumers").await;
    let names: Vec<&str> = list["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["from-30", "tail", "worker-1"]);
    let stats = s.get_json("/stats").await;
    assert_eq!(stats["consumers"]["lag"]["worker-1"], 30);
    assert_eq!(stats["consumers"]["max_lag"], 30);

    // Long-poll: wakes when a matching event is published.
    let waiter = {
        let api = s.api.clone();
        tokio::spawn(async move { api.get("/consumers/tail/events?wait=10").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    s.publish_batch(&events(1000, 1, 0)).await;
    let page = waiter.await.unwrap();
    assert_eq!((page.status, seqs(&page.json())), (200, vec![41]));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Updating the filters keeps the cursor; delete.
    let (status, c) = put(&s, "tail", json!({"source": "/jobs"})).await;
    assert_eq!((status, &c["cursor"]), (200, &json!(40)));
    assert_eq!(s.delete("/consumers/from-30").await.status, 204);
    s.get("/consumers/from-30").await.assert_problem(404);

    // After a restart: the acked cursor, the filters and the deletion hold.
    let s = s.restart(&[]).await;
    let c = s.get_json("/consumers/worker-1").await;
    assert_eq!(c["cursor"], 10);
    assert_eq!(c["filter"]["type"], "job.created");
    let page = s.get_json("/consumers/worker-1/events?limit=2").await;
    assert_eq!(seqs(&page), vec![12, 14]);
    s.get("/consumers/from-30").await.assert_problem(404);
    s.stop().await;
}

#[tokio::test]
async fn an_ack_answered_200_survives_sigkill() {
    let dir = DataDir::temp();
    let p = spawn_process(dir.path(), &[]).await;
    p.publish_batch(&events(1, 20, 10)).await;
    let (status, _) = put(&p, "crashy", json!({})).await;
    assert_eq!(status, 201);
    let page = p.get_json("/consumers/crashy/events?limit=7").await;
    assert_eq!(seqs(&page), (1..=7).collect::<Vec<u64>>());
    let (status, _) = ack(&p, "crashy", 7).await;
    assert_eq!(status, 200);
    p.kill().await;

    let p = spawn_process(dir.path(), &[]).await;
    let page = p.get_json("/consumers/crashy/events?limit=3").await;
    assert_eq!(seqs(&page), vec![8, 9, 10], "resumes at N+1 after SIGKILL");
    assert_eq!(page["cursor"], 7);
    p.kill().await;
}

/// Consumers are bounded: at most `--max-consumers` of them (409 naming
/// `name` beyond; updating one that exists is fine), and each filter value
/// no longer than the event attribute it is compared with (422 naming the
/// field), so a client cannot make the consumer state, written by the
/// writer on every change, grow without bound (300 consumers with 60 KB
/// filters made an 18 MB file).
async fn consumer_count_and_filter_sizes_are_bounded(app: TestApp) {
    for name in ["a", "b", "c"] {
        assert_eq!(put(&app, name, json!({})).await.0, 201);
    }
    let res = app.put("/consumers/d", &json!({})).await;
    let p = res.assert_problem(409);
    assert_eq!(crate::common::http::error_fields(&p), vec!["name"], "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("--max-consumers"),
        "{p}"
    );
    assert_eq!(put(&app, "a", json!({"type": "t"})).await.0, 200);
    assert_eq!(app.delete("/consumers/c").await.status, 204);
    assert_eq!(put(&app, "d", json!({})).await.0, 201);

    for (field, len) in [
        ("type", 257),
        ("type_prefix", 257),
        ("source", 1025),
        ("subject", 1025),
    ] {
        let res = app
            .put("/consumers/a", &json!({ field: "x".repeat(len) }))
            .await;
        let p = res.assert_problem(422);
        assert_eq!(crate::common::http::error_fields(&p), vec![field], "{p}");
    }
    let res = app
        .put("/consumers/a", &json!({"type_prefix": "x".repeat(60_000)}))
        .await;
    res.assert_problem(422);
    let ok =
        json!({"type": "t".repeat(256), "source": "s".repeat(1024), "subject": "u".repeat(1024)});
    assert_eq!(put(&app, "a", ok).await.0, 200);
}

/// An ack costs the writer one small appended line, not a rewrite of every
/// consumer: with 50 consumers holding 2 KB of filters each, 30 acks leave
/// the snapshot alone and add a few hundred bytes each to consumers.log.
/// The log is replayed at start, and a torn last line (a crash mid-append)
/// is cut away.
#[tokio::test]
async fn acks_append_to_a_log_and_replay_after_restart() {
    let app = spawn_app().await;
    app.publish_batch(&events(1, 40, 0)).await;
    let big = json!({"source": "s".repeat(1024), "subject": "u".repeat(1024)});
    for i in 0..50 {
        assert_eq!(put(&app, &format!("c{i}"), big.clone()).await.0, 201);
    }
    assert_eq!(put(&app, "worker", json!({})).await.0, 201);
    let snapshot = app.data_dir().join("consumers.json");
    let log = app.data_dir().join("consumers.log");
    let snap_before = std::fs::read(&snapshot).ok();
    let log_before = std::fs::metadata(&log).expect("consumers.log exists").len();
    for seq in 1..=30 {
        assert_eq!(ack(&app, "worker", seq).await.0, 200);
    }
    let grown = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(
        grown < 30 * 400,
        "30 acks of a consumer without filters appended {grown} bytes"
    );
    assert_eq!(
        std::fs::read(&snapshot).ok(),
        snap_before,
        "the snapshot is not rewritten by acks"
    );

    let dir = app.stop().await;
    // A crash mid-append leaves part of a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("consumers.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"crc":"00000000","rec":{"put":{"na"#).unwrap();
    drop(f);
    let app = crate::common::server::start_app(dir, &[]).await;
    let c = app.get_json("/consumers/worker").await;
    assert_eq!(c["cursor"], 30, "{c}");
    assert_eq!(
        app.get_json("/consumers/c49").await["filter"]["source"],
        "s".repeat(1024)
    );
    // The torn line is gone, and later acks append after the good ones.
    assert_eq!(ack(&app, "worker", 31).await.0, 200);
    let app = app.restart(&[]).await;
    assert_eq!(app.get_json("/consumers/worker").await["cursor"], 31);
}

on_both!(
    create_read_ack_restart_and_read_again_from_the_acked_cursor,
    consumer_count_and_filter_sizes_are_bounded("--max-consumers", "3"),
);
