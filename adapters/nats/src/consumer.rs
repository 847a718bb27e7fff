//! The partition consumers: `PARCOURS_IN` → the engine → acks.
//!
//! One loop per owned partition fetches messages through one pull request held open on
//! its consumer ("Fetching", below), decodes each as a CloudEvents JSON [`Event`] as it
//! arrives, and hands them to the engine in batches of up to `batch`, the valid ones of
//! a batch in **one** [`Ingest::submit`] call (they join one group commit). It fetches
//! on while batches are with the engine, and up to
//! `batches_in_flight` batches of a partition are with it at once, as long as no patient
//! is in two of them (the `schedule` module): an event does not wait for the commit of
//! another patient's, nor for a fetch after it. Then, per message:
//!
//! | outcome | what the consumer does |
//! |---|---|
//! | committed, or a duplicate of a committed event | ack (not awaiting the server's confirmation: a lost ack is a redelivery, a duplicate) |
//! | undecodable, bad envelope, wrong subject | publish to the tenant's DLQ with the reason, then term |
//! | refused by the engine | DLQ with the reason, then term; a forwarder asking (`Parcours-Reply`) is told the refusal |
//! | engine unavailable | nak, and the partition pauses for a delay that doubles per delivery (nothing acked) |
//! | engine shutting down | nak, the loop ends |
//! | failing alone, again, at delivery `max_attempts` or later | DLQ (`attempts`), then term |
//! | on a subject no partition's consumer takes (a partition at or above the count, a subject off the scheme) | found among the stream's oldest by the owner of partition 0 at its audit, DLQ (`routing`, 0 deliveries), then deleted from the stream |
//!
//! With [`InboundConsumer::keeping_dead_letters`] (what `parcours serve` sets: the log,
//! whose dead letters `parcours-vault` seals and erasure reaches), a refused message's
//! body is kept there, not in the DLQ stream — canonical events carry pseudonymous keys,
//! but an integration may publish anything: the DLQ message then has an empty body and
//! the dead letter's id in `Parcours-Dead-Letter`; a body that cannot be kept stays in
//! the stream and is tried again.
//!
//! A message is acknowledged only after its event is committed. A redelivered message
//! (ack lost, server restarted, nak) carries the same event id: the engine answers
//! "duplicate", nothing is decided twice, and the consumer acks it.
//!
//! **Poison bounding.** A failed group commit cannot say which event caused it. When a
//! batch of several fails while the store was healthy just before, each event is
//! submitted alone; a message that fails alone, while the store was healthy before its
//! attempt, at its `max_attempts`-th delivery or later, is dead-lettered. An outage
//! (the store already failing) never counts against a message: events wait in the stream
//! instead of filling the DLQ. After each failure the consumer asks the engine to probe
//! its store ([`Ingest::probe`]), so "healthy" is known again quickly.
//!
//! **Order.** A patient's events go to the engine in stream order, and a patient with a
//! batch with the engine gets no other until that one is answered; an identity link
//! (merge) counts for its local (retired) key too, so that key's events published after
//! it wait for its answer (and then read the link, below). A message handed back
//! for a retry is nak'd at once; its patient's later events wait until it is fetched
//! again (JetStream delivers pending redeliveries before newer messages), and the
//! partition hands nothing over for the retry delay (`retry_base`, doubling per
//! delivery, up to `retry_max`), so an outage is not hammered. Messages fetched ahead are
//! kept in memory, never nak'd for being early: a nak counts a delivery, and the poison
//! bound below counts only real attempts. When events are tried one by one, a patient's
//! later events are held back with an earlier one that failed, until it commits or is
//! dead-lettered.
//!
//! While the engine works on a batch, and while fetched messages wait their turn, the
//! consumer sends progress acks every third of `ack_wait`, so neither a slow commit nor
//! a wait triggers redeliveries.
//!
//! **Fetching.** A loop keeps one pull request outstanding on its partition's consumer,
//! for the room it has (`batch` messages held at most, fetched and not yet handed to the
//! engine; two batches while a patient waits for a message handed back), without
//! `no_wait`: the server delivers what the partition holds at once and then each message
//! as it is stored, until the room is delivered or `fetch_expiry` passes (it then ends
//! the request with a status); the loop issues the next one then. Each message goes to
//! the schedule as it arrives (with those that arrived with it), and a batch to the
//! engine at once when one may go: the request's end is never waited for. At a steady
//! trickle a request so carries a `fetch_expiry`'s worth of messages, where a request
//! ending at its first message (what async-nats' `fetch` asks: `no_wait` with an expiry)
//! cost a request and its terminating status per message or two — a sixth of the
//! server's messages at 2 000 events/s (benches/README.md, "One pull request a partition,
//! held open"). A request ended by an error before delivering anything is a failed fetch
//! (the loop attaches again after a backoff). The next request goes at the expiry, not
//! at the terminator: NATS 2.9.10 drops an expired request without one when a message is
//! ready for it, and the partition would wait for the guard. A request past its expiry
//! with no terminator is still listened to (what it could still deliver counts against
//! the room) until one comes or `fetch_expiry` + 1 s after it was sent (a terminator lost
//! in a reconnect). While the server holds both requests — it read the older one late,
//! so it expires it later than this side does — it deals the partition's messages to
//! them **in turn** (a request served goes to the back of its queue): 220 to the older,
//! 221 to the newer, 222 to the older. So whenever a message is read from either, what
//! both hold delivered is taken in with it, and the schedule orders them by stream
//! sequence: a patient's later message never goes to the engine without an earlier one
//! that reached the other request (`arrivals`; a weight was once decided before its
//! patient's consent so). Nor is a message dropped with a request: a delivered message
//! is read before the request's expiry or deadline is, and a request is never dropped
//! before its terminator or its deadline — a request's expiry is read only once no older
//! one is listened to, so at most two are open. Cancelled (shutdown, ownership lost), the
//! loop drops its requests at once, and what they delivered and was not handed over is
//! given back (nak) for another consumer. Counted in [`NatsStats`]: `pulls`, `fetched`.
//!
//! **Identity links.** With [`InboundConsumer::following_links`] (what `parcours serve`
//! sets: the log, through [`crate::CoalescedLinks`]), an event published under a local identifier's key linked to an INS
//! is taken to the INS's key (`parcours_runtime::links`; the fronts' events were
//! resolved before they were keyed). Each batch's keys are read in **one** query
//! (`links::relink`; none for a batch of `identity.linked` alone; through
//! `CoalescedLinks`, one query for the batches of every loop that asked while the last
//! was out). Deciding such an
//! event in this loop would decide the INS's patient in the local key's partition,
//! whose owner may not own the INS's, so it is published again on the INS's partition
//! (the `relink` module: its event id kept, `Nats-Msg-Id` `parcours-linked:<event id>`,
//! a patient's copies in stream order) and acknowledged once JetStream confirmed that
//! copy; a copy not published hands the original back (a retry, not counted), with its
//! patient's later events. An event published under the local key after the link, in
//! the link's partition, is not handed over while the link's batch is in flight (the
//! schedule holds the link against both keys): it reads the link once committed, never
//! racing it. When the INS's events are in the same batch — the link
//! itself earlier in it (a link in the batch counts for the events after it), or the
//! two keys sharing the partition — the event goes in place, the INS's key instead: no
//! other batch holds that patient, and the engine gets them in stream order, except that
//! a copy of the INS's key later in the batch (of an event published earlier under a
//! local key, its copy landing after the later event) goes before it
//! (`relink::decision_order`). A
//! redelivery is a duplicate either way: the copy's id falls in the duplicate window,
//! or the engine knows the event id (`parcours_runtime::resend`: for one committed under the
//! local key before the link). Counted in `parcours_nats_relinked_events_total`.
//!
//! **Audit.** When a pull request ends with nothing delivered and nothing in hand — the
//! loop's first such request, then at most every 5 s — the loop looks in the work queue for
//! messages of the partition that the consumer will never deliver
//! ([`Nats::lost_messages`]) and publishes each again at the stream's end, oldest first
//! ([`Nats::publish_lost_again`]), where the next fetches get them.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{AckKind, Message};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use parcours_core::events::Event;
use parcours_runtime::links::Relinked;
use parcours_runtime::service::EventResult;
use parcours_runtime::{Handle, IngestOutcome, Refused, SubmitError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{Nats, NatsStats};
use crate::error::NatsError;
use crate::fhir::{DeadLetters, HEADER_DEAD_LETTER, body_of, keep_bodies};
use crate::publish::{
    HEADER_DELIVERIES, HEADER_EVENT_ID, HEADER_ORIGIN_SEQUENCE, HEADER_ORIGIN_SUBJECT,
    HEADER_REASON, HEADER_REPLY, HEADER_STAGE, Outgoing, OwnerRefusal, OwnerReply, header_text,
    publish_pipelined,
};
use crate::relink::{self, IdentityLinks};
use crate::schedule::{PatientKey, Schedule, Waiting, patients_of};
use crate::subject::{check_envelope, check_routing, dlq_subject, parse_inbound, valid_tenant};
use crate::topology::STREAM_IN;

/// How often an idle partition's consumer is checked for messages it would never deliver
/// ([`Nats::lost_messages`]): at its loop's first empty pull, then at most every this long,
/// after a pull request that delivered nothing.
const AUDIT_EVERY: Duration = Duration::from_secs(5);

/// What the consumer hands inbound events to: the engine's [`Handle`] in production.
pub trait Ingest: Clone + Send + Sync + 'static {
    /// Submit events in order; returns once each is committed, a duplicate, or refused.
    fn submit(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<EventResult>, SubmitError>> + Send;

    /// Whether the engine's last commit failed (an outage, not one bad event).
    fn store_failing(&self) -> bool;

    /// Ask the engine to use its store soon, so [`Ingest::store_failing`] is current.
    fn probe(&self);
}

impl Ingest for Handle {
    fn submit(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<EventResult>, SubmitError>> + Send {
        // Counted as `source="nats"` in the ingest metrics.
        parcours_runtime::metrics::submit(self, parcours_runtime::metrics::Source::Nats, events)
    }

    fn store_failing(&self) -> bool {
        self.health().store_failing.load(Ordering::Relaxed)
    }

    fn probe(&self) {
        // The engine looks at its timers, which reads the store and updates its health.
        self.wake();
    }
}

/// Why a message goes to the dead-letter queue.
#[derive(Clone, Debug)]
struct DeadLetter {
    stage: &'static str,
    reason: String,
    /// The tenant whose DLQ subject receives it (the subject's, else the event's).
    tenant: Option<String>,
    event_id: Option<String>,
    /// The id of the body kept in the log's dead letters.
    kept: Option<u64>,
    /// The engine's refusal, told to a forwarder asking (`HEADER_REPLY`) once it is
    /// dead-lettered (boxed: a decoding refusal returns the letter as its error).
    refused: Option<Box<Refused>>,
}

/// What becomes of one fetched message.
#[derive(Debug)]
enum Decision {
    /// Acknowledge; `reply` when the engine committed it now: what to tell a forwarder
    /// asking for it (`HEADER_REPLY`).
    Ack {
        reply: Option<OwnerReply>,
    },
    Dead(DeadLetter),
    /// Processing failed; `counted` when the failure is the message's own.
    Retry {
        reason: String,
        counted: bool,
    },
    /// Give it back at once (shutdown, lost ownership).
    Release,
}

/// One fetched message.
struct Delivery {
    msg: Message,
    delivered: u64,
    sequence: u64,
    /// When the stream stored it.
    stored: Option<jiff::Timestamp>,
}

/// A fetched message and what it decoded to.
struct Fetched {
    delivery: Delivery,
    event: Result<Event, DeadLetter>,
}

/// A fetched message, decoded, waiting in its partition's [`Schedule`] (keyed by its
/// patient when it is an event).
fn fetched(msg: Message, partitions: u16) -> Waiting<Fetched> {
    let (delivered, sequence, stored) = msg.info().map_or((1, 0, None), |info| {
        (
            u64::try_from(info.delivered).unwrap_or(1).max(1),
            info.stream_sequence,
            jiff::Timestamp::from_nanosecond(info.published.unix_timestamp_nanos()).ok(),
        )
    });
    let event = decode(&msg, partitions);
    let (patient, linked) = match &event {
        Ok(e) => (
            Some((e.tenant.clone(), e.subject.clone())),
            // A link (merge) also changes its local (retired) key's patient: its later
            // events wait for the link's commit (the `schedule` module).
            parcours_core::merge::keys(e)
                .ok()
                .map(|(local, _)| (e.tenant.clone(), local.to_owned())),
        ),
        Err(_) => (None, None),
    };
    Waiting {
        sequence,
        patient,
        linked,
        item: Fetched {
            delivery: Delivery {
                msg,
                delivered,
                sequence,
                stored,
            },
            event,
        },
    }
}

/// Whether the partition goes on, and after which pause.
enum Flow {
    /// Go on, after this pause when messages were handed back for a retry.
    Continue(Option<Duration>),
    /// The engine is shutting down.
    Stop,
}

/// A batch answered: what comes next, its patients, and those of its messages handed
/// back for a retry (patient, sequence).
struct Answered {
    flow: Flow,
    patients: HashSet<PatientKey>,
    retried: Vec<(PatientKey, u64)>,
}

/// How a partition's consumption ended.
enum Consumed {
    /// Cancelled, or the engine shut down.
    Stopped,
    /// A fetch failed: attach to the consumer again, after a backoff.
    FetchFailed(String),
}

/// Decode a message into a canonical event, or say why it cannot be one.
fn decode(msg: &Message, partitions: u16) -> Result<Event, DeadLetter> {
    let subject = msg.subject.as_str();
    let Some(inbound) = parse_inbound(subject) else {
        return Err(DeadLetter {
            stage: "decode",
            reason: "the subject does not follow parcours.<tenant>.in.p<NN>.<event-type>".into(),
            tenant: None,
            event_id: None,
            kept: None,
            refused: None,
        });
    };
    let subject_tenant = valid_tenant(inbound.tenant).then(|| inbound.tenant.to_string());
    // The refusal quotes no value from the payload (`parcours_core::json`).
    let event = Event::from_json_slice(&msg.payload).map_err(|e| DeadLetter {
        stage: "decode",
        reason: format!("not a CloudEvents JSON canonical event: {e}"),
        tenant: subject_tenant.clone(),
        event_id: None,
        kept: None,
        refused: None,
    })?;
    let dead = |reason: String| DeadLetter {
        stage: "decode",
        reason,
        tenant: subject_tenant
            .clone()
            .or_else(|| valid_tenant(&event.tenant).then(|| event.tenant.clone())),
        event_id: Some(event.id.clone()),
        kept: None,
        refused: None,
    };
    check_envelope(&event).map_err(dead)?;
    check_routing(&inbound, &event, partitions).map_err(dead)?;
    Ok(event)
}

/// Consumes the partitions an engine owns and feeds them to it.
#[derive(Clone, Debug)]
pub struct InboundConsumer<I> {
    nats: Nats,
    ingest: I,
    /// Where refused bodies are kept instead of the DLQ stream.
    dead_letters: Option<Arc<dyn DeadLetters>>,
    /// Where the identity links are read, to take events under a linked local key to
    /// their national key.
    links: Option<Arc<dyn IdentityLinks>>,
}

impl<I: Ingest> InboundConsumer<I> {
    /// A consumer feeding `ingest` (the engine's [`Handle`]); refused messages go to the
    /// DLQ stream whole.
    pub fn new(nats: Nats, ingest: I) -> InboundConsumer<I> {
        InboundConsumer {
            nats,
            ingest,
            dead_letters: None,
            links: None,
        }
    }

    /// Read each batch's identity links in `links` (the log) and take the events under a
    /// local key linked to a national one to that key: published on its partition, the
    /// original acknowledged once that copy is confirmed (module docs, "Identity links").
    pub fn following_links(mut self, links: Arc<dyn IdentityLinks>) -> InboundConsumer<I> {
        self.links = Some(links);
        self
    }

    /// Keep the bodies of refused messages in `keeper` (the log's dead letters, sealed
    /// and erasable); the DLQ message then carries the reason and the dead letter's id,
    /// not the body.
    pub fn keeping_dead_letters(mut self, keeper: Arc<dyn DeadLetters>) -> InboundConsumer<I> {
        self.dead_letters = Some(keeper);
        self
    }

    /// Run one loop per owned partition on `tracker`; each stops when its token is
    /// cancelled (ownership lost, shutdown). A loop that cannot run (its consumer exists
    /// with other settings) logs why and ends.
    pub fn spawn(
        &self,
        owned: impl IntoIterator<Item = (u16, CancellationToken)>,
        tracker: &TaskTracker,
    ) {
        for (partition, token) in owned {
            let this = self.clone();
            tracker.spawn(async move {
                if let Err(e) = this.run_partition(partition, token).await {
                    tracing::error!(partition, error = %e, "partition consumer stopped");
                }
            });
        }
    }

    /// Consume one partition until `token` is cancelled or the engine shuts down.
    /// Transient failures (NATS unreachable, a consumer gone) are retried with backoff;
    /// an error is returned only for what a person must fix.
    pub async fn run_partition(
        &self,
        partition: u16,
        token: CancellationToken,
    ) -> Result<(), NatsError> {
        let mut backoff = Backoff::new();
        // What was fetched and not yet handed to the engine outlives a re-attachment to
        // the consumer (its messages' acks stay valid).
        let mut schedule: Schedule<Fetched> = Schedule::default();
        let result = loop {
            let ensured = tokio::select! {
                _ = token.cancelled() => break Ok(()),
                r = self.nats.ensure_consumer(partition) => r,
            };
            let consumer = match ensured {
                Ok((c, _)) => c,
                Err(e) if e.is_permanent() => break Err(e),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "partition consumer not ready; retrying");
                    if backoff.wait(&token).await {
                        break Ok(());
                    }
                    continue;
                }
            };
            tracing::info!(partition, "consuming partition");
            match self
                .consume(partition, &consumer, &token, &mut schedule, &mut backoff)
                .await
            {
                Consumed::Stopped => break Ok(()),
                Consumed::FetchFailed(e) => {
                    tracing::warn!(partition, error = %e, "fetch failed; retrying");
                    if backoff.wait(&token).await {
                        break Ok(());
                    }
                    // Attach to the consumer again: it may have been recreated.
                }
            }
        };
        // Fetched, never handed over: given back for another consumer (shutdown, lost
        // ownership).
        let left = schedule.drain();
        futures::future::join_all(left.iter().map(|w| release(&w.item.delivery.msg))).await;
        result
    }

    /// Fetch and hand over batches until stopped or a pull request fails: up to
    /// `batches_in_flight` batches of the partition with the engine at once, one pull
    /// request held open meanwhile, its messages handed over as they arrive (module docs,
    /// "Fetching"; [`crate::schedule`] for the order kept).
    async fn consume(
        &self,
        partition: u16,
        consumer: &PullConsumer,
        token: &CancellationToken,
        schedule: &mut Schedule<Fetched>,
        backoff: &mut Backoff,
    ) -> Consumed {
        let k = &self.nats.config().consumer;
        let partitions = self.nats.config().partitions;
        // The pull request held open on the consumer (module docs, "Fetching"); dropped to
        // end it at once (cancellation), its messages already in `schedule`.
        let mut pull: Option<Pull<'_>> = None;
        // A request past its expiry with no terminator yet, still listened to: NATS 2.9
        // drops an expired request silently when a message is ready for it, so the next
        // is sent at the expiry, not at the terminator; a message it delivered just before
        // is still taken in (`Pull::past_expiry`).
        let mut draining: Option<Pull<'_>> = None;
        let mut inflight = FuturesUnordered::new();
        let mut paused_until: Option<Instant> = None;
        let mut stopping = false;
        let mut failed: Option<String> = None;
        // Counts the answers that handed messages back; a pull begun after the last of
        // them that ends with nothing delivered means those messages are not coming.
        let mut handed_back = 0u64;
        let every = (k.ack_wait / 3).max(Duration::from_millis(100));
        let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
        // A new owner audits at its first idle moment: a take-over after a crash is when a
        // message the server will not deliver shows up.
        let mut audited: Option<Instant> = None;
        loop {
            if !stopping && failed.is_none() && pull.is_none() && self.nats.is_connected() {
                // Room for a batch ahead; for two while a patient waits for a message
                // handed back (it comes with the next pulls).
                let cap = if schedule.has_blocked() {
                    2 * k.batch
                } else {
                    k.batch
                };
                // What the request past its expiry could still deliver counts as held.
                let held = schedule.len() + draining.as_ref().map_or(0, Pull::outstanding);
                if schedule.len() >= cap {
                    // It cannot be fetched without room: stop waiting for it.
                    schedule.unblock_all();
                } else if held < cap {
                    NatsStats::add(&self.nats.stats().pulls, 1);
                    pull = Some(Pull::issue(
                        consumer,
                        cap - held,
                        k.fetch_expiry,
                        handed_back,
                    ));
                }
            }
            if !stopping && paused_until.is_none() {
                while inflight.len() < k.batches_in_flight {
                    let batch = schedule.take(k.batch);
                    if batch.is_empty() {
                        break;
                    }
                    inflight.push(self.process(batch));
                }
            }
            if stopping || failed.is_some() {
                // Nothing more is taken in; what the request past its expiry holds
                // delivered goes to the schedule (given back when stopping), not lost
                // with it.
                if let Some(mut older) = draining.take() {
                    take_in(held(&mut older), schedule, &self.nats, partitions);
                }
            }
            if (stopping || failed.is_some()) && inflight.is_empty() && pull.is_none() {
                return match failed {
                    Some(e) if !stopping => Consumed::FetchFailed(e),
                    _ => Consumed::Stopped,
                };
            }
            let may_expire = draining.is_none();
            tokio::select! {
                _ = token.cancelled(), if !stopping => {
                    stopping = true;
                    if let Some(mut p) = pull.take() {
                        take_in(held(&mut p), schedule, &self.nats, partitions);
                    }
                }
                // Its expiry is read only once no older request is listened to: a
                // request is never dropped before its terminator or its deadline (the
                // server may still deal it messages), so at most two are open.
                pulled = async { pull.as_mut().expect("guarded").next(may_expire).await }, if pull.is_some() => {
                    let ended = match pulled {
                        Pulled::Message(m) => {
                            backoff.reset();
                            // Handed to the schedule as it arrives, with whatever arrived
                            // with it (one batch for a burst, not one per message) on
                            // either request ([`arrivals`]).
                            let msgs = arrivals(m, pull.as_mut().expect("guarded"), draining.as_mut());
                            take_in(msgs, schedule, &self.nats, partitions);
                            None
                        }
                        Pulled::Ended(r) => Some(r),
                        Pulled::Expired => Some(Ok(())),
                    };
                    if let Some(r) = ended {
                        let ended = pull.take().expect("guarded");
                        let (begun, delivered) = (ended.begun, ended.delivered);
                        // What the older request holds delivered is taken in before the end
                        // is read (a message handed back may have come there).
                        if let Some(older) = draining.as_mut() {
                            take_in(held(older), schedule, &self.nats, partitions);
                        }
                        // Past its expiry only with no older request listened to (above).
                        if ended.past_expiry() {
                            draining = Some(ended);
                        }
                        match r {
                            Err(e) if delivered == 0 => failed = Some(e),
                            Err(e) => tracing::debug!(error = %e, "pull ended early"),
                            Ok(()) if delivered > 0 => {}
                            Ok(()) => {
                                if begun == handed_back {
                                    schedule.unblock_all();
                                }
                                // Idle, every answer acknowledged: does the server still hold a
                                // message of the partition its consumer will never deliver?
                                if schedule.len() == 0
                                    && inflight.is_empty()
                                    && audited.is_none_or(|a| a.elapsed() >= AUDIT_EVERY)
                                {
                                    audited = Some(Instant::now());
                                    self.audit(partition).await;
                                }
                            }
                        }
                    }
                }
                pulled = async { draining.as_mut().expect("guarded").next(true).await }, if draining.is_some() => {
                    match pulled {
                        Pulled::Message(m) => {
                            let msgs = arrivals(m, draining.as_mut().expect("guarded"), pull.as_mut());
                            take_in(msgs, schedule, &self.nats, partitions);
                        }
                        Pulled::Ended(r) => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "expired pull ended with an error");
                            }
                            draining = None;
                        }
                        Pulled::Expired => draining = None,
                    }
                }
                Some(answered) = inflight.next(), if !inflight.is_empty() => {
                    if !answered.retried.is_empty() {
                        handed_back += 1;
                    }
                    schedule.done(&answered.patients, answered.retried);
                    match answered.flow {
                        Flow::Stop => {
                            tracing::info!("engine shutting down; consumer stops");
                            stopping = true;
                            if let Some(mut p) = pull.take() {
                                take_in(held(&mut p), schedule, &self.nats, partitions);
                            }
                        }
                        Flow::Continue(None) => {}
                        // Handed-back messages come back at a later pull: pausing the
                        // hand-over is the retry delay (an outage is not hammered).
                        Flow::Continue(Some(pause)) => {
                            let until = Instant::now() + pause;
                            paused_until = Some(paused_until.map_or(until, |p| p.max(until)));
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(paused_until.expect("guarded")).await }, if paused_until.is_some() => {
                    paused_until = None;
                }
                _ = self.nats.wait_connected(), if pull.is_none() && !self.nats.is_connected() && !stopping => {}
                _ = keepalive.tick() => {
                    // Messages waiting their turn (a patient busy or blocked, a pause)
                    // keep their ack deadline.
                    futures::future::join_all(schedule.items().map(|f| keep_alive(&f.delivery.msg)))
                        .await;
                }
            }
        }
    }

    /// Look for messages the partition's consumer will never deliver
    /// ([`Nats::lost_messages`]); publish each again at the stream's end, oldest first
    /// ([`Nats::publish_lost_again`]), where the consumer delivers them with the next
    /// pulls, in their order.
    async fn audit(&self, partition: u16) {
        if partition == 0 {
            self.dead_letter_orphans().await;
        }
        let lost = match self.nats.lost_messages(partition).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::debug!(partition, error = %e, "partition consumer not audited");
                return;
            }
        };
        for sequence in lost {
            match self.nats.publish_lost_again(sequence).await {
                Ok(copy) => {
                    tracing::warn!(
                        partition,
                        sequence,
                        copy,
                        "a message of the partition its consumer would never deliver was published again"
                    );
                    NatsStats::add(&self.nats.stats().lost_published_again, 1);
                    parcours_runtime::metrics::metrics()
                        .nats_lost_messages
                        .inc();
                }
                Err(e) => {
                    // The later ones wait too: their copies must not come before its.
                    tracing::warn!(partition, sequence, error = %e, "a message the partition's consumer would never deliver was not published again; retrying at the next audit");
                    return;
                }
            }
        }
    }

    /// Keep the bodies of these deliveries' dead letters in the log's dead letters, when
    /// this consumer keeps them ([`InboundConsumer::keeping_dead_letters`]): the letters
    /// kept (each with its id there), and those not kept with why (their messages stay,
    /// for a retry). Without a keeper, every letter as it is.
    async fn keep_letters(
        &self,
        deliveries: &[Delivery],
        dead: Vec<(usize, DeadLetter)>,
    ) -> (Vec<(usize, DeadLetter)>, Vec<(usize, String)>) {
        let Some(keeper) = &self.dead_letters else {
            return (dead, Vec::new());
        };
        keep_bodies(
            keeper.as_ref(),
            dead,
            |i, letter| {
                let d = &deliveries[i];
                let tenant = dlq_tenant(d, letter).map(str::to_string);
                body_of(&d.msg, tenant, letter.reason.clone())
            },
            |letter, id| letter.kept = Some(id),
        )
        .await
    }

    /// Dead-letter the inbound messages no partition's consumer takes
    /// ([`Nats::orphan_messages`]: a subject off the scheme, a partition beyond the
    /// count), then delete them from the stream: kept with the reason, as any message
    /// that cannot be processed, instead of waiting in the stream for ever. One engine
    /// at a time does it, the owner of partition 0. A message whose dead letter could
    /// not be stored stays, for the next audit.
    async fn dead_letter_orphans(&self) {
        let orphans = match self.nats.orphan_messages().await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "inbound stream not audited for orphans");
                return;
            }
        };
        if orphans.is_empty() {
            return;
        }
        let mut deliveries = Vec::with_capacity(orphans.len());
        let mut dead = Vec::with_capacity(orphans.len());
        for (i, (m, reason)) in orphans.into_iter().enumerate() {
            // The tenant token of `parcours.<tenant>.in.…`, even off the scheme: its DLQ.
            let tenant = m
                .subject
                .split('.')
                .nth(1)
                .filter(|t| valid_tenant(t))
                .map(str::to_owned);
            deliveries.push(Delivery {
                msg: Message {
                    message: async_nats::Message {
                        length: m.payload.len(),
                        subject: m.subject,
                        reply: None,
                        payload: m.payload,
                        headers: Some(m.headers),
                        status: None,
                        description: None,
                    },
                    context: self.nats.jetstream().clone(),
                },
                // Never delivered: no consumer takes it.
                delivered: 0,
                sequence: m.sequence,
                stored: None,
            });
            dead.push((
                i,
                DeadLetter {
                    stage: "routing",
                    reason,
                    tenant,
                    event_id: None,
                    kept: None,
                    refused: None,
                },
            ));
        }
        let (kept, failed) = self.keep_letters(&deliveries, dead).await;
        for (i, e) in failed {
            tracing::warn!(sequence = deliveries[i].sequence, error = %e, "an orphan's dead letter not stored; retrying at the next audit");
        }
        let dead = kept;
        let messages: Vec<Outgoing> = dead
            .iter()
            .map(|(i, letter)| dead_letter_message(&deliveries[*i], letter))
            .collect();
        let results = publish_pipelined(&self.nats, messages).await;
        for ((i, _), r) in dead.into_iter().zip(results) {
            let sequence = deliveries[i].sequence;
            if let Err(e) = r {
                tracing::warn!(sequence, error = %e, "an orphan not dead-lettered; retrying at the next audit");
                continue;
            }
            tracing::warn!(
                sequence,
                "an inbound message no engine consumes was dead-lettered"
            );
            NatsStats::add(&self.nats.stats().dead_lettered, 1);
            parcours_runtime::metrics::dead_letter("nats");
            if let Err(e) = self.nats.delete_inbound(sequence).await {
                // Dead-lettered again at the next audit: the DLQ's message id
                // (`dlq-PARCOURS_IN-<sequence>`) makes the second one a duplicate.
                tracing::warn!(sequence, error = %e, "a dead-lettered orphan not deleted");
            }
        }
    }

    /// Submit while keeping the messages' ack deadline from expiring.
    async fn submit_keepalive(
        &self,
        events: Vec<Event>,
        deliveries: &[Delivery],
        indices: &[usize],
    ) -> Result<Vec<EventResult>, SubmitError> {
        self.keeping_alive(self.ingest.submit(events), deliveries, indices)
            .await
    }

    /// Await `work` while keeping these messages' ack deadline from expiring.
    async fn keeping_alive<T>(
        &self,
        work: impl Future<Output = T>,
        deliveries: &[Delivery],
        indices: &[usize],
    ) -> T {
        let every = (self.nats.config().consumer.ack_wait / 3).max(Duration::from_millis(100));
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tick.tick() => {
                    for &i in indices {
                        keep_alive(&deliveries[i].msg).await;
                    }
                }
            }
        }
    }

    /// Read the links of the batch's keys (one query) and take each event under a linked
    /// local key to its national key: kept in the batch when that key's events are in
    /// it (the returned first list, with the events whose keys are not linked), else to
    /// be published on its partition (the second). A merge of one person is acknowledged
    /// with nothing to do; when the links cannot be read, the batch is handed back.
    async fn follow(
        &self,
        links: &dyn IdentityLinks,
        valid: Vec<(usize, Event)>,
        deliveries: &[Delivery],
        patients: &HashSet<PatientKey>,
        decisions: &mut [Option<Decision>],
    ) -> (Vec<(usize, Event)>, Vec<(usize, Event)>) {
        let (indices, mut events): (Vec<usize>, Vec<Event>) = valid.into_iter().unzip();
        let read = self
            .keeping_alive(links.relink(&mut events), deliveries, &indices)
            .await;
        let fates = match read {
            Ok(fates) if fates.len() == events.len() => fates,
            read => {
                let reason = match read {
                    Err(e) => e,
                    Ok(_) => "an answer per event was expected".into(),
                };
                tracing::warn!(error = %reason, "identity links not read; the batch is tried again");
                for i in indices {
                    decisions[i] = Some(Decision::Retry {
                        reason: format!("the identity links could not be read: {reason}"),
                        counted: false,
                    });
                }
                self.ingest.probe();
                return (Vec::new(), Vec::new());
            }
        };
        let mut keep = Vec::with_capacity(events.len());
        let mut in_place = Vec::with_capacity(events.len());
        let mut out = Vec::new();
        let mut moved = 0;
        for ((i, e), fate) in indices.into_iter().zip(events).zip(fates) {
            match fate {
                Relinked::Moved { from } => {
                    if patients.contains(&(e.tenant.clone(), e.subject.clone())) {
                        tracing::debug!(tenant = %e.tenant, local = %from, national = %e.subject,
                            "event for a linked local key: taken by its national key in the same batch");
                        moved += 1;
                        keep.push((i, e));
                        in_place.push(true);
                    } else {
                        tracing::debug!(tenant = %e.tenant, local = %from, national = %e.subject,
                            "event for a linked local key: published on its national key's partition");
                        out.push((i, e));
                    }
                }
                Relinked::OnePerson => {
                    tracing::debug!(tenant = %e.tenant, subject = %e.subject,
                        "merge of two keys linked to one person: nothing to do");
                    NatsStats::add(&self.nats.stats().duplicates, 1);
                    decisions[i] = Some(Decision::Ack { reply: None });
                }
                Relinked::Unchanged | Relinked::Retired => {
                    keep.push((i, e));
                    in_place.push(false);
                }
            }
        }
        parcours_runtime::metrics::relinked("moved", moved);
        if moved > 0 {
            // A copy of an earlier event of the local key, in the batch after the event
            // taken in place, is decided first (`relink::decision_order`).
            let keys: Vec<(&str, &str)> = keep
                .iter()
                .map(|(_, e)| (e.tenant.as_str(), e.subject.as_str()))
                .collect();
            let copies: Vec<bool> = keep
                .iter()
                .map(|(i, _)| relink::is_copy(&deliveries[*i].msg))
                .collect();
            let order = relink::decision_order(&keys, &in_place, &copies);
            let mut slots: Vec<Option<(usize, Event)>> = keep.into_iter().map(Some).collect();
            keep = order.into_iter().filter_map(|k| slots[k].take()).collect();
        }
        (keep, out)
    }

    /// Publish the events taken to a national key on its partition (`relink` module), a
    /// patient's in stream order; what becomes of each original: acknowledged once its
    /// copy is confirmed, handed back when it failed (with its patient's later ones).
    async fn publish_copies(
        &self,
        out: Vec<(usize, Event)>,
        deliveries: &[Delivery],
        keys: &[Option<PatientKey>],
    ) -> Vec<(usize, Decision)> {
        if out.is_empty() {
            return Vec::new();
        }
        let partitions = self.nats.config().partitions;
        let stats = self.nats.stats();
        let patients: Vec<Option<&PatientKey>> =
            out.iter().map(|(i, _)| keys[*i].as_ref()).collect();
        let mut failed: HashSet<Option<&PatientKey>> = HashSet::new();
        let mut decided = Vec::with_capacity(out.len());
        let (mut published, mut not_published) = (0, 0);
        for round in relink::rounds(&patients) {
            let mut sending = Vec::with_capacity(round.len());
            let mut messages = Vec::with_capacity(round.len());
            for k in round {
                let (i, e) = &out[k];
                if failed.contains(&patients[k]) {
                    decided.push((
                        *i,
                        Decision::Retry {
                            reason: "an earlier event of the same patient is retried first".into(),
                            counted: false,
                        },
                    ));
                    continue;
                }
                match relink::copy(&deliveries[*i].msg, e, partitions) {
                    Ok(m) => {
                        sending.push(k);
                        messages.push(m);
                    }
                    Err(reason) => {
                        let reason = format!(
                            "its key is linked to a national identity's, where it cannot be \
                             published: {reason}"
                        );
                        decided.push((
                            *i,
                            Decision::Dead(DeadLetter {
                                stage: "refused",
                                reason: reason.clone(),
                                tenant: None,
                                event_id: Some(e.id.clone()),
                                kept: None,
                                refused: Some(Box::new(Refused::Invalid(reason))),
                            }),
                        ));
                    }
                }
            }
            let results = publish_pipelined(&self.nats, messages).await;
            for (k, r) in sending.into_iter().zip(results) {
                let (i, _) = &out[k];
                match r {
                    Ok(_) => {
                        published += 1;
                        decided.push((*i, Decision::Ack { reply: None }));
                    }
                    Err(e) => {
                        not_published += 1;
                        tracing::warn!(sequence = deliveries[*i].sequence, error = %e,
                            "event for a linked local key not published on its national key's partition; will retry");
                        failed.insert(patients[k]);
                        decided.push((
                            *i,
                            Decision::Retry {
                                reason: format!(
                                    "its key is linked to a national identity's, on whose \
                                     partition it was not published: {e}"
                                ),
                                counted: false,
                            },
                        ));
                    }
                }
            }
        }
        NatsStats::add(&stats.relinked, published);
        parcours_runtime::metrics::relinked("published", published);
        parcours_runtime::metrics::relinked("failed", not_published);
        decided
    }

    /// Submit and acknowledge one batch handed over.
    async fn process(&self, batch: Vec<Waiting<Fetched>>) -> Answered {
        // Every patient it holds busy (a link's local key too); those its messages are
        // keyed by, whose partition this is.
        let patients = patients_of(&batch);
        let own: HashSet<PatientKey> = batch.iter().filter_map(|w| w.patient.clone()).collect();
        let metrics = parcours_runtime::metrics::metrics();
        let now = parcours_runtime::metrics::wall_now();
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut decisions: Vec<Option<Decision>> = Vec::with_capacity(batch.len());
        let mut valid: Vec<(usize, Event)> = Vec::new();
        let mut keys: Vec<Option<PatientKey>> = Vec::with_capacity(batch.len());
        let mut linked: Vec<Option<PatientKey>> = Vec::with_capacity(batch.len());
        for (i, w) in batch.into_iter().enumerate() {
            keys.push(w.patient);
            linked.push(w.linked);
            let Fetched { delivery, event } = w.item;
            if let Some(stored) = delivery.stored {
                metrics
                    .nats_inbound_wait_seconds
                    .observe(parcours_runtime::metrics::seconds_between(stored, now));
            }
            match event {
                Ok(event) => {
                    valid.push((i, event));
                    decisions.push(None);
                }
                Err(dead) => decisions.push(Some(Decision::Dead(dead))),
            }
            deliveries.push(delivery);
        }
        let out = match &self.links {
            Some(links) if !valid.is_empty() => {
                let (keep, out) = self
                    .follow(links.as_ref(), valid, &deliveries, &own, &mut decisions)
                    .await;
                valid = keep;
                out
            }
            _ => Vec::new(),
        };
        let (flow, copies) = futures::join!(
            self.submit_valid(valid, &deliveries, &mut decisions),
            self.publish_copies(out, &deliveries, &keys),
        );
        for (i, decision) in copies {
            decisions[i] = Some(decision);
        }
        let (pause, handed_back) = self.finish(&deliveries, decisions).await;
        Answered {
            flow: match flow {
                Flow::Stop => Flow::Stop,
                Flow::Continue(_) => Flow::Continue(pause),
            },
            // A link handed back blocks its local key too.
            retried: handed_back
                .into_iter()
                .flat_map(|i| {
                    let sequence = deliveries[i].sequence;
                    keys[i]
                        .iter()
                        .chain(linked[i].iter())
                        .map(move |p| (p.clone(), sequence))
                })
                .collect(),
            patients,
        }
    }

    /// Submit the batch's events to the engine (in one call; after a failure of a
    /// healthy store, each alone) and note what becomes of each.
    async fn submit_valid(
        &self,
        valid: Vec<(usize, Event)>,
        deliveries: &[Delivery],
        decisions: &mut [Option<Decision>],
    ) -> Flow {
        let mut flow = Flow::Continue(None);
        if !valid.is_empty() {
            let was_failing = self.ingest.store_failing();
            let indices: Vec<usize> = valid.iter().map(|(i, _)| *i).collect();
            let events: Vec<Event> = valid.iter().map(|(_, e)| e.clone()).collect();
            match self.submit_keepalive(events, deliveries, &indices).await {
                Ok(results) => self.sort(&indices, results, decisions),
                Err(SubmitError::ShuttingDown) => {
                    for &i in &indices {
                        decisions[i] = Some(Decision::Release);
                    }
                    flow = Flow::Stop;
                }
                Err(SubmitError::Unavailable(_)) if valid.len() > 1 && !was_failing => {
                    // The store was fine a moment ago: maybe one event breaks the commit.
                    // Try each alone so the others go through and the culprit is known; a
                    // patient's later events wait behind one of theirs that failed.
                    self.ingest.probe();
                    let mut held: HashSet<(String, String)> = HashSet::new();
                    for (i, event) in valid {
                        if matches!(flow, Flow::Stop) {
                            decisions[i] = Some(Decision::Release);
                            continue;
                        }
                        let patient = (event.tenant.clone(), event.subject.clone());
                        if held.contains(&patient) {
                            decisions[i] = Some(Decision::Retry {
                                reason: "an earlier event of the same patient is retried first"
                                    .into(),
                                counted: false,
                            });
                            continue;
                        }
                        let was_failing = self.ingest.store_failing();
                        match self.submit_keepalive(vec![event], deliveries, &[i]).await {
                            Ok(results) => self.sort(&[i], results, decisions),
                            Err(SubmitError::ShuttingDown) => {
                                decisions[i] = Some(Decision::Release);
                                flow = Flow::Stop;
                            }
                            Err(SubmitError::Unavailable(r)) => {
                                decisions[i] = Some(Decision::Retry {
                                    reason: format!("the engine could not commit it: {r}"),
                                    counted: !was_failing,
                                });
                                held.insert(patient);
                                self.ingest.probe();
                            }
                        }
                    }
                }
                Err(SubmitError::Unavailable(reason)) => {
                    let counted = !was_failing && indices.len() == 1;
                    for &i in &indices {
                        decisions[i] = Some(Decision::Retry {
                            reason: format!("the engine could not commit it: {reason}"),
                            counted,
                        });
                    }
                    self.ingest.probe();
                }
            }
        }
        flow
    }

    /// Turn the engine's answers into decisions.
    fn sort(
        &self,
        indices: &[usize],
        results: Vec<EventResult>,
        decisions: &mut [Option<Decision>],
    ) {
        let stats = self.nats.stats();
        let mut results = results.into_iter();
        for &i in indices {
            decisions[i] = Some(match results.next() {
                Some(Ok(IngestOutcome::Committed { warnings, .. })) => {
                    NatsStats::add(&stats.committed, 1);
                    Decision::Ack {
                        reply: Some(OwnerReply {
                            id: String::new(),
                            warnings,
                            refused: None,
                        }),
                    }
                }
                Some(Ok(IngestOutcome::CommittedByOwner { .. })) => {
                    NatsStats::add(&stats.committed, 1);
                    Decision::Ack { reply: None }
                }
                Some(Ok(IngestOutcome::Duplicate)) => {
                    NatsStats::add(&stats.duplicates, 1);
                    Decision::Ack { reply: None }
                }
                // Only a forwarding handle queues; this one must commit before the ack.
                Some(Ok(IngestOutcome::Queued)) => Decision::Retry {
                    reason: "queued elsewhere, not committed".into(),
                    counted: false,
                },
                Some(Err(refused)) => Decision::Dead(DeadLetter {
                    stage: "refused",
                    reason: format!("the engine refused it: {refused}"),
                    tenant: None,
                    event_id: None,
                    kept: None,
                    refused: Some(Box::new(refused)),
                }),
                None => Decision::Retry {
                    reason: "the engine gave no answer for it".into(),
                    counted: false,
                },
            });
        }
    }

    /// Carry out the decisions: dead letters first (published, then terminated), then
    /// acks and naks, concurrently. Returns the pause before the partition hands over
    /// more when messages were handed back for a retry, and which were.
    async fn finish(
        &self,
        deliveries: &[Delivery],
        decisions: Vec<Option<Decision>>,
    ) -> (Option<Duration>, Vec<usize>) {
        let k = &self.nats.config().consumer;
        let stats = self.nats.stats();
        let mut pause: Option<Duration> = None;
        let mut handed_back = Vec::new();
        let mut retry = |i: usize, delivered: u64| {
            handed_back.push(i);
            NatsStats::add(&stats.retried, 1);
            let d = k.retry_delay(delivered);
            pause = Some(pause.map_or(d, |p| p.max(d)));
            AckKind::Nak(None)
        };
        let mut ops: Vec<(usize, AckKind, bool)> = Vec::with_capacity(deliveries.len());
        let mut dead: Vec<(usize, DeadLetter)> = Vec::new();
        let mut replies: Vec<(usize, OwnerReply)> = Vec::new();
        for (i, decision) in decisions.into_iter().enumerate() {
            let d = &deliveries[i];
            match decision {
                // Sent without waiting for the server's confirmation: a lost ack means
                // a redelivery, which the engine answers as a duplicate.
                Some(Decision::Ack { reply }) => {
                    if let Some(reply) = reply {
                        replies.push((i, reply));
                    }
                    ops.push((i, AckKind::Ack, false));
                }
                Some(Decision::Dead(letter)) => dead.push((i, letter)),
                Some(Decision::Retry { reason, counted })
                    if counted && d.delivered >= u64::from(k.max_attempts) =>
                {
                    dead.push((
                        i,
                        DeadLetter {
                            stage: "attempts",
                            reason: format!(
                                "still failing at delivery {} (max_attempts {}): {reason}",
                                d.delivered, k.max_attempts
                            ),
                            tenant: None,
                            event_id: None,
                            kept: None,
                            refused: None,
                        },
                    ));
                }
                Some(Decision::Retry { .. }) => ops.push((i, retry(i, d.delivered), false)),
                Some(Decision::Release) | None => ops.push((i, AckKind::Nak(None), false)),
            }
        }
        let (kept, failed) = self.keep_letters(deliveries, dead).await;
        for (i, e) in failed {
            let d = &deliveries[i];
            tracing::warn!(sequence = d.sequence, error = %e, "dead letter not stored; will retry");
            ops.push((i, retry(i, d.delivered), false));
        }
        let dead = kept;
        if !dead.is_empty() {
            let messages: Vec<Outgoing> = dead
                .iter()
                .map(|(i, letter)| dead_letter_message(&deliveries[*i], letter))
                .collect();
            let results = publish_pipelined(&self.nats, messages).await;
            for ((i, letter), r) in dead.into_iter().zip(results) {
                let d = &deliveries[i];
                match r {
                    Ok(_) => {
                        // The reason names places and rules, never a value sent.
                        tracing::warn!(
                            sequence = d.sequence,
                            deliveries = d.delivered,
                            stage = letter.stage,
                            tenant = letter.tenant.as_deref().unwrap_or("-"),
                            reason = %letter.reason,
                            "inbound message dead-lettered"
                        );
                        NatsStats::add(&stats.dead_lettered, 1);
                        parcours_runtime::metrics::dead_letter("nats");
                        if let Some(refused) = &letter.refused {
                            replies.push((
                                i,
                                OwnerReply {
                                    refused: Some(OwnerRefusal::from(refused.as_ref())),
                                    ..OwnerReply::default()
                                },
                            ));
                        }
                        ops.push((i, AckKind::Term, true));
                    }
                    Err(e) => {
                        tracing::warn!(sequence = d.sequence, error = %e, "dead letter not stored; will retry");
                        ops.push((i, retry(i, d.delivered), false));
                    }
                }
            }
        }
        // Forwarders waiting for these commits or refusals hear what the engine said of
        // them (core NATS, not awaited: one lost, its forwarder answers a commit from the
        // log without its warnings, a refusal "queued").
        for (i, mut reply) in replies {
            let msg = &deliveries[i].msg;
            let Some(to) = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_REPLY))
                .map(|v| v.as_str().to_owned())
            else {
                continue;
            };
            // A copy published for a linked national key names its event apart from
            // its `Nats-Msg-Id` (`relink::copy`); a forwarder's message by its id.
            let Some(id) = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_EVENT_ID).or_else(|| h.get(NATS_MESSAGE_ID)))
                .map(|v| v.as_str().to_owned())
            else {
                continue;
            };
            reply.id = id;
            match serde_json::to_vec(&reply) {
                Ok(body) => {
                    if let Err(e) = self.nats.client().publish(to, body.into()).await {
                        tracing::debug!(error = %e, "owner's reply not sent");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "owner's reply not encoded"),
            }
        }
        let failures = futures::stream::iter(ops)
            .map(|(i, kind, confirm)| async move {
                let m = &deliveries[i].msg;
                let r = if confirm {
                    m.double_ack_with(kind).await
                } else {
                    m.ack_with(kind).await
                };
                r.is_err()
            })
            .buffer_unordered(k.ack_concurrency)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        if failures > 0 {
            // The server will deliver them again; the engine knows them as duplicates.
            tracing::warn!(failures, "acknowledgements not confirmed");
            NatsStats::add(&stats.ack_failures, failures);
        }
        (pause, handed_back)
    }
}

/// The tenant whose DLQ receives a delivery's dead letter: the subject's, else the
/// event's.
fn dlq_tenant<'a>(d: &'a Delivery, letter: &'a DeadLetter) -> Option<&'a str> {
    let subject_tenant = parse_inbound(d.msg.subject.as_str())
        .map(|i| i.tenant)
        .filter(|t| valid_tenant(t));
    letter.tenant.as_deref().or(subject_tenant)
}

/// The dead letter of a delivery: the original payload (or, kept in the log, the id it
/// has there), the reason in headers.
fn dead_letter_message(d: &Delivery, letter: &DeadLetter) -> Outgoing {
    let event_id = letter.event_id.clone().or_else(|| {
        serde_json::from_slice::<Event>(&d.msg.payload)
            .ok()
            .map(|e| e.id)
    });
    let tenant = dlq_tenant(d, letter);
    let mut headers = HeaderMap::new();
    if d.sequence > 0 {
        // A second dead letter of the same message (its term was lost) is dropped.
        headers.insert(
            NATS_MESSAGE_ID,
            header_text(&format!("dlq-{STREAM_IN}-{}", d.sequence)),
        );
    }
    headers.insert(HEADER_REASON, header_text(&letter.reason));
    headers.insert(HEADER_STAGE, letter.stage);
    headers.insert(HEADER_ORIGIN_SUBJECT, header_text(d.msg.subject.as_str()));
    headers.insert(HEADER_ORIGIN_SEQUENCE, d.sequence.to_string());
    headers.insert(HEADER_DELIVERIES, d.delivered.to_string());
    if let Some(id) = event_id {
        headers.insert(HEADER_EVENT_ID, header_text(&id));
    }
    if let Some(ct) = d.msg.headers.as_ref().and_then(|h| h.get("Content-Type")) {
        headers.insert("Content-Type", ct.clone());
    }
    let payload = match letter.kept {
        Some(id) => {
            headers.insert(HEADER_DEAD_LETTER, id.to_string());
            bytes::Bytes::new()
        }
        None => d.msg.payload.clone(),
    };
    Outgoing {
        subject: dlq_subject(tenant),
        headers,
        payload,
    }
}

/// How long after a pull request's expiry (counted from before it was sent) the next is
/// sent when no terminator came: NATS 2.9.10 drops an expired request without one when a
/// message is ready for it (seen at 2 000 events/s: the partition then waited for the
/// `fetch_expiry` + 1 s guard, p99 ~0.75 s).
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Take messages pulls delivered ([`arrivals`]) into the schedule.
fn take_in(msgs: Vec<Message>, schedule: &mut Schedule<Fetched>, nats: &Nats, partitions: u16) {
    NatsStats::add(&nats.stats().fetched, msgs.len());
    schedule.add(msgs.into_iter().map(|m| fetched(m, partitions)));
}

/// Messages a pull request holds, delivered, without waiting ([`Pull::ready`]).
trait Ready {
    type Item;
    fn ready(&mut self) -> Option<Self::Item>;
}

impl Ready for Pull<'_> {
    type Item = Message;
    fn ready(&mut self) -> Option<Message> {
        Pull::ready(self)
    }
}

/// What the message `m` that request `from` delivered brings into the schedule: `m`, what
/// `from` got with it (one batch for a burst, not one per message), and every message the
/// partition's other open request (`other`) holds delivered.
///
/// Two requests are open while one is past its expiry on this side and not yet on the
/// server's (a loaded machine reads the request late), and the server deals a consumer's
/// messages out **in turn** to its waiting requests (NATS 2.9 and 2.1x move a request
/// served to the back of the queue): the partition's messages 220, 221, 222 reach the
/// older, the newer, the older. The connection hands them over in that order, so when
/// one is read, those delivered before it are already in their request; taking both
/// requests' in the same turn — the schedule orders them by stream sequence — means a
/// patient's later message never goes to the engine before an earlier one that reached
/// the other request (seen in CI: a weight decided before its patient's consent).
fn arrivals<R: Ready>(m: R::Item, from: &mut R, other: Option<&mut R>) -> Vec<R::Item> {
    let mut msgs = vec![m];
    msgs.extend(held(from));
    if let Some(other) = other {
        msgs.extend(held(other));
    }
    msgs
}

/// Every message `r` holds delivered, without waiting.
fn held<R: Ready>(r: &mut R) -> Vec<R::Item> {
    std::iter::from_fn(|| r.ready()).collect()
}

/// A pull request held open on a partition's consumer (module docs, "Fetching"): up to
/// its room in messages, delivered one by one as they reach the partition, until the
/// room is delivered or `fetch_expiry` passes (the server then ends it with a status).
/// Dropping it ends it at once.
struct Pull<'c> {
    state: PullState<'c>,
    /// The loop's count of answers that handed messages back when it was issued.
    begun: u64,
    /// Messages it delivered so far.
    delivered: usize,
    /// When the server forgets the request (a margin past its expiry, counted from
    /// before it was sent); `None` once passed.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The server ends a pull itself; this guards a terminator lost in a reconnect.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Messages it may deliver.
    room: usize,
    /// How it ended, when found by [`Pull::ready`] (reported by the next [`Pull::next`]).
    ended: Option<Result<(), String>>,
}

enum PullState<'c> {
    /// The request being sent (subscribing to its inbox, publishing it).
    Sending(Pin<Box<dyn Future<Output = Result<Batch, String>> + Send + 'c>>),
    /// Sent: its messages as they are delivered.
    Open(Box<Batch>),
}

/// What a [`Pull`] gives next.
#[allow(clippy::large_enum_variant)] // a message, moved on at once
enum Pulled {
    Message(Message),
    /// Its expiry passed (and a margin) with no terminator: the next request goes now.
    Expired,
    /// It ended: expired or its room delivered (`Ok`), or an error from the server or the
    /// connection.
    Ended(Result<(), String>),
}

impl<'c> Pull<'c> {
    /// Ask `consumer` for up to `room` messages, within `expiry` (no `no_wait`: the
    /// request stays open while the partition is empty).
    fn issue(consumer: &'c PullConsumer, room: usize, expiry: Duration, begun: u64) -> Pull<'c> {
        let request = consumer
            .batch()
            .max_messages(room)
            .expires(expiry)
            .messages();
        Pull {
            state: PullState::Sending(Box::pin(
                async move { request.await.map_err(|e| e.to_string()) },
            )),
            begun,
            delivered: 0,
            expiry: Some(Box::pin(tokio::time::sleep(expiry + EXPIRY_MARGIN))),
            deadline: Box::pin(tokio::time::sleep(expiry + Duration::from_secs(1))),
            room,
            ended: None,
        }
    }

    /// The next message, or the end; its expiry only when `may_expire`. Cancel-safe:
    /// nothing is lost when dropped unfinished.
    async fn next(&mut self, may_expire: bool) -> Pulled {
        if let Some(end) = self.ended.clone() {
            return Pulled::Ended(end);
        }
        // A message delivered goes first: one still in the request when its expiry or its
        // deadline passes would be dropped with it (and come back only after `ack_wait`,
        // behind its patient's later messages).
        let pulled = tokio::select! {
            biased;
            pulled = receive(&mut self.state) => pulled,
            _ = async { self.expiry.as_mut().expect("guarded").await }, if may_expire && self.expiry.is_some() => {
                self.expiry = None;
                return Pulled::Expired;
            }
            _ = &mut self.deadline => Pulled::Ended(Ok(())),
        };
        self.record(pulled)
    }

    /// Whether its expiry passed without a terminator (it is then listened to until one
    /// comes, or its deadline).
    fn past_expiry(&self) -> bool {
        self.expiry.is_none() && self.ended.is_none()
    }

    /// Messages it may still deliver.
    fn outstanding(&self) -> usize {
        if self.ended.is_some() {
            0
        } else {
            self.room.saturating_sub(self.delivered)
        }
    }

    /// A message already delivered, without waiting; `None` when there is none now or the
    /// pull ended (kept for [`Pull::next`]).
    fn ready(&mut self) -> Option<Message> {
        if self.ended.is_some() || matches!(self.state, PullState::Sending(_)) {
            return None;
        }
        match receive(&mut self.state)
            .now_or_never()
            .map(|p| self.record(p))?
        {
            Pulled::Message(m) => Some(m),
            Pulled::Ended(_) | Pulled::Expired => None,
        }
    }

    fn record(&mut self, pulled: Pulled) -> Pulled {
        match &pulled {
            Pulled::Message(_) => self.delivered += 1,
            Pulled::Ended(end) => self.ended = Some(end.clone()),
            Pulled::Expired => {}
        }
        pulled
    }
}

/// A pull's next message or end, once its request is sent.
async fn receive(state: &mut PullState<'_>) -> Pulled {
    loop {
        match state {
            PullState::Sending(sending) => match sending.await {
                Ok(batch) => *state = PullState::Open(Box::new(batch)),
                Err(e) => return Pulled::Ended(Err(e)),
            },
            PullState::Open(batch) => {
                return match batch.next().await {
                    None => Pulled::Ended(Ok(())),
                    Some(Ok(m)) => Pulled::Message(m),
                    Some(Err(e)) => Pulled::Ended(Err(e.to_string())),
                };
            }
        }
    }
}

/// One fetch from the FHIR pull consumer: what it holds now (up to `max`), or what
/// arrives within `fetch_expiry` (async-nats' `fetch`: `no_wait` with an expiry, ended by
/// the server at its first messages). On cancellation, what was received is given back at
/// once. (The partition loops hold a [`Pull`] open instead.)
pub(crate) async fn fetch_batch(
    nats: &Nats,
    consumer: &PullConsumer,
    token: &CancellationToken,
    max: usize,
) -> Result<Vec<Message>, String> {
    let k = &nats.config().consumer;
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(k.fetch_expiry)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    // The server ends a fetch itself; this guards a terminator lost in a reconnect.
    let deadline = Instant::now() + k.fetch_expiry + Duration::from_secs(1);
    let mut msgs = Vec::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                for m in &msgs {
                    release(m).await;
                }
                return Ok(Vec::new());
            }
            _ = tokio::time::sleep_until(deadline) => break,
            next = batch.next() => match next {
                None => break,
                Some(Ok(m)) => msgs.push(m),
                Some(Err(e)) if msgs.is_empty() => return Err(e.to_string()),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "fetch ended early");
                    break;
                }
            },
        }
    }
    Ok(msgs)
}

/// Push a message's ack deadline back (a progress ack).
async fn keep_alive(m: &Message) {
    if let Err(e) = m.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %e, "progress ack not sent");
    }
}

/// Give a message back for immediate redelivery.
async fn release(m: &Message) {
    if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "release not sent");
    }
}

/// Capped exponential backoff (0.1 s, doubling up to 5 s) for reconnecting to a consumer,
/// and for the start-up's waits for a server and for JetStream.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// The next pause.
    pub(crate) fn next(&self) -> Duration {
        self.next
    }

    /// The next pause, doubling the one after.
    fn take(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        d
    }

    /// Sleep the next pause.
    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.take()).await;
    }

    /// Sleep; true when cancelled meanwhile.
    async fn wait(&mut self, token: &CancellationToken) -> bool {
        let d = self.take();
        tokio::select! {
            _ = token.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Ready, arrivals};
    use std::collections::VecDeque;

    /// A pull request's messages delivered so far, not taken yet.
    struct Delivered(VecDeque<u32>);

    impl Ready for Delivered {
        type Item = u32;
        fn ready(&mut self) -> Option<u32> {
            self.0.pop_front()
        }
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn an_expired_requests_messages_come_with_the_newer_requests_message() {
        // 1 and 2 reached the older request (past its expiry, not listened to in this
        // turn), then 3 and 4 the newer one, whose 3 woke the loop.
        let mut older = Delivered(VecDeque::from([1, 2]));
        let mut newer = Delivered(VecDeque::from([4]));
        assert_eq!(
            sorted(arrivals(3, &mut newer, Some(&mut older))),
            [1, 2, 3, 4]
        );
        assert!(older.0.is_empty() && newer.0.is_empty());
    }

    #[test]
    fn messages_dealt_in_turn_to_two_requests_come_together_whichever_woke_the_loop() {
        // The server dealt 220 to the older request, 221 to the newer, 222 to the older;
        // the older's 220 woke the loop: 221 comes in the same turn, before the schedule
        // can hand 222 (the patient's weight) over without it (the consent).
        let mut older = Delivered(VecDeque::from([222]));
        let mut newer = Delivered(VecDeque::from([221]));
        assert_eq!(
            sorted(arrivals(220, &mut older, Some(&mut newer))),
            [220, 221, 222]
        );
        // And the same when the newer request's message woke it.
        let mut older = Delivered(VecDeque::from([220, 222]));
        let mut newer = Delivered(VecDeque::new());
        assert_eq!(
            sorted(arrivals(221, &mut newer, Some(&mut older))),
            [220, 221, 222]
        );
    }

    #[test]
    fn a_message_comes_with_what_its_request_delivered_with_it() {
        let mut pull = Delivered(VecDeque::from([8, 9]));
        assert_eq!(arrivals(7, &mut pull, None), [7, 8, 9]);
        let mut older = Delivered(VecDeque::new());
        assert_eq!(arrivals(10, &mut pull, Some(&mut older)), [10]);
    }
}
