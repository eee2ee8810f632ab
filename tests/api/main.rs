//! Black-box tests of msgbus: the HTTP API of an in-process server, real
//! processes (locking, signals, crashes) and startup recovery.
//!
//! Set `TEST_LOG=1` to see the servers' logs.

#[path = "../common/mod.rs"]
mod common;

mod acknowledged;
mod batch;
mod crash;
mod damage;
mod duplicates;
mod errors;
mod guard;
mod long_poll;
mod ops;
mod processes;
mod publish;
mod read;
mod restart;
mod torn_tail;
