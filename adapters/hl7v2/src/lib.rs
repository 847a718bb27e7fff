//! parcours-hl7v2: HL7 v2 intake for parcours — hospital ADT and lab ORU messages in,
//! canonical events out, over MLLP (optionally TLS), with IHE PAM-FR understood.
//!
//! ```text
//! bytes ──guard──► GuardedMessage ──Parser──► Message ──map──► Vec<Event> ──Sink──► AA
//!   │ (BOM, CR/LF, caps,    (hl7-parser 0.3      (tables below)       │ rejected / unavailable
//!   │  charset, MSH)         behind a trait)                           ▼
//!   └──────────── refused ─────────────────────────► DeadLetters + AE/AR with ERR
//! ```
//!
//! [`Intake`] is the synchronous, pure pipeline (same bytes → same events, same ids, same
//! ACK; no clock, no IO). [`mllp::MllpServer`] runs it behind an MLLP listener and sends
//! `AA` only after the [`mllp::Sink`] committed the events.
//!
//! ```
//! use parcours_hl7v2::{Intake, IntakeConfig, Outcome};
//! use parcours_identity::Pseudonymizer;
//!
//! let key = Pseudonymizer::from_key(&[7u8; 32]).expect("key");
//! let intake = Intake::new(IntakeConfig::new("cpts-nord", key));
//! let raw = b"MSH|^~\\&|GAM|CHU|PARCOURS|CPTS|20260310163000||ADT^A03^ADT_A03|42|P|2.5^FRA^2.11\r\
//!             PID|1||123456^^^CHU&1.2.250.1.211.10.200.2&ISO^PI\r\
//!             PV1|1|I|||||||||||||||||V-1|||||||||||||||||8\r\
//!             ZBE|MVT-1^CHU|20260310160000||INSERT|N";
//! let processed = intake.process(raw);
//! let Outcome::Accepted(events) = &processed.outcome else { panic!() };
//! assert_eq!(events[0].event_type().as_str(), "encounter.discharged");
//! assert_eq!(events[0].occurred_at.to_string(), "2026-03-10T15:00:00Z");
//! let ack = intake.ack_text(processed.header.as_ref(), &processed.ack());
//! assert!(ack.contains("\rMSA|AA|42\r"));
//! ```
//!
//! # Pre-parse guard
//!
//! See [`guard`]: a UTF-8 BOM is stripped; CR, LF and CRLF are accepted and normalised
//! to CR; NUL and control bytes, a text not starting with `MSH`, unusable delimiters, a
//! second `MSH` or batch segments in one message are refused; MSH-18 selects the
//! character set (UTF-8, ASCII, ISO-8859-1, ISO-8859-15, Windows-1252, see [`Charset`]); [`Caps`]
//! (1 MiB, 5 000 segments, 256 fields per segment, 100 repetitions, 4 096 delimiters per
//! segment, 100 000 per message) are checked before any parser runs, and each refusal
//! names its limit. Files and FHS/BHS batches (with comment lines between messages) are
//! split by [`split_batch`]; BTS-1 must count its messages.
//!
//! # Parsing
//!
//! [`Parser`] is parcours' own trait; [`Hl7ParserCrate`] implements it with `hl7-parser`
//! 0.3 and [`Message`] is parcours' own tree (byte ranges), so the parser can be
//! replaced. Escape sequences are decoded by [`message::unescape`]: `\F\ \S\ \T\ \R\ \E\`,
//! `\Xhh..\` (in the message's character set), `\.br\`; formatting and charset-switching
//! sequences are dropped. Versions 2.3 to 2.8.x are read (MSH-12.1, including
//! `2.5^FRA^2.11`); any delimiters declared in MSH-1/MSH-2 work; the v2.7 truncation
//! character is accepted.
//!
//! # Identity
//!
//! The subject is `Pseudonymizer::subject(tenant, best identifier)`:
//!
//! 1. if PID-32 (identity reliability) holds `VALI` and PID-3 has an INS — assigning
//!    authority (CX-4.2, or CX-4.1) `1.2.250.1.213.1.4.8` (NIR) or `.9` (NIA); NIR
//!    first — the INS;
//! 2. otherwise the local identifier: the PID-3 repetition of type (CX-5) `PI` (the
//!    IPP), then `MR`/`MRN`, then `PT`, then untyped, then of any other type (a site's
//!    own: `MEDREC`, `PK`; in message order, as parcours-fhir takes any other identifier
//!    with a system; never an account or visit number, `AN`, `VN` …), that has an
//!    assigning authority: CX-4.2 universal id, else CX-4.1 namespace, else — for the
//!    preferred types, the facility's own record numbers — the one
//!    [`IntakeConfig::assigning_authorities`] gives the sending facility (MSH-4).
//!    Without one the message is refused (`AE` 204): an identifier without its
//!    authority is ambiguous across facilities.
//!
//! A test INS (`.10`, `.11`) anywhere in PID-3 or MRG-1 is refused (`AE` 204) unless
//! [`IntakeConfig::allow_test_ins`]. For A40 and A47, the retired identity is MRG-1's
//! local identifier (merges are of local records), else its INS.
//!
//! A PID whose identity is qualified (1.) and that has a local identifier (2.) too gives
//! `identity.linked` (subject = the INS's key, `local_subject` = the local identifier's)
//! before the events it names, at the first one's clinical time: the engine keeps the
//! link, so that messages naming the patient by the local identifier alone (a lab's
//! ORU, a message from before the qualification) reach the INS's key, and what the local
//! key had moves there. Its id is the message's id scheme with `link:<index of the first
//! event>` for the index: the message's other events keep their ids. An ADT message whose
//! movement parcours does not use (A28, A31 — the PAM-FR identity update that brings the
//! qualification —, an A08 without a stay) gives the link alone, at EVN-6, EVN-2 or
//! MSH-7; without one it is ignored as before.
//!
//! # Events
//!
//! - `id`: UUIDv5 of (tenant, MSH-3, MSH-4, MSH-7, MSH-9, MSH-10, index of the event in
//!   the message); for `diagnosis.recorded`, of the same message key and the diagnosis
//!   (`icd-10|E11.9`) instead of the index, so its id does not depend on the DG1's
//!   position. A resent message gives the same ids (the engine dedupes by id); MSH-7
//!   and MSH-9 are in the key so a sender that reuses control ids (counter reset,
//!   several message types under one id) does not lose messages to deduplication.
//! - One message may give several events (ORU: one per OBX; ADT: the encounter event,
//!   then one per diagnosis). They are submitted together, in message order: `AA` once
//!   all are committed (or known duplicates); if one is refused the message is answered
//!   `AE` and kept as a dead letter, and a corrected resend gives the others again as
//!   duplicates.
//! - `source`: `hl7v2/<MSH-3>@<MSH-4>` (namespace ids; no patient data).
//! - `tenant`: [`IntakeConfig::tenant`]; `recorded_at`: left to the runtime.
//! - Timestamps without an offset are Europe/Paris local time, DST-correct (a time in the
//!   spring gap moves forward, a time in the autumn fold takes the earlier instant); an
//!   offset (`+0200`) is honoured. Date-only values are local midnight.
//!
//! ## ADT
//!
//! | MSH-9 trigger (ZBE-4)            | event(s)                                   | occurred_at (first present)            |
//! |----------------------------------|--------------------------------------------|----------------------------------------|
//! | A01, A04                         | `encounter.admitted`                       | PV1-44, ZBE-2, EVN-6, EVN-2, MSH-7     |
//! | A03                              | `encounter.discharged` (+ `patient.deceased`) | PV1-45, ZBE-2, EVN-6, EVN-2, MSH-7  |
//! | A11; A01/A04 with ZBE-4 `CANCEL` | `encounter.admission_cancelled`            | EVN-6, EVN-2, MSH-7                    |
//! | A13; A03 with ZBE-4 `CANCEL`     | `encounter.discharge_cancelled`            | EVN-6, EVN-2, MSH-7                    |
//! | A16 (also with `UPDATE`)         | `encounter.discharge_pending` (expected_at PV2-9) | EVN-6, EVN-2, MSH-7             |
//! | A08; Z99; A01/A04/A03 with `UPDATE` | `encounter.updated` (diagnoses, destination if known) | EVN-6, EVN-2, MSH-7      |
//! | A40 (merge); A47 (change of the patient identifier list: the old identifier in MRG-1 leads to PID-3's) | `identity.merged` per PID/MRG pair (none if both name the same subject), after the PID's `identity.linked` | EVN-6, EVN-2, MSH-7 |
//! | A05, A06, A07, A14, A28, A31 (with a usable DG1)            | `diagnosis.recorded` only (below), after the PID's `identity.linked` | EVN-6, EVN-2, MSH-7 |
//! | any other (A02, A05 …, A31 without a usable DG1), or `CANCEL` of another movement | `identity.linked` for a qualified INS with a local identifier; else none: `AA` with an informational ERR (or `AR` 201 if [`IntakeConfig::ignore_unhandled_adt`] is off) | EVN-6, EVN-2, MSH-7 |
//!
//! `encounter_id` is PV1-19.1, else PID-18.1 (the NDA in PAM-FR); `class` from PV1-2
//! (`E` → emergency, `O`/`R` → outpatient, anything else → inpatient); `facility` is
//! PV1-3.4 (universal id, else namespace id), else MSH-4; `admitted_at` is PV1-44;
//! `diagnoses` are every DG1-3 code (all repetitions, in order, without duplicates),
//! ICD-10/CIM-10 codes written with their dot (`I500` → `I50.0`), except deleted ones
//! (DG1-21 `D`). ZBE-1 (movement id), ZBE-5, ZBE-6 and ZBE-9 (nature of the movement)
//! are not needed by these events.
//!
//! **Diagnoses** (DG1 → `diagnosis.recorded`, the event a FHIR Condition gives, which
//! the type 2 diabetes pathway enrols on): after the message's encounter event, one
//! `diagnosis.recorded` per diagnosis its DG1 segments state, on A01, A03, A04, A05,
//! A06, A07, A08, A14, A16, A28, A31 and Z99 (not on cancellations — A11, A13, ZBE-4
//! `CANCEL` — nor merges: what they carry is taken back or moved, not stated).
//!
//! | field | mapping |
//! |-------|---------|
//! | code, system | per DG1-3 repetition (CE/CWE): the ICD-10 (CIM-10) code when the identifier or the alternate identifier is one, else the SNOMED CT one; `system` `icd-10` (code written with its dot: `E119` → `E11.9`) or `snomed`, as the FHIR Condition mapping. The coding system is DG1-3.3 (DG1-3.6 for the alternate), else DG1-2 (coding method, v2.3–2.5): ICD-10 `I10`, `ICD10`, `CIM10`, `2.16.840.1.113883.6.3` … and the US and German modifications (`I10C`, `I10G2019` …: the same categories); SNOMED CT `SCT`, `SNOMEDCT`, `http://snomed.info/sct`, `2.16.840.1.113883.6.96`. Without any system, a code shaped like ICD-10 (`E11.9`, `E119`) is read as ICD-10. Other systems (ICD-9 `I9`, SNOMED before CT `SNM`, local codes) give no event. The same code twice in a message gives one event |
//! | occurred_at | the instant of the message's event (admission, discharge, update: the chains above), else EVN-6, EVN-2, MSH-7: when the hospital recorded the diagnosis. DG1-5 (when it was made, perhaps years before, restated on every stay) is not used: the pathway would start then, every deadline since overdue at once |
//! | DG1-6 (diagnosis type: `A` admitting, `W` working, `F` final, local values) | not used: it says when in the stay the diagnosis was made, not how certain it is (HL7's v2-to-FHIR mapping makes it `Condition.category`); every type is recorded |
//! | DG1-21 (action code, v2.5+) | `D` (delete): no event, and not in `diagnoses`; `A`, `U`, `X` or empty: recorded (a diagnosis recorded again changes nothing on a pathway that has it) |
//! | death | a message reporting the patient's death (A03 to deceased, PID-30 `Y`) records no diagnosis: no follow-up starts for a patient who died |
//!
//! An A08 without a visit number, or an A31, carrying a diagnosis records it (nothing
//! else). Withdrawing a recorded diagnosis (DG1-21 `D` later) retracts nothing: parcours
//! has no event for it; the coordinator closes an instance enrolled by mistake.
//!
//! **Discharge destination** (`home`, `nursing-home`, `transfer`, `deceased`, `other`;
//! `unknown` when the message does not say where the patient went), first that applies:
//!
//! | source                                   | codes → destination |
//! |------------------------------------------|---------------------|
//! | PID-30 = `Y` (death indicator)           | deceased |
//! | ZFM-2 PMSI *mode de sortie* (PAM-FR), with ZFM-4 *destination* | `9` deceased; `8` home, or nursing-home when ZFM-4 = `7` (médico-social); `6` (mutation), `7` (transfert), `0` → transfer |
//! | PV1-36 in a PAM-FR message (MSH-12 `…^FRA^…` or a ZBE segment) | `9` deceased; `87` nursing-home; `8`, `8x` home; `7`, `7x`, `6x`, `0x` transfer; the French *circonstance de sortie* codes (`2`–`6`, `R`, `E`, `F`) say how, not where → unknown |
//! | PV1-36, HL7 table 0112 (one digit read as `0d`) | `01` `06` `07` `08` `50` home; `03` `04` `64` nursing-home; `02` `05` `43` `51` `61`–`63` `65` `66` `69` `70` transfer; `20` `40`–`42` deceased; others other |
//! | nothing                                  | unknown (for `encounter.updated`: absent) |
//!
//! **Death**: an A03 whose destination is deceased (ZFM-2 `9`, PV1-36 death code, or
//! PID-30 `Y`) gives `encounter.discharged` with destination `deceased` (so the stay is
//! closed and no discharge pathway enrols) **and then** `patient.deceased` at PID-29, else
//! at the discharge instant (so every pathway of the patient can close). Deaths reported
//! by A08/A31 are not mapped.
//!
//! ## ORU^R01: one `observation.recorded` per OBX
//!
//! | field | mapping |
//! |-------|---------|
//! | subject | the most recent PID before the OBX (several patients per message work) |
//! | code | OBX-3.1 when OBX-3.3 is LOINC (`LN`, `LOINC`, `pCLOCD`, `http://loinc.org`, `2.16.840.1.113883.6.1`); else OBX-3.4 when OBX-3.6 is; else `system|code` (`L|KAL`; `local|…` without a system), translated through [`IntakeConfig::local_codes`] when listed there — a pathway guard on a LOINC code never matches an untranslated local code |
//! | value | by OBX-2: `NM` → value (a leading `<`, `>`, `<=`, `>=` → comparator; a decimal comma is read as a point); `SN` `^182` → 182, `<^5` → 5 and `<`, `>^60` → 60 and `>`; SN ranges and ratios (`^1^:^128`) → value_text; `ST` `TX` `FT` → value_text (repetitions joined by newlines); `CE` `CWE` `CNE` → value_text = the code (else the text); `DT` `TM` `DTM` `TS` `ID` `IS` → value_text; `ED`, `RP` … → no value. value_text is kept only when it is one word of at most 24 characters (a qualitative result such as `POS` or `1+`, a code, a number, a date: `parcours_core::events::is_result_text`): free text — a comment, a report — may name the patient and is left out of the event (the result is recorded without it). A non-numeric NM/SN is an error (`AE` 102 at OBX-5) |
//! | unit | OBX-6.1 (UCUM), else OBX-6.2 |
//! | reference range | OBX-7: `3.5-5.0` (also `_`, `to`, `à`, `–`, negative bounds, decimal commas) → low/high; `<5` → high; `>60` → low; free text → none |
//! | abnormal_flag | first OBX-8 repetition that is `H`, `L`, `HH`, `LL`, `A`, `N` (`HU`/`>` → HH, `LU`/`<` → LL, `AA` → A); susceptibility and delta flags are ignored |
//! | status | OBX-11: `F`/`U` final, `C` corrected, `A` amended, `P`/`R`/`I`/`S` preliminary, `X`/`N` cancelled, `W`/`D` entered-in-error; `O` (order detail only) → no event; empty or unknown → `AE` |
//! | occurred_at | OBX-14, else OBR-7, else MSH-7 |
//! | observation_id | `<OBR-3.1, else OBR-2.1, else MSH-10>/<OBX-3.1>[/<OBX-4>]`: stable across resends and corrections |
//!
//! # Acknowledgements
//!
//! See [`ack`]. MSA-2 is MSH-10; the MSH swaps applications and facilities and keeps the
//! encoding characters, version and character set; MSH-7 is when the listener made the
//! ACK (`YYYYMMDDHHMMSS+ZZZZ`); everything else is deterministic (MSH-10 derives from
//! the message), so a resend gets the same ACK but for MSH-7. The ERR segment gives
//! ERR-2 (where: the ERL position), ERR-3 (the table 0357 code), ERR-4 (severity) and
//! ERR-8 (the reason); for versions before 2.5 also ERR-1 and MSA-3 (which 2.5
//! withdrew).
//!
//! | outcome | MSA-1 | ERR-3 (table 0357) | dead letter |
//! |---------|-------|--------------------|-------------|
//! | events committed by the sink | AA | — | no |
//! | ADT event parcours does not use | AA | 0, severity I, "acknowledged and ignored" | no |
//! | guard or parser refusal (not HL7, caps, charset, encoding characters) | AR | 100 / 102 / 207 | yes |
//! | unsupported version, processing id (default: `P` only), message type, trigger, facility | AR | 203 / 202 / 200 / 201 / 207 | yes |
//! | content error (missing segment or field, bad date or number, unknown code, no usable or test identity) | AE | 100 / 101 / 102 / 103 / 204, with ERR-2 | yes |
//! | sink rejected the events | AE | 207 | yes |
//! | an acknowledgement (MSH-9 `ACK`) received over MLLP | none: never answered | — | no |
//! | MLLP frame over [`mllp::ServerConfig::max_frame_bytes`] | AR, then the connection is closed | 207, with the frame's size and the limit | yes: its first `max_frame_bytes` bytes, the reason saying it is truncated |
//! | sink unavailable, or the dead letter could not be kept | AE ([`mllp::ServerConfig::unavailable_ack`]) | 207 "resend later" | no: the sender resends |
//!
//! No error text contains a field value from the message: an error names the field,
//! its position and what was expected (`OBX-11: result status is not one of F, C, A, P,
//! …`), never what was received. Error texts reach logs, dead-letter reasons (stored in
//! clear: only the message itself is sealed) and ERR-8 / MSA-3. The one exception is
//! the unsupported message type or version, named when MSH-9 has the shape of a message
//! type (`ORM^O01`: three letters or digits, `^`, three letters or digits) or MSH-12 of
//! a version number (`2.1`) — [`message_type_name`], [`version_name`] — since neither
//! shape can hold a name or a date; logs and dead letters name the message type by the
//! same rule. The ACK's header echoes the checked MSH fields only when they have the
//! shape of what they should hold (see [`ack`]). `tests/no_echo.rs` puts a patient
//! name in each field the intake checks and looks for it in the ACKs, dead letters and
//! logs of a real listener.
//!
//! # MLLP
//!
//! [`mllp::MllpCodec`] frames `0x0B … 0x1C 0x0D` with a maximum frame size and
//! resynchronisation (bytes outside frames are skipped and counted). [`mllp::MllpServer`]
//! processes each connection's messages in order, closes idle connections (no complete
//! message for [`mllp::ServerConfig::idle_timeout`], 10 min) and, without an answer,
//! connections whose frame does not arrive whole within
//! [`mllp::ServerConfig::frame_timeout`] (30 s after its start block: a stalled sender
//! holds a connection that long, not the idle timeout), accepts and closes connections
//! over the limit (64) or over the limit per peer address (16: one sender cannot take
//! them all), reads an oversized frame to its end without keeping more than the limit
//! (the sender has finished writing when the answer comes) then answers `AR` with the
//! frame's size and the limit and closes — the dead letter holds its first
//! [`mllp::ServerConfig::max_frame_bytes`] bytes and its reason says it is truncated
//! (a frame given up before its end — frame timeout, shutdown — is refused the same
//! way, with the bytes received) —, never answers an
//! acknowledgement (MSH-9 `ACK`: HL7 says not to, and answering one invites an ACK
//! ping-pong with the sender's interface engine; it is logged at debug and counted,
//! [`mllp::MllpServer::acknowledgements_received`], and the connection stays open),
//! and shuts down gracefully on a `CancellationToken` (stop accepting, finish the
//! message in flight, send its ACK). One message per frame: batches go through
//! [`split_batch`]. With the `tls` feature (default), [`mllp::MllpServer::serve_tls`]
//! serves MLLP over TLS, optionally with client certificates ([`tls::acceptor`]).
//! Logs carry the peer, message type and control id — never PID content.

pub mod ack;
pub mod charset;
pub mod error;
pub mod guard;
pub mod header;
mod mapping;
pub mod message;
pub mod mllp;
pub mod parse;
mod time;
#[cfg(feature = "tls")]
pub mod tls;

pub use ack::{Ack, AckDetail, AckIdentity, ack_timestamp, build_ack, build_ack_at};
pub use charset::Charset;
pub use error::{
    AckCode, ErrorCode, IntakeError, Location, MapError, Severity, message_type_name, version_name,
};
pub use guard::{
    BatchEntry, Caps, GuardError, GuardedMessage, Separators, check_message, split_batch,
};
pub use header::Header;
pub use mapping::{Intake, IntakeConfig, Mapping, Outcome, Processed};
pub use message::Message;
pub use parse::{Hl7ParserCrate, ParseError, Parser};
