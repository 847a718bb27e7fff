//! Every sample resource of `tests/data` maps to exact events, or is refused with a
//! useful OperationOutcome.

mod common;

use common::*;
use parcours_core::EventData;
use parcours_core::events::data;
use parcours_fhir::{HttpStatus, IssueSeverity, IssueType, Submission, ingest, to_events};

#[test]
fn inpatient_finished_encounter_is_a_discharge() {
    let events =
        to_events(&data("r4ex_Encounter-f203_inpatient_finished.json"), &ctx()).expect("mapped");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.tenant, TENANT);
    assert_eq!(e.source, "fhir/chu-test");
    assert_eq!(e.subject, on_server("f201"));
    // A date without a time is the start of that day in Europe/Paris (UTC+1 in March).
    assert_eq!(e.occurred_at, ts("2013-03-19T23:00:00Z"));
    assert_eq!(e.recorded_at, None);
    assert_eq!(
        e.data,
        EventData::EncounterDischarged(data::EncounterDischarged {
            // The only identifier is temporary (and holds a first name): the id is used.
            encounter_id: "f203".into(),
            class: "inpatient".into(),
            // No dischargeDisposition: not stated.
            destination: "unknown".into(),
            // Condition/stroke and Condition/f201 are not in the request, and the
            // reasonCode is text only: no code to record.
            diagnoses: vec![],
            facility: None,
            admitted_at: Some(ts("2013-03-10T23:00:00Z")),
        })
    );
}

#[test]
fn inpatient_in_progress_encounter_is_an_admission_not_a_discharge() {
    let events = to_events(&data("r4ex_Encounter-emerg_in_progress.json"), &ctx()).expect("mapped");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.subject, on_server("example"));
    assert_eq!(e.occurred_at, ts("2017-01-31T21:15:00Z"));
    assert_eq!(
        e.data,
        EventData::EncounterAdmitted(data::EncounterAdmitted {
            encounter_id: "emerg".into(),
            class: "inpatient".into(),
            facility: None,
        })
    );
}

#[test]
fn body_weight_in_pounds_is_recorded_in_kilograms() {
    let events = to_events(
        &data("r4ex_Observation-example_body_weight_lbs.json"),
        &ctx(),
    )
    .expect("mapped");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.subject, on_server("example"));
    assert_eq!(e.occurred_at, ts("2016-03-27T22:00:00Z"));
    let EventData::ObservationRecorded(o) = &e.data else {
        panic!("{:?}", e.data)
    };
    // 185 lb = 83.91459 kg; the first LOINC coding of the four is the code.
    let kg = o.value.expect("value");
    assert!((kg - 83.914_588_45).abs() < 1e-6, "{kg}");
    assert_eq!(
        o,
        &data::ObservationRecorded {
            observation_id: "example".into(),
            code: "29463-7".into(),
            value: Some(kg),
            unit: Some("kg".into()),
            status: "final".into(),
            ..Default::default()
        }
    );
}

#[test]
fn glucose_keeps_its_range_and_interpretation() {
    let events = to_events(&data("r4ex_Observation-f001_glucose.json"), &ctx()).expect("mapped");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.subject, on_server("f001"));
    // effectivePeriod.start wins over issued.
    assert_eq!(e.occurred_at, ts("2013-04-02T08:30:10Z"));
    assert_eq!(
        e.data,
        EventData::ObservationRecorded(data::ObservationRecorded {
            observation_id: "f001".into(),
            code: "15074-8".into(),
            value: Some(6.3),
            comparator: None,
            value_text: None,
            unit: Some("mmol/L".into()),
            status: "final".into(),
            reference_low: Some(3.1),
            reference_high: Some(6.2),
            abnormal_flag: Some("H".into()),
        })
    );
}

#[test]
fn lipid_collection_takes_its_time_from_the_diagnostic_report() {
    let ingest = ingest(&data("r4ex_Bundle-lipids.json"), &ctx()).expect("mapped");
    assert_eq!(ingest.submission, Submission::Collection);
    let expected = [
        ("cholesterol", "35200-5", 6.3, None, Some(4.5)),
        ("triglyceride", "35217-9", 1.3, None, Some(2.0)),
        ("hdlcholesterol", "2085-9", 1.3, Some(1.5), None),
        ("ldlcholesterol", "13457-7", 4.6, None, Some(3.0)),
    ];
    assert_eq!(ingest.events.len(), expected.len());
    for (e, (id, code, value, low, high)) in ingest.events.iter().zip(expected) {
        assert_eq!(e.subject, on_server("pat2"));
        // The observations have no time of their own: the report's effectiveDateTime.
        assert_eq!(e.occurred_at, ts("2011-03-03T21:30:00Z"));
        assert_eq!(
            e.data,
            EventData::ObservationRecorded(data::ObservationRecorded {
                observation_id: id.into(),
                code: code.into(),
                value: Some(value),
                unit: Some("mmol/L".into()),
                status: "final".into(),
                reference_low: low,
                reference_high: high,
                ..Default::default()
            })
        );
    }
    // The DiagnosticReport itself is not an event: one information issue says so.
    assert_eq!(ingest.issues.len(), 1);
    assert_eq!(ingest.issues[0].severity, IssueSeverity::Information);
    assert!(
        ingest.issues[0]
            .diagnostics
            .starts_with("1 DiagnosticReport entry was not used"),
        "{}",
        ingest.issues[0]
    );
}

#[test]
fn a_patient_without_death_is_accepted_with_no_event() {
    let ingest = ingest(&data("r4ex_Patient-example.json"), &ctx()).expect("accepted");
    assert!(ingest.events.is_empty());
    assert_eq!(ingest.issues[0].severity, IssueSeverity::Information);
    let response = serde_json::to_string(&ingest.response()).expect("json");
    assert!(!response.contains("Chalmers") && !response.contains("12345"));
}

#[test]
fn a_task_in_progress_is_a_progress_update_not_an_outcome() {
    let ingest = ingest(&data("r4ex_Task-example1.json"), &ctx()).expect("accepted");
    assert!(ingest.events.is_empty());
    assert_eq!(ingest.issues.len(), 1);
    assert_eq!(ingest.issues[0].code, IssueType::Informational);
    assert_eq!(ingest.issues[0].expression.as_deref(), Some("Task.status"));
}

#[test]
fn resources_parcours_does_not_process_are_refused_with_422() {
    for (file, type_name) in [
        ("r4ex_CarePlan-example.json", "CarePlan"),
        (
            "r4ex_PlanDefinition-protocol-example.json",
            "PlanDefinition",
        ),
    ] {
        let refusal = to_events(&data(file), &ctx()).expect_err("refused");
        assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
        let outcome = refusal.to_json();
        assert_eq!(outcome["issue"][0]["code"], "not-supported");
        assert_eq!(outcome["issue"][0]["expression"][0], type_name);
    }
}

#[test]
fn samples_map_to_the_same_events_every_time() {
    for file in [
        "r4ex_Encounter-f203_inpatient_finished.json",
        "r4ex_Observation-f001_glucose.json",
        "r4ex_Bundle-lipids.json",
        "synthea_HF_Michele_Wolf.json",
    ] {
        let a = to_events(&data(file), &ctx()).expect("mapped");
        let b = to_events(&data(file), &ctx()).expect("mapped");
        assert_eq!(a, b, "{file}");
        let mut ids: Vec<&str> = a.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), a.len(), "{file}: event ids are unique");
    }
}

#[test]
fn sample_events_snapshot() {
    let mut all = Vec::new();
    for file in [
        "r4ex_Encounter-f203_inpatient_finished.json",
        "r4ex_Encounter-emerg_in_progress.json",
        "r4ex_Observation-example_body_weight_lbs.json",
        "r4ex_Observation-f001_glucose.json",
        "r4ex_Bundle-lipids.json",
    ] {
        all.extend(to_events(&data(file), &ctx()).expect("mapped"));
    }
    let json = serde_json::to_string_pretty(&all).expect("json");
    insta::assert_snapshot!("sample_events", json);
}
