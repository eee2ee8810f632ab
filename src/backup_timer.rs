//! Periodic backups: every `--backup-interval`, if events were stored since
//! the newest backup, ask the writer for one. (Backups are also taken at
//! every segment seal and on `POST /admin/backups`.)

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::StoreHandle;

/// Starts the timer; it stops when `shutdown` turns true.
pub fn spawn(
    store: StoreHandle,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(interval = ?interval, "backup timer started");
        let mut ticker = tokio::time::interval(interval.max(Duration::from_secs(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; skip it
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // Compared with the newest *verified* backup: one that failed
            // verification does not count as covering the head.
            let newest = store.backup_summary().newest_verified_last_seq;
            if newest != Some(store.head()) && store.head() > 0 {
                store.request_backup();
            }
        }
        tracing::info!("backup timer stopped");
    })
}
