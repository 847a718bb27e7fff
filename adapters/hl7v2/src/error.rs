//! Errors at the intake boundary, their positions in the message, and how each one is
//! acknowledged (MSA-1, ERR-3 from HL7 table 0357, ERR-4 severity).
//!
//! No `Display` here ever shows a field value from the message: only positions
//! (segment, field, repetition, component), structural codes (message type, version,
//! processing id, character set) and the reason. They may reach logs.

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
    #[error("unsupported HL7 version `{version}` (MSH-12): parcours reads 2.3 to 2.8")]
    UnsupportedVersion {
        /// MSH-12.1 as sent (sanitised).
        version: String,
    },
    /// MSH-11 holds a processing id this intake does not accept.
    #[error("processing id `{id}` (MSH-11) is not accepted by this intake")]
    UnsupportedProcessingId {
        /// MSH-11.1 as sent (sanitised).
        id: String,
    },
    /// MSH-9 names a message type parcours does not read.
    #[error("unsupported message type `{message_type}` (MSH-9): parcours reads ADT and ORU^R01")]
    UnsupportedMessageType {
        /// MSH-9 code and trigger (sanitised).
        message_type: String,
    },
    /// MSH-9 names a trigger event parcours does not read for this message type.
    #[error("unsupported trigger event `{message_type}` (MSH-9)")]
    UnsupportedEvent {
        /// MSH-9 code and trigger (sanitised).
        message_type: String,
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
        /// Why it is refused (never the value itself).
        reason: String,
    },
    /// A coded value is not in the table parcours knows.
    #[error("{location}: {what} has a code parcours does not know ({code})")]
    UnknownCode {
        /// Where it is.
        location: Location,
        /// What it is (`result status`).
        what: &'static str,
        /// The code (a short table code, sanitised; never free text).
        code: String,
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
        "{location}: no usable patient identifier (a qualified INS, or an identifier of type PI or MR with an assigning authority in CX-4)"
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

/// Keep a structural code from the message fit for an error message: printable ASCII
/// only, at most 24 characters.
pub(crate) fn sanitize_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(24)
        .collect()
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
}
