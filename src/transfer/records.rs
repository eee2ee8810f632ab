//! Reading an import file into records, each kept as its JSON text with
//! where it was found (a line number or an index), so a rejection can
//! name it. Formats, told apart by content: NDJSON (one JSON object per
//! line; blank lines skipped), a JSON array (a CloudEvents batch, or an
//! array of predecessor records), a single JSON object, and the
//! predecessor's message-bus file, an object whose `events` array holds
//! the records (its other members, such as `agents`, are ignored). A file
//! starting with the gzip magic is decompressed first (`export --gzip`).

use std::io::Read;

use serde_json::value::RawValue;

use super::mapping::Rejection;

/// Where a record sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// 1-based line of an NDJSON file.
    Line(usize),
    /// 0-based index in a JSON array or in the `events` array.
    Index(usize),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::Index(i) => write!(f, "index {i}"),
        }
    }
}

/// What kind of file it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per line.
    Ndjson,
    /// A JSON array of events.
    Array,
    /// The predecessor's `{"events": [...]}` file.
    Predecessor,
}

/// One record: its place, and its JSON text or why that line is no JSON.
#[derive(Debug)]
pub struct Record {
    /// Where it is.
    pub at: At,
    /// The record's JSON text, or the parse error.
    pub text: Result<Box<RawValue>, Rejection>,
}

/// A file read whole.
#[derive(Debug)]
pub struct Records {
    /// The format found.
    pub format: Format,
    /// Every record, in file order.
    pub records: Vec<Record>,
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("cannot read {name}: {source}")]
    Io {
        /// The file.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is no file this reads.
    #[error("{name}: {why}")]
    Format {
        /// The file.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// Reads `name` (`-` is standard input).
pub fn read_file(name: &str) -> Result<Records, ReadError> {
    let io = |source| ReadError::Io {
        name: name.to_string(),
        source,
    };
    let mut bytes = Vec::new();
    if name == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(io)?;
    } else {
        bytes = std::fs::read(name).map_err(io)?;
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        bytes = out;
    }
    parse(&bytes).map_err(|why| ReadError::Format {
        name: name.to_string(),
        why: why.0,
    })
}

/// Splits file content into records (see the module documentation).
pub fn parse(bytes: &[u8]) -> Result<Records, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection(format!("not UTF-8 text: {e}")))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.starts_with('[') {
        let items: Vec<Box<RawValue>> = serde_json::from_str(trimmed)
            .map_err(|e| Rejection(format!("not a JSON array of events: {e}")))?;
        return Ok(Records {
            format: Format::Array,
            records: indexed(items),
        });
    }
    if trimmed.starts_with('{') {
        // One document (the predecessor's file, or a single event), or
        // NDJSON when more than one value follows.
        #[derive(serde::Deserialize)]
        struct Bus {
            events: Vec<Box<RawValue>>,
        }
        if let Ok(whole) = serde_json::from_str::<Box<RawValue>>(trimmed) {
            if let Ok(bus) = serde_json::from_str::<Bus>(whole.get()) {
                return Ok(Records {
                    format: Format::Predecessor,
                    records: indexed(bus.events),
                });
            }
        }
    } else if !trimmed.is_empty() {
        return Err(Rejection(
            "neither NDJSON, a JSON array nor a message-bus file (`{\"events\": [...]}`)".into(),
        ));
    }
    let records = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Record {
            at: At::Line(i + 1),
            text: serde_json::from_str::<Box<RawValue>>(l.trim())
                .map_err(|e| Rejection(format!("not JSON: {e}"))),
        })
        .collect();
    Ok(Records {
        format: Format::Ndjson,
        records,
    })
}

fn indexed(items: Vec<Box<RawValue>>) -> Vec<Record> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| Record {
            at: At::Index(i),
            text: Ok(v),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_formats_apart() {
        let nd = parse(b"{\"a\":1}\n\n{\"b\":2}\nnope\n").unwrap();
        assert_eq!(nd.format, Format::Ndjson);
        assert_eq!(nd.records.len(), 3);
        assert_eq!(nd.records[1].at, At::Line(3));
        assert!(nd.records[2].text.is_err());
        let arr = parse(b" [{\"a\":1},{\"b\":2}]").unwrap();
        assert_eq!(arr.format, Format::Array);
        assert_eq!(arr.records[1].at, At::Index(1));
        let bus = parse(b"{\"version\":\"1.0\",\"events\":[{\"a\":1}]}").unwrap();
        assert_eq!(bus.format, Format::Predecessor);
        let one = parse(b"{\"type\":\"t\",\"source\":\"s\"}").unwrap();
        assert_eq!(one.format, Format::Ndjson);
        assert!(parse(b"42").is_err());
    }
}
