//! The msgbus performance benchmark (issue 4).
//!
//! - [`event`]: the CloudEvents the load generator sends (~300 bytes, unique ids)
//! - [`client`]: a minimal HTTP/1.1 client on hyper (persistent keep-alive connections)
//! - [`loadgen`]: closed-loop and open-loop (rate-limited) load with HDR latency histograms
//! - [`fanout`]: SSE subscribers that check every event arrives in order and time its delivery
//! - [`ceiling`]: the minimal axum server the figures are compared to
//! - [`servers`]: starting msgbus and the ceiling as processes or in-process
//! - [`scenarios`]: every measured scenario and the orchestration of a whole run
//! - [`large`]: the large-store group (a store grown to millions of events)
//! - [`nats`]: the NATS backend beside the file backend (`--backend nats`)
//! - [`queues`]: the work-queue group: fetch + ack beside Redis Streams
//! - [`report`]: the targets, the table and the JSON

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod ceiling;
pub mod client;
pub mod dashboard;
pub mod event;
pub mod fanout;
pub mod large;
pub mod loadgen;
pub mod nats;
pub mod queues;
pub mod report;
pub mod scenarios;
pub mod schemas;
pub mod servers;
