//! The command-line client against real servers: `msgbus pub`, `sub`,
//! `import` and `export` run as the real binary (a child process each),
//! servers as real processes on port 0 in temp directories.
//!
//! Set `TEST_LOG=1` to see the servers' logs.

#[path = "../common/mod.rs"]
mod common;

mod export;
mod import;
mod progress;
mod pubsub;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::process::{run_to_exit, Exited};
use tokio::process::Command;

/// `msgbus <args>` with no inherited `MSGBUS_*` settings or proxy, no
/// stdin, killed if the test drops it; `env` added.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgbus"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("MSGBUS_") || k.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `msgbus <args>` to its end (at most 30 s).
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Exited {
    run_to_exit(
        cli(args, env),
        Duration::from_secs(30),
        &format!("msgbus {args:?}"),
    )
    .await
}

/// The exit code, or a panic with the output when killed by a signal.
pub fn code(e: &Exited) -> i32 {
    e.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}\n{}", e.stdout, e.stderr))
}

/// The predecessor's message-bus file, as shipped to us (41 records; the
/// last, index 40, has an empty `event_type` and a timestamp that is no time).
pub fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/fixtures/predecessor-bus.json")
}

/// `GET /events` of everything (one page of up to 1,000), as raw bytes.
pub async fn all_events_body(api: &common::http::Api) -> Vec<u8> {
    let r = api.get("/events?after=0&limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}
