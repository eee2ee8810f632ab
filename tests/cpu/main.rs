//! Hostile clients against the CPU and memory of the index: pages capped in
//! bytes, filters that cost O(1) per event, duplicates answered from memory,
//! interners that shrink with retention, bounded label series, one
//! `/admin/verify` at a time, and no secrets or paths in answers.
//!
//! Set `TEST_LOG=1` to see the servers' logs.

#[path = "../common/mod.rs"]
mod common;

mod duplicates;
mod filters;
mod interners;
mod labels;
mod pages;
mod secrets;
mod verify_once;
