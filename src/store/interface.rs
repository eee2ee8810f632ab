//! [`Store`]: the interface the HTTP layer is written against. Everything
//! the API does with stored events goes through it: append (one event or a
//! batch, each with its idempotency [`Outcome`]), read pages and single
//! events with a filter, wait for new events (the head `watch`, which
//! long-polls and streams use), durable consumers (create, read, ack,
//! delete), and typed snapshots for health, stats and retention.
//!
//! The file store ([`StoreHandle`]) is its first implementation; a second
//! backend (a replicated cluster, for users who outgrow one machine)
//! implements the same trait and the HTTP layer does not change. The trait
//! is object-safe (`Arc<dyn Store>` in the router state): its async
//! methods return boxed futures, one allocation per call, nothing next to
//! an fsync. Operations only the file store has (backups, the integrity
//! monitor, repair) are not part of it; the server wires them up itself
//! (`app.rs`).

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use super::error::Result;
use super::handle::{EventPage, StoreHandle, StoredEvent};
use super::{
    BackupInfo, Consumer, ConsumerError, ConsumerStart, Filter, Matcher, Outcome, PreparedEvent,
    QueueDelta, QueueLedger, QueueSpec, RetentionStats, SchemaCatalog, SchemaError, SchemaLimits,
    SchemaType, StatsSnapshot, Status,
};

/// A boxed, sendable future: what the interface's async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store of events the HTTP API can serve. See the module docs.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `events` atomically and durably: one [`Outcome`] per event,
    /// in order (a duplicate `(source, id)` answers the original's seq),
    /// once they are on disk. Refused with
    /// [`StoreError::Refused`](super::StoreError::Refused) and a
    /// [`WriteRefusal`](super::WriteRefusal) when writes are refused.
    fn append(&self, events: Vec<PreparedEvent>) -> BoxFuture<'_, Result<Vec<Outcome>>>;

    /// Events after `after` matching `filter`: at most `limit` events and
    /// `max_bytes` bytes (always at least one event). `after = 0` is "from
    /// the oldest retained"; a position retention deleted is
    /// [`StoreError::Gone`](super::StoreError::Gone).
    fn read<'a>(
        &'a self,
        after: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage>>;

    /// Like [`Store::read`] for a reader at a cursor (a stream, a
    /// consumer): 0 is a position too, so it is `Gone` once seq 1 is.
    fn read_cursor<'a>(
        &'a self,
        cursor: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage>>;

    /// The event stored at `seq`, if any.
    fn get(&self, seq: u64) -> BoxFuture<'_, Result<Option<StoredEvent>>>;

    /// The newest committed seq.
    fn head(&self) -> u64;

    /// A receiver of the newest committed seq: long-polls and streams wait
    /// on it for new events.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Creates or updates a consumer; answers it and whether it is new.
    fn put_consumer(
        &self,
        name: String,
        filter: Filter,
        start: Option<ConsumerStart>,
        max_consumers: usize,
        queue: Option<QueueSpec>,
    ) -> BoxFuture<'_, std::result::Result<(Consumer, bool), ConsumerError>>;

    /// A queue consumer's durable ledger (ack floor, acknowledged and dead
    /// seqs), as last committed.
    fn queue_ledger(&self, name: &str) -> Option<QueueLedger>;

    /// Acknowledges, dead-letters or redrives events of a queue consumer,
    /// durably, before answering; answers the new ack floor. Refused when
    /// more than `max_acked` acknowledged and dead seqs would be kept above
    /// the floor.
    fn queue_change(
        &self,
        change: QueueDelta,
        max_acked: usize,
    ) -> BoxFuture<'_, std::result::Result<u64, ConsumerError>>;

    /// One consumer, as last committed.
    fn consumer(&self, name: &str) -> Option<Consumer>;

    /// Every consumer, by name.
    fn consumers(&self) -> Vec<Consumer>;

    /// Commits a consumer's cursor at `seq`, durably, before answering.
    fn ack(
        &self,
        name: String,
        seq: u64,
    ) -> BoxFuture<'_, std::result::Result<Consumer, ConsumerError>>;

    /// Deletes a consumer.
    fn delete_consumer(
        &self,
        name: String,
    ) -> BoxFuture<'_, std::result::Result<Consumer, ConsumerError>>;

    /// Registers the next version of `ty`'s payload schema, durably, and
    /// answers the type's entry (validation resumes if it was deleted).
    fn put_schema(
        &self,
        ty: String,
        schema: std::sync::Arc<serde_json::Value>,
        limits: SchemaLimits,
    ) -> BoxFuture<'_, std::result::Result<SchemaType, SchemaError>>;

    /// Stops validating `ty`'s payloads; its versions stay readable.
    fn delete_schema(
        &self,
        ty: String,
    ) -> BoxFuture<'_, std::result::Result<SchemaType, SchemaError>>;

    /// The committed payload schemas.
    fn schema_catalog(&self) -> std::sync::Arc<SchemaCatalog>;

    /// A receiver of the catalog's generation, for a store whose schemas
    /// may change without this instance's HTTP layer asking (another
    /// msgbus instance serving the same NATS stream): it changes at every
    /// change, and the HTTP layer then recompiles its validators. `None`
    /// (the file store, whose writer makes every change this instance
    /// asks for, and nothing else) means the answer to each `put_schema`
    /// and `delete_schema` is the only change.
    fn schema_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// The most bytes one type's schemas (its [`SchemaType`] as JSON,
    /// every version) may take, for a store that bounds it (the NATS
    /// backend keeps a type in one message); `None`: only
    /// [`SchemaLimits`] and `--max-schema-bytes` bound it.
    fn max_schema_entry_bytes(&self) -> Option<usize> {
        None
    }

    /// Health now: readiness, refusals, head and oldest seq.
    fn status(&self) -> Status;

    /// Everything `/stats` and `/metrics` show.
    fn stats(&self, max_series: usize) -> StatsSnapshot;

    /// Retention limits and what retention deleted.
    fn retention(&self) -> RetentionStats;

    /// The backups the store knows, oldest first (none for a backend that
    /// keeps no backups of its own).
    fn backups(&self) -> Vec<BackupInfo>;
}

impl Store for StoreHandle {
    fn append(&self, events: Vec<PreparedEvent>) -> BoxFuture<'_, Result<Vec<Outcome>>> {
        Box::pin(StoreHandle::append(self, events))
    }

    fn read<'a>(
        &'a self,
        after: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage>> {
        Box::pin(StoreHandle::read(self, after, filter, limit, max_bytes))
    }

    fn read_cursor<'a>(
        &'a self,
        cursor: u64,
        filter: &'a Matcher,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<EventPage>> {
        Box::pin(StoreHandle::read_cursor(
            self, cursor, filter, limit, max_bytes,
        ))
    }

    fn get(&self, seq: u64) -> BoxFuture<'_, Result<Option<StoredEvent>>> {
        Box::pin(StoreHandle::get(self, seq))
    }

    fn head(&self) -> u64 {
        StoreHandle::head(self)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        StoreHandle::subscribe(self)
    }

    fn put_consumer(
        &self,
        name: String,
        filter: Filter,
        start: Option<ConsumerStart>,
        max_consumers: usize,
        queue: Option<QueueSpec>,
    ) -> BoxFuture<'_, std::result::Result<(Consumer, bool), ConsumerError>> {
        Box::pin(StoreHandle::put_consumer(
            self,
            name,
            filter,
            start,
            max_consumers,
            queue,
        ))
    }

    fn queue_ledger(&self, name: &str) -> Option<QueueLedger> {
        self.shared.consumers.ledger(name)
    }

    fn queue_change(
        &self,
        change: QueueDelta,
        max_acked: usize,
    ) -> BoxFuture<'_, std::result::Result<u64, ConsumerError>> {
        Box::pin(StoreHandle::queue_change(self, change, max_acked))
    }

    fn consumer(&self, name: &str) -> Option<Consumer> {
        self.shared.consumers.get(name)
    }

    fn consumers(&self) -> Vec<Consumer> {
        self.shared.consumers.list()
    }

    fn ack(
        &self,
        name: String,
        seq: u64,
    ) -> BoxFuture<'_, std::result::Result<Consumer, ConsumerError>> {
        Box::pin(StoreHandle::ack(self, name, seq))
    }

    fn delete_consumer(
        &self,
        name: String,
    ) -> BoxFuture<'_, std::result::Result<Consumer, ConsumerError>> {
        Box::pin(StoreHandle::delete_consumer(self, name))
    }

    fn put_schema(
        &self,
        ty: String,
        schema: std::sync::Arc<serde_json::Value>,
        limits: SchemaLimits,
    ) -> BoxFuture<'_, std::result::Result<SchemaType, SchemaError>> {
        Box::pin(StoreHandle::put_schema(self, ty, schema, limits))
    }

    fn delete_schema(
        &self,
        ty: String,
    ) -> BoxFuture<'_, std::result::Result<SchemaType, SchemaError>> {
        Box::pin(StoreHandle::delete_schema(self, ty))
    }

    fn schema_catalog(&self) -> std::sync::Arc<SchemaCatalog> {
        StoreHandle::schema_catalog(self)
    }

    fn status(&self) -> Status {
        StoreHandle::status(self)
    }

    fn stats(&self, max_series: usize) -> StatsSnapshot {
        StoreHandle::stats(self, max_series)
    }

    fn retention(&self) -> RetentionStats {
        self.shared.retention.stats(self.shared.index().first_seq())
    }

    fn backups(&self) -> Vec<BackupInfo> {
        StoreHandle::backups(self)
    }
}
