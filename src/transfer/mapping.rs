//! One import record to the CloudEvent to publish, or the reason it cannot
//! be made valid.
//!
//! **CloudEvents records** (a record with `specversion` or `type`, from
//! NDJSON or an array) are sent member for member as they are, so an
//! export imported again is stored byte for byte as it was; only the
//! `msgbusseq` attribute an export adds is dropped (the new store assigns
//! its own seqs), a `{"seq":N,"event":{...}}` envelope (`export
//! --with-seq`) is unwrapped (a `msgbusseq` inside it is the event's own
//! and kept), `--default-source` fills a missing `source`,
//! and a record without an `id` gets one from its content.
//!
//! **Predecessor records** (every record of a `{"events": [...]}` file, and
//! records of other files without `specversion` or `type`) are mapped:
//!
//! | CloudEvents | from (first present) |
//! |---|---|
//! | `type` | `event_type`, `type` |
//! | `source` | `agent`, `source_agent`, `source`, else `--default-source` |
//! | `time` | `timestamp`, `time` (RFC 3339; without a zone, read in `--timezone`, UTC by default; a number is Unix seconds) |
//! | `data` | `data`, `payload` |
//! | `id` | `id` (a number becomes its text); none: `imp-` + 32 hex digits of the record's SHA-256 |
//! | `subject` | `subject` |
//!
//! `--map attr=field` replaces the list for one attribute (any CloudEvents
//! attribute or extension name); `field` may be a dotted path into the
//! record (`data.story`). Every member of the record that no attribute
//! took is kept: as an extension attribute of the same name when the name
//! and value can be one (1 to 20 lower-case letters or digits; a string,
//! boolean or 32-bit integer), and all others together, as their JSON
//! text, in the `unmapped` extension attribute.

use std::collections::BTreeSet;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::records::Format;
use crate::event::{self, EventError, Limits};

/// The attribute an export adds for the seq, dropped on import.
pub const SEQ_ATTRIBUTE: &str = "msgbusseq";
/// The extension attribute that keeps a predecessor record's members no
/// attribute took and that cannot be extensions themselves.
pub const UNMAPPED_ATTRIBUTE: &str = "unmapped";

/// How records become events.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// `--map attr=field`, in order.
    pub overrides: Vec<(String, String)>,
    /// `--default-source`.
    pub default_source: Option<String>,
    /// `--timezone`, seconds east of UTC.
    pub utc_offset_secs: i32,
    /// The server's validation limits (checked here first, so a bad
    /// record is named without costing its batch).
    pub limits: Limits,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            overrides: Vec::new(),
            default_source: None,
            utc_offset_secs: 0,
            limits: Limits {
                max_event_bytes: 1 << 20,
            },
        }
    }
}

/// Parses `--map attr=field`.
pub fn parse_override(s: &str) -> Result<(String, String), MappingError> {
    match s.split_once('=') {
        Some((a, f)) if !a.is_empty() && !f.is_empty() => Ok((a.to_string(), f.to_string())),
        _ => Err(MappingError(format!(
            "--map {s:?}: expected ATTRIBUTE=FIELD, e.g. type=kind or subject=data.story"
        ))),
    }
}

/// Parses `--timezone`: `UTC`, `Z`, or a fixed offset (`+02:00`, `-0530`).
pub fn parse_timezone(s: &str) -> Result<i32, MappingError> {
    let bad = || {
        MappingError(format!(
            "--timezone {s:?}: expected UTC or a fixed offset such as +02:00 or -05:30"
        ))
    };
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: i32 = digits[..2].parse().map_err(|_| bad())?;
    let m: i32 = digits[2..].parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// Why a record cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

impl From<String> for Rejection {
    fn from(s: String) -> Self {
        Rejection(s)
    }
}

impl From<&str> for Rejection {
    fn from(s: &str) -> Self {
        Rejection(s.to_string())
    }
}

/// A bad mapping setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

impl Mapping {
    /// The event to publish for `raw`, a record of a file of `format`, or
    /// why it cannot be one.
    pub fn convert(&self, raw: &RawValue, format: Format) -> Result<Vec<u8>, Rejection> {
        let text = raw.get();
        let members = raw_members(text).ok_or("a record must be a JSON object")?;
        let cloudevent = format != Format::Predecessor
            && (is_envelope(&members)
                || members
                    .iter()
                    .any(|(n, _)| n == "specversion" || n == "type"));
        let out = if cloudevent {
            self.cloudevent(text, members)?
        } else {
            self.predecessor(text)?
        };
        match event::from_json(&out, "", self.limits) {
            Ok(_) => Ok(out),
            Err(EventError::Invalid(errors)) => Err(errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
                .into()),
            Err(EventError::TooLarge { size, limit }) => Err(format!(
                "the event is {size} bytes; the limit is {limit} bytes (--max-event-bytes)"
            )
            .into()),
            Err(EventError::Malformed(e)) => Err(format!("malformed JSON: {e}").into()),
        }
    }

    fn cloudevent(
        &self,
        text: &str,
        mut members: Vec<(String, Box<RawValue>)>,
    ) -> Result<Vec<u8>, Rejection> {
        if is_envelope(&members) {
            let event = members
                .into_iter()
                .find(|(n, _)| n == "event")
                .map(|(_, v)| v)
                .ok_or("an envelope without its event")?;
            // The seq is outside: a msgbusseq inside is the event's own.
            members = raw_members(event.get()).ok_or("`event` must be a JSON object")?;
        } else {
            members.retain(|(n, _)| n != SEQ_ATTRIBUTE);
        }
        let has = |name: &str, m: &[(String, Box<RawValue>)]| m.iter().any(|(n, _)| n == name);
        if !has("source", &members) {
            if let Some(s) = &self.default_source {
                members.push(("source".into(), to_raw(&Value::String(s.clone()))));
            }
        }
        if !has("id", &members) {
            members.push(("id".into(), to_raw(&Value::String(content_id(text)))));
        }
        let mut out = Vec::with_capacity(text.len() + 64);
        out.push(b'{');
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name).expect("writing to a Vec cannot fail");
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        Ok(out)
    }

    fn predecessor(&self, text: &str) -> Result<Vec<u8>, Rejection> {
        let record: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut taken = BTreeSet::new();
        let mut find = |attr: &str, defaults: &[&str]| -> Option<(String, Value)> {
            let over: Vec<&str> = self
                .overrides
                .iter()
                .filter(|(a, _)| a == attr)
                .map(|(_, f)| f.as_str())
                .collect();
            let fields: &[&str] = if over.is_empty() { defaults } else { &over };
            for f in fields {
                if let Some(v) = lookup(&record, f) {
                    if !f.contains('.') {
                        taken.insert(f.to_string());
                    }
                    return Some((f.to_string(), v.clone()));
                }
            }
            None
        };
        let mut ev = Map::new();
        ev.insert("specversion".into(), Value::String("1.0".into()));
        let id = match find("id", &["id"]) {
            Some((_, Value::String(s))) => s,
            Some((_, Value::Number(n))) => n.to_string(),
            Some((f, _)) => return Err(format!("{f}: the id must be a string or a number").into()),
            None => content_id(text),
        };
        ev.insert("id".into(), Value::String(id));
        let source = match find("source", &["agent", "source_agent", "source"]) {
            Some((_, Value::String(s))) => s,
            Some((f, _)) => return Err(format!("{f}: the source must be a string").into()),
            None => self.default_source.clone().ok_or(
                "no source: the record has no agent, source_agent or source (give --default-source)",
            )?,
        };
        ev.insert("source".into(), Value::String(source));
        match find("type", &["event_type", "type"]) {
            Some((_, Value::String(s))) => ev.insert("type".into(), Value::String(s)),
            Some((f, _)) => return Err(format!("{f}: the type must be a string").into()),
            None => return Err("no type: the record has no event_type or type".into()),
        };
        if let Some((f, v)) = find("subject", &["subject"]) {
            match v {
                Value::String(s) => ev.insert("subject".into(), Value::String(s)),
                _ => return Err(format!("{f}: the subject must be a string").into()),
            };
        }
        if let Some((f, v)) = find("time", &["timestamp", "time"]) {
            let t = read_time(&v, self.utc_offset_secs)
                .ok_or_else(|| format!("{f}: {v} is not a timestamp this reads (RFC 3339, `YYYY-MM-DD HH:MM:SS`, or Unix seconds)"))?;
            ev.insert("time".into(), Value::String(t));
        }
        for attr in ["datacontenttype", "dataschema"] {
            if let Some((_, v)) = find(attr, &[attr]) {
                ev.insert(attr.into(), v);
            }
        }
        // Extensions named by --map.
        for (attr, _) in &self.overrides {
            if ev.contains_key(attr) || matches!(attr.as_str(), "data" | "data_base64") {
                continue;
            }
            if let Some((_, v)) = find(attr, &[]) {
                ev.insert(attr.clone(), v);
            }
        }
        let data = find("data", &["data", "payload"]);
        let mut unmapped = Map::new();
        for (name, value) in &record {
            if taken.contains(name) || ev.contains_key(name) {
                continue;
            }
            if extension_name(name) && extension_value(value) {
                ev.insert(name.clone(), value.clone());
            } else {
                unmapped.insert(name.clone(), value.clone());
            }
        }
        if !unmapped.is_empty() {
            ev.insert(
                UNMAPPED_ATTRIBUTE.into(),
                Value::String(Value::Object(unmapped).to_string()),
            );
        }
        if let Some((_, v)) = data {
            ev.insert("data".into(), v);
        }
        serde_json::to_vec(&Value::Object(ev)).map_err(|e| Rejection(e.to_string()))
    }
}

fn is_envelope(members: &[(String, Box<RawValue>)]) -> bool {
    members.len() == 2
        && members.iter().any(|(n, _)| n == "seq")
        && members
            .iter()
            .any(|(n, v)| n == "event" && v.get().trim_start().starts_with('{'))
}

/// `imp-` and the first 32 hex digits of the record text's SHA-256: the
/// same record gets the same id in every import, so a second import of a
/// file stores nothing again.
pub fn content_id(text: &str) -> String {
    let digest = Sha256::digest(text.trim().as_bytes());
    format!("imp-{}", &hex::encode(digest)[..32])
}

fn to_raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("a serialized value is JSON")
}

fn lookup<'a>(record: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = record.get(path) {
        return (!v.is_null()).then_some(v);
    }
    let mut parts = path.split('.');
    let mut v = record.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

fn extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !matches!(
            name,
            "specversion" | "data" | "time" | "id" | "source" | "type"
        )
}

fn extension_value(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().count() <= event::MAX_EXTENSION_VALUE_LEN,
        Value::Bool(_) => true,
        Value::Number(n) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        _ => false,
    }
}

/// A timestamp as RFC 3339 in UTC: RFC 3339 with a zone as given (moved to
/// UTC); a date and time without a zone read at `offset` seconds east of
/// UTC; a number as Unix seconds (milliseconds above 10^11).
pub fn read_time(v: &Value, offset: i32) -> Option<String> {
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
    let utc: DateTime<Utc> = match v {
        Value::Number(n) => {
            let f = n.as_f64()?;
            let ms = if f.abs() > 1e11 { f } else { f * 1000.0 };
            DateTime::from_timestamp_millis(ms as i64)?
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                t.with_timezone(&Utc)
            } else if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
                t.with_timezone(&Utc)
            } else {
                let naive = [
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M",
                    "%Y-%m-%d %H:%M",
                ]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .or_else(|| {
                    NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })?;
                FixedOffset::east_opt(offset)?
                    .from_local_datetime(&naive)
                    .single()?
                    .with_timezone(&Utc)
            }
        }
        _ => return None,
    };
    Some(utc.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// An object's members in order, each value as its JSON text; `None` when
/// `text` is not a JSON object.
pub fn raw_members(text: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    struct Seed;
    impl<'de> serde::de::DeserializeSeed<'de> for Seed {
        type Value = Vec<(String, Box<RawValue>)>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Members)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = serde::de::DeserializeSeed::deserialize(Seed, &mut de).ok()?;
    de.end().ok()?;
    Some(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: &str) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn maps_a_predecessor_record() {
        let m = Mapping::default();
        let out = m
            .convert(
                &raw(r#"{"id":"evt-1","event_type":"story_updated","agent":"qa","timestamp":"2025-01-25T09:00:00","payload":{"story":"S-1"},"priority":3,"tags":["a"]}"#),
                Format::Predecessor,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "evt-1");
        assert_eq!(v["type"], "story_updated");
        assert_eq!(v["source"], "qa");
        assert_eq!(v["time"], "2025-01-25T09:00:00Z");
        assert_eq!(v["data"], json!({"story": "S-1"}));
        assert_eq!(v["priority"], 3);
        assert_eq!(v[UNMAPPED_ATTRIBUTE], r#"{"tags":["a"]}"#);
    }

    #[test]
    fn overrides_timezone_and_default_source() {
        let m = Mapping {
            overrides: vec![
                ("subject".into(), "data.story".into()),
                ("type".into(), "kind".into()),
            ],
            default_source: Some("/legacy".into()),
            utc_offset_secs: parse_timezone("+02:00").unwrap(),
            ..Mapping::default()
        };
        let out = m
            .convert(
                &raw(r#"{"kind":"k","timestamp":"2025-01-25 09:00:00","data":{"story":"S-9"}}"#),
                Format::Predecessor,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "k");
        assert_eq!(v["subject"], "S-9");
        assert_eq!(v["source"], "/legacy");
        assert_eq!(v["time"], "2025-01-25T07:00:00Z");
        assert!(v["id"].as_str().unwrap().starts_with("imp-"));
    }

    #[test]
    fn says_why_a_record_is_refused() {
        let m = Mapping::default();
        let e = m
            .convert(
                &raw(r#"{"agent":"qa","timestamp":"2025-01-25T09:00:00"}"#),
                Format::Predecessor,
            )
            .unwrap_err();
        assert!(e.0.contains("no type"), "{e}");
        let e = m
            .convert(
                &raw(r#"{"event_type":"t","agent":"qa","timestamp":"last tuesday"}"#),
                Format::Predecessor,
            )
            .unwrap_err();
        assert!(e.0.contains("timestamp"), "{e}");
        assert!(parse_timezone("Europe/Paris").is_err());
    }

    #[test]
    fn an_exported_line_comes_back_as_stored() {
        let m = Mapping::default();
        let stored = r#"{"type":"a","source":"/x","data":{"n": 1.50},"specversion":"1.0","id":"i","time":"2026-01-01T00:00:00Z"}"#;
        let line = format!("{},\"msgbusseq\":7}}", &stored[..stored.len() - 1]);
        assert_eq!(
            m.convert(&raw(&line), Format::Ndjson).unwrap(),
            stored.as_bytes()
        );
        let env = format!("{{\"seq\":7,\"event\":{stored}}}");
        assert_eq!(
            m.convert(&raw(&env), Format::Ndjson).unwrap(),
            stored.as_bytes()
        );
    }
}
