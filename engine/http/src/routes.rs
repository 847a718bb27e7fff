//! The route table: every route, its method, its action (the name the audit trail
//! records) and the permission it needs. The router is built from it, every guarded
//! route behind its guard (`guard`), and the route-matrix test (`tests/authz.rs`) calls
//! every route of it without credentials, with each role and with another tenant's
//! principal: a new route cannot forget authorisation.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use jiff::Timestamp;
use parcours_store::{AuditEntry, AuditLog, AuditOutcome, EventStore};

use crate::auth::{Caller, EVERY_TENANT, Permission, Principal, Scope, Tenants};
use crate::error::ApiError;
use crate::{
    AppState, asyncapi, audit, erasure, fhir, handlers, migrations, openapi, pathways, subjects,
};

/// What a route does (a closed set: each has one handler and one permission).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Action {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    AsyncApi,
    PostEvents,
    ListInstances,
    ReadInstance,
    ReadHistory,
    PatientInstances,
    ListWork,
    TaskOutcome,
    HandoffAnswer,
    AlertAck,
    Effects,
    DeadLetters,
    DeadLetter,
    DeadLetterContent,
    Pathways,
    PathwayGraph,
    PathwaySource,
    CheckPathway,
    PublishPathway,
    CheckMigration,
    Migrate,
    Audit,
    ErasePatient,
    LookUpSubjects,
    FhirBundle,
    FhirResource,
    FhirTaskSearch,
    FhirTaskRead,
    FhirTaskUpdate,
    FhirCommunicationRead,
    FhirMetadata,
}

impl Action {
    /// What it needs.
    pub fn permission(self) -> Permission {
        use Action::*;
        match self {
            // What the server takes and serves, no patient data: FHIR clients read it
            // first, to learn among other things how to authenticate.
            Healthz | Readyz | Metrics | OpenApi | AsyncApi | FhirMetadata => Permission::Public,
            PostEvents => Permission::Record,
            FhirBundle | FhirResource | FhirTaskUpdate => Permission::Ingest,
            ListInstances | ReadInstance | ReadHistory | PatientInstances => {
                Permission::ReadInstances
            }
            ListWork | FhirTaskSearch | FhirTaskRead | FhirCommunicationRead => {
                Permission::ReadTasks
            }
            TaskOutcome | HandoffAnswer | AlertAck => Permission::AnswerTasks,
            Effects => Permission::ReadFeeds,
            DeadLetters | DeadLetter => Permission::ReadDeadLetters,
            DeadLetterContent => Permission::ReadDeadLetterContent,
            Pathways | PathwayGraph | PathwaySource | CheckPathway => Permission::ReadPathways,
            PublishPathway => Permission::PublishPathways,
            CheckMigration => Permission::ReadInstances,
            Migrate => Permission::Migrate,
            Audit => Permission::ReadAudit,
            ErasePatient => Permission::Erase,
            LookUpSubjects => Permission::FindPatients,
        }
    }

    /// Its name in the audit trail.
    pub fn name(self) -> &'static str {
        use Action::*;
        match self {
            Healthz => "healthz",
            Readyz => "readyz",
            Metrics => "metrics",
            OpenApi => "openapi",
            AsyncApi => "asyncapi",
            PostEvents => "events.post",
            ListInstances => "instances.list",
            ReadInstance => "instance.read",
            ReadHistory => "instance.history",
            PatientInstances => "patient.instances",
            ListWork => "tasks.list",
            TaskOutcome => "task.outcome",
            HandoffAnswer => "handoff.answer",
            AlertAck => "alert.acknowledge",
            Effects => "effects.read",
            DeadLetters => "dead_letters.read",
            DeadLetter => "dead_letter.read",
            DeadLetterContent => "dead_letter.content",
            Pathways => "pathways.list",
            PathwayGraph => "pathway.graph",
            PathwaySource => "pathway.source",
            CheckPathway => "pathway.check",
            PublishPathway => "pathway.publish",
            CheckMigration => "migration.check",
            Migrate => "migration.apply",
            Audit => "audit.read",
            ErasePatient => "patient.erase",
            LookUpSubjects => "subjects.lookup",
            FhirBundle => "fhir.post",
            FhirResource => "fhir.post_resource",
            FhirTaskSearch => "fhir.task_search",
            FhirTaskRead => "fhir.task_read",
            FhirTaskUpdate => "fhir.task_update",
            FhirCommunicationRead => "fhir.communication_read",
            FhirMetadata => "fhir.metadata",
        }
    }
}

/// One route.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path, axum syntax (`/v1/instances/{id}`).
    pub path: &'static str,
    /// What it does.
    pub action: Action,
}

const fn r(method: &'static str, path: &'static str, action: Action) -> Route {
    Route {
        method,
        path,
        action,
    }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", Action::Healthz),
    r("GET", "/readyz", Action::Readyz),
    r("GET", "/metrics", Action::Metrics),
    r("GET", "/v1/openapi.json", Action::OpenApi),
    r("GET", "/v1/asyncapi.json", Action::AsyncApi),
    r("POST", "/v1/events", Action::PostEvents),
    r("GET", "/v1/instances", Action::ListInstances),
    r("GET", "/v1/instances/{id}", Action::ReadInstance),
    r("GET", "/v1/instances/{id}/history", Action::ReadHistory),
    r(
        "GET",
        "/v1/patients/{subject}/instances",
        Action::PatientInstances,
    ),
    r("GET", "/v1/tasks", Action::ListWork),
    r("POST", "/v1/tasks/{id}/outcome", Action::TaskOutcome),
    r("POST", "/v1/handoffs/{id}/answer", Action::HandoffAnswer),
    r("POST", "/v1/alerts/{id}/acknowledge", Action::AlertAck),
    r("GET", "/v1/effects", Action::Effects),
    r("GET", "/v1/dead-letters", Action::DeadLetters),
    r("GET", "/v1/dead-letters/{id}", Action::DeadLetter),
    r(
        "GET",
        "/v1/dead-letters/{id}/content",
        Action::DeadLetterContent,
    ),
    r("GET", "/v1/pathways", Action::Pathways),
    r("POST", "/v1/pathways", Action::PublishPathway),
    r("POST", "/v1/pathways/check", Action::CheckPathway),
    r("POST", "/v1/migrations", Action::Migrate),
    r("POST", "/v1/migrations/check", Action::CheckMigration),
    r(
        "GET",
        "/v1/pathways/{id}/{version}/graph",
        Action::PathwayGraph,
    ),
    r(
        "GET",
        "/v1/pathways/{id}/{version}/source",
        Action::PathwaySource,
    ),
    r("GET", "/v1/audit", Action::Audit),
    r("POST", "/v1/erasures", Action::ErasePatient),
    r("POST", "/v1/subjects", Action::LookUpSubjects),
    r("POST", "/fhir/{tenant}", Action::FhirBundle),
    r("GET", "/fhir/{tenant}/metadata", Action::FhirMetadata),
    r("GET", "/fhir/{tenant}/Task", Action::FhirTaskSearch),
    r("GET", "/fhir/{tenant}/Task/{id}", Action::FhirTaskRead),
    r("PUT", "/fhir/{tenant}/Task/{id}", Action::FhirTaskUpdate),
    r(
        "GET",
        "/fhir/{tenant}/Communication/{id}",
        Action::FhirCommunicationRead,
    ),
    r("POST", "/fhir/{tenant}/{type}", Action::FhirResource),
];

type St<S> = Arc<AppState<S>>;

fn handler<S: EventStore + AuditLog + Clone + 'static>(
    filter: MethodFilter,
    action: Action,
) -> MethodRouter<St<S>> {
    use Action::*;
    match action {
        Healthz => on(filter, handlers::healthz),
        Readyz => on(filter, handlers::readyz::<S>),
        // Served by the metrics router (its own state); never reached.
        Metrics => on(filter, handlers::not_found),
        OpenApi => on(filter, openapi::serve),
        AsyncApi => on(filter, asyncapi::serve),
        PostEvents => on(filter, handlers::post_events::<S>),
        ListInstances => on(filter, handlers::list_instances::<S>),
        ReadInstance => on(filter, handlers::get_instance::<S>),
        ReadHistory => on(filter, handlers::history::<S>),
        PatientInstances => on(filter, handlers::patient_instances::<S>),
        ListWork => on(filter, handlers::list_work::<S>),
        TaskOutcome => on(filter, handlers::task_outcome::<S>),
        HandoffAnswer => on(filter, handlers::handoff_answer::<S>),
        AlertAck => on(filter, handlers::alert_ack::<S>),
        Effects => on(filter, handlers::effects::<S>),
        DeadLetters => on(filter, handlers::dead_letters::<S>),
        DeadLetter => on(filter, handlers::dead_letter::<S>),
        DeadLetterContent => on(filter, handlers::dead_letter_content::<S>),
        Pathways => on(filter, handlers::pathways::<S>),
        PathwayGraph => on(filter, handlers::pathway_graph::<S>),
        PathwaySource => on(filter, pathways::source_text::<S>),
        CheckPathway => on(filter, pathways::check::<S>),
        PublishPathway => on(filter, pathways::publish::<S>),
        CheckMigration => on(filter, migrations::check::<S>),
        Migrate => on(filter, migrations::apply::<S>),
        Audit => on(filter, audit::read::<S>),
        ErasePatient => on(filter, erasure::erase::<S>),
        LookUpSubjects => on(filter, subjects::lookup::<S>),
        FhirBundle => on(filter, fhir::post_bundle::<S>),
        FhirResource => on(filter, fhir::post_resource::<S>),
        FhirTaskSearch => on(filter, fhir::search_tasks::<S>),
        FhirMetadata => on(filter, fhir::capabilities::<S>),
        FhirTaskRead => on(filter, fhir::read_task::<S>),
        FhirTaskUpdate => on(filter, fhir::put_task::<S>),
        FhirCommunicationRead => on(filter, fhir::read_communication::<S>),
    }
}

/// The routes of the table (but `/metrics`, merged with its own state), each behind its
/// guard.
pub(crate) fn build<S: EventStore + AuditLog + Clone + 'static>(state: &St<S>) -> Router<St<S>> {
    let mut router = Router::new();
    let trail = Arc::new(audit::Trail::new(state.store.clone()));
    for route in ROUTES {
        if route.action == Action::Metrics {
            continue;
        }
        let method = Method::from_bytes(route.method.as_bytes()).unwrap_or(Method::GET);
        let filter = MethodFilter::try_from(method).unwrap_or(MethodFilter::GET);
        let mut h = handler::<S>(filter, route.action);
        if route.action.permission() != Permission::Public {
            h = h.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), route.action, trail.clone()),
                guard::<S>,
            ));
        }
        router = router.route(route.path, h);
    }
    router
}

fn refuse(e: ApiError) -> Response {
    let unauthenticated = e.status == StatusCode::UNAUTHORIZED;
    let mut r = e.into_response();
    if unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"parcours\""),
        );
    }
    r
}

fn outcome_of(status: StatusCode) -> AuditOutcome {
    match status.as_u16() {
        0..=399 => AuditOutcome::Allowed,
        401 | 403 | 404 => AuditOutcome::Denied,
        _ => AuditOutcome::Error,
    }
}

async fn record<S: AuditLog + Clone + 'static>(
    trail: &audit::Trail<S>,
    p: &Principal,
    action: Action,
    scope: Scope,
    status: StatusCode,
) -> Result<(), ()> {
    #[allow(clippy::disallowed_methods)]
    let at = Timestamp::now();
    let entry = AuditEntry {
        at,
        actor: p.id.clone(),
        action: action.name().into(),
        target: scope.target,
        tenant: scope.tenant,
        outcome: outcome_of(status),
        detail: Some(status.as_u16().to_string()),
    };
    trail.write(entry).await.map_err(|e| {
        tracing::error!(error = %e, "could not write the audit trail; refusing the answer");
    })
}

/// Check a guarded route's caller: authenticated, permitted, rate-limited, in the
/// tenant its path or query names (filled in for a caller of one tenant); then run the
/// handler and record the audit entry. An entry that cannot be written fails the
/// request (503): nothing is answered that the trail does not show.
pub(crate) async fn guard<S: EventStore + AuditLog + Clone + 'static>(
    State((app, action, trail)): State<(St<S>, Action, Arc<audit::Trail<S>>)>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match app.security.authenticator.authenticate(req.headers()).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::info!(action = action.name(), reason = %e, "request refused: not authenticated");
            return refuse(ApiError::unauthenticated(e.to_string()));
        }
    };
    // Rate limiting measures wall time (the API is not the deterministic core).
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    if !app.security.limit.take(&principal.id, now) {
        return refuse(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: "too many requests from this caller; slow down".into(),
            details: None,
        });
    }
    let mut scope = Scope {
        tenant: principal.only_tenant().map(str::to_string),
        target: None,
    };
    let mut path_tenant = None;
    for (name, value) in &params {
        match name {
            "tenant" => path_tenant = Some(value.to_string()),
            "id" | "subject" => scope.target = Some(value.to_string()),
            _ => {}
        }
    }
    let denied = |scope: Scope, e: ApiError| {
        let trail = trail.clone();
        let principal = principal.clone();
        async move {
            let status = e.status;
            match record(&trail, &principal, action, scope, status).await {
                Ok(()) => refuse(e),
                Err(()) => refuse(ApiError::unavailable("the audit trail is unavailable")),
            }
        }
    };
    if !action.permission().allows(&principal) {
        return denied(
            scope,
            ApiError::forbidden(format!("your roles do not allow `{}`", action.name())),
        )
        .await;
    }
    if action.permission().deployment_wide() && principal.tenants != Tenants::All {
        return denied(
            scope,
            ApiError::forbidden(format!(
                "`{}` acts for every tenant of this deployment: it needs a principal of \
                 every tenant (`tenants: [\"*\"]`)",
                action.name()
            )),
        )
        .await;
    }
    // The tenant a path or query names must be the caller's.
    let query: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or_default();
    let asked: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "tenant")
        .map(|(_, v)| v.as_str())
        .chain(path_tenant.as_deref())
        .collect();
    if asked.len() > 1 && asked.iter().any(|t| *t != asked[0]) {
        return denied(
            scope,
            ApiError::bad_request("ambiguous_tenant", "name one tenant"),
        )
        .await;
    }
    match asked.first() {
        Some(t) if !principal.has_tenant(t) => {
            let e = ApiError::forbidden(format!("you are not a member of tenant `{t}`"));
            // The attempt is the named tenant's to see (`*`, every tenant: the
            // deployment's own entries).
            scope.tenant = (*t != EVERY_TENANT).then(|| (*t).to_string());
            return denied(scope, e).await;
        }
        Some(t) => scope.tenant = (*t != EVERY_TENANT).then(|| (*t).to_string()),
        None => {
            if let Some(t) = principal.only_tenant() {
                // Fill in the caller's one tenant for the handlers that read `?tenant=`.
                scope.tenant = Some(t.to_string());
                let uri = req.uri();
                let pq = match uri.query() {
                    Some(q) if !q.is_empty() => format!("{}?{q}&tenant={t}", uri.path()),
                    _ => format!("{}?tenant={t}", uri.path()),
                };
                if let Ok(new) = pq.parse() {
                    *req.uri_mut() = new;
                }
            }
        }
    }
    let scope = Arc::new(Mutex::new(scope));
    req.extensions_mut().insert(Caller {
        principal: principal.clone(),
        scope: scope.clone(),
    });
    let mut response = next.run(req).await;
    let scope = scope
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    if record(&trail, &principal, action, scope, response.status())
        .await
        .is_err()
    {
        return refuse(ApiError::unavailable("the audit trail is unavailable"));
    }
    // Answers of guarded routes carry patient data or depend on who asks.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Security headers on every answer (HSTS when the listener is TLS).
pub(crate) async fn security_headers(tls: bool, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    set_security_headers(&mut r, tls);
    r
}

/// The headers [`security_headers`] sets, on one answer.
pub(crate) fn set_security_headers(r: &mut Response, tls: bool) {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.remove(header::SERVER);
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}
