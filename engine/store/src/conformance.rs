//! The conformance suite every [`EventStore`] backend passes.
//!
//! Each check is a public async function; [`conformance_suite!`](crate::conformance_suite)
//! turns them into `#[tokio::test]`s for a backend, given an async constructor of a fresh,
//! empty store and a guard kept alive as long as the store (a temporary directory, a
//! database to drop):
//!
//! ```ignore
//! async fn fresh() -> (MyStore, TempDir) { ... }
//! parcours_store::conformance_suite!(fresh);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;

use crate::{Appended, Codec, Commit, EventStore, NewRecord, StoreError, StreamWrite};

/// Generate the suite's tests for a backend. `$make` is a function or closure returning a
/// future of `(store, guard)`: a fresh, empty store and what must live as long as it.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (store, _guard) = ($make)().await;
                        $crate::conformance::$name(std::sync::Arc::new(store)).await;
                    }
                };
            }

            case!(round_trip);
            case!(expected_version_is_enforced);
            case!(duplicate_is_acknowledged_not_stored);
            case!(commit_is_atomic);
            case!(read_all_is_ordered_and_paged);
            case!(read_stream_after_version);
            case!(concurrent_commits_are_all_read_once);
            case!(checkpoints);
        }
    };
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_772_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A record with a given id.
pub fn record(id: &str) -> NewRecord {
    NewRecord {
        id: id.to_string(),
        record_type: "task.requested".into(),
        type_version: 1,
        codec: Codec::Json,
        tenant: "cpts-test".into(),
        subject: "p-1".into(),
        occurred_at: at(0),
        cause: Some("inbound-1".into()),
        payload: br#"{"code":"gp-visit"}"#.to_vec(),
    }
}

fn write(stream: &str, expected: u64, ids: &[&str]) -> StreamWrite {
    StreamWrite {
        stream: stream.to_string(),
        expected_version: expected,
        records: ids.iter().map(|id| record(id)).collect(),
    }
}

fn commit(writes: Vec<StreamWrite>) -> Commit {
    Commit { writes }
}

/// What is written is read back, field for field, with versions and positions.
pub async fn round_trip<S: EventStore>(s: Arc<S>) {
    let mut r = record("e-1");
    r.codec = Codec::Bincode;
    r.payload = vec![0, 159, 146, 150, 255];
    r.occurred_at = Timestamp::from_millisecond(1_772_000_000_123).unwrap_or(Timestamp::UNIX_EPOCH);
    r.cause = None;
    let out = s
        .append(commit(vec![StreamWrite {
            stream: "i-1".into(),
            expected_version: 0,
            records: vec![r.clone(), record("e-2")],
        }]))
        .await
        .expect("append");
    let Appended::Committed { last_position } = out else {
        panic!("expected a commit, got {out:?}")
    };
    let got = s.read_stream("i-1", 0).await.expect("read");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].record, r);
    assert_eq!(got[0].version, 1);
    assert_eq!(got[1].version, 2);
    assert_eq!(got[1].position, last_position);
    assert!(got[0].position < got[1].position);
    assert!(s.contains("e-1").await.expect("contains"));
    assert!(!s.contains("e-3").await.expect("contains"));
}

/// A write that expects another version is refused and writes nothing.
pub async fn expected_version_is_enforced<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![write("i-1", 0, &["a"])]))
        .await
        .expect("first");
    let err = s
        .append(commit(vec![write("i-1", 0, &["b"])]))
        .await
        .expect_err("stale version");
    match err {
        StoreError::Conflict {
            stream,
            expected,
            actual,
        } => {
            assert_eq!((stream.as_str(), expected, actual), ("i-1", 0, 1));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(!s.contains("b").await.expect("contains"));
    s.append(commit(vec![write("i-1", 1, &["c"])]))
        .await
        .expect("right version");
    assert_eq!(s.read_stream("i-1", 0).await.expect("read").len(), 2);
}

/// A commit containing an id already stored is acknowledged as a duplicate; nothing of it
/// is stored (the same inbound event processed twice gives the same ids).
pub async fn duplicate_is_acknowledged_not_stored<S: EventStore>(s: Arc<S>) {
    let c = commit(vec![
        write("inbound/cpts-test", 0, &["in-1"]),
        write("i-1", 0, &["x-1", "x-2"]),
    ]);
    assert!(matches!(
        s.append(c.clone()).await.expect("first"),
        Appended::Committed { .. }
    ));
    // Replayed with the expected versions it had the first time.
    assert_eq!(s.append(c).await.expect("again"), Appended::Duplicate);
    assert_eq!(s.read_all(0, 100).await.expect("all").len(), 3);
}

/// A commit whose second write conflicts stores nothing of its first write.
pub async fn commit_is_atomic<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![write("i-2", 0, &["b-1"])]))
        .await
        .expect("setup");
    let err = s
        .append(commit(vec![
            write("i-1", 0, &["a-1"]),
            write("i-2", 0, &["b-2"]),
        ]))
        .await;
    assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
    assert!(s.read_stream("i-1", 0).await.expect("read").is_empty());
    assert!(!s.contains("a-1").await.expect("contains"));
}

/// Global reads come in position order and page cleanly.
pub async fn read_all_is_ordered_and_paged<S: EventStore>(s: Arc<S>) {
    for i in 0..5u64 {
        s.append(commit(vec![write(
            &format!("i-{}", i % 2),
            i / 2,
            &[&format!("r-{i}")],
        )]))
        .await
        .expect("append");
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.read_all(after, 2).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        for r in &page {
            assert!(r.position > after);
            after = r.position;
            seen.push(r.record.id.clone());
        }
    }
    assert_eq!(seen, ["r-0", "r-1", "r-2", "r-3", "r-4"]);
}

/// Reading a stream after a version returns only the newer records.
pub async fn read_stream_after_version<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![write("i-1", 0, &["a", "b", "c"])]))
        .await
        .expect("append");
    let tail = s.read_stream("i-1", 2).await.expect("read");
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].record.id, "c");
    assert!(s.read_stream("nobody", 0).await.expect("read").is_empty());
}

/// Many writers at once; a reader following the global position sees every record exactly
/// once, in increasing positions (no late commit skipped).
pub async fn concurrent_commits_are_all_read_once<S: EventStore + 'static>(s: Arc<S>) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut after = 0;
            let mut seen = Vec::new();
            // Bounded: the writers finish long before this many polls.
            for _ in 0..100_000 {
                let page = s.read_all(after, 64).await.expect("read");
                for r in &page {
                    assert!(r.position > after, "positions must increase");
                    after = r.position;
                    seen.push(r.record.id.clone());
                }
                if seen.len() == WRITERS * PER_WRITER {
                    return seen;
                }
                if page.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let id = format!("w{w}-{i}");
                s.append(commit(vec![write(
                    &format!("stream-{w}"),
                    i as u64,
                    &[&id],
                )]))
                .await
                .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let seen = reader.await.expect("reader");
    assert_eq!(seen.len(), WRITERS * PER_WRITER, "every record read");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record read twice");
}

/// Named checkpoints are saved and loaded.
pub async fn checkpoints<S: EventStore>(s: Arc<S>) {
    assert_eq!(s.checkpoint("outbox").await.expect("load"), None);
    s.save_checkpoint("outbox", 42).await.expect("save");
    s.save_checkpoint("outbox", 43).await.expect("save");
    s.save_checkpoint("projections", 7).await.expect("save");
    assert_eq!(s.checkpoint("outbox").await.expect("load"), Some(43));
    assert_eq!(s.checkpoint("projections").await.expect("load"), Some(7));
}
