//! `/events`: publish one event or a batch, read pages (with long-poll), and
//! fetch one event by sequence number.
//!
//! Reads are answered by splicing the stored event bytes into the response
//! as they are, so an event reads back byte-identical and is never re-parsed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use utoipa::ToSchema;

use super::body::{self, QueryParams};
use super::error::Problem;
use super::AppState;
use crate::auth::Principal;
use crate::bulk;
use crate::event::PreparedEvent;
use crate::event::{self, EventError, FieldError};
use crate::store::{EventPage, StoredEvent};
use crate::store::{Matcher, Outcome, Scope};

/// Media types accepted for a single structured event.
const EVENT_TYPES: &[&str] = &["application/json", "application/cloudevents+json"];
/// Media types accepted for a batch.
const BATCH_TYPES: &[&str] = &["application/json", "application/cloudevents-batch+json"];
/// Default page size of `GET /events`.
pub const DEFAULT_LIMIT: u64 = 100;
/// Largest page size of `GET /events`.
pub const MAX_LIMIT: u64 = 1000;

/// The answer to a publish.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResult {
    /// Sequence number of the stored event (the original one for a duplicate).
    pub seq: u64,
    /// The event's `id` (generated when the request had none).
    pub id: String,
    /// The event's `source`.
    pub source: String,
    /// The event's `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The event's `time` (set by the server when the request had none).
    pub time: String,
    /// True when `(source, id)` was already stored and nothing new was written.
    pub duplicate: bool,
}

/// The answer to a batch publish: one result per item, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// Results in the order of the request's items.
    pub results: Vec<PublishResult>,
}

/// One stored event as read back.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEventDoc {
    /// Sequence number.
    pub seq: u64,
    /// The CloudEvent exactly as stored.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPageDoc {
    /// Matching events in sequence order.
    pub events: Vec<StoredEventDoc>,
    /// Pass as `after` to get the next page. It advances past events that
    /// did not match the filters, so a filtered reader never rescans them.
    pub next_after: u64,
    /// Sequence number of the newest stored event.
    pub last_seq: u64,
}

/// A CloudEvent in structured mode (only the attributes msgbus checks are
/// listed; extension attributes are kept as sent).
#[derive(Debug, Serialize, ToSchema)]
pub struct CloudEventDoc {
    /// Always "1.0"; filled in when absent.
    pub specversion: Option<String>,
    /// Unique within `source`; a UUIDv7 is generated when absent.
    pub id: Option<String>,
    /// Who produced the event (URI reference).
    pub source: String,
    /// What happened, e.g. `com.example.order.created`.
    #[serde(rename = "type")]
    pub ty: String,
    /// What the event is about.
    pub subject: Option<String>,
    /// RFC 3339 time; set by the server when absent.
    pub time: Option<String>,
    /// Media type of `data`.
    pub datacontenttype: Option<String>,
    /// Schema of `data`.
    pub dataschema: Option<String>,
    /// The payload.
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    /// A binary payload, base64-encoded (instead of `data`).
    pub data_base64: Option<String>,
}

/// A [`PublishResult`] serialized before the event goes to the writer, so
/// the event moves there instead of being cloned to answer afterwards;
/// [`Answer::finish`] adds what the writer decided. Writes the same JSON as
/// serializing a `PublishResult` (a unit test compares them).
struct Answer {
    /// `"id":…,"source":…`
    id_source: Vec<u8>,
    /// `,"type":…,"time":…` of the event sent (a duplicate answers with the
    /// stored event's instead).
    type_time: Vec<u8>,
}

impl Answer {
    fn new(ev: &PreparedEvent) -> Self {
        let mut id_source = Vec::with_capacity(ev.id.len() + ev.source.len() + 24);
        id_source.extend_from_slice(b"\"id\":");
        json_str(&mut id_source, &ev.id);
        id_source.extend_from_slice(b",\"source\":");
        json_str(&mut id_source, &ev.source);
        Answer {
            id_source,
            type_time: type_time(&ev.ty, &ev.time),
        }
    }

    /// Appends the result's JSON object to `out`.
    fn finish(self, o: &Outcome, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(o.seq.to_string().as_bytes());
        out.push(b',');
        out.extend_from_slice(&self.id_source);
        match &o.original {
            None => {
                out.extend_from_slice(&self.type_time);
                out.extend_from_slice(b",\"duplicate\":false}");
            }
            Some(orig) => {
                out.extend_from_slice(&type_time(&orig.ty, &orig.time));
                out.extend_from_slice(b",\"duplicate\":true}");
            }
        }
    }
}

fn type_time(ty: &str, time: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.len() + time.len() + 24);
    out.extend_from_slice(b",\"type\":");
    json_str(&mut out, ty);
    out.extend_from_slice(b",\"time\":");
    json_str(&mut out, time);
    out
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

fn location(seq: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("/events/{seq}")).expect("a path is a valid header value")
}

/// The largest body of `POST /events`: the event limit plus room for the
/// attributes the server adds (id, time) and JSON whitespace.
pub fn single_body_limit(max_event_bytes: usize) -> usize {
    max_event_bytes * 2 + 4096
}

/// Publish one event.
#[utoipa::path(
    post, path = "/events", tag = "events",
    request_body(content = CloudEventDoc, content_type = "application/json",
        description = "A CloudEvent in structured mode (`application/json` or `application/cloudevents+json`), \
                       or binary mode: `ce-type`, `ce-source` (and other `ce-*`) headers with the data as the body."),
    responses(
        (status = 201, description = "Stored durably (after fdatasync)", body = PublishResult,
            headers(("Location" = String, description = "/events/{seq}"))),
        (status = 200, description = "Duplicate of a stored (source, id): the original seq", body = PublishResult),
        (status = 400, description = "Malformed JSON or an empty body", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Event or body too large", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A browser request from another origin not allowed by --cors-allow-origin", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid event, or its data does not match its type's schema (`errors` names each violation, e.g. `data/items/0/price`; non-JSON data, or a `dataschema` that is not a version of the type)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only, shutting down, timed out or too many request bodies in flight", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "Free disk space below --min-free-bytes; nothing was written", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let limits = state.settings.limits;
    let bytes = body::read_limited(
        &headers,
        body,
        single_body_limit(limits.max_event_bytes),
        state.settings.body_timeout,
    )
    .await?;
    // Parse, scope, then the payload schema: on this task for a small
    // body, in the bulk lane for a large one (its data is large too).
    let binary = event::is_binary(&headers);
    if !binary {
        body::require_media_type(&headers, EVENT_TYPES)?;
        body::require_body(&bytes)?;
    }
    let large = bytes.len() >= bulk::PARSE_INLINE_MAX;
    let (st, who) = (state.clone(), principal.clone());
    let prepare = move || -> Result<PreparedEvent, Problem> {
        let mut prepared = if binary {
            event::from_binary(&headers, &bytes, limits)?
        } else {
            event::from_json(&bytes, "", limits)?
        };
        check_scope(&who, std::slice::from_ref(&prepared), false)?;
        super::schemas::check_payloads(&st, std::slice::from_mut(&mut prepared), false)?;
        Ok(prepared)
    };
    let prepared = if large {
        bulk::run(prepare).await?
    } else {
        prepare()?
    };
    let answer = Answer::new(&prepared);
    let mut outcomes = state.store.append(vec![prepared]).await?;
    let outcome = outcomes
        .pop()
        .ok_or_else(|| Problem::internal(&"the writer returned no outcome"))?;
    let status = if outcome.is_duplicate() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut body = Vec::with_capacity(256);
    answer.finish(&outcome, &mut body);
    let mut res = json_response(status, body);
    res.headers_mut()
        .insert(header::LOCATION, location(outcome.seq));
    Ok(res)
}

/// Publish a batch atomically.
#[utoipa::path(
    post, path = "/events/batch", tag = "events",
    request_body(content = Vec<CloudEventDoc>, content_type = "application/json",
        description = "A JSON array of structured CloudEvents (`application/json` or `application/cloudevents-batch+json`). \
                       All or nothing: one invalid item stores nothing."),
    responses(
        (status = 201, description = "Stored durably with one commit", body = BatchResult),
        (status = 200, description = "Every item was a duplicate", body = BatchResult),
        (status = 400, description = "Malformed JSON or an empty body", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too many items, or an item or the body too large", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A browser request from another origin not allowed by --cors-allow-origin", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An item is invalid, or its data does not match its type's schema; `errors` names it, e.g. `[3].type`, `[3].data/price`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only, shutting down, timed out or too many request bodies in flight", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 507, description = "Free disk space below --min-free-bytes; nothing was written", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish_batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    body::require_media_type(&headers, BATCH_TYPES)?;
    let settings = &state.settings;
    let bytes = body::read_limited(
        &headers,
        body,
        settings.max_batch_bytes,
        settings.body_timeout,
    )
    .await?;
    body::require_body(&bytes)?;
    let (limit, limits) = (settings.max_batch_events, settings.limits);
    let large = bytes.len() >= bulk::PARSE_INLINE_MAX;
    let st = state.clone();
    let prepare = move || -> Result<Vec<PreparedEvent>, Problem> {
        let mut prepared = parse_batch(&bytes, limit, limits)?;
        check_scope(&principal, &prepared, true)?;
        super::schemas::check_payloads(&st, &mut prepared, true)?;
        Ok(prepared)
    };
    let prepared = if large {
        bulk::run(prepare).await?
    } else {
        prepare()?
    };
    let answers: Vec<Answer> = prepared.iter().map(Answer::new).collect();
    let outcomes = state.store.append(prepared).await?;
    let any_new = outcomes.iter().any(|o| !o.is_duplicate());
    // Serialized as a BatchResult would be.
    let mut body = Vec::with_capacity(32 + outcomes.len() * 200);
    body.extend_from_slice(b"{\"results\":[");
    for (i, (answer, o)) in answers.into_iter().zip(&outcomes).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        answer.finish(o, &mut body);
    }
    body.extend_from_slice(b"]}");
    let status = if any_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, body))
}

/// 403 naming every event (`[3].type`, or `type` for a single event)
/// whose type or source lies outside the principal's scope: nothing of the
/// request is stored.
fn check_scope(p: &Principal, events: &[PreparedEvent], batch: bool) -> Result<(), Problem> {
    if p.scope.is_unrestricted() {
        return Ok(());
    }
    let mut errors = Vec::new();
    let mut outside = 0usize;
    for (i, e) in events.iter().enumerate() {
        let at = |f: &str| {
            if batch {
                format!("[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let mut bad = false;
        if !p.scope.allows_type(&e.ty) {
            bad = true;
            errors.push(FieldError {
                field: at("type"),
                message: format!(
                    "{:?} does not start with an allowed prefix ({})",
                    e.ty,
                    p.scope.type_prefixes.join(", ")
                ),
            });
        }
        if !p.scope.allows_source(&e.source) {
            bad = true;
            errors.push(FieldError {
                field: at("source"),
                message: format!(
                    "{:?} does not start with an allowed prefix ({})",
                    e.source,
                    p.scope.source_prefixes.join(", ")
                ),
            });
        }
        outside += usize::from(bad);
    }
    if errors.is_empty() {
        return Ok(());
    }
    let what = if batch {
        format!("{outside} of the batch's {} events", events.len())
    } else {
        "the event".to_string()
    };
    let mut problem = super::auth::out_of_scope(p, format!("{what} (nothing was stored)"));
    problem.errors = errors;
    problem.errors.truncate(super::error::MAX_LISTED_ERRORS);
    Err(problem)
}

/// Parses and validates a batch body: at most `limit` items, each a valid
/// event, or nothing.
fn parse_batch(
    bytes: &[u8],
    limit: usize,
    limits: event::Limits,
) -> Result<Vec<PreparedEvent>, Problem> {
    // Each item is kept as its JSON text and parsed once, by event::from_json.
    // Items are counted as the array is parsed: the one past the limit ends
    // the parse, so a body of millions of tiny items never becomes a list
    // of millions of entries.
    let over_limit = std::cell::Cell::new(false);
    let seed = BatchItems {
        limit,
        over_limit: &over_limit,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|items| {
        if !over_limit.get() {
            de.end()?;
        }
        Ok(items)
    });
    if over_limit.get() {
        return Err(Problem::too_large(format!(
            "the batch holds more than {0} events; the limit is {0} (--max-batch-events); nothing was stored",
            limit
        )));
    }
    let items: Vec<&RawValue> = match parsed {
        Ok(items) => items,
        // Valid JSON of another kind.
        Err(e) if e.is_data() => {
            return Err(Problem::invalid(
                "a batch must be a JSON array of events",
                vec![FieldError {
                    field: "$".into(),
                    message: "must be an array".into(),
                }],
            ))
        }
        Err(e) => return Err(Problem::bad_request(format!("malformed JSON: {e}"))),
    };
    if items.is_empty() {
        return Err(Problem::invalid(
            "a batch must hold at least one event",
            vec![FieldError {
                field: "$".into(),
                message: "must not be empty".into(),
            }],
        ));
    }
    let mut prepared = Vec::with_capacity(items.len());
    // The first errors are listed, the rest only counted (and the invalid
    // items named in the detail up to the same bound).
    let (mut errors, mut unlisted, mut bad_items) = (Vec::new(), 0usize, Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        match event::from_json(item.get().as_bytes(), &format!("[{i}]."), limits) {
            Ok(p) => prepared.push(p),
            Err(EventError::Invalid(e)) => {
                bad_items.push(i);
                let room = super::error::MAX_LISTED_ERRORS.saturating_sub(errors.len());
                unlisted += e.len().saturating_sub(room);
                errors.extend(e.into_iter().take(room));
            }
            Err(EventError::TooLarge { size, limit }) => {
                return Err(Problem::too_large(format!(
                    "item [{i}] is {size} bytes serialized; the limit is {limit} bytes (--max-event-bytes); nothing was stored"
                )))
            }
            Err(e @ EventError::Malformed(_)) => return Err(e.into()),
        }
    }
    if !bad_items.is_empty() {
        let mut named: Vec<String> = bad_items
            .iter()
            .take(20)
            .map(|i| format!("[{i}]"))
            .collect();
        if bad_items.len() > 20 {
            named.push(format!("and {} more", bad_items.len() - 20));
        }
        let detail = format!("invalid item(s) {}; nothing was stored", named.join(", "));
        return Err(Problem::invalid_counted(detail, errors, unlisted));
    }
    Ok(prepared)
}

/// The items of a batch array as JSON text, at most `limit` of them: the
/// parse stops with an error at the next one and sets `over_limit`.
struct BatchItems<'c> {
    limit: usize,
    over_limit: &'c std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for BatchItems<'_> {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchItems<'_> {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(self.limit.min(64));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.limit {
                self.over_limit.set(true);
                return Err(serde::de::Error::custom("too many items"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Read events in sequence order.
#[utoipa::path(
    get, path = "/events", tag = "events",
    params(
        ("after" = Option<u64>, Query, description = "Return events with seq greater than this (default 0: from the oldest)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Most events to return, 1 to 1000 (default 100); a page also stops before the event that would take it past --max-page-bytes (always at least one event; next_after continues)"),
        ("type" = Option<String>, Query, description = "Only events of this exact type"),
        ("type_prefix" = Option<String>, Query, description = "Only events whose type starts with this"),
        ("source" = Option<String>, Query, description = "Only events from this source"),
        ("subject" = Option<String>, Query, description = "Only events with this subject"),
        ("wait" = Option<u64>, Query, description = "Long-poll: when nothing matches yet, wait up to this many seconds (max --max-wait, default 60) for a matching event"),
    ),
    responses(
        (status = 200, description = "A page of events", body = EventPageDoc),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`after` is before the oldest retained event (deleted by retention); `oldest_seq` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Timed out, out of file descriptors (`too-many-open-files`, transient), or a stored record failed verification; retry after `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let q = QueryParams::parse(
        query.as_deref(),
        &[
            "after",
            "limit",
            "type",
            "type_prefix",
            "source",
            "subject",
            "wait",
        ],
    )?;
    let after = q.u64_in("after", 0, 0, u64::MAX)?;
    let limit = q.u64_in("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)? as usize;
    let max_wait = state.settings.max_wait.as_secs();
    let wait = Duration::from_secs(q.u64_in("wait", 0, 0, max_wait)?);
    let filter = Matcher::new(q.filter_within(&principal.scope));
    let (page, last_seq) = long_poll(&state, Position::After(after), &filter, limit, wait).await?;
    Ok(page_response(b"{", &page.events, page.next_after, last_seq))
}

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
pub enum Position {
    /// After this seq; 0 means from the oldest retained event.
    After(u64),
    /// A consumer's committed cursor: a real position even at 0, so one
    /// that retention passed is 410, never a jump to the oldest event.
    Cursor(u64),
}

/// Reads a page (at most `--max-page-bytes` of events, always at least
/// one); when it is empty and `wait` is not zero, waits (up to `wait`, or
/// until shutdown) for a matching event. Returns the page and the newest
/// stored seq.
pub async fn long_poll(
    state: &AppState,
    from: Position,
    filter: &Matcher,
    limit: usize,
    wait: Duration,
) -> Result<(EventPage, u64), Problem> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut head_rx = state.store.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut from = from;
    let max_bytes = state.settings.max_page_bytes;
    loop {
        // Mark the head as seen before reading, so a commit that lands after
        // the read wakes the wait below instead of being missed.
        head_rx.borrow_and_update();
        let page = match from {
            Position::After(after) => state.store.read(after, filter, limit, max_bytes).await?,
            Position::Cursor(c) => state.store.read_cursor(c, filter, limit, max_bytes).await?,
        };
        from = match from {
            Position::After(_) => Position::After(page.next_after),
            Position::Cursor(_) => Position::Cursor(page.next_after),
        };
        let waiting = !wait.is_zero() && page.events.is_empty() && !*shutdown.borrow();
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok((page, state.store.head()));
        }
        if page.next_after < state.store.head() {
            continue; // more to scan (a filtered read stopped at its scan budget)
        }
        tokio::select! {
            r = head_rx.changed() => if r.is_err() {
                return Ok((page, state.store.head()));
            },
            _ = shutdown.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Events at least this large go into a page's body as their own chunk,
/// shared with the store's copy instead of copied (hyper writes the chunks
/// with one vectored write); smaller ones are copied together into the
/// text between them.
const SHARE_EVENT_BYTES: usize = 16 * 1024;

/// A page answer: `prefix` (the object's opening, e.g. `{`), then
/// `"events":[{"seq":N,"event":<stored bytes>},...],"next_after":N,"last_seq":N}`.
/// Large events are not copied into the body (a 4 MiB page of large events
/// would otherwise be a 4 MiB copy on an async worker per request).
pub fn page_response(
    prefix: &[u8],
    events: &[StoredEvent],
    next_after: u64,
    last_seq: u64,
) -> Response {
    let mut chunks = Vec::new();
    let mut text = Vec::with_capacity(256);
    text.extend_from_slice(prefix);
    text.extend_from_slice(b"\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        if e.bytes.len() >= SHARE_EVENT_BYTES {
            crate::sse::open_event(&mut text, e.seq);
            chunks.push(Bytes::from(std::mem::take(&mut text)));
            chunks.push(e.bytes.clone());
            crate::sse::close_event(&mut text);
        } else {
            write_stored(&mut text, e);
        }
    }
    text.extend_from_slice(
        format!("],\"next_after\":{next_after},\"last_seq\":{last_seq}}}").as_bytes(),
    );
    chunks.push(Bytes::from(text));
    let mut res = Response::new(Body::new(Chunks::new(chunks)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A response body of ready chunks with a known total length (so the
/// answer carries `Content-Length`, not chunked encoding).
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            remaining,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.remaining -= c.len() as u64;
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Appends `{"seq":N,"event":<bytes>}` (the format lives in [`crate::sse`]).
pub fn write_stored(out: &mut Vec<u8>, e: &StoredEvent) {
    crate::sse::write_event(out, e.seq, &e.bytes);
}

/// A response with a JSON body built by hand.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Read one event by sequence number.
#[utoipa::path(
    get, path = "/events/{seq}", tag = "events",
    params(("seq" = u64, Path, description = "Sequence number")),
    responses(
        (status = 200, description = "The event", body = StoredEventDoc),
        (status = 400, description = "seq is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No event with this seq", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Deleted by retention; `oldest_seq` names the oldest retained event", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Timed out, out of file descriptors (`too-many-open-files`, transient), or the stored record failed verification; retry after `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    seq: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let seq = body::path_param(seq, "seq")?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| Problem::bad_param("seq", format!("{seq:?} is not a non-negative integer")))?;
    // Outside a scoped token's scope an event is answered as missing: the
    // token cannot even learn that it exists.
    let event = state
        .store
        .get(seq)
        .await?
        .filter(|e| in_scope(&principal.scope, &e.bytes));
    match event {
        Some(e) => {
            let mut out = Vec::with_capacity(e.bytes.len() + 32);
            write_stored(&mut out, &e);
            Ok(json_response(StatusCode::OK, out))
        }
        None => Err(Problem::not_found(format!(
            "no event with seq {seq}; the newest is {}",
            state.store.head()
        ))),
    }
}

/// True when the stored event `bytes` lies inside `scope`.
fn in_scope(scope: &Scope, bytes: &[u8]) -> bool {
    if scope.is_unrestricted() {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Names<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        source: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Names<'_>>(bytes).is_ok_and(|n| scope.allows(&n.ty, &n.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Original;

    fn event(id: &str, source: &str) -> PreparedEvent {
        PreparedEvent {
            buf: PreparedEvent::buffer(0),
            id: id.into(),
            source: source.into(),
            ty: "t.\"quoted\"".into(),
            subject: None,
            time: "2026-01-31T12:00:00Z".into(),
            payload: None,
        }
    }

    #[test]
    fn answers_are_the_json_of_a_publish_result() {
        let ev = event("id \\ 1", "/s\u{e9}\n");
        let new = Outcome {
            seq: 42,
            original: None,
        };
        let dup = Outcome {
            seq: 7,
            original: Some(Original {
                ty: "t.orig".into(),
                time: "2026-01-01T00:00:00Z".into(),
            }),
        };
        for o in [new, dup] {
            let mut written = Vec::new();
            Answer::new(&ev).finish(&o, &mut written);
            let (ty, time) = match &o.original {
                Some(orig) => (orig.ty.clone(), orig.time.clone()),
                None => (ev.ty.clone(), ev.time.clone()),
            };
            let expected = serde_json::to_vec(&PublishResult {
                seq: o.seq,
                id: ev.id.clone(),
                source: ev.source.clone(),
                ty,
                time,
                duplicate: o.is_duplicate(),
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }
}
