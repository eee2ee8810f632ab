//! The checked-in `openapi/openapi.json` must be exactly what the code
//! generates and what the server serves. When the API changes, regenerate it:
//! `cargo run -q -- openapi > openapi/openapi.json`
//! (or run this test with `UPDATE_OPENAPI=1`).

use std::path::Path;

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
    let dir = tempfile::tempdir().unwrap();
    let config = <msgbus::cli::Cli as clap::Parser>::parse_from([
        "msgbus",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ])
    .serve;
    let app = msgbus::app::Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    let served: serde_json::Value = reqwest::get(format!("http://{addr}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked_in_path()).unwrap()).unwrap();
    assert_eq!(served, on_disk);
    let docs = reqwest::get(format!("http://{addr}/docs/")).await.unwrap();
    assert_eq!(
        docs.status(),
        200,
        "Swagger UI is served without any download"
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
