//! ADT messages (with the IHE PAM-FR ZBE/ZFM segments) to encounter, patient and
//! identity events.

use jiff::Timestamp;
use parcours_core::events::{EventData, data, normalise_icd10};

use super::tables::{
    destination_from_pv1_36, destination_from_zfm, encounter_class, is_icd10_system,
    is_snomed_system, looks_like_icd10,
};
use super::{Ctx, Disposition, identity};
use crate::error::MapError;
use crate::message::{Comp, Rep, Seg};

/// ZBE-4: what the message does to the movement (PAM-FR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Insert,
    Update,
    Cancel,
}

/// What an ADT message becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Admitted,
    Discharged,
    AdmissionCancelled,
    DischargeCancelled,
    DischargePending,
    Updated,
    Merge,
}

fn zbe_action(cx: &Ctx<'_>) -> Result<Option<Action>, MapError> {
    let Some(zbe) = cx.msg.segment("ZBE") else {
        return Ok(None);
    };
    let f = zbe.field(4);
    match f.value().map(|v| v.to_ascii_uppercase()).as_deref() {
        None => Ok(None),
        Some("INSERT") => Ok(Some(Action::Insert)),
        Some("UPDATE") => Ok(Some(Action::Update)),
        Some("CANCEL") => Ok(Some(Action::Cancel)),
        Some(_) => Err(MapError::UnknownCode {
            location: f.location(),
            what: "movement action",
            expected: "INSERT, UPDATE or CANCEL",
        }),
    }
}

fn kind_of(trigger: &str, action: Option<Action>) -> Result<Kind, Disposition> {
    use Kind::*;
    match action {
        Some(Action::Cancel) => match trigger {
            "A01" | "A04" | "A11" => Ok(AdmissionCancelled),
            "A03" | "A13" => Ok(DischargeCancelled),
            _ => Err(Disposition::Ignored(format!(
                "{} with ZBE-4 CANCEL acknowledged and ignored: parcours has no event for cancelling this movement",
                crate::error::message_type_name("ADT", trigger)
                    .as_deref()
                    .unwrap_or("ADT message")
            ))),
        },
        Some(Action::Update) => match trigger {
            "A16" => Ok(DischargePending),
            "A01" | "A04" | "A03" | "A08" | "Z99" => Ok(Updated),
            _ => Err(Disposition::Unhandled),
        },
        Some(Action::Insert) | None => match trigger {
            "A01" | "A04" => Ok(Admitted),
            "A03" => Ok(Discharged),
            "A11" => Ok(AdmissionCancelled),
            "A13" => Ok(DischargeCancelled),
            "A16" => Ok(DischargePending),
            "A08" | "Z99" => Ok(Updated),
            // A47 (IHE PAM, change of the patient identifier list: MRG-1 the identifier
            // that is no longer to be used, PID-3 the one that replaces it) is the same
            // act for parcours: what the old key had goes to the new one, which it leads
            // to from then on.
            "A40" | "A47" => Ok(Merge),
            _ => Err(Disposition::Unhandled),
        },
    }
}

/// ADT triggers whose DG1 segments record diagnoses (`diagnosis.recorded`): the
/// messages that state what the patient has — admission, registration, pre-admission,
/// discharge, changes of patient class, pending admission or discharge, updates of
/// the stay or of the person (A28, A31), the PAM-FR update Z99. Cancellations (A11,
/// A13 …, ZBE-4 `CANCEL`) and merges do not: what they carry is being taken back or
/// moved, not stated.
const DIAGNOSIS_TRIGGERS: &[&str] = &[
    "A01", "A03", "A04", "A05", "A06", "A07", "A08", "A14", "A16", "A28", "A31", "Z99",
];

pub(crate) fn map(cx: &mut Ctx<'_>, trigger: &str) -> Result<Disposition, MapError> {
    let action = zbe_action(cx)?;
    let records_diagnoses = action != Some(Action::Cancel) && DIAGNOSIS_TRIGGERS.contains(&trigger);
    let kind = match kind_of(trigger, action) {
        Ok(kind) => kind,
        // A trigger with no encounter event (A05, A28, A31 …) may still state diagnoses,
        // and its PID link a qualified INS to a local identifier.
        Err(d) if records_diagnoses => {
            let d = diagnoses_only(cx, d)?;
            return Ok(learn_only(cx, d));
        }
        Err(d) => return Ok(learn_only(cx, d)),
    };
    if kind == Kind::Merge {
        return merge(cx);
    }
    let disposition = movement(cx, kind, trigger, records_diagnoses)?;
    let Some(pid) = cx.msg.segment("PID") else {
        return Ok(disposition);
    };
    match disposition {
        Disposition::Events => {
            // The PID was read to name the events: its identity is usable.
            let pair = identity::link(pid, cx.identity)?;
            cx.link(0, pair, None);
            Ok(Disposition::Events)
        }
        d => Ok(learn_only(cx, d)),
    }
}

/// A message whose movement parcours does not use (A28, A31 — the PAM-FR identity
/// update that often brings the qualification —, an A08 without a stay …) still says
/// whose local identifier the qualified INS is: `identity.linked` alone, at EVN-6,
/// EVN-2 or MSH-7. A PID that cannot be read (or one with a test INS refused) keeps the
/// message ignored as before.
fn learn_only(cx: &mut Ctx<'_>, disposition: Disposition) -> Disposition {
    let Some(pid) = cx.msg.segment("PID") else {
        return disposition;
    };
    let Ok(Some(pair)) = identity::link(pid, cx.identity) else {
        return disposition;
    };
    let evn = cx.msg.segment("EVN");
    let at = match cx.first_ts(&[
        evn.map(|s| s.field(6).comp(1)),
        evn.map(|s| s.field(2).comp(1)),
    ]) {
        Ok(Some(t)) => Some(t),
        _ => cx.message_time().ok(),
    };
    cx.link(0, Some(pair), at);
    if cx.events.is_empty() {
        disposition
    } else {
        Disposition::Events
    }
}

/// The events of an admission, discharge, cancellation, pending discharge or update, and
/// of the diagnoses it states when `records_diagnoses`.
fn movement(
    cx: &mut Ctx<'_>,
    kind: Kind,
    trigger: &str,
    records_diagnoses: bool,
) -> Result<Disposition, MapError> {
    let pid = cx
        .msg
        .segment("PID")
        .ok_or(MapError::MissingSegment { segment: "PID" })?;
    let pv1 = cx
        .msg
        .segment("PV1")
        .ok_or(MapError::MissingSegment { segment: "PV1" })?;
    let subject = cx.subject(&identity::patient(pid, cx.identity)?);
    let encounter_id = match (encounter_id(pid, pv1), kind) {
        (Ok(id), _) => id,
        // A08 also carries demographic-only updates, with no stay: nothing to update,
        // but the diagnoses it states are recorded.
        (Err(_), Kind::Updated) => {
            return diagnoses_only(
                cx,
                Disposition::Ignored(format!(
                    "ADT^{trigger} without a visit number (PV1-19, PID-18) acknowledged and ignored: parcours uses it for stay updates only"
                )),
            );
        }
        (Err(e), _) => return Err(e),
    };
    let evn = cx.msg.segment("EVN");
    let zbe = cx.msg.segment("ZBE");
    let evn6 = evn.map(|s| s.field(6).comp(1));
    let evn2 = evn.map(|s| s.field(2).comp(1));
    let zbe2 = zbe.map(|s| s.field(2).comp(1));
    let stated = if records_diagnoses {
        stated_diagnoses(cx)
    } else {
        Vec::new()
    };
    let when = |cx: &Ctx<'_>, chain: &[Option<Comp<'_>>]| -> Result<Timestamp, MapError> {
        match cx.first_ts(chain)? {
            Some(t) => Ok(t),
            None => cx.message_time(),
        }
    };
    // The instant of the message's own event: its diagnoses are recorded then.
    let at = match kind {
        Kind::Admitted => {
            let at = when(cx, &[Some(pv1.field(44).comp(1)), zbe2, evn6, evn2])?;
            let data = data::EncounterAdmitted {
                encounter_id,
                class: encounter_class(pv1.field(2).comp(1).value().as_deref()).into(),
                facility: facility(cx, pv1),
            };
            cx.push(subject.clone(), at, EventData::EncounterAdmitted(data));
            at
        }
        Kind::Discharged => {
            let at = when(cx, &[Some(pv1.field(45).comp(1)), zbe2, evn6, evn2])?;
            let mut destination =
                destination(cx, pv1).unwrap_or(parcours_core::events::UNSTATED_DESTINATION);
            if reports_death(pid) {
                destination = "deceased";
            }
            let data = data::EncounterDischarged {
                encounter_id,
                class: encounter_class(pv1.field(2).comp(1).value().as_deref()).into(),
                destination: destination.into(),
                diagnoses: diagnoses(cx),
                facility: facility(cx, pv1),
                admitted_at: cx.ts(pv1.field(44).comp(1))?,
            };
            cx.push(subject.clone(), at, EventData::EncounterDischarged(data));
            if destination == "deceased" {
                let death = cx.ts(pid.field(29).comp(1))?.unwrap_or(at);
                cx.push(
                    subject,
                    death,
                    EventData::PatientDeceased(data::PatientDeceased {}),
                );
                // A patient who died is enrolled in no follow-up: no diagnosis recorded.
                return Ok(Disposition::Events);
            }
            at
        }
        Kind::AdmissionCancelled => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterAdmissionCancelled { encounter_id };
            cx.push(
                subject.clone(),
                at,
                EventData::EncounterAdmissionCancelled(data),
            );
            at
        }
        Kind::DischargeCancelled => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterDischargeCancelled { encounter_id };
            cx.push(
                subject.clone(),
                at,
                EventData::EncounterDischargeCancelled(data),
            );
            at
        }
        Kind::DischargePending => {
            let at = when(cx, &[evn6, evn2])?;
            let expected_at = match cx.msg.segment("PV2") {
                Some(pv2) => cx.ts(pv2.field(9).comp(1))?,
                None => None,
            };
            let data = data::EncounterDischargePending {
                encounter_id,
                expected_at,
            };
            cx.push(
                subject.clone(),
                at,
                EventData::EncounterDischargePending(data),
            );
            at
        }
        Kind::Updated => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterUpdated {
                encounter_id,
                diagnoses: diagnoses(cx),
                destination: destination(cx, pv1).map(Into::into),
            };
            cx.push(subject.clone(), at, EventData::EncounterUpdated(data));
            at
        }
        Kind::Merge => return Ok(Disposition::Events),
    };
    if !reports_death(pid) {
        record_diagnoses(cx, &subject, stated, at);
    }
    Ok(Disposition::Events)
}

/// PV1-19.1 (visit number), else PID-18.1 (account number: the NDA in PAM-FR).
fn encounter_id(pid: Seg<'_>, pv1: Seg<'_>) -> Result<String, MapError> {
    pv1.field(19)
        .comp(1)
        .value()
        .or_else(|| pid.field(18).comp(1).value())
        .ok_or_else(|| MapError::MissingField {
            location: pv1.field(19).location(),
            what: "visit number (PV1-19, or PID-18 account number)",
        })
}

/// PV1-3.4 (the location's facility: universal id, else namespace id), else MSH-4.
fn facility(cx: &Ctx<'_>, pv1: Seg<'_>) -> Option<String> {
    let loc = pv1.field(3).comp(4);
    let msh4 = cx.msg.msh().field(4);
    loc.sub(2)
        .value()
        .or_else(|| loc.sub(1).value())
        .or_else(|| msh4.comp(2).value())
        .or_else(|| msh4.comp(1).value())
}

/// ZFM-2/ZFM-4 (PAM-FR PMSI discharge mode and destination), else PV1-36.
fn destination(cx: &Ctx<'_>, pv1: Seg<'_>) -> Option<&'static str> {
    if let Some(zfm) = cx.msg.segment("ZFM") {
        let mode = zfm.field(2).comp(1).value();
        let dest = zfm.field(4).comp(1).value();
        if let Some(d) = mode.and_then(|m| destination_from_zfm(&m, dest.as_deref())) {
            return Some(d);
        }
    }
    pv1.field(36)
        .comp(1)
        .value()
        .map(|code| destination_from_pv1_36(&code, cx.french))
}

/// PID-30 (patient death indicator) is `Y`.
fn reports_death(pid: Seg<'_>) -> bool {
    pid.field(30)
        .value()
        .is_some_and(|v| v.eq_ignore_ascii_case("Y"))
}

/// DG1-21 (diagnosis action code, HL7 table 0206, v2.5 on) is `D`: the sender deletes
/// this diagnosis. It is then neither a code of the stay nor a recorded diagnosis.
fn deleted(dg1: Seg<'_>) -> bool {
    dg1.field(21)
        .value()
        .is_some_and(|v| v.eq_ignore_ascii_case("D"))
}

/// Every DG1-3 code, in order, without duplicates; ICD-10 codes get their dot. Deleted
/// diagnoses (DG1-21 `D`) are left out.
fn diagnoses(cx: &Ctx<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for dg1 in cx.msg.segments().filter(|s| s.name() == "DG1") {
        if deleted(dg1) {
            continue;
        }
        for rep in dg1.field(3).reps() {
            let Some(code) = rep.comp(1).value() else {
                continue;
            };
            let system = rep.comp(3).value().unwrap_or_default();
            let code = if is_icd10_system(&system) {
                normalise_icd10(&code)
            } else {
                code
            };
            if !out.contains(&code) {
                out.push(code);
            }
        }
    }
    out
}

/// A diagnosis a DG1 states, for `diagnosis.recorded`.
struct Stated {
    code: String,
    /// `icd-10` or `snomed`, as the FHIR Condition mapping names them.
    system: &'static str,
}

/// The diagnoses the message's DG1 segments state, in message order, one per DG1-3
/// repetition (the same code twice in a message counts once): the ICD-10 (CIM-10) code
/// of the repetition when it has one, else its SNOMED CT code (identifier, then
/// alternate identifier). The coding system is DG1-3.3 (DG1-3.6 for the alternate), else
/// DG1-2 (coding method, v2.3–v2.5); with neither, a code shaped like an ICD-10 code is
/// read as one. Codes of other systems (ICD-9, local) are not used; deleted diagnoses
/// (DG1-21 `D`) are not recorded. DG1-5 (when the diagnosis was made) is not read: see
/// [`record_diagnoses`].
fn stated_diagnoses(cx: &Ctx<'_>) -> Vec<Stated> {
    let mut out: Vec<Stated> = Vec::new();
    for dg1 in cx.msg.segments().filter(|s| s.name() == "DG1") {
        if deleted(dg1) {
            continue;
        }
        let method = dg1.field(2).comp(1).value();
        for rep in dg1.field(3).reps() {
            let Some((code, system)) = diagnosis_code(rep, method.as_deref()) else {
                continue;
            };
            if out.iter().any(|d| d.code == code && d.system == system) {
                continue;
            }
            out.push(Stated { code, system });
        }
    }
    out
}

/// The code and system of one DG1-3 repetition (a CE/CWE: identifier, text, system,
/// alternate identifier, alternate text, alternate system): ICD-10 first, else SNOMED CT.
fn diagnosis_code(rep: Rep<'_>, method: Option<&str>) -> Option<(String, &'static str)> {
    let pairs = [
        (
            rep.comp(1).value(),
            rep.comp(3).value().or_else(|| method.map(str::to_owned)),
        ),
        (rep.comp(4).value(), rep.comp(6).value()),
    ];
    let mut snomed = None;
    for (code, system) in pairs {
        let Some(code) = code.filter(|c| c.len() <= 32) else {
            continue;
        };
        match system.as_deref() {
            Some(s) if is_icd10_system(s) => return Some((normalise_icd10(&code), "icd-10")),
            None if looks_like_icd10(&code) => return Some((normalise_icd10(&code), "icd-10")),
            Some(s) if is_snomed_system(s) && snomed.is_none() => {
                snomed = Some((code, "snomed"));
            }
            _ => {}
        }
    }
    snomed
}

/// One `diagnosis.recorded` per stated diagnosis, after the message's other events, at
/// `at` (the instant of the message's event: when the hospital recorded it). Not at DG1-5,
/// when the diagnosis was made: a diabetes diagnosed years ago and restated on every
/// admission would start its pathway then, every deadline since overdue at once. Ids are
/// keyed by the message and the code (not the position), so a resent message gives the
/// same ids.
fn record_diagnoses(cx: &mut Ctx<'_>, subject: &str, stated: Vec<Stated>, at: Timestamp) {
    for d in stated {
        let part = format!("{}|{}", d.system, d.code);
        let data = data::DiagnosisRecorded {
            code: d.code,
            system: d.system.to_owned(),
        };
        cx.push_keyed(
            "diagnosis",
            &part,
            subject.to_owned(),
            at,
            EventData::DiagnosisRecorded(data),
        );
    }
}

/// A message with no encounter event to give (A05, A28, A31, an A08 without a visit
/// number): its diagnoses (at EVN-6, else EVN-2, MSH-7), or `otherwise` when
/// it states none (or reports the patient's death).
fn diagnoses_only(cx: &mut Ctx<'_>, otherwise: Disposition) -> Result<Disposition, MapError> {
    let stated = stated_diagnoses(cx);
    if stated.is_empty() {
        return Ok(otherwise);
    }
    let pid = cx
        .msg
        .segment("PID")
        .ok_or(MapError::MissingSegment { segment: "PID" })?;
    if reports_death(pid) {
        return Ok(otherwise);
    }
    let subject = cx.subject(&identity::patient(pid, cx.identity)?);
    let evn = cx.msg.segment("EVN");
    let at = match cx.first_ts(&[
        evn.map(|s| s.field(6).comp(1)),
        evn.map(|s| s.field(2).comp(1)),
    ])? {
        Some(t) => t,
        None => cx.message_time()?,
    };
    record_diagnoses(cx, &subject, stated, at);
    Ok(Disposition::Events)
}

/// ADT^A40 (merge) and ADT^A47 (change of identifier): one identity.merged per PID/MRG
/// pair (after the PID's identity link, if it has one).
fn merge(cx: &mut Ctx<'_>) -> Result<Disposition, MapError> {
    let mut pairs: Vec<(Seg<'_>, Seg<'_>)> = Vec::new();
    let mut last_pid: Option<Seg<'_>> = None;
    for seg in cx.msg.segments() {
        match seg.name() {
            "PID" => last_pid = Some(seg),
            "MRG" => {
                let pid = last_pid.ok_or(MapError::MissingSegment { segment: "PID" })?;
                pairs.push((pid, seg));
            }
            _ => {}
        }
    }
    if pairs.is_empty() {
        return Err(if last_pid.is_none() {
            MapError::MissingSegment { segment: "PID" }
        } else {
            MapError::MissingSegment { segment: "MRG" }
        });
    }
    let evn = cx.msg.segment("EVN");
    let at = match cx.first_ts(&[
        evn.map(|s| s.field(6).comp(1)),
        evn.map(|s| s.field(2).comp(1)),
    ])? {
        Some(t) => t,
        None => cx.message_time()?,
    };
    for (pid, mrg) in pairs {
        let subject = cx.subject(&identity::patient(pid, cx.identity)?);
        let merged_subject = cx.subject(&identity::merged(mrg, cx.identity)?);
        // The surviving identity's own link first (its qualified INS and local
        // identifier), so the merge reaches where its instances are.
        let start = cx.events.len();
        cx.link(start, identity::link(pid, cx.identity)?, Some(at));
        if merged_subject == subject {
            continue;
        }
        cx.push(
            subject,
            at,
            EventData::IdentityMerged(data::IdentityMerged { merged_subject }),
        );
    }
    Ok(Disposition::Events)
}
