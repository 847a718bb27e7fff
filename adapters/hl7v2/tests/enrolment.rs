//! From the wire to enrolment: HL7 v2 messages through the intake, their events through
//! the shipped pathway files (compiled as `parcours serve` compiles them) and the pure
//! core, on a virtual clock. What a hospital sends must start the pathways it is meant
//! to start.

mod common;

use std::path::PathBuf;

use common::{TENANT, data, intake};
use jiff::Timestamp;
use parcours_core::CompiledPathway;
use parcours_core::events::{Event, EventData};
use parcours_hl7v2::Outcome;
use parcours_scenario::Simulator;

fn pathway(name: &str) -> CompiledPathway {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../pathways")
        .join(format!("{name}.yaml"));
    let loaded = parcours_lang::load_file(&path).expect("read the pathway");
    loaded
        .pathway
        .unwrap_or_else(|| panic!("{name} compiles:\n{}", loaded.report.short()))
}

fn accepted(raw: &[u8]) -> Vec<Event> {
    match intake().process(raw).outcome {
        Outcome::Accepted(events) => events,
        other => panic!("expected events, got {other:?}"),
    }
}

/// The events delivered in order to one patient on one pathway: the states of its
/// active instance (track → state), or `None` when nothing enrolled.
fn run(p: &CompiledPathway, events: &[Event]) -> Option<Vec<(String, String)>> {
    let subject = &events[0].subject;
    let start: Timestamp = events[0].occurred_at;
    let mut sim = Simulator::new(p, TENANT, subject, start);
    for e in events {
        assert_eq!(&e.subject, subject, "one patient");
        sim.advance(e.occurred_at.max(sim.now())).expect("timers");
        sim.deliver(e).expect("decide");
    }
    assert!(sim.instances().len() <= 1, "enrolled once");
    let current = sim.current().filter(|i| i.is_active())?;
    Some(
        current
            .current_states(p)
            .into_iter()
            .map(|(t, s)| (t.to_owned(), s.to_owned()))
            .collect(),
    )
}

fn state_of<'a>(states: &'a [(String, String)], track: &str) -> Option<&'a str> {
    states
        .iter()
        .find(|(t, _)| t == track)
        .map(|(_, s)| s.as_str())
}

/// An ADT message from a hospital that is not PAM-FR: `trigger`, one DG1 per code.
fn adt(trigger: &str, control: &str, dg1: &[&str]) -> Vec<u8> {
    let mut segs = vec![
        format!(
            "MSH|^~\\&|HIS|HOSP^1.2.3.4^ISO|PARCOURS|CPTS|20260110103000||ADT^{trigger}^ADT_A01|{control}|P|2.5"
        ),
        "EVN||20260110103000||||20260110102000".to_owned(),
        "PID|1||IPP-9^^^HOSP&1.2.3.4.5&ISO^PI||DOE^JANE||19500101|F".to_owned(),
        "PV1|1|I|MED^1^1||||||||||||||||VIS-9|||||||||||||||||01||||||||20260105080000|20260110100000"
            .to_owned(),
    ];
    for (i, code) in dg1.iter().enumerate() {
        segs.push(format!("DG1|{}||{code}|||F", i + 1));
    }
    segs.join("\r").into_bytes()
}

#[test]
fn a_discharge_with_a_type_2_diabetes_dg1_enrols_in_type2_diabetes() {
    let t2d = pathway("type2-diabetes");
    let events = accepted(&adt(
        "A03",
        "E2E-1",
        &["E11.9^Type 2 diabetes mellitus^I10"],
    ));
    let states = run(&t2d, &events).expect("enrolled in type2-diabetes");
    assert_eq!(state_of(&states, "control"), Some("routine_follow_up"));
    assert_eq!(state_of(&states, "hba1c"), Some("hba1c_waiting"));
    // Not a heart-failure stay: that pathway does not start.
    assert_eq!(run(&pathway("heart-failure"), &events), None);
}

#[test]
fn dg1_enrols_from_every_adt_message_that_states_it() {
    let t2d = pathway("type2-diabetes");
    for (trigger, code) in [
        ("A01", "E119^Diabète sucré de type 2^CIM10"),
        ("A04", "E11.65^^I10"),
        ("A08", "44054006^Diabetes mellitus type 2^SCT"),
        ("A31", "E11.9^^I10"),
        ("A28", "E11^^I10"),
    ] {
        let events = accepted(&adt(trigger, "E2E-2", &[code]));
        assert!(run(&t2d, &events).is_some(), "{trigger} {code}");
    }
    // What is not type 2 diabetes, or not a diagnosis, enrols no one.
    for (trigger, code) in [
        ("A03", "E10.9^Type 1 diabetes^I10"),
        ("A03", "O24.4^Gestational diabetes^I10"),
        ("A03", "25000^Diabetes (ICD-9)^I9"),
    ] {
        let events = accepted(&adt(trigger, "E2E-3", &[code]));
        assert_eq!(run(&t2d, &events), None, "{trigger} {code}");
    }
    // A cancelled admission or discharge states nothing.
    for trigger in ["A11", "A13"] {
        let events = accepted(&adt(trigger, "E2E-4", &["E11.9^^I10"]));
        assert_eq!(run(&t2d, &events), None, "{trigger}");
    }
}

#[test]
fn a_pamfr_heart_failure_discharge_with_diabetes_starts_both_pathways() {
    // DG1 I50.0 and E11.9 (CIM-10) on a PAM-FR discharge home.
    let events = accepted(&data("pamfr/a03_discharge_home_not_qualified.hl7"));
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.data, EventData::DiagnosisRecorded(d) if d.code == "E11.9"))
    );
    let hf = run(&pathway("heart-failure"), &events).expect("heart failure");
    assert!(!hf.is_empty());
    let t2d = run(&pathway("type2-diabetes"), &events).expect("type 2 diabetes");
    assert_eq!(state_of(&t2d, "control"), Some("routine_follow_up"));
    // Resent: the same events, and no second instance.
    let mut twice = events.clone();
    twice.extend(accepted(&data(
        "pamfr/a03_discharge_home_not_qualified.hl7",
    )));
    assert_eq!(&twice[..events.len()], &twice[events.len()..]);
}
