//! parcours-http: the HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | canonical events, CloudEvents JSON (structured mode): one object, or an array (`application/cloudevents-batch+json`); answers once committed |
//! | `GET /v1/instances?tenant=&pathway=&status=&after=&limit=` | instances of a tenant |
//! | `GET /v1/instances/{id}` | an instance: states, variables, pending timers, open tasks, alerts, handoffs |
//! | `GET /v1/instances/{id}/history` | its events in order, each with the event and the rule that caused it |
//! | `GET /v1/patients/{subject}/instances?tenant=` | a patient's instances |
//! | `GET /v1/tasks?tenant=&role=&status=&kind=&instance=&after=&limit=` | work items (tasks, alerts, handoffs): the open ones, or those of the statuses asked for (closed ones too); paged by a cursor (`next`) |
//! | `POST /v1/tasks/{id}/outcome` | `{"outcome": "completed" \| "not_needed" \| "could_not_be_done"}` |
//! | `POST /v1/handoffs/{id}/answer` | `{"accepted": true \| false}` |
//! | `POST /v1/alerts/{id}/acknowledge` | `{}` |
//! | `GET /v1/effects?after=&limit=&wait=` | the effects feed (tasks, alerts, handoffs in log order); `wait=N` (≤ 20 s) answers when the next effect is committed |
//! | `GET /v1/dead-letters?tenant=&source=&after=&limit=` | what was refused, with the reason, newest first (coordinator, ops) |
//! | `GET /v1/dead-letters/{id}`, `…/{id}/content` | one, without its bytes (coordinator, ops); with them (coordinator, audited) |
//! | `GET /v1/pathways`, `GET /v1/pathways/{id}/{version}/graph?format=mermaid\|dot` | loaded pathway versions |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (store reachable, not stopping) |
//! | `GET /metrics` | Prometheus metrics: the runtime's and the pathway indicators ([`metrics`]) |
//! | `GET /v1/audit?tenant=&after=&limit=` | the tenant's audit trail: who read or changed what |
//! | `POST /v1/erasures?tenant=` | erase a patient ([`erasure`]): their data keys destroyed, recorded and audited |
//! | `POST /v1/subjects?tenant=` | the subject keys of patients a caller knows by an INS or an IPP ([`subjects`]) |
//! | `GET /v1/pathways/{id}/{version}/source`, `POST /v1/pathways[/check]?file=` | a published version's text; check or publish a pathway file |
//! | `POST /v1/migrations[/check]?tenant=` | move a tenant's instances to another version (dry run first) |
//! | `GET /v1/openapi.json` | this API as an OpenAPI 3.1 document ([`openapi`]), without credentials |
//! | `GET /v1/asyncapi.json` | the NATS interface as an AsyncAPI 3.0 document ([`asyncapi`]), without credentials |
//! | `/fhir/{tenant}/…` | FHIR R4 JSON in and out (see [`fhir`](crate::FhirConfig) and the module docs) |
//!
//! Every route but `/healthz`, `/readyz`, `/metrics`, the two API documents
//! (`/v1/openapi.json`, `/v1/asyncapi.json`) and the FHIR CapabilityStatement needs
//! credentials (a bearer
//! token or an API key, [`auth`]) and a permission ([`routes::ROUTES`]), and is scoped to
//! the caller's tenants; each such request leaves an entry in the audit trail.
//!
//! While the process starts (waiting for its services, opening the log), a [`Startup`]
//! gate answers on the same port: `/healthz` 200 and `/readyz` 503, each saying what the
//! process waits for, `/metrics` the process's metrics (`parcours_ready` 0), and every
//! other route 503.
//!
//! List routes page alike: at most `limit` items (100 by default, 1000 at most), and
//! `next`, what to pass as `after` for the next page, `null` on the last.
//!
//! Every answer is JSON; every refusal is a 4xx with `{"error": {"code", "message"}}`
//! saying where and why, and a refused inbound body is kept as a dead letter. Nothing is
//! acknowledged before it is committed. Bodies are limited in size; requests in time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use parcours_runtime::{Handle, SharedRegistry};
use parcours_store::{AuditLog, EventStore};
use tower_http::timeout::TimeoutLayer;

pub mod asyncapi;
mod audit;
pub mod auth;
pub mod erasure;
mod error;
mod fhir;
mod handlers;
pub mod metrics;
mod migrations;
pub mod openapi;
mod pathways;
pub mod routes;
mod startup;
pub mod subjects;
mod views;

pub use error::ApiError;
pub use fhir::FhirConfig;
pub use migrations::parse_migration;
pub use startup::Startup;

/// Limits of the API.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Log records the indicators of `/metrics` fold in one go, at a scrape or in the
    /// background (see [`metrics`]).
    pub indicator_records_per_turn: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 4 << 20,
            max_events: 10_000,
            timeout: Duration::from_secs(30),
            indicator_records_per_turn: metrics::RECORDS_PER_TURN,
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
    pub registry: SharedRegistry,
    /// Limits.
    pub limits: Limits,
    /// The FHIR endpoints' settings (`None`: no FHIR endpoints).
    pub fhir: Option<FhirConfig>,
    /// Who may call (every route but the probes and metrics needs credentials).
    pub security: Security,
    /// Patient erasure (`POST /v1/erasures`; `None`: answered 503).
    pub erasure: Option<erasure::SharedEraser>,
}

/// How callers are checked: credentials, requests per caller, TLS (for HSTS).
#[derive(Debug, Clone)]
pub struct Security {
    /// Checks credentials (replaceable: the `--auth` file is read again when it changes).
    pub authenticator: auth::SharedAuthenticator,
    /// Requests per caller.
    pub limit: Arc<auth::RateLimit>,
    /// Whether the listener is TLS (then answers carry HSTS).
    pub tls: bool,
}

impl Security {
    /// From an authenticator, with the default limits (1000 requests a second per
    /// caller, bursts of 2000) and no TLS.
    pub fn new(authenticator: auth::Authenticator) -> Security {
        Security {
            authenticator: auth::SharedAuthenticator::new(authenticator),
            limit: Arc::new(auth::RateLimit::new(1000, 2000)),
            tls: false,
        }
    }

    /// With another limit of requests per caller: `per_sec` a second, bursts of `burst`.
    pub fn with_rate(mut self, per_sec: u32, burst: u32) -> Security {
        self.limit = Arc::new(auth::RateLimit::new(per_sec, burst));
        self
    }

    /// Over TLS (answers carry HSTS).
    pub fn with_tls(mut self, tls: bool) -> Security {
        self.tls = tls;
        self
    }
}

/// The API's router: the routes of [`routes::ROUTES`], each behind its guard but the
/// health probes and metrics, and the security headers on every answer.
pub fn router<S: EventStore + AuditLog + Clone + 'static>(state: AppState<S>) -> Router {
    let limits = state.limits.clone();
    let tls = state.security.tls;
    let metrics = metrics::router(
        state.store.clone(),
        state.registry.clone(),
        state.handle.clone(),
        state.limits.indicator_records_per_turn.max(1),
    );
    let state = Arc::new(state);
    routes::build(&state)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .with_state(state)
        .merge(metrics)
        .layer(axum::middleware::from_fn(move |req, next| {
            error::uniform(limits.max_body, req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            routes::security_headers(tls, req, next)
        }))
}
