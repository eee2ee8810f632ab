//! Small durable-filesystem helpers shared by the store.
//!
//! Every path that creates or renames a file ends with an fsync of the
//! directory, because a rename is only durable once its directory entry is.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub use super::error::is_descriptor_exhaustion;
use super::error::FileError;
use super::layout::{self, TMP_SUFFIX};

/// fsync a directory so that entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `path` with `bytes`: temp file in the same directory,
/// write, fsync the file, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, None)
}

/// [`write_atomic`] for a file only its owner may read or write (mode
/// 0600 from its creation on), such as the token file.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, Some(0o600))
}

fn write_atomic_with(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_atomic_as(path, mode, |f| f.write_all(bytes))
}

/// [`write_atomic`] for a file written by `write` (for one too large to
/// build in memory first).
pub fn write_atomic_streamed(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_atomic_as(path, None, write)
}

fn write_atomic_as(
    path: &Path,
    mode: Option<u32>,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = layout::tmp_path(path);
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut f = options.open(&tmp)?;
        if let Some(mode) = mode {
            // A temp file left by a crash keeps its old mode: set it.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        write(&mut f)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Copies damaged bytes of `file` (from `offset`) to `quarantine/` as
/// `<file>.<offset>.<stamp>.bad`, fsynced, before anything cuts or
/// replaces them. Returns the copy's path.
pub fn quarantine(
    data_dir: &Path,
    file: &Path,
    offset: u64,
    bytes: &[u8],
) -> Result<std::path::PathBuf, FileError> {
    let name = format!(
        "{}.{offset}.{}.bad",
        file.file_name().unwrap_or_default().to_string_lossy(),
        layout::stamp_now()
    );
    let path = layout::quarantine_dir(data_dir).join(name);
    write_atomic(&path, bytes).map_err(FileError::at("write", &path))?;
    Ok(path)
}

/// Removes leftover `*.tmp` files from `dir` (not recursive). Returns how many.
pub fn remove_stale_temp_files(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) && entry.file_type()?.is_file()
        {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Creates `dir` (and parents) and fsyncs its parent so the new entry survives a crash.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Chunk size of the chunked reads here ([`crc32c_prefix`]): whole-file reads of
/// a 64 MiB segment allocated and zeroed 64 MiB each time.
const CHUNK: usize = 1 << 20;

/// CRC32C of the first `len` bytes of `f`, read in chunks.
pub fn crc32c_prefix(f: &mut File, len: u64) -> std::io::Result<u32> {
    crc32c_prefix_with(f, len, |e| e, |_| Ok(()))
}

/// [`crc32c_prefix`], handing each chunk to `each` as well (a backup
/// copies and hashes the active segment's prefix in the same pass); a
/// failed read becomes `read_err(e)`.
pub fn crc32c_prefix_with<E>(
    f: &mut File,
    len: u64,
    read_err: impl Fn(std::io::Error) -> E,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u32, E> {
    use std::io::Read;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let (mut crc, mut left) = (0u32, len);
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(&read_err)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        each(&buf[..n])?;
        left -= n as u64;
    }
    Ok(crc)
}

/// Paces a long run of reads to at most a given number of bytes a second,
/// so that the integrity monitor's reading of every sealed segment after a
/// start (18 GB at 50 million events) leaves the disk and the page cache
/// to publishers and readers instead of taking them for a minute or more.
/// Used by one thread at a time (the check that owns it); it sleeps that
/// thread when it is ahead of the rate.
#[derive(Debug)]
pub struct ReadPace {
    /// Bytes a second; 0: not paced.
    per_sec: u64,
    started: std::time::Instant,
    read: u64,
}

impl ReadPace {
    /// At most `per_sec` bytes a second from now; 0 for no limit.
    pub fn new(per_sec: u64) -> Self {
        ReadPace {
            per_sec,
            started: std::time::Instant::now(),
            read: 0,
        }
    }

    /// No limit: what an operator's explicit verification and the
    /// writer's repairs use.
    pub fn unpaced() -> Self {
        Self::new(0)
    }

    /// Counts `n` bytes just read and sleeps until they are due.
    pub fn read(&mut self, n: u64) {
        self.read += n;
        if self.per_sec == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(self.read as f64 / self.per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }

    /// True when it limits the rate (not [`unpaced`](Self::unpaced)).
    pub fn is_paced(&self) -> bool {
        self.per_sec > 0
    }

    /// Bytes counted so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// Asks the kernel to drop `f`'s pages from the page cache (clean ones:
/// call it after a file's writes are synced).
///
/// Backup copies are written once and read only to be checked or to
/// repair a segment, but every copy, check and hash of one passes through
/// the page cache like a live segment's read. A store and its backups
/// larger than memory (18 GB of segments and as much of backup copies at
/// 50 million events on a 24 GiB machine) then had the backups push the
/// live segments out, and `GET /events/{seq}` read the disk (p99 26 ms
/// against 2 ms with the segments cached). So every read and write of a
/// backup copy ends with this. Only advice: a failure changes nothing
/// but the cache, so it is ignored. (On tmpfs it does nothing: there the
/// page cache is the file.)
pub fn drop_cached(f: &File) {
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

/// What a whole-file read leaves in the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRead {
    /// Its pages stay cached: a live segment, which readers will want.
    KeepCached,
    /// Its pages are dropped ([`drop_cached`]): a backup copy.
    DropCached,
}

/// SHA-256 and length of a file.
pub fn sha256_file(path: &Path, after: AfterRead) -> Result<(u64, String), FileError> {
    sha256_file_paced(path, &mut ReadPace::unpaced(), after)
}

/// [`sha256_file`], reading at most as fast as `pace` allows.
pub fn sha256_file_paced(
    path: &Path,
    pace: &mut ReadPace,
    after: AfterRead,
) -> Result<(u64, String), FileError> {
    let mut f = File::open(path).map_err(FileError::at("open", path))?;
    let chunk = if pace.is_paced() {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random);
        PACED_CHUNK
    } else {
        CHUNK
    };
    let hashed = sha256_of(&mut f, path, pace, chunk);
    if after == AfterRead::DropCached {
        drop_cached(&f);
    }
    hashed
}

/// Bytes of one read of a paced whole-file read, which also turns the
/// kernel's readahead off for its file ([`sha256_file_paced`]).
///
/// A background check reads 64 MiB/s at most, but with readahead each of
/// its 1 MiB reads let the kernel queue up to the device's readahead
/// window (8 MiB on the machines we measure on) in requests of megabytes;
/// a `GET /events/{seq}` whose event was not cached waited behind them.
/// Measured with 300-byte reads of an uncached file while another file
/// was read at 64 MiB/s: p90/p99 0.61/6.5 ms with 1 MiB reads and
/// readahead, 0.18/2.1 ms with 128 KiB reads and none (0.16/4.8 ms with
/// no background read at all: the disk's own tail).
const PACED_CHUNK: usize = 128 << 10;

fn sha256_of(
    f: &mut File,
    path: &Path,
    pace: &mut ReadPace,
    chunk: usize,
) -> Result<(u64, String), FileError> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(FileError::at("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        pace.read(n as u64);
    }
    Ok((total, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_read_pace_sleeps_until_the_bytes_read_are_due() {
        // 512 KiB at 1 MiB/s: due after half a second.
        let mut pace = ReadPace::new(1 << 20);
        let started = Instant::now();
        for _ in 0..4 {
            pace.read(128 << 10);
        }
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(pace.bytes_read(), 512 << 10);
    }

    #[test]
    fn sha256_file_paced_hashes_as_sha256_file_does() {
        let dir = std::env::temp_dir().join(format!("msgbus-pace-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        fs::write(&path, vec![7u8; (3 << 20) + 5]).unwrap();
        let mut pace = ReadPace::new(64 << 20);
        let paced = sha256_file_paced(&path, &mut pace, AfterRead::KeepCached).unwrap();
        assert_eq!(paced, sha256_file(&path, AfterRead::KeepCached).unwrap());
        assert_eq!(pace.bytes_read(), (3 << 20) + 5);
        fs::remove_dir_all(&dir).unwrap();
    }
}
