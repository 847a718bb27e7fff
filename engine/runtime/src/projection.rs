//! From instance events to the projections the store keeps beside them (pure).
//!
//! Every commit carries the index changes its records imply: the instance's summary row,
//! timers scheduled or gone, work items opened, changed or closed. `parcours replay`
//! rebuilds the same projections from the records alone with the same functions, so the
//! two can be compared.

use parcours_core::model::CompiledPathway;
use parcours_core::state::{Change, InstanceState, Recorded, Status, TimerKind};
use parcours_store::{
    IndexChanges, InstanceRow, TimerChange, TimerRow, WorkChange, WorkItem, WorkKind, WorkStatus,
};

fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The summary row of an instance in `state`.
pub fn instance_row(pathway: &CompiledPathway, state: &InstanceState) -> InstanceRow {
    let (status, closed_reason) = match &state.status {
        Status::Pending => ("pending", None),
        Status::Active => ("active", None),
        Status::Completed => ("completed", None),
        Status::Closed { reason } => ("closed", Some(reason.clone())),
    };
    let states = state
        .current_states(pathway)
        .iter()
        .map(|(track, s)| format!("{track}={s}"))
        .collect::<Vec<_>>()
        .join(" ");
    InstanceRow {
        stream: state.instance_id.to_string(),
        tenant: state.tenant.to_string(),
        subject: state.subject.to_string(),
        pathway_id: state.pathway_id.to_string(),
        pathway_version: state.pathway_version,
        status: status.to_string(),
        closed_reason,
        states,
        cycle: state.cycle,
        enrolled_at: state.enrolled_at,
        updated_at: state
            .tracks
            .iter()
            .map(|t| t.entered_at)
            .max()
            .unwrap_or(state.enrolled_at)
            .max(state.cycle_start),
        version: state.version,
    }
}

/// Add the index changes implied by an instance's new `events` (in order), given its state
/// after them.
pub fn index_changes(
    pathway: &CompiledPathway,
    after: &InstanceState,
    events: &[Recorded],
    out: &mut IndexChanges,
) {
    if events.is_empty() {
        return;
    }
    record_changes(after, events, out);
    out.instances.push(instance_row(pathway, after));
}

/// [`index_changes`] but the instance's summary row (a reader folding many decisions of
/// one instance, replay, computes that row once, for the last).
pub fn record_changes(after: &InstanceState, events: &[Recorded], out: &mut IndexChanges) {
    if events.is_empty() {
        return;
    }
    let stream = after.instance_id.to_string();
    let tenant = after.tenant.to_string();
    let subject = after.subject.to_string();
    let item = |kind: WorkKind, id: String, rec: &Recorded| WorkItem {
        id,
        kind,
        stream: stream.clone(),
        tenant: tenant.clone(),
        subject: subject.clone(),
        pathway_id: after.pathway_id.to_string(),
        code: String::new(),
        role: String::new(),
        title: String::new(),
        status: WorkStatus::Open,
        priority: String::new(),
        due_at: None,
        opened_at: rec.at,
        opened_by: rec.cause.to_string(),
    };
    let status = |id: String, status: WorkStatus| WorkChange::Status { id, status };
    for rec in events {
        let change = match &rec.change {
            Change::TimerScheduled {
                timer_id, fire_at, ..
            } => {
                out.timers.push(TimerChange::Schedule(TimerRow {
                    id: timer_id.to_string(),
                    stream: stream.clone(),
                    tenant: tenant.clone(),
                    subject: subject.clone(),
                    fire_at: *fire_at,
                }));
                None
            }
            Change::TimerCancelled { timer_id } | Change::TimerFired { timer_id, .. } => {
                out.timers.push(TimerChange::Remove {
                    id: timer_id.to_string(),
                });
                None
            }
            Change::TaskRequested {
                task_id,
                code,
                role,
                title,
                due_at,
                priority,
            } => Some(WorkChange::Upsert(WorkItem {
                code: code.to_string(),
                role: role.to_string(),
                title: title.to_string(),
                priority: name_of(priority),
                due_at: Some(*due_at),
                ..item(WorkKind::Task, task_id.to_string(), rec)
            })),
            Change::TaskOverdue { task_id, .. } => {
                Some(status(task_id.to_string(), WorkStatus::Overdue))
            }
            Change::TaskEscalated { task_id, .. } => {
                Some(status(task_id.to_string(), WorkStatus::Escalated))
            }
            Change::TaskClosed { task_id, .. } => Some(WorkChange::Remove {
                id: task_id.to_string(),
            }),
            Change::AlertRaised {
                alert_id,
                code,
                severity,
                role,
                message,
            } => Some(WorkChange::Upsert(WorkItem {
                code: code.clone(),
                role: role.clone(),
                title: message.clone(),
                priority: name_of(severity),
                due_at: events.iter().find_map(|r| match &r.change {
                    Change::TimerScheduled {
                        fire_at,
                        kind: TimerKind::AlertAck { alert_id: a },
                        ..
                    } if a == alert_id => Some(*fire_at),
                    _ => None,
                }),
                ..item(WorkKind::Alert, alert_id.to_string(), rec)
            })),
            Change::AlertEscalated { alert_id, .. } => {
                Some(status(alert_id.to_string(), WorkStatus::Escalated))
            }
            Change::AlertClosed { alert_id, .. } => Some(WorkChange::Remove {
                id: alert_id.to_string(),
            }),
            Change::HandoffRequested {
                handoff_id,
                code,
                from,
                to,
                title,
                accept_by,
            } => Some(WorkChange::Upsert(WorkItem {
                code: code.clone(),
                role: to.clone(),
                title: format!("{title} (from {from})"),
                priority: "routine".into(),
                due_at: Some(*accept_by),
                ..item(WorkKind::Handoff, handoff_id.to_string(), rec)
            })),
            Change::HandoffEscalated { handoff_id, .. } => {
                Some(status(handoff_id.to_string(), WorkStatus::Escalated))
            }
            Change::HandoffClosed { handoff_id, .. } => Some(WorkChange::Remove {
                id: handoff_id.to_string(),
            }),
            // The instance now belongs to another subject: its pending timers are
            // rewritten with it (and their partition follows). Its open work items need
            // their stored rows: see [`rekeyed_work`].
            Change::Rekeyed { .. } => {
                for (id, t) in after.timers.iter() {
                    out.timers.push(TimerChange::Schedule(TimerRow {
                        id: id.to_string(),
                        stream: stream.clone(),
                        tenant: tenant.clone(),
                        subject: subject.clone(),
                        fire_at: t.fire_at,
                    }));
                }
                None
            }
            _ => None,
        };
        out.work.extend(change);
    }
}

/// The open work items of an instance re-keyed to `subject` (`instance.rekeyed`), as they
/// stood before: rewritten with the new subject. Their rows hold what the instance state
/// does not (title, priority, who opened them), so the caller gives them: the engine from
/// the store, replay from what it rebuilt. These changes go before the instance's own.
pub fn rekeyed_work<'a>(
    open: impl IntoIterator<Item = &'a WorkItem>,
    subject: &str,
) -> Vec<WorkChange> {
    open.into_iter()
        .map(|item| {
            WorkChange::Upsert(WorkItem {
                subject: subject.to_string(),
                ..item.clone()
            })
        })
        .collect()
}

/// The ids of an instance's open tasks, alerts and handoffs (its work items).
pub fn open_work_ids(state: &InstanceState) -> Vec<String> {
    state
        .tasks
        .keys()
        .chain(state.alerts.keys().copied())
        .chain(state.handoffs.keys().copied())
        .map(|id| id.to_string())
        .collect()
}
