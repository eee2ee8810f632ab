//! Request rates (`--rate`, a token's own `rate`): one client cannot take
//! more than its share of the server.
//!
//! Each token (and, for requests without one, each client address) has a
//! token bucket: it refills at the configured rate and
//! holds at most twice a second's worth (the burst). A request takes one
//! token; with none left it is answered 429 with `Retry-After` (when the
//! next token is due) and nothing else happens, before the body is read.
//! `/health/*` is exempt: orchestrators probe it and must never be refused.
//!
//! The table of buckets cannot grow without bound: a bucket that has
//! refilled completely holds no information (a new one would be the same),
//! so such buckets are dropped whenever the table has doubled since the
//! last sweep. Memory follows the addresses active within the last burst
//! window, not every address ever seen.
//!
//! A request made with a token is limited by the token's own rate (or
//! `--rate`), wherever it comes from; one without a token, by its address.
//! The same table, at a fixed rate, limits failed authentications per
//! address (`--auth-failure-rate`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::Problem;
use super::AppState;
use crate::config::Rate;

/// Sweep no table smaller than this.
const SWEEP_MIN: usize = 1024;

/// The buckets of every active address, and what they refused.
#[derive(Debug)]
pub struct RateLimits {
    rate: Option<Rate>,
    table: Mutex<Table>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<RateKey, Bucket>,
    /// Sweep when the table reaches this size.
    sweep_at: usize,
}

/// Whose bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// Requests without a token, by client address.
    Addr(IpAddr),
    /// Requests with a token, by its id.
    Token(Arc<str>),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    per_sec: f64,
    burst: f64,
}

impl RateLimits {
    /// Limits at `rate` per key by default (`None`: no default limit).
    pub fn new(rate: Option<Rate>) -> Self {
        RateLimits {
            rate,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
            refused: AtomicU64::new(0),
        }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The default rate.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Takes a token for `addr` at `now`, or says how long until one is due.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take_for(RateKey::Addr(addr), None, now)
    }

    /// Takes a token for `key` at `now`, at `own` rate or the default one,
    /// or says how long until one is due.
    pub fn take_for(&self, key: RateKey, own: Option<Rate>, now: Instant) -> Result<(), Duration> {
        let Some(rate) = own.or(self.rate) else {
            return Ok(());
        };
        self.take_at(key, rate.per_second(), rate.burst(), now)
    }

    /// Takes a token for `key` from a bucket refilling at `per_sec` and
    /// holding at most `burst`.
    pub fn take_at(
        &self,
        key: RateKey,
        per_sec: f64,
        burst: f64,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut table = self.lock();
        if table.buckets.len() >= table.sweep_at {
            table.buckets.retain(|_, b| !b.is_full(now));
            table.sweep_at = (table.buckets.len() * 2).max(SWEEP_MIN);
        }
        let bucket = table.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
            per_sec,
            burst,
        });
        // A token's rate can change (the token file was edited).
        bucket.per_sec = per_sec;
        bucket.burst = burst;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let due = Duration::from_secs_f64((1.0 - bucket.tokens.max(0.0)) / per_sec);
        drop(table);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(due)
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = now;
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.per_sec >= self.burst
    }
}

/// The middleware: refuses a request over its token's (or, without a
/// token, its address's) rate with 429. Runs after authentication, which
/// put the request's [`Principal`](crate::auth::Principal) in its
/// extensions.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/health") {
        return next.run(req).await;
    }
    let principal = req.extensions().get::<Arc<crate::auth::Principal>>();
    let key = match principal.and_then(|p| p.id.as_deref()) {
        Some(id) => Some((
            RateKey::Token(Arc::from(id)),
            principal.and_then(|p| p.rate),
        )),
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| (RateKey::Addr(c.0.ip()), None)),
    };
    if let Some((key, own)) = key {
        let whose = match key {
            RateKey::Token(_) => "this token",
            RateKey::Addr(_) => "this address",
        };
        if let Err(wait) = state.rate_limits.take_for(key, own, Instant::now()) {
            let rate = own
                .or(state.rate_limits.rate)
                .map(|r| r.to_string())
                .unwrap_or_default();
            return refused(&format!("more than {rate} requests from {whose}"), wait)
                .into_response();
        }
    }
    next.run(req).await
}

/// 429 with `Retry-After`: `what` was exceeded; retry after `wait`.
pub fn refused(what: &str, wait: Duration) -> Problem {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut p = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("{what}; nothing was done: retry after {secs} s"),
    );
    p.retry_after = Some(secs);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32) -> RateLimits {
        RateLimits::new(Some(Rate::parse(&format!("{per_sec}/s")).unwrap()))
    }

    /// Addresses with a bucket now.
    fn tracked(l: &RateLimits) -> usize {
        l.lock().buckets.len()
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_one_token_per_interval() {
        let l = limits(10);
        let (a, t0) = ("10.0.0.1".parse().unwrap(), Instant::now());
        for n in 0..20 {
            assert!(l.take(a, t0).is_ok(), "request {n} of the burst");
        }
        let wait = l.take(a, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.take(a, t0 + Duration::from_millis(100)).is_ok());
        assert!(l.take(a, t0 + Duration::from_millis(100)).is_err());
        // Another address has its own bucket.
        assert!(l.take("10.0.0.2".parse().unwrap(), t0).is_ok());
        assert_eq!(l.refused(), 2);
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let l = limits(10);
        let t0 = Instant::now();
        for n in 0..5000u32 {
            let a = IpAddr::from(n.to_be_bytes());
            l.take(a, t0).unwrap();
        }
        assert!(tracked(&l) >= 4000, "{} buckets", tracked(&l));
        // Three seconds later every bucket has refilled: the next sweep
        // drops them all.
        let later = t0 + Duration::from_secs(3);
        for n in 0..5000u32 {
            let a = IpAddr::from((n + 1_000_000).to_be_bytes());
            l.take(a, later).unwrap();
        }
        assert!(tracked(&l) <= 5000 + SWEEP_MIN, "{} buckets", tracked(&l));
    }

    #[test]
    fn no_rate_no_limit() {
        let l = RateLimits::new(None);
        let a = "10.0.0.1".parse().unwrap();
        for _ in 0..10_000 {
            assert!(l.take(a, Instant::now()).is_ok());
        }
        assert_eq!(tracked(&l), 0);
    }
}
