//! Operations on the store's health: alerts, backups and an on-demand
//! integrity check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::Problem;
use super::AppState;
use crate::alerts::Alert;
use crate::monitor::{self, CheckReport};
use crate::store::backup::BackupInfo;
use crate::store::integrity::Scope;
use crate::store::lock;

/// The alert list.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Recent alerts, oldest first (bounded by `--alert-capacity`).
    pub alerts: Vec<Alert>,
    /// Alerts raised since start, per kind.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// The backups on disk.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupList {
    /// Backups, oldest first.
    pub backups: Vec<BackupInfo>,
}

/// Recent alerts: detections, repairs, failures, read-only, low disk, poisoning.
#[utoipa::path(get, path = "/alerts", tag = "operations",
    responses((status = 200, description = "Alerts, oldest first", body = AlertList)))]
pub async fn alerts(State(state): State<AppState>) -> Json<AlertList> {
    let alerts = &state.store.shared().alerts;
    Json(AlertList {
        alerts: alerts.list(),
        counts: alerts.counts(),
    })
}

/// List backups with their event range, size and verification state.
#[utoipa::path(get, path = "/admin/backups", tag = "operations",
    responses((status = 200, description = "Backups, oldest first", body = BackupList)))]
pub async fn list_backups(State(state): State<AppState>) -> Json<BackupList> {
    Json(BackupList {
        backups: lock(&state.store.shared().backups).clone(),
    })
}

/// Take a verified backup now.
#[utoipa::path(post, path = "/admin/backups", tag = "operations",
    responses(
        (status = 201, description = "Taken and verified", body = BackupInfo),
        (status = 500, description = "The backup failed; `detail` says why", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
pub async fn take_backup(State(state): State<AppState>) -> Result<Response, Problem> {
    match state.store.backup().await? {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(reason) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup-failed",
            "Backup failed",
            reason,
        )),
    }
}

/// Run a full integrity check now (every file, every sealed segment's
/// SHA-256, every backup) and repair what it finds.
#[utoipa::path(post, path = "/admin/verify", tag = "operations",
    responses((status = 200, description = "The check's report", body = CheckReport)))]
pub async fn verify(State(state): State<AppState>) -> Json<CheckReport> {
    Json(monitor::run_check(&state.store, Scope::Full, state.settings.min_free_bytes).await)
}
