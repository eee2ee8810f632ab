//! The ceiling: the least a server can do for `POST /events` on this
//! machine with the same stack (tokio, hyper, axum). It reads the body,
//! parses it into a `serde_json::Value` exactly as msgbus does, and answers
//! 201 with a small JSON. No disk, no validation, no index, no middleware.
//! msgbus's figures are reported as a ratio of this one's, measured in the
//! same run with the same load generator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

/// The ceiling's routes: `POST /events` and `GET /health/ready`.
pub fn router() -> Router {
    let seq = Arc::new(AtomicU64::new(0));
    Router::new()
        .route("/events", post(publish))
        .route("/health/ready", get(|| async { "ready" }))
        .with_state(seq)
}

async fn publish(State(seq): State<Arc<AtomicU64>>, body: Bytes) -> Response {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
            let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({"seq": seq, "id": id, "duplicate": false})),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Binds `addr` (port 0 picks one) and returns the bound address and the
/// server future.
pub async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, async move { axum::serve(listener, router()).await }))
}
