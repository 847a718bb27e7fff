//! A log written by an older schema opens with the current one, its contents intact.

use parcours_store::{Appended, Commit, EventStore, StoreError, StreamWrite, TimerScope};
use parcours_store_sqlite::SqliteStore;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// Write a log as the schema of migrations 1–6 had it: a `streams` table holding each
/// stream's version, projections in rowid tables.
async fn old_layout(path: &std::path::Path) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("pool");
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(&pool).await.expect("old migrations");
    let rows = [
        "INSERT INTO records (stream, version, id, record_type, type_version, codec, tenant, \
         subject, occurred_at, recorded_at, cause, payload) VALUES \
         ('inbound/t/p-1', 1, 'ev-1', 'encounter.discharged', 1, 1, 't', 'p-1', \
          '2026-03-02T09:00:00Z', '2026-03-02T09:00:01Z', NULL, X'7B7D'), \
         ('i-1', 1, 'd-1', 'instance.decision', 1, 1, 't', 'p-1', \
          '2026-03-02T09:00:00Z', '2026-03-02T09:00:01Z', 'ev-1', X'7B7D'), \
         ('i-1', 2, 'd-2', 'instance.decision', 1, 1, 't', 'p-1', \
          '2026-03-02T10:00:00Z', '2026-03-02T10:00:01Z', 'ev-2', X'7B7D')",
        "INSERT INTO streams (stream, version) VALUES ('inbound/t/p-1', 1), ('i-1', 2)",
        "INSERT INTO instances (stream, tenant, subject, pathway_id, pathway_version, status, \
         closed_reason, states, cycle, enrolled_at, updated_at, version) VALUES \
         ('i-1', 't', 'p-1', 'heart-failure', 1, 'active', NULL, 'main=referred', 1, 10, 20, 2)",
        "INSERT INTO timers (id, stream, tenant, subject, fire_at, hash_hi, hash_lo) VALUES \
         ('t-1', 'i-1', 't', 'p-1', 1000, 1, 2)",
        "INSERT INTO work_items (id, kind, stream, tenant, subject, pathway_id, code, role, \
         title, status, priority, due_at, opened_at, opened_by) VALUES \
         ('w-1', 'task', 'i-1', 't', 'p-1', 'heart-failure', 'gp-visit', 'gp', 'GP visit', \
          'open', 'high', 2000, 0, 'd-1')",
    ];
    for sql in rows {
        sqlx::query(sql).execute(&pool).await.expect("old rows");
    }
    pool.close().await;
}

#[tokio::test]
async fn a_log_with_a_streams_table_and_rowid_projections_opens_intact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    old_layout(&path).await;
    let s = SqliteStore::open(&path).await.expect("open and migrate");
    // Stream versions now come from the records themselves.
    assert_eq!(s.stream_version("i-1").await.expect("version"), 2);
    assert_eq!(s.stream_version("inbound/t/p-1").await.expect("version"), 1);
    assert_eq!(s.stream_version("nobody").await.expect("version"), 0);
    assert_eq!(s.read_all(0, 10).await.expect("records").len(), 3);
    // The projections were carried over.
    let row = s.instance("i-1").await.expect("instance").expect("row");
    assert_eq!((row.states.as_str(), row.version), ("main=referred", 2));
    assert_eq!(s.instances_of("t", "p-1").await.expect("patient").len(), 1);
    assert_eq!(s.count_timers().await.expect("timers"), 1);
    assert_eq!(
        s.next_timer(&TimerScope::All)
            .await
            .expect("next")
            .map(|t| t.as_nanosecond()),
        Some(1000)
    );
    assert!(s.work_item("w-1").await.expect("work").is_some());
    // Expected versions are enforced against the old records.
    let write = |expected: u64, id: &str| Commit {
        writes: vec![StreamWrite {
            stream: "i-1".into(),
            expected_version: expected,
            records: vec![parcours_store::conformance::record(id)],
        }],
        ..Commit::default()
    };
    assert!(matches!(
        s.append(write(1, "d-x")).await,
        Err(StoreError::Conflict { actual: 2, .. })
    ));
    assert!(matches!(
        s.append(write(2, "d-3")).await.expect("append"),
        Appended::Committed { .. }
    ));
    assert_eq!(s.stream_version("i-1").await.expect("version"), 3);
    // An id the old log holds is still a duplicate.
    assert_eq!(
        s.append(write(3, "d-1")).await.expect("dup"),
        Appended::Duplicate
    );
}
