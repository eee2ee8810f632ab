//! `msgbus pub` and `msgbus sub`: a round trip through a server that is
//! killed (SIGKILL) and restarted on the same port and data directory while
//! `sub` follows the stream; exit codes and the server's problem detail.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::files::DataDir;
use crate::common::process::{msgbus_command, spawn_command, spawn_process};
use crate::{cli, code, run};

/// The binary serving `dir` on a fixed port (a restart at the same address).
fn serve_on(dir: &std::path::Path, port: u16) -> tokio::process::Command {
    // msgbus_command passes `--addr 127.0.0.1:0`; a later `--addr` is
    // refused by clap, so the address comes from the variable instead,
    // which the flag would win over: build it without the flag.
    let mut cmd = msgbus_command(dir, &[]);
    let std = cmd.as_std_mut();
    let args: Vec<_> = std.get_args().map(|a| a.to_os_string()).collect();
    let mut fresh = tokio::process::Command::new(std.get_program());
    for (k, v) in std.get_envs() {
        match v {
            Some(v) => fresh.env(k, v),
            None => fresh.env_remove(k),
        };
    }
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--addr" {
            skip = true;
            continue;
        }
        fresh.arg(a);
    }
    fresh
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    fresh
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

async fn next(lines: &mut Lines) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("sub prints the next event within 20 s")
        .unwrap()
        .expect("a line")
}

#[tokio::test]
async fn sub_resumes_after_the_server_is_killed_nothing_missed_nothing_twice() {
    let dir = DataDir::temp();
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    let port = server.addr.port();
    for i in 1..=3 {
        let out = run(
            &[
                "pub",
                "--type",
                "t.pub",
                "--source",
                "/cli",
                "--data",
                &format!("{{\"n\":{i}}}"),
            ],
            &[("MSGBUS_URL", &url)],
        )
        .await;
        assert_eq!(code(&out), 0, "{}", out.stderr);
        let answer: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(answer["seq"], i);
    }
    let mut sub = cli(&["sub", "--url", &url, "--max-events", "6"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(serde_json::from_str::<Value>(&next(&mut lines).await).unwrap());
    }
    // The crash: the stream breaks with no goodbye.
    server.kill().await;
    let server = spawn_command(serve_on(dir.path(), port)).await;
    for i in 4..=6 {
        server
            .publish_ok(&json!({"type": "t.pub", "source": "/cli", "data": {"n": i}}))
            .await;
    }
    for _ in 0..3 {
        seen.push(serde_json::from_str::<Value>(&next(&mut lines).await).unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), sub.wait())
        .await
        .expect("sub exits after --max-events")
        .unwrap();
    assert!(status.success(), "{status}");
    let seqs: Vec<u64> = seen.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "every event once, in order");
    for (i, v) in seen.iter().enumerate() {
        assert_eq!(v["event"]["data"]["n"], i as u64 + 1);
    }
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut sub.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    assert!(
        err.contains("reconnecting"),
        "sub says it reconnects: {err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pub_says_what_the_server_refused_and_sub_reads_a_consumer() {
    let dir = DataDir::temp();
    let server = spawn_process(dir.path(), &[]).await;
    let url = server.base.clone();
    // The server's problem detail, exit 1.
    let out = run(&["pub", "--url", &url, "--type", "", "--source", "/x"], &[]).await;
    assert_eq!(code(&out), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("422") && out.stderr.contains("type"),
        "{}",
        out.stderr
    );
    // Data that is no JSON: could not run, exit 2, nothing sent.
    let out = run(
        &[
            "pub", "--url", &url, "--type", "a", "--source", "/x", "--data", "{nope",
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    // No server there: exit 2, saying so.
    let out = run(
        &[
            "pub",
            "--url",
            "http://127.0.0.1:1",
            "--type",
            "a",
            "--source",
            "/x",
        ],
        &[],
    )
    .await;
    assert_eq!(code(&out), 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    // A batch of NDJSON lines: one result line per event.
    let file = dir.path().join("batch.ndjson");
    std::fs::write(
        &file,
        "{\"type\":\"b.one\",\"source\":\"/x\",\"id\":\"1\"}\n\n{\"type\":\"b.two\",\"source\":\"/x\",\"id\":\"2\"}\n",
    )
    .unwrap();
    let out = run(
        &["pub", "--url", &url, "--batch", file.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    let results: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["seq"], 2);
    // A durable consumer, acknowledged after printing.
    let args = [
        "sub",
        "--url",
        &url,
        "--consumer",
        "c1",
        "--type-prefix",
        "b.",
        "--ack",
        "--max-events",
        "2",
    ];
    let out = run(&args, &[]).await;
    assert_eq!(code(&out), 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let c = server.get_json("/consumers/c1").await;
    assert_eq!(c["cursor"], 2, "acked after printing: {c}");
    server.stop().await;
}
