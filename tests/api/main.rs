//! Black-box tests of msgbus: the HTTP API of an in-process server
//! (events, streams, consumers, retention), real processes (locking,
//! signals, crashes, descriptor and connection limits) and startup recovery.
//!
//! Set `TEST_LOG=1` to see the servers' logs.

#[path = "../common/mod.rs"]
mod common;

mod acknowledged;
mod auth;
mod batch;
mod consumers;
mod crash;
mod damage;
mod duplicates;
mod errors;
mod fds;
mod guard;
mod long_poll;
mod nats_backend;
mod nats_queues;
mod ops;
mod processes;
mod publish;
mod queue_crash;
mod queues;
mod rate;
mod read;
mod read_rate;
mod restart;
mod retention;
mod schemas;
mod segindex;
mod stream;
mod tls;
mod torn_tail;
