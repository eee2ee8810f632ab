//! `msgbus export`: NDJSON of the stored events, imported into an empty
//! store (online and offline, plain and gzip) gives the same events byte
//! for byte, compared as `GET /events` bodies.

use serde_json::json;

use crate::common::files::DataDir;
use crate::common::process::{create_token, spawn_process};
use crate::{all_events_body, code, run, sample};

#[tokio::test]
async fn export_then_import_into_an_empty_store_is_the_same_byte_for_byte() {
    let dir = DataDir::temp();
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let out = run(
        &["import", "--url", &url, "-q", sample().to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    // Events as clients send them: spacing, number spellings, unicode,
    // extensions, data that is no object.
    let raw = [
        r#"{"type":"odd.one","source":"/raw","data": {"price": 1.50, "big": 1e3, "s": "caf\u00e9 ☕"}}"#,
        r#"{"type":"odd.two","source":"/raw","subject":"s","traceid":"abc","level":7,"data":"text"}"#,
        r#"{"type":"odd.three","source":"/raw","datacontenttype":"text/plain","data_base64":"aGk="}"#,
    ];
    for r in raw {
        let reply = server.post_json_text("/events", r).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    server
        .publish_ok(&json!({"type": "odd.four", "source": "/raw"}))
        .await;
    let original = all_events_body(&server).await;

    let export = dir.path().join("export.ndjson");
    let e = export.to_str().unwrap();
    let out = run(&["export", "--url", &url, "-o", e], &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("exported 44 event(s), last seq 44"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().count(), 44);
    assert!(
        text.lines().next().unwrap().ends_with(",\"msgbusseq\":1}"),
        "{text}"
    );
    // Resumable: --after the last seq written gives only what follows.
    let out = run(
        &["export", "--url", &url, "--after", "42", "--with-seq"],
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let tail: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0]["seq"], 43);

    // Online, into an empty server.
    let dir2 = DataDir::temp();
    let copy = spawn_process(dir2.path(), &[]).await;
    let out = run(&["import", "--url", &copy.base, e], &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    assert_eq!(
        all_events_body(&copy).await,
        original,
        "online copy, byte for byte"
    );
    copy.stop().await;

    // Offline, from a gzip export of the stopped store, into an empty one.
    let token_dir = DataDir::temp();
    server.stop().await;
    let gz = dir.path().join("export.ndjson.gz");
    let d = dir.path().to_str().unwrap();
    let out = run(
        &[
            "export",
            "--data-dir",
            d,
            "--gzip",
            "-o",
            gz.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let bytes = std::fs::read(&gz).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
    let d3 = token_dir.path().to_str().unwrap();
    let out = run(&["import", "--data-dir", d3, gz.to_str().unwrap()], &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let copy = spawn_process(token_dir.path(), &[]).await;
    assert_eq!(
        all_events_body(&copy).await,
        original,
        "offline copy, byte for byte"
    );
    copy.stop().await;
}

#[tokio::test]
async fn export_reads_with_a_token_and_filters() {
    let dir = DataDir::temp();
    let reader = create_token(dir.path(), "reader", "read", &[]).await;
    let admin = create_token(dir.path(), "admin", "admin", &[]).await;
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let api = server.with_token(&admin);
    api.publish_ok(&json!({"type": "a.x", "source": "/1"}))
        .await;
    api.publish_ok(&json!({"type": "b.x", "source": "/1"}))
        .await;
    api.publish_ok(&json!({"type": "a.y", "source": "/2"}))
        .await;
    let out = run(&["export", "--url", &url], &[]).await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    let out = run(
        &[
            "export",
            "--url",
            &url,
            "--token",
            &reader,
            "--type-prefix",
            "a.",
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["msgbusseq"], 3);
    server.stop().await;
}

#[tokio::test]
async fn offline_export_of_a_directory_without_a_store_creates_nothing() {
    let dir = DataDir::temp();
    let missing = dir.path().join("no-such-store");
    let m = missing.to_str().unwrap();
    let out = run(&["export", "--data-dir", m], &[]).await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("holds no msgbus store"),
        "{}",
        out.stderr
    );
    assert!(!missing.exists(), "a mistyped path does not become a store");
}
