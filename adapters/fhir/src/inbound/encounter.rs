//! Encounter → `encounter.admitted`, `encounter.discharged`, `encounter.discharge_cancelled`,
//! `encounter.admission_cancelled` (stays) or `encounter.completed` (visits).

use jiff::Timestamp;
use parcours_core::EventData;
use parcours_core::events::data;
use serde_json::Value;

use super::identity;
use super::json::typed;
use super::{Mapped, SNOMED, Scope, diagnosis_code};
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::{CodeableConcept, Condition, Encounter, Organization, Reference};

const STATUSES: &[&str] = &[
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
];

const ACT_CODE_SYSTEMS: &[&str] = &[
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://hl7.org/fhir/v3/ActCode",
];

/// What an encounter class means for parcours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A hospital stay (admitted, discharged) of this event class.
    Stay(&'static str),
    /// A visit (consultation, home visit): only its completion is an event.
    Visit,
    /// A class parcours does not follow (pre-admission).
    Ignored,
}

/// v3-ActCode class → kind.
fn kind(code: &str) -> Option<Kind> {
    Some(match code {
        "IMP" | "ACUTE" | "NONAC" => Kind::Stay("inpatient"),
        "EMER" => Kind::Stay("emergency"),
        "SS" | "OBSENC" => Kind::Stay("outpatient"),
        "AMB" | "VR" | "FLD" | "HH" => Kind::Visit,
        "PRENC" => Kind::Ignored,
        _ => return None,
    })
}

/// A class written as a word without a system (`{"code": "ambulatory"}`: FHIR STU3-era
/// Synthea exports, many hand-written resources; the R4 binding is extensible, so such a
/// class is not wrong R4), matched without case.
fn kind_of_word(word: &str) -> Option<Kind> {
    Some(match word.to_ascii_lowercase().as_str() {
        "inpatient" => Kind::Stay("inpatient"),
        "emergency" => Kind::Stay("emergency"),
        "ambulatory" | "outpatient" | "wellness" | "urgentcare" | "urgent-care" | "home"
        | "virtual" => Kind::Visit,
        _ => return None,
    })
}

pub(super) fn map(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let enc: Encounter = typed(scope.raw, &scope.prefix)?;
    let status = match enc.status.as_deref() {
        None => {
            return Err(
                Refusal::bad_request(IssueType::Required, "Encounter.status is required")
                    .at(scope.at("status")),
            );
        }
        Some(s) if STATUSES.contains(&s) => s,
        Some(_) => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Encounter.status is not a code of the EncounterStatus value set",
            )
            .at(scope.at("status")));
        }
    };
    let Some(class) = &enc.class else {
        return Err(
            Refusal::bad_request(IssueType::Required, "Encounter.class is required")
                .at(scope.at("class")),
        );
    };
    let code = class.code.as_deref().map(str::trim);
    let found = match (class.system.as_deref().map(str::trim), code) {
        (Some(system), Some(code)) if ACT_CODE_SYSTEMS.contains(&system) => kind(code),
        // ActCodes are upper-case: `amb` is AMB.
        (None, Some(code)) => kind(&code.to_ascii_uppercase()).or_else(|| kind_of_word(code)),
        _ => None,
    };
    let Some(kind) = found else {
        return Err(Refusal::unprocessable(
            IssueType::CodeInvalid,
            "Encounter.class is not a v3-ActCode class parcours knows (IMP, ACUTE, NONAC, \
             EMER, SS, OBSENC, AMB, VR, FLD, HH, PRENC; without a system also inpatient, \
             emergency, ambulatory, outpatient, wellness, urgentcare, home, virtual)",
        )
        .at(scope.at("class")));
    };
    match kind {
        Kind::Ignored => Ok(Mapped::skipped(
            Issue::information(
                IssueType::Informational,
                "pre-admission encounters are not events: nothing was recorded",
            )
            .at(scope.at("class")),
        )),
        Kind::Visit => visit(scope, &enc, status),
        Kind::Stay(class) => stay(scope, &enc, status, class),
    }
}

fn stay(
    scope: &Scope<'_>,
    enc: &Encounter,
    status: &str,
    class: &'static str,
) -> Result<Mapped, Refusal> {
    let was_finished = enc
        .status_history
        .iter()
        .any(|h| h.status.as_deref() == Some("finished"));
    let period = enc.period.clone().unwrap_or_default();
    let events: Vec<(&str, Timestamp, EventData)> = match status {
        "planned" => {
            return Ok(Mapped::skipped(
                Issue::information(
                    IssueType::Informational,
                    "a planned stay is not an event yet: nothing was recorded",
                )
                .at(scope.at("status")),
            ));
        }
        "unknown" => {
            return Ok(Mapped::skipped(
                Issue::warning(
                    IssueType::Value,
                    "a stay of unknown status cannot be mapped: it was not used",
                )
                .at(scope.at("status")),
            ));
        }
        "arrived" | "triaged" | "in-progress" | "onleave" if was_finished => {
            // Back in progress after having been finished: the discharge was cancelled
            // (the FHIR form of ADT^A13).
            let encounter_id = encounter_id(scope, enc)?;
            let at = change_time(scope, enc)?;
            vec![(
                "discharge-cancelled",
                at,
                EventData::EncounterDischargeCancelled(data::EncounterDischargeCancelled {
                    encounter_id,
                }),
            )]
        }
        "arrived" | "triaged" | "in-progress" | "onleave" => {
            let Some(start) = &period.start else {
                return Err(Refusal::unprocessable(
                    IssueType::Required,
                    "an admission needs period.start (when the stay began)",
                )
                .at(scope.at("period.start")));
            };
            let at = scope.time(start, "period.start")?;
            vec![(
                "admitted",
                at,
                EventData::EncounterAdmitted(data::EncounterAdmitted {
                    encounter_id: encounter_id(scope, enc)?,
                    class: class.to_owned(),
                    facility: facility(scope, enc.service_provider.as_ref())?,
                }),
            )]
        }
        "finished" => {
            let Some(end) = &period.end else {
                return Err(Refusal::unprocessable(
                    IssueType::Required,
                    "a finished stay needs period.end (the discharge time)",
                )
                .at(scope.at("period.end")));
            };
            let at = scope.time(end, "period.end")?;
            let admitted_at = match &period.start {
                Some(s) => Some(scope.time(s, "period.start")?),
                None => None,
            };
            let mut issues = Vec::new();
            let destination = destination(scope, enc, &mut issues);
            let data = data::EncounterDischarged {
                encounter_id: encounter_id(scope, enc)?,
                class: class.to_owned(),
                destination,
                diagnoses: diagnoses(scope, enc)?,
                facility: facility(scope, enc.service_provider.as_ref())?,
                admitted_at,
            };
            let subject = identity::subject(scope, enc.subject.as_ref(), "subject")?;
            return Ok(Mapped {
                events: vec![scope.event(
                    "discharged",
                    &subject,
                    at,
                    EventData::EncounterDischarged(data),
                )],
                issues,
            });
        }
        // cancelled | entered-in-error: the stay did not happen. If it had been
        // finished, its discharge is withdrawn first.
        _ => {
            let encounter_id = encounter_id(scope, enc)?;
            let at = change_time(scope, enc)?;
            let mut events = Vec::new();
            if was_finished || period.end.is_some() {
                events.push((
                    "discharge-cancelled",
                    at,
                    EventData::EncounterDischargeCancelled(data::EncounterDischargeCancelled {
                        encounter_id: encounter_id.clone(),
                    }),
                ));
            }
            events.push((
                "admission-cancelled",
                at,
                EventData::EncounterAdmissionCancelled(data::EncounterAdmissionCancelled {
                    encounter_id,
                }),
            ));
            events
        }
    };
    let subject = identity::subject(scope, enc.subject.as_ref(), "subject")?;
    Ok(Mapped {
        events: events
            .into_iter()
            .map(|(part, at, data)| scope.event(part, &subject, at, data))
            .collect(),
        issues: Vec::new(),
    })
}

fn visit(scope: &Scope<'_>, enc: &Encounter, status: &str) -> Result<Mapped, Refusal> {
    if status != "finished" {
        return Ok(Mapped::skipped(
            Issue::information(
                IssueType::Informational,
                "only finished visits are events: nothing was recorded",
            )
            .at(scope.at("status")),
        ));
    }
    let period = enc.period.clone().unwrap_or_default();
    let (text, rel) = match (&period.end, &period.start) {
        (Some(end), _) => (end, "period.end"),
        (None, Some(start)) => (start, "period.start"),
        (None, None) => {
            return Err(Refusal::unprocessable(
                IssueType::Required,
                "a finished visit needs period.end or period.start",
            )
            .at(scope.at("period")));
        }
    };
    let at = scope.time(text, rel)?;
    let subject = identity::subject(scope, enc.subject.as_ref(), "subject")?;
    let data = data::EncounterCompleted {
        encounter_id: encounter_id(scope, enc).unwrap_or_default(),
        kind: visit_kind(enc).to_owned(),
        ..Default::default()
    };
    Ok(Mapped {
        events: vec![scope.event(
            "completed",
            &subject,
            at,
            EventData::EncounterCompleted(data),
        )],
        issues: Vec::new(),
    })
}

/// The visit number: an identifier typed `VN`, else the first usual, official or
/// secondary one, else the resource id (temporary and old identifiers are never used:
/// they change, and some embed a name).
fn encounter_id(scope: &Scope<'_>, enc: &Encounter) -> Result<String, Refusal> {
    let value = |i: &crate::r4::Identifier| {
        i.value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let typed_vn = enc.identifier.iter().find_map(|i| {
        let is_vn = i
            .type_
            .as_ref()
            .is_some_and(|t| t.coding.iter().any(|c| c.code.as_deref() == Some("VN")));
        if is_vn { value(i) } else { None }
    });
    let durable = || {
        enc.identifier.iter().find_map(|i| {
            let durable = matches!(
                i.use_.as_deref(),
                None | Some("usual" | "official" | "secondary")
            );
            if durable { value(i) } else { None }
        })
    };
    typed_vn
        .or_else(durable)
        .or_else(|| enc.id.clone())
        .ok_or_else(|| {
            Refusal::unprocessable(
                IssueType::Required,
                "the stay needs a visit number: an identifier (type VN preferred) or a resource id",
            )
            .at(scope.at("identifier"))
        })
}

/// When a cancellation happened: meta.lastUpdated, else the latest time the resource
/// states.
fn change_time(scope: &Scope<'_>, enc: &Encounter) -> Result<Timestamp, Refusal> {
    if let Some(t) = enc.meta.as_ref().and_then(|m| m.last_updated.as_ref()) {
        return scope.time(t, "meta.lastUpdated");
    }
    let mut latest: Option<Timestamp> = None;
    let mut consider = |text: Option<&String>, rel: String| -> Result<(), Refusal> {
        if let Some(t) = text {
            let t = scope.time(t, &rel)?;
            latest = Some(latest.map_or(t, |l| l.max(t)));
        }
        Ok(())
    };
    if let Some(p) = &enc.period {
        consider(p.start.as_ref(), "period.start".into())?;
        consider(p.end.as_ref(), "period.end".into())?;
    }
    for (i, h) in enc.status_history.iter().enumerate() {
        if let Some(p) = &h.period {
            consider(p.start.as_ref(), format!("statusHistory[{i}].period.start"))?;
            consider(p.end.as_ref(), format!("statusHistory[{i}].period.end"))?;
        }
    }
    latest.ok_or_else(|| {
        Refusal::unprocessable(
            IssueType::Required,
            "a cancellation needs a time: meta.lastUpdated or a period",
        )
        .at(scope.at("meta.lastUpdated"))
    })
}

/// HL7 discharge-disposition (also under its FHIR STU3 system), SNOMED CT discharge
/// procedures, NUBC discharge status and FR Core circonstances de sortie → destination.
fn destination(scope: &Scope<'_>, enc: &Encounter, issues: &mut Vec<Issue>) -> String {
    const HL7: &str = "http://terminology.hl7.org/CodeSystem/discharge-disposition";
    const HL7_STU3: &str = "http://hl7.org/fhir/discharge-disposition";
    const FR: &str = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-circonstances-sortie";
    // The UB-04 patient discharge status (HL7 v2 table 0112's list), what Synthea writes.
    const NUBC: &str = "http://www.nubc.org/patient-discharge";
    let Some(dd) = enc
        .hospitalization
        .as_ref()
        .and_then(|h| h.discharge_disposition.as_ref())
    else {
        return parcours_core::events::UNSTATED_DESTINATION.to_owned();
    };
    for c in &dd.coding {
        let system = c.system.as_deref().map(str::trim);
        let Some(code) = c.code.as_deref().map(str::trim) else {
            continue;
        };
        let mapped = match (system, code) {
            (Some(HL7 | HL7_STU3) | None, "home" | "alt-home" | "aadvice") => "home",
            (Some(HL7 | HL7_STU3) | None, "snf" | "long") => "nursing-home",
            (Some(HL7 | HL7_STU3) | None, "other-hcf" | "hosp" | "psy" | "rehab") => "transfer",
            (Some(HL7 | HL7_STU3) | None, "exp") => "deceased",
            (Some(HL7 | HL7_STU3) | None, "oth") => "other",
            // Discharge to home (the R4 example Encounter-f001); to a residential home;
            // to a ward, a transfer to another facility; admission to the mortuary.
            (Some(SNOMED), "306689006") => "home",
            (Some(SNOMED), "306691003") => "nursing-home",
            (Some(SNOMED), "306706006" | "19712007") => "transfer",
            (Some(SNOMED), "305398007") => "deceased",
            (Some(NUBC), code) => parcours_core::events::discharge_status_destination(code),
            (Some(FR), "B") => "transfer",
            // The other circonstances de sortie say how the stay ended, not where the
            // patient went (as PAM-FR's PV1-36 in parcours-hl7v2).
            (Some(FR), _) => parcours_core::events::UNSTATED_DESTINATION,
            _ => continue,
        };
        return mapped.to_owned();
    }
    issues.push(
        Issue::warning(
            IssueType::CodeInvalid,
            "the discharge disposition is not a code parcours knows: the destination is other",
        )
        .at(scope.at("hospitalization.dischargeDisposition")),
    );
    "other".to_owned()
}

/// The stay's ICD-10 and SNOMED CT codes, principal first: `diagnosis` (by rank) whose
/// Condition is contained or in the bundle; Conditions of the bundle that point to this
/// encounter; then `reasonCode`.
fn diagnoses(scope: &Scope<'_>, enc: &Encounter) -> Result<Vec<String>, Refusal> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |cc: Option<&CodeableConcept>| {
        for coding in cc.iter().flat_map(|cc| cc.coding.iter()) {
            if let Some((code, _)) = diagnosis_code(coding)
                && !out.contains(&code)
            {
                out.push(code);
            }
        }
    };
    let mut ranked: Vec<(u32, usize)> = enc
        .diagnosis
        .iter()
        .enumerate()
        .map(|(i, d)| (d.rank.unwrap_or(u32::MAX), i))
        .collect();
    ranked.sort();
    for (_, i) in ranked {
        let Some(reference) = enc
            .diagnosis
            .get(i)
            .and_then(|d| d.condition.as_ref())
            .and_then(|r| r.reference.as_deref())
        else {
            continue;
        };
        if let Some(condition) = condition_at(scope, reference)? {
            push(condition.code.as_ref());
        }
    }
    if let Some(me) = scope.entry {
        for (i, entry) in scope.doc.entries.iter().enumerate() {
            if entry.type_name != Some("Condition") {
                continue;
            }
            let Some(raw) = entry.resource else { continue };
            let condition: Condition = typed(raw, &format!("Bundle.entry[{i}].resource"))?;
            let points_here = condition
                .encounter
                .as_ref()
                .and_then(|r| r.reference.as_deref())
                .and_then(|r| scope.doc.resolve(r))
                == Some(me);
            let problem_list = condition.category.iter().any(|c| {
                c.coding
                    .iter()
                    .any(|c| c.code.as_deref() == Some("problem-list-item"))
            });
            if points_here && !problem_list && usable_condition(&condition) {
                push(condition.code.as_ref());
            }
        }
    }
    for reason in &enc.reason_code {
        push(Some(reason));
    }
    Ok(out)
}

/// Whether a condition is a diagnosis to act on (not refuted, in error, or unconfirmed).
pub(super) fn usable_condition(c: &Condition) -> bool {
    !c.verification_status.as_ref().is_some_and(|v| {
        v.coding.iter().any(|c| {
            matches!(
                c.code.as_deref(),
                Some(
                    "refuted" | "entered-in-error" | "unconfirmed" | "provisional" | "differential"
                )
            )
        })
    })
}

/// The Condition a diagnosis reference points to (contained or in the bundle), if any.
fn condition_at(scope: &Scope<'_>, reference: &str) -> Result<Option<Condition>, Refusal> {
    let (raw, prefix): (&Value, String) = if let Some(local) = reference.strip_prefix('#') {
        let found = scope
            .raw
            .get("contained")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .enumerate()
                    .find(|(_, v)| v.get("id").and_then(Value::as_str) == Some(local))
            });
        match found {
            Some((i, v)) => (v, format!("{}.contained[{i}]", scope.prefix)),
            None => return Ok(None),
        }
    } else {
        match scope
            .doc
            .resolve(reference)
            .and_then(|i| scope.doc.entries.get(i).map(|e| (i, e)))
            .and_then(|(i, e)| e.resource.map(|r| (i, r)))
        {
            Some((i, v)) => (v, format!("Bundle.entry[{i}].resource")),
            None => return Ok(None),
        }
    };
    if raw.get("resourceType").and_then(Value::as_str) != Some("Condition") {
        return Ok(None);
    }
    let condition: Condition = typed(raw, &prefix)?;
    Ok(usable_condition(&condition).then_some(condition))
}

/// The facility: the identifier (FINESS) of the service provider, given logically or
/// found on the Organization in the bundle or contained.
fn facility(scope: &Scope<'_>, provider: Option<&Reference>) -> Result<Option<String>, Refusal> {
    let Some(provider) = provider else {
        return Ok(None);
    };
    if let Some(v) = provider
        .identifier
        .as_ref()
        .and_then(|i| i.value.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Ok(Some(v.to_owned()));
    }
    let Some(reference) = provider.reference.as_deref() else {
        return Ok(None);
    };
    let found = if let Some(local) = reference.strip_prefix('#') {
        scope
            .raw
            .get("contained")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .enumerate()
                    .find(|(_, v)| v.get("id").and_then(Value::as_str) == Some(local))
                    .map(|(i, v)| (v, format!("{}.contained[{i}]", scope.prefix)))
            })
    } else {
        scope.doc.resolve(reference).and_then(|i| {
            scope
                .doc
                .entries
                .get(i)
                .and_then(|e| e.resource)
                .map(|v| (v, format!("Bundle.entry[{i}].resource")))
        })
    };
    let Some((raw, prefix)) = found else {
        return Ok(None);
    };
    if raw.get("resourceType").and_then(Value::as_str) != Some("Organization") {
        return Ok(None);
    }
    let org: Organization = typed(raw, &prefix)?;
    Ok(org.identifier.iter().find_map(|i| {
        i.value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }))
}

/// The kind of a finished visit, from `type` and `serviceType`:
///
/// | coding | kind |
/// |---|---|
/// | `urn:parcours:encounter-kind` any code | that code |
/// | service-type 124, 349; SNOMED 394814009 (general practice) | `gp-visit` |
/// | service-type 165; SNOMED 394579002 (cardiology) | `cardiology-visit` |
/// | service-type 217; SNOMED 394594003 (ophthalmology) | `eye-exam` |
/// | service-type 322, 358 (district / home nursing) | `nurse-visit` |
/// | service-type 314 (dentistry) | `dental-visit` |
/// | anything else | `other` |
pub(crate) fn visit_kind(enc: &Encounter) -> &str {
    const KIND: &str = crate::ENCOUNTER_KIND_SYSTEM;
    const SERVICE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/service-type";
    let codings = || {
        enc.type_
            .iter()
            .chain(enc.service_type.iter())
            .flat_map(|cc| cc.coding.iter())
    };
    if let Some(kind) = codings().find_map(|c| {
        let code = c.code.as_deref()?.trim();
        let valid = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        (c.system.as_deref() == Some(KIND) && valid).then_some(code)
    }) {
        return kind;
    }
    for c in codings() {
        let Some(code) = c.code.as_deref().map(str::trim) else {
            continue;
        };
        let kind = match (c.system.as_deref().map(str::trim), code) {
            (Some(SERVICE_TYPE), "124" | "349") | (Some(super::SNOMED), "394814009") => "gp-visit",
            (Some(SERVICE_TYPE), "165") | (Some(super::SNOMED), "394579002") => "cardiology-visit",
            (Some(SERVICE_TYPE), "217") | (Some(super::SNOMED), "394594003") => "eye-exam",
            (Some(SERVICE_TYPE), "322" | "358") => "nurse-visit",
            (Some(SERVICE_TYPE), "314") => "dental-visit",
            _ => continue,
        };
        return kind;
    }
    "other"
}
