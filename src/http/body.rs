//! Request helpers that answer in problem+json: a body reader with a size
//! limit (413), a time limit (408) and the shared body budget (503), path parameters (400), a JSON parser whose errors name line and column (400), a
//! content-type check (415) and a strict query-string parser (400).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};

use super::error::Problem;

/// Parses a path parameter, answering 400 problem+json (axum's own
/// rejection is plain text) naming `field`.
pub fn path_param(
    param: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    field: &str,
) -> Result<String, Problem> {
    param
        .map(|axum::extract::Path(v)| v)
        .map_err(|e| Problem::bad_param(field, e.body_text()))
}

/// Reads the whole body, refusing more than `limit` bytes with 413 and a
/// body that takes longer than `timeout` (`--body-timeout`) with 408.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        // The client's slowness, not the server's: a 4xx, not a 5xx.
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!(
                "the request body did not arrive within {} ms (--body-timeout)",
                timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(b) => Ok(b),
        Err(e) => {
            if caused_by::<super::guard::BudgetExhausted>(&e) {
                return Err(super::guard::budget_problem());
            }
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over {
                Err(too_large(limit))
            } else {
                Err(Problem::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
    }
}

/// True when `T` is somewhere in `e`'s chain of causes.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn too_large(limit: usize) -> Problem {
    Problem::too_large(format!(
        "the request body is larger than the limit of {limit} bytes"
    ))
}

/// Parses JSON, answering 400 with the parser's position on failure.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Problem> {
    require_body(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))
}

/// Answers 400 for an empty body, where a JSON document is required.
pub fn require_body(bytes: &[u8]) -> Result<(), Problem> {
    if bytes.is_empty() {
        return Err(Problem::bad_request(
            "the request body is empty; send a JSON document",
        ));
    }
    Ok(())
}

/// The request's media type without parameters, lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// Answers 415 unless the media type is one of `allowed`. Absent is
/// accepted only because a request with a body and no `Content-Type` never
/// gets here ([`super::guard`] answers it with 415): without a body there
/// is nothing to label.
pub fn require_media_type(headers: &HeaderMap, allowed: &[&str]) -> Result<(), Problem> {
    match media_type(headers) {
        None => Ok(()),
        Some(m) if allowed.contains(&m.as_str()) => Ok(()),
        Some(m) => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "Content-Type {m} is not accepted here; use one of: {}",
                allowed.join(", ")
            ),
        )),
    }
}

/// Query parameters, parsed strictly: an unknown or repeated name is a 400
/// naming it, so a typo (`typ=`) never silently widens a read.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// Parses `query` allowing only `known` names.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, Problem> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| Problem::bad_request(format!("malformed query string: {e}")))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(Problem::bad_param(
                    &k,
                    format!("unknown parameter; known: {}", known.join(", ")),
                ));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(Problem::bad_param(&k, "given more than once"));
            }
        }
        Ok(QueryParams(map))
    }

    /// The event filter parameters shared by every read:
    /// `type`, `type_prefix`, `source`, `subject`.
    pub fn filter(&self) -> crate::store::Filter {
        crate::store::Filter {
            ty: self.string("type"),
            type_prefix: self.string("type_prefix"),
            source: self.string("source"),
            subject: self.string("subject"),
            scope: Default::default(),
        }
    }

    /// [`QueryParams::filter`] narrowed to `scope` (a token's): whatever
    /// the parameters ask for, only events inside it match.
    pub fn filter_within(&self, scope: &crate::store::Scope) -> crate::store::Filter {
        crate::store::Filter {
            scope: scope.clone(),
            ..self.filter()
        }
    }

    /// A string parameter; empty counts as absent.
    pub fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// A parameter whose value must be one of a few words, as sent: empty
    /// is not absent here (`?compatibility=` names no choice and is refused
    /// by the caller's match, as the document's enum says).
    pub fn choice(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An unsigned integer parameter within `min..=max`.
    pub fn u64_in(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, Problem> {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        let n: u64 = raw.parse().map_err(|_| {
            Problem::bad_param(name, format!("{raw:?} is not a non-negative integer"))
        })?;
        if n < min || n > max {
            return Err(Problem::bad_param(
                name,
                format!("must be between {min} and {max}"),
            ));
        }
        Ok(n)
    }
}
