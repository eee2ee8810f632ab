//! Publish, then read back: what was stored is what is served.

use serde_json::{json, Value};

use crate::common::files::first_segment;
use crate::common::server::{on_both, spawn_app, TestApp};

/// The raw bytes of the `event` member of a `{"seq":N,"event":...}` object,
/// as it appears in a response body (which msgbus splices from storage).
fn raw_event(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
    }
    let doc: Doc<'_> = serde_json::from_str(body).expect("a {seq, event} document");
    doc.event.get().to_string()
}

/// The `(seq, crc, raw event)` of every record in a segment file.
fn segment_records(bytes: &[u8]) -> Vec<(u64, String, String)> {
    #[derive(serde::Deserialize)]
    struct Rec<'a> {
        seq: u64,
        crc: String,
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
    }
    let text = std::str::from_utf8(bytes).expect("segments are UTF-8");
    assert!(text.ends_with('\n'), "every record ends with a newline");
    text.lines()
        .map(|line| {
            let r: Rec<'_> = serde_json::from_str(line).expect("a record per line");
            (r.seq, r.crc, r.event.get().to_string())
        })
        .collect()
}

#[tokio::test]
async fn structured_event_reads_back_exactly_as_stored() {
    let app = spawn_app().await;
    let sent = json!({
        "specversion": "1.0",
        "id": "order-17",
        "source": "/shop/orders",
        "type": "com.example.order.created",
        "subject": "order/17",
        "time": "2026-01-31T12:00:00Z",
        "datacontenttype": "application/json",
        "traceparent": "00-abc-def-01",
        "priority": 3,
        "urgent": true,
        "data": {"total": 12.5, "items": ["a", "b"], "note": "ünïcødé \"quoted\""}
    });
    let res = app.publish_ok(&sent).await;
    assert_eq!(res["seq"], 1);
    assert_eq!(res["id"], "order-17");
    assert_eq!(res["source"], "/shop/orders");
    assert_eq!(res["type"], "com.example.order.created");
    assert_eq!(res["time"], "2026-01-31T12:00:00Z");

    // By seq: the event equals what was sent.
    let one = app.get("/events/1").await;
    assert_eq!(one.status, 200);
    assert!(one.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let one_text = one.text();
    let one_doc: Value = serde_json::from_str(&one_text).unwrap();
    assert_eq!(one_doc["seq"], 1);
    assert_eq!(one_doc["event"], sent);

    // In a page: byte-identical to the single read.
    let page_text = app.get("/events").await.text();
    let page: Value = serde_json::from_str(&page_text).unwrap();
    assert_eq!(page["last_seq"], 1);
    assert_eq!(page["next_after"], 1);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], 1);
    let page_event = serde_json::to_string(&events[0]).unwrap();
    assert_eq!(raw_event(&page_event), raw_event(&one_text));

    // On disk: one record whose event bytes are exactly the served bytes,
    // with the CRC32C of those bytes.
    let disk = std::fs::read(first_segment(app.data_dir())).unwrap();
    let records = segment_records(&disk);
    assert_eq!(records.len(), 1);
    let (seq, crc, event) = &records[0];
    assert_eq!(*seq, 1);
    assert_eq!(event, &raw_event(&one_text), "served bytes == stored bytes");
    assert_eq!(crc, &format!("{:08x}", crc32c::crc32c(event.as_bytes())));
}

async fn id_specversion_and_time_are_filled_in_when_absent(app: TestApp) {
    let before = chrono::Utc::now();
    let res = app
        .publish_ok(&json!({"type": "t.gen", "source": "/gen", "data": 1}))
        .await;
    let after = chrono::Utc::now();

    let id = res["id"].as_str().expect("a generated id");
    let uuid = uuid::Uuid::parse_str(id).expect("the generated id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "UUIDv7, got {id}");
    assert_eq!(
        id,
        uuid.hyphenated().to_string(),
        "canonical lower-case form"
    );

    let time = res["time"].as_str().expect("a server time");
    let t = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339 time");
    let slack = chrono::Duration::seconds(2);
    assert!(
        t >= before - slack && t <= after + slack,
        "time {time} not near now"
    );

    let stored = app.get_json(&format!("/events/{}", res["seq"])).await;
    assert_eq!(stored["event"]["id"], id);
    assert_eq!(stored["event"]["time"], time);
    assert_eq!(stored["event"]["specversion"], "1.0");
    assert_eq!(stored["event"]["data"], 1);

    // Two publishes without ids get two different ids, in order.
    let second = app
        .publish_ok(&json!({"type": "t.gen", "source": "/gen"}))
        .await;
    assert_ne!(second["id"], res["id"]);
    assert_eq!(second["seq"], 2);
    assert!(second["id"].as_str().unwrap() > id, "UUIDv7s sort by time");
}

async fn cloudevents_json_media_type_is_accepted(app: TestApp) {
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header(
                    "content-type",
                    "application/cloudevents+json; charset=utf-8",
                )
                .body(r#"{"type":"t.ce","source":"/ce","id":"x1"}"#),
        )
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.headers["location"], "/events/1");
    let stored = app.get_json("/events/1").await;
    assert_eq!(stored["event"]["id"], "x1");
}

async fn binary_mode_stores_json_text_and_bytes(app: TestApp) {
    // JSON data stays JSON.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-specversion", "1.0")
                .header("ce-type", "com.example.bin")
                .header("ce-source", "/bin")
                .header("ce-id", "b1")
                .header("ce-subject", "thing%2F1")
                .header("ce-myext", "hello")
                .header("content-type", "application/json")
                .body(r#"{"n": 1, "s": "x"}"#),
        )
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.headers["location"], "/events/1");
    let body: Value = res.json();
    assert_eq!(body["id"], "b1");
    assert_eq!(body["type"], "com.example.bin");
    let ev = &app.get_json("/events/1").await["event"];
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "com.example.bin");
    assert_eq!(ev["source"], "/bin");
    assert_eq!(ev["id"], "b1");
    assert_eq!(ev["subject"], "thing/1", "percent-encoding is decoded");
    assert_eq!(ev["myext"], "hello");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["data"], json!({"n": 1, "s": "x"}));
    assert!(ev.get("data_base64").is_none());

    // Text stays a string.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-type", "com.example.text")
                .header("ce-source", "/bin")
                .header("ce-id", "b2")
                .header("content-type", "text/plain; charset=utf-8")
                .body("hello, world\nline two"),
        )
        .await;
    assert_eq!(res.status, 201);
    let ev = &app.get_json("/events/2").await["event"];
    assert_eq!(ev["data"], "hello, world\nline two");
    assert_eq!(ev["datacontenttype"], "text/plain; charset=utf-8");
    assert!(ev.get("id").is_some() && ev["time"].is_string());

    // Anything else is base64.
    let bytes: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff, b'\n'];
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-type", "com.example.blob")
                .header("ce-source", "/bin")
                .header("ce-id", "b3")
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await;
    assert_eq!(res.status, 201);
    let ev = &app.get_json("/events/3").await["event"];
    assert_eq!(ev["data_base64"], "AAEC/v8K");
    assert_eq!(ev["datacontenttype"], "application/octet-stream");
    assert!(ev.get("data").is_none());

    // Binary mode without an id gets a generated one.
    let res = app
        .send(
            app.client
                .post(app.url("/events"))
                .header("ce-type", "com.example.noid")
                .header("ce-source", "/bin"),
        )
        .await;
    assert_eq!(res.status, 201);
    let body: Value = res.json();
    let id = body["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
}

on_both!(
    id_specversion_and_time_are_filled_in_when_absent,
    cloudevents_json_media_type_is_accepted,
    binary_mode_stores_json_text_and_bytes,
);
