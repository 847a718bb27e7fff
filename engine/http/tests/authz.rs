//! Authentication and authorisation, generated from the route table: every route of
//! `parcours_http::routes::ROUTES` is called without credentials, with each role, and
//! with another tenant's principal, so a route added to the table without the right
//! permission, or a handler that forgets the tenant, fails here. Then tokens: expired,
//! not yet valid, wrong issuer, audience or signature, `alg: none`, HMAC confusion,
//! malformed claims; a JWKS file; rate limits; security headers; the audit trail.

mod contract;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parcours_http::auth::jwt::{IssuerConfig, PemKeyConfig};
use parcours_http::auth::keys::{ApiKeyConfig, sha256_hex};
use parcours_http::auth::{AuthConfig, Authenticator, Permission, Role};
use parcours_http::routes::{Action, ROUTES};
use parcours_runtime::{
    Clock, Engine, EngineConfig, InProcessBus, PathwayRegistry, ServiceConfig, service,
};
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

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

const ISSUER: &str = "https://idp.test/realms/cpts";
const JWKS_ISSUER: &str = "https://jwks.test";
const AUDIENCE: &str = "parcours";

/// The principals of the matrix: (name, key, tenants, roles).
const PRINCIPALS: &[(&str, &[&str], &[&str])] = &[
    ("coordinator-a", &["cpts-a"], &["coordinator"]),
    ("gp-a", &["cpts-a"], &["care-team:gp"]),
    ("nurse-a", &["cpts-a"], &["care-team:nurse"]),
    ("cardiologist-a", &["cpts-a"], &["care-team:cardiologist"]),
    ("integration-a", &["cpts-a"], &["integration"]),
    ("ops-a", &["cpts-a"], &["ops"]),
    ("coordinator-b", &["cpts-b"], &["coordinator"]),
    ("gp-b", &["cpts-b"], &["care-team:gp"]),
    ("integration-b", &["cpts-b"], &["integration"]),
    // Every tenant: the deployment-wide actions (publishing a pathway version).
    ("coordinator-all", &["*"], &["coordinator"]),
];

fn key_of(name: &str) -> String {
    // Test keys: fixed, distinct, of the generated keys' shape.
    let hex = sha256_hex(name);
    format!("pck_{hex}")
}

fn auth_config(jwks: &Path) -> AuthConfig {
    AuthConfig {
        api_keys: PRINCIPALS
            .iter()
            .map(|(name, tenants, roles)| ApiKeyConfig {
                id: format!("{name}-k1"),
                principal: (*name).into(),
                sha256: sha256_hex(&key_of(name)),
                tenants: tenants.iter().map(|t| (*t).into()).collect(),
                roles: roles.iter().map(|r| (*r).into()).collect(),
                revoked: false,
            })
            .collect(),
        issuers: vec![
            IssuerConfig {
                keys: vec![
                    PemKeyConfig {
                        kid: Some("rsa1".into()),
                        alg: "RS256".into(),
                        pem_file: Some(data("test-rsa.pub")),
                        pem: None,
                    },
                    PemKeyConfig {
                        kid: Some("ec1".into()),
                        alg: "ES256".into(),
                        pem_file: Some(data("test-ec.pub")),
                        pem: None,
                    },
                ],
                algorithms: vec!["RS256".into(), "ES256".into()],
                leeway_secs: 5,
                ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
            },
            IssuerConfig {
                jwks_file: Some(jwks.to_path_buf()),
                algorithms: vec!["RS256".into()],
                tenants_claim: "tenants".into(),
                roles_claim: "roles".into(),
                leeway_secs: 5,
                ..IssuerConfig::new(JWKS_ISSUER, vec![AUDIENCE.into()])
            },
        ],
    }
}

struct Api {
    app: Router,
    _dir: tempfile::TempDir,
    _token: tokio_util::sync::DropGuard,
}

async fn api_with(security: impl FnOnce(Authenticator) -> parcours_http::Security) -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("store");
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
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = service::start(
        engine,
        InProcessBus::new(1024),
        TestClock(Arc::new(Mutex::new(t0()))),
        ServiceConfig::default(),
        token.clone(),
        &tracker,
    );
    // A JWKS file made from the RSA test key's public half.
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(data("test-rsa.key")).expect("key")).expect("rsa");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("jwks-rsa".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&json!({"keys": [jwk]})).expect("json"),
    )
    .expect("write jwks");
    let authenticator = Authenticator::new(auth_config(&jwks)).expect("auth");
    let app = contract::checked(parcours_http::router(parcours_http::AppState {
        handle,
        store,
        registry: parcours_runtime::SharedRegistry::new(registry),
        limits: parcours_http::Limits::default(),
        fhir: Some(parcours_http::FhirConfig {
            pseudonymizer: parcours_identity::Pseudonymizer::from_key(&[7u8; 32]).expect("key"),
            base_url: "http://parcours.test".into(),
            allow_test_ins: true,
        }),
        security: security(authenticator),
        erasure: None,
    }));
    Api {
        app,
        _dir: dir,
        _token: token.drop_guard(),
    }
}

async fn api() -> Api {
    api_with(|a| parcours_http::Security::new(a).with_rate(100_000, 100_000)).await
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&Value>,
        auth: Option<&str>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }
}

fn ev(id: &str, tenant: &str, subject: &str, at: Timestamp, ty: &str, data: Value) -> Value {
    json!({"id": id, "tenant": tenant, "source": "test", "subject": subject,
           "occurredat": at.to_string(), "type": ty, "data": data})
}

/// What tenant A has: an instance, its subject, an open GP task, and (once
/// [`dead_letter`] made it) a dead letter.
struct Seeded {
    instance: String,
    subject: String,
    task: String,
    dead_letter: String,
}

/// A dead letter of tenant A: an event its integration sent that is refused.
async fn dead_letter(api: &Api, s: &mut Seeded) {
    let bad = json!({"id": "bad-1", "tenant": "cpts-a", "type": "nonsense"});
    let a = api
        .call(
            "POST",
            "/v1/events",
            Some(&bad),
            Some(&key_of("integration-a")),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let letters = api
        .call(
            "GET",
            "/v1/dead-letters",
            None,
            Some(&key_of("coordinator-a")),
        )
        .await;
    s.dead_letter = letters.body["dead_letters"][0]["id"]
        .as_u64()
        .expect("a dead letter")
        .to_string();
}

async fn seed(api: &Api) -> Seeded {
    let integration = key_of("integration-a");
    let subject = "p-7f3a9c";
    for e in [
        ev(
            "adt-1",
            "cpts-a",
            subject,
            t0(),
            "encounter.discharged",
            json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
        ),
        ev(
            "consent-1",
            "cpts-a",
            subject,
            t0() + SignedDuration::from_hours(1),
            "consent.given",
            json!({}),
        ),
    ] {
        let a = api
            .call("POST", "/v1/events", Some(&e), Some(&integration))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let coordinator = key_of("coordinator-a");
    let list = api
        .call("GET", "/v1/instances", None, Some(&coordinator))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let instance = list.body["instances"][0]["id"]
        .as_str()
        .expect("an instance")
        .to_string();
    let tasks = api
        .call(
            "GET",
            "/v1/tasks?role=gp&kind=task",
            None,
            Some(&coordinator),
        )
        .await;
    let task = tasks.body["items"]
        .as_array()
        .and_then(|i| i.first())
        .and_then(|t| t["id"].as_str())
        .expect("an open GP task")
        .to_string();
    Seeded {
        instance,
        subject: subject.into(),
        task,
        dead_letter: String::new(),
    }
}

/// The concrete URI of a route: ids of tenant A's things (or `missing` ones).
fn uri(path: &str, s: &Seeded, missing: bool) -> String {
    let id = if missing && path.starts_with("/v1/dead-letters") {
        "999999999".to_string()
    } else if missing {
        "00000000-0000-0000-0000-000000000000".to_string()
    } else if path.starts_with("/v1/dead-letters") {
        s.dead_letter.clone()
    } else if path.starts_with("/v1/instances") {
        s.instance.clone()
    } else {
        s.task.clone()
    };
    let subject = if missing { "p-nobody" } else { &s.subject };
    path.replace(
        "/v1/pathways/{id}/{version}",
        "/v1/pathways/heart-failure/1",
    )
    .replace("{id}", &id)
    .replace("{subject}", subject)
    .replace("{tenant}", "cpts-a")
    .replace("{type}", "Encounter")
}

fn body_of(action: Action, tenant: &str) -> Option<Value> {
    match action {
        // What integrations and coordinators both may post (what else a coordinator
        // may not: `coordinators_record_what_the_care_team_knows_not_hospital_facts`).
        Action::PostEvents => Some(ev(
            "consent-x",
            tenant,
            "p-other",
            t0(),
            "consent.given",
            json!({"scope": "heart-failure"}),
        )),
        Action::LookUpSubjects => Some(json!({"identifiers": [
            {"system": "urn:oid:1.2.250.1.211.10.200.2", "value": "IPP-1"}
        ]})),
        Action::TaskOutcome => Some(json!({"outcome": "not_needed"})),
        Action::HandoffAnswer => Some(json!({"accepted": true})),
        Action::AlertAck => Some(json!({})),
        Action::FhirBundle | Action::FhirResource => Some(json!({
            "resourceType": "Encounter", "status": "finished"
        })),
        Action::FhirTaskUpdate => Some(json!({"resourceType": "Task", "status": "completed"})),
        // A migration file (JSON is YAML): a check over every instance, an application
        // to none (the matrix's instance stays as it is).
        Action::CheckMigration | Action::Migrate => Some(json!({
            "migration": "matrix", "tenant": tenant, "pathway": "heart-failure",
            "from": 1, "to": 1,
            "instances": if action == Action::Migrate { json!([]) } else { json!("all") },
        })),
        _ => None,
    }
}

/// Tenant A's identifiers must appear in no answer to tenant B (but an id the caller
/// itself sent, echoed in "no instance `…`").
fn assert_no_leak(a: &Answer, s: &Seeded, what: &str) {
    for secret in [&s.instance, &s.task, &s.subject] {
        if what.contains(secret.as_str()) {
            continue;
        }
        assert!(
            !a.text.contains(secret.as_str()),
            "{what}: tenant B's answer names tenant A's `{secret}`: {}",
            a.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_authenticated_authorised_and_tenant_scoped() {
    let api = api().await;
    let mut s = seed(&api).await;
    dead_letter(&api, &mut s).await;
    assert!(!ROUTES.is_empty());
    let mut seen = std::collections::BTreeSet::new();
    for route in ROUTES {
        assert!(
            seen.insert((route.method, route.path)),
            "{} {} twice in the table",
            route.method,
            route.path
        );
        let what = format!("{} {}", route.method, route.path);
        let permission = route.action.permission();
        let target = uri(route.path, &s, false);
        let body = body_of(route.action, "cpts-a");

        // 1. No credentials, and bad ones.
        for auth in [None, Some("pck_not-a-key"), Some("a.b.c")] {
            let a = api.call(route.method, &target, body.as_ref(), auth).await;
            if permission == Permission::Public {
                assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{what} is public");
                assert!(a.status.is_success(), "{what}: {} {}", a.status, a.text);
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{what} without valid credentials"
                );
                assert!(a.headers.contains_key("www-authenticate"), "{what}");
                assert_no_leak(&a, &s, &what);
            }
        }
        if permission == Permission::Public {
            continue;
        }

        // 2. Another tenant's principals, of every role: never tenant A's data, and an
        // id of tenant A answers exactly as an id that does not exist.
        for (name, tenants, _) in PRINCIPALS.iter().filter(|p| p.1 == ["cpts-b"]) {
            let key = key_of(name);
            let who = format!("{what} as {name} ({tenants:?})");
            // The tenant named in the path or query: refused.
            let named = if target.starts_with("/fhir/") {
                target.clone()
            } else if target.contains('?') {
                format!("{target}&tenant=cpts-a")
            } else {
                format!("{target}?tenant=cpts-a")
            };
            let a = api
                .call(route.method, &named, body.as_ref(), Some(&key))
                .await;
            assert!(
                a.status == StatusCode::FORBIDDEN || a.status == StatusCode::NOT_FOUND,
                "{who}, naming tenant A: {} {}",
                a.status,
                a.text
            );
            assert_no_leak(&a, &s, &who);
            if target.starts_with("/fhir/") {
                continue;
            }
            // Tenant A's ids, the caller's own tenant: as if they did not exist.
            let real = api
                .call(
                    route.method,
                    &target,
                    body_of(route.action, "cpts-b").as_ref(),
                    Some(&key),
                )
                .await;
            if route.action == Action::Audit {
                // Tenant B's trail: its own callers' entries only (their targets are
                // what they asked for, tenant A's ids included).
                for e in real.body["entries"].as_array().into_iter().flatten() {
                    assert_eq!(e["tenant"], "cpts-b", "{who}: {e}");
                    assert!(
                        e["actor"].as_str().is_some_and(|a| a.contains("-b/")),
                        "{who}: {e}"
                    );
                }
            } else {
                assert_no_leak(&real, &s, &format!("{who} at {target}"));
            }
            if route.path.contains("{id}") || route.path.contains("{subject}") {
                let missing = api
                    .call(
                        route.method,
                        &uri(route.path, &s, true),
                        body_of(route.action, "cpts-b").as_ref(),
                        Some(&key),
                    )
                    .await;
                assert_eq!(
                    (real.status, &real.body["error"]["code"]),
                    (missing.status, &missing.body["error"]["code"]),
                    "{who}: tenant A's id answers like a missing one ({} / {})",
                    real.text,
                    missing.text
                );
            }
        }

        // 3. Each role of tenant A, and the coordinator of every tenant: allowed
        // (anything but 401/403) or 403. A deployment-wide action needs every tenant.
        for (name, tenants, roles) in PRINCIPALS
            .iter()
            .filter(|p| p.1 == ["cpts-a"] || p.1 == ["*"])
        {
            let roles: Vec<Role> = roles
                .iter()
                .map(|r| Role::parse(r).expect("role"))
                .collect();
            let allowed = roles.iter().any(|r| permission.granted_by(r))
                && (!permission.deployment_wide() || *tenants == ["*"]);
            let a = api
                .call(route.method, &target, body.as_ref(), Some(&key_of(name)))
                .await;
            if allowed {
                assert!(
                    a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
                    "{what} as {name}: allowed, got {} {}",
                    a.status,
                    a.text
                );
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::FORBIDDEN,
                    "{what} as {name}: {}",
                    a.text
                );
                assert_no_leak(&a, &s, &format!("{what} as {name}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn care_team_members_see_and_answer_only_their_roles_tasks() {
    let api = api().await;
    let s = seed(&api).await;
    let nurse = key_of("nurse-a");
    let gp = key_of("gp-a");
    // The nurse's worklist is the nurse's: no GP task in it, and asking for the GP's is
    // refused.
    let a = api.call("GET", "/v1/tasks", None, Some(&nurse)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(!a.text.contains(&s.task), "{}", a.text);
    for item in a.body["items"].as_array().expect("items") {
        assert_eq!(item["role"], "nurse");
    }
    let a = api
        .call("GET", "/v1/tasks?role=gp", None, Some(&nurse))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = api
        .call("GET", "/fhir/cpts-a/Task?owner=gp", None, Some(&nurse))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    // Answering the GP's task as the nurse: as if it did not exist.
    let uri = format!("/v1/tasks/{}/outcome", s.task);
    let a = api
        .call(
            "POST",
            &uri,
            Some(&json!({"outcome": "completed"})),
            Some(&nurse),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = api
        .call(
            "GET",
            &format!("/fhir/cpts-a/Task/{}", s.task),
            None,
            Some(&nurse),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    // The GP sees it and answers it.
    let a = api.call("GET", "/v1/tasks", None, Some(&gp)).await;
    assert!(a.text.contains(&s.task), "{}", a.text);
    let a = api
        .call(
            "POST",
            &uri,
            Some(&json!({"outcome": "completed"})),
            Some(&gp),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["results"][0]["status"], "committed");
    // The GP's app retries (a timeout): the same answer is a duplicate; another answer
    // is a conflict naming the first; another tenant's GP learns nothing.
    let a = api
        .call(
            "POST",
            &uri,
            Some(&json!({"outcome": "completed"})),
            Some(&gp),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["status"], "duplicate", "{}", a.text);
    let a = api
        .call(
            "POST",
            &uri,
            Some(&json!({"outcome": "not_needed"})),
            Some(&gp),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "already_answered", "{}", a.text);
    assert!(a.text.contains("task.completed"), "{}", a.text);
    let a = api
        .call(
            "POST",
            &uri,
            Some(&json!({"outcome": "completed"})),
            Some(&key_of("gp-b")),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    // Care team and integration never read instances.
    let a = api
        .call(
            "GET",
            &format!("/v1/instances/{}", s.instance),
            None,
            Some(&gp),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

/// An escalated task is on the worklist of the role its escalation told, which may answer
/// it, and stays on the worklist of the role it waits on: heart failure's GP visit (due 7
/// days after the discharge) goes to the coordinator at its due time, to the cardiologist
/// (as `asap`) 3 days later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalated_task_reaches_the_role_its_escalation_told() {
    let api = api().await;
    let integration = key_of("integration-a");
    let cardiologist = key_of("cardiologist-a");
    let gp = key_of("gp-a");
    let nurse = key_of("nurse-a");
    let discharged = t0() - SignedDuration::from_hours(24 * 12);
    for e in [
        ev(
            "adt-esc",
            "cpts-a",
            "p-esc",
            discharged,
            "encounter.discharged",
            json!({"encounter_id": "V9", "destination": "home", "diagnoses": ["I50.1"]}),
        ),
        ev(
            "consent-esc",
            "cpts-a",
            "p-esc",
            discharged + SignedDuration::from_hours(1),
            "consent.given",
            json!({}),
        ),
    ] {
        let a = api
            .call("POST", "/v1/events", Some(&e), Some(&integration))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    // The due timers fire (the clock stands 12 days after the discharge).
    let mut listed = Value::Null;
    for _ in 0..500 {
        let a = api
            .call(
                "GET",
                "/v1/tasks?role=cardiologist",
                None,
                Some(&cardiologist),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        if let Some(t) = a.body["items"]
            .as_array()
            .and_then(|i| i.iter().find(|t| t["code"] == "gp-visit"))
        {
            listed = t.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(listed["role"], "gp", "{listed}");
    assert_eq!(listed["escalated_to"], "cardiologist", "{listed}");
    assert_eq!(listed["status"], "escalated", "{listed}");
    assert_eq!(listed["priority"], "asap", "{listed}");
    let task = listed["id"].as_str().expect("id").to_string();
    // Still the GP's; not the nurse's.
    let a = api.call("GET", "/v1/tasks", None, Some(&gp)).await;
    assert!(a.text.contains(&task), "{}", a.text);
    let a = api.call("GET", "/v1/tasks", None, Some(&nurse)).await;
    assert!(!a.text.contains(&task), "{}", a.text);
    // The cardiologist may answer it; the nurse may not.
    let uri = format!("/v1/tasks/{task}/outcome");
    let outcome = json!({"outcome": "completed"});
    let a = api.call("POST", &uri, Some(&outcome), Some(&nurse)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = api
        .call("POST", &uri, Some(&outcome), Some(&cardiologist))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["results"][0]["status"], "committed", "{}", a.text);
}

/// Ops see where, when and why input was refused in their tenants, not what was sent
/// (it may name the patient): that is for coordinators, and their read is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_read_dead_letters_but_not_their_content() {
    let api = api().await;
    let mut s = seed(&api).await;
    dead_letter(&api, &mut s).await;
    let ops = key_of("ops-a");
    let list = api.call("GET", "/v1/dead-letters", None, Some(&ops)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(
        list.body["dead_letters"][0]["id"].to_string(),
        s.dead_letter
    );
    assert!(
        list.body["dead_letters"][0]["reason"].is_string(),
        "{}",
        list.text
    );
    let one = format!("/v1/dead-letters/{}", s.dead_letter);
    let a = api.call("GET", &one, None, Some(&ops)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(!a.text.contains("nonsense"), "no content: {}", a.text);
    let content = format!("{one}/content");
    let a = api.call("GET", &content, None, Some(&ops)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = api
        .call("GET", &content, None, Some(&key_of("coordinator-a")))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(
        a.body["content"]
            .as_str()
            .is_some_and(|c| c.contains("nonsense"))
    );
    // Another tenant's coordinator: as if it did not exist.
    let other = api
        .call("GET", &one, None, Some(&key_of("coordinator-b")))
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_post_only_into_their_tenant_and_leave_no_trace_elsewhere() {
    let api = api().await;
    let _ = seed(&api).await;
    let b = key_of("integration-b");
    let e = ev("x-1", "cpts-a", "p-9", t0(), "consent.given", json!({}));
    let a = api.call("POST", "/v1/events", Some(&e), Some(&b)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    // An invalid event naming tenant A is refused before it becomes a dead letter of A.
    let bad = json!({"id": "x-2", "tenant": "cpts-a", "type": "nonsense"});
    let a = api.call("POST", "/v1/events", Some(&bad), Some(&b)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let letters = api
        .call(
            "GET",
            "/v1/dead-letters",
            None,
            Some(&key_of("coordinator-a")),
        )
        .await;
    assert_eq!(letters.status, StatusCode::OK);
    assert_eq!(letters.body["dead_letters"], json!([]), "{}", letters.text);
    // A batch mixing tenants is refused whole.
    let batch = json!([
        ev("x-3", "cpts-b", "p-9", t0(), "consent.given", json!({})),
        ev("x-4", "cpts-a", "p-9", t0(), "consent.given", json!({})),
    ]);
    let a = api.call("POST", "/v1/events", Some(&batch), Some(&b)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
}

/// A coordinator records on `/v1/events` what the care team knows — a consent, an
/// opt-out, a transfer learnt by phone — as itself (the audit trail names it), but not
/// what hospitals and labs send: a discharge, a result. A batch holding one such event
/// is refused whole, and nothing of it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_record_what_the_care_team_knows_not_hospital_facts() {
    let api = api().await;
    let s = seed(&api).await;
    let coordinator = key_of("coordinator-a");
    let letters = || async {
        let a = api
            .call(
                "GET",
                "/v1/dead-letters",
                None,
                Some(&key_of("coordinator-a")),
            )
            .await;
        a.body["dead_letters"].as_array().map(Vec::len)
    };
    let letters_before = letters().await;
    let consent = ev(
        "consent-c1",
        "cpts-a",
        &s.subject,
        t0() + SignedDuration::from_hours(1),
        "consent.given",
        json!({"scope": "heart-failure"}),
    );
    let a = api
        .call("POST", "/v1/events", Some(&consent), Some(&coordinator))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["results"][0]["status"], "committed", "{}", a.text);

    let discharge = ev(
        "adt-c2",
        "cpts-a",
        "p-new",
        t0(),
        "encounter.discharged",
        json!({"encounter_id": "V7", "destination": "home", "diagnoses": ["I50.1"]}),
    );
    let transfer = ev(
        "transfer-c3",
        "cpts-a",
        &s.subject,
        t0() + SignedDuration::from_hours(2),
        "patient.transferred",
        json!({}),
    );
    for body in [discharge.clone(), json!([transfer, discharge.clone()])] {
        let a = api
            .call("POST", "/v1/events", Some(&body), Some(&coordinator))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("`encounter.discharged`") && message.contains("integration"),
            "{}",
            a.text
        );
    }
    // A type outside the catalogue is not quoted back.
    let odd = ev("x-c4", "cpts-a", "p-new", t0(), "DUPONT Jean", json!({}));
    let a = api
        .call("POST", "/v1/events", Some(&odd), Some(&coordinator))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(!a.text.contains("DUPONT"), "{}", a.text);
    // Nothing of the refused posts was kept: no event, no dead letter; the patient is
    // still followed (the transfer in the refused batch did not close it).
    assert_eq!(letters().await, letters_before);
    let mine = api
        .call(
            "GET",
            &format!("/v1/patients/{}/instances", s.subject),
            None,
            Some(&coordinator),
        )
        .await;
    assert_eq!(
        mine.body["instances"][0]["status"], "active",
        "{}",
        mine.text
    );
    let new = api
        .call(
            "GET",
            "/v1/patients/p-new/instances",
            None,
            Some(&coordinator),
        )
        .await;
    assert_eq!(new.body["instances"], json!([]), "{}", new.text);
    // The integration posts the discharge.
    let a = api
        .call(
            "POST",
            "/v1/events",
            Some(&discharge),
            Some(&key_of("integration-a")),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

/// A coordinator includes a patient the hospital's message did not enrol (no diagnosis
/// coded): `patient.referred` on `/v1/events` enrols them in the pathway it names, the
/// history says so; a second referral is answered with why it changed nothing; a
/// referral to a pathway not published is refused (422, the published ones listed, the
/// value sent not quoted) and kept as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_refer_a_patient_to_a_pathway() {
    let api = api().await;
    let coordinator = key_of("coordinator-a");
    let integration = key_of("integration-a");
    let subject = "p-4b9e21";
    let discharge = ev(
        "adt-r1",
        "cpts-a",
        subject,
        t0(),
        "encounter.discharged",
        json!({"encounter_id": "V1", "destination": "home", "diagnoses": []}),
    );
    let a = api
        .call("POST", "/v1/events", Some(&discharge), Some(&integration))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let instances = || async {
        api.call(
            "GET",
            &format!("/v1/patients/{subject}/instances"),
            None,
            Some(&coordinator),
        )
        .await
        .body["instances"]
            .clone()
    };
    assert_eq!(instances().await, json!([]), "no diagnosis: not enrolled");

    // The coordinator posts a referral (id, pathway, hours after the discharge).
    let refer = |id: &'static str, pathway: &'static str, hours: i64| {
        let body = ev(
            id,
            "cpts-a",
            subject,
            t0() + SignedDuration::from_hours(hours),
            "patient.referred",
            json!({"pathway": pathway, "by": "coordinator"}),
        );
        let (api, coordinator) = (&api, &coordinator);
        async move {
            api.call("POST", "/v1/events", Some(&body), Some(coordinator))
                .await
        }
    };
    let a = refer("ref-1", "heart-failure", 20).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["results"][0]["status"], "committed", "{}", a.text);
    let list = instances().await;
    assert_eq!(list[0]["pathway"]["id"], "heart-failure", "{list}");
    assert_eq!(list[0]["status"], "active", "{list}");
    let id = list[0]["id"].as_str().expect("instance id").to_owned();
    let history = api
        .call(
            "GET",
            &format!("/v1/instances/{id}/history"),
            None,
            Some(&coordinator),
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let first = &history.body["history"][0];
    assert_eq!(first["type"], "instance.enrolled", "{}", history.text);
    assert_eq!(first["rule"], "enrolment/referral", "{}", history.text);
    assert_eq!(first["cause"]["id"], "ref-1", "{}", history.text);
    assert_eq!(
        first["cause"]["type"], "patient.referred",
        "{}",
        history.text
    );

    let a = refer("ref-2", "heart-failure", 21).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.body["results"][0]["warnings"],
        json!([
            "heart-failure: the patient is already on `heart-failure` (cycle 1): the referral changes nothing"
        ]),
        "{}",
        a.text
    );

    let letters = || async {
        api.call("GET", "/v1/dead-letters", None, Some(&coordinator))
            .await
            .body["dead_letters"]
            .as_array()
            .map(Vec::len)
    };
    let letters_before = letters().await;
    let a = refer("ref-3", "DUPONT", 22).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let reason = a.body["results"][0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("`data.pathway` names no pathway published here")
            && reason.contains("`heart-failure`"),
        "{}",
        a.text
    );
    assert!(!a.text.contains("DUPONT"), "{}", a.text);
    assert_eq!(
        letters().await,
        letters_before.map(|n| n + 1),
        "the refused referral is kept"
    );
    assert_eq!(instances().await.as_array().map(Vec::len), Some(1));
}

fn now_secs() -> i64 {
    #[allow(clippy::disallowed_methods)]
    Timestamp::now().as_second()
}

fn claims(iss: &str, aud: &str, exp_in: i64) -> Value {
    json!({
        "iss": iss, "aud": aud, "sub": "rpps-810000000001",
        "exp": now_secs() + exp_in, "iat": now_secs(),
        "parcours_tenants": ["cpts-a"], "parcours_roles": ["coordinator", "unknown-role"],
    })
}

fn sign(alg: Algorithm, kid: &str, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(data(key_file)).expect("key");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("encoding key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn b64(v: &[u8]) -> String {
    // base64url without padding, for hand-made tokens.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in v.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let api = api().await;
    let _ = seed(&api).await;
    // Valid: RS256 and ES256 from the configured issuer, RS256 from the JWKS issuer.
    let rs = sign(
        Algorithm::RS256,
        "rsa1",
        "test-rsa.key",
        &claims(ISSUER, AUDIENCE, 300),
    );
    let es = sign(
        Algorithm::ES256,
        "ec1",
        "test-ec.key",
        &claims(ISSUER, AUDIENCE, 300),
    );
    let mut jwks_claims = claims(JWKS_ISSUER, AUDIENCE, 300);
    jwks_claims["tenants"] = json!("cpts-a");
    jwks_claims["roles"] = json!(["coordinator"]);
    let jw = sign(Algorithm::RS256, "jwks-rsa", "test-rsa.key", &jwks_claims);
    for t in [&rs, &es, &jw] {
        let a = api.call("GET", "/v1/instances", None, Some(t)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["instances"].as_array().map(Vec::len), Some(1));
    }

    let refused = |name: &str, token: String| (name.to_string(), token);
    let mut nbf_future = claims(ISSUER, AUDIENCE, 600);
    nbf_future["nbf"] = json!(now_secs() + 300);
    let mut nbf_string = claims(ISSUER, AUDIENCE, 600);
    nbf_string["nbf"] = json!((now_secs() + 300).to_string());
    let mut exp_string = claims(ISSUER, AUDIENCE, 600);
    exp_string["exp"] = json!("never");
    let mut no_exp = claims(ISSUER, AUDIENCE, 600);
    no_exp.as_object_mut().expect("obj").remove("exp");
    let mut every_tenant = claims(ISSUER, AUDIENCE, 600);
    every_tenant["parcours_tenants"] = json!(["*"]);
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(ISSUER, AUDIENCE, 600).to_string().as_bytes())
    );
    // HMAC signed with the issuer's public key as the secret (algorithm confusion).
    let public = std::fs::read(data("test-rsa.pub")).expect("pub");
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa1".into());
    let hs = jsonwebtoken::encode(
        &hs_header,
        &claims(ISSUER, AUDIENCE, 600),
        &EncodingKey::from_secret(&public),
    )
    .expect("hs256");
    let cases = [
        refused(
            "expired",
            sign(
                Algorithm::RS256,
                "rsa1",
                "test-rsa.key",
                &claims(ISSUER, AUDIENCE, -120),
            ),
        ),
        refused(
            "wrong issuer",
            sign(
                Algorithm::RS256,
                "rsa1",
                "test-rsa.key",
                &claims("https://evil.test", AUDIENCE, 300),
            ),
        ),
        refused(
            "wrong audience",
            sign(
                Algorithm::RS256,
                "rsa1",
                "test-rsa.key",
                &claims(ISSUER, "another-api", 300),
            ),
        ),
        refused(
            "bad signature",
            sign(
                Algorithm::RS256,
                "rsa1",
                "other-rsa.key",
                &claims(ISSUER, AUDIENCE, 300),
            ),
        ),
        refused("alg none", none_token),
        refused("hmac with the public key", hs),
        refused(
            "nbf in the future",
            sign(Algorithm::RS256, "rsa1", "test-rsa.key", &nbf_future),
        ),
        refused(
            "nbf as a string",
            sign(Algorithm::RS256, "rsa1", "test-rsa.key", &nbf_string),
        ),
        refused(
            "exp as a string",
            sign(Algorithm::RS256, "rsa1", "test-rsa.key", &exp_string),
        ),
        refused(
            "no exp",
            sign(Algorithm::RS256, "rsa1", "test-rsa.key", &no_exp),
        ),
        refused(
            "every tenant",
            sign(Algorithm::RS256, "rsa1", "test-rsa.key", &every_tenant),
        ),
        refused(
            "EC key named for RSA",
            sign(
                Algorithm::ES256,
                "rsa1",
                "test-ec.key",
                &claims(ISSUER, AUDIENCE, 300),
            ),
        ),
    ];
    for (name, token) in cases {
        let a = api.call("GET", "/v1/instances", None, Some(&token)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name}: {}", a.text);
        assert!(!a.text.contains(&token), "{name}: the token is not echoed");
    }
    // A token's tenant is its scope.
    let a = api
        .call("GET", "/v1/instances?tenant=cpts-b", None, Some(&rs))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_rate_limited_one_by_one() {
    let api = api_with(|a| parcours_http::Security::new(a).with_rate(1, 3)).await;
    let coordinator = key_of("coordinator-a");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            api.call("GET", "/v1/pathways", None, Some(&coordinator))
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let limited = api
        .call("GET", "/v1/pathways", None, Some(&coordinator))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1", "when to ask again");
    // Another caller is not held back.
    let a = api
        .call("GET", "/v1/pathways", None, Some(&key_of("gp-a")))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // The probes are not limited.
    for _ in 0..5 {
        assert_eq!(
            api.call("GET", "/healthz", None, None).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_security_headers() {
    let api = api().await;
    let a = api
        .call("GET", "/v1/instances", None, Some(&key_of("coordinator-a")))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-content-type-options"], "nosniff");
    assert_eq!(a.headers["cache-control"], "no-store");
    assert!(!a.headers.contains_key("server"));
    assert!(
        !a.headers.contains_key("strict-transport-security"),
        "no HSTS over plain HTTP"
    );
    let h = api.call("GET", "/healthz", None, None).await;
    assert_eq!(h.headers["x-content-type-options"], "nosniff");
    let tls = api_with(|a| parcours_http::Security::new(a).with_tls(true)).await;
    let a = tls.call("GET", "/healthz", None, None).await;
    assert!(
        a.headers["strict-transport-security"]
            .to_str()
            .expect("ascii")
            .starts_with("max-age="),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_tells_who_did_what_per_tenant() {
    let api = api().await;
    let s = seed(&api).await;
    let coordinator = key_of("coordinator-a");
    let a = api
        .call(
            "GET",
            &format!("/v1/instances/{}/history", s.instance),
            None,
            Some(&coordinator),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // Denied: the GP may not read instances; tenant B's coordinator names tenant A.
    let _ = api
        .call(
            "GET",
            &format!("/v1/instances/{}", s.instance),
            None,
            Some(&key_of("gp-a")),
        )
        .await;
    let _ = api
        .call(
            "GET",
            "/v1/instances?tenant=cpts-a",
            None,
            Some(&key_of("coordinator-b")),
        )
        .await;
    let trail = api.call("GET", "/v1/audit", None, Some(&coordinator)).await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.text);
    let entries = trail.body["entries"].as_array().expect("entries");
    let find = |actor: &str, action: &str| {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .unwrap_or_else(|| panic!("no {actor} {action} in {}", trail.text))
    };
    let posted = find("key:integration-a/integration-a-k1", "events.post");
    assert_eq!(posted["outcome"], "allowed");
    assert_eq!(posted["tenant"], "cpts-a");
    let read = find("key:coordinator-a/coordinator-a-k1", "instance.history");
    assert_eq!(read["target"], json!(s.instance));
    assert_eq!(read["outcome"], "allowed");
    let denied = find("key:gp-a/gp-a-k1", "instance.read");
    assert_eq!(denied["outcome"], "denied");
    let other = find("key:coordinator-b/coordinator-b-k1", "instances.list");
    assert_eq!(other["outcome"], "denied");
    assert!(
        !trail.text.contains("rpps") && !trail.text.contains("pck_"),
        "no credential in the trail"
    );
    // Tenant B's coordinators do not see tenant A's trail.
    let b = api
        .call("GET", "/v1/audit", None, Some(&key_of("coordinator-b")))
        .await;
    assert_eq!(b.status, StatusCode::OK);
    assert!(!b.text.contains("cpts-a"), "{}", b.text);
    assert!(!b.text.contains(&s.instance), "{}", b.text);
}
