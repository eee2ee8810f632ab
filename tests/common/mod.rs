//! The harness every integration test binary shares.
//!
//! - [`server`]: a server inside the test process, on port 0, stopped in
//!   order and restarted on the same data directory.
//! - [`process`]: the real `msgbus` binary as a child process (locking,
//!   signals, SIGKILL crashes, log lines) and the offline tools.
//! - [`http`]: a client that knows where its server is, and whole-read
//!   responses with problem+json assertions.
//! - [`sse`]: a Server-Sent Events reader.
//! - [`events`]: CloudEvents built for tests.
//! - [`files`]: data directories, inspecting and damaging their files, a
//!   tmpfs for disk-full tests.
//! - [`integrity`]: publishing while recording exactly what every
//!   acknowledged event read back as, and checking it is never lost or
//!   served corrupt.
//! - [`nats`]: nats-server found or installed, single servers and
//!   clusters with JetStream.
//! - [`monitor`]: the self-healing monitor's settings, alerts, repairs and
//!   a webhook receiver.
//!
//! Everything is real: servers listen on real sockets, write real files and
//! are killed with real signals; nothing is mocked.
//!
//! Logs stay silent unless `TEST_LOG` is set (then in-process servers log to
//! stderr and child processes' stderr is echoed).

// Every test binary compiles this module on its own and uses only part of
// it, so in any one binary most items look unused.
#![allow(dead_code)]

pub mod events;
pub mod files;
pub mod http;
pub mod integrity;
pub mod monitor;
pub mod nats;
pub mod process;
pub mod server;
pub mod sse;

/// True when the developer asked for logs (`TEST_LOG` set).
pub fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

/// Prints a measurement (visible with `--nocapture`): repair times and the
/// like are worth seeing, but are not asserted beyond their bounds.
pub fn note(what: impl std::fmt::Display) {
    eprintln!("[note] {what}");
}
