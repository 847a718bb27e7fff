//! Mapping rules, one behaviour per test, on small hand-written resources.

mod common;

use common::*;
use parcours_core::EventData;
use parcours_core::events::data;
use std::collections::HashMap;

use parcours_fhir::{
    EventFate, HttpStatus, IssueSeverity, IssueType, Submission, check_content_type, ingest,
    to_events,
};
use parcours_identity::{OID_INS_NIR, OID_INS_NIR_TEST};
use serde_json::{Value, json};

fn observation(value: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-05-02T08:00:00+02:00"
    });
    if let (Some(o), Some(v)) = (o.as_object_mut(), value.as_object()) {
        for (k, v) in v {
            o.insert(k.clone(), v.clone());
        }
    }
    o
}

fn one_observation(body: Value) -> data::ObservationRecorded {
    let events = to_events(&json(body), &ctx()).expect("mapped");
    assert_eq!(events.len(), 1);
    match events.into_iter().next().map(|e| e.data) {
        Some(EventData::ObservationRecorded(o)) => o,
        other => panic!("{other:?}"),
    }
}

#[test]
fn egfr_above_60_keeps_its_comparator() {
    let o = one_observation(observation(json!({"valueQuantity": {
        "value": 60, "comparator": ">", "unit": "mL/min/1.73m2",
        "system": "http://unitsofmeasure.org", "code": "mL/min/{1.73_m2}"
    }})));
    assert_eq!(o.code, "33914-3");
    assert_eq!(o.value, Some(60.0));
    assert_eq!(o.comparator.as_deref(), Some(">"));
    assert_eq!(o.unit.as_deref(), Some("mL/min/{1.73_m2}"));
}

#[test]
fn a_textual_bound_is_read_as_comparator_and_value() {
    let o = one_observation(observation(json!({"valueString": " >60 "})));
    assert_eq!(o.value, Some(60.0));
    assert_eq!(o.comparator.as_deref(), Some(">"));
    assert_eq!(o.value_text.as_deref(), Some(">60"));
    let o = one_observation(observation(json!({"valueString": "négatif"})));
    assert_eq!(
        (o.value, o.comparator, o.value_text.as_deref()),
        (None, None, Some("négatif"))
    );
}

/// Free text (a lab's comment: it may name the patient) is left out of the event, with a
/// warning saying so; the result itself is recorded.
#[test]
fn free_text_is_not_kept() {
    let comment = "hémolysé, Mme MARTIN née le 15/07/1942, tél 0320123456";
    let ingest =
        ingest(&json(observation(json!({"valueString": comment}))), &ctx()).expect("mapped");
    let [event] = ingest.events.as_slice() else {
        panic!("one event: {:?}", ingest.events);
    };
    let EventData::ObservationRecorded(o) = &event.data else {
        panic!("an observation: {event:?}");
    };
    assert_eq!(o.value_text, None);
    assert!(
        !serde_json::to_string(event)
            .expect("json")
            .contains("MARTIN")
    );
    let warned = ingest
        .issues
        .iter()
        .find(|i| i.severity == IssueSeverity::Warning)
        .expect("a warning");
    assert!(warned.diagnostics.contains("not kept"), "{warned:?}");
    assert_eq!(warned.expression.as_deref(), Some("Observation.value[x]"));
    for word in ["positive", "1+", "trace", "2026-12-08"] {
        let o = one_observation(observation(json!({"valueString": word})));
        assert_eq!(o.value_text.as_deref(), Some(word));
    }
}

#[test]
fn pounds_become_kilograms_whatever_the_spelling() {
    for q in [
        json!({"value": 176, "unit": "lbs"}),
        json!({"value": 176, "unit": "lb"}),
        json!({"value": 176, "system": "http://unitsofmeasure.org", "code": "[lb_av]"}),
    ] {
        let o = one_observation(observation(json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "valueQuantity": q,
            "referenceRange": [{"low": {"value": 110, "unit": "lb"}, "high": {"value": 220}}]
        })));
        let kg = o.value.expect("value");
        assert!((kg - 79.832_257_12).abs() < 1e-6, "{kg}");
        assert_eq!(o.unit.as_deref(), Some("kg"));
        // The range follows the value into kilograms (a bound without a unit is in the
        // value's unit as sent).
        assert!((o.reference_low.expect("low") - 49.895_160_7).abs() < 1e-6);
        assert!((o.reference_high.expect("high") - 99.790_321_4).abs() < 1e-6);
    }
}

#[test]
fn other_units_are_passed_through_as_ucum() {
    let o = one_observation(observation(json!({
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "valueQuantity": {"value": 1.05, "unit": "g/l"},
        "referenceRange": [{"low": {"value": 70, "unit": "mg/dL"}, "high": {"value": 1.10, "unit": "g/L"}}]
    })));
    assert_eq!(o.value, Some(1.05));
    assert_eq!(o.unit.as_deref(), Some("g/L"));
    // 70 mg/dL = 0.70 g/L: the range is given in the value's unit.
    assert!((o.reference_low.expect("low") - 0.7).abs() < 1e-12);
    assert_eq!(o.reference_high, Some(1.1));
}

#[test]
fn value_choices() {
    let o = one_observation(observation(json!({"valueInteger": 3})));
    assert_eq!(o.value, Some(3.0));
    let o = one_observation(observation(json!({"valueCodeableConcept": {
        "coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}],
        "text": "négatif"
    }})));
    assert_eq!(o.value_text.as_deref(), Some("260385009"));
    let o = one_observation(observation(json!({"valueBoolean": true})));
    assert_eq!(o.value_text.as_deref(), Some("true"));
    let ingest = ingest(&json(observation(json!({"valueRatio": {}}))), &ctx()).expect("mapped");
    assert_eq!(ingest.events.len(), 1);
    assert_eq!(ingest.issues[0].severity, IssueSeverity::Warning);
    assert_eq!(
        ingest.issues[0].expression.as_deref(),
        Some("Observation.valueRatio")
    );
    let refusal = to_events(
        &json(observation(json!({"valueInteger": 3, "valueString": "3"}))),
        &ctx(),
    )
    .expect_err("two values");
    assert_eq!(refusal.issues[0].code, IssueType::Invariant);
}

#[test]
fn observation_status_is_passed_through() {
    let o = one_observation(observation(
        json!({"status": "preliminary", "valueInteger": 1}),
    ));
    assert_eq!(o.status, "preliminary");
    let refusal =
        to_events(&json(observation(json!({"status": "done"}))), &ctx()).expect_err("bad code");
    assert_eq!(refusal.status, HttpStatus::BadRequest);
    assert_eq!(refusal.issues[0].code, IssueType::CodeInvalid);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.status")
    );
}

#[test]
fn an_observation_without_loinc_is_refused_alone_and_skipped_in_a_bundle() {
    let no_loinc = observation(json!({
        "code": {"coding": [{"system": "http://acme.org/codes", "code": "GLU"}]},
        "valueInteger": 1
    }));
    let refusal = to_events(&json(no_loinc.clone()), &ctx()).expect_err("refused");
    assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
    assert_eq!(refusal.issues[0].severity, IssueSeverity::Error);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.code.coding")
    );

    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": no_loinc},
        {"resource": observation(json!({"id": "obs-2", "valueInteger": 2}))}
    ]});
    let ingest = ingest(&json(bundle), &ctx()).expect("accepted");
    assert_eq!(ingest.events.len(), 1);
    assert_eq!(ingest.issues[0].severity, IssueSeverity::Warning);
    assert_eq!(
        ingest.issues[0].expression.as_deref(),
        Some("Bundle.entry[0].resource.code.coding")
    );
}

/// LOINC under its other names: its OID, and the French national terminology's subset
/// (ANS `TRE_A04-Loinc`, what the ANS guides' examples write).
#[test]
fn loinc_is_read_under_its_oid_and_the_french_nos_subset() {
    for system in [
        "urn:oid:2.16.840.1.113883.6.1",
        "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc",
    ] {
        let obs = one_observation(observation(json!({
            "code": {"coding": [
                {"system": "http://acme.org/codes", "code": "HBA1C"},
                {"system": system, "code": "4548-4"}
            ]},
            "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
        })));
        assert_eq!(
            (obs.code.as_str(), obs.value),
            ("4548-4", Some(7.2)),
            "{system}"
        );
    }
}

/// A bare id with the reference's `type` (FR Core's own examples) is the relative
/// reference `type/id`; without `type` it resolves to nothing.
#[test]
fn a_bare_id_with_its_type_is_a_relative_reference() {
    let typed =
        observation(json!({"subject": {"reference": "p1", "type": "Patient"}, "valueInteger": 1}));
    let got = to_events(&json(typed), &ctx()).expect("mapped");
    assert_eq!(got[0].subject, on_server("p1"));
    let bare = observation(json!({"subject": {"reference": "p1"}, "valueInteger": 1}));
    let refusal = to_events(&json(bare), &ctx()).expect_err("unresolved");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.subject.reference")
    );
    let group =
        observation(json!({"subject": {"reference": "g1", "type": "Group"}, "valueInteger": 1}));
    let refusal = to_events(&json(group), &ctx()).expect_err("not a patient");
    assert!(
        refusal.issues[0].diagnostics.contains("not a patient"),
        "{:?}",
        refusal.issues
    );
}

/// `Patient?identifier=system|value`: the bundle's Patient entry holding that identifier
/// (named as it names itself: its INS when qualified), else the identifier itself.
#[test]
fn a_conditional_reference_names_the_patient_by_its_identifier() {
    let conditional = |reference: &str| {
        observation(json!({"subject": {"reference": reference}, "valueInteger": 1}))
    };
    // Alone: the identifier's key, percent-encoded or not, the OID's urn prefix dropped.
    for reference in [
        "Patient?identifier=urn:oid:1.2.250.1.71.4.2.7|IPP-9",
        "Patient?identifier=urn%3Aoid%3A1.2.250.1.71.4.2.7%7CIPP-9",
    ] {
        let got = to_events(&json(conditional(reference)), &ctx()).expect(reference);
        assert_eq!(
            got[0].subject,
            local("1.2.250.1.71.4.2.7", "IPP-9"),
            "{reference}"
        );
    }
    // Beside a Patient entry created `ifNoneExist` that holds it: that Patient, whose
    // qualified INS names it.
    let patient = json!({
        "resourceType": "Patient",
        "extension": [{
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
            "extension": [{"url": "identityStatus", "valueCoding": {"code": "VALI"}}]
        }],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.71.4.2.7", "value": "IPP-9"},
            {"system": format!("urn:oid:{OID_INS_NIR}"), "value": "180027512345678"}
        ]
    });
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": conditional("Patient?identifier=urn:oid:1.2.250.1.71.4.2.7|IPP-9"),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": patient,
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": "identifier=urn:oid:1.2.250.1.71.4.2.7|IPP-9"}}
        ]
    });
    let got = to_events(&json(bundle.clone()), &ctx()).expect("mapped");
    let observed: Vec<_> = got
        .iter()
        .filter(|e| matches!(e.data, EventData::ObservationRecorded(_)))
        .collect();
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].subject, ins(OID_INS_NIR, "180027512345678"));
    // Two Patient entries holding it: ambiguous, as a search with two matches.
    let mut twice = bundle;
    let second = twice["entry"][1].clone();
    twice["entry"].as_array_mut().expect("entries").push(second);
    let refusal = to_events(&json(twice), &ctx()).expect_err("ambiguous");
    assert_eq!(refusal.issues[0].code, IssueType::MultipleMatches);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[0].resource.subject.reference")
    );
    // Without a system, or by another search: refused, saying what parcours reads.
    for (reference, code) in [
        ("Patient?identifier=IPP-9", IssueType::Required),
        ("Patient?identifier=|IPP-9", IssueType::Required),
        ("Patient?name=Martin", IssueType::NotSupported),
        (
            "Patient?identifier=urn:oid:1.2.3|IPP-9&birthdate=1950-01-01",
            IssueType::NotSupported,
        ),
        (
            "Patient?identifier=urn:oid:1.2.3%7|IPP-9",
            IssueType::NotSupported,
        ),
    ] {
        let refusal = to_events(&json(conditional(reference)), &ctx()).expect_err(reference);
        assert_eq!(refusal.issues[0].code, code, "{reference}");
        assert!(
            refusal.issues[0].diagnostics.contains("conditional"),
            "{reference}: {:?}",
            refusal.issues
        );
    }
}

/// A Patient entry without a usable identifier (an MR without its system, as converters of
/// HL7 v2 write one without CX-4) is named by its id on the source's server: the key
/// `Patient/<id>` has when no such entry is in the bundle.
#[test]
fn a_patient_entry_without_usable_identifiers_is_named_by_its_id() {
    let patient = json!({
        "resourceType": "Patient", "id": "pat-7",
        "identifier": [{"value": "MRN12345", "type": {"coding": [{"code": "MR"}]}}]
    });
    let entry = |full_url: &str| {
        json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                {"fullUrl": "urn:uuid:5e1f0a52-0000-4000-8000-000000000001",
                 "resource": observation(json!({"subject": {"reference": "Patient/pat-7"},
                                                "valueInteger": 1})),
                 "request": {"method": "PUT", "url": "Observation/obs-1"}},
                {"fullUrl": full_url, "resource": patient,
                 "request": {"method": "PUT", "url": "Patient/pat-7"}}
            ]
        })
    };
    let alone = to_events(
        &json(observation(
            json!({"subject": {"reference": "Patient/pat-7"}, "valueInteger": 1}),
        )),
        &ctx(),
    )
    .expect("mapped");
    assert_eq!(alone[0].subject, on_server("pat-7"));
    for full_url in [
        "urn:uuid:5e1f0a52-0000-4000-8000-000000000002",
        "Patient/pat-7",
    ] {
        let got = to_events(&json(entry(full_url)), &ctx()).expect(full_url);
        assert_eq!(got.len(), 1, "{full_url}");
        assert_eq!(got[0].subject, alone[0].subject, "{full_url}");
    }
    // A fullUrl on another server names it there.
    let got = to_events(
        &json(entry("https://other.example/fhir/Patient/pat-7")),
        &ctx(),
    )
    .expect("mapped");
    assert_eq!(
        got[0].subject,
        local("https://other.example/fhir/Patient", "pat-7")
    );
}

#[test]
fn an_observation_needs_a_time_and_a_patient() {
    let mut no_time = observation(json!({"valueInteger": 1}));
    no_time
        .as_object_mut()
        .map(|o| o.remove("effectiveDateTime"));
    let refusal = to_events(&json(no_time), &ctx()).expect_err("no time");
    assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
    assert_eq!(refusal.issues[0].code, IssueType::Required);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.effective[x]")
    );

    let mut no_subject = observation(json!({"valueInteger": 1}));
    no_subject.as_object_mut().map(|o| o.remove("subject"));
    let refusal = to_events(&json(no_subject), &ctx()).expect_err("no subject");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.subject")
    );

    let refusal = to_events(
        &json(observation(json!({"effectiveDateTime": "2024"}))),
        &ctx(),
    )
    .expect_err("imprecise");
    assert_eq!(refusal.issues[0].code, IssueType::Value);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.effectiveDateTime")
    );
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries.into_iter().map(|r| json!({
            "resource": r,
            "request": {"method": "POST", "url": "Observation"}
        })).collect::<Vec<_>>()
    })
}

#[test]
fn a_transaction_with_one_bad_entry_is_refused_whole_with_the_entry_location() {
    let bundle = transaction(vec![
        observation(json!({"id": "a", "valueInteger": 1})),
        observation(json!({"id": "b", "valueInteger": 1})),
        observation(json!({"id": "c", "valueInteger": 1})),
        observation(json!({"id": "d", "valueQuantity": {"value": 1, "unit": ["mg"]}})),
    ]);
    let refusal = to_events(&json(bundle), &ctx()).expect_err("refused");
    assert_eq!(refusal.status, HttpStatus::BadRequest);
    assert_eq!(refusal.issues.len(), 1);
    assert_eq!(refusal.issues[0].code, IssueType::Structure);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[3].resource.valueQuantity.unit")
    );
    let outcome = refusal.to_json();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[3].resource.valueQuantity.unit"
    );

    // Every bad entry is listed at once.
    let bundle = transaction(vec![
        observation(json!({"id": "a", "status": null})),
        observation(json!({"id": "b", "valueInteger": 1})),
        observation(
            json!({"id": "c", "subject": {"reference": "urn:uuid:4f1c4b1e-0000-0000-0000-000000000000"}}),
        ),
    ]);
    let refusal = to_events(&json(bundle), &ctx()).expect_err("refused");
    let at: Vec<_> = refusal
        .issues
        .iter()
        .map(|i| i.expression.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        at,
        [
            "Bundle.entry[0].resource.status",
            "Bundle.entry[2].resource.subject.reference"
        ]
    );
    assert_eq!(refusal.status, HttpStatus::BadRequest);
}

#[test]
fn a_batch_answers_entry_by_entry() {
    let mut bundle = transaction(vec![
        observation(json!({"id": "a", "valueInteger": 1})),
        observation(json!({"id": "b", "status": "bogus"})),
        json!({"resourceType": "Claim", "id": "c"}),
    ]);
    bundle["type"] = json!("batch");
    let ingest = ingest(&json(bundle), &ctx()).expect("accepted");
    assert_eq!(ingest.submission, Submission::Batch);
    assert_eq!(ingest.events.len(), 1);
    assert_eq!(ingest.entries.len(), 3);
    assert!(ingest.entries[1].refusal.is_some());
    let response = ingest.response();
    assert_eq!(response["type"], "batch-response");
    assert_eq!(response["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        response["entry"][1]["response"]["status"],
        "400 Bad Request"
    );
    assert_eq!(
        response["entry"][1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.status"
    );
    assert_eq!(response["entry"][2]["response"]["status"], "200 OK");
    assert_eq!(
        response["entry"][2]["response"]["outcome"]["issue"][0]["severity"],
        "information"
    );
}

#[test]
fn unknown_and_unused_resource_types_in_a_bundle() {
    // A type FHIR R4 does not have is invalid FHIR: refused, with where.
    let bundle = transaction(vec![
        observation(json!({"valueInteger": 1})),
        json!({"resourceType": "Teleportation", "id": "x"}),
    ]);
    let refusal = to_events(&json(bundle), &ctx()).expect_err("refused");
    assert_eq!(refusal.status, HttpStatus::BadRequest);
    assert_eq!(refusal.issues[0].code, IssueType::CodeInvalid);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[1].resource.resourceType")
    );
    assert!(!refusal.to_string().contains("Teleportation"));

    // A real R4 type parcours does not map is skipped with an information issue.
    let bundle = transaction(vec![
        observation(json!({"valueInteger": 1})),
        json!({"resourceType": "Immunization", "id": "x"}),
        json!({"resourceType": "Immunization", "id": "y"}),
    ]);
    let ingest = ingest(&json(bundle), &ctx()).expect("accepted");
    assert_eq!(ingest.events.len(), 1);
    assert_eq!(ingest.issues.len(), 1);
    assert!(
        ingest.issues[0]
            .diagnostics
            .starts_with("2 Immunization entries were not used")
    );
    assert_eq!(ingest.response()["type"], "transaction-response");
}

/// A transaction-response has a status for every entry — `201 Created` for a POST
/// recorded, `200 OK` for a PUT or an entry not used — and an OperationOutcome for every
/// entry not simply recorded; an event the engine refused refuses the transaction (422,
/// or 409 for a version conflict), saying what was recorded stays so.
#[test]
fn a_transaction_response_says_what_became_of_each_entry() {
    let mut bundle = transaction(vec![
        observation(json!({"id": "a", "valueInteger": 1})),
        observation(json!({"id": "b", "valueInteger": 2})),
        json!({"resourceType": "Immunization", "id": "x"}),
        observation(json!({"id": "c", "valueInteger": 3})),
    ]);
    bundle["entry"][1]["request"]["method"] = json!("PUT");
    let ingest = ingest(&json(bundle), &ctx()).expect("accepted");
    assert_eq!(ingest.entries[0].event_ids, [ingest.events[0].id.clone()]);
    let response = ingest.response();
    assert_eq!(response["type"], "transaction-response");
    let status = |i: usize| response["entry"][i]["response"]["status"].clone();
    assert_eq!(
        [status(0), status(1), status(2), status(3)],
        ["201 Created", "200 OK", "200 OK", "201 Created"].map(Value::from)
    );
    assert!(response["entry"][0]["response"]["outcome"].is_null());
    let unused = &response["entry"][2]["response"]["outcome"];
    assert_eq!(unused["resourceType"], "OperationOutcome", "{response}");
    assert_eq!(unused["issue"][0]["severity"], "information");
    assert_eq!(unused["issue"][0]["code"], "not-supported");
    assert_eq!(unused["issue"][0]["expression"][0], "Bundle.entry[2]");

    // Once submitted, all recorded: one with what a pathway did not act on, one
    // already recorded.
    let ids: Vec<String> = ingest
        .entries
        .iter()
        .flat_map(|e| e.event_ids.clone())
        .collect();
    assert_eq!(ids.len(), 3);
    let fates = HashMap::from([
        (
            ids[1].clone(),
            EventFate::Recorded {
                warnings: vec!["heart-failure: unknown parameter `x`".into()],
            },
        ),
        (ids[2].clone(), EventFate::Duplicate),
    ]);
    let answer = ingest.answer("POST", &fates);
    assert_eq!(answer.status, 200);
    let entry = |i: usize| answer.body["entry"][i]["response"].clone();
    assert_eq!(entry(0)["status"], "201 Created");
    assert_eq!(entry(1)["status"], "200 OK", "a PUT");
    assert_eq!(entry(1)["outcome"]["issue"][0]["severity"], "warning");
    assert_eq!(entry(3)["status"], "200 OK", "already recorded");

    // One refused by the engine: all or nothing, the transaction is refused (422) with
    // one OperationOutcome naming the entry, and saying that what was recorded stays so.
    let mut fates = fates;
    fates.insert(
        ids[0].clone(),
        EventFate::Refused {
            reason: "clinical time more than a day ahead".into(),
        },
    );
    let answer = ingest.answer("POST", &fates);
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.body["resourceType"], "OperationOutcome");
    let issues = answer.body["issue"].as_array().expect("issues");
    let errors: Vec<&Value> = issues.iter().filter(|i| i["severity"] == "error").collect();
    assert_eq!(errors.len(), 1, "{}", answer.body);
    assert_eq!(errors[0]["code"], "business-rule");
    assert_eq!(errors[0]["expression"][0], "Bundle.entry[0].resource");
    assert!(
        errors[0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("clinical time")),
        "{}",
        answer.body
    );
    assert!(
        issues.iter().any(|i| i["severity"] == "information"
            && i["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("stays recorded"))),
        "{}",
        answer.body
    );

    // Its id recorded before with other content, and nothing else refused: 409.
    fates.insert(
        ids[0].clone(),
        EventFate::Conflict {
            reason: "its id is already in the log for another event".into(),
        },
    );
    let answer = ingest.answer("POST", &fates);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(
        answer.body["issue"][0]["code"], "conflict",
        "{}",
        answer.body
    );

    // Every event refused: the transaction is refused, one OperationOutcome, no word
    // of anything recorded.
    let all: HashMap<String, EventFate> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                EventFate::Refused {
                    reason: "no".into(),
                },
            )
        })
        .collect();
    let answer = ingest.answer("POST", &all);
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["resourceType"], "OperationOutcome");
    assert_eq!(answer.body["issue"].as_array().map(Vec::len), Some(3));
}

/// A batch answers each entry with what became of its events: `422` for one the engine
/// refused, `409` for one whose id and version were recorded before with other content,
/// the others as recorded.
#[test]
fn a_batch_entry_refused_by_the_engine_says_so() {
    let mut bundle = transaction(vec![
        observation(json!({"id": "a", "valueInteger": 1})),
        observation(json!({"id": "b", "valueInteger": 2})),
        observation(json!({"id": "c", "valueInteger": 3})),
    ]);
    bundle["type"] = json!("batch");
    let ingest = ingest(&json(bundle), &ctx()).expect("accepted");
    let id = |i: usize| ingest.entries[i].event_ids[0].clone();
    let fates = HashMap::from([
        (
            id(0),
            EventFate::Refused {
                reason: "a pathway could not decide".into(),
            },
        ),
        (
            id(1),
            EventFate::Conflict {
                reason: "its id is already in the log for another event".into(),
            },
        ),
    ]);
    let answer = ingest.answer("POST", &fates);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["type"], "batch-response");
    let entry = |i: usize| answer.body["entry"][i]["response"].clone();
    assert_eq!(entry(0)["status"], "422 Unprocessable Entity");
    assert_eq!(entry(0)["outcome"]["issue"][0]["code"], "business-rule");
    assert_eq!(entry(1)["status"], "409 Conflict");
    assert_eq!(entry(1)["outcome"]["issue"][0]["code"], "conflict");
    assert_eq!(
        entry(1)["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource"
    );
    assert_eq!(entry(2)["status"], "201 Created");
}

/// A resource POSTed and recorded is created (201); the same again is already there
/// (200); one whose events the engine refuses is refused (422), or in conflict (409)
/// when its id and version were recorded with other content.
#[test]
fn a_resource_answer_follows_its_events() {
    let ingest = ingest(&json(observation(json!({"valueInteger": 1}))), &ctx()).expect("accepted");
    let id = ingest.events[0].id.clone();
    assert_eq!(ingest.answer("POST", &HashMap::new()).status, 201);
    assert_eq!(ingest.answer("PUT", &HashMap::new()).status, 200);
    let fate = |f: EventFate| HashMap::from([(id.clone(), f)]);
    assert_eq!(
        ingest.answer("POST", &fate(EventFate::Duplicate)).status,
        200
    );
    assert_eq!(ingest.answer("POST", &fate(EventFate::Queued)).status, 202);
    let refused = ingest.answer(
        "POST",
        &fate(EventFate::Refused {
            reason: "refused".into(),
        }),
    );
    assert_eq!(refused.status, 422);
    assert_eq!(refused.body["issue"][0]["severity"], "error");
    let conflict = ingest.answer(
        "POST",
        &fate(EventFate::Conflict {
            reason: "its id is already in the log for another event".into(),
        }),
    );
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.body["issue"][0]["code"], "conflict");

    // Two events, one refused: not recorded whole (422), saying the other stays.
    let mut two = transaction(vec![
        observation(json!({"id": "a", "valueInteger": 1})),
        observation(json!({"id": "b", "valueInteger": 2})),
    ]);
    two["type"] = json!("collection");
    let two = parcours_fhir::ingest(&json(two), &ctx()).expect("accepted");
    let answer = two.answer(
        "POST",
        &HashMap::from([(
            two.events[1].id.clone(),
            EventFate::Refused {
                reason: "refused".into(),
            },
        )]),
    );
    assert_eq!(answer.status, 422, "{}", answer.body);
    let severities: Vec<&Value> = answer.body["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| &i["severity"])
        .collect();
    assert_eq!(severities, [&json!("error"), &json!("information")]);
    let warned = ingest.answer(
        "POST",
        &fate(EventFate::Recorded {
            warnings: vec!["heart-failure: result status not final".into()],
        }),
    );
    assert_eq!(warned.status, 201);
    assert_eq!(warned.body["issue"][0]["severity"], "warning");
}

/// `recordedDate` is optional: a Condition without it is recorded at its last update or
/// the bundle's time, an information issue saying which; without either it is refused,
/// saying where — also when it has an onset, which may be years before (a pathway started
/// then would have every deadline since overdue at once).
#[test]
fn a_condition_without_recorded_date_takes_another_clinical_time() {
    let condition = |extra: Value| {
        let mut c = json!({
            "resourceType": "Condition", "id": "c1",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]},
            "subject": {"reference": "Patient/p1"},
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let in_transaction = |c: Value, timestamp: Option<&str>| {
        let mut b = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": observation(json!({"valueInteger": 1})),
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": c, "request": {"method": "POST", "url": "Condition"}}
            ]
        });
        if let Some(t) = timestamp {
            b["timestamp"] = json!(t);
        }
        b
    };
    let updated = ingest(
        &json(in_transaction(
            condition(json!({
                "onsetDateTime": "2015-06-01",
                "meta": {"lastUpdated": "2024-03-01T10:00:00Z"},
            })),
            None,
        )),
        &ctx(),
    )
    .expect("accepted");
    let diagnosis = updated
        .events
        .iter()
        .find(|e| e.event_type().as_str() == "diagnosis.recorded")
        .expect("a diagnosis");
    assert_eq!(diagnosis.occurred_at, ts("2024-03-01T10:00:00Z"));
    assert_eq!(
        updated.entries[1].issues[0].severity,
        IssueSeverity::Information
    );
    assert!(
        updated.entries[1].issues[0]
            .diagnostics
            .contains("Bundle.entry[1].resource.meta.lastUpdated"),
        "{:?}",
        updated.entries[1].issues
    );
    assert_eq!(
        updated.response()["entry"][1]["response"]["status"],
        "201 Created"
    );
    // An onset alone is not a recording time.
    let refusal = ingest(
        &json(in_transaction(
            condition(json!({"onsetDateTime": "2015-06-01"})),
            None,
        )),
        &ctx(),
    )
    .expect_err("an onset only");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[1].resource.recordedDate")
    );
    assert!(
        refusal.issues[0].diagnostics.contains("onset is not used"),
        "{:?}",
        refusal.issues
    );

    let stamped = ingest(
        &json(in_transaction(
            condition(json!({})),
            Some("2024-03-02T08:00:00Z"),
        )),
        &ctx(),
    )
    .expect("accepted");
    let diagnosis = stamped
        .events
        .iter()
        .find(|e| e.event_type().as_str() == "diagnosis.recorded")
        .expect("a diagnosis");
    assert_eq!(diagnosis.occurred_at, ts("2024-03-02T08:00:00Z"));

    let refusal = ingest(&json(in_transaction(condition(json!({})), None)), &ctx())
        .expect_err("no clinical time");
    assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[1].resource.recordedDate")
    );
    assert!(refusal.issues[0].diagnostics.contains("timestamp"));
    let refusal = ingest(
        &json(in_transaction(condition(json!({})), Some("tomorrow"))),
        &ctx(),
    )
    .expect_err("a bad timestamp");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.timestamp")
    );

    // A year or a month only (an International Patient Summary's "2016-10") stands for
    // no instant: the same stand-ins, an information issue saying so; without one, the
    // refusal names recordedDate and what would have stood in.
    for (partial, timestamp) in [("2016-10", "2024-03-03T09:00:00Z"), ("2016", "2024-03-04")] {
        let recorded = ingest(
            &json(in_transaction(
                condition(json!({"recordedDate": partial})),
                Some(timestamp),
            )),
            &ctx(),
        )
        .expect(partial);
        let diagnosis = recorded
            .events
            .iter()
            .find(|e| e.event_type().as_str() == "diagnosis.recorded")
            .expect("a diagnosis");
        let expected = match timestamp.len() {
            10 => ts("2024-03-03T23:00:00Z"),
            _ => ts(timestamp),
        };
        assert_eq!(diagnosis.occurred_at, expected, "{partial}");
        let issue = &recorded.entries[1].issues[0];
        assert_eq!(issue.severity, IssueSeverity::Information);
        assert_eq!(
            issue.expression.as_deref(),
            Some("Bundle.entry[1].resource.recordedDate")
        );
        assert!(
            issue.diagnostics.contains("a year or a month only")
                && issue.diagnostics.contains("Bundle.timestamp"),
            "{issue:?}"
        );
    }
    let refusal = ingest(
        &json(in_transaction(
            condition(json!({"recordedDate": "2016-10"})),
            None,
        )),
        &ctx(),
    )
    .expect_err("a month and no stand-in");
    assert_eq!(refusal.issues[0].code, IssueType::Value);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[1].resource.recordedDate")
    );
    assert!(
        refusal.issues[0].diagnostics.contains("meta.lastUpdated"),
        "{:?}",
        refusal.issues
    );
}

#[test]
fn transactions_only_post_and_put() {
    let mut bundle = transaction(vec![observation(json!({"valueInteger": 1}))]);
    bundle["entry"][0]["request"]["method"] = json!("DELETE");
    let refusal = to_events(&json(bundle.clone()), &ctx()).expect_err("refused");
    assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[0].request.method")
    );
    bundle["entry"][0]
        .as_object_mut()
        .map(|e| e.remove("request"));
    let refusal = to_events(&json(bundle), &ctx()).expect_err("refused");
    assert_eq!(refusal.issues[0].code, IssueType::Required);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[0].request")
    );
}

#[test]
fn bundle_types() {
    for (kind, status) in [
        ("history", HttpStatus::UnprocessableEntity),
        ("batch-response", HttpStatus::UnprocessableEntity),
        ("whatever", HttpStatus::BadRequest),
    ] {
        let refusal = to_events(
            &json(json!({"resourceType": "Bundle", "type": kind})),
            &ctx(),
        )
        .expect_err("refused");
        assert_eq!(refusal.status, status, "{kind}");
        assert_eq!(refusal.issues[0].expression.as_deref(), Some("Bundle.type"));
    }
    // A searchset's include entries are context: they resolve references, nothing more.
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "https://fhir.example.org/r4/Observation/o1",
         "resource": observation(json!({"id": "o1", "valueInteger": 1, "subject": {"reference": "Patient/p9"}})),
         "search": {"mode": "match"}},
        {"fullUrl": "https://fhir.example.org/r4/Patient/p9",
         "resource": {"resourceType": "Patient", "id": "p9",
                      "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7.99", "value": "IPP-9"}]},
         "search": {"mode": "include"}}
    ]});
    let ingest = ingest(&json(bundle), &ctx()).expect("mapped");
    assert_eq!(ingest.events.len(), 1);
    assert_eq!(
        ingest.events[0].subject,
        local("1.2.250.1.71.4.2.7.99", "IPP-9")
    );
    assert!(ingest.issues.is_empty(), "{:?}", ingest.issues);
}

#[test]
fn xml_and_other_media_types_get_415() {
    for ct in [
        "application/fhir+xml",
        "application/xml",
        "text/xml",
        "text/plain",
    ] {
        let refusal = check_content_type(Some(ct)).expect_err("refused");
        assert_eq!(refusal.status.code(), 415, "{ct}");
        assert_eq!(refusal.to_json()["issue"][0]["code"], "not-supported");
    }
    assert!(check_content_type(Some("application/fhir+json; charset=utf-8")).is_ok());
    // A body that is XML is never parsed, whatever the declared type.
    let refusal = to_events(
        b"<?xml version=\"1.0\"?><Observation xmlns=\"http://hl7.org/fhir\"/>",
        &ctx(),
    )
    .expect_err("xml");
    assert_eq!(refusal.status, HttpStatus::UnsupportedMediaType);
}

#[test]
fn bodies_that_are_not_one_fhir_resource() {
    for (body, status, code) in [
        (&b"[1, 2]"[..], 400, "structure"),
        (b"{\"id\": \"x\"}", 400, "required"),
        (b"{\"resourceType\": \"Observaton\"}", 400, "code-invalid"),
        (b"{\"resourceType\": \"Observation\",", 400, "structure"),
        (b"", 400, "structure"),
    ] {
        let refusal = to_events(body, &ctx()).expect_err("refused");
        assert_eq!(refusal.status.code(), status);
        assert_eq!(refusal.to_json()["issue"][0]["code"], code);
    }
    let small = ctx().max_body_bytes(10);
    let refusal = to_events(&json(observation(json!({}))), &small).expect_err("too large");
    assert_eq!(refusal.status.code(), 413);
}

// ---- patients -------------------------------------------------------------------

fn patient(qualified: bool, identifiers: Value) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "id": "pat",
        "identifier": identifiers,
        "name": [{"family": "DUPONT", "given": ["Jean"]}]
    });
    if qualified {
        p["extension"] = json!([{
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
            "extension": [{"url": "identityStatus", "valueCoding": {
                "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                "code": "VALI"}}]
        }]);
    }
    p
}

fn with_contained_patient(p: Value) -> Value {
    observation(json!({"contained": [p], "subject": {"reference": "#pat"}, "valueInteger": 1}))
}

const NIR: &str = "180027512345678";
const IPP_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.7.1234";

fn ins_and_ipp() -> Value {
    json!([
        {"system": IPP_SYSTEM, "value": "IPP-42",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]}},
        {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}
    ])
}

#[test]
fn a_qualified_ins_names_the_patient() {
    let events = to_events(
        &json(with_contained_patient(patient(true, ins_and_ipp()))),
        &ctx(),
    )
    .expect("mapped");
    assert_eq!(events[0].subject, ins(OID_INS_NIR, NIR));
}

#[test]
fn a_qualified_ins_with_a_local_identifier_links_them() {
    // The local identifier's key resolves to the INS's from then on: the link comes
    // first, at the resource's clinical time; the same body gives the same ids.
    let body = json(with_contained_patient(patient(true, ins_and_ipp())));
    let events = to_events(&body, &ctx()).expect("mapped");
    assert_eq!(events.len(), 2, "{events:?}");
    let EventData::IdentityLinked(link) = &events[0].data else {
        panic!("{:?}", events[0]);
    };
    assert_eq!(events[0].subject, ins(OID_INS_NIR, NIR));
    assert_eq!(
        link.local_subject,
        local("1.2.250.1.71.4.2.7.1234", "IPP-42")
    );
    assert_eq!(events[0].occurred_at, events[1].occurred_at);
    assert_eq!(events[1].subject, ins(OID_INS_NIR, NIR));
    assert_eq!(to_events(&body, &ctx()).expect("mapped"), events);
    assert_ne!(events[0].id, events[1].id);
    // Not qualified, or no local identifier: nothing to link.
    for p in [
        patient(false, ins_and_ipp()),
        patient(
            true,
            json!([{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}]),
        ),
    ] {
        let events = to_events(&json(with_contained_patient(p)), &ctx()).expect("mapped");
        assert_eq!(events.len(), 1);
        assert!(!matches!(events[0].data, EventData::IdentityLinked(_)));
    }
}

/// A Patient sent alone — the identity update that brings the qualification — links its
/// qualified INS and local identifier at its `meta.lastUpdated`; without a time it says
/// why it linked nothing.
#[test]
fn a_lone_patient_with_a_qualified_ins_and_a_local_identifier_links_them() {
    let mut p = patient(true, ins_and_ipp());
    p["meta"] = json!({"lastUpdated": "2026-12-08T09:30:00+01:00"});
    let events = to_events(&json(p.clone()), &ctx()).expect("mapped");
    let [linked] = events.as_slice() else {
        panic!("one link: {events:?}");
    };
    let EventData::IdentityLinked(link) = &linked.data else {
        panic!("{linked:?}");
    };
    assert_eq!(linked.subject, ins(OID_INS_NIR, NIR));
    assert_eq!(
        link.local_subject,
        local("1.2.250.1.71.4.2.7.1234", "IPP-42")
    );
    assert_eq!(linked.occurred_at.to_string(), "2026-12-08T08:30:00Z");
    assert_eq!(to_events(&json(p.clone()), &ctx()).expect("mapped"), events);
    p.as_object_mut().expect("object").remove("meta");
    let ingest = ingest(&json(p), &ctx()).expect("mapped");
    assert!(ingest.events.is_empty());
    assert!(
        ingest
            .issues
            .iter()
            .any(|i| i.diagnostics.contains("needs a time")),
        "{:?}",
        ingest.issues
    );
}

#[test]
fn an_unqualified_ins_is_never_used() {
    let events = to_events(
        &json(with_contained_patient(patient(false, ins_and_ipp()))),
        &ctx(),
    )
    .expect("mapped");
    assert_eq!(
        events[0].subject,
        local("1.2.250.1.71.4.2.7.1234", "IPP-42")
    );
}

#[test]
fn test_ins_is_refused_unless_configured() {
    let ids = json!([{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": NIR}]);
    let body = json(with_contained_patient(patient(true, ids)));
    let refusal = to_events(&body, &ctx()).expect_err("refused");
    assert_eq!(refusal.status, HttpStatus::UnprocessableEntity);
    assert_eq!(refusal.issues[0].code, IssueType::BusinessRule);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.contained[0].identifier[0].system")
    );
    let events = to_events(&body, &ctx().allow_test_ins(true)).expect("allowed");
    assert_eq!(events[0].subject, ins(OID_INS_NIR_TEST, NIR));
    // By logical reference too.
    let logical = observation(json!({"valueInteger": 1, "subject": {"identifier": {
        "system": "urn:oid:1.2.250.1.213.1.4.10", "value": NIR}}}));
    assert!(to_events(&json(logical), &ctx()).is_err());
}

#[test]
fn preferred_systems_win_over_typed_identifiers() {
    let ids = json!([
        {"system": "http://hospital.example/mrn", "value": "MRN-1",
         "type": {"coding": [{"code": "MR"}]}},
        {"system": IPP_SYSTEM, "value": "IPP-42"}
    ]);
    let body = json(with_contained_patient(patient(false, ids)));
    let events = to_events(&body, &ctx()).expect("mapped");
    assert_eq!(
        events[0].subject,
        local("http://hospital.example/mrn", "MRN-1")
    );
    let events = to_events(&body, &ctx().prefer_identifier_system(IPP_SYSTEM)).expect("mapped");
    assert_eq!(
        events[0].subject,
        local("1.2.250.1.71.4.2.7.1234", "IPP-42")
    );
}

#[test]
fn logical_and_remote_references() {
    let by_ins = observation(json!({"valueInteger": 1, "subject": {"identifier": {
        "system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}}}));
    assert_eq!(
        to_events(&json(by_ins), &ctx()).expect("mapped")[0].subject,
        ins(OID_INS_NIR, NIR)
    );
    let remote = observation(json!({"valueInteger": 1, "subject": {
        "reference": "https://other.example/fhir/Patient/77/_history/2"}}));
    assert_eq!(
        to_events(&json(remote), &ctx()).expect("mapped")[0].subject,
        local("https://other.example/fhir/Patient", "77")
    );
    let group = observation(json!({"valueInteger": 1, "subject": {"reference": "Group/g1"}}));
    let refusal = to_events(&json(group), &ctx()).expect_err("not a patient");
    assert_eq!(refusal.issues[0].code, IssueType::NotSupported);
    let key = on_server("p1");
    let by_key = observation(json!({"valueInteger": 1, "subject": {"identifier": {
        "system": "urn:parcours:subject", "value": key}}}));
    assert_eq!(
        to_events(&json(by_key), &ctx()).expect("mapped")[0].subject,
        key
    );
    // The same written as a conditional reference (a FHIR server's rewriting of the
    // logical one parcours sends): the key itself, not an identifier named by it.
    let conditional = observation(json!({"valueInteger": 1, "subject": {
        "reference": format!("Patient?identifier=urn:parcours:subject%7C{key}")}}));
    assert_eq!(
        to_events(&json(conditional), &ctx()).expect("mapped")[0].subject,
        key
    );
    let not_a_key = observation(json!({"valueInteger": 1, "subject": {
        "reference": "Patient?identifier=urn:parcours:subject|IPP-9"}}));
    let refusal = to_events(&json(not_a_key), &ctx()).expect_err("not a key");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Observation.subject.reference")
    );
}

#[test]
fn refusals_never_echo_identifiers_or_names() {
    let ids = json!([{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "DUPONT JEAN 1234"}]);
    let bodies = [
        with_contained_patient(patient(true, ids)),
        with_contained_patient(json!({"resourceType": "Patient", "id": "pat",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": 180027512345678u64}]})),
        with_contained_patient(json!({"resourceType": "Patient", "id": "pat",
            "identifier": [{"value": "1800275123456"}], "name": [{"family": "DUPONT"}]})),
        observation(json!({"valueString": 42, "note": "DUPONT"})),
    ];
    for body in bodies {
        let refusal = to_events(&json(body), &ctx()).expect_err("refused");
        let text = format!("{refusal} {}", refusal.to_json());
        for secret in ["DUPONT", "JEAN", "1800275", "1234"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

// ---- encounters -----------------------------------------------------------------

fn encounter(extra: Value) -> Value {
    let mut e = json!({
        "resourceType": "Encounter",
        "id": "enc-1",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1.99", "value": "V123",
                        "type": {"coding": [{"code": "VN"}]}}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-09T15:30:00+01:00"}
    });
    if let (Some(o), Some(v)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in v {
            o.insert(k.clone(), v.clone());
        }
    }
    e
}

fn discharge(extra: Value) -> data::EncounterDischarged {
    let events = to_events(&json(encounter(extra)), &ctx()).expect("mapped");
    match events.into_iter().next().map(|e| e.data) {
        Some(EventData::EncounterDischarged(d)) => d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn discharge_dispositions() {
    let hl7 = "http://terminology.hl7.org/CodeSystem/discharge-disposition";
    // FHIR STU3's system for the same codes.
    let stu3 = "http://hl7.org/fhir/discharge-disposition";
    let fr = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-circonstances-sortie";
    // SNOMED CT's discharge procedures (the R4 example Encounter-f001 writes 306689006).
    let sct = "http://snomed.info/sct";
    // NUBC patient discharge status, HL7 v2 table 0112's list (what Synthea writes).
    let nubc = "http://www.nubc.org/patient-discharge";
    for (system, code, destination) in [
        (hl7, "home", "home"),
        (hl7, "alt-home", "home"),
        (hl7, "aadvice", "home"),
        (hl7, "snf", "nursing-home"),
        (hl7, "long", "nursing-home"),
        (hl7, "other-hcf", "transfer"),
        (hl7, "hosp", "transfer"),
        (hl7, "rehab", "transfer"),
        (hl7, "psy", "transfer"),
        (hl7, "exp", "deceased"),
        (hl7, "oth", "other"),
        (hl7, "unknown-code", "other"),
        (fr, "B", "transfer"),
        // How the stay ended (a regular discharge), not where the patient went.
        (fr, "R", "unknown"),
        (stu3, "home", "home"),
        (stu3, "exp", "deceased"),
        (sct, "306689006", "home"),
        (sct, "306691003", "nursing-home"),
        (sct, "306706006", "transfer"),
        (sct, "19712007", "transfer"),
        (sct, "305398007", "deceased"),
        (sct, "home", "other"),
        (nubc, "01", "home"),
        (nubc, "03", "nursing-home"),
        (nubc, "20", "deceased"),
        (nubc, "02", "transfer"),
    ] {
        let d = discharge(json!({"hospitalization": {"dischargeDisposition": {
            "coding": [{"system": system, "code": code}]}}}));
        assert_eq!(d.destination, destination, "{system} {code}");
    }
    // No disposition at all (Synthea's inpatient stays): not stated.
    assert_eq!(discharge(json!({})).destination, "unknown");
}

#[test]
fn discharge_fields() {
    let d = discharge(json!({
        "contained": [
            {"resourceType": "Condition", "id": "dp", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "i50.1"}]}},
            {"resourceType": "Condition", "id": "da", "subject": {"reference": "Patient/p1"},
             "verificationStatus": {"coding": [{"code": "refuted"}]},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J18.9"}]}},
            {"resourceType": "Organization", "id": "org",
             "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "750712184"}]}
        ],
        "diagnosis": [
            {"condition": {"reference": "#da"}, "rank": 1},
            {"condition": {"reference": "#dp"}, "rank": 2},
            {"condition": {"reference": "Condition/elsewhere", "display": "I10 HTA"}}
        ],
        "reasonCode": [
            // French PMSI extracts write CIM-10 codes without the dot: written with it.
            {"coding": [{"system": "https://smt.esante.gouv.fr/terminologie-cim-10", "code": "E119"}]},
            {"coding": [{"system": "http://snomed.info/sct", "code": "84114007"}]},
            {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I501"}]},
            {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "I11.0"}]}
        ],
        "serviceProvider": {"reference": "#org"}
    }));
    assert_eq!(d.encounter_id, "V123");
    assert_eq!(d.class, "inpatient");
    assert_eq!(d.diagnoses, ["I50.1", "E11.9", "84114007", "I11.0"]);
    assert_eq!(d.facility.as_deref(), Some("750712184"));
    assert_eq!(d.admitted_at, Some(ts("2024-03-01T09:00:00Z")));
}

#[test]
fn stays_through_their_lifecycle() {
    let kinds = |extra: Value| -> Vec<(String, jiff::Timestamp)> {
        to_events(&json(encounter(extra)), &ctx())
            .expect("mapped")
            .into_iter()
            .map(|e| (e.event_type().as_str().to_owned(), e.occurred_at))
            .collect()
    };
    let admitted =
        kinds(json!({"status": "in-progress", "period": {"start": "2024-03-01T10:00:00+01:00"}}));
    assert_eq!(
        admitted,
        [("encounter.admitted".to_owned(), ts("2024-03-01T09:00:00Z"))]
    );
    // Back in progress after a discharge: the discharge was cancelled (ADT^A13).
    let reopened = kinds(json!({
        "status": "in-progress",
        "statusHistory": [{"status": "finished", "period": {"start": "2024-03-09T15:30:00+01:00"}}],
        "meta": {"lastUpdated": "2024-03-09T18:00:00+01:00"}
    }));
    assert_eq!(
        reopened,
        [(
            "encounter.discharge_cancelled".to_owned(),
            ts("2024-03-09T17:00:00Z")
        )]
    );
    // A finished stay entered in error: its discharge and its admission are withdrawn.
    let withdrawn = kinds(json!({"status": "entered-in-error"}));
    assert_eq!(
        withdrawn,
        [
            (
                "encounter.discharge_cancelled".to_owned(),
                ts("2024-03-09T14:30:00Z")
            ),
            (
                "encounter.admission_cancelled".to_owned(),
                ts("2024-03-09T14:30:00Z")
            ),
        ]
    );
    let cancelled =
        kinds(json!({"status": "cancelled", "period": {"start": "2024-03-01T10:00:00+01:00"}}));
    assert_eq!(
        cancelled,
        [(
            "encounter.admission_cancelled".to_owned(),
            ts("2024-03-01T09:00:00Z")
        )]
    );
    let planned = ingest(&json(encounter(json!({"status": "planned"}))), &ctx()).expect("ok");
    assert!(planned.events.is_empty());
    let emergency = discharge(json!({"class": {"code": "EMER"}}));
    assert_eq!(emergency.class, "emergency");
    let refusal = to_events(&json(encounter(json!({"class": {"code": "XYZ"}}))), &ctx())
        .expect_err("unknown class");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Encounter.class")
    );
    let mut no_end = encounter(json!({}));
    no_end["period"] = json!({"start": "2024-03-01"});
    let refusal = to_events(&json(no_end), &ctx()).expect_err("no end");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Encounter.period.end")
    );
}

#[test]
fn visits_and_their_kinds() {
    for (coding, kind) in [
        (
            json!({"system": "urn:parcours:encounter-kind", "code": "foot-exam"}),
            "foot-exam",
        ),
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "124"}),
            "gp-visit",
        ),
        (
            json!({"system": "http://snomed.info/sct", "code": "394579002"}),
            "cardiology-visit",
        ),
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "217"}),
            "eye-exam",
        ),
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "358"}),
            "nurse-visit",
        ),
        (
            json!({"system": "http://snomed.info/sct", "code": "185349003"}),
            "other",
        ),
    ] {
        let body =
            encounter(json!({"class": {"code": "AMB"}, "serviceType": {"coding": [coding]}}));
        let events = to_events(&json(body), &ctx()).expect("mapped");
        assert_eq!(events[0].occurred_at, ts("2024-03-09T14:30:00Z"));
        match &events[0].data {
            EventData::EncounterCompleted(c) => {
                assert_eq!(c.kind, kind);
                assert_eq!(c.encounter_id, "V123");
            }
            other => panic!("{other:?}"),
        }
    }
}

// ---- tasks and alerts --------------------------------------------------------------

const TASK_ID: &str = "0191f3a2-7c4e-7d11-9a55-3f8e2c1b0a99";

fn task(status: &str, extra: Value) -> Value {
    let mut t = json!({
        "resourceType": "Task",
        "id": "srv-42",
        "identifier": [{"system": "urn:parcours:task", "value": TASK_ID}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": "urn:parcours:task-code", "code": "gp-visit-7d"}]},
        "for": {"identifier": {"system": "urn:parcours:subject", "value": on_server("p1")}},
        "lastModified": "2024-03-12T11:00:00+01:00"
    });
    if let (Some(o), Some(v)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in v {
            o.insert(k.clone(), v.clone());
        }
    }
    t
}

#[test]
fn task_outcomes() {
    let outcome = |status: &str, extra: Value| {
        let events = to_events(&json(task(status, extra)), &ctx()).expect("mapped");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].subject, on_server("p1"));
        (events[0].data.clone(), events[0].occurred_at)
    };
    let id = TASK_ID.to_owned();
    let code = "gp-visit-7d".to_owned();
    assert_eq!(
        outcome(
            "completed",
            json!({"executionPeriod": {"end": "2024-03-11T17:00:00+01:00"}})
        ),
        (
            EventData::TaskCompleted(data::TaskCompleted {
                task_id: id.clone(),
                code: code.clone()
            }),
            ts("2024-03-11T16:00:00Z")
        )
    );
    assert_eq!(
        outcome(
            "cancelled",
            json!({"statusReason": {"coding": [
            {"system": "urn:parcours:task-status-reason", "code": "not-needed"}]}})
        )
        .0,
        EventData::TaskNotNeeded(data::TaskNotNeeded {
            task_id: id.clone(),
            code: code.clone()
        })
    );
    assert_eq!(
        outcome(
            "cancelled",
            json!({"statusReason": {"text": "Non nécessaire"}})
        )
        .0,
        EventData::TaskNotNeeded(data::TaskNotNeeded {
            task_id: id.clone(),
            code: code.clone()
        })
    );
    for (status, extra) in [
        (
            "cancelled",
            json!({"statusReason": {"text": "patient injoignable"}}),
        ),
        ("cancelled", json!({})),
        ("failed", json!({})),
        ("rejected", json!({})),
    ] {
        assert_eq!(
            outcome(status, extra).0,
            EventData::TaskCouldNotBeDone(data::TaskCouldNotBeDone {
                task_id: id.clone(),
                code: code.clone()
            }),
            "{status}"
        );
    }
    // The Task id may be the task id itself.
    let mut by_id = task("completed", json!({"id": TASK_ID}));
    by_id.as_object_mut().map(|t| t.remove("identifier"));
    assert!(to_events(&json(by_id), &ctx()).is_ok());
    let mut anonymous = task("completed", json!({}));
    anonymous.as_object_mut().map(|t| t.remove("identifier"));
    let refusal = to_events(&json(anonymous), &ctx()).expect_err("no task id");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Task.identifier")
    );
    let refusal = to_events(&json(task("completed", json!({"intent": null}))), &ctx())
        .expect_err("no intent");
    assert_eq!(refusal.status, HttpStatus::BadRequest);
}

#[test]
fn handoff_answers() {
    let handoff = |status: &str| {
        task(
            status,
            json!({
                "identifier": [{"system": "urn:parcours:handoff", "value": TASK_ID}],
                "code": {"coding": [{"system": "urn:parcours:task-code", "code": "handoff"},
                                     {"system": "urn:parcours:handoff-code", "code": "hospital-to-gp"}]}
            }),
        )
    };
    let events = to_events(&json(handoff("accepted")), &ctx()).expect("mapped");
    assert_eq!(
        events[0].data,
        EventData::HandoffAccepted(data::HandoffAccepted {
            handoff_id: TASK_ID.into(),
            code: "hospital-to-gp".into()
        })
    );
    let events = to_events(&json(handoff("rejected")), &ctx()).expect("mapped");
    assert_eq!(events[0].event_type().as_str(), "handoff.declined");
    assert!(
        to_events(&json(handoff("requested")), &ctx())
            .expect("ok")
            .is_empty()
    );
}

#[test]
fn alert_acknowledgements() {
    let ack = json!({
        "resourceType": "Communication",
        "identifier": [{"system": "urn:parcours:alert", "value": TASK_ID}],
        "status": "completed",
        "topic": {"coding": [{"system": "urn:parcours:alert-code", "code": "weight-gain"}]},
        "subject": {"identifier": {"system": "urn:parcours:subject", "value": on_server("p1")}},
        "received": "2024-03-12T11:00:00+01:00"
    });
    let events = to_events(&json(ack), &ctx()).expect("mapped");
    assert_eq!(
        events[0].data,
        EventData::AlertAcknowledged(data::AlertAcknowledged {
            alert_id: TASK_ID.into(),
            code: "weight-gain".into()
        })
    );
    assert_eq!(events[0].occurred_at, ts("2024-03-12T10:00:00Z"));
}

#[test]
fn conditions_and_deaths() {
    let condition = json!({
        "resourceType": "Condition", "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"},
                            {"system": "http://hl7.org/fhir/sid/icd-10-fr", "code": "e119"}]},
        "subject": {"reference": "Patient/p1"},
        "recordedDate": "2024-01-15"
    });
    let events = to_events(&json(condition), &ctx()).expect("mapped");
    assert_eq!(
        events[0].data,
        EventData::DiagnosisRecorded(data::DiagnosisRecorded {
            code: "E11.9".into(),
            system: "icd-10".into()
        })
    );
    assert_eq!(events[0].occurred_at, ts("2024-01-14T23:00:00Z"));

    let dead = json!({"resourceType": "Patient", "id": "p1", "deceasedDateTime": "2024-02-01T03:00:00+01:00"});
    let events = to_events(&json(dead), &ctx()).expect("mapped");
    assert_eq!(events[0].event_type().as_str(), "patient.deceased");
    assert_eq!(events[0].subject, on_server("p1"));
    let no_date = json!({"resourceType": "Patient", "id": "p1", "deceasedBoolean": true});
    assert!(to_events(&json(no_date), &ctx()).is_err());
}

// ---- ids ------------------------------------------------------------------------

#[test]
fn event_ids_follow_versions_and_content() {
    let id = |body: Value, ctx: &parcours_fhir::Context| {
        to_events(&json(body), ctx).expect("mapped")[0].id.clone()
    };
    let base = observation(json!({"valueInteger": 1}));
    let a = id(base.clone(), &ctx());
    // Same content (keys in another order, meta changed): same id.
    let mut reordered = serde_json::Map::new();
    if let Some(o) = base.as_object() {
        for (k, v) in o.iter().rev() {
            reordered.insert(k.clone(), v.clone());
        }
    }
    reordered.insert(
        "meta".into(),
        json!({"lastUpdated": "2030-01-01T00:00:00Z"}),
    );
    assert_eq!(a, id(Value::Object(reordered), &ctx()));
    // Other content: another id.
    assert_ne!(a, id(observation(json!({"valueInteger": 2})), &ctx()));
    // With a versionId, the version names the content.
    let v1 = id(
        observation(json!({"valueInteger": 1, "meta": {"versionId": "1"}})),
        &ctx(),
    );
    let v1b = id(
        observation(json!({"valueInteger": 9, "meta": {"versionId": "1"}})),
        &ctx(),
    );
    let v2 = id(
        observation(json!({"valueInteger": 1, "meta": {"versionId": "2"}})),
        &ctx(),
    );
    assert_eq!(v1, v1b);
    assert_ne!(v1, v2);
    // Another tenant or source: another id.
    let other_source = parcours_fhir::Context::new(TENANT, "labo-sud", BASE, key());
    assert_ne!(a, id(base.clone(), &other_source));
    let other_tenant = parcours_fhir::Context::new("cpts-b", "chu-test", BASE, key());
    assert_ne!(a, id(base, &other_tenant));
}

/// What FHIR STU3-era exports write in bundles labelled R4 (older Synthea: an encounter
/// class as a bare word, a condition's statuses as bare codes, `assertedDate`) is read;
/// a class word parcours does not know is still refused, saying which it knows.
#[test]
fn stu3_era_encounter_classes_and_condition_statuses_are_read() {
    let patient = json!({"reference": "Patient/p1"});
    let encounter = |id: &str, class: Value| {
        json!({
            "resourceType": "Encounter", "id": id, "status": "finished", "class": class,
            "subject": patient, "period": {"start": "2024-03-01T08:00:00+01:00", "end": "2024-03-04T10:00:00+01:00"}
        })
    };
    let condition = |id: &str, verification: &str| {
        json!({
            "resourceType": "Condition", "id": id, "subject": patient,
            "clinicalStatus": "active", "verificationStatus": verification,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "onsetDateTime": "2015-06-01T00:00:00+02:00",
            "assertedDate": "2024-03-02T09:30:00+01:00"
        })
    };
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": encounter("e1", json!({"code": "ambulatory"})), "request": {"method": "POST", "url": "Encounter"}},
            {"resource": encounter("e2", json!({"code": "inpatient"})), "request": {"method": "POST", "url": "Encounter"}},
            {"resource": encounter("e3", json!({"code": "EMERGENCY"})), "request": {"method": "POST", "url": "Encounter"}},
            {"resource": encounter("e4", json!({"code": "amb"})), "request": {"method": "POST", "url": "Encounter"}},
            {"resource": condition("c1", "confirmed"), "request": {"method": "POST", "url": "Condition"}},
            {"resource": condition("c2", "refuted"), "request": {"method": "POST", "url": "Condition"}}
        ]
    });
    let got = to_events(&json(bundle), &ctx()).expect("mapped");
    let kinds: Vec<(String, jiff::Timestamp)> = got
        .iter()
        .map(|e| match &e.data {
            EventData::EncounterDischarged(d) => (format!("discharged {}", d.class), e.occurred_at),
            _ => (e.event_type().as_str().to_owned(), e.occurred_at),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("diagnosis.recorded".to_owned(), ts("2024-03-02T08:30:00Z")),
            ("encounter.completed".to_owned(), ts("2024-03-04T09:00:00Z")),
            (
                "discharged inpatient".to_owned(),
                ts("2024-03-04T09:00:00Z")
            ),
            (
                "discharged emergency".to_owned(),
                ts("2024-03-04T09:00:00Z")
            ),
            ("encounter.completed".to_owned(), ts("2024-03-04T09:00:00Z")),
        ],
        "the refuted condition gives nothing; the confirmed one is recorded at assertedDate, not its onset"
    );
    // A word parcours does not know, or a known word under another system: refused.
    for class in [
        json!({"code": "snf"}),
        json!({"system": "http://example.org/classes", "code": "inpatient"}),
    ] {
        let refusal =
            to_events(&json(encounter("e5", class.clone())), &ctx()).expect_err("unknown class");
        assert_eq!(refusal.status, HttpStatus::UnprocessableEntity, "{class}");
        assert!(
            refusal.issues[0]
                .diagnostics
                .contains("without a system also inpatient"),
            "{}",
            refusal.issues[0].diagnostics
        );
    }
}

/// A report's results may leave their patient and time to the report (the R4 example
/// `Bundle-report`): an observation without `subject` listed in a DiagnosticReport's
/// `result` is the report's patient's, read on the report (its contained Patient);
/// one listed nowhere still needs its own.
#[test]
fn results_without_a_subject_take_their_reports() {
    let result = |id: &str| {
        json!({"fullUrl": format!("https://lab.example.org/fhir/Observation/{id}"), "resource": {
            "resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "valueQuantity": {"value": 7.1, "unit": "%"}
        }})
    };
    let bundle = |listed: &[&str]| {
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "https://lab.example.org/fhir/DiagnosticReport/r1", "resource": {
                "resourceType": "DiagnosticReport", "id": "r1", "status": "final",
                "contained": [{"resourceType": "Patient", "id": "pat",
                               "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7", "value": "IPP-9"}]}],
                "subject": {"reference": "#pat"},
                "effectiveDateTime": "2024-05-02T08:00:00+02:00",
                "result": listed.iter().map(|r| json!({"reference": format!("Observation/{r}")})).collect::<Vec<_>>()
            }},
            result("o1"),
            result("o2")
        ]})
    };
    let got = to_events(&json(bundle(&["o1", "o2"])), &ctx()).expect("mapped");
    assert_eq!(got.len(), 2);
    for e in &got {
        // Systems lose their `urn:oid:` prefix.
        assert_eq!(e.subject, local("1.2.250.1.71.4.2.7", "IPP-9"));
        assert_eq!(e.occurred_at, ts("2024-05-02T06:00:00Z"));
    }
    let refusal = to_events(&json(bundle(&["o1"])), &ctx()).expect_err("o2 has no patient");
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Bundle.entry[2].resource.subject")
    );
}
