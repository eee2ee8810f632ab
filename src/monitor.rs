//! The integrity monitor: every `--monitor-interval` it checks the store's
//! files against what the writer left (see [`store::integrity`]), verifies a
//! file of the newest backup, and checks free disk space. It detects; the
//! writer repairs. Every detection, repair, failure, read-only switch and
//! low-disk change becomes an alert.
//!
//! [`store::integrity`]: crate::store::integrity

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::alerts::Severity;
use crate::store::backup;
use crate::store::integrity::{self, Finding, Scope};
use crate::store::writer::RepairOutcome;
use crate::store::{lock, Shared, StoreHandle};

/// The monitor's settings.
#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings {
    /// Time between checks.
    pub interval: Duration,
    /// Free space below which publishing answers 507.
    pub min_free_bytes: u64,
}

/// The result of one check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckReport {
    /// `ok`, `repaired` or `read_only`.
    pub status: String,
    /// What was found wrong.
    pub findings: Vec<Finding>,
    /// What the writer did about it.
    pub repairs: Vec<RepairOutcome>,
    /// Backup files whose SHA-256 was verified.
    pub backup_files_verified: u64,
    /// Backup problems found.
    pub backup_problems: Vec<String>,
    /// Free bytes on the data directory's filesystem.
    pub free_bytes: Option<u64>,
    /// How long the check took, milliseconds.
    pub duration_ms: f64,
}

/// Starts the monitor loop; it stops when `shutdown` turns true.
pub fn spawn(
    store: StoreHandle,
    settings: MonitorSettings,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(interval = ?settings.interval, min_free_bytes = settings.min_free_bytes, "integrity monitor started");
        let mut ticker = tokio::time::interval(settings.interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = 0usize;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            run_check(
                &store,
                Scope::Tick { scrub: tick },
                settings.min_free_bytes,
                &shutdown,
            )
            .await;
            tick = tick.wrapping_add(1);
        }
        tracing::info!("integrity monitor stopped");
    })
}

/// Runs one check, hands findings to the writer, raises alerts and updates
/// the integrity state. Also used by `POST /admin/verify` with [`Scope::Full`].
/// Reading the files stops between files once `shutdown` turns true.
pub async fn run_check(
    store: &StoreHandle,
    scope: Scope,
    min_free_bytes: u64,
    shutdown: &watch::Receiver<bool>,
) -> CheckReport {
    let started = Instant::now();
    let shared = store.shared_arc();
    let s = shared.clone();
    let shutdown = shutdown.clone();
    let (findings, (backup_checked, backup_problems, newly_damaged)) =
        tokio::task::spawn_blocking(move || {
            let stop = || *shutdown.borrow();
            let findings = integrity::check_until(&s, scope, &stop);
            (findings, verify_backups(&s, scope, &stop))
        })
        .await
        .unwrap_or_default();
    if newly_damaged {
        // A backup just failed verification: take a fresh one so a good copy exists.
        store.request_backup();
    }

    let alerts = &shared.alerts;
    let previously_open = lock(&shared.integrity).open_findings.clone();
    let was_read_only = lock(&shared.read_only).is_some();
    let repairs = store.repair(findings.clone()).await.unwrap_or_default();
    let mut repaired = 0;
    let mut failed = 0;
    let mut still_open = Vec::new();
    for o in &repairs {
        let file = o.finding.file();
        if o.already_intact {
            // The finding raced a change the writer made; not a detection.
            continue;
        }
        if !previously_open.contains(&file) {
            alerts.raise(
                Severity::Warning,
                "detection",
                Some(file.clone()),
                o.finding.detail(),
            );
        }
        if o.repaired {
            repaired += 1;
            alerts.raise(Severity::Warning, "repair", Some(file.clone()), &o.detail);
            alerts.resolve(&["detection", "repair_failed"], Some(&file));
        } else {
            failed += 1;
            if !previously_open.contains(&file) {
                alerts.raise(
                    Severity::Error,
                    "repair_failed",
                    Some(file.clone()),
                    &o.detail,
                );
            }
            still_open.push(file);
        }
    }
    let read_only = lock(&shared.read_only).clone();
    match (&read_only, was_read_only) {
        (Some(reason), false) => {
            alerts.raise(
                Severity::Error,
                "read_only",
                None,
                format!("writes refused until repaired: {reason}"),
            );
        }
        (None, true) => {
            alerts.resolve(&["read_only"], None);
            alerts.raise(
                Severity::Warning,
                "read_write",
                None,
                "repairs succeeded; writes accepted again",
            );
        }
        _ => {}
    }
    let free_bytes = check_disk(&shared, min_free_bytes);
    // Healthy again (or never damaged) but without a verified newest backup,
    // e.g. after a backup failed while the store was damaged: take one now.
    let newest_unverified = lock(&shared.backups).last().is_some_and(|b| !b.verified);
    if read_only.is_none() && still_open.is_empty() && newest_unverified {
        store.request_backup();
    }

    let status = if read_only.is_some() {
        "read_only"
    } else if repaired > 0 {
        "repaired"
    } else {
        "ok"
    };
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    {
        let mut st = lock(&shared.integrity);
        st.status = status.to_string();
        st.last_check = Some(crate::clock::now_rfc3339());
        st.last_check_ms = duration_ms;
        st.checks += 1;
        st.detections += repairs.iter().filter(|o| !o.already_intact).count() as u64;
        st.repairs += repaired;
        st.failures += failed;
        st.open_findings = still_open;
    }
    CheckReport {
        status: status.to_string(),
        findings,
        repairs,
        backup_files_verified: backup_checked,
        backup_problems,
        free_bytes,
        duration_ms,
    }
}

/// Verifies one file of the newest backup per tick (every file of every
/// backup on a full check); marks a backup that fails as unverified.
/// Returns the files checked, the problems found, and whether a backup
/// that had verified failed just now.
fn verify_backups(
    shared: &Arc<Shared>,
    scope: Scope,
    stop: &dyn Fn() -> bool,
) -> (u64, Vec<String>, bool) {
    let mut newly_damaged = false;
    let list = lock(&shared.backups).clone();
    let targets: Vec<_> = match scope {
        Scope::Full => list.iter().collect(),
        Scope::Tick { .. } => list.iter().rev().take(1).collect(),
    };
    let mut checked = 0;
    let mut problems = Vec::new();
    for b in targets {
        let dir = shared
            .data_dir
            .join(backup::BACKUPS_DIR)
            .join(&b.manifest.name);
        let files: Vec<_> = match scope {
            Scope::Full => b.manifest.files.iter().collect(),
            Scope::Tick { scrub } if !b.manifest.files.is_empty() => {
                vec![&b.manifest.files[scrub % b.manifest.files.len()]]
            }
            Scope::Tick { .. } => Vec::new(),
        };
        let mut error = None;
        for f in files {
            if stop() {
                return (checked, problems, newly_damaged);
            }
            checked += 1;
            match backup::sha256_file(&dir.join(&f.path)) {
                Ok((len, sha)) if len == f.bytes && sha == f.sha256 => {}
                Ok((len, sha)) => {
                    error = Some(format!(
                        "{}: {len} bytes with SHA-256 {sha}, expected {} bytes with {}",
                        f.path, f.bytes, f.sha256
                    ));
                }
                Err(e) => error = Some(e),
            }
        }
        let mut all = lock(&shared.backups);
        if let Some(entry) = all.iter_mut().find(|x| x.manifest.name == b.manifest.name) {
            match &error {
                Some(e) => {
                    if entry.verified {
                        newly_damaged = true;
                        shared.alerts.raise(
                            Severity::Error,
                            "backup_damaged",
                            Some(format!("{}/{}", backup::BACKUPS_DIR, b.manifest.name)),
                            e.clone(),
                        );
                    }
                    entry.verified = false;
                    entry.error = Some(e.clone());
                }
                None if entry.error.is_none() => {
                    entry.verified_at = Some(crate::clock::now_rfc3339())
                }
                None => {}
            }
        }
        if let Some(e) = error {
            problems.push(format!("backup {}: {e}", b.manifest.name));
        }
    }
    (checked, problems, newly_damaged)
}

/// Sets or clears low-disk mode; returns the free bytes. Also run once
/// before the server accepts its first request.
pub fn check_disk(shared: &Shared, min_free_bytes: u64) -> Option<u64> {
    let free = match fs2::available_space(&shared.data_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read free disk space");
            return None;
        }
    };
    let mut low = lock(&shared.low_disk);
    if free < min_free_bytes {
        if low.is_none() {
            let reason = format!("{free} bytes free on the data directory's filesystem, below the minimum of {min_free_bytes} (--min-free-bytes)");
            shared
                .alerts
                .raise(Severity::Error, "low_disk", None, &reason);
            *low = Some(reason);
        }
    } else if low.is_some() {
        *low = None;
        shared.alerts.resolve(&["low_disk"], None);
        shared.alerts.raise(
            Severity::Warning,
            "disk_ok",
            None,
            format!("{free} bytes free again; publishing resumed"),
        );
    }
    Some(free)
}
