//! `identity.linked` in the engine: the link itself (what it moves is a merge's work,
//! `merge.rs`). See [`crate::links`] for the design.
//!
//! Before the merge, the link is checked against the log (and the links the batch
//! learned before it): its local key linked to another national key is refused (never
//! two people merged silently), as is a "national" key that is itself a linked local
//! key. A new link is written in the batch's commit, in the local key's link stream at
//! expected version 0: two engines learning links for one local key at once (their
//! national keys in different partitions) cannot both commit; the second retries on
//! fresh state and finds the first's link.

use std::collections::HashMap;

use parcours_core::events::{Event, EventData};
use parcours_store::{EventStore, StreamWrite};

use super::{Refused, RuntimeError};
use crate::codec;

/// A link to write: its local key.
pub(super) struct NewLink(String);

/// The links a batch learns, in order.
#[derive(Default)]
pub(super) struct Learned {
    by_local: HashMap<(String, String), String>,
    writes: Vec<StreamWrite>,
}

impl Learned {
    /// `event`'s link, new, was committed with its merge.
    pub(super) fn add(&mut self, event: &Event, link: NewLink) {
        self.writes.push(StreamWrite {
            stream: codec::identity_stream(&event.tenant, &link.0),
            expected_version: 0,
            records: vec![codec::encode_identity_link(event, &link.0)],
        });
        self.by_local
            .insert((event.tenant.clone(), link.0), event.subject.clone());
    }

    /// The link streams' writes of the batch's commit.
    pub(super) fn writes(self) -> Vec<StreamWrite> {
        self.writes
    }

    fn get(&self, tenant: &str, local: &str) -> Option<&String> {
        self.by_local.get(&(tenant.to_owned(), local.to_owned()))
    }
}

/// Check an `identity.linked` event (any other event: nothing to check): `Ok(Some)` a
/// new link to write with its merge, `Ok(None)` one the log holds already (the merge
/// still moves what the local key got since), `Err` refused.
pub(super) async fn check<S: EventStore>(
    store: &S,
    learned: &Learned,
    event: &Event,
) -> Result<Result<Option<NewLink>, Refused>, RuntimeError> {
    let EventData::IdentityLinked(l) = &event.data else {
        return Ok(Ok(None));
    };
    if let Err(e) = parcours_core::merge::keys(event) {
        return Ok(Err(Refused::Invalid(e.to_string())));
    }
    let (tenant, local, national) = (
        event.tenant.as_str(),
        l.local_subject.as_str(),
        event.subject.as_str(),
    );
    let mut of_local = learned.get(tenant, local).cloned();
    let mut of_national = learned.get(tenant, national).cloned();
    if of_local.is_none() || of_national.is_none() {
        let stored = store
            .latest_subjects(&[
                codec::identity_stream(tenant, local),
                codec::identity_stream(tenant, national),
            ])
            .await?;
        let mut stored = stored.into_iter();
        of_local = of_local.or(stored.next().flatten());
        of_national = of_national.or(stored.next().flatten());
    }
    if let Some(linked) = of_national {
        return Ok(Err(Refused::Invalid(crate::links::national_is_local(
            national, &linked,
        ))));
    }
    Ok(match of_local {
        None => Ok(Some(NewLink(local.to_owned()))),
        Some(linked) if linked == national => Ok(None),
        Some(linked) => Err(Refused::Invalid(crate::links::conflict(
            local, &linked, national, false,
        ))),
    })
}
