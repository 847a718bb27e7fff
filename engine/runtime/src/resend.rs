//! An event whose id is in the log already: a duplicate, or an id reused.
//!
//! The stored record of the id (`EventStore::stored_events`: tenant, patient key, type,
//! clinical time) holds the same event — a redelivery, a sender resending a message whose
//! acknowledgement was lost — and the event is acknowledged as a duplicate; or it holds
//! another event, and the event is refused ([`Refused::IdReused`]: acknowledging it would
//! lose it). The same patient may be named by another key since it was stored:
//!
//! - **linked**: the stored key leads since to the key the event names — a local
//!   identifier's key linked to the national identity's key, a key retired by a merge to
//!   its survivor, followed on to the end as the fronts resolve keys: its identity stream
//!   `identity/<tenant>/<stored key>` (one indexed look-up, another per hop:
//!   `links::leads`);
//! - **merged**: the stored key was retired by an `identity.merged` into the key the
//!   event names (the sender names the surviving record now): the merge is recorded in
//!   the survivor's inbound stream alone (`inbound/<tenant>/<survivor>`, an
//!   `identity.merged` whose `merged_subject` is the stored key), read only when the
//!   identity stream does not tell: merges committed before the engine recorded the
//!   retired key's survivor in its identity stream. For those one merge is followed, not
//!   a chain of them.
//!
//! Both are read only for a record that differs from the event by its patient key alone
//! (the rare path); none otherwise. The engine ([`crate::Engine::ingest_batch`]) and the
//! scale-out fronts, which answer for the ids the log holds before forwarding an event
//! to its owner ([`known`]), judge alike.

use std::collections::{HashMap, HashSet};

use parcours_core::events::{Event, EventData, EventType};
use parcours_store::{EventStore, StoreError, StoredId};

use crate::codec;
use crate::engine::{IngestOutcome, Refused};

/// What an inbound event's record says of it ([`StoredId`]).
pub(crate) fn stored_id(event: &Event) -> StoredId {
    StoredId {
        id: event.id.clone(),
        tenant: event.tenant.clone(),
        subject: event.subject.clone(),
        record_type: event.event_type().as_str().to_string(),
        occurred_at: event.occurred_at,
    }
}

/// The outcome of an event whose id is stored already (`stored`): a duplicate when the
/// stored record holds the same event (the same tenant, patient, type and clinical time:
/// a redelivery, a resend); refused when the id was reused for another event, which would
/// otherwise be acknowledged and lost. The reason names nothing of the stored event (it
/// may be another tenant's).
///
/// `moved`: the stored record's patient key is linked or merged since into the event's
/// ([`moved_keys`]): the same patient, so the same event when the rest agrees.
pub(crate) fn redelivered(
    stored: &StoredId,
    event: &Event,
    moved: bool,
) -> Result<IngestOutcome, Refused> {
    if stored.tenant == event.tenant
        && (stored.subject == event.subject || moved)
        && stored.record_type == event.event_type().as_str()
        && stored.occurred_at == event.occurred_at
    {
        Ok(IngestOutcome::Duplicate)
    } else {
        Err(Refused::IdReused(format!(
            "event id `{}` is already in the log for another event (another patient, type or \
             clinical time): an event id is never reused; send this event under a new id",
            event.id
        )))
    }
}

/// The events (by index) whose stored record differs from them by its patient key
/// alone, that key being linked or merged since into the event's (see the module docs).
pub(crate) async fn moved_keys<S: EventStore>(
    store: &S,
    events: &[Event],
    stored: &HashMap<String, StoredId>,
) -> Result<HashSet<usize>, StoreError> {
    let differing: Vec<(usize, &StoredId)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let s = stored.get(&e.id)?;
            (s.tenant == e.tenant
                && s.subject != e.subject
                && s.record_type == e.event_type().as_str()
                && s.occurred_at == e.occurred_at)
                .then_some((i, s))
        })
        .collect();
    if differing.is_empty() {
        return Ok(HashSet::new());
    }
    let asked: Vec<(String, String)> = differing
        .iter()
        .map(|(_, s)| (s.tenant.clone(), s.subject.clone()))
        .collect();
    let leads = crate::links::leads(store, asked).await?;
    let mut moved = HashSet::new();
    // Survivor's inbound stream → the keys merged into it (read once each).
    let mut merged_into: HashMap<String, HashSet<String>> = HashMap::new();
    for (i, s) in differing {
        let event = &events[i];
        if leads.get(&(s.tenant.clone(), s.subject.clone())) == Some(&event.subject) {
            moved.insert(i);
            continue;
        }
        let stream = codec::inbound_stream(&event.tenant, &event.subject);
        if !merged_into.contains_key(&stream) {
            let retired = retired_into(store, &stream).await?;
            merged_into.insert(stream.clone(), retired);
        }
        if merged_into
            .get(&stream)
            .is_some_and(|retired| retired.contains(&s.subject))
        {
            moved.insert(i);
        }
    }
    Ok(moved)
}

/// The keys an `identity.merged` of this inbound stream retired into its patient's.
/// A merge that does not decode is left out (its key is not followed: the event is then
/// answered as an id reused, never lost).
async fn retired_into<S: EventStore>(
    store: &S,
    inbound_stream: &str,
) -> Result<HashSet<String>, StoreError> {
    Ok(identity_events(store, inbound_stream)
        .await?
        .into_iter()
        .filter_map(|(_, e)| match e {
            Ok(Event {
                data: EventData::IdentityMerged(m),
                ..
            }) => Some(m.merged_subject),
            _ => None,
        })
        .collect())
}

/// The `identity.merged` and `identity.linked` records of an inbound stream, each with
/// its position, decoded (only those: the patient's other events are not): what moved
/// other keys into this stream's patient. Resends ([`moved_keys`]) and erasures
/// ([`crate::links::person_keys`]) read them.
pub(crate) async fn identity_events<S: EventStore>(
    store: &S,
    inbound_stream: &str,
) -> Result<Vec<(u64, Result<Event, codec::DecodeError>)>, StoreError> {
    inbound_events_of(
        store,
        inbound_stream,
        &[EventType::IdentityMerged, EventType::IdentityLinked],
    )
    .await
}

/// The records of an inbound stream whose event type is one of `types`, each with its
/// position, decoded (only those: the patient's other events are not).
pub(crate) async fn inbound_events_of<S: EventStore>(
    store: &S,
    inbound_stream: &str,
    types: &[EventType],
) -> Result<Vec<(u64, Result<Event, codec::DecodeError>)>, StoreError> {
    Ok(store
        .read_stream(inbound_stream, 0)
        .await?
        .iter()
        .filter(|r| types.iter().any(|t| r.record.record_type == t.as_str()))
        .map(|r| (r.position, codec::decode_inbound(r)))
        .collect())
}

/// The stored records of these ids (`EventStore::stored_events`), by id.
pub(crate) async fn stored_by_id<S: EventStore>(
    store: &S,
    ids: &[String],
) -> Result<HashMap<String, StoredId>, StoreError> {
    Ok(store
        .stored_events(ids)
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect())
}

/// For each event whose id the log holds already, what a single engine would answer
/// (a duplicate, or [`Refused::IdReused`]); `None` for an id the log does not hold.
/// A second event of `events` with the id of an earlier one is judged against it, as
/// the engine judges a batch. Two queries (the stored records, the links of those that
/// differ by their key alone), a stream read for a merge only when a link does not tell.
pub async fn known<S: EventStore>(
    store: &S,
    events: &[Event],
) -> Result<Vec<Option<Result<IngestOutcome, Refused>>>, StoreError> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let stored = if ids.is_empty() {
        HashMap::new()
    } else {
        stored_by_id(store, &ids).await?
    };
    let moved = moved_keys(store, events, &stored).await?;
    let mut seen: HashMap<&str, &Event> = HashMap::new();
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if let Some(s) = stored.get(&e.id) {
                return Some(redelivered(s, e, moved.contains(&i)));
            }
            if let Some(first) = seen.get(e.id.as_str()) {
                return Some(redelivered(&stored_id(first), e, false));
            }
            seen.insert(e.id.as_str(), e);
            None
        })
        .collect())
}
