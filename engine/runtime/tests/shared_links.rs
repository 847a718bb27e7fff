//! Identity links and merges committed by another engine sharing the PostgreSQL log
//! (scale-out, `EngineConfig::shared_log`): two `Engine`s on one database stand for two
//! processes. Engine B decides a batch under the IPP's key while engine A commits the
//! link of that key to the INS's (or a merge retiring it); the commits' guards make the
//! two conflict, so whichever commits second is refused (`Raced`) and, tried again
//! (`Engine::retry_batch`, the service's retry), decided with the link known:
//! - B's event committed second is taken to the INS's key: a weight reaches the instance
//!   the link moved (its weight-gain alert fires), a discharge enrols no second patient
//!   under the IPP, a weight under an IPP without instances reaches the INS's instance;
//!   the same for a key a merge retired;
//! - the link committed second, its prepare having read the IPP before B's discharge
//!   committed, moves what B wrote.

mod support;

use parcours_core::events::Event;
use parcours_runtime::write_commit;
use parcours_runtime::{Engine, EngineConfig, IngestOutcome, Refused, RuntimeError, codec};
use parcours_store::{EventStore, IndexChanges};
use parcours_store_postgres::PgStore;
use support::gated::Gated;
use support::pg::TestDb;
use support::{TENANT, discharge, hours, linked, merged, registry, weight};

/// A hospital's IPP's key.
const IPP: &str = "p-ipp";
/// The patient's INS's key.
const INS: &str = "p-ins";

type Outcomes = Vec<Result<IngestOutcome, Refused>>;

/// Two engines sharing one log, as two `parcours serve --store postgres://… --nats …`.
struct Cluster {
    a: Engine<PgStore>,
    b: Engine<PgStore>,
    store: PgStore,
    db: TestDb,
}

impl Cluster {
    async fn new(label: &str) -> Cluster {
        let (db, url) = TestDb::create(label).await;
        let store = PgStore::connect(&url).await.expect("connect");
        let config = || EngineConfig {
            shared_log: true,
            ..EngineConfig::default()
        };
        let a = Engine::open(store.clone(), registry(), config())
            .await
            .expect("engine A");
        let b = Engine::open(store.clone(), registry(), config())
            .await
            .expect("engine B");
        Cluster { a, b, store, db }
    }

    async fn end(self) {
        self.store.close().await;
        self.db.drop_now().await;
    }

    /// The instance ids the projection lists under `subject`.
    async fn instances(&self, subject: &str) -> Vec<String> {
        self.store
            .instances_of(TENANT, subject)
            .await
            .expect("instances")
            .into_iter()
            .map(|r| r.stream)
            .collect()
    }

    /// The ids in a patient's inbound stream.
    async fn inbound(&self, subject: &str) -> Vec<String> {
        self.store
            .read_stream(&codec::inbound_stream(TENANT, subject), 0)
            .await
            .expect("inbound")
            .into_iter()
            .map(|r| r.record.id)
            .collect()
    }
}

/// `decider` decides `events`; before its commit is written (a commit in flight), the
/// `other` engine commits `meanwhile`. The commit written second must be refused
/// (`Raced`); the service's retry decides `events` again: its outcomes, `events` as
/// tried.
async fn raced_around(
    decider: &mut Engine<PgStore>,
    other: &mut Engine<PgStore>,
    events: &mut [Event],
    meanwhile: Event,
) -> Outcomes {
    let mut prepared = decider
        .prepare_batch(events, IndexChanges::default())
        .await
        .expect("prepared");
    let commit = prepared.take_commit().expect("a commit to write");
    let out = other.ingest(&meanwhile).await;
    assert!(
        matches!(out, Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    let written = write_commit(decider.store(), commit)
        .await
        .expect("written");
    match decider.finish_batch(events, prepared, written.is_some()) {
        Err(RuntimeError::Raced) => decider.retry_batch(events).await.expect("tried again"),
        not => panic!("the commit written second was not refused: {not:?}"),
    }
}

fn committed(out: &Result<IngestOutcome, Refused>) -> (&[String], usize) {
    match out {
        Ok(IngestOutcome::Committed {
            instances, effects, ..
        }) => (instances, *effects),
        other => panic!("not committed: {other:?}"),
    }
}

/// Case (a): the IPP has an instance. B's weight is decided while A's link moves the
/// instance to the INS's key: B's commit races, and tried again the weight reaches the
/// moved instance, whose weight-gain alert fires.
#[tokio::test]
async fn a_weight_decided_while_another_engine_links_its_key_reaches_the_moved_instance() {
    let mut c = Cluster::new("shared_weight").await;
    c.b.ingest(&discharge("d-1", IPP, hours(0), "V-1"))
        .await
        .expect("discharge");
    c.b.ingest(&weight("w-1", IPP, hours(24), 80.0))
        .await
        .expect("weight");
    let instance = c.instances(IPP).await;
    assert_eq!(instance.len(), 1);

    let mut events = vec![weight("w-2", IPP, hours(48), 83.0)];
    let Cluster { a, b, .. } = &mut c;
    let out = raced_around(b, a, &mut events, linked("l-1", INS, IPP, hours(40))).await;
    let (instances, effects) = committed(&out[0]);
    assert_eq!(instances, instance, "the instance the link moved took it");
    assert!(effects > 0, "the weight-gain alert fired");
    assert_eq!(events[0].subject, INS);
    assert_eq!(c.inbound(INS).await, ["l-1", "w-2"]);
    assert_eq!(c.inbound(IPP).await, ["d-1", "w-1"]);
    assert_eq!(c.instances(INS).await, instance);
    assert!(c.instances(IPP).await.is_empty());
    c.end().await;
}

/// Case (b): the IPP has no instance, B's discharge enrols. Without the guards nothing
/// conflicts and an orphan instance is left under the IPP; with them, B's commit races
/// and the discharge enrols the INS's patient.
#[tokio::test]
async fn a_discharge_decided_while_another_engine_links_its_key_enrols_the_national_key() {
    let mut c = Cluster::new("shared_discharge").await;
    let mut events = vec![discharge("d-1", IPP, hours(0), "V-1")];
    let Cluster { a, b, .. } = &mut c;
    let out = raced_around(b, a, &mut events, linked("l-1", INS, IPP, hours(1))).await;
    let (instances, _) = committed(&out[0]);
    assert_eq!(instances.len(), 1);
    assert!(
        c.instances(IPP).await.is_empty(),
        "no orphan instance under the IPP"
    );
    assert_eq!(c.instances(INS).await, instances);
    assert!(c.inbound(IPP).await.is_empty());
    assert_eq!(c.inbound(INS).await, ["l-1", "d-1"]);
    c.end().await;
}

/// Case (c): the IPP has no instance and the event enrols nothing: a weight under the
/// IPP, while the INS's patient has the instance. Without the guards it is decided on
/// nothing (lost); with them it reaches the INS's instance.
#[tokio::test]
async fn a_weight_under_a_key_without_instances_reaches_the_national_keys_instance() {
    let mut c = Cluster::new("shared_lost").await;
    c.a.ingest(&discharge("d-1", INS, hours(0), "V-1"))
        .await
        .expect("discharge");
    c.a.ingest(&weight("w-1", INS, hours(24), 80.0))
        .await
        .expect("weight");
    let instance = c.instances(INS).await;
    let mut events = vec![weight("w-2", IPP, hours(48), 83.0)];
    let Cluster { a, b, .. } = &mut c;
    let out = raced_around(b, a, &mut events, linked("l-1", INS, IPP, hours(40))).await;
    let (instances, effects) = committed(&out[0]);
    assert_eq!(instances, instance, "the INS's instance took it");
    assert!(effects > 0, "the weight-gain alert fired");
    assert!(c.inbound(IPP).await.is_empty());
    assert!(c.instances(IPP).await.is_empty());
    c.end().await;
}

/// The same for a key a merge retires (its record in the retired key's identity
/// stream): a discharge under it decided while another engine commits the merge enrols
/// the survivor.
#[tokio::test]
async fn a_discharge_decided_while_another_engine_merges_its_key_enrols_the_survivor() {
    let mut c = Cluster::new("shared_merge").await;
    let mut events = vec![discharge("d-1", IPP, hours(0), "V-1")];
    let Cluster { a, b, .. } = &mut c;
    let out = raced_around(b, a, &mut events, merged("m-1", INS, IPP, hours(1))).await;
    let (instances, _) = committed(&out[0]);
    assert!(
        c.instances(IPP).await.is_empty(),
        "no instance under the retired key"
    );
    assert_eq!(c.instances(INS).await, instances);
    assert_eq!(c.inbound(INS).await, ["m-1", "d-1"]);
    c.end().await;
}

/// The other order: A's link is decided (the IPP read: nothing to move), B's discharge
/// under the IPP commits, then A's link: its commit races (the IPP's inbound stream
/// moved since A read it) and, tried again, moves the instance B enrolled.
#[tokio::test]
async fn a_link_decided_before_another_engine_commits_under_its_key_moves_what_it_wrote() {
    let mut c = Cluster::new("shared_link_second").await;
    let mut events = vec![linked("l-1", INS, IPP, hours(1))];
    let Cluster { a, b, .. } = &mut c;
    let out = raced_around(a, b, &mut events, discharge("d-1", IPP, hours(0), "V-1")).await;
    committed(&out[0]);
    let moved = c.instances(INS).await;
    assert_eq!(moved.len(), 1, "the link moved B's instance");
    assert!(c.instances(IPP).await.is_empty());
    assert_eq!(c.inbound(IPP).await, ["d-1"]);
    c.end().await;
}

struct Fixed;

impl parcours_runtime::Clock for Fixed {
    fn now(&self) -> jiff::Timestamp {
        hours(0)
    }
}

/// Through engine B's service (its commit held at a gate while engine A commits the
/// link): the service's retry after the race takes the weight to the INS's key, and the
/// submitter is answered with the moved instance that took it.
#[tokio::test]
async fn the_service_tries_a_raced_batch_again_on_the_key_the_link_leads_to() {
    let (db, url) = TestDb::create("shared_service").await;
    let store = PgStore::connect(&url).await.expect("connect");
    let config = || EngineConfig {
        shared_log: true,
        ..EngineConfig::default()
    };
    let gated = Gated::new(store.clone());
    let mut a = Engine::open(store.clone(), registry(), config())
        .await
        .expect("engine A");
    let mut b = Engine::open(gated.clone(), registry(), config())
        .await
        .expect("engine B");
    b.ingest(&discharge("d-1", IPP, hours(0), "V-1"))
        .await
        .expect("discharge");
    b.ingest(&weight("w-1", IPP, hours(24), 80.0))
        .await
        .expect("weight");
    let instance: Vec<String> = store
        .instances_of(TENANT, IPP)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| r.stream)
        .collect();
    let token = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = parcours_runtime::service::start(
        b,
        parcours_runtime::InProcessBus::new(1_000),
        Fixed,
        parcours_runtime::ServiceConfig::default(),
        token.clone(),
        &tracker,
    );
    gated.close();
    let weighed = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .submit(vec![weight("w-2", IPP, hours(48), 83.0)])
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while gated.waiting() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's commit never began"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let out = a.ingest(&linked("l-1", INS, IPP, hours(40))).await;
    assert!(
        matches!(out, Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    gated.open();
    let out = weighed.await.expect("joined").expect("weight");
    let (instances, effects) = committed(&out[0]);
    assert_eq!(instances, instance, "the instance the link moved took it");
    assert!(effects > 0, "the weight-gain alert fired");
    token.cancel();
    tracker.close();
    tracker.wait().await;
    let ins: Vec<String> = store
        .read_stream(&codec::inbound_stream(TENANT, INS), 0)
        .await
        .expect("inbound")
        .into_iter()
        .map(|r| r.record.id)
        .collect();
    assert_eq!(ins, ["l-1", "w-2"]);
    store.close().await;
    db.drop_now().await;
}
