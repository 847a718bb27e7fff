//! `decide`: the pure transition function.
//!
//! `decide(pathway, state, event)` returns the instance events the event causes. It is
//! synchronous and deterministic: time comes from the event (`occurred_at`), ids derive
//! from the triggering event id, nothing is read from the machine. Each emitted event is
//! applied to a working copy as it is produced, so later rules see earlier changes and
//! the returned state is exactly the fold of the returned events.

use std::borrow::Cow;
use std::sync::Arc;

use jiff::Timestamp;
use uuid::Uuid;

use crate::calendar::{self, ClinicalDuration};
use crate::events::{Event, EventData, EventType, data, is_actionable_status};
use crate::expr::{Env, Expr};
use crate::merge::Fate;
use crate::model::{
    Action, Anchor, CompiledPathway, Guard, Repeat, StateId, TaskOutcome, TemplatePart, TrackId,
    TransitionId, Trigger, done_mask,
};
use crate::state::{
    Change, Divergence, InstanceState, PendingTimer, Recorded, Status, TimerKind, apply,
};
use crate::units;
use crate::value::Scalar;

/// The namespace of every id parcours derives (UUID v5).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x7061_7263_6f75_7273_8000_0000_0000_0001);

/// The 128-bit base of every id derived while deciding one event for one instance:
/// XXH3-128 (a fixed, specified algorithm, so ids never change across releases) of the
/// instance id and the event id. Ids are UUID v8 carrying `base ^ n`.
pub(crate) fn derive_ids(instance_id: &str, event_id: &str) -> u128 {
    derive_base(instance_id, event_id)
}

fn derive_base(instance_id: &str, event_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x7061_7263_6f75_7273);
    h.update(instance_id.as_bytes());
    h.update(&[0]);
    h.update(event_id.as_bytes());
    h.digest128()
}

/// An id parcours gave (task, alert, handoff, timer), if `s` is one.
fn own(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

/// Bound on eventless steps after one event; the compiler rejects eventless cycles, this
/// guards against a definition that slipped through.
const MAX_EVENTLESS_STEPS: usize = 256;

/// Bound on the timers fired ahead of a `timer.fired` (those due before it); a named
/// timer that reschedules itself at the same instant cannot spin.
const MAX_CATCH_UP: usize = 1_000;

/// Where a timer stands among the timers of one instance due at the same instant: lower
/// fires first. Work-item deadlines first (task reminders, due times, escalations, then
/// alert and handoff deadlines), then named timers, then transitions that stay in their
/// state (`every`/`after` without `goto`), then transitions that leave it, each group in
/// declaration order. So an occurrence due at the instant a state is left still happens
/// in that state: a sixth monthly call due at month 6 is requested before the month-6
/// `after` moves the track on.
pub fn same_instant_rank(pathway: &CompiledPathway, kind: &TimerKind) -> (u8, u16) {
    match kind {
        TimerKind::TaskReminder { .. } => (0, 0),
        TimerKind::TaskDue { .. } => (0, 1),
        TimerKind::TaskEscalation { step, .. } => (0, 2u16.saturating_add(*step)),
        TimerKind::AlertAck { .. } => (1, 0),
        TimerKind::HandoffAccept { .. } => (1, 1),
        TimerKind::Named { timer } => (2, *timer),
        TimerKind::Transition { transition } | TimerKind::Recurring { transition, .. } => {
            let leaves = pathway
                .transitions
                .get(usize::from(*transition))
                .is_some_and(|t| t.target.is_some());
            (if leaves { 4 } else { 3 }, *transition)
        }
    }
}

/// The total order timers of one instance fire in: time, then [`same_instant_rank`], then id.
fn timer_key(
    pathway: &CompiledPathway,
    id: Uuid,
    t: &PendingTimer,
) -> (Timestamp, (u8, u16), Uuid) {
    (t.fire_at, same_instant_rank(pathway, &t.kind), id)
}

/// The first occurrence strictly after `after` on the grid `anchor + k × every` (k ≥ 1).
/// Occurrences are computed from the anchor, not chained one from the other, so a monthly
/// grid from 31 January stays on month ends (28 February, 31 March, 30 April …).
pub fn next_on_grid(anchor: Timestamp, every: ClinicalDuration, after: Timestamp) -> Timestamp {
    let at = |k: u32| calendar::add(anchor, every.times(k));
    let first = at(1);
    if first > after {
        return first;
    }
    if every.is_zero() {
        return Timestamp::MAX; // the compiler refuses `every: 0d`; never spin
    }
    // `at` never decreases with k: find the first k past `after` by doubling, then bisection.
    let (mut lo, mut hi) = (1u32, 2u32);
    while at(hi) <= after {
        if hi == u32::MAX {
            return Timestamp::MAX;
        }
        lo = hi;
        hi = hi.saturating_mul(2);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(mid) <= after {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    at(hi)
}

/// What one event did to one instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The instance events to append, in order.
    pub events: Vec<Recorded>,
}

impl Decision {
    /// The events that must be published after commit (tasks, alerts, handoffs, timers).
    pub fn effects(&self) -> impl Iterator<Item = &Recorded> {
        self.events
            .iter()
            .filter(|e| e.change.effect_kind().is_some())
    }

    /// Whether the event changed nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Why `decide` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The stored state does not fit the definition it is pinned to.
    #[error(transparent)]
    Divergence(#[from] Divergence),
    /// The state belongs to another pathway or version.
    #[error("instance is pinned to {state_pathway} v{state_version}, not {pathway} v{version}")]
    WrongPathway {
        /// The instance's pathway.
        state_pathway: String,
        /// The instance's version.
        state_version: u32,
        /// The pathway given.
        pathway: String,
        /// The version given.
        version: u32,
    },
}

/// The deterministic id of the instance a given event would enrol.
pub fn instance_id_for(pathway_id: &str, event: &Event) -> String {
    let name = format!(
        "instance|{}|{}|{}|{}",
        event.tenant, pathway_id, event.subject, event.id
    );
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The deterministic id of the `timer.fired` event for a timer (the timer service uses it,
/// so a timer fires once even if two services race).
pub fn timer_fired_event_id(timer_id: &str) -> String {
    format!("timer-fired:{timer_id}")
}

/// Whether `event` enrols a patient not (or no longer) on this pathway: it matches the
/// enrolment rule, or it is a referral to this pathway (`patient.referred`), which
/// enrols whatever the rule says. A referral to another pathway never enrols in this one,
/// even when the rule is `on: patient.referred` (a pathway entered by referral only).
pub fn enrols(pathway: &CompiledPathway, event: &Event) -> bool {
    if let EventData::PatientReferred(r) = &event.data {
        return r.pathway == pathway.id;
    }
    if event.event_type() != pathway.enrolment.on {
        return false;
    }
    let params: Vec<Scalar> = pathway
        .params
        .iter()
        .map(|p| p.default.clone().unwrap_or(Scalar::Bool(false)))
        .collect();
    let vars: Vec<Option<Scalar>> = pathway.vars.iter().map(|v| v.default.clone()).collect();
    let env = Env {
        event: Some(&event.data),
        now: event.occurred_at,
        params: &params,
        vars: &vars,
        series: &[],
        series_names: &pathway.series_names,
        cycle_start: event.occurred_at,
        enrolled_at: event.occurred_at,
        cycle: 0,
        episode: None,
        window_memo: Default::default(),
    };
    match &pathway.enrolment.guard {
        Some(g) => g.expr.eval_bool(&env).unwrap_or(false),
        None => true,
    }
}

/// Decide what `event` does to the instance in `state`.
///
/// A `Pending` state is enrolled if the event matches the enrolment rule; a closed or
/// completed instance ignores everything, except an instance closed by the patient's
/// opt-out: a `consent.given` for its pathway lifts the opt-out
/// ([`Change::OptOutLifted`]), and an enrolling event the opt-out holds back is recorded
/// as ignored (see [`crate::route::route`]).
pub fn decide(
    pathway: &CompiledPathway,
    state: &InstanceState,
    event: &Event,
) -> Result<Decision, DecideError> {
    run(pathway, Cow::Borrowed(state), event, None).map(|(decision, _)| decision)
}

/// Like [`decide`], also returning the state after the decision (the fold of the
/// decision's events onto `state`).
pub fn decide_and_apply(
    pathway: &CompiledPathway,
    state: &InstanceState,
    event: &Event,
) -> Result<(Decision, InstanceState), DecideError> {
    run(pathway, Cow::Borrowed(state), event, None).map(|(d, s)| (d, s.into_owned()))
}

/// [`decide`] on a state the caller owns, updating it in place: what a runtime that keeps
/// instances in memory calls (no copy of the state). On error the state is left as it was
/// when the error was found — part-way through — and must be reloaded from the log.
pub fn decide_in_place(
    pathway: &CompiledPathway,
    state: &mut InstanceState,
    event: &Event,
) -> Result<Decision, DecideError> {
    let owned = std::mem::take(state);
    match run(pathway, Cow::Owned(owned), event, None) {
        Ok((decision, next)) => {
            *state = next.into_owned();
            Ok(decision)
        }
        Err(e) => Err(e),
    }
}

/// Decide `event` for the instance in `state`; an identity merge's own records
/// ([`crate::merge`]) come first when `merge` says what the merge does to it.
pub(crate) fn run<'a>(
    pathway: &'a CompiledPathway,
    state: Cow<'a, InstanceState>,
    event: &'a Event,
    merge: Option<Fate>,
) -> Result<(Decision, Cow<'a, InstanceState>), DecideError> {
    if state.status != Status::Pending
        && (*state.pathway_id != *pathway.id || state.pathway_version != pathway.version)
    {
        return Err(DecideError::WrongPathway {
            state_pathway: state.pathway_id.to_string(),
            state_version: state.pathway_version,
            pathway: pathway.id.clone(),
            version: pathway.version,
        });
    }
    let status = state.status.clone();
    let mut d = Decider {
        p: pathway,
        s: state,
        base: None,
        ev: event,
        now: event.occurred_at,
        out: Vec::with_capacity(8),
        n: 0,
        rule: None,
        cause: None,
        episode_before: None,
    };
    if let Some(fate) = merge
        && status != Status::Pending
        && d.merge(fate)?
    {
        return Ok((Decision { events: d.out }, d.s));
    }
    match status {
        Status::Pending => {
            if enrols(pathway, event) {
                d.enrol()?;
                d.settle()?;
            }
        }
        Status::Active => d.process()?,
        Status::Closed { reason } if pathway.is_opt_out_reason(&reason) => d.refused(reason)?,
        Status::Completed | Status::Closed { .. } => {}
    }
    Ok((Decision { events: d.out }, d.s))
}

struct Decider<'a> {
    p: &'a CompiledPathway,
    /// The working state: borrowed until the first change (most events change nothing).
    s: Cow<'a, InstanceState>,
    /// Hash of (instance, event), computed on the first id needed.
    base: Option<u128>,
    ev: &'a Event,
    now: Timestamp,
    out: Vec<Recorded>,
    n: u32,
    rule: Option<Arc<str>>,
    /// The triggering event's id, shared by every record of the decision.
    cause: Option<Arc<str>>,
    /// The cycle's episode key as it stood when the event arrived, kept once a change of
    /// this decision moves it (`instance.episode` reads the key the event met).
    episode_before: Option<Option<Box<str>>>,
}

/// An event as seen by transitions: the inbound one, or one parcours derives
/// (a task became overdue; a named timer fired).
#[derive(Clone, Copy)]
struct Dispatch<'e> {
    ty: EventType,
    data: Option<&'e EventData>,
    filter: Option<&'e str>,
    actionable: bool,
}

impl<'a> Decider<'a> {
    fn new_id(&mut self) -> Uuid {
        // One SHA-1 per decision; each id is that hash with its sequence number mixed in,
        // so ids stay unique per (instance, event, n) and derive only from the log.
        let base = *self.base.get_or_insert_with(|| {
            self.s
                .instance_id
                .with_str(|id| derive_base(id, &self.ev.id))
        });
        let n = u128::from(self.n);
        self.n += 1;
        Uuid::new_v8((base ^ n).to_be_bytes())
    }

    fn emit(&mut self, change: Change) -> Result<(), DecideError> {
        let rec = Recorded {
            id: self.new_id(),
            cause: self
                .cause
                .get_or_insert_with(|| Arc::from(self.ev.id.as_str()))
                .clone(),
            rule: self.rule.clone(),
            at: self.now,
            change,
        };
        if self.episode_before.is_none()
            && matches!(
                rec.change,
                Change::Enrolled { .. }
                    | Change::EpisodeCancelled { .. }
                    | Change::CycleRestarted { .. }
            )
        {
            self.episode_before = Some(self.s.cycle_key.clone());
        }
        apply(self.p, self.s.to_mut(), &rec)?;
        self.out.push(rec);
        Ok(())
    }

    fn env<'s>(&'s self, data: Option<&'s EventData>) -> Env<'s> {
        Env {
            event: data,
            now: self.now,
            params: &self.s.params,
            vars: &self.s.vars,
            series: &self.s.series,
            series_names: &self.p.series_names,
            cycle_start: self.s.cycle_start.get(),
            enrolled_at: self.s.enrolled_at.get(),
            cycle: self.s.cycle,
            episode: match &self.episode_before {
                Some(before) => before.as_deref(),
                None => self.s.cycle_key.as_deref(),
            },
            window_memo: Default::default(),
        }
    }

    /// Evaluate a guard; a run-time error is recorded and counts as false.
    fn check(
        &mut self,
        guard: Option<&Guard>,
        data: Option<&EventData>,
    ) -> Result<bool, DecideError> {
        let Some(g) = guard else { return Ok(true) };
        match g.expr.eval_bool(&self.env(data)) {
            Ok(b) => Ok(b),
            // A result without a unit is an input problem, not a pathway error: it is
            // recorded as ignored (never converted on a guess) and the rule does not apply.
            Err(e @ crate::expr::EvalError::NoUnit { .. }) => {
                self.emit(Change::InputIgnored {
                    reason: format!("{e}: the rule does not apply"),
                })?;
                Ok(false)
            }
            Err(e) => {
                self.emit(Change::GuardFailed {
                    message: format!("guard `{}`: {e}", g.source),
                })?;
                Ok(false)
            }
        }
    }

    /// An event for an instance closed by the patient's opt-out: a consent to this pathway
    /// lifts the opt-out; an enrolling event is recorded as held back by it.
    fn refused(&mut self, reason: String) -> Result<(), DecideError> {
        if self.p.is_consent(self.ev) {
            let EventData::ConsentGiven(c) = &self.ev.data else {
                return Ok(());
            };
            self.rule = Some(Arc::from("consent/lift-opt-out"));
            return self.emit(Change::OptOutLifted {
                scope: c.scope.clone(),
                reason: format!("{reason}, then consented"),
            });
        }
        if enrols(self.p, self.ev) {
            self.rule = Some(Arc::from("enrolment/opted-out"));
            let id = &self.p.id;
            return self.emit(Change::InputIgnored {
                reason: format!(
                    "the patient opted out of `{id}` (instance closed `{reason}`): not enrolled again until a `consent.given` for `{id}` (or `*`)"
                ),
            });
        }
        Ok(())
    }

    /// An identity merge's own records: `instance.rekeyed` to the event's subject, then
    /// the closing of a duplicate (see [`crate::merge`]). True when it closed the instance.
    fn merge(&mut self, fate: Fate) -> Result<bool, DecideError> {
        self.rule = Some(Arc::from(crate::merge::RULE));
        if matches!(fate, Fate::Rekey | Fate::RekeyAndClose) {
            self.emit(Change::Rekeyed {
                from: self.s.subject.to_string(),
                to: self.ev.subject.clone(),
            })?;
        }
        if matches!(fate, Fate::RekeyAndClose | Fate::Close) && self.s.is_active() {
            self.close(crate::merge::CLOSED_REASON.into())?;
            return Ok(true);
        }
        self.rule = None;
        Ok(false)
    }

    fn enrol(&mut self) -> Result<(), DecideError> {
        // A referral enrols outside the rule: no episode key (the rule's expression reads
        // the fields of its own event type), so the next enrolling event is a new episode.
        let referral = self.p.is_referral(self.ev);
        self.rule = Some(Arc::from(if referral {
            "enrolment/referral"
        } else {
            "enrolment"
        }));
        let key = if referral { None } else { self.episode_key() };
        self.emit(Change::Enrolled {
            pathway_id: self.p.id.clone(),
            pathway_version: self.p.version,
            tenant: self.ev.tenant.clone(),
            subject: self.ev.subject.clone(),
            key,
        })?;
        self.enter_initial_states()
    }

    /// The episode key of the current event, if the pathway defines one.
    fn episode_key(&self) -> Option<String> {
        let e = self.p.enrolment.episode_key.as_ref()?;
        match e.eval_value(&self.env(Some(&self.ev.data))) {
            Ok(v) => Some(v.to_string()),
            Err(_) => None,
        }
    }

    fn enter_initial_states(&mut self) -> Result<(), DecideError> {
        for (ti, track) in self.p.tracks.iter().enumerate() {
            let initial = track.initial;
            self.emit(Change::StateEntered {
                track: track.name.clone(),
                state: self.p.state(initial).name.clone(),
                from: None,
            })?;
            self.on_enter(TrackId(ti as u16), initial)?;
        }
        Ok(())
    }

    fn process(&mut self) -> Result<(), DecideError> {
        let ev = self.ev;
        let ty = ev.event_type();

        // Closing rules come first: death or opt-out ends everything else.
        for rule in &self.p.close_rules {
            if rule.on == ty {
                self.rule = Some(rule.rule.clone());
                if self.check(rule.guard.as_ref(), Some(&ev.data))? {
                    return self.close(rule.reason.clone());
                }
            }
        }

        // A referral to a pathway the patient is on changes nothing (it enrols; it does
        // not restart a cycle): recorded, so the coordinator sees why.
        if self.p.is_referral(ev) {
            self.rule = Some(Arc::from("enrolment/referral"));
            return self.emit(Change::InputIgnored {
                reason: format!(
                    "the patient is already on `{}` (cycle {}): the referral changes nothing",
                    self.p.id, self.s.cycle
                ),
            });
        }

        // A repeated enrolment event (a new discharge) may restart the cycle; a referral
        // (to another pathway: one to this pathway returned above) never does.
        if ty == self.p.enrolment.on
            && ty != EventType::PatientReferred
            && self.p.enrolment.on_repeat == Repeat::Restart
        {
            self.rule = Some(Arc::from("enrolment/restart"));
            let same_episode = self.p.enrolment.episode_key.is_some()
                && self.episode_key().is_some()
                && self.episode_key().as_deref() == self.s.cycle_key.as_deref();
            if same_episode {
                self.emit(Change::InputIgnored {
                    reason: "same episode as the current cycle (resent or updated): no new cycle"
                        .into(),
                })?;
            } else if self.check(self.p.enrolment.guard.as_ref(), Some(&ev.data))? {
                self.restart()?;
                return self.settle();
            }
        }
        self.rule = None;

        let mut filter: Option<String> = None;
        let mut actionable = true;
        match &ev.data {
            EventData::TimerFired(t) => {
                return match own(&t.timer_id) {
                    Some(id) => self.timer_fired(id),
                    None => Ok(()),
                };
            }
            EventData::TaskCompleted(data::TaskCompleted { task_id, .. })
            | EventData::TaskNotNeeded(data::TaskNotNeeded { task_id, .. })
            | EventData::TaskCouldNotBeDone(data::TaskCouldNotBeDone { task_id, .. }) => {
                let Some((tid, task)) =
                    own(task_id).and_then(|id| Some((id, self.s.tasks.get(&id)?)))
                else {
                    return Ok(()); // not one of this instance's tasks
                };
                let outcome = match ty {
                    EventType::TaskCompleted => TaskOutcome::Completed,
                    EventType::TaskNotNeeded => TaskOutcome::NotNeeded,
                    _ => TaskOutcome::CouldNotBeDone,
                };
                // The care team's answer: completed or not needed settles the work.
                let done = outcome != TaskOutcome::CouldNotBeDone;
                self.close_task(tid, task.code.clone(), outcome, done)?;
                filter = Some(task.code.to_string());
            }
            EventData::TaskOverdue(_) => return Ok(()), // parcours emits overdue itself
            EventData::HandoffAccepted(data::HandoffAccepted { handoff_id, .. })
            | EventData::HandoffDeclined(data::HandoffDeclined { handoff_id, .. }) => {
                let Some((hid, h)) =
                    own(handoff_id).and_then(|id| Some((id, self.s.handoffs.get(&id)?.clone())))
                else {
                    return Ok(());
                };
                self.cancel_timers_of(hid)?;
                self.emit(Change::HandoffClosed {
                    handoff_id: hid,
                    code: h.code.to_string(),
                    accepted: ty == EventType::HandoffAccepted,
                })?;
                filter = Some(h.code.to_string());
            }
            EventData::AlertAcknowledged(data::AlertAcknowledged { alert_id, .. }) => {
                let Some((aid, a)) =
                    own(alert_id).and_then(|id| Some((id, self.s.alerts.get(&id)?.clone())))
                else {
                    return Ok(());
                };
                self.cancel_timers_of(aid)?;
                self.emit(Change::AlertClosed {
                    alert_id: aid,
                    code: a.code.to_string(),
                })?;
                filter = Some(a.code.to_string());
            }
            EventData::ObservationRecorded(o) => {
                actionable = is_actionable_status(&o.status);
                // A result entered in error, or corrected or amended, replaces what was
                // recorded for its code at its clinical time: those samples go (an
                // erroneous weight must not stay a baseline for the next gain).
                if matches!(
                    o.status.as_str(),
                    "entered-in-error" | "corrected" | "amended"
                ) {
                    self.withdraw_samples(&o.code)?;
                }
                if actionable {
                    self.record_samples(o)?;
                } else {
                    // The status is named when it is one of the result statuses (a
                    // sender's free text is never repeated).
                    let reason = if matches!(
                        o.status.as_str(),
                        "registered"
                            | "preliminary"
                            | "cancelled"
                            | "entered-in-error"
                            | "unknown"
                            | "partial"
                    ) {
                        format!("result status `{}` does not drive guards", o.status)
                    } else {
                        "result status not final, corrected or amended: it does not drive guards"
                            .to_string()
                    };
                    self.emit(Change::InputIgnored { reason })?;
                }
            }
            EventData::EncounterDischargeCancelled(c)
                if self.s.cycle_key.as_deref() == Some(c.encounter_id.as_str()) =>
            {
                // The discharge that started this cycle did not happen: its episode key no
                // longer stands, so the real discharge of the same stay starts a new cycle.
                self.emit(Change::EpisodeCancelled {
                    key: c.encounter_id.clone(),
                })?;
            }
            EventData::ParametersUpdated(u) => {
                for (name, value) in &u.values {
                    let change = match self.p.params.iter().find(|p| &p.name == name) {
                        None => Change::InputIgnored {
                            reason: format!("unknown parameter `{name}`"),
                        },
                        Some(decl) => match Scalar::from_json(decl.ty, value) {
                            Ok(v) => Change::ParameterSet {
                                name: name.clone(),
                                value: v,
                            },
                            Err(e) => Change::InputIgnored {
                                reason: format!("parameter `{name}`: {e}"),
                            },
                        },
                    };
                    self.emit(change)?;
                }
            }
            _ => {}
        }

        let dispatch = Dispatch {
            ty,
            data: Some(&ev.data),
            filter: filter.as_deref(),
            actionable,
        };
        self.dispatch(dispatch)?;
        self.settle()
    }

    /// Withdraw the samples of `code`'s series taken at this event's clinical time.
    fn withdraw_samples(&mut self, code: &str) -> Result<(), DecideError> {
        for (i, decl) in self.p.series.iter().enumerate() {
            let taken = self
                .s
                .series
                .get(i)
                .is_some_and(|s| s.has_sample_at(self.ev.occurred_at));
            if taken && decl.codes.iter().any(|c| c == code) {
                self.emit(Change::SamplesWithdrawn {
                    series: decl.name.clone(),
                })?;
            }
        }
        Ok(())
    }

    fn record_samples(&mut self, o: &data::ObservationRecorded) -> Result<(), DecideError> {
        let Some(value) = o.value else { return Ok(()) };
        for decl in &self.p.series {
            if !decl.codes.iter().any(|c| c == &o.code) {
                continue;
            }
            let unit = match o.unit.as_deref().map(str::trim) {
                Some(u) if !u.is_empty() => u,
                _ if decl.assume_unitless => decl.unit.as_str(),
                _ => {
                    self.emit(Change::InputIgnored {
                        reason: format!(
                            "series `{}`: result `{}` has no unit, not added (parcours never guesses a unit; `unitless: assume` on the series takes it as `{}`)",
                            decl.name, o.code, decl.unit
                        ),
                    })?;
                    continue;
                }
            };
            match units::convert(value, unit, &decl.unit, Some(&o.code)) {
                Ok(v) => self.emit(Change::SampleRecorded {
                    series: decl.name.clone(),
                    value: v,
                })?,
                Err(e) => self.emit(Change::InputIgnored {
                    reason: format!("series `{}`: {e}", decl.name),
                })?,
            }
        }
        Ok(())
    }

    /// Offer an event to every track; each takes at most one transition.
    fn dispatch(&mut self, d: Dispatch<'_>) -> Result<(), DecideError> {
        for ti in 0..self.p.tracks.len() {
            if !self.s.is_active() {
                return Ok(());
            }
            let current = self.s.tracks[ti].state;
            let p = self.p;
            let candidates = p
                .state(current)
                .transitions
                .iter()
                .chain(p.tracks[ti].any.iter())
                .copied();
            for tid in candidates {
                let t = self.p.transition(tid);
                let Trigger::Event {
                    on,
                    filter,
                    any_status,
                } = &t.trigger
                else {
                    continue;
                };
                if *on != d.ty || (!d.actionable && !any_status) {
                    continue;
                }
                if let Some(f) = filter
                    && d.filter != Some(f.as_str())
                {
                    continue;
                }
                let mut guard = t.guard.as_ref();
                if let (Some((codes, whole)), Some(EventData::ObservationRecorded(o))) =
                    (p.required_codes(tid), d.data)
                {
                    if !codes.contains(&o.code) {
                        continue; // its guard is false for this code
                    }
                    if whole {
                        guard = None; // the code was the whole guard, and it matches
                    }
                }
                self.rule = Some(t.rule.clone());
                if self.check(guard, d.data)? {
                    self.take(tid)?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Run eventless transitions until nothing moves, then check completion.
    fn settle(&mut self) -> Result<(), DecideError> {
        let mut steps = 0;
        'outer: loop {
            if !self.s.is_active() {
                return Ok(());
            }
            for ti in 0..self.p.tracks.len() {
                let current = self.s.tracks[ti].state;
                let p = self.p;
                if !p.has_eventless(current) {
                    continue;
                }
                let candidates = p
                    .state(current)
                    .transitions
                    .iter()
                    .chain(p.tracks[ti].any.iter())
                    .copied()
                    .filter(|t| p.transition(*t).trigger == Trigger::Always);
                for tid in candidates {
                    let t = self.p.transition(tid);
                    // An eventless self-loop would spin; the compiler rejects it.
                    if t.target == Some(current) {
                        continue;
                    }
                    self.rule = Some(t.rule.clone());
                    if self.check(t.guard.as_ref(), None)? {
                        steps += 1;
                        if steps > MAX_EVENTLESS_STEPS {
                            return Err(DecideError::Divergence(Divergence {
                                pathway: self.p.id.clone(),
                                version: self.p.version,
                                event: self.ev.id.clone(),
                                reason: "eventless transitions do not settle".into(),
                            }));
                        }
                        self.take(tid)?;
                        continue 'outer;
                    }
                }
            }
            break;
        }
        if self.s.is_active() && self.s.tracks.iter().all(|t| self.p.state(t.state).terminal) {
            self.rule = None;
            // The programme is over: what is still open is no longer needed.
            self.withdraw_all()?;
            self.emit(Change::Completed)?;
        }
        Ok(())
    }

    fn take(&mut self, tid: TransitionId) -> Result<(), DecideError> {
        let t = self.p.transition(tid);
        let track = t.track;
        self.rule = Some(t.rule.clone());
        match t.target {
            None => self.run_actions(&t.actions),
            Some(target) => {
                let from = self.s.tracks[track.index()].state;
                let from_state = self.p.state(from);
                self.run_actions(&from_state.on_exit)?;
                self.cancel_state_timers(from)?;
                self.rule = Some(t.rule.clone());
                self.run_actions(&t.actions)?;
                if !self.s.is_active() {
                    return Ok(());
                }
                self.emit(Change::StateEntered {
                    track: self.p.tracks[track.index()].name.clone(),
                    state: self.p.state(target).name.clone(),
                    from: Some(from_state.name.clone()),
                })?;
                self.on_enter(track, target)
            }
        }
    }

    fn on_enter(&mut self, _track: TrackId, state: StateId) -> Result<(), DecideError> {
        let st = self.p.state(state);
        let saved = self.rule.clone();
        self.rule = Some(Arc::from(format!("{}/on_enter", st.name)));
        self.run_actions(&st.on_enter)?;
        if !self.s.is_active() {
            return Ok(());
        }
        for tid in &st.transitions {
            let t = self.p.transition(*tid);
            self.rule = Some(t.rule.clone());
            match &t.trigger {
                Trigger::After { after, from } => {
                    let at = calendar::add(self.anchor(*from), *after);
                    self.schedule(at, TimerKind::Transition { transition: tid.0 })?;
                }
                Trigger::Every { every, from, .. } => {
                    // Occurrences lie on a grid from the anchor; entering late (after a
                    // stay in hospital) starts at the next one, without a burst of past ones.
                    let anchor = self.grid_anchor(t.track, *from);
                    let at = next_on_grid(anchor, *every, self.now);
                    self.schedule(
                        at,
                        TimerKind::Recurring {
                            transition: tid.0,
                            fired: 0,
                        },
                    )?;
                }
                _ => {}
            }
        }
        self.rule = saved;
        Ok(())
    }

    /// The anchor of a recurring transition's grid: like [`Self::anchor`], but state entry
    /// (and an unset variable) mean the instant the track entered its current state, so the
    /// grid is the same when it is computed again at each occurrence.
    fn grid_anchor(&self, track: TrackId, a: Anchor) -> Timestamp {
        let entered = self
            .s
            .tracks
            .get(track.index())
            .map_or(self.now, |t| t.entered_at.get());
        match a {
            Anchor::StateEntry | Anchor::Now => entered,
            Anchor::CycleStart => self.s.cycle_start.get(),
            Anchor::Enrolment => self.s.enrolled_at.get(),
            Anchor::Var(v) => match self.s.vars.get(usize::from(v)) {
                Some(Some(Scalar::Timestamp(t))) => t.get(),
                _ => entered,
            },
        }
    }

    fn anchor(&self, a: Anchor) -> Timestamp {
        match a {
            Anchor::StateEntry | Anchor::Now => self.now,
            Anchor::CycleStart => self.s.cycle_start.get(),
            Anchor::Enrolment => self.s.enrolled_at.get(),
            Anchor::Var(v) => match self.s.vars.get(usize::from(v)) {
                Some(Some(Scalar::Timestamp(t))) => t.get(),
                _ => self.now,
            },
        }
    }

    fn schedule(&mut self, fire_at: Timestamp, kind: TimerKind) -> Result<(), DecideError> {
        let timer_id = self.new_id();
        self.emit(Change::TimerScheduled {
            timer_id,
            fire_at,
            kind,
        })
    }

    fn cancel_state_timers(&mut self, state: StateId) -> Result<(), DecideError> {
        let owned: Vec<u16> = self
            .p
            .state(state)
            .transitions
            .iter()
            .map(|t| t.0)
            .collect();
        let ids: Vec<Uuid> =
            self.s
                .timers
                .kinds()
                .filter(|(_, kind)| match kind {
                    TimerKind::Transition { transition }
                    | TimerKind::Recurring { transition, .. } => owned.contains(transition),
                    _ => false,
                })
                .map(|(id, _)| id)
                .collect();
        for timer_id in ids {
            self.emit(Change::TimerCancelled { timer_id })?;
        }
        Ok(())
    }

    fn cancel_timers_of(&mut self, owner: Uuid) -> Result<(), DecideError> {
        let ids: Vec<Uuid> = self
            .s
            .timers
            .kinds()
            .filter(|(_, kind)| kind.owner() == Some(owner))
            .map(|(id, _)| id)
            .collect();
        for timer_id in ids {
            self.emit(Change::TimerCancelled { timer_id })?;
        }
        Ok(())
    }

    fn cancel_all_timers(&mut self) -> Result<(), DecideError> {
        let ids: Vec<Uuid> = self.s.timers.keys().collect();
        for timer_id in ids {
            self.emit(Change::TimerCancelled { timer_id })?;
        }
        Ok(())
    }

    /// Close an open task; `done`: the work is settled for the cycle (see
    /// [`Change::TaskClosed`]).
    fn close_task(
        &mut self,
        task_id: Uuid,
        code: Arc<str>,
        outcome: TaskOutcome,
        done: bool,
    ) -> Result<(), DecideError> {
        self.cancel_timers_of(task_id)?;
        self.emit(Change::TaskClosed {
            task_id,
            code,
            outcome,
            done,
        })
    }

    /// Withdraw everything open: tasks (not needed), alerts, handoffs, timers.
    fn withdraw_all(&mut self) -> Result<(), DecideError> {
        self.cancel_all_timers()?;
        let tasks: Vec<(Uuid, Arc<str>)> =
            self.s.tasks.iter().map(|(id, t)| (id, t.code)).collect();
        for (id, code) in tasks {
            self.emit(Change::TaskClosed {
                task_id: id,
                code,
                outcome: TaskOutcome::NotNeeded,
                done: false,
            })?;
        }
        let alerts: Vec<(Uuid, String)> = self
            .s
            .alerts
            .iter()
            .map(|(id, a)| (*id, a.code.to_string()))
            .collect();
        for (alert_id, code) in alerts {
            self.emit(Change::AlertClosed { alert_id, code })?;
        }
        let handoffs: Vec<(Uuid, String)> = self
            .s
            .handoffs
            .iter()
            .map(|(id, h)| (*id, h.code.to_string()))
            .collect();
        for (handoff_id, code) in handoffs {
            self.emit(Change::HandoffClosed {
                handoff_id,
                code,
                accepted: false,
            })?;
        }
        Ok(())
    }

    fn close(&mut self, reason: String) -> Result<(), DecideError> {
        self.withdraw_all()?;
        self.emit(Change::Closed { reason })
    }

    fn restart(&mut self) -> Result<(), DecideError> {
        self.withdraw_all()?;
        let cycle = self.s.cycle + 1;
        let key = self.episode_key();
        self.emit(Change::CycleRestarted { cycle, key })?;
        // Every track goes back to its initial state.
        for (ti, track) in self.p.tracks.iter().enumerate() {
            let from = self.s.tracks[ti].state;
            self.emit(Change::StateEntered {
                track: track.name.clone(),
                state: self.p.state(track.initial).name.clone(),
                from: Some(self.p.state(from).name.clone()),
            })?;
            self.on_enter(TrackId(ti as u16), track.initial)?;
        }
        Ok(())
    }

    /// A timer fired. The instance's timers that come before it — due earlier, or due at
    /// the same instant and earlier in [`same_instant_rank`] order — fire first, each at its
    /// own time, so the outcome never depends on the order the timer service delivers
    /// timers that are due together.
    fn timer_fired(&mut self, timer_id: Uuid) -> Result<(), DecideError> {
        let Some(timer) = self.s.timers.get(&timer_id) else {
            return Ok(()); // cancelled or already fired: nothing to do
        };
        let key = timer_key(self.p, timer_id, &timer);
        for _ in 0..MAX_CATCH_UP {
            let p = self.p;
            let first = self
                .s
                .timers
                .iter()
                .map(|(id, t)| (timer_key(p, id, &t), id, t))
                .filter(|(k, _, _)| *k < key)
                .min_by_key(|(k, _, _)| *k);
            let Some((_, id, t)) = first else { break };
            self.now = t.fire_at;
            self.fire_timer(id, t)?;
            if !self.s.is_active() {
                return Ok(());
            }
        }
        self.now = self.ev.occurred_at;
        match self.s.timers.get(&timer_id) {
            Some(timer) => self.fire_timer(timer_id, timer),
            None => Ok(()), // an earlier timer left the state that owned it
        }
    }

    fn fire_timer(&mut self, timer_id: Uuid, timer: PendingTimer) -> Result<(), DecideError> {
        self.emit(Change::TimerFired {
            timer_id,
            due_at: timer.fire_at,
        })?;
        match timer.kind {
            TimerKind::Transition { transition } => {
                let tid = TransitionId(transition);
                let t = self.p.transition(tid);
                self.rule = Some(t.rule.clone());
                if self.check(t.guard.as_ref(), None)? {
                    self.take(tid)?;
                }
            }
            TimerKind::Recurring { transition, fired } => {
                let tid = TransitionId(transition);
                let t = self.p.transition(tid);
                self.rule = Some(t.rule.clone());
                let fired = fired + 1;
                if let Trigger::Every { every, times, from } = &t.trigger
                    && times.is_none_or(|n| fired < n)
                {
                    let anchor = self.grid_anchor(t.track, *from);
                    let next = next_on_grid(anchor, *every, timer.fire_at);
                    self.schedule(next, TimerKind::Recurring { transition, fired })?;
                }
                if self.check(t.guard.as_ref(), None)? {
                    self.take(tid)?;
                }
            }
            TimerKind::TaskReminder { task_id } => {
                if let Some(task) = self.s.tasks.get(&task_id) {
                    self.emit(Change::TaskReminded {
                        task_id,
                        code: task.code.clone(),
                        role: task.role.clone(),
                    })?;
                }
            }
            TimerKind::TaskDue { task_id } => {
                if let Some(task) = self.s.tasks.get(&task_id) {
                    self.emit(Change::TaskOverdue {
                        task_id,
                        code: task.code.clone(),
                        role: task.role.clone(),
                    })?;
                    let data = EventData::TaskOverdue(data::TaskOverdue {
                        task_id: task_id.to_string(),
                        code: task.code.to_string(),
                    });
                    self.dispatch(Dispatch {
                        ty: EventType::TaskOverdue,
                        data: Some(&data),
                        filter: Some(&task.code),
                        actionable: true,
                    })?;
                }
            }
            TimerKind::TaskEscalation { task_id, step } => {
                if let Some(task) = self.s.tasks.get(&task_id)
                    && let Some(def) = self.p.task_by_code(&task.code)
                    && let Some(s) = def.escalation.get(usize::from(step))
                {
                    self.emit(Change::TaskEscalated {
                        task_id,
                        code: task.code.clone(),
                        step,
                        role: s.role.clone(),
                        priority: s.priority,
                    })?;
                }
            }
            TimerKind::AlertAck { alert_id } => {
                if let Some(a) = self.s.alerts.get(&alert_id).cloned()
                    && let Some(def) = self.p.alerts.iter().find(|d| *d.code == *a.code)
                {
                    let role = def.escalate_to.clone().unwrap_or_else(|| def.role.clone());
                    self.emit(Change::AlertEscalated {
                        alert_id,
                        code: a.code.to_string(),
                        role,
                    })?;
                }
            }
            TimerKind::HandoffAccept { handoff_id } => {
                if let Some(h) = self.s.handoffs.get(&handoff_id).cloned()
                    && let Some(def) = self.p.handoffs.iter().find(|d| *d.code == *h.code)
                {
                    self.emit(Change::HandoffEscalated {
                        handoff_id,
                        code: h.code.to_string(),
                        role: def.escalate_to.clone(),
                    })?;
                }
            }
            TimerKind::Named { timer } => {
                let name = self
                    .p
                    .timers
                    .get(usize::from(timer))
                    .cloned()
                    .unwrap_or_default();
                let data = EventData::TimerFired(data::TimerFired {
                    timer_id: timer_id.to_string(),
                    instance_id: self.s.instance_id.to_string(),
                });
                self.dispatch(Dispatch {
                    ty: EventType::TimerFired,
                    data: Some(&data),
                    filter: Some(&name),
                    actionable: true,
                })?;
            }
        }
        self.settle()
    }

    fn eval_value(&mut self, e: &Expr) -> Result<Option<Scalar>, DecideError> {
        let data = Some(&self.ev.data);
        match e.eval_value(&self.env(data)) {
            Ok(v) => match v.into_scalar() {
                Some(s) => Ok(Some(s)),
                None => {
                    self.emit(Change::GuardFailed {
                        message: "value is not a scalar".into(),
                    })?;
                    Ok(None)
                }
            },
            Err(err @ crate::expr::EvalError::NoUnit { .. }) => {
                self.emit(Change::InputIgnored {
                    reason: format!("{err}: the value is not set"),
                })?;
                Ok(None)
            }
            Err(err) => {
                self.emit(Change::GuardFailed {
                    message: format!("value: {err}"),
                })?;
                Ok(None)
            }
        }
    }

    fn run_actions(&mut self, actions: &[Action]) -> Result<(), DecideError> {
        for a in actions {
            if !self.s.is_active() {
                return Ok(());
            }
            self.run_action(a)?;
        }
        Ok(())
    }

    fn run_action(&mut self, a: &Action) -> Result<(), DecideError> {
        match a {
            Action::RequestTask { task, due } => {
                let def = &self.p.tasks[task.index()];
                if def.once_per_cycle
                    && done_mask(task.index()).is_some_and(|m| self.s.done & m != 0)
                {
                    return Ok(()); // `once_per_cycle`, and done in this cycle
                }
                let (dur, from) = due.unwrap_or((def.due, def.due_from));
                let due_at = calendar::add(self.anchor(from), dur);
                let task_id = self.new_id();
                self.emit(Change::TaskRequested {
                    task_id,
                    code: def.code.clone(),
                    role: def.role.clone(),
                    title: def.title.clone(),
                    due_at,
                    priority: def.priority,
                })?;
                for r in &def.reminders {
                    let at = calendar::sub(due_at, *r);
                    self.schedule(at, TimerKind::TaskReminder { task_id })?;
                }
                self.schedule(due_at, TimerKind::TaskDue { task_id })?;
                for (i, step) in def.escalation.iter().enumerate() {
                    let at = calendar::add(due_at, step.after_due);
                    self.schedule(
                        at,
                        TimerKind::TaskEscalation {
                            task_id,
                            step: i as u16,
                        },
                    )?;
                }
            }
            Action::CompleteTask(task) => {
                let code = &self.p.tasks[task.index()].code;
                let open: Vec<Uuid> = self
                    .s
                    .tasks
                    .iter()
                    .filter(|(_, t)| *t.code == **code)
                    .map(|(id, _)| id)
                    .collect();
                for id in open {
                    self.close_task(id, code.clone(), TaskOutcome::Completed, true)?;
                }
            }
            Action::CancelTasks { task, outcome } => {
                let code = task.map(|t| &*self.p.tasks[t.index()].code);
                let open: Vec<(Uuid, Arc<str>)> = self
                    .s
                    .tasks
                    .iter()
                    .filter(|(_, t)| code.is_none_or(|c| &*t.code == c))
                    .map(|(id, t)| (id, t.code))
                    .collect();
                for (id, c) in open {
                    self.close_task(id, c, *outcome, false)?;
                }
            }
            Action::RaiseAlert(id) => {
                let def = &self.p.alerts[id.index()];
                let mut message = String::new();
                for part in &def.message {
                    match part {
                        TemplatePart::Text(t) => message.push_str(t),
                        TemplatePart::Expr(e) => {
                            match e.eval_value(&self.env(Some(&self.ev.data))) {
                                Ok(v) => message.push_str(&v.to_string()),
                                Err(_) => message.push('?'),
                            }
                        }
                    }
                }
                let alert_id = self.new_id();
                self.emit(Change::AlertRaised {
                    alert_id,
                    code: def.code.clone(),
                    severity: def.severity,
                    role: def.role.clone(),
                    message,
                })?;
                if let Some(within) = def.acknowledge_within {
                    let at = calendar::add(self.now, within);
                    self.schedule(at, TimerKind::AlertAck { alert_id })?;
                }
            }
            Action::RequestHandoff(id) => {
                let def = &self.p.handoffs[id.index()];
                let handoff_id = self.new_id();
                let accept_by = calendar::add(self.now, def.accept_within);
                self.emit(Change::HandoffRequested {
                    handoff_id,
                    code: def.code.clone(),
                    from: def.from.clone(),
                    to: def.to.clone(),
                    title: def.title.clone(),
                    accept_by,
                })?;
                self.schedule(accept_by, TimerKind::HandoffAccept { handoff_id })?;
            }
            Action::SetVar { var, value } => {
                if let Some(v) = self.eval_value(value)? {
                    let name = self.p.vars[usize::from(*var)].name.clone();
                    self.emit(Change::VariableSet { name, value: v })?;
                }
            }
            Action::SetParam { param, value } => {
                if let Some(v) = self.eval_value(value)? {
                    let name = self.p.params[usize::from(*param)].name.clone();
                    self.emit(Change::ParameterSet { name, value: v })?;
                }
            }
            Action::ScheduleTimer { timer, after, from } => {
                let existing: Vec<Uuid> = self
                    .s
                    .timers
                    .kinds()
                    .filter(|(_, kind)| *kind == TimerKind::Named { timer: timer.0 })
                    .map(|(id, _)| id)
                    .collect();
                for timer_id in existing {
                    self.emit(Change::TimerCancelled { timer_id })?;
                }
                let at = calendar::add(self.anchor(*from), *after);
                self.schedule(at, TimerKind::Named { timer: timer.0 })?;
            }
            Action::CancelTimer(timer) => {
                let existing: Vec<Uuid> = self
                    .s
                    .timers
                    .kinds()
                    .filter(|(_, kind)| *kind == TimerKind::Named { timer: timer.0 })
                    .map(|(id, _)| id)
                    .collect();
                for timer_id in existing {
                    self.emit(Change::TimerCancelled { timer_id })?;
                }
            }
            Action::Close { reason } => self.close(reason.clone())?,
        }
        Ok(())
    }
}
