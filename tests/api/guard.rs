//! What every request passes first: browsers from other origins are
//! refused unless allowed (then CORS is answered), a body needs a
//! Content-Type, and request bodies in flight share one budget.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::http::{error_fields, Api, Reply};
use crate::common::server::{spawn_app, spawn_app_with};

const EVENT: &str = r#"{"type":"t","source":"/s"}"#;

async fn post_with(api: &Api, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = api
        .client
        .post(api.url(path))
        .header("content-type", "application/json")
        .body(EVENT);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    api.send(req).await
}

#[tokio::test]
async fn a_body_without_content_type_is_415_naming_it() {
    let app = spawn_app().await;
    for path in ["/events", "/events/batch", "/consumers/c/ack"] {
        let res = app.send(app.client.post(app.url(path)).body(EVENT)).await;
        let p = res.assert_problem(415);
        assert_eq!(error_fields(&p), vec!["Content-Type"], "{path}: {p}");
    }
    let res = app
        .send(app.client.put(app.url("/consumers/c")).body("{}"))
        .await;
    res.assert_problem(415);
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
    // Without a body there is nothing to label: admin POSTs still work.
    assert_eq!(app.post("/admin/backups", None).await.status, 201);
}

#[tokio::test]
async fn cross_origin_browser_requests_are_refused() {
    let app = spawn_app().await;
    let own = format!("http://{}", app.addr);
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://127.0.0.1:1"),
        ],
    ] {
        let res = post_with(&app, "/events", headers).await;
        let p = res.assert_problem_type(403, "cross-origin", &format!("{headers:?}"));
        assert!(res.header("access-control-allow-origin").is_none(), "{p}");
    }
    let res = app
        .send(
            app.client
                .post(app.url("/admin/verify"))
                .header("origin", "http://evil.example"),
        )
        .await;
    res.assert_problem(403);
    let res = app
        .send(
            app.client
                .get(app.url("/events"))
                .header("sec-fetch-site", "cross-site")
                .header("sec-fetch-mode", "cors")
                .header("origin", "http://evil.example"),
        )
        .await;
    res.assert_problem(403);
    assert_eq!(
        app.get_json("/events").await["last_seq"],
        0,
        "nothing stored"
    );

    // The server's own pages, non-browser clients and links followed work.
    let res = post_with(
        &app,
        "/events",
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(post_with(&app, "/events", &[]).await.status, 201);
    let res = app
        .send(
            app.client
                .get(app.url("/events"))
                .header("sec-fetch-site", "cross-site")
                .header("sec-fetch-mode", "navigate"),
        )
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn allowed_origins_get_cors_answers() {
    let app = spawn_app_with(&[
        "--cors-allow-origin",
        "https://dash.example,https://other.example",
    ])
    .await;
    let res = app
        .send(
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/events"))
                .header("origin", "https://dash.example")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type"),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://dash.example")
    );
    assert!(res
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        res.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert!(res.header("access-control-max-age").is_some());

    let res = post_with(
        &app,
        "/events",
        &[
            ("origin", "https://other.example"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://other.example")
    );
    assert!(res
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("origin")));

    // Any other origin is still refused, its preflight too.
    post_with(&app, "/events", &[("origin", "https://evil.example")])
        .await
        .assert_problem(403);
    let res = app
        .send(
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/events"))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST"),
        )
        .await;
    res.assert_problem(403);
    assert!(res.header("access-control-allow-origin").is_none());
}

/// Sends a request head declaring or chunking a body and `first` bytes of
/// it, and keeps the connection open: the body is in flight.
async fn start_upload(api: &Api, head: &str, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// The status code of the answer on `s`.
async fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `POST /events/batch` with `body` as JSON.
async fn post_batch(app: &Api, body: &str) -> Reply {
    app.send(
        app.client
            .post(app.url("/events/batch"))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn request_bodies_in_flight_share_a_budget() {
    let app = spawn_app_with(&["--max-body-bytes-in-flight", "100KiB"]).await;
    let big = json!([{"type": "t", "source": "/s", "data": "x".repeat(50_000)}]).to_string();
    // One upload declares 80 KB and stalls after a few bytes.
    let head = format!(
        "POST /events/batch HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 80000\r\n\r\n",
        app.addr
    );
    let held = start_upload(&app, &head, b"[").await;
    // Give the server a moment to take the first upload's share.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let res = post_batch(&app, &big).await;
        if res.status != 201 || Instant::now() > deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let p = refused.assert_problem(503);
    assert!(refused.header("retry-after").is_some(), "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("--max-body-bytes-in-flight"),
        "{p}"
    );

    // A chunked upload without a declared length is counted as it arrives.
    let head = format!(
        "POST /events/batch HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        app.addr
    );
    let chunk = format!("{:x}\r\n{}\r\n", 30_000, " ".repeat(30_000));
    let mut chunked = start_upload(&app, &head, chunk.as_bytes()).await;
    let _ = chunked.write_all(chunk.as_bytes()).await;
    assert_eq!(status_of(&mut chunked).await, 503);

    // The share comes back when the stalled upload goes away.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = post_batch(&app, &big).await;
        if res.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "budget not returned: {}",
            res.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get_json("/events").await["last_seq"], 1);
}
