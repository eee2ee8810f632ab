//! `/consumers`: durable named cursors kept by the server.
//!
//! A consumer reads the events after its committed cursor
//! (`GET /consumers/{name}/events`, long-poll like `GET /events`) and moves
//! the cursor with `POST /consumers/{name}/ack`. The ack is written through
//! the writer and fsynced before the 200, so after it a crash never moves
//! the cursor back. Delivery is at-least-once: what was read but not acked
//! is delivered again, after a crash too.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::{self, QueryParams};
use super::error::Problem;
use super::events::{long_poll, page_response, Position, DEFAULT_LIMIT, MAX_LIMIT};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::event::FieldError;
use crate::store::{Consumer, ConsumerError, ConsumerStart as Start, Filter};
use crate::store::{Matcher, Store};
use axum::Extension;
use std::sync::Arc;

/// Longest consumer name.
const MAX_NAME: usize = 128;
/// Largest request body accepted here.
pub const MAX_BODY: usize = 64 << 10;

/// What a consumer selects (the filters of `GET /events`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
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
    /// The access scope of the token that created the consumer: it only
    /// ever reads events inside it (absent: no scope). Set by the server,
    /// never by the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeView>,
}

/// An access scope: allowed type and source prefixes (an empty list
/// allows every value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScopeView {
    /// Allowed type prefixes.
    pub type_prefixes: Vec<String>,
    /// Allowed source prefixes.
    pub source_prefixes: Vec<String>,
}

impl From<Filter> for ConsumerFilter {
    fn from(f: Filter) -> Self {
        ConsumerFilter {
            ty: f.ty,
            type_prefix: f.type_prefix,
            source: f.source,
            subject: f.subject,
            scope: (!f.scope.is_unrestricted()).then_some(ScopeView {
                type_prefixes: f.scope.type_prefixes,
                source_prefixes: f.scope.source_prefixes,
            }),
        }
    }
}

/// A consumer as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerView {
    /// Its name.
    pub name: String,
    /// What it selects.
    pub filter: ConsumerFilter,
    /// The committed cursor: reads return events after this seq.
    pub cursor: u64,
    /// Events stored after the cursor (of any type: filters are not
    /// applied; ack `next_after` of a read to skip non-matching ones).
    pub lag: u64,
    /// Newest stored seq.
    pub last_seq: u64,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When its filters or cursor last changed (RFC 3339).
    pub updated_at: String,
    /// `"cursor"` (one committed cursor) or `"queue"` (a work queue shared
    /// by workers: `POST /consumers/{name}/fetch`).
    pub mode: &'static str,
    /// A queue consumer's settings and numbers (absent for a cursor
    /// consumer). For a queue, `cursor` and `lag` are where it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queues::QueueView>,
}

impl ConsumerView {
    fn new(c: Consumer, head: u64, queues: &dyn crate::queue::QueueService) -> Self {
        let queue = c
            .queue
            .is_some()
            .then(|| super::queues::QueueView::new(&c, queues.stats(&c)))
            .flatten();
        ConsumerView {
            lag: head.saturating_sub(c.cursor),
            mode: if c.queue.is_some() { "queue" } else { "cursor" },
            queue,
            last_seq: head,
            name: c.name,
            filter: c.filter.into(),
            cursor: c.cursor,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// All consumers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerList {
    /// By name.
    pub consumers: Vec<ConsumerView>,
}

/// `PUT /consumers/{name}` body (every field optional).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerSpecDoc {
    /// Only events of this exact type.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// Only events whose type starts with this.
    pub type_prefix: Option<String>,
    /// Only events from this source.
    pub source: Option<String>,
    /// Only events with this subject.
    pub subject: Option<String>,
    /// `"earliest"` (the oldest retained event; the default on creation),
    /// `"latest"` (only events stored from now on) or a seq to start at.
    /// On an existing consumer it moves the cursor (also backwards);
    /// absent, the cursor stays.
    #[schema(value_type = Option<Object>, example = "earliest")]
    pub start: Option<Value>,
    /// `"cursor"` (the default: one committed cursor) or `"queue"` (a work
    /// queue shared by workers). Fixed at creation.
    pub mode: Option<String>,
    /// Queue only: seconds a fetched event stays leased (default 30, at
    /// most 43200).
    pub lease: Option<f64>,
    /// Queue only: deliveries after which an unacknowledged event becomes a
    /// dead letter (default 5, 1 to 1000).
    pub max_deliver: Option<u32>,
    /// Queue only: `"subject"` (at most one event per CloudEvents subject
    /// in flight: each subject's events in seq order) or `"none"` (default).
    pub ordering: Option<String>,
}

/// `POST /consumers/{name}/ack` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckDoc {
    /// A cursor consumer: the seq processed up to and including (usually
    /// the last event read, or `next_after` to also skip events the filters
    /// did not match). A queue consumer: the one event acknowledged.
    pub seq: Option<u64>,
    /// A queue consumer only: the events acknowledged (instead of `seq`;
    /// all or none).
    pub seqs: Option<Vec<u64>>,
}

/// `POST /consumers/{name}/ack` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AckAnswer {
    /// A cursor consumer: the consumer with its new cursor.
    Cursor(Box<ConsumerView>),
    /// A queue consumer: what was acknowledged.
    Queue(super::queues::QueueAckAnswer),
}

/// A page of a consumer's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerPageDoc {
    /// The consumer.
    pub consumer: String,
    /// Its committed cursor; the events are after it.
    pub cursor: u64,
    /// Matching events in sequence order.
    pub events: Vec<super::events::StoredEventDoc>,
    /// Last seq examined: ack it once these events are processed.
    pub next_after: u64,
    /// Newest stored seq.
    pub last_seq: u64,
}

pub(super) fn consumer_problem(e: ConsumerError) -> Problem {
    match e {
        ConsumerError::NotFound(name) => Problem::not_found(format!(
            "no consumer named {name:?}; create it with PUT /consumers/{name}"
        )),
        e @ ConsumerError::Backwards { .. } => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "ack-backwards",
                "Ack behind the cursor",
                e.to_string(),
            );
            p.errors.push(FieldError {
                field: "seq".into(),
                message: "is behind the committed cursor".into(),
            });
            p
        }
        e @ ConsumerError::PastHead { .. } => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "past-head",
                "Seq past the newest event",
                e.to_string(),
            );
            p.errors.push(FieldError {
                field: "seq".into(),
                message: "is past the newest stored event".into(),
            });
            p
        }
        e @ ConsumerError::TooMany { .. } => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "too-many-consumers",
                "Too many consumers",
                e.to_string(),
            );
            p.errors.push(FieldError {
                field: "name".into(),
                message: "a new consumer would pass --max-consumers".into(),
            });
            p
        }
        e @ (ConsumerError::NotQueue(_) | ConsumerError::ModeChange { .. }) => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "wrong-mode",
                "Wrong consumer mode",
                e.to_string(),
            );
            p.errors.push(FieldError {
                field: "mode".into(),
                message: e.to_string(),
            });
            p
        }
        e @ ConsumerError::AlreadyAcked(_) => {
            conflict_seq("already-acknowledged", "Already acknowledged", e)
        }
        e @ ConsumerError::Dead(_) => conflict_seq("dead-letter", "A dead letter", e),
        e @ ConsumerError::NotDead(_) => conflict_seq("not-dead", "Not a dead letter", e),
        e @ ConsumerError::TooManyAcked { .. } => {
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-acked",
                "Too many acknowledgements above the ack floor",
                e.to_string(),
            );
            p.retry_after = Some(1);
            p
        }
        ConsumerError::Store(e) => e.into(),
    }
}

fn conflict_seq(slug: &'static str, title: &'static str, e: ConsumerError) -> Problem {
    let mut p = Problem::new(StatusCode::CONFLICT, slug, title, e.to_string());
    p.errors.push(FieldError {
        field: "seq".into(),
        message: e.to_string(),
    });
    p
}

pub(super) fn invalid(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid_field(
        "invalid-consumer",
        "Invalid consumer request",
        field,
        message,
    )
}

fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("must be 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '-', '_' and '.'"),
        ))
    }
}

/// Reads an optional JSON object body; an empty body is an empty object.
pub(super) async fn object_body(
    headers: &HeaderMap,
    body: Body,
    timeout: std::time::Duration,
) -> Result<Map<String, Value>, Problem> {
    body::require_media_type(headers, &["application/json"])?;
    let bytes = body::read_limited(headers, body, MAX_BODY, timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match body::parse_json(&bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(invalid("$", "must be a JSON object")),
    }
}

fn parse_spec(body: Map<String, Value>) -> Result<(Filter, Option<Start>), Problem> {
    let mut filter = Filter::default();
    let mut start = None;
    for (k, v) in body {
        let slot = match k.as_str() {
            "type" => &mut filter.ty,
            "type_prefix" => &mut filter.type_prefix,
            "source" => &mut filter.source,
            "subject" => &mut filter.subject,
            "start" => {
                start = match &v {
                    Value::Null => None,
                    Value::String(s) if s == "earliest" => Some(Start::Earliest),
                    Value::String(s) if s == "latest" => Some(Start::Latest),
                    Value::Number(n) if n.as_u64().is_some_and(|s| s >= 1) => {
                        Some(Start::Seq(n.as_u64().unwrap_or(1)))
                    }
                    _ => {
                        return Err(invalid(
                            "start",
                            "must be \"earliest\", \"latest\" or a seq of at least 1",
                        ))
                    }
                };
                continue;
            }
            _ => {
                return Err(invalid(
                    &k,
                    "unknown field; known: type, type_prefix, source, subject, start, mode, lease, max_deliver, ordering",
                ))
            }
        };
        *slot = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => {
                // No longer than the attribute it is compared with: a longer
                // value could never match, and the writer keeps every filter.
                let max = match k.as_str() {
                    "type" | "type_prefix" => crate::event::MAX_TYPE_LEN,
                    "source" => crate::event::MAX_SOURCE_LEN,
                    _ => crate::event::MAX_SUBJECT_LEN,
                };
                let chars = s.chars().count();
                if chars > max {
                    return Err(invalid(
                        &k,
                        format!("is {chars} characters; the most is {max}"),
                    ));
                }
                Some(s)
            }
            _ => return Err(invalid(&k, "must be a string")),
        };
    }
    Ok((filter, start))
}

/// The queue fields of a `PUT /consumers/{name}` body.
#[derive(Default)]
struct QueueFields {
    queue: Option<bool>,
    lease: Option<f64>,
    max_deliver: Option<u32>,
    ordered: Option<bool>,
}

fn take_queue_fields(body: &mut Map<String, Value>) -> Result<QueueFields, Problem> {
    let mut f = QueueFields::default();
    match body.remove("mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "queue" => f.queue = Some(true),
        Some(Value::String(m)) if m == "cursor" => f.queue = Some(false),
        Some(_) => return Err(invalid("mode", "must be \"cursor\" or \"queue\"")),
    }
    let max_lease = super::queues::MAX_LEASE_SECS;
    match body.remove("lease") {
        None | Some(Value::Null) => {}
        Some(v) => {
            f.lease = Some(
                v.as_f64()
                    .filter(|s| *s >= 0.001 && *s <= max_lease)
                    .ok_or_else(|| {
                        invalid(
                            "lease",
                            format!("must be a number of seconds from 0.001 to {max_lease}"),
                        )
                    })?,
            )
        }
    }
    match body.remove("max_deliver") {
        None | Some(Value::Null) => {}
        Some(v) => {
            f.max_deliver = Some(
                v.as_u64()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| invalid("max_deliver", "must be an integer from 1 to 1000"))?
                    as u32,
            )
        }
    }
    match body.remove("ordering") {
        None | Some(Value::Null) => {}
        Some(Value::String(o)) if o == "subject" => f.ordered = Some(true),
        Some(Value::String(o)) if o == "none" => f.ordered = Some(false),
        Some(_) => return Err(invalid("ordering", "must be \"subject\" or \"none\"")),
    }
    Ok(f)
}

/// The queue settings of a consumer created or updated with `f`, which
/// existed with `existing` (none: a cursor consumer).
fn queue_spec(
    f: QueueFields,
    existing: Option<&Consumer>,
) -> Result<Option<crate::store::QueueSpec>, Problem> {
    let queue = f
        .queue
        .unwrap_or_else(|| existing.is_some_and(|c| c.queue.is_some()));
    if !queue {
        for (given, field) in [
            (f.lease.is_some(), "lease"),
            (f.max_deliver.is_some(), "max_deliver"),
            (f.ordered.is_some(), "ordering"),
        ] {
            if given {
                return Err(invalid(
                    field,
                    "applies to queue consumers only (\"mode\": \"queue\")",
                ));
            }
        }
        return Ok(None);
    }
    let base = existing
        .and_then(|c| c.queue)
        .unwrap_or(crate::store::QueueSpec {
            lease_ms: crate::queue::DEFAULT_LEASE.as_millis() as u64,
            max_deliver: crate::queue::DEFAULT_MAX_DELIVER,
            ordered_by_subject: false,
        });
    Ok(Some(crate::store::QueueSpec {
        lease_ms: f
            .lease
            .map_or(base.lease_ms, |s| (s * 1000.0).round() as u64),
        max_deliver: f.max_deliver.unwrap_or(base.max_deliver),
        ordered_by_subject: f.ordered.unwrap_or(base.ordered_by_subject),
    }))
}

fn location(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/consumers/{name}")).expect("a checked name is a valid header")
}

/// Create or update a consumer.
#[utoipa::path(
    put, path = "/consumers/{name}", tag = "consumers",
    params(("name" = String, Path, description = "1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.'")),
    request_body(content = ConsumerSpecDoc, content_type = "application/json",
        description = "Filters and an optional start position. The body is optional: none (or `{}`) is a consumer of every event from the oldest."),
    responses(
        (status = 201, description = "Created (durably)", body = ConsumerView,
            headers(("Location" = String, description = "/consumers/{name}"))),
        (status = 200, description = "Updated (durably)", body = ConsumerView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A browser request from another origin not allowed by --cors-allow-origin", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Creating it would pass --max-consumers, or `mode` differs from the existing consumer's", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`start` is before the oldest retained event", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or field (a filter longer than its attribute's limit: type and type_prefix 256 characters, source and subject 1024), or `start` past the next event", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only, shutting down, timed out or too many request bodies in flight", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "Free disk space below --min-free-bytes; nothing was written", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let name = body::path_param(name, "name")?;
    check_name(&name)?;
    let mut body = object_body(&headers, body, state.settings.body_timeout).await?;
    let queue_fields = take_queue_fields(&mut body)?;
    let (mut filter, start) = parse_spec(body)?;
    let existing = state.store.consumer(&name);
    let queue = queue_spec(queue_fields, existing.as_ref())?;
    if let Some(c) = &existing {
        check_within(&principal, c)?;
        if start.is_some() && principal.role != Role::Admin {
            return Err(super::auth::out_of_scope(
                &principal,
                "moving the cursor of an existing consumer (`start`) is admin work; it",
            ));
        }
    }
    // A scoped token's consumer carries the token's scope, whatever filter
    // was asked for; an unscoped caller keeps an existing consumer's scope.
    filter.scope = if principal.scope.is_unrestricted() {
        existing.map(|c| c.filter.scope).unwrap_or_default()
    } else {
        principal.scope.clone()
    };
    let (c, created) = state
        .store
        .put_consumer(
            name.clone(),
            filter,
            start,
            state.settings.max_consumers,
            queue,
        )
        .await
        .map_err(|e| match e {
            ConsumerError::PastHead { seq, head } => invalid(
                "start",
                format!(
                    "seq {seq} is past the next event to be stored ({})",
                    head + 1
                ),
            ),
            e => consumer_problem(e),
        })?;
    let view = ConsumerView::new(c, state.store.head(), state.queues.as_ref());
    if created {
        let mut res = (StatusCode::CREATED, Json(view)).into_response();
        res.headers_mut().insert(header::LOCATION, location(&name));
        Ok(res)
    } else {
        Ok(Json(view).into_response())
    }
}

/// List consumers with their cursor and lag.
#[utoipa::path(
    get, path = "/consumers", tag = "consumers",
    responses((status = 200, description = "Every consumer, by name", body = ConsumerList))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Json<ConsumerList> {
    let head = state.store.head();
    Json(ConsumerList {
        consumers: state
            .store
            .consumers()
            .into_iter()
            .filter(|c| principal.scope.contains(&c.filter.scope))
            .map(|c| ConsumerView::new(c, head, state.queues.as_ref()))
            .collect(),
    })
}

/// The consumer `name`, if `p` may use it: its scope must lie inside the
/// token's (a scoped token cannot read or ack a wider consumer).
pub(super) fn find(store: &dyn Store, name: &str, p: &Principal) -> Result<Consumer, Problem> {
    let c = store
        .consumer(name)
        .ok_or_else(|| consumer_problem(ConsumerError::NotFound(name.to_string())))?;
    check_within(p, &c)?;
    Ok(c)
}

/// 403 unless consumer `c`'s scope lies inside `p`'s.
fn check_within(p: &Principal, c: &Consumer) -> Result<(), Problem> {
    if p.scope.contains(&c.filter.scope) {
        Ok(())
    } else {
        Err(super::auth::out_of_scope(
            p,
            format!("consumer {:?} (its filter reaches further)", c.name),
        ))
    }
}

/// One consumer.
#[utoipa::path(
    get, path = "/consumers/{name}", tag = "consumers",
    params(("name" = String, Path, description = "Consumer name")),
    responses(
        (status = 200, description = "The consumer", body = ConsumerView),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ConsumerView>, Problem> {
    let name = body::path_param(name, "name")?;
    let c = find(state.store.as_ref(), &name, &principal)?;
    Ok(Json(ConsumerView::new(
        c,
        state.store.head(),
        state.queues.as_ref(),
    )))
}

/// Delete a consumer.
#[utoipa::path(
    delete, path = "/consumers/{name}", tag = "consumers",
    params(("name" = String, Path, description = "Consumer name")),
    responses(
        (status = 204, description = "Deleted (durably)"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only, shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "Free disk space below --min-free-bytes; nothing was written", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = body::path_param(name, "name")?;
    state
        .store
        .delete_consumer(name)
        .await
        .map_err(consumer_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read the events after a consumer's committed cursor.
#[utoipa::path(
    get, path = "/consumers/{name}/events", tag = "consumers",
    params(
        ("name" = String, Path, description = "Consumer name"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Most events to return, 1 to 1000 (default 100)"),
        ("wait" = Option<u64>, Query, description = "Long-poll: when nothing matches yet, wait up to this many seconds (max --max-wait)"),
    ),
    responses(
        (status = 200, description = "The next events; the cursor does not move until an ack", body = ConsumerPageDoc),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Retention deleted events after the cursor; `oldest_seq` names the oldest available. \
            Ack `oldest_seq - 1` (or PUT a new start) to accept the loss and go on.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Timed out, or a stored record failed verification", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let name = body::path_param(name, "name")?;
    let q = QueryParams::parse(query.as_deref(), &["limit", "wait"])?;
    let limit = q.u64_in("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)? as usize;
    let wait = Duration::from_secs(q.u64_in("wait", 0, 0, state.settings.max_wait.as_secs())?);
    let c = find(state.store.as_ref(), &name, &principal)?;
    let filter = Matcher::new(c.filter);
    let (page, last_seq) =
        long_poll(&state, Position::Cursor(c.cursor), &filter, limit, wait).await?;
    let mut prefix = Vec::with_capacity(128);
    prefix.extend_from_slice(b"{\"consumer\":");
    prefix.extend_from_slice(&serde_json::to_vec(&c.name).unwrap_or_default());
    prefix.extend_from_slice(format!(",\"cursor\":{},", c.cursor).as_bytes());
    Ok(page_response(
        &prefix,
        &page.events,
        page.next_after,
        last_seq,
    ))
}

/// Commit a consumer's cursor.
#[utoipa::path(
    post, path = "/consumers/{name}/ack", tag = "consumers",
    params(("name" = String, Path, description = "Consumer name")),
    request_body(content = AckDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed and fsynced: a crash after this answer never moves the cursor back (a cursor consumer), or never delivers the acknowledged events again (a queue consumer)", body = AckAnswer),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A browser request from another origin not allowed by --cors-allow-origin", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`seq` is behind the committed cursor; for a queue: an event already acknowledged (`already-acknowledged`: a retried ack whose answer was lost may take this as done), a dead letter, not an event of the consumer, or being acknowledged by another request (nothing of the request was acknowledged)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`seq` is missing, not a number, or past the newest stored event; `seqs` invalid or listing a seq twice", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A queue consumer would keep more than --queue-max-acked acknowledged or dead events above its ack floor (`too-many-acked`)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Queue full, read-only, shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "Free disk space below --min-free-bytes; nothing was written", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ack(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let name = body::path_param(name, "name")?;
    let c = find(state.store.as_ref(), &name, &principal)?;
    let mut obj = object_body(&headers, body, state.settings.body_timeout).await?;
    if c.queue.is_some() {
        return super::queues::ack(&state, c, obj).await;
    }
    let seq = obj.remove("seq").and_then(|v| v.as_u64()).ok_or_else(|| {
        invalid(
            "seq",
            "is required: the seq processed up to, a non-negative integer",
        )
    })?;
    if let Some(k) = obj.keys().next() {
        return Err(invalid(k, "unknown field; known: seq"));
    }
    let c = state.store.ack(name, seq).await.map_err(consumer_problem)?;
    Ok(Json(ConsumerView::new(
        c,
        state.store.head(),
        state.queues.as_ref(),
    ))
    .into_response())
}
