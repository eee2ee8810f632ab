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

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::Writer;
use crate::alerts::Severity;
use crate::store::backup;
use crate::store::fsutil;
use crate::store::integrity::{FileState, Finding};
use crate::store::manifest::Manifest;
use crate::store::recovery::{self, SEGMENTS_DIR};

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

/// What a repair answers when a second look finds the file intact.
const INTACT: &str = "the file is intact";

impl Writer {
    /// Publishes what is now on disk, for the integrity monitor.
    pub(super) fn publish_file_state(&self) {
        let state = FileState {
            manifest: Arc::clone(&self.manifest),
            active_len: self.active.len,
            active_crc: self.active.crc,
            last_seq: self.next_seq - 1,
        };
        *self.shared.files.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Checks findings again and repairs what is still wrong. Read-only
    /// mode is set while anything stays unrepaired and cleared otherwise.
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
                    Finding::Manifest { .. } => self.repair_manifest(),
                };
                match result {
                    Ok(detail) => RepairOutcome {
                        already_intact: detail == INTACT,
                        finding,
                        repaired: true,
                        detail,
                    },
                    Err(detail) => RepairOutcome {
                        finding,
                        repaired: false,
                        already_intact: false,
                        detail,
                    },
                }
            })
            .collect();
        self.unrepaired = outcomes
            .iter()
            .filter(|o| !o.repaired)
            .map(|o| o.finding.clone())
            .collect();
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.repaired)
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
    pub(super) fn verify_active_file_after_commit(&mut self) -> Result<(), String> {
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
        let detail = match fsutil::file_equals(&self.active.path, &self.active.bytes) {
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

    /// A repair the writer starts itself, with the alerts the monitor would
    /// raise. Returns the failure's detail when it did not repair.
    fn repair_and_alert(&mut self, finding: Finding) -> Result<(), String> {
        let alerts = self.shared.alerts.clone();
        alerts.raise(
            Severity::Warning,
            "detection",
            Some(finding.file()),
            finding.detail(),
        );
        let outcome = self.repair(vec![finding]).remove(0);
        if outcome.repaired {
            alerts.raise(
                Severity::Warning,
                "repair",
                Some(outcome.finding.file()),
                &outcome.detail,
            );
            alerts.resolve(&["detection"], Some(&outcome.finding.file()));
            Ok(())
        } else {
            alerts.raise(
                Severity::Error,
                "repair_failed",
                Some(outcome.finding.file()),
                &outcome.detail,
            );
            Err(outcome.detail)
        }
    }

    fn repair_active(&mut self) -> Result<String, String> {
        let path = self.active.path.clone();
        let same_inode = match (self.active.file.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev() && a.nlink() > 0,
            _ => false,
        };
        if same_inode && fsutil::file_equals(&path, &self.active.bytes).unwrap_or(false) {
            return Ok(INTACT.into());
        }
        if let Some(bytes) = std::fs::read(&path).ok().filter(|b| !b.is_empty()) {
            recovery::quarantine(&self.shared.data_dir, &path, 0, &bytes)
                .map_err(|e| e.to_string())?;
        }
        let bytes = std::mem::take(&mut self.active.bytes);
        let written = replace_file(&path, &bytes);
        self.active.bytes = bytes;
        written?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("reopen {}: {e}", path.display()))?;
        self.active.file = file;
        self.refresh_reader(self.active.first_seq, &path)?;
        Ok(format!(
            "rewrote {} bytes from the writer's copy",
            self.active.len
        ))
    }

    fn repair_sealed(&mut self, file: &str) -> Result<String, String> {
        let Some(sealed) = self
            .manifest
            .sealed
            .iter()
            .find(|s| s.file == file)
            .cloned()
        else {
            return Ok(format!("{file} is no longer part of the store"));
        };
        let path = self.shared.data_dir.join(SEGMENTS_DIR).join(file);
        if let Ok((len, sha)) = backup::sha256_file(&path) {
            if len == sealed.bytes && sha == sealed.sha256 {
                self.refresh_reader(sealed.first_seq, &path)?;
                return Ok(INTACT.into());
            }
        }
        let (bytes, from) = backup::find_segment(&self.shared.data_dir, file, Some(&sealed.sha256))
            .ok_or_else(|| {
                format!(
                    "no verified backup holds {file} with SHA-256 {}",
                    sealed.sha256
                )
            })?;
        if let Ok(old) = std::fs::read(&path) {
            recovery::quarantine(&self.shared.data_dir, &path, 0, &old)
                .map_err(|e| e.to_string())?;
        }
        replace_file(&path, &bytes)?;
        self.refresh_reader(sealed.first_seq, &path)?;
        Ok(format!("restored from backup {from}"))
    }

    fn repair_manifest(&mut self) -> Result<String, String> {
        let data_dir = self.shared.data_dir.clone();
        if matches!(Manifest::load(&data_dir), Ok(Some(ref m)) if *m == *self.manifest) {
            return Ok(INTACT.into());
        }
        let path = data_dir.join(crate::store::manifest::FILE_NAME);
        if let Ok(old) = std::fs::read(&path) {
            recovery::quarantine(&data_dir, &path, 0, &old).map_err(|e| e.to_string())?;
        }
        self.manifest
            .store(&data_dir)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok("rewrote the manifest from the writer's copy".into())
    }

    /// Points readers at the (new) file at `path`: the next read opens it.
    fn refresh_reader(&self, first_seq: u64, _path: &Path) -> Result<(), String> {
        self.shared
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace_segment_file(first_seq);
        Ok(())
    }
}

/// Replaces `path` with `bytes` atomically (temp, fsync, rename, fsync dir).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(fsutil::TMP_SUFFIX);
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsutil::fsync_dir(dir)
    };
    write().map_err(|e| format!("rewrite {}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}
