//! The published contract is what the server enforces: schemathesis, with
//! every check, against a real `msgbus` process on port 0 in a temporary
//! directory, generating requests from the `/openapi.json` it serves.
//!
//! Schemathesis comes from PyPI, pinned to [`SCHEMATHESIS`], installed once
//! into a virtualenv under `target/` and reused by later runs. Without a
//! Python 3.10 or newer (with `venv` and `pip`) the test fails and says so:
//! it never passes without having run.
//!
//! The run is bounded: [`MAX_EXAMPLES`] generated cases per operation, one
//! worker, the server's long-polls capped by `--max-wait 1s`, the live
//! stream read for at most 2 events or 3 s (`scripts/fuzz-api.toml`, the
//! configuration `scripts/fuzz-api` uses too), and a hard time limit.
//! Any finding fails the test and prints schemathesis's report; so does a
//! panic or an ERROR in the server's log, or a server that stopped.
//!
//! `SCHEMATHESIS_EXAMPLES=N` changes the number of cases per operation for
//! a longer run by hand.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::files::DataDir;
use common::process::{create_token, spawn_process};
use serde_json::json;

/// The schemathesis release this test runs (`pip install schemathesis==`).
const SCHEMATHESIS: &str = "4.32.5";
/// Generated cases per operation.
const MAX_EXAMPLES: u32 = 25;
/// Hard limit on the schemathesis run.
const RUN_LIMIT: Duration = Duration::from_secs(420);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python new enough for schemathesis: a 3.12+ first (see
/// `scripts/README.md` on CPython 3.11's hypothesis bug with several
/// workers; this test uses one), then `python3`.
fn find_python() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = vec!["python3.13".into(), "python3.12".into()];
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("bin/python3"))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            found.reverse();
            candidates.extend(found);
        }
    }
    candidates.push("python3".into());
    let mut tried = Vec::new();
    for c in candidates {
        let ok = Command::new(&c)
            .args([
                "-c",
                "import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(format!(
        "no Python >= 3.10 with the venv module found (tried {}); schemathesis needs one: \
         install python3 and python3-venv (Debian) and run the test again",
        tried.join(", ")
    ))
}

/// `target/schemathesis-<version>/bin/st`, installing it when missing.
fn schemathesis() -> Result<PathBuf, String> {
    let venv = root().join(format!("target/schemathesis-{SCHEMATHESIS}"));
    let st = venv.join("bin/st");
    let installed = |st: &Path| {
        Command::new(st).arg("--version").output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS)
        })
    };
    if installed(&st) {
        return Ok(st);
    }
    let python = find_python()?;
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
        &format!("{} -m venv {}", python.display(), venv.display()),
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS}")),
        &format!("pip install schemathesis=={SCHEMATHESIS} (from PyPI)"),
    )?;
    if installed(&st) {
        Ok(st)
    } else {
        Err(format!(
            "{} does not report version {SCHEMATHESIS}",
            st.display()
        ))
    }
}

/// Events and consumers the generated requests can reach (the values
/// `scripts/fuzz-api.toml` steers part of them to).
async fn seed(api: &common::http::Api) {
    for i in 1..=50 {
        let ev = json!({"type": format!("seed.t{}", i % 5), "source": "/seed",
                        "subject": format!("s{i}"), "data": {"i": i}});
        assert_eq!(api.publish(&ev).await.status, 201, "seeding event {i}");
    }
    for (name, start) in [("fuzz-a", "earliest"), ("fuzz-b", "latest")] {
        let r = api
            .put(&format!("/consumers/{name}"), &json!({"start": start}))
            .await;
        assert_eq!(r.status, 201, "creating consumer {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let st = match tokio::task::spawn_blocking(schemathesis).await.unwrap() {
        Ok(st) => st,
        Err(why) => panic!("cannot run schemathesis: {why}"),
    };
    // With access control on, as a shared bus runs: every request sends an
    // admin token, and schemathesis checks that the operations the document
    // marks as needing one refuse a request without it. Failed
    // authentications are not limited here: that check sends many.
    let dir = DataDir::temp();
    // A name the fuzzer cannot generate: `DELETE /admin/tokens/{name}` is
    // fuzzed too, and a run once revoked its own token "fuzz" (from its
    // dictionary's "fuzz-a"), after which every request was refused 401.
    let name = format!(
        "schemathesis-admin-{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    );
    let token = create_token(dir.path(), &name, "admin", &[]).await;
    let server = spawn_process(
        dir.path(),
        &[
            "--max-wait",
            "1s",
            "--request-timeout",
            "5s",
            "--sse-heartbeat",
            "1s",
            "--auth",
            "required",
            "--auth-failure-rate",
            "1000000/m",
        ],
    )
    .await;
    seed(&server.api.with_token(&token)).await;

    let examples = std::env::var("SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(MAX_EXAMPLES);
    let report_dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("--config-file")
        .arg(root().join("scripts/fuzz-api.toml"))
        .arg("run")
        .arg(server.api.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", &examples.to_string()])
        .args([
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .current_dir(report_dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(RUN_LIMIT, cmd.output()).await {
        Ok(out) => out.expect("run schemathesis"),
        Err(_) => panic!("schemathesis did not finish within {RUN_LIMIT:?}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let alive = server.get("/health/live").await.status == 200;
    let log = server.stderr_text();
    server.stop().await;
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panicked"))
        .collect();

    assert!(
        out.status.success(),
        "schemathesis reported findings ({}):\n{report}",
        out.status
    );
    assert!(alive, "the server stopped answering during the run:\n{log}");
    assert!(
        errors.is_empty(),
        "the server logged errors during the run:\n{}",
        errors.join("\n")
    );
    eprintln!("{report}");
}
