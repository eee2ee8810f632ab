//! `msgbus migrate` (issue 17): a stopped file store moved into a JetStream
//! stream on a real nats-server, interrupted (`--limit`, then SIGKILL
//! midway) and resumed, run once more to show it stores nothing new; then
//! a NATS-backed msgbus serves every event byte for byte at the seq the
//! file store gave it, and filters by type find the same events. The
//! payload schemas and consumers move too: validation goes on, the
//! versions keep their numbers and documents, a cursor consumer reads on
//! from its cursor, a queue leases only what was not done; and a target
//! that holds a different schema or consumer of the same name keeps it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use common::events::event;
use common::files::DataDir;
use common::http::Api;
use common::nats::{nats_server_binary, show, NatsServer, Version, CLUSTER_MIN_VERSION};
use common::process::{run_msgbus, spawn_process};
use common::server::{spawn_app, spawn_app_with, spawn_nats, NatsTarget};

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

async fn migrate(dir: &Path, url: &str, extra: &[&str]) -> (i32, String) {
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

/// A nats-server of at least version `min`, once this msgbus is known to
/// have the NATS backend; `None` (the test is skipped, saying why)
/// otherwise.
async fn nats_binary(min: Version) -> Option<PathBuf> {
    let Some(bin) = nats_server_binary(min).await else {
        eprintln!(
            "SKIPPED: no nats-server >= {} could be found or installed",
            show(min)
        );
        return None;
    };
    if !serve_has_nats_backend().await {
        eprintln!("SKIPPED: this msgbus has no NATS backend (serve --nats-url)");
        return None;
    }
    common::note(format!(
        "nats-server {:?}",
        common::nats::version_of(&bin).map(show)
    ));
    Some(bin)
}

/// On Debian's nats-server (2.9): no `Nats-Expected-Last-Sequence`, each
/// ack's seq checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_resumable_idempotent_and_keeps_bytes_and_seqs() {
    if let Some(bin) = nats_binary((2, 9, 0)).await {
        scenario(&bin).await;
    }
}

/// On a current nats-server (>= 2.10.11): every publish also carries
/// `Nats-Expected-Last-Sequence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_a_current_nats_server_keeps_bytes_and_seqs() {
    if let Some(bin) = nats_binary(CLUSTER_MIN_VERSION).await {
        scenario(&bin).await;
    }
}

async fn scenario(bin: &Path) {
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

/// Version 1 of `order.created`'s schema.
fn order_v1() -> Value {
    json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}})
}

/// Version 2: `note`, which version 1 leaves free, must be a string.
fn order_v2() -> Value {
    json!({"type": "object", "required": ["id"],
           "properties": {"id": {"type": "integer"}, "note": {"type": "string"}}})
}

fn order(n: u64) -> Value {
    json!({"id": format!("o-{n}"), "type": "order.created", "source": "/shop",
           "data": {"id": n}})
}

fn signup(n: u64) -> Value {
    json!({"id": format!("u-{n}"), "type": "user.signup", "source": "/users",
           "data": {"anything": n}})
}

fn seqs(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// `(type, versions, status)` of every type with a schema.
async fn schema_summary(api: &Api) -> Vec<(String, u64, String)> {
    let list = api.get_json("/schemas").await;
    list["schemas"]
        .as_array()
        .expect("schemas")
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["versions"].as_u64().unwrap(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The JSON Schema document of a version, as the server's JSON text of it.
async fn schema_doc(api: &Api, ty: &str, version: u32) -> String {
    let r = api.get(&format!("/schemas/{ty}/versions/{version}")).await;
    assert_eq!(r.status, 200, "{ty} v{version}: {}", r.text());
    r.json()["schema"].to_string()
}

/// A file store with two versions of `order.created`'s schema, the
/// stopped schema of `user.signup`, a cursor consumer `reader` at a cursor
/// and a queue consumer `jobs` with an ack floor, an acknowledged event
/// above it and a dead letter above it. Answers the stopped store, what
/// its server answered about them, and the order events' seqs.
struct Source {
    dir: DataDir,
    v1: String,
    v2: String,
    reader_page: Vec<u64>,
    reader_cursor: u64,
    orders: Vec<u64>,
    /// Queue `jobs`: its floor, the seq acknowledged above it, its dead
    /// letter.
    floor: u64,
    acked: u64,
    dead: u64,
    /// When `order.created`'s versions 1 and 2, consumer `reader` and
    /// queue `jobs` were registered or created.
    times: Vec<String>,
}

async fn source_store() -> Source {
    let app = spawn_app().await;
    // The first order is published under version 1 (its `dataschema`
    // names it), the rest under version 2.
    let mut orders = Vec::new();
    for (n, doc) in [(0, order_v1()), (1, order_v2())] {
        let r = app.put("/schemas/order.created", &doc).await;
        assert_eq!(r.status, 201, "{}", r.text());
        if n == 0 {
            orders.push(app.publish_ok(&order(n)).await["seq"].as_u64().unwrap());
        }
    }
    let r = app
        .put("/schemas/user.signup", &json!({"type": "object"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app.delete("/schemas/user.signup").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for n in 1..=20 {
        let ev = if n % 3 == 0 { signup(n) } else { order(n) };
        let r = app.publish_ok(&ev).await;
        if n % 3 != 0 {
            orders.push(r["seq"].as_u64().unwrap());
        }
    }
    // The file store refuses what version 2 refuses.
    let mut bad = order(99);
    bad["data"]["note"] = json!(5);
    app.publish(&bad).await.assert_problem(422);

    let r = app
        .put("/consumers/reader", &json!({"type": "order.created"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let reader_cursor = orders[3];
    let r = app
        .post(
            "/consumers/reader/ack",
            Some(&json!({"seq": reader_cursor})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reader_page = seqs(&app.get_json("/consumers/reader/events?limit=100").await["events"]);
    assert_eq!(reader_page, orders[4..].to_vec());

    let r = app
        .put(
            "/consumers/jobs",
            &json!({"mode": "queue", "type": "order.created", "max_deliver": 1, "lease": 60}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app
        .post("/consumers/jobs/fetch", Some(&json!({"max": 5, "wait": 0})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let leased = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(seqs(&json!(leased)), orders[..5].to_vec());
    // Ack the 1st, 2nd and 4th; the 5th nacked (max_deliver 1: dead); the
    // 3rd stays leased, so the floor stops below it.
    let r = app
        .post(
            "/consumers/jobs/ack",
            Some(&json!({"seqs": [orders[0], orders[1], orders[3]]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post(
            "/consumers/jobs/nack",
            Some(&json!({"seq": orders[4], "lease": leased[4]["lease"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dead = app.get_json("/consumers/jobs/dead").await;
        if dead["dead"].as_array().is_some_and(|d| d.len() == 1) {
            assert_eq!(dead["dead"][0]["seq"], orders[4]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A queue ordered by subject, nothing fetched yet.
    let r = app
        .put(
            "/consumers/serial",
            &json!({"mode": "queue", "type": "order.created", "ordering": "subject"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v1 = schema_doc(&app, "order.created", 1).await;
    let v2 = schema_doc(&app, "order.created", 2).await;
    let times = created_times(&app).await;
    Source {
        dir: app.stop().await,
        v1,
        v2,
        reader_page,
        reader_cursor,
        floor: orders[1],
        acked: orders[3],
        dead: orders[4],
        orders,
        times,
    }
}

/// When `order.created`'s versions 1 and 2, consumer `reader` and queue
/// `jobs` were registered or created, as the API shows them.
async fn created_times(api: &Api) -> Vec<String> {
    let mut out = Vec::new();
    for path in [
        "/schemas/order.created/versions/1",
        "/schemas/order.created/versions/2",
        "/consumers/reader",
        "/consumers/jobs",
    ] {
        let v = api.get_json(path).await;
        out.push(
            v["created_at"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {v}"))
                .to_string(),
        );
    }
    out
}

/// The value of `name`'s key (hex-encoded, as msgbus keys its entries) in
/// the KV bucket `<stream>_<bucket>`, read from the bucket's stream with a
/// direct get.
async fn kv_entry(nats: &NatsServer, stream: &str, bucket: &str, name: &str) -> Value {
    let key: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    common::nats::js_request(
        nats.addr(),
        &format!("$JS.API.DIRECT.GET.KV_{stream}_{bucket}"),
        &json!({"last_by_subj": format!("$KV.{stream}_{bucket}.{key}")}),
    )
    .await
    .unwrap_or_else(|| panic!("no entry {name:?} in {stream}_{bucket}"))
}

/// The settled seqs of queue `name`'s ledger in `<stream>_QUEUES`.
async fn settled_seqs(nats: &NatsServer, stream: &str, name: &str) -> Vec<u64> {
    kv_entry(nats, stream, "QUEUES", name).await["settled"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

/// When validation of type `ty` was stopped, as the stopped store's
/// `schemas.json` says.
fn stopped_at_in_store(dir: &Path, ty: &str) -> Option<String> {
    fn find<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
        match v {
            Value::Object(m) if m.get("type").and_then(Value::as_str) == Some(ty) => Some(v),
            Value::Object(m) => m.values().find_map(|v| find(v, ty)),
            Value::Array(a) => a.iter().find_map(|v| find(v, ty)),
            _ => None,
        }
    }
    let bytes = std::fs::read(dir.join("schemas.json")).expect("schemas.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("schemas.json is JSON");
    let t = find(&doc, ty).unwrap_or_else(|| panic!("no {ty:?} in {doc}"));
    t["deleted_at"].as_str().map(str::to_owned)
}

/// The same on the target: type `ty`'s entry in `<stream>_SCHEMAS`.
async fn stopped_at_on_target(nats: &NatsServer, stream: &str, ty: &str) -> Option<String> {
    kv_entry(nats, stream, "SCHEMAS", ty).await["deleted_at"]
        .as_str()
        .map(str::to_owned)
}

/// Every seq queue `name` leases now (nothing acked).
async fn lease_all(api: &Api, name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let r = api
            .post(
                &format!("/consumers/{name}/fetch"),
                Some(&json!({"max": 100, "wait": 1})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let got = seqs(&r.json()["events"]);
        if got.is_empty() {
            out.sort_unstable();
            return out;
        }
        out.extend(got);
    }
}

/// On Debian's nats-server (2.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_consumers_move_with_the_events_once_and_conflicts_are_refused() {
    if let Some(bin) = nats_binary((2, 9, 0)).await {
        carried(&bin).await;
    }
}

/// On a current nats-server (>= 2.10.11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_consumers_move_to_a_current_nats_server() {
    if let Some(bin) = nats_binary(CLUSTER_MIN_VERSION).await {
        carried(&bin).await;
    }
}

async fn carried(bin: &Path) {
    let src = source_store().await;
    let nats = NatsServer::start(bin, &[]).await;
    let url = nats.url();

    let (code, out) = migrate(src.dir.path(), &url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every event is migrated"), "{out}");
    assert!(
        out.contains("payload schemas: 2 type(s) in the store; 3 version(s) registered and 1 type(s)' validation stopped in this run"),
        "{out}"
    );
    assert!(
        out.contains("consumers: 3 in the store; 3 created in this run; 1 queue ledger(s) written in this run, with 1 dead letter(s)"),
        "{out}"
    );
    assert!(out.contains("the migration is complete"), "{out}");
    // Once more: nothing new.
    let (code, out) = migrate(src.dir.path(), &url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("migrated 0 event(s)"), "{out}");
    assert!(
        out.contains("0 version(s) registered and 0 type(s)' validation stopped"),
        "{out}"
    );
    assert!(
        out.contains("0 created in this run; 0 queue ledger(s) written in this run, with 0 dead letter(s); 0 kept as the target had them"),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");

    let target = NatsTarget {
        url: url.clone(),
        stream: "MSGBUS".into(),
    };
    let bus = spawn_nats(&target, &[]).await;
    // The schemas: the same versions under the same numbers, validation
    // on where it was (by the latest version) and off where it was not.
    assert_eq!(
        schema_summary(&bus).await,
        vec![
            ("order.created".to_string(), 2, "active".to_string()),
            ("user.signup".to_string(), 1, "deleted".to_string()),
        ]
    );
    assert_eq!(schema_doc(&bus, "order.created", 1).await, src.v1);
    assert_eq!(schema_doc(&bus, "order.created", 2).await, src.v2);
    // An event's `dataschema` still names the version it was checked by.
    let first = bus.get_json(&format!("/events/{}", src.orders[0])).await;
    assert_eq!(
        first["event"]["dataschema"], "/schemas/order.created/versions/1",
        "{first}"
    );
    // The cursor consumer reads on from its cursor.
    let reader = bus.get_json("/consumers/reader").await;
    assert_eq!(reader["cursor"], src.reader_cursor, "{reader}");
    assert_eq!(reader["filter"], json!({"type": "order.created"}));
    let page = bus.get_json("/consumers/reader/events?limit=100").await;
    assert_eq!(seqs(&page["events"]), src.reader_page);
    // The queue keeps its dead letter, and leases only what was not done:
    // above the floor, neither the acknowledged event nor the dead one.
    let dead = bus.get_json("/consumers/jobs/dead").await;
    assert_eq!(dead["dead"].as_array().map(Vec::len), Some(1), "{dead}");
    assert_eq!(dead["dead"][0]["seq"], src.dead);
    assert_eq!(dead["dead"][0]["attempts"], 1);
    let want: Vec<u64> = src
        .orders
        .iter()
        .copied()
        .filter(|s| *s > src.floor && *s != src.acked && *s != src.dead)
        .collect();
    assert_eq!(lease_all(&bus, "jobs").await, want);
    // The ordered queue keeps its ordering and leases every order (they
    // have no subject, so none waits behind another).
    let serial = bus.get_json("/consumers/serial").await;
    assert_eq!(serial["queue"]["ordering"], "subject", "{serial}");
    assert_eq!(lease_all(&bus, "serial").await, src.orders);
    // The times came along, the stop time of `user.signup`'s validation
    // too (the API does not show it; the KV entry holds it as
    // `schemas.json` does, to the microsecond, so the target's own stop
    // in this run would differ).
    assert_eq!(created_times(&bus).await, src.times);
    let stopped = stopped_at_in_store(src.dir.path(), "user.signup");
    assert!(stopped.is_some(), "the source store has no stop time");
    assert_eq!(
        stopped_at_on_target(&nats, "MSGBUS", "user.signup").await,
        stopped
    );
    // Once the ack floor passes the settled seqs, they leave the ledger.
    assert_eq!(
        settled_seqs(&nats, "MSGBUS", "jobs").await,
        vec![src.acked, src.dead]
    );
    let r = bus
        .post("/consumers/jobs/ack", Some(&json!({"seqs": want})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = bus
            .post("/consumers/jobs/fetch", Some(&json!({"max": 1, "wait": 0})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let settled = settled_seqs(&nats, "MSGBUS", "jobs").await;
        if settled.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the settled seqs stayed: {settled:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The ledger on the target now differs from the store's: a run again
    // keeps it, and says so.
    let (code, out) = migrate(src.dir.path(), &url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            r#"note: consumer "jobs": its queue ledger on the target differs from the store's"#
        ),
        "{out}"
    );
    assert!(out.contains("1 kept as the target had them"), "{out}");
    // Validation did not stop: version 2 refuses what version 1 allowed.
    let mut bad = order(99);
    bad["data"]["note"] = json!(5);
    let p = bus.publish(&bad).await.assert_problem(422);
    assert!(p.to_string().contains("data/note"), "{p}");
    bus.publish(
        &json!({"id": "x", "type": "order.created", "source": "/shop", "data": {"id": "seven"}}),
    )
    .await
    .assert_problem(422);
    bus.publish_ok(&order(100)).await;
    bus.publish_ok(&signup(101)).await;
    bus.stop().await;

    // A target that already holds a different version 1 of a type and a
    // consumer of the same name with another filter keeps them; the rest
    // moves.
    let other = NatsTarget {
        url: url.clone(),
        stream: "OTHER".into(),
    };
    let bus = spawn_nats(&other, &[]).await;
    let r = bus
        .put("/schemas/order.created", &json!({"type": "object"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = bus
        .put("/consumers/reader", &json!({"type": "user.signup"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let theirs = schema_doc(&bus, "order.created", 1).await;
    bus.stop().await;
    let (code, out) = migrate(src.dir.path(), &url, &["--nats-stream", "OTHER"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"refused: schema of type "order.created": the target's version 1 is not the store's version 1"#),
        "{out}"
    );
    assert!(
        out.contains(r#"refused: consumer "reader": the target has a consumer of that name with another definition"#),
        "{out}"
    );
    assert!(out.contains("2 schema(s) or consumer(s) refused"), "{out}");
    let bus = spawn_nats(&other, &[]).await;
    assert_eq!(
        schema_summary(&bus).await,
        vec![
            ("order.created".to_string(), 1, "active".to_string()),
            ("user.signup".to_string(), 1, "deleted".to_string()),
        ]
    );
    assert_eq!(schema_doc(&bus, "order.created", 1).await, theirs);
    let reader = bus.get_json("/consumers/reader").await;
    assert_eq!(reader["filter"], json!({"type": "user.signup"}), "{reader}");
    assert_eq!(bus.get_json("/consumers/jobs").await["mode"], "queue");
    bus.stop().await;
}

/// A store whose every event retention removed still has a next seq: the
/// stream is moved to it, so the first event published through the NATS
/// backend takes the seq the file store would have given it, not 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_emptied_by_retention_moves_the_stream_to_its_next_seq() {
    let Some(bin) = nats_binary((2, 9, 0)).await else {
        return;
    };
    let app = spawn_app_with(&["--segment-bytes", "4KiB", "--retention-max-age", "1s"]).await;
    let mut last = 0;
    // Each event fills a segment, so the next commit seals it.
    for n in 0..5 {
        let e = event(n, "t.gone", "/gone", 5000);
        last = app.publish_ok(&e).await["seq"].as_u64().unwrap();
    }
    // A duplicate seals the last one and writes nothing to the next: once
    // retention removes the sealed ones, the store is empty.
    let again = event(4, "t.gone", "/gone", 5000);
    assert_eq!(app.publish(&again).await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = app.get_json("/stats").await;
        if stats["events"]["total"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never emptied the store: {}",
            stats["events"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = app.stop().await;
    let nats = NatsServer::start(&bin, &[]).await;
    let (code, out) = migrate(dir.path(), &nats.url(), &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "the store holds no event (retention removed seqs up to {last}): no event to migrate; \
             stream MSGBUS's next seq is {}",
            last + 1
        )),
        "{out}"
    );
    let target = NatsTarget {
        url: nats.url(),
        stream: "MSGBUS".into(),
    };
    let bus = spawn_nats(&target, &[]).await;
    let r = bus.publish_ok(&event(1000, "t.new", "/new", 0)).await;
    assert_eq!(r["seq"], last + 1, "{r}");
    bus.stop().await;
}
