//! ADT messages (with the IHE PAM-FR ZBE/ZFM segments) to encounter, patient and
//! identity events.

use jiff::Timestamp;
use parcours_core::events::{EventData, data};

use super::tables::{
    destination_from_pv1_36, destination_from_zfm, encounter_class, is_icd10_system,
    normalise_icd10,
};
use super::{Ctx, Disposition, identity};
use crate::error::MapError;
use crate::message::{Comp, Seg};

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
            "A40" => Ok(Merge),
            _ => Err(Disposition::Unhandled),
        },
    }
}

pub(crate) fn map(cx: &mut Ctx<'_>, trigger: &str) -> Result<Disposition, MapError> {
    let action = zbe_action(cx)?;
    let kind = match kind_of(trigger, action) {
        Ok(kind) => kind,
        Err(d) => return Ok(learn_only(cx, d)),
    };
    if kind == Kind::Merge {
        return merge(cx);
    }
    let disposition = movement(cx, kind, trigger)?;
    let Some(pid) = cx.msg.segment("PID") else {
        return Ok(disposition);
    };
    match disposition {
        Disposition::Events => {
            // The PID was read to name the events: its identity is usable.
            let pair = identity::link(pid, cx.cfg.allow_test_ins)?;
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
    let Ok(Some(pair)) = identity::link(pid, cx.cfg.allow_test_ins) else {
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

/// The events of an admission, discharge, cancellation, pending discharge or update.
fn movement(cx: &mut Ctx<'_>, kind: Kind, trigger: &str) -> Result<Disposition, MapError> {
    let pid = cx
        .msg
        .segment("PID")
        .ok_or(MapError::MissingSegment { segment: "PID" })?;
    let pv1 = cx
        .msg
        .segment("PV1")
        .ok_or(MapError::MissingSegment { segment: "PV1" })?;
    let subject = cx.subject(&identity::patient(pid, cx.cfg.allow_test_ins)?);
    let encounter_id = match (encounter_id(pid, pv1), kind) {
        (Ok(id), _) => id,
        // A08 also carries demographic-only updates, with no stay: nothing to update.
        (Err(_), Kind::Updated) => {
            return Ok(Disposition::Ignored(format!(
                "ADT^{trigger} without a visit number (PV1-19, PID-18) acknowledged and ignored: parcours uses it for stay updates only"
            )));
        }
        (Err(e), _) => return Err(e),
    };
    let evn = cx.msg.segment("EVN");
    let zbe = cx.msg.segment("ZBE");
    let evn6 = evn.map(|s| s.field(6).comp(1));
    let evn2 = evn.map(|s| s.field(2).comp(1));
    let zbe2 = zbe.map(|s| s.field(2).comp(1));
    let when = |cx: &Ctx<'_>, chain: &[Option<Comp<'_>>]| -> Result<Timestamp, MapError> {
        match cx.first_ts(chain)? {
            Some(t) => Ok(t),
            None => cx.message_time(),
        }
    };
    match kind {
        Kind::Admitted => {
            let at = when(cx, &[Some(pv1.field(44).comp(1)), zbe2, evn6, evn2])?;
            let data = data::EncounterAdmitted {
                encounter_id,
                class: encounter_class(pv1.field(2).comp(1).value().as_deref()).into(),
                facility: facility(cx, pv1),
            };
            cx.push(subject, at, EventData::EncounterAdmitted(data));
        }
        Kind::Discharged => {
            let at = when(cx, &[Some(pv1.field(45).comp(1)), zbe2, evn6, evn2])?;
            let died = pid
                .field(30)
                .value()
                .is_some_and(|v| v.eq_ignore_ascii_case("Y"));
            let mut destination = destination(cx, pv1).unwrap_or("other");
            if died {
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
            }
        }
        Kind::AdmissionCancelled => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterAdmissionCancelled { encounter_id };
            cx.push(subject, at, EventData::EncounterAdmissionCancelled(data));
        }
        Kind::DischargeCancelled => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterDischargeCancelled { encounter_id };
            cx.push(subject, at, EventData::EncounterDischargeCancelled(data));
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
            cx.push(subject, at, EventData::EncounterDischargePending(data));
        }
        Kind::Updated => {
            let at = when(cx, &[evn6, evn2])?;
            let data = data::EncounterUpdated {
                encounter_id,
                diagnoses: diagnoses(cx),
                destination: destination(cx, pv1).map(Into::into),
            };
            cx.push(subject, at, EventData::EncounterUpdated(data));
        }
        Kind::Merge => {}
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

/// Every DG1-3 code, in order, without duplicates; ICD-10 codes get their dot.
fn diagnoses(cx: &Ctx<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for dg1 in cx.msg.segments().filter(|s| s.name() == "DG1") {
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

/// ADT^A40: one identity.merged per PID/MRG pair (after the PID's identity link, if it
/// has one).
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
        let subject = cx.subject(&identity::patient(pid, cx.cfg.allow_test_ins)?);
        let merged_subject = cx.subject(&identity::merged(mrg, cx.cfg.allow_test_ins)?);
        // The surviving identity's own link first (its qualified INS and local
        // identifier), so the merge reaches where its instances are.
        let start = cx.events.len();
        cx.link(start, identity::link(pid, cx.cfg.allow_test_ins)?, Some(at));
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
