//! The work queues of the NATS backend behind [`QueueService`]: leases,
//! acks and redelivery are JetStream's (see [`crate::jetstream::queues`]),
//! so any number of msgbus instances serve one queue; this adapter maps
//! its answers onto the queue API's errors and raises the dead-letter
//! alert (the jetstream module knows nothing of alerts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::state::QueueError;
use super::{dead_alert, DeadAlert, Delivery, QueueFailure, QueueLimits, QueueService, QueueStats};
use crate::alerts::Alerts;
use crate::jetstream::queues::{JsQueues, LeaseError};
use crate::store::{BoxFuture, Consumer, ConsumerError, DeadLetter};

/// The NATS backend's queues.
pub struct NatsQueues {
    js: Arc<JsQueues>,
    alerts: Arc<Alerts>,
    limits: QueueLimits,
    /// The dead-letter alert's throttle, per consumer.
    alert: Mutex<HashMap<String, Arc<Mutex<DeadAlert>>>>,
    /// The consumers whose dead letters wait for an alert.
    waiting: Mutex<HashMap<String, Consumer>>,
}

impl std::fmt::Debug for NatsQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueues")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn failure(e: LeaseError) -> QueueFailure {
    match e {
        LeaseError::NotLeased(s) => QueueError::NotLeased(s).into(),
        LeaseError::LeaseLost { seq, lease } => QueueError::LeaseLost { seq, lease }.into(),
        LeaseError::NotPending(s) => QueueError::NotPending(s).into(),
        LeaseError::Duplicate(s) => QueueError::Duplicate(s).into(),
        LeaseError::TooManyLeases(limit) => QueueFailure::TooManyLeases { limit },
        LeaseError::Consumer(c) => c.into(),
    }
}

fn queue_only(c: &Consumer) -> Result<(), QueueFailure> {
    if c.queue.is_none() {
        return Err(ConsumerError::NotQueue(c.name.clone()).into());
    }
    Ok(())
}

impl NatsQueues {
    /// The queues of the stream `js` serves; dead letters raise alerts in
    /// `alerts`.
    pub fn new(js: Arc<JsQueues>, alerts: Arc<Alerts>, limits: QueueLimits) -> Self {
        NatsQueues {
            js,
            alerts,
            limits,
            alert: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    fn throttle(&self, name: &str) -> Arc<Mutex<DeadAlert>> {
        self.alert
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

impl QueueService for NatsQueues {
    fn fetch<'a>(
        &'a self,
        c: &'a Consumer,
        max: usize,
        wait: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, QueueFailure>> {
        Box::pin(async move {
            queue_only(c)?;
            let got = self
                .js
                .fetch(c, max, wait, shutdown)
                .await
                .map_err(failure)?;
            Ok(got
                .into_iter()
                .map(|l| Delivery {
                    seq: l.seq,
                    attempt: l.attempt,
                    lease: l.lease,
                    lease_ms: l.lease_ms,
                    event: l.event,
                })
                .collect())
        })
    }

    fn ack<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<u64, QueueFailure>> {
        Box::pin(async move {
            queue_only(c)?;
            self.js.ack(c, seqs).await.map_err(failure)
        })
    }

    fn nack<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), QueueFailure>> {
        Box::pin(async move {
            queue_only(c)?;
            self.js.nack(c, seq, lease, delay).await.map_err(failure)
        })
    }

    fn extend<'a>(
        &'a self,
        c: &'a Consumer,
        seq: u64,
        lease: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, QueueFailure>> {
        Box::pin(async move {
            queue_only(c)?;
            self.js.extend(c, seq, lease).await.map_err(failure)
        })
    }

    fn dead<'a>(
        &'a self,
        c: &'a Consumer,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueFailure>> {
        Box::pin(async move { self.js.dead(c).await.map_err(failure) })
    }

    fn redrive<'a>(
        &'a self,
        c: &'a Consumer,
        seqs: Option<Vec<u64>>,
    ) -> BoxFuture<'a, Result<Vec<u64>, QueueFailure>> {
        Box::pin(async move {
            queue_only(c)?;
            self.js.redrive(c, seqs).await.map_err(failure)
        })
    }

    fn stats(&self, c: &Consumer) -> QueueStats {
        let n = self.js.numbers(c);
        QueueStats {
            pending: n.pending,
            unread: 0,
            leased: n.leased,
            acknowledged: n.acknowledged,
            redelivered: n.redelivered,
            dead: n.dead,
            ack_floor: n.ack_floor,
            oldest_unacked_age_seconds: None,
        }
    }

    fn reap(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let fresh = self.js.take_new_dead();
            let mut by_consumer: HashMap<String, Vec<u64>> = HashMap::new();
            for (name, seq) in fresh {
                by_consumer.entry(name).or_default().push(seq);
            }
            // Dead letters recorded now, and those whose alert waited for
            // the throttle.
            let names: Vec<String> = {
                let w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                w.keys()
                    .cloned()
                    .chain(by_consumer.keys().cloned())
                    .collect()
            };
            for name in names {
                let seqs = by_consumer.remove(&name).unwrap_or_default();
                let c = {
                    let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                    match self.js.consumer(&name) {
                        Some(c) => {
                            w.insert(name.clone(), c.clone());
                            c
                        }
                        None => {
                            w.remove(&name);
                            continue;
                        }
                    }
                };
                let throttle = self.throttle(&name);
                dead_alert(&self.alerts, &throttle, &c, &seqs);
                let idle = throttle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .waiting
                    .is_empty();
                if idle {
                    self.waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                }
            }
        })
    }
}
