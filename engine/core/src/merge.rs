//! Identity merges: two pseudonymous keys turn out to be one person.
//!
//! An `identity.merged` event (HL7 ADT^A40) names the surviving key as its `subject` and
//! the retired key as `merged_subject`. Every instance of the retired key — whatever its
//! status, so the history follows the person — records `instance.rekeyed`
//! ([`Change::Rekeyed`]) and belongs to the surviving key from then on: later events
//! about the patient, sent under the surviving key, reach it.
//!
//! **Both keys active on the same pathway.** Keeping both would follow one person twice
//! (two GP visits asked, two alerts for each weight), so one of the two is closed with
//! the reason [`CLOSED_REASON`] (`merged`): its open tasks are cancelled as not needed,
//! its alerts and handoffs withdrawn, its timers cancelled, and those effects tell the
//! care team. Which one stays is what the pathway itself would have done had the two
//! records been one patient from the start ([`plan`]):
//!
//! - `on_repeat: restart` (a new enrolling event starts a new cycle: heart failure,
//!   COPD): the instance whose current cycle started **last** stays — it follows the most
//!   recent stay, whose discharge would have restarted the other one;
//! - `on_repeat: ignore` (a second enrolling event changes nothing: type 2 diabetes): the
//!   instance enrolled **first** stays — the later enrolment would not have happened;
//! - on a tie, the surviving key's instance stays.
//!
//! A retired key's instance that is closed stays re-keyed (it keeps its history, and a
//! closed-by-opt-out instance keeps holding the person back from that pathway). The
//! merge event then reaches the person's active instances like any other event, so a
//! pathway may react to `identity.merged` too.
//!
//! An `identity.linked` event (a message naming the patient by a qualified INS, its
//! `subject`, and by a local identifier, `local_subject`) moves the local key's instances
//! the same way: [`keys`] answers for both.
//!
//! Pure, like [`crate::decide()`]: the merge's records are part of the instance's decision
//! for the event, and their ids derive from (instance id, event id, n).

use std::borrow::Cow;

use crate::decide::{DecideError, Decision};
use crate::events::{Event, EventData};
use crate::model::{CompiledPathway, Repeat};
use crate::state::{Change, InstanceState};

/// The closing reason of an instance that duplicated another one of the merged person.
pub const CLOSED_REASON: &str = "merged";

/// The rule named by the records a merge itself produces.
pub const RULE: &str = "identity/merge";

/// What a merge does to one instance, besides delivering the event to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A retired key's instance moves to the surviving key.
    Rekey,
    /// A retired key's active instance moves to the surviving key and closes `merged`:
    /// the surviving key's instance of the same pathway stays.
    RekeyAndClose,
    /// The surviving key's active instance closes `merged`: the retired key's instance of
    /// the same pathway stays.
    Close,
}

/// Why an event cannot be applied as a merge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Not an `identity.merged` or `identity.linked` event.
    #[error("not an identity.merged or identity.linked event")]
    NotAMerge,
    /// No retired key.
    #[error("identity.merged without a merged_subject: no patient key to retire")]
    NoRetiredSubject,
    /// The retired key is the surviving one.
    #[error(
        "identity.merged names the same patient key as surviving and retired: a patient cannot be merged into itself"
    )]
    SameSubject,
    /// An `identity.linked` without its local key.
    #[error("identity.linked without a local_subject: no local identifier's key to link")]
    NoLocalSubject,
    /// An `identity.linked` whose local key is its subject.
    #[error(
        "identity.linked names the same patient key as national and local identity: a key cannot be linked to itself"
    )]
    LinkedToItself,
}

/// The (retired, surviving) keys of an `identity.merged` event, or the (local, national)
/// keys of an `identity.linked` one.
pub fn keys(event: &Event) -> Result<(&str, &str), MergeError> {
    match &event.data {
        EventData::IdentityMerged(m) => {
            if m.merged_subject.is_empty() {
                return Err(MergeError::NoRetiredSubject);
            }
            if m.merged_subject == event.subject {
                return Err(MergeError::SameSubject);
            }
            Ok((&m.merged_subject, &event.subject))
        }
        EventData::IdentityLinked(l) => {
            if l.local_subject.is_empty() {
                return Err(MergeError::NoLocalSubject);
            }
            if l.local_subject == event.subject {
                return Err(MergeError::LinkedToItself);
            }
            Ok((&l.local_subject, &event.subject))
        }
        _ => Err(MergeError::NotAMerge),
    }
}

/// The key an `identity.merged` or `identity.linked` event moved into `into` (the retired
/// or the local key), when `into` is the key it kept (the survivor, the national key).
pub fn moved_into<'e>(event: &'e Event, into: &str) -> Option<&'e str> {
    let (moved, kept) = keys(event).ok()?;
    (kept == into).then_some(moved)
}

/// Whether an event moves instances between patient keys (`identity.merged`,
/// `identity.linked`).
pub fn is_merge(event: &Event) -> bool {
    matches!(
        event.data,
        EventData::IdentityMerged(_) | EventData::IdentityLinked(_)
    )
}

/// What the merge does to each instance: `survivor` holds the surviving key's instances
/// and `retired` the retired key's, each with the pathway version it is pinned to. The
/// answer has one entry per instance, the survivor's first, then the retired key's, in
/// the order given (`None`: the instance is left as it is).
pub fn plan(
    survivor: &[(&CompiledPathway, &InstanceState)],
    retired: &[(&CompiledPathway, &InstanceState)],
) -> Vec<Option<Fate>> {
    let mut fates: Vec<Option<Fate>> = vec![None; survivor.len()];
    fates.extend(std::iter::repeat_n(Some(Fate::Rekey), retired.len()));
    for (ri, (rp, r)) in retired.iter().enumerate() {
        if !r.is_active() {
            continue;
        }
        let Some(si) = survivor.iter().enumerate().position(|(si, (_, s))| {
            s.is_active() && s.pathway_id == r.pathway_id && fates[si].is_none()
        }) else {
            continue;
        };
        let (sp, s) = survivor[si];
        // The newer version's rule, if the two are pinned to different versions.
        let rule = if rp.version > sp.version { rp } else { sp };
        let retired_stays = match rule.enrolment.on_repeat {
            Repeat::Restart => r.cycle_start > s.cycle_start,
            Repeat::Ignore => r.enrolled_at < s.enrolled_at,
        };
        if retired_stays {
            fates[si] = Some(Fate::Close);
        } else {
            fates[survivor.len() + ri] = Some(Fate::RekeyAndClose);
        }
    }
    fates
}

/// Decide an `identity.merged` event for one instance of the merged person: the merge's
/// own records for `fate` (see [`plan`]), then what the event does to the instance like
/// any other event. Returns the decision and the state after it.
pub fn decide(
    pathway: &CompiledPathway,
    state: &InstanceState,
    event: &Event,
    fate: Option<Fate>,
) -> Result<(Decision, InstanceState), DecideError> {
    crate::decide::run(pathway, Cow::Borrowed(state), event, fate).map(|(d, s)| (d, s.into_owned()))
}

/// Whether `change` is a merge's re-keying (the subject it moves the instance to).
pub fn rekeyed_to(change: &Change) -> Option<&str> {
    match change {
        Change::Rekeyed { to, .. } => Some(to),
        _ => None,
    }
}
