//! The server's periodic background jobs, side by side, all started and
//! stopped the same way: [`every`] runs a tick on a tokio interval until
//! the shutdown signal turns true, and [`Jobs::stop`] waits for each to
//! finish its current tick (see the shutdown order in `app.rs`).
//!
//! | Job | Every | Does |
//! |---|---|---|
//! | integrity monitor ([`crate::monitor`]) | `--monitor-interval` | checks the files and a backup file, repairs through the writer, checks free space |
//! | backup timer ([`crate::backup_timer`]) | `--backup-interval` | asks for a backup when events were stored since the newest verified one |
//! | retention ticker | `--retention-max-age` / 10 (1 s to 60 s) | asks the writer for a retention pass, so an idle store drops old segments too |
//! | token file watcher ([`crate::app`]) | 1 s | rereads `auth/tokens.json` when it changed (create, revoke); writes tokens' `last_used` back once a minute |
//! | queue reaper ([`crate::queue`]) | 1 s | returns expired leases of queue consumers, writes their dead letters, raises the dead-letter alerts that waited |
//! | SIGHUP reloader ([`crate::app`]) | each SIGHUP | rereads the token file at once and, with `--tls-cert`, the certificate and key (a bad file keeps the old ones and raises an alert) |
//! | schema follower ([`crate::app`], `--backend nats` only) | each schema change its KV watch applies | recompiles the payload validators, so a schema registered or deleted through another instance is enforced here |
//!
//! The store's own threads (the writer, its backup thread and its SHA-256
//! thread) are not jobs: they belong to the writer, start with the store
//! and stop when it closes.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// When a job's first tick runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstTick {
    /// At once.
    Now,
    /// After one interval.
    AfterInterval,
}

/// One running job.
#[derive(Debug)]
pub struct Job {
    name: &'static str,
    task: JoinHandle<()>,
}

/// Starts `tick` every `interval` (missed ticks are delayed, not bunched)
/// until `shutdown` turns true. `tick` gets the tick's number, from 0; a
/// tick in progress is finished before the job stops.
pub fn every<F, Fut>(
    name: &'static str,
    interval: Duration,
    first: FirstTick,
    mut shutdown: watch::Receiver<bool>,
    mut tick: F,
) -> Job
where
    F: FnMut(usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let task = tokio::spawn(async move {
        tracing::info!(interval = ?interval, "{name} started");
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if first == FirstTick::AfterInterval {
            ticker.tick().await; // the first tick is immediate; skip it
        }
        let mut n = 0usize;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            tick(n).await;
            n = n.wrapping_add(1);
        }
        tracing::info!("{name} stopped");
    });
    Job { name, task }
}

/// A job that is not periodic: `task` must end by itself once the
/// shutdown signal turns true.
pub fn task(name: &'static str, task: JoinHandle<()>) -> Job {
    Job { name, task }
}

/// The running jobs.
#[derive(Debug, Default)]
pub struct Jobs(Vec<Job>);

impl Jobs {
    /// Adds a job (none: a job that is off).
    pub fn add(&mut self, job: Option<Job>) {
        self.0.extend(job);
    }

    /// Waits for every job to stop (after the shutdown signal).
    pub async fn stop(self) {
        for job in self.0 {
            if let Err(e) = job.task.await {
                tracing::warn!(job = job.name, error = %e, "a background job failed");
            }
        }
    }
}
