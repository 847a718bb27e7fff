//! `identity.merged` in the engine: the retired key's instances follow the person to the
//! surviving key (policy and records: [`parcours_core::merge`]). An `identity.linked`
//! moves the local key's instances to the national identity's key the same way (its
//! link itself: `links.rs`).
//!
//! In the batch's one commit, with the merge event itself (in the surviving key's
//! inbound stream): one decision per instance of the merged person that the merge
//! changes — `instance.rekeyed` for each of the retired key's instances, whatever its
//! status, and the closing of a duplicate active instance of the same pathway — plus
//! what the event does to the person's active instances like any other event. The
//! projections move with them: instance rows, pending timers (and so their partition)
//! and work items (open and closed) carry the surviving key. In memory, the instances leave the
//! retired patient for the survivor. The retired key's identity stream gets a record
//! leading to the survivor in the same commit (`links.rs`, [`crate::links`]), so later
//! messages under the retired key reach the survivor.
//!
//! A consent or withdrawal stored under one side's keys reaches the other side's
//! instances in the same commit when it is the patient's last word and counts
//! ([`parcours_core::route::consent_across_join`]): a consent recorded under the IPP
//! starts the plan of an instance enrolled under the INS before the link.
//!
//! A merge whose retired key has no instance is an ordinary event for the survivor
//! (recorded, nothing moves); a merge of a key into itself is refused. In scale-out the
//! retired key may belong to another engine's partition: its instance streams' expected
//! versions make whichever of the two engines commits second retry on fresh state, as do
//! the commits' guards in a shared log when the retired key has no instance
//! (`links.rs`, `guards`), and the retired patient is not kept in this engine's cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parcours_core::decide::instance_id_for;
use parcours_core::decide_and_apply;
use parcours_core::events::{Event, EventData};
use parcours_core::merge;
use parcours_core::model::CompiledPathway;
use parcours_core::route::{Target, consent_across_join, route};
use parcours_core::state::{Change, InstanceState, Recorded};
use parcours_store::{EventStore, IndexChanges, WorkFilter, WorkStatus};

use super::{
    Cached, Decided, Engine, IngestOutcome, Loaded, Patient, PatientKey, Refused, RuntimeError,
    Working, join, stored_consents,
};
use crate::projection;

impl<S: EventStore> Engine<S> {
    /// Apply an `identity.merged` event for the patient `work[(tenant, subject)]` (already
    /// in `work`): load the retired patient, decide for every instance of the merged
    /// person, and move the retired key's instances (with the decisions the batch holds
    /// for them) to the survivor. `rekeyed` receives the moved work items' rows.
    pub(super) async fn merge(
        &mut self,
        work: &mut HashMap<PatientKey, Working>,
        order: &mut Vec<PatientKey>,
        rekeyed: &mut IndexChanges,
        latest: &[Arc<CompiledPathway>],
        latest_refs: &[&CompiledPathway],
        event: &Event,
    ) -> Result<Result<IngestOutcome, Refused>, RuntimeError> {
        let (retired, survivor) = match merge::keys(event) {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(Refused::Invalid(e.to_string()))),
        };
        let skey: PatientKey = self.key(&event.tenant, survivor);
        let rkey: PatientKey = self.key(&event.tenant, retired);
        if !work.contains_key(&rkey) {
            let patient = match self.patients.get(&rkey) {
                Some(p) => Patient::from(p),
                None => self.load_patient(&rkey).await?,
            };
            order.push(rkey.clone());
            work.insert(
                rkey.clone(),
                Working {
                    patient,
                    inbound: Vec::new(),
                    pending: BTreeMap::new(),
                },
            );
        }
        // The stored rows of the work items that will move, open and closed (their
        // titles, priorities and openers are not in the instance state). Those the batch
        // opened are not stored yet: their rows are made with the instance's final
        // subject.
        let mut items = Vec::new();
        if let Some(wr) = work.get(&rkey) {
            for l in &wr.patient.instances {
                let stored = self
                    .store
                    .work_items(&WorkFilter {
                        tenant: rkey.0.to_string(),
                        statuses: WorkStatus::ALL.to_vec(),
                        stream: Some(l.state.instance_id.to_string()),
                        limit: usize::MAX >> 1,
                        ..WorkFilter::default()
                    })
                    .await?;
                items.extend(stored);
            }
        }
        let consents = match (work.get(&skey), work.get(&rkey)) {
            (Some(ws), Some(wr)) => {
                self.consents_across(ws, wr, survivor, retired, event)
                    .await?
            }
            _ => Default::default(),
        };
        let [Some(ws), Some(wr)] = work.get_disjoint_mut([&skey, &rkey]) else {
            return Ok(Err(Refused::Invalid(
                "identity.merged: the merged patients could not be loaded".into(),
            )));
        };
        let outcome = merge_for(ws, wr, latest, latest_refs, event, &consents);
        if outcome.is_ok() {
            rekeyed
                .work
                .extend(projection::rekeyed_work(&items, survivor));
        }
        Ok(outcome)
    }
}

impl<S: EventStore> Engine<S> {
    /// The consents each side of a join holds (the survivor's, then the retired key's:
    /// stored under its keys, and this batch's), for [`consent_across_join`]; none read
    /// when neither side has an instance.
    async fn consents_across(
        &self,
        ws: &Working,
        wr: &Working,
        survivor: &str,
        retired: &str,
        event: &Event,
    ) -> Result<Sides, RuntimeError> {
        if ws.patient.instances.is_empty() && wr.patient.instances.is_empty() {
            return Ok(Sides::default());
        }
        Ok(Sides {
            survivor: self.side_consents(ws, survivor, retired, event).await?,
            retired: self.side_consents(wr, retired, survivor, event).await?,
        })
    }

    /// One side's consents for [`Engine::consents_across`]: none read when it has nothing
    /// stored and no consent or link in the batch.
    async fn side_consents(
        &self,
        w: &Working,
        key: &str,
        other_key: &str,
        event: &Event,
    ) -> Result<Vec<Event>, RuntimeError> {
        let in_batch = |e: &Event| e.is_consent() || merge::is_merge(e);
        if !(w.patient.inbound_version > 0 || w.inbound.iter().any(in_batch)) {
            return Ok(Vec::new());
        }
        let seen = HashSet::from([other_key.to_owned()]);
        let mut out = stored_consents(&self.store, w, &event.tenant, key, seen).await?;
        out.extend(w.inbound.iter().filter(|e| e.is_consent()).cloned());
        Ok(out)
    }
}

/// The consents (given or withdrawn) of each side of a join: see
/// [`Engine::consents_across`].
#[derive(Default)]
pub(super) struct Sides {
    survivor: Vec<Event>,
    retired: Vec<Event>,
}

/// Decide the merge for every instance of the merged person (the survivor's, then the
/// retired key's); hand each instance the other side's consent where it counts
/// ([`consent_across_join`]); on success move the retired key's instances to the
/// survivor and join the decisions. On refusal nothing changed.
fn merge_for(
    ws: &mut Working,
    wr: &mut Working,
    latest: &[Arc<CompiledPathway>],
    latest_refs: &[&CompiledPathway],
    event: &Event,
    consents: &Sides,
) -> Result<IngestOutcome, Refused> {
    let all: Vec<(&Arc<CompiledPathway>, &InstanceState)> = ws
        .patient
        .instances
        .iter()
        .chain(&wr.patient.instances)
        .map(|l| (&l.pathway, &l.state))
        .collect();
    let fates = {
        let pinned: Vec<(&CompiledPathway, &InstanceState)> =
            all.iter().map(|(p, s)| (p.as_ref(), *s)).collect();
        let (s, r) = pinned.split_at(ws.patient.instances.len());
        merge::plan(s, r)
    };
    let states: Vec<&InstanceState> = all.iter().map(|(_, s)| *s).collect();
    // Every instance the event reaches, then every other one the merge changes.
    let mut targets = route(latest_refs, &states, event);
    for (i, fate) in fates.iter().enumerate() {
        if fate.is_some() && !targets.contains(&Target::Existing(i)) {
            targets.push(Target::Existing(i));
        }
    }
    let mut decided: Vec<Decided> = Vec::new();
    for t in targets {
        let (idx, pathway, before, fate) = match t {
            Target::Existing(i) => {
                let (p, s) = all[i];
                (
                    Some(i),
                    p.clone(),
                    s.clone(),
                    fates.get(i).copied().flatten(),
                )
            }
            Target::Enrol { pathway } => {
                let p = latest[pathway].clone();
                let id = instance_id_for(&p.id, event);
                (None, p, InstanceState::pending(id), None)
            }
        };
        let (decision, after) = match fate {
            Some(fate) => merge::decide(&pathway, &before, event, Some(fate)),
            None => decide_and_apply(&pathway, &before, event),
        }
        .map_err(|e| Refused::Decide(e.to_string()))?;
        if decision.is_empty() {
            continue;
        }
        decided.push((idx, pathway, after, vec![decision.events]));
    }
    // A consent recorded under one side's keys reaches the other side's instances as if
    // sent under their key (PRADO's adviser recorded it under the IPP; the discharge
    // enrolled the patient under the INS; the link comes later).
    let survivors = ws.patient.instances.len();
    for (i, (pinned, current)) in all.iter().enumerate() {
        let (own, other) = if i < survivors {
            (&consents.survivor, &consents.retired)
        } else {
            (&consents.retired, &consents.survivor)
        };
        if other.is_empty() {
            continue;
        }
        let at = decided.iter().position(|d| d.0 == Some(i));
        let (pathway, state) = match at {
            Some(k) => (decided[k].1.clone(), &decided[k].2),
            None => ((*pinned).clone(), *current),
        };
        let Some(copy) = consent_across_join(&pathway, state, &states, own, other, event) else {
            continue;
        };
        if !route(&[&pathway], &[state], &copy).contains(&Target::Existing(0)) {
            continue;
        }
        let (decision, after) =
            decide_and_apply(&pathway, state, &copy).map_err(|e| Refused::Decide(e.to_string()))?;
        if decision.is_empty() {
            continue;
        }
        match at {
            Some(k) => {
                decided[k].2 = after;
                decided[k].3.push(decision.events);
            }
            None => decided.push((Some(i), pathway, after, vec![decision.events])),
        }
    }
    // The retired key's instances join the survivor's, with the decisions the batch
    // already holds for them (indices follow: the survivor's instances come first).
    let offset = ws.patient.instances.len();
    ws.patient.instances.append(&mut wr.patient.instances);
    for (idx, pending) in std::mem::take(&mut wr.pending) {
        ws.pending.insert(idx + offset, pending);
    }
    let outcome = join(ws, decided, event);
    sort_instances(ws);
    Ok(outcome)
}

/// Put a patient's instances in the order the store lists them (enrolment instant, then
/// id), as a reload would: routing follows that order.
fn sort_instances(w: &mut Working) {
    let mut order: Vec<usize> = (0..w.patient.instances.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (
            &w.patient.instances[*a].state,
            &w.patient.instances[*b].state,
        );
        (a.enrolled_at, &a.instance_id).cmp(&(b.enrolled_at, &b.instance_id))
    });
    let mut new_index = vec![0; order.len()];
    for (new, old) in order.iter().enumerate() {
        new_index[*old] = new;
    }
    let mut slots: Vec<Option<Loaded>> = std::mem::take(&mut w.patient.instances)
        .into_iter()
        .map(Some)
        .collect();
    w.patient.instances = order.iter().filter_map(|old| slots[*old].take()).collect();
    w.pending = std::mem::take(&mut w.pending)
        .into_iter()
        .map(|(old, p)| (new_index[old], p))
        .collect();
}

/// The subject each of an instance's decisions in a batch is recorded under: the
/// patient's, except for decisions made before an `instance.rekeyed` of the same batch,
/// which keep the key the instance had then.
pub(super) fn decision_subjects<'a>(
    subject: &'a str,
    decisions: &'a [Vec<Recorded>],
) -> Vec<&'a str> {
    let mut out = vec![subject; decisions.len()];
    let mut current = subject;
    for (i, d) in decisions.iter().enumerate().rev() {
        out[i] = current;
        if let Some(from) = d.iter().find_map(|r| match &r.change {
            Change::Rekeyed { from, .. } => Some(from.as_str()),
            _ => None,
        }) {
            current = from;
        }
    }
    out
}

/// Drop the retired patients of the batch's committed merges from the cache: they have
/// no instance left here, and in scale-out another engine may own them.
pub(super) fn forget_retired(
    patients: &mut HashMap<PatientKey, Cached>,
    events: &[Event],
    outcomes: &[Option<Result<IngestOutcome, Refused>>],
) {
    for (event, outcome) in events.iter().zip(outcomes) {
        let retired = match &event.data {
            EventData::IdentityMerged(m) => &m.merged_subject,
            EventData::IdentityLinked(l) => &l.local_subject,
            _ => continue,
        };
        if let Some(Ok(IngestOutcome::Committed { .. })) = outcome {
            patients.remove(&(
                Arc::from(event.tenant.as_str()),
                Arc::from(retired.as_str()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rekey(from: &str, to: &str) -> Recorded {
        Recorded {
            id: uuid::Uuid::nil(),
            cause: Arc::from("m"),
            rule: None,
            at: jiff::Timestamp::UNIX_EPOCH,
            change: Change::Rekeyed {
                from: from.into(),
                to: to.into(),
            },
        }
    }

    #[test]
    fn decisions_before_a_rekeying_keep_the_old_subject() {
        let other = Recorded {
            change: Change::Completed,
            ..rekey("a", "b")
        };
        let decisions = vec![
            vec![other.clone()],
            vec![rekey("a", "b")],
            vec![other.clone()],
            vec![rekey("b", "c")],
            vec![other],
        ];
        assert_eq!(
            decision_subjects("c", &decisions),
            ["a", "b", "b", "c", "c"]
        );
        assert_eq!(decision_subjects("c", &[]), Vec::<&str>::new());
    }
}
