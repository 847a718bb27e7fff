//! The FHIR R4 resources parcours reads and writes, as plain serde structs.
//!
//! Only the elements parcours uses are declared. Everything else a server sends
//! (extensions, narrative, names, addresses, elements of later versions) is ignored on
//! input: serde skips unknown keys. Every element is optional at this level; the mapping
//! code checks the elements FHIR or parcours require and refuses with the FHIRPath of
//! what is missing, so a refusal can say *where*.
//!
//! [`Patient`] deliberately holds identifiers, the identity-reliability extension, the
//! deceased flag and the links to other Patients (merges) only: names, addresses and contacts are never deserialised, so they can
//! never be stored, logged or echoed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A code from a code system (`Coding`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coding {
    /// The code system (a URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The version of the code system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A human-readable rendering of the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    /// A coding with a system and a code.
    pub fn new(system: impl Into<String>, code: impl Into<String>) -> Coding {
        Coding {
            system: Some(system.into()),
            code: Some(code.into()),
            ..Coding::default()
        }
    }

    /// Whether the coding is `code` in `system`.
    pub fn is(&self, system: &str, code: &str) -> bool {
        self.system.as_deref() == Some(system) && self.code.as_deref() == Some(code)
    }
}

/// Codings and/or text for one concept (`CodeableConcept`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeableConcept {
    /// Codes for the concept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Plain-text representation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    /// A concept with one coding.
    pub fn coded(system: impl Into<String>, code: impl Into<String>) -> CodeableConcept {
        CodeableConcept {
            coding: vec![Coding::new(system, code)],
            text: None,
        }
    }

    /// The code of the first coding in `system`.
    pub fn code_in(&self, system: &str) -> Option<&str> {
        self.coding
            .iter()
            .find(|c| c.system.as_deref() == Some(system))
            .and_then(|c| c.code.as_deref())
    }
}

/// A business identifier (`Identifier`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identifier {
    /// usual | official | temp | secondary | old.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// The kind of identifier (v2-0203: MR, PI, VN, …).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// The namespace (a URI; `urn:oid:` for OIDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Identifier {
    /// An identifier with a system and a value.
    pub fn new(system: impl Into<String>, value: impl Into<String>) -> Identifier {
        Identifier {
            system: Some(system.into()),
            value: Some(value.into()),
            ..Identifier::default()
        }
    }
}

/// Identifiers may name a patient: `Debug` shows the system only.
impl std::fmt::Debug for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identifier")
            .field("use", &self.use_)
            .field("system", &self.system)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A reference to another resource (`Reference`): literal, logical or both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// Literal reference: `Patient/123`, an absolute URL, `urn:uuid:…` or `#contained-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The type of the target (`Patient`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Logical reference: the target's business identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Text alternative (never read by parcours: it may hold a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Reference {
    /// A logical reference to a resource of `type_` by an identifier.
    pub fn logical(
        type_: impl Into<String>,
        system: impl Into<String>,
        value: impl Into<String>,
    ) -> Reference {
        Reference {
            type_: Some(type_.into()),
            identifier: Some(Identifier::new(system, value)),
            ..Reference::default()
        }
    }
}

/// A time range (`Period`); the bounds are FHIR `dateTime` strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Period {
    /// Start, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// A measured amount (`Quantity`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quantity {
    /// The numerical value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// `<`, `<=`, `>=` or `>`: how to understand the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparator: Option<String>,
    /// Unit as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The unit's code system (`http://unitsofmeasure.org` for UCUM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The coded unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A low and a high quantity (`Range`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Range {
    /// Low limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<Quantity>,
    /// High limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<Quantity>,
}

/// Resource metadata (`Meta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Version of the resource on its server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// When the resource last changed (an `instant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// Profiles the resource claims to conform to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Coding>,
}

/// An extension: a URL and a value or nested extensions (`Extension`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// What the extension means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Nested extensions (complex extensions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// A `Coding` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_coding: Option<Coding>,
    /// A `CodeableConcept` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_codeable_concept: Option<CodeableConcept>,
    /// A `code` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_code: Option<String>,
}

/// `Encounter.statusHistory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusHistory {
    /// A past status.
    #[serde(default)]
    pub status: Option<String>,
    /// When it held.
    #[serde(default)]
    pub period: Option<Period>,
}

/// `Encounter.diagnosis`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncounterDiagnosis {
    /// The Condition (or Procedure) that is the diagnosis.
    #[serde(default)]
    pub condition: Option<Reference>,
    /// Admission, discharge, billing… diagnosis.
    #[serde(rename = "use", default)]
    pub use_: Option<CodeableConcept>,
    /// Ranking (1 = primary).
    #[serde(default)]
    pub rank: Option<u32>,
}

/// `Encounter.hospitalization`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hospitalization {
    /// Where the patient went at discharge.
    #[serde(default)]
    pub discharge_disposition: Option<CodeableConcept>,
}

/// A hospital stay, emergency visit or consultation (`Encounter`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encounter {
    /// Logical id on the sender's server.
    #[serde(default)]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<Meta>,
    /// Resources contained in this one (`#id` references).
    #[serde(default)]
    pub contained: Vec<Value>,
    /// Visit numbers.
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    /// planned | arrived | triaged | in-progress | onleave | finished | cancelled | entered-in-error | unknown (required).
    #[serde(default)]
    pub status: Option<String>,
    /// Past statuses.
    #[serde(default)]
    pub status_history: Vec<StatusHistory>,
    /// v3-ActCode class: IMP, EMER, AMB, … (required).
    #[serde(default)]
    pub class: Option<Coding>,
    /// Specific type of encounter.
    #[serde(rename = "type", default)]
    pub type_: Vec<CodeableConcept>,
    /// Specific type of service.
    #[serde(default)]
    pub service_type: Option<CodeableConcept>,
    /// The patient.
    #[serde(default)]
    pub subject: Option<Reference>,
    /// Start and end of the encounter.
    #[serde(default)]
    pub period: Option<Period>,
    /// Coded reasons.
    #[serde(default)]
    pub reason_code: Vec<CodeableConcept>,
    /// Diagnoses of the encounter.
    #[serde(default)]
    pub diagnosis: Vec<EncounterDiagnosis>,
    /// Admission and discharge details.
    #[serde(default)]
    pub hospitalization: Option<Hospitalization>,
    /// The organisation responsible (the facility).
    #[serde(default)]
    pub service_provider: Option<Reference>,
}

/// `Observation.referenceRange`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceRange {
    /// Low limit.
    #[serde(default)]
    pub low: Option<Quantity>,
    /// High limit.
    #[serde(default)]
    pub high: Option<Quantity>,
    /// normal, recommended, treatment, …
    #[serde(rename = "type", default)]
    pub type_: Option<CodeableConcept>,
    /// Population the range applies to.
    #[serde(default)]
    pub applies_to: Vec<CodeableConcept>,
}

/// `Observation.component`: one part of a panel measured together (blood pressure).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservationComponent {
    /// What the component is (required).
    #[serde(default)]
    pub code: Option<CodeableConcept>,
    /// `valueQuantity`.
    #[serde(default)]
    pub value_quantity: Option<Quantity>,
    /// `valueCodeableConcept`.
    #[serde(default)]
    pub value_codeable_concept: Option<CodeableConcept>,
    /// `valueString`.
    #[serde(default)]
    pub value_string: Option<String>,
    /// `valueBoolean`.
    #[serde(default)]
    pub value_boolean: Option<bool>,
    /// `valueInteger`.
    #[serde(default)]
    pub value_integer: Option<i64>,
    /// `valueTime` (kept as text).
    #[serde(default)]
    pub value_time: Option<String>,
    /// `valueDateTime` (kept as text).
    #[serde(default)]
    pub value_date_time: Option<String>,
    /// `valueRange` (not mapped).
    #[serde(default)]
    pub value_range: Option<Value>,
    /// `valueRatio` (not mapped).
    #[serde(default)]
    pub value_ratio: Option<Value>,
    /// `valueSampledData` (not mapped).
    #[serde(default)]
    pub value_sampled_data: Option<Value>,
    /// `valuePeriod` (not mapped).
    #[serde(default)]
    pub value_period: Option<Value>,
    /// High, low, normal…
    #[serde(default)]
    pub interpretation: Vec<CodeableConcept>,
    /// Reference ranges.
    #[serde(default)]
    pub reference_range: Vec<ReferenceRange>,
}

/// A measurement or lab result (`Observation`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Logical id on the sender's server.
    #[serde(default)]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<Meta>,
    /// Resources contained in this one.
    #[serde(default)]
    pub contained: Vec<Value>,
    /// Business identifiers (the lab's result number).
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    /// registered | preliminary | final | amended | corrected | cancelled | entered-in-error | unknown (required).
    #[serde(default)]
    pub status: Option<String>,
    /// What was observed (required).
    #[serde(default)]
    pub code: Option<CodeableConcept>,
    /// The patient.
    #[serde(default)]
    pub subject: Option<Reference>,
    /// Clinically relevant time (`effectiveDateTime`).
    #[serde(default)]
    pub effective_date_time: Option<String>,
    /// Clinically relevant period (`effectivePeriod`).
    #[serde(default)]
    pub effective_period: Option<Period>,
    /// Clinically relevant instant (`effectiveInstant`).
    #[serde(default)]
    pub effective_instant: Option<String>,
    /// When the result was released.
    #[serde(default)]
    pub issued: Option<String>,
    /// `valueQuantity`.
    #[serde(default)]
    pub value_quantity: Option<Quantity>,
    /// `valueCodeableConcept`.
    #[serde(default)]
    pub value_codeable_concept: Option<CodeableConcept>,
    /// `valueString`.
    #[serde(default)]
    pub value_string: Option<String>,
    /// `valueBoolean`.
    #[serde(default)]
    pub value_boolean: Option<bool>,
    /// `valueInteger`.
    #[serde(default)]
    pub value_integer: Option<i64>,
    /// `valueTime` (kept as text).
    #[serde(default)]
    pub value_time: Option<String>,
    /// `valueDateTime` (kept as text).
    #[serde(default)]
    pub value_date_time: Option<String>,
    /// `valueRange` (not mapped).
    #[serde(default)]
    pub value_range: Option<Value>,
    /// `valueRatio` (not mapped).
    #[serde(default)]
    pub value_ratio: Option<Value>,
    /// `valueSampledData` (not mapped).
    #[serde(default)]
    pub value_sampled_data: Option<Value>,
    /// `valuePeriod` (not mapped).
    #[serde(default)]
    pub value_period: Option<Value>,
    /// High, low, normal…
    #[serde(default)]
    pub interpretation: Vec<CodeableConcept>,
    /// Reference ranges.
    #[serde(default)]
    pub reference_range: Vec<ReferenceRange>,
    /// Parts of a panel.
    #[serde(default)]
    pub component: Vec<ObservationComponent>,
}

/// A diagnosis or problem (`Condition`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Logical id.
    #[serde(default)]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<Meta>,
    /// active | recurrence | relapse | inactive | remission | resolved (also the bare
    /// code of FHIR STU3).
    #[serde(default, deserialize_with = "concept_or_code")]
    pub clinical_status: Option<CodeableConcept>,
    /// unconfirmed | provisional | differential | confirmed | refuted | entered-in-error
    /// (also the bare code of FHIR STU3).
    #[serde(default, deserialize_with = "concept_or_code")]
    pub verification_status: Option<CodeableConcept>,
    /// problem-list-item | encounter-diagnosis.
    #[serde(default)]
    pub category: Vec<CodeableConcept>,
    /// The diagnosis code (ICD-10, SNOMED CT).
    #[serde(default)]
    pub code: Option<CodeableConcept>,
    /// The patient (required).
    #[serde(default)]
    pub subject: Option<Reference>,
    /// The encounter it was recorded in.
    #[serde(default)]
    pub encounter: Option<Reference>,
    /// Onset.
    #[serde(default)]
    pub onset_date_time: Option<String>,
    /// Onset as a period.
    #[serde(default)]
    pub onset_period: Option<Period>,
    /// When it was first recorded.
    #[serde(default)]
    pub recorded_date: Option<String>,
    /// FHIR STU3's name of the recording time (older Synthea exports still write it in
    /// bundles labelled R4): used when `recordedDate` is absent.
    #[serde(default)]
    pub asserted_date: Option<String>,
}

/// A `CodeableConcept`, or the bare code FHIR STU3 wrote in its place (`"clinicalStatus":
/// "active"`; older Synthea exports still do in bundles labelled R4): read as a concept
/// with one coding of that code and no system.
fn concept_or_code<'de, D>(d: D) -> Result<Option<CodeableConcept>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ConceptOrCode {
        Code(String),
        Concept(CodeableConcept),
    }
    Ok(match Option::<ConceptOrCode>::deserialize(d)? {
        None => None,
        Some(ConceptOrCode::Concept(c)) => Some(c),
        Some(ConceptOrCode::Code(code)) => Some(CodeableConcept {
            coding: vec![Coding {
                code: Some(code),
                ..Coding::default()
            }],
            text: None,
        }),
    })
}

/// The parts of a lab report parcours reads (`DiagnosticReport`): its time, patient and
/// results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticReport {
    /// Logical id.
    #[serde(default)]
    pub id: Option<String>,
    /// Clinically relevant time.
    #[serde(default)]
    pub effective_date_time: Option<String>,
    /// Clinically relevant period.
    #[serde(default)]
    pub effective_period: Option<Period>,
    /// When the report was released.
    #[serde(default)]
    pub issued: Option<String>,
    /// The patient (its results may leave theirs to it).
    #[serde(default)]
    pub subject: Option<Reference>,
    /// The observations of the report.
    #[serde(default)]
    pub result: Vec<Reference>,
}

/// The parts of an organisation parcours reads (`Organization`): its identifiers (FINESS).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    /// Logical id.
    #[serde(default)]
    pub id: Option<String>,
    /// Identifiers (FINESS, SIRET, OID).
    #[serde(default)]
    pub identifier: Vec<Identifier>,
}

/// The parts of a patient parcours reads (`Patient`): identifiers, identity reliability,
/// death and links (merges). Never names, addresses or contacts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    /// Logical id.
    #[serde(default)]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<Meta>,
    /// Extensions (FR Core identity reliability).
    #[serde(default)]
    pub extension: Vec<Extension>,
    /// INS, IPP and other identifiers.
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    /// Whether the patient died.
    #[serde(default)]
    pub deceased_boolean: Option<bool>,
    /// When the patient died.
    #[serde(default)]
    pub deceased_date_time: Option<String>,
    /// Links to other Patient resources of the same person (`replaced-by`, `replaces`:
    /// a merge).
    #[serde(default)]
    pub link: Vec<PatientLink>,
}

/// `Patient.link`: another Patient resource about the same person.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatientLink {
    /// The other Patient (FHIR: required).
    #[serde(default)]
    pub other: Option<Reference>,
    /// `replaced-by`, `replaces`, `refer` or `seealso` (FHIR: required).
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
}

/// `Task.restriction`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restriction {
    /// How many times to repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetitions: Option<u32>,
    /// When fulfilment is sought (its end is the due time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// For whom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient: Vec<Reference>,
}

/// A piece of work for someone (`Task`), read for outcomes and written for effects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Always `Task` when written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Resources contained in this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contained: Vec<Value>,
    /// Task identifiers (`urn:parcours:task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// What the task fulfils (the pathway instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub based_on: Vec<Reference>,
    /// draft | requested | received | accepted | rejected | ready | cancelled | in-progress | on-hold | failed | completed | entered-in-error (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the status is what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<CodeableConcept>,
    /// Domain-specific status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_status: Option<CodeableConcept>,
    /// proposal | plan | order | … (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// routine | urgent | asap | stat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// What to do (`urn:parcours:task-code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeableConcept>,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The patient (`Task.for`).
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<Reference>,
    /// When the task was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authored_on: Option<String>,
    /// When the task last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// When the work actually started and ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_period: Option<Period>,
    /// Who asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Reference>,
    /// Which kind of performer is wanted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performer_type: Vec<CodeableConcept>,
    /// Who is responsible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Reference>,
    /// Why the task is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<CodeableConcept>,
    /// What caused the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_reference: Option<Reference>,
    /// Constraints on fulfilment (the due time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<Restriction>,
}

/// `Communication.payload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The message text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_string: Option<String>,
}

/// A message to people (`Communication`): parcours alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Communication {
    /// Always `Communication` when written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Identifiers (`urn:parcours:alert`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    /// What the message fulfils (the pathway instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub based_on: Vec<Reference>,
    /// preparation | in-progress | not-done | on-hold | stopped | completed | entered-in-error | unknown (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// alert | notification | reminder | instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<CodeableConcept>,
    /// routine | urgent | asap | stat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Reference>,
    /// What the message is about (`urn:parcours:alert-code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<CodeableConcept>,
    /// Resources the message is about (the event that caused it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub about: Vec<Reference>,
    /// When it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// When it was received (an acknowledgement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// Who it is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient: Vec<Reference>,
    /// Why it was sent (the pathway rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason_code: Vec<CodeableConcept>,
    /// The message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<Payload>,
}

/// `Bundle.entry.request`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRequest {
    /// GET | HEAD | POST | PUT | DELETE | PATCH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `Bundle.entry.search`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleSearch {
    /// match | include | outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `Bundle.entry.response` (written in batch and transaction responses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleResponse {
    /// HTTP status of the entry (`200 OK`).
    #[serde(default)]
    pub status: String,
    /// Issues with the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OperationOutcome>,
}

/// One entry of a bundle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    /// Absolute URL or `urn:uuid:` of the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    /// The resource, parsed by type later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    /// Transaction and batch request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<BundleRequest>,
    /// Search result mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<BundleSearch>,
    /// Transaction and batch response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<BundleResponse>,
}

/// A container of resources (`Bundle`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// Always `Bundle` when written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_type: String,
    /// Logical id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// document | message | transaction | transaction-response | batch | batch-response | history | searchset | collection (required).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<BundleEntry>,
}

/// One issue of an [`OperationOutcome`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeIssue {
    /// fatal | error | warning | information.
    pub severity: String,
    /// A code of the IssueType value set (`required`, `value`, …).
    pub code: String,
    /// What is wrong, in words (never patient data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// FHIRPath of the element concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// Errors, warnings and information about a request (`OperationOutcome`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    /// Always `OperationOutcome`.
    pub resource_type: String,
    /// The issues (at least one).
    pub issue: Vec<OutcomeIssue>,
}

/// Every resource type of FHIR R4 (4.0.1), to tell a known type parcours does not use
/// from a name that is not FHIR at all.
pub const RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// The R4 resource type of this name, as a static string (so it may be echoed safely).
pub fn known_resource_type(name: &str) -> Option<&'static str> {
    RESOURCE_TYPES
        .binary_search(&name)
        .ok()
        .and_then(|i| RESOURCE_TYPES.get(i).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted_for_binary_search() {
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(RESOURCE_TYPES.len(), 146);
        assert_eq!(known_resource_type("Observation"), Some("Observation"));
        assert_eq!(known_resource_type("Observatio"), None);
    }

    #[test]
    fn identifier_debug_hides_the_value() {
        let id = Identifier::new("urn:oid:1.2.250.1.213.1.4.8", "180027512345678");
        assert!(!format!("{id:?}").contains("1800275"));
    }
}
