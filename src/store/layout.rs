//! The data directory's layout: every file and directory name msgbus uses
//! inside it, and the functions that build their paths. Nothing else in
//! the store spells a name of the data directory; a second layout (or a
//! renamed file) is a change to this module alone.
//!
//! ```text
//! <data dir>/
//!   LOCK                      held for the life of the process (lock.rs)
//!   manifest.json             sealed segments, active segment, lineage
//!   consumers.json            consumer cursors: the snapshot
//!   consumers.log             consumer cursors: changes since the snapshot
//!   keys.filter               the sealed segments' key filter, saved (keyfilter.rs)
//!   backup-hashes.json        backup copies hashed recently, saved (backup.rs)
//!   schemas.json              payload schemas per event type, every version (schemas.rs)
//!   segments/<seq>.jsonl      the log, one file per segment
//!   segments/<seq>.jsonl.idx  the index of a sealed segment (segindex.rs)
//!   quarantine/               damaged bytes moved aside, never deleted
//!   backups/<nnnnnnnn>-<UTC>/ verified backups, each with backup.json
//! ```
//!
//! Pure: no I/O, and no dependency on any other store module.

use std::path::{Path, PathBuf};

/// Sub-directory holding segment files.
pub const SEGMENTS_DIR: &str = "segments";
/// Sub-directory where damaged bytes are moved aside.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Sub-directory holding backups.
pub const BACKUPS_DIR: &str = "backups";
/// The store manifest.
pub const MANIFEST: &str = "manifest.json";
/// The consumer snapshot.
pub const CONSUMERS: &str = "consumers.json";
/// The consumer change log, replayed over [`CONSUMERS`].
pub const CONSUMERS_LOG: &str = "consumers.log";
/// The payload schemas, every version of every type.
pub const SCHEMAS: &str = "schemas.json";
/// The lock file.
pub const LOCK: &str = "LOCK";
/// The saved key filter of the sealed segments.
pub const KEY_FILTER: &str = "keys.filter";
/// Backup copies hashed recently, saved for the next run.
pub const BACKUP_HASHES: &str = "backup-hashes.json";
/// A backup's own manifest, inside each backup directory.
pub const BACKUP_MANIFEST: &str = "backup.json";
/// Prefix of a backup directory being assembled.
pub const BACKUP_TMP_PREFIX: &str = ".tmp-";
/// Suffix of a sealed segment's index file, after the segment's name.
pub const INDEX_SUFFIX: &str = ".idx";
/// Suffix of temporary files. Start-up removes any left behind by a crash.
pub const TMP_SUFFIX: &str = ".tmp";

/// `<data dir>/segments`.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SEGMENTS_DIR)
}

/// `<data dir>/segments/<file>`.
pub fn segment_path(data_dir: &Path, file: &str) -> PathBuf {
    segments_dir(data_dir).join(file)
}

/// `segments/<file>`: a segment relative to the data directory (or to a
/// backup directory), the way alerts, reports and `backup.json` name it.
pub fn segment_rel(file: &str) -> String {
    format!("{SEGMENTS_DIR}/{file}")
}

/// [`segment_rel`] of the segment at `path`.
pub fn segment_rel_of(path: &Path) -> String {
    segment_rel(&path.file_name().unwrap_or_default().to_string_lossy())
}

/// `<segment file>.idx`: the name of a segment's index file.
pub fn segment_index_name(file: &str) -> String {
    format!("{file}{INDEX_SUFFIX}")
}

/// `<data dir>/segments/<file>.idx`: the index file of segment `file`.
pub fn segment_index_path(data_dir: &Path, file: &str) -> PathBuf {
    segment_path(data_dir, &segment_index_name(file))
}

/// `segments/<file>.idx`: a segment's index file relative to the data
/// directory, the way alerts and reports name it.
pub fn segment_index_rel(file: &str) -> String {
    segment_rel(&segment_index_name(file))
}

/// The segment file name an index file name belongs to, if it is one.
pub fn segment_of_index_name(name: &str) -> Option<&str> {
    name.strip_suffix(INDEX_SUFFIX)
}

/// `<data dir>/quarantine`.
pub fn quarantine_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(QUARANTINE_DIR)
}

/// `<data dir>/backups`.
pub fn backups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(BACKUPS_DIR)
}

/// `backups/<name>`: a backup relative to the data directory.
pub fn backup_rel(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}")
}

/// `<data dir>/manifest.json`.
pub fn manifest_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MANIFEST)
}

/// `<data dir>/consumers.json`.
pub fn consumers_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONSUMERS)
}

/// `<data dir>/consumers.log`.
pub fn consumers_log_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONSUMERS_LOG)
}

/// `<data dir>/schemas.json`.
pub fn schemas_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SCHEMAS)
}

/// `<data dir>/keys.filter`.
pub fn key_filter_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILTER)
}

/// `<data dir>/backup-hashes.json`.
pub fn backup_hashes_path(data_dir: &Path) -> PathBuf {
    data_dir.join(BACKUP_HASHES)
}

/// `<data dir>/LOCK`.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK)
}

/// `<path>.tmp`, the temporary file an atomic replacement of `path` writes.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// The UTC time stamp in the names of backups, quarantined files and
/// restore directories (`20261129T235051.123456Z`): sortable, and free of
/// characters a file name cannot hold.
pub fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.6fZ").to_string()
}

/// [`stamp`] of now.
pub fn stamp_now() -> String {
    stamp(chrono::Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_and_name_files() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-29T23:50:51.123456789Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(stamp(t), "20261129T235051.123456Z");
        assert_eq!(
            tmp_path(Path::new("/d/manifest.json")),
            Path::new("/d/manifest.json.tmp")
        );
        assert_eq!(segment_rel("x.jsonl"), "segments/x.jsonl");
        assert_eq!(segment_index_rel("x.jsonl"), "segments/x.jsonl.idx");
        assert_eq!(segment_of_index_name("x.jsonl.idx"), Some("x.jsonl"));
        assert_eq!(
            segment_index_path(Path::new("/d"), "x.jsonl"),
            Path::new("/d/segments/x.jsonl.idx")
        );
    }
}
