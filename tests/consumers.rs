//! Durable consumers: create, read, ack, list, delete; acks survive a
//! restart and a SIGKILL after their 200; wrong acks are problems.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{event, events, get_json, Process, Server};

async fn put(c: &reqwest::Client, base: &str, name: &str, body: Value) -> (u16, Value) {
    let res = c
        .put(format!("{base}/consumers/{name}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn ack(c: &reqwest::Client, base: &str, name: &str, seq: u64) -> (u16, Value) {
    let res = c
        .post(format!("{base}/consumers/{name}/ack"))
        .json(&json!({ "seq": seq }))
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn create_read_ack_restart_and_read_again_from_the_acked_cursor() {
    let dir = support::tempdir();
    let s = Server::start(dir.path(), &[]).await;
    let mut batch = Vec::new();
    for n in 1..=40u64 {
        let ty = if n % 2 == 0 {
            "job.created"
        } else {
            "job.noise"
        };
        batch.push(event(n, ty, "/jobs", 0));
    }
    s.publish(&batch).await;

    let (status, c) = put(
        &s.client,
        &s.base,
        "worker-1",
        json!({"type": "job.created"}),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["cursor"], 0);
    assert_eq!(c["lag"], 40);
    assert_eq!(c["filter"], json!({"type": "job.created"}));

    let (_, page) = s.get("/consumers/worker-1/events?limit=5").await;
    assert_eq!(seqs(&page), vec![2, 4, 6, 8, 10]);
    assert_eq!(page["cursor"], 0);
    // Reading does not move the cursor: the same page again (at-least-once).
    let (_, again) = s.get("/consumers/worker-1/events?limit=5").await;
    assert_eq!(seqs(&again), vec![2, 4, 6, 8, 10]);

    let (status, acked) = ack(&s.client, &s.base, "worker-1", 10).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["cursor"], 10);
    assert_eq!(acked["lag"], 30);
    let (_, page) = s.get("/consumers/worker-1/events?limit=3").await;
    assert_eq!(seqs(&page), vec![12, 14, 16]);

    // Wrong acks.
    let (status, p) = ack(&s.client, &s.base, "worker-1", 9).await;
    assert_eq!(
        (status, &p["type"]),
        (409, &json!("urn:msgbus:problem:ack-backwards"))
    );
    let (status, p) = ack(&s.client, &s.base, "worker-1", 41).await;
    assert_eq!(
        (status, &p["type"]),
        (422, &json!("urn:msgbus:problem:past-head"))
    );
    let (status, _) = ack(&s.client, &s.base, "nobody", 1).await;
    assert_eq!(status, 404);
    let (status, _) = ack(&s.client, &s.base, "worker-1", 10).await;
    assert_eq!(status, 200, "re-acking the cursor is harmless");
    let res = s
        .client
        .post(s.url("/consumers/worker-1/ack"))
        .json(&json!({"seq": "ten"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    // Start positions, list, lag in /stats.
    let (status, latest) = put(&s.client, &s.base, "tail", json!({"start": "latest"})).await;
    assert_eq!((status, &latest["cursor"]), (201, &json!(40)));
    let (status, at) = put(&s.client, &s.base, "from-30", json!({"start": 30})).await;
    assert_eq!((status, &at["cursor"]), (201, &json!(29)));
    let (status, p) = put(&s.client, &s.base, "bad name!", json!({})).await;
    assert_eq!((status, &p["errors"][0]["field"]), (422, &json!("name")));
    let (status, p) = put(&s.client, &s.base, "x", json!({"start": 99})).await;
    assert_eq!(status, 422, "{p}");
    let (status, p) = put(&s.client, &s.base, "x", json!({"typ": "a"})).await;
    assert_eq!((status, &p["errors"][0]["field"]), (422, &json!("typ")));

    let (_, list) = s.get("/consumers").await;
    let names: Vec<&str> = list["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["from-30", "tail", "worker-1"]);
    let (_, stats) = s.get("/stats").await;
    assert_eq!(stats["consumers"]["lag"]["worker-1"], 30);
    assert_eq!(stats["consumers"]["max_lag"], 30);

    // Long-poll: wakes when a matching event is published.
    let waiter = {
        let (c, url) = (s.client.clone(), s.url("/consumers/tail/events?wait=10"));
        tokio::spawn(async move { get_json(&c, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    s.publish(&events(1000, 1, 0)).await;
    let (status, page) = waiter.await.unwrap();
    assert_eq!((status, seqs(&page)), (200, vec![41]));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Updating the filters keeps the cursor; delete.
    let (status, c) = put(&s.client, &s.base, "tail", json!({"source": "/jobs"})).await;
    assert_eq!((status, &c["cursor"]), (200, &json!(40)));
    let res = s
        .client
        .delete(s.url("/consumers/from-30"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, _) = s.get("/consumers/from-30").await;
    assert_eq!(status, 404);
    s.stop().await;

    // After a restart: the acked cursor, the filters and the deletion hold.
    let s = Server::start(dir.path(), &[]).await;
    let (status, c) = s.get("/consumers/worker-1").await;
    assert_eq!((status, &c["cursor"]), (200, &json!(10)));
    assert_eq!(c["filter"]["type"], "job.created");
    let (_, page) = s.get("/consumers/worker-1/events?limit=2").await;
    assert_eq!(seqs(&page), vec![12, 14]);
    let (status, _) = s.get("/consumers/from-30").await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test]
async fn an_ack_answered_200_survives_sigkill() {
    let dir = support::tempdir();
    let p = Process::start(dir.path()).await;
    let c = support::client();
    support::publish(&c, &p.base, &events(1, 20, 10)).await;
    let (status, _) = put(&c, &p.base, "crashy", json!({})).await;
    assert_eq!(status, 201);
    let (_, page) = get_json(&c, &format!("{}/consumers/crashy/events?limit=7", p.base)).await;
    assert_eq!(seqs(&page), (1..=7).collect::<Vec<u64>>());
    let (status, _) = ack(&c, &p.base, "crashy", 7).await;
    assert_eq!(status, 200);
    p.kill9().await;

    let p = Process::start(dir.path()).await;
    let (_, page) = get_json(&c, &format!("{}/consumers/crashy/events?limit=3", p.base)).await;
    assert_eq!(seqs(&page), vec![8, 9, 10], "resumes at N+1 after SIGKILL");
    assert_eq!(page["cursor"], 7);
    p.kill9().await;
}
