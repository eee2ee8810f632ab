//! Alerts that reach people (issue 15): email over SMTP to a real SMTP
//! server (Python's aiosmtpd, installed into a cached venv when missing),
//! every webhook format to a real HTTP receiver, and `msgbus alert test`,
//! all against the real `msgbus` binary on port 0 in a temp dir.
//!
//! The SMTP tests print SKIPPED and pass when aiosmtpd is neither installed
//! nor installable (no Python, no package index).

#[path = "../common/mod.rs"]
mod common;

mod command;
mod email;
mod harness;
mod webhooks;
