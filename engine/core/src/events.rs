//! The canonical event catalogue: every fact parcours reacts to, with typed fields.
//!
//! Adapters (HL7 v2, FHIR, the HTTP API) turn what hospitals, labs and care teams send
//! into these events; pathway guards type-check against the fields declared here.
//! The envelope follows CloudEvents (structured mode) plus `tenant` and `occurredat`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::value::{Type, Value};

/// One field of an event type, as seen by guards.
#[derive(Clone, Debug)]
pub struct FieldDef {
    /// The field name (`event.<name>` in guards).
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// Whether the field may be absent (test it with `has(event.<name>)`).
    pub optional: bool,
    /// What the field means.
    pub doc: &'static str,
}

/// How a Rust field type appears to guards.
trait FieldType {
    fn ty() -> Type;
    fn optional() -> bool {
        false
    }
    fn value(&self) -> Value<'_>;
    /// The text, to change in place (`None`: not text).
    fn text_mut(&mut self) -> Option<&mut String> {
        None
    }
}

impl FieldType for String {
    fn ty() -> Type {
        Type::String
    }
    fn value(&self) -> Value<'_> {
        Value::Str(Cow::Borrowed(self))
    }
    fn text_mut(&mut self) -> Option<&mut String> {
        Some(self)
    }
}
impl FieldType for f64 {
    fn ty() -> Type {
        Type::Double
    }
    fn value(&self) -> Value<'_> {
        Value::Double(*self)
    }
}
impl FieldType for Timestamp {
    fn ty() -> Type {
        Type::Timestamp
    }
    fn value(&self) -> Value<'_> {
        Value::Timestamp(*self)
    }
}
impl FieldType for Vec<String> {
    fn ty() -> Type {
        Type::List(Box::new(Type::String))
    }
    fn value(&self) -> Value<'_> {
        Value::StrList(self)
    }
}
impl FieldType for BTreeMap<String, serde_json::Value> {
    fn ty() -> Type {
        Type::Opaque
    }
    fn value(&self) -> Value<'_> {
        Value::Null
    }
}
impl<T: FieldType> FieldType for Option<T> {
    fn ty() -> Type {
        T::ty()
    }
    fn optional() -> bool {
        true
    }
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
    fn text_mut(&mut self) -> Option<&mut String> {
        self.as_mut().and_then(T::text_mut)
    }
}

macro_rules! catalogue {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $name:literal {
            $( $(#[serde($($sattr:tt)*)])? $field:ident : $fty:ty => $fdoc:literal ),* $(,)?
        }
    )*) => {
        /// The type of a canonical event.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $( $(#[doc = $doc])* $variant, )* }

        impl EventType {
            /// Every event type, in catalogue order.
            pub const ALL: &'static [EventType] = &[ $(EventType::$variant),* ];

            /// The dotted name used in files and on the wire (`encounter.discharged`).
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            /// What the event means.
            pub fn doc(self) -> &'static str {
                match self { $(EventType::$variant => concat!($($doc),*).trim_ascii(),)* }
            }

            /// The fields guards may read, in declaration order.
            pub fn fields(self) -> &'static [FieldDef] {
                static TABLES: std::sync::OnceLock<Vec<Vec<FieldDef>>> = std::sync::OnceLock::new();
                let tables = TABLES.get_or_init(|| vec![ $(
                    vec![ $( FieldDef {
                        name: stringify!($field),
                        ty: <$fty as FieldType>::ty(),
                        optional: <$fty as FieldType>::optional(),
                        doc: $fdoc,
                    }, )* ],
                )* ]);
                &tables[self as usize]
            }

            /// The index of a field by name.
            pub fn field_index(self, name: &str) -> Option<u16> {
                self.fields().iter().position(|f| f.name == name).map(|i| i as u16)
            }
        }

        impl FromStr for EventType {
            type Err = UnknownEventType;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($name => Ok(EventType::$variant),)* _ => Err(UnknownEventType(s.to_string())) }
            }
        }

        /// Typed payloads, one struct per event type.
        pub mod data {
            use super::*;
            $(
                $(#[doc = $doc])*
                #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
                #[serde(deny_unknown_fields)]
                pub struct $variant {
                    $( #[doc = $fdoc] $(#[serde($($sattr)*)])? pub $field: $fty, )*
                }
            )*
        }

        /// The payload of a canonical event, tagged by its type.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum EventData { $( #[serde(rename = $name)] $variant(data::$variant), )* }

        impl EventData {
            /// The type of this payload.
            pub fn event_type(&self) -> EventType {
                match self { $(EventData::$variant(_) => EventType::$variant,)* }
            }

            /// Read field number `index` of this payload (as declared in [`EventType::fields`]).
            pub fn field(&self, index: u16) -> Value<'_> {
                match self {
                    $(EventData::$variant(d) => {
                        // One getter per field, picked by index: nothing else is read.
                        let getters: &[fn(&data::$variant) -> Value<'_>] = &[ $( {
                            fn get(d: &data::$variant) -> Value<'_> { FieldType::value(&d.$field) }
                            get
                        } ),* ];
                        getters.get(index as usize).map_or(Value::Null, |g| g(d))
                    })*
                }
            }

            /// Field number `index` of this payload when it holds text, to change in place
            /// (the vault replaces identifying fields by tokens); `None` otherwise.
            pub fn text_field_mut(&mut self, index: u16) -> Option<&mut String> {
                match self {
                    $(EventData::$variant(d) => {
                        let getters: &[fn(&mut data::$variant) -> Option<&mut String>] = &[ $( {
                            fn get(d: &mut data::$variant) -> Option<&mut String> {
                                FieldType::text_mut(&mut d.$field)
                            }
                            get
                        } ),* ];
                        getters.get(index as usize).and_then(|g| g(d))
                    })*
                }
            }

            /// Read `data` as the payload of type `ty` only to find where it does not fit
            /// (the path serde loses through the envelope's flattened `data`: [`crate::json`]).
            pub(crate) fn check_json(
                ty: EventType,
                data: &serde_json::Value,
            ) -> Result<(), serde_path_to_error::Error<serde_json::Error>> {
                match ty { $(EventType::$variant => serde_path_to_error::deserialize::<_, data::$variant>(data).map(drop),)* }
            }

            /// Build a payload of the given type from a JSON object.
            pub fn from_json(ty: EventType, data: serde_json::Value) -> Result<EventData, serde_json::Error> {
                match ty { $(EventType::$variant => serde_json::from_value(data).map(EventData::$variant),)* }
            }
        }
    };
}

catalogue! {
    /// A patient was admitted (ADT^A01/A04, FHIR Encounter in-progress).
    EncounterAdmitted = "encounter.admitted" {
        encounter_id: String => "the visit number (PV1-19, Encounter.identifier)",
        #[serde(default = "inpatient")] class: String => "inpatient, emergency, outpatient, home",
        facility: Option<String> => "the admitting facility (FINESS or OID)",
    }
    /// A patient left hospital (ADT^A03, FHIR Encounter finished).
    EncounterDischarged = "encounter.discharged" {
        encounter_id: String => "the visit number",
        #[serde(default = "inpatient")] class: String => "inpatient, emergency, outpatient, home",
        #[serde(default = "unknown", deserialize_with = "stated_or_unknown")] destination: String => "where the patient went: home, nursing-home, transfer, deceased, other; unknown when the sender did not say",
        #[serde(default)] diagnoses: Vec<String> => "ICD-10 or SNOMED codes of the stay (DG1-3, Encounter.diagnosis)",
        facility: Option<String> => "the discharging facility",
        admitted_at: Option<Timestamp> => "when the stay began",
    }
    /// A discharge is planned (ADT^A16).
    EncounterDischargePending = "encounter.discharge_pending" {
        encounter_id: String => "the visit number",
        expected_at: Option<Timestamp> => "the planned discharge instant",
    }
    /// A discharge was cancelled (ADT^A13).
    EncounterDischargeCancelled = "encounter.discharge_cancelled" {
        encounter_id: String => "the visit number",
    }
    /// An admission was cancelled (ADT^A11).
    EncounterAdmissionCancelled = "encounter.admission_cancelled" {
        encounter_id: String => "the visit number",
    }
    /// Stay data changed (ADT^A08).
    EncounterUpdated = "encounter.updated" {
        encounter_id: String => "the visit number",
        #[serde(default)] diagnoses: Vec<String> => "the stay's codes after the update",
        destination: Option<String> => "the discharge destination after the update",
    }
    /// An outpatient or home visit took place (consultation, nurse visit, eye exam).
    EncounterCompleted = "encounter.completed" {
        #[serde(default)] encounter_id: String => "the visit identifier, if any",
        kind: String => "gp-visit, cardiology-visit, nurse-visit, eye-exam, foot-exam, dental-visit, ...",
        role: Option<String> => "the professional's role",
        foot_grade: Option<f64> => "IWGDF foot risk grade recorded at a foot exam (0-3)",
        retinopathy: Option<String> => "retinopathy finding at an eye exam: none, present",
    }
    /// A procedure was performed (ECG, retinography).
    ProcedurePerformed = "procedure.performed" {
        code: String => "the procedure code",
        kind: String => "ecg, retinography, echocardiography, ...",
    }
    /// A diagnosis was recorded outside a hospital stay (GP, ALD declaration).
    DiagnosisRecorded = "diagnosis.recorded" {
        code: String => "ICD-10 or SNOMED code",
        #[serde(default)] system: String => "icd-10 or snomed",
    }
    /// A lab result or measurement (ORU^R01 OBX, FHIR Observation).
    ObservationRecorded = "observation.recorded" {
        #[serde(default)] observation_id: String => "the result identifier",
        code: String => "LOINC code",
        value: Option<f64> => "numeric value (NM, SN, valueQuantity)",
        comparator: Option<String> => "<, <=, >, >= when the value is bounded (eGFR >60)",
        value_text: Option<String> => "a result in one word: positive, 1+, a code, a date (never free text)",
        unit: Option<String> => "UCUM unit",
        #[serde(default = "final_status")] status: String => "final, corrected, amended, preliminary, cancelled, entered-in-error",
        reference_low: Option<f64> => "low end of the reference range",
        reference_high: Option<f64> => "high end of the reference range",
        abnormal_flag: Option<String> => "H, L, HH, LL, A, N",
    }
    /// A care-team system reports a task done.
    TaskCompleted = "task.completed" {
        task_id: String => "the task id parcours gave",
        #[serde(default)] code: String => "the task code from the pathway",
    }
    /// A task was cancelled because it was not needed (counts as success).
    TaskNotNeeded = "task.not_needed" {
        task_id: String => "the task id parcours gave",
        #[serde(default)] code: String => "the task code from the pathway",
    }
    /// A task was cancelled because it could not be done (counts as failure).
    TaskCouldNotBeDone = "task.could_not_be_done" {
        task_id: String => "the task id parcours gave",
        #[serde(default)] code: String => "the task code from the pathway",
    }
    /// A task passed its due time (emitted by parcours itself).
    TaskOverdue = "task.overdue" {
        task_id: String => "the task id parcours gave",
        #[serde(default)] code: String => "the task code from the pathway",
    }
    /// The receiving party accepted a handoff.
    HandoffAccepted = "handoff.accepted" {
        handoff_id: String => "the handoff id parcours gave",
        #[serde(default)] code: String => "the handoff code from the pathway",
    }
    /// The receiving party declined a handoff.
    HandoffDeclined = "handoff.declined" {
        handoff_id: String => "the handoff id parcours gave",
        #[serde(default)] code: String => "the handoff code from the pathway",
    }
    /// Someone acknowledged an alert.
    AlertAcknowledged = "alert.acknowledged" {
        alert_id: String => "the alert id parcours gave",
        #[serde(default)] code: String => "the alert code from the pathway",
    }
    /// The patient died.
    PatientDeceased = "patient.deceased" {}
    /// The patient left the territory or the CPTS's care.
    PatientTransferred = "patient.transferred" {
        destination: Option<String> => "where to, if known",
    }
    /// The care team referred the patient to a pathway: a coordinator's inclusion (a
    /// GP's or a specialist's referral, a patient whose discharge message carried no
    /// diagnosis). It enrols the patient in the pathway it names whatever that pathway's
    /// enrolment rule says — unless they are on it already (recorded as ignored) or opted
    /// out of it (a `consent.given` must come first). A pathway's transitions may react
    /// to a referral to another pathway.
    PatientReferred = "patient.referred" {
        pathway: String => "the id of the pathway the patient is referred to",
        by: Option<String> => "who referred, as a role (gp, cardiologist, coordinator…)",
    }
    /// The patient consented to a programme. Given before the patient is enrolled (in
    /// hospital, before the discharge), it counts for an enrolment within the pathway's
    /// `consent_window` after it, 30 days by default
    /// ([`crate::route::consent_before_enrolment`]).
    ConsentGiven = "consent.given" {
        #[serde(default = "any_scope")] scope: String => "the pathway id, or * for all",
    }
    /// The patient withdrew consent (opt-out).
    ConsentWithdrawn = "consent.withdrawn" {
        #[serde(default = "any_scope")] scope: String => "the pathway id, or * for all",
    }
    /// Two patient identities were merged (ADT^A40); this subject survives.
    IdentityMerged = "identity.merged" {
        merged_subject: String => "the pseudonymous key that was retired",
    }
    /// One message named the patient both by a qualified national identity (INS, this
    /// subject) and by a local identifier (a hospital's IPP, a lab's id): from now on the
    /// local identifier's key resolves to this one (IHE PAM-FR: the INS is the reference
    /// identity once qualified), and what was recorded under it follows, as for a merge.
    IdentityLinked = "identity.linked" {
        local_subject: String => "the pseudonymous key of the local identifier",
    }
    /// Per-patient parameter overrides set by a clinician (hba1c_target = 7.5).
    ParametersUpdated = "parameters.updated" {
        values: BTreeMap<String, serde_json::Value> => "parameter name to new value",
    }
    /// A durable timer reached its time (emitted by parcours itself).
    TimerFired = "timer.fired" {
        timer_id: String => "the timer id",
        #[serde(default)] instance_id: String => "the instance that scheduled it",
    }
}

fn inpatient() -> String {
    "inpatient".into()
}
/// A destination the sender did not state (`encounter.discharged`).
pub const UNSTATED_DESTINATION: &str = "unknown";
fn unknown() -> String {
    UNSTATED_DESTINATION.into()
}
/// A discharge destination as sent, or `unknown` when empty: an empty destination is
/// one the sender did not state (what FHIR mappings of earlier releases wrote, and a
/// CloudEvent may send), the same as none at all.
fn stated_or_unknown<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s.trim().is_empty() { unknown() } else { s })
}
fn final_status() -> String {
    "final".into()
}
fn any_scope() -> String {
    "*".into()
}

/// An event type name that is not in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The one tenant id [`valid_tenant`] refuses though well shaped: the NATS subject token
/// of dead letters whose tenant could not be read.
pub const RESERVED_TENANT: &str = "_unknown";

/// What [`valid_tenant`] accepts, in the words every refusal of a tenant id uses.
pub const TENANT_RULE: &str = "1 to 64 characters among a-z 0-9 - _, not `_unknown`";

/// Event types only parcours itself emits: refused from outside (HTTP, NATS).
pub const INTERNAL_TYPES: &[EventType] = &[EventType::TimerFired, EventType::TaskOverdue];

/// Whether a tenant id is well formed: `[a-z0-9_-]{1,64}` (it becomes a token of NATS
/// subjects and a label of metrics), but `_unknown`, the token of the dead letters whose
/// tenant could not be read (`parcours._unknown.dlq`): a tenant of that name would share
/// their subject.
pub fn valid_tenant(t: &str) -> bool {
    t != RESERVED_TENANT
        && !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

fn valid_key(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The longest textual result an event carries.
pub const RESULT_TEXT_MAX: usize = 24;

/// What `value_text` may hold: one word of at most [`RESULT_TEXT_MAX`] characters — a
/// qualitative result or a code (`positive`, `POSITIF`, `1+`, `trace`, `260385009`'s
/// kind of code is a number), a number, a date or a time (`2026-12-08`, `1:128`,
/// `10-20`) —, never letters mixed with more than four digits (`IPP887766554`). Free text
/// (a lab's comment, a report: HL7 ST, TX, FT; FHIR valueString) may name the patient — a
/// name, a birth date, a telephone number — and the log keeps no name: the intake fronts
/// leave such text out of the event, and a canonical event carrying it is refused.
pub fn is_result_text(text: &str) -> bool {
    let numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | ':' | '.' | ',' | '/' | '+' | 'T' | 'Z'));
    !text.is_empty()
        && text.chars().count() <= RESULT_TEXT_MAX
        && !text.chars().any(char::is_whitespace)
        && (numeric || text.chars().filter(char::is_ascii_digit).count() <= 4)
}

/// Why `value_text` is refused, for the rule's refusals and warnings.
pub const RESULT_TEXT_RULE: &str = "`value_text` is a result in one word of at most 24 characters (`positive`, `1+`, `trace`, a code, a number, a date); free text (a comment, a report) may name the patient and is not kept";

/// Whether a subject has the shape of an identifier in clear rather than a pseudonymous
/// key: only digits, seven or more (a NIR or INS has 13 or 15, a hospital's IPP is a
/// number), or a NIR of Corsica (`2A`/`2B` at the department's place).
pub fn looks_like_an_identifier(subject: &str) -> bool {
    let b = subject.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    (b.len() >= 7 && digits(b))
        || (matches!(b.len(), 13 | 15)
            && digits(&b[..5])
            && matches!(&b[5..7], b"2A" | b"2B" | b"2a" | b"2b")
            && digits(&b[7..]))
}

/// Whether `subject` may name a patient in an event: a pseudonymous key (1 to 128
/// characters among a-z A-Z 0-9 - _ . :), never the shape of an identifier in clear.
/// The rule of every front: a canonical event's `subject`, a FHIR
/// `urn:parcours:subject` identifier (a care-team system sending back the Task it read).
pub fn is_subject_key(subject: &str) -> bool {
    valid_key(subject, 128) && !looks_like_an_identifier(subject)
}

/// Check the envelope of an event received from outside (HTTP, NATS): what the engine
/// keys on must be sane, the subject a pseudonymous key, and parcours's own event types
/// are not accepted. The reason does not repeat the value.
pub fn check_envelope(e: &Event) -> Result<(), String> {
    if e.id.is_empty() || e.id.len() > 256 || e.id.chars().any(char::is_control) {
        return Err("`id` must be 1 to 256 printable characters".into());
    }
    if !valid_tenant(&e.tenant) {
        return Err(format!("`tenant` must be {TENANT_RULE}"));
    }
    if !valid_key(&e.subject, 128) {
        return Err(
            "`subject` must be a pseudonymous key of 1 to 128 characters among a-z A-Z 0-9 - _ . : \
             (never a name or a national identifier)"
                .into(),
        );
    }
    if looks_like_an_identifier(&e.subject) {
        return Err(
            "`subject` has the shape of an identifier in clear (only digits: a NIR, an INS, an \
             IPP): send the pseudonymous key of the patient, never the identifier itself"
                .into(),
        );
    }
    if let EventData::ObservationRecorded(o) = &e.data
        && o.value_text.as_deref().is_some_and(|t| !is_result_text(t))
    {
        return Err(RESULT_TEXT_RULE.into());
    }
    if INTERNAL_TYPES.contains(&e.event_type()) {
        return Err(format!(
            "`{}` events are emitted by parcours itself, not accepted from outside",
            e.event_type()
        ));
    }
    Ok(())
}

/// The discharge destination (`home`, `nursing-home`, `transfer`, `deceased`, `other`)
/// of a US patient discharge status code: HL7 v2 table 0112 (PV1-36) and the NUBC UB-04
/// codes FHIR senders write under `http://www.nubc.org/patient-discharge` (Synthea does)
/// are the same list. A one-digit code is read as its zero-padded form; an unknown code
/// is `other`.
pub fn discharge_status_destination(code: &str) -> &'static str {
    let code = code.trim();
    let padded = if code.len() == 1 {
        format!("0{code}")
    } else {
        code.to_owned()
    };
    match padded.as_str() {
        "01" | "06" | "07" | "08" | "50" => "home",
        "03" | "04" | "64" => "nursing-home",
        "02" | "05" | "43" | "51" | "61" | "62" | "63" | "65" | "66" | "69" | "70" => "transfer",
        "20" | "40" | "41" | "42" => "deceased",
        _ => "other",
    }
}

/// An ICD-10 (CIM-10) code as pathway files and `diagnosis.recorded` write it: upper
/// case, with its dot (`i500` → `I50.0`, `E1165` → `E11.65`; `E11` and `I50.9` as they
/// are). HL7 v2 DG1 and French PMSI extracts write codes without the dot, FHIR and the
/// ANS terminology server with it: both adapters write the same code.
pub fn normalise_icd10(code: &str) -> String {
    let code = code.trim().to_ascii_uppercase();
    let b = code.as_bytes();
    let shaped = b.len() > 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && b[2].is_ascii_alphanumeric()
        && !code.contains('.');
    if shaped {
        format!("{}.{}", &code[..3], &code[3..])
    } else {
        code
    }
}

/// Result statuses that may drive guards: final, corrected or amended.
pub fn is_actionable_status(status: &str) -> bool {
    matches!(status, "final" | "corrected" | "amended")
}

/// A canonical event with its envelope (CloudEvents attributes, tenant, clinical time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (CloudEvents `id`); idempotency key.
    pub id: String,
    /// The CPTS that owns this event.
    pub tenant: String,
    /// Who emitted it (CloudEvents `source`): an adapter, a hospital, a care-team system.
    #[serde(default)]
    pub source: String,
    /// The pseudonymous patient key (CloudEvents `subject`); never a name or a national id.
    pub subject: String,
    /// When it happened, clinically.
    #[serde(rename = "occurredat")]
    pub occurred_at: Timestamp,
    /// When parcours recorded it (CloudEvents `time`); set by the runtime.
    #[serde(rename = "time", default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<Timestamp>,
    /// The typed payload.
    #[serde(flatten)]
    pub data: EventData,
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// Whether it gives or withdraws a consent (`consent.given`, `consent.withdrawn`).
    pub fn is_consent(&self) -> bool {
        matches!(
            self.data,
            EventData::ConsentGiven(_) | EventData::ConsentWithdrawn(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_subject_tokens_and_not_the_reserved_one() {
        assert!(valid_tenant("cpts-nord_2"));
        assert!(valid_tenant("_x"));
        for bad in ["", "CPTS", "a.b", "a*", "_unknown", &"a".repeat(65)] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }

    /// A result's text is one word (a qualitative result, a code, a number, a date);
    /// free text — it may name the patient — is refused at the envelope.
    #[test]
    fn result_text_is_one_word_never_free_text() {
        for kept in [
            "positive",
            "POSITIF",
            "négatif",
            "1+",
            "trace",
            ">60",
            "1:128",
            "10-20",
            "2026-12-08T10:00:00Z",
            "260385009",
        ] {
            assert!(is_result_text(kept), "{kept}");
        }
        for left in [
            "",
            "see attached report",
            "MARTIN Josiane",
            "hémolysé\nà contrôler",
            "IPP887766554",
            &"x".repeat(25),
        ] {
            assert!(!is_result_text(left), "{left}");
        }
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": "o-1", "tenant": "cpts-a", "source": "lab", "subject": "p-1",
            "occurredat": "2026-12-08T10:00:00Z", "type": "observation.recorded",
            "data": {"observation_id": "R1", "code": "2823-3", "value_text": "positive"}
        }))
        .expect("an event");
        assert_eq!(check_envelope(&e), Ok(()));
        if let EventData::ObservationRecorded(o) = &mut e.data {
            o.value_text = Some("Mme MARTIN, tél 0320123456".into());
        }
        assert_eq!(check_envelope(&e), Err(RESULT_TEXT_RULE.to_owned()));
    }

    #[test]
    fn icd10_gets_its_dot() {
        assert_eq!(normalise_icd10("I500"), "I50.0");
        assert_eq!(normalise_icd10("i50.9"), "I50.9");
        assert_eq!(normalise_icd10("E11"), "E11");
        assert_eq!(normalise_icd10("E1165"), "E11.65");
    }

    #[test]
    fn every_type_round_trips_through_its_name() {
        for ty in EventType::ALL {
            assert_eq!(ty.as_str().parse::<EventType>(), Ok(*ty));
            assert!(!ty.doc().is_empty(), "{ty} has no doc");
        }
        assert!("encounter.teleported".parse::<EventType>().is_err());
    }

    #[test]
    fn fields_are_readable_by_index() {
        let data = EventData::ObservationRecorded(data::ObservationRecorded {
            code: "29463-7".into(),
            value: Some(81.5),
            unit: Some("kg".into()),
            status: "final".into(),
            ..Default::default()
        });
        let ty = data.event_type();
        let i = ty.field_index("value").expect("value field");
        assert_eq!(data.field(i), Value::Double(81.5));
        let i = ty
            .field_index("reference_low")
            .expect("reference_low field");
        assert_eq!(data.field(i), Value::Null);
        assert!(ty.fields()[i as usize].optional);
    }

    #[test]
    fn envelope_is_cloudevents_structured() {
        let json = serde_json::json!({
            "id": "e1", "tenant": "cpts-a", "source": "hl7v2", "subject": "p-1",
            "occurredat": "2026-03-02T09:00:00Z", "type": "encounter.discharged",
            "data": {"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}
        });
        let ev: Event = serde_json::from_value(json).expect("parses");
        assert_eq!(ev.event_type(), EventType::EncounterDischarged);
        let EventData::EncounterDischarged(d) = &ev.data else {
            unreachable!()
        };
        assert_eq!(d.class, "inpatient");
        let back = serde_json::to_value(&ev).expect("serialises");
        assert_eq!(back["type"], "encounter.discharged");
        assert_eq!(back["data"]["destination"], "home");
    }

    #[test]
    fn a_destination_not_stated_is_unknown() {
        let read = |data: serde_json::Value| match EventData::from_json(
            EventType::EncounterDischarged,
            data,
        ) {
            Ok(EventData::EncounterDischarged(d)) => d.destination,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(serde_json::json!({"encounter_id": "V1"})), "unknown");
        // What FHIR mappings of earlier releases stored for no disposition.
        assert_eq!(
            read(serde_json::json!({"encounter_id": "V1", "destination": ""})),
            "unknown"
        );
        assert_eq!(
            read(serde_json::json!({"encounter_id": "V1", "destination": "other"})),
            "other"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r = EventData::from_json(
            EventType::PatientDeceased,
            serde_json::json!({"name": "Jean Dupont"}),
        );
        assert!(r.is_err());
    }

    #[test]
    fn identifiers_in_clear_are_not_subjects() {
        for id in [
            "180017512345678",
            "1800175123456",
            "185122A123456",
            "185122A12345678",
            "00123456",
        ] {
            assert!(looks_like_an_identifier(id), "{id}");
        }
        for key in [
            "p-0000004",
            "p-3f2a9c",
            "123456",
            "k1800175123456",
            "pat:42",
        ] {
            assert!(!looks_like_an_identifier(key), "{key}");
        }
    }
}
