//! The REST API: one file per resource, one error format ([`error::Problem`]).
//! Every route reaches the store through [`crate::store::Store`] (the
//! router state holds an `Arc<dyn Store>`), never past it.
//!
//! - [`events`]: publish (single, batch) and read (list, long-poll, by seq)
//! - [`stream`]: the live Server-Sent Events stream
//! - [`consumers`]: durable named cursors (create, read, ack)
//! - [`queues`]: work queues: fetch, ack, nack, extend, dead letters
//! - [`schemas`]: payload schemas per event type, and the publish check
//! - [`stats`]: the `/stats` snapshot
//! - [`health`]: liveness and readiness probes
//! - [`metrics`]: Prometheus text exposition
//! - [`admin`]: alerts, backups and the on-demand integrity check
//! - [`api`]: the API's shapes of store data (schemas), built from snapshots
//! - [`docs`]: the OpenAPI document and Swagger UI
//! - [`ui`]: the dashboard at `/`, compiled in
//! - [`error`]: the problem+json type; store errors and refusals as statuses
//! - [`body`]: request-body and query helpers that answer in problem+json
//! - [`guard`]: cross-origin refusal and CORS, Content-Type, the body budget
//! - [`auth`]: authentication, roles, failed-auth limits, per-token stream caps
//! - [`tokens`]: `/admin/tokens`: token management online
//! - [`rate`]: request rates (`--rate`) and read byte rates (`--read-rate`)
//!   per token or address, 429 beyond them

pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod consumers;
pub mod docs;
pub mod error;
pub mod events;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod queues;
pub mod rate;
pub mod schemas;
pub mod stats;
pub mod stream;
pub mod tokens;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::ServeConfig;
use crate::event::Limits;
use crate::store::{Store, StoreHandle};
use error::Problem;

/// Header carrying the request id (set when the client sends none, echoed back).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach. Cloned for every request (by axum's
/// `State`), so it is one `Arc`: a clone is one increment, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppStateParts>);

impl std::ops::Deref for AppState {
    type Target = AppStateParts;
    fn deref(&self) -> &AppStateParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppStateParts {
    /// The store, through the interface every route is written against.
    pub store: Arc<dyn Store>,
    /// The file store's own operations that are not part of [`Store`]:
    /// backups on demand and the on-demand integrity check (`/admin`).
    /// `None` with another backend (NATS JetStream), where those routes
    /// answer 501.
    pub file_store: Option<StoreHandle>,
    /// The alert list (`/alerts`).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Limits and settings the handlers apply.
    pub settings: Arc<HttpSettings>,
    /// Flips to true when shutdown starts, so long-polls return at once.
    pub shutdown: watch::Receiver<bool>,
    /// Open SSE streams, capped by `--max-subscribers`.
    pub subscribers: Arc<stream::Subscribers>,
    /// Request bodies in flight, capped by `--max-body-bytes-in-flight`.
    pub body_budget: Arc<guard::BodyBudget>,
    /// Takes the data directory's path out of answers.
    pub hide_paths: error::HidePaths,
    /// The one `POST /admin/verify` check that may run.
    pub verifications: Arc<admin::Verifications>,
    /// Request rates per token or address (`--rate`).
    pub rate_limits: rate::RateLimits,
    /// Read byte rates per token or address (`--read-rate`).
    pub read_limits: rate::ReadLimits,
    /// Access control: the tokens and the failed-authentication limits.
    pub auth: Arc<auth::Auth>,
    /// The queue consumers' leases (`/consumers/{name}/fetch`).
    pub queues: Arc<dyn crate::queue::QueueService>,
    /// The compiled payload schemas, refreshed after each change.
    pub schemas: Arc<crate::schemas::Registry>,
}

/// The settings the HTTP layer uses.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Event validation limits.
    pub limits: Limits,
    /// Most items in a batch.
    pub max_batch_events: usize,
    /// Largest batch body.
    pub max_batch_bytes: usize,
    /// Longest long-poll.
    pub max_wait: Duration,
    /// Timeout for ordinary requests.
    pub request_timeout: Duration,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    /// When the server started.
    pub started: Instant,
    /// Idle time after which an SSE stream gets a heartbeat comment.
    pub sse_heartbeat: Duration,
    /// Free space below which publishing answers 507 (for on-demand checks).
    pub min_free_bytes: u64,
    /// Most event bytes in one page of `GET /events` or a consumer read.
    pub max_page_bytes: usize,
    /// Most per-type and per-source series in `/stats` and `/metrics`.
    pub max_label_series: usize,
    /// Most durable consumers.
    pub max_consumers: usize,
    /// Browser origins allowed to call the API (CORS).
    pub cors_allow_origins: Vec<String>,
    /// The largest body any route reads: the most one request takes from
    /// the body budget up front.
    pub max_request_body: usize,
    /// Largest schema document (`--max-schema-bytes`).
    pub max_schema_bytes: usize,
    /// Most versions per type (`--max-schema-versions`).
    pub max_schema_versions: usize,
    /// Most types with a schema (`--max-schema-types`).
    pub max_schema_types: usize,
}

impl AppState {
    /// State for a server with `config` over the file store.
    pub fn new(
        store: StoreHandle,
        config: &ServeConfig,
        keyring: Arc<crate::auth::Keyring>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let alerts = store.alerts().clone();
        Self::with_store(
            Arc::new(store.clone()),
            Some(store),
            alerts,
            None,
            config,
            keyring,
            shutdown,
        )
    }

    /// State for a server with `config` over any [`Store`]; `file_store`
    /// is the file store's handle when that is the backend; `queues` the
    /// backend's work queues (`None`: the file backend's, over
    /// `dyn_store`).
    pub fn with_store(
        dyn_store: Arc<dyn Store>,
        file_store: Option<StoreHandle>,
        alerts: Arc<crate::alerts::Alerts>,
        queues: Option<Arc<dyn crate::queue::QueueService>>,
        config: &ServeConfig,
        keyring: Arc<crate::auth::Keyring>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let queues = queues.unwrap_or_else(|| {
            Arc::new(crate::queue::Queues::new(
                dyn_store.clone(),
                alerts.clone(),
                crate::queue::QueueLimits::of(config),
            ))
        });
        let schemas = Arc::new(crate::schemas::Registry::new(&config.public_url));
        schemas.refresh(&dyn_store.schema_catalog());
        AppState(Arc::new(AppStateParts {
            store: dyn_store,
            queues,
            alerts,
            file_store,
            settings: Arc::new(HttpSettings {
                limits: Limits {
                    max_event_bytes: config.max_event_bytes as usize,
                },
                max_batch_events: config.max_batch_events,
                max_batch_bytes: config.max_batch_bytes as usize,
                max_wait: config.max_wait,
                request_timeout: config.request_timeout,
                // Kept below the request timeout, so a stalled upload is
                // answered as the client's 408, not as the server's 503
                // (the request timeout would fire first otherwise).
                body_timeout: config.body_timeout.min(config.request_timeout * 9 / 10),
                started: Instant::now(),
                sse_heartbeat: config.sse_heartbeat,
                min_free_bytes: config.min_free_bytes,
                max_page_bytes: usize::try_from(config.max_page_bytes).unwrap_or(usize::MAX),
                max_label_series: config.max_label_series,
                max_consumers: config.max_consumers,
                cors_allow_origins: config.cors_allow_origin.clone(),
                max_request_body: (config.max_batch_bytes as usize)
                    .max(events::single_body_limit(config.max_event_bytes as usize))
                    .max(consumers::MAX_BODY)
                    .max(config.max_schema_bytes as usize),
                max_schema_bytes: config.max_schema_bytes as usize,
                max_schema_versions: config.max_schema_versions,
                max_schema_types: config.max_schema_types,
            }),
            shutdown,
            subscribers: Arc::new(stream::Subscribers::new(config.max_subscribers)),
            body_budget: Arc::new(guard::BodyBudget::new(
                config.max_body_bytes_in_flight as usize,
            )),
            hide_paths: error::HidePaths::new(&config.data_dir),
            verifications: Arc::default(),
            rate_limits: rate::RateLimits::new(config.rate),
            read_limits: rate::ReadLimits::new(config.read_rate, config.max_page_bytes),
            auth: Arc::new(auth::Auth::new(
                keyring,
                config.protected(),
                config.auth_failure_rate,
                config.max_streams_per_token.max(1),
            )),
            schemas,
        }))
    }
}

/// The whole API with its middleware.
pub fn router(state: AppState) -> Router {
    let doc_limits = docs::DocLimits {
        max_wait_secs: state.settings.max_wait.as_secs(),
        max_batch_events: state.settings.max_batch_events,
    };
    let api = Router::new()
        .route("/events", post(events::publish).get(events::list))
        .route("/events/batch", post(events::publish_batch))
        .route("/events/stream", get(stream::stream))
        .route("/events/{seq}", get(events::get_one))
        .route("/consumers", get(consumers::list))
        .route(
            "/consumers/{name}",
            get(consumers::get_one)
                .put(consumers::put)
                .delete(consumers::delete),
        )
        .route("/consumers/{name}/events", get(consumers::events))
        .route("/consumers/{name}/ack", post(consumers::ack))
        .route("/consumers/{name}/fetch", post(queues::fetch))
        .route("/consumers/{name}/nack", post(queues::nack))
        .route("/consumers/{name}/extend", post(queues::extend))
        .route("/consumers/{name}/dead", get(queues::dead))
        .route("/consumers/{name}/dead/redrive", post(queues::redrive))
        .route("/schemas", get(schemas::list))
        .route(
            "/schemas/{type}",
            get(schemas::get_latest)
                .put(schemas::put)
                .delete(schemas::delete),
        )
        .route(
            "/schemas/{type}/versions/{version}",
            get(schemas::get_version),
        )
        .route("/stats", get(stats::stats))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/alerts", get(admin::alerts))
        .route(
            "/admin/backups",
            get(admin::list_backups).post(admin::take_backup),
        )
        .route("/admin/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/admin/tokens/{name}",
            axum::routing::delete(tokens::revoke),
        )
        .route(
            "/admin/verify",
            get(admin::verify_status).post(admin::verify),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), hide_paths))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    api.merge(docs::router(doc_limits))
        .merge(ui::router())
        // Outside the routing, so it sees every request: preflights
        // (OPTIONS has no route) and unknown paths too.
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        // Before the guard: a refused request costs no body budget.
        .layer(middleware::from_fn_with_state(state.clone(), rate::limit))
        // First: who is asking decides the rate bucket, and a request
        // without a valid token costs nothing more.
        .layer(middleware::from_fn_with_state(state, auth::authenticate))
        .layer(CatchPanicLayer::custom(|_| Problem::internal(&"a handler panicked").into_response()))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            // DEBUG: at the default INFO level the span costs nothing per
            // request; `RUST_LOG=msgbus=debug,tower_http=debug` traces each one.
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Bounds every request by the request timeout, except long-polls, whose
/// own `wait` (capped by `--max-wait`) is added to it.
async fn request_timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut limit = state.settings.request_timeout;
    let path = req.uri().path();
    let long_poll =
        path == "/events" || (path.starts_with("/consumers/") && path.ends_with("/events"));
    let fetch = req.method() == axum::http::Method::POST
        && path.starts_with("/consumers/")
        && path.ends_with("/fetch");
    if (req.method() == axum::http::Method::GET && long_poll) || fetch {
        limit += state.settings.max_wait;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Problem::unavailable(
            "timeout",
            "Request timed out",
            format!("the request took longer than {} ms", limit.as_millis()),
            1,
        )
        .into_response(),
    }
}

/// Largest answer [`hide_paths`] rewrites (operations answers are far smaller).
const MAX_REWRITTEN_BYTES: usize = 64 << 20;

/// Takes the data directory's absolute path out of every problem+json
/// answer and every operations answer (`/stats`, `/health*`, `/alerts`,
/// `/metrics`, `/admin/*`): their details are built from store errors that
/// name full paths, which belong in the operator's log, not in answers.
/// Events are never rewritten (they are served as stored).
async fn hide_paths(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let operations = matches!(
        path,
        "/stats" | "/health" | "/health/live" | "/health/ready" | "/alerts" | "/metrics"
    ) || path.starts_with("/admin/");
    let res = next.run(req).await;
    let problem = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(error::PROBLEM_JSON.as_bytes()));
    if !(operations || problem) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_REWRITTEN_BYTES).await {
        Ok(b) => b,
        Err(e) => return Problem::internal(&e).into_response(),
    };
    let hidden = match std::str::from_utf8(&bytes).map(|t| state.hide_paths.apply(t)) {
        Ok(std::borrow::Cow::Owned(text)) => text,
        _ => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(hidden))
}

async fn not_found(req: Request) -> Problem {
    Problem::not_found(format!("no resource at {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}
