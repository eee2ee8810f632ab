//! `msgbus migrate --from-data-dir DIR --to-nats URL`: moves a stopped
//! single-node store into a JetStream stream, so a deployment can switch
//! from the file backend to `--backend nats` without losing an event or
//! changing a seq.
//!
//! - Every event keeps its seq: the stream's sequence is the file seq. An
//!   empty stream is first moved to the store's oldest seq (a purge up to
//!   it, which JetStream allows past the end; for a store retention
//!   emptied, the seq its next event would take, so no seq is used
//!   twice), and every publish carries
//!   `Nats-Expected-Last-Sequence: seq - 1`, so JetStream refuses it if
//!   anything else was stored meanwhile: a live publisher cannot interleave
//!   and shift seqs. (nats-server 2.9 checks that header against a counter
//!   a purge does not move, so it gets none; there each ack's seq is
//!   checked and a run stops at the first that differs.)
//! - The payload is the event's bytes exactly as the file store holds them,
//!   on the subject and with the `Nats-Msg-Id` the backend gives a publish
//!   ([`super::subject::of_type`], [`super::msg_id`]), so the migrated
//!   events read, filter and deduplicate like published ones.
//! - Resumable and idempotent: each message carries `Msgbus-Migrated-Seq`
//!   (its file seq). A run reads the stream's last message; if it is a
//!   migrated one it goes on after it (nothing to do once it is the store's
//!   newest), and a stream whose last message is not one of this store's
//!   is refused with the reason. No duplicate window is involved.
//!
//! - Once every event is in the stream, payload schemas and durable
//!   consumers follow ([`Carried`]), both ways through the [`Store`]
//!   interface (the target is the backend `serve --backend nats` runs):
//!   - each type's schema versions in order, each checked to come back
//!     with the file store's number (the NATS side numbers them itself),
//!     so the `dataschema` URLs events carry resolve to the same
//!     documents, then the type's validation stopped if it was. A type
//!     whose versions on the target are not a prefix of the store's (a
//!     different document under a number, a version the store has not),
//!     or whose validation is stopped only there, is refused, not
//!     overwritten.
//!   - each consumer with its filter (and scope): a cursor consumer at its
//!     cursor, a queue consumer with its definition, its JetStream
//!     consumer starting after its ack floor, and its dead letters,
//!     redriven events and the seqs settled above its floor in its ledger
//!     ([`super::queues::JsQueues::import`]; a ledger already there that
//!     differs, changed by the NATS backend since an earlier run, is kept
//!     and the run says so). A consumer of the same name
//!     with another filter, mode or queue settings is refused; one with
//!     the same is left as it is (it may have moved on since).
//!
//!   Registration, stop and creation times are carried too (the NATS
//!   records hold the same fields): each version's, once the target holds
//!   the same document under the same number, and a consumer's when this
//!   run created it. Not carried: a cursor behind the store's oldest
//!   retained event (the
//!   consumer starts at the oldest, and the run says so). A run stopped by `--limit` carries neither schemas nor
//!   consumers: a cursor or ack floor must not point past the stream.
//!
//! This module sees the source only through the [`Store`] interface;
//! `msgbus migrate` (`src/commands.rs`) opens the stopped file store, as
//! `msgbus export --data-dir` does, and shows the progress.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use crate::store::{
    Consumer, ConsumerStart, Filter, Matcher, QueueLedger, SchemaLimits, SchemaType, Store,
};

/// The header naming an event's seq in the store it was migrated from.
pub const MIGRATED_SEQ: &str = "Msgbus-Migrated-Seq";

/// Events read from the store per page.
const PAGE_EVENTS: usize = 1000;
/// Most event bytes read from the store per page.
const PAGE_BYTES: usize = 4 << 20;
/// Publishes awaiting their ack at a time: enough to keep a round trip to
/// a replicated stream busy, few enough that a failure wastes little.
const IN_FLIGHT: usize = 256;
/// How long a JetStream API request or publish ack may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a run stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Nothing done: the reason.
    CannotRun(String),
    /// Stopped partway: the reason (what is stored stays).
    Failed(String),
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Done {
    /// Events published by this run.
    pub published: u64,
    /// The store's oldest seq (0 when it is empty).
    pub first: u64,
    /// The store's newest seq (0 when it is empty).
    pub last: u64,
    /// The stream's last seq at the end.
    pub stream_last: u64,
    /// Schemas and consumers, once every event is in the stream (`None`
    /// before).
    pub carried: Option<Carried>,
}

impl Done {
    /// True when every event of the store is in the stream.
    pub fn events_complete(&self) -> bool {
        self.first == 0 || self.stream_last >= self.last
    }
}

/// What a run did with the store's payload schemas and consumers.
#[derive(Debug, Default)]
pub struct Carried {
    /// Types with a schema in the store.
    pub schema_types: usize,
    /// Schema versions this run registered on the target.
    pub schema_versions: usize,
    /// Types whose validation this run stopped on the target (stopped in
    /// the store).
    pub schemas_stopped: usize,
    /// Consumers in the store.
    pub consumers: usize,
    /// Consumers this run created on the target.
    pub consumers_created: usize,
    /// Queue ledgers (dead letters, redriven and settled seqs) this run
    /// wrote.
    pub ledgers: usize,
    /// Dead letters among them.
    pub dead_letters: usize,
    /// Queue ledgers the target already had, different from the store's,
    /// kept as they are (each also a note).
    pub ledgers_kept: usize,
    /// What was left out or changed on the way, one line each.
    pub notes: Vec<String>,
    /// Schemas and consumers refused, one reason each (the target keeps
    /// what it has).
    pub refused: Vec<String>,
}

/// A progress callback: events published so far, of how many this run.
pub type OnProgress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// The attributes of a stored event a publish needs.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    ty: String,
    source: String,
    id: String,
}

/// The seq a migrated message carries, if it is one.
fn migrated_seq(m: &jetstream::message::StreamMessage) -> Option<u64> {
    m.headers.get(MIGRATED_SEQ)?.as_str().parse().ok()
}

/// Publishes the events of `store` after the stream's last migrated one,
/// at most `limit` of them, into the stream `settings` names (created if
/// missing, as `serve --backend nats` creates it); once they are all
/// there, carries its payload schemas and consumers. `source` names the
/// store in messages.
pub async fn migrate(
    store: &dyn Store,
    source: &str,
    settings: super::Settings,
    limit: Option<u64>,
    on_progress: OnProgress<'_>,
) -> Result<Done, Failure> {
    let mut done = events(store, source, &settings, limit, on_progress).await?;
    if !done.events_complete()
        || (store.schema_catalog().types.is_empty() && store.consumers().is_empty())
    {
        return Ok(done);
    }
    // Opened after the events, so its head and first seq are the stream's
    // with every event in it.
    let target = super::JetStream::open(settings)
        .await
        .map_err(|e| Failure::CannotRun(e.to_string()))?;
    let mut carried = Carried::default();
    carry_schemas(store, &target, &mut carried).await;
    carry_schema_times(store, &target, &mut carried).await;
    carry_consumers(store, &target, &mut carried).await;
    target.close().await;
    done.carried = Some(carried);
    Ok(done)
}

/// The events part of [`migrate`].
async fn events(
    store: &dyn Store,
    source: &str,
    settings: &super::Settings,
    limit: Option<u64>,
    on_progress: OnProgress<'_>,
) -> Result<Done, Failure> {
    let all = Matcher::new(Filter::default());
    let last = store.head();
    let first = match store.read(0, &all, 1, PAGE_BYTES).await {
        Ok(page) => page.events.first().map_or(0, |e| e.seq),
        Err(e) => return Err(Failure::CannotRun(format!("cannot read the store: {e}"))),
    };
    let mut done = Done {
        first,
        last,
        ..Done::default()
    };
    if last == 0 {
        return Ok(done);
    }
    // The seq the stream's next message must take: the store's oldest, or,
    // when retention removed every event, the seq the store would give
    // its next one (so seqs stay unique across the switch).
    let next = if first == 0 { last + 1 } else { first };

    // The stream as the backend creates and checks it.
    let backend = super::JetStream::open(settings.clone())
        .await
        .map_err(|e| Failure::CannotRun(e.to_string()))?;
    backend.close().await;
    drop(backend);
    let client = super::connect(settings)
        .await
        .map_err(|e| Failure::CannotRun(e.to_string()))?;
    // nats-server 2.9 checks Nats-Expected-Last-Sequence against a counter
    // that a purge does not move, so there every publish after one would be
    // refused; it gets only the check of each ack's seq below.
    let expect_last =
        super::parse_version(&client.server_info().version).is_some_and(|v| v >= (2, 10, 0));
    let js = jetstream::ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .build(client.clone());
    let stream_name = &settings.stream;
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| Failure::CannotRun(format!("stream {stream_name}: {e}")))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| Failure::CannotRun(format!("stream {stream_name}: {e}")))?;
    let (messages, mut stream_last) = (info.state.messages, info.state.last_sequence);

    // Where to go on.
    if messages == 0 {
        if stream_last >= next {
            return Err(Failure::CannotRun(format!(
                "stream {stream_name} is empty but has already used seqs up to {stream_last}, \
                 past the store's {} seq {next}: the events could not keep their seqs. \
                 Migrate into a new stream (--nats-stream)",
                if first == 0 { "next" } else { "oldest" }
            )));
        }
        if stream_last + 1 < next {
            // JetStream moves an empty stream's next seq to `next`.
            stream.purge().sequence(next).await.map_err(|e| {
                Failure::CannotRun(format!(
                    "cannot move stream {stream_name} to the store's seq {next}: {e}"
                ))
            })?;
            stream_last = next - 1;
        }
    } else {
        let tail = stream.get_raw_message(stream_last).await.map_err(|e| {
            Failure::CannotRun(format!(
                "cannot read the last message (seq {stream_last}) of stream {stream_name}: {e}"
            ))
        })?;
        if migrated_seq(&tail) != Some(stream_last) || stream_last > last {
            return Err(Failure::CannotRun(format!(
                "stream {stream_name} already holds events that were not migrated from this \
                 store (its last message, seq {stream_last}, is not event {stream_last} of {}): \
                 migrate into an empty stream, before any msgbus publishes to it",
                source
            )));
        }
        // The last migrated message must be this store's event at that seq
        // (not another store's migrated into the same stream).
        let here = store
            .get(stream_last)
            .await
            .map_err(|e| Failure::CannotRun(format!("cannot read the store: {e}")))?;
        if here.as_ref().map(|e| &e.bytes[..]) != Some(&tail.payload[..]) {
            return Err(Failure::CannotRun(format!(
                "stream {stream_name} ends with a migrated event at seq {stream_last} that \
                 differs from this store's event at that seq: it was migrated from another store"
            )));
        }
    }
    done.stream_last = stream_last;
    if first == 0 || stream_last >= last {
        return Ok(done);
    }

    let todo = last - stream_last;
    let todo = limit.map_or(todo, |l| l.min(todo));
    let stop = stream_last + todo;
    on_progress(0, todo);
    let mut progress = |n: u64| on_progress(n, todo);
    let prefix = stream_name.clone();
    let mut after = stream_last;
    let mut pending = std::collections::VecDeque::new();
    let result: Result<(), Failure> = async {
        while after < stop {
            let page = store
                .read(after, &all, PAGE_EVENTS, PAGE_BYTES)
                .await
                .map_err(|e| {
                    Failure::Failed(format!("cannot read the store after {after}: {e}"))
                })?;
            if page.events.is_empty() {
                break;
            }
            for ev in page.events {
                if ev.seq > stop {
                    break;
                }
                let seq = ev.seq;
                if seq != after + 1 {
                    return Err(Failure::Failed(format!(
                        "the store has no event {} (the next is {seq}): seqs could not be kept",
                        after + 1
                    )));
                }
                let head: Head = serde_json::from_slice(&ev.bytes).map_err(|e| {
                    Failure::Failed(format!("event {seq} in the store is not an event: {e}"))
                })?;
                let mut publish = PublishMessage::build()
                    .payload(Bytes::copy_from_slice(&ev.bytes))
                    .message_id(super::msg_id(&head.source, &head.id))
                    .header(MIGRATED_SEQ, seq.to_string().as_str());
                if expect_last {
                    publish = publish.expected_last_sequence(seq - 1);
                }
                let ack = js
                    .send_publish(super::subject::of_type(&prefix, &head.ty), publish)
                    .await
                    .map_err(|e| Failure::Failed(format!("publish of event {seq}: {e}")))?;
                pending.push_back((seq, ack));
                after = seq;
                while pending.len() >= IN_FLIGHT {
                    confirm(&mut pending, &mut done, &mut progress).await?;
                }
            }
        }
        while !pending.is_empty() {
            confirm(&mut pending, &mut done, &mut progress).await?;
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(API_TIMEOUT, client.flush()).await;
    result.map(|()| done)
}

/// Awaits the oldest pending publish: it must be stored at its own seq.
async fn confirm(
    pending: &mut std::collections::VecDeque<(u64, jetstream::context::PublishAckFuture)>,
    done: &mut Done,
    progress: &mut impl FnMut(u64),
) -> Result<(), Failure> {
    let Some((seq, ack)) = pending.pop_front() else {
        return Ok(());
    };
    let ack = ack.await.map_err(|e| {
        Failure::Failed(format!(
            "event {seq} was not stored ({e}); events up to seq {} are: run again to continue",
            done.stream_last
        ))
    })?;
    if ack.duplicate || ack.sequence != seq {
        return Err(Failure::Failed(format!(
            "event {seq} was answered as {} at stream seq {}: the stream changed while \
             migrating; events up to seq {} are in it",
            if ack.duplicate {
                "a duplicate"
            } else {
                "stored"
            },
            ack.sequence,
            done.stream_last
        )));
    }
    done.published += 1;
    done.stream_last = seq;
    progress(done.published);
    Ok(())
}

/// Why the target's schemas of a type cannot be brought to the store's
/// without overwriting something, if they cannot: its versions must be a
/// prefix of the store's, number for number and byte for byte, and its
/// validation stopped only where the store's is.
fn schema_conflict(want: &SchemaType, have: &SchemaType) -> Option<String> {
    let ty = &want.ty;
    if have.versions.len() > want.versions.len() {
        return Some(format!(
            "schema of type {ty:?}: the target has {} version(s), the store only {}; \
             the target's were registered elsewhere",
            have.versions.len(),
            want.versions.len()
        ));
    }
    for (w, h) in want.versions.iter().zip(&have.versions) {
        let same = w.version == h.version
            && serde_json::to_vec(&*w.schema).ok() == serde_json::to_vec(&*h.schema).ok();
        if !same {
            return Some(format!(
                "schema of type {ty:?}: the target's version {} is not the store's version {} \
                 (a different document under the same number); events' dataschema URLs would \
                 name another document, so it is not overwritten",
                h.version, w.version
            ));
        }
    }
    if have.versions.len() == want.versions.len() && want.active() && !have.active() {
        return Some(format!(
            "schema of type {ty:?}: validation is stopped on the target but active in the \
             store; resuming it would take a new version number the store does not have"
        ));
    }
    None
}

/// Registers every type's schema versions the target lacks, in order and
/// under the store's numbers, then stops validation where the store has.
async fn carry_schemas(from: &dyn Store, to: &dyn Store, out: &mut Carried) {
    // The store enforced its limits when the versions were registered;
    // what it holds is copied whatever the target's flags will be.
    let limits = SchemaLimits {
        max_versions: usize::MAX,
        max_types: usize::MAX,
    };
    let target = to.schema_catalog();
    for (ty, want) in &from.schema_catalog().types {
        out.schema_types += 1;
        let have = target.types.get(ty);
        if let Some(why) = have.and_then(|h| schema_conflict(want, h)) {
            out.refused.push(why);
            continue;
        }
        let mut active = have.is_none_or(SchemaType::active);
        let from_version = have.map_or(0, |h| h.versions.len());
        for v in &want.versions[from_version..] {
            match to.put_schema(ty.clone(), v.schema.clone(), limits).await {
                Ok(t) if t.latest().version == v.version => {
                    out.schema_versions += 1;
                    active = true;
                }
                Ok(t) => {
                    out.refused.push(format!(
                        "schema of type {ty:?}: version {} was stored as version {} on the \
                         target (another writer registered one meanwhile); remove the type's \
                         schemas there and run again",
                        v.version,
                        t.latest().version
                    ));
                    active = false;
                    break;
                }
                Err(e) => {
                    out.refused
                        .push(format!("schema of type {ty:?}, version {}: {e}", v.version));
                    active = false;
                    break;
                }
            }
        }
        if active && !want.active() {
            match to.delete_schema(ty.clone()).await {
                Ok(_) => out.schemas_stopped += 1,
                Err(e) => out.refused.push(format!(
                    "schema of type {ty:?}: cannot stop its validation on the target: {e}"
                )),
            }
        }
    }
}

/// Gives the target's schema versions the store's registration times
/// (and stop times), for every type not refused.
async fn carry_schema_times(from: &dyn Store, to: &super::JetStream, out: &mut Carried) {
    for (ty, want) in &from.schema_catalog().types {
        let refused = out
            .refused
            .iter()
            .any(|r| r.starts_with(&format!("schema of type {ty:?}")));
        if refused {
            continue;
        }
        if let Err(e) = to.shared.schemas.carry_times(want).await {
            out.notes.push(format!(
                "schema of type {ty:?}: its registration times were not carried: {e}"
            ));
        }
    }
}

/// Whether `have` (on the target) is `want`'s definition: filter (with
/// scope), mode and queue settings.
fn same_definition(want: &Consumer, have: &Consumer) -> bool {
    want.filter == have.filter && want.queue == have.queue
}

/// Creates every consumer the target lacks, at the store's cursor or ack
/// floor, and writes each queue's ledger.
async fn carry_consumers(from: &dyn Store, to: &super::JetStream, out: &mut Carried) {
    let oldest = to.status().first_seq.max(1);
    for c in from.consumers() {
        out.consumers += 1;
        let name = &c.name;
        let ledger = c.queue.is_some().then(|| from.queue_ledger(name)).flatten();
        // A queue's floor may be past the cursor it started at.
        let floor = ledger.as_ref().map_or(c.cursor, |l| l.floor.max(c.cursor));
        if floor + 1 < oldest && c.queue.is_none() {
            out.notes.push(format!(
                "consumer {name:?}: its cursor {floor} is behind the oldest retained event \
                 {oldest} (the store answers 410 to its reads); on the target it starts at \
                 event {oldest}"
            ));
        }
        match to.consumer(name) {
            Some(have) if !same_definition(&c, &have) => {
                out.refused.push(format!(
                    "consumer {name:?}: the target has a consumer of that name with another \
                     definition (store: {}; target: {}); it is not overwritten",
                    describe(&c),
                    describe(&have)
                ));
                continue;
            }
            Some(_) => {}
            None => {
                let start = ConsumerStart::Seq((floor + 1).max(oldest));
                match to
                    .put_consumer(
                        name.clone(),
                        c.filter.clone(),
                        Some(start),
                        usize::MAX,
                        c.queue,
                    )
                    .await
                {
                    Ok(_) => {
                        out.consumers_created += 1;
                        if let Err(e) = to.shared.consumers.carry_times(name, &c).await {
                            out.notes.push(format!(
                                "consumer {name:?}: its creation time was not carried: {e}"
                            ));
                        }
                    }
                    Err(e) => {
                        out.refused.push(format!("consumer {name:?}: {e}"));
                        continue;
                    }
                }
            }
        }
        if let Some(l) = ledger {
            import_ledger(to, name, l, out).await;
        }
    }
}

/// Writes what a queue's ledger holds beyond its floor, if anything, into
/// a target queue that has no ledger yet.
async fn import_ledger(to: &super::JetStream, name: &str, l: QueueLedger, out: &mut Carried) {
    let floor = l.floor;
    let mut settled = l.acked;
    settled.extend(l.dead.keys().filter(|s| **s > floor));
    settled.extend(l.redo.iter().filter(|s| **s > floor));
    if l.dead.is_empty() && l.redo.is_empty() && settled.is_empty() {
        return;
    }
    let dead = l.dead.len();
    match to.queues().import(name, l.dead, &l.redo, settled).await {
        Ok(super::queues::Imported::Written) => {
            out.ledgers += 1;
            out.dead_letters += dead;
        }
        Ok(super::queues::Imported::AlreadyThere) => {}
        Ok(super::queues::Imported::Kept) => {
            out.ledgers_kept += 1;
            out.notes.push(format!(
                "consumer {name:?}: its queue ledger on the target differs from the store's                  (the NATS backend has changed it since an earlier run: dead letters, redrives                  or acks); it is kept as it is and the store's ledger is not written"
            ));
        }
        Err(e) => out.refused.push(format!(
            "consumer {name:?}: cannot write its queue ledger: {e}"
        )),
    }
}

/// A consumer's definition, for a refusal.
fn describe(c: &Consumer) -> String {
    let filter = serde_json::to_string(&c.filter).unwrap_or_default();
    match c.queue {
        None => format!("cursor consumer, filter {filter}"),
        Some(q) => format!(
            "queue consumer, filter {filter}, lease {} ms, max_deliver {}{}",
            q.lease_ms,
            q.max_deliver,
            if q.ordered_by_subject {
                ", ordering subject"
            } else {
                ""
            }
        ),
    }
}
