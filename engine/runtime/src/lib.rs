//! parcours-runtime: the event-sourced runtime around the pure core.
//!
//! [`Engine::ingest_batch`] takes inbound canonical events in order and makes **one
//! atomic commit** of them all:
//! 1. events whose id is already in the log are acknowledged as duplicates, or refused
//!    when the id holds another event ([`resend`]; the service's group commits leave
//!    finding them to the commit: [`Engine::prepare_batch`]);
//! 2. each event is routed to its patient's instances (enrolling where a pathway's rule
//!    matches; several pathways per patient) — patients not in memory are loaded from
//!    their snapshot and the records after it;
//! 3. `decide` runs for each instance against a working copy (an `identity.merged` also
//!    loads the retired key's patient and moves its instances to the surviving key:
//!    [`parcours_core::merge`], and records that the retired key leads to the survivor
//!    — the merges of a log an earlier release wrote get that record once, when an
//!    engine first opens it: [`backfill`];
//!    an `identity.linked` does the same from a local identifier's key to the national
//!    identity's, and records the link: [`links`]);
//! 4. the commit holds each inbound event (stream `inbound/<tenant>/<subject>`), every
//!    instance event it caused (stream = instance id, expected version = the instance's
//!    version) and the projections they imply (instance rows, pending timers, open work
//!    items, snapshots: [`projection`]);
//! 5. only then does memory change.
//!
//! Effects (tasks, alerts, handoffs) are not sent by the engine: the log is the outbox,
//! and a [`Relay`] publishes the effect records after its checkpoint to a [`Bus`]. A crash
//! between commit and relay re-publishes the same effect ids, never different ones.
//!
//! Timers are rows of the timer projection, written with the commit that schedules them;
//! [`Engine::advance`] turns every timer due by an instant into a `timer.fired` event
//! through the same batch path, removing its row in the same commit; a timer already
//! due when an inbound event's commit scheduled it (a backlog's backdated discharge)
//! waits [`EngineConfig::timer_catch_up`] after that commit first. Instances stay
//! pinned to the pathway version that enrolled them.
//!
//! One engine is the single writer for the patients it handles; the [`service`] runs it
//! behind a queue with the timer and relay loops; the production mode shards patients
//! across engines.

pub mod backfill;
pub mod bus;
pub mod codec;
mod engine;
pub mod indicators;
pub mod links;
pub mod metrics;
pub mod migration;
pub mod projection;
pub mod publish;
mod registry;
pub mod relay;
pub mod replay;
pub mod resend;
pub mod service;
mod shared;
pub mod snapshot;
mod trace;

pub use bus::{Bus, BusError, Effect, InProcessBus};
pub use engine::{
    CommitEffects, Engine, EngineConfig, IngestOutcome, LoadedInstance, PUBLISHED_CHECK_EVERY,
    Prepared, Refused, RuntimeError, Stats, load_instance, timer_event, write_commit,
};
pub use links::linking;
pub use registry::{PathwayRegistry, SharedRegistry};
pub use relay::Relay;
pub use service::{
    Clock, EventResult, Forward, Forwarded, Handle, Health, ServiceConfig, SubmitError, SystemClock,
};
pub use shared::Shared;
