//! The payload-schema requests of [`StoreHandle`]: each change is queued
//! for the writer, which writes `schemas.json` and answers once it is
//! durable ([`crate::store::schemas::apply`]); reads take the committed
//! catalog.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::StoreHandle;
use crate::store::error::StoreError;
use crate::store::schemas::{Request, SchemaCatalog, SchemaError, SchemaLimits, SchemaType};
use crate::store::writer::Command;

impl StoreHandle {
    /// Registers the next version of `ty`'s schema (validation resumes if
    /// it was deleted); answers the type's entry once the file is durable.
    pub async fn put_schema(
        &self,
        ty: String,
        schema: Arc<Value>,
        limits: SchemaLimits,
    ) -> Result<SchemaType, SchemaError> {
        if let Some(refusal) = self.shared.write_refusal() {
            return Err(SchemaError::Store(refusal.into()));
        }
        let (reply, rx) = oneshot::channel();
        self.try_send(Command::Schema(Request::Put {
            ty,
            schema,
            limits,
            reply,
        }))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Stops validating `ty` (its versions stay readable).
    pub async fn delete_schema(&self, ty: String) -> Result<SchemaType, SchemaError> {
        if let Some(refusal) = self.shared.write_refusal() {
            return Err(SchemaError::Store(refusal.into()));
        }
        let (reply, rx) = oneshot::channel();
        self.try_send(Command::Schema(Request::Delete { ty, reply }))?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// The committed schemas.
    pub fn schema_catalog(&self) -> Arc<SchemaCatalog> {
        self.shared.schemas.catalog()
    }
}
