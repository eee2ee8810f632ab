//! `GET /events/stream`: a live Server-Sent Events stream of stored events.
//!
//! Each subscriber is a loop over the store, not a queue: read the next page
//! after its cursor (from the recent-events cache or the segment files),
//! send it, and when caught up wait for the committed head to move. A slow
//! or stalled subscriber therefore never holds up publishing and never
//! loses an event: it simply resumes reading where it stopped. Its memory
//! is one page (at most [`PAGE_BYTES`] plus one event) on top of the
//! socket's buffers, and the number of subscribers is capped
//! (`--max-subscribers`).
//!
//! Wire format: `retry:` once, then per event `id: <seq>` and
//! `data: {"seq":N,"event":{...}}` (the JSON of `GET /events/{seq}`), a
//! `: heartbeat` comment when idle, and, if retention deletes the events the
//! subscriber was about to read, an `event: gone` whose data is the 410
//! problem, after which the stream ends; any other failure of a read ends
//! it with an `event: error` whose data is the problem. The bytes of each
//! of these are built by [`crate::sse`], the one owner of the format.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use tokio::sync::watch;

use super::body::QueryParams;
use super::error::Problem;
use super::AppState;
use crate::sse;
use crate::store::EventPage;
use crate::store::{Matcher, Store, StoreError};

/// Most events sent in one write.
const PAGE_EVENTS: usize = 1000;
/// Most event bytes held per subscriber (one page; at least one event).
pub const PAGE_BYTES: usize = 1 << 20;
/// Reconnection delay suggested to clients (`retry:`), milliseconds.
pub const RETRY_MS: u64 = 1000;

/// Counts open streams against `--max-subscribers`.
#[derive(Debug)]
pub struct Subscribers {
    open: AtomicUsize,
    max: usize,
}

/// One admitted subscriber; dropping it (when the stream ends or the client
/// goes away) frees its place.
#[derive(Debug)]
pub struct SubscriberGuard(Arc<Subscribers>);

impl Subscribers {
    /// A counter admitting at most `max` streams.
    pub fn new(max: usize) -> Self {
        Subscribers {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Admits one more stream, or `None` when `max` are open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SubscriberGuard> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| SubscriberGuard(self.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One Server-Sent Event of the stream, as an SSE client parses it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SseEventDoc {
    /// For `message`: `{"seq":N,"event":{...}}`, as `GET /events/{seq}`;
    /// for `gone`: the 410 problem.
    pub data: String,
    /// `message` (an event) or `gone` (retention deleted events not yet sent).
    pub event: String,
    /// The event's seq (resume with it as `Last-Event-ID`).
    pub id: Option<String>,
    /// Reconnection delay in milliseconds (sent once, first).
    pub retry: Option<u64>,
}

/// Follow events live as Server-Sent Events.
#[utoipa::path(
    get, path = "/events/stream", tag = "events",
    params(
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq (sent by EventSource on reconnect); wins over `after`"),
        ("after" = Option<String>, Query, description = "Start after this seq (default 0: from the oldest retained event), or `latest` for only new events"),
        ("type" = Option<String>, Query, description = "Only events of this exact type"),
        ("type_prefix" = Option<String>, Query, description = "Only events whose type starts with this"),
        ("source" = Option<String>, Query, description = "Only events from this source"),
        ("subject" = Option<String>, Query, description = "Only events with this subject"),
        ("access_token" = Option<String>, Query, description = "The token, for clients that cannot send `Authorization` (a browser's EventSource); accepted on this route only, never logged. The header wins when both are sent"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `retry:` once; per event `id: <seq>` and \
            `data: {\"seq\":N,\"event\":{...}}`; `: heartbeat` comments when idle (--sse-heartbeat); \
            `event: gone` with a 410 problem as data, then the end, if retention deletes events before they are sent. \
            Ends cleanly when the server shuts down.",
            body = SseEventDoc, content_type = "text/event-stream"),
        (status = 400, description = "Bad parameter or Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The position was deleted by retention; `oldest_seq` names the oldest available", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many subscribers (--max-subscribers), shutting down or timed out", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<crate::auth::Principal>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let q = QueryParams::parse(
        query.as_deref(),
        &["after", "type", "type_prefix", "source", "subject"],
    )?;
    let after = resume_position(&headers, &q, state.store.as_ref())?;
    // Compiled once for the life of the stream: each new event then costs
    // one O(1) match, however many types the store holds.
    let filter = Matcher::new(q.filter_within(&principal.scope));
    let guard = state.subscribers.try_acquire().ok_or_else(|| {
        Problem::unavailable(
            "too-many-subscribers",
            "Too many subscribers",
            format!(
                "{} streams are open, the limit (--max-subscribers); retry later or read with GET /events?wait=",
                state.subscribers.max()
            ),
            5,
        )
    })?;
    // Subscribe before the first read, so a commit landing after it wakes
    // the stream. Read the first page now: a cursor in the deleted range is
    // a plain 410 response rather than a stream that ends at once.
    let mut head = state.store.subscribe();
    head.borrow_and_update();
    let first = state
        .store
        .read_cursor(after, &filter, PAGE_EVENTS, PAGE_BYTES)
        .await?;
    let sub = Subscription {
        store: state.store.clone(),
        filter,
        cursor: after,
        head,
        shutdown: state.shutdown.clone(),
        heartbeat: state.settings.sse_heartbeat,
        pending: Some(first),
        started: false,
        done: false,
        _guard: guard,
    };
    let body = Body::from_stream(futures_util::stream::unfold(sub, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    }));
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// Where to start: `Last-Event-ID` (a reconnect) wins over `after`. The
/// default, 0, becomes the position before the oldest retained event, so
/// the cursor is concrete from the start: should retention later delete
/// events this stream has not sent, it says `gone` instead of jumping.
fn resume_position(
    headers: &HeaderMap,
    q: &QueryParams,
    store: &dyn Store,
) -> Result<u64, Problem> {
    // `after` is checked even when Last-Event-ID wins over it: an invalid
    // parameter is a 400 whatever else the request carries.
    let after = match q.string("after").as_deref() {
        Some("latest") => None,
        _ => Some(q.u64_in("after", 0, 0, u64::MAX)?),
    };
    if let Some(v) = headers.get("last-event-id") {
        let raw = v.to_str().unwrap_or("").trim();
        return raw.parse().map_err(|_| {
            Problem::bad_param("Last-Event-ID", format!("{raw:?} is not a sequence number"))
        });
    }
    match after {
        None => Ok(store.head()),
        Some(0) => Ok(store.status().first_seq - 1),
        Some(after) => Ok(after),
    }
}

/// One subscriber's state: a cursor and what wakes it.
struct Subscription {
    store: Arc<dyn Store>,
    filter: Matcher,
    cursor: u64,
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    heartbeat: Duration,
    /// The page read by the handler, sent first.
    pending: Option<EventPage>,
    started: bool,
    done: bool,
    _guard: SubscriberGuard,
}

impl Subscription {
    /// The next bytes to send, or `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.extend_from_slice(&sse::retry(RETRY_MS));
        }
        loop {
            if *self.shutdown.borrow() {
                self.done = true;
                return (!out.is_empty()).then(|| out.into());
            }
            let page = match self.pending.take() {
                Some(p) => Ok(p),
                None => {
                    // Mark the head seen before reading, so a commit after
                    // the read wakes the wait below instead of being missed.
                    self.head.borrow_and_update();
                    self.store
                        .read_cursor(self.cursor, &self.filter, PAGE_EVENTS, PAGE_BYTES)
                        .await
                }
            };
            match page {
                Ok(page) => {
                    self.cursor = self.cursor.max(page.next_after);
                    if let [only] = &page.events[..] {
                        // The common case of a subscriber at the tail: one
                        // new event, sent as the shared cached message.
                        if let (Some(frame), true) = (&only.frame, out.is_empty()) {
                            return Some(frame.clone());
                        }
                    }
                    if !page.events.is_empty() {
                        let size: usize = page.events.iter().map(|e| e.bytes.len() + 48).sum();
                        out.reserve(size);
                        for e in &page.events {
                            match &e.frame {
                                Some(frame) => out.extend_from_slice(frame),
                                None => sse::write_message(&mut out, e.seq, &e.bytes),
                            }
                        }
                        return Some(out.into());
                    }
                }
                Err(e) => {
                    self.done = true;
                    let (event, problem) = match e {
                        StoreError::Gone { oldest } => ("gone", Problem::gone(oldest)),
                        other => ("error", Problem::from(other)),
                    };
                    let data = serde_json::to_vec(&problem).unwrap_or_default();
                    sse::write_named(&mut out, event, &data);
                    return Some(out.into());
                }
            }
            if !out.is_empty() {
                return Some(out.into());
            }
            if self.cursor < self.store.head() {
                // A filtered read stopped at its scan budget: go on, but let
                // other tasks run between budgets.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                r = self.head.changed() => if r.is_err() {
                    self.done = true;
                    return None;
                },
                _ = self.shutdown.wait_for(|stopping| *stopping) => {
                    self.done = true;
                    return None;
                }
                () = tokio::time::sleep(self.heartbeat) => {
                    return Some(Bytes::from_static(sse::HEARTBEAT));
                }
            }
        }
    }
}
