//! Crash test: a real process under concurrent load is SIGKILLed, twenty
//! times on the same data directory. Every acknowledged (201) event must be
//! present after each restart, exactly once, at the seq it was given, with
//! its content; sequence numbers stay gapless; a repeat of an acknowledged
//! event is still recognised as a duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::files::{segment_files, DataDir};
use crate::common::http::Api;
use crate::common::process::spawn_process;

const ITERATIONS: u64 = 20;
const CLIENTS: u64 = 64;

fn event(iter: u64, client: u64, n: u64) -> Value {
    json!({
        "type": format!("crash.t{}", n % 3),
        "source": format!("/crash/c{client}"),
        "id": format!("i{iter}-c{client}-n{n}"),
        "subject": format!("i{iter}"),
        "data": {"iter": iter, "client": client, "n": n, "pad": "p".repeat((n % 7 * 20) as usize)}
    })
}

/// What one client did: every event it sent (acknowledged or not) and the
/// seq of each acknowledged one.
struct ClientLog {
    sent: Vec<Value>,
    acked: Vec<(u64, Value)>,
}

async fn client(
    api: Api,
    iter: u64,
    client: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> ClientLog {
    let mut log = ClientLog {
        sent: Vec::new(),
        acked: Vec::new(),
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let ev = event(iter, client, n);
        n += 1;
        log.sent.push(ev.clone());
        let Ok(res) = api.client.post(api.url("/events")).json(&ev).send().await else {
            break; // the server is gone
        };
        let status = res.status().as_u16();
        let location = res.headers().get("location").cloned();
        let Ok(body) = res.json::<Value>().await else {
            break; // cut off mid-answer: not acknowledged
        };
        match status {
            201 => {
                let seq = body["seq"].as_u64().expect("201 carries a seq");
                assert_eq!(body["id"], ev["id"]);
                assert_eq!(body["duplicate"], false);
                assert_eq!(
                    location.as_ref().and_then(|l| l.to_str().ok()),
                    Some(format!("/events/{seq}").as_str())
                );
                log.acked.push((seq, ev));
                acks.fetch_add(1, Ordering::SeqCst);
            }
            503 => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("unexpected status {other} for {ev}: {body}"),
        }
    }
    log
}

/// Reads everything back and checks it against what was sent and acked.
async fn verify(
    api: &Api,
    acked: &BTreeMap<u64, Value>,
    sent: &HashMap<String, Value>,
    round: u64,
) -> usize {
    let stored = api.read_all().await;
    let mut ids = HashSet::new();
    for (i, (seq, ev)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "round {round}: seqs are gapless from 1");
        let id = ev["id"].as_str().expect("stored id").to_string();
        assert!(ids.insert(id.clone()), "round {round}: {id} stored twice");
        let original = sent
            .get(&id)
            .unwrap_or_else(|| panic!("round {round}: stored event {id} was never sent"));
        for attr in ["type", "source", "subject", "data"] {
            assert_eq!(ev[attr], original[attr], "round {round}: {id} {attr}");
        }
    }
    for (seq, ev) in acked {
        let stored_ev = &stored
            .get(*seq as usize - 1)
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged seq {seq} ({}) is lost; only {} stored",
                    ev["id"],
                    stored.len()
                )
            })
            .1;
        assert_eq!(
            stored_ev["id"], ev["id"],
            "round {round}: acknowledged seq {seq} holds another event"
        );
    }
    let page = api.get_json("/events?limit=1").await;
    assert_eq!(page["last_seq"], stored.len(), "round {round}: head");
    stored.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_repeated_sigkill() {
    // Small segments, so that segments are sealed (and backed up) under the
    // load and the kills land in the middle of that too.
    let args = ["--segment-bytes", "256KiB"];
    let dir = DataDir::temp();
    let mut acked: BTreeMap<u64, Value> = BTreeMap::new();
    let mut sent: HashMap<String, Value> = HashMap::new();
    let started = Instant::now();

    for iter in 0..=ITERATIONS {
        let proc_ = spawn_process(dir.path(), &args).await;
        let stored = verify(&proc_.api, &acked, &sent, iter).await;

        // An acknowledged event is still a duplicate after the crash.
        if let Some((seq, ev)) = acked.iter().next_back() {
            let res = proc_.publish(ev).await;
            assert_eq!(res.status, 200, "round {iter}: a repeat is a duplicate");
            let body: Value = res.json();
            assert_eq!(&body["seq"], seq);
            assert_eq!(body["duplicate"], true);
        }
        if iter == ITERATIONS {
            eprintln!(
                "crash test: {} acknowledged, {stored} stored, {} sent, {ITERATIONS} SIGKILLs in {:?}",
                acked.len(),
                sent.len(),
                started.elapsed()
            );
            proc_.kill().await;
            let segments = segment_files(dir.path()).len();
            assert!(segments > 1, "segments were sealed during the test");
            break;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    proc_.api.clone(),
                    iter,
                    c,
                    stop.clone(),
                    acks.clone(),
                ))
            })
            .collect();
        let load = Duration::from_millis(300 + (iter * 137) % 300);
        tokio::time::sleep(load).await;
        // On a loaded machine the first answer can take longer than the
        // load time; the kill must still land among acknowledged writes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        proc_.kill().await;

        let mut acked_now = 0;
        for t in tasks {
            let log = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("clients stop once the server is gone")
                .expect("client task");
            for ev in log.sent {
                let id = ev["id"].as_str().unwrap().to_string();
                assert!(sent.insert(id, ev).is_none(), "ids are unique");
            }
            for (seq, ev) in log.acked {
                acked_now += 1;
                if let Some(other) = acked.insert(seq, ev.clone()) {
                    panic!(
                        "round {iter}: seq {seq} acknowledged twice: {} and {}",
                        other["id"], ev["id"]
                    );
                }
            }
        }
        assert!(
            acked_now > 0,
            "round {iter}: no event was acknowledged in {load:?}"
        );
    }
}
