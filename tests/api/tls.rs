//! HTTPS (`--tls-cert`/`--tls-key`) on a real process, with certificates
//! the test makes: requests over TLS, plain HTTP sent to the HTTPS port, a
//! silent client during the handshake, certificate reload on SIGHUP (with a
//! stream opened before it still running), a reload of a broken key, and a
//! start-up with a missing key file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::files::DataDir;
use crate::common::http::{Api, REQUEST_TIMEOUT};
use crate::common::process::{run_expecting_exit, spawn_process, TestProcess};
use crate::common::sse::SseReader;

/// The name the certificates are made for; clients resolve it to the
/// server's loopback address.
const HOST: &str = "msgbus.test";

/// A CA and a server certificate it signed, in PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

/// A fresh self-signed CA named `name` and a certificate for [`HOST`]
/// signed by it.
fn make_pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key).expect("self-signed CA");
    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec![HOST.to_string()]).expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{HOST} ({name})"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("signed leaf");
    Pki {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: key.serialize_pem(),
    }
}

/// Where the server's certificate and key files are.
struct CertFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(pki: &Pki) -> CertFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = CertFiles {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            _dir: dir,
        };
        files.install(&pki.cert, &pki.key);
        files
    }

    /// Replaces both files, each by a rename, as a certificate renewal does.
    fn install(&self, cert: &str, key: &str) {
        replace(&self.cert, cert);
        replace(&self.key, key);
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// A client of the server at `addr` over HTTPS that trusts only `ca`
/// (neither the system's nor the bundled roots). Each is its own
/// connection pool: a new client makes new connections, so new handshakes.
fn https(addr: SocketAddr, ca: &str) -> Api {
    let client = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM"))
        .resolve(HOST, addr)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTPS client");
    Api {
        addr,
        base: format!("https://{HOST}:{}", addr.port()),
        client,
    }
}

/// Whether a new connection trusting only `ca` gets an answer from
/// `/health/live` (a failed handshake is `false`).
async fn handshake_ok(addr: SocketAddr, ca: &str) -> bool {
    let api = https(addr, ca);
    match api.client.get(api.url("/health/live")).send().await {
        Ok(res) => res.status() == 200,
        Err(_) => false,
    }
}

async fn spawn_tls(dir: &DataDir, files: &CertFiles, extra: &[&str]) -> TestProcess {
    let mut args = files.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_process(dir.path(), &args).await
}

/// Log lines with this message so far.
fn logged(p: &TestProcess, message: &str) -> usize {
    p.log().iter().filter(|l| l["message"] == message).count()
}

/// Waits up to 10 s for the `n`th log line with `message`.
async fn wait_logged(p: &TestProcess, message: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(p, message) < n {
        assert!(
            Instant::now() < deadline,
            "no {n}th {message:?} in the log within 10 s:\n{}",
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn https_serves_the_api_and_plain_http_gets_a_problem() {
    let pki = make_pki("msgbus test CA");
    let files = CertFiles::new(&pki);
    let dir = DataDir::temp();
    let p = spawn_tls(&dir, &files, &[]).await;
    let listening = p
        .log()
        .into_iter()
        .find(|l| l["message"] == "msgbus listening")
        .expect("the listening line");
    assert_eq!(listening["scheme"], "https", "{listening}");

    let api = https(p.addr, &pki.ca);
    let published = api
        .publish_ok(&json!({"type": "t.tls", "source": "/tls", "data": {"n": 1}}))
        .await;
    assert_eq!(published["seq"], 1);
    let read = api.get_json("/events/1").await;
    assert_eq!(read["event"]["data"], json!({"n": 1}), "{read}");
    assert_eq!(api.read_all().await.len(), 1);

    // Plain HTTP to the HTTPS port: a problem naming the mistake, then
    // the connection is closed; the server goes on serving.
    for _ in 0..3 {
        let plain = p.get("/events").await;
        let problem = plain.assert_problem_type(400, "https-required", "plain HTTP");
        assert!(
            problem["detail"].as_str().unwrap().contains("https://"),
            "{problem}"
        );
    }
    // Bytes that are neither HTTP nor TLS, and a broken handshake.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let mut tcp = TcpStream::connect(p.addr).await.expect("connect");
        tcp.write_all(junk).await.expect("write junk");
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "the server closes a connection sending {junk:?}"
        );
    }
    api.publish_ok(&json!({"type": "t.tls", "source": "/tls"}))
        .await;
    assert!(handshake_ok(p.addr, &pki.ca).await);
    // A client that does not trust the server's CA is refused by itself.
    assert!(!handshake_ok(p.addr, &make_pki("another CA").ca).await);
    p.stop().await;
}

#[tokio::test]
async fn a_silent_client_neither_stalls_accepting_nor_keeps_its_connection() {
    let pki = make_pki("msgbus test CA");
    let files = CertFiles::new(&pki);
    let dir = DataDir::temp();
    // The handshake must be over within the header timeout of the accept.
    let p = spawn_tls(&dir, &files, &["--header-timeout", "8s"]).await;

    // A client that connects and sends nothing: no ClientHello.
    let mut silent = TcpStream::connect(p.addr).await.expect("connect");
    // Meanwhile other clients are served: the handshake waits in the
    // silent connection's own task, not in the accept loop.
    let api = https(p.addr, &pki.ca);
    api.publish_ok(&json!({"type": "t.tls", "source": "/silent"}))
        .await;
    let mut one = [0u8; 1];
    match silent.try_read(&mut one) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "the silent connection was closed before another client was served \
             (the accept loop waited for its handshake): {other:?}"
        ),
    }
    // Once the header timeout has passed, the server closes it.
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut one)).await;
    match closed {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the server sent {n} bytes to a client that said nothing"),
        Err(_) => panic!("a silent connection is still open 30 s after an 8 s header timeout"),
    }
    assert!(handshake_ok(p.addr, &pki.ca).await);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let first = make_pki("msgbus test CA 1");
    let second = make_pki("msgbus test CA 2");
    let files = CertFiles::new(&first);
    let dir = DataDir::temp();
    let p = spawn_tls(&dir, &files, &[]).await;
    let old = https(p.addr, &first.ca);

    // A stream opened over TLS before the reload.
    let mut stream = SseReader::open(&old, "/events/stream", None).await;
    old.publish_ok(&json!({"type": "t.reload", "source": "/before"}))
        .await;
    assert_eq!(stream.take_seqs(1).await, vec![1]);

    files.install(&second.cert, &second.key);
    p.sighup();
    wait_logged(&p, "reloaded TLS certificate", 1).await;

    // New connections get the second CA's certificate.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handshake_ok(p.addr, &second.ca).await {
        assert!(
            Instant::now() < deadline,
            "a client trusting only the new CA is still refused 5 s after the reload:\n{}",
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !handshake_ok(p.addr, &first.ca).await,
        "a new connection trusting only the old CA must fail: the old certificate is gone"
    );
    let new = https(p.addr, &second.ca);
    let published = new
        .publish_ok(&json!({"type": "t.reload", "source": "/after"}))
        .await;
    assert_eq!(published["seq"], 2);

    // The stream opened before the reload is still there and gets it.
    assert_eq!(stream.take_seqs(1).await, vec![2]);
    assert!(!stream.ended);
    assert_eq!(new.read_all().await.len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn a_reload_with_a_broken_key_keeps_the_old_certificate() {
    let first = make_pki("msgbus test CA 1");
    let second = make_pki("msgbus test CA 2");
    let files = CertFiles::new(&first);
    let dir = DataDir::temp();
    let p = spawn_tls(&dir, &files, &[]).await;
    const FAILED: &str = "TLS certificate reload failed; still serving the previous certificate";

    // A key file that is not a key.
    files.install(&second.cert, "-----BEGIN PRIVATE KEY-----\nbroken\n");
    p.sighup();
    wait_logged(&p, FAILED, 1).await;
    assert!(
        handshake_ok(p.addr, &first.ca).await,
        "the old certificate is still served"
    );
    assert!(!handshake_ok(p.addr, &second.ca).await);
    let failure = p
        .log()
        .into_iter()
        .find(|l| l["message"] == FAILED)
        .unwrap();
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.contains("--tls-key") && error.contains(&files.key.display().to_string()),
        "the log names the flag and the file: {failure}"
    );

    // A valid key that is not the certificate's.
    files.install(&second.cert, &first.key);
    p.sighup();
    wait_logged(&p, FAILED, 2).await;
    assert!(handshake_ok(p.addr, &first.ca).await);
    let api = https(p.addr, &first.ca);
    api.publish_ok(&json!({"type": "t.reload", "source": "/broken"}))
        .await;
    let alerts = api.get_json("/alerts").await.to_string();
    assert!(alerts.contains("tls_reload_failed"), "{alerts}");
    assert!(!alerts.contains("PRIVATE KEY"), "{alerts}");

    // Fixed: the next SIGHUP loads it.
    files.install(&second.cert, &second.key);
    p.sighup();
    wait_logged(&p, "reloaded TLS certificate", 1).await;
    assert!(handshake_ok(p.addr, &second.ca).await);
    assert_eq!(https(p.addr, &second.ca).read_all().await.len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn start_up_with_a_missing_or_broken_file_fails_naming_it() {
    let pki = make_pki("msgbus test CA");
    let files = CertFiles::new(&pki);
    let dir = DataDir::temp();
    let missing = files.key.with_file_name("missing.key");
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let missing_key = missing.display().to_string();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["--tls-cert", &cert, "--tls-key", &missing_key],
            "--tls-key",
            &missing_key,
        ),
        // The key where the certificate should be.
        (&["--tls-cert", &key, "--tls-key", &key], "--tls-cert", &key),
        // One without the other.
        (&["--tls-cert", &cert], "--tls-key", ""),
    ];
    for (args, flag, file) in cases {
        let out = run_expecting_exit(dir.path(), args, Duration::from_secs(15)).await;
        assert!(!out.status.success(), "{args:?} must fail:\n{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(file),
            "{args:?}: stderr names {flag} {file}:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(!out.stderr.contains("msgbus listening"), "{}", out.stderr);
    }
}
