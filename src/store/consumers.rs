//! Durable consumers: named cursors the server keeps for its clients.
//!
//! A consumer has filters (as `GET /events`) and a committed cursor: the
//! seq up to which it has acknowledged processing. Reads return the events
//! after the cursor; an ack moves it forward. Delivery is at-least-once:
//! events read but not acked are delivered again.
//!
//! All consumers live in `consumers.json` in the data directory, replaced
//! atomically (temp, fsync, rename, fsync the directory) by the writer
//! thread alone, so an answered ack survives a crash. Acks queued together
//! share one file write. Readers use the snapshot in [`Consumers`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::error::StoreError;
use super::fsutil;
use super::writer::Command;
use super::{Filter, Shared, StoreHandle};

/// File name under the data directory.
pub const FILE_NAME: &str = "consumers.json";
/// Format version of [`FILE_NAME`].
pub const VERSION: u32 = 1;

/// What a consumer selects (the filters of `GET /events`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsumerFilter {
    /// Only events of this exact type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// Only events whose type starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_prefix: Option<String>,
    /// Only events from this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only events with this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl ConsumerFilter {
    /// The index filter.
    pub fn to_filter(&self) -> Filter {
        Filter {
            ty: self.ty.clone(),
            type_prefix: self.type_prefix.clone(),
            source: self.source.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// One consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Its name (the path segment).
    pub name: String,
    /// What it selects.
    #[serde(default)]
    pub filter: ConsumerFilter,
    /// The committed cursor: reads return events after this seq.
    pub cursor: u64,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When its filters or cursor last changed (RFC 3339).
    pub updated_at: String,
}

#[derive(Serialize, Deserialize)]
struct ConsumersFile {
    version: u32,
    consumers: Vec<Consumer>,
}

/// The committed consumers, published by the writer for readers.
#[derive(Debug, Default)]
pub struct Consumers(RwLock<BTreeMap<String, Consumer>>);

impl Consumers {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Consumer>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One consumer.
    pub fn get(&self, name: &str) -> Option<Consumer> {
        self.read().get(name).cloned()
    }

    /// All consumers, by name.
    pub fn list(&self) -> Vec<Consumer> {
        self.read().values().cloned().collect()
    }

    /// The `/stats` view, with lag measured against `head`.
    pub fn stats(&self, head: u64) -> ConsumerStats {
        let lag: BTreeMap<String, u64> = self
            .read()
            .values()
            .map(|c| (c.name.clone(), head.saturating_sub(c.cursor)))
            .collect();
        ConsumerStats {
            count: lag.len() as u64,
            max_lag: lag.values().copied().max().unwrap_or(0),
            lag,
        }
    }
}

/// Consumers as `/stats` shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsumerStats {
    /// Durable consumers.
    pub count: u64,
    /// The largest lag.
    pub max_lag: u64,
    /// Per consumer: events stored after its committed cursor.
    pub lag: BTreeMap<String, u64>,
}

/// Loads `consumers.json` (none yet is an empty set). Called at startup,
/// after the data directory's lock is held and stale temp files are gone.
pub fn load(data_dir: &Path) -> Result<Consumers, StoreError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Consumers::default()),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let file: ConsumersFile = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{} is not a valid consumers file ({e}); it is only ever replaced atomically, \
             so this is damage: restore it from a backup or move it aside to start without consumers",
            path.display()
        ))
    })?;
    if file.version != VERSION {
        return Err(StoreError::Corrupt(format!(
            "{} has format version {}, this msgbus reads version {VERSION}",
            path.display(),
            file.version
        )));
    }
    Ok(Consumers(RwLock::new(
        file.consumers
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
    )))
}

fn store(data_dir: &Path, consumers: &BTreeMap<String, Consumer>) -> std::io::Result<()> {
    let file = ConsumersFile {
        version: VERSION,
        consumers: consumers.values().cloned().collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).expect("consumers serialize");
    bytes.push(b'\n');
    fsutil::write_atomic(&data_dir.join(FILE_NAME), &bytes)
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the oldest retained event.
    Earliest,
    /// After the newest stored event: only events published from now on.
    Latest,
    /// At this seq: the first event delivered is the first match at or after it.
    Seq(u64),
}

/// Why a consumer request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumerError {
    /// No consumer has this name (404).
    #[error("no consumer named {0:?}")]
    NotFound(String),
    /// The ack is behind the committed cursor (409).
    #[error("seq {seq} is behind the committed cursor {cursor}; acks only move forward")]
    Backwards {
        /// The acked seq.
        seq: u64,
        /// The committed cursor.
        cursor: u64,
    },
    /// The ack or start is past the newest stored event (422).
    #[error("seq {seq} is past the newest stored event {head}")]
    PastHead {
        /// The seq asked for.
        seq: u64,
        /// The newest stored seq.
        head: u64,
    },
    /// Creating one more would pass `--max-consumers` (409).
    #[error(
        "there are already {limit} consumers, the most allowed (--max-consumers); delete one first"
    )]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The store refused or failed (mapped like any store error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The writer's answer to a consumer request.
pub type Reply<T> = oneshot::Sender<Result<T, ConsumerError>>;

/// A change to the consumers, executed by the writer.
#[derive(Debug)]
pub enum Request {
    /// Create or update one; `start` (re)positions its cursor and defaults
    /// to [`Start::Earliest`] on creation. Answers `(consumer, created)`.
    Put {
        /// Its name.
        name: String,
        /// Its filters.
        filter: ConsumerFilter,
        /// Where to put its cursor.
        start: Option<Start>,
        /// Most consumers there may be; creating one more is refused.
        max_consumers: usize,
        /// The answer.
        reply: Reply<(Consumer, bool)>,
    },
    /// Delete one. Answers the deleted consumer.
    Delete {
        /// Its name.
        name: String,
        /// The answer.
        reply: Reply<Consumer>,
    },
    /// Commit a consumer's cursor at `seq`. Answers the updated consumer.
    Ack {
        /// Its name.
        name: String,
        /// The seq processed up to and including.
        seq: u64,
        /// The answer.
        reply: Reply<Consumer>,
    },
}

type Answer = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Writer side: applies `requests` in order to a copy of the consumers,
/// writes the file once (fsynced) if anything changed, then publishes the
/// copy and answers. If the write fails, nothing changes and every request
/// that needed it gets the error. `head` is the newest committed seq.
pub fn apply(shared: &Shared, requests: Vec<Request>, head: u64) {
    if let Some(reason) = shared.poison_reason() {
        for r in requests {
            refuse(r, StoreError::Poisoned(reason.clone()));
        }
        return;
    }
    let first_seq = shared.index().first_seq();
    let mut map = shared.consumers.read().clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut changed = false;
    let mut answers: Vec<Answer> = Vec::with_capacity(requests.len());
    for r in requests {
        answers.push(match r {
            Request::Put {
                name,
                filter,
                start,
                max_consumers,
                reply,
            } => {
                let existing = map.get(&name).cloned();
                let cursor = match (start, &existing) {
                    (_, None) if map.len() >= max_consumers => Err(ConsumerError::TooMany {
                        limit: max_consumers,
                    }),
                    (None, Some(c)) => Ok(c.cursor),
                    (None, None) | (Some(Start::Earliest), _) => Ok(first_seq - 1),
                    (Some(Start::Latest), _) => Ok(head),
                    (Some(Start::Seq(s)), _) if s > head.saturating_add(1) => {
                        Err(ConsumerError::PastHead { seq: s, head })
                    }
                    (Some(Start::Seq(s)), _) if s < first_seq => {
                        Err(StoreError::Gone { oldest: first_seq }.into())
                    }
                    (Some(Start::Seq(s)), _) => Ok(s - 1),
                };
                let result = cursor.map(|cursor| {
                    let created = existing.is_none();
                    let c = Consumer {
                        name: name.clone(),
                        filter,
                        cursor,
                        created_at: existing.map_or_else(|| now.clone(), |c| c.created_at),
                        updated_at: now.clone(),
                    };
                    changed = true;
                    map.insert(name, c.clone());
                    (c, created)
                });
                answer(reply, result)
            }
            Request::Delete { name, reply } => {
                let result = map.remove(&name).ok_or(ConsumerError::NotFound(name));
                changed |= result.is_ok();
                answer(reply, result)
            }
            Request::Ack { name, seq, reply } => {
                let result = match map.get_mut(&name) {
                    None => Err(ConsumerError::NotFound(name)),
                    Some(c) if seq < c.cursor => Err(ConsumerError::Backwards {
                        seq,
                        cursor: c.cursor,
                    }),
                    Some(_) if seq > head => Err(ConsumerError::PastHead { seq, head }),
                    Some(c) => {
                        if seq > c.cursor {
                            c.cursor = seq;
                            c.updated_at = now.clone();
                            changed = true;
                        }
                        Ok(c.clone())
                    }
                };
                answer(reply, result)
            }
        });
    }
    let failure = if changed {
        match store(&shared.data_dir, &map) {
            Ok(()) => {
                *shared
                    .consumers
                    .0
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = map;
                None
            }
            Err(e) => {
                let path = shared.data_dir.join(FILE_NAME);
                tracing::error!(error = %e, path = %path.display(), "writing the consumers file failed; the change is not applied");
                Some(StoreError::io(format!("write {}", path.display()), e))
            }
        }
    } else {
        None
    };
    for a in answers {
        a(failure.clone());
    }
}

/// Defers a reply until the file write is known to have succeeded. A
/// refused request is answered with its own error either way; an accepted
/// one gets the write's error if the write failed.
fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, ConsumerError>) -> Answer {
    Box::new(move |failure| {
        let result = match (result, failure) {
            (Ok(_), Some(e)) => Err(ConsumerError::Store(e)),
            (r, _) => r,
        };
        let _ = reply.send(result);
    })
}

fn refuse(r: Request, e: StoreError) {
    match r {
        Request::Put { reply, .. } => {
            let _ = reply.send(Err(e.into()));
        }
        Request::Delete { reply, .. } | Request::Ack { reply, .. } => {
            let _ = reply.send(Err(e.into()));
        }
    }
}

impl StoreHandle {
    async fn consumer_request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ConsumerError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Command::Consumer(make(reply)))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Creates or updates a consumer; answers it and whether it is new.
    /// Creating one when `max_consumers` exist already is refused.
    pub async fn put_consumer(
        &self,
        name: String,
        filter: ConsumerFilter,
        start: Option<Start>,
        max_consumers: usize,
    ) -> Result<(Consumer, bool), ConsumerError> {
        self.consumer_request(|reply| Request::Put {
            name,
            filter,
            start,
            max_consumers,
            reply,
        })
        .await
    }

    /// Deletes a consumer.
    pub async fn delete_consumer(&self, name: String) -> Result<Consumer, ConsumerError> {
        self.consumer_request(|reply| Request::Delete { name, reply })
            .await
    }

    /// Commits a consumer's cursor at `seq`, durably, before answering.
    pub async fn ack(&self, name: String, seq: u64) -> Result<Consumer, ConsumerError> {
        self.consumer_request(|reply| Request::Ack { name, seq, reply })
            .await
    }

    /// The committed consumers.
    pub fn consumers(&self) -> &Consumers {
        &self.shared().consumers
    }
}
