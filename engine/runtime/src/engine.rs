//! The engine: in-memory instance states over an event log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use parcours_core::decide::{instance_id_for, timer_fired_event_id};
use parcours_core::events::{Event, EventData, data};
use parcours_core::model::CompiledPathway;
use parcours_core::route::{Target, route};
use parcours_core::state::{Change, EffectKind, InstanceState, apply};
use parcours_core::{DecideError, decide_and_apply};
use parcours_store::{Appended, Commit, EventStore, StoreError, StreamWrite};
use uuid::Uuid;

use crate::bus::{Bus, BusError, Effect};
use crate::codec::{self, DecodeError};

/// Every loaded pathway version; the highest version of an id enrols new patients.
#[derive(Clone, Debug, Default)]
pub struct PathwayRegistry {
    versions: BTreeMap<(String, u32), Arc<CompiledPathway>>,
}

impl PathwayRegistry {
    /// An empty registry.
    pub fn new() -> PathwayRegistry {
        PathwayRegistry::default()
    }

    /// Add a compiled pathway version. A version already loaded is replaced only if
    /// identical in id and version (the caller checks files do not disagree).
    pub fn add(&mut self, p: CompiledPathway) {
        self.versions.insert((p.id.clone(), p.version), Arc::new(p));
    }

    /// A pinned version.
    pub fn get(&self, id: &str, version: u32) -> Option<&Arc<CompiledPathway>> {
        self.versions.get(&(id.to_string(), version))
    }

    /// The version that enrols: the highest of each id.
    pub fn latest(&self) -> Vec<&Arc<CompiledPathway>> {
        let mut out: BTreeMap<&str, &Arc<CompiledPathway>> = BTreeMap::new();
        for ((id, _), p) in &self.versions {
            out.insert(id.as_str(), p);
        }
        out.into_values().collect()
    }
}

/// Why the runtime could not process something.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The log refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The log contradicts a pathway definition, or a pinned version is not loaded.
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
    Bus(#[from] BusError),
}

/// What ingesting one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Committed: the instance events appended (0 if no pathway cared).
    Committed {
        /// Instance events written.
        events: usize,
        /// Of which effects to publish.
        effects: usize,
    },
    /// Its id was already in the log: acknowledged, nothing done.
    Duplicate,
}

/// Counters, for the demo and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inbound events committed.
    pub inbound: u64,
    /// Duplicates acknowledged.
    pub duplicates: u64,
    /// Instance events written.
    pub instance_events: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Effects published by the relay.
    pub published: u64,
}

/// One instance's decision, before commit.
struct Decided {
    id: Arc<str>,
    pathway: Arc<CompiledPathway>,
    version: u64,
    after: InstanceState,
    events: Vec<parcours_core::state::Recorded>,
    is_new: bool,
}

struct Instance {
    pathway: Arc<CompiledPathway>,
    state: InstanceState,
}

/// The runtime over an event store `S`.
pub struct Engine<S> {
    store: S,
    registry: PathwayRegistry,
    instances: HashMap<Arc<str>, Instance>,
    patients: HashMap<(String, String), Vec<Arc<str>>>,
    inbound_versions: HashMap<String, u64>,
    /// Pending timers of every instance: (fire_at, timer id) → instance id.
    timers: BTreeMap<(Timestamp, Uuid), Arc<str>>,
    timer_keys: HashMap<Arc<str>, BTreeSet<(Timestamp, Uuid)>>,
    stats: Stats,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("instances", &self.instances.len())
            .field("timers", &self.timers.len())
            .finish()
    }
}

impl<S: EventStore> Engine<S> {
    /// Open the engine on a log: every instance state is rebuilt by folding its records.
    pub async fn open(store: S, registry: PathwayRegistry) -> Result<Engine<S>, RuntimeError> {
        let mut engine = Engine {
            store,
            registry,
            instances: HashMap::new(),
            patients: HashMap::new(),
            inbound_versions: HashMap::new(),
            timers: BTreeMap::new(),
            timer_keys: HashMap::new(),
            stats: Stats::default(),
        };
        let mut after = 0;
        loop {
            let page = engine.store.read_all(after, 1024).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for r in &page {
                if codec::is_inbound(&r.stream) {
                    engine.inbound_versions.insert(r.stream.clone(), r.version);
                    continue;
                }
                let recorded = codec::decode_instance(r)?;
                let id: Arc<str> = Arc::from(r.stream.as_str());
                if !engine.instances.contains_key(&id) {
                    let Change::Enrolled {
                        pathway_id,
                        pathway_version,
                        ..
                    } = &recorded.change
                    else {
                        return Err(RuntimeError::Orphan(r.stream.clone()));
                    };
                    let pathway = engine
                        .registry
                        .get(pathway_id, *pathway_version)
                        .cloned()
                        .ok_or_else(|| RuntimeError::MissingVersion {
                            instance: r.stream.clone(),
                            pathway: pathway_id.clone(),
                            version: *pathway_version,
                        })?;
                    engine
                        .patients
                        .entry((r.record.tenant.clone(), r.record.subject.clone()))
                        .or_default()
                        .push(id.clone());
                    engine.instances.insert(
                        id.clone(),
                        Instance {
                            pathway,
                            state: InstanceState::pending(id.clone()),
                        },
                    );
                }
                if let Some(inst) = engine.instances.get_mut(&id) {
                    apply(&inst.pathway, &mut inst.state, &recorded).map_err(DecideError::from)?;
                }
            }
        }
        let ids: Vec<Arc<str>> = engine.instances.keys().cloned().collect();
        for id in ids {
            engine.reindex_timers(&id);
        }
        Ok(engine)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// An instance's state and pathway.
    pub fn instance(&self, id: &str) -> Option<(&CompiledPathway, &InstanceState)> {
        self.instances
            .get(id)
            .map(|i| (i.pathway.as_ref(), &i.state))
    }

    /// Every instance, as (pathway, state).
    pub fn instances(&self) -> impl Iterator<Item = (&CompiledPathway, &InstanceState)> {
        self.instances
            .values()
            .map(|i| (i.pathway.as_ref(), &i.state))
    }

    /// The ids of a patient's instances.
    pub fn patient_instances(&self, tenant: &str, subject: &str) -> &[Arc<str>] {
        self.patients
            .get(&(tenant.to_string(), subject.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    fn reindex_timers(&mut self, id: &Arc<str>) {
        if let Some(old) = self.timer_keys.remove(id) {
            for k in old {
                self.timers.remove(&k);
            }
        }
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        let keys: BTreeSet<(Timestamp, Uuid)> = inst
            .state
            .timers
            .iter()
            .map(|(tid, t)| (t.fire_at, *tid))
            .collect();
        for k in &keys {
            self.timers.insert(*k, id.clone());
        }
        if !keys.is_empty() {
            self.timer_keys.insert(id.clone(), keys);
        }
    }

    /// Process one inbound event (see the crate docs).
    pub async fn ingest(&mut self, event: &Event) -> Result<IngestOutcome, RuntimeError> {
        if self.store.contains(&event.id).await? {
            self.stats.duplicates += 1;
            return Ok(IngestOutcome::Duplicate);
        }
        let key = (event.tenant.clone(), event.subject.clone());
        let ids: Vec<Arc<str>> = self.patients.get(&key).cloned().unwrap_or_default();
        let existing: Vec<&InstanceState> = ids
            .iter()
            .filter_map(|id| self.instances.get(id).map(|i| &i.state))
            .collect();
        let latest: Vec<Arc<CompiledPathway>> =
            self.registry.latest().into_iter().cloned().collect();
        let latest_refs: Vec<&CompiledPathway> = latest.iter().map(Arc::as_ref).collect();
        // Existing instances are decided against their pinned version; `route` matches them
        // by pathway id.
        let targets = route(&latest_refs, &existing, event);

        // Decide everything first, commit once, then update memory.
        let mut decided: Vec<Decided> = Vec::new();
        for t in targets {
            let (id, pathway, before, is_new) = match t {
                Target::Existing(i) => {
                    let id = ids[i].clone();
                    let inst = &self.instances[&id];
                    (id, inst.pathway.clone(), inst.state.clone(), false)
                }
                Target::Enrol { pathway } => {
                    let p = latest[pathway].clone();
                    let id: Arc<str> = Arc::from(instance_id_for(&p.id, event));
                    (id.clone(), p, InstanceState::pending(id), true)
                }
            };
            let version = before.version;
            let (decision, after) = decide_and_apply(&pathway, &before, event)?;
            if decision.is_empty() {
                continue;
            }
            decided.push(Decided {
                id,
                pathway,
                version,
                after,
                events: decision.events,
                is_new,
            });
        }

        let inbound_stream = codec::inbound_stream(&event.tenant, &event.subject);
        let inbound_version = self
            .inbound_versions
            .get(&inbound_stream)
            .copied()
            .unwrap_or(0);
        let mut commit = Commit {
            writes: vec![StreamWrite {
                stream: inbound_stream.clone(),
                expected_version: inbound_version,
                records: vec![codec::encode_inbound(event)?],
            }],
        };
        let mut events = 0;
        let mut effects = 0;
        for d in &decided {
            let (id, version) = (&d.id, &d.version);
            let mut records = Vec::with_capacity(d.events.len());
            for r in &d.events {
                if matches!(
                    r.change.effect_kind(),
                    Some(EffectKind::Task | EffectKind::Alert | EffectKind::Handoff)
                ) {
                    effects += 1;
                }
                records.push(codec::encode_instance(&event.tenant, &event.subject, r)?);
            }
            events += records.len();
            commit.writes.push(StreamWrite {
                stream: id.to_string(),
                expected_version: *version,
                records,
            });
        }
        match self.store.append(commit).await? {
            Appended::Duplicate => {
                self.stats.duplicates += 1;
                return Ok(IngestOutcome::Duplicate);
            }
            Appended::Committed { .. } => {}
        }
        self.inbound_versions
            .insert(inbound_stream, inbound_version + 1);
        self.stats.inbound += 1;
        self.stats.instance_events += events as u64;
        if matches!(event.data, EventData::TimerFired(_)) {
            self.stats.timers_fired += 1;
        }
        for d in decided {
            if d.is_new {
                self.patients
                    .entry(key.clone())
                    .or_default()
                    .push(d.id.clone());
            }
            self.instances.insert(
                d.id.clone(),
                Instance {
                    pathway: d.pathway,
                    state: d.after,
                },
            );
            self.reindex_timers(&d.id);
        }
        Ok(IngestOutcome::Committed { events, effects })
    }

    /// Fire every timer due at or before `until`, in time order, each as a `timer.fired`
    /// event through [`Engine::ingest`]. Returns how many fired.
    pub async fn advance(&mut self, until: Timestamp) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        while let Some((&(at, timer_id), instance)) = self.timers.iter().next() {
            if at > until {
                break;
            }
            let instance = instance.clone();
            let Some(inst) = self.instances.get(&instance) else {
                self.timers.remove(&(at, timer_id));
                continue;
            };
            let event = Event {
                id: timer_fired_event_id(&timer_id.to_string()),
                tenant: inst.state.tenant.to_string(),
                source: "parcours/timers".into(),
                subject: inst.state.subject.to_string(),
                occurred_at: at,
                recorded_at: None,
                data: EventData::TimerFired(data::TimerFired {
                    timer_id: timer_id.to_string(),
                    instance_id: instance.to_string(),
                }),
            };
            let outcome = self.ingest(&event).await?;
            // A timer that produced nothing (already cancelled in state) must not spin.
            if outcome == IngestOutcome::Duplicate || self.timers.contains_key(&(at, timer_id)) {
                self.timers.remove(&(at, timer_id));
            }
            fired += 1;
        }
        Ok(fired)
    }

    /// Publish the effects recorded after the relay's checkpoint, in log order, then move
    /// the checkpoint. Returns how many were published.
    pub async fn relay<B: Bus>(&mut self, bus: &B) -> Result<usize, RuntimeError> {
        const NAME: &str = "relay";
        let mut after = self.store.checkpoint(NAME).await?.unwrap_or(0);
        let mut published = 0;
        loop {
            let page = self.store.read_all(after, 512).await?;
            let Some(last) = page.last() else { break };
            let last = last.position;
            for r in &page {
                if codec::is_inbound(&r.stream) {
                    continue;
                }
                let recorded = codec::decode_instance(r)?;
                let Some(kind) = recorded.change.effect_kind() else {
                    continue;
                };
                if kind == EffectKind::Timer {
                    continue; // timers are the engine's own business
                }
                let effect = Effect {
                    id: recorded.id.to_string(),
                    kind,
                    tenant: r.record.tenant.clone(),
                    subject: r.record.subject.clone(),
                    instance: r.stream.clone(),
                    cause: recorded.cause.to_string(),
                    rule: recorded.rule.as_deref().map(str::to_string),
                    position: r.position,
                    change: recorded.change,
                };
                bus.publish(&effect).await?;
                published += 1;
            }
            after = last;
            self.store.save_checkpoint(NAME, after).await?;
        }
        self.stats.published += published as u64;
        Ok(published)
    }

    /// Rebuild every instance from the log and compare with the live states: `Ok(n)` with
    /// the number of instances checked when they all agree.
    pub async fn verify_replay(&self) -> Result<usize, String> {
        let mut by_stream: HashMap<String, Vec<parcours_core::state::Recorded>> = HashMap::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .read_all(after, 1024)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for r in &page {
                if codec::is_inbound(&r.stream) {
                    continue;
                }
                let rec = codec::decode_instance(r).map_err(|e| e.to_string())?;
                by_stream.entry(r.stream.clone()).or_default().push(rec);
            }
        }
        for (id, inst) in &self.instances {
            let events = by_stream.get(&**id).map_or(&[][..], Vec::as_slice);
            let replayed =
                parcours_core::state::fold(&inst.pathway, id, events).map_err(|e| e.to_string())?;
            if replayed != inst.state {
                return Err(format!(
                    "instance {id}: replayed state differs from the live one"
                ));
            }
        }
        Ok(self.instances.len())
    }
}
