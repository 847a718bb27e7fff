//! JSON views of instances, histories, work items and effects.

use std::collections::HashMap;

use parcours_core::model::CompiledPathway;
use parcours_core::state::{InstanceState, Recorded, Status, TimerKind};
use parcours_core::value::Scalar;
use parcours_runtime::Effect;
use parcours_store::{InstanceRow, StoredRecord, WorkItem};
use serde_json::{Value, json};

/// A parameter or variable value as plain JSON.
pub(crate) fn scalar(s: &Scalar) -> Value {
    match s {
        Scalar::Bool(b) => json!(b),
        Scalar::Int(i) => json!(i),
        Scalar::Double(d) => json!(d),
        Scalar::Str(s) => json!(s.as_str()),
        Scalar::Timestamp(t) => json!(t.to_string()),
        Scalar::Duration(d) => json!(d.to_string()),
    }
}

fn status(s: &Status) -> (&'static str, Option<&str>) {
    match s {
        Status::Pending => ("pending", None),
        Status::Active => ("active", None),
        Status::Completed => ("completed", None),
        Status::Closed { reason } => ("closed", Some(reason.as_str())),
    }
}

fn timer_kind(p: &CompiledPathway, kind: &TimerKind) -> Value {
    let mut v = serde_json::to_value(kind).unwrap_or(Value::Null);
    let rule = match kind {
        TimerKind::Transition { transition } | TimerKind::Recurring { transition, .. } => p
            .transitions
            .get(usize::from(*transition))
            .map(|t| t.rule.to_string()),
        _ => None,
    };
    if let (Some(rule), Some(obj)) = (rule, v.as_object_mut()) {
        obj.insert("rule".into(), json!(rule));
    }
    v
}

/// An instance: where it is, what it holds, what it waits for.
pub(crate) fn instance(p: &CompiledPathway, s: &InstanceState) -> Value {
    let (st, reason) = status(&s.status);
    let tracks: Vec<Value> = s
        .current_states(p)
        .iter()
        .zip(&s.tracks)
        .map(|((track, state), t)| {
            json!({"track": track, "state": state, "entered_at": t.entered_at.to_string()})
        })
        .collect();
    let params: serde_json::Map<String, Value> = p
        .params
        .iter()
        .zip(s.params.iter())
        .map(|(d, v)| (d.name.clone(), scalar(v)))
        .collect();
    let vars: serde_json::Map<String, Value> = p
        .vars
        .iter()
        .zip(s.vars.iter())
        .map(|(d, v)| (d.name.clone(), v.as_ref().map_or(Value::Null, scalar)))
        .collect();
    let mut timers: Vec<(jiff::Timestamp, Value)> = s
        .timers
        .iter()
        .map(|(id, t)| {
            (
                t.fire_at,
                json!({"id": id, "fire_at": t.fire_at.to_string(), "for": timer_kind(p, &t.kind)}),
            )
        })
        .collect();
    timers.sort_by_key(|t| t.0);
    let tasks: Vec<Value> = s
        .tasks
        .iter()
        .map(|(id, t)| {
            json!({"id": id, "code": &*t.code, "role": &*t.role, "due_at": t.due_at.to_string(), "overdue": t.overdue})
        })
        .collect();
    let items =
        |m: &parcours_core::sorted::SortedMap<uuid::Uuid, parcours_core::state::OpenItem>| {
            m.iter()
                .map(|(id, i)| json!({"id": id, "code": &*i.code, "role": &*i.role}))
                .collect::<Vec<_>>()
        };
    json!({
        "id": s.instance_id.to_string(),
        "tenant": &*s.tenant,
        "subject": &*s.subject,
        "pathway": {"id": &p.id, "version": p.version, "title": &p.title},
        "status": st,
        "closed_reason": reason,
        "cycle": s.cycle,
        "enrolled_at": s.enrolled_at.to_string(),
        "cycle_start": s.cycle_start.to_string(),
        "tracks": tracks,
        "parameters": params,
        "variables": vars,
        "timers": timers.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "tasks": tasks,
        "done_this_cycle": p
            .done_tasks(s.done)
            .filter(|t| t.once_per_cycle)
            .map(|t| &*t.code)
            .collect::<Vec<_>>(),
        "alerts": items(&s.alerts),
        "handoffs": items(&s.handoffs),
        "version": s.version,
    })
}

/// An instance's summary row.
pub(crate) fn instance_row(r: &InstanceRow) -> Value {
    let tracks: serde_json::Map<String, Value> = r
        .states
        .split(' ')
        .filter_map(|s| s.split_once('='))
        .map(|(t, s)| (t.to_string(), json!(s)))
        .collect();
    json!({
        "id": r.stream,
        "tenant": r.tenant,
        "subject": r.subject,
        "pathway": {"id": r.pathway_id, "version": r.pathway_version},
        "status": r.status,
        "closed_reason": r.closed_reason,
        "states": tracks,
        "cycle": r.cycle,
        "enrolled_at": r.enrolled_at.to_string(),
        "updated_at": r.updated_at.to_string(),
        "version": r.version,
    })
}

/// One record of an instance's history, with the event that caused it (the "why").
pub(crate) fn history_entry(
    r: &StoredRecord,
    rec: &Recorded,
    causes: &HashMap<String, (String, String, String)>,
) -> Value {
    let cause = match causes.get(&*rec.cause) {
        Some((ty, at, source)) => {
            json!({"id": &*rec.cause, "type": ty, "occurred_at": at, "source": source})
        }
        None => json!({"id": &*rec.cause}),
    };
    json!({
        "position": r.position,
        "record": r.version,
        "id": rec.id,
        "type": rec.change.type_name(),
        "at": rec.at.to_string(),
        "recorded_at": r.recorded_at.to_string(),
        "rule": rec.rule.as_deref(),
        "cause": cause,
        "effect": rec.change.effect_kind(),
        "change": rec.change,
    })
}

/// A task, alert or handoff, open or closed. Its times are clinical times (those of the
/// events, not of the log): `due_at`, `opened_at` (the event that opened it) and, once
/// closed, `closed_at` (the event that closed it: an answer, the timer that withdrew it,
/// the discharge that closed its instance); `null` while open.
pub(crate) fn work_item(w: &WorkItem) -> Value {
    json!({
        "id": w.id,
        "kind": w.kind.as_str(),
        "instance": w.stream,
        "tenant": w.tenant,
        "subject": w.subject,
        "pathway": w.pathway_id,
        "code": w.code,
        "role": w.role,
        "title": w.title,
        "status": w.status.as_str(),
        "open": w.status.is_open(),
        "priority": w.priority,
        "due_at": w.due_at.map(|t| t.to_string()),
        "opened_at": w.opened_at.to_string(),
        "opened_by": w.opened_by,
        "escalated_to": w.escalated_to,
        "closed_at": w.closed_at.map(|t| t.to_string()),
    })
}

/// An effect of the feed.
pub(crate) fn effect(e: &Effect) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}
