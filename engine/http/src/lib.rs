//! parcours-http: the HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | canonical events, CloudEvents JSON (structured mode): one object, or an array (`application/cloudevents-batch+json`); answers once committed |
//! | `GET /v1/instances?tenant=&pathway=&status=&after=&limit=` | instances of a tenant |
//! | `GET /v1/instances/{id}` | an instance: states, variables, pending timers, open tasks, alerts, handoffs |
//! | `GET /v1/instances/{id}/history` | its events in order, each with the event and the rule that caused it |
//! | `GET /v1/patients/{subject}/instances?tenant=` | a patient's instances |
//! | `GET /v1/tasks?tenant=&role=&status=&kind=&limit=` | open work items (tasks, alerts, handoffs) |
//! | `POST /v1/tasks/{id}/outcome` | `{"outcome": "completed" \| "not_needed" \| "could_not_be_done"}` |
//! | `POST /v1/handoffs/{id}/answer` | `{"accepted": true \| false}` |
//! | `POST /v1/alerts/{id}/acknowledge` | `{}` |
//! | `GET /v1/effects?after=&limit=` | the effects feed (tasks, alerts, handoffs in log order) |
//! | `GET /v1/dead-letters?after=&limit=` | what was refused, with the reason |
//! | `GET /v1/pathways`, `GET /v1/pathways/{id}/{version}/graph?format=mermaid\|dot` | loaded pathway versions |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (store reachable, not stopping) |
//! | `GET /metrics` | Prometheus metrics: the runtime's and the pathway indicators ([`metrics`]) |
//! | `/fhir/{tenant}/…` | FHIR R4 JSON in and out (see [`fhir`](crate::FhirConfig) and the module docs) |
//!
//! Every answer is JSON; every refusal is a 4xx with `{"error": {"code", "message"}}`
//! saying where and why, and a refused inbound body is kept as a dead letter. Nothing is
//! acknowledged before it is committed. Bodies are limited in size; requests in time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use parcours_runtime::{Handle, PathwayRegistry};
use parcours_store::EventStore;
use tower_http::timeout::TimeoutLayer;

mod error;
mod fhir;
mod handlers;
pub mod metrics;
mod views;

pub use error::ApiError;
pub use fhir::FhirConfig;

/// Limits of the API.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// Longest a request may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 4 << 20,
            max_events: 10_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState<S> {
    /// The running engine.
    pub handle: Handle,
    /// The log, for reads.
    pub store: S,
    /// Pathway versions.
    pub registry: Arc<PathwayRegistry>,
    /// Limits.
    pub limits: Limits,
    /// The FHIR endpoints' settings (`None`: no FHIR endpoints).
    pub fhir: Option<FhirConfig>,
}

/// The API's router.
pub fn router<S: EventStore + Clone + 'static>(state: AppState<S>) -> Router {
    let limits = state.limits.clone();
    let metrics = metrics::router(
        state.store.clone(),
        state.registry.clone(),
        state.handle.clone(),
    );
    let state = Arc::new(state);
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz::<S>))
        .route("/v1/events", post(handlers::post_events::<S>))
        .route("/v1/instances", get(handlers::list_instances::<S>))
        .route("/v1/instances/{id}", get(handlers::get_instance::<S>))
        .route("/v1/instances/{id}/history", get(handlers::history::<S>))
        .route(
            "/v1/patients/{subject}/instances",
            get(handlers::patient_instances::<S>),
        )
        .route("/v1/tasks", get(handlers::list_work::<S>))
        .route("/v1/tasks/{id}/outcome", post(handlers::task_outcome::<S>))
        .route(
            "/v1/handoffs/{id}/answer",
            post(handlers::handoff_answer::<S>),
        )
        .route(
            "/v1/alerts/{id}/acknowledge",
            post(handlers::alert_ack::<S>),
        )
        .route("/v1/effects", get(handlers::effects::<S>))
        .route("/v1/dead-letters", get(handlers::dead_letters::<S>))
        .route("/v1/pathways", get(handlers::pathways::<S>))
        .route(
            "/v1/pathways/{id}/{version}/graph",
            get(handlers::pathway_graph::<S>),
        )
        .route("/fhir/{tenant}", post(fhir::post_bundle::<S>))
        .route("/fhir/{tenant}/Task", get(fhir::search_tasks::<S>))
        .route(
            "/fhir/{tenant}/Task/{id}",
            get(fhir::read_task::<S>).put(fhir::put_task::<S>),
        )
        .route(
            "/fhir/{tenant}/Communication/{id}",
            get(fhir::read_communication::<S>),
        )
        .route("/fhir/{tenant}/{type}", post(fhir::post_resource::<S>))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .with_state(state)
        .merge(metrics)
}
