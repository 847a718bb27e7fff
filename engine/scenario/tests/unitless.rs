//! A result without a unit is never converted on a guess: `value_in` makes the rule not
//! apply and a series leaves it out (both recorded as ignored inputs), unless the series
//! says `unitless: assume`.

use parcours_core::events::{Event, EventType};
use parcours_core::state::Change;
use parcours_scenario::{Simulator, parse_time};

const PATHWAY: &str = r#"
pathway: unitless-demo
version: 1
title: Results without a unit
enrolment:
  on: encounter.discharged
variables:
  last_k:
    type: number
series:
  spo2:
    codes: ["59408-5"]
    unit: "%"
  spo2_trusted:
    codes: ["59408-5"]
    unit: "%"
    unitless: assume
tracks:
  main:
    initial: watching
    states:
      watching:
        transitions:
          - on: observation.recorded
            when: event.code == "2823-3"
            do:
              - set: last_k
                to: event.value_in("mmol/L")
          - after: 30d
            goto: done
      done:
        terminal: true
"#;

/// A result of the simulator's patient.
fn obs(sim: &Simulator<'_>, id: &str, at: jiff::Timestamp, json: serde_json::Value) -> Event {
    sim.event(id, at, EventType::ObservationRecorded, json)
        .expect("payload")
}

#[test]
fn a_result_without_a_unit_is_never_guessed() {
    let (p, report) = parcours_lang::compile_source("unitless.yaml", PATHWAY)
        .unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    assert!(!p.series[0].assume_unitless);
    assert!(p.series[1].assume_unitless);
    let start = parse_time("2026-03-02T10:00", None).expect("start");
    let mut sim = Simulator::new(&p, "t", "p", start);
    let discharge = sim
        .event(
            "d",
            start,
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": "V1"}),
        )
        .expect("payload");
    sim.deliver(&discharge).expect("enrols");
    let mark = sim.log().len();
    let at = parse_time("+1d", Some(start)).expect("time");
    sim.deliver(&obs(
        &sim,
        "s1",
        at,
        serde_json::json!({"code": "59408-5", "value": 86}),
    ))
    .expect("decide");
    sim.deliver(&obs(
        &sim,
        "k1",
        at,
        serde_json::json!({"code": "2823-3", "value": 5.9}),
    ))
    .expect("decide");
    let changes: Vec<&Change> = sim.log()[mark..].iter().map(|r| &r.change).collect();
    let ignored: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::InputIgnored { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    // The default series leaves it out; the trusting one takes it as %.
    assert!(
        ignored
            .iter()
            .any(|r| r.starts_with("series `spo2`: result `59408-5` has no unit, not added")),
        "{ignored:?}"
    );
    assert!(changes.iter().any(
        |c| matches!(c, Change::SampleRecorded { series, value } if &**series == "spo2_trusted" && *value == 86.0)
    ));
    // `value_in` on a unitless potassium: not set, recorded as ignored, not a guard error.
    assert!(
        ignored
            .iter()
            .any(|r| r
                .contains("result `2823-3` has no unit: value_in(\"mmol/L\") cannot convert it")),
        "{ignored:?}"
    );
    assert!(
        !changes
            .iter()
            .any(|c| matches!(c, Change::GuardFailed { .. } | Change::VariableSet { .. }))
    );
}
