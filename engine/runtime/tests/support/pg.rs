//! A private PostgreSQL database for a test.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection as _;

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
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "parcours_t_{now}_{}_{}_{}_{label}",
            std::process::id(),
            env!("CARGO_CRATE_NAME"),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
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
