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

/// Times `f` over `n` events. With `SCHEMA_COST_ONLY` set, only stages
/// whose label contains it run (the others answer 0), so that an
/// instruction count (`valgrind --tool=callgrind`, repeatable on a busy
/// machine) can be taken of one stage: its count minus that of a run where
/// no stage matches, over `n + min(n, 10000)` calls (the warm-up too).
fn per_event(label: &str, n: usize, f: impl FnMut(usize)) -> f64 {
    if std::env::var("SCHEMA_COST_ONLY").is_ok_and(|only| !label.contains(&only)) {
        return 0.0;
    }
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
    assert!(events.iter().all(|e| {
        let p: Payload<'_> = serde_json::from_slice(e).unwrap();
        validator.accepts(p.data.unwrap().get()) == Some(true)
    }));
    let borrowed = per_event(
        "schema now: find data, borrowed reading, is_valid",
        n,
        |i| {
            let p: Payload<'_> = serde_json::from_slice(&events[i % 1000]).unwrap();
            black_box(validator.accepts(p.data.unwrap().get()));
        },
    );
    let texts: Vec<&str> = events
        .iter()
        .map(|e| {
            let p: Payload<'_> = serde_json::from_slice(e).unwrap();
            p.data.unwrap().get()
        })
        .collect();
    let read = per_event("  of which: the borrowed reading of data", n, |i| {
        black_box(msgbus::schemas::borrowed::Doc::read(texts[i % 1000]));
    });
    let docs: Vec<_> = texts
        .iter()
        .map(|t| msgbus::schemas::borrowed::Doc::read(t).unwrap())
        .collect();
    let valid_doc = per_event("  of which: is_valid on the borrowed reading", n, |i| {
        black_box(validator.accepts_doc(&docs[i % 1000]));
    });
    // The quick validator checks the text as it scans it (no reading
    // built); `accepts` and the publish path take it first.
    assert!(texts.iter().all(|t| validator.quick_check(t) == Some(true)));
    let quick = per_event("schema: the quick validator on data's text", n, |i| {
        black_box(validator.quick_check(texts[i % 1000]));
    });
    // The publish path itself: the envelope's parse (which notes where
    // `data` is), then the registry's check, as `POST /events` runs them.
    let registry = msgbus::schemas::Registry::new("");
    let ty = msgbus_bench::event::ORDER_TYPE.to_string();
    let version = msgbus::store::SchemaVersion {
        version: 1,
        schema: std::sync::Arc::new(msgbus_bench::schemas::order_schema()),
        created_at: "2026-11-30T00:00:00Z".into(),
    };
    let types = [(
        ty.clone(),
        msgbus::store::SchemaType {
            ty,
            versions: vec![version],
            deleted_at: None,
        },
    )];
    registry.refresh(&msgbus::store::SchemaCatalog {
        types: types.into_iter().collect(),
        generation: 1,
    });
    let checked = per_event("publish path: envelope, then Registry::check", n, |i| {
        let mut evs = vec![msgbus::event::from_json(&events[i % 1000], "", limits).unwrap()];
        registry.check(&mut evs, false, 100).expect("valid");
        black_box(evs);
    }) - envelope;
    let with_tree = reparse + tree + valid;
    println!(
        "with a Value tree: {with_tree:.0} ns/event = {:.0}% of the envelope's {envelope:.0} ns \
         (find data {reparse:.0}, build Value {tree:.0}, validate {valid:.0})",
        100.0 * with_tree / envelope
    );
    println!(
        "borrowed reading:  {borrowed:.0} ns/event = {:.0}% of the envelope (ratio to the tree path {:.2})",
        100.0 * borrowed / envelope,
        borrowed / with_tree
    );
    println!("  of which: find data {reparse:.0}, read {read:.0}, validate {valid_doc:.0}");
    println!(
        "quick validator:   {quick:.0} ns/event = {:.0}% of the envelope",
        100.0 * quick / envelope
    );
    println!(
        "the publish path's check (data noted by the envelope, borrowed reading, adds dataschema): \
         {checked:.0} ns/event = {:.0}% of the envelope",
        100.0 * checked / envelope
    );
}
