//! RFC 9457 problem details: the one error format of the API.
//!
//! Every rejection, from a malformed body to a full queue, is a [`Problem`]
//! with `type`, `title`, `status`, `detail` and, for validation, an `errors`
//! list naming each field. Internal errors are logged with their cause and
//! answered with a generic detail, never the cause's text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::{EventError, FieldError};
use crate::store::{StoreError, WriteRefusal};

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Most field errors a problem lists; the rest are only counted
/// (`more_errors`), so an answer stays small whatever the request held.
pub const MAX_LISTED_ERRORS: usize = 100;

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:msgbus:problem:invalid-event`.
    #[serde(rename = "type", serialize_with = "problem_type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Short, stable summary of the kind.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Field-level validation errors: the first 100 found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// How many more field errors were found than `errors` lists (absent
    /// when it lists them all).
    #[serde(skip_serializing_if = "is_zero")]
    #[schema(required = false)]
    pub more_errors: u32,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// For 410 Gone: the oldest event still stored; resume from there
    /// (`after` = this - 1) if skipping the deleted range is acceptable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
}

impl Problem {
    /// A problem of kind `slug` with `status`, `title` and `detail`.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: slug,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            more_errors: 0,
            retry_after: None,
            oldest_seq: None,
        }
    }

    /// 410: the position asked for was deleted by retention. Names the
    /// oldest event still stored instead of silently jumping to it.
    pub fn gone(oldest: u64) -> Self {
        let mut p = Problem::new(
            StatusCode::GONE,
            "gone",
            "Events deleted by retention",
            format!(
                "the events before seq {oldest} were deleted by retention; the oldest available is {oldest}: \
                 resume with after={} to skip the deleted range",
                oldest - 1
            ),
        );
        p.oldest_seq = Some(oldest);
        p
    }

    /// 400: the body or a parameter cannot be parsed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )
    }

    /// 400 naming one field (a query or path parameter).
    pub fn bad_param(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut p = Problem::bad_request(format!("{field}: {message}"));
        p.errors.push(FieldError {
            field: field.to_string(),
            message,
        });
        p
    }

    /// 422 of kind `slug` (titled `title`) naming one field of a request
    /// body and why it is refused.
    pub fn invalid_field(
        slug: &'static str,
        title: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            title,
            format!("{field}: {message}"),
        );
        p.errors.push(FieldError {
            field: field.to_string(),
            message,
        });
        p
    }

    /// 422: the event (or request) is well-formed but invalid. Lists the
    /// first [`MAX_LISTED_ERRORS`] of `errors` and counts the rest.
    pub fn invalid(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Problem::invalid_counted(detail, errors, 0)
    }

    /// [`Problem::invalid`] when `unlisted` more errors were found than
    /// `errors` holds (a caller that stopped collecting them).
    pub fn invalid_counted(
        detail: impl Into<String>,
        mut errors: Vec<FieldError>,
        unlisted: usize,
    ) -> Self {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-event",
            "Invalid event",
            detail,
        );
        let more = errors.len().saturating_sub(MAX_LISTED_ERRORS) + unlisted;
        errors.truncate(MAX_LISTED_ERRORS);
        p.errors = errors;
        p.more_errors = u32::try_from(more).unwrap_or(u32::MAX);
        p
    }

    /// 413: the body or one event is over a limit.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            detail,
        )
    }

    /// 404: nothing at this path or sequence number.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 501: the backend in use does not implement this.
    pub fn not_implemented(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-implemented",
            "Not implemented by this backend",
            detail,
        )
    }

    /// 501 for an `/admin/*` operation of the file backend (`what`) asked
    /// of the NATS JetStream backend, where the stream's replicas do its
    /// job.
    pub fn file_backend_only(what: &str) -> Self {
        Problem::not_implemented(format!(
            "{what} belongs to the file backend (--backend file); with --backend nats the \
             JetStream stream's replicas keep and repair the data, so msgbus has none of its own"
        ))
    }

    /// 503 with a `Retry-After`.
    pub fn unavailable(
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, title, detail);
        p.retry_after = Some(retry_after);
        p
    }

    /// 500: logged here with its cause; the client sees a generic detail.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; the cause is in its log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull => Problem::unavailable(
                "queue-full",
                "Writer queue full",
                "the writer's queue is full; retry shortly",
                1,
            ),
            StoreError::Refused(r) => r.into(),
            StoreError::Stopped => WriteRefusal::ShuttingDown.into(),
            StoreError::Corrupt(reason) => {
                tracing::error!(reason = %reason, "served a read that failed verification");
                Problem::unavailable(
                    "damaged-data",
                    "Stored data failed verification",
                    "a stored record failed its checksum; it is not served, and the failure is logged",
                    5,
                )
            }
            StoreError::Gone { oldest } => Problem::gone(oldest),
            StoreError::TooManyOpenFiles { context, source } => Problem::unavailable(
                "too-many-open-files",
                "Out of file descriptors",
                format!(
                    "the server has no file descriptor left ({context}: {source}); nothing is damaged: retry shortly"
                ),
                1,
            ),
            StoreError::Unavailable(detail) => Problem::unavailable(
                "backend-unavailable",
                "Backend unavailable",
                detail,
                1,
            ),
            StoreError::Unsupported(detail) => Problem::not_implemented(detail),
            other @ (StoreError::Io { .. } | StoreError::Locked { .. }) => {
                Problem::internal(&other)
            }
        }
    }
}

/// Why writes are refused, as a status: poisoned and read-only are 503
/// (retry later: a restart or a repair may end them), low disk is 507
/// (nothing was written), shutting down is 503.
impl From<WriteRefusal> for Problem {
    fn from(r: WriteRefusal) -> Self {
        match r {
            WriteRefusal::Poisoned(reason) => Problem::unavailable(
                "read-only",
                "Store is read-only",
                format!("the store refuses writes until the server is restarted: {reason}"),
                30,
            ),
            WriteRefusal::ReadOnly(reason) => Problem::unavailable(
                "read-only",
                "Store is read-only",
                format!("the store refuses writes until a repair succeeds: {reason}"),
                10,
            ),
            WriteRefusal::LowDisk(reason) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Not enough free disk space",
                format!("nothing was written: {reason}"),
            ),
            WriteRefusal::ShuttingDown => Problem::unavailable(
                "shutting-down",
                "Shutting down",
                "the server is shutting down",
                5,
            ),
        }
    }
}

/// Maps a single event's validation failure; `what` prefixes the detail.
impl From<EventError> for Problem {
    fn from(e: EventError) -> Self {
        match e {
            EventError::Invalid(errors) => {
                let mut detail = errors
                    .iter()
                    .take(10)
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if errors.len() > 10 {
                    detail.push_str(&format!("; and {} more", errors.len() - 10));
                }
                Problem::invalid(detail, errors)
            }
            EventError::TooLarge { size, limit } => Problem::too_large(format!(
                "the event is {size} bytes serialized; the limit is {limit} bytes (--max-event-bytes)"
            )),
            EventError::Malformed(why) => Problem::bad_request(format!("malformed JSON: {why}")),
        }
    }
}

pub use crate::redact::HidePaths;

/// Serializes a problem slug as its URI.
fn problem_type<S: serde::Serializer>(slug: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("urn:msgbus:problem:{slug}"))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
