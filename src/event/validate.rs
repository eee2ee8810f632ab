//! Checking an event's attributes against CloudEvents 1.0 and msgbus's
//! limits, the same way whether they come from JSON text or a `Value`.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use super::raw::CowStr;
use super::*;
use crate::sse::FRAME_HEADROOM;

/// A member's value as validation sees it.
pub(super) enum Attr<'a> {
    Str(Cow<'a, str>),
    Bool,
    /// An integer that fits an `i64`.
    Int(i64),
    /// Anything else: another number, null, an array, an object.
    Other,
}

impl<'a> Attr<'a> {
    pub(super) fn from_value(v: &'a Value) -> Self {
        match v {
            Value::String(s) => Attr::Str(Cow::Borrowed(s)),
            Value::Bool(_) => Attr::Bool,
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().and_then(integral))
                .map_or(Attr::Other, Attr::Int),
            _ => Attr::Other,
        }
    }

    pub(super) fn from_raw(raw: &'a RawValue) -> Self {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                serde_json::from_str::<CowStr<'_>>(text).map_or(Attr::Other, |s| Attr::Str(s.0))
            }
            Some(b't' | b'f') => Attr::Bool,
            Some(b'-' | b'0'..=b'9') => text
                .parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().and_then(integral))
                .map_or(Attr::Other, Attr::Int),
            _ => Attr::Other,
        }
    }
}

/// A JSON number written with a fraction or an exponent that is still an
/// integer (`52.0`, `1e2`): JSON has one number type, and JSON Schema's
/// `integer` (the published document) accepts them.
fn integral(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// What validation found: the attributes the store needs, and the ones the
/// server fills in.
pub(super) struct Checked {
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
    pub(super) fn filled(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (self.add_specversion, "specversion", "1.0"),
            (self.add_id, "id", self.id.as_str()),
            (self.add_time, "time", self.time.as_str()),
        ]
        .into_iter()
        .filter(|(add, _, _)| *add)
        .map(|(_, name, value)| (name, value))
    }

    /// The event for the writer; `buf` is a [`PreparedEvent::buffer`]
    /// holding the serialized event.
    pub(super) fn prepare(self, buf: Vec<u8>, limits: Limits) -> Result<PreparedEvent, EventError> {
        let size = buf.len() - FRAME_HEADROOM;
        if size > limits.max_event_bytes {
            return Err(EventError::TooLarge {
                size,
                limit: limits.max_event_bytes,
            });
        }
        Ok(PreparedEvent {
            buf,
            id: self.id,
            source: self.source,
            ty: self.ty,
            subject: self.subject,
            time: self.time,
            payload: None,
        })
    }
}

/// Checks an event's members against CloudEvents 1.0 and msgbus's limits,
/// reporting every problem, each naming its field.
pub(super) fn validate(attrs: &[(&str, Attr<'_>)], path: &str) -> Result<Checked, EventError> {
    let get = |name: &str| attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let mut errors = Vec::new();
    // Field names are formatted only for errors: this runs for every event.
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
        Some(v) => (check_string(v, f, "id", MAX_ID_LEN, &mut errors), false),
    };
    let source = match get("source") {
        None => {
            errors.push(FieldError::new(f("source"), "is required"));
            None
        }
        Some(v) => check_string(v, f, "source", MAX_SOURCE_LEN, &mut errors),
    };
    let ty = match get("type") {
        None => {
            errors.push(FieldError::new(f("type"), "is required"));
            None
        }
        Some(v) => check_string(v, f, "type", MAX_TYPE_LEN, &mut errors),
    };
    let subject =
        get("subject").and_then(|v| check_string(v, f, "subject", MAX_SUBJECT_LEN, &mut errors));
    let (time, add_time) = match get("time") {
        None => (Some(now_rfc3339()), true),
        Some(v) => (
            check_string(v, f, "time", 64, &mut errors).and_then(|t| {
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
        if let Some(ct) = check_string(v, f, "datacontenttype", MAX_META_LEN, &mut errors) {
            if !ct.contains('/') {
                errors.push(FieldError::new(
                    f("datacontenttype"),
                    "must be a media type such as application/json",
                ));
            }
        }
    }
    if let Some(v) = get("dataschema") {
        check_string(v, f, "dataschema", MAX_META_LEN, &mut errors);
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
        let field = || f(name);
        if name.is_empty()
            || name.len() > MAX_EXTENSION_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            errors.push(FieldError::new(
                field(),
                format!(
                    "extension attribute names must be 1 to {MAX_EXTENSION_NAME_LEN} lower-case letters or digits (CloudEvents 1.0)"
                ),
            ));
            continue;
        }
        match v {
            Attr::Str(s) if s.chars().count() > MAX_EXTENSION_VALUE_LEN => {
                errors.push(FieldError::new(
                    field(),
                    format!("must be at most {MAX_EXTENSION_VALUE_LEN} characters"),
                ))
            }
            Attr::Str(_) | Attr::Bool => {}
            Attr::Int(i) if i32::try_from(*i).is_ok() => {}
            _ => errors.push(FieldError::new(
                field(),
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

/// Checks a string attribute: a string, non-empty, at most `max` characters, no
/// control characters. Records problems in `errors`.
fn check_string(
    v: &Attr<'_>,
    field_path: impl Fn(&str) -> String,
    name: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let field = || field_path(name);
    let Attr::Str(s) = v else {
        errors.push(FieldError::new(field(), "must be a string"));
        return None;
    };
    if s.is_empty() {
        errors.push(FieldError::new(field(), "must not be empty"));
        return None;
    }
    // Characters, as JSON Schema's maxLength counts them (the published
    // document states these limits).
    if s.chars().count() > max {
        errors.push(FieldError::new(
            field(),
            format!("must be at most {max} characters"),
        ));
        return None;
    }
    if s.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field(),
            "must not contain control characters",
        ));
        return None;
    }
    Some(s.to_string())
}

fn base64_ok(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}
