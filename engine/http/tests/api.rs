//! The HTTP API over a real SQLite log and the real service, on a virtual clock.

mod contract;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use parcours_runtime::{
    Clock, Engine, EngineConfig, Handle, InProcessBus, PathwayRegistry, ServiceConfig, service,
};
use parcours_store::EventStore;
use parcours_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Clone)]
struct TestClock(Arc<Mutex<Timestamp>>);

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock")
    }
}

fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("ts")
}

/// The key every request of this test carries (the embedded mode's kind of key: every
/// tenant, coordinator and integration).
fn test_key() -> parcours_http::auth::keys::Secret {
    parcours_http::auth::keys::Secret::new(
        "pck_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )
}

struct Api {
    app: Router,
    handle: Handle,
    store: SqliteStore,
    clock: TestClock,
    _dir: tempfile::TempDir,
    _token: tokio_util::sync::DropGuard,
}

async fn api() -> Api {
    api_with_max_body(64 * 1024).await
}

async fn api_with_max_body(max_body: usize) -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("store");
    let mut registry = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways")
            .join(f);
        registry.add(
            parcours_lang::load_file(&path)
                .expect("read")
                .pathway
                .expect("compiles"),
        );
    }
    let engine = Engine::open(store.clone(), registry.clone(), EngineConfig::default())
        .await
        .expect("engine");
    let clock = TestClock(Arc::new(Mutex::new(t0())));
    let token = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = service::start(
        engine,
        InProcessBus::new(1024),
        clock.clone(),
        ServiceConfig::default(),
        token.clone(),
        &tracker,
    );
    let app = contract::checked(parcours_http::router(parcours_http::AppState {
        handle: handle.clone(),
        store: store.clone(),
        registry: parcours_runtime::SharedRegistry::new(registry),
        limits: parcours_http::Limits {
            max_body,
            max_events: 100,
            timeout: Duration::from_secs(10),
            ..parcours_http::Limits::default()
        },
        fhir: Some(parcours_http::FhirConfig {
            pseudonymizer: parcours_identity::Pseudonymizer::from_key(&[7u8; 32]).expect("key"),
            base_url: "http://parcours.test".into(),
            allow_test_ins: false,
        }),
        security: parcours_http::Security::new(
            parcours_http::auth::Authenticator::new(parcours_http::auth::AuthConfig::local(
                &test_key(),
            ))
            .expect("auth"),
        )
        .with_rate(100_000, 100_000),
        erasure: None,
    }));
    Api {
        app,
        handle,
        store,
        clock,
        _dir: dir,
        _token: token.drop_guard(),
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        ct: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", test_key().expose()));
        if body.is_some() {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// A POST of raw bytes (not necessarily UTF-8).
    async fn post_bytes(&self, uri: &str, body: Vec<u8>, ct: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("POST")
            .uri(uri)
            .header("authorization", format!("Bearer {}", test_key().expose()))
            .header("content-type", ct)
            .body(Body::from(body))
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, "").await
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(&body.to_string()), "application/json")
            .await
    }

    /// POST a CloudEvents batch (an array) to `/v1/events`.
    async fn post_batch(&self, batch: &Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/v1/events",
            Some(&batch.to_string()),
            "application/cloudevents-batch+json",
        )
        .await
    }

    /// Move the virtual clock and let the engine fire what is due; wait until `done`.
    async fn advance_until(&self, by: SignedDuration, mut done: impl AsyncFnMut(&Api) -> bool) {
        {
            let mut now = self.clock.0.lock().expect("clock");
            *now += by;
        }
        for _ in 0..500 {
            self.handle.wake();
            if done(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine did not get there in 5 s");
    }
}

fn ev(id: &str, at: Timestamp, ty: &str, data: Value) -> Value {
    json!({"id": id, "tenant": "cpts-a", "source": "test", "subject": "p-1",
           "occurredat": at.to_string(), "type": ty, "data": data})
}

fn discharge() -> Value {
    ev(
        "adt-1",
        t0(),
        "encounter.discharged",
        json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    )
}

async fn enrolled(api: &Api) -> String {
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post(
            "/v1/events",
            ev(
                "consent-1",
                t0() + SignedDuration::from_hours(1),
                "consent.given",
                json!({}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    list["instances"][0]["id"]
        .as_str()
        .expect("an instance")
        .to_string()
}

#[tokio::test]
async fn an_event_is_committed_once_and_enrols() {
    let api = api().await;
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["committed"], 1);
    assert_eq!(body["results"][0]["status"], "committed");
    assert_eq!(
        body["results"][0]["instances"].as_array().map(Vec::len),
        Some(1)
    );
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["status"], "duplicate");
    assert!(api.store.contains("adt-1").await.expect("stored"));
}

/// An id already in the log for another event (another patient, tenant, type or time: a
/// sender's counter started over) is refused with 409, kept as a dead letter, and names
/// nothing of the stored event; the same event again stays a duplicate.
#[tokio::test]
async fn an_id_reused_for_another_event_is_refused_not_acknowledged() {
    let api = api().await;
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut other_patient = discharge();
    other_patient["subject"] = json!("p-2");
    let mut other_tenant = discharge();
    other_tenant["tenant"] = json!("cpts-b");
    let mut other_time = discharge();
    other_time["occurredat"] = json!((t0() + SignedDuration::from_hours(3)).to_string());
    for reused in [other_patient, other_tenant, other_time] {
        let (status, body) = api.post("/v1/events", reused.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{reused}: {body}");
        assert_eq!(body["results"][0]["status"], "refused", "{body}");
        let reason = body["results"][0]["reason"].as_str().expect("reason");
        assert!(
            reason.contains("already in the log for another event"),
            "{reason}"
        );
        assert!(
            !reason.contains("p-1") && !reason.contains("cpts-a"),
            "{reason}"
        );
    }
    // Nobody else was enrolled; the refusals are kept.
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let (_, list) = api.get("/v1/instances?tenant=cpts-b").await;
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    let (_, letters) = api.get("/v1/dead-letters?tenant=cpts-a").await;
    assert!(
        letters.to_string().contains("already in the log"),
        "{letters}"
    );
    // Twice in one batch: the second copy of the same event is a duplicate, another
    // event under the same id is refused.
    let first = ev(
        "lab-9",
        t0(),
        "observation.recorded",
        json!({"code": "29463-7", "value": 80.0, "unit": "kg"}),
    );
    let mut second = first.clone();
    second["subject"] = json!("p-3");
    let batch = json!([first.clone(), first, second]);
    let (status, body) = api.post_batch(&batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["status"].as_str())
        .collect();
    assert_eq!(statuses, ["committed", "duplicate", "refused"], "{body}");
    // The same event again: a duplicate, as before.
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], "duplicate");
}

/// A clinical time more than a day after the server's clock, or before 1900, is a
/// sender's error: refused with the reason (which does not repeat it), kept as a dead
/// letter, nothing enrolled; an hour ahead (a sender's clock a little fast) is accepted.
#[tokio::test]
async fn a_clinical_time_far_in_the_future_or_before_1900_is_refused() {
    let api = api().await;
    #[allow(clippy::disallowed_methods)]
    let now = Timestamp::now();
    for (id, at) in [
        ("adt-2062", now + SignedDuration::from_hours(24 * 365 * 36)),
        ("adt-tomorrow", now + SignedDuration::from_hours(26)),
        ("adt-1899", "1899-12-31T23:00:00Z".parse().expect("ts")),
    ] {
        let mut e = discharge();
        e["id"] = json!(id);
        e["occurredat"] = json!(at.to_string());
        let (status, body) = api.post("/v1/events", e).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{id}: {body}");
        let reason = body["results"][0]["reason"].as_str().expect("reason");
        assert!(reason.contains("clinical time"), "{reason}");
        assert!(!reason.contains(&at.to_string()), "{reason}");
        assert!(!api.store.contains(id).await.expect("contains"), "{id}");
    }
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    let (_, letters) = api.get("/v1/dead-letters?tenant=cpts-a").await;
    assert_eq!(
        letters["dead_letters"].as_array().map(Vec::len),
        Some(3),
        "{letters}"
    );
    // A batch: the plausible one committed beside the refused one, in order.
    let mut soon = discharge();
    soon["occurredat"] = json!((now + SignedDuration::from_hours(1)).to_string());
    let mut far = discharge();
    far["id"] = json!("adt-far");
    far["subject"] = json!("p-9");
    far["occurredat"] = json!((now + SignedDuration::from_hours(24 * 30)).to_string());
    let batch = json!([far, soon]);
    let (status, body) = api.post_batch(&batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["results"][0]["status"], "refused", "{body}");
    assert_eq!(body["results"][1]["status"], "committed", "{body}");
}

/// What axum itself refuses (a query or path that does not parse, an unknown query
/// parameter, a body over the limit, a method a route lacks) answers in the API's JSON
/// error shape, and in a FHIR OperationOutcome under `/fhir/`.
#[tokio::test]
async fn every_refusal_is_json_and_unknown_parameters_are_refused() {
    let api = api().await;
    for (uri, code, says) in [
        ("/v1/tasks?tenant=cpts-a&rol=gp", "bad_request", "rol"),
        ("/v1/tasks?tenant=cpts-a&limit=ten", "bad_request", "limit"),
        ("/v1/effects?tenant=cpts-a&after=-1", "bad_request", "after"),
        (
            "/v1/instances?tenant=cpts-a&status=weird",
            "bad_status",
            "active",
        ),
        ("/v1/pathways/heart-failure/x/graph", "bad_request", ""),
    ] {
        let (status, body) = api.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], code, "{uri}: {body}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.contains(says), "{uri}: {message}");
    }
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(100 * 1024));
    let (status, body) = api
        .call("POST", "/v1/events", Some(&big), "application/json")
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    // The answer names the limit and how to live with it.
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("at most 65536 bytes") && message.contains("--max-body"),
        "{message}"
    );
    let (status, body) = api
        .call("POST", "/fhir/cpts-a", Some(&big), "application/fhir+json")
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
    let diagnostics = body["issue"][0]["diagnostics"]
        .as_str()
        .expect("diagnostics");
    assert!(diagnostics.contains("at most 65536 bytes"), "{diagnostics}");
    let (status, body) = api.call("DELETE", "/v1/events", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a/Task",
            Some("{}"),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], "not-supported", "{body}");
    // What a FHIR client reads first: the CapabilityStatement, without credentials.
    let req = Request::builder()
        .uri("/fhir/cpts-a/metadata")
        .body(Body::empty())
        .expect("request");
    let res = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let cap: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(cap["resourceType"], "CapabilityStatement", "{cap}");
    assert_eq!(cap["fhirVersion"], "4.0.1", "{cap}");
    assert_eq!(
        cap["implementation"]["url"], "http://parcours.test/fhir/cpts-a",
        "{cap}"
    );
    let types: Vec<&str> = cap["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "Encounter",
            "Observation",
            "Condition",
            "Patient",
            "Task",
            "Communication"
        ]
    );
}

/// A subject with the shape of an identifier in clear (a NIR, an INS, an IPP) is
/// refused, and the answer does not repeat it.
/// The FHIR endpoint reads bodies up to the server's limit (`--max-body`), above the FHIR
/// mapping's own default (16 MiB): one limit, the operator's.
#[tokio::test]
async fn a_fhir_body_is_read_up_to_the_servers_limit() {
    let api = api_with_max_body(24 << 20).await;
    // 17 MiB: an entry parcours does not map, its narrative padded.
    let padding = "x".repeat(17 << 20);
    let body = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [{
            "resource": {"resourceType": "Basic", "id": "b1",
                         "code": {"text": "padding"},
                         "text": {"status": "generated",
                                  "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{padding}</div>")}},
            "request": {"method": "PUT", "url": "Basic/b1"}
        }]
    })
    .to_string();
    assert!(body.len() > 16 << 20);
    let (status, answer) = api
        .call("POST", "/fhir/cpts-a", Some(&body), "application/fhir+json")
        .await;
    let text = answer.to_string();
    assert_eq!(status, StatusCode::OK, "{}", &text[..text.len().min(500)]);
    assert_eq!(answer["type"], "batch-response");
}

#[tokio::test]
async fn a_national_identifier_is_not_a_subject() {
    let api = api().await;
    for subject in ["180017512345678", "185122A123456", "00123456"] {
        let mut e = discharge();
        e["subject"] = json!(subject);
        let (status, body) = api.post("/v1/events", e).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{subject}: {body}");
        assert!(body.to_string().contains("identifier in clear"), "{body}");
        assert!(!body.to_string().contains(subject), "{body}");
    }
}

#[tokio::test]
async fn a_batch_with_one_bad_event_records_nothing_and_says_which() {
    let api = api().await;
    let mut bad = ev(
        "bad-1",
        t0(),
        "encounter.discharged",
        json!({"destination": "home"}),
    );
    bad["data"]["discharge_to"] = json!("home");
    let batch = json!([discharge(), bad]);
    let (status, body) = api.post_batch(&batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_events");
    assert_eq!(body["error"]["details"][0]["index"], 1);
    let message = body["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("discharge_to"), "{message}");
    assert!(
        !api.store.contains("adt-1").await.expect("contains"),
        "nothing recorded"
    );
    let kept = api.store.dead_letters(0, 10).await.expect("dead letters");
    assert_eq!(kept.len(), 1, "the refused body is kept");
    assert!(kept[0].letter.reason.contains("discharge_to"));
}

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_event_quotes_none_of_its_values() {
    const NAME: &str = "DUPONT Jean 1950-03-12";
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // One thread in this test's runtime: the service's tasks log here too.
    let _logging = tracing::subscriber::set_default(subscriber);
    let api = api().await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut e = discharge();
        f(&mut e);
        e.to_string()
    };
    let bodies = [
        with(&|e| e["data"]["diagnoses"] = json!(NAME)),
        with(&|e| e["data"]["admitted_at"] = json!(NAME)),
        with(&|e| e["data"]["encounter_id"] = json!([NAME])),
        with(&|e| e["data"][NAME] = json!(1)),
        with(&|e| e["occurredat"] = json!(NAME)),
        with(&|e| e["type"] = json!(NAME)),
        with(&|e| e["id"] = json!({ "n": NAME })),
        format!("{{\"id\": {NAME}}}"),
        format!("[{}, {{\"id\": \"x\", \"data\": \"{NAME}\"}}]", discharge()),
    ];
    for body in &bodies {
        let (status, answer) = api
            .call("POST", "/v1/events", Some(body), "application/json")
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let shown = answer.to_string();
        assert!(
            !shown.contains("DUPONT") && !shown.contains("Jean"),
            "the answer quotes the value: {shown}"
        );
    }
    let (_, answer) = api
        .call("POST", "/v1/events", Some(&bodies[0]), "application/json")
        .await;
    assert_eq!(
        answer["error"]["details"][0]["message"],
        "`data.diagnoses`: a string where a sequence is expected",
        "the path and the expected type are kept"
    );
    let (status, answer) = api
        .call(
            "POST",
            "/v1/tasks/t-1/outcome",
            Some(&json!({"outcome": ["DUPONT Jean 1950-03-12"]}).to_string()),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(!answer.to_string().contains("DUPONT"), "{answer}");
    assert!(
        answer
            .to_string()
            .contains("`outcome`: an array where a string is expected"),
        "{answer}"
    );

    let kept = api.store.dead_letters(0, 100).await.expect("dead letters");
    assert_eq!(
        kept.len(),
        bodies.len() + 1,
        "each refused body is kept (the first was sent twice)"
    );
    for k in &kept {
        assert!(
            !k.letter.reason.contains("DUPONT") && !k.letter.reason.contains("Jean"),
            "a dead letter's reason quotes the value: {}",
            k.letter.reason
        );
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(
        !logged.contains("DUPONT") && !logged.contains("Jean"),
        "the logs quote the value:\n{logged}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_is_kept() {
    let api = api().await;
    let (status, body) = api
        .call("POST", "/v1/events", Some("{\"id\": "), "application/json")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let m = body["error"]["message"].as_str().unwrap_or("");
    assert!(m.contains("line 1, column"), "{m}");

    let (status, body) = api
        .call(
            "POST",
            "/v1/events",
            Some("<Bundle/>"),
            "application/fhir+xml",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");

    let big = format!("[{}]", vec![discharge().to_string(); 400].join(","));
    let (status, _) = api
        .call("POST", "/v1/events", Some(&big), "application/json")
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let mut named = discharge();
    named["subject"] = json!("Jean Dupont");
    let (status, body) = api.post("/v1/events", named).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("pseudonymous")
    );

    let timer = ev(
        "t-1",
        t0(),
        "timer.fired",
        json!({"timer_id": "x", "instance_id": "y"}),
    );
    let (status, body) = api.post("/v1/events", timer).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = api.get("/v1/tasks").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the tenant is required");
    let (status, _) = api.get("/v1/tasks?tenant=cpts-a&status=late").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/v1/instances/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let kept = api.store.dead_letters(0, 10).await.expect("dead letters");
    assert_eq!(
        kept.len(),
        3,
        "bad JSON, a name as subject, a timer from outside"
    );
}

#[tokio::test]
async fn an_instance_shows_its_states_timers_and_open_tasks() {
    let api = api().await;
    let id = enrolled(&api).await;
    let (status, body) = api.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pathway"]["id"], "heart-failure");
    assert_eq!(body["status"], "active");
    assert_eq!(body["tracks"][0]["track"], "main");
    assert_eq!(body["tracks"][0]["state"], "early_post_discharge");
    assert_eq!(body["variables"]["consented"], true);
    let tasks = body["tasks"].as_array().expect("tasks");
    assert!(tasks.iter().any(|t| t["code"] == "gp-visit"), "{tasks:?}");
    let timers = body["timers"].as_array().expect("timers");
    assert!(!timers.is_empty());
    assert!(
        timers
            .windows(2)
            .all(|w| w[0]["fire_at"].as_str() <= w[1]["fire_at"].as_str())
    );
}

/// PRADO's adviser collects the consent in hospital, before the discharge: the new
/// instance receives it at enrolment, in the discharge's commit, and starts the plan at
/// once — posted one by one, or the two in one batch. Its history names the consent as
/// the cause of the plan's tasks.
#[tokio::test]
async fn a_consent_given_before_the_discharge_starts_the_plan_at_once() {
    let consent = |subject: &str| {
        let mut c = ev(
            &format!("consent-{subject}"),
            t0() - SignedDuration::from_hours(30),
            "consent.given",
            json!({"scope": "heart-failure"}),
        );
        c["subject"] = json!(subject);
        c
    };
    let discharge_of = |subject: &str| {
        let mut d = discharge();
        d["id"] = json!(format!("adt-{subject}"));
        d["subject"] = json!(subject);
        d
    };
    let api = api().await;
    let (status, body) = api.post("/v1/events", consent("p-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.post("/v1/events", discharge_of("p-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let batch = json!([consent("p-2"), discharge_of("p-2")]);
    let (status, body) = api.post_batch(&batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Recorded under the hospital's IPP; the discharge message links it to the INS.
    let (status, body) = api.post("/v1/events", consent("ipp-3")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut link = ev(
        "link-3",
        t0(),
        "identity.linked",
        json!({"local_subject": "ipp-3"}),
    );
    link["subject"] = json!("p-3");
    let (status, body) = api.post_batch(&json!([link, discharge_of("p-3")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (subject, consent) in [
        ("p-1", "consent-p-1"),
        ("p-2", "consent-p-2"),
        ("p-3", "consent-ipp-3"),
    ] {
        let (_, list) = api
            .get(&format!("/v1/patients/{subject}/instances?tenant=cpts-a"))
            .await;
        let id = list["instances"][0]["id"].as_str().expect("an instance");
        let (status, body) = api.get(&format!("/v1/instances/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["tracks"][0]["state"], "early_post_discharge", "{body}");
        assert_eq!(body["variables"]["consented"], true, "{body}");
        let open: Vec<&Value> = body["tasks"].as_array().expect("tasks").iter().collect();
        assert!(open.iter().all(|t| t["code"] != "obtain-consent"), "{body}");
        assert!(open.iter().any(|t| t["code"] == "gp-visit"), "{body}");
        let (_, history) = api.get(&format!("/v1/instances/{id}/history")).await;
        let gp = history["history"]
            .as_array()
            .expect("history")
            .iter()
            .find(|h| h["type"] == "task.requested" && h["change"]["code"] == "gp-visit")
            .expect("the GP visit was requested");
        assert_eq!(gp["cause"]["id"], consent, "{gp}");
        // Where the consent is stored under another key too.
        assert_eq!(gp["cause"]["type"], "consent.given", "{gp}");
    }
}

#[tokio::test]
async fn history_says_why_each_task_exists() {
    let api = api().await;
    let id = enrolled(&api).await;
    let (status, body) = api.get(&format!("/v1/instances/{id}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let history = body["history"].as_array().expect("history");
    let gp = history
        .iter()
        .find(|h| h["type"] == "task.requested" && h["change"]["code"] == "gp-visit")
        .expect("the GP visit was requested");
    assert_eq!(gp["cause"]["id"], "consent-1");
    assert_eq!(gp["cause"]["type"], "consent.given");
    assert_eq!(gp["cause"]["source"], "test");
    assert_eq!(gp["rule"], "early_post_discharge/on_enter");
    assert_eq!(gp["effect"], "task");
    assert!(
        history
            .windows(2)
            .all(|w| w[0]["record"].as_u64() <= w[1]["record"].as_u64())
    );
}

/// After an identity merge the instance belongs to the surviving key, and its history
/// still says why each earlier record exists (their causes are in the retired key's
/// inbound stream).
#[tokio::test]
async fn history_follows_an_identity_merge() {
    let api = api().await;
    let id = enrolled(&api).await;
    let mut merge = ev(
        "a40-1",
        t0() + SignedDuration::from_hours(2),
        "identity.merged",
        json!({"merged_subject": "p-1"}),
    );
    merge["subject"] = json!("p-2");
    let (status, body) = api.post("/v1/events", merge.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["instances"], json!([id.as_str()]));
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    assert_eq!(list["instances"][0]["subject"], "p-2", "{list}");

    let (status, body) = api.get(&format!("/v1/instances/{id}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let history = body["history"].as_array().expect("history");
    let rekeyed = history
        .iter()
        .find(|h| h["type"] == "instance.rekeyed")
        .expect("the merge is in the history");
    assert_eq!(rekeyed["cause"]["type"], "identity.merged");
    assert_eq!(rekeyed["rule"], "identity/merge");
    assert_eq!(rekeyed["change"]["from"], "p-1");
    assert_eq!(rekeyed["change"]["to"], "p-2");
    let gp = history
        .iter()
        .find(|h| h["type"] == "task.requested" && h["change"]["code"] == "gp-visit")
        .expect("the GP visit was requested");
    assert_eq!(
        gp["cause"]["type"], "consent.given",
        "cause found under p-1"
    );

    // A key merged into itself is refused with a reason.
    merge["id"] = json!("a40-2");
    merge["data"]["merged_subject"] = json!("p-2");
    let (status, body) = api.post("/v1/events", merge).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body.to_string().contains("merged into itself"), "{body}");
}

#[tokio::test]
async fn worklists_and_task_outcomes() {
    let api = api().await;
    enrolled(&api).await;
    let (status, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp&kind=task").await;
    assert_eq!(status, StatusCode::OK);
    let items = body["items"].as_array().expect("items");
    let gp = items
        .iter()
        .find(|i| i["code"] == "gp-visit")
        .expect("gp-visit on the GP worklist");
    assert_eq!(gp["status"], "open");
    let task = gp["id"].as_str().expect("id").to_string();
    let (_, other) = api.get("/v1/tasks?tenant=cpts-b").await;
    assert_eq!(other["items"], json!([]), "another tenant sees nothing");

    let (status, _) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "done"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let at = (t0() + SignedDuration::from_hours(30)).to_string();
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "completed", "at": at}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], "committed");
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp").await;
    assert!(
        !body["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["id"] == task.as_str()),
        "the task left the worklist"
    );
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "completed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "duplicate", "an answer is idempotent");
    let (status, _) = api
        .post(
            "/v1/tasks/00000000-0000-0000-0000-000000000000/outcome",
            json!({"outcome": "completed"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn overdue_tasks_alerts_and_handoffs_through_the_timer_loop() {
    let api = api().await;
    let id = enrolled(&api).await;
    // Weight gain: an alert for the nurse, acknowledged through the API.
    for (n, (h, kg)) in [(2, 80.0), (30, 82.5)].into_iter().enumerate() {
        let w = ev(
            &format!("w-{n}"),
            t0() + SignedDuration::from_hours(h),
            "observation.recorded",
            json!({"code": "29463-7", "value": kg, "unit": "kg"}),
        );
        let (status, body) = api.post("/v1/events", w).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&kind=alert").await;
    let alert = body["items"][0]["id"]
        .as_str()
        .expect("an alert")
        .to_string();
    assert_eq!(body["items"][0]["code"], "weight-gain");
    // The same alert as a FHIR Communication, for a care-team system.
    let (status, c) = api
        .get(&format!("/fhir/cpts-a/Communication/{alert}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["resourceType"], "Communication");
    assert_eq!(c["id"], alert.as_str());
    // A route that reads no query refuses one it does not know, as the others do.
    let (status, body) = api
        .post(
            &format!("/v1/alerts/{alert}/acknowledge?when=now"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .post(&format!("/v1/alerts/{alert}/acknowledge"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The GP visit as requested, before its deadline.
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp").await;
    let gp_visit = body["items"]
        .as_array()
        .and_then(|i| i.iter().find(|t| t["code"] == "gp-visit"))
        .and_then(|t| t["id"].as_str())
        .expect("the GP visit")
        .to_string();
    let (status, requested) = api.get(&format!("/fhir/cpts-a/Task/{gp_visit}")).await;
    assert_eq!(status, StatusCode::OK, "{requested}");

    // Eight days on, the unanswered GP visit is escalated to the coordinator (at its due
    // time, day 7) on the worklist.
    api.advance_until(SignedDuration::from_hours(24 * 8), async |api: &Api| {
        let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp").await;
        body["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|t| t["code"] == "gp-visit" && t["status"] == "escalated")
        })
    })
    .await;
    // A care-team system reading it as a FHIR Task sees where it stands.
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp").await;
    let late = body["items"]
        .as_array()
        .and_then(|i| i.iter().find(|t| t["code"] == "gp-visit"))
        .expect("the GP visit")
        .clone();
    let (status, task) = api
        .get(&format!(
            "/fhir/cpts-a/Task/{}",
            late["id"].as_str().unwrap_or("")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(
        task["businessStatus"]["coding"][0],
        json!({"system": "urn:parcours:business-status", "code": late["status"]}),
        "{task}"
    );
    // The escalation made the coordinator responsible for it: the Task's owner, as the
    // escalation's effect says; the GP still performs it.
    assert_eq!(late["escalated_to"], "coordinator", "{late}");
    // Its version and time are the escalation's, not the request's: a client that keeps
    // the version it read sees that the task changed.
    assert_eq!(task["lastModified"], "2026-03-09T09:00:00Z", "{task}");
    assert_eq!(task["meta"]["lastUpdated"], task["lastModified"], "{task}");
    let version = |t: &Value| {
        t["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a version")
    };
    assert!(version(&task) > version(&requested), "{task}");
    assert_eq!(
        task["owner"]["identifier"]["value"], "coordinator",
        "{task}"
    );
    assert_eq!(
        task["performerType"][0]["coding"][0]["code"], "gp",
        "{task}"
    );
    // And the coordinator's FHIR worklist holds it under that owner.
    let (status, theirs) = api.get("/fhir/cpts-a/Task?owner=coordinator").await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    let listed = theirs["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["resource"]["id"] == late["id"])
        .expect("the escalated GP visit in the coordinator's search");
    assert_eq!(listed["resource"]["owner"], task["owner"], "{listed}");

    // Six months on, the programme hands the patient to the GP.
    api.advance_until(SignedDuration::from_hours(24 * 190), async |api: &Api| {
        let (_, body) = api.get("/v1/tasks?tenant=cpts-a&kind=handoff").await;
        body["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&kind=handoff").await;
    let handoff = body["items"][0]["id"]
        .as_str()
        .expect("handoff")
        .to_string();
    assert_eq!(body["items"][0]["role"], "gp");
    let (status, body) = api
        .post(
            &format!("/v1/handoffs/{handoff}/answer"),
            json!({"accepted": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = api.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(body["handoffs"], json!([]), "accepted: no longer open");

    // Everything published is in the effects feed, in log order (the effects of one
    // decision share its position).
    let (_, feed) = api.get("/v1/effects?tenant=cpts-a&limit=1000").await;
    let effects = feed["effects"].as_array().expect("effects");
    assert!(effects.iter().any(|e| e["kind"] == "handoff"));
    assert!(
        effects
            .windows(2)
            .all(|w| w[0]["position"].as_u64() <= w[1]["position"].as_u64())
    );
}

/// `GET /v1/effects?wait=N` waits up to N seconds for an effect when there is none yet
/// (long polling, for care-team systems without NATS), answers as soon as one is
/// committed, and refuses a wait over the bound.
#[tokio::test]
async fn the_effects_feed_waits_for_the_next_effect() {
    let api = std::sync::Arc::new(api().await);
    let (status, body) = api.get("/v1/effects?tenant=cpts-a").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effects"], json!([]));
    let next = body["next"].as_u64().expect("next");

    // Nothing comes: an empty page once the wait is over, the cursor unchanged.
    let started = tokio::time::Instant::now();
    let (status, body) = api
        .get(&format!("/v1/effects?tenant=cpts-a&after={next}&wait=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["effects"], json!([]));
    assert_eq!(body["next"].as_u64(), Some(next));
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");

    // A waiting reader gets the discharge's effects.
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get(&format!("/v1/effects?tenant=cpts-a&after={next}&wait=20"))
                .await
        })
    };
    let (status, body) = api.post("/v1/events", discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = waiting.await.expect("the waiting request");
    assert_eq!(status, StatusCode::OK, "{body}");
    let effects = body["effects"].as_array().expect("effects");
    assert!(
        effects.iter().any(|e| e["kind"] == "task"),
        "the discharge's tasks: {body}"
    );
    assert!(body["next"].as_u64() > Some(next));

    let (status, body) = api.get("/v1/effects?tenant=cpts-a&wait=21").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_wait", "{body}");
}

#[tokio::test]
async fn health_and_pathways() {
    let api = api().await;
    assert_eq!(api.get("/healthz").await.0, StatusCode::OK);
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = api.get("/v1/pathways").await;
    let ids: Vec<&str> = body["pathways"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["heart-failure", "type2-diabetes"]);
    let version = &body["pathways"][0]["version"];
    let (status, body) = api
        .get(&format!("/v1/pathways/heart-failure/{version}/graph"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().unwrap_or("").starts_with("---"), "{body}");
}

#[tokio::test]
async fn the_api_describes_itself_without_credentials() {
    let api = api().await;
    let req = Request::builder()
        .uri("/v1/openapi.json")
        .body(Body::empty())
        .expect("request");
    let res = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let served: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(&served, parcours_http::openapi::document());
    // What it says of one route, as an integrator reads it.
    let op = &served["paths"]["/v1/tasks/{id}/outcome"]["post"];
    assert_eq!(op["x-roles"], json!(["coordinator", "care-team"]));
    let events = &served["components"]["schemas"]["CloudEvent"]["properties"]["type"]["enum"];
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.contains(&json!("encounter.discharged"))),
        "the catalogue's types: {events}"
    );
    // Routes that read no query refuse an unknown parameter, as the others do.
    let (status, body) = api.get("/v1/pathways?verbose=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// POST [`fhir_discharge`] to tenant A's FHIR endpoint; it is answered 200 (its
/// transaction-response bundle returned).
async fn post_fhir_discharge(api: &Api) -> Value {
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&fhir_discharge().to_string()),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn fhir_discharge() -> Value {
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:pat-1", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "id": "pat-1",
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]},
                                "system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}]}},
            {"fullUrl": "urn:uuid:enc-1", "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": "enc-1", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:pat-1"},
                "period": {"start": "2026-02-24T10:00:00+01:00", "end": "2026-03-02T10:00:00+01:00"},
                "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}],
                "hospitalization": {"dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "home"}]}}}}
        ]
    })
}

/// A care-team system or a coordinator knowing a patient by an identifier (the IPP, the
/// INS) finds the key parcours names them by: the same key the intakes made, whether
/// the system is written with FHIR's `urn:oid:` or not, and the key parcours follows
/// them under once an identity link joined the IPP to the INS. No identifier comes back.
#[tokio::test]
async fn a_patient_known_by_an_identifier_is_found_by_its_subject_key() {
    let api = api().await;
    post_fhir_discharge(&api).await;
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    let key = list["instances"][0]["subject"]
        .as_str()
        .expect("subject")
        .to_string();
    let ipp = "1.2.250.1.71.4.2.7.999";
    let ins = "1.2.250.1.213.1.4.8";
    let (status, found) = api
        .post(
            "/v1/subjects?tenant=cpts-a",
            json!({"identifiers": [
                {"system": ipp, "value": "IPP-0042"},
                {"system": format!("urn:oid:{ipp}"), "value": "IPP-0042"},
                {"system": ipp, "value": "IPP-9999"},
                {"system": ins, "value": "280079912345678"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let subjects = found["subjects"].as_array().expect("subjects");
    assert_eq!(subjects[0]["subject"], key.as_str(), "{found}");
    assert_eq!(
        subjects[1]["subject"],
        key.as_str(),
        "urn:oid: or not: {found}"
    );
    assert_eq!(subjects[0]["followed_as"], key.as_str(), "{found}");
    assert_ne!(subjects[2]["subject"], key.as_str(), "{found}");
    assert!(!found.to_string().contains("IPP-"), "{found}");
    let national = subjects[3]["subject"]
        .as_str()
        .expect("INS key")
        .to_string();

    // The IPP linked to the INS: parcours follows the patient under the INS's key.
    let link = json!({"id": "link-1", "tenant": "cpts-a", "source": "test",
        "subject": national, "occurredat": t0().to_string(), "type": "identity.linked",
        "data": {"local_subject": key}});
    let (status, body) = api.post("/v1/events", link).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, found) = api
        .post(
            "/v1/subjects?tenant=cpts-a",
            json!({"identifiers": [{"system": ipp, "value": "IPP-0042"}]}),
        )
        .await;
    assert_eq!(found["subjects"][0]["subject"], key.as_str(), "{found}");
    assert_eq!(
        found["subjects"][0]["followed_as"],
        national.as_str(),
        "{found}"
    );
    let (_, mine) = api
        .get(&format!("/v1/patients/{national}/instances?tenant=cpts-a"))
        .await;
    assert_eq!(
        mine["instances"][0]["pathway"]["id"], "heart-failure",
        "{mine}"
    );

    // Written by curl without a type (read as JSON, as every answer route reads it).
    let (status, found) = api
        .call(
            "POST",
            "/v1/subjects?tenant=cpts-a",
            Some(&json!({"identifiers": [{"system": ipp, "value": "IPP-0042"}]}).to_string()),
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["subjects"][0]["subject"], key.as_str(), "{found}");
    // What is not a list of identifiers is refused, saying where, never quoting it.
    let (status, answer) = api
        .post(
            "/v1/subjects?tenant=cpts-a",
            json!({"identifiers": "DUPONT Jean 280079912345678"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("identifiers")),
        "{answer}"
    );
    assert!(!answer.to_string().contains("DUPONT"), "{answer}");
    assert!(!answer.to_string().contains("2800799"), "{answer}");
    for (body, code) in [
        (json!({"identifiers": []}), "empty"),
        (
            json!({"identifiers": [{"system": ipp, "value": " "}]}),
            "bad_identifier",
        ),
        (
            json!({"identifiers": vec![json!({"system": ipp, "value": "x"}); 1001]}),
            "too_many_identifiers",
        ),
    ] {
        let (status, answer) = api.post("/v1/subjects?tenant=cpts-a", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
}

#[tokio::test]
async fn fhir_in_and_out() {
    let api = api().await;
    let body = post_fhir_discharge(&api).await;
    assert_eq!(body["resourceType"], "Bundle");
    assert_eq!(body["type"], "transaction-response");
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    let row = &list["instances"][0];
    assert_eq!(row["pathway"]["id"], "heart-failure", "{list}");
    let subject = row["subject"].as_str().expect("subject").to_string();
    assert!(
        subject.starts_with("p-") && !subject.contains("0042"),
        "pseudonymous: {subject}"
    );
    // The same bundle again: recognised, nothing new.
    post_fhir_discharge(&api).await;
    let (_, list) = api.get("/v1/instances?tenant=cpts-a").await;
    assert_eq!(list["instances"].as_array().map(Vec::len), Some(1));

    // Consent through the canonical API, then the GP's tasks as FHIR Tasks.
    let mut consent = ev(
        "consent-1",
        t0() + SignedDuration::from_hours(1),
        "consent.given",
        json!({}),
    );
    consent["subject"] = json!(subject);
    assert_eq!(api.post("/v1/events", consent).await.0, StatusCode::OK);
    let (status, bundle) = api.get("/fhir/cpts-a/Task?owner=gp").await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], json!(1), "{bundle}");
    // Every role's (a coordinator): `_count` cuts the page to that many entries, and
    // `total` is then unknown, left out.
    let (_, every) = api.get("/fhir/cpts-a/Task").await;
    let matches = every["entry"].as_array().map_or(0, Vec::len);
    assert!(matches >= 2, "every role's tasks and handoffs: {every}");
    assert_eq!(every["total"], json!(matches), "{every}");
    let (status, page) = api.get("/fhir/cpts-a/Task?_count=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["entry"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(page.get("total").is_none(), "{page}");
    let task = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["code"]["coding"][0]["code"] == "gp-visit")
        .expect("the GP visit as a FHIR Task")
        .clone();
    assert_eq!(task["resourceType"], "Task");
    let text = task.to_string();
    assert!(!text.contains("IPP-0042"), "no real identifier goes out");
    let task_id = task["identifier"]
        .as_array()
        .expect("identifiers")
        .iter()
        .find(|i| i["system"] == "urn:parcours:task")
        .and_then(|i| i["value"].as_str())
        .expect("the task id")
        .to_string();
    let (status, one) = api.get(&format!("/fhir/cpts-a/Task/{task_id}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let (status, _) = api.get(&format!("/fhir/cpts-b/Task/{task_id}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not visible from another tenant"
    );

    // The care-team system completes it with a FHIR Task update.
    let mut done = task.clone();
    done["status"] = json!("completed");
    done["lastModified"] = json!((t0() + SignedDuration::from_hours(40)).to_string());
    // When it was done, stated: taken as it is, even at an instant parcours served (a
    // visit at the very minute of a due time).
    done["executionPeriod"] = json!({"end": task["lastModified"]});
    // PUT at another task's id: refused (FHIR's update takes the URL's id), nothing
    // answered — the task named by the body stays open.
    let other = uuid::Uuid::nil();
    let (status, body) = api
        .call(
            "PUT",
            &format!("/fhir/cpts-a/Task/{other}"),
            Some(&done.to_string()),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let said = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
    assert!(said.contains("`Task.id`") && said.contains("URL"), "{body}");
    assert_eq!(body["issue"][0]["expression"], json!(["Task.id"]), "{body}");
    let (_, still) = api.get(&format!("/fhir/cpts-a/Task/{task_id}")).await;
    assert_eq!(still["status"], task["status"], "not answered: {still}");
    let client = &api;
    let put = |id: &str, body: &Value| {
        let (uri, body) = (format!("/fhir/cpts-a/Task/{id}"), body.to_string());
        async move {
            client
                .call("PUT", &uri, Some(&body), "application/fhir+json")
                .await
        }
    };
    let said = |body: &Value| {
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // Read, status changed, written back: its time is the one parcours served, not when
    // the visit was done — refused, saying what to set, rather than closed back then.
    let mut as_read = task.clone();
    as_read["status"] = json!("completed");
    let (status, body) = put(&task_id, &as_read).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(said(&body).contains("executionPeriod.end"), "{body}");
    // A task this tenant does not have: 404, nothing recorded.
    let unknown = uuid::Uuid::from_u128(7).to_string();
    let mut stray = done.clone();
    stray["id"] = json!(unknown);
    stray["identifier"][0]["value"] = json!(unknown);
    let (status, body) = put(&unknown, &stray).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(said(&body).contains("in this tenant"), "{body}");
    // Another patient named in `for`: refused, not recorded against that patient.
    let mut elsewhere = done.clone();
    elsewhere["for"]["identifier"]["value"] = json!(format!("p-{}", "0".repeat(32)));
    let (status, body) = put(&task_id, &elsewhere).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(said(&body).contains("another patient"), "{body}");
    // A batch entry `PUT Task/<another id>` carrying this task: refused as the direct
    // PUT is, never applied to the task the body names.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{
        "resource": done, "request": {"method": "PUT", "url": format!("Task/{unknown}")}}]});
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&batch.to_string()),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entry"][0]["response"]["status"], "400 Bad Request",
        "{body}"
    );
    let (_, still) = api.get(&format!("/fhir/cpts-a/Task/{task_id}")).await;
    assert_eq!(still["status"], task["status"], "not answered: {still}");
    let (status, body) = put(&task_id, &done).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same answer again, even with a new time: recorded already. Another answer: the
    // first is final (409), said in words a FHIR client knows.
    let mut again = done.clone();
    again["lastModified"] = json!((t0() + SignedDuration::from_hours(41)).to_string());
    for same in [&done, &again] {
        let (status, body) = put(&task_id, same).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut cancelled = again.clone();
    cancelled["status"] = json!("cancelled");
    let (status, body) = put(&task_id, &cancelled).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(said(&body).contains("closed already (completed)"), "{body}");
    // Read again, the answered task says how it ended, and when.
    let (status, ended) = api.get(&format!("/fhir/cpts-a/Task/{task_id}")).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(
        ended["businessStatus"]["coding"][0]["code"], "completed",
        "{ended}"
    );
    assert_eq!(
        ended["executionPeriod"]["end"], task["lastModified"],
        "{ended}"
    );
    assert_eq!(
        ended["code"], task["code"],
        "the request's description: {ended}"
    );
    let (_, items) = api.get("/v1/tasks?tenant=cpts-a&role=gp").await;
    assert!(
        !items["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["id"] == task_id.as_str()),
        "completed through FHIR: {items}"
    );

    // Refusals are OperationOutcomes, kept as dead letters.
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some("<Bundle xmlns=\"http://hl7.org/fhir\"/>"),
            "application/fhir+xml",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["resourceType"], "OperationOutcome");
    let mut bad = fhir_discharge();
    bad["entry"][1]["resource"]["period"]["end"] = json!("yesterday");
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&bad.to_string()),
            "application/fhir+json",
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let expr = body["issue"][0]["expression"].to_string();
    assert!(expr.contains("entry[1]"), "says where: {body}");
    // The PUT at another id, the answer at a served time, the one naming another
    // patient, the XML and the bad date.
    let kept = api.store.dead_letters(0, 10).await.expect("dead letters");
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(kept.iter().all(|d| d.letter.source == "fhir"));
}

/// Every page of a list route, following `next` (`key`: the items' array).
async fn all_pages(api: &Api, first: &str, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut uri = first.to_string();
    for _ in 0..200 {
        let (status, body) = api.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        out.extend(body[key].as_array().expect("items").iter().cloned());
        match &body["next"] {
            Value::Null => return out,
            next => {
                let next = next
                    .as_str()
                    .map_or_else(|| next.to_string(), str::to_string);
                uri = format!("{first}&after={next}");
            }
        }
    }
    panic!("no end to the pages of {first}");
}

fn ids_of(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|i| i["id"].as_str()).collect()
}

/// A worklist is paged with `limit` and the `next` cursor (null on the last page): every
/// item once, in the order of one large page. Closed items are listed by status, each
/// saying how it closed; the default is the open ones.
#[tokio::test]
async fn worklists_page_with_a_cursor_and_list_closed_items() {
    let api = api().await;
    for p in 1..=3 {
        for (id, at, ty) in [
            ("adt", t0(), "encounter.discharged"),
            (
                "consent",
                t0() + SignedDuration::from_hours(1),
                "consent.given",
            ),
        ] {
            let mut e = ev(
                &format!("{id}-{p}"),
                at,
                ty,
                json!({"encounter_id": format!("V{p}"), "destination": "home", "diagnoses": ["I50.1"]}),
            );
            if ty == "consent.given" {
                e["data"] = json!({});
            }
            e["subject"] = json!(format!("p-{p}"));
            let (status, body) = api.post("/v1/events", e).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let (status, one) = api.get("/v1/tasks?tenant=cpts-a&limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["next"], Value::Null, "everything on one page: {one}");
    let everything = one["items"].as_array().expect("items").clone();
    assert!(everything.len() > 5, "{one}");
    let paged = all_pages(&api, "/v1/tasks?tenant=cpts-a&limit=2", "items").await;
    assert_eq!(ids_of(&paged), ids_of(&everything), "pages of 2 = one page");
    let (_, first) = api.get("/v1/tasks?tenant=cpts-a&limit=2").await;
    assert!(first["next"].is_string(), "{first}");

    // Patient 1's GP visit done, patient 2 dies: its open items are withdrawn.
    let gp = everything
        .iter()
        .find(|i| i["code"] == "gp-visit" && i["subject"] == "p-1")
        .expect("p-1's GP visit");
    let task = gp["id"].as_str().expect("id");
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "completed", "at": (t0() + SignedDuration::from_hours(30)).to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut died = ev(
        "dead-2",
        t0() + SignedDuration::from_hours(31),
        "patient.deceased",
        json!({}),
    );
    died["subject"] = json!("p-2");
    let (status, body) = api.post("/v1/events", died).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let open = all_pages(&api, "/v1/tasks?tenant=cpts-a&limit=3", "items").await;
    assert!(open.iter().all(|i| i["open"] == true), "{open:?}");
    assert!(
        open.iter().all(|i| i["closed_at"].is_null()),
        "open: no closing time {open:?}"
    );
    assert!(
        !open
            .iter()
            .any(|i| i["id"] == task || i["subject"] == "p-2")
    );
    let completed = all_pages(&api, "/v1/tasks?tenant=cpts-a&status=completed", "items").await;
    // (The pathway completes tasks of its own too: the consent's.)
    assert!(ids_of(&completed).contains(&task), "{completed:?}");
    assert!(
        completed
            .iter()
            .all(|i| i["status"] == "completed" && i["open"] == false),
        "{completed:?}"
    );
    // When each closed, in clinical time: the answer's `at`, the death's time.
    let done = completed.iter().find(|i| i["id"] == task).expect("done");
    assert_eq!(
        done["closed_at"],
        (t0() + SignedDuration::from_hours(30)).to_string(),
        "{done}"
    );
    let withdrawn = all_pages(&api, "/v1/tasks?tenant=cpts-a&status=withdrawn", "items").await;
    assert!(!withdrawn.is_empty());
    assert!(
        withdrawn.iter().all(|i| i["subject"] == "p-2"
            && i["closed_at"] == (t0() + SignedDuration::from_hours(31)).to_string()),
        "{withdrawn:?}"
    );
    let closed = all_pages(
        &api,
        "/v1/tasks?tenant=cpts-a&status=closed&limit=2",
        "items",
    )
    .await;
    assert_eq!(closed.len(), completed.len() + withdrawn.len());
    let all = all_pages(&api, "/v1/tasks?tenant=cpts-a&status=all&limit=4", "items").await;
    assert_eq!(all.len(), open.len() + closed.len());
    let mixed = all_pages(
        &api,
        "/v1/tasks?tenant=cpts-a&status=completed,open,overdue,escalated",
        "items",
    )
    .await;
    assert_eq!(mixed.len(), open.len() + completed.len());
    // A closed item cannot be answered again: the same answer is a duplicate, another
    // a conflict; one withdrawn says so.
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "completed"}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("duplicate")),
        "{body}"
    );
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "not_needed"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_answered", "{body}");
    let gone = withdrawn[0]["id"].as_str().expect("id");
    let (status, body) = api
        .post(
            &format!("/v1/tasks/{gone}/outcome"),
            json!({"outcome": "completed"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_closed", "{body}");
    assert!(
        body["error"]["message"].to_string().contains("withdrawn"),
        "{body}"
    );

    // Refused: an unknown status, a cursor this route did not give.
    for (uri, code) in [
        ("/v1/tasks?tenant=cpts-a&status=done", "bad_status"),
        ("/v1/tasks?tenant=cpts-a&status=open,late", "bad_status"),
        ("/v1/tasks?tenant=cpts-a&after=garbage", "bad_cursor"),
        ("/v1/tasks?tenant=cpts-a&after=dx~w-1", "bad_cursor"),
        ("/v1/tasks?tenant=cpts-a&after=n~", "bad_cursor"),
    ] {
        let (status, body) = api.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], code, "{uri}: {body}");
    }
    // Instances page the same way: `next` only while more remain.
    let (_, page) = api.get("/v1/instances?tenant=cpts-a&limit=3").await;
    assert_eq!(page["instances"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["next"], Value::Null, "three instances: {page}");
    let instances = all_pages(&api, "/v1/instances?tenant=cpts-a&limit=1", "instances").await;
    assert_eq!(instances.len(), 3);
}

/// Dead letters are listed newest first, per tenant and by front, paged; one is read
/// without its bytes, and with them (as text, or base64 when not UTF-8) by a
/// coordinator, the read in the audit trail.
#[tokio::test]
async fn dead_letters_are_listed_newest_first_and_read_back() {
    let api = api().await;
    // An event refused for tenant A, one for tenant B, a FHIR refusal for A, a body
    // that is not UTF-8 (tenant unknown).
    let mut bad = discharge();
    bad["data"] = json!({"destination": "home"});
    let (status, _) = api.post("/v1/events", bad.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut bad_b = bad.clone();
    bad_b["tenant"] = json!("cpts-b");
    let (status, _) = api.post("/v1/events", bad_b).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(r#"{"resourceType": "Encounter"}"#),
            "application/fhir+json",
        )
        .await;
    assert!(status.is_client_error());
    let latin1 = b"{\"id\": \"caf\xe9\"}".to_vec();
    let (status, _) = api
        .post_bytes("/v1/events", latin1.clone(), "application/json")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, a) = api.get("/v1/dead-letters?tenant=cpts-a").await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let letters = a["dead_letters"].as_array().expect("letters");
    let sources: Vec<&str> = letters
        .iter()
        .filter_map(|l| l["source"].as_str())
        .collect();
    assert_eq!(
        sources,
        ["fhir", "http"],
        "newest first, tenant A's only: {a}"
    );
    assert!(letters.iter().all(|l| l["tenant"] == "cpts-a"));
    assert!(
        letters.iter().all(|l| l.get("content").is_none()),
        "no bytes in a list"
    );
    assert_eq!(a["next"], Value::Null);
    let (_, http) = api.get("/v1/dead-letters?tenant=cpts-a&source=http").await;
    assert_eq!(
        http["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{http}"
    );
    // A caller of every tenant naming none: every tenant's, and the tenantless one.
    let everyone = all_pages(&api, "/v1/dead-letters?limit=1", "dead_letters").await;
    assert_eq!(everyone.len(), 4);
    let ids: Vec<u64> = everyone.iter().filter_map(|l| l["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(everyone[0]["tenant"], Value::Null);

    // One, without its bytes, then with them.
    let http_id = http["dead_letters"][0]["id"].as_u64().expect("id");
    let (status, one) = api.get(&format!("/v1/dead-letters/{http_id}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["source"], "http");
    assert!(one.get("content").is_none(), "{one}");
    let (status, content) = api
        .get(&format!("/v1/dead-letters/{http_id}/content"))
        .await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["encoding"], "utf-8");
    let sent: Value =
        serde_json::from_str(content["content"].as_str().expect("text")).expect("the body sent");
    assert_eq!(sent, bad, "the bytes as received");
    let latin1_id = everyone[0]["id"].as_u64().expect("id");
    let (_, content) = api
        .get(&format!("/v1/dead-letters/{latin1_id}/content"))
        .await;
    assert_eq!(content["encoding"], "base64", "{content}");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(content["content"].as_str().expect("base64"))
            .expect("decodes"),
        latin1
    );
    for uri in ["/v1/dead-letters/999999", "/v1/dead-letters/x/content"] {
        let (status, body) = api.get(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    // The content read is in tenant A's audit trail, with the letter's id.
    let (_, trail) = api.get("/v1/audit?tenant=cpts-a&limit=1000").await;
    assert_eq!(trail["next"], Value::Null, "one page holds it all: {trail}");
    // Paging reads add entries of their own, after those.
    let paged = all_pages(&api, "/v1/audit?tenant=cpts-a&limit=2", "entries").await;
    let one: Vec<&Value> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["id"])
        .collect();
    let pages: Vec<&Value> = paged.iter().map(|e| &e["id"]).collect();
    assert_eq!(pages[..one.len()], one[..], "pages of 2 = one page");
    assert!(
        trail["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| {
                e["action"] == "dead_letter.content"
                    && e["target"].as_str() == Some(http_id.to_string().as_str())
            }),
        "{trail}"
    );
}

/// Answers are JSON: a body of another declared type is refused with 415 (a JSON error)
/// before anything is read or recorded, as on `/v1/events`.
#[tokio::test]
async fn answers_must_be_json() {
    let api = api().await;
    enrolled(&api).await;
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp&kind=task").await;
    let task = body["items"][0]["id"].as_str().expect("a task").to_string();
    let none = "00000000-0000-0000-0000-000000000000";
    for (uri, body) in [
        (
            format!("/v1/tasks/{task}/outcome"),
            r#"{"outcome": "completed"}"#,
        ),
        (
            format!("/v1/handoffs/{none}/answer"),
            r#"{"accepted": true}"#,
        ),
        (format!("/v1/alerts/{none}/acknowledge"), "{}"),
        (format!("/v1/alerts/{none}/acknowledge"), ""),
    ] {
        for ct in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/xml",
            "multipart/form-data",
        ] {
            let (status, answer) = api.call("POST", &uri, Some(body), ct).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{uri} as {ct}: {answer}"
            );
            assert_eq!(
                answer["error"]["code"], "unsupported_media_type",
                "{answer}"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("application/json")),
                "{answer}"
            );
        }
    }
    // Nothing was recorded: the task is open, and answers as JSON.
    let (_, body) = api.get("/v1/tasks?tenant=cpts-a&role=gp&kind=task").await;
    assert!(ids_of(body["items"].as_array().expect("items")).contains(&task.as_str()));
    let (status, answer) = api
        .call(
            "POST",
            &format!("/v1/tasks/{task}/outcome"),
            Some(r#"{"outcome": "completed"}"#),
            "application/json; charset=utf-8",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["status"], "committed", "{answer}");
}

/// A parameter update a pathway cannot take is committed (it is a fact) and the sender
/// is told what was ignored and why, without the value; one it takes has no warning.
#[tokio::test]
async fn ignored_parameters_are_told_to_the_sender() {
    let api = api().await;
    enrolled(&api).await;
    let update = |id: &str, values: Value| {
        ev(
            id,
            t0() + SignedDuration::from_hours(2),
            "parameters.updated",
            json!({ "values": values }),
        )
    };
    let (status, body) = api
        .post(
            "/v1/events",
            update(
                "u-1",
                json!({"weight_gain_kg": "DUPONT", "weight_gain_window": 5}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = &body["results"][0];
    assert_eq!(result["status"], "committed", "{body}");
    assert_eq!(
        result["warnings"],
        json!([
            "heart-failure: parameter `weight_gain_kg`: expected a number value, got a string",
            "heart-failure: parameter `weight_gain_window`: expected a duration value, got a number",
        ]),
        "{body}"
    );
    assert!(!body.to_string().contains("DUPONT"), "{body}");
    let (_, body) = api
        .post("/v1/events", update("u-2", json!({"weight_gain_kg": 2.5})))
        .await;
    assert_eq!(body["results"][0]["warnings"], json!([]), "{body}");
}

/// A FHIR batch's answer gives every entry a status and, when it was not simply
/// recorded, an OperationOutcome saying why: `201 Created` for a POST recorded, with a
/// warning when a pathway did not act on it; `200 OK` and information for an entry not
/// used; `422` for one the engine refused (kept as a dead letter). As a transaction, that
/// refusal refuses it whole (422, one OperationOutcome). A Condition without
/// `recordedDate` is recorded at its last update (not its onset). A resource POSTed is
/// created (201), the same again is already there (200), one the engine refuses is not
/// recorded (422).
#[tokio::test]
async fn fhir_transaction_entries_say_what_became_of_them() {
    let api = api().await;
    let api = &api;
    let post = |uri: &'static str, body: Value| {
        let body = body.to_string();
        async move {
            api.call("POST", uri, Some(&body), "application/fhir+json")
                .await
        }
    };
    let (status, body) = post("/fhir/cpts-a", fhir_discharge()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entry"][1]["response"]["status"], "201 Created",
        "{body}"
    );
    #[allow(clippy::disallowed_methods)]
    let far = (Timestamp::now() + SignedDuration::from_hours(24 * 30)).to_string();
    let patient = json!({"reference": "urn:uuid:pat-1"});
    let weight = |id: &str, status: &str, at: &str| {
        json!({"resourceType": "Observation", "id": id, "status": status,
               "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
               "subject": patient, "effectiveDateTime": at,
               "valueQuantity": {"value": 81.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
    };
    let entry =
        |r: Value| json!({"request": {"method": "POST", "url": r["resourceType"]}, "resource": r});
    let mut bundle = fhir_discharge();
    let more = [
        entry(weight("w-pre", "preliminary", "2026-03-02T12:00:00+01:00")),
        entry(json!({"resourceType": "Immunization", "id": "imm-1"})),
        entry(json!({"resourceType": "Condition", "id": "c-1",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
            "subject": patient, "onsetDateTime": "2015-06-01",
            "meta": {"lastUpdated": "2026-03-01T09:00:00+01:00"}})),
        entry(weight("w-far", "final", &far)),
    ];
    bundle["entry"]
        .as_array_mut()
        .expect("entries")
        .extend(more);
    bundle["type"] = json!("batch");
    let (status, body) = post("/fhir/cpts-a", bundle.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "batch-response", "{body}");
    let response = |i: usize| body["entry"][i]["response"].clone();
    let statuses: Vec<Value> = (0..6).map(|i| response(i)["status"].clone()).collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "200 OK",
            "201 Created",
            "200 OK",
            "201 Created",
            "422 Unprocessable Entity"
        ]
        .map(Value::from),
        "the patient (nothing to record), the stay again, the weight, the immunization, \
         the condition, the weight from the future: {body}"
    );
    for i in 0..6 {
        if i != 1 {
            assert_eq!(
                response(i)["outcome"]["resourceType"],
                "OperationOutcome",
                "entry {i}: {body}"
            );
        }
    }
    let issue = |i: usize| response(i)["outcome"]["issue"][0].clone();
    assert_eq!(issue(2)["severity"], "warning", "{body}");
    assert!(
        issue(2)["diagnostics"].to_string().contains("preliminary"),
        "{body}"
    );
    assert_eq!(issue(3)["severity"], "information", "{body}");
    assert_eq!(issue(3)["code"], "not-supported", "{body}");
    assert!(
        issue(4)["diagnostics"]
            .to_string()
            .contains("meta.lastUpdated"),
        "{body}"
    );
    assert_eq!(issue(5)["severity"], "error", "{body}");
    assert!(
        issue(5)["diagnostics"]
            .to_string()
            .contains("clinical time"),
        "{body}"
    );
    let (_, letters) = api.get("/v1/dead-letters?tenant=cpts-a&source=fhir").await;
    assert_eq!(
        letters["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{letters}"
    );

    // The same as a transaction: all or nothing, so the weight from the future refuses
    // it (422), one OperationOutcome naming that entry, saying what was recorded stays
    // so (here: all the rest, recorded by the batch).
    bundle["type"] = json!("transaction");
    let (status, body) = post("/fhir/cpts-a", bundle).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let issues = body["issue"].as_array().expect("issues");
    let errors: Vec<&Value> = issues.iter().filter(|i| i["severity"] == "error").collect();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(
        errors[0]["expression"][0], "Bundle.entry[5].resource",
        "{body}"
    );
    assert!(
        issues.iter().any(|i| i["severity"] == "information"
            && i["diagnostics"].to_string().contains("stays recorded")),
        "{body}"
    );
    let (_, letters) = api.get("/v1/dead-letters?tenant=cpts-a&source=fhir").await;
    assert_eq!(
        letters["dead_letters"].as_array().map(Vec::len),
        Some(2),
        "{letters}"
    );

    // One resource, created; the same again, already there.
    let lone = weight("w-lone", "final", "2026-03-02T13:00:00+01:00");
    let mut lone = lone.clone();
    lone["subject"] =
        json!({"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}});
    let (status, body) = post("/fhir/cpts-a/Observation", lone.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post("/fhir/cpts-a/Observation", lone).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // One refused by the engine: 422, not recorded.
    let mut refused = weight("w-far-lone", "final", &far);
    refused["subject"] =
        json!({"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}});
    let (status, body) = post("/fhir/cpts-a/Observation", refused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    assert_eq!(body["issue"][0]["code"], "business-rule", "{body}");
}

/// Entries of one batch with the same resource id and `meta.versionId` each get their
/// own status: the first is created, a second identical one is a resend (200, as sent
/// again later), a third with other content a version conflict (409), and the log holds
/// the first; in a transaction an identical repeat is answered 200 with the rest.
#[tokio::test]
async fn fhir_batch_entries_repeating_an_id_and_version_get_their_own_status() {
    let api = api().await;
    let weight = |id: &str, at: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
               "meta": {"versionId": "1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
               "subject": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}},
               "effectiveDateTime": at,
               "valueQuantity": {"value": 81.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
    };
    let entry = |resource: Value| json!({"request": {"method": "POST", "url": "Observation"}, "resource": resource});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(weight("w-9", "2026-03-02T08:00:00+01:00")),
        entry(weight("w-9", "2026-03-02T08:00:00+01:00")),
        entry(weight("w-9", "2026-03-02T07:00:00+01:00")),
    ]})
    .to_string();
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&batch),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<&str> = (0..3)
        .map(|i| {
            body["entry"][i]["response"]["status"]
                .as_str()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        statuses,
        ["201 Created", "200 OK", "409 Conflict"],
        "{body}"
    );
    assert_eq!(
        body["entry"][2]["response"]["outcome"]["issue"][0]["code"], "conflict",
        "{body}"
    );
    // The log holds the first entry's (its clinical time), once.
    let inbound: Vec<Timestamp> = api
        .store
        .read_all(0, 1000)
        .await
        .expect("log")
        .into_iter()
        .filter(|r| r.stream.starts_with("inbound/"))
        .map(|r| r.record.occurred_at)
        .collect();
    assert_eq!(
        inbound,
        ["2026-03-02T07:00:00Z"
            .parse::<Timestamp>()
            .expect("instant")]
    );
    // Sent again whole: each entry a resend of what it was, the conflict still one.
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&batch),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<&str> = (0..3)
        .map(|i| {
            body["entry"][i]["response"]["status"]
                .as_str()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(statuses, ["200 OK", "200 OK", "409 Conflict"], "{body}");

    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(weight("w-10", "2026-03-03T08:00:00+01:00")),
        entry(weight("w-10", "2026-03-03T08:00:00+01:00")),
    ]})
    .to_string();
    let (status, body) = api
        .call(
            "POST",
            "/fhir/cpts-a",
            Some(&transaction),
            "application/fhir+json",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "transaction-response", "{body}");
    assert_eq!(
        body["entry"][0]["response"]["status"], "201 Created",
        "{body}"
    );
    assert_eq!(body["entry"][1]["response"]["status"], "200 OK", "{body}");
}

/// A resource sent again under the same id and `meta.versionId` with other content (its
/// clinical time) is a version conflict: 409, an OperationOutcome that quotes none of
/// it, nothing recorded, kept as a dead letter; in a batch, that entry's response says
/// `409 Conflict`.
#[tokio::test]
async fn fhir_a_version_sent_again_with_other_content_is_a_conflict() {
    let api = api().await;
    let post = |uri: &'static str, body: Value| {
        let body = body.to_string();
        let api = &api;
        async move {
            api.call("POST", uri, Some(&body), "application/fhir+json")
                .await
        }
    };
    let weight = |at: &str| {
        json!({"resourceType": "Observation", "id": "w-1", "status": "final",
               "meta": {"versionId": "1"},
               "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
               "subject": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.999", "value": "IPP-0042"}},
               "effectiveDateTime": at,
               "valueQuantity": {"value": 81.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
    };
    let (status, body) = post(
        "/fhir/cpts-a/Observation",
        weight("2026-03-02T08:00:00+01:00"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(
        "/fhir/cpts-a/Observation",
        weight("2026-03-02T09:30:00+01:00"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    assert_eq!(body["issue"][0]["code"], "conflict", "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("IPP-0042") && !text.contains("09:30") && !text.contains("81"),
        "{body}"
    );
    let (_, letters) = api.get("/v1/dead-letters?tenant=cpts-a&source=fhir").await;
    assert_eq!(
        letters["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{letters}"
    );
    let mut other = weight("2026-03-02T10:00:00+01:00");
    other["id"] = json!("w-2");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": weight("2026-03-02T09:30:00+01:00")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": other}
    ]});
    let (status, body) = post("/fhir/cpts-a", batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["entry"][0]["response"]["status"], "409 Conflict",
        "{body}"
    );
    assert_eq!(
        body["entry"][0]["response"]["outcome"]["issue"][0]["code"], "conflict",
        "{body}"
    );
    assert_eq!(
        body["entry"][1]["response"]["status"], "201 Created",
        "{body}"
    );
}
