//! Work queues: consumers created with `"mode": "queue"`, shared by any
//! number of workers. Each matching event is leased to one worker at a
//! time; an ack makes it done for good, a lease that runs out (or a nack)
//! puts it back, and after `max_deliver` deliveries it becomes a dead
//! letter.
//!
//! Durable: the acknowledgements and the dead letters, written by the
//! writer as one delta line each in the consumers log (the ledger,
//! [`crate::store::QueueLedger`]) and fsynced before they are answered.
//! In memory only, here: which events wait and which are leased to whom
//! ([`state::QueueState`], one per queue consumer behind its own mutex,
//! which no store call ever runs under). After a restart every event that
//! is not done waits again (at-least-once), with its delivery count back
//! at zero.
//!
//! A fetch takes what waits; when that is not enough it reads the next
//! events from the store (`Store::read_cursor`, in chunks, with no lock of
//! this module held: one read per queue at a time), and when nothing waits
//! it long-polls on the head watch channel, waking for the next lease to
//! run out or nack delay to end too. A background job ([`Queues::reap`],
//! every second) returns expired leases and writes dead letters when no
//! fetch comes.

pub mod nats;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use crate::alerts::{Alerts, Severity};
use crate::store::{
    BoxFuture, Consumer, ConsumerError, DeadLetter, Matcher, QueueDelta, QueueSpec, Store,
    StoreError,
};
use state::{Commit, Item, QueueError, QueueState};

/// Default lease of a queue consumer.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default deliveries before an event becomes a dead letter.
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// Dead-letter alerts of one consumer are raised at most this often; the
/// dead letters in between are reported together in the next one.
pub const DEAD_ALERT_EVERY: Duration = Duration::from_secs(60);

/// How often [`Queues::reap`] runs.
pub const REAP_EVERY: Duration = Duration::from_secs(1);

/// Limits of every queue consumer (settings).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most events leased at once per consumer (`--queue-max-leases`); it
    /// also bounds the events read ahead and kept waiting in memory.
    pub max_leases: usize,
    /// Most acknowledged and dead seqs kept above the ack floor per
    /// consumer (`--queue-max-acked`).
    pub max_acked: usize,
    /// Most event bytes read in one step.
    pub max_read_bytes: usize,
}

impl QueueLimits {
    /// The limits `msgbus serve` was given.
    pub fn of(config: &crate::config::ServeConfig) -> Self {
        QueueLimits {
            max_leases: config.queue_max_leases.max(1),
            max_acked: config.queue_max_acked.max(1),
            max_read_bytes: usize::try_from(config.max_page_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// Why a queue request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueFailure {
    /// Refused by the queue's state (409/422).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Refused or failed by the store.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The consumer has `--queue-max-leases` events leased (429).
    #[error("consumer already has {limit} events leased, the most allowed (--queue-max-leases); ack, nack or let some expire first")]
    TooManyLeases {
        /// The limit.
        limit: usize,
    },
}

impl From<StoreError> for QueueFailure {
    fn from(e: StoreError) -> Self {
        QueueFailure::Consumer(e.into())
    }
}

/// One event handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its seq.
    pub seq: u64,
    /// The delivery attempt, from 1.
    pub attempt: u32,
    /// The lease id.
    pub lease: String,
    /// Milliseconds until the lease runs out.
    pub lease_ms: u64,
    /// The event JSON as stored.
    pub event: Bytes,
}

/// A queue consumer's numbers, for the API and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Events read and waiting for a worker.
    pub pending: u64,
    /// Stored events after the last one read (of any type: the filter is
    /// applied when they are read).
    pub unread: u64,
    /// Events leased now.
    pub leased: u64,
    /// Acknowledged since the server started.
    pub acknowledged: u64,
    /// Deliveries after the first since the server started.
    pub redelivered: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// The ack floor.
    pub ack_floor: u64,
    /// Age in seconds of the oldest event read and not done.
    pub oldest_unacked_age_seconds: Option<f64>,
}

/// The work queues as the HTTP layer sees them: one interface, two
/// implementations chosen where the application state is built: [`Queues`]
/// (the file backend: leases in this process, the ledger in the store) and
/// [`nats::NatsQueues`] (the NATS backend: leases kept by JetStream pull
/// consumers, so every msgbus instance serving the stream shares them).
/// Object-safe, with boxed futures, as the store interface is.
pub trait QueueService: Send + Sync + std::fmt::Debug {
    /// Leases up to `max` events of queue consumer `c`, waiting up to
    /// `wait` (or until `shutdown`) when none is available.
    fn fetch<'a>(
        &'a self,
        c: &'a Consumer,
        max: usize,
        wait: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, QueueFailure>>;

    /// Acknowledges `seqs` of `c` (all or none where the backend can tell
    /// beforehand), durably; answers the ack floor.
    fn ack<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<u64, QueueFailure>>;

    /// Gives a leased event back, to be delivered again after `delay`.
    fn nack<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), QueueFailure>>;

    /// Renews a lease; answers the milliseconds until it runs out.
    fn extend<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, QueueFailure>>;

    /// The dead letters of `c`, by seq.
    fn dead<'a>(
        &'a self,
        c: &'a Consumer,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueFailure>>;

    /// Puts dead letters of `c` back in the queue: `seqs`, or all of them.
    /// Answers the seqs redriven.
    fn redrive<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: Option<Vec<u64>>,
    ) -> BoxFuture<'a, Result<Vec<u64>, QueueFailure>>;

    /// The numbers of `c` (never waits long: a backend that must ask a
    /// server answers from a short cache).
    fn stats(&self, c: &Consumer) -> QueueStats;

    /// Every [`REAP_EVERY`]: the backend's periodic work (expired leases,
    /// dead letters, their alerts).
    fn reap(&self) -> BoxFuture<'_, ()>;
}

/// Raises the dead-letter alert of consumer `c` in `alerts`, at most once
/// per [`DEAD_ALERT_EVERY`]: dead letters in between wait in `a` for the
/// next one (the reaper raises it when the time has come).
pub(crate) fn dead_alert(alerts: &Alerts, a: &Mutex<DeadAlert>, c: &Consumer, seqs: &[u64]) {
    let mut a = a.lock().unwrap_or_else(|e| e.into_inner());
    a.waiting.extend_from_slice(seqs);
    let due = a.last.is_none_or(|t| t.elapsed() >= DEAD_ALERT_EVERY);
    if a.waiting.is_empty() || !due {
        return;
    }
    a.last = Some(Instant::now());
    let seqs = std::mem::take(&mut a.waiting);
    let shown: Vec<String> = seqs.iter().take(10).map(u64::to_string).collect();
    let more = if seqs.len() > 10 { ", …" } else { "" };
    alerts.raise(
        Severity::Warning,
        "dead_letter",
        None,
        format!(
            "{} event(s) of queue consumer {:?} became dead letters after {} deliveries without an ack (seqs {}{more}); \
             see GET /consumers/{}/dead, and POST /consumers/{}/dead/redrive to deliver them again",
            seqs.len(),
            c.name,
            c.queue.map_or(0, |q| q.max_deliver),
            shown.join(", "),
            c.name,
            c.name,
        ),
    );
}

struct Entry {
    /// The consumer it was built for (rebuilt when it changes).
    consumer: Consumer,
    matcher: Matcher,
    state: Mutex<QueueState>,
    /// One read of the store per queue at a time.
    reading: tokio::sync::Mutex<()>,
    alert: Mutex<DeadAlert>,
}

/// When a consumer's last dead-letter alert was raised, and the dead
/// letters waiting for the next one.
#[derive(Debug, Default)]
pub(crate) struct DeadAlert {
    last: Option<Instant>,
    waiting: Vec<u64>,
}

/// Every queue consumer's state in memory.
pub struct Queues {
    store: Arc<dyn Store>,
    alerts: Arc<Alerts>,
    limits: QueueLimits,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    lease_prefix: u32,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Attrs<'a> {
    #[serde(borrow, default)]
    subject: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<std::borrow::Cow<'a, str>>,
}

fn item_of(bytes: &Bytes, ordered: bool) -> Item {
    let attrs: Option<Attrs<'_>> = serde_json::from_slice(bytes).ok();
    let (subject, time) = attrs.map_or((None, None), |a| (a.subject, a.time));
    let time_ms = time
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.timestamp_millis());
    let subject = subject.filter(|_| ordered).map(|s| Arc::from(s.as_ref()));
    Item::fresh(subject, Some(bytes.clone()), time_ms)
}

impl Queues {
    /// The queues of `store`; dead letters raise alerts in `alerts`.
    pub fn new(store: Arc<dyn Store>, alerts: Arc<Alerts>, limits: QueueLimits) -> Self {
        let mut prefix = [0u8; 4];
        let _ = getrandom::fill(&mut prefix);
        Queues {
            store,
            alerts,
            limits,
            entries: Mutex::default(),
            lease_prefix: u32::from_le_bytes(prefix),
        }
    }

    /// The limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    fn entry(&self, c: &Consumer) -> Result<Arc<Entry>, QueueFailure> {
        let spec = c
            .queue
            .ok_or_else(|| ConsumerError::NotQueue(c.name.clone()))?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(&c.name) {
            if e.consumer == *c {
                return Ok(e.clone());
            }
        }
        let ledger = self.store.queue_ledger(&c.name).unwrap_or_default();
        let e = Arc::new(Entry {
            consumer: c.clone(),
            matcher: Matcher::new(c.filter.clone()),
            state: Mutex::new(QueueState::new(spec, &ledger, self.lease_prefix)),
            reading: tokio::sync::Mutex::new(()),
            alert: Mutex::default(),
        });
        entries.insert(c.name.clone(), e.clone());
        Ok(e)
    }

    fn lock(e: &Entry) -> std::sync::MutexGuard<'_, QueueState> {
        e.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leases up to `max` events of queue consumer `c`, waiting up to
    /// `wait` (or until `shutdown`) when none is available.
    async fn fetch_now(
        &self,
        c: &Consumer,
        max: usize,
        wait: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<Delivery>, QueueFailure> {
        let e = self.entry(c)?;
        let spec = c.queue.unwrap_or(QueueSpec {
            lease_ms: 0,
            max_deliver: 1,
            ordered_by_subject: false,
        });
        let deadline = tokio::time::Instant::now() + wait;
        let mut head_rx = self.store.subscribe();
        let mut got = Vec::new();
        loop {
            head_rx.borrow_and_update();
            self.settle(&e).await;
            let (more, capped, next_wake) = {
                let mut q = Self::lock(&e);
                let now = Instant::now();
                let leased = q.lease(now, max - got.len(), self.limits.max_leases);
                let capped = leased.is_empty() && q.leased_len() >= self.limits.max_leases;
                got.extend(leased);
                let more = got.len() < max
                    && q.scanned() < self.store.head()
                    && q.ready_len() < self.limits.max_leases;
                (more, capped, q.next_wake())
            };
            if got.len() >= max {
                break;
            }
            if more {
                match self.read_more(&e, spec.ordered_by_subject).await {
                    Ok(()) => continue,
                    // What is leased already is answered; the read is
                    // tried again by the next fetch.
                    Err(err) if got.is_empty() => return Err(err),
                    Err(_) => break,
                }
            }
            if capped && got.is_empty() {
                return Err(QueueFailure::TooManyLeases {
                    limit: self.limits.max_leases,
                });
            }
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline || *shutdown.borrow() {
                break;
            }
            let wake = next_wake
                .map(|w| tokio::time::Instant::from_std(w).min(deadline))
                .unwrap_or(deadline);
            tokio::select! {
                r = head_rx.changed() => if r.is_err() { break },
                _ = shutdown.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        let mut out = Vec::with_capacity(got.len());
        let mut gone = Vec::new();
        let now = Instant::now();
        for l in got {
            let event = match l.event {
                Some(b) => b,
                None => match self.store.get(l.seq).await {
                    Ok(Some(ev)) => ev.bytes,
                    Ok(None) => {
                        gone.push(l.seq);
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(seq = l.seq, error = %err, "a leased event could not be read; it waits for its lease to run out");
                        continue;
                    }
                },
            };
            out.push(Delivery {
                seq: l.seq,
                attempt: l.attempts,
                lease: l.lease,
                lease_ms: l.expires.saturating_duration_since(now).as_millis() as u64,
                event,
            });
        }
        if !gone.is_empty() {
            // Retention deleted them after they were read: nothing to
            // deliver, so they are done.
            let _ = self.ack_now(c, &gone).await;
        }
        Ok(out)
    }

    /// Reads the next events of `e` from the store into its queue.
    async fn read_more(&self, e: &Entry, ordered: bool) -> Result<(), QueueFailure> {
        let _one = e.reading.lock().await;
        let (from, room) = {
            let q = Self::lock(e);
            (
                q.scanned(),
                self.limits.max_leases.saturating_sub(q.ready_len()),
            )
        };
        if room == 0 || from >= self.store.head() {
            return Ok(());
        }
        let limit = room.clamp(1, 1000);
        match self
            .store
            .read_cursor(from, &e.matcher, limit, self.limits.max_read_bytes)
            .await
        {
            Ok(page) => {
                let items = page
                    .events
                    .iter()
                    .map(|ev| (ev.seq, item_of(&ev.bytes, ordered)))
                    .collect();
                Self::lock(e).add_read(from, items, page.next_after);
                Ok(())
            }
            Err(StoreError::Gone { oldest }) => {
                tracing::warn!(consumer = %e.consumer.name, oldest, "retention deleted events the queue had not delivered");
                Self::lock(e).skip_to(oldest);
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Returns expired leases of `e` and writes its dead letters.
    async fn settle(&self, e: &Entry) {
        let dying = {
            let mut q = Self::lock(e);
            q.expire(Instant::now());
            q.begin_dead()
        };
        let Some((commit, attempts)) = dying else {
            return;
        };
        let at = crate::clock::now_rfc3339();
        let change = QueueDelta {
            name: e.consumer.name.clone(),
            floor: commit.floor,
            dead: commit
                .seqs
                .iter()
                .zip(&attempts)
                .map(|(s, a)| {
                    (
                        *s,
                        DeadLetter {
                            attempts: *a,
                            at: at.clone(),
                            reason: format!("delivered {a} times without an ack"),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let result = self.store.queue_change(change, self.limits.max_acked).await;
        self.finish(e, &commit, &result, true);
        match result {
            Ok(_) => self.dead_alert(e, &commit.seqs),
            Err(err) => {
                tracing::warn!(consumer = %e.consumer.name, error = %err, "writing dead letters failed; they stay in the queue and are tried again");
            }
        }
    }

    fn finish(&self, e: &Entry, c: &Commit, result: &Result<u64, ConsumerError>, dead: bool) {
        Self::lock(e).finish(c, result.as_ref().ok().copied(), dead);
    }

    fn dead_alert(&self, e: &Entry, seqs: &[u64]) {
        dead_alert(&self.alerts, &e.alert, &e.consumer, seqs);
    }

    /// Acknowledges `seqs` of queue consumer `c` (all or none), durably;
    /// answers the ack floor.
    async fn ack_now(&self, c: &Consumer, seqs: &[u64]) -> Result<u64, QueueFailure> {
        let e = self.entry(c)?;
        let begun = Self::lock(&e).begin_ack(seqs);
        let commit = match begun {
            Ok(c) => c,
            Err(QueueError::NotPending(s)) => {
                // Say which (the error path only reads the ledger).
                let ledger = self.store.queue_ledger(&c.name).unwrap_or_default();
                return Err(if ledger.dead.contains_key(&s) {
                    ConsumerError::Dead(s).into()
                } else if ledger.is_done(s) {
                    ConsumerError::AlreadyAcked(s).into()
                } else {
                    QueueError::NotPending(s).into()
                });
            }
            Err(err) => return Err(err.into()),
        };
        let change = QueueDelta {
            name: c.name.clone(),
            floor: commit.floor,
            ack: commit.seqs.clone(),
            ..Default::default()
        };
        let result = self.store.queue_change(change, self.limits.max_acked).await;
        self.finish(&e, &commit, &result, false);
        Ok(result?)
    }

    /// Gives a leased event back, to be delivered again after `delay`.
    fn nack_now(
        &self,
        c: &Consumer,
        seq: u64,
        lease: Option<&str>,
        delay: Duration,
    ) -> Result<(), QueueFailure> {
        let e = self.entry(c)?;
        let mut q = Self::lock(&e);
        Ok(q.nack(seq, lease, delay, Instant::now())?)
    }

    /// Renews a lease; answers the milliseconds until it runs out.
    fn extend_now(&self, c: &Consumer, seq: u64, lease: Option<&str>) -> Result<u64, QueueFailure> {
        let e = self.entry(c)?;
        let now = Instant::now();
        let until = Self::lock(&e).extend(seq, lease, now)?;
        Ok(until.saturating_duration_since(now).as_millis() as u64)
    }

    /// Puts dead letters of `c` back in the queue: `seqs`, or all of them.
    /// Answers the seqs redriven.
    async fn redrive_now(
        &self,
        c: &Consumer,
        seqs: Option<Vec<u64>>,
    ) -> Result<Vec<u64>, QueueFailure> {
        let e = self.entry(c)?;
        let seqs = match seqs {
            Some(s) => s,
            None => self
                .store
                .queue_ledger(&c.name)
                .map(|l| l.dead.into_keys().collect())
                .unwrap_or_default(),
        };
        if seqs.is_empty() {
            return Ok(seqs);
        }
        let change = QueueDelta {
            name: c.name.clone(),
            redrive: seqs.clone(),
            ..Default::default()
        };
        self.store
            .queue_change(change, self.limits.max_acked)
            .await?;
        Self::lock(&e).redriven(&seqs);
        Ok(seqs)
    }

    /// The numbers of queue consumer `c`.
    fn stats_now(&self, c: &Consumer) -> QueueStats {
        let Ok(e) = self.entry(c) else {
            return QueueStats::default();
        };
        let head = self.store.head();
        let q = Self::lock(&e);
        let now_ms = chrono::Utc::now().timestamp_millis();
        QueueStats {
            pending: q.ready_len() as u64,
            unread: head.saturating_sub(q.scanned()),
            leased: q.leased_len() as u64,
            acknowledged: q.counters.acked,
            redelivered: q.counters.redelivered,
            dead: q.dead_len() as u64,
            ack_floor: q.floor(),
            oldest_unacked_age_seconds: q
                .oldest_time_ms()
                .map(|t| (now_ms - t).max(0) as f64 / 1000.0),
        }
    }

    /// Every second: returns expired leases, writes dead letters, raises
    /// the dead-letter alerts that waited, and forgets deleted consumers.
    async fn reap_now(&self) {
        let entries: Vec<Arc<Entry>> = {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|name, e| self.store.consumer(name).as_ref() == Some(&e.consumer));
            map.values().cloned().collect()
        };
        for e in entries {
            self.settle(&e).await;
            self.dead_alert(&e, &[]);
        }
    }
}

impl QueueService for Queues {
    fn fetch<'a>(
        &'a self,
        c: &'a Consumer,
        max: usize,
        wait: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, QueueFailure>> {
        Box::pin(self.fetch_now(c, max, wait, shutdown))
    }

    fn ack<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<u64, QueueFailure>> {
        Box::pin(self.ack_now(c, seqs))
    }

    fn nack<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), QueueFailure>> {
        let r = self.nack_now(c, seq, lease, delay);
        Box::pin(async move { r })
    }

    fn extend<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, QueueFailure>> {
        let r = self.extend_now(c, seq, lease);
        Box::pin(async move { r })
    }

    fn dead<'a>(
        &'a self,
        c: &'a Consumer,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueFailure>> {
        let ledger = self.store.queue_ledger(&c.name).unwrap_or_default();
        Box::pin(async move { Ok(ledger.dead.into_iter().collect()) })
    }

    fn redrive<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: Option<Vec<u64>>,
    ) -> BoxFuture<'a, Result<Vec<u64>, QueueFailure>> {
        Box::pin(self.redrive_now(c, seqs))
    }

    fn stats(&self, c: &Consumer) -> QueueStats {
        self.stats_now(c)
    }

    fn reap(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.reap_now())
    }
}
