//! The nats-server harness (`tests/common/nats.rs`) against real servers:
//! a single server and a three-node cluster start, answer with their `INFO`
//! line, are killed with SIGKILL and come back on the same ports and store,
//! and none outlives its handle.

mod common;

use std::time::Duration;

use serde_json::json;

use common::nats::{
    info, js_request, monitor_get, nats_server_binary, parse_version, show, NatsCluster,
    NatsServer, CLUSTER_MIN_VERSION,
};

fn gone(pid: u32) -> bool {
    // A SIGKILLed and reaped child has no /proc entry (or a zombie's, which
    // the harness reaps, so none).
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn versions_parse() {
    assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
    assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
    assert_eq!(
        parse_version("nats-server: v2.12.0-beta.1"),
        Some((2, 12, 0))
    );
    assert_eq!(parse_version("garbage"), None);
    assert!((2, 9, 10) < CLUSTER_MIN_VERSION && (2, 15, 1) >= CLUSTER_MIN_VERSION);
}

#[tokio::test]
async fn single_server_starts_is_killed_and_restarts_on_its_port() {
    let Some(bin) = nats_server_binary((2, 9, 0)).await else {
        eprintln!("SKIPPED: no nats-server could be found or installed");
        return;
    };
    let mut server = NatsServer::start(&bin, &[]).await;
    let first = info(server.addr())
        .await
        .expect("INFO from a started server");
    assert_eq!(first["server_name"], "nats-single");
    assert_eq!(first["jetstream"], true, "JetStream is on: {first}");
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    let pid = server.pid().unwrap();

    server.kill();
    assert!(gone(pid), "nats-server {pid} is gone after kill");
    assert!(
        info(server.addr()).await.is_none(),
        "a killed server answers nothing"
    );

    server.restart().await;
    let again = info(server.addr()).await.expect("INFO after restart");
    assert_eq!(again["port"], first["port"], "same port after restart");
    assert!(server.store_dir().join("jetstream").is_dir(), "store kept");

    let pid = server.pid().unwrap();
    drop(server);
    assert!(gone(pid), "dropping the handle kills nats-server {pid}");
}

#[tokio::test]
async fn cluster_elects_a_meta_leader_and_survives_a_killed_node() {
    let Some(bin) = nats_server_binary(CLUSTER_MIN_VERSION).await else {
        eprintln!(
            "SKIPPED: no nats-server >= {} could be found or installed",
            show(CLUSTER_MIN_VERSION)
        );
        return;
    };
    let mut cluster = NatsCluster::start(&bin, 3).await;
    assert_eq!(cluster.urls().split(',').count(), 3);
    for node in &cluster.nodes {
        let i = info(node.addr()).await.expect("INFO from every node");
        assert_eq!(i["server_name"], node.name());
        assert_eq!(i["cluster"], "msgbus-test", "{i}");
    }
    let varz = monitor_get(cluster.nodes[0].monitor_port(), "/routez")
        .await
        .expect("routez");
    assert_eq!(
        varz["num_routes"].as_u64().map(|n| n >= 2),
        Some(true),
        "{varz}"
    );

    // An R3 stream: the harness names its leader, and after that leader is
    // killed, the next one.
    let created = js_request(
        cluster.nodes[0].addr(),
        "$JS.API.STREAM.CREATE.HARNESS",
        &json!({"name": "HARNESS", "subjects": ["harness.>"], "storage": "file", "num_replicas": 3}),
    )
    .await
    .expect("a stream-create answer");
    assert!(created.get("error").is_none(), "{created}");
    let stream_leader = cluster
        .wait_stream_leader("HARNESS", Duration::from_secs(30))
        .await;
    cluster.kill(&stream_leader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.stream_leader("HARNESS").await {
            Some(l) if l != stream_leader => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new stream leader after {stream_leader} died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart(&stream_leader).await;
    let leader = cluster.meta_leader().await.expect("a meta leader");

    // Kill the meta leader: the other two elect another one.
    cluster.kill(&leader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Some(l) = cluster.meta_leader().await {
            if l != leader {
                break l;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new meta leader after {leader} died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(new_leader, leader);

    cluster.restart(&leader).await;
    let i = info(cluster.node(&leader).addr())
        .await
        .expect("INFO after restart");
    assert_eq!(i["server_name"], leader.as_str());

    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 3);
    drop(cluster);
    for pid in pids {
        assert!(gone(pid), "dropping the cluster kills nats-server {pid}");
    }
}
