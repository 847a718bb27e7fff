//! A direct decoder of instance events (the JSON of [`Recorded`], alone or in a decision's
//! array) for the readers of the whole log (replay, the relay, patient loads).
//!
//! `Change` is an internally tagged enum (`{"type": "timer_scheduled", …}`, with the
//! timer's kind flattened in): serde's derived decoder buffers every such object in an
//! intermediate tree before it picks the variant. This one reads each object once into a
//! table of the fields instance events have, then builds the variant its tag names, and
//! shares repeated names (rules, tracks, states, codes, roles, titles) and the decision's
//! cause between the events instead of allocating each again.
//!
//! It is an accelerator, never an authority: whatever it does not know exactly — a tag,
//! a key, a field given twice, a value of another shape, `instance.migrated` — makes it
//! give up, and the caller decodes the payload again with the derived decoder, whose
//! answer (value or error) stands. Its tests check that both agree on every variant.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use parcours_core::model::{Priority, Severity, TaskOutcome};
use parcours_core::state::{Change, Recorded, TimerKind};
use parcours_core::value::Scalar;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

/// Names shared between decoded events, up to this many (then the table starts afresh:
/// a log with unbounded distinct names costs memory here no longer than a page).
const SHARED_NAMES: usize = 4_096;

/// Repeated names as one allocation each, and the cause of the events being decoded.
#[derive(Debug, Default)]
pub(crate) struct Names {
    shared: HashSet<Arc<str>>,
    cause: Option<Arc<str>>,
}

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.shared.get(s) {
            return a.clone();
        }
        if self.shared.len() >= SHARED_NAMES {
            self.shared.clear();
        }
        let a: Arc<str> = Arc::from(s);
        self.shared.insert(a.clone());
        a
    }

    /// A decision's events share their cause (an inbound event id, unique to it).
    fn cause(&mut self, s: &str) -> Arc<str> {
        match &self.cause {
            Some(c) if **c == *s => c.clone(),
            _ => {
                let c: Arc<str> = Arc::from(s);
                self.cause = Some(c.clone());
                c
            }
        }
    }
}

/// The instance events of a decision payload (a JSON array of [`Recorded`]), or `None`
/// when the derived decoder must decide.
pub(crate) fn decision(payload: &[u8], names: &mut Names) -> Option<Vec<Recorded>> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let out = de.deserialize_seq(DecisionVisitor(names)).ok()?;
    de.end().ok()?;
    Some(out)
}

/// One instance event (the first layout: one record each), or `None` when the derived
/// decoder must decide.
pub(crate) fn single(payload: &[u8], names: &mut Names) -> Option<Recorded> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let out = de.deserialize_map(RecordedVisitor(names)).ok()?;
    de.end().ok()?;
    Some(out)
}

struct DecisionVisitor<'n>(&'n mut Names);

impl<'de> Visitor<'de> for DecisionVisitor<'_> {
    type Value = Vec<Recorded>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of instance events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
        while let Some(r) = seq.next_element_seed(RecordedSeed(&mut *self.0))? {
            out.push(r);
        }
        Ok(out)
    }
}

struct RecordedSeed<'n>(&'n mut Names);

impl<'de> DeserializeSeed<'de> for RecordedSeed<'_> {
    type Value = Recorded;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Recorded, D::Error> {
        d.deserialize_map(RecordedVisitor(self.0))
    }
}

/// A string, borrowed from the payload when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// An instant: the text jiff writes (`2026-03-02T09:00:00Z`, with up to nine digits of
/// fraction) read directly, anything else by jiff's own parser, as the derived decoder does.
struct At(Timestamp);

impl<'de> Deserialize<'de> for At {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Str::deserialize(d)?;
        match utc_instant(s.0.as_bytes()) {
            Some(t) => Ok(At(t)),
            None => s.0.parse().map(At).map_err(de::Error::custom),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or `None` (leap seconds, offsets, other separators,
/// an invalid date: jiff decides).
fn utc_instant(b: &[u8]) -> Option<Timestamp> {
    fn num(b: &[u8]) -> Option<i32> {
        b.iter().try_fold(0i32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i32::from(c - b'0'))
        })
    }
    let (head, frac) = match b {
        [head @ .., b'Z'] if head.len() >= 19 => head.split_at(19),
        _ => return None,
    };
    if head[4] != b'-'
        || head[7] != b'-'
        || head[10] != b'T'
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let nanos = match frac {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(digits)? * 10i32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let second = num(&head[17..19])?;
    if second > 59 {
        return None;
    }
    let dt = jiff::civil::DateTime::new(
        i16::try_from(num(&head[0..4])?).ok()?,
        i8::try_from(num(&head[5..7])?).ok()?,
        i8::try_from(num(&head[8..10])?).ok()?,
        i8::try_from(num(&head[11..13])?).ok()?,
        i8::try_from(num(&head[14..16])?).ok()?,
        i8::try_from(second).ok()?,
        nanos,
    )
    .ok()?;
    jiff::tz::Offset::UTC.to_timestamp(dt).ok()
}

fn give_up<E: de::Error>() -> E {
    E::custom("left to the derived decoder")
}

/// Set a field once: a field given twice is left to the derived decoder.
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(give_up());
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

struct RecordedVisitor<'n>(&'n mut Names);

impl<'de> Visitor<'de> for RecordedVisitor<'_> {
    type Value = Recorded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an instance event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Recorded, A::Error> {
        let names = self.0;
        let mut id: Option<Uuid> = None;
        let mut cause: Option<Arc<str>> = None;
        // `rule` may be absent or null: `Some(None)` once seen.
        let mut rule: Option<Option<Arc<str>>> = None;
        let mut at: Option<At> = None;
        let mut change: Option<Change> = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "id" => once(&mut id, &mut map)?,
                "cause" => {
                    if cause.is_some() {
                        return Err(give_up());
                    }
                    let s: Str<'de> = map.next_value()?;
                    cause = Some(names.cause(&s.0));
                }
                "rule" => {
                    if rule.is_some() {
                        return Err(give_up());
                    }
                    let s: Option<Str<'de>> = map.next_value()?;
                    rule = Some(s.map(|s| names.get(&s.0)));
                }
                "at" => once(&mut at, &mut map)?,
                "change" => {
                    if change.is_some() {
                        return Err(give_up());
                    }
                    change = Some(map.next_value_seed(ChangeSeed(&mut *names))?);
                }
                _ => return Err(give_up()),
            }
        }
        match (id, cause, at, change) {
            (Some(id), Some(cause), Some(At(at)), Some(change)) => Ok(Recorded {
                id,
                cause,
                rule: rule.flatten(),
                at,
                change,
            }),
            _ => Err(give_up()),
        }
    }
}

struct ChangeSeed<'n>(&'n mut Names);

impl<'de> DeserializeSeed<'de> for ChangeSeed<'_> {
    type Value = Change;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Change, D::Error> {
        d.deserialize_map(self)
    }
}

/// `value`: a sample's number, or a variable's or parameter's [`Scalar`].
enum Value {
    Number(f64),
    Scalar(Scalar),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a scalar")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Number(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Number(v as f64))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
                Scalar::deserialize(de::value::MapAccessDeserializer::new(map)).map(Value::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// Every field of the variants decoded here, as read (strings borrowed).
#[derive(Default)]
struct Fields<'de> {
    tag: Option<Str<'de>>,
    pathway_id: Option<Str<'de>>,
    pathway_version: Option<u32>,
    tenant: Option<Str<'de>>,
    subject: Option<Str<'de>>,
    // Optional in some variants: null counts as absent there.
    key: Option<Option<Str<'de>>>,
    cycle: Option<u32>,
    track: Option<Str<'de>>,
    state: Option<Str<'de>>,
    from: Option<Option<Str<'de>>>,
    name: Option<Str<'de>>,
    value: Option<Value>,
    series: Option<Str<'de>>,
    timer_id: Option<Uuid>,
    fire_at: Option<At>,
    kind: Option<Str<'de>>,
    transition: Option<u16>,
    fired: Option<u32>,
    step: Option<u16>,
    timer: Option<u16>,
    due_at: Option<At>,
    task_id: Option<Uuid>,
    code: Option<Str<'de>>,
    role: Option<Str<'de>>,
    title: Option<Str<'de>>,
    priority: Option<Priority>,
    outcome: Option<TaskOutcome>,
    alert_id: Option<Uuid>,
    severity: Option<Severity>,
    message: Option<Str<'de>>,
    handoff_id: Option<Uuid>,
    to: Option<Str<'de>>,
    accept_by: Option<At>,
    accepted: Option<bool>,
    done: Option<bool>,
    reason: Option<Str<'de>>,
    scope: Option<Str<'de>>,
}

impl<'de> Visitor<'de> for ChangeSeed<'_> {
    type Value = Change;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an instance change")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Change, A::Error> {
        let mut f = Fields::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "type" => once(&mut f.tag, &mut map)?,
                "pathway_id" => once(&mut f.pathway_id, &mut map)?,
                "pathway_version" => once(&mut f.pathway_version, &mut map)?,
                "tenant" => once(&mut f.tenant, &mut map)?,
                "subject" => once(&mut f.subject, &mut map)?,
                "key" => once(&mut f.key, &mut map)?,
                "cycle" => once(&mut f.cycle, &mut map)?,
                "track" => once(&mut f.track, &mut map)?,
                "state" => once(&mut f.state, &mut map)?,
                "from" => once(&mut f.from, &mut map)?,
                "name" => once(&mut f.name, &mut map)?,
                "value" => once(&mut f.value, &mut map)?,
                "series" => once(&mut f.series, &mut map)?,
                "timer_id" => once(&mut f.timer_id, &mut map)?,
                "fire_at" => once(&mut f.fire_at, &mut map)?,
                "kind" => once(&mut f.kind, &mut map)?,
                "transition" => once(&mut f.transition, &mut map)?,
                "fired" => once(&mut f.fired, &mut map)?,
                "step" => once(&mut f.step, &mut map)?,
                "timer" => once(&mut f.timer, &mut map)?,
                "due_at" => once(&mut f.due_at, &mut map)?,
                "task_id" => once(&mut f.task_id, &mut map)?,
                "code" => once(&mut f.code, &mut map)?,
                "role" => once(&mut f.role, &mut map)?,
                "title" => once(&mut f.title, &mut map)?,
                "priority" => once(&mut f.priority, &mut map)?,
                "outcome" => once(&mut f.outcome, &mut map)?,
                "alert_id" => once(&mut f.alert_id, &mut map)?,
                "severity" => once(&mut f.severity, &mut map)?,
                "message" => once(&mut f.message, &mut map)?,
                "handoff_id" => once(&mut f.handoff_id, &mut map)?,
                "to" => once(&mut f.to, &mut map)?,
                "accept_by" => once(&mut f.accept_by, &mut map)?,
                "accepted" => once(&mut f.accepted, &mut map)?,
                "done" => once(&mut f.done, &mut map)?,
                "reason" => once(&mut f.reason, &mut map)?,
                "scope" => once(&mut f.scope, &mut map)?,
                _ => return Err(give_up()),
            }
        }
        build(f, self.0).ok_or_else(give_up)
    }
}

fn owned(s: Option<Str<'_>>) -> Option<String> {
    s.map(|s| s.0.into_owned())
}

/// The variant a tag names, from its fields (`None`: missing, or a tag left to the
/// derived decoder). Fields other variants have are ignored, as the derived decoder does.
fn build(f: Fields<'_>, names: &mut Names) -> Option<Change> {
    let mut name = |s: Option<Str<'_>>| s.map(|s| names.get(&s.0));
    let change = match &*f.tag?.0 {
        "enrolled" => Change::Enrolled {
            pathway_id: owned(f.pathway_id)?,
            pathway_version: f.pathway_version?,
            tenant: owned(f.tenant)?,
            subject: owned(f.subject)?,
            key: owned(f.key.flatten()),
        },
        "cycle_restarted" => Change::CycleRestarted {
            cycle: f.cycle?,
            key: owned(f.key.flatten()),
        },
        "episode_cancelled" => Change::EpisodeCancelled {
            key: owned(f.key?)?,
        },
        "state_entered" => Change::StateEntered {
            track: name(f.track)?,
            state: name(f.state)?,
            from: name(f.from.flatten()),
        },
        "variable_set" => Change::VariableSet {
            name: owned(f.name)?,
            value: match f.value? {
                Value::Scalar(s) => s,
                Value::Number(_) => return None,
            },
        },
        "parameter_set" => Change::ParameterSet {
            name: owned(f.name)?,
            value: match f.value? {
                Value::Scalar(s) => s,
                Value::Number(_) => return None,
            },
        },
        "sample_recorded" => Change::SampleRecorded {
            series: name(f.series)?,
            value: match f.value? {
                Value::Number(n) => n,
                Value::Scalar(_) => return None,
            },
        },
        "samples_withdrawn" => Change::SamplesWithdrawn {
            series: name(f.series)?,
        },
        "timer_scheduled" => Change::TimerScheduled {
            timer_id: f.timer_id?,
            fire_at: f.fire_at?.0,
            kind: match &*f.kind?.0 {
                "transition" => TimerKind::Transition {
                    transition: f.transition?,
                },
                "recurring" => TimerKind::Recurring {
                    transition: f.transition?,
                    fired: f.fired?,
                },
                "task_reminder" => TimerKind::TaskReminder {
                    task_id: f.task_id?,
                },
                "task_due" => TimerKind::TaskDue {
                    task_id: f.task_id?,
                },
                "task_escalation" => TimerKind::TaskEscalation {
                    task_id: f.task_id?,
                    step: f.step?,
                },
                "alert_ack" => TimerKind::AlertAck {
                    alert_id: f.alert_id?,
                },
                "handoff_accept" => TimerKind::HandoffAccept {
                    handoff_id: f.handoff_id?,
                },
                "named" => TimerKind::Named { timer: f.timer? },
                _ => return None,
            },
        },
        "timer_cancelled" => Change::TimerCancelled {
            timer_id: f.timer_id?,
        },
        "timer_fired" => Change::TimerFired {
            timer_id: f.timer_id?,
            due_at: f.due_at?.0,
        },
        "task_requested" => Change::TaskRequested {
            task_id: f.task_id?,
            code: name(f.code)?,
            role: name(f.role)?,
            title: name(f.title)?,
            due_at: f.due_at?.0,
            priority: f.priority?,
        },
        "task_reminded" => Change::TaskReminded {
            task_id: f.task_id?,
            code: name(f.code)?,
            role: name(f.role)?,
        },
        "task_overdue" => Change::TaskOverdue {
            task_id: f.task_id?,
            code: name(f.code)?,
            role: name(f.role)?,
        },
        "task_escalated" => Change::TaskEscalated {
            task_id: f.task_id?,
            code: name(f.code)?,
            step: f.step?,
            role: name(f.role)?,
            priority: f.priority?,
        },
        "task_closed" => Change::TaskClosed {
            task_id: f.task_id?,
            code: name(f.code)?,
            outcome: f.outcome?,
            done: f.done.unwrap_or(false),
        },
        "alert_raised" => Change::AlertRaised {
            alert_id: f.alert_id?,
            code: owned(f.code)?,
            severity: f.severity?,
            role: owned(f.role)?,
            message: owned(f.message)?,
        },
        "alert_escalated" => Change::AlertEscalated {
            alert_id: f.alert_id?,
            code: owned(f.code)?,
            role: owned(f.role)?,
        },
        "alert_closed" => Change::AlertClosed {
            alert_id: f.alert_id?,
            code: owned(f.code)?,
        },
        "handoff_requested" => Change::HandoffRequested {
            handoff_id: f.handoff_id?,
            code: owned(f.code)?,
            from: owned(f.from.flatten())?,
            to: owned(f.to)?,
            title: owned(f.title)?,
            accept_by: f.accept_by?.0,
        },
        "handoff_escalated" => Change::HandoffEscalated {
            handoff_id: f.handoff_id?,
            code: owned(f.code)?,
            role: owned(f.role)?,
        },
        "handoff_closed" => Change::HandoffClosed {
            handoff_id: f.handoff_id?,
            code: owned(f.code)?,
            accepted: f.accepted?,
        },
        "guard_failed" => Change::GuardFailed {
            message: owned(f.message)?,
        },
        "input_ignored" => Change::InputIgnored {
            reason: owned(f.reason)?,
        },
        "completed" => Change::Completed,
        "closed" => Change::Closed {
            reason: owned(f.reason)?,
        },
        "opt_out_lifted" => Change::OptOutLifted {
            scope: owned(f.scope)?,
            reason: owned(f.reason)?,
        },
        "rekeyed" => Change::Rekeyed {
            from: owned(f.from.flatten())?,
            to: owned(f.to)?,
        },
        // `migrated` (rare: one per migrated instance) and tags this decoder does not
        // know are the derived decoder's.
        _ => return None,
    };
    Some(change)
}

#[cfg(test)]
mod tests {
    use parcours_core::state::Sample;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x1c36_fb1e_a06e_8dbd_ad2f_ede2_83e8_b000 + n)
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    /// One change of every variant (a variant or field added to `Change` breaks the
    /// build here, so it gets a case), with optional fields both ways.
    fn every_change() -> Vec<Change> {
        let t = at("2026-03-02T09:00:00Z");
        let kinds = [
            TimerKind::Transition { transition: 6 },
            TimerKind::Recurring {
                transition: 2,
                fired: 3,
            },
            TimerKind::TaskReminder { task_id: id(1) },
            TimerKind::TaskDue { task_id: id(2) },
            TimerKind::TaskEscalation {
                task_id: id(3),
                step: 1,
            },
            TimerKind::AlertAck { alert_id: id(4) },
            TimerKind::HandoffAccept { handoff_id: id(5) },
            TimerKind::Named { timer: 7 },
        ];
        let mut out = vec![
            Change::Enrolled {
                pathway_id: "heart-failure".into(),
                pathway_version: 1,
                tenant: "cpts-a".into(),
                subject: "p-1".into(),
                key: Some("V0".into()),
            },
            Change::Enrolled {
                pathway_id: "heart-failure".into(),
                pathway_version: 2,
                tenant: "cpts-a".into(),
                subject: "p-1".into(),
                key: None,
            },
            Change::CycleRestarted {
                cycle: 2,
                key: Some("V1".into()),
            },
            Change::CycleRestarted {
                cycle: 3,
                key: None,
            },
            Change::EpisodeCancelled { key: "V1".into() },
            Change::StateEntered {
                track: "main".into(),
                state: "referred".into(),
                from: None,
            },
            Change::StateEntered {
                track: "main".into(),
                state: "awaiting \"consent\"".into(),
                from: Some("referred".into()),
            },
            Change::VariableSet {
                name: "last".into(),
                value: Scalar::Double(80.5),
            },
            Change::VariableSet {
                name: "when".into(),
                value: Scalar::Timestamp(t.into()),
            },
            Change::ParameterSet {
                name: "target".into(),
                value: Scalar::Int(7),
            },
            Change::ParameterSet {
                name: "every".into(),
                value: Scalar::Duration(Box::new("3mo".parse().expect("duration"))),
            },
            Change::ParameterSet {
                name: "flag".into(),
                value: Scalar::Bool(true),
            },
            Change::VariableSet {
                name: "note".into(),
                value: Scalar::Str(Box::new("é\n".into())),
            },
            Change::SampleRecorded {
                series: "weight".into(),
                value: 80.0,
            },
            Change::SampleRecorded {
                series: "weight".into(),
                value: -0.1,
            },
            Change::SamplesWithdrawn {
                series: "weight".into(),
            },
            Change::TimerCancelled { timer_id: id(10) },
            Change::TimerFired {
                timer_id: id(11),
                due_at: t,
            },
            Change::TaskRequested {
                task_id: id(12),
                code: "obtain-consent".into(),
                role: "coordinator".into(),
                title: "Meet the patient".into(),
                due_at: t,
                priority: Priority::Routine,
            },
            Change::TaskReminded {
                task_id: id(12),
                code: "obtain-consent".into(),
                role: "coordinator".into(),
            },
            Change::TaskOverdue {
                task_id: id(12),
                code: "obtain-consent".into(),
                role: "coordinator".into(),
            },
            Change::TaskEscalated {
                task_id: id(12),
                code: "obtain-consent".into(),
                step: 0,
                role: "gp".into(),
                priority: Priority::Urgent,
            },
            Change::TaskClosed {
                task_id: id(12),
                code: "obtain-consent".into(),
                outcome: TaskOutcome::CouldNotBeDone,
                done: false,
            },
            Change::TaskClosed {
                task_id: id(12),
                code: "obtain-consent".into(),
                outcome: TaskOutcome::Completed,
                done: true,
            },
            Change::AlertRaised {
                alert_id: id(13),
                code: "weight-gain".into(),
                severity: Severity::High,
                role: "nurse".into(),
                message: "Weight up 2 kg in 3 days".into(),
            },
            Change::AlertEscalated {
                alert_id: id(13),
                code: "weight-gain".into(),
                role: "gp".into(),
            },
            Change::AlertClosed {
                alert_id: id(13),
                code: "weight-gain".into(),
            },
            Change::HandoffRequested {
                handoff_id: id(14),
                code: "to-gp".into(),
                from: "hospital".into(),
                to: "gp".into(),
                title: "Follow-up".into(),
                accept_by: t,
            },
            Change::HandoffEscalated {
                handoff_id: id(14),
                code: "to-gp".into(),
                role: "coordinator".into(),
            },
            Change::HandoffClosed {
                handoff_id: id(14),
                code: "to-gp".into(),
                accepted: false,
            },
            Change::GuardFailed {
                message: "no such field".into(),
            },
            Change::InputIgnored {
                reason: "preliminary".into(),
            },
            Change::Migrated {
                from_version: 1,
                to_version: 2,
                tracks: vec![("main".into(), "followed".into(), t)],
                params: vec![("target".into(), Scalar::Int(7))],
                vars: vec![("last".into(), Scalar::Double(1.5))],
                series: vec![("weight".into(), vec![Sample { at: t, value: 80.0 }])],
                done: vec!["gp-visit".into()],
            },
            Change::Completed,
            Change::Closed {
                reason: "died".into(),
            },
            Change::OptOutLifted {
                scope: "*".into(),
                reason: "opted_out, then consented".into(),
            },
            Change::Rekeyed {
                from: "p-1".into(),
                to: "p-2".into(),
            },
        ];
        for (n, kind) in kinds.into_iter().enumerate() {
            out.push(Change::TimerScheduled {
                timer_id: id(20 + n as u128),
                fire_at: t,
                kind,
            });
        }
        for c in &out {
            // Exhaustive: a new variant must be added above.
            match c {
                Change::Enrolled { .. }
                | Change::CycleRestarted { .. }
                | Change::EpisodeCancelled { .. }
                | Change::StateEntered { .. }
                | Change::VariableSet { .. }
                | Change::ParameterSet { .. }
                | Change::SampleRecorded { .. }
                | Change::SamplesWithdrawn { .. }
                | Change::TimerScheduled { .. }
                | Change::TimerCancelled { .. }
                | Change::TimerFired { .. }
                | Change::TaskRequested { .. }
                | Change::TaskReminded { .. }
                | Change::TaskOverdue { .. }
                | Change::TaskEscalated { .. }
                | Change::TaskClosed { .. }
                | Change::AlertRaised { .. }
                | Change::AlertEscalated { .. }
                | Change::AlertClosed { .. }
                | Change::HandoffRequested { .. }
                | Change::HandoffEscalated { .. }
                | Change::HandoffClosed { .. }
                | Change::GuardFailed { .. }
                | Change::InputIgnored { .. }
                | Change::Migrated { .. }
                | Change::Completed
                | Change::Closed { .. }
                | Change::OptOutLifted { .. }
                | Change::Rekeyed { .. } => {}
            }
        }
        out
    }

    fn decision() -> Vec<Recorded> {
        every_change()
            .into_iter()
            .enumerate()
            .map(|(n, change)| Recorded {
                id: id(100 + n as u128),
                cause: "adt-0".into(),
                rule: (n % 3 != 0).then(|| Arc::from(format!("rule-{}", n % 2).as_str())),
                at: at("2026-03-02T09:00:00Z"),
                change,
            })
            .collect()
    }

    #[test]
    fn every_variant_decodes_as_the_derived_decoder_does() {
        let events = decision();
        let mut names = Names::default();
        for ev in &events {
            let json = serde_json::to_vec(ev).expect("json");
            let derived: Recorded = serde_json::from_slice(&json).expect("derived");
            assert_eq!(&derived, ev);
            let direct = single(&json, &mut names);
            if matches!(ev.change, Change::Migrated { .. }) {
                assert_eq!(direct, None, "left to the derived decoder");
            } else {
                assert_eq!(
                    direct.as_ref(),
                    Some(ev),
                    "{}",
                    String::from_utf8_lossy(&json)
                );
            }
        }
        // A decision without `instance.migrated` decodes directly, whole.
        let plain: Vec<Recorded> = events
            .iter()
            .filter(|e| !matches!(e.change, Change::Migrated { .. }))
            .cloned()
            .collect();
        let json = serde_json::to_vec(&plain).expect("json");
        assert_eq!(decision_of(&json), Some(plain));
    }

    fn decision_of(json: &[u8]) -> Option<Vec<Recorded>> {
        super::decision(json, &mut Names::default())
    }

    #[test]
    fn key_order_does_not_matter() {
        // serde_json's `Value` keeps keys sorted: `type` is no longer first.
        for ev in decision()
            .into_iter()
            .filter(|e| !matches!(e.change, Change::Migrated { .. }))
        {
            let sorted =
                serde_json::to_vec(&serde_json::to_value(&ev).expect("value")).expect("json");
            assert_eq!(
                single(&sorted, &mut Names::default()).as_ref(),
                Some(&ev),
                "{}",
                String::from_utf8_lossy(&sorted)
            );
        }
    }

    #[test]
    fn what_it_does_not_know_exactly_is_left_to_the_derived_decoder() {
        let ok = r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"completed"}}"#;
        assert!(single(ok.as_bytes(), &mut Names::default()).is_some());
        for bad in [
            // an unknown key, in the event and in the change
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"completed"},"extra":1}"#,
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"completed","extra":1}}"#,
            // an unknown tag
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"what"}}"#,
            // a field given twice
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","cause":"adt-1","at":"2026-03-02T09:00:00Z","change":{"type":"completed"}}"#,
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"closed","reason":"a","reason":"b"}}"#,
            // a missing field, a value of another shape, a null where one is required
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","at":"2026-03-02T09:00:00Z","change":{"type":"completed"}}"#,
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"sample_recorded","series":"w","value":{"double":1.0}}}"#,
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"variable_set","name":"w","value":1.0}}"#,
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"rekeyed","from":null,"to":"p-2"}}"#,
            // not JSON, trailing bytes
            "{",
            r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T09:00:00Z","change":{"type":"completed"}} x"#,
        ] {
            assert_eq!(single(bad.as_bytes(), &mut Names::default()), None, "{bad}");
        }
        assert_eq!(decision_of(b"[1]"), None);
        assert_eq!(decision_of(b"{}"), None);
    }

    #[test]
    fn instants_read_directly_are_jiffs() {
        for text in [
            "2026-03-02T09:00:00Z",
            "2026-03-29T01:59:59.999999999Z",
            "2024-02-29T23:00:00.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-30T12:00:00.123Z",
            "1970-01-01T00:00:00.000000001Z",
        ] {
            let jiff: Timestamp = text.parse().expect("jiff");
            assert_eq!(utc_instant(text.as_bytes()), Some(jiff), "{text}");
            // And jiff writes them so.
            assert_eq!(utc_instant(jiff.to_string().as_bytes()), Some(jiff));
        }
        // Left to jiff: a leap second, other forms, invalid dates and times.
        for text in [
            "2016-12-31T23:59:60Z",
            "9999-12-31T23:59:59Z",
            "2026-03-02t09:00:00Z",
            "2026-03-02T09:00:00z",
            "2026-03-02 09:00:00Z",
            "2026-03-02T09:00:00+01:00",
            "2026-03-02T09:00:00.Z",
            "2026-03-02T09:00:00.1234567890Z",
            "2026-02-30T09:00:00Z",
            "2026-13-02T09:00:00Z",
            "2026-03-02T24:00:00Z",
            "+2026-03-02T09:00:00Z",
            "2026-03-02T09:00Z",
            "2026-03-0xT09:00:00Z",
            "",
        ] {
            assert_eq!(utc_instant(text.as_bytes()), None, "{text}");
        }
        // Whatever it leaves, jiff reads as the derived decoder does.
        let json = r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","at":"2026-03-02T10:00:00+01:00","change":{"type":"timer_fired","timer_id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04e","due_at":"2016-12-31T23:59:60Z"}}"#;
        let derived: Recorded = serde_json::from_str(json).expect("derived");
        assert_eq!(
            single(json.as_bytes(), &mut Names::default()),
            Some(derived)
        );
    }

    #[test]
    fn nulls_count_as_absent_where_a_field_is_optional() {
        let json = r#"{"id":"1c36fb1e-a06e-8dbd-ad2f-ede283e8b04d","cause":"adt-0","rule":null,"at":"2026-03-02T09:00:00Z","change":{"type":"state_entered","track":"main","state":"s","from":null}}"#;
        let derived: Recorded = serde_json::from_str(json).expect("derived");
        assert_eq!(
            single(json.as_bytes(), &mut Names::default()),
            Some(derived)
        );
    }

    #[test]
    fn repeated_names_and_the_cause_are_shared() {
        let events = decision();
        let json = serde_json::to_vec(&events[..6]).expect("json");
        let decoded = decision_of(&json).expect("decodes");
        assert!(Arc::ptr_eq(&decoded[0].cause, &decoded[5].cause));
        let (Change::StateEntered { track: a, .. }, Change::StateEntered { track: b, .. }) = (
            &decoded[5].change,
            &decision_of(&json).expect("again")[5].change,
        ) else {
            panic!("state entered");
        };
        assert_eq!(a, b);
        let mut names = Names::default();
        let one = super::decision(&json, &mut names).expect("decodes");
        let two = super::decision(&json, &mut names).expect("decodes");
        let (Some(r1), Some(r2)) = (&one[1].rule, &two[1].rule) else {
            panic!("rules");
        };
        assert!(Arc::ptr_eq(r1, r2));
    }
}
