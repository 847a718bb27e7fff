//! `once_per_cycle` tasks: done (or answered not needed) in a cycle, a `task:` action
//! for them does nothing until the next cycle; the record survives a fold, a migration
//! carries it by code, and the language bounds how many tasks may use it.

use parcours_core::events::EventType;
use parcours_core::migrate::{MigrationPlan, migrate};
use parcours_core::model::CompiledPathway;
use parcours_core::state::{Change, fold};
use parcours_scenario::{Simulator, parse_time};

/// A visit asked for on entering `home`; a stay (`encounter.admitted`) withdraws it and
/// the return home enters `home` again; a new discharge restarts the cycle.
fn pathway(version: u32, once: bool) -> CompiledPathway {
    let once = if once {
        "    once_per_cycle: true\n"
    } else {
        ""
    };
    let text = format!(
        r#"
pathway: once-demo
version: {version}
title: A visit asked for once a cycle
enrolment:
  on: encounter.discharged
  on_repeat: restart
  episode_key: event.encounter_id
tasks:
  visit:
    role: nurse
    title: Home visit
    due: 7d
{once}tracks:
  main:
    initial: home
    states:
      home:
        on_enter:
          - task: visit
        transitions:
          - on: encounter.admitted
            goto: away
            do:
              - cancel_task: "*"
      away:
        transitions:
          - on: encounter.admission_cancelled
            goto: home
          - after: 30d
            goto: home
"#
    );
    let (p, report) = parcours_lang::compile_source("once.yaml", &text)
        .unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    p
}

struct Patient<'p> {
    sim: Simulator<'p>,
    n: usize,
}

impl<'p> Patient<'p> {
    fn discharged(p: &'p CompiledPathway) -> Patient<'p> {
        let start = parse_time("2026-03-02T10:00", None).expect("start");
        let mut patient = Patient {
            sim: Simulator::new(p, "t", "p", start),
            n: 0,
        };
        patient.send(
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": "V1"}),
        );
        patient
    }

    fn send(&mut self, ty: EventType, data: serde_json::Value) {
        self.n += 1;
        let at = self.sim.now() + jiff::SignedDuration::from_hours(self.n as i64);
        let event = self
            .sim
            .event(&format!("e-{}", self.n), at, ty, data)
            .expect("payload");
        self.sim.deliver(&event).expect("delivered");
    }

    /// Answer the open visit with `answer` (`task.completed`, …).
    fn answer(&mut self, answer: EventType) {
        let id = self.sim.open_id("task", "visit").expect("a visit is open");
        self.send(answer, serde_json::json!({"task_id": id}));
    }

    /// A stay, then its admission cancelled: the plan goes home again.
    fn stay_cancelled(&mut self) {
        self.send(
            EventType::EncounterAdmitted,
            serde_json::json!({"encounter_id": "V2"}),
        );
        self.send(
            EventType::EncounterAdmissionCancelled,
            serde_json::json!({"encounter_id": "V2"}),
        );
    }

    fn open_visits(&self) -> usize {
        let state = self.sim.current().expect("enrolled");
        state
            .tasks
            .iter()
            .filter(|(_, t)| &*t.code == "visit")
            .count()
    }
}

#[test]
fn a_visit_done_in_the_cycle_is_not_asked_again_until_the_next() {
    let p = pathway(1, true);
    for (answer, asked_again) in [
        (EventType::TaskCompleted, false),
        (EventType::TaskNotNeeded, false),
        (EventType::TaskCouldNotBeDone, true),
    ] {
        let mut patient = Patient::discharged(&p);
        patient.answer(answer);
        patient.stay_cancelled();
        assert_eq!(
            patient.open_visits(),
            usize::from(asked_again),
            "after {answer}"
        );
        let state = patient.sim.current().expect("enrolled");
        assert_eq!(
            p.done_tasks(state.done)
                .filter(|t| t.once_per_cycle)
                .count(),
            usize::from(!asked_again),
            "after {answer}"
        );
        // The fold of the instance's records gives the same state.
        let folded =
            fold(&p, &state.instance_id.to_string(), patient.sim.stream(0)).expect("folds");
        assert_eq!(&folded, state);
        // A new discharge is a new cycle: the visit is asked for again.
        patient.send(
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": "V3"}),
        );
        assert_eq!(patient.sim.current().expect("enrolled").cycle, 2);
        assert_eq!(patient.open_visits(), 1, "a new cycle, after {answer}");
    }
}

#[test]
fn a_task_withdrawn_by_the_pathway_is_asked_again() {
    let p = pathway(1, true);
    let mut patient = Patient::discharged(&p);
    patient.stay_cancelled();
    assert_eq!(patient.open_visits(), 1, "never done: asked again");
}

#[test]
fn without_once_per_cycle_a_state_entered_again_asks_again() {
    let p = pathway(1, false);
    let mut patient = Patient::discharged(&p);
    patient.answer(EventType::TaskCompleted);
    patient.stay_cancelled();
    assert_eq!(patient.open_visits(), 1);
}

/// A migration carries the tasks done by code — also from a version that did not mark
/// them `once_per_cycle` (heart failure v2 to v3): the care team's answers were recorded.
#[test]
fn a_migration_carries_what_was_done_by_code() {
    for (from_once, to_once, asked_again) in [(true, true, 0), (true, false, 1), (false, true, 0)] {
        let v1 = pathway(1, from_once);
        let v2 = pathway(2, to_once);
        let mut patient = Patient::discharged(&v1);
        patient.answer(EventType::TaskCompleted);
        let state = patient.sim.current().expect("enrolled").clone();
        let at = patient.sim.now() + jiff::SignedDuration::from_hours(100);
        let migration =
            migrate(&v1, &v2, &state, &MigrationPlan::default(), at, "m-1").expect("migrates");
        let migrated = migration
            .records
            .iter()
            .find_map(|r| match &r.change {
                Change::Migrated { done, .. } => Some(done.clone()),
                _ => None,
            })
            .expect("a migration record");
        assert_eq!(migrated, vec!["visit".to_string()]);
        let mut s = migration.state;
        assert_eq!(s.done.count_ones(), 1, "{from_once} → {to_once}");
        // On v2, a stay cancelled: the visit comes back only where v2 does not mark it.
        let sim = Simulator::new(&v2, "t", "p", at);
        for (i, (ty, hours)) in [
            (EventType::EncounterAdmitted, 0),
            (EventType::EncounterAdmissionCancelled, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let when = at + jiff::SignedDuration::from_hours(hours);
            let event = sim
                .event(
                    &format!("s-{i}"),
                    when,
                    ty,
                    serde_json::json!({"encounter_id": "V2"}),
                )
                .expect("payload");
            parcours_core::decide_in_place(&v2, &mut s, &event).expect("decides");
        }
        assert_eq!(s.tasks.len(), asked_again, "{from_once} → {to_once}");
    }
}

#[test]
fn only_the_first_64_tasks_can_be_once_per_cycle() {
    let mut text = String::from(
        "pathway: many\nversion: 1\ntitle: Many tasks\nenrolment:\n  on: encounter.discharged\ntasks:\n",
    );
    for i in 0..64 {
        text.push_str(&format!(
            "  t{i:02}:\n    role: nurse\n    title: Task {i}\n    due: 1d\n"
        ));
    }
    text.push_str(
        "  late:\n    role: nurse\n    title: Late\n    due: 1d\n    once_per_cycle: true\n",
    );
    text.push_str(
        "tracks:\n  main:\n    initial: a\n    states:\n      a:\n        terminal: true\n",
    );
    let report = parcours_lang::compile_source("many.yaml", &text).expect_err("refused");
    let rendered = report.render();
    assert!(
        rendered.contains("task `late`: only the first 64 tasks") && rendered.contains("task 65"),
        "{rendered}"
    );
    // Its key: line 7 + 64 × 4.
    assert!(rendered.contains("many.yaml:263:3"), "{rendered}");
    // The same task earlier in the file compiles.
    let earlier = text.replacen(
        "  t00:",
        "  late:\n    role: nurse\n    title: Late\n    due: 1d\n    once_per_cycle: true\n  t00:",
        1,
    );
    let earlier = earlier.replacen(
        "  late:\n    role: nurse\n    title: Late\n    due: 1d\n    once_per_cycle: true\ntracks:",
        "tracks:",
        1,
    );
    let (p, _) = parcours_lang::compile_source("many.yaml", &earlier)
        .unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(p.tasks[0].once_per_cycle);
    assert_eq!(p.task_mask("late"), Some(1));
    assert_eq!(p.task_mask("t63"), None, "the 65th task has no bit");
}
