//! Instance snapshots: an instance's state encoded with bincode, so loading a long-lived
//! instance reads one row and the records after it instead of its whole stream.
//!
//! The layout is its own (`SnapshotV2`), not the in-memory [`InstanceState`]: bincode
//! cannot read serde's internally tagged enums, instants are stored as integer
//! nanoseconds, and a layout of its own can stay readable while the state type evolves.
//! A new layout gets a new [`SNAPSHOT_VERSION`] and a decoder for the old one; a snapshot
//! that does not decode is skipped (the stream is folded from the start), never trusted.
//!
//! Layouts: 1, the state without [`InstanceState::done`] (written before
//! `once_per_cycle`: its log records no task closed done, so a fold gives 0 too); 2, the
//! same followed by `done`.

use std::sync::Arc;

use jiff::Timestamp;
use parcours_core::instance_id::InstanceId;
use parcours_core::model::{CompiledPathway, StateId};
use parcours_core::sorted::SortedMap;
use parcours_core::state::{
    InstanceState, OpenItem, OpenTask, PendingTimer, Sample, Series, Status, TimerKind, TrackState,
};
use parcours_core::value::Scalar;
use parcours_store::{Codec, Snapshot};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Layout version of the snapshots written (`SnapshotV2`); layout 1 is still read.
pub const SNAPSHOT_VERSION: u16 = 2;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

type Nanos = i128;

fn ns(t: Timestamp) -> Nanos {
    t.as_nanosecond()
}

fn ts(n: Nanos) -> Result<Timestamp, String> {
    Timestamp::from_nanosecond(n).map_err(|e| e.to_string())
}

#[derive(Serialize, Deserialize)]
enum ScalarV1 {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Timestamp(Nanos),
    Duration(String),
}

#[derive(Serialize, Deserialize)]
enum TimerKindV1 {
    Transition(u16),
    Recurring(u16, u32),
    TaskReminder(Uuid),
    TaskDue(Uuid),
    TaskEscalation(Uuid, u16),
    AlertAck(Uuid),
    HandoffAccept(Uuid),
    Named(u16),
}

#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    instance_id: String,
    pathway_id: String,
    pathway_version: u32,
    tenant: String,
    subject: String,
    /// 0 pending, 1 active, 2 completed, 3 closed.
    status: u8,
    closed_reason: String,
    cycle: u32,
    enrolled_at: Nanos,
    cycle_start: Nanos,
    cycle_key: Option<String>,
    tracks: Vec<(u16, Nanos)>,
    params: Vec<ScalarV1>,
    vars: Vec<Option<ScalarV1>>,
    series: Vec<Vec<(Nanos, f64)>>,
    tasks: Vec<(Uuid, String, String, Nanos, bool)>,
    alerts: Vec<(Uuid, String, String)>,
    handoffs: Vec<(Uuid, String, String)>,
    timers: Vec<(Uuid, Nanos, TimerKindV1)>,
    version: u64,
}

/// Layout 2: layout 1 followed by the `once_per_cycle` tasks done in the cycle.
#[derive(Serialize, Deserialize)]
struct SnapshotV2 {
    v1: SnapshotV1,
    done: u64,
}

fn scalar_out(s: &Scalar) -> ScalarV1 {
    match s {
        Scalar::Bool(b) => ScalarV1::Bool(*b),
        Scalar::Int(i) => ScalarV1::Int(*i),
        Scalar::Double(d) => ScalarV1::Double(*d),
        Scalar::Str(s) => ScalarV1::Str(String::clone(s)),
        Scalar::Timestamp(t) => ScalarV1::Timestamp(ns(t.get())),
        Scalar::Duration(d) => ScalarV1::Duration(d.to_string()),
    }
}

fn scalar_in(s: ScalarV1) -> Result<Scalar, String> {
    Ok(match s {
        ScalarV1::Bool(b) => Scalar::Bool(b),
        ScalarV1::Int(i) => Scalar::Int(i),
        ScalarV1::Double(d) => Scalar::Double(d),
        ScalarV1::Str(s) => Scalar::Str(Box::new(s)),
        ScalarV1::Timestamp(n) => Scalar::Timestamp(ts(n)?.into()),
        ScalarV1::Duration(d) => Scalar::Duration(Box::new(d.parse().map_err(|e| format!("{e}"))?)),
    })
}

fn kind_out(k: TimerKind) -> TimerKindV1 {
    match k {
        TimerKind::Transition { transition } => TimerKindV1::Transition(transition),
        TimerKind::Recurring { transition, fired } => TimerKindV1::Recurring(transition, fired),
        TimerKind::TaskReminder { task_id } => TimerKindV1::TaskReminder(task_id),
        TimerKind::TaskDue { task_id } => TimerKindV1::TaskDue(task_id),
        TimerKind::TaskEscalation { task_id, step } => TimerKindV1::TaskEscalation(task_id, step),
        TimerKind::AlertAck { alert_id } => TimerKindV1::AlertAck(alert_id),
        TimerKind::HandoffAccept { handoff_id } => TimerKindV1::HandoffAccept(handoff_id),
        TimerKind::Named { timer } => TimerKindV1::Named(timer),
    }
}

fn kind_in(k: TimerKindV1) -> TimerKind {
    match k {
        TimerKindV1::Transition(transition) => TimerKind::Transition { transition },
        TimerKindV1::Recurring(transition, fired) => TimerKind::Recurring { transition, fired },
        TimerKindV1::TaskReminder(task_id) => TimerKind::TaskReminder { task_id },
        TimerKindV1::TaskDue(task_id) => TimerKind::TaskDue { task_id },
        TimerKindV1::TaskEscalation(task_id, step) => TimerKind::TaskEscalation { task_id, step },
        TimerKindV1::AlertAck(alert_id) => TimerKind::AlertAck { alert_id },
        TimerKindV1::HandoffAccept(handoff_id) => TimerKind::HandoffAccept { handoff_id },
        TimerKindV1::Named(timer) => TimerKind::Named { timer },
    }
}

/// Encode an instance's state as a snapshot row.
pub fn encode(state: &InstanceState) -> Result<Snapshot, String> {
    let v2 = SnapshotV2 {
        v1: layout_v1(state),
        done: state.done,
    };
    let payload = bincode::serde::encode_to_vec(&v2, config()).map_err(|e| e.to_string())?;
    Ok(Snapshot {
        stream: state.instance_id.to_string(),
        version: state.version,
        codec: Codec::Bincode,
        type_version: SNAPSHOT_VERSION,
        payload,
    })
}

fn layout_v1(state: &InstanceState) -> SnapshotV1 {
    let (status, closed_reason) = match &state.status {
        Status::Pending => (0, String::new()),
        Status::Active => (1, String::new()),
        Status::Completed => (2, String::new()),
        Status::Closed { reason } => (3, reason.clone()),
    };
    SnapshotV1 {
        instance_id: state.instance_id.to_string(),
        pathway_id: state.pathway_id.to_string(),
        pathway_version: state.pathway_version,
        tenant: state.tenant.to_string(),
        subject: state.subject.to_string(),
        status,
        closed_reason,
        cycle: state.cycle,
        enrolled_at: ns(state.enrolled_at.get()),
        cycle_start: ns(state.cycle_start.get()),
        cycle_key: state.cycle_key.as_deref().map(String::from),
        tracks: state
            .tracks
            .iter()
            .map(|t| (t.state.0, ns(t.entered_at.get())))
            .collect(),
        params: state.params.iter().map(scalar_out).collect(),
        vars: state
            .vars
            .iter()
            .map(|v| v.as_ref().map(scalar_out))
            .collect(),
        series: state
            .series
            .iter()
            .map(|s| s.iter().map(|x| (ns(x.at), x.value)).collect())
            .collect(),
        tasks: state
            .tasks
            .iter()
            .map(|(id, t)| {
                (
                    id,
                    t.code.to_string(),
                    t.role.to_string(),
                    ns(t.due_at),
                    t.overdue,
                )
            })
            .collect(),
        alerts: items_out(&state.alerts),
        handoffs: items_out(&state.handoffs),
        timers: state
            .timers
            .iter()
            .map(|(id, t)| (id, ns(t.fire_at), kind_out(t.kind)))
            .collect(),
        version: state.version,
    }
}

fn items_out(items: &SortedMap<Uuid, OpenItem>) -> Vec<(Uuid, String, String)> {
    items
        .iter()
        .map(|(id, i)| (*id, i.code.to_string(), i.role.to_string()))
        .collect()
}

/// Decode a snapshot of an instance pinned to `pathway`. `Err` says why it cannot be used
/// (the caller then folds the whole stream).
pub fn decode(pathway: &CompiledPathway, snap: &Snapshot) -> Result<InstanceState, String> {
    let decoded = match (snap.codec, snap.type_version) {
        (Codec::Bincode, 1) => bincode::serde::decode_from_slice(&snap.payload, config())
            .map(|(v1, _)| SnapshotV2 { v1, done: 0 }),
        (Codec::Bincode, 2) => {
            bincode::serde::decode_from_slice(&snap.payload, config()).map(|(v2, _)| v2)
        }
        _ => {
            return Err(format!(
                "snapshot layout {:?} v{} is not readable here",
                snap.codec, snap.type_version
            ));
        }
    };
    let SnapshotV2 { v1, done } = decoded.map_err(|e| e.to_string())?;
    if v1.pathway_id != pathway.id || v1.pathway_version != pathway.version {
        return Err(format!(
            "snapshot of {} v{}, not {} v{}",
            v1.pathway_id, v1.pathway_version, pathway.id, pathway.version
        ));
    }
    let status = match v1.status {
        0 => Status::Pending,
        1 => Status::Active,
        2 => Status::Completed,
        3 => Status::Closed {
            reason: v1.closed_reason,
        },
        other => return Err(format!("unknown status {other}")),
    };
    let mut tracks = Vec::with_capacity(v1.tracks.len());
    for (s, at) in v1.tracks {
        if usize::from(s) >= pathway.states.len() {
            return Err(format!("state {s} is not in the pathway"));
        }
        tracks.push(TrackState {
            state: StateId(s),
            entered_at: ts(at)?.into(),
        });
    }
    let mut tasks = Vec::with_capacity(v1.tasks.len());
    for (id, code, role, due, overdue) in v1.tasks {
        tasks.push((
            id,
            OpenTask {
                code: pathway.intern(&code),
                role: pathway.intern(&role),
                due_at: ts(due)?,
                overdue,
            },
        ));
    }
    let items_in = |v: Vec<(Uuid, String, String)>| -> SortedMap<Uuid, OpenItem> {
        v.into_iter()
            .map(|(id, code, role)| {
                (
                    id,
                    OpenItem {
                        code: pathway.intern(&code),
                        role: pathway.intern(&role),
                    },
                )
            })
            .collect()
    };
    let mut timers = Vec::with_capacity(v1.timers.len());
    for (id, at, kind) in v1.timers {
        timers.push((
            id,
            PendingTimer {
                fire_at: ts(at)?,
                kind: kind_in(kind),
            },
        ));
    }
    let mut series = Vec::with_capacity(v1.series.len());
    for s in v1.series {
        let mut samples = Vec::with_capacity(s.len());
        for (at, value) in s {
            samples.push(Sample { at: ts(at)?, value });
        }
        series.push(Series::from(samples));
    }
    Ok(InstanceState {
        instance_id: InstanceId::from(v1.instance_id),
        pathway_id: pathway.intern(&pathway.id),
        pathway_version: v1.pathway_version,
        tenant: Arc::from(v1.tenant),
        subject: Arc::from(v1.subject),
        status,
        cycle: v1.cycle,
        enrolled_at: ts(v1.enrolled_at)?.into(),
        cycle_start: ts(v1.cycle_start)?.into(),
        cycle_key: v1.cycle_key.map(String::into_boxed_str),
        tracks: tracks.into_boxed_slice(),
        params: v1
            .params
            .into_iter()
            .map(scalar_in)
            .collect::<Result<_, _>>()?,
        vars: v1
            .vars
            .into_iter()
            .map(|v| v.map(scalar_in).transpose())
            .collect::<Result<_, _>>()?,
        series: series.into(),
        tasks: Arc::new(tasks.into_iter().collect()),
        alerts: Arc::new(items_in(v1.alerts)),
        handoffs: Arc::new(items_in(v1.handoffs)),
        timers: Arc::new(timers.into_iter().collect()),
        done,
        version: v1.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parcours_core::events::{Event, EventData, EventType};

    fn event(id: &str, hours: i64, ty: EventType, data: serde_json::Value) -> Event {
        let start: Timestamp = "2026-03-02T09:00:00Z".parse().expect("instant");
        Event {
            id: id.into(),
            tenant: "t".into(),
            source: "test".into(),
            subject: "p".into(),
            occurred_at: start + jiff::SignedDuration::from_hours(hours),
            recorded_at: None,
            data: EventData::from_json(ty, data).expect("payload"),
        }
    }

    /// The shipped heart-failure pathway, a patient who consented and whose GP visit was
    /// booked (a `once_per_cycle` task done).
    fn booked() -> (CompiledPathway, InstanceState) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pathways/heart-failure.yaml");
        let p = parcours_lang::load_file(&path)
            .expect("readable")
            .pathway
            .expect("compiles");
        let mut s = InstanceState::pending("i-1");
        let discharge = serde_json::json!({"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]});
        for e in [
            event("d", 0, EventType::EncounterDischarged, discharge),
            event("c", 1, EventType::ConsentGiven, serde_json::json!({})),
        ] {
            parcours_core::decide_in_place(&p, &mut s, &e).expect("decides");
        }
        let (task, _) = s
            .tasks
            .iter()
            .find(|(_, t)| &*t.code == "book-gp-visit")
            .expect("the booking is asked for");
        let done = event(
            "b",
            2,
            EventType::TaskCompleted,
            serde_json::json!({"task_id": task.to_string()}),
        );
        parcours_core::decide_in_place(&p, &mut s, &done).expect("decides");
        assert_ne!(s.done, 0, "the booking is done");
        s.share_with(&p);
        (p, s)
    }

    #[test]
    fn a_snapshot_keeps_the_tasks_done_in_the_cycle() {
        let (p, s) = booked();
        let snap = encode(&s).expect("encodes");
        assert_eq!(snap.type_version, 2);
        let mut back = decode(&p, &snap).expect("decodes");
        back.share_with(&p);
        assert_eq!(back, s);
    }

    /// A layout-1 snapshot was written before `once_per_cycle`: its log holds no task
    /// closed done, so its fold has nothing done either — it decodes with nothing done.
    #[test]
    fn a_layout_1_snapshot_is_still_read() {
        let (p, mut s) = booked();
        let snap = Snapshot {
            type_version: 1,
            payload: bincode::serde::encode_to_vec(layout_v1(&s), config()).expect("encodes"),
            ..encode(&s).expect("encodes")
        };
        let mut back = decode(&p, &snap).expect("decodes");
        back.share_with(&p);
        s.done = 0;
        assert_eq!(back, s);
        let unknown = Snapshot {
            type_version: 3,
            ..snap
        };
        assert!(decode(&p, &unknown).is_err(), "a layout it does not know");
    }
}
