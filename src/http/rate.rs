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
//!
//! Read byte rates (`--read-rate`, a token's own `read_rate`) are a second
//! table of the same buckets, counted in bytes: a request rate counts a
//! 4 MiB page as one request, so one token could make the server copy
//! hundreds of MB a second to its sockets. The bodies of event reads
//! (`GET /events`, `GET /events/{seq}`, `GET /consumers/{name}/events`)
//! are charged after they are built (their size is not known before, so
//! a bucket may go into debt); while a bucket is in debt, reads are
//! answered 429 with `Retry-After` (when the debt is paid). The burst is
//! two seconds' worth and at least one `--max-page-bytes`, so a full page
//! always fits. SSE streams are not charged: their bytes follow the
//! publish rate, and `--max-streams-per-token` bounds them per token.

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
use crate::config::{ByteRate, Rate};

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
        let taken = self.with_bucket(key, per_sec, burst, now, |bucket| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return Ok(());
            }
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens.max(0.0)) / per_sec,
            ))
        });
        if taken.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Refuses while `key`'s bucket (refilling at `per_sec`, holding at
    /// most `burst`) is in debt, saying how long until it is paid.
    pub fn owes(
        &self,
        key: RateKey,
        per_sec: f64,
        burst: f64,
        now: Instant,
    ) -> Result<(), Duration> {
        let owed = self.with_bucket(key, per_sec, burst, now, |bucket| {
            if bucket.tokens >= 0.0 {
                return Ok(());
            }
            Err(Duration::from_secs_f64(-bucket.tokens / per_sec))
        });
        if owed.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        owed
    }

    /// Takes `amount` from `key`'s bucket, into debt if need be.
    pub fn charge(&self, key: RateKey, per_sec: f64, burst: f64, amount: f64, now: Instant) {
        self.with_bucket(key, per_sec, burst, now, |bucket| bucket.tokens -= amount);
    }

    /// Runs `f` on `key`'s bucket, refilled to `now` (a new one is full).
    fn with_bucket<R>(
        &self,
        key: RateKey,
        per_sec: f64,
        burst: f64,
        now: Instant,
        f: impl FnOnce(&mut Bucket) -> R,
    ) -> R {
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
        f(bucket)
    }
}

/// Read byte rates per token or address (`--read-rate`, a token's own
/// `read_rate`): see the module documentation.
#[derive(Debug)]
pub struct ReadLimits {
    rate: Option<ByteRate>,
    /// The smallest burst: one full page (`--max-page-bytes`).
    min_burst: u64,
    buckets: RateLimits,
    charged: AtomicU64,
}

impl ReadLimits {
    /// Limits at `rate` per key by default (`None`: no default limit),
    /// with bursts of at least `min_burst` bytes.
    pub fn new(rate: Option<ByteRate>, min_burst: u64) -> Self {
        ReadLimits {
            rate,
            min_burst,
            buckets: RateLimits::new(None),
            charged: AtomicU64::new(0),
        }
    }

    /// The rate that applies: `own`, or the default.
    pub fn rate_for(&self, own: Option<ByteRate>) -> Option<ByteRate> {
        own.or(self.rate)
    }

    /// Refuses while `key` is in debt at `rate`, saying for how long.
    pub fn owes(&self, key: RateKey, rate: ByteRate, now: Instant) -> Result<(), Duration> {
        self.buckets
            .owes(key, rate.per_second(), rate.burst(self.min_burst), now)
    }

    /// Charges `bytes` read to `key` at `rate`.
    pub fn charge(&self, key: RateKey, rate: ByteRate, bytes: u64, now: Instant) {
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        self.buckets.charge(
            key,
            rate.per_second(),
            rate.burst(self.min_burst),
            bytes as f64,
            now,
        );
    }

    /// Reads refused since start.
    pub fn refused(&self) -> u64 {
        self.buckets.refused()
    }

    /// Bytes charged since start.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }
}

/// True for the requests whose answer bodies a read rate charges: event
/// reads, not the SSE stream.
fn is_event_read(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET
        && (path == "/events"
            || (path.starts_with("/events/") && path != "/events/stream")
            || (path.starts_with("/consumers/") && path.ends_with("/events")))
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
            principal.and_then(|p| p.read_rate),
        )),
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| (RateKey::Addr(c.0.ip()), None, None)),
    };
    let Some((key, own, own_read)) = key else {
        return next.run(req).await;
    };
    let whose = match key {
        RateKey::Token(_) => "this token",
        RateKey::Addr(_) => "this address",
    };
    if let Err(wait) = state.rate_limits.take_for(key.clone(), own, Instant::now()) {
        let rate = own
            .or(state.rate_limits.rate)
            .map(|r| r.to_string())
            .unwrap_or_default();
        return refused(&format!("more than {rate} requests from {whose}"), wait).into_response();
    }
    let read_rate = match state.read_limits.rate_for(own_read) {
        Some(rate) if is_event_read(req.method(), req.uri().path()) => rate,
        _ => return next.run(req).await,
    };
    if let Err(wait) = state
        .read_limits
        .owes(key.clone(), read_rate, Instant::now())
    {
        let setting = if own_read.is_some() {
            "its read_rate"
        } else {
            "--read-rate"
        };
        return refused(
            &format!("more than {read_rate} of event reads from {whose} ({setting})"),
            wait,
        )
        .into_response();
    }
    let res = next.run(req).await;
    // Every answer of these routes has a known length (pages are ready
    // chunks; single events and problems are one buffer).
    let hint = http_body::Body::size_hint(res.body());
    let bytes = hint.exact().unwrap_or(hint.lower());
    state
        .read_limits
        .charge(key, read_rate, bytes, Instant::now());
    res
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
    fn reads_run_into_debt_and_are_refused_until_it_is_paid() {
        // 1 KiB/s with a one-page burst of 64 KiB.
        let l = ReadLimits::new(None, 64 << 10);
        let rate = ByteRate::parse("1KiB/s").unwrap();
        let key = RateKey::Token(Arc::from("t"));
        let t0 = Instant::now();
        assert!(l.owes(key.clone(), rate, t0).is_ok());
        // A page larger than the burst is served: its size is known after.
        l.charge(key.clone(), rate, (64 << 10) + 2048, t0);
        let wait = l.owes(key.clone(), rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(l
            .owes(key.clone(), rate, t0 + Duration::from_secs(1))
            .is_err());
        assert!(l
            .owes(key.clone(), rate, t0 + Duration::from_secs(2))
            .is_ok());
        // Another token is not in debt.
        assert!(l.owes(RateKey::Token(Arc::from("u")), rate, t0).is_ok());
        assert_eq!((l.refused(), l.charged()), (2, (64 << 10) + 2048));
        assert_eq!(l.rate_for(None), None);
    }

    #[test]
    fn event_reads_are_pages_single_events_and_consumer_reads() {
        use axum::http::Method;
        for path in ["/events", "/events/7", "/consumers/w/events"] {
            assert!(is_event_read(&Method::GET, path), "{path}");
        }
        for path in ["/events/stream", "/stats", "/consumers/w", "/metrics"] {
            assert!(!is_event_read(&Method::GET, path), "{path}");
        }
        assert!(!is_event_read(&Method::POST, "/events"));
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
