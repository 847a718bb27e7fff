//! Identity links: one patient, one subject.
//!
//! A hospital names a patient by its IPP (a local identifier: PID-3 with an assigning
//! authority) and, once the identity is qualified (HL7 PID-32 `VALI`, FHIR FR Core
//! identity reliability `VALI`), by the INS too; the adapters then key the patient on the
//! INS (IHE PAM-FR: the INS is the reference identity once qualified). A lab result or a
//! message sent before the qualification carries the IPP alone, which keys another
//! subject: the person's pathway would never see it. So:
//!
//! - **learned**: a message naming the patient by both a qualified INS and a local
//!   identifier makes the adapter (HL7 v2, FHIR) send `identity.linked` (subject = the
//!   INS's key, `local_subject` = the local identifier's key) before the patient's
//!   events. The engine records the link in the log, in the local key's link stream
//!   `identity/<tenant>/<local key>` (one record, `identity.linked`, whose subject is the
//!   INS's key; keys only, never an identifier), and, in the same commit, moves whatever
//!   the local key had (instances, timers, work items) to the INS's key as
//!   `identity.merged` does (`instance.rekeyed`). Links are log records: `parcours
//!   replay` has nothing to rebuild, a copy of the log holds them, and the link stream's
//!   expected version (0) lets one link per local key commit, whichever engine learns it.
//! - **resolved**: [`linking`] is the intake fronts' handle (MLLP, FHIR over HTTP and
//!   NATS, `/v1/events`): before events go on — tokenized by the vault, forwarded to the
//!   owner of their partition in scale-out — it reads the links of their subjects (one
//!   query, another per hop when a key leads on: below) and rewrites a linked local key
//!   to its INS's key; an `identity.merged`
//!   (A40) names the keys the patients' instances live on, and one whose two keys are
//!   then the same person is acknowledged with nothing to do. A link the log holds
//!   already is not sent again (every qualified message carries both identifiers).
//! - **refused**: a message linking a local key that is linked to another INS (two
//!   people sharing an IPP, a wrong INS attached) is refused whole — its link and every
//!   event of either key — with a reason naming the keys only: the MLLP front answers
//!   `AE` and keeps it as a dead letter, the FHIR front an OperationOutcome, for the
//!   identity-vigilance team. Nothing is merged silently. A `identity.linked` whose INS
//!   key is itself a linked local key is refused by the engine.
//!
//! - **followed at commit**: an event a front resolved just before a link committed
//!   reaches the engine on the local key; the engine remembers the links it committed or
//!   met lately and moves such an event to the national key before deciding it
//!   (`Engine::follow_links`, called by the service) — with one engine always, in
//!   scale-out only when the same engine owns the national key's partition; a link (or
//!   merge) another engine committed makes the event's commit race it instead (the
//!   commits' guards, `EngineConfig::shared_log`), and tried again the event is moved
//!   by the log's links (`Engine::retry_batch`, with [`relink`]). A link whose
//!   group commit is still in flight counts too: the service decides the event's group
//!   after that commit and follows the links again first (the link's group is a barrier,
//!   and holds the local key); in one group, an event after the link under its local key
//!   is the national key's. On NATS, a partition hands a local key's events published
//!   after a link over only once the link's batch was answered (`parcours-nats`'s
//!   schedule).
//! - **resent**: an event stored under the local key and sent again after the link (an
//!   HL7 sender whose ACK was lost) is resolved to the national key here; the engine
//!   acknowledges it as a duplicate (its stored key is linked to the one sent).
//!
//! - **retired keys lead to their survivor**: hospitals' downstream systems (labs,
//!   radiology, another ward's interface) keep sending under an identifier an A40
//!   retired for hours or days. The engine commits an `identity.merged` with a record in
//!   the retired key's identity stream — the same stream as a link's, `identity/<tenant>/
//!   <retired key>`, type `identity.merged`, subject the surviving key, payload
//!   `{"merged_subject", "subject"}` (keys only) — at expected version 0: a key has one
//!   record, a link or a retirement, whichever committed first (a retired key linked
//!   already keeps its link: the fronts had resolved the A40 to its national key). So
//!   everything above that reads where a key leads follows a merge as it follows a link:
//!   the fronts key a late message on the survivor before the vault and the partitioning,
//!   the engine follows the merges it committed at commit, the NATS consumers take keyed
//!   events to the survivor's partition, a resend is a duplicate. Keys lead on (`leads`):
//!   a survivor merged in turn into another key (A into B, then B into C: A leads to C), a
//!   national key merged since its link, at most [`LEADS_MAX_HOPS`] records, one query per
//!   hop (none more when no key asked has a record). A link arriving later for a retired
//!   local key is compared with where the key leads: the same person, already known;
//!   another, refused as a conflict (identity vigilance links the surviving identifier).
//!   A link whose national key a merge retired is sent as a link to the survivor.
//!   **Older logs**: merges committed before this record existed get it once, when an
//!   engine first opens the log ([`crate::backfill`]: in log order, each merge whose
//!   retired key has no record gets the one its commit writes today; a key linked since
//!   keeps its link); from then on they are followed as merges committed since are.
//!
//! - **erased together**: [`person_keys`] gathers every key the links and merges join
//!   to the ones an erasure names (a local key's national key, a retired key's survivor,
//!   the local keys linked to a national key, the keys merged into one), so the person's
//!   older records, tokenized with those keys' data keys, are erased with the rest
//!   (`person.rs`).
//!
//! - **keyed on NATS**: the partition consumers (`parcours-nats`) take canonical events
//!   already keyed, and partitioned by their key: an integration publishing events itself
//!   on `parcours.<tenant>.in.p<NN>.<type>` under a linked local key has them in the
//!   local key's partition. Deciding them there would decide the national key's patient
//!   in another partition's loop (two owners of one patient), so a consumer reads the
//!   links of each batch's keys ([`relink`], one query) and publishes an event whose key
//!   moved to the national key's partition (its id kept), acknowledging the original
//!   once JetStream confirmed that copy; only when the national key's events are in the
//!   same batch (the same loop holds them) does it submit the event in place. A link
//!   earlier in the batch counts as known ([`relink`]'s docs). The engine's dedupe by id
//!   holds across retries: a copy stored under the national key is a duplicate, and so
//!   is the original committed under the local key before the link (`crate::resend`).

mod person;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parcours_core::events::{Event, EventData};
use parcours_store::{EventStore, StoreError};

use crate::codec;
use crate::engine::{IngestOutcome, Refused};
use crate::service::{EventResult, Forward, Forwarded, Handle, SubmitError};

pub use person::{PERSON_KEYS_MAX, PersonKeys, person_keys};

/// A handle whose submissions have their patients' keys resolved through the log's
/// identity links, then go on through `next` (see the module docs).
pub fn linking<S>(store: S, next: Handle) -> Handle
where
    S: EventStore + Clone + 'static,
{
    next.forwarding(Arc::new(Linking {
        store,
        next: next.clone(),
    }))
}

/// The [`Forward`] behind [`linking`].
struct Linking<S> {
    store: S,
    next: Handle,
}

impl<S> std::fmt::Debug for Linking<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linking").field("next", &self.next).finish()
    }
}

impl<S> Forward for Linking<S>
where
    S: EventStore + Clone + 'static,
{
    fn forward(&self, events: Vec<Event>) -> Forwarded<'_> {
        Box::pin(async move {
            let mut plan = resolve(&self.store, events)
                .await
                .map_err(|e| SubmitError::Unavailable(format!("identity links: {e}")))?;
            let submit = std::mem::take(&mut plan.submit);
            let results = if submit.is_empty() {
                Vec::new()
            } else {
                self.next.submit(submit).await?
            };
            Ok(plan.answer(results))
        })
    }
}

/// What becomes of a submission's events.
#[derive(Debug)]
pub struct Plan {
    /// The events to submit, resolved.
    pub submit: Vec<Event>,
    /// For each event submitted to the linker, in order: its place in `submit`, or its
    /// answer already.
    pub slots: Vec<Slot>,
}

/// What becomes of one event.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// Submitted, at this index.
    Submitted(usize),
    /// Answered without being submitted: a link known already, a merge of one person, a
    /// conflicting link.
    Answered(EventResult),
}

impl Plan {
    /// The results of the submitted events, in the order the events came.
    pub fn answer(self, results: Vec<EventResult>) -> Vec<EventResult> {
        let mut results: Vec<Option<EventResult>> = results.into_iter().map(Some).collect();
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Submitted(i) => results
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or(Ok(IngestOutcome::Queued)),
                Slot::Answered(r) => r,
            })
            .collect()
    }
}

pub(crate) type Key = (String, String);

/// The most records `leads` follows from one key: a local key linked to a national
/// key merged later into another, itself merged in turn, … A person has a few; a longer
/// chain (or a cycle, which the fronts never write) stops at the key reached.
pub const LEADS_MAX_HOPS: usize = 16;

/// Where [`relink`] (and the other readers of links) read the latest record's subject of
/// identity streams: the log itself (every [`EventStore`]: `latest_subjects`), or a
/// reader that shares one query among concurrent callers (the NATS partition consumers:
/// `parcours-nats`'s coalesced links, one query for the batches of several partitions).
pub trait LatestSubjects: Send + Sync {
    /// Each stream's latest record's subject (None: no record), in the order asked.
    fn read_latest_subjects(
        &self,
        streams: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send;
}

impl<S: EventStore> LatestSubjects for S {
    fn read_latest_subjects(
        &self,
        streams: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send {
        self.latest_subjects(streams)
    }
}

/// Where the log's identity streams lead each of the `asked` keys (those with a record
/// only): a linked local key to its national key, a key retired by a merge to its
/// survivor, and on from there — the national key retired since by a merge, the
/// survivor merged in turn into another key — to the key that leads nowhere, at most
/// [`LEADS_MAX_HOPS`] records. One `latest_subjects` query for the asked keys, then one
/// per hop for the keys still moving (none when no key asked has a record).
pub(crate) async fn leads<S: LatestSubjects + ?Sized>(
    store: &S,
    asked: Vec<Key>,
) -> Result<HashMap<Key, String>, StoreError> {
    // Each key's stream as read (None: no record), and each asked key's walk.
    let mut next: HashMap<Key, Option<String>> = HashMap::new();
    let mut walks: Vec<(Key, String, HashSet<String>)> = asked
        .into_iter()
        .map(|k| {
            let at = k.1.clone();
            let seen = HashSet::from([at.clone()]);
            (k, at, seen)
        })
        .collect();
    let mut out: HashMap<Key, String> = HashMap::new();
    for _ in 0..LEADS_MAX_HOPS {
        let mut ask: Vec<Key> = Vec::new();
        for (k, at, _) in &walks {
            let key = (k.0.clone(), at.clone());
            if !next.contains_key(&key) && !ask.contains(&key) {
                ask.push(key);
            }
        }
        if !ask.is_empty() {
            let streams: Vec<String> = ask
                .iter()
                .map(|(t, s)| codec::identity_stream(t, s))
                .collect();
            let found = store.read_latest_subjects(&streams).await?;
            next.extend(ask.into_iter().zip(found));
        }
        walks.retain_mut(|(k, at, seen)| {
            let key = (k.0.clone(), at.clone());
            match next.get(&key).cloned().flatten() {
                Some(n) if !n.is_empty() && seen.insert(n.clone()) => {
                    at.clone_from(&n);
                    out.insert(k.clone(), n);
                    true
                }
                _ => false,
            }
        });
        if walks.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// The key parcours follows each of `keys` (of `tenant`) under: where the log's identity
/// links and merges lead it (a linked IPP to its INS, a retired key to its survivor, and
/// on), else the key itself; in the order asked.
pub async fn followed_as<S: EventStore>(
    store: &S,
    tenant: &str,
    keys: &[String],
) -> Result<Vec<String>, StoreError> {
    let asked: Vec<Key> = keys
        .iter()
        .map(|k| (tenant.to_owned(), k.clone()))
        .collect();
    let led = leads(store, asked.clone()).await?;
    Ok(asked
        .into_iter()
        .map(|k| led.get(&k).cloned().unwrap_or(k.1))
        .collect())
}

/// Resolve a submission's patients through the identity links (module docs): one read of
/// the links of every key it names.
pub async fn resolve<S: EventStore>(store: &S, events: Vec<Event>) -> Result<Plan, StoreError> {
    // Every key the events name, once.
    let mut asked: Vec<Key> = Vec::new();
    let mut seen: HashSet<Key> = HashSet::new();
    for e in &events {
        let mut ask = |subject: &str| {
            let key = (e.tenant.clone(), subject.to_owned());
            if seen.insert(key.clone()) {
                asked.push(key);
            }
        };
        ask(&e.subject);
        match &e.data {
            EventData::IdentityMerged(m) => ask(&m.merged_subject),
            EventData::IdentityLinked(l) => ask(&l.local_subject),
            _ => {}
        }
    }
    let stored = leads(store, asked).await?;

    // The submission's own links: new ones resolve its other events too; one that
    // contradicts the log (or another of its links) refuses both people's events. A
    // link's national key retired since by a merge stands for its survivor (where the
    // log leads it).
    let mut claimed: HashMap<Key, String> = HashMap::new();
    let mut refused: HashMap<Key, String> = HashMap::new();
    let mut known: HashSet<usize> = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let EventData::IdentityLinked(l) = &e.data else {
            continue;
        };
        let local = (e.tenant.clone(), l.local_subject.clone());
        let national = stored
            .get(&(e.tenant.clone(), e.subject.clone()))
            .unwrap_or(&e.subject);
        let linked = stored.get(&local).or_else(|| claimed.get(&local));
        match linked {
            // Known (or sent earlier in this submission): nothing to learn.
            Some(n) if n == national => {
                known.insert(i);
            }
            Some(other) => {
                let reason = conflict(&l.local_subject, other, national, true);
                tracing::warn!(tenant = %e.tenant, local = %l.local_subject, linked = %other,
                    national = %national,
                    "identity link refused: the local identifier's key leads to another identity");
                refused.insert(local, reason.clone());
                refused.insert((e.tenant.clone(), e.subject.clone()), reason);
            }
            None => {
                claimed.insert(local, national.clone());
            }
        }
    }
    // Where a key leads: the log's keys lead to the end already; the submission's own
    // links and merges may lead on.
    let resolve = |claimed: &HashMap<Key, String>, tenant: &str, subject: &str| {
        let mut at: Option<String> = None;
        for _ in 0..LEADS_MAX_HOPS {
            let key = (
                tenant.to_owned(),
                at.as_deref().unwrap_or(subject).to_owned(),
            );
            match stored.get(&key).or_else(|| claimed.get(&key)) {
                Some(n) if n != subject && Some(n) != at.as_ref() => at = Some(n.clone()),
                _ => break,
            }
        }
        at
    };

    let mut submit = Vec::with_capacity(events.len());
    let mut slots = Vec::with_capacity(events.len());
    for (i, mut e) in events.into_iter().enumerate() {
        let named: Vec<&str> = match &e.data {
            EventData::IdentityLinked(l) => vec![e.subject.as_str(), l.local_subject.as_str()],
            EventData::IdentityMerged(m) => vec![e.subject.as_str(), m.merged_subject.as_str()],
            _ => vec![e.subject.as_str()],
        };
        let is_link = matches!(e.data, EventData::IdentityLinked(_));
        if let Some(reason) = named
            .iter()
            .find_map(|s| refused.get(&(e.tenant.clone(), (*s).to_owned())))
        {
            if is_link {
                crate::metrics::identity_links(0, 0, 1);
            }
            slots.push(Slot::Answered(Err(Refused::Invalid(reason.clone()))));
            continue;
        }
        if known.contains(&i) {
            crate::metrics::identity_links(0, 1, 0);
            slots.push(Slot::Answered(Ok(IngestOutcome::Duplicate)));
            continue;
        }
        match &mut e.data {
            // The link names its local key as it is, and its national key's survivor
            // when a merge retired it (the engine refuses a "national" key with a record).
            EventData::IdentityLinked(_) => {
                if let Some(n) = stored.get(&(e.tenant.clone(), e.subject.clone())) {
                    tracing::debug!(tenant = %e.tenant, national = %e.subject, survivor = %n,
                        "link: its national key leads to another key");
                    e.subject.clone_from(n);
                }
            }
            EventData::IdentityMerged(m) => {
                if let Some(n) = resolve(&claimed, &e.tenant, &m.merged_subject) {
                    tracing::debug!(tenant = %e.tenant, local = %m.merged_subject, national = %n,
                        "merge: the retired key leads to another key (linked or merged)");
                    m.merged_subject = n;
                }
                if let Some(n) = resolve(&claimed, &e.tenant, &e.subject) {
                    e.subject = n;
                }
                if m.merged_subject == e.subject {
                    // Both already name one person: nothing to move.
                    slots.push(Slot::Answered(Ok(IngestOutcome::Duplicate)));
                    continue;
                }
                // The submission's later events under the retired key follow the merge.
                claimed.insert(
                    (e.tenant.clone(), m.merged_subject.clone()),
                    e.subject.clone(),
                );
            }
            _ => {
                if let Some(n) = resolve(&claimed, &e.tenant, &e.subject) {
                    tracing::debug!(tenant = %e.tenant, local = %e.subject, national = %n,
                        "event for a local identifier's key: taken by its national identity's");
                    e.subject = n;
                }
            }
        }
        slots.push(Slot::Submitted(submit.len()));
        submit.push(e);
    }
    Ok(Plan { submit, slots })
}

/// What [`relink`] did to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relinked {
    /// Its keys are not linked local keys (or it is an `identity.linked`, which names
    /// the keys as they are): unchanged.
    Unchanged,
    /// Its subject was this key, which leads to the key it now has — a local key linked
    /// to its national key, a key retired by a merge to its survivor (an
    /// `identity.merged`'s retired key resolved too).
    Moved {
        /// The local key it named.
        from: String,
    },
    /// An `identity.merged` whose retired key leads to another key (a linked local key,
    /// a key retired already): now that key (its subject, so its partition, unchanged).
    Retired,
    /// An `identity.merged` whose two keys name one person once resolved: nothing to do.
    OnePerson,
}

/// The partition consumers' resolution of keyed events (module docs, "keyed on NATS"):
/// rewrites, in place, each event's subject (and an `identity.merged`'s retired key)
/// leading to another key — linked to a national key, retired by a merge — to the key
/// it leads to, reading the identity streams of the keys the events name in **one**
/// query (none when only `identity.linked` events came; one more per hop when one
/// leads on: `leads`).
///
/// Unlike [`resolve`], nothing is refused here: each event stands alone (the engine
/// refuses a conflicting `identity.linked` by itself, the other events going on). A link
/// earlier in `events` resolves the later events of its local key — one consumer batch
/// holds both keys' events then (the link is in its national key's partition), so they
/// reach the engine together, the link first — unless the log links that local key
/// already (the log's link is taken; the engine refuses the other), or the link's
/// national key is itself a linked local key (the engine refuses that link).
pub async fn relink<S: LatestSubjects + ?Sized>(
    store: &S,
    events: &mut [Event],
) -> Result<Vec<Relinked>, StoreError> {
    let mut asked: Vec<Key> = Vec::new();
    let mut seen: HashSet<Key> = HashSet::new();
    let mut resolving = false;
    for e in events.iter() {
        let mut ask = |subject: &str| {
            let key = (e.tenant.clone(), subject.to_owned());
            if seen.insert(key.clone()) {
                asked.push(key);
            }
        };
        ask(&e.subject);
        match &e.data {
            EventData::IdentityLinked(l) => ask(&l.local_subject),
            EventData::IdentityMerged(m) => {
                ask(&m.merged_subject);
                resolving = true;
            }
            _ => resolving = true,
        }
    }
    if !resolving {
        return Ok(vec![Relinked::Unchanged; events.len()]);
    }
    let stored = leads(store, asked).await?;
    let mut claimed: HashMap<Key, String> = HashMap::new();
    let linked = |claimed: &HashMap<Key, String>, tenant: &str, subject: &str| {
        let key = (tenant.to_owned(), subject.to_owned());
        stored.get(&key).or_else(|| claimed.get(&key)).cloned()
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events.iter_mut() {
        let tenant = e.tenant.clone();
        match &mut e.data {
            EventData::IdentityLinked(l) => {
                let local = (tenant.clone(), l.local_subject.clone());
                let national = (tenant, e.subject.clone());
                if !stored.contains_key(&local)
                    && !stored.contains_key(&national)
                    && !claimed.contains_key(&local)
                {
                    claimed.insert(local, e.subject.clone());
                }
                out.push(Relinked::Unchanged);
                continue;
            }
            EventData::IdentityMerged(m) => {
                let retired = linked(&claimed, &tenant, &m.merged_subject);
                if let Some(n) = &retired {
                    m.merged_subject.clone_from(n);
                }
                let survivor = linked(&claimed, &tenant, &e.subject);
                let one = *m.merged_subject == *survivor.as_deref().unwrap_or(&e.subject);
                let moved = survivor.map(|n| std::mem::replace(&mut e.subject, n));
                out.push(if one {
                    Relinked::OnePerson
                } else if let Some(from) = moved {
                    Relinked::Moved { from }
                } else if retired.is_some() {
                    Relinked::Retired
                } else {
                    Relinked::Unchanged
                });
                continue;
            }
            _ => {}
        }
        out.push(match linked(&claimed, &tenant, &e.subject) {
            Some(n) => Relinked::Moved {
                from: std::mem::replace(&mut e.subject, n),
            },
            None => Relinked::Unchanged,
        });
    }
    Ok(out)
}

/// Why a link was refused: the local key is linked to another national key. `whole`:
/// the front refused the message whole (else the engine refused the link alone, the
/// message's other events having gone on). Keys only, never an identifier.
pub(crate) fn conflict(local: &str, linked: &str, national: &str, whole: bool) -> String {
    let what = if whole {
        "the message was not recorded"
    } else {
        "the link was not recorded"
    };
    format!(
        "identity link refused: the local identifier (key {local}) is linked to the national \
         identity (INS) of key {linked} (or was merged into that key), and this message names \
         it with the INS of key {national}: one local identifier cannot name two people, and \
         parcours never merges them silently; {what}. The identities must be corrected at \
         the source (identity vigilance), then the message sent again"
    )
}

/// Why a link was refused: its national key leads to another one (a local key linked to
/// it; the engine's check, a front having resolved a key a merge retired).
pub(crate) fn national_is_local(national: &str, linked: &str) -> String {
    format!(
        "identity.linked refused: its subject (key {national}) leads to key {linked} (a local \
         identifier's key linked to that national identity, or a key merged into it): a link \
         names the INS's key as its subject, as the intake resolves it"
    )
}

/// Why a merge was refused: its surviving key leads to another one (a local key linked
/// to an INS, a key an earlier merge retired): the engine's check, the fronts resolving
/// the survivor to where it leads.
pub(crate) fn survivor_leads(survivor: &str, leads: &str) -> String {
    format!(
        "identity.merged refused: its surviving key {survivor} leads to key {leads} (a local \
         identifier's key linked to that national identity, or a key merged into it): the \
         retired key's instances would be moved where no later event reaches them; name \
         the key it leads to as the subject, as the intake resolves it"
    )
}
