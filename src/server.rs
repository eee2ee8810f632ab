//! The connection loop: accepts TCP connections and serves HTTP/1 on each,
//! with the limits a hostile or careless client cannot get around.
//!
//! - At most `max_connections` connections are served at once. The next
//!   one is not accepted until one closes: it waits in the kernel's backlog
//!   instead of costing a file descriptor the store needs.
//! - A request head (request line and headers) must arrive within
//!   `header_timeout` of its first byte, or the connection is closed.
//! - A connection with no request in flight for `idle_timeout` is closed.
//!   A request is in flight from its head until its response body has been
//!   sent, so long-polls and Server-Sent Events streams are never cut.
//! - `accept` failing with EMFILE/ENFILE (descriptors exhausted) is logged
//!   at most every few seconds and retried after a short pause, never in a
//!   busy loop.
//! - Graceful shutdown: once `shutdown` turns true, nothing more is
//!   accepted, idle connections close, and connections with a request in
//!   flight close once it is answered. The caller bounds the wait.
//! - With TLS (`--tls-cert`), each connection's handshake runs in its own
//!   task, after it was accepted, and must be over within `header_timeout`
//!   of the accept: a client that connects and sends nothing is closed like
//!   a slow request head. A connection whose first byte is not a TLS
//!   handshake (plain HTTP sent to the HTTPS port) is answered `400`
//!   problem+json and closed. Past the handshake, the limits above apply
//!   to the decrypted stream.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Longest time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
}

/// How often at most a failing `accept` is logged.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(5);
/// Pause after `accept` failed for lack of descriptors (or another
/// non-connection error), so the loop never spins.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`
/// turns true and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_errors.failed(&e).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        accept_errors.succeeded();
        // TCP_NODELAY: an SSE stream writes many small frames, and over a
        // real network Nagle's algorithm can hold one behind a delayed
        // acknowledgement of the last. (On loopback no difference shows.)
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        conns.spawn(serve_connection(
            tcp,
            addr,
            router.clone(),
            limits,
            tls.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Rate-limited logging of `accept` failures.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    async fn failed(&mut self, e: &io::Error) {
        use io::ErrorKind::*;
        // The peer gave up before we accepted: nothing to do.
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
        ) {
            return;
        }
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_EVERY)
        {
            let descriptors = crate::store::fsutil::is_descriptor_exhaustion(e);
            tracing::warn!(
                error = %e,
                descriptors_exhausted = descriptors,
                suppressed = self.suppressed,
                "cannot accept a connection; retrying shortly"
            );
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }

    fn succeeded(&mut self) {
        self.suppressed = 0;
    }
}

/// What a connection is doing, for its header and idle timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response has not been sent completely.
    in_flight: usize,
    /// When the first byte of a request head arrived, while no request
    /// is in flight.
    head_started: Option<Instant>,
    /// When the connection last became idle (accepted, or a response ended).
    idle_since: Instant,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug)]
enum Expired {
    Header,
    Idle,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                head_started: None,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's head is complete; it is in flight until the guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        {
            let mut s = self.state();
            s.in_flight += 1;
            s.head_started = None;
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Resolves once the connection has overstayed a timeout.
    async fn expired(&self, limits: ConnLimits) -> Expired {
        loop {
            let deadline = {
                let s = self.state();
                if s.in_flight > 0 {
                    None
                } else if let Some(t) = s.head_started {
                    Some((t + limits.header_timeout, Expired::Header))
                } else {
                    Some((s.idle_since + limits.idle_timeout, Expired::Idle))
                }
            };
            let changed = self.changed.notified();
            match deadline {
                None => changed.await,
                Some((at, why)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {
                            // Recheck: a request may have started meanwhile.
                            let s = self.state();
                            let still = match why {
                                Expired::Header => s.in_flight == 0 && s.head_started.is_some_and(|t| t + limits.header_timeout <= Instant::now()),
                                Expired::Idle => s.in_flight == 0 && s.head_started.is_none() && s.idle_since + limits.idle_timeout <= Instant::now(),
                            };
                            if still {
                                return why;
                            }
                        }
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// A request in flight; dropping it (its response body sent or dropped)
/// makes the connection idle again when it was the last.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.idle_since = Instant::now();
        }
        self.0.changed.notify_one();
    }
}

/// The connection's stream (TCP, or TLS over it), noting when request
/// bytes arrive.
struct TrackedIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct GuardedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let Some(tls) = tls else {
        return serve_http(tcp, addr, router, limits, shutdown, permit).await;
    };
    // The handshake is bounded like a request head, and ends at shutdown:
    // a connection that never finishes it holds no slot for long.
    let opened = tokio::select! {
        r = tokio::time::timeout(limits.header_timeout, open_tls(tcp, tls, addr)) => r,
        () = stopped(&mut shutdown) => return,
    };
    match opened {
        Ok(Some(stream)) => serve_http(stream, addr, router, limits, shutdown, permit).await,
        Ok(None) => {}
        Err(_) => tracing::debug!(
            peer = %addr,
            timeout = ?limits.header_timeout,
            "closing a connection whose TLS handshake did not finish within the header timeout"
        ),
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS handshake of a new connection; `None` (logged) when there is
/// none to serve: the client closed, failed the handshake, or spoke plain
/// HTTP (then answered with a problem first).
async fn open_tls(
    tcp: TcpStream,
    tls: TlsAcceptor,
    addr: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return None,
        Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(_) => {
            answer_plain_http(tcp, addr).await;
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e, peer = %addr, "connection failed before its TLS handshake");
            return None;
        }
    }
    match tls.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(error = %e, peer = %addr, "TLS handshake failed");
            None
        }
    }
}

/// Answers a plain HTTP request sent to the HTTPS port with `400`
/// problem+json, then closes the connection.
async fn answer_plain_http(tcp: TcpStream, addr: SocketAddr) {
    let service = hyper::service::service_fn(|_req: http::Request<Incoming>| {
        let mut res = crate::http::error::Problem::new(
            http::StatusCode::BAD_REQUEST,
            "https-required",
            "HTTPS required",
            "this port serves HTTPS only: a plain HTTP request was sent to it; use https://",
        )
        .into_response();
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, peer = %addr, "plain HTTP on the HTTPS port: connection ended with an error");
    }
}

/// Serves HTTP/1 on an open connection (plain TCP, or TLS after its
/// handshake) under the header and idle timeouts, until it closes or the
/// server shuts down.
async fn serve_http<S>(
    stream: S,
    addr: SocketAddr,
    router: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let in_flight = activity.request_started();
            req.extensions_mut().insert(ConnectInfo(addr));
            let router = router.clone();
            async move {
                let res = router.oneshot(req).await?;
                Ok::<_, Infallible>(res.map(|inner| {
                    Body::new(GuardedBody {
                        inner,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        // The header timeout is the watchdog's (below): hyper's also runs
        // while a keep-alive connection waits for its next request, which
        // would make it the idle timeout.
        .header_read_timeout(None)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, peer = %addr, "connection ended with an error");
                }
                return;
            }
            () = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.expired(limits) => {
                tracing::debug!(peer = %addr, reason = ?why, "closing a connection that overstayed its timeout");
                return;
            }
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the soft default, often
/// 1,024, is far below what a server with many clients needs) and logs
/// both values. A failure is logged; the server runs with what it has.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(
                old = soft,
                new = hard,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Err(e) => tracing::warn!(
                soft,
                hard,
                error = %e,
                "cannot raise the open-file limit (RLIMIT_NOFILE)"
            ),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)"),
    }
}

/// The lowest open-file limit msgbus starts with: the async runtime and
/// its signal handlers, the listener, the store's files and a few
/// connections. Below it, parts of the runtime fail at start with a panic
/// rather than an error, so the limit is checked first.
pub const MIN_OPEN_FILES: u64 = 32;

/// The soft open-file limit, when it is below [`MIN_OPEN_FILES`].
pub fn descriptor_limit_too_low() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft < MIN_OPEN_FILES => Some(soft),
        _ => None,
    }
}

/// Descriptors kept for the store, monitor, backups and logging beyond
/// the segment descriptor cache, when the connection limit is derived.
pub const STORE_DESCRIPTOR_RESERVE: u64 = 64;

/// `wanted` connections, lowered to what the open-file limit leaves after
/// `reserve` descriptors (at least one connection).
pub fn connection_limit(wanted: usize, reserve: u64) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted.max(1);
    };
    let room = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    let limit = wanted.min(room).max(1);
    if limit < wanted {
        tracing::warn!(
            wanted,
            limit,
            open_file_limit = soft,
            reserve,
            "--max-connections lowered to fit the open-file limit"
        );
    }
    limit
}
