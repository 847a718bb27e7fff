//! Patient merges: `Patient.link` of type `replaced-by` / `replaces` → `identity.merged`
//! (subject = the survivor's key, `merged_subject` = the retired key).

mod common;

use common::*;
use parcours_core::{Event, EventData};
use parcours_fhir::{HttpStatus, IssueSeverity, IssueType, ingest, to_events};
use parcours_identity::OID_INS_NIR;
use serde_json::{Value, json};

const NIR: &str = "180027512345678";
const IPP_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.7.1234";

/// A lone Patient `id` (on the source's server) with these links.
fn patient(id: &str, links: Value) -> Value {
    json!({
        "resourceType": "Patient", "id": id, "active": false,
        "meta": {"lastUpdated": "2024-06-01T10:00:00+02:00"},
        "name": [{"family": "DUPONT", "given": ["Jean"]}],
        "link": links
    })
}

/// The (survivor, retired) keys of the merges among `events`.
fn merges(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::IdentityMerged(m) => Some((e.subject.clone(), m.merged_subject.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn replaced_by_retires_this_patient_into_the_other() {
    let body = patient(
        "a",
        json!([{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]),
    );
    let events = to_events(&json(body.clone()), &ctx()).expect("mapped");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_type().as_str(), "identity.merged");
    assert_eq!(
        merges(&events),
        vec![(on_server("b"), on_server("a"))],
        "subject = the survivor (link.other), merged_subject = this patient"
    );
    assert_eq!(events[0].occurred_at, ts("2024-06-01T08:00:00Z"));
    // A resend gives the same event (same id): the engine answers it as a duplicate.
    assert_eq!(to_events(&json(body), &ctx()).expect("mapped"), events);
}

#[test]
fn replaces_retires_the_other_into_this_patient() {
    let body = patient(
        "b",
        json!([{"other": {"reference": "Patient/a"}, "type": "replaces"}]),
    );
    let events = to_events(&json(body), &ctx()).expect("mapped");
    assert_eq!(merges(&events), vec![(on_server("b"), on_server("a"))]);
}

#[test]
fn link_other_is_keyed_as_any_patient_reference() {
    // Its identifier (an INS names the patient by the INS).
    let by_ins = patient(
        "a",
        json!([{"type": "replaced-by", "other": {"identifier": {
            "system": "urn:oid:1.2.250.1.213.1.4.8", "value": NIR}}}]),
    );
    let events = to_events(&json(by_ins), &ctx()).expect("mapped");
    assert_eq!(
        merges(&events),
        vec![(ins(OID_INS_NIR, NIR), on_server("a"))]
    );
    // An identifier given with a server reference names it better than the server id.
    let both = patient(
        "a",
        json!([{"type": "replaced-by", "other": {"reference": "Patient/b",
            "identifier": {"system": IPP_SYSTEM, "value": "IPP-7"}}}]),
    );
    let events = to_events(&json(both), &ctx()).expect("mapped");
    assert_eq!(
        merges(&events),
        vec![(local("1.2.250.1.71.4.2.7.1234", "IPP-7"), on_server("a"))]
    );
    // A bundle entry: the identifier chosen on that Patient; this one keyed by its IPP.
    let bundle = json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:7b0c5a36-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient",
                "meta": {"lastUpdated": "2024-06-01T10:00:00+02:00"},
                "identifier": [{"system": IPP_SYSTEM, "value": "IPP-1"}],
                "link": [{"type": "replaced-by",
                          "other": {"reference": "urn:uuid:7b0c5a36-0000-4000-8000-000000000002"}}]}},
            {"fullUrl": "urn:uuid:7b0c5a36-0000-4000-8000-000000000002",
             "resource": {"resourceType": "Patient",
                "identifier": [{"system": IPP_SYSTEM, "value": "IPP-2"}]}}
        ]
    });
    let events = to_events(&json(bundle), &ctx()).expect("mapped");
    assert_eq!(
        merges(&events),
        vec![(
            local("1.2.250.1.71.4.2.7.1234", "IPP-2"),
            local("1.2.250.1.71.4.2.7.1234", "IPP-1")
        )]
    );
    // A contained Patient.
    let mut contained = patient(
        "a",
        json!([{"type": "replaced-by", "other": {"reference": "#old"}}]),
    );
    contained["contained"] = json!([{"resourceType": "Patient", "id": "old",
        "identifier": [{"system": IPP_SYSTEM, "value": "IPP-9"}]}]);
    let events = to_events(&json(contained), &ctx()).expect("mapped");
    assert_eq!(
        merges(&events),
        vec![(local("1.2.250.1.71.4.2.7.1234", "IPP-9"), on_server("a"))]
    );
}

#[test]
fn refer_seealso_and_self_links_merge_nothing() {
    let body = patient(
        "a",
        json!([
            {"other": {"reference": "Patient/b"}, "type": "seealso"},
            {"other": {"reference": "RelatedPerson/r"}, "type": "refer"},
            {"other": {"reference": "Patient/a"}, "type": "replaced-by"}
        ]),
    );
    let answer = ingest(&json(body), &ctx()).expect("accepted, not refused");
    assert!(answer.events.is_empty(), "{:?}", answer.events);
    let at: Vec<(IssueSeverity, Option<&str>)> = answer
        .issues
        .iter()
        .map(|i| (i.severity, i.expression.as_deref()))
        .collect();
    assert_eq!(
        at,
        vec![
            (IssueSeverity::Information, Some("Patient.link[0].type")),
            (IssueSeverity::Information, Some("Patient.link[1].type")),
            (IssueSeverity::Information, Some("Patient.link[2].other")),
        ]
    );
}

#[test]
fn a_link_that_cannot_be_keyed_is_refused_where_it_is() {
    let cases = [
        (
            json!([{"type": "replaced-by"}]),
            "Patient.link[0].other",
            IssueType::Required,
        ),
        (
            json!([{"type": "seealso", "other": {"reference": "Patient/b"}},
                   {"type": "replaced-by", "other": {"reference": "urn:uuid:7b0c5a36-0000-4000-8000-00000000000f"}}]),
            "Patient.link[1].other.reference",
            IssueType::NotFound,
        ),
        (
            json!([{"type": "replaces", "other": {"reference": "Group/g"}}]),
            "Patient.link[0].other.reference",
            IssueType::NotSupported,
        ),
        (
            json!([{"type": "replaced-by", "other": {"identifier": {"value": "DUPONT-1234"}}}]),
            "Patient.link[0].other.identifier.system",
            IssueType::Required,
        ),
        (
            json!([{"other": {"reference": "Patient/b"}}]),
            "Patient.link[0].type",
            IssueType::Required,
        ),
        (
            json!([{"type": "merged-into", "other": {"reference": "Patient/b"}}]),
            "Patient.link[0].type",
            IssueType::CodeInvalid,
        ),
        // Two survivors for one retired record.
        (
            json!([{"type": "replaced-by", "other": {"reference": "Patient/b"}},
                   {"type": "replaced-by", "other": {"reference": "Patient/c"}}]),
            "Patient.link[1].other",
            IssueType::BusinessRule,
        ),
    ];
    for (links, at, code) in cases {
        let refusal = to_events(&json(patient("a", links)), &ctx()).expect_err(at);
        assert_eq!(refusal.status, HttpStatus::UnprocessableEntity, "{at}");
        assert_eq!(refusal.issues[0].code, code, "{at}");
        assert_eq!(refusal.issues[0].expression.as_deref(), Some(at));
        let text = format!("{refusal} {}", refusal.to_json());
        for secret in ["DUPONT", "1234"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

#[test]
fn both_sides_in_one_bundle_give_one_merge() {
    let entry = |id: &str, links: Value| {
        json!({"fullUrl": format!("{BASE}/Patient/{id}"),
               "resource": patient(id, links),
               "request": {"method": "PUT", "url": format!("Patient/{id}")}})
    };
    for order in [[0, 1], [1, 0]] {
        let sides = [
            entry(
                "a",
                json!([{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]),
            ),
            entry(
                "b",
                json!([{"other": {"reference": "Patient/a"}, "type": "replaces"}]),
            ),
        ];
        let bundle = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [sides[order[0]].clone(), sides[order[1]].clone()]});
        let answer = ingest(&json(bundle), &ctx()).expect("mapped");
        assert_eq!(
            merges(&answer.events),
            vec![(on_server("b"), on_server("a"))],
            "{order:?}"
        );
        // The survivor's entry says the merge is recorded from the retired one's.
        let b = order.iter().position(|&i| i == 1).expect("b");
        assert!(answer.entries[b].event_ids.is_empty());
        assert_eq!(
            answer.entries[b].issues[0].expression.as_deref(),
            Some(format!("Bundle.entry[{b}].resource.link[0].other").as_str())
        );
    }
    // The survivor alone (its retired Patient not in the bundle) records the merge.
    let alone = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry(
        "b",
        json!([{"other": {"reference": "Patient/a"}, "type": "replaces"}]),
    )]});
    let events = to_events(&json(alone), &ctx()).expect("mapped");
    assert_eq!(merges(&events), vec![(on_server("b"), on_server("a"))]);
}

#[test]
fn a_merge_happens_at_last_update_else_the_bundle_time() {
    let mut body = patient(
        "a",
        json!([{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]),
    );
    body.as_object_mut().map(|o| o.remove("meta"));
    let refusal = to_events(&json(body.clone()), &ctx()).expect_err("no time");
    assert_eq!(refusal.issues[0].code, IssueType::Required);
    assert_eq!(
        refusal.issues[0].expression.as_deref(),
        Some("Patient.meta.lastUpdated")
    );
    let bundle = json!({"resourceType": "Bundle", "type": "collection",
        "timestamp": "2024-07-01T12:00:00Z",
        "entry": [{"fullUrl": format!("{BASE}/Patient/a"), "resource": body}]});
    let answer = ingest(&json(bundle), &ctx()).expect("mapped");
    assert_eq!(answer.events.len(), 1);
    assert_eq!(answer.events[0].occurred_at, ts("2024-07-01T12:00:00Z"));
    assert!(answer.issues.iter().any(|i| i.expression.as_deref()
        == Some("Bundle.entry[0].resource.meta.lastUpdated")
        && i.severity == IssueSeverity::Information));
}

#[test]
fn a_deceased_merged_patient_gives_both_events() {
    let mut body = patient(
        "a",
        json!([{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]),
    );
    body["deceasedDateTime"] = json!("2024-06-02T03:00:00+02:00");
    let events = to_events(&json(body), &ctx()).expect("mapped");
    let types: Vec<&str> = events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(types, ["identity.merged", "patient.deceased"]);
    assert_ne!(events[0].id, events[1].id);
}
