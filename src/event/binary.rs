//! Binary-mode events: attributes from `ce-*` headers, the body as `data`
//! (CloudEvents HTTP protocol binding).

use http::HeaderMap;
use serde_json::{Map, Value};

use super::*;

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
