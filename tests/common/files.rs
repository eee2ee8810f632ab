//! Data directories: creating them, looking at their files and damaging
//! them the way a disk, an operator or a crash would.
//!
//! The damage helpers change files under a running server's feet on
//! purpose; each says exactly what it does, so a test's expectations can
//! follow from it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// A data directory: a temporary one (deleted on drop) or a given path (not
/// deleted, e.g. inside a [`Tmpfs`]).
///
/// A server owns its `DataDir` and hands it back when it stops, so a test
/// can damage the stopped store's files and start a server on it again.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _tmp: Option<TempDir>,
}

impl DataDir {
    /// A fresh temporary directory.
    pub fn temp() -> DataDir {
        let tmp = tempfile::Builder::new()
            .prefix("msgbus-test-")
            .tempdir()
            .expect("create a temp dir");
        DataDir {
            path: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
        }
    }

    /// An existing path (not deleted on drop).
    pub fn at(path: PathBuf) -> DataDir {
        DataDir { path, _tmp: None }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------
// Looking

/// Every segment file (`*.jsonl`) under `data_dir/segments`, sorted
/// (oldest segment first); index files (`*.jsonl.idx`) are not segments.
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("segments"))
        .expect("segments/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
}

/// The index file of the segment at `segment` (`<segment>.idx`).
pub fn index_file(segment: &Path) -> PathBuf {
    let mut name = segment.file_name().unwrap().to_os_string();
    name.push(".idx");
    segment.with_file_name(name)
}

/// The first segment, which is the active one while the store has only one.
pub fn first_segment(data_dir: &Path) -> PathBuf {
    data_dir.join("segments").join(format!("{:020}.jsonl", 1))
}

/// The active segment: the newest `segments/*.jsonl`.
pub fn active_segment(data_dir: &Path) -> PathBuf {
    segment_files(data_dir)
        .into_iter()
        .rfind(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("an active segment")
}

/// The sealed segments listed in `manifest.json`, oldest first.
pub fn sealed_segments(data_dir: &Path) -> Vec<PathBuf> {
    let m: Value = serde_json::from_slice(&std::fs::read(data_dir.join("manifest.json")).unwrap())
        .expect("manifest parses");
    m["sealed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| data_dir.join("segments").join(s["file"].as_str().unwrap()))
        .collect()
}

/// `segments/<name>` of a segment file, as alerts and `msgbus verify` name
/// it.
pub fn rel(path: &Path) -> String {
    format!("segments/{}", path.file_name().unwrap().to_string_lossy())
}

/// Every file under `data_dir/quarantine` (recursively: a restore keeps the
/// replaced files in a subdirectory), sorted; empty if there is none.
pub fn quarantined(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("quarantine"), &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Damaging

/// Overwrites 8 pad letters (`xxxxxxxx` → `XXXXXXXX`) at or after `from`,
/// in place (same file, same length; the JSON stays valid, so only a
/// checksum can tell). Returns the offset and the seq of the record hit.
pub fn flip_pad(path: &Path, from: u64) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let pos = bytes[from as usize..]
        .windows(8)
        .position(|w| w == b"xxxxxxxx")
        .map(|p| p + from as usize)
        .unwrap_or_else(|| panic!("no pad after offset {from} in {}", path.display()));
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(b"XXXXXXXX", pos as u64).unwrap();
    f.sync_all().unwrap();
    let line_start = bytes[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = pos + bytes[pos..].iter().position(|&b| b == b'\n').unwrap();
    let rec: Value = serde_json::from_slice(&bytes[line_start..line_end]).unwrap();
    (pos as u64, rec["seq"].as_u64().unwrap())
}

/// Cuts `path` to `len` bytes in place (the same file, as a crash or a
/// careless tool would leave it, not a new one renamed over it).
pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .set_len(len)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// Makes the manifest say what it says after a crash: no durable floor
/// for the active segment beyond what the last start recorded (here none).
/// A clean stop records the active segment's length, and a start that then
/// finds it shorter refuses (acknowledged records are gone); tests that
/// simulate a crash mid-append must remove that record first.
pub fn as_after_a_crash(data_dir: &Path) {
    let path = data_dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("active_durable");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Deletes `backups/` entirely, waiting (at most 5 s) for a backup being
/// assembled to finish first, so nothing is written there afterwards.
pub async fn remove_backups(data_dir: &Path) {
    let dir = data_dir.join("backups");
    let t0 = Instant::now();
    loop {
        let assembling = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            })
            .unwrap_or(false);
        if !assembling {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "cannot delete {}: {e}",
                    dir.display()
                ),
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a backup was still being assembled after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// A small disk

/// A tmpfs mounted for one test, so that it can really run out of space;
/// unmounted on drop (lazily if still busy).
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _parent: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`); `None` (with a SKIPPED message)
    /// if mounting is not possible here, which needs root.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::Builder::new()
            .prefix("msgbus-test-mnt-")
            .tempdir()
            .ok()?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}); this test needs root (or CAP_SYS_ADMIN)",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); this test needs root and mount(8)");
                None
            }
        }
    }

    /// Free bytes on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(&self.path).unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a failing test left a server running): detach now,
            // the kernel frees it once the files are closed.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}
