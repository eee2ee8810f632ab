//! The index's strings shrink with retention: unique subjects, types and
//! sources over a store that keeps about 1,000 events do not accumulate.

use serde_json::{json, Value};

use crate::common::note;
use crate::common::server::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_strings_are_forgotten_with_the_events_retention_deletes() {
    let app = spawn_app_with(&["--retention-max-events", "1000", "--segment-bytes", "64KiB"]).await;
    let mut sizes = Vec::new();
    for batch in 0..30u64 {
        let events: Vec<Value> = (0..1000u64)
            .map(|i| {
                let n = batch * 1000 + i;
                json!({"type": format!("t.{n}"), "source": format!("/s/{n}"),
                       "subject": format!("subject-{n}-{}", "y".repeat(40))})
            })
            .collect();
        app.publish_batch(&events).await;
        if batch >= 5 {
            let stats = app.get_json("/stats").await;
            sizes.push(
                stats["store"]["interned_bytes"]
                    .as_u64()
                    .expect("interned_bytes"),
            );
        }
    }
    let stats = app.get_json("/stats").await;
    let retained = stats["events"]["total"].as_u64().unwrap();
    let d = &stats["store"]["distinct"];
    note(format!(
        "retained {retained}, distinct {d}, interned bytes after each batch {sizes:?}"
    ));
    assert!(
        retained < 30_000,
        "retention deleted events: {retained} retained"
    );
    for kind in ["types", "sources", "subjects"] {
        let n = d[kind]
            .as_u64()
            .unwrap_or_else(|| panic!("distinct.{kind} in {stats}"));
        assert_eq!(
            n, retained,
            "one distinct {kind} per retained event, not per event ever stored"
        );
    }
    let (first, last) = (sizes[0], *sizes.last().unwrap());
    assert!(
        last <= first * 2,
        "interned bytes stay flat while 25,000 more unique strings pass: {first} -> {last}"
    );
    app.stop().await;
}
