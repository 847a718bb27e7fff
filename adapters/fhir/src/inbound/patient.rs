//! Patient → `patient.deceased` when it records a death, `identity.merged` when it
//! records a merge (`link` of type `replaced-by` or `replaces`); otherwise a Patient is
//! only read to name the subject of other resources.
//!
//! A merge names two keys: the survivor's (the event's subject) and the retired one's
//! (`merged_subject`). `replaced-by` on this Patient: it is retired into `link.other`;
//! `replaces`: `link.other` is retired into it. `link.other` is keyed as any patient
//! reference is (`identity::subject`). `refer` and `seealso` links merge nothing
//! (information). A link to this Patient itself gives nothing (information). A
//! `replaces` link whose merge the retired Patient of the same bundle states too
//! (`replaced-by`) gives nothing (information): the merge is recorded once, from the
//! retired side.

use jiff::Timestamp;
use parcours_core::EventData;
use parcours_core::events::data;

use super::identity;
use super::json::typed;
use super::{Doc, Mapped, Scope};
use crate::context::Context;
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::Patient;

pub(super) fn map(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let patient: Patient = typed(scope.raw, &scope.prefix)?;
    let mut mapped = Mapped::default();
    if let Some(text) = &patient.deceased_date_time {
        let at = scope.time(text, "deceasedDateTime")?;
        let subject = own_key(scope, &patient)?;
        mapped.events.push(scope.event(
            "deceased",
            &subject,
            at,
            EventData::PatientDeceased(data::PatientDeceased {}),
        ));
    } else if patient.deceased_boolean == Some(true) {
        mapped.issues.push(
            Issue::warning(
                IssueType::Required,
                "the patient is deceased but has no deceasedDateTime: the death was not recorded",
            )
            .at(scope.at("deceasedBoolean")),
        );
    }
    merges(scope, &patient, &mut mapped)?;
    if mapped.events.is_empty() {
        lone_link(scope, &patient, &mut mapped)?;
    }
    if mapped.events.is_empty() && mapped.issues.is_empty() {
        mapped.issues.push(Issue::information(
            IssueType::Informational,
            "a patient resource only names the patient: nothing was recorded",
        ));
    }
    Ok(mapped)
}

/// Which way a merge link goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `replaced-by`: this Patient is retired into `link.other`.
    RetiredInto,
    /// `replaces`: `link.other` is retired into this Patient.
    Replaces,
}

/// The `identity.merged` events of the Patient's `link`s.
fn merges(scope: &Scope<'_>, patient: &Patient, mapped: &mut Mapped) -> Result<(), Refusal> {
    let mut own: Option<String> = None;
    let mut time: Option<Timestamp> = None;
    // The survivor a `replaced-by` link named, and where.
    let mut retired_into: Option<(String, usize)> = None;
    for (n, link) in patient.link.iter().enumerate() {
        let way = match link.type_.as_deref().map(str::trim) {
            Some("replaced-by") => Way::RetiredInto,
            Some("replaces") => Way::Replaces,
            Some("refer" | "seealso") => {
                mapped.issues.push(
                    Issue::information(
                        IssueType::Informational,
                        "a refer or seealso link does not merge patients: it was not used",
                    )
                    .at(scope.at(&format!("link[{n}].type"))),
                );
                continue;
            }
            None | Some("") => {
                return Err(Refusal::unprocessable(
                    IssueType::Required,
                    "Patient.link.type is required (replaced-by, replaces, refer or seealso)",
                )
                .at(scope.at(&format!("link[{n}].type"))));
            }
            Some(_) => {
                return Err(Refusal::unprocessable(
                    IssueType::CodeInvalid,
                    "Patient.link.type is not a code of the LinkType value set (replaced-by, replaces, refer, seealso)",
                )
                .at(scope.at(&format!("link[{n}].type"))));
            }
        };
        let rel = format!("link[{n}].other");
        let Some(other_ref) = &link.other else {
            return Err(Refusal::unprocessable(
                IssueType::Required,
                "Patient.link.other is required: a merge names the other patient",
            )
            .at(scope.at(&rel)));
        };
        let other = identity::subject(scope, Some(other_ref), &rel)?;
        let this = match &own {
            Some(k) => k.clone(),
            None => own.insert(own_key(scope, patient)?).clone(),
        };
        if other == this {
            mapped.issues.push(
                Issue::information(
                    IssueType::Informational,
                    "the link names this patient itself: nothing to merge",
                )
                .at(scope.at(&rel)),
            );
            continue;
        }
        let (survivor, retired) = match way {
            Way::RetiredInto => {
                if let Some((first, at)) = &retired_into
                    && *first != other
                {
                    return Err(Refusal::unprocessable(
                        IssueType::BusinessRule,
                        format!(
                            "the patient is replaced by two other patients (link[{at}] and link[{n}]): a retired record has one survivor"
                        ),
                    )
                    .at(scope.at(&rel)));
                }
                retired_into = Some((other.clone(), n));
                (other, this)
            }
            Way::Replaces => {
                if stated_by_retired(scope, &this, &other) {
                    mapped.issues.push(
                        Issue::information(
                            IssueType::Informational,
                            "the retired patient of this bundle states this merge (replaced-by): it is recorded from that entry",
                        )
                        .at(scope.at(&rel)),
                    );
                    continue;
                }
                (this, other)
            }
        };
        let part = format!("merge:{retired}:{survivor}");
        if mapped.events.iter().any(|e| {
            matches!(&e.data, EventData::IdentityMerged(m)
                if m.merged_subject == retired && e.subject == survivor)
        }) {
            continue;
        }
        let at = match time {
            Some(t) => t,
            None => *time.insert(patient_time(scope, patient, mapped, "merge")?),
        };
        mapped.events.push(scope.event(
            &part,
            &survivor,
            at,
            EventData::IdentityMerged(data::IdentityMerged {
                merged_subject: retired,
            }),
        ));
    }
    Ok(())
}

/// A Patient alone (no death, no merge) that names its patient by a qualified INS and a
/// local identifier (FR Core `VALI`: the identity update that brings the
/// qualification, as HL7 A31/A28 with PID-32) links them: `identity.linked`, at
/// `meta.lastUpdated` (without it: not linked, said). In a bundle, the link comes with
/// the events of the resources naming the patient, at their time. A Patient naming no
/// usable identifier stays what it was: nothing to record.
fn lone_link(scope: &Scope<'_>, patient: &Patient, mapped: &mut Mapped) -> Result<(), Refusal> {
    // In a bundle, the link comes with the events of the resources naming the patient.
    if scope.entry.is_some() || own_key(scope, patient).is_err() {
        return Ok(());
    }
    let links = std::mem::take(&mut *scope.links.borrow_mut());
    if links.is_empty() {
        return Ok(());
    }
    let Ok(at) = patient_time(scope, patient, mapped, "link") else {
        mapped.issues.push(
            Issue::information(
                IssueType::Informational,
                "the qualified INS and the local identifier were not linked: a link needs a time, send meta.lastUpdated",
            )
            .at(scope.at("meta.lastUpdated")),
        );
        return Ok(());
    };
    for (national, local) in links {
        mapped.events.push(scope.event(
            &format!("identity-link:{local}"),
            &national,
            at,
            EventData::IdentityLinked(data::IdentityLinked {
                local_subject: local,
            }),
        ));
    }
    Ok(())
}

/// When a merge or a link stated by a Patient happened: `meta.lastUpdated`, else the
/// bundle's `timestamp` (an information issue says so); neither: refused. Not the clock:
/// the mapping is pure, and a resend must give the same event.
fn patient_time(
    scope: &Scope<'_>,
    patient: &Patient,
    mapped: &mut Mapped,
    what: &str,
) -> Result<Timestamp, Refusal> {
    if let Some(text) = patient
        .meta
        .as_ref()
        .and_then(|m| m.last_updated.as_deref())
    {
        return scope.time(text, "meta.lastUpdated");
    }
    if let Some(text) = scope.doc.timestamp {
        let at = super::time::parse(text.trim(), &scope.ctx.time_zone).map_err(|e| {
            Refusal::unprocessable(IssueType::Value, e.describe()).at("Bundle.timestamp")
        })?;
        mapped.issues.push(
            Issue::information(
                IssueType::Informational,
                format!("meta.lastUpdated is absent: the {what} is recorded at Bundle.timestamp"),
            )
            .at(scope.at("meta.lastUpdated")),
        );
        return Ok(at);
    }
    let what = match what {
        "merge" => "a merge (link replaced-by or replaces)",
        _ => "a link of a qualified INS to a local identifier",
    };
    Err(Refusal::unprocessable(
        IssueType::Required,
        format!("{what} needs a time: send meta.lastUpdated, or the bundle's timestamp"),
    )
    .at(scope.at("meta.lastUpdated")))
}

/// The key of the Patient being mapped, chosen as for any Patient (`identity::choose`),
/// its id on the source's server last.
fn own_key(scope: &Scope<'_>, patient: &Patient) -> Result<String, Refusal> {
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
    let identifier = identity::choose(scope, patient, &scope.prefix, server_id)?;
    Ok(scope
        .ctx
        .pseudonymizer
        .subject(&scope.ctx.tenant, &identifier))
}

/// Whether a Patient of the bundle retired `retired` into `survivor` (`replaced-by`).
fn stated_by_retired(scope: &Scope<'_>, survivor: &str, retired: &str) -> bool {
    scope
        .doc
        .retirements
        .get_or_init(|| retirements(scope.ctx, scope.doc))
        .iter()
        .any(|(s, r)| s == survivor && r == retired)
}

/// The merges the bundle's Patients state by `replaced-by`, as (survivor, retired):
/// those that key cleanly (an entry refused is refused on its own).
fn retirements(ctx: &Context, doc: &Doc<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, entry) in doc.entries.iter().enumerate() {
        let (Some("Patient"), Some(raw)) = (entry.type_name, entry.resource) else {
            continue;
        };
        let Ok(patient) = typed::<Patient>(raw, "Patient") else {
            continue;
        };
        if !patient
            .link
            .iter()
            .any(|l| l.type_.as_deref().map(str::trim) == Some("replaced-by"))
        {
            continue;
        }
        let scope = Scope::new(
            ctx,
            doc,
            raw,
            "Patient",
            format!("Bundle.entry[{i}].resource"),
            Some(i),
        );
        let Ok(retired) = own_key(&scope, &patient) else {
            continue;
        };
        for link in &patient.link {
            if link.type_.as_deref().map(str::trim) != Some("replaced-by") {
                continue;
            }
            if let Ok(survivor) = identity::subject(&scope, link.other.as_ref(), "link.other") {
                out.push((survivor, retired.clone()));
            }
        }
    }
    out
}
