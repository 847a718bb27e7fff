//! A key an `identity.merged` retired leads to its survivor, on SQLite and PostgreSQL:
//! the merge records it in the retired key's identity stream (keys only), so a late
//! message under the retired key — resolved by the intake fronts (`links::resolve`), by
//! the NATS partition consumers (`links::relink`), or followed at commit
//! (`Engine::follow_links`) — reaches the survivor's instances instead of enrolling a
//! second patient; through a chain of merges too (A into B, then B into C); an event
//! stored under the retired key and resent is a duplicate; an erasure named by the
//! retired key reaches the survivor (`links::person_keys`); replay agrees.

mod support;

use parcours_core::events::Event;
use parcours_runtime::links::{PERSON_KEYS_MAX, Relinked, Slot, person_keys, relink, resolve};
use parcours_runtime::{Engine, EngineConfig, IngestOutcome, Refused, codec, replay};
use parcours_store::{EventStore, IndexChanges};
use support::{TENANT, discharge, hours, linked, merged, on_both_logs, registry, weight};

/// The key the hospital merges away (the old IPP's).
const A: &str = "p-old-ipp";
/// The surviving key.
const B: &str = "p-ipp";
/// A key B is merged into later.
const C: &str = "p-ipp-last";
/// The person's INS's key.
const INS: &str = "p-ins";

fn committed(outcome: &IngestOutcome) -> Vec<String> {
    match outcome {
        IngestOutcome::Committed { instances, .. } => instances.clone(),
        other => panic!("not committed: {other:?}"),
    }
}

/// What a front does: resolve the keys through the log, then submit.
async fn through_front<S: EventStore + Clone>(
    engine: &mut Engine<S>,
    events: Vec<Event>,
) -> (Vec<Event>, Vec<IngestOutcome>) {
    let plan = resolve(engine.store(), events).await.expect("resolved");
    let submitted = plan.submit.clone();
    let results = engine
        .ingest_batch(&plan.submit, IndexChanges::default())
        .await
        .expect("ingested")
        .into_iter()
        .map(|r| r.expect("accepted"))
        .collect();
    (submitted, results)
}

/// The instance ids the projection lists under `subject`.
async fn instances<S: EventStore>(store: &S, subject: &str) -> Vec<String> {
    store
        .instances_of(TENANT, subject)
        .await
        .expect("instances")
        .into_iter()
        .map(|r| r.stream)
        .collect()
}

/// The latest record of `key`'s identity stream: (type, subject, payload).
async fn identity_record<S: EventStore>(store: &S, key: &str) -> Option<(String, String, String)> {
    store
        .read_stream(&codec::identity_stream(TENANT, key), 0)
        .await
        .expect("identity stream")
        .pop()
        .map(|r| {
            (
                r.record.record_type,
                r.record.subject,
                String::from_utf8(r.record.payload).expect("json"),
            )
        })
}

async fn assert_replay_agrees<S: EventStore + Clone + 'static>(engine: &Engine<S>) {
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// A merge, then late messages under the retired key.
async fn late_messages_reach_the_survivor<S: EventStore + Clone + 'static>(store: S) {
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
        .ingest(&merged("a40-1", B, A, hours(2)))
        .await
        .expect("merge");
    assert_eq!(instances(engine.store(), B).await, enrolled);

    // The merge recorded where the retired key leads: keys only.
    let (ty, subject, payload) = identity_record(engine.store(), A)
        .await
        .expect("the retired key's record");
    assert_eq!((ty.as_str(), subject.as_str()), ("identity.merged", B));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).expect("json"),
        serde_json::json!({"merged_subject": A, "subject": B})
    );

    // A lab's weight and another ward's discharge, still under the old IPP.
    let (submitted, outcomes) = through_front(
        &mut engine,
        vec![
            weight("w-1", A, hours(30), 80.0),
            discharge("d-2", A, hours(40), "V2"),
        ],
    )
    .await;
    assert!(submitted.iter().all(|e| e.subject == B), "{submitted:?}");
    for outcome in &outcomes {
        assert_eq!(committed(outcome), enrolled, "the survivor's instance");
    }
    assert!(
        instances(engine.store(), A).await.is_empty(),
        "no new patient"
    );
    assert_eq!(instances(engine.store(), B).await, enrolled);
    let under_a = engine
        .store()
        .read_stream(&codec::inbound_stream(TENANT, A), 0)
        .await
        .expect("inbound");
    assert_eq!(under_a.len(), 1, "only the discharge before the merge");

    // Resolved before the merge committed: followed at commit.
    let mut late = vec![weight("w-2", A, hours(41), 81.0)];
    assert_eq!(engine.follow_links(&mut late), 1);
    assert_eq!(late[0].subject, B);
    // Published on NATS under the old key: taken to the survivor's partition.
    let mut keyed = vec![weight("w-3", A, hours(42), 82.0)];
    assert_eq!(
        relink(engine.store(), &mut keyed).await.expect("relinked"),
        [Relinked::Moved { from: A.into() }]
    );
    assert_eq!(keyed[0].subject, B);
    // A second A40 naming the retired key again: one person already.
    let plan = resolve(engine.store(), vec![merged("a40-2", B, A, hours(43))])
        .await
        .expect("resolved");
    assert!(plan.submit.is_empty(), "{plan:?}");

    // An erasure named by the retired key reaches the survivor.
    let person = person_keys(engine.store(), TENANT, &[A.to_owned()], PERSON_KEYS_MAX)
        .await
        .expect("person keys");
    assert_eq!(person.keys, [A, B]);

    // A message linking the retired key to an INS: its key leads to the survivor
    // already, which the INS is not (yet): refused whole, for identity vigilance.
    let plan = resolve(engine.store(), vec![linked("l-1", INS, A, hours(44))])
        .await
        .expect("resolved");
    assert!(
        matches!(&plan.slots[..], [Slot::Answered(Err(Refused::Invalid(r)))]
            if r.contains("identity link refused") && r.contains(A) && r.contains(B)),
        "{plan:?}"
    );
    // The survivor linked to the INS: the retired key leads on to it.
    let (_, outcomes) = through_front(&mut engine, vec![linked("l-2", INS, B, hours(45))]).await;
    assert_eq!(committed(&outcomes[0]), enrolled);
    let (submitted, outcomes) =
        through_front(&mut engine, vec![weight("w-4", A, hours(46), 81.0)]).await;
    assert_eq!(submitted[0].subject, INS);
    assert_eq!(committed(&outcomes[0]), enrolled);
    // And the link naming the retired key is now one person's: already known.
    let plan = resolve(engine.store(), vec![linked("l-3", INS, A, hours(47))])
        .await
        .expect("resolved");
    assert_eq!(
        plan.slots,
        [Slot::Answered(Ok(IngestOutcome::Duplicate))],
        "{plan:?}"
    );
    assert_replay_agrees(&engine).await;
}

/// A into B, then B into C: what was A's reaches C.
async fn a_chain_of_merges_is_followed<S: EventStore + Clone + 'static>(store: S) {
    let mut engine = Engine::open(store, registry(), EngineConfig::default())
        .await
        .expect("engine");
    let d1 = discharge("d-1", A, hours(0), "V1");
    let enrolled = committed(&engine.ingest(&d1).await.expect("discharge"));
    let (_, merges) = through_front(
        &mut engine,
        vec![
            merged("a40-1", B, A, hours(2)),
            merged("a40-2", C, B, hours(3)),
        ],
    )
    .await;
    assert_eq!(merges.len(), 2);
    assert_eq!(
        identity_record(engine.store(), B)
            .await
            .map(|r| r.1)
            .as_deref(),
        Some(C)
    );
    assert_eq!(instances(engine.store(), C).await, enrolled);

    let (submitted, outcomes) =
        through_front(&mut engine, vec![weight("w-1", A, hours(30), 80.0)]).await;
    assert_eq!(submitted[0].subject, C);
    assert_eq!(committed(&outcomes[0]), enrolled);
    assert!(instances(engine.store(), A).await.is_empty());
    assert!(instances(engine.store(), B).await.is_empty());
    // The discharge stored under A, resent (its ACK lost): resolved to C, a duplicate.
    let (submitted, outcomes) = through_front(&mut engine, vec![d1]).await;
    assert_eq!(submitted[0].subject, C);
    assert_eq!(outcomes, [IngestOutcome::Duplicate]);
    // Followed at commit, through both merges.
    let mut late = vec![weight("w-2", A, hours(31), 81.0)];
    assert_eq!(engine.follow_links(&mut late), 1);
    assert_eq!(late[0].subject, C);
    // A merge closing the loop (C into A) is one person: nothing to do.
    let plan = resolve(engine.store(), vec![merged("a40-3", A, C, hours(4))])
        .await
        .expect("resolved");
    assert!(plan.submit.is_empty(), "{plan:?}");
    // An erasure named by the first key reaches both survivors.
    let person = person_keys(engine.store(), TENANT, &[A.to_owned()], PERSON_KEYS_MAX)
        .await
        .expect("person keys");
    assert_eq!(person.keys, [A, B, C]);
    assert_replay_agrees(&engine).await;
}

/// A merge sent to the engine itself (an integration's canonical event, not through a
/// front) naming as survivor a key that leads on — retired into another, or a local key
/// linked to an INS, in the log or earlier in its batch — is refused: the retired key's
/// instances would land where no later event reaches them. They stay where they were.
async fn a_merge_onto_a_key_that_leads_on_is_refused<S: EventStore + Clone + 'static>(store: S) {
    let mut engine = Engine::open(store, registry(), EngineConfig::default())
        .await
        .expect("engine");
    const D: &str = "p-other-ipp";
    const E: &str = "p-ipp-linked";
    let enrolled = committed(
        &engine
            .ingest(&discharge("d-1", D, hours(0), "V1"))
            .await
            .expect("discharge"),
    );
    engine
        .ingest(&merged("a40-1", B, A, hours(1)))
        .await
        .expect("merge");
    // B leads to C in the log.
    engine
        .ingest(&merged("a40-2", C, B, hours(2)))
        .await
        .expect("merge");
    let refused = engine
        .ingest_batch(&[merged("a40-3", B, D, hours(3))], IndexChanges::default())
        .await
        .expect("ingested");
    assert!(
        matches!(&refused[..], [Err(Refused::Invalid(r))]
            if r.contains("identity.merged refused") && r.contains(B) && r.contains(C)),
        "{refused:?}"
    );
    assert_eq!(instances(engine.store(), D).await, enrolled);
    assert!(instances(engine.store(), B).await.is_empty());
    assert_eq!(identity_record(engine.store(), D).await, None);
    // E linked to the INS earlier in the same batch: the merge onto E is refused, the
    // link commits.
    let outcomes = engine
        .ingest_batch(
            &[
                linked("l-1", INS, E, hours(4)),
                merged("a40-4", E, D, hours(5)),
            ],
            IndexChanges::default(),
        )
        .await
        .expect("ingested");
    assert!(
        matches!(outcomes[0], Ok(IngestOutcome::Committed { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], Err(Refused::Invalid(r)) if r.contains(E) && r.contains(INS)),
        "{outcomes:?}"
    );
    assert_eq!(instances(engine.store(), D).await, enrolled);
    // Named as the intake resolves it (the survivor's INS), the merge moves them.
    engine
        .ingest(&merged("a40-5", INS, D, hours(6)))
        .await
        .expect("merge");
    assert_eq!(instances(engine.store(), INS).await, enrolled);
    assert_replay_agrees(&engine).await;
}

on_both_logs!(a_merge_onto_a_key_that_leads_on_is_refused:
    a_merge_onto_a_key_that_leads_on_is_refused_on_sqlite,
    a_merge_onto_a_key_that_leads_on_is_refused_on_postgresql,
    "retired_refused"
);

on_both_logs!(late_messages_reach_the_survivor:
    late_messages_under_a_retired_key_reach_the_survivor_on_sqlite,
    late_messages_under_a_retired_key_reach_the_survivor_on_postgresql,
    "retired_late"
);

on_both_logs!(a_chain_of_merges_is_followed:
    a_chain_of_merges_is_followed_on_sqlite,
    a_chain_of_merges_is_followed_on_postgresql,
    "retired_chain"
);
