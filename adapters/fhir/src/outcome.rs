//! Refusals and their OperationOutcome: what is wrong, where (FHIRPath), and the HTTP
//! status to answer with.
//!
//! Diagnostics are built from fixed text and element paths only: they never echo a value
//! the sender sent, so a refusal cannot leak a patient identifier or name into a response,
//! a log line or a dead-letter queue.

use std::fmt;

use crate::r4::{OperationOutcome, OutcomeIssue};

/// How bad an issue is (the FHIR `IssueSeverity` value set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IssueSeverity {
    /// The whole request failed.
    Fatal,
    /// This part was refused.
    Error,
    /// Accepted, but something was not used or looks wrong.
    Warning,
    /// For information only.
    Information,
}

impl IssueSeverity {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// What kind of issue it is (codes of the FHIR `IssueType` value set that parcours uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssueType {
    /// Content invalid against the specification or a profile (generic).
    Invalid,
    /// A structural issue: not JSON, wrong JSON type, duplicate key.
    Structure,
    /// A required element is missing.
    Required,
    /// An element's value is not valid (a malformed date, an unknown unit).
    Value,
    /// A FHIR invariant is broken (two `value[x]` at once).
    Invariant,
    /// A code is not in its value set.
    CodeInvalid,
    /// Valid FHIR that parcours does not process.
    NotSupported,
    /// A reference could not be resolved.
    NotFound,
    /// A conditional reference matches several resources.
    MultipleMatches,
    /// A parcours rule refuses the content (a test INS, no LOINC code).
    BusinessRule,
    /// The content is too large.
    TooLong,
    /// An edit conflict: the content differs from what the server holds under the same
    /// id and version.
    Conflict,
    /// Information about what was done.
    Informational,
}

impl IssueType {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::BusinessRule => "business-rule",
            IssueType::TooLong => "too-long",
            IssueType::Conflict => "conflict",
            IssueType::Informational => "informational",
        }
    }
}

/// The HTTP status of a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HttpStatus {
    /// 400: not parseable, or fails basic FHIR rules (a required element, a code of a
    /// required binding, a JSON type).
    BadRequest,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 415: not FHIR JSON (XML is never parsed).
    UnsupportedMediaType,
    /// 422: valid FHIR that parcours cannot turn into events (unresolvable patient, no
    /// clinical time, unsupported resource, test identity).
    UnprocessableEntity,
}

impl HttpStatus {
    /// The numeric status.
    pub fn code(self) -> u16 {
        match self {
            HttpStatus::BadRequest => 400,
            HttpStatus::PayloadTooLarge => 413,
            HttpStatus::UnsupportedMediaType => 415,
            HttpStatus::UnprocessableEntity => 422,
        }
    }

    /// The status line text (`400 Bad Request`), as used in `Bundle.entry.response.status`.
    pub fn status_line(self) -> &'static str {
        match self {
            HttpStatus::BadRequest => "400 Bad Request",
            HttpStatus::PayloadTooLarge => "413 Payload Too Large",
            HttpStatus::UnsupportedMediaType => "415 Unsupported Media Type",
            HttpStatus::UnprocessableEntity => "422 Unprocessable Entity",
        }
    }
}

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status_line())
    }
}

/// One issue: severity, type, what (in words) and where (FHIRPath).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Issue {
    /// How bad.
    pub severity: IssueSeverity,
    /// What kind.
    pub code: IssueType,
    /// What is wrong, lower-case, never holding data the sender sent.
    pub diagnostics: String,
    /// FHIRPath of the element (`Bundle.entry[3].resource.valueQuantity.unit`), if any.
    pub expression: Option<String>,
}

impl Issue {
    /// An error issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: IssueSeverity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    /// A warning issue.
    pub fn warning(code: IssueType, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: IssueSeverity::Warning,
            ..Issue::error(code, diagnostics)
        }
    }

    /// An information issue.
    pub fn information(code: IssueType, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: IssueSeverity::Information,
            ..Issue::error(code, diagnostics)
        }
    }

    /// The same issue at a FHIRPath.
    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }

    /// The wire form.
    pub fn to_outcome_issue(&self) -> OutcomeIssue {
        OutcomeIssue {
            severity: self.severity.as_str().to_owned(),
            code: self.code.as_str().to_owned(),
            diagnostics: Some(self.diagnostics.clone()),
            expression: self.expression.iter().cloned().collect(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.diagnostics, self.code.as_str())?;
        if let Some(at) = &self.expression {
            write!(f, " at {at}")?;
        }
        Ok(())
    }
}

/// Why a FHIR request was refused: the issues and the HTTP status to answer with.
///
/// Turn it into an OperationOutcome with [`Refusal::operation_outcome`]. Its `Display`
/// shows the status and the first issue, and never holds patient data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fhir input refused with {status}: {}", first_issue(.issues))]
pub struct Refusal {
    /// The HTTP status to answer with.
    pub status: HttpStatus,
    /// What is wrong (at least one error issue).
    pub issues: Vec<Issue>,
}

fn first_issue(issues: &[Issue]) -> String {
    match issues {
        [] => "no issue recorded".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

impl Refusal {
    /// A refusal with one issue.
    pub fn new(status: HttpStatus, issue: Issue) -> Refusal {
        Refusal {
            status,
            issues: vec![issue],
        }
    }

    /// 400 with one error issue.
    pub fn bad_request(code: IssueType, diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(HttpStatus::BadRequest, Issue::error(code, diagnostics))
    }

    /// 422 with one error issue.
    pub fn unprocessable(code: IssueType, diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(
            HttpStatus::UnprocessableEntity,
            Issue::error(code, diagnostics),
        )
    }

    /// 415 with one error issue.
    pub fn unsupported_media_type(diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(
            HttpStatus::UnsupportedMediaType,
            Issue::error(IssueType::NotSupported, diagnostics),
        )
    }

    /// The same refusal, its (single or last) issue placed at a FHIRPath.
    pub fn at(mut self, expression: impl Into<String>) -> Refusal {
        if let Some(last) = self.issues.last_mut() {
            last.expression = Some(expression.into());
        }
        self
    }

    /// Join several refusals into one: all their issues, the most severe status
    /// (400 over 422: a structural problem must be fixed first).
    pub fn merge(refusals: Vec<Refusal>) -> Option<Refusal> {
        let status = refusals.iter().map(|r| r.status).min()?;
        Some(Refusal {
            status,
            issues: refusals.into_iter().flat_map(|r| r.issues).collect(),
        })
    }

    /// The OperationOutcome to answer with.
    pub fn operation_outcome(&self) -> OperationOutcome {
        outcome_of(&self.issues)
    }

    /// The OperationOutcome as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.operation_outcome()).unwrap_or(serde_json::Value::Null)
    }
}

impl From<&Refusal> for OperationOutcome {
    fn from(refusal: &Refusal) -> OperationOutcome {
        refusal.operation_outcome()
    }
}

/// An OperationOutcome holding these issues (an `information` "all ok" one when empty,
/// since FHIR requires at least one issue).
pub fn outcome_of(issues: &[Issue]) -> OperationOutcome {
    let mut issue: Vec<OutcomeIssue> = issues.iter().map(Issue::to_outcome_issue).collect();
    if issue.is_empty() {
        issue.push(
            Issue::information(IssueType::Informational, "all content was processed")
                .to_outcome_issue(),
        );
    }
    OperationOutcome {
        resource_type: "OperationOutcome".to_owned(),
        issue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_becomes_an_operation_outcome() {
        let r = Refusal::bad_request(IssueType::Required, "observation has no code")
            .at("Observation.code");
        assert_eq!(r.status.code(), 400);
        let json = r.to_json();
        assert_eq!(json["resourceType"], "OperationOutcome");
        assert_eq!(json["issue"][0]["severity"], "error");
        assert_eq!(json["issue"][0]["code"], "required");
        assert_eq!(json["issue"][0]["expression"][0], "Observation.code");
        assert_eq!(
            r.to_string(),
            "fhir input refused with 400 Bad Request: observation has no code (required) at Observation.code"
        );
    }

    #[test]
    fn merging_keeps_every_issue_and_the_most_basic_status() {
        let a = Refusal::unprocessable(IssueType::NotFound, "a");
        let b = Refusal::bad_request(IssueType::Structure, "b");
        let m = Refusal::merge(vec![a, b]).expect("two refusals");
        assert_eq!(m.status, HttpStatus::BadRequest);
        assert_eq!(m.issues.len(), 2);
        assert!(Refusal::merge(Vec::new()).is_none());
    }

    #[test]
    fn an_empty_outcome_still_has_an_issue() {
        let o = outcome_of(&[]);
        assert_eq!(o.issue.len(), 1);
        assert_eq!(o.issue[0].severity, "information");
    }
}
