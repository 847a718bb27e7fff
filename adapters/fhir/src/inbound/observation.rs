//! Observation → `observation.recorded` (one per component for panels such as blood
//! pressure).

use jiff::Timestamp;
use parcours_core::EventData;
use parcours_core::events::data;
use parcours_core::units;

use super::identity;
use super::json::typed;
use super::{Mapped, Scope};
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::{
    CodeableConcept, DiagnosticReport, Observation, ObservationComponent, Quantity, ReferenceRange,
};

/// LOINC.
pub(crate) const LOINC: &str = "http://loinc.org";

/// The other names of LOINC a sender may write: its OID, and the French national
/// terminology's LOINC subset (ANS, `TRE_A04-Loinc` of the NOS, used by the ANS
/// implementation guides), whose codes are LOINC codes.
const LOINC_ALIASES: &[&str] = &[
    "urn:oid:2.16.840.1.113883.6.1",
    "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc",
    "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc/",
];

/// Whether a coding's system is LOINC, under any of its names.
fn is_loinc(system: &str) -> bool {
    system == LOINC || LOINC_ALIASES.contains(&system)
}

/// UCUM.
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";

const STATUSES: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];

/// The value choices of an observation or of one of its components.
struct Choices<'a> {
    quantity: Option<&'a Quantity>,
    concept: Option<&'a CodeableConcept>,
    string: Option<&'a str>,
    boolean: Option<bool>,
    integer: Option<i64>,
    time: Option<&'a str>,
    date_time: Option<&'a str>,
    /// Names of present choices parcours does not map (`valueRatio`, …).
    unmapped: Vec<&'static str>,
}

macro_rules! choices {
    ($o:expr) => {{
        let o = $o;
        let mut unmapped = Vec::new();
        if o.value_range.is_some() {
            unmapped.push("valueRange");
        }
        if o.value_ratio.is_some() {
            unmapped.push("valueRatio");
        }
        if o.value_sampled_data.is_some() {
            unmapped.push("valueSampledData");
        }
        if o.value_period.is_some() {
            unmapped.push("valuePeriod");
        }
        Choices {
            quantity: o.value_quantity.as_ref(),
            concept: o.value_codeable_concept.as_ref(),
            string: o.value_string.as_deref(),
            boolean: o.value_boolean,
            integer: o.value_integer,
            time: o.value_time.as_deref(),
            date_time: o.value_date_time.as_deref(),
            unmapped,
        }
    }};
}

impl Choices<'_> {
    fn count(&self) -> usize {
        [
            self.quantity.is_some(),
            self.concept.is_some(),
            self.string.is_some(),
            self.boolean.is_some(),
            self.integer.is_some(),
            self.time.is_some(),
            self.date_time.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
            + self.unmapped.len()
    }
}

/// The mapped value fields of an event.
#[derive(Debug, Default)]
struct ValueOut {
    value: Option<f64>,
    comparator: Option<String>,
    value_text: Option<String>,
    unit: Option<String>,
    /// The canonical unit as sent, before lb → kg.
    sent_unit: Option<String>,
}

pub(super) fn map(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let obs: Observation = typed(scope.raw, &scope.prefix)?;
    let status = match obs.status.as_deref() {
        None => {
            return Err(Refusal::bad_request(
                IssueType::Required,
                "Observation.status is required",
            )
            .at(scope.at("status")));
        }
        Some(s) if STATUSES.contains(&s) => s.to_owned(),
        Some(_) => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Observation.status is not a code of the ObservationStatus value set",
            )
            .at(scope.at("status")));
        }
    };
    let Some(code) = &obs.code else {
        return Err(
            Refusal::bad_request(IssueType::Required, "Observation.code is required")
                .at(scope.at("code")),
        );
    };
    let Some(loinc) = loinc_code(code) else {
        return Ok(Mapped::skipped(
            Issue::warning(
                IssueType::BusinessRule,
                "the observation has no loinc code (system http://loinc.org): parcours pathways key on loinc, it was not used",
            )
            .at(scope.at("code.coding")),
        ));
    };
    let subject = subject(scope, &obs)?;
    let occurred_at = clinical_time(scope, &obs)?;
    let observation_id = obs
        .id
        .clone()
        .or_else(|| obs.identifier.iter().find_map(|i| i.value.clone()))
        .unwrap_or_default();

    let mut mapped = Mapped::default();
    let choices = choices!(&obs);
    let emit_parent = choices.count() > 0 || obs.component.is_empty();
    if emit_parent {
        let value = map_value(scope, &choices, "", &loinc, &mut mapped.issues)?;
        let (low, high) = reference_range(
            scope,
            &obs.reference_range,
            "referenceRange",
            &value,
            &loinc,
            &mut mapped.issues,
        );
        let data = data::ObservationRecorded {
            observation_id: observation_id.clone(),
            code: loinc.clone(),
            value: value.value,
            comparator: value.comparator,
            value_text: value.value_text,
            unit: value.unit,
            status: status.clone(),
            reference_low: low,
            reference_high: high,
            abnormal_flag: abnormal_flag(&obs.interpretation),
        };
        mapped.events.push(scope.event(
            "",
            &subject,
            occurred_at,
            EventData::ObservationRecorded(data),
        ));
    }
    for (i, component) in obs.component.iter().enumerate() {
        let rel = format!("component[{i}]");
        if let Some(data) = map_component(
            scope,
            component,
            &rel,
            &observation_id,
            &status,
            &mut mapped.issues,
        )? {
            mapped.events.push(scope.event(
                &rel,
                &subject,
                occurred_at,
                EventData::ObservationRecorded(data),
            ));
        }
    }
    Ok(mapped)
}

fn map_component(
    scope: &Scope<'_>,
    component: &ObservationComponent,
    rel: &str,
    observation_id: &str,
    status: &str,
    issues: &mut Vec<Issue>,
) -> Result<Option<data::ObservationRecorded>, Refusal> {
    let Some(code) = &component.code else {
        return Err(Refusal::bad_request(
            IssueType::Required,
            "Observation.component.code is required",
        )
        .at(scope.at(&format!("{rel}.code"))));
    };
    let Some(loinc) = loinc_code(code) else {
        issues.push(
            Issue::warning(
                IssueType::BusinessRule,
                "the component has no loinc code: it was not used",
            )
            .at(scope.at(&format!("{rel}.code.coding"))),
        );
        return Ok(None);
    };
    let choices = choices!(component);
    let value = map_value(scope, &choices, &format!("{rel}."), &loinc, issues)?;
    let (low, high) = reference_range(
        scope,
        &component.reference_range,
        &format!("{rel}.referenceRange"),
        &value,
        &loinc,
        issues,
    );
    Ok(Some(data::ObservationRecorded {
        observation_id: if observation_id.is_empty() {
            String::new()
        } else {
            format!("{observation_id}/{loinc}")
        },
        code: loinc,
        value: value.value,
        comparator: value.comparator,
        value_text: value.value_text,
        unit: value.unit,
        status: status.to_owned(),
        reference_low: low,
        reference_high: high,
        abnormal_flag: abnormal_flag(&component.interpretation),
    }))
}

/// The first LOINC code of a concept.
fn loinc_code(code: &CodeableConcept) -> Option<String> {
    code.coding
        .iter()
        .filter(|c| c.system.as_deref().map(str::trim).is_some_and(is_loinc))
        .find_map(|c| c.code.as_deref().map(str::trim).filter(|c| !c.is_empty()))
        .map(str::to_owned)
}

/// effective[x], else issued, else the time of a DiagnosticReport of the same bundle
/// that lists this observation among its results.
fn clinical_time(scope: &Scope<'_>, obs: &Observation) -> Result<Timestamp, Refusal> {
    if let Some(t) = &obs.effective_date_time {
        return scope.time(t, "effectiveDateTime");
    }
    if let Some(t) = obs.effective_period.as_ref().and_then(|p| p.start.as_ref()) {
        return scope.time(t, "effectivePeriod.start");
    }
    if let Some(t) = &obs.effective_instant {
        return scope.time(t, "effectiveInstant");
    }
    if let Some(t) = &obs.issued {
        return scope.time(t, "issued");
    }
    if let Some(t) = report_time(scope)? {
        return Ok(t);
    }
    Err(Refusal::unprocessable(
        IssueType::Required,
        "the observation has no clinical time: send effectiveDateTime, effectivePeriod.start or issued (or its DiagnosticReport in the same bundle)",
    )
    .at(scope.at("effective[x]")))
}

/// The patient: `subject`, else the subject of a DiagnosticReport of the same bundle that
/// lists this observation among its results (a report's results may leave it to the
/// report, as the R4 example `Bundle-report` does), read on that report.
fn subject(scope: &Scope<'_>, obs: &Observation) -> Result<String, Refusal> {
    if obs.subject.is_none() {
        for (i, report) in listing_reports(scope)? {
            let (Some(reference), Some(raw)) = (&report.subject, scope.doc.entries[i].resource)
            else {
                continue;
            };
            let on_report = Scope::new(
                scope.ctx,
                scope.doc,
                raw,
                "DiagnosticReport",
                format!("Bundle.entry[{i}].resource"),
                Some(i),
            );
            let subject = identity::subject(&on_report, Some(reference), "subject")?;
            // The identity link its patient gives comes with this observation's events.
            scope.links.borrow_mut().extend(on_report.links.take());
            return Ok(subject);
        }
    }
    identity::subject(scope, obs.subject.as_ref(), "subject")
}

/// The DiagnosticReports of the same bundle that list this observation among their
/// results, with their entries' indexes.
fn listing_reports(scope: &Scope<'_>) -> Result<Vec<(usize, DiagnosticReport)>, Refusal> {
    let Some(me) = scope.entry else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, entry) in scope.doc.entries.iter().enumerate() {
        if entry.type_name != Some("DiagnosticReport") {
            continue;
        }
        let Some(raw) = entry.resource else { continue };
        let report: DiagnosticReport = typed(raw, &format!("Bundle.entry[{i}].resource"))?;
        let lists_me = report
            .result
            .iter()
            .any(|r| r.reference.as_deref().and_then(|r| scope.doc.resolve(r)) == Some(me));
        if lists_me {
            out.push((i, report));
        }
    }
    Ok(out)
}

fn report_time(scope: &Scope<'_>) -> Result<Option<Timestamp>, Refusal> {
    for (i, report) in listing_reports(scope)? {
        let prefix = format!("Bundle.entry[{i}].resource");
        let (text, rel) = if let Some(t) = &report.effective_date_time {
            (t, "effectiveDateTime")
        } else if let Some(t) = report
            .effective_period
            .as_ref()
            .and_then(|p| p.start.as_ref())
        {
            (t, "effectivePeriod.start")
        } else if let Some(t) = &report.issued {
            (t, "issued")
        } else {
            continue;
        };
        return super::time::parse(text.trim(), &scope.ctx.time_zone)
            .map(Some)
            .map_err(|e| {
                Refusal::unprocessable(IssueType::Value, e.describe()).at(format!("{prefix}.{rel}"))
            });
    }
    Ok(None)
}

/// A unit: the UCUM code when the system is UCUM, else the unit text, else the code;
/// in its canonical spelling when parcours knows it (`mmol/l` → `mmol/L`).
fn unit_of(q: &Quantity) -> Option<String> {
    let ucum = (q.system.as_deref().map(str::trim) == Some(UCUM))
        .then_some(q.code.as_deref())
        .flatten();
    let raw = ucum
        .or(q.unit.as_deref())
        .or(q.code.as_deref())
        .map(str::trim)
        .filter(|u| !u.is_empty())?;
    Some(
        units::canonical_unit(raw)
            .map(str::to_owned)
            .unwrap_or_else(|| raw.to_owned()),
    )
}

fn map_value(
    scope: &Scope<'_>,
    choices: &Choices<'_>,
    rel: &str,
    loinc: &str,
    issues: &mut Vec<Issue>,
) -> Result<ValueOut, Refusal> {
    if choices.count() > 1 {
        return Err(
            Refusal::bad_request(IssueType::Invariant, "only one value[x] may be present")
                .at(scope.at(&format!("{rel}value[x]"))),
        );
    }
    for name in &choices.unmapped {
        issues.push(
            Issue::warning(
                IssueType::NotSupported,
                format!("{name} is not mapped: the result was recorded without a value"),
            )
            .at(scope.at(&format!("{rel}{name}"))),
        );
    }
    let mut out = ValueOut::default();
    if let Some(q) = choices.quantity {
        out.comparator = match q.comparator.as_deref() {
            None => None,
            Some(c @ ("<" | "<=" | ">=" | ">")) => Some(c.to_owned()),
            Some(_) => {
                return Err(Refusal::bad_request(
                    IssueType::CodeInvalid,
                    "comparator is not one of <, <=, >=, >",
                )
                .at(scope.at(&format!("{rel}valueQuantity.comparator"))));
            }
        };
        out.value = q.value;
        out.unit = unit_of(q);
        out.sent_unit = out.unit.clone();
        if let (Some(v), Some("[lb_av]")) = (out.value, out.unit.as_deref()) {
            // Weights in pounds become kilograms: guards compare weights in kg.
            match units::convert(v, "[lb_av]", "kg", Some(loinc)) {
                Ok(kg) => {
                    out.value = Some(kg);
                    out.unit = Some("kg".to_owned());
                }
                Err(_) => {
                    return Err(Refusal::unprocessable(
                        IssueType::Value,
                        "the weight in pounds cannot be converted to kilograms",
                    )
                    .at(scope.at(&format!("{rel}valueQuantity.value"))));
                }
            }
        }
    } else if let Some(s) = choices.string {
        let text = s.trim();
        if let Some((comparator, value)) = bounded_number(text) {
            out.comparator = Some(comparator.to_owned());
            out.value = Some(value);
        }
        out.value_text = Some(text.to_owned());
    } else if let Some(i) = choices.integer {
        out.value = Some(i as f64);
    } else if let Some(cc) = choices.concept {
        out.value_text = cc
            .coding
            .iter()
            .find_map(|c| c.code.as_deref().map(str::trim).filter(|c| !c.is_empty()))
            .or(cc.text.as_deref().map(str::trim))
            .map(str::to_owned);
    } else if let Some(b) = choices.boolean {
        out.value_text = Some(b.to_string());
    } else if let Some(t) = choices.time.or(choices.date_time) {
        out.value_text = Some(t.trim().to_owned());
    }
    // Free text (a comment, a report) may name the patient: not kept in the log.
    if out
        .value_text
        .as_deref()
        .is_some_and(|t| !parcours_core::events::is_result_text(t))
    {
        out.value_text = None;
        issues.push(
            Issue::warning(
                IssueType::BusinessRule,
                format!(
                    "the text was not kept: {}",
                    parcours_core::events::RESULT_TEXT_RULE
                ),
            )
            .at(scope.at(&format!("{rel}value[x]"))),
        );
    }
    Ok(out)
}

/// `>60`, `<= 0.5`, `<3,5`: a bound written as text (lab systems converting HL7 v2 SN
/// values do this), as (comparator, value).
fn bounded_number(text: &str) -> Option<(&'static str, f64)> {
    let (comparator, rest) = if let Some(r) = text.strip_prefix("<=") {
        ("<=", r)
    } else if let Some(r) = text.strip_prefix(">=") {
        (">=", r)
    } else if let Some(r) = text.strip_prefix('<') {
        ("<", r)
    } else if let Some(r) = text.strip_prefix('>') {
        (">", r)
    } else {
        return None;
    };
    let number = rest.trim().replace(',', ".");
    let well_formed = !number.is_empty()
        && number.len() <= 32
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && number.bytes().next().is_some_and(|b| b.is_ascii_digit());
    if !well_formed {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some((comparator, value))
}

/// The low and high of the first normal reference range, in the value's unit.
fn reference_range(
    scope: &Scope<'_>,
    ranges: &[ReferenceRange],
    rel: &str,
    value: &ValueOut,
    loinc: &str,
    issues: &mut Vec<Issue>,
) -> (Option<f64>, Option<f64>) {
    let is_normal = |r: &ReferenceRange| {
        r.type_
            .as_ref()
            .is_none_or(|t| t.coding.iter().any(|c| c.code.as_deref() == Some("normal")))
    };
    let chosen = ranges
        .iter()
        .enumerate()
        .find(|(_, r)| is_normal(r) && r.applies_to.is_empty())
        .or_else(|| ranges.iter().enumerate().find(|(_, r)| is_normal(r)));
    let Some((index, range)) = chosen else {
        return (None, None);
    };
    let mut bound = |q: Option<&Quantity>, which: &str| -> Option<f64> {
        let q = q?;
        let v = q.value?;
        let unit = unit_of(q).or_else(|| value.sent_unit.clone());
        match (unit.as_deref(), value.unit.as_deref()) {
            (Some(from), Some(to)) if from != to => {
                match units::convert(v, from, to, Some(loinc)) {
                    Ok(converted) => Some(converted),
                    Err(_) => {
                        issues.push(
                            Issue::warning(
                                IssueType::Value,
                                "the reference range is in a unit that cannot be converted to the value's: it was left out",
                            )
                            .at(scope.at(&format!("{rel}[{index}].{which}"))),
                        );
                        None
                    }
                }
            }
            _ => Some(v),
        }
    };
    let low = bound(range.low.as_ref(), "low");
    let high = bound(range.high.as_ref(), "high");
    (low, high)
}

/// H, L, HH, LL, A, N from v3-ObservationInterpretation / v2-0078 (HU → HH, LU → LL,
/// AA → A); other interpretations (POS, NEG, susceptibility) give none.
fn abnormal_flag(interpretation: &[CodeableConcept]) -> Option<String> {
    const SYSTEMS: &[&str] = &[
        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "http://terminology.hl7.org/CodeSystem/v2-0078",
        "http://hl7.org/fhir/v2/0078",
        "http://hl7.org/fhir/v3/ObservationInterpretation",
    ];
    interpretation
        .iter()
        .flat_map(|cc| cc.coding.iter())
        .filter(|c| c.system.as_deref().is_none_or(|s| SYSTEMS.contains(&s)))
        .find_map(|c| {
            let flag = match c.code.as_deref()?.trim() {
                "H" => "H",
                "L" => "L",
                "HH" | "HU" => "HH",
                "LL" | "LU" => "LL",
                "A" | "AA" => "A",
                "N" => "N",
                _ => return None,
            };
            Some(flag.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_bounds() {
        assert_eq!(bounded_number(">60"), Some((">", 60.0)));
        assert_eq!(bounded_number("<= 0.5"), Some(("<=", 0.5)));
        assert_eq!(bounded_number("<3,5"), Some(("<", 3.5)));
        assert_eq!(bounded_number(">=90"), Some((">=", 90.0)));
        for not in [
            "60", "> ", ">abc", ">1.2.3", ">.5", "positive", ">-5", ">1e9",
        ] {
            assert_eq!(bounded_number(not), None, "{not}");
        }
    }

    #[test]
    fn interpretation_flags() {
        let cc = |system: Option<&str>, code: &str| CodeableConcept {
            coding: vec![crate::r4::Coding {
                system: system.map(str::to_owned),
                code: Some(code.to_owned()),
                ..Default::default()
            }],
            text: None,
        };
        let v3 = Some("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation");
        assert_eq!(abnormal_flag(&[cc(v3, "H")]).as_deref(), Some("H"));
        assert_eq!(abnormal_flag(&[cc(v3, "HU")]).as_deref(), Some("HH"));
        assert_eq!(abnormal_flag(&[cc(None, "LL")]).as_deref(), Some("LL"));
        assert_eq!(abnormal_flag(&[cc(v3, "AA")]).as_deref(), Some("A"));
        assert_eq!(abnormal_flag(&[cc(v3, "POS")]), None);
        assert_eq!(abnormal_flag(&[cc(Some("http://local"), "H")]), None);
    }

    #[test]
    fn units_prefer_ucum_codes_and_canonical_spellings() {
        let q = |unit: Option<&str>, system: Option<&str>, code: Option<&str>| Quantity {
            value: Some(1.0),
            comparator: None,
            unit: unit.map(str::to_owned),
            system: system.map(str::to_owned),
            code: code.map(str::to_owned),
        };
        assert_eq!(
            unit_of(&q(Some("lbs"), Some(UCUM), Some("[lb_av]"))).as_deref(),
            Some("[lb_av]")
        );
        assert_eq!(
            unit_of(&q(Some("mmol/l"), None, None)).as_deref(),
            Some("mmol/L")
        );
        assert_eq!(
            unit_of(&q(None, Some("http://local"), Some("U/L"))).as_deref(),
            Some("U/L")
        );
        assert_eq!(unit_of(&q(Some("  "), None, None)), None);
    }
}
