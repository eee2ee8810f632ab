//! A Server-Sent Events reader for `GET /events/stream`, parsing the wire
//! format itself so the tests see exactly what a browser would.

use std::time::Duration;

use serde_json::Value;

use super::http::{Api, Reply};

/// A stream's request timeout: far longer than any test, so that only the
/// test's own per-message timeouts decide when a quiet stream is a failure.
const STREAM_TIMEOUT: Duration = Duration::from_secs(3600);

/// One Server-Sent Events message (comments are counted, not returned).
#[derive(Debug, Clone, Default)]
pub struct SseMessage {
    /// `id:`.
    pub id: Option<u64>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` (lines joined).
    pub data: String,
    /// `retry:`.
    pub retry: Option<u64>,
}

impl SseMessage {
    /// `data` parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("data is JSON")
    }
}

/// Reads a `text/event-stream` response message by message.
pub struct SseReader {
    res: reqwest::Response,
    buf: Vec<u8>,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
    /// True once the server ended the stream.
    pub ended: bool,
}

impl SseReader {
    /// Opens stream `path` with an optional `Last-Event-ID`: the reader if
    /// it answered 200 as `text/event-stream`, the whole reply otherwise
    /// (an error status; a 200 stream must not be read whole, it never ends).
    pub async fn connect(
        api: &Api,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<SseReader, Reply> {
        let mut req = api.client.get(api.url(path)).timeout(STREAM_TIMEOUT);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("open the stream {path}: {e}"));
        if res.status() != 200 {
            return Err(Reply::read(res, &format!("GET {path}")).await);
        }
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream",
            "GET {path}"
        );
        Ok(SseReader {
            res,
            buf: Vec::new(),
            comments: 0,
            ended: false,
        })
    }

    /// Opens stream `path`, which must answer 200 as `text/event-stream`.
    pub async fn open(api: &Api, path: &str, last_event_id: Option<u64>) -> SseReader {
        match SseReader::connect(api, path, last_event_id).await {
            Ok(reader) => reader,
            Err(r) => panic!("stream {path} answered {}: {}", r.status, r.text()),
        }
    }

    /// The next message, or `None` when the stream ended or nothing came
    /// within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 stream");
                let mut msg = SseMessage::default();
                let mut any = false;
                for line in text.lines().filter(|l| !l.is_empty()) {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    any = true;
                    match field {
                        "id" => msg.id = Some(value.parse().expect("numeric id")),
                        "event" => msg.event = Some(value.to_string()),
                        "retry" => msg.retry = Some(value.parse().expect("numeric retry")),
                        "data" => {
                            if !msg.data.is_empty() {
                                msg.data.push('\n');
                            }
                            msg.data.push_str(value);
                        }
                        other => panic!("unexpected SSE field {other:?}"),
                    }
                }
                if any {
                    return Some(msg);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next message that carries an event (skipping `retry:`), or None.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseMessage> {
        loop {
            let m = self.next(timeout).await?;
            if m.id.is_some() || m.event.is_some() {
                return Some(m);
            }
        }
    }

    /// Collects event seqs until `n` are read; panics if the stream stalls
    /// for 20 s.
    pub async fn take_seqs(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self
                .next_event(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("stream stalled after {} events", out.len()));
            assert_eq!(m.event, None, "unexpected event: {m:?}");
            let id = m.id.unwrap();
            assert_eq!(m.json()["seq"].as_u64(), Some(id), "id: is the seq");
            out.push(id);
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
