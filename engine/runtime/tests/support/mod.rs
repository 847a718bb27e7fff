//! What the runtime's integration tests share: the shipped pathways and the start of
//! their clinical time; a store whose commits wait at a gate (`gated`); a private
//! PostgreSQL database (`pg`).
#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

pub mod gated;
pub mod pg;

/// The two tests of one scenario `async fn scenario<S: EventStore …>(store: S)`: on a
/// SQLite log in a temporary directory, and on a PostgreSQL database of its own (named
/// by `label`, dropped at the end). `on_both_logs!(scenario: on_sqlite, on_postgresql,
/// "label");`
#[allow(unused_macros)] // each test binary uses its own part
macro_rules! on_both_logs {
    ($scenario:ident: $sqlite:ident, $postgres:ident, $label:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = parcours_store_sqlite::SqliteStore::open(&dir.path().join("log.db"))
                .await
                .expect("open");
            $scenario(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let (db, url) = support::pg::TestDb::create($label).await;
            let pg = parcours_store_postgres::PgStore::connect(&url)
                .await
                .expect("connect");
            $scenario(pg.clone()).await;
            pg.close().await;
            db.drop_now().await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_logs;

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_runtime::PathwayRegistry;

/// The tenant of [`event`].
pub const TENANT: &str = "cpts-test";

/// The shipped heart-failure and type 2 diabetes pathways, heart failure as version 1
/// (these tests publish its next versions themselves).
pub fn registry() -> PathwayRegistry {
    let mut r = PathwayRegistry::new();
    let (hf, _) = parcours_lang::compile_source("heart-failure.yaml", &heart_failure_as(1))
        .expect("compiles");
    r.add(hf);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/type2-diabetes.yaml");
    let loaded = parcours_lang::load_file(&path).expect("readable");
    r.add(loaded.pathway.expect("compiles"));
    r
}

/// The shipped heart-failure pathway's text as version `version`, whatever version the
/// file states.
pub fn heart_failure_as(version: u32) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/heart-failure.yaml");
    let text = std::fs::read_to_string(path).expect("the shipped pathway");
    let stated = text
        .lines()
        .find(|l| l.starts_with("version: "))
        .expect("the shipped file states its version");
    text.replacen(
        &format!("\n{stated}\n"),
        &format!("\nversion: {version}\n"),
        1,
    )
}

/// Monday 2 March 2026, 09:00 UTC.
pub fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("timestamp")
}

/// [`t0`] + `h` hours.
pub fn hours(h: i64) -> Timestamp {
    t0() + SignedDuration::from_hours(h)
}

/// An event of [`TENANT`] for `subject`, at `at`.
pub fn event(
    id: &str,
    subject: &str,
    at: Timestamp,
    ty: EventType,
    data: serde_json::Value,
) -> Event {
    Event {
        id: id.into(),
        tenant: TENANT.into(),
        source: "test".into(),
        subject: subject.into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("payload"),
    }
}

/// A heart-failure discharge (visit `visit`).
pub fn discharge(id: &str, subject: &str, at: Timestamp, visit: &str) -> Event {
    event(
        id,
        subject,
        at,
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": visit, "destination": "home", "diagnoses": ["I50.1"]}),
    )
}

/// A body weight, in kg.
pub fn weight(id: &str, subject: &str, at: Timestamp, kg: f64) -> Event {
    event(
        id,
        subject,
        at,
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
    )
}

/// `identity.linked`: `local` linked to `national` (the event's subject).
pub fn linked(id: &str, national: &str, local: &str, at: Timestamp) -> Event {
    event(
        id,
        national,
        at,
        EventType::IdentityLinked,
        serde_json::json!({"local_subject": local}),
    )
}

/// `identity.merged`: `retired` merged into `survivor` (the event's subject).
pub fn merged(id: &str, survivor: &str, retired: &str, at: Timestamp) -> Event {
    event(
        id,
        survivor,
        at,
        EventType::IdentityMerged,
        serde_json::json!({"merged_subject": retired}),
    )
}
