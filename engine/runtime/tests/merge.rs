//! Identity merges on a real SQLite log: the retired key's instances follow the person to
//! the surviving key (records, projections, cache), later events under the surviving key
//! reach them, replay rebuilds the same state, and duplicates of one person's pathway are
//! resolved as the pathway's own `on_repeat` rule would have.

mod support;

use std::path::Path;

use jiff::Timestamp;
use parcours_core::events::{Event, EventType};
use parcours_core::state::{Change, Recorded, Status};
use parcours_runtime::{Engine, EngineConfig, IngestOutcome, Refused, RuntimeError, codec, replay};
use parcours_store::{EventStore, InstanceRow, TimerScope, WorkFilter, WorkStatus};
use parcours_store_sqlite::SqliteStore;
use support::{TENANT, discharge, event, hours, merged, registry, t0, weight};

/// The retired key (the duplicate record the hospital merges away).
const A: &str = "p-retired";
/// The surviving key.
const B: &str = "p-survivor";

fn diabetes(id: &str, subject: &str, at: Timestamp) -> Event {
    event(
        id,
        subject,
        at,
        EventType::DiagnosisRecorded,
        serde_json::json!({"code": "E11.9"}),
    )
}

fn consent(id: &str, subject: &str, at: Timestamp) -> Event {
    event(
        id,
        subject,
        at,
        EventType::ConsentGiven,
        serde_json::json!({}),
    )
}

async fn open(db: &Path, config: EngineConfig) -> Engine<SqliteStore> {
    let store = SqliteStore::open(db).await.expect("open");
    Engine::open(store, registry(), config)
        .await
        .expect("engine")
}

fn committed(outcome: IngestOutcome) -> Vec<String> {
    match outcome {
        IngestOutcome::Committed { instances, .. } => instances,
        other => panic!("not committed: {other:?}"),
    }
}

async fn rows(engine: &Engine<SqliteStore>, subject: &str) -> Vec<InstanceRow> {
    engine
        .store()
        .instances_of(TENANT, subject)
        .await
        .expect("instances")
}

/// Every record of an instance stream, with the subject it was stored under.
async fn records(engine: &Engine<SqliteStore>, stream: &str) -> Vec<(String, Recorded)> {
    let mut out = Vec::new();
    for r in engine.store().read_stream(stream, 0).await.expect("read") {
        for rec in codec::decode_instance(&r).expect("decodes") {
            out.push((r.record.subject.clone(), rec));
        }
    }
    out
}

async fn assert_replay_agrees(engine: &Engine<SqliteStore>) {
    let (report, replayed) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
    // The live states equal the rebuilt ones.
    for (id, (_, state)) in &replayed.states {
        if let Some((_, live)) = engine.cached_instance(id) {
            assert_eq!(live, state, "{id}: live state equals replay");
        }
    }
}

#[tokio::test]
async fn a_merge_moves_the_retired_patients_instance_to_the_surviving_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("log.db");
    let mut engine = open(&db, EngineConfig::default()).await;

    // Discharged under the duplicate record A: enrolled, waiting for consent.
    let enrolled = committed(
        engine
            .ingest(&discharge("adt-a", A, t0(), "V1"))
            .await
            .expect("discharge"),
    );
    assert_eq!(enrolled.len(), 1, "heart failure only");
    let id = enrolled[0].clone();
    let open_before = engine
        .store()
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            ..WorkFilter::default()
        })
        .await
        .expect("worklist");
    assert!(
        open_before
            .iter()
            .any(|w| w.code == "obtain-consent" && w.subject == A),
        "{open_before:?}"
    );
    let timers_before = engine.store().count_timers().await.expect("count");
    assert!(timers_before > 0);

    // A's record is merged into B.
    let merge = merged("a40-1", B, A, hours(3));
    assert_eq!(
        committed(engine.ingest(&merge).await.expect("merge")),
        std::slice::from_ref(&id)
    );

    // The instance belongs to B: its row, its timers, its open work items.
    assert!(rows(&engine, A).await.is_empty(), "nothing left under A");
    let b_rows = rows(&engine, B).await;
    assert_eq!(b_rows.len(), 1);
    assert_eq!(b_rows[0].stream, id);
    assert_eq!(b_rows[0].status, "active");
    let timers = engine
        .store()
        .due_timers(Timestamp::MAX, 1000, &TimerScope::All)
        .await
        .expect("timers");
    assert_eq!(timers.len() as u64, timers_before, "no timer lost or added");
    assert!(timers.iter().all(|t| t.subject == B), "{timers:?}");
    // The timers are in B's partition now, fired by B's owner.
    let count = (2..64)
        .find(|n| {
            parcours_store::partition_of(TENANT, A, *n)
                != parcours_store::partition_of(TENANT, B, *n)
        })
        .expect("a partition count that separates the two keys");
    let in_partition_of = |subject: &str| TimerScope::Partitions {
        count,
        owned: vec![parcours_store::partition_of(TENANT, subject, count)],
    };
    let due = |scope: TimerScope| {
        let store = engine.store().clone();
        async move {
            store
                .due_timers(Timestamp::MAX, 1000, &scope)
                .await
                .expect("timers")
                .len()
        }
    };
    assert_eq!(due(in_partition_of(B)).await, timers.len());
    assert_eq!(due(in_partition_of(A)).await, 0);
    let open_after = engine
        .store()
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            ..WorkFilter::default()
        })
        .await
        .expect("worklist");
    assert_eq!(open_after.len(), open_before.len(), "the same open work");
    for (before, after) in open_before.iter().zip(&open_after) {
        assert_eq!(after.subject, B);
        assert_eq!(
            (&after.id, &after.title, &after.opened_by, after.status),
            (&before.id, &before.title, &before.opened_by, before.status),
            "only the subject changed"
        );
    }
    // In memory too; and replay rebuilds the same rows from the records.
    let (_, live) = engine.cached_instance(&id).expect("cached");
    assert_eq!(&*live.subject, B);
    assert_eq!(live.status, Status::Active);
    assert_replay_agrees(&engine).await;

    // The history says why: one `instance.rekeyed`, caused by the merge.
    let history = records(&engine, &id).await;
    let (subject, rekeyed) = history
        .iter()
        .find(|(_, r)| matches!(r.change, Change::Rekeyed { .. }))
        .expect("rekeyed");
    assert_eq!(subject, B, "stored under the surviving key");
    assert_eq!(&*rekeyed.cause, "a40-1");
    assert_eq!(rekeyed.rule.as_deref(), Some("identity/merge"));
    assert_eq!(rekeyed.change.type_name(), "instance.rekeyed");
    assert_eq!(
        rekeyed.change,
        Change::Rekeyed {
            from: A.into(),
            to: B.into()
        }
    );
    assert!(
        history
            .iter()
            .take_while(|(_, r)| r.id != rekeyed.id)
            .all(|(s, _)| s == A),
        "the records before the merge keep the key they were made under"
    );

    // The same merge again: a duplicate.
    assert_eq!(
        engine.ingest(&merge).await.expect("again"),
        IngestOutcome::Duplicate
    );

    // Consent, then a weight, under B reach the re-keyed instance.
    assert_eq!(
        committed(
            engine
                .ingest(&consent("consent-b", B, hours(5)))
                .await
                .expect("consent")
        ),
        std::slice::from_ref(&id)
    );
    let gp = engine
        .store()
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            role: Some("gp".into()),
            ..WorkFilter::default()
        })
        .await
        .expect("worklist");
    assert!(
        gp.iter()
            .any(|w| w.code == "gp-visit" && w.subject == B && w.status == WorkStatus::Open),
        "{gp:?}"
    );
    assert!(
        !engine
            .store()
            .work_items(&WorkFilter {
                tenant: TENANT.into(),
                ..WorkFilter::default()
            })
            .await
            .expect("worklist")
            .iter()
            .any(|w| w.code == "obtain-consent"),
        "the consent task closed"
    );
    assert_eq!(
        committed(
            engine
                .ingest(&weight("w-b", B, hours(30), 81.0))
                .await
                .expect("weight")
        ),
        std::slice::from_ref(&id)
    );
    // An event under the retired key reaches nothing (and enrols nothing: not a discharge).
    assert!(
        committed(
            engine
                .ingest(&weight("w-a", A, hours(31), 81.0))
                .await
                .expect("weight")
        )
        .is_empty()
    );
    assert_replay_agrees(&engine).await;

    // After a restart the instance is loaded under B, and its timers fire under B.
    drop(engine);
    let mut engine = open(&db, EngineConfig::default()).await;
    assert_eq!(
        committed(
            engine
                .ingest(&weight("w-b2", B, hours(54), 81.2))
                .await
                .expect("weight")
        ),
        std::slice::from_ref(&id)
    );
    let fired = engine.advance(hours(24 * 10)).await.expect("advance");
    assert!(fired > 0, "timers fired");
    assert!(
        records(&engine, &id)
            .await
            .iter()
            .any(|(_, r)| matches!(r.change, Change::TimerFired { .. })),
        "a re-keyed timer fired for the instance"
    );
    assert!(rows(&engine, A).await.is_empty());
    assert_replay_agrees(&engine).await;
}

#[tokio::test]
async fn a_merge_into_itself_is_refused_and_one_with_nothing_to_move_is_only_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    committed(
        engine
            .ingest(&discharge("adt-b", B, t0(), "V1"))
            .await
            .expect("discharge"),
    );

    // A key merged into itself: refused with a reason, nothing stored.
    let selfish = merged("a40-self", B, B, hours(1));
    match engine.ingest(&selfish).await {
        Err(RuntimeError::Refused(Refused::Invalid(reason))) => {
            assert!(reason.contains("merged into itself"), "{reason}");
            assert!(
                !reason.contains(B),
                "no patient key in the reason: {reason}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(!engine.store().contains("a40-self").await.expect("contains"));
    let empty = merged("a40-empty", B, "", hours(1));
    assert!(matches!(
        engine.ingest(&empty).await,
        Err(RuntimeError::Refused(Refused::Invalid(_)))
    ));

    // A retired key with no instance: recorded, nothing moves.
    let timers = engine.store().count_timers().await.expect("count");
    assert_eq!(
        engine
            .ingest(&merged("a40-nothing", B, "p-unknown", hours(2)))
            .await
            .expect("merge"),
        IngestOutcome::Committed {
            events: 0,
            effects: 0,
            instances: vec![],
            warnings: vec![],
        }
    );
    assert!(
        engine
            .store()
            .contains("a40-nothing")
            .await
            .expect("contains")
    );
    assert_eq!(rows(&engine, B).await.len(), 1);
    assert_eq!(engine.store().count_timers().await.expect("count"), timers);
    assert_replay_agrees(&engine).await;
}

/// Both keys followed on heart failure (`on_repeat: restart`): the instance of the most
/// recent stay stays, whichever key it was under; the other is re-keyed if needed and
/// closed `merged`, its open work withdrawn.
#[tokio::test]
async fn restart_pathways_keep_the_most_recent_stay() {
    for retired_is_newer in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
        let (first, second) = if retired_is_newer { (B, A) } else { (A, B) };
        let older = committed(
            engine
                .ingest(&discharge("adt-1", first, t0(), "V1"))
                .await
                .expect("discharge"),
        )[0]
        .clone();
        let newer = committed(
            engine
                .ingest(&discharge("adt-2", second, hours(24 * 5), "V2"))
                .await
                .expect("discharge"),
        )[0]
        .clone();
        let mut changed = committed(
            engine
                .ingest(&merged("a40-1", B, A, hours(24 * 6)))
                .await
                .expect("merge"),
        );
        changed.sort();
        // The retired key's instance is re-keyed, the older one closes: the survivor's
        // instance changes only when it is the older one.
        let mut expected = vec![older.clone()];
        if retired_is_newer {
            expected.push(newer.clone());
        }
        expected.sort();
        assert_eq!(changed, expected);

        let b_rows = rows(&engine, B).await;
        assert_eq!(b_rows.len(), 2, "both follow the person");
        assert!(rows(&engine, A).await.is_empty());
        let row = |id: &str| b_rows.iter().find(|r| r.stream == id).expect("row").clone();
        assert_eq!(row(&newer).status, "active");
        assert_eq!(row(&older).status, "closed");
        assert_eq!(row(&older).closed_reason.as_deref(), Some("merged"));
        // The closed one's work and timers are gone; the kept one's carry B.
        let work = engine
            .store()
            .work_items(&WorkFilter {
                tenant: TENANT.into(),
                ..WorkFilter::default()
            })
            .await
            .expect("worklist");
        assert!(!work.is_empty());
        assert!(
            work.iter().all(|w| w.stream == newer && w.subject == B),
            "{work:?}"
        );
        let timers = engine
            .store()
            .due_timers(Timestamp::MAX, 1000, &TimerScope::All)
            .await
            .expect("timers");
        assert!(!timers.is_empty());
        assert!(timers.iter().all(|t| t.stream == newer && t.subject == B));
        let closing = records(&engine, &older).await;
        let closed = closing
            .iter()
            .find(|(_, r)| matches!(r.change, Change::Closed { .. }))
            .expect("closed");
        assert_eq!(closed.1.rule.as_deref(), Some("identity/merge"));
        assert!(
            closing
                .iter()
                .any(|(_, r)| matches!(r.change, Change::TaskClosed { .. })),
            "the open task is withdrawn (an effect for the care team)"
        );

        // A consent under B reaches the one active instance only.
        assert_eq!(
            committed(
                engine
                    .ingest(&consent("consent-b", B, hours(24 * 6 + 1)))
                    .await
                    .expect("consent")
            ),
            std::slice::from_ref(&newer)
        );
        assert_replay_agrees(&engine).await;
    }
}

/// Both keys followed on type 2 diabetes (`on_repeat: ignore`): the instance enrolled
/// first stays (a second diagnosis would not have enrolled the person again).
#[tokio::test]
async fn ignore_pathways_keep_the_first_enrolment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let first = committed(engine.ingest(&diabetes("dx-a", A, t0())).await.expect("dx"))[0].clone();
    let later = committed(
        engine
            .ingest(&diabetes("dx-b", B, hours(24 * 30)))
            .await
            .expect("dx"),
    )[0]
    .clone();
    committed(
        engine
            .ingest(&merged("a40-1", B, A, hours(24 * 31)))
            .await
            .expect("merge"),
    );
    let b_rows = rows(&engine, B).await;
    let row = |id: &str| b_rows.iter().find(|r| r.stream == id).expect("row").clone();
    assert_eq!(row(&first).status, "active", "the first enrolment stays");
    assert_eq!(row(&later).status, "closed");
    assert_eq!(row(&later).closed_reason.as_deref(), Some("merged"));
    assert!(rows(&engine, A).await.is_empty());
    assert_replay_agrees(&engine).await;
}

/// A closed instance follows the person too (its history), and does not count as a
/// duplicate: the survivor's active instance is untouched.
#[tokio::test]
async fn closed_instances_are_rekeyed_as_they_are() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    let old = committed(
        engine
            .ingest(&discharge("adt-a", A, t0(), "V1"))
            .await
            .expect("discharge"),
    )[0]
    .clone();
    engine
        .ingest(&event(
            "transfer-a",
            A,
            hours(2),
            EventType::PatientTransferred,
            serde_json::json!({}),
        ))
        .await
        .expect("transfer");
    let current = committed(
        engine
            .ingest(&discharge("adt-b", B, hours(24), "V2"))
            .await
            .expect("discharge"),
    )[0]
    .clone();
    assert_eq!(
        committed(
            engine
                .ingest(&merged("a40-1", B, A, hours(48)))
                .await
                .expect("merge")
        ),
        std::slice::from_ref(&old),
        "only the retired instance changes"
    );
    let b_rows = rows(&engine, B).await;
    let row = |id: &str| b_rows.iter().find(|r| r.stream == id).expect("row").clone();
    assert_eq!(row(&old).status, "closed");
    assert_eq!(row(&old).closed_reason.as_deref(), Some("transferred"));
    assert_eq!(row(&current).status, "active");
    assert_replay_agrees(&engine).await;
}

/// Events for the retired key, the merge and events for the survivor in one batch: the
/// same records (and subjects), projections and states as one event at a time.
#[tokio::test]
async fn a_merge_inside_a_batch_equals_one_event_at_a_time() {
    let events = vec![
        discharge("adt-a", A, t0(), "V1"),
        discharge("adt-b", B, hours(1), "V2"),
        consent("consent-a", A, hours(2)),
        merged("a40-1", B, A, hours(3)),
        consent("consent-b", B, hours(4)),
        weight("w-b", B, hours(5), 80.0),
        merged("a40-2", "p-third", B, hours(6)),
        weight("w-c", "p-third", hours(7), 80.5),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let small = EngineConfig {
        snapshot_every: 2,
        ..EngineConfig::default()
    };
    let mut batched = open(&dir.path().join("batched.db"), small.clone()).await;
    let out = batched
        .ingest_batch(&events, Default::default())
        .await
        .expect("batch");
    assert!(
        out.iter()
            .all(|o| matches!(o, Ok(IngestOutcome::Committed { .. }))),
        "{out:?}"
    );
    let mut single = open(&dir.path().join("single.db"), small).await;
    for e in &events {
        single.ingest(e).await.expect("ingest");
    }
    for engine in [&mut batched, &mut single] {
        engine.advance(hours(24 * 12)).await.expect("advance");
    }
    let a = replay::replay(batched.store(), batched.registry())
        .await
        .expect("replay");
    let b = replay::replay(single.store(), single.registry())
        .await
        .expect("replay");
    assert_eq!(a.states.len(), 2);
    assert_eq!(a.projections, b.projections, "same projections");
    for (id, (_, state)) in &a.states {
        assert_eq!(Some(state), b.states.get(id).map(|(_, s)| s), "{id}");
        assert_eq!(&*state.subject, "p-third");
        let subjects = |recs: Vec<(String, Recorded)>| {
            recs.into_iter().map(|(s, r)| (s, r.id)).collect::<Vec<_>>()
        };
        assert_eq!(
            subjects(records(&batched, id).await),
            subjects(records(&single, id).await),
            "{id}: the same records under the same subjects"
        );
    }
    assert!(rows(&batched, A).await.is_empty());
    assert!(rows(&batched, B).await.is_empty());
    assert_eq!(rows(&batched, "p-third").await.len(), 2);
    assert_replay_agrees(&batched).await;
    assert_replay_agrees(&single).await;
}

/// An event stored under the retired key, whose acknowledgement was lost, sent again
/// after the merge — naming the surviving key (the sender's record was merged) or still
/// the retired one — is the same event: a duplicate, through a look-up first
/// (`ingest_batch`) and through the service's commit refused for its stored id; the
/// scale-out fronts' judgement (`resend::known`) agrees. The same id under a key not
/// merged into the stored one, or at another clinical time, is still an id reused.
#[tokio::test]
async fn a_resend_after_a_merge_is_a_duplicate_under_either_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db"), EngineConfig::default()).await;
    committed(
        engine
            .ingest(&discharge("adt-a", A, t0(), "V1"))
            .await
            .expect("discharge"),
    );
    let result = weight("w-1", A, hours(24), 80.0);
    engine.ingest(&result).await.expect("weight");
    engine
        .ingest(&discharge("adt-b", B, hours(1), "V2"))
        .await
        .expect("the survivor's discharge");
    engine
        .ingest(&merged("a40-1", B, A, hours(30)))
        .await
        .expect("merge");
    let inbound = |engine: &Engine<SqliteStore>, subject: &str| {
        let stream = codec::inbound_stream(TENANT, subject);
        let store = engine.store().clone();
        async move {
            store
                .read_stream(&stream, 0)
                .await
                .expect("inbound")
                .into_iter()
                .map(|r| r.record.id)
                .collect::<Vec<_>>()
        }
    };
    let before = (inbound(&engine, A).await, inbound(&engine, B).await);

    let mut resent = result.clone();
    resent.subject = B.into();
    for again in [&resent, &result] {
        assert_eq!(
            engine.ingest(again).await.expect("a duplicate"),
            IngestOutcome::Duplicate,
            "resent under {}",
            again.subject
        );
    }

    // Decided without a look-up (the service's `prepare_batch`): the commit is refused
    // for its stored id, and the batch tried again is answered a duplicate.
    let events = [resent.clone()];
    let mut prepared = engine
        .prepare_batch(&events, Default::default())
        .await
        .expect("prepared");
    let commit = prepared.take_commit().expect("a commit");
    let written = parcours_runtime::write_commit(engine.store(), commit)
        .await
        .expect("written");
    assert!(written.is_none(), "the stored id stops the commit");
    assert!(matches!(
        engine.finish_batch(&events, prepared, false),
        Err(RuntimeError::Raced)
    ));
    let out = engine
        .ingest_batch(&events, Default::default())
        .await
        .expect("retried");
    assert_eq!(out, [Ok(IngestOutcome::Duplicate)]);

    // Another key, not merged into the stored one; the survivor at another time.
    let mut other = result.clone();
    other.subject = "p-someone-else".into();
    let mut later = resent.clone();
    later.occurred_at = hours(25);
    for reused in [&other, &later] {
        let err = engine.ingest(reused).await.expect_err("an id reused");
        assert!(
            matches!(err, RuntimeError::Refused(Refused::IdReused(_))),
            "{err:?}"
        );
    }
    assert_eq!(
        (inbound(&engine, A).await, inbound(&engine, B).await),
        before,
        "the log holds the result once, under the key it came with"
    );

    // What a forwarding front answers for ids the log holds, before forwarding.
    let fresh = weight("w-2", B, hours(40), 81.0);
    let mut fresh_again = fresh.clone();
    fresh_again.occurred_at = hours(41);
    let judged = parcours_runtime::resend::known(
        engine.store(),
        &[
            resent.clone(),
            result.clone(),
            other,
            later,
            fresh.clone(),
            fresh.clone(),
            fresh_again,
        ],
    )
    .await
    .expect("judged");
    assert_eq!(judged[0], Some(Ok(IngestOutcome::Duplicate)));
    assert_eq!(judged[1], Some(Ok(IngestOutcome::Duplicate)));
    assert!(matches!(judged[2], Some(Err(Refused::IdReused(_)))));
    assert!(matches!(judged[3], Some(Err(Refused::IdReused(_)))));
    assert_eq!(judged[4], None, "not in the log: forwarded");
    assert_eq!(
        judged[5],
        Some(Ok(IngestOutcome::Duplicate)),
        "the batch's second copy"
    );
    assert!(matches!(judged[6], Some(Err(Refused::IdReused(_)))));
}
