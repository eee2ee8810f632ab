//! The work-queue group (`--only queues`, issue 19): fetch + ack
//! throughput of a msgbus queue consumer with 16 workers fetching batches
//! of 10 and acking each batch, beside Redis Streams (`XREADGROUP` +
//! `XACK`, `appendfsync always`, so each ack is on disk before its answer
//! as msgbus's is) in the same run.
//!
//! Both drain the same number of prefilled events; the figure is events
//! acknowledged per second from the first fetch to the last ack. Redis is
//! `redis-server` from `PATH`; when missing, the group tries
//! `apt-get install -y redis-server` once, and skips the Redis row with
//! the reason when that fails. The RESP client is the few lines below (one
//! connection per worker, no pipelining beyond one command at a time).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::{Conn, Result};
use crate::scenarios::BenchConfig;
use crate::servers::Launcher;

/// Workers fetching at once.
pub const WORKERS: usize = 16;
/// Events per fetch (and per ack).
pub const BATCH: usize = 10;

/// One side's figures.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRun {
    /// Events acknowledged.
    pub events: u64,
    /// From the first fetch to the last ack.
    pub seconds: f64,
    /// Events acknowledged per second.
    pub events_per_s: f64,
    /// Fetch requests (`XREADGROUP` for Redis).
    pub fetches: u64,
    /// Ack requests (`XACK`), each of up to [`BATCH`] events.
    pub acks: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// The first few distinct errors (status and body), to say what they
    /// were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

/// The group's result.
#[derive(Debug, Clone, Serialize)]
pub struct QueuesDoc {
    /// Events prefilled and drained by each side.
    pub events: u64,
    /// Workers.
    pub workers: usize,
    /// Events per fetch.
    pub batch: usize,
    /// msgbus: `POST /consumers/{name}/fetch` + `POST /consumers/{name}/ack`.
    pub msgbus: QueueRun,
    /// Redis Streams with `appendfsync always`, when it could run.
    pub redis: Option<QueueRun>,
    /// Why the Redis row is missing.
    pub redis_skipped: Option<String>,
    /// `redis-server --version`, when it ran.
    pub redis_version: Option<String>,
}

/// Events drained per side.
fn events_for(cfg: &BenchConfig) -> u64 {
    if cfg.mode == "full" {
        100_000
    } else {
        2_000
    }
}

/// Runs the group.
pub async fn run_queues(cfg: &BenchConfig, launcher: &Launcher) -> Result<QueuesDoc> {
    let events = events_for(cfg);
    eprintln!("[bench] queues: msgbus, {events} events, {WORKERS} workers, batches of {BATCH}");
    let msgbus = run_msgbus(cfg, launcher, events).await?;
    let (redis, redis_skipped, redis_version) = match redis_binary() {
        Ok(bin) => {
            eprintln!("[bench] queues: Redis Streams, appendfsync always");
            let version = std::process::Command::new(&bin)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            match run_redis(&bin, &cfg.work_dir, events).await {
                Ok(r) => (Some(r), None, version),
                Err(e) => (None, Some(format!("redis run failed: {e}")), version),
            }
        }
        Err(why) => {
            eprintln!("[bench] queues: skipping the Redis row: {why}");
            (None, Some(why), None)
        }
    };
    Ok(QueuesDoc {
        events,
        workers: WORKERS,
        batch: BATCH,
        msgbus,
        redis,
        redis_skipped,
        redis_version,
    })
}

async fn post(conn: &mut Conn, path: &str, body: String) -> Result<crate::client::Response> {
    conn.send(
        Method::POST,
        path,
        Some("application/json"),
        Bytes::from(body),
    )
    .await
}

async fn run_msgbus(cfg: &BenchConfig, launcher: &Launcher, events: u64) -> Result<QueueRun> {
    let dir = cfg.work_dir.join("queues-msgbus");
    std::fs::create_dir_all(&dir)?;
    let server = launcher.msgbus(&dir).await?;
    let first = prefill(server.addr, "bench", events).await?;
    let run = drain(&[server.addr], "bench", first, events, false).await;
    server.stop().await?;
    run
}

/// Publishes `events` jobs of type `bench.job` (subjects `s0` to `s96`,
/// ids tagged `tag`) through `addr`; answers the seq of the first.
pub async fn prefill(addr: SocketAddr, tag: &str, events: u64) -> Result<u64> {
    let mut conn = Conn::connect(addr).await?;
    let mut first = None;
    for from in (0..events).step_by(1000) {
        let n = (events - from).min(1000);
        let items: Vec<String> = (from..from + n)
            .map(|i| {
                format!(
                    r#"{{"type":"bench.job","source":"/bench/queue","id":"{tag}-job-{i}","subject":"s{}","data":{{"n":{i},"pad":"{}"}}}}"#,
                    i % 97,
                    "x".repeat(200)
                )
            })
            .collect();
        let r = post(&mut conn, "/events/batch", format!("[{}]", items.join(","))).await?;
        if r.status != StatusCode::CREATED {
            return Err(format!("prefill: {} {:?}", r.status, r.body).into());
        }
        if first.is_none() {
            let v: serde_json::Value = serde_json::from_slice(&r.body)?;
            first = v["results"][0]["seq"].as_u64();
        }
    }
    first.ok_or_else(|| "prefill: no seq in the answer".into())
}

/// Creates queue consumer `name` of the `bench.job` events from seq
/// `first` on (ordered by subject when `ordered`) through `addrs[0]`, and
/// drains `events` of them with [`WORKERS`] workers spread over `addrs`,
/// each fetching up to [`BATCH`] and acking them in one request.
pub async fn drain(
    addrs: &[SocketAddr],
    name: &str,
    first: u64,
    events: u64,
    ordered: bool,
) -> Result<QueueRun> {
    let mut conn = Conn::connect(addrs[0]).await?;
    let spec = serde_json::json!({
        "mode": "queue",
        "lease": 30,
        "type": "bench.job",
        "start": first,
        "ordering": if ordered { "subject" } else { "none" },
    });
    let r = conn
        .send(
            Method::PUT,
            &format!("/consumers/{name}"),
            Some("application/json"),
            Bytes::from(spec.to_string()),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(format!("create the queue: {} {:?}", r.status, r.body).into());
    }
    // Every instance must know the queue before its workers fetch.
    for addr in &addrs[1..] {
        let mut c = Conn::connect(*addr).await?;
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c
                .send(
                    Method::GET,
                    &format!("/consumers/{name}"),
                    None,
                    Bytes::new(),
                )
                .await?;
            if r.status == StatusCode::OK {
                break;
            }
            if Instant::now() > give_up {
                return Err(format!("{addr} never saw queue {name}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let acked = Arc::new(AtomicU64::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // When the last ack was answered: workers then still in a long-poll
    // fetch are not part of the figure.
    let done_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let samples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let fetch_path: Arc<str> = Arc::from(format!("/consumers/{name}/fetch"));
    let ack_path: Arc<str> = Arc::from(format!("/consumers/{name}/ack"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let acked = acked.clone();
        let counts = counts.clone();
        let done_at = done_at.clone();
        let samples = samples.clone();
        let addr = addrs[w % addrs.len()];
        let (fetch_path, ack_path) = (fetch_path.clone(), ack_path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            while acked.load(Ordering::Relaxed) < events {
                let r = post(
                    &mut conn,
                    &fetch_path,
                    format!(r#"{{"max":{BATCH},"wait":1}}"#),
                )
                .await?;
                counts[0].fetch_add(1, Ordering::Relaxed);
                if r.status != StatusCode::OK {
                    counts[2].fetch_add(1, Ordering::Relaxed);
                    sample(&samples, "fetch", &r);
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(&r.body)?;
                let seqs: Vec<u64> = v["events"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
                    .unwrap_or_default();
                if seqs.is_empty() {
                    continue;
                }
                let r = post(
                    &mut conn,
                    &ack_path,
                    serde_json::json!({ "seqs": seqs }).to_string(),
                )
                .await?;
                counts[1].fetch_add(1, Ordering::Relaxed);
                if r.status == StatusCode::OK {
                    let n = seqs.len() as u64;
                    if acked.fetch_add(n, Ordering::Relaxed) + n >= events {
                        let mut d = done_at.lock().unwrap_or_else(|e| e.into_inner());
                        d.get_or_insert_with(Instant::now);
                    }
                } else {
                    counts[2].fetch_add(1, Ordering::Relaxed);
                    sample(&samples, "ack", &r);
                }
            }
            Ok::<(), crate::client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let end = done_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    let seconds = end.duration_since(started).as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    let error_samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(QueueRun {
        events: n,
        seconds,
        events_per_s: n as f64 / seconds,
        fetches: counts[0].load(Ordering::Relaxed),
        acks: counts[1].load(Ordering::Relaxed),
        errors: counts[2].load(Ordering::Relaxed),
        error_samples,
    })
}

/// Keeps the first few distinct error answers of a drain.
fn sample(samples: &std::sync::Mutex<Vec<String>>, what: &str, r: &crate::client::Response) {
    let text = format!(
        "{what}: {} {}",
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
    if s.len() < 5 && !s.contains(&text) {
        s.push(text);
    }
}

/// `redis-server`, installing Debian's package once when it is missing.
fn redis_binary() -> std::result::Result<std::path::PathBuf, String> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("redis-server"))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("[bench] queues: redis-server is missing; trying apt-get install -y redis-server");
    let installed = std::process::Command::new("apt-get")
        .args(["install", "-y", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match (installed, find()) {
        (_, Some(p)) => Ok(p),
        (Ok(s), None) => Err(format!(
            "redis-server is not installed and `apt-get install -y redis-server` failed ({s})"
        )),
        (Err(e), None) => Err(format!(
            "redis-server is not installed and apt-get could not run ({e})"
        )),
    }
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP reply.
#[derive(Debug)]
enum Resp {
    Simple,
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

struct Redis {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Redis {
    async fn connect(addr: SocketAddr) -> Result<Redis> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Redis {
            r: BufReader::new(r),
            w,
        })
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Result<Resp> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.w.write_all(&out).await?;
        let reply = self.read().await?;
        if let Resp::Error(e) = &reply {
            return Err(format!("redis: {e}").into());
        }
        Ok(reply)
    }

    /// Sends `n` commands already encoded in `out`, then reads their replies.
    async fn pipeline(&mut self, out: &[u8], n: usize) -> Result<()> {
        self.w.write_all(out).await?;
        for _ in 0..n {
            if let Resp::Error(e) = self.read().await? {
                return Err(format!("redis: {e}").into());
            }
        }
        Ok(())
    }

    fn read(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp>> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            self.r.read_line(&mut line).await?;
            let line = line.trim_end();
            let (kind, rest) = line.split_at(1.min(line.len()));
            Ok(match kind {
                "+" => Resp::Simple,
                "-" => Resp::Error(rest.into()),
                ":" => Resp::Int(rest.parse()?),
                "$" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        Resp::Bulk(None)
                    } else {
                        let mut buf = vec![0; n as usize + 2];
                        self.r.read_exact(&mut buf).await?;
                        buf.truncate(n as usize);
                        Resp::Bulk(Some(buf))
                    }
                }
                "*" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        Resp::Array(None)
                    } else {
                        let mut items = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            items.push(self.read().await?);
                        }
                        Resp::Array(Some(items))
                    }
                }
                _ => return Err(format!("redis: unexpected reply {line:?}").into()),
            })
        })
    }
}

/// The entry ids of an `XREADGROUP` reply.
fn entry_ids(r: &Resp) -> Vec<Vec<u8>> {
    let Resp::Array(Some(streams)) = r else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for s in streams {
        if let Resp::Array(Some(parts)) = s {
            if let Some(Resp::Array(Some(entries))) = parts.get(1) {
                for e in entries {
                    if let Resp::Array(Some(kv)) = e {
                        if let Some(Resp::Bulk(Some(id))) = kv.first() {
                            ids.push(id.clone());
                        }
                    }
                }
            }
        }
    }
    ids
}

async fn run_redis(bin: &Path, work_dir: &Path, events: u64) -> Result<QueueRun> {
    let dir = work_dir.join("queues-redis");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = tokio::process::Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        let mut c = None;
        for _ in 0..100 {
            if let Ok(r) = Redis::connect(addr).await {
                c = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = c.ok_or("redis-server did not listen within 5 s")?;
        let pad = "x".repeat(200);
        // Prefilled 1,000 commands at a time (not measured).
        for first in (0..events).step_by(1000) {
            let mut out = Vec::new();
            let last = (first + 1000).min(events);
            for i in first..last {
                let n = i.to_string();
                encode(
                    &mut out,
                    &[
                        b"XADD",
                        b"jobs",
                        b"*",
                        b"n",
                        n.as_bytes(),
                        b"pad",
                        pad.as_bytes(),
                    ],
                );
            }
            c.pipeline(&out, (last - first) as usize).await?;
        }
        c.cmd(&[b"XGROUP", b"CREATE", b"jobs", b"workers", b"0"])
            .await?;
        let acked = Arc::new(AtomicU64::new(0));
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let acked = acked.clone();
            let counts = counts.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Redis::connect(addr).await?;
                let name = format!("w{w}");
                let count = BATCH.to_string();
                while acked.load(Ordering::Relaxed) < events {
                    let r = c
                        .cmd(&[
                            b"XREADGROUP",
                            b"GROUP",
                            b"workers",
                            name.as_bytes(),
                            b"COUNT",
                            count.as_bytes(),
                            b"BLOCK",
                            b"1000",
                            b"STREAMS",
                            b"jobs",
                            b">",
                        ])
                        .await?;
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    let ids = entry_ids(&r);
                    if ids.is_empty() {
                        continue;
                    }
                    let mut args: Vec<&[u8]> = vec![b"XACK", b"jobs", b"workers"];
                    args.extend(ids.iter().map(Vec::as_slice));
                    let r = c.cmd(&args).await?;
                    counts[1].fetch_add(1, Ordering::Relaxed);
                    if let Resp::Int(n) = r {
                        acked.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                Ok::<(), crate::client::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = c.cmd(&[b"PING"]).await.map(|r| matches!(r, Resp::Simple));
        let n = acked.load(Ordering::Relaxed);
        Ok::<QueueRun, crate::client::Error>(QueueRun {
            events: n,
            seconds,
            events_per_s: n as f64 / seconds,
            fetches: counts[0].load(Ordering::Relaxed),
            acks: counts[1].load(Ordering::Relaxed),
            errors: 0,
            error_samples: Vec::new(),
        })
    }
    .await;
    let _ = child.kill().await;
    result
}
