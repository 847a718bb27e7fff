//! Moving running instances to a new version of their pathway, by a declared state mapping.
//!
//! Publishing a new version never touches running instances: they stay pinned to the
//! version that enrolled them. A migration is a deliberate act: for each track, the state
//! an instance is in maps to a state of the new version (by default the state of the same
//! name). [`check`] says, without writing anything, what would happen to an instance or
//! why it cannot move (the dry run); [`migrate`] produces the instance events that move it:
//!
//! 1. every timer of the old version's transitions (and named timers) is cancelled — their
//!    indices mean nothing in the new version;
//! 2. `instance.migrated` records the new version and, by name, where each track is and
//!    since when, the parameters, variables and series;
//! 3. the new states' `after` and `every` timers are armed as if each track had entered
//!    its state when it did (a deadline already passed fires at once).
//!
//! Open tasks, alerts and handoffs stay open with their reminder and escalation timers
//! (their codes must exist in the new version). `on_enter` actions do not run again.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use uuid::Uuid;

use crate::calendar;
use crate::decide::next_on_grid;
use crate::model::{Anchor, CompiledPathway, Trigger};
use crate::state::{Change, InstanceState, Recorded, TimerKind, apply};
use crate::value::Scalar;

/// A declared mapping of states, per track: old state name → new state name. States not
/// listed keep their name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationPlan {
    /// Track name → (old state → new state).
    pub states: BTreeMap<String, BTreeMap<String, String>>,
}

/// What migrating one instance would do.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// Per track: (track, old state, new state).
    pub moves: Vec<(String, String, String)>,
    /// Tracks new in this version, starting in their initial state.
    pub new_tracks: Vec<(String, String)>,
    /// Timers cancelled (old transitions and named timers).
    pub cancelled_timers: usize,
    /// Timers armed for the new states.
    pub armed_timers: usize,
    /// Parameters, variables or series of the old version that the new one drops.
    pub dropped: Vec<String>,
}

/// Why an instance cannot move.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// Not active (completed or closed instances stay where they are).
    #[error("the instance is {0}, not active")]
    NotActive(String),
    /// Pinned to another version than the plan's `from`.
    #[error("the instance is pinned to {pathway} v{version}")]
    WrongVersion {
        /// Its pathway.
        pathway: String,
        /// Its version.
        version: u32,
    },
    /// The new version has no such track.
    #[error("track `{0}` does not exist in the new version")]
    MissingTrack(String),
    /// A state maps to nothing in the new version.
    #[error(
        "track `{track}` is in `{state}`, which maps to `{target}`: no such state in the new version's track"
    )]
    MissingState {
        /// Track.
        track: String,
        /// Current state.
        state: String,
        /// Where the plan sends it.
        target: String,
    },
    /// An open task, alert or handoff has no definition in the new version.
    #[error("open {kind} `{code}` has no definition in the new version")]
    MissingCode {
        /// task, alert or handoff.
        kind: &'static str,
        /// Its code.
        code: String,
    },
    /// A value does not fit the new version's declared type.
    #[error("{what} `{name}` holds a {found} but the new version declares a {wanted}")]
    TypeChanged {
        /// parameter or variable.
        what: &'static str,
        /// Its name.
        name: String,
        /// The value's type.
        found: String,
        /// The declared type.
        wanted: String,
    },
    /// The instance state does not fold with the old version (a divergent log).
    #[error("{0}")]
    Divergence(String),
}

/// Where each track of `state` goes in `new` under `plan`.
fn targets(
    old: &CompiledPathway,
    new: &CompiledPathway,
    state: &InstanceState,
    plan: &MigrationPlan,
) -> Result<Vec<(String, String, String, Timestamp)>, MigrationError> {
    if !state.is_active() {
        return Err(MigrationError::NotActive(
            format!("{:?}", state.status).to_lowercase(),
        ));
    }
    if *state.pathway_id != *old.id || state.pathway_version != old.version {
        return Err(MigrationError::WrongVersion {
            pathway: state.pathway_id.to_string(),
            version: state.pathway_version,
        });
    }
    let mut out = Vec::new();
    for (track, now) in state.current_states(old) {
        let target = plan
            .states
            .get(track)
            .and_then(|m| m.get(now))
            .map_or(now, String::as_str);
        let t = new
            .track_id(track)
            .ok_or_else(|| MigrationError::MissingTrack(track.to_string()))?;
        if new
            .state_id(target)
            .filter(|s| new.state(*s).track == t)
            .is_none()
        {
            return Err(MigrationError::MissingState {
                track: track.to_string(),
                state: now.to_string(),
                target: target.to_string(),
            });
        }
        let entered = state
            .tracks
            .get(old.track_id(track).map_or(usize::MAX, |t| t.index()))
            .map_or(state.cycle_start, |t| t.entered_at)
            .get();
        out.push((
            track.to_string(),
            now.to_string(),
            target.to_string(),
            entered,
        ));
    }
    for t in state.tasks.values() {
        if new.task_by_code(&t.code).is_none() {
            return Err(MigrationError::MissingCode {
                kind: "task",
                code: t.code.to_string(),
            });
        }
    }
    for a in state.alerts.values() {
        if !new.alerts.iter().any(|d| *d.code == *a.code) {
            return Err(MigrationError::MissingCode {
                kind: "alert",
                code: a.code.to_string(),
            });
        }
    }
    for h in state.handoffs.values() {
        if !new.handoffs.iter().any(|d| *d.code == *h.code) {
            return Err(MigrationError::MissingCode {
                kind: "handoff",
                code: h.code.to_string(),
            });
        }
    }
    let check =
        |what: &'static str, name: &str, v: &Scalar, decls: &[crate::model::VarDecl]| match decls
            .iter()
            .find(|d| d.name == name)
        {
            Some(d) if v.ty() != d.ty.ty() => Err(MigrationError::TypeChanged {
                what,
                name: name.to_string(),
                found: v.ty().to_string(),
                wanted: d.ty.ty().to_string(),
            }),
            _ => Ok(()),
        };
    for (d, v) in old.params.iter().zip(state.params.iter()) {
        check("parameter", &d.name, v, &new.params)?;
    }
    for (d, v) in old.vars.iter().zip(state.vars.iter()) {
        if let Some(v) = v {
            check("variable", &d.name, v, &new.vars)?;
        }
    }
    Ok(out)
}

/// What migrating would do, or why it cannot (the dry run).
pub fn check(
    old: &CompiledPathway,
    new: &CompiledPathway,
    state: &InstanceState,
    plan: &MigrationPlan,
    at: Timestamp,
) -> Result<Preview, MigrationError> {
    let moves = targets(old, new, state, plan)?;
    let records = migrate(old, new, state, plan, at, "dry-run")?.records;
    let cancelled_timers = records
        .iter()
        .filter(|r| matches!(r.change, Change::TimerCancelled { .. }))
        .count();
    let armed_timers = records
        .iter()
        .filter(|r| matches!(r.change, Change::TimerScheduled { .. }))
        .count();
    let mut dropped = Vec::new();
    for d in &old.params {
        if !new.params.iter().any(|n| n.name == d.name) {
            dropped.push(format!("parameter {}", d.name));
        }
    }
    for d in &old.vars {
        if !new.vars.iter().any(|n| n.name == d.name) {
            dropped.push(format!("variable {}", d.name));
        }
    }
    for d in &old.series {
        if !new.series.iter().any(|n| n.name == d.name) {
            dropped.push(format!("series {}", d.name));
        }
    }
    let new_tracks = new
        .tracks
        .iter()
        .filter(|t| old.track_id(&t.name).is_none())
        .map(|t| (t.name.to_string(), new.state(t.initial).name.to_string()))
        .collect();
    Ok(Preview {
        moves: moves.into_iter().map(|(t, a, b, _)| (t, a, b)).collect(),
        new_tracks,
        cancelled_timers,
        armed_timers,
        dropped,
    })
}

/// What a migration does to one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Migration {
    /// The instance events that move it, in order (the old version's timers cancelled,
    /// `instance.migrated`, the new states' timers armed).
    pub records: Vec<Recorded>,
    /// The state they lead to: `records` folded onto the state before, with the old
    /// version up to `instance.migrated` and the new one from it, as a replay folds them.
    pub state: InstanceState,
}

/// The instance events that move `state` from `old` to `new` (see the module docs), and
/// the state after them. Ids derive from the instance and `cause` (the migration's
/// record id).
pub fn migrate(
    old: &CompiledPathway,
    new: &CompiledPathway,
    state: &InstanceState,
    plan: &MigrationPlan,
    at: Timestamp,
    cause: &str,
) -> Result<Migration, MigrationError> {
    let moves = targets(old, new, state, plan)?;
    let base = state
        .instance_id
        .with_str(|id| crate::decide::derive_ids(id, cause));
    let cause: Arc<str> = Arc::from(cause);
    let rule: Option<Arc<str>> = Some(Arc::from(format!(
        "migration v{} → v{}",
        old.version, new.version
    )));
    let mut out = Log {
        base,
        n: 0,
        cause,
        rule,
        at,
        working: state.clone(),
        records: Vec::new(),
    };
    // 1. Timers that point into the old version's transitions or named timers.
    let stale: Vec<Uuid> = state
        .timers
        .iter()
        .filter(|(_, t)| {
            matches!(
                t.kind,
                TimerKind::Transition { .. }
                    | TimerKind::Recurring { .. }
                    | TimerKind::Named { .. }
            )
        })
        .map(|(id, _)| id)
        .collect();
    for timer_id in stale {
        out.push(old, |_| Change::TimerCancelled { timer_id })?;
    }
    // 2. The move itself, by name.
    let mut tracks: Vec<(String, String, Timestamp)> = moves
        .iter()
        .map(|(t, _, target, entered)| (t.clone(), target.clone(), *entered))
        .collect();
    for t in &new.tracks {
        if old.track_id(&t.name).is_none() {
            tracks.push((
                t.name.to_string(),
                new.state(t.initial).name.to_string(),
                at,
            ));
        }
    }
    let params = old
        .params
        .iter()
        .zip(state.params.iter())
        .map(|(d, v)| (d.name.clone(), v.clone()))
        .collect();
    let vars = old
        .vars
        .iter()
        .zip(state.vars.iter())
        .filter_map(|(d, v)| v.clone().map(|v| (d.name.clone(), v)))
        .collect();
    let series = old
        .series
        .iter()
        .zip(state.series.iter())
        .map(|(d, s)| (d.name.to_string(), s.to_vec()))
        .collect();
    let done = old
        .done_tasks(state.done)
        .map(|t| t.code.to_string())
        .collect();
    let migrated = Change::Migrated {
        from_version: old.version,
        to_version: new.version,
        tracks,
        params,
        vars,
        series,
        done,
    };
    out.push(new, |_| migrated)?;
    // 3. The new states' timers, from when each track entered its state.
    for track in out.working.tracks.clone() {
        let st = new.state(track.state);
        for tid in &st.transitions {
            let t = new.transition(*tid);
            let w = &out.working;
            let anchor = |a: Anchor| match a {
                Anchor::StateEntry | Anchor::Now => track.entered_at.get(),
                Anchor::CycleStart => w.cycle_start.get(),
                Anchor::Enrolment => w.enrolled_at.get(),
                Anchor::Var(v) => match w.vars.get(usize::from(v)) {
                    Some(Some(Scalar::Timestamp(t))) => t.get(),
                    _ => track.entered_at.get(),
                },
            };
            let (fire_at, kind) = match &t.trigger {
                Trigger::After { after, from } => (
                    calendar::add(anchor(*from), *after),
                    TimerKind::Transition { transition: tid.0 },
                ),
                Trigger::Every { every, from, .. } => (
                    next_on_grid(anchor(*from), *every, at),
                    TimerKind::Recurring {
                        transition: tid.0,
                        fired: 0,
                    },
                ),
                _ => continue,
            };
            // The timer's id is its record's (unique, derived).
            out.push(new, |id| Change::TimerScheduled {
                timer_id: id,
                fire_at,
                kind,
            })?;
        }
    }
    Ok(Migration {
        records: out.records,
        state: out.working,
    })
}

/// The records of a migration, applied to a working copy as they are made.
struct Log {
    base: u128,
    n: u128,
    cause: Arc<str>,
    rule: Option<Arc<str>>,
    at: Timestamp,
    working: InstanceState,
    records: Vec<Recorded>,
}

impl Log {
    fn push(
        &mut self,
        pathway: &CompiledPathway,
        change: impl FnOnce(Uuid) -> Change,
    ) -> Result<(), MigrationError> {
        let id = Uuid::new_v8((self.base ^ self.n).to_be_bytes());
        self.n += 1;
        let rec = Recorded {
            id,
            cause: self.cause.clone(),
            rule: self.rule.clone(),
            at: self.at,
            change: change(id),
        };
        apply(pathway, &mut self.working, &rec)
            .map_err(|e| MigrationError::Divergence(e.to_string()))?;
        self.records.push(rec);
        Ok(())
    }
}
