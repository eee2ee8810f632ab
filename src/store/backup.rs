//! Backups: verified real copies of the manifest and segments under
//! `backups/<UTC time>/`, each with `backup.json` listing every file's
//! SHA-256. Live files are never hard-linked (a link would share the very
//! blocks whose damage a backup exists to survive); a later backup may link
//! an earlier backup's copy of a sealed segment once two distinct copies
//! exist (see `verified_copy`).
//!
//! A backup is assembled in `backups/.tmp-<name>/`, every file fsynced and
//! then re-read and checked against its SHA-256, and only then renamed into
//! place, so a listed backup is always complete and verified once.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FileError;
use super::fsutil;
use super::layout::{self, BACKUP_MANIFEST, BACKUP_TMP_PREFIX, SEGMENTS_DIR};
use super::manifest::{Manifest, SealedSegment};
use super::segment;

/// `backup.json`: what a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupFile {
    /// Path relative to the backup directory.
    pub path: String,
    /// Length in bytes.
    pub bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// A backup as listed by the API.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    /// What it holds.
    pub manifest: BackupManifest,
    /// Whether its files matched their SHA-256 at the last verification.
    pub verified: bool,
    /// When it was last verified.
    pub verified_at: Option<String>,
    /// What failed verification, if anything.
    pub error: Option<String>,
}

/// What the writer hands over for a backup: its manifest and the active
/// segment's durable length and CRC. Segments are append-only, so that
/// prefix of the file never changes while it is copied.
#[derive(Debug, Clone)]
pub struct BackupSource {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The store manifest at the time of the request.
    pub manifest: Arc<Manifest>,
    /// Durable length of the active segment.
    pub active_len: u64,
    /// CRC32C of that prefix, as the writer computed it.
    pub active_crc: u32,
    /// Last sequence number stored.
    pub last_seq: u64,
    /// The committed consumers as a `consumers.json` snapshot (the live
    /// state is that file plus `consumers.log`), if there are any.
    pub consumers: Option<Vec<u8>>,
    /// The committed `schemas.json` bytes, if any schema was registered.
    pub schemas: Option<Vec<u8>>,
}

/// How many physically distinct backup copies of each sealed segment a
/// backup makes sure exist before it shares (hard-links) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// One: the backup taken right after a seal. It copies the new segment
    /// and shares verified copies of the older ones. Together with the live
    /// segment that is two copies of everything; a second backup copy waits
    /// for the next timer or on-demand backup. Under a sustained burst
    /// (a seal every second) copying every new segment twice at once took
    /// 30% of the batch-publish throughput (bench: 327k vs 226k events/s
    /// with backups off and on), as the copies compete with the commits for
    /// the disk.
    One,
    /// Two: timer, monitor and on-demand backups. Until the retained backups
    /// hold two distinct copies of a segment it is copied afresh, so one
    /// damaged backup copy always leaves another.
    Two,
}

/// How long a backup copy that was hashed stays trusted for sharing before
/// it is hashed again (see [`HashedCopies`]).
///
/// Every backup (one per seal) shares the copies of all older segments, so
/// each copy is hashed again once per this period whatever else happens:
/// the whole newest backup, paced. With 10 minutes that was 18 GB every 10
/// minutes at 50 million events (30 MB/s, half the 64 MiB/s pace, all the
/// time, beside publishers and readers), and past about 100 million events
/// more than the pace allows, so backups would fall behind. An hour makes it
/// a sixth. Damage to a copy in between is the integrity monitor's to find
/// (it scrubs one file of the newest backup per tick, all of them in about
/// 25 minutes at 50 million events with the default interval); a backup
/// failing that scrub makes the next backup hash every copy again, and the
/// timer's backups keep two separate copies of each segment.
pub const REHASH_SHARED_AFTER: Duration = Duration::from_secs(3600);

/// Backup copies of sealed segments (by device and inode) whose SHA-256 was
/// checked recently, and when.
///
/// A later backup hard-links an earlier backup's copy of a sealed segment
/// only after checking that copy's SHA-256. Checking every shared copy at
/// every backup made each backup cost the whole store again: with a backup
/// after every seal, hashing grew quadratically with the store and took a
/// third of the server's CPU in benchmarks. A copy checked within
/// [`REHASH_SHARED_AFTER`], and not written to since (same length and
/// modification time), is linked without re-reading it; the integrity
/// monitor scrubs the newest backup's files meanwhile, one per tick, and a
/// backup failing that scrub empties this record. Kept by the backup thread
/// for the life of the process, and saved in `backup-hashes.json` for the
/// next one ([`HashedCopies::save`], [`HashedCopies::load`]): after a
/// start it holds the newest backup's copies, checked then
/// ([`verify_recording`]) unless the run before hashed them recently. Its
/// hashing is paced.
#[derive(Debug, Default)]
pub struct HashedCopies {
    checked: HashMap<(u64, u64), Checked>,
    /// Bytes a second its hashing reads (0: no limit).
    read_rate: u64,
    /// Set when the server stops: a backup or check in progress gives up
    /// at its next file ([`BackupError::Stopped`]).
    stop: Option<Arc<AtomicBool>>,
}

/// When a copy was hashed, what it hashed to, and which file it was then.
#[derive(Debug)]
struct Checked {
    at: Instant,
    sha256: String,
    file: FileId,
}

/// A file's identity and the metadata a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    /// Device and inode.
    inode: (u64, u64),
    len: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(FileId {
            inode: (m.dev(), m.ino()),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

impl HashedCopies {
    /// An empty record whose hashing reads at most `read_rate` bytes a
    /// second (0: no limit), so checking copies that are not cached (the
    /// whole store, after a start) leaves the disk to commits and reads.
    pub fn paced(read_rate: u64) -> Self {
        HashedCopies {
            checked: HashMap::new(),
            read_rate,
            stop: None,
        }
    }

    /// The same, giving up at the next file once `stop` is set. Paced, a
    /// check of a 50-million-event store's newest backup takes minutes,
    /// and a stopping server waited for all of it (more than the 60 s an
    /// orchestrator usually grants before it kills the process).
    pub fn stopping_on(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// [`BackupError::Stopped`] once the server is stopping.
    fn go_on(&self) -> Result<(), BackupError> {
        match &self.stop {
            Some(stop) if stop.load(Ordering::Relaxed) => Err(BackupError::Stopped),
            _ => Ok(()),
        }
    }

    /// Forgets every copy (a backup failed its check: any may be damaged).
    pub fn forget(&mut self) {
        self.checked.clear();
    }

    /// Length and SHA-256 of the backup copy at `path`, read at the pace,
    /// dropped from the page cache after.
    fn sha256(&self, path: &Path) -> Result<(u64, String), FileError> {
        super::fsutil::sha256_file_paced(
            path,
            &mut super::fsutil::ReadPace::new(self.read_rate),
            AfterRead::DropCached,
        )
    }

    /// True when the copy at `path` was checked recently against `sha256`
    /// and has not been written to since.
    fn is_fresh(&self, path: &Path, sha256: &str) -> bool {
        let Some(file) = FileId::of(path) else {
            return false;
        };
        self.checked.get(&file.inode).is_some_and(|c| {
            c.sha256 == sha256 && c.at.elapsed() < REHASH_SHARED_AFTER && c.file == file
        })
    }

    /// Records that the copy at `path` hashed to `sha256` just now.
    fn record(&mut self, path: &Path, sha256: &str) {
        if let Some(file) = FileId::of(path) {
            self.checked.insert(
                file.inode,
                Checked {
                    at: Instant::now(),
                    sha256: sha256.to_string(),
                    file,
                },
            );
        }
    }

    /// Forgets copies that were not checked for a long time (pruned backups).
    fn expire(&mut self) {
        self.checked
            .retain(|_, c| c.at.elapsed() < REHASH_SHARED_AFTER * 2);
    }

    /// Saves the copies hashed within [`REHASH_SHARED_AFTER`] to
    /// `data_dir`'s `backup-hashes.json`, with the wall-clock time of each
    /// hash. A restart then does not read the newest backup again (18 GB
    /// at 50 million events: five minutes of the disk, paced) when the
    /// run before hashed its copies within that time, as a run that took
    /// backups until it stopped did. Best effort: without the file the
    /// next start checks every copy.
    pub fn save(&self, data_dir: &Path) {
        let now = std::time::SystemTime::now();
        let copies: Vec<SavedCopy> = self
            .checked
            .values()
            .filter(|c| c.at.elapsed() < REHASH_SHARED_AFTER)
            .filter_map(|c| {
                let at = now.checked_sub(c.at.elapsed())?;
                Some(SavedCopy {
                    inode: c.file.inode,
                    len: c.file.len,
                    mtime: c.file.mtime,
                    sha256: c.sha256.clone(),
                    hashed_at_ms: at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64,
                })
            })
            .collect();
        let path = layout::backup_hashes_path(data_dir);
        let bytes = serde_json::to_vec(&SavedHashes { copies }).unwrap_or_default();
        if let Err(e) = fsutil::write_atomic(&path, &bytes) {
            tracing::debug!(error = %e, path = %path.display(), "cannot save the backup copies hashed recently; the next start checks them again");
        }
    }

    /// Takes in the copies [`HashedCopies::save`] saved in `data_dir` that
    /// were hashed less than [`REHASH_SHARED_AFTER`] ago by the wall clock
    /// (a time in the future, from a clock set back, is not trusted). A
    /// copy counts only while it is the same file with the same length and
    /// modification time, as within a run.
    pub fn load(&mut self, data_dir: &Path) {
        let Ok(bytes) = fs::read(layout::backup_hashes_path(data_dir)) else {
            return;
        };
        let Ok(saved) = serde_json::from_slice::<SavedHashes>(&bytes) else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for c in saved.copies {
            let age = now_ms
                .checked_sub(c.hashed_at_ms)
                .map(Duration::from_millis)
                .filter(|age| *age < REHASH_SHARED_AFTER);
            let Some(at) = age.and_then(|age| Instant::now().checked_sub(age)) else {
                continue;
            };
            let file = FileId {
                inode: c.inode,
                len: c.len,
                mtime: c.mtime,
            };
            self.checked.insert(
                c.inode,
                Checked {
                    at,
                    sha256: c.sha256,
                    file,
                },
            );
        }
    }
}

/// `backup-hashes.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SavedHashes {
    copies: Vec<SavedCopy>,
}

/// One copy in `backup-hashes.json`: which file it was and what it hashed
/// to when.
#[derive(Debug, Serialize, Deserialize)]
struct SavedCopy {
    /// Device and inode.
    inode: (u64, u64),
    len: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    sha256: String,
    /// Milliseconds since the Unix epoch.
    hashed_at_ms: u64,
}

/// Why a backup could not be taken, read or verified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackupError {
    /// An I/O operation failed: the disk, a permission, descriptors.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A `backup.json` that does not parse.
    #[error("parse {}: {source}", path.display())]
    Invalid {
        /// The backup manifest.
        path: PathBuf,
        /// What the parser found.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A file whose length or SHA-256 is not what it should be: the live
    /// segment it was copied from, or the copy, is damaged.
    #[error("{} fails verification: {bytes} bytes with SHA-256 {sha256}, expected {expected_bytes} bytes with {expected_sha256}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its length.
        bytes: u64,
        /// Its SHA-256.
        sha256: String,
        /// The length it should have.
        expected_bytes: u64,
        /// The SHA-256 it should have.
        expected_sha256: String,
    },
    /// The active segment's durable prefix is not what the writer wrote.
    #[error("the active segment {file} differs from what was written; not backed up until it is repaired")]
    ActiveDiffers {
        /// Its file name.
        file: String,
    },
    /// The backup thread is not running.
    #[error("the backup thread {0}")]
    NoThread(&'static str),
    /// The server stopped before the backup or check was done (nothing
    /// is wrong with the files).
    #[error("msgbus is stopping")]
    Stopped,
}

/// Copies `from` to `to` and fsyncs the copy, returning its length.
///
/// `fs::copy` copies inside the kernel (`copy_file_range`), without the two
/// trips through user space a read/write loop makes; the copy is then
/// re-read and checked against the manifest's SHA-256 by [`verify_files`],
/// which confirms the live segment and the copy at once. (A read/write loop
/// hashing as it copied, then the re-read, made backups a third of the
/// server's CPU in batch benchmarks.)
fn copy_synced(from: &Path, to: &Path) -> Result<u64, BackupError> {
    let n = fs::copy(from, to).map_err(FileError::at("copy", from))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(FileError::at("fsync", to))?;
    Ok(n)
}

pub use super::fsutil::{sha256_file, AfterRead};

/// Takes a verified backup of `src`. Blocking; run it off the commit path.
/// `hashed` remembers which earlier copies were checked recently.
pub fn take(
    src: &BackupSource,
    copies: Copies,
    hashed: &mut HashedCopies,
) -> Result<BackupInfo, BackupError> {
    take_showing(src, copies, hashed, &mut || {})
}

/// [`take`], calling `file_done` once for each segment linked or copied
/// (`msgbus backup` counts them in its progress line): the sealed
/// segments, then the active one.
pub fn take_showing(
    src: &BackupSource,
    copies: Copies,
    hashed: &mut HashedCopies,
    file_done: &mut dyn FnMut(),
) -> Result<BackupInfo, BackupError> {
    let root = layout::backups_dir(&src.data_dir);
    fsutil::create_dir_durable(&root).map_err(FileError::at("create", &root))?;
    let now = chrono::Utc::now();
    let number = list_dirs(&src.data_dir)
        .iter()
        .map(|d| sequence_number(d))
        .max()
        .unwrap_or(0)
        + 1;
    let mut name = format!("{number:08}-{}", layout::stamp(now));
    while root.join(&name).exists() {
        name.push('x');
    }
    let tmp = root.join(format!("{BACKUP_TMP_PREFIX}{name}"));
    let tmp_segments = tmp.join(SEGMENTS_DIR);
    fs::create_dir_all(&tmp_segments).map_err(FileError::at("create", &tmp_segments))?;
    hashed.expire();
    let result = assemble(
        src,
        &name,
        &now.to_rfc3339(),
        &tmp,
        copies,
        hashed,
        file_done,
    );
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
        return result;
    }
    let final_dir = root.join(&name);
    fs::rename(&tmp, &final_dir).map_err(FileError::at("rename", &tmp))?;
    fsutil::fsync_dir(&root).map_err(FileError::at("fsync", &root))?;
    result
}

fn assemble(
    src: &BackupSource,
    name: &str,
    created_at: &str,
    tmp: &Path,
    copies: Copies,
    hashed: &mut HashedCopies,
    file_done: &mut dyn FnMut(),
) -> Result<BackupInfo, BackupError> {
    let seg_dir = layout::segments_dir(&src.data_dir);
    let previous: Vec<(PathBuf, BackupManifest)> = list_dirs(&src.data_dir)
        .into_iter()
        .rev()
        .filter_map(|d| read_manifest(&d).ok().map(|m| (d, m)))
        .collect();
    let mut files = Vec::new();
    // Files copied now, which are re-read and checked before the backup is
    // declared; shared copies were checked just before they were linked.
    let mut copied = Vec::new();
    for sealed in &src.manifest.sealed {
        hashed.go_on()?;
        let rel = layout::segment_rel(&sealed.file);
        if let Some(prev) = verified_copy(
            &previous,
            &rel,
            &sealed.sha256,
            sealed.bytes,
            copies,
            hashed,
        ) {
            fs::hard_link(&prev, tmp.join(&rel)).map_err(FileError::at("link", &prev))?;
            files.push(BackupFile {
                path: rel,
                bytes: sealed.bytes,
                sha256: sealed.sha256.clone(),
            });
            file_done();
            continue;
        }
        // (Stopping while the shared copies were hashed is no reason to copy.)
        hashed.go_on()?;
        // Checked against the manifest's SHA-256 with the other copies below:
        // a mismatch means the live segment or the copy is damaged, and
        // either way the backup is refused.
        copy_synced(&seg_dir.join(&sealed.file), &tmp.join(&rel))?;
        copied.push(files.len());
        files.push(BackupFile {
            path: rel,
            bytes: sealed.bytes,
            sha256: sealed.sha256.clone(),
        });
        file_done();
    }
    let active_name = segment::file_name(src.manifest.active_first_seq);
    let active_rel = layout::segment_rel(&active_name);
    let (crc, sha) = copy_prefix(
        &seg_dir.join(&active_name),
        &tmp.join(&active_rel),
        src.active_len,
    )?;
    if crc != src.active_crc {
        return Err(BackupError::ActiveDiffers { file: active_name });
    }
    file_done();
    copied.push(files.len());
    files.push(BackupFile {
        path: active_rel,
        bytes: src.active_len,
        sha256: sha,
    });
    let manifest_bytes = serde_json::to_vec_pretty(&*src.manifest).expect("manifest serializes");
    write_synced(&tmp.join(layout::MANIFEST), &manifest_bytes)?;
    copied.push(files.len());
    files.push(BackupFile {
        path: layout::MANIFEST.to_string(),
        bytes: manifest_bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&manifest_bytes)),
    });
    // Consumer cursors go with the events they point into, so a restore
    // does not leave a cursor past the restored head. (A snapshot of the
    // committed state, taken by whoever built the source: the log the live
    // state also uses is already applied to it.)
    if let Some(bytes) = &src.consumers {
        write_synced(&tmp.join(layout::CONSUMERS), bytes)?;
        copied.push(files.len());
        files.push(BackupFile {
            path: layout::CONSUMERS.to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    // Payload schemas: a restore brings back the schemas the events were
    // validated against.
    if let Some(bytes) = src.schemas.as_ref().filter(|b| !b.is_empty()) {
        write_synced(&tmp.join(layout::SCHEMAS), bytes)?;
        copied.push(files.len());
        files.push(BackupFile {
            path: layout::SCHEMAS.to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    for d in [tmp.join(SEGMENTS_DIR), tmp.to_path_buf()] {
        fsutil::fsync_dir(&d).map_err(FileError::at("fsync", &d))?;
    }
    let first_seq = src
        .manifest
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(src.manifest.active_first_seq);
    let bm = BackupManifest {
        name: name.to_string(),
        lineage: src.manifest.lineage.clone(),
        created_at: created_at.to_string(),
        first_seq: if src.last_seq >= first_seq {
            first_seq
        } else {
            0
        },
        last_seq: src.last_seq,
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
    };
    // Verify what is now on disk before the backup is declared.
    verify_files(
        tmp,
        copied.iter().map(|&i| &bm.files[i]),
        &mut CheckedFiles::default(),
    )?;
    for &i in &copied {
        let f = &bm.files[i];
        hashed.record(&tmp.join(&f.path), &f.sha256);
    }
    let mut json = serde_json::to_vec_pretty(&bm).expect("backup manifest serializes");
    json.push(b'\n');
    let path = tmp.join(BACKUP_MANIFEST);
    fsutil::write_atomic(&path, &json).map_err(FileError::at("write", &path))?;
    Ok(BackupInfo {
        manifest: bm,
        verified: true,
        verified_at: Some(crate::clock::now_rfc3339()),
        error: None,
    })
}

/// Copies the first `len` bytes of `from` (the active segment's durable
/// prefix, which never changes) in chunks, returning their CRC32C and SHA-256.
fn copy_prefix(from: &Path, to: &Path, len: u64) -> Result<(u32, String), BackupError> {
    let mut src = File::open(from).map_err(FileError::at("open", from))?;
    let mut dst = File::create(to).map_err(FileError::at("create", to))?;
    let mut hasher = Sha256::new();
    let crc = fsutil::crc32c_prefix_with(
        &mut src,
        len,
        |e| FileError::new("read", from, e),
        |chunk| {
            hasher.update(chunk);
            dst.write_all(chunk)
                .map_err(|e| FileError::new("write", to, e))
        },
    )?;
    dst.sync_all().map_err(FileError::at("fsync", to))?;
    Ok((crc, hex::encode(hasher.finalize())))
}

/// A previous backup's copy of a sealed segment to share instead of
/// copying it again, if sharing keeps enough independent copies.
///
/// Sealed segments never change, so a later backup may hard-link an
/// earlier backup's verified copy: backups then cost the new data, not the
/// whole store, each time. But a linked copy is one set of blocks for every
/// backup that links it, so sharing happens only once the retained backups
/// hold as many physically distinct copies (different inodes) of the
/// segment as `copies` asks; until then the segment is copied afresh. With
/// [`Copies::Two`] one damaged backup copy therefore always leaves another.
/// The chosen copy is hashed again before it is linked unless `hashed` says
/// it was checked within [`REHASH_SHARED_AFTER`]. Live segment files are
/// never linked.
fn verified_copy(
    previous: &[(PathBuf, BackupManifest)],
    rel: &str,
    sha256: &str,
    bytes: u64,
    copies: Copies,
    hashed: &mut HashedCopies,
) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = previous
        .iter()
        .filter(|(_, m)| {
            m.files
                .iter()
                .any(|f| f.path == rel && f.sha256 == sha256 && f.bytes == bytes)
        })
        .map(|(dir, _)| dir.join(rel))
        .collect();
    let mut inodes: Vec<(u64, u64)> = candidates
        .iter()
        .filter_map(|p| FileId::of(p).map(|f| f.inode))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    let needed = match copies {
        Copies::One => 1,
        Copies::Two => 2,
    };
    if inodes.len() < needed {
        return None;
    }
    if let Some(fresh) = candidates.iter().find(|p| hashed.is_fresh(p, sha256)) {
        return Some(fresh.clone());
    }
    let good = candidates.into_iter().find(|path| {
        hashed.go_on().is_ok()
            && matches!(hashed.sha256(path), Ok((n, sha)) if n == bytes && sha == sha256)
    })?;
    hashed.record(&good, sha256);
    Some(good)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut f = File::create(path).map_err(FileError::at("create", path))?;
    f.write_all(bytes).map_err(FileError::at("write", path))?;
    f.sync_all().map_err(FileError::at("fsync", path))?;
    Ok(())
}

/// The files one pass over several backups has hashed, by identity
/// (device, inode, length, modification time), with their length and
/// SHA-256. Backups share their copies of sealed segments by hard link, so
/// the same file appears in many of them: hashing it once per backup that
/// lists it made `msgbus verify` of a 30M-event store with 10 backups hash
/// 118 GB (368 s) where about 22 GB of distinct files exist. A file listed
/// again is compared with its first hash, so damage to a shared copy is
/// still reported in every backup that lists it.
#[derive(Debug, Default)]
pub struct CheckedFiles {
    hashes: HashMap<FileId, (u64, String)>,
    /// Bytes actually read and hashed.
    pub hashed_bytes: u64,
    /// Bytes of files listed again and not read again.
    pub shared_bytes: u64,
}

impl CheckedFiles {
    fn sha256(&mut self, path: &Path) -> Result<(u64, String), FileError> {
        let id = FileId::of(path);
        if let Some(hit) = id.and_then(|id| self.hashes.get(&id)) {
            self.shared_bytes += hit.0;
            return Ok(hit.clone());
        }
        let (bytes, sha) = sha256_file(path, AfterRead::DropCached)?;
        self.hashed_bytes += bytes;
        // Identity read before the hash: a file changed meanwhile has a
        // new mtime, so a stale entry is never matched again.
        if let Some(id) = id {
            self.hashes.insert(id, (bytes, sha.clone()));
        }
        Ok((bytes, sha))
    }
}

fn verify_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = &'a BackupFile>,
    checked: &mut CheckedFiles,
) -> Result<(), BackupError> {
    for f in files {
        let path = dir.join(&f.path);
        let hashed = checked.sha256(&path)?;
        f.check(path, hashed)?;
    }
    Ok(())
}

impl BackupFile {
    /// The copy at `path`, of `(bytes, sha256)`, against this entry: the
    /// SHA-256 back when it matches, else why not.
    fn check(&self, path: PathBuf, (bytes, sha256): (u64, String)) -> Result<String, BackupError> {
        if bytes != self.bytes || sha256 != self.sha256 {
            return Err(BackupError::Mismatch {
                path,
                bytes,
                sha256,
                expected_bytes: self.bytes,
                expected_sha256: self.sha256.clone(),
            });
        }
        Ok(sha256)
    }
}

/// Reads a backup's manifest.
pub fn read_manifest(dir: &Path) -> Result<BackupManifest, BackupError> {
    let path = dir.join(BACKUP_MANIFEST);
    let bytes = fs::read(&path).map_err(FileError::at("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| BackupError::Invalid {
        path,
        source: Arc::new(e),
    })
}

/// Verifies every file of the backup `dir` against its SHA-256.
pub fn verify(dir: &Path) -> Result<BackupManifest, BackupError> {
    verify_sharing(dir, &mut CheckedFiles::default())
}

/// [`verify`], at `hashed`'s pace, recording each good copy there (the
/// server's check of its newest backup at start, whose copies the next
/// backup then shares without reading them again); copies `hashed` holds
/// as hashed recently (by the run before) are not read again.
pub fn verify_recording(
    dir: &Path,
    hashed: &mut HashedCopies,
) -> Result<BackupManifest, BackupError> {
    let bm = read_manifest(dir)?;
    for f in &bm.files {
        hashed.go_on()?;
        let path = dir.join(&f.path);
        if hashed.is_fresh(&path, &f.sha256) {
            continue;
        }
        let sha = f.check(path.clone(), hashed.sha256(&path)?)?;
        hashed.record(&path, &sha);
    }
    Ok(bm)
}

/// [`verify`], hashing only the files `checked` has not hashed yet (for a
/// pass over every backup).
pub fn verify_sharing(
    dir: &Path,
    checked: &mut CheckedFiles,
) -> Result<BackupManifest, BackupError> {
    let bm = read_manifest(dir)?;
    verify_files(dir, &bm.files, checked)?;
    Ok(bm)
}

/// The sequence number at the start of a backup directory's name
/// (`00000042-20261129T...Z`); 0 for names without one (backups from before
/// msgbus numbered them), which therefore sort first.
pub fn sequence_number(dir: &Path) -> u64 {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    name.split_once('-')
        .filter(|(n, _)| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// Backup directories, oldest first: by the sequence number in their name,
/// never by the clock (a backup directory dated in the future, from a
/// wrong clock or a copied store, must not make new backups look older and
/// get them pruned). Half-assembled `.tmp-*` directories are not listed.
pub fn list_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(layout::backups_dir(data_dir)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    dirs.sort_by_cached_key(|d| (sequence_number(d), d.clone()));
    dirs
}

/// Removes half-assembled backups left by a crash.
pub fn remove_incomplete(data_dir: &Path) {
    let Ok(rd) = fs::read_dir(layout::backups_dir(data_dir)) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        if e.file_name()
            .to_string_lossy()
            .starts_with(BACKUP_TMP_PREFIX)
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Finds `file` (a segment name) in the newest backup that holds it with a
/// matching SHA-256 (any SHA when `want_sha` is None), verifies the copy,
/// and returns its bytes and the backup's name. Backups whose copy fails
/// verification are skipped, falling back to older ones.
pub fn find_segment(
    data_dir: &Path,
    file: &str,
    want_sha: Option<&str>,
) -> Option<(Vec<u8>, String)> {
    let rel = layout::segment_rel(file);
    for dir in list_dirs(data_dir).into_iter().rev() {
        let Ok(bm) = read_manifest(&dir) else {
            continue;
        };
        let Some(entry) = bm.files.iter().find(|f| f.path == rel) else {
            continue;
        };
        if want_sha.is_some_and(|w| w != entry.sha256) {
            continue;
        }
        let Ok(bytes) = fs::read(dir.join(&rel)) else {
            continue;
        };
        if hex::encode(Sha256::digest(&bytes)) == entry.sha256 {
            return Some((bytes, bm.name));
        }
        tracing::warn!(backup = %dir.display(), file, "backup copy fails its SHA-256; trying an older backup");
    }
    None
}

/// A sealed segment put back from a backup.
#[derive(Debug)]
pub struct Restored {
    /// Its bytes, as now on disk.
    pub bytes: Vec<u8>,
    /// The backup they came from.
    pub backup: String,
}

/// Why a sealed segment could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No verified backup holds the segment the manifest names.
    #[error("no verified backup holds {file} with SHA-256 {sha256}")]
    NoBackup {
        /// The segment's file name.
        file: String,
        /// The SHA-256 the manifest gives it.
        sha256: String,
    },
    /// Moving the damaged file aside or writing the copy failed.
    #[error(transparent)]
    Io(#[from] FileError),
}

/// Restores the sealed segment `sealed` from the newest verified backup
/// whose copy matches the manifest's SHA-256: what the file holds now (if
/// it can be read) is copied to `quarantine/`, then the copy replaces it
/// atomically. Used at start-up (recovery) and by the writer's repair.
pub fn restore_sealed(data_dir: &Path, sealed: &SealedSegment) -> Result<Restored, RestoreError> {
    let Some((bytes, backup)) = find_segment(data_dir, &sealed.file, Some(&sealed.sha256)) else {
        return Err(RestoreError::NoBackup {
            file: sealed.file.clone(),
            sha256: sealed.sha256.clone(),
        });
    };
    let path = layout::segment_path(data_dir, &sealed.file);
    if let Ok(old) = fs::read(&path) {
        fsutil::quarantine(data_dir, &path, 0, &old)?;
    }
    fsutil::write_atomic(&path, &bytes).map_err(FileError::at("rewrite", &path))?;
    Ok(Restored { bytes, backup })
}

/// Verified backup copies of the active segment `file` from backups of
/// the store's own history (`lineage_ok`), newest first, that are longer
/// than `min_len` bytes or (with `min_len` = `None`) any length. Copies
/// that fail their SHA-256 are skipped with a warning. Reads a copy only
/// when its listed length qualifies, so the common start (no backup holds
/// more than the live file) reads only the small `backup.json` files.
pub fn active_copies(
    data_dir: &Path,
    file: &str,
    min_len: Option<u64>,
    lineage_ok: impl Fn(Option<&str>) -> bool,
) -> impl Iterator<Item = (Vec<u8>, String)> {
    let rel = layout::segment_rel(file);
    let file = file.to_string();
    list_dirs(data_dir).into_iter().rev().filter_map(move |dir| {
        let bm = read_manifest(&dir).ok()?;
        if !lineage_ok(bm.lineage.as_deref()) {
            return None;
        }
        let entry = bm.files.iter().find(|f| f.path == rel)?;
        if min_len.is_some_and(|m| entry.bytes <= m) {
            return None;
        }
        let bytes = fs::read(dir.join(&rel)).ok()?;
        if bytes.len() as u64 == entry.bytes && hex::encode(Sha256::digest(&bytes)) == entry.sha256
        {
            Some((bytes, bm.name))
        } else {
            tracing::warn!(backup = %bm.name, file = %file, "backup copy fails its SHA-256; trying an older backup");
            None
        }
    })
}

/// Deletes old backups beyond `keep`, oldest first, but never `just_taken`
/// nor the newest verified one, and an old one only when a newer verified
/// one exists. `verified(name)` says whether a backup verified.
pub fn prune(
    data_dir: &Path,
    keep: usize,
    just_taken: &str,
    verified: impl Fn(&str) -> bool,
) -> Vec<String> {
    let dirs = list_dirs(data_dir);
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    let Some(newest_verified) = names.iter().rposition(|n| verified(n)) else {
        return Vec::new();
    };
    let excess = names.len().saturating_sub(keep.max(1));
    let mut removed = Vec::new();
    for (i, name) in names.iter().enumerate().take(excess) {
        if i >= newest_verified {
            break;
        }
        if name == just_taken {
            continue;
        }
        if fs::remove_dir_all(&dirs[i]).is_ok() {
            removed.push(name.clone());
        }
    }
    if !removed.is_empty() {
        let _ = fsutil::fsync_dir(&layout::backups_dir(data_dir));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup directory `name` under `root` holding `files` (path,
    /// bytes), with a manifest naming each file's true SHA-256.
    fn backup_of(root: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = layout::backups_dir(root).join(name);
        let mut listed = Vec::new();
        for (path, bytes) in files {
            let at = dir.join(path);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(&at, bytes).unwrap();
            let (n, sha256) = sha256_file(&at, AfterRead::KeepCached).unwrap();
            listed.push(BackupFile {
                path: path.to_string(),
                bytes: n,
                sha256,
            });
        }
        let bm = BackupManifest {
            name: name.to_string(),
            lineage: None,
            created_at: "2026-11-30T00:00:00Z".to_string(),
            first_seq: 1,
            last_seq: 1,
            bytes: files.iter().map(|(_, b)| b.len() as u64).sum(),
            files: listed,
        };
        fs::write(dir.join(BACKUP_MANIFEST), serde_json::to_vec(&bm).unwrap()).unwrap();
        dir
    }

    /// A backup of two small segment copies, and its manifest.
    fn two_copies(root: &Path) -> (PathBuf, BackupManifest) {
        let dir = backup_of(
            root,
            "00000001-20261130T000000.000000Z",
            &[
                ("segments/a.jsonl", b"first"),
                ("segments/b.jsonl", b"second"),
            ],
        );
        let bm = read_manifest(&dir).unwrap();
        (dir, bm)
    }

    #[test]
    fn the_start_check_of_the_newest_backup_lets_the_next_backup_share_its_copies_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, bm) = two_copies(tmp.path());
        let mut hashed = HashedCopies::paced(64 << 20);
        verify_recording(&dir, &mut hashed).unwrap();
        for f in &bm.files {
            assert!(hashed.is_fresh(&dir.join(&f.path), &f.sha256), "{}", f.path);
        }
        // A later backup links the copy without reading it again.
        let previous = vec![(dir.clone(), bm.clone())];
        let f = &bm.files[0];
        let linked = verified_copy(
            &previous,
            &f.path,
            &f.sha256,
            f.bytes,
            Copies::One,
            &mut hashed,
        );
        assert_eq!(linked, Some(dir.join(&f.path)));
    }

    #[test]
    fn a_damaged_copy_fails_the_start_check_and_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, bm) = two_copies(tmp.path());
        fs::write(dir.join("segments/b.jsonl"), b"sEcond").unwrap();
        let mut hashed = HashedCopies::paced(0);
        let err = verify_recording(&dir, &mut hashed).unwrap_err();
        assert!(matches!(err, BackupError::Mismatch { .. }), "{err}");
        assert!(!hashed.is_fresh(&dir.join("segments/b.jsonl"), &bm.files[1].sha256));
    }

    fn make(root: &Path, name: &str) {
        let dir = layout::backups_dir(root).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(BACKUP_MANIFEST), b"{}").unwrap();
    }

    #[test]
    fn backups_are_ordered_by_number_not_by_the_clock_and_the_new_one_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A directory dated far in the future (a wrong clock, a copied store).
        make(root, "99991231T000000.000000Z");
        make(root, "00000001-20261129T100000.000000Z");
        make(root, "00000002-20261129T110000.000000Z");
        let names: Vec<String> = list_dirs(root)
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "99991231T000000.000000Z",
                "00000001-20261129T100000.000000Z",
                "00000002-20261129T110000.000000Z"
            ]
        );
        let removed = prune(root, 1, "00000002-20261129T110000.000000Z", |_| true);
        assert_eq!(
            removed,
            [
                "99991231T000000.000000Z",
                "00000001-20261129T100000.000000Z"
            ]
        );
        assert!(layout::backups_dir(root)
            .join("00000002-20261129T110000.000000Z")
            .is_dir());
    }
}
