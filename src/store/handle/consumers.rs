//! The consumer requests of [`StoreHandle`]: each is queued for the writer,
//! which applies it ([`crate::store::consumers::apply`]) and answers once it is durable.

use tokio::sync::oneshot;

use super::StoreHandle;
use crate::store::consumers::{
    Consumer, ConsumerError, QueueDelta, QueueSpec, Reply, Request, Start,
};
use crate::store::error::StoreError;
use crate::store::writer::Command;
use crate::store::Filter;

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
        filter: Filter,
        start: Option<Start>,
        max_consumers: usize,
        queue: Option<QueueSpec>,
    ) -> Result<(Consumer, bool), ConsumerError> {
        self.consumer_request(|reply| Request::Put {
            name,
            filter,
            start,
            max_consumers,
            queue,
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

    /// Acknowledges, dead-letters or redrives events of a queue consumer,
    /// durably, before answering; answers the new ack floor.
    pub async fn queue_change(
        &self,
        change: QueueDelta,
        max_acked: usize,
    ) -> Result<u64, ConsumerError> {
        self.consumer_request(|reply| Request::Queue {
            change,
            max_acked,
            reply,
        })
        .await
    }
}
