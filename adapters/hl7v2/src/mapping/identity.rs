//! Which identifier names the patient (PID-3, PID-32, MRG-1), before pseudonymisation.

use parcours_identity::{
    OID_INS_NIA, OID_INS_NIA_TEST, OID_INS_NIR, OID_INS_NIR_TEST, PatientIdentifier,
};

use crate::error::MapError;
use crate::message::{Field, Rep, Seg};

/// How a message's identifiers are read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules<'a> {
    /// Accept test INS identities ([`crate::IntakeConfig::allow_test_ins`]).
    pub(crate) allow_test_ins: bool,
    /// The assigning authority of identifiers the sending facility sends without one
    /// ([`crate::IntakeConfig::assigning_authorities`], by MSH-4).
    pub(crate) default_authority: Option<&'a str>,
}

/// One CX repetition.
struct Cx<'a> {
    rep: Rep<'a>,
    value: Option<String>,
    /// CX-4.2 (universal id), else CX-4.1 (namespace id).
    authority: Option<String>,
    namespace: Option<String>,
    universal: Option<String>,
    type_code: Option<String>,
}

fn read_cx(field: Field<'_>) -> Vec<Cx<'_>> {
    field
        .reps()
        .map(|rep| {
            let hd = rep.comp(4);
            let namespace = hd.sub(1).value();
            let universal = hd.sub(2).value();
            Cx {
                rep,
                value: rep.comp(1).value(),
                authority: universal.clone().or_else(|| namespace.clone()),
                namespace,
                universal,
                type_code: rep.comp(5).value().map(|t| t.to_ascii_uppercase()),
            }
        })
        .collect()
}

enum Ins {
    Real(&'static str),
    Test(&'static str),
}

fn ins_of(cx: &Cx<'_>) -> Option<Ins> {
    [cx.universal.as_deref(), cx.namespace.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|oid| match oid {
            OID_INS_NIR => Some(Ins::Real(OID_INS_NIR)),
            OID_INS_NIA => Some(Ins::Real(OID_INS_NIA)),
            OID_INS_NIR_TEST => Some(Ins::Test(OID_INS_NIR_TEST)),
            OID_INS_NIA_TEST => Some(Ins::Test(OID_INS_NIA_TEST)),
            _ => None,
        })
}

/// INS identifiers in a CX list, NIR first; refuses test INS unless allowed.
fn ins_candidates(list: &[Cx<'_>], allow_test: bool) -> Result<Vec<PatientIdentifier>, MapError> {
    let mut found: Vec<(u8, PatientIdentifier)> = Vec::new();
    for cx in list {
        let Some(kind) = ins_of(cx) else { continue };
        let (oid, rank) = match kind {
            Ins::Real(oid) => (oid, if oid == OID_INS_NIR { 0 } else { 1 }),
            Ins::Test(oid) if allow_test => (oid, 2),
            Ins::Test(oid) => {
                return Err(MapError::TestIdentity {
                    location: cx.rep.location(),
                    oid,
                });
            }
        };
        if let Some(v) = &cx.value {
            found.push((rank, PatientIdentifier::ins(oid, v.clone())));
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// The identifier types preferred, best first: PI (the IPP), MR (or the common MRN),
/// PT, untyped. Any other type comes after them, in message order.
const PREFERRED_TYPES: [&str; 5] = ["PI", "MR", "MRN", "PT", ""];

/// Types (HL7 table 0203) that name an account or a stay, not a person: never the
/// patient's identifier, whatever else PID-3 holds.
const NOT_A_PERSON: [&str; 5] = ["AN", "ANC", "AND", "ANT", "VN"];

/// The best local identifier: type PI (the IPP), then MR (or the common MRN), then PT,
/// then untyped, then any other type (a site's own, `MEDREC`, `PK` …, in message
/// order: as parcours-fhir takes any other identifier with a system) but an account's
/// or a stay's ([`NOT_A_PERSON`]); each needs a value and an assigning authority (CX-4,
/// universal id preferred). One of a preferred type without CX-4 takes the sending
/// facility's default ([`Rules::default_authority`]): its own record numbers; another
/// type (`SS`, `HN` …) is another numbering, never put in the facility's. An INS is
/// never a local identifier.
fn local_candidate(list: &[Cx<'_>], rules: Rules<'_>) -> Option<PatientIdentifier> {
    let rank = |cx: &Cx<'_>| {
        let code = cx.type_code.as_deref().unwrap_or("");
        PREFERRED_TYPES
            .iter()
            .position(|t| *t == code)
            .unwrap_or(PREFERRED_TYPES.len())
    };
    list.iter()
        .filter(|cx| ins_of(cx).is_none())
        .filter(|cx| {
            !cx.type_code
                .as_deref()
                .is_some_and(|t| NOT_A_PERSON.contains(&t))
        })
        .filter_map(|cx| {
            let rank = rank(cx);
            let authority = cx.authority.as_deref().or_else(|| {
                rules
                    .default_authority
                    .filter(|_| rank < PREFERRED_TYPES.len())
            })?;
            Some((rank, cx.value.as_deref()?, authority))
        })
        // `min_by_key` keeps the first of equal ranks: message order.
        .min_by_key(|(rank, _, _)| *rank)
        .map(|(_, value, authority)| PatientIdentifier::local(authority, value))
}

/// The identifier that names the patient of a PID segment.
///
/// The INS (OID 1.2.250.1.213.1.4.8 NIR, .9 NIA) is used only when PID-32 (identity
/// reliability) holds `VALI`; otherwise the local identifier. A test INS (.10, .11)
/// anywhere in PID-3 is refused unless `allow_test_ins`.
pub(crate) fn patient(pid: Seg<'_>, rules: Rules<'_>) -> Result<PatientIdentifier, MapError> {
    let field = pid.field(3);
    let list = read_cx(field);
    let ins = ins_candidates(&list, rules.allow_test_ins)?;
    if qualified(pid)
        && let Some(id) = ins.into_iter().next()
    {
        return Ok(id);
    }
    local_candidate(&list, rules).ok_or_else(|| MapError::NoPatientIdentifier {
        location: field.location(),
    })
}

/// Whether PID-32 (identity reliability) holds `VALI`.
fn qualified(pid: Seg<'_>) -> bool {
    pid.field(32)
        .reps()
        .any(|r| r.value().is_some_and(|v| v.eq_ignore_ascii_case("VALI")))
}

/// The (INS, local identifier) of a PID segment whose identity is qualified (PID-32
/// `VALI`) and whose PID-3 holds both: the message says the local identifier (the
/// hospital's IPP, a lab's id) names the person of that INS, which an identity link
/// keeps. `None` otherwise (an INS not qualified is never linked).
pub(crate) fn link(
    pid: Seg<'_>,
    rules: Rules<'_>,
) -> Result<Option<(PatientIdentifier, PatientIdentifier)>, MapError> {
    let list = read_cx(pid.field(3));
    let ins = ins_candidates(&list, rules.allow_test_ins)?;
    if !qualified(pid) {
        return Ok(None);
    }
    let Some(ins) = ins.into_iter().next() else {
        return Ok(None);
    };
    Ok(local_candidate(&list, rules).map(|local| (ins, local)))
}

/// The identifier of the retired patient in an MRG segment (MRG-1): the local
/// identifier first (merges are of local records), else an INS.
pub(crate) fn merged(mrg: Seg<'_>, rules: Rules<'_>) -> Result<PatientIdentifier, MapError> {
    let field = mrg.field(1);
    let list = read_cx(field);
    let ins = ins_candidates(&list, rules.allow_test_ins)?;
    local_candidate(&list, rules)
        .or_else(|| ins.into_iter().next())
        .ok_or_else(|| MapError::NoPatientIdentifier {
            location: field.location(),
        })
}
