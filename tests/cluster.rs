//! The NATS backend on a three-node JetStream cluster (issue 17): two real
//! `msgbus` processes in front of an R3 stream on three real nats-server
//! processes, the stream leader killed with SIGKILL and restarted three
//! times while clients publish through both instances.
//!
//! What must hold: every event acknowledged (a `201`, or the `200` of a
//! retried duplicate) is readable through either instance exactly once,
//! with the seq it was acknowledged with; and an SSE subscriber on one
//! instance sees every event published through the other, in seq order.
//! Errors while the stream has no leader (503 and the like, timeouts) are
//! allowed: the publisher retries with the same id, as a client should.
//!
//! Needs a nats-server >= 2.10.11 (older ones lost acknowledged messages
//! when a leader died); the harness installs PyPI's when Debian's is older,
//! and the test is SKIPPED only when none can be installed.
//!
//! Then an `"ordering": "subject"` queue drained through both instances:
//! every change to its ledger races the other instance's on an R3 KV
//! bucket, and none may fail (a clustered nats-server refuses a lost
//! compare-and-set with an error code of its own, which msgbus must take
//! for a race, not a failure).
//!
//! Also here, because it needs real `msgbus` processes too: an
//! `"ordering": "subject"` queue served by two instances, one of them
//! killed with SIGKILL while eight workers drain it and started again;
//! every event is acknowledged, and each subject's first acknowledgements
//! come in seq order.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use common::events::{check_served, checkable_event};
use common::http::Api;
use common::nats::{nats_server_binary, show, NatsCluster, NatsServer, CLUSTER_MIN_VERSION};
use common::process::{run_msgbus, spawn_process, TestProcess};
use common::sse::SseReader;

/// The stream msgbus creates (its default `--nats-stream`).
const STREAM: &str = "MSGBUS";
/// Publishing tasks per msgbus instance.
const PUBLISHERS_PER_INSTANCE: usize = 3;
/// Leader kills.
const KILLS: usize = 3;
/// The whole test, start to finish.
const TEST_BOUND: Duration = Duration::from_secs(180);
/// One publish attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// An acknowledged event: what was sent and the seq it was acknowledged
/// with.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    event: Value,
    /// 0 or 1: the instance it was published through.
    via: usize,
}

/// `(source, id)` -> the acknowledgement.
type Ledger = Arc<Mutex<HashMap<(String, String), Acked>>>;

/// True when this build's `msgbus serve` has the NATS backend (`--backend`).
async fn serve_has_nats_backend() -> bool {
    let (_, out, err) = run_msgbus(&["serve", "--help"]).await;
    (out + &err).contains("--nats-url")
}

async fn start_instance(dir: &std::path::Path, urls: &str) -> TestProcess {
    spawn_process(
        dir,
        &[
            "--backend",
            "nats",
            "--nats-url",
            urls,
            "--nats-stream",
            STREAM,
            "--replicas",
            "3",
        ],
    )
    .await
}

/// Publishes `prefix-0`, `prefix-1`, ... through `api` until `stop`, each
/// retried with the same id until acknowledged; records every
/// acknowledgement in `ledger`. Returns the number of failed attempts.
async fn publisher(
    api: Api,
    via: usize,
    prefix: String,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut failures = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let event = checkable_event(&prefix, n, 40);
        let key = (
            event["source"].as_str().unwrap().to_string(),
            event["id"].as_str().unwrap().to_string(),
        );
        // Retry until acknowledged, even after `stop`: an event whose
        // publish was attempted may be stored, and only an acknowledged
        // one is in the ledger.
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let res = api
                .client
                .post(api.url("/events"))
                .timeout(ATTEMPT_TIMEOUT)
                .json(&event)
                .send()
                .await;
            let answer = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    Some((status, body))
                }
                Err(_) => None,
            };
            match answer {
                Some((201, body)) | Some((200, body)) => {
                    let seq = body["seq"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("an acknowledgement carries a seq: {body}"));
                    let prev = ledger.lock().unwrap().insert(
                        key.clone(),
                        Acked {
                            seq,
                            event: event.clone(),
                            via,
                        },
                    );
                    assert!(prev.is_none(), "{key:?} acknowledged twice");
                    break;
                }
                Some((status, body)) if status >= 500 || status == 408 || status == 429 => {
                    failures += 1;
                    let _ = body;
                }
                None => failures += 1,
                Some((status, body)) => {
                    panic!("publish of {key:?} answered {status}, not retryable: {body}")
                }
            }
            assert!(
                Instant::now() < give_up,
                "{key:?} not acknowledged within 60 s of retries"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n += 1;
    }
    failures
}

/// Follows `GET /events/stream` on `api` from the start, reconnecting with
/// `Last-Event-ID` when the stream ends or reports an error, and records
/// every `(seq, event)` it is sent, in order, until `stop` and a quiet
/// second.
async fn subscriber(api: Api, seen: Arc<Mutex<Vec<(u64, Value)>>>, stop: Arc<AtomicBool>) {
    let mut last: Option<u64> = None;
    loop {
        let mut reader = match SseReader::connect(&api, "/events/stream", last).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            match reader.next(Duration::from_secs(1)).await {
                Some(m) if m.id.is_some() && m.event.is_none() => {
                    let v = m.json();
                    let seq = m.id.unwrap();
                    seen.lock().unwrap().push((seq, v["event"].clone()));
                    last = Some(seq);
                }
                // `retry:`; `event: error` ends the stream, reconnect.
                Some(m) if m.event.is_none() => {}
                Some(_) => break,
                None if reader.ended => break,
                None if stop.load(Ordering::Relaxed) => return,
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event stored, oldest first, through `api`, retrying a page that
/// fails (the cluster may still be settling).
async fn read_everything(api: &Api) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = api
            .client
            .get(api.url(&format!("/events?after={after}&limit=1000")))
            .send()
            .await;
        let page: Value = match res {
            Ok(r) if r.status() == 200 => r.json().await.expect("a page is JSON"),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "GET /events?after={after} keeps failing: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let events = page["events"].as_array().expect("events array");
        if events.is_empty() {
            return out;
        }
        for e in events {
            out.push((e["seq"].as_u64().expect("seq"), e["event"].clone()));
        }
        let next = page["next_after"].as_u64().expect("next_after");
        assert!(next > after, "next_after must advance: {after} -> {next}");
        after = next;
    }
}

/// The fields a publisher chose, which the bus must serve unchanged.
fn same_event(sent: &Value, served: &Value) -> bool {
    ["id", "source", "type", "data"]
        .iter()
        .all(|f| sent[*f] == served[*f])
}

fn key_of(ev: &Value) -> (String, String) {
    (
        ev["source"].as_str().unwrap_or_default().to_string(),
        ev["id"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_three_stream_leader_kills() {
    if !serve_has_nats_backend().await {
        eprintln!("SKIPPED: this msgbus has no NATS backend (serve --nats-url)");
        return;
    }
    let Some(bin) = nats_server_binary(CLUSTER_MIN_VERSION).await else {
        eprintln!(
            "SKIPPED: no nats-server >= {} could be found or installed",
            show(CLUSTER_MIN_VERSION)
        );
        return;
    };
    tokio::time::timeout(TEST_BOUND, run(bin))
        .await
        .unwrap_or_else(|_| panic!("the cluster test did not finish within {TEST_BOUND:?}"));
}

async fn run(bin: std::path::PathBuf) {
    let mut cluster = NatsCluster::start(&bin, 3).await;
    let urls = cluster.urls();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = start_instance(dirs[0].path(), &urls).await;
    let b = start_instance(dirs[1].path(), &urls).await;
    let first_leader = cluster
        .wait_stream_leader(STREAM, Duration::from_secs(30))
        .await;
    common::note(format!("stream {STREAM} led by {first_leader}"));

    // The subscriber on A, from the oldest event on.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let sub = tokio::spawn(subscriber(a.api.clone(), seen.clone(), stop_sub.clone()));

    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::new();
    for (via, inst) in [&a, &b].into_iter().enumerate() {
        for p in 0..PUBLISHERS_PER_INSTANCE {
            let prefix = format!("i{via}p{p}");
            pubs.push(tokio::spawn(publisher(
                inst.api.clone(),
                via,
                prefix,
                ledger.clone(),
                stop.clone(),
            )));
        }
    }

    for round in 1..=KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Every replica caught up (the one restarted last included), so
        // the kill tests the leader change, not a lost quorum.
        cluster
            .wait_stream_current(STREAM, Duration::from_secs(60))
            .await;
        let leader = cluster
            .wait_stream_leader(STREAM, Duration::from_secs(30))
            .await;
        let before = ledger.lock().unwrap().len();
        cluster.kill(&leader);
        common::note(format!(
            "kill {round}: SIGKILL to stream leader {leader} after {before} acknowledged events"
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(&leader).await;
        let next = cluster
            .wait_stream_leader(STREAM, Duration::from_secs(30))
            .await;
        common::note(format!("kill {round}: {leader} back, stream led by {next}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for p in pubs {
        failures += p.await.expect("publisher");
    }
    let ledger = ledger.lock().unwrap().clone();
    common::note(format!(
        "{} events acknowledged, {failures} failed attempts retried",
        ledger.len()
    ));
    assert!(
        ledger.len() >= 100,
        "too few events published to mean anything"
    );
    for via in 0..2 {
        assert!(
            ledger.values().any(|a| a.via == via),
            "nothing acknowledged through instance {via}"
        );
    }

    // Every acknowledged event, through either instance: once, at its seq.
    let by_seq: BTreeMap<u64, &Acked> = ledger.values().map(|a| (a.seq, a)).collect();
    assert_eq!(
        by_seq.len(),
        ledger.len(),
        "two acknowledgements share a seq"
    );
    for (name, inst) in [("A", &a), ("B", &b)] {
        let all = read_everything(&inst.api).await;
        let mut count: HashMap<(String, String), Vec<u64>> = HashMap::new();
        let mut prev = 0;
        for (seq, ev) in &all {
            assert!(*seq > prev, "{name}: seqs ascend: {prev} then {seq}");
            prev = *seq;
            check_served(ev).unwrap_or_else(|e| panic!("{name}: seq {seq}: {e}"));
            count.entry(key_of(ev)).or_default().push(*seq);
        }
        for (key, seqs) in &count {
            assert_eq!(
                seqs.len(),
                1,
                "{name}: {key:?} stored more than once at {seqs:?}"
            );
        }
        let stored: HashMap<u64, &Value> = all.iter().map(|(s, e)| (*s, e)).collect();
        for (key, acked) in &ledger {
            let served = stored.get(&acked.seq).unwrap_or_else(|| {
                panic!(
                    "{name}: {key:?} acknowledged with seq {} is not served (stored at {:?})",
                    acked.seq,
                    count.get(key)
                )
            });
            assert!(
                same_event(&acked.event, served),
                "{name}: seq {} acknowledged for {key:?} serves {served}",
                acked.seq
            );
        }
        common::note(format!(
            "{name}: {} stored events read back, every acknowledged one at its seq",
            all.len()
        ));
    }

    // The subscriber on A saw every event published through B, in order.
    let last_b = by_seq
        .values()
        .filter(|a| a.via == 1)
        .map(|a| a.seq)
        .max()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().last().map(|(s, _)| *s) < Some(last_b) {
        assert!(
            Instant::now() < deadline,
            "the subscriber on A did not reach seq {last_b} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_sub.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), sub).await;
    let seen = seen.lock().unwrap().clone();
    let mut prev = 0;
    for (seq, _) in &seen {
        assert!(
            *seq > prev,
            "the stream on A is in order: {prev} then {seq}"
        );
        prev = *seq;
    }
    let streamed: HashMap<u64, &Value> = seen.iter().map(|(s, e)| (*s, e)).collect();
    for acked in ledger.values().filter(|a| a.via == 1) {
        let ev = streamed.get(&acked.seq).unwrap_or_else(|| {
            panic!(
                "the stream on A skipped seq {} published through B",
                acked.seq
            )
        });
        assert!(
            same_event(&acked.event, ev),
            "streamed seq {}: {ev}",
            acked.seq
        );
    }
    common::note(format!(
        "the stream on A delivered {} events in order",
        seen.len()
    ));

    // An ordered queue drained through both instances: every change to its
    // ledger races the other instance's on an R3 bucket, and none may fail.
    let r = a
        .api
        .client
        .put(a.api.url("/consumers/ord"))
        .json(&serde_json::json!({"mode": "queue", "type": "job.run", "ordering": "subject"}))
        .send()
        .await
        .expect("create the queue");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.api.get("/consumers/ord").await.status != 200 {
        assert!(Instant::now() < deadline, "B never saw the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seqs = publish_jobs(&a.api, 1, 240).await;
    let apis = Arc::new(Mutex::new([a.api.clone(), b.api.clone()]));
    let drained: Arc<Mutex<Drained>> = Arc::default();
    for w in ordered_workers(&apis, &drained, &seqs, false) {
        w.await.expect("a worker of the ordered queue failed");
    }
    let acks = check_subject_order(&drained);
    common::note(format!(
        "ordered queue on R3: {acks} acks for {} events through two instances, none failed, each subject in seq order",
        seqs.len()
    ));

    a.stop().await;
    b.stop().await;
}

/// One request with a time bound: `None` when the instance did not answer
/// (killed, or starting again).
async fn try_post(api: &Api, path: &str, body: &Value) -> Option<(u16, Value)> {
    let r = api
        .client
        .post(api.url(path))
        .timeout(ATTEMPT_TIMEOUT)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// The subject of event `n` of the ordered queue test: eight subjects.
fn crash_subject(n: u64) -> String {
    format!("s{}", (n * 5 + n / 7) % 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_queue_keeps_subject_order_through_a_kill_9_of_an_instance() {
    if !serve_has_nats_backend().await {
        eprintln!("SKIPPED: this msgbus has no NATS backend (serve --nats-url)");
        return;
    }
    let Some(bin) = nats_server_binary((2, 9, 0)).await else {
        eprintln!("SKIPPED: no nats-server could be found or installed");
        return;
    };
    tokio::time::timeout(TEST_BOUND, ordered_queue_through_a_kill(bin))
        .await
        .unwrap_or_else(|_| panic!("the ordered queue test did not finish within {TEST_BOUND:?}"));
}

async fn ordered_queue_through_a_kill(bin: std::path::PathBuf) {
    let nats = NatsServer::start(&bin, &[]).await;
    let url = nats.url();
    let start = |dir: std::path::PathBuf, url: String| async move {
        spawn_process(
            &dir,
            &[
                "--backend",
                "nats",
                "--nats-url",
                &url,
                "--nats-stream",
                STREAM,
            ],
        )
        .await
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = start(dirs[0].path().to_path_buf(), url.clone()).await;
    let b = start(dirs[1].path().to_path_buf(), url.clone()).await;
    let r = a
        .api
        .client
        .put(a.api.url("/consumers/ord"))
        .json(&serde_json::json!({
            "mode": "queue", "type": "job.run", "ordering": "subject", "lease": 2, "max_deliver": 100,
        }))
        .send()
        .await
        .expect("create the queue");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let total = 600u64;
    let seqs = publish_jobs(&a.api, 1, total).await;
    // The instances the workers use; A's entry changes when it starts
    // again (on another port).
    let apis = Arc::new(Mutex::new([a.api.clone(), b.api.clone()]));
    let drained: Arc<Mutex<Drained>> = Arc::default();
    let workers = ordered_workers(&apis, &drained, &seqs, true);
    // A third of the way, A dies, and comes back two seconds later.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (drained.lock().unwrap().done.len() as u64) < total / 3 {
        assert!(Instant::now() < deadline, "the workers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.sigkill();
    common::note(format!(
        "SIGKILL to instance A after {} acks",
        drained.lock().unwrap().done.len()
    ));
    let mut a = a;
    let _ = a.wait_exit(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a2 = start(dirs[0].path().to_path_buf(), url.clone()).await;
    apis.lock().unwrap()[0] = a2.api.clone();
    for w in workers {
        w.await.expect("a worker panicked");
    }
    let acks = check_subject_order(&drained);
    let only_409: Vec<u64> = {
        let d = drained.lock().unwrap();
        let answered: std::collections::BTreeSet<u64> = d.acks.iter().map(|a| a.1).collect();
        d.done.difference(&answered).copied().collect()
    };
    common::note(format!(
        "{acks} acks answered 200 for {total} events, each subject's first ones in seq order; \
         known acknowledged only by a 409 after a lost answer: {only_409:?}"
    ));
    a2.stop().await;
    b.stop().await;
}

/// Publishes jobs `first..first + count` (type `job.run`, subject
/// [`crash_subject`] of their number) through `api`, 100 at a time;
/// answers their seqs.
async fn publish_jobs(api: &Api, first: u64, count: u64) -> Vec<u64> {
    let numbers: Vec<u64> = (first..first + count).collect();
    let mut seqs = Vec::new();
    for chunk in numbers.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": format!("o-{n}"), "type": "job.run", "source": "/jobs",
                    "subject": crash_subject(*n), "data": {"n": n},
                })
            })
            .collect();
        seqs.extend(api.publish_batch(&batch).await);
    }
    seqs
}

/// What the workers of an ordered queue saw: each ack answered 200, in the
/// order answered, as (subject, seq); and every seq known acknowledged
/// (also by a `409 already-acknowledged`: an ack whose answer was lost
/// with a killed instance, tried again).
#[derive(Debug, Default)]
struct Drained {
    acks: Vec<(String, u64)>,
    done: std::collections::BTreeSet<u64>,
}

/// Eight workers draining ordered queue `ord` until every seq of `want`
/// is acknowledged (at most 120 s), half fetching through each of `apis`
/// (read at each request: an entry may be replaced), acking through the
/// other one. `tolerant`: a request no instance answers, or one answered
/// 5xx or 429, is tried again (through the other instance); otherwise any
/// answer but 200 fails the test.
fn ordered_workers(
    apis: &Arc<Mutex<[Api; 2]>>,
    drained: &Arc<Mutex<Drained>>,
    want: &[u64],
    tolerant: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let want: Arc<std::collections::BTreeSet<u64>> = Arc::new(want.iter().copied().collect());
    let mut workers = Vec::new();
    for w in 0..8usize {
        let apis = apis.clone();
        let drained = drained.clone();
        let want = want.clone();
        workers.push(tokio::spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(120);
            let mut side = w % 2;
            loop {
                let missing: Vec<u64> = {
                    let d = drained.lock().unwrap();
                    want.difference(&d.done).copied().take(10).collect()
                };
                if missing.is_empty() {
                    return;
                }
                assert!(
                    Instant::now() < give_up,
                    "worker {w}: not acknowledged after 120 s: {missing:?}..."
                );
                let api = apis.lock().unwrap()[side].clone();
                let body = serde_json::json!({"max": 4, "wait": 1});
                let answer = try_post(&api, "/consumers/ord/fetch", &body).await;
                let got = match answer {
                    Some((200, got)) => got,
                    Some((status, _)) if tolerant && (status >= 500 || status == 429) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    None if tolerant => {
                        side = 1 - side;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    other => panic!("fetch through instance {side}: {other:?}"),
                };
                for e in got["events"].as_array().cloned().unwrap_or_default() {
                    let seq = e["seq"].as_u64().unwrap();
                    let subject = e["event"]["subject"].as_str().unwrap().to_string();
                    let mut via = if tolerant { side } else { 1 - side };
                    loop {
                        let api = apis.lock().unwrap()[via].clone();
                        let body = serde_json::json!({"seq": seq});
                        match try_post(&api, "/consumers/ord/ack", &body).await {
                            Some((200, _)) => {
                                let mut d = drained.lock().unwrap();
                                d.acks.push((subject, seq));
                                d.done.insert(seq);
                                break;
                            }
                            // Acked already: by this worker through a
                            // killed instance, or by another after the
                            // lease ran out.
                            Some((409, b)) if tolerant => {
                                if b["type"]
                                    .as_str()
                                    .is_some_and(|t| t.ends_with("already-acknowledged"))
                                {
                                    drained.lock().unwrap().done.insert(seq);
                                }
                                break;
                            }
                            Some((s, _)) if tolerant && s >= 500 => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            None if tolerant => {
                                via = 1 - via;
                                side = via;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            other => panic!("ack of {seq} through instance {via}: {other:?}"),
                        }
                    }
                }
            }
        }));
    }
    workers
}

/// Checks that each subject's first acks answered 200 came in seq order
/// (every seq of the queue was acknowledged: the workers ran until then);
/// answers the acks answered 200.
fn check_subject_order(drained: &Arc<Mutex<Drained>>) -> usize {
    let d = drained.lock().unwrap();
    let mut first = std::collections::BTreeSet::new();
    let mut by_subject: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (subject, seq) in &d.acks {
        if first.insert(*seq) {
            by_subject.entry(subject.clone()).or_default().push(*seq);
        }
    }
    for (subject, seqs) in &by_subject {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(
            seqs, &sorted,
            "subject {subject}: first acks out of seq order"
        );
    }
    d.acks.len()
}
