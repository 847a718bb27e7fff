//! From instance events to the projections the store keeps beside them (pure).
//!
//! Every commit carries the index changes its records imply: the instance's summary row,
//! its timer row (its earliest pending timer) when that changed, work items opened,
//! changed or closed (a closed item keeps its row, with how it closed:
//! `closed_status`). `parcours replay`
//! rebuilds the same projections from the records alone with the same functions, so the
//! two can be compared.

use std::borrow::Cow;

use jiff::{SignedDuration, Timestamp};
use parcours_core::model::CompiledPathway;
use parcours_core::model::TaskOutcome;
use parcours_core::state::{Change, InstanceState, Recorded, Status, TimerKind};
use parcours_store::{
    IndexChanges, InstanceRow, TimerChange, TimerRow, WorkChange, WorkItem, WorkKind, WorkStatus,
};
use uuid::Uuid;

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
        enrolled_at: state.enrolled_at.get(),
        updated_at: state
            .tracks
            .iter()
            .map(|t| t.entered_at)
            .max()
            .unwrap_or(state.enrolled_at)
            .max(state.cycle_start)
            .get(),
        version: state.version,
    }
}

/// An instance's earliest pending timer (ties broken by the lower id), its id and
/// instant: the one timer row the store keeps for the instance. The engine fires an
/// instance's timers one at a time, earliest first, and the firing's decision writes the
/// next one; every pending timer is in the instance's state.
pub fn earliest_timer(state: &InstanceState) -> Option<(Uuid, Timestamp)> {
    state.timers.earliest().map(|(id, t)| (id, t.fire_at))
}

/// Whether the decisions of `events` give the timer row they write a catch-up grace:
/// those of inbound events do (a backlog's next messages may still be on their way);
/// a timer's firing and a migration do not (what they schedule already due fires at
/// once, as the rest of an escalation ladder after the grace). Live commits and replay
/// tell them so from the records alone.
pub fn grants_catch_up(events: &[Recorded]) -> bool {
    !events.iter().any(|r| {
        matches!(
            r.change,
            Change::TimerFired { .. } | Change::Migrated { .. }
        )
    })
}

/// Add the index changes implied by an instance's new `events` (in order), given its
/// earliest timer before them ([`earliest_timer`]) and its state after them; `catch_up`
/// is the engine's catch-up grace ([`record_changes`]).
pub fn index_changes(
    pathway: &CompiledPathway,
    earliest_before: Option<(Uuid, Timestamp)>,
    after: &InstanceState,
    events: &[Recorded],
    catch_up: SignedDuration,
    out: &mut IndexChanges,
) {
    if events.is_empty() {
        return;
    }
    record_changes(earliest_before, after, events, catch_up, out);
    out.instances.push(instance_row(pathway, after));
}

/// [`index_changes`] but the instance's summary row (a reader folding many decisions of
/// one instance, replay, computes that row once, for the last).
///
/// The timer table holds one row per instance with a pending timer, its earliest: a
/// decision removes the old row and writes the new one when the earliest changes (a
/// discharge scheduling 21 deadlines writes one row; a weight moving its watch behind an
/// earlier deadline writes none), and writes it again when the instance is re-keyed (its
/// subject, so its partition, changed).
///
/// With a positive `catch_up` grace, a row written for inbound events
/// ([`grants_catch_up`]) is a [`TimerChange::CatchUp`]: due at or before the commit's
/// `recorded_at` (a backdated discharge's deadlines), it fires no sooner than
/// `recorded_at + catch_up`, so that the rest of a backlog (the consent, the GP visit)
/// arrives before it. Replay rebuilds the same from each commit's `recorded_at`.
pub fn record_changes(
    earliest_before: Option<(Uuid, Timestamp)>,
    after: &InstanceState,
    events: &[Recorded],
    catch_up: SignedDuration,
    out: &mut IndexChanges,
) {
    if events.is_empty() {
        return;
    }
    let earliest = earliest_timer(after);
    let rekeyed = events
        .iter()
        .any(|r| matches!(r.change, Change::Rekeyed { .. }));
    if earliest != earliest_before || rekeyed {
        if let Some((id, _)) = earliest_before
            && earliest.map(|(e, _)| e) != Some(id)
        {
            out.timers.push(TimerChange::Remove { id: id.to_string() });
        }
        if let Some(timer) = earliest {
            let row = row_of(after, timer);
            out.timers
                .push(if catch_up.is_positive() && grants_catch_up(events) {
                    TimerChange::CatchUp {
                        row,
                        grace: catch_up,
                    }
                } else {
                    TimerChange::Schedule(row)
                });
        }
    }
    record_ops(events, |op| match op {
        Op::Open(open) => out.work.push(WorkChange::Upsert(open.item(after))),
        Op::Status { id, status } => out.work.push(WorkChange::Status {
            id: id.to_string(),
            status,
        }),
        Op::Escalated { id, role, priority } => out.work.push(WorkChange::Escalated {
            id: id.to_string(),
            role: role.to_string(),
            priority,
        }),
        Op::Close { id, status, at } => out.work.push(WorkChange::Closed {
            id: id.to_string(),
            status,
            at,
        }),
    });
}

/// The timer row of an instance in state `state`: its earliest pending timer (with no
/// catch-up grace: replay adds it, [`crate::replay`]).
pub fn timer_row(state: &InstanceState) -> Option<TimerRow> {
    earliest_timer(state).map(|timer| row_of(state, timer))
}

/// The row of `state`'s timer `(id, fire_at)`.
fn row_of(state: &InstanceState, (id, fire_at): (Uuid, Timestamp)) -> TimerRow {
    TimerRow {
        id: id.to_string(),
        stream: state.instance_id.to_string(),
        tenant: state.tenant.to_string(),
        subject: state.subject.to_string(),
        fire_at,
        not_before: None,
    }
}

/// One projection change an instance event implies, borrowed from it: what
/// [`record_changes`] turns into [`IndexChanges`], and replay into its own compact tables
/// (keyed by id, without a string per change).
#[derive(Debug)]
pub(crate) enum Op<'a> {
    /// A work item opened.
    Open(Open<'a>),
    /// A work item's status changed.
    Status { id: Uuid, status: WorkStatus },
    /// A work item was escalated to `role` (it joins that role's worklist), with the
    /// step's priority when it sets one.
    Escalated {
        id: Uuid,
        role: &'a str,
        priority: Option<String>,
    },
    /// A work item closed, how, and when (the closing record's clinical time).
    Close {
        id: Uuid,
        status: WorkStatus,
        at: Timestamp,
    },
}

/// A work item opened, as its event says.
#[derive(Debug)]
pub(crate) struct Open<'a> {
    pub(crate) id: Uuid,
    kind: WorkKind,
    code: &'a str,
    role: &'a str,
    title: Cow<'a, str>,
    priority: String,
    due_at: Option<Timestamp>,
    rec: &'a Recorded,
}

impl Open<'_> {
    /// Its row, for an instance in state `after`.
    pub(crate) fn item(self, after: &InstanceState) -> WorkItem {
        WorkItem {
            id: self.id.to_string(),
            kind: self.kind,
            stream: after.instance_id.to_string(),
            tenant: after.tenant.to_string(),
            subject: after.subject.to_string(),
            pathway_id: after.pathway_id.to_string(),
            code: self.code.to_string(),
            role: self.role.to_string(),
            title: self.title.into_owned(),
            status: WorkStatus::Open,
            priority: self.priority,
            due_at: self.due_at,
            opened_at: self.rec.at,
            opened_by: self.rec.cause.to_string(),
            escalated_to: None,
            closed_at: None,
        }
    }
}

/// The work-item changes an instance's new `events` (in order) imply, one by one to
/// `emit` (the timer row follows from the instance's states: [`record_changes`]).
pub(crate) fn record_ops<'a>(events: &'a [Recorded], mut emit: impl FnMut(Op<'a>)) {
    let open = |kind: WorkKind, id: Uuid, rec: &'a Recorded| Open {
        id,
        kind,
        code: "",
        role: "",
        title: Cow::Borrowed(""),
        priority: String::new(),
        due_at: None,
        rec,
    };
    // The run of closings the last one looked at belongs to: where it ends, and whether
    // it is a withdrawal (see `closed_status`).
    let mut run: Option<(usize, bool)> = None;
    let mut withdrawn = |i: usize| -> bool {
        match run {
            Some((end, w)) if i < end => w,
            _ => {
                let (end, w) = closing_run(events, i);
                run = Some((end, w));
                w
            }
        }
    };
    for (i, rec) in events.iter().enumerate() {
        let op = match &rec.change {
            Change::TaskRequested {
                task_id,
                code,
                role,
                title,
                due_at,
                priority,
            } => Op::Open(Open {
                code,
                role,
                title: Cow::Borrowed(title),
                priority: name_of(priority),
                due_at: Some(*due_at),
                ..open(WorkKind::Task, *task_id, rec)
            }),
            Change::TaskOverdue { task_id, .. } => Op::Status {
                id: *task_id,
                status: WorkStatus::Overdue,
            },
            Change::TaskEscalated {
                task_id,
                role,
                priority,
                ..
            } => Op::Escalated {
                id: *task_id,
                role,
                priority: Some(name_of(priority)),
            },
            Change::TaskClosed {
                task_id, outcome, ..
            } => Op::Close {
                id: *task_id,
                at: rec.at,
                status: closed_status(withdrawn(i), || match outcome {
                    TaskOutcome::Completed => WorkStatus::Completed,
                    TaskOutcome::NotNeeded => WorkStatus::NotNeeded,
                    TaskOutcome::CouldNotBeDone => WorkStatus::CouldNotBeDone,
                }),
            },
            Change::AlertRaised {
                alert_id,
                code,
                severity,
                role,
                message,
            } => Op::Open(Open {
                code,
                role,
                title: Cow::Borrowed(message),
                priority: name_of(severity),
                due_at: events.iter().find_map(|r| match &r.change {
                    Change::TimerScheduled {
                        fire_at,
                        kind: TimerKind::AlertAck { alert_id: a },
                        ..
                    } if a == alert_id => Some(*fire_at),
                    _ => None,
                }),
                ..open(WorkKind::Alert, *alert_id, rec)
            }),
            Change::AlertEscalated { alert_id, role, .. } => Op::Escalated {
                id: *alert_id,
                role,
                priority: None,
            },
            Change::AlertClosed { alert_id, .. } => Op::Close {
                id: *alert_id,
                at: rec.at,
                status: closed_status(withdrawn(i), || WorkStatus::Acknowledged),
            },
            Change::HandoffRequested {
                handoff_id,
                code,
                from,
                to,
                title,
                accept_by,
            } => Op::Open(Open {
                code,
                role: to,
                title: Cow::Owned(format!("{title} (from {from})")),
                priority: "routine".into(),
                due_at: Some(*accept_by),
                ..open(WorkKind::Handoff, *handoff_id, rec)
            }),
            Change::HandoffEscalated {
                handoff_id, role, ..
            } => Op::Escalated {
                id: *handoff_id,
                role,
                priority: None,
            },
            Change::HandoffClosed {
                handoff_id,
                accepted,
                ..
            } => Op::Close {
                id: *handoff_id,
                at: rec.at,
                status: closed_status(withdrawn(i), || {
                    if *accepted {
                        WorkStatus::Accepted
                    } else {
                        WorkStatus::Declined
                    }
                }),
            },
            // The instance now belongs to another subject: its timer row is written
            // again by [`record_changes`]; its work items need their stored rows: see
            // [`rekeyed_work`].
            _ => continue,
        };
        emit(op);
    }
}

/// How a work item closed: [`WorkStatus::Withdrawn`] when the pathway withdrew it,
/// else what its closing record says (`answered`).
fn closed_status(withdrawn: bool, answered: impl FnOnce() -> WorkStatus) -> WorkStatus {
    if withdrawn {
        WorkStatus::Withdrawn
    } else {
        answered()
    }
}

fn is_closing(c: &Change) -> bool {
    matches!(
        c,
        Change::TaskClosed { .. } | Change::AlertClosed { .. } | Change::HandoffClosed { .. }
    )
}

/// The run of closing records (tasks, alerts, handoffs) of one decision that holds
/// `events[i]`: where it ends, and whether it withdraws what was open. The core withdraws
/// everything still open when an instance closes, completes or starts a new cycle, and
/// records it so: every timer cancelled, then one closing per open item, then the
/// instance's `Closed`, `Completed` or `CycleRestarted`, in the same decision (the same
/// cause). An answer's closing is followed by what the answer caused (a transition) or
/// ends its decision: never directly by the instance's end. The last record of a run
/// with a later decision's records after it (a live commit holds several) is told apart
/// by its cause.
fn closing_run(events: &[Recorded], i: usize) -> (usize, bool) {
    let cause = &events[i].cause;
    let end = events[i..]
        .iter()
        .position(|r| !is_closing(&r.change) || r.cause != *cause)
        .map_or(events.len(), |n| i + n);
    let withdrawn = events.get(end).is_some_and(|r| {
        r.cause == *cause
            && matches!(
                r.change,
                Change::Closed { .. } | Change::Completed | Change::CycleRestarted { .. }
            )
    });
    (end, withdrawn)
}

/// The work items of an instance re-keyed to `subject` (`instance.rekeyed`), open and
/// closed, as they stood before: rewritten with the new subject. Their rows hold what the instance state
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
    open_work(state).map(|id| id.to_string()).collect()
}

/// [`open_work_ids`], as they are kept.
pub(crate) fn open_work(state: &InstanceState) -> impl Iterator<Item = Uuid> + '_ {
    state
        .tasks
        .keys()
        .chain(state.alerts.keys().copied())
        .chain(state.handoffs.keys().copied())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::Timestamp;
    use parcours_core::model::TaskOutcome;
    use parcours_core::state::{Change, Recorded};
    use parcours_store::WorkStatus;
    use uuid::Uuid;

    use super::{Op, record_ops};

    fn rec(cause: &str, n: u128, change: Change) -> Recorded {
        Recorded {
            id: Uuid::from_u128(1000 + n),
            cause: Arc::from(cause),
            rule: None,
            at: Timestamp::UNIX_EPOCH,
            change,
        }
    }

    fn task_closed(n: u128, outcome: TaskOutcome) -> Change {
        Change::TaskClosed {
            task_id: Uuid::from_u128(n),
            code: Arc::from("gp-visit"),
            outcome,
            done: outcome != TaskOutcome::CouldNotBeDone,
        }
    }

    fn alert_closed(n: u128) -> Change {
        Change::AlertClosed {
            alert_id: Uuid::from_u128(n),
            code: "weight-gain".into(),
        }
    }

    fn handoff_closed(n: u128, accepted: bool) -> Change {
        Change::HandoffClosed {
            handoff_id: Uuid::from_u128(n),
            code: "programme-to-gp".into(),
            accepted,
        }
    }

    /// How each closing of `events` closes its item, by item number.
    fn closings(events: &[Recorded]) -> Vec<(u128, WorkStatus)> {
        let mut out = Vec::new();
        record_ops(events, |op| {
            if let Op::Close { id, status, .. } = op {
                out.push((id.as_u128(), status));
            }
        });
        out
    }

    #[test]
    fn answers_close_items_as_answered() {
        let events = [
            rec("e-1", 0, task_closed(1, TaskOutcome::Completed)),
            rec("e-1", 1, task_closed(2, TaskOutcome::NotNeeded)),
            rec("e-1", 2, task_closed(3, TaskOutcome::CouldNotBeDone)),
            rec("e-1", 3, alert_closed(4)),
            rec("e-1", 4, handoff_closed(5, true)),
            rec("e-1", 5, handoff_closed(6, false)),
            rec("e-1", 6, Change::InputIgnored { reason: "x".into() }),
        ];
        assert_eq!(
            closings(&events),
            [
                (1, WorkStatus::Completed),
                (2, WorkStatus::NotNeeded),
                (3, WorkStatus::CouldNotBeDone),
                (4, WorkStatus::Acknowledged),
                (5, WorkStatus::Accepted),
                (6, WorkStatus::Declined),
            ]
        );
    }

    #[test]
    fn what_the_instances_end_closes_is_withdrawn() {
        for end in [
            Change::Closed {
                reason: "deceased".into(),
            },
            Change::Completed,
            Change::CycleRestarted {
                cycle: 2,
                key: None,
            },
        ] {
            let events = [
                // An answer, then what it caused, then the withdrawal of the rest.
                rec("e-1", 0, alert_closed(1)),
                rec(
                    "e-1",
                    1,
                    Change::TimerCancelled {
                        timer_id: Uuid::from_u128(99),
                    },
                ),
                rec("e-1", 2, task_closed(2, TaskOutcome::NotNeeded)),
                rec("e-1", 3, alert_closed(3)),
                rec("e-1", 4, handoff_closed(4, false)),
                rec("e-1", 5, end.clone()),
            ];
            assert_eq!(
                closings(&events),
                [
                    (1, WorkStatus::Acknowledged),
                    (2, WorkStatus::Withdrawn),
                    (3, WorkStatus::Withdrawn),
                    (4, WorkStatus::Withdrawn),
                ],
                "{end:?}"
            );
        }
    }

    #[test]
    fn an_answer_ending_its_decision_is_not_taken_for_the_next_ones_withdrawal() {
        // A live commit holds several decisions of one instance: the acknowledgement
        // ends the first; the second closes the instance with nothing else open.
        let events = [
            rec("e-1", 0, alert_closed(1)),
            rec(
                "e-2",
                1,
                Change::Closed {
                    reason: "deceased".into(),
                },
            ),
        ];
        assert_eq!(closings(&events), [(1, WorkStatus::Acknowledged)]);
        // The same in one decision is a withdrawal.
        let events = [
            rec("e-2", 0, alert_closed(1)),
            rec(
                "e-2",
                1,
                Change::Closed {
                    reason: "deceased".into(),
                },
            ),
        ];
        assert_eq!(closings(&events), [(1, WorkStatus::Withdrawn)]);
    }
}
