//! The running service with several group commits in flight (`commits_in_flight`):
//! every event committed once, each patient's events in submission order, the same log
//! as with one commit at a time, and replay equal to live state.

mod support;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_runtime::{
    Bus, BusError, Clock, Effect, Engine, EngineConfig, InProcessBus, IngestOutcome, Relay,
    ServiceConfig, replay, service,
};
use parcours_store::EventStore;
use parcours_store_postgres::PgStore;
use parcours_store_sqlite::SqliteStore;
use support::pg::TestDb;
use support::{registry, t0};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A clock that never makes a timer due during the test.
struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        t0()
    }
}

fn event(
    id: String,
    subject: &str,
    at: Timestamp,
    ty: EventType,
    data: serde_json::Value,
) -> Event {
    Event {
        id,
        tenant: "cpts-test".into(),
        source: "test".into(),
        subject: subject.into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("payload"),
    }
}

/// A patient's events: a heart-failure discharge, a consent, daily weights (a gain on
/// day 4 raises an alert).
fn patient_events(p: usize) -> Vec<Event> {
    let subject = format!("p-{p}");
    let mut out = vec![
        event(
            format!("adt-{p}"),
            &subject,
            t0(),
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": format!("V{p}"), "destination": "home", "diagnoses": ["I50.1"]}),
        ),
        event(
            format!("consent-{p}"),
            &subject,
            t0() + SignedDuration::from_hours(1),
            EventType::ConsentGiven,
            serde_json::json!({}),
        ),
    ];
    for d in 1..=6i64 {
        let kg = if d == 4 { 83.5 } else { 80.0 };
        out.push(event(
            format!("weight-{p}-{d}"),
            &subject,
            t0() + SignedDuration::from_hours(24 * d),
            EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        ));
    }
    out
}

/// Run `clients` submitters over `patients` patients with `in_flight` commits at once;
/// client `c` sends, in order and one event per submission, the events of the patients
/// `p` with `p % clients == c`, plus (when `shared`) each event of patient 0 again from
/// every client, so that groups overlap. Returns the log's inbound event ids per
/// patient, in log order, and the effect ids; with `verify`, replay must agree with the
/// live projections (`replay::verify` does not run on PostgreSQL: it asks for timers up
/// to an instant the PostgreSQL log cannot store; the PostgreSQL run is compared with a
/// verified SQLite run instead).
async fn run<S: EventStore + Clone + 'static>(
    store: S,
    patients: usize,
    clients: usize,
    in_flight: usize,
    shared: bool,
    verify: bool,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    let bus = InProcessBus::new(100_000);
    let mut effects = bus.subscribe();
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = service::start(
        engine,
        bus,
        Fixed,
        ServiceConfig {
            commits_in_flight: in_flight,
            max_batch: 4,
            ..ServiceConfig::default()
        },
        token.clone(),
        &tracker,
    );
    let mut tasks = Vec::new();
    for c in 0..clients {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<Vec<Event>> = (0..patients)
                .filter(|p| p % clients == c)
                .map(patient_events)
                .collect();
            if shared && c != 0 {
                mine.push(patient_events(0));
            }
            let mut committed = 0usize;
            // Interleave the client's patients, each in its own order.
            let longest = mine.iter().map(Vec::len).max().unwrap_or(0);
            for i in 0..longest {
                for events in &mine {
                    let Some(e) = events.get(i) else { continue };
                    let out = handle.submit(vec![e.clone()]).await.expect("submitted");
                    match &out[0] {
                        Ok(IngestOutcome::Committed { .. }) => committed += 1,
                        Ok(IngestOutcome::Duplicate) => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.expect("client");
    }
    assert_eq!(committed, patients * 8, "each event committed once");
    token.cancel();
    tracker.close();
    tracker.wait().await;

    let mut inbound: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (subject, id) in inbound_events(&store).await {
        inbound.entry(subject).or_default().push(id);
    }
    if verify {
        let (report, _) = replay::verify(&store, &registry()).await.expect("replay");
        assert!(report.agrees(), "{:?}", report.mismatches);
        assert_eq!(report.inbound, (patients * 8) as u64);
    }
    let mut ids: Vec<String> = std::iter::from_fn(|| effects.try_recv().ok())
        .map(|e| e.id)
        .collect();
    ids.sort();
    (inbound, ids)
}

/// A bus that, at each publish, reads the relay's saved checkpoint.
struct CheckpointSpy {
    store: PgStore,
    seen: std::sync::Mutex<Vec<Option<u64>>>,
}

impl Bus for CheckpointSpy {
    async fn publish(&self, _effects: &[Effect]) -> Result<(), BusError> {
        let saved = self.store.checkpoint("relay").await.expect("checkpoint");
        self.seen.lock().expect("spy").push(saved);
        Ok(())
    }
}

/// The relay saves its checkpoint every 16 pages of records it reads, on PostgreSQL too,
/// where positions are sparse (each transaction's range is 2^20 wide): counted in
/// positions passed, the rule saved it after every page that published something — a
/// write transaction per reading of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_saves_its_checkpoint_by_pages_read_on_postgresql_too() {
    let (db, url) = TestDb::create("service_relay").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    let mut engine = Engine::open(pg.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    // A discharge and a consent each: sixty commits of at least two records.
    for p in 0..30 {
        for e in patient_events(p).into_iter().take(2) {
            engine.ingest(&e).await.expect("ingest");
        }
    }
    let spy = CheckpointSpy {
        store: pg.clone(),
        seen: std::sync::Mutex::default(),
    };
    let relay = Relay::new(pg.clone(), "relay").with_page(2);
    let published = relay.run_once(&spy).await.expect("relay");
    let seen = spy.seen.lock().expect("spy").clone();
    pg.close().await;
    db.drop_now().await;
    assert!(published >= 30, "the patients' tasks: {published}");
    // More than 16 pages of two records published something.
    assert!(seen.len() > 16, "{seen:?}");
    assert!(
        seen[..8].iter().all(Option::is_none),
        "saved before 16 pages were read: {seen:?}"
    );
    assert!(
        seen.last().is_some_and(Option::is_some),
        "saved after 16 pages: {seen:?}"
    );
}

/// The log's inbound events, in log order: (subject, event id).
async fn inbound_events<S: EventStore>(store: &S) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 4096).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(
            page.iter()
                .filter(|r| r.stream.starts_with("inbound/"))
                .map(|r| (r.record.subject.clone(), r.record.id.clone())),
        );
    }
    out
}

fn expected_order(p: &str) -> Vec<String> {
    patient_events(p[2..].parse().expect("patient number"))
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_commits_in_flight_keep_each_patients_order_and_the_same_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("one.db"))
        .await
        .expect("open");
    let (one, one_effects) = run(sqlite, 40, 8, 1, false, true).await;

    let (db, url) = TestDb::create("service_inflight").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    assert!(
        pg.concurrent_appends() > 1,
        "PostgreSQL takes concurrent writers"
    );
    // A client per patient and groups of at most four events: enough submissions queue
    // up for three and four commits in flight (beyond two, the service opens slots only
    // for a backlog).
    let (many, many_effects) = run(pg.clone(), 40, 40, 4, true, false).await;
    pg.close().await;
    db.drop_now().await;

    for (p, ids) in &many {
        assert_eq!(
            ids,
            &expected_order(p),
            "patient {p}: each event once, in order"
        );
    }
    assert_eq!(one, many, "the same inbound streams");
    assert!(!many_effects.is_empty());
    assert_eq!(
        one_effects, many_effects,
        "the same effects, with the same ids"
    );
}

/// SQLite takes a second commit in flight, which waits for its one writer: with a
/// backlog, the next group is decided while the last one is written. Each patient's
/// events stay in order, and the log and the effects are those of one commit at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_decides_the_next_group_while_its_writer_writes_the_last() {
    let dir = tempfile::tempdir().expect("temp dir");
    let one = SqliteStore::open(&dir.path().join("one.db"))
        .await
        .expect("open");
    let (one_log, one_effects) = run(one, 40, 40, 1, true, true).await;

    let two = SqliteStore::open(&dir.path().join("two.db"))
        .await
        .expect("open");
    assert_eq!((two.concurrent_appends(), two.steady_appends()), (2, 1));
    // Four asked, two taken; forty clients queue up more than a backlog's submissions
    // behind groups of at most four events.
    let (two_log, two_effects) = run(two, 40, 40, 4, true, true).await;
    for (p, ids) in &two_log {
        assert_eq!(
            ids,
            &expected_order(p),
            "patient {p}: each event once, in order"
        );
    }
    assert_eq!(one_log, two_log, "the same inbound streams");
    assert!(!two_effects.is_empty());
    assert_eq!(
        one_effects, two_effects,
        "the same effects, with the same ids"
    );
}

/// The service does not look a group's events up in the log before deciding them: a
/// redelivered event, decided again, makes the store refuse the group's commit, and the
/// group is tried again, looked up first. So a redelivery is answered as a duplicate,
/// alone or among new events, by a warm engine or by a fresh one; nothing is in the log
/// twice, every new event of the group is committed, and replay agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_found_by_the_commit_and_answered_as_a_duplicate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let events = patient_events(7);
    let outcomes = |out: Vec<parcours_runtime::service::EventResult>| -> Vec<&'static str> {
        out.into_iter()
            .map(|o| match o {
                Ok(IngestOutcome::Committed { .. }) => "committed",
                Ok(IngestOutcome::Duplicate) => "duplicate",
                other => panic!("unexpected outcome {other:?}"),
            })
            .collect()
    };
    for fresh in [false, true] {
        let engine = Engine::open(store.clone(), registry(), EngineConfig::default())
            .await
            .expect("engine");
        let running = Running::start(engine);
        let handle = running.handle.clone();
        let submit = |batch: Vec<Event>| {
            let handle = handle.clone();
            async move { outcomes(handle.submit(batch).await.expect("submitted")) }
        };
        if fresh {
            // A fresh engine: the patient is read from the log, then decided again.
            assert_eq!(submit(vec![events[3].clone()]).await, ["duplicate"]);
            assert_eq!(
                submit(vec![
                    events[4].clone(),
                    events[2].clone(),
                    events[5].clone()
                ])
                .await,
                ["committed", "duplicate", "committed"]
            );
        } else {
            for e in &events[..4] {
                assert_eq!(submit(vec![e.clone()]).await, ["committed"]);
            }
            assert_eq!(submit(vec![events[2].clone()]).await, ["duplicate"]);
            // Among new events of the same patient, and of another one, in one group.
            let other = patient_events(8);
            assert_eq!(
                submit(vec![events[1].clone(), other[0].clone(), events[3].clone()]).await,
                ["duplicate", "committed", "duplicate"]
            );
        }
        running.stop().await;
    }
    let inbound: Vec<String> = inbound_events(&store)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let ids: Vec<&str> = events[..6].iter().map(|e| e.id.as_str()).collect();
    let mut expected: Vec<&str> = ids[..4].to_vec();
    expected.push("adt-8");
    expected.extend([ids[4], ids[5]]);
    assert_eq!(inbound, expected, "each event once, in order");
    let (report, _) = replay::verify(&store, &registry()).await.expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// A clock a year after the test's events: every timer they scheduled is due.
struct AYearLater;

impl Clock for AYearLater {
    fn now(&self) -> Timestamp {
        t0() + SignedDuration::from_hours(24 * 365)
    }
}

/// The patients (tenant, subject) of the timers due a year later and not yet fired, one
/// entry per timer, from the instances' states rebuilt from the log: the store's timer
/// table keeps only each instance's earliest timer.
async fn due_timers<S: EventStore>(store: &S) -> Vec<(String, String)> {
    let replayed = replay::replay(store, &registry()).await.expect("replay");
    let at = AYearLater.now();
    replayed
        .states
        .values()
        .flat_map(|(_, s)| {
            let n = s.timers.values().filter(|t| t.fire_at <= at).count();
            std::iter::repeat_n((s.tenant.to_string(), s.subject.to_string()), n)
        })
        .collect()
}

/// Timers due and not yet fired (of every partition), but those of patient `p-99`.
async fn due<S: EventStore>(store: &S) -> usize {
    due_timers(store)
        .await
        .iter()
        .filter(|(_, subject)| subject != "p-99")
        .count()
}

/// The timer table keeps one row per instance, its earliest timer: a discharge writes one
/// row for all the deadlines it sets, and a weight that moves the weight watch behind an
/// earlier deadline writes none; the row is the earliest of the instance's timers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_writes_its_instances_timer_row_only_when_the_earliest_changes() {
    use parcours_store::TimerChange;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let mut engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    let events = patient_events(1);
    let timer_changes = |prepared: &mut parcours_runtime::Prepared| {
        prepared.take_commit().expect("a commit").index.timers
    };
    let mut discharge = engine
        .prepare_batch(&events[..1], Default::default())
        .await
        .expect("prepare");
    let changes = timer_changes(&mut discharge);
    assert!(
        matches!(&changes[..], [TimerChange::Schedule(_)]),
        "one row for the discharge's deadlines: {changes:?}"
    );
    drop(discharge);
    engine
        .ingest_batch(&events[..2], Default::default())
        .await
        .expect("discharge and consent");
    let rows = store
        .due_timers(Timestamp::MAX, 100, &parcours_store::TimerScope::All)
        .await
        .expect("rows");
    let (_, state) = engine.cached_instances_iter().next().expect("the instance");
    assert!(state.timers.len() > 5, "{} timers", state.timers.len());
    let earliest = state
        .timers
        .iter()
        .min_by_key(|(id, t)| (t.fire_at, *id))
        .expect("a timer");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].fire_at),
        (earliest.0.to_string().as_str(), earliest.1.fire_at)
    );
    let mut weight = engine
        .prepare_batch(&events[2..3], Default::default())
        .await
        .expect("prepare");
    let changes = timer_changes(&mut weight);
    assert!(
        changes.is_empty(),
        "the weight moved a later timer: {changes:?}"
    );
}

/// An engine over `store` firing four timers a round, its `patients` discharged and
/// consented: a few hundred timers, all due a year later.
async fn with_a_backlog(store: &SqliteStore, patients: usize) -> Engine<SqliteStore> {
    let config = EngineConfig {
        timer_batch: 4,
        ..EngineConfig::default()
    };
    let mut engine = Engine::open(store.clone(), registry(), config)
        .await
        .expect("engine");
    let enrolments: Vec<Event> = (0..patients)
        .flat_map(|p| patient_events(p).into_iter().take(2))
        .collect();
    for outcome in engine
        .ingest_batch(&enrolments, Default::default())
        .await
        .expect("enrol")
    {
        assert!(matches!(outcome, Ok(IngestOutcome::Committed { .. })));
    }
    engine
}

/// The service on `engine` a year later, once its first round of due timers has fired
/// (polled: a round takes a few milliseconds).
async fn firing(
    engine: Engine<SqliteStore>,
    config: ServiceConfig,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> service::Handle {
    let handle = service::start(
        engine,
        InProcessBus::new(100_000),
        AYearLater,
        config,
        token.clone(),
        tracker,
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while handle
        .health()
        .timers_fired
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round of timers fired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    handle
}

/// A backlog of due timers (an engine started after days down) is fired one round at a
/// time: a submission made while it is being fired is committed before the backlog is
/// gone, and shutdown does not wait for the rest of it — which stays in the log, due,
/// for the next start, and is then fired whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_due_timers_holds_up_neither_intake_nor_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let engine = with_a_backlog(&store, 40).await;
    let backlog = due(&store).await;
    assert!(backlog > 200, "a backlog of {backlog} timers");

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = firing(engine, ServiceConfig::default(), &token, &tracker).await;
    // A new patient's discharge (its own timers are not counted).
    let late = patient_events(99).swap_remove(0);
    let out = handle.submit(vec![late]).await.expect("submitted");
    assert!(matches!(out[0], Ok(IngestOutcome::Committed { .. })));
    let left = due(&store).await;
    assert!(
        left > 0,
        "the submission waited for the whole backlog ({backlog} timers) to fire"
    );
    token.cancel();
    tracker.close();
    tracker.wait().await;
    let left = due(&store).await;
    assert!(left > 0, "shutdown waited for the whole backlog to fire");

    // The next start fires the rest: every timer once.
    let mut engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine again");
    engine.advance(AYearLater.now()).await.expect("the rest");
    assert_eq!(due(&store).await, 0);
    let (report, _) = replay::verify(&store, &registry()).await.expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// Due timers by partition (of two).
async fn due_by_partition<S: EventStore>(store: &S) -> [usize; 2] {
    let mut out = [0; 2];
    for (tenant, subject) in due_timers(store).await {
        out[usize::from(parcours_store::partition_of(&tenant, &subject, 2))] += 1;
    }
    out
}

/// A partition lost while a backlog of due timers is being fired stops firing at the
/// next round (its new owner fires it), not when the backlog is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_lost_during_a_backlog_of_timers_stops_firing_at_the_next_round() {
    use parcours_store::TimerScope;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let engine = with_a_backlog(&store, 60).await;
    let [_, before] = due_by_partition(&store).await;
    assert!(before > 100, "partition 1 has a backlog of {before} timers");

    let (scope_tx, scope_rx) = tokio::sync::watch::channel(TimerScope::Partitions {
        count: 2,
        owned: vec![0, 1],
    });
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let config = ServiceConfig {
        timer_scope: Some(scope_rx),
        ..ServiceConfig::default()
    };
    let _handle = firing(engine, config, &token, &tracker).await;
    scope_tx.send_replace(TimerScope::Partitions {
        count: 2,
        owned: vec![0],
    });
    let [_, at_change] = due_by_partition(&store).await;
    // Partition 0's backlog, fired to its end with the new scope.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let [left, _] = due_by_partition(&store).await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 0 still has {left} due timers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let [_, after] = due_by_partition(&store).await;
    // At most the round in progress when the scope changed (four timers).
    assert!(
        after + 4 >= at_change,
        "partition 1 kept firing after it was lost: {at_change} due then, {after} now"
    );
    token.cancel();
    tracker.close();
    tracker.wait().await;
}

/// A service on its engine, with the default configuration and an in-process bus.
struct Running {
    handle: service::Handle,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    fn start<S: EventStore + Clone + 'static>(engine: Engine<S>) -> Running {
        let (token, tracker) = (CancellationToken::new(), TaskTracker::new());
        let handle = service::start(
            engine,
            InProcessBus::new(1_000),
            Fixed,
            ServiceConfig::default(),
            token.clone(),
            &tracker,
        );
        Running {
            handle,
            token,
            tracker,
        }
    }

    /// Shut it down and wait for its tasks.
    async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Appends held at `gated`'s gate so far reach `n` (within 10 s).
async fn held(gated: &support::gated::Gated<SqliteStore>, n: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while gated.held() < n || gated.waiting() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "append {n} never reached the gate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A group whose commit races another writer, and whose retry races it again, is
/// answered "unavailable" (its submitters send again) without the store being called
/// failing: the store answered, `/readyz` stays ready and the NATS consumer still counts
/// the attempt. Sent again, the event commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_raced_twice_is_answered_unavailable_with_the_store_healthy() {
    use support::{discharge, hours, weight};
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let gated = support::gated::Gated::new(sqlite.clone());
    let mut other = Engine::open(sqlite.clone(), registry(), EngineConfig::default())
        .await
        .expect("the other writer");
    let mut engine = Engine::open(gated.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    engine
        .ingest(&discharge("d-1", "p-1", hours(0), "V-1"))
        .await
        .expect("discharge");
    let running = Running::start(engine);
    let handle = &running.handle;
    gated.close();
    let submitted = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .submit(vec![weight("w-1", "p-1", hours(24), 80.0)])
                .await
        }
    });
    // The group's commit waits at the gate; the other writer commits to the patient.
    held(&gated, 1).await;
    for (id, h) in [("o-1", 25), ("o-2", 26)] {
        let out = other.ingest(&weight(id, "p-1", hours(h), 80.5)).await;
        assert!(
            matches!(out, Ok(IngestOutcome::Committed { .. })),
            "{out:?}"
        );
        if id == "o-1" {
            // The raced commit goes; its retry, decided on the patient reloaded, waits
            // at the gate while the other writer commits again.
            gated.pass_one();
            held(&gated, 2).await;
        }
    }
    gated.open();
    let answered = submitted.await.expect("joined");
    assert!(
        matches!(answered, Err(service::SubmitError::Unavailable(_))),
        "{answered:?}"
    );
    assert!(
        !handle
            .health()
            .store_failing
            .load(std::sync::atomic::Ordering::Relaxed),
        "a race is not a failing store"
    );
    let again = handle
        .submit(vec![weight("w-1", "p-1", hours(24), 80.0)])
        .await
        .expect("sent again");
    assert!(
        matches!(again[0], Ok(IngestOutcome::Committed { .. })),
        "{again:?}"
    );
    running.stop().await;
}
