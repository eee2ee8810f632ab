//! Durable consumers: named cursors the server keeps for its clients.
//!
//! A consumer has filters (as `GET /events`, with the scope of the
//! credential that created it: [`Filter::scope`], stored with the filter
//! in both files, absent when unrestricted) and a committed cursor: the
//! seq up to which it has acknowledged processing. Reads return the events
//! after the cursor; an ack moves it forward. Delivery is at-least-once:
//! events read but not acked are delivered again.
//!
//! Consumers live in two files the writer thread alone writes: the snapshot
//! `consumers.json`, replaced atomically (temp, fsync, rename, fsync the
//! directory), and `consumers.log`, to which every change appends one small
//! line per consumer it touched (`{"crc":…,"rec":{"put":consumer}}` or
//! `{"crc":…,"rec":{"delete":name}}`, CRC32C of the `rec` text), fsynced
//! before the change is answered, so an answered ack survives a crash and
//! costs the writer one line, not a rewrite of every consumer. Requests
//! queued together share one append and one fsync. Once the log outgrows
//! [`LOG_COMPACT_BYTES`] and twice the snapshot, the snapshot is rewritten
//! and the log emptied (amortized O(1) per change). Each line sets a
//! consumer's whole state, so replaying the log over any newer snapshot
//! gives the same result, a crash between the two steps included. A torn
//! last line (a crash mid-append) is cut away at start, as in segments.
//! Readers use the snapshot in [`Consumers`].
//!
//! A queue consumer (`"mode": "queue"`, [`QueueSpec`]) keeps, beside its
//! definition, a [`QueueLedger`]: an ack floor (every matching event at or
//! below it is done) and the acknowledged and dead seqs above it, plus the
//! dead letters and the seqs redriven out of them. Each ack, dead letter
//! or redrive is one delta line (`{"queue":{"name":…,"floor":…,"ack":[…]}}`)
//! applied in place: O(1) per change for the writer, never a rewrite of the
//! ledger. Deltas are not idempotent (a redrive replayed over a newer
//! snapshot would resurrect an acked event), so while queue consumers exist
//! the snapshot is format version 2 and carries a log generation, the log
//! starts with a `{"gen":N}` line, and a log whose generation is not the
//! snapshot's is older than the snapshot and skipped. Without queue
//! consumers both files stay exactly as version 1 wrote them (so an older
//! msgbus still reads them); a version-1 file loads as before. Creating the
//! first queue consumer writes a version-2 snapshot at once, so an older
//! msgbus refuses the directory instead of misreading the delta lines.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::error::StoreError;
use super::fsutil;
use super::layout::{self, CONSUMERS};
use super::{Filter, Shared};

/// Format version of `consumers.json` ([`layout::CONSUMERS`]) without
/// queue consumers.
pub const VERSION: u32 = 1;
/// Format version of `consumers.json` with queue consumers: adds `queues`
/// (the ledgers) and `log_gen`.
pub const VERSION_QUEUES: u32 = 2;
/// The log is compacted into the snapshot once it is larger than this and
/// than twice the snapshot.
pub const LOG_COMPACT_BYTES: u64 = 1 << 20;

/// One consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Its name (the path segment).
    pub name: String,
    /// What it selects.
    #[serde(default)]
    pub filter: Filter,
    /// The committed cursor: reads return events after this seq.
    pub cursor: u64,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When its filters or cursor last changed (RFC 3339).
    pub updated_at: String,
    /// A work queue shared by workers (`"mode": "queue"`); absent, a
    /// cursor consumer. For a queue, `cursor` is where it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,
}

/// How a queue consumer leases its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// How long a fetched event stays leased to its worker, in ms.
    pub lease_ms: u64,
    /// Deliveries after which an unacknowledged event becomes a dead letter.
    pub max_deliver: u32,
    /// At most one event per CloudEvents `subject` in flight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered_by_subject: bool,
}

/// A queue consumer's durable acknowledgements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLedger {
    /// Every matching event at or below it is acknowledged or dead
    /// (except the seqs in `redo`).
    pub floor: u64,
    /// Acknowledged seqs above the floor.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub acked: BTreeSet<u64>,
    /// Dead letters, by seq (below the floor too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead: BTreeMap<u64, DeadLetter>,
    /// Seqs redriven out of the dead letters: waiting for delivery again
    /// whatever the floor says.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub redo: BTreeSet<u64>,
}

impl QueueLedger {
    /// True when `seq` is acknowledged or dead (and not redriven).
    pub fn is_done(&self, seq: u64) -> bool {
        !self.redo.contains(&seq)
            && (seq <= self.floor || self.acked.contains(&seq) || self.dead.contains_key(&seq))
    }

    fn apply(&mut self, d: &QueueDelta) {
        if d.reset {
            *self = QueueLedger {
                floor: d.floor,
                ..Default::default()
            };
            return;
        }
        for s in &d.redrive {
            if self.dead.remove(s).is_some() {
                self.redo.insert(*s);
            }
        }
        let floor = self.floor.max(d.floor);
        for s in &d.ack {
            self.redo.remove(s);
            if *s > floor {
                self.acked.insert(*s);
            }
        }
        for (s, dl) in &d.dead {
            self.redo.remove(s);
            self.dead.insert(*s, dl.clone());
        }
        if floor > self.floor {
            // Amortized O(1) per ack: each entry is dropped once.
            self.floor = floor;
            self.acked = self.acked.split_off(&(floor + 1));
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Deliveries it had.
    pub attempts: u32,
    /// When it died (RFC 3339).
    pub at: String,
    /// Why: `"nacked"` or `"lease expired"`.
    pub reason: String,
}

/// One change to a queue ledger (a log line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDelta {
    /// The consumer.
    pub name: String,
    /// Start over at `floor` (creation, or a new `start`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// The floor may move up to this (every matching seq at or below it
    /// is done or in this change).
    pub floor: u64,
    /// Seqs acknowledged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ack: Vec<u64>,
    /// Seqs set aside as dead letters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead: Vec<(u64, DeadLetter)>,
    /// Dead letters put back in the queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrive: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct ConsumersFile {
    version: u32,
    consumers: Vec<Consumer>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    queues: BTreeMap<String, QueueLedger>,
    #[serde(default, skip_serializing_if = "is_zero")]
    log_gen: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The committed consumers, published by the writer for readers, and the
/// writer's bookkeeping of the log.
#[derive(Debug, Default)]
pub struct Consumers(
    RwLock<BTreeMap<String, Consumer>>,
    std::sync::Mutex<LogState>,
    RwLock<BTreeMap<String, QueueLedger>>,
);

/// Sizes of the two files, for deciding when to compact.
#[derive(Debug, Default)]
struct LogState {
    /// Bytes in `consumers.log`.
    log_bytes: u64,
    /// Bytes of the last snapshot written.
    snapshot_bytes: u64,
    /// An append failed and could not be cut back: the next change writes
    /// a snapshot and empties the log instead of appending after it.
    broken: bool,
    /// Generation of the snapshot (0: a version-1 snapshot); the log's
    /// first line names it while it is not 0.
    gen: u64,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogRec {
    Put(Consumer),
    Delete(String),
    Queue(QueueDelta),
    Gen(u64),
}

#[derive(Deserialize)]
struct LogLine<'a> {
    crc: String,
    #[serde(borrow)]
    rec: &'a serde_json::value::RawValue,
}

impl Consumers {
    /// The committed consumers as the snapshot file's bytes (what a
    /// backup holds).
    pub fn snapshot(&self) -> Vec<u8> {
        let gen = self.1.lock().unwrap_or_else(|e| e.into_inner()).gen;
        snapshot_bytes(&self.read(), &self.ledgers(), gen)
    }

    fn ledgers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, QueueLedger>> {
        self.2.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A queue consumer's ledger, as last committed.
    pub fn ledger(&self, name: &str) -> Option<QueueLedger> {
        self.ledgers().get(name).cloned()
    }

    /// Calls `f` with a queue consumer's ledger, without copying it.
    pub fn with_ledger<T>(&self, name: &str, f: impl FnOnce(Option<&QueueLedger>) -> T) -> T {
        f(self.ledgers().get(name))
    }

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
#[derive(Debug, Clone)]
pub struct ConsumerStats {
    /// Durable consumers.
    pub count: u64,
    /// The largest lag.
    pub max_lag: u64,
    /// Per consumer: events stored after its committed cursor.
    pub lag: BTreeMap<String, u64>,
}

/// Loads `consumers.json` (none yet is an empty set) and replays
/// `consumers.log` over it, cutting away a torn last line. Called at
/// startup, after the data directory's lock is held and stale temp files
/// are gone.
pub fn load(data_dir: &Path) -> Result<Consumers, StoreError> {
    let path = layout::consumers_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::file("read", &path, e)),
    };
    let mut map = BTreeMap::new();
    let mut ledgers = BTreeMap::new();
    let mut gen = 0;
    if !bytes.is_empty() {
        let file: ConsumersFile = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "{} is not a valid consumers file ({e}); it is only ever replaced atomically, \
                 so this is damage: restore it from a backup or move it aside to start without consumers",
                path.display()
            ))
        })?;
        if file.version != VERSION && file.version != VERSION_QUEUES {
            return Err(StoreError::Corrupt(format!(
                "{} has format version {}, this msgbus reads versions {VERSION} and {VERSION_QUEUES}",
                path.display(),
                file.version
            )));
        }
        map = file
            .consumers
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        ledgers = file.queues;
        gen = file.log_gen;
    }
    let log_bytes = replay_log(data_dir, gen, &mut map, &mut ledgers)?;
    // A queue consumer without a ledger (none can be written so, but a
    // hand-edited file could) starts at its cursor.
    for c in map.values().filter(|c| c.queue.is_some()) {
        ledgers
            .entry(c.name.clone())
            .or_insert_with(|| QueueLedger {
                floor: c.cursor,
                ..Default::default()
            });
    }
    ledgers.retain(|name, _| map.get(name).is_some_and(|c| c.queue.is_some()));
    Ok(Consumers(
        RwLock::new(map),
        std::sync::Mutex::new(LogState {
            log_bytes,
            snapshot_bytes: bytes.len() as u64,
            broken: false,
            gen,
        }),
        RwLock::new(ledgers),
    ))
}

/// Applies every whole, intact line of the log to `map`; a damaged or
/// partial last line is a crash mid-append and is cut away. A log of
/// another generation than the snapshot's (`gen`) is older than the
/// snapshot (a crash between writing the snapshot and emptying the log):
/// it is emptied. Returns the log's length afterwards.
fn replay_log(
    data_dir: &Path,
    gen: u64,
    map: &mut BTreeMap<String, Consumer>,
    ledgers: &mut BTreeMap<String, QueueLedger>,
) -> Result<u64, StoreError> {
    let path = layout::consumers_log_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::file("read", &path, e)),
    };
    let truncate = |len: usize| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len as u64).and_then(|()| f.sync_all()))
            .map_err(|e| StoreError::file("truncate", &path, e))
    };
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let newline = rest.iter().position(|&b| b == b'\n');
        let (line, next) = match newline {
            Some(i) => (&rest[..i], offset + i + 1),
            None => (rest, bytes.len()),
        };
        match parse_line(line) {
            Some(rec) if newline.is_some() => {
                if offset == 0 {
                    let log_gen = match &rec {
                        LogRec::Gen(g) => *g,
                        _ => 0,
                    };
                    if log_gen != gen {
                        tracing::info!(path = %path.display(), log_gen, gen,
                            "the consumers log is older than the snapshot (a crash between a compaction's two steps); emptying it");
                        truncate(0)?;
                        return Ok(0);
                    }
                }
                match rec {
                    LogRec::Put(c) => {
                        map.insert(c.name.clone(), c);
                    }
                    LogRec::Delete(name) => {
                        map.remove(&name);
                        ledgers.remove(&name);
                    }
                    LogRec::Queue(d) => {
                        if d.reset {
                            ledgers.insert(d.name.clone(), QueueLedger::default());
                        }
                        if let Some(l) = ledgers.get_mut(&d.name) {
                            l.apply(&d);
                        }
                    }
                    LogRec::Gen(_) => {}
                }
                offset = next;
            }
            _ if next >= bytes.len() => {
                tracing::warn!(path = %path.display(), offset, bytes = bytes.len() - offset,
                    "cutting a torn last line from the consumers log (a crash mid-append; it was never acknowledged)");
                truncate(offset)?;
                return Ok(offset as u64);
            }
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "{} is damaged at offset {offset} and valid lines follow; restore the \
                     consumers from a backup or move the file aside (cursors fall back to {CONSUMERS})",
                    path.display()
                )))
            }
        }
    }
    Ok(bytes.len() as u64)
}

fn parse_line(line: &[u8]) -> Option<LogRec> {
    let l: LogLine<'_> = serde_json::from_slice(line).ok()?;
    let crc = u32::from_str_radix(&l.crc, 16).ok()?;
    if crc32c::crc32c(l.rec.get().as_bytes()) != crc {
        return None;
    }
    serde_json::from_str(l.rec.get()).ok()
}

fn log_line(out: &mut Vec<u8>, rec: &LogRec) {
    let text = serde_json::to_vec(rec).expect("a consumer record serializes");
    out.extend_from_slice(
        format!("{{\"crc\":\"{:08x}\",\"rec\":", crc32c::crc32c(&text)).as_bytes(),
    );
    out.extend_from_slice(&text);
    out.extend_from_slice(b"}\n");
}

fn snapshot_bytes(
    consumers: &BTreeMap<String, Consumer>,
    ledgers: &BTreeMap<String, QueueLedger>,
    gen: u64,
) -> Vec<u8> {
    let queues = consumers.values().any(|c| c.queue.is_some());
    let file = ConsumersFile {
        version: if queues { VERSION_QUEUES } else { VERSION },
        consumers: consumers.values().cloned().collect(),
        queues: if queues {
            ledgers.clone()
        } else {
            BTreeMap::new()
        },
        log_gen: if queues { gen } else { 0 },
    };
    let mut bytes = serde_json::to_vec_pretty(&file).expect("consumers serialize");
    bytes.push(b'\n');
    bytes
}

/// Makes the change durable: appends `changed`'s lines and `deltas` to
/// the log and fsyncs it, or, when the log has grown past its bound (or an
/// earlier append left it unusable, or the first queue consumer needs a
/// version-2 snapshot), writes the snapshot and empties the log.
/// `ledgers_after` builds the ledgers with `deltas` applied (only for a
/// snapshot).
fn store(
    shared: &Shared,
    map: &BTreeMap<String, Consumer>,
    changed: &[String],
    deltas: &[QueueDelta],
    ledgers_after: impl FnOnce() -> BTreeMap<String, QueueLedger>,
) -> std::io::Result<()> {
    let data_dir = &shared.data_dir;
    let mut state = shared.consumers.1.lock().unwrap_or_else(|e| e.into_inner());
    let queues = map.values().any(|c| c.queue.is_some());
    // Delta lines need a generation-tagged log (see the module docs).
    let needs_gen = queues && state.gen == 0;
    // First the change's own lines, so the log always ends with the newest
    // state even if a compaction below is cut short by a crash.
    let appended = !state.broken && !needs_gen;
    if appended {
        append(data_dir, &mut state, map, changed, deltas)?;
    }
    if needs_gen
        || state.broken
        || state.log_bytes > LOG_COMPACT_BYTES.max(state.snapshot_bytes.saturating_mul(2))
    {
        if let Err(e) = compact(data_dir, &mut state, map, &ledgers_after(), queues) {
            if !appended {
                return Err(e);
            }
            // The change is durable in the log; compaction is retried at
            // the next change.
            tracing::warn!(error = %e, "compacting the consumers log failed; retried at the next change");
        }
    }
    Ok(())
}

/// Writes the snapshot and empties the log.
fn compact(
    data_dir: &Path,
    state: &mut LogState,
    map: &BTreeMap<String, Consumer>,
    ledgers: &BTreeMap<String, QueueLedger>,
    queues: bool,
) -> std::io::Result<()> {
    let gen = if queues { state.gen + 1 } else { 0 };
    let bytes = snapshot_bytes(map, ledgers, gen);
    fsutil::write_atomic(&layout::consumers_path(data_dir), &bytes)?;
    state.snapshot_bytes = bytes.len() as u64;
    state.gen = gen;
    // The snapshot holds everything: the log may go (a crash before it is
    // emptied replays it over the snapshot, which ends in the same state,
    // or skips it when its generation is older).
    let log = layout::consumers_log_path(data_dir);
    match std::fs::OpenOptions::new().write(true).open(&log) {
        Ok(f) => {
            f.set_len(0)?;
            f.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    state.log_bytes = 0;
    state.broken = false;
    Ok(())
}

/// Appends the lines of the `changed` consumers and the `deltas`, and
/// fsyncs the log.
fn append(
    data_dir: &Path,
    state: &mut LogState,
    map: &BTreeMap<String, Consumer>,
    changed: &[String],
    deltas: &[QueueDelta],
) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(changed.len() * 256 + deltas.len() * 64);
    if state.log_bytes == 0 && state.gen != 0 {
        log_line(&mut lines, &LogRec::Gen(state.gen));
    }
    for name in changed {
        match map.get(name) {
            Some(c) => log_line(&mut lines, &LogRec::Put(c.clone())),
            None => log_line(&mut lines, &LogRec::Delete(name.clone())),
        }
    }
    for d in deltas {
        log_line(&mut lines, &LogRec::Queue(d.clone()));
    }
    let path = layout::consumers_log_path(data_dir);
    let created = state.log_bytes == 0 && !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let written = std::io::Write::write_all(&mut f, &lines).and_then(|()| f.sync_data());
    if let Err(e) = written {
        // Cut back what may have reached the file, so nothing follows a
        // half-written line; if even that fails, compact next time.
        if f.set_len(state.log_bytes)
            .and_then(|()| f.sync_data())
            .is_err()
        {
            state.broken = true;
        }
        return Err(e);
    }
    if created {
        fsutil::fsync_dir(data_dir)?;
    }
    state.log_bytes += lines.len() as u64;
    Ok(())
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
    /// The consumer is a cursor consumer, and this is queue work (409).
    #[error(
        "consumer {0:?} is a cursor consumer; this needs a queue consumer (\"mode\": \"queue\")"
    )]
    NotQueue(String),
    /// A consumer's mode is fixed at creation (409).
    #[error("consumer {name:?} is a {mode} consumer; its mode cannot change (delete it and create it again)")]
    ModeChange {
        /// The consumer.
        name: String,
        /// Its mode.
        mode: &'static str,
    },
    /// The event is already acknowledged (409).
    #[error("seq {0} is already acknowledged")]
    AlreadyAcked(u64),
    /// The event is a dead letter (409).
    #[error("seq {0} is a dead letter; redrive it first")]
    Dead(u64),
    /// A redrive of a seq that is not a dead letter (409).
    #[error("seq {0} is not a dead letter")]
    NotDead(u64),
    /// The acknowledged and dead seqs kept above the ack floor would pass
    /// `--queue-max-acked` (429: the floor moves once the oldest leased
    /// events are acked or expire).
    #[error("the consumer keeps {limit} acknowledged or dead events above its ack floor, the most allowed (--queue-max-acked); ack or let expire the oldest leased events first")]
    TooManyAcked {
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
        filter: Filter,
        /// Where to put its cursor.
        start: Option<Start>,
        /// Most consumers there may be; creating one more is refused.
        max_consumers: usize,
        /// A queue consumer's settings; none for a cursor consumer.
        queue: Option<QueueSpec>,
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
    /// Acknowledge, dead-letter or redrive events of a queue consumer
    /// (`change.reset` is ignored). Answers the new floor.
    Queue {
        /// The change.
        change: QueueDelta,
        /// Most acknowledged and dead seqs there may be above the floor.
        max_acked: usize,
        /// The answer.
        reply: Reply<u64>,
    },
}

/// What earlier requests of one batch did to a queue's ledger, which the
/// requests after them are checked against.
#[derive(Default)]
struct Pending {
    touched: HashSet<u64>,
    floor: u64,
    added: usize,
}

type Answer = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Writer side: applies `requests` in order to a copy of the consumers,
/// writes the file once (fsynced) if anything changed, then publishes the
/// copy and answers. If the write fails, nothing changes and every request
/// that needed it gets the error. `head` is the newest committed seq.
pub(super) fn apply(shared: &Shared, requests: Vec<Request>, head: u64) {
    if let Some(reason) = shared.poison_reason() {
        for r in requests {
            refuse(r, super::WriteRefusal::Poisoned(reason.clone()).into());
        }
        return;
    }
    let first_seq = shared.index().first_seq();
    let mut map = shared.consumers.read().clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut changed: Vec<String> = Vec::new();
    let mut deltas: Vec<QueueDelta> = Vec::new();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let ledgers = shared.consumers.ledgers();
    let mut answers: Vec<Answer> = Vec::with_capacity(requests.len());
    for r in requests {
        answers.push(match r {
            Request::Put {
                name,
                filter,
                start,
                max_consumers,
                queue,
                reply,
            } => {
                let existing = map.get(&name).cloned();
                let cursor = match (start, &existing) {
                    (_, None) if map.len() >= max_consumers => Err(ConsumerError::TooMany {
                        limit: max_consumers,
                    }),
                    (_, Some(c)) if c.queue.is_some() != queue.is_some() => {
                        Err(ConsumerError::ModeChange {
                            name: name.clone(),
                            mode: if c.queue.is_some() { "queue" } else { "cursor" },
                        })
                    }
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
                    if queue.is_some() && (created || start.is_some()) {
                        pending.remove(&name);
                        deltas.push(QueueDelta {
                            name: name.clone(),
                            reset: true,
                            floor: cursor,
                            ..Default::default()
                        });
                    }
                    let c = Consumer {
                        name: name.clone(),
                        filter,
                        cursor,
                        created_at: existing.map_or_else(|| now.clone(), |c| c.created_at),
                        updated_at: now.clone(),
                        queue,
                    };
                    changed.push(name.clone());
                    map.insert(name, c.clone());
                    (c, created)
                });
                answer(reply, result)
            }
            Request::Delete { name, reply } => {
                let result = map
                    .remove(&name)
                    .ok_or(ConsumerError::NotFound(name.clone()));
                if result.is_ok() {
                    pending.remove(&name);
                    changed.push(name);
                }
                answer(reply, result)
            }
            Request::Queue {
                change,
                max_acked,
                reply,
            } => {
                let result = check_queue(&map, &ledgers, &mut pending, &change, head, max_acked);
                if result.is_ok() {
                    deltas.push(QueueDelta {
                        reset: false,
                        ..change
                    });
                }
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
                            changed.push(name.clone());
                        }
                        Ok(c.clone())
                    }
                };
                answer(reply, result)
            }
        });
    }
    changed.sort_unstable();
    changed.dedup();
    let apply_deltas = |ledgers: &mut BTreeMap<String, QueueLedger>| {
        for d in &deltas {
            if d.reset {
                ledgers.insert(d.name.clone(), QueueLedger::default());
            }
            if let Some(l) = ledgers.get_mut(&d.name) {
                l.apply(d);
            }
        }
        ledgers.retain(|name, _| map.get(name).is_some_and(|c| c.queue.is_some()));
    };
    let failure = if !changed.is_empty() || !deltas.is_empty() {
        let stored = store(shared, &map, &changed, &deltas, || {
            let mut after = ledgers.clone();
            apply_deltas(&mut after);
            after
        });
        drop(ledgers);
        match stored {
            Ok(()) => {
                apply_deltas(
                    &mut shared
                        .consumers
                        .2
                        .write()
                        .unwrap_or_else(|e| e.into_inner()),
                );
                *shared
                    .consumers
                    .0
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = map;
                None
            }
            Err(e) => {
                let path = layout::consumers_log_path(&shared.data_dir);
                tracing::error!(error = %e, path = %path.display(), "writing the consumers log failed; the change is not applied");
                Some(StoreError::file("write", &path, e))
            }
        }
    } else {
        None
    };
    for a in answers {
        a(failure.clone());
    }
}

/// Checks a queue change against the committed ledger and the earlier
/// requests of the batch; answers the floor it leaves.
fn check_queue(
    map: &BTreeMap<String, Consumer>,
    ledgers: &BTreeMap<String, QueueLedger>,
    pending: &mut BTreeMap<String, Pending>,
    change: &QueueDelta,
    head: u64,
    max_acked: usize,
) -> Result<u64, ConsumerError> {
    let name = &change.name;
    match map.get(name) {
        None => return Err(ConsumerError::NotFound(name.clone())),
        Some(c) if c.queue.is_none() => return Err(ConsumerError::NotQueue(name.clone())),
        Some(_) => {}
    }
    let empty = QueueLedger::default();
    let ledger = ledgers.get(name).unwrap_or(&empty);
    let p = pending.entry(name.clone()).or_default();
    let mut seen = HashSet::new();
    for &s in change.ack.iter().chain(change.dead.iter().map(|(s, _)| s)) {
        if s > head {
            return Err(ConsumerError::PastHead { seq: s, head });
        }
        if ledger.dead.contains_key(&s) && !ledger.redo.contains(&s) {
            return Err(ConsumerError::Dead(s));
        }
        if ledger.is_done(s) || p.touched.contains(&s) || !seen.insert(s) {
            return Err(ConsumerError::AlreadyAcked(s));
        }
    }
    for &s in &change.redrive {
        if !ledger.dead.contains_key(&s) || p.touched.contains(&s) || !seen.insert(s) {
            return Err(ConsumerError::NotDead(s));
        }
    }
    let floor = ledger.floor.max(p.floor).max(change.floor);
    // Entries kept above the floor afterwards: a change that only moves
    // the floor or shrinks the set is always accepted.
    let before = ledger.acked.len() + ledger.dead.len() + p.added;
    let grows = change.ack.iter().filter(|s| **s > floor).count() + change.dead.len();
    let freed = if floor > ledger.floor {
        ledger.acked.range(ledger.floor + 1..=floor).count()
    } else {
        0
    };
    if grows > freed && before + grows - freed > max_acked {
        return Err(ConsumerError::TooManyAcked { limit: max_acked });
    }
    p.touched.extend(seen);
    p.floor = floor;
    p.added = (p.added + grows).saturating_sub(freed);
    Ok(floor)
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
        Request::Queue { reply, .. } => {
            let _ = reply.send(Err(e.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::{
        Consumer, ConsumerStart, Filter, Matcher, Scope, Store, StoreConfig, StoreHandle,
    };

    fn config(dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            data_dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            queue_capacity: 64,
            read_cache_bytes: 1 << 20,
            key_filter_headroom: crate::store::keyfilter::DEFAULT_HEADROOM,
            backup_keep: 1,
            backup_copies: crate::store::backup::Copies::Two,
            backup_read_rate: 0,
            segment_fd_cache: 4,
            retention: Default::default(),
        }
    }

    fn open(dir: &std::path::Path) -> (StoreHandle, super::super::handle::WriterThread) {
        let alerts = Arc::new(crate::alerts::Alerts::new(16, None));
        StoreHandle::open(&config(dir), alerts).expect("the store opens")
    }

    /// Types and sources of the events stored, by seq (1-based).
    fn names(seq: u64) -> (&'static str, &'static str) {
        let ty = ["order.created", "order.paid", "user.created"][(seq % 3) as usize];
        let source = ["/shop/eu", "/shop/us", "/crm"][(seq / 3 % 3) as usize];
        (ty, source)
    }

    async fn append(store: &StoreHandle, seqs: std::ops::RangeInclusive<u64>) {
        let events = seqs
            .map(|seq| {
                let (ty, source) = names(seq);
                crate::event::from_structured(
                    serde_json::json!({"type": ty, "source": source, "id": seq.to_string()}),
                    "",
                    crate::event::Limits {
                        max_event_bytes: 1 << 20,
                    },
                )
                .expect("a valid event")
            })
            .collect();
        store.append(events).await.expect("appended");
    }

    /// The seqs `c` reads after its cursor, as a consumer read does.
    async fn read(store: &StoreHandle, c: &Consumer) -> Vec<u64> {
        let m = Matcher::new(c.filter.clone());
        let page = store
            .read_cursor(c.cursor, &m, 1000, 1 << 20)
            .await
            .expect("read");
        page.events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn a_scoped_consumer_keeps_its_scope_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let scope = Scope {
            type_prefixes: vec!["order.".into()],
            source_prefixes: vec!["/shop/".into()],
        };
        let allowed = |seq: &u64| {
            let (ty, source) = names(*seq);
            scope.allows(ty, source)
        };
        let filter = Filter {
            scope: scope.clone(),
            ..Default::default()
        };
        let (store, writer) = open(dir.path());
        append(&store, 1..=30).await;
        let (c, created) = store
            .put_consumer(
                "scoped".into(),
                filter.clone(),
                Some(ConsumerStart::Earliest),
                10,
                None,
            )
            .await
            .expect("created");
        assert!(created);
        store
            .put_consumer("plain".into(), Filter::default(), None, 10, None)
            .await
            .expect("created");
        let want: Vec<u64> = (1..=30).filter(allowed).collect();
        assert!(want.len() < 30 && !want.is_empty());
        assert_eq!(read(&store, &c).await, want);
        store.ack("scoped".into(), 15).await.expect("acked");
        store.close().await;
        writer.join().await;

        // From consumers.log.
        let (store, writer) = open(dir.path());
        append(&store, 31..=60).await;
        let c = store.consumer("scoped").expect("still there");
        assert_eq!((&c.filter, c.cursor), (&filter, 15));
        let want: Vec<u64> = (16..=60).filter(allowed).collect();
        assert_eq!(read(&store, &c).await, want, "after a restart");
        let plain = store.consumer("plain").expect("still there");
        assert_eq!(plain.filter, Filter::default());
        assert_eq!(read(&store, &plain).await.len(), 60);
        let snapshot = store.shared.consumers.snapshot();
        store.close().await;
        writer.join().await;

        // From consumers.json alone (as after a compaction or a restore).
        std::fs::write(super::layout::consumers_path(dir.path()), &snapshot).unwrap();
        std::fs::remove_file(super::layout::consumers_log_path(dir.path())).unwrap();
        let (store, writer) = open(dir.path());
        let c = store.consumer("scoped").expect("still there");
        assert_eq!((&c.filter, c.cursor), (&filter, 15));
        assert_eq!(read(&store, &c).await, want, "from the snapshot");
        store.close().await;
        writer.join().await;
    }

    #[tokio::test]
    async fn a_consumers_file_written_before_scopes_loads_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{
  "version": 1,
  "consumers": [
    {
      "name": "old",
      "filter": {
        "type_prefix": "order."
      },
      "cursor": 0,
      "created_at": "2026-01-01T00:00:00.000Z",
      "updated_at": "2026-01-01T00:00:00.000Z"
    }
  ]
}
"#;
        std::fs::write(super::layout::consumers_path(dir.path()), old).unwrap();
        let (store, writer) = open(dir.path());
        let c = store.consumer("old").expect("loaded");
        assert_eq!(
            c.filter,
            Filter {
                type_prefix: Some("order.".into()),
                ..Default::default()
            }
        );
        assert!(c.filter.scope.is_unrestricted());
        append(&store, 1..=9).await;
        let want: Vec<u64> = (1..=9)
            .filter(|s| names(*s).0.starts_with("order."))
            .collect();
        assert_eq!(read(&store, &c).await, want, "every source, as before");
        assert_eq!(
            String::from_utf8(store.shared.consumers.snapshot()).unwrap(),
            old,
            "written back exactly as it was"
        );
        store.close().await;
        writer.join().await;
    }

    #[tokio::test]
    async fn a_queue_ledger_survives_restarts_and_a_stale_log_is_skipped() {
        use crate::store::{DeadLetter, QueueDelta, QueueSpec};
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(dir.path());
        append(&store, 1..=10).await;
        store
            .put_consumer("old".into(), Filter::default(), None, 10, None)
            .await
            .unwrap();
        let spec = QueueSpec {
            lease_ms: 1000,
            max_deliver: 3,
            ordered_by_subject: false,
        };
        store
            .put_consumer("q".into(), Filter::default(), None, 10, Some(spec))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(super::layout::consumers_path(dir.path())).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["version"], 2,
            "the first queue consumer writes a version-2 snapshot at once"
        );
        let change = |floor, ack: Vec<u64>, dead: Vec<u64>, redrive: Vec<u64>| QueueDelta {
            name: "q".into(),
            floor,
            ack,
            dead: dead
                .into_iter()
                .map(|s| {
                    (
                        s,
                        DeadLetter {
                            attempts: 3,
                            at: "t".into(),
                            reason: "r".into(),
                        },
                    )
                })
                .collect(),
            redrive,
            reset: false,
        };
        store
            .queue_change(change(0, vec![2, 3], vec![], vec![]), 100)
            .await
            .unwrap();
        store
            .queue_change(change(3, vec![1], vec![5], vec![]), 100)
            .await
            .unwrap();
        let err = store
            .queue_change(change(0, vec![3], vec![], vec![]), 100)
            .await
            .unwrap_err();
        assert!(
            matches!(err, super::ConsumerError::AlreadyAcked(3)),
            "{err}"
        );
        let err = store
            .queue_change(change(0, vec![5], vec![], vec![]), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, super::ConsumerError::Dead(5)), "{err}");
        let err = store
            .queue_change(change(0, vec![6, 7], vec![], vec![]), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, super::ConsumerError::TooManyAcked { limit: 1 }),
            "{err}"
        );
        let before_redrive = store.shared.consumers.snapshot();
        store
            .queue_change(change(0, vec![], vec![], vec![5]), 100)
            .await
            .unwrap();
        store
            .queue_change(change(5, vec![5], vec![], vec![]), 100)
            .await
            .unwrap();
        let want = store.shared.consumers.ledger("q").unwrap();
        assert_eq!((want.floor, want.dead.len(), want.redo.len()), (5, 0, 0));
        let log = std::fs::read(super::layout::consumers_log_path(dir.path())).unwrap();
        store.close().await;
        writer.join().await;

        // From the log.
        let (store, writer) = open(dir.path());
        assert_eq!(store.shared.consumers.ledger("q").unwrap(), want);
        assert!(store.consumer("old").unwrap().queue.is_none());
        store.close().await;
        writer.join().await;

        // A snapshot newer than the log (a crash between a compaction's
        // two steps), in which 5 is a dead letter (again): the log's
        // "redrive 5, ack 5" must not be replayed over it.
        let mut snap: serde_json::Value = serde_json::from_slice(&before_redrive).unwrap();
        snap["log_gen"] = serde_json::json!(snap["log_gen"].as_u64().unwrap() + 1);
        let newer: super::QueueLedger =
            serde_json::from_value(snap["queues"]["q"].clone()).unwrap();
        assert!(newer.dead.contains_key(&5));
        std::fs::write(
            super::layout::consumers_path(dir.path()),
            serde_json::to_vec(&snap).unwrap(),
        )
        .unwrap();
        std::fs::write(super::layout::consumers_log_path(dir.path()), &log).unwrap();
        let (store, writer) = open(dir.path());
        assert_eq!(
            store.shared.consumers.ledger("q").unwrap(),
            newer,
            "the stale log was skipped"
        );
        // Deleting the last queue consumer goes back to version 1 at the
        // next snapshot.
        store.delete_consumer("q".into()).await.unwrap();
        assert!(store.shared.consumers.ledger("q").is_none());
        let snap: serde_json::Value =
            serde_json::from_slice(&store.shared.consumers.snapshot()).unwrap();
        assert_eq!(snap["version"], 1);
        store.close().await;
        writer.join().await;
    }
}
