//! `GET /metrics` over the real service and SQLite log, after a small cohort went
//! through it: the exposition passes `promtool check metrics`, its labels are bounded
//! (names from an allow-list, values from the pathways and fixed sets; no patient,
//! instance, task or event id anywhere), the indicators are the known answers, and every
//! metric the Grafana dashboard and the alert rules of `deploy/` query is exposed.

mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use parcours_runtime::metrics::{
    AUTH_OUTCOMES, DEAD_LETTER_SOURCES, EFFECT_KINDS, HANDOFF_OUTCOMES, INGEST_OUTCOMES,
    LABEL_NAMES, LINK_OUTCOMES, PRODUCTION_ONLY, RELINK_OUTCOMES, Source,
};
use parcours_runtime::{
    Clock, Engine, EngineConfig, Handle, InProcessBus, PathwayRegistry, ServiceConfig, service,
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

const TENANT: &str = "cpts-metrics";

fn t0() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("ts")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    clock: TestClock,
    registry: PathwayRegistry,
    _dir: tempfile::TempDir,
    _token: tokio_util::sync::DropGuard,
}

async fn api() -> Api {
    api_with(parcours_http::Limits::default()).await
}

async fn api_with(limits: parcours_http::Limits) -> Api {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&dir.path().join("log.db"))
        .await
        .expect("store");
    let mut registry = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let path = repo().join("pathways").join(f);
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
        InProcessBus::new(1 << 16),
        clock.clone(),
        ServiceConfig::default(),
        token.clone(),
        &tracker,
    );
    let app = contract::checked(parcours_http::router(parcours_http::AppState {
        handle: handle.clone(),
        store: store.clone(),
        registry: parcours_runtime::SharedRegistry::new(registry.clone()),
        limits,
        fhir: None,
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
        clock,
        registry,
        _dir: dir,
        _token: token.drop_guard(),
    }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, body: Option<String>) -> (StatusCode, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", test_key().expose()));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or(Body::empty(), Body::from))
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn post(&self, uri: &str, body: Value) -> Value {
        let (status, text) = self.call("POST", uri, Some(body.to_string())).await;
        assert!(status.is_success(), "{uri}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    async fn get(&self, uri: &str) -> Value {
        let (status, text) = self.call("GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    async fn event(&self, id: &str, subject: &str, at: Timestamp, ty: &str, data: Value) {
        let body = self
            .post(
                "/v1/events",
                json!({"id": id, "tenant": TENANT, "source": "test", "subject": subject,
                       "occurredat": at.to_string(), "type": ty, "data": data}),
            )
            .await;
        assert_eq!(body["committed"], 1, "{id}: {body}");
    }

    async fn scrape(&self) -> String {
        let (status, text) = self.call("GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        text
    }

    /// Move the virtual clock and wake the engine until `done` holds on a scrape.
    async fn advance_until(&self, by: SignedDuration, done: impl Fn(&Exposition) -> bool) {
        *self.clock.0.lock().expect("clock") += by;
        for _ in 0..1000 {
            self.handle.wake();
            if done(&parse(&self.scrape().await)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine did not get there in 10 s");
    }
}

/// One sample of the text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

type Exposition = Vec<Sample>;

fn parse(text: &str) -> Exposition {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest.split_once("=\"").expect("label");
            let end = v.find('"').expect("label value end");
            map.insert(k.to_string(), v[..end].to_string());
            rest = v[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value: value.parse().expect("value"),
        });
    }
    out
}

fn value(x: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    x.iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn sum(x: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    x.iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Ids that must never appear in the exposition.
struct Secrets(Vec<String>);

/// Run a small cohort through the API: 4 heart-failure discharges (one GP visit on day
/// 3, one at day 9, one readmission on day 5, a weight-gain alert acknowledged after
/// 2 h), 1 diabetes diagnosis with 3 HbA1c results, a refused event, timers over 12 days.
async fn cohort(api: &Api) -> Secrets {
    let mut secrets = Vec::new();
    let d = |days: i64, hours: i64| t0() + SignedDuration::from_hours(24 * days + hours);
    for i in 1..=4 {
        let subject = format!("subj-hf-{i}-7f3a");
        secrets.push(subject.clone());
        api.event(
            &format!("evt-discharge-{i}-c0ffee"),
            &subject,
            t0(),
            "encounter.discharged",
            json!({"encounter_id": format!("V{i}"), "destination": "home", "diagnoses": ["I50.1"]}),
        )
        .await;
        api.event(
            &format!("evt-consent-{i}-c0ffee"),
            &subject,
            d(0, 1),
            "consent.given",
            json!({"scope": "heart-failure"}),
        )
        .await;
    }
    secrets.extend((1..=4).map(|i| format!("evt-discharge-{i}-c0ffee")));
    // Weights of patient 1: +2.3 kg in 2 days raises an alert, acknowledged 2 h later.
    for (n, (day, kg)) in [(1, 80.0), (2, 81.1), (3, 82.3)].into_iter().enumerate() {
        api.event(
            &format!("evt-weight-{n}-c0ffee"),
            "subj-hf-1-7f3a",
            d(day, 0),
            "observation.recorded",
            json!({"observation_id": format!("W{n}"), "code": "29463-7", "value": kg, "unit": "kg", "status": "final"}),
        )
        .await;
    }
    let work = api
        .get(&format!("/v1/tasks?tenant={TENANT}&kind=alert"))
        .await;
    let alert = work["items"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a["id"].as_str())
        .unwrap_or_else(|| panic!("an alert: {work}"))
        .to_string();
    secrets.push(alert.clone());
    api.post(
        &format!("/v1/alerts/{alert}/acknowledge"),
        json!({"at": d(3, 2).to_string()}),
    )
    .await;
    // GP visits: patient 1 on day 3, patient 3 on day 9 (late).
    let gp = api
        .get(&format!("/v1/tasks?tenant={TENANT}&role=gp&limit=100"))
        .await;
    let visits: BTreeMap<String, String> = gp["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|t| t["code"] == "gp-visit")
        .map(|t| {
            (
                t["subject"].as_str().unwrap_or_default().to_string(),
                t["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(visits.len(), 4, "{gp}");
    secrets.extend(visits.values().cloned());
    for (subject, day) in [("subj-hf-1-7f3a", 3), ("subj-hf-3-7f3a", 9)] {
        let task = &visits[subject];
        api.post(
            &format!("/v1/tasks/{task}/outcome"),
            json!({"outcome": "completed", "at": d(day, 0).to_string()}),
        )
        .await;
    }
    // Patient 2 is readmitted on day 5.
    api.event(
        "evt-admit-2-c0ffee",
        "subj-hf-2-7f3a",
        d(5, 0),
        "encounter.admitted",
        json!({"encounter_id": "V22", "class": "inpatient"}),
    )
    .await;
    // Diabetes: a diagnosis and three HbA1c results.
    secrets.push("subj-dm-1-9b2e".into());
    api.event(
        "evt-dx-1-c0ffee",
        "subj-dm-1-9b2e",
        t0(),
        "diagnosis.recorded",
        json!({"code": "E11.9"}),
    )
    .await;
    for (n, day) in [1, 4, 8].into_iter().enumerate() {
        api.event(
            &format!("evt-hba1c-{n}-c0ffee"),
            "subj-dm-1-9b2e",
            d(day, 0),
            "observation.recorded",
            json!({"observation_id": format!("H{n}"), "code": "4548-4", "value": 7.4, "unit": "%", "status": "final"}),
        )
        .await;
    }
    // A refused event (unknown type): a dead letter.
    let (status, _) = api
        .call(
            "POST",
            "/v1/events",
            Some(json!({"id": "evt-bad-c0ffee", "tenant": TENANT, "source": "test", "subject": "subj-bad-1", "occurredat": t0().to_string(), "type": "no.such.type", "data": {}}).to_string()),
        )
        .await;
    assert!(status.is_client_error());
    secrets.push("subj-bad-1".into());
    // Twelve days pass: reminders, overdue tasks, escalations, the day-7 transitions.
    api.advance_until(SignedDuration::from_hours(24 * 12), |x| {
        sum(x, "parcours_timers_fired_total", &[]) > 0.0
            && value(
                x,
                "parcours_indicator_patients",
                &[
                    ("indicator", "gp_visit_within_7d"),
                    ("group", "denominator"),
                ],
            ) == Some(4.0)
            && sum(x, "parcours_effects_published_total", &[]) > 0.0
            && value(x, "parcours_outbox_lag_seconds", &[]) == Some(0.0)
    })
    .await;
    // Instance ids.
    let list = api.get(&format!("/v1/instances?tenant={TENANT}")).await;
    for i in list["instances"].as_array().expect("instances") {
        secrets.push(i["id"].as_str().expect("id").to_string());
    }
    Secrets(secrets)
}

/// Every value a label may take, from the loaded pathways and the fixed sets.
fn allowed(registry: &PathwayRegistry) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut a: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut add = |k: &'static str, v: &str| {
        a.entry(k).or_default().insert(v.to_string());
    };
    for s in Source::ALL {
        add("source", s.label());
    }
    for s in DEAD_LETTER_SOURCES {
        add("source", s);
    }
    for o in INGEST_OUTCOMES {
        add("outcome", o);
    }
    for k in EFFECT_KINDS {
        add("kind", k);
    }
    for o in HANDOFF_OUTCOMES
        .into_iter()
        .chain(AUTH_OUTCOMES)
        .chain(LINK_OUTCOMES)
        .chain(RELINK_OUTCOMES)
    {
        add("outcome", o);
    }
    add("version", env!("CARGO_PKG_VERSION"));
    add("tenant", TENANT);
    for s in ["pending", "active", "completed", "closed"]
        .into_iter()
        .chain(parcours_runtime::indicators::TASK_STATUSES)
    {
        add("status", s);
    }
    for s in ["low", "medium", "high", "critical"] {
        add("severity", s);
    }
    for g in ["numerator", "denominator"] {
        add("group", g);
    }
    for f in parcours_runtime::indicators::FOLLOW_UPS {
        add("indicator", f.name);
    }
    for r in parcours_runtime::indicators::RESULT_COUNTS {
        add("indicator", r.name);
    }
    for (n, _, _) in parcours_runtime::indicators::YEARLY_TASKS {
        add("indicator", n);
    }
    add("indicator", parcours_runtime::indicators::READMISSION);
    add("indicator", parcours_runtime::indicators::YEARLY_ALL);
    for p in registry.all() {
        add("pathway", &p.id);
        for t in &p.tracks {
            add("track", &t.name);
        }
        for s in &p.states {
            for k in ["state", "from", "to"] {
                add(k, &s.name);
            }
        }
        for t in &p.tasks {
            add("role", &t.role);
            for e in &t.escalation {
                add("role", &e.role);
            }
        }
    }
    a
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `promtool` from Debian's `prometheus` package; `None` outside CI when missing (CI
/// installs it: `.ci/run`).
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = "promtool not found: apt-get install prometheus";
        assert!(!in_ci(), "{msg}");
        eprintln!("{msg}; the promtool checks did not run");
    }
    found
}

fn promtool_check_metrics(text: &str) {
    let Some(bin) = promtool() else { return };
    use std::io::Write as _;
    let mut child = std::process::Command::new(bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names (inside braces or after by/without/on/ignoring) or strings.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "rate",
        "irate",
        "increase",
        "delta",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "histogram_quantile",
        "clamp_min",
        "clamp_max",
        "abs",
        "time",
        "vector",
        "scalar",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "topk",
        "bottomk",
        "changes",
        "resets",
        "deriv",
        "absent",
        "max_over_time",
        "min_over_time",
        "avg_over_time",
        "label_replace",
        "sort",
        "sort_desc",
        "inf",
        "nan",
        "le",
    ];
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let mut depth_brace = 0;
    let mut after_grouping = false;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' || c == '\'' {
            let end = expr[i + 1..].find(c).map_or(b.len(), |e| i + 1 + e);
            i = end + 1;
            continue;
        }
        if c == '{' {
            depth_brace += 1;
        } else if c == '}' {
            depth_brace -= 1;
        } else if c == '[' {
            // A range or a subquery: skip to the closing bracket.
            i = expr[i..].find(']').map_or(b.len(), |e| i + e);
        } else if c == '$' {
            // A Grafana variable: skip its name.
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if matches!(
                word,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // A label list follows, in parentheses.
                after_grouping = next == Some('(');
                continue;
            }
            let is_number_suffix = start > 0 && (b[start - 1] as char).is_ascii_digit();
            if depth_brace == 0
                && !after_grouping
                && !is_number_suffix
                && !NOT_METRICS.contains(&word)
                && next != Some('(')
            {
                out.insert(word.to_string());
            }
            continue;
        } else if c == ')' {
            after_grouping = false;
        }
        i += 1;
    }
    out
}

/// Every name the exposition has, with histogram series names.
fn exposed(x: &Exposition) -> BTreeSet<String> {
    x.iter().map(|s| s.name.clone()).collect()
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let path = repo().join("deploy/grafana/dashboards/parcours.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        let mut panels = vec![p];
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        p["title"].as_str().unwrap_or("?").to_string(),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    out
}

fn rule_exprs() -> Vec<(String, String)> {
    let path = repo().join("deploy/prometheus/rules/parcours.rules.yml");
    let text = std::fs::read_to_string(&path).expect("rules");
    let mut out = Vec::new();
    let mut name = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if let Some(n) = t.strip_prefix("- alert:") {
            name = n.trim().to_string();
        }
        if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            if e == "|" || e == ">" || e == "|-" || e == ">-" {
                let indent = lines.peek().map_or(0, |l| l.len() - l.trim_start().len());
                let mut body = String::new();
                while let Some(l) = lines.peek() {
                    if !l.trim().is_empty() && l.len() - l.trim_start().len() < indent {
                        break;
                    }
                    body.push_str(l.trim());
                    body.push(' ');
                    lines.next();
                }
                out.push((name.clone(), body));
            } else {
                out.push((name.clone(), e.to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_bounded_valid_and_cover_the_dashboard() {
    let api = api().await;
    let secrets = cohort(&api).await;
    let text = api.scrape().await;
    let x = parse(&text);

    // promtool accepts the exposition.
    promtool_check_metrics(&text);

    // No patient, instance, task, alert or event id, anywhere in the exposition.
    for s in &secrets.0 {
        assert!(!text.contains(s.as_str()), "the exposition contains `{s}`");
    }
    // Label names from the allow-list; values from the bounded sets.
    let allowed = allowed(&api.registry);
    for s in &x {
        for (k, v) in &s.labels {
            assert!(
                LABEL_NAMES.contains(&k.as_str()),
                "{}: label `{k}` is not in the allow-list",
                s.name
            );
            assert!(
                !looks_like_uuid(v),
                "{}: {k}=\"{v}\" looks like an id",
                s.name
            );
            if k == "le" {
                assert!(
                    v == "+Inf" || v.parse::<f64>().is_ok(),
                    "{}: le={v}",
                    s.name
                );
                continue;
            }
            if k == "consumer" {
                assert!(
                    v.strip_prefix("in-p")
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())),
                    "{}: consumer={v}",
                    s.name
                );
                continue;
            }
            assert!(
                allowed.get(k.as_str()).is_some_and(|set| set.contains(v)),
                "{}: {k}=\"{v}\" is not a known bounded value",
                s.name
            );
        }
    }

    // What happened is what the metrics say.
    assert_eq!(
        value(
            &x,
            "parcours_ingest_events_total",
            &[("source", "http"), ("outcome", "committed")]
        ),
        Some(19.0),
        "4 discharges, 4 consents, 3 weights, 1 admission, 1 diagnosis, 3 HbA1c, 1 alert ack, 2 task outcomes"
    );
    assert!(value(&x, "parcours_dead_letters_total", &[("source", "http")]) >= Some(1.0));
    assert!(sum(&x, "parcours_effects_published_total", &[("kind", "task")]) > 0.0);
    assert!(sum(&x, "parcours_effects_published_total", &[("kind", "alert")]) > 0.0);
    assert!(
        value(
            &x,
            "parcours_ingest_commit_seconds_count",
            &[("source", "http")]
        ) >= Some(19.0)
    );
    assert!(value(&x, "parcours_timer_lateness_seconds_count", &[]) > Some(0.0));
    assert!(value(&x, "parcours_event_to_effect_seconds_count", &[]) > Some(0.0));
    // Effects handed over in memory: their publishes are timed.
    assert!(value(&x, "parcours_relay_publish_seconds_count", &[]) > Some(0.0));
    assert_eq!(value(&x, "parcours_build_info", &[]), Some(1.0));
    let hf = [("tenant", TENANT), ("pathway", "heart-failure")];
    assert_eq!(
        value(
            &x,
            "parcours_instances",
            &[hf[0], hf[1], ("status", "active")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sum(
            &x,
            "parcours_instances_in_state",
            &[hf[0], hf[1], ("track", "main")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &x,
            "parcours_instances_in_state",
            &[hf[0], hf[1], ("track", "main"), ("state", "readmitted")]
        ),
        Some(1.0)
    );
    // GP within 7 days: patient 1 (day 3) of 4 discharges; patient 3 came on day 9.
    let gp = [hf[0], hf[1], ("indicator", "gp_visit_within_7d")];
    assert_eq!(value(&x, "parcours_indicator_ratio", &gp), Some(0.25));
    assert_eq!(
        value(&x, "parcours_indicator_delay_seconds_count", &gp),
        Some(2.0)
    );
    assert_eq!(
        value(
            &x,
            "parcours_indicator_delay_seconds_bucket",
            &[gp[0], gp[1], gp[2], ("le", "259200")]
        ),
        Some(1.0),
        "one delay of 3 days"
    );
    // Readmission: only patient 2's cycle counts yet (30 days have not passed for the others).
    let re = [hf[0], hf[1], ("indicator", "readmission_30d")];
    assert_eq!(value(&x, "parcours_indicator_ratio", &re), Some(1.0));
    // Alerts: one raised (high), acknowledged after 2 h.
    assert_eq!(
        value(
            &x,
            "parcours_alerts_raised_total",
            &[hf[0], hf[1], ("severity", "high")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&x, "parcours_alert_ack_seconds_sum", &hf),
        Some(7200.0)
    );
    assert_eq!(
        value(
            &x,
            "parcours_pathway_tasks",
            &[hf[0], hf[1], ("role", "gp"), ("status", "on_time")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &x,
            "parcours_pathway_tasks",
            &[hf[0], hf[1], ("role", "gp"), ("status", "late")]
        ) == Some(1.0)
    );
    // Diabetes: the patient has 3 HbA1c in 12 months.
    let dm = [
        ("tenant", TENANT),
        ("pathway", "type2-diabetes"),
        ("indicator", "hba1c_3_in_12_months"),
    ];
    assert_eq!(value(&x, "parcours_indicator_ratio", &dm), Some(1.0));

    // Every metric the dashboard and the alert rules read is exposed, with a sample.
    let names = exposed(&x);
    let rt = parcours_runtime::metrics::metrics();
    let registered: BTreeSet<String> = [
        &rt.nats_consumer_pending as &dyn prometheus::core::Collector,
        &rt.nats_consumer_ack_pending,
    ]
    .iter()
    .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
    .collect();
    let mut checked = 0;
    for (what, expr) in dashboard_exprs().into_iter().chain(rule_exprs()) {
        let used = promql_metric_names(&expr);
        assert!(!used.is_empty(), "{what}: no metric found in `{expr}`");
        for m in used {
            if !names.contains(&m) && PRODUCTION_ONLY.contains(&m.as_str()) {
                // Set by the NATS wiring only: registered, without series here.
                assert!(registered.contains(&m), "{what}: `{m}` is not registered");
                continue;
            }
            assert!(
                names.contains(&m),
                "{what}: `{m}` (in `{expr}`) is not exposed after the cohort"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} metric references checked");
}

#[test]
fn promql_names_are_extracted() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (le, source) (rate(parcours_ingest_commit_seconds_bucket{tenant=~"$tenant", x="a_b"}[5m]))) / on(tenant) group_left sum(parcours_instances) > 0.5e3"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "parcours_ingest_commit_seconds_bucket",
            "parcours_instances"
        ]
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = repo().join("deploy/prometheus/rules/parcours.rules.yml");
    let names: Vec<String> = rule_exprs().into_iter().map(|(n, _)| n).collect();
    for needed in [
        "ParcoursStuckInstances",
        "ParcoursDeadLettersGrowing",
        "ParcoursTimerLateness",
        "ParcoursNatsConsumerLag",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "no rule {needed}: {names:?}"
        );
    }
    let Some(bin) = promtool() else { return };
    let out = std::process::Command::new(bin)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool check rules:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A start on a log longer than one turn of the fold: the indicator families are left
/// out (not shown partial) while the background fold catches up, scrape after scrape
/// folding only a turn; then they are there with the whole log's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicators_are_left_out_until_the_fold_has_caught_up() {
    let api = api_with(parcours_http::Limits {
        indicator_records_per_turn: 10,
        ..parcours_http::Limits::default()
    })
    .await;
    // 30 discharges: 30 inbound records and 30 instance decisions, or more.
    for i in 0..30 {
        api.event(
            &format!("adt-{i}"),
            &format!("p-{i}"),
            t0(),
            "encounter.discharged",
            json!({"encounter_id": format!("V{i}"), "destination": "home", "diagnoses": ["I50.1"]}),
        )
        .await;
    }
    let first = parse(&api.scrape().await);
    let position = value(&first, "parcours_indicators_log_position", &[]).expect("position");
    assert!(
        (10.0..60.0).contains(&position),
        "the first scrape folds one turn (and the background fold may have started one): {position}"
    );
    assert!(
        !first.iter().any(|s| s.name == "parcours_instances"),
        "no partial counts while catching up"
    );
    let hf = [
        ("tenant", TENANT),
        ("pathway", "heart-failure"),
        ("status", "active"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let x = parse(&api.scrape().await);
        if value(&x, "parcours_instances", &hf).is_some() {
            assert_eq!(value(&x, "parcours_instances", &hf), Some(30.0));
            assert!(value(&x, "parcours_indicators_log_position", &[]) >= Some(60.0));
            assert_eq!(value(&x, "parcours_indicators_caught_up", &[]), Some(1.0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fold did not catch up in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
