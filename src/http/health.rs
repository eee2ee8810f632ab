//! Probes for orchestrators: liveness (the process serves) and readiness
//! (the store is open, the writer runs and is not poisoned).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::Problem;
use super::AppState;
use crate::store::Status;

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// `ready`, `live` or `unready`.
    pub status: String,
    /// Whether the writer thread runs.
    pub writer_alive: bool,
    /// Why writes are refused after a failed write, if they are.
    pub poisoned: Option<String>,
    /// Why writes are refused until damaged data is repaired, if they are.
    pub read_only: Option<String>,
    /// Every reason the server is not ready (empty when ready).
    pub reasons: Vec<String>,
    /// Newest stored seq.
    pub last_seq: u64,
    /// Commands waiting for the writer.
    pub queue_depth: u64,
    /// Seconds since start.
    pub uptime_seconds: f64,
}

/// Reasons the server is not ready, empty when it is.
fn unready_reasons(state: &AppState, status: &Status) -> Vec<String> {
    let mut reasons = Vec::new();
    if !status.writer_alive {
        reasons.push("the writer has stopped".to_string());
    }
    if let Some(p) = &status.poisoned {
        reasons.push(format!("the store is read-only: {p}"));
    }
    if let Some(r) = &status.read_only {
        reasons.push(format!("damaged data could not be repaired yet: {r}"));
    }
    if let Some(u) = &status.unavailable {
        reasons.push(format!("the backend is unavailable: {u}"));
    }
    if *state.shutdown.borrow() {
        reasons.push("the server is shutting down".to_string());
    }
    reasons
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "Serving", body = Object, example = json!({"status": "live"}))))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

/// Readiness: store open, writer alive and not poisoned.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready; `detail` says why", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let reasons = unready_reasons(&state, &state.store.status());
    if reasons.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        Problem::unavailable("not-ready", "Not ready", reasons.join("; "), 5).into_response()
    }
}

/// Readiness with details, for people.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = HealthReport),
        (status = 503, description = "Not ready", body = HealthReport),
    ))]
pub async fn health(State(state): State<AppState>) -> Response {
    let status = state.store.status();
    let reasons = unready_reasons(&state, &status);
    let report = HealthReport {
        status: if reasons.is_empty() {
            "ready".into()
        } else {
            "unready".into()
        },
        writer_alive: status.writer_alive,
        poisoned: status.poisoned,
        read_only: status.read_only,
        reasons: reasons.clone(),
        last_seq: status.last_seq,
        queue_depth: status.queue_depth as u64,
        uptime_seconds: state.settings.started.elapsed().as_secs_f64(),
    };
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
