//! Out of file descriptors inside the server's own process: the
//! condition is transient, never poisoning, never damage. This binary
//! holds only this test, because it exhausts the descriptors of the whole
//! test process (other tests would fail meanwhile).
//!
//! Set `TEST_LOG=1` to see the server's log.

#[path = "common/mod.rs"]
mod common;

use std::fs::File;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde_json::json;

use common::server::spawn_app_with;

fn ev(n: u64) -> serde_json::Value {
    json!({"type": "fd.test", "source": "/emfile", "id": format!("e-{n}")})
}

/// Opens files until the process has no descriptor left.
fn exhaust_descriptors() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert!(
                    msgbus::store::fsutil::is_descriptor_exhaustion(&e),
                    "expected EMFILE, got {e}"
                );
                return held;
            }
        }
    }
}

#[tokio::test]
async fn a_seal_without_descriptors_is_postponed_and_nothing_is_poisoned() {
    // A low soft limit keeps the filling cheap; restored at the end.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(1024), hard).unwrap();

    // Every commit seals the segment before it; reads come from the
    // segment files (no recent-events cache) and keep one open at most.
    let app = spawn_app_with(&[
        "--segment-bytes",
        "1",
        "--read-cache-bytes",
        "0",
        "--segment-fd-cache",
        "1",
    ])
    .await;
    // The client's connection is open before the descriptors run out.
    app.publish_ok(&ev(1)).await;
    assert_eq!(app.get("/health/ready").await.status, 200);

    let held = exhaust_descriptors();
    for n in 2..=4 {
        let r = app.publish(&ev(n)).await;
        assert_eq!(
            r.status,
            201,
            "publish {n} with no descriptor left: {}",
            r.text()
        );
    }
    // A read that must open a segment file answers 503 with Retry-After
    // (transient), not 500 and not "damaged".
    let read = app.get("/events/1").await;
    let page = app.get("/events?after=0&limit=10").await;
    let ready = app.get("/health/ready").await;
    let stats = app.get_json("/stats").await;
    let alerts = app.get_json("/alerts").await;
    drop(held);

    for (what, r) in [("GET /events/1", &read), ("GET /events", &page)] {
        assert_eq!(
            r.status,
            503,
            "{what} with no descriptor left: {}",
            r.text()
        );
        assert!(
            r.headers.contains_key("retry-after"),
            "{what}: {:?}",
            r.headers
        );
        let problem: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap_or("")
                .ends_with("too-many-open-files"),
            "{what}: {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains("nothing is damaged"),
            "{what}: {problem}"
        );
    }
    // And once descriptors are back, the same reads succeed.
    let read = app.get("/events/1").await;
    assert_eq!(read.status, 200, "{}", read.text());

    assert_eq!(ready.status, 200, "not read-only: {}", ready.text());
    assert!(stats["writer"]["poisoned"].is_null(), "{stats}");
    assert!(
        alerts.to_string().contains("descriptors"),
        "a descriptors alert is raised: {alerts}"
    );

    // With descriptors back, the postponed seal happens at the next commit.
    let sealed_before = stats["writer"]["segments_sealed"].as_u64().unwrap();
    for n in 5..=6 {
        app.publish_ok(&ev(n)).await;
    }
    let stats = app.get_json("/stats").await;
    assert!(
        stats["writer"]["segments_sealed"].as_u64().unwrap() > sealed_before,
        "{stats}"
    );
    let seqs: Vec<u64> = app.read_all().await.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=6).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    app.stop().await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}
