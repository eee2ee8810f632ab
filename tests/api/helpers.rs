//! Shared test harness: an in-process server (`spawn_app`), a real child
//! process (`spawn_process`), an HTTP client with the API's verbs, and
//! assertions for problem+json answers.
//!
//! Logs stay silent unless `TEST_LOG` is set (then the in-process server logs
//! to stderr and child processes' stderr is echoed).

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use msgbus::app::{AppError, Application};
use msgbus::cli::Cli;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The media type every error must carry.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// True when the developer asked for logs.
pub fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

fn init_logging() {
    if test_log() {
        // Safe to call repeatedly: later calls do nothing.
        msgbus::telemetry::init(msgbus::cli::LogFormat::Pretty);
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("msgbus-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// An HTTP client that knows where the server is.
#[derive(Clone, Debug)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client (no proxy, 30 s safety timeout).
    pub client: reqwest::Client,
}

impl Api {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("build a reqwest client"),
        }
    }

    /// Absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /events` with a structured JSON event.
    pub async fn publish(&self, event: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/events"))
            .json(event)
            .send()
            .await
            .expect("POST /events")
    }

    /// `POST /events` that must answer 201 with a matching `Location`;
    /// returns the body.
    pub async fn publish_ok(&self, event: &Value) -> Value {
        let res = self.publish(event).await;
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = res.json().await.expect("publish answers JSON");
        assert_eq!(status, StatusCode::CREATED, "publish of {event} -> {body}");
        let seq = body["seq"].as_u64().expect("seq is a number");
        assert_eq!(location.as_deref(), Some(format!("/events/{seq}").as_str()));
        assert_eq!(body["duplicate"], false);
        body
    }

    /// `POST /events/batch` with a JSON body.
    pub async fn batch(&self, items: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/events/batch"))
            .json(items)
            .send()
            .await
            .expect("POST /events/batch")
    }

    /// `POST path` with `body` sent as is, labelled `application/json`
    /// (for bodies that are not valid JSON).
    pub async fn post_json_text(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        let status = res.status();
        let text = res.text().await.expect("read body");
        assert_eq!(status, StatusCode::OK, "GET {path} -> {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// Every stored event, oldest first, paging with `limit=1000`.
    pub async fn read_all(&self) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get_json(&format!("/events?after={after}&limit=1000"))
                .await;
            let events = page["events"].as_array().expect("events array");
            if events.is_empty() {
                return out;
            }
            for e in events {
                out.push((e["seq"].as_u64().expect("seq"), e["event"].clone()));
            }
            let next = page["next_after"].as_u64().expect("next_after");
            assert!(next > after, "next_after must advance: {after} -> {next}");
            after = next;
        }
    }
}

/// Checks that `res` is an RFC 9457 problem with `status`; returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = res.text().await.expect("read body");
    assert!(
        got < 500,
        "expected {status}, got a server error {got}: {text}"
    );
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(
        content_type.split(';').next().unwrap_or("").trim(),
        PROBLEM_JSON,
        "an error must be problem+json; body: {text}"
    );
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("problem is not JSON ({e}): {text}"));
    assert_eq!(body["status"], status, "problem status field: {body}");
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem lacks {field}: {body}"
        );
    }
    body
}

/// The `field`s named in a problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errs| {
            errs.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A server running inside the test process.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client for it.
    pub api: Api,
    /// Its data directory (deleted on drop).
    pub dir: TempDir,
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
    start_app(tempdir(), args).await
}

/// The `serve` settings for `dir` plus `args`, parsed as the binary would.
pub fn serve_config(dir: &Path, args: &[&str]) -> msgbus::config::ServeConfig {
    let mut argv: Vec<String> = vec![
        "msgbus".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--addr".into(),
        "127.0.0.1:0".into(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).serve
}

/// A server on an existing data directory.
pub async fn start_app(dir: TempDir, args: &[&str]) -> TestApp {
    init_logging();
    let config = serve_config(dir.path(), args);
    let started = Instant::now();
    let app = loop {
        match Application::build(config.clone()).await {
            Ok(app) => break app,
            // See `lock_released_soon`.
            Err(e) if lock_released_soon(&e.to_string(), started) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("server failed to start on {}: {e}", dir.path().display()),
        }
    };
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        api: Api::new(addr),
        dir,
        stop,
        task,
    }
}

/// Whether a "held by another msgbus instance" error may be a child
/// process of this test binary that has not reached `exec` yet: a fork
/// copies every descriptor, the lock's included, and `flock` locks belong to
/// the shared open file, so for a moment after a store closes its lock a
/// concurrently spawned child still holds it. Retrying for up to 3 s covers
/// that window but not a lock that really stays held.
pub fn lock_released_soon(error: &str, started: Instant) -> bool {
    error.contains("held by another msgbus instance") && started.elapsed() < Duration::from_secs(3)
}

/// `msgbus::store::recovery::open`, retried as `start_app` does (see
/// `lock_released_soon`).
pub fn open_store(dir: &Path) -> msgbus::store::error::Result<msgbus::store::recovery::Recovered> {
    let started = Instant::now();
    loop {
        match msgbus::store::recovery::open(dir, 1 << 20) {
            Err(e) if lock_released_soon(&e.to_string(), started) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl TestApp {
    /// The data directory's path.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts the server down in order and hands back its data directory.
    pub async fn stop(self) -> TempDir {
        let TestApp {
            dir, stop, task, ..
        } = self;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("server stops within 15 s")
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

/// The path of the active segment when the store has only one segment.
pub fn first_segment(data_dir: &Path) -> PathBuf {
    data_dir.join("segments").join(format!("{:020}.jsonl", 1))
}

/// Files in `data_dir/quarantine`, sorted.
pub fn quarantine_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("quarantine");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// Real processes

/// `msgbus` configured for a test: JSON logs at info level, port 0, no
/// inherited `MSGBUS_*` settings, killed if the test drops it.
pub fn msgbus_command(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgbus"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MSGBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .arg("--log-format")
        .arg("json")
        .arg("--addr")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `msgbus` child process.
pub struct TestProcess {
    /// Where it listens (from its "msgbus listening" log line).
    pub addr: SocketAddr,
    /// A client for it.
    pub api: Api,
    /// The child.
    pub child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Deref for TestProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// How a process that was expected to exit on its own ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Starts `msgbus` on `data_dir` and waits until it listens (at most 20 s).
/// Panics with its stderr if it exits first.
pub async fn spawn_process(data_dir: &Path, args: &[&str]) -> TestProcess {
    let mut child = msgbus_command(data_dir, args)
        .spawn()
        .expect("spawn msgbus");
    let stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let reader = {
        let stderr = stderr.clone();
        let mut addr_tx = Some(addr_tx);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if test_log() {
                    eprintln!("[msgbus child] {line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "msgbus listening" {
                        if let (Some(tx), Some(addr)) = (
                            addr_tx.take(),
                            v["addr"].as_str().and_then(|a| a.parse().ok()),
                        ) {
                            let _ = tx.send(addr);
                        }
                    }
                }
                stderr.lock().unwrap().push(line);
            }
        })
    };
    let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(_)) => {
            let status = child.wait().await;
            panic!(
                "msgbus exited before listening ({status:?}); stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        }
        Err(_) => panic!(
            "msgbus did not log \"msgbus listening\" within 20 s; stderr:\n{}",
            stderr.lock().unwrap().join("\n")
        ),
    };
    TestProcess {
        addr,
        api: Api::new(addr),
        child,
        stderr,
        reader: Some(reader),
    }
}

/// Runs `msgbus` on `data_dir`, expecting it to exit by itself within
/// `timeout`; panics (killing it) if it does not.
pub async fn run_expecting_exit(data_dir: &Path, args: &[&str], timeout: Duration) -> Exited {
    let started = Instant::now();
    let child = msgbus_command(data_dir, args)
        .spawn()
        .expect("spawn msgbus");
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("wait for msgbus");
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if test_log() {
                eprintln!("[msgbus child] {stderr}");
            }
            Exited {
                status: out.status,
                stderr,
                elapsed: started.elapsed(),
            }
        }
        // Dropping the future drops the child, which kills it.
        Err(_) => panic!("msgbus was expected to exit but still ran after {timeout:?}"),
    }
}

impl TestProcess {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("child still running") as i32)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Sends SIGKILL.
    pub fn sigkill(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    }

    /// Waits up to `timeout` for the process to exit; once it has, also
    /// waits for the rest of its stderr.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for msgbus"),
            Err(_) => return None,
        };
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        Some(status)
    }

    /// SIGKILLs the process and waits for it to be gone.
    pub async fn kill(mut self) {
        self.sigkill();
        self.wait_exit(Duration::from_secs(10))
            .await
            .expect("a SIGKILLed process exits");
    }

    /// Its stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}
