//! Code tables: HL7 and PAM-FR codes to the canonical vocabulary. The crate docs show
//! them as tables; keep both in step.

/// PV1-2 patient class (HL7 table 0004) → `class`.
pub(crate) fn encounter_class(code: Option<&str>) -> &'static str {
    match code.map(str::to_ascii_uppercase).as_deref() {
        Some("E") => "emergency",
        Some("O" | "R") => "outpatient",
        _ => "inpatient",
    }
}

/// ZFM-2 (PAM-FR, PMSI *mode de sortie*) with ZFM-4 (*mode de destination*) → destination.
pub(crate) fn destination_from_zfm(mode: &str, destination: Option<&str>) -> Option<&'static str> {
    match mode {
        "9" => Some("deceased"),
        "8" if destination == Some("7") => Some("nursing-home"),
        "8" => Some("home"),
        "6" | "7" | "0" => Some("transfer"),
        _ => None,
    }
}

/// PV1-36 discharge disposition → destination.
///
/// `french` selects the PAM-FR reading (MSH-12 `…^FRA^…` or a ZBE segment present):
/// PMSI-style codes (`9`, `8`, `87`, `7x`, `6x`, `0x`) and the French *circonstance de
/// sortie* codes (`2` … `6`, `R`, `E`, `F`), which say how the stay ended but not where
/// the patient went (→ `unknown`, as when PV1-36 is empty; send ZFM for the
/// destination). Otherwise HL7 table 0112 (one-digit codes are read as their
/// zero-padded form; a code outside it is `other`: stated, but not one parcours reads).
pub(crate) fn destination_from_pv1_36(code: &str, french: bool) -> &'static str {
    let code = code.trim().to_ascii_uppercase();
    if french {
        let mut chars = code.chars();
        return match (chars.next(), chars.next(), chars.next()) {
            (Some('9'), None, _) => "deceased",
            (Some('8'), Some('7'), None) => "nursing-home",
            (Some('8'), _, None) => "home",
            (Some('7'), _, None) => "transfer",
            (Some('6' | '0'), Some(_), None) => "transfer",
            _ => parcours_core::events::UNSTATED_DESTINATION,
        };
    }
    parcours_core::events::discharge_status_destination(&code)
}

/// What to do with an OBX given its result status (OBX-11, HL7 table 0085).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusMapping {
    /// Emit with this canonical status.
    Status(&'static str),
    /// Not a result: emit nothing (`O`, order detail only).
    Skip,
}

/// OBX-11 → status; `None` for a code not in table 0085.
pub(crate) fn observation_status(code: &str) -> Option<StatusMapping> {
    use StatusMapping::{Skip, Status};
    Some(match code.trim().to_ascii_uppercase().as_str() {
        "F" | "U" => Status("final"),
        "C" => Status("corrected"),
        "A" => Status("amended"),
        "P" | "R" | "I" | "S" => Status("preliminary"),
        "X" | "N" => Status("cancelled"),
        "W" | "D" => Status("entered-in-error"),
        "O" => Skip,
        _ => return None,
    })
}

/// OBX-8 abnormal flag (HL7 table 0078) → `H, L, HH, LL, A, N`; flags that are not about
/// abnormality (susceptibility `S R I`, delta `U D`, `B W` …) give `None`.
pub(crate) fn abnormal_flag(code: &str) -> Option<&'static str> {
    Some(match code.trim().to_ascii_uppercase().as_str() {
        "H" => "H",
        "L" => "L",
        "HH" | "HU" | ">" => "HH",
        "LL" | "LU" | "<" => "LL",
        "A" | "AA" => "A",
        "N" => "N",
        _ => return None,
    })
}

/// Coding systems whose codes are LOINC codes.
pub(crate) fn is_loinc_system(system: &str) -> bool {
    matches!(
        system.trim().to_ascii_uppercase().as_str(),
        "LN" | "LOINC" | "PCLOCD" | "HTTP://LOINC.ORG" | "2.16.840.1.113883.6.1"
    )
}

/// Coding systems whose codes are ICD-10 (CIM-10 in France).
pub(crate) fn is_icd10_system(system: &str) -> bool {
    let system = system.trim().to_ascii_uppercase();
    // National modifications keep the WHO categories pathway files name (`I50`, `E11`):
    // the US clinical one (table 0396 `I10C`) and the German one (`I10G2004`, `I10G2019`…,
    // for a CPTS on the border).
    if system.starts_with("I10G") && system[4..].bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    matches!(
        system.as_str(),
        "I10"
            | "I10C"
            | "ICD10CM"
            | "ICD-10-CM"
            | "ICD10GM"
            | "ICD-10-GM"
            | "ICD10"
            | "ICD-10"
            | "ICD10FR"
            | "CIM10"
            | "CIM-10"
            | "CIM10FR"
            | "2.16.840.1.113883.6.3"
    )
}

/// Coding systems whose codes are SNOMED CT concept ids (HL7 table 0396 `SCT`, the
/// FHIR URI, the OID). `SNM`/`SNM3` (SNOMED before SNOMED CT) are not: their codes are
/// not the concept ids pathway files name.
pub(crate) fn is_snomed_system(system: &str) -> bool {
    matches!(
        system.trim().to_ascii_uppercase().as_str(),
        "SCT"
            | "SNOMED"
            | "SNOMEDCT"
            | "SNOMED-CT"
            | "SNOMED CT"
            | "HTTP://SNOMED.INFO/SCT"
            | "2.16.840.1.113883.6.96"
    )
}

/// Whether a code has the shape of an ICD-10 code (`E11`, `E11.9`, `E119`, `I50.1`): a
/// letter, two digits (the second may be a letter in a few chapters), then up to four
/// letters or digits after an optional dot. Used only when DG1 names no coding system.
pub(crate) fn looks_like_icd10(code: &str) -> bool {
    let code = code.trim();
    let b = code.as_bytes();
    if b.len() < 3 || !b[0].is_ascii_alphabetic() || !b[1].is_ascii_digit() {
        return false;
    }
    if !b[2].is_ascii_alphanumeric() {
        return false;
    }
    let rest = code[3..].strip_prefix('.').unwrap_or(&code[3..]);
    rest.len() <= 4 && rest.bytes().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discharge_destinations() {
        assert_eq!(destination_from_pv1_36("01", false), "home");
        assert_eq!(destination_from_pv1_36("1", false), "home");
        assert_eq!(destination_from_pv1_36("03", false), "nursing-home");
        assert_eq!(destination_from_pv1_36("20", false), "deceased");
        assert_eq!(destination_from_pv1_36("02", false), "transfer");
        assert_eq!(destination_from_pv1_36("ZZ", false), "other");
        assert_eq!(destination_from_pv1_36("9", true), "deceased");
        assert_eq!(destination_from_pv1_36("87", true), "nursing-home");
        assert_eq!(destination_from_pv1_36("8", true), "home");
        assert_eq!(destination_from_pv1_36("71", true), "transfer");
        assert_eq!(destination_from_pv1_36("61", true), "transfer");
        // A circonstance de sortie says how the stay ended, not where the patient went.
        assert_eq!(destination_from_pv1_36("3", true), "unknown");
        assert_eq!(destination_from_pv1_36("6", true), "unknown");
        assert_eq!(destination_from_pv1_36("R", true), "unknown");
        assert_eq!(destination_from_zfm("8", Some("7")), Some("nursing-home"));
        assert_eq!(destination_from_zfm("8", None), Some("home"));
        assert_eq!(destination_from_zfm("", None), None);
    }

    #[test]
    fn diagnosis_code_systems_and_shapes() {
        for icd10 in [
            "I10",
            "i10c",
            "ICD-10-CM",
            "I10G2019",
            "CIM10",
            "2.16.840.1.113883.6.3",
        ] {
            assert!(is_icd10_system(icd10), "{icd10}");
        }
        for other in ["I10P", "I10GX", "I9", "I9C", "SCT"] {
            assert!(!is_icd10_system(other), "{other}");
        }
        assert!(is_snomed_system("SCT"));
        assert!(is_snomed_system("http://snomed.info/sct"));
        assert!(!is_snomed_system("SNM"));
        assert!(looks_like_icd10("E11"));
        assert!(looks_like_icd10("E11.9"));
        assert!(looks_like_icd10("e119"));
        assert!(looks_like_icd10("I50.1"));
        assert!(!looks_like_icd10("44054006"));
        assert!(!looks_like_icd10("250.00"));
        assert!(!looks_like_icd10("E1"));
        assert!(!looks_like_icd10("E11.99999"));
        assert!(!looks_like_icd10("E11-9"));
    }
}
