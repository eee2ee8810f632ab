//! Repairs, done by the writer because it alone writes the data directory.
//! Damaged bytes are always copied to `quarantine/` before anything is
//! overwritten; every repair writes a temp file, fsyncs it, renames it over
//! the damaged one and fsyncs the directory.
//!
//! - active segment: rewritten from the writer's own copy of its bytes;
//! - sealed segment: restored from the newest verified backup holding it,
//!   checked against the manifest's SHA-256;
//! - manifest: rewritten from the writer's copy of it (the same table a
//!   rebuild from the segments gives).

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Writer;
use crate::alerts::{Alerts, Severity};
use crate::store::backup;
use crate::store::error::FileError;
use crate::store::fsutil;
use crate::store::integrity::Finding;
use crate::store::layout;
use crate::store::manifest::Manifest;
use crate::store::manifest::SealedSegment;
use crate::store::segindex;

/// What a repair did.
#[derive(Debug, Clone)]
pub struct RepairOutcome {
    /// What was found.
    pub finding: Finding,
    /// Whether the file is now intact.
    pub repaired: bool,
    /// True when the file turned out intact on a second look (the finding
    /// raced a change the writer made), so nothing was done.
    pub already_intact: bool,
    /// What was done, or why it could not be.
    pub detail: String,
}

/// What a repair did.
#[derive(Debug)]
enum Repaired {
    /// A second look found the file intact (the finding raced a change
    /// the writer made): nothing was done.
    AlreadyIntact,
    /// The sealed segment was deleted by retention meanwhile.
    NoLongerInStore {
        /// Its file name.
        file: String,
    },
    /// The active segment was rewritten from the writer's copy.
    ActiveRewritten {
        /// Bytes written.
        bytes: u64,
    },
    /// The sealed segment was restored from a backup.
    Restored {
        /// The backup's name.
        backup: String,
    },
    /// The manifest was rewritten from the writer's copy.
    ManifestRewritten,
    /// `schemas.json` was rewritten from the writer's copy.
    SchemasRewritten,
    /// A sealed segment's index file was rebuilt from the segment.
    IndexRebuilt {
        /// The segment's file name.
        file: String,
        /// The segment was also restored from this backup first.
        restored_from: Option<String>,
    },
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repaired::AlreadyIntact => write!(f, "the file is intact"),
            Repaired::NoLongerInStore { file } => {
                write!(f, "{file} is no longer part of the store")
            }
            Repaired::ActiveRewritten { bytes } => {
                write!(f, "rewrote {bytes} bytes from the writer's copy")
            }
            Repaired::Restored { backup } => write!(f, "restored from backup {backup}"),
            Repaired::ManifestRewritten => write!(f, "rewrote the manifest from the writer's copy"),
            Repaired::SchemasRewritten => {
                write!(f, "rewrote {} from the writer's copy", layout::SCHEMAS)
            }
            Repaired::IndexRebuilt {
                file,
                restored_from,
            } => {
                write!(
                    f,
                    "the index of segment {} was rebuilt from the segment",
                    layout::segment_rel(file)
                )?;
                match restored_from {
                    Some(b) => write!(f, " (itself first restored from backup {b})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Why a repair failed.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    /// Moving the damaged bytes aside or writing the good copy failed.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A sealed segment no verified backup holds.
    #[error(transparent)]
    Restore(#[from] backup::RestoreError),
    /// A sealed segment that cannot be indexed (its bytes match the
    /// manifest, so this is not expected).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A repair the writer started itself did not succeed; the store is
/// read-only until one does.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.detail)]
pub(super) struct NotRepaired(RepairOutcome);

/// Raises the alerts for one repair outcome, for the integrity monitor
/// and the writer's own repairs alike: `detection` (unless the file was
/// already known to be damaged), then `repair` (resolving the file's
/// `detection` and `repair_failed`) or `repair_failed` (unless already
/// known). A finding that turned out intact raises nothing.
pub fn raise_alerts(alerts: &Alerts, outcome: &RepairOutcome, already_open: bool) {
    if outcome.already_intact {
        return;
    }
    let file = outcome.finding.file();
    if !already_open {
        alerts.raise(
            Severity::Warning,
            "detection",
            Some(file.clone()),
            outcome.finding.detail(),
        );
    }
    if outcome.repaired {
        alerts.raise(
            Severity::Warning,
            "repair",
            Some(file.clone()),
            &outcome.detail,
        );
        alerts.resolve(&["detection", "repair_failed"], Some(&file));
    } else if !already_open {
        alerts.raise(
            Severity::Error,
            "repair_failed",
            Some(file),
            &outcome.detail,
        );
    }
}

impl Writer {
    /// Checks findings again and repairs what is still wrong. Read-only
    /// mode is set while anything but an index file stays unrepaired and
    /// cleared otherwise.
    ///
    /// Files whose repair failed earlier are checked again every time, even
    /// when the monitor's rotation did not look at them this tick: read-only
    /// mode lasts exactly as long as the damage, and once a good copy is put
    /// back (even renamed over the damaged file), readers are pointed at it.
    pub(super) fn repair(&mut self, mut findings: Vec<Finding>) -> Vec<RepairOutcome> {
        for old in std::mem::take(&mut self.unrepaired) {
            if !findings.iter().any(|f| f.file() == old.file()) {
                findings.push(old);
            }
        }
        let outcomes: Vec<RepairOutcome> = findings
            .into_iter()
            .map(|finding| {
                let result = match &finding {
                    Finding::ActiveSegment { .. } => self.repair_active(),
                    Finding::SealedSegment { file, .. } => self.repair_sealed(file),
                    Finding::SegmentIndex { file, .. } => self.repair_index(file),
                    Finding::Manifest { .. } => self.repair_manifest(),
                    Finding::Schemas { .. } => match crate::store::schemas::repair(&self.shared) {
                        Ok(true) => Ok(Repaired::SchemasRewritten),
                        Ok(false) => Ok(Repaired::AlreadyIntact),
                        Err(e) => Err(RepairError::Store(e)),
                    },
                };
                match result {
                    Ok(done) => RepairOutcome {
                        already_intact: matches!(done, Repaired::AlreadyIntact),
                        finding,
                        repaired: true,
                        detail: done.to_string(),
                    },
                    Err(e) => RepairOutcome {
                        finding,
                        repaired: false,
                        already_intact: false,
                        detail: e.to_string(),
                    },
                }
            })
            .collect();
        self.unrepaired = outcomes
            .iter()
            .filter(|o| !o.repaired)
            .map(|o| o.finding.clone())
            .collect();
        // An index file that cannot be rebuilt is retried and alerted, but
        // it is derived data: the log is whole, so writes go on.
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.repaired && !matches!(o.finding, Finding::SegmentIndex { .. }))
            .map(|o| {
                format!(
                    "{} ({}): {}",
                    o.finding.file(),
                    o.finding.detail(),
                    o.detail
                )
            })
            .collect();
        *crate::store::lock(&self.shared.read_only) =
            (!failed.is_empty()).then(|| failed.join("; "));
        self.publish_file_state();
        outcomes
    }

    /// After each commit: if the active file was deleted or cut under the
    /// writer, the commit went to a file nobody will find again. Rewrite it
    /// from memory now, before the commit is acknowledged; if that fails,
    /// the commit is not on disk and must not be acknowledged (its events
    /// stay in the writer's copy, written out by the next repair that
    /// succeeds, so a client's retry with the same id finds them).
    pub(super) fn verify_active_file_after_commit(&mut self) -> Result<(), NotRepaired> {
        let problem = match self.active.file.metadata() {
            Ok(md) if md.nlink() == 0 => Some("was deleted".to_string()),
            Ok(md) if md.len() != self.active.len => Some(format!(
                "is {} bytes, but {} were written",
                md.len(),
                self.active.len
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot be inspected: {e}")),
        };
        let Some(detail) = problem else {
            return Ok(());
        };
        self.repair_and_alert(Finding::ActiveSegment {
            file: file_name(&self.active.path),
            detail,
        })
    }

    /// Before sealing: a sealed segment's SHA-256 is computed from the
    /// writer's copy, so the file must hold exactly that copy. If it was
    /// damaged since the last check, rewrite it first; otherwise the damage
    /// would be sealed in with no backup able to undo it.
    /// Out of descriptors, the file cannot be checked: the seal waits
    /// ([`StoreError::TooManyOpenFiles`]) instead of taking that for damage.
    pub(super) fn verify_active_file_before_seal(&mut self) -> crate::store::error::Result<()> {
        let detail = match self.active.copy.equals_file(&self.active.path) {
            Ok(true) => return Ok(()),
            Err(e) if fsutil::is_descriptor_exhaustion(&e) => {
                return Err(crate::store::StoreError::io(
                    format!("check {} before sealing", self.active.path.display()),
                    e,
                ))
            }
            Ok(false) => format!(
                "differs from what was written ({} bytes on disk, {} written), found before sealing",
                std::fs::metadata(&self.active.path).map_or(0, |m| m.len()),
                self.active.len
            ),
            Err(e) => format!("cannot be read before sealing: {e}"),
        };
        // A failed repair leaves the store read-only; the seal then stops.
        let _ = self.repair_and_alert(Finding::ActiveSegment {
            file: file_name(&self.active.path),
            detail,
        });
        Ok(())
    }

    /// A repair the writer starts itself, with the alerts the monitor
    /// raises ([`raise_alerts`]).
    fn repair_and_alert(&mut self, finding: Finding) -> Result<(), NotRepaired> {
        let outcome = self.repair(vec![finding]).remove(0);
        raise_alerts(&self.shared.alerts, &outcome, false);
        if outcome.repaired {
            Ok(())
        } else {
            Err(NotRepaired(outcome))
        }
    }

    fn repair_active(&mut self) -> Result<Repaired, RepairError> {
        let path = self.active.path.clone();
        let same_inode = match (self.active.file.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev() && a.nlink() > 0,
            _ => false,
        };
        if same_inode && self.active.copy.equals_file(&path).unwrap_or(false) {
            return Ok(Repaired::AlreadyIntact);
        }
        if let Some(bytes) = std::fs::read(&path).ok().filter(|b| !b.is_empty()) {
            fsutil::quarantine(&self.shared.data_dir, &path, 0, &bytes)?;
        }
        let bytes = self
            .active
            .copy
            .to_vec()
            .map_err(FileError::at("read the writer's copy of", &path))?;
        fsutil::write_atomic(&path, &bytes).map_err(FileError::at("rewrite", &path))?;
        drop(bytes);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(FileError::at("reopen", &path))?;
        self.active.file = file;
        self.refresh_reader(self.active.first_seq);
        Ok(Repaired::ActiveRewritten {
            bytes: self.active.len,
        })
    }

    /// The manifest's entry of sealed segment `file`, or the answer of a
    /// repair of a segment that is no longer in the store.
    fn sealed_entry(&self, file: &str) -> Result<SealedSegment, Repaired> {
        self.manifest
            .sealed
            .iter()
            .find(|s| s.file == file)
            .cloned()
            .ok_or_else(|| Repaired::NoLongerInStore {
                file: file.to_string(),
            })
    }

    fn repair_sealed(&mut self, file: &str) -> Result<Repaired, RepairError> {
        let sealed = match self.sealed_entry(file) {
            Ok(sealed) => sealed,
            Err(gone) => return Ok(gone),
        };
        let path = layout::segment_path(&self.shared.data_dir, file);
        if sealed.check_file(&path, true).is_ok() {
            self.refresh_reader(sealed.first_seq);
            return Ok(Repaired::AlreadyIntact);
        }
        let restored = backup::restore_sealed(&self.shared.data_dir, &sealed)?;
        self.refresh_reader(sealed.first_seq);
        Ok(Repaired::Restored {
            backup: restored.backup,
        })
    }

    /// Rebuilds a sealed segment's index file from the segment: read,
    /// checked against the manifest's SHA-256 (restored from a backup
    /// first when it fails), scanned, written atomically. The damaged index
    /// file is copied to `quarantine/` first, like any damaged bytes.
    fn repair_index(&mut self, file: &str) -> Result<Repaired, RepairError> {
        let sealed = match self.sealed_entry(file) {
            Ok(sealed) => sealed,
            Err(gone) => return Ok(gone),
        };
        let data_dir = self.shared.data_dir.clone();
        if segindex::check(&data_dir, &sealed).is_ok() {
            return Ok(Repaired::AlreadyIntact);
        }
        let path = layout::segment_path(&data_dir, file);
        let mut restored_from = None;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) if sealed.check_bytes(&bytes).is_ok() => bytes,
            _ => {
                let restored = backup::restore_sealed(&data_dir, &sealed)?;
                self.refresh_reader(sealed.first_seq);
                restored_from = Some(restored.backup);
                restored.bytes
            }
        };
        let index = crate::store::recovery::build_index(&path, &sealed, &bytes)?;
        let idx_path = layout::segment_index_path(&data_dir, file);
        if let Ok(old) = std::fs::read(&idx_path) {
            fsutil::quarantine(&data_dir, &idx_path, 0, &old)?;
        }
        let bytes = segindex::encode(&index);
        segindex::store(&data_dir, file, &bytes).map_err(FileError::at("write", &idx_path))?;
        // Readers open the new file, described by its own summary.
        self.shared
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace_index_file(sealed.first_seq, segindex::decode_summary(&bytes).ok());
        Ok(Repaired::IndexRebuilt {
            file: file.to_string(),
            restored_from,
        })
    }

    fn repair_manifest(&mut self) -> Result<Repaired, RepairError> {
        let data_dir = self.shared.data_dir.clone();
        if matches!(Manifest::load(&data_dir), Ok(Some(ref m)) if *m == *self.manifest) {
            return Ok(Repaired::AlreadyIntact);
        }
        let path = layout::manifest_path(&data_dir);
        if let Ok(old) = std::fs::read(&path) {
            fsutil::quarantine(&data_dir, &path, 0, &old)?;
        }
        self.manifest
            .store(&data_dir)
            .map_err(FileError::at("write", &path))?;
        Ok(Repaired::ManifestRewritten)
    }

    /// Points readers of the segment starting at `first_seq` at its (new)
    /// file: the next read opens it.
    fn refresh_reader(&self, first_seq: u64) {
        self.shared
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace_segment_file(first_seq);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}
