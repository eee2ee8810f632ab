//! Work queues: the routes of queue consumers (`"mode": "queue"`, created
//! with `PUT /consumers/{name}`; see [`crate::queue`]).
//!
//! - `POST /consumers/{name}/fetch` leases up to `max` events, long-polling
//!   up to `wait` seconds;
//! - `POST /consumers/{name}/ack` (shared with cursor consumers, see
//!   [`super::consumers::ack`]) acknowledges events one by one, durably
//!   before the 200;
//! - `POST /consumers/{name}/nack` and `/extend` give a lease back or renew
//!   it;
//! - `GET /consumers/{name}/dead` and `POST /consumers/{name}/dead/redrive`
//!   list the dead letters and put them back.
//!
//! A stale ack (its lease ran out and the event was leased to another
//! worker) is accepted while the event is not yet acknowledged: the work
//! was done, refusing it would only have it done a second time, and the
//! guarantee is at-least-once either way. The other worker's ack, nack or
//! extend of that event then answers 409, telling it to drop the event.
//! An ack of an event already acknowledged answers 409 (`already-acknowledged`):
//! a client that retries an ack whose answer it lost may take that 409 as
//! done. Nack and extend may name the lease (`lease`): a lease that is no
//! longer the event's current one is refused with 409 (`lease-lost`).
//!
//! The handlers call [`crate::queue::QueueService`], whichever backend
//! serves it; with `--backend nats` some answers differ where JetStream
//! cannot tell (see `crate::jetstream::queues` and the README).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

use super::body;
use super::consumers::{consumer_problem, find, invalid, object_body};
use super::error::Problem;
use super::AppState;
use crate::auth::Principal;
use crate::event::FieldError;
use crate::queue::state::QueueError;
use crate::queue::{QueueFailure, QueueStats};
use crate::store::{Consumer, ConsumerError};

/// Most events one fetch leases.
pub const MAX_FETCH: u64 = 1000;
/// Most seqs in one ack or redrive.
pub const MAX_SEQS: usize = 1000;
/// Longest lease a queue consumer may have, in seconds (12 hours).
pub const MAX_LEASE_SECS: f64 = 43_200.0;
/// Longest nack delay, in seconds (12 hours).
pub const MAX_DELAY_SECS: f64 = 43_200.0;

/// A queue consumer's settings and numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Seconds a fetched event stays leased.
    pub lease: f64,
    /// Deliveries after which an unacknowledged event becomes a dead letter.
    pub max_deliver: u32,
    /// `"subject"`: at most one event per subject in flight; `"none"`.
    pub ordering: &'static str,
    /// Events read and waiting for a worker.
    pub pending: u64,
    /// Stored events after the last one the queue read (of any type: the
    /// filter is applied when they are read); they wait too. Always 0 with
    /// `--backend nats`, whose `pending` counts every matching event not
    /// yet delivered.
    pub unread: u64,
    /// Events leased now.
    pub leased: u64,
    /// Events acknowledged since the server started (with `--backend
    /// nats`: through this instance).
    pub acknowledged: u64,
    /// Deliveries after the first, since the server started (with
    /// `--backend nats`: events being redelivered now).
    pub redelivered: u64,
    /// Dead letters kept (durable).
    pub dead: u64,
    /// Every matching event at or below it is acknowledged or dead.
    pub ack_floor: u64,
    /// Age in seconds (from its `time`) of the oldest event read and not
    /// yet acknowledged; absent when none waits or is leased.
    pub oldest_unacked_age_seconds: Option<f64>,
}

impl QueueView {
    /// The view of queue consumer `c` with its numbers `s`.
    pub fn new(c: &Consumer, s: QueueStats) -> Option<Self> {
        let q = c.queue?;
        Some(QueueView {
            lease: q.lease_ms as f64 / 1000.0,
            max_deliver: q.max_deliver,
            ordering: if q.ordered_by_subject {
                "subject"
            } else {
                "none"
            },
            pending: s.pending,
            unread: s.unread,
            leased: s.leased,
            acknowledged: s.acknowledged,
            redelivered: s.redelivered,
            dead: s.dead,
            ack_floor: s.ack_floor,
            oldest_unacked_age_seconds: s.oldest_unacked_age_seconds,
        })
    }
}

/// `POST /consumers/{name}/fetch` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct FetchDoc {
    /// Most events to lease, 1 to 1000 (default 1).
    pub max: Option<u64>,
    /// When none is available, wait up to this many seconds (0 to
    /// --max-wait; default 0).
    pub wait: Option<u64>,
}

/// One leased event.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedEventDoc {
    /// Its seq.
    pub seq: u64,
    /// The delivery attempt, from 1 (back at 1 after a server restart).
    pub attempt: u32,
    /// The lease id (for nack and extend).
    pub lease: String,
    /// Milliseconds until the lease runs out.
    pub lease_ms: u64,
    /// The event.
    #[schema(value_type = Object)]
    pub event: Value,
}

/// `POST /consumers/{name}/fetch` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FetchAnswerDoc {
    /// The consumer.
    pub consumer: String,
    /// The leased events in seq order (none when `wait` passed first).
    pub events: Vec<LeasedEventDoc>,
}

/// `POST /consumers/{name}/ack` answer for a queue consumer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueAckAnswer {
    /// The consumer.
    pub consumer: String,
    /// The seqs acknowledged (durably).
    pub acked: Vec<u64>,
    /// The ack floor after them.
    pub ack_floor: u64,
}

/// `POST /consumers/{name}/nack` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct NackDoc {
    /// The leased event.
    pub seq: u64,
    /// Its lease id (optional: when given, it must be the current one).
    pub lease: Option<String>,
    /// Deliver it again after this many seconds (default 0: at once).
    pub delay: Option<f64>,
}

/// `POST /consumers/{name}/extend` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtendDoc {
    /// The leased event.
    pub seq: u64,
    /// Its lease id (optional: when given, it must be the current one).
    pub lease: Option<String>,
}

/// `POST /consumers/{name}/nack` and `/extend` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseAnswer {
    /// The seq.
    pub seq: u64,
    /// Milliseconds until the lease runs out (0 after a nack).
    pub lease_ms: u64,
}

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The event's seq.
    pub seq: u64,
    /// Deliveries it had.
    pub attempts: u32,
    /// When it became a dead letter (RFC 3339).
    pub at: String,
    /// Why.
    pub reason: String,
}

/// `GET /consumers/{name}/dead` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadList {
    /// The consumer.
    pub consumer: String,
    /// Dead letters by seq.
    pub dead: Vec<DeadLetterView>,
}

/// `POST /consumers/{name}/dead/redrive` body (optional).
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveDoc {
    /// The dead letters to put back; absent: all of them.
    pub seqs: Option<Vec<u64>>,
}

/// `POST /consumers/{name}/dead/redrive` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveAnswer {
    /// The consumer.
    pub consumer: String,
    /// The seqs put back in the queue.
    pub redriven: Vec<u64>,
}

fn conflict(slug: &'static str, title: &'static str, field: &str, e: impl ToString) -> Problem {
    let detail = e.to_string();
    let mut p = Problem::new(StatusCode::CONFLICT, slug, title, detail.clone());
    p.errors.push(FieldError {
        field: field.into(),
        message: detail,
    });
    p
}

fn too_many(slug: &'static str, title: &'static str, e: impl ToString) -> Problem {
    let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, slug, title, e.to_string());
    p.retry_after = Some(1);
    p
}

/// The problem of a failed queue request.
pub fn queue_problem(e: QueueFailure) -> Problem {
    match e {
        QueueFailure::Queue(e @ QueueError::NotPending(_)) => {
            conflict("not-pending", "Event not waiting for an ack", "seq", e)
        }
        QueueFailure::Queue(e @ QueueError::Committing(_)) => {
            conflict("ack-in-progress", "Ack in progress", "seq", e)
        }
        QueueFailure::Queue(e @ QueueError::NotLeased(_)) => {
            conflict("not-leased", "Event not leased", "seq", e)
        }
        QueueFailure::Queue(e @ QueueError::LeaseLost { .. }) => {
            conflict("lease-lost", "Lease no longer valid", "lease", e)
        }
        QueueFailure::Queue(e @ QueueError::Duplicate(_)) => invalid("seqs", e.to_string()),
        QueueFailure::TooManyLeases { .. } => too_many("too-many-leases", "Too many leases", e),
        QueueFailure::Consumer(e) => consumer_problem(e),
    }
}

fn queue_of(state: &AppState, name: &str, p: &Principal) -> Result<Consumer, Problem> {
    let c = find(state.store.as_ref(), name, p)?;
    if c.queue.is_none() {
        return Err(consumer_problem(ConsumerError::NotQueue(c.name)));
    }
    Ok(c)
}

fn take_u64(obj: &mut Map<String, Value>, field: &str) -> Result<Option<u64>, Problem> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, "must be a non-negative integer")),
    }
}

fn take_secs(obj: &mut Map<String, Value>, field: &str, max: f64) -> Result<f64, Problem> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(0.0),
        Some(v) => v
            .as_f64()
            .filter(|s| (0.0..=max).contains(s))
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("must be a number of seconds from 0 to {max}"),
                )
            }),
    }
}

fn take_lease(obj: &mut Map<String, Value>) -> Result<Option<String>, Problem> {
    match obj.remove("lease") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 64 => Ok(Some(s)),
        Some(_) => Err(invalid("lease", "must be a lease id (a string)")),
    }
}

/// A list of seqs (`seqs`), 1 to [`MAX_SEQS`] of them.
pub fn take_seqs(obj: &mut Map<String, Value>) -> Result<Option<Vec<u64>>, Problem> {
    match obj.remove("seqs") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_SEQS => a
            .iter()
            .map(|v| v.as_u64())
            .collect::<Option<Vec<u64>>>()
            .map(Some)
            .ok_or_else(|| invalid("seqs", "must hold non-negative integers")),
        Some(_) => Err(invalid(
            "seqs",
            format!("must be a list of 1 to {MAX_SEQS} seqs"),
        )),
    }
}

fn no_more(obj: &Map<String, Value>, known: &str) -> Result<(), Problem> {
    match obj.keys().next() {
        Some(k) => Err(invalid(k, format!("unknown field; known: {known}"))),
        None => Ok(()),
    }
}

/// Lease events of a queue consumer.
#[utoipa::path(
    post, path = "/consumers/{name}/fetch", tag = "queues",
    params(("name" = String, Path, description = "Queue consumer name")),
    request_body(content = FetchDoc, content_type = "application/json",
        description = "Optional: `{}` leases one event without waiting."),
    responses(
        (status = 200, description = "The events leased to the caller (none when `wait` passed first). Each must be acked, nacked or extended before its lease runs out, or it is delivered to another worker.", body = FetchAnswerDoc),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cursor consumer (`not-queue`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`max` or `wait` out of range, or an unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The consumer already has --queue-max-leases events leased (`too-many-leases`)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Timed out, or a stored record failed verification", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn fetch(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let name = body::path_param(name, "name")?;
    let c = queue_of(&state, &name, &principal)?;
    let mut obj = object_body(&headers, body, state.settings.body_timeout).await?;
    let max = take_u64(&mut obj, "max")?.unwrap_or(1);
    if !(1..=MAX_FETCH).contains(&max) {
        return Err(invalid("max", format!("must be from 1 to {MAX_FETCH}")));
    }
    let max_wait = state.settings.max_wait.as_secs();
    let wait = take_u64(&mut obj, "wait")?.unwrap_or(0);
    if wait > max_wait {
        return Err(invalid(
            "wait",
            format!("must be from 0 to {max_wait} seconds (--max-wait)"),
        ));
    }
    no_more(&obj, "max, wait")?;
    let got = state
        .queues
        .fetch(
            &c,
            max as usize,
            Duration::from_secs(wait),
            state.shutdown.clone(),
        )
        .await
        .map_err(queue_problem)?;
    let mut text = Vec::with_capacity(256 + got.iter().map(|d| d.event.len() + 96).sum::<usize>());
    text.extend_from_slice(b"{\"consumer\":");
    text.extend_from_slice(&serde_json::to_vec(&c.name).unwrap_or_default());
    text.extend_from_slice(b",\"events\":[");
    for (i, d) in got.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(
            format!(
                "{{\"seq\":{},\"attempt\":{},\"lease\":\"{}\",\"lease_ms\":{},\"event\":",
                d.seq, d.attempt, d.lease, d.lease_ms
            )
            .as_bytes(),
        );
        text.extend_from_slice(&d.event);
        text.push(b'}');
    }
    text.extend_from_slice(b"]}");
    let mut res = Response::new(Body::from(text));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// The queue side of `POST /consumers/{name}/ack`: `seq` or `seqs`.
pub async fn ack(
    state: &AppState,
    c: Consumer,
    mut obj: Map<String, Value>,
) -> Result<Response, Problem> {
    let seq = take_u64(&mut obj, "seq")?;
    let seqs = take_seqs(&mut obj)?;
    no_more(&obj, "seq, seqs")?;
    let seqs = match (seq, seqs) {
        (Some(s), None) => vec![s],
        (None, Some(s)) => s,
        _ => {
            return Err(invalid(
                "seq",
                "give either `seq` (one event) or `seqs` (a list of events) to acknowledge",
            ))
        }
    };
    let floor = state.queues.ack(&c, &seqs).await.map_err(queue_problem)?;
    Ok(Json(QueueAckAnswer {
        consumer: c.name,
        acked: seqs,
        ack_floor: floor,
    })
    .into_response())
}

/// Give a leased event back.
#[utoipa::path(
    post, path = "/consumers/{name}/nack", tag = "queues",
    params(("name" = String, Path, description = "Queue consumer name")),
    request_body(content = NackDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Back in the queue: delivered again at once or after `delay` (or, after `max_deliver` deliveries, set aside as a dead letter)", body = LeaseAnswer),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cursor consumer, the event is not leased (`not-leased`), or `lease` is not its current lease (`lease-lost`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A missing or invalid field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn nack(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LeaseAnswer>, Problem> {
    let (c, mut obj, seq, lease) = leased_request(&state, name, &principal, &headers, body).await?;
    let delay = take_secs(&mut obj, "delay", MAX_DELAY_SECS)?;
    no_more(&obj, "seq, lease, delay")?;
    state
        .queues
        .nack(&c, seq, lease.as_deref(), Duration::from_secs_f64(delay))
        .await
        .map_err(queue_problem)?;
    Ok(Json(LeaseAnswer { seq, lease_ms: 0 }))
}

/// Renew a lease.
#[utoipa::path(
    post, path = "/consumers/{name}/extend", tag = "queues",
    params(("name" = String, Path, description = "Queue consumer name")),
    request_body(content = ExtendDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Leased for another lease period from now", body = LeaseAnswer),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cursor consumer, the event is not leased (`not-leased`), or `lease` is not its current lease (`lease-lost`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A missing or invalid field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn extend(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LeaseAnswer>, Problem> {
    let (c, obj, seq, lease) = leased_request(&state, name, &principal, &headers, body).await?;
    no_more(&obj, "seq, lease")?;
    let lease_ms = state
        .queues
        .extend(&c, seq, lease.as_deref())
        .await
        .map_err(queue_problem)?;
    Ok(Json(LeaseAnswer { seq, lease_ms }))
}

/// What `nack` and `extend` both start from: the queue consumer, the
/// request's JSON object with `seq` (required) and `lease` (optional)
/// taken out, and those two.
async fn leased_request(
    state: &AppState,
    name: Result<Path<String>, PathRejection>,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Consumer, Map<String, Value>, u64, Option<String>), Problem> {
    let name = body::path_param(name, "name")?;
    let c = queue_of(state, &name, principal)?;
    let mut obj = object_body(headers, body, state.settings.body_timeout).await?;
    let seq = take_u64(&mut obj, "seq")?
        .ok_or_else(|| invalid("seq", "is required: the leased event's seq"))?;
    let lease = take_lease(&mut obj)?;
    Ok((c, obj, seq, lease))
}

/// List a queue consumer's dead letters.
#[utoipa::path(
    get, path = "/consumers/{name}/dead", tag = "queues",
    params(("name" = String, Path, description = "Queue consumer name")),
    responses(
        (status = 200, description = "Its dead letters, by seq", body = DeadList),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cursor consumer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn dead(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<DeadList>, Problem> {
    let name = body::path_param(name, "name")?;
    let c = queue_of(&state, &name, &principal)?;
    let dead = state.queues.dead(&c).await.map_err(queue_problem)?;
    Ok(Json(DeadList {
        consumer: c.name,
        dead: dead
            .into_iter()
            .map(|(seq, d)| DeadLetterView {
                seq,
                attempts: d.attempts,
                at: d.at,
                reason: d.reason,
            })
            .collect(),
    }))
}

/// Put dead letters back in the queue.
#[utoipa::path(
    post, path = "/consumers/{name}/dead/redrive", tag = "queues",
    params(("name" = String, Path, description = "Queue consumer name")),
    request_body(content = RedriveDoc, content_type = "application/json",
        description = "Optional: no body (or `{}`) redrives every dead letter."),
    responses(
        (status = 200, description = "Back in the queue (durably), from delivery attempt 1", body = RedriveAnswer),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cursor consumer, or a listed seq is not a dead letter (`not-dead`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only, shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn redrive(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RedriveAnswer>, Problem> {
    let name = body::path_param(name, "name")?;
    let c = queue_of(&state, &name, &principal)?;
    let mut obj = object_body(&headers, body, state.settings.body_timeout).await?;
    let seqs = take_seqs(&mut obj)?;
    no_more(&obj, "seqs")?;
    let redriven = state
        .queues
        .redrive(&c, seqs)
        .await
        .map_err(queue_problem)?;
    Ok(Json(RedriveAnswer {
        consumer: c.name,
        redriven,
    }))
}
