//! The engine: batches of inbound events → decide → one atomic commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use jiff::{SignedDuration, Timestamp};
use parcours_core::decide::{instance_id_for, timer_fired_event_id};
use parcours_core::events::{Event, EventData, EventType, data};
use parcours_core::model::CompiledPathway;
use parcours_core::route::{Target, consent_before_enrolment, route};
use parcours_core::state::{Change, EffectKind, InstanceState, Recorded, apply};
use parcours_core::{DecideError, decide_and_apply, enrols};
use parcours_store::{
    Appended, Commit, EventStore, IndexChanges, InstanceRow, NewRecord, StoreError, StoredId,
    StreamWrite, TimerChange, TimerRow, TimerScope,
};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::bus::Effect;
use crate::codec::{self, DecodeError};
use crate::projection;
use crate::registry::PathwayRegistry;
use crate::relay::{self, Handoff, Handoffs};
use crate::resend::{self, redelivered, stored_id};
use crate::snapshot;

mod links;
mod merge;

/// Why the runtime could not process something (infrastructure or a log that does not
/// fit its definitions: nothing of the batch was committed).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The log refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The log contradicts a pathway definition.
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// An instance is pinned to a version that is not loaded.
    #[error("instance {instance} is pinned to {pathway} v{version}, which is not loaded")]
    MissingVersion {
        /// Instance id.
        instance: String,
        /// Pathway id.
        pathway: String,
        /// Version.
        version: u32,
    },
    /// An instance stream does not start with its enrolment.
    #[error("instance stream {0} does not start with an enrolment")]
    Orphan(String),
    /// Encoding an event failed.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// Publishing an effect failed.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The event was refused (see [`Refused`]).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Another writer changed a patient's streams meanwhile (scale-out): the batch was
    /// not committed; retrying it reloads the patients and is safe.
    #[error("another writer committed to these patients meanwhile: retry")]
    Raced,
    /// A migration file that does not fit its versions or the log: each problem, naming
    /// its key. Nothing was written.
    #[error("the migration does not fit: {}", .0.join("; "))]
    InvalidMigration(Vec<String>),
}

/// Why one event of a batch was refused (the others went on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A pathway could not decide on it: the instance's log does not fit its definition.
    #[error("{0}")]
    Decide(String),
    /// The event itself cannot be applied (an identity merge of a patient key into
    /// itself), or forwarding it to its owner failed for the event itself (too large, a
    /// subject the bus refuses): sending it again would fail again.
    #[error("{0}")]
    Invalid(String),
    /// Its id is in the log for another event: a sender reusing ids (a message control
    /// id counter started over, another source's ids). Acknowledging it as a duplicate
    /// would lose it.
    #[error("{0}")]
    IdReused(String),
}

/// What ingesting one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Committed: the instance events appended (0 if no pathway cared).
    Committed {
        /// Instance events written.
        events: usize,
        /// Of which effects to publish (tasks, alerts, handoffs).
        effects: usize,
        /// Instances it concerned.
        instances: Vec<String>,
        /// What of it was deliberately not acted on, and why, for the sender: each
        /// `input.ignored` of its decisions, `<pathway>: <reason>` (an unknown parameter,
        /// a value of the wrong type, a result without a unit, a preliminary result), once
        /// each; and a `parameters.updated` no instance took. The reasons name fields and
        /// rules, never a value sent.
        warnings: Vec<String>,
    },
    /// Its id was already in the log: acknowledged, nothing done.
    Duplicate,
    /// Forwarded to the engine that owns its patient (scale-out), which committed it.
    CommittedByOwner {
        /// What its pathways deliberately did not act on, as the owner's
        /// [`IngestOutcome::Committed`] said (value-free reasons); empty when the owner
        /// did not say (an engine of an earlier release).
        warnings: Vec<String>,
    },
    /// Forwarded to the engine that owns its patient and stored durably on the way
    /// there, but not committed yet when the caller stopped waiting: it will be, once.
    Queued,
}

/// Counters, for the demo and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inbound events committed.
    pub inbound: u64,
    /// Duplicates acknowledged.
    pub duplicates: u64,
    /// Events refused.
    pub refused: u64,
    /// Instance events written.
    pub instance_events: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Commits made.
    pub commits: u64,
    /// Patients loaded from the store (cache misses).
    pub loads: u64,
}

/// Tuning of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Patients kept in memory; the least recently used are dropped beyond it (their
    /// state is in the log and its snapshots).
    pub cache_patients: usize,
    /// A snapshot is written when an instance has this many records since its last one.
    pub snapshot_every: u64,
    /// Due timers fired per commit.
    pub timer_batch: usize,
    /// Versions published into the log after this engine opened it — by another
    /// process sharing the log, started with newer pathway files — compiled with this
    /// and added: at most every [`PUBLISHED_CHECK_EVERY`], and at once when an instance
    /// pinned to a version this engine lacks is met. `None`: only the versions it was
    /// opened with (an instance pinned to another fails with
    /// [`RuntimeError::MissingVersion`]).
    pub compile_published: Option<crate::publish::Compiler>,
    /// The tenants (CPTS ids) this engine serves: an event of another is refused
    /// ([`Refused::Invalid`], so kept as a dead letter by its front) — a tenant typed
    /// wrong at a sender would otherwise start pathways nobody watches. `timer.fired`
    /// events are the engine's own and always pass (a tenant taken off the list keeps
    /// its running instances' deadlines). `None`: every tenant.
    pub tenants: Option<std::collections::BTreeSet<String>>,
    /// The catch-up grace: a timer already due when the commit that wrote its timer row
    /// was recorded (the deadlines of a discharge dated ten days ago, from a hospital's
    /// backlog) fires no sooner than that commit's `recorded_at` + this, so that the
    /// rest of the backlog (the consent, the GP visit) arrives first. Its `timer.fired`
    /// keeps the timer's due instant as clinical time. Timers due later fire when due.
    /// Only rows written for inbound events get it ([`crate::projection::grants_catch_up`]):
    /// what a firing schedules already due fires at once. Zero (the default here, whose
    /// callers' clocks — tests, demos — are not the log's): none. `parcours serve`:
    /// `--timer-catch-up`, 10 minutes by default. Replay needs the same
    /// ([`crate::replay::replay_with`]).
    pub timer_catch_up: SignedDuration,
    /// The log is shared with other engines writing it (scale-out: `parcours serve
    /// --store postgres://… --nats …`), one of which may commit a link or merge of a key
    /// while this one decides events under it. Each commit then carries guards
    /// ([`parcours_store::Guard`], `engine/links.rs` `guards`): the key of each of its
    /// events has no link or retirement, the local key of its new link (the retired key
    /// of its merge) got no event since it was loaded — so that of an event's commit and
    /// the link's, whichever commits second is refused ([`RuntimeError::Raced`]); and a
    /// batch tried again after a race first follows the log's links
    /// ([`Engine::retry_batch`]). `false` (one engine, the embedded SQLite log): neither,
    /// nothing paid.
    pub shared_log: bool,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            cache_patients: 100_000,
            snapshot_every: 64,
            timer_batch: 512,
            compile_published: None,
            tenants: None,
            timer_catch_up: SignedDuration::ZERO,
            shared_log: false,
        }
    }
}

/// How often an engine with [`EngineConfig::compile_published`] looks for versions
/// published since its last look (one read of the `pathway/…` streams), so that new
/// patients enrol in the highest version soon after another process published it.
pub const PUBLISHED_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Checkpoint name marking a log whose projections are kept in their current layout
/// (2: timers carry their patient's partition hash; 3: one timer row per instance, its
/// earliest pending timer; 4: an escalated work item names the role its escalation told;
/// 5: a closed work item keeps its row, with how it closed; 6: and when, `closed_at`;
/// 7: a timer row keeps the end of its catch-up grace, [`EngineConfig::timer_catch_up`]).
/// A log without it gets its projections rebuilt from the records when an engine opens
/// it.
const PROJECTIONS_MARK: &str = "projections-v7";

/// One instance in memory.
#[derive(Clone, Debug)]
struct Loaded {
    pathway: Arc<CompiledPathway>,
    state: InstanceState,
    /// Records in its stream (one per decision).
    stream_version: u64,
    /// Stream version of its last snapshot.
    snapshot_version: u64,
}

/// One patient in memory: every instance (any status) and the inbound stream's version.
#[derive(Clone, Debug)]
struct Patient {
    instances: Vec<Loaded>,
    inbound_version: u64,
    last_used: u64,
}

/// A patient as the cache keeps it: its instances in a boxed slice, exactly as many as
/// it has (a `Vec` pushed onto reserves room for four), and 8 bytes less than a `Vec` in
/// every slot of the cache's hash table (64 bytes with the key, not 72). A batch works on
/// a [`Patient`] made from it and puts one back.
#[derive(Clone, Debug)]
struct Cached {
    instances: Box<[Loaded]>,
    inbound_version: u64,
    last_used: u64,
}

impl From<&Cached> for Patient {
    fn from(c: &Cached) -> Patient {
        Patient {
            instances: c.instances.to_vec(),
            inbound_version: c.inbound_version,
            last_used: c.last_used,
        }
    }
}

impl From<Patient> for Cached {
    fn from(p: Patient) -> Cached {
        Cached {
            instances: p.instances.into_boxed_slice(),
            inbound_version: p.inbound_version,
            last_used: p.last_used,
        }
    }
}

/// A patient: its tenant and pseudonymous subject key. The cache keeps one copy of each
/// tenant's name ([`Engine::key`]) and one of each patient's key, which the patient's
/// cached states share ([`share_key`]).
type PatientKey = (Arc<str>, Arc<str>);

/// Point a cached state's tenant and subject at its patient's key (same text, one copy).
fn share_key(state: &mut InstanceState, key: &PatientKey) {
    if !Arc::ptr_eq(&state.tenant, &key.0) && state.tenant == key.0 {
        state.tenant = key.0.clone();
    }
    if !Arc::ptr_eq(&state.subject, &key.1) && state.subject == key.1 {
        state.subject = key.1.clone();
    }
}

/// A patient being changed by a batch: the cached copy plus what the batch adds.
struct Working {
    patient: Patient,
    inbound: Vec<Event>,
    /// Per instance (index into `patient.instances`): what it was before the batch (stream
    /// version, earliest timer) and the decisions the batch adds (one record each).
    pending: BTreeMap<usize, Pending>,
}

/// An instance changed by a batch: see [`Working::pending`].
struct Pending {
    /// Its stream version before the batch.
    base: u64,
    /// Its earliest pending timer before the batch (the timer row stored for it).
    earliest_timer: Option<(Uuid, Timestamp)>,
    decisions: Vec<Vec<Recorded>>,
}

/// The runtime over an event store `S`: one writer for the patients it owns.
pub struct Engine<S> {
    store: S,
    registry: PathwayRegistry,
    config: EngineConfig,
    /// When the log's published versions were last looked at
    /// ([`EngineConfig::compile_published`]).
    published_checked: Option<std::time::Instant>,
    /// Published versions that did not compile here, reported once.
    uncompiled: HashSet<(String, u32)>,
    /// Where readers see this engine's versions ([`Engine::share_registry`]).
    shared: Option<crate::registry::SharedRegistry>,
    patients: HashMap<PatientKey, Cached>,
    /// One copy of each tenant's name, for the cache's keys.
    tenants: HashSet<Arc<str>>,
    tick: u64,
    stats: Stats,
    timer_scope: TimerScope,
    /// Where each commit's effects are handed to the relay of this process (`None`: they
    /// reach the bus through the log alone).
    handoffs: Option<Handoffs>,
    /// The log's end when a patient someone else may have written was last loaded: the
    /// floor of the next handoffs (see [`crate::relay`]).
    floor: u64,
    /// The earliest timer in scope scheduled by the commits written since
    /// [`Engine::take_scheduled_timer`] was last called.
    scheduled: Option<Timestamp>,
    /// The identity links this engine committed or met lately ([`Engine::follow_links`]).
    links: links::Recent,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("cached_patients", &self.patients.len())
            .finish()
    }
}

/// An instance read from the log.
#[derive(Clone, Debug)]
pub struct LoadedInstance {
    /// The pathway version it is pinned to.
    pub pathway: Arc<CompiledPathway>,
    /// Its state.
    pub state: InstanceState,
    /// Records in its stream.
    pub stream_version: u64,
    /// Stream version of the snapshot it was loaded from (0: folded from the start).
    pub snapshot_version: u64,
}

/// Uncached patients of a batch whose instances are read at once, at most.
const PRELOAD_CONCURRENCY: usize = 8;

/// A patient's instances and inbound stream version, read from the log; with the log's
/// end read after them when `relayed` and they have instances (the handoffs' floor).
async fn read_patient<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    key: &PatientKey,
    relayed: bool,
) -> Result<(Patient, Option<u64>), RuntimeError> {
    let rows = store.instances_of(&key.0, &key.1).await?;
    let floor = if relayed && !rows.is_empty() {
        Some(store.last_position().await?)
    } else {
        None
    };
    let instances = read_instances(store, registry, key, rows).await?;
    let inbound_version = store
        .stream_version(&codec::inbound_stream(&key.0, &key.1))
        .await?;
    Ok((patient(instances, inbound_version), floor))
}

/// A patient as the cache holds it.
fn patient(instances: Vec<Loaded>, inbound_version: u64) -> Patient {
    Patient {
        instances,
        inbound_version,
        last_used: 0,
    }
}

/// The instances of a patient's rows, each read from the log.
async fn read_instances<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    key: &PatientKey,
    rows: Vec<InstanceRow>,
) -> Result<Vec<Loaded>, RuntimeError> {
    let mut instances = Vec::with_capacity(rows.len());
    for row in rows {
        let l = load_instance(
            store,
            registry,
            &row.stream,
            &row.pathway_id,
            row.pathway_version,
        )
        .await?;
        let mut state = l.state;
        share_key(&mut state, key);
        instances.push(Loaded {
            pathway: l.pathway,
            state,
            stream_version: l.stream_version,
            snapshot_version: l.snapshot_version,
        });
    }
    Ok(instances)
}

/// Load one instance from the log: its snapshot, if usable, and the records after it.
pub async fn load_instance<S: EventStore>(
    store: &S,
    registry: &PathwayRegistry,
    stream: &str,
    pathway_id: &str,
    pathway_version: u32,
) -> Result<LoadedInstance, RuntimeError> {
    let pathway = registry
        .get(pathway_id, pathway_version)
        .cloned()
        .ok_or_else(|| RuntimeError::MissingVersion {
            instance: stream.to_string(),
            pathway: pathway_id.to_string(),
            version: pathway_version,
        })?;
    // A usable snapshot gives the state and the version it is pinned to; otherwise the
    // stream is folded from its enrolment, switching version at each migration.
    let (mut current, mut state, snapshot_version) = match store.snapshot(stream).await? {
        Some(snap) => match snapshot::decode(&pathway, &snap) {
            Ok(state) => (Some(pathway.clone()), state, snap.version),
            // An unreadable snapshot is only a lost shortcut: fold from the start.
            Err(_) => (None, InstanceState::pending(stream), 0),
        },
        None => (None, InstanceState::pending(stream), 0),
    };
    let mut stream_version = snapshot_version;
    for r in store.read_stream(stream, snapshot_version).await? {
        for recorded in codec::decode_instance(&r)? {
            let p = pathway_for(registry, stream, current.as_ref(), &recorded)?;
            apply(&p, &mut state, &recorded).map_err(DecideError::from)?;
            current = Some(p);
        }
        stream_version = r.version;
    }
    if state.version == 0 {
        return Err(RuntimeError::Orphan(stream.to_string()));
    }
    let pathway = current.unwrap_or(pathway);
    state.share_with(&pathway);
    Ok(LoadedInstance {
        pathway,
        state,
        stream_version,
        snapshot_version,
    })
}

/// The pathway version a record folds with: the enrolment's for the first record, the new
/// one for a migration, else the current one.
pub(crate) fn pathway_for(
    registry: &PathwayRegistry,
    stream: &str,
    current: Option<&Arc<CompiledPathway>>,
    rec: &Recorded,
) -> Result<Arc<CompiledPathway>, RuntimeError> {
    let pinned = |id: &str, version: u32| {
        registry
            .get(id, version)
            .cloned()
            .ok_or_else(|| RuntimeError::MissingVersion {
                instance: stream.to_string(),
                pathway: id.to_string(),
                version,
            })
    };
    match (&rec.change, current) {
        (
            Change::Enrolled {
                pathway_id,
                pathway_version,
                ..
            },
            _,
        ) => pinned(pathway_id, *pathway_version),
        (Change::Migrated { to_version, .. }, Some(p)) => pinned(&p.id, *to_version),
        (_, Some(p)) => Ok(p.clone()),
        (_, None) => Err(RuntimeError::Orphan(stream.to_string())),
    }
}

fn effects_in(events: &[Recorded]) -> usize {
    events
        .iter()
        .filter(|r| {
            matches!(
                r.change.effect_kind(),
                Some(EffectKind::Task | EffectKind::Alert | EffectKind::Handoff)
            )
        })
        .count()
}

/// The `timer.fired` event of a due timer.
pub fn timer_event(t: &TimerRow) -> Event {
    Event {
        id: timer_fired_event_id(&t.id),
        tenant: t.tenant.clone(),
        source: "parcours/timers".into(),
        subject: t.subject.clone(),
        occurred_at: t.fire_at,
        recorded_at: None,
        data: EventData::TimerFired(data::TimerFired {
            timer_id: t.id.clone(),
            instance_id: t.stream.clone(),
        }),
    }
}

impl<S: EventStore> Engine<S> {
    /// Open the engine on a log. Nothing is loaded up front: patients are read (snapshot +
    /// tail) when an event concerns them. A log written before the projections existed
    /// gets them rebuilt first, and one whose merges were committed before their retired
    /// keys' records existed gets those records ([`crate::backfill`]), once.
    pub async fn open(
        store: S,
        registry: PathwayRegistry,
        config: EngineConfig,
    ) -> Result<Engine<S>, RuntimeError> {
        // Projections are derived data: a log without them (written before they existed,
        // or after `clear_index`) gets them rebuilt from its records once.
        if store.checkpoint(PROJECTIONS_MARK).await?.is_none() {
            if !store.read_all(0, 1).await?.is_empty() {
                let replayed =
                    crate::replay::replay_with(&store, &registry, config.timer_catch_up).await?;
                crate::replay::repair(&store, &replayed).await?;
            }
            store.save_checkpoint(PROJECTIONS_MARK, 1).await?;
        }
        // Merges an earlier release committed without their retired key's record: once.
        crate::backfill::retirements(&store).await?;
        Ok(Engine {
            store,
            registry,
            config,
            published_checked: None,
            uncompiled: HashSet::new(),
            shared: None,
            patients: HashMap::new(),
            tenants: HashSet::new(),
            tick: 0,
            stats: Stats::default(),
            timer_scope: TimerScope::All,
            handoffs: None,
            floor: 0,
            scheduled: None,
            links: links::Recent::default(),
        })
    }

    /// Hand each commit's effects to a relay in memory from now on ([`crate::relay`]).
    /// What the log holds already is relayed from the log first.
    pub async fn hand_effects_to(&mut self, handoffs: Handoffs) -> Result<(), RuntimeError> {
        self.floor = self.floor.max(self.store.last_position().await?);
        self.handoffs = Some(handoffs);
        Ok(())
    }

    /// This engine's versions for readers (the HTTP API, `/metrics`), kept up to date with
    /// the versions it adds ([`EngineConfig::compile_published`]).
    pub fn share_registry(&mut self) -> crate::registry::SharedRegistry {
        self.shared
            .get_or_insert_with(|| crate::registry::SharedRegistry::new(self.registry.clone()))
            .clone()
    }

    /// Where this engine hands its commits' effects, if anywhere.
    pub fn handoffs(&self) -> Option<&Handoffs> {
        self.handoffs.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The pathway versions loaded.
    pub fn registry(&self) -> &PathwayRegistry {
        &self.registry
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Patients in memory.
    pub fn cached_patients(&self) -> usize {
        self.patients.len()
    }

    /// Instances in memory.
    pub fn cached_instances(&self) -> usize {
        self.patients.values().map(|p| p.instances.len()).sum()
    }

    /// Room for instances in the cache's per-patient slices: equal to
    /// [`Engine::cached_instances`], nothing reserved beyond them (boxed slices).
    pub fn cached_instance_room(&self) -> usize {
        self.patients.values().map(|p| p.instances.len()).sum()
    }

    /// The live state of an instance held in memory (None when not cached).
    pub fn cached_instance(&self, id: &str) -> Option<(&CompiledPathway, &InstanceState)> {
        self.patients
            .values()
            .flat_map(|p| p.instances.iter())
            .find(|l| l.state.instance_id == id)
            .map(|l| (l.pathway.as_ref(), &l.state))
    }

    /// Every instance held in memory.
    pub fn cached_instances_iter(
        &self,
    ) -> impl Iterator<Item = (&CompiledPathway, &InstanceState)> {
        self.patients
            .values()
            .flat_map(|p| p.instances.iter())
            .map(|l| (l.pathway.as_ref(), &l.state))
    }

    /// Fire only the timers of the patients in `scope` from now on (the partitions this
    /// process owns), and forget the cached patients outside it: another process may
    /// change them, and this one must read them again from the log if they come back.
    pub fn set_timer_scope(&mut self, scope: TimerScope) {
        self.patients
            .retain(|(tenant, subject), _| scope.covers(tenant, subject));
        self.timer_scope = scope;
    }

    /// The timers this engine fires.
    pub fn timer_scope(&self) -> &TimerScope {
        &self.timer_scope
    }

    /// Move events naming a local key linked lately to its national identity's key, or a
    /// key retired lately by a merge to its survivor (see `engine/links.rs`): the links
    /// and retirements this engine committed or met in the log, followed to the end, the
    /// fronts having read the log's identity streams before they submitted — an event
    /// resolved just before a link or merge committed would otherwise land on the old
    /// key, whose instances the link or merge moved away. Identity events keep their
    /// keys (a front resolves them). The service calls it on each submission before
    /// grouping it, so that its patients are the ones decided, and again on the group
    /// once the commits in flight it waited for ended — one of them may have held the
    /// link or merge (`Pipeline::start`). How many events moved.
    ///
    /// Only this engine's links, and only to a national key in its timer scope (the
    /// partitions it owns: every key with one engine), so that a patient is still decided
    /// by its owner alone. In scale-out, a link committed by another engine (the owner
    /// of the national key's partition) is not seen here: an event a front resolved just
    /// before it committed, forwarded to the local key's owner, races the link instead
    /// (the commits' guards, [`EngineConfig::shared_log`]) and is moved when tried again
    /// ([`Engine::retry_batch`]).
    pub fn follow_links(&self, events: &mut [Event]) -> usize {
        if self.links.is_empty() {
            return 0;
        }
        let mut moved = 0;
        for e in events.iter_mut() {
            if matches!(
                e.data,
                EventData::IdentityLinked(_) | EventData::IdentityMerged(_)
            ) {
                continue;
            }
            if let Some(national) = self.links.follow(&e.tenant, &e.subject)
                && self.timer_scope.covers(&e.tenant, national)
            {
                tracing::debug!(tenant = %e.tenant, local = %e.subject, national = %national,
                    "event for a local key linked since the front read the links: taken by the national identity's key");
                e.subject = national.to_owned();
                moved += 1;
            }
        }
        moved
    }

    /// Try again a batch whose commit a race refused ([`RuntimeError::Raced`]: its
    /// patients were dropped from memory): [`Engine::ingest_batch`], after — in a log
    /// several engines write ([`EngineConfig::shared_log`]) — taking its events where
    /// the log's identity links lead, in place, with the NATS partition consumers' reading
    /// ([`crate::links::relink`]: one `latest_subjects` query, one more a hop). A link or
    /// merge another engine committed while the batch was decided made its commit race
    /// (the commits' guards, `engine/links.rs`); tried again, an event under the local
    /// (retired) key is decided on the key it leads to — even one of another engine's
    /// partitions: its inbound stream's version makes whichever of the two engines
    /// commits second on that patient decide again on fresh state.
    pub async fn retry_batch(
        &mut self,
        events: &mut [Event],
    ) -> Result<Vec<Result<IngestOutcome, Refused>>, RuntimeError> {
        if self.config.shared_log {
            let moved = crate::links::relink(&self.store, events).await?;
            for (e, how) in events.iter().zip(&moved) {
                if let crate::links::Relinked::Moved { from } = how {
                    tracing::debug!(tenant = %e.tenant, local = %from, national = %e.subject,
                        "raced batch: event for a key the log links since it was resolved, taken by the key it leads to");
                }
            }
        }
        self.ingest_batch(events, IndexChanges::default()).await
    }

    /// Forget every cached patient (the next events reload them from the log).
    pub fn clear_cache(&mut self) {
        self.patients.clear();
    }

    /// The cache key of a patient, its tenant's name shared.
    fn key(&mut self, tenant: &str, subject: &str) -> PatientKey {
        let tenant = match self.tenants.get(tenant) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(tenant);
                self.tenants.insert(t.clone());
                t
            }
        };
        (tenant, Arc::from(subject))
    }

    async fn load_patient(&mut self, key: &PatientKey) -> Result<Patient, RuntimeError> {
        let (patient, floor) =
            read_patient(&self.store, &self.registry, key, self.handoffs.is_some()).await?;
        self.loaded(floor);
        Ok(patient)
    }

    /// Read the uncached patients of a batch's events together: which have instances and
    /// their inbound versions in one query each for all of them, then the instances of
    /// those that have some, a few patients at a time (each patient read alone is two
    /// or three round trips to the log, which the engine would wait for one after the
    /// other); not those whose only events are `stored` already (duplicates, never
    /// decided). Not for a batch holding an identity merge, which moves instances between
    /// patients as it goes.
    async fn preload(
        &mut self,
        events: &[Event],
        stored: &HashMap<String, StoredId>,
    ) -> Result<HashMap<PatientKey, Patient>, RuntimeError> {
        let mut keys: Vec<PatientKey> = Vec::new();
        let mut seen: HashSet<PatientKey> = HashSet::new();
        for e in events.iter().filter(|e| !stored.contains_key(&e.id)) {
            let key = self.key(&e.tenant, &e.subject);
            if !self.patients.contains_key(&key) && seen.insert(key.clone()) {
                keys.push(key);
            }
        }
        if keys.len() < 2 {
            return Ok(HashMap::new());
        }
        let relayed = self.handoffs.is_some();
        let (store, registry) = (&self.store, &self.registry);
        // Which of them have instances, and their inbound streams' versions: one query
        // each for the whole batch (a discharge burst brings hundreds of new patients).
        let asked: Vec<(&str, &str)> = keys.iter().map(|k| (&*k.0, &*k.1)).collect();
        let rows = store.instances_of_many(&asked).await?;
        let floor = if relayed && rows.iter().any(|r| !r.is_empty()) {
            Some(store.last_position().await?)
        } else {
            None
        };
        // The instances of those that have some, several patients at a time. (The
        // futures made first: a closure inside the stream would not be `Send` for every
        // lifetime, which the engine's task needs.)
        let reads: Vec<_> = keys
            .iter()
            .zip(rows)
            .map(|(k, rows)| read_instances(store, registry, k, rows))
            .collect();
        let instances: Vec<Vec<Loaded>> = futures::stream::iter(reads)
            .buffered(PRELOAD_CONCURRENCY)
            .try_collect()
            .await?;
        let inbound: Vec<String> = keys
            .iter()
            .map(|k| codec::inbound_stream(&k.0, &k.1))
            .collect();
        let versions = store.stream_versions(&inbound).await?;
        let mut out = HashMap::with_capacity(keys.len());
        for ((key, instances), version) in keys.into_iter().zip(instances).zip(versions) {
            let had = !instances.is_empty();
            self.loaded(floor.filter(|_| had));
            out.insert(key, patient(instances, version));
        }
        Ok(out)
    }

    /// A patient was read from the log (with the log's end then, when it had instances).
    fn loaded(&mut self, floor: Option<u64>) {
        self.stats.loads += 1;
        if let Some(f) = floor {
            // Its records may be someone else's, not relayed yet: this process's next
            // effects wait until the log is relayed up to here.
            self.floor = self.floor.max(f);
        }
    }

    /// Process one inbound event (see [`Engine::ingest_batch`]).
    pub async fn ingest(&mut self, event: &Event) -> Result<IngestOutcome, RuntimeError> {
        let mut out = self
            .ingest_batch(std::slice::from_ref(event), IndexChanges::default())
            .await?;
        match out.pop() {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(refused)) => Err(refused.into()),
            None => Ok(IngestOutcome::Duplicate),
        }
    }

    /// Process a batch of inbound events, in order, in **one atomic commit**: each event
    /// is recorded in its patient's inbound stream together with every instance event it
    /// caused; `extra` index changes go in the same commit. An event whose id is already in
    /// the log (or earlier in the batch) is a duplicate: acknowledged, nothing done. An
    /// event a pathway cannot decide on is refused alone. On `Err`, nothing was committed
    /// and memory is as before.
    pub async fn ingest_batch(
        &mut self,
        events: &[Event],
        extra: IndexChanges,
    ) -> Result<Vec<Result<IngestOutcome, Refused>>, RuntimeError> {
        let mut prepared = self.prepare(events, extra, true).await?;
        let committed = match prepared.take_commit() {
            Some(commit) => {
                let written = write_commit(&self.store, commit).await?;
                if let (Some(last), Some(handoffs), Some(effects)) =
                    (written, &self.handoffs, prepared.take_effects())
                {
                    handoffs.send(effects.handoff(last));
                }
                written.is_some()
            }
            None => true,
        };
        self.finish_batch(events, prepared, committed)
    }

    /// The first half of [`Engine::ingest_batch`]: dedupe, route, load and decide, up to
    /// the commit to write ([`Prepared::take_commit`], then [`write_commit`]); memory is
    /// unchanged until [`Engine::finish_batch`]. Batches of disjoint patients may be
    /// prepared while another one's commit is in flight; a batch touching a patient of
    /// a batch in flight must wait for that batch's finish.
    ///
    /// Unlike [`Engine::ingest_batch`], it does not look up which of its events are in
    /// the log already (a round trip per batch, for the rare redelivery): the commit
    /// finds them. A commit holding a stored id is refused whole ([`write_commit`]
    /// answers `None`, [`Engine::finish_batch`] [`RuntimeError::Raced`]) and the batch is
    /// tried again with [`Engine::ingest_batch`], which looks them up first. An event its
    /// pathway refuses, which the commit does not hold, is looked up before it is answered
    /// as refused (a duplicate of a committed event is acknowledged, never dead-lettered).
    /// A batch holding an identity merge looks its events up first.
    pub async fn prepare_batch(
        &mut self,
        events: &[Event],
        extra: IndexChanges,
    ) -> Result<Prepared, RuntimeError> {
        self.prepare(events, extra, false).await
    }

    /// Add the versions published into the log that this engine lacks, compiled with
    /// [`EngineConfig::compile_published`]; how many were added. A version that does not
    /// compile here is reported once and left out (its instances then fail with
    /// [`RuntimeError::MissingVersion`], as without a compiler).
    pub async fn load_published_versions(&mut self) -> Result<usize, RuntimeError> {
        let Some(compiler) = self.config.compile_published.clone() else {
            return Ok(0);
        };
        self.published_checked = Some(crate::service::wall_instant());
        let mut added = 0;
        for p in crate::publish::published(&self.store).await? {
            let key = (p.id.clone(), p.version);
            if self.registry.get(&p.id, p.version).is_some() || self.uncompiled.contains(&key) {
                continue;
            }
            match compiler.compile(&p) {
                Ok(compiled) => {
                    tracing::info!(pathway = %p.id, version = p.version, file = %p.file,
                        "pathway version published into the log since this engine started: loaded");
                    self.registry.add(compiled);
                    added += 1;
                }
                Err(e) => {
                    tracing::error!(pathway = %p.id, version = p.version, error = %e,
                        "a pathway version published into the log does not compile here; its instances cannot run on this engine");
                    self.uncompiled.insert(key);
                }
            }
        }
        if added > 0
            && let Some(shared) = &self.shared
        {
            shared.replace(self.registry.clone());
        }
        Ok(added)
    }

    /// [`Engine::load_published_versions`] if [`PUBLISHED_CHECK_EVERY`] has passed since
    /// the last look (and a compiler is set); the service calls it between its turns, so
    /// that an idle engine's readers see new versions too.
    pub async fn load_published_versions_if_due(&mut self) -> Result<usize, RuntimeError> {
        if self.config.compile_published.is_none()
            || self
                .published_checked
                .is_some_and(|t| t.elapsed() < PUBLISHED_CHECK_EVERY)
        {
            return Ok(0);
        }
        self.load_published_versions().await
    }

    /// Decide a batch (see [`Engine::prepare_once`]), with the versions another process
    /// published: looked for every [`PUBLISHED_CHECK_EVERY`], and at once when the batch
    /// meets an instance pinned to a version this engine lacks (the batch is then decided
    /// again).
    async fn prepare(
        &mut self,
        events: &[Event],
        extra: IndexChanges,
        look_up: bool,
    ) -> Result<Prepared, RuntimeError> {
        self.load_published_versions_if_due().await?;
        match self.prepare_once(events, extra.clone(), look_up).await {
            Err(RuntimeError::MissingVersion { .. })
                if self.load_published_versions().await? > 0 =>
            {
                self.prepare_once(events, extra, look_up).await
            }
            r => r,
        }
    }

    /// Why `event` is refused when its tenant is not one this engine serves
    /// ([`EngineConfig::tenants`]).
    fn unserved(&self, event: &Event) -> Option<Refused> {
        let served = self.config.tenants.as_ref()?;
        if served.contains(&event.tenant) || matches!(event.data, EventData::TimerFired(_)) {
            return None;
        }
        let list: Vec<&str> = served.iter().map(String::as_str).collect();
        Some(Refused::Invalid(format!(
            "tenant `{}` is not served here (this deployment serves {}: `--tenants`); \
             correct the tenant at the sender and send the event again",
            event.tenant,
            list.join(", ")
        )))
    }

    /// Decide a batch; `look_up`: find its events stored already before deciding.
    async fn prepare_once(
        &mut self,
        events: &[Event],
        extra: IndexChanges,
        look_up: bool,
    ) -> Result<Prepared, RuntimeError> {
        let mut outcomes: Vec<Option<Result<IngestOutcome, Refused>>> = vec![None; events.len()];
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let merges = events.iter().any(parcours_core::merge::is_merge);
        let look_up = look_up || merges;
        let stored = if ids.is_empty() || !look_up {
            HashMap::new()
        } else {
            self.stored_events(&ids).await?
        };
        let mut seen: HashMap<&str, &Event> = HashMap::new();
        let latest: Vec<Arc<CompiledPathway>> =
            self.registry.latest().into_iter().cloned().collect();
        let latest_refs: Vec<&CompiledPathway> = latest.iter().map(Arc::as_ref).collect();
        let mut work: HashMap<PatientKey, Working> = HashMap::new();
        let mut order: Vec<PatientKey> = Vec::new();
        // Work items moved to another subject by identity merges (before every other
        // projection change of the commit: see `projection::rekeyed_work`).
        let mut rekeyed = IndexChanges::default();
        // Identity links this batch learns: (tenant, local key) → national key, and their
        // link streams' records (`links`).
        let mut learned = links::Learned::default();
        let mut preloaded = if merges {
            HashMap::new()
        } else {
            self.preload(events, &stored).await?
        };

        let relinked = resend::moved_keys(&self.store, events, &stored).await?;
        for (i, event) in events.iter().enumerate() {
            if let Some(s) = stored.get(&event.id) {
                outcomes[i] = Some(redelivered(s, event, relinked.contains(&i)));
                continue;
            }
            if let Some(first) = seen.get(event.id.as_str()) {
                outcomes[i] = Some(redelivered(&stored_id(first), event, false));
                continue;
            }
            seen.insert(event.id.as_str(), event);
            // An event under a local key that a link earlier in the batch holds (two
            // submissions in one group: the link, and an event a front resolved before
            // it committed) is the national key's, decided after the link, as
            // `follow_links` takes one a link committed earlier.
            let followed;
            let event = match learned.national_of(event) {
                Some(national) => {
                    followed = Event {
                        subject: national.to_owned(),
                        ..event.clone()
                    };
                    &followed
                }
                None => event,
            };
            if let Some(refused) = self.unserved(event) {
                outcomes[i] = Some(Err(refused));
                continue;
            }
            let key = self.key(&event.tenant, &event.subject);
            if !work.contains_key(&key) {
                let patient = match self.patients.get(&key) {
                    Some(p) => Patient::from(p),
                    None => match preloaded.remove(&key) {
                        Some(p) => p,
                        None => self.load_patient(&key).await?,
                    },
                };
                order.push(key.clone());
                work.insert(
                    key.clone(),
                    Working {
                        patient,
                        inbound: Vec::new(),
                        pending: BTreeMap::new(),
                    },
                );
            }
            if parcours_core::merge::is_merge(event) {
                // A link refused (another national identity holds the local key) moves
                // nothing; a new one is written with the merge.
                let link = match links::check(&self.store, &learned, event).await? {
                    Ok(link) => link,
                    Err(refused) => {
                        learned.refused(event);
                        outcomes[i] = Some(Err(refused));
                        continue;
                    }
                };
                // A key a merge retires leads to the survivor from then on (a record in
                // its identity stream, written with the merge).
                let retired = match links::retirement(&self.store, &learned, event).await? {
                    Ok(retired) => retired,
                    Err(refused) => {
                        learned.refused(event);
                        outcomes[i] = Some(Err(refused));
                        continue;
                    }
                };
                let outcome = self
                    .merge(
                        &mut work,
                        &mut order,
                        &mut rekeyed,
                        &latest,
                        &latest_refs,
                        event,
                    )
                    .await?;
                match (&outcome, link) {
                    (Ok(_), Some(link)) => learned.add(event, link),
                    (Ok(_), None) => learned.known(event),
                    (Err(_), _) => learned.refused(event),
                }
                if let (Ok(_), Some(retired)) = (&outcome, retired) {
                    learned.retire(event, retired);
                }
                outcomes[i] = Some(outcome);
                continue;
            }
            let Some(w) = work.get_mut(&key) else {
                continue;
            };
            let consents = consents_before(&self.store, w, &latest_refs, event).await?;
            outcomes[i] = Some(decide_for(w, &latest, &latest_refs, event, &consents));
        }

        if !look_up {
            self.refused_but_stored(events, &mut outcomes).await?;
        }

        // One commit: every patient's inbound events, every instance's new records, and
        // the projections they imply.
        let mut commit = Commit {
            writes: Vec::new(),
            index: rekeyed,
            guards: Vec::new(),
        };
        // The effects to hand to the relay once committed, each with its record's index
        // in the commit (its position once written: see `Appended::Committed`).
        let mut effects = self.handoffs.is_some().then(|| CommitEffects {
            records: 0,
            floor: self.floor,
            effects: Vec::new(),
        });
        let mut instance_events = 0u64;
        // The keys whose identity streams the commit guards in a shared log.
        let mut guarded: Vec<(String, String)> = Vec::new();
        for key in &order {
            let Some(w) = work.get_mut(key) else { continue };
            if self.config.shared_log && w.inbound.iter().any(links::guarded) {
                guarded.push((key.0.to_string(), key.1.to_string()));
            }
            if !w.inbound.is_empty() {
                let records = w
                    .inbound
                    .iter()
                    .map(codec::encode_inbound)
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(e) = &mut effects {
                    e.records += records.len() as u64;
                }
                commit.writes.push(StreamWrite {
                    stream: codec::inbound_stream(&key.0, &key.1),
                    expected_version: w.patient.inbound_version,
                    records,
                });
            }
            for (
                idx,
                Pending {
                    base,
                    earliest_timer,
                    decisions,
                },
            ) in &w.pending
            {
                let Some(l) = w.patient.instances.get_mut(*idx) else {
                    continue;
                };
                let subjects = merge::decision_subjects(&key.1, decisions);
                let records = decisions
                    .iter()
                    .zip(subjects)
                    .map(|(d, subject)| codec::encode_decision(&key.0, subject, d))
                    .collect::<Result<Vec<_>, _>>()?;
                let all: Vec<Recorded> = decisions.iter().flatten().cloned().collect();
                instance_events += all.len() as u64;
                let stream = l.state.instance_id.to_string();
                if let Some(e) = &mut effects {
                    e.add(&stream, decisions, &records);
                }
                commit.writes.push(StreamWrite {
                    stream,
                    expected_version: *base,
                    records,
                });
                l.stream_version = *base + decisions.len() as u64;
                projection::index_changes(
                    &l.pathway,
                    *earliest_timer,
                    &l.state,
                    &all,
                    self.config.timer_catch_up,
                    &mut commit.index,
                );
                if l.stream_version - l.snapshot_version >= self.config.snapshot_every
                    && let Ok(mut snap) = snapshot::encode(&l.state)
                {
                    snap.version = l.stream_version;
                    commit.index.snapshots.push(snap);
                    l.snapshot_version = l.stream_version;
                }
            }
        }
        commit.writes.extend(learned.take_writes());
        if self.config.shared_log {
            commit.guards = links::guards(&guarded, &commit.writes, &learned.written, |t, k| {
                work.get(&(Arc::from(t), Arc::from(k)))
                    .map(|w| w.patient.inbound_version)
            });
        }
        commit.index.extend(extra);
        let earliest_timer = commit
            .index
            .timers
            .iter()
            .filter_map(|t| match t {
                // A catch-up row fires at its due instant or later (the end of its grace,
                // from the commit's `recorded_at`, known once written): its due instant
                // is the bound the service wakes at, and looks again at the store then.
                TimerChange::Schedule(row) | TimerChange::CatchUp { row, .. }
                    if self.timer_scope.covers(&row.tenant, &row.subject) =>
                {
                    Some(row.fires_at())
                }
                _ => None,
            })
            .min();
        let commit = (!commit.writes.is_empty() || !commit.index.is_empty()).then_some(commit);
        Ok(Prepared {
            nothing: commit.is_none(),
            links: (learned.counts, learned.links),
            commit,
            effects,
            outcomes,
            work,
            order,
            instance_events,
            earliest_timer,
        })
    }

    /// Events refused by their pathway that are in the log already: duplicates (a
    /// redelivered event decided again on a state that holds it may well be refused).
    async fn refused_but_stored(
        &self,
        events: &[Event],
        outcomes: &mut [Option<Result<IngestOutcome, Refused>>],
    ) -> Result<(), RuntimeError> {
        let refused: Vec<String> = events
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| matches!(o, Some(Err(_))))
            .map(|(e, _)| e.id.clone())
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let stored = self.stored_events(&refused).await?;
        let relinked = resend::moved_keys(&self.store, events, &stored).await?;
        for (i, (e, o)) in events.iter().zip(outcomes.iter_mut()).enumerate() {
            if matches!(o, Some(Err(_)))
                && let Some(s) = stored.get(&e.id)
            {
                *o = Some(redelivered(s, e, relinked.contains(&i)));
            }
        }
        Ok(())
    }

    /// The stored records of these ids, by id.
    async fn stored_events(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, StoredId>, RuntimeError> {
        Ok(resend::stored_by_id(&self.store, ids).await?)
    }

    /// The second half of [`Engine::ingest_batch`], once the prepared batch's commit was
    /// written (`committed`) or refused by a race (`!committed`: the batch's patients are
    /// dropped from memory, [`RuntimeError::Raced`]). After a commit failure, drop the
    /// prepared batch: memory was not changed (a commit whose outcome is unknown shows
    /// as a version conflict at the patient's next commit, which reloads it).
    pub fn finish_batch(
        &mut self,
        events: &[Event],
        prepared: Prepared,
        committed: bool,
    ) -> Result<Vec<Result<IngestOutcome, Refused>>, RuntimeError> {
        let Prepared {
            nothing,
            outcomes,
            work,
            order,
            instance_events,
            earliest_timer,
            links: (link_counts, linked),
            ..
        } = prepared;
        if !nothing && !committed {
            for key in &order {
                self.patients.remove(key);
            }
            return Err(RuntimeError::Raced);
        }
        crate::metrics::identity_links(
            link_counts.linked,
            link_counts.already,
            link_counts.refused,
        );
        for (tenant, local, national) in linked {
            self.links.insert(tenant, local, national);
        }
        if nothing {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        self.scheduled = match (self.scheduled, earliest_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.stats.commits += 1;
        self.stats.instance_events += instance_events;
        for (i, event) in events.iter().enumerate() {
            match &outcomes[i] {
                Some(Ok(IngestOutcome::Committed { .. })) => {
                    self.stats.inbound += 1;
                    if matches!(event.data, EventData::TimerFired(_)) {
                        self.stats.timers_fired += 1;
                    }
                }
                Some(Ok(IngestOutcome::Duplicate)) => self.stats.duplicates += 1,
                Some(Err(_)) => self.stats.refused += 1,
                // Only a forwarding handle answers these; this engine committed itself.
                Some(Ok(IngestOutcome::CommittedByOwner { .. } | IngestOutcome::Queued)) | None => {
                }
            }
        }
        self.tick += 1;
        for (key, w) in work {
            let mut patient = w.patient;
            for i in w.pending.keys() {
                if let Some(l) = patient.instances.get_mut(*i) {
                    l.state.share_with(&l.pathway);
                }
            }
            patient.inbound_version += w.inbound.len() as u64;
            patient.last_used = self.tick;
            // A cached patient keeps its key (`insert` keeps a present key; the batch's
            // copy is dropped): its states share that one.
            let key = match self.patients.get_key_value(&key) {
                Some((cached, _)) => cached.clone(),
                None => key,
            };
            for l in &mut patient.instances {
                share_key(&mut l.state, &key);
            }
            // A patient's first instance pushed onto an empty vector reserved room for
            // four (a `Loaded` is 264 bytes): the cache keeps a boxed slice of exactly
            // its instances.
            self.patients.insert(key, Cached::from(patient));
        }
        merge::forget_retired(&mut self.patients, events, &outcomes);
        self.evict();
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Drop the least recently used patients beyond the cache's capacity (a tenth more,
    /// so eviction runs rarely).
    fn evict(&mut self) {
        let cap = self.config.cache_patients.max(1);
        if self.patients.len() <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut ages: Vec<u64> = self.patients.values().map(|p| p.last_used).collect();
        let drop = self.patients.len() - target;
        ages.select_nth_unstable(drop.saturating_sub(1));
        let cutoff = ages[drop.saturating_sub(1)];
        let mut left = drop;
        self.patients.retain(|_, p| {
            if left > 0 && p.last_used <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Fire the timers due at or before `until`, in time order, as `timer.fired` events
    /// committed in batches. A timer fires once: its event id derives from the timer id,
    /// and its row leaves the timer table in the same commit. Returns how many fired.
    /// Rounds of [`Engine::fire_due`] until none is due; the service runs the rounds
    /// itself, checking between two for submissions, shutdown and a new timer scope, so
    /// that a backlog of due timers holds up none of them.
    pub async fn advance(&mut self, until: Timestamp) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        // Bounded: each round removes every timer it reads; a recurring timer re-armed
        // at or before `until` is read again in a later round.
        for _ in 0..1_000_000 {
            match self.fire_due(until).await? {
                Some(n) => fired += n,
                None => break,
            }
        }
        Ok(fired)
    }

    /// One round of [`Engine::advance`]: the first `timer_batch` timers due at or before
    /// `until` (of the engine's timer scope), committed together. Per instance only the
    /// earliest fires in a round (it may schedule an earlier one: an escalation before a
    /// later reminder). Returns how many fired, `None` when none was due; `Some(0)` when
    /// another writer raced the round (its patients reloaded: the next round reads again).
    pub async fn fire_due(&mut self, until: Timestamp) -> Result<Option<usize>, RuntimeError> {
        let due = self
            .store
            .due_timers(until, self.config.timer_batch, &self.timer_scope)
            .await?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut taken: HashSet<&str> = HashSet::new();
        let mut batch = Vec::new();
        let mut remove = IndexChanges::default();
        for t in &due {
            if !taken.insert(t.stream.as_str()) {
                continue;
            }
            batch.push(timer_event(t));
            remove.timers.push(TimerChange::Remove { id: t.id.clone() });
        }
        let n = batch.len();
        let span = crate::trace::batch("timers", n);
        let spans = crate::trace::events(&span, &batch);
        let result = self
            .ingest_batch(&batch, remove)
            .instrument(span.clone())
            .await;
        crate::trace::finish(&span, spans, &result);
        match result {
            Ok(_) => {}
            Err(RuntimeError::Raced) => return Ok(Some(0)),
            Err(e) => return Err(e),
        }
        // Lateness from when each was to fire: its due instant, or the end of its
        // catch-up grace (neither a backdated event's age nor the grace is the engine's).
        let mut taken: HashSet<&str> = HashSet::new();
        due.iter()
            .filter(|t| taken.insert(t.stream.as_str()))
            .for_each(|t| crate::metrics::timer_fired(until, t.fires_at()));
        Ok(Some(n))
    }

    /// The earliest timer in this engine's scope that the commits written since the last
    /// call scheduled (`None`: none). The store's [`Engine::next_timer`] now answers this
    /// or earlier: the service looks its next timer up in the store at most every
    /// `TIMER_READ_EVERY`, and lowers it by this after each commit.
    pub fn take_scheduled_timer(&mut self) -> Option<Timestamp> {
        self.scheduled.take()
    }

    /// When the earliest pending timer is due.
    pub async fn next_timer(&self) -> Result<Option<Timestamp>, RuntimeError> {
        Ok(self.store.next_timer(&self.timer_scope).await?)
    }
}

/// A batch decided, its commit not yet written (see [`Engine::prepare_batch`]).
pub struct Prepared {
    /// Nothing to write: the batch held only duplicates and refusals.
    nothing: bool,
    commit: Option<Commit>,
    effects: Option<CommitEffects>,
    outcomes: Vec<Option<Result<IngestOutcome, Refused>>>,
    work: HashMap<PatientKey, Working>,
    order: Vec<PatientKey>,
    instance_events: u64,
    /// The earliest timer the commit schedules that this engine fires (its scope).
    earliest_timer: Option<Timestamp>,
    /// What became of the batch's identity links, and those the log holds once it
    /// commits (tenant, local key, national key).
    links: (links::Counts, Vec<(String, String, String)>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("patients", &self.order.len())
            .field("instance_events", &self.instance_events)
            .finish()
    }
}

impl Prepared {
    /// The commit to write, once (`None`: nothing to write, or already taken).
    pub fn take_commit(&mut self) -> Option<Commit> {
        self.commit.take()
    }

    /// The commit's effects, to hand to the relay once it is written (`None`: the engine
    /// hands nothing over, or already taken).
    pub fn take_effects(&mut self) -> Option<CommitEffects> {
        self.effects.take()
    }
}

/// The effects of a commit not written yet, each at its record's index in the commit.
#[derive(Debug)]
pub struct CommitEffects {
    records: u64,
    floor: u64,
    effects: Vec<Effect>,
}

impl CommitEffects {
    /// One instance's write: its decisions and their records, in order.
    fn add(&mut self, stream: &str, decisions: &[Vec<Recorded>], records: &[NewRecord]) {
        for (decision, record) in decisions.iter().zip(records) {
            let index = self.records;
            self.records += 1;
            self.effects.extend(decision.iter().filter_map(|r| {
                relay::effect(r.clone(), &record.tenant, &record.subject, stream, index)
            }));
        }
    }

    /// What the relay is handed once the commit is written, its last record at `last`.
    pub fn handoff(self, last: u64) -> Handoff {
        let first = (last + 1).saturating_sub(self.records);
        let mut effects = self.effects;
        for e in &mut effects {
            e.position += first;
        }
        Handoff {
            first,
            last,
            floor: self.floor,
            effects,
            committed_at: crate::metrics::wall_now(),
        }
    }
}

/// Write a prepared batch's commit: `Some(last position)` once committed (0 when it wrote
/// projections only), `None` when another writer got there first (a version conflict,
/// its ids stored already).
pub async fn write_commit<S: EventStore>(
    store: &S,
    commit: Commit,
) -> Result<Option<u64>, RuntimeError> {
    if commit.writes.is_empty() {
        store.write_index(commit.index).await?;
        return Ok(Some(0));
    }
    match store.append(commit).await {
        Ok(Appended::Committed { last_position }) => Ok(Some(last_position)),
        Ok(Appended::Duplicate) | Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One instance's decisions, before they join the working copy: its index in the patient
/// (`None` for a new enrolment), pathway, state after, the records of each decision (one
/// for the event; a new enrolment's second is the consent given before it).
type Decided = (
    Option<usize>,
    Arc<CompiledPathway>,
    InstanceState,
    Vec<Vec<Recorded>>,
);

/// Route and decide one event for a patient being worked on; on success the working
/// copy holds the new states and the records to append.
fn decide_for(
    w: &mut Working,
    latest: &[Arc<CompiledPathway>],
    latest_refs: &[&CompiledPathway],
    event: &Event,
    consents: &[Event],
) -> Result<IngestOutcome, Refused> {
    if let EventData::PatientReferred(r) = &event.data
        && !latest.iter().any(|p| *p.id == *r.pathway)
    {
        return Err(unknown_referral(latest));
    }
    let states: Vec<&InstanceState> = w.patient.instances.iter().map(|l| &l.state).collect();
    let targets = route(latest_refs, &states, event);
    // Decide for every target first: the event changes all its instances or none.
    let mut decided: Vec<Decided> = Vec::new();
    for t in targets {
        // The cached state is read, not copied: `decide` copies what it changes.
        let (idx, pathway, before) = match t {
            Target::Existing(i) => {
                let l = &w.patient.instances[i];
                (Some(i), l.pathway.clone(), Cow::Borrowed(&l.state))
            }
            Target::Enrol { pathway } => {
                let p = latest[pathway].clone();
                let id = instance_id_for(&p.id, event);
                (None, p, Cow::Owned(InstanceState::pending(id)))
            }
        };
        let (decision, mut after) = decide_and_apply(&pathway, &before, event)
            .map_err(|e| Refused::Decide(e.to_string()))?;
        if decision.is_empty() {
            continue;
        }
        let mut decisions = vec![decision.events];
        // A new instance receives the consent given before its enrolment (PRADO's adviser
        // met the patient in hospital), in the same commit, caused by that consent.
        if idx.is_none()
            && let Some(c) = consent_before_enrolment(&pathway, &states, consents, event)
        {
            let (decision, next) = decide_and_apply(&pathway, &after, &c)
                .map_err(|e| Refused::Decide(e.to_string()))?;
            if !decision.is_empty() {
                decisions.push(decision.events);
                after = next;
            }
        }
        decided.push((idx, pathway, after, decisions));
    }
    Ok(join(w, decided, event))
}

/// The most patient keys [`consents_before`] reads the consents of: the patient's own and
/// those linked or merged into it (an IPP or two, a merge). More means identities joined
/// wrongly; the consents of keys beyond are not looked for.
const CONSENT_KEYS_MAX: usize = 16;

/// The consents to a pathway (given or withdrawn) the patient of `w` sent before `event`
/// — read only when `event` enrols them somewhere ([`consent_before_enrolment`] looks for
/// one to hand to the new instance): the patient's inbound stream, the inbound streams
/// of the keys linked or merged into the patient's (a consent recorded under the
/// hospital's IPP before the message that linked it to the INS; transitively, at most
/// [`CONSENT_KEYS_MAX`] keys), then this batch's events before it.
async fn consents_before<S: EventStore>(
    store: &S,
    w: &Working,
    latest_refs: &[&CompiledPathway],
    event: &Event,
) -> Result<Vec<Event>, RuntimeError> {
    // A patient with nothing stored and no consent or link earlier in the batch (most
    // events of a new patient) has none: no rule evaluated, no read. The inbound stream's
    // version is the one its next append expects.
    let stored = w.patient.inbound_version > 0;
    let in_batch = |e: &Event| e.is_consent() || parcours_core::merge::is_merge(e);
    if event.is_consent() || !(stored || w.inbound.iter().any(in_batch)) {
        return Ok(Vec::new());
    }
    if !latest_refs.iter().any(|p| enrols(p, event)) {
        return Ok(Vec::new());
    }
    let states: Vec<&InstanceState> = w.patient.instances.iter().map(|l| &l.state).collect();
    if !route(latest_refs, &states, event)
        .iter()
        .any(|t| matches!(t, Target::Enrol { .. }))
    {
        return Ok(Vec::new());
    }
    let mut out = stored_consents(store, w, &event.tenant, &event.subject, HashSet::new()).await?;
    out.extend(w.inbound.iter().filter(|e| e.is_consent()).cloned());
    Ok(out)
}

/// The consents (given or withdrawn) stored for the patient `subject` of `w`: in its
/// inbound stream (if it has stored events) and in those of the keys linked or merged
/// into it — by stored identity events or by `w`'s events of this batch — transitively,
/// at most [`CONSENT_KEYS_MAX`] keys; `seen` holds keys not to read (nor follow). The
/// batch's consents are the caller's to add.
async fn stored_consents<S: EventStore>(
    store: &S,
    w: &Working,
    tenant: &str,
    subject: &str,
    mut seen: HashSet<String>,
) -> Result<Vec<Event>, RuntimeError> {
    let moved_in =
        |e: &Event, into: &str| parcours_core::merge::moved_into(e, into).map(str::to_owned);
    seen.insert(subject.to_owned());
    let mut to_read: Vec<String> = Vec::new();
    if w.patient.inbound_version > 0 {
        to_read.push(subject.to_owned());
    }
    for key in w.inbound.iter().filter_map(|e| moved_in(e, subject)) {
        if seen.len() < CONSENT_KEYS_MAX && seen.insert(key.clone()) {
            to_read.push(key);
        }
    }
    let mut out: Vec<Event> = Vec::new();
    while let Some(key) = to_read.pop() {
        let stream = codec::inbound_stream(tenant, &key);
        let read = crate::resend::inbound_events_of(
            store,
            &stream,
            &[
                EventType::ConsentGiven,
                EventType::ConsentWithdrawn,
                EventType::IdentityLinked,
                EventType::IdentityMerged,
            ],
        )
        .await?;
        // A consent that cannot be read is not handed over: the coordinator asks again.
        for e in read.into_iter().filter_map(|(_, e)| e.ok()) {
            if e.is_consent() {
                out.push(e);
            } else if let Some(moved) = moved_in(&e, &key)
                && seen.len() < CONSENT_KEYS_MAX
                && seen.insert(moved.clone())
            {
                to_read.push(moved);
            }
        }
    }
    Ok(out)
}

/// A referral to a pathway that is not published here: refused, so the coordinator
/// learns it at once instead of finding nobody enrolled later.
fn unknown_referral(latest: &[Arc<CompiledPathway>]) -> Refused {
    let published: Vec<String> = latest.iter().map(|p| format!("`{}`", p.id)).collect();
    let listed = if published.is_empty() {
        "none is published".to_owned()
    } else {
        format!("published: {}", published.join(", "))
    };
    // The value sent is not echoed (refusals name no value: docs/threat-model.md).
    Refused::Invalid(format!(
        "`patient.referred`: `data.pathway` names no pathway published here ({listed}); \
         correct it and send the referral again"
    ))
}

/// Add an event's decisions to the patient being worked on: new instances, states after,
/// the records to append, and the event itself to the inbound stream.
fn join(w: &mut Working, decided: Vec<Decided>, event: &Event) -> IngestOutcome {
    let mut events = 0;
    let mut effects = 0;
    let mut instances = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    for (idx, pathway, after, decisions) in decided {
        for recs in &decisions {
            events += recs.len();
            effects += effects_in(recs);
        }
        instances.push(after.instance_id.to_string());
        for r in decisions.iter().flatten() {
            if let Change::InputIgnored { reason } = &r.change {
                let w = format!("{}: {reason}", pathway.id);
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
        let idx = match idx {
            Some(i) => i,
            None => {
                w.patient.instances.push(Loaded {
                    pathway,
                    state: InstanceState::pending(after.instance_id.clone()),
                    stream_version: 0,
                    snapshot_version: 0,
                });
                w.patient.instances.len() - 1
            }
        };
        let l = &mut w.patient.instances[idx];
        w.pending
            .entry(idx)
            .or_insert_with(|| Pending {
                base: l.stream_version,
                earliest_timer: projection::earliest_timer(&l.state),
                decisions: Vec::new(),
            })
            .decisions
            .extend(decisions);
        l.state = after;
    }
    if instances.is_empty() && matches!(event.data, EventData::ParametersUpdated(_)) {
        warnings.push(
            "no active instance of this patient takes parameters: nothing was changed".into(),
        );
    }
    w.inbound.push(event.clone());
    IngestOutcome::Committed {
        events,
        effects,
        instances,
        warnings,
    }
}
