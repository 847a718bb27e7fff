//! A log an earlier release wrote — merges committed without their retired key's record
//! in `identity/<tenant>/<retired key>` — gets those records when an engine first opens
//! it (`parcours_runtime::backfill`), on SQLite and PostgreSQL: a late weight under the
//! retired key then reaches the survivor's instance and raises its alert instead of
//! enrolling a second patient; a retired key linked after its merge keeps its link; a
//! loop of merges records what a merge's commit records; the mark is set and a second
//! start writes nothing; engines starting together write each record once; replay agrees.
//!
//! The earlier release's log is made honestly from this release's: the merges are
//! committed, then their retirement records (and the mark) are deleted by SQL in the
//! test's private database, which is what the earlier release left.

mod support;

use std::path::Path;

use parcours_runtime::backfill::{self, Backfilled, RETIREMENTS_MARK};
use parcours_runtime::links::resolve;
use parcours_runtime::{Engine, EngineConfig, IngestOutcome, codec, replay};
use parcours_store::{
    Commit, EventStore, IndexChanges, StreamWrite, WorkFilter, WorkKind, WorkStatus,
};
use parcours_store_postgres::PgStore;
use parcours_store_sqlite::SqliteStore;
use sqlx::Connection as _;
use support::pg::TestDb;
use support::{TENANT, discharge, hours, linked, merged, registry, weight};

/// Retired into [`B`] by the earlier release.
const A: &str = "p-old-ipp";
/// [`A`]'s survivor.
const B: &str = "p-ipp";
/// Retired into [`E`], then linked to [`INS`] (the earlier release let it: no record).
const D: &str = "p-other-old-ipp";
const E: &str = "p-other-ipp";
const INS: &str = "p-ins";
/// [`G`] merged into [`F`], then [`F`] into [`G`]: a loop.
const F: &str = "p-loop-f";
const G: &str = "p-loop-g";

/// What the backfill of [`earlier_log`] does: four merges, A's and G's records written,
/// D's link kept, the loop's second merge left (its survivor leads to its retired key).
const EXPECTED: Backfilled = Backfilled {
    merges: 4,
    written: 2,
    present: 1,
    skipped: 1,
};

fn committed(outcome: &IngestOutcome) -> Vec<String> {
    match outcome {
        IngestOutcome::Committed { instances, .. } => instances.clone(),
        other => panic!("not committed: {other:?}"),
    }
}

/// Every record of `key`'s identity stream: (type, subject, payload).
async fn identity_records<S: EventStore>(store: &S, key: &str) -> Vec<(String, String, String)> {
    store
        .read_stream(&codec::identity_stream(TENANT, key), 0)
        .await
        .expect("identity stream")
        .into_iter()
        .map(|r| {
            (
                r.record.record_type,
                r.record.subject,
                String::from_utf8(r.record.payload).expect("json"),
            )
        })
        .collect()
}

async fn identity_count<S: EventStore>(store: &S) -> usize {
    store
        .read_streams_by_prefix("identity/")
        .await
        .expect("identity streams")
        .len()
}

/// This release's log of the merges (A into B after a discharge and a weight under A,
/// D into E, G into F, F into G): the enrolled instance.
async fn merges_committed<S: EventStore + Clone + 'static>(store: S) -> String {
    let mut engine = Engine::open(store, registry(), EngineConfig::default())
        .await
        .expect("engine");
    let enrolled = committed(
        &engine
            .ingest(&discharge("d-1", A, hours(0), "V1"))
            .await
            .expect("discharge"),
    );
    assert_eq!(enrolled.len(), 1, "heart failure");
    engine
        .ingest(&weight("w-0", A, hours(20), 80.0))
        .await
        .expect("weight");
    for m in [
        merged("a40-1", B, A, hours(22)),
        merged("a40-2", E, D, hours(23)),
        merged("a40-3", F, G, hours(24)),
        merged("a40-4", G, F, hours(25)),
    ] {
        engine.ingest(&m).await.expect("merge");
    }
    assert_eq!(identity_count(engine.store()).await, 3, "A, D, G retired");
    enrolled[0].clone()
}

/// The earlier release's log: [`merges_committed`] without the retirement records (the
/// caller deletes them and the mark), then D linked to the INS (a link's record, which
/// the earlier release could commit: D had none).
async fn linked_after_merge<S: EventStore>(store: &S) {
    assert_eq!(identity_count(store).await, 0, "the records were deleted");
    assert_eq!(
        store.checkpoint(RETIREMENTS_MARK).await.expect("mark"),
        None
    );
    let link = linked("l-1", INS, D, hours(26));
    store
        .append(Commit {
            writes: vec![StreamWrite {
                stream: codec::identity_stream(TENANT, D),
                expected_version: 0,
                records: vec![codec::encode_identity_link(&link, D)],
            }],
            ..Commit::default()
        })
        .await
        .expect("link");
}

/// After the backfill: where each key leads, a late weight under A, a second start.
async fn backfilled<S: EventStore + Clone + 'static>(store: S, enrolled: &str) {
    let mut engine = Engine::open(store, registry(), EngineConfig::default())
        .await
        .expect("engine");
    let store = engine.store().clone();
    assert!(
        store
            .checkpoint(RETIREMENTS_MARK)
            .await
            .expect("mark")
            .is_some(),
        "the mark is set"
    );
    let a = identity_records(&store, A).await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].0.as_str(), a[0].1.as_str()), ("identity.merged", B));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&a[0].2).expect("json"),
        serde_json::json!({"merged_subject": A, "subject": B})
    );
    let d = identity_records(&store, D).await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].0.as_str(), d[0].1.as_str()), ("identity.linked", INS));
    let g = identity_records(&store, G).await;
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!((g[0].0.as_str(), g[0].1.as_str()), ("identity.merged", F));
    assert!(identity_records(&store, F).await.is_empty(), "no loop");

    // A second start reads the mark and writes nothing.
    let (records, end) = (
        identity_count(&store).await,
        store.last_position().await.expect("end"),
    );
    let again = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    drop(again);
    assert_eq!(backfill::retirements(&store).await.expect("backfill"), None);
    assert_eq!(identity_count(&store).await, records);
    assert_eq!(store.last_position().await.expect("end"), end);

    // A lab's weight under the old IPP, 3 kg up: the survivor's instance, its alert.
    let plan = resolve(&store, vec![weight("w-1", A, hours(30), 83.0)])
        .await
        .expect("resolved");
    assert_eq!(plan.submit.len(), 1);
    assert_eq!(plan.submit[0].subject, B);
    let outcomes = engine
        .ingest_batch(&plan.submit, IndexChanges::default())
        .await
        .expect("ingested");
    assert_eq!(
        committed(outcomes[0].as_ref().expect("accepted")),
        [enrolled]
    );
    assert!(
        store
            .instances_of(TENANT, A)
            .await
            .expect("instances")
            .is_empty(),
        "no second patient"
    );
    let alerts = store
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            kind: Some(WorkKind::Alert),
            stream: Some(enrolled.to_owned()),
            statuses: WorkStatus::ALL.to_vec(),
            ..WorkFilter::default()
        })
        .await
        .expect("work items");
    assert!(alerts.iter().any(|w| w.code == "weight-gain"), "{alerts:?}");
    let (report, _) = replay::verify(&store, engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// Delete the retirement records and the mark from a SQLite log (closed meanwhile).
async fn strip_sqlite(path: &Path) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("sqlite");
    for sql in [
        "DELETE FROM records WHERE stream LIKE 'identity/%' AND record_type = 'identity.merged'",
        "DELETE FROM checkpoints WHERE name = 'identity-retirements-v1'",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.expect("closed");
}

/// The same on PostgreSQL (its log refuses deletions: the trigger is set aside).
async fn strip_postgres(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
    for sql in [
        "ALTER TABLE records DISABLE TRIGGER records_append_only",
        "DELETE FROM records WHERE stream LIKE 'identity/%' AND record_type = 'identity.merged'",
        "DELETE FROM streams s WHERE s.stream LIKE 'identity/%' \
         AND NOT EXISTS (SELECT 1 FROM records r WHERE r.stream = s.stream)",
        "ALTER TABLE records ENABLE TRIGGER records_append_only",
        "DELETE FROM checkpoints WHERE name = 'identity-retirements-v1'",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.expect("closed");
}

#[tokio::test]
async fn earlier_merges_lead_to_their_survivors_after_the_upgrade_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let enrolled = merges_committed(store.clone()).await;
    store.close().await;
    strip_sqlite(&path).await;
    let store = SqliteStore::open(&path).await.expect("open");
    linked_after_merge(&store).await;
    // What the engine's start does, counted.
    assert_eq!(
        backfill::retirements(&store).await.expect("backfill"),
        Some(EXPECTED)
    );
    store.close().await;
    strip_sqlite(&path).await;
    let store = SqliteStore::open(&path).await.expect("open");
    // Only the retirements were deleted again: D's link stays.
    assert_eq!(identity_count(&store).await, 1);
    backfilled(store, &enrolled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_merges_lead_to_their_survivors_after_the_upgrade_on_postgresql() {
    let (db, url) = TestDb::create("backfill").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    let enrolled = merges_committed(pg.clone()).await;
    strip_postgres(&url).await;
    linked_after_merge(&pg).await;
    backfilled(pg.clone(), &enrolled).await;
    pg.close().await;
    db.drop_now().await;
}

/// Two engines starting together on one PostgreSQL log: each record written once, no
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_starting_together_backfill_once_on_postgresql() {
    let (db, url) = TestDb::create("backfill_together").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    let enrolled = merges_committed(pg.clone()).await;
    strip_postgres(&url).await;
    linked_after_merge(&pg).await;
    let other = PgStore::connect(&url).await.expect("connect");
    let (one, two) = tokio::join!(backfill::retirements(&pg), backfill::retirements(&other));
    let done: Vec<Backfilled> = [one, two]
        .into_iter()
        .filter_map(|r| r.expect("backfill"))
        .collect();
    assert!(!done.is_empty());
    assert_eq!(
        done.iter().map(|d| d.written).sum::<u64>(),
        EXPECTED.written
    );
    for d in &done {
        assert_eq!(d.merges, EXPECTED.merges, "{d:?}");
        assert_eq!(d.written + d.present + d.skipped, d.merges, "{d:?}");
    }
    other.close().await;
    backfilled(pg.clone(), &enrolled).await;
    pg.close().await;
    db.drop_now().await;
}
