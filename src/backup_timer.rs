//! Periodic backups: every `--backup-interval`, if events were stored since
//! the newest backup, ask the writer for one. (Backups are also taken at
//! every segment seal and on `POST /admin/backups`.)

use std::time::Duration;

use tokio::sync::watch;

use crate::jobs::{self, FirstTick, Job};
use crate::store::StoreHandle;

/// Starts the timer as a [`jobs`](crate::jobs) job; it stops when
/// `shutdown` turns true.
pub fn spawn(store: StoreHandle, interval: Duration, shutdown: watch::Receiver<bool>) -> Job {
    jobs::every(
        "backup timer",
        interval.max(Duration::from_secs(1)),
        FirstTick::AfterInterval,
        shutdown,
        move |_| {
            // Compared with the newest *verified* backup: one that failed
            // verification does not count as covering the head.
            let newest = store.backup_summary().newest_verified_last_seq;
            if newest != Some(store.head()) && store.head() > 0 {
                store.request_backup();
            }
            std::future::ready(())
        },
    )
}
