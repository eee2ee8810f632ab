//! What every request passes before a handler sees it:
//!
//! - **Browsers from other origins** are refused (403), so a web page the
//!   operator visits cannot publish, ack or start admin work on a msgbus
//!   it can reach (on 127.0.0.1 too): a request whose `Origin` is not the
//!   server's own, or whose `Sec-Fetch-Site` is `cross-site` or
//!   `same-site` (another port of the same host is the same site but not
//!   the same origin), unless `--cors-allow-origin` lists its origin; then
//!   it gets proper CORS answers (preflight and `Access-Control-Allow-Origin`).
//!   A link followed to a `GET` (a navigation) still works. Clients that
//!   are not browsers send neither header and are unaffected.
//! - **A body needs a `Content-Type`** (415 naming it otherwise): a body
//!   without one is what an HTML form or a `no-cors` fetch sends.
//! - **Request bodies in flight share one budget**
//!   (`--max-body-bytes-in-flight`): a request whose declared length does
//!   not fit answers 503 with `Retry-After` before its body is read, and a
//!   body without a declared length is counted as it arrives. A request's
//!   share is returned when its body and its handler are done with it.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;

use super::error::Problem;
use super::AppState;
use crate::event::FieldError;

/// How long a preflight answer may be cached by the browser, seconds.
const PREFLIGHT_MAX_AGE: u32 = 600;
/// Methods a CORS preflight may be allowed.
const CORS_METHODS: &str = "GET, POST, PUT, DELETE";
/// Response headers an allowed origin's scripts may read.
const CORS_EXPOSE: &str = "location, retry-after, x-request-id";

/// Bytes of request bodies held by requests in flight, bounded by a limit.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BodyBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }
}

/// One request's share of the [`BodyBudget`], given back when dropped.
#[derive(Debug)]
struct Share {
    budget: Arc<BodyBudget>,
    held: AtomicUsize,
}

impl Share {
    fn grow(&self, n: usize) -> bool {
        let ok = self.budget.try_take(n);
        if ok {
            self.held.fetch_add(n, Ordering::Relaxed);
        }
        ok
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(*self.held.get_mut(), Ordering::AcqRel);
    }
}

/// The error a body reports when the budget has no room for more of it;
/// the body reader answers it with 503 (see [`super::body::read_limited`]).
#[derive(Debug, thiserror::Error)]
#[error("the request bodies in flight exceed --max-body-bytes-in-flight")]
pub struct BudgetExhausted;

/// A request body that takes budget for each byte beyond what its share
/// already holds.
struct Counted {
    inner: Body,
    share: Arc<Share>,
    seen: usize,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len();
                    let held = this.share.held.load(Ordering::Relaxed);
                    if this.seen > held && !this.share.grow(this.seen - held) {
                        return Poll::Ready(Some(Err(Box::new(BudgetExhausted))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// 503 for a body the budget has no room for.
pub fn budget_problem() -> Problem {
    Problem::unavailable(
        "busy",
        "Too many request bodies in flight",
        "the request bodies being received exceed the server's budget \
         (--max-body-bytes-in-flight); retry shortly",
        1,
    )
}

/// The middleware: origin check (and CORS), Content-Type, body budget.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let settings = &state.settings;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allowed = origin
        .as_deref()
        .filter(|o| settings.cors_allow_origins.iter().any(|a| a == o))
        .map(str::to_string);

    // A CORS preflight.
    if req.method() == Method::OPTIONS
        && origin.is_some()
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match allowed {
            Some(o) => preflight(&o, req.headers()),
            None => cross_origin(origin.as_deref(), None),
        };
    }

    if allowed.is_none() {
        if let Some(refusal) = refuse_cross_origin(&req, origin.as_deref()) {
            return refusal;
        }
    }

    if let Some(p) = missing_content_type(req.headers()) {
        return with_cors(p.into_response(), allowed.as_deref());
    }

    // The body's share of the budget: its declared length up front (no
    // more than the largest body any route reads), the rest as it arrives.
    let declared = declared_length(req.headers());
    let share = Arc::new(Share {
        budget: state.body_budget.clone(),
        held: AtomicUsize::new(0),
    });
    if !share.grow(declared.min(settings.max_request_body)) {
        return with_cors(budget_problem().into_response(), allowed.as_deref());
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(Counted {
        inner: body,
        share: share.clone(),
        seen: 0,
    });
    let res = next.run(Request::from_parts(parts, body)).await;
    drop(share);
    with_cors(res, allowed.as_deref())
}

/// The declared body length (0 when none is declared).
fn declared_length(headers: &HeaderMap) -> usize {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// 415 for a request with a body and no `Content-Type`.
fn missing_content_type(headers: &HeaderMap) -> Option<Problem> {
    let has_body = declared_length(headers) > 0 || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body || headers.contains_key(header::CONTENT_TYPE) {
        return None;
    }
    let mut p = Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        "Content-Type: the request has a body but no Content-Type; send application/json \
         (or the media type the endpoint documents)",
    );
    p.errors.push(FieldError {
        field: "Content-Type".into(),
        message: "is required on a request with a body".into(),
    });
    Some(p)
}

/// 403 when a browser sends the request from another origin (or site),
/// except a navigation to a `GET` (a link followed: it changes nothing and
/// the page that linked cannot read the answer).
fn refuse_cross_origin(req: &Request, origin: Option<&str>) -> Option<Response> {
    let headers = req.headers();
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let foreign_origin = origin.is_some_and(|o| !same_origin(o, host));
    let foreign_site = matches!(site.as_deref(), Some("cross-site" | "same-site"));
    if !foreign_origin && !foreign_site {
        return None;
    }
    let navigation = matches!(*req.method(), Method::GET | Method::HEAD)
        && headers
            .get("sec-fetch-mode")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"));
    if navigation {
        return None;
    }
    Some(cross_origin(origin, site.as_deref()))
}

/// True when `origin` (`scheme://host[:port]`) names the host the request
/// was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

fn cross_origin(origin: Option<&str>, site: Option<&str>) -> Response {
    let (field, what) = match (origin, site) {
        (Some(o), _) => ("Origin", format!("a page from {o:?}")),
        (None, Some(s)) => ("Sec-Fetch-Site", format!("a {s} page")),
        (None, None) => ("Origin", "a page of another origin".to_string()),
    };
    let mut p = Problem::new(
        StatusCode::FORBIDDEN,
        "cross-origin",
        "Cross-origin request refused",
        format!(
            "{field}: browser requests from {what} are refused; \
             allow the origin with --cors-allow-origin to serve it"
        ),
    );
    p.errors.push(FieldError {
        field: field.into(),
        message: "not this server's origin and not allowed by --cors-allow-origin".into(),
    });
    p.into_response()
}

/// The answer to an allowed origin's preflight.
fn preflight(origin: &str, headers: &HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    with_cors(res, Some(origin))
}

/// Adds `Access-Control-Allow-Origin` (and `Vary: Origin`) for an allowed origin.
fn with_cors(mut res: Response, origin: Option<&str>) -> Response {
    let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return res;
    };
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_return_to_the_budget_when_dropped() {
        let budget = Arc::new(BodyBudget::new(100));
        let a = Share {
            budget: budget.clone(),
            held: AtomicUsize::new(0),
        };
        assert!(a.grow(60));
        let b = Share {
            budget: budget.clone(),
            held: AtomicUsize::new(0),
        };
        assert!(!b.grow(41));
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn origins_compare_with_the_host() {
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!same_origin(
            "http://127.0.0.1:3000",
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin("null", Some("127.0.0.1:8080")));
        assert!(!same_origin("http://evil.example", None));
    }
}
