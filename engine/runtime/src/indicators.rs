//! Pathway indicators: a projection of the log, per tenant and pathway.
//!
//! [`Indicators`] folds the log's records in position order ([`Indicators::catch_up`]
//! reads what was committed since its last call) and answers, as of the latest clinical
//! instant it has seen ([`Indicators::as_of`], never the wall clock, so a report of a log
//! is reproducible):
//!
//! - instances by status, and active instances by state of each track;
//! - transitions taken, guard failures;
//! - tasks by role and status: completed on time (at or before their due time), late,
//!   not needed, could not be done, open, overdue (open with an overdue recorded);
//! - alerts raised and open by severity, and their acknowledgement times (raised → closed);
//! - follow-up indicators: the share of cycles (one per discharge) whose follow-up task
//!   was completed within its window — heart failure: `gp-visit` within 7 days of
//!   discharge ([`FOLLOW_UPS`]), with the distribution of the delay; cycles count once
//!   the window has passed or the task was done;
//! - 30-day readmission: among cycles of pathways that enrol on a discharge, the share
//!   followed by an inpatient admission within 30 days (cycles count once 30 days passed
//!   or the patient was readmitted); a cancelled discharge removes its cycle. A cycle a
//!   referral started (`patient.referred`: a stay coded late, a GP's referral) counts in
//!   both from the referral's clinical time, as a discharge's would;
//! - diabetes ([`RESULT_COUNTS`], [`YEARLY_TASKS`]): among active instances, the share
//!   with at least 3 HbA1c results recorded in the last 12 months, and the share with
//!   each yearly exam (eye, foot, kidney function) done in the last 12 months.
//!
//! [`DomainMetrics`] exposes them to Prometheus. Labels are tenant, pathway, track,
//! state, role, severity, status and indicator names: bounded by configuration, never a
//! patient or instance id (the fold keeps those in memory only to join records).
//!
//! The fold keeps what can still change, not the history: a closed task or alert is
//! counted by its final status and forgotten, results and completions older than a year
//! before the latest instant (the longest window an indicator looks back over) are
//! dropped, and histogram observations are handed to [`DomainMetrics`] once. Its memory
//! follows the open work and the instances, not the length of the log. Of the inbound
//! events it reads only results' and admissions' payloads, and of those the few fields it
//! counts by; the others' records give their clinical time ([`Indicators::apply`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{EventType, is_actionable_status};
use parcours_core::model::TaskOutcome;
use parcours_core::state::Change;
use parcours_store::{EventStore, NewRecord, StoredRecord};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use uuid::Uuid;

use crate::codec;
use crate::engine::RuntimeError;
use crate::registry::PathwayRegistry;

/// A follow-up indicator: a task of a pathway to complete within a window from the start
/// of each cycle (the discharge).
#[derive(Clone, Copy, Debug)]
pub struct FollowUp {
    /// Indicator name (a label value).
    pub name: &'static str,
    /// Pathway id.
    pub pathway: &'static str,
    /// Task code.
    pub task: &'static str,
    /// Window, in days.
    pub within_days: i64,
}

/// Follow-up indicators.
pub const FOLLOW_UPS: &[FollowUp] = &[FollowUp {
    name: "gp_visit_within_7d",
    pathway: "heart-failure",
    task: "gp-visit",
    within_days: 7,
}];

/// Readmission window, in days.
pub const READMISSION_DAYS: i64 = 30;

/// A result-count indicator: active instances whose patient has at least `min` final
/// (or corrected, amended) results with one of `codes` in the last `window_days`.
#[derive(Clone, Copy, Debug)]
pub struct ResultCount {
    /// Indicator name.
    pub name: &'static str,
    /// Pathway id.
    pub pathway: &'static str,
    /// LOINC codes that count.
    pub codes: &'static [&'static str],
    /// Samples needed.
    pub min: usize,
    /// Window, in days.
    pub window_days: i64,
}

/// Result-count indicators (HbA1c: 4548-4 and 17856-6 in %, 59261-8 in mmol/mol).
pub const RESULT_COUNTS: &[ResultCount] = &[ResultCount {
    name: "hba1c_3_in_12_months",
    pathway: "type2-diabetes",
    codes: &["4548-4", "17856-6", "59261-8"],
    min: 3,
    window_days: 365,
}];

/// Yearly-task indicators: active instances with the task completed in the last 365
/// days. `(indicator, pathway, task codes: any of them counts)`.
pub const YEARLY_TASKS: &[(&str, &str, &[&str])] = &[
    ("yearly_eye_exam", "type2-diabetes", &["eye-exam"]),
    ("yearly_foot_exam", "type2-diabetes", &["foot-exam"]),
    (
        "yearly_kidney_tests",
        "type2-diabetes",
        &["kidney-function-test"],
    ),
];

/// Name of the indicator of all yearly exams of a pathway done.
pub const YEARLY_ALL: &str = "yearly_exams_all_done";

/// Name of the readmission indicator.
pub const READMISSION: &str = "readmission_30d";

/// Task statuses (the `status` label of `parcours_pathway_tasks`).
pub const TASK_STATUSES: [&str; 6] = [
    "on_time",
    "late",
    "not_needed",
    "not_done",
    "open",
    "overdue",
];

type Key = (String, String);

#[derive(Debug, Clone)]
struct Cycle {
    start: Timestamp,
    cancelled: bool,
    /// Per follow-up indicator: when its task was first completed in this cycle.
    done: BTreeMap<&'static str, Timestamp>,
    readmitted: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct Inst {
    key: Key,
    subject: String,
    status: &'static str,
    states: BTreeMap<String, String>,
    cycles: Vec<Cycle>,
    /// Per task code: completion instants.
    completed: BTreeMap<String, Vec<Timestamp>>,
}

#[derive(Debug, Clone)]
struct Task {
    key: Key,
    role: String,
    due: Timestamp,
    overdue: bool,
}

#[derive(Debug, Clone)]
struct Alert {
    key: Key,
    severity: String,
    raised: Timestamp,
}

/// The status of a task closed at `at` (one of [`TASK_STATUSES`]; final).
fn closed_status(at: Timestamp, due: Timestamp, outcome: TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Completed if at <= due => "on_time",
        TaskOutcome::Completed => "late",
        TaskOutcome::NotNeeded => "not_needed",
        TaskOutcome::CouldNotBeDone => "not_done",
    }
}

/// The longest window an indicator looks back over, from the latest clinical instant:
/// instants older than that are never counted again (the latest instant only grows).
const LONGEST_WINDOW_DAYS: i64 = 365;

/// Forget the entries of `v` (in the order they happened, give or take) older than the
/// longest window before `as_of`.
fn prune_before<T>(v: &mut Vec<T>, as_of: Option<Timestamp>, at: impl Fn(&T) -> Timestamp) {
    let Some(as_of) = as_of else { return };
    let from = as_of - days(LONGEST_WINDOW_DAYS);
    // Cheap when nothing is old: only the first entry is looked at.
    if v.first().is_some_and(|x| at(x) <= from) {
        v.retain(|x| at(x) > from);
    }
}

/// One indicator's value.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// Name (`gp_visit_within_7d`, `readmission_30d`, …).
    pub name: String,
    /// Patients (or cycles) meeting it.
    pub numerator: u64,
    /// Patients (or cycles) it applies to.
    pub denominator: u64,
}

impl Ratio {
    /// numerator / denominator, `None` when nothing applies yet.
    pub fn share(&self) -> Option<f64> {
        (self.denominator > 0).then(|| self.numerator as f64 / self.denominator as f64)
    }
}

/// What the log says about one pathway of one tenant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PathwaySummary {
    /// Tenant.
    pub tenant: String,
    /// Pathway id.
    pub pathway: String,
    /// Instances by status (pending, active, completed, closed).
    pub statuses: BTreeMap<String, u64>,
    /// Active instances by (track, state); every reachable state of the latest loaded
    /// version appears, with 0 when empty.
    pub states: BTreeMap<(String, String), u64>,
    /// Transitions taken, by (track, from, to).
    pub transitions: BTreeMap<(String, String, String), u64>,
    /// Guard failures.
    pub guard_errors: u64,
    /// Tasks by (role, status: one of [`TASK_STATUSES`]).
    pub tasks: BTreeMap<(String, String), u64>,
    /// Alerts raised, by severity.
    pub alerts_raised: BTreeMap<String, u64>,
    /// Alerts open, by severity.
    pub alerts_open: BTreeMap<String, u64>,
    /// Acknowledgement times of closed alerts, in seconds.
    pub alert_ack_seconds: Vec<f64>,
    /// Indicators.
    pub ratios: Vec<Ratio>,
    /// Per follow-up indicator: delays (days) from cycle start to the task's completion.
    pub delays_days: BTreeMap<String, Vec<f64>>,
}

/// The inbound event types whose payload the fold reads ([`Indicators::apply`]): results
/// (the diabetes counts) and admissions (readmissions). Decoding the others — most of a
/// log's inbound events — would only give their clinical time, which the record carries.
const INBOUND_READ: [&str; 2] = [
    EventType::ObservationRecorded.as_str(),
    EventType::EncounterAdmitted.as_str(),
];

/// What the fold reads of a result or an admission (the CloudEvents JSON of its
/// [`Event`](parcours_core::events::Event); the rest is skipped, not built).
#[derive(Deserialize)]
struct InboundFields<'a> {
    #[serde(borrow)]
    data: InboundData<'a>,
}

/// A result's code and status, an admission's class.
#[derive(Deserialize)]
struct InboundData<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    class: Option<Cow<'a, str>>,
}

/// Records folded between two yields to the runtime in [`Indicators::catch_up`].
pub const FOLD_SLICE: usize = 256;

/// The fold of the log into indicators.
#[derive(Debug, Default)]
pub struct Indicators {
    after: u64,
    as_of: Option<Timestamp>,
    instances: HashMap<String, Inst>,
    by_patient: HashMap<(String, String), Vec<String>>,
    /// Per patient and LOINC code of a result-count indicator: when results were taken.
    results: HashMap<(String, String), Vec<(String, Timestamp)>>,
    /// Open tasks. A closed task's status no longer changes: it is counted in
    /// `closed_tasks` and forgotten, so the fold keeps what is open, not the history.
    tasks: HashMap<Uuid, Task>,
    /// Closed tasks by (tenant and pathway, role, status).
    closed_tasks: BTreeMap<(Key, String, &'static str), u64>,
    /// Open alerts (closed ones are counted in `closed_alerts` and forgotten).
    alerts: HashMap<Uuid, Alert>,
    /// Closed alerts by (tenant and pathway, severity).
    closed_alerts: BTreeMap<(Key, String), u64>,
    /// Acknowledgement times of the closed alerts, in seconds, by tenant and pathway.
    ack_seconds: BTreeMap<Key, Vec<f64>>,
    transitions: BTreeMap<(Key, String, String, String), u64>,
    guard_errors: BTreeMap<Key, u64>,
    undecodable: u64,
    /// Decodes the instance streams' records, sharing repeated names between them.
    decoder: codec::InstanceDecoder,
    /// Histogram observations not yet exported: (key, follow-up indicator or `None`
    /// for an alert acknowledgement, seconds), in fold order.
    observations: Vec<(Key, Option<&'static str>, f64)>,
}

fn days(d: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * d)
}

fn secs(a: Timestamp, b: Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64()
}

impl Indicators {
    /// An empty fold (position 0).
    pub fn new() -> Indicators {
        Indicators::default()
    }

    /// The log position folded so far.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The latest clinical instant seen in the log: what "now" means for the indicators.
    pub fn as_of(&self) -> Option<Timestamp> {
        self.as_of
    }

    /// Records the fold needed and could not decode (skipped): instance streams'
    /// records, and the inbound events it reads ([`Indicators::apply`]).
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Fold the records committed since the last call, at most `max_records` of them
    /// (the rest on the next call), yielding to the runtime every [`FOLD_SLICE`] records.
    /// Returns how many were read.
    pub async fn catch_up<S: EventStore>(
        &mut self,
        store: &S,
        max_records: usize,
    ) -> Result<usize, RuntimeError> {
        let mut read = 0;
        while read < max_records {
            let page = store
                .read_all(self.after, (max_records - read).min(4096))
                .await?;
            let Some(last) = page.last() else { break };
            self.after = last.position;
            read += page.len();
            for chunk in page.chunks(FOLD_SLICE) {
                for r in chunk {
                    self.apply(r);
                }
                // A scrape folding a few seconds of a busy log must not hold a runtime
                // thread for long: the engine's work goes on between slices.
                tokio::task::yield_now().await;
            }
        }
        Ok(read)
    }

    /// Fold one record. Of an inbound event the record's clinical time is enough, but
    /// for results and admissions (`INBOUND_READ`), of which the fold reads the few
    /// fields it counts by (`InboundFields`), not the whole event.
    pub fn apply(&mut self, r: &StoredRecord) {
        let rec = &r.record;
        if codec::is_inbound(&r.stream) {
            self.seen(rec.occurred_at);
            if !INBOUND_READ.contains(&rec.record_type.as_str()) {
                return;
            }
            match codec::decode_inbound_as::<InboundFields<'_>>(r) {
                Ok(f) => self.inbound(rec, &f.data),
                Err(_) => self.undecodable += 1,
            }
        } else if codec::is_instance(&r.stream) {
            match self.decoder.decode(r) {
                Ok(recs) => {
                    for one in recs {
                        self.seen(one.at);
                        self.instance(&r.stream, &rec.tenant, &rec.subject, one);
                    }
                }
                Err(_) => self.undecodable += 1,
            }
        }
    }

    fn seen(&mut self, at: Timestamp) {
        if self.as_of.is_none_or(|t| at > t) {
            self.as_of = Some(at);
        }
    }

    /// A result or an admission (the record of an inbound event, and the fields read).
    fn inbound(&mut self, rec: &NewRecord, data: &InboundData<'_>) {
        let (tenant, subject, at) = (&rec.tenant, &rec.subject, rec.occurred_at);
        if rec.record_type == EventType::ObservationRecorded.as_str() {
            let (Some(code), Some(status)) = (&data.code, &data.status) else {
                return;
            };
            if is_actionable_status(status)
                && RESULT_COUNTS.iter().any(|r| r.codes.contains(&&**code))
            {
                let results = self
                    .results
                    .entry((tenant.clone(), subject.clone()))
                    .or_default();
                results.push((code.to_string(), at));
                prune_before(results, self.as_of, |(_, t)| *t);
            }
            return;
        }
        if rec.record_type != EventType::EncounterAdmitted.as_str()
            || data.class.as_deref() != Some("inpatient")
        {
            return;
        }
        let Some(streams) = self.by_patient.get(&(tenant.clone(), subject.clone())) else {
            return;
        };
        for s in streams {
            let Some(inst) = self.instances.get_mut(s) else {
                continue;
            };
            if let Some(c) = inst.cycles.iter_mut().rev().find(|c| !c.cancelled)
                && c.readmitted.is_none()
                && at > c.start
                && at <= c.start + days(READMISSION_DAYS)
            {
                c.readmitted = Some(at);
            }
        }
    }

    fn instance(
        &mut self,
        stream: &str,
        tenant: &str,
        subject: &str,
        rec: parcours_core::state::Recorded,
    ) {
        if let Change::Enrolled { pathway_id, .. } = &rec.change {
            let key = (tenant.to_string(), pathway_id.clone());
            self.instances.insert(
                stream.to_string(),
                Inst {
                    key,
                    subject: subject.to_string(),
                    status: "active",
                    states: BTreeMap::new(),
                    cycles: vec![Cycle {
                        start: rec.at,
                        cancelled: false,
                        done: BTreeMap::new(),
                        readmitted: None,
                    }],
                    completed: BTreeMap::new(),
                },
            );
            let streams = self
                .by_patient
                .entry((tenant.to_string(), subject.to_string()))
                .or_default();
            if !streams.iter().any(|s| s == stream) {
                streams.push(stream.to_string());
            }
            return;
        }
        let Some(inst) = self.instances.get_mut(stream) else {
            return;
        };
        let key = inst.key.clone();
        match rec.change {
            Change::CycleRestarted { .. } => inst.cycles.push(Cycle {
                start: rec.at,
                cancelled: false,
                done: BTreeMap::new(),
                readmitted: None,
            }),
            Change::EpisodeCancelled { .. } => {
                if let Some(c) = inst.cycles.last_mut() {
                    c.cancelled = true;
                }
            }
            Change::StateEntered { track, state, from } => {
                if let Some(from) = from {
                    *self
                        .transitions
                        .entry((key, track.to_string(), from.to_string(), state.to_string()))
                        .or_default() += 1;
                }
                inst.states.insert(track.to_string(), state.to_string());
            }
            Change::Migrated { tracks, .. } => {
                inst.states = tracks.into_iter().map(|(t, s, _)| (t, s)).collect();
            }
            Change::GuardFailed { .. } => *self.guard_errors.entry(key).or_default() += 1,
            Change::Completed => inst.status = "completed",
            Change::Closed { .. } => inst.status = "closed",
            Change::Rekeyed { from, to } => self.rekey(stream, tenant, &from, &to),
            Change::TaskRequested {
                task_id,
                role,
                due_at,
                ..
            } => {
                self.tasks.insert(
                    task_id,
                    Task {
                        key,
                        role: role.to_string(),
                        due: due_at,
                        overdue: false,
                    },
                );
            }
            Change::TaskOverdue { task_id, .. } => {
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.overdue = true;
                }
            }
            Change::TaskClosed {
                task_id,
                code,
                outcome,
                ..
            } => {
                if let Some(t) = self.tasks.remove(&task_id) {
                    let status = closed_status(rec.at, t.due, outcome);
                    *self
                        .closed_tasks
                        .entry((t.key, t.role, status))
                        .or_default() += 1;
                }
                if outcome == TaskOutcome::Completed {
                    let done = inst.completed.entry(code.to_string()).or_default();
                    done.push(rec.at);
                    prune_before(done, self.as_of, |t| *t);
                    for f in FOLLOW_UPS {
                        if f.pathway == inst.key.1
                            && f.task == &*code
                            && let Some(c) = inst.cycles.last_mut()
                            && !c.done.contains_key(f.name)
                        {
                            c.done.insert(f.name, rec.at);
                            self.observations.push((
                                key.clone(),
                                Some(f.name),
                                secs(c.start, rec.at),
                            ));
                        }
                    }
                }
            }
            Change::AlertRaised {
                alert_id, severity, ..
            } => {
                let severity = match serde_json::to_value(severity) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => "unknown".into(),
                };
                self.alerts.insert(
                    alert_id,
                    Alert {
                        key,
                        severity,
                        raised: rec.at,
                    },
                );
            }
            Change::AlertClosed { alert_id, .. } => {
                if let Some(a) = self.alerts.remove(&alert_id) {
                    let ack = secs(a.raised, rec.at);
                    self.ack_seconds.entry(a.key.clone()).or_default().push(ack);
                    self.observations.push((a.key.clone(), None, ack));
                    *self.closed_alerts.entry((a.key, a.severity)).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// An identity merge moved the instance `stream` from the retired key `from` to the
    /// surviving key `to`: from now on it is that patient's (readmissions and results
    /// under `to` count for it). The retired key's results are the same person's: they
    /// join the survivor's.
    fn rekey(&mut self, stream: &str, tenant: &str, from: &str, to: &str) {
        if let Some(inst) = self.instances.get_mut(stream) {
            inst.subject = to.to_string();
        }
        let old = (tenant.to_string(), from.to_string());
        if let Some(streams) = self.by_patient.get_mut(&old) {
            streams.retain(|s| s != stream);
            if streams.is_empty() {
                self.by_patient.remove(&old);
            }
        }
        let streams = self
            .by_patient
            .entry((tenant.to_string(), to.to_string()))
            .or_default();
        if !streams.iter().any(|s| s == stream) {
            streams.push(stream.to_string());
        }
        if let Some(moved) = self.results.remove(&old) {
            self.results
                .entry((tenant.to_string(), to.to_string()))
                .or_default()
                .extend(moved);
        }
    }

    /// Every tenant and pathway's figures as of [`Indicators::as_of`]. `registry` gives
    /// the states to list (with 0) and which pathways enrol on a discharge.
    pub fn summaries(&self, registry: &PathwayRegistry) -> Vec<PathwaySummary> {
        let as_of = self.as_of.unwrap_or(Timestamp::UNIX_EPOCH);
        let mut out: BTreeMap<Key, PathwaySummary> = BTreeMap::new();
        let latest: BTreeMap<&str, _> = registry
            .latest()
            .into_iter()
            .map(|p| (p.id.as_str(), p.clone()))
            .collect();
        let entry = |out: &mut BTreeMap<Key, PathwaySummary>, key: &Key| {
            out.entry(key.clone())
                .or_insert_with(|| {
                    let mut s = PathwaySummary {
                        tenant: key.0.clone(),
                        pathway: key.1.clone(),
                        ..PathwaySummary::default()
                    };
                    if let Some(p) = latest.get(key.1.as_str()) {
                        for (i, t) in p.tracks.iter().enumerate() {
                            let Ok(i) = u16::try_from(i) else { continue };
                            let id = parcours_core::model::TrackId(i);
                            for st in p.reachable_states(id) {
                                s.states.insert((t.name.to_string(), st.to_string()), 0);
                            }
                        }
                    }
                    for st in ["pending", "active", "completed", "closed"] {
                        s.statuses.insert(st.into(), 0);
                    }
                    s
                })
                .clone()
        };
        // Counted under borrowed keys first, then written once per distinct key: a
        // scrape walks every instance and open task, and must not allocate for each.
        let mut by_key: HashMap<&Key, Vec<&Inst>> = HashMap::new();
        let mut statuses: HashMap<(&Key, &'static str), u64> = HashMap::new();
        let mut states: HashMap<(&Key, &str, &str), u64> = HashMap::new();
        for inst in self.instances.values() {
            by_key.entry(&inst.key).or_default().push(inst);
            *statuses.entry((&inst.key, inst.status)).or_default() += 1;
            if inst.status == "active" {
                for (t, st) in &inst.states {
                    *states
                        .entry((&inst.key, t.as_str(), st.as_str()))
                        .or_default() += 1;
                }
            }
        }
        // Make sure every key has an entry first, then mutate in place.
        for k in by_key.keys() {
            let s = entry(&mut out, k);
            out.insert((*k).clone(), s);
        }
        for ((key, status), n) in statuses {
            if let Some(s) = out.get_mut(key) {
                *s.statuses.entry(status.into()).or_default() += n;
            }
        }
        for ((key, track, state), n) in states {
            if let Some(s) = out.get_mut(key) {
                *s.states.entry((track.into(), state.into())).or_default() += n;
            }
        }
        for ((key, track, from, to), n) in &self.transitions {
            if let Some(s) = out.get_mut(key) {
                s.transitions
                    .insert((track.clone(), from.clone(), to.clone()), *n);
            }
        }
        for (key, n) in &self.guard_errors {
            if let Some(s) = out.get_mut(key) {
                s.guard_errors = *n;
            }
        }
        let mut tasks: HashMap<(&Key, &str, &'static str), u64> = HashMap::new();
        for t in self.tasks.values() {
            let status = if t.overdue { "overdue" } else { "open" };
            *tasks.entry((&t.key, t.role.as_str(), status)).or_default() += 1;
        }
        for ((key, role, status), n) in &self.closed_tasks {
            *tasks.entry((key, role.as_str(), status)).or_default() += n;
        }
        for ((key, role, status), n) in tasks {
            let Some(s) = out.get_mut(key) else {
                continue;
            };
            for st in TASK_STATUSES {
                s.tasks.entry((role.into(), st.into())).or_default();
            }
            *s.tasks.entry((role.into(), status.into())).or_default() += n;
        }
        let mut open_alerts: HashMap<(&Key, &str), u64> = HashMap::new();
        for a in self.alerts.values() {
            *open_alerts
                .entry((&a.key, a.severity.as_str()))
                .or_default() += 1;
        }
        for ((key, severity), n) in open_alerts {
            let Some(s) = out.get_mut(key) else {
                continue;
            };
            *s.alerts_raised.entry(severity.into()).or_default() += n;
            *s.alerts_open.entry(severity.into()).or_default() += n;
        }
        for ((key, severity), n) in &self.closed_alerts {
            let Some(s) = out.get_mut(key) else {
                continue;
            };
            *s.alerts_raised.entry(severity.clone()).or_default() += n;
            s.alerts_open.entry(severity.clone()).or_default();
        }
        for (key, acks) in &self.ack_seconds {
            if let Some(s) = out.get_mut(key) {
                s.alert_ack_seconds.extend_from_slice(acks);
            }
        }
        for s in out.values_mut() {
            s.alert_ack_seconds.sort_by(f64::total_cmp);
        }
        // Indicators, per key.
        for (key, s) in out.iter_mut() {
            let insts: &[&Inst] = by_key.get(key).map_or(&[], Vec::as_slice);
            for f in FOLLOW_UPS.iter().filter(|f| f.pathway == key.1) {
                let window = days(f.within_days);
                let (mut num, mut den) = (0, 0);
                let mut delays = Vec::new();
                for c in insts
                    .iter()
                    .flat_map(|i| &i.cycles)
                    .filter(|c| !c.cancelled)
                {
                    let done = c.done.get(f.name).copied();
                    if let Some(at) = done {
                        delays.push(secs(c.start, at) / 86_400.0);
                    }
                    let within = done.is_some_and(|at| at <= c.start + window);
                    if within || c.start + window <= as_of {
                        den += 1;
                        num += u64::from(within);
                    }
                }
                delays.sort_by(f64::total_cmp);
                s.delays_days.insert(f.name.into(), delays);
                s.ratios.push(Ratio {
                    name: f.name.into(),
                    numerator: num,
                    denominator: den,
                });
            }
            let on_discharge = latest
                .get(key.1.as_str())
                .is_some_and(|p| p.enrolment.on == EventType::EncounterDischarged);
            if on_discharge {
                let (mut num, mut den) = (0, 0);
                for c in insts
                    .iter()
                    .flat_map(|i| &i.cycles)
                    .filter(|c| !c.cancelled)
                {
                    if c.readmitted.is_some() || c.start + days(READMISSION_DAYS) <= as_of {
                        den += 1;
                        num += u64::from(c.readmitted.is_some());
                    }
                }
                s.ratios.push(Ratio {
                    name: READMISSION.into(),
                    numerator: num,
                    denominator: den,
                });
            }
            let active: Vec<&&Inst> = insts.iter().filter(|i| i.status == "active").collect();
            for sc in RESULT_COUNTS.iter().filter(|sc| sc.pathway == key.1) {
                let from = as_of - days(sc.window_days);
                let num = active
                    .iter()
                    .filter(|i| {
                        self.results
                            .get(&(key.0.clone(), i.subject.clone()))
                            .map_or(0, |v| {
                                v.iter()
                                    .filter(|(code, t)| {
                                        sc.codes.contains(&code.as_str())
                                            && *t > from
                                            && *t <= as_of
                                    })
                                    .count()
                            })
                            >= sc.min
                    })
                    .count();
                s.ratios.push(Ratio {
                    name: sc.name.into(),
                    numerator: num as u64,
                    denominator: active.len() as u64,
                });
            }
            let yearly: Vec<_> = YEARLY_TASKS.iter().filter(|y| y.1 == key.1).collect();
            if !yearly.is_empty() {
                let from = as_of - days(365);
                let done = |i: &Inst, codes: &[&str]| {
                    codes.iter().any(|c| {
                        i.completed
                            .get(*c)
                            .is_some_and(|v| v.iter().any(|t| *t > from && *t <= as_of))
                    })
                };
                for (name, _, codes) in &yearly {
                    let num = active.iter().filter(|i| done(i, codes)).count();
                    s.ratios.push(Ratio {
                        name: (*name).into(),
                        numerator: num as u64,
                        denominator: active.len() as u64,
                    });
                }
                let all = active
                    .iter()
                    .filter(|i| yearly.iter().all(|(_, _, codes)| done(i, codes)))
                    .count();
                s.ratios.push(Ratio {
                    name: YEARLY_ALL.into(),
                    numerator: all as u64,
                    denominator: active.len() as u64,
                });
            }
        }
        out.into_values().collect()
    }
}

/// The indicators as Prometheus metrics, in their own registry (one per log).
#[derive(Debug)]
pub struct DomainMetrics {
    registry: Registry,
    instances: IntGaugeVec,
    in_state: IntGaugeVec,
    transitions: IntCounterVec,
    guard_errors: IntCounterVec,
    tasks: IntGaugeVec,
    alerts_raised: IntCounterVec,
    alerts_open: IntGaugeVec,
    alert_ack: HistogramVec,
    ratio: prometheus::GaugeVec,
    patients: IntGaugeVec,
    delay: HistogramVec,
    position: prometheus::IntGauge,
}

impl Default for DomainMetrics {
    fn default() -> Self {
        DomainMetrics::new()
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

const TP: &[&str] = &["tenant", "pathway"];

impl DomainMetrics {
    /// The metrics, registered in a new registry.
    pub fn new() -> DomainMetrics {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let hist = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid metric definition"),
            )
        };
        let day = 86_400.0;
        DomainMetrics {
            instances: gauge(
                "parcours_instances",
                "Pathway instances by status (pending, active, completed, closed)",
                &["tenant", "pathway", "status"],
            ),
            in_state: gauge(
                "parcours_instances_in_state",
                "Active pathway instances by the current state of each track",
                &["tenant", "pathway", "track", "state"],
            ),
            transitions: counter(
                "parcours_transitions_total",
                "State transitions taken, by track and states",
                &["tenant", "pathway", "track", "from", "to"],
            ),
            guard_errors: counter(
                "parcours_guard_errors_total",
                "Guards that failed at run time (counted as false)",
                TP,
            ),
            tasks: gauge(
                "parcours_pathway_tasks",
                "Tasks by role and status (on_time, late, not_needed, not_done, open, overdue)",
                &["tenant", "pathway", "role", "status"],
            ),
            alerts_raised: counter(
                "parcours_alerts_raised_total",
                "Alerts raised, by severity",
                &["tenant", "pathway", "severity"],
            ),
            alerts_open: gauge(
                "parcours_alerts_open",
                "Alerts raised and not yet acknowledged, by severity",
                &["tenant", "pathway", "severity"],
            ),
            alert_ack: hist(
                "parcours_alert_ack_seconds",
                "Time from an alert to its acknowledgement (clinical time)",
                TP,
                vec![
                    300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, day, 2.0 * day,
                    7.0 * day,
                ],
            ),
            ratio: reg(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "parcours_indicator_ratio",
                        "Pathway indicators: the share of patients (or discharges) meeting them, 0 to 1",
                    ),
                    &["tenant", "pathway", "indicator"],
                )
                .expect("valid metric definition"),
            ),
            patients: gauge(
                "parcours_indicator_patients",
                "Numerator and denominator of each pathway indicator",
                &["tenant", "pathway", "indicator", "group"],
            ),
            delay: hist(
                "parcours_indicator_delay_seconds",
                "Follow-up indicators: time from discharge to the follow-up task's completion",
                &["tenant", "pathway", "indicator"],
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 10.0, 14.0, 21.0, 30.0, 60.0]
                    .iter()
                    .map(|d| d * day)
                    .collect(),
            ),
            position: reg(
                &r,
                prometheus::IntGauge::new(
                    "parcours_indicators_log_position",
                    "Log position the indicators have folded up to",
                )
                .expect("valid metric definition"),
            ),
            registry: r,
        }
    }

    /// Set only the fold's position (while it catches up with a long log, the other
    /// metrics are left out rather than shown partial).
    pub fn export_position(&self, fold: &Indicators) {
        self.position
            .set(i64::try_from(fold.position()).unwrap_or(i64::MAX));
    }

    /// Set every metric from the fold.
    pub fn export(&mut self, fold: &mut Indicators, registry: &PathwayRegistry) {
        self.position.set(fold.position() as i64);
        self.observe(fold);
        self.instances.reset();
        self.in_state.reset();
        self.tasks.reset();
        self.alerts_open.reset();
        self.ratio.reset();
        self.patients.reset();
        for s in fold.summaries(registry) {
            let (t, p) = (s.tenant.as_str(), s.pathway.as_str());
            for (status, n) in &s.statuses {
                self.instances
                    .with_label_values(&[t, p, status])
                    .set(*n as i64);
            }
            for ((track, state), n) in &s.states {
                self.in_state
                    .with_label_values(&[t, p, track, state])
                    .set(*n as i64);
            }
            for ((track, from, to), n) in &s.transitions {
                let c = self.transitions.with_label_values(&[t, p, track, from, to]);
                c.inc_by(n.saturating_sub(c.get()));
            }
            let c = self.guard_errors.with_label_values(&[t, p]);
            c.inc_by(s.guard_errors.saturating_sub(c.get()));
            for ((role, status), n) in &s.tasks {
                self.tasks
                    .with_label_values(&[t, p, role, status])
                    .set(*n as i64);
            }
            for (sev, n) in &s.alerts_raised {
                let c = self.alerts_raised.with_label_values(&[t, p, sev]);
                c.inc_by(n.saturating_sub(c.get()));
            }
            for (sev, n) in &s.alerts_open {
                self.alerts_open
                    .with_label_values(&[t, p, sev])
                    .set(*n as i64);
            }
            for r in &s.ratios {
                if let Some(v) = r.share() {
                    self.ratio.with_label_values(&[t, p, &r.name]).set(v);
                }
                self.patients
                    .with_label_values(&[t, p, &r.name, "numerator"])
                    .set(r.numerator as i64);
                self.patients
                    .with_label_values(&[t, p, &r.name, "denominator"])
                    .set(r.denominator as i64);
            }
        }
    }

    /// Observe the fold's new histogram values (handed over: the fold forgets them).
    fn observe(&mut self, fold: &mut Indicators) {
        for ((t, p), indicator, v) in fold.observations.drain(..) {
            match indicator {
                None => self
                    .alert_ack
                    .with_label_values(&[t.as_str(), &p])
                    .observe(v),
                Some(name) => self
                    .delay
                    .with_label_values(&[t.as_str(), &p, name])
                    .observe(v),
            }
        }
    }

    /// The metric families.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parcours_core::events::{Event, EventData, data};
    use parcours_core::state::Recorded;

    use super::*;

    const TENANT: &str = "cpts-a";

    fn registry() -> PathwayRegistry {
        let mut r = PathwayRegistry::new();
        for file in ["heart-failure.yaml", "type2-diabetes.yaml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../pathways")
                .join(file);
            let loaded = parcours_lang::load_file(&path).expect("readable");
            r.add(loaded.pathway.expect("compiles"));
        }
        r
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn rec(n: u128, when: &str, change: Change) -> Recorded {
        Recorded {
            id: uuid::Uuid::from_u128(n),
            cause: Arc::from(format!("cause-{n}")),
            rule: None,
            at: at(when),
            change,
        }
    }

    fn enrolled(pathway: &str, subject: &str) -> Change {
        Change::Enrolled {
            pathway_id: pathway.into(),
            pathway_version: 1,
            tenant: TENANT.into(),
            subject: subject.into(),
            key: None,
        }
    }

    fn event(id: &str, subject: &str, when: &str, data: EventData) -> Event {
        Event {
            id: id.into(),
            tenant: TENANT.into(),
            source: "test".into(),
            subject: subject.into(),
            occurred_at: at(when),
            recorded_at: None,
            data,
        }
    }

    /// An inbound event as the log holds it.
    fn logged(e: &Event) -> StoredRecord {
        StoredRecord {
            position: 1,
            stream: codec::inbound_stream(&e.tenant, &e.subject),
            version: 1,
            recorded_at: e.occurred_at,
            record: codec::encode_inbound(e).expect("encodes"),
        }
    }

    fn ratio(ind: &Indicators, pathway: &str, name: &str) -> (u64, u64) {
        let summaries = ind.summaries(&registry());
        let s = summaries
            .iter()
            .find(|s| s.pathway == pathway)
            .expect("pathway summary");
        let r = s.ratios.iter().find(|r| r.name == name).expect("ratio");
        (r.numerator, r.denominator)
    }

    #[test]
    fn a_rekeyed_instance_counts_under_its_surviving_subject() {
        let mut ind = Indicators::new();
        // Heart failure: discharged under the retired key, merged, readmitted under the
        // surviving key within 30 days.
        ind.instance(
            "hf-1",
            TENANT,
            "p-old",
            rec(
                1,
                "2026-03-01T10:00:00Z",
                enrolled("heart-failure", "p-old"),
            ),
        );
        ind.instance(
            "hf-1",
            TENANT,
            "p-new",
            rec(
                2,
                "2026-03-05T10:00:00Z",
                Change::Rekeyed {
                    from: "p-old".into(),
                    to: "p-new".into(),
                },
            ),
        );
        ind.apply(&logged(&event(
            "adm-1",
            "p-new",
            "2026-03-10T10:00:00Z",
            EventData::EncounterAdmitted(data::EncounterAdmitted {
                encounter_id: "V2".into(),
                class: "inpatient".into(),
                facility: None,
            }),
        )));
        // A later admission under the retired key is no longer this instance's.
        ind.apply(&logged(&event(
            "adm-2",
            "p-old",
            "2026-03-02T10:00:00Z",
            EventData::EncounterAdmitted(data::EncounterAdmitted {
                encounter_id: "V3".into(),
                class: "inpatient".into(),
                facility: None,
            }),
        )));
        assert_eq!(ind.instances["hf-1"].subject, "p-new");
        assert_eq!(
            ind.instances["hf-1"].cycles[0].readmitted,
            Some(at("2026-03-10T10:00:00Z"))
        );
        assert_eq!(ratio(&ind, "heart-failure", READMISSION), (1, 1));

        // Diabetes: HbA1c results before the merge under the retired key and after it
        // under the surviving key are one patient's three results.
        ind.instance(
            "t2d-1",
            TENANT,
            "p-b-old",
            rec(
                3,
                "2026-01-01T10:00:00Z",
                enrolled("type2-diabetes", "p-b-old"),
            ),
        );
        let hba1c = |id: &str, subject: &str, when: &str| {
            event(
                id,
                subject,
                when,
                EventData::ObservationRecorded(data::ObservationRecorded {
                    code: "4548-4".into(),
                    value: Some(7.1),
                    unit: Some("%".into()),
                    status: "final".into(),
                    ..Default::default()
                }),
            )
        };
        ind.apply(&logged(&hba1c("o-1", "p-b-old", "2026-01-02T10:00:00Z")));
        ind.instance(
            "t2d-1",
            TENANT,
            "p-b-new",
            rec(
                4,
                "2026-02-01T10:00:00Z",
                Change::Rekeyed {
                    from: "p-b-old".into(),
                    to: "p-b-new".into(),
                },
            ),
        );
        ind.apply(&logged(&hba1c("o-2", "p-b-new", "2026-03-01T10:00:00Z")));
        assert_eq!(
            ratio(&ind, "type2-diabetes", "hba1c_3_in_12_months"),
            (0, 1)
        );
        ind.apply(&logged(&hba1c("o-3", "p-b-new", "2026-03-20T10:00:00Z")));
        assert_eq!(
            ratio(&ind, "type2-diabetes", "hba1c_3_in_12_months"),
            (1, 1)
        );
        assert!(
            !ind.by_patient
                .contains_key(&(TENANT.into(), "p-b-old".into()))
        );
        assert_eq!(
            ind.by_patient[&(TENANT.to_string(), "p-b-new".to_string())],
            ["t2d-1"]
        );
    }

    fn task(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    fn requested(n: u128, role: &str, due: &str) -> Change {
        Change::TaskRequested {
            task_id: task(n),
            code: "gp-visit".into(),
            role: role.into(),
            title: "GP visit".into(),
            due_at: at(due),
            priority: parcours_core::model::Priority::Routine,
        }
    }

    fn closed(n: u128, outcome: TaskOutcome) -> Change {
        Change::TaskClosed {
            task_id: task(n),
            code: "gp-visit".into(),
            outcome,
            done: outcome != TaskOutcome::CouldNotBeDone,
        }
    }

    /// The fold keeps what is open, not the history: a closed task or alert is counted
    /// and forgotten, results and completions older than the longest window (a year
    /// before the latest instant) are dropped, and exported observations are handed
    /// over; every figure stays what it was.
    #[test]
    fn closed_work_is_counted_and_forgotten_and_old_instants_dropped() {
        let mut ind = Indicators::new();
        let overdue = |n: u128| Change::TaskOverdue {
            task_id: task(n),
            code: "gp-visit".into(),
            role: "gp".into(),
        };
        let alert = |n: u128| Uuid::from_u128(2000 + n);
        let raised = |n: u128| Change::AlertRaised {
            alert_id: alert(n),
            code: "weight-gain".into(),
            severity: parcours_core::model::Severity::High,
            role: "nurse".into(),
            message: "weight gain".into(),
        };
        let history = [
            ("2026-03-01T10:00:00Z", enrolled("heart-failure", "p-1")),
            (
                "2026-03-01T10:00:00Z",
                requested(1, "gp", "2026-03-08T10:00:00Z"),
            ),
            (
                "2026-03-01T10:00:00Z",
                requested(2, "gp", "2026-03-08T10:00:00Z"),
            ),
            (
                "2026-03-01T10:00:00Z",
                requested(3, "nurse", "2026-03-08T10:00:00Z"),
            ),
            (
                "2026-03-01T10:00:00Z",
                requested(4, "nurse", "2026-03-08T10:00:00Z"),
            ),
            (
                "2026-03-01T10:00:00Z",
                requested(5, "gp", "2026-03-03T10:00:00Z"),
            ),
            ("2026-03-05T10:00:00Z", closed(1, TaskOutcome::Completed)),
            ("2026-03-09T10:00:00Z", closed(2, TaskOutcome::Completed)),
            ("2026-03-09T10:00:00Z", closed(3, TaskOutcome::NotNeeded)),
            (
                "2026-03-09T10:00:00Z",
                closed(4, TaskOutcome::CouldNotBeDone),
            ),
            ("2026-03-04T10:00:00Z", overdue(5)),
            // Closed twice, or overdue after closing: still one closed task.
            ("2026-03-10T10:00:00Z", closed(1, TaskOutcome::NotNeeded)),
            ("2026-03-10T10:00:00Z", overdue(2)),
            ("2026-03-06T08:00:00Z", raised(1)),
            ("2026-03-06T08:00:00Z", raised(2)),
            (
                "2026-03-06T08:30:00Z",
                Change::AlertClosed {
                    alert_id: alert(1),
                    code: "weight-gain".into(),
                },
            ),
        ];
        for (n, (when, change)) in (1..).zip(history) {
            ind.instance("hf-1", TENANT, "p-1", rec(n, when, change));
        }
        assert_eq!(ind.tasks.len(), 1, "only the open task is kept");
        assert_eq!(ind.alerts.len(), 1, "only the open alert is kept");
        let summaries = ind.summaries(&registry());
        let s = summaries
            .iter()
            .find(|s| s.pathway == "heart-failure")
            .expect("summary");
        let tasks = |role: &str, status: &str| s.tasks[&(role.to_string(), status.to_string())];
        assert_eq!(tasks("gp", "on_time"), 1);
        assert_eq!(tasks("gp", "late"), 1);
        assert_eq!(tasks("gp", "overdue"), 1);
        assert_eq!(tasks("gp", "open"), 0);
        assert_eq!(tasks("nurse", "not_needed"), 1);
        assert_eq!(tasks("nurse", "not_done"), 1);
        assert_eq!(
            tasks("nurse", "open"),
            0,
            "every status of a role is listed"
        );
        assert_eq!(s.alerts_raised["high"], 2);
        assert_eq!(s.alerts_open["high"], 1);
        assert_eq!(s.alert_ack_seconds, [1800.0]);

        // Observations are handed to the histograms once.
        let mut metrics = DomainMetrics::new();
        let hf_key = [TENANT, "heart-failure"];
        metrics.export(&mut ind, &registry());
        metrics.export(&mut ind, &registry());
        assert!(ind.observations.is_empty());
        assert_eq!(
            metrics
                .alert_ack
                .with_label_values(&hf_key)
                .get_sample_count(),
            1
        );

        // Diabetes over three years: a result a quarter. Only the last year's stay.
        ind.instance(
            "t2d-1",
            TENANT,
            "p-2",
            rec(
                20,
                "2024-01-01T10:00:00Z",
                enrolled("type2-diabetes", "p-2"),
            ),
        );
        let mut when = at("2024-01-15T10:00:00Z");
        for i in 0..12 {
            ind.apply(&logged(&event(
                &format!("o-{i}"),
                "p-2",
                &when.to_string(),
                EventData::ObservationRecorded(data::ObservationRecorded {
                    code: "4548-4".into(),
                    value: Some(7.0),
                    unit: Some("%".into()),
                    status: "final".into(),
                    ..Default::default()
                }),
            )));
            when += days(91);
        }
        let kept = &ind.results[&(TENANT.to_string(), "p-2".to_string())];
        assert!(
            (4..=5).contains(&kept.len()),
            "a year of quarterly results kept, not three: {kept:?}"
        );
        assert_eq!(
            ratio(&ind, "type2-diabetes", "hba1c_3_in_12_months"),
            (1, 1)
        );
        // No indicator looks further back than what is kept.
        assert!(
            RESULT_COUNTS
                .iter()
                .all(|r| r.window_days <= LONGEST_WINDOW_DAYS)
        );
    }

    #[test]
    fn of_inbound_events_only_results_and_admissions_are_read() {
        let mut ind = Indicators::new();
        ind.instance(
            "hf-1",
            TENANT,
            "p-1",
            rec(1, "2026-03-01T10:00:00Z", enrolled("heart-failure", "p-1")),
        );
        // A discharge is not read: its record's clinical time is enough (a payload that
        // does not decode shows it was not decoded).
        let mut discharge = logged(&event(
            "dis-1",
            "p-1",
            "2026-03-02T10:00:00Z",
            EventData::ConsentGiven(data::ConsentGiven::default()),
        ));
        discharge.record.record_type = EventType::EncounterDischarged.as_str().into();
        discharge.record.payload = b"not json".to_vec();
        ind.apply(&discharge);
        assert_eq!(ind.undecodable(), 0);
        assert_eq!(ind.as_of(), Some(at("2026-03-02T10:00:00Z")));
        // A result is read: one that does not decode is counted and skipped.
        let mut result = discharge.clone();
        result.record.record_type = EventType::ObservationRecorded.as_str().into();
        result.record.occurred_at = at("2026-03-03T10:00:00Z");
        ind.apply(&result);
        assert_eq!(ind.undecodable(), 1);
        assert_eq!(ind.as_of(), Some(at("2026-03-03T10:00:00Z")));
        // An admission is read: an inpatient one within 30 days is a readmission, an
        // outpatient one is not.
        let admission = |id: &str, when: &str, class: &str| {
            logged(&event(
                id,
                "p-1",
                when,
                EventData::EncounterAdmitted(data::EncounterAdmitted {
                    encounter_id: id.into(),
                    class: class.into(),
                    facility: None,
                }),
            ))
        };
        ind.apply(&admission("adm-1", "2026-03-04T10:00:00Z", "outpatient"));
        assert_eq!(ind.instances["hf-1"].cycles[0].readmitted, None);
        ind.apply(&admission("adm-2", "2026-03-05T10:00:00Z", "inpatient"));
        assert_eq!(
            ind.instances["hf-1"].cycles[0].readmitted,
            Some(at("2026-03-05T10:00:00Z"))
        );
        assert_eq!(ind.undecodable(), 1);
    }
}
