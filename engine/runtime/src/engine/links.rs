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
//!
//! The engine also remembers the links it committed or met in the log lately
//! ([`Recent`]): a front reads the links before it submits, so an event resolved just
//! before a link committed still names the local key when it reaches the engine; the
//! service moves it to the national key before deciding it
//! ([`super::Engine::follow_links`]): before grouping it, and again once the commits in
//! flight it waited for ended (one of them may have held the link). In one batch, an
//! event after a link (new or known) under its local key is the national key's too
//! ([`Learned::national_of`]).

use std::collections::{HashMap, VecDeque};

use parcours_core::events::{Event, EventData};
use parcours_store::{EventStore, StreamWrite};

use super::{Refused, RuntimeError};
use crate::codec;

/// A link to write: its local key.
pub(super) struct NewLink(String);

/// The links a batch learns, in order.
#[derive(Default)]
pub(super) struct Learned {
    /// (tenant, local key) → national key: the batch's links so far, new or known.
    by_local: HashMap<(String, String), String>,
    writes: Vec<StreamWrite>,
    /// What became of the batch's links.
    pub(super) counts: Counts,
    /// Every link of the batch the log holds once it commits (new or known): (tenant,
    /// local key, national key).
    pub(super) links: Vec<(String, String, String)>,
}

/// What became of a batch's links (`parcours_identity_links_total`), counted once its
/// commit is written.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) linked: u64,
    pub(super) already: u64,
    pub(super) refused: u64,
}

impl Learned {
    /// `event`'s link, new, was committed with its merge.
    pub(super) fn add(&mut self, event: &Event, link: NewLink) {
        self.writes.push(StreamWrite {
            stream: codec::identity_stream(&event.tenant, &link.0),
            expected_version: 0,
            records: vec![codec::encode_identity_link(event, &link.0)],
        });
        self.links
            .push((event.tenant.clone(), link.0.clone(), event.subject.clone()));
        self.by_local
            .insert((event.tenant.clone(), link.0), event.subject.clone());
        self.counts.linked += 1;
    }

    /// `event`'s link, held by the log already, went with its merge.
    pub(super) fn known(&mut self, event: &Event) {
        if let EventData::IdentityLinked(l) = &event.data {
            self.links.push((
                event.tenant.clone(),
                l.local_subject.clone(),
                event.subject.clone(),
            ));
            self.by_local.insert(
                (event.tenant.clone(), l.local_subject.clone()),
                event.subject.clone(),
            );
            self.counts.already += 1;
        }
    }

    /// The national key `event` (not a link or a merge) is taken to: its key is a local
    /// key a link earlier in the batch holds (new or known).
    pub(super) fn national_of(&self, event: &Event) -> Option<&str> {
        if self.by_local.is_empty() || parcours_core::merge::is_merge(event) {
            return None;
        }
        self.get(&event.tenant, &event.subject).map(String::as_str)
    }

    /// `event`'s link was refused (or its merge was).
    pub(super) fn refused(&mut self, event: &Event) {
        if matches!(event.data, EventData::IdentityLinked(_)) {
            self.counts.refused += 1;
        }
    }

    /// The link streams' writes of the batch's commit.
    pub(super) fn take_writes(&mut self) -> Vec<StreamWrite> {
        std::mem::take(&mut self.writes)
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

/// Links remembered at most by an engine ([`Recent`]).
pub(super) const RECENT_LINKS: usize = 8192;

/// The links an engine committed or met in the log lately, local key → national key, at
/// most [`RECENT_LINKS`] (the oldest forgotten first): what the fronts may have missed
/// by reading the links just before they committed. A window of one submission, far
/// shorter than so many links; the log's links (read by the fronts) are the rest.
#[derive(Debug, Default)]
pub(super) struct Recent {
    by_tenant: HashMap<String, HashMap<String, String>>,
    order: VecDeque<(String, String)>,
}

impl Recent {
    /// Remember a link (once).
    pub(super) fn insert(&mut self, tenant: String, local: String, national: String) {
        let links = self.by_tenant.entry(tenant.clone()).or_default();
        if links.insert(local.clone(), national).is_none() {
            self.order.push_back((tenant, local));
        }
        while self.order.len() > RECENT_LINKS {
            let Some((t, l)) = self.order.pop_front() else {
                break;
            };
            if let Some(links) = self.by_tenant.get_mut(&t) {
                links.remove(&l);
                if links.is_empty() {
                    self.by_tenant.remove(&t);
                }
            }
        }
    }

    /// The national key `subject` is linked to, if remembered.
    pub(super) fn get(&self, tenant: &str, subject: &str) -> Option<&str> {
        self.by_tenant.get(tenant)?.get(subject).map(String::as_str)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
