//! The integrity monitor: every `--monitor-interval` it checks the store's
//! files against what the writer left (see [`store::integrity`]), verifies a
//! file of the newest backup, and checks free disk space. It detects; the
//! writer repairs. Every detection, repair, failure, read-only switch and
//! low-disk change becomes an alert.
//!
//! [`store::integrity`]: crate::store::integrity

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::alerts::Severity;
use crate::jobs::{self, FirstTick, Job};
use crate::store::fsutil::ReadPace;
use crate::store::integrity::{Finding, Scope};
use crate::store::writer::{self, RepairOutcome};
use crate::store::{CheckRecord, StoreHandle};

/// The monitor's settings.
#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings {
    /// Time between checks.
    pub interval: Duration,
    /// Free space below which publishing answers 507.
    pub min_free_bytes: u64,
    /// Bytes a second the periodic checks and the first check after a
    /// start read at most (`--monitor-read-rate`); 0: not paced.
    pub read_rate: u64,
}

/// The result of one check.
#[derive(Debug, Clone)]
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

/// Starts the monitor as a [`jobs`](crate::jobs) job; it stops when
/// `shutdown` turns true.
pub fn spawn(
    store: StoreHandle,
    settings: MonitorSettings,
    shutdown: watch::Receiver<bool>,
) -> Job {
    let stop = shutdown.clone();
    jobs::every(
        "integrity monitor",
        settings.interval.max(Duration::from_millis(10)),
        FirstTick::Now,
        shutdown,
        move |tick| {
            let (store, stop) = (store.clone(), stop.clone());
            async move {
                // Start-up loads sealed segments from their index files
                // without reading them: the first check hashes them all.
                let scope = if tick == 0 {
                    Scope::Start
                } else {
                    Scope::Tick { scrub: tick }
                };
                run_check(&store, scope, settings, &stop).await;
            }
        },
    )
}

/// A full check (every sealed segment, every backup file) now: what
/// `POST /admin/verify` runs. Not paced: an operator asked for it and
/// waits for the answer.
pub async fn run_full_check(
    store: &StoreHandle,
    min_free_bytes: u64,
    shutdown: &watch::Receiver<bool>,
) -> CheckReport {
    let settings = MonitorSettings {
        interval: Duration::ZERO,
        min_free_bytes,
        read_rate: 0,
    };
    run_check(store, Scope::Full, settings, shutdown).await
}

/// Runs one check, hands findings to the writer, raises alerts and updates
/// the integrity state. Also used by `POST /admin/verify` with [`Scope::Full`].
/// Reading the files stops between files once `shutdown` turns true, and
/// goes no faster than `settings.read_rate`.
pub async fn run_check(
    store: &StoreHandle,
    scope: Scope,
    settings: MonitorSettings,
    shutdown: &watch::Receiver<bool>,
) -> CheckReport {
    let started = Instant::now();
    let shutdown = shutdown.clone();
    let files = store.clone();
    let check = move || {
        let stop = || *shutdown.borrow();
        let mut pace = ReadPace::new(settings.read_rate);
        let findings = files.check_files(scope, &mut pace, &stop);
        (findings, files.scrub_backups(scope, &mut pace, &stop))
    };
    // The first check after a start and a full check read every sealed
    // segment and index file (gigabytes in a large store: about a minute of
    // a core at 50 million events). The first check, paced to `read_rate`
    // so it does not take the disk, runs under SCHED_IDLE (`bulk::run_idle`):
    // any other thread preempts it at once, so publishing runs as if it
    // were not there. A full check (an operator's `POST /admin/verify`,
    // unpaced) runs in the low-priority bulk lane, which still lets it
    // finish under load. They take no lock the writer or the workers wait
    // on for longer than a copy. The periodic check is small and stays at
    // normal priority, so damage is found as fast under load as without.
    let (findings, scrub) = match scope {
        Scope::Start => crate::bulk::run_idle("msgbus-startcheck", check).await,
        Scope::Full => crate::bulk::run(check).await,
        Scope::Tick { .. } => tokio::task::spawn_blocking(check).await.unwrap_or_default(),
    };
    if scrub.newly_damaged {
        // A backup just failed verification: take a fresh one so a good copy exists.
        store.request_backup();
    }

    let alerts = store.alerts();
    let previously_open = store.integrity().open_findings;
    let was_read_only = store.status().read_only.is_some();
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
        writer::raise_repair_alerts(alerts, o, previously_open.contains(&file));
        if o.repaired {
            repaired += 1;
        } else {
            failed += 1;
            still_open.push(file);
        }
    }
    let read_only = store.status().read_only;
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
    let free_bytes = check_disk(store, settings.min_free_bytes);
    // Healthy again (or never damaged) but without a verified newest backup,
    // e.g. after a backup failed while the store was damaged: take one now.
    let newest_unverified = store.newest_backup_unverified();
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
    store.record_check(CheckRecord {
        status: status.to_string(),
        duration_ms,
        detections: repairs.iter().filter(|o| !o.already_intact).count() as u64,
        repairs: repaired,
        failures: failed,
        open_findings: still_open,
    });
    CheckReport {
        status: status.to_string(),
        findings,
        repairs,
        backup_files_verified: scrub.files_checked,
        backup_problems: scrub.problems,
        free_bytes,
        duration_ms,
    }
}

/// Sets or clears low-disk mode; returns the free bytes. Also run once
/// before the server accepts its first request.
pub fn check_disk(store: &StoreHandle, min_free_bytes: u64) -> Option<u64> {
    let free = match fs2::available_space(store.data_dir()) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read free disk space");
            return None;
        }
    };
    let alerts = store.alerts();
    if free < min_free_bytes {
        let reason = format!("{free} bytes free on the data directory's filesystem, below the minimum of {min_free_bytes} (--min-free-bytes)");
        if store.set_low_disk(Some(reason.clone())) {
            alerts.raise(Severity::Error, "low_disk", None, &reason);
        }
    } else if store.set_low_disk(None) {
        alerts.resolve(&["low_disk"], None);
        alerts.raise(
            Severity::Warning,
            "disk_ok",
            None,
            format!("{free} bytes free again; publishing resumed"),
        );
    }
    Some(free)
}
