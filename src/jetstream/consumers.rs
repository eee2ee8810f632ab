//! Durable (cursor) consumers of the NATS backend, in a JetStream KV
//! bucket beside the stream: one key per consumer (its name, hex-encoded,
//! so any name msgbus accepts is a valid key), the value the consumer as
//! the file store keeps it in `consumers.json` (name, filter, cursor,
//! times). Every change is a compare-and-set on the key's revision, so two
//! msgbus instances acking the same consumer never move its cursor back;
//! the answer is sent after the KV write's ack (replicated like the
//! stream). A KV watch keeps every instance's copy current, which the
//! synchronous reads of the [`Store`](crate::store::Store) interface
//! (`consumer`, `consumers`) answer from.
//!
//! Why a KV bucket and not JetStream durable consumers: a msgbus cursor
//! is one number any instance moves forward with a single ack of a seq,
//! and a read at it is an ordinary read of the stream. A JetStream
//! consumer's ack floor moves only as delivered messages are acked one by
//! one (or with `AckAll` on a delivered message), needs a delivery to
//! ack, and has its own pending and redelivery state that msgbus's cursor
//! consumers do not have; mapping a cursor onto it would cost a fetch per
//! ack. Queue consumers, which do have leases and redelivery, are where
//! JetStream consumers would fit; they are not mapped yet.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::store::{Consumer, ConsumerError, ConsumerStart, Filter, QueueSpec, StoreError};

/// How often a compare-and-set lost to another instance is retried.
pub(super) const CAS_TRIES: usize = 8;

/// The consumers' bucket and this instance's copy of it.
#[derive(Debug)]
pub struct Consumers {
    kv: kv::Store,
    /// Name to (consumer, KV revision).
    cache: RwLock<BTreeMap<String, (Consumer, u64)>>,
}

pub(super) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Store(StoreError::Unavailable(format!("consumers: {what}: {e}")))
}

/// The KV bucket of a stream's consumers (bucket names hold only
/// letters, digits, `-` and `_`).
pub fn bucket_name(stream: &str) -> String {
    bucket_named(stream, "CONSUMERS")
}

/// The KV bucket `<stream>_<suffix>` beside a stream (the stream's name
/// with every character a bucket name cannot hold replaced by `_`).
pub(super) fn bucket_named(stream: &str, suffix: &str) -> String {
    let clean: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_{suffix}")
}

/// The committed JSON value at `key` and its revision (`None`: absent or
/// deleted); an error says what failed and why.
pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    kv: &kv::Store,
    key: String,
) -> Result<Option<(T, u64)>, (&'static str, async_nats::Error)> {
    let e = kv.entry(key).await.map_err(|e| ("read", e.into()))?;
    match e {
        Some(e) if e.operation == kv::Operation::Put => serde_json::from_slice::<T>(&e.value)
            .map(|v| Some((v, e.revision)))
            .map_err(|err| ("a stored entry does not decode", err.into())),
        _ => Ok(None),
    }
}

/// Writes `value` at `key` if the key is still at `revision` (`None`:
/// absent or deleted): the new revision, or `None` when another instance
/// changed it first.
pub(super) async fn compare_and_set(
    kv: &kv::Store,
    key: String,
    value: Bytes,
    revision: Option<u64>,
) -> Result<Option<u64>, async_nats::Error> {
    match revision {
        Some(r) => match kv.update(&key, value, r).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) if is_wrong_last_sequence(&e) => Ok(None),
            Err(e) => Err(e.into()),
        },
        None => match kv.create(&key, value).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) if is_wrong_last_sequence(&e) => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// Whether `e` is JetStream refusing a write because the key moved on
/// since the revision it names. nats-server answers error code 10071, or,
/// in a cluster, 10164 ("wrong last sequence" without the number), which
/// async-nats 0.51 does not map to `WrongLastRevision`: without this, a
/// compare-and-set that lost a race on an R3 bucket failed instead of
/// trying again.
fn is_wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::ErrorCode;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            let code = js.error_code();
            return code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        cur = err.source();
    }
    false
}

/// Every entry of a KV bucket now (its keys, then each key's entry), for a
/// copy to start from before its watch takes over.
pub(super) async fn entries(kv: &kv::Store) -> Result<Vec<kv::Entry>, async_nats::Error> {
    use futures_util::StreamExt;
    let mut keys = kv.keys().await?;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        names.push(k?);
    }
    let mut out = Vec::with_capacity(names.len());
    for k in names {
        if let Some(e) = kv.entry(k).await? {
            out.push(e);
        }
    }
    Ok(out)
}

/// The KV key of a name msgbus accepts (a consumer's, an event type):
/// hex-encoded, so any name is a valid key.
pub(super) fn key(name: &str) -> String {
    hex::encode(name.as_bytes())
}

/// The name a key encodes (`None`: not a key msgbus wrote).
pub(super) fn name_of(key: &str) -> Option<String> {
    String::from_utf8(hex::decode(key).ok()?).ok()
}

/// Finds or creates the KV bucket `<stream>_<suffix>` (`what` names its
/// contents in errors) with the stream's replicas, and opens it.
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    stream: &str,
    suffix: &str,
    what: &str,
    replicas: usize,
) -> Result<kv::Store, super::StartError> {
    let bucket = bucket_named(stream, suffix);
    let err = |detail: String| super::StartError::Stream {
        stream: stream.to_string(),
        detail,
    };
    // The bucket's stream as async-nats's `create_key_value` makes it,
    // created here because that call first reads the account's info,
    // which it cannot parse from nats-server 2.9.
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| err(format!("cannot create the {what}' KV bucket {bucket}: {e}")))?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| err(format!("cannot open the {what}' KV bucket {bucket}: {e}")))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Consumers {
    /// Finds or creates the bucket and loads every consumer.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Arc<Consumers>, super::StartError> {
        let kv = open_bucket(js, stream, "CONSUMERS", "consumers", replicas).await?;
        let bucket = bucket_name(stream);
        let err = |detail: String| super::StartError::Stream {
            stream: stream.to_string(),
            detail,
        };
        let me = Arc::new(Consumers {
            kv,
            cache: RwLock::default(),
        });
        me.load().await.map_err(|e| {
            err(format!(
                "cannot read the consumers' KV bucket {bucket}: {e}"
            ))
        })?;
        Ok(me)
    }

    async fn load(&self) -> Result<(), async_nats::Error> {
        for e in entries(&self.kv).await? {
            self.seen(&e);
        }
        Ok(())
    }

    /// Applies a KV entry (a put or a delete) to the copy, unless the copy
    /// already has a newer revision.
    fn seen(&self, e: &kv::Entry) {
        let Some(name) = name_of(&e.key) else {
            return;
        };
        let mut cache = write(&self.cache);
        if cache.get(&name).is_some_and(|(_, rev)| *rev >= e.revision) {
            return;
        }
        match e.operation {
            kv::Operation::Put => {
                if let Ok(c) = serde_json::from_slice::<Consumer>(&e.value) {
                    cache.insert(name, (c, e.revision));
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                cache.remove(&name);
            }
        }
    }

    /// Follows the bucket so changes made through other instances reach
    /// this copy; returns when the watch ends (the caller restarts it).
    pub async fn watch(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let Ok(mut w) = self.kv.watch_all().await else {
            return;
        };
        while let Some(Ok(e)) = w.next().await {
            self.seen(&e);
        }
    }

    /// The committed consumer `name`, with its revision (`None`: absent).
    async fn fetch(&self, name: &str) -> Result<Option<(Consumer, u64)>, ConsumerError> {
        get_json(&self.kv, key(name))
            .await
            .map_err(|(what, e)| unavailable(what, e))
    }

    /// Writes `c` if the key is still at `revision` (`None`: absent);
    /// `Ok(false)` when another instance changed it first.
    async fn commit(&self, c: &Consumer, revision: Option<u64>) -> Result<bool, ConsumerError> {
        let value = Bytes::from(serde_json::to_vec(c).unwrap_or_default());
        let Some(rev) = compare_and_set(&self.kv, key(&c.name), value, revision)
            .await
            .map_err(|e| unavailable("write", e))?
        else {
            return Ok(false);
        };
        let mut cache = write(&self.cache);
        if cache.get(&c.name).is_none_or(|(_, r)| *r < rev) {
            cache.insert(c.name.clone(), (c.clone(), rev));
        }
        Ok(true)
    }

    /// Creates or updates a cursor consumer (as the file store does:
    /// `start` repositions it; a new one starts at the oldest event).
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        name: String,
        filter: Filter,
        start: Option<ConsumerStart>,
        max_consumers: usize,
        queue: Option<QueueSpec>,
        first_seq: u64,
        head: u64,
    ) -> Result<(Consumer, bool), ConsumerError> {
        for _ in 0..CAS_TRIES {
            let existing = self.fetch(&name).await?;
            let count = read(&self.cache).len();
            let cursor = match (start, &existing) {
                (_, None) if count >= max_consumers => Err(ConsumerError::TooMany {
                    limit: max_consumers,
                }),
                (_, Some((c, _))) if c.queue.is_some() != queue.is_some() => {
                    Err(ConsumerError::ModeChange {
                        name: name.clone(),
                        mode: if c.queue.is_some() { "queue" } else { "cursor" },
                    })
                }
                (None, Some((c, _))) => Ok(c.cursor),
                (None, None) | (Some(ConsumerStart::Earliest), _) => Ok(first_seq - 1),
                (Some(ConsumerStart::Latest), _) => Ok(head),
                (Some(ConsumerStart::Seq(s)), _) if s > head.saturating_add(1) => {
                    Err(ConsumerError::PastHead { seq: s, head })
                }
                (Some(ConsumerStart::Seq(s)), _) if s < first_seq => {
                    Err(StoreError::Gone { oldest: first_seq }.into())
                }
                (Some(ConsumerStart::Seq(s)), _) => Ok(s - 1),
            }?;
            let created = existing.is_none();
            let c = Consumer {
                name: name.clone(),
                filter: filter.clone(),
                cursor,
                created_at: existing
                    .as_ref()
                    .map_or_else(now, |(c, _)| c.created_at.clone()),
                updated_at: now(),
                queue,
            };
            if self.commit(&c, existing.map(|(_, r)| r)).await? {
                return Ok((c, created));
            }
        }
        Err(unavailable(
            "put",
            "other instances kept changing the consumer; retry",
        ))
    }

    /// Moves the cursor of `name` to `seq` (never back).
    pub async fn ack(&self, name: String, seq: u64, head: u64) -> Result<Consumer, ConsumerError> {
        for _ in 0..CAS_TRIES {
            let Some((mut c, rev)) = self.fetch(&name).await? else {
                return Err(ConsumerError::NotFound(name));
            };
            if seq < c.cursor {
                return Err(ConsumerError::Backwards {
                    seq,
                    cursor: c.cursor,
                });
            }
            if seq > head {
                return Err(ConsumerError::PastHead { seq, head });
            }
            if seq == c.cursor {
                return Ok(c);
            }
            c.cursor = seq;
            c.updated_at = now();
            if self.commit(&c, Some(rev)).await? {
                return Ok(c);
            }
        }
        Err(unavailable(
            "ack",
            "other instances kept changing the consumer; retry",
        ))
    }

    /// Gives consumer `name` the creation and update times of `from` (the
    /// same consumer in the store `msgbus migrate` moves, just created
    /// here by the run).
    pub async fn carry_times(&self, name: &str, from: &Consumer) -> Result<(), ConsumerError> {
        for _ in 0..CAS_TRIES {
            let Some((mut c, rev)) = self.fetch(name).await? else {
                return Err(ConsumerError::NotFound(name.to_string()));
            };
            if c.created_at == from.created_at && c.updated_at == from.updated_at {
                return Ok(());
            }
            c.created_at.clone_from(&from.created_at);
            c.updated_at.clone_from(&from.updated_at);
            if self.commit(&c, Some(rev)).await? {
                return Ok(());
            }
        }
        Err(unavailable(
            "carry times",
            "other instances kept changing the consumer; retry",
        ))
    }

    /// Deletes `name`.
    pub async fn delete(&self, name: String) -> Result<Consumer, ConsumerError> {
        let Some((c, _)) = self.fetch(&name).await? else {
            return Err(ConsumerError::NotFound(name));
        };
        self.kv
            .delete(key(&name))
            .await
            .map_err(|e| unavailable("delete", e))?;
        write(&self.cache).remove(&name);
        Ok(c)
    }

    /// One consumer, as this instance last saw it.
    pub fn get(&self, name: &str) -> Option<Consumer> {
        read(&self.cache).get(name).map(|(c, _)| c.clone())
    }

    /// Every consumer, by name.
    pub fn list(&self) -> Vec<Consumer> {
        read(&self.cache).values().map(|(c, _)| c.clone()).collect()
    }
}
