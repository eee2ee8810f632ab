//! Harness shared by the stream, consumer and retention tests: an
//! in-process server on port 0 that can be stopped and restarted on the
//! same data directory, a real child process for crash tests, and a small
//! Server-Sent Events reader.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use msgbus::app::Application;
use msgbus::cli::Cli;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fresh temporary data directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("msgbus-scr-")
        .tempdir()
        .expect("create a temp dir")
}

/// An HTTP client (no proxy, safety timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build a client")
}

/// A server running in this process.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for it.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on `dir` with extra command-line flags.
    pub async fn start(dir: &Path, flags: &[&str]) -> Server {
        if std::env::var_os("TEST_LOG").is_some() {
            msgbus::telemetry::init(msgbus::cli::LogFormat::Pretty);
        }
        let mut args = vec![
            "msgbus",
            "--data-dir",
            dir.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(flags);
        let config = Cli::try_parse_from(args).expect("valid flags").serve;
        let app = Application::build(config).await.expect("server starts");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.run_until(async move {
                let _ = rx.await;
            })
            .await
            .expect("server runs and stops cleanly");
        });
        Server {
            base: format!("http://{addr}"),
            client: client(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server the way SIGTERM does and waits until the writer
    /// has finished and released the data directory.
    pub async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }

    /// Absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` as JSON, with its status.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.client, &self.url(path)).await
    }

    /// Publishes `events` as one batch and returns their seqs.
    pub async fn publish(&self, events: &[Value]) -> Vec<u64> {
        publish(&self.client, &self.base, events).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

/// GET `url` as JSON, with its status.
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let res = client.get(url).send().await.expect("request");
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Publishes `events` as one batch to the server at `base`; returns seqs.
pub async fn publish(client: &reqwest::Client, base: &str, events: &[Value]) -> Vec<u64> {
    let res = client
        .post(format!("{base}/events/batch"))
        .json(&events)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status().as_u16(), 201, "batch publish");
    let body: Value = res.json().await.unwrap();
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// A test event number `n` of `ty` from `source`, with `pad` bytes of data.
pub fn event(n: u64, ty: &str, source: &str, pad: usize) -> Value {
    json!({
        "id": format!("e-{n}"),
        "type": ty,
        "source": source,
        "subject": format!("s{}", n % 3),
        "data": {"n": n, "pad": "x".repeat(pad)},
    })
}

/// `count` events numbered from `first`, all of type `t.x`.
pub fn events(first: u64, count: u64, pad: usize) -> Vec<Value> {
    (first..first + count)
        .map(|n| event(n, "t.x", "/test", pad))
        .collect()
}

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
    /// Opens `url` with an optional `Last-Event-ID`; panics unless 200.
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<u64>) -> Self {
        let res = Self::request(client, url, last_event_id).await;
        assert_eq!(res.status().as_u16(), 200, "stream opens");
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            res,
            buf: Vec::new(),
            comments: 0,
            ended: false,
        }
    }

    /// The raw response of opening a stream (for error statuses).
    pub async fn request(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<u64>,
    ) -> reqwest::Response {
        let mut req = client.get(url).timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        req.send().await.expect("open the stream")
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

    /// Collects event seqs until `n` are read; panics on a timeout.
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

/// A real `msgbus` process (for SIGKILL tests).
pub struct Process {
    child: tokio::process::Child,
    /// `http://ADDR`.
    pub base: String,
}

impl Process {
    /// Starts the binary on `dir` and waits for its "msgbus listening" line.
    pub async fn start(dir: &Path) -> Process {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_msgbus"))
            .args([
                "--log-format",
                "json",
                "--addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn msgbus");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "msgbus listening" {
                    return v["addr"].as_str().unwrap().parse().unwrap();
                }
            }
            panic!("msgbus exited before listening");
        })
        .await
        .expect("msgbus starts listening");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill9(mut self) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// The files under `dir/segments`.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
