//! parcours-fhir: FHIR R4 JSON in and out.
//!
//! - **Inbound** ([`ingest`], [`to_events`]): Encounter, Observation, Condition, Task,
//!   Communication and Patient resources, alone or in a Bundle, become canonical events
//!   ([`parcours_core::Event`]). Pure: no IO, no clock, no randomness.
//! - **Refusals** ([`Refusal`]): what could not be used becomes an OperationOutcome with
//!   the FHIRPath of the element (`Bundle.entry[3].resource.valueQuantity.unit`) and the
//!   HTTP status (400, 413, 415, 422). Diagnostics never echo a value the sender sent.
//! - **Content type** ([`check_content_type`]): FHIR JSON only; XML gets 415 and is never
//!   parsed (a body that starts with `<` gets 415 whatever its declared type).
//! - **Outbound** ([`outbound`]): task, alert and handoff effects become FHIR Task and
//!   Communication resources.
//!
//! Resources are read with the crate's own serde structs ([`r4`]): unknown elements
//! (extensions, narrative, later-version elements) are ignored, the elements FHIR or
//! parcours require are checked, duplicate JSON keys are refused.
//!
//! # Who the patient is
//!
//! Every event names its patient by a pseudonymous subject key:
//! `Pseudonymizer::subject(tenant, identifier)`. The identifier comes from the
//! resource's `subject` (`Task.for`):
//!
//! | the reference | the identifier |
//! |---|---|
//! | `#id`, a contained Patient | chosen on that Patient (below) |
//! | a bundle entry (by `fullUrl`, or `Type/id`) | chosen on that Patient (below) |
//! | `Patient/123` not in the request (also `123` with `type` `Patient`, as FR Core's examples write it) | local: `<source base URL>/Patient` \| `123` |
//! | `https://other/fhir/Patient/123` not in the request | local: `https://other/fhir/Patient` \| `123` |
//! | `identifier` only (logical) | that identifier; an INS system makes it the INS (the INS référentiel lets a sender share an INS only once qualified) |
//! | `Patient?identifier=system\|value` (conditional, percent-encoded or not) | chosen on the bundle's Patient entry holding that identifier (two such entries: refused, `multiple-matches`), else that identifier, as a logical one; another search is refused (`not-supported`) |
//! | `identifier` with system `urn:parcours:subject`, also written as the conditional `Patient?identifier=urn:parcours:subject\|<key>` | the subject key itself (a care-team system answering a parcours Task) |
//! | an unresolvable `urn:uuid:`, a Group, a Device | refused (422, `not-found` / `not-supported`) |
//!
//! On a Patient, best first:
//!
//! 1. the INS, `urn:oid:1.2.250.1.213.1.4.8` (NIR) before `.9` (NIA), **only when** the
//!    FR Core extension `fr-core-identity-reliability` has `identityStatus` = `VALI`;
//!    a qualified test INS (`.10`, `.11`) is refused (422 `business-rule`) unless
//!    [`Context::allow_test_ins`]; an INS value must be 15 characters;
//! 2. a local identifier of a system the source prefers
//!    ([`Context::prefer_identifier_system`], its IPP authority);
//! 3. a local identifier typed `PI` (FR Core IPP) or `MR`;
//! 4. any other identifier with a system and a value (never an unqualified INS, never an
//!    `old` one);
//! 5. the Patient's id on a server (`<base>/Patient` | id): its `fullUrl`'s, else (a
//!    `urn:uuid:` fullUrl) its `id` on the source's server — the key a `Patient/<id>`
//!    reference has when the Patient is not in the request.
//!
//! Systems lose their `urn:oid:` prefix, so an IPP authority OID names one namespace
//! whether it comes from FHIR or HL7 v2. Names, addresses and contacts are never read.
//!
//! A Patient named by its qualified INS (1) that also has a local identifier (the one
//! 2–4 would pick) makes the resource's events start with `identity.linked` (subject =
//! the INS's key, `local_subject` = the local identifier's, at the resource's earliest
//! clinical time): the engine keeps the link, so that events naming the patient by the
//! local identifier alone reach the INS's key (`parcours_runtime::links`). A Patient
//! sent alone (the identity update that brings the qualification) gives the link
//! itself, at its `meta.lastUpdated` (without one: not linked, an information issue
//! says why).
//!
//! # Inbound mapping
//!
//! ## Encounter
//!
//! | `class` (v3-ActCode) | `status` | event |
//! |---|---|---|
//! | IMP, ACUTE, NONAC (class `inpatient`); EMER (`emergency`); SS, OBSENC (`outpatient`) | arrived, triaged, in-progress, onleave | `encounter.admitted` at `period.start` |
//! | same | arrived … onleave, with `finished` in `statusHistory` | `encounter.discharge_cancelled` (the FHIR form of ADT^A13) |
//! | same | finished | `encounter.discharged` at `period.end`, `admitted_at` = `period.start` |
//! | same | cancelled, entered-in-error | `encounter.admission_cancelled`, preceded by `encounter.discharge_cancelled` when the stay had ended (`period.end` or a `finished` history) |
//! | same | planned | nothing (information) |
//! | AMB, VR, FLD, HH | finished | `encounter.completed` at `period.end` (else start), `kind` below |
//! | AMB, VR, FLD, HH | any other | nothing (information) |
//! | PRENC | any | nothing (information) |
//! | without a system, the words `inpatient`, `emergency` (as IMP, EMER) and `ambulatory`, `outpatient`, `wellness`, `urgentcare`, `home`, `virtual` (as AMB); ActCodes in any case | | as the class they name (FHIR STU3-era exports write `{"code": "ambulatory"}`; the binding is extensible) |
//! | another class | | refused (422 `code-invalid`) |
//!
//! Cancellations happen at `meta.lastUpdated`, else the latest time in `period` or
//! `statusHistory`. `encounter_id` is the identifier typed `VN`, else the first usual,
//! official or secondary identifier, else the resource id (temporary identifiers are
//! skipped: they change, and some embed a name). `facility` is the identifier of
//! `serviceProvider` (logical, or on the Organization in the bundle or contained).
//!
//! `destination` from `hospitalization.dischargeDisposition`:
//!
//! | code (HL7 discharge-disposition, also under FHIR STU3's `http://hl7.org/fhir/discharge-disposition`; SNOMED CT) | destination |
//! |---|---|
//! | `home`, `alt-home`, `aadvice` (left against advice: gone home, and followed up as such); SNOMED `306689006` | `home` |
//! | `snf`, `long`; SNOMED `306691003` (residential home) | `nursing-home` |
//! | `other-hcf`, `hosp`, `psy`, `rehab`; SNOMED `306706006` (to a ward), `19712007` (transfer) | `transfer` |
//! | `exp`; SNOMED `305398007` (mortuary) | `deceased` |
//! | NUBC patient discharge status (`http://www.nubc.org/patient-discharge`, what Synthea writes: HL7 v2 table 0112's list) | as PV1-36 in parcours-hl7v2: `01` home … |
//! | `oth`, an unknown code (warning) | `other` |
//! | FR Core circonstances de sortie `B` (départ vers MCO) | `transfer` |
//! | FR Core circonstances de sortie other than `B` (how the stay ended, not where the patient went) | `unknown` |
//! | no disposition (Synthea's inpatient stays) | `unknown`: not stated |
//!
//! `diagnoses` (ICD-10/CIM-10 upper-cased, SNOMED CT as sent, principal first, no
//! duplicates): `diagnosis[]` by `rank` when its Condition is contained or in the bundle
//! (a bare reference or a `display` is not a code: not used); then Conditions of the
//! bundle whose `encounter` is this stay (not problem-list items); then `reasonCode`.
//! Refuted, unconfirmed, provisional, differential and entered-in-error Conditions are
//! left out. ICD-10 systems: `http://hl7.org/fhir/sid/icd-10`, `…/icd-10-fr`,
//! `…/icd-10-cm`, `https://smt.esante.gouv.fr/terminologie-cim-10`,
//! `urn:oid:2.16.840.1.113883.6.3` and `.6.90`.
//!
//! Visit `kind` from `type` and `serviceType`: a `urn:parcours:encounter-kind` coding
//! gives it exactly; service-type 124/349 or SNOMED 394814009 → `gp-visit`; 165 or
//! 394579002 → `cardiology-visit`; 217 or 394594003 → `eye-exam`; 322/358 →
//! `nurse-visit`; 314 → `dental-visit`; anything else → `other`.
//!
//! ## Observation → `observation.recorded`
//!
//! | field | from |
//! |---|---|
//! | `observation_id` | `id`, else the first identifier value (`<id>/<loinc>` for a component) |
//! | `code` | the first `code.coding` with system `http://loinc.org` (or LOINC's OID `urn:oid:2.16.840.1.113883.6.1`, or the French NOS subset `https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc`) (none: not used, warning) |
//! | `status` | `status`, passed through (the engine acts on final, corrected, amended only) |
//! | `value`, `unit` | `valueQuantity.value`; unit = UCUM `code` when system is UCUM, else `unit`, canonical spelling when known (`mmol/l` → `mmol/L`); **pounds (`[lb_av]`, `lb`, `lbs`) become kg** |
//! | `comparator` | `valueQuantity.comparator` (`<`, `<=`, `>=`, `>`); also a `valueString` such as `>60` or `<3,5` (value and comparator read, text kept) |
//! | `value` | `valueInteger` |
//! | `value_text` | `valueString`; `valueCodeableConcept` (first coding's code, else text); `valueBoolean`; `valueTime`, `valueDateTime` — kept only when one word of at most 24 characters (`positive`, `1+`, a code, a number, a date: `parcours_core::events::is_result_text`); free text may name the patient: left out, with a warning at `value[x]` |
//! | (nothing, warning) | `valueRange`, `valueRatio`, `valueSampledData`, `valuePeriod` |
//! | `reference_low`, `reference_high` | the first normal `referenceRange` (without `appliesTo` first), converted to the value's unit |
//! | `abnormal_flag` | `interpretation` H, L, HH, LL, A, N (HU → HH, LU → LL, AA → A) |
//! | `occurred_at` | `effectiveDateTime`, `effectivePeriod.start`, `effectiveInstant`, `issued`, else the time of a DiagnosticReport of the bundle listing it in `result`; none: 422 |
//! | subject | `subject`, else the `subject` of a DiagnosticReport of the bundle listing it in `result` (results may leave it to their report); none: 422 |
//!
//! Other units are passed through as UCUM: the engine's units module converts analytes
//! (mg/dL ↔ g/L ↔ mmol/L, % ↔ mmol/mol) where a pathway compares values, so no
//! analyte-dependent conversion is guessed here. A panel with `component`s and no value
//! (blood pressure) gives one event per LOINC-coded component, not one for the panel.
//!
//! ## Condition → `diagnosis.recorded`
//!
//! One event per Condition: its ICD-10 code if it has one (upper case, with its dot, as
//! HL7 v2 diagnoses are written: a PMSI extract's `E119` is `E11.9`), else SNOMED CT
//! (`system` = `icd-10` or `snomed`), at `recordedDate` (optional in FHIR), else
//! FHIR STU3's `assertedDate`, `meta.lastUpdated`, the bundle's `timestamp` (an
//! information issue names the element used); without any of them it is refused (422 at
//! its `recordedDate`). A `recordedDate` of a year or a month only (`"2016-10"`, as
//! International Patient Summaries write it) counts as none: `meta.lastUpdated` or the
//! bundle's `timestamp` stands in, an information issue saying so. The onset is not
//! a recording time: a diabetes since 2015 would start its pathway then, every deadline
//! since overdue at once. Refuted, unconfirmed, provisional, differential and
//! entered-in-error Conditions give nothing. `clinicalStatus` and `verificationStatus`
//! may also be STU3's bare code (`"verificationStatus": "refuted"`), as older Synthea
//! exports write them in bundles labelled R4.
//!
//! ## Task and Communication (answers of care-team systems)
//!
//! | resource | status | event |
//! |---|---|---|
//! | Task with identifier `urn:parcours:task` (or a UUID `id`) | completed | `task.completed` at `executionPeriod.end`, else `lastModified`, else `meta.lastUpdated` |
//! | same | cancelled with `statusReason` `urn:parcours:task-status-reason#not-needed` (or the text "not needed", "non nécessaire", "inutile", "sans objet", …) | `task.not_needed` |
//! | same | cancelled otherwise, failed, rejected | `task.could_not_be_done` (in doubt, a person is asked) |
//! | same | entered-in-error | nothing (warning) |
//! | same | draft … on-hold (progress) | nothing (information) |
//! | Task with identifier `urn:parcours:handoff` | accepted, in-progress, completed | `handoff.accepted` |
//! | same | rejected, cancelled, failed | `handoff.declined` |
//! | Communication with identifier `urn:parcours:alert` | completed | `alert.acknowledged` at `received`, else `meta.lastUpdated` |
//!
//! `code` comes from the coding with system `urn:parcours:task-code`
//! (`urn:parcours:handoff-code`, `urn:parcours:alert-code` for `topic`).
//!
//! ## Patient
//!
//! A Patient with `deceasedDateTime` gives `patient.deceased` at that time (with
//! `deceasedBoolean` only: warning, no time to record). Its `link`s record merges
//! (FHIR R4's way: the retired record is sent `active: false` with a `replaced-by` link
//! to the surviving one, which may carry a `replaces` link back). Otherwise a Patient
//! only names the subject of other resources.
//!
//! | `link.type` | event |
//! |---|---|
//! | `replaced-by` | `identity.merged`: subject = the key of `link.other` (the survivor), `merged_subject` = this Patient's key (retired) |
//! | `replaces` | `identity.merged`: subject = this Patient's key, `merged_subject` = the key of `link.other` |
//! | `replaces`, when the Patient `link.other` keys to is in the bundle with `replaced-by` this one | nothing (information at `link[n].other`): one merge, recorded from the retired Patient's entry |
//! | `refer`, `seealso` | nothing (information at `link[n].type`): not a merge |
//! | any, `link.other` keyed to this Patient's own key | nothing (information at `link[n].other`) |
//! | missing, or not a LinkType code | refused (422 `required` / `code-invalid` at `link[n].type`) |
//!
//! `link.other` is keyed exactly as any patient reference (*Who the patient is*, above:
//! its `identifier`, a contained Patient or bundle entry it points to, its id on a
//! server); this Patient's key is chosen on it as for any Patient, its id on the source's
//! server (a lone resource, or an entry whose `fullUrl` is a server URL) last. A link
//! whose `other` is missing or cannot be keyed is refused (422 at `link[n].other`, or
//! the element below it at fault: `.reference`, `.identifier.system`), as is a Patient
//! replaced by two different Patients (422 `business-rule`: one survivor per retired
//! record). The merge happens at `meta.lastUpdated`, else the bundle's `timestamp` (an
//! information issue says so); neither: refused (422 at `meta.lastUpdated`) — the
//! mapping reads no clock, and a resend must give the same event. The engine then moves
//! the retired key's instances, tasks and timers to the survivor and makes the retired
//! key lead to it, as for an HL7 v2 ADT^A40 (`parcours_runtime::links`); a merge sent
//! again once committed (a new version of the retired Patient still `replaced-by` the
//! survivor) names two keys that already lead to one person and is answered as
//! already recorded.
//!
//! ## Bundles
//!
//! | `Bundle.type` | handling |
//! |---|---|
//! | `transaction` | every entry must be POST or PUT and map: one refused entry refuses the bundle (every issue listed, each at its `Bundle.entry[n]`); answer with [`Ingest::answer`], a `transaction-response`: a status per entry (`201 Created` for a POST recorded, `200 OK` for a PUT, one already recorded or one not used), and an OperationOutcome for every entry not simply recorded (not used, ignored by a pathway). All or nothing likewise once submitted: an event of any entry refused by the engine refuses the transaction (`422`, or `409 Conflict` for a resource version recorded before with other content), one OperationOutcome naming each entry not recorded and saying that what was recorded stays so |
//! | `batch` | each entry on its own: refused entries are reported in the `batch-response` (their status and OperationOutcome), the others give events, answered as in a transaction; an entry whose events the engine refused answers `422` (or `409`); an entry repeating an earlier entry's resource id and version is submitted once, answered as that one (`200 OK` for a creation: a resend), or `409` with other content |
//! | `collection`, `document`, `message`, `searchset` | like a transaction (one submission); in a searchset, `include` and `outcome` entries are context only |
//! | `history`, `*-response` | refused (422 `not-supported`) |
//!
//! Entries of R4 types parcours does not map (Claim, Immunization, DiagnosticReport,
//! Organization…) are not used: one `information` issue per type says how many. A
//! `resourceType` that is not an R4 type is refused (400 `code-invalid`). Entries may
//! reference each other by `fullUrl` (`urn:uuid:`) or `Type/id`. Events come out in
//! clinical-time order (a stable sort: ties keep the bundle's order).
//!
//! ## Times and ids
//!
//! A FHIR `dateTime` needs at least a day; a date is the start of that day, and a time
//! without an offset is read in the source's zone ([`Context::time_zone`], Europe/Paris
//! by default). Event ids are name-based UUIDs of (tenant, source, resource type,
//! resource id or `fullUrl`, `meta.versionId` or a digest of the content without
//! `meta`, part): a re-sent resource gives the same ids and is deduplicated downstream;
//! a new version gives new ids. `part` tells apart one resource's events (for a Patient's
//! merges `merge:<retired key>:<survivor key>`: keys only, never an identifier).
//! `source` is `fhir/<source name>`.
//!
//! # Outbound mapping
//!
//! FR Core (2.x) defines no Task or Communication profile, so resources are plain R4
//! (no `meta.profile`). See [`outbound`].
//!
//! | change | resource | status | notes |
//! |---|---|---|---|
//! | `TaskRequested` | Task | ready | `restriction.period.end` = due, `priority` = pathway priority (routine, urgent, asap, stat), `description` = title |
//! | `TaskReminded`, `TaskOverdue` | Task | ready | `businessStatus` reminded / overdue |
//! | `TaskEscalated` | Task | ready | `owner` = the role told, escalation priority |
//! | `TaskClosed` | Task | completed / cancelled (`statusReason` not-needed) / failed (could-not-be-done) | `executionPeriod.end` = when |
//! | `HandoffRequested` | Task | requested | code `urn:parcours:task-code#handoff` + `urn:parcours:handoff-code`, `requester` = giving role, `owner` = receiving role, `restriction.period.end` = accept by |
//! | `HandoffEscalated` | Task | requested | `owner` = the role told |
//! | `HandoffClosed` | Task | completed (accepted) / cancelled | |
//! | `AlertRaised` | Communication | in-progress | category `alert`, `priority` from severity (low routine, medium urgent, high asap, critical stat), `payload.contentString` = message, `recipient` = role |
//! | `AlertEscalated` | Communication | in-progress | `recipient` = the role told |
//! | `AlertClosed` | Communication | completed | |
//! | anything else | none | | |
//!
//! An open item read or searched over the FHIR API is its request's resource with where
//! it stands now: the business status, and once escalated the role told last as the
//! Task's `owner` or one more Communication `recipient` ([`show_escalation`]).
//!
//! Every resource has `id` = the task, handoff or alert id, identifiers
//! `urn:parcours:task` / `urn:parcours:handoff` / `urn:parcours:alert` and
//! `urn:parcours:effect` (the effect id), `for`/`subject` =
//! `Patient?identifier=urn:parcours:subject|<subject key>` (never a real identifier),
//! `basedOn` = `CarePlan?identifier=urn:parcours:instance|<instance>`, the cause event
//! (`urn:parcours:event`) as `reasonReference` / `about`, the rule as `reasonCode`
//! (`urn:parcours:rule`), `meta.versionId` = log position, `meta.lastUpdated` = the
//! effect's clinical time, and the tenant as a `meta.tag`.

pub mod r4;

mod content;
mod context;
mod inbound;
pub mod outbound;
mod outcome;

pub use content::check_content_type;
pub use context::{Context, DEFAULT_MAX_BODY_BYTES};
pub use inbound::{
    Answer, EntryOutcome, EventFate, Ingest, MAPPED_TYPES, Submission, ingest,
    names_another_resource, to_events,
};
pub use outbound::{EffectView, communication_resource, resource, show_escalation, task_resource};
pub use outcome::{HttpStatus, Issue, IssueSeverity, IssueType, Refusal, outcome_of};

/// Identifier system of the task ids parcours gives (`Task.identifier`).
pub const TASK_SYSTEM: &str = "urn:parcours:task";
/// Code system of pathway task codes (`Task.code`).
pub const TASK_CODE_SYSTEM: &str = "urn:parcours:task-code";
/// Code system of task status reasons (`not-needed`, `could-not-be-done`).
pub const TASK_STATUS_REASON_SYSTEM: &str = "urn:parcours:task-status-reason";
/// Identifier system of handoff ids.
pub const HANDOFF_SYSTEM: &str = "urn:parcours:handoff";
/// Code system of pathway handoff codes.
pub const HANDOFF_CODE_SYSTEM: &str = "urn:parcours:handoff-code";
/// Identifier system of alert ids (`Communication.identifier`).
pub const ALERT_SYSTEM: &str = "urn:parcours:alert";
/// Code system of pathway alert codes (`Communication.topic`).
pub const ALERT_CODE_SYSTEM: &str = "urn:parcours:alert-code";
/// Identifier system of pseudonymous subject keys (`Task.for`, `Communication.subject`).
pub const SUBJECT_SYSTEM: &str = "urn:parcours:subject";
/// Identifier and code system of care-team roles (`owner`, `performerType`, `recipient`).
pub const ROLE_SYSTEM: &str = "urn:parcours:role";
/// Identifier system of pathway instances (`basedOn`).
pub const INSTANCE_SYSTEM: &str = "urn:parcours:instance";
/// Identifier system of canonical event ids (the cause of an effect).
pub const EVENT_SYSTEM: &str = "urn:parcours:event";
/// Identifier system of effect ids (one per published message).
pub const EFFECT_SYSTEM: &str = "urn:parcours:effect";
/// Code system of pathway rule ids (`reasonCode`).
pub const RULE_SYSTEM: &str = "urn:parcours:rule";
/// Code system of the business status of tasks, handoffs and alerts.
pub const BUSINESS_STATUS_SYSTEM: &str = "urn:parcours:business-status";
/// Code system of tenants (`meta.tag`).
pub const TENANT_SYSTEM: &str = "urn:parcours:tenant";
/// Code system of encounter kinds a sender may state (`Encounter.type`).
pub const ENCOUNTER_KIND_SYSTEM: &str = "urn:parcours:encounter-kind";
