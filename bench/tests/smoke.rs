//! Runs every scenario of the benchmark briefly against msgbus and the
//! ceiling started in-process, so `cargo test --workspace` keeps the
//! benchmark from rotting without wrk or a release build. It checks that
//! the load generator really got 201s and counted them: the count must
//! equal what msgbus says it stored.

use std::time::Duration;

use msgbus_bench::loadgen::{self, ClosedLoop, Work};
use msgbus_bench::report;
use msgbus_bench::scenarios::{run_all, BenchConfig};
use msgbus_bench::servers::Launcher;

fn test_config(work_dir: std::path::PathBuf) -> BenchConfig {
    BenchConfig {
        mode: "test".into(),
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(300),
        connections: vec![1, 8],
        batch_size: 100,
        batch_connections: 4,
        prefill: 3000,
        prefill_batch: 1000,
        prefill_connections: 2,
        write_rate: 400.0,
        write_connections: 4,
        read_connections: 4,
        read_limit: 100,
        startup_runs: 1,
        work_dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_the_201s_counted_are_the_events_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path().join("run"));
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();

    assert_eq!(rep.single.len(), 2);
    for row in &rep.single {
        assert!(row.ceiling.requests > 0, "ceiling counted no 201: {row:?}");
        assert!(row.msgbus.requests > 0, "msgbus counted no 201: {row:?}");
        assert_eq!(row.ceiling.errors + row.msgbus.errors, 0, "{row:?}");
        assert!(row.msgbus.latency.p50_ms > 0.0);
        assert!(row.msgbus.latency.p99_ms >= row.msgbus.latency.p50_ms);
        assert!(row.ratio_to_ceiling > 0.0);
        assert_eq!(row.fsync.events_written, row.msgbus.events_total);
        assert!(row.fsync.fsyncs > 0 && row.fsync.events_per_fsync >= 1.0);
    }
    let b = &rep.batch.result;
    assert!(b.requests > 0 && b.errors == 0, "{b:?}");
    assert_eq!(b.events_total, b.requests_total * 100);
    assert!(b.events_per_s > b.requests_per_s);

    // The load generator's count of 201s is exactly what msgbus stored.
    assert!(rep.checks.consistent, "{:?}", rep.checks);
    assert!(rep.checks.events_acknowledged > 0);
    assert_eq!(rep.checks.events_stored, rep.checks.events_acknowledged);
    assert_eq!(rep.checks.errors, 0);

    assert_eq!(rep.prefill.events, 3000);
    assert!(rep.prefill.store_bytes > 3000 * 250);
    assert_eq!(rep.startup.runs_s.len(), 1);
    assert!(rep.startup.ready_s > 0.0 && rep.startup.ready_s < 60.0);
    assert!(rep.startup.memory_at_ready.is_some());
    assert_eq!(rep.store_size.stored_events, 3000);
    assert!(rep.store_size.result.requests > 0 && rep.store_size.result.errors == 0);

    let rd = &rep.reads_under_load;
    assert!(
        rd.publisher.requests > 0 && rd.publisher.errors == 0,
        "{:?}",
        rd.publisher
    );
    assert!(
        rd.events_page.requests > 0 && rd.events_page.errors == 0,
        "{:?}",
        rd.events_page
    );
    assert!(
        rd.stats.requests > 0 && rd.stats.errors == 0,
        "{:?}",
        rd.stats
    );

    assert_eq!(rep.targets.len(), 9, "{:?}", rep.targets);
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["targets"].as_array().unwrap().len(), 9);
    assert!(json["machine"]["nproc"].as_u64().unwrap() >= 1);
    let table = report::render(&rep);
    assert!(table.contains("Targets (issue 4)"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_counts_only_expected_statuses() {
    let launcher = Launcher::InProcess;
    let ceiling = launcher.ceiling().await.unwrap();
    // A bounded run: exactly 50 requests, all 201.
    let work = Work::Single {
        tag: "exact".into(),
        head: None,
    };
    let spec = ClosedLoop {
        connections: 3,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(30),
        max_requests: Some(50),
    };
    let r = loadgen::closed_loop(ceiling.addr, &work, &spec)
        .await
        .unwrap();
    assert_eq!(
        (r.requests_total, r.requests, r.errors),
        (50, 50, 0),
        "{r:?}"
    );
    // A path that answers 404 is never counted as a success.
    let work = Work::Get {
        path: "/nowhere".into(),
    };
    let spec = ClosedLoop {
        max_requests: Some(10),
        ..spec
    };
    let r = loadgen::closed_loop(ceiling.addr, &work, &spec)
        .await
        .unwrap();
    assert_eq!((r.requests_total, r.errors), (0, 10), "{r:?}");
    assert_eq!(r.unexpected_statuses.get(&404), Some(&10));
    ceiling.stop().await.unwrap();
}
