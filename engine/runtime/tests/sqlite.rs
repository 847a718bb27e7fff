//! The runtime on a real SQLite log: commit, timers, relay, restart, replay.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::state::Change;
use parcours_runtime::{Engine, InProcessBus, IngestOutcome, PathwayRegistry};
use parcours_store::EventStore;
use parcours_store_sqlite::SqliteStore;

fn registry() -> PathwayRegistry {
    let mut r = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways")
            .join(f);
        let loaded = parcours_lang::load_file(&path).expect("readable");
        r.add(loaded.pathway.expect("compiles"));
    }
    r
}

fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("timestamp")
}

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

#[tokio::test]
async fn commit_fire_relay_restart_and_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let bus = InProcessBus::new(10_000);
    let mut rx = bus.subscribe();

    let (first_ids, instance_id) = {
        let store = SqliteStore::open(&db).await.expect("open");
        let mut engine = Engine::open(store, registry()).await.expect("engine");
        assert!(matches!(
            engine.ingest(&discharge()).await.expect("ingest"),
            IngestOutcome::Committed { .. }
        ));
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
        // Ten days on: reminders, due times and escalations fire as timer events.
        let fired = engine
            .advance(t0() + SignedDuration::from_hours(240))
            .await
            .expect("advance");
        assert!(fired > 5, "timers fired: {fired}");
        let published = engine.relay(&bus).await.expect("relay");
        assert!(published > 10, "effects published: {published}");
        assert_eq!(
            engine.relay(&bus).await.expect("relay again"),
            0,
            "checkpoint moved"
        );
        assert_eq!(engine.verify_replay().await.expect("replay"), 1);
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.id)
            .collect();
        assert_eq!(ids.len(), published);
        let instance = engine.patient_instances("cpts-test", "p-1")[0].to_string();
        (ids, instance)
    };

    // Restart: states rebuilt from the log, equal to replay, timers still pending.
    let store = SqliteStore::open(&db).await.expect("reopen");
    let mut engine = Engine::open(store, registry()).await.expect("engine");
    let (_, state) = engine.instance(&instance_id).expect("instance rebuilt");
    assert!(state.is_active());
    assert!(
        engine.next_timer().is_some(),
        "pending timers survive the restart"
    );
    assert_eq!(engine.verify_replay().await.expect("replay"), 1);

    // Re-relaying from the start publishes the very same effect ids.
    engine
        .store()
        .save_checkpoint("relay", 0)
        .await
        .expect("reset");
    let bus2 = InProcessBus::new(10_000);
    let mut rx2 = bus2.subscribe();
    engine.relay(&bus2).await.expect("relay");
    let again: Vec<String> = std::iter::from_fn(|| rx2.try_recv().ok())
        .map(|e| e.id)
        .collect();
    assert_eq!(again, first_ids, "effect ids never change");

    // And the GP visit task is among them, with its cause and rule ("why").
    let records = engine.store().read_all(0, 10_000).await.expect("read");
    let task = records
        .iter()
        .filter_map(|r| parcours_runtime::codec::decode_instance(r).ok())
        .find(|r| matches!(&r.change, Change::TaskRequested { code, .. } if &**code == "gp-visit"))
        .expect("gp-visit requested");
    assert_eq!(&*task.cause, "consent-1");
    assert_eq!(task.rule.as_deref(), Some("early_post_discharge/on_enter"));
}

#[tokio::test]
async fn an_event_no_pathway_wants_is_still_logged_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    let mut engine = Engine::open(store, registry()).await.expect("engine");
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
            effects: 0
        }
    );
    assert!(engine.store().contains("lab-1").await.expect("contains"));
    assert_eq!(
        engine.ingest(&lab).await.expect("again"),
        IngestOutcome::Duplicate
    );
}
