//! `manifest.json`: the list of sealed segments with their SHA-256, and the
//! active segment. Only ever replaced atomically (see [`fsutil::write_atomic`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fsutil;
use super::layout;

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
    pub fn load(data_dir: &Path) -> Result<Option<Manifest>, String> {
        let path = layout::manifest_path(data_dir);
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
