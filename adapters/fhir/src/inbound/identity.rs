//! Who the patient is: from a subject reference to a pseudonymous subject key.

use parcours_identity::{
    OID_INS_NIA, OID_INS_NIA_TEST, OID_INS_NIR, OID_INS_NIR_TEST, PatientIdentifier,
};
use serde_json::Value;

use super::json::typed;
use super::{Doc, Scope};
use crate::outcome::{IssueType, Refusal};
use crate::r4::{Identifier, Patient, Reference};

/// The FR Core identity-reliability extension.
pub(crate) const FR_CORE_IDENTITY_RELIABILITY: &str =
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability";

/// The system of pseudonymous subject keys parcours writes in `Task.for`.
pub(crate) use crate::SUBJECT_SYSTEM;

/// `urn:oid:1.2.3` → `1.2.3`, so an OID names one namespace whether it comes from FHIR
/// or from an HL7 v2 assigning authority; other systems are kept as sent.
pub(crate) fn normalise_system(system: &str) -> String {
    let system = system.trim();
    match system.strip_prefix("urn:oid:") {
        Some(oid) => oid.to_owned(),
        None => system.to_owned(),
    }
}

/// The subject key of the patient `reference` (at `element`, a path below the scope's
/// resource such as `subject` or `for`) points to.
pub(crate) fn subject(
    scope: &Scope<'_>,
    reference: Option<&Reference>,
    element: &str,
) -> Result<String, Refusal> {
    let at = scope.at(element);
    let Some(reference) = reference else {
        return Err(Refusal::unprocessable(
            IssueType::Required,
            "the patient is required: parcours events are about one patient",
        )
        .at(at));
    };
    // The key parcours gave is used as is (a care-team system answering a parcours Task),
    // as a logical reference or written as a conditional one.
    let conditional = reference
        .reference
        .as_deref()
        .and_then(|r| r.trim().strip_prefix("Patient?"))
        .and_then(|query| conditional_identifier(query, &at).ok())
        .map(|id| (id, format!("{at}.reference")));
    let logical = reference
        .identifier
        .clone()
        .map(|id| (id, format!("{at}.identifier.value")));
    if let Some((id, place)) = logical
        .into_iter()
        .chain(conditional)
        .find(|(id, _)| id.system.as_deref() == Some(SUBJECT_SYSTEM))
    {
        let value = id.value.as_deref().unwrap_or("").trim();
        if is_parcours_key(value) {
            return Ok(value.to_owned());
        }
        return Err(Refusal::unprocessable(
            IssueType::Value,
            "a urn:parcours:subject identifier must be a subject key as parcours serves it (`p-` then up to 126 characters among a-z A-Z 0-9 - _ . :), never an identifier in clear",
        )
        .at(place));
    }
    let identifier = patient_identifier(scope, reference, &at)?;
    Ok(scope
        .ctx
        .pseudonymizer
        .subject(&scope.ctx.tenant, &identifier))
}

/// A subject key as parcours serves it in a Task's `for` — the pseudonymiser's
/// (`p-` and 32 hex digits) or one an integrator gave over the canonical API (`p-7f3a`):
/// `p-`, then a key by the rule of every front (`parcours_core::events::is_subject_key`).
fn is_parcours_key(s: &str) -> bool {
    s.len() > 2 && s.starts_with("p-") && parcours_core::events::is_subject_key(s)
}

/// Where a literal reference led.
enum Target<'a> {
    /// A resource contained in the scope's resource, at this index.
    Contained(usize, &'a Value),
    /// A bundle entry, at this index.
    Entry(usize),
    /// Not in the request: a reference to the source's server.
    Remote {
        type_: String,
        id: String,
        base: String,
    },
}

fn patient_identifier(
    scope: &Scope<'_>,
    reference: &Reference,
    at: &str,
) -> Result<PatientIdentifier, Refusal> {
    let literal = reference
        .reference
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    // A bare id with the reference's `type` (`{"reference": "ExamplefrPatient001",
    // "type": "Patient"}`, as FR Core's own examples write): the relative reference
    // `type/id` it stands for.
    let typed;
    let literal = match (literal, reference.type_.as_deref().map(str::trim)) {
        (Some(r), Some(t)) if !t.is_empty() && !r.contains(['/', ':', '#']) => {
            typed = format!("{t}/{r}");
            Some(typed.as_str())
        }
        (literal, _) => literal,
    };
    // A conditional reference (`Patient?identifier=system|value`, as FHIR clients write
    // in transactions beside a Patient entry created `ifNoneExist`).
    if let Some(query) = literal.and_then(|r| r.strip_prefix("Patient?")) {
        let identifier = conditional_identifier(query, at)?;
        return match matching_patient_entry(scope, &identifier, at)? {
            Some(index) => entry_patient(scope, index, at),
            None => from_logical(scope, &identifier, at),
        };
    }
    let target = match literal {
        Some(r) => Some(locate(scope, r).ok_or_else(|| {
            Refusal::unprocessable(
                IssueType::NotFound,
                "the patient reference does not resolve: it points to no contained resource, no bundle entry and no resource of this source",
            )
            .at(format!("{at}.reference"))
        })?),
        None => None,
    };
    match target {
        Some(Target::Contained(index, value)) => {
            let prefix = format!("{}.contained[{index}]", scope.prefix);
            from_resource(scope, value, &prefix, None)
        }
        Some(Target::Entry(index)) => entry_patient(scope, index, at),
        Some(Target::Remote { type_, id, base }) => {
            if type_ != "Patient" {
                return Err(not_a_patient(at));
            }
            // A logical identifier given with the reference names the patient better
            // than a server's resource id.
            if let Some(identifier) = &reference.identifier {
                return from_logical(scope, identifier, at);
            }
            Ok(PatientIdentifier::local(format!("{base}/Patient"), id))
        }
        None => match &reference.identifier {
            Some(identifier) => {
                if let Some(t) = reference.type_.as_deref()
                    && t != "Patient"
                {
                    return Err(not_a_patient(at));
                }
                from_logical(scope, identifier, at)
            }
            None => Err(Refusal::unprocessable(
                IssueType::Required,
                "the patient reference has neither a reference nor an identifier",
            )
            .at(at.to_owned())),
        },
    }
}

/// The patient of bundle entry `index`, named as that entry's Patient names itself.
fn entry_patient(scope: &Scope<'_>, index: usize, at: &str) -> Result<PatientIdentifier, Refusal> {
    let doc = scope.doc;
    let entry = doc.entries.get(index).ok_or_else(|| {
        Refusal::unprocessable(
            IssueType::NotFound,
            "the patient reference does not resolve",
        )
        .at(format!("{at}.reference"))
    })?;
    let value = entry.resource.ok_or_else(|| {
        Refusal::unprocessable(
            IssueType::NotFound,
            "the referenced bundle entry has no resource",
        )
        .at(format!("{at}.reference"))
    })?;
    let prefix = format!("Bundle.entry[{index}].resource");
    // Its id on a server: its `fullUrl`'s, else (a `urn:uuid:` fullUrl, as converters
    // and Synthea write) its `id` on the source's — the key `Patient/<id>` would have
    // were the entry not in the bundle.
    let own_base = &scope.ctx.base_url;
    let server_id = entry
        .full_url
        .and_then(|url| remote_parts(url, own_base))
        .or_else(|| {
            let id = value.get("id").and_then(Value::as_str)?;
            remote_parts(&format!("Patient/{id}"), own_base)
        })
        .map(|(base, _, id)| (format!("{base}/Patient"), id));
    from_resource(scope, value, &prefix, server_id)
}

/// The identifier of a conditional reference's query (`identifier=system|value`, the
/// part after `Patient?`): the one search parcours can answer without a server, since
/// it names patients by their identifiers.
fn conditional_identifier(query: &str, at: &str) -> Result<Identifier, Refusal> {
    let refuse = |why: &str| {
        Refusal::unprocessable(IssueType::NotSupported, why.to_owned())
            .at(format!("{at}.reference"))
    };
    let mut params = query.split('&').filter(|p| !p.is_empty());
    let (Some(param), None) = (params.next(), params.next()) else {
        return Err(refuse(
            "a conditional patient reference is read by one search parameter only: identifier=system|value",
        ));
    };
    let Some(token) = param.strip_prefix("identifier=") else {
        return Err(refuse(
            "a conditional patient reference is read by identifier only: Patient?identifier=system|value",
        ));
    };
    let token = percent_decode(token).ok_or_else(|| {
        refuse("the conditional patient reference's identifier is not valid percent-encoding")
    })?;
    match token.split_once('|') {
        Some((system, value)) if !system.trim().is_empty() && !value.trim().is_empty() => {
            Ok(Identifier {
                use_: None,
                type_: None,
                system: Some(system.to_owned()),
                value: Some(value.to_owned()),
            })
        }
        _ => Err(Refusal::unprocessable(
            IssueType::Required,
            "a conditional patient reference needs the identifier's system and value: Patient?identifier=system|value",
        )
        .at(format!("{at}.reference"))),
    }
}

/// `%7C` → `|`; `None` for a `%` not followed by two hex digits or bytes that are not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The bundle's Patient entry holding `identifier` (systems compared as
/// [`normalise_system`] writes them), if any; several such entries leave the reference
/// ambiguous, as a server's search matching several resources does (refused).
fn matching_patient_entry(
    scope: &Scope<'_>,
    identifier: &Identifier,
    at: &str,
) -> Result<Option<usize>, Refusal> {
    let wanted = (
        normalise_system(identifier.system.as_deref().unwrap_or("")),
        identifier.value.as_deref().unwrap_or("").trim(),
    );
    let holds = |value: &Value| {
        value.get("resourceType").and_then(Value::as_str) == Some("Patient")
            && value
                .get("identifier")
                .and_then(Value::as_array)
                .is_some_and(|ids| {
                    ids.iter().any(|id| {
                        let field = |k: &str| id.get(k).and_then(Value::as_str);
                        field("system").map(normalise_system).as_deref() == Some(wanted.0.as_str())
                            && field("value").map(str::trim) == Some(wanted.1)
                    })
                })
    };
    let found: Vec<usize> = scope
        .doc
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.resource.is_some_and(holds))
        .map(|(i, _)| i)
        .collect();
    match found[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(Refusal::unprocessable(
            IssueType::MultipleMatches,
            "the conditional patient reference matches several Patient entries of the bundle",
        )
        .at(format!("{at}.reference"))),
    }
}

fn not_a_patient(at: &str) -> Refusal {
    Refusal::unprocessable(
        IssueType::NotSupported,
        "the subject is not a patient: parcours follows patients only",
    )
    .at(format!("{at}.reference"))
}

/// Find what a literal reference points to.
fn locate<'a>(scope: &Scope<'a>, reference: &str) -> Option<Target<'a>> {
    if let Some(local) = reference.strip_prefix('#') {
        let contained = scope.raw.get("contained")?.as_array()?;
        return contained.iter().enumerate().find_map(|(i, c)| {
            (c.get("id").and_then(Value::as_str) == Some(local)).then_some(Target::Contained(i, c))
        });
    }
    if let Some(index) = scope.doc.resolve(reference) {
        return Some(Target::Entry(index));
    }
    if reference.starts_with("urn:") {
        return None;
    }
    let (base, type_, id) = remote_parts(reference, &scope.ctx.base_url)?;
    Some(Target::Remote { type_, id, base })
}

/// `Patient/123`, `Patient/123/_history/2` or `https://host/fhir/Patient/123` as
/// (server base, type, id); a relative reference is on the source's own server.
pub(crate) fn remote_parts(reference: &str, own_base: &str) -> Option<(String, String, String)> {
    let no_history = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = no_history.rsplitn(3, '/');
    let id = parts.next()?;
    let type_ = parts.next()?;
    let base = parts.next();
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid_id || crate::r4::known_resource_type(type_).is_none() {
        return None;
    }
    let base = match base {
        None => own_base.to_owned(),
        Some(b) if b.starts_with("http://") || b.starts_with("https://") => {
            b.trim_end_matches('/').to_owned()
        }
        Some(_) => return None,
    };
    Some((base, type_.to_owned(), id.to_owned()))
}

fn from_resource(
    scope: &Scope<'_>,
    value: &Value,
    prefix: &str,
    server_id: Option<(String, String)>,
) -> Result<PatientIdentifier, Refusal> {
    if value.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        return Err(Refusal::unprocessable(
            IssueType::NotSupported,
            "the subject is not a patient: parcours follows patients only",
        )
        .at(format!("{prefix}.resourceType")));
    }
    let patient: Patient = typed(value, prefix)?;
    choose(scope, &patient, prefix, server_id)
}

/// The identifier that names a Patient resource, best first:
///
/// 1. its INS (NIR before NIA), only when FR Core identity reliability says `VALI`
///    (with the local identifier 2–4 would pick, if any, kept as the scope's identity
///    link: [`Scope::link`]);
/// 2. a local identifier of a system the source prefers (its IPP authority);
/// 3. a local identifier typed `PI` (FR Core IPP) or `MR` (medical record number);
/// 4. any other identifier with a system and a value (never an unqualified INS, never
///    an `old` one);
/// 5. the resource's id on a server (`<base>/Patient` | id): its `fullUrl`'s, else its
///    `id` on the source's.
pub(crate) fn choose(
    scope: &Scope<'_>,
    patient: &Patient,
    prefix: &str,
    server_id: Option<(String, String)>,
) -> Result<PatientIdentifier, Refusal> {
    let ctx = scope.ctx;
    let qualified = identity_is_qualified(patient);
    let usable: Vec<(usize, String, String, &Identifier)> = patient
        .identifier
        .iter()
        .enumerate()
        .filter_map(|(i, id)| {
            let system = normalise_system(id.system.as_deref()?);
            let value = id.value.as_deref()?.trim();
            (!system.is_empty() && !value.is_empty()).then(|| (i, system, value.to_owned(), id))
        })
        .collect();
    let local: Vec<&(usize, String, String, &Identifier)> = usable
        .iter()
        .filter(|(_, s, _, id)| !is_ins_system(s) && id.use_.as_deref() != Some("old"))
        .collect();
    let pick = ctx
        .preferred_systems
        .iter()
        .find_map(|p| local.iter().find(|(_, s, _, _)| s == p))
        .or_else(|| {
            local.iter().find(|(_, _, _, id)| {
                id.type_.as_ref().is_some_and(|t| {
                    t.coding
                        .iter()
                        .any(|c| matches!(c.code.as_deref(), Some("PI" | "MR")))
                })
            })
        })
        .or_else(|| local.first())
        .map(|(_, system, value, _)| PatientIdentifier::local(system.clone(), value.clone()));
    if qualified {
        let mut ins = None;
        for oid in [OID_INS_NIR, OID_INS_NIA] {
            if let Some((i, system, value, _)) = usable.iter().find(|(_, s, _, _)| s == oid) {
                check_ins_value(value, &format!("{prefix}.identifier[{i}].value"))?;
                ins = Some(PatientIdentifier::ins(system.clone(), value.clone()));
                break;
            }
        }
        if ins.is_none() {
            for oid in [OID_INS_NIR_TEST, OID_INS_NIA_TEST] {
                if let Some((i, system, value, _)) = usable.iter().find(|(_, s, _, _)| s == oid) {
                    if !ctx.allow_test_ins {
                        return Err(test_ins_refused(&format!(
                            "{prefix}.identifier[{i}].system"
                        )));
                    }
                    check_ins_value(value, &format!("{prefix}.identifier[{i}].value"))?;
                    ins = Some(PatientIdentifier::ins(system.clone(), value.clone()));
                    break;
                }
            }
        }
        if let Some(ins) = ins {
            // Named by both: the local identifier's key is linked to the INS's.
            if let Some(local) = &pick {
                scope.link(
                    ctx.pseudonymizer.subject(&ctx.tenant, &ins),
                    ctx.pseudonymizer.subject(&ctx.tenant, local),
                );
            }
            return Ok(ins);
        }
    }
    if let Some(local) = pick {
        return Ok(local);
    }
    if let Some((system, id)) = server_id {
        return Ok(PatientIdentifier::local(system, id));
    }
    Err(Refusal::unprocessable(
        IssueType::Required,
        "the patient has no usable identifier: send a qualified ins, a local identifier (system and value) or a resource of this source's server",
    )
    .at(format!("{prefix}.identifier")))
}

fn from_logical(
    scope: &Scope<'_>,
    identifier: &Identifier,
    at: &str,
) -> Result<PatientIdentifier, Refusal> {
    let at = format!("{at}.identifier");
    let system = identifier
        .system
        .as_deref()
        .map(normalise_system)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Refusal::unprocessable(
                IssueType::Required,
                "a logical patient reference needs identifier.system",
            )
            .at(format!("{at}.system"))
        })?;
    let value = identifier
        .value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Refusal::unprocessable(
                IssueType::Required,
                "a logical patient reference needs identifier.value",
            )
            .at(format!("{at}.value"))
        })?;
    if system == OID_INS_NIR_TEST || system == OID_INS_NIA_TEST {
        if !scope.ctx.allow_test_ins {
            return Err(test_ins_refused(&format!("{at}.system")));
        }
        check_ins_value(value, &format!("{at}.value"))?;
        return Ok(PatientIdentifier::ins(system, value));
    }
    if system == OID_INS_NIR || system == OID_INS_NIA {
        // The INS référentiel allows an INS to be shared only once the identity is
        // qualified: a sender naming the patient by INS alone vouches for that.
        check_ins_value(value, &format!("{at}.value"))?;
        return Ok(PatientIdentifier::ins(system, value));
    }
    Ok(PatientIdentifier::local(system, value))
}

fn is_ins_system(system: &str) -> bool {
    [OID_INS_NIR, OID_INS_NIA, OID_INS_NIR_TEST, OID_INS_NIA_TEST].contains(&system)
}

fn test_ins_refused(at: &str) -> Refusal {
    Refusal::unprocessable(
        IssueType::BusinessRule,
        "test ins identities (oid 1.2.250.1.213.1.4.10 and .11) are refused by this source's configuration",
    )
    .at(at.to_owned())
}

/// An INS (NIR or NIA) is 15 characters: 13 digits (the department may be 2A or 2B)
/// and a 2-digit key.
fn check_ins_value(value: &str, at: &str) -> Result<(), Refusal> {
    let b = value.as_bytes();
    let ok = b.len() == 15
        && b.iter().enumerate().all(|(i, c)| {
            c.is_ascii_digit() || (i == 6 && matches!(c, b'A' | b'B') && b[5] == b'2')
        });
    if ok {
        Ok(())
    } else {
        Err(Refusal::unprocessable(
            IssueType::Value,
            "an ins value is 15 characters: 13 digits (department 2A or 2B allowed) and a 2-digit key",
        )
        .at(at.to_owned()))
    }
}

/// Whether FR Core identity reliability says the identity is validated (`VALI`).
pub(crate) fn identity_is_qualified(patient: &Patient) -> bool {
    patient.extension.iter().any(|ext| {
        let url = ext.url.as_deref().unwrap_or("");
        let is_reliability = url == FR_CORE_IDENTITY_RELIABILITY
            || url.strip_prefix("http://") == FR_CORE_IDENTITY_RELIABILITY.strip_prefix("https://");
        is_reliability
            && ext.extension.iter().any(|sub| {
                sub.url.as_deref() == Some("identityStatus")
                    && (sub.value_coding.as_ref().and_then(|c| c.code.as_deref()) == Some("VALI")
                        || sub.value_code.as_deref() == Some("VALI")
                        || sub.value_codeable_concept.as_ref().is_some_and(|cc| {
                            cc.coding.iter().any(|c| c.code.as_deref() == Some("VALI"))
                        }))
            })
    })
}

impl Doc<'_> {
    /// The bundle entry a literal reference resolves to: by `fullUrl`, else by `Type/id`.
    pub(crate) fn resolve(&self, reference: &str) -> Option<usize> {
        if let Some(&i) = self.by_full_url.get(reference) {
            return Some(i);
        }
        let no_history = match reference.find("/_history/") {
            Some(i) => &reference[..i],
            None => reference,
        };
        if let Some(&i) = self.by_full_url.get(no_history) {
            return Some(i);
        }
        let mut parts = no_history.rsplitn(3, '/');
        let id = parts.next()?;
        let type_ = parts.next()?;
        self.by_type_id
            .get(&(type_.to_owned(), id.to_owned()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_lose_their_urn_oid_prefix() {
        assert_eq!(normalise_system("urn:oid:1.2.250.1.213.1.4.8"), OID_INS_NIR);
        assert_eq!(normalise_system(" http://x.org "), "http://x.org");
    }

    #[test]
    fn ins_values_have_a_fixed_shape() {
        for ok in ["180027512345678", "180022A51234578", "280022B51234578"] {
            assert!(check_ins_value(ok, "x").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "12345",
            "1800275123456789",
            "18002C512345678",
            "1800A7512345678",
        ] {
            assert!(check_ins_value(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_decoding_takes_two_hex_digits_only() {
        assert_eq!(
            percent_decode("urn%3Aoid%3A1.2%7CA%20b").as_deref(),
            Some("urn:oid:1.2|A b")
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        for bad in ["%", "%7", "%+1", "%zz", "%FF"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn references_split_into_base_type_and_id() {
        let base = "https://fhir.example/r4";
        assert_eq!(
            remote_parts("Patient/123", base),
            Some((base.to_owned(), "Patient".to_owned(), "123".to_owned()))
        );
        assert_eq!(
            remote_parts("https://other.example/fhir/Patient/a-1/_history/3", base),
            Some((
                "https://other.example/fhir".to_owned(),
                "Patient".to_owned(),
                "a-1".to_owned()
            ))
        );
        assert_eq!(remote_parts("Patient", base), None);
        assert_eq!(remote_parts("Foo/1", base), None);
        assert_eq!(remote_parts("Patient/a b", base), None);
        assert_eq!(remote_parts("ftp://x/Patient/1", base), None);
        assert!(is_parcours_key("p-0123456789abcdef0123456789abcdef"));
        assert!(is_parcours_key("p-7f3a"), "a key given over HTTP");
        assert!(!is_parcours_key("180027512345678"), "an INS in clear");
        assert!(!is_parcours_key("IPP-9"), "a hospital's identifier");
        assert!(!is_parcours_key("p-DUPONT Jean"));
        assert!(!is_parcours_key("p-"));
    }
}
