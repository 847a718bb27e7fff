//! Synthea bundles: decades of one patient's care, as a transaction.

mod common;

use common::*;
use parcours_core::{Event, EventData, EventType};
use parcours_fhir::{Submission, ingest};

fn observations<'a>(events: &'a [Event], code: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| matches!(&e.data, EventData::ObservationRecorded(o) if o.code == code))
        .collect()
}

fn value(e: &Event) -> (Option<f64>, Option<&str>) {
    match &e.data {
        EventData::ObservationRecorded(o) => (o.value, o.unit.as_deref()),
        other => panic!("{other:?}"),
    }
}

fn count(events: &[Event], ty: EventType) -> usize {
    events.iter().filter(|e| e.event_type() == ty).count()
}

#[test]
#[allow(clippy::disallowed_methods)] // a test measures its own speed
fn heart_failure_patient() {
    let started = std::time::Instant::now();
    let ingest = ingest(&data("synthea_HF_Michele_Wolf.json"), &ctx()).expect("mapped");
    let elapsed = started.elapsed();
    assert_eq!(ingest.submission, Submission::Transaction);
    let events = &ingest.events;
    // 119 valued LOINC observations + 20 blood-pressure components, 14 visits, one
    // emergency and one inpatient stay, 3 conditions, the death.
    assert_eq!(events.len(), 159);
    assert_eq!(count(events, EventType::ObservationRecorded), 139);
    assert_eq!(count(events, EventType::EncounterCompleted), 14);
    assert_eq!(count(events, EventType::EncounterDischarged), 2);
    assert_eq!(count(events, EventType::DiagnosisRecorded), 3);
    assert_eq!(count(events, EventType::PatientDeceased), 1);
    // Every entry of the transaction has an outcome.
    assert_eq!(ingest.entries.len(), 233);

    // One patient, named by its medical record number (typed MR).
    let subject = local(
        "http://hospital.smarthealthit.org",
        "9fd25274-3a7d-43d4-87af-a03849074b5a",
    );
    assert!(events.iter().all(|e| e.subject == subject));
    // Clinical-time order.
    assert!(
        events
            .windows(2)
            .all(|w| w[0].occurred_at <= w[1].occurred_at)
    );

    let ntprobnp = observations(events, "33762-6");
    assert_eq!(ntprobnp.len(), 1);
    assert_eq!(ntprobnp[0].occurred_at, ts("2015-09-15T06:58:56Z"));
    assert_eq!(
        value(ntprobnp[0]),
        (Some(1792.1117842568142), Some("pg/mL"))
    );

    let weights = observations(events, "29463-7");
    assert_eq!(weights.len(), 10);
    assert_eq!(weights[0].occurred_at, ts("2006-12-10T06:58:56Z"));
    assert_eq!(value(weights[0]), (Some(70.20642836679777), Some("kg")));

    let stays: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::EncounterDischarged(d) => Some((e.occurred_at, d)),
            _ => None,
        })
        .collect();
    assert_eq!(stays[0].1.class, "emergency");
    assert_eq!(stays[1].1.class, "inpatient");
    assert_eq!(
        stays[1].1.encounter_id,
        "2b9b9a23-4903-4aa6-994b-0db71831ebb6"
    );
    assert_eq!(stays[1].0, ts("2016-04-04T06:58:56Z"));
    assert_eq!(stays[1].1.admitted_at, Some(ts("2016-04-03T06:58:56Z")));

    let chf = events.iter().find_map(|e| match &e.data {
        EventData::DiagnosisRecorded(d) if d.code == "88805009" => Some((e, d)),
        _ => None,
    });
    let (chf, d) = chf.expect("heart failure diagnosis");
    assert_eq!(d.system, "snomed");
    assert_eq!(chf.occurred_at, ts("2015-09-15T06:58:56Z"));

    let death = events
        .iter()
        .find(|e| e.event_type() == EventType::PatientDeceased)
        .expect("death");
    assert_eq!(death.occurred_at, ts("2016-04-05T06:58:56Z"));

    // Blood pressure: one event per component, named after the panel.
    let systolic = observations(events, "8480-6");
    assert_eq!(systolic.len(), 10);
    let EventData::ObservationRecorded(o) = &systolic[0].data else {
        unreachable!()
    };
    assert_eq!(
        o.observation_id,
        "38f934f9-22e5-421a-b616-eb27b3520be5/8480-6"
    );
    assert_eq!(o.unit.as_deref(), Some("mm[Hg]"));
    assert!(observations(events, "55284-4").is_empty());

    // Claims, immunisations… are not used: one information issue per type.
    assert!(
        ingest
            .issues
            .iter()
            .any(|i| i.diagnostics.starts_with("20 Claim entries"))
    );

    assert!(elapsed.as_secs_f64() < 2.0, "mapping took {elapsed:?}");
}

#[test]
#[allow(clippy::disallowed_methods)] // a test measures its own speed
fn diabetes_patient() {
    let started = std::time::Instant::now();
    let events =
        parcours_fhir::to_events(&data("synthea_DM_Renato_Dare.json"), &ctx()).expect("mapped");
    let elapsed = started.elapsed();
    // 113 valued LOINC observations + 10 components, 16 visits, 10 conditions.
    assert_eq!(events.len(), 149);
    assert_eq!(count(&events, EventType::ObservationRecorded), 123);
    assert_eq!(count(&events, EventType::EncounterCompleted), 16);
    assert_eq!(count(&events, EventType::DiagnosisRecorded), 10);
    assert_eq!(count(&events, EventType::PatientDeceased), 0);

    let hba1c = observations(&events, "4548-4");
    let series: Vec<(jiff::Timestamp, Option<f64>)> =
        hba1c.iter().map(|e| (e.occurred_at, value(e).0)).collect();
    assert_eq!(
        series,
        vec![
            (ts("2013-12-02T17:17:39Z"), Some(5.468324417516299)),
            (ts("2016-06-20T17:17:39Z"), Some(5.917117453331849)),
            (ts("2018-06-25T17:17:39Z"), Some(6.109457325824228)),
            (ts("2018-09-03T17:17:39Z"), Some(6.109457325824228)),
            (ts("2020-09-07T17:17:39Z"), Some(6.109457325824228)),
        ]
    );
    assert!(hba1c.iter().all(|e| value(e).1 == Some("%")));

    let egfr = observations(&events, "33914-3");
    assert_eq!(egfr.len(), 5);
    assert_eq!(value(egfr[0]).1, Some("mL/min/{1.73_m2}"));

    // Type 2 diabetes (SNOMED 44054006) is recorded: the diabetes pathway enrols on it.
    assert!(events.iter().any(|e| matches!(
        &e.data,
        EventData::DiagnosisRecorded(d) if d.code == "44054006" && d.system == "snomed"
    )));
    // Visits of unknown specialty are `other`.
    assert!(events.iter().all(|e| match &e.data {
        EventData::EncounterCompleted(c) => c.kind == "other",
        _ => true,
    }));
    assert!(elapsed.as_secs_f64() < 2.0, "mapping took {elapsed:?}");
}
