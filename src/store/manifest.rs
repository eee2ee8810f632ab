//! `manifest.json`: the list of sealed segments with their SHA-256, and the
//! active segment. Only ever replaced atomically (see [`fsutil::write_atomic`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FileError;
use super::fsutil;
use super::layout;

/// Why `manifest.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// It exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The manifest.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// It is not a manifest (damaged, or not JSON).
    #[error("{} is not a valid manifest: {source}", path.display())]
    Invalid {
        /// The manifest.
        path: std::path::PathBuf,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
    /// It is a manifest of another format version.
    #[error("{} has format version {found}, this msgbus reads version {VERSION}", path.display())]
    Version {
        /// The manifest.
        path: std::path::PathBuf,
        /// The version it has.
        found: u32,
    },
}

/// Current manifest format version.
pub const VERSION: u32 = 1;

/// The store's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Sealed (immutable) segments, oldest first.
    pub sealed: Vec<SealedSegment>,
    /// First sequence number of the active segment.
    pub active_first_seq: u64,
    /// What the active segment was known to hold, durably, when this
    /// manifest was written (at a clean shutdown, after start-up recovery
    /// and when a backup is requested). Segments only grow, so it is a
    /// floor: a shorter active segment at the next start means records that
    /// were acknowledged are gone (truncated while stopped, or a damaged
    /// final newline), which recovery repairs from a backup or refuses,
    /// never accepts. `None` after a seal, and in stores written before
    /// msgbus kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_durable: Option<DurablePrefix>,
    /// Which history this store's files belong to: a random id given when
    /// the store is created and given anew by `msgbus restore`. Backups
    /// record it, and recovery repairs the active segment only from backups
    /// of the same history, so a backup taken before a restore cannot bring
    /// back records the restore rolled away. `None` in stores written before
    /// msgbus kept it (any backup may repair those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
}

/// A durable prefix of the active segment: its length and the last
/// sequence number in it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DurablePrefix {
    /// Bytes of the active segment known to be durable.
    pub bytes: u64,
    /// The last sequence number within them (`active_first_seq - 1` when
    /// they hold none).
    pub last_seq: u64,
}

/// An immutable segment, as recorded when it was sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedSegment {
    /// File name under `segments/`.
    pub file: String,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Number of records.
    pub count: u64,
    /// File length in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
}

/// How a sealed segment's file differs from its manifest entry.
#[derive(Debug, thiserror::Error)]
pub enum SealedMismatch {
    /// The file cannot be read (missing, a permission, descriptors).
    #[error("cannot be read: {}", .0.source)]
    Unreadable(#[source] FileError),
    /// Its length is not the manifest's.
    #[error("is {actual} bytes, the manifest says {expected}")]
    Length {
        /// The file's length.
        actual: u64,
        /// The manifest's.
        expected: u64,
    },
    /// Its SHA-256 is not the manifest's.
    #[error("has SHA-256 {actual}, the manifest says {expected}")]
    Sha256 {
        /// The file's.
        actual: String,
        /// The manifest's.
        expected: String,
    },
}

impl SealedSegment {
    /// Checks a sealed segment's bytes, already in memory, against this
    /// entry: length, then SHA-256. The one check of a sealed segment
    /// against the manifest (start-up recovery, `msgbus verify`); see
    /// [`SealedSegment::check_file`] for the file on disk.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), SealedMismatch> {
        self.check_length(bytes.len() as u64)?;
        self.check_sha256(&hex::encode(Sha256::digest(bytes)))
    }

    /// Checks the file at `path` against this entry: its length always,
    /// its SHA-256 (read in chunks) when `hash` is set. Used by the
    /// integrity monitor (which hashes one segment per tick) and by the
    /// writer's repair (is the file intact after all?).
    pub fn check_file(&self, path: &Path, hash: bool) -> Result<(), SealedMismatch> {
        self.check_file_paced(path, hash, &mut fsutil::ReadPace::unpaced())
    }

    /// [`SealedSegment::check_file`], hashing at most as fast as `pace`
    /// allows (the integrity monitor's checks).
    pub fn check_file_paced(
        &self,
        path: &Path,
        hash: bool,
        pace: &mut fsutil::ReadPace,
    ) -> Result<(), SealedMismatch> {
        let md = std::fs::metadata(path)
            .map_err(|e| SealedMismatch::Unreadable(FileError::new("stat", path, e)))?;
        self.check_length(md.len())?;
        if hash {
            let (len, sha) = fsutil::sha256_file_paced(path, pace, fsutil::AfterRead::KeepCached)
                .map_err(SealedMismatch::Unreadable)?;
            self.check_length(len)?;
            self.check_sha256(&sha)?;
        }
        Ok(())
    }

    fn check_length(&self, actual: u64) -> Result<(), SealedMismatch> {
        if actual != self.bytes {
            return Err(SealedMismatch::Length {
                actual,
                expected: self.bytes,
            });
        }
        Ok(())
    }

    fn check_sha256(&self, actual: &str) -> Result<(), SealedMismatch> {
        if actual != self.sha256 {
            return Err(SealedMismatch::Sha256 {
                actual: actual.to_string(),
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

impl Manifest {
    /// The manifest of an empty store.
    pub fn empty() -> Self {
        Manifest {
            version: VERSION,
            sealed: Vec::new(),
            active_first_seq: 1,
            active_durable: None,
            lineage: Some(new_lineage()),
        }
    }

    /// The durable floor of the active segment, 0 bytes when none is known.
    pub fn durable_floor(&self) -> DurablePrefix {
        self.active_durable.unwrap_or(DurablePrefix {
            bytes: 0,
            last_seq: self.active_first_seq.saturating_sub(1),
        })
    }

    /// Reads and parses the manifest; `Ok(None)` if it does not exist.
    pub fn load(data_dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = layout::manifest_path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let m: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(source) => return Err(ManifestError::Invalid { path, source }),
        };
        if m.version != VERSION {
            return Err(ManifestError::Version {
                path,
                found: m.version,
            });
        }
        Ok(Some(m))
    }

    /// True when a backup of history `backup_lineage` may repair this
    /// store's active segment.
    pub fn same_lineage(&self, backup_lineage: Option<&str>) -> bool {
        match (&self.lineage, backup_lineage) {
            (Some(mine), Some(theirs)) => mine == theirs,
            // A store or backup from before lineages were kept.
            _ => true,
        }
    }

    /// Writes the manifest atomically (temp, fsync, rename, fsync dir).
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&layout::manifest_path(data_dir), &bytes)
    }
}

/// A fresh lineage id.
pub fn new_lineage() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
