//! `msgbus pub`: publish one event built from flags (`POST /events`) and
//! print the server's answer, or NDJSON lines in batches (`--batch`,
//! `POST /events/batch`, up to 1,000 a batch), printing one result line per
//! event.

use std::io::{Read, Write};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Connection, HttpClient, EXIT_CANNOT_RUN, EXIT_REFUSED};
use crate::transfer::{Transport, TransportError};

/// Arguments of `msgbus pub`.
#[derive(Debug, Clone, clap::Args)]
pub struct PubArgs {
    /// The server.
    #[command(flatten)]
    pub conn: Connection,
    /// The event's `type`.
    #[arg(
        long = "type",
        required_unless_present = "batch",
        conflicts_with = "batch"
    )]
    pub ty: Option<String>,
    /// The event's `source`.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    pub source: Option<String>,
    /// The event's `subject`.
    #[arg(long, conflicts_with = "batch")]
    pub subject: Option<String>,
    /// The event's `id` (default: the server makes a UUIDv7). Publishing
    /// the same source and id again stores nothing and answers the
    /// original seq.
    #[arg(long, conflicts_with = "batch")]
    pub id: Option<String>,
    /// The event's `data`, as JSON (`'{"total":42}'`, `'"text"'`).
    #[arg(long, conflicts_with_all = ["data_file", "stdin", "batch"])]
    pub data: Option<String>,
    /// Read `data` (JSON) from this file.
    #[arg(long, conflicts_with_all = ["stdin", "batch"])]
    pub data_file: Option<std::path::PathBuf>,
    /// `-`: read `data` (JSON) from standard input.
    #[arg(value_name = "-", conflicts_with = "batch")]
    pub stdin: Option<String>,
    /// Publish the NDJSON events (one CloudEvent per line) of this file
    /// (`-`: standard input) in batches of up to 1,000.
    #[arg(long, value_name = "FILE|-")]
    pub batch: Option<String>,
}

/// Runs `msgbus pub`; returns the exit status.
pub async fn run(args: PubArgs, out: &mut dyn Write) -> u8 {
    let client = match HttpClient::new(&args.conn) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CANNOT_RUN, &e),
    };
    match args.batch.clone() {
        Some(file) => batch(&client, &file, out).await,
        None => one(&client, args, out).await,
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> u8 {
    eprintln!("msgbus pub: {e}");
    code
}

async fn one(client: &HttpClient, args: PubArgs, out: &mut dyn Write) -> u8 {
    let data_text = match (&args.data, &args.data_file, args.stdin.as_deref()) {
        (Some(d), _, _) => Some(("--data".to_string(), d.clone())),
        (_, Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => Some((f.display().to_string(), t)),
            Err(e) => {
                return fail(
                    EXIT_CANNOT_RUN,
                    &format!("cannot read {}: {e}", f.display()),
                )
            }
        },
        (_, _, Some("-")) => {
            let mut t = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut t) {
                return fail(EXIT_CANNOT_RUN, &format!("cannot read standard input: {e}"));
            }
            Some(("standard input".to_string(), t))
        }
        (_, _, Some(other)) => {
            return fail(
                EXIT_CANNOT_RUN,
                &format!("unexpected argument {other:?} (only `-`, for data on standard input)"),
            )
        }
        _ => None,
    };
    let mut ev = Map::new();
    let put = |ev: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            ev.insert(k.to_string(), Value::String(v.clone()));
        }
    };
    put(&mut ev, "type", &args.ty);
    put(&mut ev, "source", &args.source);
    put(&mut ev, "subject", &args.subject);
    put(&mut ev, "id", &args.id);
    if let Some((from, text)) = data_text {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                ev.insert("data".into(), v);
            }
            Err(e) => {
                return fail(
                    EXIT_CANNOT_RUN,
                    &format!(
                        "the data of {from} is not JSON ({e}); a string is quoted: '\"text\"'"
                    ),
                )
            }
        }
    }
    let body = Value::Object(ev).to_string().into_bytes();
    match client.send("POST", "/events", Some(body)).await {
        Ok(r) if r.ok() => {
            let _ = out.write_all(&r.body);
            let _ = out.write_all(b"\n");
            0
        }
        Ok(r) => fail(EXIT_REFUSED, &r.describe()),
        Err(e) => fail(EXIT_CANNOT_RUN, &e),
    }
}

async fn batch(client: &HttpClient, file: &str, out: &mut dyn Write) -> u8 {
    let text = if file == "-" {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t).map(|_| t)
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => return fail(EXIT_CANNOT_RUN, &format!("cannot read {file}: {e}")),
    };
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Box<RawValue>>(l.trim()) {
            Ok(v) => lines.push((i + 1, v)),
            Err(e) => {
                return fail(
                    EXIT_CANNOT_RUN,
                    &format!("{file}: line {}: not JSON: {e}", i + 1),
                )
            }
        }
    }
    for chunk in lines.chunks(crate::transfer::import::MAX_BATCH) {
        let mut body = b"[".to_vec();
        for (i, (_, v)) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(v.get().as_bytes());
        }
        body.push(b']');
        let first = chunk[0].0;
        let last = chunk[chunk.len() - 1].0;
        match client.send("POST", "/events/batch", Some(body)).await {
            Ok(r) if r.ok() => {
                if let Err(e) = print_results(&r.body, out) {
                    return fail(EXIT_CANNOT_RUN, &e);
                }
            }
            Ok(r) => {
                return fail(
                    EXIT_REFUSED,
                    &format!(
                        "lines {first}..={last} of {file} were refused, nothing of them stored \
                         (items count from 0 within the batch): {}",
                        r.describe()
                    ),
                )
            }
            Err(e) => return fail(EXIT_CANNOT_RUN, &e),
        }
    }
    0
}

fn print_results(body: &[u8], out: &mut dyn Write) -> Result<(), TransportError> {
    #[derive(serde::Deserialize)]
    struct Batch {
        results: Vec<Box<RawValue>>,
    }
    let b: Batch = serde_json::from_slice(body)
        .map_err(|e| TransportError(format!("an answer that is no batch result: {e}")))?;
    for r in b.results {
        writeln!(out, "{}", r.get()).map_err(|e| TransportError(e.to_string()))?;
    }
    Ok(())
}
