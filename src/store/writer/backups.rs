//! The backup worker: a thread the writer feeds with backup requests, so
//! copying never stalls a commit. It coalesces queued requests into one
//! backup, records the result in the store's
//! [`BackupCatalog`](crate::store::catalog::BackupCatalog), prunes old backups
//! and raises an alert when a backup fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::Writer;
use crate::alerts::Severity;
use crate::store::backup::{self, BackupError, BackupInfo, BackupSource};
use crate::store::Shared;

type Reply = oneshot::Sender<Result<BackupInfo, BackupError>>;

struct Job {
    reply: Option<Reply>,
    /// Why the backup is taken, which decides how many copies it makes.
    trigger: Trigger,
}

/// What asked for a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// A segment was just sealed.
    Seal,
    /// The timer, the monitor or `POST /admin/backups`.
    Requested,
    /// A payload schema was registered or deleted.
    Schema,
}

/// Handle to the backup thread.
pub(super) struct BackupWorker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Set by [`finish`](Self::finish): the thread gives up what it is
    /// doing at its next file.
    stop: Arc<AtomicBool>,
}

impl BackupWorker {
    /// Starts the thread. It first lists the backups already on disk and
    /// verifies the newest one, reading at most `read_rate` bytes a second
    /// (0: no limit) whenever it checks copies it did not just write.
    pub(super) fn spawn(
        shared: Arc<Shared>,
        keep: usize,
        copies: backup::Copies,
        read_rate: u64,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let stop = Arc::new(AtomicBool::new(false));
        let hashed = backup::HashedCopies::paced(read_rate).stopping_on(stop.clone());
        let thread = std::thread::Builder::new()
            .name("msgbus-backup".into())
            .spawn(move || run(shared, keep, copies, hashed, rx))
            .map_err(
                |e| tracing::error!(error = %e, "cannot start the backup thread; backups are off"),
            )
            .ok();
        BackupWorker {
            tx: thread.as_ref().map(|_| tx),
            thread,
            stop,
        }
    }

    fn request(&self, job: Job) {
        let Some(tx) = &self.tx else {
            if let Some(r) = job.reply {
                let _ = r.send(Err(BackupError::NoThread("is not running")));
            }
            return;
        };
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            if let Some(r) = job.reply {
                let _ = r.send(Err(BackupError::NoThread("has stopped")));
            }
        }
    }

    /// Stops the thread: a backup or check in progress gives up at its
    /// next file (an unfinished backup's directory is removed at once, as
    /// for any failed backup, and the next start checks the newest backup
    /// again).
    pub(super) fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    /// Asks the backup thread for a backup. When it starts copying, the
    /// thread takes what is durable then (the writer's published
    /// [`FileState`](crate::store::integrity::FileState)): sealed segments
    /// and the active segment's durable prefix, checked against the CRC the
    /// writer keeps.
    pub(super) fn request_backup(&mut self, reply: Option<Reply>, trigger: Trigger) {
        self.backups.request(Job { reply, trigger });
    }
}

fn run(
    shared: Arc<Shared>,
    keep: usize,
    wanted: backup::Copies,
    mut hashed: backup::HashedCopies,
    rx: mpsc::Receiver<Job>,
) {
    backup::remove_incomplete(&shared.data_dir);
    let mut known: Vec<BackupInfo> = Vec::new();
    let dirs = backup::list_dirs(&shared.data_dir);
    for dir in &dirs {
        match backup::read_manifest(dir) {
            // Verified when it was taken; re-verified when it is needed.
            Ok(m) => known.push(BackupInfo {
                manifest: m,
                verified: true,
                verified_at: None,
                error: None,
            }),
            Err(_) => continue,
        }
    }
    shared.backups.set(known.clone());

    // The newest backup is checked again now, paced: at 50 million events
    // it is 18 GB, and read at the disk's full speed it took the disk from
    // publishers (fsync 10 ms instead of 1) and readers for a minute after
    // every start. Its copies' hashes are kept, so the first backup shares
    // them without reading them again; copies the run before hashed within
    // the last minutes are not read now either.
    hashed.load(&shared.data_dir);
    if let (Some(dir), Some(newest)) = (dirs.last(), known.last_mut()) {
        if newest.manifest.name == dir.file_name().unwrap_or_default().to_string_lossy() {
            match backup::verify_recording(dir, &mut hashed) {
                Ok(m) => {
                    newest.manifest = m;
                    newest.verified_at = Some(crate::clock::now_rfc3339());
                }
                // Not checked, not failed: the next start checks it.
                Err(BackupError::Stopped) => {
                    hashed.save(&shared.data_dir);
                    return;
                }
                Err(e) => {
                    newest.verified = false;
                    newest.error = Some(e.to_string());
                }
            }
            shared.backups.set(known);
            hashed.save(&shared.data_dir);
        }
    }

    let mut last_error: Option<String> = None;
    while let Ok(first) = rx.recv() {
        // Coalesce: one backup of the newest state answers every request.
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // A backup that failed verification (the monitor's scrub) may share
        // a damaged copy: check every copy again before linking any.
        if shared.backups.any_unverified() {
            hashed.forget();
        }
        // Seal-time and schema backups share any verified earlier copy of an older
        // sealed segment; the others also make sure `--backup-copies`
        // distinct copies of each exist (see `backup::Copies`).
        let copies = if jobs
            .iter()
            .all(|j| matches!(j.trigger, Trigger::Seal | Trigger::Schema))
        {
            backup::Copies::One
        } else {
            wanted
        };
        let source = source(&shared);
        let mut result = backup::take(&source, copies, &mut hashed);
        let failed = matches!(&result, Err(e) if !matches!(e, BackupError::Stopped));
        if failed && shared.file_state().manifest != source.manifest {
            // Retention or a seal changed the segments while they were being
            // copied; copy the new state once more before calling it a failure.
            result = backup::take(&self::source(&shared), copies, &mut hashed);
        }
        match &result {
            Ok(info) => {
                tracing::info!(backup = %info.manifest.name, last_seq = info.manifest.last_seq, bytes = info.manifest.bytes, "backup taken and verified");
                shared.backups.push(info.clone());
                let removed = backup::prune(&shared.data_dir, keep, &info.manifest.name, |name| {
                    shared.backups.is_verified(name)
                });
                shared.backups.remove(&removed);
                shared.alerts.resolve(&["backup_failed"], None);
                last_error = None;
            }
            Err(BackupError::Stopped) => {
                tracing::info!("backup given up: msgbus is stopping");
            }
            // The same failure again (the store is still damaged) is not news.
            Err(e) if last_error.as_ref() == Some(&e.to_string()) => {
                tracing::warn!(error = %e, "backup failed again");
            }
            Err(e) => {
                shared.alerts.raise(
                    Severity::Error,
                    "backup_failed",
                    None,
                    format!("backup failed: {e}"),
                );
                last_error = Some(e.to_string());
            }
        }
        for job in jobs {
            if let Some(r) = job.reply {
                let _ = r.send(result.clone());
            }
        }
        hashed.save(&shared.data_dir);
    }
}

/// What to back up: the writer's latest published state.
fn source(shared: &Shared) -> BackupSource {
    let state = shared.file_state();
    BackupSource {
        data_dir: shared.data_dir.clone(),
        manifest: state.manifest,
        active_len: state.active_len,
        active_crc: state.active_crc,
        last_seq: state.last_seq,
        consumers: Some(shared.consumers.snapshot()),
        schemas: Some(shared.schemas.file_bytes().to_vec()),
    }
}
