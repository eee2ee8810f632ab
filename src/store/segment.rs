//! Record framing for segment files: one JSON object per line,
//! `{"seq":42,"crc":"8a1b2c3d","event":{...}}\n`, where `crc` is the CRC32C of
//! the exact bytes of `event` as written. Segments are readable with `jq`.
//!
//! Scanning distinguishes a *torn tail* (the last record is incomplete, as a
//! crash mid-append leaves it) from *damage* (a bad record followed by valid
//! ones), because only the first may be cut away without losing an
//! acknowledged event.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

/// Name of the segment file whose first record has `first_seq`. Zero-padded so
/// that lexical order is sequence order.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

/// Parses a segment file name back into its first sequence number.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".jsonl")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Where the event bytes of a record sit inside its line, so readers can
/// fetch exactly the stored event with one positional read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// Offset of the event bytes from the start of the line.
    pub event_offset: u32,
    /// Length of the event bytes.
    pub event_len: u32,
    /// CRC32C of the event bytes.
    pub crc: u32,
    /// Length of the whole line including its newline.
    pub line_len: u32,
}

impl Framed {
    /// The event's bytes within its record's `line`.
    pub fn event_of<'a>(&self, line: &'a [u8]) -> &'a [u8] {
        &line[self.event_offset as usize..][..self.event_len as usize]
    }
}

/// Appends one framed record for `event` to `out` and says where its parts are.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, event: &[u8]) -> Framed {
    let crc = crc32c::crc32c(event);
    let start = out.len();
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"seq\":{seq},\"crc\":\"{crc:08x}");
    out.extend_from_slice(b"\",\"event\":");
    let event_offset = (out.len() - start) as u32;
    out.extend_from_slice(event);
    out.extend_from_slice(b"}\n");
    Framed {
        event_offset,
        event_len: event.len() as u32,
        crc,
        line_len: (out.len() - start) as u32,
    }
}

#[derive(Deserialize)]
struct RecordRef<'a> {
    seq: u64,
    #[serde(borrow)]
    crc: &'a str,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// The attributes of a stored event that the index keeps in memory.
#[derive(Debug, Deserialize)]
pub struct EventKeys {
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// CloudEvents `subject`, if any.
    #[serde(default)]
    pub subject: Option<String>,
    /// CloudEvents `time` (always stored; empty if a record lacks it).
    #[serde(default)]
    pub time: String,
}

/// One valid record found by a scan.
#[derive(Debug)]
pub struct ScannedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Offset of the line in the file.
    pub offset: u64,
    /// Framing details.
    pub framed: Framed,
    /// Attributes for the index.
    pub keys: EventKeys,
}

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// The line has no terminating newline (a crash mid-append).
    Incomplete,
    /// The line is not a record as msgbus writes it.
    Malformed(String),
    /// The CRC does not match the event bytes.
    CrcMismatch {
        /// The CRC written in the record.
        stored: String,
        /// The CRC of the bytes as read.
        actual: String,
    },
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordProblem::Incomplete => write!(f, "incomplete record (no newline)"),
            RecordProblem::Malformed(why) => write!(f, "malformed record: {why}"),
            RecordProblem::CrcMismatch { stored, actual } => {
                write!(f, "CRC32C mismatch: stored {stored}, computed {actual}")
            }
        }
    }
}

/// Decodes one line (including its trailing newline, if present).
pub fn decode_line(line: &[u8]) -> Result<(u64, Framed, EventKeys), RecordProblem> {
    let (seq, framed) = decode_frame(line)?;
    let keys = decode_keys(framed.event_of(line))?;
    Ok((seq, framed, keys))
}

/// The framing half of [`decode_line`]: the line is a record as msgbus
/// writes it and its CRC matches; the event's attributes are not parsed.
pub fn decode_frame(line: &[u8]) -> Result<(u64, Framed), RecordProblem> {
    let Some((&b'\n', body)) = line.split_last() else {
        return Err(RecordProblem::Incomplete);
    };
    let rec: RecordRef<'_> =
        serde_json::from_slice(body).map_err(|e| RecordProblem::Malformed(e.to_string()))?;
    let event = rec.event.get().as_bytes();
    let actual = crc32c::crc32c(event);
    let actual_hex = format!("{actual:08x}");
    if rec.crc != actual_hex {
        return Err(RecordProblem::CrcMismatch {
            stored: rec.crc.to_string(),
            actual: actual_hex,
        });
    }
    // RawValue borrows from `body`, so its address tells us where it starts.
    let event_offset = event.as_ptr() as usize - body.as_ptr() as usize;
    Ok((
        rec.seq,
        Framed {
            event_offset: event_offset as u32,
            event_len: event.len() as u32,
            crc: actual,
            line_len: line.len() as u32,
        },
    ))
}

/// The attributes half of [`decode_line`]: the index's keys of an event.
pub fn decode_keys(event: &[u8]) -> Result<EventKeys, RecordProblem> {
    serde_json::from_slice(event)
        .map_err(|e| RecordProblem::Malformed(format!("event lacks id/source/type: {e}")))
}

/// The first bad record of a segment, with what follows it.
#[derive(Debug, Clone)]
pub struct Damage {
    /// Byte offset of the bad record.
    pub offset: u64,
    /// What is wrong with it.
    pub problem: RecordProblem,
    /// Valid records found after the bad one (0 means a torn tail).
    pub valid_after: usize,
    /// Sequence range of those valid records, if any.
    pub seq_after: Option<(u64, u64)>,
}

/// Each valid record's offset in its segment and its framing, in seq
/// order ([`scan_frames`]).
pub type Frames = Vec<(u64, Framed)>;

/// Result of scanning a whole segment's bytes.
#[derive(Debug)]
pub struct Scan {
    /// Valid records before any damage, in file order (empty from
    /// [`scan_with`] and [`scan_frames`], which hand them out instead).
    pub records: Vec<ScannedRecord>,
    /// How many valid records come before any damage.
    pub count: u64,
    /// Length of the valid prefix in bytes.
    pub valid_len: u64,
    /// The first bad record, if any.
    pub damage: Option<Damage>,
}

/// Scans `bytes`, checking each record's framing and CRC and that sequence
/// numbers run gaplessly from `expected_first`.
pub fn scan(bytes: &[u8], expected_first: u64) -> Scan {
    let mut records = Vec::new();
    let mut scan = scan_with(bytes, expected_first, |r| records.push(r));
    scan.records = records;
    scan
}

/// Like [`scan`], but hands each valid record to `on_record` instead of
/// collecting them (the returned `records` is empty), so recovery indexes
/// a segment without holding all its records at once.
pub fn scan_with(
    bytes: &[u8],
    expected_first: u64,
    mut on_record: impl FnMut(ScannedRecord),
) -> Scan {
    scan_lines(
        bytes,
        expected_first,
        |line| decode_line(line).map(|(seq, framed, keys)| (seq, (framed, keys))),
        |seq, offset, (framed, keys)| {
            on_record(ScannedRecord {
                seq,
                offset,
                framed,
                keys,
            })
        },
    )
}

/// Like [`scan`], checking framing, CRCs and seqs, but without parsing
/// each event's attributes: returns each valid record's offset and
/// framing (24 bytes a record instead of a [`ScannedRecord`]'s ~300 with
/// its strings). Start-up judges the active segment this way, then parses
/// the attributes of one record at a time while it indexes them.
pub fn scan_frames(bytes: &[u8], expected_first: u64) -> (Scan, Frames) {
    let mut frames = Vec::new();
    let scan = scan_lines(bytes, expected_first, decode_frame, |_, offset, framed| {
        frames.push((offset, framed))
    });
    (scan, frames)
}

/// The one walk over a segment's lines: `decode` each, hand the valid
/// ones in gapless seq order to `on_record` (seq, offset, what `decode`
/// gave), and stop at the first bad one.
fn scan_lines<T>(
    bytes: &[u8],
    expected_first: u64,
    decode: impl Fn(&[u8]) -> Result<(u64, T), RecordProblem>,
    mut on_record: impl FnMut(u64, u64, T),
) -> Scan {
    let mut pos = 0usize;
    let mut expect = expected_first;
    while pos < bytes.len() {
        let end = memchr_newline(&bytes[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(bytes.len());
        let line = &bytes[pos..end];
        let problem = match decode(line) {
            Ok((seq, rec)) if seq == expect => {
                on_record(seq, pos as u64, rec);
                expect += 1;
                pos = end;
                continue;
            }
            Ok((seq, _)) => RecordProblem::Malformed(format!(
                "sequence number {seq} where {expect} was expected"
            )),
            Err(p) => p,
        };
        let (valid_after, seq_after) = count_valid_lines(&bytes[end..]);
        return Scan {
            records: Vec::new(),
            count: expect - expected_first,
            valid_len: pos as u64,
            damage: Some(Damage {
                offset: pos as u64,
                problem,
                valid_after,
                seq_after,
            }),
        };
    }
    Scan {
        records: Vec::new(),
        count: expect - expected_first,
        valid_len: pos as u64,
        damage: None,
    }
}

/// Counts lines after a bad record that decode as valid records. Any such
/// line means the bad record is not a torn tail but damage inside the log.
fn count_valid_lines(bytes: &[u8]) -> (usize, Option<(u64, u64)>) {
    let mut count = 0;
    let mut range: Option<(u64, u64)> = None;
    let mut pos = 0;
    while pos < bytes.len() {
        let end = memchr_newline(&bytes[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(bytes.len());
        if let Ok((seq, _, _)) = decode_line(&bytes[pos..end]) {
            count += 1;
            range = Some(match range {
                None => (seq, seq),
                Some((a, b)) => (a.min(seq), b.max(seq)),
            });
        }
        pos = end;
    }
    (count, range)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// A segment file on disk.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// First sequence number (from the name).
    pub first_seq: u64,
    /// Full path.
    pub path: PathBuf,
}

/// Lists segment files in `dir`, sorted by first sequence number. Files that
/// are not segments are ignored.
pub fn list(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first_seq) = parse_file_name(&entry.file_name().to_string_lossy()) {
            out.push(SegmentFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Vec<u8> {
        format!(
            r#"{{"specversion":"1.0","id":"e{i}","source":"/t","type":"t.x","data":{{"n":{i}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let mut buf = Vec::new();
        let ev = event(7);
        let f = encode_record(&mut buf, 7, &ev);
        assert_eq!(buf.len(), f.line_len as usize);
        let (seq, g, keys) = decode_line(&buf).unwrap();
        assert_eq!((seq, g), (7, f));
        assert_eq!(
            &buf[f.event_offset as usize..][..f.event_len as usize],
            &ev[..]
        );
        assert_eq!(keys.id, "e7");
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn torn_tail_and_mid_damage_are_told_apart() {
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode_record(&mut buf, i, &event(i));
        }
        let full = buf.len();
        let s = scan(&buf[..full - 5], 1);
        let d = s.damage.unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(d.valid_after, 0);

        let mut damaged = buf.clone();
        let second = s.records[1].offset as usize;
        damaged[second + 40] ^= 0x20;
        let s = scan(&damaged, 1);
        let d = s.damage.unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(d.offset, second as u64);
        assert_eq!(d.valid_after, 1);
        assert_eq!(d.seq_after, Some((3, 3)));
    }
}
