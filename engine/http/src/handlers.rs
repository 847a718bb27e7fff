//! Request handlers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jiff::Timestamp;
use parcours_core::events::{Event, EventData, data};
use parcours_core::state::Change;
use parcours_runtime::codec;
use parcours_runtime::metrics::{self, Source};
use parcours_runtime::relay::effects_of;
use parcours_runtime::service::{EventResult, SubmitError};
use parcours_runtime::{IngestOutcome, Refused, load_instance};
use parcours_store::{
    DeadLetter, DeadLetterFilter, EventStore, InstanceFilter, StoredDeadLetter, WorkCursor,
    WorkFilter, WorkKind, WorkStatus,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{COORDINATOR_EVENTS, Caller, Role, Tenants};
use crate::error::ApiError;
use crate::{AppState, views};

type St<S> = State<Arc<AppState<S>>>;

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz<S: EventStore>(State(app): St<S>) -> Response {
    let h = app.handle.health();
    let ready = h.ready();
    let body = Json(json!({
        "ready": ready,
        "store_failing": h.store_failing.load(std::sync::atomic::Ordering::Relaxed),
        "bus_failing": h.bus_failing.load(std::sync::atomic::Ordering::Relaxed),
        "stopping": h.stopping.load(std::sync::atomic::Ordering::Relaxed),
        "intake_failing": h.intake_failing.load(std::sync::atomic::Ordering::Relaxed),
        "bus_disconnected": h.bus_disconnected.load(std::sync::atomic::Ordering::Relaxed),
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see the API table in the README")
}

/// Whether a tenant id is well formed: `[a-z0-9_-]{1,64}` (it becomes a token of NATS
/// subjects and a label of metrics).
pub(crate) fn check_tenant(t: &str) -> Result<(), ()> {
    if parcours_core::events::valid_tenant(t) {
        Ok(())
    } else {
        Err(())
    }
}

/// Check the envelope of an inbound event ([`parcours_core::events::check_envelope`]).
pub(crate) fn check_envelope(e: &Event) -> Result<(), String> {
    parcours_core::events::check_envelope(e)
}

/// Whether a body's declared type is `application/json` or one of `also`, or none at
/// all or curl's default for `-d` (`application/x-www-form-urlencoded`), read as JSON.
/// Anything else (`text/plain`, XML, a form upload) is refused with 415 before the body
/// is read; `expected` says what to send.
fn json_content_type(headers: &HeaderMap, also: &[&str], expected: &str) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(()); // curl -d without a type: read as JSON
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime == "application/json"
        || mime == "application/x-www-form-urlencoded"
        || also.contains(&mime)
    {
        Ok(())
    } else {
        // The type is the sender's header, not patient data; shown only when it is one.
        let shown = if mime.len() <= 80
            && mime
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/+.-_".contains(&b))
        {
            format!("`{mime}`")
        } else {
            "this content type".to_string()
        };
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: format!("{shown} is not accepted: send {expected}"),
            details: None,
        })
    }
}

fn content_type_ok(headers: &HeaderMap) -> Result<(), ApiError> {
    json_content_type(
        headers,
        &[
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
        ],
        "CloudEvents JSON (application/cloudevents+json, or application/cloudevents-batch+json \
         for an array)",
    )
}

/// An answer's body must be JSON (`application/json`).
pub(crate) fn answer_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    json_content_type(headers, &[], "a JSON object (application/json)")
}

async fn keep<S: EventStore>(app: &AppState<S>, tenant: Option<String>, reason: &str, body: &[u8]) {
    let letter = DeadLetter {
        source: "http".into(),
        tenant,
        reason: reason.to_string(),
        payload: body.to_vec(),
    };
    metrics::dead_letter("http");
    if let Err(e) = app.store.dead_letter(letter).await {
        tracing::error!(error = %e, "could not keep a refused request as a dead letter");
    }
}

fn outcome_json(id: &str, r: &EventResult) -> Value {
    match r {
        Ok(IngestOutcome::Committed {
            events,
            effects,
            instances,
            warnings,
        }) => {
            json!({"id": id, "status": "committed", "instance_events": events, "effects": effects, "instances": instances, "warnings": warnings})
        }
        Ok(IngestOutcome::Duplicate) => json!({"id": id, "status": "duplicate"}),
        Ok(IngestOutcome::CommittedByOwner { warnings }) => {
            json!({"id": id, "status": "committed", "warnings": warnings})
        }
        Ok(IngestOutcome::Queued) => json!({"id": id, "status": "queued"}),
        Err(reason) => json!({"id": id, "status": "refused", "reason": reason.to_string()}),
    }
}

/// Submit events and answer with their outcomes; refused ones are kept as dead letters.
async fn submit<S: EventStore>(
    app: &AppState<S>,
    events: Vec<Event>,
) -> Result<Response, ApiError> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let results = match metrics::submit(&app.handle, Source::Http, events.clone()).await {
        Ok(r) => r,
        Err(SubmitError::ShuttingDown) => {
            return Err(ApiError::unavailable(
                "the engine is shutting down; retry on another instance or later",
            ));
        }
        Err(SubmitError::Unavailable(m)) => return Err(ApiError::unavailable(m)),
    };
    let mut committed = 0;
    let mut duplicates = 0;
    let mut refused = 0;
    let mut queued = 0;
    for (e, r) in events.iter().zip(&results) {
        match r {
            Ok(IngestOutcome::Committed { .. } | IngestOutcome::CommittedByOwner { .. }) => {
                committed += 1
            }
            Ok(IngestOutcome::Duplicate) => duplicates += 1,
            Ok(IngestOutcome::Queued) => queued += 1,
            Err(reason) => {
                refused += 1;
                let body = serde_json::to_vec(e).unwrap_or_default();
                keep(app, Some(e.tenant.clone()), &reason.to_string(), &body).await;
            }
        }
    }
    let out: Vec<Value> = ids
        .iter()
        .zip(&results)
        .map(|(id, r)| outcome_json(id, r))
        .collect();
    let reused = results
        .iter()
        .filter(|r| matches!(r, Err(Refused::IdReused(_))))
        .count();
    let status = match (refused, committed + duplicates, queued) {
        // Durably queued for the engine that owns the patient, not committed yet.
        (0, _, 1..) => StatusCode::ACCEPTED,
        (0, _, 0) => StatusCode::OK,
        // Every one an id already used by another event.
        (n, 0, 0) if n == reused => StatusCode::CONFLICT,
        (_, 0, 0) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::MULTI_STATUS,
    };
    Ok((
        status,
        Json(json!({"committed": committed, "duplicates": duplicates, "queued": queued, "refused": refused, "results": out})),
    )
        .into_response())
}

pub(crate) async fn post_events<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    content_type_ok(&headers)?;
    let value: Value = match parcours_core::json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("the body is not JSON: {e}");
            keep(&app, None, &reason, &body).await;
            return Err(ApiError::bad_request("bad_json", reason));
        }
    };
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            let reason = "send one CloudEvent (a JSON object) or an array of them";
            keep(&app, None, reason, &body).await;
            return Err(ApiError::bad_request("bad_shape", reason));
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("empty", "the array holds no event"));
    }
    // Every event must name one of the caller's tenants (checked before anything is
    // kept, so no one leaves dead letters in another tenant's list).
    for (i, item) in items.iter().enumerate() {
        match item.get("tenant").and_then(Value::as_str) {
            Some(t) if !caller.owns(t) => {
                return Err(ApiError::forbidden(format!(
                    "event {i} names tenant `{t}`: you are not a member of it"
                )));
            }
            _ => {}
        }
    }
    // A coordinator without the integration role records what the care team knows;
    // stays, results and identities come from hospitals and labs.
    let integration = caller
        .principal
        .roles
        .iter()
        .any(|r| matches!(r, Role::Integration));
    if !integration {
        for (i, item) in items.iter().enumerate() {
            let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
            if !COORDINATOR_EVENTS.contains(&ty) {
                // Named when it is a type of the catalogue; never quoted otherwise.
                let what = match ty.parse::<parcours_core::events::EventType>() {
                    Ok(t) => format!("of type `{}`", t.as_str()),
                    Err(_) => "of a type a coordinator does not record".to_owned(),
                };
                return Err(ApiError::forbidden(format!(
                    "event {i} is {what}: a coordinator records {}; hospitals and labs \
                     send the others, with the integration role",
                    COORDINATOR_EVENTS.join(", ")
                )));
            }
        }
    }
    if items.len() > app.limits.max_events {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_many_events",
            message: format!(
                "{} events in one request; at most {} (split the batch)",
                items.len(),
                app.limits.max_events
            ),
            details: None,
        });
    }
    let mut events = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    let mut tenant = None;
    for (i, item) in items.into_iter().enumerate() {
        let id = item.get("id").and_then(Value::as_str).map(str::to_string);
        tenant = tenant.or_else(|| {
            item.get("tenant")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        match Event::from_json_value(&item) {
            Ok(e) => match check_envelope(&e) {
                Ok(()) => events.push(e),
                Err(m) => problems.push(json!({"index": i, "id": id, "message": m})),
            },
            Err(e) => problems.push(json!({"index": i, "id": id, "message": e.to_string()})),
        }
    }
    if !problems.is_empty() {
        let message = format!(
            "{} of {} events are not valid canonical events; nothing was recorded",
            problems.len(),
            problems.len() + events.len()
        );
        let reason = format!("{message}: {}", Value::Array(problems.clone()));
        keep(&app, tenant, &reason, &body).await;
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_events",
            message,
            details: Some(Value::Array(problems)),
        });
    }
    submit(&app, events).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    tenant: Option<String>,
    pathway: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

fn tenant_of(t: Option<String>) -> Result<String, ApiError> {
    t.filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_tenant", "give `?tenant=<cpts id>`"))
}

/// Most items a list route answers at once.
pub(crate) const MAX_LIMIT: usize = 1000;

/// A list route's page size: `limit` (100 by default) up to [`MAX_LIMIT`].
pub(crate) fn limit_of(limit: Option<usize>) -> usize {
    limit.unwrap_or(100).clamp(1, MAX_LIMIT)
}

/// A page of `limit` items cut from the `limit + 1` read: the last item kept, when more
/// remain (its cursor is the page's `next`).
pub(crate) fn page<T>(rows: &mut Vec<T>, limit: usize) -> Option<&T> {
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
    } else {
        None
    }
}

pub(crate) async fn list_instances<S: EventStore>(
    State(app): St<S>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = q.status.as_deref()
        && !matches!(s, "active" | "completed" | "closed")
    {
        return Err(ApiError::bad_request(
            "bad_status",
            "`status` is one of active, completed, closed",
        ));
    }
    let limit = limit_of(q.limit);
    let filter = InstanceFilter {
        tenant: tenant_of(q.tenant)?,
        pathway_id: q.pathway,
        status: q.status,
        after_stream: q.after,
        // One more than asked: whether more remain.
        limit: limit + 1,
    };
    let mut rows = app.store.list_instances(&filter).await?;
    let next = page(&mut rows, limit).map(|r| r.stream.clone());
    Ok(Json(json!({
        "instances": rows.iter().map(views::instance_row).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantQuery {
    tenant: Option<String>,
}

pub(crate) async fn patient_instances<S: EventStore>(
    State(app): St<S>,
    Path(subject): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_of(q.tenant)?;
    let rows = app.store.instances_of(&tenant, &subject).await?;
    Ok(Json(json!({
        "instances": rows.iter().map(views::instance_row).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn get_instance<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(row) = app
        .store
        .instance(&id)
        .await?
        .filter(|r| caller.owns(&r.tenant))
    else {
        return Err(ApiError::not_found(format!("no instance `{id}`")));
    };
    let loaded = load_instance(
        &app.store,
        &app.registry.current(),
        &id,
        &row.pathway_id,
        row.pathway_version,
    )
    .await?;
    Ok(Json(views::instance(&loaded.pathway, &loaded.state)))
}

pub(crate) async fn history<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(row) = app
        .store
        .instance(&id)
        .await?
        .filter(|r| caller.owns(&r.tenant))
    else {
        return Err(ApiError::not_found(format!("no instance `{id}`")));
    };
    let records = app.store.read_stream(&id, 0).await?;
    let mut decoded = Vec::new();
    for r in &records {
        for rec in codec::decode_instance(r).map_err(ApiError::internal)? {
            decoded.push((r, rec));
        }
    }
    // The events that caused them: from the patient's inbound stream, and from those of
    // the keys an identity merge retired (the instance was theirs before).
    let wanted: HashSet<&str> = decoded.iter().map(|(_, rec)| &*rec.cause).collect();
    let mut subjects = vec![row.subject.as_str()];
    for (_, rec) in &decoded {
        if let Change::Rekeyed { from, .. } = &rec.change
            && !subjects.contains(&from.as_str())
        {
            subjects.push(from);
        }
    }
    let mut inbound = Vec::new();
    for subject in &subjects {
        inbound.extend(
            app.store
                .read_stream(&codec::inbound_stream(&row.tenant, subject), 0)
                .await?,
        );
    }
    // A cause stored under another key of the patient (a consent recorded under the
    // hospital's IPP before its link to the INS): found by its id, read where it is.
    let found: HashSet<&str> = inbound.iter().map(|r| r.record.id.as_str()).collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|id| !found.contains(**id))
        .map(|id| (*id).to_owned())
        .collect();
    if !missing.is_empty() {
        let mut elsewhere: Vec<String> = app
            .store
            .stored_events(&missing)
            .await?
            .into_iter()
            .filter(|s| s.tenant == row.tenant && !subjects.contains(&s.subject.as_str()))
            .map(|s| s.subject)
            .collect();
        elsewhere.sort();
        elsewhere.dedup();
        for subject in elsewhere {
            inbound.extend(
                app.store
                    .read_stream(&codec::inbound_stream(&row.tenant, &subject), 0)
                    .await?,
            );
        }
    }
    let mut causes = HashMap::new();
    for r in inbound {
        if wanted.contains(r.record.id.as_str()) {
            causes.insert(
                r.record.id.clone(),
                (
                    r.record.record_type.clone(),
                    r.record.occurred_at.to_string(),
                    codec::decode_inbound(&r)
                        .map(|e| e.source)
                        .unwrap_or_default(),
                ),
            );
        }
    }
    let entries: Vec<Value> = decoded
        .iter()
        .map(|(r, rec)| views::history_entry(r, rec, &causes))
        .collect();
    Ok(Json(json!({
        "instance": id,
        "pathway": {"id": row.pathway_id, "version": row.pathway_version},
        "history": entries,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkQuery {
    tenant: Option<String>,
    role: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    instance: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The statuses of `?status=`: names separated by commas, `closed` for every closed
/// one, `all` for every one; none: the open ones.
fn work_statuses(asked: Option<&str>) -> Result<Vec<WorkStatus>, ApiError> {
    let mut out = Vec::new();
    for name in asked.unwrap_or("").split(',').map(str::trim) {
        match name {
            "" => {}
            "closed" => out.extend(WorkStatus::CLOSED),
            "all" => out.extend(WorkStatus::ALL),
            s => out.push(WorkStatus::parse(s).ok_or_else(|| {
                let names: Vec<&str> = WorkStatus::ALL.iter().map(|w| w.as_str()).collect();
                ApiError::bad_request(
                    "bad_status",
                    format!(
                        "unknown status `{s}`: one or more of {} separated by commas, \
                         `closed` (every closed one) or `all`",
                        names.join(", ")
                    ),
                )
            })?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The `next` of a worklist page: where the last item stands in the listing's order
/// (`d<due nanoseconds>~<id>`, `n~<id>` without a due time). Opaque to clients.
fn work_cursor(c: &WorkCursor) -> String {
    match c.due_at {
        Some(due) => format!("d{}~{}", due.as_nanosecond(), c.id),
        None => format!("n~{}", c.id),
    }
}

/// A cursor [`work_cursor`] gave.
fn parse_work_cursor(s: &str) -> Result<WorkCursor, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "bad_cursor",
            "`after` is not a cursor this route gave: pass the `next` of the previous page as is",
        )
    };
    let (at, id) = s.split_once('~').ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    let due_at = match at {
        "n" => None,
        _ => {
            let nanos: i128 = at
                .strip_prefix('d')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?;
            Some(Timestamp::from_nanosecond(nanos).map_err(|_| bad())?)
        }
    };
    Ok(WorkCursor {
        due_at,
        id: id.to_string(),
    })
}

pub(crate) async fn list_work<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<WorkQuery>,
) -> Result<Json<Value>, ApiError> {
    let statuses = work_statuses(q.status.as_deref())?;
    let after = q
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(parse_work_cursor)
        .transpose()?;
    let kind = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(WorkKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(
                "bad_kind",
                format!("unknown kind `{k}`: task, alert or handoff"),
            )
        })?),
    };
    let limit = limit_of(q.limit);
    let filter = WorkFilter {
        tenant: tenant_of(q.tenant)?,
        role: caller.work_role(q.role)?,
        kind,
        statuses,
        stream: q.instance,
        after,
        // One more than asked: whether more remain.
        limit: limit + 1,
    };
    let mut items = app.store.work_items(&filter).await?;
    let next = page(&mut items, limit).map(|w| work_cursor(&w.cursor()));
    Ok(Json(json!({
        "items": items.iter().map(views::work_item).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutcomeBody {
    outcome: String,
    /// When it happened (clinical time); now if absent.
    at: Option<Timestamp>,
    /// Who reports it (a care-team system); `http` if absent.
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    accepted: bool,
    at: Option<Timestamp>,
    source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckBody {
    at: Option<Timestamp>,
    source: Option<String>,
}

fn now() -> Timestamp {
    // The API stamps answers that carry no clinical time with the time they arrive.
    #[allow(clippy::disallowed_methods)]
    Timestamp::now()
}

fn json_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_required(body)
}

/// The body read as `T`; a refusal names the path and the expected type, never the
/// value (`parcours_core::json`).
pub(crate) fn json_required<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    parcours_core::json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not valid: {e}")))
}

/// Answer an open work item with an event built here; idempotent (one answer per item:
/// the event id derives from the item id, so a repeated answer is a duplicate).
#[allow(clippy::too_many_arguments)]
async fn answer<S: EventStore>(
    app: &AppState<S>,
    caller: &Caller,
    id: &str,
    kind: WorkKind,
    event_id: String,
    at: Option<Timestamp>,
    source: Option<String>,
    make: impl FnOnce(String) -> EventData,
) -> Result<Response, ApiError> {
    let item = match app.store.work_item(id).await? {
        Some(item) if item.kind == kind && caller.may_work_on(&item) && item.status.is_open() => {
            item
        }
        // Answered already (through this route: its answer is in the log under the id
        // the route gives it): the same answer again is a duplicate (a retry after a
        // timeout), another one a conflict naming the first. Told to a caller of the
        // answer's tenant only: another tenant must not learn that the id exists.
        // Closed otherwise (answered through another front, withdrawn by the pathway):
        // a conflict saying how.
        Some(item) if item.kind == kind && caller.may_work_on(&item) => {
            let answered = app
                .store
                .stored_events(std::slice::from_ref(&event_id))
                .await?;
            return match answered.first() {
                Some(first) if first.record_type == make(String::new()).event_type().as_str() => {
                    Ok((
                        StatusCode::OK,
                        Json(json!({"id": event_id, "status": "duplicate"})),
                    )
                        .into_response())
                }
                Some(first) => Err(ApiError::conflict(
                    "already_answered",
                    format!(
                        "{} `{id}` was answered already (`{}`); an answer is final",
                        kind.as_str(),
                        first.record_type
                    ),
                )),
                None => Err(ApiError::conflict(
                    "already_closed",
                    format!(
                        "{} `{id}` is closed already (`{}`); an answer is final",
                        kind.as_str(),
                        item.status.as_str()
                    ),
                )),
            };
        }
        None => {
            let answered = app
                .store
                .stored_events(std::slice::from_ref(&event_id))
                .await?;
            return match answered.first() {
                Some(first) if caller.owns(&first.tenant) => {
                    let asked = make(String::new()).event_type();
                    if first.record_type == asked.as_str() {
                        Ok((
                            StatusCode::OK,
                            Json(json!({"id": event_id, "status": "duplicate"})),
                        )
                            .into_response())
                    } else {
                        Err(ApiError::conflict(
                            "already_answered",
                            format!(
                                "{} `{id}` was answered already (`{}`); an answer is final",
                                kind.as_str(),
                                first.record_type
                            ),
                        ))
                    }
                }
                _ => Err(ApiError::not_found(format!(
                    "no open {} `{id}` (unknown, or closed by the pathway)",
                    kind.as_str()
                ))),
            };
        }
        Some(_) => {
            return Err(ApiError::not_found(format!(
                "no open {} `{id}` (unknown, or already closed)",
                kind.as_str()
            )));
        }
    };
    let event = Event {
        id: event_id,
        tenant: item.tenant.clone(),
        source: source.unwrap_or_else(|| "http".into()),
        subject: item.subject.clone(),
        occurred_at: at.unwrap_or_else(now),
        recorded_at: None,
        data: make(item.code.clone()),
    };
    submit(app, vec![event]).await
}

pub(crate) async fn task_outcome<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer_content_type(&headers)?;
    let b: OutcomeBody = json_required(&body)?;
    let task_id = id.clone();
    let make: Box<dyn FnOnce(String) -> EventData + Send> = match b.outcome.as_str() {
        "completed" => {
            Box::new(move |code| EventData::TaskCompleted(data::TaskCompleted { task_id, code }))
        }
        "not_needed" => {
            Box::new(move |code| EventData::TaskNotNeeded(data::TaskNotNeeded { task_id, code }))
        }
        "could_not_be_done" => Box::new(move |code| {
            EventData::TaskCouldNotBeDone(data::TaskCouldNotBeDone { task_id, code })
        }),
        other => {
            return Err(ApiError::bad_request(
                "bad_outcome",
                format!("unknown outcome `{other}`: completed, not_needed or could_not_be_done"),
            ));
        }
    };
    answer(
        &app,
        &caller,
        &id,
        WorkKind::Task,
        format!("task-outcome:{id}"),
        b.at,
        b.source,
        make,
    )
    .await
}

pub(crate) async fn handoff_answer<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer_content_type(&headers)?;
    let b: AnswerBody = json_required(&body)?;
    let handoff_id = id.clone();
    let accepted = b.accepted;
    answer(
        &app,
        &caller,
        &id,
        WorkKind::Handoff,
        format!("handoff-answer:{id}"),
        b.at,
        b.source,
        move |code| {
            if accepted {
                EventData::HandoffAccepted(data::HandoffAccepted { handoff_id, code })
            } else {
                EventData::HandoffDeclined(data::HandoffDeclined { handoff_id, code })
            }
        },
    )
    .await
}

pub(crate) async fn alert_ack<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer_content_type(&headers)?;
    let b: AckBody = json_body(&body)?;
    let alert_id = id.clone();
    answer(
        &app,
        &caller,
        &id,
        WorkKind::Alert,
        format!("alert-ack:{id}"),
        b.at,
        b.source,
        move |code| EventData::AlertAcknowledged(data::AlertAcknowledged { alert_id, code }),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    after: Option<u64>,
    limit: Option<usize>,
    tenant: Option<String>,
    /// Seconds to wait for an effect when there is none yet (long polling), at most
    /// [`FEED_MAX_WAIT_SECS`].
    wait: Option<u64>,
}

/// The longest `wait` of the effects feed, in seconds: under the request timeout's
/// default (30 s), and under the idle timeouts of the usual proxies (60 s).
pub(crate) const FEED_MAX_WAIT_SECS: u64 = 20;

/// While waiting, how often the feed looks at the log even without news of a commit from
/// this process (commits of other processes, in production, are not signalled).
const FEED_LOOK_EVERY: Duration = Duration::from_secs(1);

/// The tenant a feed is read for: the one asked (the guard checked it is the caller's),
/// or, for a caller of every tenant (the embedded mode's key), every tenant.
fn feed_tenant(caller: &Caller, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match asked.filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(t)),
        None if caller.principal.tenants == Tenants::All => Ok(None),
        None => tenant_of(None).map(Some),
    }
}

pub(crate) async fn effects<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<FeedQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = feed_tenant(&caller, q.tenant)?;
    let limit = limit_of(q.limit);
    let wait = match q.wait {
        Some(w) if w > FEED_MAX_WAIT_SECS => {
            return Err(ApiError::bad_request(
                "bad_wait",
                format!("`wait` is at most {FEED_MAX_WAIT_SECS} seconds"),
            ));
        }
        // Under the request timeout, so that an empty answer comes back instead of a 408.
        w => Duration::from_secs(w.unwrap_or(0))
            .min(app.limits.timeout.saturating_sub(Duration::from_secs(2))),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = q.after.unwrap_or(0);
    loop {
        // Registered before the log is read, so a commit in between is not missed.
        let grew = app.handle.health().log_grew.notified();
        tokio::pin!(grew);
        grew.as_mut().enable();
        let out = effects_after(&app.store, tenant.as_deref(), &mut after, limit).await?;
        let now = tokio::time::Instant::now();
        if !out.is_empty() || now >= deadline {
            return Ok(Json(json!({"effects": out, "next": after})));
        }
        let look = deadline.min(now + FEED_LOOK_EVERY);
        tokio::select! {
            () = &mut grew => {}
            () = tokio::time::sleep_until(look) => {}
        }
    }
}

/// The effects of `tenant` (every tenant: `None`) after position `after`, at most about
/// `limit`; `after` moves to the last record read. A bounded scan: up to 64 pages of the
/// log.
async fn effects_after<S: EventStore>(
    store: &S,
    tenant: Option<&str>,
    after: &mut u64,
    limit: usize,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let page = store.read_all(*after, 1024).await?;
        let Some(last) = page.last() else { break };
        for r in &page {
            *after = r.position;
            for e in effects_of(r).map_err(ApiError::internal)? {
                if tenant.is_none_or(|t| t == e.tenant) {
                    out.push(views::effect(&e));
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        if out.len() >= limit || last.position == *after && page.len() < 1024 {
            break;
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterQuery {
    tenant: Option<String>,
    source: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// What a dead letter is, without its bytes (they may hold patient data): where it came
/// from, why it was refused (the reasons name places and rules, never a value sent),
/// how large it is.
fn dead_letter_view(l: &StoredDeadLetter) -> Value {
    json!({
        "id": l.id,
        "received_at": l.received_at.to_string(),
        "source": l.letter.source,
        "tenant": l.letter.tenant,
        "reason": l.letter.reason,
        "bytes": l.letter.payload.len(),
    })
}

/// `GET /v1/dead-letters`: the tenant's refused inputs, newest first, by source or front
/// (`?source=nats` takes every `nats:<subject>`), paged with `after` = the `next` of the
/// previous page. A caller of every tenant naming none lists every tenant's, and those
/// whose tenant could not be read.
pub(crate) async fn dead_letters<S: EventStore>(
    State(app): St<S>,
    caller: Caller,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = feed_tenant(&caller, q.tenant)?;
    let limit = limit_of(q.limit);
    let filter = DeadLetterFilter {
        tenant,
        source: q.source.filter(|s| !s.is_empty()),
        before: q.after,
        // One more than asked: whether more remain.
        limit: limit + 1,
    };
    let mut letters = app.store.list_dead_letters(&filter).await?;
    let next = page(&mut letters, limit).map(|l| l.id);
    Ok(Json(json!({
        "dead_letters": letters.iter().map(dead_letter_view).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// A dead letter of the caller's tenants (one whose tenant could not be read: of a
/// caller of every tenant), else not found.
async fn caller_dead_letter<S: EventStore>(
    app: &AppState<S>,
    caller: &Caller,
    id: &str,
) -> Result<StoredDeadLetter, ApiError> {
    let missing = || ApiError::not_found(format!("no dead letter `{id}`"));
    let Ok(n) = id.parse::<u64>() else {
        return Err(missing());
    };
    match app.store.dead_letter_by_id(n).await? {
        Some(l) => match &l.letter.tenant {
            Some(t) if caller.owns(t) => Ok(l),
            None if caller.principal.tenants == Tenants::All => Ok(l),
            _ => Err(missing()),
        },
        None => Err(missing()),
    }
}

/// `GET /v1/dead-letters/{id}`: one dead letter, without its bytes.
pub(crate) async fn dead_letter<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let l = caller_dead_letter(&app, &caller, &id).await?;
    Ok(Json(dead_letter_view(&l)))
}

/// `GET /v1/dead-letters/{id}/content`: one dead letter with the bytes as received
/// (opened when the vault sealed them), to fix and send again: `content` as text when
/// they are UTF-8 (`encoding: "utf-8"`), else base64 (`encoding: "base64"`). They may
/// hold patient identifiers in clear: coordinators only, and the read is in the audit
/// trail (action `dead_letter.content`, the letter's id).
pub(crate) async fn dead_letter_content<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let l = caller_dead_letter(&app, &caller, &id).await?;
    let mut out = dead_letter_view(&l);
    let (encoding, content) = match std::str::from_utf8(&l.letter.payload) {
        Ok(text) => ("utf-8", text.to_string()),
        Err(_) => {
            use base64::Engine as _;
            (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(&l.letter.payload),
            )
        }
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("encoding".into(), json!(encoding));
        o.insert("content".into(), json!(content));
    }
    Ok(Json(out))
}

pub(crate) async fn pathways<S: EventStore>(
    State(app): St<S>,
    Query(_): Query<NoQuery>,
) -> Json<Value> {
    let registry = app.registry.current();
    let latest: HashSet<(String, u32)> = registry
        .latest()
        .iter()
        .map(|p| (p.id.clone(), p.version))
        .collect();
    let list: Vec<Value> = registry
        .all()
        .map(|p| {
            json!({
                "id": p.id,
                "version": p.version,
                "title": p.title,
                "enrols": latest.contains(&(p.id.clone(), p.version)),
                "tracks": p.tracks.iter().map(|t| &*t.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"pathways": list}))
}

/// The query of a route that reads none: only the `tenant` the guard checks (and fills
/// in for a caller of one tenant), so that an unknown parameter is refused (400) on
/// these routes as on the others, never silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {
    #[serde(rename = "tenant")]
    _tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphQuery {
    format: Option<String>,
    /// The route guard's fill-in of a one-tenant caller's tenant (unused here).
    #[serde(rename = "tenant")]
    _tenant: Option<String>,
}

pub(crate) async fn pathway_graph<S: EventStore>(
    State(app): St<S>,
    Path((id, version)): Path<(String, u32)>,
    Query(q): Query<GraphQuery>,
) -> Result<Response, ApiError> {
    let registry = app.registry.current();
    let Some(p) = registry.get(&id, version) else {
        return Err(ApiError::not_found(format!("no pathway `{id}` v{version}")));
    };
    let text = match q.format.as_deref().unwrap_or("mermaid") {
        "mermaid" => parcours_lang::render::mermaid(p),
        "dot" => parcours_lang::render::dot(p),
        other => {
            return Err(ApiError::bad_request(
                "bad_format",
                format!("unknown format `{other}`: mermaid or dot"),
            ));
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
