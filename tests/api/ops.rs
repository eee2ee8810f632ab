//! Operations endpoints: stats, health probes, metrics, API docs.

use serde_json::{json, Value};

use crate::common::files::first_segment;
use crate::common::server::spawn_app;

#[tokio::test]
async fn stats_reflect_published_events() {
    let app = spawn_app().await;
    let empty = app.get_json("/stats").await;
    assert_eq!(empty["events"]["total"], 0);
    assert_eq!(empty["events"]["last_seq"], 0);

    for (ty, source) in [("t.a", "/x"), ("t.a", "/y"), ("t.b", "/x")] {
        app.publish_ok(&json!({"type": ty, "source": source})).await;
    }
    let res = app
        .batch(&json!([
            {"type": "t.c", "source": "/z", "id": "1"},
            {"type": "t.a", "source": "/z", "id": "2"}
        ]))
        .await;
    assert_eq!(res.status, 201);
    // A duplicate is counted as such, not stored.
    assert_eq!(
        app.publish(&json!({"type": "t.c", "source": "/z", "id": "1"}))
            .await
            .status,
        200
    );

    let stats = app.get_json("/stats").await;
    let events = &stats["events"];
    assert_eq!(events["total"], 5, "{stats}");
    assert_eq!(events["first_seq"], 1);
    assert_eq!(events["last_seq"], 5);
    assert_eq!(events["by_type"], json!({"t.a": 3, "t.b": 1, "t.c": 1}));
    assert_eq!(events["by_source"], json!({"/x": 2, "/y": 1, "/z": 2}));

    let writer = &stats["writer"];
    let n = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(n(&writer["fsyncs"]) >= 1.0, "{stats}");
    assert!(n(&writer["batches"]) >= 1.0, "{stats}");
    assert!(
        n(&writer["fsyncs"]) <= 4.0,
        "one fsync per commit at most: {stats}"
    );
    assert_eq!(writer["events_written"], 5);
    assert_eq!(writer["duplicates"], 1);
    assert_eq!(writer["alive"], true);
    assert_eq!(writer["poisoned"], Value::Null);
    assert!(n(&writer["events_per_fsync"]) >= 1.0);
    assert!(
        n(&writer["max_batch_events"]) >= 2.0,
        "the batch was one commit"
    );

    let store = &stats["store"];
    assert!(n(&store["bytes"]) > 0.0);
    assert_eq!(store["segments"], 1);
    assert!(
        store.get("data_dir").is_none(),
        "the data directory's path is not shown to clients: {stats}"
    );
    assert_eq!(store["recovered_torn_tail"], false);
    let on_disk = std::fs::metadata(first_segment(app.data_dir()))
        .unwrap()
        .len();
    assert_eq!(
        n(&store["bytes"]) as u64,
        on_disk,
        "store bytes = file size"
    );
    assert!(n(&stats["uptime_seconds"]) >= 0.0);
}

#[tokio::test]
async fn health_probes_are_green_on_a_healthy_store() {
    let app = spawn_app().await;
    assert!(app.addr.ip().is_loopback() && app.addr.port() != 0);
    let live = app.get_json("/health/live").await;
    assert_eq!(live["status"], "live");
    let ready = app.get_json("/health/ready").await;
    assert_eq!(ready["status"], "ready");
    app.publish_ok(&json!({"type": "t", "source": "/s"})).await;
    let health = app.get_json("/health").await;
    assert_eq!(health["status"], "ready");
    assert_eq!(health["writer_alive"], true);
    assert_eq!(health["last_seq"], 1);
    assert_eq!(health["poisoned"], Value::Null);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    app.publish_ok(&json!({"type": "t.\"q\"", "source": "/s"}))
        .await;
    app.publish_ok(&json!({"type": "t.m", "source": "/s"}))
        .await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(value("msgbus_events_stored"), 2.0);
    assert_eq!(value("msgbus_last_seq"), 2.0);
    assert!(value("msgbus_writer_fsyncs_total") >= 1.0);
    assert_eq!(value("msgbus_writer_alive"), 1.0);
    assert_eq!(value("msgbus_writer_poisoned"), 0.0);
    assert!(text.contains("# TYPE msgbus_events_stored gauge"));
    assert!(
        text.contains(r#"msgbus_events_by_type{type="t.m"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"msgbus_events_by_type{type="t.\"q\""} 1"#),
        "label values are escaped: {text}"
    );
}

#[tokio::test]
async fn openapi_and_docs_are_served() {
    let app = spawn_app().await;
    let doc = app.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/events",
        "/events/batch",
        "/events/{seq}",
        "/stats",
        "/health/ready",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let res = app.get("/docs/").await;
    assert_eq!(res.status, 200);
    let html = res.text();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
}
