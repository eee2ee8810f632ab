//! Authentication on every request: finds the bearer token, asks the
//! [`Keyring`] what it is worth, checks the route's role, and puts the
//! request's [`Principal`] in its extensions for the handlers (which
//! narrow reads and check publishes against its scope).
//!
//! - `Authorization: Bearer <token>` everywhere. `?access_token=` only on
//!   `GET /events/stream` (a browser's `EventSource` cannot set headers);
//!   it is taken out of the request's URI before anything else sees it,
//!   so it reaches no log and no handler.
//! - 401 (with `WWW-Authenticate: Bearer`) for a missing, unknown, revoked
//!   or expired token: one answer for all of them. 403 when the role
//!   forbids the route. Every 401 and 403 (the handlers' scope refusals
//!   too) is counted for `/metrics`.
//! - Failed authentications are limited per client address
//!   (`--auth-failure-rate`, loopback included): beyond the limit the
//!   answer is 429 with `Retry-After`. Each failure within the limit is
//!   logged at WARN (never the secret: the token's public id at most); those
//!   beyond it only at DEBUG, and counted for `/metrics`, so a flood of
//!   guesses cannot write a log line per request.
//! - Streams and long-polls are capped per token
//!   (`--max-streams-per-token`): each holds a place until its response
//!   body ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::Problem;
use super::rate::{self, RateKey, RateLimits};
use super::AppState;
use crate::auth::{Keyring, Need, Principal, Protected, Verdict};
use crate::config::Rate;

/// The query parameter the stream accepts a token in.
const QUERY_TOKEN: &str = "access_token";

/// The HTTP side of access control.
#[derive(Debug)]
pub struct Auth {
    /// The tokens.
    pub keyring: Arc<Keyring>,
    /// Open routes that need a token anyway.
    pub protected: Protected,
    /// Failed authentications per address.
    failures: RateLimits,
    failure_rate: Rate,
    /// Streams and long-polls open per token.
    streams: Arc<StreamCounts>,
    /// 401s answered.
    pub unauthorized: AtomicU64,
    /// 403s answered.
    pub forbidden: AtomicU64,
}

impl Auth {
    /// Access control with `keyring`.
    pub fn new(
        keyring: Arc<Keyring>,
        protected: Protected,
        failure_rate: Rate,
        max_streams_per_token: usize,
    ) -> Self {
        Auth {
            keyring,
            protected,
            failures: RateLimits::new(None),
            failure_rate,
            streams: Arc::new(StreamCounts {
                open: Mutex::default(),
                max: max_streams_per_token,
            }),
            unauthorized: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
        }
    }

    /// Failed authentications refused with 429.
    pub fn failures_limited(&self) -> u64 {
        self.failures.refused()
    }
}

/// The middleware.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = &state.auth;
    let need = crate::auth::policy::need(req.method(), req.uri().path(), auth.protected);
    let stream = req.method() == Method::GET && req.uri().path() == "/events/stream";
    let from_query = take_query_token(&mut req, stream);
    let principal = if need == Need::Nothing {
        auth.keyring.anonymous()
    } else {
        let header = bearer(&req);
        let presented = header.as_deref().or(from_query.as_deref());
        match auth.keyring.authenticate(presented, chrono::Utc::now()) {
            Verdict::Open(p) => p,
            Verdict::Valid(p) if p.may(need) => p,
            Verdict::Valid(p) => {
                auth.forbidden.fetch_add(1, Ordering::Relaxed);
                return forbidden_role(&p, need).into_response();
            }
            v @ (Verdict::Missing | Verdict::Invalid) => {
                return unauthenticated(&state, req, presented, matches!(v, Verdict::Missing))
                    .await;
            }
        }
    };
    let long = req.method() == Method::GET && (stream || is_long_poll(req.uri()));
    let place = match (&principal.id, long) {
        (Some(id), true) => match StreamCounts::enter(&auth.streams, id) {
            Some(place) => Some(place),
            None => {
                return rate::refused(
                    &format!(
                        "this token has {} streams and long-polls open (--max-streams-per-token)",
                        auth.streams.max
                    ),
                    std::time::Duration::from_secs(1),
                )
                .into_response()
            }
        },
        _ => None,
    };
    req.extensions_mut().insert(principal);
    let res = next.run(req).await;
    match res.status() {
        StatusCode::FORBIDDEN => {
            auth.forbidden.fetch_add(1, Ordering::Relaxed);
        }
        StatusCode::UNAUTHORIZED => {
            auth.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    match place {
        Some(place) => res.map(|body| {
            Body::new(Held {
                body,
                _place: place,
            })
        }),
        None => res,
    }
}

/// The bearer token of the `Authorization` header.
fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Takes `access_token` out of the URI; returns it when `allowed` (the
/// stream), drops it otherwise (another route ignores it: a token in a URL
/// leaks into proxies' and browsers' histories, so only the one route
/// that needs it takes it).
fn take_query_token(req: &mut Request, allowed: bool) -> Option<String> {
    let query = req.uri().query()?;
    if !query
        .split('&')
        .any(|kv| kv.split('=').next() == Some(QUERY_TOKEN))
    {
        return None;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    let mut token = None;
    let rest: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, v)| {
            if k == QUERY_TOKEN {
                token = Some(v.clone());
                false
            } else {
                true
            }
        })
        .collect();
    let rest = serde_urlencoded::to_string(rest).ok()?;
    let mut parts = req.uri().clone().into_parts();
    let path = req.uri().path();
    let pq = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    token.filter(|_| allowed)
}

/// `GET /events?wait=N` or `GET /consumers/{name}/events?wait=N`, N > 0.
fn is_long_poll(uri: &Uri) -> bool {
    let path = uri.path();
    let reads = path == "/events" || (path.starts_with("/consumers/") && path.ends_with("/events"));
    reads
        && uri.query().is_some_and(|q| {
            q.split('&').any(|kv| {
                kv.strip_prefix("wait=")
                    .is_some_and(|w| w.parse::<f64>().map_or(true, |w| w > 0.0))
            })
        })
}

async fn unauthenticated(
    state: &AppState,
    req: Request,
    presented: Option<&str>,
    missing: bool,
) -> Response {
    let auth = &state.auth;
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let id = presented
        .and_then(crate::auth::token::split)
        .map(|(id, _)| id.to_string());
    let limited = addr.and_then(|addr| {
        let rate = auth.failure_rate;
        auth.failures
            .take_at(
                RateKey::Addr(addr),
                rate.per_second(),
                rate.per_second() * 60.0,
                Instant::now(),
            )
            .err()
            .map(|refusal| (rate, refusal))
    });
    let reason = if missing {
        "no token"
    } else {
        "not a live token"
    };
    let token_id = id.as_deref().unwrap_or("-");
    let (method, path) = (req.method(), req.uri().path());
    if let Some((rate, refusal)) = limited {
        // Only at DEBUG: at WARN a flood of guesses would be a log line per
        // request (msgbus_auth_failures_limited_total counts them).
        tracing::debug!(client = ?addr, %method, path, token_id, reason,
            "authentication failed beyond --auth-failure-rate");
        return refusal
            .answer(&format!(
                "more than {rate} failed authentications from this address (--auth-failure-rate)"
            ))
            .await
            .into_response();
    }
    tracing::warn!(client = ?addr, %method, path, token_id, reason, "authentication failed");
    auth.unauthorized.fetch_add(1, Ordering::Relaxed);
    let detail = if missing {
        "this request needs a token: send `Authorization: Bearer <token>`"
    } else {
        "the token is not valid (unknown, revoked or expired)"
    };
    let mut res = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .into_response();
    let challenge = if missing {
        "Bearer realm=\"msgbus\""
    } else {
        "Bearer realm=\"msgbus\", error=\"invalid_token\""
    };
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    res
}

fn forbidden_role(p: &Principal, need: Need) -> Problem {
    let role = need.role().map_or("", |r| r.as_str());
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        format!(
            "token {:?} has the {} role; this request needs the {role} role",
            p.name,
            p.role.as_str()
        ),
    )
}

/// 403: `what` lies outside the token's scope.
pub fn out_of_scope(p: &Principal, what: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "out-of-scope",
        "Outside the token's scope",
        format!("{what} is outside the scope of token {:?}", p.name),
    )
}

/// Streams and long-polls open per token. An entry exists only while a
/// token has one open: the map holds the busy tokens, no more.
#[derive(Debug)]
struct StreamCounts {
    open: Mutex<HashMap<Arc<str>, usize>>,
    max: usize,
}

impl StreamCounts {
    fn enter(this: &Arc<Self>, id: &str) -> Option<Place> {
        let mut open = this.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(Arc::from(id)).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(Place {
            counts: this.clone(),
            id: Arc::from(id),
        })
    }
}

/// One open stream or long-poll of a token.
#[derive(Debug)]
struct Place {
    counts: Arc<StreamCounts>,
    id: Arc<str>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// A response body that holds a [`Place`] until it ends.
struct Held {
    body: Body,
    _place: Place,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_query_is_taken_out_of_the_uri() {
        let mut req = Request::builder()
            .uri("/events/stream?type=a&access_token=mb_x_y&after=3")
            .body(Body::empty())
            .unwrap();
        assert_eq!(take_query_token(&mut req, true).as_deref(), Some("mb_x_y"));
        assert_eq!(req.uri().to_string(), "/events/stream?type=a&after=3");
        let mut other = Request::builder()
            .uri("/events?access_token=mb_x_y")
            .body(Body::empty())
            .unwrap();
        assert_eq!(take_query_token(&mut other, false), None);
        assert_eq!(other.uri().to_string(), "/events");
    }

    #[test]
    fn long_polls_are_reads_with_a_positive_wait() {
        for (uri, want) in [
            ("/events?wait=5", true),
            ("/events?after=1&wait=0", false),
            ("/events", false),
            ("/consumers/c/events?wait=1", true),
            ("/stats?wait=3", false),
        ] {
            assert_eq!(is_long_poll(&uri.parse().unwrap()), want, "{uri}");
        }
    }

    #[test]
    fn the_places_of_a_token_are_capped_and_freed() {
        let counts = Arc::new(StreamCounts {
            open: Mutex::default(),
            max: 2,
        });
        let a = StreamCounts::enter(&counts, "t").unwrap();
        let _b = StreamCounts::enter(&counts, "t").unwrap();
        assert!(StreamCounts::enter(&counts, "t").is_none());
        assert!(StreamCounts::enter(&counts, "u").is_some());
        drop(a);
        assert!(StreamCounts::enter(&counts, "t").is_some());
        assert!(counts.open.lock().unwrap().len() <= 1);
    }
}
