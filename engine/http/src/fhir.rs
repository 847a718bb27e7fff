//! FHIR R4 JSON over HTTP: resources and bundles in (Encounter, Observation, Condition,
//! Patient, Task, Communication, Bundle), tasks and alerts out as FHIR Task and
//! Communication. The mapping is `parcours-fhir`'s; this module is the HTTP side.
//!
//! | route | what |
//! |---|---|
//! | `POST /fhir/{tenant}` | a Bundle (transaction, batch, collection) or any mapped resource |
//! | `POST /fhir/{tenant}/{type}` | one resource of that type (201 once recorded, 200 when recorded already) |
//! | `PUT /fhir/{tenant}/Task/{id}` | a care-team system updates a task (completed, cancelled, failed), at its own id (a body naming another task: 400) |
//! | `GET /fhir/{tenant}/Task?owner=&_count=` | open tasks and handoffs as a searchset Bundle (other search parameters are ignored, as FHIR servers do) |
//! | `GET /fhir/{tenant}/Task/{id}`, `GET /fhir/{tenant}/Communication/{id}` | one open task, handoff or alert |
//! | `GET /fhir/{tenant}/metadata` | the CapabilityStatement (no credentials needed: no patient data) |
//!
//! Refusals are OperationOutcomes with the status `parcours-fhir` chose (400, 413, 415,
//! 422), kept as dead letters; XML is refused unread with 415. What the engine then does
//! with each event (recorded, already recorded, queued, refused — kept as a dead letter
//! —, recorded with inputs a pathway ignored) is in the answer: each entry's status and
//! OperationOutcome in a batch response, the OperationOutcome of a resource
//! (`parcours_fhir::Ingest::answer`). An event the engine refused was not recorded: a
//! resource or batch entry answers `422 Unprocessable Entity`, or `409 Conflict` when
//! its id was in the log for another event (`Refused::IdReused`: the resource's id and
//! `meta.versionId` sent before with other content, FHIR's version conflict); a
//! transaction is refused whole with that status, as when one of its entries is
//! refused as read, its OperationOutcome saying that what was recorded stays so.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parcours_core::events::{Event, EventData};
use parcours_core::state::Change;
use parcours_fhir::{Context, EffectView, EventFate, IssueType, Refusal};
use parcours_identity::Pseudonymizer;
use parcours_runtime::codec;
use parcours_runtime::metrics::{self, Source};
use parcours_runtime::service::SubmitError;
use parcours_runtime::{IngestOutcome, Refused};
use parcours_store::{DeadLetter, EventStore, WorkFilter, WorkItem, WorkKind, WorkStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;

type St<S> = State<Arc<AppState<S>>>;

/// How the FHIR endpoints name and pseudonymise patients.
#[derive(Clone, Debug)]
pub struct FhirConfig {
    /// The key that turns patient identifiers into subject keys.
    pub pseudonymizer: Pseudonymizer,
    /// The public base URL of this API (a plain `Patient/123` reference becomes a local
    /// identifier under `<base>/fhir/<tenant>`).
    pub base_url: String,
    /// Accept test INS identities (test platforms only).
    pub allow_test_ins: bool,
}

fn fhir_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// An OperationOutcome of one issue (also every error answer under `/fhir/`:
/// [`crate::error::uniform`]).
pub(crate) fn outcome(status: StatusCode, severity: &str, code: &str, text: &str) -> Response {
    fhir_json(
        status,
        json!({"resourceType": "OperationOutcome",
               "issue": [{"severity": severity, "code": code, "diagnostics": text}]}),
    )
}

fn context<S>(app: &AppState<S>, tenant: &str) -> Result<Context, Box<Response>> {
    let Some(cfg) = &app.fhir else {
        return Err(Box::new(outcome(
            StatusCode::NOT_FOUND,
            "error",
            "not-supported",
            "the FHIR endpoints are not enabled on this server",
        )));
    };
    if crate::handlers::check_tenant(tenant).is_err() {
        return Err(Box::new(outcome(
            StatusCode::BAD_REQUEST,
            "error",
            "value",
            &format!(
                "the tenant in the path must be {}",
                parcours_core::events::TENANT_RULE
            ),
        )));
    }
    Ok(Context::new(
        tenant,
        "http",
        format!("{}/fhir/{tenant}", cfg.base_url.trim_end_matches('/')),
        cfg.pseudonymizer.clone(),
    )
    // One limit, the server's (`--max-body`): the router refuses more already.
    .max_body_bytes(app.limits.max_body)
    .allow_test_ins(cfg.allow_test_ins))
}

/// When the CapabilityStatement's content last changed (its `date`): move it with the
/// routes or resources it lists.
const CAPABILITIES_CHANGED: &str = "2026-12-08";

/// `GET /fhir/{tenant}/metadata`: the CapabilityStatement — what this endpoint takes
/// (resources created through `POST`, Bundles as transaction or batch) and serves (Task
/// read, search by owner, update; Communication read), and how to authenticate. FHIR
/// clients fetch it before anything else.
pub(crate) async fn capabilities<S: EventStore>(
    State(app): St<S>,
    Path(tenant): Path<String>,
) -> Response {
    let ctx = match context(&app, &tenant) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let create = |t: &str, what: &str| json!({"type": t, "documentation": what, "interaction": [{"code": "create"}]});
    fhir_json(
        StatusCode::OK,
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": CAPABILITIES_CHANGED,
            "kind": "instance",
            "software": {"name": "parcours", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {
                "description": format!("parcours care pathways, tenant {tenant}"),
                "url": ctx.base_url(),
            },
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "rest": [{
                "mode": "server",
                "security": {
                    "description": "Authorization: Bearer with an OpenID Connect access token or a parcours API key; the tenant must be one of the caller's",
                    "service": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "OAuth"
                    }]}]
                },
                "resource": [
                    create("Encounter", "admissions and discharges (class, period, hospitalization.dischargeDisposition, diagnosis)"),
                    create("Observation", "lab results and measurements: final, amended and corrected drive the pathways; entered-in-error withdraws a result"),
                    create("Condition", "diagnoses (ICD-10) that enrol patients, at recordedDate, else meta.lastUpdated or the bundle's timestamp (not the onset)"),
                    create("Patient", "identity (INS, IPP): pseudonymised on arrival, never stored in clear; link replaced-by / replaces merges two records (the retired one leads to the survivor), at meta.lastUpdated"),
                    {
                        "type": "Task",
                        "documentation": "the care teams' tasks and handoffs (searched: the open ones; read by id: closed ones too, with how they ended); PUT one at its own id with a status (completed; cancelled, with statusReason not-needed when it was not needed; failed — a handoff: accepted or rejected) to answer it, and executionPeriod.end (else lastModified) set to when it was done — a lastModified sent back as read (a time parcours gave the task), without executionPeriod.end, is refused; an answer is final (the same again: 200; another: 409); a task the tenant does not have: 404",
                        "interaction": [{"code": "read"}, {"code": "update"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": "owner", "type": "reference", "documentation": "the role the task waits on (or was escalated to), as a plain role name: ?owner=gp"},
                            {"name": "_count", "type": "number"}
                        ]
                    },
                    {
                        "type": "Communication",
                        "documentation": "alerts (read by id, open or closed); POST the Communication read, with status completed, to acknowledge one",
                        "interaction": [{"code": "read"}, {"code": "create"}]
                    }
                ],
                "interaction": [{"code": "transaction"}, {"code": "batch"}]
            }]
        }),
    )
}

async fn refuse<S: EventStore>(
    app: &AppState<S>,
    tenant: &str,
    r: &Refusal,
    body: &[u8],
) -> Response {
    let reason = r.to_string();
    let letter = DeadLetter {
        source: "fhir".into(),
        tenant: Some(tenant.to_string()),
        reason,
        payload: body.to_vec(),
    };
    metrics::dead_letter("fhir");
    if let Err(e) = app.store.dead_letter(letter).await {
        tracing::error!(error = %e, "could not keep a refused FHIR request as a dead letter");
    }
    let status = StatusCode::from_u16(r.status.code()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    fhir_json(status, r.to_json())
}

/// Take a FHIR request (`method`: `POST` creates, `PUT` updates): map it, submit its
/// events, and answer with what became of each ([`parcours_fhir::Ingest::answer`]).
async fn take<S: EventStore>(
    app: &AppState<S>,
    tenant: &str,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
    // The resource type the URL names, and for an update the id it names.
    url: Option<(&str, Option<&str>)>,
) -> Response {
    let ctx = match context(app, tenant) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Err(r) = parcours_fhir::check_content_type(ct) {
        return refuse(app, tenant, &r, body).await;
    }
    if let Some((ty, id)) = url {
        // One resource, at most the body's limit: read once for both checks.
        let resource = serde_json::from_slice::<Value>(body).ok();
        let declared = resource
            .as_ref()
            .and_then(|v| v["resourceType"].as_str().map(str::to_string));
        if let Some(d) = declared.as_deref().filter(|d| *d != ty) {
            // A resource type is a word of FHIR's, not patient data; shown when it is one.
            let d = if d.len() <= 64 && d.bytes().all(|b| b.is_ascii_alphabetic()) {
                d
            } else {
                "another resource"
            };
            let r = Refusal::bad_request(
                IssueType::Invalid,
                format!("the body is a {d} but the URL says {ty}"),
            )
            .at("resourceType");
            return refuse(app, tenant, &r, body).await;
        }
        // FHIR's update: the resource's id is the URL's, else 400. A Task naming another
        // task (by `id` or by the identifier parcours gave it) would answer the wrong one.
        if let Some(id) = id
            && let Some(other) = resource
                .as_ref()
                .and_then(|v| parcours_fhir::names_another_resource(v, id))
        {
            let r = Refusal::bad_request(
                IssueType::Invalid,
                format!("`{other}` is not the task of the URL: PUT each Task at its own id"),
            )
            .at(other);
            return refuse(app, tenant, &r, body).await;
        }
    }
    let ingest = match parcours_fhir::ingest(body, &ctx) {
        Ok(i) => i,
        Err(r) => return refuse(app, tenant, &r, body).await,
    };
    // Answers to tasks, handoffs and alerts checked against what they answer first, as
    // the /v1 answer routes do: those that cannot apply are not submitted.
    // Which Tasks state when they were done: read from the body only when it answers.
    let stated = if ingest.events.iter().any(|e| answer_of(&e.data).is_some()) {
        done_when_stated(body)
    } else {
        Default::default()
    };
    let mut fates = match answers_checked(app, tenant, &ingest.events, &stated).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "could not read the work items a FHIR request answers");
            return outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "transient",
                "the log could not be read; send again later",
            );
        }
    };
    for e in &ingest.events {
        if let Some(EventFate::Refused { reason }) = fates.get(&e.id) {
            keep_refused(app, tenant, e, reason).await;
        }
    }
    let submitted: Vec<Event> = ingest
        .events
        .iter()
        .filter(|e| !fates.contains_key(&e.id))
        .cloned()
        .collect();
    if !submitted.is_empty() {
        match metrics::submit(&app.handle, Source::Fhir, submitted.clone()).await {
            Ok(results) => {
                for (e, r) in submitted.iter().zip(&results) {
                    let fate = match r {
                        Ok(
                            IngestOutcome::Committed { warnings, .. }
                            | IngestOutcome::CommittedByOwner { warnings },
                        ) => EventFate::Recorded {
                            warnings: warnings.clone(),
                        },
                        Ok(IngestOutcome::Duplicate) => EventFate::Duplicate,
                        Ok(IngestOutcome::Queued) => EventFate::Queued,
                        Err(reason) => {
                            keep_refused(app, tenant, e, &reason.to_string()).await;
                            // An id reused with other content: the resource's id and
                            // version were recorded before with other content, FHIR's
                            // version conflict (409); any other refusal breaks a rule
                            // (422).
                            let reason = reason.to_string();
                            if matches!(r, Err(Refused::IdReused(_))) {
                                EventFate::Conflict { reason }
                            } else {
                                EventFate::Refused { reason }
                            }
                        }
                    };
                    fates.insert(e.id.clone(), fate);
                }
                if results
                    .iter()
                    .all(|r| matches!(r, Ok(IngestOutcome::Duplicate)))
                {
                    tracing::debug!(events = results.len(), "FHIR request already recorded");
                }
            }
            Err(SubmitError::ShuttingDown) => {
                return outcome(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    "transient",
                    "the engine is shutting down; send again later",
                );
            }
            Err(SubmitError::Unavailable(m)) => {
                return outcome(StatusCode::SERVICE_UNAVAILABLE, "error", "transient", &m);
            }
        }
    }
    let answer = ingest.answer(method, &fates);
    fhir_json(
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
        answer.body,
    )
}

pub(crate) async fn post_bundle<S: EventStore>(
    State(app): St<S>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(&app, &tenant, "POST", &headers, &body, None).await
}

pub(crate) async fn post_resource<S: EventStore>(
    State(app): St<S>,
    Path((tenant, ty)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(&app, &tenant, "POST", &headers, &body, Some((&ty, None))).await
}

pub(crate) async fn put_task<S: EventStore>(
    State(app): St<S>,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    take(
        &app,
        &tenant,
        "PUT",
        &headers,
        &body,
        Some(("Task", Some(&id))),
    )
    .await
}

/// Keep an event refused (by the engine, or as an answer that cannot apply) as a dead
/// letter, with the reason.
async fn keep_refused<S: EventStore>(app: &AppState<S>, tenant: &str, e: &Event, reason: &str) {
    let letter = DeadLetter {
        source: "fhir".into(),
        tenant: Some(tenant.to_string()),
        reason: reason.to_owned(),
        payload: serde_json::to_vec(e).unwrap_or_default(),
    };
    metrics::dead_letter("fhir");
    if let Err(e) = app.store.dead_letter(letter).await {
        tracing::error!(error = %e, "could not keep a refused FHIR event as a dead letter");
    }
}

/// What a FHIR Task or Communication update answers: the item's id, its kind, and the
/// status it closes it with.
fn answer_of(data: &EventData) -> Option<(&str, WorkKind, WorkStatus)> {
    Some(match data {
        EventData::TaskCompleted(d) => (&d.task_id, WorkKind::Task, WorkStatus::Completed),
        EventData::TaskNotNeeded(d) => (&d.task_id, WorkKind::Task, WorkStatus::NotNeeded),
        EventData::TaskCouldNotBeDone(d) => {
            (&d.task_id, WorkKind::Task, WorkStatus::CouldNotBeDone)
        }
        EventData::HandoffAccepted(d) => (&d.handoff_id, WorkKind::Handoff, WorkStatus::Accepted),
        EventData::HandoffDeclined(d) => (&d.handoff_id, WorkKind::Handoff, WorkStatus::Declined),
        EventData::AlertAcknowledged(d) => (&d.alert_id, WorkKind::Alert, WorkStatus::Acknowledged),
        _ => return None,
    })
}

/// The answers among `events` that cannot apply, and why, as the /v1 answer routes
/// refuse them: one answering what this tenant does not have (404); one answering an
/// item closed already — the same way: already recorded (a resend, answered as such);
/// otherwise: 409, an answer is final; one naming another patient than the item's (a
/// Task read for one patient, its `for` changed: 422); a Task's answer that does not
/// state `executionPeriod.end` and whose time is one parcours served for it (its
/// `lastModified` or `meta.lastUpdated`, sent back unchanged by a read-modify-write, not
/// when the task was done: 422; `stated`: the Tasks that state it). None of these is
/// submitted.
async fn answers_checked<S: EventStore>(
    app: &AppState<S>,
    tenant: &str,
    events: &[Event],
    stated: &std::collections::HashSet<String>,
) -> Result<HashMap<String, EventFate>, parcours_store::StoreError> {
    let mut fates = HashMap::new();
    for e in events {
        let Some((id, kind, closes_as)) = answer_of(&e.data) else {
            continue;
        };
        let what = kind.as_str();
        let fate = match app.store.work_item(id).await? {
            Some(item) if item.tenant == tenant && item.kind == kind => {
                if !item.status.is_open() {
                    if item.status == closes_as {
                        Some(EventFate::Duplicate)
                    } else {
                        Some(EventFate::Closed {
                            reason: format!(
                                "{what} `{id}` is closed already ({}); an answer is final",
                                item.status.as_str()
                            ),
                        })
                    }
                } else if item.subject != e.subject {
                    Some(EventFate::Refused {
                        reason: format!(
                            "it names another patient than the {what}'s (`Task.for`, `Communication.subject`): read the {what} again and answer it as read"
                        ),
                    })
                } else if kind != WorkKind::Alert
                    && !stated.contains(id)
                    && history_of(app, &item)
                        .await
                        .is_some_and(|h| h.iter().any(|(_, rec)| rec.at == e.occurred_at))
                {
                    Some(EventFate::Refused {
                        reason: format!(
                            "its time is one parcours gave this {what} (`lastModified`, `meta.lastUpdated` as read), not when it was done: set `executionPeriod.end` (or `lastModified`) to when it was done"
                        ),
                    })
                } else {
                    None
                }
            }
            _ => Some(EventFate::NotFound {
                reason: format!("no {what} `{id}` in this tenant"),
            }),
        };
        if let Some(fate) = fate {
            fates.insert(e.id.clone(), fate);
        }
    }
    Ok(fates)
}

/// The ids of the Tasks of a request body (alone, or entries of a Bundle) that state
/// when they were done (`executionPeriod.end`): their time is the care team's, whatever
/// it coincides with.
fn done_when_stated(body: &[u8]) -> std::collections::HashSet<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Default::default();
    };
    let resources: Vec<&Value> = match v["resourceType"].as_str() {
        Some("Bundle") => v["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
            .collect(),
        _ => vec![&v],
    };
    resources
        .into_iter()
        .filter(|r| r["resourceType"] == "Task" && r["executionPeriod"]["end"].is_string())
        .flat_map(|r| {
            let own = r["id"].as_str().map(str::to_owned);
            let named = r["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["value"].as_str().map(str::to_owned));
            own.into_iter().chain(named)
        })
        .collect()
}

/// The records about a work item since its latest request, oldest (the request) first,
/// each with its log position: what its FHIR resource shows.
async fn history_of<S: EventStore>(
    app: &AppState<S>,
    item: &WorkItem,
) -> Option<Vec<(u64, parcours_core::state::Recorded)>> {
    let records = app.store.read_stream(&item.stream, 0).await.ok()?;
    let about = |c: &Change| -> bool {
        let id = match c {
            Change::TaskRequested { task_id, .. }
            | Change::TaskReminded { task_id, .. }
            | Change::TaskOverdue { task_id, .. }
            | Change::TaskEscalated { task_id, .. }
            | Change::TaskClosed { task_id, .. } => task_id,
            Change::AlertRaised { alert_id, .. }
            | Change::AlertEscalated { alert_id, .. }
            | Change::AlertClosed { alert_id, .. } => alert_id,
            Change::HandoffRequested { handoff_id, .. }
            | Change::HandoffEscalated { handoff_id, .. }
            | Change::HandoffClosed { handoff_id, .. } => handoff_id,
            _ => return false,
        };
        id.to_string() == item.id
    };
    let decoded: Vec<(u64, parcours_core::state::Recorded)> = records
        .iter()
        .filter_map(|r| {
            codec::decode_instance(r)
                .ok()
                .map(|recs| (r.position, recs))
        })
        .flat_map(|(position, recs)| recs.into_iter().map(move |rec| (position, rec)))
        .filter(|(_, rec)| about(&rec.change))
        .collect();
    let requested = decoded.iter().rposition(|(_, rec)| {
        matches!(
            rec.change,
            Change::TaskRequested { .. }
                | Change::AlertRaised { .. }
                | Change::HandoffRequested { .. }
        )
    });
    let mut since = decoded;
    since.drain(..requested.unwrap_or(0));
    (!since.is_empty()).then_some(since)
}

/// The FHIR resource of an open work item: its request's (which carries the full
/// description; later records only move it on), at the version of the latest record
/// about it (`meta.versionId`: a log position, as in the effects).
async fn resource_of<S: EventStore>(app: &AppState<S>, item: &WorkItem) -> Option<Value> {
    let history = history_of(app, item).await?;
    let latest = history.last().map(|(position, rec)| (*position, rec.at));
    // A closed item: how it closed, as the closing effect said it (its status, reason,
    // end, business status), on the request's full description.
    let closing = history
        .last()
        .filter(|(_, rec)| {
            matches!(
                rec.change,
                Change::TaskClosed { .. }
                    | Change::AlertClosed { .. }
                    | Change::HandoffClosed { .. }
            )
        })
        .and_then(|(position, rec)| {
            parcours_fhir::resource(&EffectView::new(
                rec,
                &item.tenant,
                &item.subject,
                &item.stream,
                *position,
            ))
        });
    let found = history.into_iter().next();
    let (position, rec) = found?;
    let view = EffectView::new(&rec, &item.tenant, &item.subject, &item.stream, position);
    let mut v = parcours_fhir::resource(&view)?;
    if let Some(closed) = closing {
        for field in [
            "status",
            "statusReason",
            "executionPeriod",
            "businessStatus",
        ] {
            match closed.get(field) {
                Some(value) => v[field] = value.clone(),
                None => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove(field);
                    }
                }
            }
        }
        if v["resourceType"] == "Communication" {
            v["meta"]["tag"] = closed["meta"]["tag"].clone();
        }
        if let Some((version, at)) = latest {
            v["meta"]["versionId"] = json!(version.to_string());
            v["meta"]["lastUpdated"] = json!(at.to_string());
            if v["resourceType"] == "Task" {
                v["lastModified"] = json!(at.to_string());
            }
        }
        return Some(v);
    }
    if let Some((version, at)) = latest.filter(|(p, _)| *p != position) {
        v["meta"]["versionId"] = json!(version.to_string());
        v["meta"]["lastUpdated"] = json!(at.to_string());
        if v["resourceType"] == "Task" {
            v["lastModified"] = json!(at.to_string());
        }
    }
    // Who its latest escalation told: the Task's owner, one more Communication recipient.
    if let Some(role) = item.escalated_to.as_deref() {
        parcours_fhir::show_escalation(&mut v, role);
    }
    // Where the item stands now (overdue, escalated), in the element FHIR R4 has for it:
    // a Task's `businessStatus`; a Communication's business-status tag (R4 gives a
    // Communication no business status).
    let now = item.status.as_str();
    if item.status != WorkStatus::Open {
        match v["resourceType"].as_str() {
            Some("Task") => {
                v["businessStatus"] = json!({
                    "coding": [{"system": parcours_fhir::BUSINESS_STATUS_SYSTEM, "code": now}],
                    "text": now,
                });
            }
            _ => {
                for tag in v
                    .pointer_mut("/meta/tag")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|t| t["system"] == parcours_fhir::BUSINESS_STATUS_SYSTEM)
                {
                    tag["code"] = json!(now);
                }
            }
        }
    }
    Some(v)
}

#[derive(Debug, Deserialize)]
pub(crate) struct TaskSearch {
    owner: Option<String>,
    #[serde(rename = "_count")]
    count: Option<usize>,
}

pub(crate) async fn search_tasks<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(q): Query<TaskSearch>,
) -> Response {
    if let Err(r) = context(&app, &tenant) {
        return *r;
    }
    // A care-team member searches its own roles' tasks only.
    let owner = match caller.work_role(q.owner.clone()) {
        Ok(o) => o,
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            return outcome(
                e.status,
                "error",
                "required",
                "give `?owner=<task role>`: one of your care-team roles",
            );
        }
        Err(e) => {
            return outcome(e.status, "error", "forbidden", &e.message);
        }
    };
    // At most `_count` entries, tasks first, then handoffs; `total` only when every
    // match is in the page (FHIR: the number of matches, which a cut page cannot tell).
    let count = q.count.unwrap_or(100).clamp(1, 1000);
    let mut entries = Vec::new();
    let mut complete = true;
    for kind in [WorkKind::Task, WorkKind::Handoff] {
        let room = count - entries.len();
        if room == 0 {
            complete = false;
            break;
        }
        let mut items = match app
            .store
            .work_items(&WorkFilter {
                tenant: tenant.clone(),
                role: owner.clone(),
                kind: Some(kind),
                // One more than there is room for: whether more remain.
                limit: room + 1,
                ..WorkFilter::default()
            })
            .await
        {
            Ok(i) => i,
            Err(e) => {
                return outcome(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    "transient",
                    &e.to_string(),
                );
            }
        };
        if items.len() > room {
            items.truncate(room);
            complete = false;
        }
        for item in &items {
            if let Some(r) = resource_of(&app, item).await {
                entries.push(json!({"resource": r, "search": {"mode": "match"}}));
            }
        }
    }
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
    if complete {
        bundle["total"] = json!(entries.len());
    }
    fhir_json(StatusCode::OK, bundle)
}

async fn read<S: EventStore>(
    app: &AppState<S>,
    caller: &Caller,
    tenant: &str,
    id: &str,
    kinds: &[WorkKind],
) -> Response {
    if let Err(r) = context(app, tenant) {
        return *r;
    }
    // Open or closed (a care-team system reads how a task it answered ended).
    match app.store.work_item(id).await {
        Ok(Some(item))
            if item.tenant == tenant && kinds.contains(&item.kind) && caller.may_work_on(&item) =>
        {
            match resource_of(app, &item).await {
                Some(r) => fhir_json(StatusCode::OK, r),
                None => outcome(
                    StatusCode::NOT_FOUND,
                    "error",
                    "not-found",
                    "no such resource",
                ),
            }
        }
        Ok(_) => outcome(
            StatusCode::NOT_FOUND,
            "error",
            "not-found",
            "no resource with this id in this tenant",
        ),
        Err(e) => outcome(
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            "transient",
            &e.to_string(),
        ),
    }
}

pub(crate) async fn read_task<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    read(
        &app,
        &caller,
        &tenant,
        &id,
        &[WorkKind::Task, WorkKind::Handoff],
    )
    .await
}

pub(crate) async fn read_communication<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    read(&app, &caller, &tenant, &id, &[WorkKind::Alert]).await
}
