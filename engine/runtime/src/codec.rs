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

mod direct;

use parcours_core::events::Event;
use parcours_core::state::Recorded;
use parcours_store::{Codec, NewRecord, RecordView, StoredRecord};

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

/// The stream of where a key leads (`identity/<tenant>/<key>`): a local identifier's
/// link to a national identity, or a key's retirement by a merge. Its latest record's
/// subject is the key it resolves to — the national identity's, or the surviving key —
/// ([`crate::links`]). Keys only. One record per key (expected version 0): whichever of
/// a link and a retirement commits first.
pub fn identity_stream(tenant: &str, local_subject: &str) -> String {
    format!("identity/{tenant}/{local_subject}")
}

/// Record type of an identity link.
pub const IDENTITY_LINKED: &str = "identity.linked";
/// Layout version of identity link payloads (`{"local_subject", "subject"}`: keys only).
pub const IDENTITY_LINKED_VERSION: u16 = 1;

/// An identity link learned from the inbound `identity.linked` event `cause`, as the
/// record of its link stream: its id derives from the event's, its subject is the
/// national identity's key.
pub fn encode_identity_link(cause: &Event, local_subject: &str) -> NewRecord {
    identity_record(
        cause,
        "identity-link",
        IDENTITY_LINKED,
        IDENTITY_LINKED_VERSION,
        serde_json::json!({"local_subject": local_subject, "subject": cause.subject}),
    )
}

/// A record of an identity stream (a link, a retirement) written for the inbound event
/// `cause`: id `<prefix>:<cause id>`, `cause`'s tenant, subject (the key the stream's key
/// leads to) and clinical time.
fn identity_record(
    cause: &Event,
    prefix: &str,
    record_type: &str,
    type_version: u16,
    payload: serde_json::Value,
) -> NewRecord {
    NewRecord {
        id: format!("{prefix}:{}", cause.id),
        record_type: record_type.to_string(),
        type_version,
        codec: Codec::Json,
        tenant: cause.tenant.clone(),
        subject: cause.subject.clone(),
        occurred_at: cause.occurred_at,
        cause: Some(cause.id.clone()),
        payload: payload.to_string().into_bytes(),
    }
}

/// Record type of a key's retirement by a merge, in the retired key's identity stream
/// (the same type as the inbound event that retired it).
pub const IDENTITY_MERGED: &str = "identity.merged";
/// Layout version of retirement payloads (`{"merged_subject", "subject"}`: keys only).
pub const IDENTITY_MERGED_VERSION: u16 = 1;

/// A key's retirement by the inbound `identity.merged` event `cause`, as the record of
/// the retired key's identity stream: its id derives from the event's, its subject is
/// the surviving key, so the retired key leads there ([`crate::links`]).
pub fn encode_identity_retirement(cause: &Event, retired_subject: &str) -> NewRecord {
    identity_record(
        cause,
        "identity-merge",
        IDENTITY_MERGED,
        IDENTITY_MERGED_VERSION,
        serde_json::json!({"merged_subject": retired_subject, "subject": cause.subject}),
    )
}

/// Record type of an erasure: a patient's data key was destroyed.
pub const PATIENT_ERASED: &str = "patient.erased";
/// Layout version of erasure payloads.
pub const PATIENT_ERASED_VERSION: u16 = 1;

/// Whether a stream is an instance's (not inbound events, pathway versions, migrations,
/// erasures or identity streams: links and retirements).
pub fn is_instance(stream: &str) -> bool {
    !stream.starts_with("inbound/")
        && !stream.starts_with("pathway/")
        && !stream.starts_with("migration/")
        && !stream.starts_with("erasure/")
        && !stream.starts_with("identity/")
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

/// What decoding needs of a record.
struct Parts<'a> {
    id: &'a str,
    record_type: &'a str,
    type_version: u16,
    codec: Codec,
    payload: &'a [u8],
}

fn decode<'a, T: serde::Deserialize<'a>>(r: &'a StoredRecord, want: u16) -> Result<T, DecodeError> {
    let parts = Parts {
        id: &r.record.id,
        record_type: &r.record.record_type,
        type_version: r.record.type_version,
        codec: r.record.codec,
        payload: &r.record.payload,
    };
    decode_from(&parts, want)
}

fn decode_from<'a, T: serde::Deserialize<'a>>(r: &Parts<'a>, want: u16) -> Result<T, DecodeError> {
    let err = |reason: String| DecodeError {
        id: r.id.to_string(),
        record_type: r.record_type.to_string(),
        version: r.type_version,
        reason,
    };
    if r.codec != Codec::Json {
        return Err(err(format!("codec {:?} is not JSON", r.codec)));
    }
    if r.type_version != want {
        return Err(err(format!(
            "no decoder for layout version {}",
            r.type_version
        )));
    }
    serde_json::from_slice(r.payload).map_err(|e| err(e.to_string()))
}

/// Decode an inbound record.
pub fn decode_inbound(r: &StoredRecord) -> Result<Event, DecodeError> {
    decode(r, INBOUND_VERSION)
}

/// Read an inbound record's payload as `T`, a partial view of its [`Event`] that may
/// borrow from it (the indicators read a few fields this way), under the same checks of
/// codec and layout version as [`decode_inbound`].
pub fn decode_inbound_as<'a, T: serde::Deserialize<'a>>(
    r: &'a StoredRecord,
) -> Result<T, DecodeError> {
    decode(r, INBOUND_VERSION)
}

/// Decode an inbound record as a bulk reader sees it ([`parcours_store::EventStore::scan_all`]).
pub fn decode_inbound_view(r: &RecordView<'_>) -> Result<Event, DecodeError> {
    let parts = Parts {
        id: r.id,
        record_type: r.record_type,
        type_version: r.type_version,
        codec: r.codec,
        payload: r.payload,
    };
    decode_from(&parts, INBOUND_VERSION)
}

/// Decode an instance stream's record: the instance events of one decision, in order.
pub fn decode_instance(r: &StoredRecord) -> Result<Vec<Recorded>, DecodeError> {
    InstanceDecoder::default().decode(r)
}

/// Decodes instance streams' records one after the other (a reader of many records keeps
/// one): names repeated from one event to the next (rules, tracks, states, task codes,
/// roles, titles) are shared instead of allocated again.
#[derive(Debug, Default)]
pub struct InstanceDecoder {
    names: direct::Names,
}

impl InstanceDecoder {
    /// The instance events of one record, as [`decode_instance`].
    pub fn decode(&mut self, r: &StoredRecord) -> Result<Vec<Recorded>, DecodeError> {
        self.decode_parts(
            &r.record.id,
            &r.record.record_type,
            r.record.type_version,
            r.record.codec,
            &r.record.payload,
        )
    }

    /// The same from a record's parts.
    pub fn decode_parts(
        &mut self,
        id: &str,
        record_type: &str,
        type_version: u16,
        codec: Codec,
        payload: &[u8],
    ) -> Result<Vec<Recorded>, DecodeError> {
        let decision = record_type == DECISION;
        let want = if decision {
            DECISION_VERSION
        } else {
            INSTANCE_VERSION
        };
        if codec == Codec::Json && type_version == want {
            // The direct decoder, or the derived one when it gives up (its answer stands).
            let fast = if decision {
                direct::decision(payload, &mut self.names)
            } else {
                direct::single(payload, &mut self.names).map(|one| vec![one])
            };
            if let Some(events) = fast {
                return Ok(events);
            }
        }
        let parts = Parts {
            id,
            record_type,
            type_version,
            codec,
            payload,
        };
        if decision {
            decode_from(&parts, DECISION_VERSION)
        } else {
            decode_from(&parts, INSTANCE_VERSION).map(|one| vec![one])
        }
    }
}
