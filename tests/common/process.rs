//! The real `msgbus` binary as a child process: for what only a process
//! can show (the data directory lock against a second instance, SIGTERM,
//! SIGKILL in the middle of writes, JSON log lines) and for the offline
//! tools (`verify`, `backup`, `restore`).

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http::Api;
use super::test_log;

/// How long a child may take to log "msgbus listening".
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary, with no inherited `MSGBUS_*` settings (a developer's
/// environment must not change what a test runs), no stdin, and killed
/// (SIGKILL) if the test drops it, so a failing test never leaves a server
/// holding a port and a data directory behind. msgbus starts no processes
/// of its own, so killing the one process is enough.
fn command() -> Command {
    isolated(Command::new(env!("CARGO_BIN_EXE_msgbus")))
}

/// `cmd` with no inherited `MSGBUS_*` settings, no stdin, killed on drop.
fn isolated(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MSGBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// `msgbus` serving `data_dir` with `args`: JSON logs at info level (the
/// "msgbus listening" line carries the address), port 0, stderr piped.
pub fn msgbus_command(data_dir: &Path, args: &[&str]) -> Command {
    serve_command(command(), data_dir, args)
}

/// Like [`msgbus_command`], started through `prlimit` with a soft and hard
/// open-file limit (RLIMIT_NOFILE) of `nofile`; `prlimit` execs msgbus, so
/// the child is msgbus itself.
pub fn msgbus_command_with_nofile(data_dir: &Path, args: &[&str], nofile: u64) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_msgbus"));
    serve_command(isolated(cmd), data_dir, args)
}

fn serve_command(mut cmd: Command, data_dir: &Path, args: &[&str]) -> Command {
    cmd.env("RUST_LOG", "info")
        .arg("--log-format")
        .arg("json")
        .arg("--addr")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A running `msgbus` child process.
pub struct TestProcess {
    /// A client for it (also reached through `Deref`).
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

/// Starts `msgbus` on `data_dir` and waits until it listens.
///
/// Readiness is its "msgbus listening" log line, not a polled port: with
/// port 0 only the process knows its port, and the line is written once the
/// socket is bound, so it is both the signal and the address. Its stderr
/// is read all along (kept for [`TestProcess::stderr_text`] and
/// [`TestProcess::log`]), so the child never blocks on a full pipe. Panics
/// with that stderr if the process exits first or does not listen within
/// 20 s.
pub async fn spawn_process(data_dir: &Path, args: &[&str]) -> TestProcess {
    spawn_command(msgbus_command(data_dir, args)).await
}

/// [`spawn_process`] for a command built by [`msgbus_command`] or
/// [`msgbus_command_with_nofile`].
pub async fn spawn_command(mut cmd: Command) -> TestProcess {
    let mut child = cmd.spawn().expect("spawn msgbus");
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
    let addr = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(_)) => {
            let status = child.wait().await;
            panic!(
                "msgbus exited before listening ({status:?}); stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        }
        Err(_) => panic!(
            "msgbus did not log \"msgbus listening\" within {START_TIMEOUT:?}; stderr:\n{}",
            stderr.lock().unwrap().join("\n")
        ),
    };
    TestProcess {
        api: Api::new(addr),
        child,
        stderr,
        reader: Some(reader),
    }
}

impl TestProcess {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("child still running") as i32)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
    }

    /// Sends SIGHUP (msgbus rereads its token file and TLS certificate).
    pub fn sighup(&self) {
        kill(self.pid(), Signal::SIGHUP).expect("SIGHUP");
    }

    /// Sends SIGKILL: a crash, with no chance to flush or clean up.
    pub fn sigkill(&self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
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

    /// SIGKILLs the process and waits for it to be gone (and its lock with
    /// it), so the next process can open the data directory.
    pub async fn kill(mut self) {
        self.sigkill();
        self.wait_exit(Duration::from_secs(10))
            .await
            .expect("a SIGKILLed process exits");
    }

    /// SIGTERM, then its exit status; fails the test if it has not exited
    /// within `within`.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(within).await {
            Some(status) => status,
            None => panic!(
                "msgbus did not exit within {within:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// SIGTERM, then waits (at most 15 s) for a clean exit (status 0).
    pub async fn stop(mut self) {
        let status = self.terminate(Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "msgbus exits cleanly on SIGTERM: {status}; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Its stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Its JSON log lines so far.
    pub fn log(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// How a process that was expected to exit on its own ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Runs `cmd` to completion, capturing its output; panics if it still runs
/// after `timeout` (dropping it then kills it).
pub async fn run_to_exit(mut cmd: Command, timeout: Duration, what: &str) -> Exited {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn msgbus");
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} was expected to exit but still ran after {timeout:?}"))
        .expect("wait for msgbus");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if test_log() {
        eprintln!("[msgbus child] {stderr}");
    }
    Exited {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Runs `msgbus` serving `data_dir`, expecting it to exit by itself (it
/// refuses to start) within `timeout`.
pub async fn run_expecting_exit(data_dir: &Path, args: &[&str], timeout: Duration) -> Exited {
    run_to_exit(msgbus_command(data_dir, args), timeout, "msgbus").await
}

/// Runs `msgbus <args>` (an offline tool) to completion, at most 30 s:
/// exit code, stdout, stderr.
pub async fn run_msgbus(args: &[&str]) -> (i32, String, String) {
    let mut cmd = command();
    cmd.env("RUST_LOG", "warn").args(args);
    let out = run_to_exit(cmd, Duration::from_secs(30), &format!("msgbus {args:?}")).await;
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// Makes an access token with `msgbus token create` on `data_dir` (a real
/// process, as an operator would) and returns it: the last line it prints.
pub async fn create_token(data_dir: &Path, name: &str, role: &str, extra: &[&str]) -> String {
    let d = data_dir.display().to_string();
    let mut args = vec![
        "token",
        "create",
        "--data-dir",
        &d,
        "--name",
        name,
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run_msgbus(&args).await;
    assert_eq!(code, 0, "msgbus token create: {out}{err}");
    let token = out.lines().last().unwrap_or_default().trim().to_string();
    assert!(token.starts_with("mb_"), "no token on the last line: {out}");
    token
}
