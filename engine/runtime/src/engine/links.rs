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
//! An `identity.merged` records its retired key's retirement the same way
//! ([`retirement`]): in the retired key's identity stream at expected version 0, subject
//! the survivor, with the merge — unless that stream holds a record already (the key
//! linked, or retired before: the log's word stands) or the survivor leads back to it.
//!
//! The engine also remembers the links and retirements it committed or met in the log
//! lately ([`Recent`]): a front reads the identity streams before it submits, so an event
//! resolved just before a link or merge committed still names the old key when it
//! reaches the engine; the service moves it to the key it leads to (followed through the
//! remembered ones) before deciding it ([`super::Engine::follow_links`]): before grouping
//! it, and again once the commits in flight it waited for ended (one of them may have
//! held the link or merge). In one batch, an event after a link or merge (new or known)
//! under its old key is the key's it leads to ([`Learned::national_of`]).

use std::collections::{HashMap, HashSet, VecDeque};

use parcours_core::events::{Event, EventData};
use parcours_store::{EventStore, Guard, StreamWrite};

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
    /// The keys whose identity streams `writes` writes (tenant, local or retired key).
    pub(super) written: Vec<(String, String)>,
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
        self.written.push((event.tenant.clone(), link.0.clone()));
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
    /// key a link earlier in the batch holds (new or known), followed through the batch's
    /// later links and retirements (A linked to B, then B merged into C: C), at most
    /// [`crate::links::LEADS_MAX_HOPS`] of them.
    pub(super) fn national_of(&self, event: &Event) -> Option<&str> {
        if self.by_local.is_empty() || parcours_core::merge::is_merge(event) {
            return None;
        }
        let mut to = self.get(&event.tenant, &event.subject)?;
        for _ in 1..crate::links::LEADS_MAX_HOPS {
            match self.get(&event.tenant, to) {
                Some(next) if next != &event.subject => to = next,
                _ => break,
            }
        }
        Some(to.as_str())
    }

    /// `event`'s merge, retiring a key with no record, was committed: the retired key's
    /// identity stream leads to the survivor from then on (`retirement`).
    pub(super) fn retire(&mut self, event: &Event, retired: Retired) {
        self.writes.push(StreamWrite {
            stream: codec::identity_stream(&event.tenant, &retired.0),
            expected_version: 0,
            records: vec![codec::encode_identity_retirement(event, &retired.0)],
        });
        self.written.push((event.tenant.clone(), retired.0.clone()));
        self.links.push((
            event.tenant.clone(),
            retired.0.clone(),
            event.subject.clone(),
        ));
        self.by_local
            .insert((event.tenant.clone(), retired.0), event.subject.clone());
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
    // Where each key leads (the batch's links and retirements, then the log's, followed
    // to the end: a national key may have been merged into another since its link).
    let mut of_local = learned.get(tenant, local).cloned();
    let mut of_national = learned.get(tenant, national).cloned();
    if of_local.is_none() || of_national.is_none() {
        let mut stored = crate::links::leads(
            store,
            vec![
                (tenant.to_owned(), local.to_owned()),
                (tenant.to_owned(), national.to_owned()),
            ],
        )
        .await?;
        of_local = of_local.or_else(|| stored.remove(&(tenant.to_owned(), local.to_owned())));
        of_national =
            of_national.or_else(|| stored.remove(&(tenant.to_owned(), national.to_owned())));
    }
    // The two keys lead to one person already: nothing to learn.
    if of_local.is_some() && of_local.as_deref() == Some(of_national.as_deref().unwrap_or(national))
    {
        return Ok(Ok(None));
    }
    if let Some(linked) = of_national {
        return Ok(Err(Refused::Invalid(crate::links::national_is_local(
            national, &linked,
        ))));
    }
    Ok(match of_local {
        None => Ok(Some(NewLink(local.to_owned()))),
        Some(linked) => Err(Refused::Invalid(crate::links::conflict(
            local, &linked, national, false,
        ))),
    })
}

/// A key an `identity.merged` retires, to record as leading to the survivor
/// ([`Learned::retire`]).
pub(super) struct Retired(String);

/// Whether the retired key of an `identity.merged` (any other event: `Ok(None)`) gets
/// its record leading to the survivor with the merge: only when its identity stream is
/// empty (expected version 0: one record per key, a link or a retirement, whichever
/// commits first). A retired key linked already, or retired already (a late A40 naming
/// the old survivor: the fronts resolve it), keeps what the log says; a survivor leading
/// to the retired key (a cycle) records nothing. A survivor leading to a third key (a
/// local key linked to an INS, a key retired into another) is refused: the merge would
/// move the retired key's instances onto a key no later event reaches (the fronts and
/// the NATS consumers' `relink` name the key it leads to: this catches a merge
/// submitted without them, or resolved just before the survivor's link committed). One
/// `latest_subjects` query (more when the survivor leads on).
pub(super) async fn retirement<S: EventStore>(
    store: &S,
    learned: &Learned,
    event: &Event,
) -> Result<Result<Option<Retired>, Refused>, RuntimeError> {
    if !matches!(event.data, EventData::IdentityMerged(_)) {
        return Ok(Ok(None));
    }
    let Ok((retired, survivor)) = parcours_core::merge::keys(event) else {
        return Ok(Ok(None));
    };
    let tenant = event.tenant.as_str();
    let refused = |leads: &str| {
        Ok(Err(Refused::Invalid(crate::links::survivor_leads(
            survivor, leads,
        ))))
    };
    match learned.get(tenant, survivor).map(String::as_str) {
        Some(leads) if leads == retired => return Ok(Ok(None)),
        Some(leads) => return refused(leads),
        None if learned.get(tenant, retired).is_some() => return Ok(Ok(None)),
        None => {}
    }
    let leads = crate::links::leads(
        store,
        vec![
            (tenant.to_owned(), retired.to_owned()),
            (tenant.to_owned(), survivor.to_owned()),
        ],
    )
    .await?;
    let key = |k: &str| (tenant.to_owned(), k.to_owned());
    match leads.get(&key(survivor)).map(String::as_str) {
        Some(leads) if leads == retired => return Ok(Ok(None)),
        Some(leads) => return refused(leads),
        None => {}
    }
    if leads.contains_key(&key(retired)) {
        tracing::debug!(tenant = %tenant, retired = %retired, survivor = %survivor,
            "merge: the retired key leads elsewhere already; its record is kept");
        return Ok(Ok(None));
    }
    Ok(Ok(Some(Retired(retired.to_owned()))))
}

/// Whether the commit of `event` guards its key's identity stream in a shared log
/// ([`guards`]): every event that follows the links when tried again
/// ([`super::Engine::retry_batch`]) — not a link or merge (named by the keys as they
/// are; the engine checks them against the log itself), nor a `timer.fired` (decided on
/// its instance, whose stream version a link's or merge's commit moves, and never tried
/// again: the next round reads the timer rows the link moved).
pub(super) fn guarded(event: &Event) -> bool {
    !matches!(
        event.data,
        EventData::IdentityLinked(_) | EventData::IdentityMerged(_) | EventData::TimerFired(_)
    )
}

/// The guards of a batch's commit in a log several engines write
/// ([`super::EngineConfig::shared_log`]), each under the lock of its key's identity
/// stream (`identity/<tenant>/<key>`), so that a link or merge another engine commits
/// meanwhile and this commit conflict — whichever is written second is refused and
/// decided again, with the link known:
/// - for each key of `events` (those [`guarded`]) whose inbound stream the commit writes:
///   its identity stream at version 0 (no link, no retirement), unless the commit writes
///   that stream itself (its events before the link in the batch are the key's); the
///   lock shared (events' commits do not wait for each other);
/// - for each key whose identity stream the commit writes (`identities`: a new link's
///   local key, a merge's retired key): its inbound stream at the version the engine
///   loaded (`inbound_version`), so that an event under it committed since makes the link
///   race (and, tried again, move what it wrote) — unless the commit writes that stream
///   (its own write expects the version); the lock exclusive.
///
/// One lock (shared, for events) and one index probe per key on PostgreSQL, the locks
/// folded into at most 128; nothing for a batch of one engine.
pub(super) fn guards(
    events: &[(String, String)],
    writes: &[StreamWrite],
    identities: &[(String, String)],
    inbound_version: impl Fn(&str, &str) -> Option<u64>,
) -> Vec<Guard> {
    let linked: HashSet<String> = identities
        .iter()
        .map(|(t, k)| codec::identity_stream(t, k))
        .collect();
    let written: HashSet<&str> = writes.iter().map(|w| w.stream.as_str()).collect();
    let mut guards = Vec::new();
    for (tenant, key) in events {
        let identity = codec::identity_stream(tenant, key);
        if !linked.contains(&identity) {
            guards.push(Guard {
                stream: identity.clone(),
                version: 0,
                lock: identity,
                shared: true,
            });
        }
    }
    for (tenant, key) in identities {
        let inbound = codec::inbound_stream(tenant, key);
        if written.contains(inbound.as_str()) {
            continue;
        }
        if let Some(version) = inbound_version(tenant, key) {
            guards.push(Guard {
                stream: inbound,
                version,
                lock: codec::identity_stream(tenant, key),
                shared: false,
            });
        }
    }
    guards
}

/// Links remembered at most by an engine ([`Recent`]).
pub(super) const RECENT_LINKS: usize = 8192;

/// The links and retirements an engine committed or met in the log lately, local key →
/// national key, retired key → survivor, at most [`RECENT_LINKS`] (the oldest forgotten
/// first): what the fronts may have missed
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

    /// The key `subject` leads to, if remembered: its national key, or its survivor,
    /// followed on through the remembered links and retirements (a national key merged
    /// since, a survivor merged in turn), at most [`crate::links::LEADS_MAX_HOPS`].
    pub(super) fn follow(&self, tenant: &str, subject: &str) -> Option<&str> {
        let links = self.by_tenant.get(tenant)?;
        let mut at = links.get(subject)?.as_str();
        for _ in 1..crate::links::LEADS_MAX_HOPS {
            match links.get(at) {
                Some(next) if next != subject => at = next,
                _ => break,
            }
        }
        Some(at)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
