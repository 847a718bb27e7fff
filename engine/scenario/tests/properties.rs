//! Properties of the core over random patient histories on the shipped pathways:
//! replay is deterministic, the fold of the emitted events equals the live state,
//! snapshot + tail equals full replay, and no effect id is emitted twice. Histories
//! include opt-outs and renewed consents, so closed instances that record events (an
//! enrolment held back, an opt-out lifted) are covered too.

use std::collections::BTreeSet;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::model::CompiledPathway;
use parcours_core::state::{InstanceState, Recorded, apply, fold};
use parcours_scenario::Simulator;
use proptest::prelude::*;

fn shipped(name: &str) -> CompiledPathway {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../pathways")
        .join(name);
    let loaded = parcours_lang::load_file(&path).expect("readable");
    loaded
        .pathway
        .unwrap_or_else(|| panic!("{name} compiles:\n{}", loaded.report.short()))
}

/// One step of a random history: wait, then (maybe) an event.
#[derive(Clone, Debug)]
enum Step {
    /// A discharge: heart failure (0), pneumonia (1) or COPD (2).
    Discharge {
        dx: u8,
        home: bool,
    },
    Admit,
    DischargeCancelled,
    Consent,
    Withdraw(bool),
    CompleteSomeTask(usize),
    Weight(f64),
    Potassium(f64, bool),
    NtProBnp(f64),
    HbA1c(f64, bool),
    Egfr(f64),
    Spo2(f64, bool),
    Diagnosis,
    Nyha(i64),
    Deceased,
    Nothing,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, any::<bool>()).prop_map(|(dx, home)| Step::Discharge { dx, home }),
        1 => Just(Step::Admit),
        1 => Just(Step::DischargeCancelled),
        2 => Just(Step::Consent),
        1 => any::<bool>().prop_map(Step::Withdraw),
        4 => (0usize..8).prop_map(Step::CompleteSomeTask),
        4 => (70.0f64..95.0).prop_map(Step::Weight),
        2 => (3.0f64..7.0, any::<bool>()).prop_map(|(v, f)| Step::Potassium(v, f)),
        1 => (200.0f64..3000.0).prop_map(Step::NtProBnp),
        2 => (5.0f64..12.0, any::<bool>()).prop_map(|(v, pct)| Step::HbA1c(v, pct)),
        1 => (20.0f64..90.0).prop_map(Step::Egfr),
        2 => (80.0f64..99.0, any::<bool>()).prop_map(|(v, u)| Step::Spo2(v, u)),
        1 => Just(Step::Diagnosis),
        1 => (1i64..5).prop_map(Step::Nyha),
        1 => Just(Step::Deceased),
        2 => Just(Step::Nothing),
    ]
}

fn history() -> impl Strategy<Value = Vec<(u32, Step)>> {
    // Wait 0–20 days (in hours) before each step.
    prop::collection::vec((0u32..480, step()), 1..40)
}

/// Heart failure, pneumonia (enrols in nothing), COPD.
const DIAGNOSES: [&str; 3] = ["I50.9", "J18.9", "J44.1"];

fn data(ty: EventType, json: serde_json::Value) -> EventData {
    EventData::from_json(ty, json).expect("valid payload")
}

fn event_for(sim: &Simulator<'_>, i: usize, at: Timestamp, step: &Step) -> Option<Event> {
    use serde_json::json;
    let d = match step {
        Step::Discharge { dx, home } => data(
            EventType::EncounterDischarged,
            json!({"encounter_id": format!("V{i}"),
                   "diagnoses": [DIAGNOSES[usize::from(*dx % 3)]],
                   "destination": if *home { "home" } else { "nursing-home" }}),
        ),
        Step::Admit => data(
            EventType::EncounterAdmitted,
            json!({"encounter_id": format!("V{i}")}),
        ),
        Step::DischargeCancelled => data(
            EventType::EncounterDischargeCancelled,
            json!({"encounter_id": "V0"}),
        ),
        Step::Consent => data(EventType::ConsentGiven, json!({})),
        // An opt-out from every programme, or from another one.
        Step::Withdraw(all) => data(
            EventType::ConsentWithdrawn,
            json!({"scope": if *all { "*" } else { "some-other-programme" }}),
        ),
        Step::CompleteSomeTask(n) => {
            let inst = sim.current()?;
            let (id, t) = inst.tasks.iter().nth(*n % inst.tasks.len().max(1))?;
            data(
                EventType::TaskCompleted,
                json!({"task_id": id.to_string(), "code": &*t.code}),
            )
        }
        Step::Weight(v) => data(
            EventType::ObservationRecorded,
            json!({"code": "29463-7", "value": v, "unit": "kg"}),
        ),
        Step::Potassium(v, fin) => data(
            EventType::ObservationRecorded,
            json!({"code": "2823-3", "value": v, "unit": "mmol/L",
                   "status": if *fin { "final" } else { "preliminary" }}),
        ),
        Step::NtProBnp(v) => data(
            EventType::ObservationRecorded,
            json!({"code": "33762-6", "value": v, "unit": "pg/mL"}),
        ),
        Step::HbA1c(v, pct) => data(
            EventType::ObservationRecorded,
            if *pct {
                json!({"code": "4548-4", "value": v, "unit": "%"})
            } else {
                json!({"code": "4548-4", "value": (v - 2.15) * 10.929, "unit": "mmol/mol"})
            },
        ),
        Step::Spo2(v, with_unit) => data(
            EventType::ObservationRecorded,
            if *with_unit {
                json!({"code": "59408-5", "value": v, "unit": "%"})
            } else {
                json!({"code": "59408-5", "value": v})
            },
        ),
        Step::Egfr(v) => data(
            EventType::ObservationRecorded,
            json!({"code": "62238-1", "value": v, "unit": "mL/min/{1.73_m2}"}),
        ),
        Step::Diagnosis => data(
            EventType::DiagnosisRecorded,
            json!({"code": "E11.9", "system": "icd-10"}),
        ),
        Step::Nyha(n) => data(
            EventType::ParametersUpdated,
            json!({"values": {"nyha_class": n}}),
        ),
        Step::Deceased => data(EventType::PatientDeceased, json!({})),
        Step::Nothing => return None,
    };
    Some(Event {
        id: format!("ev-{i}"),
        tenant: "cpts-test".into(),
        source: "proptest".into(),
        subject: "patient-p".into(),
        occurred_at: at,
        recorded_at: None,
        data: d,
    })
}

type Streams = Vec<Vec<Recorded>>;

fn run(p: &CompiledPathway, h: &[(u32, Step)]) -> (Vec<Recorded>, Vec<InstanceState>, Streams) {
    let start: Timestamp = "2026-01-05T08:00:00Z".parse().expect("timestamp");
    let mut sim = Simulator::new(p, "cpts-test", "patient-p", start);
    let mut at = start;
    for (i, (wait, step)) in h.iter().enumerate() {
        at += SignedDuration::from_hours(i64::from(*wait));
        sim.advance(at).expect("timers fire");
        if let Some(ev) = event_for(&sim, i, at, step) {
            sim.deliver(&ev).expect("decide succeeds");
        }
    }
    // Let every remaining timer of the next year fire too.
    sim.advance(at + SignedDuration::from_hours(24 * 400))
        .expect("timers fire");
    let streams = (0..sim.instances().len())
        .map(|i| sim.stream(i).to_vec())
        .collect();
    (sim.log().to_vec(), sim.instances().to_vec(), streams)
}

fn check_properties(p: &CompiledPathway, h: &[(u32, Step)]) -> Result<(), TestCaseError> {
    let (log, instances, streams) = run(p, h);

    // Deterministic: the same history gives the same log, byte for byte.
    let (log2, _, _) = run(p, h);
    prop_assert_eq!(&log, &log2);

    // No id (hence no effect id) is emitted twice.
    let mut ids = BTreeSet::new();
    for r in &log {
        prop_assert!(ids.insert(r.id), "duplicate id {}", r.id);
    }

    for (inst, stream) in instances.iter().zip(&streams) {
        // The fold of the instance's stream equals the live state.
        let mine: Vec<&Recorded> = stream.iter().collect();
        let folded =
            fold(p, &inst.instance_id.to_string(), mine.iter().copied()).expect("fold succeeds");
        prop_assert_eq!(&folded, inst);

        // Snapshot + tail equals full replay (snapshot through the serialised form).
        let cut = mine.len() / 2;
        let snap = fold(
            p,
            &inst.instance_id.to_string(),
            mine[..cut].iter().copied(),
        )
        .expect("fold");
        let json = serde_json::to_vec(&snap).expect("serialise");
        let mut restored: InstanceState = serde_json::from_slice(&json).expect("deserialise");
        for r in &mine[cut..] {
            apply(p, &mut restored, r).expect("apply");
        }
        prop_assert_eq!(&restored, inst);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn heart_failure_histories(h in history()) {
        let p = shipped("heart-failure.yaml");
        check_properties(&p, &h)?;
    }

    #[test]
    fn diabetes_histories(h in history()) {
        let p = shipped("type2-diabetes.yaml");
        check_properties(&p, &h)?;
    }

    #[test]
    fn copd_histories(h in history()) {
        let p = shipped("copd-exacerbation.yaml");
        check_properties(&p, &h)?;
    }
}
