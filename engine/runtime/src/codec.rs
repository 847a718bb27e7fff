//! How events become log records and back: JSON payloads (auditable), with the record
//! type, a type version and the codec tag. A change of layout gets a new version and a
//! decoder for the old one.
//!
//! - an inbound event is one record (`encounter.discharged`, …): its CloudEvents JSON;
//! - what one inbound event did to one instance — a **decision** — is one record of type
//!   `instance.decision`: the JSON array of its instance events ([`Recorded`]), in order.
//!   A decision is atomic: it is stored, replayed and published whole. (Logs written by
//!   the first layout hold one record per instance event, type = the event's type; they
//!   still decode.)

use parcours_core::events::Event;
use parcours_core::state::Recorded;
use parcours_store::{Codec, NewRecord, StoredRecord};

/// Layout version of inbound event payloads (the CloudEvents JSON of [`Event`]).
pub const INBOUND_VERSION: u16 = 1;
/// Layout version of single instance-event records (the first layout: the JSON of one
/// [`Recorded`]); still decoded.
pub const INSTANCE_VERSION: u16 = 1;
/// Record type of a decision.
pub const DECISION: &str = "instance.decision";
/// Layout version of decision payloads (a JSON array of [`Recorded`]).
pub const DECISION_VERSION: u16 = 1;

/// The stream of a patient's inbound events.
pub fn inbound_stream(tenant: &str, subject: &str) -> String {
    format!("inbound/{tenant}/{subject}")
}

/// Whether a stream holds inbound events.
pub fn is_inbound(stream: &str) -> bool {
    stream.starts_with("inbound/")
}

/// The stream of a pathway's published versions.
pub fn pathway_stream(pathway_id: &str) -> String {
    format!("pathway/{pathway_id}")
}

/// The stream of a patient's erasures (`patient.erased` records: the subject key only).
pub fn erasure_stream(tenant: &str, subject: &str) -> String {
    format!("erasure/{tenant}/{subject}")
}

/// Record type of an erasure: a patient's data key was destroyed.
pub const PATIENT_ERASED: &str = "patient.erased";
/// Layout version of erasure payloads.
pub const PATIENT_ERASED_VERSION: u16 = 1;

/// Whether a stream is an instance's (not inbound events, pathway versions, migrations
/// or erasures).
pub fn is_instance(stream: &str) -> bool {
    !stream.starts_with("inbound/")
        && !stream.starts_with("pathway/")
        && !stream.starts_with("migration/")
        && !stream.starts_with("erasure/")
}

/// Why a stored record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("record {id} ({record_type} v{version}): {reason}")]
pub struct DecodeError {
    /// Record id.
    pub id: String,
    /// Record type.
    pub record_type: String,
    /// Type version.
    pub version: u16,
    /// What is wrong.
    pub reason: String,
}

/// An inbound event as a record.
pub fn encode_inbound(event: &Event) -> Result<NewRecord, serde_json::Error> {
    Ok(NewRecord {
        id: event.id.clone(),
        record_type: event.event_type().as_str().to_string(),
        type_version: INBOUND_VERSION,
        codec: Codec::Json,
        tenant: event.tenant.clone(),
        subject: event.subject.clone(),
        occurred_at: event.occurred_at,
        cause: None,
        payload: serde_json::to_vec(event)?,
    })
}

/// A decision (the instance events one inbound event caused in one instance) as a
/// record; its id is the first event's (unique: derived from instance and cause).
pub fn encode_decision(
    tenant: &str,
    subject: &str,
    decision: &[Recorded],
) -> Result<NewRecord, serde_json::Error> {
    let first = decision
        .first()
        .ok_or_else(|| <serde_json::Error as serde::ser::Error>::custom("an empty decision"))?;
    Ok(NewRecord {
        id: first.id.to_string(),
        record_type: DECISION.to_string(),
        type_version: DECISION_VERSION,
        codec: Codec::Json,
        tenant: tenant.to_string(),
        subject: subject.to_string(),
        occurred_at: first.at,
        cause: Some(first.cause.to_string()),
        payload: serde_json::to_vec(decision)?,
    })
}

fn decode<T: serde::de::DeserializeOwned>(r: &StoredRecord, want: u16) -> Result<T, DecodeError> {
    let err = |reason: String| DecodeError {
        id: r.record.id.clone(),
        record_type: r.record.record_type.clone(),
        version: r.record.type_version,
        reason,
    };
    if r.record.codec != Codec::Json {
        return Err(err(format!("codec {:?} is not JSON", r.record.codec)));
    }
    if r.record.type_version != want {
        return Err(err(format!(
            "no decoder for layout version {}",
            r.record.type_version
        )));
    }
    serde_json::from_slice(&r.record.payload).map_err(|e| err(e.to_string()))
}

/// Decode an inbound record.
pub fn decode_inbound(r: &StoredRecord) -> Result<Event, DecodeError> {
    decode(r, INBOUND_VERSION)
}

/// Decode an instance stream's record: the instance events of one decision, in order.
pub fn decode_instance(r: &StoredRecord) -> Result<Vec<Recorded>, DecodeError> {
    if r.record.record_type == DECISION {
        decode(r, DECISION_VERSION)
    } else {
        decode(r, INSTANCE_VERSION).map(|one| vec![one])
    }
}
