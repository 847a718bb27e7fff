//! Canonical events published under a linked local key: taken to the national key's
//! partition by the partition consumers (see [`crate::consumer`], "Identity links", and
//! `parcours_runtime::links`). So are events under a key an A40 retired (to the
//! survivor's partition: the retired key's identity stream leads there, as a link does).
//!
//! A consumer reads the links of a batch's keys ([`IdentityLinks::relink`], one query,
//! `parcours_runtime::links::relink`). An event whose key is linked is published again
//! ([`copy`]) on its national key's subject, its event id unchanged and its
//! `Nats-Msg-Id` [`copy_id`] (the original id would fall in the stream's duplicate
//! window), and the original is acknowledged once JetStream confirmed the copy. A
//! patient's copies go out in its stream order: the n-th of each patient's in one
//! pipelined round after the (n-1)-th were confirmed ([`rounds`]), so a failed copy's
//! later events are handed back with it, never published ahead of it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::Message;
use parcours_core::events::Event;
use parcours_runtime::links::{LatestSubjects, Relinked};
use parcours_store::{EventStore, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::publish::{HEADER_EVENT_ID, HEADER_REPLY, Outgoing, header_text};
use crate::subject::inbound_subject;

/// Where the partition consumers read the identity links: the log. Every
/// [`EventStore`] is one, and [`CoalescedLinks`] (any
/// [`LatestSubjects`](parcours_runtime::links::LatestSubjects) reader).
pub trait IdentityLinks: Send + Sync + std::fmt::Debug + 'static {
    /// Rewrite the events whose keys are linked local keys to their national keys, in
    /// one read of the links (`parcours_runtime::links::relink`); what became of each.
    fn relink<'a>(
        &'a self,
        events: &'a mut [Event],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Relinked>, String>> + Send + 'a>>;
}

impl<L: LatestSubjects + std::fmt::Debug + 'static> IdentityLinks for L {
    fn relink<'a>(
        &'a self,
        events: &'a mut [Event],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Relinked>, String>> + Send + 'a>> {
        Box::pin(async move {
            parcours_runtime::links::relink(self, events)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The identity links read for all the partition consumers of a process by one task,
/// one query at a time: the keys asked while a query is out are read together by the
/// next (as group commit does for the events). At 2 000 events/s the sixteen loops fetch
/// a message or two at a time, and a query per batch cost the engine 13 % of its CPU and
/// PostgreSQL a tenth of a core (benches/README.md, "Engine CPU per event at 2 000
/// events/s"). Each batch is resolved on its own ([`parcours_runtime::links::relink`]:
/// a link earlier in a batch counts for that batch alone); only the log's answer is
/// shared, read after each asker's batch was fetched, as before.
#[derive(Debug, Clone)]
pub struct CoalescedLinks {
    asks: mpsc::UnboundedSender<Ask>,
}

/// Streams asked, and where their latest subjects go.
#[derive(Debug)]
struct Ask {
    streams: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Option<String>>, String>>,
}

impl CoalescedLinks {
    /// The reader, and its task (which ends once every clone of the reader is dropped).
    /// Must be called within a Tokio runtime.
    pub fn new<S: EventStore + 'static>(store: S) -> CoalescedLinks {
        let (asks, mut queue) = mpsc::unbounded_channel::<Ask>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = queue.try_recv() {
                    batch.push(more);
                }
                let mut streams: Vec<String> = Vec::new();
                let mut at: HashMap<String, usize> = HashMap::new();
                for ask in &batch {
                    for s in &ask.streams {
                        if !at.contains_key(s) {
                            at.insert(s.clone(), streams.len());
                            streams.push(s.clone());
                        }
                    }
                }
                let read = match store.latest_subjects(&streams).await {
                    Ok(found) if found.len() == streams.len() => Ok(found),
                    Ok(_) => Err("a subject per stream was expected".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                for ask in batch {
                    let answer = match &read {
                        Ok(found) => Ok(ask
                            .streams
                            .iter()
                            .map(|s| at.get(s).and_then(|&i| found.get(i)).cloned().flatten())
                            .collect()),
                        Err(e) => Err(e.clone()),
                    };
                    // An asker gone (its batch dropped) needs no answer.
                    let _ = ask.reply.send(answer);
                }
            }
        });
        CoalescedLinks { asks }
    }
}

impl LatestSubjects for CoalescedLinks {
    fn read_latest_subjects(
        &self,
        streams: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send {
        let (reply, answer) = oneshot::channel();
        let sent = self.asks.send(Ask {
            streams: streams.to_vec(),
            reply,
        });
        async move {
            let stopped = || StoreError::Backend("the identity links' reader stopped".into());
            sent.map_err(|_| stopped())?;
            answer
                .await
                .map_err(|_| stopped())?
                .map_err(StoreError::Backend)
        }
    }
}

/// The `Nats-Msg-Id` of the copy of event `id` published on its national key's partition:
/// the same for every attempt (a copy published twice within the duplicate window is
/// stored once), never the event id itself (which the window knows from the original).
pub(crate) fn copy_id(id: &str) -> String {
    format!("{COPY_ID_PREFIX}{id}")
}

/// What every copy's `Nats-Msg-Id` begins with ([`copy_id`]).
pub(crate) const COPY_ID_PREFIX: &str = "parcours-linked:";

/// Whether `msg` is a copy this module published ([`copy`]).
pub(crate) fn is_copy(msg: &Message) -> bool {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(NATS_MESSAGE_ID))
        .is_some_and(|id| id.as_str().starts_with(COPY_ID_PREFIX))
}

/// The order in which the engine gets a batch's events when some were taken in place to
/// a national key whose events the batch holds: `keys[k]` is the k-th event's patient
/// (its key after the links were followed), `moved[k]` whether it was taken there in
/// place, `copy[k]` whether its message is a copy ([`copy`]). Indices into the batch.
///
/// A copy in the batch stands for an event published earlier under a local key: its
/// original was acknowledged only once the copy was confirmed, and the local key's later
/// events were held until then — so an event taken in place from that local key came
/// after it, though the copy lands later in the stream. Each copy of a national key goes
/// just before the first event of the batch taken in place to that key, when it is
/// later in the batch; everything else keeps stream order.
pub(crate) fn decision_order<K: std::hash::Hash + Eq>(
    keys: &[K],
    moved: &[bool],
    copy: &[bool],
) -> Vec<usize> {
    let mut first_moved: HashMap<&K, usize> = HashMap::new();
    for (k, key) in keys.iter().enumerate() {
        if moved[k] {
            first_moved.entry(key).or_insert(k);
        }
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    if first_moved.is_empty() {
        return order;
    }
    // (where it goes, copies first there, stream order)
    order.sort_by_key(|&k| match first_moved.get(&keys[k]) {
        Some(&f) if copy[k] && f < k => (f, 0, k),
        _ => (k, 1, k),
    });
    order
}

/// The copy of `original` (a delivery whose event is now `event`, keyed on the national
/// key) for the national key's partition: the event id kept (the engine's dedupe), the
/// forwarder's reply inbox kept (the owner of that partition answers it), the event id in
/// `Parcours-Event-Id` (what the reply names).
pub(crate) fn copy(original: &Message, event: &Event, partitions: u16) -> Result<Outgoing, String> {
    let subject = inbound_subject(event, partitions)?;
    let payload = crate::publish::cloudevent_json(event)
        .map_err(|e| format!("the event does not serialise: {e}"))?
        .into();
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, header_text(&copy_id(&event.id)));
    headers.insert(HEADER_EVENT_ID, header_text(&event.id));
    headers.insert("Content-Type", "application/cloudevents+json");
    if let Some(reply) = original.headers.as_ref().and_then(|h| h.get(HEADER_REPLY)) {
        headers.insert(HEADER_REPLY, reply.clone());
    }
    Ok(Outgoing {
        subject,
        headers,
        payload,
    })
}

/// The rounds in which copies go out: `patients[k]` is the patient (as keyed in its
/// partition) of the k-th copy, in stream order; round n holds the n-th copy of each
/// patient. Indices into `patients`.
pub(crate) fn rounds<K: std::hash::Hash + Eq>(patients: &[K]) -> Vec<Vec<usize>> {
    let mut count: HashMap<&K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (k, p) in patients.iter().enumerate() {
        let n = count.entry(p).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(k);
        *n += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patients_copies_go_out_one_round_after_another_in_order() {
        assert_eq!(rounds::<&str>(&[]), Vec::<Vec<usize>>::new());
        assert_eq!(
            rounds(&["a", "b", "a", "c", "a", "b"]),
            vec![vec![0, 1, 3], vec![2, 5], vec![4]]
        );
    }

    #[test]
    fn a_copy_goes_before_the_events_taken_in_place_to_its_key() {
        // Nothing moved: stream order, copies or not.
        assert_eq!(
            decision_order(&["n", "n"], &[false, false], &[false, true]),
            [0, 1]
        );
        // A weight under the local key taken in place, then the copy of the local key's
        // earlier weight, then the national key's own next event: the copy first.
        assert_eq!(
            decision_order(
                &["n", "n", "n"],
                &[true, false, false],
                &[false, true, false]
            ),
            [1, 0, 2]
        );
        // The national key's own event between them stays after the moved one; another
        // patient's events keep their places; a copy before the moved event stays put.
        assert_eq!(
            decision_order(
                &["n", "x", "n", "n", "x"],
                &[true, false, false, false, false],
                &[false, false, false, true, true]
            ),
            [3, 0, 1, 2, 4]
        );
        assert_eq!(
            decision_order(&["n", "n"], &[false, true], &[true, false]),
            [0, 1]
        );
        // Two copies and two moved events: the copies in their order, then the moved.
        assert_eq!(
            decision_order(
                &["n", "n", "n", "n"],
                &[true, true, false, false],
                &[false, false, true, true]
            ),
            [2, 3, 0, 1]
        );
    }

    #[test]
    fn the_copy_id_is_stable_and_never_the_event_id() {
        assert_eq!(copy_id("lab-1"), copy_id("lab-1"));
        assert_ne!(copy_id("lab-1"), "lab-1");
        assert_ne!(copy_id("lab-1"), copy_id("lab-2"));
    }
}
