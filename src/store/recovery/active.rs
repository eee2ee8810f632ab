//! The active segment at start-up: tell a torn tail from damage and from
//! truncation, and repair what can be repaired from a verified backup.
//!
//! The rules, in order:
//! - Only an *unterminated final line* that lies beyond everything known to
//!   be acknowledged is a torn tail (a crash mid-append leaves exactly that).
//!   It is cut after being copied to `quarantine/`.
//! - A complete line that is not a valid record (bad CRC, bad framing, a
//!   wrong sequence number) is damage, even when it is the last line: a bit
//!   flip in the newest acknowledged record must not be cut like a torn
//!   write, or the next publish would reuse its sequence number.
//! - A file shorter than the manifest's durable floor
//!   ([`Manifest::active_durable`]) lost acknowledged records.
//! - A backup's copy of the active segment is a byte-exact prefix of the live
//!   file (segments only grow and backups copy durable bytes). So a longer
//!   copy means the live file lost records, and the copy's bytes replace the
//!   damaged or missing region. A candidate is accepted only when it keeps
//!   every valid record the live file has and reaches the durable floor.
//! - Otherwise recovery refuses to start, naming the file, the offset and
//!   the sequence numbers concerned.

use std::path::Path;

use super::super::backup;
use super::super::manifest::{DurablePrefix, Manifest};
use super::super::segment::{self, RecordProblem, Scan};

/// What an active segment's bytes say, judged against the durable floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record valid, and at least as long as the floor.
    Whole,
    /// An unterminated final line after the floor: cut it at `valid_len`.
    TornTail {
        /// Length of the valid prefix.
        valid_len: u64,
    },
    /// Every record valid, but the file is shorter than the floor.
    Truncated {
        /// The file's length.
        len: u64,
        /// The last sequence number in the file.
        last_seq: u64,
        /// What was known to be durable.
        floor: DurablePrefix,
    },
    /// A bad record that is not a torn tail.
    Damaged {
        /// Offset of the bad line.
        offset: u64,
        /// What is wrong with it.
        problem: String,
        /// The sequence number the bad line should hold.
        seq: u64,
        /// Valid records after it, and their sequence numbers.
        valid_after: usize,
        /// Sequence range of those records.
        seq_after: Option<(u64, u64)>,
    },
}

impl Verdict {
    /// True when recovery may go on with these bytes (cutting a torn tail).
    pub fn is_usable(&self) -> bool {
        matches!(self, Verdict::Whole | Verdict::TornTail { .. })
    }

    /// One line for logs, alerts and `msgbus verify`, without paths.
    pub fn describe(&self, file: &str) -> String {
        match self {
            Verdict::Whole => format!("{file} is whole"),
            Verdict::TornTail { valid_len } => {
                format!("{file} ends in an incomplete record at offset {valid_len}")
            }
            Verdict::Truncated {
                len,
                last_seq,
                floor,
            } => format!(
                "{file} is {len} bytes (last seq {last_seq}) but {} bytes up to seq {} were acknowledged: seq {}..={} are missing",
                floor.bytes,
                floor.last_seq,
                last_seq + 1,
                floor.last_seq
            ),
            Verdict::Damaged {
                offset,
                problem,
                seq,
                valid_after,
                seq_after,
            } => {
                let after = match seq_after {
                    Some((a, b)) => format!("; {valid_after} valid record(s) follow (seq {a}..={b})"),
                    None => String::new(),
                };
                format!("{file} is damaged at offset {offset} (the record for seq {seq}): {problem}{after}")
            }
        }
    }
}

/// Judges `bytes` (scanned as `scan`, from `first_seq`) against `floor`.
pub fn judge(bytes: &[u8], scan: &Scan, first_seq: u64, floor: DurablePrefix) -> Verdict {
    let last_seq = first_seq + scan.count - 1;
    match &scan.damage {
        None if (bytes.len() as u64) < floor.bytes => Verdict::Truncated {
            len: bytes.len() as u64,
            last_seq,
            floor,
        },
        None => Verdict::Whole,
        // An unterminated line is always the last one. Beyond the floor it
        // was never acknowledged; within it, acknowledged bytes are damaged
        // (its newline, for instance).
        Some(d) if d.problem == RecordProblem::Incomplete && d.offset >= floor.bytes => {
            Verdict::TornTail {
                valid_len: scan.valid_len,
            }
        }
        Some(d) => Verdict::Damaged {
            offset: d.offset,
            problem: d.problem.to_string(),
            seq: last_seq + 1,
            valid_after: d.valid_after,
            seq_after: d.seq_after,
        },
    }
}

/// The highest sequence number the live file shows to have been written:
/// its valid records, any valid records after damage, and the floor.
fn highest_seen(scan: &Scan, first_seq: u64, floor: DurablePrefix) -> u64 {
    let valid = first_seq + scan.count - 1;
    let after = scan
        .damage
        .as_ref()
        .and_then(|d| d.seq_after)
        .map_or(0, |(_, b)| b);
    valid.max(after).max(floor.last_seq)
}

/// A verified backup's copy spliced with the live file.
#[derive(Debug)]
pub struct Candidate {
    /// The repaired segment's bytes.
    pub bytes: Vec<u8>,
    /// Their scan (no records: see `frames`).
    pub scan: Scan,
    /// Each valid record's offset and framing ([`segment::scan_frames`]).
    pub frames: segment::Frames,
    /// Their verdict ([`Verdict::is_usable`]).
    pub verdict: Verdict,
    /// The backup it came from.
    pub backup: String,
}

/// What recovery (or `msgbus verify`) finds for the active segment.
#[derive(Debug)]
pub struct Plan {
    /// The live file's scan (no records: see `frames`).
    pub scan: Scan,
    /// Each valid record's offset and framing ([`segment::scan_frames`]):
    /// the records' attributes are parsed one at a time when they are
    /// indexed, not held for the whole segment at once.
    pub frames: segment::Frames,
    /// The live file's verdict.
    pub verdict: Verdict,
    /// A repair from a backup, when the live file lost or damaged
    /// acknowledged records (or holds a torn tail that a backup shows was
    /// acknowledged) and a backup of the same history holds them.
    pub repair: Option<Candidate>,
}

/// Judges the live active segment and looks for a repair in the backups.
/// Reads nothing but `backup.json` files unless a backup may hold more
/// than the live file.
pub fn plan(data_dir: &Path, file: &str, live: &[u8], first_seq: u64, manifest: &Manifest) -> Plan {
    let floor = manifest.durable_floor();
    let (scan, frames) = segment::scan_frames(live, first_seq);
    let verdict = judge(live, &scan, first_seq, floor);
    // Which backup copies could hold acknowledged bytes the live file lacks.
    let min_len = match &verdict {
        Verdict::Whole => live.len() as u64,
        Verdict::TornTail { valid_len } => *valid_len,
        Verdict::Truncated { len, .. } => *len,
        Verdict::Damaged { offset, .. } => *offset,
    };
    let need = highest_seen(&scan, first_seq, floor);
    let repair = backup::active_copies(data_dir, file, Some(min_len), |l| manifest.same_lineage(l))
        .find_map(|(copy, backup)| {
            let bytes = splice(live, scan.valid_len, copy)?;
            let (cscan, cframes) = segment::scan_frames(&bytes, first_seq);
            let cverdict = judge(&bytes, &cscan, first_seq, floor);
            let last = first_seq + cscan.count - 1;
            if !cverdict.is_usable() || last < need {
                tracing::warn!(
                    backup,
                    file,
                    "a backup's copy of the active segment does not repair it"
                );
                return None;
            }
            Some(Candidate {
                bytes,
                scan: cscan,
                frames: cframes,
                verdict: cverdict,
                backup,
            })
        });
    Plan {
        scan,
        frames,
        verdict,
        repair,
    }
}

/// The backup copy, followed by what the live file holds beyond it. `None`
/// when the copy does not agree with the live file's valid prefix: then it
/// is not a copy of this file's history.
fn splice(live: &[u8], live_valid_len: u64, mut copy: Vec<u8>) -> Option<Vec<u8>> {
    let n = (live_valid_len as usize).min(copy.len()).min(live.len());
    if live[..n] != copy[..n] {
        return None;
    }
    if live.len() > copy.len() {
        copy.extend_from_slice(&live[copy.len()..]);
    }
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for i in 1..=n {
            let ev = format!(r#"{{"id":"e{i}","source":"/t","type":"t"}}"#);
            segment::encode_record(&mut buf, i, ev.as_bytes());
            ends.push(buf.len());
        }
        (buf, ends)
    }

    fn floor(bytes: usize, last_seq: u64) -> DurablePrefix {
        DurablePrefix {
            bytes: bytes as u64,
            last_seq,
        }
    }

    fn verdict(bytes: &[u8], f: DurablePrefix) -> Verdict {
        judge(bytes, &segment::scan(bytes, 1), 1, f)
    }

    #[test]
    fn a_bad_crc_in_the_last_complete_record_is_damage_not_a_torn_tail() {
        let (mut buf, ends) = segment(3);
        let last = ends[1];
        buf[last + 30] ^= 0x01;
        match verdict(&buf, floor(0, 0)) {
            Verdict::Damaged {
                offset,
                seq,
                valid_after,
                ..
            } => {
                assert_eq!((offset, seq, valid_after), (last as u64, 3, 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_an_unterminated_line_past_the_floor_is_torn() {
        let (buf, ends) = segment(3);
        let cut = &buf[..buf.len() - 1];
        assert_eq!(
            verdict(cut, floor(ends[1], 2)),
            Verdict::TornTail {
                valid_len: ends[1] as u64
            }
        );
        // The same bytes when the third record was acknowledged: damage.
        assert!(matches!(
            verdict(cut, floor(ends[2], 3)),
            Verdict::Damaged { seq: 3, .. }
        ));
    }

    #[test]
    fn a_file_shorter_than_the_floor_is_truncated() {
        let (buf, ends) = segment(10);
        let short = &buf[..ends[7]];
        assert_eq!(
            verdict(short, floor(buf.len(), 10)),
            Verdict::Truncated {
                len: ends[7] as u64,
                last_seq: 8,
                floor: floor(buf.len(), 10)
            }
        );
        assert_eq!(verdict(&buf, floor(buf.len(), 10)), Verdict::Whole);
    }

    #[test]
    fn splice_takes_the_copy_and_the_live_rest_but_only_of_the_same_history() {
        let (buf, ends) = segment(5);
        let mut damaged = buf.clone();
        damaged[ends[1] + 30] ^= 0x01;
        let copy = buf[..ends[3]].to_vec();
        assert_eq!(splice(&damaged, ends[1] as u64, copy).unwrap(), buf);
        let mut other = buf[..ends[3]].to_vec();
        other[10] ^= 0x01;
        assert!(splice(&damaged, ends[1] as u64, other).is_none());
    }
}
