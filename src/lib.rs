//! msgbus: a durable HTTP message bus for software agents.
//!
//! Crate map:
//! - [`cli`]: the command line (`serve`, `verify`, `openapi`)
//! - [`config`]: every server setting with its flag, `MSGBUS_*` variable and default
//! - [`telemetry`]: the tracing subscriber (pretty or JSON)
//! - [`app`]: builds the store and router, binds, serves, shuts down in order
//! - [`server`]: the connection loop: connection limit, header and idle timeouts
//! - [`tls`]: HTTPS certificates (`--tls-cert`/`--tls-key`), reloaded on SIGHUP
//! - [`bulk`]: long request work (big bodies, page loads) on low-priority threads
//! - [`clock`], [`sse`], [`redact`]: below everything: the time format, the
//!   Server-Sent Events wire format, data-directory paths hidden from clients
//! - [`event`]: the CloudEvents model and its validation
//! - [`schemas`]: payload JSON Schemas compiled once, and the publish check
//! - [`store`]: the durable log: one writer thread, segments, manifest, recovery
//! - [`jetstream`]: the second backend: the same [`store::Store`] over a NATS
//!   JetStream stream (`--backend nats`)
//! - [`auth`]: access control: tokens, roles, scopes, `auth/tokens.json`
//! - [`queue`]: work queues: leases, acks and dead letters of queue consumers
//! - [`http`]: the REST API, one file per resource, RFC 9457 errors
//! - [`jobs`]: the periodic background jobs, started and stopped one way
//! - [`monitor`]: the integrity monitor loop (detects; the writer repairs)
//! - [`backup_timer`]: periodic backups when something changed
//! - [`alerts`]: the alert list, its counters and the channels that deliver
//!   alerts to people (webhook formats, email over SMTP)
//! - [`offline`]: `msgbus verify`, `backup` and `restore` on a stopped store
//! - [`progress`]: the progress bar or summary lines of long commands
//! - [`transfer`]: import and export files (formats, mapping, batches,
//!   progress) through a [`transfer::Transport`]; knows no store, no HTTP client
//! - [`client`]: `msgbus pub`/`sub` and the HTTP transport; the API only
//! - [`inprocess`]: the offline transport: the store and the router in process
//! - [`commands`]: `msgbus import`/`export`: arguments, online or offline

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod alerts;
pub mod app;
pub mod auth;
pub mod backup_timer;
pub mod bulk;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod event;
pub mod http;
pub mod inprocess;
pub mod jetstream;
pub mod jobs;
pub mod memory;
pub mod monitor;
pub mod offline;
pub mod progress;
pub mod queue;
pub mod redact;
pub mod schemas;
pub mod server;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transfer;
