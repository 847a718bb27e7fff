//! The catch-up grace (`EngineConfig::timer_catch_up`) on a real SQLite log: a backlog's
//! backdated discharge schedules deadlines already due; they wait the grace after the
//! commit's `recorded_at`, so that the rest of the backlog arrives first. The clock is
//! virtual: `Engine::advance` is driven to instants read from the log's records.

mod support;

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::EventType;
use parcours_runtime::{Engine, EngineConfig, IngestOutcome, replay};
use parcours_store::{EventStore, WorkFilter, WorkStatus};
use parcours_store_sqlite::SqliteStore;
use support::{event, hours, registry, t0};

const GRACE: SignedDuration = SignedDuration::from_mins(10);

async fn open(db: &Path, catch_up: SignedDuration) -> Engine<SqliteStore> {
    let store = SqliteStore::open(db).await.expect("open");
    let config = EngineConfig {
        timer_catch_up: catch_up,
        ..EngineConfig::default()
    };
    Engine::open(store, registry(), config)
        .await
        .expect("engine")
}

/// A heart-failure discharge at [`t0`], months before the log's clock: every deadline
/// it schedules is already due when it is committed. Returns the instance.
async fn discharge(engine: &mut Engine<SqliteStore>) -> String {
    let adt = event(
        "adt-1",
        "p-1",
        t0(),
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    );
    let IngestOutcome::Committed { instances, .. } = engine.ingest(&adt).await.expect("ingest")
    else {
        panic!("the discharge is committed")
    };
    instances[0].clone()
}

/// When the instance's latest decision was recorded (the log's clock).
async fn last_recorded(engine: &Engine<SqliteStore>, instance: &str) -> Timestamp {
    let records = engine.store().read_stream(instance, 0).await.expect("read");
    records.last().expect("a decision").recorded_at
}

/// The `timer.fired` events in the log: their clinical times.
async fn fired(engine: &Engine<SqliteStore>) -> Vec<Timestamp> {
    let records = engine.store().read_all(0, 100_000).await.expect("read");
    records
        .iter()
        .filter(|r| r.record.record_type == "timer.fired")
        .map(|r| r.record.occurred_at)
        .collect()
}

/// The status of the instance's `code` work item.
async fn work_status(engine: &Engine<SqliteStore>, code: &str) -> Option<WorkStatus> {
    let items = engine
        .store()
        .work_items(&WorkFilter {
            tenant: support::TENANT.into(),
            statuses: WorkStatus::ALL.to_vec(),
            ..WorkFilter::default()
        })
        .await
        .expect("work items");
    items.iter().find(|w| w.code == code).map(|w| w.status)
}

async fn replay_agrees(engine: &Engine<SqliteStore>, catch_up: SignedDuration) {
    let (report, _) = replay::verify_with(engine.store(), engine.registry(), catch_up)
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

#[tokio::test]
async fn the_rest_of_the_backlog_arrives_within_the_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), GRACE).await;
    let instance = discharge(&mut engine).await;
    let recorded = last_recorded(&engine, &instance).await;
    assert!(hours(24 * 14) < recorded, "the discharge is backdated");
    // Its deadlines were all due when it was committed: none fires before the grace ends.
    assert_eq!(
        engine.next_timer().await.expect("next"),
        Some(recorded + GRACE)
    );
    assert_eq!(engine.advance(recorded).await.expect("advance"), 0);
    assert_eq!(
        engine
            .advance(recorded + GRACE - SignedDuration::from_nanos(1))
            .await
            .expect("advance"),
        0
    );
    replay_agrees(&engine, GRACE).await;
    // The backlog's consent comes within the grace: the consent task is done, never
    // overdue nor escalated.
    let consent = event(
        "consent-1",
        "p-1",
        hours(2),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    engine.ingest(&consent).await.expect("consent");
    let consented = last_recorded(&engine, &instance).await;
    assert_eq!(
        work_status(&engine, "obtain-consent").await,
        Some(WorkStatus::Completed)
    );
    // The deadlines the consent scheduled were due too: a grace from its commit.
    assert_eq!(
        engine.next_timer().await.expect("next"),
        Some(consented + GRACE)
    );
    assert_eq!(
        engine
            .advance(consented + GRACE - SignedDuration::from_nanos(1))
            .await
            .expect("advance"),
        0
    );
    assert!(fired(&engine).await.is_empty());
    replay_agrees(&engine, GRACE).await;
    // After it, the deadlines still open fire, at their due instants (clinical time).
    let n = engine.advance(consented + GRACE).await.expect("advance");
    assert!(n > 0, "the open deadlines fire after the grace");
    let times = fired(&engine).await;
    assert!(times.iter().all(|t| *t < recorded), "{times:?}");
    assert_eq!(
        work_status(&engine, "obtain-consent").await,
        Some(WorkStatus::Completed)
    );
    let row = engine
        .store()
        .instance(&instance)
        .await
        .expect("row")
        .expect("instance row");
    assert_eq!(row.status, "active", "no `no_consent` closing");
    replay_agrees(&engine, GRACE).await;
}

#[tokio::test]
async fn after_the_grace_the_open_deadline_fires_and_escalates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), GRACE).await;
    let instance = discharge(&mut engine).await;
    let recorded = last_recorded(&engine, &instance).await;
    assert_eq!(
        engine
            .advance(recorded + GRACE - SignedDuration::from_nanos(1))
            .await
            .expect("advance"),
        0
    );
    // No consent came: at the end of the grace the consent deadline fires, and what its
    // firing schedules, already due, follows at once (no grace for a firing's timers).
    let n = engine.advance(recorded + GRACE).await.expect("advance");
    assert!(n > 1, "fired: {n}");
    let times = fired(&engine).await;
    assert_eq!(times.first(), Some(&hours(24)), "its due instant: D+1");
    assert!(times.iter().all(|t| *t < recorded), "{times:?}");
    assert_eq!(
        work_status(&engine, "obtain-consent").await,
        Some(WorkStatus::Withdrawn),
        "escalated, then withdrawn when the 14-day wait closed the instance"
    );
    replay_agrees(&engine, GRACE).await;
    // Replayed without the grace, the rows differ only while one waits in its grace: none
    // here, the instance is closed.
    replay_agrees(&engine, SignedDuration::ZERO).await;
}

#[tokio::test]
async fn no_grace_fires_backdated_deadlines_when_due() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), SignedDuration::ZERO).await;
    let instance = discharge(&mut engine).await;
    let recorded = last_recorded(&engine, &instance).await;
    assert_eq!(engine.next_timer().await.expect("next"), Some(hours(24)));
    // Long before the commit, on the virtual clock: the old behaviour.
    let n = engine.advance(hours(24 * 2)).await.expect("advance");
    assert!(n > 0);
    assert!(hours(24 * 2) < recorded);
    replay_agrees(&engine, SignedDuration::ZERO).await;
}

#[tokio::test]
async fn a_rebuild_keeps_the_grace_of_pending_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), GRACE).await;
    let instance = discharge(&mut engine).await;
    let recorded = last_recorded(&engine, &instance).await;
    // What `Engine::open` does for a log of an older layout (and `replay --repair`): the
    // projections rebuilt from the records, the grace from the discharge's
    // `recorded_at`, never from the wall clock now.
    let store = engine.store();
    let replayed = replay::replay_with(store, engine.registry(), GRACE)
        .await
        .expect("replay");
    store.clear_index().await.expect("clear");
    assert_eq!(engine.next_timer().await.expect("next"), None);
    replay::repair(store, &replayed).await.expect("repair");
    assert_eq!(
        engine.next_timer().await.expect("next"),
        Some(recorded + GRACE)
    );
    replay_agrees(&engine, GRACE).await;
    // Replayed with another grace, the pending row differs (`parcours replay` says so).
    let (report, _) = replay::verify_with(store, engine.registry(), SignedDuration::ZERO)
        .await
        .expect("replay");
    assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
}
