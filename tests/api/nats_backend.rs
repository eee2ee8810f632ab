//! What only the NATS JetStream backend does: the server-version refusal
//! of replicated streams, 501 for the file backend's `/admin` routes,
//! readiness that follows the NATS connection, and two msgbus instances
//! serving one stream (a publish through one wakes the other's long-polls
//! and streams). Each test prints SKIPPED and passes when no nats-server
//! can be installed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::files::DataDir;
use crate::common::nats::{nats_server_binary, version_of, NatsServer, CLUSTER_MIN_VERSION};
use crate::common::server::{
    serve_config, spawn_nats, spawn_on, spawn_on_own_nats, unique_stream, Backend, NatsTarget,
};
use crate::common::sse::SseReader;

/// A nats-server of its own for a test that kills it, or `None` (SKIPPED).
async fn own_server() -> Option<NatsServer> {
    let Some(bin) = nats_server_binary((2, 9, 0)).await else {
        eprintln!("SKIPPED: no nats-server could be installed");
        return None;
    };
    Some(NatsServer::start(&bin, &[]).await)
}

#[tokio::test]
async fn replicas_above_one_are_refused_on_servers_older_than_2_10_11() {
    let Some(bin) = nats_server_binary((2, 9, 0)).await else {
        eprintln!("SKIPPED: no nats-server could be installed");
        return;
    };
    let version = version_of(&bin).expect("nats-server --version");
    if version >= CLUSTER_MIN_VERSION {
        eprintln!(
            "SKIPPED: the only nats-server here ({}) is too new to be refused",
            bin.display()
        );
        return;
    }
    let server = NatsServer::start(&bin, &[]).await;
    let dir = DataDir::temp();
    let target = NatsTarget {
        url: server.url(),
        stream: unique_stream(),
    };
    let mut args = target.args();
    args.extend(["--replicas".to_string(), "3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = match msgbus::app::Application::build(serve_config(dir.path(), &args)).await {
        Ok(_) => panic!("--replicas 3 on nats-server {version:?} must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--replicas 3"), "{err}");
    assert!(err.contains("2.10.11"), "names the version needed: {err}");
    assert!(
        err.contains("lose messages they had acknowledged"),
        "says why: {err}"
    );
    // With one replica the same server serves.
    let app = spawn_nats(&target, &[]).await;
    app.publish_ok(&json!({"type": "t", "source": "/s"})).await;
}

#[tokio::test]
async fn the_file_backends_admin_routes_answer_501() {
    let Some(app) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    for (method, path) in [
        ("GET", "/admin/backups"),
        ("POST", "/admin/backups"),
        ("GET", "/admin/verify"),
        ("POST", "/admin/verify"),
    ] {
        let res = match method {
            "GET" => app.get(path).await,
            _ => app.post(path, None).await,
        };
        let problem = res.assert_problem_type(501, "not-implemented", path);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("file backend") && detail.contains("replicas"),
            "{method} {path}: {detail}"
        );
    }
    // Tokens are the HTTP layer's, not the file store's: still served.
    assert_eq!(app.get("/admin/tokens").await.status, 200);
}

/// Polls `/health/ready` until its status is `want`, for at most `within`.
async fn wait_ready(app: &crate::common::http::Api, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let res = app.get("/health/ready").await;
        if res.status == want {
            return res.text();
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready still {} after {within:?}: {}",
            res.status,
            res.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_follows_the_nats_server_down_and_up_again() {
    let Some(mut server) = own_server().await else {
        return;
    };
    let target = NatsTarget {
        url: server.url(),
        stream: unique_stream(),
    };
    let app = spawn_nats(&target, &[]).await;
    let first = app.publish_ok(&json!({"type": "t", "source": "/s"})).await;
    wait_ready(&app, 200, Duration::from_secs(10)).await;

    server.kill();
    let why = wait_ready(&app, 503, Duration::from_secs(10)).await;
    assert!(why.contains("NATS") || why.contains("stream"), "{why}");
    // A publish now is answered (503), not left hanging.
    let res = app
        .publish(&json!({"type": "t", "source": "/s", "id": "down"}))
        .await;
    assert_eq!(res.status, 503, "{}", res.text());

    server.restart().await;
    wait_ready(&app, 200, Duration::from_secs(30)).await;
    // The stream survived (file storage): the first event reads back, and
    // publishing works again.
    let got = app.get_json(&format!("/events/{}", first["seq"])).await;
    assert_eq!(got["event"]["source"], "/s");
    app.publish_ok(&json!({"type": "t", "source": "/s", "id": "up"}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_one_instance_wakes_the_other_instances_readers() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;

    // A long-poll on B, then a publish through A.
    let poll = {
        let b = b.api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let page = b.get_json("/events?after=0&wait=20").await;
            (page, started.elapsed())
        })
    };
    let mut sse = SseReader::open(&b, "/events/stream", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = a
        .publish_ok(&json!({"type": "cross.instance", "source": "/a"}))
        .await;
    let (page, took) = poll.await.unwrap();
    assert_eq!(page["events"][0]["seq"], sent["seq"], "{page}");
    assert!(
        took < Duration::from_secs(10),
        "the long-poll on B waited {took:?}, as if it never woke"
    );
    let msg = sse
        .next_event(Duration::from_secs(10))
        .await
        .expect("B's stream gets the event published through A");
    assert_eq!(msg.json()["event"]["type"], "cross.instance");

    // And the other way round, read back by seq.
    let back = b
        .publish_ok(&json!({"type": "cross.instance", "source": "/b"}))
        .await;
    let got = a.get_json(&format!("/events/{}", back["seq"])).await;
    assert_eq!(got["event"]["source"], "/b");
}

#[tokio::test]
async fn batches_are_atomic_on_servers_with_atomic_batch_publish() {
    let Some(bin) = nats_server_binary(crate::common::nats::ATOMIC_BATCH_MIN_VERSION).await else {
        eprintln!("SKIPPED: no nats-server 2.12+ could be installed");
        return;
    };
    // Messages of at most 8 KiB, so one event of a batch can fail.
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "max_payload: 8192\n").unwrap();
    let server = NatsServer::start(&bin, &["-c", conf.path().to_str().unwrap()]).await;
    let target = NatsTarget {
        url: server.url(),
        stream: unique_stream(),
    };
    let app = spawn_nats(&target, &[]).await;
    app.publish_ok(&json!({"type": "t", "source": "/s", "id": "before"}))
        .await;
    let batch = |ids: &[&str]| {
        json!(ids
            .iter()
            .map(|id| json!({"type": "b.x", "source": "/b", "id": id}))
            .collect::<Vec<_>>())
    };
    // All new: one atomic commit, consecutive seqs.
    let res = app.batch(&batch(&["1", "2", "3"])).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let seqs: Vec<u64> = res.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["writer"]["batches"], 1, "{stats}");

    // The same batch again: JetStream refuses an atomic batch holding a
    // stored Nats-Msg-Id; msgbus then answers each as the duplicate it is.
    let res = app.batch(&batch(&["1", "2", "3"])).await;
    let again = res.json();
    for (r, want) in again["results"].as_array().unwrap().iter().zip([2, 3, 4]) {
        assert_eq!(r["seq"], want, "{again}");
        assert_eq!(r["duplicate"], true, "{again}");
    }
    // A duplicate beside new events: the new ones are stored, the
    // duplicate answers its original.
    let res = app.batch(&batch(&["2", "4"])).await;
    let mixed = res.json();
    assert_eq!(mixed["results"][0]["seq"], 3, "{mixed}");
    assert_eq!(mixed["results"][0]["duplicate"], true, "{mixed}");
    assert_eq!(mixed["results"][1]["seq"], 5, "{mixed}");
    assert_eq!(mixed["results"][1]["duplicate"], false, "{mixed}");
    assert_eq!(app.read_all().await.len(), 5);

    // All or nothing: an event the server cannot take in the middle of a
    // batch stores none of it (one at a time, the first would be stored).
    let big = "x".repeat(10_000);
    let res = app
        .batch(&json!([
            {"type": "b.x", "source": "/b", "id": "5"},
            {"type": "b.x", "source": "/b", "id": "6", "data": big},
            {"type": "b.x", "source": "/b", "id": "7"},
        ]))
        .await;
    assert_eq!(res.status, 503, "{}", res.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.read_all().await.len(),
        5,
        "nothing of the failed batch is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_shared_by_every_instance_and_its_cursor_never_moves_back() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;
    for i in 0..5 {
        a.publish_ok(&json!({"type": "c.x", "source": "/c", "id": i.to_string()}))
            .await;
    }
    let res = a
        .put("/consumers/shared", &json!({"type_prefix": "c."}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    // B sees it (its copy follows the KV bucket) and acks through it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.get("/consumers/shared").await.status != 200 {
        assert!(Instant::now() < deadline, "B never saw the consumer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = b
        .post("/consumers/shared/ack", Some(&json!({"seq": 3})))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // A reads from the cursor B committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = a.get_json("/consumers/shared/events").await;
        if page["events"][0]["seq"] == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A still reads from before B's ack: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An ack behind the cursor through A is refused, whichever instance
    // committed the cursor.
    a.post("/consumers/shared/ack", Some(&json!({"seq": 2})))
        .await
        .assert_problem(409);
}

#[tokio::test]
async fn an_event_limit_the_nats_servers_cannot_carry_is_warned_about_at_start() {
    let Some(url) = crate::common::server::shared_nats_url() else {
        eprintln!("SKIPPED: no nats-server could be installed");
        return;
    };
    let dir = DataDir::temp();
    let target = NatsTarget {
        url,
        stream: unique_stream(),
    };
    let warned = |p: &crate::common::process::TestProcess| {
        p.stderr_text().contains("--max-event-bytes plus")
    };
    // The defaults: 1 MiB events, 1 MiB NATS messages, no room for headers.
    let mut args = target.args();
    args.extend(["--max-event-bytes".to_string(), "1MiB".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = crate::common::process::spawn_process(dir.path(), &args).await;
    assert!(warned(&p), "{}", p.stderr_text());
    p.stop().await;
    // Events that fit: no warning.
    let mut args = target.args();
    args.extend(["--max-event-bytes".to_string(), "512KiB".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = crate::common::process::spawn_process(dir.path(), &args).await;
    assert!(!warned(&p), "{}", p.stderr_text());
    p.stop().await;
}

/// Publishes `event` through `app` until the answer is `want`, for at
/// most 10 s (another instance's schema change reaches this one's
/// validators within about a second); answers the last response.
async fn publish_until(
    app: &crate::common::http::Api,
    event: &serde_json::Value,
    want: u16,
) -> crate::common::http::Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let mut ev = event.clone();
        n += 1;
        ev["id"] = json!(format!("try-{n}-{}", uuid_ish()));
        let res = app.publish(&ev).await;
        if res.status == want {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {want} after 10 s: {}",
            res.status,
            res.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uuid_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_registered_through_one_instance_validates_on_every_instance() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;
    let schema = json!({"type": "object", "required": ["points"],
                        "properties": {"points": {"type": "number"}}});
    let res = a.put("/schemas/story.created", &schema).await;
    assert_eq!(res.status, 201, "PUT through A: {}", res.text());
    assert_eq!(res.json()["version"], 1);

    // B refuses an invalid event once its copy follows the bucket.
    let bad = json!({"type": "story.created", "source": "/b", "data": {"points": "five"}});
    let res = publish_until(&b, &bad, 422).await;
    let p = res.assert_problem_type(422, "schema-mismatch", "an invalid event through B");
    assert_eq!(crate::common::http::error_fields(&p), vec!["data/points"]);
    // A valid one is stored, with dataschema naming A's version.
    let ok = b
        .publish_ok(&json!({"type": "story.created", "source": "/b", "data": {"points": 5}}))
        .await;
    let got = b.get_json(&format!("/events/{}", ok["seq"])).await;
    assert_eq!(
        got["event"]["dataschema"],
        "/schemas/story.created/versions/1"
    );
    assert_eq!(b.get_json("/schemas/story.created").await["schema"], schema);

    // A delete through B stops validation on A.
    let res = b.delete("/schemas/story.created").await;
    assert_eq!(res.status, 200, "DELETE through B: {}", res.text());
    publish_until(&a, &bad, 201).await;
    a.delete("/schemas/story.created").await.assert_problem(404);

    // A restarted instance has the schemas (a new version resumes
    // validation, seen by the restarted A at once).
    let res = b
        .put("/schemas/story.created?compatibility=none", &schema)
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["version"], 2);
    let a = a.restart(&[]).await;
    let latest = a.get_json("/schemas/story.created").await;
    assert_eq!(latest["version"], 2, "{latest}");
    assert_eq!(latest["status"], "active", "{latest}");
    a.publish(&bad).await.assert_problem(422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versions_through_two_instances_get_distinct_numbers_and_none_is_lost() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed app");
    let b = spawn_nats(&target, &[]).await;
    let put_many = |api: crate::common::http::Api, who: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let schema = json!({"type": "object", "description": format!("{who} {i}")});
                let res = api.put("/schemas/race.x?compatibility=none", &schema).await;
                assert_eq!(res.status, 201, "{who} {i}: {}", res.text());
                got.push((
                    res.json()["version"].as_u64().unwrap(),
                    format!("{who} {i}"),
                ));
            }
            got
        })
    };
    let (ga, gb) = (put_many(a.api.clone(), "a"), put_many(b.api.clone(), "b"));
    let mut all = ga.await.unwrap();
    all.extend(gb.await.unwrap());
    let mut versions: Vec<u64> = all.iter().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>(), "{all:?}");
    // Every version holds the document its PUT was answered for, read
    // through either instance.
    for app in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.get_json("/schemas/race.x").await["version"] != 20 {
            assert!(
                Instant::now() < deadline,
                "an instance never saw version 20"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (v, description) in &all {
            let doc = app.get_json(&format!("/schemas/race.x/versions/{v}")).await;
            assert_eq!(doc["schema"]["description"], *description, "{doc}");
        }
    }
}

#[tokio::test]
async fn a_type_whose_versions_outgrow_a_nats_message_is_refused_413() {
    let Some(app) = spawn_on(Backend::Nats, &["--max-schema-bytes", "700000"]).await else {
        return;
    };
    // The shared server's max_payload is NATS's default, 1 MiB: one type's
    // versions are one KV value, so a second 600 KB version cannot fit.
    let big = json!({"type": "object", "description": "x".repeat(600_000)});
    let res = app.put("/schemas/big.x", &big).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = app.put("/schemas/big.x?compatibility=none", &big).await;
    let p = res.assert_problem_type(413, "schema-too-large", "a second 600 KB version");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("max_payload"), "{detail}");
    // Nothing changed, and other types still take versions.
    assert_eq!(app.get_json("/schemas/big.x").await["version"], 1);
    let res = app
        .put("/schemas/small.x", &json!({"type": "object"}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
}

/// `/stats` counts events per type on NATS (types are subjects, counted
/// by the stream), capped at `--max-label-series` with `other` summing the
/// rest as on the file backend; per-source counts too (see
/// `stats_count_events_per_source_in_chunks_shared_by_instances`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_events_per_type_from_the_stream() {
    let Some(a) = spawn_on(Backend::Nats, &[]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed server");
    let b = spawn_nats(&target, &["--max-label-series", "2"]).await;
    for (ty, n) in [
        ("order.created", 3),
        ("order.paid", 2),
        ("user.signed_up", 1),
    ] {
        for i in 0..n {
            a.publish_ok(
                &json!({"type": ty, "source": format!("/s{i}"), "id": format!("{ty}-{i}")}),
            )
            .await;
        }
    }
    let all = json!({"order.created": 3, "order.paid": 2, "user.signed_up": 1});
    let capped = json!({"order.created": 3, "order.paid": 2, "other": 1});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (a.get_json("/stats").await, b.get_json("/stats").await);
        if sa["events"]["by_type"] == all && sb["events"]["by_type"] == capped {
            assert_eq!(sa["events"]["total"], 6, "{sa}");
            assert_eq!(sa["store"]["distinct"]["types"], 3, "{sa}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "per-type counts within 20 s: {} / {}",
            sa["events"],
            sb["events"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/stats` counts events per source on NATS: complete chunks of 1,000
/// seqs counted once and shared through the `<stream>_SOURCES` bucket, the
/// newest chunk by each instance, the oldest again from the first seq that
/// retention left. 2,500 events on a stream keeping 2,000: seqs 1-600 from
/// `/early`, the next alternating `/x` and `/y`; the first 500 are gone, so
/// exactly 100 of `/early` count; 250 more move the first seq past every
/// `/early` one, 250 more from `/late` to the end of chunk 2 and 250 more
/// past the start of chunk 1 (its counts leave the sum, chunk 2's stay). A second
/// instance started then takes the complete chunk 2 from the bucket without
/// reading it: the test changes its stored counts first, and the second
/// instance shows them. The keys of the chunks retention took are purged
/// from the bucket some seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_events_per_source_in_chunks_shared_by_instances() {
    let Some(a) = spawn_on(Backend::Nats, &["--retention-max-events", "2000"]).await else {
        return;
    };
    let target = a.nats.clone().expect("a NATS-backed server");
    let source = |n: u64| match n {
        1..=600 => "/early",
        2751.. => "/late",
        n if n % 2 == 0 => "/x",
        _ => "/y",
    };
    let publish = |first: u64, count: u64| {
        (first..first + count)
            .map(|n| json!({"type": "t.s", "source": source(n), "id": format!("e{n}")}))
            .collect::<Vec<_>>()
    };
    for first in (1..=2500u64).step_by(500) {
        a.publish_batch(&publish(first, 500)).await;
    }
    for (round, (first, want)) in [
        (501, json!({"/early": 100, "/x": 950, "/y": 950})),
        (751, json!({"/x": 1000, "/y": 1000})),
        (1001, json!({"/late": 250, "/x": 875, "/y": 875})),
        (1251, json!({"/late": 500, "/x": 750, "/y": 750})),
    ]
    .into_iter()
    .enumerate()
    {
        if round > 0 {
            // Round 2 leaves chunks 1 and 2 (seqs 1,001-3,000) whole; in
            // round 3 the first seq passes into chunk 1, whose counts leave
            // the sum while chunk 2's stay.
            a.publish_batch(&publish(2251 + 250 * round as u64, 250))
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sa = a.get_json("/stats").await;
            let now = (&sa["events"]["first_seq"], &sa["events"]["last_seq"]);
            let last = 2500 + 250 * round as u64;
            if sa["events"]["by_source"] == want && now == (&json!(first), &json!(last)) {
                assert_eq!(sa["events"]["total"], 2000, "{sa}");
                assert_eq!(
                    sa["store"]["distinct"]["sources"],
                    want.as_object().unwrap().len(),
                    "{sa}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "per-source counts within 30 s (round {round}, want {want}): {}",
                sa["events"]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let nats = target.url.trim_start_matches("nats://");
    let stored = crate::common::nats::js_request(
        nats.parse().expect("the NATS address"),
        &format!("$KV.{}_SOURCES.c.2", target.stream),
        &json!({"/x": 500, "/y": 499, "/z": 1}),
    )
    .await;
    assert!(
        stored.as_ref().is_some_and(|ack| ack["seq"].is_u64()),
        "{stored:?}"
    );
    let b = spawn_nats(&target, &["--max-label-series", "2"]).await;
    let capped = json!({"/x": 875, "/y": 874, "other": 251});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sb = b.get_json("/stats").await;
        if sb["events"]["by_source"] == capped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's per-source counts within 30 s: {}",
            sb["events"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Chunk 0 left the stream in round 1 and chunk 1 stopped being whole in
    // round 3: 15 s after an instance saw that, their keys are purged from
    // the bucket; chunk 2's, still whole in the stream, stays, and the
    // counts do not change.
    let bucket = format!("{}_SOURCES", target.stream);
    let key_of = |k: u64| {
        let bucket = bucket.clone();
        async move {
            crate::common::nats::js_request(
                nats.parse().expect("the NATS address"),
                &format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"),
                &json!({"last_by_subj": format!("$KV.{bucket}.c.{k}")}),
            )
            .await
            .expect("an answer")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (c0, c1, c2) = (key_of(0).await, key_of(1).await, key_of(2).await);
        assert!(c2["message"].is_object(), "chunk 2's key stays: {c2}");
        if c0["error"]["code"] == 404 && c1["error"]["code"] == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chunk keys 0 and 1 not purged within 60 s: {c0} {c1}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sa = a.get_json("/stats").await;
    assert_eq!(
        sa["events"]["by_source"],
        json!({"/late": 500, "/x": 750, "/y": 750}),
        "{sa}"
    );
    let sb = b.get_json("/stats").await;
    assert_eq!(sb["events"]["by_source"], capped, "{sb}");
}

/// On nats-server 2.11+ a catch-up read is batched direct gets (many
/// messages per round trip); its pages must be exactly what reading the
/// same events one by one (`GET /events/{seq}`) gives: unfiltered,
/// filtered by type prefix and source, and cut by `--max-page-bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_catch_up_reads_equal_reads_one_by_one() {
    let Some((_server, app)) =
        spawn_on_own_nats(crate::common::nats::BATCH_GET_MIN_VERSION, &[]).await
    else {
        return;
    };
    let target = app.nats.clone().expect("a NATS-backed server");
    const EVENTS: usize = 1200;
    for b in 0..EVENTS / 100 {
        let items: Vec<_> = (b * 100..(b + 1) * 100)
            .map(|i| {
                let ty = ["p.a", "p.b", "q.c"][i % 3];
                json!({
                    "type": ty,
                    "source": format!("/s{}", i % 2),
                    "id": i.to_string(),
                    "data": {"i": i, "pad": "x".repeat(i % 50)},
                })
            })
            .collect();
        app.publish_batch(&items).await;
    }
    let mut one_by_one = Vec::new();
    for seq in 1..=EVENTS as u64 {
        one_by_one.push(app.get_json(&format!("/events/{seq}")).await);
    }
    let page = |q: String| {
        let app = &app;
        async move {
            let p = app.get_json(&format!("/events?{q}")).await;
            (
                p["events"].as_array().unwrap().clone(),
                p["next_after"].as_u64().unwrap(),
            )
        }
    };

    let (events, next) = page("after=0&limit=1000".into()).await;
    assert_eq!(events.len(), 1000);
    assert!(events == one_by_one[..1000], "the unfiltered page differs");
    assert_eq!(next, 1000);

    let (events, next) = page("after=100&limit=1000&type_prefix=p.&source=/s1".into()).await;
    let want: Vec<_> = one_by_one[100..]
        .iter()
        .filter(|e| {
            e["event"]["type"].as_str().unwrap().starts_with("p.") && e["event"]["source"] == "/s1"
        })
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert!(
        events == want,
        "the filtered page differs: {} vs {} events",
        events.len(),
        want.len()
    );
    assert_eq!(next, EVENTS as u64);

    let small = spawn_nats(&target, &["--max-page-bytes", "8KiB"]).await;
    let p = small.get_json("/events?after=0&limit=1000").await;
    let events = p["events"].as_array().unwrap();
    assert!(
        !events.is_empty() && events.len() < 1000,
        "{} events",
        events.len()
    );
    assert!(
        events[..] == one_by_one[..events.len()],
        "the byte-cut page differs"
    );
    assert_eq!(
        p["next_after"],
        events.len(),
        "next_after is the page's last seq"
    );
}
