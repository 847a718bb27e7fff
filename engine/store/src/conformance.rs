//! The conformance suite every [`EventStore`] backend passes.
//!
//! Each check is a public async function; [`conformance_suite!`](crate::conformance_suite)
//! turns them into `#[tokio::test]`s for a backend, given an async constructor of a fresh,
//! empty store and a guard kept alive as long as the store (a temporary directory, a
//! database to drop):
//!
//! ```text
//! async fn fresh() -> (MyStore, TempDir) { ... }
//! parcours_store::conformance_suite!(fresh);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use crate::{
    Appended, Codec, Commit, DeadLetter, DeadLetterFilter, EventStore, Guard, IndexChanges,
    InstanceFilter, InstanceRow, NewRecord, PatientKey, PatientKeys, Rewrapped, Snapshot,
    StoreError, StoredId, StoredRecord, StreamWrite, TimerChange, TimerRow, TimerScope, WorkChange,
    WorkFilter, WorkItem, WorkKind, WorkStatus,
};
use TimerScope::All;

pub use crate::audit::checks::{
    audit_entries_are_kept_per_tenant_in_order, audit_purge_removes_only_old_entries,
};

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
            case!(a_commit_holds_consecutive_positions_in_its_order);
            case!(expected_version_is_enforced);
            case!(writes_to_one_stream_in_a_commit_follow_each_other);
            case!(duplicate_is_acknowledged_not_stored);
            case!(commit_is_atomic);
            case!(read_all_is_ordered_and_paged);
            case!(scan_all_sees_what_read_all_reads);
            case!(read_stream_after_version);
            case!(streams_are_read_by_prefix);
            case!(heads_and_records_at_positions_are_read_alls);
            case!(concurrent_commits_are_all_read_once);
            case!(checkpoints);
            case!(stored_ids_and_stream_versions);
            case!(latest_subjects_are_each_streams_last_records);
            case!(index_changes_commit_with_the_records);
            case!(a_refused_commit_changes_no_index);
            case!(timers_are_found_by_due_time);
            case!(timers_are_scoped_by_partition);
            case!(timers_already_due_when_committed_wait_their_catch_up_grace);
            case!(work_items_are_filtered_by_tenant_role_and_status);
            case!(closed_work_items_keep_their_row_and_how_they_closed);
            case!(work_items_are_paged_by_cursor);
            case!(instances_are_listed_per_patient_and_pathway);
            case!(rewritten_rows_replace_the_old_ones_whole);
            case!(snapshots_keep_the_latest);
            case!(audit_entries_are_kept_per_tenant_in_order);
            case!(audit_purge_removes_only_old_entries);
            case!(index_can_be_cleared_and_rebuilt);
            case!(dead_letters_are_kept_with_their_reason);
            case!(dead_letters_are_listed_newest_first_by_tenant_and_source);
            case!(instants_keep_their_nanoseconds);
            case!(racing_duplicates_are_acknowledged_once);
            case!(racing_writers_of_one_stream_conflict);
            case!(guards_refuse_a_commit_when_a_stream_moved);
            case!(racing_guarded_commits_conflict);
            case!(patient_keys_are_kept_once_and_erased);
            case!(patient_keys_are_read_and_kept_many_at_once);
            case!(patient_keys_are_wrapped_again_while_still_as_read);
            case!(erased_dead_letters_are_deleted);
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

/// Every record committed before the call, in position order. `read_all` is a tail: on
/// PostgreSQL a page may stop short, for the one statement, below a transaction of any
/// database that ended while the page was read (the read bound), and the next read
/// brings the rest. Reads on, briefly, until the last committed position is reached.
async fn committed<S: EventStore>(s: &S) -> Vec<StoredRecord> {
    let end = s.last_position().await.expect("last position");
    let mut out: Vec<StoredRecord> = Vec::new();
    for _ in 0..1000 {
        let after = out.last().map_or(0, |r| r.position);
        if after >= end {
            break;
        }
        let page = s.read_all(after, 1000).await.expect("read all");
        if page.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        out.extend(page);
    }
    out
}

fn commit(writes: Vec<StreamWrite>) -> Commit {
    Commit {
        writes,
        ..Commit::default()
    }
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

/// A commit's records hold consecutive positions ending at the one `append` returns, in
/// the commit's order (writes, then each write's records); `last_position` is the log's
/// end. The relay relies on this to know which positions a commit it was handed holds.
pub async fn a_commit_holds_consecutive_positions_in_its_order<S: EventStore>(s: Arc<S>) {
    assert_eq!(s.last_position().await.expect("empty log"), 0);
    s.append(commit(vec![write("i-0", 0, &["z"])]))
        .await
        .expect("first");
    let out = s
        .append(commit(vec![
            write("i-2", 0, &["c", "d"]),
            write("i-1", 0, &["a"]),
            write("i-3", 0, &["e", "f", "g"]),
        ]))
        .await
        .expect("append");
    let Appended::Committed { last_position } = out else {
        panic!("expected a commit, got {out:?}")
    };
    assert_eq!(s.last_position().await.expect("last"), last_position);
    let all = committed(&*s).await;
    let ids: Vec<&str> = all[1..].iter().map(|r| r.record.id.as_str()).collect();
    assert_eq!(ids, ["c", "d", "a", "e", "f", "g"]);
    for (i, r) in all[1..].iter().enumerate() {
        assert_eq!(r.position, last_position - 5 + i as u64, "{}", r.record.id);
    }
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

/// Several writes to one stream in a commit follow each other: each expects the
/// version the one before left. When they do not, the first that does not is reported,
/// against the version the stream would have reached, and nothing is stored.
pub async fn writes_to_one_stream_in_a_commit_follow_each_other<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![
        write("i-1", 0, &["a"]),
        write("i-1", 1, &["b"]),
    ]))
    .await
    .expect("writes that follow each other");
    let ids = |records: Vec<StoredRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.record.id).collect()
    };
    assert_eq!(
        ids(s.read_stream("i-1", 0).await.expect("read")),
        ["a", "b"]
    );
    for (writes, reported) in [
        // The stream is where the first write expects it, the second is stale.
        (
            vec![write("i-1", 2, &["c"]), write("i-1", 2, &["d"])],
            ("i-1", 2, 3),
        ),
        // The first write is stale: it is the one reported.
        (
            vec![write("i-1", 5, &["c"]), write("i-1", 6, &["d"])],
            ("i-1", 5, 2),
        ),
        // A stream written to, then another, then the first again.
        (
            vec![
                write("i-1", 2, &["c"]),
                write("i-2", 0, &["x"]),
                write("i-1", 4, &["d"]),
            ],
            ("i-1", 4, 3),
        ),
    ] {
        match s.append(commit(writes)).await {
            Err(StoreError::Conflict {
                stream,
                expected,
                actual,
            }) => assert_eq!((stream.as_str(), expected, actual), reported),
            other => panic!("expected a conflict {reported:?}, got {other:?}"),
        }
    }
    for id in ["c", "d", "x"] {
        assert!(!s.contains(id).await.expect("contains"), "{id} stored");
    }
    assert_eq!(s.stream_version("i-2").await.expect("version"), 0);
    s.append(commit(vec![
        write("i-1", 2, &["c"]),
        write("i-2", 0, &["x"]),
        write("i-1", 3, &["d"]),
    ]))
    .await
    .expect("interleaved writes that follow each other");
    assert_eq!(
        ids(s.read_stream("i-1", 0).await.expect("read")),
        ["a", "b", "c", "d"]
    );
    assert_eq!(s.stream_version("i-1").await.expect("version"), 4);
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
    assert_eq!(committed(&*s).await.len(), 3);
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
    // Read to the last committed position: on PostgreSQL a page may come short, even
    // empty, for one statement (the read bound, see `committed`).
    let end = s.last_position().await.expect("last position");
    let mut seen = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        if after >= end {
            break;
        }
        let page = s.read_all(after, 2).await.expect("page");
        if page.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            continue;
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

/// A scan shows each record as `read_all` reads it, page by page.
pub async fn scan_all_sees_what_read_all_reads<S: EventStore>(s: Arc<S>) {
    type Seen = (u64, String, u64, String, String, u16, Codec, Vec<u8>);
    fn seen(v: crate::RecordView<'_>) -> Seen {
        (
            v.position,
            v.stream.to_string(),
            v.version,
            v.id.to_string(),
            v.record_type.to_string(),
            v.type_version,
            v.codec,
            v.payload.to_vec(),
        )
    }
    for i in 0..5u64 {
        s.append(commit(vec![
            write("inbound/cpts-test", i, &[&format!("in-{i}")]),
            write(&format!("i-{}", i % 2), i / 2, &[&format!("r-{i}")]),
        ]))
        .await
        .expect("append");
    }
    let want: Vec<Seen> = committed(&*s)
        .await
        .iter()
        .map(|r| seen(r.view()))
        .collect();
    assert_eq!(want.len(), 10);
    let end = want.last().map_or(0, |r| r.0);
    let (mut got, mut after) = (Vec::new(), 0);
    // Bounded: a page held back by the read bound (see `committed`) comes at the next read.
    for _ in 0..1000 {
        if after >= end {
            break;
        }
        let (page, last) = s
            .scan_all(after, 3, Vec::new(), |page: &mut Vec<Seen>, r| {
                page.push(seen(r))
            })
            .await
            .expect("scan");
        assert!(page.len() <= 3);
        assert_eq!(last, page.last().map(|r| r.0));
        let Some(last) = last else {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            continue;
        };
        after = last;
        got.extend(page);
    }
    assert_eq!(got, want);
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

/// The streams whose name starts with a prefix are read whole, in position order: not a
/// stream named like the prefix without its last character, nor one beyond it; `%` and
/// `_` are characters like any other.
pub async fn streams_are_read_by_prefix<S: EventStore>(s: Arc<S>) {
    let commits = [
        vec![
            write("pathway/b", 0, &["b1"]),
            write("inbound/t/p", 0, &["x1"]),
        ],
        vec![write("pathway", 0, &["n1"]), write("pathway/a", 0, &["a1"])],
        vec![write("pathwayz", 0, &["z1"]), write("pathway0", 0, &["o1"])],
        vec![
            write("pathway/a", 1, &["a2"]),
            write("pathway/b", 1, &["b2"]),
        ],
        vec![write("p%/x", 0, &["pct"]), write("pa/x", 0, &["pa"])],
    ];
    for c in commits {
        s.append(commit(c)).await.expect("append");
    }
    let ids = |records: Vec<StoredRecord>| -> Vec<String> {
        let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
        assert!(positions.is_sorted(), "in position order: {positions:?}");
        records.into_iter().map(|r| r.record.id).collect()
    };
    let read = |prefix: &'static str| {
        let s = s.clone();
        async move { ids(s.read_streams_by_prefix(prefix).await.expect("read")) }
    };
    assert_eq!(read("pathway/").await, ["b1", "a1", "a2", "b2"]);
    assert_eq!(read("pathway/a").await, ["a1", "a2"]);
    assert_eq!(read("p%/").await, ["pct"]);
    assert!(read("nothing/").await.is_empty());
    let all = ids(committed(&*s).await);
    assert_eq!(read("").await, all);
}

/// Heads read page by page are the heads of `read_all`'s records; the records at chosen
/// positions (unsorted, repeated, one with no record) are those records, in position
/// order.
pub async fn heads_and_records_at_positions_are_read_alls<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![
        write("i-1", 0, &["a", "b"]),
        write("i-2", 0, &["c"]),
    ]))
    .await
    .expect("append");
    s.append(commit(vec![write("i-1", 2, &["d"])]))
        .await
        .expect("append");
    s.append(commit(vec![write("i-3", 0, &["e", "f", "g"])]))
        .await
        .expect("append");
    let all = committed(&*s).await;
    assert_eq!(all.len(), 7);
    let end = all[6].position;
    let mut heads = Vec::new();
    let mut after = 0;
    // Bounded: a page held back by the read bound (see `committed`) comes at the next read.
    for _ in 0..1000 {
        if after >= end {
            break;
        }
        let page = s.read_heads(after, 3).await.expect("heads");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            continue;
        };
        after = last.position;
        heads.extend(page);
    }
    assert_eq!(
        heads,
        all.iter().map(StoredRecord::head).collect::<Vec<_>>()
    );
    let last = all[6].position;
    let chosen = [
        all[5].position,
        all[1].position,
        last + 1000,
        all[1].position,
        all[3].position,
    ];
    let at = s.read_at(&chosen).await.expect("read at");
    assert_eq!(at, vec![all[1].clone(), all[3].clone(), all[5].clone()]);
    assert!(s.read_at(&[]).await.expect("read at nothing").is_empty());
    assert!(
        s.read_heads(last, 10)
            .await
            .expect("heads after the end")
            .is_empty()
    );
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
            // The pages read (after, positions returned), to say where a record was missed.
            let mut pages: Vec<(u64, Vec<u64>)> = Vec::new();
            // Bounded: the writers finish long before this many polls.
            for _ in 0..100_000 {
                let page = s.read_all(after, 64).await.expect("read");
                if !page.is_empty() {
                    pages.push((after, page.iter().map(|r| r.position).collect()));
                }
                for r in &page {
                    assert!(r.position > after, "positions must increase");
                    after = r.position;
                    seen.push(r.record.id.clone());
                }
                if seen.len() == WRITERS * PER_WRITER {
                    return (seen, pages);
                }
                if page.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            (seen, pages)
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
    let (seen, pages) = reader.await.expect("reader");
    if seen.len() != WRITERS * PER_WRITER {
        // Which records were missed, where they are in the log, and the pages read
        // around them.
        let all = s
            .read_all(0, 10 * WRITERS * PER_WRITER)
            .await
            .expect("read all");
        let read: BTreeSet<&String> = seen.iter().collect();
        for r in all.iter().filter(|r| !read.contains(&r.record.id)) {
            let around: Vec<&(u64, Vec<u64>)> = pages
                .iter()
                .filter(|(after, got)| {
                    *after <= r.position && got.last().is_some_and(|l| *l >= r.position)
                        || got.iter().any(|p| p.abs_diff(r.position) < 4 << 20)
                })
                .collect();
            eprintln!(
                "missed {} at position {} (transaction {}); pages read around it (after, positions): {around:?}",
                r.record.id,
                r.position,
                r.position >> 20
            );
        }
    }
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

/// Which ids of a batch are stored, in one call; a stream's version.
pub async fn stored_ids_and_stream_versions<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![write("i-1", 0, &["a", "b"])]))
        .await
        .expect("append");
    let mut got = s
        .stored_ids(&["a".into(), "x".into(), "b".into()])
        .await
        .expect("ids");
    got.sort();
    assert_eq!(got, ["a", "b"]);
    assert!(s.stored_ids(&[]).await.expect("none").is_empty());
    let mut got = s
        .stored_events(&["b".into(), "x".into(), "a".into(), "a".into()])
        .await
        .expect("events");
    got.sort_by(|x, y| x.id.cmp(&y.id));
    got.dedup();
    let stored = |id: &str| StoredId {
        id: id.into(),
        tenant: "cpts-test".into(),
        subject: "p-1".into(),
        record_type: "task.requested".into(),
        occurred_at: at(0),
    };
    assert_eq!(got, [stored("a"), stored("b")]);
    assert!(s.stored_events(&[]).await.expect("none").is_empty());
    assert_eq!(s.stream_version("i-1").await.expect("version"), 2);
    assert_eq!(s.stream_version("nobody").await.expect("version"), 0);
    assert_eq!(
        s.stream_versions(&["nobody".into(), "i-1".into(), "i-1".into()])
            .await
            .expect("versions"),
        [0, 2, 2]
    );
    assert!(s.stream_versions(&[]).await.expect("none").is_empty());
}

/// The subject of each stream's latest record, in the order asked (the identity links).
pub async fn latest_subjects_are_each_streams_last_records<S: EventStore>(s: Arc<S>) {
    let named = |id: &str, subject: &str| NewRecord {
        subject: subject.into(),
        ..record(id)
    };
    s.append(commit(vec![
        StreamWrite {
            stream: "identity/cpts-test/p-local-1".into(),
            expected_version: 0,
            records: vec![named("l-1", "p-ins-1")],
        },
        StreamWrite {
            stream: "identity/cpts-test/p-local-2".into(),
            expected_version: 0,
            records: vec![named("l-2", "p-ins-2"), named("l-3", "p-ins-3")],
        },
    ]))
    .await
    .expect("append");
    s.append(commit(vec![StreamWrite {
        stream: "identity/cpts-test/p-local-1".into(),
        expected_version: 1,
        records: vec![named("l-4", "p-ins-4")],
    }]))
    .await
    .expect("append");
    let asked: Vec<String> = [
        "identity/cpts-test/nobody",
        "identity/cpts-test/p-local-1",
        "identity/cpts-test/p-local-2",
        "identity/cpts-test/p-local-1",
        "identity/cpts-test/p-local",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        s.latest_subjects(&asked).await.expect("subjects"),
        [
            None,
            Some("p-ins-4".to_string()),
            Some("p-ins-3".to_string()),
            Some("p-ins-4".to_string()),
            None
        ]
    );
    assert!(s.latest_subjects(&[]).await.expect("none").is_empty());
}

fn instance_row(stream: &str, subject: &str, pathway: &str, status: &str) -> InstanceRow {
    InstanceRow {
        stream: stream.into(),
        tenant: "cpts-test".into(),
        subject: subject.into(),
        pathway_id: pathway.into(),
        pathway_version: 1,
        status: status.into(),
        closed_reason: None,
        states: "main=referred".into(),
        cycle: 1,
        enrolled_at: at(10),
        updated_at: at(20),
        version: 1,
    }
}

fn timer_row(id: &str, stream: &str, secs: i64) -> TimerRow {
    TimerRow {
        id: id.into(),
        stream: stream.into(),
        tenant: "cpts-test".into(),
        subject: "p-1".into(),
        fire_at: at(secs),
        not_before: None,
    }
}

fn work_item(id: &str, tenant: &str, role: &str, status: WorkStatus, due: i64) -> WorkItem {
    WorkItem {
        id: id.into(),
        kind: WorkKind::Task,
        stream: "i-1".into(),
        tenant: tenant.into(),
        subject: "p-1".into(),
        pathway_id: "heart-failure".into(),
        code: "gp-visit".into(),
        role: role.into(),
        title: "GP visit".into(),
        status,
        priority: "high".into(),
        due_at: Some(at(due)),
        opened_at: at(0),
        opened_by: "r-1".into(),
        escalated_to: None,
        closed_at: None,
    }
}

/// Index changes are stored with the records of their commit, and readable at once.
pub async fn index_changes_commit_with_the_records<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index = IndexChanges {
        instances: vec![instance_row("i-1", "p-1", "heart-failure", "active")],
        timers: vec![TimerChange::Schedule(timer_row("t-1", "i-1", 100))],
        work: vec![WorkChange::Upsert(work_item(
            "w-1",
            "cpts-test",
            "gp",
            WorkStatus::Open,
            50,
        ))],
        snapshots: vec![],
    };
    s.append(c).await.expect("append");
    assert_eq!(
        s.instance("i-1").await.expect("instance"),
        Some(instance_row("i-1", "p-1", "heart-failure", "active"))
    );
    assert_eq!(s.count_timers().await.expect("count"), 1);
    assert_eq!(
        s.work_item("w-1").await.expect("work"),
        Some(work_item("w-1", "cpts-test", "gp", WorkStatus::Open, 50))
    );
    // A status change alone keeps the rest of the row.
    let mut c = commit(vec![write("i-1", 1, &["r-1b"])]);
    c.index.work = vec![WorkChange::Status {
        id: "w-1".into(),
        status: WorkStatus::Overdue,
    }];
    s.append(c).await.expect("append");
    assert_eq!(
        s.work_item("w-1").await.expect("work"),
        Some(work_item("w-1", "cpts-test", "gp", WorkStatus::Overdue, 50))
    );
    // An escalation puts it on the told role's worklist too, with the step's priority.
    let mut c = commit(vec![write("i-1", 2, &["r-1c"])]);
    c.index.work = vec![WorkChange::Escalated {
        id: "w-1".into(),
        role: "cardiologist".into(),
        priority: Some("asap".into()),
    }];
    s.append(c).await.expect("append");
    let escalated = WorkItem {
        escalated_to: Some("cardiologist".into()),
        priority: "asap".into(),
        ..work_item("w-1", "cpts-test", "gp", WorkStatus::Escalated, 50)
    };
    assert_eq!(
        s.work_item("w-1").await.expect("work"),
        Some(escalated.clone())
    );
    for role in ["gp", "cardiologist"] {
        let listed = s
            .work_items(&WorkFilter {
                tenant: "cpts-test".into(),
                role: Some(role.into()),
                ..WorkFilter::default()
            })
            .await
            .expect("work items");
        assert_eq!(
            listed,
            std::slice::from_ref(&escalated),
            "the worklist of {role}"
        );
    }
    let nurse = s
        .work_items(&WorkFilter {
            tenant: "cpts-test".into(),
            role: Some("nurse".into()),
            ..WorkFilter::default()
        })
        .await
        .expect("work items");
    assert!(nurse.is_empty(), "{nurse:?}");
    // A later status change keeps the escalation.
    let mut c = commit(vec![write("i-1", 3, &["r-1d"])]);
    c.index.work = vec![WorkChange::Status {
        id: "w-1".into(),
        status: WorkStatus::Overdue,
    }];
    s.append(c).await.expect("append");
    assert_eq!(
        s.work_item("w-1").await.expect("work"),
        Some(WorkItem {
            status: WorkStatus::Overdue,
            ..escalated.clone()
        })
    );
    // The next commit closes the work item, moves the timer and updates the instance.
    let mut c = commit(vec![write("i-1", 4, &["r-2"])]);
    let mut row = instance_row("i-1", "p-1", "heart-failure", "closed");
    row.closed_reason = Some("deceased".into());
    row.version = 2;
    c.index = IndexChanges {
        instances: vec![row.clone()],
        timers: vec![
            TimerChange::Remove { id: "t-1".into() },
            TimerChange::Schedule(timer_row("t-2", "i-1", 200)),
        ],
        work: vec![WorkChange::Closed {
            id: "w-1".into(),
            status: WorkStatus::Withdrawn,
            at: at(150),
        }],
        snapshots: vec![],
    };
    s.append(c).await.expect("append");
    assert_eq!(s.instance("i-1").await.expect("instance"), Some(row));
    // Closed, its row kept whole with how and when it closed.
    assert_eq!(
        s.work_item("w-1").await.expect("work"),
        Some(WorkItem {
            status: WorkStatus::Withdrawn,
            closed_at: Some(at(150)),
            ..escalated
        })
    );
    assert_eq!(s.next_timer(&All).await.expect("next"), Some(at(200)));
    // A removal deletes the row.
    let mut c = commit(vec![write("i-1", 5, &["r-3"])]);
    c.index.work = vec![WorkChange::Remove { id: "w-1".into() }];
    s.append(c).await.expect("append");
    assert_eq!(s.work_item("w-1").await.expect("work"), None);
}

/// A commit refused for its versions or as a duplicate changes no projection.
pub async fn a_refused_commit_changes_no_index<S: EventStore>(s: Arc<S>) {
    s.append(commit(vec![write("i-1", 0, &["r-1"])]))
        .await
        .expect("setup");
    let mut stale = commit(vec![write("i-1", 0, &["r-2"])]);
    stale.index.timers = vec![TimerChange::Schedule(timer_row("t-1", "i-1", 1))];
    assert!(s.append(stale).await.is_err());
    let mut dup = commit(vec![write("i-1", 1, &["r-1"])]);
    dup.index.instances = vec![instance_row("i-1", "p-1", "hf", "active")];
    assert_eq!(s.append(dup).await.expect("dup"), Appended::Duplicate);
    assert_eq!(s.count_timers().await.expect("count"), 0);
    assert_eq!(s.instance("i-1").await.expect("instance"), None);
}

/// Due timers come earliest first, bounded by time and count; removing an absent timer
/// is fine; a timer scheduled and removed in one commit is not pending.
pub async fn timers_are_found_by_due_time<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index.timers = vec![
        TimerChange::Schedule(timer_row("t-c", "i-1", 30)),
        TimerChange::Schedule(timer_row("t-a", "i-1", 10)),
        TimerChange::Schedule(timer_row("t-b", "i-1", 20)),
        TimerChange::Schedule(timer_row("t-gone", "i-1", 5)),
        TimerChange::Remove {
            id: "t-gone".into(),
        },
        TimerChange::Remove {
            id: "never-there".into(),
        },
    ];
    s.append(c).await.expect("append");
    let ids = |v: Vec<TimerRow>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.due_timers(at(25), 10, &All).await.expect("due")),
        ["t-a", "t-b"]
    );
    assert_eq!(
        ids(s.due_timers(at(100), 1, &All).await.expect("due")),
        ["t-a"]
    );
    assert!(s.due_timers(at(9), 10, &All).await.expect("due").is_empty());
    assert_eq!(
        ids(s
            .due_timers(Timestamp::MAX, 10, &All)
            .await
            .expect("every pending timer (what `parcours replay` verifies)")),
        ["t-a", "t-b", "t-c"]
    );
    assert_eq!(s.next_timer(&All).await.expect("next"), Some(at(10)));
    assert_eq!(s.count_timers().await.expect("count"), 3);
    assert_eq!(
        s.due_timers(at(10), 10, &All).await.expect("due")[0],
        timer_row("t-a", "i-1", 10),
        "read back field for field"
    );
}

/// A catch-up row ([`TimerChange::CatchUp`]) already due when its commit is recorded
/// fires no sooner than the commit's `recorded_at` + its grace, and is found, ordered and
/// scoped by that instant while it keeps its due instant; one due later fires then; one
/// written without records is written as it is. `parcours replay` reads the timers back
/// whole: what the grace made of them too.
pub async fn timers_already_due_when_committed_wait_their_catch_up_grace<S: EventStore>(s: Arc<S>) {
    let grace = SignedDuration::from_mins(10);
    let far = Timestamp::from_second(7_000_000_000).expect("year 2191");
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index.timers = vec![
        // Due long before the commit (a backdated discharge's deadline).
        TimerChange::CatchUp {
            row: timer_row("t-late", "i-1", 10),
            grace,
        },
        // Due after it.
        TimerChange::CatchUp {
            row: TimerRow {
                fire_at: far,
                ..timer_row("t-later", "i-2", 0)
            },
            grace,
        },
        // Due long before, without a grace.
        TimerChange::Schedule(timer_row("t-plain", "i-3", 20)),
    ];
    s.append(c).await.expect("append");
    let recorded = s.read_stream("i-1", 0).await.expect("read")[0].recorded_at;
    let end = recorded + grace;
    let ids = |v: Vec<TimerRow>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.due_timers(recorded, 10, &All).await.expect("due")),
        ["t-plain"],
        "in its grace, the backdated timer is not due"
    );
    assert_eq!(
        ids(s
            .due_timers(end - SignedDuration::from_nanos(1), 10, &All)
            .await
            .expect("due")),
        ["t-plain"]
    );
    let late = TimerRow {
        not_before: Some(end),
        ..timer_row("t-late", "i-1", 10)
    };
    assert_eq!(
        s.due_timers(end, 10, &All).await.expect("due"),
        [timer_row("t-plain", "i-3", 20), late.clone()],
        "due at the end of its grace, read back with its due instant"
    );
    let scope = TimerScope::Partitions {
        count: 4,
        owned: vec![crate::partition_of("cpts-test", "p-1", 4)],
    };
    assert_eq!(
        ids(s.due_timers(end, 10, &scope).await.expect("scoped")),
        ["t-plain", "t-late"]
    );
    assert_eq!(
        s.due_timers(Timestamp::MAX, 10, &All)
            .await
            .expect("every timer")
            .last()
            .map(|t| (t.id.as_str(), t.not_before)),
        Some(("t-later", None)),
        "due after the commit: at its due instant"
    );
    // Once the backdated timer fired, the next is the one due later.
    let mut fired = commit(vec![write("i-1", 1, &["r-2"])]);
    fired.index.timers = vec![
        TimerChange::Remove {
            id: "t-plain".into(),
        },
        TimerChange::Remove {
            id: "t-late".into(),
        },
    ];
    s.append(fired).await.expect("fired");
    assert_eq!(s.next_timer(&All).await.expect("next"), Some(far));
    // A repair writes rows as replay rebuilt them, grace included; a catch-up row
    // written without records has no commit to wait after.
    s.write_index(IndexChanges {
        timers: vec![
            TimerChange::Schedule(late.clone()),
            TimerChange::CatchUp {
                row: timer_row("t-index", "i-4", 30),
                grace,
            },
        ],
        ..IndexChanges::default()
    })
    .await
    .expect("write index");
    assert_eq!(
        s.due_timers(end, 10, &All).await.expect("due"),
        [timer_row("t-index", "i-4", 30), late]
    );
    assert_eq!(s.next_timer(&All).await.expect("next"), Some(at(30)));
}

/// An engine owning some partitions finds the timers of their patients only, and the
/// earliest of those; with every partition it finds them all.
pub async fn timers_are_scoped_by_partition<S: EventStore>(s: Arc<S>) {
    const N: u16 = 4;
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); usize::from(N)];
    for i in 0..40 {
        let mut t = timer_row(&format!("t-{i:02}"), "i-1", 10 + i);
        t.subject = format!("p-{i}");
        by_partition[usize::from(crate::partition_of(&t.tenant, &t.subject, N))].push(t.id.clone());
        c.index.timers.push(TimerChange::Schedule(t));
    }
    s.append(c).await.expect("append");
    let ids = |v: Vec<TimerRow>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    for p in 0..N {
        let scope = TimerScope::Partitions {
            count: N,
            owned: vec![p],
        };
        let mine = &by_partition[usize::from(p)];
        assert!(!mine.is_empty(), "40 patients fill 4 partitions");
        assert_eq!(
            &ids(s.due_timers(at(1000), 100, &scope).await.expect("due")),
            mine
        );
        let first: i64 = mine[0][2..].parse().expect("number");
        assert_eq!(
            s.next_timer(&scope).await.expect("next"),
            Some(at(10 + first))
        );
    }
    let two = TimerScope::Partitions {
        count: N,
        owned: vec![1, 3],
    };
    let mut expected = [by_partition[1].clone(), by_partition[3].clone()].concat();
    expected.sort();
    assert_eq!(
        ids(s.due_timers(at(1000), 100, &two).await.expect("due")),
        expected
    );
    let none = TimerScope::Partitions {
        count: N,
        owned: vec![],
    };
    assert!(
        s.due_timers(at(1000), 100, &none)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(s.next_timer(&none).await.expect("next"), None);
    assert_eq!(
        s.due_timers(at(1000), 100, &All).await.expect("due").len(),
        40
    );
}

/// Work items are listed per tenant only, filtered by role, kind and status, earliest due
/// first.
pub async fn work_items_are_filtered_by_tenant_role_and_status<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index.work = vec![
        WorkChange::Upsert(work_item("w-3", "cpts-test", "gp", WorkStatus::Open, 30)),
        WorkChange::Upsert(work_item("w-1", "cpts-test", "gp", WorkStatus::Overdue, 10)),
        WorkChange::Upsert(work_item("w-2", "cpts-test", "nurse", WorkStatus::Open, 20)),
        WorkChange::Upsert(work_item("w-x", "cpts-other", "gp", WorkStatus::Open, 5)),
    ];
    let mut alert = work_item("w-4", "cpts-test", "gp", WorkStatus::Open, 40);
    alert.kind = WorkKind::Alert;
    alert.due_at = None;
    c.index.work.push(WorkChange::Upsert(alert));
    s.append(c).await.expect("append");
    let ids = |v: Vec<WorkItem>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let all = WorkFilter {
        tenant: "cpts-test".into(),
        ..WorkFilter::default()
    };
    assert_eq!(
        ids(s.work_items(&all).await.expect("all")),
        ["w-1", "w-2", "w-3", "w-4"]
    );
    let gp_open = WorkFilter {
        role: Some("gp".into()),
        statuses: vec![WorkStatus::Open],
        ..all.clone()
    };
    assert_eq!(
        ids(s.work_items(&gp_open).await.expect("gp")),
        ["w-3", "w-4"]
    );
    let alerts = WorkFilter {
        kind: Some(WorkKind::Alert),
        ..all.clone()
    };
    assert_eq!(ids(s.work_items(&alerts).await.expect("alerts")), ["w-4"]);
    let other = WorkFilter {
        tenant: "cpts-other".into(),
        ..WorkFilter::default()
    };
    assert_eq!(ids(s.work_items(&other).await.expect("other")), ["w-x"]);
    let limited = WorkFilter { limit: 2, ..all };
    assert_eq!(s.work_items(&limited).await.expect("limit").len(), 2);
}

/// A closed work item keeps its row with how and when it closed: listed when its status
/// is asked for, never among the open ones (the default).
pub async fn closed_work_items_keep_their_row_and_how_they_closed<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    for (id, due) in [("w-1", 10), ("w-2", 20), ("w-3", 30), ("w-4", 40)] {
        c.index.work.push(WorkChange::Upsert(work_item(
            id,
            "cpts-test",
            "gp",
            WorkStatus::Open,
            due,
        )));
    }
    // Opened and closed in one commit.
    c.index.work.push(WorkChange::Closed {
        id: "w-4".into(),
        status: WorkStatus::NotNeeded,
        at: at(5),
    });
    s.append(c).await.expect("append");
    let mut c = commit(vec![write("i-1", 1, &["r-2"])]);
    c.index.work = vec![
        WorkChange::Closed {
            id: "w-1".into(),
            status: WorkStatus::Completed,
            at: at(7),
        },
        WorkChange::Closed {
            id: "w-2".into(),
            status: WorkStatus::Withdrawn,
            at: at(8),
        },
        // A change after the closing, in the same commit, leaves it closed.
        WorkChange::Status {
            id: "w-2".into(),
            status: WorkStatus::Overdue,
        },
        WorkChange::Escalated {
            id: "w-1".into(),
            role: "cardiologist".into(),
            priority: None,
        },
    ];
    s.append(c).await.expect("append");
    let ids = |v: Vec<WorkItem>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let filter = |statuses: &[WorkStatus]| WorkFilter {
        tenant: "cpts-test".into(),
        statuses: statuses.to_vec(),
        ..WorkFilter::default()
    };
    assert_eq!(
        ids(s.work_items(&filter(&[])).await.expect("open")),
        ["w-3"]
    );
    assert_eq!(
        ids(s
            .work_items(&filter(&WorkStatus::CLOSED))
            .await
            .expect("closed")),
        ["w-1", "w-2", "w-4"]
    );
    assert_eq!(
        ids(s.work_items(&filter(&WorkStatus::ALL)).await.expect("all")),
        ["w-1", "w-2", "w-3", "w-4"]
    );
    assert_eq!(
        ids(s
            .work_items(&filter(&[WorkStatus::Completed, WorkStatus::Open]))
            .await
            .expect("completed or open")),
        ["w-1", "w-3"]
    );
    let status = |id: &'static str| {
        let s = s.clone();
        async move {
            s.work_item(id)
                .await
                .expect("work")
                .map(|w| (w.status, w.closed_at))
        }
    };
    assert_eq!(
        status("w-1").await,
        Some((WorkStatus::Completed, Some(at(7))))
    );
    assert_eq!(
        status("w-2").await,
        Some((WorkStatus::Withdrawn, Some(at(8))))
    );
    assert_eq!(
        status("w-3").await,
        Some((WorkStatus::Open, None)),
        "open: no closing time"
    );
    assert_eq!(
        status("w-4").await,
        Some((WorkStatus::NotNeeded, Some(at(5))))
    );
    let w1 = s.work_item("w-1").await.expect("work").expect("w-1");
    assert_eq!(w1.escalated_to, None, "an escalation after the closing");
}

/// Work items are paged with the cursor of the last one listed: every item once, in the
/// listing's order (earliest due first, those without a due time last, then by id),
/// whatever the page size.
pub async fn work_items_are_paged_by_cursor<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    let mut want = Vec::new();
    // Ties on the due time, items without one, closed ones between open ones.
    for n in 0..23u8 {
        let mut item = work_item(
            &format!("w-{:02}", 22 - n),
            "cpts-test",
            "gp",
            if n % 4 == 0 {
                WorkStatus::Completed
            } else {
                WorkStatus::Open
            },
            i64::from(n / 3),
        );
        if n % 5 == 0 {
            item.due_at = None;
        }
        c.index.work.push(WorkChange::Upsert(item.clone()));
        want.push(item);
    }
    s.append(c).await.expect("append");
    want.sort_by(|a, b| {
        (a.due_at.is_none(), a.due_at, &a.id).cmp(&(b.due_at.is_none(), b.due_at, &b.id))
    });
    for statuses in [WorkStatus::ALL.to_vec(), vec![WorkStatus::Open]] {
        let expected: Vec<&str> = want
            .iter()
            .filter(|w| statuses.contains(&w.status))
            .map(|w| w.id.as_str())
            .collect();
        for limit in [1, 2, 5, 50] {
            let mut got = Vec::new();
            let mut after = None;
            for _ in 0..100 {
                let page = s
                    .work_items(&WorkFilter {
                        tenant: "cpts-test".into(),
                        statuses: statuses.clone(),
                        after: after.clone(),
                        limit,
                        ..WorkFilter::default()
                    })
                    .await
                    .expect("page");
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                after = Some(last.cursor());
                got.extend(page.into_iter().map(|w| w.id));
            }
            assert_eq!(got, expected, "pages of {limit}, statuses {statuses:?}");
        }
    }
}

/// A patient's instances, and instances by tenant, pathway and status, paged.
pub async fn instances_are_listed_per_patient_and_pathway<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-a", 0, &["r-1"])]);
    let mut other_tenant = instance_row("i-z", "p-1", "heart-failure", "active");
    other_tenant.tenant = "cpts-other".into();
    c.index.instances = vec![
        instance_row("i-a", "p-1", "heart-failure", "active"),
        instance_row("i-b", "p-1", "type2-diabetes", "active"),
        instance_row("i-c", "p-2", "heart-failure", "closed"),
        other_tenant,
    ];
    s.append(c).await.expect("append");
    let streams = |v: Vec<InstanceRow>| v.into_iter().map(|r| r.stream).collect::<Vec<_>>();
    assert_eq!(
        streams(s.instances_of("cpts-test", "p-1").await.expect("p-1")),
        ["i-a", "i-b"]
    );
    assert!(
        s.instances_of("cpts-test", "p-9")
            .await
            .expect("none")
            .is_empty()
    );
    // Several patients in one call: each one's list, in the order asked, whole rows.
    let many = s
        .instances_of_many(&[
            ("cpts-test", "p-2"),
            ("cpts-test", "p-9"),
            ("cpts-test", "p-1"),
            ("cpts-other", "p-1"),
            ("cpts-test", "p-1"),
        ])
        .await
        .expect("many");
    let one = s.instances_of("cpts-test", "p-1").await.expect("p-1");
    assert_eq!(many[2], one);
    assert_eq!(
        many.into_iter().map(streams).collect::<Vec<_>>(),
        [
            vec!["i-c"],
            vec![],
            vec!["i-a", "i-b"],
            vec!["i-z"],
            vec!["i-a", "i-b"]
        ]
    );
    assert!(s.instances_of_many(&[]).await.expect("none").is_empty());
    let hf = InstanceFilter {
        tenant: "cpts-test".into(),
        pathway_id: Some("heart-failure".into()),
        ..InstanceFilter::default()
    };
    assert_eq!(
        streams(s.list_instances(&hf).await.expect("hf")),
        ["i-a", "i-c"]
    );
    let active = InstanceFilter {
        status: Some("active".into()),
        ..hf.clone()
    };
    assert_eq!(
        streams(s.list_instances(&active).await.expect("active")),
        ["i-a"]
    );
    let page = InstanceFilter {
        after_stream: Some("i-a".into()),
        limit: 1,
        ..hf
    };
    assert_eq!(
        streams(s.list_instances(&page).await.expect("page")),
        ["i-c"]
    );
}

/// An instance row or timer written again replaces the old one whole: every column, and
/// the lookups by patient, pathway, status and due time follow (a closing, an identity
/// merge moving an instance and its timers to another subject).
pub async fn rewritten_rows_replace_the_old_ones_whole<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-a", 0, &["r-1"])]);
    c.index.instances = vec![
        instance_row("i-a", "p-1", "heart-failure", "active"),
        instance_row("i-b", "p-1", "heart-failure", "active"),
    ];
    c.index.timers = vec![TimerChange::Schedule(timer_row("t-1", "i-a", 5))];
    s.append(c).await.expect("first");
    let moved = InstanceRow {
        pathway_version: 2,
        closed_reason: Some("merged".into()),
        states: "main=closed".into(),
        cycle: 2,
        enrolled_at: at(11),
        updated_at: at(30),
        version: 2,
        ..instance_row("i-a", "p-2", "heart-failure", "closed")
    };
    // Only the states change for i-b; i-a changes subject and status too.
    let b_later = InstanceRow {
        states: "main=followed".into(),
        version: 2,
        ..instance_row("i-b", "p-1", "heart-failure", "active")
    };
    let mut c = commit(vec![write("i-a", 1, &["r-2"])]);
    c.index.instances = vec![moved.clone(), b_later.clone()];
    c.index.timers = vec![TimerChange::Schedule(TimerRow {
        subject: "p-2".into(),
        ..timer_row("t-1", "i-a", 50)
    })];
    s.append(c).await.expect("second");
    assert_eq!(s.instance("i-a").await.expect("i-a"), Some(moved));
    assert_eq!(s.instance("i-b").await.expect("i-b"), Some(b_later));
    let streams = |v: Vec<InstanceRow>| v.into_iter().map(|r| r.stream).collect::<Vec<_>>();
    assert_eq!(
        streams(s.instances_of("cpts-test", "p-1").await.expect("p-1")),
        ["i-b"]
    );
    assert_eq!(
        streams(s.instances_of("cpts-test", "p-2").await.expect("p-2")),
        ["i-a"]
    );
    let with_status = |status: &str| InstanceFilter {
        tenant: "cpts-test".into(),
        status: Some(status.into()),
        ..InstanceFilter::default()
    };
    assert_eq!(
        streams(
            s.list_instances(&with_status("closed"))
                .await
                .expect("closed")
        ),
        ["i-a"]
    );
    assert_eq!(
        streams(
            s.list_instances(&with_status("active"))
                .await
                .expect("active")
        ),
        ["i-b"]
    );
    assert!(
        s.due_timers(at(10), 10, &All)
            .await
            .expect("due")
            .is_empty()
    );
    let due = s.due_timers(at(60), 10, &All).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].subject.as_str(), due[0].fire_at), ("p-2", at(50)));
    assert_eq!(s.count_timers().await.expect("count"), 1);
}

/// One snapshot per instance: the latest written.
pub async fn snapshots_keep_the_latest<S: EventStore>(s: Arc<S>) {
    assert_eq!(s.snapshot("i-1").await.expect("none"), None);
    let snap = |version: u64| Snapshot {
        stream: "i-1".into(),
        version,
        codec: Codec::Bincode,
        type_version: 1,
        payload: vec![1, 2, 3, version as u8],
    };
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index.snapshots = vec![snap(1)];
    s.append(c).await.expect("append");
    s.write_index(IndexChanges {
        snapshots: vec![snap(7)],
        ..IndexChanges::default()
    })
    .await
    .expect("write");
    assert_eq!(s.snapshot("i-1").await.expect("snap"), Some(snap(7)));
}

/// Projections can be emptied and written again without touching the records.
pub async fn index_can_be_cleared_and_rebuilt<S: EventStore>(s: Arc<S>) {
    let mut c = commit(vec![write("i-1", 0, &["r-1"])]);
    c.index.timers = vec![TimerChange::Schedule(timer_row("t-1", "i-1", 1))];
    c.index.instances = vec![instance_row("i-1", "p-1", "hf", "active")];
    s.append(c).await.expect("append");
    s.clear_index().await.expect("clear");
    assert_eq!(s.count_timers().await.expect("count"), 0);
    assert_eq!(s.instance("i-1").await.expect("instance"), None);
    assert_eq!(committed(&*s).await.len(), 1);
    s.write_index(IndexChanges {
        timers: vec![TimerChange::Schedule(timer_row("t-1", "i-1", 1))],
        ..IndexChanges::default()
    })
    .await
    .expect("rebuild");
    assert_eq!(s.count_timers().await.expect("count"), 1);
}

/// Dead letters are kept in order with their reason and bytes.
pub async fn dead_letters_are_kept_with_their_reason<S: EventStore>(s: Arc<S>) {
    let letter = |n: u8| DeadLetter {
        source: "http".into(),
        tenant: Some("cpts-test".into()),
        reason: format!("line 1 column {n}: expected value"),
        payload: vec![n, 0, 255],
    };
    let first = s.dead_letter(letter(1)).await.expect("keep");
    let second = s.dead_letter(letter(2)).await.expect("keep");
    assert!(second > first);
    let all = s.dead_letters(0, 10).await.expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].letter, letter(1));
    assert_eq!(all[1].letter, letter(2));
    assert_eq!(s.dead_letters(first, 10).await.expect("after").len(), 1);
    let one = s
        .dead_letter_by_id(second)
        .await
        .expect("by id")
        .expect("kept");
    assert_eq!((one.id, one.letter), (second, letter(2)));
    assert_eq!(
        s.dead_letter_by_id(second + 1_000_000).await.expect("none"),
        None
    );
}

/// Dead letters are listed newest first, per tenant (every tenant's when none is named),
/// by source or front, paged below the last id seen.
pub async fn dead_letters_are_listed_newest_first_by_tenant_and_source<S: EventStore>(s: Arc<S>) {
    let letter = |tenant: Option<&str>, source: &str| DeadLetter {
        source: source.into(),
        tenant: tenant.map(Into::into),
        reason: "refused".into(),
        payload: b"{}".to_vec(),
    };
    let mut ids = Vec::new();
    for (tenant, source) in [
        (Some("cpts-a"), "http"),
        (Some("cpts-b"), "http"),
        (Some("cpts-a"), "nats:parcours.cpts-a.fhir.in"),
        (None, "http"),
        (Some("cpts-a"), "mllp"),
        (Some("cpts-a"), "natsx"),
        (Some("cpts-a"), "http"),
    ] {
        ids.push(s.dead_letter(letter(tenant, source)).await.expect("keep"));
    }
    let list = |tenant: Option<&str>, source: Option<&str>, before: Option<u64>, limit| {
        let s = s.clone();
        let filter = DeadLetterFilter {
            tenant: tenant.map(Into::into),
            source: source.map(Into::into),
            before,
            limit,
        };
        async move {
            s.list_dead_letters(&filter)
                .await
                .expect("list")
                .into_iter()
                .map(|l| l.id)
                .collect::<Vec<_>>()
        }
    };
    let pick = |ns: &[usize]| ns.iter().map(|n| ids[*n]).collect::<Vec<_>>();
    assert_eq!(
        list(None, None, None, 100).await,
        pick(&[6, 5, 4, 3, 2, 1, 0])
    );
    assert_eq!(
        list(Some("cpts-a"), None, None, 100).await,
        pick(&[6, 5, 4, 2, 0])
    );
    assert_eq!(list(Some("cpts-b"), None, None, 100).await, pick(&[1]));
    assert_eq!(
        list(Some("cpts-a"), Some("http"), None, 100).await,
        pick(&[6, 0])
    );
    // A front takes its sources (`nats:<subject>`), not a source it prefixes.
    assert_eq!(
        list(Some("cpts-a"), Some("nats"), None, 100).await,
        pick(&[2])
    );
    assert_eq!(
        list(None, Some("nats:parcours.cpts-a.fhir.in"), None, 100).await,
        pick(&[2])
    );
    // Paged below the last id seen.
    let first = list(Some("cpts-a"), None, None, 2).await;
    assert_eq!(first, pick(&[6, 5]));
    let second = list(Some("cpts-a"), None, first.last().copied(), 2).await;
    assert_eq!(second, pick(&[4, 2]));
    let third = list(Some("cpts-a"), None, second.last().copied(), 2).await;
    assert_eq!(third, pick(&[0]));
    assert!(list(Some("cpts-a"), None, Some(ids[0]), 2).await.is_empty());
}

/// Instants come back to the nanosecond: records, instances, timers, work items.
pub async fn instants_keep_their_nanoseconds<S: EventStore>(s: Arc<S>) {
    let ns = |n: i128| {
        Timestamp::from_nanosecond(1_772_000_000_000_000_000 + n).unwrap_or(Timestamp::UNIX_EPOCH)
    };
    let mut r = record("e-ns");
    r.occurred_at = ns(123_456_789);
    let mut c = commit(vec![StreamWrite {
        stream: "i-1".into(),
        expected_version: 0,
        records: vec![r.clone()],
    }]);
    let mut instance = instance_row("i-1", "p-1", "heart-failure", "active");
    instance.enrolled_at = ns(1);
    instance.updated_at = ns(999_999_999);
    let mut timer = timer_row("t-ns", "i-1", 0);
    timer.fire_at = ns(5_000_000_001);
    let mut work = work_item("w-ns", "cpts-test", "gp", WorkStatus::Open, 0);
    work.due_at = Some(ns(86_400_000_000_007));
    work.opened_at = ns(-3);
    c.index = IndexChanges {
        instances: vec![instance.clone()],
        timers: vec![TimerChange::Schedule(timer.clone())],
        work: vec![WorkChange::Upsert(work.clone())],
        snapshots: vec![],
    };
    s.append(c).await.expect("append");
    let got = s.read_stream("i-1", 0).await.expect("read");
    assert_eq!(got[0].record, r, "record read back field for field");
    assert_eq!(s.instance("i-1").await.expect("instance"), Some(instance));
    assert_eq!(
        s.due_timers(ns(5_000_000_001), 10, &All)
            .await
            .expect("due"),
        [timer.clone()]
    );
    assert!(
        s.due_timers(ns(5_000_000_000), 10, &All)
            .await
            .expect("due")
            .is_empty(),
        "one nanosecond early is not due"
    );
    assert_eq!(s.next_timer(&All).await.expect("next"), Some(timer.fire_at));
    assert_eq!(s.work_item("w-ns").await.expect("work"), Some(work));
}

/// The same commit appended twice at once (a redelivered inbound event processed by two
/// workers): one is stored, the other acknowledged as a duplicate, never an error.
pub async fn racing_duplicates_are_acknowledged_once<S: EventStore>(s: Arc<S>) {
    for round in 0..10 {
        let c = commit(vec![
            write("inbound/cpts-test", round, &[&format!("in-{round}")]),
            write(&format!("i-{round}"), 0, &[&format!("x-{round}")]),
        ]);
        let (a, b) = tokio::join!(s.append(c.clone()), s.append(c));
        let mut outcomes = [a.expect("first"), b.expect("second")];
        outcomes.sort_by_key(|o| matches!(o, Appended::Duplicate));
        assert!(
            matches!(outcomes, [Appended::Committed { .. }, Appended::Duplicate]),
            "round {round}: {outcomes:?}"
        );
    }
    assert_eq!(committed(&*s).await.len(), 20);
}

/// Two different commits racing to write the same new stream: one is stored, the other
/// refused as a conflict that names the version it found.
pub async fn racing_writers_of_one_stream_conflict<S: EventStore>(s: Arc<S>) {
    for round in 0..10 {
        let stream = format!("i-{round}");
        let a = commit(vec![write(&stream, 0, &[&format!("a-{round}")])]);
        let b = commit(vec![write(&stream, 0, &[&format!("b-{round}")])]);
        let (a, b) = tokio::join!(s.append(a), s.append(b));
        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            other => panic!("round {round}: expected one commit and one refusal, got {other:?}"),
        };
        assert!(matches!(won, Appended::Committed { .. }), "{won:?}");
        match lost {
            StoreError::Conflict {
                stream: refused,
                expected,
                actual,
            } => assert_eq!(
                (refused.as_str(), expected, actual),
                (stream.as_str(), 0, 1)
            ),
            other => panic!("round {round}: expected a conflict, got {other}"),
        }
        assert_eq!(s.stream_version(&stream).await.expect("version"), 1);
    }
}

fn guard(stream: &str, version: u64, lock: &str) -> Guard {
    Guard {
        stream: stream.into(),
        version,
        lock: lock.into(),
        shared: false,
    }
}

/// A commit is written only when each stream it guards is at the version named (0: no
/// record); otherwise it is refused as a conflict on that stream, nothing written, its
/// projections unchanged — unless an id of it is stored already (a duplicate).
pub async fn guards_refuse_a_commit_when_a_stream_moved<S: EventStore>(s: Arc<S>) {
    let guarded = |writes, guards| Commit {
        writes,
        guards,
        ..Commit::default()
    };
    // A stream without records is at version 0.
    s.append(guarded(
        vec![write("inbound/t/k", 0, &["a"])],
        vec![guard("identity/t/k", 0, "t/k")],
    ))
    .await
    .expect("guard holds");
    s.append(commit(vec![write("identity/t/k", 0, &["link"])]))
        .await
        .expect("the guarded stream moves");
    let mut refused = guarded(
        vec![write("inbound/t/k", 1, &["b"])],
        vec![guard("identity/t/k", 0, "t/k")],
    );
    refused.index.instances = vec![instance_row("i-1", "p-1", "hf", "active")];
    match s.append(refused).await {
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => assert_eq!((stream.as_str(), expected, actual), ("identity/t/k", 0, 1)),
        other => panic!("expected a conflict on the guarded stream, got {other:?}"),
    }
    assert!(!s.contains("b").await.expect("contains"), "nothing written");
    assert_eq!(s.stream_version("inbound/t/k").await.expect("version"), 1);
    assert_eq!(
        s.instance("i-1").await.expect("instance"),
        None,
        "no projection changed"
    );
    // The first guard that fails is named, among several.
    match s
        .append(guarded(
            vec![write("inbound/t/k", 1, &["b"])],
            vec![
                guard("inbound/t/other", 0, "t/other"),
                guard("identity/t/k", 1, "t/k"),
                guard("inbound/t/k2", 3, "t/k2"),
            ],
        ))
        .await
    {
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => assert_eq!((stream.as_str(), expected, actual), ("inbound/t/k2", 3, 0)),
        other => panic!("expected a conflict on the third guard, got {other:?}"),
    }
    // At the version the stream is at, the commit is written.
    s.append(guarded(
        vec![write("inbound/t/k", 1, &["b"])],
        vec![guard("identity/t/k", 1, "t/k")],
    ))
    .await
    .expect("guard at the stream's version");
    // Idempotency first: a commit already made is a duplicate whatever its guards.
    assert_eq!(
        s.append(guarded(
            vec![write("inbound/t/k", 1, &["b"])],
            vec![guard("identity/t/k", 0, "t/k")],
        ))
        .await
        .expect("duplicate"),
        Appended::Duplicate
    );
}

/// Two commits each guarding the stream the other writes, under one lock (an event's
/// commit guarding its key's identity stream, shared, a link's guarding the key's
/// inbound stream, exclusive), run at once: exactly one is written, the other refused
/// as a conflict on its guard, whichever runs first.
pub async fn racing_guarded_commits_conflict<S: EventStore>(s: Arc<S>) {
    for round in 0..20 {
        let inbound = format!("inbound/t/k{round}");
        let identity = format!("identity/t/k{round}");
        let lock = format!("identity/t/k{round}");
        let event = Commit {
            writes: vec![write(&inbound, 0, &[&format!("event-{round}")])],
            guards: vec![Guard {
                shared: true,
                ..guard(&identity, 0, &lock)
            }],
            ..Commit::default()
        };
        let link = Commit {
            writes: vec![write(&identity, 0, &[&format!("link-{round}")])],
            guards: vec![guard(&inbound, 0, &lock)],
            ..Commit::default()
        };
        let (a, b) = if round % 2 == 0 {
            tokio::join!(s.append(event), s.append(link))
        } else {
            let (b, a) = tokio::join!(s.append(link), s.append(event));
            (a, b)
        };
        let refused = match (&a, &b) {
            (Ok(Appended::Committed { .. }), Err(StoreError::Conflict { stream, .. })) => {
                assert_eq!(
                    stream, &inbound,
                    "round {round}: the link refused on its guard"
                );
                &identity
            }
            (Err(StoreError::Conflict { stream, .. }), Ok(Appended::Committed { .. })) => {
                assert_eq!(
                    stream, &identity,
                    "round {round}: the event refused on its guard"
                );
                &inbound
            }
            other => panic!("round {round}: expected one commit and one refusal, got {other:?}"),
        };
        assert_eq!(
            s.stream_version(refused).await.expect("version"),
            0,
            "round {round}: the refused commit wrote nothing"
        );
    }
}

fn patient_key(tenant: &str, subject: &str, wrapped: u8) -> PatientKey {
    PatientKey {
        tenant: tenant.into(),
        subject: subject.into(),
        key_id: "local:v1".into(),
        wrapped: vec![wrapped; 80],
    }
}

/// A patient's data key is kept once (the first writer wins, a second gets the stored
/// one), per tenant, and erasing it removes it for good (a new key may follow).
pub async fn patient_keys_are_kept_once_and_erased<S: EventStore + PatientKeys>(s: Arc<S>) {
    assert_eq!(s.patient_key("cpts-test", "p-1").await.expect("get"), None);
    let first = patient_key("cpts-test", "p-1", 1);
    assert_eq!(
        s.create_patient_key(first.clone()).await.expect("create"),
        first
    );
    assert_eq!(
        s.create_patient_key(patient_key("cpts-test", "p-1", 2))
            .await
            .expect("second"),
        first,
        "the first key stays"
    );
    let other_tenant = patient_key("cpts-other", "p-1", 3);
    assert_eq!(
        s.create_patient_key(other_tenant.clone())
            .await
            .expect("other tenant"),
        other_tenant
    );
    let (a, b) = tokio::join!(
        s.create_patient_key(patient_key("cpts-test", "p-2", 4)),
        s.create_patient_key(patient_key("cpts-test", "p-2", 5))
    );
    assert_eq!(
        a.expect("racing a"),
        b.expect("racing b"),
        "racing writers agree"
    );
    assert!(
        s.erase_patient_key("cpts-test", "p-1")
            .await
            .expect("erase")
    );
    assert!(
        !s.erase_patient_key("cpts-test", "p-1")
            .await
            .expect("again"),
        "nothing left to erase"
    );
    assert_eq!(s.patient_key("cpts-test", "p-1").await.expect("gone"), None);
    assert_eq!(
        s.patient_key("cpts-other", "p-1").await.expect("kept"),
        Some(other_tenant),
        "another tenant's key is untouched"
    );
    s.scrub().await.expect("scrub");
    let again = patient_key("cpts-test", "p-1", 6);
    assert_eq!(
        s.create_patient_key(again.clone()).await.expect("new key"),
        again
    );
}

/// A rotation's reads and writes: the keys of each tenant key counted; those wrapped by
/// another key than the new one listed a page at a time in (tenant, subject) order; a
/// key replaced only while its row is still as read (one erased or replaced meanwhile
/// stays as it is), the batch in one transaction.
pub async fn patient_keys_are_wrapped_again_while_still_as_read<S: EventStore + PatientKeys>(
    s: Arc<S>,
) {
    let old = |tenant: &str, subject: &str, n: u8| PatientKey {
        key_id: "local:old".into(),
        ..patient_key(tenant, subject, n)
    };
    let mut made = vec![
        old("cpts-b", "p-1", 1),
        old("cpts-a", "p-2", 2),
        old("cpts-a", "p-10", 3),
        patient_key("cpts-a", "p-3", 4),
        old("cpts-a", "~dead-letters", 5),
    ];
    s.create_patient_keys(made.clone()).await.expect("made");
    assert_eq!(
        s.patient_key_ids().await.expect("ids"),
        vec![("local:old".to_string(), 4), ("local:v1".to_string(), 1)]
    );
    made.sort_by(|a, b| (&a.tenant, &a.subject).cmp(&(&b.tenant, &b.subject)));
    let expected: Vec<PatientKey> = made
        .into_iter()
        .filter(|k| k.key_id == "local:old")
        .collect();
    let first = s
        .patient_keys_not_wrapped_by("local:v1", None, 2)
        .await
        .expect("page 1");
    assert_eq!(first, expected[..2]);
    let last = first.last().expect("a key");
    let rest = s
        .patient_keys_not_wrapped_by(
            "local:v1",
            Some((last.tenant.as_str(), last.subject.as_str())),
            10,
        )
        .await
        .expect("page 2");
    assert_eq!(rest, expected[2..]);

    // p-10 erased, ~dead-letters wrapped again by another writer since they were read.
    assert!(s.erase_patient_key("cpts-a", "p-10").await.expect("erase"));
    let letters = expected
        .iter()
        .find(|k| k.subject == "~dead-letters")
        .expect("made");
    let elsewhere = Rewrapped {
        read: letters.clone(),
        key_id: "local:v1".into(),
        wrapped: vec![60; 80],
    };
    assert_eq!(
        s.rewrap_patient_keys(std::slice::from_ref(&elsewhere))
            .await
            .expect("other writer"),
        1
    );
    let again: Vec<Rewrapped> = expected
        .iter()
        .enumerate()
        .map(|(i, k)| Rewrapped {
            read: k.clone(),
            key_id: "local:v1".into(),
            wrapped: vec![70 + u8::try_from(i).unwrap_or(0); 96],
        })
        .collect();
    assert_eq!(s.rewrap_patient_keys(&again).await.expect("rewrap"), 2);
    assert_eq!(s.rewrap_patient_keys(&again).await.expect("again"), 0);
    assert_eq!(s.rewrap_patient_keys(&[]).await.expect("none"), 0);
    for (k, r) in expected.iter().zip(&again) {
        let now = s.patient_key(&k.tenant, &k.subject).await.expect("read");
        let want = match k.subject.as_str() {
            "p-10" => None,
            "~dead-letters" => Some(PatientKey {
                key_id: "local:v1".into(),
                wrapped: vec![60; 80],
                ..k.clone()
            }),
            _ => Some(PatientKey {
                key_id: r.key_id.clone(),
                wrapped: r.wrapped.clone(),
                ..k.clone()
            }),
        };
        assert_eq!(now, want, "{}/{}", k.tenant, k.subject);
    }
    assert_eq!(
        s.patient_key_ids().await.expect("ids"),
        vec![("local:v1".to_string(), 4)]
    );
    assert!(
        s.patient_keys_not_wrapped_by("local:v1", None, 10)
            .await
            .expect("none left")
            .is_empty()
    );
}

/// Dead letters naming an erased patient are deleted by id; the others stay.
pub async fn erased_dead_letters_are_deleted<S: EventStore + PatientKeys>(s: Arc<S>) {
    let letter = |n: u8| DeadLetter {
        source: "mllp".into(),
        tenant: Some("cpts-test".into()),
        reason: format!("letter {n}"),
        payload: vec![n; 8],
    };
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(s.dead_letter(letter(n)).await.expect("keep"));
    }
    assert_eq!(
        s.delete_dead_letters(&[ids[0], ids[2], 999_999])
            .await
            .expect("delete"),
        2
    );
    assert_eq!(s.delete_dead_letters(&[]).await.expect("none"), 0);
    s.scrub().await.expect("scrub");
    let left = s.dead_letters(0, 10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].letter, letter(2));
}

/// Several patients' keys are read in the order asked (absent ones as `None`, a patient
/// asked twice answered twice, another tenant's key apart) and kept together: a patient
/// with a key keeps it, one given twice in a batch keeps the first, the others get theirs
/// — what [`PatientKeys::patient_key`] and [`PatientKeys::create_patient_key`] give one
/// by one.
pub async fn patient_keys_are_read_and_kept_many_at_once<S: EventStore + PatientKeys>(s: Arc<S>) {
    assert_eq!(s.patient_keys(&[]).await.expect("none asked"), vec![]);
    assert_eq!(
        s.create_patient_keys(Vec::new()).await.expect("none given"),
        vec![]
    );
    let kept = patient_key("cpts-test", "p-kept", 1);
    s.create_patient_key(kept.clone()).await.expect("one key");
    let other = patient_key("cpts-other", "p-new-1", 2);
    s.create_patient_key(other.clone())
        .await
        .expect("other tenant");
    let asked = [
        ("cpts-test", "p-new-1"),
        ("cpts-test", "p-kept"),
        ("cpts-other", "p-new-1"),
        ("cpts-test", "p-kept"),
    ];
    assert_eq!(
        s.patient_keys(&asked).await.expect("read many"),
        vec![
            None,
            Some(kept.clone()),
            Some(other.clone()),
            Some(kept.clone())
        ]
    );
    let new_1 = patient_key("cpts-test", "p-new-1", 3);
    let new_2 = patient_key("cpts-test", "p-new-2", 4);
    let stored = s
        .create_patient_keys(vec![
            new_1.clone(),
            patient_key("cpts-test", "p-kept", 5),
            new_2.clone(),
            patient_key("cpts-test", "p-new-1", 6),
        ])
        .await
        .expect("create many");
    assert_eq!(
        stored,
        vec![new_1.clone(), kept.clone(), new_2.clone(), new_1.clone()],
        "existing keys stay, the first of a patient given twice is kept"
    );
    for key in [&new_1, &new_2, &kept, &other] {
        assert_eq!(
            s.patient_key(&key.tenant, &key.subject)
                .await
                .expect("read one"),
            Some(key.clone()),
            "{} / {} is stored",
            key.tenant,
            key.subject
        );
    }
    let many: Vec<(String, String)> = (0..1_500)
        .map(|i| ("cpts-test".to_string(), format!("p-bulk-{i}")))
        .collect();
    let keys: Vec<PatientKey> = many
        .iter()
        .enumerate()
        .map(|(i, (t, p))| patient_key(t, p, (i % 250) as u8))
        .collect();
    assert_eq!(
        s.create_patient_keys(keys.clone())
            .await
            .expect("a large batch"),
        keys
    );
    let asked: Vec<(&str, &str)> = many.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect();
    assert_eq!(
        s.patient_keys(&asked).await.expect("a large read"),
        keys.into_iter().map(Some).collect::<Vec<_>>()
    );
}
