//! `patient.referred` enrols in the pathway it names, whatever that pathway's rule; a
//! pathway entered by referral only (`enrolment: {on: patient.referred}`) takes no
//! referral to another pathway, and a second referral neither restarts its cycle nor
//! enrols again.

use parcours_core::events::{Event, EventType};
use parcours_core::state::{Change, Status};
use parcours_scenario::{Simulator, parse_time};

const PATHWAY: &str = r#"
pathway: palliative-support
version: 1
title: Palliative support at home
enrolment:
  on: patient.referred
  on_repeat: restart
tasks:
  first-visit:
    role: nurse
    title: First home visit
    due: 3d
tracks:
  main:
    initial: started
    states:
      started:
        on_enter:
          - task: first-visit
        transitions:
          - after: 90d
            goto: done
      done:
        terminal: true
"#;

/// A referral of the simulator's patient to `pathway`.
fn referral(sim: &Simulator<'_>, id: &str, at: jiff::Timestamp, pathway: &str) -> Event {
    sim.event(
        id,
        at,
        EventType::PatientReferred,
        serde_json::json!({"pathway": pathway, "by": "gp"}),
    )
    .expect("payload")
}

#[test]
fn a_pathway_entered_by_referral_only_takes_its_own_referrals_once() {
    let (p, report) = parcours_lang::compile_source("palliative.yaml", PATHWAY)
        .unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    let start = parse_time("2026-03-02T10:00", None).expect("start");
    let mut sim = Simulator::new(&p, "t", "p", start);

    // A referral to another pathway: the rule's event type, but not for this pathway.
    sim.deliver(&referral(&sim, "r0", start, "heart-failure"))
        .expect("decide");
    assert!(sim.current().is_none(), "{:?}", sim.log());

    let at = parse_time("+1d", Some(start)).expect("time");
    sim.deliver(&referral(&sim, "r1", at, "palliative-support"))
        .expect("decide");
    let state = sim.current().expect("enrolled");
    assert_eq!(state.status, Status::Active);
    assert_eq!(state.cycle, 1);
    let first = &sim.log()[0];
    assert!(matches!(first.change, Change::Enrolled { .. }), "{first:?}");
    assert_eq!(first.rule.as_deref(), Some("enrolment/referral"));
    assert_eq!(state.tasks.len(), 1);

    // Referred again, by the same rule's event type, with `on_repeat: restart`: no new
    // cycle, no new task; recorded as ignored.
    let mark = sim.log().len();
    let later = parse_time("+5d", Some(start)).expect("time");
    sim.deliver(&referral(&sim, "r2", later, "palliative-support"))
        .expect("decide");
    let changes: Vec<&Change> = sim.log()[mark..].iter().map(|r| &r.change).collect();
    assert!(
        matches!(changes.as_slice(), [Change::InputIgnored { reason }] if reason.contains("already on `palliative-support` (cycle 1)")),
        "{changes:?}"
    );
    // A referral to another pathway changes nothing either (no restart by the rule).
    let mark = sim.log().len();
    sim.deliver(&referral(&sim, "r3", later, "heart-failure"))
        .expect("decide");
    assert_eq!(sim.log().len(), mark, "{:?}", &sim.log()[mark..]);
    assert_eq!(sim.current().expect("instance").cycle, 1);
}
