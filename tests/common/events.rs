//! CloudEvents built for tests.

use serde_json::{json, Value};

/// Test event number `n` of `ty` from `source`, with `pad` bytes of data:
/// id `e-<n>`, subject `s<n % 3>` (for filters), data `{n, pad}`.
pub fn event(n: u64, ty: &str, source: &str, pad: usize) -> Value {
    json!({
        "id": format!("e-{n}"),
        "type": ty,
        "source": source,
        "subject": format!("s{}", n % 3),
        "data": {"n": n, "pad": "x".repeat(pad)},
    })
}

/// `count` events numbered from `first`, all of type `t.x` from `/test`.
pub fn events(first: u64, count: u64, pad: usize) -> Vec<Value> {
    (first..first + count)
        .map(|n| event(n, "t.x", "/test", pad))
        .collect()
}

/// Event number `n` of a test stream `prefix`, which [`check_served`] can
/// check on its own: its data carries `n` and a pad of `pad` letters `x`
/// with its length, so any corruption of a served event is visible even if
/// it is still valid JSON. (Prefixes must not contain `x`.)
pub fn checkable_event(prefix: &str, n: u64, pad: usize) -> Value {
    assert!(!prefix.contains('x'), "prefixes must not contain x");
    json!({
        "type": "t.heal",
        "source": format!("/heal/{prefix}"),
        "id": format!("{prefix}-{n}"),
        "data": {"n": n, "len": pad, "pad": "x".repeat(pad)},
    })
}

/// Checks that a served event is a [`checkable_event`], uncorrupted.
pub fn check_served(ev: &Value) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: {ev}"));
    let Some(prefix) = ev["source"].as_str().and_then(|s| s.strip_prefix("/heal/")) else {
        return bad("source is not /heal/<prefix>");
    };
    let Some(n) = ev["data"]["n"].as_u64() else {
        return bad("data.n missing");
    };
    if ev["id"] != format!("{prefix}-{n}") {
        return bad("id does not match data.n");
    }
    if ev["type"] != "t.heal" {
        return bad("type is not t.heal");
    }
    let (Some(len), Some(pad)) = (ev["data"]["len"].as_u64(), ev["data"]["pad"].as_str()) else {
        return bad("data.len or data.pad missing");
    };
    if pad.len() as u64 != len || pad.bytes().any(|b| b != b'x') {
        return bad("data.pad is corrupt");
    }
    Ok(())
}
