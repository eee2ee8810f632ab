//! Eight workers share one queue of 20,000 events in a real `msgbus`
//! process; workers "die" (stop without acking) at random and the others
//! take their events over once the lease (1 s) runs out; the server is
//! SIGKILLed twice midway and restarted on the same data directory. At
//! the end every event was acknowledged, none twice, none was delivered
//! again after its ack answered 200, none is lost, and what the dead
//! workers held came back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::queues::{create_queue, events};
use crate::common::files::DataDir;
use crate::common::http::Api;
use crate::common::process::{spawn_process, TestProcess};

const EVENTS: u64 = 20_000;
const WORKERS: u64 = 8;

#[derive(Default)]
struct Log {
    /// Each delivery: seq and when its fetch was sent.
    deliveries: Vec<(u64, Instant)>,
    /// Each 200 answer to an ack, by seq: when it was received.
    acked: HashMap<u64, Vec<Instant>>,
    /// Acks whose answer a SIGKILL cut off (their outcome is unknown).
    unknown: HashSet<u64>,
    /// Seqs a worker held when it died.
    abandoned: HashSet<u64>,
}

/// A request that may meet a dead server: its status and body, or `None`
/// when the connection failed.
async fn post(api: &Arc<RwLock<Api>>, path: &str, body: &Value) -> Option<(u16, Value)> {
    let api = api.read().unwrap().clone();
    let res = api
        .client
        .post(api.url(path))
        .json(body)
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let body = res.json().await.ok()?;
    Some((status, body))
}

async fn worker(id: u64, api: Arc<RwLock<Api>>, log: Arc<Mutex<Log>>, done: Arc<AtomicBool>) {
    let mut rng = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while !done.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let Some((status, body)) = post(
            &api,
            "/consumers/work/fetch",
            &json!({"max": 10, "wait": 1}),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if status != 200 {
            assert!(status == 503 || status == 429, "fetch -> {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let seqs: Vec<u64> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let seq = e["seq"].as_u64().unwrap();
                assert_eq!(e["event"]["data"]["n"], seq, "the event of its seq");
                seq
            })
            .collect();
        if seqs.is_empty() {
            continue;
        }
        {
            let mut l = log.lock().unwrap();
            l.deliveries.extend(seqs.iter().map(|s| (*s, sent)));
            // One batch in 40: the worker dies holding it.
            if next() % 40 == 0 {
                l.abandoned.extend(&seqs);
                continue;
            }
        }
        // Acks: the batch at once, or one by one after a conflict.
        let batch = post(&api, "/consumers/work/ack", &json!({"seqs": seqs})).await;
        let one_by_one = match batch {
            Some((200, _)) => {
                let now = Instant::now();
                let mut l = log.lock().unwrap();
                for s in &seqs {
                    l.acked.entry(*s).or_default().push(now);
                }
                continue;
            }
            None => {
                // The server died with the request: the outcome is unknown.
                log.lock().unwrap().unknown.extend(&seqs);
                continue;
            }
            Some((409, _)) | Some((429, _)) | Some((503, _)) => seqs,
            Some((status, body)) => panic!("ack -> {status} {body}"),
        };
        for s in one_by_one {
            loop {
                match post(&api, "/consumers/work/ack", &json!({"seq": s})).await {
                    Some((200, _)) => {
                        let now = Instant::now();
                        log.lock().unwrap().acked.entry(s).or_default().push(now);
                    }
                    Some((409, b))
                        if b["type"]
                            .as_str()
                            .unwrap_or("")
                            .ends_with("ack-in-progress") =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    // Acked by another worker (its lease ran out while this
                    // one worked) or not waiting any more.
                    Some((409, _)) => {}
                    Some((429, _)) | Some((503, _)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    None => {
                        log.lock().unwrap().unknown.insert(s);
                    }
                    Some((status, body)) => panic!("ack {s} -> {status} {body}"),
                }
                break;
            }
        }
    }
}

fn acked_count(log: &Mutex<Log>) -> usize {
    log.lock().unwrap().acked.len()
}

async fn kill_and_restart(proc: TestProcess, dir: &DataDir, api: &Arc<RwLock<Api>>) -> TestProcess {
    proc.kill().await;
    let proc = spawn_process(dir.path(), &[]).await;
    *api.write().unwrap() = proc.api.clone();
    proc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_share_a_queue_through_two_sigkills_and_every_event_is_acked_once() {
    let started = Instant::now();
    let dir = DataDir::temp();
    let mut proc = spawn_process(dir.path(), &[]).await;
    for first in (1..=EVENTS).step_by(1000) {
        proc.publish_batch(&events(first, 1000, |n| format!("s{}", n % 13)))
            .await;
    }
    create_queue(&proc, "work", json!({"lease": 1, "max_deliver": 1000})).await;
    let api = Arc::new(RwLock::new(proc.api.clone()));
    let log: Arc<Mutex<Log>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(id, api.clone(), log.clone(), done.clone())))
        .collect();

    for at in [6_000, 13_000] {
        while acked_count(&log) < at {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "stalled before {at}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proc = kill_and_restart(proc, &dir, &api).await;
    }
    // Until every event is done: acked with a 200, or acked by a request
    // whose answer the SIGKILL cut off (then the queue has nothing left).
    loop {
        assert!(started.elapsed() < Duration::from_secs(120), "stalled");
        let c = proc.get_json("/consumers/work").await;
        if c["queue"]["ack_floor"] == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let c = proc.get_json("/consumers/work").await;
    assert_eq!(c["queue"]["leased"], 0, "{c}");
    assert_eq!(c["queue"]["pending"], 0, "{c}");
    let left = proc
        .post("/consumers/work/fetch", Some(&json!({"max": 10})))
        .await;
    assert_eq!(left.json()["events"], json!([]), "nothing is left");

    let l = std::mem::take(&mut *log.lock().unwrap());
    let twice: Vec<_> = l.acked.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(twice.is_empty(), "acked twice with a 200: {twice:?}");
    let missing: Vec<u64> = (1..=EVENTS)
        .filter(|s| !l.acked.contains_key(s) && !l.unknown.contains(s))
        .collect();
    assert!(missing.is_empty(), "never acked: {missing:?}");
    let without_200 = (1..=EVENTS).filter(|s| !l.acked.contains_key(s)).count();
    assert!(
        without_200 <= 2 * (WORKERS as usize) * 10,
        "{without_200} events have no 200 ack; only acks cut off by the two SIGKILLs may lack one"
    );
    for (seq, fetch_sent) in &l.deliveries {
        if let Some(acked) = l.acked.get(seq) {
            assert!(
                *fetch_sent <= acked[0],
                "seq {seq} was delivered by a fetch sent after its ack answered 200"
            );
        }
    }
    let mut delivered: HashMap<u64, usize> = HashMap::new();
    for (seq, _) in &l.deliveries {
        *delivered.entry(*seq).or_default() += 1;
    }
    assert!(!l.abandoned.is_empty(), "some workers died");
    for seq in &l.abandoned {
        assert!(
            delivered[seq] >= 2,
            "seq {seq}, held by a worker that died, never came back"
        );
    }
    eprintln!(
        "queue crash test: {} deliveries, {} abandoned, {} acks cut off, {:?}",
        l.deliveries.len(),
        l.abandoned.len(),
        l.unknown.len(),
        started.elapsed()
    );
    proc.stop().await;
}
