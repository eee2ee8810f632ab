//! The event model: CloudEvents 1.0, structured (a JSON object) or binary
//! (`ce-*` headers with the body as `data`). Parsing produces a
//! [`PreparedEvent`] (the exact bytes to store plus the attributes the index
//! needs) or every problem found, each naming its field.

use bytes::Bytes;
use http::HeaderMap;
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

/// Parses a structured-mode event (a JSON object), filling in `id` (UUIDv7),
/// `time` (now) and `specversion` when absent. `path` prefixes field names
/// (e.g. `[3].` inside a batch).
pub fn from_structured(
    value: Value,
    path: &str,
    limits: Limits,
) -> Result<PreparedEvent, EventError> {
    let Value::Object(mut obj) = value else {
        return Err(EventError::Invalid(vec![FieldError::new(
            if path.is_empty() {
                "$".to_string()
            } else {
                path.trim_end_matches('.').to_string()
            },
            "an event must be a JSON object",
        )]));
    };
    let mut errors = Vec::new();
    let f = |name: &str| format!("{path}{name}");

    match obj.get("specversion") {
        None => {
            obj.insert("specversion".into(), Value::String("1.0".into()));
        }
        Some(Value::String(s)) if s == "1.0" => {}
        Some(_) => errors.push(FieldError::new(f("specversion"), "must be \"1.0\"")),
    }
    let id = match obj.get("id") {
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            obj.insert("id".into(), Value::String(id.clone()));
            Some(id)
        }
        Some(v) => check_string(v, &f("id"), MAX_ID_LEN, true, &mut errors),
    };
    let source = match obj.get("source") {
        None => {
            errors.push(FieldError::new(f("source"), "is required"));
            None
        }
        Some(v) => check_string(v, &f("source"), MAX_SOURCE_LEN, true, &mut errors),
    };
    let ty = match obj.get("type") {
        None => {
            errors.push(FieldError::new(f("type"), "is required"));
            None
        }
        Some(v) => check_string(v, &f("type"), MAX_TYPE_LEN, true, &mut errors),
    };
    let subject = obj
        .get("subject")
        .and_then(|v| check_string(v, &f("subject"), MAX_SUBJECT_LEN, true, &mut errors));
    let time = match obj.get("time") {
        None => {
            let now = now_rfc3339();
            obj.insert("time".into(), Value::String(now.clone()));
            Some(now)
        }
        Some(v) => check_string(v, &f("time"), 64, true, &mut errors).and_then(|t| {
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
    };
    if let Some(v) = obj.get("datacontenttype") {
        if let Some(ct) = check_string(v, &f("datacontenttype"), MAX_META_LEN, true, &mut errors) {
            if !ct.contains('/') {
                errors.push(FieldError::new(
                    f("datacontenttype"),
                    "must be a media type such as application/json",
                ));
            }
        }
    }
    if let Some(v) = obj.get("dataschema") {
        check_string(v, &f("dataschema"), MAX_META_LEN, true, &mut errors);
    }
    if obj.contains_key("data") && obj.contains_key("data_base64") {
        errors.push(FieldError::new(
            f("data_base64"),
            "must not be present together with data",
        ));
    }
    if let Some(v) = obj.get("data_base64") {
        match v {
            Value::String(s) if base64_ok(s) => {}
            _ => errors.push(FieldError::new(f("data_base64"), "must be a base64 string")),
        }
    }
    let mut extensions = 0;
    for (name, v) in &obj {
        if KNOWN.contains(&name.as_str()) {
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
            Value::String(s) if s.len() > MAX_EXTENSION_VALUE_LEN => errors.push(FieldError::new(
                field,
                format!("must be at most {MAX_EXTENSION_VALUE_LEN} bytes"),
            )),
            Value::String(_) | Value::Bool(_) => {}
            Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {}
            _ => errors.push(FieldError::new(
                field,
                "extension values must be a string, a boolean or a 32-bit integer",
            )),
        }
    }
    if extensions > MAX_EXTENSIONS {
        errors.push(FieldError::new(
            if path.is_empty() {
                "$".to_string()
            } else {
                path.trim_end_matches('.').to_string()
            },
            format!("at most {MAX_EXTENSIONS} extension attributes are allowed"),
        ));
    }
    if !errors.is_empty() {
        return Err(EventError::Invalid(errors));
    }
    let bytes = serde_json::to_vec(&Value::Object(obj)).expect("a JSON value serializes");
    if bytes.len() > limits.max_event_bytes {
        return Err(EventError::TooLarge {
            size: bytes.len(),
            limit: limits.max_event_bytes,
        });
    }
    Ok(PreparedEvent {
        bytes: Bytes::from(bytes),
        id: id.unwrap_or_default(),
        source: source.unwrap_or_default(),
        ty: ty.unwrap_or_default(),
        subject,
        time: time.unwrap_or_default(),
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
    v: &Value,
    field: &str,
    max: usize,
    nonempty: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Value::String(s) = v else {
        errors.push(FieldError::new(field, "must be a string"));
        return None;
    };
    if nonempty && s.is_empty() {
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
    Some(s.clone())
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
