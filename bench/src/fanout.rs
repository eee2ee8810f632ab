//! The client side of the fan-out scenario: many `GET /events/stream`
//! (Server-Sent Events) subscribers in this process, each checking that it
//! receives every event in order and recording each event's delivery
//! latency.
//!
//! * [`clock_ns`]: one monotonic clock for the whole process. The publisher
//!   stamps each event's `data.sent_ns` with it just before sending
//!   ([`crate::loadgen::Work::Stamped`]); a subscriber reads the clock when a
//!   chunk of the stream arrives, so delivery latency is receive time minus
//!   send time on the same clock. It includes the publish itself (an event
//!   is only streamed once it is durable: `fdatasync` and all).
//! * [`StreamChecker`]: parses the stream incrementally (chunks split lines
//!   anywhere) and checks that the seqs are exactly `after+1, after+2, ...`:
//!   strictly increasing with no gap and no duplicate.
//! * [`Subscribers::connect`]: opens the connections (one hyper HTTP/1.1
//!   connection each), waits until every stream has sent its `retry:` line
//!   (the server has admitted it and read its first page), then reads each
//!   in its own task until it has the last seq [`Subscribers::finish`] names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Result;
use crate::loadgen::{histogram, Latency};

static BASE: OnceLock<std::time::Instant> = OnceLock::new();

/// Nanoseconds on a monotonic clock shared by every task of this process.
pub fn clock_ns() -> u64 {
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Checks one stream: every `data:` line's seq must be the next one
/// expected. Feed it the stream's bytes as they arrive.
#[derive(Debug)]
pub struct StreamChecker {
    /// The next seq expected.
    next: u64,
    /// Events received.
    pub received: u64,
    /// Events without a `data.sent_ns` (not from this benchmark).
    pub unstamped: u64,
    /// The `retry:` line has arrived (the stream is open).
    pub retry_seen: bool,
    /// The first seq that was not the one expected, described.
    pub violation: Option<String>,
    /// The stream sent an `event: gone`/`event: error` (its data), after
    /// which it ends.
    pub ended_by: Option<String>,
    /// `data.sent_ns` of the stamped events parsed since the caller last
    /// drained it.
    pub sent: Vec<u64>,
    /// An incomplete line carried over to the next chunk.
    carry: Vec<u8>,
    /// The `event:` field of the message being read, if any.
    event_name: Option<String>,
}

const DATA_PREFIX: &[u8] = b"data: {\"seq\":";

impl StreamChecker {
    /// A checker for a stream opened with `after=<after>`.
    pub fn new(after: u64) -> Self {
        StreamChecker {
            next: after + 1,
            received: 0,
            unstamped: 0,
            retry_seen: false,
            violation: None,
            ended_by: None,
            sent: Vec::new(),
            carry: Vec::new(),
            event_name: None,
        }
    }

    /// The last seq received in order (`after` when none).
    pub fn last_in_order(&self) -> u64 {
        self.next - 1
    }

    /// True when seqs `after+1 ..= last` all arrived, in order, and nothing else.
    pub fn complete_through(&self, last: u64) -> bool {
        self.violation.is_none() && self.ended_by.is_none() && self.next == last + 1
    }

    /// Processes the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            match find_byte(b'\n', rest) {
                None => {
                    self.carry.extend_from_slice(rest);
                    return;
                }
                Some(i) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&rest[..i]);
                    self.line(&line);
                    rest = &rest[i + 1..];
                }
            }
        }
        while let Some(i) = find_byte(b'\n', rest) {
            self.line(&rest[..i]);
            rest = &rest[i + 1..];
        }
        self.carry.extend_from_slice(rest);
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.event_name = None;
            return;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            self.event_name = Some(String::from_utf8_lossy(name).trim().to_string());
            return;
        }
        if line.starts_with(b"retry:") {
            self.retry_seen = true;
            return;
        }
        if !line.starts_with(b"data:") {
            return; // id:, comments (`: heartbeat`)
        }
        if let Some(name) = &self.event_name {
            if self.ended_by.is_none() {
                self.ended_by = Some(format!(
                    "event: {name}: {}",
                    String::from_utf8_lossy(&line[..line.len().min(300)])
                ));
            }
            return;
        }
        let seq = line.strip_prefix(DATA_PREFIX).and_then(leading_u64);
        let Some(seq) = seq else {
            if self.violation.is_none() {
                self.violation = Some(format!(
                    "unparsable data line after seq {}: {}",
                    self.next - 1,
                    String::from_utf8_lossy(&line[..line.len().min(120)])
                ));
            }
            return;
        };
        self.received += 1;
        if seq != self.next && self.violation.is_none() {
            self.violation = Some(if seq > self.next {
                format!(
                    "gap: got seq {seq} when {} was expected ({} missing)",
                    self.next,
                    seq - self.next
                )
            } else {
                format!(
                    "out of order or repeated: got seq {seq} after {}",
                    self.next - 1
                )
            });
        }
        if self.violation.is_none() {
            self.next = seq + 1;
        }
        match find(line, SENT_NEEDLE).and_then(|i| leading_u64(&line[i + SENT_NEEDLE.len()..])) {
            Some(ns) => self.sent.push(ns),
            None => self.unstamped += 1,
        }
    }
}

/// `"sent_ns":` (see [`crate::event::SENT_NS`]).
const SENT_NEEDLE: &[u8] = b"\"sent_ns\":";

/// The number at the start of `s`.
fn leading_u64(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    s[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Position of `needle` (which must contain `_`: it is found by its first
/// `_`, a rare byte in the events, rather than by its first byte, `"`, which
/// is everywhere) in `hay`. The subscribers scan every byte of the stream,
/// so this and [`find_byte`] are most of their CPU time.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let at = find_byte(b'_', needle)?;
    let mut from = at;
    while from < hay.len() {
        let i = from + find_byte(b'_', &hay[from..])?;
        let start = i - at;
        if hay.len() - start >= needle.len() && &hay[start..start + needle.len()] == needle {
            return Some(start);
        }
        from = i + 1;
    }
    None
}

/// Position of the first `byte` in `hay`, eight bytes at a time.
fn find_byte(byte: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(byte);
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // The lowest byte flagged is the first zero byte of `x` (a borrow
        // can only flag bytes above a real zero).
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(offset + (zero.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == byte)
        .map(|i| offset + i)
}

/// What one subscriber saw.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberOutcome {
    /// Events received.
    pub received: u64,
    /// Every seq from the first published to the last, in order, nothing else.
    pub complete: bool,
    /// Why not, when not.
    pub failure: Option<String>,
    /// [`clock_ns`] when it received the last seq.
    #[serde(skip)]
    pub done_ns: Option<u64>,
    /// Events without `data.sent_ns`.
    pub unstamped: u64,
}

/// The state the reading tasks follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Publishing: read on.
    Running,
    /// Publishing ended; this is the last seq: stop once it is received.
    Last(u64),
    /// Out of time: stop now.
    GiveUp,
}

/// How many subscribers connect at the same time.
const CONNECT_CONCURRENCY: usize = 64;
/// How long one subscriber may take to connect and get its `retry:` line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Delivery-latency histograms, shared by subscribers `i % SHARDS` (a
/// histogram per subscriber would be ~150 KB each).
const SHARDS: usize = 16;

/// Open subscribers, each read by its own task.
pub struct Subscribers {
    tasks: Vec<JoinHandle<SubscriberOutcome>>,
    phase: watch::Sender<Phase>,
    hists: Arc<Vec<Mutex<Histogram<u64>>>>,
    measure_from: Arc<AtomicU64>,
    /// Seconds from the first connect to the last `retry:` line.
    pub connect_s: f64,
    /// The `after=` every subscriber started from.
    pub after: u64,
}

/// The subscribers' figures.
#[derive(Debug, Clone)]
pub struct FanoutOutcome {
    /// One per subscriber.
    pub subscribers: Vec<SubscriberOutcome>,
    /// Delivery latency (µs) of every event sent after the warm-up, to every subscriber.
    pub latency: Histogram<u64>,
    /// [`clock_ns`] when the last subscriber received the last seq (all
    /// complete), if they all did.
    pub all_done_ns: Option<u64>,
}

impl FanoutOutcome {
    /// The latency summary.
    pub fn latency_summary(&self) -> Latency {
        Latency::of(&self.latency)
    }
}

impl Subscribers {
    /// Opens `n` streams `GET /events/stream?after=<after>` on `addr` and
    /// returns once every one has sent its `retry:` line. Fails if any
    /// cannot connect or is refused.
    pub async fn connect(addr: SocketAddr, after: u64, n: usize) -> Result<Subscribers> {
        let started = Instant::now();
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let hists: Arc<Vec<Mutex<Histogram<u64>>>> =
            Arc::new((0..SHARDS).map(|_| Mutex::new(histogram())).collect());
        let measure_from = Arc::new(AtomicU64::new(u64::MAX));
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (ready_tx, mut ready_rx) = mpsc::channel::<std::result::Result<(), String>>(n.max(1));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let phase_rx = phase_rx.clone();
            let hists = hists.clone();
            let measure_from = measure_from.clone();
            let gate = gate.clone();
            let ready = ready_tx.clone();
            tasks.push(tokio::spawn(async move {
                let opened = {
                    let _permit = gate.acquire_owned().await;
                    tokio::time::timeout(CONNECT_TIMEOUT, open(addr, after))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("no retry: line within {CONNECT_TIMEOUT:?}").into())
                        })
                };
                let (body, checker, conn) = match opened {
                    Ok(o) => {
                        let _ = ready.send(Ok(())).await;
                        o
                    }
                    Err(e) => {
                        let msg = format!("subscriber {i}: {e}");
                        let _ = ready.send(Err(msg.clone())).await;
                        return SubscriberOutcome {
                            received: 0,
                            complete: false,
                            failure: Some(msg),
                            done_ns: None,
                            unstamped: 0,
                        };
                    }
                };
                let out = follow(body, checker, phase_rx, &hists[i % SHARDS], &measure_from).await;
                conn.abort();
                out
            }));
        }
        drop(ready_tx);
        let mut ok = 0;
        while ok < n {
            match ready_rx.recv().await {
                Some(Ok(())) => ok += 1,
                Some(Err(e)) => {
                    let _ = phase.send(Phase::GiveUp);
                    for t in &tasks {
                        t.abort();
                    }
                    return Err(format!("{e} ({ok} of {n} subscribers were connected)").into());
                }
                None => return Err("subscriber tasks ended before connecting".into()),
            }
        }
        Ok(Subscribers {
            tasks,
            phase,
            hists,
            measure_from,
            connect_s: started.elapsed().as_secs_f64(),
            after,
        })
    }

    /// From now on, record the latency of events sent at or after
    /// `from_ns` ([`clock_ns`]); earlier ones (the warm-up) are only checked.
    pub fn measure_from(&self, from_ns: u64) {
        self.measure_from.store(from_ns, Ordering::Relaxed);
    }

    /// Tells every subscriber that `last` is the last seq, waits up to
    /// `grace` for all to receive it, then stops them and returns their figures.
    pub async fn finish(self, last: u64, grace: Duration) -> Result<FanoutOutcome> {
        let _ = self.phase.send(Phase::Last(last));
        let deadline = Instant::now() + grace;
        let mut subscribers = Vec::with_capacity(self.tasks.len());
        for mut t in self.tasks {
            let out = tokio::select! {
                r = &mut t => r?,
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.phase.send(Phase::GiveUp);
                    t.await?
                }
            };
            subscribers.push(out);
        }
        let mut latency = histogram();
        for h in self.hists.iter() {
            let h = h.lock().map_err(|_| "a latency histogram is poisoned")?;
            latency.add(&*h)?;
        }
        let all_done_ns = if subscribers.iter().all(|s| s.complete) {
            subscribers.iter().filter_map(|s| s.done_ns).max()
        } else {
            None
        };
        Ok(FanoutOutcome {
            subscribers,
            latency,
            all_done_ns,
        })
    }
}

/// Connects, sends the request, and reads until the `retry:` line.
async fn open(addr: SocketAddr, after: u64) -> Result<(Incoming, StreamChecker, JoinHandle<()>)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req =
        Request::get(format!("/events/stream?after={after}")).body(Empty::<Bytes>::new())?;
    req.headers_mut()
        .insert(HOST, HeaderValue::from_str(&addr.to_string())?);
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let res = sender.send_request(req).await?;
    let status = res.status();
    let mut body = res.into_body();
    if status != StatusCode::OK {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        conn.abort();
        return Err(format!(
            "GET /events/stream answered {status}: {}",
            String::from_utf8_lossy(&text[..text.len().min(300)])
        )
        .into());
    }
    let mut checker = StreamChecker::new(after);
    while !checker.retry_seen {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    checker.feed(&data);
                }
            }
            Some(Err(e)) => return Err(format!("stream failed before retry: {e}").into()),
            None => return Err("stream ended before its retry: line".into()),
        }
    }
    // Keep `sender` alive as long as the connection: dropping it is fine
    // for HTTP/1 (the response in flight continues).
    drop(sender);
    Ok((body, checker, conn))
}

/// Reads one stream until the phase says the last seq (or give up).
async fn follow(
    mut body: Incoming,
    mut checker: StreamChecker,
    mut phase: watch::Receiver<Phase>,
    hist: &Mutex<Histogram<u64>>,
    measure_from: &AtomicU64,
) -> SubscriberOutcome {
    let mut failure = None;
    let mut done_ns = None;
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::GiveUp => break,
            Phase::Last(last) if checker.last_in_order() >= last => break,
            _ => {}
        }
        if checker.violation.is_some() || checker.ended_by.is_some() {
            break;
        }
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let now = clock_ns();
                    checker.feed(&data);
                    if !checker.sent.is_empty() {
                        let from = measure_from.load(Ordering::Relaxed);
                        if let Ok(mut h) = hist.lock() {
                            for &sent in &checker.sent {
                                if sent >= from {
                                    let us = now.saturating_sub(sent) / 1000;
                                    h.saturating_record(us.max(1));
                                }
                            }
                        }
                        checker.sent.clear();
                    }
                    if let Phase::Last(last) = *phase.borrow() {
                        if checker.last_in_order() >= last && done_ns.is_none() {
                            done_ns = Some(now);
                        }
                    }
                }
                Some(Err(e)) => {
                    failure = Some(format!("stream failed: {e}"));
                    break;
                }
                None => {
                    failure = Some("the server ended the stream".to_string());
                    break;
                }
            },
            r = phase.changed() => if r.is_err() { break },
        }
    }
    let last = match *phase.borrow() {
        Phase::Last(last) => Some(last),
        _ => None,
    };
    if let (Some(last), None) = (last, done_ns) {
        if checker.last_in_order() >= last {
            // It had everything before it learned which seq was the last.
            done_ns = Some(clock_ns());
        }
    }
    let complete = last.is_some_and(|l| checker.complete_through(l));
    if !complete && failure.is_none() {
        failure = Some(if let Some(v) = &checker.violation {
            v.clone()
        } else if let Some(e) = &checker.ended_by {
            e.clone()
        } else {
            format!(
                "received through seq {} of {}, out of time",
                checker.last_in_order(),
                last.map_or("?".to_string(), |l| l.to_string())
            )
        });
    }
    if let (Some(f), Some(v)) = (&failure, &checker.violation) {
        if f != v {
            failure = Some(format!("{f}; {v}"));
        }
    }
    SubscriberOutcome {
        received: checker.received,
        complete,
        failure,
        done_ns,
        unstamped: checker.unstamped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SENT_NS;

    fn msg(seq: u64, sent: u64) -> String {
        format!(
            "id: {seq}\ndata: {{\"seq\":{seq},\"event\":{{\"data\":{{\"amount\":1,\"sent_ns\":{sent},\"note\":\"x\"}},\"id\":\"a-{seq}\"}}}}\n\n"
        )
    }

    #[test]
    fn a_stream_in_order_split_anywhere_is_complete() {
        let mut text = String::from("retry: 1000\n\n");
        for seq in 11..=20 {
            text.push_str(&msg(seq, seq * 1000));
        }
        text.push_str(": heartbeat\n\n");
        for split in [1, 7, 33, 64, text.len()] {
            let mut c = StreamChecker::new(10);
            for chunk in text.as_bytes().chunks(split) {
                c.feed(chunk);
            }
            assert!(c.retry_seen);
            assert_eq!(c.received, 10);
            assert_eq!(c.unstamped, 0);
            assert_eq!(c.sent, (11..=20).map(|s| s * 1000).collect::<Vec<_>>());
            assert!(c.complete_through(20), "{c:?}");
            assert!(!c.complete_through(21));
        }
    }

    #[test]
    fn gaps_repeats_and_reordering_are_caught() {
        let mut gap = StreamChecker::new(0);
        gap.feed(format!("{}{}", msg(1, 1), msg(3, 3)).as_bytes());
        assert!(!gap.complete_through(3));
        assert!(gap.violation.as_deref().unwrap().contains("gap"), "{gap:?}");

        let mut repeat = StreamChecker::new(0);
        repeat.feed(format!("{}{}{}", msg(1, 1), msg(2, 2), msg(2, 2)).as_bytes());
        assert!(!repeat.complete_through(2));
        assert!(repeat.violation.is_some());

        let mut swapped = StreamChecker::new(0);
        swapped.feed(format!("{}{}", msg(2, 2), msg(1, 1)).as_bytes());
        assert!(!swapped.complete_through(2));

        let mut late_start = StreamChecker::new(5);
        late_start.feed(msg(7, 7).as_bytes());
        assert!(!late_start.complete_through(7));

        let mut gone = StreamChecker::new(0);
        gone.feed(b"event: gone\ndata: {\"status\":410}\n\n");
        assert!(gone.ended_by.is_some());
        assert!(!gone.complete_through(0));
    }

    #[test]
    fn byte_and_needle_search_agree_with_the_naive_ones() {
        let naive = |b: u8, h: &[u8]| h.iter().position(|&x| x == b);
        let mut hay = Vec::new();
        for i in 0..300u32 {
            hay.push((i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1);
        }
        for len in 0..hay.len() {
            for b in [b'\n', 0x01, 0x81, 0xff, hay[len / 2]] {
                assert_eq!(
                    find_byte(b, &hay[..len]),
                    naive(b, &hay[..len]),
                    "{b} {len}"
                );
            }
        }
        // A zero byte right below the target (the borrow case).
        assert_eq!(find_byte(1, &[9, 0, 1, 1, 9, 9, 9, 9, 9]), Some(2));
        let line =
            br#"data: {"seq":5,"event":{"id":"a_b","data":{"x_y":"_","sent_ns":42,"note":"_"}}}"#;
        let i = find(line, SENT_NEEDLE).unwrap();
        assert_eq!(&line[i..i + SENT_NEEDLE.len()], SENT_NEEDLE);
        assert_eq!(leading_u64(&line[i + SENT_NEEDLE.len()..]), Some(42));
        assert_eq!(
            find(br#"{"x_sent_ns":1,"sent_ns":2}"#, SENT_NEEDLE),
            Some(15)
        );
        assert_eq!(find(br#"{"_sent_ns":2}"#, SENT_NEEDLE), None);
        assert_eq!(find(b"sent_ns\":1", SENT_NEEDLE), None);
        assert_eq!(find(b"", SENT_NEEDLE), None);
    }

    #[test]
    fn the_needle_is_the_stamped_field() {
        assert_eq!(SENT_NEEDLE, format!("\"{SENT_NS}\":").as_bytes());
    }

    #[test]
    fn the_clock_is_monotonic() {
        let a = clock_ns();
        let b = clock_ns();
        assert!(b >= a);
    }
}
