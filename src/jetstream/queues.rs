//! Work queues (queue consumers) of the NATS backend, shared by every
//! msgbus instance serving the stream: the leases are JetStream's.
//!
//! - Each queue consumer is one durable JetStream pull consumer
//!   ([`js_name`]), AckPolicy explicit, AckWait = the queue's `lease`,
//!   MaxDeliver = `max_deliver`, MaxAckPending = `--queue-max-leases`, the
//!   type filter as its FilterSubject, delivering from the consumer's
//!   `start`. It is created and updated with the msgbus consumer (whose KV
//!   record stays the definition) and deleted with it; a fetch recreates
//!   it if it is missing.
//! - A fetch is a pull request (batch `max`, expires `wait`); an event the
//!   rest of the filter (source, subject, scope) does not match is acked
//!   and skipped. The lease id is `<delivered>.<consumer seq>` of the
//!   message's ack subject, so any instance can rebuild the ack subject
//!   (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<consumer seq>.0.0`).
//! - ack (`+ACK`), nack (`-NAK`, with a delay) and extend (the progress
//!   ack, which nats-server spells `+WPI`, not `+WIP`: `AckProgress` in
//!   its `consumer.go`; anything else is ignored without a word) are
//!   requests to that subject, answered after the server's reply (for an
//!   ack: after the consumer's leader stored it; on R3 after its replicas
//!   agreed). nats-server keys an explicit ack by stream seq only (the
//!   delivery count and consumer seq of the subject are not checked), so
//!   a stale ack counts, as on the file backend. A stale nack or extend is
//!   not refused by the server either: msgbus refuses it (409 `lease-lost`)
//!   when this instance saw a later delivery of the event, and cannot tell
//!   when only another instance did.
//! - Dead letters: when an event had `max_deliver` deliveries without an
//!   ack, the server drops it from the consumer's pending set and
//!   publishes a MAX_DELIVERIES advisory. A core NATS message is lost when
//!   nobody listens, and the server publishes it whether or not a msgbus
//!   instance is running (its last lease can run out while every instance
//!   is down), so the advisories are captured by a stream of their own
//!   (`<stream>_DEAD`, [`advisory_stream`]), which keeps them for every
//!   instance to read. Every instance replays it from its start and then
//!   follows it, and records each dead letter in the `<stream>_QUEUES` KV
//!   bucket (one key per queue) by a compare-and-set that also raises the
//!   ledger's `advised` mark to the advisory's seq in that stream: an
//!   advisory at or below the mark was applied already, by this or another
//!   instance, so each is applied exactly once however many instances
//!   replay it, and a dead letter redriven since is not listed again. The
//!   instance whose write recorded it raises the alert. Why not the
//!   consumer's state: JetStream's ack floor passes acknowledged and
//!   exhausted events alike, and no API lists which were which; and
//!   recording a dead letter when the last delivery is handed out would
//!   list one the worker then acks.
//! - Redrive: JetStream cannot deliver a message again to a consumer that
//!   gave up on it, so a redriven dead letter moves to the ledger's `redo`
//!   entries, and fetches serve those first (the event by a direct get),
//!   each with its own lease in the ledger: claimed, renewed, given back
//!   and acknowledged by compare-and-set, so two instances never lease it
//!   at once either. Its lease id starts with `r`. After `max_deliver`
//!   more deliveries without an ack it is a dead letter again.
//! - `"ordering": "subject"` (one event per CloudEvents `subject` in
//!   flight, each subject in seq order): JetStream has no such delivery,
//!   so an ordered queue's JetStream consumer only hands events over, in
//!   stream order, to the queue's ledger, whose `window` then leases them
//!   as it leases redriven events (by compare-and-set, lease ids starting
//!   with `s`), passing over an event while an earlier one of its subject
//!   is still there (leased, delayed by a nack, or passed over itself). A
//!   fetch pulls only while it holds the ledger's `puller` mark (taken and
//!   given back by compare-and-set, lapsing after `PULL_HOLD`), so
//!   events enter the window in stream order however many instances
//!   fetch: two unsynchronised pulls could record a later event of a
//!   subject, and lease it, before an earlier one pulled elsewhere. A
//!   pulled event is recorded in the window and in `settled` first and
//!   acked to JetStream after, so neither a crash in between (JetStream
//!   delivers it again: `settled` says it is in already) nor a lost ack
//!   loses or doubles it. A fetch that dies between its pull and that
//!   write leaves its mark to lapse; the fetch that takes a lapsed mark
//!   first lists the events JetStream delivered and had no ack for that
//!   are not recorded (`JsQueues::unrecorded`), and the ledger keeps
//!   them as `holes`: no window event after the first hole is leased
//!   until each is recorded (JetStream delivers it again after its
//!   AckWait) or below the ack floor. The window holds at most
//!   `--queue-max-leases` events, and at most [`WINDOW_MAX`] (the ledger
//!   is one KV value).
//!
//! This module knows the store only by its interface types (the
//! architecture test checks it); the adapter to msgbus's queue interface
//! is `crate::queue::nats`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::watch;

use super::consumers::{self, compare_and_set, get_json, Consumers, CAS_TRIES};
use super::{lock, API_TIMEOUT};
use crate::store::{Consumer, ConsumerError, DeadLetter, Matcher, StoreError};

/// A queue's durable record in `<stream>_QUEUES`: its dead letters and
/// the redriven ones waiting or leased again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Ledger {
    #[serde(default)]
    dead: BTreeMap<u64, DeadLetter>,
    #[serde(default)]
    redo: BTreeMap<u64, Redo>,
    /// Seqs above the ack floor that were already acknowledged, dead or
    /// redriven when the queue was migrated from a file store
    /// ([`JsQueues::import`]): its JetStream consumer starts at the floor
    /// and would deliver them again, so a fetch acks them unseen, as it
    /// does events the filter does not match. Also every event an ordered
    /// queue's window took in, so JetStream delivering it again (its ack
    /// was lost) is acked unseen too. The seqs the consumer's ack floor
    /// has passed are pruned by the next fetch ([`JsQueues::claim`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    settled: BTreeSet<u64>,
    /// The seq in the advisory stream ([`advisory_stream`]) of the last
    /// MAX_DELIVERIES advisory applied to this ledger: later replays skip
    /// it and every one before it.
    #[serde(default, skip_serializing_if = "is_zero")]
    advised: u64,
    /// An ordered queue's events handed over by its JetStream consumer and
    /// not done yet (acknowledged or dead), leased from here in seq order
    /// per subject; each is in `settled` too until JetStream's ack floor
    /// passes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    window: BTreeMap<u64, Redo>,
    /// The fetch pulling for an ordered queue now, if any: no other pulls
    /// until it gives the mark back or the mark lapses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    puller: Option<Puller>,
    /// Seqs a fetch that lost its `puller` mark (its instance died, or its
    /// pull was cut short) may have pulled without recording: JetStream
    /// delivers them again after their AckWait. Until each is recorded
    /// (in `settled`) or below JetStream's ack floor, no window event
    /// after the first of them is leased: it could be an earlier event of
    /// its subject.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    holes: BTreeSet<u64>,
    /// When the holes are given up on (Unix ms): two leases and ten
    /// seconds after they were found, long after JetStream's redelivery.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    holes_until_ms: i64,
}

/// Who pulls for an ordered queue, until when. A mark given back after a
/// pull that may have left messages unrecorded is kept, lapsed (`until_ms`
/// 0), so the next fetch to take it looks for them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Puller {
    /// The fetch's own id.
    id: String,
    /// Unix ms after which another fetch may take the mark.
    until_ms: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The stream that keeps the MAX_DELIVERIES advisories of `stream`'s
/// consumers, so dead letters are recorded even when no instance was
/// listening as they happened.
pub fn advisory_stream(stream: &str) -> String {
    consumers::bucket_named(stream, "DEAD")
}

/// The advisories the stream of [`advisory_stream`] captures.
fn advisory_subjects(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*")
}

/// How long the advisory stream keeps an advisory: an instance started
/// within this time of a dead letter still records it.
pub const ADVISORY_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most bytes of advisories kept (about 180,000 of them), oldest dropped
/// first.
const ADVISORY_MAX_BYTES: i64 = 64 << 20;

/// What [`JsQueues::import`] did with a migrated queue's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Written: the queue had none.
    Written,
    /// The queue's ledger holds what would be written (an earlier run
    /// wrote it, and nothing changed it since).
    AlreadyThere,
    /// The queue has a ledger that differs (written by the NATS backend
    /// since an earlier run, or by another writer): kept as it is.
    Kept,
}

/// An event leased from the ledger (a redriven one, or one in an ordered
/// queue's window): its deliveries from there and its lease.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Redo {
    #[serde(default, skip_serializing_if = "is_zero32")]
    attempts: u32,
    /// Leased (or delayed by a nack) until then (Unix ms); free when in
    /// the past.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    until_ms: i64,
    /// The current lease id (empty: not leased).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    lease: String,
    /// In a window: the [`subject_key`] of its CloudEvents `subject`
    /// (none: it has none, and is not ordered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// What a window keeps of an event's `subject`: 16 hex digits of its
/// SHA-256, so a window entry stays a few dozen bytes however long the
/// subject. Two subjects sharing a key are ordered together (never
/// leased at once), which costs parallelism, never order.
fn subject_key(subject: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(subject.as_bytes())[..8])
}

/// Why a ledger entry became a dead letter after `attempts` deliveries.
fn dead_reason(map: Held, attempts: u32) -> String {
    match map {
        Held::Redo => format!("redriven, then delivered {attempts} times without an ack"),
        Held::Window => format!("delivered {attempts} times without an ack"),
    }
}

/// Which of a ledger's maps holds an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Redo,
    Window,
}

impl Held {
    fn map(self, l: &mut Ledger) -> &mut BTreeMap<u64, Redo> {
        match self {
            Held::Redo => &mut l.redo,
            Held::Window => &mut l.window,
        }
    }

    /// The first character of its lease ids.
    fn lease_prefix(self) -> char {
        match self {
            Held::Redo => 'r',
            Held::Window => 's',
        }
    }
}

/// What one look at the ledger leased and learned.
#[derive(Debug, Default)]
struct Leases {
    /// Leased: (seq, attempt, lease id, where from).
    leased: Vec<(u64, u32, String, Held)>,
    /// Made dead letters.
    died: Vec<u64>,
}

impl Ledger {
    /// Leases up to `room` free entries of `held` (in an ordered window,
    /// only the first entry of each subject, and only when free), and
    /// makes dead letters of free ones out of deliveries.
    fn lease_free(
        &mut self,
        held: Held,
        q: &crate::store::QueueSpec,
        ordered: bool,
        now: i64,
        room: usize,
        out: &mut Leases,
    ) {
        let mut blocked = std::collections::HashSet::new();
        let mut take = Vec::new();
        let mut dying = Vec::new();
        // Nothing after a hole: it may be an earlier event of a subject.
        let limit = match held {
            Held::Window => self.holes.first().copied().unwrap_or(u64::MAX),
            Held::Redo => u64::MAX,
        };
        for (&seq, r) in held.map(self).range(..=limit) {
            let key = r.key.as_deref().filter(|_| ordered);
            if key.is_some_and(|k| blocked.contains(k)) {
                continue;
            }
            let free = r.until_ms <= now;
            if free && r.attempts >= q.max_deliver {
                // Its subject's next event may go once it is dead.
                dying.push((seq, r.attempts));
                continue;
            }
            if let Some(k) = key {
                blocked.insert(k.to_string());
            }
            if free && out.leased.len() + take.len() < room {
                take.push(seq);
            }
        }
        for (seq, attempts) in dying {
            held.map(self).remove(&seq);
            self.dead.insert(
                seq,
                DeadLetter {
                    attempts,
                    at: now_rfc3339(),
                    reason: dead_reason(held, attempts),
                },
            );
            out.died.push(seq);
        }
        for seq in take {
            let Some(r) = held.map(self).get_mut(&seq) else {
                continue;
            };
            r.attempts += 1;
            r.until_ms = now + q.lease_ms as i64;
            r.lease = format!(
                "{}{}.{}",
                held.lease_prefix(),
                r.attempts,
                uuid::Uuid::new_v4().simple()
            );
            out.leased.push((seq, r.attempts, r.lease.clone(), held));
        }
    }

    /// When the next lease or nack delay of an entry ends (Unix ms).
    fn next_free(&self, now: i64) -> Option<i64> {
        self.redo
            .values()
            .chain(self.window.values())
            .filter(|r| r.until_ms > now)
            .map(|r| r.until_ms)
            .min()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How long cached consumer info serves `stats`.
const INFO_FRESH: Duration = Duration::from_secs(1);

/// Most leases and acknowledged seqs this instance remembers per queue.
const MAX_REMEMBERED: usize = 100_000;

/// Most dead letters waiting for their alert.
const MAX_NEW_DEAD: usize = 10_000;

/// Tries of one ledger change: an ordered queue's workers, through every
/// instance, change its one ledger entry on each fetch, ack, nack and
/// extend.
const LEDGER_TRIES: usize = 4 * CAS_TRIES;

/// Most events an ordered queue's window holds (each a few dozen bytes of
/// its ledger, which every fetch, ack, nack and extend reads and writes).
pub const WINDOW_MAX: usize = 1_000;

/// Events a pull for an ordered queue asks for beyond those its fetch
/// wants: when the next events share a subject, the ones after them are
/// what the fetch can lease, and what other fetches lease without
/// pulling.
const PULL_AHEAD: usize = 64;

/// How long one pull for an ordered queue waits for new events.
const PULL_SLICE: Duration = Duration::from_secs(1);

/// How long a `puller` mark lasts: a pull, the wait for its last message
/// and the ledger write after it. A fetch that dies holding it delays
/// the queue's other fetches by this at most.
const PULL_HOLD: Duration = Duration::from_secs(8);

/// How often a fetch of an ordered queue that another fetch pulls for
/// looks at the window again (sooner when a fetch of this instance
/// changed it).
const WINDOW_POLL: Duration = Duration::from_millis(100);

/// Why a queue request was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// The event is not leased (nack, extend): acknowledged, or never
    /// delivered.
    #[error("seq {0} is not leased")]
    NotLeased(u64),
    /// The lease named is not the event's current one.
    #[error("lease {lease:?} of seq {seq} is no longer valid")]
    LeaseLost {
        /// The seq.
        seq: u64,
        /// The lease named.
        lease: String,
    },
    /// The event was never delivered to this queue (ack).
    #[error("seq {0} is not waiting for an ack")]
    NotPending(u64),
    /// A seq listed twice.
    #[error("seq {0} is listed twice")]
    Duplicate(u64),
    /// `--queue-max-leases` events are leased.
    #[error("too many leases")]
    TooManyLeases(usize),
    /// The consumer's own errors (already acknowledged, dead, past the
    /// head, unavailable, unsupported).
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

impl From<StoreError> for LeaseError {
    fn from(e: StoreError) -> Self {
        LeaseError::Consumer(e.into())
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LeaseError {
    StoreError::Unavailable(format!("queue: {what}: {e}")).into()
}

/// What [`JsQueues::claim`] leased and saw.
#[derive(Debug, Default)]
struct Claim {
    /// Leased now, with their events.
    got: Vec<Leased>,
    /// When the next lease or nack delay of a ledger entry ends (Unix ms).
    next: Option<i64>,
    /// The ledger's settled seqs: a pull acks them unseen.
    settled: BTreeSet<u64>,
    /// The `puller` mark taken: the fetch may pull up to this many events.
    pull: Option<usize>,
    /// The window holds all it may.
    full: bool,
    /// The `puller` mark taken had lapsed: the fetch that held it may have
    /// left messages pulled and not recorded.
    takeover: bool,
}

/// Events a pull brought into an ordered queue's window: (seq,
/// [`subject_key`], the event), and the fetch that pulled them.
struct Enter<'a> {
    puller: &'a str,
    events: Vec<(u64, Option<String>, Bytes)>,
    /// The pull ended as JetStream meant it to (a status, or the whole
    /// batch): nothing more of it can be on the way. Otherwise the mark is
    /// given back lapsed.
    clean: bool,
    /// Seqs the fetch that held a lapsed mark may have left unrecorded.
    holes: Vec<u64>,
}

/// One pull request's messages.
#[derive(Debug, Default)]
struct Pulled {
    messages: Vec<async_nats::Message>,
    /// The JetStream consumer does not exist.
    missing: bool,
    /// It ended with a status or the whole batch, not by a timeout or a
    /// shutdown: no message of it can still be on the way.
    complete: bool,
}

/// One event leased to a worker.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its seq.
    pub seq: u64,
    /// The delivery count (from 1).
    pub attempt: u32,
    /// The lease id: `<delivered>.<consumer seq>`.
    pub lease: String,
    /// Milliseconds until the lease runs out.
    pub lease_ms: u64,
    /// The stored event.
    pub event: Bytes,
}

/// A queue's numbers from the JetStream consumer's info.
#[derive(Debug, Clone, Default)]
pub struct Numbers {
    /// Matching messages not yet delivered.
    pub pending: u64,
    /// Delivered and not acknowledged (leased, or waiting for redelivery).
    pub leased: u64,
    /// Messages being redelivered now.
    pub redelivered: u64,
    /// Every message at or below it is acknowledged (or dead).
    pub ack_floor: u64,
    /// Acknowledged through this instance since it started.
    pub acknowledged: u64,
    /// Dead letters recorded.
    pub dead: u64,
}

/// The parts of `$JS.API.CONSUMER.INFO` msgbus reads.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct Info {
    #[serde(default)]
    delivered: Seqs,
    #[serde(default)]
    ack_floor: Seqs,
    #[serde(default)]
    num_ack_pending: u64,
    #[serde(default)]
    num_redelivered: u64,
    #[serde(default)]
    num_pending: u64,
}

#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
struct Seqs {
    #[serde(default)]
    consumer_seq: u64,
    #[serde(default)]
    stream_seq: u64,
}

/// What this instance remembers of one queue.
#[derive(Debug, Default)]
struct Local {
    /// Seq to (delivered count, consumer seq) of the latest delivery this
    /// instance handed out.
    leases: HashMap<u64, (u64, u64)>,
    /// Seqs acknowledged through this instance above the ack floor.
    acked: BTreeSet<u64>,
    /// Acks through this instance.
    acked_total: u64,
    /// The last consumer info and when it came.
    info: Option<(Instant, Info)>,
    refreshing: bool,
    /// Dead letters recorded, as last read or written.
    dead: u64,
    /// The consumer the info is of (its creation time: a consumer deleted
    /// and created again starts afresh).
    created_at: String,
    /// The ledger's `advised` mark as last read or written: advisories at
    /// or below it are skipped without reading the ledger.
    advised: u64,
    /// An ordered queue's window as last read or written: events leased,
    /// events waiting, and its lowest seq.
    window: (u64, u64, Option<u64>),
}

/// The work queues of one stream, as one msgbus instance serves them.
#[derive(Debug)]
pub struct JsQueues {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    prefix: String,
    ledger: kv::Store,
    /// The stream, for redriven events (direct get by seq).
    events: jetstream::stream::Stream,
    consumers: Arc<Consumers>,
    max_leases: usize,
    /// The stream's newest seq.
    head: watch::Receiver<u64>,
    local: Mutex<HashMap<String, Local>>,
    /// Dead letters this instance recorded, for the alert: (consumer,
    /// seq).
    new_dead: Mutex<Vec<(String, u64)>>,
    /// Woken when this instance changed an ordered queue's window, for its
    /// fetches waiting on another's pull.
    window_changed: tokio::sync::Notify,
}

/// The JetStream consumer name of queue consumer `name`: msgbus names hold
/// `A-Z a-z 0-9 - _ .`, JetStream's no `.`; `_` is doubled and `.` becomes
/// `_d`, so the name stays readable and distinct; a name that would grow
/// too long is hashed.
pub fn js_name(name: &str) -> String {
    let mut out = String::from("msgbus_q_");
    for ch in name.chars() {
        match ch {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    if out.len() > 200 {
        use sha2::Digest;
        let h = sha2::Sha256::digest(name.as_bytes());
        return format!("msgbus_q_h{}", hex::encode(&h[..16]));
    }
    out
}

/// Whether the queue whose filter is `matcher` takes the stored event whose
/// attributes are `h`.
fn takes(matcher: &Matcher, h: &super::Head<'_>) -> bool {
    matcher.matches_event(&h.ty, &h.source, h.subject.as_deref())
}

/// `(delivered, stream seq, consumer seq)` of an ack subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>`,
/// or the 11+ token form with domain and account).
fn ack_info(subject: &str) -> Option<(u64, u64, u64)> {
    let t: Vec<&str> = subject.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let off = if t.len() >= 11 { 4 } else { 2 };
    Some((
        t[off + 2].parse().ok()?,
        t[off + 3].parse().ok()?,
        t[off + 4].parse().ok()?,
    ))
}

/// `(delivered, consumer seq)` of a lease id.
fn parse_lease(lease: &str) -> Option<(u64, u64)> {
    let (dc, cseq) = lease.split_once('.')?;
    Some((dc.parse().ok()?, cseq.parse().ok()?))
}

#[derive(serde::Deserialize)]
struct Advisory {
    #[serde(default)]
    stream: String,
    #[serde(default)]
    consumer: String,
    #[serde(default)]
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
    /// When the server published it (RFC 3339).
    #[serde(default)]
    timestamp: String,
}

/// Whether an advisory published at `at` is of the consumer created at
/// `created_at`, not of an earlier one of the same name (deleted since):
/// a replay must not give the new consumer the old one's dead letters.
fn advised_after_creation(at: &str, created_at: &str) -> bool {
    match (
        chrono::DateTime::parse_from_rfc3339(at),
        chrono::DateTime::parse_from_rfc3339(created_at),
    ) {
        (Ok(at), Ok(created)) => at >= created,
        _ => true,
    }
}

impl JsQueues {
    /// Opens the queues' KV bucket of `stream`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: &str,
        replicas: usize,
        events: jetstream::stream::Stream,
        consumers: Arc<Consumers>,
        max_leases: usize,
        head: watch::Receiver<u64>,
    ) -> Result<Arc<JsQueues>, super::StartError> {
        let ledger = consumers::open_bucket(&js, stream, "QUEUES", "queues", replicas).await?;
        js.get_or_create_stream(jetstream::stream::Config {
            name: advisory_stream(stream),
            description: Some(format!(
                "msgbus: the MAX_DELIVERIES advisories of {stream}'s queue consumers"
            )),
            subjects: vec![advisory_subjects(stream)],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            max_age: ADVISORY_KEEP,
            max_bytes: ADVISORY_MAX_BYTES,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| super::StartError::Stream {
            stream: stream.to_string(),
            detail: format!(
                "cannot create the dead letters' advisory stream {}: {e}",
                advisory_stream(stream)
            ),
        })?;
        Ok(Arc::new(JsQueues {
            client,
            js,
            stream: stream.to_string(),
            prefix: stream.to_string(),
            ledger,
            events,
            consumers,
            max_leases: max_leases.max(1),
            head,
            local: Mutex::default(),
            new_dead: Mutex::default(),
            window_changed: tokio::sync::Notify::new(),
        }))
    }

    fn ack_subject(&self, c: &Consumer, dc: u64, seq: u64, cseq: u64) -> String {
        format!(
            "$JS.ACK.{}.{}.{dc}.{seq}.{cseq}.0.0",
            self.stream,
            js_name(&c.name)
        )
    }

    /// The JetStream consumer's configuration for `c`, delivering from
    /// `start`.
    fn config(&self, c: &Consumer, start: u64) -> serde_json::Value {
        let q = c.queue.unwrap_or(crate::store::QueueSpec {
            lease_ms: 30_000,
            max_deliver: 5,
            ordered_by_subject: false,
        });
        let name = js_name(&c.name);
        serde_json::json!({
            "stream_name": self.stream,
            "config": {
                "durable_name": name,
                "description": format!("msgbus queue consumer {}", c.name),
                "deliver_policy": "by_start_sequence",
                "opt_start_seq": start.max(1),
                "ack_policy": "explicit",
                "ack_wait": (q.lease_ms.max(1) as u128 * 1_000_000) as u64,
                "max_deliver": q.max_deliver.max(1),
                "max_ack_pending": self.max_leases,
                "replay_policy": "instant",
                "filter_subject": super::subject::filter(
                    &self.prefix,
                    c.filter.ty.as_deref(),
                    c.filter.type_prefix.as_deref(),
                ),
            }
        })
    }

    async fn api(
        &self,
        subject: String,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, LeaseError> {
        let v: serde_json::Value = self
            .js
            .request(subject, body)
            .await
            .map_err(|e| unavailable("JetStream API", e))?;
        Ok(v)
    }

    /// Creates or updates the JetStream consumer of `c`; `restart`: start
    /// over at the msgbus consumer's cursor (a new consumer, or a new
    /// `start`), dropping the old one's state.
    pub async fn ensure(&self, c: &Consumer, restart: bool) -> Result<(), ConsumerError> {
        let name = js_name(&c.name);
        if restart {
            self.remove_js(&name).await?;
            lock(&self.local).remove(&c.name);
            // A window and the seqs settled belong to where the queue was.
            self.change_ledger(&c.name, |l| {
                let any = !l.window.is_empty() || !l.settled.is_empty() || l.puller.is_some();
                l.window.clear();
                l.settled.clear();
                l.puller = None;
                Ok(any.then_some(()))
            })
            .await
            .map_err(|e| match e {
                LeaseError::Consumer(c) => c,
                other => ConsumerError::Store(StoreError::Unavailable(other.to_string())),
            })?;
        }
        let created = self
            .api(
                format!("CONSUMER.DURABLE.CREATE.{}.{name}", self.stream),
                &self.config(c, c.cursor + 1),
            )
            .await
            .map_err(|e| match e {
                LeaseError::Consumer(c) => c,
                other => ConsumerError::Store(StoreError::Unavailable(other.to_string())),
            })?;
        let Some(err) = created.get("error") else {
            return Ok(());
        };
        if restart {
            return Err(ConsumerError::Store(StoreError::Unavailable(format!(
                "cannot create JetStream consumer {name}: {}",
                err["description"]
            ))));
        }
        // A change JetStream cannot make in place (the filter, on older
        // servers): start the consumer again from its ack floor.
        let floor = match self.raw_info(c).await {
            Ok(Some(i)) => i.ack_floor.stream_seq,
            _ => c.cursor,
        };
        tracing::warn!(consumer = %c.name, error = %err["description"], floor,
            "JetStream cannot change the queue's consumer in place; it starts again after its ack floor (acks above it are forgotten)");
        self.remove_js(&name).await?;
        lock(&self.local).remove(&c.name);
        let created = self
            .api(
                format!("CONSUMER.DURABLE.CREATE.{}.{name}", self.stream),
                &self.config(c, floor + 1),
            )
            .await
            .map_err(|e| ConsumerError::Store(StoreError::Unavailable(e.to_string())))?;
        match created.get("error") {
            None => Ok(()),
            Some(err) => Err(ConsumerError::Store(StoreError::Unavailable(format!(
                "cannot create JetStream consumer {name}: {}",
                err["description"]
            )))),
        }
    }

    async fn remove_js(&self, name: &str) -> Result<(), ConsumerError> {
        let v = self
            .api(
                format!("CONSUMER.DELETE.{}.{name}", self.stream),
                &serde_json::json!({}),
            )
            .await
            .map_err(|e| ConsumerError::Store(StoreError::Unavailable(e.to_string())))?;
        match v.get("error") {
            Some(err) if err["code"].as_u64() != Some(404) => {
                Err(ConsumerError::Store(StoreError::Unavailable(format!(
                    "cannot delete JetStream consumer {name}: {}",
                    err["description"]
                ))))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the JetStream consumer and the dead letters of `c`.
    pub async fn remove(&self, c: &Consumer) -> Result<(), ConsumerError> {
        self.remove_js(&js_name(&c.name)).await?;
        lock(&self.local).remove(&c.name);
        let _ = self.ledger.purge(consumers::key(&c.name)).await;
        Ok(())
    }

    /// The consumer's info (`None`: no such JetStream consumer).
    async fn raw_info(&self, c: &Consumer) -> Result<Option<Info>, LeaseError> {
        let name = js_name(&c.name);
        let v = self
            .api(
                format!("CONSUMER.INFO.{}.{name}", self.stream),
                &serde_json::json!({}),
            )
            .await?;
        if let Some(err) = v.get("error") {
            if err["code"].as_u64() == Some(404) {
                return Ok(None);
            }
            return Err(unavailable("consumer info", &err["description"]));
        }
        Ok(Some(serde_json::from_value(v).unwrap_or_default()))
    }

    /// The consumer's info now (and cached).
    async fn info(&self, c: &Consumer) -> Result<Info, LeaseError> {
        let Some(info) = self.raw_info(c).await? else {
            // Created with the msgbus consumer; gone (deleted by hand, or
            // its creation failed): make it again.
            self.ensure(c, false).await?;
            return Ok(Info::default());
        };
        let mut local = lock(&self.local);
        let l = local.entry(c.name.clone()).or_default();
        if l.created_at != c.created_at {
            if !l.created_at.is_empty() {
                // Deleted and created again: nothing of the old one holds.
                *l = Local::default();
            }
            l.created_at = c.created_at.clone();
        }
        l.info = Some((Instant::now(), info.clone()));
        let floor = info.ack_floor.stream_seq;
        l.acked = l.acked.split_off(&(floor + 1));
        Ok(info)
    }

    /// The cached info of `c` if fresh enough, else asked for.
    async fn info_within(&self, c: &Consumer, fresh: Duration) -> Result<Info, LeaseError> {
        if let Some(i) = self.cached(c, fresh) {
            return Ok(i);
        }
        self.info(c).await
    }

    fn cached(&self, c: &Consumer, fresh: Duration) -> Option<Info> {
        let local = lock(&self.local);
        let l = local.get(&c.name)?;
        if l.created_at != c.created_at {
            return None;
        }
        l.info
            .as_ref()
            .filter(|(at, _)| at.elapsed() < fresh)
            .map(|(_, i)| i.clone())
    }

    /// Leases up to `max` events of `c`, waiting up to `wait` for one:
    /// redriven events first, then JetStream's (or, for an ordered queue,
    /// its window's).
    pub async fn fetch(
        &self,
        c: &Consumer,
        max: usize,
        wait: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<Leased>, LeaseError> {
        if c.queue.is_some_and(|q| q.ordered_by_subject) {
            return self.fetch_ordered(c, max, wait, shutdown).await;
        }
        let lease_ms = c.queue.map_or(0, |q| q.lease_ms);
        let matcher = Matcher::new(c.filter.clone());
        let deadline = tokio::time::Instant::now() + wait;
        let first = self.claim(c, max, None, None).await?;
        let (mut got, mut next_redo, settled) = (first.got, first.next, first.settled);
        if got.len() >= max {
            return Ok(got);
        }
        let mut recreated = false;
        // Whether the last pull waited: after one that brought something,
        // one more without waiting takes the rest there is.
        let mut waited = false;
        loop {
            let now = tokio::time::Instant::now();
            let mut remaining = deadline.saturating_duration_since(now);
            if let Some(ms) = next_redo {
                // Back in time for a redriven event whose lease ends.
                let wait_ms = (ms - now_ms()).max(0) as u64 + 20;
                remaining = remaining.min(Duration::from_millis(wait_ms));
            }
            // A long-poll waits for one event only: a pull for `max` would
            // hold the fetch until `max` came.
            let waits = got.is_empty() && !waited && remaining >= Duration::from_millis(100);
            let (batch, expires) = if waits {
                (1, Some(remaining))
            } else {
                (max - got.len(), None)
            };
            let pulled = self.pull(c, batch, expires, &mut shutdown).await?;
            for m in pulled.messages {
                let Some((dc, seq, cseq)) = m.reply.as_deref().and_then(ack_info) else {
                    continue;
                };
                let matches = super::head_of(&m.payload).is_some_and(|h| takes(&matcher, &h));
                if !matches || settled.contains(&seq) {
                    // Not for this queue (its source, subject or scope, or
                    // not an event), or settled before a migration: done
                    // for it.
                    self.ack_unseen(&m).await;
                    continue;
                }
                {
                    let mut local = lock(&self.local);
                    let l = local.entry(c.name.clone()).or_default();
                    if l.leases.len() >= MAX_REMEMBERED {
                        l.leases.clear();
                    }
                    l.leases.insert(seq, (dc, cseq));
                    l.acked.remove(&seq);
                }
                got.push(Leased {
                    seq,
                    attempt: u32::try_from(dc).unwrap_or(u32::MAX),
                    lease: format!("{dc}.{cseq}"),
                    lease_ms,
                    event: m.payload,
                });
            }
            if pulled.missing && !recreated {
                recreated = true;
                self.ensure(c, false).await?;
                continue;
            }
            if got.len() < max && next_redo.is_some_and(|ms| ms <= now_ms()) {
                let more = self.claim(c, max - got.len(), None, None).await?;
                got.extend(more.got);
                next_redo = more.next;
            }
            let out_of_time = tokio::time::Instant::now() + Duration::from_millis(100) >= deadline;
            if got.len() >= max || out_of_time || *shutdown.borrow() {
                break;
            }
            if !got.is_empty() && (!waits || waited) {
                break;
            }
            waited = waits && !got.is_empty();
        }
        if got.is_empty() {
            if let Ok(info) = self.info_within(c, Duration::ZERO).await {
                if info.num_ack_pending >= self.max_leases as u64 {
                    return Err(LeaseError::TooManyLeases(self.max_leases));
                }
            }
        }
        got.sort_by_key(|l| l.seq);
        Ok(got)
    }

    /// Acks a pulled message no worker sees, without waiting for the
    /// server's answer.
    async fn ack_unseen(&self, m: &async_nats::Message) {
        if let Some(reply) = &m.reply {
            let _ = self
                .client
                .publish(reply.clone(), Bytes::from_static(b"+ACK"))
                .await;
        }
    }

    /// One pull request to `c`'s JetStream consumer: up to `batch`
    /// messages, waiting up to `expires` for them (`None`: those there
    /// now only).
    async fn pull(
        &self,
        c: &Consumer,
        batch: usize,
        expires: Option<Duration>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Pulled, LeaseError> {
        use futures_util::StreamExt;
        let mut out = Pulled::default();
        if batch == 0 {
            return Ok(out);
        }
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        let req = match expires {
            None => serde_json::json!({"batch": batch, "no_wait": true}),
            Some(d) => serde_json::json!({"batch": batch, "expires": d.as_nanos() as u64}),
        };
        self.client
            .publish_with_reply(
                format!(
                    "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                    self.stream,
                    js_name(&c.name)
                ),
                inbox,
                Bytes::from(serde_json::to_vec(&req).unwrap_or_default()),
            )
            .await
            .map_err(|e| unavailable("pull request", e))?;
        let until = tokio::time::Instant::now()
            + expires.map_or(API_TIMEOUT, |d| d + Duration::from_secs(1));
        while out.messages.len() < batch {
            let m = tokio::select! {
                m = sub.next() => m,
                () = tokio::time::sleep_until(until) => None,
                _ = shutdown.changed() => None,
            };
            let Some(m) = m else { break };
            if let Some(status) = m.status {
                // 404 no messages, 408 request expired, 409 limits;
                // 503 no responders: the consumer does not exist.
                out.missing = status == async_nats::StatusCode::NO_RESPONDERS;
                out.complete = true;
                break;
            }
            out.messages.push(m);
        }
        out.complete |= out.messages.len() >= batch;
        Ok(out)
    }

    /// [`Self::fetch`] of an ordered queue: leases from its window, pulling
    /// events into it while holding the ledger's `puller` mark.
    async fn fetch_ordered(
        &self,
        c: &Consumer,
        max: usize,
        wait: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<Leased>, LeaseError> {
        let matcher = Matcher::new(c.filter.clone());
        let deadline = tokio::time::Instant::now() + wait;
        // The ack floor prunes `settled`, which grows with every event
        // pulled: keep it fresh.
        if self.cached(c, INFO_FRESH).is_none() {
            self.info(c).await?;
        }
        let me = uuid::Uuid::new_v4().simple().to_string();
        let mut got = Vec::new();
        let mut recreated = false;
        loop {
            let changed = self.window_changed.notified();
            let claim = self.claim(c, max - got.len(), Some(&me), None).await?;
            let mut full = claim.full;
            got.extend(claim.got);
            let mut next = claim.next;
            if let (Some(room), true) = (claim.pull, got.len() < max) {
                let holes = if claim.takeover {
                    match self.unrecorded(c, &claim.settled).await {
                        Ok(h) => h,
                        Err(e) => {
                            // Still to be looked for by the next fetch.
                            self.give_back_pull(c, &me, false).await;
                            return Err(e);
                        }
                    }
                } else {
                    Vec::new()
                };
                let want = max - got.len();
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let waits = got.is_empty() && remaining >= Duration::from_millis(100);
                let (batch, expires) = if waits {
                    (1, Some(remaining.min(PULL_SLICE)))
                } else {
                    (room.min(want + PULL_AHEAD), None)
                };
                let pulled = match self.pull(c, batch, expires, &mut shutdown).await {
                    Ok(p) => p,
                    Err(e) => {
                        // Nothing pulled; holes found are still to be
                        // recorded, by the next fetch.
                        self.give_back_pull(c, &me, !claim.takeover).await;
                        return Err(e);
                    }
                };
                let mut entered = Vec::new();
                let mut acks = Vec::new();
                for m in pulled.messages {
                    let Some((_, seq, _)) = m.reply.as_deref().and_then(ack_info) else {
                        continue;
                    };
                    let head = super::head_of(&m.payload);
                    let matches = head.as_ref().is_some_and(|h| takes(&matcher, h));
                    if !matches || claim.settled.contains(&seq) {
                        // Not for this queue, or in the window already (or
                        // settled before a migration).
                        self.ack_unseen(&m).await;
                        continue;
                    }
                    let key = head.and_then(|h| h.subject.map(|s| subject_key(&s)));
                    acks.push(m.reply.clone());
                    entered.push((seq, key, m.payload));
                }
                let brought = entered.len();
                let enter = Enter {
                    puller: &me,
                    events: entered,
                    clean: pulled.complete,
                    holes,
                };
                let into = self.claim(c, max - got.len(), None, Some(enter)).await;
                let into = match into {
                    Ok(into) => into,
                    Err(e) => {
                        // Not in the window: JetStream delivers them again
                        // after their AckWait. The mark is left to lapse,
                        // so the next fetch to take it waits for them.
                        if brought == 0 {
                            self.give_back_pull(c, &me, !claim.takeover).await;
                        }
                        return Err(e);
                    }
                };
                // In the window (and in `settled`) now: JetStream is done
                // with them.
                let confirms = acks
                    .into_iter()
                    .flatten()
                    .map(|reply| self.confirm(reply.to_string(), "+ACK"));
                let _ = futures_util::future::join_all(confirms).await;
                self.window_changed.notify_waiters();
                full = into.full;
                next = into.next;
                got.extend(into.got);
                if pulled.missing && !recreated {
                    recreated = true;
                    self.ensure(c, false).await?;
                    continue;
                }
                // Pull again at once while pulls bring events and the
                // fetch wants more: once after a long-poll's first event
                // (for the rest there is), and while those brought all
                // wait behind their subjects.
                if got.len() < max && brought > 0 && !full && (waits || got.is_empty()) {
                    continue;
                }
            }
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now + Duration::from_millis(100) >= deadline || *shutdown.borrow()
            {
                if got.is_empty() && full {
                    return Err(LeaseError::TooManyLeases(self.window_cap()));
                }
                break;
            }
            // Another fetch pulls, or every event there waits: look again
            // when this instance changes the window, a lease or delay ends,
            // or after a while (another instance may change it).
            let mut nap = WINDOW_POLL.min(deadline - now);
            if let Some(ms) = next {
                nap = nap.min(Duration::from_millis((ms - now_ms()).max(0) as u64 + 5));
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(nap) => {}
                _ = shutdown.changed() => {}
            }
        }
        got.sort_by_key(|l| l.seq);
        Ok(got)
    }

    /// The seqs JetStream delivered to `c`'s consumer and has not had
    /// acknowledged, which are not recorded in the window either (not in
    /// `settled`): what a fetch that lost its `puller` mark may have
    /// pulled and not recorded. Asked for by the fetch that took the
    /// lapsed mark, before it pulls.
    async fn unrecorded(
        &self,
        c: &Consumer,
        settled: &BTreeSet<u64>,
    ) -> Result<Vec<u64>, LeaseError> {
        /// Most seqs looked at: the unacknowledged ones are at most
        /// `--queue-max-leases`, the rest are in the window.
        const MOST: u64 = 1_000_000;
        let info = self.info(c).await?;
        if info.num_ack_pending == 0 {
            return Ok(Vec::new());
        }
        let from = info.ack_floor.stream_seq + 1;
        let to = info.delivered.stream_seq.min(from.saturating_add(MOST));
        Ok((from..=to).filter(|s| !settled.contains(s)).collect())
    }

    /// Gives the `puller` mark back after a failed pull (best effort: it
    /// lapses anyway); not `clean`: lapsed, so the next fetch to take it
    /// looks for events a pull left unrecorded.
    async fn give_back_pull(&self, c: &Consumer, me: &str, clean: bool) {
        let _ = self
            .change_ledger(&c.name, |l| {
                if l.puller.as_ref().is_some_and(|p| p.id == me) {
                    l.puller = (!clean).then(|| Puller {
                        id: me.to_string(),
                        until_ms: 0,
                    });
                    return Ok(Some(()));
                }
                Ok(None)
            })
            .await;
    }

    /// The stored event `seq` (`None`: gone, by retention).
    async fn read_event(&self, seq: u64) -> Option<Bytes> {
        match self.events.direct_get(seq).await {
            Ok(m) => Some(m.payload),
            Err(_) => self
                .events
                .get_raw_message(seq)
                .await
                .ok()
                .map(|m| m.payload),
        }
    }

    /// Drops `seq`, gone from the stream, from the ledger's leased
    /// entries: nothing to deliver.
    async fn forget(&self, c: &Consumer, seq: u64) {
        let _ = self
            .change_ledger(&c.name, |l| {
                let a = l.redo.remove(&seq).is_some();
                let b = l.window.remove(&seq).is_some();
                Ok((a || b).then_some(()))
            })
            .await;
    }

    /// The most events `c`'s window holds.
    fn window_cap(&self) -> usize {
        self.max_leases.min(WINDOW_MAX)
    }

    /// The dead letters of `c` and the ledger's revision.
    async fn ledger_of(&self, name: &str) -> Result<(Ledger, Option<u64>), LeaseError> {
        match get_json::<Ledger>(&self.ledger, consumers::key(name)).await {
            Ok(Some((l, rev))) => Ok((l, Some(rev))),
            Ok(None) => Ok((Ledger::default(), None)),
            Err((what, e)) => Err(unavailable(what, e)),
        }
    }

    /// Applies `change` to the ledger of `name` by compare-and-set
    /// (retried when another instance wrote first); `change` answers what
    /// to return, and `None` to write nothing.
    async fn change_ledger<T>(
        &self,
        name: &str,
        mut change: impl FnMut(&mut Ledger) -> Result<Option<T>, LeaseError>,
    ) -> Result<Option<T>, LeaseError> {
        for attempt in 0..LEDGER_TRIES {
            let (mut ledger, rev) = self.ledger_of(name).await?;
            let Some(out) = change(&mut ledger)? else {
                self.note_window(name, &ledger);
                return Ok(None);
            };
            let value = Bytes::from(serde_json::to_vec(&ledger).unwrap_or_default());
            match compare_and_set(&self.ledger, consumers::key(name), value, rev).await {
                Ok(Some(_)) => {
                    self.note_window(name, &ledger);
                    let mut local = lock(&self.local);
                    let l = local.entry(name.to_string()).or_default();
                    l.dead = ledger.dead.len() as u64;
                    l.advised = l.advised.max(ledger.advised);
                    return Ok(Some(out));
                }
                Ok(None) => {
                    // Another writer came first: try again after a random
                    // pause that grows with the tries, so writers that
                    // collided do not collide again in step.
                    let ceiling = 1u64 << attempt.min(6);
                    let jitter = uuid::Uuid::new_v4().as_u128() as u64 % (ceiling * 1000);
                    tokio::time::sleep(Duration::from_micros(jitter)).await;
                }
                Err(e) => return Err(unavailable("write the queue's ledger", e)),
            }
        }
        Err(unavailable(
            "write the queue's ledger",
            "other instances kept changing it; retry",
        ))
    }

    /// Moves dead letters of `c` (`seqs`, or all) to the redriven ones,
    /// from attempt 1; answers the seqs.
    pub async fn redrive(
        &self,
        c: &Consumer,
        seqs: Option<Vec<u64>>,
    ) -> Result<Vec<u64>, LeaseError> {
        let done = self
            .change_ledger(&c.name, |l| {
                let seqs: Vec<u64> = match &seqs {
                    Some(s) => s.clone(),
                    None => l.dead.keys().copied().collect(),
                };
                if seqs.is_empty() {
                    return Ok(None);
                }
                for s in &seqs {
                    if !l.dead.contains_key(s) {
                        return Err(ConsumerError::NotDead(*s).into());
                    }
                }
                for s in &seqs {
                    l.dead.remove(s);
                    l.redo.insert(*s, Redo::default());
                }
                Ok(Some(seqs))
            })
            .await?;
        Ok(done.unwrap_or_default())
    }

    /// One look at `c`'s ledger, by compare-and-set: records the events
    /// a pull brings into the window (`enter`, giving the `puller` mark
    /// back), makes dead letters of entries out of deliveries, and leases
    /// up to `max` free entries (redriven ones first, then the window's
    /// by subject order); with `pull`, takes the `puller` mark for that
    /// fetch when it wants more and the window has room.
    async fn claim(
        &self,
        c: &Consumer,
        max: usize,
        pull: Option<&str>,
        enter: Option<Enter<'_>>,
    ) -> Result<Claim, LeaseError> {
        let q = c.queue.unwrap_or(crate::store::QueueSpec {
            lease_ms: 30_000,
            max_deliver: 5,
            ordered_by_subject: false,
        });
        let cap = self.window_cap();
        let mut out = Claim::default();
        let mut leases = Leases::default();
        // Settled seqs the ack floor has passed are done for JetStream too:
        // pruned here, in the write a claim makes anyway (or one of its own).
        let floor = self
            .cached(c, Duration::MAX)
            .map_or(0, |i| i.ack_floor.stream_seq);
        let written = self
            .change_ledger(&c.name, |l| {
                leases = Leases::default();
                let now = now_ms();
                let mut changed = false;
                if l.settled.first().is_some_and(|s| *s <= floor) {
                    l.settled = l.settled.split_off(&(floor + 1));
                    changed = true;
                }
                if let Some(enter) = &enter {
                    if l.puller.as_ref().is_some_and(|p| p.id == enter.puller) {
                        l.puller = if enter.clean {
                            None
                        } else {
                            Some(Puller {
                                id: enter.puller.to_string(),
                                until_ms: 0,
                            })
                        };
                    }
                    for h in &enter.holes {
                        if *h > floor && !l.settled.contains(h) {
                            l.holes.insert(*h);
                            l.holes_until_ms = now + 2 * q.lease_ms as i64 + 10_000;
                        }
                    }
                    for (seq, key, _) in &enter.events {
                        if l.settled.contains(seq)
                            || l.window.contains_key(seq)
                            || l.redo.contains_key(seq)
                            || l.dead.contains_key(seq)
                        {
                            continue;
                        }
                        l.window.insert(
                            *seq,
                            Redo {
                                key: key.clone(),
                                ..Redo::default()
                            },
                        );
                        l.settled.insert(*seq);
                    }
                    changed = true;
                }
                if !l.holes.is_empty() {
                    let before = l.holes.len();
                    let settled = &l.settled;
                    l.holes.retain(|h| *h > floor && !settled.contains(h));
                    if l.holes_until_ms <= now && !l.holes.is_empty() {
                        tracing::warn!(consumer = %c.name, holes = l.holes.len(),
                            "events a lost pull left were not delivered again in time; the ordered queue goes on without them");
                        l.holes.clear();
                    }
                    changed |= l.holes.len() != before;
                }
                l.lease_free(Held::Redo, &q, false, now, max, &mut leases);
                l.lease_free(
                    Held::Window,
                    &q,
                    q.ordered_by_subject,
                    now,
                    max,
                    &mut leases,
                );
                let room = cap.saturating_sub(l.window.len());
                out.pull = None;
                out.takeover = false;
                if let Some(me) = pull {
                    let free = l
                        .puller
                        .as_ref()
                        .is_none_or(|p| p.until_ms <= now || p.id == me);
                    if free && room > 0 && leases.leased.len() < max {
                        out.takeover = l.puller.as_ref().is_some_and(|p| p.until_ms <= now);
                        l.puller = Some(Puller {
                            id: me.to_string(),
                            until_ms: now + PULL_HOLD.as_millis() as i64,
                        });
                        out.pull = Some(room);
                        changed = true;
                    }
                }
                out.full = room == 0;
                out.next = l.next_free(now);
                out.settled.clone_from(&l.settled);
                changed |= !leases.leased.is_empty() || !leases.died.is_empty();
                Ok(changed.then_some(()))
            })
            .await?;
        if written.is_none() {
            leases = Leases::default();
        }
        if !leases.died.is_empty() {
            let mut d = lock(&self.new_dead);
            for s in &leases.died {
                if d.len() < MAX_NEW_DEAD {
                    d.push((c.name.clone(), *s));
                }
            }
        }
        let matcher = Matcher::new(c.filter.clone());
        for (seq, attempt, lease, held) in leases.leased {
            let pulled = enter.as_ref().and_then(|e| {
                e.events
                    .iter()
                    .find(|(s, _, _)| *s == seq)
                    .map(|(_, _, p)| p.clone())
            });
            let event = match pulled {
                Some(p) => Some(p),
                None => self.read_event(seq).await,
            };
            // The queue's filter changed since the event entered its
            // window: not for it any more.
            let excluded = held == Held::Window
                && event
                    .as_ref()
                    .is_some_and(|e| !super::head_of(e).is_some_and(|h| takes(&matcher, &h)));
            match event.filter(|_| !excluded) {
                Some(event) => out.got.push(Leased {
                    seq,
                    attempt,
                    lease,
                    lease_ms: q.lease_ms,
                    event,
                }),
                // Gone (retention), or excluded: nothing to deliver.
                None => self.forget(c, seq).await,
            }
        }
        Ok(out)
    }

    /// A nack (`delay`) or extend (`None`) of an event leased from the
    /// ledger (redriven, or in an ordered queue's window): answers `None`
    /// when `seq` is neither.
    async fn ledger_lease(
        &self,
        c: &Consumer,
        seq: u64,
        lease: Option<&str>,
        delay: Option<Duration>,
    ) -> Result<Option<()>, LeaseError> {
        let q = c.queue.map_or((30_000, 5), |q| (q.lease_ms, q.max_deliver));
        let mut died = false;
        let out = self
            .change_ledger(&c.name, |l| {
                died = false;
                let now = now_ms();
                let held = if l.redo.contains_key(&seq) {
                    Held::Redo
                } else if l.window.contains_key(&seq) {
                    Held::Window
                } else {
                    return Ok(None);
                };
                let Some(r) = held.map(l).get_mut(&seq) else {
                    return Ok(None);
                };
                if r.until_ms <= now || r.lease.is_empty() {
                    return Err(LeaseError::NotLeased(seq));
                }
                if let Some(named) = lease {
                    if named != r.lease {
                        return Err(LeaseError::LeaseLost {
                            seq,
                            lease: named.to_string(),
                        });
                    }
                }
                match delay {
                    None => r.until_ms = now + q.0 as i64,
                    Some(_) if r.attempts >= q.1 => {
                        let attempts = r.attempts;
                        held.map(l).remove(&seq);
                        l.dead.insert(
                            seq,
                            DeadLetter {
                                attempts,
                                at: now_rfc3339(),
                                reason: dead_reason(held, attempts),
                            },
                        );
                        died = true;
                    }
                    Some(d) => {
                        r.until_ms = now + d.as_millis() as i64;
                        r.lease.clear();
                    }
                }
                Ok(Some(()))
            })
            .await?;
        if died {
            let mut d = lock(&self.new_dead);
            if d.len() < MAX_NEW_DEAD {
                d.push((c.name.clone(), seq));
            }
        }
        Ok(out)
    }

    /// The dead letters of `c`, by seq.
    pub async fn dead(&self, c: &Consumer) -> Result<Vec<(u64, DeadLetter)>, LeaseError> {
        Ok(self.ledger_of(&c.name).await?.0.dead.into_iter().collect())
    }

    /// Records, for queue `name` migrated from a file store (`msgbus
    /// migrate`), what its ledger held beyond the ack floor its JetStream
    /// consumer starts after: its dead letters (as they were: attempts,
    /// time, reason), its redriven events (waiting again, from attempt 1)
    /// and the seqs above the floor already settled (acknowledged, dead or
    /// redriven), which fetches then skip. Written once, into a queue that
    /// has no ledger yet: one that has one was migrated already or has run
    /// on NATS since, and keeps what it has.
    pub async fn import(
        &self,
        name: &str,
        dead: BTreeMap<u64, DeadLetter>,
        redo: &BTreeSet<u64>,
        settled: BTreeSet<u64>,
    ) -> Result<Imported, LeaseError> {
        if let (have, Some(_)) = self.ledger_of(name).await? {
            let same = have.dead.keys().eq(dead.keys())
                && have.redo.keys().eq(redo.iter())
                && have.settled == settled;
            return Ok(if same {
                Imported::AlreadyThere
            } else {
                Imported::Kept
            });
        }
        let ledger = Ledger {
            dead,
            redo: redo.iter().map(|s| (*s, Redo::default())).collect(),
            settled,
            ..Ledger::default()
        };
        let value = serde_json::to_vec(&ledger).map_err(|e| unavailable("encode", e))?;
        match compare_and_set(&self.ledger, consumers::key(name), Bytes::from(value), None).await {
            Ok(Some(_)) => Ok(Imported::Written),
            // Another writer made the ledger first.
            Ok(None) => Ok(Imported::Kept),
            Err(e) => Err(unavailable("write the queue's ledger", e)),
        }
    }

    /// Acknowledges `seqs` (each checked first: all or none where this
    /// instance can tell); answers the ack floor.
    pub async fn ack(&self, c: &Consumer, seqs: &[u64]) -> Result<u64, LeaseError> {
        let mut seen = BTreeSet::new();
        for &s in seqs {
            if !seen.insert(s) {
                return Err(LeaseError::Duplicate(s));
            }
        }
        let top = seqs.iter().copied().max().unwrap_or(0);
        // Fetched through another instance, maybe: ask the stream.
        let known = *self.head.borrow();
        let head = super::head_at_least(&self.events, known, top).await;
        if let Some(&s) = seqs.iter().find(|s| **s > head) {
            return Err(ConsumerError::PastHead { seq: s, head }.into());
        }
        let mut info = self.info_within(c, INFO_FRESH).await?;
        if top > info.delivered.stream_seq {
            info = self.info(c).await?;
        }
        let ledger = self.ledger_of(&c.name).await?.0;
        self.note_window(&c.name, &ledger);
        // Leased from the ledger: redriven, or in an ordered queue's window.
        let redo: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| ledger.redo.contains_key(s) || ledger.window.contains_key(s))
            .collect();
        for &s in seqs {
            if ledger.dead.contains_key(&s) {
                return Err(ConsumerError::Dead(s).into());
            }
            if redo.contains(&s) {
                continue;
            }
            if ledger.settled.contains(&s) && c.queue.is_some_and(|q| q.ordered_by_subject) {
                // Was in the window, and is not now.
                return Err(ConsumerError::AlreadyAcked(s).into());
            }
            let acked_here = lock(&self.local)
                .get(&c.name)
                .is_some_and(|l| l.acked.contains(&s));
            if s <= info.ack_floor.stream_seq || acked_here {
                return Err(ConsumerError::AlreadyAcked(s).into());
            }
            if s > info.delivered.stream_seq {
                return Err(LeaseError::NotPending(s));
            }
        }
        if !redo.is_empty() {
            self.change_ledger(&c.name, |l| {
                let mut any = false;
                for s in &redo {
                    any |= l.redo.remove(s).is_some();
                    any |= l.window.remove(s).is_some();
                }
                Ok(any.then_some(()))
            })
            .await?;
            // Its subject's next event may go now.
            self.window_changed.notify_waiters();
        }
        let acks = seqs.iter().filter(|s| !redo.contains(s)).map(|&s| {
            let (dc, cseq) = self.known(c, s).unwrap_or((1, 0));
            self.confirm(self.ack_subject(c, dc, s, cseq), "+ACK")
        });
        futures_util::future::try_join_all(acks).await?;
        {
            let mut local = lock(&self.local);
            let l = local.entry(c.name.clone()).or_default();
            for &s in seqs {
                l.leases.remove(&s);
                if l.acked.len() >= MAX_REMEMBERED {
                    l.acked.pop_first();
                }
                l.acked.insert(s);
            }
            l.acked_total += seqs.len() as u64;
        }
        let js_floor = self
            .info(c)
            .await
            .map_or(info.ack_floor.stream_seq, |i| i.ack_floor.stream_seq);
        Ok(self.floor_below_window(&c.name, js_floor))
    }

    /// The ack floor: JetStream's, held below the lowest event of an
    /// ordered queue's window (JetStream's passes events once they are in
    /// the window).
    fn floor_below_window(&self, name: &str, js_floor: u64) -> u64 {
        let first = lock(&self.local).get(name).and_then(|l| l.window.2);
        first.map_or(js_floor, |f| js_floor.min(f.saturating_sub(1)))
    }

    /// Remembers the window of `name` as `l` has it, for the numbers.
    fn note_window(&self, name: &str, l: &Ledger) {
        let now = now_ms();
        let leased = l
            .window
            .values()
            .filter(|r| r.until_ms > now && !r.lease.is_empty())
            .count() as u64;
        let waiting = l.window.len() as u64 - leased;
        let first = l.window.keys().next().copied();
        let mut local = lock(&self.local);
        local.entry(name.to_string()).or_default().window = (leased, waiting, first);
    }

    /// The latest delivery of `seq` this instance handed out.
    fn known(&self, c: &Consumer, seq: u64) -> Option<(u64, u64)> {
        lock(&self.local)
            .get(&c.name)
            .and_then(|l| l.leases.get(&seq).copied())
    }

    /// Sends `what` to an ack subject and waits for the server's reply.
    async fn confirm(&self, subject: String, what: &'static str) -> Result<(), LeaseError> {
        match tokio::time::timeout(
            API_TIMEOUT,
            self.client
                .request(subject, Bytes::from_static(what.as_bytes())),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "no answer from the server")),
        }
    }

    /// The delivery a nack or extend of `seq` names: refused when the
    /// event is not leased or the lease is stale, as far as this instance
    /// can tell.
    async fn leased(
        &self,
        c: &Consumer,
        seq: u64,
        lease: Option<&str>,
    ) -> Result<(u64, u64), LeaseError> {
        let named = match lease {
            Some(l) => Some(parse_lease(l).ok_or_else(|| LeaseError::LeaseLost {
                seq,
                lease: l.to_string(),
            })?),
            None => None,
        };
        let known = self.known(c, seq);
        let acked_here = lock(&self.local)
            .get(&c.name)
            .is_some_and(|l| l.acked.contains(&seq));
        if acked_here {
            return Err(LeaseError::NotLeased(seq));
        }
        let mut info = self.info_within(c, INFO_FRESH).await?;
        if seq > info.delivered.stream_seq {
            info = self.info(c).await?;
        }
        if seq <= info.ack_floor.stream_seq || seq > info.delivered.stream_seq {
            return Err(LeaseError::NotLeased(seq));
        }
        match (named, known) {
            (Some((dc, _)), Some((kdc, _))) if dc < kdc => Err(LeaseError::LeaseLost {
                seq,
                lease: lease.unwrap_or_default().to_string(),
            }),
            (Some(d), _) => Ok(d),
            (None, Some(k)) => Ok(k),
            // Delivered through another instance: the newest consumer seq
            // passes the server's range check for any pending message.
            (None, None) => Ok((1, info.delivered.consumer_seq)),
        }
    }

    /// Gives a leased event back, to be delivered again after `delay`.
    pub async fn nack(
        &self,
        c: &Consumer,
        seq: u64,
        lease: Option<&str>,
        delay: Duration,
    ) -> Result<(), LeaseError> {
        if self
            .ledger_lease(c, seq, lease, Some(delay))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let (dc, cseq) = self.leased(c, seq, lease).await?;
        let body = if delay.is_zero() {
            "-NAK".to_string()
        } else {
            format!("-NAK {{\"delay\":{}}}", delay.as_nanos())
        };
        match tokio::time::timeout(
            API_TIMEOUT,
            self.client
                .request(self.ack_subject(c, dc, seq, cseq), Bytes::from(body)),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable("-NAK", e)),
            Err(_) => return Err(unavailable("-NAK", "no answer from the server")),
        }
        if let Some(l) = lock(&self.local).get_mut(&c.name) {
            // Not leased by anyone now; a later delivery counts higher.
            l.leases.insert(seq, (dc, cseq));
        }
        Ok(())
    }

    /// Renews a lease for another AckWait (a progress ack); answers its
    /// milliseconds.
    pub async fn extend(
        &self,
        c: &Consumer,
        seq: u64,
        lease: Option<&str>,
    ) -> Result<u64, LeaseError> {
        if self.ledger_lease(c, seq, lease, None).await?.is_some() {
            return Ok(c.queue.map_or(0, |q| q.lease_ms));
        }
        let (dc, cseq) = self.leased(c, seq, lease).await?;
        // nats-server's AckProgress is "+WPI" (sic); "+WIP" would be
        // answered and ignored.
        self.confirm(self.ack_subject(c, dc, seq, cseq), "+WPI")
            .await?;
        Ok(c.queue.map_or(0, |q| q.lease_ms))
    }

    /// The numbers of `c` from the cached info; a stale cache is refreshed
    /// in the background (the answer never waits for the server).
    pub fn numbers(self: &Arc<Self>, c: &Consumer) -> Numbers {
        let (info, acknowledged, dead, stale) = {
            let mut local = lock(&self.local);
            let l = local.entry(c.name.clone()).or_default();
            let fresh = l.created_at == c.created_at
                && l.info
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < INFO_FRESH);
            let stale = !fresh && !l.refreshing;
            if stale {
                l.refreshing = true;
            }
            let info = if l.created_at == c.created_at {
                l.info.as_ref().map(|(_, i)| i.clone()).unwrap_or_default()
            } else {
                Info::default()
            };
            (info, l.acked_total, l.dead, stale)
        };
        if stale {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let me = self.clone();
                let c = c.clone();
                rt.spawn(async move {
                    let _ = tokio::time::timeout(API_TIMEOUT, me.info(&c)).await;
                    let dead = me.ledger_of(&c.name).await.map(|(l, _)| {
                        me.note_window(&c.name, &l);
                        l.dead.len()
                    });
                    let mut local = lock(&me.local);
                    let l = local.entry(c.name.clone()).or_default();
                    l.refreshing = false;
                    if let Ok(n) = dead {
                        l.dead = n as u64;
                    }
                });
            }
        }
        let (w_leased, w_waiting, _) = lock(&self.local)
            .get(&c.name)
            .map_or((0, 0, None), |l| l.window);
        Numbers {
            pending: info.num_pending + w_waiting,
            leased: info.num_ack_pending + w_leased,
            redelivered: info.num_redelivered,
            ack_floor: self.floor_below_window(&c.name, info.ack_floor.stream_seq),
            acknowledged,
            dead,
        }
    }

    /// Records the dead letter of the advisory at `advised` (its seq in the
    /// advisory stream) in the ledger, unless the ledger applied it
    /// already; true when this write recorded it (another instance may
    /// have first).
    async fn record_dead(
        &self,
        name: &str,
        advised: u64,
        seq: u64,
        attempts: u64,
    ) -> Result<bool, LeaseError> {
        let known = lock(&self.local).get(name).map_or(0, |l| l.advised);
        if advised <= known {
            return Ok(false);
        }
        let mut mark = 0;
        let done = self
            .change_ledger(name, |l| {
                mark = l.advised;
                if l.advised >= advised {
                    return Ok(None);
                }
                l.advised = advised;
                if l.dead.contains_key(&seq) {
                    return Ok(Some(false));
                }
                l.dead.insert(
                    seq,
                    DeadLetter {
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        at: now_rfc3339(),
                        reason: format!("delivered {attempts} times without an ack"),
                    },
                );
                Ok(Some(true))
            })
            .await?;
        if done.is_none() {
            let mut local = lock(&self.local);
            let l = local.entry(name.to_string()).or_default();
            l.advised = l.advised.max(mark);
        }
        Ok(done.unwrap_or(false))
    }

    /// Replays the advisory stream ([`advisory_stream`]) from its start,
    /// then follows it, recording the dead letters of the stream's queue
    /// consumers; returns when the subscription ends (the caller starts it
    /// again, replaying: what was applied is skipped by the ledgers'
    /// marks).
    pub(super) async fn follow_dead(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let advisories = match self.js.get_stream(advisory_stream(&self.stream)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the dead letters' advisory stream");
                return;
            }
        };
        let messages = async {
            let consumer = advisories
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let mut messages = match messages.await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow the dead letters' advisories");
                return;
            }
        };
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { return };
            let Ok(advised) = m.info().map(|i| i.stream_sequence) else {
                continue;
            };
            let Ok(a) = serde_json::from_slice::<Advisory>(&m.payload) else {
                continue;
            };
            if a.stream != self.stream {
                continue;
            }
            let Some(c) = self.consumers.list().into_iter().find(|c| {
                c.queue.is_some()
                    && js_name(&c.name) == a.consumer
                    && advised_after_creation(&a.timestamp, &c.created_at)
            }) else {
                continue;
            };
            match self
                .record_dead(&c.name, advised, a.stream_seq, a.deliveries)
                .await
            {
                Ok(true) => {
                    let mut d = lock(&self.new_dead);
                    if d.len() < MAX_NEW_DEAD {
                        d.push((c.name.clone(), a.stream_seq));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(consumer = %c.name, seq = a.stream_seq, error = %e,
                        "cannot record a dead letter; the advisory is applied when it is replayed");
                    return;
                }
            }
        }
    }

    /// Queue consumer `name` as this instance last saw it.
    pub fn consumer(&self, name: &str) -> Option<Consumer> {
        self.consumers.get(name).filter(|c| c.queue.is_some())
    }

    /// The dead letters recorded by this instance since the last call.
    pub fn take_new_dead(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *lock(&self.new_dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_parse_in_both_forms() {
        assert_eq!(
            ack_info("$JS.ACK.S.C.3.57.12.1700000000.4"),
            Some((3, 57, 12))
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.acc.S.C.3.57.12.1700000000.4.tok"),
            Some((3, 57, 12))
        );
        assert_eq!(ack_info("$JS.ACK.S.C.x.57.12.1.4"), None);
        assert_eq!(ack_info("inbox.1"), None);
        assert_eq!(parse_lease("3.12"), Some((3, 12)));
        assert_eq!(parse_lease("3"), None);
    }

    fn spec(max_deliver: u32) -> crate::store::QueueSpec {
        crate::store::QueueSpec {
            lease_ms: 1_000,
            max_deliver,
            ordered_by_subject: true,
        }
    }

    fn window(entries: &[(u64, Option<&str>)]) -> Ledger {
        let mut l = Ledger::default();
        for (seq, subject) in entries {
            l.window.insert(
                *seq,
                Redo {
                    key: subject.map(subject_key),
                    ..Redo::default()
                },
            );
        }
        l
    }

    fn lease(l: &mut Ledger, now: i64, room: usize) -> Leases {
        let mut out = Leases::default();
        l.lease_free(Held::Window, &spec(2), true, now, room, &mut out);
        out
    }

    fn seqs(out: &Leases) -> Vec<u64> {
        out.leased.iter().map(|l| l.0).collect()
    }

    #[test]
    fn a_window_leases_the_first_free_event_of_each_subject() {
        let mut l = window(&[(1, Some("a")), (2, Some("a")), (3, Some("b")), (4, None)]);
        let out = lease(&mut l, 0, 10);
        assert_eq!(seqs(&out), vec![1, 3, 4], "2 waits behind 1");
        assert!(out.leased.iter().all(|x| x.2.starts_with("s1.")));
        assert!(
            seqs(&lease(&mut l, 10, 10)).is_empty(),
            "all leased or waiting"
        );
        // 1 acknowledged: 2 goes.
        l.window.remove(&1);
        assert_eq!(seqs(&lease(&mut l, 10, 10)), vec![2]);
        // Without ordering, a subject does not hold anything back.
        let mut l = window(&[(1, Some("a")), (2, Some("a"))]);
        let mut out = Leases::default();
        l.lease_free(Held::Window, &spec(2), false, 0, 10, &mut out);
        assert_eq!(seqs(&out), vec![1, 2]);
    }

    #[test]
    fn an_expired_or_delayed_event_holds_its_subject_and_a_dead_one_frees_it() {
        let mut l = window(&[(1, Some("a")), (2, Some("a"))]);
        assert_eq!(seqs(&lease(&mut l, 0, 10)), vec![1]);
        // Its lease ran out (lease 1,000 ms): 1 again, attempt 2, not 2.
        let out = lease(&mut l, 1_000, 10);
        assert_eq!(
            out.leased,
            vec![(1, 2, out.leased[0].2.clone(), Held::Window)]
        );
        // A nack's delay keeps it, and 2, waiting.
        let r = l.window.get_mut(&1).unwrap();
        r.until_ms = 5_000;
        r.lease.clear();
        assert!(seqs(&lease(&mut l, 4_000, 10)).is_empty());
        // Free again after its last delivery (max_deliver 2): a dead
        // letter, and 2 goes in the same look.
        let out = lease(&mut l, 5_000, 10);
        assert_eq!(out.died, vec![1]);
        assert!(l.dead.contains_key(&1) && !l.window.contains_key(&1));
        assert_eq!(seqs(&out), vec![2]);
    }

    #[test]
    fn nothing_after_a_hole_is_leased_and_room_is_respected() {
        let mut l = window(&[(1, Some("a")), (3, Some("b")), (4, Some("c"))]);
        l.holes.insert(2);
        assert_eq!(
            seqs(&lease(&mut l, 0, 10)),
            vec![1],
            "2 may be an earlier b"
        );
        l.holes.clear();
        assert_eq!(seqs(&lease(&mut l, 0, 1)), vec![3], "room for one");
        assert_eq!(seqs(&lease(&mut l, 0, 10)), vec![4]);
    }

    #[test]
    fn subject_keys_are_short_and_stable() {
        let long = "x".repeat(10_000);
        assert_eq!(subject_key(&long).len(), 16);
        assert_eq!(subject_key("order-7"), subject_key("order-7"));
        assert_ne!(subject_key("order-7"), subject_key("order-8"));
    }

    #[test]
    fn js_names_are_valid_and_distinct() {
        assert_eq!(js_name("billing-q"), "msgbus_q_billing-q");
        assert_ne!(js_name("a.b"), js_name("a_b"));
        assert_ne!(js_name("a_d"), js_name("a.d"));
        assert!(!js_name("a.b").contains('.'));
        let long = "x.".repeat(64);
        assert!(js_name(&long).len() <= 200);
    }
}
