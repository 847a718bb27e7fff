//! Shared helpers for the benchmarks: the shipped pathways and canned patient histories.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::model::CompiledPathway;
use parcours_core::state::InstanceState;
use parcours_core::{decide::instance_id_for, decide_and_apply};

/// Compile a shipped pathway by file name.
pub fn shipped(name: &str) -> CompiledPathway {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pathways")
        .join(name);
    let loaded = parcours_lang::load_file(&path).expect("pathway file readable");
    match loaded.pathway {
        Some(p) => p,
        None => panic!("{name} does not compile:\n{}", loaded.report.short()),
    }
}

/// An event for the bench patient.
pub fn event(id: String, at: Timestamp, ty: EventType, data: serde_json::Value) -> Event {
    Event {
        id,
        tenant: "cpts-bench".into(),
        source: "bench".into(),
        subject: "patient-bench".into(),
        occurred_at: at,
        recorded_at: None,
        data: EventData::from_json(ty, data).expect("valid payload"),
    }
}

/// The bench start instant.
pub fn start() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().expect("timestamp")
}

/// A heart-failure patient enrolled, consented, in the titration phase with a week of weights.
pub fn heart_failure_patient(p: &CompiledPathway) -> InstanceState {
    let t0 = start();
    let discharge = event(
        "discharge".into(),
        t0,
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    );
    let mut state = InstanceState::pending(instance_id_for(&p.id, &discharge));
    let apply = |state: &mut InstanceState, ev: &Event| {
        let (_, next) = decide_and_apply(p, state, ev).expect("decide");
        *state = next;
    };
    apply(&mut state, &discharge);
    apply(
        &mut state,
        &event(
            "consent".into(),
            t0 + SignedDuration::from_hours(2),
            EventType::ConsentGiven,
            serde_json::json!({}),
        ),
    );
    for day in 1..=7 {
        apply(
            &mut state,
            &weight(day, t0 + SignedDuration::from_hours(24 * day), 80.0),
        );
    }
    state
}

/// A daily weight observation.
pub fn weight(n: i64, at: Timestamp, kg: f64) -> Event {
    event(
        format!("weight-{n}"),
        at,
        EventType::ObservationRecorded,
        serde_json::json!({"code": "29463-7", "value": kg, "unit": "kg"}),
    )
}
