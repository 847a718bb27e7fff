//! Scenario tests for pathways: a patient's events at clinical times on a virtual clock,
//! with expectations after each step.
//!
//! The simulator is the core itself (route → decide → apply) plus a virtual timer
//! service: before each step, every timer due by then fires, in time order, as a
//! `timer.fired` event. Nothing here reads the wall clock, so a scenario gives the same
//! result every time.
//!
//! See `docs/pathway-language.md` ("Scenarios") for the file format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use jiff::{Timestamp, civil::DateTime};
use parcours_core::calendar::{self, ClinicalDuration};
use parcours_core::events::{Event, EventData, EventType, data};
use parcours_core::model::CompiledPathway;
use parcours_core::route::{Target, consent_before_enrolment, route};
use parcours_core::state::{Change, InstanceState, Recorded, Status};
use parcours_core::value::Scalar;
use parcours_core::{decide::instance_id_for, decide::timer_fired_event_id, decide_in_place};
use serde::Deserialize;

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub name: String,
    /// The pathway id under test.
    pub pathway: String,
    /// The virtual clock's start: `2026-03-02T10:00` (Europe/Paris) or an RFC 3339 instant.
    pub start: String,
    /// Tenant (default `cpts-demo`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Pseudonymous patient key (default `patient-1`).
    #[serde(default)]
    pub subject: Option<String>,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

/// One step: optionally an event, then expectations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// When: `+3d` after start, or an absolute time.
    pub at: String,
    /// Event type.
    #[serde(default)]
    pub event: Option<String>,
    /// Event payload.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// For task/handoff/alert answers: the code; the runner fills in the open item's id.
    #[serde(default)]
    pub task: Option<String>,
    /// See `task`.
    #[serde(default)]
    pub handoff: Option<String>,
    /// See `task`.
    #[serde(default)]
    pub alert: Option<String>,
    /// Event id (default: derived from the step number).
    #[serde(default)]
    pub id: Option<String>,
    /// A note for readers.
    #[serde(default)]
    pub note: Option<String>,
    /// What must hold after the step.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// A task (or other item) expectation: a code alone, or with details.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ItemExpect {
    /// Just the code.
    Code(String),
    /// Code and details.
    Detailed {
        /// Code.
        code: String,
        /// Role.
        #[serde(default)]
        role: Option<String>,
        /// Due time (`+7d` from start, or absolute).
        #[serde(default)]
        due: Option<String>,
        /// Outcome (for closed tasks).
        #[serde(default)]
        outcome: Option<String>,
        /// Severity (alerts).
        #[serde(default)]
        severity: Option<String>,
        /// Text the message must contain (alerts).
        #[serde(default)]
        message_contains: Option<String>,
    },
}

impl ItemExpect {
    fn code(&self) -> &str {
        match self {
            ItemExpect::Code(c) | ItemExpect::Detailed { code: c, .. } => c,
        }
    }
}

/// Expectations after a step. Lists are exact (order-insensitive) over what happened
/// since the previous step; an absent key is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Current state per track.
    #[serde(default)]
    pub state: Option<BTreeMap<String, String>>,
    /// `active`, `completed`, `closed`, or `none` (never enrolled).
    #[serde(default)]
    pub status: Option<String>,
    /// Closing reason.
    #[serde(default)]
    pub closed: Option<String>,
    /// Cycle number.
    #[serde(default)]
    pub cycle: Option<u32>,
    /// Tasks requested.
    #[serde(default)]
    pub tasks: Option<Vec<ItemExpect>>,
    /// Tasks that must be among those requested.
    #[serde(default)]
    pub tasks_include: Option<Vec<ItemExpect>>,
    /// Tasks that ended (with `outcome`).
    #[serde(default)]
    pub closed_tasks: Option<Vec<ItemExpect>>,
    /// Reminders sent, by task code.
    #[serde(default)]
    pub reminders: Option<Vec<String>>,
    /// Tasks that became overdue.
    #[serde(default)]
    pub overdue: Option<Vec<String>>,
    /// Escalations (`code` + `role`).
    #[serde(default)]
    pub escalations: Option<Vec<ItemExpect>>,
    /// Alerts raised.
    #[serde(default)]
    pub alerts: Option<Vec<ItemExpect>>,
    /// Alerts escalated, by code.
    #[serde(default)]
    pub alert_escalations: Option<Vec<ItemExpect>>,
    /// Handoffs requested, by code.
    #[serde(default)]
    pub handoffs: Option<Vec<String>>,
    /// Handoffs escalated, by code.
    #[serde(default)]
    pub handoff_escalations: Option<Vec<ItemExpect>>,
    /// Alerts that ended: a code (acknowledged) or `{code, outcome}` (`acknowledged`,
    /// `withdrawn`: closed by parcours when the instance restarted, completed or closed).
    #[serde(default)]
    pub closed_alerts: Option<Vec<ItemExpect>>,
    /// Handoffs that ended: a code (accepted) or `{code, outcome}` (`accepted`, `declined`,
    /// `withdrawn`).
    #[serde(default)]
    pub closed_handoffs: Option<Vec<ItemExpect>>,
    /// Open tasks now, by code.
    #[serde(default)]
    pub open_tasks: Option<Vec<String>>,
    /// Open alerts now (not acknowledged), by code.
    #[serde(default)]
    pub open_alerts: Option<Vec<String>>,
    /// Open handoffs now (not answered), by code.
    #[serde(default)]
    pub open_handoffs: Option<Vec<String>>,
    /// The `once_per_cycle` tasks done in the current cycle (not asked for again), by code.
    #[serde(default)]
    pub done_this_cycle: Option<Vec<String>>,
    /// Variable values now.
    #[serde(default)]
    pub vars: Option<BTreeMap<String, serde_json::Value>>,
    /// Parameter values now.
    #[serde(default)]
    pub params: Option<BTreeMap<String, serde_json::Value>>,
    /// Nothing published (tasks, alerts, handoffs) since the previous step.
    #[serde(default)]
    pub no_effects: bool,
    /// Number of guard errors since the previous step (default: must be 0).
    #[serde(default)]
    pub guard_errors: Option<usize>,
    /// Substrings of `input.ignored` reasons since the previous step.
    #[serde(default)]
    pub ignored: Option<Vec<String>>,
}

/// The outcome of one scenario.
#[derive(Debug)]
pub struct Outcome {
    /// The file.
    pub file: PathBuf,
    /// The scenario's name.
    pub name: String,
    /// Each failed expectation, readable on its own.
    pub failures: Vec<String>,
}

impl Outcome {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why a scenario could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// IO.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not a valid scenario file.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
}

/// Parse a scenario file.
pub fn parse(path: &Path) -> Result<Scenario, ScenarioError> {
    let src =
        std::fs::read_to_string(path).map_err(|e| ScenarioError::Io(path.to_path_buf(), e))?;
    serde_saphyr::from_str(&src).map_err(|e| {
        let msg = e.to_string();
        let mut line = msg
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid scenario")
            .trim_start_matches("error: ")
            .to_string();
        // The location comes first already; drop the library's "line N column M: ".
        if line.starts_with("line ")
            && let Some(i) = line.find(": ")
        {
            line = line[i + 2..].to_string();
        }
        let loc = e
            .location()
            .map(|l| format!("{}:{}: ", l.line(), l.column()))
            .unwrap_or_default();
        ScenarioError::Parse(
            path.to_path_buf(),
            format!("{loc}{line} (see \"Scenarios\" in docs/pathway-language.md)"),
        )
    })
}

/// Scenario files under `dir` (recursively), sorted.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parse a time: `+7d` (after `start`, civil arithmetic in Europe/Paris), a civil
/// date-time (Europe/Paris), or an RFC 3339 instant.
pub fn parse_time(s: &str, start: Option<Timestamp>) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        let start = start.ok_or("a relative time needs a start")?;
        // `+6mo1d` reads like a pathway duration (largest unit first, civil parts together).
        if let Ok(d) = rel.parse::<ClinicalDuration>() {
            return Ok(calendar::add(start, d));
        }
        // Otherwise a sum in any order (`+20d2mo`), applied part by part.
        let mut t = start;
        let mut rest = rel;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit_end = rest[digits..]
                .find(|c: char| c.is_ascii_digit())
                .map_or(rest.len(), |i| digits + i);
            let part = &rest[..unit_end];
            let d: ClinicalDuration = part.parse().map_err(|e| format!("`{s}`: {e}"))?;
            t = calendar::add(t, d);
            rest = &rest[unit_end..];
        }
        return Ok(t);
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(z) = s.parse::<jiff::ZonedDateTime>() {
        return Ok(z.timestamp());
    }
    let dt: DateTime = s
        .parse()
        .map_err(|e| format!("`{s}` is not a time (+7d, 2026-03-02T10:00, or RFC 3339): {e}"))?;
    dt.to_zoned_datetime(calendar::paris())
        .map(|z| z.timestamp())
        .map_err(|e| format!("`{s}`: {e}"))
}

/// A virtual-clock simulator of one patient on one pathway: the core plus a timer service.
#[derive(Debug)]
pub struct Simulator<'p> {
    pathway: &'p CompiledPathway,
    tenant: String,
    subject: String,
    instances: Vec<InstanceState>,
    streams: Vec<Vec<Recorded>>,
    log: Vec<Recorded>,
    /// The consents delivered so far (what [`consent_before_enrolment`] reads).
    consents: Vec<Event>,
    now: Timestamp,
    seq: u64,
}

type Sim<'p> = Simulator<'p>;

impl<'p> Simulator<'p> {
    /// A simulator starting at `start`.
    pub fn new(
        pathway: &'p CompiledPathway,
        tenant: &str,
        subject: &str,
        start: Timestamp,
    ) -> Simulator<'p> {
        Simulator {
            pathway,
            tenant: tenant.to_string(),
            subject: subject.to_string(),
            instances: Vec::new(),
            streams: Vec::new(),
            log: Vec::new(),
            consents: Vec::new(),
            now: start,
            seq: 0,
        }
    }

    /// The recorded events of instance `i` (its stream), in order.
    pub fn stream(&self, i: usize) -> &[Recorded] {
        self.streams.get(i).map_or(&[], Vec::as_slice)
    }

    /// The patient's instances (oldest first).
    pub fn instances(&self) -> &[InstanceState] {
        &self.instances
    }

    /// Every recorded instance event so far, in order.
    pub fn log(&self) -> &[Recorded] {
        &self.log
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// An event of this simulator's patient (its tenant and subject) from a scenario:
    /// `data` is the payload of type `ty` as JSON.
    pub fn event(
        &self,
        id: &str,
        at: Timestamp,
        ty: EventType,
        data: serde_json::Value,
    ) -> Result<Event, String> {
        Ok(Event {
            id: id.to_owned(),
            tenant: self.tenant.clone(),
            source: "parcours/scenario".into(),
            subject: self.subject.clone(),
            occurred_at: at,
            recorded_at: None,
            data: EventData::from_json(ty, data)
                .map_err(|e| format!("invalid `{ty}` data: {e}"))?,
        })
    }

    /// Route an event to the patient's instances and apply what `decide` returns; a new
    /// instance gets the consent given before its enrolment, as the runtime hands it over.
    pub fn deliver(&mut self, event: &Event) -> Result<(), String> {
        let refs: Vec<&InstanceState> = self.instances.iter().collect();
        let targets = route(&[self.pathway], &refs, event);
        let consent = targets
            .iter()
            .any(|t| matches!(t, Target::Enrol { .. }))
            .then(|| consent_before_enrolment(self.pathway, &refs, &self.consents, event))
            .flatten();
        for t in targets {
            let new = matches!(t, Target::Enrol { .. });
            let idx = match t {
                Target::Existing(i) => i,
                Target::Enrol { .. } => {
                    self.instances.push(InstanceState::pending(instance_id_for(
                        &self.pathway.id,
                        event,
                    )));
                    self.streams.push(Vec::new());
                    self.instances.len() - 1
                }
            };
            for e in std::iter::once(event).chain(consent.as_ref().filter(|_| new)) {
                let decision = decide_in_place(self.pathway, &mut self.instances[idx], e)
                    .map_err(|e| e.to_string())?;
                self.streams[idx].extend(decision.events.iter().cloned());
                self.log.extend(decision.events);
            }
        }
        if event.is_consent() {
            self.consents.push(event.clone());
        }
        Ok(())
    }

    /// Fire every timer due at or before `until`, in time order.
    pub fn advance(&mut self, until: Timestamp) -> Result<(), String> {
        let mut guard = 0;
        loop {
            let next = self
                .instances
                .iter()
                .flat_map(|i| {
                    i.timers
                        .iter()
                        .map(move |(id, t)| (t.fire_at, id, i.instance_id.clone()))
                })
                .filter(|(at, _, _)| *at <= until)
                .min();
            let Some((at, timer_id, instance_id)) = next else {
                break;
            };
            guard += 1;
            if guard > 100_000 {
                return Err("more than 100000 timers fired: a recurring timer without end?".into());
            }
            self.now = at.max(self.now);
            let ev = Event {
                id: timer_fired_event_id(&timer_id.to_string()),
                tenant: self.tenant.clone(),
                source: "parcours/timers".into(),
                subject: self.subject.clone(),
                occurred_at: at,
                recorded_at: None,
                data: EventData::TimerFired(data::TimerFired {
                    timer_id: timer_id.to_string(),
                    instance_id: instance_id.to_string(),
                }),
            };
            self.deliver(&ev)?;
        }
        self.now = until.max(self.now);
        Ok(())
    }

    /// The active instance, else the latest one.
    pub fn current(&self) -> Option<&InstanceState> {
        self.instances
            .iter()
            .rev()
            .find(|i| i.is_active())
            .or_else(|| self.instances.last())
    }

    /// The id of an open task, handoff or alert (`kind`) with this code.
    pub fn open_id(&self, kind: &str, code: &str) -> Option<String> {
        self.instances.iter().rev().find_map(|i| match kind {
            // With several open, the one due first.
            "task" => i
                .tasks
                .iter()
                .filter(|(_, t)| &*t.code == code)
                .min_by_key(|(id, t)| (t.due_at, *id))
                .map(|(id, _)| id.to_string()),
            "handoff" => i
                .handoffs
                .iter()
                .find(|(_, t)| &*t.code == code)
                .map(|(id, _)| id.to_string()),
            _ => i
                .alerts
                .iter()
                .find(|(_, t)| &*t.code == code)
                .map(|(id, _)| id.to_string()),
        })
    }
}

/// Run one scenario against its pathway.
pub fn run(file: &Path, scenario: &Scenario, pathway: &CompiledPathway) -> Outcome {
    let mut failures = Vec::new();
    let outcome = |failures: Vec<String>| Outcome {
        file: file.to_path_buf(),
        name: scenario.name.clone(),
        failures,
    };
    let start = match parse_time(&scenario.start, None) {
        Ok(t) => t,
        Err(e) => return outcome(vec![format!("start: {e}")]),
    };
    let mut sim = Simulator::new(
        pathway,
        scenario.tenant.as_deref().unwrap_or("cpts-demo"),
        scenario.subject.as_deref().unwrap_or("patient-1"),
        start,
    );
    for (i, step) in scenario.steps.iter().enumerate() {
        let n = i + 1;
        let what = step.event.as_deref().unwrap_or("clock");
        let ctx = format!("step {n} (at {}, {what})", step.at);
        let at = match parse_time(&step.at, Some(start)) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{ctx}: {e}"));
                break;
            }
        };
        if at < sim.now {
            failures.push(format!("{ctx}: steps must go forward in time"));
            break;
        }
        let mark = sim.log.len();
        if let Err(e) = sim.advance(at) {
            failures.push(format!("{ctx}: {e}"));
            break;
        }
        let mut delivered = None;
        if let Some(ty) = &step.event {
            match build_event(&sim, step, ty, at, n) {
                Ok(ev) => {
                    sim.seq += 1;
                    if let Err(e) = sim.deliver(&ev) {
                        failures.push(format!("{ctx}: decide failed: {e}"));
                        break;
                    }
                    delivered = Some(ev);
                }
                Err(e) => {
                    failures.push(format!("{ctx}: {e}"));
                    break;
                }
            }
        }
        let since = &sim.log[mark..];
        let default = Expect::default();
        let expect = step.expect.as_ref().unwrap_or(&default);
        let seen = Seen {
            since,
            event: delivered.as_ref(),
        };
        check(&sim, pathway, start, &seen, expect, &ctx, &mut failures);
    }
    outcome(std::mem::take(&mut failures))
}

fn build_event(
    sim: &Sim<'_>,
    step: &Step,
    ty: &str,
    at: Timestamp,
    n: usize,
) -> Result<Event, String> {
    let ty: EventType = ty
        .parse()
        .map_err(|e: parcours_core::events::UnknownEventType| e.to_string())?;
    let mut data = step.data.clone().unwrap_or_else(|| serde_json::json!({}));
    let obj = data.as_object_mut().ok_or("`data` must be a mapping")?;
    for (kind, code, field) in [
        ("task", &step.task, "task_id"),
        ("handoff", &step.handoff, "handoff_id"),
        ("alert", &step.alert, "alert_id"),
    ] {
        if let Some(code) = code {
            let id = sim
                .open_id(kind, code)
                .ok_or_else(|| format!("no open {kind} `{code}` to answer"))?;
            obj.insert(field.into(), serde_json::Value::String(id));
            obj.insert("code".into(), serde_json::Value::String(code.clone()));
        }
    }
    let id = step
        .id
        .clone()
        .unwrap_or_else(|| format!("scenario-step-{n}"));
    sim.event(&id, at, ty, data)
}

/// `t` as an offset from `start` in the form scenarios are written in: whole civil days
/// (Europe/Paris) then the remaining hours and minutes, so it can be copied back as is.
fn fmt_time(t: Timestamp, start: Timestamp) -> String {
    let tz = calendar::paris();
    let (a, b) = (start.to_zoned_datetime(tz.clone()), t.to_zoned_datetime(tz));
    if t < start {
        return format!("{t}");
    }
    let mut days = 0i64;
    let mut cursor = a.clone();
    // Whole civil days first (cheap: scenarios span months, not centuries).
    while let Ok(next) = cursor.checked_add(jiff::Span::new().days(1)) {
        if next > b {
            break;
        }
        cursor = next;
        days += 1;
    }
    let rest = (b.timestamp().as_second() - cursor.timestamp().as_second()).max(0);
    let (h, m) = (rest / 3600, (rest % 3600) / 60);
    let mut s = format!("+{days}d");
    if h > 0 {
        s.push_str(&format!("{h}h"));
    }
    if m > 0 {
        s.push_str(&format!("{m}min"));
    }
    s
}

fn multiset_eq(mut a: Vec<String>, mut b: Vec<String>) -> bool {
    a.sort();
    b.sort();
    a == b
}

/// What a step produced: the records since the previous step and the step's own event.
struct Seen<'a> {
    since: &'a [Recorded],
    event: Option<&'a Event>,
}

impl Seen<'_> {
    /// How an alert or handoff closed by `r` ended, with its code.
    fn closed_item(&self, r: &Recorded) -> Option<(bool, String, &'static str)> {
        let answered = |id: String| match self.event.map(|e| &e.data) {
            Some(EventData::AlertAcknowledged(a)) => a.alert_id == id,
            Some(EventData::HandoffDeclined(h)) => h.handoff_id == id,
            _ => false,
        };
        match &r.change {
            Change::AlertClosed { alert_id, code } => Some((
                true,
                code.clone(),
                if answered(alert_id.to_string()) {
                    "acknowledged"
                } else {
                    "withdrawn"
                },
            )),
            Change::HandoffClosed {
                handoff_id,
                code,
                accepted,
            } => Some((
                false,
                code.clone(),
                if *accepted {
                    "accepted"
                } else if answered(handoff_id.to_string()) {
                    "declined"
                } else {
                    "withdrawn"
                },
            )),
            _ => None,
        }
    }
}

fn check(
    sim: &Sim<'_>,
    p: &CompiledPathway,
    start: Timestamp,
    seen: &Seen<'_>,
    e: &Expect,
    ctx: &str,
    failures: &mut Vec<String>,
) {
    let since = seen.since;
    let cur = sim.current();
    let mut fail = |msg: String| failures.push(format!("{ctx}: {msg}"));

    if let Some(want) = &e.status {
        let got = match cur.map(|c| &c.status) {
            None => "none",
            Some(Status::Pending) => "none",
            Some(Status::Active) => "active",
            Some(Status::Completed) => "completed",
            Some(Status::Closed { .. }) => "closed",
        };
        if got != want {
            fail(format!("expected status {want}, got {got}"));
        }
    }
    if let Some(want) = &e.closed {
        match cur.map(|c| &c.status) {
            Some(Status::Closed { reason }) if reason == want => {}
            other => fail(format!("expected closed ({want}), got {other:?}")),
        }
    }
    if let Some(want) = e.cycle {
        let got = cur.map_or(0, |c| c.cycle);
        if got != want {
            fail(format!("expected cycle {want}, got {got}"));
        }
    }
    if let Some(want) = &e.state {
        match cur {
            None => fail("expected a state but the patient is not enrolled".into()),
            Some(c) => {
                let now: BTreeMap<&str, &str> = c.current_states(p).into_iter().collect();
                for (track, state) in want {
                    match now.get(track.as_str()) {
                        Some(s) if s == state => {}
                        Some(s) => fail(format!(
                            "expected track `{track}` in `{state}`, it is in `{s}`"
                        )),
                        None => fail(format!("no track `{track}`")),
                    }
                }
            }
        }
    }

    let requested: Vec<(&str, &str, Timestamp)> = since
        .iter()
        .filter_map(|r| match &r.change {
            Change::TaskRequested {
                code, role, due_at, ..
            } => Some((&**code, &**role, *due_at)),
            _ => None,
        })
        .collect();
    let describe = |v: &[(&str, &str, Timestamp)]| {
        if v.is_empty() {
            return "none".to_string();
        }
        v.iter()
            .map(|(c, r, d)| format!("{c} ({r}, due {})", fmt_time(*d, start)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (exact, list) in [(true, &e.tasks), (false, &e.tasks_include)] {
        let Some(list) = list else { continue };
        let mut pool = requested.clone();
        let mut missing = Vec::new();
        for item in list {
            let pos = pool.iter().position(|(c, r, d)| {
                if *c != item.code() {
                    return false;
                }
                match item {
                    ItemExpect::Code(_) => true,
                    ItemExpect::Detailed { role, due, .. } => {
                        role.as_ref().is_none_or(|want| want == r)
                            && due.as_ref().is_none_or(|want| {
                                parse_time(want, Some(start)).is_ok_and(|t| t == *d)
                            })
                    }
                }
            });
            match pos {
                Some(i) => {
                    pool.remove(i);
                }
                None => missing.push(describe_item(item)),
            }
        }
        if !missing.is_empty() {
            fail(format!(
                "expected task(s) {} to be requested; requested: {}",
                missing.join(", "),
                describe(&requested)
            ));
        } else if exact && !pool.is_empty() {
            fail(format!(
                "unexpected task(s) requested: {} (add them to `tasks` or use `tasks_include`)",
                describe(&pool)
            ));
        }
    }
    if let Some(list) = &e.closed_tasks {
        let got: Vec<String> = since
            .iter()
            .filter_map(|r| match &r.change {
                Change::TaskClosed { code, outcome, .. } => {
                    Some(format!("{code}:{}", outcome_name(*outcome)))
                }
                _ => None,
            })
            .collect();
        let want: Vec<String> = list
            .iter()
            .map(|i| match i {
                ItemExpect::Code(c) => format!("{c}:completed"),
                ItemExpect::Detailed { code, outcome, .. } => {
                    format!("{code}:{}", outcome.as_deref().unwrap_or("completed"))
                }
            })
            .collect();
        if !multiset_eq(want.clone(), got.clone()) {
            fail(format!(
                "expected closed tasks [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    for (alerts, name, success, list) in [
        (true, "closed alerts", "acknowledged", &e.closed_alerts),
        (false, "closed handoffs", "accepted", &e.closed_handoffs),
    ] {
        let Some(list) = list else { continue };
        let got: Vec<String> = since
            .iter()
            .filter_map(|r| seen.closed_item(r))
            .filter(|(is_alert, _, _)| *is_alert == alerts)
            .map(|(_, code, outcome)| format!("{code}:{outcome}"))
            .collect();
        let want: Vec<String> = list
            .iter()
            .map(|i| match i {
                ItemExpect::Code(c) => format!("{c}:{success}"),
                ItemExpect::Detailed { code, outcome, .. } => {
                    format!("{code}:{}", outcome.as_deref().unwrap_or(success))
                }
            })
            .collect();
        if !multiset_eq(want.clone(), got.clone()) {
            fail(format!(
                "expected {name} [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    let codes_of = |f: &dyn Fn(&Change) -> Option<String>| -> Vec<String> {
        since.iter().filter_map(|r| f(&r.change)).collect()
    };
    let simple = [
        (
            "reminders",
            &e.reminders,
            codes_of(&|c| match c {
                Change::TaskReminded { code, .. } => Some(code.to_string()),
                _ => None,
            }),
        ),
        (
            "overdue",
            &e.overdue,
            codes_of(&|c| match c {
                Change::TaskOverdue { code, .. } => Some(code.to_string()),
                _ => None,
            }),
        ),
        (
            "handoffs",
            &e.handoffs,
            codes_of(&|c| match c {
                Change::HandoffRequested { code, .. } => Some(code.clone()),
                _ => None,
            }),
        ),
    ];
    for (name, want, got) in simple {
        if let Some(want) = want
            && !multiset_eq(want.clone(), got.clone())
        {
            fail(format!(
                "expected {name} [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    let escalations = [
        (
            "escalations",
            &e.escalations,
            codes_of(&|c| match c {
                Change::TaskEscalated { code, role, .. } => Some(format!("{code}->{role}")),
                _ => None,
            }),
        ),
        (
            "alert_escalations",
            &e.alert_escalations,
            codes_of(&|c| match c {
                Change::AlertEscalated { code, role, .. } => Some(format!("{code}->{role}")),
                _ => None,
            }),
        ),
        (
            "handoff_escalations",
            &e.handoff_escalations,
            codes_of(&|c| match c {
                Change::HandoffEscalated { code, role, .. } => Some(format!("{code}->{role}")),
                _ => None,
            }),
        ),
    ];
    for (name, want, got) in escalations {
        let Some(want) = want else { continue };
        if let Some(msg) = match_code_role(name, want, &got) {
            fail(msg);
        }
    }
    if let Some(list) = &e.alerts {
        let got: Vec<(&str, String, &str, &str)> = since
            .iter()
            .filter_map(|r| match &r.change {
                Change::AlertRaised {
                    code,
                    severity,
                    role,
                    message,
                    ..
                } => Some((
                    code.as_str(),
                    format!("{severity:?}").to_lowercase(),
                    role.as_str(),
                    message.as_str(),
                )),
                _ => None,
            })
            .collect();
        let mut pool = got.clone();
        let mut missing = Vec::new();
        for item in list {
            let pos = pool.iter().position(|(c, sev, r, m)| {
                *c == item.code()
                    && match item {
                        ItemExpect::Code(_) => true,
                        ItemExpect::Detailed {
                            role,
                            severity,
                            message_contains,
                            ..
                        } => {
                            role.as_ref().is_none_or(|w| w == r)
                                && severity.as_ref().is_none_or(|w| w == sev)
                                && message_contains
                                    .as_ref()
                                    .is_none_or(|w| m.contains(w.as_str()))
                        }
                    }
            });
            match pos {
                Some(i) => {
                    pool.remove(i);
                }
                None => missing.push(describe_item(item)),
            }
        }
        let desc = |v: &[(&str, String, &str, &str)]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|(c, s, r, m)| format!("{c} ({s}, {r}: \"{m}\")"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if !missing.is_empty() {
            fail(format!(
                "expected alert(s) {}; raised: {}",
                missing.join(", "),
                desc(&got)
            ));
        } else if !pool.is_empty() {
            fail(format!("unexpected alert(s): {}", desc(&pool)));
        }
    }
    // What is checked, the word for what was found, what the step wants, what is there.
    let now = [
        (
            "open tasks",
            "open",
            &e.open_tasks,
            cur.map(|c| c.tasks.values().map(|t| t.code.to_string()).collect()),
        ),
        (
            "open alerts",
            "open",
            &e.open_alerts,
            cur.map(|c| c.alerts.values().map(|a| a.code.to_string()).collect()),
        ),
        (
            "open handoffs",
            "open",
            &e.open_handoffs,
            cur.map(|c| c.handoffs.values().map(|h| h.code.to_string()).collect()),
        ),
        (
            "tasks done this cycle",
            "done",
            &e.done_this_cycle,
            cur.map(|c| p.done_tasks(c.done).map(|t| t.code.to_string()).collect()),
        ),
    ];
    for (what, found, want, got) in now {
        let Some(want) = want else { continue };
        let got: Vec<String> = got.unwrap_or_default();
        if !multiset_eq(want.clone(), got.clone()) {
            fail(format!(
                "expected {what} [{}], {found}: [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    for (kind, want) in [("variable", &e.vars), ("parameter", &e.params)] {
        let Some(want) = want else { continue };
        let Some(c) = cur else {
            fail(format!("expected {kind}s but the patient is not enrolled"));
            continue;
        };
        for (name, value) in want {
            let (decls, values): (&[parcours_core::model::VarDecl], Vec<Option<&Scalar>>) =
                if kind == "variable" {
                    (&p.vars, c.vars.iter().map(Option::as_ref).collect())
                } else {
                    (&p.params, c.params.iter().map(Some).collect())
                };
            let Some(i) = decls.iter().position(|d| &d.name == name) else {
                fail(format!("no {kind} `{name}`"));
                continue;
            };
            let got = values.get(i).copied().flatten();
            let expected = Scalar::from_json(decls[i].ty, value).ok();
            let equal = match (&expected, got) {
                (Some(Scalar::Double(a)), Some(Scalar::Double(b))) => (a - b).abs() < 1e-6,
                (a, b) => a.as_ref() == b,
            };
            if !equal {
                let got = got.map_or("unset".to_string(), |g| g.as_value().to_string());
                fail(format!("expected {kind} `{name}` = {value}, got {got}"));
            }
        }
    }
    let published = since.iter().filter(|r| {
        matches!(
            r.change.effect_kind(),
            Some(
                parcours_core::state::EffectKind::Task
                    | parcours_core::state::EffectKind::Alert
                    | parcours_core::state::EffectKind::Handoff
            )
        )
    });
    if e.no_effects {
        let names: Vec<&str> = published.map(|r| r.change.type_name()).collect();
        if !names.is_empty() {
            fail(format!("expected no effects, got {}", names.join(", ")));
        }
    }
    let guard_errors: Vec<String> = since
        .iter()
        .filter_map(|r| match &r.change {
            Change::GuardFailed { message } => Some(format!(
                "{} ({})",
                message,
                r.rule.as_deref().unwrap_or("?")
            )),
            _ => None,
        })
        .collect();
    let want_errors = e.guard_errors.unwrap_or(0);
    if guard_errors.len() != want_errors {
        fail(format!(
            "expected {want_errors} guard error(s), got {}: {}",
            guard_errors.len(),
            guard_errors.join("; ")
        ));
    }
    if let Some(want) = &e.ignored {
        let got: Vec<&str> = since
            .iter()
            .filter_map(|r| match &r.change {
                Change::InputIgnored { reason } => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        for w in want {
            if !got.iter().any(|g| g.contains(w.as_str())) {
                fail(format!(
                    "expected an ignored input mentioning `{w}`, got [{}]",
                    got.join("; ")
                ));
            }
        }
    }
}

/// Match `{code, role?}` expectations against `code->role` strings, exactly (as multisets);
/// an expectation without a role matches any role. `None` when they match.
fn match_code_role(name: &str, want: &[ItemExpect], got: &[String]) -> Option<String> {
    let mut pool: Vec<&str> = got.iter().map(String::as_str).collect();
    let mut missing = Vec::new();
    for w in want {
        let (code, role) = match w {
            ItemExpect::Code(c) => (c.as_str(), None),
            ItemExpect::Detailed { code, role, .. } => (code.as_str(), role.as_deref()),
        };
        let pos = pool.iter().position(|g| {
            let (gc, gr) = g.split_once("->").unwrap_or((g, ""));
            gc == code && role.is_none_or(|r| r == gr)
        });
        match pos {
            Some(i) => {
                pool.remove(i);
            }
            None => missing.push(match role {
                Some(r) => format!("{code}->{r}"),
                None => code.to_string(),
            }),
        }
    }
    if missing.is_empty() && pool.is_empty() {
        return None;
    }
    let got = if got.is_empty() {
        "none".to_string()
    } else {
        got.join(", ")
    };
    Some(if missing.is_empty() {
        format!("unexpected {name}: {} (got {got})", pool.join(", "))
    } else {
        format!("expected {name} [{}]; got {got}", missing.join(", "))
    })
}

fn describe_item(i: &ItemExpect) -> String {
    match i {
        ItemExpect::Code(c) => c.clone(),
        ItemExpect::Detailed {
            code, role, due, ..
        } => {
            let mut s = code.clone();
            let mut extra = Vec::new();
            if let Some(r) = role {
                extra.push(r.clone());
            }
            if let Some(d) = due {
                extra.push(format!("due {d}"));
            }
            if !extra.is_empty() {
                let _ = write!(s, " ({})", extra.join(", "));
            }
            s
        }
    }
}

fn outcome_name(o: parcours_core::model::TaskOutcome) -> &'static str {
    match o {
        parcours_core::model::TaskOutcome::Completed => "completed",
        parcours_core::model::TaskOutcome::NotNeeded => "not_needed",
        parcours_core::model::TaskOutcome::CouldNotBeDone => "could_not_be_done",
    }
}

/// Summary of a test run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Every scenario's outcome.
    pub outcomes: Vec<Outcome>,
    /// Problems that stopped a scenario or a pathway from loading.
    pub errors: Vec<String>,
}

impl Summary {
    /// Passed count.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed()).count()
    }

    /// Failed count (including files that could not run).
    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed() + self.errors.len()
    }
}

/// Load the pathways in `dir` and run every scenario under `dir/scenarios`.
pub fn run_dir(dir: &Path) -> Summary {
    let mut summary = Summary::default();
    let loaded = match parcours_lang::load_all(dir) {
        Ok(l) => l,
        Err(e) => {
            summary.errors.push(format!("{}: {e}", dir.display()));
            return summary;
        }
    };
    let mut pathways: BTreeMap<String, CompiledPathway> = BTreeMap::new();
    for l in loaded {
        match l.pathway {
            Some(p) => {
                let newer = pathways.get(&p.id).is_none_or(|q| q.version < p.version);
                if newer {
                    pathways.insert(p.id.clone(), p);
                }
            }
            None => summary.errors.push(format!(
                "{} does not compile:\n{}",
                l.path.display(),
                l.report.short()
            )),
        }
    }
    let files = match scenario_files(&dir.join("scenarios")) {
        Ok(f) => f,
        Err(e) => {
            summary.errors.push(format!("{}: {e}", dir.display()));
            return summary;
        }
    };
    for f in files {
        match parse(&f) {
            Ok(s) => match pathways.get(&s.pathway) {
                Some(p) => summary.outcomes.push(run(&f, &s, p)),
                None => {
                    summary
                        .errors
                        .push(format!("{}: unknown pathway `{}`", f.display(), s.pathway))
                }
            },
            Err(e) => summary.errors.push(e.to_string()),
        }
    }
    summary
}
