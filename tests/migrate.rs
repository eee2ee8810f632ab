//! `msgbus migrate` (issue 17): a stopped file store moved into a JetStream
//! stream on a real nats-server, interrupted (`--limit`, then SIGKILL
//! midway) and resumed, run once more to show it stores nothing new; then
//! a NATS-backed msgbus serves every event byte for byte at the seq the
//! file store gave it, and filters by type find the same events.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::events::event;
use common::files::DataDir;
use common::http::Api;
use common::nats::{nats_server_binary, show, NatsServer, CLUSTER_MIN_VERSION};
use common::process::{run_msgbus, spawn_process};
use common::server::spawn_app_with;

/// Events in the store.
const EVENTS: u64 = 3000;

async fn serve_has_nats_backend() -> bool {
    let (_, out, err) = run_msgbus(&["serve", "--help"]).await;
    (out + &err).contains("--nats-url")
}

/// `GET /events/{seq}`'s body for every seq in `seqs`.
async fn bodies(api: &Api, seqs: impl Iterator<Item = u64>) -> Vec<(u64, u16, Vec<u8>)> {
    let mut out = Vec::new();
    for seq in seqs {
        let r = api.get(&format!("/events/{seq}")).await;
        out.push((seq, r.status, r.body.to_vec()));
    }
    out
}

/// Every `(seq, event)` of `GET /events` with `query`, all pages.
async fn listing(api: &Api, query: &str) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get_json(&format!("/events?after={after}&limit=1000{query}"))
            .await;
        let events = page["events"].as_array().expect("events");
        for e in events {
            out.push((e["seq"].as_u64().unwrap(), e["event"].clone()));
        }
        let next = page["next_after"].as_u64().unwrap();
        let last = page["last_seq"].as_u64().unwrap_or(0);
        if events.is_empty() && (next <= after || next >= last) {
            return out;
        }
        after = next;
    }
}

async fn migrate(dir: &std::path::Path, url: &str, extra: &[&str]) -> (i32, String) {
    let d = dir.display().to_string();
    let mut args = vec![
        "migrate",
        "--from-data-dir",
        &d,
        "--to-nats",
        url,
        "--progress-every",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run_msgbus(&args).await;
    (code, out + &err)
}

/// The stream's last sequence, as `/jsz?streams=true` of the server says.
async fn stream_last_seq(server: &NatsServer) -> u64 {
    let v = common::nats::monitor_get(server.monitor_port(), "/jsz?accounts=true&streams=true")
        .await
        .expect("jsz");
    v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == "MSGBUS")
        .map_or(0, |s| s["state"]["last_seq"].as_u64().unwrap_or(0))
}

/// On Debian's nats-server (2.9): no `Nats-Expected-Last-Sequence`, each
/// ack's seq checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_resumable_idempotent_and_keeps_bytes_and_seqs() {
    let Some(bin) = nats_server_binary((2, 9, 0)).await else {
        eprintln!("SKIPPED: no nats-server could be found or installed");
        return;
    };
    scenario(&bin).await;
}

/// On a current nats-server (>= 2.10.11): every publish also carries
/// `Nats-Expected-Last-Sequence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_a_current_nats_server_keeps_bytes_and_seqs() {
    let Some(bin) = nats_server_binary(CLUSTER_MIN_VERSION).await else {
        eprintln!(
            "SKIPPED: no nats-server >= {} could be found or installed",
            show(CLUSTER_MIN_VERSION)
        );
        return;
    };
    scenario(&bin).await;
}

async fn scenario(bin: &std::path::Path) {
    if !serve_has_nats_backend().await {
        eprintln!("SKIPPED: this msgbus has no NATS backend (serve --nats-url)");
        return;
    }
    common::note(format!(
        "nats-server {:?}",
        common::nats::version_of(bin).map(show)
    ));

    // A file store with a few thousand events of several types and sources,
    // whose oldest ones retention deleted: its first seq is past 1, so the
    // migration must move the stream's first seq to keep the seqs.
    let app = spawn_app_with(&["--segment-bytes", "4KiB", "--retention-max-events", "2500"]).await;
    let types = ["order.created", "order.paid", "user.signup", "t"];
    for chunk in 0..(EVENTS / 500) {
        let batch: Vec<Value> = (chunk * 500..(chunk + 1) * 500)
            .map(|n| {
                let mut e = event(n, types[(n % 4) as usize], &format!("/src/{}", n % 7), 30);
                if n % 11 == 0 {
                    // Unicode and spacing as a client sent it.
                    e["data"]["note"] = json!("café ☕ \u{1F600}");
                }
                e
            })
            .collect();
        app.publish_batch(&batch).await;
    }
    // Retention runs on its own tick: wait for it (at most 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let oldest = loop {
        let stats = app.get_json("/stats").await;
        let oldest = stats["retention"]["oldest_seq"].as_u64().unwrap();
        if oldest > 1 {
            break oldest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention deleted nothing: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(oldest <= EVENTS - 2500 + 1, "oldest retained seq {oldest}");
    let file_dir: DataDir = app.stop().await;

    let nats = NatsServer::start(bin, &[]).await;
    let url = nats.url();

    // Interrupted by --limit: part of it, and says to go on.
    let (code, out) = migrate(file_dir.path(), &url, &["--limit", "700"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("run again to continue"), "{out}");
    assert_eq!(stream_last_seq(&nats).await, oldest - 1 + 700);

    // Interrupted by SIGKILL midway (or finished before it: both are fine,
    // the next run must take it from wherever it stopped).
    let d = file_dir.path().display().to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msgbus"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MSGBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["migrate", "--from-data-dir", &d, "--to-nats", &url, "-q"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn msgbus migrate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream_last_seq(&nats).await < oldest + 900 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let killed_at = stream_last_seq(&nats).await;
    common::note(format!(
        "migrate SIGKILLed with the stream at seq {killed_at}"
    ));
    assert!(killed_at >= oldest - 1 + 700);

    // The rest.
    let (code, out) = migrate(file_dir.path(), &url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the migration is complete"), "{out}");
    assert_eq!(stream_last_seq(&nats).await, EVENTS);

    // Once more: nothing new.
    let (code, out) = migrate(file_dir.path(), &url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("migrated 0 event(s)"), "{out}");
    assert_eq!(stream_last_seq(&nats).await, EVENTS);

    // Served by a NATS-backed msgbus exactly as the file store serves them.
    let file = common::server::start_app(file_dir, &[]).await;
    let nats_dir = tempfile::tempdir().unwrap();
    let bus = spawn_process(nats_dir.path(), &["--backend", "nats", "--nats-url", &url]).await;
    let want = bodies(&file, oldest..=EVENTS).await;
    let got = bodies(&bus, oldest..=EVENTS).await;
    assert_eq!(got.len() as u64, EVENTS - oldest + 1);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.1, 200, "file store, seq {}", w.0);
        assert_eq!(
            (g.1, String::from_utf8_lossy(&g.2)),
            (w.1, String::from_utf8_lossy(&w.2)),
            "GET /events/{} differs between the file store and the migrated stream",
            w.0
        );
    }
    assert_eq!(
        bus.get(&format!("/events/{}", EVENTS + 1)).await.status,
        404
    );
    for q in [
        "",
        "&type=order.paid",
        "&type_prefix=order.",
        "&source=/src/3",
    ] {
        let w = listing(&file, q).await;
        let g = listing(&bus, q).await;
        assert!(!w.is_empty());
        assert_eq!(g, w, "GET /events{q}");
    }

    // A stream holding an event that was not migrated is refused, and
    // left as it is.
    bus.publish_ok(&event(1_000_000, "late.one", "/late", 0))
        .await;
    let file_dir = file.stop().await;
    let (code, out) = migrate(file_dir.path(), &url, &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not migrated from this store"), "{out}");
    assert_eq!(stream_last_seq(&nats).await, EVENTS + 1);
    bus.stop().await;
}
