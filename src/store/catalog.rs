//! [`BackupCatalog`]: the backups this process knows, oldest first. The one
//! owner of that list: the backup thread records what it takes and prunes
//! through it, the integrity monitor's scrub records what it finds through
//! it ([`BackupCatalog::scrub`]), and everyone else reads copies
//! ([`BackupCatalog::list`], [`BackupCatalog::summary`]). No caller holds
//! its lock.

use std::path::Path;
use std::sync::Mutex;

use super::backup::BackupInfo;
use super::fsutil::{self, AfterRead, ReadPace};
use super::integrity::Scope;
use super::{layout, lock};
use crate::alerts::{Alerts, Severity};

/// The backups known to this process.
#[derive(Debug, Default)]
pub(super) struct BackupCatalog {
    list: Mutex<Vec<BackupInfo>>,
}

/// What `/stats` shows of the backups: counts and the newest ones, without
/// copying every backup's file list on each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// Backups kept.
    pub count: u64,
    /// Creation time of the newest backup.
    pub newest: Option<String>,
    /// Creation time of the newest verified backup.
    pub newest_verified: Option<String>,
    /// The last seq the newest verified backup holds.
    pub newest_verified_last_seq: Option<u64>,
}

/// What one scrub of the backups found.
#[derive(Debug, Default)]
pub struct ScrubReport {
    /// Files checked.
    pub files_checked: u64,
    /// One line per backup that failed.
    pub problems: Vec<String>,
    /// True when a backup that had verified failed just now.
    pub newly_damaged: bool,
}

impl BackupCatalog {
    /// A copy of the list, oldest first.
    pub(super) fn list(&self) -> Vec<BackupInfo> {
        lock(&self.list).clone()
    }

    /// Counts and the newest backups.
    pub(super) fn summary(&self) -> BackupSummary {
        let list = lock(&self.list);
        let newest_verified = list.iter().rev().find(|b| b.verified);
        BackupSummary {
            count: list.len() as u64,
            newest: list.last().map(|b| b.manifest.created_at.clone()),
            newest_verified: newest_verified.map(|b| b.manifest.created_at.clone()),
            newest_verified_last_seq: newest_verified.map(|b| b.manifest.last_seq),
        }
    }

    /// True when any backup failed verification.
    pub(super) fn any_unverified(&self) -> bool {
        lock(&self.list).iter().any(|b| !b.verified)
    }

    /// True when the newest backup failed verification.
    pub(super) fn newest_unverified(&self) -> bool {
        lock(&self.list).last().is_some_and(|b| !b.verified)
    }

    /// True when `name` is a verified backup.
    pub(super) fn is_verified(&self, name: &str) -> bool {
        lock(&self.list)
            .iter()
            .any(|b| b.manifest.name == name && b.verified)
    }

    /// Replaces the list (the backup thread, after listing the disk).
    pub(super) fn set(&self, known: Vec<BackupInfo>) {
        *lock(&self.list) = known;
    }

    /// Records a backup just taken.
    pub(super) fn push(&self, info: BackupInfo) {
        lock(&self.list).push(info);
    }

    /// Forgets pruned backups.
    pub(super) fn remove(&self, names: &[String]) {
        lock(&self.list).retain(|b| !names.contains(&b.manifest.name));
    }

    /// Verifies one file of the newest backup (`Scope::Tick`) or every file
    /// of every backup (`Scope::Full`) against its manifest, and marks a
    /// backup that fails as unverified (an alert when it had verified).
    /// Stops between files once `stop` says so.
    pub(super) fn scrub(
        &self,
        data_dir: &Path,
        alerts: &Alerts,
        scope: Scope,
        pace: &mut ReadPace,
        stop: &dyn Fn() -> bool,
    ) -> ScrubReport {
        let mut report = ScrubReport::default();
        let list = self.list();
        let targets: Vec<_> = match scope {
            Scope::Full => list.iter().collect(),
            Scope::Tick { .. } | Scope::Start => list.iter().rev().take(1).collect(),
        };
        for b in targets {
            let dir = layout::backups_dir(data_dir).join(&b.manifest.name);
            let files: Vec<_> = match scope {
                Scope::Full => b.manifest.files.iter().collect(),
                Scope::Tick { scrub } if !b.manifest.files.is_empty() => {
                    vec![&b.manifest.files[scrub % b.manifest.files.len()]]
                }
                Scope::Start if !b.manifest.files.is_empty() => vec![&b.manifest.files[0]],
                Scope::Tick { .. } | Scope::Start => Vec::new(),
            };
            let mut error = None;
            for f in files {
                if stop() {
                    return report;
                }
                report.files_checked += 1;
                match fsutil::sha256_file_paced(&dir.join(&f.path), pace, AfterRead::DropCached) {
                    Ok((len, sha)) if len == f.bytes && sha == f.sha256 => {}
                    Ok((len, sha)) => {
                        error = Some(format!(
                            "{}: {len} bytes with SHA-256 {sha}, expected {} bytes with {}",
                            f.path, f.bytes, f.sha256
                        ));
                    }
                    Err(e) => error = Some(e.to_string()),
                }
            }
            let mut all = lock(&self.list);
            if let Some(entry) = all.iter_mut().find(|x| x.manifest.name == b.manifest.name) {
                match &error {
                    Some(e) => {
                        if entry.verified {
                            report.newly_damaged = true;
                            alerts.raise(
                                Severity::Error,
                                "backup_damaged",
                                Some(layout::backup_rel(&b.manifest.name)),
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
            drop(all);
            if let Some(e) = error {
                report
                    .problems
                    .push(format!("backup {}: {e}", b.manifest.name));
            }
        }
        report
    }
}
