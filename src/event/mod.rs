//! The event model: CloudEvents 1.0, structured (a JSON object) or binary
//! (`ce-*` headers with the body as `data`). Parsing produces a
//! [`PreparedEvent`] (the exact bytes to store plus the attributes the index
//! needs) or every problem found, each naming its field.
//!
//! - [`from_json`] (this file): structured events from JSON text, the
//!   publish path; [`from_structured`] for an already parsed `Value`
//! - `raw`: reading an object member by member, values kept as JSON text
//! - `validate`: the attribute checks shared by every path
//! - `binary`: binary mode (`ce-*` headers)

mod binary;
mod raw;
mod validate;

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

pub use binary::{from_binary, is_binary};
use raw::raw_members;
use validate::{validate, Attr};

use crate::clock::now_rfc3339;
use crate::sse::FRAME_HEADROOM;

/// A validation problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `type`, `[3].source`, `ce-type`.
    pub field: String,
    /// Why it was rejected.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// One or more attributes are invalid (HTTP 422).
    Invalid(Vec<FieldError>),
    /// The serialized event is larger than the limit (HTTP 413).
    TooLarge {
        /// Serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not valid JSON where JSON is required (HTTP 400).
    Malformed(String),
}

/// Limits applied while validating.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest serialized event accepted, in bytes.
    pub max_event_bytes: usize,
}

/// Maximum lengths, in characters, of the context attributes. Generous for real
/// use, small enough that the in-memory index stays small.
pub const MAX_ID_LEN: usize = 256;
/// Maximum length of `source`.
pub const MAX_SOURCE_LEN: usize = 1024;
/// Maximum length of `type`.
pub const MAX_TYPE_LEN: usize = 256;
/// Maximum length of `subject`.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Maximum length of `datacontenttype` and `dataschema`.
pub const MAX_META_LEN: usize = 1024;
/// Maximum length of an extension attribute's name (the spec's SHOULD).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;
/// Maximum length of a string extension value.
pub const MAX_EXTENSION_VALUE_LEN: usize = 4096;
/// Maximum number of extension attributes on one event.
pub const MAX_EXTENSIONS: usize = 64;

const KNOWN: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Parses a structured-mode event from its JSON text (a request body or one
/// item of a batch), filling in `id` (UUIDv7), `time` (now) and
/// `specversion` when absent. `path` prefixes field names (e.g. `[3].`).
///
/// The usual case is parsed once, without building a tree: each member's
/// value is kept as the JSON text it was sent as, the attributes are
/// checked from that text, and the stored event is those members in the
/// order sent (plus the filled-in ones), so `data` is neither parsed into a
/// `Value` nor serialized again. (Parsing into a `Value` and serializing it
/// back was most of the JSON work per event in profiles.) Anything unusual
/// (not an object, a repeated member name, line breaks inside a value, which
/// a JSON Lines record cannot hold, or a body that is not valid JSON) takes
/// the `Value` path of [`from_structured`], which also words the errors.
pub fn from_json(text: &[u8], path: &str, limits: Limits) -> Result<PreparedEvent, EventError> {
    match raw_members(text) {
        Some(members) => from_members(&members, path, limits),
        None => {
            let value: Value =
                serde_json::from_slice(text).map_err(|e| EventError::Malformed(e.to_string()))?;
            from_structured(value, path, limits)
        }
    }
}

fn from_members(
    members: &[(Cow<'_, str>, &RawValue)],
    path: &str,
    limits: Limits,
) -> Result<PreparedEvent, EventError> {
    let attrs: Vec<(&str, Attr<'_>)> = members
        .iter()
        .map(|(name, raw)| (name.as_ref(), Attr::from_raw(raw)))
        .collect();
    let checked = validate(&attrs, path)?;
    let mut out = PreparedEvent::buffer(
        members
            .iter()
            .map(|(n, v)| n.len() + v.get().len() + 4)
            .sum::<usize>()
            + 128,
    );
    let mut spans = PayloadSpans::default();
    out.push(b'{');
    let just_opened = out.len();
    for (i, (name, raw)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name.as_ref()).expect("writing to a Vec cannot fail");
        out.push(b':');
        let at = out.len() - FRAME_HEADROOM;
        out.extend_from_slice(raw.get().as_bytes());
        let span = Some(at..out.len() - FRAME_HEADROOM);
        match name.as_ref() {
            "data" => spans.data = span,
            "data_base64" => spans.data_base64 = true,
            "datacontenttype" => spans.datacontenttype = span,
            "dataschema" => spans.dataschema = span,
            _ => {}
        }
    }
    for (name, value) in checked.filled() {
        if out.len() > just_opened {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("writing to a Vec cannot fail");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("writing to a Vec cannot fail");
    }
    out.push(b'}');
    let mut ev = checked.prepare(out, limits)?;
    ev.payload = Some(spans);
    Ok(ev)
}

/// Parses a structured-mode event already parsed into a `Value` (binary
/// mode builds one from headers), filling in `id`, `time` and `specversion`
/// when absent. `path` prefixes field names (e.g. `[3].` inside a batch).
pub fn from_structured(
    value: Value,
    path: &str,
    limits: Limits,
) -> Result<PreparedEvent, EventError> {
    let Value::Object(mut obj) = value else {
        return Err(EventError::Invalid(vec![FieldError::new(
            whole(path),
            "an event must be a JSON object",
        )]));
    };
    let checked = {
        let attrs: Vec<(&str, Attr<'_>)> = obj
            .iter()
            .map(|(name, v)| (name.as_str(), Attr::from_value(v)))
            .collect();
        validate(&attrs, path)?
    };
    for (name, value) in checked.filled() {
        obj.insert(name.to_string(), Value::String(value.to_string()));
    }
    let mut buf = PreparedEvent::buffer(0);
    serde_json::to_writer(&mut buf, &Value::Object(obj)).expect("a JSON value serializes");
    checked.prepare(buf, limits)
}

/// The field name for the event as a whole.
fn whole(path: &str) -> String {
    if path.is_empty() {
        "$".to_string()
    } else {
        path.trim_end_matches('.').to_string()
    }
}

/// An event validated and serialized by a handler, ready for the writer.
/// Serialization happens on the async workers so the single writer thread
/// only frames, writes and syncs.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// [`FRAME_HEADROOM`] bytes of room, then the exact bytes to store
    /// (build it with [`PreparedEvent::buffer`]).
    pub buf: Vec<u8>,
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub ty: String,
    /// `subject`.
    pub subject: Option<String>,
    /// `time`.
    pub time: String,
    /// Where the payload's attributes sit in the bytes, when the event was
    /// built member by member (the common case): the payload check then
    /// finds `data` without reading the event again. `None`: read it.
    pub payload: Option<PayloadSpans>,
}

/// Where an event's payload attributes sit in its stored bytes (ranges of
/// [`PreparedEvent::bytes`]; each a member's JSON text, a string's with
/// its quotes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadSpans {
    /// `data`.
    pub data: Option<std::ops::Range<usize>>,
    /// Whether `data_base64` is present.
    pub data_base64: bool,
    /// `datacontenttype`.
    pub datacontenttype: Option<std::ops::Range<usize>>,
    /// `dataschema`.
    pub dataschema: Option<std::ops::Range<usize>>,
}

impl PreparedEvent {
    /// An empty event buffer: the headroom, and capacity for `len` bytes of
    /// event plus the end of its Server-Sent Events message.
    pub fn buffer(len: usize) -> Vec<u8> {
        crate::sse::buffer(len)
    }

    /// The exact bytes to store (empty once the writer has taken the
    /// buffer for the recent-events cache).
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(FRAME_HEADROOM..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    const L: Limits = Limits {
        max_event_bytes: 1 << 20,
    };

    #[test]
    fn fills_id_time_and_specversion() {
        let ev = from_structured(json!({"type": "t", "source": "/s"}), "", L).unwrap();
        let v: Value = serde_json::from_slice(ev.bytes()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], ev.id.as_str());
        assert!(chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn reports_every_bad_field() {
        let err = from_structured(
            json!({"type": "", "specversion": "0.3", "time": "yesterday", "Bad_Name": 1, "ok": 1.5}),
            "[2].",
            L,
        )
        .unwrap_err();
        let EventError::Invalid(errs) = err else {
            panic!("{err:?}")
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "[2].type",
            "[2].source",
            "[2].specversion",
            "[2].time",
            "[2].Bad_Name",
            "[2].ok",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn json_text_is_stored_member_by_member_in_the_order_sent() {
        let sent = br#"{"type":"t.x","source":"/s","data":{"n":12345678901234567890123,"f":1.50,"s":"\u00e9"},"ext":7}"#;
        let ev = from_json(sent, "", L).unwrap();
        let stored = std::str::from_utf8(ev.bytes()).unwrap();
        // data exactly as sent (no f64 rounding, no re-escaping), then the
        // attributes the server fills in, in the order the Value path uses.
        let prefix = r#"{"type":"t.x","source":"/s","data":{"n":12345678901234567890123,"f":1.50,"s":"\u00e9"},"ext":7,"specversion":"1.0","id":""#;
        assert!(stored.starts_with(prefix), "{stored}");
        let v: Value = serde_json::from_slice(ev.bytes()).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["time"], ev.time.as_str());
        assert_eq!((ev.ty.as_str(), ev.source.as_str()), ("t.x", "/s"));
    }

    #[test]
    fn json_text_and_value_paths_store_the_same_bytes_for_plain_json() {
        let sent = br#"{"specversion":"1.0","id":"a1","source":"/s","type":"t","time":"2026-01-31T12:00:00Z","subject":"x","data":{"k":[1,"two",true,null]}}"#;
        let raw = from_json(sent, "", L).unwrap();
        let tree = from_structured(serde_json::from_slice(sent).unwrap(), "", L).unwrap();
        assert_eq!(raw.bytes(), tree.bytes());
        assert_eq!(raw.bytes(), &sent[..]);
        assert_eq!(raw.subject.as_deref(), Some("x"));
    }

    #[test]
    fn unusual_json_takes_the_value_path() {
        // A repeated member: the last one wins, as with the Value path.
        let ev = from_json(br#"{"type":"a","source":"/s","type":"b","id":"1"}"#, "", L).unwrap();
        assert_eq!(ev.ty, "b");
        // Line breaks inside a value: stored on one line.
        let ev = from_json(
            b"{\"type\":\"t\",\"source\":\"/s\",\"id\":\"1\",\"data\":{\n  \"k\": 1\n}}",
            "",
            L,
        )
        .unwrap();
        assert!(!ev.bytes().contains(&b'\n'));
        // Escaped member names are the names they spell.
        let ev = from_json(br#"{"\u0074ype":"t","source":"/s","id":"1"}"#, "", L).unwrap();
        assert_eq!(ev.ty, "t");
        // Not an object, not JSON.
        let err = from_json(b"[1]", "[4].", L).unwrap_err();
        assert_eq!(
            err,
            EventError::Invalid(vec![FieldError::new(
                "[4]",
                "an event must be a JSON object"
            )])
        );
        assert!(matches!(
            from_json(b"{\"type\":", "", L),
            Err(EventError::Malformed(_))
        ));
    }

    #[test]
    fn json_a_value_parse_refuses_is_refused_on_both_paths() {
        for sent in [
            &br#"{"type":"t","source":"/s","data":"\ud800"}"#[..],
            br#"{"type":"t","source":"/s","data":{"a":["\udc00x"]}}"#,
            br#"{"type":"t","source":"/s","data":[1e999]}"#,
            br#"{"type":"t","source":"/s","ext":"\ud800"}"#,
            b"{\"type\":\"t\",\"source\":\"/s\",\"data\":\"a\tb\"}",
            &[
                &br#"{"type":"t","source":"/s","data":"#[..],
                &b"[".repeat(200),
                &b"]".repeat(200),
                b"}",
            ]
            .concat(),
        ] {
            let tree = serde_json::from_slice::<Value>(sent);
            assert!(tree.is_err(), "{}", String::from_utf8_lossy(sent));
            assert!(
                matches!(from_json(sent, "", L), Err(EventError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
        // What a Value parse accepts stays accepted: a valid surrogate pair,
        // a number beyond u64 (kept as sent), escapes in member names.
        for sent in [
            &br#"{"type":"t","source":"/s","data":"\ud83d\ude00"}"#[..],
            br#"{"type":"t","source":"/s","data":[18446744073709551616, -0, 1.5e300]}"#,
        ] {
            assert!(
                from_json(sent, "", L).is_ok(),
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
    }

    /// An event whose `data` is `item` nested `n` deep: `item item ... 0 ]...]`.
    fn nested(item: &[u8], n: usize) -> Vec<u8> {
        [
            &br#"{"type":"t","source":"/s","data":"#[..],
            &item.repeat(n),
            b"0",
            &b"]".repeat(n),
            b"}",
        ]
        .concat()
    }

    /// Brackets inside strings are text, not nesting: `["]",` repeated
    /// 5,000 deep is 5,000 levels (a Value parse refuses it, so must the
    /// JSON-text path), and a string full of brackets is one flat value.
    #[test]
    fn depth_counts_real_nesting_only() {
        let deep = nested(br#"["]","#, 5000);
        assert!(serde_json::from_slice::<Value>(&deep).is_err());
        assert!(
            matches!(from_json(&deep, "", L), Err(EventError::Malformed(_))),
            "5,000 levels with brackets in strings are refused as a parser would"
        );
        // Escaped quotes and backslashes do not end a string early.
        let escaped = nested(br#"["\"]\","#, 300);
        assert!(serde_json::from_slice::<Value>(&escaped).is_err());
        assert!(matches!(
            from_json(&escaped, "", L),
            Err(EventError::Malformed(_))
        ));
        let flat = [
            &br#"{"type":"t","source":"/s","data":""#[..],
            &b"[{".repeat(5000),
            br#"\\\"","x":"]]]}}}"}"#,
        ]
        .concat();
        let stored = from_json(&flat, "", L).expect("brackets inside strings are accepted");
        let back: Value = serde_json::from_slice(stored.bytes()).unwrap();
        assert_eq!(back["x"], "]]]}}}");
        // Nesting a parser accepts (under 128 levels) is kept as sent.
        let ok = nested(br#"["]","#, 100);
        assert!(serde_json::from_slice::<Value>(&ok).is_ok());
        assert!(from_json(&ok, "", L).is_ok());
    }

    /// Mutates a valid event at random (a fixed seed) and checks that the
    /// JSON-text path decides exactly as the Value path: the same 400s, the
    /// same 422s with the same fields, and when both store the event, the
    /// same JSON (member text may differ, e.g. `1.50` vs `1.5`).
    #[test]
    fn mutated_events_get_the_same_answer_on_both_paths() {
        let seed: &[u8] = br#"{"specversion":"1.0","id":"a-1","source":"/s","type":"t.x","time":"2026-01-31T12:00:00Z","subject":"sub","ext":12,"data":{"n":[1,2.5,-3e2],"s":"\u00e9\"","b":true,"z":null}}"#;
        const BYTES: &[u8] = b"\"\\{}[],:1e-.u +0aZ\n\t\x00\xff";
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let (mut stored, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut text = seed.to_vec();
            for _ in 0..1 + next(3) {
                let at = next(text.len());
                match next(3) {
                    0 => text[at] = BYTES[next(BYTES.len())],
                    1 => text.insert(at, BYTES[next(BYTES.len())]),
                    _ => {
                        text.remove(at);
                    }
                }
            }
            let raw = from_json(&text, "", L);
            let tree = serde_json::from_slice::<Value>(&text)
                .map_err(|e| EventError::Malformed(e.to_string()))
                .and_then(|v| from_structured(v, "", L));
            let shown = String::from_utf8_lossy(&text).to_string();
            match (&raw, &tree) {
                (Ok(a), Ok(b)) => {
                    let mut va: Value = serde_json::from_slice(a.bytes()).unwrap();
                    let mut vb: Value = serde_json::from_slice(b.bytes()).unwrap();
                    for generated in ["id", "time"] {
                        if va[generated] != vb[generated] {
                            va[generated] = Value::Null;
                            vb[generated] = Value::Null;
                        }
                    }
                    assert_eq!(va, vb, "{shown}");
                    stored += 1;
                }
                (Err(EventError::Malformed(_)), Err(EventError::Malformed(_))) => refused += 1,
                (Err(a), Err(b)) => {
                    assert_eq!(a, b, "{shown}");
                    refused += 1;
                }
                _ => panic!("{shown}: JSON text path {raw:?}, Value path {tree:?}"),
            }
        }
        assert!(
            stored > 1000 && refused > 1000,
            "{stored} stored, {refused} refused"
        );
    }

    #[test]
    fn both_paths_report_the_same_problems() {
        let sent = br#"{"type":"","specversion":"0.3","time":"yesterday","Bad_Name":1,"ok":1.5,"big":4294967296,"id":7}"#;
        let raw = from_json(sent, "[2].", L).unwrap_err();
        let tree = from_structured(serde_json::from_slice(sent).unwrap(), "[2].", L).unwrap_err();
        assert_eq!(raw, tree);
    }

    #[test]
    fn too_large_is_its_own_error() {
        let big = "x".repeat(2000);
        let err = from_structured(
            json!({"type": "t", "source": "/s", "data": big}),
            "",
            Limits {
                max_event_bytes: 1000,
            },
        )
        .unwrap_err();
        assert!(matches!(err, EventError::TooLarge { limit: 1000, .. }));
    }

    #[test]
    fn binary_mode_keeps_json_data_and_encodes_bytes() {
        let mut h = HeaderMap::new();
        h.insert("ce-type", "t.x".parse().unwrap());
        h.insert("ce-source", "/s".parse().unwrap());
        h.insert("ce-id", "a%20b".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let ev = from_binary(&h, br#"{"k":1}"#, L).unwrap();
        let v: Value = serde_json::from_slice(ev.bytes()).unwrap();
        assert_eq!(v["data"], json!({"k": 1}));
        assert_eq!(ev.id, "a b");
        h.insert("content-type", "application/octet-stream".parse().unwrap());
        let ev = from_binary(&h, &[0, 159, 146, 150], L).unwrap();
        let v: Value = serde_json::from_slice(ev.bytes()).unwrap();
        assert_eq!(v["data_base64"], "AJ+Slg==");
    }
}
