//! Every error path answers RFC 9457 problem+json with the right status,
//! names the field when it is a validation error, and is never a 5xx.

use serde_json::json;

use crate::common::http::error_fields;
use crate::common::server::{on_both, spawn_app_with, TestApp};
use crate::common::sse::SseReader;

async fn malformed_json_is_400(app: TestApp) {
    for (path, body) in [
        ("/events", "{not json"),
        ("/events", "{\"type\": \"t\","),
        ("/events", ""),
        ("/events", "nul"),
        // Well-formed to a lenient reader, but not JSON many parsers read
        // back: a lone UTF-16 surrogate, a number beyond any float.
        (
            "/events",
            r#"{"type":"t","source":"/s","data":{"s":"\ud800"}}"#,
        ),
        ("/events", r#"{"type":"t","source":"/s","data":[1e999]}"#),
        // A batch that is not JSON, and one whose second item is not JSON
        // many parsers read back: all or nothing, so nothing is stored.
        ("/events/batch", "[{\"type\":"),
        (
            "/events/batch",
            r#"[{"type":"t","source":"/s","id":"ok"},{"type":"t","source":"/s","data":"\udfff"}]"#,
        ),
    ] {
        app.post_json_text(path, body).await.assert_problem(400);
    }
    assert_eq!(
        app.get_json("/events").await["events"],
        json!([]),
        "nothing was stored"
    );

    // Binary mode with a JSON content type and a body that is not JSON.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-type", "t")
                .header("ce-source", "/s")
                .header("content-type", "application/json")
                .body("{oops"),
        )
        .await;
    res.assert_problem(400);
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

async fn invalid_events_are_422_naming_the_field(app: TestApp) {
    let cases = [
        (json!({"source": "/s"}), "type"),
        (json!({"type": "t"}), "source"),
        (json!({"type": "", "source": "/s"}), "type"),
        (json!({"type": 5, "source": "/s"}), "type"),
        (json!({"type": "t", "source": "/s", "id": ""}), "id"),
        (
            json!({"type": "t", "source": "/s", "specversion": "0.3"}),
            "specversion",
        ),
        (
            json!({"type": "t", "source": "/s", "time": "yesterday"}),
            "time",
        ),
        (
            json!({"type": "t", "source": "/s", "datacontenttype": "json"}),
            "datacontenttype",
        ),
        (
            json!({"type": "t", "source": "/s", "data_base64": "!!"}),
            "data_base64",
        ),
        (
            json!({"type": "t", "source": "/s", "data": 1, "data_base64": "AA=="}),
            "data_base64",
        ),
        (
            json!({"type": "t", "source": "/s", "Bad_Ext": "x"}),
            "Bad_Ext",
        ),
        (json!({"type": "t", "source": "/s", "ext": 1.5}), "ext"),
        (
            json!({"type": "t", "source": "/s", "subject": "a\u{0}b"}),
            "subject",
        ),
        (json!({"type": "t".repeat(300), "source": "/s"}), "type"),
        (json!([1, 2]), "$"),
        (json!("event"), "$"),
    ];
    for (event, field) in cases {
        let problem = app.publish(&event).await.assert_problem(422);
        assert!(
            error_fields(&problem).contains(&field.to_string()),
            "{event} should name {field}: {problem}"
        );
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{problem}"
        );
    }

    // Binary mode names the header.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-source", "/s")
                .header("ce-time", "noon"),
        )
        .await;
    let problem = res.assert_problem(422);
    let fields = error_fields(&problem);
    assert!(fields.contains(&"ce-type".to_string()), "{problem}");
    assert!(fields.contains(&"ce-time".to_string()), "{problem}");

    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

async fn oversized_event_and_body_are_413(app: TestApp) {
    // Under the limit: fine.
    app.publish_ok(&json!({"type": "t", "source": "/s", "data": "x".repeat(800)}))
        .await;
    // The serialized event is over 1 KiB, the body under the body limit.
    let problem = app
        .publish(&json!({"type": "t", "source": "/s", "data": "x".repeat(1500)}))
        .await
        .assert_problem(413);
    assert!(
        problem["detail"].as_str().unwrap().contains("1024"),
        "{problem}"
    );
    // The body itself is far over any limit (declared length).
    app.publish(&json!({"type": "t", "source": "/s", "data": "x".repeat(100_000)}))
        .await
        .assert_problem(413);
    // Over the limit without a declared length (chunked).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        std::iter::once(Ok(br#"{"type":"t","source":"/s","data":""#.to_vec()))
            .chain((0..100).map(|_| Ok(vec![b'y'; 1000])))
            .chain(std::iter::once(Ok(br#""}"#.to_vec())))
            .collect();
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                ))),
        )
        .await;
    res.assert_problem(413);
    // Binary mode data over the limit.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-type", "t")
                .header("ce-source", "/s")
                .header("content-type", "text/plain")
                .body("z".repeat(2000)),
        )
        .await;
    res.assert_problem(413);

    assert_eq!(app.get_json("/events").await["last_seq"], 1);
}

async fn max_event_bytes_is_exact(app: TestApp) {
    // With every attribute given, the stored event is the body as sent.
    let event = |pad: usize| {
        json!({
            "specversion": "1.0",
            "id": "padded",
            "source": "/s",
            "type": "t",
            "time": "2026-01-31T12:00:00Z",
            "data": "x".repeat(pad)
        })
    };
    let base = serde_json::to_vec(&event(0)).unwrap().len();
    let exactly = event(1000 - base);
    assert_eq!(serde_json::to_vec(&exactly).unwrap().len(), 1000);
    let res = app.publish_ok(&exactly).await;
    let stored = app.get(&format!("/events/{}", res["seq"])).await.text();
    assert!(stored.contains(&serde_json::to_string(&exactly).unwrap()));
    let problem = app.publish(&event(1001 - base)).await.assert_problem(413);
    assert!(
        problem["detail"].as_str().unwrap().contains("1001"),
        "{problem}"
    );
}

async fn unknown_seq_is_404_and_bad_seq_is_400(app: TestApp) {
    app.get("/events/1").await.assert_problem(404);
    app.publish_ok(&json!({"type": "t", "source": "/s"})).await;
    assert_eq!(app.get("/events/1").await.status, 200);
    app.get("/events/2").await.assert_problem(404);
    app.get("/events/0").await.assert_problem(404);
    app.get("/events/18446744073709551615")
        .await
        .assert_problem(404);
    for bad in ["abc", "-1", "1.5", "18446744073709551616"] {
        let problem = app.get(&format!("/events/{bad}")).await.assert_problem(400);
        assert_eq!(error_fields(&problem), vec!["seq"], "{bad}: {problem}");
    }
}

async fn bad_query_parameters_are_400_naming_them(app: TestApp) {
    for (query, field) in [
        ("typ=t", "typ"),
        ("after=1&after=2", "after"),
        ("limit=abc", "limit"),
        ("wait=-1", "wait"),
        ("wait=61", "wait"),
    ] {
        let problem = app
            .get(&format!("/events?{query}"))
            .await
            .assert_problem(400);
        assert_eq!(error_fields(&problem), vec![field], "{query}: {problem}");
    }
}

async fn unsupported_content_type_is_415(app: TestApp) {
    for (path, ct) in [
        ("/events", "text/plain"),
        ("/events", "application/xml"),
        ("/events", "application/x-www-form-urlencoded"),
        ("/events/batch", "text/plain"),
        ("/events/batch", "application/cloudevents+json"),
    ] {
        let res = app
            .send(
                app.client
                    .post(app.url(path))
                    .header("content-type", ct)
                    .body(r#"{"type":"t","source":"/s"}"#),
            )
            .await;
        let problem = res.assert_problem(415);
        assert!(
            problem["detail"].as_str().unwrap().contains(ct),
            "{path} {ct}: {problem}"
        );
    }
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

async fn unknown_route_is_404_and_wrong_method_is_405(app: TestApp) {
    for path in ["/nope", "/events/1/extra", "/eventsx", "/health/deep"] {
        app.get(path).await.assert_problem(404);
    }
    let c = &app.client;
    for req in [
        c.delete(app.url("/events")),
        c.put(app.url("/events")),
        c.post(app.url("/events/1")),
        c.delete(app.url("/events/1")),
        c.get(app.url("/events/batch")),
        c.post(app.url("/stats")),
        c.post(app.url("/health/ready")),
        c.put(app.url("/metrics")),
    ] {
        let res = app.send(req).await;
        res.assert_problem(405);
    }
}

/// Found by API fuzzing: a cursor of u64::MAX overflowed the index's scan
/// start and answered 500. It is an empty page, and the stream likewise
/// starts (and stays) empty.
async fn a_cursor_at_u64_max_is_an_empty_page_not_a_500(app: TestApp) {
    app.publish_ok(&json!({"type": "t", "source": "/s"})).await;
    let max = u64::MAX;
    let page = app.get_json(&format!("/events?after={max}")).await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_after"], json!(max));
    // Opens (200, an event stream); it is never read whole, it never ends.
    SseReader::open(&app, "/events/stream", Some(max)).await;
}

/// Found by API fuzzing: axum's own path rejection was plain text.
async fn a_path_parameter_that_is_not_utf8_is_problem_json(app: TestApp) {
    for path in ["/events/%FF", "/consumers/%FF", "/consumers/%FF/events"] {
        let res = app.get(path).await;
        let problem = res.assert_problem(400);
        assert!(!error_fields(&problem).is_empty(), "{path}: {problem}");
    }
}

/// Found by API fuzzing: a client that stops sending its body got a 503
/// after the request timeout. Its own slowness is a 408, after --body-timeout.
#[tokio::test]
async fn a_stalled_request_body_is_408_not_a_server_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The body timeout fires, or the request timeout would fire first (it is
    // shorter): either way the stalled client gets 408, not a 5xx.
    for args in [
        &["--body-timeout", "0.5"][..],
        &["--request-timeout", "1", "--body-timeout", "10"][..],
    ] {
        let app = spawn_app_with(args).await;
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(
            b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":\"t\"",
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut answer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let head = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 408"), "{args:?}: {head}");
        assert!(head.contains("application/problem+json"), "{head}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(app.get_json("/stats").await["events"]["total"], 0);
    }
}

/// Brackets inside strings are not nesting: `["]",` repeated 5,000 deep is
/// refused as any JSON parser refuses it (it used to be stored, and then
/// `jq` and Python failed on the page holding it), while a string full of
/// brackets is an ordinary value.
async fn nesting_is_counted_outside_strings_only(app: TestApp) {
    let deep = format!(
        r#"{{"type":"t","source":"/s","data":{}0{}}}"#,
        r#"["]","#.repeat(5000),
        "]".repeat(5000)
    );
    app.post_json_text("/events", &deep)
        .await
        .assert_problem(400);
    let batch = format!("[{deep}]");
    app.post_json_text("/events/batch", &batch)
        .await
        .assert_problem(400);
    assert_eq!(
        app.get_json("/events").await["last_seq"],
        0,
        "nothing stored"
    );

    let brackets = "[{".repeat(5000);
    let flat = json!({"type": "t", "source": "/s", "data": brackets});
    app.publish_ok(&flat).await;
    let page = app.get_json("/events").await;
    assert_eq!(page["events"][0]["event"]["data"], brackets);
}

/// A 422 lists at most 100 field errors and counts the rest in
/// `more_errors`, so a hostile body cannot make the answer many times its
/// own size (1,000 empty items used to list 2,000 errors).
async fn listed_validation_errors_are_capped(app: TestApp) {
    let items = vec![json!({}); 1000];
    let res = app.batch(&json!(items)).await;
    let problem = res.assert_problem(422);
    assert_eq!(error_fields(&problem).len(), 100, "{}", res.text().len());
    assert_eq!(problem["more_errors"], 1900);
    assert!(error_fields(&problem).contains(&"[0].type".to_string()));
    assert!(
        res.body.len() < 20_000,
        "answer of {} bytes",
        res.body.len()
    );

    // One event with many bad extension names is capped the same way.
    let mut ev = serde_json::Map::new();
    ev.insert("type".into(), json!("t"));
    ev.insert("source".into(), json!("/s"));
    for i in 0..300 {
        ev.insert(format!("Bad_{i}"), json!(1));
    }
    let res = app.publish(&serde_json::Value::Object(ev)).await;
    let problem = res.assert_problem(422);
    assert_eq!(error_fields(&problem).len(), 100);
    assert!(problem["more_errors"].as_u64().unwrap() > 0, "{problem}");
    assert!(
        res.body.len() < 20_000,
        "answer of {} bytes",
        res.body.len()
    );
    assert_eq!(app.get_json("/events").await["last_seq"], 0);
}

on_both!(
    malformed_json_is_400,
    invalid_events_are_422_naming_the_field,
    oversized_event_and_body_are_413("--max-event-bytes", "1KiB"),
    max_event_bytes_is_exact("--max-event-bytes", "1000"),
    unknown_seq_is_404_and_bad_seq_is_400,
    bad_query_parameters_are_400_naming_them,
    unsupported_content_type_is_415,
    unknown_route_is_404_and_wrong_method_is_405,
    a_cursor_at_u64_max_is_an_empty_page_not_a_500,
    a_path_parameter_that_is_not_utf8_is_problem_json,
    nesting_is_counted_outside_strings_only,
    listed_validation_errors_are_capped,
);
