//! How backups share sealed-segment copies: the backup taken at a seal
//! copies the new segment once and hard-links verified copies of older
//! ones; a requested backup (timer, monitor, `POST /admin/backups`) makes
//! sure two physically distinct copies of every sealed segment exist, and
//! later backups link those instead of copying the store again. A copy
//! damaged since it was checked is never linked into a new backup.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::files::{flip_pad, rel, sealed_segments, DataDir};
use crate::common::integrity::{acked, fill_until_sealed};
use crate::common::monitor::start_monitored;
use crate::common::note;
use crate::common::server::TestApp;

/// For each sealed segment (by file name), the distinct inodes holding a
/// copy of it across every backup on disk. (A backup also holds a prefix of
/// the segment that was active when it was taken, under the same name:
/// only files as long as the sealed segment count.)
fn copies_per_segment(data_dir: &Path) -> BTreeMap<String, BTreeSet<u64>> {
    let sealed_len: BTreeMap<String, u64> = sealed_segments(data_dir)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::metadata(p).unwrap().len())
        })
        .collect();
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for b in std::fs::read_dir(data_dir.join("backups"))
        .unwrap()
        .flatten()
    {
        let name = b.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(b.path().join("segments")) else {
            continue;
        };
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let meta = f.metadata().unwrap();
            if sealed_len.get(&name) == Some(&meta.len()) {
                out.entry(name).or_default().insert(meta.ino());
            }
        }
    }
    out
}

/// Every file of backup `name` hashes to what its `backup.json` says.
fn assert_backup_intact(data_dir: &Path, name: &str) {
    let dir = data_dir.join("backups").join(name);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup.json")).unwrap()).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let path = dir.join(f["path"].as_str().unwrap());
        let (len, sha) =
            msgbus::store::backup::sha256_file(&path, msgbus::store::backup::AfterRead::KeepCached)
                .unwrap();
        assert_eq!(
            (len, sha.as_str()),
            (f["bytes"].as_u64().unwrap(), f["sha256"].as_str().unwrap()),
            "{} in backup {name}",
            path.display()
        );
    }
}

/// Waits (at most 5 s) until the newest verified backup holds every sealed
/// segment; returns its name.
async fn wait_newest_holds_all(app: &TestApp) -> String {
    let t0 = Instant::now();
    loop {
        // Each sealed segment at its sealed length: a backup taken while a
        // segment was still active holds a shorter prefix under its name.
        let sealed: Vec<(String, u64)> = sealed_segments(app.data_dir())
            .iter()
            .map(|p| (rel(p), std::fs::metadata(p).unwrap().len()))
            .collect();
        let backups = app.backups().await;
        if let Some(newest) = backups.last().filter(|b| b["verified"] == true) {
            let files: Vec<(&str, u64)> = newest["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| Some((f["path"].as_str()?, f["bytes"].as_u64()?)))
                .collect();
            if sealed
                .iter()
                .all(|(s, len)| files.contains(&(s.as_str(), *len)))
            {
                return newest["name"].as_str().unwrap().to_string();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the newest backup does not hold every sealed segment after 5 s: {:#}",
            Value::from(backups)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn take_backup(app: &TestApp) -> String {
    let r = app.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "POST /admin/backups -> {}", r.text());
    r.json()["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_share_sealed_copies_and_keep_two_distinct_ones() {
    let app = start_monitored(DataDir::temp(), &["--segment-bytes", "8KiB"]).await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "shr", 6, 200, &acked).await;
    let newest = wait_newest_holds_all(&app).await;
    assert_backup_intact(app.data_dir(), &newest);

    // Seal-time backups: one copy of each sealed segment, shared by every
    // later backup (each of them copied only the segment sealed just before).
    let copies = copies_per_segment(app.data_dir());
    let sealed: Vec<String> = sealed_segments(app.data_dir())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for s in &sealed {
        let n = copies.get(s).map_or(0, BTreeSet::len);
        assert_eq!(n, 1, "seal-time backups hold one copy of {s}: {copies:?}");
    }
    note(format!(
        "{} seal-time backups share one copy of each of {} sealed segments",
        app.backups().await.len(),
        sealed.len()
    ));

    // A requested backup adds a second, physically distinct copy of each;
    // the next one links those two and copies nothing sealed again.
    let second = take_backup(&app).await;
    assert_backup_intact(app.data_dir(), &second);
    let copies = copies_per_segment(app.data_dir());
    for s in &sealed {
        assert_eq!(copies[s].len(), 2, "two distinct copies of {s}: {copies:?}");
    }
    let third = take_backup(&app).await;
    assert_backup_intact(app.data_dir(), &third);
    let after = copies_per_segment(app.data_dir());
    for s in &sealed {
        assert_eq!(after[s], copies[s], "{s} linked, not copied again");
    }

    // Damage the copy the newest backup links for the first sealed segment:
    // the next backup must not link it, however recently it was checked.
    let target = &sealed[0];
    let damaged = app
        .data_dir()
        .join("backups")
        .join(&third)
        .join("segments")
        .join(target);
    let damaged_ino = std::fs::metadata(&damaged).unwrap().ino();
    let len = std::fs::metadata(&damaged).unwrap().len();
    flip_pad(&damaged, len / 2);
    note(format!(
        "flipped bytes in the shared copy of {target} (inode {damaged_ino})"
    ));
    let fourth = take_backup(&app).await;
    let linked = app
        .data_dir()
        .join("backups")
        .join(&fourth)
        .join("segments")
        .join(target);
    assert_ne!(
        std::fs::metadata(&linked).unwrap().ino(),
        damaged_ino,
        "the damaged copy was linked into a new backup"
    );
    assert_backup_intact(app.data_dir(), &fourth);
    app.stop().await;
}

/// `--backup-copies 1`: requested backups share the one backup copy of each
/// sealed segment instead of adding a second, so the retained backups cost
/// about one store's worth of sealed segments on disk, however many are
/// kept. Each backup still holds (and verifies) every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_copy_when_asked() {
    let app = start_monitored(
        DataDir::temp(),
        &["--segment-bytes", "8KiB", "--backup-copies", "1"],
    )
    .await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "one", 4, 200, &acked).await;
    wait_newest_holds_all(&app).await;
    let sealed: Vec<String> = sealed_segments(app.data_dir())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for _ in 0..2 {
        let name = take_backup(&app).await;
        assert_backup_intact(app.data_dir(), &name);
    }
    let copies = copies_per_segment(app.data_dir());
    for s in &sealed {
        assert_eq!(
            copies.get(s).map_or(0, BTreeSet::len),
            1,
            "one backup copy of {s}: {copies:?}"
        );
    }
    app.stop().await;
}
