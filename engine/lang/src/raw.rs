//! The raw form of a pathway file: what YAML deserialises into, with spans.
//!
//! Nothing here is checked beyond its shape; [`crate::compile`] validates and resolves it.
//! These types also generate the published JSON Schema (`parcours schema`).

use indexmap::IndexMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::span::Sp;

/// A care pathway definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "parcours pathway definition")]
pub struct RawPathway {
    /// The pathway id: lower-case letters, digits and dashes (`heart-failure`).
    #[schemars(extend("pattern" = "^[a-z0-9-]+$"))]
    pub pathway: Sp<String>,
    /// The version: a whole number (1 or more), raised at each published change. Running
    /// patients stay on the version that enrolled them.
    #[schemars(range(min = 1))]
    pub version: Sp<u32>,
    /// A human title.
    pub title: Sp<String>,
    /// What the pathway is for, its sources, who signed it off.
    #[serde(default)]
    pub description: Option<String>,
    /// Extra roles used by this pathway beyond the built-in ones (gp, nurse, cardiologist,
    /// pharmacist, coordinator, coordinator_lead, ...).
    #[serde(default)]
    pub roles: Vec<Sp<String>>,
    /// Which event enrols a patient.
    pub enrolment: RawEnrolment,
    /// Events that close the instance (death, opt-out, transfer).
    #[serde(default)]
    pub close: Vec<Sp<RawClose>>,
    /// Parameters: thresholds and intervals with defaults, overridable per patient.
    #[serde(default)]
    pub parameters: IndexMap<String, Sp<RawVar>>,
    /// Variables the instance keeps (set by `set` actions).
    #[serde(default)]
    pub variables: IndexMap<String, Sp<RawVar>>,
    /// Measurement series kept for windowed guards (`series.weight.rise_over(duration("3d"))`).
    #[serde(default)]
    pub series: IndexMap<String, Sp<RawSeries>>,
    /// Named timers, scheduled with `schedule` and reacted to with `on: timer.fired` + `timer:`.
    #[serde(default)]
    pub timers: Vec<Sp<String>>,
    /// Task definitions, referenced by id from actions.
    #[serde(default)]
    pub tasks: IndexMap<String, Sp<RawTask>>,
    /// Alert definitions.
    #[serde(default)]
    pub alerts: IndexMap<String, Sp<RawAlert>>,
    /// Handoff definitions.
    #[serde(default)]
    pub handoffs: IndexMap<String, Sp<RawHandoff>>,
    /// Tracks: parallel regions, each with its own current state.
    pub tracks: Sp<IndexMap<String, Sp<RawTrack>>>,
}

/// The enrolment rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnrolment {
    /// The event type that enrols (`encounter.discharged`).
    pub on: Sp<String>,
    /// Eligibility guard (CEL), e.g. `event.diagnoses.exists(d, d.startsWith("I50"))`.
    #[serde(default)]
    pub when: Option<Sp<String>>,
    /// What a new enrolment event does to an active instance: `restart` (new cycle) or
    /// `ignore` (default: `ignore`).
    #[serde(default)]
    #[schemars(extend("enum" = ["restart", "ignore"]))]
    pub on_repeat: Option<Sp<String>>,
    /// What identifies an episode (CEL, a string), e.g. `event.encounter_id`: an enrolment
    /// event with the same key as the current cycle's (a resent or updated discharge) does
    /// not start a new cycle.
    #[serde(default)]
    pub episode_key: Option<Sp<String>>,
    /// How long before the enrolment a consent to the pathway still counts for the new
    /// instance (a duration, default `30d`; `0d`: a consent given before the enrolment
    /// does not count).
    #[serde(default)]
    pub consent_window: Option<Sp<String>>,
}

/// A closing rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClose {
    /// The event type (`patient.deceased`).
    pub on: Sp<String>,
    /// Optional guard.
    #[serde(default)]
    pub when: Option<Sp<String>>,
    /// Why it closes: `deceased`, `opted_out`, `transferred`, ...
    pub reason: Sp<String>,
}

/// A parameter or variable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVar {
    /// `bool`, `int`, `number`, `string`, `timestamp` or `duration`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["bool", "int", "number", "string", "timestamp", "duration"]))]
    pub ty: Sp<String>,
    /// Default value (required for parameters).
    #[serde(default)]
    pub default: Option<Sp<serde_json::Value>>,
    /// What it means, its unit, its source.
    #[serde(default)]
    pub description: Option<String>,
}

/// A measurement series.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSeries {
    /// LOINC codes feeding it.
    pub codes: Vec<Sp<String>>,
    /// The unit samples are converted to (UCUM: `kg`, `mmol/L`, ...).
    pub unit: Sp<String>,
    /// How long samples are kept (default `90d`).
    #[serde(default)]
    pub keep: Option<Sp<String>>,
    /// A result that arrives without a unit: `ignore` (default: not added, recorded as an
    /// ignored input, since parcours never guesses a unit) or `assume` (taken as already in
    /// `unit`: only for a feed known to send that unit, such as a home oximeter).
    #[serde(default)]
    #[schemars(extend("enum" = ["ignore", "assume"]))]
    pub unitless: Option<Sp<String>>,
}

/// A task definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// Who does it (`gp`, `nurse`, `coordinator`, ...).
    pub role: Sp<String>,
    /// Short title shown in worklists; never patient data.
    pub title: Sp<String>,
    /// Due after this duration (`7d`, `2w`, `3mo`, `5wd` for working days).
    pub due: Sp<String>,
    /// Counted from: `state_entry` (default: when the task is created), `cycle_start`
    /// (the discharge instant), `enrolment`, or `vars.<timestamp variable>`.
    #[serde(default)]
    pub from: Option<Sp<String>>,
    /// `routine` (default), `urgent`, `asap`, `stat`.
    #[serde(default)]
    #[schemars(extend("enum" = ["routine", "urgent", "asap", "stat"]))]
    pub priority: Option<Sp<String>>,
    /// Reminders before the due time (`[2d]`).
    #[serde(default)]
    pub reminders: Vec<Sp<String>>,
    /// Escalation ladder after the due time.
    #[serde(default)]
    pub escalation: Vec<Sp<RawEscalation>>,
    /// Asked for at most until it is done in a cycle: once the care team answered it
    /// completed or not needed (or a `complete_task` found it done), a `task:` action for
    /// it does nothing until the next cycle — a plan resumed after a stay in hospital
    /// does not ask again for a visit that took place.
    #[serde(default)]
    pub once_per_cycle: bool,
}

/// One escalation step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEscalation {
    /// How long after the due time (`0d` = at the due time).
    pub after_due: Sp<String>,
    /// Who is told.
    pub role: Sp<String>,
    /// Priority (default `urgent`).
    #[serde(default)]
    #[schemars(extend("enum" = ["routine", "urgent", "asap", "stat"]))]
    pub priority: Option<Sp<String>>,
}

/// An alert definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    /// `low`, `medium`, `high`, `critical`.
    #[schemars(extend("enum" = ["low", "medium", "high", "critical"]))]
    pub severity: Sp<String>,
    /// Who must see it.
    pub role: Sp<String>,
    /// Message; `{{ expression }}` inserts a value (numbers, codes, durations; never free text).
    pub message: Sp<String>,
    /// Must be acknowledged within this duration, else it escalates.
    #[serde(default)]
    pub acknowledge_within: Option<Sp<String>>,
    /// Who is told when it is not acknowledged in time (default: the same role).
    #[serde(default)]
    pub escalate_to: Option<Sp<String>>,
}

/// A handoff definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandoff {
    /// Giving party (role).
    pub from: Sp<String>,
    /// Receiving party (role).
    pub to: Sp<String>,
    /// Title.
    pub title: Sp<String>,
    /// Must be accepted within.
    pub accept_within: Sp<String>,
    /// Who is told when it is not accepted in time.
    pub escalate_to: Sp<String>,
}

/// A track (parallel region).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrack {
    /// The state the track starts in.
    pub initial: Sp<String>,
    /// Transitions that apply in any non-terminal state of the track, after the state's own.
    #[serde(default)]
    pub any: Vec<Sp<RawTransition>>,
    /// The states. Names are unique across the whole pathway.
    pub states: IndexMap<String, Sp<RawState>>,
}

/// A state.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// What the state means.
    #[serde(default)]
    pub description: Option<String>,
    /// A terminal state: the track is done when it gets here.
    #[serde(default)]
    pub terminal: bool,
    /// Actions when the state is entered.
    #[serde(default)]
    pub on_enter: Vec<Sp<RawAction>>,
    /// Actions when the state is left.
    #[serde(default)]
    pub on_exit: Vec<Sp<RawAction>>,
    /// Outgoing transitions, in priority order: the first that matches wins.
    #[serde(default)]
    pub transitions: Vec<Sp<RawTransition>>,
}

/// A transition. Exactly one trigger: `on` (an event), `after` (a delay), `every`
/// (recurring), or none (eventless: taken as soon as `when` holds).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTransition {
    /// A stable name for the rule (shown in "why" explanations).
    #[serde(default)]
    pub id: Option<Sp<String>>,
    /// Event type that triggers it.
    #[serde(default)]
    pub on: Option<Sp<String>>,
    /// For `task.*` events: the task id it waits for.
    #[serde(default)]
    pub task: Option<Sp<String>>,
    /// For `handoff.*` events: the handoff id.
    #[serde(default)]
    pub handoff: Option<Sp<String>>,
    /// For `alert.acknowledged`: the alert id.
    #[serde(default)]
    pub alert: Option<Sp<String>>,
    /// For `timer.fired`: the named timer.
    #[serde(default)]
    pub timer: Option<Sp<String>>,
    /// Also react to results that are not final/corrected/amended (default false).
    #[serde(default)]
    pub any_status: bool,
    /// Fire once, this long after `from`.
    #[serde(default)]
    pub after: Option<Sp<String>>,
    /// Fire repeatedly at this interval while in the state.
    #[serde(default)]
    pub every: Option<Sp<String>>,
    /// For `every`: at most this many times per stay in the state.
    #[serde(default)]
    pub times: Option<Sp<u32>>,
    /// For `after`/`every`: count from `state_entry` (default), `cycle_start`,
    /// `enrolment` or `vars.<timestamp variable>`.
    #[serde(default)]
    pub from: Option<Sp<String>>,
    /// Guard (CEL).
    #[serde(default)]
    pub when: Option<Sp<String>>,
    /// Target state (same track). Omit for an internal transition that only runs actions.
    #[serde(default)]
    pub goto: Option<Sp<String>>,
    /// Actions.
    #[serde(default, rename = "do")]
    pub actions: Vec<Sp<RawAction>>,
}

/// An action. Exactly one verb (`task`, `complete_task`, `cancel_task`, `alert`, `handoff`,
/// `set`, `set_param`, `schedule`, `cancel_timer`, `close`) with its options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// Create a task (by task id).
    #[serde(default)]
    pub task: Option<Sp<String>>,
    /// Mark open tasks with this id done (a result or a visit did the work).
    #[serde(default)]
    pub complete_task: Option<Sp<String>>,
    /// Cancel open tasks with this id (`*` for all).
    #[serde(default)]
    pub cancel_task: Option<Sp<String>>,
    /// For `cancel_task`: `not_needed` (default) or `could_not_be_done`.
    #[serde(default)]
    pub outcome: Option<Sp<String>>,
    /// Raise an alert (by alert id).
    #[serde(default)]
    pub alert: Option<Sp<String>>,
    /// Request a handoff (by handoff id).
    #[serde(default)]
    pub handoff: Option<Sp<String>>,
    /// Set a variable (by name) to the value of `to`.
    #[serde(default)]
    pub set: Option<Sp<String>>,
    /// Set a parameter for this patient (by name) to the value of `to`.
    #[serde(default)]
    pub set_param: Option<Sp<String>>,
    /// For `set`/`set_param`: the value (CEL).
    #[serde(default)]
    pub to: Option<Sp<String>>,
    /// Schedule a named timer (replaces a pending one of the same name).
    #[serde(default)]
    pub schedule: Option<Sp<String>>,
    /// Cancel a named timer.
    #[serde(default)]
    pub cancel_timer: Option<Sp<String>>,
    /// For `task`: another due duration than the task's; for `schedule`: the delay.
    #[serde(default)]
    pub after: Option<Sp<String>>,
    /// For `task` and `schedule`: the anchor of `after`/due.
    #[serde(default)]
    pub from: Option<Sp<String>>,
    /// Close the instance with this reason.
    #[serde(default)]
    pub close: Option<Sp<String>>,
}
