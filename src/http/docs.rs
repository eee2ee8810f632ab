//! The OpenAPI document (generated from the handlers' annotations) and
//! Swagger UI at `/docs`, served from files compiled into the binary.

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::{consumers, error, events, health, metrics, stats, stream};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "msgbus",
        description = "A durable HTTP message bus for software agents. Every 201 means the event is on disk (after fdatasync). Errors are RFC 9457 problem+json.",
    ),
    paths(
        events::publish, events::publish_batch, events::list, events::get_one,
        stream::stream,
        consumers::list, consumers::put, consumers::get_one, consumers::delete,
        consumers::events, consumers::ack,
        stats::stats, health::live, health::ready, health::health, metrics::metrics,
    ),
    components(schemas(error::Problem, crate::event::FieldError)),
    tags(
        (name = "events", description = "Publish and read events"),
        (name = "consumers", description = "Durable named cursors: read after the cursor, ack to move it (at-least-once)"),
        (name = "operations", description = "Stats, health and metrics"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, exactly as checked in at `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// `/openapi.json` and `/docs`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
