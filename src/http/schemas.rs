//! `/schemas`: payload schemas per event type (register a version, list,
//! read, stop validating), and [`check_payloads`], the one check every
//! publish path calls before an event goes to the writer.
//!
//! Registering checks the document (422 when it is not a valid JSON
//! Schema) and, with `?compatibility=backward` (the default), that every
//! retained event of the type validates against it: the events are read
//! page by page through `Store::read` and validated on tokio's blocking
//! pool, never on the writer's thread or the async workers. An
//! incompatible version is refused with 409 (the document is fine; it
//! conflicts with what is stored) listing the first failures;
//! `?dry_run=true` only reports.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::body::{self, QueryParams};
use super::error::{Problem, MAX_LISTED_ERRORS};
use super::AppState;
use crate::auth::Principal;
use crate::event::{FieldError, PreparedEvent};
use crate::store::{
    Filter, Matcher, SchemaError, SchemaLimits, SchemaType, SchemaVersion, StoreError,
};

/// Media types accepted for a schema document.
const SCHEMA_TYPES: &[&str] = &["application/json", "application/schema+json"];
/// Events read per page by the compatibility check.
const CHECK_PAGE: usize = 1000;
/// A log line every this many events checked.
const CHECK_LOG_EVERY: u64 = 10_000;
/// Most failures a compatibility answer lists (the check stops there).
const MAX_LISTED_FAILURES: usize = 20;

/// One type's schemas in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaSummary {
    /// The event type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its newest version.
    pub latest_version: u32,
    /// `active` (events are validated) or `deleted` (validation stopped;
    /// the versions stay readable).
    pub status: String,
    /// How many versions it has.
    pub versions: usize,
    /// The newest version's URL (what `dataschema` is set to).
    pub url: String,
}

/// Every type with a schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaList {
    /// By type.
    pub schemas: Vec<SchemaSummary>,
}

/// One schema version.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaDoc {
    /// The event type.
    #[serde(rename = "type")]
    pub ty: String,
    /// This version's number.
    pub version: u32,
    /// The type's newest version.
    pub latest_version: u32,
    /// `active` or `deleted` (the type's status, not the version's).
    pub status: String,
    /// When this version was registered (RFC 3339).
    pub created_at: String,
    /// Its URL (what `dataschema` names).
    pub url: String,
    /// The JSON Schema document.
    #[schema(value_type = Object)]
    pub schema: Arc<Value>,
}

/// A stored event that does not validate against the new version.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompatFailure {
    /// The event's sequence number.
    pub seq: u64,
    /// A pointer into the event, e.g. `data/items/0/price`.
    pub field: String,
    /// Why it fails.
    pub message: String,
}

/// What the compatibility check found.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompatReport {
    /// `backward` or `none`.
    pub compatibility: String,
    /// Retained events of the type checked.
    pub checked: u64,
    /// True when none failed (always true for `none`).
    pub compatible: bool,
    /// The first failures (the check stops after 20).
    pub failures: Vec<CompatFailure>,
}

/// The answer to `PUT /schemas/{type}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PutSchemaResult {
    /// The version registered (or, for a dry run, the one it would be).
    pub version: u32,
    /// False for a dry run: nothing was stored.
    pub stored: bool,
    /// Its URL.
    pub url: String,
    /// What the compatibility check found.
    pub check: CompatReport,
}

fn status_of(t: &SchemaType) -> String {
    if t.active() { "active" } else { "deleted" }.to_string()
}

fn schema_problem(e: SchemaError) -> Problem {
    match e {
        SchemaError::NotFound(_) | SchemaError::AlreadyDeleted(_) => {
            Problem::not_found(e.to_string())
        }
        SchemaError::TooManyVersions { .. } | SchemaError::TooManyTypes { .. } => Problem::new(
            StatusCode::CONFLICT,
            "too-many-schemas",
            "Schema limit reached",
            e.to_string(),
        ),
        SchemaError::Store(e) => e.into(),
    }
}

fn type_param(param: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let ty = body::path_param(param, "type")?;
    if ty.is_empty() || ty.len() > crate::event::MAX_TYPE_LEN {
        return Err(Problem::bad_param(
            "type",
            format!("must be 1 to {} bytes", crate::event::MAX_TYPE_LEN),
        ));
    }
    Ok(ty)
}

fn in_scope(p: &Principal, ty: &str) -> Result<(), Problem> {
    if p.scope.allows_type(ty) {
        Ok(())
    } else {
        Err(Problem::not_found(format!(
            "no schema is registered for type {ty:?}"
        )))
    }
}

fn doc(state: &AppState, t: &SchemaType, version: u32) -> Option<SchemaDoc> {
    let v = t.version(version)?;
    Some(SchemaDoc {
        ty: t.ty.clone(),
        version,
        latest_version: t.latest().version,
        status: status_of(t),
        created_at: v.created_at.clone(),
        url: state.schemas.url(&t.ty, version),
        schema: v.schema.clone(),
    })
}

/// The check every publish path runs on its parsed events: 422 listing
/// each violation (`data/...`, `[3].data/...` in a batch); nothing of a
/// batch is stored when one item fails.
pub fn check_payloads(
    state: &AppState,
    events: &mut [PreparedEvent],
    batch: bool,
) -> Result<(), Problem> {
    match state.schemas.check(events, batch, MAX_LISTED_ERRORS) {
        Ok(()) => Ok(()),
        Err(v) => {
            let detail = if batch {
                format!(
                    "{} of the batch's {} events do not match their type's schema (nothing was stored)",
                    v.events,
                    events.len()
                )
            } else {
                "the event's data does not match its type's schema".to_string()
            };
            let mut p = Problem::invalid_counted(detail, v.errors, v.unlisted);
            p.kind = "schema-mismatch";
            p.title = "Data does not match the schema";
            Err(p)
        }
    }
}

/// List every type with a schema.
#[utoipa::path(
    get, path = "/schemas", tag = "schemas",
    responses((status = 200, description = "Every type with a schema, active or deleted", body = SchemaList))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Json<SchemaList> {
    let catalog = state.store.schema_catalog();
    Json(SchemaList {
        schemas: catalog
            .types
            .values()
            .filter(|t| principal.scope.allows_type(&t.ty))
            .map(|t| SchemaSummary {
                ty: t.ty.clone(),
                latest_version: t.latest().version,
                status: status_of(t),
                versions: t.versions.len(),
                url: state.schemas.url(&t.ty, t.latest().version),
            })
            .collect(),
    })
}

/// The newest version of a type's schema.
#[utoipa::path(
    get, path = "/schemas/{type}", tag = "schemas",
    params(("type" = String, Path, description = "Event type")),
    responses(
        (status = 200, description = "The newest version", body = SchemaDoc),
        (status = 404, description = "No schema for this type", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_latest(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ty: Result<Path<String>, PathRejection>,
) -> Result<Json<SchemaDoc>, Problem> {
    let ty = type_param(ty)?;
    in_scope(&principal, &ty)?;
    let catalog = state.store.schema_catalog();
    let t = catalog
        .types
        .get(&ty)
        .ok_or_else(|| schema_problem(SchemaError::NotFound(ty.clone())))?;
    Ok(Json(
        doc(&state, t, t.latest().version).expect("the latest exists"),
    ))
}

/// One version of a type's schema.
#[utoipa::path(
    get, path = "/schemas/{type}/versions/{version}", tag = "schemas",
    params(("type" = String, Path, description = "Event type"), ("version" = u32, Path, minimum = 1, description = "Version number (1, 2, ...)")),
    responses(
        (status = 200, description = "The version", body = SchemaDoc),
        (status = 400, description = "The version is not a positive number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_version(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<SchemaDoc>, Problem> {
    let Path((ty, n)) = params.map_err(|e| Problem::bad_param("type", e.body_text()))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Problem::bad_param("version", "must be a positive integer"))?;
    in_scope(&principal, &ty)?;
    let catalog = state.store.schema_catalog();
    let t = catalog
        .types
        .get(&ty)
        .ok_or_else(|| schema_problem(SchemaError::NotFound(ty.clone())))?;
    doc(&state, t, n).map(Json).ok_or_else(|| {
        Problem::not_found(format!(
            "type {ty:?} has no schema version {n}; its versions are 1 to {}",
            t.latest().version
        ))
    })
}

/// Stop validating a type's payloads (its versions stay readable; a later
/// PUT adds the next version and validation resumes).
#[utoipa::path(
    delete, path = "/schemas/{type}", tag = "schemas",
    params(("type" = String, Path, description = "Event type")),
    responses(
        (status = 200, description = "Validation stopped (durably); the newest version", body = SchemaDoc),
        (status = 404, description = "No schema for this type, or already deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only or shutting down", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ty: Result<Path<String>, PathRejection>,
) -> Result<Json<SchemaDoc>, Problem> {
    let ty = type_param(ty)?;
    in_scope(&principal, &ty)?;
    // In its own task: a client that hangs up (dropping this handler)
    // must not leave the change committed but the validators stale.
    let st = state.clone();
    let t = tokio::spawn(async move {
        let t = st.store.delete_schema(ty).await;
        st.schemas.refresh(&st.store.schema_catalog());
        t
    })
    .await
    .map_err(|e| Problem::internal(&e))?
    .map_err(schema_problem)?;
    Ok(Json(
        doc(&state, &t, t.latest().version).expect("the latest exists"),
    ))
}

/// `?compatibility=` of `PUT /schemas/{type}`: what a new version is
/// checked against. Declared as an enum so the published document says
/// exactly which values the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// Every retained event of the type must validate against it.
    Backward,
    /// No check.
    None,
}

/// Register the next version of a type's schema.
#[utoipa::path(
    put, path = "/schemas/{type}", tag = "schemas",
    params(
        ("type" = String, Path, description = "Event type"),
        ("compatibility" = inline(Option<Compatibility>), Query, description = "`backward` (default): every retained event of the type must validate against the new version; `none`: no check"),
        ("dry_run" = Option<bool>, Query, description = "`true`: check and report, store nothing"),
    ),
    request_body(content = Object, content_type = "application/json",
        description = "A JSON Schema (draft 2020-12; draft-07 when `$schema` says so). References to other documents are not fetched: a remote `$ref` is refused."),
    responses(
        (status = 201, description = "Registered (durably) as the next version", body = PutSchemaResult,
            headers(("Location" = String, description = "/schemas/{type}/versions/{n}"))),
        (status = 200, description = "Dry run: what would happen; nothing stored", body = PutSchemaResult),
        (status = 400, description = "Malformed JSON or query", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Retained events do not validate against it (backward), or a schema limit is reached", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The document is larger than --max-schema-bytes, or (--backend nats) the type's versions with it would not fit in one NATS message", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid JSON Schema (the detail says why)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full, read-only or shutting down", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ty: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let ty = type_param(ty)?;
    let q = QueryParams::parse(query.as_deref(), &["compatibility", "dry_run"])?;
    let compatibility = match q.choice("compatibility") {
        None | Some("backward") => Compatibility::Backward,
        Some("none") => Compatibility::None,
        Some(_) => {
            return Err(Problem::bad_param(
                "compatibility",
                "must be backward (the default) or none",
            ))
        }
    };
    let backward = compatibility == Compatibility::Backward;
    let dry_run = match q.choice("dry_run") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Problem::bad_param("dry_run", "must be true or false")),
    };
    if !principal.scope.allows_type(&ty) {
        return Err(super::auth::out_of_scope(
            &principal,
            format!("type {ty:?} (nothing was stored)"),
        ));
    }
    body::require_media_type(&headers, SCHEMA_TYPES)?;
    let limit = state.settings.max_schema_bytes;
    let bytes = body::read_limited(&headers, body, limit, state.settings.body_timeout).await?;
    let schema: Value = body::parse_json(&bytes)?;
    let validator = match crate::schemas::compile(&schema) {
        Ok(v) => Arc::new(v),
        Err(why) => {
            let mut p =
                Problem::invalid_field("invalid-schema", "Invalid JSON Schema", "schema", why.0);
            p.detail = format!(
                "the document is not a usable JSON Schema: {}",
                p.errors[0].message
            );
            return Err(p);
        }
    };
    let schema = Arc::new(schema);
    fits_the_store(&state, &ty, &schema)?;
    let check = if backward {
        backward_check(&state, &ty, validator).await?
    } else {
        CompatReport {
            compatibility: "none".into(),
            checked: 0,
            compatible: true,
            failures: Vec::new(),
        }
    };
    let catalog = state.store.schema_catalog();
    let next = catalog.types.get(&ty).map_or(1, |t| t.latest().version + 1);
    if dry_run {
        return Ok((
            StatusCode::OK,
            Json(PutSchemaResult {
                version: next,
                stored: false,
                url: state.schemas.url(&ty, next),
                check,
            }),
        )
            .into_response());
    }
    if !check.compatible {
        let mut p = Problem::new(
            StatusCode::CONFLICT,
            "incompatible-schema",
            "Schema incompatible with stored events",
            format!(
                "retained events of type {ty:?} do not validate against this schema (backward compatibility; \
                 {} checked, the first {} failures listed): fix the schema, or register it with \
                 ?compatibility=none; nothing was stored",
                check.checked,
                check.failures.len()
            ),
        );
        p.errors = check
            .failures
            .iter()
            .map(|f| FieldError {
                field: f.field.clone(),
                message: format!("seq {}: {}", f.seq, f.message),
            })
            .collect();
        return Err(p);
    }
    let limits = SchemaLimits {
        max_versions: state.settings.max_schema_versions,
        max_types: state.settings.max_schema_types,
    };
    // In its own task, as for delete.
    let (st, t2) = (state.clone(), ty.clone());
    let t = tokio::spawn(async move {
        let t = st.store.put_schema(t2, schema, limits).await;
        st.schemas.refresh(&st.store.schema_catalog());
        t
    })
    .await
    .map_err(|e| Problem::internal(&e))?
    .map_err(schema_problem)?;
    let version = t.latest().version;
    let url = state.schemas.url(&ty, version);
    let mut res = (
        StatusCode::CREATED,
        Json(PutSchemaResult {
            version,
            stored: true,
            url,
            check,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&crate::schemas::schema_path(&ty, version)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// 413 when the store bounds a type's stored schemas (the NATS backend
/// keeps every version of a type in one message) and `ty`'s, with
/// `schema` as its next version, would pass that bound: checked on this
/// instance's copy before anything is done; the store checks again as it
/// commits (then 503, when another instance added a version meanwhile).
fn fits_the_store(state: &AppState, ty: &str, schema: &Arc<Value>) -> Result<(), Problem> {
    let Some(max) = state.store.max_schema_entry_bytes() else {
        return Ok(());
    };
    let catalog = state.store.schema_catalog();
    let mut t = catalog
        .types
        .get(ty)
        .cloned()
        .unwrap_or_else(|| SchemaType {
            ty: ty.to_string(),
            versions: Vec::new(),
            deleted_at: None,
        });
    t.versions.push(SchemaVersion {
        version: t.versions.last().map_or(1, |v| v.version + 1),
        schema: schema.clone(),
        created_at: crate::clock::now_rfc3339(),
    });
    t.deleted_at = None;
    let size = serde_json::to_vec(&t).map_or(0, |v| v.len());
    if size <= max {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "schema-too-large",
        "Schema versions too large for the backend",
        format!(
            "type {ty:?}'s schemas with this version would take {size} bytes, more than the \
             {max} bytes the backend keeps for one type (--backend nats keeps every version of \
             a type in one NATS message: the servers' max_payload, less room for headers). \
             Nothing was stored; register a smaller document, or raise max_payload in the NATS \
             servers' configuration"
        ),
    ))
}

/// Validates every retained event of `ty` against `validator`, a page at
/// a time, on the blocking pool; stops after [`MAX_LISTED_FAILURES`].
async fn backward_check(
    state: &AppState,
    ty: &str,
    validator: Arc<crate::schemas::Compiled>,
) -> Result<CompatReport, Problem> {
    let matcher = Matcher::new(Filter {
        ty: Some(ty.to_string()),
        ..Default::default()
    });
    let head = state.store.head();
    let mut after = 0u64;
    let mut checked = 0u64;
    let mut failures = Vec::new();
    while after < head && failures.len() < MAX_LISTED_FAILURES {
        let page = match state
            .store
            .read(after, &matcher, CHECK_PAGE, state.settings.max_page_bytes)
            .await
        {
            Ok(p) => p,
            // Retention deleted the next events meanwhile: go on from the oldest.
            Err(StoreError::Gone { oldest }) if oldest > after + 1 => {
                after = oldest - 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if page.next_after <= after {
            break;
        }
        after = page.next_after;
        let (v, t, room) = (
            validator.clone(),
            ty.to_string(),
            MAX_LISTED_FAILURES - failures.len(),
        );
        let events = page.events;
        let (n, found) = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut n = 0u64;
            for e in &events {
                n += 1;
                if let Some((field, message)) = crate::schemas::check_stored(&v, &t, &e.bytes) {
                    found.push(CompatFailure {
                        seq: e.seq,
                        field,
                        message,
                    });
                    if found.len() >= room {
                        break;
                    }
                }
            }
            (n, found)
        })
        .await
        .map_err(|e| Problem::internal(&e))?;
        if (checked + n) / CHECK_LOG_EVERY > checked / CHECK_LOG_EVERY {
            tracing::info!(r#type = %ty, checked = checked + n, up_to_seq = after, "schema compatibility check in progress");
        }
        checked += n;
        failures.extend(found);
    }
    Ok(CompatReport {
        compatibility: "backward".into(),
        checked,
        compatible: failures.is_empty(),
        failures,
    })
}
