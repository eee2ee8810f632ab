//! Read byte rates (`--read-rate`, a token's own `read_rate`): the bytes of
//! event reads (`GET /events` pages, `GET /events/{seq}`, consumer reads)
//! are charged to the token (or, without one, the address); once its
//! bucket is in debt, reads get 429 with `Retry-After` while other tokens
//! read on. Every limit here is far below what the loops read, so no
//! assertion depends on how fast the machine is.

use serde_json::{json, Value};

use crate::common::events::events;
use crate::common::files::DataDir;
use crate::common::http::metric;
use crate::common::http::{error_fields, Api};
use crate::common::process::create_token;
use crate::common::server::{spawn_app_with, start_app};
use crate::common::sse::SseReader;

/// Pages of at most 64 KiB: the burst of a 1 KiB/s read rate is one page.
const PAGE: &[&str] = &["--max-page-bytes", "64KiB"];

/// Publishes 64 events of about 8 KiB (about eight 64 KiB pages).
async fn fill(api: &Api) {
    for chunk in events(1, 64, 8 * 1024).chunks(16) {
        api.publish_batch(chunk).await;
    }
}

/// Checks a read-rate refusal: 429, `Retry-After`, problem+json naming
/// the limit.
fn assert_read_refusal(r: &crate::common::http::Reply, limit: &str, whose: &str) -> Value {
    let p = r.assert_problem_type(429, "rate-limited", "a read over the read rate");
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(wait >= 1, "Retry-After {wait}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(limit), "{p}");
    assert!(detail.contains("read"), "{p}");
    assert!(detail.contains(whose), "{p}");
    p
}

#[tokio::test]
async fn a_token_over_its_read_rate_gets_429_while_an_unlimited_token_reads_on() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let publisher = create_token(dir.path(), "agent", "publish", &[]).await;
    let heavy = create_token(dir.path(), "heavy", "read", &["--read-rate", "1KiB/s"]).await;
    let free = create_token(dir.path(), "free", "read", &[]).await;
    let app = start_app(dir, PAGE).await;
    let (admin, heavy, free) = (
        app.with_token(&admin),
        app.with_token(&heavy),
        app.with_token(&free),
    );
    fill(&app.with_token(&publisher)).await;
    // The token lists its read rate.
    let listed = admin.get_json("/admin/tokens").await;
    let row = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "heavy")
        .cloned()
        .unwrap();
    assert_eq!(row["read_rate"], "1KiB/s", "{listed}");
    // Online too: a token made with a read rate, and a rate that is none.
    let r = admin
        .post(
            "/admin/tokens",
            Some(&json!({"name": "dash", "role": "read", "read_rate": "2MiB/s"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let listed = admin.get("/admin/tokens").await.text();
    assert!(listed.contains("\"read_rate\":\"2MiB/s\""), "{listed}");
    let bad = admin
        .post(
            "/admin/tokens",
            Some(&json!({"name": "fast", "role": "read", "read_rate": "fast"})),
        )
        .await;
    let p = bad.assert_problem(422);
    assert_eq!(error_fields(&p), ["read_rate"], "{p}");
    // Both read the same full pages, turn by turn: 20 pages are 1.3 MB,
    // twenty minutes' worth of 1 KiB/s.
    let (mut served, mut refused) = (0, Vec::new());
    for n in 0..20 {
        let r = heavy.get("/events?limit=1000").await;
        match r.status {
            200 => served += 1,
            429 => refused.push(r),
            other => panic!("page {n}: {other} {}", r.text()),
        }
        let f = free.get("/events?limit=1000").await;
        assert_eq!(f.status, 200, "the unlimited token, page {n}: {}", f.text());
    }
    // The burst (one page) and the page that went into debt; then refused.
    assert!((1..=3).contains(&served), "{served} pages served");
    assert!(!refused.is_empty());
    for r in &refused {
        assert_read_refusal(r, "1KiB/s", "this token");
    }
    // Reads of one event and consumer reads are refused too...
    assert_read_refusal(&heavy.get("/events/1").await, "1KiB/s", "this token");
    let c = heavy.put("/consumers/worker", &json!({})).await;
    assert!(c.status == 201 || c.status == 200, "{}", c.text());
    assert_read_refusal(
        &heavy.get("/consumers/worker/events").await,
        "1KiB/s",
        "this token",
    );
    // ...while the other token reads them.
    assert_eq!(free.get("/events/1").await.status, 200);
    // The refusals and the bytes charged are counted.
    let metrics = free.get("/metrics").await.text();
    let counted = metric(&metrics, "msgbus_read_rate_limited_total");
    assert!(counted >= refused.len() as f64 + 2.0, "{counted}");
    let charged = metric(&metrics, "msgbus_read_bytes_charged_total");
    assert!(charged >= (served * 32 * 1024) as f64, "{charged}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_file_without_read_rate_loads_next_to_one_with_it() {
    let dir = DataDir::temp();
    let publisher = create_token(dir.path(), "agent", "publish", &[]).await;
    let old = create_token(dir.path(), "old", "read", &["--rate", "1000/s"]).await;
    let capped = create_token(dir.path(), "capped", "read", &[]).await;
    // The file as an older msgbus wrote it (no read_rate anywhere), with
    // a read rate added by hand to one record.
    let path = dir.path().join("auth/tokens.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(!file.to_string().contains("read_rate"), "{file}");
    for t in file["tokens"].as_array_mut().unwrap() {
        if t["name"] == "capped" {
            t["read_rate"] = json!("1KiB/s");
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let app = start_app(dir, PAGE).await;
    let (old, capped) = (app.with_token(&old), app.with_token(&capped));
    fill(&app.with_token(&publisher)).await;
    let mut refused = None;
    for n in 0..20 {
        assert_eq!(old.get("/events?limit=1000").await.status, 200, "page {n}");
        let r = capped.get("/events?limit=1000").await;
        if r.status == 429 {
            refused = Some(r);
        }
    }
    let r = refused.expect("the hand-edited read_rate applies");
    assert_read_refusal(&r, "1KiB/s", "this token");
    app.stop().await;
}

#[tokio::test]
async fn read_rate_applies_per_address_without_tokens_and_not_to_streams_or_publishes() {
    let app = spawn_app_with(&["--read-rate", "1KiB/s", "--max-page-bytes", "64KiB"]).await;
    fill(&app).await;
    let mut refused = None;
    for _ in 0..20 {
        let r = app.get("/events?limit=1000").await;
        match r.status {
            200 => {}
            429 => refused = Some(r),
            other => panic!("{other} {}", r.text()),
        }
    }
    let r = refused.expect("reads beyond --read-rate are refused");
    let p = assert_read_refusal(&r, "1KiB/s", "this address");
    assert!(p["detail"].as_str().unwrap().contains("--read-rate"), "{p}");
    // The address may still publish, and open a stream (streams are not
    // charged: their bytes follow the publish rate).
    app.publish_ok(&events(100, 1, 10)[0]).await;
    let _stream = SseReader::open(&app.api, "/events/stream", None).await;
    app.stop().await;
}
