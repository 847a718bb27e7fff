//! Timers due at the same instant, recurring grids and opt-outs, on the shipped COPD
//! pathway, through the core directly (so the delivery order of timers can be forced).

use std::path::Path;

use jiff::Timestamp;
use parcours_core::decide::{next_on_grid, same_instant_rank, timer_fired_event_id};
use parcours_core::events::{Event, EventData, EventType};
use parcours_core::model::CompiledPathway;
use parcours_core::route::{Target, route};
use parcours_core::state::{Change, InstanceState, TimerKind, fold};
use parcours_core::{calendar, decide_and_apply};
use parcours_scenario::{Simulator, parse_time};

fn copd() -> CompiledPathway {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways/copd-exacerbation.yaml");
    let loaded = parcours_lang::load_file(&path).expect("readable");
    loaded
        .pathway
        .unwrap_or_else(|| panic!("compiles:\n{}", loaded.report.short()))
}

fn start() -> Timestamp {
    parse_time("2026-03-02T10:00", None).expect("start")
}

fn at(rel: &str) -> Timestamp {
    parse_time(rel, Some(start())).expect("time")
}

fn event(id: &str, when: Timestamp, ty: EventType, json: serde_json::Value) -> Event {
    Event {
        id: id.into(),
        tenant: "cpts-test".into(),
        source: "test".into(),
        subject: "patient-t".into(),
        occurred_at: when,
        recorded_at: None,
        data: EventData::from_json(ty, json).expect("payload"),
    }
}

fn discharge(id: &str, when: Timestamp) -> Event {
    event(
        id,
        when,
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": id, "destination": "home", "diagnoses": ["J44.1"]}),
    )
}

fn fired(state: &InstanceState, timer_id: &str, when: Timestamp) -> Event {
    event(
        &timer_fired_event_id(timer_id),
        when,
        EventType::TimerFired,
        serde_json::json!({"timer_id": timer_id, "instance_id": state.instance_id.to_string()}),
    )
}

/// The patient just before month 6: every timer due before then has fired.
fn before_month_6(p: &CompiledPathway) -> InstanceState {
    let mut sim = Simulator::new(p, "cpts-test", "patient-t", start());
    sim.deliver(&discharge("V1", start())).expect("enrols");
    sim.advance(at("+6mo") - jiff::SignedDuration::from_secs(1))
        .expect("timers");
    sim.instances()[0].clone()
}

fn requested(changes: &[Change], code: &str) -> usize {
    changes
        .iter()
        .filter(|c| matches!(c, Change::TaskRequested { code: c, .. } if &**c == code))
        .count()
}

#[test]
fn the_sixth_call_is_not_lost_whatever_order_the_timers_come_in() {
    let p = copd();
    let state = before_month_6(&p);
    let month6 = at("+6mo");
    let due: Vec<(String, TimerKind)> = state
        .timers
        .iter()
        .filter(|(_, t)| t.fire_at == month6)
        .map(|(id, t)| (id.to_string(), t.kind))
        .collect();
    let phone_recurring = due
        .iter()
        .find(|(_, k)| matches!(k, TimerKind::Recurring { fired: 5, .. }))
        .expect("the sixth occurrence is due at month 6")
        .0
        .clone();
    let phone_after = due
        .iter()
        .find(|(_, k)| {
            matches!(k, TimerKind::Transition { transition }
                if p.transitions[usize::from(*transition)].rule.starts_with("monthly_calls/"))
        })
        .expect("the month-6 `after` of the phone track")
        .0
        .clone();
    // The leaving `after` ranks after the occurrence at the same instant.
    let rank = |id: &str| {
        let k = due.iter().find(|(i, _)| i == id).expect("due").1;
        same_instant_rank(&p, &k)
    };
    assert!(rank(&phone_recurring) < rank(&phone_after));

    let mut outcomes = Vec::new();
    for order in [
        [&phone_after, &phone_recurring],
        [&phone_recurring, &phone_after],
    ] {
        let mut s = state.clone();
        let mut changes = Vec::new();
        for id in order {
            let (d, next) = decide_and_apply(&p, &s, &fired(&s, id, month6)).expect("decide");
            changes.extend(d.events.into_iter().map(|r| r.change));
            s = next;
        }
        // Let every other timer due at month 6 fire too.
        loop {
            let next = s
                .timers
                .iter()
                .filter(|(_, t)| t.fire_at <= month6)
                .map(|(id, _)| id.to_string())
                .next();
            let Some(id) = next else { break };
            let (d, n) = decide_and_apply(&p, &s, &fired(&s, &id, month6)).expect("decide");
            changes.extend(d.events.into_iter().map(|r| r.change));
            s = n;
        }
        assert_eq!(requested(&changes, "nurse-call"), 1, "order {order:?}");
        let states: Vec<(&str, &str)> = s.current_states(&p);
        assert!(states.contains(&("phone", "last_call")), "{states:?}");
        assert!(s.is_active());
        outcomes.push(
            states
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

#[test]
fn an_after_delivered_first_fires_the_occurrence_due_with_it_in_the_same_decision() {
    let p = copd();
    let state = before_month_6(&p);
    let month6 = at("+6mo");
    let after_id = state
        .timers
        .iter()
        .find(|(_, t)| {
            t.fire_at == month6
                && matches!(t.kind, TimerKind::Transition { transition }
                    if p.transitions[usize::from(transition)].rule.starts_with("monthly_calls/"))
        })
        .map(|(id, _)| id.to_string())
        .expect("month-6 after");
    let (d, next) =
        decide_and_apply(&p, &state, &fired(&state, &after_id, month6)).expect("decide");
    let changes: Vec<Change> = d.events.iter().map(|r| r.change.clone()).collect();
    assert_eq!(requested(&changes, "nurse-call"), 1);
    // The task is requested before the phone track leaves `monthly_calls`.
    let task_at = changes
        .iter()
        .position(|c| matches!(c, Change::TaskRequested { .. }))
        .expect("task");
    let left_at = changes
        .iter()
        .position(|c| matches!(c, Change::StateEntered { state, .. } if &**state == "last_call"))
        .expect("left");
    assert!(task_at < left_at);
    // Every record is at its own clinical time, and the fold of the stream is the state.
    assert!(d.events.iter().all(|r| r.at == month6));
    let mut all = Vec::new();
    let mut sim = Simulator::new(&p, "cpts-test", "patient-t", start());
    sim.deliver(&discharge("V1", start())).expect("enrols");
    sim.advance(month6 - jiff::SignedDuration::from_secs(1))
        .expect("timers");
    all.extend(sim.stream(0).iter().cloned());
    all.extend(d.events.iter().cloned());
    let folded = fold(&p, &state.instance_id.to_string(), all.iter()).expect("fold");
    assert_eq!(folded, next);
}

#[test]
fn recurring_grids_are_computed_from_the_anchor() {
    let tz = calendar::paris();
    let paris = |s: &str| {
        s.parse::<jiff::civil::DateTime>()
            .expect("civil")
            .to_zoned_datetime(tz.clone())
            .expect("zoned")
            .timestamp()
    };
    let jan31 = paris("2026-01-31T10:00");
    let month = "1mo".parse().expect("duration");
    let mut t = jan31;
    let mut got = Vec::new();
    for _ in 0..5 {
        t = next_on_grid(jan31, month, t);
        got.push(tz.to_datetime(t).date().to_string());
    }
    assert_eq!(
        got,
        [
            "2026-02-28",
            "2026-03-31",
            "2026-04-30",
            "2026-05-31",
            "2026-06-30"
        ]
    );
    // Entering late joins the grid at its next point.
    let late = paris("2026-04-15T08:00");
    assert_eq!(
        tz.to_datetime(next_on_grid(jan31, month, late))
            .date()
            .to_string(),
        "2026-04-30"
    );
    // Far from the anchor too (bisection), and working days.
    let far = paris("2036-01-01T00:00");
    assert_eq!(
        tz.to_datetime(next_on_grid(jan31, month, far))
            .date()
            .to_string(),
        "2036-01-31"
    );
    let wd = "5wd".parse().expect("duration");
    let friday = paris("2026-04-30T09:00"); // Thursday 30 April 2026
    assert_eq!(
        next_on_grid(friday, wd, friday),
        calendar::add(friday, wd),
        "first occurrence"
    );
}

#[test]
fn an_opt_out_keeps_the_patient_out_until_a_consent() {
    let p = copd();
    let refs = [&p];
    let mut instances: Vec<InstanceState> = Vec::new();
    let apply = |instances: &mut Vec<InstanceState>, ev: &Event| -> Vec<Change> {
        let inst: Vec<&InstanceState> = instances.iter().collect();
        let targets = route(&refs, &inst, ev);
        let mut out = Vec::new();
        for t in targets {
            let i = match t {
                Target::Existing(i) => i,
                Target::Enrol { .. } => {
                    instances.push(InstanceState::pending(
                        parcours_core::decide::instance_id_for(&p.id, ev),
                    ));
                    instances.len() - 1
                }
            };
            let (d, next) = decide_and_apply(&p, &instances[i], ev).expect("decide");
            out.extend(d.events.into_iter().map(|r| r.change));
            instances[i] = next;
        }
        out
    };
    apply(&mut instances, &discharge("V1", at("+0d")));
    let withdrawn = event(
        "w1",
        at("+1d"),
        EventType::ConsentWithdrawn,
        serde_json::json!({"scope": "copd-exacerbation"}),
    );
    apply(&mut instances, &withdrawn);
    assert!(p.refused_by(&instances[0]));
    // A new discharge: not enrolled, and the reason is recorded on the closed instance.
    let changes = apply(&mut instances, &discharge("V2", at("+10d")));
    assert_eq!(instances.len(), 1);
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::InputIgnored { reason } if reason.contains("opted out"))),
        "{changes:?}"
    );
    // Consent to another pathway changes nothing; consent to every programme lifts it.
    let other = event(
        "c0",
        at("+11d"),
        EventType::ConsentGiven,
        serde_json::json!({"scope": "heart-failure"}),
    );
    assert!(apply(&mut instances, &other).is_empty());
    let all = event(
        "c1",
        at("+12d"),
        EventType::ConsentGiven,
        serde_json::json!({}),
    );
    let changes = apply(&mut instances, &all);
    assert!(matches!(&changes[..], [Change::OptOutLifted { scope, .. }] if scope == "*"));
    assert!(!p.refused_by(&instances[0]));
    // The next discharge enrols a new instance.
    apply(&mut instances, &discharge("V3", at("+20d")));
    assert_eq!(instances.len(), 2);
    assert!(instances[1].is_active());
}
