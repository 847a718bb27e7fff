//! One person's subject keys, as the log's identity links and merges tell them: what an
//! erasure (`parcours-vault`) must reach when it is asked for one of them.
//!
//! A person's data may sit under several keys, each with its own data key: a local
//! identifier's (IPP) events stored before its link to the INS, a key retired by a merge
//! (`identity.merged`, A40) with what it held before. From each key asked, and again from
//! each key found, transitively:
//!
//! - **the key a key leads to**: the latest subject of its identity stream
//!   `identity/<tenant>/<key>` (one query for a round's keys, [`EventStore::latest_subjects`]):
//!   a local key's national key, or the survivor of a key an A40 retired (the engine
//!   records the retirement there with the merge; a survivor merged in turn leads on,
//!   found the next round);
//! - **the keys moved into a key**: the `identity.linked` (local keys linked to this
//!   national key) and `identity.merged` (keys retired into this one) events in its
//!   inbound stream `inbound/<tenant>/<key>`. The engine commits a link's record with its
//!   `identity.linked` event, so the national key's inbound stream names every local key
//!   linked to it: there is no need to scan the tenant's link streams.
//!
//! What it costs: per round, one look-up of the round's identity streams, then each new
//! key's inbound stream read whole (a patient's inbound events; only the identity events
//! are decoded). Nothing grows with the rest of the log.
//!
//! **Merges before the retirement record.** Logs written before the engine recorded a
//! retired key's survivor in its identity stream hold those merges in the survivor's
//! inbound stream alone; the first start of an engine of this release writes their
//! records ([`crate::backfill`]), so they are found from either side, as links are. (On
//! a log no engine of this release opened yet, from such a retired key they are not:
//! `parcours erase` runs the backfill first.)
//!
//! At most `limit` keys: a person has a few (an INS, an IPP per hospital, a merge or
//! two); more means identities the log joined wrongly, and [`PersonKeys::truncated`]
//! says so instead of reaching further.

use std::collections::HashSet;

use parcours_store::{EventStore, StoreError};

use crate::codec;

/// The most keys [`person_keys`] gathers for an erasure.
pub const PERSON_KEYS_MAX: usize = 256;

/// A person's subject keys ([`person_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersonKeys {
    /// The keys asked (once each, in their order), then those found through links and
    /// merges, in the order found.
    pub keys: Vec<String>,
    /// How many of [`keys`](Self::keys) were asked: the first ones.
    pub asked: usize,
    /// The links and merges reached more than the limit: `keys` stops there.
    pub truncated: bool,
}

impl PersonKeys {
    /// The keys found through links and merges (not asked).
    pub fn found(&self) -> &[String] {
        &self.keys[self.asked..]
    }
}

/// Every subject key of the tenant that the log's identity links and merges join to one
/// of `asked`, transitively, at most `limit` (module docs: which, and what it costs).
pub async fn person_keys<S: EventStore>(
    store: &S,
    tenant: &str,
    asked: &[String],
    limit: usize,
) -> Result<PersonKeys, StoreError> {
    let mut out = PersonKeys::default();
    let mut seen: HashSet<String> = HashSet::new();
    for key in asked {
        if seen.insert(key.clone()) {
            out.keys.push(key.clone());
        }
    }
    out.asked = out.keys.len();
    let mut round: Vec<String> = out.keys.clone();
    while !round.is_empty() {
        let mut next: Vec<String> = Vec::new();
        let mut add = |key: String, out: &mut PersonKeys| {
            if key.is_empty() || seen.contains(&key) {
                return;
            }
            if out.keys.len() >= limit {
                out.truncated = true;
                return;
            }
            seen.insert(key.clone());
            out.keys.push(key.clone());
            next.push(key);
        };
        // The keys the round's keys lead to: national keys, survivors of merges.
        let streams: Vec<String> = round
            .iter()
            .map(|k| codec::identity_stream(tenant, k))
            .collect();
        for national in store.latest_subjects(&streams).await?.into_iter().flatten() {
            add(national, &mut out);
        }
        // The keys linked or merged into them.
        for key in &round {
            let stream = codec::inbound_stream(tenant, key);
            for (position, event) in crate::resend::identity_events(store, &stream).await? {
                let event = event.map_err(|e| StoreError::Corrupt {
                    position,
                    reason: e.to_string(),
                })?;
                if let Some(retired) = parcours_core::merge::moved_into(&event, key) {
                    add(retired.to_owned(), &mut out);
                }
            }
        }
        if out.truncated {
            break;
        }
        round = next;
    }
    Ok(out)
}
