//! Condition → `diagnosis.recorded`.

use parcours_core::EventData;
use parcours_core::events::data;

use super::encounter::usable_condition;
use super::identity;
use super::json::typed;
use super::time::TimeError;
use super::{Mapped, Scope, diagnosis_code};
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::Condition;

pub(super) fn map(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let condition: Condition = typed(scope.raw, &scope.prefix)?;
    if !usable_condition(&condition) {
        return Ok(Mapped::skipped(
            Issue::information(
                IssueType::Informational,
                "a refuted, unconfirmed, provisional, differential or entered-in-error condition is not a diagnosis: nothing was recorded",
            )
            .at(scope.at("verificationStatus")),
        ));
    }
    let codes: Vec<(String, &'static str)> = condition
        .code
        .iter()
        .flat_map(|cc| cc.coding.iter())
        .filter_map(diagnosis_code)
        .collect();
    // One event per condition: the ICD-10 (CIM-10) code when there is one, else SNOMED CT.
    let Some((code, system)) = codes
        .iter()
        .find(|(_, s)| *s == "icd-10")
        .or_else(|| codes.first())
        .cloned()
    else {
        return Ok(Mapped::skipped(
            Issue::warning(
                IssueType::BusinessRule,
                "the condition has no icd-10 (cim-10) or snomed ct code: it was not used",
            )
            .at(scope.at("code")),
        ));
    };
    // `recordedDate` is optional in FHIR: the resource's last update, then the bundle's
    // time stand in. Not the onset: when the condition began, perhaps years before (a
    // diabetes since 2015), would start its pathway then, every deadline since overdue
    // at once.
    let stated = if let Some(t) = &condition.recorded_date {
        Some((t.as_str(), "recordedDate"))
    } else {
        // FHIR STU3's name for it (older Synthea exports).
        condition
            .asserted_date
            .as_deref()
            .map(|t| (t, "assertedDate"))
    };
    // A year or a month only (an International Patient Summary's `"2016-10"`) is no
    // instant to start a pathway from: the same stand-ins as for no time at all.
    let imprecise = stated.filter(|(text, _)| {
        super::time::parse(text.trim(), &scope.ctx.time_zone) == Err(TimeError::TooImprecise)
    });
    let own = match stated {
        Some(stated) if imprecise.is_none() => Some(stated),
        _ => condition
            .meta
            .as_ref()
            .and_then(|m| m.last_updated.as_deref())
            .map(|t| (t, "meta.lastUpdated")),
    };
    let (at, used) = match (own, scope.doc.timestamp) {
        (Some((text, rel)), _) => (scope.time(text, rel)?, scope.at(rel)),
        (None, Some(text)) => (
            super::time::parse(text.trim(), &scope.ctx.time_zone).map_err(|e| {
                Refusal::unprocessable(IssueType::Value, e.describe()).at("Bundle.timestamp")
            })?,
            "Bundle.timestamp".to_owned(),
        ),
        (None, None) => {
            if let Some((_, rel)) = imprecise {
                return Err(Refusal::unprocessable(
                    IssueType::Value,
                    format!(
                        "{}: {rel} gives a year or a month only, and there is no \
                         meta.lastUpdated or bundle timestamp to record the diagnosis at",
                        TimeError::TooImprecise.describe()
                    ),
                )
                .at(scope.at(rel)));
            }
            return Err(Refusal::unprocessable(
                IssueType::Required,
                "the condition has no recording time: send recordedDate (or \
                 meta.lastUpdated, or the bundle's timestamp); the onset is not used, as a \
                 pathway would start when the condition began, perhaps years ago",
            )
            .at(scope.at("recordedDate")));
        }
    };
    let mut issues = Vec::new();
    if let Some((_, rel)) = imprecise {
        issues.push(
            Issue::information(
                IssueType::Informational,
                format!("{rel} gives a year or a month only: the diagnosis is recorded at {used}"),
            )
            .at(scope.at(rel)),
        );
    } else if condition.recorded_date.is_none() {
        issues.push(
            Issue::information(
                IssueType::Informational,
                format!("recordedDate is absent: the diagnosis is recorded at {used}"),
            )
            .at(scope.at("recordedDate")),
        );
    }
    let subject = identity::subject(scope, condition.subject.as_ref(), "subject")?;
    let data = data::DiagnosisRecorded {
        code,
        system: system.to_owned(),
    };
    Ok(Mapped {
        events: vec![scope.event("", &subject, at, EventData::DiagnosisRecorded(data))],
        issues,
    })
}
