//! `/admin/tokens`: token management online, for an admin token. The
//! same file operations as `msgbus token` (`auth::file`), run off the
//! async workers; the server's keyring re-reads the file at once, so a
//! revoked token is refused from the next request.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body;
use super::error::Problem;
use super::AppState;
use crate::auth::command::{check_spec, expiry};
use crate::auth::file::{self, TokenFileError, TokenRecord, TokenSpec};
use crate::auth::Role;
use crate::config::{parse_duration, ByteRate, Rate};
use crate::store::Scope;

/// Largest body of `POST /admin/tokens`.
pub const MAX_BODY: usize = 64 << 10;

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Unique name.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Allowed event type prefixes, each 1 to 256 characters (none: all).
    #[serde(default)]
    #[schema(max_items = 64, inline, value_type = Vec<Prefix>)]
    pub type_prefixes: Vec<String>,
    /// Allowed event source prefixes, each 1 to 256 characters (none: all).
    #[serde(default)]
    #[schema(max_items = 64, inline, value_type = Vec<Prefix>)]
    pub source_prefixes: Vec<String>,
    /// Lifetime, e.g. `30d`, `12h`, `90s` (none: no expiry). The server
    /// also takes forms the pattern leaves out (`1h30m`, plain seconds),
    /// up to 100 years.
    #[serde(default)]
    #[schema(pattern = "^[1-9][0-9]{0,3}[smhd]$")]
    pub expires: Option<String>,
    /// Its own request rate, e.g. `100/s` or `6000/m` (none: `--rate`).
    #[serde(default)]
    #[schema(pattern = "^[1-9][0-9]{0,8}/[sm]$")]
    pub rate: Option<String>,
    /// Its own read byte rate, e.g. `8MiB/s` or `1GiB/m`: the bytes of
    /// event reads (pages, single events, consumer reads) it may take
    /// (none: `--read-rate`).
    #[serde(default)]
    #[schema(pattern = "^[1-9][0-9]{0,8}(B|KiB|MiB|GiB)?/[sm]$")]
    pub read_rate: Option<String>,
}

/// A type or source prefix of a scope.
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 256)]
#[allow(dead_code)] // documents the items of the prefix lists
pub struct Prefix(String);

/// A token as listed: everything but the secret and its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// Public id (the `<id>` of `mb_<id>_<secret>`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Allowed type prefixes (empty: all).
    pub type_prefixes: Vec<String>,
    /// Allowed source prefixes (empty: all).
    pub source_prefixes: Vec<String>,
    /// Own rate, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Own read byte rate, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_rate: Option<String>,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Last used (RFC 3339, to about a minute), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> Self {
        TokenView {
            id: r.id,
            name: r.name,
            role: r.role,
            type_prefixes: r.scope.type_prefixes,
            source_prefixes: r.scope.source_prefixes,
            rate: r.rate.map(|r| r.to_string()),
            read_rate: r.read_rate.map(|r| r.to_string()),
            created: r.created,
            expires: r.expires,
            last_used: r.last_used,
        }
    }
}

/// A new token, with its secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token to send as `Authorization: Bearer <token>`. Not stored:
    /// it cannot be shown again.
    pub token: String,
    /// The stored record.
    #[serde(flatten)]
    pub record: TokenView,
}

/// Every token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// By creation.
    pub tokens: Vec<TokenView>,
}

fn invalid(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid_field(
        "invalid-token-request",
        "Invalid token request",
        field,
        message,
    )
}

fn file_problem(e: TokenFileError) -> Problem {
    match e {
        TokenFileError::NameTaken(_) => Problem::new(
            StatusCode::CONFLICT,
            "token-exists",
            "Token exists",
            e.to_string(),
        ),
        TokenFileError::NoSuchName(_) => Problem::not_found(e.to_string()),
        e => Problem::internal(&e),
    }
}

/// Runs a token-file operation off the async workers, then reloads the
/// keyring so the change applies to the next request.
async fn on_file<R: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(&std::path::Path) -> Result<R, TokenFileError> + Send + 'static,
) -> Result<R, Problem> {
    let keyring = state.auth.keyring.clone();
    tokio::task::spawn_blocking(move || {
        let r = op(keyring.data_dir()).map_err(file_problem)?;
        if let Err(e) = keyring.refresh() {
            tracing::error!(error = %e, "cannot reload the token file");
        }
        Ok(r)
    })
    .await
    .map_err(|e| Problem::internal(&e))?
}

/// Create a token. The answer holds the token itself, once.
#[utoipa::path(post, path = "/admin/tokens", tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `token` is shown only now", body = CreatedToken,
            headers(("Location" = String, description = "The token's URL"))),
        (status = 400, description = "Malformed JSON or an empty body", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A token has that name", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported or missing Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid; `errors` names it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    body::require_media_type(&headers, &["application/json"])?;
    let bytes = body::read_limited(&headers, body, MAX_BODY, state.settings.body_timeout).await?;
    let value = body::parse_json(&bytes)?;
    let req: NewToken = serde_json::from_value(value).map_err(|e| invalid("$", e.to_string()))?;
    let scope = Scope {
        type_prefixes: req.type_prefixes,
        source_prefixes: req.source_prefixes,
    };
    check_spec(&req.name, &scope).map_err(|e| invalid(e.field(), e.reason()))?;
    let expires = match req.expires.as_deref() {
        Some(d) => Some(
            parse_duration(d)
                .map_err(|e| invalid("expires", e.to_string()))
                .and_then(|d| expiry(d).map_err(|e| invalid(e.field(), e.reason())))?,
        ),
        None => None,
    };
    let rate = match req.rate.as_deref() {
        Some(r) => Some(Rate::parse(r).map_err(|e| invalid("rate", e.to_string()))?),
        None => None,
    };
    let read_rate = match req.read_rate.as_deref() {
        Some(r) => Some(ByteRate::parse(r).map_err(|e| invalid("read_rate", e.to_string()))?),
        None => None,
    };
    let spec = TokenSpec {
        name: req.name,
        role: req.role,
        scope,
        rate,
        read_rate,
        expires,
    };
    let now = crate::clock::now_rfc3339();
    let (record, token) = on_file(&state, move |dir| file::create(dir, spec, &now)).await?;
    tracing::info!(name = %record.name, id = %record.id, role = record.role.as_str(), "token created");
    let location = HeaderValue::from_str(&format!("/admin/tokens/{}", record.name))
        .unwrap_or_else(|_| HeaderValue::from_static("/admin/tokens"));
    let mut res = (
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            record: record.into(),
        }),
    )
        .into_response();
    res.headers_mut().insert(header::LOCATION, location);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/admin/tokens", tag = "tokens",
    responses((status = 200, description = "Every token", body = TokenList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, Problem> {
    let keyring = state.auth.keyring.clone();
    let records = tokio::task::spawn_blocking(move || keyring.records())
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(TokenList {
        tokens: records.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke a token: refused from the next request on.
#[utoipa::path(delete, path = "/admin/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "Token name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No token has that name", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = body::path_param(name, "name")?;
    let record = on_file(&state, move |dir| file::revoke(dir, &name)).await?;
    tracing::info!(name = %record.name, id = %record.id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
