//! Replay: rebuild every instance and every projection from the log's records alone, and
//! check them against what the store holds (snapshots, instance rows, timer rows, open
//! work items). `parcours replay` runs it; `--repair` writes the rebuilt projections.
//!
//! Timer rows keep the catch-up grace the live commit gave them
//! ([`projection::record_changes`]): replay tells each instance's commits apart by their
//! records' `recorded_at` (one instant per commit) and rebuilds the grace from the last
//! commit that changed the instance's earliest timer, with the engine's grace
//! ([`replay_with`], [`verify_with`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use parcours_core::DecideError;
use parcours_core::model::CompiledPathway;
use parcours_core::state::{Change, InstanceState, Recorded, apply};
use parcours_store::{
    Codec, EventStore, IndexChanges, InstanceRow, RecordView, StoreError, TimerChange, TimerRow,
    WorkChange, WorkFilter, WorkItem, WorkStatus,
};
use uuid::Uuid;

use crate::codec;
use crate::engine::{RuntimeError, load_instance};
use crate::projection::{self, Op};
use crate::registry::PathwayRegistry;
use crate::snapshot;

/// Projections as rebuilt from the records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Projections {
    /// Instance rows by stream.
    pub instances: BTreeMap<String, InstanceRow>,
    /// Timer rows by id: each instance's earliest pending timer.
    pub timers: BTreeMap<String, TimerRow>,
    /// Work items by id, open and closed.
    pub work: BTreeMap<String, WorkItem>,
}

/// [`Projections`] while they are rebuilt: the work items in a hash map keyed by id;
/// rows made once, at the end.
/// The timer rows (each instance's earliest pending timer) come from the final states.
#[derive(Default)]
struct Building {
    work: HashMap<Uuid, WorkItem>,
    /// Each instance's work items (an identity merge moves them all).
    by_instance: HashMap<String, Vec<Uuid>>,
    /// The catch-up grace live commits gave timer rows (zero: none; nothing is kept).
    catch_up: SignedDuration,
    /// Per instance, its timer row's grace as its commits so far leave it
    /// ([`CatchUp`]); only with a grace.
    graces: HashMap<String, CatchUp>,
}

/// An instance's timer row's catch-up grace while replay folds its commits (what
/// [`projection::record_changes`] did live, one commit at a time).
struct CatchUp {
    /// The commit being folded: its `recorded_at`, the instance's earliest timer before
    /// it, whether its decisions re-keyed the instance, and whether they grant a grace.
    at: Timestamp,
    earliest_before: Option<(Uuid, Timestamp)>,
    rekeyed: bool,
    grants: bool,
    /// The end of the grace of the row the commits before it left.
    not_before: Option<Timestamp>,
}

impl CatchUp {
    /// The end of the grace of the row the commit leaves, the instance in state `state`
    /// after it (the row's own unless the commit wrote it again).
    fn settle(&self, state: &InstanceState, grace: SignedDuration) -> Option<Timestamp> {
        let earliest = projection::earliest_timer(state);
        if earliest == self.earliest_before && !self.rekeyed {
            return self.not_before;
        }
        let (_, due) = earliest?;
        if !self.grants {
            return None;
        }
        parcours_store::catch_up_end(due, self.at, grace)
    }
}

impl Building {
    /// Before a decision recorded at `at` of the instance in state `before`: a commit
    /// after the one folded so far starts (its records hold another instant).
    fn begin(&mut self, before: &InstanceState, at: Timestamp, events: &[Recorded]) {
        if !self.catch_up.is_positive() {
            return;
        }
        let grace = self.catch_up;
        let rekeyed = events
            .iter()
            .any(|r| matches!(r.change, Change::Rekeyed { .. }));
        let grants = projection::grants_catch_up(events);
        let id = before.instance_id.to_string();
        match self.graces.get_mut(&id) {
            Some(c) if c.at == at => {
                c.rekeyed |= rekeyed;
                c.grants &= grants;
            }
            Some(c) => {
                c.not_before = c.settle(before, grace);
                c.at = at;
                c.earliest_before = projection::earliest_timer(before);
                c.rekeyed = rekeyed;
                c.grants = grants;
            }
            None => {
                self.graces.insert(
                    id,
                    CatchUp {
                        at,
                        earliest_before: projection::earliest_timer(before),
                        rekeyed,
                        grants,
                        not_before: None,
                    },
                );
            }
        }
    }

    /// What a decision's events (`events`, folded into `after`) change, as
    /// [`projection::record_changes`] writes it live.
    fn apply(&mut self, after: &InstanceState, events: &[Recorded]) {
        // Instance and timer rows are computed once, at the end (see `replay_paged`).
        projection::record_ops(events, |op| match op {
            Op::Open(open) => {
                let id = open.id;
                if self.work.insert(id, open.item(after)).is_none() {
                    self.by_instance
                        .entry(after.instance_id.to_string())
                        .or_default()
                        .push(id);
                }
            }
            Op::Status { id, status } => {
                if let Some(item) = self.work.get_mut(&id) {
                    item.status = status;
                }
            }
            Op::Escalated { id, role, priority } => {
                if let Some(item) = self.work.get_mut(&id) {
                    item.status = WorkStatus::Escalated;
                    item.escalated_to = Some(role.to_string());
                    if let Some(p) = priority {
                        item.priority = p;
                    }
                }
            }
            Op::Close { id, status, at } => {
                if let Some(item) = self.work.get_mut(&id) {
                    item.status = status;
                    item.closed_at = Some(at);
                }
            }
        });
    }

    /// The rebuilt work items.
    fn finish(self, into: &mut Projections) {
        // Sorted by id first: a UUID's text (lower-case hex, hyphens at fixed places)
        // sorts as its bytes do, and the map is then built from sorted keys.
        let mut work: Vec<(Uuid, WorkItem)> = self.work.into_iter().collect();
        work.sort_unstable_by_key(|(id, _)| *id);
        into.work = work
            .into_iter()
            .map(|(_, item)| (item.id.clone(), item))
            .collect();
    }
}

/// Every instance and projection rebuilt from the records.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Instance states by id, with the pathway version each is pinned to.
    pub states: HashMap<String, (Arc<CompiledPathway>, InstanceState)>,
    /// The projections.
    pub projections: Projections,
    /// Records in each instance stream.
    pub stream_versions: HashMap<String, u64>,
    /// Records read.
    pub records: u64,
    /// Of which inbound events.
    pub inbound: u64,
}

/// A decision's records: consecutive records of one stream with one cause.
struct Group {
    stream: String,
    cause: Arc<str>,
    /// When its (first) record was recorded.
    recorded_at: Timestamp,
    records: Vec<Recorded>,
}

/// Records read at once.
const PAGE: usize = 4_096;

/// A page of records as read: the instance streams' records' parts copied into one buffer
/// (inbound records are only counted: replay rebuilds instances from their decisions, and
/// their payloads are not even read).
#[derive(Default)]
struct Raw {
    records: u64,
    inbound: u64,
    bytes: Vec<u8>,
    rows: Vec<RawRow>,
}

/// An instance stream's record in [`Raw::bytes`]: its stream, id, type and payload, one
/// after the other, each ending where said.
struct RawRow {
    version: u64,
    recorded_at: Timestamp,
    type_version: u16,
    codec: Codec,
    ends: [usize; 4],
}

impl Raw {
    /// An empty page keeping the buffers of `spent` (the page before last).
    fn reuse(spent: Option<Raw>) -> Raw {
        let mut raw = spent.unwrap_or_default();
        raw.records = 0;
        raw.inbound = 0;
        raw.bytes.clear();
        raw.rows.clear();
        raw
    }

    fn visit(&mut self, r: RecordView<'_>) {
        self.records += 1;
        if codec::is_inbound(r.stream) {
            self.inbound += 1;
        } else if codec::is_instance(r.stream) {
            let mut ends = [0; 4];
            for (end, part) in ends.iter_mut().zip([
                r.stream.as_bytes(),
                r.id.as_bytes(),
                r.record_type.as_bytes(),
                r.payload,
            ]) {
                self.bytes.extend_from_slice(part);
                *end = self.bytes.len();
            }
            self.rows.push(RawRow {
                version: r.version,
                recorded_at: r.recorded_at,
                type_version: r.type_version,
                codec: r.codec,
                ends,
            });
        }
    }

    /// Decode the page (the buffers are kept for another).
    fn decode(&self, decoder: &mut codec::InstanceDecoder) -> Result<Decoded, RuntimeError> {
        let mut out = Decoded {
            records: self.records,
            inbound: self.inbound,
            instance: Vec::with_capacity(self.rows.len()),
        };
        let mut start = 0;
        for row in &self.rows {
            let [stream, id, record_type, payload] = row.ends.map(|end| {
                let part = &self.bytes[start..end];
                start = end;
                part
            });
            // Copied from `str`s: never lossy.
            let text = String::from_utf8_lossy;
            let events = decoder.decode_parts(
                &text(id),
                &text(record_type),
                row.type_version,
                row.codec,
                payload,
            )?;
            out.instance.push((
                text(stream).into_owned(),
                row.version,
                row.recorded_at,
                events,
            ));
        }
        Ok(out)
    }
}

/// A page of records, decoded.
struct Decoded {
    records: u64,
    inbound: u64,
    /// Instance streams' records: stream, version, when recorded, instance events.
    instance: Vec<(String, u64, Timestamp, Vec<Recorded>)>,
}

/// Fold the whole log, in position order.
///
/// Three pages are in flight, each stage on a thread of its own: the next page is read
/// (the store's reading thread: each record's parts copied into one buffer), the current
/// one decoded (a blocking thread) and the previous one folded.
///
/// Timer rows are rebuilt with no catch-up grace: [`replay_with`] for a log written by
/// engines with one.
pub async fn replay<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
) -> Result<Replayed, RuntimeError> {
    replay_paged(store, registry, SignedDuration::ZERO, PAGE).await
}

/// [`replay`], timer rows rebuilt with the catch-up grace `catch_up` the live engines
/// gave them ([`crate::EngineConfig::timer_catch_up`]).
pub async fn replay_with<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    catch_up: SignedDuration,
) -> Result<Replayed, RuntimeError> {
    replay_paged(store, registry, catch_up, PAGE).await
}

/// [`replay_with`], reading `page` records at a time (the result does not depend on it).
pub async fn replay_paged<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    catch_up: SignedDuration,
    page: usize,
) -> Result<Replayed, RuntimeError> {
    let size = page.max(1);
    let mut out = Replayed::default();
    let mut building = Building {
        catch_up,
        ..Building::default()
    };
    let mut group: Option<Group> = None;
    let mut decoder = codec::InstanceDecoder::default();
    // Read, not decoded yet; decoded, not folded yet; a read page's spent buffers.
    let mut raw: Option<Raw> = None;
    let mut decoded: Option<Decoded> = None;
    let mut spent: Option<Raw> = None;
    let mut after = 0;
    let mut done = false;
    while !done || raw.is_some() || decoded.is_some() {
        let read = async {
            if done {
                return Ok((None, None));
            }
            let (page, last) = store
                .scan_all(after, size, Raw::reuse(spent.take()), Raw::visit)
                .await?;
            Ok::<_, RuntimeError>((Some(page), last))
        };
        let decode = async {
            let Some(page) = raw.take() else {
                return Ok::<_, RuntimeError>((None, None));
            };
            let mut d = std::mem::take(&mut decoder);
            let task = tokio::task::spawn_blocking(move || {
                let decoded = page.decode(&mut d);
                (decoded, d, page)
            });
            match task.await {
                Ok((decoded, d, page)) => {
                    decoder = d;
                    Ok((Some(decoded?), Some(page)))
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(StoreError::Backend(format!("replay stopped: {e}")).into()),
            }
        };
        let previous = decoded.take();
        let fold = async {
            match previous {
                Some(d) => fold_page(&mut out, &mut building, &mut group, registry, d),
                None => Ok(()),
            }
        };
        let (read, decode, folded) = tokio::join!(read, decode, fold);
        folded?;
        let (next, spent_page) = decode?;
        decoded = next;
        spent = spent_page;
        let (page, last) = read?;
        match last {
            Some(last) => {
                after = last;
                raw = page;
            }
            None => done = true,
        }
    }
    if let Some(g) = group.take() {
        fold_group(&mut out, &mut building, registry, g)?;
    }
    let graces = std::mem::take(&mut building.graces);
    building.finish(&mut out.projections);
    // Each instance's summary row and timer row, as the last of its decisions leaves it
    // (every instance here had at least one), the row with the grace its last commit
    // that wrote it gave it.
    for (id, (pathway, state)) in &out.states {
        out.projections
            .instances
            .insert(id.clone(), projection::instance_row(pathway, state));
        if let Some(mut row) = projection::timer_row(state) {
            row.not_before = graces.get(id).and_then(|c| c.settle(state, catch_up));
            out.projections.timers.insert(row.id.clone(), row);
        }
    }
    Ok(out)
}

fn fold_page(
    out: &mut Replayed,
    building: &mut Building,
    group: &mut Option<Group>,
    registry: &PathwayRegistry,
    page: Decoded,
) -> Result<(), RuntimeError> {
    out.records += page.records;
    out.inbound += page.inbound;
    for (stream, version, recorded_at, events) in page.instance {
        if let Some(v) = out.stream_versions.get_mut(&stream) {
            *v = version;
        } else {
            out.stream_versions.insert(stream.clone(), version);
        }
        // A decision record is a group of its own; records of the first layout (one
        // per instance event) are grouped by stream and cause. Consecutive events of one
        // cause (a decision's) join or start a group in one move.
        let mut events = events;
        while !events.is_empty() {
            let cause = events[0].cause.clone();
            let run = events
                .iter()
                .position(|r| !same_cause(&r.cause, &cause))
                .unwrap_or(events.len());
            let rest = events.split_off(run);
            match group.as_mut() {
                Some(g) if g.stream == stream && same_cause(&g.cause, &cause) => {
                    g.records.append(&mut events);
                }
                _ => {
                    if let Some(g) = group.take() {
                        fold_group(out, building, registry, g)?;
                    }
                    *group = Some(Group {
                        stream: stream.clone(),
                        cause,
                        recorded_at,
                        records: events,
                    });
                }
            }
            events = rest;
        }
    }
    Ok(())
}

fn same_cause(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

fn fold_group(
    out: &mut Replayed,
    building: &mut Building,
    registry: &PathwayRegistry,
    g: Group,
) -> Result<(), RuntimeError> {
    if !out.states.contains_key(&g.stream) {
        let Some(Change::Enrolled {
            pathway_id,
            pathway_version,
            ..
        }) = g.records.first().map(|r| &r.change)
        else {
            return Err(RuntimeError::Orphan(g.stream));
        };
        let pathway = registry
            .get(pathway_id, *pathway_version)
            .cloned()
            .ok_or_else(|| RuntimeError::MissingVersion {
                instance: g.stream.clone(),
                pathway: pathway_id.clone(),
                version: *pathway_version,
            })?;
        out.states.insert(
            g.stream.clone(),
            (pathway, InstanceState::pending(g.stream.as_str())),
        );
    }
    let Some((pathway, state)) = out.states.get_mut(&g.stream) else {
        return Ok(());
    };
    // An identity merge moved the instance to another subject: its work items, open and
    // closed, as rebuilt so far, are rewritten with it (before the decision's own
    // changes).
    if let Some(to) = g
        .records
        .iter()
        .find_map(|r| parcours_core::merge::rekeyed_to(&r.change))
    {
        for id in building.by_instance.get(&g.stream).into_iter().flatten() {
            if let Some(item) = building.work.get_mut(id) {
                item.subject = to.to_string();
            }
        }
    }
    building.begin(state, g.recorded_at, &g.records);
    for rec in &g.records {
        if matches!(rec.change, Change::Migrated { .. }) {
            *pathway = crate::engine::pathway_for(registry, &g.stream, Some(pathway), rec)?;
        }
        apply(pathway, state, rec).map_err(DecideError::from)?;
    }
    // The instance's summary row is computed once, after the last decision (see
    // `replay_paged`): only the last one stands.
    building.apply(state, &g.records);
    Ok(())
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Inbound events among them.
    pub inbound: u64,
    /// Instances rebuilt.
    pub instances: usize,
    /// Timer rows rebuilt (one per instance with a pending timer: its earliest).
    pub timers: usize,
    /// Work items rebuilt, open and closed.
    pub work_items: usize,
    /// Every difference between the rebuilt and the stored view (empty: they agree).
    pub mismatches: Vec<String>,
}

impl Report {
    /// Whether replay and store agree.
    pub fn agrees(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Rebuild everything from the records and compare with the store's snapshots and
/// projections.
pub async fn verify<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
) -> Result<(Report, Replayed), RuntimeError> {
    verify_with(store, registry, SignedDuration::ZERO).await
}

/// [`verify`], timer rows rebuilt with the catch-up grace the live engines gave them
/// ([`replay_with`]): a stored row whose grace differs (written under another
/// `--timer-catch-up`) is a mismatch, which `--repair` rewrites.
pub async fn verify_with<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    catch_up: SignedDuration,
) -> Result<(Report, Replayed), RuntimeError> {
    let replayed = replay_with(store, registry, catch_up).await?;
    let mut report = Report {
        records: replayed.records,
        inbound: replayed.inbound,
        instances: replayed.states.len(),
        timers: replayed.projections.timers.len(),
        work_items: replayed.projections.work.len(),
        mismatches: Vec::new(),
    };
    let mut miss = |m: String| {
        if report.mismatches.len() < 100 {
            report.mismatches.push(m);
        }
    };
    let mut tenants = BTreeSet::new();
    for (id, (pathway, state)) in &replayed.states {
        tenants.insert(state.tenant.to_string());
        match load_instance(store, registry, id, &pathway.id, pathway.version).await {
            Ok(loaded) if loaded.state == *state => {}
            Ok(_) => miss(format!(
                "instance {id}: snapshot + tail differs from the full fold"
            )),
            Err(e) => miss(format!("instance {id}: cannot be loaded: {e}")),
        }
        let want = replayed.projections.instances.get(id);
        let got = store.instance(id).await?;
        if want != got.as_ref() {
            miss(format!("instance {id}: stored summary differs from replay"));
        }
    }
    // Timers: every stored one must be rebuilt, and the reverse.
    let stored_timers = store
        .due_timers(
            jiff::Timestamp::MAX,
            usize::MAX >> 1,
            &parcours_store::TimerScope::All,
        )
        .await?;
    let stored_ids: BTreeSet<&str> = stored_timers.iter().map(|t| t.id.as_str()).collect();
    for t in &stored_timers {
        match replayed.projections.timers.get(&t.id) {
            Some(r) if r == t => {}
            Some(_) => miss(format!(
                "timer {}: stored row differs from replay (its due instant or catch-up grace)",
                t.id
            )),
            None => miss(format!("timer {} is stored but not in replay", t.id)),
        }
    }
    for id in replayed.projections.timers.keys() {
        if !stored_ids.contains(id.as_str()) {
            miss(format!("timer {id} is pending in replay but not stored"));
        }
    }
    // Work items, per tenant.
    let mut stored_work = BTreeMap::new();
    for tenant in &tenants {
        let items = store
            .work_items(&WorkFilter {
                tenant: tenant.clone(),
                statuses: WorkStatus::ALL.to_vec(),
                limit: usize::MAX >> 1,
                ..WorkFilter::default()
            })
            .await?;
        for item in items {
            stored_work.insert(item.id.clone(), item);
        }
    }
    for (id, item) in &replayed.projections.work {
        if stored_work.get(id) != Some(item) {
            miss(format!("work item {id}: stored row differs from replay"));
        }
    }
    for id in stored_work.keys() {
        if !replayed.projections.work.contains_key(id) {
            miss(format!("work item {id} is stored but not in replay"));
        }
    }
    Ok((report, replayed))
}

/// Replace the stored projections and snapshots by those rebuilt from the records.
pub async fn repair<S: EventStore>(store: &S, replayed: &Replayed) -> Result<(), RuntimeError> {
    store.clear_index().await?;
    let p = &replayed.projections;
    let mut changes = IndexChanges {
        instances: p.instances.values().cloned().collect(),
        timers: p
            .timers
            .values()
            .cloned()
            .map(TimerChange::Schedule)
            .collect(),
        work: p.work.values().cloned().map(WorkChange::Upsert).collect(),
        snapshots: Vec::new(),
    };
    for (id, (_, state)) in &replayed.states {
        if let Ok(mut snap) = snapshot::encode(state) {
            snap.version = replayed.stream_versions.get(id).copied().unwrap_or(0);
            changes.snapshots.push(snap);
        }
    }
    store.write_index(changes).await?;
    Ok(())
}
