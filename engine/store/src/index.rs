//! Projections kept with the log: what the runtime and the API query without folding.

use jiff::{SignedDuration, Timestamp};

use crate::Codec;

/// Changes to the projections, applied in the same transaction as a commit's records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexChanges {
    /// Instance summaries to insert or replace.
    pub instances: Vec<InstanceRow>,
    /// Timers scheduled or gone (fired or cancelled).
    pub timers: Vec<TimerChange>,
    /// Work items opened, changed or closed.
    pub work: Vec<WorkChange>,
    /// Snapshots to insert or replace (one per instance is kept).
    pub snapshots: Vec<Snapshot>,
}

impl IndexChanges {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.timers.is_empty()
            && self.work.is_empty()
            && self.snapshots.is_empty()
    }

    /// Add another set of changes after these (later changes win).
    pub fn extend(&mut self, other: IndexChanges) {
        self.instances.extend(other.instances);
        self.timers.extend(other.timers);
        self.work.extend(other.work);
        self.snapshots.extend(other.snapshots);
    }
}

/// The summary of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRow {
    /// Instance id (its stream).
    pub stream: String,
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// Pathway id.
    pub pathway_id: String,
    /// The version it is pinned to.
    pub pathway_version: u32,
    /// `active`, `completed` or `closed`.
    pub status: String,
    /// Why it closed, if it did.
    pub closed_reason: Option<String>,
    /// Current state of each track, `track=state` separated by spaces, in track order.
    pub states: String,
    /// Cycle number.
    pub cycle: u32,
    /// Enrolment instant (clinical time).
    pub enrolled_at: Timestamp,
    /// Clinical time of its last event.
    pub updated_at: Timestamp,
    /// Number of records in its stream.
    pub version: u64,
}

/// A pending durable timer.
#[derive(Clone, Debug, PartialEq)]
pub struct TimerRow {
    /// Timer id.
    pub id: String,
    /// The instance that scheduled it.
    pub stream: String,
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// When it is due: the clinical instant its `timer.fired` event carries.
    pub fire_at: Timestamp,
    /// The end of its catch-up grace, later than `fire_at`: it was already due when the
    /// commit that wrote the row was recorded, and fires no sooner than this
    /// ([`TimerChange::CatchUp`]). `None`: it fires at `fire_at`.
    pub not_before: Option<Timestamp>,
}

impl TimerRow {
    /// When it fires: at `fire_at`, or at the end of its catch-up grace. Stores find due
    /// timers, and order them, by this instant.
    pub fn fires_at(&self) -> Timestamp {
        self.not_before
            .map_or(self.fire_at, |n| n.max(self.fire_at))
    }

    /// The row as a commit recorded at `recorded_at` writes it with a catch-up `grace`:
    /// due at or before `recorded_at` (a backdated event's deadline), it fires no sooner
    /// than `recorded_at + grace`; due later, or with no grace, at `fire_at`.
    pub fn caught_up(mut self, recorded_at: Timestamp, grace: SignedDuration) -> TimerRow {
        self.not_before = catch_up_end(self.fire_at, recorded_at, grace);
        self
    }
}

/// The end of the catch-up grace of a timer due at `due` whose row a commit recorded at
/// `recorded_at` writes with `grace` ([`TimerRow::caught_up`]): `None` when it was not
/// due yet then, or without a grace.
pub fn catch_up_end(
    due: Timestamp,
    recorded_at: Timestamp,
    grace: SignedDuration,
) -> Option<Timestamp> {
    if !grace.is_positive() || due > recorded_at {
        return None;
    }
    let end = recorded_at.saturating_add(grace).unwrap_or(recorded_at);
    (end > due).then_some(end)
}

/// A timer scheduled or gone.
#[derive(Clone, Debug, PartialEq)]
pub enum TimerChange {
    /// Pending from now on (with the row's own `not_before`).
    Schedule(TimerRow),
    /// Pending from now on, with a catch-up grace: the store writes the row as
    /// [`TimerRow::caught_up`] with the commit's `recorded_at` (the log's clock, which the
    /// caller does not know yet), so that a timer already due when it was committed waits
    /// `grace` for the rest of a backlog. A change written without records
    /// ([`crate::EventStore::write_index`]) is written as [`TimerChange::Schedule`].
    CatchUp {
        /// The row (its `not_before` is replaced).
        row: TimerRow,
        /// How long after the commit's `recorded_at` it fires at the earliest.
        grace: SignedDuration,
    },
    /// Fired or cancelled: no longer pending (absent is fine).
    Remove {
        /// Timer id.
        id: String,
    },
}

/// What a work item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkKind {
    /// Work for a role, with a due time.
    Task,
    /// A signal that needs a human now.
    Alert,
    /// Responsibility moving, to be accepted.
    Handoff,
}

impl WorkKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Task => "task",
            WorkKind::Alert => "alert",
            WorkKind::Handoff => "handoff",
        }
    }

    /// From a stored name.
    pub fn parse(s: &str) -> Option<WorkKind> {
        match s {
            "task" => Some(WorkKind::Task),
            "alert" => Some(WorkKind::Alert),
            "handoff" => Some(WorkKind::Handoff),
            _ => None,
        }
    }
}

/// Where a work item stands: open (`open`, `overdue`, `escalated`), or closed and how.
///
/// A closed item keeps its row: the care team's apps list what was done as well as what
/// is waiting ([`WorkFilter::statuses`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkStatus {
    /// Waiting, not late.
    Open,
    /// Past its due time (tasks).
    Overdue,
    /// Escalated to someone else (past due or unanswered).
    Escalated,
    /// A task done.
    Completed,
    /// A task cancelled as not needed (answered so, or cancelled by a pathway rule).
    NotNeeded,
    /// A task that could not be done.
    CouldNotBeDone,
    /// An alert acknowledged.
    Acknowledged,
    /// A handoff accepted.
    Accepted,
    /// A handoff declined.
    Declined,
    /// Closed by the pathway because the instance ended (closed, completed) or started a
    /// new cycle: what was still open is no longer asked for.
    Withdrawn,
}

impl WorkStatus {
    /// The statuses of an open item.
    pub const OPEN: [WorkStatus; 3] =
        [WorkStatus::Open, WorkStatus::Overdue, WorkStatus::Escalated];

    /// The statuses of a closed item.
    pub const CLOSED: [WorkStatus; 7] = [
        WorkStatus::Completed,
        WorkStatus::NotNeeded,
        WorkStatus::CouldNotBeDone,
        WorkStatus::Acknowledged,
        WorkStatus::Accepted,
        WorkStatus::Declined,
        WorkStatus::Withdrawn,
    ];

    /// Every status.
    pub const ALL: [WorkStatus; 10] = [
        WorkStatus::Open,
        WorkStatus::Overdue,
        WorkStatus::Escalated,
        WorkStatus::Completed,
        WorkStatus::NotNeeded,
        WorkStatus::CouldNotBeDone,
        WorkStatus::Acknowledged,
        WorkStatus::Accepted,
        WorkStatus::Declined,
        WorkStatus::Withdrawn,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkStatus::Open => "open",
            WorkStatus::Overdue => "overdue",
            WorkStatus::Escalated => "escalated",
            WorkStatus::Completed => "completed",
            WorkStatus::NotNeeded => "not_needed",
            WorkStatus::CouldNotBeDone => "could_not_be_done",
            WorkStatus::Acknowledged => "acknowledged",
            WorkStatus::Accepted => "accepted",
            WorkStatus::Declined => "declined",
            WorkStatus::Withdrawn => "withdrawn",
        }
    }

    /// From a stored name.
    pub fn parse(s: &str) -> Option<WorkStatus> {
        WorkStatus::ALL.into_iter().find(|w| w.as_str() == s)
    }

    /// Whether the item still waits on someone.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            WorkStatus::Open | WorkStatus::Overdue | WorkStatus::Escalated
        )
    }
}

/// A task, alert or handoff, open or closed.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkItem {
    /// Its id (the id parcours gave; care-team systems answer with it).
    pub id: String,
    /// Task, alert or handoff.
    pub kind: WorkKind,
    /// The instance it belongs to.
    pub stream: String,
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// Pathway id.
    pub pathway_id: String,
    /// Code from the pathway (`gp-visit`).
    pub code: String,
    /// The role it waits on (for a handoff: the receiving role).
    pub role: String,
    /// Title or message (never patient identity).
    pub title: String,
    /// Where it stands.
    pub status: WorkStatus,
    /// Priority or severity.
    pub priority: String,
    /// When it is due (task) or must be accepted / acknowledged by (handoff, alert).
    pub due_at: Option<Timestamp>,
    /// When it was opened (clinical time).
    pub opened_at: Timestamp,
    /// The record that opened it.
    pub opened_by: String,
    /// The role its latest escalation told (it is on that role's worklist too, and that
    /// role may answer it), when it was escalated.
    pub escalated_to: Option<String>,
    /// When it closed (clinical time: that of the event that closed it, as
    /// `opened_at` is that of the event that opened it), once closed.
    pub closed_at: Option<Timestamp>,
}

/// A work item opened or changed, or closed.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, built and applied within one commit
pub enum WorkChange {
    /// Insert or replace.
    Upsert(WorkItem),
    /// Its status changed (absent is fine: it closed meanwhile).
    Status {
        /// Its id.
        id: String,
        /// The new status.
        status: WorkStatus,
    },
    /// Escalated: its status becomes `escalated`, the role told joins its worklists (the
    /// role it waits on keeps it), and its priority changes when the step gives one
    /// (absent is fine: it closed meanwhile).
    Escalated {
        /// Its id.
        id: String,
        /// The role the escalation told.
        role: String,
        /// The step's priority, when it sets one.
        priority: Option<String>,
    },
    /// Closed, and how: the row stays with this status, and later status changes or
    /// escalations of the item leave it alone (absent is fine).
    Closed {
        /// Its id.
        id: String,
        /// How it closed (one of [`WorkStatus::CLOSED`]).
        status: WorkStatus,
        /// When (clinical time of the event that closed it).
        at: Timestamp,
    },
    /// Its row deleted (absent is fine).
    Remove {
        /// Its id.
        id: String,
    },
}

/// Where a listing of work items stands: the last item of a page, in the listing's
/// order (earliest due first, those without a due time last, then by id). Neither
/// changes over an item's life, so paging with it neither skips nor repeats an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkCursor {
    /// The item's due time.
    pub due_at: Option<Timestamp>,
    /// The item's id.
    pub id: String,
}

impl WorkItem {
    /// The cursor that lists the items after this one ([`WorkFilter::after`]).
    pub fn cursor(&self) -> WorkCursor {
        WorkCursor {
            due_at: self.due_at,
            id: self.id.clone(),
        }
    }
}

/// Which work items to list, earliest due first (those without a due time last), then
/// by id. `tenant` is required: nothing is listed across tenants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkFilter {
    /// The CPTS.
    pub tenant: String,
    /// Only the items waiting on this role, or escalated to it.
    pub role: Option<String>,
    /// Only this kind.
    pub kind: Option<WorkKind>,
    /// Only these statuses (empty: the open ones, [`WorkStatus::OPEN`]).
    pub statuses: Vec<WorkStatus>,
    /// Only this instance.
    pub stream: Option<String>,
    /// Only the items after this one in the listing's order (paging).
    pub after: Option<WorkCursor>,
    /// At most this many (0: a default of 100).
    pub limit: usize,
}

impl WorkFilter {
    /// The statuses listed: those asked for, else the open ones.
    pub fn statuses(&self) -> &[WorkStatus] {
        if self.statuses.is_empty() {
            &WorkStatus::OPEN
        } else {
            &self.statuses
        }
    }
}

/// Which instances to list. `tenant` is required.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceFilter {
    /// The CPTS.
    pub tenant: String,
    /// Only this pathway.
    pub pathway_id: Option<String>,
    /// Only this status (`active`, `completed`, `closed`).
    pub status: Option<String>,
    /// Only instances whose stream id sorts after this one (paging).
    pub after_stream: Option<String>,
    /// At most this many (0: a default of 100).
    pub limit: usize,
}

/// The encoded state of an instance after `version` records: loading it and folding the
/// records after `version` gives the current state.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Instance id.
    pub stream: String,
    /// Stream version it reflects.
    pub version: u64,
    /// Encoding (bincode for snapshots).
    pub codec: Codec,
    /// Layout version of the payload.
    pub type_version: u16,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// Something that could not be processed, kept with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Where it came from (`http`, `mllp`, `nats:<subject>`, `runtime`).
    pub source: String,
    /// The CPTS, when known.
    pub tenant: Option<String>,
    /// Why it was refused: where and what.
    pub reason: String,
    /// The bytes as received.
    pub payload: Vec<u8>,
}

/// Which dead letters to list, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeadLetterFilter {
    /// Only this tenant's (`None`: every tenant's, and those whose tenant is unknown).
    pub tenant: Option<String>,
    /// Only those from this source, or from this front: `nats` takes `nats` and every
    /// `nats:<subject>`.
    pub source: Option<String>,
    /// Only those with an id below this one (paging).
    pub before: Option<u64>,
    /// At most this many (0: a default of 100).
    pub limit: usize,
}

impl DeadLetterFilter {
    /// Whether a letter's source is the one asked for, or of the front asked for.
    pub fn source_matches(&self, source: &str) -> bool {
        self.source.as_deref().is_none_or(|want| {
            source == want
                || source
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with(':'))
        })
    }
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDeadLetter {
    /// Sequence number.
    pub id: u64,
    /// When it was kept (log time).
    pub received_at: Timestamp,
    /// What was kept.
    pub letter: DeadLetter,
}

/// [`IndexChanges`] reduced to their net effect (the last change of each key wins), as
/// backends apply them: rows to delete, then rows to insert or replace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetChanges {
    /// Instance rows to insert or replace.
    pub instances: Vec<InstanceRow>,
    /// Timer ids to delete.
    pub timers_removed: Vec<String>,
    /// Timers to insert or replace.
    pub timers: Vec<TimerRow>,
    /// Work item ids to delete.
    pub work_removed: Vec<String>,
    /// Work items to insert or replace.
    pub work: Vec<WorkItem>,
    /// Status changes (and escalations) of work items not otherwise written.
    pub work_status: Vec<WorkUpdate>,
    /// Snapshots to insert or replace.
    pub snapshots: Vec<Snapshot>,
}

/// A work item's new status, with its escalation when it was escalated: applied to the
/// stored row, whose other columns stay.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkUpdate {
    /// Its id.
    pub id: String,
    /// The new status.
    pub status: WorkStatus,
    /// The role the escalation told (`None`: unchanged).
    pub escalated_to: Option<String>,
    /// The new priority (`None`: unchanged).
    pub priority: Option<String>,
    /// When it closed, when this update closes it (`None`: unchanged).
    pub closed_at: Option<Timestamp>,
}

impl IndexChanges {
    /// Resolve the catch-up rows ([`TimerChange::CatchUp`]) of a commit recorded at
    /// `recorded_at`: what a backend does first when it appends.
    pub fn recorded_at(&mut self, recorded_at: Timestamp) {
        if !self
            .timers
            .iter()
            .any(|c| matches!(c, TimerChange::CatchUp { .. }))
        {
            return;
        }
        self.timers = std::mem::take(&mut self.timers)
            .into_iter()
            .map(|change| match change {
                TimerChange::CatchUp { row, grace } => {
                    TimerChange::Schedule(row.caught_up(recorded_at, grace))
                }
                other => other,
            })
            .collect();
    }

    /// The net effect of these changes, in a stable order.
    pub fn net(self) -> NetChanges {
        use std::collections::BTreeMap;
        let mut instances = BTreeMap::new();
        for row in self.instances {
            instances.insert(row.stream.clone(), row);
        }
        let mut timers: BTreeMap<String, Option<TimerRow>> = BTreeMap::new();
        for change in self.timers {
            match change {
                TimerChange::Schedule(row) | TimerChange::CatchUp { row, .. } => {
                    timers.insert(row.id.clone(), Some(row))
                }
                TimerChange::Remove { id } => timers.insert(id, None),
            };
        }
        #[allow(clippy::large_enum_variant)]
        enum Net {
            Upsert(WorkItem),
            Update(WorkUpdate),
            Remove,
        }
        let mut work: BTreeMap<String, Net> = BTreeMap::new();
        for change in self.work {
            match change {
                WorkChange::Upsert(item) => {
                    work.insert(item.id.clone(), Net::Upsert(item));
                }
                WorkChange::Remove { id } => {
                    work.insert(id, Net::Remove);
                }
                WorkChange::Closed { id, status, at } => match work.get_mut(&id) {
                    Some(Net::Upsert(item)) => {
                        item.status = status;
                        item.closed_at = Some(at);
                    }
                    Some(Net::Remove) => {}
                    Some(Net::Update(u)) => {
                        u.status = status;
                        u.closed_at = Some(at);
                    }
                    None => {
                        let u = WorkUpdate {
                            id: id.clone(),
                            status,
                            escalated_to: None,
                            priority: None,
                            closed_at: Some(at),
                        };
                        work.insert(id, Net::Update(u));
                    }
                },
                WorkChange::Status { id, status } => match work.get_mut(&id) {
                    Some(Net::Upsert(item)) if item.status.is_open() => item.status = status,
                    Some(Net::Update(u)) if u.status.is_open() => u.status = status,
                    Some(_) => {}
                    None => {
                        let u = WorkUpdate {
                            id: id.clone(),
                            status,
                            escalated_to: None,
                            priority: None,
                            closed_at: None,
                        };
                        work.insert(id, Net::Update(u));
                    }
                },
                WorkChange::Escalated { id, role, priority } => match work.get_mut(&id) {
                    Some(Net::Upsert(item)) if item.status.is_open() => {
                        item.status = WorkStatus::Escalated;
                        item.escalated_to = Some(role);
                        if let Some(p) = priority {
                            item.priority = p;
                        }
                    }
                    Some(Net::Update(u)) if u.status.is_open() => {
                        u.status = WorkStatus::Escalated;
                        u.escalated_to = Some(role);
                        if priority.is_some() {
                            u.priority = priority;
                        }
                    }
                    None => {
                        let u = WorkUpdate {
                            id: id.clone(),
                            status: WorkStatus::Escalated,
                            escalated_to: Some(role),
                            priority,
                            closed_at: None,
                        };
                        work.insert(id, Net::Update(u));
                    }
                    Some(_) => {}
                },
            }
        }
        let mut snapshots = BTreeMap::new();
        for snap in self.snapshots {
            snapshots.insert(snap.stream.clone(), snap);
        }
        let mut net = NetChanges {
            instances: instances.into_values().collect(),
            snapshots: snapshots.into_values().collect(),
            ..NetChanges::default()
        };
        for (id, row) in timers {
            match row {
                Some(row) => net.timers.push(row),
                None => net.timers_removed.push(id),
            }
        }
        for (id, item) in work {
            match item {
                Net::Upsert(item) => net.work.push(item),
                Net::Update(u) => net.work_status.push(u),
                Net::Remove => net.work_removed.push(id),
            }
        }
        net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open task of id `id`.
    fn item(id: &str) -> WorkItem {
        WorkItem {
            id: id.into(),
            kind: WorkKind::Task,
            stream: "i".into(),
            tenant: "t".into(),
            subject: "p".into(),
            pathway_id: "hf".into(),
            code: "c".into(),
            role: "gp".into(),
            title: "T".into(),
            status: WorkStatus::Open,
            priority: "routine".into(),
            due_at: None,
            opened_at: Timestamp::UNIX_EPOCH,
            opened_by: "e".into(),
            escalated_to: None,
            closed_at: None,
        }
    }

    fn timer(id: &str) -> TimerRow {
        TimerRow {
            id: id.into(),
            stream: "i-1".into(),
            tenant: "t".into(),
            subject: "p".into(),
            fire_at: Timestamp::UNIX_EPOCH,
            not_before: None,
        }
    }

    #[test]
    fn a_catch_up_row_already_due_waits_its_grace_after_the_commit() {
        let at = |s: i64| Timestamp::from_second(s).expect("instant");
        let due = |s: i64| TimerRow {
            fire_at: at(s),
            ..timer("a")
        };
        let grace = SignedDuration::from_mins(10);
        // Due before, or at, the commit: the end of the grace.
        assert_eq!(
            due(100).caught_up(at(1_000), grace).not_before,
            Some(at(1_600))
        );
        assert_eq!(due(1_000).caught_up(at(1_000), grace).fires_at(), at(1_600));
        // Due after the commit, even within the grace: at its due instant.
        assert_eq!(due(1_001).caught_up(at(1_000), grace).not_before, None);
        // No grace: at its due instant.
        assert_eq!(
            due(100)
                .caught_up(at(1_000), SignedDuration::ZERO)
                .fires_at(),
            at(100)
        );
        let mut changes = IndexChanges {
            timers: vec![TimerChange::CatchUp {
                row: due(100),
                grace,
            }],
            ..IndexChanges::default()
        };
        changes.recorded_at(at(1_000));
        assert_eq!(
            changes.timers,
            [TimerChange::Schedule(TimerRow {
                not_before: Some(at(1_600)),
                ..due(100)
            })]
        );
    }

    #[test]
    fn the_last_change_of_a_key_wins() {
        let changes = IndexChanges {
            timers: vec![
                TimerChange::Schedule(timer("a")),
                TimerChange::Remove { id: "a".into() },
                TimerChange::Remove { id: "b".into() },
                TimerChange::Schedule(timer("b")),
            ],
            ..IndexChanges::default()
        };
        let net = changes.net();
        assert_eq!(net.timers_removed, ["a"]);
        assert_eq!(net.timers, [timer("b")]);
    }

    #[test]
    fn a_status_change_folds_into_an_upsert_and_not_into_a_removal() {
        let status = |id: &str, status| WorkChange::Status {
            id: id.into(),
            status,
        };
        let net = IndexChanges {
            work: vec![
                WorkChange::Upsert(item("a")),
                status("a", WorkStatus::Overdue),
                status("b", WorkStatus::Escalated),
                WorkChange::Remove { id: "c".into() },
                status("c", WorkStatus::Overdue),
            ],
            ..IndexChanges::default()
        }
        .net();
        assert_eq!(net.work.len(), 1);
        assert_eq!(net.work[0].status, WorkStatus::Overdue);
        assert_eq!(
            net.work_status,
            [WorkUpdate {
                id: "b".into(),
                status: WorkStatus::Escalated,
                escalated_to: None,
                priority: None,
                closed_at: None,
            }]
        );
        assert_eq!(net.work_removed, ["c"]);
    }

    #[test]
    fn a_closing_keeps_the_row_and_nothing_reopens_it() {
        let closed_at = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(1);
        let net = IndexChanges {
            work: vec![
                WorkChange::Upsert(item("a")),
                WorkChange::Closed {
                    id: "a".into(),
                    status: WorkStatus::Completed,
                    at: closed_at,
                },
                WorkChange::Status {
                    id: "a".into(),
                    status: WorkStatus::Overdue,
                },
                WorkChange::Closed {
                    id: "b".into(),
                    status: WorkStatus::Withdrawn,
                    at: closed_at,
                },
                WorkChange::Escalated {
                    id: "b".into(),
                    role: "cardiologist".into(),
                    priority: Some("asap".into()),
                },
            ],
            ..IndexChanges::default()
        }
        .net();
        assert_eq!(net.work.len(), 1);
        assert_eq!(net.work[0].status, WorkStatus::Completed);
        assert_eq!(net.work[0].closed_at, Some(closed_at));
        assert_eq!(
            net.work_status,
            [WorkUpdate {
                id: "b".into(),
                status: WorkStatus::Withdrawn,
                escalated_to: None,
                priority: None,
                closed_at: Some(closed_at),
            }]
        );
        assert!(net.work_removed.is_empty());
    }

    #[test]
    fn statuses_round_trip_and_split_into_open_and_closed() {
        for s in WorkStatus::ALL {
            assert_eq!(WorkStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.is_open(), WorkStatus::OPEN.contains(&s));
            assert_ne!(s.is_open(), WorkStatus::CLOSED.contains(&s));
        }
        assert_eq!(WorkStatus::parse("closed"), None);
    }

    #[test]
    fn an_escalation_folds_into_an_upsert_or_a_status_change() {
        let escalated = |id: &str, priority: Option<&str>| WorkChange::Escalated {
            id: id.into(),
            role: "cardiologist".into(),
            priority: priority.map(Into::into),
        };
        let net = IndexChanges {
            work: vec![
                WorkChange::Upsert(item("a")),
                escalated("a", Some("asap")),
                WorkChange::Status {
                    id: "b".into(),
                    status: WorkStatus::Overdue,
                },
                escalated("b", None),
                escalated("c", Some("asap")),
                WorkChange::Status {
                    id: "c".into(),
                    status: WorkStatus::Overdue,
                },
            ],
            ..IndexChanges::default()
        }
        .net();
        assert_eq!(net.work[0].status, WorkStatus::Escalated);
        assert_eq!(net.work[0].escalated_to.as_deref(), Some("cardiologist"));
        assert_eq!(net.work[0].priority, "asap");
        let update = |id: &str, status, priority: Option<&str>| WorkUpdate {
            id: id.into(),
            status,
            escalated_to: Some("cardiologist".into()),
            priority: priority.map(Into::into),
            closed_at: None,
        };
        assert_eq!(
            net.work_status,
            [
                update("b", WorkStatus::Escalated, None),
                update("c", WorkStatus::Overdue, Some("asap")),
            ]
        );
    }
}
