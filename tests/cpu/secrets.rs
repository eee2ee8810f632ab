//! Nothing served to clients names the data directory's absolute path
//! (files are named relative to it: `segments/…`, `manifest.json`), and the
//! alert webhook's URL, a secret for Slack, never reaches the log.

use std::time::{Duration, Instant};

use crate::common::events::events;
use crate::common::files::{active_segment, flip_pad, rel, remove_backups, DataDir};
use crate::common::http::Reply;
use crate::common::monitor::{expect_repair, start_monitored};
use crate::common::process::spawn_process;

/// Fails naming every place `body` (the answer to `what`) holds `secret`.
fn assert_absent(what: &str, body: &str, secret: &str) {
    assert!(!body.contains(secret), "{what} shows {secret:?}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_name_files_relative_to_the_data_directory() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let dir = app.data_dir().to_path_buf();
    let abs = std::fs::canonicalize(&dir).unwrap();
    let secrets = [dir.display().to_string(), abs.display().to_string()];
    app.publish_batch(&events(1, 40, 64)).await;

    // Damage the active segment: the monitor detects and repairs it.
    let seg = active_segment(&dir);
    let after = app.last_alert_id().await;
    let t0 = Instant::now();
    flip_pad(&seg, 0);
    expect_repair(&app, after, t0, &rel(&seg), "active segment").await;

    // A request failing in the store: backups cannot be written where a
    // file stands in for their directory.
    remove_backups(&dir).await;
    std::fs::write(dir.join("backups"), b"not a directory").unwrap();
    let failed = app.post("/admin/backups", None).await;
    failed.assert_problem(500);

    let mut answers: Vec<(String, Reply)> = vec![("POST /admin/backups".into(), failed)];
    let verify = app.post("/admin/verify", None).await;
    answers.push(("POST /admin/verify".into(), verify));
    for path in [
        "/stats",
        "/health",
        "/health/ready",
        "/alerts",
        "/metrics",
        "/admin/backups",
        "/admin/verify",
        "/events/999999",
        "/nowhere",
    ] {
        answers.push((format!("GET {path}"), app.get(path).await));
    }
    for (what, reply) in &answers {
        for s in &secrets {
            assert_absent(what, &reply.text(), s);
        }
    }
    // The repaired file is still named, relative to the data directory.
    let alerts = app.get("/alerts").await.text();
    assert!(alerts.contains(&rel(&seg)), "{alerts}");
    std::fs::remove_file(dir.join("backups")).unwrap();
    app.stop().await;
}

/// A webhook receiver answering every POST with 500.
async fn refusing_webhook() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let router =
        axum::Router::new().fallback(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

/// Starts a process whose webhook is `url`, with a free-space minimum no
/// disk meets (so a `low_disk` alert is raised at once), and waits for the
/// log line `message` about the webhook failing. Returns its stderr.
async fn webhook_failure_log(url: &str, message: &str) -> String {
    let dir = DataDir::temp();
    let p = spawn_process(
        dir.path(),
        &["--alert-webhook", url, "--min-free-bytes", "1000000GiB"],
    )
    .await;
    let t0 = Instant::now();
    while !p.log().iter().any(|l| l["message"] == message) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no {message:?} in the log:\n{}",
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alerts = p.get("/alerts").await.text();
    assert!(alerts.contains("low_disk"), "{alerts}");
    assert_absent("GET /alerts", &alerts, &dir.path().display().to_string());
    let log = p.stderr_text();
    p.stop().await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_url_never_reaches_the_log() {
    // A receiver that refuses.
    let (addr, task) = refusing_webhook().await;
    let url = format!("http://{addr}/hooks/SECRET123");
    let log = webhook_failure_log(&url, "alert webhook refused the alert").await;
    assert_absent("the log (webhook refusing)", &log, "SECRET123");
    task.abort();

    // A receiver that is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/hooks/SECRET123");
    let log = webhook_failure_log(&url, "alert webhook unreachable").await;
    assert_absent("the log (webhook unreachable)", &log, "SECRET123");
}
