//! `manifest.json`: the list of sealed segments with their SHA-256, and the
//! active segment. Only ever replaced atomically (see [`fsutil::write_atomic`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fsutil;

/// File name of the manifest inside the data directory.
pub const FILE_NAME: &str = "manifest.json";

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

impl Manifest {
    /// The manifest of an empty store.
    pub fn empty() -> Self {
        Manifest {
            version: VERSION,
            sealed: Vec::new(),
            active_first_seq: 1,
        }
    }

    /// Reads and parses the manifest; `Ok(None)` if it does not exist.
    pub fn load(data_dir: &Path) -> Result<Option<Manifest>, String> {
        let path = data_dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a valid manifest: {e}", path.display()))?;
        if m.version != VERSION {
            return Err(format!(
                "{} has format version {}, this msgbus reads version {VERSION}",
                path.display(),
                m.version
            ));
        }
        Ok(Some(m))
    }

    /// Writes the manifest atomically (temp, fsync, rename, fsync dir).
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&data_dir.join(FILE_NAME), &bytes)
    }
}
