//! The API's shapes of store data: what `/stats`, `/admin/backups` and
//! `/admin/verify` serve and the OpenAPI document describes, built from the
//! store's snapshot types with `From`. The store's own types derive no
//! schema: the wire format is decided here, so a store type can change
//! without changing the API by accident (and a second backend fills the
//! same shapes).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::store;

/// Something wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Finding {
    /// The active segment is missing, shorter than written, or its bytes differ.
    ActiveSegment {
        /// File name under `segments/`.
        file: String,
        /// What is wrong, with the offset where known.
        detail: String,
    },
    /// A sealed segment is missing, has the wrong length or the wrong SHA-256.
    SealedSegment {
        /// File name under `segments/`.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A sealed segment's index file (`<file>.idx`) is missing or damaged;
    /// it is rebuilt from the segment (derived data: nothing is lost).
    SegmentIndex {
        /// The segment's file name under `segments/`.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// `manifest.json` is missing, unreadable or differs from the writer's.
    Manifest {
        /// What is wrong.
        detail: String,
    },
    /// `schemas.json` is missing, damaged or differs from the writer's copy.
    Schemas {
        /// What is wrong.
        detail: String,
    },
}

impl From<store::Finding> for Finding {
    fn from(f: store::Finding) -> Self {
        match f {
            store::Finding::ActiveSegment { file, detail } => {
                Finding::ActiveSegment { file, detail }
            }
            store::Finding::SealedSegment { file, detail } => {
                Finding::SealedSegment { file, detail }
            }
            store::Finding::SegmentIndex { file, detail } => Finding::SegmentIndex { file, detail },
            store::Finding::Manifest { detail } => Finding::Manifest { detail },
            store::Finding::Schemas { detail } => Finding::Schemas { detail },
        }
    }
}

/// What a repair did.
#[derive(Debug, Clone, Serialize, ToSchema)]
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

impl From<store::RepairOutcome> for RepairOutcome {
    fn from(o: store::RepairOutcome) -> Self {
        RepairOutcome {
            finding: o.finding.into(),
            repaired: o.repaired,
            already_intact: o.already_intact,
            detail: o.detail,
        }
    }
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

impl From<crate::monitor::CheckReport> for CheckReport {
    fn from(r: crate::monitor::CheckReport) -> Self {
        CheckReport {
            status: r.status,
            findings: r.findings.into_iter().map(Into::into).collect(),
            repairs: r.repairs.into_iter().map(Into::into).collect(),
            backup_files_verified: r.backup_files_verified,
            backup_problems: r.backup_problems,
            free_bytes: r.free_bytes,
            duration_ms: r.duration_ms,
        }
    }
}

/// `backup.json`: what a backup holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupManifest {
    /// Directory name: a sequence number that orders backups, then the UTC
    /// creation time (for people; the clock does not order backups).
    pub name: String,
    /// The store history it belongs to (see `Manifest::lineage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// First sequence number held (0 when empty).
    pub first_seq: u64,
    /// Last sequence number held (0 when empty).
    pub last_seq: u64,
    /// Total bytes of the files.
    pub bytes: u64,
    /// Every file with its SHA-256, paths relative to the backup directory.
    pub files: Vec<BackupFile>,
}

/// One file in a backup.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupFile {
    /// Path relative to the backup directory.
    pub path: String,
    /// Length in bytes.
    pub bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// A backup as listed by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupInfo {
    /// What it holds.
    #[serde(flatten)]
    pub manifest: BackupManifest,
    /// Whether its files matched their SHA-256 at the last verification.
    pub verified: bool,
    /// When it was last verified.
    pub verified_at: Option<String>,
    /// What failed verification, if anything.
    pub error: Option<String>,
}

impl From<store::BackupInfo> for BackupInfo {
    fn from(b: store::BackupInfo) -> Self {
        let m = b.manifest;
        BackupInfo {
            manifest: BackupManifest {
                name: m.name,
                lineage: m.lineage,
                created_at: m.created_at,
                first_seq: m.first_seq,
                last_seq: m.last_seq,
                bytes: m.bytes,
                files: m
                    .files
                    .into_iter()
                    .map(|f| BackupFile {
                        path: f.path,
                        bytes: f.bytes,
                        sha256: f.sha256,
                    })
                    .collect(),
            },
            verified: b.verified,
            verified_at: b.verified_at,
            error: b.error,
        }
    }
}

/// The integrity monitor's state, shown in `/stats` and `/health`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct IntegrityState {
    /// `ok`, `repaired`, `read_only` or `unchecked`.
    pub status: String,
    /// When the last check finished (RFC 3339).
    pub last_check: Option<String>,
    /// How long it took, milliseconds.
    pub last_check_ms: f64,
    /// Checks run since start.
    pub checks: u64,
    /// Problems detected since start.
    pub detections: u64,
    /// Problems repaired since start.
    pub repairs: u64,
    /// Repairs that failed since start.
    pub failures: u64,
    /// Findings of the last check that are not repaired.
    pub open_findings: Vec<String>,
}

impl From<store::IntegrityState> for IntegrityState {
    fn from(s: store::IntegrityState) -> Self {
        IntegrityState {
            status: s.status,
            last_check: s.last_check,
            last_check_ms: s.last_check_ms,
            checks: s.checks,
            detections: s.detections,
            repairs: s.repairs,
            failures: s.failures,
            open_findings: s.open_findings,
        }
    }
}

/// Retention as `/stats` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetentionStats {
    /// The oldest retained seq: reads and cursors before it get 410 Gone
    /// (the next seq to be written when the store holds no event).
    pub oldest_seq: u64,
    /// `--retention-max-events`, if set.
    pub max_events: Option<u64>,
    /// `--retention-max-age` in seconds, if set.
    pub max_age_seconds: Option<f64>,
    /// `--retention-max-bytes`, if set.
    pub max_bytes: Option<u64>,
    /// Sealed segments deleted since start.
    pub segments_deleted: u64,
    /// Events deleted since start.
    pub events_deleted: u64,
    /// Bytes of segment files deleted since start.
    pub bytes_reclaimed: u64,
}

impl From<store::RetentionStats> for RetentionStats {
    fn from(r: store::RetentionStats) -> Self {
        RetentionStats {
            oldest_seq: r.oldest_seq,
            max_events: r.max_events,
            max_age_seconds: r.max_age_seconds,
            max_bytes: r.max_bytes,
            segments_deleted: r.segments_deleted,
            events_deleted: r.events_deleted,
            bytes_reclaimed: r.bytes_reclaimed,
        }
    }
}

/// Consumers as `/stats` shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsumerStats {
    /// Durable consumers.
    pub count: u64,
    /// The largest lag.
    pub max_lag: u64,
    /// Per consumer: events stored after its committed cursor.
    pub lag: BTreeMap<String, u64>,
}

impl From<store::ConsumerStats> for ConsumerStats {
    fn from(c: store::ConsumerStats) -> Self {
        ConsumerStats {
            count: c.count,
            max_lag: c.max_lag,
            lag: c.lag,
        }
    }
}
