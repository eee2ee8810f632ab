//! Starting and stopping the servers under test.
//!
//! `bench/run` uses [`Launcher::Processes`]: the release `msgbus` binary
//! (`msgbus serve --data-dir <dir> --addr 127.0.0.1:<port>`, default
//! settings, logs to a file) and the `bench-ceiling` binary, each its own
//! process on loopback. The smoke test uses [`Launcher::InProcess`]: the
//! same servers as tasks of the test's runtime, so `cargo test` covers the
//! scenario code without a release build.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Result};

/// How long a server may take to become ready before the run fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// How the servers are started.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// Real processes.
    Processes {
        /// The `msgbus` binary.
        msgbus: PathBuf,
        /// The `bench-ceiling` binary.
        ceiling: PathBuf,
        /// Where the servers' stdout and stderr go.
        logs: PathBuf,
    },
    /// Tasks in this process (smoke test).
    InProcess,
}

/// Resident memory of a server process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now, MiB.
    pub vm_rss_mib: f64,
    /// `VmHWM`: peak resident since start, MiB.
    pub vm_hwm_mib: f64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some(Memory {
        vm_rss_mib: field("VmRSS:")?,
        vm_hwm_mib: field("VmHWM:")?,
    })
}

/// CPU time (user + system) `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's `USER_HZ`).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it don't.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

enum Inner {
    Child {
        child: Box<tokio::process::Child>,
        log: PathBuf,
        graceful: bool,
    },
    Msgbus {
        stop: oneshot::Sender<()>,
        join: JoinHandle<std::result::Result<(), msgbus::app::AppError>>,
    },
    Task(JoinHandle<std::io::Result<()>>),
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// From launch (before the process is spawned) to the first
    /// `GET /health/ready` answered 200.
    pub ready_after: Duration,
    /// Its process id (this process's own when in-process).
    pub pid: u32,
    /// True when the server runs inside this process.
    pub in_process: bool,
    inner: Inner,
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

/// Starts `cmd` as a child process logging to `log`, and waits until it
/// answers on `addr`. `graceful`: stop it with SIGTERM (msgbus) rather than
/// SIGKILL (the ceiling).
async fn start_child(
    mut cmd: tokio::process::Command,
    addr: SocketAddr,
    log: PathBuf,
    graceful: bool,
) -> Result<Server> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let started = Instant::now();
    let program = cmd.as_std().get_program().to_string_lossy().to_string();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let ready_after = wait_ready(addr, started, Some(&mut child), Some(&log)).await?;
    Ok(Server {
        addr,
        ready_after,
        pid,
        in_process: false,
        inner: Inner::Child {
            child: Box::new(child),
            log,
            graceful,
        },
    })
}

fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `GET /health/ready` every 2 ms until it answers 200.
async fn wait_ready(
    addr: SocketAddr,
    started: Instant,
    child: Option<&mut tokio::process::Child>,
    log: Option<&Path>,
) -> Result<Duration> {
    let mut child = child;
    loop {
        if let Ok(Ok(res)) =
            tokio::time::timeout(Duration::from_secs(5), client::get(addr, "/health/ready")).await
        {
            if res.status == StatusCode::OK {
                return Ok(started.elapsed());
            }
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(status) = c.try_wait()? {
                return Err(format!(
                    "the server exited before it was ready ({status}); last log lines:\n{}",
                    log.map(log_tail).unwrap_or_default()
                )
                .into());
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!("not ready on {addr} after {READY_TIMEOUT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Launcher {
    /// True for [`Launcher::InProcess`].
    pub fn in_process(&self) -> bool {
        matches!(self, Launcher::InProcess)
    }

    /// Starts msgbus on `data_dir` with its default settings and waits until
    /// it is ready.
    pub async fn msgbus(&self, data_dir: &Path) -> Result<Server> {
        self.msgbus_with(data_dir, &[]).await
    }

    /// Starts msgbus on `data_dir` with these extra `serve` flags (e.g.
    /// `--max-subscribers 1064`), everything else at its defaults, and waits
    /// until it is ready.
    pub async fn msgbus_with(&self, data_dir: &Path, flags: &[String]) -> Result<Server> {
        match self {
            Launcher::Processes { msgbus, logs, .. } => {
                let addr = free_port()?;
                let log = logs.join(format!(
                    "msgbus-{}.log",
                    data_dir
                        .file_name()
                        .and_then(|s| s.to_str())
                        .unwrap_or("data")
                ));
                let mut cmd = tokio::process::Command::new(msgbus);
                cmd.arg("serve")
                    .arg("--data-dir")
                    .arg(data_dir)
                    .arg("--addr")
                    .arg(addr.to_string())
                    .args(flags);
                start_child(cmd, addr, log, true).await
            }
            Launcher::InProcess => {
                let dir = data_dir.to_str().ok_or("data dir is not UTF-8")?;
                let cli = msgbus::cli::Cli::parse_from(
                    ["msgbus", "--data-dir", dir, "--addr", "127.0.0.1:0"]
                        .into_iter()
                        .chain(flags.iter().map(String::as_str)),
                );
                let started = Instant::now();
                let app = msgbus::app::Application::build(cli.serve).await?;
                let addr = app.local_addr();
                let (stop, stopped) = oneshot::channel::<()>();
                let join = tokio::spawn(app.run_until(async move {
                    let _ = stopped.await;
                }));
                let ready_after = wait_ready(addr, started, None, None).await?;
                Ok(Server {
                    addr,
                    ready_after,
                    pid: std::process::id(),
                    in_process: true,
                    inner: Inner::Msgbus { stop, join },
                })
            }
        }
    }

    /// Starts the ceiling server and waits until it is ready.
    pub async fn ceiling(&self) -> Result<Server> {
        match self {
            Launcher::Processes { ceiling, logs, .. } => {
                let addr = free_port()?;
                let log = logs.join("ceiling.log");
                let mut cmd = tokio::process::Command::new(ceiling);
                cmd.arg("--addr").arg(addr.to_string());
                start_child(cmd, addr, log, false).await
            }
            Launcher::InProcess => {
                let started = Instant::now();
                let (addr, server) = crate::ceiling::bind("127.0.0.1:0".parse()?).await?;
                let join = tokio::spawn(server);
                let ready_after = wait_ready(addr, started, None, None).await?;
                Ok(Server {
                    addr,
                    ready_after,
                    pid: std::process::id(),
                    in_process: true,
                    inner: Inner::Task(join),
                })
            }
        }
    }
}

impl Server {
    /// `VmRSS`/`VmHWM` of the server's process (the whole test process when
    /// in-process, so only meaningful for real processes).
    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid)
    }

    /// Stops the server: SIGTERM and a clean exit for msgbus (it commits
    /// what is queued and releases its lock), a plain kill for the ceiling.
    pub async fn stop(self) -> Result<()> {
        match self.inner {
            Inner::Child {
                mut child,
                log,
                graceful,
            } => {
                if !graceful {
                    child.kill().await?;
                    return Ok(());
                }
                let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
                match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                    Ok(status) => {
                        let status = status?;
                        if status.signal() == Some(libc_sigterm()) {
                            // msgbus installs its SIGTERM handler only when
                            // its serve loop first polls it, which can be
                            // after /health/ready already answered 200; a
                            // SIGTERM in that window kills it outright.
                            // Everything acknowledged was fsynced, so the
                            // store is still sound; say so and go on.
                            eprintln!(
                                "[bench] warning: msgbus (pid {}) died of SIGTERM without a graceful shutdown (signal arrived before its handler was installed)",
                                self.pid
                            );
                            return Ok(());
                        }
                        if !status.success() {
                            return Err(format!(
                                "msgbus exited with {status}; last log lines:\n{}",
                                log_tail(&log)
                            )
                            .into());
                        }
                        Ok(())
                    }
                    Err(_) => {
                        child.kill().await?;
                        Err("msgbus did not stop within 60 s of SIGTERM".into())
                    }
                }
            }
            Inner::Msgbus { stop, join } => {
                let _ = stop.send(());
                join.await?.map_err(|e| e.to_string())?;
                Ok(())
            }
            Inner::Task(join) => {
                join.abort();
                let _ = join.await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let cpu = cpu_seconds_of(std::process::id()).expect("/proc/<pid>/stat");
        assert!(cpu > 0.0 && cpu < 3600.0, "{cpu}");
        assert!(memory_of(std::process::id()).is_some());
    }
}
