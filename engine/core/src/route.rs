//! Routing: which instances of a patient an event concerns.
//!
//! Pure; used by the runtime and by the scenario simulator so both route the same way.

use crate::decide::enrols;
use crate::events::{Event, EventData};
use crate::model::CompiledPathway;
use crate::state::InstanceState;

/// Where one event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An existing instance (index into the slice given to [`route`]).
    Existing(usize),
    /// A new enrolment in pathway number `pathway` (index into the pathways given).
    Enrol {
        /// Index of the pathway.
        pathway: usize,
    },
}

/// Route `event` for one patient.
///
/// `instances` are the patient's instances (any status, oldest first). A timer goes to
/// the instance that scheduled it; any other event goes to every active instance, and
/// enrols the patient in each pathway where no instance is active and the enrolment rule
/// matches — unless the patient **opted out** of that pathway: an instance of it closed by
/// an opt-out (see [`CompiledPathway::refused_by`]) keeps the patient out until a
/// `consent.given` for the pathway (or `*`) arrives. Such a consent goes to the opted-out
/// instances (they record that the opt-out is lifted), and an enrolling event that the
/// opt-out holds back goes to the latest of them (it records why nothing happened).
pub fn route(
    pathways: &[&CompiledPathway],
    instances: &[&InstanceState],
    event: &Event,
) -> Vec<Target> {
    if let EventData::TimerFired(t) = &event.data {
        return instances
            .iter()
            .position(|i| i.instance_id == *t.instance_id)
            .map(Target::Existing)
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    for (pi, p) in pathways.iter().enumerate() {
        let mut active = false;
        let mut refused: Vec<usize> = Vec::new();
        for (ii, inst) in instances.iter().enumerate() {
            if *inst.pathway_id != *p.id {
                continue;
            }
            if inst.is_active() {
                active = true;
                out.push(Target::Existing(ii));
            } else if p.refused_by(inst) {
                refused.push(ii);
            }
        }
        let consent = !refused.is_empty() && p.is_consent(event);
        if consent {
            out.extend(refused.iter().map(|ii| Target::Existing(*ii)));
        }
        if !active && enrols(p, event) {
            match refused.last() {
                Some(latest) if !consent => out.push(Target::Existing(*latest)),
                _ => out.push(Target::Enrol { pathway: pi }),
            }
        }
    }
    out
}

/// The consent a patient gave to `pathway` before `enrolling` enrolled them in it, to
/// hand to the new instance right after its enrolment (as if it came then: the copy
/// carries the enrolling event's clinical time, its own id, so the history names it).
///
/// `earlier` are the patient's events before `enrolling` (only consents are read; those
/// of keys linked or merged into the patient's count too); `instances` the patient's
/// instances before the enrolment. The last `consent.given` or `consent.withdrawn`
/// covering the pathway (its id or `*`) by clinical time decides (of two at the same
/// instant, the later in `earlier`):
/// a consent, given at most the pathway's `consent_window` before the enrolling event
/// ([`crate::model::Enrolment::consent_window`], 30 days unless the file says; `0d`: none) and
/// after the enrolment of every earlier instance of the pathway (one consent counts for
/// one enrolment), is handed over; a withdrawal, or nothing, is not.
pub fn consent_before_enrolment<'e>(
    pathway: &CompiledPathway,
    instances: &[&InstanceState],
    earlier: impl IntoIterator<Item = &'e Event>,
    enrolling: &Event,
) -> Option<Event> {
    if enrolling.is_consent() {
        return None;
    }
    let last = last_word(
        pathway,
        earlier
            .into_iter()
            .filter(|e| e.occurred_at <= enrolling.occurred_at),
    )?;
    if !matches!(last.data, EventData::ConsentGiven(_))
        || !within_window(pathway, last, enrolling.occurred_at)
    {
        return None;
    }
    let used = instances
        .iter()
        .any(|i| *i.pathway_id == *pathway.id && i.enrolled_at.get() >= last.occurred_at);
    // The copy is the enrolled patient's (a consent recorded under a key linked since
    // names that key).
    (!used).then(|| Event {
        subject: enrolling.subject.clone(),
        occurred_at: enrolling.occurred_at,
        recorded_at: enrolling.recorded_at,
        ..last.clone()
    })
}

/// The patient's last word on `pathway` among `events`: the latest `consent.given` or
/// `consent.withdrawn` covering it (its id or `*`) by clinical time; of two at the same
/// instant, the later in `events`.
fn last_word<'e>(
    pathway: &CompiledPathway,
    events: impl IntoIterator<Item = &'e Event>,
) -> Option<&'e Event> {
    let covers = |scope: &str| scope == "*" || scope == pathway.id;
    // `max_by_key` keeps the last of equal keys.
    events
        .into_iter()
        .filter(|e| match &e.data {
            EventData::ConsentGiven(c) => covers(&c.scope),
            EventData::ConsentWithdrawn(c) => covers(&c.scope),
            _ => false,
        })
        .max_by_key(|e| e.occurred_at)
}

/// Whether a consent given before an enrolment at `enrolled_at` counts for it: given at
/// most the pathway's `consent_window` before (`0d`: none counts).
fn within_window(pathway: &CompiledPathway, consent: &Event, enrolled_at: jiff::Timestamp) -> bool {
    let window = pathway.enrolment.consent_window;
    !window.is_zero() && crate::calendar::add(consent.occurred_at, window) >= enrolled_at
}

/// The consent or withdrawal that `joining` (an `identity.linked` or `identity.merged`)
/// hands to `instance`, an instance of `pathway` on one side of the join: the other
/// side's last word on the pathway, when it is later (by clinical time) than the
/// instance's own side's and would have counted had it been sent under the instance's
/// key — a consent given after the instance's enrolment, or at most `consent_window`
/// before it and not used by another enrolment since (as [`consent_before_enrolment`]),
/// a withdrawal after the enrolment. Sent then, it would have reached the instance; the
/// join is when parcours learns it is the same patient's.
///
/// `own` and `other` are the consents stored for each side's keys (and the keys linked
/// or merged into them); `instances` the joined person's instances, both sides'. The
/// copy names the instance's patient (`joining`'s subject) and takes `joining`'s
/// clinical time if the word is older (an instance's time does not go back); it keeps
/// the word's id, so the history names it. The caller routes it as any event: an
/// instance whose state does not react to it records nothing.
pub fn consent_across_join<'e>(
    pathway: &CompiledPathway,
    instance: &InstanceState,
    instances: &[&InstanceState],
    own: impl IntoIterator<Item = &'e Event>,
    other: impl IntoIterator<Item = &'e Event>,
    joining: &Event,
) -> Option<Event> {
    let theirs = last_word(pathway, other)?;
    if last_word(pathway, own).is_some_and(|mine| mine.occurred_at >= theirs.occurred_at) {
        return None;
    }
    let enrolled_at = instance.enrolled_at.get();
    let used_since = || {
        instances.iter().any(|i| {
            i.instance_id != instance.instance_id
                && *i.pathway_id == *pathway.id
                && i.enrolled_at.get() >= theirs.occurred_at
        })
    };
    let counts = theirs.occurred_at >= enrolled_at
        || (matches!(theirs.data, EventData::ConsentGiven(_))
            && within_window(pathway, theirs, enrolled_at)
            && !used_since());
    counts.then(|| Event {
        subject: joining.subject.clone(),
        occurred_at: theirs.occurred_at.max(joining.occurred_at),
        recorded_at: joining.recorded_at,
        ..theirs.clone()
    })
}
