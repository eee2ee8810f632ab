//! Fault injection against msgbus's self-healing (issue 3): damage the files
//! of a running server — flipped bytes, truncation, deletion, damaged
//! backups, a full disk — and check that it repairs within two monitor
//! intervals, loses no acknowledged event, never serves a corrupt one, and
//! reports everything in `/alerts` and to a webhook.
//!
//! Run with `cargo test --test healing -- --nocapture` to see the measured
//! repair times; `TEST_LOG=1` shows the servers' logs. The tmpfs tests
//! need root (they print SKIPPED and pass otherwise).

#[path = "../common/mod.rs"]
mod common;

mod active;
mod alerts;
mod disk;
mod manifest;
mod must_show;
mod offline;
mod page_cache;
mod process;
mod quiet;
mod sealed;
mod segindex;
mod sharing;
