//! Real processes: the data directory lock and SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::files::DataDir;
use crate::common::process::{run_expecting_exit, spawn_process};

#[tokio::test]
async fn a_second_instance_on_the_same_data_dir_is_refused() {
    let dir = DataDir::temp();
    let first = spawn_process(dir.path(), &[]).await;
    assert!(
        first.addr.port() != 0,
        "the log line carries the bound port"
    );
    first
        .publish_ok(&json!({"type": "t.lock", "source": "/lock"}))
        .await;

    let second = run_expecting_exit(dir.path(), &[], Duration::from_secs(10)).await;
    assert!(
        !second.status.success(),
        "the second instance must fail; stderr:\n{}",
        second.stderr
    );
    // "At once" means it does not wait for the lock; 3 s leaves room for
    // starting a debug build on a busy 2-core machine.
    assert!(
        second.elapsed < Duration::from_secs(3),
        "the second instance must exit at once, took {:?}",
        second.elapsed
    );
    let dir_name = dir.path().display().to_string();
    assert!(
        second.stderr.contains(&dir_name),
        "stderr names the directory {dir_name}:\n{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("another msgbus instance")
            || second.stderr.contains("another instance"),
        "stderr says another instance holds it:\n{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains("msgbus listening"),
        "it never listened:\n{}",
        second.stderr
    );

    // The first instance is unharmed.
    assert_eq!(first.get("/health/ready").await.status, 200);
    first
        .publish_ok(&json!({"type": "t.lock", "source": "/lock"}))
        .await;
    assert_eq!(first.read_all().await.len(), 2);
    first.kill().await;

    // Once the holder is gone, the directory can be opened again.
    let third = spawn_process(dir.path(), &[]).await;
    assert_eq!(third.read_all().await.len(), 2);
    third.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_ends_long_polls() {
    let dir = DataDir::temp();
    // A drain timeout longer than the 10 s we allow: if the long-poll held
    // the drain, the exit would come too late.
    let mut proc_ = spawn_process(dir.path(), &["--shutdown-timeout", "30s"]).await;
    let published = proc_
        .publish_ok(&json!({"type": "t.term", "source": "/term", "id": "before"}))
        .await;
    assert_eq!(published["seq"], 1);

    // A long-poll that would wait the full minute.
    let api = proc_.api.clone();
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let res = api
            .client
            .get(api.url("/events?after=1&wait=60"))
            .send()
            .await;
        let outcome = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                (Some(status), r.text().await.ok())
            }
            Err(_) => (None, None),
        };
        (outcome, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long-poll is in progress");

    let started = Instant::now();
    let status = proc_.terminate(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}; stderr:\n{}",
        proc_.stderr_text()
    );
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}; a long-poll must not hold shutdown"
    );

    let ((status, body), poll_took) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll ended with the server")
        .unwrap();
    assert!(poll_took < Duration::from_secs(15), "{poll_took:?}");
    // Shutdown wakes long-polls: they answer (an empty page) instead of
    // being cut off.
    assert_eq!(status, Some(200), "long-poll answer: {body:?}");
    let page: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(page["events"], json!([]));

    // The log says it stopped in order, and the event is still there.
    let log = proc_.stderr_text();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("msgbus stopped"), "{log}");
    let again = spawn_process(dir.path(), &[]).await;
    let all = again.read_all().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1["id"], "before");
    again.kill().await;
}
