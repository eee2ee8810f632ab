//! The OpenAPI document (generated from the handlers' annotations) and
//! Swagger UI at `/docs`, served from files compiled into the binary.
//!
//! The document states every rule the server enforces, so a client (or a
//! generator such as schemathesis) that follows it is never refused for a
//! reason it could not have known: lengths, patterns, enums, numeric
//! bounds, which fields are required and which are refused. The annotations
//! say most of it; what utoipa cannot express (`not`, `propertyNames` with
//! typed extension values, exact 64-bit bounds) is written here as JSON
//! Schema in [`document`]. The bounds that are settings (`--max-wait`,
//! `--max-batch-events`) are the running server's: `/openapi.json` shows
//! the server's own, `msgbus openapi` and `openapi/openapi.json` the
//! defaults.

use axum::Router;
use serde_json::{json, Value};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::{
    admin, consumers, error, events, health, metrics, queues, schemas, stats, stream, tokens,
};
use crate::event::{
    MAX_EXTENSIONS, MAX_EXTENSION_NAME_LEN, MAX_EXTENSION_VALUE_LEN, MAX_ID_LEN, MAX_META_LEN,
    MAX_SOURCE_LEN, MAX_SUBJECT_LEN, MAX_TYPE_LEN,
};

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
        queues::fetch, queues::nack, queues::extend, queues::dead, queues::redrive,
        schemas::list, schemas::get_latest, schemas::put, schemas::delete, schemas::get_version,
        stats::stats, health::live, health::ready, health::health, metrics::metrics,
        admin::alerts, admin::list_backups, admin::take_backup, admin::verify,
        admin::verify_status,
        tokens::create, tokens::list, tokens::revoke,
    ),
    components(schemas(error::Problem, crate::event::FieldError)),
    tags(
        (name = "events", description = "Publish and read events"),
        (name = "consumers", description = "Durable named cursors: read after the cursor, ack to move it (at-least-once)"),
        (name = "queues", description = "Work queues (consumers with \"mode\": \"queue\"): fetch leases events to one worker at a time, ack makes them done, expired leases come back, and events that keep failing become dead letters"),
        (name = "schemas", description = "Payload JSON Schemas per event type: publishing validates `data` against the latest version"),
        (name = "operations", description = "Stats, health, metrics, alerts, backups and integrity checks"),
        (name = "tokens", description = "Access tokens (admin role): create, list, revoke"),
    )
)]
pub struct ApiDoc;

/// The limits that are settings, as the document states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// `--max-wait`, in whole seconds: the largest `wait=`.
    pub max_wait_secs: u64,
    /// `--max-batch-events`: the most items in a batch.
    pub max_batch_events: usize,
}

impl Default for DocLimits {
    /// The defaults of `msgbus serve` (a unit test keeps them equal).
    fn default() -> Self {
        DocLimits {
            max_wait_secs: 60,
            max_batch_events: 1000,
        }
    }
}

/// A string of 1 to `max` characters without control characters, as
/// `event::validate` checks every string attribute.
fn text(max: usize, description: &str) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": max,
        "pattern": NO_CONTROL,
        "description": description,
    })
}

/// No character of Unicode category Cc (what `char::is_control` refuses).
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Canonical padded base64 (the standard alphabet; the unused bits of the
/// last character zero), which is what the server decodes.
const BASE64: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// The CloudEvent a publish accepts, with every check of `event::validate`.
fn cloud_event() -> Value {
    json!({
        "type": "object",
        "description": format!(
            "A CloudEvent 1.0 in structured mode. Besides the attributes below, up to {MAX_EXTENSIONS} \
             extension attributes: names of 1 to {MAX_EXTENSION_NAME_LEN} lower-case letters or digits, \
             values a string (at most {MAX_EXTENSION_VALUE_LEN} characters), a boolean or a 32-bit integer. \
             `data` and `data_base64` are exclusive. The whole stored event is at most --max-event-bytes \
             (default 1 MiB; larger gets 413). Lengths count characters."),
        "required": ["type", "source"],
        "properties": {
            "specversion": {
                "type": "string", "enum": ["1.0"],
                "description": "Always \"1.0\"; filled in when absent."
            },
            "id": text(MAX_ID_LEN, "Unique within `source`; a UUIDv7 is generated when absent."),
            "source": text(MAX_SOURCE_LEN, "Who produced the event (URI reference)."),
            "type": text(MAX_TYPE_LEN, "What happened, e.g. `com.example.order.created`."),
            "subject": text(MAX_SUBJECT_LEN, "What the event is about."),
            "time": {
                "type": "string", "format": "date-time", "maxLength": 64,
                "description": "RFC 3339 time, e.g. 2026-01-31T12:00:00Z; set by the server when absent."
            },
            "datacontenttype": {
                "type": "string", "maxLength": MAX_META_LEN,
                "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F/]*/[^\\u0000-\\u001F\\u007F-\\u009F]*$",
                "description": "Media type of `data`, e.g. application/json (must contain a '/')."
            },
            "dataschema": text(MAX_META_LEN, "Schema of `data`."),
            "data": {"description": "The payload: any JSON value."},
            "data_base64": {
                "type": "string", "pattern": BASE64,
                "description": "A binary payload, base64-encoded (padded, standard alphabet); instead of `data`."
            }
        },
        "propertyNames": {
            "pattern": format!("^(?:[a-z0-9]{{1,{MAX_EXTENSION_NAME_LEN}}}|data_base64)$")
        },
        "additionalProperties": {
            "description": "An extension attribute.",
            "anyOf": [
                {"type": "string", "maxLength": MAX_EXTENSION_VALUE_LEN},
                {"type": "boolean"},
                {"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}
            ]
        },
        "maxProperties": MAX_EXTENSIONS + 10,
        "not": {"required": ["data", "data_base64"]}
    })
}

/// A consumer filter: a string (empty or null: no filter).
fn filter(description: &str) -> Value {
    json!({"type": ["string", "null"], "description": description})
}

/// The `PUT /consumers/{name}` body.
fn consumer_spec() -> Value {
    json!({
        "type": "object",
        "description": "Filters and a start position; every field is optional, unknown fields are refused.",
        "additionalProperties": false,
        "properties": {
            "type": filter("Only events of this exact type."),
            "type_prefix": filter("Only events whose type starts with this."),
            "source": filter("Only events from this source."),
            "subject": filter("Only events with this subject."),
            "start": {
                "description": "`\"earliest\"` (the oldest retained event; the default on creation), \
                    `\"latest\"` (only events stored from now on) or a seq to start at (at most the next \
                    seq to be stored). On an existing consumer it moves the cursor (also backwards); \
                    absent or null, the cursor stays.",
                "anyOf": [
                    {"type": "string", "enum": ["earliest", "latest"]},
                    {"type": "integer", "minimum": 1, "maximum": u64::MAX},
                    {"type": "null"}
                ],
                "example": "earliest"
            }
        }
    })
}

/// The `POST /consumers/{name}/ack` body.
fn ack() -> Value {
    json!({
        "type": "object",
        "required": ["seq"],
        "additionalProperties": false,
        "properties": {
            "seq": {
                "type": "integer", "minimum": 0, "maximum": u64::MAX,
                "description": "The seq processed up to and including (usually the last event read, \
                    or `next_after` to also skip events the filters did not match). Behind the cursor \
                    is 409, past the newest event 422."
            }
        }
    })
}

/// A sequence number: any u64 (the bound is exact, not an f64).
fn seq_schema() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

/// The bearer scheme on every operation that needs a token, with its 401
/// and 403; none on the health probes. (The stream's `?access_token=` is a
/// query parameter of its own: see `stream::stream`.)
/// `/metrics` and the docs take a token only under `--protect`, so theirs
/// is optional.
fn declare_security(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "mb_<id>_<secret>",
            "description": "A token from `msgbus token create` or `POST /admin/tokens` (or MSGBUS_ADMIN_TOKEN)."
        }
    });
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        })
    };
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            if path.starts_with("/health") {
                op["security"] = json!([]);
                continue;
            }
            op["security"] = match path.as_str() {
                "/metrics" => json!([{}, {"bearer": []}]),
                _ => json!([{"bearer": []}]),
            };
            op["responses"]["401"] = problem(
                "No token, or not a live one (unknown, revoked or expired): `WWW-Authenticate: Bearer`",
            );
            let forbidden = "The token's role or scope does not allow this";
            let responses = &mut op["responses"];
            match responses.get_mut("403") {
                Some(r) => {
                    let old = r["description"].as_str().unwrap_or_default().to_string();
                    r["description"] = json!(format!("{forbidden}; or {}", lowercase_first(&old)));
                }
                None => responses["403"] = problem(forbidden),
            }
        }
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The document with `limits`, as JSON.
pub fn document(limits: DocLimits) -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = serde_json::to_value(&doc).expect("the OpenAPI document serializes");

    let schemas = &mut doc["components"]["schemas"];
    schemas["CloudEventDoc"] = cloud_event();
    schemas["ConsumerSpecDoc"] = consumer_spec();
    schemas["AckDoc"] = ack();

    let paths = &mut doc["paths"];
    // Every route but the health probes may answer 429 under --rate.
    if let Some(paths) = paths.as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if path.starts_with("/health") {
                continue;
            }
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.values_mut())
            {
                op["responses"]["429"] = rate_limited();
            }
        }
    }
    declare_security(&mut doc);
    let paths = &mut doc["paths"];
    // A batch: 1 to --max-batch-events items.
    if let Some(content) = paths["/events/batch"]["post"]["requestBody"]["content"].as_object_mut()
    {
        for media in content.values_mut() {
            media["schema"]["minItems"] = json!(1);
            media["schema"]["maxItems"] = json!(limits.max_batch_events);
        }
    }
    // The consumer body is optional: no body is a consumer of every event.
    paths["/consumers/{name}"]["put"]["requestBody"]["required"] = json!(false);

    let name = json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"});
    let after_stream = json!({"anyOf": [seq_schema(), {"type": "string", "enum": ["latest"]}]});
    let wait = json!({"type": "integer", "minimum": 0, "maximum": limits.max_wait_secs});
    if let Some(paths) = paths.as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for op in ops.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params {
                    let schema = match p["name"].as_str() {
                        Some("name") if path.starts_with("/consumers/") => name.clone(),
                        Some("seq") => seq_schema(),
                        Some("Last-Event-ID") => seq_schema(),
                        Some("after") if path == "/events/stream" => after_stream.clone(),
                        Some("after") => seq_schema(),
                        Some("wait") => wait.clone(),
                        _ => continue,
                    };
                    p["schema"] = schema;
                }
            }
        }
    }
    doc
}

/// The 429 every rate-limited route may answer (`--rate`).
fn rate_limited() -> Value {
    json!({
        "description": "Over --rate requests from this address; nothing was done. Retry after `Retry-After` seconds",
        "headers": {
            "Retry-After": {
                "schema": {"type": "integer", "format": "int64", "minimum": 0},
                "description": "Seconds to wait before retrying"
            }
        },
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    })
}

/// The document with the default limits as pretty JSON, exactly as checked
/// in at `openapi/openapi.json`.
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(&document(DocLimits::default()))
        .expect("the OpenAPI document serializes")
}

/// `/openapi.json` (with the server's own limits) and `/docs`.
pub fn router<S: Clone + Send + Sync + 'static>(limits: DocLimits) -> Router<S> {
    Router::new()
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document(limits)))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn default_limits_are_the_serve_defaults() {
        let cmd = Cli::command().mut_args(|a| a.env(None::<&'static str>));
        let serve = Cli::from_arg_matches(&cmd.try_get_matches_from(["msgbus"]).unwrap())
            .unwrap()
            .serve;
        assert_eq!(
            DocLimits::default(),
            DocLimits {
                max_wait_secs: serve.max_wait.as_secs(),
                max_batch_events: serve.max_batch_events,
            }
        );
    }
}
