//! Identity links on a real SQLite log: `identity.linked` records the link (keys only)
//! and moves the local key's instances to the national identity's key; a local key
//! linked to another national key is refused, in the engine and at intake, whole; a
//! link learned meanwhile by another writer makes the commit retry and refuse; the
//! intake's resolution takes local keys to their national identity's; an event stored
//! under the local key and resent after the link (under the national key) is a
//! duplicate; an event under the local key reaching the service while the link's commit
//! is in flight (held at a gate, on SQLite and PostgreSQL), or in the link's batch, is
//! decided on the national key.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use parcours_core::events::EventData;
use parcours_runtime::links::{Relinked, Slot, person_keys, relink, resolve};
use parcours_runtime::{
    Engine, EngineConfig, IngestOutcome, Refused, RuntimeError, codec, replay, write_commit,
};
use parcours_store::{Commit, EventStore, StreamWrite, WorkFilter};
use parcours_store_postgres::PgStore;
use parcours_store_sqlite::SqliteStore;
use support::gated::Gated;
use support::pg::TestDb;
use support::{TENANT, discharge, hours, linked, merged, registry, weight};

/// A hospital's IPP's key.
const IPP: &str = "p-ipp";
/// The patient's INS's key.
const INS: &str = "p-ins";
/// Another person's INS's key.
const OTHER: &str = "p-other-ins";

async fn open(db: &Path) -> Engine<SqliteStore> {
    let store = SqliteStore::open(db).await.expect("open");
    Engine::open(store, registry(), EngineConfig::default())
        .await
        .expect("engine")
}

/// Discharge the IPP's patient (`d-1`): the heart-failure instance it enrolled.
async fn discharged<S: EventStore>(engine: &mut Engine<S>) -> String {
    engine
        .ingest(&discharge("d-1", IPP, hours(0), "V-1"))
        .await
        .expect("discharge");
    engine
        .store()
        .instances_of(TENANT, IPP)
        .await
        .expect("rows")[0]
        .stream
        .clone()
}

/// The ids in a patient's inbound stream.
async fn inbound(engine: &Engine<SqliteStore>, subject: &str) -> Vec<String> {
    engine
        .store()
        .read_stream(&codec::inbound_stream(TENANT, subject), 0)
        .await
        .expect("inbound")
        .into_iter()
        .map(|r| r.record.id)
        .collect()
}

/// The national key a local key is linked to, as the log says.
async fn link_of(engine: &Engine<SqliteStore>, local: &str) -> Option<String> {
    engine
        .store()
        .latest_subjects(&[codec::identity_stream(TENANT, local)])
        .await
        .expect("links")
        .pop()
        .flatten()
}

#[tokio::test]
async fn a_link_records_the_keys_and_moves_the_local_keys_instances() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    engine
        .ingest(&discharge("d-1", IPP, hours(0), "V-1"))
        .await
        .expect("discharge");
    engine
        .ingest(&weight("w-1", IPP, hours(24), 80.0))
        .await
        .expect("weight");
    let stream = engine
        .store()
        .instances_of(TENANT, IPP)
        .await
        .expect("rows")[0]
        .stream
        .clone();
    assert!(link_of(&engine, IPP).await.is_none());

    let outcome = engine
        .ingest(&linked("l-1", INS, IPP, hours(30)))
        .await
        .expect("link");
    assert!(
        matches!(outcome, IngestOutcome::Committed { .. }),
        "{outcome:?}"
    );
    assert_eq!(link_of(&engine, IPP).await.as_deref(), Some(INS));
    let rows = engine
        .store()
        .instances_of(TENANT, INS)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].stream, stream,
        "the same instance, on the INS's key"
    );
    assert!(
        engine
            .store()
            .instances_of(TENANT, IPP)
            .await
            .expect("rows")
            .is_empty()
    );
    let work = engine
        .store()
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            limit: 100,
            ..WorkFilter::default()
        })
        .await
        .expect("work");
    assert!(!work.is_empty() && work.iter().all(|w| w.subject == INS));
    // The link stream: one record, keys only.
    let records = engine
        .store()
        .read_stream(&codec::identity_stream(TENANT, IPP), 0)
        .await
        .expect("link stream");
    assert_eq!(records.len(), 1);
    let r = &records[0].record;
    assert_eq!(
        (r.record_type.as_str(), r.subject.as_str()),
        ("identity.linked", INS)
    );
    assert_eq!(r.cause.as_deref(), Some("l-1"));
    let payload: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(
        payload,
        serde_json::json!({"local_subject": IPP, "subject": INS})
    );

    // The same link again (a resent message under another id): nothing new, no refusal.
    let again = engine
        .ingest(&linked("l-2", INS, IPP, hours(31)))
        .await
        .expect("known link");
    assert!(
        matches!(again, IngestOutcome::Committed { .. }),
        "{again:?}"
    );
    assert_eq!(
        engine
            .store()
            .stream_version(&codec::identity_stream(TENANT, IPP))
            .await
            .expect("version"),
        1
    );
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

#[tokio::test]
async fn a_local_key_linked_to_another_national_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    engine
        .ingest(&linked("l-1", INS, IPP, hours(0)))
        .await
        .expect("link");
    engine
        .ingest(&discharge("d-1", INS, hours(1), "V-1"))
        .await
        .expect("discharge");
    let err = engine
        .ingest(&linked("l-2", OTHER, IPP, hours(2)))
        .await
        .expect_err("a conflicting link");
    let RuntimeError::Refused(Refused::Invalid(reason)) = err else {
        panic!("{err:?}");
    };
    assert!(reason.contains("identity link refused"), "{reason}");
    assert!(reason.contains(IPP) && reason.contains(INS) && reason.contains(OTHER));
    assert_eq!(link_of(&engine, IPP).await.as_deref(), Some(INS));
    assert_eq!(
        engine
            .store()
            .instances_of(TENANT, INS)
            .await
            .expect("rows")
            .len(),
        1
    );
    assert!(
        engine
            .store()
            .instances_of(TENANT, OTHER)
            .await
            .expect("rows")
            .is_empty()
    );

    // A "national" key that is itself a linked local key.
    let err = engine
        .ingest(&linked("l-3", IPP, "p-lab-id", hours(3)))
        .await
        .expect_err("a link to a local key");
    assert!(
        matches!(err, RuntimeError::Refused(Refused::Invalid(ref r)) if r.contains("local identifier's key")),
        "{err:?}"
    );

    // Two links of one local key to two people in one batch: the second is refused.
    let out = engine
        .ingest_batch(
            &[
                linked("l-4", "p-ins-4", "p-ipp-4", hours(4)),
                linked("l-5", "p-ins-5", "p-ipp-4", hours(4)),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    assert!(
        matches!(out[0], Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    assert!(matches!(&out[1], Err(Refused::Invalid(r)) if r.contains("identity link refused")));
    assert_eq!(
        link_of(&engine, "p-ipp-4").await.as_deref(),
        Some("p-ins-4")
    );
}

#[tokio::test]
async fn a_link_learned_meanwhile_by_another_writer_makes_the_commit_retry_and_refuse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    let event = linked("l-1", INS, IPP, hours(0));
    let events = [event.clone()];
    let mut prepared = engine
        .prepare_batch(&events, Default::default())
        .await
        .expect("prepared");
    // Another engine (the owner of the other INS's partition) links the IPP first.
    let other = linked("l-9", OTHER, IPP, hours(0));
    engine
        .store()
        .append(Commit {
            writes: vec![StreamWrite {
                stream: codec::identity_stream(TENANT, IPP),
                expected_version: 0,
                records: vec![codec::encode_identity_link(&other, IPP)],
            }],
            ..Commit::default()
        })
        .await
        .expect("the other link");
    let commit = prepared.take_commit().expect("a commit");
    let written = write_commit(engine.store(), commit).await.expect("written");
    assert!(
        written.is_none(),
        "the link stream's version stops the second writer"
    );
    assert!(matches!(
        engine.finish_batch(&events, prepared, false),
        Err(RuntimeError::Raced)
    ));
    // Tried again on fresh state: refused, the first link kept.
    let out = engine
        .ingest_batch(&events, Default::default())
        .await
        .expect("retried");
    assert!(
        matches!(&out[0], Err(Refused::Invalid(r)) if r.contains("identity link refused")),
        "{out:?}"
    );
    assert_eq!(link_of(&engine, IPP).await.as_deref(), Some(OTHER));
}

#[tokio::test]
async fn the_intake_resolves_local_keys_and_refuses_a_conflicting_message_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    engine
        .ingest(&linked("l-1", INS, IPP, hours(0)))
        .await
        .expect("link");
    let store = engine.store();

    // A weight under the IPP goes to the INS's key; other patients are left alone.
    let plan = resolve(
        store,
        vec![
            weight("w-1", IPP, hours(1), 80.0),
            weight("w-2", "p-someone", hours(1), 70.0),
        ],
    )
    .await
    .expect("resolved");
    assert_eq!(plan.slots, [Slot::Submitted(0), Slot::Submitted(1)]);
    assert_eq!(plan.submit[0].subject, INS);
    assert_eq!(plan.submit[1].subject, "p-someone");

    // A link the log holds is answered, not sent again; the message's events go on.
    let plan = resolve(
        store,
        vec![
            linked("l-2", INS, IPP, hours(2)),
            discharge("d-2", INS, hours(2), "V-1"),
        ],
    )
    .await
    .expect("resolved");
    assert_eq!(
        plan.slots,
        [
            Slot::Answered(Ok(IngestOutcome::Duplicate)),
            Slot::Submitted(0)
        ]
    );

    // A new link resolves the submission's own events naming the local key.
    let plan = resolve(
        store,
        vec![
            linked("l-3", "p-ins-3", "p-ipp-3", hours(3)),
            weight("w-3", "p-ipp-3", hours(3), 60.0),
        ],
    )
    .await
    .expect("resolved");
    assert_eq!(plan.submit.len(), 2);
    assert_eq!(plan.submit[1].subject, "p-ins-3");

    // A40: the retired key names where the instances are; one person already: nothing.
    let plan = resolve(
        store,
        vec![
            merged("m-1", "p-survivor", IPP, hours(4)),
            merged("m-2", INS, IPP, hours(4)),
        ],
    )
    .await
    .expect("resolved");
    assert_eq!(plan.submit.len(), 1);
    let EventData::IdentityMerged(m) = &plan.submit[0].data else {
        panic!()
    };
    assert_eq!(m.merged_subject, INS);
    assert_eq!(plan.slots[1], Slot::Answered(Ok(IngestOutcome::Duplicate)));

    // The IPP with another person's INS: the link and both keys' events refused, the
    // other patient's not; the reason names keys only.
    let plan = resolve(
        store,
        vec![
            linked("l-4", OTHER, IPP, hours(5)),
            discharge("d-4", OTHER, hours(5), "V-1"),
            weight("w-4", IPP, hours(5), 81.0),
            weight("w-5", "p-someone", hours(5), 71.0),
        ],
    )
    .await
    .expect("resolved");
    assert_eq!(plan.submit.len(), 1);
    assert_eq!(plan.submit[0].id, "w-5");
    for slot in &plan.slots[..3] {
        let Slot::Answered(Err(Refused::Invalid(reason))) = slot else {
            panic!("{slot:?}");
        };
        assert!(reason.contains("identity link refused") && reason.contains(OTHER));
    }
}

/// The partition consumers' resolution: each event alone, nothing refused; a link
/// earlier in the batch counts unless the log links its local key already or its
/// national key is a linked local key; merges resolved as at intake.
#[tokio::test]
async fn keyed_events_are_taken_to_their_national_keys_one_by_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    engine
        .ingest(&linked("l-1", INS, IPP, hours(0)))
        .await
        .expect("link");
    let store = engine.store();
    let mut events = vec![
        weight("w-0", "p-ipp-3", hours(1), 59.0),
        weight("w-1", IPP, hours(1), 80.0),
        // Conflicts with the log's link: the engine refuses it; the log's link holds.
        linked("l-2", OTHER, IPP, hours(1)),
        weight("w-2", IPP, hours(1), 81.0),
        linked("l-3", "p-ins-3", "p-ipp-3", hours(1)),
        weight("w-3", "p-ipp-3", hours(1), 60.0),
        // Its national key is a linked local key: the engine refuses it.
        linked("l-4", IPP, "p-ipp-4", hours(1)),
        weight("w-4", "p-ipp-4", hours(1), 61.0),
        merged("m-1", "p-survivor", IPP, hours(2)),
        merged("m-2", IPP, INS, hours(2)),
        merged("m-3", IPP, "p-someone", hours(2)),
        weight("w-5", "p-someone", hours(2), 70.0),
    ];
    let fates = relink(store, &mut events).await.expect("resolved");
    let moved = |from: &str| Relinked::Moved { from: from.into() };
    assert_eq!(
        fates,
        [
            Relinked::Unchanged,
            moved(IPP),
            Relinked::Unchanged,
            moved(IPP),
            Relinked::Unchanged,
            moved("p-ipp-3"),
            Relinked::Unchanged,
            Relinked::Unchanged,
            Relinked::Retired,
            Relinked::OnePerson,
            moved(IPP),
            Relinked::Unchanged,
        ]
    );
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "p-ipp-3",
            INS,
            OTHER,
            INS,
            "p-ins-3",
            "p-ins-3",
            IPP,
            "p-ipp-4",
            "p-survivor",
            INS,
            INS,
            "p-someone"
        ]
    );
    let EventData::IdentityMerged(m) = &events[8].data else {
        panic!()
    };
    assert_eq!(m.merged_subject, INS);

    // Links alone: nothing to resolve, nothing read.
    let mut links = vec![linked("l-5", "p-ins-5", "p-ipp-5", hours(3))];
    assert_eq!(
        relink(store, &mut links).await.expect("resolved"),
        [Relinked::Unchanged]
    );
}

#[tokio::test]
async fn a_resend_after_the_link_is_a_duplicate_under_the_national_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    engine
        .ingest(&discharge("d-1", IPP, hours(0), "V-1"))
        .await
        .expect("discharge");
    // A lab's result under the IPP alone, then the qualification links the IPP.
    let result = weight("w-1", IPP, hours(24), 80.0);
    engine.ingest(&result).await.expect("weight");
    engine
        .ingest(&linked("l-1", INS, IPP, hours(30)))
        .await
        .expect("link");
    let before = (inbound(&engine, IPP).await, inbound(&engine, INS).await);

    // The lab's ACK was lost: it sends the result again, which the front resolves to the
    // INS's key. Looked up first (`ingest_batch`): a duplicate.
    let mut resent = result.clone();
    resent.subject = INS.into();
    let outcome = engine.ingest(&resent).await.expect("a duplicate");
    assert_eq!(outcome, IngestOutcome::Duplicate);

    // Decided without a look-up (the service's `prepare_batch`): the commit is refused
    // for its stored id, and the batch tried again is answered a duplicate.
    let events = [resent.clone()];
    let mut prepared = engine
        .prepare_batch(&events, Default::default())
        .await
        .expect("prepared");
    let commit = prepared.take_commit().expect("a commit");
    let written = write_commit(engine.store(), commit).await.expect("written");
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
    assert_eq!(
        (inbound(&engine, IPP).await, inbound(&engine, INS).await),
        before,
        "the log holds the result once, under the key it came with"
    );

    // The same id under a key not linked to the stored one is still another event.
    let mut other = result.clone();
    other.subject = OTHER.into();
    let err = engine.ingest(&other).await.expect_err("an id reused");
    assert!(
        matches!(err, RuntimeError::Refused(Refused::IdReused(_))),
        "{err:?}"
    );
    // And so is the linked key's with another clinical time.
    let mut later = resent.clone();
    later.occurred_at = hours(25);
    let err = engine.ingest(&later).await.expect_err("an id reused");
    assert!(
        matches!(err, RuntimeError::Refused(Refused::IdReused(_))),
        "{err:?}"
    );
}

/// The clock of the service below (no timer is due in these tests).
struct Fixed;

impl parcours_runtime::Clock for Fixed {
    fn now(&self) -> Timestamp {
        hours(0)
    }
}

/// `parcours_identity_links_total{outcome}` now.
fn links_counted(outcome: &str) -> u64 {
    parcours_runtime::metrics::metrics()
        .identity_links
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test]
async fn an_event_resolved_before_a_link_committed_follows_it_and_links_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    let instance = discharged(&mut engine).await;
    let token = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = parcours_runtime::service::start(
        engine,
        parcours_runtime::InProcessBus::new(1_000),
        Fixed,
        parcours_runtime::ServiceConfig::default(),
        token.clone(),
        &tracker,
    );
    let (linked_before, already_before, refused_before) = (
        links_counted("linked"),
        links_counted("already"),
        links_counted("refused"),
    );

    // The qualification commits; a lab result read the links just before (none): it
    // reaches the engine under the IPP, which moves it to the INS's key.
    let out = handle
        .submit(vec![linked("l-1", INS, IPP, hours(1))])
        .await
        .expect("link");
    assert!(
        matches!(out[0], Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    let out = handle
        .submit(vec![weight("w-1", IPP, hours(2), 80.0)])
        .await
        .expect("weight");
    let Ok(IngestOutcome::Committed { instances, .. }) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(
        instances,
        &[instance],
        "the instance moved by the link took it"
    );

    // The same link again, and a conflicting one: counted as such (the counters are
    // the process's: other tests may add to them meanwhile, never take away).
    let out = handle
        .submit(vec![linked("l-2", INS, IPP, hours(3))])
        .await
        .expect("known link");
    assert!(
        matches!(out[0], Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    let out = handle
        .submit(vec![linked("l-3", OTHER, IPP, hours(3))])
        .await
        .expect("conflicting link");
    assert!(matches!(&out[0], Err(Refused::Invalid(_))), "{out:?}");
    assert!(links_counted("linked") > linked_before);
    assert!(links_counted("already") > already_before);
    assert!(links_counted("refused") > refused_before);

    token.cancel();
    tracker.close();
    tracker.wait().await;
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("reopen");
    let ins: Vec<String> = store
        .read_stream(&codec::inbound_stream(TENANT, INS), 0)
        .await
        .expect("inbound")
        .into_iter()
        .map(|r| r.record.id)
        .collect();
    assert!(ins.contains(&"w-1".to_string()), "{ins:?}");
    assert!(
        store
            .read_stream(&codec::inbound_stream(TENANT, IPP), 0)
            .await
            .expect("inbound")
            .iter()
            .all(|r| r.record.id != "w-1")
    );
}

/// A link and an event under its local key in one batch (two submissions the service
/// gathered into one group commit: a link from one front, a lab result another front
/// resolved before the link committed): the event is decided after the link, on the
/// national key.
#[tokio::test]
async fn an_event_under_a_local_key_after_its_link_in_one_batch_is_the_national_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    let instance = discharged(&mut engine).await;
    let out = engine
        .ingest_batch(
            &[
                linked("l-1", INS, IPP, hours(1)),
                weight("w-1", IPP, hours(2), 80.0),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    let Ok(IngestOutcome::Committed { instances, .. }) = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!(
        instances,
        &[instance],
        "the instance the link moved took it"
    );
    assert_eq!(inbound(&engine, INS).await, ["l-1", "w-1"]);
    assert_eq!(inbound(&engine, IPP).await, ["d-1"]);
    assert!(
        engine
            .store()
            .instances_of(TENANT, IPP)
            .await
            .expect("rows")
            .is_empty()
    );
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// In one batch, a link (IPP → INS), then a merge retiring the INS into another key, then
/// an event under the IPP: it goes where the chain ends, with the instance both moved.
#[tokio::test]
async fn an_event_under_a_local_key_after_a_chain_in_one_batch_is_the_chains_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    let instance = discharged(&mut engine).await;
    let out = engine
        .ingest_batch(
            &[
                linked("l-1", INS, IPP, hours(1)),
                merged("m-1", OTHER, INS, hours(2)),
                weight("w-1", IPP, hours(3), 80.0),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    let Ok(IngestOutcome::Committed { instances, .. }) = &out[2] else {
        panic!("{out:?}");
    };
    assert_eq!(instances, &[instance], "the instance moved twice took it");
    assert_eq!(inbound(&engine, OTHER).await, ["m-1", "w-1"]);
    assert_eq!(inbound(&engine, INS).await, ["l-1"]);
    let (report, _) = replay::verify(engine.store(), engine.registry())
        .await
        .expect("replay");
    assert!(report.agrees(), "{:?}", report.mismatches);
}

/// Wakes its watchers when the engine forms a group holding the event of id `id`: the
/// `event` span the service opens for each event of a group it forms
/// (`parcours_runtime::trace`), before it waits for the commits in flight. The test's
/// thread's subscriber (`tracing::subscriber::set_default`; the tests below run the
/// service on that one thread).
struct GroupFormed {
    id: &'static str,
    seen: tokio::sync::watch::Sender<bool>,
    spans: AtomicU64,
}

impl tracing::Subscriber for GroupFormed {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        /// Whether the span's `event_id` is the one looked for.
        struct Names<'a>(&'a str, bool);
        impl tracing::field::Visit for Names<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "event_id" && format!("{value:?}") == self.0 {
                    self.1 = true;
                }
            }
        }
        if span.metadata().name() == "event" {
            let mut names = Names(self.id, false);
            span.record(&mut names);
            if names.1 {
                self.seen.send_replace(true);
            }
        }
        tracing::span::Id::from_u64(self.spans.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A lab result a front resolved before the link committed (under the IPP) reaches the
/// service while the link's group commit is still being written, a second commit
/// allowed in flight (`store`'s steady appends: PostgreSQL's two): it is decided after
/// the link committed, on the INS's key — the instance the link moved takes it, and the
/// IPP gets no instance nor event.
async fn an_event_under_a_local_key_waits_for_its_link_in_flight<S>(store: Gated<S>)
where
    S: EventStore + Clone + std::fmt::Debug + 'static,
{
    assert_eq!(
        store.steady_appends(),
        2,
        "two commits in flight at a steady rate"
    );
    let mut engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    let instance = discharged(&mut engine).await;
    let (seen, mut formed) = tokio::sync::watch::channel(false);
    let _traced = tracing::subscriber::set_default(GroupFormed {
        id: "w-1",
        seen,
        spans: AtomicU64::new(0),
    });
    let token = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = parcours_runtime::service::start(
        engine,
        parcours_runtime::InProcessBus::new(1_000),
        Fixed,
        parcours_runtime::ServiceConfig {
            commits_in_flight: 2,
            ..parcours_runtime::ServiceConfig::default()
        },
        token.clone(),
        &tracker,
    );

    // The link's commit is held in flight.
    store.close();
    let link = tokio::spawn({
        let handle = handle.clone();
        async move { handle.submit(vec![linked("l-1", INS, IPP, hours(1))]).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.waiting() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link's commit never began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The weight's group is formed meanwhile (the link not committed yet), then the
    // link's commit goes through.
    let weight = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .submit(vec![weight("w-1", IPP, hours(2), 80.0)])
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), formed.wait_for(|f| *f))
        .await
        .expect("the weight's group formed")
        .expect("watched");
    store.open();

    let out = link.await.expect("joined").expect("link");
    assert!(
        matches!(out[0], Ok(IngestOutcome::Committed { .. })),
        "{out:?}"
    );
    let out = weight.await.expect("joined").expect("weight");
    let Ok(IngestOutcome::Committed { instances, .. }) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(
        instances,
        std::slice::from_ref(&instance),
        "the instance the link moved took the weight"
    );

    token.cancel();
    tracker.close();
    tracker.wait().await;
    let ids = |records: Vec<parcours_store::StoredRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.record.id).collect()
    };
    let ins = ids(store
        .read_stream(&codec::inbound_stream(TENANT, INS), 0)
        .await
        .expect("inbound"));
    assert_eq!(
        ins,
        ["l-1", "w-1"],
        "the link, then the weight, on the INS's key"
    );
    let ipp = ids(store
        .read_stream(&codec::inbound_stream(TENANT, IPP), 0)
        .await
        .expect("inbound"));
    assert_eq!(ipp, ["d-1"], "nothing under the IPP after the link");
    assert!(
        store
            .instances_of(TENANT, IPP)
            .await
            .expect("rows")
            .is_empty(),
        "no second patient under the IPP"
    );
    let rows = store.instances_of(TENANT, INS).await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].stream, instance);
}

#[tokio::test]
async fn an_event_under_a_local_key_waits_for_its_link_in_flight_on_postgresql() {
    let (db, url) = TestDb::create("links_inflight").await;
    let pg = PgStore::connect(&url).await.expect("connect");
    an_event_under_a_local_key_waits_for_its_link_in_flight(Gated::new(pg.clone())).await;
    pg.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn an_event_under_a_local_key_waits_for_its_link_in_flight_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("open");
    an_event_under_a_local_key_waits_for_its_link_in_flight(
        Gated::new(sqlite).with_steady_appends(2),
    )
    .await;
}

/// The subject keys [`person_keys`] gathers from `asked`, sorted; and how many were found.
async fn person(
    engine: &Engine<SqliteStore>,
    asked: &[&str],
    limit: usize,
) -> (Vec<String>, usize, bool) {
    let asked: Vec<String> = asked.iter().map(|s| (*s).to_owned()).collect();
    let found = person_keys(engine.store(), TENANT, &asked, limit)
        .await
        .expect("person keys");
    let mut keys = found.keys.clone();
    keys.sort();
    (keys, found.found().len(), found.truncated)
}

#[tokio::test]
async fn a_persons_keys_are_found_through_links_both_ways_and_merges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(&dir.path().join("log.db")).await;
    // Followed under an IPP; another hospital's IPP got an older IPP merged into it
    // (A40) before both were linked to the INS; an A40 on the INS retires a duplicate.
    // Another person has their own IPP and INS.
    for e in [
        discharge("d-1", IPP, hours(0), "V-1"),
        merged("m-1", "p-ipp-2", "p-ipp-2-old", hours(1)),
        linked("l-1", INS, IPP, hours(2)),
        linked("l-2", INS, "p-ipp-2", hours(3)),
        merged("m-2", INS, "p-ins-dup", hours(4)),
        linked("l-3", OTHER, "p-other-ipp", hours(5)),
        weight("w-1", INS, hours(6), 80.0),
    ] {
        engine.ingest(&e).await.expect("committed");
    }
    // The IPP sent with the other person's INS: refused, and so joins nobody.
    engine
        .ingest(&linked("l-4", OTHER, IPP, hours(7)))
        .await
        .expect_err("a conflicting link");

    let mut whole: Vec<String> = [INS, IPP, "p-ipp-2", "p-ipp-2-old", "p-ins-dup"]
        .map(String::from)
        .to_vec();
    whole.sort();
    // From the INS (local keys linked to it, keys merged into it and into them), from an
    // IPP (its INS, then the rest), from both: the same person.
    assert_eq!(person(&engine, &[INS], 16).await, (whole.clone(), 4, false));
    assert_eq!(person(&engine, &[IPP], 16).await, (whole.clone(), 4, false));
    assert_eq!(
        person(&engine, &["p-ipp-2", INS], 16).await,
        (whole.clone(), 3, false)
    );
    // The other person stays apart.
    assert_eq!(
        person(&engine, &[OTHER], 16).await,
        (vec![OTHER.to_owned(), "p-other-ipp".to_owned()], 1, false)
    );
    // A key a merge retired leads to its survivor (its identity stream, written with the
    // merge), and so to the whole person: the INS's duplicate, the older IPP merged into
    // an IPP linked since.
    assert_eq!(
        person(&engine, &["p-ins-dup"], 16).await,
        (whole.clone(), 4, false)
    );
    assert_eq!(
        person(&engine, &["p-ipp-2-old"], 16).await,
        (whole.clone(), 4, false)
    );
    // A key nothing joins: itself.
    assert_eq!(
        person(&engine, &["p-nobody"], 16).await,
        (vec!["p-nobody".to_owned()], 0, false)
    );
    // Beyond the limit: said, not reached.
    let (keys, _, truncated) = person(&engine, &[INS], 3).await;
    assert!(truncated && keys.len() == 3, "{keys:?}");
}
