//! What the alert tests share: a real SMTP server, a webhook receiver that
//! keeps raw bodies and their content types, a CA for STARTTLS, and the
//! `msgbus` binary with chosen environment variables.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::common::files::DataDir;
use crate::common::monitor::monitored_args;
use crate::common::process::{msgbus_command, spawn_command, TestProcess};

/// The SMTP password the tests use (and look for in logs and mails).
pub const PASSWORD: &str = "pw-Never-Shown-4711";

/// A Python with aiosmtpd, or `None` (with a SKIPPED line) when there is
/// none and none can be installed. Installed once into a venv under
/// cargo's temp dir, kept between runs.
pub async fn python() -> Option<PathBuf> {
    static PY: OnceCell<Option<PathBuf>> = OnceCell::const_new();
    PY.get_or_init(|| async {
        let has = |py: PathBuf| async move {
            let ok = Command::new(&py)
                .args(["-c", "import aiosmtpd"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            ok.then_some(py)
        };
        if let Some(py) = has("python3".into()).await {
            return Some(py);
        }
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aiosmtpd-venv");
        let py = venv.join("bin/python");
        if let Some(py) = has(py.clone()).await {
            return Some(py);
        }
        eprintln!(
            "installing aiosmtpd into {} for the SMTP tests",
            venv.display()
        );
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .await
            .is_ok_and(|s| s.success());
        let installed = made
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "aiosmtpd"])
                .status()
                .await
                .is_ok_and(|s| s.success());
        match installed {
            true => has(py).await,
            false => None,
        }
    })
    .await
    .clone()
    .or_else(|| {
        eprintln!(
            "SKIPPED: no Python with aiosmtpd and it could not be installed \
             (python3 -m venv + pip install aiosmtpd); the SMTP tests need a real SMTP server"
        );
        None
    })
}

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, in
/// files.
pub struct Pki {
    pub _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "msgbus alert test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("smtp.crt"),
        key: dir.path().join("smtp.key"),
        _dir: dir,
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, leaf.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A running SMTP server and the mails it accepted.
pub struct Smtp {
    pub port: u16,
    mails: Arc<Mutex<Vec<Value>>>,
    _child: Child,
}

impl Smtp {
    /// Starts `smtp_server.py` with `args`.
    pub async fn start(python: &Path, args: &[&str]) -> Smtp {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alerting/smtp_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SMTP server starts within 20 s")
            .unwrap()
            .expect("the SMTP server prints its port");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a port line: {first}"));
        let mails = Arc::new(Mutex::new(Vec::new()));
        let sink = mails.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Smtp {
            port,
            mails,
            _child: child,
        }
    }

    pub fn mails(&self) -> Vec<Value> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits (at most `deadline`) for a mail whose subject and decoded
    /// text match `pred`.
    pub async fn expect(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self.mails().into_iter().find(|m| {
                pred(&format!(
                    "{}\n{}",
                    m["subject"],
                    m["text"].as_str().unwrap_or("")
                ))
            }) {
                return m;
            }
            assert!(
                t0.elapsed() < deadline,
                "no mail with {what} within {deadline:?}; mails: {:#?}",
                self.mails()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One POST a receiver got.
#[derive(Debug, Clone)]
pub struct Post {
    pub content_type: String,
    pub body: Value,
}

/// A tiny HTTP receiver on 127.0.0.1:0 keeping every POST, answering
/// `status`.
pub struct Receiver {
    pub url: String,
    posts: Arc<Mutex<Vec<Post>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(status: u16) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        let posts = Arc::new(Mutex::new(Vec::new()));
        let sink = posts.clone();
        let router = axum::Router::new().route(
            "/hook/{*rest}",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = serde_json::from_slice(&body)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                    sink.lock().unwrap().push(Post { content_type, body });
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook/T0KEN-in-path",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { url, posts, task }
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits (at most `deadline`) for a POST whose body matches `pred`.
    pub async fn expect(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Post {
        let t0 = Instant::now();
        loop {
            if let Some(p) = self.posts().into_iter().find(|p| pred(&p.body)) {
                return p;
            }
            assert!(
                t0.elapsed() < deadline,
                "the receiver got no {what} within {deadline:?}; it got: {:#?}",
                self.posts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A monitored `msgbus` process (see `monitored_args`) with `overrides`
/// and the environment variables `env`.
pub async fn spawn_with_env(
    dir: &DataDir,
    overrides: &[&str],
    env: &[(&str, &str)],
) -> TestProcess {
    let args = monitored_args(overrides);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = msgbus_command(dir.path(), &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_command(cmd).await
}

/// Deletes the manifest of a running server: the monitor detects it and
/// the writer rewrites it (a `detection`, then its `repair`) within a tick.
pub fn damage_manifest(dir: &Path) {
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
}

/// A counter of `/metrics`.
pub async fn metric(api: &crate::common::http::Api, series: &str) -> f64 {
    let text = api.get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// Waits (at most `deadline`) until the counter `series` is at least `min`.
pub async fn wait_metric(
    api: &crate::common::http::Api,
    series: &str,
    min: f64,
    deadline: Duration,
) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = metric(api, series).await;
        if v >= min {
            return v;
        }
        assert!(
            t0.elapsed() < deadline,
            "{series} stayed at {v} (< {min}) for {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
