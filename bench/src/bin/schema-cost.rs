//! `schema-cost [N]`: what validating a payload against a JSON Schema
//! costs per event, stage by stage, on one core, beside what parsing the
//! event's envelope costs (the work every publish does anyway). Uses the
//! schemas group's order events and schema (`msgbus_bench::schemas`).
//! No server, no I/O: the figures are CPU time per event, the lower bound
//! of what validation takes from publishing throughput.

use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

// The server's allocator (src/main.rs): allocation is much of the cost.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn per_event(label: &str, n: usize, f: impl FnMut(usize)) -> f64 {
    let mut f = f;
    // Warm up, then time.
    for i in 0..n.min(10_000) {
        f(i);
    }
    let began = Instant::now();
    for i in 0..n {
        f(i);
    }
    let ns = began.elapsed().as_nanos() as f64 / n as f64;
    println!("{label:<48} {ns:>8.0} ns/event");
    ns
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let events: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            let mut out = Vec::new();
            msgbus_bench::event::write_order(&mut out, "cost", 1, i);
            out
        })
        .collect();
    let limits = msgbus::event::Limits {
        max_event_bytes: 1 << 20,
    };
    let validator = msgbus::schemas::compile(&msgbus_bench::schemas::order_schema())
        .expect("the order schema compiles");
    let datas: Vec<Value> = events
        .iter()
        .map(|e| {
            let p: Payload<'_> = serde_json::from_slice(e).unwrap();
            serde_json::from_str(p.data.unwrap().get()).unwrap()
        })
        .collect();
    assert!(datas.iter().all(|d| validator.is_valid(d)));

    println!("{n} order events ({} bytes each)", events[0].len());
    let envelope = per_event("envelope: parse and prepare (every publish)", n, |i| {
        black_box(msgbus::event::from_json(&events[i % 1000], "", limits).unwrap());
    });
    let reparse = per_event("schema: find data in the event again", n, |i| {
        let p: Payload<'_> = serde_json::from_slice(&events[i % 1000]).unwrap();
        black_box(p.data);
    });
    let tree = per_event("schema: build data's Value", n, |i| {
        let p: Payload<'_> = serde_json::from_slice(&events[i % 1000]).unwrap();
        let v: Value = serde_json::from_str(p.data.unwrap().get()).unwrap();
        black_box(v);
    }) - reparse;
    let valid = per_event("schema: is_valid on the built Value", n, |i| {
        black_box(validator.is_valid(&datas[i % 1000]));
    });
    println!(
        "schema total {:.0} ns/event = {:.0}% of the envelope's {envelope:.0} ns",
        reparse + tree + valid,
        100.0 * (reparse + tree + valid) / envelope
    );
    println!("  of which: find data {reparse:.0}, build Value {tree:.0}, validate {valid:.0}");
}
