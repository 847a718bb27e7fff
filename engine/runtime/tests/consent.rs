//! A consent given before the enrolment (PRADO's adviser meets the patient in hospital)
//! reaches the new instance in the enrolling event's commit, on both logs — whether it
//! was committed earlier (read back from the patient's inbound stream, also by an engine
//! that never saw it) or comes earlier in the same batch, and when it was recorded under
//! the hospital's local identifier (IPP) before the message that linked it to the INS —
//! or linked after the enrolment, either way round.

mod support;

use parcours_core::events::EventType;
use parcours_runtime::{Engine, EngineConfig};
use parcours_store::EventStore;
use support::{TENANT, discharge, event, hours, linked, merged, on_both_logs, registry};

fn consent(id: &str, subject: &str, h: i64) -> parcours_core::Event {
    event(
        id,
        subject,
        hours(h),
        EventType::ConsentGiven,
        serde_json::json!({"scope": "heart-failure"}),
    )
}

/// An engine on `store` with the shipped pathways.
async fn open<S>(store: &S) -> Engine<S>
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine")
}

async fn main_state<S: EventStore>(store: &S, subject: &str) -> String {
    let rows = store.instances_of(TENANT, subject).await.expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0]
        .states
        .split(' ')
        .find_map(|s| s.strip_prefix("main="))
        .expect("the main track")
        .to_owned()
}

/// The causes of the records of `subject`'s one instance, in order.
async fn causes<S: EventStore>(store: &S, subject: &str) -> Vec<String> {
    let stream = &store.instances_of(TENANT, subject).await.expect("rows")[0].stream;
    store
        .read_stream(stream, 0)
        .await
        .expect("stream")
        .into_iter()
        .map(|r| r.record.cause.expect("a decision names its cause"))
        .collect()
}

async fn a_consent_before_the_discharge_starts_the_plan<S>(store: S)
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    // Committed first, then the discharge by an engine that never saw the consent.
    open(&store)
        .await
        .ingest(&consent("c-1", "p-1", -30))
        .await
        .expect("consent");
    let mut engine = open(&store).await;
    engine
        .ingest(&discharge("d-1", "p-1", hours(0), "V-1"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "p-1").await, "early_post_discharge");
    // Both in one batch.
    let out = engine
        .ingest_batch(
            &[
                consent("c-2", "p-2", -2),
                discharge("d-2", "p-2", hours(0), "V-2"),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(main_state(&store, "p-2").await, "early_post_discharge");
    // Without one: the coordinator is asked to obtain it.
    engine
        .ingest(&discharge("d-3", "p-3", hours(0), "V-3"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "p-3").await, "awaiting_consent");
    // The consent's decision is caused by the consent, in the instance's stream.
    assert_eq!(
        causes(&store, "p-1").await,
        ["d-1", "c-1"],
        "the enrolment's decision, then the consent's"
    );
}

/// The adviser recorded the consent under the IPP's key; the discharge message names the
/// patient by INS and IPP (PID-32 `VALI`), so its link comes first, then the discharge
/// under the INS's key.
async fn a_consent_under_a_linked_key_counts<S>(store: S)
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    let mut engine = Engine::open(store.clone(), registry(), EngineConfig::default())
        .await
        .expect("engine");
    for ipp in ["ipp-1", "ipp-2", "ipp-3", "ipp-4"] {
        engine
            .ingest(&consent(&format!("c-{ipp}"), ipp, -20))
            .await
            .expect("consent");
    }
    // The link committed first, then the discharge.
    engine
        .ingest(&linked("l-1", "ins-1", "ipp-1", hours(-1)))
        .await
        .expect("link");
    engine
        .ingest(&discharge("d-1", "ins-1", hours(0), "V-1"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "ins-1").await, "early_post_discharge");
    // The link and the discharge in one batch (one HL7 message).
    let out = engine
        .ingest_batch(
            &[
                linked("l-2", "ins-2", "ipp-2", hours(0)),
                discharge("d-2", "ins-2", hours(0), "V-2"),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(main_state(&store, "ins-2").await, "early_post_discharge");
    // An IPP linked to a key merged since into another (A40): found through both.
    engine
        .ingest(&linked("l-3", "ins-3", "ipp-3", hours(-3)))
        .await
        .expect("link");
    engine
        .ingest(&merged("m-3", "ins-3b", "ins-3", hours(-2)))
        .await
        .expect("merge");
    engine
        .ingest(&discharge("d-3", "ins-3b", hours(0), "V-3"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "ins-3b").await, "early_post_discharge");
    // A consent under an IPP linked to nobody, or to another patient, is not this one's.
    engine
        .ingest(&discharge("d-4", "ins-4", hours(0), "V-4"))
        .await
        .expect("discharge");
    assert_eq!(main_state(&store, "ins-4").await, "awaiting_consent");
    // The copy handed over is the enrolled patient's; its decision is caused by the
    // consent recorded under the IPP.
    assert_eq!(causes(&store, "ins-1").await, ["d-1", "c-ipp-1"]);
}

fn withdrawal(id: &str, subject: &str, h: i64) -> parcours_core::Event {
    event(
        id,
        subject,
        hours(h),
        EventType::ConsentWithdrawn,
        serde_json::json!({"scope": "heart-failure"}),
    )
}

/// The status (and reason) of `subject`'s one instance.
async fn status<S: EventStore>(store: &S, subject: &str) -> (String, Option<String>) {
    let rows = store.instances_of(TENANT, subject).await.expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    (rows[0].status.clone(), rows[0].closed_reason.clone())
}

/// The link comes after the enrolment (the discharge named the patient by INS only; the
/// IPP was linked later, by an A24 or an identity service): the consent recorded under
/// the other key reaches the instance then — either way round, a withdrawal too — when
/// it is the patient's last word and would have counted sent under the instance's key.
async fn a_consent_under_a_key_linked_later_counts<S>(store: S)
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    let mut engine = open(&store).await;
    let ingest = |events: Vec<parcours_core::Event>| {
        let store = store.clone();
        async move {
            // Each event by an engine of its own: what is read is what was committed.
            for e in events {
                open(&store).await.ingest(&e).await.expect("ingest");
            }
        }
    };
    // The consent under the IPP before the discharge, the link after it.
    ingest(vec![
        consent("c-5", "ipp-5", -20),
        discharge("d-5", "ins-5", hours(0), "V-5"),
    ])
    .await;
    assert_eq!(main_state(&store, "ins-5").await, "awaiting_consent");
    ingest(vec![linked("l-5", "ins-5", "ipp-5", hours(3))]).await;
    assert_eq!(main_state(&store, "ins-5").await, "early_post_discharge");
    assert_eq!(
        causes(&store, "ins-5").await.last().map(String::as_str),
        Some("c-5"),
        "the consent's decision is caused by the consent recorded under the IPP"
    );
    // The other way round: the instance under the IPP, the consent under the INS; the
    // instance moves to the INS's key and starts its plan. Link and consent in one batch.
    ingest(vec![discharge("d-6", "ipp-6", hours(0), "V-6")]).await;
    assert_eq!(main_state(&store, "ipp-6").await, "awaiting_consent");
    let out = engine
        .ingest_batch(
            &[
                consent("c-6", "ins-6", 1),
                linked("l-6", "ins-6", "ipp-6", hours(2)),
            ],
            Default::default(),
        )
        .await
        .expect("batch");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(main_state(&store, "ins-6").await, "early_post_discharge");
    // A withdrawal under the IPP after the INS's consent is the last word: the patient
    // opted out.
    ingest(vec![
        consent("c-7", "ins-7", -1),
        discharge("d-7", "ins-7", hours(0), "V-7"),
        withdrawal("w-7", "ipp-7", 5),
    ])
    .await;
    assert_eq!(main_state(&store, "ins-7").await, "early_post_discharge");
    ingest(vec![linked("l-7", "ins-7", "ipp-7", hours(6))]).await;
    assert_eq!(
        status(&store, "ins-7").await,
        ("closed".to_owned(), Some("opted_out".to_owned()))
    );
    // Not handed over: a consent older than the window before the enrolment (30 days),
    // and an IPP's consent older than the INS's own withdrawal.
    ingest(vec![
        consent("c-8", "ipp-8", -24 * 40),
        discharge("d-8", "ins-8", hours(0), "V-8"),
        linked("l-8", "ins-8", "ipp-8", hours(1)),
    ])
    .await;
    assert_eq!(main_state(&store, "ins-8").await, "awaiting_consent");
    ingest(vec![
        consent("c-9", "ipp-9", 1),
        discharge("d-9", "ins-9", hours(0), "V-9"),
        withdrawal("w-9", "ins-9", 2),
        linked("l-9", "ins-9", "ipp-9", hours(3)),
    ])
    .await;
    assert_eq!(
        status(&store, "ins-9").await,
        ("closed".to_owned(), Some("opted_out".to_owned()))
    );
}

on_both_logs!(a_consent_under_a_key_linked_later_counts:
    a_consent_under_a_key_linked_later_counts_on_sqlite,
    a_consent_under_a_key_linked_later_counts_on_postgresql,
    "consent_linked_later"
);

on_both_logs!(a_consent_under_a_linked_key_counts:
    a_consent_under_a_linked_key_counts_on_sqlite,
    a_consent_under_a_linked_key_counts_on_postgresql,
    "consent_linked"
);

on_both_logs!(a_consent_before_the_discharge_starts_the_plan:
    a_consent_before_the_discharge_starts_the_plan_on_sqlite,
    a_consent_before_the_discharge_starts_the_plan_on_postgresql,
    "consent_before"
);
