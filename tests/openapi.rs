//! The checked-in `openapi/openapi.json` must be exactly what the code
//! generates and what the server serves. When the API changes, regenerate it:
//! `cargo run -q -- openapi > openapi/openapi.json`
//! (or run this test with `UPDATE_OPENAPI=1`).

mod common;

use std::path::Path;

use common::server::{spawn_app, spawn_app_with};
use serde_json::json;

fn checked_in_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

#[test]
fn checked_in_document_matches_the_code() {
    let generated = msgbus::http::docs::openapi_json();
    let path = checked_in_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "openapi/openapi.json is out of date with the code; regenerate it with \
         `cargo run -q -- openapi > openapi/openapi.json` and commit it"
    );
}

#[tokio::test]
async fn served_document_equals_the_checked_in_one() {
    let app = spawn_app().await;
    let served = app.get_json("/openapi.json").await;
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked_in_path()).unwrap()).unwrap();
    assert_eq!(served, on_disk);
    assert_eq!(
        app.get("/docs/").await.status,
        200,
        "Swagger UI is served without any download"
    );
    app.stop().await;
}

/// Every route of the router is in the document, with its methods.
#[test]
fn every_route_is_documented() {
    let doc: serde_json::Value = serde_json::from_str(&msgbus::http::docs::openapi_json()).unwrap();
    for (path, method) in [
        ("/alerts", "get"),
        ("/admin/backups", "get"),
        ("/admin/backups", "post"),
        ("/admin/verify", "post"),
        ("/admin/verify", "get"),
        ("/events", "post"),
        ("/events", "get"),
        ("/consumers/{name}", "put"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{} {path} is missing from the document",
            method.to_uppercase()
        );
    }
}

/// The bounds that are settings are the running server's own.
#[tokio::test]
async fn served_document_states_this_servers_limits() {
    let app = spawn_app_with(&["--max-wait", "3s", "--max-batch-events", "7"]).await;
    let doc = app.get_json("/openapi.json").await;
    let wait = doc["paths"]["/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wait")
        .unwrap()
        .clone();
    assert_eq!(wait["schema"]["maximum"], 3);
    assert_eq!(app.get("/events?wait=4").await.status, 400);
    let batch = &doc["paths"]["/events/batch"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(batch["maxItems"], 7);
    assert_eq!(
        doc["paths"]["/consumers/{name}"]["put"]["requestBody"]["required"],
        false
    );
    app.stop().await;
}

/// What the document allows, the server accepts: lengths in characters,
/// integral numbers written as `52.0` for integer extensions.
#[tokio::test]
async fn server_accepts_what_the_document_allows() {
    let app = spawn_app().await;
    let id: String = "\u{e9}".repeat(256); // 256 characters, 512 bytes
    let r = app
        .publish(&json!({"type": "t", "source": "/s", "id": id, "count": 52.0, "big": 1e2}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app
        .publish(&json!({"type": "t", "source": "/s", "id": "\u{e9}".repeat(257)}))
        .await;
    r.assert_problem(422);
    let r = app
        .publish(&json!({"type": "t", "source": "/s", "count": 1.5}))
        .await;
    r.assert_problem(422);
    app.stop().await;
}

/// An invalid `after` is refused even when `Last-Event-ID` wins over it.
#[tokio::test]
async fn stream_checks_after_even_with_last_event_id() {
    let app = spawn_app().await;
    let r = app
        .send(
            app.client
                .get(app.url("/events/stream?after=-1"))
                .header("Last-Event-ID", "0"),
        )
        .await;
    r.assert_problem(400);
    app.stop().await;
}
