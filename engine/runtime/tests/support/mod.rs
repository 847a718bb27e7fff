//! What the runtime's integration tests share: the shipped pathways and the start of
//! their clinical time.
#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_runtime::PathwayRegistry;
use sqlx::Connection as _;

/// The tenant of [`event`].
pub const TENANT: &str = "cpts-test";

/// The shipped heart-failure and type 2 diabetes pathways.
pub fn registry() -> PathwayRegistry {
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

/// A private PostgreSQL database (`PARCOURS_TEST_PG`, default the local server),
/// dropped at the end (`drop_now`); `label` names it apart from other tests'.
pub struct TestDb {
    admin: String,
    name: String,
}

impl TestDb {
    pub async fn create(label: &str) -> (TestDb, String) {
        let admin = std::env::var("PARCOURS_TEST_PG")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into());
        #[allow(clippy::disallowed_methods)] // named by creation time, like the store's tests
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("parcours_t_{now}_{}_{label}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable (PARCOURS_TEST_PG)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        (TestDb { admin, name }, url)
    }

    pub async fn drop_now(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}
