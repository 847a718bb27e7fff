//! From a parsed message to canonical events: the intake pipeline (guard → parse → map)
//! and its configuration. The mapping tables are in the crate docs.

mod adt;
mod identity;
mod oru;
mod tables;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use parcours_core::events::{Event, EventData};
use parcours_identity::{PatientIdentifier, Pseudonymizer};

use crate::ack::{Ack, AckDetail, AckIdentity, ack_timestamp, build_ack, build_ack_at};
use crate::charset::Charset;
use crate::error::{
    AckCode, ErrorCode, IntakeError, MapError, Severity, message_type_name, version_name,
};
use crate::guard::{Caps, check_message};
use crate::header::Header;
use crate::message::{Comp, Message};
use crate::parse::{Hl7ParserCrate, Parser, parse_with};

/// How the intake is set up for one tenant.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// The CPTS the events belong to.
    pub tenant: String,
    /// Turns patient identifiers into subject keys.
    pub pseudonymizer: Pseudonymizer,
    /// Accept test INS identities (OID 1.2.250.1.213.1.4.10 / .11); off in production.
    pub allow_test_ins: bool,
    /// Limits checked before parsing.
    pub caps: Caps,
    /// The character set of messages whose MSH-18 is empty (UTF-8 unless a sender is
    /// known to send ISO-8859-1 without saying so; `parcours serve
    /// --mllp-default-charset`).
    pub default_charset: Charset,
    /// The zone of timestamps without an offset (Europe/Paris).
    pub time_zone: TimeZone,
    /// MSH-11.1 values accepted (`P` only by default: training `T` and debugging `D`
    /// messages must not drive real care pathways; `parcours serve
    /// --mllp-processing-ids`).
    pub processing_ids: Vec<String>,
    /// If not empty, only messages whose MSH-4 (namespace id or universal id) is listed
    /// are accepted; others get `AR`.
    pub facilities: Vec<String>,
    /// ADT trigger events parcours does not use (A02, A28, A31 …) are acknowledged `AA`
    /// and ignored (default), rather than rejected `AR` 201.
    pub ignore_unhandled_adt: bool,
    /// The assigning authority of patient identifiers a sending facility sends without
    /// one (CX-4 empty; of type PI, MR, MRN, PT or untyped: its own record numbers),
    /// keyed by that facility as MSH-4 names it (namespace id or
    /// universal id): `CHU-NORD` → `1.2.250.1.211.10.200.2`, so its IPP gets the key the
    /// same IPP sent with its authority gets (in HL7 v2 or FHIR). Without an entry, such
    /// an identifier is not used (an identifier without its authority is ambiguous
    /// across facilities) and a message with no other is refused (`AE` 204; `parcours
    /// serve --mllp-assigning-authority`).
    pub assigning_authorities: BTreeMap<String, String>,
    /// Local observation codes to LOINC, keyed `system|code` (OBX-3.3 `|` OBX-3.1;
    /// `local|code` for codes sent without a system; `parcours serve
    /// --mllp-local-codes`).
    pub local_codes: BTreeMap<String, String>,
    /// How the acknowledgement names parcours when the message's MSH-5/MSH-6 are empty.
    pub ack_identity: AckIdentity,
}

impl IntakeConfig {
    /// A configuration with the defaults: production messages only, no test INS,
    /// default caps, UTF-8, Europe/Paris.
    pub fn new(tenant: impl Into<String>, pseudonymizer: Pseudonymizer) -> IntakeConfig {
        IntakeConfig {
            tenant: tenant.into(),
            pseudonymizer,
            allow_test_ins: false,
            caps: Caps::default(),
            default_charset: Charset::Utf8,
            time_zone: crate::time::paris(),
            processing_ids: vec!["P".into()],
            facilities: Vec::new(),
            ignore_unhandled_adt: true,
            assigning_authorities: BTreeMap::new(),
            local_codes: BTreeMap::new(),
            ack_identity: AckIdentity::default(),
        }
    }
}

/// What a message turned into.
#[derive(Clone, Debug, PartialEq)]
pub enum Mapping {
    /// Canonical events, in message order (possibly none, e.g. a merge of a patient
    /// into itself).
    Events(Vec<Event>),
    /// A message parcours acknowledges and ignores, with the reason.
    Ignored(String),
}

/// The outcome of [`Intake::process`].
#[derive(Debug)]
pub enum Outcome {
    /// Events to submit; acknowledge `AA` once they are committed.
    Accepted(Vec<Event>),
    /// Acknowledge `AA` with an informational ERR; nothing to submit.
    Ignored(String),
    /// Refused: acknowledge with [`IntakeError::ack_code`] and keep the message as a
    /// dead letter.
    Refused(IntakeError),
}

/// A processed message: its header (when readable) and its outcome.
#[derive(Debug)]
pub struct Processed {
    /// The header, or a best-effort sniff of it for refused messages.
    pub header: Option<Header>,
    /// What to do.
    pub outcome: Outcome,
}

impl Processed {
    /// The acknowledgement for this outcome alone (`AA` for accepted events: send it only
    /// after the sink committed them).
    pub fn ack(&self) -> Ack {
        match &self.outcome {
            Outcome::Accepted(_) => Ack::accept(),
            Outcome::Ignored(reason) => Ack {
                code: AckCode::Accept,
                detail: Some(AckDetail {
                    code: ErrorCode::Success,
                    severity: Severity::Information,
                    location: None,
                    message: reason.clone(),
                }),
            },
            Outcome::Refused(e) => Ack {
                code: e.ack_code(),
                detail: Some(AckDetail {
                    code: e.error_code(),
                    severity: Severity::Error,
                    location: e.location(),
                    message: e.to_string(),
                }),
            },
        }
    }

    /// `ADT^A01`, for logs.
    pub fn message_type(&self) -> String {
        self.header
            .as_ref()
            .and_then(Header::message_type_name)
            .unwrap_or_default()
    }
}

/// The intake pipeline: guard, parse, map. Cheap to clone; synchronous and pure (no IO,
/// no clock): the same bytes always give the same events and acknowledgement.
#[derive(Clone, Debug)]
pub struct Intake {
    config: Arc<IntakeConfig>,
    parser: Arc<dyn Parser>,
}

/// The namespace of the UUIDv5 event ids this adapter derives.
pub(crate) fn id_namespace() -> uuid::Uuid {
    static NS: OnceLock<uuid::Uuid> = OnceLock::new();
    *NS.get_or_init(|| {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:parcours:adapter:hl7v2")
    })
}

impl Intake {
    /// An intake with the `hl7-parser` crate as parser.
    pub fn new(config: IntakeConfig) -> Intake {
        Intake::with_parser(config, Arc::new(Hl7ParserCrate))
    }

    /// An intake with another parser.
    pub fn with_parser(config: IntakeConfig, parser: Arc<dyn Parser>) -> Intake {
        Intake {
            config: Arc::new(config),
            parser,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IntakeConfig {
        &self.config
    }

    /// Guard and parse one message.
    pub fn parse(&self, raw: &[u8]) -> Result<Message, IntakeError> {
        let guarded = check_message(raw, &self.config.caps, self.config.default_charset)?;
        Ok(parse_with(self.parser.as_ref(), guarded)?)
    }

    /// Map a parsed message to canonical events.
    pub fn map(&self, msg: &Message) -> Result<Mapping, IntakeError> {
        let header = Header::from_message(msg);
        Ok(self.map_with(msg, &header)?)
    }

    fn map_with(&self, msg: &Message, header: &Header) -> Result<Mapping, MapError> {
        let cfg = &*self.config;
        match header.version_number() {
            Some(v) if ((2, 3, 0)..(2, 9, 0)).contains(&v) => {}
            _ => {
                return Err(MapError::UnsupportedVersion {
                    version: version_name(header.version_id()),
                });
            }
        }
        let msh = msg.msh();
        if msh.field(10).is_empty() {
            return Err(MapError::MissingField {
                location: msh.field(10).location(),
                what: "message control id",
            });
        }
        let processing = msh.field(11).comp(1).value().unwrap_or_default();
        if !cfg.processing_ids.contains(&processing) {
            return Err(MapError::UnsupportedProcessingId {
                received: (processing.len() == 1
                    && processing.bytes().all(|b| b.is_ascii_alphabetic()))
                .then(|| processing.clone()),
                accepted: cfg.processing_ids.join(", "),
            });
        }
        // MSH-4 as its namespace id and its universal id.
        let fac = msh.field(4);
        let facility = [fac.comp(1).value(), fac.comp(2).value()];
        if !cfg.facilities.is_empty()
            && !facility
                .iter()
                .flatten()
                .any(|n| cfg.facilities.contains(n))
        {
            return Err(MapError::FacilityNotAccepted);
        }
        let code = header.message_code.to_ascii_uppercase();
        let mut trigger = header.trigger.to_ascii_uppercase();
        if trigger.is_empty() && code == "ADT" {
            trigger = msg
                .segment("EVN")
                .and_then(|evn| evn.field(1).value())
                .unwrap_or_default()
                .to_ascii_uppercase();
        }
        let message_type = message_type_name(&code, &trigger);
        let source = format!(
            "hl7v2/{}@{}",
            Header::hd_name(&header.sending_application, &header.separators),
            Header::hd_name(&header.sending_facility, &header.separators)
        );
        let default_authority = facility
            .iter()
            .flatten()
            .find_map(|name| cfg.assigning_authorities.get(name))
            .map(String::as_str);
        let mut cx = Ctx {
            cfg,
            msg,
            header,
            identity: identity::Rules {
                allow_test_ins: cfg.allow_test_ins,
                default_authority,
            },
            source,
            french: header.is_french_extension() || msg.segment("ZBE").is_some(),
            events: Vec::new(),
            links: 0,
        };
        let disposition = match code.as_str() {
            "ADT" => adt::map(&mut cx, &trigger)?,
            "ORU" if trigger == "R01" => oru::map(&mut cx)?,
            "ORU" => return Err(MapError::UnsupportedEvent { message_type }),
            _ => return Err(MapError::UnsupportedMessageType { message_type }),
        };
        Ok(match disposition {
            Disposition::Events => Mapping::Events(cx.events),
            Disposition::Unhandled if cfg.ignore_unhandled_adt => Mapping::Ignored(format!(
                "{} acknowledged and ignored: parcours does not use this event",
                message_type.as_deref().unwrap_or("ADT message")
            )),
            Disposition::Unhandled => return Err(MapError::UnsupportedEvent { message_type }),
            Disposition::Ignored(reason) => Mapping::Ignored(reason),
        })
    }

    /// Guard, parse and map one message (an MLLP frame, a file entry).
    pub fn process(&self, raw: &[u8]) -> Processed {
        let msg = match self.parse(raw) {
            Ok(msg) => msg,
            Err(e) => {
                return Processed {
                    header: Header::sniff(raw),
                    outcome: Outcome::Refused(e),
                };
            }
        };
        let header = Header::from_message(&msg);
        let outcome = match self.map_with(&msg, &header) {
            Ok(Mapping::Events(events)) => Outcome::Accepted(events),
            Ok(Mapping::Ignored(reason)) => Outcome::Ignored(reason),
            Err(e) => Outcome::Refused(e.into()),
        };
        Processed {
            header: Some(header),
            outcome,
        }
    }

    /// The acknowledgement text for a message with this header, MSH-7 echoing the
    /// message's (deterministic: no clock is read).
    pub fn ack_text(&self, header: Option<&Header>, ack: &Ack) -> String {
        build_ack(header, ack, &self.config.ack_identity)
    }

    /// The acknowledgement text made at `at` (its MSH-7, in [`IntakeConfig::time_zone`]).
    pub fn ack_text_at(&self, header: Option<&Header>, ack: &Ack, at: Timestamp) -> String {
        let created = ack_timestamp(at, &self.config.time_zone);
        build_ack_at(header, ack, &self.config.ack_identity, Some(&created))
    }

    /// The acknowledgement as bytes, in the message's character set (MSH-7 echoing the
    /// message's).
    pub fn ack_bytes(&self, header: Option<&Header>, ack: &Ack) -> Vec<u8> {
        self.charset_of(header).encode(&self.ack_text(header, ack))
    }

    /// The acknowledgement made at `at` as bytes, in the message's character set: what
    /// the MLLP listener sends.
    pub fn ack_bytes_at(&self, header: Option<&Header>, ack: &Ack, at: Timestamp) -> Vec<u8> {
        self.charset_of(header)
            .encode(&self.ack_text_at(header, ack, at))
    }

    fn charset_of(&self, header: Option<&Header>) -> Charset {
        header
            .and_then(Header::charset)
            .unwrap_or(self.config.default_charset)
    }
}

/// What a mapper decided.
pub(crate) enum Disposition {
    /// The events in the context.
    Events,
    /// A trigger the mapper does not use (subject to `ignore_unhandled_adt`).
    Unhandled,
    /// Acknowledged and ignored for this reason.
    Ignored(String),
}

/// What the mappers share while reading one message.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a IntakeConfig,
    pub(crate) msg: &'a Message,
    pub(crate) header: &'a Header,
    /// How the message's patient identifiers are read.
    pub(crate) identity: identity::Rules<'a>,
    pub(crate) source: String,
    /// IHE PAM-FR message (MSH-12 `…^FRA^…`, or a ZBE segment).
    pub(crate) french: bool,
    pub(crate) events: Vec<Event>,
    /// Of `events`, the `identity.linked` ones ([`Ctx::link`]).
    pub(crate) links: usize,
}

impl Ctx<'_> {
    pub(crate) fn subject(&self, id: &PatientIdentifier) -> String {
        self.cfg.pseudonymizer.subject(&self.cfg.tenant, id)
    }

    /// The deterministic id of the next event: UUIDv5 of (tenant, MSH-3, MSH-4, MSH-7,
    /// MSH-9, MSH-10, index in the message). Identity links are not counted: the other
    /// events keep the ids they had before links were sent.
    fn next_id(&self) -> String {
        self.event_id("event", &(self.events.len() - self.links).to_string())
    }

    /// The identity link of a PID that gave the events from `start` on (a message's
    /// qualified INS and local identifier, [`identity::link`]): `identity.linked` (subject
    /// the INS's key, `local_subject` the local identifier's), inserted before those
    /// events, at the first one's clinical time (else `at`), so the engine learns the
    /// link, and moves what the local key had, before it takes them. Its id is
    /// `link:<index of the first event>`'s. Nothing when the PID gave no event and no
    /// time is given, or names the same key twice.
    pub(crate) fn link(
        &mut self,
        start: usize,
        pair: Option<(PatientIdentifier, PatientIdentifier)>,
        at: Option<Timestamp>,
    ) {
        let Some((ins, local)) = pair else { return };
        let (subject, local_subject) = (self.subject(&ins), self.subject(&local));
        let Some(occurred_at) = self.events.get(start).map(|e| e.occurred_at).or(at) else {
            return;
        };
        if subject == local_subject {
            return;
        }
        let id = self.event_id("event", &format!("link:{}", start - self.links));
        self.events.insert(
            start,
            Event {
                id,
                tenant: self.cfg.tenant.clone(),
                source: self.source.clone(),
                subject,
                occurred_at,
                recorded_at: None,
                data: EventData::IdentityLinked(parcours_core::events::data::IdentityLinked {
                    local_subject,
                }),
            },
        );
        self.links += 1;
    }

    /// A deterministic event id: UUIDv5 of (`kind`, tenant, MSH-3, MSH-4, MSH-7, MSH-9,
    /// MSH-10, `part`).
    fn event_id(&self, kind: &str, part: &str) -> String {
        let h = self.header;
        let name: String = [
            kind,
            self.cfg.tenant.as_str(),
            &h.sending_application,
            &h.sending_facility,
            &h.timestamp,
            &h.message_code,
            &h.trigger,
            &h.control_id,
            part,
        ]
        .iter()
        .map(|p| format!("{}:{p}", p.len()))
        .collect();
        uuid::Uuid::new_v5(&id_namespace(), name.as_bytes()).to_string()
    }

    /// Add an event whose id is the message's key and its index in the message.
    pub(crate) fn push(&mut self, subject: String, occurred_at: Timestamp, data: EventData) {
        let id = self.next_id();
        self.push_with_id(id, subject, occurred_at, data);
    }

    /// Add an event whose id is the message's key and `part` (what the event is about in
    /// the message, e.g. `icd-10|E11.9` for a diagnosis), not its index: the id does not
    /// depend on the order or number of the segments around it.
    pub(crate) fn push_keyed(
        &mut self,
        kind: &str,
        part: &str,
        subject: String,
        occurred_at: Timestamp,
        data: EventData,
    ) {
        let id = self.event_id(kind, part);
        self.push_with_id(id, subject, occurred_at, data);
    }

    fn push_with_id(
        &mut self,
        id: String,
        subject: String,
        occurred_at: Timestamp,
        data: EventData,
    ) {
        self.events.push(Event {
            id,
            tenant: self.cfg.tenant.clone(),
            source: self.source.clone(),
            subject,
            occurred_at,
            recorded_at: None,
            data,
        });
    }

    /// A timestamp from the first component of a TS/DTM value; `None` when empty.
    pub(crate) fn ts(&self, comp: Comp<'_>) -> Result<Option<Timestamp>, MapError> {
        let Some(v) = comp.value() else {
            return Ok(None);
        };
        crate::time::parse_ts(&v, &self.cfg.time_zone)
            .map(Some)
            .map_err(|reason| MapError::InvalidValue {
                location: comp.location(),
                what: "date/time",
                reason,
            })
    }

    /// The first present timestamp among the candidates (each must be valid if present).
    pub(crate) fn first_ts(
        &self,
        candidates: &[Option<Comp<'_>>],
    ) -> Result<Option<Timestamp>, MapError> {
        for c in candidates.iter().flatten() {
            if let Some(t) = self.ts(*c)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// MSH-7, required as the last fallback for clinical time.
    pub(crate) fn message_time(&self) -> Result<Timestamp, MapError> {
        let msh7 = self.msg.msh().field(7).comp(1);
        self.ts(msh7)?.ok_or_else(|| MapError::MissingField {
            location: msh7.location(),
            what: "message date/time",
        })
    }
}
