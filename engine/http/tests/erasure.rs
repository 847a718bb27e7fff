//! `POST /v1/erasures`: a coordinator erases a patient through the API, over a real
//! SQLite log with the vault wired as `parcours serve` wires it (tokens at intake, sealed
//! dead letters): the key is destroyed, the token no longer opens, the dead letter that
//! names the patient is gone, `patient.erased` is in the log and the request in the
//! audit trail; the other patient keeps everything.

mod contract;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use parcours_runtime::{
    Engine, EngineConfig, InProcessBus, PathwayRegistry, ServiceConfig, SystemClock, service,
};
use parcours_store::{AuditFilter, AuditLog, DeadLetter, EventStore, PatientKeys};
use parcours_store_sqlite::SqliteStore;
use parcours_vault::{LocalKeyFile, VaultStore};
use serde_json::{Value, json};
use tower::ServiceExt;

fn key() -> parcours_http::auth::keys::Secret {
    parcours_http::auth::keys::Secret::new(
        "pck_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", key().expose()));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("response");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_erases_a_patient() {
    let dir = tempfile::tempdir().expect("dir");
    let raw = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("store");
    let store = VaultStore::new(
        raw.clone(),
        LocalKeyFile::from_key(&[3u8; 32]).expect("key"),
    );
    let vault = store.vault().clone();
    let mut registry = PathwayRegistry::new();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/heart-failure.yaml");
    registry.add(
        parcours_lang::load_file(&path)
            .expect("read")
            .pathway
            .expect("compiles"),
    );
    let engine = Engine::open(store.clone(), registry.clone(), EngineConfig::default())
        .await
        .expect("engine");
    let token = tokio_util::sync::CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = service::start(
        engine,
        InProcessBus::new(1024),
        SystemClock,
        ServiceConfig::default(),
        token,
        &tracker,
    );
    let pseudonymizer = parcours_identity::Pseudonymizer::from_key(&[7u8; 32]).expect("key");
    let app = contract::checked(parcours_http::router(parcours_http::AppState {
        handle: parcours_vault::protecting(vault.clone(), handle),
        store: store.clone(),
        registry: parcours_runtime::SharedRegistry::new(registry),
        limits: parcours_http::Limits {
            max_body: 64 * 1024,
            max_events: 100,
            timeout: Duration::from_secs(10),
            ..parcours_http::Limits::default()
        },
        fhir: Some(parcours_http::FhirConfig {
            pseudonymizer: pseudonymizer.clone(),
            base_url: "http://parcours.test".into(),
            allow_test_ins: false,
        }),
        security: parcours_http::Security::new(
            parcours_http::auth::Authenticator::new(parcours_http::auth::AuthConfig::local(&key()))
                .expect("auth"),
        ),
        erasure: Some(Arc::new(vault.clone())),
    }));
    let ipp = |v: &str| parcours_identity::PatientIdentifier::local("1.2.250.1.211.10.200.2", v);
    let (a, b) = (
        pseudonymizer.subject("cpts-a", &ipp("IPP-A-4242")),
        pseudonymizer.subject("cpts-a", &ipp("IPP-B-5151")),
    );
    for (id, subject, visit) in [("e-a", &a, "VN-A-1"), ("e-b", &b, "VN-B-1")] {
        let (status, body) = call(
            &app,
            "POST",
            "/v1/events",
            Some(json!({
                "id": id, "tenant": "cpts-a", "source": "chu", "subject": subject,
                "occurredat": "2026-11-30T10:00:00Z", "type": "encounter.discharged",
                "data": {"encounter_id": visit, "destination": "home", "diagnoses": ["I50.1"]}
            })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    store
        .dead_letter(DeadLetter {
            source: "mllp".into(),
            tenant: Some("cpts-a".into()),
            reason: "refused".into(),
            payload: b"PID|||IPP-A-4242^^^CHU^PI||DURANDIERE^ANNE".to_vec(),
        })
        .await
        .expect("dead letter");
    let inbound = raw
        .read_stream(&format!("inbound/cpts-a/{a}"), 0)
        .await
        .expect("inbound");
    let event: Value = serde_json::from_slice(&inbound[0].record.payload).expect("json");
    let token_a = event["data"]["encounter_id"]
        .as_str()
        .expect("token")
        .to_string();
    assert!(token_a.starts_with("enc1:"), "stored as a token: {token_a}");
    assert_eq!(
        vault
            .reveal("cpts-a", &a, &token_a)
            .await
            .expect("reveal")
            .as_deref(),
        Some("VN-A-1")
    );

    // No body, no tenant, a bad subject: refused, nothing erased.
    assert_eq!(
        call(&app, "POST", "/v1/erasures?tenant=cpts-a", None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = call(
        &app,
        "POST",
        "/v1/erasures?tenant=cpts-a",
        Some(json!({"subjects": ["~dead-letters"]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A body of the wrong shape is refused saying where, never quoting what it holds
    // (identifiers and names: patient data).
    let (status, body) = call(
        &app,
        "POST",
        "/v1/erasures?tenant=cpts-a",
        Some(
            json!({"identifiers": [{"system": "1.2.250.1.213.1.4.8", "value": 280079912345678u64}],
                    "names": "DURANDIERE Anne"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        !body.to_string().contains("2800799") && !body.to_string().contains("DURANDIERE"),
        "{body}"
    );
    assert!(raw.patient_key("cpts-a", &a).await.expect("key").is_some());

    let (status, body) = call(
        &app,
        "POST",
        "/v1/erasures?tenant=cpts-a",
        Some(json!({
            "identifiers": [{"system": "1.2.250.1.211.10.200.2", "value": "IPP-A-4242"}],
            "names": ["Durandière", "DURANDIERE"]
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subjects"], json!([a]));
    assert_eq!(
        (
            body["subjects_erased"].as_u64(),
            body["subjects_linked"].as_u64()
        ),
        (Some(1), Some(0)),
        "{body}"
    );
    assert_eq!(
        (
            body["keys_destroyed"].as_u64(),
            body["dead_letters_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(
        !body.to_string().contains("IPP-A-4242"),
        "no identifier in the answer: {body}"
    );
    assert_eq!(raw.patient_key("cpts-a", &a).await.expect("key"), None);
    assert!(
        raw.patient_key("cpts-a", &b).await.expect("key").is_some(),
        "B keeps theirs"
    );
    assert_eq!(
        vault.reveal("cpts-a", &a, &token_a).await.expect("reveal"),
        None
    );
    assert!(store.dead_letters(0, 10).await.expect("letters").is_empty());
    let erased = raw
        .read_stream(&format!("erasure/cpts-a/{a}"), 0)
        .await
        .expect("erasure");
    assert_eq!(erased.len(), 1);
    let audit = raw
        .audit_entries(&AuditFilter {
            tenant: Some("cpts-a".into()),
            after: 0,
            limit: 100,
        })
        .await
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.entry.action == "patient.erase" && e.entry.detail.as_deref() == Some("200")),
        "{audit:?}"
    );
    // Both patients are still followed.
    let (status, body) = call(&app, "GET", "/v1/instances?tenant=cpts-a", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["instances"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );

    // C, followed under the IPP, then linked to the INS (more events under it): erased
    // by the INS alone, both keys go, and the running engine's vault forgets both.
    let nir = "180027512345699";
    let (c_ipp, c_ins) = (
        pseudonymizer.subject("cpts-a", &ipp("IPP-C-6262")),
        pseudonymizer.subject(
            "cpts-a",
            &parcours_identity::PatientIdentifier::ins(parcours_identity::OID_INS_NIR, nir),
        ),
    );
    let events = [
        json!({"id": "e-c-1", "subject": c_ipp, "type": "encounter.discharged",
            "occurredat": "2026-11-30T10:00:00Z",
            "data": {"encounter_id": "VN-C-1", "destination": "home", "diagnoses": ["I50.1"]}}),
        json!({"id": "e-c-2", "subject": c_ins, "type": "identity.linked",
            "occurredat": "2026-12-01T10:00:00Z", "data": {"local_subject": c_ipp}}),
        json!({"id": "e-c-3", "subject": c_ins, "type": "encounter.discharged",
            "occurredat": "2026-12-02T10:00:00Z",
            "data": {"encounter_id": "VN-C-2", "destination": "home", "diagnoses": ["I50.1"]}}),
    ];
    for mut e in events {
        e["tenant"] = json!("cpts-a");
        e["source"] = json!("chu");
        let (status, body) = call(&app, "POST", "/v1/events", Some(e)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let token_of = |stream: String| {
        let raw = raw.clone();
        async move {
            let records = raw.read_stream(&stream, 0).await.expect("inbound");
            let events: Vec<Value> = records
                .iter()
                .map(|r| serde_json::from_slice(&r.record.payload).expect("json"))
                .collect();
            events
                .iter()
                .find_map(|e| e["data"]["encounter_id"].as_str())
                .unwrap_or_else(|| panic!("a visit in {stream}: {events:?}"))
                .to_string()
        }
    };
    let tokens = [
        (
            c_ipp.clone(),
            token_of(format!("inbound/cpts-a/{c_ipp}")).await,
        ),
        (
            c_ins.clone(),
            token_of(format!("inbound/cpts-a/{c_ins}")).await,
        ),
    ];
    for (subject, token) in &tokens {
        assert!(
            vault
                .reveal("cpts-a", subject, token)
                .await
                .expect("reveal")
                .is_some(),
            "the token opens before erasure"
        );
    }
    let (status, body) = call(
        &app,
        "POST",
        "/v1/erasures?tenant=cpts-a",
        Some(json!({"identifiers": [{"system": parcours_identity::OID_INS_NIR, "value": nir}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subjects"], json!([c_ins]), "the keys asked only");
    assert_eq!(
        (
            body["subjects_erased"].as_u64(),
            body["subjects_linked"].as_u64(),
            body["keys_destroyed"].as_u64()
        ),
        (Some(2), Some(1), Some(2)),
        "{body}"
    );
    assert!(!body.to_string().contains(&c_ipp), "counts only: {body}");
    for (subject, token) in &tokens {
        assert_eq!(
            vault
                .reveal("cpts-a", subject, token)
                .await
                .expect("reveal"),
            None
        );
        assert_eq!(raw.patient_key("cpts-a", subject).await.expect("key"), None);
    }

    // D, whose key the log joins to more keys than a person has (identities merged
    // wrongly): refused as it stands (422, not a 503 that invites the same request
    // again), nothing erased.
    let d = pseudonymizer.subject("cpts-a", &ipp("IPP-D-7373"));
    let (status, body) = call(
        &app,
        "POST",
        "/v1/events",
        Some(json!({
            "id": "e-d", "tenant": "cpts-a", "source": "chu", "subject": d,
            "occurredat": "2026-11-30T10:00:00Z", "type": "encounter.discharged",
            "data": {"encounter_id": "VN-D-1", "destination": "home", "diagnoses": ["I50.1"]}
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let merges: Vec<Value> = (0..=parcours_runtime::links::PERSON_KEYS_MAX)
        .map(|i| {
            json!({"id": format!("m-d-{i}"), "tenant": "cpts-a", "source": "chu",
                "subject": d, "occurredat": "2026-12-01T10:00:00Z",
                "type": "identity.merged", "data": {"merged_subject": format!("p-dup-{i}")}})
        })
        .collect();
    for batch in merges.chunks(100) {
        let (status, body) = call(&app, "POST", "/v1/events", Some(json!(batch))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = call(
        &app,
        "POST",
        "/v1/erasures?tenant=cpts-a",
        Some(json!({"subjects": [d]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "erasure_refused", "{body}");
    assert!(
        raw.patient_key("cpts-a", &d).await.expect("key").is_some(),
        "nothing erased"
    );
}
