//! FHIR over NATS through a real `parcours serve` in production mode (PostgreSQL log,
//! NATS JetStream server of the test's own): a hospital publishes a FHIR Bundle to
//! `parcours.<tenant>.fhir.in`; the engine that owns partition 0 maps it, forwards the
//! events to their partitions' owners, acks after commit; XML goes to the DLQ at once.
//! Once with a PostgreSQL log (partitions leased), once with one process on SQLite.
//!
//! Needs PostgreSQL (`PARCOURS_TEST_PG`, default `postgres://root@127.0.0.1:5432/postgres`)
//! and a `nats-server` binary (`NATS_SERVER_BIN`, else `/usr/sbin/nats-server`, else the
//! PATH); fails when either is missing.

// Deadlines of the waits below are wall-clock time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::ffi::OsString;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn discharge() -> Value {
    let end = now_minus_days(2).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:pat-1", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "id": "pat-1",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]},
                                "system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}],
                "name": [{"family": "DURAND", "given": ["Ginette"]}]}},
            {"fullUrl": "urn:uuid:enc-1", "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": "enc-1", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:pat-1"},
                "period": {"start": "2026-02-24T10:00:00+01:00", "end": end},
                "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}],
                "hospitalization": {"dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]}}}}
        ]
    })
}

/// Messages in a stream.
fn stream_len(
    rt: &tokio::runtime::Runtime,
    js: &async_nats::jetstream::Context,
    name: &str,
) -> u64 {
    rt.block_on(async {
        match js.get_stream(name).await {
            Ok(mut s) => s.info().await.map_or(u64::MAX, |i| i.state.messages),
            Err(_) => u64::MAX,
        }
    })
}

#[test]
fn fhir_published_to_nats_is_committed_by_the_engine_and_xml_dead_lettered() {
    let db = Db::create("fhir_nats");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let args: Vec<OsString> = vec![
        "--store".into(),
        db.url.clone().into(),
        "--nats".into(),
        nats.url().into(),
        "--partitions".into(),
        "4".into(),
        "--identity-key".into(),
        dir.path().join("identity.key").into(),
        "--forward-wait".into(),
        "5".into(),
    ];
    fhir_over_nats(&nats, &args);
}

/// The same with one process on a SQLite log (it owns every partition).
#[test]
fn fhir_over_nats_on_a_sqlite_log() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let args: Vec<OsString> = vec![
        "--store".into(),
        dir.path().join("log.db").into(),
        "--nats".into(),
        nats.url().into(),
        "--partitions".into(),
        "4".into(),
    ];
    fhir_over_nats(&nats, &args);
}

/// Publish a Bundle, XML, and the Bundle again; check the instance, the acks and the DLQ.
fn fhir_over_nats(nats: &NatsServer, args: &[OsString]) {
    let server = Server::start_args(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let js = rt.block_on(async {
        async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"))
    });
    // The engine created the FHIR stream at start, before any hospital publishes.
    wait_for("the FHIR stream", Duration::from_secs(60), || {
        stream_len(&rt, &js, "PARCOURS_FHIR") != u64::MAX
    });
    let publish = |content_type: &str, body: Vec<u8>| {
        rt.block_on(async {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", content_type);
            js.publish_with_headers("parcours.cpts-fhir.fhir.in", headers, body.into())
                .await
                .expect("published")
                .await
                .expect("stored by JetStream");
        });
    };
    let bundle = discharge().to_string().into_bytes();
    publish("application/fhir+json", bundle.clone());
    publish(
        "application/fhir+xml",
        b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec(),
    );
    let instances = || {
        http(&server.addr, "GET", "/v1/instances?tenant=cpts-fhir", None)
            .map(|(_, v)| v["instances"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    wait_for("the discharge's instance", Duration::from_secs(60), || {
        instances().len() == 1
    });
    let row = &instances()[0];
    assert_eq!(row["pathway"]["id"], "heart-failure", "{row}");
    assert!(row["subject"].as_str().unwrap_or("").starts_with("p-"));
    wait_for(
        "the FHIR messages acked or dead-lettered",
        Duration::from_secs(60),
        || stream_len(&rt, &js, "PARCOURS_FHIR") == 0,
    );
    wait_for("the XML dead-lettered", Duration::from_secs(60), || {
        stream_len(&rt, &js, "PARCOURS_DLQ") == 1
    });
    // The XML itself is kept in the log's dead letters, not in the DLQ stream.
    let (_, v) = http(&server.addr, "GET", "/v1/dead-letters", None).expect("dead letters");
    let letters = v["dead_letters"].as_array().cloned().unwrap_or_default();
    assert!(
        letters
            .iter()
            .any(|l| l["source"] == "nats:parcours.cpts-fhir.fhir.in"),
        "{v}"
    );
    // Sent again: a duplicate, acked, nothing more.
    publish("application/fhir+json", bundle);
    wait_for("the resend acked", Duration::from_secs(60), || {
        stream_len(&rt, &js, "PARCOURS_FHIR") == 0
    });
    assert_eq!(instances().len(), 1);
    assert_eq!(stream_len(&rt, &js, "PARCOURS_DLQ"), 1);
    assert!(server.terminate().success());
}
