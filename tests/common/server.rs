//! A server running inside the test process: the application the binary
//! runs, built from the same command line, on port 0.
//!
//! In-process servers start in milliseconds and fail with a panic the test
//! sees; tests that need a real process (signals, SIGKILL, log lines, a
//! second instance) use [`super::process`].

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
        dir,
        stop,
        task,
    }
}

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

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self, args: &[&str]) -> TestApp {
        let dir = self.stop().await;
        start_app(dir, args).await
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
        match msgbus::store::recovery::open(dir, 1 << 20) {
            Err(e) if lock_released_soon(&e, started) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
