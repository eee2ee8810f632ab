//! `/stats` and `/metrics` show the busiest types and sources plus one
//! `other`, however many distinct ones are stored.

use serde_json::{json, Value};

use crate::common::server::{spawn_app, spawn_app_with};

/// 3,000 events of 3,000 distinct types and sources, and 50 more of `hot`.
async fn seed(api: &crate::common::http::Api) {
    for chunk in 0..3u64 {
        let events: Vec<Value> = (0..1000u64)
            .map(|i| json!({"type": format!("t.{}", chunk * 1000 + i), "source": format!("/s/{}", chunk * 1000 + i)}))
            .collect();
        api.publish_batch(&events).await;
    }
    let hot: Vec<Value> = (0..50)
        .map(|_| json!({"type": "hot", "source": "/hot"}))
        .collect();
    api.publish_batch(&hot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_and_source_series_are_capped_with_an_other() {
    let app = spawn_app().await;
    seed(&app).await;
    let stats = app.get_json("/stats").await;
    for key in ["by_type", "by_source"] {
        let m = stats["events"][key].as_object().unwrap();
        assert_eq!(
            m.len(),
            101,
            "{key}: the busiest 100 plus other, not {}",
            m.len()
        );
        let hot = if key == "by_type" { "hot" } else { "/hot" };
        assert_eq!(m[hot], 50, "{key}: the busiest is kept");
        let total: u64 = m.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(total, 3050, "{key}: other sums the rest");
        assert_eq!(m["other"], 3000 - 99);
    }
    let metrics = app.get("/metrics").await.text();
    let by_type = metrics
        .lines()
        .filter(|l| l.starts_with("msgbus_events_by_type{"))
        .count();
    assert_eq!(by_type, 101, "metrics series per type");
    assert!(
        metrics.len() < 64 << 10,
        "/metrics stays small: {} bytes",
        metrics.len()
    );
    app.stop().await;

    let app = spawn_app_with(&["--max-label-series", "2"]).await;
    seed(&app).await;
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["events"]["by_type"].as_object().unwrap().len(), 3);
    app.stop().await;
}
