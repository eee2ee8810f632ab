//! Runs every scenario of the benchmark briefly against msgbus and the
//! ceiling started in-process, so `cargo test --workspace` keeps the
//! benchmark from rotting without wrk or a release build. It checks that
//! the load generator really got 201s and counted them: the count must
//! equal what msgbus says it stored; and that every SSE subscriber of the
//! fan-out scenario received every event published, in order.

use std::time::Duration;

use msgbus_bench::client;
use msgbus_bench::loadgen::{self, ClosedLoop, Work};
use msgbus_bench::report;
use msgbus_bench::scenarios::{
    every_request_created, run_all, AuthCompare, BenchConfig, FanoutDoc, LargeConfig, Scenario,
};
use msgbus_bench::servers::Launcher;

fn test_config(work_dir: std::path::PathBuf) -> BenchConfig {
    BenchConfig {
        mode: "test".into(),
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(300),
        repeat: 1,
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
        scenarios: Scenario::ALL.to_vec(),
        fanout_subscribers: 20,
        fanout_rate: 200.0,
        fanout_publishers: 4,
        large: LargeConfig::tiny(),
        work_dir,
    }
}

/// Every subscriber received every event of the run, in order: the
/// per-subscriber checks all passed and the counts add up.
fn assert_fanout_delivered_everything(f: &FanoutDoc, subscribers: usize) {
    assert_eq!(f.subscribers, subscribers);
    assert_eq!(
        f.server_subscribers,
        Some(subscribers as u64),
        "msgbus's own count of open streams"
    );
    assert!(
        f.baseline.requests > 0 && f.baseline.errors == 0,
        "{:?}",
        f.baseline
    );
    assert!(
        f.publisher.requests > 0 && f.publisher.errors == 0,
        "{:?}",
        f.publisher
    );
    // Every 201 of the run is one seq after the subscribers' starting point.
    assert_eq!(f.events_published, f.publisher.requests, "{f:?}");
    assert_eq!(f.last_seq, f.after_seq + f.events_published);
    assert_eq!(
        (f.subscribers_complete, f.subscribers_incomplete),
        (subscribers, 0),
        "not every subscriber received every event in order; first failure: {:?}",
        f.first_failure
    );
    assert!(f.first_failure.is_none(), "{:?}", f.first_failure);
    assert_eq!(f.deliveries, f.events_published * subscribers as u64);
    assert_eq!(f.unstamped, 0);
    assert!(f.latency_samples > 0 && f.latency_samples <= f.deliveries);
    assert!(f.latency.p50_ms > 0.0 && f.latency.p99_ms >= f.latency.p50_ms);
    assert!(f.drain_ms.is_some());
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
    let b = &rep.batch.as_ref().unwrap().result;
    assert!(b.requests > 0 && b.errors == 0, "{b:?}");
    assert_eq!(b.events_total, b.requests_total * 100);
    assert!(b.events_per_s > b.requests_per_s);

    // The load generator's count of 201s is exactly what msgbus stored.
    let checks = rep.checks.as_ref().unwrap();
    assert!(checks.consistent, "{checks:?}");
    assert!(checks.events_acknowledged > 0);
    assert_eq!(checks.events_stored, checks.events_acknowledged);
    assert_eq!(checks.errors, 0);

    let prefill = rep.prefill.as_ref().unwrap();
    assert_eq!(prefill.events, 3000);
    assert!(prefill.store_bytes > 3000 * 250);
    let startup = rep.startup.as_ref().unwrap();
    assert_eq!(startup.runs_s.len(), 1);
    assert!(startup.ready_s > 0.0 && startup.ready_s < 60.0);
    assert!(startup.memory_at_ready.is_some());
    let store_size = rep.store_size.as_ref().unwrap();
    assert_eq!(store_size.stored_events, 3000);
    assert!(store_size.result.requests > 0 && store_size.result.errors == 0);

    let rd = rep.reads_under_load.as_ref().unwrap();
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

    assert_fanout_delivered_everything(rep.fanout.as_ref().unwrap(), 20);
    let a = rep.auth.as_ref().unwrap();
    assert_auth_compare(&a.single, 8, 1, 1);
    assert_auth_compare(&a.batch, 4, 100, 1);
    // The large-store group is never part of the default run.
    assert!(rep.large.is_none());

    assert_eq!(rep.targets.len(), 10, "{:?}", rep.targets);
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["targets"].as_array().unwrap().len(), 10);
    assert!(json["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert_eq!(json["fanout"]["subscribers_complete"], 20);
    let table = report::render(&rep);
    assert!(table.contains("Targets:"), "{table}");
    assert!(
        table.contains("every event, in order: 20 of 20 subscribers"),
        "{table}"
    );
}

/// With `repeat`, each row is one of its runs (the median one), every run
/// is kept, and the check still counts the 201s of every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_runs_report_the_median_run_and_count_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BenchConfig {
        scenarios: vec![Scenario::Single, Scenario::Stored],
        repeat: 2,
        ..test_config(dir.path().join("run"))
    };
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();

    assert_eq!(rep.single.len(), 2);
    for row in &rep.single {
        assert_eq!(row.runs.len(), 2, "{row:?}");
        // Of two, the lower: the reported pair is the one with the lower ratio.
        let lower = if row.runs[0].ratio <= row.runs[1].ratio {
            0
        } else {
            1
        };
        assert_eq!(row.median_run, lower, "{:?}", row.runs);
        let reported = &row.runs[row.median_run];
        assert_eq!(row.ratio_to_ceiling, reported.ratio);
        assert_eq!(row.ceiling.requests_per_s, reported.ceiling_requests_per_s);
        assert_eq!(row.msgbus.requests_per_s, reported.msgbus_requests_per_s);
        assert_eq!(row.msgbus.latency.p99_ms, reported.msgbus_p99_ms);
        assert_eq!(row.fsync.events_per_fsync, reported.events_per_fsync);
        assert!(row.runs.iter().all(|r| r.ratio > 0.0 && r.errors == 0));
    }
    let b = rep.batch.as_ref().unwrap();
    assert_eq!(b.runs_events_per_s.len(), 2);
    assert_eq!(b.result.events_per_s, b.runs_events_per_s[b.median_run]);
    assert_eq!(
        b.result.events_per_s,
        b.runs_events_per_s
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    );

    // Every 201 of both runs of everything is counted, not only the
    // reported runs': otherwise this would not match.
    let checks = rep.checks.as_ref().unwrap();
    assert!(checks.consistent, "{checks:?}");
    let reported: u64 = rep
        .single
        .iter()
        .map(|r| r.msgbus.events_total)
        .sum::<u64>()
        + b.result.events_total;
    assert!(checks.events_acknowledged > reported, "{checks:?}");
    assert_eq!(checks.errors, 0);

    let z = rep.store_size.as_ref().unwrap();
    assert_eq!(z.stored_events, 3000);
    assert_eq!(z.runs_requests_per_s.len(), 2);
    assert_eq!(z.result.requests_per_s, z.runs_requests_per_s[z.median_run]);
    let top = rep.single.iter().find(|r| r.connections == 8).unwrap();
    assert_eq!(z.empty_requests_per_s, top.msgbus.requests_per_s);
    assert_eq!(z.errors_all_runs, 0);
    // The reads started after both store-size runs.
    assert!(rep.reads_under_load.as_ref().unwrap().stored_events > 3000 + z.result.events_total);

    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["config"]["repeat"], 2);
    assert_eq!(json["single"][0]["runs"].as_array().unwrap().len(), 2);
    let table = report::render(&rep);
    assert!(table.contains("median of 2 runs"), "{table}");
    assert!(table.contains("ratio per run @8 conns:"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_fanout_scenario_runs_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BenchConfig {
        scenarios: vec![Scenario::Fanout],
        fanout_subscribers: 30,
        ..test_config(dir.path().join("run"))
    };
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();
    assert!(rep.single.is_empty() && rep.batch.is_none() && rep.checks.is_none());
    assert!(rep.startup.is_none() && rep.reads_under_load.is_none());
    assert_fanout_delivered_everything(rep.fanout.as_ref().unwrap(), 30);
    assert_eq!(rep.targets.len(), 1, "{:?}", rep.targets);
    let json = serde_json::to_value(&rep).unwrap();
    assert!(json["batch"].is_null());
    assert_eq!(json["config"]["scenarios"], serde_json::json!(["fanout"]));
    assert!(report::render(&rep).contains("Fan-out: 30 SSE subscribers"));
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

/// One comparison of the access-control group: `repeat` pairs, every run
/// all 201s, and the reported figures those of the pair with the median
/// (of two: the lower) ratio.
fn assert_auth_compare(c: &AuthCompare, connections: usize, per_request: u64, repeat: usize) {
    assert_eq!(c.connections, connections, "{c:?}");
    assert_eq!(c.events_per_request, per_request);
    assert_eq!(c.runs.len(), repeat, "{c:?}");
    for r in [&c.off, &c.on] {
        assert!(r.requests > 0 && r.errors == 0, "{r:?}");
        assert!(r.unexpected_statuses.is_empty(), "{r:?}");
        assert_eq!(r.events_total, r.requests_total * per_request);
        assert!(r.latency.p50_ms > 0.0 && r.latency.p99_ms >= r.latency.p50_ms);
    }
    let ratios: Vec<f64> = c.runs.iter().map(|p| p.ratio).collect();
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(lowest > 0.0, "{ratios:?}");
    if repeat == 2 {
        assert_eq!(c.ratio, lowest, "{ratios:?}");
    }
    let reported = &c.runs[c.median_run];
    assert_eq!(c.ratio, reported.ratio);
    assert_eq!(c.off.requests_per_s, reported.off.requests_per_s);
    assert_eq!(c.on.requests_per_s, reported.on.requests_per_s);
    assert_eq!(c.on.latency.p99_ms, reported.on.p99_ms);
    assert_eq!(c.ratio, c.on.requests_per_s / c.off.requests_per_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_group_compares_access_control_off_and_on_in_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let work_dir = dir.path().join("run");
    let cfg = BenchConfig {
        scenarios: vec![Scenario::Auth],
        repeat: 2,
        // A debug build on a loaded machine completed no batch of 100 in
        // the default 300 ms window once; every run must count requests.
        duration: Duration::from_secs(1),
        ..test_config(work_dir.clone())
    };
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();
    assert!(rep.single.is_empty() && rep.batch.is_none() && rep.fanout.is_none());
    assert!(rep.targets.is_empty(), "{:?}", rep.targets);
    let a = rep.auth.as_ref().expect("the auth group ran");
    assert_eq!(a.token_role, "admin");
    // The largest connection count of the config; the batch settings.
    assert_auth_compare(&a.single, 8, 1, 2);
    assert_auth_compare(&a.batch, 4, 100, 2);

    // Each run's store is deleted after it.
    let left: Vec<_> = std::fs::read_dir(&work_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["config"]["scenarios"], serde_json::json!(["auth"]));
    assert_eq!(json["auth"]["single"]["runs"].as_array().unwrap().len(), 2);
    assert!(
        json["auth"]["batch"]["runs"][1]["on"]["events_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The token's secret is in no report.
    assert!(!json.to_string().contains("mb_"), "{json}");
    let table = report::render(&rep);
    assert!(table.contains("Access control: auth off"), "{table}");
    assert!(table.contains("POST /events/batch of 100"), "{table}");
    assert!(
        table.contains("auth on ÷ off, median pair: single events @8 conns"),
        "{table}"
    );
    assert!(table.contains("Targets: none"), "{table}");
}

/// A run against msgbus with access control on counts only 201s: without
/// the token, or with a wrong one, every publish is a 401 and the group's
/// check refuses the run; with the token (sent by the load generator on
/// every connection) every publish is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_a_valid_token_fails_the_auth_check() {
    let dir = tempfile::tempdir().unwrap();
    let spec = msgbus::auth::file::TokenSpec {
        name: "bench".into(),
        role: msgbus::auth::Role::Publish,
        scope: Default::default(),
        rate: None,
        read_rate: None,
        expires: None,
    };
    let (_, token) =
        msgbus::auth::file::create(dir.path(), spec, &msgbus::clock::now_rfc3339()).unwrap();
    let server = Launcher::InProcess.msgbus(dir.path()).await.unwrap();
    let work = Work::Single {
        tag: "auth-check".into(),
        head: None,
    };
    // Few enough refusals to stay under the per-address limit of failed
    // authentications (otherwise 429s would follow).
    let spec = ClosedLoop {
        connections: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(30),
        max_requests: Some(8),
    };
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let wrong = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(wrong, token);
    for auth in [None, Some(client::bearer(&wrong).unwrap())] {
        let r = loadgen::closed_loop_with(server.addr, &work, &spec, auth)
            .await
            .unwrap();
        assert_eq!((r.requests_total, r.errors), (0, 8), "{r:?}");
        assert_eq!(r.unexpected_statuses.get(&401), Some(&8), "{r:?}");
        let e = every_request_created(&r, "auth on")
            .unwrap_err()
            .to_string();
        assert!(e.contains("401"), "{e}");
    }
    let auth = client::bearer(&token).unwrap();
    let r = loadgen::closed_loop_with(server.addr, &work, &spec, Some(auth))
        .await
        .unwrap();
    assert_eq!((r.requests_total, r.errors), (8, 0), "{r:?}");
    every_request_created(&r, "auth on").unwrap();
    server.stop().await.unwrap();
}

/// The large-store group end to end on a tiny store (2,000 then 5,000
/// events): each size filled and started, the duplicate of seq 1 answered
/// with seq 1, random reads all 200, the one rare event found by the
/// filtered read, publishing and both sides of the comparison counted,
/// `msgbus verify` healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_large_group_grows_one_store_and_measures_each_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path().join("run"));
    cfg.scenarios = vec![Scenario::Large];
    cfg.startup_runs = 2;
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();
    assert!(rep.single.is_empty() && rep.prefill.is_none() && rep.auth.is_none());
    let l = rep.large.as_ref().unwrap();
    assert_eq!(l.empty_ready_runs_s.len(), 2);
    let sizes: Vec<u64> = l.steps.iter().map(|s| s.events).collect();
    assert_eq!(sizes, vec![2000, 5000]);
    for st in &l.steps {
        assert_eq!(st.ready_runs_s.len(), 2);
        assert!(st.memory_runs.iter().all(Option::is_some));
        assert!(st.duplicate_ok);
        assert!(st.fill_s > 0.0 && st.store_bytes > st.events * 250);
        assert!(
            st.random_get.requests > 0 && st.random_get.errors == 0,
            "{:?}",
            st.random_get
        );
    }
    assert_eq!(
        l.steps[0].fill_events, 1999,
        "seq 1 went in before the fill"
    );
    assert_eq!(l.steps[1].fill_events, 3000);
    let t = &l.top;
    assert_eq!((t.rare_seq, t.filtered_found), (1500, 1));
    assert!(t.filtered_pages >= 1);
    assert!(
        t.publisher.requests > 0 && t.publisher.errors == 0,
        "{:?}",
        t.publisher
    );
    assert!(t.memory_after_publish.is_some());
    assert!(t.empty.requests > 0 && t.large.requests > 0);
    assert_eq!(t.empty.errors + t.large.errors, 0);
    assert_eq!(t.runs_ratio.len(), LargeConfig::tiny().slice_pairs);
    // The ratio of the totals is an average of the pairs' ratios (weighted
    // by the empty store's rate), so it lies between the smallest and the
    // largest of them.
    let (lo, hi) = t
        .runs_ratio
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    assert!(
        t.ratio_to_empty >= lo - 1e-9 && t.ratio_to_empty <= hi + 1e-9,
        "{} not within {:?}",
        t.ratio_to_empty,
        t.runs_ratio
    );
    assert_eq!(t.verify_verdict, "Healthy");
    assert!(t.verify_bytes > 5000 * 250 && t.verify_mb_per_s > 0.0);
    // Its targets are evaluated (and only those).
    assert!(!rep.targets.is_empty());
    assert!(rep
        .targets
        .iter()
        .all(|t| t.name.starts_with("large store")));
}

/// The dashboard group: pairs of publish runs without and with the
/// simulated pages, every run all 201s, the pages' requests counted, and
/// the table saying what was compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_group_compares_publishing_without_and_with_pages() {
    let dir = tempfile::tempdir().unwrap();
    let work_dir = dir.path().join("run");
    let cfg = BenchConfig {
        scenarios: vec![Scenario::Dashboard],
        repeat: 2,
        ..test_config(work_dir.clone())
    };
    let rep = run_all(&cfg, &Launcher::InProcess).await.unwrap();
    assert!(rep.single.is_empty() && rep.auth.is_none());
    let d = rep.dashboard.as_ref().expect("the dashboard group ran");
    assert_eq!(d.pages, 10);
    assert_auth_compare(&d.single, 8, 1, 2);
    // Every page polls /stats and the rest at once when it starts.
    assert!(d.page_requests >= 5, "{d:?}");
    let left: Vec<_> = std::fs::read_dir(&work_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let table = report::render(&rep);
    assert!(
        table.contains("Dashboards: publishing without vs with 10 simulated pages"),
        "{table}"
    );
    assert!(
        table.contains("with ÷ without pages, median pair"),
        "{table}"
    );
}
