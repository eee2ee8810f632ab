//! `msgbus export`: stored events to NDJSON, one per line, each exactly as
//! stored with its seq added as the last member, a `msgbusseq` extension
//! attribute (or, with `--with-seq`, as `{"seq":N,"event":{...}}`). Read
//! with `GET /events` in pages of 1,000 from `--after` up to `--until` or
//! the last event stored when the export started, so an export ends and
//! can be resumed with `--after` the last seq written.

use std::io::Write;

use serde_json::value::RawValue;

use super::mapping::SEQ_ATTRIBUTE;
use super::{Transport, TransportError};
use crate::progress::Progress;

/// Settings of one export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Start after this seq.
    pub after: u64,
    /// Stop at this seq (default: the last seq when the export starts).
    pub until: Option<u64>,
    /// `type_prefix` filter.
    pub type_prefix: Option<String>,
    /// `source` filter.
    pub source: Option<String>,
    /// `{"seq":N,"event":...}` lines instead of the `msgbusseq` attribute.
    pub with_seq: bool,
    /// No progress output.
    pub quiet: bool,
    /// Between progress lines when standard error is no terminal.
    pub progress_every: std::time::Duration,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Events written.
    pub events: u64,
    /// The last seq written (resume with `--after` it).
    pub last_seq: Option<u64>,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server refused a read.
    #[error("the server refused a read: {0}")]
    Refused(String),
    /// Writing the output failed.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    events: Vec<Item<'a>>,
    next_after: u64,
    last_seq: u64,
}

#[derive(serde::Deserialize)]
struct Item<'a> {
    seq: u64,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// Writes the events `opts` selects to `out`.
pub async fn run(
    t: &dyn Transport,
    opts: &ExportOptions,
    out: &mut dyn Write,
) -> Result<ExportReport, ExportError> {
    let mut report = ExportReport::default();
    let mut after = opts.after;
    let mut end = opts.until;
    let mut progress = Progress::new("export", "seqs", None, opts.quiet).every(opts.progress_every);
    let mut query = String::new();
    for (k, v) in [("type_prefix", &opts.type_prefix), ("source", &opts.source)] {
        if let Some(v) = v {
            query.push('&');
            query.push_str(&serde_urlencoded::to_string([(k, v)]).unwrap_or_default());
        }
    }
    loop {
        if end.is_some_and(|e| after >= e) {
            break;
        }
        let path = format!("/events?after={after}&limit=1000{query}");
        let reply = t.send("GET", &path, None).await?;
        if !reply.ok() {
            return Err(ExportError::Refused(reply.describe()));
        }
        let page: Page<'_> = serde_json::from_slice(&reply.body)
            .map_err(|e| ExportError::Refused(format!("an answer that is no page: {e}")))?;
        let stop = *end.get_or_insert(page.last_seq);
        if end == Some(page.last_seq) && opts.until.is_none() {
            progress.set_total(stop.saturating_sub(opts.after));
        }
        for item in &page.events {
            if item.seq > stop {
                break;
            }
            write_line(out, item.seq, item.event.get(), opts.with_seq)?;
            report.events += 1;
            report.last_seq = Some(item.seq);
        }
        let next = page.next_after.min(stop);
        progress.add(next.saturating_sub(after));
        if next <= after {
            break;
        }
        after = next;
    }
    out.flush()?;
    progress.finish();
    Ok(report)
}

/// One exported line. An event that carries a `msgbusseq` attribute of
/// its own is written as an envelope whatever `with_seq` says, so that an
/// import (which drops the attribute an export adds) keeps the event's own.
pub fn write_line(
    out: &mut dyn Write,
    seq: u64,
    event: &str,
    with_seq: bool,
) -> std::io::Result<()> {
    let own_seq_attribute = || {
        event.contains(SEQ_ATTRIBUTE)
            && super::mapping::raw_members(event)
                .is_some_and(|m| m.iter().any(|(n, _)| n == SEQ_ATTRIBUTE))
    };
    if with_seq || own_seq_attribute() {
        return writeln!(out, "{{\"seq\":{seq},\"event\":{event}}}");
    }
    let body = event.trim_end();
    let inner = body.strip_suffix('}').unwrap_or(body);
    let empty = inner.trim_end().ends_with('{');
    let comma = if empty { "" } else { "," };
    writeln!(out, "{inner}{comma}\"{SEQ_ATTRIBUTE}\":{seq}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_seq() {
        let mut out = Vec::new();
        write_line(&mut out, 7, r#"{"type":"a"}"#, false).unwrap();
        write_line(&mut out, 8, r#"{"type":"b"}"#, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"a\",\"msgbusseq\":7}\n{\"seq\":8,\"event\":{\"type\":\"b\"}}\n"
        );
    }

    #[test]
    fn an_event_with_its_own_msgbusseq_keeps_it_through_import() {
        let stored = r#"{"type":"a","source":"/x","id":"1","msgbusseq":"mine"}"#;
        let mut out = Vec::new();
        write_line(&mut out, 9, stored, false).unwrap();
        let line = String::from_utf8(out).unwrap();
        let raw = serde_json::value::RawValue::from_string(line.trim().to_string()).unwrap();
        let back = crate::transfer::mapping::Mapping::default()
            .convert(&raw, crate::transfer::records::Format::Ndjson)
            .unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), stored);
    }
}
