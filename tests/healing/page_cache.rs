//! Backup copies leave the page cache to the live segments: every copy,
//! check and hash of a backup file ends by dropping its pages, so a store
//! whose segments and backups together exceed memory keeps its segments
//! cached for readers. Checked with `mincore` on the files themselves.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::common::files::{sealed_segments, DataDir};
use crate::common::integrity::{acked, fill_until_sealed};
use crate::common::monitor::start_monitored;
use crate::common::note;

/// Pages of `path` in the page cache now, and its pages in all.
fn resident_pages(path: &Path) -> (usize, usize) {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return (0, 0);
    }
    // SAFETY: a read-only shared mapping of a file this test opened, never
    // dereferenced (mincore only asks which of its pages are cached, and
    // does not fault them in); unmapped before returning.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let pages = len.div_ceil(page);
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap {}", path.display());
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(at, len, vec.as_mut_ptr());
        libc::munmap(at, len);
        assert_eq!(rc, 0, "mincore {}", path.display());
        (vec.iter().filter(|b| **b & 1 == 1).count(), pages)
    }
}

/// True when `dir` is on tmpfs, where the page cache is the file itself and
/// cannot be dropped.
fn on_tmpfs(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct it is given; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_do_not_stay_in_the_page_cache_and_live_segments_do() {
    let dir = DataDir::temp();
    if on_tmpfs(dir.path()) {
        note("SKIPPED: the temp directory is on tmpfs, where pages cannot be dropped");
        return;
    }
    let app = start_monitored(dir, &["--segment-bytes", "256KiB"]).await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "cache", 3, 2000, &acked).await;
    let r = app.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "POST /admin/backups -> {}", r.text());
    let name = r.json()["name"].as_str().unwrap().to_string();

    // Every backup copy (the sealed segments copied or linked, the active
    // segment's prefix) was written or hashed, then dropped.
    let backup = app.data_dir().join("backups").join(&name).join("segments");
    let copies = files_under(&backup);
    assert!(copies.len() >= 3, "the backup holds {copies:?}");
    for copy in &copies {
        let (cached, pages) = resident_pages(copy);
        note(format!(
            "{}: {cached} of {pages} pages cached",
            copy.display()
        ));
        assert_eq!(
            cached,
            0,
            "backup copy {} keeps {cached} of {pages} pages in the page cache",
            copy.display()
        );
    }
    // The live sealed segments were written and then read for the copies:
    // they are cached (which also shows mincore sees cached pages here).
    let live = sealed_segments(app.data_dir());
    let cached: usize = live.iter().map(|p| resident_pages(p).0).sum();
    assert!(
        cached > 0,
        "no page of the live segments {live:?} is cached"
    );
    app.stop().await;
}
