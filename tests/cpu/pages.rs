//! `--max-page-bytes`: a page of large events stops at the byte cap and
//! the cursor continues from there.

use serde_json::{json, Value};

use crate::common::server::{spawn_app, spawn_app_with};

/// An event of about `kib` KiB.
fn big(n: u64, kib: usize) -> Value {
    json!({"id": format!("big-{n}"), "type": "t.big", "source": "/big",
           "data": {"n": n, "pad": "x".repeat(kib << 10)}})
}

fn seqs_and_bytes(page: &Value) -> (Vec<u64>, usize) {
    let events = page["events"].as_array().expect("events array");
    let seqs = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let bytes = events.iter().map(|e| e["event"].to_string().len()).sum();
    (seqs, bytes)
}

/// Reads every page after 0 with `query`, checking each against `cap`.
async fn read_capped(api: &crate::common::http::Api, query: &str, cap: usize) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get_json(&format!("/events?after={after}&limit=1000{query}"))
            .await;
        let (seqs, bytes) = seqs_and_bytes(&page);
        if seqs.is_empty() {
            return pages;
        }
        assert!(
            seqs.len() == 1 || bytes <= cap,
            "a page of {} events holds {bytes} bytes, over the {cap}-byte cap",
            seqs.len()
        );
        after = page["next_after"].as_u64().unwrap();
        assert_eq!(
            after,
            *seqs.last().unwrap(),
            "the cursor continues after the last event sent"
        );
        pages.push(seqs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_events_stop_at_the_default_byte_cap() {
    let app = spawn_app().await;
    for n in 1..=7 {
        app.publish_ok(&big(n, 900)).await;
    }
    let pages = read_capped(&app, "", 4 << 20).await;
    let all: Vec<u64> = pages.concat();
    assert_eq!(
        all,
        (1..=7).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(
        pages.len() >= 2,
        "seven 900 KiB events do not fit one 4 MiB page: {pages:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_holds_at_least_one_event_and_consumers_are_capped_too() {
    let app = spawn_app_with(&["--max-page-bytes", "300KiB"]).await;
    for n in 1..=4 {
        app.publish_ok(&big(n, 200)).await;
    }
    // 200 KiB events: one per 300 KiB page.
    let pages = read_capped(&app, "&type_prefix=t.", 300 << 10).await;
    assert_eq!(pages, vec![vec![1], vec![2], vec![3], vec![4]]);
    // A cap below one event still moves the cursor.
    let app = app.restart(&["--max-page-bytes", "1"]).await;
    let pages = read_capped(&app, "", 1).await;
    assert_eq!(pages.len(), 4);
    // Consumer reads are capped by the same setting.
    let r = app
        .put("/consumers/c1", &json!({"start": "earliest"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let page = app.get_json("/consumers/c1/events?limit=1000").await;
    let (seqs, _) = seqs_and_bytes(&page);
    assert_eq!(seqs, vec![1]);
    assert_eq!(page["next_after"], 1);
    app.stop().await;
}
