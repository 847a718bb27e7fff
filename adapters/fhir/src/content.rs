//! Content negotiation: FHIR JSON in, everything else out with 415.

use crate::outcome::Refusal;

/// Check the `Content-Type` of a request: FHIR JSON only.
///
/// Accepted: `application/fhir+json` and `application/json`, in any case, with optional
/// parameters; a `charset` must be UTF-8 (FHIR mandates it) and a `fhirVersion`, if
/// given, must be R4 (`4.0`, or `4.0.1`).
///
/// Refused with **415**: a missing content type, FHIR XML (`application/fhir+xml`,
/// `application/xml`, `text/xml`, anything `+xml`: parcours never parses XML), the DSTU2
/// `application/json+fhir`, form data, text, and every other type.
///
/// # Errors
///
/// A [`Refusal`] with status 415 and a `not-supported` issue saying what is accepted.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Refusal> {
    const ACCEPTED: &str = "send application/fhir+json (or application/json) in utf-8";
    let Some(raw) = content_type else {
        return Err(Refusal::unsupported_media_type(format!(
            "the request has no content type: {ACCEPTED}"
        )));
    };
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let is_xml = essence.ends_with("/xml") || essence.ends_with("+xml");
    if is_xml {
        return Err(Refusal::unsupported_media_type(format!(
            "fhir xml is not accepted: {ACCEPTED}"
        )));
    }
    if essence != "application/fhir+json" && essence != "application/json" {
        return Err(Refusal::unsupported_media_type(format!(
            "the content type is not fhir json: {ACCEPTED}"
        )));
    }
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            if param.trim().is_empty() {
                continue;
            }
            return Err(Refusal::unsupported_media_type(
                "a content-type parameter has no value",
            ));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        match name.as_str() {
            "charset" if value != "utf-8" && value != "utf8" => {
                return Err(Refusal::unsupported_media_type(format!(
                    "only the utf-8 charset is accepted: {ACCEPTED}"
                )));
            }
            "fhirversion" if value != "4.0" && value != "4.0.1" => {
                return Err(Refusal::unsupported_media_type(
                    "only fhir r4 (fhirVersion=4.0) is accepted",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::HttpStatus;

    #[test]
    fn fhir_json_is_accepted() {
        for ct in [
            "application/fhir+json",
            "application/json",
            "Application/FHIR+JSON",
            "application/fhir+json; charset=utf-8",
            "application/fhir+json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/fhir+json; fhirVersion=4.0",
            "application/fhir+json; charset=utf-8; fhirVersion=4.0.1",
            "application/fhir+json;",
        ] {
            assert_eq!(check_content_type(Some(ct)), Ok(()), "{ct}");
        }
    }

    #[test]
    fn everything_else_is_415() {
        for ct in [
            None,
            Some("application/fhir+xml"),
            Some("application/xml"),
            Some("text/xml"),
            Some("application/xml; charset=utf-8"),
            Some("APPLICATION/FHIR+XML"),
            Some("application/json+fhir"),
            Some("text/plain"),
            Some("multipart/form-data"),
            Some(""),
            Some("application/fhir+json; charset=iso-8859-1"),
            Some("application/fhir+json; fhirVersion=5.0"),
            Some("application/fhir+json; charset"),
        ] {
            let err = check_content_type(ct).expect_err("refused");
            assert_eq!(err.status, HttpStatus::UnsupportedMediaType, "{ct:?}");
            assert_eq!(err.status.code(), 415);
        }
    }

    #[test]
    fn xml_is_named_in_the_diagnostics() {
        let err = check_content_type(Some("application/fhir+xml")).expect_err("refused");
        assert!(err.issues[0].diagnostics.contains("xml"));
    }
}
