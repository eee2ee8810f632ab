//! Offline tools for a stopped store, built from the server's own code:
//! `msgbus verify` (read-only report), `msgbus backup` (a verified backup)
//! and `msgbus restore` (replace the store with a verified backup). Each
//! takes the data directory's lock first, so none of them can touch a
//! directory a running server holds.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use crate::store::backup::{self, BackupSource};
use crate::store::layout::{self, BACKUPS_DIR, MANIFEST, SEGMENTS_DIR};
use crate::store::lock::DirLock;
use crate::store::manifest::{self, Manifest};
use crate::store::recovery;
use crate::store::{fsutil, segindex, segment, StoreError};

/// How `msgbus verify` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every file checks out.
    Healthy,
    /// Only a torn last record, which the next start cuts away (exit 2).
    TornTail,
    /// Damage (exit 1).
    Damaged,
}

/// Checks every file of a stopped store without changing anything and
/// prints one line per file. Damage lines name the file and the offset.
pub fn verify(data_dir: &Path, out: &mut impl std::io::Write) -> Result<Verdict, StoreError> {
    verify_showing(data_dir, out, &mut Progress::hidden())
}

/// [`verify`], counting the files checked in `progress`.
pub fn verify_showing(
    data_dir: &Path,
    out: &mut impl std::io::Write,
    progress: &mut Progress,
) -> Result<Verdict, StoreError> {
    let _lock = DirLock::acquire(data_dir)?;
    let any_damage = std::cell::Cell::new(false);
    let mut torn = false;
    let damaged = |out: &mut dyn std::io::Write, line: String| {
        let _ = writeln!(out, "DAMAGED {line}");
        any_damage.set(true);
    };
    let seg_dir = layout::segments_dir(data_dir);
    let manifest = match Manifest::load(data_dir) {
        Ok(Some(m)) => {
            let _ = writeln!(
                out,
                "ok      {MANIFEST}: {} sealed segment(s)",
                m.sealed.len()
            );
            m
        }
        Ok(None) => {
            damaged(
                out,
                format!("{MANIFEST}: missing (the next start rebuilds it from the segments)"),
            );
            return Ok(Verdict::Damaged);
        }
        Err(e) => {
            damaged(out, format!("{MANIFEST}: {e}"));
            return Ok(Verdict::Damaged);
        }
    };
    progress.set_total(manifest.sealed.len() as u64 + 1 + backup::list_dirs(data_dir).len() as u64);
    let mut expect = manifest
        .sealed
        .first()
        .map(|s| s.first_seq)
        .unwrap_or(manifest.active_first_seq);
    for s in &manifest.sealed {
        progress.add(1);
        let path = seg_dir.join(&s.file);
        let rel = layout::segment_rel(&s.file);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                damaged(out, format!("{rel}: cannot be read: {e}"));
                expect = s.last_seq + 1;
                continue;
            }
        };
        let scan = segment::scan(&bytes, expect);
        if let Some(d) = &scan.damage {
            damaged(out, format!("{rel}: offset {}: {}", d.offset, d.problem));
        } else if let Err(mismatch) = s.check_bytes(&bytes) {
            damaged(out, format!("{rel}: {mismatch}"));
        } else {
            let _ = writeln!(
                out,
                "ok      {rel}: seq {}..={}, SHA-256 matches",
                s.first_seq, s.last_seq
            );
        }
        // An index file is derived from its segment: a damaged or missing
        // one is reported, but it is not data loss and does not change the
        // exit status (the next start rebuilds it).
        let idx_rel = layout::segment_index_rel(&s.file);
        match segindex::check(data_dir, s) {
            Ok(_) => {
                let _ = writeln!(out, "ok      {idx_rel}: matches its segment");
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "INDEX   {idx_rel}: {why}; not data loss: the next start rebuilds it from its segment"
                );
            }
        }
        expect = s.last_seq + 1;
    }
    let active = segment::file_name(manifest.active_first_seq);
    let rel = layout::segment_rel(&active);
    match std::fs::read(seg_dir.join(&active)) {
        Err(e) => damaged(out, format!("{rel}: cannot be read: {e}")),
        Ok(bytes) => {
            let plan = recovery::active::plan(
                data_dir,
                &active,
                &bytes,
                manifest.active_first_seq,
                &manifest,
            );
            match (&plan.verdict, &plan.repair) {
                (recovery::active::Verdict::Whole, None) => {
                    let _ = writeln!(
                        out,
                        "ok      {rel}: {} record(s), every CRC32C matches",
                        plan.scan.records.len()
                    );
                }
                (recovery::active::Verdict::TornTail { valid_len }, None) => {
                    let _ = writeln!(
                        out,
                        "TORN    {rel}: offset {valid_len}: an incomplete final record, never acknowledged ({} bytes); the next start moves them to quarantine/ and cuts them",
                        bytes.len() as u64 - valid_len
                    );
                    torn = true;
                }
                (verdict, Some(c)) => {
                    let what = match verdict {
                        recovery::active::Verdict::Whole => format!(
                            "{rel} holds seq ..={} but backup {} holds acknowledged records up to seq {}",
                            manifest.active_first_seq + plan.scan.records.len() as u64 - 1,
                            c.backup,
                            manifest.active_first_seq + c.scan.records.len() as u64 - 1
                        ),
                        v => v.describe(&rel),
                    };
                    damaged(
                        out,
                        format!("{what}; the next start repairs it from backup {}", c.backup),
                    );
                }
                (verdict, None) => damaged(
                    out,
                    format!(
                        "{}; no verified backup holds the records: the next start refuses",
                        verdict.describe(&rel)
                    ),
                ),
            }
        }
    }
    // Payload schemas are the store's own data: a damaged file is replaced
    // from the newest backup at the next start, or the start is refused.
    let schemas = layout::schemas_path(data_dir);
    match std::fs::read(&schemas) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => damaged(out, format!("{}: cannot be read: {e}", layout::SCHEMAS)),
        Ok(bytes) => match crate::store::schemas::decode(&bytes) {
            Ok(catalog) => {
                let _ = writeln!(
                    out,
                    "ok      {}: {} type(s), checksum matches",
                    layout::SCHEMAS,
                    catalog.types.len()
                );
            }
            Err(why) => damaged(
                out,
                format!(
                    "{}: {why}; the next start replaces it from the newest backup that holds an intact copy, or refuses to start",
                    layout::SCHEMAS
                ),
            ),
        },
    }
    let mut checked = backup::CheckedFiles::default();
    let dirs = backup::list_dirs(data_dir);
    progress.add(1);
    for dir in &dirs {
        progress.add(1);
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        match backup::verify_sharing(dir, &mut checked) {
            Ok(bm) => {
                let _ = writeln!(
                    out,
                    "ok      {BACKUPS_DIR}/{name}: seq {}..={}, every SHA-256 matches",
                    bm.first_seq, bm.last_seq
                );
            }
            Err(e) => damaged(out, format!("{BACKUPS_DIR}/{name}: {e}")),
        }
    }
    if !dirs.is_empty() {
        let _ = writeln!(
            out,
            "backups: {} bytes hashed; {} bytes of copies shared between backups (hard links) hashed once",
            checked.hashed_bytes, checked.shared_bytes
        );
    }
    progress.finish();
    Ok(if any_damage.get() {
        Verdict::Damaged
    } else if torn {
        Verdict::TornTail
    } else {
        Verdict::Healthy
    })
}

/// Opens a stopped store (recovering it as a start would) and takes a
/// verified backup. Returns the backup's directory.
pub fn backup(data_dir: &Path) -> Result<PathBuf, StoreError> {
    backup_showing(data_dir, &mut Progress::hidden())
}

/// [`backup`], counting the segments copied or linked in `progress`.
pub fn backup_showing(data_dir: &Path, progress: &mut Progress) -> Result<PathBuf, StoreError> {
    let rec = recovery::open(data_dir, 0, crate::store::keyfilter::DEFAULT_HEADROOM)?;
    progress.set_total(rec.manifest.sealed.len() as u64 + 1);
    let src = BackupSource {
        data_dir: data_dir.to_path_buf(),
        manifest: std::sync::Arc::new(rec.manifest.clone()),
        active_len: rec.active.len,
        active_crc: rec.active.crc,
        last_seq: rec.next_seq - 1,
        consumers: Some(crate::store::consumers::load(data_dir)?.snapshot()),
        schemas: Some(
            crate::store::schemas::load(data_dir)?
                .0
                .file_bytes()
                .to_vec(),
        ),
    };
    let info = backup::take_showing(
        &src,
        backup::Copies::Two,
        &mut backup::HashedCopies::default(),
        &mut || progress.add(1),
    )
    .map_err(|e| match e {
        // A full disk, a permission, an I/O error: not damage.
        backup::BackupError::Io(e) => e.into(),
        e => StoreError::Corrupt(e.to_string()),
    })?;
    progress.finish();
    Ok(layout::backups_dir(data_dir).join(info.manifest.name))
}

/// Replaces a stopped store's manifest, segments and consumer cursors with
/// a verified backup's. The replaced files are moved to `quarantine/restore-<time>/`,
/// never deleted. `from` is a backup directory or a backup name.
pub fn restore(data_dir: &Path, from: &Path) -> Result<u64, StoreError> {
    restore_showing(data_dir, from, &mut Progress::hidden())
}

/// [`restore`], counting the files copied in `progress`.
pub fn restore_showing(
    data_dir: &Path,
    from: &Path,
    progress: &mut Progress,
) -> Result<u64, StoreError> {
    let src = if from.is_dir() {
        from.to_path_buf()
    } else {
        layout::backups_dir(data_dir).join(from)
    };
    let bm = backup::verify(&src)
        .map_err(|e| StoreError::Corrupt(format!("the backup does not verify: {e}")))?;
    let (restored_manifest, active_bytes) = check_restorable(&src, &bm)?;
    {
        let _lock = DirLock::acquire(data_dir)?;
        let io = |what: String| move |e: std::io::Error| StoreError::io(what, e);
        let file_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| StoreError::file(op, &path, e)
        };
        let aside =
            layout::quarantine_dir(data_dir).join(format!("restore-{}", layout::stamp_now()));
        std::fs::create_dir_all(&aside).map_err(file_err("create", &aside))?;
        let seg_dir = layout::segments_dir(data_dir);
        let manifest_path = layout::manifest_path(data_dir);
        if manifest_path.exists() {
            std::fs::rename(&manifest_path, aside.join(MANIFEST))
                .map_err(io(format!("move {} aside", manifest_path.display())))?;
        }
        // The snapshot and the log: the backup's snapshot replaces both.
        // Payload schemas too: the backup's (or none, if it holds none).
        for name in [layout::CONSUMERS, layout::CONSUMERS_LOG, layout::SCHEMAS] {
            let consumers = data_dir.join(name);
            if consumers.exists() {
                std::fs::rename(&consumers, aside.join(name))
                    .map_err(io(format!("move {} aside", consumers.display())))?;
            }
        }
        if seg_dir.exists() {
            std::fs::rename(&seg_dir, aside.join(SEGMENTS_DIR))
                .map_err(io(format!("move {} aside", seg_dir.display())))?;
        }
        fsutil::fsync_dir(&aside).map_err(file_err("fsync", &aside))?;
        std::fs::create_dir_all(&seg_dir).map_err(file_err("create", &seg_dir))?;
        progress.set_total(bm.files.len() as u64);
        for f in &bm.files {
            progress.add(1);
            let bytes = std::fs::read(src.join(&f.path))
                .map_err(io(format!("read {}", src.join(&f.path).display())))?;
            fsutil::write_atomic(&data_dir.join(&f.path), &bytes)
                .map_err(io(format!("write {}", data_dir.join(&f.path).display())))?;
        }
        // A restored store is a new history: backups taken before the
        // restore must not "repair" its active segment with records the
        // restore rolled away. Everything in the backup was durable.
        let mut m = restored_manifest;
        m.lineage = Some(manifest::new_lineage());
        m.active_durable = Some(manifest::DurablePrefix {
            bytes: active_bytes,
            last_seq: bm.last_seq.max(m.active_first_seq - 1),
        });
        m.store(data_dir)
            .map_err(file_err("write", &manifest_path))?;
        fsutil::fsync_dir(data_dir).map_err(file_err("fsync", data_dir))?;
    }
    progress.finish();
    // Open it as a start would, to prove the restored store is whole.
    let rec = recovery::open(data_dir, 0, crate::store::keyfilter::DEFAULT_HEADROOM)?;
    Ok(rec.next_seq - 1)
}

/// Checks that a verified backup can be restored: every path it lists
/// stays inside the data directory, and it is complete (its manifest, and
/// every segment that manifest names, with the manifest's SHA-256 for the
/// sealed ones). Returns the backup's store manifest and the length of its
/// copy of the active segment.
fn check_restorable(
    src: &Path,
    bm: &backup::BackupManifest,
) -> Result<(Manifest, u64), StoreError> {
    let refuse = |why: String| StoreError::Corrupt(format!("the backup cannot be restored: {why}"));
    for f in &bm.files {
        if !is_store_path(&f.path) {
            return Err(refuse(format!(
                "backup.json lists {:?}, which is not a file of a store",
                f.path
            )));
        }
    }
    let listed = |rel: &str| bm.files.iter().find(|f| f.path == rel);
    if listed(MANIFEST).is_none() {
        return Err(refuse(format!("it holds no {MANIFEST}")));
    }
    let m = Manifest::load(src)
        .map_err(|e| refuse(e.to_string()))?
        .ok_or_else(|| refuse(format!("its {MANIFEST} is missing")))?;
    for s in &m.sealed {
        let rel = layout::segment_rel(&s.file);
        match listed(&rel) {
            Some(f) if f.sha256 == s.sha256 && f.bytes == s.bytes => {}
            Some(_) => {
                return Err(refuse(format!(
                    "its copy of {rel} is not the sealed segment its manifest names"
                )))
            }
            None => return Err(refuse(format!("it lacks {rel}, which its manifest names"))),
        }
    }
    let active = layout::segment_rel(&segment::file_name(m.active_first_seq));
    let Some(active_bytes) = listed(&active).map(|f| f.bytes) else {
        return Err(refuse(format!("it lacks the active segment {active}")));
    };
    Ok((m, active_bytes))
}

/// True for the paths a backup may hold: a plain file name in the data
/// directory, or `segments/<segment file>`. No absolute paths, no `..`, no
/// hidden files.
fn is_store_path(rel: &str) -> bool {
    let plain = |name: &str| {
        !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    match rel.split_once('/') {
        None => plain(rel),
        Some((dir, name)) => dir == SEGMENTS_DIR && segment::parse_file_name(name).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_store_path;

    #[test]
    fn only_store_paths_are_restorable() {
        for ok in [
            "manifest.json",
            "consumers.json",
            "schemas.json",
            "segments/00000000000000000001.jsonl",
        ] {
            assert!(is_store_path(ok), "{ok}");
        }
        for bad in [
            "../escape",
            "/etc/passwd",
            "segments/../../x",
            "segments/x.jsonl",
            ".hidden",
            "a/b/c",
            "",
            "segments/",
        ] {
            assert!(!is_store_path(bad), "{bad}");
        }
    }
}
