//! The CloudEvents the load generator publishes: structured mode, about
//! [`EVENT_BYTES`] bytes of JSON each, every one with a unique `id` (a run
//! tag, the connection number and a per-connection counter), so msgbus never
//! answers a duplicate and every 201 is a new durable event.

use bytes::Bytes;

/// Size of one generated event body, in bytes (the issue asks for ~300).
pub const EVENT_BYTES: usize = 300;

/// `source` of every generated event.
pub const SOURCE: &str = "/bench/loadgen";
/// `type` of every generated event.
pub const TYPE: &str = "com.example.bench.order.created";

const PAD: [u8; EVENT_BYTES] = [b'x'; EVENT_BYTES];

/// A unique event id: `<tag>-<conn>-<n>`.
pub fn event_id(tag: &str, conn: usize, n: u64) -> String {
    format!("{tag}-{conn}-{n}")
}

/// Appends one event as JSON to `out`, padded (inside `data.note`) so that
/// it is exactly [`EVENT_BYTES`] long whenever the id leaves room.
pub fn write_event(out: &mut Vec<u8>, tag: &str, conn: usize, n: u64) {
    write_event_stamped(out, tag, conn, n, None);
}

/// Like [`write_event`], with `data.sent_ns` set to `sent_ns` when given
/// (the fan-out scenario's send timestamp, in place of `data.amount` and
/// `data.currency`; the same size).
pub fn write_event_stamped(
    out: &mut Vec<u8>,
    tag: &str,
    conn: usize,
    n: u64,
    sent_ns: Option<u64>,
) {
    let start = out.len();
    let id = event_id(tag, conn, n);
    let head = format!(
        concat!(
            r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"{ty}","#,
            r#""subject":"order-{n}","time":"2026-01-31T12:00:00.000Z","#,
            r#""datacontenttype":"application/json","data":{{"order":{n},"#,
            r#""customer":"customer-{c:04}","amount":12345,"currency":"EUR","note":""#
        ),
        id = id,
        source = SOURCE,
        ty = TYPE,
        n = n,
        c = conn % 10_000,
    );
    out.extend_from_slice(head.as_bytes());
    if let Some(ns) = sent_ns {
        // In place of `amount` and `currency` (longer than it for any
        // timestamp below ~3 hours), so a stamped event is no longer.
        const REPLACED: &[u8] = br#""amount":12345,"currency":"EUR","note":""#;
        out.truncate(out.len() - REPLACED.len());
        out.extend_from_slice(format!(r#""{SENT_NS}":{ns},"note":""#).as_bytes());
    }
    const TAIL: &[u8] = b"\"}}";
    let used = out.len() - start + TAIL.len();
    let pad = EVENT_BYTES.saturating_sub(used).min(PAD.len());
    out.extend_from_slice(&PAD[..pad]);
    out.extend_from_slice(TAIL);
}

/// One event as a request body.
pub fn single(tag: &str, conn: usize, n: u64) -> Bytes {
    let mut out = Vec::with_capacity(EVENT_BYTES + 16);
    write_event(&mut out, tag, conn, n);
    Bytes::from(out)
}

/// The field of `data` that carries the send timestamp of a stamped event.
pub const SENT_NS: &str = "sent_ns";

/// One event whose `data.sent_ns` is `sent_ns`, as a request body.
pub fn stamped(tag: &str, conn: usize, n: u64, sent_ns: u64) -> Bytes {
    let mut out = Vec::with_capacity(EVENT_BYTES + 16);
    write_event_stamped(&mut out, tag, conn, n, Some(sent_ns));
    Bytes::from(out)
}

/// A JSON array of `size` events; ids `first..first+size` of connection `conn`.
pub fn batch(tag: &str, conn: usize, first: u64, size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size * (EVENT_BYTES + 1) + 2);
    out.push(b'[');
    for i in 0..size as u64 {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, tag, conn, first + i);
    }
    out.push(b']');
    Bytes::from(out)
}

/// `type` of the order events of the schemas group.
pub const ORDER_TYPE: &str = "com.example.bench.order.placed";

/// Appends one order event as JSON to `out`: `data` has ten fields, two of
/// them nested (a customer object, a list of line items), the shape the
/// schemas group validates ([`crate::schemas::order_schema`]).
pub fn write_order(out: &mut Vec<u8>, tag: &str, conn: usize, n: u64) {
    let id = event_id(tag, conn, n);
    let body = format!(
        concat!(
            r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"{ty}","#,
            r#""subject":"order-{n}","time":"2026-01-31T12:00:00.000Z","#,
            r#""datacontenttype":"application/json","data":{{"order_id":"ord-{n}","#,
            r#""customer":{{"id":"customer-{c:04}","email":"c{c}@example.com","tier":"gold"}},"#,
            r#""items":[{{"sku":"SKU-1","qty":2,"price":19.5}},{{"sku":"SKU-2","qty":1,"price":5}}],"#,
            r#""total":44.0,"currency":"EUR","status":"placed","created_at":"2026-01-31T12:00:00Z","#,
            r#""priority":3,"gift":false,"note":"leave at the door"}}}}"#
        ),
        id = id,
        source = SOURCE,
        ty = ORDER_TYPE,
        n = n,
        c = conn % 10_000,
    );
    out.extend_from_slice(body.as_bytes());
}

/// One order event as a request body.
pub fn order_single(tag: &str, conn: usize, n: u64) -> Bytes {
    let mut out = Vec::with_capacity(512);
    write_order(&mut out, tag, conn, n);
    Bytes::from(out)
}

/// A JSON array of `size` order events.
pub fn order_batch(tag: &str, conn: usize, first: u64, size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size * 513 + 2);
    out.push(b'[');
    for i in 0..size as u64 {
        if i > 0 {
            out.push(b',');
        }
        write_order(&mut out, tag, conn, first + i);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_of_the_target_size_with_unique_ids() {
        let a = single("t1", 3, 7);
        let b = single("t1", 3, 8);
        assert_eq!(a.len(), EVENT_BYTES);
        let va: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let vb: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_ne!(va["id"], vb["id"]);
        assert_eq!(va["type"], TYPE);
        let arr: serde_json::Value = serde_json::from_slice(&batch("t1", 0, 0, 100)).unwrap();
        assert_eq!(arr.as_array().unwrap().len(), 100);
        // Long ids still produce valid JSON (no room left for padding).
        let long = single(&"z".repeat(400), 1, 1);
        serde_json::from_slice::<serde_json::Value>(&long).unwrap();
        let s = stamped("t1", 3, 9, 123_456_789_012);
        assert_eq!(s.len(), EVENT_BYTES);
        let vs: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(vs["data"][SENT_NS], 123_456_789_012u64);
    }
}
