//! Per-address request rates (`--rate`): beyond the burst, 429 with
//! `Retry-After` and nothing done; health probes never refused; the
//! address gets its tokens back with time.

use std::time::Duration;

use serde_json::json;

use crate::common::server::{spawn_app, spawn_app_with};

#[tokio::test]
async fn requests_over_the_rate_get_429_with_retry_after_and_store_nothing() {
    // 5 a second: a burst of 10, then one every 200 ms.
    let app = spawn_app_with(&["--rate", "5/s"]).await;
    let (mut ok, mut refused) = (0, Vec::new());
    let started = std::time::Instant::now();
    for n in 0..30 {
        let ev = json!({"type": "rate.test", "source": "/rate", "id": format!("r-{n}")});
        let r = app.publish(&ev).await;
        match r.status {
            201 => ok += 1,
            429 => refused.push(r),
            other => panic!("publish {n}: {other} {}", r.text()),
        }
    }
    // The burst of 10, plus what refilled while the requests ran (a slow
    // machine takes longer and gets more).
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (10..=10 + refilled + 1).contains(&ok),
        "{ok} accepted in {:?}",
        started.elapsed()
    );
    assert!(!refused.is_empty());
    for r in &refused {
        let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait), "Retry-After {wait}");
        let p: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(p["type"].as_str().unwrap().ends_with("rate-limited"), "{p}");
        assert!(p["detail"].as_str().unwrap().contains("5/s"), "{p}");
    }
    // Probes are never refused, even now.
    for _ in 0..20 {
        assert_eq!(app.get("/health/live").await.status, 200);
        assert_eq!(app.get("/health/ready").await.status, 200);
    }
    // Nothing refused was stored.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = app.get_json("/events?limit=1000").await;
    let stored = page["events"].as_array().unwrap().len();
    assert_eq!(stored, ok, "exactly the accepted publishes are stored");
    // The refusals are counted.
    let metrics = app.get("/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("msgbus_rate_limited_total "))
        .expect("the counter is exported");
    let counted: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(counted >= refused.len() as f64, "{line}");
    app.stop().await;
}

#[tokio::test]
async fn without_a_rate_nothing_is_refused() {
    let app = spawn_app().await;
    for _ in 0..300 {
        let r = app.get("/stats").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    app.stop().await;
}

/// A client that keeps sending while refused is slowed down: its 429s are
/// held before they are answered (up to a second each), so eight
/// connections hammering a 5/s limit for three seconds get a few dozen
/// answers, not thousands. Before the hold they got every refusal at once:
/// thousands of 429s, each authenticated, routed and answered on the
/// server's CPU. A slower machine only lowers the count.
#[tokio::test]
async fn clients_that_ignore_retry_after_get_their_refusals_slowly() {
    let app = spawn_app_with(&["--rate", "5/s"]).await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = app.api.clone();
        tasks.push(tokio::spawn(async move {
            let (mut answers, mut slowest_refusal) = (0u32, Duration::ZERO);
            while std::time::Instant::now() < until {
                let sent = std::time::Instant::now();
                let r = api.get("/stats").await;
                answers += 1;
                match r.status {
                    200 => {}
                    429 => {
                        slowest_refusal = slowest_refusal.max(sent.elapsed());
                        // Retry-After still says when a request is due,
                        // not how long the answer was held.
                        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
                        assert!((1..=2).contains(&wait), "Retry-After {wait}");
                    }
                    other => panic!("{other} {}", r.text()),
                }
            }
            (answers, slowest_refusal)
        }));
    }
    let (mut answers, mut slowest) = (0, Duration::ZERO);
    for t in tasks {
        let (a, s) = t.await.unwrap();
        answers += a;
        slowest = slowest.max(s);
    }
    assert!(
        answers < 300,
        "{answers} answers in 3 s: refusals were not held"
    );
    assert!(
        slowest >= Duration::from_millis(300),
        "slowest 429 {slowest:?}"
    );
    // Probes are never held.
    let sent = std::time::Instant::now();
    assert_eq!(app.get("/health/live").await.status, 200);
    assert!(sent.elapsed() < Duration::from_secs(5));
    app.stop().await;
}
