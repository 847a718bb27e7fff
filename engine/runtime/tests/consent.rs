//! A consent given before the enrolment (PRADO's adviser meets the patient in hospital)
//! reaches the new instance in the enrolling event's commit, on both logs — whether it
//! was committed earlier (read back from the patient's inbound stream, also by an engine
//! that never saw it) or comes earlier in the same batch.

mod support;

use parcours_core::events::EventType;
use parcours_runtime::{Engine, EngineConfig};
use parcours_store::EventStore;
use parcours_store_postgres::PgStore;
use parcours_store_sqlite::SqliteStore;
use support::pg::TestDb;
use support::{TENANT, discharge, event, hours, registry};

fn consent(id: &str, subject: &str, h: i64) -> parcours_core::Event {
    event(
        id,
        subject,
        hours(h),
        EventType::ConsentGiven,
        serde_json::json!({"scope": "heart-failure"}),
    )
}

async fn main_state<S: EventStore>(store: &S, subject: &str) -> String {
    let rows = store.instances_of(TENANT, subject).await.expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0]
        .states
        .split(' ')
        .find_map(|s| s.strip_prefix("main="))
        .expect("the main track")
        .to_owned()
}

async fn a_consent_before_the_discharge_starts_the_plan<S>(store: S)
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    let open = || async {
        Engine::open(store.clone(), registry(), EngineConfig::default())
            .await
            .expect("engine")
    };
    // Committed first, then the discharge by an engine that never saw the consent.
    open()
        .await
        .ingest(&consent("c-1", "p-1", -30))
        .await
        .expect("consent");
    let mut engine = open().await;
    engine
        .ingest(&discharge("d-1", "p-1", hours(0), "V-1"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "p-1").await, "early_post_discharge");
    // Both in one batch.
    let out = engine
        .ingest_batch(
            &[
                consent("c-2", "p-2", -2),
                discharge("d-2", "p-2", hours(0), "V-2"),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(main_state(&store, "p-2").await, "early_post_discharge");
    // Without one: the coordinator is asked to obtain it.
    engine
        .ingest(&discharge("d-3", "p-3", hours(0), "V-3"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "p-3").await, "awaiting_consent");
    // The consent's decision is caused by the consent, in the instance's stream.
    let stream = &store.instances_of(TENANT, "p-1").await.expect("rows")[0].stream;
    let causes: Vec<Option<String>> = store
        .read_stream(stream, 0)
        .await
        .expect("stream")
        .into_iter()
        .map(|r| r.record.cause)
        .collect();
    assert_eq!(
        causes,
        vec![Some("d-1".to_owned()), Some("c-1".to_owned())],
        "the enrolment's decision, then the consent's"
    );
}

#[tokio::test]
async fn a_consent_before_the_discharge_starts_the_plan_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    a_consent_before_the_discharge_starts_the_plan(store).await;
}

#[tokio::test]
async fn a_consent_before_the_discharge_starts_the_plan_on_postgresql() {
    let (db, url) = TestDb::create("consent_before").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    a_consent_before_the_discharge_starts_the_plan(pg.clone()).await;
    pg.close().await;
    db.drop_now().await;
}
