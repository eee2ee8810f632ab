//! File descriptors and connections: no client can exhaust what the store
//! needs. Real `msgbus` processes, some started under a low open-file
//! limit (`prlimit`), and raw loopback sockets that send nothing, half a
//! request, or one request and then nothing.
//!
//! Set `TEST_LOG=1` to see the servers' logs.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::files::DataDir;
use crate::common::process::{
    msgbus_command_with_nofile, run_msgbus, spawn_command, spawn_process, TestProcess,
};

/// Reads until the server closes the connection; true when it did within
/// `within`. Whatever was read is returned too.
async fn closed_within(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `n` connections that send nothing.
async fn idle_connections(p: &TestProcess, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(p.addr).await.expect("connect"));
    }
    conns
}

fn ev(n: u64) -> serde_json::Value {
    json!({"type": "fd.test", "source": "/fds", "id": format!("e-{n}"), "data": {"n": n}})
}

#[tokio::test]
async fn partial_request_headers_are_dropped_after_the_header_timeout() {
    let dir = DataDir::temp();
    let p = spawn_process(dir.path(), &["--header-timeout", "1s"]).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (closed, got) = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(
        closed,
        "a request whose headers never end is closed after --header-timeout"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );
    // The server still serves others.
    assert_eq!(p.get("/health/live").await.status, 200);
    p.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_long_polls_are_not() {
    let dir = DataDir::temp();
    let p = spawn_process(dir.path(), &["--idle-timeout", "1s"]).await;

    // A connection that never sends anything.
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    // A keep-alive connection after one request.
    let mut kept = TcpStream::connect(p.addr).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (closed, got) = closed_within(&mut kept, Duration::from_secs(8)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "the request is answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        closed,
        "an idle keep-alive connection is closed after --idle-timeout"
    );
    let (closed, _) = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a connection that sends nothing is closed after --idle-timeout"
    );

    // A long-poll longer than the idle timeout is a request in flight.
    let started = std::time::Instant::now();
    let r = p.get("/events?after=0&wait=3").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() >= Duration::from_millis(2500));
    p.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_do_not_break_the_server() {
    let dir = DataDir::temp();
    let p = spawn_process(
        dir.path(),
        &["--max-connections", "4", "--idle-timeout", "1s"],
    )
    .await;
    let idle = idle_connections(&p, 12).await;
    // Ours waits behind them in the backlog: four at a time are served and
    // dropped after their idle second.
    let r = p.get("/health/ready").await;
    assert_eq!(r.status, 200, "{}", r.text());
    p.publish_ok(&ev(1)).await;
    drop(idle);
    assert!(!p.stderr_text().contains("panicked"), "{}", p.stderr_text());
    p.stop().await;
}

#[tokio::test]
async fn idle_connections_under_a_low_descriptor_limit_cannot_make_a_seal_fail() {
    let dir = DataDir::temp();
    // Every commit seals the segment before it: each publish opens a file.
    let p = spawn_command(msgbus_command_with_nofile(
        dir.path(),
        &["--segment-bytes", "1"],
        128,
    ))
    .await;
    p.publish_ok(&ev(0)).await;
    let idle = idle_connections(&p, 150).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=5 {
        let r = p.publish(&ev(n)).await;
        assert_eq!(
            r.status,
            201,
            "publish {n} while 150 connections idle: {}",
            r.text()
        );
    }
    let ready = p.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    drop(idle);
    for n in 6..=10 {
        p.publish_ok(&ev(n)).await;
    }
    let all = p.read_all().await;
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    let stats = p.get_json("/stats").await;
    assert!(
        stats["writer"]["segments_sealed"].as_u64().unwrap() >= 10,
        "{stats}"
    );
    assert!(stats["writer"]["poisoned"].is_null(), "{stats}");
    p.stop().await;
}

#[tokio::test]
async fn a_store_with_more_sealed_segments_than_the_descriptor_limit_starts_and_serves_them() {
    let dir = DataDir::temp();
    // One event per segment: 120 sealed segments.
    let total = 121;
    let p = spawn_process(dir.path(), &["--segment-bytes", "1"]).await;
    for n in 1..=total {
        p.publish_ok(&ev(n)).await;
    }
    p.stop().await;

    // 64 descriptors: fewer than the segments, so they cannot all be open
    // (and more than the 32 cached: reads open and close them in turn).
    let p = spawn_command(msgbus_command_with_nofile(
        dir.path(),
        &["--segment-bytes", "1"],
        64,
    ))
    .await;
    let all = p.read_all().await;
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "every event of every segment is served"
    );
    for (seq, event) in &all {
        assert_eq!(event["id"], format!("e-{seq}"));
    }
    for seq in [1, 60, total] {
        let r = p.get(&format!("/events/{seq}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Still writable: a publish seals the active segment.
    p.publish_ok(&ev(total + 1)).await;
    let ready = p.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    p.stop().await;
}

/// With too few descriptors to start, msgbus says so plainly (too many
/// open files, nothing damaged; never a panic, never "restore a backup"),
/// exits, and leaves the store as it was. Every limit from "cannot even
/// start the runtime" to "starts" is tried, since where the descriptors
/// run out depends on the limit.
#[tokio::test]
async fn a_start_without_enough_descriptors_says_so_and_damages_nothing() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = DataDir::temp();
    let p = spawn_process(dir.path(), &["--segment-bytes", "1"]).await;
    for n in 1..=3 {
        p.publish_ok(&ev(n)).await;
    }
    p.stop().await;

    let (mut refused, mut started) = (0, 0);
    for nofile in 4..=48 {
        let mut child = msgbus_command_with_nofile(dir.path(), &[], nofile)
            .spawn()
            .expect("spawn msgbus");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut stderr = String::new();
        let listening = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("msgbus listening") {
                    return true;
                }
                stderr.push_str(&line);
                stderr.push('\n');
            }
            false
        })
        .await
        .expect("msgbus neither listened nor exited within 20 s");
        if listening {
            started += 1;
            let _ = child.start_kill();
            let _ = child.wait().await;
            continue;
        }
        refused += 1;
        let status = child.wait().await.unwrap();
        assert_eq!(
            status.code(),
            Some(1),
            "limit {nofile}: {status}, stderr:\n{stderr}"
        );
        let lower = stderr.to_lowercase();
        assert!(
            lower.contains("too many open files") && lower.contains("nothing is damaged"),
            "limit {nofile}: the refusal says what happened:\n{stderr}"
        );
        assert!(
            !lower.contains("panicked") && !lower.contains("restore"),
            "limit {nofile}: no panic, no advice to restore a backup:\n{stderr}"
        );
    }
    assert!(
        refused > 0 && started > 0,
        "{refused} refused, {started} started: widen the range"
    );

    let (code, out, err) =
        run_msgbus(&["verify", "--data-dir", dir.path().to_str().unwrap()]).await;
    assert_eq!(code, 0, "the store is intact:\n{out}{err}");
    let p = spawn_process(dir.path(), &[]).await;
    let seqs: Vec<u64> = p.read_all().await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    p.stop().await;
}
