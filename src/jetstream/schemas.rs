//! Payload schemas of the NATS backend, in a JetStream KV bucket beside
//! the stream (`<stream>_SCHEMAS`, the stream's replicas): one key per
//! event type (the type hex-encoded, as consumers' names are, so any type
//! msgbus accepts is a valid key), the value the type's entry as the file
//! store keeps it in `schemas.json` (every version, oldest first, and
//! `deleted_at`).
//!
//! Every change (a new version, a delete) is a compare-and-set on the
//! type's key revision, retried a bounded number of times when another
//! instance changed the type first: two instances registering versions of
//! one type at once get distinct numbers, and none is lost. It is answered
//! after the KV write's ack (replicated like the stream).
//!
//! A KV watch (last value per key, then every change) keeps this
//! instance's copy current: [`Schemas::catalog`] answers from it, with a
//! `generation` that rises at every change applied, and
//! [`Schemas::subscribe`] wakes the HTTP layer so it recompiles its
//! validators (`Store::schema_changes`). `--max-schema-types` is checked
//! against this copy, so per instance (as `--max-consumers` is); the
//! versions of one type are counted under the compare-and-set, exactly.
//!
//! A type's versions are one KV value, so one NATS message: a value larger
//! than the servers' `max_payload` (1 MiB by default) cannot be stored. A
//! change that would make it larger is refused, saying so
//! ([`Schemas::max_value`]; the HTTP layer checks it first and answers
//! 413).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::watch;

use super::consumers::{self, read, write, CAS_TRIES};
use crate::store::{
    SchemaCatalog, SchemaError, SchemaLimits, SchemaType, SchemaVersion, StoreError,
};

/// The bucket's name suffix: `<stream>_SCHEMAS`.
const SUFFIX: &str = "SCHEMAS";

/// The schemas' bucket and this instance's copy of it.
#[derive(Debug)]
pub struct Schemas {
    kv: kv::Store,
    copy: RwLock<Copy>,
    /// The copy's generation, sent at every change applied.
    changes: watch::Sender<u64>,
    /// The largest value the bucket takes (`max_payload` less room for
    /// headers, or the bucket's own message limit if lower).
    max_value: usize,
}

/// The copy: the catalog as the HTTP layer reads it, and the KV revision
/// of each type's entry (kept after a purge too, so an older entry
/// arriving late is not applied over it).
#[derive(Debug, Default)]
struct Copy {
    catalog: Arc<SchemaCatalog>,
    revisions: BTreeMap<String, u64>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SchemaError {
    SchemaError::Store(StoreError::Unavailable(format!("schemas: {what}: {e}")))
}

/// The time of a change, as the file store writes it.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Waits before compare-and-set attempt `attempt` (none before the
/// first): 10 ms, doubling up to 160 ms, so instances that lost to each
/// other, or read a replica that was behind, do not retry in lockstep.
async fn backoff(attempt: usize) {
    if attempt > 0 {
        let ms = 10u64 << (attempt - 1).min(4);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Why a type's entry cannot be stored: larger than one NATS message.
fn too_large_detail(ty: &str, size: usize, max: usize) -> String {
    format!(
        "type {ty:?}'s schemas with this version would take {size} bytes, more than the {max} \
         bytes one NATS message can carry (the servers' max_payload, less room for headers): \
         with --backend nats every version of a type is kept in one KV value. Nothing was \
         stored; register a smaller document, or raise max_payload in the NATS servers' \
         configuration"
    )
}

impl Schemas {
    /// Finds or creates the bucket and loads every type. `max_payload` is
    /// the servers' largest message.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
        max_payload: usize,
    ) -> Result<Arc<Schemas>, super::StartError> {
        let kv = consumers::open_bucket(js, stream, SUFFIX, "schemas", replicas).await?;
        let bucket = consumers::bucket_named(stream, SUFFIX);
        let err = |detail: String| super::StartError::Stream {
            stream: stream.to_string(),
            detail,
        };
        let own_limit = kv.stream.cached_info().config.max_message_size;
        let mut max_value = max_payload.saturating_sub(super::HEADER_ROOM as usize);
        if let Ok(own) = usize::try_from(own_limit) {
            if own > 0 {
                max_value = max_value.min(own);
            }
        }
        let me = Arc::new(Schemas {
            kv,
            copy: RwLock::default(),
            changes: watch::channel(0).0,
            max_value,
        });
        me.load()
            .await
            .map_err(|e| err(format!("cannot read the schemas' KV bucket {bucket}: {e}")))?;
        Ok(me)
    }

    async fn load(&self) -> Result<(), async_nats::Error> {
        for e in consumers::entries(&self.kv).await? {
            self.seen(&e);
        }
        Ok(())
    }

    /// Applies a KV entry (a put, or an operator's delete or purge) to the
    /// copy, unless the copy already has this revision or a newer one.
    fn seen(&self, e: &kv::Entry) {
        let Some(ty) = consumers::name_of(&e.key) else {
            return;
        };
        let entry = match e.operation {
            kv::Operation::Put => match serde_json::from_slice::<SchemaType>(&e.value) {
                Ok(t) if t.ty == ty && !t.versions.is_empty() => Some(t),
                Ok(_) => {
                    tracing::error!(r#type = %ty, revision = e.revision, "a stored schema entry names another type or has no version; ignored");
                    return;
                }
                Err(err) => {
                    tracing::error!(r#type = %ty, revision = e.revision, error = %err, "a stored schema entry is not a schema type; ignored");
                    return;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        self.apply(ty, entry, e.revision);
    }

    /// Sets `ty`'s entry (`None`: removed) at `revision` in the copy, if
    /// that is newer than what the copy has, and wakes the subscribers.
    fn apply(&self, ty: String, entry: Option<SchemaType>, revision: u64) {
        let mut copy = write(&self.copy);
        if copy.revisions.get(&ty).is_some_and(|r| *r >= revision) {
            return;
        }
        let mut next = (*copy.catalog).clone();
        next.generation += 1;
        match entry {
            Some(t) => {
                next.types.insert(ty.clone(), t);
            }
            None => {
                next.types.remove(&ty);
            }
        }
        let generation = next.generation;
        copy.catalog = Arc::new(next);
        copy.revisions.insert(ty, revision);
        drop(copy);
        self.changes.send_replace(generation);
    }

    /// Follows the bucket (every key's last value, then every change) so
    /// changes made through other instances reach this copy; returns when
    /// the watch ends (the caller restarts it, which resynchronizes).
    pub async fn watch(self: &Arc<Self>) {
        use futures_util::StreamExt;
        let Ok(mut w) = self.kv.watch_with_history(">").await else {
            return;
        };
        while let Some(Ok(e)) = w.next().await {
            self.seen(&e);
        }
    }

    /// The copy's catalog.
    pub fn catalog(&self) -> Arc<SchemaCatalog> {
        read(&self.copy).catalog.clone()
    }

    /// A receiver of the copy's generation, changed at every change
    /// applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The most bytes one type's entry (its `SchemaType` JSON) may take.
    pub fn max_value(&self) -> usize {
        self.max_value
    }

    /// The committed entry of `ty`, with its revision (`None`: absent).
    async fn fetch(&self, ty: &str) -> Result<Option<(SchemaType, u64)>, SchemaError> {
        consumers::get_json(&self.kv, consumers::key(ty))
            .await
            .map_err(|(what, e)| unavailable(what, e))
    }

    /// Writes `t` if its key is still at `revision` (`None`: absent or
    /// deleted); `Ok(false)` when another instance changed it first.
    async fn commit(&self, t: &SchemaType, revision: Option<u64>) -> Result<bool, SchemaError> {
        let value = serde_json::to_vec(t).map_err(|e| unavailable("encode", e))?;
        if value.len() > self.max_value {
            return Err(SchemaError::Store(StoreError::Unavailable(
                too_large_detail(&t.ty, value.len(), self.max_value),
            )));
        }
        let Some(rev) = consumers::compare_and_set(
            &self.kv,
            consumers::key(&t.ty),
            Bytes::from(value),
            revision,
        )
        .await
        .map_err(|e| unavailable("write", e))?
        else {
            return Ok(false);
        };
        self.apply(t.ty.clone(), Some(t.clone()), rev);
        Ok(true)
    }

    /// Registers the next version of `ty`'s schema (and resumes
    /// validation), as the file store's writer does.
    pub async fn put(
        &self,
        ty: String,
        schema: Arc<serde_json::Value>,
        limits: SchemaLimits,
    ) -> Result<SchemaType, SchemaError> {
        for attempt in 0..CAS_TRIES {
            backoff(attempt).await;
            let existing = self.fetch(&ty).await?;
            let (t, revision) = match existing {
                Some((t, _)) if t.versions.len() >= limits.max_versions => {
                    return Err(SchemaError::TooManyVersions {
                        ty,
                        limit: limits.max_versions,
                    })
                }
                Some((mut t, rev)) => {
                    let version = t.latest().version + 1;
                    t.versions.push(SchemaVersion {
                        version,
                        schema: schema.clone(),
                        created_at: now(),
                    });
                    t.deleted_at = None;
                    (t, Some(rev))
                }
                None => {
                    let count = {
                        let copy = read(&self.copy);
                        copy.catalog.types.len() - usize::from(copy.catalog.types.contains_key(&ty))
                    };
                    if count >= limits.max_types {
                        return Err(SchemaError::TooManyTypes {
                            limit: limits.max_types,
                        });
                    }
                    let t = SchemaType {
                        ty: ty.clone(),
                        versions: vec![SchemaVersion {
                            version: 1,
                            schema: schema.clone(),
                            created_at: now(),
                        }],
                        deleted_at: None,
                    };
                    (t, None)
                }
            };
            if self.commit(&t, revision).await? {
                return Ok(t);
            }
        }
        Err(unavailable(
            "put",
            "other instances kept changing this type's schemas; retry",
        ))
    }

    /// Gives the versions of `ty` the target holds the registration times
    /// `from` (the same type in the store `msgbus migrate` moves) has
    /// under the same numbers and documents, and its stop time where both
    /// are stopped; answers whether it changed anything.
    pub async fn carry_times(&self, from: &SchemaType) -> Result<bool, SchemaError> {
        for attempt in 0..CAS_TRIES {
            backoff(attempt).await;
            let Some((mut t, rev)) = self.fetch(&from.ty).await? else {
                return Ok(false);
            };
            let mut changed = false;
            for v in &mut t.versions {
                let same = from
                    .versions
                    .iter()
                    .find(|w| w.version == v.version && w.schema == v.schema);
                if let Some(w) = same.filter(|w| w.created_at != v.created_at) {
                    v.created_at.clone_from(&w.created_at);
                    changed = true;
                }
            }
            if t.deleted_at.is_some()
                && from.deleted_at.is_some()
                && t.deleted_at != from.deleted_at
            {
                t.deleted_at.clone_from(&from.deleted_at);
                changed = true;
            }
            if !changed {
                return Ok(false);
            }
            if self.commit(&t, Some(rev)).await? {
                return Ok(true);
            }
        }
        Err(unavailable(
            "carry times",
            "other instances kept changing this type's schemas; retry",
        ))
    }

    /// Stops validating `ty` (its versions stay).
    pub async fn delete(&self, ty: String) -> Result<SchemaType, SchemaError> {
        for attempt in 0..CAS_TRIES {
            backoff(attempt).await;
            let Some((mut t, rev)) = self.fetch(&ty).await? else {
                return Err(SchemaError::NotFound(ty));
            };
            if !t.active() {
                return Err(SchemaError::AlreadyDeleted(ty));
            }
            t.deleted_at = Some(now());
            if self.commit(&t, Some(rev)).await? {
                return Ok(t);
            }
        }
        Err(unavailable(
            "delete",
            "other instances kept changing this type's schemas; retry",
        ))
    }
}
