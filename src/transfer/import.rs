//! `msgbus import`: files of records into a store, in file order, in
//! batches of up to 1,000 (`POST /events/batch`: one commit each).
//!
//! Each record is converted and validated here first (`mapping`, with the
//! event code the server runs), so a record that cannot be made valid is
//! named with its file and line or index and the reason, and the rest goes
//! on; `--strict` stops at the first one, after storing the records before
//! it. A batch the server refuses item by item (a payload schema, a
//! token's scope) is sent again without the items it named, which are
//! reported the same way. Importing is idempotent: every event carries an
//! id (its own or one from its content), and the server stores a repeated
//! `(source, id)` once.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use super::mapping::Mapping;
use super::records::{self, At, ReadError};
use super::{Reply, Transport, TransportError};
use crate::progress::Progress;

/// Most events in one batch: the server's default `--max-batch-events`.
pub const MAX_BATCH: usize = 1000;
/// A batch refused for being too large is split until it fits; a batch
/// answered 503 or 429 is retried this many times, waiting between.
const RETRIES: u32 = 8;

/// Settings of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Record to event.
    pub mapping: Mapping,
    /// Stop at the first rejected record.
    pub strict: bool,
    /// Events per batch (1 to [`MAX_BATCH`]).
    pub batch: usize,
    /// No progress output.
    pub quiet: bool,
    /// Between progress lines when standard error is no terminal.
    pub progress_every: std::time::Duration,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Records read.
    pub records: u64,
    /// Events stored now.
    pub stored: u64,
    /// Events the store already held (same source and id).
    pub duplicates: u64,
    /// Records rejected.
    pub rejected: u64,
    /// True when `--strict` stopped the import.
    pub stopped: bool,
}

/// Why an import could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server refused a batch as a whole.
    #[error("the server refused a batch: {0}")]
    Refused(String),
}

struct Item {
    file: usize,
    at: At,
    text: Vec<u8>,
}

/// Imports `files` (`-` is standard input) through `t`. Rejections are
/// written to `log` as `FILE: line N: reason` (or `index N`).
pub async fn run(
    t: &dyn Transport,
    files: &[String],
    opts: &ImportOptions,
    log: &mut dyn Write,
) -> Result<ImportReport, ImportError> {
    let mut read = Vec::with_capacity(files.len());
    for f in files {
        read.push(records::read_file(f)?);
    }
    let total: usize = read.iter().map(|r| r.records.len()).sum();
    let mut progress = Progress::new("import", "records", Some(total as u64), opts.quiet)
        .every(opts.progress_every);
    let mut report = ImportReport::default();
    let batch_size = opts.batch.clamp(1, MAX_BATCH);
    let mut pending = Vec::with_capacity(batch_size);
    'files: for (fi, recs) in read.into_iter().enumerate() {
        for r in recs.records {
            report.records += 1;
            let converted = r
                .text
                .and_then(|raw| opts.mapping.convert(&raw, recs.format));
            match converted {
                Ok(text) => pending.push(Item {
                    file: fi,
                    at: r.at,
                    text,
                }),
                Err(why) => {
                    progress.add(1);
                    reject(log, &mut report, &files[fi], r.at, &why.0);
                    if opts.strict {
                        report.stopped = true;
                        break 'files;
                    }
                }
            }
            if pending.len() == batch_size {
                let batch = std::mem::take(&mut pending);
                send(t, batch, opts, files, &mut report, &mut progress, log).await?;
                if report.stopped {
                    break 'files;
                }
            }
        }
    }
    if !pending.is_empty() {
        send(t, pending, opts, files, &mut report, &mut progress, log).await?;
    }
    progress.finish();
    Ok(report)
}

fn reject(log: &mut dyn Write, report: &mut ImportReport, file: &str, at: At, why: &str) {
    report.rejected += 1;
    let _ = writeln!(log, "rejected {file}: {at}: {why}");
}

async fn send(
    t: &dyn Transport,
    batch: Vec<Item>,
    opts: &ImportOptions,
    files: &[String],
    report: &mut ImportReport,
    progress: &mut Progress,
    log: &mut dyn Write,
) -> Result<(), ImportError> {
    let mut queue = VecDeque::from([batch]);
    let mut retries = 0;
    while let Some(mut batch) = queue.pop_front() {
        if batch.is_empty() {
            continue;
        }
        let mut body =
            Vec::with_capacity(batch.iter().map(|i| i.text.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, item) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&item.text);
        }
        body.push(b']');
        let reply = t.send("POST", "/events/batch", Some(body)).await?;
        if reply.ok() {
            retries = 0;
            let (stored, dups) = count_results(&reply)?;
            report.stored += stored;
            report.duplicates += dups;
            progress.add(batch.len() as u64);
            continue;
        }
        match reply.status {
            413 if batch.len() > 1 => {
                let rest = batch.split_off(batch.len() / 2);
                queue.push_front(rest);
                queue.push_front(batch);
            }
            422 | 403 | 413 => {
                let named = named_items(&reply, batch.len());
                if named.is_empty() {
                    if batch.len() == 1 {
                        let item = &batch[0];
                        progress.add(1);
                        reject(log, report, &files[item.file], item.at, &reply.describe());
                        if opts.strict {
                            report.stopped = true;
                            return Ok(());
                        }
                        continue;
                    }
                    return Err(ImportError::Refused(reply.describe()));
                }
                let first = named.keys().next().copied().unwrap_or(0);
                let mut keep = Vec::with_capacity(batch.len());
                for (i, item) in batch.into_iter().enumerate() {
                    if let Some(why) = named.get(&i) {
                        progress.add(1);
                        reject(log, report, &files[item.file], item.at, why);
                    } else if !opts.strict || i < first {
                        keep.push(item);
                    }
                }
                if opts.strict {
                    report.stopped = true;
                    queue.clear();
                }
                queue.push_front(keep);
            }
            429 | 503 if retries < RETRIES => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200 << retries.min(5))).await;
                queue.push_front(batch);
            }
            _ => return Err(ImportError::Refused(reply.describe())),
        }
    }
    Ok(())
}

/// Stored and duplicate counts of a batch's `results`.
fn count_results(reply: &Reply) -> Result<(u64, u64), ImportError> {
    #[derive(serde::Deserialize)]
    struct One {
        duplicate: bool,
    }
    #[derive(serde::Deserialize)]
    struct Batch {
        results: Vec<One>,
    }
    let b: Batch = serde_json::from_slice(&reply.body)
        .map_err(|e| ImportError::Refused(format!("an answer that is no batch result: {e}")))?;
    let dups = b.results.iter().filter(|r| r.duplicate).count() as u64;
    Ok((b.results.len() as u64 - dups, dups))
}

/// The items a refusal names (`[3].type`), each with its messages.
fn named_items(reply: &Reply, len: usize) -> std::collections::BTreeMap<usize, String> {
    #[derive(serde::Deserialize)]
    struct E {
        field: String,
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        errors: Vec<E>,
    }
    let mut out = std::collections::BTreeMap::<usize, String>::new();
    let Ok(p) = serde_json::from_slice::<P>(&reply.body) else {
        return out;
    };
    for e in p.errors {
        let Some(rest) = e.field.strip_prefix('[') else {
            continue;
        };
        let Some((n, field)) = rest.split_once(']') else {
            continue;
        };
        let Ok(i) = n.parse::<usize>() else { continue };
        if i >= len {
            continue;
        }
        let field = field.trim_start_matches('.');
        let entry = out.entry(i).or_default();
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(&format!(
            "{field}: {} (the server refused it: {})",
            e.message, reply.status
        ));
    }
    out
}
