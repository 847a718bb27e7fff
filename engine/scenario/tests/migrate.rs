//! Migrations between pathway versions, through the core: the dry run, the records, the
//! fold across versions, and the refusals.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::migrate::{MigrationError, MigrationPlan, check, migrate};
use parcours_core::model::CompiledPathway;
use parcours_core::state::{Change, InstanceState, apply};
use parcours_scenario::{Simulator, parse_time};

/// The shipped heart-failure pathway as version 1, whatever version the file states.
fn source() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/heart-failure.yaml"),
    )
    .expect("readable");
    let stated = text
        .lines()
        .find(|l| l.starts_with("version: "))
        .expect("the shipped file states its version");
    text.replacen(&format!("\n{stated}\n"), "\nversion: 1\n", 1)
}

fn compile(name: &str, text: &str) -> CompiledPathway {
    match parcours_lang::compile_source(name, text) {
        Ok((p, _)) => p,
        Err(report) => panic!("{name} does not compile:\n{}", report.short()),
    }
}

/// Version 2: `titration` renamed `up_titration`.
fn v2() -> CompiledPathway {
    let text = source()
        .replacen("version: 1", "version: 2", 1)
        .replace("goto: titration\n", "goto: up_titration\n")
        .replace("      titration:\n", "      up_titration:\n");
    compile("hf-v2.yaml", &text)
}

fn start() -> Timestamp {
    parse_time("2026-03-02T10:00", None).expect("start")
}

fn at(rel: &str) -> Timestamp {
    parse_time(rel, Some(start())).expect("time")
}

fn event(id: &str, when: Timestamp, ty: EventType, json: serde_json::Value) -> Event {
    Event {
        id: id.into(),
        tenant: "cpts-test".into(),
        source: "test".into(),
        subject: "patient-m".into(),
        occurred_at: when,
        recorded_at: None,
        data: EventData::from_json(ty, json).expect("payload"),
    }
}

/// A patient ten days after discharge, consented: in titration.
fn in_titration(v1: &CompiledPathway) -> InstanceState {
    let mut sim = Simulator::new(v1, "cpts-test", "patient-m", start());
    sim.deliver(&event(
        "adt-1",
        start(),
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    ))
    .expect("enrols");
    sim.deliver(&event(
        "consent-1",
        at("+1h"),
        EventType::ConsentGiven,
        serde_json::json!({}),
    ))
    .expect("consents");
    sim.advance(at("+10d")).expect("timers");
    sim.instances()[0].clone()
}

fn plan(map: &[(&str, &str, &str)]) -> MigrationPlan {
    let mut states: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (track, from, to) in map {
        states
            .entry(track.to_string())
            .or_default()
            .insert(from.to_string(), to.to_string());
    }
    MigrationPlan { states }
}

#[test]
fn a_mapped_state_moves_with_its_timers_values_and_open_tasks() {
    let v1 = compile("hf-v1.yaml", &source());
    let v2 = v2();
    let state = in_titration(&v1);
    assert_eq!(state.current_states(&v1)[0], ("main", "titration"));
    let plan = plan(&[("main", "titration", "up_titration")]);
    let now = at("+10d1h");

    let preview = check(&v1, &v2, &state, &plan, now).expect("can move");
    assert_eq!(
        preview.moves[0],
        ("main".into(), "titration".into(), "up_titration".into())
    );
    assert!(
        preview.cancelled_timers > 0 && preview.armed_timers > 0,
        "{preview:?}"
    );

    let migration = migrate(&v1, &v2, &state, &plan, now, "migration:test").expect("moves");
    assert_eq!(
        migrate(&v1, &v2, &state, &plan, now, "migration:test").expect("again"),
        migration,
        "deterministic"
    );
    // Fold: up to the migration with v1, from it with v2 — the state `migrate` gives.
    let mut s = state.clone();
    let mut p = &v1;
    for r in &migration.records {
        if matches!(r.change, Change::Migrated { .. }) {
            p = &v2;
        }
        apply(p, &mut s, r).expect("folds");
    }
    assert_eq!(s, migration.state, "the fold of its records");
    assert_eq!(s.pathway_version, 2);
    assert_eq!(s.current_states(&v2)[0], ("main", "up_titration"));
    assert_eq!(
        s.tracks[0].entered_at, state.tracks[0].entered_at,
        "entered when it did"
    );
    assert_eq!(s.tasks, state.tasks, "open tasks stay open");
    assert_eq!(s.vars, state.vars, "variables by name");
    assert_eq!(s.series, state.series, "series by name");
    // No timer of the old transitions is left; the new state's are armed.
    for t in s.timers.values() {
        if let parcours_core::state::TimerKind::Transition { transition } = t.kind {
            let rule = &v2.transitions[usize::from(transition)].rule;
            let from = v2.transitions[usize::from(transition)]
                .from
                .map(|f| v2.state(f).name.to_string());
            assert!(
                from.is_none()
                    || s.current_states(&v2)
                        .iter()
                        .any(|(_, st)| Some(st.to_string()) == from),
                "timer of {rule} is not for a current state"
            );
        }
    }
    // The migrated instance decides on v2 from now on.
    let w = event(
        "w-1",
        at("+10d2h"),
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": 80.0, "unit": "kg"}),
    );
    parcours_core::decide_and_apply(&v2, &s, &w).expect("v2 decides");
    assert!(
        parcours_core::decide_and_apply(&v1, &s, &w).is_err(),
        "v1 no longer fits"
    );
}

#[test]
fn refusals_say_why() {
    let v1 = compile("hf-v1.yaml", &source());
    let v2 = v2();
    let state = in_titration(&v1);
    let now = at("+10d1h");
    // Unmapped: `titration` does not exist in v2.
    let err = check(&v1, &v2, &state, &MigrationPlan::default(), now).expect_err("refused");
    assert_eq!(
        err,
        MigrationError::MissingState {
            track: "main".into(),
            state: "titration".into(),
            target: "titration".into()
        }
    );
    assert!(err.to_string().contains("no such state"), "{err}");
    // Pinned to another version.
    let err = check(&v2, &v1, &state, &plan(&[]), now).expect_err("refused");
    assert!(
        matches!(err, MigrationError::WrongVersion { version: 1, .. }),
        "{err:?}"
    );
    // A closed instance stays where it is.
    let mut closed = state.clone();
    closed.status = parcours_core::state::Status::Closed {
        reason: "deceased".into(),
    };
    let err = check(
        &v1,
        &v2,
        &closed,
        &plan(&[("main", "titration", "up_titration")]),
        now,
    )
    .expect_err("refused");
    assert!(matches!(err, MigrationError::NotActive(_)), "{err:?}");
}
