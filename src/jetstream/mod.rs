//! The NATS JetStream backend (`msgbus serve --backend nats`): the same
//! [`Store`] interface over a JetStream stream, so stateless msgbus
//! instances can serve one replicated stream.
//!
//! - a publish is the stored event's bytes (exactly what the file store
//!   writes) as the payload of a message on `<stream>.<type as tokens>`
//!   ([`subject`]), with `Nats-Msg-Id` derived from `(source, id)`; the
//!   event's seq is the stream sequence, answered after the publish ack
//!   (for R3: once a quorum stored it);
//! - a read walks the stream with direct gets (`next_by_subject` from a
//!   seq, with the type filter as the subject filter), filtering `source`
//!   and `subject` itself, bounded in events, bytes and time; on
//!   nats-server 2.11+ one batched direct get answers up to a page of
//!   messages per round trip, on older servers each message is one get; a
//!   "not found" below the known head is confirmed by the stream leader,
//!   since a direct get may be served by a replica that is behind;
//! - the head and its watch follow the stream: an ordered, headers-only
//!   consumer on `<stream>.>` and stream info once a second, so events
//!   published through another msgbus instance wake this one's long-polls
//!   and streams;
//! - health, `/stats` and retention come from the stream's info; the
//!   per-type counts from a subject-filtered stream info every few
//!   seconds (types are subjects), the per-source counts from chunks of
//!   the stream counted once and shared in a KV bucket ([`sources`]);
//!
//! - durable (cursor) consumers live in a KV bucket beside the stream
//!   ([`consumers`]), payload schemas in another ([`schemas`]), each
//!   followed by a KV watch so every instance shares them; queue
//!   consumers are JetStream durable pull consumers, their dead letters
//!   and redriven events in a third bucket, the server's MAX_DELIVERIES
//!   advisories kept in a stream of their own ([`queues`]), where an
//!   ordered queue's window of events leased one per subject is kept
//!   too.
//!
//! This module knows the store only by its interface, snapshot and error
//! types (`tests/architecture.rs` checks it).

pub mod consumers;
pub mod migrate;
pub mod queues;
pub mod schemas;
mod sources;
pub mod subject;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tokio::sync::watch;

use crate::store::{
    BackupInfo, BackupSummary, BoxFuture, Consumer, ConsumerError, ConsumerStart, ConsumerStats,
    EventCounts, EventPage, Filter, IntegrityState, Matcher, Original, Outcome, PreparedEvent,
    QueueDelta, QueueLedger, QueueSpec, RetentionStats, SchemaCatalog, SchemaError, SchemaLimits,
    SchemaType, StatsSnapshot, Status, Store, StoreError, StoredEvent, WriterCounters,
};

/// The oldest nats-server that may run a replicated stream: older ones
/// could lose acknowledged messages when a stream leader was killed.
pub const MIN_REPLICATED_VERSION: (u64, u64, u64) = (2, 10, 11);

/// The oldest nats-server with atomic batch publish.
pub const MIN_ATOMIC_VERSION: (u64, u64, u64) = (2, 12, 0);

/// The oldest nats-server whose direct get answers a batch of messages
/// (`batch`, `max_bytes`, then an end-of-batch status).
pub const MIN_BATCH_GET_VERSION: (u64, u64, u64) = (2, 11, 0);

/// Most messages one batched direct get asks for.
const GET_BATCH: usize = 1000;

/// Longest one read walks the stream before it answers what it has (its
/// `next_after` continues from there).
const READ_TIME: Duration = Duration::from_secs(2);

/// Most messages one read looks at (matching or not) before it answers.
const READ_EXAMINED: usize = 10_000;

/// How often stream info is fetched (head, first seq, leader, counts).
const INFO_EVERY: Duration = Duration::from_secs(1);

/// Most messages in one atomic batch (nats-server's limit); larger batches
/// are published one by one.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// JetStream's error code for an atomic batch holding a `Nats-Msg-Id`
/// already stored (or twice): the whole batch is refused.
const ERR_ATOMIC_DUPLICATE: u64 = 10201;

/// How long a JetStream API request or publish ack may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings of the backend (built from `msgbus serve`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server URLs (`nats://h1:4222`, `tls://...`).
    pub urls: Vec<String>,
    /// The stream's name; its subjects are `<name>.>`.
    pub stream: String,
    /// Replicas of a stream created by msgbus.
    pub replicas: usize,
    /// JetStream's duplicate window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Credentials, TLS and the connect timeout.
    pub connect: ConnectSettings,
    /// Stream limit: most messages (`--retention-max-events`).
    pub max_messages: Option<u64>,
    /// Stream limit: oldest age (`--retention-max-age`).
    pub max_age: Option<Duration>,
    /// Stream limit: most bytes (`--retention-max-bytes`).
    pub max_bytes: Option<u64>,
    /// The largest event msgbus accepts (`--max-event-bytes`), checked
    /// against the servers' largest message at start.
    pub max_event_bytes: u64,
    /// Most events leased at once per queue consumer
    /// (`--queue-max-leases`): its JetStream consumer's MaxAckPending.
    pub queue_max_leases: usize,
}

/// How to connect: credentials, TLS and the connect timeout (the same
/// for `msgbus serve --backend nats` and `msgbus migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// An authentication token.
    pub token: Option<String>,
    /// PEM file of CA certificates to trust for `tls://` servers.
    pub ca_file: Option<PathBuf>,
    /// How long connecting at start may take.
    pub connect_timeout: Duration,
}

/// Room for the headers msgbus sends with an event (`Nats-Msg-Id` and the
/// atomic batch headers).
const HEADER_ROOM: u64 = 512;

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is unusable.
    #[error("{0}")]
    Setting(String),
    /// No server could be reached or the connection was refused.
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server is too old for what was asked.
    #[error(
        "--replicas {replicas} needs nats-server {}.{}.{} or newer, but the server msgbus reached \
         ({server}) runs {version}: older servers could lose messages they had acknowledged when \
         a stream leader was killed. Upgrade the NATS servers, or use --replicas 1",
        MIN_REPLICATED_VERSION.0, MIN_REPLICATED_VERSION.1, MIN_REPLICATED_VERSION.2
    )]
    TooOld {
        /// `--replicas`.
        replicas: usize,
        /// The server's name.
        server: String,
        /// Its version.
        version: String,
    },
    /// The stream could not be created, read or used.
    #[error("JetStream stream {stream}: {detail}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What went wrong.
        detail: String,
    },
}

/// `major.minor.patch` of a server version string (`2.10.11`,
/// `2.12.0-beta.1`); `None` when it is not one.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// The `Nats-Msg-Id` of an event: a hash of its `(source, id)`, so the
/// header stays short and holds no character a header cannot.
pub fn msg_id(source: &str, id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((source.len() as u64).to_be_bytes());
    h.update(source.as_bytes());
    h.update(id.as_bytes());
    hex::encode(h.finalize())
}

/// The attributes of a stored event the backend looks at.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(default, borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    time: Option<Cow<'a, str>>,
}

fn head_of(payload: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice(payload).ok()
}

/// What the info poller last saw of the stream.
#[derive(Debug, Clone, Default)]
struct StreamState {
    /// Oldest stored seq (the next one when empty).
    first_seq: u64,
    /// Newest stored seq.
    last_seq: u64,
    /// Messages stored.
    messages: u64,
    /// Bytes stored.
    bytes: u64,
    /// Why the stream cannot serve, if it cannot.
    unavailable: Option<String>,
}

/// Counters for `/stats` and `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    max_batch: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    prefix: String,
    direct: bool,
    /// Direct gets answer batches (nats-server 2.11+): a catch-up read
    /// asks for many messages in one round trip.
    batched: bool,
    /// The stream takes atomic batches (nats-server 2.12+, `allow_atomic`).
    atomic: bool,
    head: watch::Sender<u64>,
    consumers: Arc<consumers::Consumers>,
    queues: Arc<queues::JsQueues>,
    schemas: Arc<schemas::Schemas>,
    state: Mutex<StreamState>,
    /// Events per type, refreshed by [`count_types`].
    type_counts: Mutex<Arc<TypeCounts>>,
    /// Events per source, refreshed by [`count_sources`].
    sources: sources::SourceCounts,
    /// The per-source counts of complete chunks, shared by every instance.
    sources_kv: async_nats::jetstream::kv::Store,
    counters: Counters,
    settings: Settings,
}

/// The backend: cheap to clone; background tasks stop with
/// [`JetStream::close`] (or when the last clone is dropped).
#[derive(Debug, Clone)]
pub struct JetStream {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in lock(&self.0).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// Connects to the servers of `settings` (credentials and TLS as given),
/// failing at once when none answers.
pub async fn connect(settings: &Settings) -> Result<async_nats::Client, StartError> {
    let c = &settings.connect;
    let mut opts = async_nats::ConnectOptions::new()
        .name("msgbus")
        .connection_timeout(c.connect_timeout);
    if let Some(path) = &c.creds {
        opts = opts.credentials_file(path).await.map_err(|e| {
            StartError::Setting(format!("--nats-creds: cannot read {}: {e}", path.display()))
        })?;
    }
    match (&c.user, &c.password) {
        (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
        (Some(_), None) => {
            return Err(StartError::Setting(
                "--nats-user needs MSGBUS_NATS_PASSWORD".into(),
            ))
        }
        _ => {}
    }
    if let Some(t) = &c.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &c.ca_file {
        if !ca.is_file() {
            return Err(StartError::Setting(format!(
                "--nats-ca-file: {} is not a readable file",
                ca.display()
            )));
        }
        opts = opts.add_root_certificates(ca.clone());
    }
    let mut addrs = Vec::new();
    for u in &settings.urls {
        let a: async_nats::ServerAddr = u
            .parse()
            .map_err(|e| StartError::Setting(format!("--nats-url: {u:?} is not a URL: {e}")))?;
        addrs.push(a);
    }
    if addrs.is_empty() {
        return Err(StartError::Setting("--nats-url names no server".into()));
    }
    opts.connect(addrs.as_slice())
        .await
        .map_err(|source| StartError::Connect {
            urls: settings.urls.join(","),
            source,
        })
}

impl JetStream {
    /// Connects, checks the server version, and finds or creates the
    /// stream; then starts following it.
    pub async fn open(settings: Settings) -> Result<JetStream, StartError> {
        let stream_err = |detail: String| StartError::Stream {
            stream: settings.stream.clone(),
            detail,
        };
        if settings.stream.is_empty()
            || settings
                .stream
                .contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(StartError::Setting(format!(
                "--nats-stream {:?}: a stream name may not be empty nor hold whitespace, '.', '*', '>', '/' or '\\'",
                settings.stream
            )));
        }
        if settings.replicas == 0 || settings.replicas > 5 {
            return Err(StartError::Setting(format!(
                "--replicas {}: JetStream keeps 1 to 5 replicas",
                settings.replicas
            )));
        }
        let client = connect(&settings).await?;
        let info = client.server_info();
        let version = parse_version(&info.version);
        if settings.replicas > 1 && version.is_none_or(|v| v < MIN_REPLICATED_VERSION) {
            return Err(StartError::TooOld {
                replicas: settings.replicas,
                server: info.server_name.clone(),
                version: info.version.clone(),
            });
        }
        let atomic = version.is_some_and(|v| v >= MIN_ATOMIC_VERSION);
        if settings.max_event_bytes + HEADER_ROOM > info.max_payload as u64 {
            tracing::warn!(
                max_event_bytes = settings.max_event_bytes,
                max_payload = info.max_payload,
                "--max-event-bytes plus {HEADER_ROOM} bytes of headers is more than the NATS servers' \
                 max_payload: events near the limit will be answered 503; lower --max-event-bytes \
                 or raise max_payload in the servers' configuration"
            );
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client.clone());
        let prefix = settings.stream.clone();
        let wanted = jetstream::stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            allow_atomic_publish: atomic,
            max_messages: settings
                .max_messages
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_bytes: settings
                .max_bytes
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_age: settings.max_age.unwrap_or_default(),
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| stream_err(format!("cannot find or create it: {e}")))?;
        let sinfo = stream
            .info()
            .await
            .map_err(|e| stream_err(format!("cannot read its info: {e}")))?
            .clone();
        let cfg = &sinfo.config;
        let all = format!("{prefix}.>");
        if !cfg.subjects.iter().any(|s| s == &all) {
            return Err(stream_err(format!(
                "it exists with subjects {:?}, without {all:?}: msgbus stores events on \
                 {all:?}; use another --nats-stream or add the subject",
                cfg.subjects
            )));
        }
        if cfg.num_replicas != settings.replicas {
            tracing::warn!(
                stream = %settings.stream,
                replicas = cfg.num_replicas,
                asked = settings.replicas,
                "the stream exists with another replica count; used as it is (change it with `nats stream edit`)"
            );
        }
        if !cfg.allow_direct {
            tracing::warn!(stream = %settings.stream, "the stream has no direct get (allow_direct); reads go to the stream leader");
        }
        let direct = cfg.allow_direct;
        let batched = direct && version.is_some_and(|v| v >= MIN_BATCH_GET_VERSION);
        let atomic = cfg.allow_atomic_publish;
        if !atomic {
            tracing::info!(stream = %settings.stream, version = %info.version, "no atomic batch publish (nats-server 2.12+ and a stream with allow_atomic): a batch is published one event at a time");
        }
        let state = StreamState {
            first_seq: sinfo.state.first_sequence.max(1),
            last_seq: sinfo.state.last_sequence,
            messages: sinfo.state.messages,
            bytes: sinfo.state.bytes,
            unavailable: None,
        };
        tracing::info!(
            server = %info.server_name,
            version = %info.version,
            stream = %settings.stream,
            replicas = cfg.num_replicas,
            last_seq = state.last_seq,
            "NATS JetStream backend ready"
        );
        let consumers = consumers::Consumers::open(&js, &settings.stream, cfg.num_replicas).await?;
        let schemas =
            schemas::Schemas::open(&js, &settings.stream, cfg.num_replicas, info.max_payload)
                .await?;
        let sources_kv = consumers::open_bucket(
            &js,
            &settings.stream,
            "SOURCES",
            "per-source counts",
            cfg.num_replicas,
        )
        .await?;
        let (head, _) = watch::channel(state.last_seq);
        let queues = queues::JsQueues::open(
            client.clone(),
            js.clone(),
            &settings.stream,
            cfg.num_replicas,
            stream.clone(),
            consumers.clone(),
            settings.queue_max_leases,
            head.subscribe(),
        )
        .await?;
        let shared = Arc::new(Shared {
            client,
            js,
            stream,
            prefix,
            direct,
            batched,
            atomic,
            head,
            consumers: consumers.clone(),
            queues: queues.clone(),
            schemas: schemas.clone(),
            state: Mutex::new(state),
            type_counts: Mutex::default(),
            sources: sources::SourceCounts::default(),
            sources_kv,
            counters: Counters::default(),
            settings,
        });
        let tasks = Arc::new(Tasks::default());
        let weak = || Arc::downgrade(&shared);
        lock(&tasks.0).push(tokio::spawn(every(INFO_EVERY, weak(), poll_info)));
        lock(&tasks.0).push(tokio::spawn(follow(weak())));
        lock(&tasks.0).push(tokio::spawn(every(TYPE_COUNTS_EVERY, weak(), count_types)));
        lock(&tasks.0).push(tokio::spawn(every(
            TYPE_COUNTS_EVERY,
            weak(),
            count_sources,
        )));
        lock(&tasks.0).push(tokio::spawn(async move {
            loop {
                consumers.watch().await;
                tokio::time::sleep(INFO_EVERY).await;
            }
        }));
        lock(&tasks.0).push(tokio::spawn(async move {
            loop {
                queues.follow_dead().await;
                tokio::time::sleep(INFO_EVERY).await;
            }
        }));
        lock(&tasks.0).push(tokio::spawn(async move {
            loop {
                schemas.watch().await;
                tokio::time::sleep(INFO_EVERY).await;
            }
        }));
        Ok(JetStream { shared, tasks })
    }

    /// Stops following the stream and flushes what the client buffers.
    pub async fn close(&self) {
        for t in lock(&self.tasks.0).drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(API_TIMEOUT, self.shared.client.flush()).await;
    }

    /// The stream's subject prefix (its name).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The work queues of the stream, as this instance serves them.
    pub fn queues(&self) -> Arc<queues::JsQueues> {
        self.shared.queues.clone()
    }
}

impl Shared {
    /// The head, or the stream's last seq when `seq` is past the head:
    /// events published through another instance reach this instance's
    /// head within a second, and a client may name one here before that
    /// (read through the other instance, acked through this one).
    async fn head_for(&self, seq: u64) -> u64 {
        let known = *self.head.borrow();
        let head = head_at_least(&self.stream, known, seq).await;
        bump(&self.head, head);
        head
    }
}

/// `head`, or `stream`'s last seq when `seq` is past `head` (an instance's
/// head follows events published through other instances a moment late).
async fn head_at_least(stream: &jetstream::stream::Stream, head: u64, seq: u64) -> u64 {
    if seq <= head {
        return head;
    }
    match tokio::time::timeout(API_TIMEOUT, stream.get_info()).await {
        Ok(Ok(info)) => head.max(info.state.last_sequence),
        _ => head,
    }
}

/// Raises the head to `seq` (never lowers it).
fn bump(head: &watch::Sender<u64>, seq: u64) {
    head.send_if_modified(|h| {
        if seq > *h {
            *h = seq;
            true
        } else {
            false
        }
    });
}

/// Runs `work` every `period` (a late tick delays the next) for as long
/// as the backend lives: the task holds it weakly, so dropping the backend
/// ends it.
async fn every<F, Fut>(period: Duration, shared: std::sync::Weak<Shared>, mut work: F)
where
    F: FnMut(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        work(s).await;
    }
}

/// Fetches stream info ([`every`] [`INFO_EVERY`]): first and last seq,
/// counts, and whether the stream can serve (connected, a leader).
async fn poll_info(s: Arc<Shared>) {
    let got = tokio::time::timeout(API_TIMEOUT, s.stream.get_info()).await;
    let connected = s.client.connection_state() == async_nats::connection::State::Connected;
    let mut st = lock(&s.state);
    match got {
        Ok(Ok(info)) => {
            st.first_seq = info.state.first_sequence.max(1);
            st.last_seq = info.state.last_sequence;
            st.messages = info.state.messages;
            st.bytes = info.state.bytes;
            let no_leader = info
                .cluster
                .as_ref()
                .is_some_and(|c| c.leader.as_deref().is_none_or(str::is_empty))
                && info.config.num_replicas > 1;
            st.unavailable = if !connected {
                Some("not connected to any NATS server".into())
            } else if no_leader {
                Some(format!("stream {} has no leader", s.prefix))
            } else {
                None
            };
            bump(&s.head, info.state.last_sequence);
        }
        Ok(Err(e)) => {
            st.unavailable = Some(if connected {
                format!("cannot read stream {}: {e}", s.prefix)
            } else {
                "not connected to any NATS server".into()
            })
        }
        Err(_) => {
            st.unavailable = Some(if connected {
                format!("stream {} did not answer within {API_TIMEOUT:?}", s.prefix)
            } else {
                "not connected to any NATS server".into()
            })
        }
    }
}

/// Follows new messages with an ordered, headers-only consumer and
/// raises the head at each: events published through any msgbus instance
/// wake this one's waiters at once. Recreated after any failure (the info
/// poller covers the gap).
async fn follow(shared: std::sync::Weak<Shared>) {
    use futures_util::StreamExt;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let consumer = s
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.>", s.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                headers_only: true,
                ..Default::default()
            })
            .await;
        let head = s.head.clone();
        drop(s);
        let messages = match consumer {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::debug!(error = %e, "cannot create the ordered consumer; retrying");
                tokio::time::sleep(INFO_EVERY).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow the stream; retrying");
                tokio::time::sleep(INFO_EVERY).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            match m {
                Ok(m) => {
                    if let Ok(info) = m.info() {
                        bump(&head, info.stream_sequence);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the ordered consumer failed; recreating it");
                    break;
                }
            }
            if shared.strong_count() == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the messages per subject (the per-type counts of `/stats`)
/// are read from the stream: a subject-filtered stream info lists every
/// subject, so it is read more rarely than the plain info.
const TYPE_COUNTS_EVERY: Duration = Duration::from_secs(5);

/// Most subjects (types) read for the per-type counts: one page of
/// nats-server's subject listing. The messages of the subjects beyond it
/// are counted under [`OTHER_SERIES`].
const MAX_COUNTED_SUBJECTS: usize = 100_000;

/// The label `/stats` sums every series beyond the busiest under.
const OTHER_SERIES: &str = "other";

/// Events per type, as the type counter last read them from the stream.
#[derive(Debug, Default)]
struct TypeCounts {
    /// `(type, events)` per subject read.
    types: Vec<(String, u64)>,
    /// Events on subjects not read (beyond [`MAX_COUNTED_SUBJECTS`], or
    /// not made by msgbus).
    uncounted: u64,
    /// Distinct subjects of the stream.
    subjects: u64,
}

/// One page of a subject-filtered stream info (`$JS.API.STREAM.INFO`).
#[derive(Debug, Default, serde::Deserialize)]
struct SubjectsPage {
    #[serde(default)]
    state: SubjectsState,
    /// Subjects in all pages.
    #[serde(default)]
    total: usize,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct SubjectsState {
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    subjects: Option<std::collections::HashMap<String, u64>>,
    #[serde(default)]
    num_subjects: u64,
}

/// Reads the messages per subject of the stream (paged, up to
/// [`MAX_COUNTED_SUBJECTS`]) and maps the subjects back to types.
async fn read_type_counts(s: &Shared) -> Result<TypeCounts, StoreError> {
    let api = format!("STREAM.INFO.{}", s.prefix);
    let filter = format!("{}.>", s.prefix);
    let mut out = TypeCounts::default();
    let mut messages = None;
    let mut counted = 0u64;
    let mut offset = 0usize;
    loop {
        let page: SubjectsPage =
            s.js.request(
                api.clone(),
                &serde_json::json!({"subjects_filter": filter, "offset": offset}),
            )
            .await
            .map_err(|e| unavailable("stream info with subjects", e))?;
        if let Some(e) = page.error {
            return Err(unavailable("stream info with subjects", e));
        }
        let total_messages = *messages.get_or_insert(page.state.messages);
        out.subjects = out
            .subjects
            .max(page.state.num_subjects)
            .max(page.total as u64);
        let subjects = page.state.subjects.unwrap_or_default();
        let n = subjects.len();
        for (subject, count) in subjects {
            if out.types.len() >= MAX_COUNTED_SUBJECTS {
                break;
            }
            if let Some(ty) = subject::type_of(&s.prefix, &subject) {
                counted += count;
                out.types.push((ty, count));
            }
        }
        offset += n;
        if n == 0 || offset >= page.total || out.types.len() >= MAX_COUNTED_SUBJECTS {
            out.uncounted = total_messages.saturating_sub(counted);
            return Ok(out);
        }
    }
}

/// Refreshes the per-type counts ([`every`] [`TYPE_COUNTS_EVERY`]), off
/// the request path (`/stats` reads the last ones).
async fn count_types(s: Arc<Shared>) {
    match tokio::time::timeout(API_TIMEOUT, read_type_counts(&s)).await {
        Ok(Ok(counts)) => *lock(&s.type_counts) = Arc::new(counts),
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the messages per subject"),
        Err(_) => {
            tracing::debug!("the messages per subject did not come within {API_TIMEOUT:?}")
        }
    }
}

/// Refreshes the per-source counts ([`every`] [`TYPE_COUNTS_EVERY`]), off
/// the request path (`/stats` reads the last ones; `sources.rs` says how).
async fn count_sources(s: Arc<Shared>) {
    let st = lock(&s.state).clone();
    if let Err(e) = s
        .sources
        .refresh(&s, &s.sources_kv, st.first_seq, st.last_seq, st.messages)
        .await
    {
        tracing::debug!(error = %e, "cannot count the events per source");
    }
}

/// The `n` largest counts, ties by name, plus [`OTHER_SERIES`] summing
/// the rest and `extra`.
fn busiest(counts: &[(String, u64)], n: usize, extra: u64) -> BTreeMap<String, u64> {
    let mut all: Vec<&(String, u64)> = counts.iter().collect();
    let mut rest = extra;
    if all.len() > n {
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rest += all[n..].iter().map(|(_, c)| c).sum::<u64>();
        all.truncate(n);
    }
    let mut out: BTreeMap<String, u64> = all.into_iter().cloned().collect();
    if rest > 0 {
        *out.entry(OTHER_SERIES.to_string()).or_default() += rest;
    }
    out
}

impl Shared {
    fn first_seq(&self) -> u64 {
        lock(&self.state).first_seq
    }

    /// The message at `seq`, if any: a direct get, confirmed by the leader
    /// when it says "none" at or below the known head.
    async fn message(&self, seq: u64) -> Result<Option<(u64, Bytes)>, StoreError> {
        if self.direct {
            match self.stream.direct_get(seq).await {
                Ok(m) => return Ok(Some((m.sequence, m.payload))),
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    if seq > *self.head.borrow() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(unavailable("direct get", e)),
            }
        }
        match self.stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(unavailable("message get", e)),
        }
    }

    /// The first message at or after `seq` on `filter`, if any (direct get,
    /// confirmed by the leader when "none" is answered at or below `head`).
    async fn next_message(
        &self,
        filter: &str,
        seq: u64,
        head: u64,
    ) -> Result<Option<(u64, Bytes)>, StoreError> {
        if self.direct {
            match self
                .stream
                .direct_get_next_for_subject(filter, Some(seq))
                .await
            {
                Ok(m) => return Ok(Some((m.sequence, m.payload))),
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    if seq > head {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(unavailable("direct get", e)),
            }
        }
        match self
            .stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(filter)
            .send()
            .await
        {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(unavailable("message get", e)),
        }
    }

    /// Up to `batch` messages at or after `seq` on `filter` (about
    /// `max_bytes` of them at most), in seq order, in one batched direct
    /// get: the messages, then an end-of-batch status. Empty when the
    /// server that answered has none there (it may be a replica that is
    /// behind: the caller then asks [`Shared::next_message`], which
    /// confirms with the leader). A server without batches answers the
    /// first message only (no `Nats-Num-Pending` header): that one is
    /// the batch.
    async fn batch_get(
        &self,
        filter: &str,
        seq: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        use futures_util::StreamExt;
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("batched direct get", e))?;
        let request = serde_json::json!({
            "seq": seq,
            "next_by_subj": filter,
            "batch": batch,
            "max_bytes": max_bytes,
        });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.prefix),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| unavailable("batched direct get", e))?;
        let mut out = Vec::new();
        loop {
            let m = match tokio::time::timeout(API_TIMEOUT, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(StoreError::Unavailable(
                        "batched direct get: the reply subscription ended".into(),
                    ))
                }
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "batched direct get: no end of batch within {API_TIMEOUT:?}"
                    )))
                }
            };
            match m.status.map(|s| s.as_u16()) {
                None | Some(200) => {}
                // 204: the end of the batch; 404: nothing there.
                Some(204) | Some(404) => return Ok(out),
                Some(code) => {
                    return Err(StoreError::Unavailable(format!(
                        "batched direct get: status {code} {}",
                        m.description.unwrap_or_default()
                    )))
                }
            }
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            let Some(got) = header("Nats-Sequence").and_then(|v| v.parse::<u64>().ok()) else {
                return Err(StoreError::Unavailable(
                    "batched direct get: a message without Nats-Sequence".into(),
                ));
            };
            let more = header("Nats-Num-Pending").is_some();
            if got >= seq {
                out.push((got, m.payload));
            }
            if !more {
                return Ok(out);
            }
        }
    }

    async fn read_page(
        &self,
        after: u64,
        m: &Matcher,
        limit: usize,
        max_bytes: usize,
        cursor: bool,
    ) -> Result<EventPage, StoreError> {
        let first = self.first_seq();
        let head = *self.head.borrow();
        if (cursor || after != 0) && after < first - 1 {
            return Err(StoreError::Gone { oldest: first });
        }
        if after >= head {
            // Nothing after it yet (a cursor past the head stays where it is).
            return Ok(EventPage {
                events: Vec::new(),
                next_after: after,
            });
        }
        let f = m.filter();
        let filter = subject::filter(&self.prefix, f.ty.as_deref(), f.type_prefix.as_deref());
        let limit = limit.max(1);
        let deadline = Instant::now() + READ_TIME;
        let mut page = EventPage {
            events: Vec::new(),
            next_after: after,
        };
        let mut bytes = 0usize;
        let mut next = after.max(first - 1) + 1;
        let mut examined = 0;
        let mut fetched = std::collections::VecDeque::new();
        while page.events.len() < limit && examined < READ_EXAMINED && Instant::now() < deadline {
            if fetched.is_empty() && self.batched && next <= head {
                let want = (limit - page.events.len())
                    .min(READ_EXAMINED - examined)
                    .clamp(1, GET_BATCH);
                let room = max_bytes.saturating_sub(bytes).max(1);
                fetched.extend(self.batch_get(&filter, next, want, room).await?);
            }
            let got = match fetched.pop_front() {
                Some(m) => Some(m),
                None => self.next_message(&filter, next, head).await?,
            };
            let Some((seq, payload)) = got else {
                page.next_after = page.next_after.max(head);
                break;
            };
            examined += 1;
            if let Some(h) = head_of(&payload) {
                if m.matches_event(&h.ty, &h.source, h.subject.as_deref()) {
                    if !page.events.is_empty() && bytes + payload.len() > max_bytes {
                        break;
                    }
                    bytes += payload.len();
                    page.events.push(StoredEvent {
                        seq,
                        bytes: payload,
                        frame: None,
                    });
                }
            }
            page.next_after = seq;
            let Some(n) = seq.checked_add(1) else { break };
            next = n;
        }
        Ok(page)
    }

    async fn publish(&self, ev: PreparedEvent) -> Result<Outcome, StoreError> {
        let subject = subject::of_type(&self.prefix, &ev.ty);
        let id = msg_id(&ev.source, &ev.id);
        let skip = ev.buf.len() - ev.bytes().len();
        let payload = Bytes::from(ev.buf).slice(skip..);
        let len = payload.len() as u64;
        let ack = self
            .js
            .send_publish(
                subject,
                PublishMessage::build().payload(payload).message_id(id),
            )
            .await
            .map_err(|e| unavailable("publish", e))?
            .await
            .map_err(|e| unavailable("publish ack", e))?;
        if !ack.duplicate {
            self.counters.events.fetch_add(1, Ordering::Relaxed);
            {
                // Until the next stream info says exactly.
                let mut st = lock(&self.state);
                if ack.sequence > st.last_seq {
                    st.last_seq = ack.sequence;
                    st.messages += 1;
                    st.bytes += len;
                }
            }
            bump(&self.head, ack.sequence);
            return Ok(Outcome {
                seq: ack.sequence,
                original: None,
            });
        }
        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        // The original's attributes; if retention deleted it meanwhile,
        // the duplicate's own.
        let stored = self.message(ack.sequence).await?;
        let original = stored
            .as_ref()
            .and_then(|(_, p)| head_of(p))
            .map(|h| Original {
                ty: h.ty.into_owned(),
                time: h.time.map(Cow::into_owned).unwrap_or_default(),
            })
            .unwrap_or(Original {
                ty: ev.ty,
                time: ev.time,
            });
        Ok(Outcome {
            seq: ack.sequence,
            original: Some(original),
        })
    }

    /// Stores a batch: atomically where the stream takes atomic batches
    /// (all or nothing, one ack); a batch with a duplicate inside, or
    /// without atomic batches, one event at a time.
    async fn append(&self, events: Vec<PreparedEvent>) -> Result<Vec<Outcome>, StoreError> {
        let n = events.len();
        if n > 1 {
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters
                .max_batch
                .fetch_max(n as u64, Ordering::Relaxed);
            if self.atomic && n <= MAX_ATOMIC_BATCH {
                if let Some(out) = self.append_atomic(&events).await? {
                    return Ok(out);
                }
            }
        }
        self.append_one_by_one(events).await
    }

    /// One atomic batch (`Nats-Batch-Id`, `Nats-Batch-Sequence`, and
    /// `Nats-Batch-Commit` on the last): every event stored with
    /// consecutive seqs, or none. `None` when JetStream refused it for a
    /// `Nats-Msg-Id` already stored (a retry of a batch, or a duplicate
    /// inside it): then nothing was stored and the caller publishes one by
    /// one, so each duplicate answers its original.
    async fn append_atomic(
        &self,
        events: &[PreparedEvent],
    ) -> Result<Option<Vec<Outcome>>, StoreError> {
        let n = events.len();
        let batch = uuid::Uuid::new_v4().simple().to_string();
        let mut commit = None;
        for (i, ev) in events.iter().enumerate() {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Batch-Id", batch.as_str());
            h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            h.insert("Nats-Msg-Id", msg_id(&ev.source, &ev.id).as_str());
            let subject = subject::of_type(&self.prefix, &ev.ty);
            let payload = Bytes::copy_from_slice(ev.bytes());
            if i + 1 == n {
                h.insert("Nats-Batch-Commit", "1");
                commit = Some(tokio::time::timeout(
                    API_TIMEOUT,
                    self.client.request_with_headers(subject, h, payload),
                ));
            } else {
                self.client
                    .publish_with_headers(subject, h, payload)
                    .await
                    .map_err(|e| unavailable("atomic batch publish (nothing stored)", e))?;
            }
        }
        let Some(commit) = commit else {
            return Ok(Some(Vec::new()));
        };
        let reply = match commit.await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return Err(unavailable(
                    "atomic batch commit (the batch is stored whole or not at all; \
                     publishing it again is safe)",
                    e,
                ))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "atomic batch commit: no answer within {API_TIMEOUT:?}; the batch is stored \
                     whole or not at all, and publishing it again is safe"
                )))
            }
        };
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        if let Some(err) = ack.get("error") {
            if err["err_code"].as_u64() == Some(ERR_ATOMIC_DUPLICATE) {
                return Ok(None);
            }
            return Err(StoreError::Unavailable(format!(
                "atomic batch refused, nothing stored: {}",
                err["description"].as_str().unwrap_or("no description")
            )));
        }
        let (Some(last), Some(count)) = (ack["seq"].as_u64(), ack["count"].as_u64()) else {
            return Err(StoreError::Unavailable(format!(
                "atomic batch commit: unexpected answer {ack}"
            )));
        };
        if count != n as u64 || last < count {
            return Err(StoreError::Unavailable(format!(
                "atomic batch commit stored {count} of {n} events (last seq {last})"
            )));
        }
        let first = last - count + 1;
        {
            let mut st = lock(&self.state);
            if last > st.last_seq {
                st.last_seq = last;
                st.messages += count;
                st.bytes += events.iter().map(|e| e.bytes().len() as u64).sum::<u64>();
            }
        }
        self.counters.events.fetch_add(count, Ordering::Relaxed);
        bump(&self.head, last);
        Ok(Some(
            (first..=last)
                .map(|seq| Outcome {
                    seq,
                    original: None,
                })
                .collect(),
        ))
    }

    /// Publishes one by one, each after the previous one's ack: a failure
    /// leaves a stored prefix of the batch, which the error names.
    async fn append_one_by_one(
        &self,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let n = events.len();
        let mut out: Vec<Outcome> = Vec::with_capacity(n);
        for ev in events {
            match self.publish(ev).await {
                Ok(o) => out.push(o),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "{e}; the batch is not all stored: its first {} of {n} events are \
                         (the last of them at seq {}), the rest are not. Publishing the same \
                         batch again stores the rest; the stored ones answer as duplicates \
                         within the stream's duplicate window ({})",
                        out.len(),
                        out.last().map_or(0, |o| o.seq),
                        humantime::format_duration(self.settings.duplicate_window),
                    )))
                }
            }
        }
        Ok(out)
    }

    fn status(&self) -> Status {
        let st = lock(&self.state).clone();
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let unavailable = if !connected {
            Some("not connected to any NATS server".to_string())
        } else {
            st.unavailable
        };
        Status {
            writer_alive: true,
            poisoned: None,
            read_only: None,
            low_disk: None,
            last_seq: (*self.head.borrow()).max(st.last_seq),
            first_seq: st.first_seq,
            queue_depth: 0,
            unavailable,
        }
    }

    fn retention(&self) -> RetentionStats {
        RetentionStats {
            oldest_seq: self.first_seq(),
            max_events: self.settings.max_messages,
            max_age_seconds: self.settings.max_age.map(|d| d.as_secs_f64()),
            max_bytes: self.settings.max_bytes,
            segments_deleted: 0,
            events_deleted: 0,
            bytes_reclaimed: 0,
        }
    }
}

const QUEUES_UNSUPPORTED: &str = "the queue ledger is the file store's; with --backend nats the \
     queue consumers' leases and dead letters are JetStream's (jetstream::queues)";

fn consumers_unsupported() -> ConsumerError {
    ConsumerError::Store(StoreError::Unsupported(QUEUES_UNSUPPORTED.into()))
}

impl Store for JetStream {
    fn append(
        &self,
        events: Vec<PreparedEvent>,
    ) -> BoxFuture<'_, Result<Vec<Outcome>, StoreError>> {
        Box::pin(self.shared.append(events))
    }

    fn read<'a>(
        &'a self,
        after: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage, StoreError>> {
        Box::pin(
            self.shared
                .read_page(after, filter, limit, max_bytes, false),
        )
    }

    fn read_cursor<'a>(
        &'a self,
        cursor: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage, StoreError>> {
        Box::pin(
            self.shared
                .read_page(cursor, filter, limit, max_bytes, true),
        )
    }

    fn get(&self, seq: u64) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>> {
        Box::pin(async move {
            if seq == 0 {
                return Ok(None);
            }
            Ok(self
                .shared
                .message(seq)
                .await?
                .filter(|(_, p)| head_of(p).is_some())
                .map(|(seq, bytes)| StoredEvent {
                    seq,
                    bytes,
                    frame: None,
                }))
        })
    }

    fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    fn put_consumer(
        &self,
        name: String,
        filter: Filter,
        start: Option<ConsumerStart>,
        max_consumers: usize,
        queue: Option<QueueSpec>,
    ) -> BoxFuture<'_, Result<(Consumer, bool), ConsumerError>> {
        let s = &self.shared;
        let first = s.first_seq();
        Box::pin(async move {
            let head = match start {
                Some(ConsumerStart::Seq(seq)) => s.head_for(seq.saturating_sub(1)).await,
                _ => *s.head.borrow(),
            };
            let (c, created) = s
                .consumers
                .put(name, filter, start, max_consumers, queue, first, head)
                .await?;
            if c.queue.is_some() {
                // The JetStream consumer follows the record (a fetch makes
                // it again if this fails).
                s.queues.ensure(&c, created || start.is_some()).await?;
            }
            Ok((c, created))
        })
    }

    fn queue_ledger(&self, _name: &str) -> Option<QueueLedger> {
        None
    }

    fn queue_change(
        &self,
        _change: QueueDelta,
        _max_acked: usize,
    ) -> BoxFuture<'_, Result<u64, ConsumerError>> {
        Box::pin(async { Err(consumers_unsupported()) })
    }

    fn consumer(&self, name: &str) -> Option<Consumer> {
        self.shared.consumers.get(name)
    }

    fn consumers(&self) -> Vec<Consumer> {
        self.shared.consumers.list()
    }

    fn ack(&self, name: String, seq: u64) -> BoxFuture<'_, Result<Consumer, ConsumerError>> {
        Box::pin(async move {
            let head = self.shared.head_for(seq).await;
            self.shared.consumers.ack(name, seq, head).await
        })
    }

    fn delete_consumer(&self, name: String) -> BoxFuture<'_, Result<Consumer, ConsumerError>> {
        Box::pin(async move {
            let c = self.shared.consumers.delete(name).await?;
            if c.queue.is_some() {
                self.shared.queues.remove(&c).await?;
            }
            Ok(c)
        })
    }

    fn put_schema(
        &self,
        ty: String,
        schema: Arc<serde_json::Value>,
        limits: SchemaLimits,
    ) -> BoxFuture<'_, Result<SchemaType, SchemaError>> {
        Box::pin(self.shared.schemas.put(ty, schema, limits))
    }

    fn delete_schema(&self, ty: String) -> BoxFuture<'_, Result<SchemaType, SchemaError>> {
        Box::pin(self.shared.schemas.delete(ty))
    }

    fn schema_catalog(&self) -> Arc<SchemaCatalog> {
        self.shared.schemas.catalog()
    }

    fn schema_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.schemas.subscribe())
    }

    fn max_schema_entry_bytes(&self) -> Option<usize> {
        Some(self.shared.schemas.max_value())
    }

    fn status(&self) -> Status {
        self.shared.status()
    }

    fn stats(&self, max_series: usize) -> StatsSnapshot {
        let status = self.shared.status();
        let st = lock(&self.shared.state).clone();
        let types = lock(&self.shared.type_counts).clone();
        let sources = lock(&self.shared.sources.counted).clone();
        let c = &self.shared.counters;
        StatsSnapshot {
            events: EventCounts {
                total: st.messages,
                first_seq: if st.messages == 0 { 0 } else { st.first_seq },
                last_seq: if st.messages == 0 { 0 } else { st.last_seq },
                bytes: st.bytes,
                by_type: busiest(&types.types, max_series, types.uncounted),
                distinct_types: types.subjects,
                by_source: busiest(&sources.sources, max_series, sources.uncounted),
                distinct_sources: sources.sources.len() as u64,
                ..EventCounts::default()
            },
            writer: WriterCounters {
                events_written: c.events.load(Ordering::Relaxed),
                duplicates: c.duplicates.load(Ordering::Relaxed),
                batches: c.batches.load(Ordering::Relaxed),
                max_batch_events: c.max_batch.load(Ordering::Relaxed),
                ..WriterCounters::default()
            },
            integrity: IntegrityState {
                status: "not_applicable".into(),
                ..IntegrityState::default()
            },
            backups: BackupSummary::default(),
            alerts: Default::default(),
            retention: self.shared.retention(),
            consumers: {
                let head = status.last_seq;
                let lag: std::collections::BTreeMap<String, u64> = self
                    .shared
                    .consumers
                    .list()
                    .into_iter()
                    .map(|c| (c.name, head.saturating_sub(c.cursor)))
                    .collect();
                ConsumerStats {
                    count: lag.len() as u64,
                    max_lag: lag.values().copied().max().unwrap_or(0),
                    lag,
                }
            },
            status,
        }
    }

    fn retention(&self) -> RetentionStats {
        self.shared.retention()
    }

    fn backups(&self) -> Vec<BackupInfo> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.10.11"), Some((2, 10, 11)));
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("2.10.10").unwrap() < MIN_REPLICATED_VERSION);
        assert!(parse_version("2.10.11").unwrap() >= MIN_REPLICATED_VERSION);
    }

    #[test]
    fn msg_ids_separate_source_and_id() {
        assert_ne!(msg_id("ab", "c"), msg_id("a", "bc"));
        assert_eq!(msg_id("a", "b"), msg_id("a", "b"));
        assert_eq!(msg_id("a", "b").len(), 64);
    }
}
