//! The event-log conformance suite on SQLite (a fresh file per test).

use parcours_store::{Appended, EventStore};
use parcours_store_sqlite::SqliteStore;

async fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    (store, dir)
}

parcours_store::conformance_suite!(fresh);

#[tokio::test]
async fn the_log_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.db");
    {
        let s = SqliteStore::open(&path).await.expect("open");
        let c = parcours_store::Commit {
            writes: vec![parcours_store::StreamWrite {
                stream: "i-1".into(),
                expected_version: 0,
                records: vec![parcours_store::conformance::record("kept")],
            }],
            ..parcours_store::Commit::default()
        };
        assert!(matches!(
            s.append(c).await.expect("append"),
            Appended::Committed { .. }
        ));
        s.close().await;
    }
    let s = SqliteStore::open(&path).await.expect("reopen");
    let got = s.read_stream("i-1", 0).await.expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.id, "kept");
}

#[tokio::test]
async fn an_in_memory_log_is_refused() {
    let err = SqliteStore::open_url("sqlite::memory:")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("lose every event"), "{err}");
}
