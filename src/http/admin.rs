//! Operations on the store's health: alerts, backups and an on-demand
//! integrity check.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::api::{BackupInfo, CheckReport};
use super::error::Problem;
use super::AppState;
use crate::alerts::Alert;
use crate::monitor;
use crate::store::StoreHandle;

/// Locks a mutex, ignoring poisoning: every value behind it is replaced
/// whole, so a panic cannot leave one half-written.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let alerts = &state.alerts;
    Json(AlertList {
        alerts: alerts.list(),
        counts: alerts.counts(),
    })
}

/// List backups with their event range, size and verification state.
#[utoipa::path(get, path = "/admin/backups", tag = "operations",
    responses(
        (status = 200, description = "Backups, oldest first", body = BackupList),
        (status = 501, description = "The NATS JetStream backend keeps no backups of its own", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_backups(State(state): State<AppState>) -> Result<Json<BackupList>, Problem> {
    file_store(&state, "GET /admin/backups (the file store's backups)")?;
    Ok(Json(BackupList {
        backups: state.store.backups().into_iter().map(Into::into).collect(),
    }))
}

/// The file store's handle, or the `501` of a route only the file backend
/// has.
fn file_store<'a>(state: &'a AppState, what: &str) -> Result<&'a StoreHandle, Problem> {
    state
        .file_store
        .as_ref()
        .ok_or_else(|| Problem::file_backend_only(what))
}

/// Take a verified backup now.
#[utoipa::path(post, path = "/admin/backups", tag = "operations",
    responses(
        (status = 201, description = "Taken and verified", body = BackupInfo),
        (status = 500, description = "The backup failed; `detail` says why", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The NATS JetStream backend keeps no backups of its own", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
pub async fn take_backup(State(state): State<AppState>) -> Result<Response, Problem> {
    let store = file_store(&state, "POST /admin/backups (a backup of the file store)")?;
    match store.backup().await? {
        Ok(info) => Ok((StatusCode::CREATED, Json(BackupInfo::from(info))).into_response()),
        Err(reason) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup-failed",
            "Backup failed",
            reason.to_string(),
        )),
    }
}

/// Where a verification stands (`GET /admin/verify`, and a `202` answer).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VerifyStatus {
    /// `idle` (none since start), `running`, `finished`, or `cancelled`
    /// (stopped by the server's shutdown).
    pub state: String,
    /// The run's number, counting from 1 since start.
    pub run: Option<u64>,
    /// When the run started (RFC 3339).
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    pub finished_at: Option<String>,
    /// The report of a finished run.
    pub report: Option<CheckReport>,
}

/// A finished verification: its report, and which run it was.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VerifyResult {
    /// The run's number: callers that joined a running check share it.
    pub run: u64,
    /// True when this request joined a check another request started.
    pub joined: bool,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// The check's report.
    #[serde(flatten)]
    pub report: CheckReport,
}

/// At most one full check at a time. It runs in its own task, so a caller
/// that goes away (or whose request times out) does not stop it; its
/// result is kept for `GET /admin/verify`. It stops at shutdown.
#[derive(Debug, Default)]
pub struct Verifications {
    inner: std::sync::Mutex<VerifyInner>,
}

#[derive(Debug, Default)]
struct VerifyInner {
    runs: u64,
    /// The latest run's status.
    latest: Option<VerifyStatus>,
    /// Resolves to the final status of the running check, if one runs.
    running: Option<watch::Receiver<Option<VerifyStatus>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Verifications {
    /// The latest run's status (`idle` when none ran).
    pub fn status(&self) -> VerifyStatus {
        lock(&self.inner).latest.clone().unwrap_or(VerifyStatus {
            state: "idle".into(),
            run: None,
            started_at: None,
            finished_at: None,
            report: None,
        })
    }

    /// Joins the running check, or starts one. Returns its final status's
    /// receiver, its status now, and whether it was joined.
    fn start_or_join(
        self: &Arc<Self>,
        state: &AppState,
        store: StoreHandle,
    ) -> (watch::Receiver<Option<VerifyStatus>>, VerifyStatus, bool) {
        let mut g = lock(&self.inner);
        if let (Some(rx), Some(now)) = (&g.running, &g.latest) {
            return (rx.clone(), now.clone(), true);
        }
        g.runs += 1;
        let now = VerifyStatus {
            state: "running".into(),
            run: Some(g.runs),
            started_at: Some(crate::clock::now_rfc3339()),
            finished_at: None,
            report: None,
        };
        let (tx, rx) = watch::channel(None);
        g.latest = Some(now.clone());
        g.running = Some(rx.clone());
        let (me, min_free) = (Arc::clone(self), state.settings.min_free_bytes);
        let mut shutdown = state.shutdown.clone();
        let started = now.clone();
        g.task = Some(tokio::spawn(async move {
            let stop = shutdown.clone();
            let report = tokio::select! {
                r = monitor::run_full_check(&store, min_free, &stop) => Some(CheckReport::from(r)),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let done = VerifyStatus {
                state: if report.is_some() {
                    "finished"
                } else {
                    "cancelled"
                }
                .into(),
                finished_at: Some(crate::clock::now_rfc3339()),
                report,
                ..started
            };
            {
                let mut g = lock(&me.inner);
                g.latest = Some(done.clone());
                g.running = None;
            }
            let _ = tx.send(Some(done));
        }));
        (rx, now, false)
    }

    /// Waits (at most `within`) for a running check to stop; called at
    /// shutdown, after which it stops at its next file.
    pub async fn stopped(&self, within: Duration) {
        let task = lock(&self.inner).task.take();
        if let Some(task) = task {
            if tokio::time::timeout(within, task).await.is_err() {
                tracing::warn!("a verification did not stop in time");
            }
        }
    }
}

/// Run a full integrity check now (every file, every sealed segment's
/// SHA-256, every backup) and repair what it finds.
///
/// One check runs at a time: a request arriving while one runs joins it
/// (the same `run`, `joined: true`) instead of starting another. A check
/// that outlasts the request timeout goes on: the answer is then `202`
/// with its status and `Location: /admin/verify`, where its report is kept.
#[utoipa::path(post, path = "/admin/verify", tag = "operations",
    responses(
        (status = 200, description = "The check's report (of the run this request started or joined)", body = VerifyResult),
        (status = 202, description = "Still running after the request timeout; poll `GET /admin/verify`", body = VerifyStatus,
            headers(("Location" = String, description = "`/admin/verify`"))),
        (status = 501, description = "The NATS JetStream backend has no integrity check of its own", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down: the check was stopped", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ))]
pub async fn verify(State(state): State<AppState>) -> Response {
    let store = match file_store(
        &state,
        "POST /admin/verify (the file store's integrity check)",
    ) {
        Ok(s) => s.clone(),
        Err(p) => return p.into_response(),
    };
    let (mut rx, now, joined) = state.verifications.start_or_join(&state, store);
    // Answer before the request timeout would, with something useful.
    let within = state.settings.request_timeout * 9 / 10;
    let done = match tokio::time::timeout(within, rx.wait_for(Option::is_some)).await {
        Ok(Ok(done)) => done.clone(),
        Ok(Err(_)) => {
            return Problem::internal(&"the verification task ended without a result")
                .into_response()
        }
        Err(_) => None,
    };
    match done {
        Some(VerifyStatus {
            run: Some(run),
            started_at: Some(started_at),
            finished_at: Some(finished_at),
            report: Some(report),
            ..
        }) => Json(VerifyResult {
            run,
            joined,
            started_at,
            finished_at,
            report,
        })
        .into_response(),
        Some(_) => Problem::unavailable(
            "shutting-down",
            "Shutting down",
            "the server is shutting down; the check was stopped",
            5,
        )
        .into_response(),
        None => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, "/admin/verify")],
            Json(now),
        )
            .into_response(),
    }
}

/// The latest verification: running or finished, when, and its report.
#[utoipa::path(get, path = "/admin/verify", tag = "operations",
    responses(
        (status = 200, description = "The latest verification's status", body = VerifyStatus),
        (status = 501, description = "The NATS JetStream backend has no integrity check of its own", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_status(State(state): State<AppState>) -> Result<Json<VerifyStatus>, Problem> {
    file_store(
        &state,
        "GET /admin/verify (the file store's integrity check)",
    )?;
    Ok(Json(state.verifications.status()))
}
