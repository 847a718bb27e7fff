//! Acknowledgements (original mode): `MSH`, `MSA` and, when there is something to say,
//! `ERR`.
//!
//! - The ACK's MSH swaps sending and receiving application/facility, keeps the
//!   encoding characters, MSH-11, MSH-12 and MSH-18 of the message; MSH-9 is
//!   `ACK^<trigger>^ACK` (2.4+), `ACK^<trigger>` (2.3) or `ACK`.
//! - MSH-7 is when the acknowledgement was made ([`build_ack_at`], as the MLLP listener
//!   sends it: `YYYYMMDDHHMMSS+ZZZZ`, local time with its offset); [`build_ack`], which
//!   reads no clock, echoes the message's MSH-7 instead.
//! - Everything else is **deterministic**: MSH-10 derives from the message's identity,
//!   so a resent message gets the same acknowledgement for the same outcome (the same
//!   control id, MSA and ERR), only MSH-7 telling when it was made.
//! - MSA-1 `AA`/`AE`/`AR`, MSA-2 the message's MSH-10; for versions before 2.5, MSA-3
//!   and ERR-1 carry the text and position too (they were withdrawn later).
//! - ERR-2 the position (ERL), ERR-3 the table 0357 code, ERR-4 the severity, ERR-8 the
//!   reason (escaped): never patient data, only positions and reasons.
//!
//! The header fields parcours checks are echoed only when they have the shape of what
//! they should hold, so a refused value is not sent back: MSH-7 when it is digits (with
//! `.`, `+`, `-`), else empty; the MSH-9 trigger when it is three letters or digits, else
//! the ACK's MSH-9 is `ACK`; MSH-11 when its components are single letters (`P`, `T^A`),
//! else `P`; MSH-12 when it is a version number, with `^FRA^2.11`-like components, else
//! its version number alone, else `2.5`; MSH-18 when it names a supported character
//! set, else left out. MSH-3 to MSH-6 (applications and facilities: where the ACK goes)
//! and MSH-10 (the control id, MSA-2) are echoed as sent, as HL7 requires.

use crate::error::{AckCode, ErrorCode, Location, Severity};
use crate::guard::Separators;
use crate::header::Header;

/// What the ERR segment says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckDetail {
    /// ERR-3.
    pub code: ErrorCode,
    /// ERR-4.
    pub severity: Severity,
    /// ERR-2.
    pub location: Option<Location>,
    /// ERR-8: the reason, for a person reading the sender's logs.
    pub message: String,
}

/// An acknowledgement to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// MSA-1.
    pub code: AckCode,
    /// The ERR segment, if any.
    pub detail: Option<AckDetail>,
}

impl Ack {
    /// `AA` with, when there are warnings (what the pathways did not act on and why), an
    /// ERR of severity `W` and code 0 (accepted) saying them in ERR-8; else [`Ack::accept`].
    pub fn accept_with_warnings(warnings: &[String]) -> Ack {
        if warnings.is_empty() {
            return Ack::accept();
        }
        Ack {
            code: AckCode::Accept,
            detail: Some(AckDetail {
                code: ErrorCode::Success,
                severity: Severity::Warning,
                location: None,
                message: format!("recorded; not acted on: {}", warnings.join("; ")),
            }),
        }
    }

    /// `AA` with no ERR.
    pub fn accept() -> Ack {
        Ack {
            code: AckCode::Accept,
            detail: None,
        }
    }
}

/// What the ACK's MSH says about parcours when the message did not (empty MSH-5/MSH-6,
/// or no readable header at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckIdentity {
    /// The ACK's MSH-3 when the message's MSH-5 is empty.
    pub application: String,
    /// The ACK's MSH-4 when the message's MSH-6 is empty.
    pub facility: String,
}

impl Default for AckIdentity {
    fn default() -> AckIdentity {
        AckIdentity {
            application: "PARCOURS".into(),
            facility: String::new(),
        }
    }
}

/// A deterministic control id for the ACK of a message: `A` and 19 hex digits.
fn ack_control_id(header: &Header) -> String {
    let name = [
        "ack",
        &header.sending_application,
        &header.sending_facility,
        &header.timestamp,
        &header.message_code,
        &header.trigger,
        &header.control_id,
    ]
    .iter()
    .map(|p| format!("{}:{p}", p.len()))
    .collect::<String>();
    let id = uuid::Uuid::new_v5(&crate::mapping::id_namespace(), name.as_bytes());
    let hex = id.simple().to_string();
    format!("A{}", &hex[..19])
}

/// MSH-7 as echoed: a timestamp's characters only.
fn echo_timestamp(ts: &str) -> String {
    let ok = ts.len() <= 26
        && ts
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-'));
    if ok { ts.to_owned() } else { String::new() }
}

/// MSH-11 as echoed: components of at most one letter (`P`, `T^A`), else `None`.
fn echo_processing_id(raw: &str, seps: &Separators) -> Option<String> {
    raw.split(seps.component)
        .all(|c| c.len() <= 1 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| raw.to_owned())
}

/// MSH-12 as echoed: `2.5`, `2.5^FRA^2.11`; else the version number alone; else `None`.
fn echo_version(raw: &str, seps: &Separators) -> Option<String> {
    let comps: Vec<&str> = raw.split(seps.component).collect();
    let id = crate::error::version_name(comps[0])?;
    let country = |c: &str| c.len() <= 3 && c.bytes().all(|b| b.is_ascii_alphabetic());
    let whole = comps.len() <= 3
        && comps.get(1).is_none_or(|c| country(c))
        && comps
            .get(2)
            .is_none_or(|c| c.is_empty() || crate::error::version_name(c).is_some());
    Some(if whole { raw.to_owned() } else { id })
}

/// MSH-18 as echoed: as sent when it names one supported character set, else the HL7
/// name of the one parcours read, else `None`.
fn echo_charset(h: &Header) -> Option<String> {
    if crate::charset::Charset::from_msh18(&h.charset).is_some() {
        return Some(h.charset.clone());
    }
    h.charset().map(|c| c.hl7_name().to_owned())
}

/// MSH-7 of an acknowledgement made at `at`: `YYYYMMDDHHMMSS±ZZZZ`, local time in `tz`
/// with its offset (unambiguous across the autumn change of time).
pub fn ack_timestamp(at: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    let local = tz.to_datetime(at);
    let offset = tz.to_offset(at).seconds();
    let (sign, minutes) = (if offset < 0 { '-' } else { '+' }, offset.abs() / 60);
    format!(
        "{}{sign}{:02}{:02}",
        local.strftime("%Y%m%d%H%M%S"),
        minutes / 60,
        minutes % 60
    )
}

/// Build the acknowledgement text (segments terminated by CR) for a message with this
/// header (`None` when not even MSH could be read), with the message's MSH-7 as its
/// MSH-7: no clock is read, the same message always gets the same bytes. What goes on
/// the wire is [`build_ack_at`], with the time the acknowledgement is made.
pub fn build_ack(header: Option<&Header>, ack: &Ack, identity: &AckIdentity) -> String {
    build_ack_at(header, ack, identity, None)
}

/// [`build_ack`] with `created` (an HL7 timestamp, see [`ack_timestamp`]) as MSH-7, the
/// time the acknowledgement is made; `None` echoes the message's MSH-7.
pub fn build_ack_at(
    header: Option<&Header>,
    ack: &Ack,
    identity: &AckIdentity,
    created: Option<&str>,
) -> String {
    let fallback = Header {
        version: "2.5".into(),
        processing_id: "P".into(),
        ..Header::default()
    };
    let known = header.is_some();
    let h = header.unwrap_or(&fallback);
    let seps: Separators = h.separators;
    let f = seps.field.to_string();
    let c = seps.component;
    let version = h.version_number().unwrap_or((2, 5, 0));
    let pick = |value: &str, default: &str| {
        if value.trim().is_empty() {
            seps.escape(default)
        } else {
            value.to_owned()
        }
    };
    let trigger_ok = crate::error::message_type_name("ACK", &h.trigger).is_some();
    let msg_type = match (
        version >= (2, 4, 0),
        version >= (2, 3, 0),
        h.trigger.trim().is_empty() || !trigger_ok,
    ) {
        (_, _, true) | (_, false, _) => "ACK".to_owned(),
        (true, _, false) => format!("ACK{c}{}{c}ACK", seps.escape(&h.trigger)),
        (false, true, false) => format!("ACK{c}{}", seps.escape(&h.trigger)),
    };
    let mut msh: Vec<String> = vec![
        "MSH".into(),
        seps.encoding_characters(),
        pick(&h.receiving_application, &identity.application),
        pick(&h.receiving_facility, &identity.facility),
        h.sending_application.clone(),
        h.sending_facility.clone(),
        created.map_or_else(|| echo_timestamp(&h.timestamp), str::to_owned),
        String::new(),
        msg_type,
        if known {
            ack_control_id(h)
        } else {
            "ACK".into()
        },
        echo_processing_id(&h.processing_id, &seps)
            .map_or_else(|| "P".to_owned(), |p| pick(&p, "P")),
        echo_version(&h.version, &seps).unwrap_or_else(|| "2.5".to_owned()),
    ];
    if let Some(charset) = echo_charset(h) {
        msh.resize(17, String::new());
        msh.push(charset);
    }
    let old = version < (2, 5, 0);
    let mut msa = vec![
        "MSA".to_owned(),
        ack.code.as_str().to_owned(),
        h.control_id.clone(),
    ];
    let mut out = msh.join(&f);
    if let Some(d) = &ack.detail {
        if old {
            msa.push(seps.escape(&d.message));
        }
        out.push('\r');
        out.push_str(&msa.join(&f));
        let code = format!(
            "{}{c}{}{c}HL70357",
            d.code.code(),
            seps.escape(d.code.text())
        );
        let erl = d.location.as_ref().map(|l| l.to_erl(c)).unwrap_or_default();
        let err1 = match (&d.location, old) {
            (Some(l), true) => format!(
                "{}{c}{}{c}{}{c}{}{s}{}{s}HL70357",
                l.segment,
                l.occurrence.max(1),
                l.field,
                d.code.code(),
                seps.escape(d.code.text()),
                s = seps.subcomponent
            ),
            (None, true) => format!(
                "{c}{c}{c}{}{s}{}{s}HL70357",
                d.code.code(),
                seps.escape(d.code.text()),
                s = seps.subcomponent
            ),
            (_, false) => String::new(),
        };
        let err = [
            "ERR".to_owned(),
            err1,
            erl,
            code,
            d.severity.as_str().to_owned(),
            String::new(),
            String::new(),
            String::new(),
            seps.escape(&d.message),
        ];
        out.push('\r');
        out.push_str(&err.join(&f));
    } else {
        out.push('\r');
        out.push_str(&msa.join(&f));
    }
    out.push('\r');
    out
}
