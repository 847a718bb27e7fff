//! FHIR R4 JSON over NATS against real `nats-server` processes (2.9 and a current 2.1x),
//! with the real engine over a temporary SQLite log: `parcours.<tenant>.fhir.in` →
//! mapping → commit → ack; bad input to the DLQ at once with its OperationOutcome.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use parcours_nats::subject::fhir_subject;
use parcours_nats::{DeadLetters, FhirConsumer, FhirSettings, STREAM_DLQ, STREAM_FHIR};
use parcours_store::EventStore as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use support::*;

on_both_servers!(
    fhir_bundles_are_mapped_committed_and_acked,
    bad_fhir_goes_to_the_dlq_at_once_with_its_outcome,
    refused_bodies_are_kept_in_the_log_not_in_the_dlq,
);

fn settings(dead_letters: Option<Arc<dyn DeadLetters>>) -> FhirSettings {
    FhirSettings {
        pseudonymizer: parcours_identity::Pseudonymizer::from_key(&[7u8; 32]).expect("key"),
        base_url: "http://parcours.test".into(),
        allow_test_ins: false,
        dead_letters,
    }
}

/// A heart-failure discharge of a patient named by a NIR and an IPP.
fn discharge_bundle(encounter: &str) -> Value {
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:pat-1", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "id": "pat-1",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]},
                                "system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}],
                "name": [{"family": "DURAND", "given": ["Ginette"]}],
                "birthDate": "1938-11-23"}},
            {"fullUrl": "urn:uuid:enc-1", "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": encounter, "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:pat-1"},
                "period": {"start": "2026-02-24T10:00:00+01:00", "end": "2026-03-02T10:00:00+01:00"},
                "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}],
                "hospitalization": {"dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]}}}}
        ]
    })
}

async fn publish(nats: &parcours_nats::Nats, content_type: Option<&str>, body: &[u8]) {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert("Content-Type", ct);
    }
    nats.jetstream()
        .publish_with_headers(
            fhir_subject(TENANT).expect("subject"),
            headers,
            body.to_vec().into(),
        )
        .await
        .expect("published")
        .await
        .expect("stored");
}

/// Start the FHIR loop on the engine's handle.
fn consume_fhir(
    nats: &parcours_nats::Nats,
    running: &Running,
    dead_letters: Option<Arc<dyn DeadLetters>>,
) -> CancellationToken {
    let token = CancellationToken::new();
    let consumer = FhirConsumer::new(nats.clone(), running.handle.clone(), settings(dead_letters));
    let t = token.clone();
    tokio::spawn(async move { consumer.run(t).await.expect("FHIR consumer") });
    token
}

async fn fhir_bundles_are_mapped_committed_and_acked(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    nats.ensure_fhir().await.expect("the FHIR stream");
    let running = Running::start(&nats).await;
    let token = consume_fhir(&nats, &running, None);

    let bundle = discharge_bundle("enc-1").to_string();
    publish(&nats, Some("application/fhir+json"), bundle.as_bytes()).await;
    eventually(
        Duration::from_secs(20),
        "the discharge committed",
        || async { running.inbound_ids().await.len() == 1 },
    )
    .await;
    // Acked once committed: the work queue is empty.
    eventually(Duration::from_secs(10), "the message acked", || async {
        stream_len(&nats, STREAM_FHIR).await == 0
    })
    .await;
    let instances = running
        .store
        .list_instances(&parcours_store::InstanceFilter {
            tenant: TENANT.into(),
            ..Default::default()
        })
        .await
        .expect("instances");
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].pathway_id, "heart-failure");
    assert!(instances[0].subject.starts_with("p-"));

    // The same resource again, and without a content type: a duplicate, acked; a second
    // stay of the same patient: a second event for the same subject key.
    publish(&nats, None, bundle.as_bytes()).await;
    publish(
        &nats,
        None,
        discharge_bundle("enc-2").to_string().as_bytes(),
    )
    .await;
    eventually(Duration::from_secs(20), "both acked", || async {
        stream_len(&nats, STREAM_FHIR).await == 0
    })
    .await;
    let ids = running.inbound_ids().await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.values().all(|n| *n == 1), "each event once: {ids:?}");
    assert_eq!(stream_len(&nats, STREAM_DLQ).await, 0);
    // No patient identifier in the subject key, the events or the inbound subject.
    assert_eq!(
        fhir_subject(TENANT).expect("subject"),
        "parcours.cpts-test.fhir.in"
    );
    for r in all_records(&running.store).await {
        let text = String::from_utf8_lossy(&r.record.payload).to_string();
        for secret in ["IPP-0042", "DURAND", "Ginette", "1938-11-23"] {
            assert!(
                !text.contains(secret) && !r.stream.contains(secret),
                "{text}"
            );
        }
    }
    token.cancel();
    running.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

async fn bad_fhir_goes_to_the_dlq_at_once_with_its_outcome(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    nats.ensure_fhir().await.expect("the FHIR stream");
    let running = Running::start(&nats).await;
    let token = consume_fhir(&nats, &running, None);

    let xml = b"<Bundle xmlns=\"http://hl7.org/fhir\"><type value=\"transaction\"/></Bundle>";
    publish(&nats, Some("application/fhir+xml"), xml).await;
    publish(&nats, None, xml).await;
    publish(
        &nats,
        Some("application/fhir+json"),
        b"{\"resourceType\": \"Bundle\",",
    )
    .await;
    let care_plan = json!({"resourceType": "CarePlan", "id": "cp-1", "status": "active",
        "intent": "plan", "subject": {"reference": "Patient/1"}});
    publish(&nats, None, care_plan.to_string().as_bytes()).await;
    eventually(Duration::from_secs(20), "four dead letters", || async {
        stream_len(&nats, STREAM_DLQ).await == 4
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the originals terminated",
        || async { stream_len(&nats, STREAM_FHIR).await == 0 },
    )
    .await;
    let letters = read_stream(&nats, STREAM_DLQ).await;
    assert_eq!(letters.len(), 4);
    for (i, l) in letters.iter().enumerate() {
        assert_eq!(l.subject, format!("parcours.{TENANT}.dlq"));
        assert_eq!(l.headers["Parcours-Stage"], "fhir", "{:?}", l.headers);
        assert_eq!(
            l.headers["Parcours-Deliveries"], "1",
            "no retry: {:?}",
            l.headers
        );
        assert_eq!(
            l.headers["Parcours-Origin-Subject"],
            format!("parcours.{TENANT}.fhir.in")
        );
        let outcome: Value =
            serde_json::from_str(&l.headers["Parcours-Outcome"]).expect("OperationOutcome");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
        assert!(!l.headers["Parcours-Reason"].is_empty());
        // The body is kept as it came.
        match i {
            0 | 1 => assert_eq!(l.payload, xml.to_vec()),
            2 => assert!(l.payload.starts_with(b"{\"resourceType\"")),
            _ => assert!(l.payload.starts_with(b"{")),
        }
    }
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.headers["Parcours-Reason"].as_str())
        .collect();
    assert!(reasons[0].contains("xml"), "{reasons:?}");
    assert!(reasons[3].contains("CarePlan"), "{reasons:?}");
    assert!(running.inbound_ids().await.is_empty(), "nothing committed");
    token.cancel();
    running.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}

async fn refused_bodies_are_kept_in_the_log_not_in_the_dlq(bin: ServerBin) {
    let server = NatsServer::start(&bin).await;
    let nats = connect(config(&server)).await;
    nats.ensure_streams().await.expect("streams");
    nats.ensure_fhir().await.expect("the FHIR stream");
    let running = Running::start(&nats).await;
    let token = consume_fhir(&nats, &running, Some(Arc::new(running.store.clone())));

    // A resource parcours does not process, naming its patient.
    let care_plan = json!({"resourceType": "CarePlan", "id": "cp-1", "status": "active",
        "intent": "plan", "subject": {"identifier": {"value": "IPP-0042"}, "display": "DURAND Ginette"}})
    .to_string();
    publish(&nats, None, care_plan.as_bytes()).await;
    let xml = b"<Patient><name><family value=\"DURAND\"/></name></Patient>";
    publish(&nats, Some("application/fhir+xml"), xml).await;
    eventually(Duration::from_secs(20), "two dead letters", || async {
        stream_len(&nats, STREAM_DLQ).await == 2
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the originals terminated",
        || async { stream_len(&nats, STREAM_FHIR).await == 0 },
    )
    .await;
    let kept = running
        .store
        .dead_letters(0, 10)
        .await
        .expect("dead letters");
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0].letter.payload, care_plan.as_bytes());
    assert_eq!(kept[1].letter.payload, xml.to_vec());
    for k in &kept {
        assert_eq!(k.letter.source, format!("nats:parcours.{TENANT}.fhir.in"));
        assert_eq!(k.letter.tenant.as_deref(), Some(TENANT));
        assert!(!k.letter.reason.is_empty());
    }
    let letters = read_stream(&nats, STREAM_DLQ).await;
    for (l, k) in letters.iter().zip(&kept) {
        assert!(l.payload.is_empty(), "the body is not in the DLQ stream");
        assert_eq!(l.headers["Parcours-Dead-Letter"], k.id.to_string());
        assert_eq!(l.headers["Parcours-Stage"], "fhir");
        assert!(l.headers.contains_key("Parcours-Outcome"));
        for h in l.headers.values() {
            assert!(!h.contains("DURAND") && !h.contains("IPP-0042"), "{h}");
        }
    }
    token.cancel();
    running.stop().await;
    // What it published, held to the NATS interface's AsyncAPI document.
    assert!(
        support::asyncapi::check_published(&nats).await > 0,
        "published messages to check"
    );
}
