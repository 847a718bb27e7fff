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

/// The discharge that enrols the bench patient, and the empty state it enrols.
fn discharged(p: &CompiledPathway, t0: Timestamp) -> (Event, InstanceState) {
    let discharge = event(
        "discharge".into(),
        t0,
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}),
    );
    let state = InstanceState::pending(instance_id_for(&p.id, &discharge));
    (discharge, state)
}

/// A heart-failure patient enrolled, consented, in the titration phase with a week of weights.
pub fn heart_failure_patient(p: &CompiledPathway) -> InstanceState {
    let t0 = start();
    let (discharge, mut state) = discharged(p, t0);
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

/// A realistic six-month heart-failure history: discharge, consent, a weight every
/// morning, tasks done a day before they are due, every timer firing. Returns each event
/// with the state it was decided against, so a bench can replay `decide` over the mix.
pub fn heart_failure_history(p: &CompiledPathway) -> Vec<(InstanceState, Event)> {
    use parcours_core::decide::timer_fired_event_id;
    let t0 = start();
    let (discharge, mut state) = discharged(p, t0);
    let mut out = Vec::new();
    let step = |state: &mut InstanceState, ev: Event, out: &mut Vec<(InstanceState, Event)>| {
        out.push((state.clone(), ev.clone()));
        let (_, next) = decide_and_apply(p, state, &ev).expect("decide");
        *state = next;
    };
    step(&mut state, discharge, &mut out);
    step(
        &mut state,
        event(
            "consent".into(),
            t0 + SignedDuration::from_hours(2),
            EventType::ConsentGiven,
            serde_json::json!({}),
        ),
        &mut out,
    );
    let mut kg = 80.0;
    for day in 1..=180i64 {
        let at = t0 + SignedDuration::from_hours(24 * day);
        // Timers due before this morning fire first, in order.
        loop {
            let due = state
                .timers
                .iter()
                .filter(|(_, t)| t.fire_at <= at)
                .min_by_key(|(id, t)| (t.fire_at, *id))
                .map(|(id, t)| (id, t.fire_at));
            let Some((id, fire_at)) = due else { break };
            let ev = event(
                timer_fired_event_id(&id.to_string()),
                fire_at,
                EventType::TimerFired,
                serde_json::json!({"timer_id": id.to_string(), "instance_id": state.instance_id}),
            );
            step(&mut state, ev, &mut out);
        }
        // Care teams complete tasks due within a day.
        let done: Vec<_> = state
            .tasks
            .iter()
            .filter(|(_, t)| t.due_at <= at + SignedDuration::from_hours(24))
            .map(|(id, t)| (id, t.code.to_string()))
            .collect();
        for (id, code) in done {
            let ev = event(
                format!("done-{id}"),
                at,
                EventType::TaskCompleted,
                serde_json::json!({"task_id": id.to_string(), "code": code}),
            );
            step(&mut state, ev, &mut out);
        }
        // A slow drift with a gain once a month.
        kg += if day % 30 == 0 { 2.5 } else { -0.08 };
        step(&mut state, weight(day, at, kg), &mut out);
    }
    out
}
