//! The event model: CloudEvents 1.0, structured (a JSON object) or binary
//! (`ce-*` headers with the body as `data`). Parsing produces a
//! [`PreparedEvent`] (the exact bytes to store plus the attributes the index
//! needs) or every problem found, each naming its field.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::PreparedEvent;

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

/// Maximum lengths, in bytes, of the context attributes. Generous for real
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

/// The members of a JSON object with their values' JSON text, if `text` is
/// an object that can be stored member by member (see [`from_json`]).
fn raw_members(text: &[u8]) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    let RawMembers(members) = serde_json::from_slice(text).ok()?;
    // More members than an event may have: the Value path reports it (and a
    // quadratic duplicate check never runs on a huge object).
    if members.len() > KNOWN.len() + MAX_EXTENSIONS {
        return None;
    }
    for (i, (name, value)) in members.iter().enumerate() {
        if members[..i].iter().any(|(n, _)| n == name) {
            return None;
        }
        if value.get().bytes().any(|b| b == b'\n' || b == b'\r') {
            return None;
        }
    }
    Some(members)
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
    let mut out = Vec::with_capacity(
        members
            .iter()
            .map(|(n, v)| n.len() + v.get().len() + 4)
            .sum::<usize>()
            + 128,
    );
    out.push(b'{');
    for (i, (name, raw)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name.as_ref()).expect("writing to a Vec cannot fail");
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    for (name, value) in checked.filled() {
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("writing to a Vec cannot fail");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("writing to a Vec cannot fail");
    }
    out.push(b'}');
    checked.prepare(out, limits)
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
    let bytes = serde_json::to_vec(&Value::Object(obj)).expect("a JSON value serializes");
    checked.prepare(bytes, limits)
}

/// The field name for the event as a whole.
fn whole(path: &str) -> String {
    if path.is_empty() {
        "$".to_string()
    } else {
        path.trim_end_matches('.').to_string()
    }
}

/// An object's members with each value kept as its JSON text. Member names
/// without escapes borrow from the input.
struct RawMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(CowStr(name)) = map.next_key()? {
                    out.push((name, map.next_value()?));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A JSON string, borrowed when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Str)
    }
}

/// A member's value as validation sees it.
enum Attr<'a> {
    Str(Cow<'a, str>),
    Bool,
    /// An integer that fits an `i64`.
    Int(i64),
    /// Anything else: another number, null, an array, an object.
    Other,
}

impl<'a> Attr<'a> {
    fn from_value(v: &'a Value) -> Self {
        match v {
            Value::String(s) => Attr::Str(Cow::Borrowed(s)),
            Value::Bool(_) => Attr::Bool,
            Value::Number(n) => n.as_i64().map_or(Attr::Other, Attr::Int),
            _ => Attr::Other,
        }
    }

    fn from_raw(raw: &'a RawValue) -> Self {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                serde_json::from_str::<CowStr<'_>>(text).map_or(Attr::Other, |s| Attr::Str(s.0))
            }
            Some(b't' | b'f') => Attr::Bool,
            Some(b'-' | b'0'..=b'9') => text.parse::<i64>().map_or(Attr::Other, Attr::Int),
            _ => Attr::Other,
        }
    }
}

/// What validation found: the attributes the store needs, and the ones the
/// server fills in.
struct Checked {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: String,
    add_specversion: bool,
    add_id: bool,
    add_time: bool,
}

impl Checked {
    /// Members to append, in order: the ones the event did not have.
    fn filled(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (self.add_specversion, "specversion", "1.0"),
            (self.add_id, "id", self.id.as_str()),
            (self.add_time, "time", self.time.as_str()),
        ]
        .into_iter()
        .filter(|(add, _, _)| *add)
        .map(|(_, name, value)| (name, value))
    }

    fn prepare(self, bytes: Vec<u8>, limits: Limits) -> Result<PreparedEvent, EventError> {
        if bytes.len() > limits.max_event_bytes {
            return Err(EventError::TooLarge {
                size: bytes.len(),
                limit: limits.max_event_bytes,
            });
        }
        Ok(PreparedEvent {
            bytes: Bytes::from(bytes),
            id: self.id,
            source: self.source,
            ty: self.ty,
            subject: self.subject,
            time: self.time,
        })
    }
}

/// Checks an event's members against CloudEvents 1.0 and msgbus's limits,
/// reporting every problem, each naming its field.
fn validate(attrs: &[(&str, Attr<'_>)], path: &str) -> Result<Checked, EventError> {
    let get = |name: &str| attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let mut errors = Vec::new();
    let f = |name: &str| format!("{path}{name}");

    let add_specversion = match get("specversion") {
        None => true,
        Some(Attr::Str(s)) if s == "1.0" => false,
        Some(_) => {
            errors.push(FieldError::new(f("specversion"), "must be \"1.0\""));
            false
        }
    };
    let (id, add_id) = match get("id") {
        None => (Some(uuid::Uuid::now_v7().to_string()), true),
        Some(v) => (check_string(v, &f("id"), MAX_ID_LEN, &mut errors), false),
    };
    let source = match get("source") {
        None => {
            errors.push(FieldError::new(f("source"), "is required"));
            None
        }
        Some(v) => check_string(v, &f("source"), MAX_SOURCE_LEN, &mut errors),
    };
    let ty = match get("type") {
        None => {
            errors.push(FieldError::new(f("type"), "is required"));
            None
        }
        Some(v) => check_string(v, &f("type"), MAX_TYPE_LEN, &mut errors),
    };
    let subject =
        get("subject").and_then(|v| check_string(v, &f("subject"), MAX_SUBJECT_LEN, &mut errors));
    let (time, add_time) = match get("time") {
        None => (Some(now_rfc3339()), true),
        Some(v) => (
            check_string(v, &f("time"), 64, &mut errors).and_then(|t| {
                if chrono::DateTime::parse_from_rfc3339(&t).is_ok() {
                    Some(t)
                } else {
                    errors.push(FieldError::new(
                        f("time"),
                        "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z",
                    ));
                    None
                }
            }),
            false,
        ),
    };
    if let Some(v) = get("datacontenttype") {
        if let Some(ct) = check_string(v, &f("datacontenttype"), MAX_META_LEN, &mut errors) {
            if !ct.contains('/') {
                errors.push(FieldError::new(
                    f("datacontenttype"),
                    "must be a media type such as application/json",
                ));
            }
        }
    }
    if let Some(v) = get("dataschema") {
        check_string(v, &f("dataschema"), MAX_META_LEN, &mut errors);
    }
    if get("data").is_some() && get("data_base64").is_some() {
        errors.push(FieldError::new(
            f("data_base64"),
            "must not be present together with data",
        ));
    }
    if let Some(v) = get("data_base64") {
        match v {
            Attr::Str(s) if base64_ok(s) => {}
            _ => errors.push(FieldError::new(f("data_base64"), "must be a base64 string")),
        }
    }
    let mut extensions = 0;
    for (name, v) in attrs {
        if KNOWN.contains(name) {
            continue;
        }
        extensions += 1;
        let field = f(name);
        if name.is_empty()
            || name.len() > MAX_EXTENSION_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            errors.push(FieldError::new(
                field,
                format!(
                    "extension attribute names must be 1 to {MAX_EXTENSION_NAME_LEN} lower-case letters or digits (CloudEvents 1.0)"
                ),
            ));
            continue;
        }
        match v {
            Attr::Str(s) if s.len() > MAX_EXTENSION_VALUE_LEN => errors.push(FieldError::new(
                field,
                format!("must be at most {MAX_EXTENSION_VALUE_LEN} bytes"),
            )),
            Attr::Str(_) | Attr::Bool => {}
            Attr::Int(i) if i32::try_from(*i).is_ok() => {}
            _ => errors.push(FieldError::new(
                field,
                "extension values must be a string, a boolean or a 32-bit integer",
            )),
        }
    }
    if extensions > MAX_EXTENSIONS {
        errors.push(FieldError::new(
            whole(path),
            format!("at most {MAX_EXTENSIONS} extension attributes are allowed"),
        ));
    }
    if !errors.is_empty() {
        return Err(EventError::Invalid(errors));
    }
    Ok(Checked {
        id: id.unwrap_or_default(),
        source: source.unwrap_or_default(),
        ty: ty.unwrap_or_default(),
        subject,
        time: time.unwrap_or_default(),
        add_specversion,
        add_id,
        add_time,
    })
}

/// True when the request carries binary-mode CloudEvents headers.
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-type")
        || headers.contains_key("ce-specversion")
        || headers.contains_key("ce-source")
}

/// Parses a binary-mode event: attributes from `ce-*` headers, `data` from
/// the body, interpreted by `Content-Type` (JSON kept as JSON, text as a
/// string, anything else as `data_base64`).
pub fn from_binary(
    headers: &HeaderMap,
    body: &[u8],
    limits: Limits,
) -> Result<PreparedEvent, EventError> {
    let mut obj = Map::new();
    let mut errors = Vec::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let field = format!("ce-{attr}");
        let Ok(raw) = value.to_str() else {
            errors.push(FieldError::new(
                field,
                "header value must be ASCII (percent-encode other characters)",
            ));
            continue;
        };
        let decoded = match percent_decode(raw) {
            Some(s) => s,
            None => {
                errors.push(FieldError::new(
                    field,
                    "invalid percent-encoding or not UTF-8",
                ));
                continue;
            }
        };
        if matches!(attr, "data" | "data_base64") {
            errors.push(FieldError::new(
                field,
                "is not an attribute; send the data as the body",
            ));
            continue;
        }
        obj.insert(attr.to_string(), Value::String(decoded));
    }
    if !errors.is_empty() {
        return Err(EventError::Invalid(errors));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(ct) = &content_type {
        obj.insert("datacontenttype".into(), Value::String(ct.clone()));
    }
    if !body.is_empty() {
        let mime = content_type
            .as_deref()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime == "application/json" || mime.ends_with("+json") {
            let data: Value = serde_json::from_slice(body)
                .map_err(|e| EventError::Malformed(format!("body: {e}")))?;
            obj.insert("data".into(), data);
        } else if mime.starts_with("text/") || mime.is_empty() {
            match std::str::from_utf8(body) {
                Ok(s) => {
                    obj.insert("data".into(), Value::String(s.to_string()));
                }
                Err(_) => {
                    obj.insert("data_base64".into(), Value::String(base64_encode(body)));
                }
            }
        } else {
            obj.insert("data_base64".into(), Value::String(base64_encode(body)));
        }
    }
    // Header names do not say which attribute should be an integer or a
    // boolean; binary-mode extension values are kept as strings.
    from_structured(Value::Object(obj), "", limits).map_err(|e| match e {
        EventError::Invalid(errs) => EventError::Invalid(
            errs.into_iter()
                .map(|mut fe| {
                    if fe.field != "$" && !fe.field.starts_with("data") {
                        fe.field = format!("ce-{}", fe.field);
                    }
                    fe
                })
                .collect(),
        ),
        other => other,
    })
}

/// Checks a string attribute: a string, non-empty, at most `max` bytes, no
/// control characters. Records problems in `errors`.
fn check_string(
    v: &Attr<'_>,
    field: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Attr::Str(s) = v else {
        errors.push(FieldError::new(field, "must be a string"));
        return None;
    };
    if s.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
        return None;
    }
    if s.len() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
        return None;
    }
    if s.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
        return None;
    }
    Some(s.to_string())
}

/// The current time as RFC 3339 with microseconds, in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn base64_ok(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes `%XX` escapes (CloudEvents HTTP binding, header values).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const L: Limits = Limits {
        max_event_bytes: 1 << 20,
    };

    #[test]
    fn fills_id_time_and_specversion() {
        let ev = from_structured(json!({"type": "t", "source": "/s"}), "", L).unwrap();
        let v: Value = serde_json::from_slice(&ev.bytes).unwrap();
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
        let stored = std::str::from_utf8(&ev.bytes).unwrap();
        // data exactly as sent (no f64 rounding, no re-escaping), then the
        // attributes the server fills in, in the order the Value path uses.
        let prefix = r#"{"type":"t.x","source":"/s","data":{"n":12345678901234567890123,"f":1.50,"s":"\u00e9"},"ext":7,"specversion":"1.0","id":""#;
        assert!(stored.starts_with(prefix), "{stored}");
        let v: Value = serde_json::from_slice(&ev.bytes).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["time"], ev.time.as_str());
        assert_eq!((ev.ty.as_str(), ev.source.as_str()), ("t.x", "/s"));
    }

    #[test]
    fn json_text_and_value_paths_store_the_same_bytes_for_plain_json() {
        let sent = br#"{"specversion":"1.0","id":"a1","source":"/s","type":"t","time":"2026-01-31T12:00:00Z","subject":"x","data":{"k":[1,"two",true,null]}}"#;
        let raw = from_json(sent, "", L).unwrap();
        let tree = from_structured(serde_json::from_slice(sent).unwrap(), "", L).unwrap();
        assert_eq!(raw.bytes, tree.bytes);
        assert_eq!(&raw.bytes[..], &sent[..]);
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
        assert!(!ev.bytes.contains(&b'\n'));
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
        let v: Value = serde_json::from_slice(&ev.bytes).unwrap();
        assert_eq!(v["data"], json!({"k": 1}));
        assert_eq!(ev.id, "a b");
        h.insert("content-type", "application/octet-stream".parse().unwrap());
        let ev = from_binary(&h, &[0, 159, 146, 150], L).unwrap();
        let v: Value = serde_json::from_slice(&ev.bytes).unwrap();
        assert_eq!(v["data_base64"], "AJ+Slg==");
    }
}
