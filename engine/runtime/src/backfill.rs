//! The retirements of merges committed before they were recorded, written once per log.
//!
//! Since the release that records them, the commit of an `identity.merged` writes, in the
//! retired key's identity stream `identity/<tenant>/<retired key>`, a record whose
//! subject is the surviving key ([`codec::encode_identity_retirement`], expected version
//! 0: one record per key, a link or a retirement, whichever committed first), and
//! everything that follows links follows it ([`crate::links`]). A log written by an
//! earlier release holds merges without it: a late message under the retired key would
//! enrol a second patient. So when an engine opens a log without the mark
//! [`RETIREMENTS_MARK`] ([`crate::Engine::open`]), [`retirements`] reads the log once,
//! up to its end when it starts ([`EventStore::scan_all`]: only the inbound
//! `identity.merged` records are decoded), and for each merge in log order whose retired
//! key's identity stream holds no record, writes the record that merge's commit writes
//! today. Then it sets the mark: later starts read one checkpoint. A log with no record
//! (a new one) costs the mark's write.
//!
//! It decides as a merge's commit does (`retirement` in the engine): a retired key
//! with a record — linked (before or after its merge: the log's word stands), or retired
//! by an earlier merge — keeps it; a merge whose survivor leads to its retired key (a
//! loop) records nothing. A merge whose survivor was retired or linked since is recorded
//! all the same: the retired key leads on through the survivor's record
//! ([`crate::links`]'s `leads`). Each page of the log's merges costs one `latest_subjects`
//! query (one per hop where keys lead on) and one commit of their records; a commit
//! refused because a stream got a record meanwhile (another engine backfilling at the
//! same moment, a link or a merge committed meanwhile: a version conflict or the same
//! record id) is made again one record at a time, and a record refused then is left to
//! what the log holds: never an error. So engines starting together on one PostgreSQL
//! write each record once.
//!
//! Identity streams are not instances' or inbound streams: replay, the projections and
//! the indicators skip them ([`codec::is_instance`]); the records written here change
//! none of them.

use std::collections::{HashMap, HashSet};

use parcours_core::events::{Event, EventType};
use parcours_store::{Appended, Commit, EventStore, RecordView, StoreError, StreamWrite};

use crate::codec::{self, DecodeError};
use crate::engine::RuntimeError;
use crate::links::{Key, LEADS_MAX_HOPS, leads};

/// Checkpoint name marking a log whose merges all have their retired key's record (or
/// were left to a record the key had), written by [`retirements`]; its position is the
/// end of the log when the backfill started.
pub const RETIREMENTS_MARK: &str = "identity-retirements-v1";

/// Records read at a time.
const PAGE: usize = 4_096;

/// What [`retirements`] did (counts only: the keys are not logged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// `identity.merged` inbound records read.
    pub merges: u64,
    /// Retirement records written.
    pub written: u64,
    /// Merges whose retired key had a record already (a link, a retirement: in the log,
    /// or written meanwhile by another writer).
    pub present: u64,
    /// Merges left without a record: the survivor leads back to the retired key, or the
    /// merge names no valid pair of keys.
    pub skipped: u64,
}

/// Write the retirement records a log's earlier merges lack, once (module docs): `None`
/// when the log holds the mark already (nothing read), else what was done.
pub async fn retirements<S: EventStore>(store: &S) -> Result<Option<Backfilled>, RuntimeError> {
    if store.checkpoint(RETIREMENTS_MARK).await?.is_some() {
        return Ok(None);
    }
    // Merges committed after this are this release's: they write their own record.
    let end = store.last_position().await?;
    let mut done = Backfilled::default();
    let mut after = 0;
    while after < end {
        let (found, last) = store.scan_all(after, PAGE, Vec::new(), merges).await?;
        let Some(last) = last else { break };
        after = last;
        let page = found
            .into_iter()
            .collect::<Result<Vec<Event>, DecodeError>>()?;
        if !page.is_empty() {
            backfill_page(store, &page, &mut done).await?;
        }
    }
    store.save_checkpoint(RETIREMENTS_MARK, end).await?;
    tracing::info!(
        merges = done.merges,
        written = done.written,
        present = done.present,
        skipped = done.skipped,
        "identity retirements backfilled: each merge's retired key leads to its survivor"
    );
    Ok(Some(done))
}

/// The scan's visitor: the inbound `identity.merged` records, decoded.
fn merges(found: &mut Vec<Result<Event, DecodeError>>, r: RecordView<'_>) {
    if r.record_type == EventType::IdentityMerged.as_str() && codec::is_inbound(r.stream) {
        found.push(codec::decode_inbound_view(&r));
    }
}

/// One page's merges, in log order: where their keys lead in the log (one query), the
/// records to write, written.
async fn backfill_page<S: EventStore>(
    store: &S,
    page: &[Event],
    done: &mut Backfilled,
) -> Result<(), RuntimeError> {
    let mut asked: Vec<Key> = Vec::new();
    let mut seen: HashSet<Key> = HashSet::new();
    for event in page {
        if let Ok((retired, survivor)) = parcours_core::merge::keys(event) {
            for k in [retired, survivor] {
                let key = (event.tenant.clone(), k.to_owned());
                if seen.insert(key.clone()) {
                    asked.push(key);
                }
            }
        }
    }
    let stored = leads(store, asked).await?;
    // Retired key → survivor, for the records this page writes.
    let mut planned: HashMap<Key, String> = HashMap::new();
    let mut writes = Vec::new();
    for event in page {
        done.merges += 1;
        let Ok((retired, survivor)) = parcours_core::merge::keys(event) else {
            done.skipped += 1;
            continue;
        };
        let key = (event.tenant.clone(), retired.to_owned());
        if stored.contains_key(&key) || planned.contains_key(&key) {
            done.present += 1;
            continue;
        }
        if leads_to(&stored, &planned, &event.tenant, survivor, retired) {
            done.skipped += 1;
            continue;
        }
        planned.insert(key, survivor.to_owned());
        writes.push(StreamWrite {
            stream: codec::identity_stream(&event.tenant, retired),
            expected_version: 0,
            records: vec![codec::encode_identity_retirement(event, retired)],
        });
    }
    write(store, writes, done).await
}

/// Whether `from` leads to `to` through the log's identity streams (`stored`: where each
/// asked key leads, to the end) and the records planned.
fn leads_to(
    stored: &HashMap<Key, String>,
    planned: &HashMap<Key, String>,
    tenant: &str,
    from: &str,
    to: &str,
) -> bool {
    let mut at = (tenant.to_owned(), from.to_owned());
    for _ in 0..2 * LEADS_MAX_HOPS {
        if at.1 == to {
            return true;
        }
        match planned.get(&at).or_else(|| stored.get(&at)) {
            Some(next) => at.1.clone_from(next),
            None => return false,
        }
    }
    false
}

/// Write the records in one commit; refused (a stream or a record id stored meanwhile),
/// one at a time, leaving each refused one to what the log holds.
async fn write<S: EventStore>(
    store: &S,
    writes: Vec<StreamWrite>,
    done: &mut Backfilled,
) -> Result<(), RuntimeError> {
    if writes.len() > 1 {
        let n = writes.len() as u64;
        if append(store, writes.clone()).await? {
            done.written += n;
            return Ok(());
        }
    }
    for w in writes {
        if append(store, vec![w]).await? {
            done.written += 1;
        } else {
            done.present += 1;
        }
    }
    Ok(())
}

/// Append the writes: `false` when the log refused them for a record there meanwhile.
async fn append<S: EventStore>(store: &S, writes: Vec<StreamWrite>) -> Result<bool, StoreError> {
    let commit = Commit {
        writes,
        ..Commit::default()
    };
    match store.append(commit).await {
        Ok(Appended::Committed { .. }) => Ok(true),
        Ok(Appended::Duplicate) | Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
