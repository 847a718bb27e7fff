//! The streams and the partition consumers, created or checked at start-up.
//!
//! A stream or consumer that exists with settings parcours cannot work with (other
//! subjects, another retention or storage, a mirror, another filter or ack policy) is an
//! error naming each difference; it is never edited. Settings that may change without
//! harm (limits, duplicate window, replicas, ack wait, …) are brought to the configured
//! values, and the report says which.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy};
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use serde_json::json;

use crate::config::{ConsumerSettings, StreamSettings};
use crate::connection::Nats;
use crate::consumer::Backoff;
use crate::error::NatsError;
use crate::subject::{PREFIX, consumer_name, fhir_filter, parse_inbound, partition_filter};

/// The inbound stream (work queue: a message leaves it when acknowledged).
pub const STREAM_IN: &str = "PARCOURS_IN";
/// The effect stream (kept for `out_max_age`; care-team systems read it).
pub const STREAM_OUT: &str = "PARCOURS_OUT";
/// The dead-letter stream.
pub const STREAM_DLQ: &str = "PARCOURS_DLQ";
/// FHIR R4 JSON from hospitals (work queue), mapped to events by one engine at a time.
pub const STREAM_FHIR: &str = "PARCOURS_FHIR";
/// The durable consumer of [`STREAM_FHIR`].
pub const FHIR_CONSUMER: &str = "fhir-in";

/// JetStream's "stream not found" and "consumer not found" error codes.
const STREAM_NOT_FOUND: u64 = 10059;
const CONSUMER_NOT_FOUND: u64 = 10014;

/// The oldest messages of the inbound stream [`Nats::lost_messages`] looks at, at most.
const LOST_SCAN: usize = 64;

/// The header of a message published again by [`Nats::publish_lost_again`]: the stream
/// sequence it had.
pub const HEADER_LOST_SEQUENCE: &str = "Parcours-Lost-Sequence";

/// What start-up did to a stream or consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// It did not exist: created.
    Created,
    /// It existed with the configured settings.
    Unchanged,
    /// It existed; these updatable settings were brought to the configured values.
    Updated(Vec<String>),
}

/// The stream configurations parcours wants.
pub fn stream_configs(s: &StreamSettings) -> [stream::Config; 3] {
    let inbound = stream::Config {
        name: STREAM_IN.into(),
        description: Some("parcours inbound events, one consumer per partition".into()),
        subjects: vec![format!("{PREFIX}.*.in.>")],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        max_bytes: s.in_max_bytes,
        max_messages: -1,
        max_age: Duration::ZERO,
        duplicate_window: s.in_duplicate_window,
        num_replicas: s.replicas,
        ..Default::default()
    };
    let out = stream::Config {
        name: STREAM_OUT.into(),
        description: Some(
            "parcours effects: tasks, alerts, handoffs (Nats-Msg-Id = effect id)".into(),
        ),
        subjects: vec![format!("{PREFIX}.*.out.>")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_bytes: -1,
        max_messages: -1,
        max_age: s.out_max_age,
        duplicate_window: s.out_duplicate_window,
        num_replicas: s.replicas,
        ..Default::default()
    };
    let dlq = stream::Config {
        name: STREAM_DLQ.into(),
        description: Some("parcours dead letters, with the reason in Parcours-Reason".into()),
        subjects: vec![format!("{PREFIX}.*.dlq")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_bytes: -1,
        max_messages: -1,
        max_age: s.dlq_max_age,
        duplicate_window: Duration::from_secs(120),
        num_replicas: s.replicas,
        ..Default::default()
    };
    [inbound, out, dlq]
}

/// The FHIR inbound stream: like `PARCOURS_IN` (work queue, file, discard new, the
/// inbound duplicate window for publishers that set `Nats-Msg-Id`), on
/// `parcours.*.fhir.in`.
pub fn fhir_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: STREAM_FHIR.into(),
        description: Some("parcours inbound FHIR R4 JSON (resources and Bundles)".into()),
        subjects: vec![fhir_filter()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        max_bytes: s.in_max_bytes,
        max_messages: -1,
        max_age: Duration::ZERO,
        duplicate_window: s.in_duplicate_window,
        num_replicas: s.replicas,
        ..Default::default()
    }
}

/// The FHIR stream's consumer: the partition consumers' settings on `parcours.*.fhir.in`.
pub fn fhir_consumer_config(k: &ConsumerSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(FHIR_CONSUMER.into()),
        description: Some("parcours FHIR intake".into()),
        filter_subject: fhir_filter(),
        ..consumer_config(k, 0)
    }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Compare an existing stream with the wanted one: the differences parcours cannot accept,
/// and the updated configuration (the existing one with the wanted updatable values) when
/// some updatable settings differ.
fn compare_stream(
    have: &stream::Config,
    want: &stream::Config,
) -> Result<Option<(stream::Config, Vec<String>)>, Vec<String>> {
    let mut incompatible = Vec::new();
    let mut h = have.subjects.clone();
    let mut w = want.subjects.clone();
    h.sort();
    w.sort();
    if h != w {
        incompatible.push(format!("subjects are {h:?}, expected {w:?}"));
    }
    if have.retention != want.retention {
        incompatible.push(format!(
            "retention is {:?}, expected {:?}",
            have.retention, want.retention
        ));
    }
    if have.storage != want.storage {
        incompatible.push(format!(
            "storage is {:?}, expected {:?}",
            have.storage, want.storage
        ));
    }
    if have.mirror.is_some() || have.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        incompatible.push("it is a mirror or has sources, expected neither".into());
    }
    if have.sealed {
        incompatible.push("it is sealed (read-only)".into());
    }
    if have.no_ack {
        incompatible.push("no_ack is set: publishes would not be acknowledged".into());
    }
    if !incompatible.is_empty() {
        return Err(incompatible);
    }
    let mut next = have.clone();
    let mut changed = Vec::new();
    if have.discard != want.discard {
        changed.push(format!("discard {:?} -> {:?}", have.discard, want.discard));
        next.discard = want.discard;
    }
    if have.max_bytes != want.max_bytes && !(have.max_bytes < 0 && want.max_bytes < 0) {
        changed.push(format!(
            "max_bytes {} -> {}",
            limit(have.max_bytes),
            limit(want.max_bytes)
        ));
        next.max_bytes = want.max_bytes;
    }
    if have.max_messages >= 0 && want.max_messages < 0 {
        changed.push(format!("max_msgs {} -> unlimited", have.max_messages));
        next.max_messages = want.max_messages;
    }
    if have.max_age != want.max_age {
        changed.push(format!("max_age {:?} -> {:?}", have.max_age, want.max_age));
        next.max_age = want.max_age;
    }
    if have.duplicate_window != want.duplicate_window {
        changed.push(format!(
            "duplicate_window {:?} -> {:?}",
            have.duplicate_window, want.duplicate_window
        ));
        next.duplicate_window = want.duplicate_window;
    }
    if have.num_replicas != want.num_replicas {
        changed.push(format!(
            "replicas {} -> {}",
            have.num_replicas, want.num_replicas
        ));
        next.num_replicas = want.num_replicas;
    }
    if changed.is_empty() {
        Ok(None)
    } else {
        Ok(Some((next, changed)))
    }
}

/// The consumer configuration of a partition.
pub fn consumer_config(k: &ConsumerSettings, partition: u16) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(consumer_name(partition)),
        description: Some(format!("parcours partition {partition}")),
        filter_subject: partition_filter(partition),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        replay_policy: ReplayPolicy::Instant,
        ack_wait: k.ack_wait,
        max_deliver: k.max_deliver,
        max_ack_pending: k.max_ack_pending,
        ..Default::default()
    }
}

fn compare_consumer(
    have: &consumer::Config,
    want: &consumer::pull::Config,
) -> Result<Option<(consumer::pull::Config, Vec<String>)>, Vec<String>> {
    let mut incompatible = Vec::new();
    if have.deliver_subject.is_some() {
        incompatible.push("it is a push consumer, expected a pull consumer".into());
    }
    if have.filter_subject != want.filter_subject {
        incompatible.push(format!(
            "filter is {:?}, expected {:?}",
            have.filter_subject, want.filter_subject
        ));
    }
    if !have.filter_subjects.is_empty() {
        incompatible.push(format!(
            "filters are {:?}, expected only {:?}",
            have.filter_subjects, want.filter_subject
        ));
    }
    if have.ack_policy != want.ack_policy {
        incompatible.push(format!(
            "ack policy is {:?}, expected {:?}",
            have.ack_policy, want.ack_policy
        ));
    }
    if have.deliver_policy != want.deliver_policy {
        incompatible.push(format!(
            "deliver policy is {:?}, expected {:?}",
            have.deliver_policy, want.deliver_policy
        ));
    }
    if !incompatible.is_empty() {
        return Err(incompatible);
    }
    let mut changed = Vec::new();
    if have.ack_wait != want.ack_wait {
        changed.push(format!(
            "ack_wait {:?} -> {:?}",
            have.ack_wait, want.ack_wait
        ));
    }
    // The server reports an unlimited max_deliver as -1.
    let norm = |v: i64| if v <= 0 { -1 } else { v };
    if norm(have.max_deliver) != norm(want.max_deliver) {
        changed.push(format!(
            "max_deliver {} -> {}",
            limit(norm(have.max_deliver)),
            limit(norm(want.max_deliver))
        ));
    }
    if have.max_ack_pending != want.max_ack_pending {
        changed.push(format!(
            "max_ack_pending {} -> {}",
            have.max_ack_pending, want.max_ack_pending
        ));
    }
    if changed.is_empty() {
        Ok(None)
    } else {
        let mut next = want.clone();
        // Keep what the server set and parcours does not manage.
        next.max_waiting = have.max_waiting;
        next.replay_policy = have.replay_policy;
        Ok(Some((next, changed)))
    }
}

/// JetStream's refusals of a stream that retrying cannot mend: the settings asked for, or
/// the server's own set-up, must change.
const REFUSED_FOR_GOOD: [ErrorCode; 5] = [
    // `replicas` above 1 on a server outside a cluster.
    ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
    ErrorCode::JETSTREAM_NOT_ENABLED,
    ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
    // Another stream holds parcours' subjects.
    ErrorCode::STREAM_SUBJECT_OVERLAP,
    ErrorCode::STREAM_INVALID_CONFIG,
];

/// A failed call about a stream: a refusal for good is a settings error (permanent), the
/// rest (timeouts, no leader yet, too few nodes up for the replicas) may pass.
fn stream_error(context: String, code: Option<ErrorCode>, e: impl std::fmt::Display) -> NatsError {
    match code {
        Some(code) if REFUSED_FOR_GOOD.contains(&code) => {
            NatsError::Config(format!("{context}: the server refuses it: {e}"))
        }
        _ => NatsError::JetStream(format!("{context}: {e}")),
    }
}

/// The JetStream error code of a refused stream creation or update, if the server sent one.
fn create_code(e: &async_nats::jetstream::context::CreateStreamError) -> Option<ErrorCode> {
    match e.kind() {
        CreateStreamErrorKind::JetStream(e) => Some(e.error_code()),
        _ => None,
    }
}

impl Nats {
    /// [`Nats::ensure_streams`], then [`Nats::ensure_fhir`], as an engine starts. While
    /// JetStream cannot answer yet — a cluster electing its leaders just after its nodes
    /// started, a node restarting, too few nodes up for the streams' replicas — each
    /// failed try is logged and the whole is tried again (after 0.1 s, doubling up to
    /// 5 s) for as long as it takes (the caller stops waiting by dropping the future);
    /// what a person must fix (settings the server refuses, a stream or consumer
    /// parcours cannot use) is returned at once. Returns what was done to each stream,
    /// `PARCOURS_FHIR` last.
    pub async fn ensure_topology(&self) -> Result<Vec<(String, Ensured)>, NatsError> {
        let mut backoff = Backoff::new();
        loop {
            let tried = async {
                let mut report = self.ensure_streams().await?;
                let (_, fhir) = self.ensure_fhir().await?;
                report.push((STREAM_FHIR.to_string(), fhir));
                Ok::<_, NatsError>(report)
            };
            match tried.await {
                Err(e) if !e.is_permanent() => {
                    tracing::warn!(
                        error = %e,
                        retry_in = ?backoff.next(),
                        "JetStream not ready (a cluster electing its leaders? a server \
                         restarting?); trying again"
                    );
                    backoff.sleep().await;
                }
                done => return done,
            }
        }
    }

    /// Create `PARCOURS_IN`, `PARCOURS_OUT` and `PARCOURS_DLQ`, or check them; returns what
    /// was done to each, in that order.
    pub async fn ensure_streams(&self) -> Result<Vec<(String, Ensured)>, NatsError> {
        let mut report = Vec::new();
        for want in stream_configs(&self.config().streams) {
            let name = want.name.clone();
            let outcome = self.ensure_stream(want).await?;
            match &outcome {
                Ensured::Created => tracing::info!(stream = %name, "stream created"),
                Ensured::Unchanged => tracing::debug!(stream = %name, "stream checked"),
                Ensured::Updated(c) => {
                    tracing::info!(stream = %name, changes = %c.join(", "), "stream updated")
                }
            }
            report.push((name, outcome));
        }
        Ok(report)
    }

    async fn ensure_stream(&self, want: stream::Config) -> Result<Ensured, NatsError> {
        let js = self.jetstream();
        let info: Response<stream::Info> = js
            .request(format!("STREAM.INFO.{}", want.name), &json!({}))
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {}: {e}", want.name)))?;
        match info {
            Response::Err { error } if error.error_code().0 == STREAM_NOT_FOUND => {
                js.create_stream(want.clone()).await.map_err(|e| {
                    stream_error(format!("creating {}", want.name), create_code(&e), &e)
                })?;
                Ok(Ensured::Created)
            }
            Response::Err { error } => Err(stream_error(
                format!("stream {}", want.name),
                Some(error.error_code()),
                &error,
            )),
            Response::Ok(info) => match compare_stream(&info.config, &want) {
                Err(differences) => Err(NatsError::IncompatibleStream {
                    stream: want.name,
                    differences,
                }),
                Ok(None) => Ok(Ensured::Unchanged),
                Ok(Some((next, changed))) => {
                    js.update_stream(next).await.map_err(|e| {
                        stream_error(
                            format!("updating {} ({})", want.name, changed.join(", ")),
                            create_code(&e),
                            &e,
                        )
                    })?;
                    Ok(Ensured::Updated(changed))
                }
            },
        }
    }

    /// Create the durable consumer of a partition, or check it (and bring its updatable
    /// settings to the configured values).
    pub async fn ensure_consumer(
        &self,
        partition: u16,
    ) -> Result<(PullConsumer, Ensured), NatsError> {
        let partitions = self.config().partitions;
        if partition >= partitions {
            return Err(NatsError::Config(format!(
                "partition {partition} does not exist: there are {partitions}"
            )));
        }
        let want = consumer_config(&self.config().consumer, partition);
        self.ensure_pull(STREAM_IN, consumer_name(partition), want)
            .await
    }

    /// Create the FHIR stream and its consumer, or check them (production, beside
    /// [`Nats::ensure_streams`]): the consumer, and what was done to the stream (as
    /// [`Nats::ensure_streams`] reports each of its streams).
    pub async fn ensure_fhir(&self) -> Result<(PullConsumer, Ensured), NatsError> {
        let want = fhir_stream_config(&self.config().streams);
        let stream = self.ensure_stream(want).await?;
        match &stream {
            Ensured::Created => tracing::info!(stream = STREAM_FHIR, "stream created"),
            Ensured::Unchanged => tracing::debug!(stream = STREAM_FHIR, "stream checked"),
            Ensured::Updated(c) => {
                tracing::info!(stream = STREAM_FHIR, changes = %c.join(", "), "stream updated")
            }
        }
        let want = fhir_consumer_config(&self.config().consumer);
        let (consumer, _) = self
            .ensure_pull(STREAM_FHIR, FHIR_CONSUMER.into(), want)
            .await?;
        Ok((consumer, stream))
    }

    async fn ensure_pull(
        &self,
        stream: &str,
        name: String,
        want: consumer::pull::Config,
    ) -> Result<(PullConsumer, Ensured), NatsError> {
        let js = self.jetstream();
        let info: Response<consumer::Info> = js
            .request(format!("CONSUMER.INFO.{stream}.{name}"), &json!({}))
            .await
            .map_err(|e| NatsError::JetStream(format!("consumer {name}: {e}")))?;
        let (config, outcome) = match info {
            Response::Err { error } if error.error_code().0 == CONSUMER_NOT_FOUND => {
                (want, Ensured::Created)
            }
            Response::Err { error } => {
                return Err(NatsError::JetStream(format!("consumer {name}: {error}")));
            }
            Response::Ok(info) => match compare_consumer(&info.config, &want) {
                Err(differences) => {
                    return Err(NatsError::IncompatibleConsumer {
                        stream: stream.into(),
                        consumer: name,
                        differences,
                    });
                }
                Ok(None) => {
                    let consumer = js
                        .get_consumer_from_stream(&name, stream)
                        .await
                        .map_err(|e| NatsError::JetStream(format!("consumer {name}: {e}")))?;
                    return Ok((consumer, Ensured::Unchanged));
                }
                Ok(Some((next, changed))) => (next, Ensured::Updated(changed)),
            },
        };
        let consumer = js
            .create_consumer_on_stream(config, stream)
            .await
            .map_err(|e| NatsError::JetStream(format!("creating consumer {name}: {e}")))?;
        match &outcome {
            Ensured::Created => tracing::info!(consumer = %name, "consumer created"),
            Ensured::Updated(c) => {
                tracing::info!(consumer = %name, changes = %c.join(", "), "consumer updated")
            }
            Ensured::Unchanged => {}
        }
        Ok((consumer, outcome))
    }

    /// Before a new owner consumes a partition: if the partition's consumer still has
    /// messages delivered but not acknowledged (their engine died with them), delete it,
    /// so that the consumer created again delivers what is left in the work-queue stream
    /// from the oldest message — a patient's unacknowledged event first, not after the
    /// newer ones (which is what waiting for the redelivery after `ack_wait` would do).
    /// Returns whether it was reset.
    pub async fn take_over_partition(&self, partition: u16) -> Result<bool, NatsError> {
        match self.partition_consumer(partition).await? {
            Some(info) if info.num_ack_pending > 0 => {
                self.reset_partition_consumer(partition).await?;
                tracing::info!(
                    consumer = %info.name,
                    pending = info.num_ack_pending,
                    "consumer reset on take-over: unacknowledged messages come first again"
                );
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A partition's consumer as the server sees it (`None` when it does not exist).
    async fn partition_consumer(
        &self,
        partition: u16,
    ) -> Result<Option<consumer::Info>, NatsError> {
        let name = consumer_name(partition);
        let info: Response<consumer::Info> = self
            .jetstream()
            .request(format!("CONSUMER.INFO.{STREAM_IN}.{name}"), &json!({}))
            .await
            .map_err(|e| NatsError::JetStream(format!("consumer {name}: {e}")))?;
        match info {
            Response::Ok(info) => Ok(Some(info)),
            Response::Err { error } if error.error_code().0 == CONSUMER_NOT_FOUND => Ok(None),
            Response::Err { error } => {
                Err(NatsError::JetStream(format!("consumer {name}: {error}")))
            }
        }
    }

    /// Delete a partition's consumer, so that the one created again
    /// ([`Nats::ensure_consumer`]) delivers what is left of the partition in the work-queue
    /// stream from its oldest message.
    pub async fn reset_partition_consumer(&self, partition: u16) -> Result<(), NatsError> {
        let name = consumer_name(partition);
        self.jetstream()
            .delete_consumer_from_stream(&name, STREAM_IN)
            .await
            .map_err(|e| NatsError::JetStream(format!("deleting consumer {name}: {e}")))?;
        Ok(())
    }

    /// The messages a partition's consumer will never deliver, oldest first: the consumer
    /// has nothing left to deliver and nothing awaiting an ack, yet the work-queue stream
    /// still holds messages of the partition at or below the last sequence it delivered.
    /// Seen on NATS 2.9.10 with engines killed every second (benches/README.md, "Chaos
    /// acceptance"): the server's look-ups by subject filter no longer found the message —
    /// neither the consumer's next delivery nor a `MSG.GET` by the partition's filter —
    /// while a read by its sequence did. So the stream is walked here by sequence (`next
    /// by subject` `>`, which reads every message in order), from its oldest message, at
    /// most 64 messages (`LOST_SCAN`), up to the last sequence the consumer delivered. A
    /// lost message stays among the oldest while the rest of the stream flows past it.
    /// Meant for an idle partition (no fetch of its owner outstanding, every answer
    /// acknowledged): an ack still on its way shows as awaiting, never as lost.
    pub async fn lost_messages(&self, partition: u16) -> Result<Vec<u64>, NatsError> {
        let mut lost = Vec::new();
        let Some(info) = self.partition_consumer(partition).await? else {
            return Ok(lost);
        };
        if info.num_ack_pending > 0 || info.num_pending > 0 {
            return Ok(lost);
        }
        let delivered = info.delivered.stream_sequence;
        let stream = self.inbound_stream().await?;
        let mut from = 1;
        for _ in 0..LOST_SCAN {
            match stream.get_first_raw_message_by_subject(">", from).await {
                Ok(m) if m.sequence > delivered => break,
                Ok(m) => {
                    if parse_inbound(m.subject.as_str()).is_some_and(|i| i.partition == partition) {
                        lost.push(m.sequence);
                    }
                    from = m.sequence + 1;
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(NatsError::JetStream(format!(
                        "{STREAM_IN}'s messages from sequence {from}: {e}"
                    )));
                }
            }
        }
        Ok(lost)
    }

    /// Messages of the inbound stream no partition's consumer takes, oldest first, each
    /// with why: a subject that is not `parcours.<tenant>.in.p<NN>.<type>` (the stream
    /// takes `parcours.*.in.>`), or a partition at or above this deployment's count (a
    /// publisher configured with more partitions than the engines). Nothing would ever
    /// consume them, so they stay among the stream's oldest messages: the first
    /// `LOST_SCAN` are looked at.
    pub async fn orphan_messages(
        &self,
    ) -> Result<Vec<(async_nats::jetstream::message::StreamMessage, String)>, NatsError> {
        let partitions = self.config().partitions;
        let stream = self.inbound_stream().await?;
        let mut orphans = Vec::new();
        let mut from = 1;
        for _ in 0..LOST_SCAN {
            let m = match stream.get_first_raw_message_by_subject(">", from).await {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(NatsError::JetStream(format!(
                        "{STREAM_IN}'s messages from sequence {from}: {e}"
                    )));
                }
            };
            from = m.sequence + 1;
            let why = match parse_inbound(m.subject.as_str()) {
                None => Some(
                    "the subject is not parcours.<tenant>.in.p<NN>.<event type>: no engine \
                     consumes it"
                        .to_owned(),
                ),
                Some(i) if i.partition >= partitions => Some(format!(
                    "published on partition p{:02}, but this deployment has {partitions} \
                     partitions (p00 to p{:02}): no engine consumes it; publishers and \
                     engines must use the same partition count",
                    i.partition,
                    partitions - 1
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                orphans.push((m, why));
            }
        }
        Ok(orphans)
    }

    /// Delete a message of the inbound stream (one dead-lettered without a delivery:
    /// [`Nats::orphan_messages`]).
    pub async fn delete_inbound(&self, sequence: u64) -> Result<(), NatsError> {
        self.inbound_stream()
            .await?
            .delete_message(sequence)
            .await
            .map(|_| ())
            .map_err(|e| {
                NatsError::JetStream(format!("deleting {STREAM_IN}'s message {sequence}: {e}"))
            })
    }

    /// Publish a message of the inbound stream again, at its end, and delete it where it
    /// was: for a message its partition's consumer will never deliver
    /// ([`Nats::lost_messages`]). Its copy keeps the subject, the payload and the headers,
    /// with a message id of its own (`lost-PARCOURS_IN-<sequence>`: a second copy within
    /// the duplicate window is dropped; after `parcours-linked:` for a copy made for a
    /// linked national key, which stays one) and [`HEADER_LOST_SEQUENCE`]; a message a
    /// forwarder waits on keeps its event id in `Parcours-Event-Id`. The original is
    /// deleted only once the copy is stored; were both ever delivered, the event's id makes
    /// the second a duplicate. Returns the copy's sequence (`None`: the message had gone
    /// meanwhile, delivered after all).
    pub async fn publish_lost_again(&self, sequence: u64) -> Result<Option<u64>, NatsError> {
        let stream = self.inbound_stream().await?;
        let m = match stream.get_raw_message(sequence).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(e) => {
                return Err(NatsError::JetStream(format!(
                    "{STREAM_IN}'s message {sequence}: {e}"
                )));
            }
        };
        let mut headers = m.headers;
        let original_id = headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned());
        // What the original's id told the consumer stays told: a copy for a linked
        // national key stays recognisable as one (`relink::is_copy`), and a forwarder
        // waiting for the owner's reply hears of its event by its id (the reply names
        // `Parcours-Event-Id`, else the message id).
        let copy_of_link = original_id
            .as_deref()
            .is_some_and(|id| id.starts_with(crate::relink::COPY_ID_PREFIX));
        let prefix = if copy_of_link {
            crate::relink::COPY_ID_PREFIX
        } else {
            ""
        };
        if let Some(id) = original_id.filter(|_| {
            headers.get(crate::publish::HEADER_REPLY).is_some()
                && headers.get(crate::publish::HEADER_EVENT_ID).is_none()
        }) {
            headers.insert(crate::publish::HEADER_EVENT_ID, id.as_str());
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{prefix}lost-{STREAM_IN}-{sequence}").as_str(),
        );
        headers.insert(HEADER_LOST_SEQUENCE, sequence.to_string().as_str());
        let stored = self
            .jetstream()
            .publish_with_headers(m.subject, headers, m.payload)
            .await
            .map_err(|e| NatsError::JetStream(format!("publishing message {sequence} again: {e}")))?
            .await
            .map_err(|e| {
                NatsError::JetStream(format!("publishing message {sequence} again: {e}"))
            })?;
        if let Err(e) = stream.delete_message(sequence).await {
            // Gone meanwhile (delivered and acknowledged after all), or to be deleted at the
            // next audit: the copy is a duplicate of it either way.
            tracing::debug!(sequence, error = %e, "lost message not deleted");
        }
        Ok(Some(stored.sequence))
    }

    async fn inbound_stream(&self) -> Result<stream::Stream<()>, NatsError> {
        self.jetstream()
            .get_stream_no_info(STREAM_IN)
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {STREAM_IN}: {e}")))
    }

    /// A partition consumer's backlog: messages not delivered yet, and delivered but not
    /// acknowledged (`None` when the consumer does not exist yet). For metrics.
    pub async fn consumer_lag(&self, partition: u16) -> Result<Option<(u64, u64)>, NatsError> {
        Ok(self
            .partition_consumer(partition)
            .await?
            .map(|info| (info.num_pending, info.num_ack_pending as u64)))
    }

    /// Ensure every partition's consumer (what a deployment does once, or each engine for
    /// the partitions it owns through [`Nats::ensure_consumer`]).
    pub async fn ensure_consumers(&self) -> Result<Vec<(String, Ensured)>, NatsError> {
        let mut report = Vec::new();
        for p in 0..self.config().partitions {
            let (_, outcome) = self.ensure_consumer(p).await?;
            report.push((consumer_name(p), outcome));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_differences_are_split_into_refused_and_updatable() {
        let [want, _, _] = stream_configs(&StreamSettings::default());
        let mut have = want.clone();
        assert_eq!(compare_stream(&have, &want), Ok(None));
        have.max_bytes = 1 << 30;
        have.duplicate_window = Duration::from_secs(60);
        let Ok(Some((next, changed))) = compare_stream(&have, &want) else {
            panic!("updatable")
        };
        assert_eq!(next.max_bytes, -1);
        assert_eq!(next.duplicate_window, Duration::from_secs(120));
        assert_eq!(changed.len(), 2, "{changed:?}");
        have.subjects = vec!["legacy.>".into()];
        have.retention = RetentionPolicy::Limits;
        let Err(refused) = compare_stream(&have, &want) else {
            panic!("refused")
        };
        assert!(refused[0].contains("subjects") && refused[0].contains("legacy.>"));
        assert!(refused[1].contains("retention is Limits, expected WorkQueue"));
    }
}
