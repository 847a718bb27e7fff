//! The compiled pathway: the checked, immutable graph the core executes.
//!
//! Built only by the compiler in `parcours-lang`; every reference is a typed index, so a
//! dangling name cannot reach the runtime. Public accessors are keyed by state name in a
//! stable (declaration) order; the petgraph graph inside stays private.

use petgraph::graph::{DiGraph, NodeIndex};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::calendar::ClinicalDuration;
use crate::events::EventType;
use crate::expr::Expr;
use crate::value::{Scalar, ScalarType};

macro_rules! id_type {
    ($($(#[doc = $doc:literal])* $name:ident),*) => {$(
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u16);
        impl $name {
            /// As a vector index.
            pub fn index(self) -> usize { usize::from(self.0) }
        }
    )*};
}

id_type!(
    /// A state, unique across the pathway.
    StateId,
    /// A track (orthogonal region).
    TrackId,
    /// A transition.
    TransitionId,
    /// A task definition.
    TaskDefId,
    /// An alert definition.
    AlertDefId,
    /// A handoff definition.
    HandoffDefId,
    /// A named timer.
    TimerDefId
);

/// A checked guard and the text it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// The typed expression.
    pub expr: Expr,
    /// The CEL source, for explanations.
    pub source: String,
}

/// What happens when the enrolment event arrives again for an active instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repeat {
    /// Start a new cycle: cancel timers and open tasks, re-enter the initial states.
    Restart,
    /// Deliver it to the transitions like any other event.
    Ignore,
}

/// The enrolment rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The event type that enrols.
    pub on: EventType,
    /// The eligibility guard.
    pub guard: Option<Guard>,
    /// Behaviour on a repeated enrolment event (re-hospitalisation).
    pub on_repeat: Repeat,
    /// What identifies an episode: the same key again is not a new cycle.
    pub episode_key: Option<Expr>,
    /// How long before the enrolment a consent to the pathway still counts for the new
    /// instance ([`crate::route::consent_before_enrolment`]; zero: none counts).
    pub consent_window: ClinicalDuration,
}

/// The default of [`Enrolment::consent_window`]: 30 days (PRADO's adviser meets the
/// patient during the stay, days before the discharge).
pub const DEFAULT_CONSENT_WINDOW: ClinicalDuration =
    ClinicalDuration::new(30, crate::calendar::DurationUnit::Days);

/// A rule that closes the instance (death, opt-out, transfer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloseRule {
    /// Stable rule id (`close/deceased`).
    pub rule: std::sync::Arc<str>,
    /// The event.
    pub on: EventType,
    /// Optional guard.
    pub guard: Option<Guard>,
    /// Why the instance closes (`deceased`, `opted_out`, `transferred`).
    pub reason: String,
}

/// A parameter or variable declaration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarDecl {
    /// Name (`params.<name>` / `vars.<name>`).
    pub name: String,
    /// Declared type.
    pub ty: ScalarType,
    /// Default value (required for parameters).
    pub default: Option<Scalar>,
    /// What it means.
    pub description: String,
}

/// A measurement series kept per instance for windowed guards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesDecl {
    /// Name (`series.<name>`).
    pub name: Arc<str>,
    /// LOINC codes that feed it.
    pub codes: Vec<String>,
    /// Unit the samples are stored in (converted on arrival).
    pub unit: String,
    /// How long samples are kept.
    pub keep: ClinicalDuration,
    /// Whether a result without a unit is taken as already in `unit` (`unitless: assume`);
    /// otherwise it is not added and recorded as an ignored input.
    #[serde(default)]
    pub assume_unitless: bool,
}

/// A track: an orthogonal region with its own current state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// Name.
    pub name: Arc<str>,
    /// Initial state.
    pub initial: StateId,
    /// Transitions that apply in any state of the track, after the state's own.
    pub any: Vec<TransitionId>,
}

/// A state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Name (unique in the pathway).
    pub name: Arc<str>,
    /// The track it belongs to.
    pub track: TrackId,
    /// Whether the track is done when here.
    pub terminal: bool,
    /// Description.
    pub description: String,
    /// Actions when entering.
    pub on_enter: Vec<Action>,
    /// Actions when leaving.
    pub on_exit: Vec<Action>,
    /// Outgoing transitions, in priority order.
    pub transitions: Vec<TransitionId>,
}

/// From which instant a timer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The instant the state was entered (the default).
    StateEntry,
    /// The start of the current cycle (the discharge instant in heart failure).
    CycleStart,
    /// The enrolment instant.
    Enrolment,
    /// A timestamp variable; state entry while it is unset.
    Var(u16),
    /// The triggering event's clinical time.
    Now,
}

/// What makes a transition fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    /// An event of this type; `filter` narrows task/handoff/alert events to one code
    /// and `timer.fired` to one named timer.
    Event {
        /// Event type.
        on: EventType,
        /// Code or timer name.
        filter: Option<String>,
        /// Whether results that are not final/corrected/amended may trigger it.
        any_status: bool,
    },
    /// Once, a duration after an anchor.
    After {
        /// How long.
        after: ClinicalDuration,
        /// From when.
        from: Anchor,
    },
    /// Repeatedly, every duration after an anchor, while in the state.
    Every {
        /// Interval.
        every: ClinicalDuration,
        /// First occurrence counts from here.
        from: Anchor,
        /// At most this many occurrences per state entry.
        times: Option<u32>,
    },
    /// Eventless: checked after every event while in the state.
    Always,
}

/// A transition (a rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Stable rule id: `<state>/<id>` or `<state>/on[<n>]`.
    pub rule: std::sync::Arc<str>,
    /// Where in the pathway file it was written (`file:line:col`).
    pub location: String,
    /// Its track.
    pub track: TrackId,
    /// Source state; `None` for a track-wide (`any state`) transition.
    pub from: Option<StateId>,
    /// What fires it.
    pub trigger: Trigger,
    /// Condition.
    pub guard: Option<Guard>,
    /// Target; `None` for an internal transition (actions only, no state change).
    pub target: Option<StateId>,
    /// Actions, run between leaving and entering.
    pub actions: Vec<Action>,
}

/// Task priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Routine.
    Routine,
    /// Sooner than routine.
    Urgent,
    /// As soon as possible.
    Asap,
    /// Immediately.
    Stat,
}

/// Alert severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Low,
    /// Needs attention today.
    Medium,
    /// Needs attention now.
    High,
    /// Life-threatening: call now.
    Critical,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Done.
    Completed,
    /// Cancelled because not needed (counts as success).
    NotNeeded,
    /// Cancelled because it could not be done (counts as failure).
    CouldNotBeDone,
}

/// One step of an escalation ladder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationStep {
    /// How long after the due time.
    pub after_due: ClinicalDuration,
    /// Who is told.
    pub role: Arc<str>,
    /// Priority of the escalation.
    pub priority: Priority,
}

/// A task definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    /// Code (its key in the file).
    pub code: Arc<str>,
    /// Who does it.
    pub role: Arc<str>,
    /// Short title (no patient data).
    pub title: Arc<str>,
    /// Due after …
    pub due: ClinicalDuration,
    /// … counted from.
    pub due_from: Anchor,
    /// Priority.
    pub priority: Priority,
    /// Reminders, before the due time.
    pub reminders: Vec<ClinicalDuration>,
    /// Escalation ladder, after the due time.
    pub escalation: Vec<EscalationStep>,
    /// `once_per_cycle`: done in the current cycle ([`done_mask`] of
    /// [`crate::state::InstanceState::done`]), a `task:` action for it does nothing.
    /// False: asked for whenever an action says so.
    #[serde(default)]
    pub once_per_cycle: bool,
}

/// The bit of [`crate::state::InstanceState::done`] kept for the task at this position
/// among its pathway's tasks: the first 64 have one (the compiler refuses
/// `once_per_cycle` on a later one).
pub fn done_mask(task: usize) -> Option<u64> {
    (task < 64).then(|| 1 << task)
}

/// A piece of a message template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// An expression, rendered with its value.
    Expr(Expr),
}

/// An alert definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertDef {
    /// Code.
    pub code: String,
    /// Severity.
    pub severity: Severity,
    /// Who must see it.
    pub role: String,
    /// Message template; holds no patient identity (checked at compile time).
    pub message: Vec<TemplatePart>,
    /// Acknowledge within, else escalate.
    pub acknowledge_within: Option<ClinicalDuration>,
    /// Escalate to.
    pub escalate_to: Option<String>,
}

/// A handoff definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoffDef {
    /// Code.
    pub code: String,
    /// Giving party (role).
    pub from: String,
    /// Receiving party (role).
    pub to: String,
    /// Title.
    pub title: String,
    /// Must be accepted within.
    pub accept_within: ClinicalDuration,
    /// Escalated to when not accepted in time.
    pub escalate_to: String,
}

/// An action: what a transition or a state entry asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Create a task (optionally with a due time other than the definition's).
    RequestTask {
        /// The definition.
        task: TaskDefId,
        /// Override of the due duration and anchor.
        due: Option<(ClinicalDuration, Anchor)>,
    },
    /// Mark open tasks with this code completed (a result or visit did the work).
    CompleteTask(TaskDefId),
    /// Cancel open tasks (one code, or all) with an outcome.
    CancelTasks {
        /// Which code; `None` for every open task.
        task: Option<TaskDefId>,
        /// With which outcome.
        outcome: TaskOutcome,
    },
    /// Raise an alert.
    RaiseAlert(AlertDefId),
    /// Request a handoff.
    RequestHandoff(HandoffDefId),
    /// Set a variable.
    SetVar {
        /// Variable index.
        var: u16,
        /// Value.
        value: Expr,
    },
    /// Set a parameter for this patient.
    SetParam {
        /// Parameter index.
        param: u16,
        /// Value.
        value: Expr,
    },
    /// Schedule (or reschedule) a named timer.
    ScheduleTimer {
        /// Timer.
        timer: TimerDefId,
        /// After.
        after: ClinicalDuration,
        /// From.
        from: Anchor,
    },
    /// Cancel a named timer.
    CancelTimer(TimerDefId),
    /// Close the instance.
    Close {
        /// Why.
        reason: String,
    },
}

/// A compiled pathway: immutable, shared by all its instances.
#[derive(Clone, Debug)]
pub struct CompiledPathway {
    /// Pathway id (`heart-failure`).
    pub id: String,
    /// Version (instances stay pinned to it).
    pub version: u32,
    /// Title.
    pub title: String,
    /// The file it was compiled from.
    pub source: String,
    /// Enrolment rule.
    pub enrolment: Enrolment,
    /// Closing rules.
    pub close_rules: Vec<CloseRule>,
    /// Parameters.
    pub params: Vec<VarDecl>,
    /// Variables.
    pub vars: Vec<VarDecl>,
    /// Series.
    pub series: Vec<SeriesDecl>,
    /// Tracks.
    pub tracks: Vec<Track>,
    /// States.
    pub states: Vec<State>,
    /// Transitions.
    pub transitions: Vec<Transition>,
    /// Tasks.
    pub tasks: Vec<TaskDef>,
    /// Alerts.
    pub alerts: Vec<AlertDef>,
    /// Handoffs.
    pub handoffs: Vec<HandoffDef>,
    /// Named timers.
    pub timers: Vec<String>,
    /// Series names (for messages).
    pub series_names: Vec<String>,
    graph: DiGraph<StateId, TransitionId>,
    nodes: Vec<NodeIndex>,
    /// Per transition: the observation codes its guard requires (a conjunct
    /// `event.code in [...]` or `event.code == "..."`), so other results skip the guard.
    code_prefilter: Vec<Option<(Vec<String>, bool)>>,
    /// Per state: whether it (or its track's `any` list) has eventless transitions.
    eventless: Vec<bool>,
    /// Closing reasons that mean the patient opted out: those of the closing rules on
    /// `consent.withdrawn`, and of `close` actions in transitions on `consent.withdrawn`.
    opt_out_reasons: Vec<String>,
    /// What every instance starts with and many keep unchanged, held once here and
    /// shared by the instances (see [`Shared`]).
    shared: Shared,
}

/// The parts of an instance's state that a pathway can hand to each of its instances
/// instead of each holding a copy: the default parameters, variables and empty series
/// (copied by an instance only when it changes them), and the names its tasks, alerts
/// and handoffs carry (codes and roles, interned).
#[derive(Clone, Debug)]
struct Shared {
    params: Arc<[Scalar]>,
    vars: Arc<[Option<Scalar>]>,
    series: Arc<[crate::state::Series]>,
    /// No open alerts or handoffs (what most instances have).
    no_items: Arc<crate::sorted::SortedMap<uuid::Uuid, crate::state::OpenItem>>,
    /// The pathway id and the codes and roles of its tasks, alerts and handoffs; sorted,
    /// unique.
    names: crate::tasks::Names,
}

/// An edge of the state graph, for rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Source state name.
    pub from: String,
    /// Target state name.
    pub to: String,
    /// Transition rule id.
    pub rule: String,
    /// Short label (trigger and guard).
    pub label: String,
    /// A track-wide transition, drawn once from "any state" of the track.
    pub any: bool,
    /// An internal transition (no `goto`): it runs its actions and stays, drawn as a loop
    /// on its state; its label ends with what it does (`every 1mo, 6 times / task nurse-call`).
    pub internal: bool,
}

/// The parts of a compiled pathway, handed over by the compiler.
#[derive(Clone, Debug)]
pub struct PathwayParts {
    /// See [`CompiledPathway::id`].
    pub id: String,
    /// See [`CompiledPathway::version`].
    pub version: u32,
    /// See [`CompiledPathway::title`].
    pub title: String,
    /// See [`CompiledPathway::source`].
    pub source: String,
    /// See [`CompiledPathway::enrolment`].
    pub enrolment: Enrolment,
    /// See [`CompiledPathway::close_rules`].
    pub close_rules: Vec<CloseRule>,
    /// See [`CompiledPathway::params`].
    pub params: Vec<VarDecl>,
    /// See [`CompiledPathway::vars`].
    pub vars: Vec<VarDecl>,
    /// See [`CompiledPathway::series`].
    pub series: Vec<SeriesDecl>,
    /// See [`CompiledPathway::tracks`].
    pub tracks: Vec<Track>,
    /// See [`CompiledPathway::states`].
    pub states: Vec<State>,
    /// See [`CompiledPathway::transitions`].
    pub transitions: Vec<Transition>,
    /// See [`CompiledPathway::tasks`].
    pub tasks: Vec<TaskDef>,
    /// See [`CompiledPathway::alerts`].
    pub alerts: Vec<AlertDef>,
    /// See [`CompiledPathway::handoffs`].
    pub handoffs: Vec<HandoffDef>,
    /// See [`CompiledPathway::timers`].
    pub timers: Vec<String>,
}

impl CompiledPathway {
    /// Assemble a compiled pathway and build its graph. Indices must be valid (the
    /// compiler guarantees it).
    pub fn from_parts(p: PathwayParts) -> CompiledPathway {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..p.states.len())
            .map(|i| graph.add_node(StateId(i as u16)))
            .collect();
        for (ti, t) in p.transitions.iter().enumerate() {
            let Some(target) = t.target else { continue };
            let sources: Vec<usize> = match t.from {
                Some(s) => vec![s.index()],
                None => p
                    .states
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.track == t.track && !s.terminal)
                    .map(|(i, _)| i)
                    .collect(),
            };
            for s in sources {
                graph.add_edge(nodes[s], nodes[target.index()], TransitionId(ti as u16));
            }
        }
        let series_names = p.series.iter().map(|s| s.name.to_string()).collect();
        let code_prefilter = p.transitions.iter().map(required_codes).collect();
        let is_always = |t: &TransitionId| p.transitions[t.index()].trigger == Trigger::Always;
        let eventless = p
            .states
            .iter()
            .map(|s| {
                s.transitions.iter().any(is_always)
                    || p.tracks
                        .get(s.track.index())
                        .is_some_and(|t| t.any.iter().any(is_always))
            })
            .collect();
        let mut opt_out_reasons: Vec<String> = p
            .close_rules
            .iter()
            .filter(|c| c.on == EventType::ConsentWithdrawn)
            .map(|c| c.reason.clone())
            .collect();
        for t in &p.transitions {
            if let Trigger::Event {
                on: EventType::ConsentWithdrawn,
                ..
            } = t.trigger
            {
                for a in &t.actions {
                    if let Action::Close { reason } = a {
                        opt_out_reasons.push(reason.clone());
                    }
                }
            }
        }
        opt_out_reasons.sort();
        opt_out_reasons.dedup();
        let mut names: Vec<Arc<str>> = vec![Arc::from(p.id.as_str())];
        for t in &p.tasks {
            names.extend([t.code.clone(), t.role.clone()]);
        }
        // What an open alert or handoff holds: its code and the role it waits on.
        for a in &p.alerts {
            names.extend([a.code.as_str(), a.role.as_str()].map(Arc::from));
        }
        for h in &p.handoffs {
            names.extend([h.code.as_str(), h.to.as_str()].map(Arc::from));
        }
        names.sort();
        names.dedup();
        let shared = Shared {
            params: p
                .params
                .iter()
                .map(|p| p.default.clone().unwrap_or(Scalar::Bool(false)))
                .collect(),
            vars: p.vars.iter().map(|v| v.default.clone()).collect(),
            series: vec![crate::state::Series::default(); p.series.len()].into(),
            no_items: Arc::default(),
            names: names.into(),
        };
        CompiledPathway {
            id: p.id,
            version: p.version,
            title: p.title,
            source: p.source,
            enrolment: p.enrolment,
            close_rules: p.close_rules,
            params: p.params,
            vars: p.vars,
            series: p.series,
            tracks: p.tracks,
            states: p.states,
            transitions: p.transitions,
            tasks: p.tasks,
            alerts: p.alerts,
            handoffs: p.handoffs,
            timers: p.timers,
            series_names,
            graph,
            nodes,
            code_prefilter,
            eventless,
            opt_out_reasons,
            shared,
        }
    }

    /// The parameter values an instance starts with (shared: an instance copies them
    /// only to change one).
    pub fn default_params(&self) -> &Arc<[Scalar]> {
        &self.shared.params
    }

    /// The variable values an instance starts with (shared, as the parameters).
    pub fn default_vars(&self) -> &Arc<[Option<Scalar>]> {
        &self.shared.vars
    }

    /// One empty series per declared series (shared until the first sample).
    pub fn empty_series(&self) -> &Arc<[crate::state::Series]> {
        &self.shared.series
    }

    /// An empty map of alerts or handoffs (shared by the instances that have none).
    pub fn no_items(&self) -> &Arc<crate::sorted::SortedMap<uuid::Uuid, crate::state::OpenItem>> {
        &self.shared.no_items
    }

    /// This pathway's copy of its id or of a task, alert or handoff code or role, if it
    /// has one:
    /// instances hold it instead of a string of their own.
    pub fn name(&self, name: &str) -> Option<&Arc<str>> {
        let i = self
            .shared
            .names
            .binary_search_by(|n| (**n).cmp(name))
            .ok()?;
        self.shared.names.get(i)
    }

    /// Every name [`CompiledPathway::name`] knows, sorted (open tasks hold theirs as
    /// positions in it: [`crate::tasks::Tasks`]).
    pub fn names(&self) -> &crate::tasks::Names {
        &self.shared.names
    }

    /// [`done_mask`] of the task with this code.
    pub fn task_mask(&self, code: &str) -> Option<u64> {
        done_mask(self.tasks.iter().position(|t| *t.code == *code)?)
    }

    /// The tasks whose bits `done` holds ([`crate::state::InstanceState::done`]: done in
    /// the cycle), in the file's order.
    pub fn done_tasks(&self, done: u64) -> impl Iterator<Item = &TaskDef> {
        self.tasks
            .iter()
            .enumerate()
            .filter(move |(i, _)| done_mask(*i).is_some_and(|m| done & m != 0))
            .map(|(_, t)| t)
    }

    /// [`CompiledPathway::name`], else a new string.
    pub fn intern(&self, name: &str) -> Arc<str> {
        self.name(name).cloned().unwrap_or_else(|| Arc::from(name))
    }

    /// Whether an instance closed with this reason was closed by the patient's opt-out
    /// (a closing rule, or a `close` action, on `consent.withdrawn`).
    pub fn is_opt_out_reason(&self, reason: &str) -> bool {
        self.opt_out_reasons.iter().any(|r| r == reason)
    }

    /// Whether `state` is an instance of this pathway closed by the patient's opt-out and
    /// not lifted since: the patient must not be enrolled in this pathway again until a
    /// `consent.given` for it (or `*`) arrives.
    pub fn refused_by(&self, state: &crate::state::InstanceState) -> bool {
        *state.pathway_id == *self.id
            && matches!(&state.status, crate::state::Status::Closed { reason } if self.is_opt_out_reason(reason))
    }

    /// Whether `event` is a consent to this pathway (`consent.given` with scope this
    /// pathway's id or `*`): it lifts an earlier opt-out.
    pub fn is_consent(&self, event: &crate::events::Event) -> bool {
        matches!(&event.data, crate::events::EventData::ConsentGiven(c) if c.scope == "*" || c.scope == self.id)
    }

    /// Whether `event` refers the patient to this pathway (`patient.referred` naming it):
    /// it enrols whatever the enrolment rule says.
    pub fn is_referral(&self, event: &crate::events::Event) -> bool {
        matches!(&event.data, crate::events::EventData::PatientReferred(r) if r.pathway == *self.id)
    }

    /// The observation codes a transition's guard requires, if it says so in a conjunct,
    /// and whether that conjunct is the whole guard (then a matching code makes it true).
    pub fn required_codes(&self, id: TransitionId) -> Option<(&[String], bool)> {
        self.code_prefilter
            .get(id.index())?
            .as_ref()
            .map(|(codes, whole)| (codes.as_slice(), *whole))
    }

    /// Whether a state (or its track's `any` list) has eventless transitions.
    pub fn has_eventless(&self, id: StateId) -> bool {
        self.eventless.get(id.index()).copied().unwrap_or(false)
    }

    /// A short human label for a transition's trigger and guard, naming variable anchors.
    pub fn label(&self, t: &Transition) -> String {
        let var_anchor = |from: &Anchor| match from {
            Anchor::Var(v) => self.vars.get(usize::from(*v)).map(|d| d.name.as_str()),
            _ => None,
        };
        match &t.trigger {
            Trigger::After { after, from } if var_anchor(from).is_some() => {
                let base = format!(
                    "{after} after vars.{}",
                    var_anchor(from).unwrap_or_default()
                );
                match &t.guard {
                    Some(g) => format!("{base} if {}", g.source),
                    None => base,
                }
            }
            _ => trigger_label(t),
        }
    }

    /// The label of an internal transition: its trigger, `(if …)` when guarded, then what
    /// it does (`every 1mo, 6 times / task nurse-call`; `set` actions only when there is
    /// nothing else).
    pub fn internal_label(&self, t: &Transition) -> String {
        let unguarded = Transition {
            guard: None,
            ..t.clone()
        };
        let trigger = self.label(&unguarded);
        let guarded = if t.guard.is_some() { " (if …)" } else { "" };
        // `set` actions are bookkeeping: shown only when the transition does nothing else.
        let visible: Vec<Action> = t
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::SetVar { .. } | Action::SetParam { .. }))
            .cloned()
            .collect();
        let actions = if visible.is_empty() {
            self.actions_label(&t.actions)
        } else {
            self.actions_label(&visible)
        };
        if actions.is_empty() {
            format!("{trigger}{guarded}")
        } else {
            format!("{trigger}{guarded} / {actions}")
        }
    }

    /// A short summary of actions: `task nurse-call, alert spo2-low, set spo2_alert_at`.
    pub fn actions_label(&self, actions: &[Action]) -> String {
        let task = |t: &TaskDefId| {
            self.tasks
                .get(t.index())
                .map_or(String::new(), |d| d.code.to_string())
        };
        actions
            .iter()
            .map(|a| match a {
                Action::RequestTask { task: t, .. } => format!("task {}", task(t)),
                Action::CompleteTask(t) => format!("complete {}", task(t)),
                Action::CancelTasks { task: t, .. } => {
                    format!("cancel {}", t.as_ref().map_or("*".to_string(), task))
                }
                Action::RaiseAlert(id) => format!(
                    "alert {}",
                    self.alerts.get(id.index()).map_or("", |d| d.code.as_str())
                ),
                Action::RequestHandoff(id) => format!(
                    "handoff {}",
                    self.handoffs
                        .get(id.index())
                        .map_or("", |d| d.code.as_str())
                ),
                Action::SetVar { var, .. } => format!(
                    "set {}",
                    self.vars
                        .get(usize::from(*var))
                        .map_or("", |d| d.name.as_str())
                ),
                Action::SetParam { param, .. } => format!(
                    "set {}",
                    self.params
                        .get(usize::from(*param))
                        .map_or("", |d| d.name.as_str())
                ),
                Action::ScheduleTimer { timer, .. } => format!(
                    "schedule {}",
                    self.timers.get(timer.index()).map_or("", String::as_str)
                ),
                Action::CancelTimer(timer) => format!(
                    "cancel timer {}",
                    self.timers.get(timer.index()).map_or("", String::as_str)
                ),
                Action::Close { reason } => format!("close {reason}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A state's id by name.
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.states
            .iter()
            .position(|s| &*s.name == name)
            .map(|i| StateId(i as u16))
    }

    /// A track's id by name.
    pub fn track_id(&self, name: &str) -> Option<TrackId> {
        self.tracks
            .iter()
            .position(|t| &*t.name == name)
            .map(|i| TrackId(i as u16))
    }

    /// A state.
    pub fn state(&self, id: StateId) -> &State {
        &self.states[id.index()]
    }

    /// A transition.
    pub fn transition(&self, id: TransitionId) -> &Transition {
        &self.transitions[id.index()]
    }

    /// A task definition by code.
    pub fn task_by_code(&self, code: &str) -> Option<&TaskDef> {
        self.tasks.iter().find(|t| &*t.code == code)
    }

    /// States reachable from the track's initial state, by name, in declaration order.
    pub fn reachable_states(&self, track: TrackId) -> Vec<&str> {
        let start = self.nodes[self.tracks[track.index()].initial.index()];
        let mut seen = vec![false; self.states.len()];
        let mut dfs = petgraph::visit::Dfs::new(&self.graph, start);
        while let Some(n) = dfs.next(&self.graph) {
            seen[self.graph[n].index()] = true;
        }
        self.states
            .iter()
            .enumerate()
            .filter(|(i, s)| seen[*i] && s.track == track)
            .map(|(_, s)| &*s.name)
            .collect()
    }

    /// Whether the graph of eventless transitions has a cycle; returns the states on it.
    pub fn eventless_cycle(&self) -> Option<Vec<&str>> {
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let nodes: Vec<_> = (0..self.states.len()).map(|i| g.add_node(i)).collect();
        for e in self.graph.edge_indices() {
            let t = &self.transitions[self.graph[e].index()];
            if t.trigger == Trigger::Always
                && let Some((a, b)) = self.graph.edge_endpoints(e)
            {
                g.add_edge(
                    nodes[self.graph[a].index()],
                    nodes[self.graph[b].index()],
                    (),
                );
            }
        }
        petgraph::algo::kosaraju_scc(&g)
            .into_iter()
            .find(|scc| scc.len() > 1 || scc.iter().any(|n| g.contains_edge(*n, *n)))
            .map(|scc| {
                let mut names: Vec<&str> = scc.iter().map(|n| &*self.states[g[*n]].name).collect();
                names.sort_unstable();
                names
            })
    }

    /// Every edge of the state graph, in declaration order of transitions. A track-wide
    /// (`any`) transition appears once, with `from` = the track name and `any` set.
    pub fn edges(&self) -> Vec<Edge> {
        let mut edges: Vec<(usize, usize, Edge)> = self
            .graph
            .edge_indices()
            .filter(|e| self.transitions[self.graph[*e].index()].from.is_some())
            .filter_map(|e| {
                let (a, b) = self.graph.edge_endpoints(e)?;
                let ti = self.graph[e];
                let t = &self.transitions[ti.index()];
                let from = self.graph[a];
                Some((
                    ti.index(),
                    from.index(),
                    Edge {
                        from: self.states[from.index()].name.to_string(),
                        to: self.states[self.graph[b].index()].name.to_string(),
                        rule: t.rule.to_string(),
                        label: self.label(t),
                        any: false,
                        internal: false,
                    },
                ))
            })
            .collect();
        for (ti, t) in self.transitions.iter().enumerate() {
            let track = self.tracks[t.track.index()].name.to_string();
            match (t.from, t.target) {
                (None, Some(target)) => edges.push((
                    ti,
                    0,
                    Edge {
                        from: track,
                        to: self.states[target.index()].name.to_string(),
                        rule: t.rule.to_string(),
                        label: self.label(t),
                        any: true,
                        internal: false,
                    },
                )),
                (from, None) => {
                    let at = from.map_or(track, |s| self.states[s.index()].name.to_string());
                    edges.push((
                        ti,
                        from.map_or(0, StateId::index),
                        Edge {
                            from: at.clone(),
                            to: at,
                            rule: t.rule.to_string(),
                            label: self.internal_label(t),
                            any: from.is_none(),
                            internal: true,
                        },
                    ));
                }
                (Some(_), Some(_)) => {}
            }
        }
        edges.sort_by_key(|(t, s, _)| (*t, *s));
        edges.into_iter().map(|(_, _, e)| e).collect()
    }
}

/// Codes required by a guard on `observation.recorded`: the first conjunct of the form
/// `event.code in ["a", "b"]` or `event.code == "a"`. When the event's code is not among
/// them the guard is false whatever else it says (a false conjunct wins in CEL).
fn required_codes(t: &Transition) -> Option<(Vec<String>, bool)> {
    use crate::expr::CmpOp;
    use crate::value::Scalar;
    let Trigger::Event {
        on: EventType::ObservationRecorded,
        ..
    } = t.trigger
    else {
        return None;
    };
    let code = EventType::ObservationRecorded.field_index("code")?;
    fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
        match e {
            Expr::And(a, b) => {
                conjuncts(a, out);
                conjuncts(b, out);
            }
            other => out.push(other),
        }
    }
    let mut parts = Vec::new();
    conjuncts(&t.guard.as_ref()?.expr, &mut parts);
    let whole = parts.len() == 1;
    let codes = parts.into_iter().find_map(|e| match e {
        Expr::In(a, list) if **a == Expr::EventField(code) => match list.as_ref() {
            Expr::List(items) => items
                .iter()
                .map(|i| match i {
                    Expr::Lit(Scalar::Str(s)) => Some(String::clone(s)),
                    _ => None,
                })
                .collect(),
            _ => None,
        },
        Expr::Cmp(CmpOp::Eq, a, b) => match (a.as_ref(), b.as_ref()) {
            (Expr::EventField(f), Expr::Lit(Scalar::Str(s)))
            | (Expr::Lit(Scalar::Str(s)), Expr::EventField(f))
                if *f == code =>
            {
                Some(vec![String::clone(s)])
            }
            _ => None,
        },
        _ => None,
    })?;
    Some((codes, whole))
}

/// A short human label for a transition's trigger and guard.
pub fn trigger_label(t: &Transition) -> String {
    let trig = match &t.trigger {
        Trigger::Event { on, filter, .. } => match filter {
            Some(f) => format!("{on} [{f}]"),
            None => on.to_string(),
        },
        Trigger::After { after, from } => match from {
            Anchor::StateEntry => format!("after {after}"),
            Anchor::CycleStart => format!("{after} after cycle start"),
            Anchor::Enrolment => format!("{after} after enrolment"),
            Anchor::Var(_) | Anchor::Now => format!("after {after}"),
        },
        Trigger::Every { every, times, .. } => match times {
            Some(n) => format!("every {every}, {n} times"),
            None => format!("every {every}"),
        },
        Trigger::Always => String::new(),
    };
    match &t.guard {
        Some(g) if trig.is_empty() => format!("if {}", g.source),
        Some(g) => format!("{trig} if {}", g.source),
        None => trig,
    }
}
