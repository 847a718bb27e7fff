//! Publishing: effects to `PARCOURS_OUT` (the [`NatsBus`]), inbound events to
//! `PARCOURS_IN` ([`Nats::publish_inbound`]), dead letters to `PARCOURS_DLQ`.
//!
//! Every publish carries `Nats-Msg-Id`, so a retry within the stream's duplicate window
//! stores nothing new. Publishes are pipelined: a batch is sent, then its
//! acknowledgements are awaited, with at most `publish_in_flight` outstanding.

use std::sync::atomic::AtomicU64;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use parcours_core::events::Event;
use parcours_core::state::EffectKind;
use parcours_runtime::{Bus, BusError, Effect, Refused};

use crate::connection::{Nats, NatsStats};
use crate::error::PublishError;
use crate::subject::{dlq_subject, effect_subject, effect_token, inbound_subject};

/// Header: the effect's log position (increasing for each patient; consumers can order a
/// patient's effects by it).
pub const HEADER_POSITION: &str = "Parcours-Position";
/// Header: `task`, `alert` or `handoff`.
pub const HEADER_KIND: &str = "Parcours-Kind";
/// Header of a dead letter: why it could not be processed.
pub const HEADER_REASON: &str = "Parcours-Reason";
/// Header of a dead letter: `decode` (not a valid event), `refused` (the engine refused
/// it), `attempts` (it kept failing), `effect` (an effect that cannot be routed), `fhir`
/// (a FHIR message that cannot be mapped), `routing` (on a subject no partition's
/// consumer takes).
pub const HEADER_STAGE: &str = "Parcours-Stage";
/// Header of a dead letter: the subject it was published on.
pub const HEADER_ORIGIN_SUBJECT: &str = "Parcours-Origin-Subject";
/// Header of a dead letter: its sequence in `PARCOURS_IN`.
pub const HEADER_ORIGIN_SEQUENCE: &str = "Parcours-Origin-Sequence";
/// Header of a dead letter: how many times it was delivered.
pub const HEADER_DELIVERIES: &str = "Parcours-Deliveries";
/// Header of a dead letter: the event id, when the payload decoded.
pub const HEADER_EVENT_ID: &str = "Parcours-Event-Id";

/// Header of an inbound event forwarded by an engine's HTTP or MLLP front (scale-out):
/// the core NATS subject (the forwarder's `_INBOX.…`) where the partition's owner, once
/// it committed the event, publishes what it said of it ([`OwnerReply`]). Optional: a
/// message without it gets no reply, and an owner of an earlier release sends none (the
/// forwarder then learns the commit from the log alone, without warnings).
pub const HEADER_REPLY: &str = "Parcours-Reply";

/// What the owner of a partition tells a forwarder ([`HEADER_REPLY`]) of an event it
/// committed or refused, as JSON. Fields may be added (a reader ignores those it does not
/// know); an absent `warnings` is none, an absent `refused` a commit (an owner of an
/// earlier release replies to commits only).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerReply {
    /// The event's id.
    pub id: String,
    /// What its pathways deliberately did not act on, and why (value-free reasons, as
    /// `IngestOutcome::Committed` gives them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The owner refused the event (it went to the dead-letter subject): why, as the
    /// engine said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<OwnerRefusal>,
}

/// Why the owner refused an event ([`OwnerReply::refused`]): the [`Refused`] it got from
/// its engine, whose reasons name fields, rules and ids, never a value sent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerRefusal {
    /// `decide`, `invalid` or `id_reused` ([`Refused`]'s variants); a kind this release
    /// does not know reads as `invalid` (refused, 422).
    pub kind: String,
    /// The engine's reason.
    pub reason: String,
}

impl From<&Refused> for OwnerRefusal {
    fn from(refused: &Refused) -> Self {
        let (kind, reason) = match refused {
            Refused::Decide(r) => ("decide", r),
            Refused::Invalid(r) => ("invalid", r),
            Refused::IdReused(r) => ("id_reused", r),
        };
        OwnerRefusal {
            kind: kind.to_string(),
            reason: reason.clone(),
        }
    }
}

impl From<OwnerRefusal> for Refused {
    fn from(refusal: OwnerRefusal) -> Self {
        match refusal.kind.as_str() {
            "decide" => Refused::Decide(refusal.reason),
            "id_reused" => Refused::IdReused(refusal.reason),
            _ => Refused::Invalid(refusal.reason),
        }
    }
}

/// Longest reason kept in a header.
pub(crate) const MAX_REASON: usize = 1024;

/// A header value from any text: control characters become spaces (NATS headers cannot
/// hold CR or LF), and it is cut at `MAX_REASON` bytes.
pub(crate) fn header_text(s: &str) -> async_nats::HeaderValue {
    let mut clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    clean.parse().unwrap_or_default()
}

/// A canonical event as the CloudEvents JSON (structured mode) parcours publishes: the
/// event with `specversion` `1.0`, the attribute CloudEvents requires (the log stores
/// events without it; readers ignore it).
pub(crate) fn cloudevent_json(e: &Event) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(e)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("specversion".into(), serde_json::Value::from("1.0"));
    }
    serde_json::to_vec(&v)
}

/// One message to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// Publish in order, awaiting at most `in_flight` acknowledgements at once; the result of
/// each message, in order.
pub(crate) async fn publish_pipelined(
    nats: &Nats,
    messages: Vec<Outgoing>,
) -> Vec<Result<PublishAck, JsPublishError>> {
    let js = nats.jetstream();
    let in_flight = nats.config().publish_in_flight.max(1);
    let mut results = Vec::with_capacity(messages.len());
    let mut pending: FuturesOrdered<BoxFuture<'static, Result<PublishAck, JsPublishError>>> =
        FuturesOrdered::new();
    for m in messages {
        while pending.len() >= in_flight {
            if let Some(r) = pending.next().await {
                results.push(r);
            }
        }
        let publish = PublishMessage::build()
            .payload(m.payload)
            .headers(m.headers);
        match js.send_publish(m.subject, publish).await {
            Ok(ack) => pending.push_back(Box::pin(ack.into_future())),
            Err(e) => pending.push_back(Box::pin(async move { Err(e) })),
        }
    }
    while let Some(r) = pending.next().await {
        results.push(r);
    }
    results
}

/// What [`Nats::publish_inbound`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Sequence of the message in `PARCOURS_IN`.
    pub sequence: u64,
    /// The id was already published within the duplicate window: nothing new stored.
    pub duplicate: bool,
}

fn count_ok<T, E>(results: &[Result<T, E>], counter: &AtomicU64) {
    NatsStats::add(counter, results.iter().filter(|r| r.is_ok()).count());
}

impl Nats {
    /// Publish an inbound event to `parcours.<tenant>.in.p<NN>.<type>` with
    /// `Nats-Msg-Id` = its id; returns once JetStream has stored it (what the HTTP API
    /// and the MLLP listener wait for before answering). The envelope is checked as the
    /// HTTP API checks it.
    pub async fn publish_inbound(&self, event: &Event) -> Result<Published, PublishError> {
        self.publish_inbound_all(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or_else(|| Err(PublishError::Unavailable("nothing was published".into())))
    }

    /// Publish several inbound events, pipelined; the result of each, in order.
    pub async fn publish_inbound_all(
        &self,
        events: &[Event],
    ) -> Vec<Result<Published, PublishError>> {
        self.publish_inbound_replying(events, None).await
    }

    /// [`Nats::publish_inbound_all`], asking the owner of each event's partition to
    /// publish an [`OwnerReply`] on `reply` once it committed it ([`HEADER_REPLY`]).
    pub async fn publish_inbound_replying(
        &self,
        events: &[Event],
        reply: Option<&str>,
    ) -> Vec<Result<Published, PublishError>> {
        let partitions = self.config().partitions;
        let mut slots: Vec<Option<Result<Published, PublishError>>> = Vec::new();
        let mut messages = Vec::new();
        for e in events {
            let subject = match inbound_subject(e, partitions) {
                Ok(s) => s,
                Err(reason) => {
                    slots.push(Some(Err(PublishError::Invalid(reason))));
                    continue;
                }
            };
            let payload = match cloudevent_json(e) {
                Ok(p) => Bytes::from(p),
                Err(err) => {
                    slots.push(Some(Err(PublishError::Invalid(format!(
                        "the event does not serialise: {err}"
                    )))));
                    continue;
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, header_text(&e.id));
            headers.insert("Content-Type", "application/cloudevents+json");
            if let Some(reply) = reply {
                headers.insert(HEADER_REPLY, reply);
            }
            messages.push(Outgoing {
                subject,
                headers,
                payload,
            });
            slots.push(None);
        }
        let mut acks = publish_pipelined(self, messages).await.into_iter();
        let results: Vec<Result<Published, PublishError>> = slots
            .into_iter()
            .map(|slot| match slot {
                Some(refused) => refused,
                None => match acks.next() {
                    Some(Ok(ack)) => Ok(Published {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    }),
                    Some(Err(e)) if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded) => {
                        Err(PublishError::Invalid(e.to_string()))
                    }
                    Some(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
                    None => Err(PublishError::Unavailable("no acknowledgement".into())),
                },
            })
            .collect();
        count_ok(&results, &self.stats().inbound_published);
        results
    }
}

/// The effect bus over JetStream: each effect goes to `parcours.<tenant>.out.<kind>` with
/// `Nats-Msg-Id` = the effect id, so the relay's retries and a restart between publish
/// and checkpoint store each effect once (within `out_duplicate_window`).
#[derive(Clone, Debug)]
pub struct NatsBus {
    nats: Nats,
}

impl NatsBus {
    /// A bus on this connection.
    pub fn new(nats: Nats) -> NatsBus {
        NatsBus { nats }
    }

    fn message(effect: &Effect) -> Result<Option<Outgoing>, BusError> {
        let payload = serde_json::to_vec(effect)
            .map_err(|e| BusError(format!("effect {} does not serialise: {e}", effect.id)))?;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, header_text(&effect.id));
        headers.insert(HEADER_POSITION, effect.position.to_string());
        headers.insert("Content-Type", "application/json");
        let Some(kind) = effect_token(effect.kind) else {
            // Timer changes are the engine's business; the relay never hands them over.
            return Ok(None);
        };
        headers.insert(HEADER_KIND, kind);
        let subject = match effect_subject(&effect.tenant, effect.kind) {
            Ok(s) => s,
            Err(reason) => {
                // Cannot happen for events that came through the checked paths; keep it
                // visible rather than block every later effect behind it.
                tracing::error!(effect = %effect.id, "effect with an invalid tenant dead-lettered");
                headers.insert(NATS_MESSAGE_ID, header_text(&format!("dlq-{}", effect.id)));
                headers.insert(HEADER_REASON, header_text(&reason));
                headers.insert(HEADER_STAGE, "effect");
                dlq_subject(None)
            }
        };
        Ok(Some(Outgoing {
            subject,
            headers,
            payload: Bytes::from(payload),
        }))
    }
}

impl Bus for NatsBus {
    async fn publish(&self, effects: &[Effect]) -> Result<(), BusError> {
        let mut messages = Vec::with_capacity(effects.len());
        for e in effects {
            if e.kind == EffectKind::Timer {
                continue;
            }
            if let Some(m) = NatsBus::message(e)? {
                messages.push(m);
            }
        }
        let n = messages.len();
        let results = publish_pipelined(&self.nats, messages).await;
        count_ok(&results, &self.nats.stats().effects_published);
        let failed: Vec<&JsPublishError> =
            results.iter().filter_map(|r| r.as_ref().err()).collect();
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(BusError(format!(
                "{} of {n} effects not acknowledged by jetstream: {first}",
                failed.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_events_are_cloudevents_and_read_back_the_same() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "id": "adt-1", "tenant": "cpts-a", "source": "chu", "subject": "p-1",
            "occurredat": "2026-03-02T09:00:00Z", "type": "encounter.discharged",
            "data": {"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}
        }))
        .expect("event");
        let bytes = cloudevent_json(&e).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(Event::from_json_slice(&bytes).expect("read back"), e);
    }

    #[test]
    fn header_text_is_always_a_valid_header_value() {
        assert_eq!(header_text("a\r\nb").as_str(), "a  b");
        let long = "é".repeat(2000);
        let v = header_text(&long);
        assert!(v.as_str().len() <= MAX_REASON);
        assert!(v.as_str().chars().all(|c| c == 'é'));
    }

    /// The reply's JSON both ways: an owner of an earlier release sends `{id, warnings}`
    /// (read as a commit); a front of an earlier release reads a refusal's reply as the
    /// struct it knew, ignoring `refused` (and any field added later); each kind of
    /// refusal comes back as itself, a kind not known as `invalid`.
    #[test]
    fn the_owners_reply_reads_across_releases() {
        let old: OwnerReply =
            serde_json::from_str(r#"{"id":"e-1","warnings":["hf: a reason"]}"#).expect("old");
        assert_eq!(old.refused, None);
        assert_eq!(old.warnings, ["hf: a reason"]);
        let bare: OwnerReply = serde_json::from_str(r#"{"id":"e-1"}"#).expect("bare");
        assert_eq!(
            bare,
            OwnerReply {
                id: "e-1".into(),
                ..OwnerReply::default()
            }
        );

        /// The reply as the earlier release declared it.
        #[derive(serde::Deserialize)]
        struct EarlierLenient {
            id: String,
            #[serde(default)]
            warnings: Vec<String>,
        }
        for refused in [
            Refused::Decide("d".into()),
            Refused::Invalid("i".into()),
            Refused::IdReused("r".into()),
        ] {
            let reply = OwnerReply {
                id: "e-2".into(),
                warnings: Vec::new(),
                refused: Some(OwnerRefusal::from(&refused)),
            };
            let json = serde_json::to_string(&reply).expect("json");
            let back: OwnerReply = serde_json::from_str(&json).expect("read back");
            assert_eq!(back, reply);
            assert_eq!(Refused::from(back.refused.expect("refusal")), refused);
            // What the earlier release reads of it: the id, no warnings.
            let earlier: EarlierLenient = serde_json::from_str(&json).expect("earlier");
            assert_eq!((earlier.id.as_str(), earlier.warnings.len()), ("e-2", 0));
        }
        // A commit's reply is the earlier shape exactly: no `refused` written.
        let committed = OwnerReply {
            id: "e-3".into(),
            warnings: vec!["w".into()],
            refused: None,
        };
        assert_eq!(
            serde_json::to_string(&committed).expect("json"),
            r#"{"id":"e-3","warnings":["w"]}"#
        );
        let later: OwnerReply = serde_json::from_str(
            r#"{"id":"e-4","refused":{"kind":"quota","reason":"q","code":7},"extra":1}"#,
        )
        .expect("fields of a later release ignored");
        assert_eq!(
            Refused::from(later.refused.expect("refusal")),
            Refused::Invalid("q".into())
        );
    }
}
