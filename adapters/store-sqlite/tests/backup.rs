//! `backup`: a consistent, checked copy of a log taken while commits go on; it never
//! overwrites a file and never creates a log where there is none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parcours_store::conformance::record;
use parcours_store::{Appended, Commit, EventStore, StreamWrite};
use parcours_store_sqlite::{SqliteStore, backup};

/// Commit one record to stream `stream` at `version` (its id `stream/version`).
async fn commit(s: &SqliteStore, stream: &str, version: u64) {
    let c = Commit {
        writes: vec![StreamWrite {
            stream: stream.into(),
            expected_version: version - 1,
            records: vec![record(&format!("{stream}/{version}"))],
        }],
        ..Commit::default()
    };
    assert!(matches!(
        s.append(c).await.expect("append"),
        Appended::Committed { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_commits_go_on_is_a_checked_prefix_of_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.db");
    let s = SqliteStore::open(&path).await.expect("open");
    for v in 1..=200 {
        commit(&s, "i-before", v).await;
    }
    // A writer keeps committing while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                commit(&s, "i-during", v).await;
            }
            v
        })
    };
    let dest = dir.path().join("backup.db");
    let (source, to) = (path.clone(), dest.clone());
    let report = tokio::task::spawn_blocking(move || backup(&source, &to))
        .await
        .expect("join")
        .expect("backup");
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.expect("writer");
    assert!(during > 0, "commits went on beside the backup");

    // The copy opens as a log and holds every record committed before it began, and
    // then a prefix of the source's records: the same records at the same positions.
    let copy = SqliteStore::open(&dest).await.expect("open the copy");
    let copied = copy.read_all(0, 1_000_000).await.expect("read the copy");
    let all = s.read_all(0, 1_000_000).await.expect("read the log");
    assert_eq!(report.records, copied.len() as u64);
    assert!(copied.len() >= 200, "{} records", copied.len());
    assert_eq!(copied[..], all[..copied.len()]);
    assert_eq!(
        report.last_position,
        copied.last().map(|r| r.position as i64)
    );
    assert_eq!(
        report
            .last_recorded_at
            .map(|at| at.parse::<jiff::Timestamp>().expect("an instant")),
        copied.last().map(|r| r.recorded_at)
    );
    assert_eq!(
        report.bytes,
        std::fs::metadata(&dest).expect("copy's size").len()
    );
    assert!(!dir.path().join("backup.db.partial").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).expect("copy").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
}

#[tokio::test]
async fn a_backup_never_overwrites_and_never_makes_a_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.db");
    let s = SqliteStore::open(&path).await.expect("open");
    commit(&s, "i-1", 1).await;

    // An existing file under the backup's name is left as it is.
    let taken = dir.path().join("taken.db");
    std::fs::write(&taken, b"an earlier backup").expect("write");
    let e = backup(&path, &taken).expect_err("dest exists").to_string();
    assert!(e.contains("exists"), "{e}");
    assert_eq!(std::fs::read(&taken).expect("read"), b"an earlier backup");

    // No log there: no file made on either side.
    let missing = dir.path().join("missing.db");
    let e = backup(&missing, &dir.path().join("b1.db"))
        .expect_err("no log")
        .to_string();
    assert!(e.contains("no log at"), "{e}");
    assert!(!missing.exists() && !dir.path().join("b1.db").exists());

    // A SQLite file that is not a parcours log.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
        .expect("other database");
    let e = backup(&other, &dir.path().join("b2.db"))
        .expect_err("not a log")
        .to_string();
    assert!(e.contains("not a parcours log"), "{e}");
    assert!(!dir.path().join("b2.db").exists());

    // A `.partial` left by an interrupted backup is replaced, and a backup of a log
    // with one record says so.
    let dest = dir.path().join("b3.db");
    std::fs::write(dir.path().join("b3.db.partial"), b"interrupted").expect("write");
    let report = backup(&path, &dest).expect("backup");
    assert_eq!(report.records, 1);
    assert!(!dir.path().join("b3.db.partial").exists());
}
