//! The load generator.
//!
//! * [`closed_loop`]: N persistent keep-alive connections, each sending its
//!   next request as soon as the previous answer is read (what `wrk` does).
//!   A warm-up period is run and discarded, then the measured period. Every
//!   request's latency goes into an HDR histogram (microseconds, 3
//!   significant digits); only answers with the expected status count.
//! * [`OpenLoop`]: a fixed request rate spread over N connections, each on
//!   its own schedule. Latency is measured from the time a request was
//!   *due*, so a slow server cannot hide its stalls by slowing the load down
//!   (no coordinated omission).
//!
//! [`closed_loop_with`] sends an `Authorization` header with every request
//! (a msgbus with access control on); the other entry points send none.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Conn, Response, Result};
use crate::event;

/// What every request of a run is.
#[derive(Clone, Debug)]
pub enum Work {
    /// `POST /events` with one ~300-byte CloudEvent with a unique id; 201 expected.
    Single {
        /// Makes ids unique across runs and scenarios.
        tag: Arc<str>,
        /// When set, raised to the `seq` of every stored event (from `Location`).
        head: Option<Arc<AtomicU64>>,
    },
    /// Like [`Work::Single`], but each event carries `data.sent_ns`: the
    /// time ([`crate::fanout::clock_ns`]) its request was built, just before
    /// it is sent (the fan-out scenario measures delivery from it).
    Stamped {
        /// Makes ids unique across runs and scenarios.
        tag: Arc<str>,
        /// When set, raised to the `seq` of every stored event (from `Location`).
        head: Option<Arc<AtomicU64>>,
    },
    /// `POST /events` with one order event (ten fields, nested; the
    /// schemas group); 201 expected.
    OrderSingle {
        /// Makes ids unique across runs and scenarios.
        tag: Arc<str>,
    },
    /// `POST /events/batch` with `size` order events; 201 expected.
    OrderBatch {
        /// Makes ids unique across runs and scenarios.
        tag: Arc<str>,
        /// Events per request.
        size: usize,
    },
    /// `POST /events/batch` with `size` events; 201 expected.
    Batch {
        /// Makes ids unique across runs and scenarios.
        tag: Arc<str>,
        /// Events per request.
        size: usize,
    },
    /// `GET /events?after=<head - 2*limit>&limit=<limit>`: a full page of
    /// recent events while `head` moves; 200 expected.
    RecentPage {
        /// The newest known seq (kept current by a publisher).
        head: Arc<AtomicU64>,
        /// Page size.
        limit: u64,
    },
    /// `GET /events/{seq}` at a pseudo-random seq in `1..=max` (a fixed
    /// sequence per connection and request number); 200 expected.
    RandomEvent {
        /// The largest seq asked for (the store's newest at the start).
        max: u64,
    },
    /// `GET <path>`; 200 expected.
    Get {
        /// Path and query.
        path: Arc<str>,
    },
}

impl Work {
    fn request(&self, conn: usize, n: u64) -> (Method, Cow<'_, str>, Option<&'static str>, Bytes) {
        match self {
            Work::Single { tag, .. } => (
                Method::POST,
                Cow::Borrowed("/events"),
                Some("application/json"),
                event::single(tag, conn, n),
            ),
            Work::Stamped { tag, .. } => (
                Method::POST,
                Cow::Borrowed("/events"),
                Some("application/json"),
                event::stamped(tag, conn, n, crate::fanout::clock_ns()),
            ),
            Work::Batch { tag, size } => (
                Method::POST,
                Cow::Borrowed("/events/batch"),
                Some("application/json"),
                event::batch(tag, conn, n * *size as u64, *size),
            ),
            Work::OrderSingle { tag } => (
                Method::POST,
                Cow::Borrowed("/events"),
                Some("application/json"),
                event::order_single(tag, conn, n),
            ),
            Work::OrderBatch { tag, size } => (
                Method::POST,
                Cow::Borrowed("/events/batch"),
                Some("application/json"),
                event::order_batch(tag, conn, n * *size as u64, *size),
            ),
            Work::RecentPage { head, limit } => {
                let after = head.load(Ordering::Relaxed).saturating_sub(2 * limit);
                (
                    Method::GET,
                    Cow::Owned(format!("/events?after={after}&limit={limit}")),
                    None,
                    Bytes::new(),
                )
            }
            Work::RandomEvent { max } => {
                let seq = 1 + splitmix64(((conn as u64) << 40) ^ n) % (*max).max(1);
                (
                    Method::GET,
                    Cow::Owned(format!("/events/{seq}")),
                    None,
                    Bytes::new(),
                )
            }
            Work::Get { path } => (Method::GET, Cow::Borrowed(path), None, Bytes::new()),
        }
    }

    /// The status a successful answer has.
    pub fn expected(&self) -> StatusCode {
        match self {
            Work::Single { .. }
            | Work::Stamped { .. }
            | Work::Batch { .. }
            | Work::OrderSingle { .. }
            | Work::OrderBatch { .. } => StatusCode::CREATED,
            Work::RecentPage { .. } | Work::RandomEvent { .. } | Work::Get { .. } => StatusCode::OK,
        }
    }

    /// Durable events one successful request stands for.
    pub fn events_per_request(&self) -> u64 {
        match self {
            Work::Single { .. } | Work::Stamped { .. } | Work::OrderSingle { .. } => 1,
            Work::Batch { size, .. } | Work::OrderBatch { size, .. } => *size as u64,
            Work::RecentPage { .. } | Work::RandomEvent { .. } | Work::Get { .. } => 0,
        }
    }

    fn on_success(&self, res: &Response) {
        if let Work::Single {
            head: Some(head), ..
        }
        | Work::Stamped {
            head: Some(head), ..
        } = self
        {
            let seq = res
                .headers
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(seq) = seq {
                head.fetch_max(seq, Ordering::Relaxed);
            }
        }
    }
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser): spreads the random
/// reads over the whole store without a random-number crate.
/// SplitMix64: the load generator's pseudo-random sequence.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// An empty latency histogram: microseconds, 1 µs to 120 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// What one connection counted.
struct ConnStats {
    hist: Histogram<u64>,
    /// Expected answers in the measured period.
    ok: u64,
    /// Expected answers in the whole run, warm-up included.
    ok_total: u64,
    /// Answers with another status, by status.
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    /// Open loop only: requests sent more than [`LATE`] after they were due.
    late: u64,
}

impl ConnStats {
    fn new() -> Self {
        ConnStats {
            hist: histogram(),
            ok: 0,
            ok_total: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_error: None,
            late: 0,
        }
    }

    fn merge(&mut self, o: ConnStats) {
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.ok += o.ok;
        self.ok_total += o.ok_total;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.transport_errors += o.transport_errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.late += o.late;
    }

    fn error(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors
    }
}

/// One request: send, check the status, count it.
/// Returns false when the connection is broken.
async fn one(
    conn: &mut Conn,
    work: &Work,
    conn_id: usize,
    n: u64,
    stats: &mut ConnStats,
    measured: bool,
    since: Instant,
) -> bool {
    let (method, path, ct, body) = work.request(conn_id, n);
    match conn.send(method, &path, ct, body).await {
        Ok(res) if res.status == work.expected() => {
            let us = since.elapsed().as_micros().max(1) as u64;
            work.on_success(&res);
            stats.ok_total += 1;
            if measured {
                stats.ok += 1;
                stats.hist.saturating_record(us);
            }
            true
        }
        Ok(res) => {
            *stats.statuses.entry(res.status.as_u16()).or_default() += 1;
            let msg = format!(
                "{} {path}: {} {}",
                work_method(work),
                res.status,
                String::from_utf8_lossy(&res.body[..res.body.len().min(300)])
            );
            stats.error(msg);
            true
        }
        Err(e) => {
            stats.transport_errors += 1;
            stats.error(format!("{} {path}: {e}", work_method(work)));
            false
        }
    }
}

fn work_method(w: &Work) -> &'static str {
    match w {
        Work::Single { .. }
        | Work::Stamped { .. }
        | Work::Batch { .. }
        | Work::OrderSingle { .. }
        | Work::OrderBatch { .. } => "POST",
        _ => "GET",
    }
}

/// Reconnects after a broken connection, retrying until `end`; the new
/// connection sends `auth` like the old one.
async fn reconnect(
    addr: SocketAddr,
    auth: Option<&HeaderValue>,
    end: Instant,
    stats: &mut ConnStats,
) -> Option<Conn> {
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match Conn::connect_with(addr, auth.cloned()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                stats.transport_errors += 1;
                stats.error(format!("connect {addr}: {e}"));
            }
        }
    }
    None
}

/// A closed-loop run.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Run and discarded before the measured period.
    pub warmup: Duration,
    /// The measured period (an upper bound when `max_requests` is set).
    pub duration: Duration,
    /// Stop after this many requests in all (used to prefill a store).
    pub max_requests: Option<u64>,
}

/// The figures of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Connections.
    pub connections: usize,
    /// Length of the measured period, seconds.
    pub seconds: f64,
    /// Successful requests in the measured period.
    pub requests: u64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Durable events acknowledged per second (0 for reads).
    pub events_per_s: f64,
    /// Latency of successful requests in the measured period.
    pub latency: Latency,
    /// Failed requests (unexpected status or transport error), warm-up included.
    pub errors: u64,
    /// Unexpected statuses and how often.
    pub unexpected_statuses: BTreeMap<u16, u64>,
    /// The first failure, for diagnosis.
    pub first_error: Option<String>,
    /// Successful requests in the whole run, warm-up included.
    pub requests_total: u64,
    /// Events acknowledged in the whole run, warm-up included.
    pub events_total: u64,
}

/// Runs a closed loop against `addr`.
pub async fn closed_loop(addr: SocketAddr, work: &Work, spec: &ClosedLoop) -> Result<LoadResult> {
    closed_loop_with(addr, work, spec, None).await
}

/// Runs a closed loop against `addr`, every request carrying `auth` as its
/// `Authorization` header when given (see [`crate::client::bearer`]).
pub async fn closed_loop_with(
    addr: SocketAddr,
    work: &Work,
    spec: &ClosedLoop,
    auth: Option<HeaderValue>,
) -> Result<LoadResult> {
    let mut conns = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        conns.push(Conn::connect_with(addr, auth.clone()).await?);
    }
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let end = measure_start + spec.duration;
    let tickets = spec.max_requests.map(|n| Arc::new(AtomicU64::new(n)));
    let mut tasks = Vec::with_capacity(spec.connections);
    for (id, mut conn) in conns.into_iter().enumerate() {
        let work = work.clone();
        let tickets = tickets.clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = ConnStats::new();
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if let Some(t) = &tickets {
                    let took = t
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| x.checked_sub(1))
                        .is_ok();
                    if !took {
                        break;
                    }
                }
                let alive = one(
                    &mut conn,
                    &work,
                    id,
                    n,
                    &mut stats,
                    now >= measure_start,
                    now,
                )
                .await;
                n += 1;
                if !alive {
                    match reconnect(addr, auth.as_ref(), end, &mut stats).await {
                        Some(c) => conn = c,
                        None => break,
                    }
                }
            }
            stats
        }));
    }
    let mut total = ConnStats::new();
    for t in tasks {
        total.merge(t.await?);
    }
    let seconds = Instant::now()
        .saturating_duration_since(measure_start)
        .as_secs_f64()
        .max(1e-9);
    let per_req = work.events_per_request();
    Ok(LoadResult {
        connections: spec.connections,
        seconds,
        requests: total.ok,
        requests_per_s: total.ok as f64 / seconds,
        events_per_s: (total.ok * per_req) as f64 / seconds,
        latency: Latency::of(&total.hist),
        errors: total.errors(),
        unexpected_statuses: total.statuses.clone(),
        first_error: total.first_error.clone(),
        requests_total: total.ok_total,
        events_total: total.ok_total * per_req,
    })
}

/// How late a due request may be sent before it counts as late.
const LATE: Duration = Duration::from_millis(10);

/// An open-loop (fixed-rate) load.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    /// Requests per second, all connections together.
    pub rate: f64,
    /// Connections; each sends `rate / connections` requests per second.
    pub connections: usize,
}

/// The figures of an open-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopResult {
    /// The rate asked for, requests/s.
    pub target_per_s: f64,
    /// Successful requests per second actually achieved.
    pub achieved_per_s: f64,
    /// Connections.
    pub connections: usize,
    /// Length of the run, seconds.
    pub seconds: f64,
    /// Successful requests.
    pub requests: u64,
    /// Latency from the time each request was due (includes any queueing
    /// behind a late previous request on the same connection).
    pub latency: Latency,
    /// Requests sent more than 10 ms after they were due.
    pub late: u64,
    /// Failed requests.
    pub errors: u64,
    /// The first failure, for diagnosis.
    pub first_error: Option<String>,
}

/// A running open-loop load; [`RunningOpenLoop::stop`] ends it.
pub struct RunningOpenLoop {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<ConnStats>>,
    started: Instant,
    spec: OpenLoop,
}

impl OpenLoop {
    /// Starts sending `work` to `addr` at the configured rate, for at most
    /// `limit` (a safety bound; call [`RunningOpenLoop::stop`] earlier).
    pub async fn start(
        &self,
        addr: SocketAddr,
        work: &Work,
        limit: Duration,
    ) -> Result<RunningOpenLoop> {
        let mut conns = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            conns.push(Conn::connect(addr).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let end = started + limit;
        let period = Duration::from_secs_f64(self.connections as f64 / self.rate);
        let mut tasks = Vec::with_capacity(self.connections);
        for (id, mut conn) in conns.into_iter().enumerate() {
            let work = work.clone();
            let stop = stop.clone();
            let mut due = started + period.mul_f64(id as f64 / self.connections as f64);
            tasks.push(tokio::spawn(async move {
                let mut stats = ConnStats::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && due < end {
                    tokio::time::sleep_until(due).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if Instant::now() > due + LATE {
                        stats.late += 1;
                    }
                    let alive = one(&mut conn, &work, id, n, &mut stats, true, due).await;
                    n += 1;
                    due += period;
                    if !alive {
                        match reconnect(addr, None, end, &mut stats).await {
                            Some(c) => conn = c,
                            None => break,
                        }
                    }
                }
                stats
            }));
        }
        Ok(RunningOpenLoop {
            stop,
            tasks,
            started,
            spec: self.clone(),
        })
    }
}

impl RunningOpenLoop {
    /// Stops the load and returns its figures.
    pub async fn stop(self) -> Result<OpenLoopResult> {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut total = ConnStats::new();
        for t in self.tasks {
            total.merge(t.await?);
        }
        Ok(OpenLoopResult {
            target_per_s: self.spec.rate,
            achieved_per_s: total.ok as f64 / seconds,
            connections: self.spec.connections,
            seconds,
            requests: total.ok,
            latency: Latency::of(&total.hist),
            late: total.late,
            errors: total.errors(),
            first_error: total.first_error.clone(),
        })
    }
}
