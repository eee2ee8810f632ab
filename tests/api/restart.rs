//! Events survive an orderly restart, across sealed segments too.

use serde_json::json;

use crate::common::files::segment_files;
use crate::common::server::{spawn_app, spawn_app_with};

#[tokio::test]
async fn events_survive_a_restart_byte_for_byte() {
    let app = spawn_app().await;
    for i in 1..=5 {
        let res = app
            .publish_ok(&json!({
                "type": format!("t.{}", i % 2),
                "source": "/restart",
                "subject": format!("s{i}"),
                "data": {"i": i, "text": "ü"}
            }))
            .await;
        assert_eq!(res["seq"], i);
    }
    let before = app.get("/events").await.body;
    let one_before = app.get("/events/3").await.body;

    let app = app.restart(&[]).await;
    let after = app.get("/events").await.body;
    assert_eq!(after, before, "the page reads back byte-identical");
    assert_eq!(app.get("/events/3").await.body, one_before);

    // Filters work on the rebuilt index, and numbering continues.
    let page = app.get_json("/events?type=t.0").await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 4]);
    let res = app
        .publish_ok(&json!({"type": "t.new", "source": "/restart"}))
        .await;
    assert_eq!(res["seq"], 6);
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["events"]["total"], 6);
    assert_eq!(stats["events"]["last_seq"], 6);
}

#[tokio::test]
async fn sealed_segments_survive_restarts() {
    // Tiny segments so that 40 events fill several of them.
    let args = ["--segment-bytes", "1KiB"];
    let app = spawn_app_with(&args).await;
    let mut expected = Vec::new();
    for i in 1..=40u64 {
        let ev = json!({"type": "t.seg", "source": "/seg", "id": format!("e{i}"), "data": {"i": i, "pad": "x".repeat(40)}});
        let res = app.publish_ok(&ev).await;
        assert_eq!(res["seq"], i);
        expected.push(ev);
    }
    let before = app.read_all().await;
    assert_eq!(before.len(), 40);
    let segments_on_disk = segment_files(app.data_dir()).len();
    assert!(
        segments_on_disk > 2,
        "with 1 KiB segments, 40 events need several files; found {segments_on_disk}"
    );

    let app = app.restart(&args).await;
    let after = app.read_all().await;
    assert_eq!(after, before);
    for (i, (seq, ev)) in after.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(ev["id"], expected[i]["id"]);
        assert_eq!(ev["data"], expected[i]["data"]);
    }
    // Reading from the middle of an old segment, and a second restart.
    let page = app.get_json("/events?after=7&limit=3").await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    // Duplicates are found in sealed segments, read from disk.
    for i in [1u64, 20, 40] {
        let res = app
            .publish(&json!({"type": "t.seg", "source": "/seg", "id": format!("e{i}")}))
            .await;
        assert_eq!(res.status, 200, "e{i} is stored already");
        assert_eq!(res.json()["seq"], i);
    }
    app.publish_ok(&json!({"type": "t.seg", "source": "/seg", "id": "e41"}))
        .await;
    let app = app.restart(&args).await;
    let all = app.read_all().await;
    assert_eq!(all.len(), 41);
    assert_eq!(all[40].1["id"], "e41");
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["events"]["total"], 41);
    assert!(stats["store"]["segments"].as_u64().unwrap() > 2, "{stats}");
}

#[tokio::test]
async fn reads_come_from_disk_without_a_read_cache() {
    let app = spawn_app_with(&["--read-cache-bytes", "0", "--segment-bytes", "1KiB"]).await;
    for i in 1..=30u64 {
        let ev = json!({"type": "t.disk", "source": "/disk", "id": format!("p{i}"), "data": "y".repeat(50)});
        let res = app.publish_ok(&ev).await;
        assert_eq!(res["seq"], i);
        // Just written, read back through the segment files.
        let one = app.get_json(&format!("/events/{i}")).await;
        assert_eq!(one["event"]["id"], format!("p{i}"));
        assert_eq!(one["event"]["data"], ev["data"]);
    }
    let all = app.read_all().await;
    assert_eq!(all.len(), 30);
    for (i, (seq, ev)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(ev["id"], format!("p{}", i + 1));
    }
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["store"]["read_cache_bytes"], 0, "{stats}");
    assert!(stats["store"]["segments"].as_u64().unwrap() > 2, "{stats}");
}
