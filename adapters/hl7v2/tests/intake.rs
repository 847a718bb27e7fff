//! Guard, parse, map and acknowledge: every sample, every trigger event, PAM-FR.

mod common;

use std::time::Duration;

use common::{TENANT, config, data, intake, sample_files, subject, within, without_ids};
use jiff::Timestamp;
use parcours_core::events::{Event, EventData, data as ev};
use parcours_hl7v2::{
    AckCode, Caps, Charset, GuardError, Intake, IntakeError, MapError, Outcome, Processed,
    split_batch,
};
use parcours_identity::{OID_INS_NIR, OID_INS_NIR_TEST, PatientIdentifier};

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// A segment from (field number, value) pairs.
fn seg(name: &str, fields: &[(usize, &str)]) -> String {
    let n = fields.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut out = vec![name.to_owned()];
    for i in 1..=n {
        out.push(
            fields
                .iter()
                .find(|(k, _)| *k == i)
                .map_or(String::new(), |(_, v)| (*v).to_owned()),
        );
    }
    out.join("|")
}

/// An MSH with the default encoding characters; `fields` from MSH-3 on.
fn msh(fields: &[(usize, &str)]) -> String {
    let n = fields.iter().map(|(i, _)| *i).max().unwrap_or(2).max(2);
    let mut out = vec!["MSH".to_owned(), "^~\\&".to_owned()];
    for i in 3..=n {
        out.push(
            fields
                .iter()
                .find(|(k, _)| *k == i)
                .map_or(String::new(), |(_, v)| (*v).to_owned()),
        );
    }
    out.join("|")
}

fn adt_msh(trigger: &str, control: &str) -> String {
    msh(&[
        (3, "HIS"),
        (4, "HOSP^1.2.3.4^ISO"),
        (5, "PARCOURS"),
        (6, "CPTS"),
        (7, "20240115103000"),
        (9, &format!("ADT^{trigger}^ADT_A01")),
        (10, control),
        (11, "P"),
        (12, "2.5"),
    ])
}

const IPP: &str = "IPP-1^^^HOSP&1.2.3.4.5&ISO^PI";

fn pid() -> String {
    seg(
        "PID",
        &[
            (1, "1"),
            (3, IPP),
            (5, "DOE^JANE"),
            (7, "19500101"),
            (8, "F"),
        ],
    )
}

fn local_subject() -> String {
    subject(&PatientIdentifier::local("1.2.3.4.5", "IPP-1"))
}

fn msg(segments: &[String]) -> Vec<u8> {
    segments.join("\r").into_bytes()
}

fn events(p: &Processed) -> Vec<Event> {
    match &p.outcome {
        Outcome::Accepted(e) => e.clone(),
        other => panic!("expected events, got {other:?}"),
    }
}

fn refused(p: &Processed) -> &IntakeError {
    match &p.outcome {
        Outcome::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn event(subject: &str, source: &str, at: &str, data: EventData) -> Event {
    Event {
        id: String::new(),
        tenant: TENANT.into(),
        source: source.into(),
        subject: subject.into(),
        occurred_at: ts(at),
        recorded_at: None,
        data,
    }
}

const SRC: &str = "hl7v2/HIS@HOSP";

fn diagnosis(code: &str, system: &str) -> EventData {
    EventData::DiagnosisRecorded(ev::DiagnosisRecorded {
        code: code.into(),
        system: system.into(),
    })
}

// ---------------------------------------------------------------------------------------
// Samples

/// What each third-party sample gives, message by message (`+n` n events, `i` ignored,
/// `-` refused).
fn expected_sample(file: &str) -> &'static str {
    match file {
        // PID-30 says the patient died: its DG1 (SNOMED CT) records no diagnosis.
        "samples/fhirconv_ADT-A01-01_v28_full.hl7" => "+1",
        "samples/fhirconv_ADT-A03-02_v28_minimal.hl7" => "+2",
        "samples/fhirconv_ADT-A08-01_v28.hl7" => "+1",
        "samples/fhirconv_ADT-A13-02_v28_cancel_discharge.hl7" => "+1",
        "samples/fhirconv_ADT01-23_v23_bom.hl7" => "+1",
        "samples/fhirconv_LAB-ORU-2_v25.hl7" => "+10",
        "samples/hl7parser_sample_adt_a03_v23.hl7" => "+1",
        // The patient named by a site's own identifier type (`5520255^^^PK^PK`).
        "samples/hapi_adt_a03_v25.hl7" => "+1",
        // No assigning authority on the patient identifier: refused with AE.
        "samples/fhirconv_ORU-R01-RMGEAD_v24_glucose_SN.hl7"
        | "samples/hapi_docs_ADT_A01_v24_cr_only.hl7"
        | "samples/hl7parser_sample_oru_r01_lab_v23_escapes_zsegs.hl7" => "-",
        // 18 messages: v2.1/2.2 (unsupported), BAR^P01, ORM, QRY, ACK, a 3-character MSH-2.
        "samples/hapi_util_messages_multi_v21_v22_comments.txt" => {
            "- - - - - - - - - - - - - - - - - -"
        }
        "samples/malformed/nhapi_bad_empty_file.hl7" => "",
        "samples/malformed/nhapi_bad_fuzz_000014_leading_nul_bytes.hl7" => "batch-error",
        "samples/malformed/nhapi_bad_fuzz_000087_nonutf8_A07.hl7" => "-",
        "samples/malformed/nhapi_bad_hang1.hl7" => "-",
        "pamfr/a01_test_ins.hl7" => "-",
        // A qualified INS with the IPP: an identity link before the events.
        "pamfr/a01_admission_ins_qualified.hl7" | "pamfr/a40_merge.hl7" => "+2",
        "pamfr/a03_discharge_death.hl7" => "+3",
        "pamfr/oru_r01_latin1.hl7" => "+6",
        // The encounter event, then one diagnosis per DG1.
        "pamfr/a03_discharge_home_not_qualified.hl7" => "+3",
        "pamfr/z99_update_discharge.hl7" => "+2",
        _ => "+1",
    }
}

fn summarise(intake: &Intake, raw: &[u8]) -> String {
    let entries = match split_batch(raw, &Caps::default()) {
        Ok(e) => e,
        Err(_) => return "batch-error".into(),
    };
    entries
        .iter()
        .map(|e| {
            let p = intake.process(&e.raw);
            // Every acknowledgement is itself a readable HL7 message.
            let ack = intake.ack_text(p.header.as_ref(), &p.ack());
            intake.parse(ack.as_bytes()).expect("the ACK parses");
            match &p.outcome {
                Outcome::Accepted(ev) => format!("+{}", ev.len()),
                Outcome::Ignored(_) => "i".into(),
                Outcome::Refused(err) => {
                    assert!(!err.to_string().is_empty());
                    "-".into()
                }
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_sample_is_mapped_or_refused_cleanly() {
    for file in sample_files() {
        let got = within(Duration::from_secs(10), {
            let file = file.clone();
            move || summarise(&intake(), &data(&file))
        });
        assert_eq!(got, expected_sample(&file), "{file}");
    }
}

#[test]
fn malformed_samples_are_refused_by_the_guard() {
    let intake = intake();
    let guard = |file: &str| match within(Duration::from_secs(5), {
        let intake = intake.clone();
        let raw = data(file);
        move || intake.process(&raw)
    })
    .outcome
    {
        Outcome::Refused(IntakeError::Guard(g)) => g,
        other => panic!("{file}: {other:?}"),
    };
    assert_eq!(
        guard("samples/malformed/nhapi_bad_empty_file.hl7"),
        GuardError::Empty
    );
    assert_eq!(
        guard("samples/malformed/nhapi_bad_fuzz_000014_leading_nul_bytes.hl7"),
        GuardError::ControlByte { byte: 0, offset: 0 }
    );
    assert!(matches!(
        guard("samples/malformed/nhapi_bad_fuzz_000087_nonutf8_A07.hl7"),
        GuardError::EncodingCharacters { .. }
    ));
    assert!(matches!(
        guard("samples/malformed/nhapi_bad_hang1.hl7"),
        GuardError::EncodingCharacters { .. }
    ));
}

#[test]
fn wire_terminators_give_the_same_events_as_files() {
    let intake = intake();
    for file in sample_files() {
        let raw = data(&file);
        if raw.contains(&b'\n') && !raw.starts_with(b"/*") && !raw.is_empty() {
            let lf = intake.process(&raw);
            let cr: Vec<u8> = raw
                .iter()
                .map(|&b| if b == b'\n' { b'\r' } else { b })
                .collect();
            let crlf: Vec<u8> = raw
                .iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        vec![b'\r', b'\n']
                    } else {
                        vec![b]
                    }
                })
                .collect();
            for other in [intake.process(&cr), intake.process(&crlf)] {
                match (&lf.outcome, &other.outcome) {
                    (Outcome::Accepted(a), Outcome::Accepted(b)) => assert_eq!(a, b, "{file}"),
                    (Outcome::Refused(a), Outcome::Refused(b)) => {
                        assert_eq!(a.to_string(), b.to_string(), "{file}")
                    }
                    (a, b) => panic!("{file}: {a:?} vs {b:?}"),
                }
            }
        }
    }
}

#[test]
fn a_v23_sample_discharge_uses_pv1_45() {
    let p = intake().process(&data("samples/hl7parser_sample_adt_a03_v23.hl7"));
    let got = events(&p);
    let id = PatientIdentifier::local("1", "10006579");
    // PV1-45 20050112152000 and PV1-44 20050110045253, Paris winter time (UTC+1).
    let want = event(
        &subject(&id),
        "hl7v2/AccMgr@1",
        "2005-01-12T14:20:00Z",
        EventData::EncounterDischarged(ev::EncounterDischarged {
            encounter_id: "40007716".into(),
            class: "inpatient".into(),
            destination: "home".into(),
            diagnoses: vec![],
            facility: Some("1".into()),
            admitted_at: Some(ts("2005-01-10T03:52:53Z")),
        }),
    );
    assert_eq!(without_ids(&got), vec![want]);
}

#[test]
fn a_discharge_that_does_not_say_where_the_patient_went_has_destination_unknown() {
    // PV1-36 empty (an Italian hospital's A03): not stated, which a pathway may treat
    // apart from a destination that is stated but none of home, nursing home, transfer.
    let got = events(&intake().process(&data("samples/hapi_adt_a03_v25.hl7")));
    let EventData::EncounterDischarged(d) = &got[0].data else {
        panic!("a discharge expected: {got:?}")
    };
    assert_eq!(d.destination, "unknown");
}

#[test]
fn sample_results_decode_escapes_and_numbers() {
    let p = intake().process(&data("samples/fhirconv_LAB-ORU-2_v25.hl7"));
    let got = events(&p);
    let EventData::ObservationRecorded(o) = &got[5].data else {
        panic!("observation expected")
    };
    assert_eq!(o.code, "20509-6");
    assert_eq!(o.value, Some(13.4));
    assert_eq!(o.unit.as_deref(), Some("g/l-1"));
    assert_eq!(o.status, "final");
    assert_eq!(got[5].occurred_at, ts("2014-10-06T01:30:00Z"));
}

// ---------------------------------------------------------------------------------------
// Mapping per trigger event

#[test]
fn a01_admission() {
    let raw = msg(&[
        adt_msh("A01", "M1"),
        seg(
            "EVN",
            &[(1, "A01"), (2, "20240115103000"), (6, "20240115100000")],
        ),
        pid(),
        seg(
            "PV1",
            &[
                (1, "1"),
                (2, "E"),
                (3, "URG^1^2^HOSPFAC&1.2.250.1.1&ISO"),
                (19, "VIS-1"),
                (44, "20240115093000"),
            ],
        ),
    ]);
    let want = event(
        &local_subject(),
        SRC,
        "2024-01-15T08:30:00Z",
        EventData::EncounterAdmitted(ev::EncounterAdmitted {
            encounter_id: "VIS-1".into(),
            class: "emergency".into(),
            facility: Some("1.2.250.1.1".into()),
        }),
    );
    assert_eq!(without_ids(&events(&intake().process(&raw))), vec![want]);
}

#[test]
fn a04_registration_is_an_outpatient_admission_without_pv1_44() {
    let raw = msg(&[
        adt_msh("A04", "M2"),
        seg("EVN", &[(1, "A04"), (2, "20240115103000")]),
        pid(),
        seg("PV1", &[(1, "1"), (2, "O"), (19, "VIS-2")]),
    ]);
    let got = events(&intake().process(&raw));
    assert_eq!(got[0].occurred_at, ts("2024-01-15T09:30:00Z"), "EVN-2");
    assert_eq!(
        got[0].data,
        EventData::EncounterAdmitted(ev::EncounterAdmitted {
            encounter_id: "VIS-2".into(),
            class: "outpatient".into(),
            facility: Some("1.2.3.4".into()),
        })
    );
}

#[test]
fn a03_discharge_with_diagnoses_and_hl7_disposition() {
    let raw = msg(&[
        adt_msh("A03", "M3"),
        seg("EVN", &[(1, "A03"), (2, "20240712180000")]),
        pid(),
        seg(
            "PV1",
            &[
                (2, "I"),
                (19, "VIS-1"),
                (36, "03"),
                (44, "20240701080000"),
                (45, "20240712153000"),
            ],
        ),
        seg(
            "DG1",
            &[(1, "1"), (3, "I50.1^Left ventricular failure^I10")],
        ),
        seg(
            "DG1",
            &[(1, "2"), (3, "E119^Type 2 diabetes^I10~I501^LVF^I10")],
        ),
        seg("DG1", &[(1, "3"), (3, "84114007^Heart failure^SCT")]),
    ]);
    let at = "2024-07-12T13:30:00Z";
    let want = vec![
        event(
            &local_subject(),
            SRC,
            at,
            EventData::EncounterDischarged(ev::EncounterDischarged {
                encounter_id: "VIS-1".into(),
                class: "inpatient".into(),
                destination: "nursing-home".into(),
                diagnoses: vec!["I50.1".into(), "E11.9".into(), "84114007".into()],
                facility: Some("1.2.3.4".into()),
                admitted_at: Some(ts("2024-07-01T06:00:00Z")),
            }),
        ),
        // Then each diagnosis once (I50.1 is stated twice), at the discharge instant.
        event(&local_subject(), SRC, at, diagnosis("I50.1", "icd-10")),
        event(&local_subject(), SRC, at, diagnosis("E11.9", "icd-10")),
        event(&local_subject(), SRC, at, diagnosis("84114007", "snomed")),
    ];
    assert_eq!(without_ids(&events(&intake().process(&raw))), want);
}

#[test]
fn a03_discharge_instant_falls_back_evn6_evn2_msh7() {
    let base = |evn: String| {
        msg(&[
            adt_msh("A03", "M4"),
            evn,
            pid(),
            seg("PV1", &[(19, "VIS-1")]),
        ])
    };
    let at = |raw: Vec<u8>| events(&intake().process(&raw))[0].occurred_at;
    assert_eq!(
        at(base(seg(
            "EVN",
            &[(2, "20240115110000"), (6, "20240115104500")]
        ))),
        ts("2024-01-15T09:45:00Z")
    );
    assert_eq!(
        at(base(seg("EVN", &[(2, "20240115110000")]))),
        ts("2024-01-15T10:00:00Z")
    );
    assert_eq!(
        at(base(seg("EVN", &[(1, "A03")]))),
        ts("2024-01-15T09:30:00Z")
    );
}

#[test]
fn a03_death_gives_discharge_then_patient_deceased() {
    let raw = msg(&[
        adt_msh("A03", "M5"),
        seg("EVN", &[(2, "20240115103000")]),
        seg("PID", &[(3, IPP), (29, "20240115061500+0100"), (30, "Y")]),
        seg("PV1", &[(19, "VIS-1"), (36, "01"), (45, "20240115070000")]),
    ]);
    let got = events(&intake().process(&raw));
    assert_eq!(got.len(), 2);
    let EventData::EncounterDischarged(d) = &got[0].data else {
        panic!("discharge first")
    };
    assert_eq!(d.destination, "deceased", "PID-30 wins over PV1-36");
    assert_eq!(
        got[1].data,
        EventData::PatientDeceased(ev::PatientDeceased {})
    );
    assert_eq!(got[1].occurred_at, ts("2024-01-15T05:15:00Z"), "PID-29");
    assert_ne!(got[0].id, got[1].id);
}

#[test]
fn cancels_pending_and_updates() {
    let one = |trigger: &str, extra: Vec<String>| {
        let mut segs = vec![
            adt_msh(trigger, "M6"),
            seg("EVN", &[(2, "20240115103000"), (6, "20240115102000")]),
            pid(),
            seg("PV1", &[(19, "VIS-1"), (36, "02")]),
        ];
        segs.extend(extra);
        let got = events(&intake().process(&msg(&segs)));
        let dg1 = segs.iter().filter(|s| s.starts_with("DG1|")).count();
        assert_eq!(
            got.len(),
            1 + dg1,
            "{trigger}: one event, then the diagnoses"
        );
        assert_eq!(
            got[0].occurred_at,
            ts("2024-01-15T09:20:00Z"),
            "{trigger}: EVN-6"
        );
        assert_eq!(got[0].subject, local_subject());
        got[0].data.clone()
    };
    assert_eq!(
        one("A11", vec![]),
        EventData::EncounterAdmissionCancelled(ev::EncounterAdmissionCancelled {
            encounter_id: "VIS-1".into()
        })
    );
    assert_eq!(
        one("A13", vec![]),
        EventData::EncounterDischargeCancelled(ev::EncounterDischargeCancelled {
            encounter_id: "VIS-1".into()
        })
    );
    assert_eq!(
        one("A16", vec![seg("PV2", &[(9, "20240116140000")])]),
        EventData::EncounterDischargePending(ev::EncounterDischargePending {
            encounter_id: "VIS-1".into(),
            expected_at: Some(ts("2024-01-16T13:00:00Z")),
        })
    );
    assert_eq!(
        one("A16", vec![]),
        EventData::EncounterDischargePending(ev::EncounterDischargePending {
            encounter_id: "VIS-1".into(),
            expected_at: None,
        })
    );
    assert_eq!(
        one("A08", vec![seg("DG1", &[(3, "I500^ICC^CIM10")])]),
        EventData::EncounterUpdated(ev::EncounterUpdated {
            encounter_id: "VIS-1".into(),
            diagnoses: vec!["I50.0".into()],
            destination: Some("transfer".into()),
        })
    );
}

#[test]
fn a08_without_a_stay_is_ignored() {
    let raw = msg(&[adt_msh("A08", "U1"), pid(), seg("PV1", &[(2, "N")])]);
    let p = intake().process(&raw);
    assert!(
        matches!(&p.outcome, Outcome::Ignored(r) if r.contains("without a visit number")),
        "{p:?}"
    );
}

#[test]
fn a40_merge_one_event_per_pid_mrg_pair() {
    let raw = msg(&[
        adt_msh("A40", "M7"),
        seg("EVN", &[(2, "20240115103000")]),
        pid(),
        seg("MRG", &[(1, "OLD-1^^^HOSP&1.2.3.4.5&ISO^PI")]),
        seg("PID", &[(3, "IPP-2^^^HOSP&1.2.3.4.5&ISO^PI")]),
        seg("MRG", &[(1, "OLD-2^^^HOSP&1.2.3.4.5&ISO^PI")]),
        seg("PID", &[(3, "IPP-3^^^HOSP&1.2.3.4.5&ISO^PI")]),
        // A merge of a record into itself changes nothing: no event.
        seg("MRG", &[(1, "IPP-3^^^HOSP&1.2.3.4.5&ISO^PI")]),
    ]);
    let local = |v: &str| subject(&PatientIdentifier::local("1.2.3.4.5", v));
    let merged = |v: &str| {
        EventData::IdentityMerged(ev::IdentityMerged {
            merged_subject: local(v),
        })
    };
    let want = vec![
        event(
            &local("IPP-1"),
            SRC,
            "2024-01-15T09:30:00Z",
            merged("OLD-1"),
        ),
        event(
            &local("IPP-2"),
            SRC,
            "2024-01-15T09:30:00Z",
            merged("OLD-2"),
        ),
    ];
    assert_eq!(without_ids(&events(&intake().process(&raw))), want);
}

/// An A47 (IHE PAM: the patient identifier list changed, MRG-1 no longer to be used) is
/// the same act as a merge for parcours: the old identifier's key leads to the new one.
#[test]
fn a47_change_of_identifier_is_a_merge_into_the_new_identifier() {
    let raw = msg(&[
        adt_msh("A47", "M8"),
        seg("EVN", &[(2, "20240115103000")]),
        pid(),
        seg("MRG", &[(1, "OLD-1^^^HOSP&1.2.3.4.5&ISO^PI")]),
    ]);
    let p = intake().process(&raw);
    let local = |v: &str| subject(&PatientIdentifier::local("1.2.3.4.5", v));
    let want = vec![event(
        &local("IPP-1"),
        SRC,
        "2024-01-15T09:30:00Z",
        EventData::IdentityMerged(ev::IdentityMerged {
            merged_subject: local("OLD-1"),
        }),
    )];
    assert_eq!(without_ids(&events(&p)), want, "{p:?}");
}

// ---------------------------------------------------------------------------------------
// DG1 → diagnosis.recorded

/// An ADT message of `trigger` for the test patient, with a visit, and `extra` segments.
fn adt_with(trigger: &str, control: &str, extra: &[String]) -> Vec<u8> {
    let mut segs = vec![
        adt_msh(trigger, control),
        seg("EVN", &[(2, "20240115103000"), (6, "20240115102000")]),
        pid(),
        seg("PV1", &[(2, "I"), (19, "VIS-1"), (45, "20240115100000")]),
    ];
    segs.extend_from_slice(extra);
    msg(&segs)
}

/// The `diagnosis.recorded` events of a processed message, as (code, system, time).
fn recorded(p: &Processed) -> Vec<(String, String, Timestamp)> {
    events(p)
        .iter()
        .filter_map(|e| match &e.data {
            EventData::DiagnosisRecorded(d) => {
                assert_eq!(e.subject, local_subject());
                Some((d.code.clone(), d.system.clone(), e.occurred_at))
            }
            _ => None,
        })
        .collect()
}

fn dx(code: &str, system: &str, at: &str) -> (String, String, Timestamp) {
    (code.into(), system.into(), ts(at))
}

#[test]
fn dg1_records_a_diagnosis_at_the_message_event_not_at_dg1_5() {
    let t2d = seg(
        "DG1",
        &[
            (1, "1"),
            (3, "E11.9^Type 2 diabetes mellitus^I10"),
            (5, "20240110083000"),
            (6, "F"),
        ],
    );
    let hf = seg("DG1", &[(1, "2"), (3, "I500^ICC^CIM10"), (6, "F")]);
    // A03: the discharge first, then one diagnosis.recorded per DG1, with the shape the
    // FHIR Condition mapping gives (code, `icd-10` or `snomed`).
    let p = intake().process(&adt_with("A03", "D1", &[t2d.clone(), hf.clone()]));
    let got = events(&p);
    assert_eq!(got[0].data.event_type().as_str(), "encounter.discharged");
    assert_eq!(got[1].data, diagnosis("E11.9", "icd-10"));
    assert_eq!(
        recorded(&p),
        vec![
            // At the discharge instant (PV1-45), when the hospital recorded them: not at
            // DG1-5 (2024-01-10), when the diabetes was diagnosed.
            dx("E11.9", "icd-10", "2024-01-15T09:00:00Z"),
            dx("I50.0", "icd-10", "2024-01-15T09:00:00Z"),
        ]
    );
    // A01 and A04: at the admission instant (EVN-6 here) without DG1-5.
    for trigger in ["A01", "A04"] {
        let p = intake().process(&adt_with(trigger, "D2", std::slice::from_ref(&hf)));
        assert_eq!(
            events(&p)[0].data.event_type().as_str(),
            "encounter.admitted"
        );
        assert_eq!(
            recorded(&p),
            vec![dx("I50.0", "icd-10", "2024-01-15T09:20:00Z")],
            "{trigger}"
        );
    }
    // A08 (stay update), A16 (pending discharge): at EVN-6.
    for trigger in ["A08", "A16"] {
        let p = intake().process(&adt_with(trigger, "D3", &[t2d.clone(), hf.clone()]));
        assert_eq!(
            recorded(&p),
            vec![
                dx("E11.9", "icd-10", "2024-01-15T09:20:00Z"),
                dx("I50.0", "icd-10", "2024-01-15T09:20:00Z"),
            ],
            "{trigger}"
        );
    }
}

#[test]
fn dg1_on_messages_without_an_encounter_event() {
    let t2d = seg(
        "DG1",
        &[(1, "1"), (3, "E119^Diabète de type 2^CIM10"), (6, "W")],
    );
    // A31 (update person), A28 (add person), A05 (pre-admit) give no encounter event;
    // their diagnoses are recorded at EVN-6, else EVN-2, else MSH-7.
    for trigger in ["A31", "A28", "A05"] {
        let raw = msg(&[
            adt_msh(trigger, "P1"),
            seg("EVN", &[(2, "20240115103000")]),
            pid(),
            seg("PV1", &[(2, "N")]),
            t2d.clone(),
        ]);
        let p = intake().process(&raw);
        assert_eq!(events(&p).len(), 1, "{trigger}");
        assert_eq!(
            recorded(&p),
            vec![dx("E11.9", "icd-10", "2024-01-15T09:30:00Z")],
            "{trigger}: EVN-2"
        );
        // Also when unhandled triggers are refused: this one is used.
        let mut strict = config();
        strict.ignore_unhandled_adt = false;
        assert_eq!(recorded(&Intake::new(strict).process(&raw)).len(), 1);
    }
    // An A08 without a visit number: no stay to update, the diagnosis is recorded.
    let raw = msg(&[
        adt_msh("A08", "P2"),
        pid(),
        seg("PV1", &[(2, "N")]),
        t2d.clone(),
    ]);
    assert_eq!(
        recorded(&intake().process(&raw)),
        vec![dx("E11.9", "icd-10", "2024-01-15T09:30:00Z")],
        "MSH-7"
    );
    // Without a usable diagnosis these are still acknowledged and ignored.
    let raw = msg(&[
        adt_msh("A31", "P3"),
        pid(),
        seg("DG1", &[(1, "1"), (3, "71596^OSTEOARTHROS^I9")]),
    ]);
    assert!(matches!(
        intake().process(&raw).outcome,
        Outcome::Ignored(_)
    ));
    // A diagnosis needs its patient: no PID is a content error.
    let raw = msg(&[adt_msh("A31", "P4"), t2d]);
    assert_eq!(
        refused(&intake().process(&raw)).to_string(),
        MapError::MissingSegment { segment: "PID" }.to_string()
    );
}

#[test]
fn dg1_codes_systems_and_what_is_not_a_diagnosis() {
    let one = |dg1: &[(usize, &str)]| {
        recorded(&intake().process(&adt_with("A08", "C1", &[seg("DG1", dg1)])))
    };
    let at = "2024-01-15T09:20:00Z";
    // SNOMED CT (as FHIR names it), the ICD-10 alternate preferred to a SNOMED identifier.
    assert_eq!(
        one(&[(3, "44054006^Diabetes type 2^SCT")]),
        vec![dx("44054006", "snomed", at)]
    );
    assert_eq!(
        one(&[(3, "44054006^Diabetes type 2^SCT^E119^T2D^I10")]),
        vec![dx("E11.9", "icd-10", at)]
    );
    // DG1-2 (coding method) names the system when DG1-3.3 does not.
    assert_eq!(
        one(&[(2, "I10"), (3, "E1165")]),
        vec![dx("E11.65", "icd-10", at)]
    );
    // No system at all: a code shaped like ICD-10 is read as ICD-10.
    assert_eq!(
        one(&[(3, "E11.9^Type 2 diabetes")]),
        vec![dx("E11.9", "icd-10", at)]
    );
    // ICD-9, SNOMED before SNOMED CT, local codes, unshaped codes without a system: none.
    assert_eq!(one(&[(2, "I9"), (3, "25000^DM^I9")]), vec![]);
    assert_eq!(one(&[(3, "E119^DM^99LOCAL")]), vec![]);
    assert_eq!(one(&[(3, "D-1234^x^SNM")]), vec![]);
    assert_eq!(one(&[(3, "25000")]), vec![]);
    // DG1-6 (admitting, working, final, a local type) does not change what is recorded.
    for kind in ["A", "W", "F", "D", ""] {
        assert_eq!(
            one(&[(3, "E11.9^^I10"), (6, kind)]).len(),
            1,
            "DG1-6 {kind}"
        );
    }
    // DG1-21 D (delete): not recorded, and no longer a code of the stay.
    let p = intake().process(&adt_with(
        "A08",
        "C2",
        &[
            seg("DG1", &[(1, "1"), (3, "E11.9^^I10"), (21, "D")]),
            seg("DG1", &[(1, "2"), (3, "I50.9^^I10"), (21, "A")]),
        ],
    ));
    assert_eq!(recorded(&p), vec![dx("I50.9", "icd-10", at)]);
    let EventData::EncounterUpdated(u) = &events(&p)[0].data else {
        panic!("update first")
    };
    assert_eq!(u.diagnoses, vec!["I50.9".to_string()]);
    // A diagnosis made ten years before and restated on this stay is recorded at the
    // discharge: its pathway starts now, not with ten years of deadlines overdue. DG1-5 is
    // not read, so a malformed one refuses nothing.
    for dg1_5 in ["20140110", "2014-01-10"] {
        let p = intake().process(&adt_with(
            "A03",
            "C3",
            &[seg("DG1", &[(1, "1"), (3, "E11.9^^I10"), (5, dg1_5)])],
        ));
        assert_eq!(
            recorded(&p),
            vec![dx("E11.9", "icd-10", "2024-01-15T09:00:00Z")],
            "{dg1_5}"
        );
    }
}

#[test]
fn dg1_in_cancellations_merges_and_deaths_records_nothing() {
    let t2d = seg("DG1", &[(1, "1"), (3, "E11.9^^I10")]);
    for trigger in ["A11", "A13"] {
        let p = intake().process(&adt_with(trigger, "X1", std::slice::from_ref(&t2d)));
        assert_eq!(events(&p).len(), 1, "{trigger}: the cancellation only");
        assert_eq!(recorded(&p), vec![], "{trigger}");
    }
    // PAM-FR: an A01 with ZBE-4 CANCEL cancels the admission; its DG1 states nothing.
    let p = intake().process(&adt_with(
        "A01",
        "X2",
        &[
            seg("ZBE", &[(1, "MVT-1"), (2, "20240115100000"), (4, "CANCEL")]),
            t2d.clone(),
        ],
    ));
    assert_eq!(recorded(&p), vec![]);
    // A death (A03 to deceased, or PID-30 on an update): a patient who died is enrolled
    // in no follow-up.
    let dead = seg("PID", &[(3, IPP), (29, "20240115061500"), (30, "Y")]);
    for trigger in ["A03", "A08", "A31"] {
        let raw = msg(&[
            adt_msh(trigger, "X3"),
            seg("EVN", &[(2, "20240115103000")]),
            dead.clone(),
            seg("PV1", &[(19, "VIS-1")]),
            t2d.clone(),
        ]);
        let p = intake().process(&raw);
        let n = match &p.outcome {
            Outcome::Accepted(ev) => ev
                .iter()
                .filter(|e| matches!(e.data, EventData::DiagnosisRecorded(_)))
                .count(),
            _ => 0,
        };
        assert_eq!(n, 0, "{trigger}");
    }
}

#[test]
fn diagnosis_ids_are_stable_across_resends_and_segment_order() {
    let t2d = seg("DG1", &[(1, "1"), (3, "E11.9^^I10")]);
    let hf = seg("DG1", &[(1, "2"), (3, "I50.9^^I10")]);
    let dup = seg("DG1", &[(1, "3"), (3, "E119^^CIM10")]);
    let ids = |extra: &[String]| -> Vec<(String, String)> {
        events(&intake().process(&adt_with("A03", "R1", extra)))
            .into_iter()
            .map(|e| match &e.data {
                EventData::DiagnosisRecorded(d) => (d.code.clone(), e.id),
                _ => ("discharge".into(), e.id),
            })
            .collect()
    };
    let first = ids(&[t2d.clone(), hf.clone()]);
    assert_eq!(first, ids(&[t2d.clone(), hf.clone()]), "a resend: same ids");
    let mut reordered = ids(&[hf.clone(), t2d.clone(), dup]);
    assert_eq!(reordered.len(), 3, "the same code twice is recorded once");
    reordered.swap(1, 2);
    assert_eq!(first, reordered, "ids follow the code, not the position");
    let mut all: Vec<&String> = first.iter().map(|(_, id)| id).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 3, "distinct ids");
    // The discharge keeps the id it had before diagnoses were recorded (index 0).
    assert_eq!(
        first[0].1,
        events(&intake().process(&adt_with("A03", "R1", &[])))[0].id
    );
    // Another message (control id): other ids.
    let other = events(&intake().process(&adt_with("A03", "R2", &[t2d])));
    assert_ne!(other[1].id, first[1].1);
}

#[test]
fn unhandled_adt_events_are_acknowledged_and_ignored_or_rejected() {
    let raw = msg(&[adt_msh("A28", "M8"), pid()]);
    let p = intake().process(&raw);
    assert!(matches!(&p.outcome, Outcome::Ignored(r) if r.contains("ADT^A28")));
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert!(ack.contains("\rMSA|AA|M8\r"), "{ack}");
    assert!(ack.contains("|0^Message accepted^HL70357|I|"), "{ack}");

    let mut strict = config();
    strict.ignore_unhandled_adt = false;
    let p = Intake::new(strict).process(&raw);
    let e = refused(&p);
    assert_eq!(e.ack_code(), AckCode::Reject);
    assert_eq!(e.error_code().code(), 201);
}

#[test]
fn header_checks_reject_with_ar() {
    let with = |f: &dyn Fn(String) -> String, cfg: parcours_hl7v2::IntakeConfig| {
        let raw = msg(&[f(adt_msh("A01", "M9")), pid(), seg("PV1", &[(19, "V")])]);
        let p = Intake::new(cfg).process(&raw);
        let e = refused(&p);
        (e.ack_code(), e.error_code().code(), e.to_string())
    };
    let (code, err, text) = with(&|m| m.replace("|2.5", "|2.9"), config());
    assert_eq!((code, err), (AckCode::Reject, 203), "{text}");
    let (code, err, text) = with(
        &|m| m.replace("|P|", "|T|"),
        parcours_hl7v2::IntakeConfig::new(TENANT, common::pseudonymizer()),
    );
    assert_eq!((code, err), (AckCode::Reject, 202));
    assert_eq!(
        text,
        "processing id `T` (MSH-11) is not one this intake accepts (P)"
    );
    // Only a value of table 0103's shape is named.
    let (_, err, text) = with(
        &|m| m.replace("|P|", "|DUPONT|"),
        parcours_hl7v2::IntakeConfig::new(TENANT, common::pseudonymizer()),
    );
    assert_eq!(
        (err, text.as_str()),
        (
            202,
            "processing id (MSH-11) is not one this intake accepts (P)"
        )
    );
    let (code, err, _) = with(&|m| m.replace("ADT^A01^ADT_A01", "ORM^O01"), config());
    assert_eq!((code, err), (AckCode::Reject, 200));
    let (code, err, _) = with(&|m| m.replace("ADT^A01^ADT_A01", "ORU^R30"), config());
    assert_eq!((code, err), (AckCode::Reject, 201));
    let mut only = config();
    only.facilities = vec!["OTHER".into()];
    let (code, _, _) = with(&|m| m, only);
    assert_eq!(code, AckCode::Reject);
    let mut listed = config();
    listed.facilities = vec!["1.2.3.4".into()];
    let raw = msg(&[adt_msh("A01", "M9"), pid(), seg("PV1", &[(19, "V")])]);
    assert!(matches!(
        Intake::new(listed).process(&raw).outcome,
        Outcome::Accepted(_)
    ));
}

#[test]
fn content_errors_name_the_position_and_get_ae() {
    let cases: Vec<(Vec<String>, &str, u16)> = vec![
        (
            vec![adt_msh("A01", "E1"), pid()],
            "required segment PV1 is missing",
            100,
        ),
        (
            vec![adt_msh("A01", "E2"), pid(), seg("PV1", &[(2, "I")])],
            "PV1-19: visit number (PV1-19, or PID-18 account number) is missing",
            101,
        ),
        (
            vec![
                adt_msh("A01", "E3"),
                pid(),
                seg("PV1", &[(19, "V"), (44, "2024013")]),
            ],
            "PV1-44.1: date/time is invalid",
            102,
        ),
        (
            vec![
                adt_msh("A01", "E4"),
                seg("PID", &[(3, "123^^^^PI~456")]),
                seg("PV1", &[(19, "V")]),
            ],
            "PID-3: no usable patient identifier",
            204,
        ),
    ];
    for (segs, text, code) in cases {
        let p = intake().process(&msg(&segs));
        let e = refused(&p);
        assert!(e.to_string().starts_with(text), "{e}");
        assert_eq!(e.ack_code(), AckCode::Error, "{e}");
        assert_eq!(e.error_code().code(), code, "{e}");
    }
}

/// The identifier that names the patient: the preferred types first (PI, MR, MRN, PT,
/// untyped), then any other type that has an authority, in message order; an identifier
/// without an authority is used only with the one configured for the sending facility.
#[test]
fn patient_identifiers_of_other_types_and_facilities_default_authorities() {
    let adt = |pid3: &str, facility: &str| {
        msg(&[
            msh(&[
                (3, "HIS"),
                (4, facility),
                (7, "20240310120000"),
                (9, "ADT^A01^ADT_A01"),
                (10, "ID1"),
                (11, "P"),
                (12, "2.5"),
            ]),
            seg("PID", &[(3, pid3)]),
            seg("PV1", &[(19, "V")]),
        ])
    };
    let subject_of = |intake: &Intake, raw: &[u8]| match &intake.process(raw).outcome {
        Outcome::Accepted(events) => events[0].subject.clone(),
        other => panic!("{other:?}"),
    };
    let local = |authority: &str, value: &str| subject(&PatientIdentifier::local(authority, value));
    // A site's own type, after the preferred ones whatever their order.
    let raw = adt("40800000^^^MRENTR^MEDREC~9999999999^^^NHS^HN", "UCLH");
    assert_eq!(subject_of(&intake(), &raw), local("MRENTR", "40800000"));
    let raw = adt("9999999999^^^NHS^HN~77^^^HOSP^MR", "UCLH");
    assert_eq!(subject_of(&intake(), &raw), local("HOSP", "77"));
    // An account or visit number names a stay, not the patient: never used.
    let raw = adt("123456^^^^PI~A998877^^^HOSP^AN~V1^^^HOSP^VN", "UCLH");
    let e = refused(&intake().process(&raw)).to_string();
    assert!(e.starts_with("PID-3: no usable patient identifier"), "{e}");
    // Without an authority: refused, unless the sending facility has one configured, and
    // then the key is the one the identifier gets with that authority written out.
    let bare = adt("123456^^^^PI", "CHU-NORD^1.2.250.1.211.10.200.1^ISO");
    let e = refused(&intake().process(&bare)).to_string();
    assert!(e.starts_with("PID-3: no usable patient identifier"), "{e}");
    let mut cfg = config();
    cfg.assigning_authorities
        .insert("CHU-NORD".into(), "1.2.250.1.211.10.200.2".into());
    let with_default = Intake::new(cfg.clone());
    let written = adt(
        "123456^^^CHU&1.2.250.1.211.10.200.2&ISO^PI",
        "CHU-NORD^1.2.250.1.211.10.200.1^ISO",
    );
    assert_eq!(
        subject_of(&with_default, &bare),
        local("1.2.250.1.211.10.200.2", "123456")
    );
    assert_eq!(
        subject_of(&with_default, &bare),
        subject_of(&intake(), &written)
    );
    // MSH-4's universal id names the facility as well; an identifier's own authority wins
    // over the default; another facility's messages are not given it.
    let mut by_oid = config();
    by_oid.assigning_authorities.insert(
        "1.2.250.1.211.10.200.1".into(),
        "1.2.250.1.211.10.200.2".into(),
    );
    assert_eq!(
        subject_of(&Intake::new(by_oid), &bare),
        local("1.2.250.1.211.10.200.2", "123456")
    );
    let own = adt("123456^^^LABO^PI", "CHU-NORD");
    assert_eq!(subject_of(&with_default, &own), local("LABO", "123456"));
    let other = adt("123456^^^^PI", "CH-SUD");
    assert!(matches!(
        with_default.process(&other).outcome,
        Outcome::Refused(_)
    ));
    // Another numbering (a social security number) is never put in the facility's.
    let national = adt("1234567890^^^^SS", "CHU-NORD");
    assert!(matches!(
        with_default.process(&national).outcome,
        Outcome::Refused(_)
    ));
    let both = adt("1234567890^^^^SS~123456", "CHU-NORD");
    assert_eq!(
        subject_of(&with_default, &both),
        local("1.2.250.1.211.10.200.2", "123456")
    );
}

#[test]
fn errors_never_show_patient_data() {
    // A bad date of birth-like timestamp and an identifier without authority.
    let segs = vec![
        adt_msh("A03", "P1"),
        seg("PID", &[(3, "SECRET-IPP^^^^PI"), (5, "DUPONT^MARCEL")]),
        seg("PV1", &[(19, "V")]),
    ];
    let p = intake().process(&msg(&segs));
    let shown = format!("{} {:?}", refused(&p), p.ack());
    assert!(
        !shown.contains("SECRET") && !shown.contains("DUPONT"),
        "{shown}"
    );
    let segs = vec![
        msh(&[
            (7, "20240101"),
            (9, "ORU^R01"),
            (10, "P2"),
            (11, "P"),
            (12, "2.5"),
        ]),
        pid(),
        seg(
            "OBX",
            &[(2, "NM"), (3, "2823-3^K^LN"), (5, "DUPONT"), (11, "F")],
        ),
    ];
    let p = intake().process(&msg(&segs));
    let e = refused(&p);
    assert_eq!(
        e.to_string(),
        "OBX-5: numeric value (NM) is invalid: not a number"
    );
    assert!(!format!("{e:?}").contains("DUPONT"));
}

#[test]
fn oru_values_units_ranges_flags_and_statuses() {
    let raw = msg(&[
        msh(&[
            (3, "LAB"),
            (4, "BIO"),
            (7, "20240310120000"),
            (9, "ORU^R01^ORU_R01"),
            (10, "L1"),
            (11, "P"),
            (12, "2.5.1"),
        ]),
        pid(),
        seg("OBR", &[(1, "1"), (2, "PL-9"), (7, "20240310073000")]),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "SN"),
                (3, "1554-5^GLUCOSE^LN"),
                (5, "^182"),
                (6, "mg/dL"),
                (7, "70_105"),
                (8, "H"),
                (11, "F"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "2"),
                (2, "SN"),
                (3, "33914-3^eGFR^LN"),
                (5, ">^60"),
                (6, "mL/min/{1.73_m2}"),
                (7, ">60"),
                (11, "A"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "3"),
                (2, "SN"),
                (3, "X^Titre^L"),
                (5, "^1^:^128"),
                (11, "I"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "4"),
                (2, "TX"),
                (3, "N^Note^L"),
                (5, "ligne 1~ligne \\T\\ 2"),
                (11, "W"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "5"),
                (2, "CWE"),
                (3, "P^Culture^L"),
                (5, "POS^Positive^L"),
                (8, "A~S"),
                (11, "R"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "6"),
                (2, "NM"),
                (3, "2823-3^K^LN"),
                (4, "2"),
                (5, "<0.5"),
                (7, "3.5-5.0"),
                (8, "LL"),
                (11, "D"),
                (14, "20240310080000"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "7"),
                (2, "ED"),
                (3, "PDF^Report^L"),
                (5, "^AP^PDF^Base64^JVBERi0="),
                (11, "F"),
            ],
        ),
        seg(
            "OBX",
            &[(1, "8"), (2, "NM"), (3, "Q^Order detail^L"), (11, "O")],
        ),
    ]);
    let got = events(&intake().process(&raw));
    let obs: Vec<ev::ObservationRecorded> = got
        .iter()
        .map(|e| match &e.data {
            EventData::ObservationRecorded(o) => o.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(obs.len(), 7, "status O is not a result");
    let o = &obs[0];
    assert_eq!((o.value, o.comparator.as_deref()), (Some(182.0), None));
    assert_eq!(
        (o.reference_low, o.reference_high),
        (Some(70.0), Some(105.0))
    );
    assert_eq!(
        (o.abnormal_flag.as_deref(), o.status.as_str()),
        (Some("H"), "final")
    );
    assert_eq!(o.observation_id, "PL-9/1554-5");
    assert_eq!(got[0].occurred_at, ts("2024-03-10T06:30:00Z"), "OBR-7");
    let o = &obs[1];
    assert_eq!((o.value, o.comparator.as_deref()), (Some(60.0), Some(">")));
    assert_eq!((o.reference_low, o.reference_high), (Some(60.0), None));
    assert_eq!(o.status, "amended");
    assert_eq!(o.unit.as_deref(), Some("mL/min/{1.73_m2}"));
    assert_eq!(
        (obs[2].value, obs[2].value_text.as_deref()),
        (None, Some("1:128"))
    );
    assert_eq!(obs[2].status, "preliminary");
    assert_eq!(obs[2].code, "L|X");
    // Free text (a comment, a report: it may name the patient) is not kept in the event.
    assert_eq!(obs[3].value_text, None);
    assert_eq!(obs[3].status, "entered-in-error");
    assert_eq!(obs[4].value_text.as_deref(), Some("POS"));
    assert_eq!(obs[4].abnormal_flag.as_deref(), Some("A"));
    let o = &obs[5];
    assert_eq!((o.value, o.comparator.as_deref()), (Some(0.5), Some("<")));
    assert_eq!(
        (o.abnormal_flag.as_deref(), o.status.as_str()),
        (Some("LL"), "entered-in-error")
    );
    assert_eq!(o.observation_id, "PL-9/2823-3/2");
    assert_eq!(got[5].occurred_at, ts("2024-03-10T07:00:00Z"), "OBX-14");
    assert_eq!((obs[6].value, obs[6].value_text.as_deref()), (None, None));
}

#[test]
fn local_codes_are_translated_when_configured() {
    let mut cfg = config();
    cfg.local_codes.insert("L|KAL".into(), "2823-3".into());
    let raw = msg(&[
        msh(&[
            (7, "20240310120000"),
            (9, "ORU^R01"),
            (10, "L2"),
            (11, "P"),
            (12, "2.4"),
        ]),
        pid(),
        seg(
            "OBX",
            &[(2, "NM"), (3, "KAL^Kaliémie^L"), (5, "4.1"), (11, "F")],
        ),
        seg(
            "OBX",
            &[(2, "NM"), (3, "NA^Natrémie^L"), (5, "140"), (11, "F")],
        ),
    ]);
    let got = events(&Intake::new(cfg).process(&raw));
    let codes: Vec<String> = got
        .iter()
        .map(|e| match &e.data {
            EventData::ObservationRecorded(o) => o.code.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(codes, vec!["2823-3", "L|NA"]);
    assert_eq!(got[0].occurred_at, ts("2024-03-10T11:00:00Z"), "MSH-7 last");
}

#[test]
fn oru_errors() {
    let obx = |fields: &[(usize, &str)]| {
        let raw = msg(&[
            msh(&[
                (7, "20240310120000"),
                (9, "ORU^R01"),
                (10, "L3"),
                (11, "P"),
                (12, "2.5"),
            ]),
            pid(),
            seg("OBR", &[(1, "1")]),
            seg("OBX", &[(1, "1")]),
            seg("OBX", fields),
        ]);
        let p = intake().process(&raw);
        refused(&p).to_string()
    };
    assert_eq!(
        obx(&[(2, "NM"), (3, "1^a^LN"), (5, "1"), (11, "Q")])
            .split(':')
            .next(),
        Some("OBX-11"),
        "the first OBX has no status: the error names it"
    );
    let raw = msg(&[
        msh(&[
            (7, "20240310120000"),
            (9, "ORU^R01"),
            (10, "L3"),
            (11, "P"),
            (12, "2.5"),
        ]),
        pid(),
        seg("OBX", &[(2, "NM"), (3, "1^a^LN"), (5, "1"), (11, "Q")]),
    ]);
    let e = intake().process(&raw);
    assert_eq!(
        refused(&e).to_string(),
        "OBX-11: result status is not one of F, C, A, P, R, I, S, U, X, N, W, D or O"
    );
    let raw = msg(&[
        msh(&[
            (7, "20240310120000"),
            (9, "ORU^R01"),
            (10, "L4"),
            (11, "P"),
            (12, "2.5"),
        ]),
        seg("OBX", &[(2, "NM"), (3, "1^a^LN"), (5, "1"), (11, "F")]),
    ]);
    assert_eq!(
        refused(&intake().process(&raw)).to_string(),
        "required segment PID is missing"
    );
}

#[test]
fn several_patients_in_one_oru() {
    let raw = msg(&[
        msh(&[
            (7, "20240310120000"),
            (9, "ORU^R01"),
            (10, "L5"),
            (11, "P"),
            (12, "2.5"),
        ]),
        pid(),
        seg("OBX", &[(2, "NM"), (3, "1^a^LN"), (5, "1"), (11, "F")]),
        seg("PID", &[(3, "IPP-2^^^HOSP&1.2.3.4.5&ISO^PI")]),
        seg("OBX", &[(2, "NM"), (3, "1^a^LN"), (5, "2"), (11, "F")]),
    ]);
    let got = events(&intake().process(&raw));
    assert_eq!(got[0].subject, local_subject());
    assert_eq!(
        got[1].subject,
        subject(&PatientIdentifier::local("1.2.3.4.5", "IPP-2"))
    );
}

#[test]
fn timestamps_are_paris_time_across_dst() {
    let at = |t: &str| {
        let raw = msg(&[
            adt_msh("A01", "T1"),
            pid(),
            seg("PV1", &[(19, "V"), (44, t)]),
        ]);
        events(&intake().process(&raw))[0].occurred_at
    };
    assert_eq!(
        at("20240331023000"),
        ts("2024-03-31T01:30:00Z"),
        "gap: moved forward"
    );
    assert_eq!(
        at("20241027023000"),
        ts("2024-10-27T00:30:00Z"),
        "fold: first instant"
    );
    assert_eq!(at("20240701120000"), ts("2024-07-01T10:00:00Z"));
    assert_eq!(
        at("20240701120000-0400"),
        ts("2024-07-01T16:00:00Z"),
        "explicit offset"
    );
}

#[test]
fn event_ids_are_deterministic_and_distinct() {
    let raw = data("pamfr/oru_r01_latin1.hl7");
    let a = events(&intake().process(&raw));
    let b = events(&intake().process(&raw));
    assert_eq!(a, b, "same message, same events and ids");
    let mut ids: Vec<&str> = a.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), a.len());
    // Another tenant, another control id: other ids.
    let mut cfg = config();
    cfg.tenant = "cpts-sud".into();
    assert_ne!(events(&Intake::new(cfg).process(&raw))[0].id, a[0].id);
    let other = String::from_utf8_lossy(&raw).replace("LAB-0001", "LAB-0002");
    assert_ne!(events(&intake().process(other.as_bytes()))[0].id, a[0].id);
}

#[test]
fn non_default_encoding_characters_and_truncation() {
    let raw = "MSH#$~!@#HIS#HOSP#PARCOURS#CPTS#20240115103000##ADT$A01#X1#P#2.5\r\
               PID#1##IPP-1$$$HOSP@1.2.3.4.5@ISO$PI##DOE$JANE\r\
               PV1#1#I#################V!F!1";
    let got = events(&intake().process(raw.as_bytes()));
    let EventData::EncounterAdmitted(a) = &got[0].data else {
        panic!()
    };
    assert_eq!(a.encounter_id, "V#1", "escape \\F\\ is the field separator");
    assert_eq!(got[0].subject, local_subject());
    let p = intake().process(raw.as_bytes());
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert!(
        ack.starts_with("MSH#$~!@#PARCOURS#CPTS#HIS#HOSP#20240115103000##ACK$A01$ACK#"),
        "{ack}"
    );

    let raw = msg(&[
        adt_msh("A01", "X2")
            .replace("^~\\&", "^~\\&#")
            .replace("|2.5", "|2.7"),
        pid(),
        seg("PV1", &[(19, "V")]),
    ]);
    let p = intake().process(&raw);
    assert_eq!(events(&p).len(), 1);
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert!(ack.starts_with("MSH|^~\\&#|PARCOURS|CPTS|HIS|"), "{ack}");
}

// ---------------------------------------------------------------------------------------
// IHE PAM-FR

fn pam(file: &str) -> Vec<Event> {
    events(&intake().process(&data(&format!("pamfr/{file}"))))
}

const PAM_SRC: &str = "hl7v2/GAM@CHU-NORD";

fn ins() -> String {
    subject(&PatientIdentifier::ins(OID_INS_NIR, "280079912345678"))
}

fn ipp() -> String {
    subject(&PatientIdentifier::local(
        "1.2.250.1.211.10.200.2",
        "123456",
    ))
}

#[test]
fn pamfr_admission_with_a_qualified_ins() {
    let want = event(
        &ins(),
        PAM_SRC,
        "2026-03-02T08:00:00Z",
        EventData::EncounterAdmitted(ev::EncounterAdmitted {
            encounter_id: "V-2026-0042".into(),
            class: "inpatient".into(),
            facility: Some("750000001".into()),
        }),
    );
    assert_eq!(
        without_ids(&pam("a01_admission_ins_qualified.hl7")),
        vec![linked("2026-03-02T08:00:00Z"), want]
    );
}

/// The identity link of the PAM-FR samples' qualified patient: the IPP's key is the
/// INS's, from the message's first event's clinical time.
fn linked(at: &str) -> Event {
    event(
        &ins(),
        PAM_SRC,
        at,
        EventData::IdentityLinked(ev::IdentityLinked {
            local_subject: ipp(),
        }),
    )
}

#[test]
fn a_link_leaves_the_ids_of_the_messages_events_as_they_were() {
    // The same discharge with the identity provisional (no link) and qualified (link):
    // the discharge's id is the same (ids do not count links), the link's its own.
    let vali = data("pamfr/a03_discharge_death.hl7");
    let text = String::from_utf8(vali.clone()).expect("utf-8");
    let prov = text
        .replace("||VALI\r", "||PROV\r")
        .replace("||VALI\n", "||PROV\n");
    assert_ne!(prov, text, "the sample is qualified");
    let (with, without) = (
        events(&intake().process(&vali)),
        events(&intake().process(prov.as_bytes())),
    );
    assert_eq!(with.len(), without.len() + 1);
    assert!(matches!(with[0].data, EventData::IdentityLinked(_)));
    let ids = |e: &[Event]| e.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&with[1..]), ids(&without));
    assert!(!ids(&without).contains(&with[0].id));
}

#[test]
fn an_identity_update_teaches_the_link_alone() {
    // ADT^A31 (and A28, A08 without a stay …): parcours does not use the movement, but a
    // qualified INS with the IPP is a link; without one the message is ignored as before.
    let pid = "PID|1||123456^^^CHU-NORD&1.2.250.1.211.10.200.2&ISO^PI~280079912345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||MARTIN^Hélène||19450704|F";
    let to_32 = "|".repeat(24);
    let update = |reliability: &str| {
        format!(
            "MSH|^~\\&|GAM|CHU-NORD^1.2.250.1.211.10.200.1^ISO|PARCOURS|CPTS-NORD|20260311100000||ADT^A31^ADT_A05|GAM-0031|P|2.5^FRA^2.11\rEVN||20260311095500\r{pid}{to_32}{reliability}\rPV1|1|N\r"
        )
    };
    let got = without_ids(&events(&intake().process(update("VALI").as_bytes())));
    assert_eq!(got, vec![linked("2026-03-11T08:55:00Z")]);
    let p = intake().process(update("PROV").as_bytes());
    assert!(
        matches!(&p.outcome, Outcome::Ignored(r) if r.contains("ADT^A31")),
        "{:?}",
        p.outcome
    );
    // An IPP without an INS, or an INS without an IPP: nothing to link.
    let ipp_only = update("VALI").replace(
        "~280079912345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS",
        "",
    );
    assert!(matches!(
        intake().process(ipp_only.as_bytes()).outcome,
        Outcome::Ignored(_)
    ));
    let ins_only = update("VALI").replace("123456^^^CHU-NORD&1.2.250.1.211.10.200.2&ISO^PI~", "");
    assert!(matches!(
        intake().process(ins_only.as_bytes()).outcome,
        Outcome::Ignored(_)
    ));
}

#[test]
fn pamfr_discharge_home_with_an_unqualified_identity_uses_the_ipp() {
    let at = "2026-03-10T15:00:00Z";
    let want = vec![
        event(
            &ipp(),
            PAM_SRC,
            at,
            EventData::EncounterDischarged(ev::EncounterDischarged {
                encounter_id: "V-2026-0042".into(),
                class: "inpatient".into(),
                destination: "home".into(),
                diagnoses: vec!["I50.0".into(), "E11.9".into()],
                facility: Some("750000001".into()),
                admitted_at: Some(ts("2026-03-02T08:00:00Z")),
            }),
        ),
        // The stay's diagnoses (CIM-10, DG1-5 empty) at the discharge instant.
        event(&ipp(), PAM_SRC, at, diagnosis("I50.0", "icd-10")),
        event(&ipp(), PAM_SRC, at, diagnosis("E11.9", "icd-10")),
    ];
    // PV1-45 is empty: ZBE-2 gives the instant; ZFM-2 = 8 (home) wins over PV1-36 = 3.
    assert_eq!(
        without_ids(&pam("a03_discharge_home_not_qualified.hl7")),
        want
    );
}

#[test]
fn pamfr_discharges_nursing_home_death_cancel_update() {
    let got = pam("a03_discharge_nursing_home.hl7");
    let EventData::EncounterDischarged(d) = &got[0].data else {
        panic!()
    };
    assert_eq!(d.destination, "nursing-home", "ZFM-2 8 + ZFM-4 7");
    assert_eq!(
        got[0].occurred_at,
        ts("2026-03-10T14:45:00Z"),
        "PV1-45 first"
    );

    let mut got = without_ids(&pam("a03_discharge_death.hl7"));
    assert_eq!(got.remove(0), linked("2026-03-11T06:30:00Z"));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].subject, ins());
    assert!(
        matches!(&got[0].data, EventData::EncounterDischarged(d) if d.destination == "deceased")
    );
    assert_eq!(
        got[1],
        event(
            &ins(),
            PAM_SRC,
            "2026-03-11T06:10:00Z",
            EventData::PatientDeceased(ev::PatientDeceased {})
        )
    );

    let cancel = EventData::EncounterDischargeCancelled(ev::EncounterDischargeCancelled {
        encounter_id: "V-2026-0042".into(),
    });
    assert_eq!(
        without_ids(&pam("a13_cancel_discharge.hl7")),
        vec![event(
            &ipp(),
            PAM_SRC,
            "2026-03-10T15:55:00Z",
            cancel.clone()
        )]
    );
    assert_eq!(
        without_ids(&pam("a03_zbe_cancel.hl7")),
        vec![event(&ipp(), PAM_SRC, "2026-03-10T16:10:00Z", cancel)],
        "A03 with ZBE-4 CANCEL cancels the discharge"
    );
    assert_eq!(
        without_ids(&pam("z99_update_discharge.hl7")),
        vec![
            event(
                &ipp(),
                PAM_SRC,
                "2026-03-11T08:59:00Z",
                EventData::EncounterUpdated(ev::EncounterUpdated {
                    encounter_id: "V-2026-0042".into(),
                    diagnoses: vec!["I50.9".into()],
                    destination: Some("transfer".into()),
                })
            ),
            event(
                &ipp(),
                PAM_SRC,
                "2026-03-11T08:59:00Z",
                diagnosis("I50.9", "icd-10")
            )
        ]
    );
}

#[test]
fn pamfr_pending_cancel_admission_and_merge() {
    assert_eq!(
        without_ids(&pam("a16_pending_discharge.hl7")),
        vec![event(
            &ipp(),
            PAM_SRC,
            "2026-03-09T11:00:00Z",
            EventData::EncounterDischargePending(ev::EncounterDischargePending {
                encounter_id: "V-2026-0042".into(),
                expected_at: Some(ts("2026-03-10T13:00:00Z")),
            })
        )]
    );
    assert_eq!(
        without_ids(&pam("a11_cancel_admission.hl7")),
        vec![event(
            &ipp(),
            PAM_SRC,
            "2026-03-02T08:58:00Z",
            EventData::EncounterAdmissionCancelled(ev::EncounterAdmissionCancelled {
                encounter_id: "V-2026-0042".into(),
            })
        )]
    );
    assert_eq!(
        without_ids(&pam("a40_merge.hl7")),
        vec![
            linked("2026-03-12T07:30:00Z"),
            event(
                &ins(),
                PAM_SRC,
                "2026-03-12T07:30:00Z",
                EventData::IdentityMerged(ev::IdentityMerged {
                    merged_subject: subject(&PatientIdentifier::local(
                        "1.2.250.1.211.10.200.2",
                        "654321"
                    )),
                })
            )
        ]
    );
}

#[test]
fn pamfr_test_ins_is_refused_unless_allowed() {
    let raw = data("pamfr/a01_test_ins.hl7");
    let p = intake().process(&raw);
    let e = refused(&p);
    assert!(
        matches!(e, IntakeError::Map(MapError::TestIdentity { .. })),
        "{e}"
    );
    assert_eq!(e.ack_code(), AckCode::Error);
    assert!(!e.to_string().contains("180017512345608"));
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert!(ack.contains("\rMSA|AE|GAM-0008\rERR||PID^1^3^2|204^Unknown key identifier^HL70357|E||||PID-3[2]: test INS"), "{ack}");

    let mut cfg = config();
    cfg.allow_test_ins = true;
    let got = events(&Intake::new(cfg).process(&raw));
    assert_eq!(
        got[0].subject,
        subject(&PatientIdentifier::ins(OID_INS_NIR_TEST, "180017512345608"))
    );
}

#[test]
fn pamfr_lab_results_in_latin1() {
    let mut got = pam("oru_r01_latin1.hl7");
    assert_eq!(got.len(), 6);
    assert!(
        matches!(&got.remove(0).data, EventData::IdentityLinked(l) if l.local_subject == ipp())
    );
    assert!(
        got.iter()
            .all(|e| e.subject == ins() && e.source == "hl7v2/SIL@CHU-NORD")
    );
    let obs: Vec<ev::ObservationRecorded> = got
        .iter()
        .map(|e| match &e.data {
            EventData::ObservationRecorded(o) => o.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        obs[0],
        ev::ObservationRecorded {
            observation_id: "RES-778/33762-6".into(),
            code: "33762-6".into(),
            value: Some(1792.5),
            comparator: None,
            value_text: None,
            unit: Some("ng/L".into()),
            status: "final".into(),
            reference_low: None,
            reference_high: Some(125.0),
            abnormal_flag: Some("H".into()),
        }
    );
    assert_eq!(got[0].occurred_at, ts("2026-03-15T06:45:00Z"));
    assert_eq!(
        (
            obs[1].value,
            obs[1].comparator.as_deref(),
            obs[1].status.as_str()
        ),
        (Some(6.0), Some(">"), "corrected")
    );
    assert_eq!(obs[2].code, "2823-3", "the alternate code OBX-3.4 is LOINC");
    assert_eq!(obs[2].value, Some(4.2), "decimal comma");
    assert_eq!(
        (obs[2].reference_low, obs[2].reference_high),
        (Some(3.5), Some(5.0))
    );
    assert_eq!(
        text_result(&data("pamfr/oru_r01_latin1.hl7")),
        "Hémolyse légère\nà contrôler"
    );
    assert_eq!(
        obs[3].value_text, None,
        "free text is not kept in the event"
    );
    assert_eq!(obs[4].status, "cancelled");
    // The ACK goes back in ISO-8859-1, as the message came.
    let p = intake().process(&data("pamfr/oru_r01_latin1.hl7"));
    let bytes = intake().ack_bytes(p.header.as_ref(), &p.ack());
    assert!(bytes.ends_with(b"|8859/1\rMSA|AA|LAB-0001\r"));
    assert_eq!(Charset::from_msh18("8859/1"), Some(Charset::Latin1));
}

/// The first text result (OBX-2 `ST`, `TX`, `FT`) of a message as decoded, its
/// repetitions one a line: what the character set tests read (the events do not keep
/// free text).
fn text_result(raw: &[u8]) -> String {
    let msg = intake().parse(raw).expect("the message parses");
    let obx = msg
        .segments()
        .filter(|s| s.name() == "OBX")
        .find(|s| matches!(s.field(2).value().as_deref(), Some("ST" | "TX" | "FT")))
        .expect("a text result");
    obx.field(5)
        .reps()
        .filter_map(|r| r.value())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Windows-1252 text: labelled `CP1252` (not in table 0211, what Windows systems write),
/// or labelled `8859/1` with Windows-1252 bytes in 0x80–0x9F (read as browsers do).
#[test]
fn windows_1252_text_labelled_as_such_or_as_latin1() {
    let latin1 = data("pamfr/oru_r01_latin1.hl7");
    let text = text_result;
    let replace = |raw: &[u8], from: &[u8], to: &[u8]| {
        let at = raw
            .windows(from.len())
            .position(|w| w == from)
            .expect("in the fixture");
        [&raw[..at], to, &raw[at + from.len()..]].concat()
    };
    // "Hémolyse légère" becomes "Hémolyse — cœur" (0x97, 0x9C: C1 codes in ISO-8859-1).
    let windows = replace(&latin1, b"l\xe9g\xe8re", b"\x97 c\x9cur");
    assert_eq!(text(&windows), "Hémolyse \u{2014} cœur\nà contrôler");
    let labelled = replace(&windows, b"|8859/1", b"|CP1252");
    assert_eq!(text(&labelled), "Hémolyse \u{2014} cœur\nà contrôler");
    // The ACK names the character set as the sender did.
    let p = intake().process(&labelled);
    let ack = intake().ack_bytes(p.header.as_ref(), &p.ack());
    assert!(ack.ends_with(b"|CP1252\rMSA|AA|LAB-0001\r"));
}

/// A bare `UNICODE` in MSH-18 (table 0211 before 2.5; lab analysers write it) is read as
/// UTF-8, strictly: Latin-1 bytes under that label are refused, not guessed.
#[test]
fn unicode_without_an_encoding_is_read_as_utf_8() {
    let latin1 = data("pamfr/oru_r01_latin1.hl7");
    let relabel = |raw: &[u8]| {
        let at = raw
            .windows(7)
            .position(|w| w == b"|8859/1")
            .expect("in the fixture");
        [&raw[..at], b"|UNICODE".as_slice(), &raw[at + 7..]].concat()
    };
    let utf8: Vec<u8> = latin1
        .iter()
        .map(|&b| char::from(b))
        .collect::<String>()
        .into_bytes();
    assert_eq!(text_result(&relabel(&utf8)), "Hémolyse légère\nà contrôler");
    let p = intake().process(&relabel(&latin1));
    let e = refused(&p);
    assert_eq!(e.ack_code(), AckCode::Reject, "{e}");
}

// ---------------------------------------------------------------------------------------
// Acknowledgements

#[test]
fn ack_swaps_applications_and_is_deterministic() {
    let raw = data("pamfr/a01_admission_ins_qualified.hl7");
    let p = intake().process(&raw);
    let a = intake().ack_text(p.header.as_ref(), &p.ack());
    let again = intake().process(&raw);
    assert_eq!(
        a,
        intake().ack_text(again.header.as_ref(), &again.ack()),
        "same message, same ACK"
    );
    let segs: Vec<&str> = a.trim_end_matches('\r').split('\r').collect();
    let msh: Vec<&str> = segs[0].split('|').collect();
    assert_eq!(
        &msh[..7],
        &[
            "MSH",
            "^~\\&",
            "PARCOURS",
            "CPTS-NORD",
            "GAM",
            "CHU-NORD^1.2.250.1.211.10.200.1^ISO",
            "20260302091500"
        ]
    );
    assert_eq!(msh[8], "ACK^A01^ACK");
    assert_eq!(msh[9].len(), 20);
    assert_eq!(&msh[10..12], &["P", "2.5^FRA^2.11"]);
    assert_eq!(msh[17], "UNICODE UTF-8");
    assert_eq!(segs[1], "MSA|AA|GAM-0001");
    assert_eq!(segs.len(), 2);
}

#[test]
fn ack_is_dated_when_made_in_paris_time_with_its_offset() {
    let raw = data("pamfr/a01_admission_ins_qualified.hl7");
    let p = intake().process(&raw);
    let msh7 = |at: &str| {
        let ack = intake().ack_text_at(p.header.as_ref(), &p.ack(), ts(at));
        ack.split('|').nth(6).unwrap_or_default().to_owned()
    };
    assert_eq!(msh7("2026-03-02T08:15:01Z"), "20260302091501+0100");
    assert_eq!(msh7("2026-07-14T10:00:00Z"), "20260714120000+0200");
    // The rest is the deterministic ACK.
    let at = intake().ack_text_at(p.header.as_ref(), &p.ack(), ts("2026-07-14T10:00:00Z"));
    assert_eq!(
        at.replacen("20260714120000+0200", "20260302091500", 1),
        intake().ack_text(p.header.as_ref(), &p.ack())
    );
}

/// The fields of an acknowledgement's ERR segment (`err[3]` is ERR-3).
fn err_fields(ack: &str) -> Vec<&str> {
    ack.split('\r')
        .find(|s| s.starts_with("ERR|"))
        .expect("ERR")
        .split('|')
        .collect()
}

/// An `AA` with what the pathways did not act on: one ERR, code 0 (accepted), severity
/// `W`, the reasons in ERR-8; no warning, no ERR.
#[test]
fn an_accept_with_warnings_says_them_in_a_warning_err() {
    let raw = msg(&[
        adt_msh("A01", "W1"),
        pid(),
        seg("PV1", &[(2, "I"), (19, "VIS-1")]),
    ]);
    let p = intake().process(&raw);
    let warned = parcours_hl7v2::Ack::accept_with_warnings(&[
        "heart-failure: result `2823-3` has no unit".to_owned(),
    ]);
    let ack = intake().ack_text(p.header.as_ref(), &warned);
    assert!(ack.contains("\rMSA|AA|W1\r"), "{ack}");
    let err = err_fields(&ack);
    assert_eq!(err[3], "0^Message accepted^HL70357", "{ack}");
    assert_eq!(err[4], "W", "{ack}");
    assert!(err[8].contains("has no unit"), "{ack}");
    let plain = intake().ack_text(
        p.header.as_ref(),
        &parcours_hl7v2::Ack::accept_with_warnings(&[]),
    );
    assert!(!plain.contains("ERR|"), "{plain}");
}

#[test]
fn err_gives_location_code_and_severity_from_v24_on_and_no_values() {
    for (version, err1) in [("2.4", true), ("2.5", false), ("2.8", false)] {
        let raw = msg(&[
            adt_msh("A01", "E1").replace("|2.5", &format!("|{version}")),
            pid(),
            seg("PV1", &[(2, "I"), (19, "VIS-1"), (44, "2024-01-15")]),
        ]);
        let p = intake().process(&raw);
        let ack = intake().ack_text(p.header.as_ref(), &p.ack());
        let err = err_fields(&ack);
        assert_eq!(
            err[2], "PV1^1^44^1^1",
            "{version}: ERR-2, the error location"
        );
        assert_eq!(err[3], "102^Data type error^HL70357", "{version}: ERR-3");
        assert_eq!(err[4], "E", "{version}: ERR-4, the severity");
        assert!(
            err[8].starts_with("PV1-44.1: date/time is invalid"),
            "{version}: ERR-8"
        );
        assert_eq!(!err[1].is_empty(), err1, "{version}: ERR-1 only before 2.5");
        assert!(!ack.contains("2024-01-15"), "{version}: no value: {ack}");
        let msa: Vec<&str> = ack
            .split('\r')
            .nth(1)
            .unwrap_or_default()
            .split('|')
            .collect();
        assert_eq!(msa[..3], ["MSA", "AE", "E1"]);
        assert_eq!(msa.len() > 3, err1, "{version}: MSA-3 only before 2.5");
    }
}

#[test]
fn ack_for_old_versions_carries_msa3_and_err1() {
    let raw = msg(&[
        adt_msh("A01", "OLD1").replace("|2.5", "|2.3"),
        pid(),
        seg("PV1", &[(2, "I")]),
    ]);
    let p = intake().process(&raw);
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert_eq!(
        ack,
        "MSH|^~\\&|PARCOURS|CPTS|HIS|HOSP^1.2.3.4^ISO|20240115103000||ACK^A01|".to_owned()
            + ack.split('|').nth(9).unwrap_or_default()
            + "|P|2.3\r\
               MSA|AE|OLD1|PV1-19: visit number (PV1-19, or PID-18 account number) is missing\r\
               ERR|PV1^1^19^101&Required field missing&HL70357|PV1^1^19^1|101^Required field missing^HL70357|E||||\
               PV1-19: visit number (PV1-19, or PID-18 account number) is missing\r"
    );
}

#[test]
fn ack_for_unreadable_bytes() {
    let p = intake().process(b"\x00garbage");
    assert!(p.header.is_none());
    let ack = intake().ack_text(None, &p.ack());
    assert_eq!(
        ack,
        "MSH|^~\\&|PARCOURS||||||ACK|ACK|P|2.5\rMSA|AR|\r\
         ERR|||102^Data type error^HL70357|E||||control byte 0x00 at offset 0: not allowed in an HL7 message\r"
    );
    // A message refused by the guard still gets its control id back when MSH is readable.
    let mut raw = adt_msh("A01", "BIG1").into_bytes();
    raw.extend(std::iter::repeat_n(b'|', 300).chain(*b"\rPID|1"));
    let p = intake().process(&raw);
    assert!(matches!(
        refused(&p),
        IntakeError::Guard(GuardError::TooManyFields { .. })
    ));
    let ack = intake().ack_text(p.header.as_ref(), &p.ack());
    assert!(ack.contains("\rMSA|AR|BIG1\r"), "{ack}");
    assert!(ack.contains("max_fields_per_segment"), "{ack}");
}

#[test]
fn caps_are_enforced_before_parsing() {
    let mut cfg = config();
    cfg.caps = Caps {
        max_message_bytes: 200,
        max_segments: 3,
        max_repetitions_per_field: 3,
        max_delimiters_per_segment: 40,
        ..Caps::default()
    };
    let intake = Intake::new(cfg);
    let head = adt_msh("A01", "C1");
    let cases: Vec<(String, &str)> = vec![
        (format!("{head}\r{}", "Z".repeat(300)), "max_message_bytes"),
        (format!("{head}\rPID|1\rPV1|1\rZZ1|1"), "max_segments"),
        (
            format!("{head}\rPID|1|a~b~c~d"),
            "max_repetitions_per_field",
        ),
        (
            format!("{head}\rPID|{}", "^".repeat(50)),
            "max_delimiters_per_segment",
        ),
    ];
    for (raw, limit) in cases {
        let p = intake.process(raw.as_bytes());
        let e = refused(&p);
        assert!(e.to_string().contains(limit), "{e}");
        assert_eq!(e.ack_code(), AckCode::Reject);
    }
}
