//! The runtime on a real SQLite log: commit, timers, relay, restart, replay.

mod support;

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::state::Change;
use parcours_runtime::{
    Engine, EngineConfig, InProcessBus, IngestOutcome, PathwayRegistry, Refused, Relay, relay,
    replay,
};
use parcours_store::EventStore;
use parcours_store::{WorkFilter, WorkKind, WorkStatus};
use parcours_store_sqlite::SqliteStore;
use support::{registry, t0};

fn event(id: &str, at: Timestamp, ty: EventType, data: serde_json::Value) -> Event {
    Event {
        id: id.into(),
        tenant: "cpts-test".into(),
        source: "test".into(),
        subject: "p-1".into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("payload"),
    }
}

fn discharge() -> Event {
    event(
        "adt-1",
        t0(),
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    )
}

fn drain(rx: &mut tokio::sync::mpsc::Receiver<parcours_runtime::Effect>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| e.id)
        .collect()
}

async fn open(db: &Path, config: EngineConfig) -> Engine<SqliteStore> {
    let store = SqliteStore::open(db).await.expect("open");
    Engine::open(store, registry(), config)
        .await
        .expect("engine")
}

#[tokio::test]
async fn commit_fire_relay_restart_and_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();

    let (first_ids, instance_id) = {
        let mut engine = open(&db, EngineConfig::default()).await;
        let IngestOutcome::Committed { instances, .. } =
            engine.ingest(&discharge()).await.expect("ingest")
        else {
            panic!("the discharge is committed")
        };
        assert_eq!(instances.len(), 1, "it enrols in heart failure only");
        // The same message again: acknowledged, nothing stored twice.
        assert_eq!(
            engine.ingest(&discharge()).await.expect("again"),
            IngestOutcome::Duplicate
        );
        let consent = event(
            "consent-1",
            t0() + SignedDuration::from_hours(2),
            EventType::ConsentGiven,
            serde_json::json!({}),
        );
        engine.ingest(&consent).await.expect("consent");
        // The GP visit is on the GP's worklist, from the projection committed with it.
        let gp = engine
            .store()
            .work_items(&WorkFilter {
                tenant: "cpts-test".into(),
                role: Some("gp".into()),
                kind: Some(WorkKind::Task),
                ..WorkFilter::default()
            })
            .await
            .expect("worklist");
        assert!(
            gp.iter()
                .any(|w| w.code == "gp-visit" && w.status == WorkStatus::Open),
            "{gp:?}"
        );
        // Ten days on: reminders, due times and escalations fire as timer events.
        let fired = engine
            .advance(t0() + SignedDuration::from_hours(240))
            .await
            .expect("advance");
        assert!(fired > 5, "timers fired: {fired}");
        assert_eq!(
            engine
                .advance(t0() + SignedDuration::from_hours(240))
                .await
                .expect("advance again"),
            0,
            "a timer fires once"
        );
        let relay = Relay::new(engine.store().clone(), "relay");
        let published = relay.run_once(&bus).await.expect("relay");
        assert!(published > 10, "effects published: {published}");
        assert_eq!(
            relay.run_once(&bus).await.expect("again"),
            0,
            "checkpoint moved"
        );
        let ids = drain(&mut rx);
        assert_eq!(ids.len(), published);
        let (report, _) = replay::verify(engine.store(), engine.registry())
            .await
            .expect("replay");
        assert!(report.agrees(), "{:?}", report.mismatches);
        assert_eq!(report.instances, 1);
        let instance = instances[0].clone();
        let (_, live) = engine.cached_instance(&instance).expect("cached");
        let stored = parcours_runtime::load_instance(
            engine.store(),
            engine.registry(),
            &instance,
            "heart-failure",
            1,
        )
        .await
        .expect("load");
        assert_eq!(*live, stored.state, "live state equals snapshot + tail");
        (ids, instance)
    };

    // Restart: nothing loaded up front; the instance comes back from the log, its timers
    // are still pending, and replay agrees with the store.
    let engine = open(&db, EngineConfig::default()).await;
    assert_eq!(engine.cached_patients(), 0);
    assert!(
        engine.next_timer().await.expect("next").is_some(),
        "pending timers survive the restart"
    );
    let row = engine
        .store()
        .instance(&instance_id)
        .await
        .expect("row")
        .expect("instance row");
    assert_eq!(row.status, "active");
    assert!(row.states.contains("main="), "{}", row.states);
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);

    // Re-relaying from the start publishes the very same effect ids.
    engine
        .store()
        .save_checkpoint("relay", 0)
        .await
        .expect("reset");
    let bus2 = InProcessBus::new(10_000);
    let mut rx2 = bus2.subscribe();
    Relay::new(engine.store().clone(), "relay")
        .run_once(&bus2)
        .await
        .expect("relay");
    assert_eq!(drain(&mut rx2), first_ids, "effect ids never change");

    // And the GP visit task is among them, with its cause and rule ("why").
    let records = engine.store().read_all(0, 10_000).await.expect("read");
    let task = records
        .iter()
        .filter_map(|r| parcours_runtime::codec::decode_instance(r).ok())
        .flatten()
        .find(|r| matches!(&r.change, Change::TaskRequested { code, .. } if &**code == "gp-visit"))
        .expect("gp-visit requested");
    assert_eq!(&*task.cause, "consent-1");
    assert_eq!(task.rule.as_deref(), Some("early_post_discharge/on_enter"));
}

/// A commit tells the engine the earliest timer it scheduled among those the engine fires
/// — what the store's next timer then is, without asking the store — once; a timer
/// outside the engine's partitions is not its to fire.
/// What a pathway deliberately did not act on is told to the sender with the commit,
/// naming the parameter and why, never the value: an unknown parameter, a value of the
/// wrong type, parameters for a patient no instance follows.
#[tokio::test]
async fn ignored_input_is_told_with_the_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let h = SignedDuration::from_hours;
    let update = |id: &str, values: serde_json::Value| {
        event(
            id,
            t0() + h(3),
            EventType::ParametersUpdated,
            serde_json::json!({ "values": values }),
        )
    };
    let warnings = |outcome: IngestOutcome| match outcome {
        IngestOutcome::Committed { warnings, .. } => warnings,
        other => panic!("not committed: {other:?}"),
    };
    // Nobody enrolled yet.
    let lonely = engine
        .ingest(&update("u-0", serde_json::json!({"weight_gain_kg": 3.0})))
        .await
        .expect("ingest");
    assert_eq!(
        warnings(lonely),
        ["no active instance of this patient takes parameters: nothing was changed"]
    );
    engine.ingest(&discharge()).await.expect("discharge");
    let out = engine
        .ingest(&update(
            "u-1",
            serde_json::json!({
                "weight_gain_kg": "DUPONT Jean",
                "wieght_gain_kg": 3.0,
                "weight_gain_window": "3d",
            }),
        ))
        .await
        .expect("ingest");
    let w = warnings(out);
    assert_eq!(
        w,
        [
            "heart-failure: parameter `weight_gain_kg`: expected a number value, got a string",
            "heart-failure: unknown parameter `wieght_gain_kg`",
        ],
        "the window was set; the others said why"
    );
    assert!(!w.concat().contains("DUPONT"));
    // Nothing ignored: no warning.
    let fine = engine
        .ingest(&update("u-2", serde_json::json!({"weight_gain_kg": 2.5})))
        .await
        .expect("ingest");
    assert_eq!(warnings(fine), Vec::<String>::new());
}

/// The worklist's items of kind `kind` and code `code`, open and closed.
async fn items(engine: &Engine<SqliteStore>, kind: WorkKind) -> Vec<parcours_store::WorkItem> {
    engine
        .store()
        .work_items(&WorkFilter {
            tenant: "cpts-test".into(),
            kind: Some(kind),
            statuses: WorkStatus::ALL.to_vec(),
            ..WorkFilter::default()
        })
        .await
        .expect("work items")
}

#[tokio::test]
async fn closed_work_items_say_how_and_when_they_closed_live_and_in_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let h = SignedDuration::from_hours;
    engine.ingest(&discharge()).await.expect("discharge");
    let consent = event(
        "consent-1",
        t0() + h(2),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    engine.ingest(&consent).await.expect("consent");
    let gp = items(&engine, WorkKind::Task)
        .await
        .into_iter()
        .find(|w| w.code == "gp-visit")
        .expect("a GP visit");
    let done = event(
        "done-1",
        t0() + h(30),
        EventType::TaskCompleted,
        serde_json::json!({"task_id": gp.id, "code": "gp-visit"}),
    );
    engine.ingest(&done).await.expect("completed");
    // Two weights 3 kg apart: the weight-gain alert, acknowledged.
    for (n, kg) in [(1, 80.0), (2, 83.0)] {
        let weight = event(
            &format!("w-{n}"),
            t0() + h(40 + n),
            EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        );
        engine.ingest(&weight).await.expect("weight");
    }
    let alert = items(&engine, WorkKind::Alert)
        .await
        .into_iter()
        .find(|w| w.code == "weight-gain")
        .expect("a weight-gain alert");
    assert_eq!(alert.status, WorkStatus::Open);
    let ack = event(
        "ack-1",
        t0() + h(43),
        EventType::AlertAcknowledged,
        serde_json::json!({"alert_id": alert.id, "code": "weight-gain"}),
    );
    engine.ingest(&ack).await.expect("acknowledged");
    let open_before: Vec<String> = items(&engine, WorkKind::Task)
        .await
        .into_iter()
        .filter(|w| w.status.is_open())
        .map(|w| w.id)
        .collect();
    assert!(!open_before.is_empty(), "tasks still open");
    // The patient dies: what is still open is withdrawn.
    let died = event(
        "died-1",
        t0() + h(50),
        EventType::PatientDeceased,
        serde_json::json!({}),
    );
    engine.ingest(&died).await.expect("deceased");

    // How, and when in clinical time: the events' own times, not the log's.
    let status_of = |all: &[parcours_store::WorkItem], id: &str| {
        all.iter()
            .find(|w| w.id == id)
            .map(|w| (w.status, w.closed_at))
    };
    let tasks = items(&engine, WorkKind::Task).await;
    assert_eq!(
        status_of(&tasks, &gp.id),
        Some((WorkStatus::Completed, Some(t0() + h(30))))
    );
    for id in &open_before {
        assert_eq!(
            status_of(&tasks, id),
            Some((WorkStatus::Withdrawn, Some(t0() + h(50)))),
            "{id}"
        );
    }
    let alerts = items(&engine, WorkKind::Alert).await;
    assert_eq!(
        status_of(&alerts, &alert.id),
        Some((WorkStatus::Acknowledged, Some(t0() + h(43))))
    );
    // Nothing open is left on the worklists.
    let open = engine
        .store()
        .work_items(&WorkFilter {
            tenant: "cpts-test".into(),
            ..WorkFilter::default()
        })
        .await
        .expect("open");
    assert!(open.is_empty(), "{open:?}");
    // Replay rebuilds the same rows, closed ones included.
    let (report, replayed) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
    assert_eq!(report.work_items, tasks.len() + alerts.len());
    assert_eq!(
        replayed
            .projections
            .work
            .get(&gp.id)
            .map(|w| (w.status, w.closed_at)),
        Some((WorkStatus::Completed, Some(t0() + h(30))))
    );
}

#[tokio::test]
async fn a_commit_tells_the_earliest_timer_it_scheduled_in_scope() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    assert_eq!(engine.take_scheduled_timer(), None, "nothing committed");
    engine.ingest(&discharge()).await.expect("discharge");
    let next = engine
        .next_timer()
        .await
        .expect("next")
        .expect("timers scheduled");
    assert_eq!(engine.take_scheduled_timer(), Some(next));
    assert_eq!(engine.take_scheduled_timer(), None, "told once");

    // Another patient's discharge, in a partition the engine does not own.
    let count = 16;
    let owned = parcours_store::partition_of("cpts-test", "p-1", count);
    let other = (2..1000)
        .map(|n| format!("p-{n}"))
        .find(|s| parcours_store::partition_of("cpts-test", s, count) != owned)
        .expect("a patient of another partition");
    engine.set_timer_scope(parcours_store::TimerScope::Partitions {
        count,
        owned: vec![owned],
    });
    let mut theirs = discharge();
    theirs.id = "adt-2".into();
    theirs.subject = other.clone();
    engine.ingest(&theirs).await.expect("discharge");
    assert_eq!(
        engine.take_scheduled_timer(),
        None,
        "not this engine's timers"
    );
    let all = engine
        .store()
        .due_timers(Timestamp::MAX, 1000, &parcours_store::TimerScope::All)
        .await
        .expect("timers");
    assert!(
        all.iter().any(|t| t.subject == other),
        "scheduled all the same"
    );
}

#[tokio::test]
async fn an_event_no_pathway_wants_is_still_logged_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let lab = event(
        "lab-1",
        t0(),
        EventType::ObservationRecorded,
        serde_json::json!({"code": "2823-3", "value": 4.1, "unit": "mmol/L"}),
    );
    assert_eq!(
        engine.ingest(&lab).await.expect("ingest"),
        IngestOutcome::Committed {
            events: 0,
            effects: 0,
            instances: vec![],
            warnings: vec![],
        }
    );
    assert!(engine.store().contains("lab-1").await.expect("contains"));
    assert_eq!(
        engine.ingest(&lab).await.expect("again"),
        IngestOutcome::Duplicate
    );
}

/// Patient `p-{i}`'s discharge, consent and weight (an hour, then three after the
/// discharge, itself `i` minutes after `t0`).
fn story(i: i64) -> [Event; 3] {
    let subject = format!("p-{i}");
    let at = t0() + SignedDuration::from_mins(i);
    let mut d = discharge();
    d.id = format!("adt-{i}");
    d.subject = subject.clone();
    d.occurred_at = at;
    let mut c = event(
        &format!("consent-{i}"),
        at + SignedDuration::from_hours(1),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    c.subject = subject.clone();
    let mut w = event(
        &format!("weight-{i}"),
        at + SignedDuration::from_hours(3),
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": 80.0, "unit": "kg"}),
    );
    w.subject = subject;
    [d, c, w]
}

/// Both logs replay to the same `n` instance states and the same projections; the first
/// one's replay.
async fn same_replays(
    a: &Engine<SqliteStore>,
    b: &Engine<SqliteStore>,
    n: usize,
) -> replay::Replayed {
    let x = replay::replay(a.store(), a.registry())
        .await
        .expect("replay");
    let y = replay::replay(b.store(), b.registry())
        .await
        .expect("replay");
    assert_eq!(x.states.len(), n);
    assert_eq!(x.projections, y.projections, "same projections");
    for (id, (_, state)) in &x.states {
        assert_eq!(Some(state), y.states.get(id).map(|(_, s)| s), "{id}");
    }
    x
}

/// Many patients in one batch, duplicates inside the batch and against the log, a small
/// cache that evicts, frequent snapshots: the outcome equals event-by-event processing.
#[tokio::test]
async fn batches_equal_one_by_one_with_eviction_and_snapshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events: Vec<Event> = (0..40).flat_map(story).collect();

    let small = EngineConfig {
        cache_patients: 5,
        snapshot_every: 2,
        ..EngineConfig::default()
    };
    let mut batched = open(&dir.path().join("batched.db"), small.clone()).await;
    let mut with_dups = events.clone();
    with_dups.push(events[0].clone()); // a duplicate inside the batch
    let out = batched
        .ingest_batch(&with_dups, Default::default())
        .await
        .expect("batch");
    assert_eq!(out.len(), with_dups.len());
    assert_eq!(out.last(), Some(&Ok(IngestOutcome::Duplicate)));
    assert!(batched.cached_patients() <= 5, "the cache is bounded");
    // The same events again in a second batch: all duplicates.
    let again = batched
        .ingest_batch(&events, Default::default())
        .await
        .expect("again");
    assert!(again.iter().all(|o| o == &Ok(IngestOutcome::Duplicate)));
    batched
        .advance(t0() + SignedDuration::from_hours(24 * 12))
        .await
        .expect("advance");

    let mut single = open(&dir.path().join("single.db"), EngineConfig::default()).await;
    for e in &events {
        single.ingest(e).await.expect("ingest");
    }
    single
        .advance(t0() + SignedDuration::from_hours(24 * 12))
        .await
        .expect("advance");

    let a = same_replays(&batched, &single, 40).await;
    // Pages of any size (pages are read, decoded and folded in a pipeline) give the same.
    for page in [1, 2, 7] {
        let p = replay::replay_paged(
            batched.store(),
            batched.registry(),
            jiff::SignedDuration::ZERO,
            page,
        )
        .await
        .expect("replay");
        assert_eq!((p.records, p.inbound), (a.records, a.inbound), "{page}");
        assert_eq!(p.projections, a.projections, "{page}");
        assert_eq!(p.stream_versions, a.stream_versions, "{page}");
        assert_eq!(p.states.len(), a.states.len());
        for (id, (_, state)) in &p.states {
            assert_eq!(Some(state), a.states.get(id).map(|(_, s)| s), "{id} {page}");
        }
    }
    let (report, _) = replay::verify(batched.store(), batched.registry())
        .await
        .expect("verify");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// A fresh engine (nothing cached) given one batch for many patients the log already
/// knows, and some it does not, reads them together (their instances, their inbound
/// streams' versions) and decides as an engine that had them in memory all along.
#[tokio::test]
async fn a_cold_engine_reads_a_batchs_known_patients_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Patients 0..12 are discharged first; then one batch brings the consent and
    // weight of each, and the whole story of patients 12..16 (new to the log).
    let first: Vec<Event> = (0..12).map(|i| story(i)[0].clone()).collect();
    let then: Vec<Event> = (0..12)
        .flat_map(|i| story(i)[1..].to_vec())
        .chain((12..16).flat_map(story))
        .collect();

    let cold_db = dir.path().join("cold.db");
    {
        let mut e = open(&cold_db, EngineConfig::default()).await;
        e.ingest_batch(&first, Default::default())
            .await
            .expect("first");
    }
    let mut cold = open(&cold_db, EngineConfig::default()).await;
    assert_eq!(cold.cached_patients(), 0);
    let out = cold
        .ingest_batch(&then, Default::default())
        .await
        .expect("a batch read together");
    assert!(
        out.iter()
            .all(|o| matches!(o, Ok(IngestOutcome::Committed { .. }))),
        "{out:?}"
    );
    assert_eq!(cold.stats().loads, 16, "each patient read once");

    let mut warm = open(&dir.path().join("warm.db"), EngineConfig::default()).await;
    for e in first.iter().chain(&then) {
        warm.ingest(e).await.expect("ingest");
    }
    same_replays(&cold, &warm, 16).await;
    let (report, _) = replay::verify(cold.store(), cold.registry())
        .await
        .expect("verify");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// Cleared projections are found by `verify` and rebuilt by `repair`; a log copied
/// without them (written before they existed) gets them rebuilt when the engine opens.
#[tokio::test]
async fn lost_projections_are_found_and_rebuilt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    engine.ingest(&discharge()).await.expect("ingest");
    let timers = engine.store().count_timers().await.expect("count");
    assert!(timers > 0);
    engine.store().clear_index().await.expect("clear");
    let (report, replayed) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("verify");
    assert!(!report.agrees(), "cleared projections are noticed");
    replay::repair(engine.store(), &replayed)
        .await
        .expect("repair");
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("verify");
    assert!(report.agrees(), "{:?}", report.mismatches);
    assert_eq!(engine.store().count_timers().await.expect("count"), timers);

    // The bare records, copied into a new log with no projections and no mark.
    let bare = SqliteStore::open(&dir.path().join("bare.db"))
        .await
        .expect("open");
    copy_records(engine.store(), &bare).await;
    let reopened = Engine::open(bare, registry(), EngineConfig::default())
        .await
        .expect("engine");
    assert_eq!(
        reopened.store().count_timers().await.expect("count"),
        timers,
        "rebuilt on open"
    );
    let (report, _) = replay::verify(reopened.store(), reopened.registry())
        .await
        .expect("verify");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// The records of `from`, copied one by one into `to` (a log without projections).
async fn copy_records(from: &SqliteStore, to: &SqliteStore) {
    for r in from.read_all(0, 10_000).await.expect("records") {
        to.append(parcours_store::Commit {
            writes: vec![parcours_store::StreamWrite {
                stream: r.stream.clone(),
                expected_version: r.version - 1,
                records: vec![r.record.clone()],
            }],
            ..Default::default()
        })
        .await
        .expect("copy");
    }
}

/// A log of the previous layout — a timer row for every pending timer, marked
/// `projections-v2` — gets one row per instance (its earliest timer) when the engine
/// opens; then every timer fires once, in order, a year later.
#[tokio::test]
async fn a_log_with_a_row_per_timer_gets_one_per_instance_when_opened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = {
        let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
        engine.ingest(&discharge()).await.expect("ingest");
        engine
    };
    let (_, state) = engine.cached_instances_iter().next().expect("one instance");
    let rows: Vec<parcours_store::TimerChange> = state
        .timers
        .iter()
        .map(|(id, t)| {
            parcours_store::TimerChange::Schedule(parcours_store::TimerRow {
                id: id.to_string(),
                stream: state.instance_id.to_string(),
                tenant: state.tenant.to_string(),
                subject: state.subject.to_string(),
                fire_at: t.fire_at,
                not_before: None,
            })
        })
        .collect();
    let pending = rows.len() as u64;
    assert!(pending > 1, "a discharge schedules {pending} timers");
    // The same records in a log holding the old layout's rows and mark.
    let old = SqliteStore::open(&dir.path().join("old.db"))
        .await
        .expect("open");
    copy_records(engine.store(), &old).await;
    old.write_index(parcours_store::IndexChanges {
        timers: rows,
        ..Default::default()
    })
    .await
    .expect("the old layout");
    old.save_checkpoint("projections-v2", 1)
        .await
        .expect("mark");
    assert_eq!(old.count_timers().await.expect("count"), pending);

    let mut engine = Engine::open(old, registry(), EngineConfig::default())
        .await
        .expect("engine");
    assert_eq!(engine.store().count_timers().await.expect("count"), 1);
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("verify");
    assert!(report.agrees(), "{:?}", report.mismatches);
    let fired = engine
        .advance(t0() + SignedDuration::from_hours(24 * 365))
        .await
        .expect("a year later");
    assert_eq!(fired as u64, pending, "every timer fired once");
    assert_eq!(engine.store().count_timers().await.expect("count"), 0);
}

/// Durable timers on a virtual clock, in clinical time: a day after an instant before
/// the spring clock change is the same wall-clock hour in Paris (23 h later in UTC), and
/// five working days skip the weekend and Easter Monday. Each fires once, at its instant,
/// after a restart.
#[tokio::test]
async fn timers_follow_paris_civil_time_and_french_holidays() {
    let text = r#"
pathway: calendar-check
version: 1
title: Calendar check
enrolment:
  on: encounter.discharged
tasks:
  letter:
    role: gp
    title: Discharge letter review
    due: 5wd
    from: cycle_start
tracks:
  main:
    initial: waiting
    states:
      waiting:
        on_enter:
          - task: letter
        transitions:
          - after: 1d
            goto: next_day
      next_day:
        transitions:
          - on: task.completed
            task: letter
            goto: done
      done:
        terminal: true
"#;
    let (p, _) = parcours_lang::compile_source("calendar-check.yaml", text)
        .unwrap_or_else(|r| panic!("compiles:\n{}", r.short()));
    let mut reg = PathwayRegistry::new();
    reg.add(p);
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    // Saturday 28 March 2026, 10:00 in Paris (UTC+1); the clocks go forward that night.
    // Easter Monday is 6 April 2026.
    let discharged: Timestamp = "2026-03-28T09:00:00Z".parse().expect("ts");
    {
        let store = SqliteStore::open(&db).await.expect("open");
        let mut engine = Engine::open(store, reg.clone(), EngineConfig::default())
            .await
            .expect("engine");
        let mut d = discharge();
        d.occurred_at = discharged;
        engine.ingest(&d).await.expect("ingest");
        // Another patient, discharged on Tuesday 31 March at 10:00 (UTC+2): the fifth
        // working day skips Easter Monday.
        let mut d2 = discharge();
        d2.id = "adt-2".into();
        d2.subject = "p-2".into();
        d2.occurred_at = "2026-03-31T08:00:00Z".parse().expect("ts");
        engine.ingest(&d2).await.expect("ingest");
    }
    // Restart, then move the virtual clock step by step.
    let store = SqliteStore::open(&db).await.expect("reopen");
    let mut engine = Engine::open(store, reg, EngineConfig::default())
        .await
        .expect("engine");
    let rows = |subject: &'static str| {
        let store = engine.store().clone();
        async move {
            store
                .due_timers(Timestamp::MAX, 100, &parcours_store::TimerScope::All)
                .await
                .expect("timers")
                .into_iter()
                .filter(|t| t.subject == subject)
                .map(|t| t.fire_at)
                .collect::<Vec<_>>()
        }
    };
    let due = pending_timers(&engine, "p-1").await;
    // Sunday 29 March, 10:00 Paris summer time (UTC+2) = 08:00 UTC: 23 h after.
    let next_day: Timestamp = "2026-03-29T08:00:00Z".parse().expect("ts");
    // Five working days from Saturday: Mon 30, Tue 31, Wed 1, Thu 2, Fri 3 April, 10:00
    // Paris (UTC+2).
    let letter_due: Timestamp = "2026-04-03T08:00:00Z".parse().expect("ts");
    assert_eq!(due, [next_day, letter_due], "the two deadlines, in UTC");
    // The store keeps one timer row per instance: its earliest.
    assert_eq!(rows("p-1").await, [next_day]);
    let second = pending_timers(&engine, "p-2").await;
    assert_eq!(rows("p-2").await, second[..1]);
    // Wed 1, Thu 2, Fri 3, (Easter Monday 6 skipped), Tue 7, Wed 8 April, 10:00 Paris.
    let after_easter: Timestamp = "2026-04-08T08:00:00Z".parse().expect("ts");
    assert!(second.contains(&after_easter), "{second:?}");

    assert_eq!(
        engine
            .advance(next_day - SignedDuration::from_secs(1))
            .await
            .expect("advance"),
        0,
        "nothing before its time"
    );
    assert_eq!(engine.advance(next_day).await.expect("advance"), 1);
    let row = engine
        .store()
        .list_instances(&parcours_store::InstanceFilter {
            tenant: "cpts-test".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let first = row.iter().find(|r| r.subject == "p-1").expect("p-1");
    assert_eq!(first.states, "main=next_day");
    // p-1's letter is due, and p-2's next day (1 April) came before it.
    assert_eq!(engine.advance(letter_due).await.expect("advance"), 2);
    let gp = engine
        .store()
        .work_items(&WorkFilter {
            tenant: "cpts-test".into(),
            ..WorkFilter::default()
        })
        .await
        .expect("worklist");
    let letter = gp
        .iter()
        .find(|w| w.subject == "p-1")
        .expect("p-1's letter");
    assert_eq!(letter.due_at, Some(letter_due));
    assert_eq!(letter.status, WorkStatus::Overdue, "past its due time");
    assert_eq!(
        engine.advance(letter_due).await.expect("again"),
        0,
        "each timer fires once"
    );
}

/// What a cached instance can share with its pathway (default parameters, no alerts, task
/// codes and roles) it shares, whether it was decided live, folded from its stream or
/// read from a snapshot, and the three agree.
#[tokio::test]
async fn cached_instances_share_their_pathways_defaults_however_built() {
    fn shares(pathway: &parcours_core::CompiledPathway, s: &parcours_core::InstanceState) {
        use std::sync::Arc;
        assert!(Arc::ptr_eq(&s.params, pathway.default_params()), "params");
        assert!(Arc::ptr_eq(&s.alerts, pathway.no_items()), "alerts");
        assert!(Arc::ptr_eq(&s.handoffs, pathway.no_items()), "handoffs");
        let id = pathway.name(&pathway.id).expect("the pathway's id");
        assert!(Arc::ptr_eq(&s.pathway_id, id), "pathway id");
        assert!(!s.tasks.is_empty(), "a discharge opens tasks");
        for t in s.tasks.values() {
            let code = pathway.name(&t.code).expect("a task of the pathway");
            assert!(Arc::ptr_eq(&t.code, code), "task code {}", t.code);
            let role = pathway.name(&t.role).expect("a role of the pathway");
            assert!(Arc::ptr_eq(&t.role, role), "task role {}", t.role);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let weigh = |id: &str, hours: i64| {
        event(
            id,
            t0() + SignedDuration::from_hours(hours),
            EventType::ObservationRecorded,
            serde_json::json!({"code": "29463-7", "value": 80.0, "unit": "kg"}),
        )
    };
    let consent = event(
        "consent",
        t0() + SignedDuration::from_hours(1),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    let events = vec![discharge(), consent, weigh("w-1", 2), weigh("w-2", 3)];
    let mut states = Vec::new();
    for snapshot_every in [2, 1_000] {
        let db = dir.path().join(format!("every-{snapshot_every}.db"));
        let config = EngineConfig {
            snapshot_every,
            ..EngineConfig::default()
        };
        let mut engine = open(&db, config.clone()).await;
        for e in &events {
            engine.ingest(e).await.expect("ingest");
        }
        let live: Vec<_> = engine
            .cached_instances_iter()
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        assert_eq!(live.len(), 1);
        shares(&live[0].0, &live[0].1);
        // Read back from the log (a snapshot and its tail, or the whole stream).
        drop(engine);
        let mut engine = open(&db, config).await;
        engine.ingest(&weigh("w-3", 4)).await.expect("reload");
        let (pathway, loaded) = engine.cached_instances_iter().next().expect("cached");
        shares(pathway, loaded);
        states.push(loaded.clone());
    }
    assert_eq!(states[0], states[1], "from a snapshot as from the stream");
}

/// A relay reads its saved checkpoint once, not every round; after `resume` (the service
/// calls it while another process holds the relay's lease) it reads it again, so what the
/// other relay published meanwhile is not published a second time.
#[tokio::test]
async fn a_relay_resuming_starts_where_another_relay_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();
    engine.ingest(&discharge()).await.expect("ingest");
    let here = Relay::new(engine.store().clone(), "relay");
    let first = here.run_once(&bus).await.expect("relay");
    assert!(first > 0, "the discharge's tasks");
    assert_eq!(drain(&mut rx).len(), first);

    // Another process relays the next effects and saves its checkpoint.
    engine
        .advance(t0() + SignedDuration::from_hours(240))
        .await
        .expect("advance");
    let other_bus = InProcessBus::new(10_000);
    let mut other_rx = other_bus.subscribe();
    let other = Relay::new(engine.store().clone(), "relay");
    let moved = other.run_once(&other_bus).await.expect("other relay");
    other.flush().await.expect("save");
    assert!(moved > 0, "timer effects");
    assert_eq!(drain(&mut other_rx).len(), moved);

    here.resume();
    assert_eq!(here.run_once(&bus).await.expect("resumed"), 0);
    assert!(drain(&mut rx).is_empty(), "nothing published twice");
}

/// A cached state's tenant and subject are its patient's cache key (one copy of each
/// patient's key, one of each tenant's name), whether decided here or loaded from the log.
#[tokio::test]
async fn cached_instances_share_their_patients_key() {
    use std::sync::Arc;
    fn check(engine: &Engine<SqliteStore>) {
        let states: Vec<_> = engine.cached_instances_iter().map(|(_, s)| s).collect();
        assert_eq!(states.len(), 2);
        assert!(
            Arc::ptr_eq(&states[0].tenant, &states[1].tenant),
            "one tenant name"
        );
        for s in states {
            // The cache's key and the state: no other copy.
            assert_eq!(Arc::strong_count(&s.subject), 2, "subject {}", s.subject);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let of = |e: Event, subject: &str, id: &str| Event {
        id: id.into(),
        subject: subject.into(),
        ..e
    };
    let mut engine = open(&db, EngineConfig::default()).await;
    for (subject, id) in [("p-1", "adt-1"), ("p-2", "adt-2")] {
        engine
            .ingest(&of(discharge(), subject, id))
            .await
            .expect("discharge");
    }
    check(&engine);
    // Enrolled here (pushed onto an empty vector): no room kept beyond the instances.
    assert_eq!(engine.cached_instance_room(), engine.cached_instances());
    drop(engine);
    let mut engine = open(&db, EngineConfig::default()).await;
    let weigh = event(
        "w",
        t0() + SignedDuration::from_hours(2),
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": 80.0, "unit": "kg"}),
    );
    for (subject, id) in [("p-1", "w-1"), ("p-2", "w-2")] {
        engine
            .ingest(&of(weigh.clone(), subject, id))
            .await
            .expect("reload");
    }
    check(&engine);
}

/// The effects the log holds, in log order.
async fn logged_effects(store: &SqliteStore) -> Vec<parcours_runtime::Effect> {
    let mut logged = Vec::new();
    for r in store.read_all(0, 1000).await.expect("read") {
        logged.extend(relay::effects_of(&r).expect("decode"));
    }
    logged
}

/// The effects of a commit handed to the relay in memory are those the log holds, at the
/// same positions; published from memory at once, they are not published again when the
/// relay reads the log, whose checkpoint still moves past them.
#[tokio::test]
async fn handed_effects_are_the_logs_published_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let (handoffs, mut queue) = relay::handoffs(16);
    engine.hand_effects_to(handoffs).await.expect("hand over");
    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();
    let relay = Relay::new(engine.store().clone(), "relay");

    engine.ingest(&discharge()).await.expect("discharge");
    let h = queue
        .try_recv()
        .expect("the commit's effects were handed over");
    assert!(queue.try_recv().is_none(), "one commit, one handoff");
    let logged = logged_effects(engine.store()).await;
    assert!(!logged.is_empty(), "the discharge's tasks");
    assert_eq!(
        h.effects, logged,
        "same effects, ids and positions as the log's"
    );
    assert_eq!(
        h.last,
        engine.store().last_position().await.expect("end"),
        "the commit ends the log"
    );

    let n = relay.take(&bus, h, &queue).await.expect("publish");
    assert_eq!(n, logged.len());
    let ids: Vec<String> = logged.iter().map(|e| e.id.clone()).collect();
    assert_eq!(drain(&mut rx), ids);
    assert_eq!(relay.run_once(&bus).await.expect("log pass"), 0);
    assert!(drain(&mut rx).is_empty(), "nothing published twice");
    relay.flush().await.expect("save");
    assert_eq!(
        engine
            .store()
            .checkpoint("relay")
            .await
            .expect("checkpoint"),
        Some(engine.store().last_position().await.expect("end"))
    );
}

/// A patient written by another engine (a process that owned it before) is loaded with
/// the log's end as the floor of this engine's next handoffs: their effects wait until
/// the relay has published the other engine's from the log, so the patient's effects
/// reach the bus in order.
#[tokio::test]
async fn a_handoff_waits_for_what_another_engine_wrote_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let mut here = open(&db, EngineConfig::default()).await;
    let (handoffs, mut queue) = relay::handoffs(16);
    here.hand_effects_to(handoffs).await.expect("hand over");
    // Another engine (no hand-over) takes the discharge.
    let mut other = open(&db, EngineConfig::default()).await;
    other
        .ingest(&discharge())
        .await
        .expect("discharge elsewhere");
    let theirs = other.store().last_position().await.expect("end");

    // This one fires the patient's due timers: it loads the patient from the log.
    here.advance(t0() + SignedDuration::from_hours(240))
        .await
        .expect("advance");
    let h = queue.try_recv().expect("handed over");
    assert!(h.floor >= theirs, "floor {} below {theirs}", h.floor);
    assert!(!h.effects.is_empty(), "reminders and escalations");
    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();
    let relay = Relay::new(here.store().clone(), "relay");
    assert_eq!(relay.take(&bus, h, &queue).await.expect("take"), 0);
    assert!(relay.holds_handoffs(), "held until the log is relayed");
    assert!(drain(&mut rx).is_empty());

    let from_log = relay.run_once(&bus).await.expect("log pass");
    let after = relay
        .publish_handed(&bus, &queue)
        .await
        .expect("then the handoff");
    assert!(!relay.holds_handoffs());
    // The log's reading got to the handed commit too: it published it, once.
    let got: Vec<parcours_runtime::Effect> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let logged = logged_effects(here.store()).await;
    assert_eq!((from_log, after), (logged.len(), 0));
    assert!(logged.iter().any(|e| e.position <= theirs));
    assert_eq!(got, logged, "each once, in log order");
    assert_eq!(relay.run_once(&bus).await.expect("again"), 0);
}

/// Commits whose effects did not fit the queue are left to the log, and so is every
/// handoff after them until the log has been relayed past them: each effect is published
/// once, in log order.
#[tokio::test]
async fn effects_that_did_not_fit_the_queue_come_from_the_log_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let (handoffs, mut queue) = relay::handoffs(1);
    engine.hand_effects_to(handoffs).await.expect("hand over");
    engine.ingest(&discharge()).await.expect("discharge");
    engine
        .advance(t0() + SignedDuration::from_hours(240))
        .await
        .expect("advance: a second commit, which does not fit");
    let h = queue.try_recv().expect("the first commit");
    assert!(queue.try_recv().is_none());

    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();
    let relay = Relay::new(engine.store().clone(), "relay");
    assert_eq!(relay.take(&bus, h, &queue).await.expect("take"), 0, "held");
    let n = relay.run_once(&bus).await.expect("log pass")
        + relay.publish_handed(&bus, &queue).await.expect("handed");
    let got: Vec<parcours_runtime::Effect> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let logged = logged_effects(engine.store()).await;
    assert_eq!(got.len(), n);
    assert_eq!(got, logged, "every effect once, in log order");
}

/// The instants of the pending timers of `subject`'s instances, in order, from their
/// states rebuilt from the log (the store's timer table keeps each instance's earliest).
async fn pending_timers(engine: &Engine<SqliteStore>, subject: &str) -> Vec<Timestamp> {
    let replayed = replay::replay(engine.store(), engine.registry())
        .await
        .expect("replay");
    let mut v: Vec<Timestamp> = replayed
        .states
        .values()
        .filter(|(_, s)| &*s.subject == subject)
        .flat_map(|(_, s)| s.timers.values().map(|t| t.fire_at))
        .collect();
    v.sort();
    v
}

/// An engine opened before another process published a new version of a pathway (a
/// rolling update of the pathway files, several engines on one log) runs the instances
/// pinned to that version: it compiles the version from the log when it meets one of
/// them, and enrols new patients in it from then on. Without a compiler such an
/// instance fails with `MissingVersion`, which is what every engine did before.
#[tokio::test]
async fn a_version_another_engine_published_runs_here_too() {
    use parcours_runtime::publish::{self, Compiler, Published};
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let v2 = support::heart_failure_as(2);
    let compiler = Compiler::new(|p: &Published| {
        parcours_lang::compile_source(&p.file, &p.text)
            .map(|(compiled, _)| compiled)
            .map_err(|report| report.short())
    });
    // Two engines started with version 1 only, one of them able to compile what it
    // finds in the log.
    let mut started_before = open(
        &db,
        EngineConfig {
            compile_published: Some(compiler.clone()),
            ..EngineConfig::default()
        },
    )
    .await;
    let readers = started_before.share_registry();
    let mut without_compiler = open(&db, EngineConfig::default()).await;
    // It has looked at the log's versions already (its first batch does), so it next
    // looks when it meets an instance of a version it lacks.
    let mut unrelated = event(
        "consent-0",
        t0(),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    unrelated.subject = "p-0".into();
    started_before.ingest(&unrelated).await.expect("logged");
    // Then another engine starts with version 2: it publishes it and enrols a patient.
    let store = SqliteStore::open(&db).await.expect("open");
    publish::publish(&store, "heart-failure", 2, "heart-failure.yaml", &v2, t0())
        .await
        .expect("published");
    let mut newer = registry();
    newer.add(
        compiler
            .compile(&publish::published(&store).await.expect("read")[0])
            .expect("v2"),
    );
    let mut upgraded = Engine::open(store, newer, EngineConfig::default())
        .await
        .expect("engine");
    upgraded.ingest(&discharge()).await.expect("enrolled");
    let v2 = [("heart-failure".to_string(), 2)];
    assert_eq!(pinned_versions(upgraded.store(), "p-1").await, v2);

    // The patient's next event reaches an engine started before.
    let consent = event(
        "consent-1",
        t0() + SignedDuration::from_hours(1),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    let refused = without_compiler.ingest(&consent).await;
    assert!(
        matches!(
            refused,
            Err(parcours_runtime::RuntimeError::MissingVersion { version: 2, .. })
        ),
        "{refused:?}"
    );
    match started_before.ingest(&consent).await.expect("decided") {
        IngestOutcome::Committed { instances, .. } => assert_eq!(instances.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(started_before.registry().get("heart-failure", 2).is_some());
    assert!(
        readers.current().get("heart-failure", 2).is_some(),
        "its readers (the HTTP API) see the version too"
    );
    // A new patient on that engine enrols in the version now highest.
    let mut second = discharge();
    second.id = "adt-2".into();
    second.subject = "p-2".into();
    started_before.ingest(&second).await.expect("enrolled");
    assert_eq!(pinned_versions(started_before.store(), "p-2").await, v2);
}

/// The pathway and version each instance of a `cpts-test` patient is pinned to.
async fn pinned_versions(store: &SqliteStore, subject: &str) -> Vec<(String, u32)> {
    store
        .instances_of("cpts-test", subject)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| (r.pathway_id, r.pathway_version))
        .collect()
}

/// With `EngineConfig::tenants`, an event of a tenant not served is refused (its front
/// keeps it as a dead letter) and nothing of it is logged; the served tenant's events
/// commit. A tenant taken off the list keeps its running instances' deadlines: their
/// `timer.fired` events are the engine's own.
#[tokio::test]
async fn events_of_a_tenant_not_served_are_refused_and_its_timers_still_fire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    // Before the list: a patient of `cpts-old` enrols.
    let old = Event {
        id: "adt-old".into(),
        tenant: "cpts-old".into(),
        ..discharge()
    };
    let mut engine = open(&db, EngineConfig::default()).await;
    let out = engine
        .ingest_batch(&[old], Default::default())
        .await
        .expect("ingest");
    assert!(
        matches!(&out[0], Ok(IngestOutcome::Committed { instances, .. }) if !instances.is_empty())
    );
    drop(engine);

    let served = ["cpts-test".to_string()].into_iter().collect();
    let mut engine = open(
        &db,
        EngineConfig {
            tenants: Some(served),
            ..EngineConfig::default()
        },
    )
    .await;
    let typo = Event {
        id: "adt-typo".into(),
        tenant: "cpts_test".into(),
        ..discharge()
    };
    let late = Event {
        id: "adt-old-2".into(),
        tenant: "cpts-old".into(),
        subject: "p-2".into(),
        ..discharge()
    };
    let out = engine
        .ingest_batch(&[discharge(), typo, late], Default::default())
        .await
        .expect("ingest");
    assert!(
        matches!(&out[0], Ok(IngestOutcome::Committed { instances, .. }) if !instances.is_empty()),
        "{out:?}"
    );
    for refused in &out[1..] {
        match refused {
            Err(Refused::Invalid(why)) => assert!(
                why.contains("is not served here") && why.contains("cpts-test"),
                "{why}"
            ),
            other => panic!("refused expected: {other:?}"),
        }
    }
    let ids = engine
        .store()
        .stored_ids(&["adt-typo".to_string(), "adt-old-2".to_string()])
        .await
        .expect("ids");
    assert!(
        ids.is_empty(),
        "nothing of the refused events is logged: {ids:?}"
    );

    // The old tenant's deadlines still fire.
    engine
        .advance(t0() + SignedDuration::from_hours(24 * 3))
        .await
        .expect("advance");
    let log = engine.store().read_all(0, 10_000).await.expect("log");
    let fired = |tenant: &str| {
        log.iter()
            .filter(|r| r.record.tenant == tenant && r.record.id.starts_with("timer-fired:"))
            .count()
    };
    assert!(fired("cpts-old") > 0, "the old tenant's timers fired");
    assert!(fired("cpts-test") > 0);
}
