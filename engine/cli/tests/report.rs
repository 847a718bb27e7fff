//! `parcours report` on a log whose answers are known: five heart-failure discharges
//! (GP seen on day 2, day 6, day 8, never, never; one readmission on day 12) and two
//! diabetes patients (three HbA1c, one HbA1c), forty days later. The report says 2 / 5
//! seen by the GP within 7 days, 1 / 5 readmitted within 30 days, 1 / 2 with three
//! HbA1c; it names no patient, loads nothing from elsewhere, and its charts are drawn
//! by headless Chromium (Debian's `chromium`; CI installs it, see `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_runtime::{Engine, EngineConfig, PathwayRegistry};
use parcours_store::{EventStore, WorkFilter, WorkKind};
use parcours_store_sqlite::SqliteStore;
use serde_json::json;

const TENANT: &str = "cpts-report";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn t0() -> Timestamp {
    "2026-01-05T10:00:00Z".parse().expect("ts")
}

fn day(d: i64) -> Timestamp {
    t0() + SignedDuration::from_hours(24 * d)
}

fn event(id: &str, subject: &str, at: Timestamp, ty: EventType, data: serde_json::Value) -> Event {
    Event {
        id: id.into(),
        tenant: TENANT.into(),
        source: "test".into(),
        subject: subject.into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("payload"),
    }
}

/// The subjects in the log (they must not appear in the report).
async fn known_log(db: &Path) -> Vec<String> {
    let store = SqliteStore::open(db).await.expect("store");
    let mut registry = PathwayRegistry::new();
    for f in ["heart-failure.yaml", "type2-diabetes.yaml"] {
        let p = parcours_lang::load_file(&repo().join("pathways").join(f))
            .expect("read")
            .pathway
            .expect("compiles");
        registry.add(p);
    }
    let mut engine = Engine::open(store.clone(), registry, EngineConfig::default())
        .await
        .expect("engine");
    let hf: Vec<String> = (1..=5).map(|i| format!("hf-subject-{i}-a8c1")).collect();
    for (i, s) in hf.iter().enumerate() {
        engine
            .ingest(&event(
                &format!("dis-{i}"),
                s,
                t0(),
                EventType::EncounterDischarged,
                json!({"encounter_id": format!("V{i}"), "destination": "home", "diagnoses": ["I50.9"]}),
            ))
            .await
            .expect("discharge");
        engine
            .ingest(&event(
                &format!("consent-{i}"),
                s,
                t0() + SignedDuration::from_hours(1),
                EventType::ConsentGiven,
                json!({"scope": "heart-failure"}),
            ))
            .await
            .expect("consent");
    }
    let gp = store
        .work_items(&WorkFilter {
            tenant: TENANT.into(),
            role: Some("gp".into()),
            kind: Some(WorkKind::Task),
            stream: None,
            limit: 100,
            ..WorkFilter::default()
        })
        .await
        .expect("work");
    let visit = |subject: &str| {
        gp.iter()
            .find(|w| w.subject == subject && w.code == "gp-visit")
            .map(|w| w.id.clone())
            .expect("a gp-visit task")
    };
    for (i, d) in [(0, 2), (1, 6), (2, 8)] {
        engine.advance(day(d)).await.expect("timers");
        engine
            .ingest(&event(
                &format!("gp-{i}"),
                &hf[i],
                day(d),
                EventType::TaskCompleted,
                json!({"task_id": visit(&hf[i]), "code": "gp-visit"}),
            ))
            .await
            .expect("gp visit");
    }
    engine.advance(day(12)).await.expect("timers");
    engine
        .ingest(&event(
            "admit-3",
            &hf[3],
            day(12),
            EventType::EncounterAdmitted,
            json!({"encounter_id": "V30", "class": "inpatient"}),
        ))
        .await
        .expect("admission");
    let dm: Vec<String> = (1..=2).map(|i| format!("dm-subject-{i}-b7d2")).collect();
    for (i, s) in dm.iter().enumerate() {
        engine
            .ingest(&event(
                &format!("dx-{i}"),
                s,
                day(12),
                EventType::DiagnosisRecorded,
                json!({"code": "E11.9"}),
            ))
            .await
            .expect("diagnosis");
    }
    let hba1c = [(0, 13), (0, 25), (0, 39), (1, 20)];
    for (n, (who, d)) in hba1c.into_iter().enumerate() {
        engine.advance(day(d)).await.expect("timers");
        engine
            .ingest(&event(
                &format!("hba1c-{n}"),
                &dm[who],
                day(d),
                EventType::ObservationRecorded,
                json!({"observation_id": format!("H{n}"), "code": "4548-4", "value": 6.8, "unit": "%", "status": "final"}),
            ))
            .await
            .expect("hba1c");
    }
    engine.advance(day(40)).await.expect("timers");
    hf.into_iter().chain(dm).collect()
}

fn card(html: &str, indicator: &str) -> String {
    let start = html
        .find(&format!("data-indicator=\"{indicator}\""))
        .unwrap_or_else(|| panic!("no {indicator} card"));
    let end = html[start..].find("</div></div>").expect("card end");
    html[start..start + end].to_string()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|p| [p.join("chromium"), p.join("chromium-browser")])
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = "chromium not found: apt-get install chromium";
        assert!(!in_ci(), "{msg}");
        eprintln!("{msg}; the rendering check did not run");
    }
    found
}

#[tokio::test]
async fn the_report_has_the_known_answers_and_its_charts_render() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("log.db");
    let subjects = known_log(&db).await;
    let out = dir.path().join("report.html");
    let run = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .arg("report")
        .arg("--store")
        .arg(&db)
        .arg("--pathways")
        .arg(repo().join("pathways"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("parcours report");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(&out).expect("report");

    // The known answers.
    let gp = card(&html, "gp_visit_within_7d");
    assert!(gp.contains("40 %") && gp.contains("2 / 5"), "{gp}");
    let re = card(&html, "readmission_30d");
    assert!(re.contains("20 %") && re.contains("1 / 5"), "{re}");
    let a1c = card(&html, "hba1c_3_in_12_months");
    assert!(a1c.contains("50 %") && a1c.contains("1 / 2"), "{a1c}");
    // The delay histogram: one visit in 2–3 days, one in 6–7, one in 7–10.
    for (bin, n) in [("2–3", 1), ("6–7", 1), ("7–10", 1), ("3–4", 0)] {
        assert!(
            html.contains(&format!("<title>{bin} days: {n}</title>")),
            "bin {bin} should hold {n}"
        );
    }
    // The graph shows where the active patients are: one readmitted.
    assert!(html.contains("data-state=\"readmitted\" data-count=\"1\""));

    // Self-contained and anonymous.
    for s in &subjects {
        assert!(!html.contains(s.as_str()), "the report names {s}");
    }
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "loads something from elsewhere"
    );
    let charts = html.matches("<svg class=\"chart").count();
    assert!(charts >= 10, "{charts} charts");

    // Rendered by a browser: every chart laid out with a non-empty size.
    let Some(bin) = chromium() else { return };
    let profile = dir.path().join("chromium-profile");
    let dom = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", out.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&format!("data-charts-drawn=\"{charts}\"")),
        "not every chart was drawn ({charts} expected): {}",
        &dom[..dom.len().min(400)]
    );
    assert!(!dom.contains("data-drawn=\"no\""));
}
