//! Patient → `patient.deceased` when it records a death; otherwise a Patient is only
//! read to name the subject of other resources.

use parcours_core::EventData;
use parcours_core::events::data;

use super::identity;
use super::json::typed;
use super::{Mapped, Scope};
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::Patient;

pub(super) fn map(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let patient: Patient = typed(scope.raw, &scope.prefix)?;
    let Some(text) = &patient.deceased_date_time else {
        if patient.deceased_boolean == Some(true) {
            return Ok(Mapped::skipped(
                Issue::warning(
                    IssueType::Required,
                    "the patient is deceased but has no deceasedDateTime: the death was not recorded",
                )
                .at(scope.at("deceasedBoolean")),
            ));
        }
        return Ok(Mapped::skipped(Issue::information(
            IssueType::Informational,
            "a patient resource only names the patient: nothing was recorded",
        )));
    };
    let at = scope.time(text, "deceasedDateTime")?;
    let server_id = match (scope.entry, scope.resource_id()) {
        // A lone Patient is a resource of the source's server.
        (None, Some(id)) => Some((format!("{}/Patient", scope.ctx.base_url), id.to_owned())),
        (Some(i), _) => scope
            .doc
            .entries
            .get(i)
            .and_then(|e| e.full_url)
            .and_then(|url| identity::remote_parts(url, &scope.ctx.base_url))
            .map(|(base, _, id)| (format!("{base}/Patient"), id)),
        (None, None) => None,
    };
    let identifier = identity::choose(scope, &patient, &scope.prefix, server_id)?;
    let subject = scope
        .ctx
        .pseudonymizer
        .subject(&scope.ctx.tenant, &identifier);
    Ok(Mapped {
        events: vec![scope.event(
            "deceased",
            &subject,
            at,
            EventData::PatientDeceased(data::PatientDeceased {}),
        )],
        issues: Vec::new(),
    })
}
