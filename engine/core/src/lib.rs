//! parcours-core: the pure heart of the engine.
//!
//! - [`events`]: the canonical event catalogue, typed, with its CloudEvents envelope;
//!   [`json`] reads events (and any JSON input) with refusals that quote no value;
//! - [`model`]: the compiled pathway (built by `parcours-lang`);
//! - [`expr`]: typed guard expressions and their evaluation;
//! - [`state`]: instance state, recorded instance events and the fold ([`state::apply`]);
//!   [`sorted`], [`tasks`] and [`timers`] the compact maps a cached state keeps (the
//!   last two on `grouped`: ids sharing their high bits, kept once per group), [`series`]
//!   its samples (16 bytes each), [`stamp`] its own instants (12 bytes each),
//!   [`instance_id`] its id (16 bytes, no allocation);
//! - [`mod@decide`]: the transition function;
//! - [`route`]: which instances an event concerns;
//! - [`merge`]: identity merges (instances follow the person to the surviving key);
//! - [`calendar`]: clinical time in Europe/Paris (DST, French public holidays);
//! - [`units`]: unit-aware lab values.
//!
//! No IO, no async runtime, no wall clock, no random ids: everything is derived from the
//! events, so replaying a log always rebuilds the same state.

pub mod calendar;
pub mod decide;
pub mod events;
pub mod expr;
mod grouped;
pub mod instance_id;
pub mod json;
pub mod loinc;
pub mod merge;
pub mod migrate;
pub mod model;
pub mod route;
pub mod series;
pub mod sorted;
pub mod stamp;
pub mod state;
pub mod tasks;
pub mod timers;
pub mod units;
pub mod value;

pub use decide::{DecideError, Decision, decide, decide_and_apply, decide_in_place, enrols};
pub use events::{Event, EventData, EventType};
pub use model::CompiledPathway;
pub use state::{Change, InstanceState, Recorded, Status};

/// Test inputs: a deterministic stream of `u64`s from `seed` (Knuth's MMIX linear
/// congruential generator), for the property tests of the maps and series.
#[cfg(test)]
pub(crate) fn draws(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |x| {
        Some(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    })
    .skip(1)
}
