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
    msgbus_command_with_nofile, spawn_command, spawn_process, TestProcess,
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
