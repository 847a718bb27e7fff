//! parcours-runtime: the event-sourced runtime around the pure core.
//!
//! For each inbound canonical event, [`Engine::ingest`]:
//! 1. drops it if its id is already in the log (idempotent intake);
//! 2. routes it to the patient's instances (enrolling where a pathway's rule matches;
//!    several pathways per patient);
//! 3. runs `decide` for each, and appends **one atomic commit**: the inbound event
//!    (stream `inbound/<tenant>/<subject>`) and every instance event it caused (stream =
//!    instance id, expected version = the instance's version);
//! 4. only then updates its in-memory states and timer index.
//!
//! Effects (tasks, alerts, handoffs) are not sent by `ingest`: the log is the outbox, and
//! [`Engine::relay`] publishes the effect records after the last checkpoint to a [`Bus`],
//! then saves the checkpoint. A crash between commit and relay re-publishes the same
//! effect ids, never different ones.
//!
//! Timers are data in instance states; [`Engine::advance`] turns every timer due by a
//! given instant into a `timer.fired` event, in time order, through the same `ingest`.
//! Instances stay pinned to the pathway version that enrolled them. On start,
//! [`Engine::open`] rebuilds every state by folding the log.
//!
//! Processing is sequential (one writer); the production mode shards by patient.

pub mod bus;
pub mod codec;
mod engine;

pub use bus::{Bus, BusError, Effect, InProcessBus};
pub use engine::{Engine, IngestOutcome, PathwayRegistry, RuntimeError, Stats};
