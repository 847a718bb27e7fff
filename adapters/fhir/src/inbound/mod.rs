//! Inbound: FHIR R4 JSON to canonical events (pure: no IO, no clock, no randomness).

pub(crate) mod identity;
pub(crate) mod json;

mod condition;
mod encounter;
mod observation;
mod patient;
mod task;
mod time;

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use parcours_core::{Event, EventData};
use serde::Deserialize;
use serde_json::Value;

use crate::context::Context;
use crate::outcome::{HttpStatus, Issue, IssueSeverity, IssueType, Refusal, outcome_of};
use crate::r4::{
    Bundle, BundleEntry, BundleRequest, BundleResponse, BundleSearch, OperationOutcome,
    known_resource_type,
};

/// Resource types parcours turns into events (a Patient only when it records a death or a
/// merge).
pub const MAPPED_TYPES: &[&str] = &[
    "Communication",
    "Condition",
    "Encounter",
    "Observation",
    "Patient",
    "Task",
];

/// What kind of request was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Submission {
    /// One resource.
    Resource,
    /// A `transaction` bundle: all entries or none.
    Transaction,
    /// A `batch` bundle: each entry on its own.
    Batch,
    /// A `collection`, `searchset`, `message` or `document` bundle: all entries or none.
    Collection,
}

/// The outcome of one entry of a batch or transaction bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryOutcome {
    /// The entry's index in `Bundle.entry`.
    pub index: usize,
    /// How many events it gave.
    pub events: usize,
    /// The ids of those events (what became of them: [`Ingest::answer`]).
    pub event_ids: Vec<String>,
    /// Those of `event_ids` an earlier entry gave already, with the same content (the
    /// same resource id and `meta.versionId` sent twice): not submitted again, answered
    /// as the earlier entry's, as a resend is (`200 OK`, not `201 Created`).
    pub repeated: Vec<String>,
    /// Those of `event_ids` an earlier entry gave already with other content (another
    /// patient, type or clinical time under the same resource id and version): not
    /// submitted, a version conflict (`409`), as the engine answers such a resend.
    pub conflicting: Vec<String>,
    /// Its `request.method` (`POST`, `PUT`).
    pub method: Option<String>,
    /// Why it was refused (batch only: in a transaction one refusal refuses all).
    pub refusal: Option<Refusal>,
    /// Warnings and information about it.
    pub issues: Vec<Issue>,
}

/// What became of one event of a request once submitted, for the answer
/// ([`Ingest::answer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventFate {
    /// Committed now, with what the pathways deliberately did not act on (value-free
    /// reasons), if anything.
    Recorded {
        /// The reasons, `<pathway>: <why>`.
        warnings: Vec<String>,
    },
    /// In the log already: the same resource sent again.
    Duplicate,
    /// Stored durably on its way to the engine that owns the patient, not committed yet.
    Queued,
    /// Refused by the engine (kept as a dead letter), with the reason: a pathway could
    /// not decide on it, its clinical time cannot be right.
    Refused {
        /// Why (value-free).
        reason: String,
    },
    /// Refused by the engine because its id is in the log for another event (kept as a
    /// dead letter): the resource was sent before under the same id and
    /// `meta.versionId` with other content (a version conflict).
    Conflict {
        /// Why (value-free).
        reason: String,
    },
    /// Not submitted: it answers a task, handoff or alert this tenant does not have
    /// (`404`).
    NotFound {
        /// Why (value-free).
        reason: String,
    },
    /// Not submitted: it answers an item closed already, otherwise than it says (`409`;
    /// an answer is final).
    Closed {
        /// Why (value-free).
        reason: String,
    },
}

/// The answer to a FHIR request: its HTTP status and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// A `transaction-response` or `batch-response` Bundle, or an OperationOutcome.
    pub body: Value,
}

/// How the events of one entry (or of a lone resource) fared, all told.
struct Fared {
    /// Reasons of the refused ones.
    refused: Vec<String>,
    /// Reasons of those refused for a version conflict.
    conflicts: Vec<String>,
    /// Reasons of those answering an item the tenant does not have.
    not_found: Vec<String>,
    /// Reasons of those answering an item closed already.
    closed: Vec<String>,
    /// Warnings of the recorded ones, once each.
    warnings: Vec<String>,
    recorded: bool,
    queued: bool,
    duplicate: bool,
}

impl Fared {
    /// How a bundle entry's events fared: those repeating an earlier entry's as that
    /// one's did, but already recorded (a resend); those conflicting with an earlier
    /// entry's as a version conflict.
    fn of_entry(e: &EntryOutcome, fates: &HashMap<String, EventFate>) -> Fared {
        let mut f = Fared::of(
            e.event_ids
                .iter()
                .filter(|id| !e.repeated.contains(id) && !e.conflicting.contains(id)),
            fates,
        );
        let again = Fared::of(&e.repeated, fates);
        f.duplicate |= again.kept_some();
        f.queued |= again.queued;
        for w in again.warnings {
            if !f.warnings.contains(&w) {
                f.warnings.push(w);
            }
        }
        f.refused.extend(again.refused);
        f.conflicts.extend(again.conflicts);
        f.not_found.extend(again.not_found);
        f.closed.extend(again.closed);
        if !e.conflicting.is_empty() {
            f.conflicts.push(
                "an earlier entry of this bundle has the same id and version with other content"
                    .to_owned(),
            );
        }
        f
    }

    fn of<'a>(
        ids: impl IntoIterator<Item = &'a String>,
        fates: &HashMap<String, EventFate>,
    ) -> Fared {
        let mut f = Fared {
            refused: Vec::new(),
            conflicts: Vec::new(),
            not_found: Vec::new(),
            closed: Vec::new(),
            warnings: Vec::new(),
            recorded: false,
            queued: false,
            duplicate: false,
        };
        let once = |list: &mut Vec<String>, text: &String| {
            if !list.contains(text) {
                list.push(text.clone());
            }
        };
        for id in ids {
            // An event nobody reported on is taken as recorded (the answer before
            // submission).
            match fates.get(id) {
                None => f.recorded = true,
                Some(EventFate::Recorded { warnings }) => {
                    f.recorded = true;
                    for w in warnings {
                        once(&mut f.warnings, w);
                    }
                }
                Some(EventFate::Duplicate) => f.duplicate = true,
                Some(EventFate::Queued) => f.queued = true,
                Some(EventFate::Refused { reason }) => once(&mut f.refused, reason),
                Some(EventFate::Conflict { reason }) => once(&mut f.conflicts, reason),
                Some(EventFate::NotFound { reason }) => once(&mut f.not_found, reason),
                Some(EventFate::Closed { reason }) => once(&mut f.closed, reason),
            }
        }
        f
    }

    /// The status of what was not recorded, if an event was refused: `422` when one was
    /// refused by a rule, else `409` (a version conflict, or an item closed already),
    /// else `404` (an item the tenant does not have).
    fn refusal_status(&self) -> Option<HttpStatusLine> {
        if !self.refused.is_empty() {
            Some(HttpStatusLine::Unprocessable)
        } else if !self.conflicts.is_empty() || !self.closed.is_empty() {
            Some(HttpStatusLine::Conflict)
        } else if !self.not_found.is_empty() {
            Some(HttpStatusLine::NotFound)
        } else {
            None
        }
    }

    /// Whether some event is in the log (recorded now or before) or on its way there.
    fn kept_some(&self) -> bool {
        self.recorded || self.queued || self.duplicate
    }

    /// The issues to add: an error per refusal, a warning per ignored input, at `at`
    /// (the entry's resource) when given.
    fn issues(&self, at: Option<&str>) -> Vec<Issue> {
        let place = |i: Issue| match at {
            Some(at) => i.at(at),
            None => i,
        };
        let mut out: Vec<Issue> = self
            .refused
            .iter()
            .map(|r| place(Issue::error(IssueType::BusinessRule, format!("not recorded: {r}"))))
            .chain(self.conflicts.iter().map(|r| {
                place(Issue::error(
                    IssueType::Conflict,
                    format!(
                        "not recorded, this resource's id and version were recorded before with other content (new content needs a new meta.versionId): {r}"
                    ),
                ))
            }))
            .chain(
                self.closed
                    .iter()
                    .map(|r| place(Issue::error(IssueType::Conflict, format!("not recorded: {r}")))),
            )
            .chain(
                self.not_found
                    .iter()
                    .map(|r| place(Issue::error(IssueType::NotFound, format!("not recorded: {r}")))),
            )
            .collect();
        if self.refusal_status().is_some() && self.kept_some() {
            out.push(place(Issue::information(
                IssueType::Informational,
                "its other events were recorded and stay recorded: sent again unchanged, they are recognised as already recorded",
            )));
        }
        out.extend(self.warnings.iter().map(|w| {
            place(Issue::warning(
                IssueType::BusinessRule,
                format!("recorded, but not acted on: {w}"),
            ))
        }));
        out
    }
}

/// The status of an answer refusing what the engine did not record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HttpStatusLine {
    /// 404: it answers what the tenant does not have.
    NotFound,
    /// 409: its id and version were recorded with other content, or it answers what is
    /// closed already.
    Conflict,
    /// 422: refused by a rule.
    Unprocessable,
}

impl HttpStatusLine {
    fn code(self) -> u16 {
        match self {
            HttpStatusLine::NotFound => 404,
            HttpStatusLine::Conflict => 409,
            HttpStatusLine::Unprocessable => 422,
        }
    }

    fn line(self) -> &'static str {
        match self {
            HttpStatusLine::NotFound => "404 Not Found",
            HttpStatusLine::Conflict => "409 Conflict",
            HttpStatusLine::Unprocessable => "422 Unprocessable Entity",
        }
    }
}

/// What an accepted request gave: events, and what was not used or looked wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Ingest {
    /// The canonical events, in clinical-time order (ties keep the request's order).
    pub events: Vec<Event>,
    /// Warnings and information about the request as a whole.
    pub issues: Vec<Issue>,
    /// Per-entry outcomes of a batch or transaction bundle (empty otherwise).
    pub entries: Vec<EntryOutcome>,
    /// What kind of request it was.
    pub submission: Submission,
}

impl Ingest {
    /// The OperationOutcome of the whole request (information when all went well).
    pub fn operation_outcome(&self) -> OperationOutcome {
        outcome_of(&self.issues)
    }

    /// The body to answer with when every event is recorded ([`Ingest::answer`] of a
    /// POST, no fate known).
    pub fn response(&self) -> Value {
        self.answer("POST", &HashMap::new()).body
    }

    /// The answer once the events were submitted: `fates` says what became of each (by
    /// event id; one not in it is taken as recorded), `method` is the request's
    /// (`POST` creates, `PUT` updates).
    ///
    /// An event the engine refused was not recorded, and the answer says so with an
    /// error status, as FHIR's REST rules want of an interaction that failed:
    /// `409 Conflict` when its id and `meta.versionId` were recorded before with other
    /// content (a version conflict, [`EventFate::Conflict`]), `422 Unprocessable Entity`
    /// when a rule refused it ([`EventFate::Refused`]; 422 wins when both happened).
    ///
    /// - A `batch`: 200 with a `batch-response` holding one `response` per entry, in
    ///   order: `201 Created` for a POST entry whose events were recorded (`200 OK` for a
    ///   PUT), `200 OK` for one already recorded or giving nothing to record, `202
    ///   Accepted` for one queued, the refusal's status for an entry refused as read,
    ///   `422` or `409` for one whose events the engine refused (any of them); every
    ///   entry not simply recorded has an OperationOutcome saying why (not used,
    ///   nothing to record, ignored by a pathway, not recorded). An entry repeating an
    ///   earlier one's resource id and version is answered on its own: with the same
    ///   content as that entry's outcome, but `200 OK` where it was created (a resend);
    ///   with other content `409` (a version conflict).
    /// - A `transaction`: all or nothing, as an entry refused as read refuses the whole
    ///   bundle: when the engine refused an event of any entry, the answer is `422` (or
    ///   `409`) with one OperationOutcome naming each entry not recorded (at
    ///   `Bundle.entry[n].resource`) and why. The entries the engine did record stay
    ///   recorded (the log is append-only; events are committed one by one, each by
    ///   the engine owning its patient): an information issue says so, and sent again
    ///   unchanged they are recognised as already recorded. Otherwise 200 with a
    ///   `transaction-response`, statuses as in a batch.
    /// - A resource (or a collection): `422` or `409` when an event of it was refused
    ///   (an information issue says when its other events were recorded), `201 Created`
    ///   when a POST recorded something, `202 Accepted` when queued, else 200; the body
    ///   is an OperationOutcome of every issue.
    pub fn answer(&self, method: &str, fates: &HashMap<String, EventFate>) -> Answer {
        let kind = match self.submission {
            Submission::Batch => "batch-response",
            Submission::Transaction => "transaction-response",
            Submission::Resource | Submission::Collection => {
                let fared = Fared::of(self.events.iter().map(|e| &e.id), fates);
                let mut issues = self.issues.clone();
                issues.extend(fared.issues(None));
                let status = if let Some(refused) = fared.refusal_status() {
                    refused.code()
                } else if fared.queued {
                    202
                } else if fared.recorded
                    && method == "POST"
                    && self.submission == Submission::Resource
                {
                    201
                } else {
                    200
                };
                return Answer {
                    status,
                    body: serde_json::to_value(outcome_of(&issues)).unwrap_or(Value::Null),
                };
            }
        };
        // A transaction's worst refusal, and whether any of its events was kept.
        let mut refused: Option<HttpStatusLine> = None;
        let mut kept_some = false;
        let mut merged = Vec::new();
        let entry = self
            .entries
            .iter()
            .map(|e| {
                let at = format!("Bundle.entry[{}].resource", e.index);
                let (status, outcome) = match &e.refusal {
                    Some(r) => (
                        r.status.status_line().to_owned(),
                        Some(r.operation_outcome()),
                    ),
                    None if e.event_ids.is_empty() => {
                        // Nothing to record: say why (not used, information only).
                        let issues = if e.issues.is_empty() {
                            vec![
                                Issue::information(
                                    IssueType::Informational,
                                    "nothing in this entry was recorded",
                                )
                                .at(&at),
                            ]
                        } else {
                            e.issues.clone()
                        };
                        ("200 OK".to_owned(), Some(outcome_of(&issues)))
                    }
                    None => {
                        let fared = Fared::of_entry(e, fates);
                        kept_some |= fared.kept_some();
                        refused = refused.max(fared.refusal_status());
                        let mut issues = e.issues.clone();
                        issues.extend(fared.issues(Some(&at)));
                        merged.extend(issues.iter().cloned());
                        let status = if let Some(refused) = fared.refusal_status() {
                            refused.line()
                        } else if fared.queued {
                            "202 Accepted"
                        } else if fared.recorded && e.method.as_deref() != Some("PUT") {
                            "201 Created"
                        } else {
                            "200 OK"
                        };
                        (
                            status.to_owned(),
                            (!issues.is_empty()).then(|| outcome_of(&issues)),
                        )
                    }
                };
                BundleEntry {
                    response: Some(BundleResponse { status, outcome }),
                    ..BundleEntry::default()
                }
            })
            .collect();
        if self.submission == Submission::Transaction
            && let Some(refused) = refused
        {
            if kept_some {
                merged.push(Issue::information(
                    IssueType::Informational,
                    "the transaction was not recorded whole: what the engine did not refuse was recorded and stays recorded; sent again unchanged, they are recognised as already recorded",
                ));
            }
            return Answer {
                status: refused.code(),
                body: serde_json::to_value(outcome_of(&merged)).unwrap_or(Value::Null),
            };
        }
        let bundle = Bundle {
            resource_type: "Bundle".to_owned(),
            type_: Some(kind.to_owned()),
            entry,
            ..Bundle::default()
        };
        Answer {
            status: 200,
            body: serde_json::to_value(bundle).unwrap_or(Value::Null),
        }
    }
}

/// Map a FHIR R4 JSON request body to canonical events: see the crate documentation
/// for what maps to what. Pure and deterministic: the same body and context always give
/// the same events with the same ids.
///
/// # Errors
///
/// A [`Refusal`] (with its OperationOutcome and HTTP status) when the body is not FHIR
/// JSON, breaks a FHIR rule, or cannot be turned into events: a transaction or
/// collection is refused whole if any entry is.
pub fn ingest(body: &[u8], ctx: &Context) -> Result<Ingest, Refusal> {
    let value = json::parse_body(body, ctx.max_body_bytes)?;
    let Some(object) = value.as_object() else {
        return Err(Refusal::bad_request(
            IssueType::Structure,
            "the body is not a json object: send one fhir resource",
        ));
    };
    let Some(name) = object.get("resourceType").and_then(Value::as_str) else {
        return Err(Refusal::bad_request(
            IssueType::Required,
            "the json object has no resourceType string",
        )
        .at("resourceType"));
    };
    let Some(type_name) = known_resource_type(name) else {
        return Err(Refusal::bad_request(
            IssueType::CodeInvalid,
            "resourceType is not a fhir r4 resource type",
        )
        .at("resourceType"));
    };
    if type_name == "Bundle" {
        return bundle(&value, ctx);
    }
    if !MAPPED_TYPES.contains(&type_name) {
        return Err(Refusal::unprocessable(
            IssueType::NotSupported,
            format!(
                "{type_name} resources are not processed by parcours: send {}, or a bundle of them",
                MAPPED_TYPES.join(", ")
            ),
        )
        .at(type_name));
    }
    let doc = Doc::default();
    let scope = Scope::new(ctx, &doc, &value, type_name, type_name.to_owned(), None);
    let mapped = map_resource(&scope)?;
    if mapped.events.is_empty() {
        let unused: Vec<Issue> = mapped
            .issues
            .iter()
            .filter(|i| i.severity == IssueSeverity::Warning)
            .map(|i| Issue {
                severity: IssueSeverity::Error,
                ..i.clone()
            })
            .collect();
        if !unused.is_empty() {
            return Err(Refusal {
                status: HttpStatus::UnprocessableEntity,
                issues: unused,
            });
        }
    }
    let mut events = mapped.events;
    events.sort_by_key(|e| e.occurred_at);
    Ok(Ingest {
        events,
        issues: mapped.issues,
        entries: Vec::new(),
        submission: Submission::Resource,
    })
}

/// [`ingest`], keeping the events only.
///
/// For a batch bundle these are the events of the accepted entries; use [`ingest`] to
/// answer with the per-entry outcomes.
///
/// # Errors
///
/// As [`ingest`].
pub fn to_events(body: &[u8], ctx: &Context) -> Result<Vec<Event>, Refusal> {
    ingest(body, ctx).map(|i| i.events)
}

/// What mapping one resource gave.
#[derive(Debug, Default)]
pub(crate) struct Mapped {
    pub(crate) events: Vec<Event>,
    pub(crate) issues: Vec<Issue>,
}

impl Mapped {
    /// Nothing to record, for this reason.
    pub(crate) fn skipped(issue: Issue) -> Mapped {
        Mapped {
            events: Vec::new(),
            issues: vec![issue],
        }
    }
}

/// One bundle entry as indexed for reference resolution.
#[derive(Debug, Default)]
pub(crate) struct DocEntry<'a> {
    pub(crate) full_url: Option<&'a str>,
    pub(crate) resource: Option<&'a Value>,
    pub(crate) type_name: Option<&'a str>,
}

/// The bundle around a resource (empty for a lone resource).
#[derive(Debug, Default)]
pub(crate) struct Doc<'a> {
    /// `Bundle.timestamp`: when the bundle was assembled (a last resort for a time).
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) entries: Vec<DocEntry<'a>>,
    pub(crate) by_full_url: HashMap<&'a str, usize>,
    pub(crate) by_type_id: HashMap<(String, String), usize>,
    /// The merges the bundle's retired Patients state (`link` `replaced-by`), as
    /// (survivor's key, retired key): read once, when a `replaces` link asks whether its
    /// merge is stated by the other side too (`patient::retirements`).
    pub(crate) retirements: std::cell::OnceCell<Vec<(String, String)>>,
}

/// One resource being mapped, with where it is and how its events are named.
#[derive(Debug)]
pub(crate) struct Scope<'a> {
    pub(crate) ctx: &'a Context,
    pub(crate) doc: &'a Doc<'a>,
    pub(crate) raw: &'a Value,
    pub(crate) type_name: &'static str,
    /// FHIRPath of the resource (`Observation`, `Bundle.entry[3].resource`).
    pub(crate) prefix: String,
    /// Its bundle entry, if any.
    pub(crate) entry: Option<usize>,
    key_id: String,
    key_version: String,
    /// Identity links met while naming its patient: (INS key, local identifier's key).
    links: std::cell::RefCell<Vec<(String, String)>>,
}

impl<'a> Scope<'a> {
    fn new(
        ctx: &'a Context,
        doc: &'a Doc<'a>,
        raw: &'a Value,
        type_name: &'static str,
        prefix: String,
        entry: Option<usize>,
    ) -> Scope<'a> {
        let key_id = raw
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                entry
                    .and_then(|i| doc.entries.get(i))
                    .and_then(|e| e.full_url)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let key_version = raw
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .map(|v| format!("v:{v}"))
            .unwrap_or_else(|| format!("h:{}", json::content_hash(raw)));
        Scope {
            ctx,
            doc,
            raw,
            type_name,
            prefix,
            entry,
            key_id,
            key_version,
            links: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A patient of this resource is named by a qualified INS (key `national`) and a
    /// local identifier (key `local`): the resource's events are preceded by
    /// `identity.linked` ([`map_resource`]).
    pub(crate) fn link(&self, national: String, local: String) {
        if national != local {
            let mut links = self.links.borrow_mut();
            if !links.iter().any(|(n, l)| *n == national && *l == local) {
                links.push((national, local));
            }
        }
    }

    /// The FHIRPath of an element of this resource (`rel` like `valueQuantity.unit`).
    pub(crate) fn at(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{rel}", self.prefix)
        }
    }

    /// The resource's logical id, if it has one.
    pub(crate) fn resource_id(&self) -> Option<&str> {
        self.raw.get("id").and_then(Value::as_str)
    }

    /// An event of this resource. `part` tells apart the events one resource gives
    /// (an observation's components); the id is a name-based UUID of (tenant, source,
    /// resource type, resource id, version or content digest, part), so a re-sent
    /// resource gives the same ids and is recognised downstream.
    pub(crate) fn event(
        &self,
        part: &str,
        subject: &str,
        occurred_at: Timestamp,
        data: EventData,
    ) -> Event {
        let mut name = Vec::with_capacity(256);
        for piece in [
            self.ctx.tenant.as_str(),
            self.ctx.source_name.as_str(),
            self.type_name,
            self.key_id.as_str(),
            self.key_version.as_str(),
            part,
        ] {
            name.extend_from_slice(&(piece.len() as u64).to_be_bytes());
            name.extend_from_slice(piece.as_bytes());
        }
        Event {
            id: uuid::Uuid::new_v5(&EVENT_NAMESPACE, &name).to_string(),
            tenant: self.ctx.tenant.clone(),
            source: self.ctx.source.clone(),
            subject: subject.to_owned(),
            occurred_at,
            recorded_at: None,
            data,
        }
    }

    /// Read a FHIR dateTime element of this resource (`rel` names it for refusals).
    pub(crate) fn time(&self, text: &str, rel: &str) -> Result<Timestamp, Refusal> {
        time::parse(text.trim(), &self.ctx.time_zone)
            .map_err(|e| Refusal::unprocessable(IssueType::Value, e.describe()).at(self.at(rel)))
    }
}

/// Namespace of event ids made by this adapter.
const EVENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8a3c_51e2_93d4_4f6b_a1c7_0e5b_7d2f_6c18);

/// Map one resource; the identity links met naming its patients come first, at its
/// earliest event's clinical time (none if it gave no event).
fn map_resource(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let mut mapped = map_one(scope)?;
    let links = std::mem::take(&mut *scope.links.borrow_mut());
    if let Some(at) = mapped.events.iter().map(|e| e.occurred_at).min() {
        let linked: Vec<Event> = links
            .into_iter()
            .map(|(national, local)| {
                scope.event(
                    &format!("identity-link:{local}"),
                    &national,
                    at,
                    EventData::IdentityLinked(parcours_core::events::data::IdentityLinked {
                        local_subject: local,
                    }),
                )
            })
            .collect();
        mapped.events.splice(0..0, linked);
    }
    Ok(mapped)
}

fn map_one(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    match scope.type_name {
        "Observation" => observation::map(scope),
        "Encounter" => encounter::map(scope),
        "Condition" => condition::map(scope),
        "Task" => task::map_task(scope),
        "Communication" => task::map_communication(scope),
        "Patient" => patient::map(scope),
        other => Ok(Mapped::skipped(Issue::information(
            IssueType::NotSupported,
            format!("{other} resources are not used by parcours"),
        ))),
    }
}

/// The part of a Bundle parsed up front: entries without their resources (those are
/// read one by one, by type, from the JSON).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleIn {
    #[serde(rename = "type", default)]
    type_: Option<String>,
    #[serde(default)]
    entry: Vec<EntryIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryIn {
    /// Read to check its type; the index uses the raw JSON.
    #[serde(default)]
    #[allow(dead_code)]
    full_url: Option<String>,
    #[serde(default)]
    resource: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    request: Option<BundleRequest>,
    #[serde(default)]
    search: Option<BundleSearch>,
}

/// What one entry gave.
enum EntryResult {
    Mapped(Mapped),
    /// A known resource type parcours does not use.
    Unused(&'static str),
    /// A search `include` or `outcome`: context, not content.
    Context,
}

fn bundle(value: &Value, ctx: &Context) -> Result<Ingest, Refusal> {
    let parsed: BundleIn = json::typed(value, "Bundle")?;
    let Some(kind) = parsed.type_.as_deref() else {
        return Err(
            Refusal::bad_request(IssueType::Required, "Bundle.type is required").at("Bundle.type"),
        );
    };
    let submission = match kind {
        "transaction" => Submission::Transaction,
        "batch" => Submission::Batch,
        "collection" | "searchset" | "message" | "document" => Submission::Collection,
        "history" | "transaction-response" | "batch-response" => {
            return Err(Refusal::unprocessable(
                IssueType::NotSupported,
                "history and response bundles are not processed: send a transaction, batch, collection, searchset, message or document bundle",
            )
            .at("Bundle.type"));
        }
        _ => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Bundle.type is not a code of the BundleType value set",
            )
            .at("Bundle.type"));
        }
    };
    let raw_entries: &[Value] = value
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut doc = Doc {
        timestamp: value.get("timestamp").and_then(Value::as_str),
        ..Doc::default()
    };
    for (i, raw) in raw_entries.iter().enumerate() {
        let resource = raw.get("resource").filter(|r| r.is_object());
        let full_url = raw.get("fullUrl").and_then(Value::as_str);
        let type_name = resource
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str);
        if let Some(url) = full_url
            && doc.by_full_url.insert(url, i).is_some()
        {
            return Err(Refusal::bad_request(
                IssueType::Invariant,
                "two entries have the same fullUrl (bdl-7)",
            )
            .at(format!("Bundle.entry[{i}].fullUrl")));
        }
        if let (Some(t), Some(id)) = (
            type_name,
            resource.and_then(|r| r.get("id")).and_then(Value::as_str),
        ) {
            doc.by_type_id
                .entry((t.to_owned(), id.to_owned()))
                .or_insert(i);
        }
        doc.entries.push(DocEntry {
            full_url,
            resource,
            type_name,
        });
    }
    let mut results: Vec<Result<EntryResult, Refusal>> = Vec::with_capacity(parsed.entry.len());
    for (i, entry) in parsed.entry.iter().enumerate() {
        results.push(bundle_entry(ctx, &doc, i, entry, submission));
    }

    let mut events: Vec<Event> = Vec::new();
    // Event id → its place in `events`.
    let mut given: HashMap<String, usize> = HashMap::new();
    let mut issues = Vec::new();
    let mut entries = Vec::new();
    let mut unused: BTreeMap<&'static str, usize> = BTreeMap::new();
    if submission != Submission::Batch {
        let refusals: Vec<Refusal> = results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        if let Some(refusal) = Refusal::merge(refusals) {
            return Err(refusal);
        }
    }
    for (index, result) in results.into_iter().enumerate() {
        let mut outcome = EntryOutcome {
            index,
            events: 0,
            event_ids: Vec::new(),
            repeated: Vec::new(),
            conflicting: Vec::new(),
            method: parsed
                .entry
                .get(index)
                .and_then(|e| e.request.as_ref())
                .and_then(|r| r.method.clone()),
            refusal: None,
            issues: Vec::new(),
        };
        let unused_entry = matches!(result, Ok(EntryResult::Unused(_)));
        match result {
            Ok(EntryResult::Mapped(mapped)) => {
                outcome.events = mapped.events.len();
                outcome.event_ids = mapped.events.iter().map(|e| e.id.clone()).collect();
                for event in mapped.events {
                    // An event an earlier entry gave (the same resource id and version
                    // sent twice) is submitted once: the engine answers one event per id.
                    match given.get(&event.id) {
                        None => {
                            given.insert(event.id.clone(), events.len());
                            events.push(event);
                        }
                        Some(&at) if same_event(&events[at], &event) => {
                            outcome.repeated.push(event.id)
                        }
                        Some(_) => outcome.conflicting.push(event.id),
                    }
                }
                outcome.issues = mapped.issues;
            }
            Ok(EntryResult::Unused(type_name)) => {
                *unused.entry(type_name).or_default() += 1;
                if matches!(submission, Submission::Batch | Submission::Transaction) {
                    outcome
                        .issues
                        .push(unused_issue(type_name, 1).at(format!("Bundle.entry[{index}]")));
                }
            }
            Ok(EntryResult::Context) => {}
            Err(refusal) => outcome.refusal = Some(refusal),
        }
        // A transaction's unused entries are said once per type for the whole request
        // (below) and at each entry's response.
        if submission != Submission::Batch {
            issues.extend(outcome.issues.iter().filter(|_| !unused_entry).cloned());
        }
        if matches!(submission, Submission::Batch | Submission::Transaction) {
            entries.push(outcome);
        }
    }
    if submission != Submission::Batch {
        // One line per unused type rather than one per entry.
        issues.extend(unused.iter().map(|(t, n)| unused_issue(t, *n)));
    }
    events.sort_by_key(|e| e.occurred_at);
    Ok(Ingest {
        events,
        issues,
        entries,
        submission,
    })
}

/// Whether two events under one id are the same event, as the engine tells a resend from
/// an id reused: the same tenant, patient, type and clinical time.
fn same_event(a: &Event, b: &Event) -> bool {
    a.tenant == b.tenant
        && a.subject == b.subject
        && a.event_type() == b.event_type()
        && a.occurred_at == b.occurred_at
}

fn unused_issue(type_name: &str, count: usize) -> Issue {
    let what = if count == 1 {
        format!("1 {type_name} entry was not used")
    } else {
        format!("{count} {type_name} entries were not used")
    };
    Issue::information(
        IssueType::NotSupported,
        format!("{what}: parcours maps {}", MAPPED_TYPES.join(", ")),
    )
}

/// The resource type and id a `PUT` request's URL names (`Task/123`, `Task/123?…`,
/// `https://…/Task/123`), when it names one.
fn update_target(url: &str) -> Option<(&str, &str)> {
    let path = url.split(['?', '#']).next()?;
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let id = parts.next().filter(|i| !i.is_empty())?;
    let ty = parts.next().filter(|t| known_resource_type(t).is_some())?;
    Some((ty, id))
}

/// What in a resource names another resource than the one of id `id` (as a FHIR update
/// at `…/Type/id` must not): its `id`, or, for a Task, an identifier of parcours' task or
/// handoff systems. Named by where it is (`Task.id`, `Task.identifier`), never by value.
pub fn names_another_resource(resource: &Value, id: &str) -> Option<String> {
    let ty = resource.get("resourceType").and_then(Value::as_str)?;
    let ty = known_resource_type(ty)?;
    if let Some(own) = resource.get("id").and_then(Value::as_str)
        && own != id
    {
        return Some(format!("{ty}.id"));
    }
    (ty == "Task")
        .then_some(())
        .and_then(|()| resource.get("identifier")?.as_array())?
        .iter()
        .filter(|i| {
            matches!(
                i.get("system").and_then(Value::as_str),
                Some(crate::TASK_SYSTEM | crate::HANDOFF_SYSTEM)
            )
        })
        .filter_map(|i| i.get("value").and_then(Value::as_str))
        .any(|value| value != id)
        .then(|| "Task.identifier".to_owned())
}

fn bundle_entry(
    ctx: &Context,
    doc: &Doc<'_>,
    i: usize,
    entry: &EntryIn,
    submission: Submission,
) -> Result<EntryResult, Refusal> {
    let at = format!("Bundle.entry[{i}]");
    if matches!(submission, Submission::Transaction | Submission::Batch) {
        let Some(request) = &entry.request else {
            return Err(Refusal::bad_request(
                IssueType::Required,
                "entries of a transaction or batch need a request (bdl-3)",
            )
            .at(format!("{at}.request")));
        };
        match request.method.as_deref() {
            Some("POST" | "PUT") => {}
            Some("GET" | "HEAD" | "DELETE" | "PATCH") => {
                return Err(Refusal::unprocessable(
                    IssueType::NotSupported,
                    "only POST and PUT entries are processed: parcours records facts, it does not read, patch or delete resources (send the resource with status entered-in-error to withdraw it)",
                )
                .at(format!("{at}.request.method")));
            }
            Some(_) => {
                return Err(Refusal::bad_request(
                    IssueType::CodeInvalid,
                    "request.method is not a code of the HTTPVerb value set",
                )
                .at(format!("{at}.request.method")));
            }
            None => {
                return Err(Refusal::bad_request(
                    IssueType::Required,
                    "request.method is required",
                )
                .at(format!("{at}.request.method")));
            }
        }
    }
    // FHIR's update: `PUT Type/id` updates that resource; a resource of another type, or
    // naming another task, would be applied to what the URL does not name.
    if let Some(request) = &entry.request
        && request.method.as_deref() == Some("PUT")
        && let Some((url_type, url_id)) = request.url.as_deref().and_then(update_target)
        && let Some(raw) = doc.entries.get(i).and_then(|e| e.resource)
    {
        if raw.get("resourceType").and_then(Value::as_str) != Some(url_type) {
            return Err(Refusal::bad_request(
                IssueType::Invalid,
                format!("the resource is not the {url_type} its request.url names"),
            )
            .at(format!("{at}.resource.resourceType")));
        }
        if let Some(other) = names_another_resource(raw, url_id) {
            return Err(Refusal::bad_request(
                IssueType::Invalid,
                format!("`{other}` is not the one its request.url names: PUT each resource at its own id"),
            )
            .at(format!("{at}.resource.{}", other.trim_start_matches(&format!("{url_type}.")))));
        }
    }
    if submission == Submission::Collection
        && let Some(mode) = entry.search.as_ref().and_then(|s| s.mode.as_deref())
        && mode != "match"
    {
        return Ok(EntryResult::Context);
    }
    let (Some(_), Some(raw)) = (&entry.resource, doc.entries.get(i).and_then(|e| e.resource))
    else {
        return Err(Refusal::bad_request(
            IssueType::Required,
            "the entry has no resource (a json object)",
        )
        .at(format!("{at}.resource")));
    };
    let Some(name) = raw.get("resourceType").and_then(Value::as_str) else {
        return Err(Refusal::bad_request(
            IssueType::Required,
            "the resource has no resourceType string",
        )
        .at(format!("{at}.resource.resourceType")));
    };
    let Some(type_name) = known_resource_type(name) else {
        return Err(Refusal::bad_request(
            IssueType::CodeInvalid,
            "resourceType is not a fhir r4 resource type",
        )
        .at(format!("{at}.resource.resourceType")));
    };
    if !MAPPED_TYPES.contains(&type_name) {
        return Ok(EntryResult::Unused(type_name));
    }
    let scope = Scope::new(ctx, doc, raw, type_name, format!("{at}.resource"), Some(i));
    map_resource(&scope).map(EntryResult::Mapped)
}

/// Codes of the ICD-10 code systems parcours reads diagnoses from.
pub(crate) const ICD10_SYSTEMS: &[&str] = &[
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-fr",
    "http://hl7.org/fhir/sid/icd-10-cm",
    // The German modification (a CPTS on the border): the same WHO categories.
    "http://fhir.de/CodeSystem/bfarm/icd-10-gm",
    "http://fhir.de/CodeSystem/dimdi/icd-10-gm",
    "https://smt.esante.gouv.fr/terminologie-cim-10",
    "https://smt.esante.gouv.fr/terminologie-cim-10/",
    "urn:oid:2.16.840.1.113883.6.3",
    "urn:oid:2.16.840.1.113883.6.90",
];

/// SNOMED CT.
pub(crate) const SNOMED: &str = "http://snomed.info/sct";

/// A diagnosis code from a coding, if its system is ICD-10 (CIM-10) or SNOMED CT:
/// trimmed, ICD-10 written as HL7 v2 DG1 codes are (upper case, with its dot:
/// [`parcours_core::events::normalise_icd10`]).
pub(crate) fn diagnosis_code(coding: &crate::r4::Coding) -> Option<(String, &'static str)> {
    let system = coding.system.as_deref()?.trim();
    let code = coding.code.as_deref()?.trim();
    if code.is_empty() || code.len() > 32 {
        return None;
    }
    if ICD10_SYSTEMS.contains(&system) {
        Some((parcours_core::events::normalise_icd10(code), "icd-10"))
    } else if system == SNOMED {
        Some((code.to_owned(), "snomed"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_types_are_r4_types() {
        for t in MAPPED_TYPES {
            assert_eq!(known_resource_type(t), Some(*t));
        }
    }
}
