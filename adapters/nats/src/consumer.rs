//! The partition consumers: `PARCOURS_IN` → the engine → acks.
//!
//! One loop per owned partition fetches up to `batch` messages (a fetch returns at once
//! with what is there, or waits up to `fetch_expiry` on an empty partition), decodes each
//! as a CloudEvents JSON [`Event`], and submits the valid ones in **one**
//! [`Ingest::submit`] call (one group commit). Then, per message:
//!
//! | outcome | what the consumer does |
//! |---|---|
//! | committed, or a duplicate of a committed event | ack (not awaiting the server's confirmation: a lost ack is a redelivery, a duplicate) |
//! | undecodable, bad envelope, wrong subject | publish to the tenant's DLQ with the reason, then term |
//! | refused by the engine | DLQ with the reason, then term |
//! | engine unavailable | nak, and the partition pauses for a delay that doubles per delivery (nothing acked) |
//! | engine shutting down | nak, the loop ends |
//! | failing alone, again, at delivery `max_attempts` or later | DLQ (`attempts`), then term |
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
//! **Order.** A message handed back for a retry is nak'd at once and the partition's loop
//! pauses for the retry delay (`retry_base`, doubling per delivery, up to `retry_max`)
//! before it fetches again. JetStream delivers pending redeliveries before newer
//! messages, so a patient's later events do not overtake an earlier one that failed
//! transiently (a nak with a server-side delay would let the loop fetch newer messages
//! meanwhile). When events are tried one by one, a patient's later events are held back
//! with an earlier one that failed, until it commits or is dead-lettered.
//!
//! While the engine works on a batch the consumer sends progress acks every third of
//! `ack_wait`, so a slow commit does not trigger redeliveries.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use parcours_core::events::Event;
use parcours_runtime::service::EventResult;
use parcours_runtime::{Handle, IngestOutcome, SubmitError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{Nats, NatsStats};
use crate::error::NatsError;
use crate::publish::{
    HEADER_DELIVERIES, HEADER_EVENT_ID, HEADER_ORIGIN_SEQUENCE, HEADER_ORIGIN_SUBJECT,
    HEADER_REASON, HEADER_STAGE, Outgoing, header_text, publish_pipelined,
};
use crate::subject::{check_envelope, check_routing, dlq_subject, parse_inbound, valid_tenant};
use crate::topology::STREAM_IN;

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
}

/// What becomes of one fetched message.
#[derive(Debug)]
enum Decision {
    Ack,
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
}

/// Whether the loop goes on, and after which pause.
enum Flow {
    /// Fetch again, after this pause when messages were handed back for a retry.
    Continue(Option<Duration>),
    /// The engine is shutting down.
    Stop,
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
        });
    };
    let subject_tenant = valid_tenant(inbound.tenant).then(|| inbound.tenant.to_string());
    let event: Event = serde_json::from_slice(&msg.payload).map_err(|e| DeadLetter {
        stage: "decode",
        reason: format!("not a CloudEvents JSON canonical event: {e}"),
        tenant: subject_tenant.clone(),
        event_id: None,
    })?;
    let dead = |reason: String| DeadLetter {
        stage: "decode",
        reason,
        tenant: subject_tenant
            .clone()
            .or_else(|| valid_tenant(&event.tenant).then(|| event.tenant.clone())),
        event_id: Some(event.id.clone()),
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
}

impl<I: Ingest> InboundConsumer<I> {
    /// A consumer feeding `ingest` (the engine's [`Handle`]).
    pub fn new(nats: Nats, ingest: I) -> InboundConsumer<I> {
        InboundConsumer { nats, ingest }
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
        loop {
            let ensured = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = self.nats.ensure_consumer(partition) => r,
            };
            let consumer = match ensured {
                Ok((c, _)) => c,
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "partition consumer not ready; retrying");
                    if backoff.wait(&token).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            tracing::info!(partition, "consuming partition");
            loop {
                if !self.nats.is_connected() {
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = self.nats.wait_connected() => {}
                    }
                }
                let fetched = tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    r = fetch_batch(&self.nats, &consumer, &token) => r,
                };
                match fetched {
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "fetch failed; retrying");
                        if backoff.wait(&token).await {
                            return Ok(());
                        }
                        break; // attach to the consumer again: it may have been recreated
                    }
                    Ok(msgs) if msgs.is_empty() => {
                        if token.is_cancelled() {
                            return Ok(());
                        }
                    }
                    Ok(msgs) => {
                        backoff.reset();
                        match self.process(msgs).await {
                            Flow::Stop => {
                                tracing::info!(partition, "engine shutting down; consumer stops");
                                return Ok(());
                            }
                            Flow::Continue(None) => {}
                            // Handed-back messages are redelivered before newer ones at the
                            // next fetch: pausing here is the retry delay, and keeps each
                            // patient's events in order.
                            Flow::Continue(Some(pause)) => tokio::select! {
                                _ = token.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(pause) => {}
                            },
                        }
                    }
                }
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
        let every = (self.nats.config().consumer.ack_wait / 3).max(Duration::from_millis(100));
        let submit = self.ingest.submit(events);
        tokio::pin!(submit);
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut submit => return r,
                _ = tick.tick() => {
                    for &i in indices {
                        if let Err(e) = deliveries[i].msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %e, "progress ack not sent");
                        }
                    }
                }
            }
        }
    }

    /// Decode, submit and acknowledge one fetched batch.
    async fn process(&self, msgs: Vec<Message>) -> Flow {
        let partitions = self.nats.config().partitions;
        let stats = self.nats.stats();
        NatsStats::add(&stats.fetched, msgs.len());
        let mut deliveries = Vec::with_capacity(msgs.len());
        let mut decisions: Vec<Option<Decision>> = Vec::with_capacity(msgs.len());
        let mut valid: Vec<(usize, Event)> = Vec::new();
        let metrics = parcours_runtime::metrics::metrics();
        let now = parcours_runtime::metrics::wall_now();
        for (i, msg) in msgs.into_iter().enumerate() {
            let (delivered, sequence) = msg.info().map_or((1, 0), |info| {
                if let Ok(stored) =
                    jiff::Timestamp::from_nanosecond(info.published.unix_timestamp_nanos())
                {
                    metrics
                        .nats_inbound_wait_seconds
                        .observe(parcours_runtime::metrics::seconds_between(stored, now));
                }
                (
                    u64::try_from(info.delivered).unwrap_or(1).max(1),
                    info.stream_sequence,
                )
            });
            match decode(&msg, partitions) {
                Ok(event) => {
                    valid.push((i, event));
                    decisions.push(None);
                }
                Err(dead) => decisions.push(Some(Decision::Dead(dead))),
            }
            deliveries.push(Delivery {
                msg,
                delivered,
                sequence,
            });
        }
        let mut flow = Flow::Continue(None);
        if !valid.is_empty() {
            let was_failing = self.ingest.store_failing();
            let indices: Vec<usize> = valid.iter().map(|(i, _)| *i).collect();
            let events: Vec<Event> = valid.iter().map(|(_, e)| e.clone()).collect();
            match self.submit_keepalive(events, &deliveries, &indices).await {
                Ok(results) => self.sort(&indices, results, &mut decisions),
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
                        match self.submit_keepalive(vec![event], &deliveries, &[i]).await {
                            Ok(results) => self.sort(&[i], results, &mut decisions),
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
        let pause = self.finish(deliveries, decisions).await;
        match flow {
            Flow::Stop => Flow::Stop,
            Flow::Continue(_) => Flow::Continue(pause),
        }
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
                Some(Ok(IngestOutcome::Committed { .. } | IngestOutcome::CommittedByOwner)) => {
                    NatsStats::add(&stats.committed, 1);
                    Decision::Ack
                }
                Some(Ok(IngestOutcome::Duplicate)) => {
                    NatsStats::add(&stats.duplicates, 1);
                    Decision::Ack
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
                }),
                None => Decision::Retry {
                    reason: "the engine gave no answer for it".into(),
                    counted: false,
                },
            });
        }
    }

    /// Carry out the decisions: dead letters first (published, then terminated), then
    /// acks and naks, concurrently. Returns the pause before the next fetch when messages
    /// were handed back for a retry.
    async fn finish(
        &self,
        deliveries: Vec<Delivery>,
        decisions: Vec<Option<Decision>>,
    ) -> Option<Duration> {
        let k = &self.nats.config().consumer;
        let stats = self.nats.stats();
        let mut pause: Option<Duration> = None;
        let mut retry = |delivered: u64| {
            NatsStats::add(&stats.retried, 1);
            let d = k.retry_delay(delivered);
            pause = Some(pause.map_or(d, |p| p.max(d)));
            AckKind::Nak(None)
        };
        let mut ops: Vec<(usize, AckKind, bool)> = Vec::with_capacity(deliveries.len());
        let mut dead: Vec<(usize, DeadLetter)> = Vec::new();
        for (i, decision) in decisions.into_iter().enumerate() {
            let d = &deliveries[i];
            match decision {
                // Sent without waiting for the server's confirmation: a lost ack means
                // a redelivery, which the engine answers as a duplicate.
                Some(Decision::Ack) => ops.push((i, AckKind::Ack, false)),
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
                        },
                    ));
                }
                Some(Decision::Retry { .. }) => ops.push((i, retry(d.delivered), false)),
                Some(Decision::Release) | None => ops.push((i, AckKind::Nak(None), false)),
            }
        }
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
                        tracing::warn!(
                            sequence = d.sequence,
                            deliveries = d.delivered,
                            stage = letter.stage,
                            "inbound message dead-lettered"
                        );
                        NatsStats::add(&stats.dead_lettered, 1);
                        parcours_runtime::metrics::dead_letter("nats");
                        ops.push((i, AckKind::Term, true));
                    }
                    Err(e) => {
                        tracing::warn!(sequence = d.sequence, error = %e, "dead letter not stored; will retry");
                        ops.push((i, retry(d.delivered), false));
                    }
                }
            }
        }
        let deliveries = &deliveries;
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
        pause
    }
}

/// The dead letter of a delivery: the original payload, the reason in headers.
fn dead_letter_message(d: &Delivery, letter: &DeadLetter) -> Outgoing {
    let subject_tenant = parse_inbound(d.msg.subject.as_str())
        .map(|i| i.tenant)
        .filter(|t| valid_tenant(t));
    let event_id = letter.event_id.clone().or_else(|| {
        serde_json::from_slice::<Event>(&d.msg.payload)
            .ok()
            .map(|e| e.id)
    });
    let tenant = letter.tenant.as_deref().or(subject_tenant);
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
    Outgoing {
        subject: dlq_subject(tenant),
        headers,
        payload: d.msg.payload.clone(),
    }
}

/// One fetch from a pull consumer (a partition's, the FHIR one): what it holds now (up to
/// `batch`), or what arrives within `fetch_expiry`. On cancellation, what was received is
/// given back at once.
pub(crate) async fn fetch_batch(
    nats: &Nats,
    consumer: &PullConsumer,
    token: &CancellationToken,
) -> Result<Vec<Message>, String> {
    let k = &nats.config().consumer;
    let mut batch = consumer
        .fetch()
        .max_messages(k.batch)
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

/// Give a message back for immediate redelivery.
async fn release(m: &Message) {
    if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "release not sent");
    }
}

/// Capped exponential backoff for reconnecting to a consumer.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// Sleep; true when cancelled meanwhile.
    async fn wait(&mut self, token: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        tokio::select! {
            _ = token.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}
