//! `msgbus sub`: follow the live stream (`GET /events/stream`) and print one
//! event per line, `{"seq":N,"event":{...}}` (NDJSON) or pretty-printed.
//! A dropped connection, a restarted server or a 503 is retried with
//! backoff (0.1 s doubling to 5 s), resuming with `Last-Event-ID` set to
//! the last seq printed: nothing is missed and nothing printed twice. With
//! `--consumer NAME` it reads the durable consumer instead (created with
//! the filters when missing): with `--ack` it follows it, acknowledging
//! each page after printing it; without, it prints the next page the
//! consumer would deliver and leaves its cursor where it was.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::{unreachable, Connection, HttpClient, EXIT_CANNOT_RUN, EXIT_REFUSED};
use crate::transfer::{Reply, Transport, TransportError};

/// Output format of `msgbus sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubFormat {
    /// One `{"seq":N,"event":{...}}` object per line.
    Ndjson,
    /// Each `{"seq":N,"event":{...}}` indented over several lines.
    Pretty,
}

/// Arguments of `msgbus sub`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubArgs {
    /// The server.
    #[command(flatten)]
    pub conn: Connection,
    /// Only events whose type starts with this.
    #[arg(long)]
    pub type_prefix: Option<String>,
    /// Only events from this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Start after this seq, or `latest` for only new events (default: from
    /// the oldest retained event).
    #[arg(long, value_name = "N|latest")]
    pub after: Option<String>,
    /// Read this durable consumer (created with the filters when missing).
    #[arg(long)]
    pub consumer: Option<String>,
    /// With `--consumer`: follow it, acknowledging each page once printed.
    #[arg(long, requires = "consumer")]
    pub ack: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SubFormat::Ndjson)]
    pub format: SubFormat,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
}

/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

struct Printer<'a> {
    out: &'a mut dyn Write,
    format: SubFormat,
    printed: u64,
    max: Option<u64>,
}

impl Printer<'_> {
    /// Prints one `{"seq","event"}` object; false once `--max-events` is reached.
    fn print(&mut self, data: &str) -> Result<bool, TransportError> {
        let w = |e: std::io::Error| TransportError(format!("cannot write the output: {e}"));
        match self.format {
            SubFormat::Ndjson => writeln!(self.out, "{}", data.trim()).map_err(w)?,
            SubFormat::Pretty => {
                let v: Value = serde_json::from_str(data).unwrap_or(Value::String(data.into()));
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                writeln!(self.out, "{text}").map_err(w)?
            }
        }
        self.out.flush().map_err(w)?;
        self.printed += 1;
        Ok(self.max.is_none_or(|m| self.printed < m))
    }

    fn done(&self) -> bool {
        self.max.is_some_and(|m| self.printed >= m)
    }
}

/// Runs `msgbus sub`; returns the exit status.
pub async fn run(args: SubArgs, out: &mut dyn Write) -> u8 {
    let client = match HttpClient::new(&args.conn) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CANNOT_RUN, &e),
    };
    let mut printer = Printer {
        out,
        format: args.format,
        printed: 0,
        max: args.max_events,
    };
    if printer.max == Some(0) {
        return 0;
    }
    let result = match &args.consumer {
        Some(name) => consumer(&client, &args, name, &mut printer).await,
        None => stream(&client, &args, &mut printer).await,
    };
    match result {
        Ok(()) => 0,
        Err(Stop::Refused(r)) => fail(EXIT_REFUSED, &r.describe()),
        Err(Stop::Gone(why)) => fail(EXIT_REFUSED, &why),
        Err(Stop::CannotRun(e)) => fail(EXIT_CANNOT_RUN, &e),
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> u8 {
    eprintln!("msgbus sub: {e}");
    code
}

enum Stop {
    /// A 4xx answer: retrying would get the same.
    Refused(Reply),
    /// The stream ended with `event: gone` or `event: error`.
    Gone(String),
    CannotRun(TransportError),
}

/// True for answers worth retrying (the server restarting or busy).
fn transient(status: u16) -> bool {
    matches!(status, 429 | 500..=599)
}

fn filters(args: &SubArgs) -> String {
    let mut q = Vec::new();
    if let Some(p) = &args.type_prefix {
        q.push(("type_prefix", p.as_str()));
    }
    if let Some(s) = &args.source {
        q.push(("source", s.as_str()));
    }
    serde_urlencoded::to_string(q).unwrap_or_default()
}

async fn stream(
    client: &HttpClient,
    args: &SubArgs,
    printer: &mut Printer<'_>,
) -> Result<(), Stop> {
    // `latest` is pinned to a seq at the start, so a reconnection before
    // the first event still misses nothing stored after the start.
    let mut cursor: u64 = match args.after.as_deref() {
        None => 0,
        Some("latest") => head(client).await?,
        Some(n) => n.parse().map_err(|_| {
            Stop::CannotRun(TransportError(format!(
                "--after {n:?}: expected a seq or `latest`"
            )))
        })?,
    };
    let filters = filters(args);
    let mut backoff = MIN_BACKOFF;
    loop {
        let path = format!("/events/stream?after={cursor}&{filters}");
        let req = client
            .request(reqwest::Method::GET, &path)
            .header("Last-Event-ID", cursor.to_string())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let why = match req.send().await {
            Err(e) => unreachable(client.base(), &e).to_string(),
            Ok(res) if res.status().is_success() => {
                match read_stream(res, &mut cursor, printer, &mut backoff).await? {
                    None => return Ok(()),
                    Some(why) => why,
                }
            }
            Ok(res) => {
                let status = res.status().as_u16();
                let body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                let reply = Reply { status, body };
                if !transient(status) {
                    return Err(Stop::Refused(reply));
                }
                reply.describe()
            }
        };
        eprintln!(
            "msgbus sub: {why}; reconnecting in {:.1} s after seq {cursor}",
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads one connection's stream, printing each event. `None` when
/// `--max-events` is reached; otherwise why the stream ended.
async fn read_stream(
    res: reqwest::Response,
    cursor: &mut u64,
    printer: &mut Printer<'_>,
    backoff: &mut Duration,
) -> Result<Option<String>, Stop> {
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some(end) = find_frame_end(&buf) {
            let frame: Vec<u8> = buf.drain(..end.0 + end.1).collect();
            let frame = String::from_utf8_lossy(&frame[..end.0]).into_owned();
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            match event.as_deref() {
                Some("gone") | Some("error") => {
                    let reply = Reply {
                        status: 0,
                        body: data.clone().into_bytes(),
                    };
                    let what = reply.describe();
                    let what = what.strip_prefix("0 ").unwrap_or(&what).to_string();
                    return Err(Stop::Gone(format!("the stream ended: {what}")));
                }
                _ if data.is_empty() => continue,
                _ => {}
            }
            let seq = id.or_else(|| {
                serde_json::from_str::<Value>(&data)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
            });
            if let Some(seq) = seq {
                if seq <= *cursor {
                    continue;
                }
                *cursor = seq;
            }
            *backoff = MIN_BACKOFF;
            if !printer.print(&data).map_err(Stop::CannotRun)? {
                return Ok(None);
            }
        }
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Ok(Some(format!("the connection broke: {e}"))),
            None => return Ok(Some("the server closed the stream".into())),
        }
    }
}

/// The end of the first complete frame: (where the blank line starts, its length).
fn find_frame_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The last seq stored now.
async fn head(client: &HttpClient) -> Result<u64, Stop> {
    let r = client
        .send("GET", "/events?after=0&limit=1", None)
        .await
        .map_err(Stop::CannotRun)?;
    if !r.ok() {
        return Err(Stop::Refused(r));
    }
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["last_seq"].as_u64())
        .ok_or_else(|| Stop::CannotRun(TransportError("an answer without last_seq".into())))
}

/// Sends with retries (backoff) while the server cannot be reached or
/// answers 429/5xx.
async fn send_retrying(
    client: &HttpClient,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, Stop> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let why = match client.send(method, path, body.clone()).await {
            Ok(r) if !transient(r.status) => return Ok(r),
            Ok(r) => r.describe(),
            Err(e) => e.to_string(),
        };
        eprintln!(
            "msgbus sub: {why}; retrying in {:.1} s",
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn consumer(
    client: &HttpClient,
    args: &SubArgs,
    name: &str,
    printer: &mut Printer<'_>,
) -> Result<(), Stop> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Stop::CannotRun(TransportError(format!(
            "--consumer {name:?}: a name is 1 to 128 of A-Z, a-z, 0-9, '-', '_', '.'"
        ))));
    }
    let at = format!("/consumers/{name}");
    let r = send_retrying(client, "GET", &at, None).await?;
    if r.status == 404 {
        let mut spec = serde_json::Map::new();
        if let Some(p) = &args.type_prefix {
            spec.insert("type_prefix".into(), p.clone().into());
        }
        if let Some(s) = &args.source {
            spec.insert("source".into(), s.clone().into());
        }
        match args.after.as_deref() {
            Some("latest") => {
                spec.insert("start".into(), "latest".into());
            }
            Some(n) => {
                let n: u64 = n.parse().map_err(|_| {
                    Stop::CannotRun(TransportError(format!(
                        "--after {n:?}: expected a seq or `latest`"
                    )))
                })?;
                spec.insert("start".into(), (n + 1).into());
            }
            None => {}
        }
        let body = Value::Object(spec).to_string().into_bytes();
        let r = send_retrying(client, "PUT", &at, Some(body)).await?;
        if !r.ok() {
            return Err(Stop::Refused(r));
        }
    } else if !r.ok() {
        return Err(Stop::Refused(r));
    }
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<Box<serde_json::value::RawValue>>,
    }
    let wait = if args.ack { 30 } else { 0 };
    loop {
        let path = format!("{at}/events?limit=100&wait={wait}");
        let r = send_retrying(client, "GET", &path, None).await?;
        if !r.ok() {
            return Err(Stop::Refused(r));
        }
        let page: Page = serde_json::from_slice(&r.body).map_err(|e| {
            Stop::CannotRun(TransportError(format!("an answer that is no page: {e}")))
        })?;
        let mut last = None;
        for e in &page.events {
            last = serde_json::from_str::<Value>(e.get())
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .or(last);
            let more = printer.print(e.get()).map_err(Stop::CannotRun)?;
            if !more {
                break;
            }
        }
        if !args.ack {
            return Ok(());
        }
        if let Some(seq) = last {
            let body = format!("{{\"seq\":{seq}}}").into_bytes();
            let r = send_retrying(client, "POST", &format!("{at}/ack"), Some(body)).await?;
            if !r.ok() {
                return Err(Stop::Refused(r));
            }
        }
        if printer.done() {
            return Ok(());
        }
    }
}
