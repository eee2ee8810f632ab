//! A server running inside the test process: the application the binary
//! runs, built from the same command line, on port 0.
//!
//! In-process servers start in milliseconds and fail with a panic the test
//! sees; tests that need a real process (signals, SIGKILL, log lines, a
//! second instance) use [`super::process`].
//!
//! Either backend: [`spawn_on`] starts a server on the file store or on
//! NATS JetStream (a stream of its own, named uniquely, on one nats-server
//! the test binary shares, see [`shared_nats_url`]), and [`on_both`]
//! instantiates a backend-neutral test body (`async fn name(app: TestApp)`)
//! as two tests, `name::file` and `name::nats`. Where no nats-server can be
//! installed at all, the `nats` variants print SKIPPED and pass.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use msgbus::app::{AppError, Application};
use msgbus::cli::Cli;
use msgbus::store::StoreError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::files::DataDir;
use super::http::Api;

/// How long an orderly stop may take before the test fails. Generous: a
/// stop wakes long-polls and ends streams, so it is normally over at once,
/// and a hung one fails the test instead of hanging the suite.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A server running inside the test process.
///
/// Dropping it (a test that returns or panics without [`TestApp::stop`])
/// drops the stop channel, which shuts the server down the same way;
/// `stop` is only needed to wait for that and to get the data directory
/// back.
pub struct TestApp {
    /// A client for it (also reached through `Deref`).
    pub api: Api,
    /// The backend it runs on.
    pub backend: Backend,
    /// With the NATS backend: its server URL and stream, so a second
    /// instance can serve the same stream ([`TestApp::nats_args`]).
    pub nats: Option<NatsTarget>,
    dir: DataDir,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A server on a fresh data directory with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A server on a fresh data directory with extra command-line flags.
pub async fn spawn_app_with(args: &[&str]) -> TestApp {
    start_app(DataDir::temp(), args).await
}

/// The `serve` settings for `dir` plus `args`, parsed as the binary would
/// (port 0: the kernel picks a free port, so tests never collide), except
/// that `MSGBUS_*` variables in the developer's environment are ignored:
/// a test sees only the flags it passes.
pub fn serve_config(dir: &Path, args: &[&str]) -> msgbus::config::ServeConfig {
    let mut argv: Vec<String> = vec![
        "msgbus".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--addr".into(),
        "127.0.0.1:0".into(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    let without_env = Cli::command().mut_args(|a| a.env(None::<&'static str>));
    without_env
        .try_get_matches_from(argv)
        .and_then(|m| Cli::from_arg_matches(&m))
        .unwrap_or_else(|e| panic!("invalid test flags {args:?}: {e}"))
        .serve
}

/// A server on `dir` (new or holding a stopped store) with extra flags.
/// It listens once this returns: `Application::build` binds the socket, so
/// there is nothing to wait for.
pub async fn start_app(dir: DataDir, args: &[&str]) -> TestApp {
    if super::test_log() {
        // Safe to call repeatedly: later calls do nothing.
        msgbus::telemetry::init(msgbus::cli::LogFormat::Pretty);
    }
    let config = serve_config(dir.path(), args);
    let started = Instant::now();
    let app = loop {
        match Application::build(config.clone()).await {
            Ok(app) => break app,
            // See `lock_released_soon`.
            Err(e) if lock_released_soon(e.as_ref(), started) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("server failed to start on {}: {e}", dir.path().display()),
        }
    };
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        // A send and a dropped sender both end the wait.
        let _ = stopped.await;
    }));
    TestApp {
        api: Api::new(addr),
        backend: Backend::File,
        nats: None,
        dir,
        stop,
        task,
    }
}

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The data directory's file store.
    File,
    /// A NATS JetStream stream.
    Nats,
}

/// Where a NATS-backed server keeps its events.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// The stream's name.
    pub stream: String,
}

impl NatsTarget {
    /// The flags that point a server at this stream.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--backend".into(),
            "nats".into(),
            "--nats-url".into(),
            self.url.clone(),
            "--nats-stream".into(),
            self.stream.clone(),
        ]
    }
}

/// A stream name no other test of any test binary uses.
pub fn unique_stream() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("T{}_{n}_{nanos}", std::process::id())
}

/// The URL of the nats-server this test binary's NATS-backed servers
/// share (one stream each), started on first use; `None` (after printing
/// why) when no nats-server can be installed. It runs on a thread of its
/// own that lives as long as the test binary: the server's parent-death
/// signal fires when the thread that started it ends, so a test's own
/// thread would take it down with that test; this one goes only with
/// the process (SIGKILL, whether the binary exits or is killed).
pub fn shared_nats_url() -> Option<String> {
    static SHARED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("shared-nats-server".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the shared nats-server");
                    rt.block_on(async move {
                        let Some(bin) = super::nats::nats_server_binary((2, 9, 0)).await else {
                            let _ = tx.send(None);
                            return;
                        };
                        sweep_shared_nats_dirs();
                        let server = super::nats::NatsServer::start(&bin, &[]).await;
                        // Never dropped (the process ends first), so its temp
                        // dir is noted for the next run to remove.
                        if let Some(dir) = server.store_dir().parent() {
                            let _ = std::fs::write(
                                shared_nats_note(std::process::id()),
                                dir.display().to_string(),
                            );
                        }
                        let _ = tx.send(Some(server.url()));
                        // Keep it (and its thread) for the process's life.
                        std::future::pending::<()>().await;
                        drop(server);
                    });
                })
                .expect("spawn the shared nats-server's thread");
            rx.recv().ok().flatten()
        })
        .clone()
}

/// Where a test binary with process id `pid` notes its shared
/// nats-server's temp dir.
fn shared_nats_note(pid: u32) -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shared-nats-{pid}.dir"))
}

/// Removes the temp dirs of shared nats-servers whose test binary has
/// ended (their notes name them), so runs do not pile them up.
fn sweep_shared_nats_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("shared-nats-")
            .and_then(|r| r.strip_suffix(".dir"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(dir) = std::fs::read_to_string(e.path()) {
            let _ = std::fs::remove_dir_all(dir.trim());
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// A server on a fresh data directory on `backend`, with extra flags.
/// With [`Backend::Nats`]: on a new stream of the shared nats-server, or
/// `None` after printing SKIPPED when no nats-server can be installed.
pub async fn spawn_on(backend: Backend, args: &[&str]) -> Option<TestApp> {
    match backend {
        Backend::File => Some(spawn_app_with(args).await),
        Backend::Nats => {
            let Some(url) = shared_nats_url() else {
                eprintln!(
                    "SKIPPED: no nats-server could be installed, so the NATS backend is not tested"
                );
                return None;
            };
            let target = NatsTarget {
                url,
                stream: unique_stream(),
            };
            Some(spawn_nats(&target, args).await)
        }
    }
}

/// A nats-server of at least version `min` of the test's own (for what the
/// shared one, Debian's 2.9, cannot do) and a server on a new stream of
/// it; `None` after printing SKIPPED when no such nats-server can be
/// installed. The nats-server stops when dropped.
pub async fn spawn_on_own_nats(
    min: super::nats::Version,
    args: &[&str],
) -> Option<(super::nats::NatsServer, TestApp)> {
    let Some(bin) = super::nats::nats_server_binary(min).await else {
        eprintln!(
            "SKIPPED: no nats-server {}+ could be installed",
            super::nats::show(min)
        );
        return None;
    };
    let server = super::nats::NatsServer::start(&bin, &[]).await;
    let target = NatsTarget {
        url: server.url(),
        stream: unique_stream(),
    };
    let app = spawn_nats(&target, args).await;
    Some((server, app))
}

/// A server on a fresh data directory serving `target`'s stream (created
/// if missing), with extra flags.
pub async fn spawn_nats(target: &NatsTarget, args: &[&str]) -> TestApp {
    let mut all: Vec<String> = target.args();
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut app = spawn_app_with(&all).await;
    app.backend = Backend::Nats;
    app.nats = Some(target.clone());
    app
}

/// Instantiates each backend-neutral test body `async fn name(app:
/// TestApp)` as two tests, `name::file` and `name::nats`, each on a fresh
/// server (`name(flags, ...)` adds command-line flags). The tests run on a
/// current-thread runtime; [`on_both_multi`] gives them two workers.
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident $(($($arg:expr),* $(,)?))?),* $(,)?) => {
        $(crate::common::server::on_both!(@one [tokio::test] $name [$($($arg),*)?]);)*
    };
    (@one [$($attr:tt)*] $name:ident [$($arg:expr),*]) => {
        mod $name {
            #[$($attr)*]
            async fn file() {
                let app = crate::common::server::spawn_on(
                    crate::common::server::Backend::File,
                    &[$($arg),*],
                )
                .await
                .expect("the file backend always starts");
                super::$name(app).await;
            }

            #[$($attr)*]
            async fn nats() {
                let Some(app) = crate::common::server::spawn_on(
                    crate::common::server::Backend::Nats,
                    &[$($arg),*],
                )
                .await
                else {
                    return;
                };
                super::$name(app).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both;

/// [`on_both`] on a multi-threaded runtime with two workers.
#[allow(unused_macros)]
macro_rules! on_both_multi {
    ($($name:ident $(($($arg:expr),* $(,)?))?),* $(,)?) => {
        $(crate::common::server::on_both!(
            @one [tokio::test(flavor = "multi_thread", worker_threads = 2)] $name [$($($arg),*)?]
        );)*
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_multi;

impl TestApp {
    /// The data directory's path.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts the server down in order (as SIGTERM does), waits until the
    /// writer has finished and released the data directory, and hands the
    /// directory back.
    pub async fn stop(self) -> DataDir {
        let TestApp {
            dir, stop, task, ..
        } = self;
        let _ = stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("server stops within {STOP_TIMEOUT:?}"))
            .expect("server task does not panic")
            .expect("server stops cleanly");
        dir
    }

    /// Stops the server and starts a new one on the same data directory
    /// (and, with the NATS backend, the same stream).
    pub async fn restart(self, args: &[&str]) -> TestApp {
        let (backend, nats) = (self.backend, self.nats.clone());
        let dir = self.stop().await;
        match nats {
            Some(target) => {
                let mut all: Vec<String> = target.args();
                all.extend(args.iter().map(|s| s.to_string()));
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                let mut app = start_app(dir, &all).await;
                app.backend = backend;
                app.nats = Some(target);
                app
            }
            None => start_app(dir, args).await,
        }
    }

    /// With the NATS backend, the flags that point another server at the
    /// same stream.
    pub fn nats_args(&self) -> Option<Vec<String>> {
        self.nats.as_ref().map(NatsTarget::args)
    }
}

/// Whether a [`StoreError::Locked`] may be a child
/// process of this test binary that has not reached `exec` yet: a fork
/// copies every descriptor, the lock's included, and `flock` locks belong to
/// the shared open file, so for a moment after a store closes its lock a
/// concurrently spawned child still holds it. Retrying for up to 3 s covers
/// that window but not a lock that really stays held.
pub fn lock_released_soon(error: &(dyn std::error::Error + 'static), started: Instant) -> bool {
    matches!(
        error.downcast_ref::<StoreError>(),
        Some(StoreError::Locked { .. })
    ) && started.elapsed() < Duration::from_secs(3)
}

/// `msgbus::store::recovery::open`, retried as `start_app` does (see
/// `lock_released_soon`).
pub fn open_store(dir: &Path) -> msgbus::store::error::Result<msgbus::store::recovery::Recovered> {
    let started = Instant::now();
    loop {
        match msgbus::store::recovery::open(
            dir,
            1 << 20,
            msgbus::store::keyfilter::DEFAULT_HEADROOM,
        ) {
            Err(e) if lock_released_soon(&e, started) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
