//! Access control against a real server: tokens made by `msgbus token`
//! (a real process on the same data directory), roles, scopes (publishes
//! refused, reads narrowed), revoke and expiry without a restart, the
//! `/admin/tokens` API, `?access_token=` on the stream only and never in
//! the logs, `--auth auto`'s refusal of a non-loopback address, the
//! bootstrap secret, failed-authentication limits, per-token rates and
//! stream caps.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::files::DataDir;
use crate::common::http::metric;
use crate::common::http::{error_fields, Api};
use crate::common::process::{create_token, msgbus_command, run_msgbus, spawn_command};
use crate::common::server::{start_app, TestApp};
use crate::common::sse::SseReader;

/// A client of `api` sending `token` on every request.
/// The secret part of a token `mb_<id>_<secret>`. The id is hex; the
/// secret is URL-safe base64 and may itself contain `_`, so it is
/// everything after the second `_` (not after the last, which would check
/// only a short tail that a long log can hold by chance).
fn secret_of(token: &str) -> &str {
    token
        .splitn(3, '_')
        .nth(2)
        .expect("a token is mb_<id>_<secret>")
}

fn as_token(api: &Api, token: &str) -> Api {
    api.with_token(token)
}

fn ev(ty: &str, source: &str, id: &str) -> Value {
    json!({"specversion": "1.0", "type": ty, "source": source, "id": id, "data": {"n": id}})
}

fn types(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap().to_string())
        .collect()
}

struct Setup {
    app: TestApp,
    admin: Api,
    publisher: Api,
    reader: Api,
    secrets: Vec<String>,
}

/// A server with an admin, an unscoped publisher and an unscoped reader.
async fn setup(args: &[&str]) -> Setup {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let publisher = create_token(dir.path(), "agent", "publish", &[]).await;
    let reader = create_token(dir.path(), "dash", "read", &[]).await;
    let app = start_app(dir, args).await;
    Setup {
        admin: as_token(&app, &admin),
        publisher: as_token(&app, &publisher),
        reader: as_token(&app, &reader),
        secrets: vec![admin, publisher, reader],
        app,
    }
}

#[tokio::test]
async fn each_role_may_do_its_work_and_nothing_else() {
    let s = setup(&[]).await;
    let anon = &s.app.api;

    // No token, a malformed one, an unknown one: the same 401.
    let r = anon.publish(&ev("a.b", "/x", "1")).await;
    let p = r.assert_problem_type(401, "unauthorized", "no token");
    assert!(
        r.header("www-authenticate").unwrap().starts_with("Bearer"),
        "{p}"
    );
    let unknown = "mb_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (_, real_secret) = s.secrets[0].split_at(20);
    let wrong_secret = format!("{}x", &s.secrets[0][..s.secrets[0].len() - 1]);
    let mut details = Vec::new();
    for bad in ["junk", unknown, wrong_secret.as_str()] {
        let r = as_token(anon, bad).get("/events").await;
        let p = r.assert_problem_type(401, "unauthorized", bad);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
        assert!(!p.to_string().contains(real_secret));
        details.push(p["detail"].clone());
    }
    assert!(details.windows(2).all(|w| w[0] == w[1]), "{details:?}");

    // Health, metrics and docs stay open.
    assert_eq!(anon.get("/health/live").await.status, 200);
    assert_eq!(anon.get("/health/ready").await.status, 200);
    assert_eq!(anon.get("/metrics").await.status, 200);
    assert_eq!(anon.get("/openapi.json").await.status, 200);

    // publish: publishes, and nothing else.
    assert_eq!(s.publisher.publish(&ev("a.b", "/x", "1")).await.status, 201);
    assert_eq!(
        s.publisher
            .batch(&json!([ev("a.b", "/x", "2")]))
            .await
            .status,
        201
    );
    for path in [
        "/events",
        "/events/1",
        "/stats",
        "/consumers",
        "/alerts",
        "/admin/tokens",
    ] {
        let r = s.publisher.get(path).await;
        let p = r.assert_problem_type(403, "forbidden", path);
        assert!(
            p["detail"].as_str().unwrap().contains("publish role"),
            "{p}"
        );
    }

    // read: reads, consumers; no publishing, no admin work.
    assert_eq!(s.reader.get("/events").await.status, 200);
    assert_eq!(s.reader.get("/events/1").await.status, 200);
    assert_eq!(s.reader.get("/stats").await.status, 200);
    assert_eq!(s.reader.put("/consumers/c1", &json!({})).await.status, 201);
    assert_eq!(s.reader.get("/consumers/c1/events").await.status, 200);
    assert_eq!(
        s.reader
            .post("/consumers/c1/ack", Some(&json!({"seq": 1})))
            .await
            .status,
        200
    );
    s.reader
        .publish(&ev("a.b", "/x", "3"))
        .await
        .assert_problem(403);
    s.reader.delete("/consumers/c1").await.assert_problem(403);
    s.reader
        .put("/consumers/c1", &json!({"start": "earliest"}))
        .await
        .assert_problem(403);
    s.reader.get("/alerts").await.assert_problem(403);
    s.reader
        .post("/admin/backups", None)
        .await
        .assert_problem(403);

    // admin: everything.
    assert_eq!(s.admin.publish(&ev("a.b", "/x", "4")).await.status, 201);
    assert_eq!(s.admin.get("/alerts").await.status, 200);
    assert_eq!(
        s.admin
            .put("/consumers/c1", &json!({"start": "earliest"}))
            .await
            .status,
        200
    );
    assert_eq!(s.admin.delete("/consumers/c1").await.status, 204);

    // Nothing refused was stored; the refusals are counted.
    assert_eq!(s.admin.read_all().await.len(), 3);
    let m = anon.get("/metrics").await.text();
    assert!(metric(&m, "msgbus_auth_unauthorized_total") >= 4.0);
    assert!(metric(&m, "msgbus_auth_forbidden_total") >= 11.0);

    // The token file holds no secret.
    let file = std::fs::read_to_string(s.app.data_dir().join("auth/tokens.json")).unwrap();
    for t in &s.secrets {
        let secret = secret_of(t);
        assert!(!file.contains(secret), "a secret is in auth/tokens.json");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.app.data_dir().join("auth/tokens.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    s.app.stop().await;
}

#[tokio::test]
async fn a_scoped_publisher_stores_nothing_outside_its_scope() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let token = create_token(
        dir.path(),
        "dev-agent",
        "publish",
        &["--type-prefix", "story.", "--source-prefix", "/agents/dev"],
    )
    .await;
    let app = start_app(dir, &[]).await;
    let (admin, dev) = (as_token(&app, &admin), as_token(&app, &token));

    assert_eq!(
        dev.publish(&ev("story.created", "/agents/dev/1", "a"))
            .await
            .status,
        201
    );
    let p = dev
        .publish(&ev("task.created", "/agents/dev/1", "b"))
        .await
        .assert_problem_type(403, "out-of-scope", "type outside");
    assert_eq!(error_fields(&p), vec!["type"]);
    let p = dev
        .publish(&ev("story.created", "/agents/qa", "c"))
        .await
        .assert_problem(403);
    assert_eq!(error_fields(&p), vec!["source"]);

    // A batch with one item outside: nothing stored, the item named.
    let r = dev
        .batch(&json!([
            ev("story.a", "/agents/dev", "d1"),
            ev("epic.b", "/agents/dev", "d2"),
            ev("story.c", "/agents/dev", "d3"),
        ]))
        .await;
    let p = r.assert_problem(403);
    assert_eq!(error_fields(&p), vec!["[1].type"], "{p}");
    let stored = admin.read_all().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_scoped_reader_sees_only_its_scope_in_pages_polls_streams_and_consumers() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let token = create_token(
        dir.path(),
        "story-dash",
        "read",
        &["--type-prefix", "story."],
    )
    .await;
    let app = start_app(dir, &[]).await;
    let (admin, reader) = (as_token(&app, &admin), as_token(&app, &token));
    let seqs = admin
        .publish_batch(&[
            ev("story.created", "/a", "1"),
            ev("task.created", "/a", "2"),
            ev("story.done", "/b", "3"),
        ])
        .await;

    // Pages: whatever the filter asks for.
    let page = reader.get_json("/events").await;
    assert_eq!(types(&page), ["story.created", "story.done"]);
    assert_eq!(page["next_after"], 3, "{page}");
    assert!(types(&reader.get_json("/events?type=task.created").await).is_empty());
    assert!(types(&reader.get_json("/events?type_prefix=task").await).is_empty());
    assert_eq!(
        types(&reader.get_json("/events?source=/b").await),
        ["story.done"]
    );
    // One event by seq: outside the scope, as if missing.
    assert_eq!(
        reader.get(&format!("/events/{}", seqs[0])).await.status,
        200
    );
    reader
        .get(&format!("/events/{}", seqs[1]))
        .await
        .assert_problem(404);

    // A long-poll wakes for an event in scope, not for one outside.
    let poll = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.get_json("/events?after=3&wait=10").await })
    };
    // An SSE stream from the head.
    let mut stream = SseReader::open(&reader, "/events/stream?after=3", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.publish_ok(&ev("task.updated", "/a", "4")).await;
    admin.publish_ok(&ev("story.updated", "/a", "5")).await;
    let page = poll.await.unwrap();
    assert_eq!(types(&page), ["story.updated"], "{page}");
    let msg = stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        msg.json()["event"]["type"],
        "story.updated",
        "{:?}",
        msg.json()
    );

    // A consumer made by the scoped token carries its scope.
    assert_eq!(
        reader
            .put("/consumers/mine", &json!({"type_prefix": ""}))
            .await
            .status,
        201
    );
    let page = reader.get_json("/consumers/mine/events").await;
    assert_eq!(
        types(&page),
        ["story.created", "story.done", "story.updated"]
    );
    // A wider consumer is not the scoped token's to read or ack.
    assert_eq!(admin.put("/consumers/all", &json!({})).await.status, 201);
    reader
        .get("/consumers/all/events")
        .await
        .assert_problem(403);
    reader
        .post("/consumers/all/ack", Some(&json!({"seq": 1})))
        .await
        .assert_problem(403);
    let listed = reader.get_json("/consumers").await;
    let names: Vec<&str> = listed["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    // The scope survives a restart.
    let app = app.restart(&[]).await;
    let reader = as_token(&app, &token);
    let page = reader.get_json("/consumers/mine/events").await;
    assert_eq!(
        types(&page),
        ["story.created", "story.done", "story.updated"]
    );
    app.stop().await;
}

#[tokio::test]
async fn revoke_expiry_and_the_admin_api_take_effect_without_a_restart() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let doomed = create_token(dir.path(), "doomed", "read", &[]).await;
    let brief = create_token(dir.path(), "brief", "read", &["--expires", "3s"]).await;
    let app = start_app(dir, &[]).await;
    let (admin, doomed, brief) = (
        as_token(&app, &admin),
        as_token(&app, &doomed),
        as_token(&app, &brief),
    );
    assert_eq!(doomed.get("/events").await.status, 200);
    assert_eq!(brief.get("/events").await.status, 200);

    // `msgbus token revoke` on the running server's directory.
    let d = app.data_dir().display().to_string();
    let (code, out, err) = run_msgbus(&["token", "revoke", "--data-dir", &d, "doomed"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let revoked_at = Instant::now();
    while doomed.get("/events").await.status == 200 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doomed.get("/events").await.assert_problem(401);

    // Expiry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while brief.get("/events").await.status == 200 {
        assert!(Instant::now() < deadline, "an expired token still works");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    brief.get("/events").await.assert_problem(401);

    // Online: create, list (no secrets), use at once, revoke at once.
    let r = admin
        .post(
            "/admin/tokens",
            Some(
                &json!({"name": "ci", "role": "publish", "type_prefixes": ["ci."], "rate": "50/s"}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let ci_token = created["token"].as_str().unwrap().to_string();
    let ci = as_token(&app, &ci_token);
    assert_eq!(ci.publish(&ev("ci.build", "/ci", "1")).await.status, 201);
    let listed = admin.get("/admin/tokens").await.text();
    assert!(listed.contains("\"ci\"") && !listed.contains(secret_of(&ci_token)));
    assert!(!listed.contains("sha256"), "{listed}");
    admin
        .post(
            "/admin/tokens",
            Some(&json!({"name": "ci", "role": "read"})),
        )
        .await
        .assert_problem(409);
    admin
        .post(
            "/admin/tokens",
            Some(&json!({"name": "bad name", "role": "read"})),
        )
        .await
        .assert_problem(422);
    admin
        .post("/admin/tokens", Some(&json!({"name": "x", "role": "root"})))
        .await
        .assert_problem(422);
    assert_eq!(admin.delete("/admin/tokens/ci").await.status, 204);
    ci.publish(&ev("ci.build", "/ci", "2"))
        .await
        .assert_problem(401);
    admin.delete("/admin/tokens/ci").await.assert_problem(404);
    app.stop().await;
}

#[tokio::test]
async fn a_query_token_opens_only_the_stream_and_never_reaches_the_log() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let reader = create_token(dir.path(), "browser", "read", &[]).await;
    let mut cmd = msgbus_command(dir.path(), &[]);
    // The most verbose logging there is, request spans included.
    cmd.env("RUST_LOG", "trace");
    let server = spawn_command(cmd).await;
    let anon = server.api.clone();
    let admin_secret = admin.clone();
    let admin = as_token(&anon, &admin);
    admin.publish_ok(&ev("a.b", "/x", "1")).await;

    let mut stream = SseReader::open(
        &anon,
        &format!("/events/stream?access_token={reader}&after=0"),
        None,
    )
    .await;
    let msg = stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(msg.json()["event"]["type"], "a.b");
    // Elsewhere a token in the URL is not a credential.
    anon.get(&format!("/events?access_token={reader}"))
        .await
        .assert_problem(401);
    anon.get(&format!("/stats?access_token={reader}"))
        .await
        .assert_problem(401);
    drop(stream);
    let mut server = server;
    server.terminate(Duration::from_secs(15)).await;
    let log = server.stderr_text();
    // The log does name the requests (so the check below can fail)...
    assert!(
        log.contains("/events/stream"),
        "no request in the trace log"
    );
    // ...but never the token, from the URL or the header.
    for t in [&reader, &admin_secret] {
        let secret = secret_of(t);
        assert!(!log.contains(secret), "a token secret is in the log");
    }
}

#[tokio::test]
async fn auto_refuses_an_open_bus_on_a_non_loopback_address() {
    let dir = DataDir::temp();
    let d = dir.path().display().to_string();
    // The refusal comes before the bind: nothing listens on 0.0.0.0.
    let (code, out, err) = run_msgbus(&["--data-dir", &d, "--addr", "0.0.0.0:0"]).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("msgbus token create"), "{err}");
    assert!(err.contains("--auth off"), "{err}");
    // Nothing was written for it but the store itself: no token file.
    assert!(!dir.path().join("auth/tokens.json").exists());
}

#[tokio::test]
async fn the_bootstrap_secret_is_an_admin_and_turns_access_control_on() {
    let dir = DataDir::temp();
    let secret = "a-long-bootstrap-secret-for-containers-0123456789";
    let mut cmd = msgbus_command(dir.path(), &[]);
    cmd.env("MSGBUS_ADMIN_TOKEN", secret);
    let mut server = spawn_command(cmd).await;
    let anon = server.api.clone();
    anon.get("/events").await.assert_problem(401);
    let boot = as_token(&anon, secret);
    let r = boot
        .post(
            "/admin/tokens",
            Some(&json!({"name": "agent", "role": "publish"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let agent = as_token(&anon, r.json()["token"].as_str().unwrap());
    assert_eq!(agent.publish(&ev("a.b", "/x", "1")).await.status, 201);
    assert!(!server.stderr_text().contains(secret));

    // SIGHUP without TLS rereads the token file; it does not end the process.
    let r = boot
        .post(
            "/admin/tokens",
            Some(&json!({"name": "late", "role": "read"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    server.sighup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        anon.get("/health/live").await.status,
        200,
        "SIGHUP ended msgbus"
    );
    assert_eq!(
        as_token(&anon, r.json()["token"].as_str().unwrap())
            .get("/stats")
            .await
            .status,
        200
    );
    server.terminate(Duration::from_secs(15)).await;
    assert!(server.stderr_text().contains("SIGHUP: token file checked"));

    // Too short to be a secret: refused at start, saying why.
    let mut cmd = msgbus_command(dir.path(), &[]);
    cmd.env("MSGBUS_ADMIN_TOKEN", "short");
    let out = crate::common::process::run_to_exit(cmd, Duration::from_secs(20), "msgbus").await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("at least 32"), "{}", out.stderr);
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address() {
    let s = setup(&["--auth-failure-rate", "5/m"]).await;
    let anon = &s.app.api;
    let bad = as_token(anon, "mb_0123456789abcdef_nope");
    for n in 0..5 {
        bad.get("/events")
            .await
            .assert_problem_type(401, "unauthorized", &format!("try {n}"));
    }
    let r = bad.get("/events").await;
    r.assert_problem_type(429, "rate-limited", "the sixth failure");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    anon.get("/events").await.assert_problem(429);
    // A valid token from the same address still works; probes too.
    assert_eq!(s.reader.get("/events").await.status, 200);
    assert_eq!(anon.get("/health/ready").await.status, 200);
    let m = anon.get("/metrics").await.text();
    assert!(metric(&m, "msgbus_auth_failures_limited_total") >= 2.0);
    s.app.stop().await;
}

/// A flood of made-up tokens: each failure within `--auth-failure-rate` is
/// logged (address, token id), the ones refused with 429 beyond it are
/// only counted. Logging each of them would hand anyone who can reach the
/// port a way to write a log line per request, as fast as they can send.
#[tokio::test]
async fn failed_authentications_beyond_the_limit_do_not_fill_the_log() {
    let dir = DataDir::temp();
    create_token(dir.path(), "ops", "admin", &[]).await;
    let mut server =
        spawn_command(msgbus_command(dir.path(), &["--auth-failure-rate", "5/m"])).await;
    let anon = server.api.clone();
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    // The first five are answered 401, one by one, so their order is known.
    for n in 0..5 {
        let guess = as_token(&anon, &format!("mb_{n:016x}_made-up-secret"));
        statuses.push(guess.publish(&ev("a.b", "/x", "1")).await.status);
    }
    // The rest at once: refusals of a client that keeps guessing are held
    // (up to a second each), so one at a time they would take a minute.
    let guesses: Vec<_> = (5..60)
        .map(|n| {
            let guess = as_token(&anon, &format!("mb_{n:016x}_made-up-secret"));
            tokio::spawn(async move { guess.publish(&ev("a.b", "/x", "1")).await.status })
        })
        .collect();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    // Five, plus one a dozen seconds refills (a slow machine gets more).
    let refilled = (started.elapsed().as_secs_f64() / 12.0).floor() as usize;
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    assert!((5..=5 + refilled).contains(&unauthorized), "{statuses:?}");
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(unauthorized + limited, 60, "{statuses:?}");
    let m = anon.get("/metrics").await.text();
    assert_eq!(
        metric(&m, "msgbus_auth_failures_limited_total"),
        limited as f64
    );
    server.terminate(Duration::from_secs(15)).await;
    let logged: Vec<Value> = server
        .log()
        .into_iter()
        .filter(|l| l["message"] == "authentication failed")
        .collect();
    // The ones answered 401 are logged, each naming the token's id...
    assert_eq!(logged.len(), unauthorized, "first: {:?}", logged.first());
    assert_eq!(logged[0]["token_id"], "0000000000000000");
    // ...the ones refused beyond the limit are not.
}

#[tokio::test]
async fn a_token_has_its_own_rate_and_its_own_stream_cap() {
    let dir = DataDir::temp();
    let slow = create_token(dir.path(), "slow", "read", &["--rate", "2/s"]).await;
    let other = create_token(dir.path(), "other", "read", &[]).await;
    let app = start_app(dir, &["--max-streams-per-token", "2"]).await;
    let (slow, other) = (as_token(&app, &slow), as_token(&app, &other));
    // A burst of 4 (twice a second's worth), then 429.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(slow.get("/stats").await.status);
    }
    assert!(statuses[..4].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another token from the same address is not slowed.
    for _ in 0..10 {
        assert_eq!(other.get("/stats").await.status, 200);
    }
    // Two streams per token; the third is refused until one closes.
    let a = SseReader::open(&other, "/events/stream", None).await;
    let _b = SseReader::open(&other, "/events/stream", None).await;
    let refused = match SseReader::connect(&other, "/events/stream", None).await {
        Err(r) => r,
        Ok(_) => panic!("a third stream was admitted"),
    };
    refused.assert_problem_type(429, "rate-limited", "third stream");
    // A long-poll counts too.
    other.get("/events?wait=1").await.assert_problem(429);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SseReader::connect(&other, "/events/stream", None).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(r) => panic!("the closed stream's place was not freed: {}", r.text()),
        }
    }
    app.stop().await;
}
