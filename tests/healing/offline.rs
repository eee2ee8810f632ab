//! Test 12: The offline tools on a stopped store — `msgbus verify` (exit 0 when
//! healthy, non-zero naming the file and offset on damage), `msgbus backup`
//! (a verified backup, its name printed), `msgbus restore --from` — and
//! their refusal to touch a directory a running server holds.

use crate::common::files::{flip_pad, quarantined, rel, sealed_segments, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed, prefill};
use crate::common::monitor::start_monitored;
use crate::common::note;
use crate::common::process::run_msgbus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_backup_and_restore_a_stopped_store() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    let n = fill_until_sealed(&app, app.data_dir(), "off", 2, 200, &acked).await;
    prefill(&app, "off", n, 3, 200, &acked).await;
    let dir = app.stop().await;
    let d = dir.path().display().to_string();

    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "verify of a healthy store:\n{out}\n{err}");
    assert!(!out.contains("DAMAGED"), "{out}");

    let (code, out, err) = run_msgbus(&["backup", "--data-dir", &d]).await;
    assert_eq!(code, 0, "backup of a stopped store:\n{out}\n{err}");
    let name = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .max()
        .expect("a backup directory");
    assert!(
        out.contains(&name),
        "backup prints the backup's name {name}: {out}"
    );
    assert!(dir
        .path()
        .join("backups")
        .join(&name)
        .join("backup.json")
        .is_file());

    // Damage a sealed segment: verify names the file and the record's offset.
    let seg = sealed_segments(dir.path())[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let (pos, seq) = flip_pad(&seg, bytes.len() as u64 / 2);
    let line = bytes[..pos as usize]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    note(format!(
        "verify of the damaged store (seq {seq} at offset {line}) exits {code}:\n{out}{err}"
    ));
    assert_ne!(code, 0, "verify must fail on damage:\n{out}\n{err}");
    let report = format!("{out}{err}");
    assert!(
        report.contains(&rel(&seg)),
        "verify names {}:\n{report}",
        rel(&seg)
    );
    assert!(
        report.contains(&format!("offset {line}")),
        "verify names the damaged record's offset {line}:\n{report}"
    );

    let (code, out, err) = run_msgbus(&["restore", "--data-dir", &d, "--from", &name]).await;
    assert_eq!(code, 0, "restore from {name}:\n{out}\n{err}");
    assert!(
        quarantined(dir.path())
            .iter()
            .any(|p| p.ends_with(rel(&seg))),
        "the replaced files are kept in quarantine/: {:?}",
        quarantined(dir.path())
    );
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "verify after the restore:\n{out}\n{err}");

    let app = start_monitored(dir, &[]).await;
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_tools_refuse_a_directory_a_server_holds() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    prefill(&app, "lck", 1, 5, 100, &acked).await;
    let r = app.post("/admin/backups", None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let name = r.json()["name"].as_str().unwrap().to_string();
    let d = app.data_dir().display().to_string();
    let backup_dir = app
        .data_dir()
        .join("backups")
        .join(&name)
        .display()
        .to_string();
    let manifest = std::fs::read(app.data_dir().join("manifest.json")).unwrap();
    let backups_before = std::fs::read_dir(app.data_dir().join("backups"))
        .unwrap()
        .count();

    for args in [
        vec!["verify", "--data-dir", &d],
        vec!["backup", "--data-dir", &d],
        vec!["restore", "--data-dir", &d, "--from", &name],
        vec!["restore", "--data-dir", &d, "--from", &backup_dir],
    ] {
        let (code, out, err) = run_msgbus(&args).await;
        assert_eq!(
            code,
            msgbus::cli::EXIT_LOCKED as i32,
            "msgbus {args:?} must refuse a held directory:\n{out}\n{err}"
        );
        assert!(
            err.contains("LOCK"),
            "msgbus {args:?} names the lock:\n{out}\n{err}"
        );
    }
    assert_eq!(
        std::fs::read(app.data_dir().join("manifest.json")).unwrap(),
        manifest
    );
    assert_eq!(
        std::fs::read_dir(app.data_dir().join("backups"))
            .unwrap()
            .count(),
        backups_before,
        "no backup was taken"
    );
    assert!(!app.data_dir().join("quarantine").exists() || quarantined(app.data_dir()).is_empty());
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

/// Takes a backup of a small stopped store with `msgbus backup`; returns the
/// store and the backup's directory.
async fn store_with_a_backup() -> (DataDir, std::path::PathBuf) {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let acked = acked();
    prefill(&app, "rst", 1, 5, 100, &acked).await;
    let dir = app.stop().await;
    let d = dir.path().display().to_string();
    let (code, out, err) = run_msgbus(&["backup", "--data-dir", &d]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let newest = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .max()
        .unwrap();
    (dir, newest)
}

/// Rewrites a backup's `backup.json` with `edit`.
fn edit_backup_json(backup: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = backup.join("backup.json");
    let mut bm: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut bm);
    std::fs::write(&path, serde_json::to_vec_pretty(&bm).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_paths_outside_the_data_directory() {
    let (dir, backup) = store_with_a_backup().await;
    // A file the backup "holds" outside the data directory, with a correct
    // SHA-256, so only the path check can refuse it.
    let target_name = format!("msgbus-escape-{}", std::process::id());
    let content = b"written outside the data directory";
    let outside = dir.path().parent().unwrap().join(&target_name);
    let _ = std::fs::remove_file(&outside);
    // `backups/<name>/../<target>`, which verification reads; a restore
    // would write it to `<data dir>/../<target>`.
    std::fs::write(backup.join("..").join(&target_name), content).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(content))
    };
    edit_backup_json(&backup, |bm| {
        bm["files"].as_array_mut().unwrap().push(serde_json::json!({
            "path": format!("../{target_name}"),
            "bytes": content.len(),
            "sha256": sha,
        }))
    });

    let d = dir.path().display().to_string();
    let from = backup.display().to_string();
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    let (code, out, err) = run_msgbus(&["restore", "--data-dir", &d, "--from", &from]).await;
    assert_ne!(code, 0, "restore must refuse:\n{out}\n{err}");
    assert!(err.contains("not a file of a store"), "{err}");
    assert!(
        !outside.exists(),
        "nothing is written outside the data directory"
    );
    assert_eq!(
        std::fs::read(dir.path().join("manifest.json")).unwrap(),
        manifest,
        "the store is untouched"
    );
    let _ = std::fs::remove_file(backup.join("..").join(&target_name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_incomplete_backup() {
    let (dir, backup) = store_with_a_backup().await;
    let d = dir.path().display().to_string();
    let from = backup.display().to_string();
    edit_backup_json(&backup, |bm| {
        bm["files"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["path"] != "manifest.json")
    });
    let (code, out, err) = run_msgbus(&["restore", "--data-dir", &d, "--from", &from]).await;
    assert_ne!(
        code, 0,
        "restore of a backup with no manifest:\n{out}\n{err}"
    );
    assert!(err.contains("holds no manifest.json"), "{err}");
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "the store is as it was:\n{out}\n{err}");
}

/// `msgbus verify` hashes a backup copy shared by several backups (hard
/// links) once, not once per backup: it says how many bytes it hashed, and
/// that is the size of the distinct backup files. Damage to a shared copy
/// is still reported in every backup that lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_hashes_a_shared_backup_copy_once_and_reports_it_in_every_backup() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::MetadataExt;
    let app = start_monitored(DataDir::temp(), &["--segment-bytes", "8KiB"]).await;
    let acked = acked();
    fill_until_sealed(&app, app.data_dir(), "vsh", 4, 200, &acked).await;
    for _ in 0..3 {
        let r = app.post("/admin/backups", None).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let dir = app.stop().await;
    let d = dir.path().display().to_string();
    // Distinct backup files (by inode) and every listing of one.
    let mut inodes: BTreeMap<u64, u64> = BTreeMap::new();
    let mut listed = 0u64;
    let mut holders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for b in std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .flatten()
    {
        let name = b.file_name().to_string_lossy().to_string();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.path().join("backup.json")).unwrap()).unwrap();
        for f in m["files"].as_array().unwrap() {
            let meta = std::fs::metadata(b.path().join(f["path"].as_str().unwrap())).unwrap();
            inodes.insert(meta.ino(), meta.len());
            listed += meta.len();
            holders.entry(meta.ino()).or_default().insert(name.clone());
        }
    }
    let distinct: u64 = inodes.values().sum();
    assert!(
        listed > distinct,
        "the backups share copies: {listed} vs {distinct}"
    );

    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "{out}{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("backups: "))
        .unwrap_or_else(|| panic!("a summary line: {out}"));
    assert_eq!(
        summary,
        format!(
            "backups: {distinct} bytes hashed; {} bytes of copies shared between backups (hard links) hashed once",
            listed - distinct
        ),
        "{out}"
    );

    // Damage the copy held by the most backups: each of them is reported.
    let (&ino, names) = holders.iter().max_by_key(|(_, n)| n.len()).unwrap();
    assert!(names.len() > 1, "{holders:?}");
    let any = names.iter().next().unwrap();
    let path = std::fs::read_dir(dir.path().join("backups").join(any).join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).unwrap().ino() == ino)
        .unwrap_or_else(|| panic!("inode {ino} is a segment copy in {any}"));
    let len = std::fs::metadata(&path).unwrap().len();
    flip_pad(&path, len / 2);
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_ne!(code, 0, "{out}{err}");
    for name in names {
        assert!(
            out.lines()
                .any(|l| l.starts_with("DAMAGED") && l.contains(name.as_str())),
            "backup {name} reported damaged:\n{out}"
        );
    }
}

/// `msgbus verify` checks `schemas.json` (the payload schemas are the
/// store's own data): intact, it is listed with its types; damaged, verify
/// fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_payload_schemas_file() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    let r = app
        .put(
            "/schemas/story.created",
            &serde_json::json!({"type": "object", "required": ["points"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let dir = app.stop().await;
    let d = dir.path().display().to_string();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok      schemas.json: 1 type(s), checksum matches"),
        "{out}"
    );

    let path = dir.path().join("schemas.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"points")
        .expect("the schema is in the file");
    bytes[at] = b'q';
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, err) = run_msgbus(&["verify", "--data-dir", &d]).await;
    assert_ne!(
        code, 0,
        "verify must fail on a damaged schemas.json:\n{out}{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("DAMAGED schemas.json: checksum mismatch")),
        "{out}"
    );
}
