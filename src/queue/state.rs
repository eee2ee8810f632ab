//! The state machine of one queue consumer, in memory: which matching
//! events wait, which are leased to whom until when, which acks and dead
//! letters are being written. Pure: no I/O, no clock of its own (every
//! call takes `now`), so the unit tests below drive it step by step.
//!
//! An event is in exactly one place: not read yet (after `scanned`),
//! `ready` (waiting for a worker, maybe not before a nack's delay),
//! `leased`, `committing` (its ack or dead letter is being written by the
//! writer), or done (acknowledged or dead, durably: the ledger). The ack
//! floor sent with each change is one below the lowest seq still in one of
//! the first four places, so it never passes an event that is not done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{QueueLedger, QueueSpec};

/// One event waiting for a worker.
#[derive(Debug, Clone)]
pub struct Item {
    /// Deliveries so far.
    pub attempts: u32,
    /// A nack's delay: not delivered before this.
    pub not_before: Option<Instant>,
    /// Its CloudEvents `subject` (kept only for `ordering: subject`).
    pub subject: Option<Arc<str>>,
    /// Its bytes, kept from the read until the first delivery (later ones
    /// read it again).
    pub event: Option<Bytes>,
    /// Its `time`, in ms since the epoch (for the oldest age).
    pub time_ms: Option<i64>,
}

/// One lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Its id, which nack and extend may name.
    pub id: String,
    /// Deliveries so far, this one included.
    pub attempts: u32,
    /// When it runs out.
    pub expires: Instant,
    /// The item, to put back.
    pub item: Item,
}

/// An event handed to a worker by [`QueueState::lease`].
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its seq.
    pub seq: u64,
    /// The delivery attempt, from 1.
    pub attempts: u32,
    /// The lease id.
    pub lease: String,
    /// Its bytes, when still in memory.
    pub event: Option<Bytes>,
    /// When the lease runs out.
    pub expires: Instant,
}

/// Where an event being committed came from (where it goes back to if the
/// write fails).
#[derive(Debug, Clone)]
enum Origin {
    Leased(Lease),
    Ready(Item),
    /// After `scanned`: an ack of an event not read yet.
    Unread,
}

/// Why a queue request was refused before reaching the writer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The seq is not leased, waiting or unread: already acknowledged, a
    /// dead letter, or not an event of this consumer (409).
    #[error("seq {0} is not waiting for an ack: it is not an event of this consumer (its filter does not match it)")]
    NotPending(u64),
    /// An ack or dead letter of this seq is being written now (409).
    #[error("seq {0} is being acknowledged by another request")]
    Committing(u64),
    /// The seq is not leased (nack, extend) (409).
    #[error("seq {0} is not leased (its lease expired, or it was acknowledged)")]
    NotLeased(u64),
    /// The lease named is not the event's current one (409).
    #[error("lease {lease:?} of seq {seq} is no longer valid: it expired and the event was leased again")]
    LeaseLost {
        /// The seq.
        seq: u64,
        /// The lease named.
        lease: String,
    },
    /// A seq listed twice (422).
    #[error("seq {0} is listed twice")]
    Duplicate(u64),
}

/// A change being written: its seqs and the floor sent with it.
#[derive(Debug)]
pub struct Commit {
    /// Its id.
    pub op: u64,
    /// The seqs it acknowledges or dead-letters.
    pub seqs: Vec<u64>,
    /// The floor to send.
    pub floor: u64,
}

/// Counters since the server started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Acknowledged.
    pub acked: u64,
    /// Delivered again (second and later deliveries).
    pub redelivered: u64,
    /// Set aside as dead letters.
    pub dead: u64,
}

/// A queue consumer's state in memory. See the module docs.
#[derive(Debug)]
pub struct QueueState {
    spec: QueueSpec,
    /// The ack floor last written.
    floor: u64,
    /// Every matching event at or below it is known: done or in a map here.
    scanned: u64,
    ready: BTreeMap<u64, Item>,
    /// Seqs in `ready` delivered `max_deliver` times: dead letters to be.
    dying: BTreeSet<u64>,
    leased: BTreeMap<u64, Lease>,
    committing: BTreeMap<u64, (u64, Origin)>,
    /// Done seqs after `scanned` (the ledger's, and acks of unread events),
    /// skipped when they are read.
    done_after: BTreeSet<u64>,
    /// Subjects with an event leased or being committed (ordering only).
    busy_subjects: HashMap<Arc<str>, u64>,
    /// Dead letters kept (durable; from the ledger).
    dead: usize,
    next_op: u64,
    lease_prefix: u32,
    next_lease: u64,
    /// Counters since start.
    pub counters: Counters,
}

impl QueueState {
    /// The state of a queue whose durable ledger is `ledger`: nothing is
    /// leased (leases live in memory only), every event not done waits.
    pub fn new(spec: QueueSpec, ledger: &QueueLedger, lease_prefix: u32) -> Self {
        let mut ready = BTreeMap::new();
        for &s in ledger.redo.iter().filter(|s| **s <= ledger.floor) {
            ready.insert(s, Item::fresh(None, None, None));
        }
        let done_after = ledger
            .acked
            .iter()
            .chain(ledger.dead.keys())
            .filter(|s| **s > ledger.floor && !ledger.redo.contains(s))
            .copied()
            .collect();
        QueueState {
            spec,
            floor: ledger.floor,
            scanned: ledger.floor,
            ready,
            dying: BTreeSet::new(),
            leased: BTreeMap::new(),
            committing: BTreeMap::new(),
            done_after,
            busy_subjects: HashMap::new(),
            dead: ledger.dead.len(),
            next_op: 1,
            lease_prefix,
            next_lease: 1,
            counters: Counters::default(),
        }
    }

    /// The seq up to which events have been read.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Events waiting (read, not leased).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Events leased now.
    pub fn leased_len(&self) -> usize {
        self.leased.len()
    }

    /// Dead letters kept.
    pub fn dead_len(&self) -> usize {
        self.dead
    }

    /// The ack floor last written.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The `time` (ms since the epoch) of the oldest event not yet done
    /// that has one in memory.
    pub fn oldest_time_ms(&self) -> Option<i64> {
        let r = self.ready.values().filter_map(|i| i.time_ms).min();
        let l = self.leased.values().filter_map(|l| l.item.time_ms).min();
        r.into_iter().chain(l).min()
    }

    /// Adds what a read from `from` found: `events` (seq, item) in seq
    /// order, every matching event up to `next_after`. Ignored when another
    /// read got there first (`from` is not `scanned` any more).
    pub fn add_read(&mut self, from: u64, events: Vec<(u64, Item)>, next_after: u64) {
        if from != self.scanned || next_after <= self.scanned {
            return;
        }
        for (seq, item) in events {
            if seq <= self.scanned || self.done_after.remove(&seq) {
                continue;
            }
            self.ready.insert(seq, item);
        }
        self.scanned = next_after;
        self.done_after = self.done_after.split_off(&(next_after + 1));
    }

    /// Skips a gap retention made: events before `oldest` are gone.
    pub fn skip_to(&mut self, oldest: u64) {
        if oldest > self.scanned + 1 {
            self.scanned = oldest - 1;
            self.done_after = self.done_after.split_off(&oldest);
        }
    }

    /// Returns leases that ran out by `now` to the queue (a nack without
    /// delay). Answers how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(s, _)| *s)
            .collect();
        for &s in &expired {
            if let Some(l) = self.leased.remove(&s) {
                self.release(s, l, None);
            }
        }
        expired.len()
    }

    /// The earliest time something changes by itself: a lease runs out or
    /// a nack's delay ends.
    pub fn next_wake(&self) -> Option<Instant> {
        let l = self.leased.values().map(|l| l.expires).min();
        let r = self.ready.values().filter_map(|i| i.not_before).min();
        l.into_iter().chain(r).min()
    }

    fn release(&mut self, seq: u64, lease: Lease, not_before: Option<Instant>) {
        self.free_subject(seq, lease.item.subject.as_ref());
        let mut item = lease.item;
        item.attempts = lease.attempts;
        item.not_before = not_before;
        if item.attempts >= self.spec.max_deliver {
            self.dying.insert(seq);
        }
        self.ready.insert(seq, item);
    }

    fn free_subject(&mut self, seq: u64, subject: Option<&Arc<str>>) {
        if let Some(s) = subject {
            if self.busy_subjects.get(s) == Some(&seq) {
                self.busy_subjects.remove(s);
            }
        }
    }

    /// Leases up to `max` waiting events, oldest first, while fewer than
    /// `max_leases` are leased. With ordering by subject, an event is
    /// passed over while an earlier one of its subject is leased, being
    /// committed, or waiting (delayed or passed over itself).
    pub fn lease(&mut self, now: Instant, max: usize, max_leases: usize) -> Vec<Leased> {
        let room = max.min(max_leases.saturating_sub(self.leased.len()));
        let mut out = Vec::new();
        if room == 0 {
            return out;
        }
        let ordered = self.spec.ordered_by_subject;
        let mut blocked: std::collections::HashSet<Arc<str>> = Default::default();
        let mut take = Vec::new();
        for (&seq, item) in &self.ready {
            if take.len() >= room {
                break;
            }
            let subject = item.subject.as_ref().filter(|_| ordered);
            if let Some(s) = subject {
                if self.busy_subjects.contains_key(s) || blocked.contains(s) {
                    continue;
                }
            }
            let available = item.not_before.is_none_or(|t| t <= now);
            if !available || self.dying.contains(&seq) {
                if let Some(s) = subject {
                    blocked.insert(s.clone());
                }
                continue;
            }
            if let Some(s) = subject {
                blocked.insert(s.clone());
            }
            take.push(seq);
        }
        let lease = Duration::from_millis(self.spec.lease_ms);
        for seq in take {
            let Some(mut item) = self.ready.remove(&seq) else {
                continue;
            };
            let attempts = item.attempts + 1;
            if attempts > 1 {
                self.counters.redelivered += 1;
            }
            if let Some(s) = item.subject.as_ref().filter(|_| ordered) {
                self.busy_subjects.insert(s.clone(), seq);
            }
            let id = format!("{:08x}{:x}", self.lease_prefix, self.next_lease);
            self.next_lease += 1;
            let event = item.event.take();
            let expires = now + lease;
            out.push(Leased {
                seq,
                attempts,
                lease: id.clone(),
                event,
                expires,
            });
            item.not_before = None;
            self.leased.insert(
                seq,
                Lease {
                    id,
                    attempts,
                    expires,
                    item,
                },
            );
        }
        out
    }

    fn check_lease(&self, seq: u64, lease: Option<&str>) -> Result<&Lease, QueueError> {
        let l = self.leased.get(&seq).ok_or(QueueError::NotLeased(seq))?;
        match lease {
            Some(id) if id != l.id => Err(QueueError::LeaseLost {
                seq,
                lease: id.to_string(),
            }),
            _ => Ok(l),
        }
    }

    /// Renews a lease for another lease period from `now`; answers when it
    /// runs out.
    pub fn extend(
        &mut self,
        seq: u64,
        lease: Option<&str>,
        now: Instant,
    ) -> Result<Instant, QueueError> {
        self.check_lease(seq, lease)?;
        let expires = now + Duration::from_millis(self.spec.lease_ms);
        if let Some(l) = self.leased.get_mut(&seq) {
            l.expires = expires;
        }
        Ok(expires)
    }

    /// Gives a leased event back: delivered again at once, or not before
    /// `delay` has passed (after `max_deliver` deliveries it becomes a dead
    /// letter instead).
    pub fn nack(
        &mut self,
        seq: u64,
        lease: Option<&str>,
        delay: Duration,
        now: Instant,
    ) -> Result<(), QueueError> {
        self.check_lease(seq, lease)?;
        if let Some(l) = self.leased.remove(&seq) {
            let not_before = (!delay.is_zero()).then(|| now + delay);
            self.release(seq, l, not_before);
        }
        Ok(())
    }

    /// Starts acknowledging `seqs` (all or none): each must be leased (to
    /// anyone: see the HTTP docs for why a stale ack is accepted), waiting,
    /// or not read yet and not done.
    pub fn begin_ack(&mut self, seqs: &[u64]) -> Result<Commit, QueueError> {
        let mut seen = std::collections::HashSet::new();
        for &s in seqs {
            if !seen.insert(s) {
                return Err(QueueError::Duplicate(s));
            }
            if self.committing.contains_key(&s) {
                return Err(QueueError::Committing(s));
            }
            let known = self.leased.contains_key(&s) || self.ready.contains_key(&s);
            let unread = s > self.scanned && !self.done_after.contains(&s);
            if !known && !unread {
                return Err(QueueError::NotPending(s));
            }
        }
        let op = self.next_op();
        for &s in seqs {
            let origin = if let Some(l) = self.leased.remove(&s) {
                Origin::Leased(l)
            } else if let Some(i) = self.ready.remove(&s) {
                self.dying.remove(&s);
                Origin::Ready(i)
            } else {
                Origin::Unread
            };
            self.committing.insert(s, (op, origin));
        }
        Ok(Commit {
            op,
            seqs: seqs.to_vec(),
            floor: self.floor_for(op),
        })
    }

    /// Takes the events delivered `max_deliver` times out of the queue, to
    /// be written as dead letters; answers the commit and each one's
    /// delivery count.
    pub fn begin_dead(&mut self) -> Option<(Commit, Vec<u32>)> {
        if self.dying.is_empty() {
            return None;
        }
        let op = self.next_op();
        let mut seqs = Vec::new();
        let mut attempts = Vec::new();
        for s in std::mem::take(&mut self.dying) {
            if let Some(i) = self.ready.remove(&s) {
                seqs.push(s);
                attempts.push(i.attempts);
                self.committing.insert(s, (op, Origin::Ready(i)));
            }
        }
        let floor = self.floor_for(op);
        Some((Commit { op, seqs, floor }, attempts))
    }

    fn next_op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    /// One below the lowest seq that is not done, not counting the seqs
    /// of commit `op`.
    fn floor_for(&self, op: u64) -> u64 {
        let committing = self
            .committing
            .iter()
            .find(|(_, (o, _))| *o != op)
            .map(|(s, _)| *s);
        [
            self.ready.keys().next().copied(),
            self.leased.keys().next().copied(),
            committing,
            Some(self.scanned + 1),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(1)
            - 1
    }

    /// Ends commit `c`: written (`floor`: the floor the writer answered),
    /// or failed (its events go back where they were). `dead` says the
    /// commit was of dead letters.
    pub fn finish(&mut self, c: &Commit, result: Option<u64>, dead: bool) {
        for &s in &c.seqs {
            let Some((_, origin)) = self.committing.remove(&s) else {
                continue;
            };
            match (result, origin) {
                (Some(_), Origin::Leased(l)) => self.free_subject(s, l.item.subject.as_ref()),
                (Some(_), Origin::Ready(_)) => {}
                (Some(_), Origin::Unread) => {
                    if s > self.scanned {
                        self.done_after.insert(s);
                    }
                }
                (None, Origin::Leased(l)) => {
                    self.leased.insert(s, l);
                }
                (None, Origin::Ready(i)) => {
                    if i.attempts >= self.spec.max_deliver {
                        self.dying.insert(s);
                    }
                    self.ready.insert(s, i);
                }
                (None, Origin::Unread) => {}
            }
        }
        if let Some(floor) = result {
            self.floor = self.floor.max(floor);
            if dead {
                self.counters.dead += c.seqs.len() as u64;
                self.dead += c.seqs.len();
            } else {
                self.counters.acked += c.seqs.len() as u64;
            }
        }
    }

    /// Puts redriven dead letters back: waiting again, from attempt 1.
    pub fn redriven(&mut self, seqs: &[u64]) {
        for &s in seqs {
            self.dead = self.dead.saturating_sub(1);
            if s <= self.scanned {
                self.ready.insert(s, Item::fresh(None, None, None));
            } else {
                self.done_after.remove(&s);
            }
        }
    }
}

impl Item {
    /// A waiting event never delivered.
    pub fn fresh(subject: Option<Arc<str>>, event: Option<Bytes>, time_ms: Option<i64>) -> Self {
        Item {
            attempts: 0,
            not_before: None,
            subject,
            event,
            time_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ordered: bool) -> QueueSpec {
        QueueSpec {
            lease_ms: 1000,
            max_deliver: 3,
            ordered_by_subject: ordered,
        }
    }

    fn read(q: &mut QueueState, seqs: &[(u64, Option<&str>)], next_after: u64) {
        let from = q.scanned();
        let events = seqs
            .iter()
            .map(|(s, sub)| (*s, Item::fresh(sub.map(Arc::from), None, None)))
            .collect();
        q.add_read(from, events, next_after);
    }

    fn seqs(l: &[Leased]) -> Vec<u64> {
        l.iter().map(|l| l.seq).collect()
    }

    #[test]
    fn an_expired_lease_comes_back_and_dies_after_max_deliver() {
        let t0 = Instant::now();
        let mut q = QueueState::new(spec(false), &QueueLedger::default(), 1);
        read(&mut q, &[(1, None), (2, None)], 2);
        let a = q.lease(t0, 1, 100);
        assert_eq!((seqs(&a), a[0].attempts), (vec![1], 1));
        // Not expired yet: the next worker gets seq 2.
        assert_eq!(q.expire(t0 + Duration::from_millis(999)), 0);
        assert_eq!(seqs(&q.lease(t0, 5, 100)), vec![2]);
        assert_eq!(q.expire(t0 + Duration::from_millis(1000)), 2);
        let t1 = t0 + Duration::from_secs(1);
        let b = q.lease(t1, 1, 100);
        assert_eq!((seqs(&b), b[0].attempts), (vec![1], 2));
        assert_ne!(a[0].lease, b[0].lease);
        // The old lease cannot nack or extend any more.
        assert!(matches!(
            q.nack(1, Some(&a[0].lease), Duration::ZERO, t1),
            Err(QueueError::LeaseLost { .. })
        ));
        q.nack(1, Some(&b[0].lease), Duration::ZERO, t1).unwrap();
        assert_eq!(q.lease(t1, 1, 100)[0].attempts, 3);
        q.expire(t1 + Duration::from_secs(5));
        // Three deliveries: the next step is the dead letters, not a lease.
        assert!(seqs(&q.lease(t1 + Duration::from_secs(5), 5, 100))
            .iter()
            .all(|s| *s != 1));
        let (c, attempts) = q.begin_dead().expect("one to die");
        assert_eq!((c.seqs.clone(), attempts), (vec![1], vec![3]));
        q.finish(&c, Some(c.floor), true);
        assert_eq!(q.dead_len(), 1);
        assert_eq!(q.counters.redelivered, 3);
    }

    #[test]
    fn the_floor_stops_below_the_oldest_event_not_done() {
        let t0 = Instant::now();
        let mut q = QueueState::new(spec(false), &QueueLedger::default(), 1);
        // 3 and 6 do not match the filter: never read into the queue.
        read(&mut q, &[(1, None), (2, None), (4, None), (5, None)], 6);
        let l = q.lease(t0, 10, 100);
        assert_eq!(seqs(&l), vec![1, 2, 4, 5]);
        let c = q.begin_ack(&[2, 4]).unwrap();
        assert_eq!(c.floor, 0, "1 is still leased");
        q.finish(&c, Some(c.floor), false);
        let c1 = q.begin_ack(&[1]).unwrap();
        assert_eq!(
            c1.floor, 4,
            "1, 2, 3 (no match) and 4 are done; 5 is leased"
        );
        let c5 = q.begin_ack(&[5]).unwrap();
        assert_eq!(c5.floor, 0, "1 is being written by another commit");
        q.finish(&c1, Some(c1.floor), false);
        q.finish(&c5, Some(c5.floor), false);
        assert_eq!(q.floor(), 4);
        let c = q.begin_ack(&[]).unwrap();
        assert_eq!(c.floor, 6, "everything read is done");
        // Acked events cannot be acked again; a failed write puts them back.
        assert_eq!(q.begin_ack(&[2]).unwrap_err(), QueueError::NotPending(2));
        read(&mut q, &[(7, None)], 7);
        let l = q.lease(t0, 1, 100);
        let c = q.begin_ack(&[7]).unwrap();
        assert_eq!(q.begin_ack(&[7]).unwrap_err(), QueueError::Committing(7));
        q.finish(&c, None, false);
        assert_eq!(q.leased_len(), 1);
        q.extend(7, Some(&l[0].lease), t0).unwrap();
    }

    #[test]
    fn a_ledger_restores_the_floor_and_skips_done_events() {
        let t0 = Instant::now();
        let ledger = QueueLedger {
            floor: 3,
            acked: [5].into(),
            dead: [(
                6,
                crate::store::DeadLetter {
                    attempts: 5,
                    at: String::new(),
                    reason: String::new(),
                },
            )]
            .into(),
            redo: [2].into(),
        };
        let mut q = QueueState::new(spec(false), &ledger, 1);
        read(&mut q, &[(4, None), (5, None), (6, None), (7, None)], 7);
        assert_eq!(seqs(&q.lease(t0, 10, 100)), vec![2, 4, 7]);
        assert_eq!(q.dead_len(), 1);
    }

    #[test]
    fn one_event_per_subject_in_flight_in_seq_order() {
        let t0 = Instant::now();
        let mut q = QueueState::new(spec(true), &QueueLedger::default(), 1);
        read(
            &mut q,
            &[
                (1, Some("a")),
                (2, Some("a")),
                (3, Some("b")),
                (4, None),
                (5, Some("b")),
                (6, None),
            ],
            6,
        );
        let l = q.lease(t0, 10, 100);
        assert_eq!(seqs(&l), vec![1, 3, 4, 6]);
        assert!(q.lease(t0, 10, 100).is_empty(), "2 and 5 wait for 1 and 3");
        // A delayed nack keeps its subject's later events waiting.
        q.nack(1, None, Duration::from_secs(10), t0).unwrap();
        assert!(q.lease(t0, 10, 100).is_empty());
        let c = q.begin_ack(&[3]).unwrap();
        assert!(
            q.lease(t0, 10, 100).is_empty(),
            "3's ack is not written yet"
        );
        q.finish(&c, Some(c.floor), false);
        assert_eq!(seqs(&q.lease(t0, 10, 100)), vec![5]);
        assert_eq!(
            seqs(&q.lease(t0 + Duration::from_secs(10), 10, 100)),
            vec![1]
        );
        // The lease cap.
        let mut q = QueueState::new(spec(false), &QueueLedger::default(), 1);
        read(&mut q, &[(1, None), (2, None), (3, None)], 3);
        assert_eq!(q.lease(t0, 10, 2).len(), 2);
        assert!(q.lease(t0, 10, 2).is_empty());
    }
}
