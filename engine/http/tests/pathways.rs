//! Pathway versions published over the API (`POST /v1/pathways`, `POST
//! /v1/pathways/check`), on a real engine over a SQLite log: the diagnostics of a broken
//! file with their places, nothing written by a check or a refusal, a new version loaded
//! by the engine and enrolling the next patient, a changed text under a published version
//! refused, who may publish, and the audit trail.

mod contract;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jiff::Timestamp;
use parcours_http::auth::AuthConfig;
use parcours_http::auth::keys::{ApiKeyConfig, sha256_hex};
use parcours_runtime::publish::Compiler;
use parcours_runtime::{
    Clock, Engine, EngineConfig, InProcessBus, PathwayRegistry, ServiceConfig, service,
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

/// Keys: every tenant's coordinator (may publish), one tenant's coordinator and a GP.
const EVERY_TENANT: &str = "pck_every-tenant-coordinator";
const ONE_TENANT: &str = "pck_cpts-a-coordinator";
const GP: &str = "pck_cpts-a-gp";

fn key(id: &str, secret: &str, tenants: &[&str], roles: &[&str]) -> ApiKeyConfig {
    ApiKeyConfig {
        id: id.into(),
        principal: id.into(),
        sha256: sha256_hex(secret),
        tenants: tenants.iter().map(|t| (*t).into()).collect(),
        roles: roles.iter().map(|r| (*r).into()).collect(),
        revoked: false,
    }
}

fn shipped(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways")
            .join(file),
    )
    .expect("pathway file")
}

/// The shipped heart-failure pathway as version `v` (these tests start from their own
/// version 1 of it, whatever version is shipped).
fn heart_failure_v(v: u32) -> String {
    let text = shipped("heart-failure.yaml");
    let stated = text
        .lines()
        .find(|l| l.starts_with("version: "))
        .expect("the shipped file states its version");
    text.replacen(&format!("\n{stated}\n"), &format!("\nversion: {v}\n"), 1)
}

struct Api {
    app: Router,
    store: SqliteStore,
    _dir: tempfile::TempDir,
    _token: tokio_util::sync::DropGuard,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("store");
    let mut registry = PathwayRegistry::new();
    for (f, text) in [
        ("heart-failure.yaml", heart_failure_v(1)),
        ("type2-diabetes.yaml", shipped("type2-diabetes.yaml")),
    ] {
        let (p, _) = parcours_lang::compile_source(f, &text).expect("compiles");
        registry.add(p);
    }
    // As `parcours serve` wires it: versions found in the log are compiled by the
    // pathway compiler, and the API reads the engine's versions.
    let compiler = Compiler::new(|p| {
        parcours_lang::compile_source(&p.file, &p.text)
            .map(|(c, _)| c)
            .map_err(|r| r.short())
    });
    let mut engine = Engine::open(
        store.clone(),
        registry,
        EngineConfig {
            compile_published: Some(compiler),
            ..EngineConfig::default()
        },
    )
    .await
    .expect("engine");
    let shared = engine.share_registry();
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
    let auth = AuthConfig {
        api_keys: vec![
            key("every-tenant", EVERY_TENANT, &["*"], &["coordinator"]),
            key(
                "cpts-a-coordinator",
                ONE_TENANT,
                &["cpts-a"],
                &["coordinator", "integration"],
            ),
            key("cpts-a-gp", GP, &["cpts-a"], &["care-team:gp"]),
        ],
        issuers: Vec::new(),
    };
    let app = contract::checked(parcours_http::router(parcours_http::AppState {
        handle,
        store: store.clone(),
        registry: shared,
        limits: parcours_http::Limits::default(),
        fhir: None,
        security: parcours_http::Security::new(
            parcours_http::auth::Authenticator::new(auth).expect("auth"),
        ),
        erasure: None,
    }));
    Api {
        app,
        store,
        _dir: dir,
        _token: token.drop_guard(),
    }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, body: &str, key: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"))
            .header(
                "content-type",
                if uri.starts_with("/v1/events") {
                    "application/cloudevents+json"
                } else {
                    "application/yaml"
                },
            )
            .body(Body::from(body.to_string()))
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn versions(&self) -> Vec<(String, u64, bool)> {
        let (status, body) = self.call("GET", "/v1/pathways", "", EVERY_TENANT).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["pathways"]
            .as_array()
            .expect("pathways")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id").to_string(),
                    p["version"].as_u64().expect("version"),
                    p["enrols"].as_bool().expect("enrols"),
                )
            })
            .collect()
    }

    /// A tenant's audit trail (`*`: the deployment's own entries), as `who` reads it.
    async fn trail(&self, who: &str, tenant: &str) -> (StatusCode, Value) {
        self.call("GET", &format!("/v1/audit?tenant={tenant}"), "", who)
            .await
    }

    /// Tenant A's first instance: its id and pathway version.
    async fn first_instance(&self) -> (String, u64) {
        let (_, list) = self
            .call("GET", "/v1/instances?tenant=cpts-a", "", ONE_TENANT)
            .await;
        let i = &list["instances"][0];
        (
            i["id"].as_str().expect("id").to_string(),
            i["pathway"]["version"].as_u64().expect("version"),
        )
    }

    /// Post tenant A's migration to v`to` at `uri` as its coordinator.
    async fn migrate(&self, uri: &str, to: u32) -> (StatusCode, Value) {
        self.call("POST", uri, &migration("cpts-a", to), ONE_TENANT)
            .await
    }

    /// The log's `pathway/…` records.
    async fn published(&self) -> usize {
        self.store
            .read_streams_by_prefix("pathway/")
            .await
            .expect("read")
            .len()
    }
}

/// A heart-failure discharge home, as a canonical event.
fn discharge(id: &str, subject: &str) -> String {
    json!({"id": id, "tenant": "cpts-a", "source": "test", "subject": subject,
        "occurredat": t0().to_string(), "type": "encounter.discharged",
        "data": {"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}})
    .to_string()
}

fn hf(v: u64, enrols: bool) -> (String, u64, bool) {
    ("heart-failure".into(), v, enrols)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_with_each_problem_and_its_place() {
    let api = api().await;
    let broken = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways/broken/PW0002-many-problems-at-once.yaml"),
    )
    .expect("file");
    for uri in [
        "/v1/pathways?file=hf-draft.yaml",
        "/v1/pathways/check?file=hf-draft.yaml",
    ] {
        let (status, body) = api.call("POST", uri, &broken, EVERY_TENANT).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_pathway", "{body}");
        let diagnostics = body["error"]["details"]["diagnostics"]
            .as_array()
            .expect("diagnostics");
        assert!(diagnostics.len() > 1, "every problem at once: {body}");
        for d in diagnostics {
            assert_eq!(d["file"], "hf-draft.yaml", "{d}");
            assert!(d["line"].as_u64().is_some_and(|l| l > 1), "{d}");
            assert!(d["col"].as_u64().is_some_and(|c| c >= 1), "{d}");
            assert!(
                d["code"].as_str().is_some_and(|c| c.starts_with("PW")),
                "{d}"
            );
        }
        let first = &diagnostics[0];
        let place = format!(
            "hf-draft.yaml:{}:{}: error[{}]",
            first["line"], first["col"], first["code"]
        )
        .replace('"', "");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(&place), "{place} in {message}");
        assert!(message.contains("nothing published"), "{message}");
        assert!(
            body["error"]["details"]["report"]
                .as_str()
                .is_some_and(|r| r.contains("hf-draft.yaml")),
            "{body}"
        );
    }
    // Not YAML at all, a body that is not UTF-8, a bad name: refused as well.
    let (status, body) = api
        .call("POST", "/v1/pathways", "- just\n- a list\n", EVERY_TENANT)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pathway.yaml:")),
        "the default name: {body}"
    );
    // A file saved as Latin-1: the report `parcours check` gives, at its line and column.
    let mut latin1 = b"pathway: demo\nversion: 1\ntitle: Suivi ".to_vec();
    latin1.extend([0xE0, b' ']);
    latin1.extend(b"domicile\n");
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pathways?file=suivi.yaml")
        .header("authorization", format!("Bearer {EVERY_TENANT}"))
        .body(Body::from(latin1))
        .expect("request");
    let res = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.expect("body").to_bytes())
            .expect("JSON");
    assert_eq!(
        body["error"]["details"]["diagnostics"][0]["line"], 3,
        "{body}"
    );
    assert_eq!(
        body["error"]["details"]["diagnostics"][0]["col"], 14,
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("suivi.yaml:3:14") && m.contains("save it as UTF-8")),
        "{body}"
    );
    // A form upload (`curl -F`) is not the file: said so.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pathways")
        .header("authorization", format!("Bearer {EVERY_TENANT}"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Body::from(heart_failure_v(2)))
        .expect("request");
    let res = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("--data-binary"));
    let (status, body) = api
        .call(
            "POST",
            "/v1/pathways?file=../etc/x.yaml",
            &heart_failure_v(2),
            EVERY_TENANT,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_file_name");
    assert_eq!(api.published().await, 0, "nothing written");
    assert_eq!(api.versions().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_of_every_tenant_publishes_a_version_that_enrols_the_next_patient() {
    let api = api().await;
    assert!(api.versions().await.contains(&hf(1, true)));
    let v2 = heart_failure_v(2);

    // A check writes nothing, and any reader of pathways may make it.
    let (status, body) = api
        .call("POST", "/v1/pathways/check?file=hf-v2.yaml", &v2, GP)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["id"], &body["version"], &body["publication"]),
        (&json!("heart-failure"), &json!(2), &json!("new"))
    );
    assert_eq!(api.published().await, 0);

    // Publishing needs a coordinator of every tenant.
    for (key, who) in [(ONE_TENANT, "one tenant's coordinator"), (GP, "a GP")] {
        let (status, body) = api
            .call("POST", "/v1/pathways?file=hf-v2.yaml", &v2, key)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {body}");
    }
    let (_, body) = api
        .call("POST", "/v1/pathways?file=hf-v2.yaml", &v2, ONE_TENANT)
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("every tenant")),
        "{body}"
    );
    assert_eq!(api.published().await, 0);

    // Published: loaded by this process's engine before the answer, and the highest
    // version enrols.
    let (status, body) = api
        .call("POST", "/v1/pathways?file=hf-v2.yaml", &v2, EVERY_TENANT)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["publication"], "new");
    assert_eq!(body["loaded"], true, "{body}");
    assert_eq!(body["enrols"], true, "{body}");
    assert_eq!(body["graph"], "/v1/pathways/heart-failure/2/graph");
    assert_eq!(api.published().await, 1);
    let versions = api.versions().await;
    assert!(versions.contains(&hf(2, true)), "{versions:?}");
    assert!(versions.contains(&hf(1, false)), "{versions:?}");
    let (status, _) = api
        .call("GET", "/v1/pathways/heart-failure/2/graph", "", GP)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Its text, as published, for the next version's author.
    let (status, text) = api
        .call("GET", "/v1/pathways/heart-failure/2/source", "", GP)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, Value::String(v2.clone()));
    let (status, body) = api
        .call("GET", "/v1/pathways/heart-failure/3/source", "", GP)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // The next discharge enrols in v2.
    let (status, body) = api
        .call("POST", "/v1/events", &discharge("adt-1", "p-1"), ONE_TENANT)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = api
        .call("GET", "/v1/instances?tenant=cpts-a", "", ONE_TENANT)
        .await;
    assert_eq!(list["instances"][0]["pathway"]["version"], 2, "{list}");

    // The same text again: unchanged; another text under v2: refused, nothing written.
    let (status, body) = api
        .call("POST", "/v1/pathways?file=hf-v2.yaml", &v2, EVERY_TENANT)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["publication"], "unchanged");
    let changed = v2.replacen(
        "title: Heart failure — follow-up after discharge",
        "title: Heart failure — follow-up after discharge (edited)",
        1,
    );
    assert_ne!(changed, v2);
    for uri in [
        "/v1/pathways?file=hf-v2-edited.yaml",
        "/v1/pathways/check?file=hf-v2-edited.yaml",
    ] {
        let (status, body) = api.call("POST", uri, &changed, EVERY_TENANT).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "version_published");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("hf-v2.yaml") && m.contains("new version")),
            "{body}"
        );
    }
    assert_eq!(api.published().await, 1);

    // The trail: who published which version (publications concern every tenant:
    // the deployment's own entries, `?tenant=*`, for callers of every tenant), and the
    // refused attempt in its tenant's trail.
    let (status, own) = api.trail(EVERY_TENANT, "*").await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let seen: Vec<(String, Option<String>, String)> = own["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "pathway.publish")
        .map(|e| {
            assert!(e["tenant"].is_null(), "{e}");
            (
                e["actor"].as_str().expect("actor").to_string(),
                e["target"].as_str().map(str::to_string),
                e["detail"].as_str().expect("detail").to_string(),
            )
        })
        .collect();
    let (status, body) = api.trail(ONE_TENANT, "*").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "one tenant's coordinator: {body}"
    );
    let (_, a) = api.trail(ONE_TENANT, "cpts-a").await;
    assert!(
        a["entries"].as_array().expect("entries").iter().any(|e| {
            e["action"] == "pathway.publish"
                && e["detail"] == "403"
                && e["actor"]
                    .as_str()
                    .is_some_and(|a| a.contains("cpts-a-coordinator"))
        }),
        "{a}"
    );
    assert!(
        seen.contains(&(
            "key:every-tenant/every-tenant".into(),
            Some("heart-failure v2".into()),
            "201".into()
        )),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pathway_published_over_the_api_is_loaded_before_the_answer() {
    let api = api().await;
    // An event first: the engine has looked at the log's versions, and its next
    // periodic look is 10 s away.
    let (status, body) = api
        .call("POST", "/v1/events", &discharge("adt-0", "p-0"), ONE_TENANT)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !api.versions()
            .await
            .iter()
            .any(|v| v.0 == "copd-exacerbation")
    );
    let (status, body) = api
        .call(
            "POST",
            "/v1/pathways?file=copd-exacerbation.yaml",
            &shipped("copd-exacerbation.yaml"),
            EVERY_TENANT,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Within the answer's wait (5 s), before the engine's periodic look.
    assert_eq!(body["loaded"], true, "{body}");
    assert!(
        api.versions()
            .await
            .contains(&("copd-exacerbation".into(), 1, true))
    );
}

/// A migration of tenant A's heart-failure patients from v1 to v2, as a coordinator
/// writes it.
fn migration(tenant: &str, to: u32) -> String {
    format!(
        "migration: hf-v1-to-v{to}\ntenant: {tenant}\npathway: heart-failure\nfrom: 1\nto: {to}\n\
         instances: all\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_moves_running_patients_to_a_published_version() {
    let api = api().await;
    let (status, body) = api
        .call("POST", "/v1/events", &discharge("adt-1", "p-1"), ONE_TENANT)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (id, version) = api.first_instance().await;
    assert_eq!(version, 1);

    // v2 is not published yet: said so.
    let (status, body) = api.migrate("/v1/migrations/check", 2).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unknown_version");
    let (status, _) = api
        .call(
            "POST",
            "/v1/pathways?file=hf-v2.yaml",
            &heart_failure_v(2),
            EVERY_TENANT,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Refused: not YAML of a migration, another tenant's patients, a GP.
    let (status, body) = api
        .call("POST", "/v1/migrations/check", "migration: [", ONE_TENANT)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_migration");
    for uri in ["/v1/migrations/check", "/v1/migrations"] {
        let (status, body) = api
            .call("POST", uri, &migration("cpts-b", 2), ONE_TENANT)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
        let (status, body) = api.call("POST", uri, &migration("cpts-a", 2), GP).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri} as a GP: {body}");
    }

    // A file that does not fit the versions or the log: every problem, by its key.
    let bad = "migration: hf-typos\ntenant: cpts-a\npathway: heart-failure\nfrom: 2\nto: 2\n\
               states:\n  mian: {referred: referred}\n  main: {erly: referred, referred: nowhere}\n\
               instances: [00000000-0000-0000-0000-000000000000]\n";
    let (status, body) = api
        .call("POST", "/v1/migrations/check", bad, ONE_TENANT)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_migration", "{body}");
    let problems = body["error"]["details"]["problems"].to_string();
    for says in [
        "both version 2",
        "`states.mian`",
        "no state `erly`",
        "no state `nowhere`",
        "`00000000-0000-0000-0000-000000000000` is not an active instance",
    ] {
        assert!(problems.contains(says), "{says}: {problems}");
    }
    assert_eq!(
        api.first_instance().await.1,
        1,
        "a refused file moves nothing"
    );

    // The dry run: what would happen, nothing moved.
    let (status, body) = api.migrate("/v1/migrations/check", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["selected"],
            &body["can_move"],
            &body["moved"],
            &body["applied"]
        ),
        (&json!(1), &json!(1), &json!(0), &json!(false)),
        "{body}"
    );
    assert_eq!(body["instances"][0]["instance"], id.as_str());
    assert!(
        body["instances"][0]["moves"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(api.first_instance().await.1, 1, "a check moves nothing");

    // Applied: the instance is on v2, its history says so, the trail names who.
    let (status, body) = api.migrate("/v1/migrations", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["moved"], &body["applied"]),
        (&json!(1), &json!(true)),
        "{body}"
    );
    assert_eq!(api.first_instance().await, (id.clone(), 2));
    let (_, history) = api
        .call(
            "GET",
            &format!("/v1/instances/{id}/history"),
            "",
            ONE_TENANT,
        )
        .await;
    assert!(
        history.to_string().contains("instance.migrated"),
        "{history}"
    );
    let (_, trail) = api.trail(ONE_TENANT, "cpts-a").await;
    assert!(
        trail["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| {
                e["action"] == "pathway.migrate"
                    && e["target"] == id.as_str()
                    && e["actor"]
                        .as_str()
                        .is_some_and(|a| a.contains("cpts-a-coordinator"))
            }),
        "{trail}"
    );
    // Again: nobody left on v1.
    let (status, body) = api.migrate("/v1/migrations", 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["selected"], &body["moved"]), (&json!(0), &json!(0)));
}
