//! `msgbus import`: the predecessor's file (count, mapping, a broken record
//! named by its index, idempotent re-import), `--strict` and the exit
//! codes 0/1/2, a token in online mode, and offline mode refused while a
//! server holds the data directory.

use serde_json::Value;

use crate::common::files::DataDir;
use crate::common::process::{create_token, spawn_process};
use crate::{code, run, sample};

#[tokio::test]
async fn the_predecessor_file_is_mapped_reported_and_imported_once() {
    let dir = DataDir::temp();
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let file = sample();
    let file = file.to_str().unwrap();
    let out = run(&["import", "--url", &url, file], &[]).await;
    // One broken record: reported with its index and reason, the rest stored.
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(out.stderr.contains("index 40"), "{}", out.stderr);
    assert!(out.stderr.contains("timestamp"), "{}", out.stderr);
    assert!(out.stderr.contains("40 stored"), "{}", out.stderr);
    let events = server.read_all().await;
    assert_eq!(events.len(), 40);
    let by_id = |id: &str| -> Value {
        events
            .iter()
            .find(|(_, e)| e["id"] == id)
            .unwrap_or_else(|| panic!("no event {id}"))
            .1
            .clone()
    };
    let first = by_id("evt-1000");
    assert_eq!(first["type"], "story_updated");
    assert_eq!(first["source"], "qa");
    assert_eq!(
        first["time"], "2025-01-25T09:00:00Z",
        "no zone: read as UTC"
    );
    assert_eq!(first["data"]["story"], "S-100");
    assert_eq!(
        by_id("evt-1005")["data"]["story"],
        "S-105",
        "payload -> data"
    );
    assert_eq!(
        by_id("evt-1006")["source"],
        "developer",
        "source_agent -> source"
    );
    // Order kept: seq order is file order.
    assert_eq!(events[0].1["id"], "evt-1000");
    // Index 4 has no id: one from its content, the same on every import.
    let no_id = &events[4].1;
    assert_eq!(no_id["data"]["story"], "S-104");
    assert!(no_id["id"].as_str().unwrap().starts_with("imp-"), "{no_id}");

    let again = run(&["import", "--url", &url, file], &[]).await;
    assert_eq!(code(&again), 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("0 stored, 40 already there"),
        "{}",
        again.stderr
    );
    assert_eq!(
        server.read_all().await.len(),
        40,
        "a second import stores nothing"
    );

    // --timezone and --map on the same records.
    let dir2 = DataDir::temp();
    let other = spawn_process(dir2.path(), &[]).await;
    let out = run(
        &[
            "import",
            "--url",
            &other.base,
            "--timezone",
            "+02:00",
            "--map",
            "subject=data.story",
            file,
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    let ev = &other.read_all().await[0].1;
    assert_eq!(ev["time"], "2025-01-25T07:00:00Z");
    assert_eq!(ev["subject"], "S-100");
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn strict_stops_at_the_first_bad_record_and_exit_codes_say_what_happened() {
    let dir = DataDir::temp();
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let file = dir.path().join("three.ndjson");
    std::fs::write(
        &file,
        "{\"type\":\"a\",\"source\":\"/x\",\"id\":\"1\"}\n\
         {\"source\":\"/x\",\"id\":\"2\",\"specversion\":\"1.0\"}\n\
         {\"type\":\"a\",\"source\":\"/x\",\"id\":\"3\"}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = run(&["import", "--url", &url, "--strict", f], &[]).await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    assert_eq!(
        server.read_all().await.len(),
        1,
        "--strict: nothing after the bad record"
    );
    let out = run(&["import", "--url", &url, f], &[]).await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("type"),
        "{}",
        out.stderr
    );
    assert_eq!(server.read_all().await.len(), 2, "the rest goes on");
    // All good: 0.
    let good = dir.path().join("good.json");
    std::fs::write(&good, "[{\"type\":\"g\",\"source\":\"/x\",\"id\":\"g1\"}]").unwrap();
    let out = run(&["import", "--url", &url, good.to_str().unwrap()], &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    // Could not run: a missing file, an unreachable server.
    let out = run(&["import", "--url", &url, "/nonexistent/file.ndjson"], &[]).await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    let out = run(
        &[
            "import",
            "--url",
            "http://127.0.0.1:1",
            good.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    server.stop().await;
}

#[tokio::test]
async fn online_import_needs_a_token_and_offline_import_is_refused_while_a_server_runs() {
    let dir = DataDir::temp();
    let token = create_token(dir.path(), "importer", "publish", &[]).await;
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let file = sample();
    let file = file.to_str().unwrap();
    let out = run(&["import", "--url", &url, file], &[]).await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("401"),
        "the server's answer is shown: {}",
        out.stderr
    );
    let out = run(
        &["import", "--url", &url, file],
        &[("MSGBUS_TOKEN", &token)],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(out.stderr.contains("40 stored"), "{}", out.stderr);

    // The directory is held: refused (3), nothing written.
    let d = dir.path().to_str().unwrap();
    let other = dir.path().join("more.ndjson");
    std::fs::write(&other, "{\"type\":\"x\",\"source\":\"/y\"}\n").unwrap();
    let out = run(&["import", "--data-dir", d, other.to_str().unwrap()], &[]).await;
    assert_eq!(code(&out), 3, "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("lock") || out.stderr.contains("held"),
        "{}",
        out.stderr
    );
    let admin = server.with_token(&token);
    assert_eq!(
        admin.get("/events?after=40").await.status,
        403,
        "a publish token cannot read"
    );
    server.stop().await;

    // Stopped: the same import goes through the server's own code.
    let out = run(&["import", "--data-dir", d, other.to_str().unwrap()], &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let out = run(&["import", "--data-dir", d, other.to_str().unwrap()], &[]).await;
    assert!(
        out.stderr.contains("0 stored, 1 already there"),
        "{}",
        out.stderr
    );
}
