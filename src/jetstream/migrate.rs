//! `msgbus migrate --from-data-dir DIR --to-nats URL`: moves a stopped
//! single-node store into a JetStream stream, so a deployment can switch
//! from the file backend to `--backend nats` without losing an event or
//! changing a seq.
//!
//! - Every event keeps its seq: the stream's sequence is the file seq. An
//!   empty stream is first moved to the store's oldest seq (a purge up to
//!   it, which JetStream allows past the end), and every publish carries
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
//! This module sees the source only through the [`Store`] interface;
//! `msgbus migrate` (`src/commands.rs`) opens the stopped file store, as
//! `msgbus export --data-dir` does, and shows the progress.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use crate::store::{Filter, Matcher, Store};

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
/// missing, as `serve --backend nats` creates it). `source` names the store
/// in messages.
pub async fn migrate(
    store: &dyn Store,
    source: &str,
    settings: super::Settings,
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
    if first == 0 {
        return Ok(done);
    }

    // The stream as the backend creates and checks it.
    let backend = super::JetStream::open(settings.clone())
        .await
        .map_err(|e| Failure::CannotRun(e.to_string()))?;
    backend.close().await;
    drop(backend);
    let client = super::connect(&settings)
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
        if stream_last >= first {
            return Err(Failure::CannotRun(format!(
                "stream {stream_name} is empty but has already used seqs up to {stream_last}, \
                 past the store's oldest seq {first}: the events could not keep their seqs. \
                 Migrate into a new stream (--nats-stream)"
            )));
        }
        if stream_last + 1 < first {
            // JetStream moves an empty stream's next seq to `first`.
            stream.purge().sequence(first).await.map_err(|e| {
                Failure::CannotRun(format!(
                    "cannot move stream {stream_name} to the store's oldest seq {first}: {e}"
                ))
            })?;
            stream_last = first - 1;
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
    if stream_last >= last {
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
