//! No input panics: random bytes, and real samples mutated at random places.

mod common;

use common::*;
use parcours_fhir::ingest;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Small JSON values, with strings that look like what FHIR resources hold.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("2024-03-01"),
            Just("2024-03-01T10:00:00+01:00"),
            Just("2024"),
            Just("2024-13-45T99:99:99Z"),
            Just("final"),
            Just("finished"),
            Just("in-progress"),
            Just("entered-in-error"),
            Just("IMP"),
            Just("AMB"),
            Just("http://loinc.org"),
            Just("http://unitsofmeasure.org"),
            Just("[lb_av]"),
            Just(">60"),
            Just("Patient/p1"),
            Just("#pat"),
            Just("urn:uuid:00000000-0000-0000-0000-000000000000"),
            Just("urn:oid:1.2.250.1.213.1.4.8"),
            Just("urn:oid:1.2.250.1.213.1.4.10"),
            Just("urn:parcours:subject"),
            Just("urn:parcours:task"),
            Just("Patient"),
            Just("Observation"),
            Just("Bundle"),
            Just(""),
            Just("é\u{0}\u{202e}"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,10}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every path to a node of `v`, as (object key or array index) steps.
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(Step::Key(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(Step::Index(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn node<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            Step::Key(k) => cur.get_mut(k.as_str())?,
            Step::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    Insert(usize, String, Value),
}

fn mutate(mut doc: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let pick = |n: usize| all.get(n % all.len().max(1)).cloned().unwrap_or_default();
        match m {
            Mutation::Replace(n, v) => {
                if let Some(slot) = node(&mut doc, &pick(*n)) {
                    *slot = v.clone();
                }
            }
            Mutation::Remove(n) => {
                let path = pick(*n);
                if let Some((last, parent)) = path.split_last()
                    && let Some(p) = node(&mut doc, parent)
                {
                    match (last, p) {
                        (Step::Key(k), Value::Object(m)) => {
                            m.remove(k);
                        }
                        (Step::Index(i), Value::Array(a)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            Mutation::Insert(n, k, v) => {
                if let Some(Value::Object(m)) = node(&mut doc, &pick(*n)) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
    }
    doc
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), json_value()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        any::<usize>().prop_map(Mutation::Remove),
        (
            any::<usize>(),
            prop_oneof![
                Just("resourceType".to_owned()),
                Just("status".to_owned()),
                Just("subject".to_owned()),
                Just("valueQuantity".to_owned()),
                Just("contained".to_owned()),
                Just("reference".to_owned()),
                Just("entry".to_owned()),
                "[a-zA-Z]{1,12}",
            ],
            json_value()
        )
            .prop_map(|(n, k, v)| Mutation::Insert(n, k, v)),
    ]
}

/// Seeds: the sample resources, a rich hand-made transaction, and the start of a
/// Synthea bundle.
fn seeds() -> &'static [Value] {
    static SEEDS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(load_seeds)
}

fn load_seeds() -> Vec<Value> {
    let mut out: Vec<Value> = [
        "r4ex_Encounter-f203_inpatient_finished.json",
        "r4ex_Encounter-emerg_in_progress.json",
        "r4ex_Observation-example_body_weight_lbs.json",
        "r4ex_Observation-f001_glucose.json",
        "r4ex_Bundle-lipids.json",
        "r4ex_Task-example1.json",
        "r4ex_Patient-example.json",
    ]
    .iter()
    .map(|f| serde_json::from_slice(&data(f)).expect("sample json"))
    .collect();
    let mut synthea: Value =
        serde_json::from_slice(&data("synthea_HF_Michele_Wolf.json")).expect("json");
    if let Some(entries) = synthea.get_mut("entry").and_then(Value::as_array_mut) {
        entries.truncate(25);
    }
    out.push(synthea);
    out.push(json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "request": {"method": "PUT", "url": "Patient/p1"},
             "resource": {"resourceType": "Patient", "id": "p1",
                "extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                               "extension": [{"url": "identityStatus", "valueCoding": {"code": "VALI"}}]}],
                "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "180027512345678"}]}},
            {"request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
                "class": {"code": "IMP"},
                "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                "period": {"start": "2024-03-01", "end": "2024-03-09T10:00:00+01:00"},
                "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}},
                "diagnosis": [{"condition": {"reference": "#c"}, "rank": 1}],
                "contained": [{"resourceType": "Condition", "id": "c",
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.1"}]}}]}},
            {"request": {"method": "POST", "url": "Task"},
             "resource": {"resourceType": "Task", "status": "cancelled", "intent": "order",
                "identifier": [{"system": "urn:parcours:task", "value": "0191f3a2-7c4e-7d11-9a55-3f8e2c1b0a99"}],
                "statusReason": {"text": "inutile"},
                "for": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                "lastModified": "2024-03-12T11:00:00+01:00"}},
            {"request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "55284-4"}]},
                "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                "effectiveDateTime": "2024-03-10T08:00:00Z",
                "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                               "valueQuantity": {"value": 120, "comparator": "<", "unit": "mmHg"}}]}}
        ]
    }));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ingest(&bytes, &ctx());
    }

    #[test]
    fn random_json_never_panics(v in json_value()) {
        let _ = ingest(&json(v.clone()), &ctx());
        let _ = ingest(&json(json!({"resourceType": "Observation", "x": v})), &ctx());
    }

    #[test]
    fn mutated_samples_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let doc = seeds[seed.index(seeds.len())].clone();
        let mutated = mutate(doc, &mutations);
        let body = json(mutated);
        if let Ok(ingest) = ingest(&body, &ctx()) {
            // Accepted output is well-formed: a response and valid events.
            let _ = ingest.response();
            for e in &ingest.events {
                prop_assert!(!e.id.is_empty() && e.subject.starts_with("p-"));
            }
        }
        // Truncated bodies too.
        let cut = body.len() / 2;
        let _ = ingest(&body[..cut], &ctx());
    }
}
