//! The checked-in `openapi/openapi.json` must be exactly what the code
//! generates and what the server serves. When the API changes, regenerate it:
//! `cargo run -q -- openapi > openapi/openapi.json`
//! (or run this test with `UPDATE_OPENAPI=1`).

mod common;

use std::path::Path;

use common::server::spawn_app;

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
