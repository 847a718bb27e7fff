//! Errors at the intake boundary, their positions in the message, and how each one is
//! acknowledged (MSA-1, ERR-3 from HL7 table 0357, ERR-4 severity).
//!
//! No `Display` here ever shows a field value from the message: only positions
//! (segment, field, repetition, component), what was expected, and the reason. They
//! reach logs, dead-letter reasons (stored in clear) and ERR-8 / MSA-3.
//!
//! One exception, kept narrow: an unsupported message type (MSH-9) or version (MSH-12)
//! is named, because that is what an integrator needs to fix, and only when the value
//! has the shape of one — MSH-9 as three letters or digits, `^`, three letters or digits
//! (`ORM^O01`); MSH-12 as a version number (`2.1`, `2.9.1`): see [`message_type_name`]
//! and [`version_name`]. Anything else in those fields is not named either.

use std::fmt;

use crate::guard::GuardError;
use crate::parse::ParseError;

/// A position in a message, as HL7's ERL data type (ERR-2) names it. Numbers are 1-based;
/// 0 means "not narrowed down to this level".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The segment name (`PID`).
    pub segment: String,
    /// Which occurrence of that segment in the message (1 for the first `OBX`).
    pub occurrence: u32,
    /// The field number (`3` for PID-3).
    pub field: u16,
    /// The repetition of the field (1 for the first).
    pub repetition: u16,
    /// The component.
    pub component: u16,
    /// The subcomponent.
    pub subcomponent: u16,
}

impl Location {
    /// A whole segment.
    pub fn segment(name: &str, occurrence: u32) -> Location {
        Location {
            segment: name.to_owned(),
            occurrence,
            field: 0,
            repetition: 0,
            component: 0,
            subcomponent: 0,
        }
    }

    /// A field of a segment (first repetition).
    pub fn field(name: &str, occurrence: u32, field: u16) -> Location {
        Location {
            field,
            repetition: 1,
            ..Location::segment(name, occurrence)
        }
    }

    /// The ERL value for ERR-2: `PID^1^3^2^4` (segment, occurrence, field, repetition,
    /// component, subcomponent; trailing zeros left out), with the given component
    /// separator.
    pub fn to_erl(&self, component_separator: char) -> String {
        let mut parts = vec![self.segment.clone(), self.occurrence.max(1).to_string()];
        let rest = [
            self.field,
            self.repetition,
            self.component,
            self.subcomponent,
        ];
        let last = rest.iter().rposition(|n| *n != 0).map_or(0, |i| i + 1);
        parts.extend(rest[..last].iter().map(|n| n.to_string()));
        parts.join(&component_separator.to_string())
    }
}

impl fmt::Display for Location {
    /// `PID-3`, `OBX(2)-5`, `PID-3[2].4.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if self.occurrence > 1 {
            write!(f, "({})", self.occurrence)?;
        }
        if self.field > 0 {
            write!(f, "-{}", self.field)?;
            if self.repetition > 1 {
                write!(f, "[{}]", self.repetition)?;
            }
            if self.component > 0 {
                write!(f, ".{}", self.component)?;
                if self.subcomponent > 0 {
                    write!(f, ".{}", self.subcomponent)?;
                }
            }
        }
        Ok(())
    }
}

/// MSA-1: how the message was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// `AA`: accepted (and, for parcours, durably committed).
    Accept,
    /// `AE`: an error in the content, or the event store is momentarily unavailable.
    Error,
    /// `AR`: rejected: not an HL7 message parcours can read, or a message type, version
    /// or processing id it does not accept.
    Reject,
}

impl AckCode {
    /// `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// ERR-3: HL7 table 0357, message error condition codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: message accepted.
    Success,
    /// 100: segment sequence error (a required segment is missing or misplaced).
    SegmentSequence,
    /// 101: required field missing.
    RequiredFieldMissing,
    /// 102: data type error.
    DataType,
    /// 103: table value not found.
    TableValueNotFound,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEvent,
    /// 202: unsupported processing id.
    UnsupportedProcessingId,
    /// 203: unsupported version id.
    UnsupportedVersion,
    /// 204: unknown key identifier.
    UnknownKey,
    /// 207: application internal error.
    ApplicationError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Success => 0,
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEvent => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersion => 203,
            ErrorCode::UnknownKey => 204,
            ErrorCode::ApplicationError => 207,
        }
    }

    /// The table 0357 text.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::Success => "Message accepted",
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEvent => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersion => "Unsupported version id",
            ErrorCode::UnknownKey => "Unknown key identifier",
            ErrorCode::ApplicationError => "Application internal error",
        }
    }
}

/// ERR-4: HL7 table 0516, error severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `E`: the message was not processed.
    Error,
    /// `W`: processed, with a warning.
    Warning,
    /// `I`: information only.
    Information,
}

impl Severity {
    /// `E`, `W` or `I`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
        }
    }
}

/// Why a message could not be turned into events (the segment, field and repetition are
/// in [`Location`] where known).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// MSH-12 names a version outside 2.3 … 2.8.
    #[error(
        "unsupported HL7 version{} (MSH-12): parcours reads 2.3 to 2.8",
        named(version)
    )]
    UnsupportedVersion {
        /// MSH-12.1 when it reads as a version number ([`version_name`]), else `None`.
        version: Option<String>,
    },
    /// MSH-11 holds a processing id this intake does not accept.
    #[error(
        "processing id{} (MSH-11) is not one this intake accepts ({accepted})",
        named(received)
    )]
    UnsupportedProcessingId {
        /// MSH-11.1 when it is one letter (table 0103's shape: `T`, `D`), else `None`.
        received: Option<String>,
        /// The processing ids this intake accepts (its configuration, not the message's
        /// value), comma-separated.
        accepted: String,
    },
    /// MSH-9 names a message type parcours does not read.
    #[error(
        "unsupported message type{} (MSH-9): parcours reads ADT and ORU^R01",
        named(message_type)
    )]
    UnsupportedMessageType {
        /// MSH-9 code and trigger when they have the shape of a message type
        /// ([`message_type_name`]), else `None`.
        message_type: Option<String>,
    },
    /// MSH-9 names a trigger event parcours does not read for this message type.
    #[error(
        "unsupported trigger event{} (MSH-9): parcours reads ADT and ORU^R01",
        named(message_type)
    )]
    UnsupportedEvent {
        /// MSH-9 code and trigger when they have the shape of a message type
        /// ([`message_type_name`]), else `None`.
        message_type: Option<String>,
    },
    /// MSH-4 is not in the configured list of facilities.
    #[error("sending facility (MSH-4) is not accepted by this intake")]
    FacilityNotAccepted,
    /// A segment the message type requires is absent.
    #[error("required segment {segment} is missing")]
    MissingSegment {
        /// The segment name.
        segment: &'static str,
    },
    /// A required value is empty.
    #[error("{location}: {what} is missing")]
    MissingField {
        /// Where it should be.
        location: Location,
        /// What it is (`visit number`).
        what: &'static str,
    },
    /// A value does not have the expected form.
    #[error("{location}: {what} is invalid: {reason}")]
    InvalidValue {
        /// Where it is.
        location: Location,
        /// What it is (`observation value`).
        what: &'static str,
        /// Why it is refused: a fixed text, so never the value itself.
        reason: &'static str,
    },
    /// A coded value is not in the table parcours knows.
    #[error("{location}: {what} is not one of {expected}")]
    UnknownCode {
        /// Where it is.
        location: Location,
        /// What it is (`result status`).
        what: &'static str,
        /// The codes parcours knows (a fixed text: the value received is never shown).
        expected: &'static str,
    },
    /// A test INS (OID 1.2.250.1.213.1.4.10 or .11) arrived and test identities are off.
    #[error(
        "{location}: test INS identity (OID {oid}) refused: this intake does not accept test identities"
    )]
    TestIdentity {
        /// The PID-3 / MRG-1 repetition.
        location: Location,
        /// The test OID.
        oid: &'static str,
    },
    /// No identifier in PID-3 / MRG-1 can name the patient.
    #[error(
        "{location}: no usable patient identifier (a qualified INS, or an identifier with its assigning authority in CX-4 or one configured for the sending facility MSH-4)"
    )]
    NoPatientIdentifier {
        /// PID-3 or MRG-1.
        location: Location,
    },
}

/// Everything that can stop a message between the bytes and the events.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The pre-parse guard refused the bytes.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The parser could not read the structure.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The message was read but cannot be mapped.
    #[error(transparent)]
    Map(#[from] MapError),
}

impl IntakeError {
    /// MSA-1 for this error: `AR` for messages parcours cannot or will not read (guard,
    /// parse, message type, version, processing id, facility), `AE` for content errors.
    pub fn ack_code(&self) -> AckCode {
        match self {
            IntakeError::Guard(_) | IntakeError::Parse(_) => AckCode::Reject,
            IntakeError::Map(e) => match e {
                MapError::UnsupportedVersion { .. }
                | MapError::UnsupportedProcessingId { .. }
                | MapError::UnsupportedMessageType { .. }
                | MapError::UnsupportedEvent { .. }
                | MapError::FacilityNotAccepted => AckCode::Reject,
                _ => AckCode::Error,
            },
        }
    }

    /// ERR-3 for this error (HL7 table 0357).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            IntakeError::Guard(e) => e.error_code(),
            IntakeError::Parse(_) => ErrorCode::SegmentSequence,
            IntakeError::Map(e) => match e {
                MapError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                MapError::UnsupportedProcessingId { .. } => ErrorCode::UnsupportedProcessingId,
                MapError::UnsupportedMessageType { .. } => ErrorCode::UnsupportedMessageType,
                MapError::UnsupportedEvent { .. } => ErrorCode::UnsupportedEvent,
                MapError::FacilityNotAccepted => ErrorCode::ApplicationError,
                MapError::MissingSegment { .. } => ErrorCode::SegmentSequence,
                MapError::MissingField { .. } => ErrorCode::RequiredFieldMissing,
                MapError::InvalidValue { .. } => ErrorCode::DataType,
                MapError::UnknownCode { .. } => ErrorCode::TableValueNotFound,
                MapError::TestIdentity { .. } | MapError::NoPatientIdentifier { .. } => {
                    ErrorCode::UnknownKey
                }
            },
        }
    }

    /// ERR-2: where in the message, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            IntakeError::Guard(e) => e.location(),
            IntakeError::Parse(e) => e.location(),
            IntakeError::Map(e) => match e {
                MapError::UnsupportedVersion { .. } => Some(Location::field("MSH", 1, 12)),
                MapError::UnsupportedProcessingId { .. } => Some(Location::field("MSH", 1, 11)),
                MapError::UnsupportedMessageType { .. } | MapError::UnsupportedEvent { .. } => {
                    Some(Location::field("MSH", 1, 9))
                }
                MapError::FacilityNotAccepted => Some(Location::field("MSH", 1, 4)),
                MapError::MissingSegment { segment } => Some(Location::segment(segment, 1)),
                MapError::MissingField { location, .. }
                | MapError::InvalidValue { location, .. }
                | MapError::UnknownCode { location, .. }
                | MapError::TestIdentity { location, .. }
                | MapError::NoPatientIdentifier { location } => Some(location.clone()),
            },
        }
    }
}

/// `` `ORM^O01` `` for an error message, or nothing.
fn named(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(String::new, |v| format!(" `{v}`"))
}

/// Three ASCII letters or digits: the shape of a message code (`ADT`) or a trigger
/// event (`A01`).
fn is_code3(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// MSH-9 (message code and trigger event) as `ADT^A01` (or `ACK` without a trigger),
/// when it has that shape: a message code of three ASCII letters or digits, and a
/// trigger event empty or of three ASCII letters or digits. `None` otherwise: the
/// value is then named nowhere (errors, logs, dead letters, acknowledgements).
pub fn message_type_name(code: &str, trigger: &str) -> Option<String> {
    let (code, trigger) = (code.trim(), trigger.trim());
    if !is_code3(code) {
        return None;
    }
    match trigger {
        "" => Some(code.to_ascii_uppercase()),
        t if is_code3(t) => Some(format!(
            "{}^{}",
            code.to_ascii_uppercase(),
            t.to_ascii_uppercase()
        )),
        _ => None,
    }
}

/// MSH-12.1 when it reads as a version number: two or three dot-separated numbers of
/// one or two digits (`2.5`, `2.8.2`). `None` otherwise.
pub fn version_name(version_id: &str) -> Option<String> {
    let v = version_id.trim();
    let parts: Vec<&str> = v.split('.').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_render_as_hl7_positions() {
        let mut l = Location::field("PID", 1, 3);
        assert_eq!(l.to_string(), "PID-3");
        assert_eq!(l.to_erl('^'), "PID^1^3^1");
        l.repetition = 2;
        l.component = 4;
        assert_eq!(l.to_string(), "PID-3[2].4");
        assert_eq!(l.to_erl('^'), "PID^1^3^2^4");
        let seg = Location::segment("OBX", 3);
        assert_eq!(seg.to_string(), "OBX(3)");
        assert_eq!(seg.to_erl('^'), "OBX^3");
    }

    #[test]
    fn only_code_shaped_types_and_versions_are_named() {
        assert_eq!(message_type_name("orm", "o01").as_deref(), Some("ORM^O01"));
        assert_eq!(message_type_name("ACK", "").as_deref(), Some("ACK"));
        assert_eq!(message_type_name("BERNARD Solange", "A01"), None);
        assert_eq!(message_type_name("ADT", "BERNARD"), None);
        assert_eq!(message_type_name("", "A01"), None);
        assert_eq!(version_name("2.1").as_deref(), Some("2.1"));
        assert_eq!(version_name("2.9.1").as_deref(), Some("2.9.1"));
        for bad in ["1948", "BERNARD", "12.03.1950", "2.5 Solange", "", "2..5"] {
            assert_eq!(version_name(bad), None, "{bad}");
        }
    }
}
