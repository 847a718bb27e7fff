//! Instance state and the events it is folded from.
//!
//! An instance is one patient on one pathway version. Its state is the fold of its
//! [`Recorded`] events with [`apply`]; [`crate::decide()`] produces those events and applies
//! them to a working copy as it goes, so "fold of the emitted events equals the state"
//! holds by construction (and is property-tested).

use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::instance_id::InstanceId;
use crate::model::{CompiledPathway, Priority, Severity, StateId, TaskOutcome};
use crate::sorted::SortedMap;
use crate::stamp::Stamp;
use crate::tasks::Tasks;
use crate::timers::Timers;
use crate::value::Scalar;

/// Lifecycle of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    /// Created but not (yet) enrolled: nothing has happened.
    Pending,
    /// Running.
    Active,
    /// Every track reached a terminal state.
    Completed,
    /// Closed by a rule or an action.
    Closed {
        /// Why.
        reason: String,
    },
}

/// One measurement kept for windowed guards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Clinical time.
    pub at: Timestamp,
    /// Value in the series' unit.
    pub value: f64,
}

pub use crate::series::Series;

/// Where a track is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackState {
    /// Current state.
    pub state: StateId,
    /// When it was entered (clinical time; a [`Stamp`]: 16 bytes an entry instead of 24).
    pub entered_at: Stamp,
}

/// What a pending timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TimerKind {
    /// An `after` transition of the current state.
    Transition {
        /// Transition index.
        transition: u16,
    },
    /// An `every` transition of the current state; `fired` occurrences so far.
    Recurring {
        /// Transition index.
        transition: u16,
        /// Occurrences so far in this state entry.
        fired: u32,
    },
    /// A reminder before a task's due time.
    TaskReminder {
        /// Task id.
        task_id: Uuid,
    },
    /// A task's due time.
    TaskDue {
        /// Task id.
        task_id: Uuid,
    },
    /// An escalation step after a task's due time.
    TaskEscalation {
        /// Task id.
        task_id: Uuid,
        /// Ladder step index.
        step: u16,
    },
    /// The acknowledgement deadline of an alert.
    AlertAck {
        /// Alert id.
        alert_id: Uuid,
    },
    /// The acceptance deadline of a handoff.
    HandoffAccept {
        /// Handoff id.
        handoff_id: Uuid,
    },
    /// A named timer scheduled by an action.
    Named {
        /// Timer index.
        timer: u16,
    },
}

impl TimerKind {
    /// The task, alert or handoff this timer serves, if any.
    pub fn owner(&self) -> Option<Uuid> {
        match self {
            TimerKind::TaskReminder { task_id }
            | TimerKind::TaskDue { task_id }
            | TimerKind::TaskEscalation { task_id, .. } => Some(*task_id),
            TimerKind::AlertAck { alert_id } => Some(*alert_id),
            TimerKind::HandoffAccept { handoff_id } => Some(*handoff_id),
            _ => None,
        }
    }
}

/// A pending durable timer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// When it fires.
    pub fire_at: Timestamp,
    /// What for.
    pub kind: TimerKind,
}

/// An open task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenTask {
    /// Task code.
    pub code: Arc<str>,
    /// Role.
    pub role: Arc<str>,
    /// Due time.
    pub due_at: Timestamp,
    /// Whether the due time passed.
    pub overdue: bool,
}

/// An open alert or handoff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenItem {
    /// Code.
    pub code: Arc<str>,
    /// Role it waits on.
    pub role: Arc<str>,
}

/// The state of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    /// Instance id (derived from the enrolling event; a UUID's text, kept as its 16 bytes).
    pub instance_id: InstanceId,
    /// Pathway id.
    pub pathway_id: Arc<str>,
    /// Pathway version it is pinned to.
    pub pathway_version: u32,
    /// Tenant (CPTS).
    pub tenant: Arc<str>,
    /// Pseudonymous patient key.
    pub subject: Arc<str>,
    /// Lifecycle.
    pub status: Status,
    /// Cycle number (1 for the first; +1 at each restart).
    pub cycle: u32,
    /// Enrolment instant.
    pub enrolled_at: Stamp,
    /// Start of the current cycle.
    pub cycle_start: Stamp,
    /// Episode key of the current cycle (the enrolling encounter), if the pathway has one.
    #[serde(default)]
    pub cycle_key: Option<Box<str>>,
    /// One entry per track (as many as the pathway has: a boxed slice, 8 bytes less than a
    /// `Vec` in every cached state).
    pub tracks: Box<[TrackState]>,
    /// Parameter values.
    pub params: Arc<[Scalar]>,
    /// Variable values.
    pub vars: Arc<[Option<Scalar>]>,
    /// Series (shared until changed: cloning a state is cheap).
    pub series: Arc<[Series]>,
    /// Open tasks by id (32 bytes each, see [`Tasks`]).
    pub tasks: Arc<Tasks>,
    /// Open alerts by id.
    pub alerts: Arc<SortedMap<Uuid, OpenItem>>,
    /// Open handoffs by id.
    pub handoffs: Arc<SortedMap<Uuid, OpenItem>>,
    /// Pending timers by id (32 bytes each, see [`Timers`]).
    pub timers: Arc<Timers>,
    /// The tasks done in the current cycle, one bit per task (its position among the
    /// pathway's tasks, the first 64: [`crate::model::done_mask`]), set when one closes
    /// done ([`Change::TaskClosed`] `done`), cleared at each cycle; a `once_per_cycle`
    /// task whose bit is set is not asked for again.
    pub done: u64,
    /// Number of recorded events folded in.
    pub version: u64,
}

impl Default for InstanceState {
    fn default() -> Self {
        InstanceState::pending(InstanceId::default())
    }
}

impl InstanceState {
    /// The empty state of an instance that is not enrolled yet.
    pub fn pending(instance_id: impl Into<InstanceId>) -> InstanceState {
        InstanceState {
            instance_id: instance_id.into(),
            pathway_id: Arc::default(),
            pathway_version: 0,
            tenant: Arc::default(),
            subject: Arc::default(),
            status: Status::Pending,
            cycle: 0,
            enrolled_at: Stamp::UNIX_EPOCH,
            cycle_start: Stamp::UNIX_EPOCH,
            cycle_key: None,
            tracks: Box::default(),
            params: Arc::default(),
            vars: Arc::default(),
            series: Arc::default(),
            tasks: Arc::default(),
            alerts: Arc::default(),
            handoffs: Arc::default(),
            timers: Arc::default(),
            done: 0,
            version: 0,
        }
    }

    /// Hand the parts of this state equal to its pathway's shared copies over to them
    /// (default parameters and variables, empty series, no alerts or handoffs, the pathway
    /// id, task codes and roles), and give back the room its maps grew into. Nothing observable changes; a
    /// cached state then holds only what is its own. Done when a state is built from a
    /// snapshot or a stream, and when a changed state goes back into the cache.
    pub fn share_with(&mut self, pathway: &CompiledPathway) {
        fn same<T: PartialEq + ?Sized>(mine: &mut Arc<T>, shared: &Arc<T>) {
            if !Arc::ptr_eq(mine, shared) && **mine == **shared {
                *mine = shared.clone();
            }
        }
        same(&mut self.params, pathway.default_params());
        same(&mut self.vars, pathway.default_vars());
        same(&mut self.series, pathway.empty_series());
        same(&mut self.alerts, pathway.no_items());
        same(&mut self.handoffs, pathway.no_items());
        if let Some(id) = pathway.name(&self.pathway_id)
            && !Arc::ptr_eq(id, &self.pathway_id)
        {
            self.pathway_id = id.clone();
        }
        if let Some(series) = Arc::get_mut(&mut self.series) {
            for s in series.iter_mut() {
                s.shrink_to_fit();
            }
        }
        if let Some(tasks) = Arc::get_mut(&mut self.tasks) {
            tasks.use_names(pathway);
            tasks.shrink_to_fit();
        }
        for items in [&mut self.alerts, &mut self.handoffs] {
            if let Some(items) = Arc::get_mut(items) {
                items.shrink_to_fit();
                for (_, i) in items.iter_mut() {
                    for name in [&mut i.code, &mut i.role] {
                        if let Some(shared) = pathway.name(name) {
                            *name = shared.clone();
                        }
                    }
                }
            }
        }
        if let Some(timers) = Arc::get_mut(&mut self.timers) {
            timers.shrink_to_fit();
        }
    }

    /// Whether the instance is running.
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// Current state name per track, as `(track, state)`.
    pub fn current_states<'p>(&self, pathway: &'p CompiledPathway) -> Vec<(&'p str, &'p str)> {
        self.tracks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                Some((
                    &*pathway.tracks.get(i)?.name,
                    &*pathway.states.get(t.state.index())?.name,
                ))
            })
            .collect()
    }
}

/// One recorded instance event: a change plus why it happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Deterministic id (derived from the triggering event id); the effect id when published.
    pub id: Uuid,
    /// Id of the event that caused it.
    pub cause: Arc<str>,
    /// The pathway rule that caused it, if a rule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Clinical time it took effect.
    pub at: Timestamp,
    /// What changed.
    pub change: Change,
}

/// What an instance event changes. Names (not indices) are stored so a log stays
/// readable and checkable against its definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Change {
    /// The patient was enrolled.
    Enrolled {
        /// Pathway id.
        pathway_id: String,
        /// Pathway version.
        pathway_version: u32,
        /// Tenant.
        tenant: String,
        /// Pseudonymous patient key.
        subject: String,
        /// Episode key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A new cycle started (re-hospitalisation).
    CycleRestarted {
        /// The new cycle number.
        cycle: u32,
        /// Episode key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// The episode that started the current cycle was cancelled (its discharge did not happen).
    EpisodeCancelled {
        /// The episode key.
        key: String,
    },
    /// A track entered a state.
    StateEntered {
        /// Track.
        track: Arc<str>,
        /// New state.
        state: Arc<str>,
        /// Previous state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Arc<str>>,
    },
    /// A variable changed.
    VariableSet {
        /// Name.
        name: String,
        /// Value.
        value: Scalar,
    },
    /// A per-patient parameter changed.
    ParameterSet {
        /// Name.
        name: String,
        /// Value.
        value: Scalar,
    },
    /// A measurement was added to a series.
    SampleRecorded {
        /// Series.
        series: Arc<str>,
        /// Value in the series unit.
        value: f64,
    },
    /// The series' samples taken at the event's clinical time were withdrawn: the result
    /// was entered in error, or a corrected or amended result replaces them (its own
    /// `SampleRecorded` follows).
    SamplesWithdrawn {
        /// Series.
        series: Arc<str>,
    },
    /// A durable timer was scheduled.
    TimerScheduled {
        /// Timer id.
        timer_id: Uuid,
        /// When.
        fire_at: Timestamp,
        /// What for.
        #[serde(flatten)]
        kind: TimerKind,
    },
    /// A timer was cancelled.
    TimerCancelled {
        /// Timer id.
        timer_id: Uuid,
    },
    /// A timer fired and was handled.
    TimerFired {
        /// Timer id.
        timer_id: Uuid,
        /// Its scheduled time.
        due_at: Timestamp,
    },
    /// A task was requested (effect).
    TaskRequested {
        /// Task id.
        task_id: Uuid,
        /// Code.
        code: Arc<str>,
        /// Role.
        role: Arc<str>,
        /// Title.
        title: Arc<str>,
        /// Due.
        due_at: Timestamp,
        /// Priority.
        priority: Priority,
    },
    /// A reminder was sent (effect).
    TaskReminded {
        /// Task id.
        task_id: Uuid,
        /// Code.
        code: Arc<str>,
        /// Role.
        role: Arc<str>,
    },
    /// A task passed its due time (effect).
    TaskOverdue {
        /// Task id.
        task_id: Uuid,
        /// Code.
        code: Arc<str>,
        /// Role.
        role: Arc<str>,
    },
    /// A task was escalated (effect).
    TaskEscalated {
        /// Task id.
        task_id: Uuid,
        /// Code.
        code: Arc<str>,
        /// Ladder step (0-based).
        step: u16,
        /// Who is told.
        role: Arc<str>,
        /// Priority.
        priority: Priority,
    },
    /// A task ended (effect when cancelled by parcours).
    TaskClosed {
        /// Task id.
        task_id: Uuid,
        /// Code.
        code: Arc<str>,
        /// Outcome.
        outcome: TaskOutcome,
        /// The work is settled for this cycle: the care team answered it completed or not
        /// needed, or a rule found it done (`complete_task`). False when parcours withdrew
        /// it (`cancel_task`, a new cycle, closing) or it could not be done. A
        /// `once_per_cycle` task done is not asked for again in the cycle.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        done: bool,
    },
    /// An alert was raised (effect).
    AlertRaised {
        /// Alert id.
        alert_id: Uuid,
        /// Code.
        code: String,
        /// Severity.
        severity: Severity,
        /// Role.
        role: String,
        /// Rendered message (no patient identity).
        message: String,
    },
    /// An alert was not acknowledged in time (effect).
    AlertEscalated {
        /// Alert id.
        alert_id: Uuid,
        /// Code.
        code: String,
        /// Who is told.
        role: String,
    },
    /// An alert was acknowledged or withdrawn.
    AlertClosed {
        /// Alert id.
        alert_id: Uuid,
        /// Code.
        code: String,
    },
    /// A handoff was requested (effect).
    HandoffRequested {
        /// Handoff id.
        handoff_id: Uuid,
        /// Code.
        code: String,
        /// From role.
        from: String,
        /// To role.
        to: String,
        /// Title.
        title: String,
        /// Accept by.
        accept_by: Timestamp,
    },
    /// A handoff was not accepted in time (effect).
    HandoffEscalated {
        /// Handoff id.
        handoff_id: Uuid,
        /// Code.
        code: String,
        /// Who is told.
        role: String,
    },
    /// A handoff was answered or withdrawn.
    HandoffClosed {
        /// Handoff id.
        handoff_id: Uuid,
        /// Code.
        code: String,
        /// Whether it was accepted.
        accepted: bool,
    },
    /// A guard or value expression failed at run time; it counted as false.
    GuardFailed {
        /// What failed.
        message: String,
    },
    /// An input was seen but deliberately not acted on (preliminary result, unknown unit).
    InputIgnored {
        /// Why.
        reason: String,
    },
    /// The instance moved to another version of its pathway by a declared migration.
    /// Folded with the new version: tracks, parameters, variables and series are named.
    Migrated {
        /// The version it left.
        from_version: u32,
        /// The version it is pinned to from now on.
        to_version: u32,
        /// (track, state, entered at) in the new version.
        tracks: Vec<(String, String, Timestamp)>,
        /// Parameter values by name.
        params: Vec<(String, Scalar)>,
        /// Variable values by name (unset ones left out).
        vars: Vec<(String, Scalar)>,
        /// Series samples by name.
        series: Vec<(String, Vec<Sample>)>,
        /// The `once_per_cycle` tasks done in the cycle, by code.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        done: Vec<String>,
    },
    /// Every track reached a terminal state.
    Completed,
    /// The instance closed.
    Closed {
        /// Why.
        reason: String,
    },
    /// The patient consented again (`consent.given` for this pathway or `*`) after an
    /// opt-out closed this instance: it no longer keeps the patient from being enrolled
    /// again. The instance stays closed; its closing reason becomes `reason`.
    OptOutLifted {
        /// The consent's scope (the pathway id or `*`).
        scope: String,
        /// The closing reason from now on (`opted_out, then consented`).
        reason: String,
    },
    /// The patient's identities were merged (`identity.merged`, ADT^A40): the instance
    /// follows the person from the retired pseudonymous key to the surviving one. Any
    /// status: the history of a closed or completed instance follows too.
    Rekeyed {
        /// The retired key (the instance's subject until now).
        from: String,
        /// The surviving key.
        to: String,
    },
}

/// What kind of effect a change is, if it must be published after commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// For care-team worklists (`parcours.<tenant>.out.task`).
    Task,
    /// For people who must act now (`…out.alert`).
    Alert,
    /// Responsibility moves (`…out.handoff`).
    Handoff,
    /// For the timer service.
    Timer,
}

impl Change {
    /// The effect kind, for changes published after commit.
    pub fn effect_kind(&self) -> Option<EffectKind> {
        match self {
            Change::TaskRequested { .. }
            | Change::TaskReminded { .. }
            | Change::TaskOverdue { .. }
            | Change::TaskEscalated { .. }
            | Change::TaskClosed { .. } => Some(EffectKind::Task),
            Change::AlertRaised { .. }
            | Change::AlertEscalated { .. }
            | Change::AlertClosed { .. } => Some(EffectKind::Alert),
            Change::HandoffRequested { .. }
            | Change::HandoffEscalated { .. }
            | Change::HandoffClosed { .. } => Some(EffectKind::Handoff),
            Change::TimerScheduled { .. } | Change::TimerCancelled { .. } => {
                Some(EffectKind::Timer)
            }
            _ => None,
        }
    }

    /// The dotted type name (`task.requested`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Change::Enrolled { .. } => "instance.enrolled",
            Change::CycleRestarted { .. } => "instance.cycle_restarted",
            Change::EpisodeCancelled { .. } => "instance.episode_cancelled",
            Change::StateEntered { .. } => "state.entered",
            Change::VariableSet { .. } => "variable.set",
            Change::ParameterSet { .. } => "parameter.set",
            Change::SampleRecorded { .. } => "sample.recorded",
            Change::SamplesWithdrawn { .. } => "samples.withdrawn",
            Change::TimerScheduled { .. } => "timer.scheduled",
            Change::TimerCancelled { .. } => "timer.cancelled",
            Change::TimerFired { .. } => "timer.fired",
            Change::TaskRequested { .. } => "task.requested",
            Change::TaskReminded { .. } => "task.reminded",
            Change::TaskOverdue { .. } => "task.overdue",
            Change::TaskEscalated { .. } => "task.escalated",
            Change::TaskClosed { .. } => "task.closed",
            Change::AlertRaised { .. } => "alert.raised",
            Change::AlertEscalated { .. } => "alert.escalated",
            Change::AlertClosed { .. } => "alert.closed",
            Change::HandoffRequested { .. } => "handoff.requested",
            Change::HandoffEscalated { .. } => "handoff.escalated",
            Change::HandoffClosed { .. } => "handoff.closed",
            Change::GuardFailed { .. } => "guard.failed",
            Change::InputIgnored { .. } => "input.ignored",
            Change::Migrated { .. } => "instance.migrated",
            Change::Completed => "instance.completed",
            Change::Closed { .. } => "instance.closed",
            Change::OptOutLifted { .. } => "instance.opt_out_lifted",
            Change::Rekeyed { .. } => "instance.rekeyed",
        }
    }
}

/// A log that contradicts its pathway definition (the wrong version, or tampering).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("instance log diverges from pathway {pathway} v{version} at event {event}: {reason}")]
pub struct Divergence {
    /// Pathway id.
    pub pathway: String,
    /// Pathway version.
    pub version: u32,
    /// The recorded event id.
    pub event: String,
    /// What does not fit.
    pub reason: String,
}

/// The index of a series of `pathway` by name.
fn series_index(pathway: &CompiledPathway, series: &str) -> Option<usize> {
    pathway.series.iter().position(|s| &*s.name == series)
}

/// Fold one recorded event into the state.
pub fn apply(
    pathway: &CompiledPathway,
    state: &mut InstanceState,
    ev: &Recorded,
) -> Result<(), Divergence> {
    let diverge = |reason: String| Divergence {
        pathway: pathway.id.clone(),
        version: pathway.version,
        event: ev.id.to_string(),
        reason,
    };
    match &ev.change {
        Change::Enrolled {
            pathway_id,
            pathway_version,
            tenant,
            subject,
            key,
        } => {
            if pathway_id != &pathway.id || *pathway_version != pathway.version {
                return Err(diverge(format!(
                    "enrolled in {pathway_id} v{pathway_version}, folded with another definition"
                )));
            }
            state.pathway_id = pathway.intern(pathway_id);
            state.pathway_version = *pathway_version;
            state.tenant = Arc::from(tenant.as_str());
            state.subject = Arc::from(subject.as_str());
            state.status = Status::Active;
            state.cycle = 1;
            state.enrolled_at = ev.at.into();
            state.cycle_start = ev.at.into();
            state.cycle_key = key.as_deref().map(Box::from);
            state.done = 0;
            state.params = pathway.default_params().clone();
            state.vars = pathway.default_vars().clone();
            state.series = pathway.empty_series().clone();
            state.tracks = pathway
                .tracks
                .iter()
                .map(|t| TrackState {
                    state: t.initial,
                    entered_at: ev.at.into(),
                })
                .collect();
        }
        Change::EpisodeCancelled { .. } => state.cycle_key = None,
        Change::CycleRestarted { cycle, key } => {
            state.cycle = *cycle;
            state.cycle_start = ev.at.into();
            state.cycle_key = key.as_deref().map(Box::from);
            state.done = 0;
        }
        Change::StateEntered {
            track, state: name, ..
        } => {
            let t = pathway
                .track_id(track)
                .ok_or_else(|| diverge(format!("unknown track `{track}`")))?;
            let s = pathway
                .state_id(name)
                .filter(|s| pathway.state(*s).track == t)
                .ok_or_else(|| diverge(format!("unknown state `{name}` in track `{track}`")))?;
            let slot = state
                .tracks
                .get_mut(t.index())
                .ok_or_else(|| diverge("state entered before enrolment".into()))?;
            *slot = TrackState {
                state: s,
                entered_at: ev.at.into(),
            };
        }
        Change::VariableSet { name, value } => {
            let i = pathway
                .vars
                .iter()
                .position(|v| &v.name == name)
                .ok_or_else(|| diverge(format!("unknown variable `{name}`")))?;
            if let Some(slot) = Arc::make_mut(&mut state.vars).get_mut(i) {
                *slot = Some(value.clone());
            }
        }
        Change::ParameterSet { name, value } => {
            let i = pathway
                .params
                .iter()
                .position(|v| &v.name == name)
                .ok_or_else(|| diverge(format!("unknown parameter `{name}`")))?;
            if let Some(slot) = Arc::make_mut(&mut state.params).get_mut(i) {
                *slot = value.clone();
            }
        }
        Change::SampleRecorded { series, value } => {
            let i = series_index(pathway, series)
                .ok_or_else(|| diverge(format!("unknown series `{series}`")))?;
            let keep = pathway.series[i].keep;
            if let Some(s) = Arc::make_mut(&mut state.series).get_mut(i) {
                s.record(Sample {
                    at: ev.at,
                    value: *value,
                });
                // Keep the window bounded: drop what is older than `keep` before the newest.
                if let (Some(newest), Some(oldest)) =
                    (s.last().map(|x| x.at), s.first().map(|x| x.at))
                    && oldest < crate::calendar::sub_upper_bound(newest, keep)
                {
                    s.drop_before(crate::calendar::sub(newest, keep));
                }
            }
        }
        Change::SamplesWithdrawn { series } => {
            let i = series_index(pathway, series)
                .ok_or_else(|| diverge(format!("unknown series `{series}`")))?;
            if let Some(s) = Arc::make_mut(&mut state.series).get_mut(i) {
                s.remove_at(ev.at);
            }
        }
        Change::TimerScheduled {
            timer_id,
            fire_at,
            kind,
        } => {
            Arc::make_mut(&mut state.timers).insert(
                *timer_id,
                PendingTimer {
                    fire_at: *fire_at,
                    kind: *kind,
                },
            );
        }
        Change::TimerCancelled { timer_id } | Change::TimerFired { timer_id, .. } => {
            Arc::make_mut(&mut state.timers).remove(timer_id);
        }
        Change::TaskRequested {
            task_id,
            code,
            role,
            due_at,
            ..
        } => {
            let tasks = Arc::make_mut(&mut state.tasks);
            tasks.use_names(pathway);
            tasks.insert(
                *task_id,
                OpenTask {
                    code: pathway.name(code).unwrap_or(code).clone(),
                    role: pathway.name(role).unwrap_or(role).clone(),
                    due_at: *due_at,
                    overdue: false,
                },
            );
        }
        Change::TaskOverdue { task_id, .. } => {
            Arc::make_mut(&mut state.tasks).set_overdue(task_id);
        }
        Change::TaskClosed {
            task_id,
            code,
            done,
            ..
        } => {
            Arc::make_mut(&mut state.tasks).remove(task_id);
            if *done && let Some(mask) = pathway.task_mask(code) {
                state.done |= mask;
            }
        }
        Change::AlertRaised {
            alert_id,
            code,
            role,
            ..
        } => {
            Arc::make_mut(&mut state.alerts).insert(
                *alert_id,
                OpenItem {
                    code: pathway.intern(code),
                    role: pathway.intern(role),
                },
            );
        }
        Change::AlertClosed { alert_id, .. } => {
            Arc::make_mut(&mut state.alerts).remove(alert_id);
        }
        Change::HandoffRequested {
            handoff_id,
            code,
            to,
            ..
        } => {
            Arc::make_mut(&mut state.handoffs).insert(
                *handoff_id,
                OpenItem {
                    code: pathway.intern(code),
                    role: pathway.intern(to),
                },
            );
        }
        Change::HandoffClosed { handoff_id, .. } => {
            Arc::make_mut(&mut state.handoffs).remove(handoff_id);
        }
        Change::Migrated {
            to_version,
            tracks,
            params,
            vars,
            series,
            done,
            ..
        } => {
            if *state.pathway_id != *pathway.id || *to_version != pathway.version {
                return Err(diverge(format!(
                    "migrated to {} v{to_version}, folded with another definition",
                    state.pathway_id
                )));
            }
            state.pathway_version = *to_version;
            let mut next = Vec::with_capacity(pathway.tracks.len());
            for (i, t) in pathway.tracks.iter().enumerate() {
                let Some((_, name, entered_at)) = tracks.iter().find(|(n, _, _)| **n == *t.name)
                else {
                    return Err(diverge(format!(
                        "migration names no state for track `{}`",
                        t.name
                    )));
                };
                let s = pathway
                    .state_id(name)
                    .filter(|s| pathway.state(*s).track.index() == i)
                    .ok_or_else(|| {
                        diverge(format!("unknown state `{name}` in track `{}`", t.name))
                    })?;
                next.push(TrackState {
                    state: s,
                    entered_at: (*entered_at).into(),
                });
            }
            state.tracks = next.into_boxed_slice();
            state.params = pathway
                .params
                .iter()
                .map(|d| {
                    params
                        .iter()
                        .find(|(n, _)| *n == d.name)
                        .map(|(_, v)| v.clone())
                        .or_else(|| d.default.clone())
                        .unwrap_or(Scalar::Bool(false))
                })
                .collect();
            state.vars = pathway
                .vars
                .iter()
                .map(|d| {
                    vars.iter()
                        .find(|(n, _)| *n == d.name)
                        .map(|(_, v)| v.clone())
                        .or_else(|| d.default.clone())
                })
                .collect();
            state.series = pathway
                .series
                .iter()
                .map(|d| {
                    series
                        .iter()
                        .find(|(n, _)| **n == *d.name)
                        .map(|(_, s)| Series::from(s.clone()))
                        .unwrap_or_default()
                })
                .collect();
            // By code: a task the new version lacks is forgotten.
            state.done = done
                .iter()
                .filter_map(|code| pathway.task_mask(code))
                .fold(0, |bits, mask| bits | mask);
        }
        Change::Completed => state.status = Status::Completed,
        Change::Closed { reason } => {
            state.status = Status::Closed {
                reason: reason.clone(),
            }
        }
        Change::OptOutLifted { reason, .. } => {
            if !matches!(state.status, Status::Closed { .. }) {
                return Err(diverge(
                    "opt-out lifted on an instance that is not closed".into(),
                ));
            }
            state.status = Status::Closed {
                reason: reason.clone(),
            }
        }
        Change::Rekeyed { from, to } => {
            if state.status == Status::Pending {
                return Err(diverge("re-keyed before enrolment".into()));
            }
            if *state.subject != **from {
                return Err(diverge(
                    "re-keyed from a subject that is not the instance's".into(),
                ));
            }
            if from == to {
                return Err(diverge("re-keyed to the subject it already has".into()));
            }
            state.subject = Arc::from(to.as_str());
        }
        Change::TaskReminded { .. }
        | Change::TaskEscalated { .. }
        | Change::AlertEscalated { .. }
        | Change::HandoffEscalated { .. }
        | Change::GuardFailed { .. }
        | Change::InputIgnored { .. } => {}
    }
    state.version += 1;
    Ok(())
}

/// Rebuild a state from its recorded events.
pub fn fold<'a>(
    pathway: &CompiledPathway,
    instance_id: &str,
    events: impl IntoIterator<Item = &'a Recorded>,
) -> Result<InstanceState, Divergence> {
    let mut state = InstanceState::pending(instance_id);
    for ev in events {
        apply(pathway, &mut state, ev)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a cached state costs in place (its `Loaded` in the patient's vector, its
    /// tracks, its variables), so that a field growing it is seen.
    #[test]
    fn a_cached_state_is_small() {
        assert_eq!(size_of::<InstanceState>(), 248);
        assert_eq!(size_of::<TrackState>(), 16);
        assert_eq!(size_of::<Option<Scalar>>(), 16);
        assert_eq!(size_of::<Series>(), 24);
    }
}
