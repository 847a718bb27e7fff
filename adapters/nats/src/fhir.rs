//! FHIR R4 JSON over NATS: `parcours.<tenant>.fhir.in` → `parcours-fhir` → the intake.
//!
//! Hospitals publish a FHIR resource or Bundle (JSON, the same bodies as `POST
//! /fhir/{tenant}`) to `parcours.<tenant>.fhir.in`, stored in the work-queue stream
//! `PARCOURS_FHIR`. The subject names the tenant only: the patient is named inside the
//! resource, and becomes a pseudonymous subject key in the mapping.
//!
//! One loop ([`FhirConsumer::run`]) reads the durable consumer `fhir-in`; in production
//! it runs on the owner of partition 0 only, so one engine at a time maps FHIR messages,
//! in order. Each message is mapped by [`parcours_fhir::ingest`] — the mapping of the
//! HTTP routes — with the tenant of its subject and a source named `nats`; the events of
//! a fetched batch go, in order, in one [`Ingest::submit`] to the intake, which in
//! production forwards each to its partition's owner and waits for its commit. Then:
//!
//! | outcome | what the consumer does |
//! |---|---|
//! | every event committed or a duplicate (a resource sent again), or no event (a resource parcours records nothing for) | ack, awaiting the server's confirmation |
//! | XML (a `Content-Type` naming XML, or a body starting with `<`), invalid JSON, an unsupported resource, an unresolvable patient, a subject that is not `parcours.<tenant>.fhir.in` | at once, no retry: to `parcours.<tenant>.dlq` with the reason in `Parcours-Reason`, the OperationOutcome in `Parcours-Outcome`, stage `fhir`; then term |
//! | an event refused by the engine | the whole message to the DLQ (stage `refused`, the reasons); the other events stay committed (a corrected message sent again finds them as duplicates) |
//! | queued by a forwarding intake (not committed within its wait), the engine unavailable | nak, and the loop pauses (the retry delay doubling per delivery); counted towards `max_attempts` only when the store was healthy before |
//! | engine shutting down | nak, the loop ends |
//!
//! With [`FhirSettings::dead_letters`] (what `parcours serve` sets: the log, whose dead
//! letters `parcours-vault` seals), a refused body is kept there, not in the DLQ stream:
//! a FHIR body names the patient. The DLQ message then has an empty body and the dead
//! letter's id in `Parcours-Dead-Letter`; a body that cannot be kept stays in the stream
//! and is tried again.
//!
//! A message is acknowledged only after each of its events is committed. Without a
//! `Content-Type` header the body must be JSON; with one, it must be
//! `application/fhir+json` or `application/json`. Logs name stream sequences and
//! stages, never payloads or reasons.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use parcours_core::events::Event;
use parcours_fhir::{Context, Refusal};
use parcours_identity::Pseudonymizer;
use parcours_runtime::{IngestOutcome, SubmitError};
use parcours_store::{DeadLetter, EventStore};
use tokio_util::sync::CancellationToken;

use crate::connection::{Nats, NatsStats};
use crate::consumer::{Ingest, fetch_batch};
use crate::error::NatsError;
use crate::publish::{
    HEADER_DELIVERIES, HEADER_ORIGIN_SEQUENCE, HEADER_ORIGIN_SUBJECT, HEADER_REASON, HEADER_STAGE,
    Outgoing, header_text, publish_pipelined,
};
use crate::subject::{dlq_subject, parse_fhir, valid_tenant};
use crate::topology::STREAM_FHIR;

/// Header of a FHIR dead letter: the OperationOutcome (compact JSON).
pub const HEADER_OUTCOME: &str = "Parcours-Outcome";
/// Header of a FHIR dead letter whose body is kept in the log's dead letters: its id
/// there (the DLQ message then has an empty body).
pub const HEADER_DEAD_LETTER: &str = "Parcours-Dead-Letter";

/// Where the bodies of refused FHIR messages are kept instead of the DLQ stream: a FHIR
/// body names the patient, and the log's dead letters can be sealed (`parcours-vault`)
/// and erased. Every [`EventStore`] is one.
pub trait DeadLetters: Send + Sync + std::fmt::Debug + 'static {
    /// Keep a dead letter; its id.
    fn keep(
        &self,
        letter: DeadLetter,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>>;
}

impl<S: EventStore + std::fmt::Debug + 'static> DeadLetters for S {
    fn keep(
        &self,
        letter: DeadLetter,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move { self.dead_letter(letter).await.map_err(|e| e.to_string()) })
    }
}

/// The log's dead letter of a refused message: its body, where it came from, why.
pub(crate) fn body_of(m: &Message, tenant: Option<String>, reason: String) -> DeadLetter {
    DeadLetter {
        source: format!("nats:{}", m.subject),
        tenant,
        reason,
        payload: m.payload.to_vec(),
    }
}

/// Keep the bodies of refused messages in `keeper` before their DLQ messages go out (the
/// FHIR consumer's and the partition consumers'): each letter's log dead letter from
/// `record`, its id given to the letter by `kept_as`. Returns the letters kept, and the
/// indices of those not kept with the error: their messages stay in the stream and are
/// tried again, never dropped.
pub(crate) async fn keep_bodies<L>(
    keeper: &dyn DeadLetters,
    dead: Vec<(usize, L)>,
    record: impl Fn(usize, &L) -> DeadLetter,
    kept_as: impl Fn(&mut L, u64),
) -> (Vec<(usize, L)>, Vec<(usize, String)>) {
    let mut kept = Vec::with_capacity(dead.len());
    let mut failed = Vec::new();
    for (i, mut letter) in dead {
        match keeper.keep(record(i, &letter)).await {
            Ok(id) => {
                kept_as(&mut letter, id);
                kept.push((i, letter));
            }
            Err(e) => failed.push((i, e)),
        }
    }
    (kept, failed)
}

/// How FHIR messages name and pseudonymise patients: the settings of the HTTP routes.
#[derive(Clone, Debug)]
pub struct FhirSettings {
    /// The key that turns patient identifiers into subject keys.
    pub pseudonymizer: Pseudonymizer,
    /// The public base URL of the API: a plain `Patient/123` reference becomes a local
    /// identifier under `<base>/fhir/<tenant>`, as it does over HTTP.
    pub base_url: String,
    /// Accept test INS identities (test platforms only).
    pub allow_test_ins: bool,
    /// Keep refused bodies here (the DLQ message then carries the reason and the id);
    /// `None`: the DLQ message carries the body.
    pub dead_letters: Option<Arc<dyn DeadLetters>>,
}

impl FhirSettings {
    fn context(&self, tenant: &str) -> Context {
        Context::new(
            tenant,
            "nats",
            format!("{}/fhir/{tenant}", self.base_url.trim_end_matches('/')),
            self.pseudonymizer.clone(),
        )
        .allow_test_ins(self.allow_test_ins)
    }
}

/// Why a message is dead-lettered.
#[derive(Debug)]
struct Dead {
    stage: &'static str,
    reason: String,
    outcome: Option<String>,
    tenant: Option<String>,
    /// The id of the body kept in the log's dead letters.
    kept: Option<u64>,
}

impl Dead {
    fn refusal(r: &Refusal, tenant: Option<String>) -> Dead {
        Dead {
            stage: "fhir",
            reason: r.to_string(),
            outcome: outcome_header(r),
            tenant,
            kept: None,
        }
    }
}

/// The OperationOutcome of `Parcours-Outcome`, whole JSON within a header's size
/// (`MAX_REASON`): every issue, else the first alone, else none (the reason header still
/// says why) — never JSON cut short.
fn outcome_header(r: &Refusal) -> Option<String> {
    let whole = r.to_json().to_string();
    if whole.len() <= crate::publish::MAX_REASON {
        return Some(whole);
    }
    let first = Refusal {
        status: r.status,
        issues: r.issues.iter().take(1).cloned().collect(),
    }
    .to_json()
    .to_string();
    (first.len() <= crate::publish::MAX_REASON).then_some(first)
}

enum Decision {
    Ack,
    Dead(Dead),
    Retry { reason: String, counted: bool },
    Release,
}

/// Map one message to its tenant's events, or say why it cannot be used.
fn map(msg: &Message, settings: &FhirSettings) -> Result<(String, Vec<Event>), Dead> {
    let Some(tenant) = parse_fhir(msg.subject.as_str()).filter(|t| valid_tenant(t)) else {
        return Err(Dead {
            stage: "fhir",
            reason: "the subject does not follow parcours.<tenant>.fhir.in".into(),
            outcome: None,
            tenant: None,
            kept: None,
        });
    };
    let tenant = tenant.to_string();
    let content_type = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str().to_string());
    if let Some(ct) = content_type.as_deref() {
        parcours_fhir::check_content_type(Some(ct))
            .map_err(|r| Dead::refusal(&r, Some(tenant.clone())))?;
    }
    let ingest = parcours_fhir::ingest(&msg.payload, &settings.context(&tenant))
        .map_err(|r| Dead::refusal(&r, Some(tenant.clone())))?;
    Ok((tenant, ingest.events))
}

/// Consumes `PARCOURS_FHIR` and feeds the mapped events to the intake.
#[derive(Clone, Debug)]
pub struct FhirConsumer<I> {
    nats: Nats,
    ingest: I,
    settings: FhirSettings,
}

impl<I: Ingest> FhirConsumer<I> {
    /// A consumer mapping with `settings` and submitting to `ingest` (in production the
    /// forwarding handle: events go to their partition's owner).
    pub fn new(nats: Nats, ingest: I, settings: FhirSettings) -> FhirConsumer<I> {
        FhirConsumer {
            nats,
            ingest,
            settings,
        }
    }

    /// Consume until `token` is cancelled or the engine shuts down; transient failures
    /// are retried with backoff, an error is returned only for what a person must fix
    /// (the stream or consumer exists with settings parcours cannot use).
    pub async fn run(&self, token: CancellationToken) -> Result<(), NatsError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ensured = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = self.nats.ensure_fhir() => r,
            };
            let consumer = match ensured {
                Ok((c, _)) => c,
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "FHIR consumer not ready; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            tracing::info!(stream = STREAM_FHIR, "consuming FHIR messages");
            loop {
                if !self.nats.is_connected() {
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = self.nats.wait_connected() => {}
                    }
                }
                let fetched = tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    r = fetch_batch(&self.nats, &consumer, &token, self.nats.config().consumer.batch) => r,
                };
                match fetched {
                    Err(e) => {
                        tracing::warn!(error = %e, "FHIR fetch failed; retrying");
                        tokio::select! {
                            _ = token.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        break;
                    }
                    Ok(msgs) if msgs.is_empty() => {}
                    Ok(msgs) => {
                        backoff = Duration::from_millis(100);
                        let (stop, pause) = self.process(msgs).await;
                        if stop {
                            tracing::info!("engine shutting down; FHIR consumer stops");
                            return Ok(());
                        }
                        if let Some(pause) = pause {
                            tokio::select! {
                                _ = token.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(pause) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// Map, submit and acknowledge one batch: (stop, pause before the next fetch).
    async fn process(&self, msgs: Vec<Message>) -> (bool, Option<Duration>) {
        let stats = self.nats.stats();
        NatsStats::add(&stats.fetched, msgs.len());
        let mut decisions: Vec<Option<Decision>> = Vec::with_capacity(msgs.len());
        // Per message: the range of its events in the submission.
        let mut spans: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            match map(msg, &self.settings) {
                Ok((_, evs)) if evs.is_empty() => decisions.push(Some(Decision::Ack)),
                Ok((_, evs)) => {
                    let start = events.len();
                    events.extend(evs);
                    spans.push((i, start..events.len()));
                    decisions.push(None);
                }
                Err(dead) => decisions.push(Some(Decision::Dead(dead))),
            }
        }
        let mut stop = false;
        if !events.is_empty() {
            let was_failing = self.ingest.store_failing();
            match self.ingest.submit(events).await {
                Ok(results) => {
                    for (i, range) in &spans {
                        let mine = results.get(range.clone()).unwrap_or(&[]);
                        let refused: Vec<String> = mine
                            .iter()
                            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                            .collect();
                        let all_committed = mine.len() == range.len()
                            && mine.iter().all(|r| {
                                matches!(
                                    r,
                                    Ok(IngestOutcome::Committed { .. }
                                        | IngestOutcome::CommittedByOwner { .. }
                                        | IngestOutcome::Duplicate)
                                )
                            });
                        decisions[*i] = Some(if !refused.is_empty() {
                            Decision::Dead(Dead {
                                stage: "refused",
                                reason: format!("the engine refused it: {}", refused.join("; ")),
                                outcome: None,
                                tenant: parse_fhir(msgs[*i].subject.as_str()).map(str::to_string),
                                kept: None,
                            })
                        } else if all_committed {
                            NatsStats::add(&stats.committed, range.len());
                            Decision::Ack
                        } else {
                            Decision::Retry {
                                reason: "queued for its owner, not committed yet".into(),
                                counted: false,
                            }
                        });
                    }
                }
                Err(SubmitError::ShuttingDown) => {
                    for (i, _) in &spans {
                        decisions[*i] = Some(Decision::Release);
                    }
                    stop = true;
                }
                Err(SubmitError::Unavailable(reason)) => {
                    for (i, _) in &spans {
                        decisions[*i] = Some(Decision::Retry {
                            reason: format!("the engine could not commit it: {reason}"),
                            counted: !was_failing && spans.len() == 1,
                        });
                    }
                    self.ingest.probe();
                }
            }
        }
        let pause = self.finish(&msgs, decisions).await;
        (stop, pause)
    }

    async fn finish(&self, msgs: &[Message], decisions: Vec<Option<Decision>>) -> Option<Duration> {
        let k = &self.nats.config().consumer;
        let stats = self.nats.stats();
        let mut pause: Option<Duration> = None;
        let mut ops: Vec<(usize, AckKind, bool)> = Vec::new();
        let mut dead: Vec<(usize, Dead)> = Vec::new();
        for (i, decision) in decisions.into_iter().enumerate() {
            let (delivered, _) = info(&msgs[i]);
            match decision {
                Some(Decision::Ack) => ops.push((i, AckKind::Ack, true)),
                Some(Decision::Dead(d)) => dead.push((i, d)),
                Some(Decision::Retry { reason, counted })
                    if counted && delivered >= u64::from(k.max_attempts) =>
                {
                    dead.push((
                        i,
                        Dead {
                            stage: "attempts",
                            reason: format!(
                                "still failing at delivery {delivered} (max_attempts {}): {reason}",
                                k.max_attempts
                            ),
                            outcome: None,
                            tenant: parse_fhir(msgs[i].subject.as_str()).map(str::to_string),
                            kept: None,
                        },
                    ));
                }
                Some(Decision::Retry { .. }) => {
                    NatsStats::add(&stats.retried, 1);
                    let d = k.retry_delay(delivered);
                    pause = Some(pause.map_or(d, |p| p.max(d)));
                    ops.push((i, AckKind::Nak(None), false));
                }
                Some(Decision::Release) | None => ops.push((i, AckKind::Nak(None), false)),
            }
        }
        if let Some(keeper) = &self.settings.dead_letters {
            let (kept, failed) = keep_bodies(
                keeper.as_ref(),
                dead,
                |i, d| body_of(&msgs[i], d.tenant.clone(), d.reason.clone()),
                |d, id| d.kept = Some(id),
            )
            .await;
            for (i, e) in failed {
                let (delivered, sequence) = info(&msgs[i]);
                tracing::warn!(sequence, error = %e, "dead letter not stored; will retry");
                let d = k.retry_delay(delivered);
                pause = Some(pause.map_or(d, |p| p.max(d)));
                ops.push((i, AckKind::Nak(None), false));
            }
            dead = kept;
        }
        if !dead.is_empty() {
            let out: Vec<Outgoing> = dead
                .iter()
                .map(|(i, d)| dead_letter(&msgs[*i], d))
                .collect();
            let results = publish_pipelined(&self.nats, out).await;
            for ((i, d), r) in dead.into_iter().zip(results) {
                let (delivered, sequence) = info(&msgs[i]);
                match r {
                    Ok(_) => {
                        // The reason names places and rules, never a value sent.
                        tracing::warn!(
                            stream = STREAM_FHIR,
                            sequence,
                            deliveries = delivered,
                            stage = d.stage,
                            tenant = d.tenant.as_deref().unwrap_or("-"),
                            reason = %d.reason,
                            "FHIR message dead-lettered"
                        );
                        NatsStats::add(&stats.dead_lettered, 1);
                        parcours_runtime::metrics::dead_letter("nats");
                        ops.push((i, AckKind::Term, true));
                    }
                    Err(e) => {
                        tracing::warn!(sequence, error = %e, "dead letter not stored; will retry");
                        let d = k.retry_delay(delivered);
                        pause = Some(pause.map_or(d, |p| p.max(d)));
                        ops.push((i, AckKind::Nak(None), false));
                    }
                }
            }
        }
        let failures = futures::stream::iter(ops)
            .map(|(i, kind, confirm)| async move {
                let m = &msgs[i];
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
            tracing::warn!(failures, "acknowledgements not confirmed");
            NatsStats::add(&stats.ack_failures, failures);
        }
        pause
    }
}

/// (deliveries, stream sequence) of a message.
fn info(m: &Message) -> (u64, u64) {
    m.info().map_or((1, 0), |i| {
        (
            u64::try_from(i.delivered).unwrap_or(1).max(1),
            i.stream_sequence,
        )
    })
}

/// The dead letter of a FHIR message: its body, the reason and OperationOutcome in
/// headers.
fn dead_letter(m: &Message, d: &Dead) -> Outgoing {
    let (delivered, sequence) = info(m);
    let mut headers = HeaderMap::new();
    if sequence > 0 {
        headers.insert(
            NATS_MESSAGE_ID,
            header_text(&format!("dlq-{STREAM_FHIR}-{sequence}")),
        );
    }
    headers.insert(HEADER_REASON, header_text(&d.reason));
    headers.insert(HEADER_STAGE, d.stage);
    if let Some(o) = &d.outcome {
        headers.insert(HEADER_OUTCOME, header_text(o));
    }
    headers.insert(HEADER_ORIGIN_SUBJECT, header_text(m.subject.as_str()));
    headers.insert(HEADER_ORIGIN_SEQUENCE, sequence.to_string());
    headers.insert(HEADER_DELIVERIES, delivered.to_string());
    if let Some(ct) = m.headers.as_ref().and_then(|h| h.get("Content-Type")) {
        headers.insert("Content-Type", ct.clone());
    }
    let payload = match d.kept {
        Some(id) => {
            headers.insert(HEADER_DEAD_LETTER, id.to_string());
            bytes::Bytes::new()
        }
        None => m.payload.clone(),
    };
    Outgoing {
        subject: dlq_subject(d.tenant.as_deref()),
        headers,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use parcours_fhir::{IssueType, Refusal};

    fn one(n: usize) -> Refusal {
        Refusal::bad_request(IssueType::Invalid, "x".repeat(n)).at("Bundle.entry[0]")
    }

    #[test]
    fn the_outcome_header_is_whole_json_or_absent() {
        let short = one(10);
        assert_eq!(
            super::outcome_header(&short),
            Some(short.to_json().to_string())
        );
        let many = Refusal::merge((0..40).map(|_| one(60)).collect()).expect("refusals");
        assert!(many.to_json().to_string().len() > crate::publish::MAX_REASON);
        let first = super::outcome_header(&many).expect("the first issue fits");
        let v: serde_json::Value = serde_json::from_str(&first).expect("whole JSON");
        assert_eq!(v["issue"].as_array().map(Vec::len), Some(1));
        assert_eq!(super::outcome_header(&one(2000)), None);
    }
}
