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
//! A client that keeps sending while refused is held: each bucket counts
//! its recent refusals (`strikes`, decaying with a one-second time
//! constant), and once they exceed a second's worth of the rate (at least
//! [`HOLD_AFTER_STRIKES`]) the 429 is answered only after a pause that
//! grows with them, up to [`MAX_HOLD`]. A client that honours `Retry-After`
//! never sees the pause. One that ignores it gets its refusals at a few
//! hundred a second instead of thousands: in the hostile run's token mode
//! the attackers' refused requests were ~2,300/s, each authenticated,
//! routed and answered, and took CPU from the publishers beside them. The
//! pause costs a timer, not a thread; the connection stays counted against
//! `--max-connections` as it would be while sending.
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

/// A bucket's refusals within about a second that are never held, however
/// low its rate: a client racing a few concurrent requests into the limit
/// is not yet ignoring `Retry-After`.
pub const HOLD_AFTER_STRIKES: f64 = 4.0;

/// The longest a refusal is held before it is answered.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// A refused request: when the client may retry, and how long to hold the
/// 429 before answering it (zero unless the client keeps sending while
/// refused: see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    /// When the next request would be allowed (`Retry-After`).
    pub wait: Duration,
    /// How long to hold the answer.
    pub hold: Duration,
}

impl Refusal {
    /// Waits out the hold, then answers 429: `what` was exceeded.
    pub async fn answer(self, what: &str) -> Problem {
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        refused(what, self.wait)
    }
}

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
    /// Refusals, decaying by e per second (see [`Bucket::strike`]).
    strikes: f64,
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
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.take_for(RateKey::Addr(addr), None, now)
    }

    /// Takes a token for `key` at `now`, at `own` rate or the default one,
    /// or says how long until one is due.
    pub fn take_for(&self, key: RateKey, own: Option<Rate>, now: Instant) -> Result<(), Refusal> {
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
    ) -> Result<(), Refusal> {
        let taken = self.with_bucket(key, per_sec, burst, now, |bucket| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return Ok(());
            }
            Err(bucket.strike(Duration::from_secs_f64(
                (1.0 - bucket.tokens.max(0.0)) / per_sec,
            )))
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
    ) -> Result<(), Refusal> {
        let owed = self.with_bucket(key, per_sec, burst, now, |bucket| {
            if bucket.tokens >= 0.0 {
                return Ok(());
            }
            Err(bucket.strike(Duration::from_secs_f64(-bucket.tokens / per_sec)))
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
            strikes: 0.0,
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
    pub fn owes(&self, key: RateKey, rate: ByteRate, now: Instant) -> Result<(), Refusal> {
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
        self.strikes *= (-elapsed).exp();
        self.at = now;
    }

    /// Counts a refusal and says how long to hold it: nothing until the
    /// recent refusals pass a second's worth of the rate (and
    /// [`HOLD_AFTER_STRIKES`]), then the time the excess would take at the
    /// rate, up to [`MAX_HOLD`]. Against N connections that send again as
    /// soon as they are answered, this settles where N / hold refusals a
    /// second keep the excess steady: for 64 connections on a 200/s token,
    /// about a quarter of a second each, 250 refusals a second.
    fn strike(&mut self, wait: Duration) -> Refusal {
        self.strikes += 1.0;
        let excess = self.strikes - self.per_sec.max(HOLD_AFTER_STRIKES);
        let hold = if excess > 0.0 {
            Duration::from_secs_f64(excess / self.per_sec).min(MAX_HOLD)
        } else {
            Duration::ZERO
        };
        Refusal { wait, hold }
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        // A bucket still counting refusals is remembered, or a client could
        // shed its strikes by waiting for a sweep.
        self.tokens + elapsed * self.per_sec >= self.burst && self.strikes * (-elapsed).exp() < 0.5
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
    if let Err(refusal) = state.rate_limits.take_for(key.clone(), own, Instant::now()) {
        let rate = own
            .or(state.rate_limits.rate)
            .map(|r| r.to_string())
            .unwrap_or_default();
        return refusal
            .answer(&format!("more than {rate} requests from {whose}"))
            .await
            .into_response();
    }
    let read_rate = match state.read_limits.rate_for(own_read) {
        Some(rate) if is_event_read(req.method(), req.uri().path()) => rate,
        _ => return next.run(req).await,
    };
    if let Err(refusal) = state
        .read_limits
        .owes(key.clone(), read_rate, Instant::now())
    {
        let setting = if own_read.is_some() {
            "its read_rate"
        } else {
            "--read-rate"
        };
        return refusal
            .answer(&format!(
                "more than {read_rate} of event reads from {whose} ({setting})"
            ))
            .await
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
        let wait = l.take(a, t0).unwrap_err().wait;
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
    fn refusals_are_held_once_a_client_keeps_sending_while_refused() {
        let l = limits(10);
        let (a, t0) = ("10.0.0.1".parse().unwrap(), Instant::now());
        for _ in 0..20 {
            l.take(a, t0).unwrap();
        }
        // A second's worth of refusals (10 at 10/s) is answered at once...
        let holds: Vec<Duration> = (0..40).map(|_| l.take(a, t0).unwrap_err().hold).collect();
        assert!(holds[..10].iter().all(|h| h.is_zero()), "{holds:?}");
        // ...then each is held longer, up to the cap.
        assert_eq!(holds[10], Duration::from_millis(100));
        assert!(holds.windows(2).all(|w| w[0] <= w[1]), "{holds:?}");
        assert_eq!(holds[39], MAX_HOLD);
        // Retry-After does not grow with the hold: it says when a token is due.
        assert_eq!(l.take(a, t0).unwrap_err().wait, Duration::from_millis(100));
        // Strikes decay: a client that stops for a few seconds starts clean.
        let later = t0 + Duration::from_secs(5);
        for _ in 0..20 {
            l.take(a, later).unwrap();
        }
        assert!(l.take(a, later).unwrap_err().hold.is_zero());
        // A slow rate holds only after a few refusals, not the first.
        let slow = limits(1);
        let b = "10.0.0.2".parse().unwrap();
        slow.take(b, t0).unwrap();
        slow.take(b, t0).unwrap();
        let holds: Vec<Duration> = (0..6).map(|_| slow.take(b, t0).unwrap_err().hold).collect();
        assert!(holds[..4].iter().all(|h| h.is_zero()), "{holds:?}");
        assert_eq!(holds[4], MAX_HOLD);
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
        let wait = l.owes(key.clone(), rate, t0).unwrap_err().wait;
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
